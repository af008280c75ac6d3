//! bbolt's file format (go.etcd.io/bbolt 1.3), written and read without bbolt.
//!
//! A bbolt file is a sequence of fixed-size pages: two meta pages (0 and 1, the valid one with
//! the higher transaction id wins), a freelist page, and the B+trees of the buckets. The root
//! bucket's tree maps bucket names to bucket headers (root page, sequence); a small bucket is
//! stored *inline*: its header has root 0 and is followed by the bytes of its one leaf page.
//!
//! [`Writer`] builds a file bottom-up from sorted entries, so memory stays at one page plus one
//! branch key per leaf, whatever the size of the data. [`Reader`] walks any bbolt file (etcd's
//! own snapshots included), checking every offset against the page it reads, so a damaged file
//! is an error and never a panic or a read out of bounds.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

/// The page size this writer uses (bbolt takes the OS page size; 4 KiB on every Linux target
/// etcd runs on). The reader takes the page size the file says.
pub const PAGE_SIZE: usize = 4096;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BUCKET_HEADER: usize = 16;
const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;
const FREELIST_PAGE: u16 = 0x10;
/// A leaf element whose value is a bucket header.
pub const BUCKET_LEAF: u32 = 0x01;
const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
/// Bytes of the meta struct the checksum covers (everything before the checksum).
const META_SUMMED: usize = 56;
/// Buckets whose one leaf page is at most this large are stored inline, as bbolt does.
const MAX_INLINE: usize = PAGE_SIZE / 4;

/// What can be wrong with a file that should be a bbolt database.
#[derive(Debug, thiserror::Error)]
pub enum BboltError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a bbolt database: {0}")]
    NotBbolt(String),
    #[error("database is truncated: {0}")]
    Truncated(String),
    #[error("database is corrupt: {0}")]
    Corrupt(String),
}

type Result<T> = std::result::Result<T, BboltError>;

/// What a walk over a tree calls for each entry: key, value, element flags.
pub type Visit<'a> = dyn FnMut(&[u8], &[u8], u32) -> Result<()> + 'a;

fn fnv64a(b: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(b);
    h.finish()
}

/// One page's bytes: header, elements, then keys and values, padded to whole pages.
fn leaf_page(id: u64, entries: &[(u32, Vec<u8>, Vec<u8>)], pad: bool) -> Vec<u8> {
    let count = entries.len();
    let mut data_at = PAGE_HEADER + count * ELEMENT;
    let size = data_at
        + entries
            .iter()
            .map(|(_, k, v)| k.len() + v.len())
            .sum::<usize>();
    let pages = size.div_ceil(PAGE_SIZE).max(1);
    let mut p = vec![0u8; if pad { pages * PAGE_SIZE } else { size }];
    header(&mut p, id, LEAF_PAGE, count, pages - 1);
    for (i, (flags, k, v)) in entries.iter().enumerate() {
        let e = PAGE_HEADER + i * ELEMENT;
        p[e..e + 4].copy_from_slice(&flags.to_le_bytes());
        p[e + 4..e + 8].copy_from_slice(&((data_at - e) as u32).to_le_bytes());
        p[e + 8..e + 12].copy_from_slice(&(k.len() as u32).to_le_bytes());
        p[e + 12..e + 16].copy_from_slice(&(v.len() as u32).to_le_bytes());
        p[data_at..data_at + k.len()].copy_from_slice(k);
        data_at += k.len();
        p[data_at..data_at + v.len()].copy_from_slice(v);
        data_at += v.len();
    }
    p
}

fn header(p: &mut [u8], id: u64, flags: u16, count: usize, overflow: usize) {
    p[0..8].copy_from_slice(&id.to_le_bytes());
    p[8..10].copy_from_slice(&flags.to_le_bytes());
    p[10..12].copy_from_slice(&(count as u16).to_le_bytes());
    p[12..16].copy_from_slice(&(overflow as u32).to_le_bytes());
}

/// Writes a bbolt file: buckets one after the other (each from entries in key order), then
/// [`Writer::finish`]. Pages 0–2 (metas and freelist) are written last, so `out` must seek.
pub struct Writer<W: Write + Seek> {
    out: W,
    next: u64,
    /// (name, bucket value) of every finished bucket.
    buckets: Vec<(Vec<u8>, Vec<u8>)>,
}

impl<W: Write + Seek> Writer<W> {
    pub fn new(mut out: W) -> Result<Self> {
        out.seek(SeekFrom::Start(3 * PAGE_SIZE as u64))?;
        Ok(Writer {
            out,
            next: 3,
            buckets: Vec::new(),
        })
    }

    /// Starts a bucket; entries go in with [`Bucket::put`] in key order, then
    /// [`Bucket::finish`].
    pub fn bucket(&mut self, name: &[u8]) -> Bucket<'_, W> {
        Bucket {
            name: name.to_vec(),
            tree: Tree::default(),
            last: None,
            w: self,
        }
    }

    /// Writes the page at `self.next` and returns its id.
    fn page(&mut self, bytes: &[u8]) -> Result<u64> {
        let id = self.next;
        self.out.write_all(bytes)?;
        self.next += (bytes.len() / PAGE_SIZE) as u64;
        Ok(id)
    }

    /// Writes the root bucket, the freelist and both metas; returns the output and the file's
    /// size in bytes.
    pub fn finish(mut self) -> Result<(W, u64)> {
        let mut buckets = std::mem::take(&mut self.buckets);
        buckets.sort();
        let mut root = Tree::default();
        for (name, value) in buckets {
            root.put(&mut self, BUCKET_LEAF, name, value)?;
        }
        let root = root.finish_pages(&mut self)?;
        let hwm = self.next;
        let mut freelist = vec![0u8; PAGE_SIZE];
        header(&mut freelist, 2, FREELIST_PAGE, 0, 0);
        self.out.seek(SeekFrom::Start(2 * PAGE_SIZE as u64))?;
        self.out.write_all(&freelist)?;
        for id in [0u64, 1] {
            let mut p = vec![0u8; PAGE_SIZE];
            header(&mut p, id, META_PAGE, 0, 0);
            let m = &mut p[PAGE_HEADER..];
            m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
            m[4..8].copy_from_slice(&VERSION.to_le_bytes());
            m[8..12].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
            m[16..24].copy_from_slice(&root.to_le_bytes());
            m[32..40].copy_from_slice(&2u64.to_le_bytes());
            m[40..48].copy_from_slice(&hwm.to_le_bytes());
            // Both metas describe the same tree; the one at page 1 is the newer.
            m[48..56].copy_from_slice(&(id + 1).to_le_bytes());
            let sum = fnv64a(&m[..META_SUMMED]);
            m[56..64].copy_from_slice(&sum.to_le_bytes());
            self.out.seek(SeekFrom::Start(id * PAGE_SIZE as u64))?;
            self.out.write_all(&p)?;
        }
        self.out.seek(SeekFrom::Start(hwm * PAGE_SIZE as u64))?;
        Ok((self.out, hwm * PAGE_SIZE as u64))
    }
}

/// A B+tree being built from its entries in key order: the current leaf, and the first key
/// and page of every leaf written so far.
#[derive(Default)]
struct Tree {
    leaf: Vec<(u32, Vec<u8>, Vec<u8>)>,
    leaf_size: usize,
    /// (first key, page id) of the written leaves.
    written: Vec<(Vec<u8>, u64)>,
}

impl Tree {
    fn put<W: Write + Seek>(
        &mut self,
        w: &mut Writer<W>,
        flags: u32,
        k: Vec<u8>,
        v: Vec<u8>,
    ) -> Result<()> {
        let size = ELEMENT + k.len() + v.len();
        if !self.leaf.is_empty() && PAGE_HEADER + self.leaf_size + size > PAGE_SIZE {
            self.flush(w)?;
        }
        self.leaf_size += size;
        self.leaf.push((flags, k, v));
        Ok(())
    }

    fn flush<W: Write + Seek>(&mut self, w: &mut Writer<W>) -> Result<()> {
        let entries = std::mem::take(&mut self.leaf);
        self.leaf_size = 0;
        let id = w.next;
        let first = entries[0].1.clone();
        w.page(&leaf_page(id, &entries, true))?;
        self.written.push((first, id));
        Ok(())
    }

    /// The bytes of the tree's one leaf when it is small enough to be stored inline.
    fn inline(&self) -> Option<Vec<u8>> {
        (self.written.is_empty() && PAGE_HEADER + self.leaf_size <= MAX_INLINE)
            .then(|| leaf_page(0, &self.leaf, false))
    }

    /// Writes what is left and the branch pages above the leaves; returns the root page.
    fn finish_pages<W: Write + Seek>(mut self, w: &mut Writer<W>) -> Result<u64> {
        if !self.leaf.is_empty() || self.written.is_empty() {
            if self.leaf.is_empty() {
                // An empty tree is one empty leaf.
                let id = w.next;
                w.page(&leaf_page(id, &[], true))?;
                return Ok(id);
            }
            self.flush(w)?;
        }
        let mut level = self.written;
        while level.len() > 1 {
            let mut up = Vec::new();
            let mut start = 0;
            while start < level.len() {
                let mut size = PAGE_HEADER;
                let mut end = start;
                while end < level.len() {
                    let add = ELEMENT + level[end].0.len();
                    if end > start && size + add > PAGE_SIZE {
                        break;
                    }
                    size += add;
                    end += 1;
                }
                let id = w.next;
                w.page(&branch_page(id, &level[start..end]))?;
                up.push((level[start].0.clone(), id));
                start = end;
            }
            level = up;
        }
        Ok(level[0].1)
    }
}

fn branch_page(id: u64, children: &[(Vec<u8>, u64)]) -> Vec<u8> {
    let count = children.len();
    let mut data_at = PAGE_HEADER + count * ELEMENT;
    let size = data_at + children.iter().map(|(k, _)| k.len()).sum::<usize>();
    let pages = size.div_ceil(PAGE_SIZE).max(1);
    let mut p = vec![0u8; pages * PAGE_SIZE];
    header(&mut p, id, BRANCH_PAGE, count, pages - 1);
    for (i, (k, child)) in children.iter().enumerate() {
        let e = PAGE_HEADER + i * ELEMENT;
        p[e..e + 4].copy_from_slice(&((data_at - e) as u32).to_le_bytes());
        p[e + 4..e + 8].copy_from_slice(&(k.len() as u32).to_le_bytes());
        p[e + 8..e + 16].copy_from_slice(&child.to_le_bytes());
        p[data_at..data_at + k.len()].copy_from_slice(k);
        data_at += k.len();
    }
    p
}

/// A bucket being written.
pub struct Bucket<'a, W: Write + Seek> {
    name: Vec<u8>,
    tree: Tree,
    last: Option<Vec<u8>>,
    w: &'a mut Writer<W>,
}

impl<W: Write + Seek> Bucket<'_, W> {
    /// Adds an entry; keys must come in strictly increasing byte order.
    pub fn put(&mut self, k: &[u8], v: &[u8]) -> Result<()> {
        if self.last.as_deref().is_some_and(|last| k <= last) {
            return Err(BboltError::Corrupt(format!(
                "bucket {}: keys out of order",
                String::from_utf8_lossy(&self.name)
            )));
        }
        self.last = Some(k.to_vec());
        self.tree.put(self.w, 0, k.to_vec(), v.to_vec())
    }

    pub fn finish(self) -> Result<()> {
        let mut value = vec![0u8; BUCKET_HEADER];
        if let Some(page) = self.tree.inline() {
            value.extend_from_slice(&page);
        } else {
            let root = self.tree.finish_pages(self.w)?;
            value[0..8].copy_from_slice(&root.to_le_bytes());
        }
        self.w.buckets.push((self.name, value));
        Ok(())
    }
}

/// Where a bucket's entries are: a page of the file, or its inline leaf.
#[derive(Debug, Clone)]
pub enum Root {
    Page(u64),
    Inline(Vec<u8>),
}

/// A bbolt file opened for reading.
pub struct Reader {
    file: File,
    page_size: usize,
    root: u64,
    /// Pages in use (the meta's high water mark).
    pages: u64,
    txid: u64,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A meta page's fields, if the page holds a valid meta.
struct Meta {
    page_size: usize,
    root: u64,
    pages: u64,
    txid: u64,
}

fn parse_meta(page: &[u8]) -> std::result::Result<Meta, String> {
    if page.len() < PAGE_HEADER + 64 {
        return Err("too small".into());
    }
    let m = &page[PAGE_HEADER..PAGE_HEADER + 64];
    if u32_at(m, 0) != MAGIC {
        return Err("bad magic number".into());
    }
    if u32_at(m, 4) != VERSION {
        return Err(format!("unsupported version {}", u32_at(m, 4)));
    }
    if fnv64a(&m[..META_SUMMED]) != u64_at(m, 56) {
        return Err("meta checksum mismatch".into());
    }
    let page_size = u32_at(m, 8) as usize;
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(format!("implausible page size {page_size}"));
    }
    Ok(Meta {
        page_size,
        root: u64_at(m, 16),
        pages: u64_at(m, 40),
        txid: u64_at(m, 48),
    })
}

impl Reader {
    /// Opens the first `len` bytes of `file` as a bbolt database (a snapshot's hash trailer
    /// lies beyond them).
    pub fn open(file: File, len: u64) -> Result<Reader> {
        let mut first = vec![0u8; PAGE_SIZE.min(len as usize)];
        file.read_exact_at(&mut first, 0)?;
        let m0 = parse_meta(&first);
        // The second meta is one page in: the page size is the first meta's, or the default.
        let ps = m0.as_ref().map(|m| m.page_size).unwrap_or(PAGE_SIZE);
        let m1 = if len >= 2 * ps as u64 {
            let mut p = vec![0u8; ps];
            file.read_exact_at(&mut p, ps as u64)?;
            parse_meta(&p)
        } else {
            Err("file too small".into())
        };
        let meta = match (m0, m1) {
            (Ok(a), Ok(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Ok(a), Err(_)) => a,
            (Err(_), Ok(b)) => b,
            (Err(e), Err(_)) => return Err(BboltError::NotBbolt(e)),
        };
        let need = meta.pages * meta.page_size as u64;
        if len < need {
            return Err(BboltError::Truncated(format!(
                "{len} bytes where the database needs {need}"
            )));
        }
        Ok(Reader {
            file,
            page_size: meta.page_size,
            root: meta.root,
            pages: meta.pages,
            txid: meta.txid,
        })
    }

    /// The database's size as bbolt reports it (`tx.Size()`): pages in use times page size.
    pub fn size(&self) -> u64 {
        self.pages * self.page_size as u64
    }

    pub fn txid(&self) -> u64 {
        self.txid
    }

    /// Reads page `id` with its overflow pages.
    fn page(&self, id: u64) -> Result<Vec<u8>> {
        if id < 2 || id >= self.pages {
            return Err(BboltError::Corrupt(format!(
                "page {id} out of bounds (database has {} pages)",
                self.pages
            )));
        }
        let mut p = vec![0u8; self.page_size];
        self.file
            .read_exact_at(&mut p, id * self.page_size as u64)?;
        let overflow = u32_at(&p, 12) as u64;
        if id + overflow >= self.pages {
            return Err(BboltError::Corrupt(format!(
                "page {id}: overflow beyond the end"
            )));
        }
        if overflow > 0 {
            p.resize(self.page_size * (overflow as usize + 1), 0);
            self.file
                .read_exact_at(&mut p[self.page_size..], (id + 1) * self.page_size as u64)?;
        }
        Ok(p)
    }

    /// The root bucket's entries: (name, where the bucket is) in name order.
    pub fn buckets(&self) -> Result<Vec<(Vec<u8>, Root)>> {
        let mut out = Vec::new();
        self.for_each(&Root::Page(self.root), &mut |k, v, flags| {
            if flags & BUCKET_LEAF != 0 {
                out.push((k.to_vec(), bucket_root(k, v)?));
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f(key, value, flags)` for every entry of the tree at `root`, in key order.
    pub fn for_each(&self, root: &Root, f: &mut Visit<'_>) -> Result<()> {
        match root {
            Root::Inline(p) => walk_leaf(p, f),
            Root::Page(id) => self.walk(*id, f, &mut std::collections::HashSet::new()),
        }
    }

    fn walk(
        &self,
        id: u64,
        f: &mut Visit<'_>,
        seen: &mut std::collections::HashSet<u64>,
    ) -> Result<()> {
        if !seen.insert(id) {
            return Err(BboltError::Corrupt(format!(
                "page {id}: referenced more than once"
            )));
        }
        let p = self.page(id)?;
        let flags = u16_at(&p, 8);
        if flags & LEAF_PAGE != 0 {
            return walk_leaf(&p, f);
        }
        if flags & BRANCH_PAGE == 0 {
            return Err(BboltError::Corrupt(format!(
                "page {id}: invalid type {flags:#x}"
            )));
        }
        let count = u16_at(&p, 10) as usize;
        if PAGE_HEADER + count * ELEMENT > p.len() {
            return Err(BboltError::Corrupt(format!("page {id}: bad element count")));
        }
        for i in 0..count {
            let e = PAGE_HEADER + i * ELEMENT;
            let child = u64_at(&p, e + 8);
            self.walk(child, f, seen)?;
        }
        Ok(())
    }
}

/// A bucket header's root: its page, or the inline page that follows the header.
fn bucket_root(name: &[u8], v: &[u8]) -> Result<Root> {
    if v.len() < BUCKET_HEADER {
        return Err(BboltError::Corrupt(format!(
            "bucket {}: short header",
            String::from_utf8_lossy(name)
        )));
    }
    match u64_at(v, 0) {
        0 => Ok(Root::Inline(v[BUCKET_HEADER..].to_vec())),
        id => Ok(Root::Page(id)),
    }
}

/// The root of the bucket `name` in the bucket list `buckets`.
pub fn find<'a>(buckets: &'a [(Vec<u8>, Root)], name: &[u8]) -> Option<&'a Root> {
    buckets.iter().find(|(n, _)| n == name).map(|(_, r)| r)
}

fn walk_leaf(p: &[u8], f: &mut Visit<'_>) -> Result<()> {
    if p.len() < PAGE_HEADER {
        return Err(BboltError::Corrupt("short inline page".into()));
    }
    if u16_at(p, 8) & LEAF_PAGE == 0 {
        return Err(BboltError::Corrupt(format!(
            "page {}: expected a leaf",
            u64_at(p, 0)
        )));
    }
    let count = u16_at(p, 10) as usize;
    if PAGE_HEADER + count * ELEMENT > p.len() {
        return Err(BboltError::Corrupt(format!(
            "page {}: bad element count",
            u64_at(p, 0)
        )));
    }
    for i in 0..count {
        let e = PAGE_HEADER + i * ELEMENT;
        let flags = u32_at(p, e);
        let at = e + u32_at(p, e + 4) as usize;
        let ksize = u32_at(p, e + 8) as usize;
        let vsize = u32_at(p, e + 12) as usize;
        let end = at
            .checked_add(ksize)
            .and_then(|x| x.checked_add(vsize))
            .filter(|&end| end <= p.len())
            .ok_or_else(|| {
                BboltError::Corrupt(format!(
                    "page {}: element {i} lies outside the page",
                    u64_at(p, 0)
                ))
            })?;
        f(&p[at..at + ksize], &p[at + ksize..end], flags)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type Entries = Vec<(Vec<u8>, Vec<u8>)>;

    fn build(buckets: &[(&str, Entries)]) -> (tempfile::NamedTempFile, u64) {
        let f = tempfile::NamedTempFile::new().expect("temp");
        let mut w = Writer::new(f.reopen().expect("reopen")).expect("writer");
        for (name, entries) in buckets {
            let mut b = w.bucket(name.as_bytes());
            for (k, v) in entries {
                b.put(k, v).expect("put");
            }
            b.finish().expect("finish");
        }
        let (_, len) = w.finish().expect("finish");
        (f, len)
    }

    fn read_all(f: &tempfile::NamedTempFile, len: u64) -> Vec<(String, Entries)> {
        let r = Reader::open(f.reopen().expect("reopen"), len).expect("open");
        r.buckets()
            .expect("buckets")
            .into_iter()
            .map(|(name, root)| {
                let mut entries = Vec::new();
                r.for_each(&root, &mut |k, v, _| {
                    entries.push((k.to_vec(), v.to_vec()));
                    Ok(())
                })
                .expect("walk");
                (String::from_utf8(name).expect("utf8"), entries)
            })
            .collect()
    }

    #[test]
    fn buckets_small_and_large_read_back_in_order() {
        let big: Vec<(Vec<u8>, Vec<u8>)> = (0..20_000u32)
            .map(|i| (i.to_be_bytes().to_vec(), vec![i as u8; (i % 97) as usize]))
            .collect();
        // One value larger than a page needs overflow pages.
        let huge = vec![(b"huge".to_vec(), vec![7u8; 3 * PAGE_SIZE + 5])];
        let small = vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), Vec::new())];
        let (f, len) = build(&[
            ("zeta", big.clone()),
            ("alpha", small.clone()),
            ("empty", Vec::new()),
            ("huge", huge.clone()),
        ]);
        assert_eq!(len % PAGE_SIZE as u64, 0);
        assert_eq!(std::fs::metadata(f.path()).expect("meta").len(), len);
        let got = read_all(&f, len);
        assert_eq!(
            got,
            vec![
                ("alpha".to_string(), small),
                ("empty".to_string(), Vec::new()),
                ("huge".to_string(), huge),
                ("zeta".to_string(), big),
            ]
        );
    }

    #[test]
    fn keys_out_of_order_are_refused() {
        let f = tempfile::tempfile().expect("temp");
        let mut w = Writer::new(f).expect("writer");
        let mut b = w.bucket(b"x");
        b.put(b"b", b"").expect("put");
        assert!(b.put(b"a", b"").is_err());
        assert!(b.put(b"b", b"").is_err());
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..3000u32)
            .map(|i| (i.to_be_bytes().to_vec(), b"value".to_vec()))
            .collect();
        let (f, len) = build(&[("key", entries)]);
        let bytes = std::fs::read(f.path()).expect("read");
        // Not bbolt at all.
        let junk = tempfile::NamedTempFile::new().expect("temp");
        std::fs::write(junk.path(), vec![0x42u8; 3 * PAGE_SIZE]).expect("write");
        assert!(matches!(
            Reader::open(junk.reopen().expect("r"), 3 * PAGE_SIZE as u64),
            Err(BboltError::NotBbolt(_))
        ));
        // Truncated.
        assert!(matches!(
            Reader::open(f.reopen().expect("r"), len - PAGE_SIZE as u64),
            Err(BboltError::Truncated(_))
        ));
        // Every byte of every page flipped in turn at a few offsets: never a panic.
        for page in 2..(len as usize / PAGE_SIZE) {
            for off in [8usize, 10, 12, 16, 20, 24, 28, 40] {
                let mut b = bytes.clone();
                b[page * PAGE_SIZE + off] ^= 0xff;
                let t = tempfile::NamedTempFile::new().expect("temp");
                std::fs::write(t.path(), &b).expect("write");
                if let Ok(r) = Reader::open(t.reopen().expect("r"), len) {
                    if let Ok(bs) = r.buckets() {
                        for (_, root) in bs {
                            let _ = r.for_each(&root, &mut |_, _, _| Ok(()));
                        }
                    }
                }
            }
        }
    }
}
