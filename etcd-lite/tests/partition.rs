//! Network partitions of real members: each etcd-lite runs in its own network namespace, joined
//! to the others by a bridge inside a namespace of this test (nothing else sees the addresses).
//! A partition takes a member's link down; healing brings it back. Driven by the real etcdctl.
//! Needs root (`ip netns`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use test_support::eventually;
use test_support::netcluster::NetCluster;

const BIN: &str = env!("CARGO_BIN_EXE_etcd-lite");

/// Partitions the leader (with `extra` followers) away from the majority, writes on both sides,
/// heals, and checks: the minority acknowledged nothing, the majority kept serving, the old leader
/// stepped down, every member ends with the same history.
fn partition_leader_away(n: usize, extra: usize, net: u8) {
    let c = NetCluster::start(BIN, n, net);
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
