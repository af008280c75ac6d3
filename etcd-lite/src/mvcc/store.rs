//! The revisioned key-value store: values in sled addressed by revision, the key index in memory.
//!
//! Durability: the caller (the applier) calls [`MvccStore::flush`] after a group of write
//! transactions: the group becomes one write-ahead log record and one fdatasync, before anything
//! is acknowledged or *published*. Readers always read at the published revision, so nobody ever
//! observes a write that a crash could still take back.
//!
//! sled is written behind the log: synced groups sit in an in-memory overlay that readers consult
//! first; every [`APPLY_EVERY`] changes the overlay is frozen and a background thread writes it to
//! sled in one large atomic batch (sled's cost is per batch), while readers still see it. So
//! sled's content is always a prefix of what the log made durable, and the writer never waits
//! for sled except at compactions and log checkpoints.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use etcd_api::mvccpb::{event::EventType, Event, KeyValue};
use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use prost::Message;

use super::image;
use super::index::{KeyIndex, KeyRange, Live};
use super::revision::{Revision, LEASE_PREFIX, META_PREFIX};
use crate::durable::SledFiles;
use crate::error::{EtcdError, Result};
use crate::wal::{body_len as wal_body_len, to_batch, Change, Wal, CHECKPOINT_BYTES, MAX_RECORD};

const META_COMPACTED: &[u8] = b"mcompacted";
/// Synced changes held in the overlay before they are written to sled in one batch.
pub const APPLY_EVERY: usize = 2048;

/// What [`MvccStore::open`] found besides the key space: persisted leases and, for every live
/// key with a lease, that attachment.
#[derive(Debug, Default)]
pub struct Recovered {
    /// (lease id, granted TTL in seconds)
    pub leases: Vec<(i64, i64)>,
    /// (key, lease id) of live keys that carry a lease.
    pub attached: Vec<(Vec<u8>, i64)>,
}

/// The index and the revision counters, guarded together.
#[derive(Debug)]
pub struct State {
    pub index: KeyIndex,
    /// Revision of the last committed (maybe not yet published) write transaction.
    pub current: i64,
    /// Revision of the last compaction; reads below it fail.
    pub compacted: i64,
}

/// The store. Cheap to share behind an `Arc`.
pub struct MvccStore {
    /// The sled database; replaced whole by a defragmentation (see [`MvccStore::defragment`]).
    sled: Arc<RwLock<Arc<Sled>>>,
    /// `None` for a temporary (test) store.
    wal: parking_lot::Mutex<Option<Wal>>,
    /// Committed transactions of the current group, not yet in the log (writer only).
    staged: parking_lot::Mutex<Staged>,
    /// Logged and synced changes not yet in sled; readers look here first.
    overlay: RwLock<Overlay>,
    /// A frozen overlay the background thread is writing to sled; readers look here second.
    applying: Arc<RwLock<Option<Arc<Overlay>>>>,
    /// Hands frozen overlays (and defragmentations) to the background thread (taken on drop
    /// to stop it).
    to_sled: Option<std::sync::mpsc::SyncSender<Job>>,
    /// Set by a defragmentation: the next flush or sync restarts the log (a checkpoint).
    checkpoint_soon: std::sync::atomic::AtomicBool,
    /// Held (shared) by backups while they read; compactions and restores, which remove
    /// records, take it exclusively.
    backup_lock: RwLock<()>,
    sled_writer: Option<std::thread::JoinHandle<()>>,
    state: RwLock<State>,
    published: AtomicI64,
    /// Log size that triggers a checkpoint ([`CHECKPOINT_BYTES`] unless a test lowers it).
    checkpoint_bytes: std::sync::atomic::AtomicU64,
    /// Sync the log only before sled is written (see [`MvccStore::set_lazy_sync`]).
    lazy_sync: std::sync::atomic::AtomicBool,
    /// Snapshots from this size on are restored in place rather than through the log.
    log_record_max: usize,
    /// Size of the last snapshot made: the next one allocates that much (and a bit) at once.
    snapshot_len: std::sync::atomic::AtomicUsize,
    /// Where the index image goes (none for a store in memory).
    dir: Option<std::path::PathBuf>,
}

/// The sled database in use, with what is needed to sync it and to replace it.
pub struct Sled {
    db: sled::Db,
    /// sled's files, synced after its flush before the log lets go of anything (`None` for a
    /// temporary store).
    files: Option<SledFiles>,
    /// sled's directory (`None` for a temporary store).
    path: Option<std::path::PathBuf>,
    cache_bytes: u64,
}

impl Sled {
    fn sync(&self) -> Result<()> {
        sync_sled(&self.db, self.files.as_ref())
    }
}

/// Work for the background sled thread.
enum Job {
    Apply(Arc<Overlay>),
    Defragment(std::sync::mpsc::Sender<Result<Defragmented>>),
}

/// See [`MvccStore::backup_view`].
pub struct BackupView<'a> {
    _no_compaction: parking_lot::RwLockReadGuard<'a, ()>,
    db: sled::Db,
    rev: i64,
    compacted: i64,
    /// The key-value records of the overlays when the view was taken.
    kv_overlay: Overlay,
    /// Lease and metadata records, copied.
    rest: Vec<(Vec<u8>, Vec<u8>)>,
}

impl BackupView<'_> {
    /// The revision the view is at.
    pub fn rev(&self) -> i64 {
        self.rev
    }

    pub fn compacted(&self) -> i64 {
        self.compacted
    }

    /// Calls `f` with every record (key-values by revision, then leases, then metadata) in key
    /// order.
    pub fn for_each_record(&self, mut f: impl FnMut(&[u8], &[u8])) -> Result<()> {
        let rev = self.rev;
        merge_from(
            &self.db,
            &self.kv_overlay,
            &[super::revision::KV_PREFIX],
            |k, v| {
                if Revision::from_key(k).is_some_and(|(r, _)| r.main <= rev) {
                    f(k, v);
                }
                Ok(())
            },
        )?;
        for (k, v) in &self.rest {
            f(k, v);
        }
        Ok(())
    }
}

/// What a defragmentation did: sled's size on disk before and after.
#[derive(Debug, Clone, Copy)]
pub struct Defragmented {
    pub before: u64,
    pub after: u64,
    pub took: std::time::Duration,
}

#[derive(Default)]
struct Staged {
    changes: Vec<Change>,
    pending: HashMap<Revision, KeyValue>,
}

/// Synced changes waiting for sled: the newest value of each sled key they touch (`None`:
/// removed). Only the end state goes to sled (recovery replays the log, not the overlay), so
/// a key written many times is written to sled once, and in key order.
#[derive(Default)]
struct Overlay {
    records: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Overlay {
    fn get(&self, key: &[u8]) -> Option<Option<&Vec<u8>>> {
        self.records.get(key).map(Option::as_ref)
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Takes `changes` in order: the last change of each key wins.
    fn extend(&mut self, changes: impl IntoIterator<Item = Change>) {
        for (k, v) in changes {
            self.records.insert(k, v);
        }
    }
}

/// A consistent read of the store at one revision.
pub struct ReadView<'a> {
    store: &'a MvccStore,
    state: RwLockReadGuard<'a, State>,
    overlay: RwLockReadGuard<'a, Overlay>,
    applying: Option<Arc<Overlay>>,
    /// The revision this view reads at by default (the published one).
    pub rev: i64,
}

/// One write transaction: all its changes share one main revision and land in sled as one batch.
pub struct WriteTxn<'a> {
    store: &'a MvccStore,
    state: RwLockWriteGuard<'a, State>,
    rev: i64,
    sub: i64,
    changes: Vec<Change>,
    pending: HashMap<Revision, KeyValue>,
    events: Vec<Event>,
    lease_moves: Vec<LeaseMove>,
    dirty: bool,
}

/// A key that left a lease, joined one, or both (0: no lease).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseMove {
    pub key: Vec<u8>,
    pub from: i64,
    pub to: i64,
}

/// What a committed write transaction changed.
#[derive(Debug, Default)]
pub struct Committed {
    /// The new revision, or `None` if the transaction changed no key.
    pub rev: Option<i64>,
    /// One event per change. A deletion's `prev_kv` is filled; a put's only when the put
    /// read it (see [`WriteTxn::put`]).
    pub events: Vec<Event>,
    /// The keys whose lease changed, in order.
    pub lease_moves: Vec<LeaseMove>,
}

fn missing(rev: Revision, how: &str) -> EtcdError {
    EtcdError::Storage(format!(
        "index points at {how} revision {}.{}",
        rev.main, rev.sub
    ))
}

fn decode(bytes: &[u8]) -> Result<KeyValue> {
    Ok(KeyValue::decode(bytes)?)
}

/// A stored `mvccpb.KeyValue` without its value: what rebuilding the index at start needs. The
/// value, most of a record's bytes, is skipped by the decoder instead of copied.
#[derive(Clone, PartialEq, prost::Message)]
struct KeyMeta {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(int64, tag = "2")]
    create_revision: i64,
    #[prost(int64, tag = "4")]
    version: i64,
    #[prost(int64, tag = "6")]
    lease: i64,
}

/// Flushes sled and makes it durable (power loss included: see [`crate::durable`]); values
/// may be blob-sized, so the whole filesystem is synced. Only on rare paths: replay,
/// checkpoints, compactions and metadata.
fn sync_sled(db: &sled::Db, files: Option<&SledFiles>) -> Result<()> {
    match files {
        Some(f) => f
            .sync(db)
            .map_err(|e| EtcdError::Storage(format!("syncing the store: {e}"))),
        None => Ok(db.flush().map(drop)?),
    }
}

/// Metadata naming this store's data: a restored snapshot replaces it (in the same write), so an
/// index image of the data before cannot be taken for the data after.
pub const EPOCH_META: &str = "epoch";

fn decode_epoch(v: Option<&[u8]>) -> u64 {
    v.and_then(|v| v.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// A new epoch, unlike the ones before it.
fn new_epoch() -> Vec<u8> {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (t ^ u64::from(std::process::id()).rotate_left(40) | 1)
        .to_be_bytes()
        .to_vec()
}

/// Builds the in-memory state from the store's key-value records, given in key order
/// (revision order), then the compaction record and the lease records.
struct IndexBuilder {
    index: KeyIndex,
    current: i64,
}

impl IndexBuilder {
    fn new() -> Self {
        IndexBuilder {
            index: KeyIndex::default(),
            current: 1,
        }
    }

    /// Goes on from an index image that covers every record up to revision `covered`.
    fn from_image(index: KeyIndex, covered: i64) -> Self {
        IndexBuilder {
            index,
            current: covered.max(1),
        }
    }

    fn add(&mut self, k: &[u8], v: &[u8]) -> Result<()> {
        let (rev, tombstone) = Revision::from_key(k)
            .ok_or_else(|| EtcdError::Storage("malformed revision key".into()))?;
        let kv = KeyMeta::decode(v)?;
        let live = (!tombstone).then_some(Live {
            rev,
            create_revision: kv.create_revision,
            version: kv.version,
            lease: kv.lease,
        });
        self.index.record(&kv.key, rev, live);
        self.current = self.current.max(rev.main);
        Ok(())
    }

    fn finish<K, V>(
        self,
        compacted: Option<&[u8]>,
        lease_records: impl Iterator<Item = (K, V)>,
    ) -> Result<(State, Recovered)>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let compacted = decode_compacted(compacted)?;
        let mut leases = Vec::new();
        for (k, v) in lease_records {
            let (id, ttl) = (decode_i64(&k.as_ref()[1..])?, decode_i64(v.as_ref())?);
            leases.push((id, ttl));
        }
        let attached = self.index.attached();
        Ok((
            State {
                index: self.index,
                current: self.current.max(compacted),
                compacted,
            },
            Recovered { leases, attached },
        ))
    }
}

fn decode_compacted(v: Option<&[u8]>) -> Result<i64> {
    match v {
        Some(v) => Ok(i64::from_be_bytes(v.try_into().map_err(|_| {
            EtcdError::Storage("malformed compaction record".into())
        })?)),
        None => Ok(0),
    }
}

/// Calls `f` with every record whose key starts with `prefix`, in key order: sled's, with the
/// changes of `overlay` laid over them (an overlay removal hides the sled record).
fn merge_prefix(
    db: &sled::Db,
    overlay: &Overlay,
    prefix: u8,
    f: impl FnMut(&[u8], &[u8]) -> Result<()>,
) -> Result<()> {
    merge_from(db, overlay, &[prefix], f)
}

/// [`merge_prefix`] for the records from key `start` on that share its first byte.
fn merge_from(
    db: &sled::Db,
    overlay: &Overlay,
    start: &[u8],
    mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
) -> Result<()> {
    let prefix = start[0];
    let mut ov = overlay
        .records
        .range(start.to_vec()..)
        .take_while(|(k, _)| k.first() == Some(&prefix))
        .peekable();
    let in_prefix = |item: &sled::Result<(sled::IVec, sled::IVec)>| {
        item.as_ref()
            .map_or(true, |(k, _)| k.first() == Some(&prefix))
    };
    for item in db.range(start..).take_while(in_prefix) {
        let (k, v) = item?;
        while let Some((ok, ovv)) = ov.next_if(|(ok, _)| ok.as_slice() < &k[..]) {
            if let Some(ovv) = ovv {
                f(ok, ovv)?;
            }
        }
        if let Some((_, ovv)) = ov.next_if(|(ok, _)| ok.as_slice() == &k[..]) {
            if let Some(ovv) = ovv {
                f(&k, ovv)?;
            }
            continue;
        }
        f(&k, &v)?;
    }
    for (ok, ovv) in ov {
        if let Some(ovv) = ovv {
            f(ok, ovv)?;
        }
    }
    Ok(())
}

impl MvccStore {
    /// Opens (or creates) the store in directory `dir` (sled in `dir/kv`, the log in `dir/wal`),
    /// replays the log and rebuilds the index from the records.
    pub fn open(dir: &std::path::Path, cache_bytes: u64) -> Result<(Self, Recovered)> {
        let started = std::time::Instant::now();
        std::fs::create_dir_all(dir)
            .map_err(|e| EtcdError::Storage(format!("creating {}: {e}", dir.display())))?;
        // The index image and the log are read while sled opens: three files, three threads.
        let image_file = dir.join(image::FILE);
        let reading_image = std::thread::spawn(move || {
            let t0 = std::time::Instant::now();
            let image = std::fs::read(image_file).ok().and_then(|b| {
                let img = image::decode(&b);
                if img.is_none() {
                    tracing::info!("the index image does not check out; reading every record");
                }
                img
            });
            (image, t0.elapsed())
        });
        let wal_file = dir.join("wal");
        let reading_wal = std::thread::spawn(move || -> Result<_> {
            let t0 = std::time::Instant::now();
            let (wal, records) = Wal::open(&wal_file)?;
            let read = t0.elapsed();
            // The log's records go to the overlay, as if just logged: the member serves at
            // once and the background writer gives them to sled. The log keeps them until the
            // next checkpoint, so a crash before sled has them all replays them again.
            let count = records.len();
            let mut replayed = Overlay::default();
            replayed.extend(records.into_iter().flatten());
            Ok((wal, replayed, count, read, t0.elapsed()))
        });
        let kv = current_sled_dir(dir)?;
        let db = open_sled(&kv, cache_bytes)?;
        let sled_ms = started.elapsed().as_millis() as u64;
        let files = SledFiles::open(&kv)
            .map_err(|e| EtcdError::Storage(format!("opening the store's files: {e}")))?;
        let sled = Sled {
            db,
            files: Some(files),
            path: Some(kv),
            cache_bytes,
        };
        let (wal, replayed, count, read, replay) = reading_wal
            .join()
            .map_err(|_| EtcdError::Storage("reading the write-ahead log panicked".into()))??;
        if count > 0 {
            tracing::info!(
                records = count,
                keys = replayed.records.len(),
                took_ms = (replay - read).as_millis() as u64,
                "replayed the write-ahead log"
            );
        }
        let (image, image_took) = reading_image
            .join()
            .map_err(|_| EtcdError::Storage("reading the index image panicked".into()))?;
        tracing::debug!(
            sled_ms,
            wal_ms = read.as_millis() as u64,
            replay_ms = replay.as_millis() as u64,
            image_ms = image_took.as_millis() as u64,
            image = image.is_some(),
            waited_ms = started.elapsed().as_millis() as u64,
            "store files opened"
        );
        let loading = std::time::Instant::now();
        let base = wal.base();
        let (mut store, recovered) = Self::from_db(sled, Some(wal), replayed, image, base)?;
        tracing::debug!(
            took_ms = loading.elapsed().as_millis() as u64,
            "index and leases loaded"
        );
        store.dir = Some(dir.to_path_buf());
        Ok((store, recovered))
    }

    /// A store in memory only (tests).
    pub fn temporary() -> Result<Self> {
        let sled = Sled {
            db: sled::Config::new().temporary(true).open()?,
            files: None,
            path: None,
            cache_bytes: 0,
        };
        Ok(Self::from_db(sled, None, Overlay::default(), None, None)?.0)
    }

    /// Builds the in-memory state (key index, revisions) and the lease records from sled and
    /// the changes of `overlay` (not yet in sled) laid over it. With a usable index `image`,
    /// only the records written after it are read: from the replayed log alone when the log
    /// starts at or before the image (`wal_base`, the revision at the log's last reset), since
    /// sled then holds no record after the image that the log does not.
    fn load(
        db: &sled::Db,
        overlay: &Overlay,
        image: Option<image::Image>,
        wal_base: Option<i64>,
    ) -> Result<(State, Recovered)> {
        let stored = |key: &[u8]| -> Result<Option<Vec<u8>>> {
            Ok(match overlay.get(key) {
                Some(v) => v.cloned(),
                None => db.get(key)?.map(|v| v.to_vec()),
            })
        };
        let compacted = stored(META_COMPACTED)?;
        let compacted_rev = decode_compacted(compacted.as_deref())?;
        let epoch = decode_epoch(stored(&meta_key(EPOCH_META))?.as_deref());
        let mut leases = Vec::new();
        merge_prefix(db, overlay, LEASE_PREFIX, |k, v| {
            leases.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        // A compaction after the image may have removed records newer than the image that
        // the image's keys need (a deletion, say): then the image cannot be completed.
        let usable = image.filter(|img| {
            let ok = img.epoch == epoch
                && img.compacted <= compacted_rev
                && compacted_rev <= img.covered;
            if !ok {
                tracing::info!(
                    image_epoch = img.epoch,
                    epoch,
                    image_covered = img.covered,
                    compacted = compacted_rev,
                    "the index image is of other data or older than a compaction; reading every record"
                );
            }
            ok
        });
        let index = match usable {
            Some(img) => {
                let mut index = IndexBuilder::from_image(img.index, img.covered);
                let from = Revision::lower_bound(img.covered + 1);
                if wal_base.is_some_and(|b| b <= img.covered) {
                    for (k, v) in overlay.records.range(from.to_vec()..) {
                        if k.first() != Some(&super::revision::KV_PREFIX) {
                            break;
                        }
                        if let Some(v) = v {
                            index.add(k, v)?;
                        }
                    }
                } else {
                    merge_from(db, overlay, &from, |k, v| index.add(k, v))?;
                }
                if compacted_rev > img.compacted {
                    index.index.compact(compacted_rev);
                }
                index
            }
            None => {
                let mut index = IndexBuilder::new();
                merge_prefix(db, overlay, super::revision::KV_PREFIX, |k, v| {
                    index.add(k, v)
                })?;
                index
            }
        };
        index.finish(compacted.as_deref(), leases.iter().map(|(k, v)| (k, v)))
    }

    /// Writes an image of the index (after a checkpoint: sled then holds every record it
    /// covers). A failure only costs the next restart its speed.
    fn write_image(&self) {
        let Some(dir) = &self.dir else {
            return;
        };
        let t0 = std::time::Instant::now();
        let epoch = match self.record(&meta_key(EPOCH_META)) {
            Ok(v) => decode_epoch(v.as_deref()),
            Err(e) => {
                tracing::warn!(error = %e, "reading the store's epoch; no index image");
                return;
            }
        };
        let bytes = {
            let st = self.state.read();
            image::encode(&st.index, st.current, st.compacted, epoch)
        };
        match image::write(dir, &bytes) {
            Ok(()) => tracing::debug!(
                bytes = bytes.len(),
                took_ms = t0.elapsed().as_millis() as u64,
                "index image written"
            ),
            Err(e) => tracing::warn!(error = %e, "writing the index image"),
        }
    }

    /// Replaces the whole store with a snapshot's records (a raft snapshot from the leader),
    /// keeping this member's own metadata named in `keep_meta`. Readers see the new state once
    /// it is complete.
    ///
    /// The replacement is one write-ahead log record (removals of every old record, then the
    /// snapshot's records), synced before this returns, and goes to sled behind it like any
    /// other group: so the member serves as soon as the snapshot is on disk once, instead of
    /// waiting for sled (about 10 µs a record). A crash before sled has it all replays the
    /// record. Only a snapshot too large for one record is written to sled in place.
    pub fn restore_snapshot(&self, data: &[u8], keep_meta: &[&str]) -> Result<Recovered> {
        self.restore_records(parse_snapshot(data)?, keep_meta)
    }

    /// Fills a new, empty store (a restored backup) with the records `source` hands to `put`,
    /// in any order: written to sled a batch at a time as they come, not through the log (not
    /// atomic: only for a store no member runs on yet). The index is then read from sled, as
    /// at a restart.
    pub fn fill_from(
        &self,
        source: impl FnOnce(&mut dyn FnMut(Vec<u8>, Vec<u8>) -> Result<()>) -> Result<()>,
    ) -> Result<()> {
        let _no_backup = self.backup_lock.write();
        self.apply_overlay()?;
        let sled = self.sled();
        if sled.db.iter().next().is_some() {
            return Err(EtcdError::Storage(
                "filling a store that has records".into(),
            ));
        }
        if let Some(dir) = &self.dir {
            image::remove(dir);
        }
        let mut batch = sled::Batch::default();
        let mut n = 0usize;
        source(&mut |k, v| {
            batch.insert(k, v);
            n += 1;
            if n.is_multiple_of(4096) {
                sled.db.apply_batch(std::mem::take(&mut batch))?;
            }
            Ok(())
        })?;
        batch.insert(meta_key(EPOCH_META), new_epoch());
        sled.db.apply_batch(batch)?;
        sled.sync()?;
        let (state, _) = Self::load(&sled.db, &Overlay::default(), None, None)?;
        let current = state.current;
        *self.state.write() = state;
        self.published.store(current, Ordering::Release);
        Ok(())
    }

    /// Replaces the store's content with `records` (sled keys and values, as a snapshot
    /// lists them), keeping the metadata named in `keep_meta`.
    pub fn restore_records(
        &self,
        mut records: Vec<(Vec<u8>, Vec<u8>)>,
        keep_meta: &[&str],
    ) -> Result<Recovered> {
        let _no_backup = self.backup_lock.write();
        let t0 = std::time::Instant::now();
        // The image is of the data being replaced (the new epoch would refuse it anyway).
        if let Some(dir) = &self.dir {
            image::remove(dir);
        }
        let size: usize = records.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
        // Snapshots list records in key order; sorting (linear then) guarantees it for the
        // index built below and the lookups of the replacement.
        records.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        // The store will hold exactly the snapshot's records (and this member's kept
        // metadata, none of it key-values or leases): the state comes from them, in memory.
        let mut index = IndexBuilder::new();
        for (k, v) in &records {
            if k.first() == Some(&super::revision::KV_PREFIX) {
                index.add(k, v)?;
            }
        }
        let (state, recovered) = index.finish(
            records
                .iter()
                .find(|(k, _)| k.as_slice() == META_COMPACTED)
                .map(|(_, v)| v.as_slice()),
            records
                .iter()
                .filter(|(k, _)| k.first() == Some(&LEASE_PREFIX))
                .map(|(k, v)| (k, v)),
        )?;
        let (parsed, count) = (t0.elapsed(), records.len());
        self.log_staged()?;
        let kept: Vec<Vec<u8>> = keep_meta.iter().map(|n| meta_key(n)).collect();
        let via_log = self.wal.lock().is_some() && size < self.log_record_max;
        if via_log {
            self.replace_through_log(records, &kept)?;
        } else {
            self.replace_in_place(&records, &kept)?;
        }
        let written = t0.elapsed();
        let current = state.current;
        *self.state.write() = state;
        self.published.store(current, Ordering::Release);
        tracing::debug!(
            parse_ms = parsed.as_millis() as u64,
            records = count,
            write_ms = (written - parsed).as_millis() as u64,
            via_log,
            "store restored from a snapshot"
        );
        Ok(recovered)
    }

    /// The current value of sled key `k`: the overlays' version, else sled's.
    fn record(&self, k: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.overlay.read().get(k) {
            return Ok(v.cloned());
        }
        if let Some(v) = self.applying.read().as_ref().and_then(|a| a.get(k)) {
            return Ok(v.cloned());
        }
        let got = self.get_sled(k)?;
        Ok(got.map(|v| v.to_vec()))
    }

    /// Restore through the write-ahead log: one record that turns the store into exactly
    /// `records` plus the `kept` keys it has (removals of every other record, in sled or in the
    /// overlays, then the records, then the kept keys again), synced, then into the overlay.
    fn replace_through_log(
        &self,
        records: Vec<(Vec<u8>, Vec<u8>)>,
        kept: &[Vec<u8>],
    ) -> Result<()> {
        let stays = |k: &[u8]| {
            kept.iter().any(|m| m.as_slice() == k)
                || records
                    .binary_search_by(|(rk, _)| rk.as_slice().cmp(k))
                    .is_ok()
        };
        let mut changes = Vec::new();
        for k in self.db().iter().keys() {
            let k = k?;
            if !stays(&k) {
                changes.push((k.to_vec(), None));
            }
        }
        {
            let applying = self.applying.read().clone();
            let overlay = self.overlay.read();
            let layers = applying.iter().flat_map(|a| a.records.iter());
            for (k, v) in layers.chain(overlay.records.iter()) {
                if v.is_some() && !stays(k) {
                    changes.push((k.clone(), None));
                }
            }
        }
        let mut ours = Vec::new();
        for k in kept {
            if let Some(v) = self.record(k)? {
                ours.push((k.clone(), Some(v)));
            }
        }
        let total = wal_body_len(&changes)
            + wal_body_len(&ours)
            + records
                .iter()
                .map(|(k, v)| 9 + k.len() + v.len())
                .sum::<usize>();
        if total > MAX_RECORD {
            return self.replace_in_place(&records, kept);
        }
        changes.extend(records.into_iter().map(|(k, v)| (k, Some(v))));
        changes.extend(ours);
        changes.push((meta_key(EPOCH_META), Some(new_epoch())));
        let t0 = std::time::Instant::now();
        if let Some(w) = self.wal.lock().as_mut() {
            w.append(&changes);
            let t1 = std::time::Instant::now();
            w.sync()?;
            tracing::debug!(
                append_ms = (t1 - t0).as_millis() as u64,
                sync_ms = t1.elapsed().as_millis() as u64,
                "snapshot logged"
            );
        }
        let t2 = std::time::Instant::now();
        self.overlay.write().extend(changes);
        self.start_apply();
        tracing::debug!(
            overlay_ms = t2.elapsed().as_millis() as u64,
            "snapshot in the overlay"
        );
        Ok(())
    }

    /// Restore straight into sled: one atomic batch, then sled is synced and the log restarts.
    fn replace_in_place(&self, records: &[(Vec<u8>, Vec<u8>)], kept: &[Vec<u8>]) -> Result<()> {
        self.apply_overlay()?;
        let kept: Vec<(&Vec<u8>, sled::IVec)> = kept
            .iter()
            .filter_map(|k| Some((k, self.db().get(k).ok()??)))
            .collect();
        let mut batch = sled::Batch::default();
        for k in self.db().iter().keys() {
            batch.remove(k?);
        }
        for (k, v) in records {
            batch.insert(k.as_slice(), v.as_slice());
        }
        for (k, v) in kept {
            batch.insert(k.as_slice(), v);
        }
        batch.insert(meta_key(EPOCH_META), new_epoch());
        let sled = self.sled();
        sled.db.apply_batch(batch)?;
        sled.sync()?;
        if let Some(w) = self.wal.lock().as_mut() {
            w.reset(None)?;
        }
        Ok(())
    }

    /// Makes snapshots larger than `n` bytes restore in place (tests).
    #[cfg(test)]
    pub fn set_log_record_max(&mut self, n: usize) {
        self.log_record_max = n;
    }

    fn from_db(
        sled: Sled,
        wal: Option<Wal>,
        replayed: Overlay,
        image: Option<image::Image>,
        wal_base: Option<i64>,
    ) -> Result<(Self, Recovered)> {
        let (state, recovered) = Self::load(&sled.db, &replayed, image, wal_base)?;
        let current = state.current;
        let applying: Arc<RwLock<Option<Arc<Overlay>>>> = Arc::default();
        let (to_sled, jobs) = std::sync::mpsc::sync_channel::<Job>(1);
        let sled = Arc::new(RwLock::new(Arc::new(sled)));
        let sled_writer = {
            let (sled, applying) = (sled.clone(), applying.clone());
            std::thread::Builder::new()
                .name("etcd-sled-writer".into())
                .spawn(move || {
                    while let Ok(job) = jobs.recv() {
                        match job {
                            Job::Apply(ov) => {
                                let db = sled.read().db.clone();
                                if let Err(e) = write_through(&db, &ov.records) {
                                    tracing::error!(error = %e, "writing to sled failed; stopping to protect the data");
                                    std::process::exit(70);
                                }
                            }
                            Job::Defragment(reply) => {
                                let _ = reply.send(defragment(&sled));
                            }
                        }
                        *applying.write() = None;
                    }
                })
                .map_err(|e| EtcdError::Storage(format!("starting the sled writer: {e}")))?
        };
        let store = MvccStore {
            sled,
            checkpoint_soon: Default::default(),
            backup_lock: RwLock::new(()),
            wal: parking_lot::Mutex::new(wal),
            staged: parking_lot::Mutex::new(Staged::default()),
            overlay: RwLock::new(replayed),
            applying,
            to_sled: Some(to_sled),
            sled_writer: Some(sled_writer),
            state: RwLock::new(state),
            published: AtomicI64::new(current),
            checkpoint_bytes: std::sync::atomic::AtomicU64::new(CHECKPOINT_BYTES),
            lazy_sync: std::sync::atomic::AtomicBool::new(false),
            log_record_max: MAX_RECORD,
            snapshot_len: std::sync::atomic::AtomicUsize::new(0),
            dir: None,
        };
        // Replayed changes go to sled in the background, behind the synced log.
        store.sync_wal()?;
        store.start_apply();
        Ok((store, recovered))
    }

    /// The sled database in use.
    fn sled(&self) -> Arc<Sled> {
        self.sled.read().clone()
    }

    fn db(&self) -> sled::Db {
        self.sled.read().db.clone()
    }

    /// One lookup in sled: the read path's, without cloning the database handle.
    fn get_sled(&self, key: &[u8]) -> Result<Option<sled::IVec>> {
        let sled = self.sled.read();
        Ok(sled.db.get(key)?)
    }

    /// Rewrites sled's files with only what the store holds now, giving back the space that
    /// deleted and compacted records took (etcd's defragmentation). The background sled thread
    /// copies the records into a new database while writes go on: they wait in the overlay,
    /// which readers consult first, as they do whenever that thread is busy. Then the new
    /// database replaces the old one and the next flush restarts the write-ahead log.
    /// Compactions wait for the copy to end; nothing else does.
    pub fn defragment(&self) -> Result<Defragmented> {
        let (reply, done) = std::sync::mpsc::channel();
        let mut job = Some(Job::Defragment(reply));
        while let Some(j) = job.take() {
            let ov = self.overlay.write();
            let mut applying = self.applying.write();
            if applying.is_some() {
                // An overlay is being written: take the next turn.
                job = Some(j);
                drop(applying);
                drop(ov);
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
            // Marks the thread busy (an empty frozen overlay changes no reader's view).
            *applying = Some(Arc::default());
            drop(applying);
            drop(ov);
            let sent = self.to_sled.as_ref().map(|tx| tx.send(j));
            if !matches!(sent, Some(Ok(()))) {
                *self.applying.write() = None;
                return Err(EtcdError::Stopped);
            }
        }
        let done = done
            .recv()
            .map_err(|_| EtcdError::Storage("the sled writer stopped".into()))??;
        self.checkpoint_soon.store(true, Ordering::Relaxed);
        Ok(done)
    }

    /// A consistent copy of the store at the published revision for a backup, read without
    /// holding the store's locks: the leases, metadata and the overlays' key-values are copied
    /// at once (they are small), then sled's key-values are read as the backup goes, skipping
    /// revisions written since. Revision records never change once written; only compactions
    /// and restores remove them, and they wait until the view is dropped.
    pub fn backup_view(&self) -> Result<BackupView<'_>> {
        let no_compaction = self.backup_lock.read();
        let view = self.read();
        let kv = |r: &Overlay| -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
            r.records
                .range(vec![super::revision::KV_PREFIX]..vec![super::revision::KV_PREFIX + 1])
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let mut kv_overlay = Overlay::default();
        if let Some(a) = &view.applying {
            kv_overlay.extend(kv(a));
        }
        kv_overlay.extend(kv(&view.overlay));
        let mut rest = Vec::new();
        view.for_each_record_from(&[LEASE_PREFIX], |k, v| rest.push((k.to_vec(), v.to_vec())))?;
        let (rev, compacted) = (view.rev, view.state.compacted);
        let db = self.db();
        drop(view);
        Ok(BackupView {
            _no_compaction: no_compaction,
            db,
            rev,
            compacted,
            kv_overlay,
            rest,
        })
    }

    /// The newest revision readers may see.
    pub fn published(&self) -> i64 {
        self.published.load(Ordering::Acquire)
    }

    /// Makes revisions up to `rev` visible to readers. Call only after they are durable.
    pub fn publish(&self, rev: i64) {
        self.published.fetch_max(rev, Ordering::AcqRel);
    }

    /// Logs the staged group (one record, one fdatasync) and moves it into the overlay, where
    /// readers see it. Without a log (temporary stores) the overlay is the only copy until
    /// [`MvccStore::apply_overlay`].
    pub fn log_staged(&self) -> Result<()> {
        let staged = std::mem::take(&mut *self.staged.lock());
        if let Some(w) = self.wal.lock().as_mut() {
            if !staged.changes.is_empty() {
                w.append(&staged.changes);
            }
            if !self.lazy_sync.load(Ordering::Relaxed) {
                w.sync()?;
            }
        }
        if staged.changes.is_empty() {
            return Ok(());
        }
        self.overlay.write().extend(staged.changes);
        Ok(())
    }

    /// Waits until the background thread has written the frozen overlay, if any.
    fn wait_applied(&self) {
        while self.applying.read().is_some() {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }

    /// Freezes the overlay and hands it to the background thread, unless it is still busy with
    /// the previous one or a defragmentation (then the overlay keeps growing until the next
    /// call).
    fn start_apply(&self) {
        if self.applying.read().is_some() {
            return;
        }
        // The overlay's lock, then the frozen one's: the order readers take them in.
        let mut ov = self.overlay.write();
        let mut applying = self.applying.write();
        if ov.is_empty() || applying.is_some() {
            return;
        }
        let frozen = Arc::new(std::mem::take(&mut *ov));
        *applying = Some(frozen.clone());
        drop(applying);
        drop(ov);
        let sent = self.to_sled.as_ref().map(|tx| tx.send(Job::Apply(frozen)));
        if !matches!(sent, Some(Ok(()))) {
            tracing::error!("the sled writer thread is gone; stopping to protect the data");
            std::process::exit(70);
        }
    }

    /// Lowers the checkpoint threshold so tests reach the checkpoint path quickly.
    #[cfg(test)]
    pub fn set_checkpoint_bytes(&self, n: u64) {
        self.checkpoint_bytes.store(n, Ordering::Relaxed);
    }

    /// For a store whose every change is also in a durable log upstream (the raft log): the
    /// write-ahead log is then synced only right before sled is written, not at every flush.
    /// A crash may lose the unsynced tail; the store is then a consistent prefix (the log is
    /// replayed in order, sled never holds what the log does not) and the upstream log
    /// replays what follows, after the applied index kept with the data.
    pub fn set_lazy_sync(&self, lazy: bool) {
        self.lazy_sync.store(lazy, Ordering::Relaxed);
    }

    /// Makes every change flushed so far durable (one fdatasync of the log), lazy sync or not;
    /// after a defragmentation, also restarts the log.
    pub fn sync(&self) -> Result<()> {
        self.log_staged()?;
        self.sync_wal()?;
        if self.checkpoint_soon.load(Ordering::Relaxed) {
            self.flush()?;
        }
        Ok(())
    }

    fn sync_wal(&self) -> Result<()> {
        if let Some(w) = self.wal.lock().as_mut() {
            w.sync()?;
        }
        Ok(())
    }

    /// Writes everything in the overlays to sled now (compaction, checkpoints, tests).
    pub fn apply_overlay(&self) -> Result<()> {
        // Sled must never get ahead of the log.
        self.sync_wal()?;
        self.wait_applied();
        let mut ov = self.overlay.write();
        if ov.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (k, v) in &ov.records {
            match v {
                Some(v) => batch.insert(k.as_slice(), v.as_slice()),
                None => batch.remove(k.as_slice()),
            }
        }
        self.db().apply_batch(batch)?;
        *ov = Overlay::default();
        Ok(())
    }

    /// The newest committed revision (maybe not yet published).
    pub fn read_current(&self) -> i64 {
        self.state.read().current
    }

    /// Makes every committed change durable: one fdatasync of the log. When the log has grown
    /// past [`CHECKPOINT_BYTES`] (and sled is not busy with a frozen overlay), sled is flushed
    /// and the log restarts. Only the single writer
    /// calls this, so nothing is appended during a checkpoint.
    pub fn flush(&self) -> Result<()> {
        self.log_staged()?;
        if self.overlay.read().records.len() >= APPLY_EVERY {
            // Sled must never get ahead of the log.
            self.sync_wal()?;
            self.start_apply();
        }
        let checkpoint = self
            .wal
            .lock()
            .as_ref()
            .is_none_or(|w| w.size() > self.checkpoint_bytes.load(Ordering::Relaxed));
        // A checkpoint writes the overlay to sled itself; while the background thread is busy
        // (a restored snapshot can keep it so for a second) it waits for a later flush.
        let busy = self.applying.read().is_some();
        let checkpoint = checkpoint || self.checkpoint_soon.load(Ordering::Relaxed);
        if checkpoint && !busy {
            self.checkpoint_soon.store(false, Ordering::Relaxed);
            self.apply_overlay()?;
            self.sled().sync()?;
            // Every revision after this one is in the log from here on (its first record says
            // so), which lets a restart from the image below skip reading sled.
            let current = self.state.read().current;
            if let Some(w) = self.wal.lock().as_mut() {
                w.reset(Some(current))?;
            }
            self.write_image();
        }
        Ok(())
    }

    /// A read view at the published revision.
    pub fn read(&self) -> ReadView<'_> {
        let state = self.state.read();
        // Order matters: freezing takes the overlay's write lock, so while we hold its read lock
        // a record is in the overlay, in the frozen one we clone next, or already in sled.
        let overlay = self.overlay.read();
        let applying = self.applying.read().clone();
        let rev = self.published();
        ReadView {
            store: self,
            state,
            overlay,
            applying,
            rev,
        }
    }

    /// Starts a write transaction (the caller must be the only writer: the applier thread).
    pub fn write(&self) -> WriteTxn<'_> {
        let state = self.state.write();
        let rev = state.current + 1;
        WriteTxn {
            store: self,
            state,
            rev,
            sub: 0,
            changes: Vec::new(),
            pending: HashMap::new(),
            events: Vec::new(),
            lease_moves: Vec::new(),
            dirty: false,
        }
    }

    fn fetch(&self, rev: Revision) -> Result<KeyValue> {
        let ov = self.overlay.read();
        let applying = self.applying.read().clone();
        self.fetch_with(&ov, applying.as_deref(), rev)
    }

    fn fetch_with(
        &self,
        ov: &Overlay,
        applying: Option<&Overlay>,
        rev: Revision,
    ) -> Result<KeyValue> {
        let key = rev.to_key(false);
        if let Some(v) = ov.get(&key).or_else(|| applying.and_then(|a| a.get(&key))) {
            return match v {
                Some(v) => decode(v),
                None => Err(missing(rev, "removed")),
            };
        }
        match self.get_sled(&key)? {
            Some(v) => decode(&v),
            None => Err(missing(rev, "missing")),
        }
    }

    /// The record of `rev`, outside any view: revisions never change once written, so a reader
    /// that chose its revisions in a view may fetch them later, until a compaction drops them
    /// ([`EtcdError::Compacted`] then).
    pub fn kv_at(&self, rev: Revision) -> Result<KeyValue> {
        self.fetch(rev).map_err(|e| {
            if rev.main < self.state.read().compacted {
                EtcdError::Compacted
            } else {
                e
            }
        })
    }

    /// Drops history older than `at` (etcd's compaction). Does not bump the revision. Waits
    /// for a running backup ([`MvccStore::backup_view`]).
    pub fn compact(&self, at: i64) -> Result<()> {
        let _no_backup = self.backup_lock.write();
        // Dropped revisions may still be staged or in the overlay: put everything in sled first.
        self.log_staged()?;
        self.apply_overlay()?;
        let mut st = self.state.write();
        if at <= st.compacted {
            return Err(EtcdError::Compacted);
        }
        if at > st.current {
            return Err(EtcdError::FutureRev);
        }
        let dropped = st.index.compact(at);
        let mut changes: Vec<Change> = dropped
            .into_iter()
            .map(|c| (c.rev.to_key(c.tombstone).to_vec(), None))
            .collect();
        changes.push((META_COMPACTED.to_vec(), Some(at.to_be_bytes().to_vec())));
        // The log first, synced: sled writes its own files as its buffers fill, so a batch
        // given to sled may be on disk after a crash even though sled was never flushed. Were
        // the compaction's removals there but not in the log, the replay at restart would put
        // the removed revisions back from older records while the compaction itself counted as
        // done, and this member's history would differ from the others' for good.
        if let Some(w) = self.wal.lock().as_mut() {
            w.append(&changes);
            w.sync()?;
        }
        self.db().apply_batch(to_batch(&changes))?;
        st.compacted = at;
        drop(st);
        // An image from before the compaction is of no use to a restart (see `load`).
        self.write_image();
        Ok(())
    }

    /// Size of the database files on disk (sled and the write-ahead log), in bytes.
    pub fn size_on_disk(&self) -> i64 {
        let wal = self.wal.lock().as_ref().map_or(0, |w| w.size());
        self.db().size_on_disk().map(|s| s as i64).unwrap_or(0) + wal as i64
    }

    /// Stages a metadata value with the current write group: it becomes durable, and visible to
    /// [`MvccStore::get_meta`] after a restart, together with the group's changes.
    pub fn stage_meta(&self, name: &str, value: &[u8]) {
        self.staged
            .lock()
            .changes
            .push((meta_key(name), Some(value.to_vec())));
    }

    /// Stores a metadata value (outside the key space, not versioned) durably.
    pub fn set_meta(&self, name: &str, value: &[u8]) -> Result<()> {
        // A staged value of the same name must not hide this one.
        self.apply_overlay()?;
        let sled = self.sled();
        sled.db.insert(meta_key(name), value)?;
        sled.sync()?;
        Ok(())
    }

    pub fn get_meta(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.record(&meta_key(name))
    }
}

impl Drop for MvccStore {
    fn drop(&mut self) {
        // Stop the background writer and wait for it, so the database is closed on return.
        self.to_sled.take();
        if let Some(h) = self.sled_writer.take() {
            let _ = h.join();
        }
    }
}

/// Name of the file in a store's directory that names its sled directory (after a
/// defragmentation); without it, sled is in `kv`.
const SLED_POINTER: &str = "kv.current";

/// The store's sled directory, and the removal of any other one a crash left behind (a copy
/// not yet in use, or an old one not yet removed).
fn current_sled_dir(dir: &std::path::Path) -> Result<std::path::PathBuf> {
    let name = match std::fs::read_to_string(dir.join(SLED_POINTER)) {
        Ok(n) => n.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "kv".to_string(),
        Err(e) => return Err(EtcdError::Storage(format!("reading {SLED_POINTER}: {e}"))),
    };
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let ours = n == "kv"
                || n.strip_prefix("kv.")
                    .is_some_and(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()));
            if ours && n != name && e.path().is_dir() {
                tracing::info!(dir = %e.path().display(), "removing a store left by a defragmentation");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(dir.join(name))
}

fn open_sled(path: &std::path::Path, cache_bytes: u64) -> Result<sled::Db> {
    Ok(sled::Config::new()
        .path(path)
        .cache_capacity(cache_bytes)
        .mode(sled::Mode::HighThroughput)
        // Durability comes from our log; sled is flushed at checkpoints only, which spares
        // the disk a second stream of syncs.
        .flush_every_ms(None)
        .open()?)
}

/// Size of a directory's files, in bytes.
/// The sled thread's defragmentation: copies the database into a new directory, syncs it,
/// points the store at it (a file renamed into place, so a crash leaves one or the other),
/// swaps it in and removes the old one. Nothing writes to sled meanwhile: this thread is
/// sled's only writer while the store counts it busy.
fn defragment(shared: &RwLock<Arc<Sled>>) -> Result<Defragmented> {
    let started = std::time::Instant::now();
    let old = shared.read().clone();
    let Some(old_path) = old.path.clone() else {
        // A temporary store: nothing on disk to give back.
        return Ok(Defragmented {
            before: 0,
            after: 0,
            took: started.elapsed(),
        });
    };
    let root = old_path
        .parent()
        .ok_or_else(|| EtcdError::Storage("the store's directory has no parent".into()))?
        .to_path_buf();
    let before = crate::durable::dir_size(&old_path);
    let generation = old_path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("kv."))
        .and_then(|g| g.parse::<u64>().ok())
        .unwrap_or(0)
        + 1;
    let name = format!("kv.{generation}");
    let new_path = root.join(&name);
    let _ = std::fs::remove_dir_all(&new_path);
    let db = open_sled(&new_path, old.cache_bytes)?;
    let mut batch = sled::Batch::default();
    let mut in_batch = 0;
    for item in old.db.iter() {
        let (k, v) = item?;
        batch.insert(k, v);
        in_batch += 1;
        if in_batch == 4096 {
            db.apply_batch(std::mem::take(&mut batch))?;
            in_batch = 0;
        }
    }
    db.apply_batch(batch)?;
    let files = SledFiles::open(&new_path)
        .map_err(|e| EtcdError::Storage(format!("opening the store's files: {e}")))?;
    let new = Sled {
        db,
        files: Some(files),
        path: Some(new_path.clone()),
        cache_bytes: old.cache_bytes,
    };
    new.sync()?;
    if crate::failpoint::on("slow-defragment") {
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    let io =
        |e: std::io::Error| EtcdError::Storage(format!("switching to the defragmented store: {e}"));
    let tmp = root.join(format!("{SLED_POINTER}.tmp"));
    std::fs::write(&tmp, &name).map_err(io)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    std::fs::rename(&tmp, root.join(SLED_POINTER)).map_err(io)?;
    std::fs::File::open(&root)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    *shared.write() = Arc::new(new);
    // Readers hold a handle for one lookup or scan at a time, all of it in both databases;
    // the old files go (open handles keep them readable until they are dropped).
    drop(old);
    let _ = std::fs::remove_dir_all(&old_path);
    let after = crate::durable::dir_size(&new_path);
    tracing::info!(
        before,
        after,
        took_ms = started.elapsed().as_millis() as u64,
        "store defragmented"
    );
    Ok(Defragmented {
        before,
        after,
        took: started.elapsed(),
    })
}

/// Writes changes to sled one by one, without sled's batch machinery (which costs a log buffer
/// roll per batch). Atomicity is not needed here: everything written this way is already in the
/// synced log, and recovery replays the log over whatever part of it reached sled.
fn write_through(db: &sled::Db, records: &BTreeMap<Vec<u8>, Option<Vec<u8>>>) -> Result<()> {
    for (k, v) in records {
        match v {
            Some(v) => db.insert(k.as_slice(), v.as_slice())?,
            None => db.remove(k.as_slice())?,
        };
    }
    Ok(())
}

/// The records of a snapshot made by [`ReadView::snapshot`], after checking its digest.
pub fn parse_snapshot(data: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    use sha2::Digest;
    let bad = |why: &str| EtcdError::Storage(format!("invalid snapshot: {why}"));
    if data.len() < 32 {
        return Err(bad("too short"));
    }
    let (body, digest) = data.split_at(data.len() - 32);
    if sha2::Sha256::digest(body).as_slice() != digest {
        return Err(bad("digest mismatch"));
    }
    const HEADER: &[u8] = b"corelite-etcd-snapshot-v1\n";
    let mut rest = body
        .strip_prefix(HEADER)
        .ok_or_else(|| bad("unknown header"))?;
    let mut take = |n: usize| -> Result<&[u8]> {
        if rest.len() < n {
            return Err(bad("truncated"));
        }
        let (a, b) = rest.split_at(n);
        rest = b;
        Ok(a)
    };
    let mut out = Vec::new();
    loop {
        let klen = u32::from_be_bytes(take(4)?.try_into().map_err(|_| bad("length"))?);
        if klen == u32::MAX {
            return Ok(out);
        }
        let k = take(klen as usize)?.to_vec();
        let vlen = u32::from_be_bytes(take(4)?.try_into().map_err(|_| bad("length"))?);
        let v = take(vlen as usize)?.to_vec();
        out.push((k, v));
    }
}

fn meta_key(name: &str) -> Vec<u8> {
    let mut k = vec![META_PREFIX];
    k.extend_from_slice(name.as_bytes());
    k
}

fn decode_i64(b: &[u8]) -> Result<i64> {
    Ok(i64::from_be_bytes(b.try_into().map_err(|_| {
        EtcdError::Storage("malformed lease record".into())
    })?))
}

fn lease_key(id: i64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = LEASE_PREFIX;
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

/// Read access shared by [`ReadView`] and [`WriteTxn`], so range and compare logic is written once.
pub trait KvRead {
    fn state(&self) -> &State;
    fn fetch(&self, rev: Revision) -> Result<KeyValue>;
    /// The revision a read without an explicit revision sees.
    fn read_rev(&self) -> i64;

    /// The newest value of `key`, if it exists.
    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        match self.state().index.get(key, self.read_rev()) {
            Some(rev) => Ok(Some(self.fetch(rev)?)),
            None => Ok(None),
        }
    }

    /// Values of the live keys of `range` at `at`, in key order, at most `limit` (0: all).
    fn values(&self, range: &KeyRange<'_>, at: i64, limit: usize) -> Result<Vec<KeyValue>> {
        let revs = self.state().index.range(range, at);
        let take = if limit == 0 { revs.len() } else { limit };
        revs.into_iter()
            .take(take)
            .map(|(_, rev)| self.fetch(rev))
            .collect()
    }
}

impl KvRead for ReadView<'_> {
    fn state(&self) -> &State {
        &self.state
    }
    fn fetch(&self, rev: Revision) -> Result<KeyValue> {
        self.store
            .fetch_with(&self.overlay, self.applying.as_deref(), rev)
    }
    fn read_rev(&self) -> i64 {
        self.rev
    }
}

impl ReadView<'_> {
    /// Calls `f` with the stored record of `rev`: an encoded `mvccpb.KeyValue`, exactly as a
    /// response carries it, so an answer can be built without decoding it (see
    /// [`super::answer`]).
    pub fn with_record<T>(&self, rev: Revision, f: impl FnOnce(&[u8]) -> T) -> Result<T> {
        let key = rev.to_key(false);
        let staged = self
            .overlay
            .get(&key)
            .or_else(|| self.applying.as_deref().and_then(|a| a.get(&key)));
        match staged {
            Some(Some(v)) => Ok(f(v)),
            Some(None) => Err(missing(rev, "removed")),
            None => match self.store.get_sled(&key)? {
                Some(v) => Ok(f(&v)),
                None => Err(missing(rev, "missing")),
            },
        }
    }

    /// Every record with key `>= start`, in key order: sled's, with the overlay's changes merged
    /// in (an overlay removal hides the sled record).
    fn records_from(&self, start: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        self.for_each_record_from(start, |k, v| out.push((k.to_vec(), v.to_vec())))?;
        Ok(out)
    }

    /// Calls `f` with every record of [`Self::records_from`], without copying them.
    fn for_each_record_from(&self, start: &[u8], mut f: impl FnMut(&[u8], &[u8])) -> Result<()> {
        // The frozen overlay, with the newer active one laid over it.
        let mut merged: BTreeMap<&Vec<u8>, &Option<Vec<u8>>> = BTreeMap::new();
        if let Some(a) = &self.applying {
            merged.extend(a.records.range(start.to_vec()..));
        }
        merged.extend(self.overlay.records.range(start.to_vec()..));
        let mut ov = merged.into_iter().peekable();
        let db = self.store.db();
        for item in db.range(start..) {
            let (k, v) = item?;
            while let Some((ok, ovv)) = ov.next_if(|(ok, _)| ok.as_slice() < &k[..]) {
                if let Some(ovv) = ovv {
                    f(ok, ovv);
                }
            }
            // The overlay's version of this very key wins (or hides it when removed).
            if let Some((ok, ovv)) = ov.next_if(|(ok, _)| ok.as_slice() == &k[..]) {
                if let Some(ovv) = ovv {
                    f(ok, ovv);
                }
                continue;
            }
            f(&k, &v);
        }
        for (ok, ovv) in ov {
            if let Some(ovv) = ovv {
                f(ok, ovv);
            }
        }
        Ok(())
    }

    /// Every change with revision in `[from, to]` to a key of `range`, in revision order, with the
    /// previous value of each key when `prev_kv` is set. `from` must not be below the compaction
    /// revision; from the compaction revision itself on, what compaction kept is returned, as etcd
    /// does (a key's last change at that revision is kept unless it was a deletion).
    pub fn events(
        &self,
        range: &KeyRange<'_>,
        from: i64,
        to: i64,
        prev_kv: bool,
    ) -> Result<Vec<Event>> {
        if from < self.state.compacted {
            return Err(EtcdError::Compacted);
        }
        let mut out = Vec::new();
        for (k, v) in self.records_from(&Revision::lower_bound(from))? {
            let Some((rev, tombstone)) = Revision::from_key(&k) else {
                break;
            };
            if rev.main > to {
                break;
            }
            let kv = decode(&v)?;
            if !range.contains(&kv.key) {
                continue;
            }
            let prev = if prev_kv {
                match self.state.index.before(&kv.key, rev) {
                    Some(c) if !c.tombstone => Some(self.fetch(c.rev)?),
                    _ => None,
                }
            } else {
                None
            };
            out.push(Event {
                r#type: if tombstone {
                    EventType::Delete
                } else {
                    EventType::Put
                } as i32,
                kv: Some(kv),
                prev_kv: prev,
            });
        }
        Ok(out)
    }

    /// Fills in the previous value of a put event that was made without reading it (see
    /// [`WriteTxn::put`]). Left empty when that value is compacted away, as etcd does.
    pub fn fill_prev(&self, ev: &mut Event) -> Result<()> {
        let Some(kv) = &ev.kv else { return Ok(()) };
        if ev.prev_kv.is_some() || ev.r#type != EventType::Put as i32 || kv.version <= 1 {
            return Ok(());
        }
        // A transaction writes a key at most once, so the previous change is older than
        // the event's main revision.
        if let Some(c) = self
            .state
            .index
            .before(&kv.key, Revision::new(kv.mod_revision, 0))
        {
            if !c.tombstone {
                ev.prev_kv = Some(self.fetch(c.rev)?);
            }
        }
        Ok(())
    }

    pub fn compacted(&self) -> i64 {
        self.state.compacted
    }

    /// CRC-32 of every stored record up to revision `at` (etcd's HashKV: same data, same hash).
    pub fn hash(&self, at: i64) -> Result<u32> {
        let mut h = crc32fast::Hasher::new();
        for (k, v) in self.records_from(&Revision::lower_bound(0))? {
            let Some((rev, _)) = Revision::from_key(&k) else {
                break;
            };
            if rev.main > at {
                break;
            }
            h.update(&k);
            h.update(&v);
        }
        Ok(h.finalize())
    }

    /// Every record of the database (key space, leases, metadata) as one self-describing stream:
    /// a header line; per record u32 key length, key, u32 value length, value; an end marker
    /// (key length u32::MAX); zero padding to a multiple of 512 bytes; then the SHA-256 of all
    /// that. The padding and trailing digest are the framing etcd's clients check (`etcdctl
    /// snapshot save` verifies the digest).
    pub fn snapshot(&self) -> Result<Vec<u8>> {
        use sha2::Digest;
        let hint = self.store.snapshot_len.load(Ordering::Relaxed);
        let mut out = Vec::with_capacity(hint + hint / 8);
        out.extend_from_slice(b"corelite-etcd-snapshot-v1\n");
        self.for_each_record_from(&[], |k, v| {
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        })?;
        out.extend_from_slice(&u32::MAX.to_be_bytes());
        out.resize(out.len().div_ceil(512) * 512, 0);
        let digest = sha2::Sha256::digest(&out);
        out.extend_from_slice(&digest);
        self.store.snapshot_len.store(out.len(), Ordering::Relaxed);
        Ok(out)
    }
}

impl KvRead for WriteTxn<'_> {
    fn state(&self) -> &State {
        &self.state
    }
    fn fetch(&self, rev: Revision) -> Result<KeyValue> {
        if let Some(kv) = self.pending.get(&rev) {
            return Ok(kv.clone());
        }
        if let Some(kv) = self.store.staged.lock().pending.get(&rev) {
            return Ok(kv.clone());
        }
        self.store.fetch(rev)
    }
    /// Reads inside a transaction see the transaction's own earlier changes, as in etcd.
    fn read_rev(&self) -> i64 {
        if self.dirty {
            self.rev
        } else {
            self.state.current
        }
    }
}

impl WriteTxn<'_> {
    /// The revision this transaction writes at.
    pub fn rev(&self) -> i64 {
        self.rev
    }

    pub fn current(&self) -> i64 {
        self.state.current
    }

    pub fn compacted(&self) -> i64 {
        self.state.compacted
    }

    fn next_rev(&mut self) -> Revision {
        let r = Revision::new(self.rev, self.sub);
        self.sub += 1;
        self.dirty = true;
        r
    }

    /// The lease `key` is attached to now (0: none, or the key does not exist).
    pub fn lease_of(&self, key: &[u8]) -> i64 {
        self.state.index.latest(key).map_or(0, |l| l.lease)
    }

    /// Writes `key`. With `want_prev`, reads and returns the previous value; without, nothing
    /// is read (the index knows the key's create revision and version, as etcd's does), and
    /// the event's `prev_kv` stays empty even if the key existed: readers that want it fill it
    /// in with [`ReadView::fill_prev`].
    pub fn put(
        &mut self,
        key: &[u8],
        value: Vec<u8>,
        lease: i64,
        want_prev: bool,
    ) -> Result<Option<KeyValue>> {
        let old = self.state.index.latest(key);
        // A key written earlier in this transaction: its event's previous value is only here.
        let prev = match old {
            Some(o) if want_prev || o.rev.main == self.rev => Some(self.fetch(o.rev)?),
            _ => None,
        };
        let rev = self.next_rev();
        let live = self.state.index.record_put(key, rev, lease);
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: live.create_revision,
            mod_revision: rev.main,
            version: live.version,
            value,
            lease,
        };
        self.change(rev.to_key(false).to_vec(), Some(kv.encode_to_vec()));
        self.pending.insert(rev, kv.clone());
        let old_lease = old.map_or(0, |o| o.lease);
        if old_lease != 0 || lease != 0 {
            self.lease_moves.push(LeaseMove {
                key: key.to_vec(),
                from: old_lease,
                to: lease,
            });
        }
        self.events.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv),
            prev_kv: prev.clone(),
        });
        Ok(prev)
    }

    /// Deletes every live key of `range`; returns their previous values.
    pub fn delete_range(&mut self, range: &KeyRange<'_>) -> Result<Vec<KeyValue>> {
        let at = self.read_rev();
        let prevs = self.values(range, at, 0)?;
        for p in &prevs {
            let rev = self.next_rev();
            let tomb = KeyValue {
                key: p.key.clone(),
                mod_revision: rev.main,
                ..Default::default()
            };
            self.change(rev.to_key(true).to_vec(), Some(tomb.encode_to_vec()));
            self.state.index.record_delete(&p.key, rev);
            if p.lease != 0 {
                self.lease_moves.push(LeaseMove {
                    key: p.key.clone(),
                    from: p.lease,
                    to: 0,
                });
            }
            self.events.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(tomb),
                prev_kv: Some(p.clone()),
            });
        }
        Ok(prevs)
    }

    /// Persists a lease record in the same batch as the transaction's key changes.
    pub fn save_lease(&mut self, id: i64, ttl: i64) {
        self.change(lease_key(id).to_vec(), Some(ttl.to_be_bytes().to_vec()));
    }

    /// Removes a lease record in the same batch.
    pub fn remove_lease(&mut self, id: i64) {
        self.change(lease_key(id).to_vec(), None);
    }

    fn change(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.changes.push((key, value));
    }

    /// Ends the transaction: its changes are staged for the group's sled batch and log record.
    /// They are durable only after [`MvccStore::flush`].
    pub fn commit(mut self) -> Result<Committed> {
        {
            let mut staged = self.store.staged.lock();
            staged.changes.append(&mut self.changes);
            staged.pending.extend(self.pending.drain());
        }
        let rev = if self.dirty {
            self.state.current = self.rev;
            Some(self.rev)
        } else {
            None
        };
        Ok(Committed {
            rev,
            events: std::mem::take(&mut self.events),
            lease_moves: std::mem::take(&mut self.lease_moves),
        })
    }
}

#[cfg(test)]
mod tests {
    //! The store against a model: a full copy of the key space at every revision.
    use std::collections::BTreeMap;

    use etcd_api::etcdserverpb::RangeRequest;
    use proptest::prelude::*;

    use super::*;
    use crate::mvcc::txn;

    #[derive(Debug, Clone)]
    enum Op {
        Put(u8, u8),
        Delete(u8),
        DeletePrefix(u8),
        Compact(u8),
        Read(u8, u8),
        ApplyOverlay,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..6, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
            2 => (0u8..6).prop_map(Op::Delete),
            1 => (0u8..3).prop_map(Op::DeletePrefix),
            1 => any::<u8>().prop_map(Op::Compact),
            3 => (0u8..6, any::<u8>()).prop_map(|(k, r)| Op::Read(k, r)),
            1 => Just(Op::ApplyOverlay),
        ]
    }

    type Model = BTreeMap<Vec<u8>, KeyValue>;

    fn key(k: u8) -> Vec<u8> {
        // Keys share prefixes so that prefix deletes cover several of them.
        format!("k{}/{}", k % 3, k).into_bytes()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn store_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
            let store = MvccStore::temporary().expect("temporary store");
            // history[r] = key space at revision r; revision 1 is the empty store.
            let mut history: Vec<Model> = vec![Model::new(), Model::new()];
            let mut compacted = 0i64;
            for op in ops {
                let cur = (history.len() - 1) as i64;
                let mut next = history[cur as usize].clone();
                match op {
                    Op::Put(k, v) => {
                        let k = key(k);
                        let mut w = store.write();
                        // Half the puts read the previous value, half leave it to fill_prev.
                        let want_prev = v % 2 == 0;
                        let got = w.put(&k, vec![v], 0, want_prev).expect("put");
                        let done = w.commit().expect("commit");
                        let rev = cur + 1;
                        let prev = next.get(&k).cloned();
                        if want_prev {
                            prop_assert_eq!(&got, &prev);
                        }
                        store.log_staged().expect("log staged");
                        store.publish(rev);
                        let mut ev = done.events[0].clone();
                        store.read().fill_prev(&mut ev).expect("fill prev");
                        prop_assert_eq!(&ev.prev_kv, &prev);
                        next.insert(k.clone(), KeyValue {
                            key: k,
                            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                            mod_revision: rev,
                            version: prev.map_or(1, |p| p.version + 1),
                            value: vec![v],
                            lease: 0,
                        });
                        history.push(next);
                    }
                    Op::Delete(k) | Op::DeletePrefix(k) => {
                        let (start, end) = match op {
                            Op::Delete(_) => (key(k), Vec::new()),
                            _ => (format!("k{}/", k).into_bytes(), format!("k{}0", k).into_bytes()),
                        };
                        let kr = KeyRange::new(&start, &end);
                        let mut w = store.write();
                        let prevs = w.delete_range(&kr).expect("delete");
                        let done = w.commit().expect("commit");
                        let expect: Vec<_> = next.keys().filter(|k| kr.contains(k)).cloned().collect();
                        prop_assert_eq!(prevs.len(), expect.len());
                        if expect.is_empty() {
                            prop_assert_eq!(done.rev, None);
                        } else {
                            for k in expect { next.remove(&k); }
                            history.push(next);
                        }
                    }
                    Op::Compact(frac) => {
                        let at = 1 + (i64::from(frac) * cur) / 256;
                        let r = store.compact(at);
                        if at <= compacted {
                            prop_assert_eq!(r, Err(EtcdError::Compacted));
                        } else {
                            prop_assert!(r.is_ok());
                            compacted = at;
                        }
                    }
                    Op::ApplyOverlay => store.apply_overlay().expect("apply overlay"),
                    Op::Read(k, frac) => {
                        // Reads go through the overlay until an ApplyOverlay moves it to sled.
                        store.log_staged().expect("log staged");
                        store.publish(cur);
                        let at = 1 + (i64::from(frac) * cur) / 256;
                        let view = store.read();
                        let req = RangeRequest { key: key(k), revision: at, ..Default::default() };
                        let got = txn::range(&view, &req);
                        if at < compacted {
                            prop_assert_eq!(got.err(), Some(EtcdError::Compacted));
                        } else {
                            let got = got.expect("range");
                            let want: Vec<KeyValue> = history[at as usize].get(&key(k)).cloned().into_iter().collect();
                            prop_assert_eq!(got.kvs, want);
                            // The whole key space too.
                            let all = RangeRequest { key: vec![0], range_end: vec![0], revision: at, ..Default::default() };
                            let got = txn::range(&view, &all).expect("range all");
                            let want: Vec<KeyValue> = history[at as usize].values().cloned().collect();
                            prop_assert_eq!(got.count as usize, want.len());
                            prop_assert_eq!(got.kvs, want);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn an_overlay_writes_each_keys_last_change_to_sled() {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        db.insert(b"a", b"old".as_slice()).expect("insert");
        db.insert(b"c", b"kept".as_slice()).expect("insert");
        let mut ov = Overlay::default();
        ov.extend(vec![
            (b"a".to_vec(), Some(b"1".to_vec())),
            (b"b".to_vec(), Some(b"2".to_vec())),
            (b"a".to_vec(), None),
            (b"b".to_vec(), Some(b"3".to_vec())),
        ]);
        assert_eq!(ov.get(b"a"), Some(None));
        assert_eq!(ov.get(b"b"), Some(Some(&b"3".to_vec())));
        assert_eq!(ov.get(b"c"), None);
        write_through(&db, &ov.records).expect("write");
        let all: Vec<(Vec<u8>, Vec<u8>)> = db
            .iter()
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).expect("read"))
            .collect();
        assert_eq!(
            all,
            vec![
                (b"b".to_vec(), b"3".to_vec()),
                (b"c".to_vec(), b"kept".to_vec())
            ]
        );
    }

    #[test]
    fn reads_see_every_published_write_while_sled_catches_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = APPLY_EVERY * 3 + 17;
        {
            let (s, _) = MvccStore::open(dir.path(), 1 << 20).expect("open");
            for i in 0..n {
                let mut w = s.write();
                w.put(
                    format!("k{}", i % 1000).as_bytes(),
                    i.to_string().into_bytes(),
                    0,
                    false,
                )
                .expect("put");
                w.commit().expect("commit");
                if i % 64 == 63 || i + 1 == n {
                    s.flush().expect("flush");
                    s.publish(i as i64 + 2);
                    // Whatever sits in the overlays or sled, every published write is visible.
                    let view = s.read();
                    let last = view.get(format!("k{}", i % 1000).as_bytes()).expect("get");
                    assert_eq!(last.map(|kv| kv.value), Some(i.to_string().into_bytes()));
                    if i % 2048 == 2047 {
                        let all = view
                            .events(&KeyRange::new(b"\0", b"\0"), 2, view.rev, false)
                            .expect("events");
                        assert_eq!(all.len(), i + 1, "history is complete, without duplicates");
                    }
                }
            }
        }
        let (s, _) = reopen(dir.path());
        assert_eq!(s.published(), n as i64 + 1);
        let view = s.read();
        assert_eq!(
            view.events(&KeyRange::new(b"\0", b"\0"), 2, view.rev, false)
                .expect("events")
                .len(),
            n
        );
    }

    /// A store with compacted history, leases and metadata, and its snapshot.
    fn snapshot_source() -> (MvccStore, Vec<u8>) {
        let a = MvccStore::temporary().expect("a");
        for i in 0..50 {
            let mut w = a.write();
            // Some keys carry a lease, so the restored state must attach them again.
            w.put(
                format!("k{}", i % 7).as_bytes(),
                vec![i as u8],
                100 + i % 3,
                false,
            )
            .expect("put");
            w.save_lease(100 + i, 60);
            w.commit().expect("commit");
        }
        a.flush().expect("flush");
        a.publish(a.read_current());
        a.compact(20).expect("compact");
        a.set_meta("member_id", b"leader").expect("meta");
        let snap = a.read().snapshot().expect("snapshot");
        (a, snap)
    }

    /// A store with a record of its own, unflushed changes and its own member id.
    fn restore_target(dir: &std::path::Path) -> MvccStore {
        let (b, _) = MvccStore::open(dir, 1 << 20).expect("open");
        let mut w = b.write();
        w.put(b"stale", b"x".to_vec(), 0, true).expect("put");
        w.commit().expect("commit");
        b.flush().expect("flush");
        b.apply_overlay().expect("to sled");
        b.set_meta("member_id", b"follower").expect("meta");
        let mut w = b.write();
        w.put(b"stale2", b"y".to_vec(), 0, true).expect("put");
        w.commit().expect("commit");
        b
    }

    /// `b` holds what `a` does (at `a`'s revision, compacted at 20) and its own member id.
    fn assert_restored(a: &MvccStore, b: &MvccStore) {
        assert_eq!(b.published(), a.published());
        let (va, vb) = (a.read(), b.read());
        for i in 0..7 {
            let k = format!("k{i}");
            assert_eq!(
                va.get(k.as_bytes()).expect("a"),
                vb.get(k.as_bytes()).expect("b")
            );
        }
        assert_eq!(vb.get(b"stale").expect("b"), None);
        assert_eq!(vb.get(b"stale2").expect("b"), None);
        assert_eq!(vb.compacted(), 20);
        assert_eq!(
            b.get_meta("member_id").expect("meta"),
            Some(b"follower".to_vec())
        );
    }

    #[test]
    fn snapshots_restore_into_another_store() {
        let (a, snap) = snapshot_source();
        // Through the write-ahead log (the usual way), and in place (a snapshot too large for
        // one log record).
        for in_place in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut b = restore_target(dir.path());
            if in_place {
                b.set_log_record_max(10);
            }
            let rec = b.restore_snapshot(&snap, &["member_id"]).expect("restore");
            assert_eq!(rec.leases.len(), 50);
            assert_restored(&a, &b);
            // The state built from the snapshot's records is what loading the store gives,
            // once sled has it all.
            b.apply_overlay().expect("to sled");
            let mut attached = rec.attached.clone();
            attached.sort();
            assert_eq!(attached.len(), 7);
            let (c, rec2) =
                MvccStore::load(&b.db(), &Overlay::default(), None, None).expect("load");
            let mut attached2 = rec2.attached.clone();
            attached2.sort();
            assert_eq!(attached, attached2);
            assert_eq!((c.current, c.compacted), (b.published(), 20));
            // Every key-value and lease record is the same (metadata is each member's own).
            let data = |s: &MvccStore| {
                let recs = s.read().records_from(&[]).expect("records");
                recs.into_iter()
                    .filter(|(k, _)| k[0] != META_PREFIX)
                    .collect::<Vec<_>>()
            };
            assert_eq!(data(&a), data(&b), "in place: {in_place}");
            let mut bad = snap.clone();
            bad[40] ^= 1;
            assert!(
                b.restore_snapshot(&bad, &[]).is_err(),
                "a corrupt snapshot is refused"
            );
            assert_restored(&a, &b);
        }
    }

    #[test]
    fn a_restore_survives_a_crash_before_sled_has_it() {
        let (a, snap) = snapshot_source();
        let dir = tempfile::tempdir().expect("tempdir");
        let b = restore_target(dir.path());
        b.restore_snapshot(&snap, &["member_id"]).expect("restore");
        b.wait_applied();
        // sled is not flushed: what it wrote may be anywhere between nothing and everything.
        let copy = tempfile::tempdir().expect("tempdir");
        crate::durable::crash_copy(dir.path(), copy.path());
        drop(b);
        let (c, rec) = reopen(copy.path());
        assert_eq!(rec.leases.len(), 50);
        assert_restored(&a, &c);
    }

    /// Opens a store just closed in this process. sled lets go of its file lock from its own
    /// I/O threads, a moment after the handle is dropped; a new process never sees that.
    fn reopen(dir: &std::path::Path) -> (MvccStore, Recovered) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match MvccStore::open(dir, 1 << 20) {
                Ok(x) => return x,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "store still locked, retrying");
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("reopen: {e}"),
            }
        }
    }

    #[test]
    fn checkpoints_bound_the_log_and_lose_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = 3000;
        {
            let (s, _) = MvccStore::open(dir.path(), 1 << 20).expect("open");
            s.set_checkpoint_bytes(16 * 1024);
            for i in 0..n {
                let mut w = s.write();
                w.put(format!("c{i}").as_bytes(), vec![b'v'; 100], 0, false)
                    .expect("put");
                w.commit().expect("commit");
                s.flush().expect("flush");
                let wal = std::fs::metadata(dir.path().join("wal"))
                    .expect("wal")
                    .len();
                assert!(
                    wal < 64 * 1024,
                    "the log is reset at checkpoints ({wal} bytes)"
                );
            }
        }
        let (s, _) = reopen(dir.path());
        let view = s.read();
        assert_eq!(view.rev, n as i64 + 1);
        let all = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        };
        assert_eq!(txn::range(&view, &all).expect("range").count, n as i64);
    }

    /// A restart serves from the log's records before sled has them, and a second crash while
    /// sled is taking them loses nothing: the log keeps them until a checkpoint.
    #[test]
    fn a_replayed_log_serves_at_once_and_survives_another_crash() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (s, _) = MvccStore::open(dir.path(), 1 << 20).expect("open");
            for i in 0..300u32 {
                let mut w = s.write();
                w.put(
                    format!("k{}", i % 100).as_bytes(),
                    i.to_be_bytes().to_vec(),
                    0,
                    false,
                )
                .expect("put");
                if i == 150 {
                    // Half of the history reaches sled; the rest stays in the log only.
                    w.commit().expect("commit");
                    s.apply_overlay().expect("to sled");
                    continue;
                }
                if i % 3 == 0 {
                    w.delete_range(&KeyRange::new(format!("k{}", i % 100).as_bytes(), b""))
                        .expect("delete");
                }
                w.commit().expect("commit");
                s.stage_meta("applied", &i.to_be_bytes());
                s.flush().expect("flush");
            }
            s.compact(200).expect("compact");
            s.sync().expect("sync");
        }
        let want = |s: &MvccStore| {
            let view = s.read();
            let all = RangeRequest {
                key: vec![0],
                range_end: vec![0],
                ..Default::default()
            };
            (
                view.rev,
                view.compacted(),
                txn::range(&view, &all).expect("range").kvs,
                s.get_meta("applied").expect("meta"),
                view.hash(view.rev).expect("hash"),
            )
        };
        let (first, _) = reopen(dir.path());
        let expected = want(&first);
        assert_eq!(expected.0, 301);
        assert_eq!(expected.1, 200);
        assert_eq!(expected.3, Some(299u32.to_be_bytes().to_vec()));
        // Crash while the background writer may be anywhere in the replayed records.
        let copy = tempfile::tempdir().expect("tempdir");
        crate::durable::crash_copy(dir.path(), copy.path());
        first.wait_applied();
        assert_eq!(want(&first), expected);
        drop(first);
        let (second, _) = reopen(copy.path());
        assert_eq!(want(&second), expected);
        drop(second);
        let (third, _) = reopen(dir.path());
        assert_eq!(want(&third), expected);
    }

    /// The state a store's records give when every one of them is read (no image).
    fn full_scan(s: &MvccStore) -> (State, Vec<(Vec<u8>, i64)>) {
        s.apply_overlay().expect("to sled");
        let (st, rec) = MvccStore::load(&s.db(), &Overlay::default(), None, None).expect("load");
        let mut attached = rec.attached;
        attached.sort();
        (st, attached)
    }

    fn same_state(s: &MvccStore, rec: &Recovered, what: &str) {
        let (want, want_attached) = full_scan(s);
        let st = s.state.read();
        assert_eq!(st.index, want.index, "{what}: index");
        assert_eq!(
            (st.current, st.compacted),
            (want.current, want.compacted),
            "{what}"
        );
        let mut attached = rec.attached.clone();
        attached.sort();
        assert_eq!(attached, want_attached, "{what}: attached keys");
    }

    /// A restart from an index image and the records after it builds the index that reading
    /// every record builds, through puts, deletions, leases and compactions after the image;
    /// after a snapshot restore the old image is not used.
    #[test]
    fn an_index_image_and_the_records_after_it_give_the_whole_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (s, _) = MvccStore::open(dir.path(), 1 << 20).expect("open");
        s.set_checkpoint_bytes(8 * 1024);
        let mut images = 0;
        let mut first_image: Option<Vec<u8>> = None;
        for i in 0..1500u32 {
            let mut w = s.write();
            let key = format!("k{:03}", (i * 7919) % 400);
            match i % 11 {
                3 => {
                    w.delete_range(&KeyRange::new(key.as_bytes(), b""))
                        .expect("delete");
                }
                5 => {
                    w.put(key.as_bytes(), vec![1; 20], i64::from(i % 4), false)
                        .expect("put");
                    w.save_lease(i64::from(i % 4), 30);
                }
                _ => {
                    w.put(key.as_bytes(), vec![2; 20], 0, false).expect("put");
                }
            }
            w.commit().expect("commit");
            s.flush().expect("flush");
            let compacted_now = i % 400 == 399;
            let mut before = None;
            if compacted_now {
                // The image a crash between the compaction and its new image would leave.
                s.write_image();
                before = Some(std::fs::read(dir.path().join(image::FILE)).expect("image"));
                let at = s.read_current() - 50;
                s.compact(at).expect("compact");
            }
            // A crash now (right after a compaction: the image is older than it): whatever
            // image there is, and the records after it.
            if i % 250 == 125 || compacted_now {
                let copy = tempfile::tempdir().expect("tempdir");
                crate::durable::crash_copy(dir.path(), copy.path());
                images += usize::from(copy.path().join(image::FILE).exists());
                let (c, rec) = reopen(copy.path());
                same_state(&c, &rec, &format!("after {i} writes"));
                drop(c);
                // An image from before the log's last reset (a crash before the checkpoint's
                // own image was written): the records between the two are only in sled.
                if let Some(old) = &first_image {
                    let copy = tempfile::tempdir().expect("tempdir");
                    crate::durable::crash_copy(dir.path(), copy.path());
                    image::write(copy.path(), old).expect("an image of an older checkpoint");
                    let (c, rec) = reopen(copy.path());
                    same_state(
                        &c,
                        &rec,
                        &format!("after {i} writes, an older checkpoint's image"),
                    );
                }
                if first_image.is_none() {
                    first_image = std::fs::read(dir.path().join(image::FILE)).ok();
                }
                if let Some(before) = before {
                    let copy = tempfile::tempdir().expect("tempdir");
                    crate::durable::crash_copy(dir.path(), copy.path());
                    image::write(copy.path(), &before).expect("the older image");
                    let (c, rec) = reopen(copy.path());
                    same_state(
                        &c,
                        &rec,
                        &format!("after {i} writes, an image older than the compaction"),
                    );
                }
            }
        }
        assert!(images >= 4, "checkpoints wrote index images ({images})");
        // A snapshot of other data replaces this store's: its image must not be used.
        let (_a, snap) = snapshot_source();
        s.restore_snapshot(&snap, &["member_id"]).expect("restore");
        s.sync().expect("sync");
        let copy = tempfile::tempdir().expect("tempdir");
        crate::durable::crash_copy(dir.path(), copy.path());
        // An image of other data that would otherwise fit (it covers more than the store
        // holds, from before its compaction): only the epoch tells it apart.
        let mut other = KeyIndex::default();
        other.record_put(b"zzz", Revision::new(2, 0), 0);
        let stale = image::encode(&other, 10_000, 0, 0);
        image::write(copy.path(), &stale).expect("a stale image");
        let (c, rec) = reopen(copy.path());
        same_state(&c, &rec, "after a restore");
        assert_eq!(
            c.read().get(b"k0").expect("get").map(|kv| kv.value),
            Some(vec![49])
        );
    }

    #[test]
    fn a_backup_view_is_of_one_revision_and_holds_off_compactions() {
        let s = MvccStore::temporary().expect("store");
        let put = |k: &str| {
            let mut w = s.write();
            w.put(k.as_bytes(), b"v".to_vec(), 0, false).expect("put");
            w.commit().expect("commit");
            s.flush().expect("flush");
            s.publish(s.read_current());
        };
        for i in 0..3000 {
            put(&format!("k{}", i % 100));
        }
        let view = s.backup_view().expect("view");
        let at = view.rev();
        // Writes go on while the view is read (they are not in it).
        for i in 0..3000 {
            put(&format!("later{i}"));
        }
        s.apply_overlay().expect("to sled");
        let compacting = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|t| {
            let c = t.spawn(|| {
                s.compact(at).expect("compact");
                compacting.store(true, Ordering::SeqCst);
            });
            std::thread::sleep(std::time::Duration::from_millis(50));
            let mut revs = Vec::new();
            view.for_each_record(|k, _| {
                if let Some((r, _)) = Revision::from_key(k) {
                    revs.push(r.main);
                }
            })
            .expect("read");
            assert!(
                !compacting.load(Ordering::SeqCst),
                "compacted under a backup"
            );
            assert_eq!(revs.len(), 3000);
            assert_eq!(revs.last(), Some(&at));
            drop(view);
            c.join().expect("compaction");
        });
        assert_eq!(s.read().compacted(), at);
    }

    #[test]
    fn defragmenting_keeps_everything_and_survives_a_crash_at_any_step() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (s, _) = MvccStore::open(dir.path(), 1 << 20).expect("open");
            for i in 0..3000u32 {
                let mut w = s.write();
                w.put(
                    format!("k{:04}", i % 300).as_bytes(),
                    vec![1; 100],
                    0,
                    false,
                )
                .expect("put");
                w.commit().expect("commit");
            }
            s.flush().expect("flush");
            s.publish(s.read_current());
            s.compact(2900).expect("compact");
            let done = s.defragment().expect("defragment");
            assert!(done.after < done.before, "{done:?}");
            // Writes after the switch land in the new database.
            let mut w = s.write();
            w.put(b"after", b"x".to_vec(), 0, false).expect("put");
            w.commit().expect("commit");
            s.flush().expect("flush");
            s.publish(s.read_current());
            s.apply_overlay().expect("to sled");
            assert!(dir.path().join("kv.1").is_dir());
            assert!(!dir.path().join("kv").exists());
        }
        // A crash between the copy and the switch leaves a copy nobody uses: removed on open.
        std::fs::create_dir(dir.path().join("kv.2")).expect("mkdir");
        let (s, _) = reopen(dir.path());
        assert!(!dir.path().join("kv.2").exists());
        assert_eq!(s.published(), 3002);
        let view = s.read();
        for i in 0..300u32 {
            let kv = view
                .get(format!("k{i:04}").as_bytes())
                .expect("get")
                .expect("present");
            assert_eq!(kv.version, 10);
        }
        assert_eq!(
            view.get(b"after").expect("get").map(|kv| kv.value),
            Some(b"x".to_vec())
        );
        assert_eq!(view.compacted(), 2900);
    }

    #[test]
    fn reopening_rebuilds_index_and_leases() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (s, _) = MvccStore::open(dir.path(), 1 << 20).expect("open");
            let mut w = s.write();
            w.put(b"a", b"1".to_vec(), 7, false).expect("put");
            w.save_lease(7, 30);
            w.commit().expect("commit");
            let mut w = s.write();
            w.put(b"b", b"2".to_vec(), 0, false).expect("put");
            w.delete_range(&KeyRange::new(b"b", b"")).expect("delete");
            w.commit().expect("commit");
            s.flush().expect("flush");
        }
        let (s, rec) = reopen(dir.path());
        assert_eq!(s.published(), 3);
        assert_eq!(rec.leases, vec![(7, 30)]);
        assert_eq!(rec.attached, vec![(b"a".to_vec(), 7)]);
        let view = s.read();
        assert_eq!(
            view.get(b"a").expect("get").map(|kv| kv.value),
            Some(b"1".to_vec())
        );
        assert_eq!(view.get(b"b").expect("get"), None);
    }

    #[test]
    fn puts_after_reopening_continue_versions_and_leases_without_reading() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (s, _) = MvccStore::open(dir.path(), 1 << 20).expect("open");
            for v in [b"1", b"2"] {
                let mut w = s.write();
                w.put(b"a", v.to_vec(), 7, false).expect("put");
                w.commit().expect("commit");
            }
            // The first put's record goes: only the newest one is left to rebuild from.
            s.compact(3).expect("compact");
            s.flush().expect("flush");
        }
        let (s, _) = reopen(dir.path());
        let mut w = s.write();
        assert_eq!(w.lease_of(b"a"), 7);
        assert_eq!(w.put(b"a", b"3".to_vec(), 0, false).expect("put"), None);
        let done = w.commit().expect("commit");
        let kv = done.events[0].kv.clone().expect("kv");
        assert_eq!((kv.create_revision, kv.version, kv.lease), (2, 3, 0));
        assert_eq!(
            done.lease_moves,
            vec![LeaseMove {
                key: b"a".to_vec(),
                from: 7,
                to: 0
            }]
        );
        s.log_staged().expect("log staged");
        s.publish(4);
        let mut ev = done.events[0].clone();
        assert_eq!(ev.prev_kv, None);
        s.read().fill_prev(&mut ev).expect("fill prev");
        assert_eq!(
            ev.prev_kv.map(|p| (p.value, p.version)),
            Some((b"2".to_vec(), 2))
        );
        assert_eq!(s.read().get(b"a").expect("get"), Some(kv));
    }
}
