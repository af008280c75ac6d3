//! etcd's v2 discovery, the member's side, against the real discovery service (Debian's
//! `etcd-discovery`, `/usr/bin/discovery.etcd.io`) backed by etcd-lite's v2 API: three members
//! bootstrap from one token URL, a fourth finds the cluster full, and bad URLs are refused
//! before anything is written.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use test_support::{eventually, free_port, require_tool, EtcdLite};

const BIN: &str = env!("CARGO_BIN_EXE_etcd-lite");

/// Processes started here, killed (by PID) when dropped.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The discovery service on a free port, backed by `store`; its base URL.
fn discovery_service(store: &EtcdLite, procs: &mut Procs) -> String {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let child = Command::new(require_tool("discovery.etcd.io"))
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .args(["--etcd", &format!("http://{}", store.endpoint())])
        .args(["--host", &base])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting discovery.etcd.io");
    procs.0.push(child);
    wait_listening(port, "discovery.etcd.io");
    base
}

/// A new token for a cluster of `size`, from the service's /new.
fn new_token(base: &str, size: u32) -> String {
    let out = Command::new(require_tool("curl"))
        .args(["-sS", "--fail", &format!("{base}/new?size={size}")])
        .output()
        .expect("curl");
    assert!(out.status.success(), "{out:?}");
    let url = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    assert!(url.starts_with(base), "{url}");
    url
}

/// The flags of member `name` on its own ports, discovering through `url`.
fn member_args(dir: &Path, name: &str, url: &str) -> (Vec<String>, u16) {
    let (client, peer) = (free_port(), free_port());
    let c = format!("http://127.0.0.1:{client}");
    let p = format!("http://127.0.0.1:{peer}");
    let args = [
        "--name",
        name,
        "--listen-client-urls",
        &c,
        "--advertise-client-urls",
        &c,
        "--listen-peer-urls",
        &p,
        "--initial-advertise-peer-urls",
        &p,
        "--discovery",
        url,
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["--data-dir".into(), dir.join(name).display().to_string()])
    .collect();
    (args, client)
}

fn etcdctl(port: u16, args: &[&str]) -> Output {
    Command::new(require_tool("etcdctl"))
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &format!("127.0.0.1:{port}")])
        .args(args)
        .output()
        .expect("etcdctl")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn three_members_bootstrap_through_the_discovery_service_and_later_nodes_exit_or_proxy() {
    let store = EtcdLite::start(BIN, &[]);
    let mut procs = Procs(Vec::new());
    let base = discovery_service(&store, &mut procs);
    let url = new_token(&base, 3);
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut ports, mut first) = (Vec::new(), Vec::new());
    for name in ["d1", "d2", "d3"] {
        let (args, port) = member_args(dir.path(), name, &url);
        if first.is_empty() {
            first = args.clone();
        }
        let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).expect("log");
        procs.0.push(
            Command::new(BIN)
                .args(&args)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("starting a member"),
        );
        ports.push(port);
    }
    // Each waits for the others to register, then they form one cluster.
    eventually(Duration::from_secs(30), "a three-member cluster", || {
        let out = etcdctl(ports[0], &["member", "list"]);
        out.status.success() && text(&out).matches(", started, d").count() == 3
    });
    let put = etcdctl(ports[1], &["put", "k", "v"]);
    assert!(put.status.success(), "{}", text(&put));
    let get = etcdctl(ports[2], &["get", "k", "--print-value-only"]);
    assert_eq!(text(&get), "v\n");
    // The members' registrations are what the service keeps under the token.
    let token = url.rsplit('/').next().expect("token");
    let (_, reg, _) = store.curl(&[], &format!("/v2/keys/_etcd/registry/{token}"));
    let reg: serde_json::Value = serde_json::from_str(&reg).expect("v2 json");
    let members: Vec<&str> = reg["node"]["nodes"]
        .as_array()
        .expect("registrations")
        .iter()
        .filter_map(|n| n["value"].as_str())
        .collect();
    assert_eq!(members.len(), 3, "{reg}");
    assert!(members
        .iter()
        .all(|m| m.starts_with('d') && m.contains("=http://127.0.0.1:")));

    // A fourth member that will not proxy: etcd's error, a failed exit, no data directory.
    let (args, _) = member_args(dir.path(), "d4", &url);
    let out = Command::new(BIN)
        .args(&args)
        .args(["--discovery-fallback", "exit"])
        .output()
        .expect("a fourth member");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("discovery: cluster is full"),
        "{}",
        text(&out)
    );
    assert!(
        !dir.path().join("d4").exists(),
        "a refused member wrote its data directory"
    );

    // A fifth with etcd's default fallback (proxy) becomes a worker: it serves its client
    // URL as a gateway to the members, and is no member.
    let (args, p5) = member_args(dir.path(), "d5", &url);
    let log = std::fs::File::create(dir.path().join("d5.log")).expect("log");
    procs.0.push(
        Command::new(BIN)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("a fifth node"),
    );
    eventually(Duration::from_secs(30), "a read through the proxy", || {
        text(&etcdctl(p5, &["get", "k", "--print-value-only"])) == "v\n"
    });
    let put = etcdctl(p5, &["put", "via", "proxy"]);
    assert!(put.status.success(), "{}", text(&put));
    assert_eq!(
        text(&etcdctl(ports[0], &["get", "via", "--print-value-only"])),
        "proxy\n"
    );
    let list = text(&etcdctl(p5, &["member", "list"]));
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(!list.contains(", d5,"), "{list}");
    assert!(!dir.path().join("d5").join("member").exists());

    // A restart does not discover again (the token is full now): the data directory says
    // who the member is.
    let d1 = &mut procs.0[1];
    let _ = d1.kill();
    let _ = d1.wait();
    *d1 = Command::new(BIN)
        .args(&first)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("restarting d1");
    eventually(Duration::from_secs(30), "d1 back with the data", || {
        text(&etcdctl(ports[0], &["get", "k", "--print-value-only"])) == "v\n"
    });
}

#[test]
fn bad_discovery_urls_are_refused_before_anything_is_written() {
    let store = EtcdLite::start(BIN, &[]);
    let mut procs = Procs(Vec::new());
    let base = discovery_service(&store, &mut procs);
    let dir = tempfile::tempdir().expect("temp dir");
    let refused = |url: &str, extra: &[&str], want: &str| {
        let (args, _) = member_args(dir.path(), "x", url);
        let out = Command::new(BIN)
            .args(&args)
            .args(extra)
            .output()
            .expect("etcd-lite");
        assert!(!out.status.success(), "started with {url}");
        assert!(text(&out).contains(want), "{url}: {}", text(&out));
        let data: PathBuf = dir.path().join("x");
        assert!(!data.exists(), "{url}: a data directory was written");
    };
    // A token the service never made has no size.
    refused(
        &format!("{base}/0123456789abcdef0123456789abcdef"),
        &[],
        "discovery: cluster size is not found",
    );
    refused("ftp://127.0.0.1/x", &[], "bad discovery URL");
    let url = new_token(&base, 1);
    refused(
        &url,
        &["--initial-cluster", "x=http://127.0.0.1:1"],
        "--discovery and --initial-cluster exclude each other",
    );
}
