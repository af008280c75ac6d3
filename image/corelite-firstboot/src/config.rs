//! The first-boot config: its JSON shape, validation with errors that say where and why, and
//! the files it turns into (pure: [`render`] returns paths and contents).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::Deserialize;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// The whole config. Unknown keys are errors (a typo must not be silently ignored).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub hostname: String,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub etcd: Option<Etcd>,
    #[serde(default)]
    pub fleet: Option<Fleet>,
    #[serde(default)]
    pub units: Vec<Unit>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Interface name pattern, default `en* eth*`.
    #[serde(default)]
    pub interface: Option<String>,
    /// `true` for DHCP (the default when no address is given).
    #[serde(default)]
    pub dhcp: Option<bool>,
    /// `A.B.C.D/N`.
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub dns: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Etcd {
    /// This member's name (default: the hostname).
    #[serde(default)]
    pub name: Option<String>,
    /// `name=http://IP:2380,...`, every member of the initial cluster.
    pub initial_cluster: String,
    #[serde(default = "default_token")]
    pub initial_cluster_token: String,
    /// `new` (default) or `existing`.
    #[serde(default = "default_state")]
    pub initial_cluster_state: String,
}

fn default_token() -> String {
    "corelite".into()
}

fn default_state() -> String {
    "new".into()
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Seconds without a heartbeat before the machine's units move (default 30).
    #[serde(default)]
    pub agent_ttl: Option<u32>,
    /// Where fleetd's HTTP API also listens (default 0.0.0.0:49153).
    #[serde(default)]
    pub listen_tcp: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Unit {
    pub name: String,
    pub contents: String,
    /// Start it at boot (WantedBy=multi-user.target), default true.
    #[serde(default = "yes")]
    pub enable: bool,
}

fn yes() -> bool {
    true
}

/// `A.B.C.D/N`.
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, n) = s.split_once('/')?;
    let n: u8 = n.parse().ok().filter(|n| *n <= 32)?;
    Some((ip.parse().ok()?, n))
}

impl Config {
    /// Parses and validates; errors name the field (or JSON line and column).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let c: Config = serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let h = &self.hostname;
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if h.len() > 253 || !h.split('.').all(label_ok) {
            return Err(invalid(
                "hostname",
                format!("{h:?} is not a valid host name"),
            ));
        }
        let n = &self.network;
        if let Some(a) = &n.address {
            if parse_cidr(a).is_none() {
                return Err(invalid(
                    "network.address",
                    format!("{a:?} is not an IPv4 address with a prefix (like 10.0.0.5/24)"),
                ));
            }
            if n.dhcp == Some(true) {
                return Err(invalid(
                    "network",
                    "give an address or dhcp: true, not both",
                ));
            }
        }
        if let Some(g) = &n.gateway {
            if g.parse::<Ipv4Addr>().is_err() {
                return Err(invalid(
                    "network.gateway",
                    format!("{g:?} is not an IPv4 address"),
                ));
            }
        }
        for d in &n.dns {
            if d.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid(
                    "network.dns",
                    format!("{d:?} is not an IP address"),
                ));
            }
        }
        if let Some(i) = &n.interface {
            if i.is_empty() || i.contains(['/', '\n']) {
                return Err(invalid(
                    "network.interface",
                    format!("{i:?} is not an interface name pattern"),
                ));
            }
        }
        if let Some(e) = &self.etcd {
            let me = e.name.clone().unwrap_or_else(|| self.hostname.clone());
            let mut found = false;
            for m in e.initial_cluster.split(',') {
                let (name, url) = m.split_once('=').ok_or_else(|| {
                    invalid(
                        "etcd.initial_cluster",
                        format!("{m:?} is not name=http://IP:PORT"),
                    )
                })?;
                let rest = url.strip_prefix("http://").ok_or_else(|| {
                    invalid(
                        "etcd.initial_cluster",
                        format!("{url:?}: peer URLs start with http://"),
                    )
                })?;
                let (host, port) =
                    rest.trim_end_matches('/').rsplit_once(':').ok_or_else(|| {
                        invalid("etcd.initial_cluster", format!("{url:?} has no port"))
                    })?;
                if host.parse::<Ipv4Addr>().is_err() || port.parse::<u16>().is_err() {
                    return Err(invalid(
                        "etcd.initial_cluster",
                        format!("{url:?} is not http://IPv4:PORT"),
                    ));
                }
                found |= name == me;
            }
            if !found {
                return Err(invalid(
                    "etcd.initial_cluster",
                    format!("does not name this member ({me})"),
                ));
            }
            if e.initial_cluster_state != "new" && e.initial_cluster_state != "existing" {
                return Err(invalid(
                    "etcd.initial_cluster_state",
                    "must be new or existing",
                ));
            }
            if e.initial_cluster_token.is_empty() {
                return Err(invalid("etcd.initial_cluster_token", "must not be empty"));
            }
        }
        if let Some(f) = &self.fleet {
            for (k, v) in &f.metadata {
                let ok = |s: &str| !s.is_empty() && !s.contains([',', '=', '\n']);
                if !ok(k) || !ok(v) {
                    return Err(invalid(
                        "fleet.metadata",
                        format!("{k:?}={v:?}: keys and values without ',' or '='"),
                    ));
                }
            }
            if let Some(l) = &f.listen_tcp {
                if l.parse::<std::net::SocketAddr>().is_err() {
                    return Err(invalid("fleet.listen_tcp", format!("{l:?} is not IP:PORT")));
                }
            }
            if f.agent_ttl == Some(0) {
                return Err(invalid("fleet.agent_ttl", "must be at least 1 second"));
            }
        }
        for (i, u) in self.units.iter().enumerate() {
            let kinds = [
                ".service", ".timer", ".socket", ".path", ".mount", ".target",
            ];
            let ok = !u.name.contains('/')
                && kinds
                    .iter()
                    .any(|k| u.name.ends_with(k) && u.name.len() > k.len());
            if !ok {
                return Err(invalid(
                    &format!("units[{i}].name"),
                    format!("{:?} is not a unit file name", u.name),
                ));
            }
        }
        Ok(())
    }

    /// This node's own address, if static.
    pub fn address(&self) -> Option<Ipv4Addr> {
        self.network
            .address
            .as_deref()
            .and_then(parse_cidr)
            .map(|(ip, _)| ip)
    }
}

/// The files the config becomes: (absolute path, contents).
pub fn render(c: &Config) -> Vec<(String, String)> {
    let mut out = vec![("/etc/hostname".to_string(), format!("{}\n", c.hostname))];
    let n = &c.network;
    let mut net = format!(
        "# Written by corelite-firstboot.\n[Match]\nName={}\n\n[Network]\n",
        n.interface.as_deref().unwrap_or("en* eth*")
    );
    match &n.address {
        Some(a) => {
            net.push_str(&format!("Address={a}\n"));
            if let Some(g) = &n.gateway {
                net.push_str(&format!("Gateway={g}\n"));
            }
        }
        None => net.push_str("DHCP=yes\n"),
    }
    for d in &n.dns {
        net.push_str(&format!("DNS={d}\n"));
    }
    out.push(("/etc/systemd/network/10-corelite.network".into(), net));
    let ip = c.address().map(|a| a.to_string());
    if let Some(e) = &c.etcd {
        let name = e.name.clone().unwrap_or_else(|| c.hostname.clone());
        let me = e
            .initial_cluster
            .split(',')
            .find_map(|m| m.strip_prefix(&format!("{name}=")))
            .unwrap_or_default()
            .to_string();
        let host = ip.clone().unwrap_or_else(|| {
            me.trim_start_matches("http://")
                .rsplit_once(':')
                .map(|(h, _)| h.to_string())
                .unwrap_or_default()
        });
        out.push((
            "/etc/etcd-lite/etcd-lite.env".into(),
            format!(
                "# Written by corelite-firstboot.\nETCD_NAME={name}\nETCD_INITIAL_CLUSTER={}\nETCD_INITIAL_CLUSTER_TOKEN={}\nETCD_INITIAL_CLUSTER_STATE={}\nETCD_INITIAL_ADVERTISE_PEER_URLS={me}\nETCD_LISTEN_PEER_URLS=http://0.0.0.0:2380\nETCD_LISTEN_CLIENT_URLS=http://0.0.0.0:2379\nETCD_ADVERTISE_CLIENT_URLS=http://{host}:2379\n",
                e.initial_cluster, e.initial_cluster_token, e.initial_cluster_state
            ),
        ));
    }
    let f = c.fleet.clone().unwrap_or_default();
    let mut env = String::from(
        "# Written by corelite-firstboot.\nFLEET_ETCD_SERVERS=http://127.0.0.1:2379\n",
    );
    if !f.metadata.is_empty() {
        let md: Vec<String> = f.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.push_str(&format!("FLEET_METADATA={}\n", md.join(",")));
    }
    if let Some(ip) = &ip {
        env.push_str(&format!("FLEET_PUBLIC_IP={ip}\n"));
    }
    if let Some(t) = f.agent_ttl {
        env.push_str(&format!("FLEET_AGENT_TTL={t}s\n"));
    }
    env.push_str(&format!(
        "FLEET_LISTEN_TCP={}\n",
        f.listen_tcp.as_deref().unwrap_or("0.0.0.0:49153")
    ));
    out.push(("/etc/fleet/fleetd.env".into(), env));
    for u in &c.units {
        out.push((
            format!("/etc/systemd/system/{}", u.name),
            u.contents.clone(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
        "hostname": "node1",
        "network": {"address": "10.219.0.11/24", "gateway": "10.219.0.1"},
        "etcd": {"initial_cluster": "node1=http://10.219.0.11:2380,node2=http://10.219.0.12:2380"},
        "fleet": {"metadata": {"role": "web"}, "agent_ttl": 10},
        "units": [{"name": "hello.service", "contents": "[Service]\nExecStart=/bin/true\n"}]
    }"#;

    #[test]
    fn a_good_config_renders_every_file() {
        let c = Config::parse(GOOD).expect("a good config");
        let files: BTreeMap<_, _> = render(&c).into_iter().collect();
        assert_eq!(files["/etc/hostname"], "node1\n");
        let net = &files["/etc/systemd/network/10-corelite.network"];
        assert!(net.contains("Address=10.219.0.11/24") && net.contains("Gateway=10.219.0.1"));
        let etcd = &files["/etc/etcd-lite/etcd-lite.env"];
        assert!(etcd.contains("ETCD_NAME=node1\n"));
        assert!(etcd.contains("ETCD_INITIAL_ADVERTISE_PEER_URLS=http://10.219.0.11:2380\n"));
        assert!(etcd.contains("ETCD_ADVERTISE_CLIENT_URLS=http://10.219.0.11:2379\n"));
        let fleet = &files["/etc/fleet/fleetd.env"];
        assert!(
            fleet.contains("FLEET_METADATA=role=web\n") && fleet.contains("FLEET_AGENT_TTL=10s\n")
        );
        assert!(fleet.contains("FLEET_PUBLIC_IP=10.219.0.11\n"));
        assert!(files.contains_key("/etc/systemd/system/hello.service"));
    }

    #[test]
    fn dhcp_by_default() {
        let c = Config::parse(r#"{"hostname": "n"}"#).expect("a minimal config");
        let files: BTreeMap<_, _> = render(&c).into_iter().collect();
        assert!(files["/etc/systemd/network/10-corelite.network"].contains("DHCP=yes"));
        assert!(!files.contains_key("/etc/etcd-lite/etcd-lite.env"));
    }

    #[test]
    fn bad_configs_say_where() {
        let cases = [
            ("{\"hostname\": \"n\",", "not valid JSON"),
            (
                r#"{"hostname": "n", "colour": "blue"}"#,
                "unknown field `colour`",
            ),
            (r#"{"hostname": "bad_host!"}"#, "hostname"),
            (
                r#"{"hostname": "n", "network": {"address": "10.0.0.300/24"}}"#,
                "network.address",
            ),
            (
                r#"{"hostname": "n", "network": {"address": "10.0.0.3"}}"#,
                "network.address",
            ),
            (
                r#"{"hostname": "n", "network": {"gateway": "gw"}}"#,
                "network.gateway",
            ),
            (
                r#"{"hostname": "n", "etcd": {"initial_cluster": "x=http://1.2.3.4:2380"}}"#,
                "does not name this member",
            ),
            (
                r#"{"hostname": "n", "etcd": {"initial_cluster": "n=1.2.3.4:2380"}}"#,
                "http://",
            ),
            (
                r#"{"hostname": "n", "etcd": {"initial_cluster": "n=http://1.2.3.4:2380", "initial_cluster_state": "old"}}"#,
                "new or existing",
            ),
            (
                r#"{"hostname": "n", "fleet": {"listen_tcp": "nowhere"}}"#,
                "fleet.listen_tcp",
            ),
            (
                r#"{"hostname": "n", "units": [{"name": "../x.service", "contents": ""}]}"#,
                "units[0].name",
            ),
            (r#"{"network": {}}"#, "missing field `hostname`"),
        ];
        for (text, want) in cases {
            let e = Config::parse(text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(want), "{text}: {e:?} does not say {want:?}");
        }
    }
}
