//! etcd-bench: a load generator for any etcd v3 endpoint list, and a side-by-side comparison of
//! etcd-lite with the real etcd (Debian's etcd-server) in one run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use etcd_api::etcdserverpb::{kv_client::KvClient, PutRequest, RangeRequest};
use hdrhistogram::Histogram;
use prost::Message;
use tonic::transport::{Channel, ClientTlsConfig};

#[derive(Parser)]
#[command(
    name = "etcd-bench",
    about = "Load generator for etcd v3 endpoints, and etcd-lite vs etcd comparisons",
    after_help = "EXAMPLES:
    # 10k puts of 256-byte values from 16 clients against one endpoint
    etcd-bench load --endpoints 127.0.0.1:2379 --clients 16 --total 10000 put

    # linearizable ranges over 3 endpoints
    etcd-bench load --endpoints 10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379 range

    # etcd-lite vs /usr/bin/etcd, same workload, ratios printed (what `make bench` runs)
    etcd-bench compare"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one workload against an endpoint list.
    Load {
        #[arg(long, default_value = "127.0.0.1:2379", value_delimiter = ',')]
        endpoints: Vec<String>,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        #[arg(long, default_value_t = 10_000)]
        total: usize,
        #[arg(long, default_value_t = 256)]
        val_size: usize,
        #[arg(long)]
        serializable: bool,
        /// put or range
        op: String,
    },
    /// Start a 3-member etcd-lite cluster and a 3-member etcd cluster and compare them:
    /// throughput, latency, linearizable reads, leader failover after kill -9.
    CompareCluster {
        #[arg(long)]
        etcd_lite: Option<PathBuf>,
        #[arg(long, default_value = "/usr/bin/etcd")]
        etcd: PathBuf,
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Leader kills to take the median failover time over.
        #[arg(long, default_value_t = 5)]
        failovers: usize,
        /// Alternating etcd / etcd-lite rounds of the throughput rows (medians reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Backups and defragmentation side by side: `etcdctl snapshot save` from each server,
    /// `snapshot restore` by etcdctl 3.4 and by etcd-lite (time, peak RSS), and defrag after
    /// 90% of the keys are deleted and compacted (space given back, longest write wait).
    CompareBackup {
        #[arg(long)]
        etcd_lite: Option<PathBuf>,
        #[arg(long, default_value = "/usr/bin/etcd")]
        etcd: PathBuf,
        #[arg(long, default_value = "/usr/bin/etcdctl")]
        etcdctl: PathBuf,
        /// Key counts to save and restore (256-byte values).
        #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
        keys: Vec<usize>,
        /// Keys written before 90% are deleted, compacted and defragmented.
        #[arg(long, default_value_t = 100_000)]
        defrag_keys: usize,
    },
    /// Start etcd-lite and etcd side by side and compare them.
    Compare {
        /// The etcd-lite binary (default: next to this one).
        #[arg(long)]
        etcd_lite: Option<PathBuf>,
        /// The reference etcd binary.
        #[arg(long, default_value = "/usr/bin/etcd")]
        etcd: PathBuf,
        /// Scale every workload by this factor (1.0 = the README's numbers).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
    },
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Put,
    Range { serializable: bool },
}

/// A result row: name, value, whether higher is better.
type Metric = (String, f64, bool);

#[derive(Debug, Clone, Copy)]
struct Stats {
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn connect(
    endpoints: &[String],
    n: usize,
    tls: Option<&ClientTlsConfig>,
) -> Result<Vec<KvClient<Channel>>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let ep = &endpoints[i % endpoints.len()];
        out.push(KvClient::new(channel(ep, tls).await?));
    }
    Ok(out)
}

/// One connection to `ep` (host:port), over TLS with a client certificate when `tls` is given.
async fn channel(ep: &str, tls: Option<&ClientTlsConfig>) -> Result<Channel> {
    let ch = match tls {
        Some(t) => Channel::from_shared(format!("https://{ep}"))?.tls_config(t.clone())?,
        None => Channel::from_shared(format!("http://{ep}"))?,
    };
    ch.connect()
        .await
        .with_context(|| format!("connecting to {ep}"))
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate (made with rcgen), for
/// the TLS rows: both servers get the same files and flags.
struct BenchTls {
    dir: tempfile::TempDir,
    client: ClientTlsConfig,
}

impl BenchTls {
    fn new() -> Result<BenchTls> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        };
        let dir = tempfile::tempdir()?;
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::default();
        ca.distinguished_name.push(DnType::CommonName, "bench CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key)?;
        let issue = |cn: &str, names: Vec<String>, eku: Vec<ExtendedKeyUsagePurpose>| {
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::new(names)?;
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = eku;
            let cert = p.signed_by(&key, &ca_cert, &ca_key)?;
            Ok::<_, rcgen::Error>((cert.pem(), key.serialize_pem()))
        };
        let (server, server_key) = issue(
            "bench server",
            vec!["127.0.0.1".into()],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )?;
        let (client, client_key) =
            issue("bench", vec![], vec![ExtendedKeyUsagePurpose::ClientAuth])?;
        for (f, text) in [
            ("ca.pem", ca_cert.pem()),
            ("server.pem", server),
            ("server-key.pem", server_key),
        ] {
            std::fs::write(dir.path().join(f), text)?;
        }
        let client = ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca_cert.pem()))
            .identity(tonic::transport::Identity::from_pem(client, client_key));
        Ok(BenchTls { dir, client })
    }

    /// The server's flags (etcd's, which etcd-lite shares).
    fn server_args(&self) -> Vec<String> {
        let f = |n: &str| self.dir.path().join(n).display().to_string();
        vec![
            "--cert-file".into(),
            f("server.pem"),
            "--key-file".into(),
            f("server-key.pem"),
            "--trusted-ca-file".into(),
            f("ca.pem"),
            "--client-cert-auth".into(),
        ]
    }
}

/// Runs `total` operations spread over `clients` concurrent clients (one connection each).
async fn run(
    endpoints: &[String],
    clients: usize,
    total: usize,
    val_size: usize,
    op: Op,
    key_space: usize,
) -> Result<Stats> {
    run_as(
        endpoints, clients, total, val_size, op, key_space, None, None,
    )
    .await
}

/// A request carrying `token` as gRPC metadata, as etcd's clients send it after Authenticate.
fn with_token<T>(
    msg: T,
    token: Option<&tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut().insert("token", t.clone());
    }
    r
}

/// [`run`] as the user a token names (`None`: anonymous), over TLS when `tls` is given.
#[allow(clippy::too_many_arguments)]
async fn run_as(
    endpoints: &[String],
    clients: usize,
    total: usize,
    val_size: usize,
    op: Op,
    key_space: usize,
    token: Option<&str>,
    tls: Option<&ClientTlsConfig>,
) -> Result<Stats> {
    let token = token
        .map(str::parse)
        .transpose()
        .context("a token is ASCII")?;
    let conns = connect(endpoints, clients, tls).await?;
    let value = Arc::new(vec![b'x'; val_size]);
    let per = total.div_ceil(clients);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut kv) in conns.into_iter().enumerate() {
        let value = value.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new(3).expect("3 significant digits is valid");
            for i in 0..per {
                let key = format!("bench/{:08}", (c * per + i) % key_space.max(1)).into_bytes();
                let t = Instant::now();
                match op {
                    Op::Put => {
                        kv.put(with_token(
                            PutRequest {
                                key,
                                value: value.to_vec(),
                                ..Default::default()
                            },
                            token.as_ref(),
                        ))
                        .await?;
                    }
                    Op::Range { serializable } => {
                        kv.range(with_token(
                            RangeRequest {
                                key,
                                serializable,
                                ..Default::default()
                            },
                            token.as_ref(),
                        ))
                        .await?;
                    }
                }
                let _ = h.record(t.elapsed().as_micros() as u64);
            }
            Ok::<_, tonic::Status>(h)
        }));
    }
    let mut all = Histogram::<u64>::new(3)?;
    for t in tasks {
        all.add(t.await??)?;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(Stats {
        ops_per_sec: (per * clients) as f64 / secs,
        p50_ms: all.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: all.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

struct Server {
    child: Child,
    port: u16,
    peer: u16,
    dir: tempfile::TempDir,
    startup: Duration,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts a server and measures the time until its first successful Range.
async fn start(bin: &Path, lite: bool) -> Result<Server> {
    start_with(bin, lite, None).await
}

/// [`start`], serving clients over TLS with client certificates when `tls` is given.
async fn start_with(bin: &Path, lite: bool, tls: Option<&BenchTls>) -> Result<Server> {
    let dir = tempfile::tempdir()?;
    let (port, peer) = (free_port()?, free_port()?);
    spawn(bin, lite, dir, port, peer, tls).await
}

/// kill -9 the server, start it again on its data, and measure the time until its first
/// successful Range.
async fn restart(bin: &Path, lite: bool, server: Server) -> Result<Server> {
    let mut server = server;
    let _ = server.child.kill();
    let _ = server.child.wait();
    let (port, peer) = (server.port, server.peer);
    // The old server's Drop kills a process that is gone already.
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir()?);
    drop(server);
    spawn(bin, lite, dir, port, peer, None).await
}

async fn spawn(
    bin: &Path,
    lite: bool,
    dir: tempfile::TempDir,
    port: u16,
    peer: u16,
    tls: Option<&BenchTls>,
) -> Result<Server> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let client = format!("{scheme}://127.0.0.1:{port}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut cmd = Command::new(bin);
    cmd.arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("default={peer_url}")])
        .stdout(Stdio::null())
        .stderr(member_log(lite, port));
    if !lite {
        cmd.args(["--log-level", "error"]);
    }
    if let Some(t) = tls {
        cmd.args(t.server_args());
    }
    let t0 = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut server = Server {
        child,
        port,
        peer,
        dir,
        startup: Duration::ZERO,
    };
    let deadline = t0 + Duration::from_secs(60);
    loop {
        if Instant::now() > deadline {
            bail!("{} did not serve within 60 s", bin.display());
        }
        if let Ok(ch) = channel(&format!("127.0.0.1:{port}"), tls.map(|t| &t.client)).await {
            if KvClient::new(ch)
                .range(RangeRequest {
                    key: b"x".to_vec(),
                    ..Default::default()
                })
                .await
                .is_ok()
            {
                server.startup = t0.elapsed();
                return Ok(server);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Where a member's stderr goes: a file in `$ETCD_BENCH_LOGS` when it names a directory (with
/// `RUST_LOG=etcd_lite=debug`, etcd-lite logs how long each step of a start took), else nowhere.
fn member_log(lite: bool, port: u16) -> Stdio {
    let Some(dir) = std::env::var_os("ETCD_BENCH_LOGS") else {
        return Stdio::null();
    };
    let name = format!("{}-{port}.log", if lite { "etcd-lite" } else { "etcd" });
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(std::path::Path::new(&dir).join(name))
        .map_or_else(|_| Stdio::null(), Stdio::from)
}

fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS:")
}

/// A `/proc/PID/status` field given in kB, in MiB (0 if the process is gone).
fn status_mib(pid: u32, field: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

struct Row {
    name: String,
    lite: f64,
    etcd: f64,
    /// Whether bigger is better (ratio printed as lite/etcd) or smaller (etcd/lite).
    higher_better: bool,
}

/// Auth on (simple tokens, bcrypt at etcd's default cost) on a fresh member: root and a user
/// with read-write on `bench/`, then puts at 64 clients as that user; and the same puts while
/// logins (bcrypt checks) keep running beside them.
async fn measure_auth(bin: &Path, lite: bool, s: impl Fn(usize) -> usize) -> Result<Vec<Metric>> {
    use etcd_api::authpb::{permission::Type, Permission};
    use etcd_api::etcdserverpb::{auth_client::AuthClient, *};
    let srv = start(bin, lite).await?;
    let ep = vec![format!("127.0.0.1:{}", srv.port)];
    let ch = Channel::from_shared(format!("http://{}", ep[0]))?
        .connect()
        .await?;
    let mut auth = AuthClient::new(ch);
    for (name, password) in [("root", "rootpw"), ("bench", "benchpw")] {
        auth.user_add(AuthUserAddRequest {
            name: name.into(),
            password: password.into(),
            ..Default::default()
        })
        .await?;
    }
    for role in ["root", "bench"] {
        auth.role_add(AuthRoleAddRequest { name: role.into() })
            .await?;
    }
    auth.role_grant_permission(AuthRoleGrantPermissionRequest {
        name: "bench".into(),
        perm: Some(Permission {
            perm_type: Type::Readwrite as i32,
            key: b"bench/".to_vec(),
            range_end: b"bench0".to_vec(),
        }),
    })
    .await?;
    for (user, role) in [("root", "root"), ("bench", "bench")] {
        auth.user_grant_role(AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        })
        .await?;
    }
    auth.auth_enable(AuthEnableRequest {}).await?;
    let login = AuthenticateRequest {
        name: "bench".into(),
        password: "benchpw".into(),
    };
    let token = auth.authenticate(login.clone()).await?.into_inner().token;
    let st = run_as(
        &ep,
        64,
        s(40_000),
        256,
        Op::Put,
        usize::MAX,
        Some(&token),
        None,
    )
    .await?;
    let mut out = vec![
        (
            "put ops/s, 64 clients, auth on".to_string(),
            st.ops_per_sec,
            true,
        ),
        (
            "put p99 ms, 64 clients, auth on".to_string(),
            st.p99_ms,
            false,
        ),
    ];
    // Logins beside the puts: 4 at a time, back to back, until the puts are done.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut logins = Vec::new();
    for _ in 0..4 {
        let (mut auth, login, stop) = (auth.clone(), login.clone(), stop.clone());
        logins.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                auth.authenticate(login.clone()).await?;
                n += 1;
            }
            Ok::<_, tonic::Status>(n)
        }));
    }
    let st = run_as(
        &ep,
        64,
        s(40_000),
        256,
        Op::Put,
        usize::MAX,
        Some(&token),
        None,
    )
    .await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut n = 0;
    for l in logins {
        n += l.await??;
    }
    eprintln!("  ({n} logins during the puts)");
    out.push((
        "put p99 ms, 64 clients, auth on, 4 logins at a time beside".to_string(),
        st.p99_ms,
        false,
    ));
    Ok(out)
}

/// Puts at 16 and 64 clients over TLS, every client with a certificate (`--client-cert-auth`).
async fn measure_tls(bin: &Path, lite: bool, s: impl Fn(usize) -> usize) -> Result<Vec<Metric>> {
    let tls = BenchTls::new()?;
    let srv = start_with(bin, lite, Some(&tls)).await?;
    let ep = vec![format!("127.0.0.1:{}", srv.port)];
    let mut out = Vec::new();
    for (clients, total) in [(16, s(20_000)), (64, s(40_000))] {
        let st = run_as(
            &ep,
            clients,
            total,
            256,
            Op::Put,
            usize::MAX,
            None,
            Some(&tls.client),
        )
        .await?;
        out.push((
            format!("put ops/s, {clients} clients, TLS + client certs"),
            st.ops_per_sec,
            true,
        ));
        out.push((
            format!("put p99 ms, {clients} clients, TLS + client certs"),
            st.p99_ms,
            false,
        ));
    }
    Ok(out)
}

async fn measure(bin: &Path, lite: bool, scale: f64) -> Result<Vec<Metric>> {
    let s = |n: usize| ((n as f64 * scale) as usize).max(100);
    let srv = start(bin, lite).await?;
    let ep = vec![format!("127.0.0.1:{}", srv.port)];
    let mut out = vec![(
        "start-up to first request (ms)".to_string(),
        srv.startup.as_secs_f64() * 1000.0,
        false,
    )];
    for (clients, total) in [(1, s(2_000)), (16, s(20_000)), (64, s(40_000))] {
        let st = run(&ep, clients, total, 256, Op::Put, usize::MAX).await?;
        out.push((
            format!("put ops/s, {clients} clients"),
            st.ops_per_sec,
            true,
        ));
        out.push((format!("put p50 ms, {clients} clients"), st.p50_ms, false));
        out.push((format!("put p99 ms, {clients} clients"), st.p99_ms, false));
    }
    // The same puts over TLS with client certificates, and with auth on, beside the rows above.
    out.extend(measure_tls(bin, lite, s).await?);
    out.extend(measure_auth(bin, lite, s).await?);
    for serializable in [false, true] {
        let st = run(&ep, 16, s(40_000), 0, Op::Range { serializable }, s(10_000)).await?;
        let kind = if serializable {
            "serializable"
        } else {
            "linearizable"
        };
        out.push((
            format!("{kind} range ops/s, 16 clients"),
            st.ops_per_sec,
            true,
        ));
    }
    // Fill to 100k keys in total, then read the server's resident memory.
    run(&ep, 64, s(100_000), 256, Op::Put, s(100_000)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    out.push((
        "RSS after 100k keys (MiB)".to_string(),
        rss_mib(srv.child.id()),
        false,
    ));
    // A crash with those keys (and their write-ahead log) on disk: back to serving.
    let srv = restart(bin, lite, srv).await?;
    out.push((
        format!(
            "restart after kill -9 with {}k keys, to first request (ms)",
            s(100_000) / 1000
        ),
        srv.startup.as_secs_f64() * 1000.0,
        false,
    ));
    out.extend(big_reads(&srv, s(150_000)).await?);
    // Then a million keys (the HA issue's restart goal: serving within 1 s).
    let keys = s(1_000_000);
    run(&ep, 64, keys, 256, Op::Put, keys).await?;
    let srv = restart(bin, lite, srv).await?;
    out.push((
        format!(
            "restart after kill -9 with {}k keys, to first request (ms)",
            keys / 1000
        ),
        srv.startup.as_secs_f64() * 1000.0,
        false,
    ));
    Ok(out)
}

/// Memory for reads of everything: `keys` keys of 1 KiB, then one Range of all of them, and
/// four at once; the peak resident memory above the idle one (the kernel's high-water mark,
/// reset first), and that peak over the answer's size.
async fn big_reads(srv: &Server, keys: usize) -> Result<Vec<Metric>> {
    let ep = vec![format!("127.0.0.1:{}", srv.port)];
    run(&ep, 64, keys, 1024, Op::Put, keys).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = srv.child.id();
    let mut out = Vec::new();
    for readers in [1usize, 4] {
        let idle = rss_mib(pid);
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
            .context("resetting the peak RSS (/proc/PID/clear_refs)")?;
        let mut tasks = Vec::new();
        for kv in connect(&ep, readers, None).await? {
            tasks.push(tokio::spawn(async move {
                let mut kv = kv.max_decoding_message_size(usize::MAX);
                let resp = kv
                    .range(RangeRequest {
                        key: b"bench/".to_vec(),
                        range_end: b"bench0".to_vec(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Ok::<_, tonic::Status>((resp.kvs.len(), resp.encoded_len()))
            }));
        }
        let mut answer = 0;
        for t in tasks {
            let (n, len) = t.await??;
            if n < keys {
                bail!("a read of everything returned {n} keys of {keys}");
            }
            answer = len;
        }
        let answer_mib = answer as f64 / (1024.0 * 1024.0);
        let peak = hwm_mib(pid) - idle;
        let what = format!("range of all {}k keys x 1 KiB", keys / 1000);
        let what = if readers == 1 {
            what
        } else {
            format!("{readers} at once, {what}")
        };
        out.push((format!("{what}: peak RSS above idle (MiB)"), peak, false));
        out.push((
            format!("{what}: peak / answers' size"),
            peak / (answer_mib * readers as f64),
            false,
        ));
    }
    Ok(out)
}

/// The peak resident memory (since start or the last reset), in MiB.
fn hwm_mib(pid: u32) -> f64 {
    status_mib(pid, "VmHWM:")
}

async fn compare(lite_bin: PathBuf, etcd_bin: PathBuf, scale: f64) -> Result<()> {
    if !etcd_bin.exists() {
        bail!(
            "{} not found; run `make deps` (Debian package etcd-server)",
            etcd_bin.display()
        );
    }
    eprintln!("measuring etcd ({}) ...", etcd_bin.display());
    let etcd = measure(&etcd_bin, false, scale).await?;
    eprintln!("measuring etcd-lite ({}) ...", lite_bin.display());
    let lite = measure(&lite_bin, true, scale).await?;
    let rows: Vec<Row> = etcd
        .into_iter()
        .zip(lite)
        .map(|((name, e, hb), (_, l, _))| Row {
            name,
            lite: l,
            etcd: e,
            higher_better: hb,
        })
        .collect();
    println!(
        "{:<40} {:>12} {:>12} {:>8}",
        "metric", "etcd-lite", "etcd 3.4", "ratio"
    );
    for r in &rows {
        let ratio = if r.higher_better {
            r.lite / r.etcd
        } else {
            r.etcd / r.lite
        };
        println!(
            "{:<40} {:>12.1} {:>12.1} {:>7.2}x",
            r.name, r.lite, r.etcd, ratio
        );
    }
    println!("(ratio > 1 means etcd-lite is better: faster, higher throughput or smaller)");
    Ok(())
}

/// One member of a benchmark cluster.
struct Member {
    child: Option<Child>,
    client_port: u16,
    args: Vec<String>,
    bin: PathBuf,
}

impl Member {
    /// Starts the member; its logs go to `$BENCH_LOG_DIR/<name>.log` when that is set.
    fn spawn(&mut self) -> Result<()> {
        let log = match std::env::var_os("BENCH_LOG_DIR") {
            Some(dir) => {
                let name = self.args.get(1).cloned().unwrap_or_default();
                let path = Path::new(&dir).join(format!("{name}.log"));
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                Stdio::from(f)
            }
            None => Stdio::null(),
        };
        let child = Command::new(&self.bin)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The flags of a benchmark member (etcd-lite and etcd take the same ones).
fn member_args(
    name: &str,
    dir: &Path,
    client_port: u16,
    peer: &str,
    initial: &str,
    state: &str,
    lite: bool,
) -> Vec<String> {
    let client = format!("http://127.0.0.1:{client_port}");
    let mut args: Vec<String> = [
        "--name",
        name,
        "--data-dir",
        &dir.join(name).display().to_string(),
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        peer,
        "--initial-advertise-peer-urls",
        peer,
        "--initial-cluster",
        initial,
        "--initial-cluster-token",
        "bench",
        "--initial-cluster-state",
        state,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !lite {
        args.extend(["--log-level".into(), "error".into()]);
    }
    args
}

/// Three members of `bin` (etcd-lite or etcd take the same flags) on loopback.
fn start_cluster(bin: &Path, dir: &Path, lite: bool) -> Result<Vec<Member>> {
    let peers: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_>>()?;
    let initial: Vec<String> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| format!("b{i}=http://127.0.0.1:{p}"))
        .collect();
    let initial = initial.join(",");
    let mut members = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        let port = free_port()?;
        let peer = format!("http://127.0.0.1:{p}");
        let args = member_args(&format!("b{i}"), dir, port, &peer, &initial, "new", lite);
        let mut m = Member {
            child: None,
            client_port: port,
            args,
            bin: bin.to_path_buf(),
        };
        m.spawn()?;
        members.push(m);
    }
    Ok(members)
}

/// The index of the leader among `members` (those running), waiting for one.
async fn find_leader(members: &[Member], timeout: Duration) -> Result<usize> {
    use etcd_api::etcdserverpb::{maintenance_client::MaintenanceClient, StatusRequest};
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        for (i, m) in members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            let Ok(ep) = Channel::from_shared(format!("http://{}", m.endpoint())) else {
                continue;
            };
            let Ok(ch) = ep
                .connect_timeout(Duration::from_millis(200))
                .connect()
                .await
            else {
                continue;
            };
            if let Ok(st) = MaintenanceClient::new(ch).status(StatusRequest {}).await {
                let st = st.into_inner();
                if st.header.is_some_and(|h| h.member_id == st.leader) {
                    return Ok(i);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("no leader within {timeout:?}")
}

/// Time from kill -9 of the leader until a put succeeds through a surviving member.
async fn failover(members: &mut [Member]) -> Result<Duration> {
    let leader = find_leader(members, Duration::from_secs(30)).await?;
    let other = (leader + 1) % members.len();
    let ch = Channel::from_shared(format!("http://{}", members[other].endpoint()))?
        .connect()
        .await?;
    let mut kv = KvClient::new(ch);
    members[leader].kill();
    let t0 = Instant::now();
    loop {
        let put = kv.put(PutRequest {
            key: b"failover".to_vec(),
            value: b"x".to_vec(),
            ..Default::default()
        });
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), put).await {
            break;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!("no write accepted within 30 s of the leader's death");
        }
    }
    let took = t0.elapsed();
    members[leader].spawn()?;
    // The old leader must serve again (it may replay its logs first) before the next round.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = match Channel::from_shared(format!("http://{}", members[leader].endpoint()))?
            .connect()
            .await
        {
            Ok(ch) => KvClient::new(ch)
                .range(RangeRequest {
                    key: b"failover".to_vec(),
                    ..Default::default()
                })
                .await
                .is_ok(),
            Err(_) => false,
        };
        if ok {
            break;
        }
        if Instant::now() > deadline {
            bail!("the restarted member did not serve again within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(took)
}

/// Writes `keys` keys, adds a fourth member and returns how long it takes from its start until
/// it has applied everything the cluster had when it was added.
async fn catch_up(
    members: &mut Vec<Member>,
    bin: &Path,
    dir: &Path,
    lite: bool,
    keys: usize,
) -> Result<Duration> {
    use etcd_api::etcdserverpb::{
        cluster_client::ClusterClient, maintenance_client::MaintenanceClient, MemberAddRequest,
        MemberListRequest, StatusRequest,
    };
    let eps: Vec<String> = members.iter().map(Member::endpoint).collect();
    run(&eps, 64, keys, 256, Op::Put, usize::MAX).await?;
    let leader = find_leader(members, Duration::from_secs(30)).await?;
    let ch = Channel::from_shared(format!("http://{}", members[leader].endpoint()))?
        .connect()
        .await?;
    let peer = format!("http://127.0.0.1:{}", free_port()?);
    let mut cluster = ClusterClient::new(ch.clone());
    // etcd refuses to add a member until every member has been connected for a while (as after
    // the failover rounds): ask again for a bit.
    let added = Instant::now();
    loop {
        let req = MemberAddRequest {
            peer_ur_ls: vec![peer.clone()],
            is_learner: false,
        };
        match cluster.member_add(req).await {
            Ok(_) => break,
            Err(e)
                if e.code() == tonic::Code::Unavailable
                    && added.elapsed() < Duration::from_secs(30) =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let target = MaintenanceClient::new(ch)
        .status(StatusRequest {})
        .await?
        .into_inner()
        .raft_index;
    let list = cluster
        .member_list(MemberListRequest::default())
        .await?
        .into_inner();
    let mut initial: Vec<String> = list
        .members
        .iter()
        .filter(|m| !m.name.is_empty())
        .filter_map(|m| Some(format!("{}={}", m.name, m.peer_ur_ls.first()?)))
        .collect();
    initial.push(format!("b3={peer}"));
    let port = free_port()?;
    let args = member_args("b3", dir, port, &peer, &initial.join(","), "existing", lite);
    let mut m = Member {
        child: None,
        client_port: port,
        args,
        bin: bin.to_path_buf(),
    };
    let t0 = Instant::now();
    m.spawn()?;
    loop {
        if t0.elapsed() > Duration::from_secs(300) {
            bail!("the new member did not catch up within 300 s");
        }
        let applied = match Channel::from_shared(format!("http://{}", m.endpoint()))?
            .connect_timeout(Duration::from_millis(200))
            .connect()
            .await
        {
            Ok(ch) => MaintenanceClient::new(ch)
                .status(StatusRequest {})
                .await
                .map(|s| s.into_inner().raft_applied_index)
                .unwrap_or(0),
            Err(_) => 0,
        };
        if applied >= target {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = t0.elapsed();
    members.push(m);
    Ok(took)
}

/// One round of the throughput rows on a fresh 3-member cluster: puts at 16 and 64 clients,
/// linearizable ranges.
async fn cluster_throughput(bin: &Path, lite: bool, scale: f64) -> Result<Vec<Metric>> {
    let s = |n: usize| ((n as f64 * scale) as usize).max(100);
    let dir = tempfile::tempdir()?;
    let members = start_cluster(bin, dir.path(), lite)?;
    find_leader(&members, Duration::from_secs(30)).await?;
    let eps: Vec<String> = members.iter().map(Member::endpoint).collect();
    let mut out = Vec::new();
    for (clients, total) in [(16, s(20_000)), (64, s(40_000))] {
        let st = run(&eps, clients, total, 256, Op::Put, usize::MAX).await?;
        out.push((
            format!("3 members: put ops/s, {clients} clients"),
            st.ops_per_sec,
            true,
        ));
        out.push((
            format!("3 members: put p99 ms, {clients} clients"),
            st.p99_ms,
            false,
        ));
    }
    let st = run(
        &eps,
        16,
        s(40_000),
        0,
        Op::Range {
            serializable: false,
        },
        s(10_000),
    )
    .await?;
    out.push((
        "3 members: linearizable range ops/s, 16 clients".into(),
        st.ops_per_sec,
        true,
    ));
    Ok(out)
}

/// Leader failover after kill -9 (median of `failovers`) and a new member's catch-up, on a
/// fresh 3-member cluster.
async fn cluster_faults(
    bin: &Path,
    lite: bool,
    scale: f64,
    failovers: usize,
) -> Result<Vec<Metric>> {
    let dir = tempfile::tempdir()?;
    let mut members = start_cluster(bin, dir.path(), lite)?;
    find_leader(&members, Duration::from_secs(30)).await?;
    let mut out = Vec::new();
    let mut times = Vec::new();
    for _ in 0..failovers.max(1) {
        times.push(failover(&mut members).await?);
    }
    times.sort();
    out.push((
        "3 members: failover after kill -9, median ms".into(),
        times[times.len() / 2].as_secs_f64() * 1000.0,
        false,
    ));
    let keys = ((100_000.0 * scale) as usize).max(100);
    let took = catch_up(&mut members, bin, dir.path(), lite, keys).await?;
    out.push((
        format!("new member catches up {keys} keys, s"),
        took.as_secs_f64(),
        false,
    ));
    Ok(out)
}

/// Per row, the median over rounds (every round has the same rows in the same order).
fn medians(rounds: &[Vec<Metric>]) -> Vec<Metric> {
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    first
        .iter()
        .enumerate()
        .map(|(i, (name, _, higher_better))| {
            let mut v: Vec<f64> = rounds.iter().map(|r| r[i].1).collect();
            v.sort_by(f64::total_cmp);
            (name.clone(), v[v.len() / 2], *higher_better)
        })
        .collect()
}

/// The 3-member comparison: throughput rounds alternate between etcd and etcd-lite (fresh
/// clusters each time, so neither always runs on a warmer or a busier machine) and report each
/// system's median; then failover and catch-up once per system.
async fn compare_cluster(
    lite: &Path,
    etcd: &Path,
    scale: f64,
    failovers: usize,
    rounds: usize,
) -> Result<()> {
    let (mut e_rounds, mut l_rounds) = (Vec::new(), Vec::new());
    for round in 1..=rounds.max(1) {
        eprintln!("round {round}: 3-member etcd ({}) ...", etcd.display());
        e_rounds.push(cluster_throughput(etcd, false, scale).await?);
        eprintln!("round {round}: 3-member etcd-lite ({}) ...", lite.display());
        l_rounds.push(cluster_throughput(lite, true, scale).await?);
        for ((name, e, hb), (_, l, _)) in e_rounds[round - 1].iter().zip(&l_rounds[round - 1]) {
            if *hb {
                eprintln!("  {name}: etcd-lite {l:.0}, etcd {e:.0} ({:.2}x)", l / e);
            }
        }
    }
    let mut e = medians(&e_rounds);
    let mut l = medians(&l_rounds);
    eprintln!("failover and catch-up: etcd ...");
    e.extend(cluster_faults(etcd, false, scale, failovers).await?);
    eprintln!("failover and catch-up: etcd-lite ...");
    l.extend(cluster_faults(lite, true, scale, failovers).await?);
    if rounds > 1 {
        println!("(throughput rows: median of {rounds} alternating rounds)");
    }
    print_rows(e, l);
    Ok(())
}

fn print_rows(etcd: Vec<Metric>, lite: Vec<Metric>) {
    println!(
        "{:<50} {:>12} {:>12} {:>8}",
        "metric", "etcd-lite", "etcd 3.4", "ratio"
    );
    for ((name, e, hb), (_, l, _)) in etcd.into_iter().zip(lite) {
        let ratio = if hb { l / e } else { e / l };
        println!("{name:<50} {l:>12.1} {e:>12.1} {ratio:>7.2}x");
    }
    println!("(ratio > 1 means etcd-lite is better: faster, higher throughput or smaller)");
}

/// Runs `cmd` to its end; wall time and peak RSS (MiB: its VmHWM, sampled every 2 ms until
/// it exits, so a peak in its last 2 ms may be missed).
fn timed_child(cmd: &mut Command) -> Result<(Duration, f64)> {
    let t0 = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning")?;
    let mut peak: f64 = 0.0;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        peak = peak.max(hwm_mib(child.id()));
        std::thread::sleep(Duration::from_millis(2));
    };
    let took = t0.elapsed();
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        bail!("{cmd:?} failed: {err}");
    }
    Ok((took, peak))
}

fn dir_mib(path: &Path) -> f64 {
    etcd_lite::durable::dir_size(path) as f64 / (1024.0 * 1024.0)
}

/// Save (and restore with `restore_bin`) `keys` keys from a fresh server of `bin`; the
/// snapshot file stays in `out` for the other tool's restore.
async fn measure_backup(
    bin: &Path,
    lite: bool,
    etcdctl: &Path,
    restore_bin: &Path,
    keys: usize,
    out: &Path,
) -> Result<Vec<Metric>> {
    let srv = start(bin, lite).await?;
    let ep = format!("127.0.0.1:{}", srv.port);
    run(std::slice::from_ref(&ep), 64, keys, 256, Op::Put, keys).await?;
    let file = out.join(if lite { "lite.db" } else { "etcd.db" });
    let _ = std::fs::remove_file(&file);
    // The server's RSS while it sends the snapshot, sampled.
    let pid = srv.child.id();
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            let mut peak: f64 = 0.0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_mib(pid));
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    };
    let rss_before = rss_mib(pid);
    let writer = Writer::start(KvClient::new(channel(&ep, None).await?));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (save, _) = tokio::task::block_in_place(|| {
        timed_child(
            Command::new(etcdctl)
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &ep, "--command-timeout", "600s"])
                .arg("snapshot")
                .arg("save")
                .arg(&file),
        )
    })?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let longest = writer.stop().await?;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().map_err(|_| anyhow::anyhow!("sampler"))?;
    let size = std::fs::metadata(&file)?.len() as f64 / (1024.0 * 1024.0);
    drop(srv);
    let k = keys / 1000;
    let mut rows = vec![
        (
            format!("save {k}k keys: time (ms)"),
            save.as_secs_f64() * 1e3,
            false,
        ),
        (
            format!("save {k}k keys: server RSS growth (MiB)"),
            (peak - rss_before).max(0.0),
            false,
        ),
        (format!("save {k}k keys: snapshot size (MiB)"), size, false),
        (
            format!("save {k}k keys: longest write wait (ms)"),
            longest.as_secs_f64() * 1e3,
            false,
        ),
    ];
    // Each tool restores the reference snapshot (etcd's), as a migration would.
    let source = out.join("etcd.db");
    let source = if source.exists() {
        source
    } else {
        file.clone()
    };
    let target = out.join(if lite {
        "lite-restored"
    } else {
        "etcd-restored"
    });
    let _ = std::fs::remove_dir_all(&target);
    let (restore, rss) = timed_child(
        Command::new(restore_bin)
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore"])
            .arg(&source)
            .arg("--data-dir")
            .arg(&target),
    )?;
    let _ = std::fs::remove_dir_all(&target);
    rows.push((
        format!("restore {k}k keys: time (ms)"),
        restore.as_secs_f64() * 1e3,
        false,
    ));
    rows.push((format!("restore {k}k keys: peak RSS (MiB)"), rss, false));
    Ok(rows)
}

/// One client putting in a loop, one put at a time, until stopped: the longest a put took.
struct Writer {
    writing: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Duration>,
}

impl Writer {
    fn start(mut kv: KvClient<Channel>) -> Self {
        let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = writing.clone();
        let task = tokio::spawn(async move {
            let mut longest = Duration::ZERO;
            let mut i = 0u64;
            while flag.load(std::sync::atomic::Ordering::Relaxed) {
                let t0 = Instant::now();
                let _ = kv
                    .put(PutRequest {
                        key: format!("during/{i}").into_bytes(),
                        value: vec![b'v'; 256],
                        ..Default::default()
                    })
                    .await;
                longest = longest.max(t0.elapsed());
                i += 1;
            }
            longest
        });
        Writer { writing, task }
    }

    async fn stop(self) -> Result<Duration> {
        self.writing
            .store(false, std::sync::atomic::Ordering::Relaxed);
        Ok(self.task.await?)
    }
}

/// `keys` keys, 90% deleted and compacted, then defrag while one client keeps writing: the
/// data directory before and after, the defrag's time, and the longest a write waited.
async fn measure_defrag(bin: &Path, lite: bool, keys: usize) -> Result<Vec<Metric>> {
    use etcd_api::etcdserverpb::{
        maintenance_client::MaintenanceClient, CompactionRequest, DefragmentRequest,
        DeleteRangeRequest,
    };
    let srv = start(bin, lite).await?;
    let ep = format!("127.0.0.1:{}", srv.port);
    run(std::slice::from_ref(&ep), 64, keys, 256, Op::Put, keys).await?;
    let ch = channel(&ep, None).await?;
    let mut kv = KvClient::new(ch.clone());
    let del = kv
        .delete_range(DeleteRangeRequest {
            key: b"bench/".to_vec(),
            range_end: format!("bench/{:08}", keys * 9 / 10).into_bytes(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let rev = del.header.map(|h| h.revision).unwrap_or_default();
    kv.compact(CompactionRequest {
        revision: rev,
        physical: true,
    })
    .await?;
    let data = srv.dir.path().join("data");
    let before = dir_mib(&data);
    let writer = Writer::start(kv.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    MaintenanceClient::new(ch)
        .defragment(DefragmentRequest {})
        .await?;
    let took = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let longest = writer.stop().await?;
    let after = dir_mib(&data);
    let k = keys / 1000;
    Ok(vec![
        (
            format!("defrag {k}k keys, 90% gone: dir before (MiB)"),
            before,
            false,
        ),
        (
            format!("defrag {k}k keys, 90% gone: dir after (MiB)"),
            after,
            false,
        ),
        (
            format!("defrag {k}k keys, 90% gone: time (ms)"),
            took.as_secs_f64() * 1e3,
            false,
        ),
        (
            format!("defrag {k}k keys: longest write wait (ms)"),
            longest.as_secs_f64() * 1e3,
            false,
        ),
    ])
}

async fn compare_backup(
    lite_bin: &Path,
    etcd_bin: &Path,
    etcdctl: &Path,
    keys: &[usize],
    defrag_keys: usize,
) -> Result<()> {
    for b in [etcd_bin, etcdctl] {
        if !b.exists() {
            bail!(
                "{} not found; run `make deps` (etcd-server, etcd-client)",
                b.display()
            );
        }
    }
    let out = tempfile::tempdir()?;
    let (mut e, mut l) = (Vec::new(), Vec::new());
    for &n in keys {
        eprintln!("saving and restoring {n} keys: etcd ...");
        e.extend(measure_backup(etcd_bin, false, etcdctl, etcdctl, n, out.path()).await?);
        eprintln!("saving and restoring {n} keys: etcd-lite ...");
        l.extend(measure_backup(lite_bin, true, etcdctl, lite_bin, n, out.path()).await?);
    }
    eprintln!("defragmenting: etcd ...");
    e.extend(measure_defrag(etcd_bin, false, defrag_keys).await?);
    eprintln!("defragmenting: etcd-lite ...");
    l.extend(measure_defrag(lite_bin, true, defrag_keys).await?);
    print_rows(e, l);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Load {
            endpoints,
            clients,
            total,
            val_size,
            serializable,
            op,
        } => {
            let op = match op.as_str() {
                "put" => Op::Put,
                "range" => Op::Range { serializable },
                other => bail!("unknown operation {other:?}: use put or range"),
            };
            if clients == 0 {
                bail!("--clients must be at least 1");
            }
            let st = run(&endpoints, clients, total, val_size, op, total).await?;
            println!(
                "{:.0} ops/s  p50 {:.2} ms  p99 {:.2} ms",
                st.ops_per_sec, st.p50_ms, st.p99_ms
            );
        }
        Cmd::CompareCluster {
            etcd_lite,
            etcd,
            scale,
            failovers,
            rounds,
        } => {
            let lite = match etcd_lite {
                Some(p) => p,
                None => std::env::current_exe()?.with_file_name("etcd-lite"),
            };
            if !etcd.exists() {
                bail!(
                    "{} not found; run `make deps` (etcd-server)",
                    etcd.display()
                );
            }
            compare_cluster(&lite, &etcd, scale, failovers, rounds).await?;
        }
        Cmd::CompareBackup {
            etcd_lite,
            etcd,
            etcdctl,
            keys,
            defrag_keys,
        } => {
            let lite = match etcd_lite {
                Some(p) => p,
                None => std::env::current_exe()?.with_file_name("etcd-lite"),
            };
            compare_backup(&lite, &etcd, &etcdctl, &keys, defrag_keys).await?;
        }
        Cmd::Compare {
            etcd_lite,
            etcd,
            scale,
        } => {
            let lite = match etcd_lite {
                Some(p) => p,
                None => std::env::current_exe()?.with_file_name("etcd-lite"),
            };
            compare(lite, etcd, scale).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, v: f64) -> Metric {
        (name.to_string(), v, true)
    }

    #[test]
    fn medians_take_each_rows_middle_value_across_rounds() {
        let rounds = vec![
            vec![row("a", 3.0), row("b", 10.0)],
            vec![row("a", 1.0), row("b", 30.0)],
            vec![row("a", 2.0), row("b", 20.0)],
        ];
        assert_eq!(medians(&rounds), vec![row("a", 2.0), row("b", 20.0)]);
        assert_eq!(medians(&rounds[..1]), rounds[0]);
        assert!(medians(&[]).is_empty());
    }
}
