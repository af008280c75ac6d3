//! The runtime's errors; messages are what the CLI prints.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("invalid container id {0:?}: use letters, digits, '_', '+', '-' and '.'")]
    InvalidId(String),
    #[error("container with id {0} already exists")]
    Exists(String),
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid bundle config {path}: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    #[error("unsupported by rkt: {0}")]
    Unsupported(String),
    #[error("invalid mount option {option:?} for {destination}")]
    BadMountOption { destination: String, option: String },
    #[error("container {id} is {status}, {wanted}")]
    WrongState {
        id: String,
        status: String,
        wanted: &'static str,
    },
    #[error("{what}: {source}")]
    Sys { what: String, source: nix::Error },
    #[error("cannot write {value:?} to {path}: {source}")]
    Cgroup {
        path: PathBuf,
        value: String,
        source: std::io::Error,
    },
    #[error("seccomp: {0}")]
    Seccomp(String),
    #[error("hook {path} failed: {reason}")]
    Hook { path: PathBuf, reason: String },
    #[error("container init failed: {0}")]
    Init(String),
    #[error("{0}")]
    Image(String),
}

impl RuntimeError {
    pub fn sys(what: impl Into<String>, source: nix::Error) -> Self {
        RuntimeError::Sys {
            what: what.into(),
            source,
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            path: path.into(),
            source,
        }
    }
}

/// For `map_err`: a failed system call, with what it was for.
pub fn failed(what: impl Into<String>) -> impl FnOnce(nix::Error) -> RuntimeError {
    let what = what.into();
    move |e| RuntimeError::sys(what, e)
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
