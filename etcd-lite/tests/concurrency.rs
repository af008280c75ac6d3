//! The server-side Lock and Election services over gRPC, as the Go, Rust and Java clients call
//! them: mutual exclusion in create-revision order, hand-over on unlock, lease expiry or a
//! cancelled waiter, and an election's campaign, proclaim, leader, observe and resign. The
//! same keys as etcdctl's client-side `lock` (one recipe, two implementations).

// tonic's interceptors return tonic::Status, large by design.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use etcd_api::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, LeaseGrantRequest, LeaseRevokeRequest,
    RangeRequest,
};
use etcd_api::v3electionpb::{
    election_client::ElectionClient, CampaignRequest, LeaderKey, LeaderRequest, LeaderResponse,
    ProclaimRequest, ResignRequest,
};
use etcd_api::v3lockpb::{lock_client::LockClient, LockRequest, UnlockRequest};
use test_support::EtcdLite;
use tonic::transport::Channel;

fn member() -> EtcdLite {
    EtcdLite::start(env!("CARGO_BIN_EXE_etcd-lite"), &[])
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn channel(m: &EtcdLite) -> Channel {
    Channel::from_shared(format!("http://{}", m.endpoint()))
        .expect("url")
        .connect()
        .await
        .expect("connect")
}

async fn grant(ch: &Channel, ttl: i64) -> i64 {
    LeaseClient::new(ch.clone())
        .lease_grant(LeaseGrantRequest { ttl, id: 0 })
        .await
        .expect("lease grant")
        .into_inner()
        .id
}

async fn keys(ch: &Channel, prefix: &str) -> Vec<String> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("prefix") += 1;
    KvClient::new(ch.clone())
        .range(RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: end,
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner()
        .kvs
        .into_iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

/// Whether `task` is still waiting after a moment (it must not finish before what it waits
/// for happens; the moment only gives a wrong answer the chance to show).
async fn still_waiting<T>(task: &tokio::task::JoinHandle<T>) -> bool {
    tokio::time::sleep(Duration::from_millis(300)).await;
    !task.is_finished()
}

#[test]
fn lock_is_exclusive_in_order_and_handed_over_on_unlock_expiry_and_cancel() {
    let m = member();
    runtime().block_on(async {
        let ch = channel(&m).await;
        let mut locks = LockClient::new(ch.clone());
        let (l1, l2, l3, l4) = (
            grant(&ch, 60).await,
            grant(&ch, 60).await,
            grant(&ch, 60).await,
            grant(&ch, 60).await,
        );
        let first = locks
            .lock(LockRequest {
                name: b"job".to_vec(),
                lease: l1,
            })
            .await
            .expect("lock")
            .into_inner();
        assert_eq!(first.key, format!("job/{l1:x}").into_bytes());
        let header = first.header.expect("header");
        assert!(header.revision > 0 && header.member_id != 0);

        // A second candidate waits for the first.
        let mut c = locks.clone();
        let second = tokio::spawn(async move {
            c.lock(LockRequest {
                name: b"job".to_vec(),
                lease: l2,
            })
            .await
        });
        assert!(still_waiting(&second).await, "two holders of one lock");
        locks
            .unlock(UnlockRequest {
                key: first.key.clone(),
            })
            .await
            .expect("unlock");
        let second = second.await.expect("task").expect("lock").into_inner();
        assert_eq!(second.key, format!("job/{l2:x}").into_bytes());

        // The holder's lease ends: the next candidate gets the lock.
        let mut c = locks.clone();
        let third = tokio::spawn(async move {
            c.lock(LockRequest {
                name: b"job".to_vec(),
                lease: l3,
            })
            .await
        });
        assert!(still_waiting(&third).await);
        LeaseClient::new(ch.clone())
            .lease_revoke(LeaseRevokeRequest { id: l2 })
            .await
            .expect("revoke");
        let third = third.await.expect("task").expect("lock").into_inner();
        assert_eq!(third.key, format!("job/{l3:x}").into_bytes());

        // A waiter that gives up leaves no key behind (it would block everyone after it).
        let mut c = locks.clone();
        let fourth = tokio::spawn(async move {
            c.lock(LockRequest {
                name: b"job".to_vec(),
                lease: l4,
            })
            .await
        });
        let k4 = format!("job/{l4:x}");
        while !keys(&ch, "job/").await.contains(&k4) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        fourth.abort();
        let mut left = keys(&ch, "job/").await;
        for _ in 0..250 {
            if !left.contains(&k4) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            left = keys(&ch, "job/").await;
        }
        assert_eq!(left, [format!("job/{l3:x}")]);

        // Bad input: etcd's errors.
        let err = locks
            .lock(LockRequest {
                name: b"job".to_vec(),
                lease: 0x7777,
            })
            .await
            .expect_err("unknown lease");
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert_eq!(err.message(), "etcdserver: requested lease not found");
        let err = locks
            .unlock(UnlockRequest { key: vec![] })
            .await
            .expect_err("empty key");
        assert_eq!(err.message(), "etcdserver: key is not provided");
    });
}

#[test]
fn lock_without_a_lease_gets_one_and_etcdctl_sees_the_holder() {
    let m = member();
    let held = runtime().block_on(async {
        let ch = channel(&m).await;
        LockClient::new(ch.clone())
            .lock(LockRequest {
                name: b"shared".to_vec(),
                lease: 0,
            })
            .await
            .expect("lock")
            .into_inner()
            .key
    });
    // The key is bound to a 60 s lease etcd-lite granted for the call.
    let held = String::from_utf8(held).expect("utf-8 key");
    let lease = held
        .strip_prefix("shared/")
        .expect("key under the lock's name");
    let ttl = m.ok(&["lease", "timetolive", lease]);
    assert!(ttl.contains("granted with TTL(60s)"), "{ttl}");
    // etcdctl's own lock (built on the client side, on the same keys) waits for this holder.
    let mut waiter = std::process::Command::new("timeout")
        .args([
            "20",
            "etcdctl",
            "--endpoints",
            &m.endpoint(),
            "lock",
            "shared",
        ])
        .args(["echo", "acquired"])
        .env("ETCDCTL_API", "3")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("etcdctl lock");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        waiter.try_wait().expect("wait").is_none(),
        "etcdctl took a held lock"
    );
    m.ok(&["lease", "revoke", lease]);
    let out = waiter.wait_with_output().expect("etcdctl lock");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "acquired\n");
}

/// The value of the next leader an Observe stream sends.
async fn next(observed: &mut tonic::Streaming<LeaderResponse>) -> String {
    let r = tokio::time::timeout(Duration::from_secs(10), observed.message())
        .await
        .expect("observe sent nothing")
        .expect("observe stream")
        .expect("observe ended");
    String::from_utf8(r.kv.expect("kv").value).expect("utf-8")
}

#[test]
fn election_campaign_proclaim_observe_and_resign() {
    let m = member();
    runtime().block_on(async {
        let ch = channel(&m).await;
        let mut el = ElectionClient::new(ch.clone());
        let err = el
            .leader(LeaderRequest {
                name: b"e".to_vec(),
            })
            .await
            .expect_err("no leader yet");
        assert_eq!(err.code(), tonic::Code::Unknown);
        assert_eq!(err.message(), "election: no leader");

        // An observer from before the first candidate.
        let mut observed = el
            .observe(LeaderRequest {
                name: b"e".to_vec(),
            })
            .await
            .expect("observe")
            .into_inner();
        let (l1, l2) = (grant(&ch, 60).await, grant(&ch, 60).await);
        let one = el
            .campaign(CampaignRequest {
                name: b"e".to_vec(),
                lease: l1,
                value: b"one".to_vec(),
            })
            .await
            .expect("campaign")
            .into_inner();
        let lead = one.leader.expect("leader key");
        assert_eq!(lead.key, format!("e/{l1:x}").into_bytes());
        assert_eq!((lead.name.as_slice(), lead.lease), (&b"e"[..], l1));
        assert_eq!(lead.rev, one.header.expect("header").revision);
        assert_eq!(next(&mut observed).await, "one");

        // A second candidate waits; the leader proclaims a new value.
        let mut c = el.clone();
        let two = tokio::spawn(async move {
            c.campaign(CampaignRequest {
                name: b"e".to_vec(),
                lease: l2,
                value: b"two".to_vec(),
            })
            .await
        });
        assert!(still_waiting(&two).await, "two leaders");
        el.proclaim(ProclaimRequest {
            leader: Some(lead.clone()),
            value: b"one, again".to_vec(),
        })
        .await
        .expect("proclaim");
        assert_eq!(next(&mut observed).await, "one, again");
        let leader = el
            .leader(LeaderRequest {
                name: b"e".to_vec(),
            })
            .await
            .expect("leader")
            .into_inner();
        assert_eq!(leader.kv.expect("kv").value, b"one, again");

        // Only the leader proclaims; a leader key must be given.
        let err = el
            .proclaim(ProclaimRequest {
                leader: Some(LeaderKey {
                    rev: lead.rev + 1,
                    ..lead.clone()
                }),
                value: b"usurper".to_vec(),
            })
            .await
            .expect_err("not the leader");
        assert_eq!(err.message(), "election: not leader");
        let err = el
            .resign(ResignRequest { leader: None })
            .await
            .expect_err("no leader key");
        assert_eq!(err.message(), "\"leader\" field must be provided");

        // Resigning hands over to the waiting candidate, and the observer follows.
        el.resign(ResignRequest { leader: Some(lead) })
            .await
            .expect("resign");
        let two = two.await.expect("task").expect("campaign").into_inner();
        assert_eq!(
            two.leader.expect("leader key").key,
            format!("e/{l2:x}").into_bytes()
        );
        assert_eq!(next(&mut observed).await, "two");
    });
}

#[test]
fn observe_needs_read_on_the_election_and_ends_when_it_is_revoked() {
    let m = EtcdLite::start(env!("CARGO_BIN_EXE_etcd-lite"), &["--bcrypt-cost", "4"]);
    m.ok(&["user", "add", "root:rootpw"]);
    m.ok(&["user", "add", "alice:alicepw"]);
    m.ok(&["role", "add", "watcher"]);
    m.ok(&[
        "role",
        "grant-permission",
        "watcher",
        "read",
        "e/",
        "--prefix",
    ]);
    m.ok(&["user", "grant-role", "alice", "watcher"]);
    m.ok(&["auth", "enable"]);
    runtime().block_on(async {
        use etcd_api::etcdserverpb::{auth_client::AuthClient, AuthenticateRequest};
        let ch = channel(&m).await;
        let token = |name: &str, password: &str| {
            let (name, password, ch) = (name.to_string(), password.to_string(), ch.clone());
            async move {
                AuthClient::new(ch)
                    .authenticate(AuthenticateRequest { name, password })
                    .await
                    .expect("authenticate")
                    .into_inner()
                    .token
            }
        };
        let with_token = |t: String| {
            let ch = ch.clone();
            ElectionClient::with_interceptor(ch, move |mut r: tonic::Request<()>| {
                r.metadata_mut()
                    .insert("token", t.parse().expect("ascii token"));
                Ok(r)
            })
        };
        let mut root = with_token(token("root", "rootpw").await);
        let mut alice = with_token(token("alice", "alicepw").await);
        // Anonymous: refused at once.
        let err = ElectionClient::new(ch.clone())
            .observe(LeaderRequest {
                name: b"e".to_vec(),
            })
            .await
            .expect_err("anonymous");
        assert_eq!(err.message(), "etcdserver: user name is empty");
        let mut observed = alice
            .observe(LeaderRequest {
                name: b"e".to_vec(),
            })
            .await
            .expect("alice may read e/")
            .into_inner();
        let lease = {
            let mut l = LeaseClient::with_interceptor(ch.clone(), {
                let t = token("root", "rootpw").await;
                move |mut r: tonic::Request<()>| {
                    r.metadata_mut()
                        .insert("token", t.parse().expect("ascii token"));
                    Ok(r)
                }
            });
            l.lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
                .await
                .expect("grant")
                .into_inner()
                .id
        };
        let lead = root
            .campaign(CampaignRequest {
                name: b"e".to_vec(),
                lease,
                value: b"first".to_vec(),
            })
            .await
            .expect("campaign")
            .into_inner()
            .leader;
        assert_eq!(next(&mut observed).await, "first");
        // Alice loses the permission: the next change ends her stream with etcd's error.
        m.ok(&[
            "--user",
            "root:rootpw",
            "role",
            "revoke-permission",
            "watcher",
            "e/",
            "--prefix",
        ]);
        root.proclaim(ProclaimRequest {
            leader: lead,
            value: b"second".to_vec(),
        })
        .await
        .expect("proclaim");
        let end = tokio::time::timeout(Duration::from_secs(10), observed.message())
            .await
            .expect("observe sent nothing");
        let err = end.expect_err("the stream ends with an error");
        assert_eq!(err.message(), "etcdserver: permission denied");
    });
}
