//! The etcd v2 keys API over HTTP (`/v2/keys/...`): form/query parsing, long-poll waits and
//! etcd's JSON shapes and headers. The semantics live in [`crate::v2store`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;

use crate::server::Caller;
use etcd_api::mvccpb::{event::EventType, Event};
use tokio::sync::broadcast;

use crate::error::EtcdError;
use crate::http::json;
use crate::mvcc::{KeyRange, MvccStore};
use crate::server::EtcdServer;
use crate::v2store::{self, clean_path, code, Node, V2Command, V2Done, V2Error, V2Outcome};

/// Longest a wait long-poll is held before the server answers with the current index and no event
/// (clients re-issue it); bounds resources held per waiting client.
const MAX_WAIT: Duration = Duration::from_secs(300);

type Form = HashMap<String, String>;

fn form(query: Option<String>, body: &Bytes) -> Form {
    let mut f: Form = HashMap::new();
    if let Some(q) = query {
        for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
            f.entry(k.into_owned()).or_insert_with(|| v.into_owned());
        }
    }
    // Form body values take precedence over the query string, as Go's ParseForm orders them.
    for (k, v) in url::form_urlencoded::parse(body) {
        f.insert(k.into_owned(), v.into_owned());
    }
    f
}

fn flag(f: &Form, name: &str) -> Result<bool, V2Error> {
    match f.get(name).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(V2Error::new(
            code::INVALID_FIELD,
            format!("invalid value for \"{name}\""),
            0,
        )),
    }
}

fn ttl(f: &Form) -> Result<Option<i64>, V2Error> {
    match f.get("ttl").map(String::as_str) {
        None | Some("") => Ok(None),
        Some(t) => match t.parse::<i64>() {
            Ok(n) if n >= 0 => Ok(Some(n)),
            _ => Err(V2Error::new(code::TTL_NAN, "", 0)),
        },
    }
}

fn index(f: &Form, name: &str) -> Result<Option<i64>, V2Error> {
    match f.get(name).map(String::as_str) {
        None | Some("") => Ok(None),
        Some(t) => match t.parse::<u64>() {
            Ok(0) => Ok(None),
            Ok(n) => Ok(Some(n as i64)),
            Err(_) => Err(V2Error::new(
                code::INDEX_NAN,
                format!("invalid value for \"{name}\""),
                0,
            )),
        },
    }
}

fn with_index(mut r: Response, s: &EtcdServer, idx: i64) -> Response {
    let h = r.headers_mut();
    for (name, v) in [
        ("X-Etcd-Index", idx.to_string()),
        ("X-Raft-Index", idx.to_string()),
        ("X-Raft-Term", "1".to_string()),
        ("X-Etcd-Cluster-ID", format!("{:x}", s.member.cluster_id)),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(name, v);
        }
    }
    r
}

fn v2_error(s: &EtcdServer, mut e: V2Error) -> Response {
    if e.index == 0 {
        e.index = s.store.published();
    }
    let idx = e.index;
    with_index(json(e.http_status(), &e), s, idx)
}

fn internal(e: EtcdError) -> Response {
    json(
        500,
        &serde_json::json!({"errorCode": 300, "message": "Raft Internal Error", "cause": e.to_string(), "index": 0}),
    )
}

fn action_body(action: &str, node: &Node, prev: Option<&Node>) -> serde_json::Value {
    let mut v = serde_json::json!({ "action": action, "node": node });
    if let Some(p) = prev {
        v["prevNode"] = serde_json::to_value(p).unwrap_or_default();
    }
    v
}

async fn keys_root(
    s: State<Arc<EtcdServer>>,
    method: Method,
    creds: V2Creds,
    q: RawQuery,
    body: Bytes,
) -> Response {
    keys(s, Path(String::new()), method, creds, q, body).await
}

/// What a v2 request may be authenticated with: its Authorization header (HTTP Basic) and
/// its client certificate's CN.
pub struct V2Creds {
    pub(crate) authorization: Option<String>,
    pub(crate) cn: Option<String>,
}

#[axum::async_trait]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for V2Creds {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(V2Creds {
            authorization: parts
                .headers
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            cn: parts
                .extensions
                .get::<crate::tls::ClientCn>()
                .map(|c| c.0.clone()),
        })
    }
}

/// etcd's v2 answer to missing or wrong credentials.
pub(crate) fn unauthorized() -> Response {
    let mut r = json(
        401,
        &serde_json::json!({"message": "Insufficient credentials"}),
    );
    r.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"etcd\""),
    );
    r
}

/// Whether the v2 request's user may read (or write) `path` and what is below it, as the v3
/// roles grant the v3 keys the path maps to.
fn v2_permitted(s: &EtcdServer, who: &crate::server::Caller, path: &str, write: bool) -> bool {
    let access = if write {
        crate::auth::Access::Write
    } else {
        crate::auth::Access::Read
    };
    v2store::touched(path, write)
        .iter()
        .all(|(k, e)| s.may(who, k, e, access).is_ok())
}

async fn keys(
    State(s): State<Arc<EtcdServer>>,
    Path(path): Path<String>,
    method: Method,
    creds: V2Creds,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let f = form(q, &body);
    let path = clean_path(&path);
    let who = match s
        .v2_caller(creds.authorization.as_deref(), creds.cn.as_deref())
        .await
    {
        Ok(w) => w,
        Err(e) => {
            tracing::debug!(error = %e, "v2 request without valid credentials");
            return unauthorized();
        }
    };
    let write = !matches!(method, Method::GET | Method::HEAD);
    if !v2_permitted(&s, &who, &path, write) {
        return unauthorized();
    }
    let res = match method {
        Method::GET | Method::HEAD => {
            let res = get(&s, &path, &f).await;
            if f.get("wait").is_none_or(|w| w != "true") {
                s.v2_stats.count("get", res.is_ok());
            }
            res
        }
        Method::PUT => put(&s, &path, &f, &who).await,
        Method::POST => post(&s, &path, &f, &who).await,
        Method::DELETE => delete(&s, &path, &f, &who).await,
        _ => return json(405, &serde_json::json!({"message": "Method Not Allowed"})),
    };
    match res {
        Ok(r) => r,
        Err(e) => v2_error(&s, e),
    }
}

/// The action a v2 write is (what `/v2/stats/store` counts a failure of it as).
fn intended_action(cmd: &V2Command) -> &'static str {
    match cmd {
        V2Command::Set {
            prev_value,
            prev_index,
            prev_exist,
            ..
        } => match (prev_value.is_some() || prev_index.is_some(), prev_exist) {
            (true, _) => "compareAndSwap",
            (false, Some(false)) => "create",
            (false, Some(true)) => "update",
            (false, None) => "set",
        },
        V2Command::CreateInOrder { .. } => "create",
        V2Command::Delete {
            prev_value,
            prev_index,
            ..
        } if prev_value.is_some() || prev_index.is_some() => "compareAndDelete",
        V2Command::Delete { .. } => "delete",
    }
}

async fn write(s: &EtcdServer, cmd: V2Command, who: &Caller) -> Result<Response, V2Error> {
    let intended = intended_action(&cmd);
    let res = s.v2(cmd, who).await;
    match &res {
        Ok((V2Outcome::Done(d), _)) => s.v2_stats.count(d.action, true),
        _ => s.v2_stats.count(intended, false),
    }
    match res {
        Ok((V2Outcome::Done(d), rev)) => {
            let V2Done {
                action,
                node,
                prev_node,
                created,
            } = *d;
            let status = if created { 201 } else { 200 };
            Ok(with_index(
                json(status, &action_body(action, &node, prev_node.as_ref())),
                s,
                rev,
            ))
        }
        Ok((V2Outcome::Failed(e), _)) => Err(e),
        // A grant revoked between this member's check and the apply: as any refusal.
        Err(EtcdError::PermissionDenied) => Ok(unauthorized()),
        Err(e) => Ok(internal(e)),
    }
}

async fn put(s: &EtcdServer, path: &str, f: &Form, who: &Caller) -> Result<Response, V2Error> {
    let prev_exist = match f.get("prevExist").map(String::as_str) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => {
            return Err(V2Error::new(
                code::INVALID_FIELD,
                "invalid value for \"prevExist\"",
                0,
            ))
        }
    };
    if f.get("prevValue").is_some_and(|v| v.is_empty()) {
        return Err(V2Error::new(code::PREV_VALUE_REQUIRED, "", 0));
    }
    let dir = flag(f, "dir")?;
    let refresh = flag(f, "refresh")?;
    let ttl = ttl(f)?;
    if refresh && (ttl.is_none() || f.contains_key("value")) {
        return Err(V2Error::new(
            code::INVALID_FIELD,
            "refresh requires a ttl and no value",
            0,
        ));
    }
    if dir && f.get("value").is_some_and(|v| !v.is_empty()) {
        return Err(V2Error::new(
            code::INVALID_FIELD,
            "a directory has no value",
            0,
        ));
    }
    write(
        s,
        V2Command::Set {
            path: path.to_string(),
            value: f.get("value").cloned().unwrap_or_default(),
            dir,
            ttl,
            prev_exist,
            prev_value: f.get("prevValue").cloned(),
            prev_index: index(f, "prevIndex")?,
            refresh,
        },
        who,
    )
    .await
}

async fn post(s: &EtcdServer, path: &str, f: &Form, who: &Caller) -> Result<Response, V2Error> {
    write(
        s,
        V2Command::CreateInOrder {
            dir: path.to_string(),
            value: f.get("value").cloned().unwrap_or_default(),
            ttl: ttl(f)?,
        },
        who,
    )
    .await
}

async fn delete(s: &EtcdServer, path: &str, f: &Form, who: &Caller) -> Result<Response, V2Error> {
    if f.get("prevValue").is_some_and(|v| v.is_empty()) {
        return Err(V2Error::new(code::PREV_VALUE_REQUIRED, "", 0));
    }
    write(
        s,
        V2Command::Delete {
            path: path.to_string(),
            dir: flag(f, "dir")?,
            recursive: flag(f, "recursive")?,
            prev_value: f.get("prevValue").cloned(),
            prev_index: index(f, "prevIndex")?,
        },
        who,
    )
    .await
}

async fn get(s: &Arc<EtcdServer>, path: &str, f: &Form) -> Result<Response, V2Error> {
    let recursive = flag(f, "recursive")?;
    let sorted = flag(f, "sorted")?;
    if flag(f, "wait")? {
        return wait(s, path, recursive, index(f, "waitIndex")?).await;
    }
    let view = s.store.read();
    match v2store::get(&view, &s.leases, path, recursive, sorted) {
        Ok(Ok(node)) => Ok(with_index(
            json(200, &serde_json::json!({"action": "get", "node": node})),
            s,
            view.rev,
        )),
        Ok(Err(e)) => Err(e),
        Err(e) => Ok(internal(e)),
    }
}

/// Does a v3 key belong to the watched v2 path?
fn watched(path: &str, recursive: bool, key: &[u8]) -> bool {
    let Some((p, _)) = v2store::v2_path(key) else {
        return false;
    };
    if p == path {
        return true;
    }
    recursive && (path == "/" || p.starts_with(&format!("{path}/")))
}

fn event_body(ev: &Event) -> Option<serde_json::Value> {
    let kv = ev.kv.as_ref()?;
    let (path, is_dir) = v2store::v2_path(&kv.key)?;
    let prev = ev.prev_kv.as_ref().map(|p| Node {
        key: path.clone(),
        value: (!is_dir).then(|| String::from_utf8_lossy(&p.value).into_owned()),
        dir: is_dir,
        modified_index: p.mod_revision,
        created_index: p.create_revision,
        ..Default::default()
    });
    if ev.r#type == EventType::Delete as i32 {
        let node = Node {
            key: path,
            dir: is_dir,
            modified_index: kv.mod_revision,
            created_index: prev.as_ref().map_or(0, |p| p.created_index),
            ..Default::default()
        };
        return Some(action_body("delete", &node, prev.as_ref()));
    }
    let node = Node {
        key: path,
        value: (!is_dir).then(|| String::from_utf8_lossy(&kv.value).into_owned()),
        dir: is_dir,
        modified_index: kv.mod_revision,
        created_index: kv.create_revision,
        ..Default::default()
    };
    Some(action_body("set", &node, prev.as_ref()))
}

/// The v2 event for the first revision among `evs` (in revision order) that touches the path.
/// Within one revision a key change wins over the directory markers written along with it, as v2
/// reports the key, not the implicit creation of its parents.
/// `store` fills in the previous node of a live event (history carries it already).
fn first_event(
    store: Option<&MvccStore>,
    evs: &[Event],
    path: &str,
    recursive: bool,
) -> Option<serde_json::Value> {
    let matching = |e: &&Event| {
        e.kv.as_ref()
            .is_some_and(|kv| watched(path, recursive, &kv.key))
    };
    let first = evs.iter().find(matching)?;
    let rev = first.kv.as_ref().map_or(0, |kv| kv.mod_revision);
    let same_rev = || {
        evs.iter()
            .filter(matching)
            .filter(move |e| e.kv.as_ref().is_some_and(|kv| kv.mod_revision == rev))
    };
    let is_marker = |e: &&Event| e.kv.as_ref().is_some_and(|kv| kv.key.ends_with(b"/"));
    let mut best = same_rev()
        .find(|e| !is_marker(e))
        .or_else(|| same_rev().next())?
        .clone();
    // v2 reports the previous node, which a put's event may not carry yet.
    if let Some(Err(e)) = store.map(|s| s.read().fill_prev(&mut best)) {
        tracing::error!(error = %e, "reading a v2 event's previous node");
    }
    event_body(&best)
}

/// Long-poll: answers with the first change at or after `from` under `path`.
/// Counts a v2 wait while it lasts (`watchers` in `/v2/stats/store`).
struct Watching<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> Watching<'a> {
    fn new(c: &'a std::sync::atomic::AtomicU64) -> Self {
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Watching(c)
    }
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn wait(
    s: &Arc<EtcdServer>,
    path: &str,
    recursive: bool,
    from: Option<i64>,
) -> Result<Response, V2Error> {
    let mut sub = s.events.subscribe();
    let _watching = Watching::new(&s.v2_stats.watchers);
    let start_idx = s.store.published();
    let mut next = from.unwrap_or(start_idx + 1);
    let deadline = tokio::time::Instant::now() + MAX_WAIT;
    loop {
        // History first (also after falling behind the live stream).
        {
            let view = s.store.read();
            if next <= view.rev {
                let all = KeyRange::new(b"\0", b"\0");
                // v2's history is complete only after the compaction revision (a deletion at it
                // is gone), so a wait from it is refused as cleared.
                let from = if next <= view.compacted() { 0 } else { next };
                match view.events(&all, from, view.rev, true) {
                    Ok(evs) => {
                        if let Some(b) = first_event(None, &evs, path, recursive) {
                            return Ok(with_index(json(200, &b), s, start_idx));
                        }
                        next = view.rev + 1;
                    }
                    Err(EtcdError::Compacted) => {
                        return Err(V2Error::new(
                            code::EVENT_INDEX_CLEARED,
                            format!(
                                "the requested history has been cleared [{}/{}]",
                                view.compacted() + 1,
                                next
                            ),
                            view.rev,
                        ))
                    }
                    Err(e) => return Ok(internal(e)),
                }
            }
        }
        loop {
            let got = tokio::time::timeout_at(deadline, sub.recv()).await;
            match got {
                Err(_) => {
                    // Nothing happened in time: an empty answer the client re-issues.
                    return Ok(with_index(
                        axum::http::StatusCode::OK.into_response(),
                        s,
                        start_idx,
                    ));
                }
                Ok(Ok(rev)) => {
                    if rev.rev < next {
                        continue;
                    }
                    next = rev.rev + 1;
                    if let Some(b) = first_event(Some(&s.store), &rev.events, path, recursive) {
                        return Ok(with_index(json(200, &b), s, start_idx));
                    }
                }
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => break,
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    return Ok(internal(EtcdError::Stopped))
                }
            }
        }
    }
}

/// Adds the /v2/keys routes.
pub fn routes(r: Router<Arc<EtcdServer>>) -> Router<Arc<EtcdServer>> {
    r.route("/v2/keys", any(keys_root))
        .route("/v2/keys/", any(keys_root))
        .route("/v2/keys/*path", any(keys))
}
