//! Making a sled database durable against power loss, which `sled::Db::flush` alone is not.
//!
//! sled 0.34 flushes its log with `sync_file_range`: the data reaches the device, but neither
//! the file's size and extents (filesystem metadata, committed by the journal some seconds
//! later) nor the drive's write cache are flushed, and values over about 128 KiB go to blob
//! files that are never synced at all. After a power cut the raft log could then lose entries
//! this member had acknowledged (raft-rs stops the member: "Was the raft log corrupted,
//! truncated, or lost?"), and a store could lose what a checkpoint moved out of its
//! write-ahead log. Both sled databases here take their durability from write-ahead logs of
//! our own and call [`SledFiles::sync`] only at checkpoints: sled's flush, then `syncfs` of the
//! filesystem (data file, blob files and directory entries alike).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// A handle on a sled database's directory, for syncing its files after sled's own flush.
pub struct SledFiles {
    dir: File,
}

impl SledFiles {
    /// Opens the directory of the (already opened) sled database in `dir`.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let data = dir.join("db");
        if !data.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{}: no sled database there", data.display()),
            ));
        }
        let dir = File::open(dir)?;
        Ok(SledFiles { dir })
    }

    /// Flushes `db` and makes everything it wrote durable.
    pub fn sync(&self, db: &sled::Db) -> std::io::Result<()> {
        db.flush().map_err(std::io::Error::other)?;
        nix::unistd::syncfs(self.dir.as_raw_fd()).map_err(std::io::Error::from)
    }
}

/// Bytes of the files under `path`, subdirectories included (0 for what cannot be read).
pub fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Copies a directory tree as it is now: what a crash would leave of it (tests).
#[cfg(test)]
pub fn crash_copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            crash_copy(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_small_and_blob_sized_values() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sled::open(dir.path()).expect("sled");
        let files = SledFiles::open(dir.path()).expect("files");
        db.insert("small", &b"v"[..]).expect("insert");
        files.sync(&db).expect("sync");
        db.insert("big", vec![7u8; 1 << 20]).expect("insert");
        files.sync(&db).expect("sync");
        drop(files);
        drop(db);
        let db = sled::open(dir.path()).expect("reopen");
        assert_eq!(db.get("big").expect("get").map(|v| v.len()), Some(1 << 20));
    }

    #[test]
    fn a_directory_without_sled_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = SledFiles::open(dir.path()).err().expect("no db file");
        assert!(e.to_string().contains("/db"), "{e}");
    }
}
