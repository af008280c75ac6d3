//! Loading and checking a bundle: config.json (through oci-spec) and the root filesystem.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::{Result, RuntimeError};

/// A bundle whose config is loaded and checked against what rkt supports.
#[derive(Debug)]
pub struct Bundle {
    /// Absolute path of the bundle directory.
    pub dir: PathBuf,
    pub spec: Spec,
    /// Absolute path of the root filesystem.
    pub rootfs: PathBuf,
}

fn bad(path: &Path, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::BadConfig {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl Bundle {
    /// Loads `dir/config.json` and checks it.
    pub fn load(dir: &Path) -> Result<Self> {
        let dir = std::fs::canonicalize(dir).map_err(|e| RuntimeError::io(dir, e))?;
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| RuntimeError::io(&path, e))?;
        let spec: Spec = serde_json::from_str(&text).map_err(|e| bad(&path, e.to_string()))?;
        let major = spec.version().split('.').next().unwrap_or("");
        if major != "1" {
            return Err(bad(
                &path,
                format!("ociVersion {:?} is not a 1.x runtime spec", spec.version()),
            ));
        }
        let root = spec
            .root()
            .as_ref()
            .ok_or_else(|| bad(&path, "no root filesystem (\"root\") given"))?;
        let rootfs = dir.join(root.path());
        if !rootfs.is_dir() {
            return Err(bad(
                &path,
                format!("root filesystem {} is not a directory", rootfs.display()),
            ));
        }
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| bad(&path, "no \"process\" given"))?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(bad(&path, "process.args must name the program to run"));
        }
        if let Some(linux) = spec.linux() {
            for ns in linux.namespaces().as_deref().unwrap_or_default() {
                match ns.typ() {
                    LinuxNamespaceType::Time => {
                        return Err(RuntimeError::Unsupported(
                            "time namespaces are not implemented".into(),
                        ))
                    }
                    LinuxNamespaceType::User if ns.path().is_none() => {
                        let empty = |m: &Option<Vec<_>>| m.as_ref().is_none_or(|v| v.is_empty());
                        if empty(linux.uid_mappings()) || empty(linux.gid_mappings()) {
                            return Err(bad(
                                &path,
                                "a new user namespace needs linux.uidMappings and linux.gidMappings",
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(Bundle { dir, spec, rootfs })
    }
}

/// The default spec `rkt spec` writes: oci-spec's (runc's) default, without a terminal (so
/// that `rkt run` works without a console socket).
pub fn default_spec() -> Spec {
    let mut spec = Spec::default();
    if let Some(p) = spec.process_mut() {
        p.set_terminal(Some(false));
    }
    spec
}
