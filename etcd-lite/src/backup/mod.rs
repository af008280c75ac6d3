//! Backups in etcd's own snapshot format, so a backup restores anywhere.
//!
//! An etcd snapshot is etcd's backend database, a bbolt file ([`bbolt`]), followed by the
//! SHA-256 of that file (32 bytes; the file is a whole number of pages, so a snapshot whose
//! length is 32 more than a multiple of 512 carries the hash). The buckets, as etcd 3.4 and 3.5
//! lay them out:
//!
//! | bucket | key | value |
//! |---|---|---|
//! | `key` | revision: main (8 bytes, big-endian), `_`, sub (8), `t` for a tombstone | `mvccpb.KeyValue` |
//! | `meta` | `consistent_index`, `scheduledCompactRev`, `finishedCompactRev` | index (8 bytes), revisions (17) |
//! | `lease` | lease id (8 bytes, big-endian) | `leasepb.Lease` |
//! | `auth` | `authEnabled`, `authRevision` | 1 byte, 8 bytes |
//! | `authUsers` / `authRoles` | name | `authpb.User` / `authpb.Role` (bcrypt hashes as etcd keeps them) |
//! | `members`, `members_removed`, `cluster`, `alarm` | membership, `clusterVersion` | JSON, text |
//!
//! [`write_db`] turns the store into such a file (streamed through bbolt's bottom-up
//! [`bbolt::Writer`], so memory stays small whatever the store's size); [`read_db`] turns any
//! etcd 3.4/3.5 snapshot (or etcd-lite's) back into the store's records, checking everything
//! before anything is written; [`status`] is `etcdutl snapshot status`; [`restore`] makes a
//! member's data directory from a snapshot, as `etcdutl snapshot restore` does.

pub mod bbolt;
pub mod cli;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use etcd_api::authpb::{self, Permission};
use etcd_api::leasepb;
use etcd_api::mvccpb::KeyValue;
use prost::Message;
use sha2::Digest;

use crate::auth::{AuthState, Perm, Role, User};
use crate::machine::{MemberEntry, APPLIED_META, AUTH_META, CLIENTS_META, MEMBERS_META};
use crate::mvcc::revision::{Revision, KV_PREFIX, LEASE_PREFIX, META_PREFIX};
use crate::mvcc::store::BackupView;
use crate::mvcc::MvccStore;

/// What a backup or a restore can fail with; messages follow etcdutl's where it has one.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("snapshot file integrity check failed: {0}")]
    Bbolt(#[from] bbolt::BboltError),
    #[error("snapshot missing hash but --skip-hash-check=false")]
    MissingHash,
    #[error("expected sha256 {expected}, got {got}")]
    HashMismatch { expected: String, got: String },
    #[error("snapshot file integrity check failed: {0}")]
    Malformed(String),
    #[error("data-dir {0:?} exists")]
    Exists(PathBuf),
    #[error("{0}")]
    Store(#[from] crate::error::EtcdError),
}

pub type Result<T> = std::result::Result<T, BackupError>;

/// etcd's bucket names.
const KEY: &[u8] = b"key";
const META: &[u8] = b"meta";
const LEASE: &[u8] = b"lease";
const AUTH: &[u8] = b"auth";
const AUTH_USERS: &[u8] = b"authUsers";
const AUTH_ROLES: &[u8] = b"authRoles";
const MEMBERS: &[u8] = b"members";
const MEMBERS_REMOVED: &[u8] = b"members_removed";
const CLUSTER: &[u8] = b"cluster";
const ALARM: &[u8] = b"alarm";
/// The cluster version a snapshot says it is from (the API etcd-lite speaks).
const CLUSTER_VERSION: &str = "3.4.0";
/// The metadata record of the compaction revision (the store's own name for it).
const META_COMPACTED: &[u8] = b"mcompacted";

/// etcd's key of a revision: main, `_`, sub, and `t` for a tombstone.
fn etcd_rev_key(rev: Revision, tombstone: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(&(rev.main as u64).to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&(rev.sub as u64).to_be_bytes());
    if tombstone {
        k.push(b't');
    }
    k
}

/// The revision (and tombstone mark) of an etcd `key` bucket key.
fn parse_etcd_rev_key(k: &[u8]) -> Option<(Revision, bool)> {
    let tombstone = match k.len() {
        17 => false,
        18 if k[17] == b't' => true,
        _ => return None,
    };
    if k[8] != b'_' {
        return None;
    }
    let main = u64::from_be_bytes(k[..8].try_into().ok()?) as i64;
    let sub = u64::from_be_bytes(k[9..17].try_into().ok()?) as i64;
    Some((Revision { main, sub }, tombstone))
}

/// A `meta` bucket revision value: etcd stores compaction revisions as revision keys.
fn compact_rev_value(main: i64) -> Vec<u8> {
    etcd_rev_key(Revision { main, sub: 0 }, false)
}

/// Writes what `view` sees as an etcd backend database to `out` (positioned anywhere; the
/// file is written from its start). Returns the file and the database's size in bytes.
pub fn write_db(view: &BackupView<'_>, out: File) -> Result<(File, u64)> {
    let mut w = bbolt::Writer::new(out)?;
    let mut leases: Vec<(i64, i64)> = Vec::new();
    let mut meta: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    {
        let mut keys = w.bucket(KEY);
        let mut failed: Option<BackupError> = None;
        view.for_each_record(|k, v| {
            if failed.is_some() {
                return;
            }
            match k.first() {
                Some(&KV_PREFIX) => {
                    if let Some((rev, tomb)) = Revision::from_key(k) {
                        if let Err(e) = keys.put(&etcd_rev_key(rev, tomb), v) {
                            failed = Some(e.into());
                        }
                    }
                }
                Some(&LEASE_PREFIX) if k.len() == 9 && v.len() == 8 => {
                    let id = i64::from_be_bytes(k[1..].try_into().expect("8 bytes"));
                    let ttl = i64::from_be_bytes(v.try_into().expect("8 bytes"));
                    leases.push((id, ttl));
                }
                Some(&META_PREFIX) => meta.push((k[1..].to_vec(), v.to_vec())),
                _ => {}
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        keys.finish()?;
    }
    let meta_of = |name: &str| {
        meta.iter()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| v.as_slice())
    };
    let mut b = w.bucket(LEASE);
    leases.sort_unstable();
    for (id, ttl) in &leases {
        let l = leasepb::Lease {
            id: *id,
            ttl: *ttl,
            remaining_ttl: 0,
        };
        b.put(&id.to_be_bytes(), &l.encode_to_vec())?;
    }
    b.finish()?;

    let mut b = w.bucket(META);
    let applied = meta_of(APPLIED_META)
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0);
    let compacted = view.compacted();
    let mut entries = vec![(b"consistent_index".to_vec(), applied.to_be_bytes().to_vec())];
    if compacted > 0 {
        entries.push((b"finishedCompactRev".to_vec(), compact_rev_value(compacted)));
        entries.push((
            b"scheduledCompactRev".to_vec(),
            compact_rev_value(compacted),
        ));
    }
    entries.sort();
    for (k, v) in &entries {
        b.put(k, v)?;
    }
    b.finish()?;

    let auth: AuthState = meta_of(AUTH_META)
        .map(serde_json::from_slice)
        .transpose()
        .map_err(|e| BackupError::Malformed(format!("the store's auth state: {e}")))?
        .unwrap_or_default();
    write_auth(&mut w, &auth)?;

    let registry: Vec<MemberEntry> = meta_of(MEMBERS_META)
        .and_then(|v| serde_json::from_slice(v).ok())
        .unwrap_or_default();
    let clients: Vec<(u64, Vec<String>)> = meta_of(CLIENTS_META)
        .and_then(|v| serde_json::from_slice(v).ok())
        .unwrap_or_default();
    let mut members: Vec<(Vec<u8>, Vec<u8>)> = registry
        .iter()
        .map(|(id, name, peer_urls)| {
            let client_urls = clients
                .iter()
                .find(|(c, _)| c == id)
                .map(|(_, u)| u.clone())
                .unwrap_or_default();
            let mut m = serde_json::json!({ "id": id, "peerURLs": peer_urls });
            if !name.is_empty() {
                m["name"] = name.clone().into();
            }
            if !client_urls.is_empty() {
                m["clientURLs"] = client_urls.into();
            }
            (format!("{id:x}").into_bytes(), m.to_string().into_bytes())
        })
        .collect();
    members.sort();
    let mut b = w.bucket(MEMBERS);
    for (k, v) in &members {
        b.put(k, v)?;
    }
    b.finish()?;
    w.bucket(MEMBERS_REMOVED).finish()?;
    let mut b = w.bucket(CLUSTER);
    b.put(b"clusterVersion", CLUSTER_VERSION.as_bytes())?;
    b.finish()?;
    w.bucket(ALARM).finish()?;
    let (mut file, len) = w.finish()?;
    file.seek(SeekFrom::Start(0))?;
    Ok((file, len))
}

fn write_auth<W: std::io::Write + Seek>(w: &mut bbolt::Writer<W>, auth: &AuthState) -> Result<()> {
    let mut b = w.bucket(AUTH);
    b.put(b"authEnabled", &[u8::from(auth.enabled)])?;
    b.put(b"authRevision", &auth.revision.to_be_bytes())?;
    b.finish()?;
    let mut b = w.bucket(AUTH_ROLES);
    for (name, role) in &auth.roles {
        let r = authpb::Role {
            name: name.as_bytes().to_vec(),
            key_permission: role
                .perms
                .iter()
                .map(|p| Permission {
                    perm_type: p.kind,
                    key: p.key.clone(),
                    range_end: p.range_end.clone(),
                })
                .collect(),
        };
        b.put(name.as_bytes(), &r.encode_to_vec())?;
    }
    b.finish()?;
    let mut b = w.bucket(AUTH_USERS);
    for (name, user) in &auth.users {
        let u = authpb::User {
            name: name.as_bytes().to_vec(),
            password: user.hash.clone().unwrap_or_default().into_bytes(),
            roles: user.roles.iter().cloned().collect(),
            options: user
                .hash
                .is_none()
                .then_some(authpb::UserAddOptions { no_password: true }),
        };
        b.put(name.as_bytes(), &u.encode_to_vec())?;
    }
    b.finish()?;
    Ok(())
}

/// A snapshot file made from a store: the database then its SHA-256, as etcd sends it.
/// Returns the file (at its start) and its length.
pub fn snapshot_file(view: &BackupView<'_>, dir: Option<&Path>) -> Result<(File, u64)> {
    let tmp = match dir {
        Some(d) => tempfile::tempfile_in(d)?,
        None => tempfile::tempfile()?,
    };
    let (mut file, len) = write_db(view, tmp)?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut (&mut file).take(len), &mut h)?;
    file.seek(SeekFrom::Start(len))?;
    std::io::Write::write_all(&mut file, &h.finalize())?;
    file.seek(SeekFrom::Start(0))?;
    Ok((file, len + 32))
}

/// etcd's test for a hash trailer: the database is whole pages, so its length is a multiple of
/// 512 and 32 more means the hash is there.
fn has_hash(len: u64) -> bool {
    len % 512 == 32
}

/// Opens a snapshot file and checks its hash (unless `skip_hash_check`); returns the file and
/// the length of the database in it.
fn open_checked(path: &Path, skip_hash_check: bool) -> Result<(File, u64)> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let hashed = has_hash(len);
    if !hashed && !skip_hash_check {
        return Err(BackupError::MissingHash);
    }
    let db_len = if hashed { len - 32 } else { len };
    if hashed && !skip_hash_check {
        let mut expected = [0u8; 32];
        f.seek(SeekFrom::Start(db_len))?;
        f.read_exact(&mut expected)?;
        f.seek(SeekFrom::Start(0))?;
        let mut h = sha2::Sha256::new();
        std::io::copy(&mut (&mut f).take(db_len), &mut h)?;
        let got = h.finalize();
        if got.as_slice() != expected {
            return Err(BackupError::HashMismatch {
                expected: hex(&expected),
                got: hex(&got),
            });
        }
    }
    Ok((f, db_len))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `etcdutl snapshot status`: etcd's hash of the database (CRC-32C of every bucket's name,
/// keys and values), its revision, key count and size.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    pub hash: u32,
    pub revision: i64,
    #[serde(rename = "totalKey")]
    pub total_key: usize,
    #[serde(rename = "totalSize")]
    pub total_size: u64,
}

/// Reads a snapshot's (or a backend database's) status, as etcdutl does: no hash check.
pub fn status(path: &Path) -> Result<Status> {
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    let db = bbolt::Reader::open(f, len)?;
    const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    let mut h = CASTAGNOLI.digest();
    let mut revision = 0;
    let mut total_key = 0;
    for (name, root) in db.buckets()? {
        h.update(&name);
        let is_key = name == KEY;
        db.for_each(&root, &mut |k, v, flags| {
            h.update(k);
            if flags & bbolt::BUCKET_LEAF == 0 {
                h.update(v);
            }
            if is_key && k.len() >= 8 {
                revision = u64::from_be_bytes(k[..8].try_into().expect("8 bytes")) as i64;
            }
            total_key += 1;
            Ok(())
        })?;
    }
    Ok(Status {
        hash: h.finalize(),
        revision,
        total_key,
        total_size: db.size(),
    })
}

/// Where [`read_db`] hands the key-values it reads.
pub type RecordSink<'a> = dyn FnMut(Vec<u8>, Vec<u8>) -> Result<()> + 'a;

/// What [`read_db`] found besides the key-values: the snapshot's revision, the other records
/// (leases, compaction, auth: small), and the compaction etcd had scheduled but not finished
/// (the restored store finishes it).
pub struct Loaded {
    pub revision: i64,
    pub key_values: usize,
    pub other: Vec<(Vec<u8>, Vec<u8>)>,
    pub scheduled_compaction: Option<i64>,
}

/// Reads a snapshot, checking its hash and every record; hands each key-value, as a store
/// record, to `key_values` (when given), in revision order. Nothing is written.
pub fn read_db(
    path: &Path,
    skip_hash_check: bool,
    mut key_values: Option<&mut RecordSink<'_>>,
) -> Result<Loaded> {
    let (f, db_len) = open_checked(path, skip_hash_check)?;
    let db = bbolt::Reader::open(f, db_len)?;
    let buckets = db.buckets()?;
    let bad = |what: String| BackupError::Malformed(what);
    let mut other = Vec::new();
    let mut revision = 0;
    let mut count = 0;
    let mut sink_error: Option<BackupError> = None;
    if let Some(root) = bbolt::find(&buckets, KEY) {
        db.for_each(root, &mut |k, v, _| {
            let (rev, tomb) = parse_etcd_rev_key(k).ok_or_else(|| {
                bbolt::BboltError::Corrupt(format!("bucket key: malformed revision {k:02x?}"))
            })?;
            KeyValue::decode(v).map_err(|e| {
                bbolt::BboltError::Corrupt(format!(
                    "bucket key: revision {}/{}: {e}",
                    rev.main, rev.sub
                ))
            })?;
            revision = revision.max(rev.main);
            count += 1;
            if let Some(sink) = key_values.as_mut() {
                if let Err(e) = sink(rev.to_key(tomb).to_vec(), v.to_vec()) {
                    sink_error = Some(e);
                    return Err(bbolt::BboltError::Corrupt("stopped".into()));
                }
            }
            Ok(())
        })
        .map_err(|e| sink_error.take().unwrap_or(e.into()))?;
    }
    if let Some(root) = bbolt::find(&buckets, LEASE) {
        db.for_each(root, &mut |k, v, _| {
            let l = leasepb::Lease::decode(v)
                .map_err(|e| bbolt::BboltError::Corrupt(format!("bucket lease: {e}")))?;
            if k.len() != 8 {
                return Err(bbolt::BboltError::Corrupt(
                    "bucket lease: malformed lease id".into(),
                ));
            }
            let mut key = vec![LEASE_PREFIX];
            key.extend_from_slice(&l.id.to_be_bytes());
            other.push((key, l.ttl.to_be_bytes().to_vec()));
            Ok(())
        })?;
    }
    let mut finished = 0;
    let mut scheduled = 0;
    if let Some(root) = bbolt::find(&buckets, META) {
        db.for_each(root, &mut |k, v, _| {
            let rev = || {
                parse_etcd_rev_key(v).map(|r| r.0.main).ok_or_else(|| {
                    bbolt::BboltError::Corrupt(format!(
                        "bucket meta: malformed {}",
                        String::from_utf8_lossy(k)
                    ))
                })
            };
            match k {
                b"finishedCompactRev" => finished = rev()?,
                b"scheduledCompactRev" => scheduled = rev()?,
                _ => {}
            }
            Ok(())
        })?;
    }
    if finished > 0 {
        other.push((META_COMPACTED.to_vec(), finished.to_be_bytes().to_vec()));
    }
    let auth = read_auth(&db, &buckets)?;
    if auth != AuthState::default() {
        let json = serde_json::to_vec(&auth).map_err(|e| bad(format!("auth state: {e}")))?;
        let mut key = vec![META_PREFIX];
        key.extend_from_slice(AUTH_META.as_bytes());
        other.push((key, json));
    }
    other.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(Loaded {
        revision: revision.max(finished),
        key_values: count,
        other,
        scheduled_compaction: (scheduled > finished).then_some(scheduled),
    })
}

fn read_auth(db: &bbolt::Reader, buckets: &[(Vec<u8>, bbolt::Root)]) -> Result<AuthState> {
    let mut auth = AuthState::default();
    if let Some(root) = bbolt::find(buckets, AUTH) {
        db.for_each(root, &mut |k, v, _| {
            match k {
                b"authEnabled" => auth.enabled = v.first() == Some(&1),
                b"authRevision" if v.len() == 8 => {
                    auth.revision = u64::from_be_bytes(v.try_into().expect("8 bytes"))
                }
                _ => {}
            }
            Ok(())
        })?;
    }
    if let Some(root) = bbolt::find(buckets, AUTH_ROLES) {
        db.for_each(root, &mut |k, v, _| {
            let r = authpb::Role::decode(v)
                .map_err(|e| bbolt::BboltError::Corrupt(format!("bucket authRoles: {e}")))?;
            let mut perms: Vec<Perm> = r
                .key_permission
                .iter()
                .map(|p| Perm {
                    key: p.key.clone(),
                    range_end: p.range_end.clone(),
                    kind: p.perm_type,
                })
                .collect();
            perms.sort();
            auth.roles
                .insert(String::from_utf8_lossy(k).into_owned(), Role { perms });
            Ok(())
        })?;
    }
    if let Some(root) = bbolt::find(buckets, AUTH_USERS) {
        db.for_each(root, &mut |k, v, _| {
            let u = authpb::User::decode(v)
                .map_err(|e| bbolt::BboltError::Corrupt(format!("bucket authUsers: {e}")))?;
            let no_password = u.options.is_some_and(|o| o.no_password) || u.password.is_empty();
            auth.users.insert(
                String::from_utf8_lossy(k).into_owned(),
                User {
                    hash: (!no_password).then(|| String::from_utf8_lossy(&u.password).into_owned()),
                    roles: u.roles.into_iter().collect(),
                },
            );
            Ok(())
        })?;
    }
    Ok(auth)
}

/// What `etcd-lite snapshot restore` makes: a member of a new cluster.
pub struct RestoreTarget {
    pub data_dir: PathBuf,
    /// This member's id and its cluster's id.
    pub member_id: u64,
    pub cluster_id: u64,
    /// Every member of the restored cluster: (id, name, peer URLs).
    pub members: Vec<MemberEntry>,
}

/// Makes `target.data_dir` from the snapshot at `path`. The snapshot is read and checked in
/// full first; the directory is built beside its final name and renamed into place at the
/// end, so a failure leaves nothing behind.
/// Returns the snapshot's revision.
pub fn restore(path: &Path, skip_hash_check: bool, target: &RestoreTarget) -> Result<i64> {
    if target.data_dir.exists() {
        return Err(BackupError::Exists(target.data_dir.clone()));
    }
    // First the whole snapshot is checked, keeping nothing but the small records.
    let loaded = read_db(path, skip_hash_check, None)?;
    let mut tmp = target.data_dir.clone().into_os_string();
    tmp.push(".restoring");
    let tmp = PathBuf::from(tmp);
    if tmp.exists() {
        // Left by a restore that did not finish: nothing else writes there.
        std::fs::remove_dir_all(&tmp)?;
    }
    let built = build_dir(path, &tmp, &loaded, target);
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &target.data_dir)?;
    if let Some(parent) = target.data_dir.parent() {
        if let Ok(d) = File::open(if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        }) {
            let _ = d.sync_all();
        }
    }
    Ok(loaded.revision)
}

/// Builds the data directory in `tmp`: the snapshot's key-values read a second time and
/// written to the new store as they come (memory stays small whatever the snapshot's size),
/// then the other records and this member's identity.
fn build_dir(path: &Path, tmp: &Path, loaded: &Loaded, target: &RestoreTarget) -> Result<()> {
    std::fs::create_dir_all(tmp)?;
    let (store, _) = MvccStore::open(&tmp.join("member"), 64 << 20)?;
    let mut failed = None;
    store
        .fill_from(|put| {
            let mut sink = |k: Vec<u8>, v: Vec<u8>| -> Result<()> { Ok(put(k, v)?) };
            if let Err(e) = read_db(path, true, Some(&mut sink)) {
                failed = Some(e);
                return Err(crate::error::EtcdError::Storage(
                    "reading the snapshot".into(),
                ));
            }
            for (k, v) in &loaded.other {
                put(k.clone(), v.clone())?;
            }
            Ok(())
        })
        .map_err(|e| failed.take().unwrap_or(e.into()))?;
    let registry = serde_json::to_vec(&target.members)
        .map_err(|e| BackupError::Malformed(format!("member list: {e}")))?;
    store.set_meta(MEMBERS_META, &registry)?;
    let mut identity = target.member_id.to_be_bytes().to_vec();
    identity.extend_from_slice(&target.cluster_id.to_be_bytes());
    store.set_meta("member_id", &identity)?;
    if let Some(at) = loaded.scheduled_compaction {
        store.compact(at)?;
    }
    store.flush()?;
    drop(store);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_keys_are_etcds() {
        let k = etcd_rev_key(Revision { main: 5, sub: 2 }, true);
        assert_eq!(
            k,
            [0, 0, 0, 0, 0, 0, 0, 5, b'_', 0, 0, 0, 0, 0, 0, 0, 2, b't']
        );
        assert_eq!(
            parse_etcd_rev_key(&k),
            Some((Revision { main: 5, sub: 2 }, true))
        );
        assert_eq!(
            parse_etcd_rev_key(&k[..17]),
            Some((Revision { main: 5, sub: 2 }, false))
        );
        assert_eq!(parse_etcd_rev_key(b"not a revision"), None);
    }

    #[test]
    fn the_hash_trailer_is_found_by_length() {
        assert!(has_hash(4096 * 5 + 32));
        assert!(!has_hash(4096 * 5));
        assert!(!has_hash(4096 * 5 + 31));
    }
}
