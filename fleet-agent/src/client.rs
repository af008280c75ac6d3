//! A small HTTP/1.1 client for fleet's API over a unix socket, TCP or TLS (what `fleetctl` and
//! fleetd's status/journal forwarding use).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Where the fleet API is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `unix:///var/run/fleet.sock`.
    Unix(PathBuf),
    /// `http://host:port`.
    Tcp(String),
    /// `https://host:port`.
    Https(String),
}

impl std::str::FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix://") {
            if p.is_empty() {
                return Err(format!("invalid endpoint {s:?}: no socket path"));
            }
            Ok(Endpoint::Unix(PathBuf::from(p)))
        } else if let Some((scheme, hp)) = s
            .strip_prefix("http://")
            .map(|hp| ("http", hp))
            .or_else(|| s.strip_prefix("https://").map(|hp| ("https", hp)))
        {
            let hp = hp.trim_end_matches('/');
            if hp.is_empty() || hp.contains('/') {
                return Err(format!(
                    "invalid endpoint {s:?}: expected {scheme}://host:port"
                ));
            }
            let hp = if hp
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            {
                hp.to_string()
            } else {
                format!("{hp}:{}", if scheme == "http" { 80 } else { 443 })
            };
            Ok(if scheme == "http" {
                Endpoint::Tcp(hp)
            } else {
                Endpoint::Https(hp)
            })
        } else if s.starts_with('/') {
            Ok(Endpoint::Unix(PathBuf::from(s)))
        } else {
            Err(format!(
                "invalid endpoint {s:?}: expected unix:///path/to/fleet.sock, http://host:port or https://host:port"
            ))
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp(hp) => write!(f, "http://{hp}"),
            Endpoint::Https(hp) => write!(f, "https://{hp}"),
        }
    }
}

/// A failed request (not an HTTP error status: those are returned).
#[derive(Debug, thiserror::Error)]
#[error("{endpoint}: {msg}")]
pub struct Error {
    endpoint: String,
    msg: String,
}

/// An HTTP response: status and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Endpoint {
    /// Sends one request. `timeout` bounds connecting and the whole exchange.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Response, Error> {
        self.request_with(None, method, path, body, timeout).await
    }

    /// [`Endpoint::request`], with the TLS client config an https:// endpoint needs
    /// ([`crate::tls::client_config`]).
    pub async fn request_with(
        &self,
        tls: Option<&Arc<rustls::ClientConfig>>,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Response, Error> {
        let err = |msg: String| Error {
            endpoint: self.to_string(),
            msg,
        };
        let fut = async {
            let host = match self {
                Endpoint::Unix(_) => "localhost".to_string(),
                Endpoint::Tcp(hp) | Endpoint::Https(hp) => hp.clone(),
            };
            let req = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header("host", host)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| err(e.to_string()))?;
            let resp = match self {
                Endpoint::Unix(p) => {
                    let s = tokio::net::UnixStream::connect(p)
                        .await
                        .map_err(|e| err(e.to_string()))?;
                    send(TokioIo::new(s), req).await
                }
                Endpoint::Tcp(hp) => {
                    let s = tokio::net::TcpStream::connect(hp)
                        .await
                        .map_err(|e| err(e.to_string()))?;
                    send(TokioIo::new(s), req).await
                }
                Endpoint::Https(hp) => {
                    let tls = tls.ok_or_else(|| {
                        err("an https:// endpoint needs the CA that signed its certificate (--ca-file)".into())
                    })?;
                    let host = hp.rsplit_once(':').map_or(hp.as_str(), |(h, _)| h);
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    let name = rustls::pki_types::ServerName::try_from(host.to_string())
                        .map_err(|e| err(format!("{host:?}: {e}")))?;
                    let s = tokio::net::TcpStream::connect(hp)
                        .await
                        .map_err(|e| err(e.to_string()))?;
                    let s = tokio_rustls::TlsConnector::from(tls.clone())
                        .connect(name, s)
                        .await
                        .map_err(|e| err(format!("TLS: {e}")))?;
                    send(TokioIo::new(s), req).await
                }
            };
            resp.map_err(err)
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(err(format!("no answer in {} s", timeout.as_secs()))),
        }
    }
}

/// Sends one request through a program whose stdin and stdout are the connection: fleetctl's
/// `--tunnel`, `ssh ... HOST sudo -n fleetctl tunnel-stdio` to the node's unix socket. `argv`
/// is the program and its arguments; `timeout` bounds the whole exchange.
pub async fn request_via(
    argv: &[String],
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Response, Error> {
    let err = |msg: String| Error {
        endpoint: format!("tunnel ({})", argv.join(" ")),
        msg,
    };
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| err("no tunnel command".into()))?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| err(format!("starting {program}: {e}")))?;
    let (Some(stdin), Some(stdout), Some(mut stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(err("no pipes to the tunnel".into()));
    };
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| err(e.to_string()))?;
    let io = tokio::io::join(stdout, stdin);
    match tokio::time::timeout(timeout, send(TokioIo::new(io), req)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => {
            // What ssh said (a refused key, an unknown host) says more than the broken pipe.
            let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
            let mut said = String::new();
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut said),
            )
            .await;
            let said = said.trim();
            Err(err(if said.is_empty() {
                e
            } else {
                format!("{e}: {said}")
            }))
        }
        Err(_) => Err(err(format!("no answer in {} s", timeout.as_secs()))),
    }
}

async fn send<T>(io: T, req: hyper::Request<Full<Bytes>>) -> Result<Response, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Response {
        status,
        body: body.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            "unix:///var/run/fleet.sock".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("/var/run/fleet.sock".into())
        );
        assert_eq!(
            "http://10.0.0.1:49153/".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp("10.0.0.1:49153".into())
        );
        assert_eq!(
            "https://node1:49153".parse::<Endpoint>().unwrap(),
            Endpoint::Https("node1:49153".into())
        );
        assert_eq!(
            "https://node1".parse::<Endpoint>().unwrap(),
            Endpoint::Https("node1:443".into())
        );
        assert!("ftp://x".parse::<Endpoint>().is_err());
        assert!("unix://".parse::<Endpoint>().is_err());
        assert!("http://a/b".parse::<Endpoint>().is_err());
    }
}
