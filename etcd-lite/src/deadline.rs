//! gRPC deadlines. A client sends how long it will wait for a call as the `grpc-timeout`
//! header (etcdctl's `--command-timeout`, a Go client's context deadline, tonic's
//! `Request::set_timeout`). The member works on the call no longer than that: past the
//! deadline the handler is dropped and the client gets `DeadlineExceeded` ("context deadline
//! exceeded", as from etcd), and a proposal still waiting for a leader is never proposed (the
//! raft loop drops requests whose caller is gone). A write already proposed may still commit,
//! as with etcd. The deadline covers the call until its response starts: a stream (Watch,
//! LeaseKeepAlive) is not cut off once it runs.

use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

const HEADER: &str = "grpc-timeout";
/// Most of a refused call's request read before answering (larger ones are cut off).
const DRAIN_LIMIT: usize = 4 << 20;
/// Longest wait for a refused call's request to end.
const DRAIN_WAIT: Duration = Duration::from_millis(500);

/// Parses a `grpc-timeout` value: at most 8 ASCII digits and a unit (`H`ours, `M`inutes,
/// `S`econds, `m`illi-, `u` micro-, `n`anoseconds), as the gRPC HTTP/2 protocol defines it.
pub fn parse_timeout(v: &str) -> Option<Duration> {
    let unit = v.chars().last()?;
    let digits = &v[..v.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(n * 3600),
        'M' => Duration::from_secs(n * 60),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

fn status(s: tonic::Status) -> Response {
    s.into_http().map(axum::body::Body::new)
}

/// Middleware for the gRPC routes: runs the call within its `grpc-timeout`, if it has one.
pub async fn grpc_deadline(req: Request, next: Next) -> Response {
    let Some(value) = req.headers().get(HEADER) else {
        return next.run(req).await;
    };
    let Some(timeout) = value.to_str().ok().and_then(parse_timeout) else {
        // grpc-go answers a malformed value the same way.
        let shown = String::from_utf8_lossy(value.as_bytes()).into_owned();
        // Read the request first (bounded): answering while the client still sends resets the
        // stream under it, and some clients (curl) then report a framing error, not the status.
        // A stream (Watch) does not end its request, so the wait is short.
        let drain = axum::body::to_bytes(req.into_body(), DRAIN_LIMIT);
        let _ = tokio::time::timeout(DRAIN_WAIT, drain).await;
        return status(tonic::Status::internal(format!(
            "malformed grpc-timeout: {shown:?}"
        )));
    };
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            tracing::debug!(?timeout, "call dropped at its client's deadline");
            status(tonic::Status::deadline_exceeded(
                "context deadline exceeded",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_as_the_grpc_protocol_defines_them() {
        assert_eq!(parse_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_timeout("4999m"), Some(Duration::from_millis(4999)));
        assert_eq!(parse_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_timeout("10u"), Some(Duration::from_micros(10)));
        assert_eq!(
            parse_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in [
            "",
            "S",
            "5",
            "5s",
            "123456789S",
            "-1S",
            "1.5S",
            "5Sé",
            "+5S",
            " 5S",
        ] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
    }
}
