//! The image library's errors; messages are what `rkt` prints.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {reason}")]
    BadReference { reference: String, reason: String },
    #[error("image {0} is not in the store (rkt fetch it first, or see rkt image list)")]
    NotFound(String),
    #[error("{0} matches more than one image; use more of the ID or the full name")]
    Ambiguous(String),
    #[error("blob {digest} is corrupt: its content hashes to {actual}")]
    Corrupt { digest: String, actual: String },
    #[error("blob {0} is missing from the store")]
    MissingBlob(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {reason}")]
    BadImage { what: String, reason: String },
    #[error("unsafe layer {layer}: {reason}")]
    UnsafeLayer { layer: String, reason: String },
    #[error("{0}")]
    Platform(String),
    #[error("registry {registry}: {reason}")]
    Registry { registry: String, reason: String },
    #[error("image {image} is used by pod {pod}; remove the pod first")]
    InUse { image: String, pod: String },
}

impl ImageError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ImageError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn bad(what: impl Into<String>, reason: impl Into<String>) -> Self {
        ImageError::BadImage {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;
