//! The raft log, hard state, conf state and latest snapshot of one member, in sled.
//!
//! Keys in the tree: `e` + index (big-endian u64) -> Entry, `hs` -> HardState, `cs` ->
//! ConfState, `snap` -> Snapshot (metadata and the state machine's data). Entries below the
//! snapshot's index are deleted by compaction. The first and last indexes and the
//! states are cached in memory.
//!
//! Durability comes from a write-ahead log beside sled (`<dir>.wal`, [`SharedWal`]), not from
//! flushing sled: every change goes to sled and, as the same record, to the log; a sync is one
//! write and one fdatasync of the log (sled's flush wakes its whole I/O thread pool and is not
//! power-loss safe by itself, see [`crate::durable`]). Past [`CHECKPOINT_BYTES`] sled is made
//! durable and the log restarts; opening replays the log into sled first. A sync covers
//! everything written before it began, so it can run on another thread ([`LogSyncer`]) while
//! the node goes on writing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use super::node::SnapshotSource;
use crate::durable::SledFiles;
use crate::wal::{to_batch, Change, SharedWal, Wal};

/// Log size past which sled is made durable and the log restarts.
pub const CHECKPOINT_BYTES: u64 = 16 * 1024 * 1024;

/// Errors of the log's own storage (sled or a record that does not decode).
fn store_err(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'e';
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

/// A member's raft log and state.
pub struct RaftLog {
    tree: sled::Tree,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: Snapshot,
    /// Index of the first entry in the log (snapshot index + 1).
    first: u64,
    /// Index of the last entry (snapshot index when the log is empty).
    last: u64,
    /// Makes snapshot data on demand (then stored snapshots hold metadata only).
    source: Option<SnapshotSource>,
    durability: Arc<Durability>,
}

/// What makes the log's writes durable: its write-ahead log, and sled's files for checkpoints.
struct Durability {
    db: sled::Db,
    files: SledFiles,
    wal: SharedWal,
}

impl Durability {
    fn sync(&self) -> raft::Result<()> {
        self.wal
            .sync(CHECKPOINT_BYTES, || {
                self.files
                    .sync(&self.db)
                    .map_err(|e| crate::error::EtcdError::Storage(e.to_string()))
            })
            .map_err(store_err)
    }
}

/// Makes a [`RaftLog`]'s writes durable from another thread (the node's syncer), while the
/// log's owner goes on writing: a sync covers at least everything written before it began.
pub struct LogSyncer(Arc<Durability>);

impl LogSyncer {
    pub fn sync(&self) -> raft::Result<()> {
        self.0.sync()
    }
}

/// Where the write-ahead log of the sled database in `dir` lives.
fn wal_path(dir: &Path) -> PathBuf {
    let mut p = dir.as_os_str().to_owned();
    p.push(".wal");
    PathBuf::from(p)
}

impl RaftLog {
    /// Opens (or creates) the log in `dir` (sled) and `<dir>.wal`, replaying the latter.
    pub fn open(dir: &Path) -> raft::Result<Self> {
        let config = sled::Config::new()
            .path(dir)
            .cache_capacity(4 << 20)
            // Durability comes from the write-ahead log; sled is flushed at checkpoints.
            .flush_every_ms(None);
        // A log closed a moment ago (a restarted node) may still be finishing sled's last
        // writes on its I/O threads, which hold the file lock until they are done.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let db = loop {
            match config.open() {
                // sled reports the lock as an error of kind Other, naming the cause.
                Err(sled::Error::Io(e))
                    if (e.kind() == std::io::ErrorKind::WouldBlock
                        || e.to_string().contains("could not acquire lock"))
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                r => break r.map_err(store_err)?,
            }
        };
        let tree = db.open_tree("raft").map_err(store_err)?;
        let files = SledFiles::open(dir).map_err(store_err)?;
        let (mut wal, records) = Wal::open(&wal_path(dir)).map_err(store_err)?;
        if !records.is_empty() {
            tracing::info!(
                records = records.len(),
                "replaying the raft log's write-ahead log"
            );
            for rec in &records {
                tree.apply_batch(to_batch(rec)).map_err(store_err)?;
            }
            files.sync(&db).map_err(store_err)?;
            wal.reset().map_err(store_err)?;
        }
        let decode_hs = |b: &[u8]| HardState::parse_from_bytes(b).map_err(store_err);
        let hard_state = match tree.get("hs").map_err(store_err)? {
            Some(b) => decode_hs(&b)?,
            None => HardState::default(),
        };
        let conf_state = match tree.get("cs").map_err(store_err)? {
            Some(b) => ConfState::parse_from_bytes(&b).map_err(store_err)?,
            None => ConfState::default(),
        };
        let snapshot = match tree.get("snap").map_err(store_err)? {
            Some(b) => Snapshot::parse_from_bytes(&b).map_err(store_err)?,
            None => Snapshot::default(),
        };
        let snap_index = snapshot.get_metadata().index;
        let last = contiguous_tail(&tree, snap_index)?;
        Ok(RaftLog {
            tree,
            hard_state,
            conf_state,
            snapshot,
            first: snap_index + 1,
            last,
            source: None,
            durability: Arc::new(Durability {
                db,
                files,
                wal: SharedWal::new(wal),
            }),
        })
    }

    /// A handle that syncs this log from another thread.
    pub fn syncer(&self) -> LogSyncer {
        LogSyncer(self.durability.clone())
    }

    /// Writes `changes` to sled and, as one record, to the write-ahead log (durable at the
    /// next sync). `atomic`: as one sled batch, for changes whose every prefix would not be a
    /// valid log (truncating a conflict, compacting, installing a snapshot); otherwise key by
    /// key, because a sled batch costs two writes by sled's I/O threads, each waking all of
    /// them. Key by key, a crash may leave a prefix of unsynced changes in sled, which the
    /// write-ahead log's replay and [`RaftLog::open`]'s contiguity check make harmless.
    fn write(&self, changes: Vec<Change>, atomic: bool) -> raft::Result<()> {
        if atomic {
            self.tree
                .apply_batch(to_batch(&changes))
                .map_err(store_err)?;
        } else {
            for (k, v) in &changes {
                match v {
                    Some(v) => self.tree.insert(k.as_slice(), v.as_slice()),
                    None => self.tree.remove(k.as_slice()),
                }
                .map_err(store_err)?;
            }
        }
        self.durability.wal.append(&changes);
        Ok(())
    }

    /// From now on snapshots sent to followers are made on demand by `source`.
    pub fn set_snapshot_source(&mut self, source: SnapshotSource) {
        self.source = Some(source);
    }

    /// Whether the log has never been initialized (a member's first start).
    pub fn is_empty(&self) -> bool {
        self.last == 0 && self.conf_state.voters.is_empty() && self.hard_state.term == 0
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn set_hard_state(&mut self, hs: HardState) -> raft::Result<()> {
        self.write(
            vec![(
                b"hs".to_vec(),
                Some(hs.write_to_bytes().map_err(store_err)?),
            )],
            false,
        )?;
        self.hard_state = hs;
        Ok(())
    }

    /// Moves only the commit index (raft reports it apart from the rest of the hard state).
    pub fn set_commit(&mut self, commit: u64) -> raft::Result<()> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(hs)
    }

    pub fn set_conf_state(&mut self, cs: ConfState) -> raft::Result<()> {
        self.write(
            vec![(
                b"cs".to_vec(),
                Some(cs.write_to_bytes().map_err(store_err)?),
            )],
            false,
        )?;
        self.conf_state = cs;
        Ok(())
    }

    /// Appends entries, replacing any conflicting suffix already in the log.
    pub fn append(&mut self, entries: &[Entry]) -> raft::Result<()> {
        let Some(first_new) = entries.first().map(|e| e.index) else {
            return Ok(());
        };
        if first_new < self.first {
            return Err(store_err(format!(
                "append at {first_new} below the log's first index {}",
                self.first
            )));
        }
        if first_new > self.last + 1 {
            return Err(store_err(format!(
                "append at {first_new} leaves a gap after {}",
                self.last
            )));
        }
        let mut changes = Vec::with_capacity(entries.len());
        // A leader's log wins: drop our entries from the first new index on.
        let conflict = first_new <= self.last;
        for i in first_new..=self.last {
            changes.push((entry_key(i).to_vec(), None));
        }
        for e in entries {
            let value = e.write_to_bytes().map_err(store_err)?;
            changes.push((entry_key(e.index).to_vec(), Some(value)));
        }
        // Plain appends in index order: every prefix of them is a valid log.
        self.write(changes, conflict)?;
        self.last = entries.last().map_or(self.last, |e| e.index);
        Ok(())
    }

    /// Makes everything written so far durable, power loss included.
    pub fn sync(&self) -> raft::Result<()> {
        self.durability.sync()
    }

    /// Records a snapshot of the state machine at `index` (already applied) and drops the log
    /// entries it covers.
    pub fn create_snapshot(&mut self, index: u64, data: Vec<u8>) -> raft::Result<()> {
        if index <= self.snapshot.get_metadata().index {
            return Ok(());
        }
        if index > self.last {
            return Err(store_err(format!(
                "snapshot at {index} beyond the last entry {}",
                self.last
            )));
        }
        let term = self.term_of(index)?;
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.set_conf_state(self.conf_state.clone());
        let mut snap = Snapshot::default();
        snap.set_metadata(meta);
        snap.data = data.into();
        self.write(
            vec![(
                b"snap".to_vec(),
                Some(snap.write_to_bytes().map_err(store_err)?),
            )],
            true,
        )?;
        self.snapshot = snap;
        self.compact(index)
    }

    /// Drops entries up to and including `index` (it must be covered by the snapshot).
    fn compact(&mut self, index: u64) -> raft::Result<()> {
        let changes = (self.first..=index.min(self.last))
            .map(|i| (entry_key(i).to_vec(), None))
            .collect();
        self.write(changes, true)?;
        self.first = index + 1;
        self.last = self.last.max(index);
        Ok(())
    }

    /// Installs a snapshot received from the leader: the log restarts after it.
    pub fn apply_snapshot(&mut self, snap: Snapshot) -> raft::Result<()> {
        let meta = snap.get_metadata().clone();
        if meta.index <= self.snapshot.get_metadata().index {
            return Err(raft::Error::Store(StorageError::SnapshotOutOfDate));
        }
        let mut changes: Vec<Change> = (self.first..=self.last)
            .map(|i| (entry_key(i).to_vec(), None))
            .collect();
        // With an on-demand source the state machine holds the state itself: keep metadata.
        let mut stored = snap.clone();
        if self.source.is_some() {
            stored.data = Default::default();
        }
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = meta.index;
        let cs = meta.get_conf_state().clone();
        // One batch: the log, its snapshot, hard state and membership change together.
        changes.push((
            b"snap".to_vec(),
            Some(stored.write_to_bytes().map_err(store_err)?),
        ));
        changes.push((
            b"hs".to_vec(),
            Some(hs.write_to_bytes().map_err(store_err)?),
        ));
        changes.push((
            b"cs".to_vec(),
            Some(cs.write_to_bytes().map_err(store_err)?),
        ));
        self.write(changes, true)?;
        self.hard_state = hs;
        self.conf_state = cs;
        self.snapshot = stored;
        self.first = meta.index + 1;
        self.last = meta.index;
        Ok(())
    }

    fn get_entry(&self, index: u64) -> raft::Result<Entry> {
        match self.tree.get(entry_key(index)).map_err(store_err)? {
            Some(b) => Entry::parse_from_bytes(&b).map_err(store_err),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn term_of(&self, index: u64) -> raft::Result<u64> {
        let snap = self.snapshot.get_metadata();
        if index == snap.index {
            return Ok(snap.term);
        }
        if index < self.first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if index > self.last {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.get_entry(index)?.term)
    }

    /// Disk space the log takes (for metrics and the quota).
    pub fn size_on_disk(&self) -> u64 {
        self.durability.db.size_on_disk().unwrap_or(0)
    }
}

/// Makes the entries in `tree` a contiguous run after the snapshot at `snap_index` and returns
/// the last index. Entries the snapshot covers are leftovers of an interrupted compaction;
/// entries after a gap were never synced (everything synced is in sled or was just replayed
/// from the write-ahead log, contiguously): a crash left them, and they go.
fn contiguous_tail(tree: &sled::Tree, snap_index: u64) -> raft::Result<u64> {
    let index_of = |k: &[u8]| -> raft::Result<u64> {
        Ok(u64::from_be_bytes(
            k.get(1..9)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| store_err("malformed entry key"))?,
        ))
    };
    let mut stale = Vec::new();
    let mut last = snap_index;
    for kv in tree.scan_prefix(b"e") {
        let (k, _) = kv.map_err(store_err)?;
        let i = index_of(&k)?;
        if i <= snap_index || i != last + 1 {
            stale.push(k);
        } else {
            last = i;
        }
    }
    if !stale.is_empty() {
        tracing::warn!(
            entries = stale.len(),
            last,
            "dropping raft log entries left by a crash (compacted or never synced)"
        );
        let mut batch = sled::Batch::default();
        for k in stale {
            batch.remove(k);
        }
        tree.apply_batch(batch).map_err(store_err)?;
    }
    Ok(last)
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last + 1 {
            return Err(store_err(format!(
                "entries up to {high} asked, the log ends at {}",
                self.last
            )));
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let mut size = 0u64;
        for kv in self.tree.range(entry_key(low)..entry_key(high)) {
            let (_, v) = kv.map_err(store_err)?;
            size += v.len() as u64;
            // At least one entry, whatever its size.
            if !out.is_empty() && size > max {
                break;
            }
            out.push(Entry::parse_from_bytes(&v).map_err(store_err)?);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.term_of(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        if let Some(src) = &self.source {
            let started = std::time::Instant::now();
            if let Some((index, data)) = src() {
                tracing::info!(
                    to = %format!("{to:x}"),
                    index,
                    bytes = data.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "made a snapshot for a member that is behind"
                );
                if index >= request_index && index >= self.snapshot.get_metadata().index {
                    let mut meta = SnapshotMetadata {
                        index,
                        term: self.term_of(index)?,
                        ..Default::default()
                    };
                    meta.set_conf_state(self.conf_state.clone());
                    let mut snap = Snapshot::default();
                    snap.set_metadata(meta);
                    snap.data = data.into();
                    return Ok(snap);
                }
            }
        }
        if self.snapshot.get_metadata().index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    fn all(log: &RaftLog) -> Vec<(u64, u64)> {
        let (lo, hi) = (
            log.first_index().expect("first"),
            log.last_index().expect("last"),
        );
        log.entries(lo, hi + 1, None, GetEntriesContext::empty(false))
            .expect("entries")
            .iter()
            .map(|e| (e.index, e.term))
            .collect()
    }

    #[test]
    fn appends_truncate_conflicts_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut log = RaftLog::open(&dir.path().join("raft")).expect("open");
            assert!(log.is_empty());
            log.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")])
                .expect("append");
            // A new leader's entries replace ours from index 2 on.
            log.append(&[entry(2, 2, b"x")]).expect("append");
            assert_eq!(all(&log), vec![(1, 1), (2, 2)]);
            assert!(log.append(&[entry(5, 2, b"gap")]).is_err());
            let hs = HardState {
                term: 2,
                vote: 3,
                commit: 2,
                ..Default::default()
            };
            log.set_hard_state(hs).expect("hs");
            let cs = ConfState {
                voters: vec![1, 2, 3],
                ..Default::default()
            };
            log.set_conf_state(cs).expect("cs");
            log.sync().expect("sync");
        }
        let log = RaftLog::open(&dir.path().join("raft")).expect("reopen");
        assert_eq!(all(&log), vec![(1, 1), (2, 2)]);
        let st = log.initial_state().expect("state");
        assert_eq!(
            (st.hard_state.term, st.hard_state.vote, st.hard_state.commit),
            (2, 3, 2)
        );
        assert_eq!(st.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(log.term(2).expect("term"), 2);
        assert!(matches!(
            log.term(3),
            Err(raft::Error::Store(StorageError::Unavailable))
        ));
    }

    #[test]
    fn a_crash_keeps_what_was_synced_though_sled_was_not_flushed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = RaftLog::open(&dir.path().join("raft")).expect("open");
        let entries: Vec<Entry> = (1..=500).map(|i| entry(i, 1, &[7; 200])).collect();
        log.append(&entries).expect("append");
        log.set_hard_state(HardState {
            term: 1,
            vote: 1,
            commit: 400,
            ..Default::default()
        })
        .expect("hs");
        log.syncer().sync().expect("sync");
        // Written after the sync: a crash may lose it, and must not corrupt anything.
        log.append(&[entry(501, 1, b"late")]).expect("append");
        let copy = tempfile::tempdir().expect("tempdir");
        crate::durable::crash_copy(dir.path(), copy.path());
        drop(log);
        let log = RaftLog::open(&copy.path().join("raft")).expect("open the crash copy");
        let last = log.last_index().expect("last");
        assert!(last == 500 || last == 501, "{last}");
        assert_eq!(log.term(500).expect("term"), 1);
        assert_eq!(log.initial_state().expect("state").hard_state.commit, 400);
        // Replayed into sled and checkpointed: the log starts over empty.
        assert_eq!(
            std::fs::metadata(copy.path().join("raft.wal"))
                .expect("wal")
                .len(),
            0
        );
    }

    #[test]
    fn entries_after_a_gap_or_under_the_snapshot_are_dropped_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut log = RaftLog::open(&dir.path().join("raft")).expect("open");
            let entries: Vec<Entry> = (1..=5).map(|i| entry(i, 1, b"x")).collect();
            log.append(&entries).expect("append");
            log.sync().expect("sync");
            // What a crash could leave: an unsynced entry past a gap, and one the snapshot
            // (at 0 here) covers.
            for i in [0, 9] {
                let e = entry(i, 1, b"stale").write_to_bytes().expect("encode");
                log.tree.insert(entry_key(i), e).expect("insert");
            }
        }
        let log = RaftLog::open(&dir.path().join("raft")).expect("reopen");
        assert_eq!(log.last_index().expect("last"), 5);
        assert_eq!(all(&log), (1..=5).map(|i| (i, 1)).collect::<Vec<_>>());
        for i in [0, 9] {
            assert!(log.tree.get(entry_key(i)).expect("get").is_none(), "{i}");
        }
    }

    #[test]
    fn snapshots_compact_the_log_and_install_from_a_leader() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = RaftLog::open(&dir.path().join("raft")).expect("open");
        let ents: Vec<Entry> = (1..=10).map(|i| entry(i, 1, b"v")).collect();
        log.append(&ents).expect("append");
        log.create_snapshot(6, b"state@6".to_vec())
            .expect("snapshot");
        assert_eq!(log.first_index().expect("first"), 7);
        assert_eq!(log.term(6).expect("term of the snapshot index"), 1);
        assert!(matches!(
            log.term(5),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        assert!(matches!(
            log.entries(3, 8, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        let snap = log.snapshot(6, 2).expect("snapshot");
        assert_eq!(&snap.data[..], b"state@6");
        assert!(log.snapshot(8, 2).is_err(), "a newer one is not there yet");
        drop(log);
        let log = RaftLog::open(&dir.path().join("raft")).expect("reopen");
        assert_eq!(all(&log).len(), 4);

        // A follower far behind installs the leader's snapshot; its log restarts after it.
        let dir2 = tempfile::tempdir().expect("tempdir");
        let mut f = RaftLog::open(&dir2.path().join("raft")).expect("open");
        f.append(&[entry(1, 1, b"old")]).expect("append");
        f.apply_snapshot(snap.clone()).expect("install");
        assert_eq!(
            (f.first_index().ok(), f.last_index().ok()),
            (Some(7), Some(6))
        );
        assert_eq!(f.hard_state().commit, 6);
        assert!(
            f.apply_snapshot(snap).is_err(),
            "the same snapshot again is out of date"
        );
        f.append(&[entry(7, 2, b"new")])
            .expect("append after the snapshot");
        assert_eq!(all(&f), vec![(7, 2)]);
    }

    #[test]
    fn entries_respect_max_size_but_return_at_least_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = RaftLog::open(&dir.path().join("raft")).expect("open");
        let big = vec![7u8; 1000];
        let ents: Vec<Entry> = (1..=5).map(|i| entry(i, 1, &big)).collect();
        log.append(&ents).expect("append");
        let got = log
            .entries(1, 6, 1, GetEntriesContext::empty(false))
            .expect("entries");
        assert_eq!(got.len(), 1);
        let got = log
            .entries(1, 6, 2500, GetEntriesContext::empty(false))
            .expect("entries");
        assert_eq!(got.len(), 2);
    }
}
