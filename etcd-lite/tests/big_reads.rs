//! Long Range answers: built from the stored records in one buffer for gRPC, streamed in
//! pieces by the JSON gateway, and refused with etcd's "too many requests" once the answers in
//! flight hold the read budget. Checked with etcdctl and curl, the clients users have.

use std::time::Duration;

use etcd_api::etcdserverpb::{
    kv_client::KvClient, request_op::Request, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use test_support::{eventually, EtcdLite};

/// The value stored under key `i`: sizes from 0 bytes to 2 KiB, bytes that are not text.
fn value(i: usize) -> Vec<u8> {
    (0..(i * 131) % 2048).map(|j| (i + j) as u8).collect()
}

fn key(i: usize) -> String {
    format!("big/{i:05}")
}

/// Puts keys `0..n` under `big/`, 100 to a transaction.
fn load(m: &EtcdLite, n: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut c = KvClient::connect(format!("http://{}", m.endpoint()))
            .await
            .expect("connect");
        for start in (0..n).step_by(100) {
            let success = (start..(start + 100).min(n))
                .map(|i| RequestOp {
                    request: Some(Request::RequestPut(PutRequest {
                        key: key(i).into_bytes(),
                        value: value(i),
                        ..Default::default()
                    })),
                })
                .collect();
            c.txn(TxnRequest {
                success,
                ..Default::default()
            })
            .await
            .expect("txn");
        }
    });
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:.300}"))
}

fn b64(s: &serde_json::Value) -> Vec<u8> {
    use base64::Engine;
    match s.as_str() {
        Some(s) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .expect("base64"),
        None => Vec::new(),
    }
}

fn b64s(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Checks that `kvs` are keys `from..from + kvs.len()` with their values (or none).
fn check_kvs(kvs: &serde_json::Value, from: usize, n: usize, values: bool) {
    let kvs = kvs.as_array().expect("kvs");
    assert_eq!(kvs.len(), n);
    for (j, kv) in kvs.iter().enumerate() {
        let i = from + j;
        assert_eq!(b64(&kv["key"]), key(i).into_bytes(), "key {i}");
        let want = if values { value(i) } else { Vec::new() };
        assert_eq!(b64(&kv["value"]), want, "value of key {i}");
    }
}

#[test]
fn long_answers_are_whole_over_grpc_and_the_gateway() {
    let m = EtcdLite::start(env!("CARGO_BIN_EXE_etcd-lite"), &[]);
    let n = 2500;
    load(&m, n);

    // gRPC (etcdctl): everything, a limit, keys only, a sort that reads values.
    let all = json(&m.ok(&["get", "big/", "--prefix", "-w", "json"]));
    assert_eq!(all["count"], n);
    check_kvs(&all["kvs"], 0, n, true);
    let limited = json(&m.ok(&["get", "big/", "--prefix", "--limit", "1200", "-w", "json"]));
    assert_eq!(limited["more"], true);
    assert_eq!(limited["count"], n);
    check_kvs(&limited["kvs"], 0, 1200, true);
    let keys = json(&m.ok(&["get", "big/", "--prefix", "--keys-only", "-w", "json"]));
    check_kvs(&keys["kvs"], 0, n, false);
    let by_key_desc = json(&m.ok(&[
        "get",
        "big/",
        "--prefix",
        "--sort-by",
        "KEY",
        "--order",
        "DESCEND",
        "--limit",
        "3",
        "-w",
        "json",
    ]));
    let last: Vec<Vec<u8>> = by_key_desc["kvs"]
        .as_array()
        .expect("kvs")
        .iter()
        .map(|kv| b64(&kv["key"]))
        .collect();
    assert_eq!(
        last,
        [key(n - 1), key(n - 2), key(n - 3)].map(String::into_bytes)
    );

    // The gateway streams answers this long; the bytes must still be one JSON answer.
    let body = |extra: &str| {
        format!(
            r#"{{"key":"{}","range_end":"{}"{extra}}}"#,
            b64s(b"big/"),
            b64s(b"big0")
        )
    };
    let (code, text, _) = m.curl(&["-XPOST", "-d", &body("")], "/v3/kv/range");
    assert_eq!(code, 200, "{text:.300}");
    let gw = json(&text);
    assert_eq!(gw["count"], n.to_string());
    assert_eq!(
        gw["header"]["revision"],
        all["header"]["revision"].to_string()
    );
    check_kvs(&gw["kvs"], 0, n, true);
    let (code, text, _) = m.curl(
        &["-XPOST", "-d", &body(r#","limit":"1500","keys_only":true"#)],
        "/v3/kv/range",
    );
    assert_eq!(code, 200, "{text:.300}");
    let gw = json(&text);
    assert_eq!(gw["more"], true);
    check_kvs(&gw["kvs"], 0, 1500, false);
    // A revision from before the load, and one compacted away: answers, then etcd's error.
    let (code, text, _) = m.curl(
        &["-XPOST", "-d", &body(r#","revision":"2""#)],
        "/v3/kv/range",
    );
    assert_eq!(code, 200, "{text}");
    check_kvs(&json(&text)["kvs"], 0, 100, true);
    m.ok(&["compact", "5"]);
    let (code, text, _) = m.curl(
        &["-XPOST", "-d", &body(r#","revision":"2""#)],
        "/v3/kv/range",
    );
    assert_eq!(code, 400, "{text}");
    assert!(
        text.contains("required revision has been compacted"),
        "{text}"
    );
    assert!(m
        .fails(&["get", "big/", "--prefix", "--rev", "2"])
        .contains("required revision has been compacted"));
}

/// An open call; dropping it cancels the call.
struct Held(tokio::task::JoinHandle<()>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A Range call whose client does not read the answer: HTTP/2 flow control (a 64 KiB window)
/// keeps the rest of the answer, and its share of the budget, on the server until the call
/// is dropped.
async fn unread_range(endpoint: String) -> Held {
    let req = RangeRequest {
        key: b"big/".to_vec(),
        range_end: b"big0".to_vec(),
        ..Default::default()
    }
    .encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(req.len() as u32).to_be_bytes());
    frame.extend_from_slice(&req);
    let tcp = tokio::net::TcpStream::connect(&endpoint)
        .await
        .expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(65535)
        .initial_connection_window_size(65535)
        .handshake(TokioIo::new(tcp))
        .await
        .expect("HTTP/2 handshake");
    let conn = tokio::spawn(conn);
    let request = hyper::Request::post(format!("http://{endpoint}/etcdserverpb.KV/Range"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(axum::body::Body::from(frame))
        .expect("request");
    let answer = send.send_request(request).await.expect("Range call");
    assert_eq!(answer.status(), 200);
    let conn = tokio::spawn(async move {
        let _keep = (send, answer);
        let _ = conn.await;
    });
    Held(conn)
}

#[test]
fn answers_past_the_read_budget_get_too_many_requests() {
    let m = EtcdLite::start(
        env!("CARGO_BIN_EXE_etcd-lite"),
        &["--max-inflight-read-bytes", "1048576"],
    );
    load(&m, 2000);
    m.ok(&["put", "small", "1"]);
    // Alone, an answer larger than the budget is served.
    let all = json(&m.ok(&["get", "big/", "--prefix", "-w", "json"]));
    assert_eq!(all["count"], 2000);

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let reader = rt.block_on(unread_range(m.endpoint()));
    let mut refused = String::new();
    eventually(Duration::from_secs(20), "a read refused", || {
        match m.try_etcdctl(&["get", "small"]) {
            Err(e) => {
                refused = e;
                true
            }
            Ok(_) => false,
        }
    });
    assert!(
        refused.contains("etcdserver: too many requests"),
        "{refused}"
    );
    let (_, metrics, _) = m.curl(&[], "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("etcd_lite_range_refused_total") && !l.ends_with(" 0")),
        "{metrics:.2000}"
    );
    // The gateway's streamed answers take no budget: they hold a piece at a time.
    let (code, text, _) = m.curl(&["-XPOST", "-d", r#"{"key":"c21hbGw="}"#], "/v3/kv/range");
    assert_eq!(code, 200, "{text}");

    // Once the slow reader goes, its budget comes back.
    drop(reader);
    eventually(Duration::from_secs(20), "reads served again", || {
        m.try_etcdctl(&["get", "small"])
            .is_ok_and(|out| out.contains('1'))
    });
}
