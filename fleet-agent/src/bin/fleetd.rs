//! fleetd: the agent, the engine (one active per cluster) and fleet's HTTP API, on every machine.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use fleet_agent::api::{self, ApiState};
use fleet_agent::model::{Keys, Machine};
use fleet_agent::systemd::{Dbus, Simulated, Systemd};
use fleet_agent::{agent, engine, mirror::Mirror};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

/// fleetd: runs systemd units across a cluster, coordinated through etcd (or etcd-lite).
///
/// Every machine runs fleetd. It registers the machine (id from /etc/machine-id) under a lease,
/// runs the units the engine places on it through systemd over D-Bus, reports their state, and
/// serves fleet's HTTP API v1 on a unix socket (and optionally TCP). One fleetd in the cluster
/// is the engine that places units; another takes over when it dies.
///
/// Flags can also be given as FLEET_<FLAG> environment variables (FLEET_ETCD_SERVERS=...).
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "Examples:\n  \
    fleetd                                   # etcd-lite on 127.0.0.1:2379, API on /var/run/fleet.sock\n  \
    fleetd --etcd-servers http://10.0.0.1:2379,http://10.0.0.2:2379 --metadata region=eu,disk=ssd\n  \
    fleetd --listen-tcp 0.0.0.0:49153 --api-cert-file node.pem --api-key-file node-key.pem --api-trusted-ca-file ca.pem\n  \
                                             # also serve the API (and status/journal) over TLS\n  \
    fleetd --etcd-servers https://10.0.0.1:2379 --etcd-cafile ca.pem --etcd-certfile fleet.pem --etcd-keyfile fleet-key.pem\n  \
    curl --unix-socket /var/run/fleet.sock http://localhost/fleet/v1/machines"
)]
struct Args {
    /// etcd (or etcd-lite) client URLs, comma-separated.
    #[arg(
        long,
        env = "FLEET_ETCD_SERVERS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    etcd_servers: Vec<String>,
    /// CA certificate (PEM) of https:// etcd servers.
    #[arg(long, env = "FLEET_ETCD_CAFILE")]
    etcd_cafile: Option<PathBuf>,
    /// Client certificate (PEM) for etcd servers that require one.
    #[arg(long, env = "FLEET_ETCD_CERTFILE")]
    etcd_certfile: Option<PathBuf>,
    /// Private key (PEM) of --etcd-certfile.
    #[arg(long, env = "FLEET_ETCD_KEYFILE")]
    etcd_keyfile: Option<PathBuf>,
    /// Where fleet keeps its keys in the store.
    #[arg(
        long,
        env = "FLEET_ETCD_KEY_PREFIX",
        default_value = "/_coreos.com/fleet/"
    )]
    etcd_key_prefix: String,
    /// Timeout of each store request, in seconds.
    #[arg(long, env = "FLEET_ETCD_REQUEST_TIMEOUT", default_value_t = 5.0)]
    etcd_request_timeout: f64,
    /// Machine metadata, key=value pairs, comma-separated (matched by MachineMetadata=).
    #[arg(long, env = "FLEET_METADATA", default_value = "")]
    metadata: String,
    /// The address other machines reach this one at (default: the local address used to reach
    /// the store).
    #[arg(long, env = "FLEET_PUBLIC_IP")]
    public_ip: Option<String>,
    /// How long the machine stays registered without a heartbeat before its units move.
    #[arg(long, env = "FLEET_AGENT_TTL", default_value = "30s", value_parser = parse_duration)]
    agent_ttl: Duration,
    /// Lease of the engine role: how long a dead engine is waited for.
    #[arg(long, env = "FLEET_ENGINE_TTL", default_value = "10s", value_parser = parse_duration)]
    engine_ttl: Duration,
    /// File holding this machine's id.
    #[arg(long, env = "FLEET_MACHINE_ID_FILE", default_value = "/etc/machine-id")]
    machine_id_file: PathBuf,
    /// Unix socket of the fleet API.
    #[arg(long, env = "FLEET_LISTEN", default_value = "/var/run/fleet.sock")]
    listen: PathBuf,
    /// Also serve the API over TCP at this address (needed for status/journal of units on
    /// other machines), over TLS with client certificates: needs --api-cert-file,
    /// --api-key-file and --api-trusted-ca-file (or --insecure-listen-tcp).
    #[arg(long, env = "FLEET_LISTEN_TCP")]
    listen_tcp: Option<SocketAddr>,
    /// This machine's certificate (PEM) for the TCP API; also presented to other machines'
    /// APIs when forwarding status and journal requests.
    #[arg(long, env = "FLEET_API_CERT_FILE")]
    api_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --api-cert-file.
    #[arg(long, env = "FLEET_API_KEY_FILE")]
    api_key_file: Option<PathBuf>,
    /// CA (PEM) that must have signed every TCP API client's certificate (and other machines'
    /// API certificates).
    #[arg(long, env = "FLEET_API_TRUSTED_CA_FILE")]
    api_trusted_ca_file: Option<PathBuf>,
    /// Serve --listen-tcp over plain HTTP without client certificates. Anyone who reaches the
    /// port can then run any program as root on every machine: trusted networks only.
    #[arg(long, env = "FLEET_INSECURE_LISTEN_TCP")]
    insecure_listen_tcp: bool,
    /// Where unit files are written (linked into /run/systemd/system).
    #[arg(long, env = "FLEET_UNIT_DIR", default_value = "/run/fleet/units")]
    unit_dir: PathBuf,
    /// Do not run the engine on this machine.
    #[arg(long, env = "FLEET_DISABLE_ENGINE")]
    disable_engine: bool,
    /// Simulate systemd in memory instead of using D-Bus (testing and benchmarks only).
    #[arg(long, hide = true)]
    simulate_systemd: bool,
    /// Log level (error, warn, info, debug, trace).
    #[arg(long, env = "FLEET_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log format: text or json.
    #[arg(long, env = "FLEET_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (e.g. 30s, 500ms, 2m)"))?;
    if v.is_nan() || v <= 0.0 {
        return Err(format!("duration {s:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(v * mul))
}

fn parse_metadata(s: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("invalid --metadata {pair:?}: expected key=value"))?;
        if k.is_empty() {
            anyhow::bail!("invalid --metadata {pair:?}: empty key");
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// The local address used to reach the first store endpoint (no packet is sent).
fn detect_ip(servers: &[String]) -> Option<String> {
    let first = servers.first()?;
    let hostport = first.split("://").last()?.trim_end_matches('/');
    let addr: SocketAddr = hostport.parse().ok()?;
    let sock = std::net::UdpSocket::bind(if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })
    .ok()?;
    sock.connect(addr).ok()?;
    Some(sock.local_addr().ok()?.ip().to_string())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM, shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT, shutting down"),
    }
}

/// The API socket systemd passed in (fleetd.socket): LISTEN_PID is this process and LISTEN_FDS
/// counts descriptors from 3. None when fleetd was not socket-activated.
fn activated_listener() -> Option<std::os::unix::net::UnixListener> {
    let ours = std::env::var("LISTEN_PID").ok()?.parse::<u32>().ok()? == std::process::id();
    let n: u32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    if !ours || n < 1 {
        return None;
    }
    // SAFETY: systemd's protocol: descriptor 3 is a socket handed to this process (LISTEN_PID
    // checked above) and nothing else in fleetd owns it.
    #[allow(unsafe_code)]
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(3) };
    Some(std::os::unix::net::UnixListener::from(fd))
}

async fn serve_unix(
    path: PathBuf,
    app: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (listener, owned) = match activated_listener() {
        Some(l) => {
            l.set_nonblocking(true)
                .context("the socket systemd passed")?;
            tracing::info!("fleet API listening on the socket systemd passed (fleetd.socket)");
            (
                tokio::net::UnixListener::from_std(l).context("the socket systemd passed")?,
                false,
            )
        }
        None => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("removing stale {}", path.display()))
                }
            }
            let l = tokio::net::UnixListener::bind(&path)
                .with_context(|| format!("listening on {}", path.display()))?;
            // The API runs programs as root: only root (fleetd's user) may connect.
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("making {} private", path.display()))?;
            tracing::info!(socket = %path.display(), "fleet API listening");
            (l, true)
        }
    };
    let svc = hyper_util::service::TowerToHyperService::new(app);
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept on the API socket");
                        continue;
                    }
                },
                _ = shutdown.changed() => break,
            };
            let svc = svc.clone();
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
        // A socket systemd made stays for the next start (and keeps queueing clients).
        if owned {
            let _ = std::fs::remove_file(&path);
        }
    });
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{},h2=warn,hyper=warn,tower=warn,zbus=warn",
            args.log_level
        ))
    });
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_format == "json" {
        b.json().init();
    } else {
        b.init();
    }
    let id = std::fs::read_to_string(&args.machine_id_file)
        .with_context(|| format!("reading machine id from {}", args.machine_id_file.display()))?
        .trim()
        .to_string();
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        anyhow::bail!(
            "invalid machine id {id:?} in {}",
            args.machine_id_file.display()
        );
    }
    let metadata = parse_metadata(&args.metadata)?;
    let public_ip = args
        .public_ip
        .clone()
        .or_else(|| detect_ip(&args.etcd_servers))
        .unwrap_or_else(|| "127.0.0.1".into());
    let api_tls = api_tls(&args)?;
    let api_url = args.listen_tcp.map(|a| {
        let host = if a.ip().is_unspecified() {
            public_ip.clone()
        } else {
            a.ip().to_string()
        };
        let scheme = if api_tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{host}:{}", a.port())
    });
    let me = Machine {
        id: id.clone(),
        primary_ip: public_ip,
        metadata,
        api_url,
    };
    let timeout = Duration::from_secs_f64(args.etcd_request_timeout.max(0.1));
    let tls = kv_client::Tls {
        ca_file: args.etcd_cafile.clone(),
        cert_file: args.etcd_certfile.clone(),
        key_file: args.etcd_keyfile.clone(),
    };
    let client = kv_client::Client::with_tls(&args.etcd_servers, timeout, &tls)?;
    let keys = Keys::new(&args.etcd_key_prefix);
    tracing::info!(machine = %me.id, ip = %me.primary_ip, servers = ?args.etcd_servers, "fleetd starting");

    if args.simulate_systemd {
        run(
            args,
            client,
            keys,
            me,
            api_tls,
            Arc::new(Simulated::default()),
        )
        .await
    } else {
        let sd = Dbus::connect(&args.unit_dir)
            .await
            .context("connecting to systemd on the system bus")?;
        run(args, client, keys, me, api_tls, Arc::new(sd)).await
    }
}

/// The TCP API's TLS (server side, and the client side for reaching other machines' APIs),
/// from the --api-* files; none for plain HTTP, which must be asked for.
fn api_tls(
    args: &Args,
) -> anyhow::Result<Option<(rustls::ServerConfig, Arc<rustls::ClientConfig>)>> {
    let files = (
        &args.api_cert_file,
        &args.api_key_file,
        &args.api_trusted_ca_file,
    );
    let given = [files.0.is_some(), files.1.is_some(), files.2.is_some()];
    match (args.listen_tcp, files, args.insecure_listen_tcp) {
        (None, _, _) => Ok(None),
        (Some(_), (Some(cert), Some(key), Some(ca)), false) => {
            let server = fleet_agent::tls::server_config(cert, key, ca)?;
            let client = fleet_agent::tls::client_config(Some(ca), Some(cert), Some(key))?;
            Ok(Some((server, Arc::new(client))))
        }
        (Some(_), _, true) if given.iter().any(|g| *g) => anyhow::bail!(
            "--insecure-listen-tcp serves plain HTTP: drop it, or drop the --api-* files"
        ),
        (Some(addr), _, true) => {
            tracing::warn!(%addr, "fleet API on TCP without TLS (--insecure-listen-tcp): anyone who reaches it can run any program as root");
            Ok(None)
        }
        (Some(_), _, false) => anyhow::bail!(
            "--listen-tcp serves the fleet API (which runs programs as root) over TLS with client \
             certificates: give --api-cert-file, --api-key-file and --api-trusted-ca-file \
             (corelite-config new-cluster makes them), or --insecure-listen-tcp on a trusted network"
        ),
    }
}

async fn run<S: Systemd>(
    args: Args,
    client: kv_client::Client,
    keys: Keys,
    me: Machine,
    api_tls: Option<(rustls::ServerConfig, Arc<rustls::ClientConfig>)>,
    sd: Arc<S>,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mirror = Mirror::start(client.clone(), keys.clone());
    let heartbeat = agent::Heartbeat::start(
        client.clone(),
        keys.clone(),
        me.clone(),
        args.agent_ttl,
        stop_rx.clone(),
    );
    let app = api::router(Arc::new(ApiState {
        client: client.clone(),
        keys: keys.clone(),
        me: me.clone(),
        sd: sd.clone(),
        peer_tls: api_tls.as_ref().map(|(_, c)| c.clone()),
    }));
    serve_unix(args.listen.clone(), app.clone(), stop_rx.clone()).await?;
    if let Some(addr) = args.listen_tcp {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let mut stop = stop_rx.clone();
        match api_tls {
            Some((server, _)) => {
                tracing::info!(%addr, tls = true, "fleet API listening on TCP");
                tokio::spawn(fleet_agent::tls::serve(listener, app, server, stop));
            }
            None => {
                tracing::info!(%addr, tls = false, "fleet API listening on TCP");
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = stop.changed().await;
                        })
                        .await;
                });
            }
        }
    }
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(agent::run(
        client.clone(),
        keys.clone(),
        mirror.clone(),
        sd,
        me.clone(),
        heartbeat,
        stop_rx.clone(),
    )));
    if !args.disable_engine {
        tasks.push(tokio::spawn(engine::run(
            client,
            keys,
            mirror,
            me.id.clone(),
            args.engine_ttl,
            stop_rx,
        )));
    }
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    // Units keep running under systemd; the machine's lease lapses after --agent-ttl unless
    // fleetd comes back first.
    tokio::time::sleep(Duration::from_millis(50)).await;
    if std::env::var_os("LISTEN_FDS").is_none() {
        let _ = std::fs::remove_file(&args.listen);
    }
    tracing::info!("fleetd stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_metadata() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("-1s").is_err() && parse_duration("x").is_err());
        let md = parse_metadata("region=eu, disk=ssd").unwrap();
        assert_eq!(md["disk"], "ssd");
        assert!(parse_metadata("novalue").is_err());
        assert!(parse_metadata("=x").is_err());
        assert!(parse_metadata("").unwrap().is_empty());
    }
}
