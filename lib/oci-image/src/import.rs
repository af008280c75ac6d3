//! Getting an image into the store from wherever its blobs are: an OCI layout (directory or
//! tar), a docker-archive tar, or a registry ([`crate::registry`]). Every source hands blobs to
//! the store, which checks their digests; the image is listed last.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::digest;
use crate::error::{ImageError, Result};
use crate::reference::Reference;
use crate::spec::{self, Descriptor, ManifestOrIndex, Platform};
use crate::store::{ImageRecord, LayerRecord, Store};

/// Where blobs come from.
pub trait BlobSource {
    /// Copies blob `d` into the store (the store verifies it).
    fn fetch_blob(&mut self, store: &Store, d: &Descriptor) -> Result<()>;
}

/// Stores manifest `data` and everything it references from `src`, then lists the image under
/// `names`.
pub fn import_manifest(
    store: &Store,
    src: &mut dyn BlobSource,
    data: &[u8],
    names: Vec<String>,
    platform: &Platform,
    what: &str,
) -> Result<ImageRecord> {
    let ManifestOrIndex::Manifest(m) = spec::parse_manifest(data, "", what)? else {
        return Err(ImageError::bad(
            what,
            "expected an image manifest, found an index",
        ));
    };
    if !store.has_blob(&m.config.digest) {
        src.fetch_blob(store, &m.config)?;
    }
    let cfg = spec::parse_config(&store.read_blob(&m.config.digest)?, what)?;
    spec::check_platform(&cfg, platform, what)?;
    if !cfg.rootfs.diff_ids.is_empty() && cfg.rootfs.diff_ids.len() != m.layers.len() {
        return Err(ImageError::bad(
            what,
            format!(
                "the manifest has {} layers but the config {} diff_ids",
                m.layers.len(),
                cfg.rootfs.diff_ids.len()
            ),
        ));
    }
    for l in &m.layers {
        crate::reference::check_digest(&l.digest).map_err(|r| ImageError::bad(what, r))?;
        if !store.has_blob(&l.digest) {
            src.fetch_blob(store, l)?;
        }
    }
    let manifest = store.put_blob(data, None)?;
    let layers: Vec<LayerRecord> = m
        .layers
        .iter()
        .map(|l| LayerRecord {
            digest: l.digest.clone(),
            size: l.size,
            media_type: l.media_type.clone(),
        })
        .collect();
    let rec = ImageRecord {
        id: m.config.digest.clone(),
        names,
        manifest,
        config: m.config.digest.clone(),
        size: data.len() as u64 + m.config.size + layers.iter().map(|l| l.size).sum::<u64>(),
        layers,
        fetched: crate::now_rfc3339(),
    };
    store.add_image(rec.clone())?;
    Ok(rec)
}

/// An OCI image layout directory.
struct LayoutDir(PathBuf);

impl BlobSource for LayoutDir {
    fn fetch_blob(&mut self, store: &Store, d: &Descriptor) -> Result<()> {
        crate::reference::check_digest(&d.digest).map_err(|r| ImageError::bad("layout", r))?;
        let p = self.0.join("blobs/sha256").join(digest::hex_of(&d.digest));
        let mut f = std::fs::File::open(&p).map_err(|e| ImageError::io(&p, e))?;
        store.put_blob_from(&mut f, &d.digest)?;
        Ok(())
    }
}

fn read_small(p: &Path) -> Result<Vec<u8>> {
    let f = std::fs::File::open(p).map_err(|e| ImageError::io(p, e))?;
    let mut v = Vec::new();
    f.take(crate::store::MAX_JSON_BLOB + 1)
        .read_to_end(&mut v)
        .map_err(|e| ImageError::io(p, e))?;
    if v.len() as u64 > crate::store::MAX_JSON_BLOB {
        return Err(ImageError::bad(
            p.display().to_string(),
            "too big for a JSON document",
        ));
    }
    Ok(v)
}

/// A name for an image that came from a file: the tag it carries if that is a reference,
/// else `localhost/<file name>:<tag>`.
fn local_name(path: &Path, tag: Option<&str>) -> Result<String> {
    if let Some(t) = tag {
        if t.contains('/') {
            return Ok(Reference::parse(t)?.to_string());
        }
    }
    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = stem.trim_end_matches(".tar").to_lowercase().replace(
        |c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-'),
        "-",
    );
    let stem = stem.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let stem = if stem.is_empty() { "image" } else { stem };
    Ok(Reference::parse(&format!("localhost/{stem}:{}", tag.unwrap_or("latest")))?.to_string())
}

/// Imports from an OCI layout directory; `tag` picks a manifest by its ref name.
pub fn from_layout(
    store: &Store,
    dir: &Path,
    tag: Option<&str>,
    name: Option<&str>,
    platform: &Platform,
) -> Result<ImageRecord> {
    layout_import(store, dir, dir, tag, name, platform)
}

/// `dir` holds the layout; `source` is what the user named (for messages and default names).
fn layout_import(
    store: &Store,
    dir: &Path,
    source: &Path,
    tag: Option<&str>,
    name: Option<&str>,
    platform: &Platform,
) -> Result<ImageRecord> {
    let what = source.display().to_string();
    if !dir.join("oci-layout").is_file() {
        return Err(ImageError::bad(
            &what,
            "not an OCI image layout (no oci-layout file)",
        ));
    }
    let ManifestOrIndex::Index(idx) = spec::parse_manifest(
        &read_small(&dir.join("index.json"))?,
        spec::OCI_INDEX,
        &what,
    )?
    else {
        return Err(ImageError::bad(&what, "index.json is not an image index"));
    };
    let chosen: Vec<&Descriptor> = match tag {
        Some(t) => idx
            .manifests
            .iter()
            .filter(|d| d.annotations.get(spec::REF_NAME).map(String::as_str) == Some(t))
            .collect(),
        None => idx.manifests.iter().collect(),
    };
    let d = match chosen.as_slice() {
        [] => {
            return Err(ImageError::NotFound(format!(
                "{what}:{}",
                tag.unwrap_or("<any>")
            )))
        }
        [one] => *one,
        many => {
            let names: Vec<_> = many
                .iter()
                .filter_map(|d| d.annotations.get(spec::REF_NAME).cloned())
                .collect();
            let plat = many.iter().find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == platform.os && p.architecture == platform.architecture)
            });
            match plat {
                Some(d) => *d,
                None => {
                    return Err(ImageError::bad(
                        &what,
                        format!(
                            "holds several images; name one with {what}:TAG (tags: {})",
                            names.join(", ")
                        ),
                    ))
                }
            }
        }
    };
    let ref_name = d.annotations.get(spec::REF_NAME).cloned();
    let mut src = LayoutDir(dir.to_path_buf());
    let blob = |d: &Descriptor| -> Result<Vec<u8>> {
        crate::reference::check_digest(&d.digest).map_err(|r| ImageError::bad(&what, r))?;
        let data = read_small(&dir.join("blobs/sha256").join(digest::hex_of(&d.digest)))?;
        let actual = digest::of(&data);
        if actual != d.digest {
            return Err(ImageError::Corrupt {
                digest: d.digest.clone(),
                actual,
            });
        }
        Ok(data)
    };
    let mut data = blob(d)?;
    if let ManifestOrIndex::Index(inner) = spec::parse_manifest(&data, &d.media_type, &what)? {
        let m = spec::pick_platform(&inner, platform, &what)?.clone();
        data = blob(&m)?;
    }
    let name = match name {
        Some(n) => Reference::parse(n)?.to_string(),
        None => local_name(source, ref_name.as_deref().or(tag))?,
    };
    import_manifest(store, &mut src, &data, vec![name], platform, &what)
}

/// Imports a docker-archive (`docker save`, `podman save`) already unpacked in `dir`.
fn from_docker_dir(
    store: &Store,
    dir: &Path,
    source: &Path,
    name: Option<&str>,
    platform: &Platform,
) -> Result<ImageRecord> {
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(rename = "Config")]
        config: String,
        #[serde(rename = "RepoTags", default)]
        repo_tags: Option<Vec<String>>,
        #[serde(rename = "Layers")]
        layers: Vec<String>,
    }
    let what = source.display().to_string();
    let entries: Vec<Entry> = serde_json::from_slice(&read_small(&dir.join("manifest.json"))?)
        .map_err(|e| ImageError::bad(&what, format!("bad manifest.json: {e}")))?;
    let [e] = entries.as_slice() else {
        return Err(ImageError::bad(
            &what,
            format!(
                "holds {} images; rkt fetches archives of one",
                entries.len()
            ),
        ));
    };
    let inside = |rel: &str| -> Result<PathBuf> {
        let p = Path::new(rel);
        if p.is_absolute()
            || p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(ImageError::UnsafeLayer {
                layer: rel.to_string(),
                reason: "path outside the archive".into(),
            });
        }
        Ok(dir.join(p))
    };
    let cfg_data = read_small(&inside(&e.config)?)?;
    let config = Descriptor {
        media_type: spec::OCI_CONFIG.into(),
        digest: digest::of(&cfg_data),
        size: cfg_data.len() as u64,
        platform: None,
        annotations: Default::default(),
    };
    store.put_blob(&cfg_data, Some(&config.digest))?;
    let mut layers = Vec::new();
    for l in &e.layers {
        let p = inside(l)?;
        let mut f = std::fs::File::open(&p).map_err(|err| ImageError::io(&p, err))?;
        let (d, n) = store.put_blob_hashed(&mut f, l)?;
        layers.push(Descriptor {
            media_type: spec::OCI_LAYER_TAR.into(),
            digest: d,
            size: n,
            platform: None,
            annotations: Default::default(),
        });
    }
    let manifest = spec::Manifest {
        schema_version: 2,
        media_type: spec::OCI_MANIFEST.into(),
        config,
        layers,
    };
    let data = serde_json::to_vec(&manifest).map_err(|e| ImageError::bad(&what, e.to_string()))?;
    let names = match name {
        Some(n) => vec![Reference::parse(n)?.to_string()],
        None => match e.repo_tags.as_deref().unwrap_or_default() {
            [] => vec![local_name(source, None)?],
            tags => tags
                .iter()
                .map(|t| Reference::parse(t).map(|r| r.to_string()))
                .collect::<Result<_>>()?,
        },
    };
    struct Stored;
    impl BlobSource for Stored {
        fn fetch_blob(&mut self, _: &Store, d: &Descriptor) -> Result<()> {
            Err(ImageError::MissingBlob(d.digest.clone()))
        }
    }
    import_manifest(store, &mut Stored, &data, names, platform, &what)
}

/// Imports a tar file: an OCI layout (`oci-archive`) or a docker-archive. Its content is
/// unpacked into the store's tmp/ first, refusing unsafe entries.
pub fn from_archive(
    store: &Store,
    tar_path: &Path,
    tag: Option<&str>,
    name: Option<&str>,
    platform: &Platform,
) -> Result<ImageRecord> {
    let work = tempfile::Builder::new()
        .prefix("archive-")
        .tempdir_in(store.tmp_dir())
        .map_err(|e| ImageError::io(store.tmp_dir(), e))?;
    let f = std::fs::File::open(tar_path).map_err(|e| ImageError::io(tar_path, e))?;
    crate::unpack::unpack_layer(
        f,
        work.path(),
        crate::unpack::Whiteouts::Apply,
        &tar_path.display().to_string(),
    )?;
    if work.path().join("oci-layout").is_file() && !work.path().join("manifest.json").is_file() {
        return layout_import(store, work.path(), tar_path, tag, name, platform);
    }
    if work.path().join("manifest.json").is_file() {
        return from_docker_dir(store, work.path(), tar_path, name, platform);
    }
    Err(ImageError::bad(
        tar_path.display().to_string(),
        "neither an OCI layout (oci-layout, index.json) nor a docker-archive (manifest.json)",
    ))
}
