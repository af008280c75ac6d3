//! Command-line configuration, with etcd's flag names and defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use sha2::{Digest, Sha256};

use crate::server::{ClusterSpec, Limits, MemberInfo};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "etcd-lite",
    version,
    about = "An etcd-compatible key-value store: etcd v3 gRPC, the v3 JSON gateway and the v2 keys API on one port",
    after_help = "EXAMPLES:
    # a single member on 127.0.0.1:2379 with data in ./default.etcd
    etcd-lite

    # named member, own data directory, listening on every interface
    etcd-lite --name node1 --data-dir /var/lib/etcd-lite \\
        --listen-client-urls http://0.0.0.0:2379 --advertise-client-urls http://10.0.0.1:2379

    # TLS for clients, with client certificates signed by ca.pem
    etcd-lite --listen-client-urls https://0.0.0.0:2379 --advertise-client-urls https://10.0.0.1:2379 \\
        --cert-file server.pem --key-file server-key.pem --client-cert-auth --trusted-ca-file ca.pem
    etcdctl --endpoints https://10.0.0.1:2379 --cacert ca.pem --cert client.pem --key client-key.pem get foo

    # TLS between members (each member's certificate serves as server and client)
    etcd-lite --name node1 --initial-cluster node1=https://10.0.0.1:2380,node2=https://10.0.0.2:2380 \\
        --listen-peer-urls https://10.0.0.1:2380 --initial-advertise-peer-urls https://10.0.0.1:2380 \\
        --peer-cert-file node1.pem --peer-key-file node1-key.pem --peer-trusted-ca-file ca.pem \\
        --peer-client-cert-auth

    # bootstrap through a discovery service (URL from https://discovery.etcd.io/new?size=3)
    etcd-lite --name node1 --listen-peer-urls http://10.0.0.1:2380 \\
        --initial-advertise-peer-urls http://10.0.0.1:2380 --discovery https://discovery.etcd.io/TOKEN

    # bootstrap from DNS SRV records (_etcd-server._tcp.example.com)
    etcd-lite --name node1 --listen-peer-urls http://10.0.0.1:2380 \\
        --initial-advertise-peer-urls http://node1.example.com:2380 --discovery-srv example.com

    # join a running cluster as a learner, promoted once caught up (no `member add` by hand)
    etcd-lite --name node4 --listen-peer-urls http://10.0.0.4:2380 \\
        --initial-advertise-peer-urls http://10.0.0.4:2380 --initial-cluster-state existing \\
        --initial-cluster node1=http://10.0.0.1:2380,node4=http://10.0.0.4:2380 --self-add

    # on a machine that is not a member: a local endpoint passing clients to the members
    etcd-lite gateway start --endpoints 10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379

    # back up, inspect and restore (etcd's snapshot format, etcdutl's flags)
    etcdctl --endpoints 127.0.0.1:2379 snapshot save backup.db
    etcd-lite snapshot status backup.db -w table
    etcd-lite snapshot restore backup.db --name node1 --data-dir node1.etcd \\
        --initial-cluster node1=http://10.0.0.1:2380 --initial-advertise-peer-urls http://10.0.0.1:2380

    # then, from another shell
    ETCDCTL_API=3 etcdctl --endpoints 127.0.0.1:2379 put foo bar
    curl -s http://127.0.0.1:2379/v2/keys/foo
    curl -s -X POST http://127.0.0.1:2379/v3/kv/range -d '{\"key\":\"Zm9v\"}'"
)]
pub struct Config {
    /// Human-readable name for this member.
    #[arg(long, default_value = "default", env = "ETCD_NAME")]
    pub name: String,
    /// Path to the data directory (default: <name>.etcd).
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Comma-separated URLs to listen on for client traffic.
    #[arg(
        long,
        default_value = "http://localhost:2379",
        env = "ETCD_LISTEN_CLIENT_URLS"
    )]
    pub listen_client_urls: String,
    /// Comma-separated client URLs of this member, as advertised to the cluster.
    #[arg(
        long,
        default_value = "http://localhost:2379",
        env = "ETCD_ADVERTISE_CLIENT_URLS"
    )]
    pub advertise_client_urls: String,
    /// Comma-separated URLs to listen on for peer traffic (opened when the cluster has other
    /// members).
    #[arg(
        long,
        default_value = "http://localhost:2380",
        env = "ETCD_LISTEN_PEER_URLS"
    )]
    pub listen_peer_urls: String,
    /// Comma-separated peer URLs of this member, as advertised to the cluster.
    #[arg(
        long,
        default_value = "http://localhost:2380",
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS"
    )]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration: name=peer-url,...
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Initial cluster state: new or existing.
    #[arg(long, default_value = "new", env = "ETCD_INITIAL_CLUSTER_STATE",
          value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,
    /// With --initial-cluster-state existing: when the cluster does not list this member's
    /// peer URLs yet, add it as a learner (MemberAdd through a member's client URL), then
    /// promote it to a voter once it has caught up. Without this flag such a member exits
    /// and asks for `etcdctl member add` first. The cluster must let this node add members
    /// (no etcd auth, or a root client certificate: the peer certificate is presented).
    #[arg(long, env = "ETCD_SELF_ADD", num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set, default_value_t = false)]
    pub self_add: bool,
    /// Initial cluster token, which makes cluster and member ids unique.
    #[arg(
        long,
        default_value = "etcd-cluster",
        env = "ETCD_INITIAL_CLUSTER_TOKEN"
    )]
    pub initial_cluster_token: String,
    /// Bootstrap through etcd's v2 discovery protocol: the token URL of a discovery service
    /// (`curl https://discovery.etcd.io/new?size=3`, or Debian's etcd-discovery). Replaces
    /// --initial-cluster and --initial-cluster-token on the first start.
    #[arg(long, env = "ETCD_DISCOVERY")]
    pub discovery: Option<String>,
    /// HTTP proxy to reach the discovery service through.
    #[arg(long, env = "ETCD_DISCOVERY_PROXY")]
    pub discovery_proxy: Option<String>,
    /// Bootstrap from DNS: the members are the SRV records `_etcd-server-ssl._tcp.DOMAIN`
    /// (https peer URLs) and `_etcd-server._tcp.DOMAIN` (http). Replaces --initial-cluster on
    /// the first start.
    #[arg(long, env = "ETCD_DISCOVERY_SRV")]
    pub discovery_srv: Option<String>,
    /// Suffix of the SRV names --discovery-srv looks up (`_etcd-server-NAME._tcp.DOMAIN`).
    #[arg(long, default_value = "", env = "ETCD_DISCOVERY_SRV_NAME")]
    pub discovery_srv_name: String,
    /// What a node that finds the discovered cluster full does: `exit` with etcd's
    /// "discovery: cluster is full", or `proxy`: serve its client URL as a gateway to the
    /// members (a worker; nothing is written to its data directory).
    #[arg(long, default_value = "proxy", env = "ETCD_DISCOVERY_FALLBACK",
          value_parser = ["exit", "proxy"])]
    pub discovery_fallback: String,
    /// Raft heartbeat interval in milliseconds (elections after 10 of them).
    #[arg(long, default_value_t = 100, env = "ETCD_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: u64,
    /// Applied entries between snapshots; a snapshot lets the raft log be compacted and brings
    /// lagging or new members up to date.
    #[arg(long, default_value_t = 10_000, env = "ETCD_SNAPSHOT_COUNT")]
    pub snapshot_count: u64,
    /// Accepted for etcd compatibility: the election timeout is 10 heartbeats.
    #[arg(long, default_value_t = 1000, env = "ETCD_ELECTION_TIMEOUT")]
    pub election_timeout: u64,
    /// Largest client request accepted, in bytes.
    #[arg(long, default_value_t = 1536 * 1024, env = "ETCD_MAX_REQUEST_BYTES")]
    pub max_request_bytes: usize,
    /// Size the backend may reach before the member raises the NOSPACE alarm and refuses writes
    /// (0: etcd's default, 2 GiB).
    #[arg(long, default_value_t = 0, env = "ETCD_QUOTA_BACKEND_BYTES")]
    pub quota_backend_bytes: u64,
    /// Bytes that Range answers being built or sent may hold at once. A Range that would go
    /// past it gets etcd's "too many requests" (ResourceExhausted) instead of memory the
    /// machine may not have; one answer larger than all of it is served when it is alone.
    #[arg(long, default_value_t = crate::server::DEFAULT_INFLIGHT_READ_BYTES, env = "ETCD_MAX_INFLIGHT_READ_BYTES")]
    pub max_inflight_read_bytes: usize,
    /// How clients' tokens are made once auth is enabled: `simple` (random tokens that every
    /// member learns through the log) or
    /// `jwt,pub-key=PATH,priv-key=PATH,sign-method=RS256|ES256|EdDSA|...,ttl=5m` (signed tokens
    /// any member with the public key checks by itself).
    #[arg(long, default_value = "simple", env = "ETCD_AUTH_TOKEN")]
    pub auth_token: String,
    /// Seconds a simple token stays valid after its last use.
    #[arg(long, default_value_t = 300, env = "ETCD_AUTH_TOKEN_TTL")]
    pub auth_token_ttl: u64,
    /// bcrypt cost of password hashes (4-31).
    #[arg(long, default_value_t = 10, env = "ETCD_BCRYPT_COST", value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,
    /// Interval of watch progress notifications, in seconds.
    #[arg(long, default_value_t = 600)]
    pub watch_progress_notify_interval: u64,
    /// Memory the storage engine may use for its page cache, in bytes.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    pub cache_bytes: u64,
    /// Log level: debug, info, warn or error.
    #[arg(long, default_value = "info", env = "ETCD_LOG_LEVEL")]
    pub log_level: String,
    /// Log format: text or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Certificate (PEM, chain first) served on https:// client URLs.
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of --cert-file.
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Require clients on https:// URLs to present a certificate signed by --trusted-ca-file.
    #[arg(long, env = "ETCD_CLIENT_CERT_AUTH", num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set, default_value_t = false)]
    pub client_cert_auth: bool,
    /// CA certificates (PEM) that client certificates must chain to.
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Certificate (PEM) this member presents to peers, as server and as client, on https://
    /// peer URLs.
    #[arg(long, env = "ETCD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --peer-cert-file.
    #[arg(long, env = "ETCD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// Require peers connecting to this member to present a certificate signed by
    /// --peer-trusted-ca-file.
    #[arg(long, env = "ETCD_PEER_CLIENT_CERT_AUTH", num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set, default_value_t = false)]
    pub peer_client_cert_auth: bool,
    /// CA certificates (PEM) that peers' certificates must chain to.
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Start even though a write-ahead log holds a corrupt record with intact records after
    /// it, by cutting the log at that record (everything after it is lost). Without this flag
    /// such a member refuses to start. Last resort: prefer removing the member and adding it
    /// again, so that it copies the cluster's data from a peer.
    #[arg(long, default_value_t = false)]
    pub unsafe_wal_cut_corrupt: bool,
    /// Serve the v2 API (/v2/keys, /v2/machines, /v2/stats, /v2/auth). On unless set to
    /// false (etcd 3.4 has it off by default; corelite's image and older clients use it).
    #[arg(long, env = "ETCD_ENABLE_V2", num_args = 0..=1, default_missing_value = "true",
          action = clap::ArgAction::Set, default_value_t = true)]
    pub enable_v2: bool,
}

impl Config {
    /// Parses etcd's command line as Go's flag package does: `-name x` like `--name x`, and a
    /// flag given again keeps its last value (scripts and units written for etcd start it so).
    pub fn parse_go_style<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString>,
    {
        use clap::{CommandFactory, FromArgMatches};
        let cmd = Config::command().args_override_self(true);
        // `-abc` is the flag abc (Go has no clusters of one-letter flags); `-1` stays a value.
        let args = args
            .into_iter()
            .map(Into::into)
            .map(|a: std::ffi::OsString| match a.to_str() {
                Some(s)
                    if s.len() > 2
                        && s.starts_with('-')
                        && !s.starts_with("--")
                        && s.as_bytes()[1].is_ascii_alphabetic() =>
                {
                    format!("-{s}").into()
                }
                _ => a,
            });
        let matches = cmd.try_get_matches_from(args)?;
        Config::from_arg_matches(&matches)
    }
}

/// The TLS settings between members (etcd's --peer-* flags).
#[derive(Debug, Clone, PartialEq)]
pub struct PeerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The CAs peers' certificates must chain to.
    pub ca_file: PathBuf,
    /// Whether connecting peers must present a certificate.
    pub client_cert_auth: bool,
}

/// The TLS settings of the client listeners (etcd's flags).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Client certificates are required and must chain to these CAs.
    pub client_ca_file: Option<PathBuf>,
}

/// A configuration error a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid URL {url:?} in --{flag}: {reason}")]
    BadUrl {
        flag: &'static str,
        url: String,
        reason: String,
    },
    #[error("--initial-cluster: {0}")]
    BadCluster(String),
    #[error("{0}")]
    Tls(String),
}

fn split(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Resolves a URL to an address to bind and whether it is https.
fn listen_url(flag: &'static str, raw: &str) -> Result<(SocketAddr, bool), ConfigError> {
    let bad = |reason: String| ConfigError::BadUrl {
        flag,
        url: raw.to_string(),
        reason,
    };
    let u = url::Url::parse(raw).map_err(|e| bad(e.to_string()))?;
    let tls = match u.scheme() {
        "http" => false,
        "https" => true,
        s => return Err(bad(format!("unsupported scheme {s:?}"))),
    };
    let host = match u.host_str() {
        Some("localhost") | None => "127.0.0.1".to_string(),
        Some(h) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
    };
    let port = u.port().ok_or_else(|| bad("a port is required".into()))?;
    let ip: std::net::IpAddr = host
        .parse()
        .map_err(|_| bad(format!("{host:?} is not an IP address")))?;
    Ok((SocketAddr::new(ip, port), tls))
}

fn hash_id(parts: &[&str]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("sha256 has 32 bytes"))
}

impl Config {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", self.name)))
    }

    /// The client listeners: address, and whether it speaks TLS.
    pub fn listen_addrs(&self) -> Result<Vec<(SocketAddr, bool)>, ConfigError> {
        split(&self.listen_client_urls)
            .iter()
            .map(|u| listen_url("listen-client-urls", u))
            .collect()
    }

    /// TLS for https:// client URLs: both files are needed when one such URL is given.
    pub fn client_tls(&self) -> Result<Option<ClientTls>, ConfigError> {
        let any_https = self.listen_addrs()?.iter().any(|(_, tls)| *tls);
        if !any_https {
            return Ok(None);
        }
        let (Some(cert_file), Some(key_file)) = (&self.cert_file, &self.key_file) else {
            return Err(ConfigError::Tls(
                "--listen-client-urls has an https URL: --cert-file and --key-file are required"
                    .into(),
            ));
        };
        let client_ca_file = match (self.client_cert_auth, &self.trusted_ca_file) {
            (true, Some(ca)) => Some(ca.clone()),
            (true, None) => {
                return Err(ConfigError::Tls(
                    "--client-cert-auth needs --trusted-ca-file".into(),
                ))
            }
            (false, _) => None,
        };
        Ok(Some(ClientTls {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            client_ca_file,
        }))
    }

    /// The initial cluster as (name, peer URLs), in flag order; a name may repeat for several
    /// URLs, as in etcd.
    fn initial_members(&self) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
        let peer_urls = split(&self.initial_advertise_peer_urls);
        let initial = self
            .initial_cluster
            .clone()
            .unwrap_or_else(|| format!("{}={}", self.name, peer_urls.join(",")));
        let mut members: Vec<(String, Vec<String>)> = Vec::new();
        for entry in split(&initial) {
            let (name, url) = entry
                .split_once('=')
                .ok_or_else(|| ConfigError::BadCluster(format!("{entry:?} is not name=url")))?;
            let parsed = url::Url::parse(url)
                .map_err(|e| ConfigError::BadCluster(format!("{url:?}: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(ConfigError::BadCluster(format!(
                    "{url:?}: peer URLs are http:// or https://"
                )));
            }
            match members.iter_mut().find(|(n, _)| n == name) {
                Some((_, urls)) => urls.push(url.to_string()),
                None => members.push((name.to_string(), vec![url.to_string()])),
            }
        }
        if !members.iter().any(|(n, _)| *n == self.name) {
            return Err(ConfigError::BadCluster(format!(
                "this member ({}) is not in the initial cluster",
                self.name
            )));
        }
        Ok(members)
    }

    fn member_id(&self, urls: &[String]) -> u64 {
        let mut id_parts: Vec<&str> = vec!["member"];
        id_parts.extend(urls.iter().map(String::as_str));
        id_parts.sort_unstable();
        id_parts.push(&self.initial_cluster_token);
        hash_id(&id_parts)
    }

    /// This member's identity, derived like etcd's from peer URLs, name and cluster token.
    pub fn member(&self) -> Result<MemberInfo, ConfigError> {
        let members = self.initial_members()?;
        let peer_urls = members
            .iter()
            .find(|(n, _)| *n == self.name)
            .map(|(_, u)| u.clone())
            .unwrap_or_default();
        let mut all_urls: Vec<&str> = members
            .iter()
            .flat_map(|(_, u)| u.iter().map(String::as_str))
            .collect();
        all_urls.sort_unstable();
        let mut cluster_parts = vec!["cluster"];
        cluster_parts.extend(all_urls.iter().copied());
        cluster_parts.push(&self.initial_cluster_token);
        Ok(MemberInfo {
            id: self.member_id(&peer_urls),
            cluster_id: hash_id(&cluster_parts),
            name: self.name.clone(),
            peer_urls,
            client_urls: split(&self.advertise_client_urls),
        })
    }

    /// The initial members with their raft ids, and whether this is a new cluster.
    pub fn cluster(&self) -> Result<ClusterSpec, ConfigError> {
        let new_cluster = match self.initial_cluster_state.as_str() {
            "new" => true,
            "existing" => false,
            other => {
                return Err(ConfigError::BadCluster(format!(
                    "--initial-cluster-state {other:?}: use new or existing"
                )))
            }
        };
        let members = self
            .initial_members()?
            .into_iter()
            .map(|(name, urls)| (self.member_id(&urls), name, urls))
            .collect();
        Ok(ClusterSpec {
            members,
            new_cluster,
            tick: std::time::Duration::from_millis(self.heartbeat_interval.max(1)),
            snapshot_count: self.snapshot_count.max(1),
        })
    }

    /// The addresses to serve peers on: only when the cluster has other members.
    /// The peer listeners: address, and whether it speaks TLS.
    pub fn peer_listen_addrs(&self) -> Result<Vec<(SocketAddr, bool)>, ConfigError> {
        split(&self.listen_peer_urls)
            .iter()
            .map(|u| listen_url("listen-peer-urls", u))
            .collect()
    }

    /// TLS between members: needed as soon as one peer URL (listened on, advertised or in
    /// --initial-cluster) is https. Members present --peer-cert-file to each other and check
    /// each other's certificates against --peer-trusted-ca-file.
    pub fn peer_tls(&self) -> Result<Option<PeerTls>, ConfigError> {
        let urls = [
            self.listen_peer_urls.as_str(),
            self.initial_advertise_peer_urls.as_str(),
            self.initial_cluster.as_deref().unwrap_or(""),
        ];
        let any_https = urls
            .iter()
            .flat_map(|u| split(u))
            .any(|u| u.contains("https://"));
        if !any_https {
            return Ok(None);
        }
        let (Some(cert_file), Some(key_file), Some(ca_file)) = (
            &self.peer_cert_file,
            &self.peer_key_file,
            &self.peer_trusted_ca_file,
        ) else {
            return Err(ConfigError::Tls(
                "https:// peer URLs need --peer-cert-file, --peer-key-file and --peer-trusted-ca-file"
                    .into(),
            ));
        };
        Ok(Some(PeerTls {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            ca_file: ca_file.clone(),
            client_cert_auth: self.peer_client_cert_auth,
        }))
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_request_bytes: self.max_request_bytes,
            quota_backend_bytes: if self.quota_backend_bytes == 0 {
                crate::server::DEFAULT_QUOTA_BYTES
            } else {
                self.quota_backend_bytes
            },
            progress_interval: std::time::Duration::from_secs(
                self.watch_progress_notify_interval.max(1),
            ),
            max_inflight_read_bytes: self.max_inflight_read_bytes,
            auth_token_ttl: std::time::Duration::from_secs(self.auth_token_ttl.max(1)),
            bcrypt_cost: self.bcrypt_cost,
            auth_tokens: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> Config {
        let mut v = vec!["etcd-lite"];
        v.extend_from_slice(args);
        Config::parse_from(v)
    }

    #[test]
    fn flags_are_read_as_gos_flag_package_reads_them() {
        let go = |args: &[&str]| {
            let mut v = vec!["etcd-lite"];
            v.extend_from_slice(args);
            Config::parse_go_style(v)
        };
        let c = go(&[
            "-name",
            "n1",
            "-data-dir=/tmp/x",
            "--listen-client-urls",
            "http://127.0.0.1:1",
            "-listen-client-urls",
            "http://127.0.0.1:2",
            "-client-cert-auth",
        ])
        .expect("Go-style flags");
        assert_eq!(c.name, "n1");
        assert_eq!(c.data_dir(), PathBuf::from("/tmp/x"));
        assert_eq!(
            c.listen_addrs().ok(),
            Some(vec![("127.0.0.1:2".parse().expect("addr"), false)]),
            "the last of a repeated flag wins"
        );
        assert!(c.client_cert_auth);
        assert!(c.enable_v2, "v2 is served unless turned off");
        assert!(go(&["-enable-v2"]).expect("bare bool").enable_v2);
        assert!(!go(&["--enable-v2=false"]).expect("bool").enable_v2);
        // Not a flag of etcd's: still an error, with clap's message.
        let e = go(&["-no-such-flag"]).expect_err("unknown flag");
        assert!(e.to_string().contains("-no-such-flag"), "{e}");
        assert_eq!(
            go(&["-version"]).expect_err("prints").kind(),
            clap::error::ErrorKind::DisplayVersion
        );
    }

    #[test]
    fn defaults_match_etcd() {
        let c = cfg(&[]);
        assert_eq!(c.data_dir(), PathBuf::from("default.etcd"));
        assert_eq!(
            c.listen_addrs().ok(),
            Some(vec![("127.0.0.1:2379".parse().expect("addr"), false)])
        );
        assert_eq!(c.client_tls().ok(), Some(None));
        assert!(c.member().is_ok());
    }

    #[test]
    fn bad_urls_are_explained() {
        let c = cfg(&["--listen-client-urls", "http://nohost:2379"]);
        assert!(c.listen_addrs().is_err());
        let c = cfg(&["--listen-client-urls", "https://127.0.0.1:2379"]);
        let e = c.client_tls().expect_err("https needs a certificate");
        assert!(e.to_string().contains("--cert-file and --key-file"), "{e}");
        let tls = ["--cert-file", "c.pem", "--key-file", "k.pem"];
        let mut args = vec!["--listen-client-urls", "https://127.0.0.1:2379"];
        args.extend(tls);
        assert_eq!(
            cfg(&args)
                .client_tls()
                .ok()
                .flatten()
                .map(|t| t.client_ca_file),
            Some(None)
        );
        args.push("--client-cert-auth");
        let e = cfg(&args).client_tls().expect_err("no CA");
        assert!(e.to_string().contains("--trusted-ca-file"), "{e}");
        args.extend(["--trusted-ca-file", "ca.pem"]);
        assert_eq!(
            cfg(&args)
                .client_tls()
                .ok()
                .flatten()
                .map(|t| t.client_ca_file),
            Some(Some(PathBuf::from("ca.pem")))
        );
        let mut args = vec!["--client-cert-auth=false", "--trusted-ca-file", "ca.pem"];
        args.extend(["--listen-client-urls", "https://127.0.0.1:2379"]);
        args.extend(tls);
        assert_eq!(
            cfg(&args)
                .client_tls()
                .ok()
                .flatten()
                .map(|t| t.client_ca_file),
            Some(None)
        );
        let c = cfg(&["--initial-cluster", "other=http://127.0.0.1:2380"]);
        assert!(c.member().is_err());
        let c = cfg(&["--initial-cluster", "default=https://127.0.0.1:2380"]);
        let e = c.peer_tls().expect_err("https peers need certificates");
        assert!(e.to_string().contains("--peer-trusted-ca-file"), "{e}");
        let c = cfg(&[
            "--initial-cluster",
            "default=https://127.0.0.1:2380",
            "--peer-cert-file",
            "p.pem",
            "--peer-key-file",
            "p-key.pem",
            "--peer-trusted-ca-file",
            "ca.pem",
            "--peer-client-cert-auth",
        ]);
        assert!(c
            .peer_tls()
            .is_ok_and(|t| t.is_some_and(|t| t.client_cert_auth)));
        assert_eq!(cfg(&[]).peer_tls().ok(), Some(None));
        let c = cfg(&["--initial-cluster", "default=ftp://127.0.0.1:2380"]);
        assert!(c.cluster().is_err());
    }

    #[test]
    fn initial_clusters_give_every_member_the_same_ids() {
        let cluster = "a=http://10.0.0.1:2380,b=http://10.0.0.2:2380,c=http://10.0.0.3:2380";
        let of = |name: &str, url: &str| {
            cfg(&[
                "--name",
                name,
                "--initial-cluster",
                cluster,
                "--initial-advertise-peer-urls",
                url,
            ])
        };
        let a = of("a", "http://10.0.0.1:2380");
        let b = of("b", "http://10.0.0.2:2380");
        let (ca, cb) = (a.cluster().expect("a"), b.cluster().expect("b"));
        assert_eq!(ca.members, cb.members);
        assert_eq!(ca.members.len(), 3);
        let (ma, mb) = (a.member().expect("a"), b.member().expect("b"));
        assert_eq!(ma.cluster_id, mb.cluster_id);
        assert_ne!(ma.id, mb.id);
        assert_eq!(ca.members[0].0, ma.id);
        assert_eq!(ca.members[1].0, mb.id);
    }
}
