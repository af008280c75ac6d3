//! The raft log, hard state, conf state and latest snapshot of one member: in memory, made
//! durable by a write-ahead log of its own (`<dir>.wal`, [`SharedWal`]).
//!
//! Every change is one record of (key, value) changes: `e` + index (big-endian u64) -> Entry,
//! `hs` -> HardState, `cs` -> ConfState, `snap` -> Snapshot (metadata, plus the state
//! machine's data when no on-demand source makes it). A sync is one write and one fdatasync of
//! the log, and covers everything written before it began, so it runs on another thread
//! ([`LogSyncer`]) while the node goes on writing. The entries themselves stay in memory
//! between compactions (as etcd's MemoryStorage does), so reading them back to send to
//! followers costs no disk or decoding. Once the file has grown past
//! [`CHECKPOINT_BYTES`] (and twice the live state), it is replaced, atomically, by an image:
//! one record of the live state.
//!
//! Opening replays the records. Entries the snapshot covers, and entries after a gap, are
//! leftovers of a crash (everything synced is contiguous) and are dropped. A member whose log
//! is still in the sled database of earlier versions (`<dir>/`) is moved to the new format on
//! its first start.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use super::node::SnapshotSource;
use crate::wal::{body_len, Change, SharedWal, Wal};

/// Log size past which the file is replaced by an image of the live state.
pub const CHECKPOINT_BYTES: u64 = 16 * 1024 * 1024;

/// Errors of the log's own storage (its file or a record that does not decode).
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
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: Snapshot,
    /// Index of the first entry in the log (snapshot index + 1).
    first: u64,
    /// The entries from `first` on.
    entries: VecDeque<Entry>,
    /// Makes snapshot data on demand (then stored snapshots hold metadata only).
    source: Option<SnapshotSource>,
    wal: Arc<SharedWal>,
    /// Bytes appended since the file last started over.
    written: u64,
    /// Size of the live state's image when it was last written.
    image_bytes: u64,
}

/// Makes a [`RaftLog`]'s writes durable from another thread (the node's syncer), while the
/// log's owner goes on writing: a sync covers at least everything written before it began.
pub struct LogSyncer(Arc<SharedWal>);

impl LogSyncer {
    pub fn sync(&self) -> raft::Result<()> {
        self.0.sync().map_err(store_err)
    }
}

/// Where the write-ahead log of the log in `dir` lives.
fn wal_path(dir: &Path) -> PathBuf {
    let mut p = dir.as_os_str().to_owned();
    p.push(".wal");
    PathBuf::from(p)
}

/// The records of the sled database that held the log before it moved to its own file.
fn legacy_records(dir: &Path) -> raft::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    if !dir.join("db").is_file() {
        return Ok(Vec::new());
    }
    let db = sled::Config::new().path(dir).open().map_err(store_err)?;
    let tree = db.open_tree("raft").map_err(store_err)?;
    tree.iter()
        .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(store_err))
        .collect()
}

impl RaftLog {
    /// Opens (or creates) the log whose file is `<dir>.wal`, replaying it.
    pub fn open(dir: &Path) -> raft::Result<Self> {
        let legacy = legacy_records(dir)?;
        let (wal, records) = Wal::open(&wal_path(dir)).map_err(store_err)?;
        let replayed = records.len();
        // The last value of every key, in key order: entries by index, then the states.
        let mut state: BTreeMap<Vec<u8>, Vec<u8>> = legacy.into_iter().collect();
        let migrated = !state.is_empty();
        for (k, v) in records.into_iter().flatten() {
            match v {
                Some(v) => state.insert(k, v),
                None => state.remove(&k),
            };
        }
        let decode_hs = |b: &[u8]| HardState::parse_from_bytes(b).map_err(store_err);
        let hard_state = match state.get(b"hs".as_slice()) {
            Some(b) => decode_hs(b)?,
            None => HardState::default(),
        };
        let conf_state = match state.get(b"cs".as_slice()) {
            Some(b) => ConfState::parse_from_bytes(b).map_err(store_err)?,
            None => ConfState::default(),
        };
        let snapshot = match state.get(b"snap".as_slice()) {
            Some(b) => Snapshot::parse_from_bytes(b).map_err(store_err)?,
            None => Snapshot::default(),
        };
        let snap_index = snapshot.get_metadata().index;
        let mut entries = VecDeque::new();
        let (mut compacted, mut dropped) = (0usize, 0usize);
        for (k, v) in state.range(b"e".to_vec()..b"f".to_vec()) {
            let index = k
                .get(1..9)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| store_err("malformed entry key"))?;
            if index <= snap_index {
                // A snapshot compacts by its record alone: the entries under it go here.
                compacted += 1;
                continue;
            }
            if index != snap_index + 1 + entries.len() as u64 {
                dropped += 1;
                continue;
            }
            entries.push_back(Entry::parse_from_bytes(v).map_err(store_err)?);
        }
        if compacted > 0 {
            tracing::debug!(entries = compacted, "entries under the snapshot skipped");
        }
        if dropped > 0 {
            tracing::warn!(
                entries = dropped,
                "dropping raft log entries after a gap (left by a crash)"
            );
        }
        let mut log = RaftLog {
            hard_state,
            conf_state,
            snapshot,
            first: snap_index + 1,
            entries,
            source: None,
            wal: Arc::new(SharedWal::new(wal)),
            written: 0,
            image_bytes: 0,
        };
        if replayed > 1 || migrated || dropped > 0 {
            // Start from a compact file: one image of what was just read.
            log.write_image()?;
            log.sync()?;
        }
        if migrated {
            std::fs::remove_dir_all(dir).map_err(store_err)?;
            tracing::info!(dir = %dir.display(), "raft log moved out of sled into its own file");
        }
        Ok(log)
    }

    /// A handle that syncs this log from another thread.
    pub fn syncer(&self) -> LogSyncer {
        LogSyncer(self.wal.clone())
    }

    fn last(&self) -> u64 {
        self.first + self.entries.len() as u64 - 1
    }

    /// Queues `changes` as one record (durable at the next sync). When the file has grown
    /// enough, queues an image of the live state instead of keeping its history.
    fn write(&mut self, changes: Vec<Change>) -> raft::Result<()> {
        self.wal.append(&changes);
        self.written += 8 + body_len(&changes) as u64;
        if self.written > CHECKPOINT_BYTES.max(2 * self.image_bytes) {
            self.write_image()?;
        }
        Ok(())
    }

    /// Queues a record holding the whole live state, to replace the file's content.
    fn write_image(&mut self) -> raft::Result<()> {
        let mut image: Vec<Change> = vec![
            (
                b"hs".to_vec(),
                Some(self.hard_state.write_to_bytes().map_err(store_err)?),
            ),
            (
                b"cs".to_vec(),
                Some(self.conf_state.write_to_bytes().map_err(store_err)?),
            ),
            (
                b"snap".to_vec(),
                Some(self.snapshot.write_to_bytes().map_err(store_err)?),
            ),
        ];
        for e in &self.entries {
            image.push((
                entry_key(e.index).to_vec(),
                Some(e.write_to_bytes().map_err(store_err)?),
            ));
        }
        self.image_bytes = 8 + body_len(&image) as u64;
        self.written = self.image_bytes;
        self.wal.replace(&image);
        Ok(())
    }

    /// From now on snapshots sent to followers are made on demand by `source`.
    pub fn set_snapshot_source(&mut self, source: SnapshotSource) {
        self.source = Some(source);
    }

    /// Whether the log has never been initialized (a member's first start).
    pub fn is_empty(&self) -> bool {
        self.last() == 0 && self.conf_state.voters.is_empty() && self.hard_state.term == 0
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn set_hard_state(&mut self, hs: HardState) -> raft::Result<()> {
        let value = hs.write_to_bytes().map_err(store_err)?;
        self.hard_state = hs;
        self.write(vec![(b"hs".to_vec(), Some(value))])
    }

    /// Moves only the commit index (raft reports it apart from the rest of the hard state).
    pub fn set_commit(&mut self, commit: u64) -> raft::Result<()> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(hs)
    }

    pub fn set_conf_state(&mut self, cs: ConfState) -> raft::Result<()> {
        let value = cs.write_to_bytes().map_err(store_err)?;
        self.conf_state = cs;
        self.write(vec![(b"cs".to_vec(), Some(value))])
    }

    /// Appends entries, replacing any conflicting suffix already in the log.
    pub fn append(&mut self, entries: &[Entry]) -> raft::Result<()> {
        let Some(first_new) = entries.first().map(|e| e.index) else {
            return Ok(());
        };
        let last = self.last();
        if first_new < self.first {
            return Err(store_err(format!(
                "append at {first_new} below the log's first index {}",
                self.first
            )));
        }
        if first_new > last + 1 {
            return Err(store_err(format!(
                "append at {first_new} leaves a gap after {last}"
            )));
        }
        // A leader's log wins: drop our entries from the first new index on, in the same
        // record as the new ones.
        let mut changes = Vec::with_capacity(entries.len());
        for i in first_new..=last {
            changes.push((entry_key(i).to_vec(), None));
        }
        self.entries.truncate((first_new - self.first) as usize);
        for e in entries {
            let value = e.write_to_bytes().map_err(store_err)?;
            changes.push((entry_key(e.index).to_vec(), Some(value)));
            self.entries.push_back(e.clone());
        }
        self.write(changes)
    }

    /// Makes everything written so far durable, power loss included.
    pub fn sync(&self) -> raft::Result<()> {
        self.wal.sync().map_err(store_err)
    }

    /// Records a snapshot of the state machine at `index` (already applied) and drops the log
    /// entries it covers.
    pub fn create_snapshot(&mut self, index: u64, data: Vec<u8>) -> raft::Result<()> {
        if index <= self.snapshot.get_metadata().index {
            return Ok(());
        }
        if index > self.last() {
            return Err(store_err(format!(
                "snapshot at {index} beyond the last entry {}",
                self.last()
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
        let value = snap.write_to_bytes().map_err(store_err)?;
        // Entries up to `index` go: on replay, the snapshot record drops them again.
        self.entries.drain(..(index + 1 - self.first) as usize);
        self.first = index + 1;
        self.snapshot = snap;
        self.write(vec![(b"snap".to_vec(), Some(value))])
    }

    /// Installs a snapshot received from the leader: the log restarts after it.
    pub fn apply_snapshot(&mut self, snap: Snapshot) -> raft::Result<()> {
        let meta = snap.get_metadata().clone();
        if meta.index <= self.snapshot.get_metadata().index {
            return Err(raft::Error::Store(StorageError::SnapshotOutOfDate));
        }
        // Every entry goes, those after the snapshot's index too: explicitly, so that a
        // replay does not find them after it.
        let mut changes: Vec<Change> = (self.first..=self.last())
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
        // One record: the log, its snapshot, hard state and membership change together.
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
        self.hard_state = hs;
        self.conf_state = cs;
        self.snapshot = stored;
        self.first = meta.index + 1;
        self.entries.clear();
        self.write(changes)
    }

    fn get_entry(&self, index: u64) -> raft::Result<&Entry> {
        if index < self.first {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.entries
            .get((index - self.first) as usize)
            .ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn term_of(&self, index: u64) -> raft::Result<u64> {
        let snap = self.snapshot.get_metadata();
        if index == snap.index {
            return Ok(snap.term);
        }
        Ok(self.get_entry(index)?.term)
    }
}

impl Drop for RaftLog {
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            tracing::warn!(error = %e, "syncing the raft log on close failed");
        }
    }
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
        if high > self.last() + 1 {
            return Err(store_err(format!(
                "entries up to {high} asked, the log ends at {}",
                self.last()
            )));
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::new();
        let mut size = 0u64;
        let (lo, hi) = ((low - self.first) as usize, (high - self.first) as usize);
        for e in self.entries.range(lo..hi) {
            size += u64::from(e.compute_size());
            // At least one entry, whatever its size.
            if !out.is_empty() && size > max {
                break;
            }
            out.push(e.clone());
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
        Ok(self.last())
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
    fn a_crash_keeps_what_was_synced() {
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
        // Written after the sync: a crash loses it, and must not corrupt anything.
        log.append(&[entry(501, 1, b"late")]).expect("append");
        let copy = tempfile::tempdir().expect("tempdir");
        crate::durable::crash_copy(dir.path(), copy.path());
        drop(log);
        let log = RaftLog::open(&copy.path().join("raft")).expect("open the crash copy");
        assert_eq!(log.last_index().expect("last"), 500);
        assert_eq!(log.term(500).expect("term"), 1);
        assert_eq!(log.initial_state().expect("state").hard_state.commit, 400);
        drop(log);
        // Closing syncs: the original has the late entry.
        let log = RaftLog::open(&dir.path().join("raft")).expect("reopen");
        assert_eq!(log.last_index().expect("last"), 501);
    }

    #[test]
    fn the_file_starts_over_from_an_image_once_it_has_grown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = wal_path(&dir.path().join("raft"));
        let mut log = RaftLog::open(&dir.path().join("raft")).expect("open");
        // 40 MiB appended in all, compacted as it goes: the file never holds all of it.
        let mut biggest = 0;
        for i in 1..=4000u64 {
            log.append(&[entry(i, 1, &[7; 10_000])]).expect("append");
            if i % 100 == 0 {
                log.create_snapshot(i - 50, Vec::new()).expect("snapshot");
            }
            log.sync().expect("sync");
            biggest = biggest.max(std::fs::metadata(&path).expect("meta").len());
        }
        assert!(biggest <= CHECKPOINT_BYTES + 2 * 1024 * 1024, "{biggest}");
        let live = (3951..=4000).map(|i| (i, 1)).collect::<Vec<_>>();
        drop(log);
        let mut log = RaftLog::open(&dir.path().join("raft")).expect("reopen");
        assert_eq!(log.first_index().expect("first"), 3951);
        assert_eq!(all(&log), live);
        // An image alone holds everything.
        log.write_image().expect("image");
        drop(log);
        let log = RaftLog::open(&dir.path().join("raft")).expect("reopen");
        assert_eq!(all(&log), live);
        assert_eq!(log.hard_state(), &HardState::default());
    }

    #[test]
    fn entries_after_a_gap_or_under_the_snapshot_are_dropped_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut log = RaftLog::open(&dir.path().join("raft")).expect("open");
            let entries: Vec<Entry> = (1..=5).map(|i| entry(i, 1, b"x")).collect();
            log.append(&entries).expect("append");
            log.create_snapshot(2, Vec::new()).expect("snapshot");
        }
        // What a crash could leave: an entry past a gap, and one the snapshot covers.
        {
            let (mut w, _) = Wal::open(&wal_path(&dir.path().join("raft"))).expect("wal");
            let stale = |i| {
                let e = entry(i, 1, b"stale").write_to_bytes().expect("encode");
                (entry_key(i).to_vec(), Some(e))
            };
            w.append(&[stale(1), stale(9)]);
            w.sync().expect("sync");
        }
        for _ in 0..2 {
            let log = RaftLog::open(&dir.path().join("raft")).expect("reopen");
            assert_eq!(log.first_index().expect("first"), 3);
            assert_eq!(log.last_index().expect("last"), 5);
            assert_eq!(all(&log), (3..=5).map(|i| (i, 1)).collect::<Vec<_>>());
            assert!(log
                .entries(3, 4, None, GetEntriesContext::empty(false))
                .expect("e")[0]
                .data
                .starts_with(b"x"));
        }
    }

    #[test]
    fn a_log_kept_in_sled_by_an_earlier_version_moves_to_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let raft_dir = dir.path().join("raft");
        {
            let db = sled::Config::new().path(&raft_dir).open().expect("sled");
            let tree = db.open_tree("raft").expect("tree");
            for i in 1..=3u64 {
                let e = entry(i, 2, b"old").write_to_bytes().expect("encode");
                tree.insert(entry_key(i), e).expect("insert");
            }
            let hs = HardState {
                term: 2,
                vote: 1,
                commit: 3,
                ..Default::default()
            };
            tree.insert("hs", hs.write_to_bytes().expect("hs"))
                .expect("insert");
            db.flush().expect("flush");
        }
        // Its write-ahead log held one more entry, not yet in sled.
        {
            let (mut w, _) = Wal::open(&wal_path(&raft_dir)).expect("wal");
            let e = entry(4, 2, b"new").write_to_bytes().expect("encode");
            w.append(&[(entry_key(4).to_vec(), Some(e))]);
            w.sync().expect("sync");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let log = loop {
            // sled lets go of its lock from its own threads, a moment after closing.
            match RaftLog::open(&raft_dir) {
                Ok(l) => break l,
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "sled still locked");
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("open: {e}"),
            }
        };
        assert_eq!(all(&log), (1..=4).map(|i| (i, 2)).collect::<Vec<_>>());
        assert_eq!(log.hard_state().commit, 3);
        assert!(!raft_dir.exists(), "the sled directory is gone");
        drop(log);
        let log = RaftLog::open(&raft_dir).expect("reopen");
        assert_eq!(all(&log).len(), 4);
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
