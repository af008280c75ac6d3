//! A randomized workload of concurrent put/get/compare-and-set/delete from several clients
//! against a 3-member cluster while members are killed (-9) and frozen (SIGSTOP: cut off from
//! everyone, then back), its history checked for linearizability (test_support::linearizability).
//!
//! The seed decides the workload and the fault schedule; a failing run prints it, and
//! `LINEARIZABILITY_SEED=<seed> cargo test --release -p etcd-lite --test linearizability`
//! replays them (thread timing still varies from run to run).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_api::etcdserverpb::{
    compare, kv_client::KvClient, request_op, Compare, DeleteRangeRequest, PutRequest,
    RangeRequest, RequestOp, TxnRequest,
};
use rand::{Rng, SeedableRng};
use test_support::linearizability::{check, Event, Op, Ret};
use test_support::{require_tool, start_cluster, EtcdLite};

const BIN: &str = env!("CARGO_BIN_EXE_etcd-lite");
const CLIENTS: usize = 6;
const KEYS: u64 = 10;
const OPS_PER_CLIENT: usize = 100;
const RUN_FOR: Duration = Duration::from_secs(10);

fn seed() -> u64 {
    match std::env::var("LINEARIZABILITY_SEED") {
        Ok(s) => s.parse().expect("LINEARIZABILITY_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    }
}

fn key(k: u64) -> Vec<u8> {
    format!("lin/{k}").into_bytes()
}

fn value_of(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

async fn client(id: usize, endpoint: String, seed: u64, start: Instant) -> Vec<Event> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (id as u64).wrapping_mul(0x9E37_79B9));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_millis(500))
        .connect_lazy();
    let mut kv = KvClient::new(channel);
    let now = || start.elapsed().as_micros() as u64;
    let mut history = Vec::new();
    let mut last_seen: Vec<Option<u64>> = vec![None; KEYS as usize];
    for n in 0..OPS_PER_CLIENT {
        if start.elapsed() > RUN_FOR {
            break;
        }
        let k = rng.gen_range(0..KEYS);
        let unique = (id as u64 + 1) * 1_000_000 + n as u64;
        let roll: u32 = rng.gen_range(0..100);
        let op = match roll {
            0..=39 => Op::Get,
            40..=69 => Op::Put(unique),
            70..=89 => Op::Cas {
                expect: last_seen[k as usize],
                new: unique,
            },
            _ => Op::Delete,
        };
        let call = now();
        let ret = match op {
            Op::Get => {
                let mut req = tonic::Request::new(RangeRequest {
                    key: key(k),
                    ..Default::default()
                });
                req.set_timeout(Duration::from_secs(1));
                match kv.range(req).await {
                    Ok(r) => {
                        let v = r
                            .into_inner()
                            .kvs
                            .first()
                            .and_then(|kv| value_of(&kv.value));
                        last_seen[k as usize] = v;
                        Ret::Value(v)
                    }
                    Err(_) => Ret::Unknown,
                }
            }
            Op::Put(v) => {
                let mut req = tonic::Request::new(PutRequest {
                    key: key(k),
                    value: v.to_string().into_bytes(),
                    ..Default::default()
                });
                req.set_timeout(Duration::from_secs(1));
                match kv.put(req).await {
                    Ok(_) => Ret::Ok,
                    Err(_) => Ret::Unknown,
                }
            }
            Op::Delete => {
                let mut req = tonic::Request::new(DeleteRangeRequest {
                    key: key(k),
                    ..Default::default()
                });
                req.set_timeout(Duration::from_secs(1));
                match kv.delete_range(req).await {
                    Ok(_) => Ret::Ok,
                    Err(_) => Ret::Unknown,
                }
            }
            Op::Cas { expect, new } => {
                let cmp = match expect {
                    Some(v) => Compare {
                        result: compare::CompareResult::Equal as i32,
                        target: compare::CompareTarget::Value as i32,
                        key: key(k),
                        target_union: Some(compare::TargetUnion::Value(v.to_string().into_bytes())),
                        ..Default::default()
                    },
                    None => Compare {
                        result: compare::CompareResult::Equal as i32,
                        target: compare::CompareTarget::Version as i32,
                        key: key(k),
                        target_union: Some(compare::TargetUnion::Version(0)),
                        ..Default::default()
                    },
                };
                let put = RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: key(k),
                        value: new.to_string().into_bytes(),
                        ..Default::default()
                    })),
                };
                let mut req = tonic::Request::new(TxnRequest {
                    compare: vec![cmp],
                    success: vec![put],
                    failure: vec![],
                });
                req.set_timeout(Duration::from_secs(1));
                match kv.txn(req).await {
                    Ok(r) => Ret::Cas(r.into_inner().succeeded),
                    Err(_) => Ret::Unknown,
                }
            }
        };
        let failed = ret == Ret::Unknown;
        history.push(Event {
            key: k,
            op,
            ret,
            call,
            done: now(),
        });
        if failed {
            // Back off while the cluster recovers, as a client would: fewer unanswered
            // operations keep the check tractable.
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
    history
}

fn leader(members: &[EtcdLite]) -> Option<usize> {
    for (i, m) in members.iter().enumerate() {
        let Ok(out) = m.try_etcdctl(&["endpoint", "status", "-w", "json"]) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) else {
            continue;
        };
        let st = &v[0]["Status"];
        if st["header"]["member_id"].as_u64().is_some() && st["header"]["member_id"] == st["leader"]
        {
            return Some(i);
        }
    }
    None
}

#[test]
fn histories_under_kills_and_pauses_are_linearizable() {
    require_tool("etcdctl");
    let seed = seed();
    eprintln!("linearizability seed: {seed} (LINEARIZABILITY_SEED={seed} replays it)");
    let members = Arc::new(Mutex::new(start_cluster(BIN, 3, &[])));
    let endpoints: Vec<String> = members
        .lock()
        .expect("members")
        .iter()
        .map(EtcdLite::endpoint)
        .collect();
    let start = Instant::now();

    // Faults, from the seed: kill -9 the leader and bring it back, or freeze it and thaw it.
    let faults = {
        let members = members.clone();
        std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut log = Vec::new();
            for _ in 0..4 {
                std::thread::sleep(Duration::from_millis(rng.gen_range(800..1600)));
                if start.elapsed() > RUN_FOR - Duration::from_secs(2) {
                    break;
                }
                let target = leader(&members.lock().expect("members")).unwrap_or(0);
                if rng.gen_bool(0.5) {
                    members.lock().expect("members")[target].kill9();
                    log.push(format!("kill -9 m{target}"));
                    std::thread::sleep(Duration::from_millis(rng.gen_range(300..1200)));
                    members.lock().expect("members")[target].respawn();
                } else {
                    let pid = members.lock().expect("members")[target].pid().to_string();
                    let _ = std::process::Command::new("kill")
                        .args(["-STOP", &pid])
                        .status();
                    log.push(format!("freeze m{target}"));
                    std::thread::sleep(Duration::from_millis(rng.gen_range(500..2000)));
                    let _ = std::process::Command::new("kill")
                        .args(["-CONT", &pid])
                        .status();
                }
            }
            log
        })
    };

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let history: Vec<Event> = rt.block_on(async {
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|i| {
                tokio::spawn(client(
                    i,
                    endpoints[i % endpoints.len()].clone(),
                    seed,
                    start,
                ))
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("client task"));
        }
        all
    });
    let fault_log = faults.join().expect("fault thread");
    let acknowledged = history.iter().filter(|e| e.ret != Ret::Unknown).count();
    eprintln!(
        "{} operations ({acknowledged} answered), faults: {}",
        history.len(),
        fault_log.join(", ")
    );
    assert!(
        acknowledged > 100,
        "too few operations answered to mean anything: {acknowledged}"
    );
    assert!(!fault_log.is_empty(), "no fault was injected");
    if let Err(e) = check(&history) {
        panic!("history is not linearizable (seed {seed}; replay with LINEARIZABILITY_SEED={seed}):\n{e}");
    }
}
