//! `etcd-lite gateway start`: a machine that is not a member reaches the cluster through a
//! local endpoint; the gateway learns the members from the one endpoint it was given and keeps
//! serving when that member dies.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use test_support::{eventually, free_port, require_tool, start_cluster};

const BIN: &str = env!("CARGO_BIN_EXE_etcd-lite");

struct Gateway {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Gateway {
    fn start(endpoints: &str) -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("gateway.log");
        let child = Command::new(BIN)
            .args(["gateway", "start", "--endpoints", endpoints])
            .args(["--listen-addr", &format!("127.0.0.1:{port}")])
            .args(["--refresh-interval", "200ms", "--retry-delay", "1s"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("starting the gateway");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the gateway did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Gateway {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    fn etcdctl(&self, args: &[&str]) -> Output {
        Command::new(require_tool("etcdctl"))
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &format!("127.0.0.1:{}", self.port)])
            .args(["--dial-timeout", "2s", "--command-timeout", "3s"])
            .args(args)
            .output()
            .expect("etcdctl")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_gateway_passes_clients_through_and_follows_the_members() {
    let mut members = start_cluster(BIN, 3, &[]);
    let gw = Gateway::start(&members[0].endpoint());
    let put = gw.etcdctl(&["put", "via", "gateway"]);
    assert!(put.status.success(), "{put:?}");
    assert_eq!(
        members[2].ok(&["get", "via", "--print-value-only"]),
        "gateway\n"
    );
    // HTTP/1.1 (the JSON gateway) passes through as well.
    let out = Command::new(require_tool("curl"))
        .args(["-sS", "-d", r#"{"key":"dmlh"}"#])
        .arg(format!("http://127.0.0.1:{}/v3/kv/range", gw.port))
        .output()
        .expect("curl");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(r#""value":"Z2F0ZXdheQ==""#),
        "{out:?}"
    );
    // The gateway was given member 0 only; it learns the others from the member list (once
    // they have published their client URLs), so it keeps serving once member 0 is gone.
    let all: Vec<String> = members.iter().map(|m| m.endpoint()).collect();
    eventually(
        Duration::from_secs(30),
        "the gateway following the members",
        || {
            let log = std::fs::read_to_string(&gw.log).unwrap_or_default();
            log.lines()
                .filter(|l| l.contains("endpoints follow the members"))
                .any(|l| all.iter().all(|e| l.contains(e.as_str())))
        },
    );
    members[0].kill9();
    eventually(
        Duration::from_secs(30),
        "a write through the gateway",
        || gw.etcdctl(&["put", "after", "failover"]).status.success(),
    );
    assert_eq!(
        members[1].ok(&["get", "after", "--print-value-only"]),
        "failover\n"
    );
}

#[test]
fn the_gateway_refuses_bad_flags_and_stops_on_sigterm() {
    let out = Command::new(BIN)
        .args(["gateway", "start", "--retry-delay", "5y"])
        .output()
        .expect("gateway");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown unit"));
    let out = Command::new(BIN)
        .args(["gateway", "stop"])
        .output()
        .expect("gateway");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: etcd-lite gateway start"));
    let mut gw = Gateway::start("127.0.0.1:1");
    let pid = gw.child.id().to_string();
    let st = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = gw.child.try_wait().expect("wait") {
            assert!(st.success(), "{st}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_gateway_without_members_fails_requests_then_serves_again() {
    let mut members = start_cluster(BIN, 1, &[]);
    let gw = Gateway::start(&members[0].endpoint());
    assert!(gw.etcdctl(&["put", "k", "before"]).status.success());
    members[0].kill9();
    // Nothing answers: requests fail (the gateway closes the connections it cannot pass on),
    // and nothing is made up.
    for _ in 0..3 {
        let out = gw.etcdctl(&["get", "k", "--print-value-only"]);
        assert!(!out.status.success(), "{out:?}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("before"));
    }
    // The member comes back on its port: the gateway retries it and serves again.
    members[0].respawn();
    eventually(
        Duration::from_secs(30),
        "a read through the gateway",
        || {
            let out = gw.etcdctl(&["get", "k", "--print-value-only"]);
            out.status.success() && String::from_utf8_lossy(&out.stdout) == "before\n"
        },
    );
}
