//! Unpacking layer tars, safely: no entry may land outside the destination (no `..`, no
//! writing through a symlink), no device nodes, and whiteouts are honoured.
//!
//! Two modes: [`Whiteouts::Overlay`] keeps each layer in its own directory with whiteouts in
//! overlayfs's form (a 0/0 character device for a deleted path, `trusted.overlay.opaque=y` on
//! an opaque directory), so that layers stack as overlay lower directories; [`Whiteouts::Apply`]
//! applies layers one over another into one directory (`rkt image extract`).

use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use crate::error::{ImageError, Result};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// How whiteout entries are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    Overlay,
    Apply,
}

/// Wraps `r` in a decompressor chosen by the stream's first bytes (gzip or plain tar).
pub fn decompressed<'a, R: BufRead + 'a>(mut r: R, layer: &str) -> Result<Box<dyn Read + 'a>> {
    let head = r
        .fill_buf()
        .map_err(|e| ImageError::io(format!("layer {layer}"), e))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Err(ImageError::bad(
            format!("layer {layer}"),
            "zstd-compressed layers are not supported; push the image with gzip layers",
        ))
    } else {
        Ok(Box::new(r))
    }
}

/// A tar path made relative and checked: `None` for the root itself.
fn safe_relative(p: &Path, layer: &str) -> Result<Option<PathBuf>> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(ImageError::UnsafeLayer {
                    layer: layer.to_string(),
                    reason: format!("path {} climbs out with '..'", p.display()),
                })
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Refuses `rel` if one of its parents inside `root` is a symlink (writing there would follow
/// it out of the layer) and creates missing parents.
fn prepare_parent(root: &Path, rel: &Path, layer: &str) -> Result<()> {
    let mut p = root.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for c in &comps[..comps.len().saturating_sub(1)] {
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(ImageError::UnsafeLayer {
                    layer: layer.to_string(),
                    reason: format!(
                        "{} is written through the symlink {}",
                        rel.display(),
                        p.display()
                    ),
                })
            }
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                std::fs::remove_file(&p).map_err(|e| ImageError::io(&p, e))?;
                std::fs::create_dir(&p).map_err(|e| ImageError::io(&p, e))?;
            }
            Err(_) => std::fs::create_dir(&p).map_err(|e| ImageError::io(&p, e))?,
        }
    }
    Ok(())
}

fn remove_any(p: &Path) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p).map_err(|e| ImageError::io(p, e)),
        Ok(_) => std::fs::remove_file(p).map_err(|e| ImageError::io(p, e)),
        Err(_) => Ok(()),
    }
}

/// Unpacks the (decompressed) tar stream `r` into `dest`. `layer` names it in errors.
pub fn unpack(r: impl Read, dest: &Path, mode: Whiteouts, layer: &str) -> Result<()> {
    let mut ar = tar::Archive::new(r);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_preserve_mtime(true);
    ar.set_unpack_xattrs(true);
    ar.set_overwrite(true);
    let entries = ar
        .entries()
        .map_err(|e| ImageError::io(format!("layer {layer}"), e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ImageError::io(format!("layer {layer}"), e))?;
        let raw = entry
            .path()
            .map_err(|e| ImageError::io(format!("layer {layer}"), e))?
            .into_owned();
        let Some(rel) = safe_relative(&raw, layer)? else {
            continue;
        };
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() {
            return Err(ImageError::UnsafeLayer {
                layer: layer.to_string(),
                reason: format!(
                    "{} is a device node; images may not carry devices",
                    rel.display()
                ),
            });
        }
        prepare_parent(dest, &rel, layer)?;
        let parent = dest.join(rel.parent().unwrap_or(Path::new("")));
        if name == OPAQUE {
            match mode {
                Whiteouts::Overlay => {
                    xattr_set(&parent, "trusted.overlay.opaque", b"y")?;
                }
                Whiteouts::Apply => {
                    // Everything below the directory from earlier layers goes.
                    if let Ok(rd) = std::fs::read_dir(&parent) {
                        for e in rd.flatten() {
                            remove_any(&e.path())?;
                        }
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            let target = parent.join(hidden);
            remove_any(&target)?;
            if mode == Whiteouts::Overlay {
                nix::sys::stat::mknod(
                    &target,
                    nix::sys::stat::SFlag::S_IFCHR,
                    nix::sys::stat::Mode::empty(),
                    0,
                )
                .map_err(|e| ImageError::io(&target, std::io::Error::from(e)))?;
            }
            continue;
        }
        if kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(|e| ImageError::io(format!("layer {layer}"), e))?
                .map(|t| t.into_owned())
                .unwrap_or_default();
            let Some(t) = safe_relative(&target, layer)? else {
                return Err(ImageError::UnsafeLayer {
                    layer: layer.to_string(),
                    reason: format!("{} is a hard link to the root", rel.display()),
                });
            };
            prepare_parent(dest, &t, layer)?;
            let from = dest.join(&t);
            let to = dest.join(&rel);
            remove_any(&to)?;
            std::fs::hard_link(&from, &to).map_err(|e| ImageError::io(&to, e))?;
            continue;
        }
        let target = dest.join(&rel);
        // A file replacing a directory (or anything replacing a file) from earlier.
        if let Ok(m) = std::fs::symlink_metadata(&target) {
            if !(m.is_dir() && kind.is_dir()) {
                remove_any(&target)?;
            }
        }
        entry
            .unpack(&target)
            .map_err(|e| ImageError::io(&target, e))?;
    }
    Ok(())
}

fn xattr_set(p: &Path, name: &str, value: &[u8]) -> Result<()> {
    xattr::set(p, name, value).map_err(|e| ImageError::io(p, e))
}

/// Convenience for tests and `extract`: unpack a (maybe gzip) layer from a reader.
pub fn unpack_layer(r: impl Read, dest: &Path, mode: Whiteouts, layer: &str) -> Result<()> {
    let r = decompressed(BufReader::new(r), layer)?;
    unpack(r, dest, mode, layer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar entry with a raw name (set byte by byte, so that unsafe names can be made).
    fn entry(
        b: &mut tar::Builder<Vec<u8>>,
        name: &str,
        kind: tar::EntryType,
        data: &[u8],
        link: Option<&str>,
    ) {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        b.append(&h, data).expect("appending to an in-memory tar");
    }

    fn tar_of(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        f(&mut b);
        b.into_inner().expect("finishing an in-memory tar")
    }

    fn err_of(t: &[u8]) -> String {
        let d = tempfile::tempdir().expect("a temp dir");
        match unpack_layer(t, d.path(), Whiteouts::Apply, "test") {
            Ok(()) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn traversal_devices_and_symlink_escapes_are_refused() {
        let up = tar_of(|b| entry(b, "../evil", tar::EntryType::Regular, b"x", None));
        assert!(err_of(&up).contains("climbs out"), "{}", err_of(&up));
        let dev = tar_of(|b| entry(b, "dev/sda", tar::EntryType::Block, b"", None));
        assert!(err_of(&dev).contains("device node"), "{}", err_of(&dev));
        let link_up =
            tar_of(|b| entry(b, "h", tar::EntryType::Link, b"", Some("../../etc/passwd")));
        assert!(err_of(&link_up).contains("climbs out"));
        let through = tar_of(|b| {
            entry(b, "etc", tar::EntryType::Symlink, b"", Some("/etc"));
            entry(b, "etc/passwd", tar::EntryType::Regular, b"owned", None);
        });
        assert!(err_of(&through).contains("symlink"), "{}", err_of(&through));
    }

    #[test]
    fn whiteouts_apply_and_overlay() {
        let base = tar_of(|b| {
            entry(b, "a/", tar::EntryType::Directory, b"", None);
            entry(b, "a/keep", tar::EntryType::Regular, b"1", None);
            entry(b, "a/gone", tar::EntryType::Regular, b"2", None);
            entry(b, "o/", tar::EntryType::Directory, b"", None);
            entry(b, "o/old", tar::EntryType::Regular, b"3", None);
        });
        let top = tar_of(|b| {
            entry(b, "a/.wh.gone", tar::EntryType::Regular, b"", None);
            entry(b, "o/.wh..wh..opq", tar::EntryType::Regular, b"", None);
            entry(b, "o/new", tar::EntryType::Regular, b"4", None);
        });
        let d = tempfile::tempdir().expect("a temp dir");
        unpack_layer(&base[..], d.path(), Whiteouts::Apply, "base").expect("base layer");
        unpack_layer(&top[..], d.path(), Whiteouts::Apply, "top").expect("top layer");
        assert!(d.path().join("a/keep").is_file());
        assert!(!d.path().join("a/gone").exists());
        assert!(!d.path().join("o/old").exists());
        assert!(d.path().join("o/new").is_file());
        assert!(!d.path().join("a/.wh.gone").exists());
        // Overlay form: a 0/0 character device and the opaque xattr (needs root for mknod).
        if nix::unistd::geteuid().is_root() {
            let o = tempfile::tempdir().expect("a temp dir");
            unpack_layer(&top[..], o.path(), Whiteouts::Overlay, "top").expect("top as overlay");
            use std::os::unix::fs::FileTypeExt;
            let m = std::fs::symlink_metadata(o.path().join("a/gone")).expect("a whiteout");
            assert!(m.file_type().is_char_device());
            let x =
                xattr::get(o.path().join("o"), "trusted.overlay.opaque").expect("reading xattr");
            assert_eq!(x.as_deref(), Some(&b"y"[..]));
        }
    }
}
