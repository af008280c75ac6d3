//! curl against every REST route: the v2 keys API, the v3 JSON gateway, health/version/metrics.

use std::process::{Command, Stdio};
use std::time::Duration;

use test_support::{eventually, require_tool, EtcdLite};

fn member() -> EtcdLite {
    EtcdLite::start(env!("CARGO_BIN_EXE_etcd-lite"), &[])
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("invalid JSON ({e}): {s}"))
}

fn b64(s: &str) -> String {
    use std::fmt::Write;
    // Small local encoder keeps the tests free of extra dependencies.
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                let _ = write!(out, "{}", T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn v2_set_get_delete_and_directories() {
    let m = member();
    let (code, body, hdrs) = m.curl(&["-XPUT", "-d", "value=hello"], "/v2/keys/message");
    assert_eq!(code, 201, "{body}");
    let j = json(&body);
    assert_eq!(j["action"], "set");
    assert_eq!(j["node"]["key"], "/message");
    assert_eq!(j["node"]["value"], "hello");
    let idx = j["node"]["modifiedIndex"].as_i64().expect("modifiedIndex");
    assert_eq!(
        header(&hdrs, "X-Etcd-Index"),
        Some(idx.to_string().as_str())
    );
    // Replacing answers 200 with the previous node.
    let (code, body, _) = m.curl(&["-XPUT", "-d", "value=world"], "/v2/keys/message");
    assert_eq!(code, 200);
    assert_eq!(json(&body)["prevNode"]["value"], "hello");
    let (code, body, _) = m.curl(&[], "/v2/keys/message");
    assert_eq!(code, 200);
    assert_eq!(json(&body)["action"], "get");
    assert_eq!(json(&body)["node"]["value"], "world");
    // Nested keys make directories; recursive and sorted listings.
    m.curl(&["-XPUT", "-d", "value=2"], "/v2/keys/dir/b");
    m.curl(&["-XPUT", "-d", "value=1"], "/v2/keys/dir/a");
    m.curl(&["-XPUT", "-d", "value=3"], "/v2/keys/dir/sub/c");
    let (_, body, _) = m.curl(&[], "/v2/keys/dir?sorted=true");
    let j = json(&body);
    assert_eq!(j["node"]["dir"], true);
    let keys: Vec<&str> = j["node"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["key"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(keys, ["/dir/a", "/dir/b", "/dir/sub"]);
    assert!(
        j["node"]["nodes"][2].get("nodes").is_none(),
        "not recursive"
    );
    let (_, body, _) = m.curl(&[], "/v2/keys/dir?recursive=true&sorted=true");
    assert_eq!(json(&body)["node"]["nodes"][2]["nodes"][0]["value"], "3");
    // Empty directories exist explicitly.
    let (code, body, _) = m.curl(&["-XPUT", "-d", "dir=true"], "/v2/keys/empty");
    assert_eq!(code, 201, "{body}");
    assert_eq!(json(&m.curl(&[], "/v2/keys/empty").1)["node"]["dir"], true);
    // Deleting: a file; a directory needs dir=true (empty) or recursive=true.
    let (code, body, _) = m.curl(&["-XDELETE"], "/v2/keys/dir");
    assert_eq!((code, json(&body)["errorCode"].as_i64()), (403, Some(102)));
    let (code, body, _) = m.curl(&["-XDELETE"], "/v2/keys/dir?dir=true");
    assert_eq!((code, json(&body)["errorCode"].as_i64()), (403, Some(108)));
    let (code, _, _) = m.curl(&["-XDELETE"], "/v2/keys/dir?recursive=true");
    assert_eq!(code, 200);
    assert_eq!(m.curl(&[], "/v2/keys/dir/a").0, 404);
    let (code, body, _) = m.curl(&["-XDELETE"], "/v2/keys/message");
    assert_eq!(code, 200);
    let j = json(&body);
    assert_eq!(
        (j["action"].as_str(), j["prevNode"]["value"].as_str()),
        (Some("delete"), Some("world"))
    );
    // Missing keys: etcd's error body.
    let (code, body, _) = m.curl(&[], "/v2/keys/nothing");
    let j = json(&body);
    assert_eq!(code, 404);
    assert_eq!(
        (
            j["errorCode"].as_i64(),
            j["message"].as_str(),
            j["cause"].as_str()
        ),
        (Some(100), Some("Key not found"), Some("/nothing"))
    );
    assert!(j["index"].as_i64().is_some());
    // A file can't hold children; the root is read-only.
    m.curl(&["-XPUT", "-d", "value=f"], "/v2/keys/file");
    let (code, body, _) = m.curl(&["-XPUT", "-d", "value=x"], "/v2/keys/file/child");
    assert_eq!((code, json(&body)["errorCode"].as_i64()), (403, Some(104)));
    let (code, body, _) = m.curl(&["-XDELETE"], "/v2/keys/");
    assert_eq!((code, json(&body)["errorCode"].as_i64()), (403, Some(107)));
}

#[test]
fn v2_compare_and_swap_and_delete() {
    let m = member();
    let (code, body, _) = m.curl(
        &["-XPUT", "-d", "value=one"],
        "/v2/keys/cas?prevExist=false",
    );
    assert_eq!(
        (code, json(&body)["action"].as_str()),
        (201, Some("create"))
    );
    let (code, body, _) = m.curl(
        &["-XPUT", "-d", "value=two"],
        "/v2/keys/cas?prevExist=false",
    );
    assert_eq!((code, json(&body)["errorCode"].as_i64()), (412, Some(105)));
    let (code, body, _) = m.curl(
        &["-XPUT", "-d", "value=two"],
        "/v2/keys/cas?prevValue=wrong",
    );
    let j = json(&body);
    assert_eq!(
        (code, j["errorCode"].as_i64(), j["message"].as_str()),
        (412, Some(101), Some("Compare failed"))
    );
    assert_eq!(j["cause"], "[wrong != one]");
    let (_, body, _) = m.curl(&[], "/v2/keys/cas");
    let idx = json(&body)["node"]["modifiedIndex"]
        .as_i64()
        .expect("index");
    let (code, body, _) = m.curl(
        &["-XPUT", "-d", "value=two"],
        &format!("/v2/keys/cas?prevIndex={}", idx + 100),
    );
    assert_eq!(
        (code, json(&body)["cause"].as_str().map(String::from)),
        (412, Some(format!("[{} != {}]", idx + 100, idx)))
    );
    let (code, body, _) = m.curl(
        &["-XPUT", "-d", "value=two"],
        &format!("/v2/keys/cas?prevValue=one&prevIndex={idx}"),
    );
    assert_eq!(
        (code, json(&body)["action"].as_str()),
        (200, Some("compareAndSwap"))
    );
    let (code, body, _) = m.curl(&["-XPUT", "-d", "value=3"], "/v2/keys/cas?prevExist=true");
    assert_eq!(
        (code, json(&body)["action"].as_str()),
        (200, Some("update"))
    );
    let (code, body, _) = m.curl(
        &["-XPUT", "-d", "value=3"],
        "/v2/keys/missing?prevExist=true",
    );
    assert_eq!((code, json(&body)["errorCode"].as_i64()), (404, Some(100)));
    let (code, _, _) = m.curl(&["-XDELETE"], "/v2/keys/cas?prevValue=nope");
    assert_eq!(code, 412);
    let (code, body, _) = m.curl(&["-XDELETE"], "/v2/keys/cas?prevValue=3");
    assert_eq!(
        (code, json(&body)["action"].as_str()),
        (200, Some("compareAndDelete"))
    );
    // Bad form values.
    let (code, body, _) = m.curl(&["-XPUT", "-d", "value=x&ttl=abc"], "/v2/keys/bad");
    assert_eq!((code, json(&body)["errorCode"].as_i64()), (400, Some(202)));
    let (code, body, _) = m.curl(&["-XPUT", "-d", "value=x"], "/v2/keys/bad?prevIndex=x");
    assert_eq!((code, json(&body)["errorCode"].as_i64()), (400, Some(203)));
    let (code, body, _) = m.curl(&["-XPUT", "-d", "value=x"], "/v2/keys/bad?prevExist=maybe");
    assert_eq!((code, json(&body)["errorCode"].as_i64()), (400, Some(209)));
    assert_eq!(
        m.curl(&[], "/v2/keys/bad").0,
        404,
        "failed writes change nothing"
    );
}

#[test]
fn v2_in_order_keys_ttl_and_wait() {
    let m = member();
    let (c1, b1, _) = m.curl(&["-XPOST", "-d", "value=job1"], "/v2/keys/queue");
    let (c2, b2, _) = m.curl(&["-XPOST", "-d", "value=job2"], "/v2/keys/queue");
    assert_eq!((c1, c2), (201, 201));
    let (k1, k2) = (
        json(&b1)["node"]["key"].as_str().map(String::from),
        json(&b2)["node"]["key"].as_str().map(String::from),
    );
    assert!(k1 < k2, "{k1:?} < {k2:?}");
    assert_eq!(k1.as_deref().map(|k| k.len()), Some("/queue/".len() + 20));
    assert_eq!(json(&b1)["action"], "create");
    // TTL: reported, then the key expires.
    let (code, body, _) = m.curl(&["-XPUT", "-d", "value=tmp&ttl=2"], "/v2/keys/tmp");
    assert_eq!(code, 201);
    let j = json(&body);
    assert_eq!(j["node"]["ttl"], 2);
    assert!(j["node"]["expiration"]
        .as_str()
        .is_some_and(|e| e.ends_with('Z')));
    eventually(Duration::from_secs(10), "v2 key with ttl to expire", || {
        m.curl(&[], "/v2/keys/tmp").0 == 404
    });
    // wait=true long-polls until the next change.
    let j = live_wait(&m, "/v2/keys/watched", "changed");
    assert_eq!(
        (j["action"].as_str(), j["node"]["value"].as_str()),
        (Some("set"), Some("changed"))
    );
    // waitIndex reads history: the first change at or after the index.
    let idx = j["node"]["modifiedIndex"].as_i64().expect("index");
    m.curl(&["-XPUT", "-d", "value=again"], "/v2/keys/watched");
    let (_, body, _) = m.curl(&[], &format!("/v2/keys/watched?wait=true&waitIndex={idx}"));
    assert_eq!(json(&body)["node"]["value"], "changed");
    let (_, body, _) = m.curl(
        &[],
        &format!("/v2/keys/watched?wait=true&waitIndex={}", idx + 1),
    );
    assert_eq!(json(&body)["node"]["value"], "again");
    // A live wait on a replaced key reports the node it replaced.
    let j = live_wait(&m, "/v2/keys/watched", "third");
    assert_eq!(
        (j["node"]["value"].as_str(), j["prevNode"]["value"].as_str()),
        (Some("third"), Some("again"))
    );
    // Recursive wait sees changes below a directory.
    let (_, body, _) = m.curl(&[], "/v2/keys/queue?wait=true&recursive=true&waitIndex=1");
    assert_eq!(json(&body)["node"]["value"], "job1");
}

/// Long-polls `path` with wait=true, sets it to `value` meanwhile, and returns the answer.
fn live_wait(m: &EtcdLite, path: &str, value: &str) -> serde_json::Value {
    let waiter = Command::new(require_tool("curl"))
        .args([
            "-sS",
            "--max-time",
            "20",
            &m.url(&format!("{path}?wait=true")),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl wait");
    std::thread::sleep(Duration::from_millis(500));
    m.curl(&["-XPUT", "-d", &format!("value={value}")], path);
    let out = waiter.wait_with_output().expect("curl wait output");
    json(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn v2_and_v3_see_one_store() {
    let m = member();
    m.curl(&["-XPUT", "-d", "value=from-v2"], "/v2/keys/shared/a");
    assert_eq!(
        m.ok(&["get", "shared/a", "--print-value-only"]),
        "from-v2\n"
    );
    m.ok(&["put", "shared/b", "from-v3"]);
    let (_, body, _) = m.curl(&[], "/v2/keys/shared/b");
    assert_eq!(json(&body)["node"]["value"], "from-v3");
    let rev = json(&m.ok(&["get", "shared/b", "-w", "json"]))["kvs"][0]["mod_revision"].as_i64();
    assert_eq!(json(&body)["node"]["modifiedIndex"].as_i64(), rev);
}

#[test]
fn v3_gateway_kv_lease_and_errors() {
    let m = member();
    let post = |path: &str, body: &str| {
        let (code, out, _) = m.curl(&["-XPOST", "-d", body], path);
        (code, json(&out))
    };
    let (code, j) = post(
        "/v3/kv/put",
        &format!(r#"{{"key":"{}","value":"{}"}}"#, b64("foo"), b64("bar")),
    );
    assert_eq!(code, 200, "{j}");
    assert_eq!(j["header"]["revision"], "2");
    let (_, j) = post("/v3/kv/range", &format!(r#"{{"key":"{}"}}"#, b64("foo")));
    assert_eq!(
        (j["kvs"][0]["value"].as_str(), j["count"].as_str()),
        (Some(b64("bar").as_str()), Some("1"))
    );
    let (_, j) = post(
        "/v3/kv/range",
        &format!(
            r#"{{"key":"{}","range_end":"AA==","count_only":true}}"#,
            b64("a")
        ),
    );
    assert_eq!(j["count"], "1");
    assert!(j.get("kvs").is_none());
    let txn = format!(
        r#"{{"compare":[{{"target":"VALUE","key":"{k}","value":"{v}"}}],"success":[{{"request_put":{{"key":"{k}","value":"{n}"}}}}]}}"#,
        k = b64("foo"),
        v = b64("bar"),
        n = b64("baz")
    );
    let (_, j) = post("/v3/kv/txn", &txn);
    assert_eq!(j["succeeded"], true);
    let (_, j) = post("/v3/kv/txn", &txn);
    assert!(
        j.get("succeeded").is_none(),
        "false is omitted like etcd's gateway: {j}"
    );
    let (_, j) = post(
        "/v3/kv/deleterange",
        &format!(r#"{{"key":"{}","prev_kv":true}}"#, b64("foo")),
    );
    assert_eq!(
        (j["deleted"].as_str(), j["prev_kvs"][0]["value"].as_str()),
        (Some("1"), Some(b64("baz").as_str()))
    );
    let (code, _) = post("/v3/kv/compaction", r#"{"revision":"3"}"#);
    assert_eq!(code, 200);
    // Leases.
    let (_, j) = post("/v3/lease/grant", r#"{"TTL":"60"}"#);
    let id = j["ID"].as_str().expect("lease ID").to_string();
    assert_eq!(j["TTL"], "60");
    post(
        "/v3/kv/put",
        &format!(
            r#"{{"key":"{}","value":"{}","lease":"{id}"}}"#,
            b64("l"),
            b64("v")
        ),
    );
    let (_, j) = post(
        "/v3/lease/timetolive",
        &format!(r#"{{"ID":"{id}","keys":true}}"#),
    );
    assert_eq!(
        (j["grantedTTL"].as_str(), j["keys"][0].as_str()),
        (Some("60"), Some(b64("l").as_str()))
    );
    let (_, j) = post("/v3/lease/leases", "{}");
    assert_eq!(j["leases"][0]["ID"].as_str(), Some(id.as_str()));
    let (_, j) = post("/v3/lease/keepalive", &format!(r#"{{"ID":"{id}"}}"#));
    assert_eq!(j["result"]["TTL"], "60");
    let (code, _) = post("/v3/lease/revoke", &format!(r#"{{"ID":"{id}"}}"#));
    assert_eq!(code, 200);
    let (_, j) = post("/v3/kv/range", &format!(r#"{{"key":"{}"}}"#, b64("l")));
    assert!(j.get("kvs").is_none());
    let (_, j) = post("/v3/maintenance/status", "{}");
    assert_eq!(j["version"], "3.5.0");
    // Fields the gateway does not know are ignored, as etcd's gateway ignores them.
    let (code, j) = post("/v3/maintenance/status", r#"{"newer_field":1}"#);
    assert_eq!((code, &j["version"]), (200, &serde_json::json!("3.5.0")));
    let (code, j) = post(
        "/v3/kv/range",
        &format!(r#"{{"key":"{}","not_in_3_4":true}}"#, b64("l")),
    );
    assert_eq!(code, 200, "{j}");
    let (_, j) = post("/v3/cluster/member/list", "{}");
    assert_eq!(j["members"][0]["name"], "default");
    // Errors: etcd's gateway body, the store unchanged.
    let before = post("/v3/kv/range", r#"{"key":"AA==","range_end":"AA=="}"#).1["header"]
        ["revision"]
        .clone();
    let (code, j) = post("/v3/kv/put", r#"{"key":"not base64!!","value":"eA=="}"#);
    assert_eq!((code, j["code"].as_i64()), (400, Some(3)), "{j}");
    let (code, j) = post("/v3/kv/put", r#"{"key": "#);
    assert_eq!((code, j["code"].as_i64()), (400, Some(3)));
    let (code, j) = post("/v3/kv/put", r#"{"value":"eA=="}"#);
    assert_eq!(
        (code, j["error"].as_str()),
        (400, Some("etcdserver: key is not provided"))
    );
    let (code, j) = post(
        "/v3/kv/put",
        &format!(r#"{{"key":"{}","lease":"12345"}}"#, b64("x")),
    );
    assert_eq!(
        (code, j["message"].as_str()),
        (404, Some("etcdserver: requested lease not found"))
    );
    let (code, j) = post(
        "/v3/kv/range",
        &format!(r#"{{"key":"{}","revision":"2"}}"#, b64("x")),
    );
    assert_eq!(
        (code, j["message"].as_str()),
        (
            400,
            Some("etcdserver: mvcc: required revision has been compacted")
        )
    );
    let (code, j) = post("/v3/lease/revoke", r#"{"ID":"999"}"#);
    assert_eq!((code, j["code"].as_i64()), (404, Some(5)));
    let after = post("/v3/kv/range", r#"{"key":"AA==","range_end":"AA=="}"#).1["header"]
        ["revision"]
        .clone();
    assert_eq!(before, after, "failed requests must not change the store");
}

#[test]
fn v3_watch_streams_json_lines() {
    let m = member();
    let body = format!(r#"{{"create_request":{{"key":"{}"}}}}"#, b64("w"));
    let lines = watch_lines(&m, &body, 4, || {
        m.ok(&["put", "w", "v1"]);
        m.ok(&["put", "other", "x"]);
        m.ok(&["del", "w"]);
    });
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["result"]["created"], true);
    assert_eq!(lines[1]["result"]["events"][0]["kv"]["value"], b64("v1"));
    assert_eq!(lines[2]["result"]["events"][0]["type"], "DELETE");
}

#[test]
fn health_version_metrics_members() {
    let m = member();
    let (code, body, _) = m.curl(&[], "/health");
    assert_eq!((code, json(&body)["health"].as_str()), (200, Some("true")));
    let (_, body, _) = m.curl(&[], "/version");
    assert_eq!(json(&body)["etcdserver"], "3.5.0");
    m.ok(&["put", "k", "v"]);
    let (code, body, _) = m.curl(&[], "/metrics");
    assert_eq!(code, 200);
    assert!(body.contains("etcd_mvcc_put_total 1"), "{body}");
    assert!(
        body.contains("etcd_debugging_mvcc_current_revision 2"),
        "{body}"
    );
    // The raft loop's measurements, under etcd's names: a member alone leads, its log was
    // synced at least once and the put was applied.
    for line in [
        "etcd_server_is_leader 1",
        "etcd_server_has_leader 1",
        "etcd_server_leader_changes_seen_total 1",
        "etcd_server_proposals_pending 0",
        "etcd_server_proposals_failed_total 0",
    ] {
        assert!(body.contains(line), "{line} in {body}");
    }
    let value = |name: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {body}"))
    };
    assert!(value("etcd_disk_wal_fsync_duration_seconds_count") >= 1.0);
    assert!(value("etcd_disk_backend_commit_duration_seconds_count") >= 1.0);
    assert!(value("etcd_server_proposals_applied_total") >= 2.0);
    assert_eq!(
        value("etcd_server_proposals_applied_total"),
        value("etcd_server_proposals_committed_total")
    );
    let (_, body, _) = m.curl(&[], "/v2/members");
    let j = json(&body);
    assert_eq!(j["members"][0]["name"], "default");
    assert_eq!(j["members"][0]["clientURLs"][0], m.url(""));
}

/// Runs a /v3/watch stream with `body` for `secs` seconds while `during` writes; returns the lines.
fn watch_lines(
    m: &EtcdLite,
    body: &str,
    secs: u32,
    during: impl FnOnce(),
) -> Vec<serde_json::Value> {
    let url = m.url("/v3/watch");
    let mut watcher = Command::new(require_tool("curl"))
        .args([
            "-s",
            "-N",
            "--max-time",
            &secs.to_string(),
            "-XPOST",
            "-d",
            body,
            &url,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl watch");
    std::thread::sleep(Duration::from_millis(700));
    during();
    let _ = watcher.wait();
    let mut out = String::new();
    use std::io::Read;
    watcher
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("reading watch output");
    out.lines().map(json).collect()
}

#[test]
fn v3_watch_many_watchers_filters_progress_and_cancel() {
    let m = member();
    let key = b64("f");
    let body = format!(
        r#"{{"create_request":{{"key":"{key}"}}}} {{"create_request":{{"key":"{key}","filters":["NOPUT"],"prev_kv":true}}}} {{"progress_request":{{}}}}"#
    );
    let lines = watch_lines(&m, &body, 4, || {
        m.ok(&["put", "f", "1"]);
        m.ok(&["del", "f"]);
    });
    let results: Vec<&serde_json::Value> = lines.iter().map(|l| &l["result"]).collect();
    assert_eq!(results.len(), 6, "{lines:?}");
    assert_eq!(
        (results[0]["created"].as_bool(), results[0].get("watch_id")),
        (Some(true), None),
        "first id is 0 (omitted)"
    );
    assert_eq!(
        (
            results[1]["created"].as_bool(),
            results[1]["watch_id"].as_str()
        ),
        (Some(true), Some("1"))
    );
    assert_eq!(results[2]["watch_id"], "-1", "progress response");
    let events: Vec<(Option<&str>, &str, Option<&str>)> = results[3..]
        .iter()
        .map(|r| {
            (
                r["watch_id"].as_str(),
                r["events"][0]["type"].as_str().unwrap_or("PUT"),
                r["events"][0]["prev_kv"]["value"].as_str(),
            )
        })
        .collect();
    // Watcher 0 sees the put and the delete; watcher 1 filters puts out and gets prev_kv.
    assert!(events.contains(&(None, "PUT", None)), "{events:?}");
    assert!(events.contains(&(None, "DELETE", None)), "{events:?}");
    assert!(
        events.contains(&(Some("1"), "DELETE", Some(b64("1").as_str()))),
        "{events:?}"
    );
    // Cancel: created, then canceled, and no events afterwards.
    let body = format!(
        r#"{{"create_request":{{"key":"{key}","watch_id":"7"}}}} {{"cancel_request":{{"watch_id":"7"}}}}"#
    );
    let lines = watch_lines(&m, &body, 3, || {
        m.ok(&["put", "f", "2"]);
    });
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[1]["result"]["canceled"], true);
    assert_eq!(lines[1]["result"]["watch_id"], "7");
}

#[test]
fn grpc_timeouts_are_checked_like_grpc_servers_do() {
    let m = member();
    // RangeRequest { key: "a" }
    let range = [0x0a, 1, b'a'];
    // A malformed deadline is refused (INTERNAL, as grpc-go does), naming the header.
    let h = m.grpc_curl("/etcdserverpb.KV/Range", &range, &["grpc-timeout: soon"]);
    assert_eq!(header(&h, "grpc-status"), Some("13"), "{h}");
    assert!(
        header(&h, "grpc-message").is_some_and(|v| v.contains("grpc-timeout")),
        "{h}"
    );
    // A valid one lets the call run (curl may show the trailers: status 0).
    let h = m.grpc_curl("/etcdserverpb.KV/Range", &range, &["grpc-timeout: 5S"]);
    assert!(matches!(header(&h, "grpc-status"), None | Some("0")), "{h}");
}

#[test]
fn unknown_paths_are_404_and_unknown_grpc_methods_unimplemented() {
    let m = member();
    for path in [
        "/v3/kv/nope",
        "/v2/nope",
        "/v3beta/lock/nope",
        "/nothing/here",
    ] {
        let (code, body, hdrs) = m.curl(&["-XPOST", "-d", "{}"], path);
        assert_eq!(code, 404, "{path}: {body}");
        assert_eq!(header(&hdrs, "Content-Type"), Some("application/json"));
        let j = json(&body);
        assert_eq!(j["error"], "Not Found", "{path}: {body}");
        assert_eq!(j["code"], 5);
        assert!(j["message"].as_str().is_some_and(|s| s.contains(path)));
    }
    // A gRPC client calling a service nobody serves gets gRPC's Unimplemented (the answer
    // waits for the request: answered early, the stream would be reset under curl).
    let h = m.grpc_curl("/etcdserverpb.Nope/Method", &[], &[]);
    assert_eq!(header(&h, "grpc-status"), Some("12"), "{h}");
}

#[test]
fn v3_gateway_lock_and_election() {
    let m = member();
    let (_, body, _) = m.curl(&["-d", r#"{"TTL": 60}"#], "/v3/lease/grant");
    let lease = json(&body)["ID"].as_str().expect("lease id").to_string();
    let (code, body, _) = m.curl(
        &[
            "-d",
            &format!(r#"{{"name":"{}","lease":"{lease}"}}"#, b64("gw")),
        ],
        "/v3/lock/lock",
    );
    assert_eq!(code, 200, "{body}");
    let key = json(&body)["key"].as_str().expect("key").to_string();
    let hex = format!("{:x}", lease.parse::<i64>().expect("numeric id"));
    assert_eq!(key, b64(&format!("gw/{hex}")));
    let (code, body, _) = m.curl(&["-d", &format!(r#"{{"key":"{key}"}}"#)], "/v3/lock/unlock");
    assert_eq!(code, 200, "{body}");
    assert!(json(&body)["header"]["revision"].is_string());

    // An election through the gateway: no leader yet (etcd's error), then a campaign.
    let name = b64("gw-election");
    let (code, body, _) = m.curl(
        &["-d", &format!(r#"{{"name":"{name}"}}"#)],
        "/v3/election/leader",
    );
    assert_eq!(code, 500, "{body}");
    assert_eq!(json(&body)["message"], "election: no leader");
    let (code, body, _) = m.curl(
        &[
            "-d",
            &format!(
                r#"{{"name":"{name}","lease":"{lease}","value":"{}"}}"#,
                b64("me")
            ),
        ],
        "/v3/election/campaign",
    );
    assert_eq!(code, 200, "{body}");
    let leader = json(&body)["leader"].clone();
    assert_eq!(leader["key"], b64(&format!("gw-election/{hex}")));
    let (_, body, _) = m.curl(
        &["-d", &format!(r#"{{"name":"{name}"}}"#)],
        "/v3/election/leader",
    );
    assert_eq!(json(&body)["kv"]["value"], b64("me"));
    let (code, body, _) = m.curl(
        &[
            "-d",
            &format!(r#"{{"leader":{leader},"value":"{}"}}"#, b64("still me")),
        ],
        "/v3/election/proclaim",
    );
    assert_eq!(code, 200, "{body}");
    let (_, body, _) = m.curl(
        &["-d", &format!(r#"{{"name":"{name}"}}"#)],
        "/v3/election/leader",
    );
    assert_eq!(json(&body)["kv"]["value"], b64("still me"));
    let (code, body, _) = m.curl(&["-d", "{}"], "/v3/election/resign");
    assert_eq!(code, 500, "{body}");
    assert_eq!(json(&body)["message"], "\"leader\" field must be provided");
    let (code, body, _) = m.curl(
        &["-d", &format!(r#"{{"leader":{leader}}}"#)],
        "/v3/election/resign",
    );
    assert_eq!(code, 200, "{body}");
    let (code, _, _) = m.curl(
        &["-d", &format!(r#"{{"name":"{name}"}}"#)],
        "/v3/election/leader",
    );
    assert_eq!(code, 500);
}

#[test]
fn v2_machines_and_stats() {
    let m = member();
    let (code, body, _) = m.curl(&[], "/v2/machines");
    assert_eq!((code, body.as_str()), (200, m.url("").as_str()));
    let (_, body, _) = m.curl(&[], "/v2/stats/self");
    let me = json(&body);
    assert_eq!(me["name"], "default");
    assert_eq!(me["state"], "StateLeader");
    assert_eq!(me["leaderInfo"]["leader"], me["id"]);
    assert!(me["startTime"].as_str().is_some_and(|t| t.ends_with('Z')));
    let (code, body, _) = m.curl(&[], "/v2/stats/leader");
    assert_eq!(code, 200);
    assert_eq!(json(&body)["leader"], me["id"]);
    // What the store answered: one set, one get, one missing key, one failed compare.
    m.curl(&["-XPUT", "-d", "value=1"], "/v2/keys/s");
    m.curl(&[], "/v2/keys/s");
    m.curl(&[], "/v2/keys/missing");
    m.curl(
        &["-XPUT", "-d", "value=2", "-d", "prevValue=9"],
        "/v2/keys/s",
    );
    let (_, body, _) = m.curl(&[], "/v2/stats/store");
    let st = json(&body);
    assert_eq!(
        (
            &st["setsSuccess"],
            &st["getsSuccess"],
            &st["getsFail"],
            &st["compareAndSwapFail"]
        ),
        (&1.into(), &1.into(), &1.into(), &1.into())
    );
    assert_eq!(st["watchers"], 0);
}

#[test]
fn enable_v2_false_turns_the_v2_api_off() {
    let m = EtcdLite::start(env!("CARGO_BIN_EXE_etcd-lite"), &["--enable-v2=false"]);
    for path in [
        "/v2/keys/x",
        "/v2/machines",
        "/v2/stats/self",
        "/v2/auth/enable",
    ] {
        let (code, body, _) = m.curl(&[], path);
        assert_eq!(code, 404, "{path}: {body}");
    }
    let (code, _, _) = m.curl(&["-d", r#"{"key":"eA=="}"#], "/v3/kv/range");
    assert_eq!(code, 200);
}
