//! TLS for fleet's TCP API (rustls with ring): fleetd serves it only to clients whose
//! certificate the cluster CA signed, and fleetctl (or a fleetd forwarding status/journal to
//! another machine) presents its certificate and checks the server's.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};
use tls_util::{certificates, private_key, roots};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A certificate, key or CA file that cannot be used, or a configuration rustls refuses.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

impl From<tls_util::FileError> for TlsError {
    fn from(e: tls_util::FileError) -> Self {
        TlsError(e.to_string())
    }
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError(format!("{}: {reason}", path.display()))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The API's server side: this machine's certificate, and a client certificate signed by `ca`
/// required of every client.
pub fn server_config(cert: &Path, key_file: &Path, ca: &Path) -> Result<ServerConfig, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
        .build()
        .map_err(|e| file_error(ca, e))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certificates(cert)?, private_key(key_file)?)
        .map_err(|e| {
            TlsError(format!(
                "{} and {}: {e}",
                cert.display(),
                key_file.display()
            ))
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// A client of https:// endpoints: servers must chain to `ca`; `cert` and `key` (both or
/// neither) are presented to servers that ask.
pub fn client_config(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key_file: Option<&Path>,
) -> Result<ClientConfig, TlsError> {
    let ca = ca.ok_or_else(|| {
        TlsError("an https:// endpoint needs the CA that signed its certificate (--ca-file)".into())
    })?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(e.to_string()))?
        .with_root_certificates(roots(ca)?);
    let mut cfg = match (cert, key_file) {
        (Some(c), Some(k)) => builder
            .with_client_auth_cert(certificates(c)?, private_key(k)?)
            .map_err(|e| TlsError(format!("{} and {}: {e}", c.display(), k.display())))?,
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(TlsError(
                "a client certificate needs both --cert-file and --key-file".into(),
            ))
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Serves `app` over TLS on `listener` until `stop` changes, then lets open connections finish.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    config: ServerConfig,
    mut stop: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let builder = Builder::new(TokioExecutor::new());
    let mut conns = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an API connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        while conns.try_join_next().is_some() {}
        let (acceptor, app, builder, mut stop) =
            (acceptor.clone(), app.clone(), builder.clone(), stop.clone());
        conns.spawn(async move {
            let accept = acceptor.accept(stream).into_fallible();
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                Ok(Ok(s)) => s,
                Ok(Err((e, io))) => {
                    tracing::info!(%peer, error = %e, "API TLS handshake failed");
                    tls_util::linger(io).await;
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "API TLS handshake timed out");
                    return;
                }
            };
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(app));
            tokio::pin!(conn);
            let res = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "API connection ended");
            }
        });
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}
