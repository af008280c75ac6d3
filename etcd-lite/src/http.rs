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
use etcd_api::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderRequest, ProclaimRequest, ProclaimResponse,
    ResignRequest, ResignResponse,
};
use etcd_api::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::EtcdError;
use crate::grpc::Services;
use crate::server::{Caller, EtcdServer, API_VERSION};

type Srv = State<Arc<EtcdServer>>;

/// Who makes a gateway request: the token in its `Authorization` header (what
/// `/v3/auth/authenticate` answered) or its client certificate's CN; an error when auth is on
/// and neither names a user.
pub struct Who(Result<Caller, EtcdError>);

#[axum::async_trait]
impl axum::extract::FromRequestParts<Arc<EtcdServer>> for Who {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        s: &Arc<EtcdServer>,
    ) -> Result<Self, Self::Rejection> {
        let token = crate::grpc::token_of(&parts.headers);
        Ok(Who(crate::grpc::caller_of(s, token, &parts.extensions)))
    }
}

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

/// Parses a JSON request, runs `f` for its caller and answers in the gateway's JSON; a learner
/// refuses what [`EtcdServer::admit`] says (the gRPC services' rule), and with auth on a
/// request that names no user is refused as gRPC refuses it.
async fn gateway<Req, Resp, F, Fut>(s: &EtcdServer, who: Who, body: Bytes, f: F) -> Response
where
    Req: DeserializeOwned + Default + 'static,
    Resp: Serialize,
    F: FnOnce(Req, Caller) -> Fut,
    Fut: Future<Output = Result<Resp, EtcdError>>,
{
    let who = match who.0 {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    match parse::<Req>(&body) {
        Ok(req) => match s.admit(&req) {
            Err(e) => e.into_response(),
            Ok(()) => match f(req, who).await {
                Ok(resp) => json(200, &resp),
                Err(e) => e.into_response(),
            },
        },
        Err(r) => r,
    }
}

/// [`gateway`] for requests anyone may make (no user needed even with auth on).
async fn open_gateway<Req, Resp, F, Fut>(s: &EtcdServer, body: Bytes, f: F) -> Response
where
    Req: DeserializeOwned + Default + 'static,
    Resp: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<Resp, EtcdError>>,
{
    gateway(s, Who(Ok(None)), body, |r, _| f(r)).await
}

/// Answers of up to this many keys are sent whole; longer ones are streamed.
const STREAM_FROM_KEYS: usize = 1000;
/// Keys per streamed piece of a long answer.
const STREAM_KEYS: usize = 256;

/// A Range in the gateway's JSON. A long answer is streamed: its keys are chosen at one
/// revision, then read and written a few hundred at a time, so a read of everything holds
/// only a piece of its answer. The bytes are those of the whole answer. Should a compaction
/// drop a revision the stream has not reached, the answer ends early with an error (the
/// client sees a broken transfer, never a short answer that looks whole).
async fn kv_range(State(s): Srv, who: Who, body: Bytes) -> Response {
    let who = match who.0 {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    let req = match parse::<RangeRequest>(&body) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if let Err(e) = s.admit(&req) {
        return e.into_response();
    }
    let (plan, header) = match s.range_plan(&req, &who).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if plan.revs.len() <= STREAM_FROM_KEYS {
        let kvs = plan
            .revs
            .iter()
            .map(|rev| range_kv(&s, *rev, plan.keys_only));
        return match kvs.collect::<Result<Vec<_>, _>>() {
            Ok(kvs) => json(
                200,
                &RangeResponse {
                    header: Some(header),
                    kvs,
                    more: plan.more,
                    count: plan.count,
                },
            ),
            Err(e) => e.into_response(),
        };
    }
    let (head, tail) = range_json_ends(&header, plan.more, plan.count);
    let (keys_only, revs) = (plan.keys_only, Arc::new(plan.revs));
    let pieces = futures::stream::iter((0..revs.len()).step_by(STREAM_KEYS)).map(move |at| {
        let mut piece = Vec::new();
        for (i, rev) in revs[at..(at + STREAM_KEYS).min(revs.len())]
            .iter()
            .enumerate()
        {
            let kv = range_kv(&s, *rev, keys_only).map_err(|e| {
                tracing::info!(error = %e, "a streamed range ended early");
                std::io::Error::other(e)
            })?;
            if at + i > 0 {
                piece.push(b',');
            }
            serde_json::to_writer(&mut piece, &kv).map_err(std::io::Error::other)?;
        }
        Ok::<_, std::io::Error>(Bytes::from(piece))
    });
    let stream = futures::stream::once(async move { Ok(head) })
        .chain(pieces)
        .chain(futures::stream::once(async move { Ok(tail) }));
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

fn range_kv(
    s: &EtcdServer,
    rev: crate::mvcc::Revision,
    keys_only: bool,
) -> Result<etcd_api::mvccpb::KeyValue, EtcdError> {
    let mut kv = s.store.kv_at(rev)?;
    if keys_only {
        kv.value.clear();
    }
    Ok(kv)
}

/// What a streamed Range answer in JSON starts and ends with, around its keys: the fields
/// pbjson writes for a `RangeResponse` with keys, in its order and form.
fn range_json_ends(header: &ResponseHeader, more: bool, count: i64) -> (Bytes, Bytes) {
    let mut head = br#"{"header":"#.to_vec();
    head.extend(serde_json::to_vec(header).unwrap_or_default());
    head.extend(br#","kvs":["#);
    let mut tail = b"]".to_vec();
    if more {
        tail.extend(br#","more":true"#);
    }
    if count != 0 {
        tail.extend(format!(r#","count":"{count}""#).bytes());
    }
    tail.push(b'}');
    (head.into(), tail.into())
}
async fn kv_put(State(s): Srv, who: Who, body: Bytes) -> Response {
    gateway(&s.clone(), who, body, |r: PutRequest, who| async move {
        s.put(r, &who).await
    })
    .await
}
async fn kv_delete(State(s): Srv, who: Who, body: Bytes) -> Response {
    gateway(
        &s.clone(),
        who,
        body,
        |r: DeleteRangeRequest, who| async move { s.delete_range(r, &who).await },
    )
    .await
}
async fn kv_txn(State(s): Srv, who: Who, body: Bytes) -> Response {
    gateway(&s.clone(), who, body, |r: TxnRequest, who| async move {
        s.txn(r, &who).await
    })
    .await
}
async fn kv_compact(State(s): Srv, who: Who, body: Bytes) -> Response {
    gateway(
        &s.clone(),
        who,
        body,
        |r: CompactionRequest, who| async move {
            s.may_admin(&who)?;
            let rev = s.compact(r.revision).await?;
            Ok(CompactionResponse {
                header: s.header(rev),
            })
        },
    )
    .await
}
async fn lease_grant(State(s): Srv, who: Who, body: Bytes) -> Response {
    gateway(
        &s.clone(),
        who,
        body,
        |r: LeaseGrantRequest, _| async move {
            let (id, ttl, rev) = s.lease_grant(r.ttl, r.id).await?;
            Ok(LeaseGrantResponse {
                header: s.header(rev),
                id,
                ttl,
                error: String::new(),
            })
        },
    )
    .await
}
async fn lease_revoke(State(s): Srv, who: Who, body: Bytes) -> Response {
    gateway(
        &s.clone(),
        who,
        body,
        |r: LeaseRevokeRequest, who| async move {
            let rev = s.lease_revoke(r.id, &who).await?;
            Ok(LeaseRevokeResponse {
                header: s.header(rev),
            })
        },
    )
    .await
}
async fn lease_ttl(State(s): Srv, who: Who, body: Bytes) -> Response {
    gateway(
        &s.clone(),
        who,
        body,
        |r: LeaseTimeToLiveRequest, who| async move {
            let (ttl, granted_ttl, keys) = s.lease_ttl(r.id, r.keys, &who)?;
            Ok(LeaseTimeToLiveResponse {
                header: s.header(s.store.published()),
                id: r.id,
                ttl,
                granted_ttl,
                keys,
            })
        },
    )
    .await
}
async fn lease_leases(State(s): Srv, who: Who, body: Bytes) -> Response {
    gateway(
        &s.clone(),
        who,
        body,
        |_: LeaseLeasesRequest, _| async move {
            Ok(LeaseLeasesResponse {
                header: s.header(s.store.published()),
                leases: s
                    .lease_ids()
                    .into_iter()
                    .map(|id| LeaseStatus { id })
                    .collect(),
            })
        },
    )
    .await
}
async fn lease_keepalive(State(s): Srv, who: Who, body: Bytes) -> Response {
    gateway(
        &s.clone(),
        who,
        body,
        |r: LeaseKeepAliveRequest, _| async move {
            let ttl = s.lease_keepalive(r.id).await?;
            let resp = LeaseKeepAliveResponse {
                header: s.header(s.store.published()),
                id: r.id,
                ttl,
            };
            Ok(serde_json::json!({ "result": resp }))
        },
    )
    .await
}
async fn member_list(State(s): Srv, body: Bytes) -> Response {
    open_gateway(&s.clone(), body, |_: MemberListRequest| async move {
        Ok(MemberListResponse {
            header: s.header(s.store.published()),
            members: s.members().await?,
        })
    })
    .await
}
async fn maint_status(State(s): Srv, body: Bytes) -> Response {
    open_gateway(&s.clone(), body, |_: StatusRequest| async move {
        Services(s).status().await
    })
    .await
}

async fn auth_enable(State(s): Srv, body: Bytes) -> Response {
    open_gateway(&s.clone(), body, |_: AuthEnableRequest| async move {
        s.auth_enable().await
    })
    .await
}
async fn auth_disable(State(s): Srv, who: Who, body: Bytes) -> Response {
    gateway(
        &s.clone(),
        who,
        body,
        |_: AuthDisableRequest, who| async move { s.auth_disable(&who).await },
    )
    .await
}
async fn auth_status(State(s): Srv, body: Bytes) -> Response {
    open_gateway(&s.clone(), body, |_: AuthStatusRequest| async move {
        Ok(s.auth_status())
    })
    .await
}
async fn authenticate(State(s): Srv, body: Bytes) -> Response {
    open_gateway(&s.clone(), body, |r: AuthenticateRequest| async move {
        s.authenticate(r).await
    })
    .await
}

/// A gateway route of the Auth service whose handler takes the caller and the request.
macro_rules! auth_route {
    ($name:ident, $req:ty, async $call:ident) => {
        async fn $name(State(s): Srv, who: Who, body: Bytes) -> Response {
            gateway(&s.clone(), who, body, |r: $req, who| async move {
                s.$call(&who, r).await
            })
            .await
        }
    };
    ($name:ident, $req:ty, $call:ident) => {
        async fn $name(State(s): Srv, who: Who, body: Bytes) -> Response {
            gateway(&s.clone(), who, body, |r: $req, who| async move {
                s.$call(&who, &r)
            })
            .await
        }
    };
}
auth_route!(user_add, AuthUserAddRequest, async user_add);
auth_route!(user_get, AuthUserGetRequest, user_get);
auth_route!(user_delete, AuthUserDeleteRequest, async user_delete);
auth_route!(user_changepw, AuthUserChangePasswordRequest, async user_change_password);
auth_route!(user_grant, AuthUserGrantRoleRequest, async user_grant_role);
auth_route!(user_revoke, AuthUserRevokeRoleRequest, async user_revoke_role);
auth_route!(role_add, AuthRoleAddRequest, async role_add);
auth_route!(role_get, AuthRoleGetRequest, role_get);
auth_route!(role_delete, AuthRoleDeleteRequest, async role_delete);
auth_route!(role_grant, AuthRoleGrantPermissionRequest, async role_grant_permission);
auth_route!(role_revoke, AuthRoleRevokePermissionRequest, async role_revoke_permission);
async fn user_list(State(s): Srv, who: Who, body: Bytes) -> Response {
    gateway(
        &s.clone(),
        who,
        body,
        |_: AuthUserListRequest, who| async move { s.user_list(&who) },
    )
    .await
}
async fn role_list(State(s): Srv, who: Who, body: Bytes) -> Response {
    gateway(
        &s.clone(),
        who,
        body,
        |_: AuthRoleListRequest, who| async move { s.role_list(&who) },
    )
    .await
}

async fn lock(State(s): Srv, who: Who, body: Bytes) -> Response {
    gateway(&s.clone(), who, body, |r: LockRequest, who| async move {
        let (header, key) = crate::concurrency::lock(&s, &who, &r.name, r.lease).await?;
        Ok(LockResponse {
            header: Some(header),
            key,
        })
    })
    .await
}
async fn unlock(State(s): Srv, who: Who, body: Bytes) -> Response {
    gateway(&s.clone(), who, body, |r: UnlockRequest, who| async move {
        let header = crate::concurrency::unlock(&s, &who, r.key).await?;
        Ok(UnlockResponse {
            header: Some(header),
        })
    })
    .await
}
async fn campaign(State(s): Srv, who: Who, body: Bytes) -> Response {
    gateway(
        &s.clone(),
        who,
        body,
        |r: CampaignRequest, who| async move {
            let (header, leader) =
                crate::concurrency::campaign(&s, &who, &r.name, r.lease, r.value).await?;
            Ok(CampaignResponse {
                header: Some(header),
                leader: Some(leader),
            })
        },
    )
    .await
}
async fn proclaim(State(s): Srv, who: Who, body: Bytes) -> Response {
    gateway(
        &s.clone(),
        who,
        body,
        |r: ProclaimRequest, who| async move {
            let leader = r.leader.ok_or(EtcdError::MissingLeaderKey)?;
            let header = crate::concurrency::proclaim(&s, &who, &leader, r.value).await?;
            Ok(ProclaimResponse {
                header: Some(header),
            })
        },
    )
    .await
}
async fn election_leader(State(s): Srv, who: Who, body: Bytes) -> Response {
    gateway(&s.clone(), who, body, |r: LeaderRequest, who| async move {
        crate::concurrency::leader(&s, &who, &r.name).await
    })
    .await
}
async fn resign(State(s): Srv, who: Who, body: Bytes) -> Response {
    gateway(&s.clone(), who, body, |r: ResignRequest, who| async move {
        let leader = r.leader.ok_or(EtcdError::MissingLeaderKey)?;
        let header = crate::concurrency::resign(&s, &who, &leader).await?;
        Ok(ResignResponse {
            header: Some(header),
        })
    })
    .await
}

/// POST /v3/election/observe: `{"result": LeaderResponse}` lines, one per leader or value,
/// until the client hangs up.
async fn observe(State(s): Srv, who: Who, body: Bytes) -> Response {
    let req: LeaderRequest = match parse(&body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let rx = match who
        .0
        .and_then(|who| crate::concurrency::observe(s.clone(), who, req.name))
    {
        Ok(rx) => rx,
        Err(e) => return e.into_response(),
    };
    let lines = ReceiverStream::new(rx).map(|r| {
        let v = match r {
            Ok(resp) => serde_json::json!({ "result": resp }),
            Err(e) => {
                serde_json::json!({"error": {"code": e.code() as i32, "message": e.to_string()}})
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

/// POST /v3/watch: the body holds one or more WatchRequest objects; the answer is a stream of
/// `{"result": WatchResponse}` lines until the client hangs up.
async fn watch(State(s): Srv, who: Who, body: Bytes) -> Response {
    if let Err(e) = s.refuse_on_learner() {
        return e.into_response();
    }
    let who = match who.0 {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
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
    tokio::spawn(crate::watch::serve(s, Box::pin(requests), tx, who));
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
        .range(
            &RangeRequest {
                key: b"health".to_vec(),
                ..Default::default()
            },
            &None,
        )
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

/// Every HTTP route plus the gRPC services, on one router; the v2 API only if `v2`.
pub fn router(server: Arc<EtcdServer>, v2: bool) -> Router {
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
            .route(&format!("{prefix}/maintenance/status"), post(maint_status))
            .route(&format!("{prefix}/auth/enable"), post(auth_enable))
            .route(&format!("{prefix}/auth/disable"), post(auth_disable))
            .route(&format!("{prefix}/auth/status"), post(auth_status))
            .route(&format!("{prefix}/auth/authenticate"), post(authenticate))
            .route(&format!("{prefix}/auth/user/add"), post(user_add))
            .route(&format!("{prefix}/auth/user/get"), post(user_get))
            .route(&format!("{prefix}/auth/user/list"), post(user_list))
            .route(&format!("{prefix}/auth/user/delete"), post(user_delete))
            .route(&format!("{prefix}/auth/user/changepw"), post(user_changepw))
            .route(&format!("{prefix}/auth/user/grant"), post(user_grant))
            .route(&format!("{prefix}/auth/user/revoke"), post(user_revoke))
            .route(&format!("{prefix}/auth/role/add"), post(role_add))
            .route(&format!("{prefix}/auth/role/get"), post(role_get))
            .route(&format!("{prefix}/auth/role/list"), post(role_list))
            .route(&format!("{prefix}/auth/role/delete"), post(role_delete))
            .route(&format!("{prefix}/auth/role/grant"), post(role_grant))
            .route(&format!("{prefix}/auth/role/revoke"), post(role_revoke))
            .route(&format!("{prefix}/lock/lock"), post(lock))
            .route(&format!("{prefix}/lock/unlock"), post(unlock))
            .route(&format!("{prefix}/election/campaign"), post(campaign))
            .route(&format!("{prefix}/election/proclaim"), post(proclaim))
            .route(&format!("{prefix}/election/leader"), post(election_leader))
            .route(&format!("{prefix}/election/observe"), post(observe))
            .route(&format!("{prefix}/election/resign"), post(resign));
    }
    let r = if v2 {
        crate::v2_admin::routes(crate::http_v2::routes(r))
    } else {
        r
    };
    let grpc = Services::routes(server.clone())
        .into_axum_router()
        .route(
            "/etcdserverpb.KV/Range",
            post(crate::grpc::range_route).with_state(server.clone()),
        )
        .layer(axum::middleware::from_fn(crate::deadline::grpc_deadline));
    r.layer(DefaultBodyLimit::max(limit))
        .with_state(server)
        .merge(grpc)
        .fallback(no_route)
}

/// Any path no route serves: a gRPC call gets gRPC's `Unimplemented` (status 12, as gRPC
/// requires HTTP 200); anything else a 404 with a grpc-gateway JSON error, never a 200.
async fn no_route(req: axum::extract::Request) -> Response {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    // Read what the client sends (up to a bound) before answering: an HTTP/2 stream answered
    // while its request is still arriving is reset, and the client sees a framing error
    // instead of the answer.
    let _ = axum::body::to_bytes(req.into_body(), 1 << 20).await;
    if grpc {
        return tonic::Status::unimplemented(format!("unknown method {path}"))
            .into_http()
            .map(|_: tonic::body::BoxBody| Body::empty());
    }
    let body = serde_json::json!({
        "error": "Not Found",
        "code": tonic::Code::NotFound as i32,
        "message": format!("404 page not found: {method} {path}"),
    });
    json(404, &body)
}

#[cfg(test)]
mod tests {
    use etcd_api::mvccpb::KeyValue;

    use super::*;

    #[test]
    fn a_streamed_range_is_the_json_of_the_whole_answer() {
        let header = ResponseHeader {
            cluster_id: u64::MAX,
            member_id: 3,
            revision: 77,
            raft_term: 0,
        };
        let kv = |i: i64| KeyValue {
            key: format!("key/{i}").into_bytes(),
            create_revision: i,
            mod_revision: i + 1,
            version: i % 3,
            value: if i % 2 == 0 {
                vec![0xff; i as usize]
            } else {
                vec![]
            },
            lease: i * 1000,
        };
        for (n, more, count) in [(1, false, 1), (3, true, 10), (5, false, 0), (2, true, 0)] {
            let kvs: Vec<KeyValue> = (0..n).map(kv).collect();
            let (head, tail) = range_json_ends(&header, more, count);
            let mut streamed = head.to_vec();
            for (i, kv) in kvs.iter().enumerate() {
                if i > 0 {
                    streamed.push(b',');
                }
                serde_json::to_writer(&mut streamed, kv).unwrap();
            }
            streamed.extend(&tail[..]);
            let whole = RangeResponse {
                header: Some(header),
                kvs,
                more,
                count,
            };
            assert_eq!(
                String::from_utf8(streamed).unwrap(),
                serde_json::to_string(&whole).unwrap()
            );
        }
    }
}
