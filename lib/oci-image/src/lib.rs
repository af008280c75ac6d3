//! oci-image: the container images rkt runs. A content-addressed [`store`] (sha256 blobs checked
//! on every write and read, an index of names, layers unpacked for overlayfs), [`reference`]s
//! as docker spells them, the image [`spec`] documents, and ways in: OCI layouts and
//! docker-archives ([`import`]) and registries ([`registry`]). Layers are unpacked by
//! [`unpack`], which refuses entries that would escape their directory.
//!
//! It is not a runtime: it makes no namespaces or mounts; `rkt-runtime` stacks the unpacked
//! layers into a pod's root filesystem.

pub mod digest;
pub mod error;
pub mod import;
pub mod reference;
pub mod registry;
pub mod spec;
pub mod store;
pub mod unpack;

use std::io::Write;
use std::path::{Path, PathBuf};

pub use error::{ImageError, Result};
pub use reference::Reference;
pub use store::{ImageRecord, Store};

/// Where `rkt fetch` takes an image from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `oci:DIR[:TAG]`, or a directory with an oci-layout file.
    Layout { dir: PathBuf, tag: Option<String> },
    /// `oci-archive:FILE[:TAG]`, `docker-archive:FILE`, or a tar file.
    Archive { file: PathBuf, tag: Option<String> },
    /// `docker://REF` or a plain reference.
    Registry(Reference),
}

impl Source {
    /// Reads what the user typed: a transport prefix, an existing path, or a reference.
    pub fn parse(s: &str) -> Result<Source> {
        let split_tag = |rest: &str| -> (PathBuf, Option<String>) {
            match rest.rsplit_once(':') {
                Some((p, t)) if !t.contains('/') && !Path::new(rest).exists() => {
                    (PathBuf::from(p), Some(t.to_string()))
                }
                _ => (PathBuf::from(rest), None),
            }
        };
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = split_tag(rest);
            return Ok(Source::Layout { dir, tag });
        }
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (file, tag) = split_tag(rest);
            return Ok(Source::Archive { file, tag });
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            return Ok(Source::Archive {
                file: PathBuf::from(rest),
                tag: None,
            });
        }
        if s.starts_with("docker://") {
            return Ok(Source::Registry(Reference::parse(s)?));
        }
        let p = Path::new(s);
        if p.is_dir() {
            return Ok(Source::Layout {
                dir: p.to_path_buf(),
                tag: None,
            });
        }
        if p.is_file() {
            return Ok(Source::Archive {
                file: p.to_path_buf(),
                tag: None,
            });
        }
        if s.starts_with('/') || s.starts_with("./") || s.starts_with("../") {
            return Err(ImageError::bad(s, "no such file or directory"));
        }
        Ok(Source::Registry(Reference::parse(s)?))
    }
}

/// Fetches `source` into `store` for this machine's platform.
pub fn fetch(
    store: &Store,
    source: &Source,
    name: Option<&str>,
    opts: registry::PullOptions,
) -> Result<ImageRecord> {
    let platform = spec::host_platform();
    let _fetching = store.lock_fetches(false)?;
    match source {
        Source::Layout { dir, tag } => {
            import::from_layout(store, dir, tag.as_deref(), name, &platform)
        }
        Source::Archive { file, tag } => {
            import::from_archive(store, file, tag.as_deref(), name, &platform)
        }
        Source::Registry(r) => {
            let rec = registry::pull(store, r, &platform, opts)?;
            match name {
                Some(n) => {
                    let n = Reference::parse(n)?.to_string();
                    let rec = ImageRecord {
                        names: [rec.names.clone(), vec![n]].concat(),
                        ..rec
                    };
                    store.add_image(rec.clone())?;
                    Ok(rec)
                }
                None => Ok(rec),
            }
        }
    }
}

/// The parsed config of a stored image.
pub fn config_of(store: &Store, rec: &ImageRecord) -> Result<spec::ImageConfig> {
    spec::parse_config(&store.read_blob(&rec.config)?, &rec.id)
}

/// Writes `rec` as an OCI archive (a tar of an OCI layout) that `rkt fetch` reads back.
pub fn export(store: &Store, rec: &ImageRecord, out: &mut dyn Write) -> Result<()> {
    let mut b = tar::Builder::new(out);
    let add = |b: &mut tar::Builder<&mut dyn Write>, path: &str, data: &[u8]| -> Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, path, data)
            .map_err(|e| ImageError::io(path, e))
    };
    add(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let manifest = store.read_blob(&rec.manifest)?;
    let mut annotations = std::collections::BTreeMap::new();
    if let Some(n) = rec.names.first() {
        annotations.insert(spec::REF_NAME.to_string(), n.clone());
    }
    let index = spec::Index {
        schema_version: 2,
        media_type: spec::OCI_INDEX.into(),
        manifests: vec![spec::Descriptor {
            media_type: spec::OCI_MANIFEST.into(),
            digest: rec.manifest.clone(),
            size: manifest.len() as u64,
            platform: None,
            annotations,
        }],
    };
    let index = serde_json::to_vec(&index).map_err(|e| ImageError::bad("index", e.to_string()))?;
    add(&mut b, "index.json", &index)?;
    add(
        &mut b,
        &format!("blobs/sha256/{}", digest::hex_of(&rec.manifest)),
        &manifest,
    )?;
    let config = store.read_blob(&rec.config)?;
    add(
        &mut b,
        &format!("blobs/sha256/{}", digest::hex_of(&rec.config)),
        &config,
    )?;
    for l in &rec.layers {
        store.verify_blob(&l.digest)?;
        let p = store.blob_path(&l.digest);
        let mut f = std::fs::File::open(&p).map_err(|e| ImageError::io(&p, e))?;
        b.append_file(
            format!("blobs/sha256/{}", digest::hex_of(&l.digest)),
            &mut f,
        )
        .map_err(|e| ImageError::io(&p, e))?;
    }
    b.finish().map_err(|e| ImageError::io("archive", e))?;
    Ok(())
}

/// Writes the image's root filesystem (its layers applied in order) into `dest`.
pub fn extract(store: &Store, rec: &ImageRecord, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).map_err(|e| ImageError::io(dest, e))?;
    for l in &rec.layers {
        let mut blob = store.open_blob(&l.digest)?;
        unpack::unpack_layer(&mut blob, dest, unpack::Whiteouts::Apply, &l.digest)
            .map_err(|e| store.explain(&l.digest, e))?;
        digest::drain_and_check(blob, &l.digest)?;
    }
    Ok(())
}

/// Now as RFC 3339 UTC with nanoseconds (what runc and the image specs write).
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}
