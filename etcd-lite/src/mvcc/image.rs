//! The key index on disk: an image written at the store's checkpoints, so that a restart reads
//! it and only the records written after it, instead of every record in sled. An image that
//! does not check out (checksum, format, another epoch of the store's data, a compaction newer
//! than the store's) is ignored, and the index is rebuilt from every record as without one; so
//! the file needs no sync of its own.

use std::path::Path;

use super::index::KeyIndex;

/// The image's file, in the store's directory.
pub const FILE: &str = "index.img";
const MAGIC: &[u8; 8] = b"ELIDX001";

/// An index and what it covers: every record up to revision `covered`, with history before
/// `compacted` dropped, of the store's data at `epoch` (see [`super::store::EPOCH_META`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Image {
    pub index: KeyIndex,
    pub covered: i64,
    pub compacted: i64,
    pub epoch: u64,
}

pub fn encode(index: &KeyIndex, covered: i64, compacted: i64, epoch: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(64 + index.len() * 64);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&covered.to_le_bytes());
    b.extend_from_slice(&compacted.to_le_bytes());
    b.extend_from_slice(&epoch.to_le_bytes());
    index.encode(&mut b);
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

pub fn decode(b: &[u8]) -> Option<Image> {
    let (body, crc) = b.split_at_checked(b.len().checked_sub(4)?)?;
    if crc32fast::hash(body).to_le_bytes() != crc {
        return None;
    }
    let rest = body.strip_prefix(MAGIC)?;
    let (head, index) = rest.split_at_checked(24)?;
    let num = |i: usize| i64::from_le_bytes(head[i..i + 8].try_into().expect("8 bytes"));
    Some(Image {
        covered: num(0),
        compacted: num(8),
        epoch: num(16) as u64,
        index: KeyIndex::decode(index)?,
    })
}

/// Replaces the image in `dir` with `bytes` (written aside, then renamed over it).
pub fn write(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(FILE))
}

/// Removes the image in `dir`, if any.
pub fn remove(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(FILE));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::Revision;

    #[test]
    fn an_image_reads_back_and_a_damaged_one_does_not() {
        let mut index = KeyIndex::default();
        index.record_put(b"a", Revision::new(2, 0), 0);
        index.record_put(b"b", Revision::new(3, 0), 5);
        let b = encode(&index, 3, 1, 42);
        let img = decode(&b).expect("decodes");
        assert_eq!((img.covered, img.compacted, img.epoch), (3, 1, 42));
        assert_eq!(img.index, index);
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x10;
            assert_eq!(decode(&bad), None, "byte {i} flipped");
        }
        assert_eq!(decode(&b[..b.len() - 1]), None);
        assert_eq!(decode(&[]), None);
    }
}
