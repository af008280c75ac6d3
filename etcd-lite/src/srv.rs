//! etcd's DNS discovery (`--discovery-srv DOMAIN`): the cluster's members are the SRV records
//! `_etcd-server-ssl._tcp.DOMAIN` (https peer URLs) and `_etcd-server._tcp.DOMAIN` (http), and
//! its client endpoints `_etcd-client-ssl._tcp.DOMAIN` / `_etcd-client._tcp.DOMAIN`.
//! `--discovery-srv-name NAME` looks up `_etcd-server-NAME._tcp` and so on instead.
//!
//! As in etcd, a record whose target and port resolve to one of this member's
//! `--initial-advertise-peer-urls` is this member (named `--name`); the others are named `0`,
//! `1`, ... (member ids come from peer URLs and the cluster token, not names, so every member
//! computes the same ids). Peer URLs keep the record's host name, as etcd writes them.
//! Records are read with the system's resolver configuration (`/etc/resolv.conf`).

use std::collections::HashMap;
use std::net::SocketAddr;

use hickory_resolver::TokioAsyncResolver;

/// A service's records: (target host without the trailing dot, port).
async fn lookup(resolver: &TokioAsyncResolver, name: &str) -> Result<Vec<(String, u16)>, String> {
    let found = resolver
        .srv_lookup(name)
        .await
        .map_err(|e| format!("lookup {name}: {e}"))?;
    let mut out: Vec<(String, u16)> = found
        .iter()
        .map(|r| {
            let t = r.target().to_utf8();
            (t.trim_end_matches('.').to_string(), r.port())
        })
        .collect();
    out.sort();
    Ok(out)
}

fn resolver() -> anyhow::Result<TokioAsyncResolver> {
    TokioAsyncResolver::tokio_from_system_conf()
        .map_err(|e| anyhow::anyhow!("reading the system's DNS configuration: {e}"))
}

/// `_{service}[-ssl][-{suffix}]._tcp.{domain}`.
fn service_name(service: &str, ssl: bool, suffix: &str, domain: &str) -> String {
    let mut s = format!("_{service}");
    if ssl {
        s.push_str("-ssl");
    }
    if !suffix.is_empty() {
        s.push('-');
        s.push_str(suffix);
    }
    format!("{s}._tcp.{domain}")
}

async fn resolve(host_port: &str) -> Result<Vec<SocketAddr>, String> {
    tokio::net::lookup_host(host_port)
        .await
        .map(|a| a.collect())
        .map_err(|e| format!("resolving {host_port}: {e}"))
}

/// The host:port of a URL.
fn host_port(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?))
}

/// The initial cluster (`name=url,...`) the SRV records of `domain` describe, this member
/// (`name`, advertising `peer_urls`) among them.
pub async fn initial_cluster(
    domain: &str,
    suffix: &str,
    name: &str,
    peer_urls: &[String],
) -> anyhow::Result<String> {
    let resolver = resolver()?;
    let mut mine: HashMap<SocketAddr, String> = HashMap::new();
    for u in peer_urls {
        let hp = host_port(u).ok_or_else(|| anyhow::anyhow!("bad peer URL {u:?}"))?;
        for a in resolve(&hp).await.map_err(anyhow::Error::msg)? {
            mine.insert(a, u.clone());
        }
    }
    let mut parts: Vec<String> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    let mut temp_name = 0;
    for (ssl, scheme) in [(true, "https"), (false, "http")] {
        let service = service_name("etcd-server", ssl, suffix, domain);
        let records = match lookup(&resolver, &service).await {
            Ok(r) => r,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        for (target, port) in records {
            let hp = format!("{target}:{port}");
            let addrs = match resolve(&hp).await {
                Ok(a) => a,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let me = addrs.iter().find_map(|a| mine.get(a));
            let url = format!("{scheme}://{hp}");
            match me {
                Some(advertised) if !advertised.starts_with(&format!("{scheme}://")) => {
                    anyhow::bail!(
                        "bootstrap at {url} from DNS for {service} has scheme mismatch with expected peer {advertised}"
                    );
                }
                Some(_) => parts.push(format!("{name}={url}")),
                None => {
                    parts.push(format!("{temp_name}={url}"));
                    temp_name += 1;
                }
            }
        }
    }
    if parts.is_empty() {
        anyhow::bail!(
            "error setting up initial cluster: srv: too many errors querying DNS SRV records ({})",
            errors.join("; ")
        );
    }
    if !parts.iter().any(|p| p.starts_with(&format!("{name}="))) {
        anyhow::bail!(
            "couldn't find local name {name:?} in the initial cluster configuration from DNS SRV records of {domain} (this member advertises {})",
            peer_urls.join(",")
        );
    }
    Ok(parts.join(","))
}

/// The client endpoints (`host:port`) the SRV records of `domain` list.
pub async fn client_endpoints(domain: &str, suffix: &str) -> anyhow::Result<Vec<String>> {
    let resolver = resolver()?;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for ssl in [true, false] {
        let service = service_name("etcd-client", ssl, suffix, domain);
        match lookup(&resolver, &service).await {
            Ok(r) => out.extend(r.into_iter().map(|(t, p)| format!("{t}:{p}"))),
            Err(e) => errors.push(e),
        }
    }
    if out.is_empty() {
        anyhow::bail!(
            "srv: too many errors querying DNS SRV records ({})",
            errors.join("; ")
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_are_etcds() {
        assert_eq!(
            service_name("etcd-server", true, "", "example.com"),
            "_etcd-server-ssl._tcp.example.com"
        );
        assert_eq!(
            service_name("etcd-server", false, "prod", "example.com"),
            "_etcd-server-prod._tcp.example.com"
        );
        assert_eq!(
            service_name("etcd-client", true, "prod", "example.com"),
            "_etcd-client-ssl-prod._tcp.example.com"
        );
        assert_eq!(
            host_port("http://a.example:2380"),
            Some("a.example:2380".into())
        );
        assert_eq!(host_port("https://a.example"), Some("a.example:443".into()));
    }
}
