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
use test_support::netcluster::NetCluster;
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

/// How long a set of keys is used before the clients move on to fresh ones: each key's history
/// stays short, so its check stays tractable however long the run.
const EPOCH: Duration = Duration::from_secs(5);

fn key(k: u64) -> Vec<u8> {
    format!("lin/{k}").into_bytes()
}

fn value_of(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// One client's closed loop of random operations on the current epoch's keys, until `run_for`
/// has passed since `start` or it made `max_ops` operations.
async fn client(
    id: usize,
    endpoint: String,
    seed: u64,
    start: Instant,
    run_for: Duration,
    max_ops: usize,
) -> Vec<Event> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (id as u64).wrapping_mul(0x9E37_79B9));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{endpoint}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_millis(500))
        .connect_lazy();
    let mut kv = KvClient::new(channel);
    let now = || start.elapsed().as_micros() as u64;
    let mut history = Vec::new();
    let mut last_seen: std::collections::HashMap<u64, Option<u64>> = Default::default();
    for n in 0..max_ops {
        if start.elapsed() > run_for {
            break;
        }
        let epoch = (start.elapsed().as_millis() / EPOCH.as_millis()) as u64;
        let k = epoch * KEYS + rng.gen_range(0..KEYS);
        let unique = (id as u64 + 1) * 1_000_000 + n as u64;
        let roll: u32 = rng.gen_range(0..100);
        let op = match roll {
            0..=39 => Op::Get,
            40..=69 => Op::Put(unique),
            70..=89 => Op::Cas {
                expect: last_seen.get(&k).copied().flatten(),
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
                        last_seen.insert(k, v);
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
                    RUN_FOR,
                    OPS_PER_CLIENT,
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

/// The chaos run's length: `CHAOS_MINUTES` (fractions allowed), 45 s by default (`make test`);
/// `make chaos MINUTES=30` runs long.
fn chaos_length() -> Duration {
    match std::env::var("CHAOS_MINUTES") {
        Ok(m) if !m.is_empty() => {
            Duration::from_secs_f64(m.parse::<f64>().expect("CHAOS_MINUTES is a number") * 60.0)
        }
        _ => Duration::from_secs(45),
    }
}

/// What the fault schedule did, and when each member was out (kill -9 until it serves again,
/// frozen, cut off, or out of disk), in microseconds since the start.
#[derive(Default)]
struct FaultLog {
    done: Vec<String>,
    out: Vec<(usize, u64, u64)>,
}

impl FaultLog {
    fn record(&mut self, what: String, member: usize, from: u64, to: u64) {
        self.done.push(what);
        self.out.push((member, from, to));
    }

    /// The times during which at least two of three members were out (no majority).
    fn no_majority(&self) -> Vec<(u64, u64)> {
        let mut points: Vec<(u64, i32)> = Vec::new();
        for &(_, a, b) in &self.out {
            points.push((a, 1));
            points.push((b, -1));
        }
        points.sort();
        let (mut depth, mut since, mut spans) = (0, 0, Vec::new());
        for (t, d) in points {
            if depth < 2 && depth + d >= 2 {
                since = t;
            } else if depth >= 2 && depth + d < 2 {
                spans.push((since, t));
            }
            depth += d;
        }
        spans
    }

    /// The faults that overlap `[from, to]` (µs), with their times in seconds: what to read
    /// first when a window without answered writes was long.
    fn around(&self, from: u64, to: u64) -> String {
        self.done
            .iter()
            .zip(&self.out)
            .filter(|(_, &(_, a, b))| a <= to && b >= from)
            .map(|(what, &(_, a, b))| {
                format!(
                    "{what} [{:.2} s to {:.2} s]",
                    a as f64 / 1e6,
                    b as f64 / 1e6
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The longest time in `[from, to]` with no answered write while a majority was up: gaps
/// between answered writes, less the parts of them without a majority. (length, start), in µs.
fn longest_unavailability(history: &[Event], faults: &FaultLog, from: u64, to: u64) -> (u64, u64) {
    let mut done: Vec<u64> = history
        .iter()
        .filter(|e| !matches!(e.op, Op::Get) && e.ret != Ret::Unknown)
        .map(|e| e.done)
        .collect();
    done.push(from);
    done.push(to);
    done.sort_unstable();
    let no_majority = faults.no_majority();
    let mut worst = (0, 0);
    for w in done.windows(2) {
        let (a, b) = (w[0], w[1]);
        let excused: u64 = no_majority
            .iter()
            .map(|&(x, y)| y.min(b).saturating_sub(x.max(a)))
            .sum();
        let gap = (b - a).saturating_sub(excused);
        if gap > worst.0 {
            worst = (gap, a);
        }
    }
    worst
}

/// Sleeps a random time in `range` (milliseconds).
fn pause(rng: &mut rand::rngs::StdRng, range: std::ops::Range<u64>) {
    std::thread::sleep(Duration::from_millis(rng.gen_range(range)));
}

/// Starts member `i` again and waits until it answers (the end of its outage).
fn bring_back(c: &mut NetCluster, i: usize) {
    c.spawn(i);
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.status(i).is_none() {
        assert!(
            c.running(i),
            "m{i} exited on restart; its log:\n{}",
            c.log(i)
        );
        assert!(
            Instant::now() < deadline,
            "m{i} did not serve within 30 s of its restart; its log:\n{}",
            c.log(i)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A steady client load against 3 members in network namespaces while a seeded schedule
/// injects faults back to back: kill -9 of the leader or of a follower with fast and slow
/// restarts, a restart followed at once by the kill of the new leader, SIGSTOP, a member cut
/// off the network, a member whose disk fills up. At the end: the history is linearizable,
/// every replica has the same revision and HashKV, and the longest time without an answered
/// write while a majority was up is printed.
///
/// `CHAOS_SEED=<seed> CHAOS_MINUTES=<m> cargo test --release -p etcd-lite --test
/// linearizability chaos -- --nocapture` (or `make chaos SEED=.. MINUTES=..`) replays a seed's
/// schedule or runs long.
#[test]
fn chaos_keeps_histories_linearizable_and_replicas_identical() {
    use nix::sched::{setns, CloneFlags};
    let seed = match std::env::var("CHAOS_SEED") {
        Ok(s) if !s.is_empty() => s.parse().expect("CHAOS_SEED is a number"),
        _ => seed(),
    };
    let length = chaos_length();
    eprintln!("chaos seed: {seed}, {length:?} (CHAOS_SEED={seed} replays the schedule)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut c = NetCluster::network(BIN, 3, 218);
    let disk_member = rng.gen_range(0..3);
    c.small_disk(disk_member, 1 << 30);
    for i in 0..3 {
        c.spawn(i);
    }
    c.leader_index(Duration::from_secs(20));
    let endpoints: Vec<String> = c
        .members
        .iter()
        .map(|m| format!("{}:2379", m.addr))
        .collect();

    let start = Instant::now();
    let now = move || start.elapsed().as_micros() as u64;
    // The clients live in the hub's network namespace, where every member is reachable.
    let hub = std::fs::File::open(c.hub_path()).expect("opening the hub namespace");
    let clients = std::thread::spawn(move || {
        setns(&hub, CloneFlags::CLONE_NEWNET).expect("joining the hub namespace");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let tasks: Vec<_> = (0..CLIENTS)
                .map(|i| {
                    tokio::spawn(client(
                        i,
                        endpoints[i % endpoints.len()].clone(),
                        seed,
                        start,
                        length,
                        usize::MAX,
                    ))
                })
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.expect("client task"));
            }
            all
        })
    });

    let mut faults = FaultLog::default();
    let mut compacted = Instant::now();
    let mut compactions = 0;
    while start.elapsed() + Duration::from_secs(3) < length {
        pause(&mut rng, 300..1500);
        // Compact as a real cluster does, so that a long run's store (and the small disk)
        // does not fill up with history; the clients only read the newest values.
        if compacted.elapsed() > Duration::from_secs(10) {
            if let Some(rev) = (0..3).find_map(|i| c.revision(i)) {
                let to = rev.saturating_sub(1000).max(1).to_string();
                if c.etcdctl(&[0, 1, 2], &["compact", &to]).status.success() {
                    compactions += 1;
                }
            }
            compacted = Instant::now();
        }
        let leader = c.leader_now();
        let any = rng.gen_range(0..3);
        match rng.gen_range(0..6) {
            0 => {
                let i = leader.unwrap_or(any);
                let from = now();
                c.kill9(i);
                pause(&mut rng, 0..1500);
                bring_back(&mut c, i);
                faults.record(
                    format!("kill -9 m{i} (leader: {})", leader == Some(i)),
                    i,
                    from,
                    now(),
                );
            }
            1 => {
                let i = (leader.unwrap_or(any) + 1 + rng.gen_range(0..2)) % 3;
                let from = now();
                c.kill9(i);
                // A restart that takes seconds (a slow disk, a supervisor's back-off).
                pause(&mut rng, 1000..4000);
                bring_back(&mut c, i);
                faults.record(format!("kill -9 m{i}, slow restart"), i, from, now());
            }
            2 => {
                // The failover benchmark's round: the restarted member must take part in the
                // very next election.
                let i = leader.unwrap_or(any);
                let from = now();
                c.kill9(i);
                bring_back(&mut c, i);
                faults.record(format!("kill -9 m{i}, restart"), i, from, now());
                if let Some(j) = c.leader_now().filter(|j| *j != i) {
                    let from = now();
                    c.kill9(j);
                    pause(&mut rng, 0..1000);
                    bring_back(&mut c, j);
                    faults.record(format!("then kill -9 the new leader m{j}"), j, from, now());
                }
            }
            3 => {
                let from = now();
                c.signal(any, "STOP");
                pause(&mut rng, 500..3000);
                c.signal(any, "CONT");
                faults.record(format!("SIGSTOP m{any}"), any, from, now());
            }
            4 => {
                let from = now();
                c.cut(any);
                pause(&mut rng, 1000..3000);
                c.heal(any);
                faults.record(format!("partition m{any}"), any, from, now());
            }
            _ => {
                let i = disk_member;
                let from = now();
                c.fill_disk(i);
                pause(&mut rng, 500..2000);
                c.free_disk(i);
                // A member may stop on a failed write (it cannot know what is durable); it is
                // restarted like any crashed member.
                let died = !c.running(i);
                if died {
                    bring_back(&mut c, i);
                }
                faults.record(
                    format!("disk of m{i} full (stopped: {died})"),
                    i,
                    from,
                    now(),
                );
            }
        }
    }
    let history = clients.join().expect("client thread");
    // The clients invoke nothing after `length`.
    let end = (length.as_micros() as u64).min(now());

    // Every replica ends identical: same revision, same hash of the whole key space.
    let mut views = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        views = (0..3).map(|i| c.hashkv(i)).collect();
        if views.iter().all(|v| v.is_some() && *v == views[0]) {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let answered = history.iter().filter(|e| e.ret != Ret::Unknown).count();
    let (gap, at) = longest_unavailability(&history, &faults, 0, end);
    eprintln!(
        "chaos: {} operations ({answered} answered), {} faults, {compactions} compactions, \
         longest time without an answered write while a majority was up: {:.2} s (from {:.1} \
         s); replicas (hash, revision): {views:?}\nfaults around it: {}\nfaults: {}",
        history.len(),
        faults.done.len(),
        gap as f64 / 1e6,
        at as f64 / 1e6,
        faults.around(at.saturating_sub(2_000_000), at + gap + 1_000_000),
        faults.done.join(", ")
    );
    assert!(
        views.iter().all(|v| v.is_some() && *v == views[0]),
        "replicas diverged (seed {seed}): {views:?}\nstatus:\n{}\nlogs:\n{}\n{}\n{}",
        (0..3)
            .map(|i| String::from_utf8_lossy(
                &c.etcdctl_inside(i, &["endpoint", "status", "-w", "json"])
                    .stdout
            )
            .into_owned())
            .collect::<Vec<_>>()
            .join(""),
        c.log(0),
        c.log(1),
        c.log(2)
    );
    assert!(
        answered > 200,
        "too few operations answered to mean anything: {answered}"
    );
    assert!(faults.done.len() >= 3, "too few faults: {:?}", faults.done);
    if let Err(e) = check(&history) {
        panic!("history is not linearizable (seed {seed}; replay with CHAOS_SEED={seed}):\n{e}");
    }
}
