//! Crash safety and bad input: kill -9 during writes loses nothing acknowledged; malformed
//! requests get etcd-style errors and leave the store unchanged.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_api::etcdserverpb::{kv_client::KvClient, PutRequest, RangeRequest};
use test_support::{require_tool, EtcdLite};

fn member() -> EtcdLite {
    EtcdLite::start(env!("CARGO_BIN_EXE_etcd-lite"), &[])
}

/// Writers acknowledged so far: key -> revision of the acknowledged put.
type Acked = Arc<Mutex<BTreeMap<Vec<u8>, i64>>>;

async fn write_until_killed(endpoint: String, writer: usize, acked: Acked) {
    let Ok(mut c) = KvClient::connect(format!("http://{endpoint}")).await else {
        return;
    };
    for i in 0..100_000u32 {
        let key = format!("crash/{writer}/{i:06}").into_bytes();
        let req = PutRequest {
            key: key.clone(),
            value: vec![b'v'; 64],
            ..Default::default()
        };
        match c.put(req).await {
            Ok(resp) => {
                let rev = resp.into_inner().header.map_or(0, |h| h.revision);
                acked.lock().expect("acked lock").insert(key, rev);
            }
            Err(_) => return,
        }
    }
}

#[test]
fn kill9_during_writes_loses_no_acknowledged_write() {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let mut m = member();
    let acked: Acked = Arc::default();
    for round in 0..3u64 {
        let writers: Vec<_> = (0..8)
            .map(|w| {
                rt.spawn(write_until_killed(
                    m.endpoint(),
                    w + round as usize * 8,
                    acked.clone(),
                ))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(700 + 300 * round));
        m.kill9();
        for w in writers {
            let _ = rt.block_on(w);
        }
        m.restart();
        let (kvs, rev) = rt.block_on(async {
            // Everything is read in one answer, which a fast machine's writes make larger than
            // tonic's default 4 MiB limit for a message.
            let mut c = KvClient::connect(format!("http://{}", m.endpoint()))
                .await
                .expect("connect after restart")
                .max_decoding_message_size(usize::MAX);
            // A restarted member replays its log and elects itself first; like etcd's clients,
            // retry while it says it is unavailable (bounded).
            let mut attempts = 0;
            let r = loop {
                let res = c
                    .range(RangeRequest {
                        key: vec![0],
                        range_end: vec![0],
                        ..Default::default()
                    })
                    .await;
                match res {
                    Err(e) if e.code() == tonic::Code::Unavailable && attempts < 10 => {
                        attempts += 1;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    other => break other.expect("range after restart").into_inner(),
                }
            };
            (r.kvs, r.header.map_or(0, |h| h.revision))
        });
        let stored: BTreeMap<Vec<u8>, i64> = kvs
            .iter()
            .map(|kv| (kv.key.clone(), kv.mod_revision))
            .collect();
        let acked = acked.lock().expect("acked lock");
        assert!(
            !acked.is_empty(),
            "round {round}: no write was acknowledged"
        );
        for (k, rev) in acked.iter() {
            assert_eq!(
                stored.get(k),
                Some(rev),
                "round {round}: acknowledged {} lost",
                String::from_utf8_lossy(k)
            );
        }
        // Every put made one revision: the revisions present are exactly 2..=current, no hole.
        let mut revs: Vec<i64> = stored.values().copied().collect();
        revs.sort_unstable();
        assert_eq!(
            revs,
            (2..=rev).collect::<Vec<_>>(),
            "round {round}: revision sequence has a hole"
        );
    }
}

/// Sends one raw gRPC frame with curl (HTTP/2 without TLS); returns the grpc-status trailer/header.
fn raw_grpc(m: &EtcdLite, method: &str, payload: &[u8]) -> String {
    let path = m.dir.path().join("frame.bin");
    let mut f = std::fs::File::create(&path).expect("frame file");
    f.write_all(&[0])
        .and_then(|_| f.write_all(&(payload.len() as u32).to_be_bytes()))
        .and_then(|_| f.write_all(payload))
        .expect("writing frame");
    let out = Command::new(require_tool("curl"))
        .args([
            "-sS",
            "-i",
            "--http2-prior-knowledge",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "--data-binary",
        ])
        .arg(format!("@{}", path.display()))
        .arg(m.url(method))
        .output()
        .expect("curl grpc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn malformed_protobuf_is_rejected_and_store_unchanged() {
    let m = member();
    m.ok(&["put", "keep", "me"]);
    let resp = raw_grpc(&m, "/etcdserverpb.KV/Put", &[0xff, 0xff, 0xff, 0xff, 0x0f]);
    let status = resp
        .lines()
        .find_map(|l| l.strip_prefix("grpc-status: "))
        .map(str::trim);
    assert_eq!(
        status,
        Some("13"),
        "malformed protobuf must fail as Internal, like etcd: {resp}"
    );
    // A well-formed frame through the same path works, proving the check is not vacuous.
    let ok = raw_grpc(
        &m,
        "/etcdserverpb.KV/Range",
        &[0x0a, 0x04, b'k', b'e', b'e', b'p'],
    );
    assert!(ok.contains("grpc-status: 0"), "{ok}");
    let j: serde_json::Value =
        serde_json::from_str(&m.ok(&["get", "keep", "-w", "json"])).expect("json");
    assert_eq!(j["header"]["revision"], 2);
    assert_eq!(m.ok(&["get", "", "--prefix", "--keys-only"]), "keep\n\n");
}

#[test]
fn invalid_ranges_and_empty_keys() {
    let m = member();
    m.ok(&["put", "b", "1"]);
    // An inverted range is empty, as in etcd.
    assert_eq!(m.ok(&["get", "c", "a"]), "");
    let (code, body, _) = m.curl(
        &["-XPOST", "-d", r#"{"key":"","range_end":""}"#],
        "/v3/kv/range",
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("etcdserver: key is not provided"));
    let (code, body, _) = m.curl(
        &["-XPOST", "-d", r#"{"key":"YQ==","limit":"x"}"#],
        "/v3/kv/range",
    );
    assert_eq!(code, 400, "{body}");
    let (code, body, _) = m.curl(
        &["-XPOST", "-d", r#"{"TTL":"9000000001"}"#],
        "/v3/lease/grant",
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("etcdserver: too large lease TTL"));
    let j: serde_json::Value =
        serde_json::from_str(&m.ok(&["get", "b", "-w", "json"])).expect("json");
    assert_eq!(j["header"]["revision"], 2);
}

/// A malformed `grpc-timeout` on a stream (a watcher never ends its request) is refused within
/// moments, not after the client gives up.
#[test]
fn a_stream_with_a_malformed_deadline_is_refused_without_waiting_for_its_end() {
    use etcd_api::etcdserverpb::{
        watch_client::WatchClient, watch_request::RequestUnion, WatchCreateRequest, WatchRequest,
    };
    let m = member();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let mut c = WatchClient::connect(format!("http://{}", m.endpoint()))
            .await
            .expect("connect");
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let create = WatchCreateRequest {
            key: b"a".to_vec(),
            ..Default::default()
        };
        tx.send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        })
        .await
        .expect("queue the create request");
        // `tx` stays alive: the request stream stays open, as a watcher's does.
        let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        req.metadata_mut()
            .insert("grpc-timeout", "soon".parse().expect("ascii"));
        let answer = tokio::time::timeout(Duration::from_secs(5), c.watch(req))
            .await
            .expect("answered while the request stream is still open");
        let status = answer.expect_err("a malformed grpc-timeout is refused");
        assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
        assert!(status.message().contains("grpc-timeout"), "{status:?}");
        drop(tx);
    });
}

/// A panic on the raft node's thread ends the process (a supervisor then restarts it), instead
/// of leaving a member that keeps its ports open and never answers a write again.
#[test]
fn a_panic_on_the_raft_thread_ends_the_process() {
    let mut m = EtcdLite::start_env(
        env!("CARGO_BIN_EXE_etcd-lite"),
        &[],
        &[("ETCD_LITE_FAILPOINTS", "panic-on-compact")],
    );
    m.ok(&["put", "k", "v"]);
    // The compaction is applied on the raft thread, which panics there.
    let _ = m.try_etcdctl(&["compact", "2", "--command-timeout", "3s"]);
    let status = m.wait_exit(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| !s.success()),
        "the member outlived its raft thread ({status:?}); log:\n{}",
        m.log()
    );
    assert!(
        m.log().contains("failpoint panic-on-compact"),
        "{}",
        m.log()
    );
}
