//! The HTTP side for curl: /health, /version, /metrics, /v2/members, the v3 JSON gateway
//! (grpc-gateway conventions: snake_case names, int64 as strings, bytes as base64) and, in
//! [`crate::http_v2`], the v2 keys API. gRPC shares the port: requests are routed by path.

use std::future::Future;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use etcd_api::etcdserverpb::*;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::EtcdError;
use crate::grpc::Services;
use crate::server::{EtcdServer, API_VERSION};

type Srv = State<Arc<EtcdServer>>;

/// JSON with an HTTP status.
pub fn json(status: u16, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response()
}

/// A grpc-gateway error body: `{"error": msg, "code": grpc code, "message": msg}`.
fn gw_error(code: tonic::Code, message: &str) -> Response {
    let body = serde_json::json!({"error": message, "code": code as i32, "message": message});
    json(crate::error::grpc_code_to_http(code), &body)
}

impl IntoResponse for EtcdError {
    fn into_response(self) -> Response {
        gw_error(self.code(), &self.to_string())
    }
}

#[allow(clippy::result_large_err)] // an early-return response, built once per bad request
fn parse<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, Response> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        gw_error(
            tonic::Code::InvalidArgument,
            &format!("invalid request body: {e}"),
        )
    })
}

/// Parses a JSON request, runs `f` and answers in the gateway's JSON; a learner refuses what
/// [`EtcdServer::admit`] says (the gRPC services' rule).
async fn gateway<Req, Resp, F, Fut>(s: &EtcdServer, body: Bytes, f: F) -> Response
where
    Req: DeserializeOwned + Default + 'static,
    Resp: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<Resp, EtcdError>>,
{
    match parse::<Req>(&body) {
        Ok(req) => match s.admit(&req) {
            Err(e) => e.into_response(),
            Ok(()) => match f(req).await {
                Ok(resp) => json(200, &resp),
                Err(e) => e.into_response(),
            },
        },
        Err(r) => r,
    }
}

async fn kv_range(State(s): Srv, body: Bytes) -> Response {
    gateway(&s.clone(), body, |r: RangeRequest| async move {
        s.range(&r).await
    })
    .await
}
async fn kv_put(State(s): Srv, body: Bytes) -> Response {
    gateway(
        &s.clone(),
        body,
        |r: PutRequest| async move { s.put(r).await },
    )
    .await
}
async fn kv_delete(State(s): Srv, body: Bytes) -> Response {
    gateway(&s.clone(), body, |r: DeleteRangeRequest| async move {
        s.delete_range(r).await
    })
    .await
}
async fn kv_txn(State(s): Srv, body: Bytes) -> Response {
    gateway(
        &s.clone(),
        body,
        |r: TxnRequest| async move { s.txn(r).await },
    )
    .await
}
async fn kv_compact(State(s): Srv, body: Bytes) -> Response {
    gateway(&s.clone(), body, |r: CompactionRequest| async move {
        let rev = s.compact(r.revision).await?;
        Ok(CompactionResponse {
            header: s.header(rev),
        })
    })
    .await
}
async fn lease_grant(State(s): Srv, body: Bytes) -> Response {
    gateway(&s.clone(), body, |r: LeaseGrantRequest| async move {
        let (id, ttl, rev) = s.lease_grant(r.ttl, r.id).await?;
        Ok(LeaseGrantResponse {
            header: s.header(rev),
            id,
            ttl,
            error: String::new(),
        })
    })
    .await
}
async fn lease_revoke(State(s): Srv, body: Bytes) -> Response {
    gateway(&s.clone(), body, |r: LeaseRevokeRequest| async move {
        let rev = s.lease_revoke(r.id).await?;
        Ok(LeaseRevokeResponse {
            header: s.header(rev),
        })
    })
    .await
}
async fn lease_ttl(State(s): Srv, body: Bytes) -> Response {
    gateway(&s.clone(), body, |r: LeaseTimeToLiveRequest| async move {
        let (ttl, granted_ttl, keys) = s.lease_ttl(r.id, r.keys)?;
        Ok(LeaseTimeToLiveResponse {
            header: s.header(s.store.published()),
            id: r.id,
            ttl,
            granted_ttl,
            keys,
        })
    })
    .await
}
async fn lease_leases(State(s): Srv, body: Bytes) -> Response {
    gateway(&s.clone(), body, |_: LeaseLeasesRequest| async move {
        Ok(LeaseLeasesResponse {
            header: s.header(s.store.published()),
            leases: s
                .lease_ids()
                .into_iter()
                .map(|id| LeaseStatus { id })
                .collect(),
        })
    })
    .await
}
async fn lease_keepalive(State(s): Srv, body: Bytes) -> Response {
    gateway(&s.clone(), body, |r: LeaseKeepAliveRequest| async move {
        let ttl = s.lease_keepalive(r.id).await?;
        let resp = LeaseKeepAliveResponse {
            header: s.header(s.store.published()),
            id: r.id,
            ttl,
        };
        Ok(serde_json::json!({ "result": resp }))
    })
    .await
}
async fn member_list(State(s): Srv, body: Bytes) -> Response {
    gateway(&s.clone(), body, |_: MemberListRequest| async move {
        Ok(MemberListResponse {
            header: s.header(s.store.published()),
            members: s.members().await?,
        })
    })
    .await
}
async fn maint_status(State(s): Srv, body: Bytes) -> Response {
    gateway(&s.clone(), body, |_: StatusRequest| async move {
        Services(s).status().await
    })
    .await
}

/// POST /v3/watch: the body holds one or more WatchRequest objects; the answer is a stream of
/// `{"result": WatchResponse}` lines until the client hangs up.
async fn watch(State(s): Srv, body: Bytes) -> Response {
    if let Err(e) = s.refuse_on_learner() {
        return e.into_response();
    }
    let mut reqs = Vec::new();
    for item in serde_json::Deserializer::from_slice(&body).into_iter::<WatchRequest>() {
        match item {
            Ok(r) => reqs.push(Ok(r)),
            Err(e) => {
                return gw_error(
                    tonic::Code::InvalidArgument,
                    &format!("invalid request body: {e}"),
                )
            }
        }
    }
    let (tx, rx) = mpsc::channel(256);
    // The request stream never ends by itself: the watch lives until the client disconnects.
    let requests = futures::stream::iter(reqs).chain(futures::stream::pending());
    tokio::spawn(crate::watch::serve(s, Box::pin(requests), tx));
    let lines = ReceiverStream::new(rx).map(|r| {
        let v = match r {
            Ok(resp) => serde_json::json!({ "result": resp }),
            Err(st) => {
                serde_json::json!({"error": {"code": st.code() as i32, "message": st.message()}})
            }
        };
        let mut line = serde_json::to_vec(&v).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(line))
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(lines),
    )
        .into_response()
}

async fn health(State(s): Srv) -> Response {
    // Healthy when the store answers a read (etcd checks a quorum read of the key "health").
    let ok = s
        .range(&RangeRequest {
            key: b"health".to_vec(),
            ..Default::default()
        })
        .await
        .is_ok();
    let status = if ok { 200 } else { 503 };
    json(
        status,
        &serde_json::json!({"health": if ok {"true"} else {"false"}, "reason": ""}),
    )
}

async fn version() -> Response {
    json(
        200,
        &serde_json::json!({"etcdserver": API_VERSION, "etcdcluster": API_VERSION}),
    )
}

async fn metrics(State(s): Srv) -> Response {
    {
        let view = s.store.read();
        s.metrics.current_revision.set(view.rev);
        s.metrics.compacted_revision.set(view.compacted());
    }
    s.metrics.db_size.set(s.store.size_on_disk());
    s.metrics.lease_count.set(s.leases.lock().len() as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

async fn v2_members(State(s): Srv) -> Response {
    match s.members().await {
        Ok(ms) => {
            let list: Vec<_> = ms
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "id": format!("{:x}", m.id),
                        "name": m.name,
                        "peerURLs": m.peer_ur_ls,
                        "clientURLs": m.client_ur_ls,
                    })
                })
                .collect();
            json(200, &serde_json::json!({ "members": list }))
        }
        Err(e) => json(503, &serde_json::json!({ "message": e.to_string() })),
    }
}

/// Every HTTP route plus the gRPC services, on one router.
pub fn router(server: Arc<EtcdServer>) -> Router {
    let limit = server.limits.max_request_bytes * 2 + crate::server::GRPC_OVERHEAD_BYTES;
    let mut r = Router::new()
        .route("/health", get(health))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .route("/v2/members", get(v2_members));
    for prefix in ["/v3", "/v3beta"] {
        r = r
            .route(&format!("{prefix}/kv/range"), post(kv_range))
            .route(&format!("{prefix}/kv/put"), post(kv_put))
            .route(&format!("{prefix}/kv/deleterange"), post(kv_delete))
            .route(&format!("{prefix}/kv/txn"), post(kv_txn))
            .route(&format!("{prefix}/kv/compaction"), post(kv_compact))
            .route(&format!("{prefix}/watch"), post(watch))
            .route(&format!("{prefix}/lease/grant"), post(lease_grant))
            .route(&format!("{prefix}/lease/revoke"), post(lease_revoke))
            .route(&format!("{prefix}/kv/lease/revoke"), post(lease_revoke))
            .route(&format!("{prefix}/lease/keepalive"), post(lease_keepalive))
            .route(&format!("{prefix}/lease/timetolive"), post(lease_ttl))
            .route(&format!("{prefix}/kv/lease/timetolive"), post(lease_ttl))
            .route(&format!("{prefix}/lease/leases"), post(lease_leases))
            .route(&format!("{prefix}/kv/lease/leases"), post(lease_leases))
            .route(&format!("{prefix}/cluster/member/list"), post(member_list))
            .route(&format!("{prefix}/maintenance/status"), post(maint_status));
    }
    let r = crate::http_v2::routes(r);
    let grpc = Services::routes(server.clone())
        .into_axum_router()
        .layer(axum::middleware::from_fn(crate::deadline::grpc_deadline));
    r.layer(DefaultBodyLimit::max(limit))
        .with_state(server)
        .merge(grpc)
}
