//! The write-ahead log that makes commits durable cheaply: each committed write transaction is
//! appended as one checksummed record of the sled changes it made, and one `fdatasync` covers a
//! whole group of them. sled itself is flushed only at checkpoints, after which the log restarts.
//!
//! Recovery replays every record in order on top of whatever sled persisted. That is correct
//! because the log always holds a contiguous suffix of history starting at or before sled's last
//! checkpoint, and replaying puts and removes in order is idempotent. A torn final record (crash
//! mid-append) fails its checksum and is cut off: it was never acknowledged.

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

pub struct Wal {
    path: PathBuf,
    file: File,
    /// Records appended since the last sync.
    pending: Vec<u8>,
    /// Bytes in the file.
    size: u64,
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
        while pos + 8 <= data.len() {
            let len = u32::from_be_bytes(data[pos..pos + 4].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_be_bytes(data[pos + 4..pos + 8].try_into().expect("4 bytes"));
            if pos + 8 + len > data.len() {
                break;
            }
            let body = &data[pos + 8..pos + 8 + len];
            if crc32fast::hash(body) != crc {
                break;
            }
            match decode_body(body) {
                Some(r) => records.push(r),
                None => break,
            }
            pos += 8 + len;
        }
        if pos < data.len() {
            tracing::warn!(path = %path.display(), valid = pos, total = data.len(), "cutting a torn write-ahead log tail (unacknowledged writes)");
            file.set_len(pos as u64).map_err(io)?;
            file.sync_data().map_err(io)?;
        }
        file.seek(SeekFrom::Start(pos as u64)).map_err(io)?;
        Ok((
            Wal {
                path: path.to_path_buf(),
                file,
                pending: Vec::new(),
                size: pos as u64,
            },
            records,
        ))
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
        Ok(())
    }

    /// Bytes in the log, including records appended but not yet written out.
    pub fn size(&self) -> u64 {
        self.size + self.pending.len() as u64
    }

    /// Empties the log. Only after everything it holds is durable elsewhere.
    pub fn reset(&mut self) -> Result<()> {
        assert!(self.pending.is_empty(), "reset only after a sync");
        self.file.set_len(0).map_err(io)?;
        self.file.seek(SeekFrom::Start(0)).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.size = 0;
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
}
