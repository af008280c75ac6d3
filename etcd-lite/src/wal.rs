//! The write-ahead log that makes commits durable cheaply: each committed write transaction is
//! appended as one checksummed record of the sled changes it made, and one `fdatasync` covers a
//! whole group of them. sled itself is flushed only at checkpoints, after which the log restarts.
//!
//! Recovery replays every record in order on top of whatever sled persisted. That is correct
//! because the log always holds a contiguous suffix of history starting at or before sled's last
//! checkpoint, and replaying puts and removes in order is idempotent. A torn final record (crash
//! mid-append) fails its checksum and is cut off: it was never acknowledged. A bad record with
//! intact records after it is not a torn tail but corruption of synced, acknowledged data: the
//! log refuses to open (cutting there would silently lose them), unless the operator asked for
//! the cut with `--unsafe-wal-cut-corrupt` (see [`cut_corrupt_records`]).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{EtcdError, Result};

/// One change to the sled tree: insert (`Some`) or remove (`None`).
pub type Change = (Vec<u8>, Option<Vec<u8>>);

/// Log size after which the store checkpoints (flushes sled, restarts the log).
pub const CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;
/// Largest record body: its length is a u32 (a corrupt length is caught by the checksum or by
/// running past the end of the file).
pub const MAX_RECORD: usize = u32::MAX as usize;
/// Largest append buffer kept for reuse after a sync.
const REUSED_BUFFER: usize = 4 * 1024 * 1024;

/// Sector size for telling unwritten space from corruption: a torn write leaves whole sectors
/// that never reached the disk, which read back as zeros.
const SECTOR: usize = 512;

static CUT_CORRUPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes every log opened after this call cut at its first bad record even when intact records
/// follow (the operator's last resort to start a member whose log is corrupt; what follows the
/// bad record is lost). Off by default.
pub fn cut_corrupt_records(yes: bool) {
    CUT_CORRUPT.store(yes, std::sync::atomic::Ordering::Relaxed);
}

/// The intact record at `pos`, if there is one: its body and its end.
fn record_at(data: &[u8], pos: usize) -> Option<(Vec<Change>, usize)> {
    let header = data.get(pos..pos + 8)?;
    let len = u32::from_be_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_be_bytes(header[4..].try_into().expect("4 bytes"));
    let body = data.get(pos + 8..(pos + 8).checked_add(len)?)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    Some((decode_body(body)?, pos + 8 + len))
}

/// Where the first intact, non-empty record after `pos` starts (records are never empty), if
/// any: a bad record followed by good ones is corruption, not a torn tail.
fn next_intact(data: &[u8], pos: usize) -> Option<usize> {
    (pos + 1..data.len().saturating_sub(8)).find(|&q| {
        let len = u32::from_be_bytes(data[q..q + 4].try_into().expect("4 bytes")) as usize;
        len > 0
            && q + 8 + len <= data.len()
            && record_at(data, q).is_some_and(|(r, _)| !r.is_empty())
    })
}

/// Whether `data[from..to]` covers a whole sector of zeros: space a torn write never wrote.
fn has_unwritten_sector(data: &[u8], from: usize, to: usize) -> bool {
    let first = from.div_ceil(SECTOR) * SECTOR;
    (first..to)
        .step_by(SECTOR)
        .any(|s| s + SECTOR <= to && data[s..s + SECTOR].iter().all(|b| *b == 0))
}

pub struct Wal {
    path: PathBuf,
    file: File,
    /// Records appended since the last sync.
    pending: Vec<u8>,
    /// Bytes in the file.
    size: u64,
    /// What the log's first record says of where it starts (see [`Wal::reset`]).
    base: Option<i64>,
}

/// The key of the one change in a log's first record that says where the log starts: a key
/// no store or raft record has.
const BASE_KEY: &[u8] = b"\xff\xffwal-base";

/// The base a record states, if it is a base record.
fn base_of(record: &[Change]) -> Option<i64> {
    match record {
        [(k, Some(v))] if k == BASE_KEY => Some(i64::from_le_bytes(v.as_slice().try_into().ok()?)),
        _ => None,
    }
}

fn io(e: std::io::Error) -> EtcdError {
    EtcdError::Storage(format!("write-ahead log: {e}"))
}

/// Bytes of the record body that holds `changes`.
pub fn body_len(changes: &[Change]) -> usize {
    changes
        .iter()
        .map(|(k, v)| 4 + k.len() + 1 + v.as_ref().map_or(0, |v| 4 + v.len()))
        .sum()
}

fn encode(changes: &[Change], out: &mut Vec<u8>) {
    let body = body_len(changes);
    debug_assert!(body <= MAX_RECORD, "record too large");
    // One allocation: a snapshot's record is tens of MiB, and growing into it copies it over.
    out.reserve(8 + body);
    let start = out.len();
    out.extend_from_slice(&[0; 8]); // length + crc, filled below
    for (k, v) in changes {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k);
        match v {
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v);
            }
            None => out.push(0),
        }
    }
    let len = (out.len() - start - 8) as u32;
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (h, t) = b.split_at(n);
    *b = t;
    Some(h)
}

fn take_u32(b: &mut &[u8]) -> Option<usize> {
    Some(u32::from_be_bytes(take(b, 4)?.try_into().ok()?) as usize)
}

fn decode_body(mut b: &[u8]) -> Option<Vec<Change>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let kl = take_u32(&mut b)?;
        let k = take(&mut b, kl)?.to_vec();
        let v = match take(&mut b, 1)?[0] {
            1 => {
                let vl = take_u32(&mut b)?;
                Some(take(&mut b, vl)?.to_vec())
            }
            0 => None,
            _ => return None,
        };
        out.push((k, v));
    }
    Some(out)
}

impl Wal {
    /// Opens the log and returns the intact records in it, cutting off a torn tail.
    pub fn open(path: &Path) -> Result<(Self, Vec<Vec<Change>>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(io)?;
        let mut records = Vec::new();
        let mut pos = 0usize;
        while let Some((r, end)) = record_at(&data, pos) {
            records.push(r);
            pos = end;
        }
        if pos < data.len() {
            if let Some(next) = next_intact(&data, pos) {
                if has_unwritten_sector(&data, pos, next) {
                    // The last group's write was torn with a later page on disk before an
                    // earlier one: none of it was synced, so none of it was acknowledged.
                } else if CUT_CORRUPT.load(std::sync::atomic::Ordering::Relaxed) {
                    tracing::error!(path = %path.display(), offset = pos, next_intact = next, total = data.len(), "cutting a corrupt write-ahead log at its first bad record, as --unsafe-wal-cut-corrupt asks: the records after it are lost");
                } else {
                    return Err(EtcdError::Storage(format!(
                        "write-ahead log {}: the record at byte {pos} is corrupt and intact records \
                         follow it at byte {next} (of {}): this is not a torn tail, so nothing is \
                         cut. Restore the member from a peer (remove and re-add it) or a backup, or \
                         start it once with --unsafe-wal-cut-corrupt to drop everything from byte \
                         {pos} on",
                        path.display(),
                        data.len()
                    )));
                }
            }
            tracing::warn!(path = %path.display(), valid = pos, total = data.len(), "cutting a torn write-ahead log tail (unacknowledged writes)");
            file.set_len(pos as u64).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        file.seek(SeekFrom::Start(pos as u64)).map_err(io)?;
        let base = records.first().and_then(|r| base_of(r));
        if base.is_some() {
            records.remove(0);
        }
        Ok((
            Wal {
                path: path.to_path_buf(),
                file,
                pending: Vec::new(),
                size: pos as u64,
                base,
            },
            records,
        ))
    }

    /// Where the log starts, if its writer said so when it was last reset: every change the
    /// writer made after that point (a revision, for the store) is in the log.
    pub fn base(&self) -> Option<i64> {
        self.base
    }

    /// Queues a record; it becomes durable at the next [`Wal::sync`].
    pub fn append(&mut self, changes: &[Change]) {
        if !changes.is_empty() {
            encode(changes, &mut self.pending);
        }
    }

    /// Writes queued records and waits for the disk (fdatasync).
    pub fn sync(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut pending = std::mem::take(&mut self.pending);
        self.write_synced(&pending)?;
        // The buffer is reused, unless a huge record (a restored snapshot) grew it.
        if pending.capacity() <= REUSED_BUFFER {
            pending.clear();
            self.pending = pending;
        }
        Ok(())
    }

    /// Writes already encoded records and waits for the disk (fdatasync).
    fn write_synced(&mut self, records: &[u8]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.file.write_all(records).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.size += records.len() as u64;
        Ok(())
    }

    /// Replaces the file's whole content by `records`, atomically: a new file is written and
    /// synced, then renamed over the log (and the directory synced).
    fn rewrite(&mut self, records: &[u8]) -> Result<()> {
        let mut tmp_path = self.path.as_os_str().to_owned();
        tmp_path.push(".new");
        let tmp_path = PathBuf::from(tmp_path);
        let mut tmp = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp_path)
            .map_err(io)?;
        tmp.write_all(records).map_err(io)?;
        tmp.sync_data().map_err(io)?;
        std::fs::rename(&tmp_path, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        self.file = tmp;
        self.size = records.len() as u64;
        self.base = None;
        Ok(())
    }

    /// Bytes in the log, including records appended but not yet written out.
    pub fn size(&self) -> u64 {
        self.size + self.pending.len() as u64
    }

    /// Empties the log. Only after everything it holds is durable elsewhere. With a `base`,
    /// the log's first record states it (read back by [`Wal::base`] when the log is opened
    /// again); it is not one of the records [`Wal::open`] returns.
    pub fn reset(&mut self, base: Option<i64>) -> Result<()> {
        assert!(self.pending.is_empty(), "reset only after a sync");
        self.file.set_len(0).map_err(io)?;
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        let mut first = Vec::new();
        if let Some(b) = base {
            encode(
                &[(BASE_KEY.to_vec(), Some(b.to_le_bytes().to_vec()))],
                &mut first,
            );
            self.file.write_all(&first).map_err(io)?;
        }
        self.file.sync_data().map_err(io)?;
        self.size = first.len() as u64;
        self.base = base;
        tracing::debug!(path = %self.path.display(), "write-ahead log checkpointed");
        Ok(())
    }
}

/// The sled batch that makes `changes` (a record's effect, applied atomically).
pub fn to_batch(changes: &[Change]) -> sled::Batch {
    let mut batch = sled::Batch::default();
    for (k, v) in changes {
        match v {
            Some(v) => batch.insert(k.as_slice(), v.as_slice()),
            None => batch.remove(k.as_slice()),
        }
    }
    batch
}

/// A log that one thread appends to while another writes and syncs it: appends never wait
/// for the disk, and a sync covers every record appended before it began. The appending thread
/// may also have the whole log replaced by an image of what it holds ([`SharedWal::replace`]).
pub struct SharedWal {
    queued: parking_lot::Mutex<Queued>,
    /// The file; held by a sync for its whole length.
    wal: parking_lot::Mutex<Wal>,
}

#[derive(Default)]
struct Queued {
    /// A record that replaces everything in the file (and everything appended before it).
    image: Option<Vec<u8>>,
    /// Encoded records not yet written.
    records: Vec<u8>,
}

impl SharedWal {
    pub fn new(wal: Wal) -> Self {
        SharedWal {
            queued: Default::default(),
            wal: parking_lot::Mutex::new(wal),
        }
    }

    /// Queues a record; it becomes durable at the next [`SharedWal::sync`].
    pub fn append(&self, changes: &[Change]) {
        if !changes.is_empty() {
            encode(changes, &mut self.queued.lock().records);
        }
    }

    /// Queues a new content for the whole log: one record, `image`, which must hold the effect
    /// of every record appended so far. The next sync writes it (with what is appended after
    /// this call) to a new file that replaces the log atomically.
    pub fn replace(&self, image: &[Change]) {
        let mut bytes = Vec::new();
        encode(image, &mut bytes);
        let mut q = self.queued.lock();
        q.records.clear();
        q.image = Some(bytes);
    }

    /// Writes what is queued and waits for the disk.
    pub fn sync(&self) -> Result<()> {
        let mut wal = self.wal.lock();
        let q = std::mem::take(&mut *self.queued.lock());
        match q.image {
            Some(mut image) => {
                image.extend_from_slice(&q.records);
                wal.rewrite(&image)
            }
            None => wal.write_synced(&q.records),
        }
    }

    /// Bytes in the file (a sync in progress holds this up).
    pub fn size(&self) -> u64 {
        self.wal.lock().size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reset_log_states_its_base_and_a_rewritten_one_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("wal");
        let r: Vec<Change> = vec![(b"a".to_vec(), Some(b"1".to_vec()))];
        let (mut w, _) = Wal::open(&p).expect("open");
        assert_eq!(w.base(), None);
        w.append(&r);
        w.sync().expect("sync");
        w.reset(Some(41)).expect("reset");
        w.append(&r);
        w.sync().expect("sync");
        drop(w);
        let (w, recs) = Wal::open(&p).expect("reopen");
        assert_eq!((w.base(), recs), (Some(41), vec![r.clone()]));
        // A torn base record leaves a log that states nothing (and holds nothing).
        let len = std::fs::metadata(&p).expect("meta").len();
        drop(w);
        let f = OpenOptions::new().write(true).open(&p).expect("open");
        f.set_len(len - (8 + body_len(&r)) as u64 - 3).expect("cut");
        drop(f);
        let (mut w, recs) = Wal::open(&p).expect("reopen torn");
        assert_eq!((w.base(), recs.len()), (None, 0));
        w.reset(None).expect("reset");
        drop(w);
        let (w, recs) = Wal::open(&p).expect("reopen");
        assert_eq!((w.base(), recs.len()), (None, 0));
        let shared = SharedWal::new(w);
        shared.replace(&r);
        shared.sync().expect("sync");
        drop(shared);
        let (w, recs) = Wal::open(&p).expect("reopen");
        assert_eq!((w.base(), recs), (None, vec![r]));
    }

    #[test]
    fn records_roundtrip_and_torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("wal");
        let r1: Vec<Change> = vec![(b"a".to_vec(), Some(b"1".to_vec())), (b"b".to_vec(), None)];
        let r2: Vec<Change> = vec![(b"c".to_vec(), Some(vec![7; 300]))];
        {
            let (mut w, recs) = Wal::open(&p).expect("open");
            assert!(recs.is_empty());
            w.append(&r1);
            w.append(&r2);
            w.sync().expect("sync");
        }
        // Tear the last record.
        let len = std::fs::metadata(&p).expect("meta").len();
        let f = OpenOptions::new().write(true).open(&p).expect("open");
        f.set_len(len - 3).expect("truncate");
        let (mut w, recs) = Wal::open(&p).expect("reopen");
        assert_eq!(recs, vec![r1.clone()]);
        w.append(&r2);
        w.sync().expect("sync");
        let (_, recs) = Wal::open(&p).expect("reopen");
        assert_eq!(recs, vec![r1, r2]);
    }

    #[test]
    fn shared_log_syncs_what_was_appended_and_replaces_itself_by_an_image() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("wal");
        let r: Vec<Change> = vec![(b"k".to_vec(), Some(vec![1; 100]))];
        let (w, _) = Wal::open(&p).expect("open");
        let shared = SharedWal::new(w);
        shared.append(&r);
        shared.append(&r);
        shared.sync().expect("sync");
        let (_, recs) = Wal::open(&p).expect("reopen");
        assert_eq!(recs, vec![r.clone(), r.clone()]);
        // An image replaces all of it, and what is appended after it follows it.
        shared.append(&r);
        let image: Vec<Change> = vec![(b"all".to_vec(), Some(b"of it".to_vec()))];
        shared.replace(&image);
        let after: Vec<Change> = vec![(b"n".to_vec(), None)];
        shared.append(&after);
        shared.sync().expect("sync");
        let (_, recs) = Wal::open(&p).expect("reopen");
        assert_eq!(recs, vec![image.clone(), after.clone()]);
        assert_eq!(shared.size(), std::fs::metadata(&p).expect("meta").len());
        // Appends go on in the new file.
        shared.append(&r);
        shared.sync().expect("sync");
        let (_, recs) = Wal::open(&p).expect("reopen");
        assert_eq!(recs, vec![image, after, r]);
        assert!(!dir.path().join("wal.new").exists());
    }

    #[test]
    fn corrupt_bytes_stop_replay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("wal");
        {
            let (mut w, _) = Wal::open(&p).expect("open");
            w.append(&[(b"k".to_vec(), Some(b"v".to_vec()))]);
            w.sync().expect("sync");
        }
        let mut data = std::fs::read(&p).expect("read");
        let last = data.len() - 1;
        data[last] ^= 0xff;
        std::fs::write(&p, data).expect("write");
        let (_, recs) = Wal::open(&p).expect("reopen");
        assert!(recs.is_empty());
    }

    /// Writes three records and returns the file's bytes and where the second one starts.
    fn three_records(p: &Path) -> (Vec<u8>, usize) {
        let (mut w, _) = Wal::open(p).expect("open");
        let r: Vec<Change> = vec![(b"key".to_vec(), Some(vec![5; 1000]))];
        w.append(&r);
        w.sync().expect("sync");
        let second = w.size as usize;
        w.append(&r);
        w.append(&r);
        w.sync().expect("sync");
        (std::fs::read(p).expect("read"), second)
    }

    #[test]
    fn a_bad_record_with_good_ones_after_it_stops_the_open_and_nothing_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("wal");
        let (mut data, second) = three_records(&p);
        data[second + 20] ^= 0x01; // a flipped bit inside the second record
        std::fs::write(&p, &data).expect("write");
        let err = Wal::open(&p).err().expect("a corrupt log must not open");
        assert!(
            err.to_string()
                .contains("is corrupt and intact records follow it"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(&p).expect("read"),
            data,
            "the file was changed"
        );
        // A corrupt length (it points past the end) is caught the same way.
        let (mut data, second) = three_records(&dir.path().join("wal2"));
        data[second] = 0xff;
        std::fs::write(dir.path().join("wal2"), &data).expect("write");
        assert!(Wal::open(&dir.path().join("wal2")).is_err());
    }

    #[test]
    fn a_torn_group_with_an_unwritten_sector_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("wal");
        let (mut data, second) = three_records(&p);
        // The last group (records two and three) was being written when the power went: a
        // sector of record two never reached the disk, record three's did.
        let sector = second.div_ceil(SECTOR) * SECTOR;
        data[sector..sector + SECTOR].fill(0);
        std::fs::write(&p, &data).expect("write");
        let (_, recs) = Wal::open(&p).expect("a torn tail opens");
        assert_eq!(recs.len(), 1);
        assert_eq!(std::fs::metadata(&p).expect("meta").len(), second as u64);
    }
}
