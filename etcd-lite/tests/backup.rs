//! Backups that restore anywhere: `etcdctl snapshot save` from etcd-lite gives etcd's own
//! snapshot format, which the real etcdctl 3.4 (Debian's etcd-client, from `make deps`) reads
//! and restores for the real etcd 3.4 to serve; a real etcd's snapshot restores into
//! etcd-lite; one snapshot restores a three-member cluster; damaged snapshots are refused with
//! nothing written.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use test_support::{eventually, free_port, require_tool, EtcdLite};

const BIN: &str = env!("CARGO_BIN_EXE_etcd-lite");

/// Flags of a one-member cluster with its own peer port: (flags, peer URL).
fn single(name: &str) -> (Vec<String>, String) {
    let peer = format!("http://127.0.0.1:{}", free_port());
    let flags = vec![
        "--name".into(),
        name.into(),
        "--listen-peer-urls".into(),
        peer.clone(),
        "--initial-advertise-peer-urls".into(),
        peer.clone(),
        "--initial-cluster".into(),
        format!("{name}={peer}"),
    ];
    (flags, peer)
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn real_etcd() -> EtcdLite {
    let (flags, _) = single("default");
    EtcdLite::start(require_tool("etcd").to_str().expect("utf-8"), &strs(&flags))
}

/// Writes a key space with history, a deletion, a lease, a compaction and users: what a
/// restore must bring back. Returns a revision before the last changes.
fn fill(m: &EtcdLite) -> i64 {
    for i in 0..40 {
        m.ok(&["put", &format!("k{}", i % 8), &format!("v{i}")]);
    }
    let lease = m.ok(&["lease", "grant", "600"]);
    let id = lease
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    m.ok(&["put", "leased", "x", "--lease", &id]);
    m.ok(&["del", "k3"]);
    m.ok(&["compact", "10"]);
    let old = revision(m);
    m.ok(&["put", "k1", "newest"]);
    m.ok(&["user", "add", "root:rootpw"]);
    m.ok(&["role", "add", "reader"]);
    m.ok(&[
        "role",
        "grant-permission",
        "reader",
        "--prefix=true",
        "read",
        "k",
    ]);
    m.ok(&["user", "add", "alice:alicepw"]);
    m.ok(&["user", "grant-role", "alice", "reader"]);
    old
}

fn revision(m: &EtcdLite) -> i64 {
    let v: Value = serde_json::from_str(&m.ok(&["get", "nothing", "-w", "json"])).expect("json");
    v["header"]["revision"].as_i64().expect("revision")
}

/// What a client sees: every key with its revisions, version, value and lease; the revision;
/// an older value; the leases; the users and roles.
fn view(m: &EtcdLite, old: i64) -> Vec<String> {
    let all: Value =
        serde_json::from_str(&m.ok(&["get", "", "--prefix", "-w", "json"])).expect("json");
    let mut out = vec![format!("revision {}", all["header"]["revision"])];
    for kv in all["kvs"].as_array().expect("kvs") {
        out.push(format!(
            "{} {} {} {} {} {}",
            kv["key"],
            kv["create_revision"],
            kv["mod_revision"],
            kv["version"],
            kv["value"],
            kv["lease"]
        ));
    }
    out.push(format!(
        "k1 at {old}: {}",
        m.ok(&["get", "k1", "--rev", &old.to_string()])
    ));
    out.push(format!("leases: {}", m.ok(&["lease", "list"])));
    out.push(format!("users: {}", m.ok(&["user", "list"])));
    out.push(format!("reader: {}", m.ok(&["role", "get", "reader"])));
    out.push(format!("alice: {}", m.ok(&["user", "get", "alice"])));
    out
}

fn run(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .env("ETCDCTL_API", "3")
        .args(args)
        .output()
        .expect("running a snapshot command")
}

fn ok(bin: &Path, args: &[&str]) -> String {
    let out = run(bin, args);
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn save(m: &EtcdLite, dir: &Path) -> PathBuf {
    let file = dir.join("backup.db");
    m.ok(&["snapshot", "save", file.to_str().expect("utf-8")]);
    file
}

/// After a restore, auth can be turned on and the restored password hashes log users in.
fn passwords_survive(m: &EtcdLite) {
    m.ok(&["--user", "root:rootpw", "auth", "enable"]);
    assert!(m
        .ok(&["--user", "alice:alicepw", "get", "k1"])
        .contains("newest"));
    assert!(m
        .try_etcdctl(&["--user", "alice:wrong", "get", "k1"])
        .is_err());
    assert!(m
        .try_etcdctl(&["--user", "alice:alicepw", "put", "k1", "no"])
        .is_err());
}

/// The real etcdctl and etcd-lite read the same status from `file`: hash, revision, key count
/// and size.
fn statuses_agree(file: &str) -> Value {
    let status = |bin: &Path| -> Value {
        serde_json::from_str(&ok(bin, &["snapshot", "status", file, "-w", "json"])).expect("json")
    };
    let theirs = status(&require_tool("etcdctl"));
    assert_eq!(theirs, status(Path::new(BIN)));
    theirs
}

/// `tool snapshot restore file` into a new one-member cluster, then `member` started on it.
fn restored(tool: &Path, member: &str, file: &str) -> EtcdLite {
    let (flags, peer) = single("restored");
    let mut dst = EtcdLite::stopped(member, &strs(&flags));
    let data = dst.data_dir();
    let cluster = format!("restored={peer}");
    ok(
        tool,
        &[
            "snapshot",
            "restore",
            file,
            "--name",
            "restored",
            "--data-dir",
            data.to_str().expect("utf-8"),
            "--initial-cluster",
            &cluster,
            "--initial-advertise-peer-urls",
            &peer,
        ],
    );
    dst.respawn();
    dst
}

#[test]
fn an_etcd_lite_snapshot_restores_in_the_real_etcd() {
    let src = EtcdLite::start(BIN, &[]);
    let old = fill(&src);
    let tmp = tempfile::tempdir().expect("tmp");
    let file = save(&src, tmp.path());
    let f = file.to_str().expect("utf-8");
    let status = statuses_agree(f);
    assert_eq!(status["revision"].as_i64(), Some(revision(&src)));
    let etcd = require_tool("etcd");
    let dst = restored(&require_tool("etcdctl"), etcd.to_str().expect("utf-8"), f);
    assert_eq!(view(&dst, old), view(&src, old));
    passwords_survive(&dst);
}

#[test]
fn a_real_etcd_snapshot_restores_in_etcd_lite() {
    let src = real_etcd();
    let old = fill(&src);
    let tmp = tempfile::tempdir().expect("tmp");
    let file = save(&src, tmp.path());
    let f = file.to_str().expect("utf-8");
    statuses_agree(f);
    let dst = restored(Path::new(BIN), BIN, f);
    assert_eq!(view(&dst, old), view(&src, old));
    // It goes on from the restored revision.
    let before = revision(&dst);
    dst.ok(&["put", "after", "restore"]);
    assert_eq!(revision(&dst), before + 1);
    passwords_survive(&dst);
}

#[test]
fn one_snapshot_restores_a_three_member_cluster() {
    let src = EtcdLite::start(BIN, &[]);
    let old = fill(&src);
    let tmp = tempfile::tempdir().expect("tmp");
    let file = save(&src, tmp.path());
    let peers: Vec<String> = (0..3)
        .map(|_| format!("http://127.0.0.1:{}", free_port()))
        .collect();
    let cluster = (0..3)
        .map(|i| format!("m{i}={}", peers[i]))
        .collect::<Vec<_>>()
        .join(",");
    let mut members: Vec<EtcdLite> = (0..3)
        .map(|i| {
            let name = format!("m{i}");
            // etcd's disaster-recovery guide starts restored members with the same flags; the
            // third gets none of the --initial-cluster* ones: its data directory knows them.
            let mut flags = vec!["--name", &name, "--listen-peer-urls", &peers[i]];
            if i < 2 {
                flags.extend(["--initial-advertise-peer-urls", &peers[i]]);
                flags.extend([
                    "--initial-cluster",
                    &cluster,
                    "--initial-cluster-token",
                    "dr",
                ]);
            }
            let m = EtcdLite::stopped(BIN, &flags);
            ok(
                Path::new(BIN),
                &[
                    "snapshot",
                    "restore",
                    file.to_str().expect("utf-8"),
                    "--name",
                    &name,
                    "--data-dir",
                    m.data_dir().to_str().expect("utf-8"),
                    "--initial-cluster",
                    &cluster,
                    "--initial-cluster-token",
                    "dr",
                    "--initial-advertise-peer-urls",
                    &peers[i],
                ],
            );
            m
        })
        .collect();
    std::thread::scope(|s| {
        for m in members.iter_mut() {
            s.spawn(|| m.respawn());
        }
    });
    let want = view(&src, old);
    eventually(Duration::from_secs(20), "a leader", || {
        members[0].try_etcdctl(&["put", "after", "restore"]).is_ok()
    });
    let list = members[1].ok(&["member", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");
    for m in &members {
        eventually(Duration::from_secs(10), "the write on every member", || {
            m.try_etcdctl(&["get", "after", "--consistency", "s"])
                .is_ok_and(|o| o.contains("restore"))
        });
        // Everything restored is there, on every member (the new write is one revision on).
        let mut got = view(m, old);
        got.retain(|l| !l.contains("YWZ0ZXI=") && !l.starts_with("revision"));
        let mut expected = want.clone();
        expected.retain(|l| !l.starts_with("revision"));
        assert_eq!(got, expected);
    }
}

#[test]
fn damaged_snapshots_are_refused_and_nothing_is_written() {
    let src = EtcdLite::start(BIN, &[]);
    for i in 0..200 {
        src.ok(&["put", &format!("key{i:04}"), &"v".repeat(100)]);
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let good = std::fs::read(save(&src, tmp.path())).expect("read");
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x55;
    let mut junk = vec![0x42u8; 4096 * 4];
    {
        use sha2::Digest;
        let h = sha2::Sha256::digest(&junk);
        junk.extend_from_slice(&h);
    }
    let cases: Vec<(&str, Vec<u8>, &[&str], &str)> = vec![
        (
            "cut-short",
            good[..good.len() - 1000].to_vec(),
            &[],
            "missing hash",
        ),
        (
            "cut-a-page",
            good[..good.len() - 4096].to_vec(),
            &[],
            "expected sha256",
        ),
        (
            "truncated-skip",
            good[..good.len() - 8192 - 32].to_vec(),
            &["--skip-hash-check"],
            "truncated",
        ),
        ("flipped", flipped, &[], "expected sha256"),
        ("not-bbolt", junk, &[], "not a bbolt database"),
        ("empty", Vec::new(), &[], "missing hash"),
        (
            "empty-skip",
            Vec::new(),
            &["--skip-hash-check"],
            "integrity check failed",
        ),
    ];
    for (name, bytes, extra, says) in cases {
        let file = tmp.path().join(format!("{name}.db"));
        std::fs::write(&file, &bytes).expect("write");
        let dir = tmp.path().join(format!("{name}.etcd"));
        let mut args = vec![
            "snapshot",
            "restore",
            file.to_str().expect("utf-8"),
            "--data-dir",
            dir.to_str().expect("utf-8"),
        ];
        args.extend_from_slice(extra);
        let out = run(Path::new(BIN), &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: restored");
        assert!(err.contains(says), "{name}: {err}");
        assert!(!dir.exists(), "{name}: left a data directory");
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains("restoring"))
            .collect();
        assert!(leftovers.is_empty(), "{name}: left {leftovers:?}");
    }
    // An existing data directory is never overwritten.
    let file = tmp.path().join("good.db");
    std::fs::write(&file, &good).expect("write");
    let dir = tmp.path().join("existing");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("keep"), b"mine").expect("write");
    let out = run(
        Path::new(BIN),
        &[
            "snapshot",
            "restore",
            file.to_str().expect("utf-8"),
            "--data-dir",
            dir.to_str().expect("utf-8"),
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists"));
    assert_eq!(std::fs::read(dir.join("keep")).expect("read"), b"mine");
    // A member not in --initial-cluster is refused before anything is read.
    let out = run(
        Path::new(BIN),
        &[
            "snapshot",
            "restore",
            file.to_str().expect("utf-8"),
            "--name",
            "x",
            "--initial-cluster",
            "y=http://127.0.0.1:2380",
            "--data-dir",
            tmp.path().join("x").to_str().expect("utf-8"),
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the initial cluster"));
    // status refuses what is not bbolt, and reads the good one.
    let out = run(
        Path::new(BIN),
        &[
            "snapshot",
            "status",
            tmp.path().join("not-bbolt.db").to_str().expect("utf-8"),
        ],
    );
    assert!(!out.status.success());
    let s = ok(
        Path::new(BIN),
        &[
            "snapshot",
            "status",
            file.to_str().expect("utf-8"),
            "-w",
            "json",
        ],
    );
    let v: Value = serde_json::from_str(&s).expect("json");
    assert_eq!(v["revision"].as_i64(), Some(201));
}
