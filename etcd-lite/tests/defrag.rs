//! `etcdctl defrag` gives back the space of deleted and compacted records, while writes go on
//! (etcd stops the whole member while it defragments: etcd issue #9222).

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use test_support::EtcdLite;

fn count(m: &EtcdLite, prefix: &str) -> usize {
    m.ok(&["get", prefix, "--prefix", "--keys-only"])
        .lines()
        .filter(|l| !l.is_empty())
        .count()
}

#[test]
fn defrag_gives_back_space_while_writes_go_on() {
    // The failpoint holds the defragmentation for 2 s between its copy and the switch, so
    // there is time to see writes complete while it runs.
    let mut m = EtcdLite::start_env(
        env!("CARGO_BIN_EXE_etcd-lite"),
        &[],
        &[("ETCD_LITE_FAILPOINTS", "slow-defragment")],
    );
    let load = Command::new(env!("CARGO_BIN_EXE_etcd-bench"))
        .args(["load", "--endpoints", &m.endpoint(), "--clients", "32"])
        .args(["--total", "100000", "--val-size", "256", "put"])
        .output()
        .expect("etcd-bench");
    assert!(
        load.status.success(),
        "{}",
        String::from_utf8_lossy(&load.stderr)
    );
    // 90% deleted, then compacted.
    assert_eq!(
        m.ok(&["del", "bench/00000000", "bench/00090000"]).trim(),
        "90000"
    );
    let rev = m.ok(&["put", "marker", "x", "-w", "json"]);
    let rev: serde_json::Value = serde_json::from_str(&rev).expect("json");
    let rev = rev["header"]["revision"].as_i64().expect("revision");
    // A debug build takes a while over 90,000 removals.
    m.ok(&["compact", &rev.to_string(), "--command-timeout", "120s"]);
    let data = m.data_dir();
    let before = etcd_lite::durable::dir_size(&data);

    let stop = AtomicBool::new(false);
    let (defrag_start, defrag_end, writes) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut done = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                m.ok(&["put", &format!("during/{i:05}"), "v"]);
                done.push((t0, Instant::now()));
                i += 1;
            }
            done
        });
        std::thread::sleep(Duration::from_millis(300));
        let start = Instant::now();
        let out = m.ok(&["defrag"]);
        let end = Instant::now();
        assert!(out.contains("Finished defragmenting"), "{out}");
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        (start, end, writer.join().expect("writer"))
    });
    assert!(defrag_end - defrag_start >= Duration::from_secs(2));
    // Writes were answered while the defragmentation ran, none held for its duration.
    let during: Vec<Duration> = writes
        .iter()
        .filter(|(t0, t1)| *t0 >= defrag_start && *t1 <= defrag_end)
        .map(|(t0, t1)| *t1 - *t0)
        .collect();
    assert!(
        during.len() >= 5,
        "only {} writes completed during a {:?} defragmentation",
        during.len(),
        defrag_end - defrag_start
    );
    let longest = writes
        .iter()
        .map(|(t0, t1)| *t1 - *t0)
        .max()
        .expect("writes");
    assert!(
        longest < Duration::from_secs(1),
        "a write waited {longest:?}: the defragmentation blocked it"
    );
    let after = etcd_lite::durable::dir_size(&data);
    eprintln!(
        "defrag: {before} -> {after} bytes on disk in {:?}; {} writes answered meanwhile, the \
         longest write took {longest:?}",
        defrag_end - defrag_start,
        during.len()
    );
    assert!(
        after * 2 <= before,
        "the data directory went from {before} to {after} bytes"
    );
    // Nothing is lost, before or after a restart (the store now lives in the copy).
    for round in 0..2 {
        assert_eq!(count(&m, "bench/"), 10_000, "round {round}");
        assert_eq!(count(&m, "during/"), writes.len(), "round {round}");
        assert_eq!(
            m.ok(&["get", "bench/00095000", "--print-value-only"])
                .trim()
                .len(),
            256
        );
        m.restart();
    }
    // The status reports the smaller size, which the quota counts against.
    let status: serde_json::Value =
        serde_json::from_str(&m.ok(&["endpoint", "status", "-w", "json"])).expect("json");
    let db_size = status[0]["Status"]["dbSize"].as_u64().expect("dbSize");
    assert!(db_size <= after * 2, "dbSize {db_size}, on disk {after}");
}
