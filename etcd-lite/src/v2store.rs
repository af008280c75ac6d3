//! etcd's v2 keys API as a view of the v3 key space, so that both APIs see one store.
//!
//! Mapping: the v2 path `/a/b` is the v3 key `a/b`. A directory is implicit when keys exist below
//! it (`a/b/...`), and explicit when its marker key `a/b/` (trailing slash, empty value) exists.
//! v2 indices are v3 revisions (modifiedIndex = mod_revision, createdIndex = create_revision,
//! X-Etcd-Index = the store revision). A TTL is a lease attached to the key or marker; when a
//! marker's lease expires the whole directory goes. v3 keys that begin with `/` or contain `//`
//! have no v2 path.

use std::time::{Duration, Instant, SystemTime};

use etcd_api::mvccpb::KeyValue;
use parking_lot::Mutex;
use serde::Serialize;

use crate::error::Result;
use crate::lease::LeaseTable;
use crate::mvcc::{KeyRange, KvRead, WriteTxn};

/// v2 error codes used here (etcd's `v2error`).
pub mod code {
    pub const KEY_NOT_FOUND: u32 = 100;
    pub const TEST_FAILED: u32 = 101;
    pub const NOT_FILE: u32 = 102;
    pub const NOT_DIR: u32 = 104;
    pub const NODE_EXIST: u32 = 105;
    pub const ROOT_RONLY: u32 = 107;
    pub const DIR_NOT_EMPTY: u32 = 108;
    pub const PREV_VALUE_REQUIRED: u32 = 201;
    pub const TTL_NAN: u32 = 202;
    pub const INDEX_NAN: u32 = 203;
    pub const INVALID_FIELD: u32 = 209;
    pub const INVALID_FORM: u32 = 210;
    pub const EVENT_INDEX_CLEARED: u32 = 401;
}

/// A v2 error body: `{"errorCode":100,"message":"Key not found","cause":"/foo","index":7}`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct V2Error {
    #[serde(rename = "errorCode")]
    pub error_code: u32,
    pub message: String,
    pub cause: String,
    pub index: i64,
}

impl V2Error {
    pub fn new(error_code: u32, cause: impl Into<String>, index: i64) -> Self {
        let message = match error_code {
            code::KEY_NOT_FOUND => "Key not found",
            code::TEST_FAILED => "Compare failed",
            code::NOT_FILE => "Not a file",
            code::NOT_DIR => "Not a directory",
            code::NODE_EXIST => "Key already exists",
            code::ROOT_RONLY => "Root is read only",
            code::DIR_NOT_EMPTY => "Directory not empty",
            code::PREV_VALUE_REQUIRED => "PrevValue is Required in POST form",
            code::TTL_NAN => "The given TTL in POST form is not a number",
            code::INDEX_NAN => "The given index in POST form is not a number",
            code::INVALID_FIELD => "Invalid field",
            code::INVALID_FORM => "Invalid POST form",
            code::EVENT_INDEX_CLEARED => "The event in requested index is outdated and cleared",
            _ => "Internal error",
        };
        V2Error {
            error_code,
            message: message.into(),
            cause: cause.into(),
            index,
        }
    }

    /// The HTTP status etcd answers this error with.
    pub fn http_status(&self) -> u16 {
        match self.error_code {
            code::KEY_NOT_FOUND => 404,
            code::NOT_FILE | code::NOT_DIR | code::ROOT_RONLY | code::DIR_NOT_EMPTY => 403,
            code::TEST_FAILED | code::NODE_EXIST => 412,
            _ => 400,
        }
    }
}

/// A v2 node as etcd renders it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct Node {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dir: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<Node>>,
    #[serde(rename = "modifiedIndex")]
    pub modified_index: i64,
    #[serde(rename = "createdIndex")]
    pub created_index: i64,
}

/// A v2 write (serialized into the raft log).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub enum V2Command {
    /// PUT: set a value or create a directory, with optional compare conditions.
    Set {
        path: String,
        value: String,
        dir: bool,
        ttl: Option<i64>,
        prev_exist: Option<bool>,
        prev_value: Option<String>,
        prev_index: Option<i64>,
        refresh: bool,
    },
    /// DELETE, with optional compare conditions.
    Delete {
        path: String,
        dir: bool,
        recursive: bool,
        prev_value: Option<String>,
        prev_index: Option<i64>,
    },
    /// POST: create a uniquely named, in-order key under a directory.
    CreateInOrder {
        dir: String,
        value: String,
        ttl: Option<i64>,
    },
}

impl V2Command {
    /// The v2 path the command writes.
    pub fn path(&self) -> &str {
        match self {
            V2Command::Set { path, .. } | V2Command::Delete { path, .. } => path,
            V2Command::CreateInOrder { dir, .. } => dir,
        }
    }
}

/// The v3 keys and ranges (etcd's key/range_end form) that reading or writing the v2 path
/// `path` touches: the key itself, everything below it (its marker and children) and, for a
/// write, the markers of its parent directories, which a write creates.
pub fn touched(path: &str, write: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
    let key = v3_key(path);
    if key.is_empty() {
        // The root: every key.
        return vec![(vec![0], vec![0])];
    }
    let below = marker(path);
    let end = prefix_end(&below);
    let mut out = vec![(key, Vec::new()), (below, end)];
    if write {
        let mut anc = String::new();
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        for seg in &segs[..segs.len().saturating_sub(1)] {
            anc.push('/');
            anc.push_str(seg);
            out.push((marker(&anc), Vec::new()));
        }
    }
    out
}

/// The answer to a v2 write: either an action body or a v2 error.
#[derive(Debug)]
pub enum V2Outcome {
    Done(Box<V2Done>),
    Failed(V2Error),
}

/// A v2 write that happened.
#[derive(Debug)]
pub struct V2Done {
    pub action: &'static str,
    pub node: Node,
    pub prev_node: Option<Node>,
    pub created: bool,
}

/// Cleans a v2 path like Go's `path.Clean` rooted at `/`.
pub fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The v3 key of a (clean) v2 path.
pub fn v3_key(path: &str) -> Vec<u8> {
    path.trim_start_matches('/').as_bytes().to_vec()
}

fn marker(path: &str) -> Vec<u8> {
    let mut k = v3_key(path);
    k.push(b'/');
    k
}

/// The first key after every key that starts with `prefix` (etcd's `GetPrefixRangeEnd`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The v2 path of a v3 key, if it has one; the flag tells a directory marker.
pub fn v2_path(key: &[u8]) -> Option<(String, bool)> {
    let s = std::str::from_utf8(key).ok()?;
    if s.starts_with('/') || s.contains("//") || s.is_empty() {
        return None;
    }
    match s.strip_suffix('/') {
        Some(d) => Some((format!("/{d}"), true)),
        None => Some((format!("/{s}"), false)),
    }
}

pub fn rfc3339(t: SystemTime) -> String {
    // RFC 3339 in UTC with nanoseconds, as Go's time.Time marshals.
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn ttl_fields(kv: &KeyValue, leases: &LeaseTable, now: Instant) -> (Option<String>, Option<i64>) {
    if kv.lease == 0 {
        return (None, None);
    }
    match leases.get(kv.lease) {
        Some(l) => {
            let left = l.deadline.saturating_duration_since(now);
            (
                Some(rfc3339(SystemTime::now() + left)),
                Some(l.remaining(now).max(0)),
            )
        }
        None => (None, None),
    }
}

fn file_node(path: String, kv: &KeyValue, leases: &LeaseTable, now: Instant) -> Node {
    let (expiration, ttl) = ttl_fields(kv, leases, now);
    Node {
        key: path,
        value: Some(String::from_utf8_lossy(&kv.value).into_owned()),
        expiration,
        ttl,
        modified_index: kv.mod_revision,
        created_index: kv.create_revision,
        ..Default::default()
    }
}

/// What is at a v2 path.
enum Found {
    Missing,
    File(KeyValue),
    /// A directory: its marker if explicit, and its keys below.
    Dir(Option<KeyValue>, Vec<KeyValue>),
}

fn lookup<R: KvRead + ?Sized>(r: &R, path: &str) -> Result<Found> {
    if path == "/" {
        let all = r.values(&KeyRange::new(b"\0", b"\0"), r.read_rev(), 0)?;
        return Ok(Found::Dir(None, all));
    }
    if let Some(kv) = r.get(&v3_key(path))? {
        return Ok(Found::File(kv));
    }
    let m = marker(path);
    let below = r.values(&KeyRange::new(&m, &prefix_end(&m)), r.read_rev(), 0)?;
    if below.is_empty() {
        return Ok(Found::Missing);
    }
    let mk = below.iter().find(|kv| kv.key == m).cloned();
    Ok(Found::Dir(mk, below))
}

fn dir_node(
    path: &str,
    marker_kv: Option<&KeyValue>,
    below: &[KeyValue],
    recursive: bool,
    with_children: bool,
    leases: &LeaseTable,
    now: Instant,
) -> Node {
    let (created, modified, expiration, ttl) = match marker_kv {
        Some(m) => {
            let (e, t) = ttl_fields(m, leases, now);
            (m.create_revision, m.mod_revision, e, t)
        }
        None => {
            let c = below.iter().map(|kv| kv.create_revision).min().unwrap_or(0);
            (c, c, None, None)
        }
    };
    let mut node = Node {
        key: path.to_string(),
        dir: true,
        expiration,
        ttl,
        modified_index: modified,
        created_index: created,
        ..Default::default()
    };
    if with_children {
        node.nodes = Some(children(path, below, recursive, leases, now));
    }
    node
}

fn children(
    path: &str,
    below: &[KeyValue],
    recursive: bool,
    leases: &LeaseTable,
    now: Instant,
) -> Vec<Node> {
    let prefix = if path == "/" {
        Vec::new()
    } else {
        marker(path)
    };
    let mut out: Vec<Node> = Vec::new();
    let mut i = 0;
    while i < below.len() {
        let kv = &below[i];
        let Some(rest) = kv.key.strip_prefix(prefix.as_slice()) else {
            i += 1;
            continue;
        };
        if rest.is_empty() || v2_path(&kv.key).is_none() {
            i += 1;
            continue;
        }
        match rest.iter().position(|b| *b == b'/') {
            None => {
                let child = format!(
                    "{}/{}",
                    path.trim_end_matches('/'),
                    String::from_utf8_lossy(rest)
                );
                out.push(file_node(child, kv, leases, now));
                i += 1;
            }
            Some(pos) => {
                let name = String::from_utf8_lossy(&rest[..pos]).into_owned();
                let mut sub_prefix = prefix.clone();
                sub_prefix.extend_from_slice(&rest[..=pos]);
                let j = below[i..]
                    .iter()
                    .position(|kv| !kv.key.starts_with(&sub_prefix))
                    .map_or(below.len(), |n| i + n);
                let group = &below[i..j];
                let child = format!("{}/{}", path.trim_end_matches('/'), name);
                let mk = group.iter().find(|kv| kv.key == sub_prefix);
                out.push(dir_node(
                    &child, mk, group, recursive, recursive, leases, now,
                ));
                i = j;
            }
        }
    }
    out
}

/// GET of a path: the node (with children for a directory) or a v2 error.
pub fn get<R: KvRead + ?Sized>(
    r: &R,
    leases: &Mutex<LeaseTable>,
    path: &str,
    recursive: bool,
    sorted: bool,
) -> Result<std::result::Result<Node, V2Error>> {
    let path = clean_path(path);
    let found = lookup(r, &path)?;
    let table = leases.lock();
    let now = Instant::now();
    Ok(match found {
        Found::Missing => Err(V2Error::new(code::KEY_NOT_FOUND, path, r.read_rev())),
        Found::File(kv) => Ok(file_node(path, &kv, &table, now)),
        Found::Dir(m, below) => {
            let mut n = dir_node(&path, m.as_ref(), &below, recursive, true, &table, now);
            if sorted {
                sort_nodes(&mut n);
            }
            Ok(n)
        }
    })
}

fn sort_nodes(n: &mut Node) {
    if let Some(children) = &mut n.nodes {
        children.sort_by(|a, b| a.key.cmp(&b.key));
        children.iter_mut().for_each(sort_nodes);
    }
}

/// Why a compare failed, in etcd's words.
fn compare_cause(
    prev_value: &Option<String>,
    prev_index: &Option<i64>,
    kv: &KeyValue,
) -> Option<String> {
    let value = String::from_utf8_lossy(&kv.value);
    let v_bad = prev_value.as_ref().is_some_and(|p| *p != value);
    let i_bad = prev_index.is_some_and(|p| p != kv.mod_revision);
    match (v_bad, i_bad) {
        (false, false) => None,
        (true, false) => Some(format!(
            "[{} != {}]",
            prev_value.as_deref().unwrap_or(""),
            value
        )),
        (false, true) => Some(format!(
            "[{} != {}]",
            prev_index.unwrap_or(0),
            kv.mod_revision
        )),
        (true, true) => Some(format!(
            "[{} != {}] [{} != {}]",
            prev_value.as_deref().unwrap_or(""),
            value,
            prev_index.unwrap_or(0),
            kv.mod_revision
        )),
    }
}

/// Fails with 104 if an ancestor of `path` is a file; otherwise writes markers for ancestors that
/// do not exist yet, as v2 creates intermediate directories.
fn ensure_parents(w: &mut WriteTxn<'_>, path: &str) -> Result<std::result::Result<(), V2Error>> {
    let mut anc = String::new();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    for seg in &segs[..segs.len().saturating_sub(1)] {
        anc.push('/');
        anc.push_str(seg);
        match lookup(w, &anc)? {
            Found::File(_) => return Ok(Err(V2Error::new(code::NOT_DIR, anc, w.current()))),
            Found::Dir(Some(_), _) => {}
            Found::Dir(None, _) | Found::Missing => {
                w.put(&marker(&anc), Vec::new(), 0, false)?;
            }
        }
    }
    Ok(Ok(()))
}

/// A lease for a key with a TTL. Its id comes from the revision being written, never from this
/// member's clock: every replica must give the key the same lease, or the leader's revoke of it
/// misses the followers' copies and they serve the key forever.
fn grant_for(w: &mut WriteTxn<'_>, table: &mut LeaseTable, ttl: Option<i64>, now: Instant) -> i64 {
    match ttl {
        Some(ttl) if ttl > 0 => {
            let id = table.id_for_entry(w.rev() as u64);
            w.save_lease(id, ttl);
            table.insert(id, ttl, now);
            id
        }
        _ => 0,
    }
}

/// Drops a v2 lease whose only key is being replaced or deleted, so it does not linger.
fn release_lease(w: &mut WriteTxn<'_>, table: &mut LeaseTable, kv: &KeyValue) {
    if kv.lease == 0 {
        return;
    }
    let only_this = table
        .get(kv.lease)
        .is_some_and(|l| l.keys.len() == 1 && l.keys.contains(&kv.key));
    if only_this {
        w.remove_lease(kv.lease);
        table.remove(kv.lease);
    }
}

/// Applies a v2 write inside a write transaction.
pub fn apply(
    w: &mut WriteTxn<'_>,
    leases: &Mutex<LeaseTable>,
    cmd: V2Command,
    now: Instant,
) -> Result<V2Outcome> {
    let fail =
        |code: u32, cause: String, idx: i64| Ok(V2Outcome::Failed(V2Error::new(code, cause, idx)));
    match cmd {
        V2Command::Set {
            path,
            value,
            dir,
            ttl,
            prev_exist,
            prev_value,
            prev_index,
            refresh,
        } => {
            let path = clean_path(&path);
            let cur = w.current();
            if path == "/" {
                return fail(code::ROOT_RONLY, "/".into(), cur);
            }
            let found = lookup(w, &path)?;
            let table_snapshot = leases.lock();
            let prev_node = match &found {
                Found::Missing => None,
                Found::File(kv) => Some(file_node(path.clone(), kv, &table_snapshot, now)),
                Found::Dir(m, below) => Some(dir_node(
                    &path,
                    m.as_ref(),
                    below,
                    false,
                    false,
                    &table_snapshot,
                    now,
                )),
            };
            drop(table_snapshot);
            let exists = !matches!(found, Found::Missing);
            let is_cas = prev_value.is_some() || prev_index.is_some();
            if prev_exist == Some(false) && exists {
                return fail(code::NODE_EXIST, path, cur);
            }
            if (prev_exist == Some(true) || is_cas || refresh) && !exists {
                return fail(code::KEY_NOT_FOUND, path, cur);
            }
            if let Found::Dir(..) = &found {
                if !dir || is_cas {
                    return fail(code::NOT_FILE, path, cur);
                }
                if prev_exist != Some(true) {
                    return fail(code::NOT_FILE, path, cur);
                }
            }
            if let (Found::File(kv), true) = (&found, is_cas) {
                if let Some(cause) = compare_cause(&prev_value, &prev_index, kv) {
                    return fail(code::TEST_FAILED, cause, cur);
                }
            }
            if let Err(e) = ensure_parents(w, &path)? {
                return Ok(V2Outcome::Failed(e));
            }
            let mut table = leases.lock();
            let (key, val) = if dir {
                (marker(&path), Vec::new())
            } else if refresh {
                match &found {
                    Found::File(kv) => (kv.key.clone(), kv.value.clone()),
                    _ => return fail(code::NOT_FILE, path, cur),
                }
            } else {
                (v3_key(&path), value.into_bytes())
            };
            if let Found::File(kv) = &found {
                release_lease(w, &mut table, kv);
                if dir {
                    w.delete_range(&KeyRange::new(&kv.key, b""))?;
                }
            }
            if let Found::Dir(Some(m), _) = &found {
                release_lease(w, &mut table, m);
            }
            let lease = grant_for(w, &mut table, ttl, now);
            w.put(&key, val, lease, false)?;
            let kv = w
                .get(&key)?
                .expect("a key just written is readable in its transaction");
            // The new lease's key set is tracked after commit; report its TTL from the grant.
            table.attach(lease, &key);
            let node = if dir {
                dir_node(&path, Some(&kv), &[], false, false, &table, now)
            } else {
                file_node(path.clone(), &kv, &table, now)
            };
            let action = if is_cas {
                "compareAndSwap"
            } else if prev_exist == Some(false) {
                "create"
            } else if prev_exist == Some(true) || refresh {
                "update"
            } else {
                "set"
            };
            Ok(V2Outcome::Done(Box::new(V2Done {
                action,
                node,
                prev_node,
                created: !exists,
            })))
        }
        V2Command::Delete {
            path,
            dir,
            recursive,
            prev_value,
            prev_index,
        } => {
            let path = clean_path(&path);
            let cur = w.current();
            if path == "/" {
                return fail(code::ROOT_RONLY, "/".into(), cur);
            }
            let is_cas = prev_value.is_some() || prev_index.is_some();
            let found = lookup(w, &path)?;
            let mut table = leases.lock();
            match found {
                Found::Missing => fail(code::KEY_NOT_FOUND, path, cur),
                Found::File(kv) => {
                    if is_cas {
                        if let Some(cause) = compare_cause(&prev_value, &prev_index, &kv) {
                            return fail(code::TEST_FAILED, cause, cur);
                        }
                    }
                    let prev = file_node(path.clone(), &kv, &table, now);
                    release_lease(w, &mut table, &kv);
                    w.delete_range(&KeyRange::new(&kv.key, b""))?;
                    Ok(V2Outcome::Done(Box::new(V2Done {
                        action: if is_cas { "compareAndDelete" } else { "delete" },
                        node: Node {
                            key: path,
                            modified_index: w.rev(),
                            created_index: kv.create_revision,
                            ..Default::default()
                        },
                        prev_node: Some(prev),
                        created: false,
                    })))
                }
                Found::Dir(m, below) => {
                    if is_cas || !(dir || recursive) {
                        return fail(code::NOT_FILE, path, cur);
                    }
                    let has_children = below
                        .iter()
                        .any(|kv| Some(&kv.key) != m.as_ref().map(|m| &m.key));
                    if has_children && !recursive {
                        return fail(code::DIR_NOT_EMPTY, path, cur);
                    }
                    let prev = dir_node(&path, m.as_ref(), &below, false, false, &table, now);
                    if let Some(m) = &m {
                        release_lease(w, &mut table, m);
                    }
                    let mk = marker(&path);
                    w.delete_range(&KeyRange::new(&mk, &prefix_end(&mk)))?;
                    Ok(V2Outcome::Done(Box::new(V2Done {
                        action: "delete",
                        node: Node {
                            key: path,
                            dir: true,
                            modified_index: w.rev(),
                            created_index: prev.created_index,
                            ..Default::default()
                        },
                        prev_node: Some(prev),
                        created: false,
                    })))
                }
            }
        }
        V2Command::CreateInOrder { dir, value, ttl } => {
            let dir = clean_path(&dir);
            let cur = w.current();
            if let Found::File(_) = lookup(w, &dir)? {
                return fail(code::NOT_DIR, dir, cur);
            }
            let path = format!("{}/{:020}", dir.trim_end_matches('/'), w.rev());
            if let Err(e) = ensure_parents(w, &path)? {
                return Ok(V2Outcome::Failed(e));
            }
            let mut table = leases.lock();
            let lease = grant_for(w, &mut table, ttl, now);
            let key = v3_key(&path);
            w.put(&key, value.into_bytes(), lease, false)?;
            table.attach(lease, &key);
            let kv = w
                .get(&key)?
                .expect("a key just written is readable in its transaction");
            Ok(V2Outcome::Done(Box::new(V2Done {
                action: "create",
                node: file_node(path, &kv, &table, now),
                prev_node: None,
                created: true,
            })))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_clean_like_go() {
        assert_eq!(clean_path(""), "/");
        assert_eq!(clean_path("//a/./b/../c/"), "/a/c");
        assert_eq!(v3_key("/a/c"), b"a/c");
        assert_eq!(v2_path(b"a/c"), Some(("/a/c".into(), false)));
        assert_eq!(v2_path(b"a/"), Some(("/a".into(), true)));
        assert_eq!(v2_path(b"/abs"), None);
    }

    #[test]
    fn prefix_end_matches_etcd() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }

    /// Applying the same entry on two members, whose clocks differ, gives a key with a TTL the
    /// same lease (the leader's revoke must reach every copy).
    #[test]
    fn a_ttl_key_gets_the_same_lease_on_every_member() {
        let lease_of = |now: Instant| {
            let store = crate::mvcc::MvccStore::temporary().expect("store");
            let leases = Mutex::new(LeaseTable::default());
            let mut w = store.write();
            let cmd = V2Command::Set {
                path: "/t".into(),
                value: "x".into(),
                dir: false,
                ttl: Some(5),
                prev_exist: None,
                prev_value: None,
                prev_index: None,
                refresh: false,
            };
            assert!(matches!(
                apply(&mut w, &leases, cmd, now).expect("apply"),
                V2Outcome::Done(_)
            ));
            let kv = w.get(b"t").expect("read").expect("the key");
            w.commit().expect("commit");
            kv.lease
        };
        let a = lease_of(Instant::now());
        let b = lease_of(Instant::now() + Duration::from_secs(3600));
        assert!(a > 0);
        assert_eq!(a, b);
    }

    #[test]
    fn dates_render_as_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.000000000Z");
    }
}
