//! What etcd-lite's and fleetd's TLS listeners share: certificates, keys and CA files read into
//! rustls types with errors that name the file, and the close after a refused handshake.

use std::path::Path;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

/// A file that cannot be used, named.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct FileError {
    pub path: String,
    pub reason: String,
}

/// A [`FileError`] for `path`.
pub fn file_error(path: &Path, reason: impl ToString) -> FileError {
    FileError {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Every PEM certificate in `path` (at least one).
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no PEM certificate in it"));
    }
    Ok(certs)
}

/// The CA certificates in `path` as trust roots.
pub fn roots(path: &Path) -> Result<RootCertStore, FileError> {
    let mut roots = RootCertStore::empty();
    for c in certificates(path)? {
        roots.add(c).map_err(|e| file_error(path, e))?;
    }
    Ok(roots)
}

/// The PEM private key in `path`.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, FileError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

/// After a failed handshake (an expired or unknown client certificate) the alert saying why has
/// been sent: close our side and read what the client sent meanwhile (in TLS 1.3 it may have
/// sent its request already), for at most a second, so that the close does not become a reset
/// that destroys the alert before the client reads it.
pub async fn linger(mut io: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let _ = io.shutdown().await;
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
