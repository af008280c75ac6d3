//! The first-boot config: its JSON shape, validation with errors that say where and why, and
//! the files it turns into (pure: [`render`] returns paths and contents).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

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
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub hostname: String,
    #[serde(default)]
    pub network: Network,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<Etcd>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<Fleet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<Ssh>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub units: Vec<Unit>,
}

/// The node's TLS identity (PEM text): with it, etcd-lite serves https on its client and
/// peer ports and asks every client and peer for a certificate signed by `ca`, and fleetd's
/// TCP API does the same; fleetd reaches etcd-lite with `cert` as its client certificate.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// The cluster CA's certificate (not its key).
    pub ca: String,
    /// This node's certificate, signed by `ca`, naming the node's address.
    pub cert: String,
    /// This node's private key.
    pub key: String,
}

/// SSH logins: the `core` user's authorized public keys (OpenSSH format, one per entry).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Ssh {
    #[serde(default)]
    pub authorized_keys: Vec<String>,
}

/// Clock sync: NTP servers for systemd-timesyncd (default: those DHCP offers, else Debian's pool).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Time {
    #[serde(default)]
    pub ntp: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Interface name pattern, default `en* eth*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// `true` for DHCP (the default when no address is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dhcp: Option<bool>,
    /// `A.B.C.D/N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Etcd {
    /// This member's name (default: the hostname).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `name=https://IP:2380,...` (http:// without `tls`), every member of the initial cluster.
    /// Give this or `discovery`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub initial_cluster: String,
    /// An etcd discovery token URL (`https://discovery.etcd.io/TOKEN`, or a service of your
    /// own) instead of `initial_cluster`: the first nodes to register (the token's size) become
    /// the members, every later one a worker (a gateway to them). Needs a static address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<String>,
    /// Nodes that are not etcd members (workers): each runs a local gateway on
    /// 127.0.0.1:2379 to the members' client ports instead of a member. Every node may boot
    /// from the same `etcd` section: a node is a member when `initial_cluster` names it, a
    /// worker when this list does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<String>,
    #[serde(default = "default_token")]
    pub initial_cluster_token: String,
    /// `new` (default) or `existing`.
    #[serde(default = "default_state")]
    pub initial_cluster_state: String,
    /// With `existing`: a node that the cluster does not list yet adds itself as a learner and
    /// is promoted once caught up (etcd-lite's `--self-add`), instead of waiting for
    /// `etcdctl member add`. Not with `auth` (adding a member needs root).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub self_add: bool,
    /// Turn etcd auth on once the cluster is up (needs `tls`): clients are the users their
    /// certificate's common name names; `root` (the admin certificate) may do anything, each
    /// member's node user reads and writes fleet's keys.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auth: bool,
}

impl Etcd {
    /// The members' names, from `initial_cluster`.
    pub fn member_names(&self) -> Vec<String> {
        self.initial_cluster
            .split(',')
            .filter_map(|m| m.split_once('=').map(|(n, _)| n.to_string()))
            .collect()
    }

    /// Every node's name: the members', then the workers'.
    pub fn node_names(&self) -> Vec<String> {
        let mut all = self.member_names();
        all.extend(self.workers.iter().cloned());
        all
    }

    /// The members' client endpoints (`IP:2379`), from their peer URLs in `initial_cluster`.
    pub fn member_endpoints(&self) -> Vec<String> {
        self.initial_cluster
            .split(',')
            .filter_map(|m| m.split_once('=').map(|(_, url)| url))
            .filter_map(|url| url.split_once("://").map(|(_, rest)| rest))
            .filter_map(|rest| rest.trim_end_matches('/').rsplit_once(':'))
            .map(|(host, _)| format!("{host}:2379"))
            .collect()
    }
}

fn default_token() -> String {
    "corelite".into()
}

fn default_state() -> String {
    "new".into()
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Seconds without a heartbeat before the machine's units move (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_ttl: Option<u32>,
    /// Where fleetd's API also listens over TCP, with TLS and client certificates (default
    /// 0.0.0.0:49153 with `tls`; none without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_tcp: Option<String>,
    /// Serve `listen_tcp` over plain HTTP to anyone (only for a node without `tls`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_listen_tcp: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
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
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Config::parse_at(text, now)
    }

    /// [`Config::parse`] with the clock (seconds since the epoch) certificates are checked
    /// against.
    pub fn parse_at(text: &str, now: i64) -> Result<Config, ConfigError> {
        let c: Config = serde_json::from_str(text).map_err(|e| ConfigError::Json(e.to_string()))?;
        c.validate(now)?;
        Ok(c)
    }

    fn validate(&self, now: i64) -> Result<(), ConfigError> {
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
        if let Some(e) = self.etcd.as_ref().filter(|e| e.discovery.is_some()) {
            let url = e.discovery.as_deref().unwrap_or_default();
            if !e.initial_cluster.is_empty() || !e.workers.is_empty() {
                return Err(invalid(
                    "etcd.discovery",
                    "give discovery or initial_cluster (with workers), not both",
                ));
            }
            let ok = url
                .split_once("://")
                .is_some_and(|(s, rest)| matches!(s, "http" | "https") && rest.contains('/'));
            if !ok {
                return Err(invalid(
                    "etcd.discovery",
                    format!("{url:?} is not http(s)://HOST/TOKEN"),
                ));
            }
            if self.address().is_none() {
                return Err(invalid(
                    "etcd.discovery",
                    "needs a static network.address (it is this node's advertised URL)",
                ));
            }
            if e.auth {
                return Err(invalid(
                    "etcd.auth",
                    "with discovery the nodes are not known in advance: list them in initial_cluster and workers for auth",
                ));
            }
        } else if let Some(e) = &self.etcd {
            if e.initial_cluster.is_empty() {
                return Err(invalid(
                    "etcd.initial_cluster",
                    "give the members (or etcd.discovery)",
                ));
            }
            let me = e.name.clone().unwrap_or_else(|| self.hostname.clone());
            let mut found = false;
            for m in e.initial_cluster.split(',') {
                let (name, url) = m.split_once('=').ok_or_else(|| {
                    invalid("etcd.initial_cluster", format!("{m:?} is not name=URL"))
                })?;
                let scheme = if self.tls.is_some() {
                    "https://"
                } else {
                    "http://"
                };
                let rest = url.strip_prefix(scheme).ok_or_else(|| {
                    let why = if self.tls.is_some() {
                        "with tls, peer URLs start with https://"
                    } else {
                        "peer URLs start with http:// (https:// needs tls)"
                    };
                    invalid("etcd.initial_cluster", format!("{url:?}: {why}"))
                })?;
                let (host, port) =
                    rest.trim_end_matches('/').rsplit_once(':').ok_or_else(|| {
                        invalid("etcd.initial_cluster", format!("{url:?} has no port"))
                    })?;
                if host.parse::<Ipv4Addr>().is_err() || port.parse::<u16>().is_err() {
                    return Err(invalid(
                        "etcd.initial_cluster",
                        format!("{url:?} is not {scheme}IPv4:PORT"),
                    ));
                }
                found |= name == me;
            }
            let worker = e.workers.contains(&me);
            if found && worker {
                return Err(invalid(
                    "etcd.workers",
                    format!("{me} is a member (in initial_cluster) and a worker"),
                ));
            }
            if !found && !worker {
                return Err(invalid(
                    "etcd.initial_cluster",
                    format!(
                        "does not name this node ({me}): list it there (a member) or in etcd.workers"
                    ),
                ));
            }
            for w in &e.workers {
                let label_ok = !w.is_empty()
                    && w.len() <= 63
                    && w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                if !label_ok {
                    return Err(invalid("etcd.workers", format!("{w:?} is not a host name")));
                }
            }
            if e.initial_cluster_state != "new" && e.initial_cluster_state != "existing" {
                return Err(invalid(
                    "etcd.initial_cluster_state",
                    "must be new or existing",
                ));
            }
            if e.self_add && e.initial_cluster_state != "existing" {
                return Err(invalid(
                    "etcd.self_add",
                    "only for a node joining a running cluster (initial_cluster_state existing)",
                ));
            }
            if e.self_add && e.auth {
                return Err(invalid(
                    "etcd.self_add",
                    "with auth on, adding a member needs root: add this node with etcdctl member add",
                ));
            }
            if e.auth && self.tls.is_none() {
                return Err(invalid(
                    "etcd.auth",
                    "etcd auth here knows clients by their certificates: give the node tls",
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
            if f.insecure_listen_tcp && self.tls.is_some() {
                return Err(invalid(
                    "fleet.insecure_listen_tcp",
                    "a node with tls serves fleet's API over TLS only",
                ));
            }
            if f.listen_tcp.is_some() && self.tls.is_none() && !f.insecure_listen_tcp {
                return Err(invalid(
                    "fleet.listen_tcp",
                    "fleet's TCP API runs any program as root: give the node tls (or, on a trusted network only, insecure_listen_tcp: true)",
                ));
            }
            if f.agent_ttl == Some(0) {
                return Err(invalid("fleet.agent_ttl", "must be at least 1 second"));
            }
        }
        if let Some(t) = &self.tls {
            crate::pki::check_node(
                &t.ca,
                &t.cert,
                &t.key,
                self.address().map(std::net::IpAddr::V4),
                now,
            )
            .map_err(|(field, reason)| invalid(field, reason))?;
        }
        if let Some(s) = &self.ssh {
            for (i, k) in s.authorized_keys.iter().enumerate() {
                check_ssh_key(k).map_err(|r| invalid(&format!("ssh.authorized_keys[{i}]"), r))?;
            }
        }
        if let Some(t) = &self.time {
            for (i, s) in t.ntp.iter().enumerate() {
                let ok = !s.is_empty()
                    && s.len() <= 253
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b));
                if !ok {
                    return Err(invalid(
                        &format!("time.ntp[{i}]"),
                        format!("{s:?} is not a host name or address"),
                    ));
                }
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

    /// Whether this node is a worker of the cluster `e` describes (listed in its workers, not
    /// in its initial cluster).
    pub fn is_worker(&self, e: &Etcd) -> bool {
        let me = e.name.clone().unwrap_or_else(|| self.hostname.clone());
        e.workers.contains(&me) && !e.member_names().contains(&me)
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

/// An OpenSSH public key line: a known type, then its base64 body (a comment may follow).
fn check_ssh_key(line: &str) -> Result<(), String> {
    use base64::Engine as _;
    const TYPES: [&str; 7] = [
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];
    if line.contains(['\n', '\r']) {
        return Err("one key per entry (it has a line break)".into());
    }
    let mut words = line.split_whitespace();
    let (Some(kind), Some(body)) = (words.next(), words.next()) else {
        return Err(format!(
            "{line:?} is not an OpenSSH public key (TYPE BASE64 [COMMENT], like a .pub file)"
        ));
    };
    if !TYPES.contains(&kind) {
        return Err(format!(
            "{kind:?} is not a public key type ({}); options before the type are not supported",
            TYPES.join(", ")
        ));
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|_| format!("the {kind} key's body is not base64"))?;
    // The blob starts with the type again, as a length-prefixed string.
    let named = blob
        .get(4..)
        .and_then(|rest| rest.get(..kind.len()))
        .is_some_and(|n| n == kind.as_bytes());
    if !named {
        return Err(format!("the key's body is not a {kind} key"));
    }
    Ok(())
}

/// A file the config becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Absolute path.
    pub path: String,
    pub contents: String,
    /// Permission bits.
    pub mode: u32,
}

/// Where a node keeps its TLS identity.
pub const PKI_DIR: &str = "/etc/corelite/pki";

/// The files the config becomes.
pub fn render(c: &Config) -> Vec<File> {
    let file = |path: &str, contents: String, mode: u32| File {
        path: path.to_string(),
        contents,
        mode,
    };
    let mut out = vec![
        file("/etc/hostname", format!("{}\n", c.hostname), 0o644),
        // The node's own name resolves without DNS (sudo looks it up on every call).
        file(
            "/etc/hosts",
            format!(
                "# Written by corelite-firstboot.\n127.0.0.1\tlocalhost\n127.0.1.1\t{}\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n",
                c.hostname
            ),
            0o644,
        ),
    ];
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
    out.push(file("/etc/systemd/network/10-corelite.network", net, 0o644));
    let pki = |name: &str| format!("{PKI_DIR}/{name}");
    if let Some(t) = &c.tls {
        out.push(file(&pki("ca.pem"), t.ca.clone(), 0o644));
        out.push(file(&pki("node.pem"), t.cert.clone(), 0o644));
        out.push(file(&pki("node-key.pem"), t.key.clone(), 0o600));
    }
    let scheme = if c.tls.is_some() { "https" } else { "http" };
    let ip = c.address().map(|a| a.to_string());
    if let Some(e) = c.etcd.as_ref().filter(|e| c.is_worker(e)) {
        // A worker: a local endpoint passing clients (fleetd, etcdctl) through to the members.
        out.push(file(
            "/etc/etcd-lite/gateway.env",
            format!(
                "# Written by corelite-firstboot.\nGATEWAY_ENDPOINTS={}\n",
                e.member_endpoints().join(",")
            ),
            0o644,
        ));
    }
    if let Some(e) = c.etcd.as_ref().filter(|e| e.discovery.is_some()) {
        // Member or worker, as the discovery service says at the first start.
        let name = e.name.clone().unwrap_or_else(|| c.hostname.clone());
        let host = ip.clone().unwrap_or_default();
        let mut env = format!(
            "# Written by corelite-firstboot.\nETCD_NAME={name}\nETCD_DISCOVERY={}\nETCD_DISCOVERY_FALLBACK=proxy\nETCD_INITIAL_ADVERTISE_PEER_URLS={scheme}://{host}:2380\nETCD_LISTEN_PEER_URLS={scheme}://0.0.0.0:2380\nETCD_LISTEN_CLIENT_URLS={scheme}://0.0.0.0:2379\nETCD_ADVERTISE_CLIENT_URLS={scheme}://{host}:2379\n",
            e.discovery.as_deref().unwrap_or_default()
        );
        if c.tls.is_some() {
            env.push_str(&etcd_tls_env());
        }
        out.push(file("/etc/etcd-lite/etcd-lite.env", env, 0o644));
    }
    if let Some(e) = c
        .etcd
        .as_ref()
        .filter(|e| e.discovery.is_none() && !c.is_worker(e))
    {
        let name = e.name.clone().unwrap_or_else(|| c.hostname.clone());
        let me = e
            .initial_cluster
            .split(',')
            .find_map(|m| m.strip_prefix(&format!("{name}=")))
            .unwrap_or_default()
            .to_string();
        let host = ip.clone().unwrap_or_else(|| {
            me.split_once("://")
                .map_or(me.as_str(), |(_, rest)| rest)
                .rsplit_once(':')
                .map(|(h, _)| h.to_string())
                .unwrap_or_default()
        });
        let mut env = format!(
            "# Written by corelite-firstboot.\nETCD_NAME={name}\nETCD_INITIAL_CLUSTER={}\nETCD_INITIAL_CLUSTER_TOKEN={}\nETCD_INITIAL_CLUSTER_STATE={}\nETCD_INITIAL_ADVERTISE_PEER_URLS={me}\nETCD_LISTEN_PEER_URLS={scheme}://0.0.0.0:2380\nETCD_LISTEN_CLIENT_URLS={scheme}://0.0.0.0:2379\nETCD_ADVERTISE_CLIENT_URLS={scheme}://{host}:2379\n",
            e.initial_cluster, e.initial_cluster_token, e.initial_cluster_state
        );
        if e.self_add {
            env.push_str("ETCD_SELF_ADD=true\n");
        }
        if c.tls.is_some() {
            env.push_str(&etcd_tls_env());
        }
        out.push(file("/etc/etcd-lite/etcd-lite.env", env, 0o644));
        if e.auth {
            // corelite-etcd-auth.service runs when this file exists.
            out.push(file(
                "/etc/corelite/etcd-auth.env",
                format!(
                    "# Written by corelite-firstboot.\nCORELITE_ETCD_AUTH_NODES={}\n",
                    e.node_names().join(",")
                ),
                0o644,
            ));
        }
    }
    let f = c.fleet.clone().unwrap_or_default();
    let mut env =
        format!("# Written by corelite-firstboot.\nFLEET_ETCD_SERVERS={scheme}://127.0.0.1:2379\n");
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
    if c.tls.is_some() {
        env.push_str(&format!(
            "FLEET_ETCD_CAFILE={2}\nFLEET_ETCD_CERTFILE={0}\nFLEET_ETCD_KEYFILE={1}\nFLEET_LISTEN_TCP={3}\nFLEET_API_CERT_FILE={0}\nFLEET_API_KEY_FILE={1}\nFLEET_API_TRUSTED_CA_FILE={2}\n",
            pki("node.pem"),
            pki("node-key.pem"),
            pki("ca.pem"),
            f.listen_tcp.as_deref().unwrap_or("0.0.0.0:49153")
        ));
    } else if let Some(l) = &f.listen_tcp {
        // Validation only lets this through with insecure_listen_tcp.
        env.push_str(&format!(
            "FLEET_LISTEN_TCP={l}\nFLEET_INSECURE_LISTEN_TCP=true\n"
        ));
    }
    out.push(file("/etc/fleet/fleetd.env", env, 0o644));
    if let Some(s) = &c.ssh {
        // Root-owned (sshd's AuthorizedKeysFile points here): the config decides who logs in.
        let mut keys = String::from("# Written by corelite-firstboot.\n");
        for k in &s.authorized_keys {
            keys.push_str(k.trim());
            keys.push('\n');
        }
        out.push(file("/etc/ssh/authorized_keys/core", keys, 0o644));
    }
    if let Some(t) = c.time.as_ref().filter(|t| !t.ntp.is_empty()) {
        out.push(file(
            "/etc/systemd/timesyncd.conf.d/10-corelite.conf",
            format!(
                "# Written by corelite-firstboot.\n[Time]\nNTP={}\n",
                t.ntp.join(" ")
            ),
            0o644,
        ));
    }
    for u in &c.units {
        out.push(file(
            &format!("/etc/systemd/system/{}", u.name),
            u.contents.clone(),
            0o644,
        ));
    }
    out
}

/// etcd-lite's TLS flags: both ports ask for a certificate signed by the cluster CA, from
/// clients (etcdctl, curl, fleetd) and peers alike.
fn etcd_tls_env() -> String {
    let pki = |name: &str| format!("{PKI_DIR}/{name}");
    format!(
        "ETCD_CERT_FILE={0}\nETCD_KEY_FILE={1}\nETCD_TRUSTED_CA_FILE={2}\nETCD_CLIENT_CERT_AUTH=true\nETCD_PEER_CERT_FILE={0}\nETCD_PEER_KEY_FILE={1}\nETCD_PEER_TRUSTED_CA_FILE={2}\nETCD_PEER_CLIENT_CERT_AUTH=true\n",
        pki("node.pem"),
        pki("node-key.pem"),
        pki("ca.pem")
    )
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
        let files: BTreeMap<_, _> = render(&c)
            .into_iter()
            .map(|f| (f.path, f.contents))
            .collect();
        assert_eq!(files["/etc/hostname"], "node1\n");
        assert!(files["/etc/hosts"].contains("127.0.1.1\tnode1\n"));
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
    fn a_worker_runs_a_gateway_to_the_members_instead_of_a_member() {
        let text = GOOD
            .replace("\"hostname\": \"node1\"", "\"hostname\": \"node4\"")
            .replace(
                "node2=http://10.219.0.12:2380\"",
                "node2=http://10.219.0.12:2380\", \"workers\": [\"node4\"]",
            );
        let c = Config::parse(&text).expect("a worker's config");
        assert!(c.is_worker(c.etcd.as_ref().expect("etcd")));
        let files: BTreeMap<_, _> = render(&c)
            .into_iter()
            .map(|f| (f.path, f.contents))
            .collect();
        assert!(!files.contains_key("/etc/etcd-lite/etcd-lite.env"));
        assert_eq!(
            files["/etc/etcd-lite/gateway.env"],
            "# Written by corelite-firstboot.\nGATEWAY_ENDPOINTS=10.219.0.11:2379,10.219.0.12:2379\n"
        );
        // fleetd talks to the local gateway as it would to a local member.
        assert!(
            files["/etc/fleet/fleetd.env"].contains("FLEET_ETCD_SERVERS=http://127.0.0.1:2379\n")
        );
        // The members of the same config stay members.
        let member =
            Config::parse(&text.replace("\"hostname\": \"node4\"", "\"hostname\": \"node2\""))
                .expect("a member's config");
        assert!(!member.is_worker(member.etcd.as_ref().expect("etcd")));
    }

    #[test]
    fn a_node_joining_a_running_cluster_may_add_itself() {
        let text = GOOD.replace(
            "node2=http://10.219.0.12:2380\"",
            "node2=http://10.219.0.12:2380\", \"initial_cluster_state\": \"existing\", \"self_add\": true",
        );
        let c = Config::parse(&text).expect("a joining node's config");
        let files: BTreeMap<_, _> = render(&c)
            .into_iter()
            .map(|f| (f.path, f.contents))
            .collect();
        let env = &files["/etc/etcd-lite/etcd-lite.env"];
        assert!(
            env.contains("ETCD_INITIAL_CLUSTER_STATE=existing\n")
                && env.contains("ETCD_SELF_ADD=true\n")
        );
        let new = GOOD.replace(
            "node2=http://10.219.0.12:2380\"",
            "node2=http://10.219.0.12:2380\", \"self_add\": true",
        );
        let e = Config::parse(&new).expect_err("self_add in a new cluster");
        assert!(e.to_string().contains("etcd.self_add"), "{e}");
    }

    #[test]
    fn with_a_discovery_url_the_service_decides_member_or_worker() {
        let text = r#"{"hostname": "node7", "network": {"address": "10.219.0.17/24"},
            "etcd": {"discovery": "http://10.219.0.1:8087/0123abcd"}}"#;
        let c = Config::parse(text).expect("a discovery config");
        let files: BTreeMap<_, _> = render(&c)
            .into_iter()
            .map(|f| (f.path, f.contents))
            .collect();
        let env = &files["/etc/etcd-lite/etcd-lite.env"];
        for want in [
            "ETCD_NAME=node7\n",
            "ETCD_DISCOVERY=http://10.219.0.1:8087/0123abcd\n",
            "ETCD_DISCOVERY_FALLBACK=proxy\n",
            "ETCD_INITIAL_ADVERTISE_PEER_URLS=http://10.219.0.17:2380\n",
            "ETCD_ADVERTISE_CLIENT_URLS=http://10.219.0.17:2379\n",
        ] {
            assert!(env.contains(want), "{want} in {env}");
        }
        assert!(!env.contains("ETCD_INITIAL_CLUSTER"));
        assert!(!files.contains_key("/etc/etcd-lite/gateway.env"));
    }

    #[test]
    fn a_node_with_tls_serves_every_port_over_tls_and_takes_ssh_keys_and_ntp() {
        let ca = crate::pki::Ca::generate("ca", 10).expect("ca");
        let names = ["node1".to_string(), "10.219.0.11".into()];
        let node = ca.issue("node1", &names, true, 10).expect("node");
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEYbLh2DgSE+NfMwXAh4G7y0Fff5uYHN5BuzetvvVekH op@laptop";
        let text = serde_json::json!({
            "hostname": "node1",
            "network": {"address": "10.219.0.11/24"},
            "etcd": {"initial_cluster": "node1=https://10.219.0.11:2380"},
            "tls": {"ca": ca.pair.cert, "cert": node.cert, "key": node.key},
            "ssh": {"authorized_keys": [key]},
            "time": {"ntp": ["ntp.example.org", "10.219.0.1"]},
        });
        let mut with_auth = text.clone();
        with_auth["etcd"]["auth"] = serde_json::json!(true);
        let text = text.to_string();
        let c = Config::parse(&text).expect("a config with tls");
        let files: BTreeMap<_, _> = render(&c)
            .into_iter()
            .map(|f| (f.path.clone(), f))
            .collect();
        assert_eq!(files["/etc/corelite/pki/node-key.pem"].mode, 0o600);
        assert_eq!(files["/etc/corelite/pki/ca.pem"].contents, ca.pair.cert);
        let etcd = &files["/etc/etcd-lite/etcd-lite.env"].contents;
        for want in [
            "ETCD_LISTEN_CLIENT_URLS=https://0.0.0.0:2379\n",
            "ETCD_LISTEN_PEER_URLS=https://0.0.0.0:2380\n",
            "ETCD_ADVERTISE_CLIENT_URLS=https://10.219.0.11:2379\n",
            "ETCD_CLIENT_CERT_AUTH=true\n",
            "ETCD_PEER_CLIENT_CERT_AUTH=true\n",
            "ETCD_PEER_TRUSTED_CA_FILE=/etc/corelite/pki/ca.pem\n",
        ] {
            assert!(etcd.contains(want), "{etcd} lacks {want}");
        }
        let fleet = &files["/etc/fleet/fleetd.env"].contents;
        for want in [
            "FLEET_ETCD_SERVERS=https://127.0.0.1:2379\n",
            "FLEET_ETCD_CERTFILE=/etc/corelite/pki/node.pem\n",
            "FLEET_LISTEN_TCP=0.0.0.0:49153\n",
            "FLEET_API_TRUSTED_CA_FILE=/etc/corelite/pki/ca.pem\n",
        ] {
            assert!(fleet.contains(want), "{fleet} lacks {want}");
        }
        assert!(!fleet.contains("INSECURE"));
        assert!(files["/etc/ssh/authorized_keys/core"]
            .contents
            .contains(key));
        assert!(files["/etc/systemd/timesyncd.conf.d/10-corelite.conf"]
            .contents
            .contains("NTP=ntp.example.org 10.219.0.1\n"));

        assert!(!files.contains_key("/etc/corelite/etcd-auth.env"));
        let c = Config::parse(&with_auth.to_string()).expect("auth on");
        let files: BTreeMap<_, _> = render(&c)
            .into_iter()
            .map(|f| (f.path.clone(), f))
            .collect();
        assert_eq!(
            files["/etc/corelite/etcd-auth.env"].contents,
            "# Written by corelite-firstboot.\nCORELITE_ETCD_AUTH_NODES=node1\n"
        );

        // The same node with someone else's address fails on the certificate.
        let moved = text.replace("10.219.0.11/24", "10.219.0.12/24");
        let e = Config::parse(&moved).expect_err("a certificate for another address");
        assert!(e.to_string().starts_with("tls.cert: "), "{e}");
    }

    #[test]
    fn without_tls_fleet_listens_on_tcp_only_when_told_it_is_insecure() {
        let plain = Config::parse(r#"{"hostname": "n"}"#).expect("plain");
        let files = render(&plain);
        let fleet = &files
            .iter()
            .find(|f| f.path == "/etc/fleet/fleetd.env")
            .expect("fleet env")
            .contents;
        assert!(!fleet.contains("FLEET_LISTEN_TCP"), "{fleet}");
        let open = Config::parse(
            r#"{"hostname": "n", "fleet": {"listen_tcp": "0.0.0.0:49153", "insecure_listen_tcp": true}}"#,
        )
        .expect("insecure on purpose");
        let files = render(&open);
        let fleet = &files
            .iter()
            .find(|f| f.path == "/etc/fleet/fleetd.env")
            .expect("fleet env")
            .contents;
        assert!(
            fleet.contains("FLEET_INSECURE_LISTEN_TCP=true\n"),
            "{fleet}"
        );
    }

    #[test]
    fn dhcp_by_default() {
        let c = Config::parse(r#"{"hostname": "n"}"#).expect("a minimal config");
        let files: BTreeMap<_, _> = render(&c)
            .into_iter()
            .map(|f| (f.path, f.contents))
            .collect();
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
                "does not name this node (n): list it there (a member) or in etcd.workers",
            ),
            (
                r#"{"hostname": "n", "etcd": {}}"#,
                "give the members (or etcd.discovery)",
            ),
            (
                r#"{"hostname": "n", "etcd": {"discovery": "http://d/t"}}"#,
                "needs a static network.address",
            ),
            (
                r#"{"hostname": "n", "network": {"address": "10.0.0.3/24"}, "etcd": {"discovery": "ftp://d/t"}}"#,
                "etcd.discovery",
            ),
            (
                r#"{"hostname": "n", "network": {"address": "10.0.0.3/24"}, "etcd": {"discovery": "http://d/t", "initial_cluster": "n=http://1.2.3.4:2380"}}"#,
                "not both",
            ),
            (
                r#"{"hostname": "n", "etcd": {"initial_cluster": "n=http://1.2.3.4:2380", "workers": ["n"]}}"#,
                "is a member (in initial_cluster) and a worker",
            ),
            (
                r#"{"hostname": "n", "etcd": {"initial_cluster": "x=http://1.2.3.4:2380", "workers": ["n", "bad_name"]}}"#,
                "etcd.workers",
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
            (
                r#"{"hostname": "n", "etcd": {"initial_cluster": "n=https://1.2.3.4:2380"}}"#,
                "https:// needs tls",
            ),
            (
                r#"{"hostname": "n", "fleet": {"listen_tcp": "0.0.0.0:49153"}}"#,
                "give the node tls",
            ),
            (
                r#"{"hostname": "n", "etcd": {"initial_cluster": "n=http://1.2.3.4:2380", "auth": true}}"#,
                "etcd.auth",
            ),
            (
                r#"{"hostname": "n", "ssh": {"authorized_keys": ["ssh-ed25519"]}}"#,
                "ssh.authorized_keys[0]",
            ),
            (
                r#"{"hostname": "n", "ssh": {"authorized_keys": ["ssh-dss AAAA"]}}"#,
                "not a public key type",
            ),
            (
                r#"{"hostname": "n", "ssh": {"authorized_keys": ["ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQAB"]}}"#,
                "not a ssh-ed25519 key",
            ),
            (
                r#"{"hostname": "n", "time": {"ntp": ["a b"]}}"#,
                "time.ntp[0]",
            ),
            (
                r#"{"hostname": "n", "tls": {"ca": "x", "cert": "y", "key": "z"}}"#,
                "tls.ca",
            ),
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
