//! Three etcd-lite processes on loopback forming one raft cluster, driven by the real etcdctl:
//! replication, any member serving, the leader killed with -9 during writes, all members
//! restarted, bad peer input refused.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use test_support::{eventually, free_port, require_tool, EtcdLite};

const BIN: &str = env!("CARGO_BIN_EXE_etcd-lite");

struct Cluster {
    members: Vec<EtcdLite>,
}

impl Cluster {
    fn start(n: usize) -> Self {
        Self::start_with(n, &[])
    }

    fn start_with(n: usize, extra: &[&str]) -> Self {
        require_tool("etcdctl");
        let c = Cluster {
            members: test_support::start_cluster(BIN, n, extra),
        };
        c.leader();
        c
    }

    fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.endpoint())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the member that is leader, waiting for one.
    fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            for (i, m) in self.members.iter().enumerate() {
                let Ok(out) = m.try_etcdctl(&["endpoint", "status", "-w", "json"]) else {
                    continue;
                };
                let v: serde_json::Value = match serde_json::from_str(&out) {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                let st = &v[0]["Status"];
                let me = st["header"]["member_id"].as_u64();
                let leader = st["leader"].as_u64();
                if me.is_some() && me == leader {
                    return i;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no leader elected");
    }
}

/// Starts the member that `etcdctl member add` (whose output is `add_output`) announced, with
/// the initial cluster etcdctl printed, joining as `existing`.
fn start_added_member(add_output: &str, name: &str, peer_url: &str) -> EtcdLite {
    let initial = add_output
        .lines()
        .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER="))
        .map(|v| v.trim_matches('"').to_string())
        .expect("ETCD_INITIAL_CLUSTER in member add's output");
    EtcdLite::start(
        BIN,
        &[
            "--name",
            name,
            "--initial-advertise-peer-urls",
            peer_url,
            "--listen-peer-urls",
            peer_url,
            "--initial-cluster",
            &initial,
            "--initial-cluster-state",
            "existing",
        ],
    )
}

#[test]
fn three_members_replicate_and_any_member_serves() {
    let c = Cluster::start(3);
    c.members[0].ok(&["put", "k0", "v0"]);
    c.members[1].ok(&["put", "k1", "v1"]);
    c.members[2].ok(&["put", "k2", "v2"]);
    for m in &c.members {
        // Linearizable reads from every member see every acknowledged write.
        assert_eq!(
            m.ok(&["get", "k", "--prefix", "--print-value-only"]),
            "v0\nv1\nv2\n"
        );
    }
    // Everyone agrees on the leader and the members.
    let out = c.members[0].ok(&[
        "--endpoints",
        &c.endpoints(),
        "endpoint",
        "status",
        "-w",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("status json");
    let leaders: BTreeSet<u64> = v
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["Status"]["leader"].as_u64())
        .collect();
    assert_eq!(leaders.len(), 1, "{out}");
    let terms: BTreeSet<u64> = v
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["Status"]["raftTerm"].as_u64())
        .collect();
    assert_eq!(terms.len(), 1, "{out}");
    // Every member lists every member with its name and the client URL it published.
    for m in &c.members {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let list = m.ok(&["member", "list"]);
            let complete = c.members.iter().enumerate().all(|(i, other)| {
                list.lines().any(|l| {
                    l.contains(&format!(", m{i}, "))
                        && l.contains(&format!("http://{}", other.endpoint()))
                })
            });
            if complete {
                break;
            }
            assert!(Instant::now() < deadline, "incomplete member list:\n{list}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // v2's view of the cluster: every client URL, and leader stats only from the leader,
    // which has sent appends to both followers.
    let (_, machines, _) = c.members[1].curl(&[], "/v2/machines");
    for m in &c.members {
        assert!(
            machines.contains(&format!("http://{}", m.endpoint())),
            "{machines}"
        );
    }
    let leader = c.leader();
    for (i, m) in c.members.iter().enumerate() {
        let (code, body, _) = m.curl(&[], "/v2/stats/leader");
        let v: serde_json::Value = serde_json::from_str(&body).expect("stats json");
        let (_, me, _) = m.curl(&[], "/v2/stats/self");
        let me: serde_json::Value = serde_json::from_str(&me).expect("self json");
        if i == leader {
            assert_eq!(code, 200, "{body}");
            let followers = v["followers"].as_object().expect("followers");
            assert_eq!(followers.len(), 2, "{body}");
            assert!(followers
                .values()
                .all(|f| f["counts"]["success"].as_u64() > Some(0)));
            assert_eq!(me["state"], "StateLeader");
        } else {
            assert_eq!((code, &v["message"]), (403, &"not current leader".into()));
            assert_eq!(me["state"], "StateFollower");
            assert!(me["recvAppendRequestCnt"].as_u64() > Some(0), "{me}");
        }
    }
}

#[test]
fn killing_the_leader_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3);
    let mut acked = Vec::new();
    for i in 0..20 {
        let key = format!("before{i}");
        c.members[i % 3].ok(&["put", &key, "x"]);
        acked.push(key);
    }
    let leader = c.leader();
    c.members[leader].kill9();
    let started = Instant::now();
    // The others elect a new leader and take writes again.
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let mut i = 0;
    while acked.len() < 40 {
        let key = format!("after{i}");
        let m = &c.members[survivors[i % 2]];
        if m.try_etcdctl(&["put", &key, "y"]).is_ok() {
            acked.push(key);
        }
        i += 1;
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no writes accepted after the leader died"
        );
    }
    c.members[leader].restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    for (n, m) in c.members.iter().enumerate() {
        loop {
            // Serializable: what this member itself has.
            let out = m.try_etcdctl(&["get", "", "--prefix", "--keys-only", "--consistency", "s"]);
            let have: BTreeSet<&str> = match &out {
                Ok(out) => out.lines().filter(|l| !l.is_empty()).collect(),
                Err(_) => BTreeSet::new(),
            };
            let missing: Vec<&String> = acked
                .iter()
                .filter(|k| !have.contains(k.as_str()))
                .collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "member m{n} ({}; the killed leader was m{leader}) is missing acknowledged \
                 writes {missing:?}; its last answer: {out:?}\n\
                 its status: {:?}\nits log:\n{}",
                m.endpoint(),
                m.try_etcdctl(&["endpoint", "status", "-w", "json"]),
                m.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The failover benchmark's rounds: kill -9 the leader, restart it with other bootstrap flags
/// (as etcd allows: they are ignored once the data directory exists), and do it again. The
/// restarted member must rejoin, catch up and take part in the next election, or a second
/// failover leaves two members of which one is deaf, and no leader.
#[test]
fn leaders_keep_being_elected_over_repeated_failovers_and_restarts() {
    let mut c = Cluster::start(3);
    c.members[0].ok(&["put", "start", "x"]);
    let restart_flags = [
        ("--initial-cluster-token", "another-token"),
        ("--initial-cluster-state", "existing"),
        ("--initial-cluster-token", "a-third-token"),
        ("--initial-cluster-state", "new"),
    ];
    for (round, (flag, value)) in restart_flags.into_iter().enumerate() {
        let leader = c.leader();
        c.members[leader].kill9();
        let survivor = &c.members[(leader + 1) % 3];
        let key = format!("round{round}");
        eventually(
            Duration::from_secs(20),
            "a write after the failover",
            || survivor.try_etcdctl(&["put", &key, "y"]).is_ok(),
        );
        c.members[leader].set_flag(flag, value);
        c.members[leader].respawn();
        // The restarted member catches up: it holds the write made while it was down.
        let restarted = &c.members[leader];
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out =
                restarted.try_etcdctl(&["get", &key, "--consistency", "s", "--print-value-only"]);
            if out.as_deref().map(str::trim) == Ok("y") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: m{leader}, restarted with {flag} {value}, never caught up \
                 (last answer {out:?}); its log:\n{}",
                restarted.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // Every member still serves linearizable writes and reads.
    for m in &c.members {
        m.ok(&["put", "end", "z"]);
        assert_eq!(m.ok(&["get", "round3", "--print-value-only"]).trim(), "y");
    }
}

#[test]
fn restarting_every_member_keeps_data_and_revision() {
    let mut c = Cluster::start(3);
    for i in 0..10 {
        c.members[0].ok(&["put", &format!("r{i}"), &i.to_string()]);
    }
    let rev_of = |m: &EtcdLite| -> i64 {
        let out = m.ok(&["get", "r0", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        v["header"]["revision"].as_i64().expect("revision")
    };
    let before = rev_of(&c.members[0]);
    for m in &mut c.members {
        m.terminate();
    }
    // Restarted as etcd's members may be, without the --initial-cluster* flags: the data
    // directory says who the cluster is (its peers included).
    for m in &mut c.members {
        for flag in [
            "--initial-cluster",
            "--initial-cluster-token",
            "--initial-cluster-state",
        ] {
            m.remove_flag(flag);
        }
        m.respawn();
    }
    c.leader();
    c.members[1].ok(&["put", "after", "restart"]);
    for m in &c.members {
        assert_eq!(rev_of(m), before + 1);
        assert_eq!(m.ok(&["get", "after", "--print-value-only"]), "restart\n");
        assert_eq!(m.ok(&["get", "r9", "--print-value-only"]), "9\n");
    }
}

#[test]
fn a_member_far_behind_catches_up_from_a_snapshot() {
    let mut c = Cluster::start_with(3, &["--snapshot-count", "20"]);
    let leader = c.leader();
    let lagging = (leader + 1) % 3;
    c.members[lagging].terminate();
    for i in 0..120 {
        c.members[leader].ok(&["put", &format!("s{i:03}"), &i.to_string()]);
    }
    c.members[lagging].respawn();
    let want = c.members[leader].ok(&["get", "s", "--prefix", "--consistency", "s"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let have = c.members[lagging]
            .try_etcdctl(&["get", "s", "--prefix", "--consistency", "s"])
            .unwrap_or_default();
        if have == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lagging member did not catch up; its log:\n{}\nleader's log:\n{}",
            c.members[lagging].log(),
            c.members[leader].log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // It serves and takes part again: a write through it is replicated.
    c.members[lagging].ok(&["put", "after", "1"]);
    assert_eq!(
        c.members[leader].ok(&["get", "after", "--print-value-only"]),
        "1\n"
    );
}

#[test]
fn members_are_added_by_etcdctl_and_removed_while_serving() {
    let mut c = Cluster::start_with(3, &["--snapshot-count", "50"]);
    for i in 0..30 {
        c.members[0].ok(&["put", &format!("m{i}"), "x"]);
    }
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let out = c.members[1].ok(&["member", "add", "m3", "--peer-urls", &url]);
    assert!(
        out.contains("Member") && out.contains("added to cluster"),
        "{out}"
    );
    // etcdctl prints the environment the new member starts with; use its initial cluster.
    let fourth = start_added_member(&out, "m3", &url);
    // It arrives by snapshot and log, then serves everything written before it joined.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = fourth
            .try_etcdctl(&["get", "m", "--prefix", "--keys-only", "--consistency", "s"])
            .unwrap_or_default();
        if got.lines().filter(|l| !l.is_empty()).count() == 30 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new member did not catch up:\n{}",
            fourth.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    fourth.ok(&["put", "from-new", "1"]);
    assert_eq!(
        c.members[0].ok(&["get", "from-new", "--print-value-only"]),
        "1\n"
    );
    let list = c.members[0].ok(&["member", "list"]);
    assert_eq!(list.lines().count(), 4, "{list}");
    assert!(list.contains(&url), "{list}");
    // The new member published its name and client URL; every member lists them.
    let fourth_client = format!("http://{}", fourth.endpoint());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.members[2]
        .ok(&["member", "list"])
        .lines()
        .any(|l| l.contains(", m3, ") && l.contains(&fourth_client))
    {
        assert!(
            Instant::now() < deadline,
            "{}",
            c.members[2].ok(&["member", "list"])
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Remove the leader itself, while serving: leadership moves first, the rest keep serving.
    let leader = c.leader();
    let alive = (leader + 1) % 3;
    let st = c.members[leader].ok(&["endpoint", "status", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&st).expect("json");
    let victim_id = format!(
        "{:x}",
        v[0]["Status"]["header"]["member_id"].as_u64().expect("id")
    );
    let out = c.members[alive].ok(&["member", "remove", &victim_id]);
    assert!(out.contains("removed from cluster"), "{out}");
    let list = c.members[alive].ok(&["member", "list"]);
    assert_eq!(list.lines().count(), 3, "{list}");
    c.members[alive].ok(&["put", "after-remove", "1"]);
    assert_eq!(
        fourth.ok(&["get", "after-remove", "--print-value-only"]),
        "1\n"
    );
    // Bad requests are refused with etcd's messages and change nothing.
    let e = c.members[alive].fails(&["member", "remove", "123456789abc"]);
    assert!(e.contains("member not found"), "{e}");
    let e = c.members[alive].fails(&["member", "add", "dup", "--peer-urls", &url]);
    assert!(e.contains("Peer URLs already exists"), "{e}");
    c.members[leader].kill9();
}

#[test]
fn bad_input_on_the_peer_port_is_refused_without_harm() {
    use etcd_api::raftpeer::{peer_client::PeerClient, MessageBatch};
    let peer_port = free_port();
    let peer = format!("http://127.0.0.1:{peer_port}");
    // A one-member cluster started with --initial-cluster opens its peer port.
    let m = EtcdLite::start(
        BIN,
        &[
            "--name",
            "solo",
            "--initial-advertise-peer-urls",
            &peer,
            "--listen-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("solo={peer}"),
        ],
    );
    m.ok(&["put", "before", "1"]);
    // A message that says it is 4 GiB long (over the default quota's bound) is refused from
    // its length alone: nobody reaching the port can make the member buffer that much.
    let frame = m.dir.path().join("huge-frame");
    std::fs::write(&frame, [0u8, 0xff, 0xff, 0xff, 0xff]).expect("writing the frame");
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-m",
            "10",
            "--http2-prior-knowledge",
            "-D",
            "-",
            "-o",
            "/dev/null",
        ])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg("--data-binary")
        .arg(format!("@{}", frame.display()))
        .arg(format!("{peer}/raftpeer.Peer/Send"))
        .output()
        .expect("running curl");
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.contains("grpc-status: 11") && answer.contains("too%20large"),
        "expected OutOfRange, got: {answer}"
    );
    let status = m.ok(&["endpoint", "status", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&status).expect("json");
    let me = v[0]["Status"]["header"]["member_id"].as_u64().expect("id");
    let cluster = v[0]["Status"]["header"]["cluster_id"]
        .as_u64()
        .expect("cluster");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut c = PeerClient::connect(peer.clone()).await.expect("connect");
        let batch = |cluster_id, from, to, messages: Vec<Vec<u8>>| MessageBatch {
            cluster_id,
            from,
            to,
            messages,
        };
        let e = c
            .send(batch(cluster ^ 1, me, me, vec![]))
            .await
            .expect_err("another cluster");
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        assert!(e.message().contains("cluster ID mismatch"), "{e}");
        let e = c
            .send(batch(cluster, 12345, me, vec![]))
            .await
            .expect_err("unknown sender");
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        let e = c
            .send(batch(cluster, me, me + 1, vec![]))
            .await
            .expect_err("wrong addressee");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        let e = c
            .send(batch(cluster, me, me, vec![vec![0xff, 0xff, 0xff, 0x07]]))
            .await
            .expect_err("garbage message");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        // The stream members use: good batches are taken, the first bad one ends the stream
        // with the same error.
        let good = batch(cluster, me, me, vec![]);
        let bad = batch(cluster ^ 1, me, me, vec![]);
        let e = c
            .stream(tokio_stream::iter([good.clone(), good.clone(), bad, good]))
            .await
            .expect_err("another cluster, mid-stream");
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
        assert!(e.message().contains("cluster ID mismatch"), "{e}");
        let e = c
            .stream(tokio_stream::iter([batch(
                cluster,
                me,
                me,
                vec![b"garbage".to_vec()],
            )]))
            .await
            .expect_err("garbage message, streamed");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        let ack = c
            .stream(tokio_stream::iter([
                batch(cluster, me, me, vec![]),
                batch(cluster, me, me, vec![]),
            ]))
            .await
            .expect("empty batches from a member are fine");
        assert_eq!(ack.into_inner().accepted, 0);
    });
    // Raw garbage on the peer port: the connection is dropped, the member carries on.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", peer_port)).expect("tcp");
        let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n\x00\x01garbage");
    }
    m.ok(&["put", "after", "2"]);
    assert_eq!(m.ok(&["get", "before", "--print-value-only"]), "1\n");
    assert_eq!(m.ok(&["get", "after", "--print-value-only"]), "2\n");
}

#[test]
fn joining_a_cluster_nobody_answers_for_fails_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (me, gone) = (free_port(), free_port());
    let out = std::process::Command::new(BIN)
        .args(["--name", "late", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &format!("http://127.0.0.1:{}", free_port()),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{me}"),
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{me}"),
            "--initial-cluster",
            &format!("late=http://127.0.0.1:{me},old=http://127.0.0.1:{gone}"),
            "--initial-cluster-state",
            "existing",
        ])
        .output()
        .expect("etcd-lite");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no existing member answered"), "{err}");
}

/// `etcdctl move-leader` hands leadership to the member asked for; only the leader moves it,
/// and only to a member.
#[test]
fn move_leader_hands_leadership_to_the_member_asked_for() {
    let c = Cluster::start(3);
    let leader = c.leader();
    let target = (leader + 1) % 3;
    let member_id = |i: usize| -> u64 {
        let out = c.members[i].ok(&["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("status json");
        v[0]["Status"]["header"]["member_id"]
            .as_u64()
            .expect("member id")
    };
    let target_id = member_id(target);
    c.members[0].ok(&["put", "before", "1"]);
    let out = c.members[0].ok(&[
        "--endpoints",
        &c.endpoints(),
        "move-leader",
        &format!("{target_id:x}"),
    ]);
    assert!(out.contains("Leadership transferred"), "{out}");
    assert_eq!(c.leader(), target);
    // Everyone still serves, nothing lost.
    c.members[leader].ok(&["put", "after", "2"]);
    for m in &c.members {
        assert_eq!(m.ok(&["get", "before", "--print-value-only"]), "1\n");
        assert_eq!(m.ok(&["get", "after", "--print-value-only"]), "2\n");
    }
    // Asked of a follower: etcd's "not leader"; to a stranger: "bad leader transferee".
    let follower = (target + 1) % 3;
    let err = c.members[follower].fails(&["move-leader", &format!("{target_id:x}")]);
    assert!(
        err.contains("not leader") || err.contains("no leader endpoint"),
        "{err}"
    );
    let err = c.members[target].fails(&["--endpoints", &c.endpoints(), "move-leader", "abcdef"]);
    assert!(err.contains("bad leader transferee"), "{err}");
    assert_eq!(c.leader(), target);
    // Over gRPC, back to the first leader: the answer has no header, as etcd's (the Rust
    // etcd-client checks that).
    let back = member_id(leader);
    let url = format!("http://{}", c.members[target].endpoint());
    let resp = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            use etcd_api::etcdserverpb::{
                maintenance_client::MaintenanceClient, MoveLeaderRequest,
            };
            let mut m = MaintenanceClient::connect(url).await.expect("connect");
            m.move_leader(MoveLeaderRequest { target_id: back })
                .await
                .expect("move leader")
                .into_inner()
        });
    assert_eq!(resp.header, None);
    assert_eq!(c.leader(), leader);
}

/// Past `--quota-backend-bytes` the cluster raises NOSPACE (through the log: every member
/// refuses), writes fail with etcd's error while reads and deletes work, and the alarm survives
/// restarts until `etcdctl alarm disarm`.
#[test]
fn quota_raises_nospace_and_refuses_writes_cluster_wide() {
    let mut c = Cluster::start_with(3, &["--quota-backend-bytes", "4000000"]);
    let value = "x".repeat(100_000);
    let mut refused = None;
    for i in 0..200 {
        match c.members[i % 3].try_etcdctl(&["put", &format!("k{i}"), &value]) {
            Ok(_) => {}
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    let (stopped_at, err) = refused.expect("the quota stops writes");
    assert!(
        err.contains("etcdserver: mvcc: database space exceeded"),
        "{err}"
    );
    assert!(stopped_at > 10, "refused too early: {stopped_at}");
    for m in &c.members {
        let list = m.ok(&["alarm", "list"]);
        assert!(list.contains("alarm:NOSPACE"), "{list}");
        // Refused everywhere, also writes that would be tiny; reads and deletes still work.
        let err = m.fails(&["put", "small", "x"]);
        assert!(err.contains("database space exceeded"), "{err}");
        let err = m.fails(&["lease", "grant", "10"]);
        assert!(err.contains("database space exceeded"), "{err}");
        assert_eq!(
            m.ok(&["get", "k0", "--print-value-only"]).len(),
            value.len() + 1
        );
    }
    c.members[1].ok(&["del", "k0"]);
    let status = c.members[2].ok(&["endpoint", "status", "-w", "json"]);
    assert!(status.contains("alarm:NOSPACE"), "{status}");
    // Still raised after a full restart.
    for m in &mut c.members {
        m.restart();
    }
    c.leader();
    assert!(c.members[0]
        .ok(&["alarm", "list"])
        .contains("alarm:NOSPACE"));
    // Disarmed: the alarm list empties (the next large write raises it again while the
    // backend is still over the quota, as with etcd).
    let out = c.members[0].ok(&["alarm", "disarm"]);
    assert!(out.contains("alarm:NOSPACE"), "{out}");
    for m in &c.members {
        assert_eq!(m.ok(&["alarm", "list"]), "");
    }
}

/// Raft messages with a stale term, from a real member, are ignored: the leader keeps leading
/// at its term, the bogus entries they carry are never applied, the members stay identical.
#[test]
fn stale_term_messages_on_the_peer_port_are_ignored() {
    use etcd_api::raftpeer::{peer_client::PeerClient, MessageBatch};
    use protobuf::Message as _;
    use raft::eraftpb::{Entry, Message, MessageType};

    let c = Cluster::start(3);
    c.members[0].ok(&["put", "before", "1"]);
    let leader = c.leader();
    let follower = (leader + 1) % 3;
    let status = |i: usize| -> serde_json::Value {
        let out = c.members[i].ok(&["endpoint", "status", "-w", "json"]);
        serde_json::from_str::<serde_json::Value>(&out).expect("json")[0]["Status"].clone()
    };
    let st = status(leader);
    let (leader_id, cluster_id, term) = (
        st["header"]["member_id"].as_u64().expect("id"),
        st["header"]["cluster_id"].as_u64().expect("cluster"),
        st["raftTerm"].as_u64().expect("term"),
    );
    assert!(term >= 2, "term {term}: no lower term to send");
    let follower_id = status(follower)["header"]["member_id"]
        .as_u64()
        .expect("id");
    let peer_url = c.members[leader]
        .ok(&["member", "list", "-w", "json"])
        .parse::<serde_json::Value>()
        .expect("json")["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["ID"].as_u64() == Some(leader_id))
        .and_then(|m| m["peerURLs"][0].as_str().map(str::to_string))
        .expect("leader's peer URL");
    let stale = |t: MessageType| {
        let mut m = Message::default();
        m.set_msg_type(t);
        m.from = follower_id;
        m.to = leader_id;
        m.term = term - 1;
        m.index = 1;
        m.log_term = 1;
        let e = Entry {
            index: 2,
            term: 1,
            data: b"\x00bogus".to_vec().into(),
            ..Default::default()
        };
        m.entries = vec![e].into();
        m.write_to_bytes().expect("encode")
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut client = PeerClient::connect(peer_url).await.expect("connect");
        for t in [
            MessageType::MsgAppend,
            MessageType::MsgHeartbeat,
            MessageType::MsgRequestVote,
            MessageType::MsgAppendResponse,
        ] {
            // Accepted on the wire (as etcd), dropped by raft.
            client
                .send(MessageBatch {
                    cluster_id,
                    from: follower_id,
                    to: leader_id,
                    messages: vec![stale(t)],
                })
                .await
                .expect("a well-formed batch is taken");
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.leader(), leader, "a stale message moved leadership");
    assert_eq!(status(leader)["raftTerm"].as_u64(), Some(term));
    c.members[follower].ok(&["put", "after", "2"]);
    let mut hashes = BTreeSet::new();
    for m in &c.members {
        assert_eq!(m.ok(&["get", "before", "--print-value-only"]), "1\n");
        assert_eq!(m.ok(&["get", "after", "--print-value-only"]), "2\n");
        let out = m.ok(&["endpoint", "hashkv", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        hashes.insert(v[0]["HashKV"]["hash"].as_u64().expect("hash"));
    }
    assert_eq!(hashes.len(), 1, "members diverged");
}

/// `etcdctl member add --learner`: the learner catches up without a vote, shows as a learner,
/// and `member promote` (at the leader) makes it a voter; bad promotions get etcd's errors.
#[test]
fn learners_catch_up_and_are_promoted() {
    let c = Cluster::start(3);
    for i in 0..20 {
        c.members[0].ok(&["put", &format!("l{i}"), "x"]);
    }
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = c.members[0].ok(&["member", "add", "m3", "--learner", "--peer-urls", &url]);
    assert!(out.contains("added to cluster"), "{out}");
    let learner = start_added_member(&out, "m3", &url);
    eventually(Duration::from_secs(20), "the learner catches up", || {
        learner
            .try_etcdctl(&["get", "l", "--prefix", "--keys-only", "--consistency", "s"])
            .is_ok_and(|out| out.lines().filter(|l| !l.is_empty()).count() == 20)
    });
    let list = c.members[1].ok(&["member", "list", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&list).expect("json");
    let learner_entry = v["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["peerURLs"][0] == url.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("the learner is listed: {list}"));
    assert_eq!(learner_entry["isLearner"], true, "{list}");
    let learner_id = format!("{:x}", learner_entry["ID"].as_u64().expect("id"));
    let st = learner.ok(&["endpoint", "status", "-w", "json"]);
    assert!(st.contains("\"isLearner\":true"), "{st}");
    // Like etcd's learners: writes, linearizable reads and the rest are refused with etcd's
    // error (clients go to a voter); serializable reads and status are served.
    let err = learner.fails(&["put", "on-learner", "1"]);
    assert!(err.contains("rpc not supported for learner"), "{err}");
    let post = |path: &str, body: &str| learner.curl(&["-XPOST", "-d", body], path);
    let (code, body, _) = post("/v3/kv/put", r#"{"key":"bDA=","value":"eQ=="}"#);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("rpc not supported for learner"), "{body}");
    let (code, body, _) = post("/v3/kv/range", r#"{"key":"bDA="}"#);
    assert_eq!(code, 503, "{body}");
    let (code, body, _) = post("/v3/kv/range", r#"{"key":"bDA=","serializable":true}"#);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"value\":\"eA==\""), "{body}");
    let (code, body, _) = post("/v3/maintenance/status", "{}");
    assert_eq!(code, 200, "{body}");
    // Watches, too, as over gRPC (the gateway served them). etcdctl's watch retries the
    // error (Unavailable) for ever, so only the gateway is asked here.
    let (code, body, _) = learner.curl(
        &[
            "-XPOST",
            "-m",
            "5",
            "-d",
            r#"{"create_request":{"key":"bDA=","start_revision":1}}"#,
        ],
        "/v3/watch",
    );
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("rpc not supported for learner"), "{body}");

    // Promoting a voter, or nobody: etcd's errors.
    let leader = c.leader();
    let voter = c.members[leader].ok(&["endpoint", "status", "-w", "json"]);
    let voter: serde_json::Value = serde_json::from_str(&voter).expect("json");
    let voter_id = format!(
        "{:x}",
        voter[0]["Status"]["header"]["member_id"]
            .as_u64()
            .expect("id")
    );
    let err = c.members[leader].fails(&["member", "promote", &voter_id]);
    assert!(err.contains("can only promote a learner member"), "{err}");
    let err = c.members[leader].fails(&["member", "promote", "abcdef"]);
    assert!(err.contains("member not found"), "{err}");

    let out = c.members[leader].ok(&["member", "promote", &learner_id]);
    assert!(out.contains("promoted"), "{out}");
    eventually(Duration::from_secs(10), "the learner is a voter", || {
        c.members[0]
            .ok(&["member", "list", "-w", "json"])
            .parse::<serde_json::Value>()
            .is_ok_and(|v| {
                v["members"]
                    .as_array()
                    .is_some_and(|ms| ms.iter().all(|m| m["isLearner"] != true) && ms.len() == 4)
            })
    });
    // The promoted member serves writes once it has applied its own promotion.
    eventually(
        Duration::from_secs(10),
        "the promoted member takes writes",
        || learner.try_etcdctl(&["put", "from-promoted", "1"]).is_ok(),
    );
    assert_eq!(
        c.members[0].ok(&["get", "from-promoted", "--print-value-only"]),
        "1\n"
    );
}

#[test]
fn a_call_ends_at_its_clients_deadline_and_is_never_proposed_after() {
    let mut c = Cluster::start(3);
    let leader = c.leader();
    // Leave one follower alone: after an election timeout it knows no leader.
    let alone = (leader + 1) % 3;
    for i in 0..3 {
        if i != alone {
            c.members[i].kill9();
        }
    }
    let m = &c.members[alone];
    eventually(
        Duration::from_secs(15),
        "the member left alone sees no leader",
        || {
            m.try_etcdctl(&["endpoint", "status", "-w", "json"])
                .ok()
                .and_then(|out| serde_json::from_str::<serde_json::Value>(&out).ok())
                // etcdctl leaves out a leader of 0.
                .is_some_and(|v| {
                    v[0]["Status"].is_object()
                        && v[0]["Status"]["leader"].as_u64().unwrap_or(0) == 0
                })
        },
    );
    let started = Instant::now();
    // PutRequest { key: "late", value: "never" }, sent by curl, which keeps no deadline of
    // its own: the answer at the deadline is the member's.
    let put = [&[0x0a, 4][..], b"late", &[0x12, 5][..], b"never"].concat();
    let h = m.grpc_curl("/etcdserverpb.KV/Put", &put, &["grpc-timeout: 500m"]);
    assert!(h.contains("grpc-status: 4"), "DeadlineExceeded: {h}");
    assert!(h.contains("context%20deadline%20exceeded"), "{h}");
    // Without the deadline the member waits 7 s for a leader before giving up.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The others come back within those 7 s: a leader is elected, but the abandoned put is
    // not proposed to it.
    for i in 0..3 {
        if i != alone {
            c.members[i].respawn();
        }
    }
    c.leader();
    let (ep, m) = (c.endpoints(), &c.members[alone]);
    m.ok(&["--endpoints", &ep, "put", "after", "1"]);
    let out = m.ok(&["--endpoints", &ep, "get", "late"]);
    assert!(
        out.trim().is_empty(),
        "the abandoned put was applied: {out}"
    );
}

/// `--self-add`: a node started with the cluster's member list and `existing` adds itself as a
/// learner, catches up, and promotes itself to a voter, with no `member add` by hand; without
/// the flag it stops and says what to do.
#[test]
fn a_member_adds_itself_as_a_learner_and_is_promoted() {
    let c = Cluster::start(3);
    for i in 0..50 {
        c.members[0].ok(&["put", &format!("s{i}"), "x"]);
    }
    // The cluster's peer URLs, as `member list` shows them (ID, status, name, peer, client).
    let list = c.members[0].ok(&["member", "list"]);
    let mut initial: Vec<String> = list
        .lines()
        .map(|l| l.split(", ").collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .map(|f| format!("{}={}", f[2], f[3]))
        .collect();
    let url = format!("http://127.0.0.1:{}", free_port());
    initial.push(format!("m3={url}"));
    let initial = initial.join(",");
    let flags = [
        "--name",
        "m3",
        "--initial-advertise-peer-urls",
        &url,
        "--listen-peer-urls",
        &url,
        "--initial-cluster",
        &initial,
        "--initial-cluster-state",
        "existing",
    ];
    // Without --self-add: refused, and the cluster is unchanged.
    let dir = tempfile::tempdir().expect("tmp");
    let out = std::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &format!("http://127.0.0.1:{}", free_port()),
        ])
        .args(flags)
        .output()
        .expect("etcd-lite");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--self-add"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.members[1].ok(&["member", "list"]).lines().count(), 3);
    // With it: a learner first, then a voter that serves everything.
    let mut with = flags.to_vec();
    with.push("--self-add");
    let m3 = EtcdLite::start(BIN, &with);
    eventually(Duration::from_secs(30), "m3 promoted to a voter", || {
        let v: serde_json::Value =
            serde_json::from_str(&c.members[1].ok(&["member", "list", "-w", "json"]))
                .expect("json");
        let ms = v["members"].as_array().cloned().unwrap_or_default();
        ms.len() == 4
            && ms
                .iter()
                .all(|m| m["isLearner"].as_bool() != Some(true) && m["name"].as_str().is_some())
    });
    // m3 itself knows once it applies its promotion (a moment after the leader does).
    eventually(Duration::from_secs(10), "m3 serving writes", || {
        m3.try_etcdctl(&["put", "from-m3", "1"]).is_ok()
    });
    assert_eq!(
        m3.ok(&["get", "s", "--prefix", "--keys-only"])
            .lines()
            .filter(|l| !l.is_empty())
            .count(),
        50
    );
    assert_eq!(
        c.members[2].ok(&["get", "from-m3", "--print-value-only"]),
        "1\n"
    );
}
