//! Moving a live key space between etcd-lite and a real etcd 3.4 (Debian's etcd-server, from
//! `make deps`) with the real `etcdctl make-mirror`: the initial copy, then changes as they
//! happen, in both directions.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use test_support::{eventually, free_port, require_tool, EtcdLite};

fn etcd_lite() -> EtcdLite {
    EtcdLite::start(env!("CARGO_BIN_EXE_etcd-lite"), &[])
}

/// A real etcd member on its own ports.
fn real_etcd() -> EtcdLite {
    let bin = require_tool("etcd");
    let peer = format!("http://127.0.0.1:{}", free_port());
    let cluster = format!("default={peer}");
    EtcdLite::start(
        bin.to_str().expect("utf-8 path"),
        &[
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &cluster,
        ],
    )
}

/// `etcdctl make-mirror` from one member to another, stopped when dropped.
struct Mirror(Child);

impl Mirror {
    fn start(from: &EtcdLite, to: &EtcdLite, prefix: &str) -> Self {
        let child = Command::new(require_tool("etcdctl"))
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &from.endpoint(), "make-mirror", "--prefix"])
            .args([prefix, &to.endpoint()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcdctl make-mirror");
        Mirror(child)
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The keys and values under `prefix`, as `key=value` lines.
fn listing(m: &EtcdLite, prefix: &str) -> Vec<String> {
    let out = m.ok(&["get", prefix, "--prefix"]);
    out.lines()
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|kv| kv.join("="))
        .collect()
}

fn mirror_copies_then_follows(from: &EtcdLite, to: &EtcdLite) {
    for i in 1..=3 {
        from.ok(&["put", &format!("app/{i}"), &format!("v{i}")]);
    }
    from.ok(&["put", "elsewhere", "x"]);
    let _mirror = Mirror::start(from, to, "app/");
    eventually(Duration::from_secs(20), "the initial copy", || {
        listing(to, "app/") == ["app/1=v1", "app/2=v2", "app/3=v3"]
    });
    // Then it follows changes: a put, an update, a delete.
    from.ok(&["put", "app/4", "new"]);
    from.ok(&["put", "app/2", "changed"]);
    from.ok(&["del", "app/1"]);
    eventually(Duration::from_secs(20), "the live changes", || {
        listing(to, "app/") == ["app/2=changed", "app/3=v3", "app/4=new"]
    });
    assert_eq!(
        to.ok(&["get", "elsewhere"]),
        "",
        "only the prefix is mirrored"
    );
}

#[test]
fn make_mirror_from_real_etcd_to_etcd_lite() {
    let (etcd, lite) = (real_etcd(), etcd_lite());
    mirror_copies_then_follows(&etcd, &lite);
}

#[test]
fn make_mirror_from_etcd_lite_to_real_etcd() {
    let (etcd, lite) = (real_etcd(), etcd_lite());
    mirror_copies_then_follows(&lite, &etcd);
}
