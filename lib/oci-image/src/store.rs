//! The image store: content-addressed blobs, an index of images, unpacked layers.
//!
//! ```text
//! DIR/lock                      flock: shared to read the index, exclusive to change it
//! DIR/fetch.lock                flock: shared by each fetch, exclusive by gc
//! DIR/blobs/sha256/<hex>        manifests, configs, layers; verified on every write and read
//! DIR/index.json                the images (written whole to a temp file, then renamed)
//! DIR/layers/<hex>/             a layer unpacked for overlayfs (renamed in when complete)
//! DIR/tmp/                      partial downloads (<hex>.partial, resumable) and work dirs
//! ```
//! Invariant: an image is listed only once all of its blobs are in `blobs/`, so a crash during a
//! fetch leaves no half image; blobs appear by rename, so a reader never sees half a blob.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::digest::{self, Hashing};
use crate::error::{ImageError, Result};
use crate::unpack::{self, Whiteouts};

/// Manifests, indexes and configs are small; anything bigger is refused before it is parsed.
pub const MAX_JSON_BLOB: u64 = 4 << 20;

/// One layer of an image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRecord {
    pub digest: String,
    pub size: u64,
    #[serde(rename = "mediaType")]
    pub media_type: String,
}

/// One image in the index.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// The config's digest, as docker and podman name images.
    pub id: String,
    /// Normalized references; empty for an image whose names moved to a newer one.
    pub names: Vec<String>,
    pub manifest: String,
    pub config: String,
    pub layers: Vec<LayerRecord>,
    /// Bytes of manifest, config and layers as stored.
    pub size: u64,
    /// When the image was fetched (RFC 3339).
    pub fetched: String,
}

impl ImageRecord {
    /// The short ID `rkt image list` shows (12 hex digits, as docker).
    pub fn short_id(&self) -> &str {
        let h = digest::hex_of(&self.id);
        &h[..h.len().min(12)]
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    images: Vec<ImageRecord>,
}

/// What `gc` removed.
#[derive(Debug, Default)]
pub struct GcReport {
    pub images: Vec<String>,
    pub blobs: usize,
    pub layers: usize,
    pub bytes: u64,
}

/// A held flock; released on drop.
pub struct Lock(#[allow(dead_code)] Flock<File>);

/// The store rooted at a directory (default `/var/lib/rkt/images`).
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store at `dir`.
    pub fn open(dir: &Path) -> Result<Store> {
        for d in ["blobs/sha256", "layers", "tmp"] {
            let p = dir.join(d);
            std::fs::create_dir_all(&p).map_err(|e| ImageError::io(&p, e))?;
        }
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    fn lock_file(&self, p: &Path, how: FlockArg) -> Result<Lock> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(p)
            .map_err(|e| ImageError::io(p, e))?;
        Flock::lock(f, how)
            .map(Lock)
            .map_err(|(_, e)| ImageError::io(p, std::io::Error::from(e)))
    }

    /// The store-wide lock: shared for readers of the index, exclusive for writers.
    pub fn lock(&self, exclusive: bool) -> Result<Lock> {
        let how = if exclusive {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockShared
        };
        self.lock_file(&self.dir.join("lock"), how)
    }

    /// Held shared by every fetch from start to listing, exclusive by gc: gc never deletes the
    /// blobs of a fetch that has stored them but not yet listed its image.
    pub fn lock_fetches(&self, exclusive: bool) -> Result<Lock> {
        let how = if exclusive {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockShared
        };
        self.lock_file(&self.dir.join("fetch.lock"), how)
    }

    /// A lock on one blob's download or one layer's unpacking, so that concurrent `rkt`
    /// invocations do the work once.
    pub fn lock_item(&self, kind: &str, digest: &str) -> Result<Lock> {
        let p = self
            .tmp_dir()
            .join(format!("{kind}-{}.lock", digest::hex_of(digest)));
        self.lock_file(&p, FlockArg::LockExclusive)
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest::hex_of(digest))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Where a download of `digest` is kept until it completes (for resuming).
    pub fn partial_path(&self, digest: &str) -> PathBuf {
        self.tmp_dir()
            .join(format!("{}.partial", digest::hex_of(digest)))
    }

    /// Reads a small blob whole and checks its digest.
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        crate::reference::check_digest(digest).map_err(|r| ImageError::bad("digest", r))?;
        let p = self.blob_path(digest);
        let f = File::open(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ImageError::MissingBlob(digest.to_string()),
            _ => ImageError::io(&p, e),
        })?;
        let mut data = Vec::new();
        f.take(MAX_JSON_BLOB + 1)
            .read_to_end(&mut data)
            .map_err(|e| ImageError::io(&p, e))?;
        if data.len() as u64 > MAX_JSON_BLOB {
            return Err(ImageError::bad(
                format!("blob {digest}"),
                format!("bigger than {MAX_JSON_BLOB} bytes for a manifest or config"),
            ));
        }
        let actual = digest::of(&data);
        if actual != digest {
            return Err(ImageError::Corrupt {
                digest: digest.to_string(),
                actual,
            });
        }
        Ok(data)
    }

    /// Opens a blob for streaming; the caller checks the digest at the end with
    /// [`digest::drain_and_check`].
    pub fn open_blob(&self, digest: &str) -> Result<Hashing<File>> {
        let p = self.blob_path(digest);
        let f = File::open(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ImageError::MissingBlob(digest.to_string()),
            _ => ImageError::io(&p, e),
        })?;
        Ok(Hashing::new(f))
    }

    /// Checks a whole blob against its digest.
    pub fn verify_blob(&self, digest: &str) -> Result<u64> {
        digest::drain_and_check(self.open_blob(digest)?, digest)
    }

    /// An error met while reading blob `digest` as a tar: "corrupt" when the blob no longer
    /// hashes to its digest (a flipped byte breaks the gzip stream before the end is reached).
    pub fn explain(&self, digest: &str, e: ImageError) -> ImageError {
        match self.verify_blob(digest) {
            Err(c @ ImageError::Corrupt { .. }) => c,
            _ => e,
        }
    }

    /// Stores `data`; its digest is returned and, if `expected` is given, must match it.
    pub fn put_blob(&self, data: &[u8], expected: Option<&str>) -> Result<String> {
        let d = digest::of(data);
        if let Some(e) = expected {
            if e != d {
                return Err(ImageError::Corrupt {
                    digest: e.to_string(),
                    actual: d,
                });
            }
        }
        self.put_blob_from(&mut &data[..], &d)?;
        Ok(d)
    }

    /// Copies `r` into the store under `expected`, refusing content that does not hash to it.
    pub fn put_blob_from(&self, r: &mut dyn Read, expected: &str) -> Result<u64> {
        crate::reference::check_digest(expected).map_err(|r| ImageError::bad("digest", r))?;
        let (actual, n, tmp) = self.write_tmp(r, expected)?;
        if actual != expected {
            return Err(ImageError::Corrupt {
                digest: expected.to_string(),
                actual,
            });
        }
        self.commit_blob(tmp, expected)?;
        Ok(n)
    }

    /// Copies `r` into the store under the digest it hashes to: (digest, size). For content
    /// no manifest names yet (a docker-archive's layer files).
    pub fn put_blob_hashed(&self, r: &mut dyn Read, what: &str) -> Result<(String, u64)> {
        let (actual, n, tmp) = self.write_tmp(r, what)?;
        self.commit_blob(tmp, &actual)?;
        Ok((actual, n))
    }

    /// `r` into a temp file in tmp/, hashed on the way.
    fn write_tmp(
        &self,
        r: &mut dyn Read,
        what: &str,
    ) -> Result<(String, u64, tempfile::NamedTempFile)> {
        let tmp = tempfile::NamedTempFile::new_in(self.tmp_dir())
            .map_err(|e| ImageError::io(self.tmp_dir(), e))?;
        let mut w = Hashing::new(std::io::BufWriter::new(tmp));
        std::io::copy(r, &mut w).map_err(|e| ImageError::io(format!("blob {what}"), e))?;
        let (actual, n, buf) = w.finish();
        let tmp = buf
            .into_inner()
            .map_err(|e| ImageError::io(self.tmp_dir(), e.into_error()))?;
        Ok((actual, n, tmp))
    }

    /// Moves a fully written and verified temp file into place.
    pub fn commit_blob(&self, tmp: tempfile::NamedTempFile, digest: &str) -> Result<()> {
        tmp.as_file()
            .sync_all()
            .map_err(|e| ImageError::io(tmp.path(), e))?;
        let dest = self.blob_path(digest);
        tmp.persist(&dest)
            .map_err(|e| ImageError::io(&dest, e.error))?;
        Ok(())
    }

    fn read_index(&self) -> Result<Index> {
        let p = self.dir.join("index.json");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| ImageError::bad(p.display().to_string(), e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(ImageError::io(&p, e)),
        }
    }

    fn write_index(&self, idx: &Index) -> Result<()> {
        let p = self.dir.join("index.json");
        let mut tmp =
            tempfile::NamedTempFile::new_in(&self.dir).map_err(|e| ImageError::io(&self.dir, e))?;
        let text =
            serde_json::to_vec_pretty(idx).map_err(|e| ImageError::bad("index", e.to_string()))?;
        tmp.write_all(&text)
            .and_then(|_| tmp.as_file().sync_all())
            .map_err(|e| ImageError::io(tmp.path(), e))?;
        tmp.persist(&p).map_err(|e| ImageError::io(&p, e.error))?;
        Ok(())
    }

    /// Every image, newest fetch first.
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        let _l = self.lock(false)?;
        let mut v = self.read_index()?.images;
        v.sort_by(|a, b| b.fetched.cmp(&a.fetched));
        Ok(v)
    }

    /// Lists `rec` (all its blobs must be stored). Its names move to it from older images.
    pub fn add_image(&self, rec: ImageRecord) -> Result<()> {
        for d in std::iter::once(&rec.manifest)
            .chain(std::iter::once(&rec.config))
            .chain(rec.layers.iter().map(|l| &l.digest))
        {
            if !self.has_blob(d) {
                return Err(ImageError::MissingBlob(d.clone()));
            }
        }
        let _l = self.lock(true)?;
        let mut idx = self.read_index()?;
        for other in &mut idx.images {
            other.names.retain(|n| !rec.names.contains(n));
        }
        match idx.images.iter_mut().find(|i| i.id == rec.id) {
            Some(same) => {
                let mut names = rec.names.clone();
                names.extend(
                    same.names
                        .iter()
                        .filter(|n| !rec.names.contains(n))
                        .cloned(),
                );
                *same = ImageRecord { names, ..rec };
            }
            None => idx.images.push(rec),
        }
        self.write_index(&idx)
    }

    /// Finds an image by name (normalized or as typed), full ID, or ID prefix (>= 4 digits).
    pub fn find(&self, what: &str) -> Result<ImageRecord> {
        let images = self.images()?;
        find_in(&images, what).cloned()
    }

    /// Removes an image from the index (its blobs go at the next gc). A name removes only that
    /// name when the image has others.
    pub fn remove(
        &self,
        what: &str,
        in_use: &dyn Fn(&ImageRecord) -> Option<String>,
    ) -> Result<ImageRecord> {
        let _l = self.lock(true)?;
        let mut idx = self.read_index()?;
        let found = find_in(&idx.images, what)?.clone();
        let normalized = normalize_name(what);
        let by_name = found.names.iter().any(|n| Some(n) == normalized.as_ref());
        if by_name && found.names.len() > 1 {
            if let Some(i) = idx.images.iter_mut().find(|i| i.id == found.id) {
                i.names.retain(|n| Some(n) != normalized.as_ref());
            }
        } else {
            if let Some(pod) = in_use(&found) {
                return Err(ImageError::InUse {
                    image: what.to_string(),
                    pod,
                });
            }
            idx.images.retain(|i| i.id != found.id);
        }
        self.write_index(&idx)?;
        Ok(found)
    }

    /// The directory holding layer `l` unpacked for overlayfs, unpacking it first if needed.
    /// The blob is verified while it is unpacked; `diff_id` (the uncompressed tar's digest, from
    /// the image config) too when given.
    pub fn layer_dir(&self, l: &LayerRecord, diff_id: Option<&str>) -> Result<PathBuf> {
        let dest = self.dir.join("layers").join(digest::hex_of(&l.digest));
        if dest.is_dir() {
            return Ok(dest);
        }
        let _lock = self.lock_item("layer", &l.digest)?;
        if dest.is_dir() {
            return Ok(dest);
        }
        let work = tempfile::Builder::new()
            .prefix("layer-")
            .tempdir_in(self.tmp_dir())
            .map_err(|e| ImageError::io(self.tmp_dir(), e))?;
        let blob = self.open_blob(&l.digest)?;
        let mut blob = blob;
        {
            let r = unpack::decompressed(BufReader::new(&mut blob), &l.digest)?;
            let mut tar_hash = Hashing::new(r);
            unpack::unpack(&mut tar_hash, work.path(), Whiteouts::Overlay, &l.digest)
                .map_err(|e| self.explain(&l.digest, e))?;
            std::io::copy(&mut tar_hash, &mut std::io::sink())
                .map_err(|e| ImageError::io(format!("layer {}", l.digest), e))?;
            let (actual, _, _) = tar_hash.finish();
            if let Some(want) = diff_id {
                if actual != want {
                    return Err(ImageError::Corrupt {
                        digest: format!("{} (uncompressed {want})", l.digest),
                        actual,
                    });
                }
            }
        }
        digest::drain_and_check(blob, &l.digest)?;
        let tmp = work.keep();
        std::fs::rename(&tmp, &dest).map_err(|e| ImageError::io(&dest, e))?;
        Ok(dest)
    }

    /// Removes images without names that no pod uses, then blobs and unpacked layers no
    /// listed image references, and leftovers in tmp/ older than `tmp_age`.
    pub fn gc(&self, used_ids: &HashSet<String>, tmp_age: std::time::Duration) -> Result<GcReport> {
        let _fetches = self.lock_fetches(true)?;
        let _l = self.lock(true)?;
        let mut idx = self.read_index()?;
        let mut report = GcReport::default();
        idx.images.retain(|i| {
            let keep = !i.names.is_empty() || used_ids.contains(&i.id);
            if !keep {
                report.images.push(i.id.clone());
            }
            keep
        });
        self.write_index(&idx)?;
        let mut live = HashSet::new();
        for i in &idx.images {
            live.insert(digest::hex_of(&i.manifest).to_string());
            live.insert(digest::hex_of(&i.config).to_string());
            for l in &i.layers {
                live.insert(digest::hex_of(&l.digest).to_string());
            }
        }
        let blobs = self.dir.join("blobs/sha256");
        for e in std::fs::read_dir(&blobs)
            .map_err(|e| ImageError::io(&blobs, e))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !live.contains(&name) {
                report.bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                std::fs::remove_file(e.path()).map_err(|err| ImageError::io(e.path(), err))?;
                report.blobs += 1;
            }
        }
        let layers = self.dir.join("layers");
        for e in std::fs::read_dir(&layers)
            .map_err(|e| ImageError::io(&layers, e))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !live.contains(&name) {
                std::fs::remove_dir_all(e.path()).map_err(|err| ImageError::io(e.path(), err))?;
                report.layers += 1;
            }
        }
        let now = std::time::SystemTime::now();
        for e in std::fs::read_dir(self.tmp_dir())
            .map_err(|e| ImageError::io(self.tmp_dir(), e))?
            .flatten()
        {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age >= tmp_age);
            let name = e.file_name().to_string_lossy().into_owned();
            if old && !name.ends_with(".lock") {
                let _ = remove_path(&e.path());
            }
        }
        Ok(report)
    }
}

fn remove_path(p: &Path) -> std::io::Result<()> {
    if p.is_dir() {
        std::fs::remove_dir_all(p)
    } else {
        std::fs::remove_file(p)
    }
}

/// `what` as a normalized reference, when it parses as one.
pub fn normalize_name(what: &str) -> Option<String> {
    crate::reference::Reference::parse(what)
        .ok()
        .map(|r| r.to_string())
}

fn find_in<'a>(images: &'a [ImageRecord], what: &str) -> Result<&'a ImageRecord> {
    let normalized = normalize_name(what);
    if let Some(i) = images.iter().find(|i| {
        i.names
            .iter()
            .any(|n| n == what || Some(n) == normalized.as_ref())
    }) {
        return Ok(i);
    }
    let hex = digest::hex_of(what);
    if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let hits: Vec<_> = images
            .iter()
            .filter(|i| digest::hex_of(&i.id).starts_with(hex))
            .collect();
        match hits.len() {
            0 => {}
            1 => return Ok(hits[0]),
            _ => return Err(ImageError::Ambiguous(what.to_string())),
        }
    }
    Err(ImageError::NotFound(what.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(store: &Store, name: &str, content: &[u8]) -> ImageRecord {
        let layer = store.put_blob(content, None).expect("storing a layer");
        let config = store
            .put_blob(
                format!("{{\"n\":{name:?},\"l\":{content:?}}}").as_bytes(),
                None,
            )
            .expect("storing a config");
        let manifest = store
            .put_blob(config.as_bytes(), None)
            .expect("storing a manifest");
        ImageRecord {
            id: config.clone(),
            names: vec![normalize_name(name).expect("a valid name")],
            manifest,
            config,
            layers: vec![LayerRecord {
                digest: layer,
                size: content.len() as u64,
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            }],
            size: 0,
            fetched: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn blobs_are_verified_on_write_and_read() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let s = Store::open(dir.path()).expect("opening the store");
        let d = s.put_blob(b"abc", None).expect("storing");
        assert_eq!(s.read_blob(&d).expect("reading"), b"abc");
        let wrong = digest::of(b"xyz");
        assert!(matches!(
            s.put_blob(b"abc", Some(&wrong)),
            Err(ImageError::Corrupt { .. })
        ));
        assert!(!s.has_blob(&wrong));
        std::fs::write(s.blob_path(&d), b"abd").expect("corrupting");
        assert!(matches!(s.read_blob(&d), Err(ImageError::Corrupt { .. })));
        assert!(matches!(s.verify_blob(&d), Err(ImageError::Corrupt { .. })));
    }

    #[test]
    fn index_names_ids_removal_and_gc() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let s = Store::open(dir.path()).expect("opening the store");
        let a = record(&s, "busybox", b"layer a");
        s.add_image(a.clone()).expect("adding a");
        assert_eq!(s.find("busybox").expect("by name").id, a.id);
        assert_eq!(
            s.find("docker.io/library/busybox:latest")
                .expect("full name")
                .id,
            a.id
        );
        assert_eq!(s.find(a.short_id()).expect("by short id").id, a.id);
        assert!(matches!(s.find("nginx"), Err(ImageError::NotFound(_))));
        // A newer image under the same name takes it; the old one is left without names.
        let b = record(&s, "busybox", b"layer b");
        s.add_image(b.clone()).expect("adding b");
        assert_eq!(s.find("busybox").expect("by name").id, b.id);
        assert!(s.find(&a.id).expect("old by id").names.is_empty());
        // An image a pod uses is not removed.
        let err = s.remove(&b.id, &|_| Some("pod1".into()));
        assert!(matches!(err, Err(ImageError::InUse { .. })));
        let report = s
            .gc(&HashSet::new(), std::time::Duration::from_secs(3600))
            .expect("gc");
        assert_eq!(report.images, vec![a.id.clone()]);
        assert_eq!(report.blobs, 3);
        assert!(s.has_blob(&b.layers[0].digest));
        s.remove("busybox", &|_| None).expect("removing b");
        assert!(s.images().expect("listing").is_empty());
    }

    #[test]
    fn gc_waits_for_fetches_in_progress() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let s = Store::open(dir.path()).expect("opening the store");
        // A fetch has stored a blob but not listed its image yet.
        let fetching = s.lock_fetches(false).expect("the fetch lock");
        let blob = s.put_blob(b"a layer being fetched", None).expect("storing");
        let s2 = s.clone();
        let gc = std::thread::spawn(move || {
            s2.gc(&HashSet::new(), std::time::Duration::ZERO)
                .expect("gc")
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!gc.is_finished(), "gc ran while a fetch was in progress");
        assert!(s.has_blob(&blob));
        drop(fetching);
        let report = gc.join().expect("the gc thread");
        assert_eq!(
            report.blobs, 1,
            "an unlisted blob is collected once no fetch runs"
        );
    }

    #[test]
    fn an_image_with_a_missing_blob_is_not_listed() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let s = Store::open(dir.path()).expect("opening the store");
        let mut r = record(&s, "x", b"l");
        r.layers[0].digest = digest::of(b"never stored");
        assert!(matches!(s.add_image(r), Err(ImageError::MissingBlob(_))));
        assert!(s.images().expect("listing").is_empty());
    }
}
