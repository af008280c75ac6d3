//! TLS from etcd's flags (rustls with ring): for the client listeners (`--cert-file`,
//! `--key-file`, `--client-cert-auth` with `--trusted-ca-file`) and between members
//! (`--peer-cert-file`, `--peer-key-file`, `--peer-trusted-ca-file`, `--peer-client-cert-auth`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::ServerConfig;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::{ClientTls, PeerTls};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("TLS: {0}")]
    Config(String),
}

fn file_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl From<tls_util::FileError> for TlsError {
    fn from(e: tls_util::FileError) -> Self {
        TlsError::File {
            path: e.path,
            reason: e.reason,
        }
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    Ok(tls_util::certificates(path)?)
}

/// The common name (CN) of a client's verified certificate: with auth enabled it names the
/// user a request without a token is made as (etcd's rule for `--client-cert-auth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCn(pub String);

/// The CN of the first certificate of a chain, if it has one.
pub fn common_name(cert: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// The server side of the client listeners, offering HTTP/2 (gRPC) and HTTP/1.1 by ALPN.
pub fn server_config(t: &ClientTls) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &t.client_ca_file {
        Some(ca) => {
            let roots = tls_util::roots(ca)?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| file_error(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let key = tls_util::private_key(&t.key_file)?;
    let pair_error = |e: &dyn std::fmt::Display| {
        TlsError::Config(format!(
            "{} and {}: {e}",
            t.cert_file.display(),
            t.key_file.display()
        ))
    };
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| pair_error(&e))?;
    let certified = CertifiedKey::new(certificates(&t.cert_file)?, key);
    if let Err(e) = certified.keys_match() {
        // webpki parses X.509 v3 only; etcd (Go) serves the v1 certificates older openssl
        // recipes make, so a v1 certificate is checked against its key here instead.
        match v1_certificate_matches(&certified) {
            Some(true) => tracing::warn!(
                cert = %t.cert_file.display(),
                "serving an X.509 v1 certificate: clients that verify with rustls or webpki \
                 refuse it; regenerate it as v3 (openssl x509 -req ... -extfile with \
                 subjectAltName)"
            ),
            Some(false) => return Err(pair_error(&"the certificate is not the key's")),
            None => return Err(pair_error(&e)),
        }
    }
    let mut cfg = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// For an X.509 v1 end-entity certificate: whether it holds the key's public key. `None` for
/// anything else (webpki's own error then stands).
fn v1_certificate_matches(certified: &CertifiedKey) -> Option<bool> {
    let der = certified.end_entity_cert().ok()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(der).ok()?;
    if parsed.version() != x509_parser::x509::X509Version::V1 {
        return None;
    }
    let spki = certified.key.public_key()?;
    Some(spki.as_ref() == parsed.tbs_certificate.subject_pki.raw)
}

/// The peer listener's and the peer connections' TLS: this member's certificate on both sides,
/// peers checked against the trusted CAs. The files are checked here, so that a bad one is
/// named at start-up.
pub fn peer_configs(t: &PeerTls) -> Result<(ServerTlsConfig, ClientTlsConfig), TlsError> {
    certificates(&t.cert_file)?;
    certificates(&t.ca_file)?;
    tls_util::private_key(&t.key_file)?;
    let read = |p: &Path| std::fs::read(p).map_err(|e| file_error(p, e));
    let identity = Identity::from_pem(read(&t.cert_file)?, read(&t.key_file)?);
    let ca = Certificate::from_pem(read(&t.ca_file)?);
    let mut server = ServerTlsConfig::new().identity(identity.clone());
    if t.client_cert_auth {
        server = server.client_ca_root(ca.clone());
    }
    let client = ClientTlsConfig::new().ca_certificate(ca).identity(identity);
    Ok((server, client))
}
