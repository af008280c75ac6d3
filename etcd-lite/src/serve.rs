//! The client listeners: HTTP/1.1 and HTTP/2 (gRPC, the JSON gateway, /v2, health, metrics) on
//! one port, plain or TLS, each connection through
//! [`FixAuthority`](crate::authority::FixAuthority).

use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::authority::FixAuthority;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` (through `tls` when given) until `stop` changes, then lets open
/// connections finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let builder = Builder::new(TokioExecutor::new());
    let mut conns = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a client connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        while conns.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let (app, builder, stop) = (app.clone(), builder.clone(), stop.clone());
        match tls.clone() {
            None => conns.spawn(connection(stream, app, builder, stop, peer)),
            Some(acceptor) => conns.spawn(async move {
                let accept = acceptor.accept(stream).into_fallible();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
                    Ok(Ok(s)) => {
                        // A verified client certificate's CN names the connection's user.
                        let cn = s
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| crate::tls::common_name(c));
                        let app = match cn {
                            Some(cn) => app.layer(axum::Extension(crate::tls::ClientCn(cn))),
                            None => app,
                        };
                        connection(s, app, builder, stop, peer).await
                    }
                    Ok(Err((e, io))) => {
                        tracing::info!(%peer, error = %e, "TLS handshake failed");
                        tls_util::linger(io).await;
                    }
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            }),
        };
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
    Ok(())
}

async fn connection<I>(
    io: I,
    app: axum::Router,
    builder: Builder<TokioExecutor>,
    mut stop: watch::Receiver<bool>,
    peer: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder.serve_connection_with_upgrades(
        TokioIo::new(FixAuthority::new(io)),
        TowerToHyperService::new(app),
    );
    tokio::pin!(conn);
    let res = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = res {
        tracing::debug!(%peer, error = %e, "client connection ended");
    }
}
