//! The etcd-lite binary: parse flags, open the store, serve until SIGTERM/SIGINT.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use etcd_lite::config::Config;
use etcd_lite::consensus::transport::{PeerService, PeerTransport};
use etcd_lite::server::{EtcdServer, Limits};
use tracing_subscriber::EnvFilter;

/// glibc's allocator took a seventh of a loaded member's CPU (`_int_malloc`: sled and raft
/// allocate per entry, from many threads); with mimalloc a put costs about 15% less CPU.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long open streams (watches, keep-alives) may keep shutdown waiting.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// HTTP/2 flow-control window of each peer stream (bytes in flight before an update).
const PEER_STREAM_WINDOW: u32 = 8 << 20;

fn init_logs(cfg: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!("{},sled=warn,h2=warn,hyper=warn", cfg.log_level))
    });
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.log_format == "json" {
        b.json().init();
    } else {
        b.init();
    }
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

/// A panic on any thread ends the process: a member whose raft or apply thread died would
/// otherwise keep its ports open and answer nothing useful, and no supervisor would restart it.
fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        tracing::error!(panic = %info, "a thread panicked; stopping the process");
        std::process::abort();
    }));
}

/// What the discovery service said.
enum Discovered {
    /// The initial cluster, this member in it.
    Member(String),
    /// The cluster is full without this member: the members' peer URLs.
    Full(Vec<String>),
}

/// etcd's v2 discovery for a first start: registers this member under the token URL `url`
/// and waits for the rest; the initial cluster they form.
async fn discover(cfg: &Config, url: &str) -> anyhow::Result<Discovered> {
    if cfg.initial_cluster.is_some() {
        anyhow::bail!("--discovery and --initial-cluster exclude each other: give one");
    }
    let mut me = cfg.clone();
    me.initial_cluster_token = url.to_string();
    let member = me.member()?;
    let entry = member
        .peer_urls
        .iter()
        .map(|u| format!("{}={u}", member.name))
        .collect::<Vec<_>>()
        .join(",");
    let (url, proxy) = (url.to_string(), cfg.discovery_proxy.clone());
    tracing::info!(url = %url, member_id = %format!("{:x}", member.id), "discovering the cluster");
    let found = tokio::task::spawn_blocking(move || {
        use etcd_lite::discovery::{Discovery, DiscoveryError};
        let d = Discovery::new(&url, proxy.as_deref())?;
        match d.join(member.id, &entry) {
            Ok(cluster) => Ok(Discovered::Member(cluster)),
            Err(DiscoveryError::FullCluster) => Ok(Discovered::Full(d.members()?)),
            Err(e) => Err(e),
        }
    })
    .await??;
    if let Discovered::Member(cluster) = &found {
        tracing::info!(initial_cluster = %cluster, "discovered the cluster");
    }
    Ok(found)
}

/// The members' client URLs, as they told them in `hello`.
fn hello_clients(hello: &etcd_api::raftpeer::HelloResponse) -> Vec<String> {
    hello
        .members
        .iter()
        .flat_map(|m| m.client_urls.clone())
        .collect()
}

/// A Cluster service client for a member's client URL (https with `tls`: the peer
/// certificate, which the image's members also accept on their client port).
async fn cluster_client(
    url: &str,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> anyhow::Result<etcd_api::etcdserverpb::cluster_client::ClusterClient<tonic::transport::Channel>>
{
    let mut ep = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10));
    if url.starts_with("https://") {
        ep = ep.tls_config(
            tls.cloned()
                .context("https:// client URLs need the peer TLS files")?,
        )?;
    }
    Ok(etcd_api::etcdserverpb::cluster_client::ClusterClient::new(
        ep.connect().await?,
    ))
}

/// `--self-add`: MemberAdd of this member's peer URLs as a learner, through the first member
/// that takes it; the new member's id.
async fn add_self_as_learner(
    hello: &etcd_api::raftpeer::HelloResponse,
    peer_urls: &[String],
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> anyhow::Result<u64> {
    let clients = hello_clients(hello);
    if clients.is_empty() {
        anyhow::bail!("--self-add: no member has told its client URLs yet; try again shortly");
    }
    let mut why = Vec::new();
    for url in &clients {
        let added = async {
            let mut c = cluster_client(url, tls).await?;
            let r = c
                .member_add(etcd_api::etcdserverpb::MemberAddRequest {
                    peer_ur_ls: peer_urls.to_vec(),
                    is_learner: true,
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
            r.into_inner()
                .member
                .map(|m| m.id)
                .context("the answer names no member")
        }
        .await;
        match added {
            Ok(id) => return Ok(id),
            Err(e) => why.push(format!("{url}: {e:#}")),
        }
    }
    anyhow::bail!("--self-add: no member added this one: {}", why.join("; "))
}

/// `--self-add`: while this member is a learner, asks the other members (at the client URLs
/// they published, which reach a learner through the log) to promote it; the leader refuses
/// until it has caught up. Returns once it is a voter, at once for a voter (a restart).
async fn promote_self(
    server: std::sync::Arc<EtcdServer>,
    tls: Option<tonic::transport::ClientTlsConfig>,
) {
    let id = server.member.id;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        match server.status().await {
            Ok(st) if st.voters.contains(&id) => {
                tracing::info!("this member is a voter");
                return;
            }
            _ => {}
        }
        let clients: Vec<String> = server
            .clients
            .read()
            .iter()
            .filter(|(m, _)| **m != id)
            .flat_map(|(_, urls)| urls.clone())
            .collect();
        for url in &clients {
            let Ok(mut c) = cluster_client(url, tls.as_ref()).await else {
                continue;
            };
            match c
                .member_promote(etcd_api::etcdserverpb::MemberPromoteRequest { id })
                .await
            {
                Ok(_) => break,
                Err(e) => tracing::debug!(%url, error = %e.message(), "promoting this learner"),
            }
        }
    }
}

/// `--discovery-fallback proxy`, for a node that found the discovered cluster full: it serves
/// its client URL as a gateway to the members (etcd falls back to its v2 proxy), writing
/// nothing to its data directory; a restart asks the discovery service again.
async fn proxy_to(cfg: &Config, peer_urls: Vec<String>) -> anyhow::Result<()> {
    let peer_tls = match cfg.peer_tls()? {
        Some(t) => Some(etcd_lite::tls::peer_configs(&t).context("loading the peer TLS files")?),
        None => None,
    };
    // The members publish their client URLs once they run: ask until they have.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let endpoints = loop {
        let hello =
            etcd_lite::consensus::transport::hello(&peer_urls, peer_tls.as_ref().map(|t| &t.1))
                .await;
        let clients: Vec<String> = hello
            .iter()
            .flat_map(|h| h.members.iter().flat_map(|m| m.client_urls.clone()))
            .collect();
        if !clients.is_empty() {
            break clients;
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "discovery: cluster is full, and none of its members ({}) told its client URLs to proxy to",
                peer_urls.join(",")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (listen, _) = *cfg
        .listen_addrs()?
        .first()
        .context("--listen-client-urls: no address to serve the proxy on")?;
    tracing::warn!(
        members = ?endpoints,
        %listen,
        "discovery: cluster is full; serving as a gateway to its members (--discovery-fallback proxy)"
    );
    let gateway = etcd_lite::gateway::GatewayConfig {
        endpoints: endpoints.join(","),
        discovery_srv: None,
        discovery_srv_name: String::new(),
        listen_addr: listen,
        retry_delay: Duration::from_secs(5),
        refresh_interval: Duration::from_secs(10),
        log_level: cfg.log_level.clone(),
    };
    etcd_lite::gateway::run(gateway, shutdown_signal()).await
}

/// `etcd-lite gateway start ...`: the L4 gateway of [`etcd_lite::gateway`] instead of a member.
async fn gateway(args: Vec<String>) -> anyhow::Result<()> {
    use clap::Parser;
    if args.get(1).map(String::as_str) != Some("start") {
        anyhow::bail!("usage: etcd-lite gateway start [--endpoints ...] (see `etcd-lite gateway start --help`)");
    }
    // Go's flag package: -flag and --flag are the same.
    let flags = args[2..].iter().map(|a| {
        if a.len() > 2 && a.starts_with('-') && !a.starts_with("--") {
            format!("-{a}")
        } else {
            a.clone()
        }
    });
    let cfg = etcd_lite::gateway::GatewayConfig::parse_from(
        std::iter::once("etcd-lite gateway start".to_string()).chain(flags),
    );
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{},h2=warn", cfg.log_level)));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    etcd_lite::gateway::run(cfg, shutdown_signal()).await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new("snapshot")) {
        let args = std::env::args_os()
            .skip(2)
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        std::process::exit(tokio::task::block_in_place(|| {
            etcd_lite::backup::cli::run(args)
        }));
    }
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new("gateway")) {
        let args = std::env::args_os()
            .skip(1)
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        return gateway(args).await;
    }
    let mut cfg = Config::parse_go_style(std::env::args_os()).unwrap_or_else(|e| e.exit());
    init_logs(&cfg);
    exit_on_panic();
    let auth_tokens =
        etcd_lite::auth::TokenKind::parse(&cfg.auth_token).map_err(anyhow::Error::msg)?;
    let addrs = cfg.listen_addrs()?;
    let tls = match cfg.client_tls()? {
        Some(t) => Some(tokio_rustls::TlsAcceptor::from(
            etcd_lite::tls::server_config(&t).context("loading the client TLS certificate")?,
        )),
        None => None,
    };
    let data_dir = cfg.data_dir();
    if let Some(url) = cfg.discovery.clone() {
        if !data_dir.join("member").exists() {
            // A first start: the discovery service says who the cluster is. Nothing is written
            // to the data directory before it has answered.
            match discover(&cfg, &url).await? {
                Discovered::Member(cluster) => {
                    cfg.initial_cluster = Some(cluster);
                    cfg.initial_cluster_token = url;
                }
                Discovered::Full(members) if cfg.discovery_fallback == "proxy" => {
                    return proxy_to(&cfg, members).await;
                }
                Discovered::Full(_) => {
                    return Err(etcd_lite::discovery::DiscoveryError::FullCluster.into())
                }
            }
        }
    }
    if let Some(domain) = cfg.discovery_srv.clone() {
        if cfg.discovery.is_some() || cfg.initial_cluster.is_some() {
            anyhow::bail!(
                "multiple discovery or bootstrap flags are set: give one of --initial-cluster, --discovery or --discovery-srv"
            );
        }
        if !data_dir.join("member").exists() {
            let peer_urls: Vec<String> = cfg
                .initial_advertise_peer_urls
                .split(',')
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty())
                .collect();
            let cluster = etcd_lite::srv::initial_cluster(
                &domain,
                &cfg.discovery_srv_name,
                &cfg.name,
                &peer_urls,
            )
            .await?;
            tracing::info!(initial_cluster = %cluster, "discovered the cluster from DNS SRV records");
            cfg.initial_cluster = Some(cluster);
        }
    }
    let member = cfg.member()?;
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let peer_tls = match cfg.peer_tls()? {
        Some(t) => Some(etcd_lite::tls::peer_configs(&t).context("loading the peer TLS files")?),
        None => None,
    };
    let mut cluster = cfg.cluster()?;
    let clustered = cfg.initial_cluster.is_some()
        || cfg.discovery.is_some()
        || cfg.discovery_srv.is_some()
        || !cluster.new_cluster;
    let mut member = member;
    etcd_lite::wal::cut_corrupt_records(cfg.unsafe_wal_cut_corrupt);
    let opened = EtcdServer::open_store(&data_dir, cfg.cache_bytes)
        .with_context(|| format!("opening the store in {}", data_dir.display()))?;
    if let Some((id, cluster_id)) = opened.identity() {
        // A restart: this member is who its data directory says, whatever the flags say now.
        if (id, cluster_id) != (member.id, member.cluster_id) {
            tracing::info!(
                member_id = %format!("{id:x}"),
                cluster_id = %format!("{cluster_id:x}"),
                "the data directory's member and cluster ids win over --initial-cluster*"
            );
        }
        member.id = id;
        member.cluster_id = cluster_id;
    } else if !cluster.new_cluster {
        // Joining: the cluster's id is the existing members' (it includes members that were
        // added and removed since their --initial-cluster).
        let urls: Vec<String> = cluster
            .members
            .iter()
            .filter(|m| m.0 != member.id)
            .flat_map(|m| m.2.clone())
            .collect();
        let hello = etcd_lite::consensus::transport::hello(&urls, peer_tls.as_ref().map(|t| &t.1))
            .await
            .context("--initial-cluster-state existing: no existing member answered")?;
        member.cluster_id = hello.cluster_id;
        let mine = |h: &etcd_api::raftpeer::HelloResponse| {
            h.members
                .iter()
                .find(|m| m.peer_urls.iter().any(|u| member.peer_urls.contains(u)))
                .cloned()
        };
        let mut hello = hello;
        if mine(&hello).is_none() && cfg.self_add {
            let id =
                add_self_as_learner(&hello, &member.peer_urls, peer_tls.as_ref().map(|t| &t.1))
                    .await?;
            tracing::info!(member_id = %format!("{id:x}"), "added this member to the cluster as a learner");
            // The member list as it is now, this member in it.
            hello = etcd_lite::consensus::transport::hello(&urls, peer_tls.as_ref().map(|t| &t.1))
                .await
                .context("the cluster stopped answering after adding this member")?;
        }
        // Our id is the one `member add` gave our peer URLs.
        let me = mine(&hello).with_context(|| {
            format!(
                "this member's peer URLs {:?} are not in the cluster: run `etcdctl member add` first (or start with --self-add)",
                member.peer_urls
            )
        })?;
        member.id = me.id;
        cluster.members = hello
            .members
            .iter()
            .map(|m| {
                let name = if m.id == member.id {
                    member.name.clone()
                } else {
                    m.name.clone()
                };
                (m.id, name, m.peer_urls.clone())
            })
            .collect();
    }
    // Peers are added by the server from its member registry (and as membership changes).
    let transport = PeerTransport::start(
        member.cluster_id,
        member.id,
        &HashMap::new(),
        peer_tls.as_ref().map(|t| t.1.clone()),
    );
    let hook = transport.clone();
    let down = transport.clone();
    let on_peer: etcd_lite::machine::PeerHook = Box::new(move |id, url| match url {
        Some(u) => hook.add_peer(id, u),
        None => hook.remove_peer(id),
    });
    let server = EtcdServer::open(
        &data_dir,
        opened,
        member,
        Limits {
            auth_tokens,
            ..cfg.limits()
        },
        cluster,
        transport,
        on_peer,
    )
    .with_context(|| format!("opening the store in {}", data_dir.display()))?;
    let node = server.node.clone();
    down.on_peer_down(move |id| node.peer_down(id));
    tracing::info!(
        name = %server.member.name,
        member_id = %format!("{:x}", server.member.id),
        cluster_id = %format!("{:x}", server.member.cluster_id),
        data_dir = %data_dir.display(),
        revision = server.store.published(),
        "store opened"
    );
    server.spawn_lease_sweeper();
    server.spawn_publisher();
    if cfg.self_add {
        // Also after a restart before the promotion.
        tokio::spawn(promote_self(
            server.clone(),
            peer_tls.as_ref().map(|t| t.1.clone()),
        ));
    }
    let app = etcd_lite::http::router(server.clone(), cfg.enable_v2);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    // A restart without --initial-cluster*: the data directory knows the cluster's members.
    let clustered = clustered || server.registry.read().len() > 1;
    if clustered {
        server
            .peer_listening
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for (addr, https) in cfg.peer_listen_addrs()? {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening for peers on {addr}"))?;
            tracing::info!(%addr, tls = https, "ready to serve peer traffic");
            // Large windows: a snapshot for a new member arrives in one message, and a
            // busy stream of appends should not wait for window updates.
            let mut builder = tonic::transport::Server::builder()
                .initial_stream_window_size(Some(PEER_STREAM_WINDOW))
                .initial_connection_window_size(Some(2 * PEER_STREAM_WINDOW));
            if https {
                let tls = peer_tls.as_ref().map(|t| t.0.clone()).context(
                    "https:// peer URLs need --peer-cert-file, --peer-key-file and --peer-trusted-ca-file",
                )?;
                builder = builder
                    .tls_config(tls)
                    .context("setting up TLS for the peer listener")?;
            }
            let svc = PeerService::server(
                server.member.cluster_id,
                server.member.id,
                server.node.clone(),
                server.registry.clone(),
                server.clients.clone(),
                etcd_lite::consensus::transport::max_peer_message(
                    server.limits.quota_backend_bytes,
                ),
            );
            let mut stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                let incoming = tokio_stream::StreamExt::map(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    |conn| {
                        if let Ok(c) = &conn {
                            etcd_lite::consensus::transport::cap_retransmit_backoff(c);
                        }
                        conn
                    },
                );
                builder
                    .add_service(svc)
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = stop.changed().await;
                    })
                    .await
                    .map_err(std::io::Error::other)
            }));
        }
    }
    for (addr, https) in addrs {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        tracing::info!(%addr, tls = https, "ready to serve client requests");
        tasks.push(tokio::spawn(etcd_lite::serve::serve(
            listener,
            app.clone(),
            tls.clone().filter(|_| https),
            stop_rx.clone(),
        )));
    }
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    let drain = futures::future::join_all(tasks);
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::info!("closing streams still open after the grace period");
    }
    server.node.stop();
    tracing::info!("stopped");
    Ok(())
}
