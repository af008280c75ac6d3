//! Per-container state directories under the runtime root (`--root`, default /run/rkt): the
//! state JSON runc writes, plus the `exec.fifo` that holds a created container until `start`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cgroup::Cgroup;
use crate::error::{Result, RuntimeError};

/// Default runtime root.
pub const DEFAULT_ROOT: &str = "/run/rkt";
/// OCI runtime-spec version reported in state.
pub const OCI_VERSION: &str = "1.0.2";

/// What is saved about a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    pub id: String,
    pub pid: i32,
    /// Start time of `pid` (field 22 of /proc/PID/stat), to tell it from a reused pid.
    pub pid_start: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    #[serde(default)]
    pub annotations: std::collections::HashMap<String, String>,
    /// The container's cgroup, relative to each hierarchy's root.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
}

/// The lifecycle status (OCI: creating, created, running, stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// The state document `rkt state` prints (runc's shape: OCI fields plus rootfs and created).
#[derive(Debug, Serialize)]
pub struct StateJson<'a> {
    #[serde(rename = "ociVersion")]
    pub oci_version: &'static str,
    pub id: &'a str,
    pub pid: i32,
    pub status: String,
    pub bundle: &'a Path,
    pub rootfs: &'a Path,
    pub created: &'a str,
    pub annotations: &'a std::collections::HashMap<String, String>,
}

/// Checks an id the way runc does.
pub fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidId(id.to_string()))
    }
}

/// The runtime root and the containers in it.
pub struct Root {
    pub dir: PathBuf,
}

impl Root {
    pub fn new(dir: &Path) -> Self {
        Root {
            dir: dir.to_path_buf(),
        }
    }

    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    pub fn fifo(&self, id: &str) -> PathBuf {
        self.container_dir(id).join("exec.fifo")
    }

    pub fn load(&self, id: &str) -> Result<Saved> {
        check_id(id)?;
        let p = self.container_dir(id).join("state.json");
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RuntimeError::NotFound(id.to_string()))
            }
            Err(e) => return Err(RuntimeError::io(&p, e)),
        };
        serde_json::from_str(&text).map_err(|e| RuntimeError::BadConfig {
            path: p,
            reason: e.to_string(),
        })
    }

    /// Writes the state atomically (temp file + rename).
    pub fn save(&self, s: &Saved) -> Result<()> {
        let dir = self.container_dir(&s.id);
        let tmp = dir.join("state.json.tmp");
        let text = serde_json::to_vec(s).map_err(|e| RuntimeError::Init(e.to_string()))?;
        std::fs::write(&tmp, text).map_err(|e| RuntimeError::io(&tmp, e))?;
        std::fs::rename(&tmp, dir.join("state.json")).map_err(|e| RuntimeError::io(&dir, e))
    }

    /// Ids of every container with a state file.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().join("state.json").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        ids
    }

    /// The status now, from the process, the fifo and the freezer.
    pub fn status(&self, s: &Saved) -> Status {
        if !process_alive(s.pid, s.pid_start) {
            Status::Stopped
        } else if self.fifo(&s.id).exists() {
            Status::Created
        } else if self.cgroup(s).is_some_and(|c| c.frozen()) {
            Status::Paused
        } else {
            Status::Running
        }
    }

    /// The container's cgroup, if it has one and this host has cgroups.
    pub fn cgroup(&self, s: &Saved) -> Option<Cgroup> {
        let rel = s.cgroup.clone()?;
        Some(Cgroup::new(Cgroup::detect_layout().ok()?, rel))
    }
}

/// Field 22 (start time) and the state letter of /proc/PID/stat.
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: parse after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Whether `pid` is the same live (not zombie) process that was recorded.
pub fn process_alive(pid: i32, start: u64) -> bool {
    pid > 0
        && matches!(proc_stat(pid), Some((state, st)) if state != 'Z' && state != 'X' && st == start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_runc_rules() {
        assert!(check_id("web-1.a_b+c").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "é"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn own_process_is_alive_and_parsed() {
        let me = std::process::id() as i32;
        let (state, start) = proc_stat(me).expect("own stat");
        assert_ne!(state, 'Z');
        assert!(process_alive(me, start));
        assert!(
            !process_alive(me, start + 1),
            "another start time is another process"
        );
    }
}
