//! Network partitions of real members: each etcd-lite runs in its own network namespace, joined
//! to the others by a bridge inside a namespace of this test (nothing else sees the addresses).
//! A partition takes a member's link down; healing brings it back. Driven by the real etcdctl.
//! Needs root (`ip netns`).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use test_support::{eventually, require_tool};

const BIN: &str = env!("CARGO_BIN_EXE_etcd-lite");

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Member {
    netns: String,
    veth: String,
    addr: String,
    child: Option<Child>,
}

struct NetCluster {
    hub: String,
    tmp: tempfile::TempDir,
    members: Vec<Member>,
}

impl NetCluster {
    /// `n` members on subnet 10.<net>.0.0/24.
    fn start(n: usize, net: u8) -> NetCluster {
        require_tool("etcdctl");
        let tag = std::process::id() % 100_000;
        let hub = format!("clp{tag}h{net}");
        let tmp = tempfile::Builder::new()
            .prefix("etcd-partition")
            .tempdir()
            .expect("tempdir");
        ip(&["netns", "add", &hub]);
        let mut c = NetCluster {
            hub,
            tmp,
            members: Vec::new(),
        };
        ip(&["-n", &c.hub, "link", "set", "lo", "up"]);
        ip(&["-n", &c.hub, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &c.hub,
            "addr",
            "add",
            &format!("10.{net}.0.1/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &c.hub, "link", "set", "br0", "up"]);
        for i in 0..n {
            let m = Member {
                netns: format!("clp{tag}n{net}m{i}"),
                veth: format!("vp{net}m{i}"),
                addr: format!("10.{net}.0.{}", 11 + i),
                child: None,
            };
            ip(&["netns", "add", &m.netns]);
            ip(&[
                "-n", &c.hub, "link", "add", &m.veth, "type", "veth", "peer", "name", "eth0",
                "netns", &m.netns,
            ]);
            ip(&["-n", &c.hub, "link", "set", &m.veth, "master", "br0", "up"]);
            ip(&[
                "-n",
                &m.netns,
                "addr",
                "add",
                &format!("{}/24", m.addr),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &m.netns, "link", "set", "eth0", "up"]);
            ip(&["-n", &m.netns, "link", "set", "lo", "up"]);
            c.members.push(m);
        }
        let initial: Vec<String> = c
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| format!("m{i}=http://{}:2380", m.addr))
            .collect();
        let initial = initial.join(",");
        for i in 0..n {
            c.spawn(i, &initial);
        }
        c.leader_index(Duration::from_secs(20));
        c
    }

    fn spawn(&mut self, i: usize, initial: &str) {
        let m = &self.members[i];
        let data: PathBuf = self.tmp.path().join(format!("m{i}"));
        let log = std::fs::File::create(self.tmp.path().join(format!("m{i}.log"))).expect("log");
        let client = format!("http://{}:2379", m.addr);
        let peer = format!("http://{}:2380", m.addr);
        let child = Command::new("ip")
            .args(["netns", "exec", &m.netns, BIN, "--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args([
                "--initial-cluster",
                initial,
                "--initial-cluster-token",
                "partition-test",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting etcd-lite");
        self.members[i].child = Some(child);
    }

    /// etcdctl from the hub against the given members.
    fn etcdctl(&self, members: &[usize], args: &[&str]) -> Output {
        let eps: Vec<String> = members
            .iter()
            .map(|i| format!("{}:2379", self.members[*i].addr))
            .collect();
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.hub,
                "etcdctl",
                "--endpoints",
                &eps.join(","),
            ])
            .args(["--command-timeout", "3s", "--dial-timeout", "2s"])
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .expect("running etcdctl")
    }

    /// etcdctl inside member `i`'s own namespace (reaches it while it is cut off).
    fn etcdctl_inside(&self, i: usize, args: &[&str]) -> Output {
        let m = &self.members[i];
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &m.netns,
                "etcdctl",
                "--endpoints",
                &format!("{}:2379", m.addr),
            ])
            .args(["--command-timeout", "3s", "--dial-timeout", "2s"])
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .expect("running etcdctl")
    }

    fn ok(&self, members: &[usize], args: &[&str]) -> String {
        let out = self.etcdctl(members, args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn status(&self, i: usize) -> Option<(u64, u64, u64)> {
        let out = self.etcdctl_inside(i, &["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let st = &v[0]["Status"];
        Some((
            st["header"]["member_id"].as_u64()?,
            st["leader"].as_u64()?,
            st["raftTerm"].as_u64()?,
        ))
    }

    fn leader_index(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            for i in 0..self.members.len() {
                if let Some((me, leader, _)) = self.status(i) {
                    if me == leader {
                        return i;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no leader elected");
    }

    fn cut(&self, i: usize) {
        ip(&[
            "-n",
            &self.hub,
            "link",
            "set",
            &self.members[i].veth,
            "down",
        ]);
    }

    fn heal(&self, i: usize) {
        ip(&["-n", &self.hub, "link", "set", &self.members[i].veth, "up"]);
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            let _ = Command::new("ip").args(["netns", "del", &m.netns]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hub])
            .status();
    }
}

/// Partitions the leader (with `extra` followers) away from the majority, writes on both sides,
/// heals, and checks: the minority acknowledged nothing, the majority kept serving, the old leader
/// stepped down, every member ends with the same history.
fn partition_leader_away(n: usize, extra: usize, net: u8) {
    let c = NetCluster::start(n, net);
    let all: Vec<usize> = (0..n).collect();
    c.ok(&all, &["put", "before", "1"]);
    let old = c.leader_index(Duration::from_secs(10));
    let (old_id, _, old_term) = c.status(old).expect("leader status");
    let mut minority = vec![old];
    minority.extend((1..=extra).map(|k| (old + k) % n));
    let majority: Vec<usize> = all
        .iter()
        .copied()
        .filter(|i| !minority.contains(i))
        .collect();
    for &i in &minority {
        c.cut(i);
    }
    // The minority cannot acknowledge a write.
    for &i in &minority {
        let out = c.etcdctl_inside(i, &["put", &format!("minority-{i}"), "lost"]);
        assert!(
            !out.status.success(),
            "member {i} acknowledged a write without a quorum"
        );
    }
    // The majority elects a leader and serves.
    eventually(
        Duration::from_secs(20),
        "the majority serves writes",
        || {
            c.etcdctl(&majority, &["put", "majority", "2"])
                .status
                .success()
        },
    );
    let new_leader = c.leader_index(Duration::from_secs(10));
    assert!(majority.contains(&new_leader));
    // Heal: the old leader learns the new term and steps down; nobody lost anything.
    for &i in &minority {
        c.heal(i);
    }
    eventually(
        Duration::from_secs(20),
        "the old leader follows the new one",
        || {
            c.status(old)
                .is_some_and(|(_, leader, term)| leader != old_id && leader != 0 && term > old_term)
        },
    );
    eventually(
        Duration::from_secs(20),
        "every member has the majority's write",
        || {
            (0..n).all(|i| {
                let out = c.etcdctl_inside(i, &["get", "majority", "--print-value-only"]);
                String::from_utf8_lossy(&out.stdout) == "2\n"
            })
        },
    );
    for i in 0..n {
        assert_eq!(
            String::from_utf8_lossy(
                &c.etcdctl_inside(i, &["get", "before", "--print-value-only"])
                    .stdout
            ),
            "1\n"
        );
    }
    // A write the minority could not acknowledge may still take effect later (a follower holds
    // a proposal until a leader is known, within the request's deadline): its outcome is
    // unknown to the client, as with etcd. What matters is that every member ends with the
    // same history: same revision, same hash, same minority keys.
    let view = |i: usize| -> (u64, u64, String) {
        let out = c.etcdctl_inside(i, &["endpoint", "hashkv", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let hash = v[0]["HashKV"]["hash"].as_u64().unwrap_or(0);
        let rev = v[0]["HashKV"]["header"]["revision"].as_u64().unwrap_or(0);
        let out = c.etcdctl_inside(i, &["get", "minority-", "--prefix"]);
        (hash, rev, String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let mut views = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        views = (0..n).map(view).collect();
        if views.len() == 1 && views.iter().all(|(h, r, _)| *h != 0 && *r != 0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        views.len(),
        1,
        "members diverged (hash, revision, minority keys): {views:?}"
    );
    // And the healed cluster still takes writes through any member.
    c.ok(&[old], &["put", "after", "3"]);
    assert_eq!(
        c.ok(&majority, &["get", "after", "--print-value-only"]),
        "3\n"
    );
}

#[test]
fn three_members_partitioned_leader_cannot_commit_and_rejoins() {
    partition_leader_away(3, 0, 216);
}

#[test]
fn five_members_two_cut_off_with_the_leader() {
    partition_leader_away(5, 1, 217);
}
