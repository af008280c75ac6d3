//! `etcd-lite gateway start`: etcd's L4 gateway for machines that are not members. It listens
//! on one local address (127.0.0.1:23790 by default, as etcd's) and passes each TCP connection
//! through, byte for byte, to one of the cluster's client endpoints, so TLS, gRPC, the gateway's
//! JSON and v2 all work through it unchanged. An endpoint that refuses a connection is left out
//! for `--retry-delay` and the connection tries the next one. Unlike etcd's gateway it follows
//! the membership: every `--refresh-interval` it asks a reachable endpoint for the member list
//! and uses the client URLs the members publish, so members added or removed later are picked
//! up without restarting it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};

/// Flags of `etcd-lite gateway start` (etcd's names).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "etcd-lite gateway start",
    about = "Pass client connections through to an etcd cluster's members (an L4 gateway).",
    after_help = "Examples:\n  \
        etcd-lite gateway start --endpoints 10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379\n  \
        etcd-lite gateway start --discovery-srv example.com\n  \
        ETCDCTL_API=3 etcdctl --endpoints 127.0.0.1:23790 put k v"
)]
pub struct GatewayConfig {
    /// Comma-separated client endpoints of the cluster (host:port or URLs).
    #[arg(long, default_value = "127.0.0.1:2379")]
    pub endpoints: String,
    /// Take the endpoints from DNS SRV records instead: `_etcd-client-ssl._tcp.DOMAIN` and
    /// `_etcd-client._tcp.DOMAIN`.
    #[arg(long)]
    pub discovery_srv: Option<String>,
    /// Suffix of the SRV names --discovery-srv looks up (`_etcd-client-NAME._tcp.DOMAIN`).
    #[arg(long, default_value = "")]
    pub discovery_srv_name: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:23790")]
    pub listen_addr: SocketAddr,
    /// How long an endpoint that refused a connection is left out (Go duration: 30s, 1m).
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub retry_delay: Duration,
    /// How often the member list is asked for (0s: never; the endpoints stay as given).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub refresh_interval: Duration,
    /// Log level (error, warn, info, debug).
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

/// A Go-style duration: a number and a unit (`ms`, `s`, `m`, `h`), e.g. `1m30s` or `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest == "0" {
        return Ok(total);
    }
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(|| format!("{s:?}: missing unit (ms, s, m, h)"))?;
        let n: f64 = rest[..n_end]
            .parse()
            .map_err(|_| format!("{s:?}: not a duration"))?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..u_end] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => return Err(format!("{s:?}: unknown unit {u:?}")),
        };
        total += Duration::from_secs_f64(n * unit);
        rest = &rest[u_end..];
    }
    Ok(total)
}

/// host:port of an endpoint given as host:port or as a URL.
fn host_port(e: &str) -> Option<String> {
    let e = e.trim();
    if e.is_empty() {
        return None;
    }
    match e.split_once("://") {
        Some((_, rest)) => Some(rest.trim_end_matches('/').to_string()),
        None => Some(e.to_string()),
    }
}

/// The endpoints and when each may be tried again.
#[derive(Debug, Default)]
struct Endpoints {
    list: Vec<(String, Option<Instant>)>,
    next: usize,
}

impl Endpoints {
    fn set(&mut self, wanted: Vec<String>) {
        if wanted.is_empty() {
            return;
        }
        let old = std::mem::take(&mut self.list);
        self.list = wanted
            .into_iter()
            .map(|e| {
                let held = old.iter().find(|(o, _)| *o == e).and_then(|(_, h)| *h);
                (e, held)
            })
            .collect();
    }

    /// The endpoints to try for one connection: round robin from the next one, those left
    /// out last (and only if nothing else is left).
    fn order(&mut self, now: Instant) -> Vec<String> {
        let n = self.list.len();
        if n == 0 {
            return Vec::new();
        }
        self.next = (self.next + 1) % n;
        let rotated = (0..n).map(|i| &self.list[(self.next + i) % n]);
        let (up, down): (Vec<_>, Vec<_>) = rotated.partition(|(_, h)| h.is_none_or(|t| t <= now));
        up.into_iter().chain(down).map(|(e, _)| e.clone()).collect()
    }

    fn leave_out(&mut self, e: &str, until: Instant) {
        if let Some(x) = self.list.iter_mut().find(|(o, _)| o == e) {
            x.1 = Some(until);
        }
    }

    fn back(&mut self, e: &str) {
        if let Some(x) = self.list.iter_mut().find(|(o, _)| o == e) {
            x.1 = None;
        }
    }
}

/// Runs the gateway until `stop` resolves.
pub async fn run(
    cfg: GatewayConfig,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let given: Vec<String> = match &cfg.discovery_srv {
        Some(domain) => crate::srv::client_endpoints(domain, &cfg.discovery_srv_name).await?,
        None => cfg.endpoints.split(',').filter_map(host_port).collect(),
    };
    if given.is_empty() {
        anyhow::bail!("--endpoints: no endpoint given");
    }
    let eps = Arc::new(Mutex::new(Endpoints::default()));
    eps.lock().set(given.clone());
    let listener = TcpListener::bind(cfg.listen_addr)
        .await
        .map_err(|e| anyhow::anyhow!("listening on {}: {e}", cfg.listen_addr))?;
    tracing::info!(addr = %cfg.listen_addr, endpoints = ?given, "gateway ready");
    if !cfg.refresh_interval.is_zero() {
        tokio::spawn(follow_members(eps.clone(), cfg.refresh_interval));
    }
    tokio::pin!(stop);
    loop {
        let (client, from) = tokio::select! {
            () = &mut stop => return Ok(()),
            got = listener.accept() => match got {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection");
                    continue;
                }
            },
        };
        let eps = eps.clone();
        let retry = cfg.retry_delay;
        tokio::spawn(async move {
            if let Err(e) = pass(client, &eps, retry).await {
                tracing::info!(%from, error = %e, "connection not passed through");
            }
        });
    }
}

/// Connects `client` to the first endpoint that takes it and copies both ways until either
/// side closes.
async fn pass(
    mut client: TcpStream,
    eps: &Mutex<Endpoints>,
    retry: Duration,
) -> anyhow::Result<()> {
    let order = eps.lock().order(Instant::now());
    for e in order {
        match tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(&e)).await {
            Ok(Ok(mut upstream)) => {
                eps.lock().back(&e);
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
                return Ok(());
            }
            Ok(Err(err)) => {
                tracing::warn!(endpoint = %e, error = %err, "endpoint refused; left out")
            }
            Err(_) => tracing::warn!(endpoint = %e, "endpoint did not answer; left out"),
        }
        eps.lock().leave_out(&e, Instant::now() + retry);
    }
    anyhow::bail!("no endpoint took the connection")
}

/// Every `every`, the client URLs of the members, from the first endpoint that answers.
async fn follow_members(eps: Arc<Mutex<Endpoints>>, every: Duration) {
    use etcd_api::etcdserverpb::{cluster_client::ClusterClient, MemberListRequest};
    loop {
        tokio::time::sleep(every).await;
        let order = eps.lock().order(Instant::now());
        for e in order {
            let Ok(ch) = tonic::transport::Endpoint::from_shared(format!("http://{e}")) else {
                continue;
            };
            let ch = ch
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(3));
            let Ok(ch) = ch.connect().await else { continue };
            let Ok(resp) = ClusterClient::new(ch)
                .member_list(MemberListRequest {
                    linearizable: false,
                })
                .await
            else {
                continue;
            };
            let urls: Vec<String> = resp
                .into_inner()
                .members
                .iter()
                .flat_map(|m| m.client_ur_ls.iter())
                .filter(|u| u.starts_with("http://"))
                .filter_map(|u| host_port(u))
                .collect();
            if !urls.is_empty() {
                let mut eps = eps.lock();
                let before: Vec<&String> = eps.list.iter().map(|(e, _)| e).collect();
                if before != urls.iter().collect::<Vec<_>>() {
                    tracing::info!(endpoints = %urls.join(","), "endpoints follow the members");
                }
                eps.set(urls);
            }
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn endpoints_left_out_are_tried_last_and_come_back() {
        let mut e = Endpoints::default();
        e.set(vec!["a:1".into(), "b:1".into(), "c:1".into()]);
        let now = Instant::now();
        e.leave_out("b:1", now + Duration::from_secs(60));
        for _ in 0..3 {
            let o = e.order(now);
            assert_eq!(o.len(), 3);
            assert_eq!(o.last().map(String::as_str), Some("b:1"));
        }
        // After the delay it is back in the rotation.
        let later = now + Duration::from_secs(61);
        assert!((0..3).any(|_| e.order(later)[0] == "b:1"));
        assert_eq!(
            host_port("http://10.0.0.1:2379/"),
            Some("10.0.0.1:2379".into())
        );
    }
}
