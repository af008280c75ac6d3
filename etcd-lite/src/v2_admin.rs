//! etcd's v2 cluster and auth endpoints: `/v2/machines`, `/v2/stats/{self,leader,store}` and
//! the v2 auth API (`/v2/auth/enable`, `/v2/auth/users[/NAME]`, `/v2/auth/roles[/NAME]`).
//!
//! v2 auth is a view of the one auth model (v3's users and roles, [`crate::auth`]): a v2 user is
//! the v3 user, a v2 role the v3 role, and v2 path permissions map onto v3 key ranges the way
//! the v2 keys API maps paths onto keys (`/a/b` is the key `a/b`): `/a/b` grants the key `a/b`,
//! `/a/*` everything under the prefix `a/`, and `*` or `/*` every key. Enabling auth through v2
//! does what etcd v2 does: `root` gets the root role, and a `guest` role that may read and write
//! everything is made if there is none. Unlike etcd v2, anonymous requests are still refused
//! (auth on means a user is named); `guest` is an ordinary role.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use etcd_api::authpb::{permission::Type as PermType, Permission};
use etcd_api::etcdserverpb::*;
use serde::Deserialize;
use serde_json::json;

use crate::auth::{Perm, ROOT};
use crate::error::EtcdError;
use crate::http::json;
use crate::http_v2::V2Creds;
use crate::server::{Caller, EtcdServer};
use crate::v2store::{prefix_end, rfc3339};

type Srv = State<Arc<EtcdServer>>;

/// The role etcd v2 makes when auth is enabled through it.
const GUEST: &str = "guest";

/// What `/v2/stats/store` counts: the v2 operations this member answered.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub gets_success: AtomicU64,
    pub gets_fail: AtomicU64,
    pub sets_success: AtomicU64,
    pub sets_fail: AtomicU64,
    pub delete_success: AtomicU64,
    pub delete_fail: AtomicU64,
    pub update_success: AtomicU64,
    pub update_fail: AtomicU64,
    pub create_success: AtomicU64,
    pub create_fail: AtomicU64,
    pub compare_and_swap_success: AtomicU64,
    pub compare_and_swap_fail: AtomicU64,
    pub compare_and_delete_success: AtomicU64,
    pub compare_and_delete_fail: AtomicU64,
    /// v2 long-polls waiting now.
    pub watchers: AtomicU64,
}

impl StoreStats {
    /// Counts a v2 operation that ended with `action` (etcd's action names), or failed.
    pub fn count(&self, action: &str, ok: bool) {
        let (s, f) = match action {
            "get" => (&self.gets_success, &self.gets_fail),
            "set" => (&self.sets_success, &self.sets_fail),
            "delete" => (&self.delete_success, &self.delete_fail),
            "update" => (&self.update_success, &self.update_fail),
            "create" => (&self.create_success, &self.create_fail),
            "compareAndSwap" => (&self.compare_and_swap_success, &self.compare_and_swap_fail),
            "compareAndDelete" => (
                &self.compare_and_delete_success,
                &self.compare_and_delete_fail,
            ),
            _ => return,
        };
        if ok { s } else { f }.fetch_add(1, Ordering::Relaxed);
    }

    fn to_json(&self, expired: u64) -> serde_json::Value {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "getsSuccess": n(&self.gets_success),
            "getsFail": n(&self.gets_fail),
            "setsSuccess": n(&self.sets_success),
            "setsFail": n(&self.sets_fail),
            "deleteSuccess": n(&self.delete_success),
            "deleteFail": n(&self.delete_fail),
            "updateSuccess": n(&self.update_success),
            "updateFail": n(&self.update_fail),
            "createSuccess": n(&self.create_success),
            "createFail": n(&self.create_fail),
            "compareAndSwapSuccess": n(&self.compare_and_swap_success),
            "compareAndSwapFail": n(&self.compare_and_swap_fail),
            "compareAndDeleteSuccess": n(&self.compare_and_delete_success),
            "compareAndDeleteFail": n(&self.compare_and_delete_fail),
            "expireCount": expired,
            "watchers": n(&self.watchers),
        })
    }
}

/// The v2 routes of this module, added to the router.
pub fn routes(r: Router<Arc<EtcdServer>>) -> Router<Arc<EtcdServer>> {
    r.route("/v2/machines", get(machines))
        .route("/v2/stats/self", get(stats_self))
        .route("/v2/stats/leader", get(stats_leader))
        .route("/v2/stats/store", get(stats_store))
        .route("/v2/auth/enable", any(auth_enable))
        .route("/v2/auth/users", get(users))
        .route("/v2/auth/users/:name", any(user))
        .route("/v2/auth/roles", get(roles))
        .route("/v2/auth/roles/:name", any(role))
}

/// A v2 error outside the keys API: `{"message": ...}`.
fn message(status: u16, msg: impl Into<String>) -> Response {
    json(status, &json!({ "message": msg.into() }))
}

/// Go's `time.Duration` text (`1h2m3.5s`, `250ms`), as etcd's stats write uptimes.
fn go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000_000_000 {
        let (unit, div) = if ns < 1_000 {
            ("ns", 1)
        } else if ns < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", trim_fraction(ns, div));
    }
    let secs = d.as_secs();
    let (h, m) = (secs / 3600, secs % 3600 / 60);
    let s = trim_fraction(
        u128::from(secs % 60) * 1_000_000_000 + u128::from(d.subsec_nanos()),
        1_000_000_000,
    );
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

/// `n / div` with its fraction, trailing zeros dropped.
fn trim_fraction(n: u128, div: u128) -> String {
    let (whole, frac) = (n / div, n % div);
    if frac == 0 {
        return whole.to_string();
    }
    let width = div.to_string().len() - 1;
    let f = format!("{frac:0width$}");
    format!("{whole}.{}", f.trim_end_matches('0'))
}

/// GET /v2/machines: every member's client URLs, comma-separated (etcd's text answer).
async fn machines(State(s): Srv) -> Response {
    match s.members().await {
        Ok(ms) => {
            let urls: Vec<String> = ms.into_iter().flat_map(|m| m.client_ur_ls).collect();
            (StatusCode::OK, urls.join(", ")).into_response()
        }
        Err(e) => message(503, e.to_string()),
    }
}

/// GET /v2/stats/self: this member, its raft role and its leader.
async fn stats_self(State(s): Srv) -> Response {
    let leader = s.node.leader();
    let is_leader = leader == s.member.id;
    let state = if is_leader {
        "StateLeader"
    } else if leader == 0 {
        "StateCandidate"
    } else {
        "StateFollower"
    };
    let started = SystemTime::now() - s.started.elapsed();
    let since = s.node.leader_since();
    let sent: u64 = prometheus::core::Collector::collect(&s.metrics.raft.appends_sent)
        .iter()
        .flat_map(|f| f.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum();
    json(
        200,
        &json!({
            "name": s.member.name,
            "id": format!("{:x}", s.member.id),
            "state": state,
            "startTime": rfc3339(started),
            "leaderInfo": {
                "leader": format!("{leader:x}"),
                "uptime": go_duration(since.elapsed().unwrap_or_default()),
                "startTime": rfc3339(since),
            },
            "recvAppendRequestCnt": s.metrics.raft.appends_received.get(),
            "sendAppendRequestCnt": sent,
        }),
    )
}

/// GET /v2/stats/leader: on the leader, its followers and the appends sent to each; elsewhere
/// etcd's 403.
async fn stats_leader(State(s): Srv) -> Response {
    let st = match s.status().await {
        Ok(st) => st,
        Err(e) => return message(503, e.to_string()),
    };
    if !st.is_leader {
        return message(403, "not current leader");
    }
    let mut followers = serde_json::Map::new();
    for id in st.voters.iter().chain(&st.learners) {
        if *id == st.id {
            continue;
        }
        let hex = format!("{id:x}");
        let sent = s.metrics.raft.appends_sent.with_label_values(&[&hex]).get();
        followers.insert(
            hex,
            json!({
                // Appends go out in batches on one stream per peer; no per-request latency is
                // measured, so these stay 0.
                "latency": {"current": 0.0, "average": 0.0, "standardDeviation": 0.0,
                            "minimum": 0.0, "maximum": 0.0},
                "counts": {"fail": 0, "success": sent},
            }),
        );
    }
    json(
        200,
        &json!({ "leader": format!("{:x}", st.id), "followers": followers }),
    )
}

/// GET /v2/stats/store: the v2 operations this member answered.
async fn stats_store(State(s): Srv) -> Response {
    json(200, &s.v2_stats.to_json(s.metrics.leases_expired.get()))
}

/// The v2 caller, or etcd's 401.
async fn caller(s: &EtcdServer, creds: &V2Creds) -> Result<Caller, Response> {
    s.v2_caller(creds.authorization.as_deref(), creds.cn.as_deref())
        .await
        .map_err(|_| crate::http_v2::unauthorized())
}

/// An auth error in v2's words and codes.
fn auth_error(e: EtcdError, user: &str, role: &str) -> Response {
    match e {
        EtcdError::UserNotFound => message(404, format!("auth: User {user} does not exist.")),
        EtcdError::UserAlreadyExist => message(409, format!("auth: User {user} already exists.")),
        EtcdError::RoleNotFound => message(404, format!("auth: Role {role} does not exist.")),
        EtcdError::RoleAlreadyExist => message(409, format!("auth: Role {role} already exists.")),
        EtcdError::RootUserNotExist | EtcdError::RootRoleNotExist => {
            message(409, "auth: No root user available, please create one")
        }
        EtcdError::PermissionDenied
        | EtcdError::UserEmpty
        | EtcdError::InvalidAuthToken
        | EtcdError::AuthFailed => crate::http_v2::unauthorized(),
        EtcdError::InvalidAuthMgmt => {
            message(403, "auth: Cannot delete root user while auth is enabled.")
        }
        EtcdError::InvalidArgument(m) => message(400, format!("auth: {m}")),
        e => message(e.http_status(), e.to_string()),
    }
}

/// /v2/auth/enable: GET the state, PUT to enable, DELETE to disable.
async fn auth_enable(State(s): Srv, method: Method, creds: V2Creds) -> Response {
    // Whether auth is on is no secret (etcd answers anyone).
    if method == Method::GET {
        return json(200, &json!({ "enabled": s.auth.enabled() }));
    }
    let who = match caller(&s, &creds).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    match method {
        Method::PUT => match enable(&s, &who).await {
            Ok(()) => StatusCode::OK.into_response(),
            Err(e) => auth_error(e, ROOT, ROOT),
        },
        Method::DELETE => match s.auth_disable(&who).await {
            Ok(_) => StatusCode::OK.into_response(),
            Err(e) => auth_error(e, "", ""),
        },
        _ => message(405, "Method Not Allowed"),
    }
}

/// Enabling auth as etcd v2 does it: `root` holds the root role, a `guest` role exists.
async fn enable(s: &EtcdServer, who: &Caller) -> Result<(), EtcdError> {
    if s.auth.enabled() {
        return Ok(());
    }
    let (root_has_role, has_guest) = {
        let st = s.auth.state();
        let root = st.users.get(ROOT).ok_or(EtcdError::RootUserNotExist)?;
        (root.roles.contains(ROOT), st.roles.contains_key(GUEST))
    };
    if !root_has_role {
        s.user_grant_role(
            who,
            AuthUserGrantRoleRequest {
                user: ROOT.into(),
                role: ROOT.into(),
            },
        )
        .await?;
    }
    if !has_guest {
        s.role_add(who, AuthRoleAddRequest { name: GUEST.into() })
            .await?;
        s.role_grant_permission(
            who,
            AuthRoleGrantPermissionRequest {
                name: GUEST.into(),
                perm: Some(Permission {
                    perm_type: PermType::Readwrite as i32,
                    key: vec![0],
                    range_end: vec![0],
                }),
            },
        )
        .await?;
    }
    s.auth_enable().await?;
    Ok(())
}

/// A v2 permission path as the v3 range it grants: `*` and `/*` everything, `/a/*` the prefix
/// `a/`, `/a` the key `a`.
fn path_to_range(path: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let p = path.strip_prefix('/').unwrap_or(path);
    match p.strip_suffix('*') {
        Some("") => Some((vec![0], vec![0])),
        Some(prefix) => Some((prefix.as_bytes().to_vec(), prefix_end(prefix.as_bytes()))),
        None if p.is_empty() || p.contains('*') => None,
        None => Some((p.as_bytes().to_vec(), Vec::new())),
    }
}

/// A v3 grant as a v2 permission path (the inverse of [`path_to_range`]); other ranges are
/// written as `/key..end`, which v2 cannot grant but shows.
fn range_to_path(key: &[u8], end: &[u8]) -> String {
    let k = String::from_utf8_lossy(key);
    if key == [0] && end == [0] {
        "*".into()
    } else if end.is_empty() {
        format!("/{k}")
    } else if end == prefix_end(key) {
        format!("/{k}*")
    } else {
        format!("/{k}..{}", String::from_utf8_lossy(end))
    }
}

/// A role in v2's JSON: `{"role": name, "permissions": {"kv": {"read": [...], "write": [...]}}}`.
fn role_json(name: &str, perms: &[Perm]) -> serde_json::Value {
    if name == ROOT {
        return json!({"role": ROOT, "permissions": {"kv": {"read": ["/*"], "write": ["/*"]}}});
    }
    let (mut read, mut write) = (Vec::new(), Vec::new());
    for p in perms {
        let path = range_to_path(&p.key, &p.range_end);
        if p.kind != PermType::Write as i32 {
            read.push(path.clone());
        }
        if p.kind != PermType::Read as i32 {
            write.push(path);
        }
    }
    json!({"role": name, "permissions": {"kv": {"read": read, "write": write}}})
}

/// The roles' v2 JSON, with the built-in root role v2 always lists.
fn all_roles(s: &EtcdServer) -> Vec<serde_json::Value> {
    let st = s.auth.state();
    let mut names: Vec<&String> = st.roles.keys().collect();
    let root = ROOT.to_string();
    if !st.roles.contains_key(ROOT) {
        names.push(&root);
        names.sort();
    }
    names
        .into_iter()
        .map(|n| role_json(n, st.roles.get(n).map_or(&[][..], |r| &r.perms)))
        .collect()
}

fn user_json(s: &EtcdServer, name: &str) -> Option<serde_json::Value> {
    let st = s.auth.state();
    let u = st.users.get(name)?;
    let roles: Vec<serde_json::Value> = u
        .roles
        .iter()
        .map(|r| role_json(r, st.roles.get(r).map_or(&[][..], |r| &r.perms)))
        .collect();
    Some(json!({"user": name, "roles": roles}))
}

/// GET /v2/auth/users (root only): every user with its roles.
async fn users(State(s): Srv, creds: V2Creds) -> Response {
    let who = match caller(&s, &creds).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    if let Err(e) = s.may_admin(&who) {
        return auth_error(e, "", "");
    }
    let names: Vec<String> = s.auth.state().users.keys().cloned().collect();
    let list: Vec<_> = names.iter().filter_map(|n| user_json(&s, n)).collect();
    json(200, &json!({ "users": list }))
}

/// A PUT to /v2/auth/users/NAME.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct UserChange {
    user: Option<String>,
    password: Option<String>,
    roles: Option<Vec<String>>,
    grant: Option<Vec<String>>,
    revoke: Option<Vec<String>>,
}

/// GET, PUT (create or change: password, grant, revoke) and DELETE of one user (root only).
async fn user(
    State(s): Srv,
    Path(name): Path<String>,
    method: Method,
    creds: V2Creds,
    body: Bytes,
) -> Response {
    let who = match caller(&s, &creds).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    if let Err(e) = s.may_admin(&who) {
        return auth_error(e, &name, "");
    }
    match method {
        Method::GET => match user_json(&s, &name) {
            Some(u) => json(200, &u),
            None => auth_error(EtcdError::UserNotFound, &name, ""),
        },
        Method::DELETE => match s
            .user_delete(&who, AuthUserDeleteRequest { name: name.clone() })
            .await
        {
            Ok(_) => StatusCode::OK.into_response(),
            Err(e) => auth_error(e, &name, ""),
        },
        Method::PUT => {
            let change: UserChange = match serde_json::from_slice(&body) {
                Ok(c) => c,
                Err(e) => return message(400, format!("auth: invalid JSON: {e}")),
            };
            if change.user.as_deref().is_some_and(|u| u != name) {
                return message(
                    400,
                    "auth: the user in the body is not the user in the path",
                );
            }
            match put_user(&s, &who, &name, change).await {
                Ok(created) => {
                    let roles: Vec<String> = s
                        .auth
                        .state()
                        .users
                        .get(&name)
                        .map(|u| u.roles.iter().cloned().collect())
                        .unwrap_or_default();
                    let status = if created { 201 } else { 200 };
                    json(status, &json!({"user": name, "roles": roles}))
                }
                Err((e, role)) => auth_error(e, &name, &role),
            }
        }
        _ => message(405, "Method Not Allowed"),
    }
}

/// Creates or changes a user; whether it was created. The error names the role it is about.
async fn put_user(
    s: &EtcdServer,
    who: &Caller,
    name: &str,
    c: UserChange,
) -> Result<bool, (EtcdError, String)> {
    let plain = |e| (e, String::new());
    let exists = s.auth.state().users.contains_key(name);
    let mut grant = c.grant.unwrap_or_default();
    if !exists {
        if !c.revoke.unwrap_or_default().is_empty() {
            return Err(plain(EtcdError::InvalidArgument(
                "cannot revoke roles of a user that does not exist".into(),
            )));
        }
        let password = c.password.unwrap_or_default();
        if password.is_empty() {
            return Err(plain(EtcdError::InvalidArgument(
                "password required".into(),
            )));
        }
        // Every role must exist before the user is made, so a failure leaves nothing behind.
        grant.extend(c.roles.unwrap_or_default());
        {
            let st = s.auth.state();
            if let Some(r) = grant
                .iter()
                .find(|r| *r != ROOT && !st.roles.contains_key(*r))
            {
                return Err((EtcdError::RoleNotFound, r.clone()));
            }
        }
        s.user_add(
            who,
            AuthUserAddRequest {
                name: name.into(),
                password,
                ..Default::default()
            },
        )
        .await
        .map_err(plain)?;
    } else {
        if c.roles.is_some_and(|r| !r.is_empty()) {
            return Err(plain(EtcdError::InvalidArgument(
                "roles of an existing user change by grant and revoke".into(),
            )));
        }
        if let Some(password) = c.password.filter(|p| !p.is_empty()) {
            s.user_change_password(
                who,
                AuthUserChangePasswordRequest {
                    name: name.into(),
                    password,
                    ..Default::default()
                },
            )
            .await
            .map_err(plain)?;
        }
        for role in c.revoke.unwrap_or_default() {
            s.user_revoke_role(
                who,
                AuthUserRevokeRoleRequest {
                    name: name.into(),
                    role: role.clone(),
                },
            )
            .await
            .map_err(|e| (e, role))?;
        }
    }
    for role in grant {
        s.user_grant_role(
            who,
            AuthUserGrantRoleRequest {
                user: name.into(),
                role: role.clone(),
            },
        )
        .await
        .map_err(|e| (e, role))?;
    }
    Ok(!exists)
}

/// GET /v2/auth/roles (root only): every role with its permissions.
async fn roles(State(s): Srv, creds: V2Creds) -> Response {
    let who = match caller(&s, &creds).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    if let Err(e) = s.may_admin(&who) {
        return auth_error(e, "", "");
    }
    json(200, &json!({ "roles": all_roles(&s) }))
}

/// v2's permission lists: `{"kv": {"read": [...], "write": [...]}}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct KvPerms {
    kv: PathLists,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PathLists {
    read: Vec<String>,
    write: Vec<String>,
}

/// A PUT to /v2/auth/roles/NAME.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RoleChange {
    role: Option<String>,
    permissions: Option<KvPerms>,
    grant: Option<KvPerms>,
    revoke: Option<KvPerms>,
}

/// GET, PUT (create with permissions, grant, revoke) and DELETE of one role (root only).
async fn role(
    State(s): Srv,
    Path(name): Path<String>,
    method: Method,
    creds: V2Creds,
    body: Bytes,
) -> Response {
    let who = match caller(&s, &creds).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    if let Err(e) = s.may_admin(&who) {
        return auth_error(e, "", &name);
    }
    let current = |s: &EtcdServer| {
        let st = s.auth.state();
        match st.roles.get(&name) {
            Some(r) => Some(role_json(&name, &r.perms)),
            None if name == ROOT => Some(role_json(ROOT, &[])),
            None => None,
        }
    };
    match method {
        Method::GET => match current(&s) {
            Some(r) => json(200, &r),
            None => auth_error(EtcdError::RoleNotFound, "", &name),
        },
        Method::DELETE => {
            if name == ROOT {
                return message(403, "auth: Cannot delete root role.");
            }
            match s
                .role_delete(&who, AuthRoleDeleteRequest { role: name.clone() })
                .await
            {
                Ok(_) => StatusCode::OK.into_response(),
                Err(e) => auth_error(e, "", &name),
            }
        }
        Method::PUT => {
            let change: RoleChange = match serde_json::from_slice(&body) {
                Ok(c) => c,
                Err(e) => return message(400, format!("auth: invalid JSON: {e}")),
            };
            if change.role.as_deref() != Some(name.as_str()) {
                return message(
                    400,
                    "auth: the role in the body is not the role in the path",
                );
            }
            if name == ROOT {
                return message(
                    403,
                    "auth: Cannot modify role root: root has all permissions.",
                );
            }
            match put_role(&s, &who, &name, change).await {
                Ok(created) => match current(&s) {
                    Some(r) => json(if created { 201 } else { 200 }, &r),
                    None => auth_error(EtcdError::RoleNotFound, "", &name),
                },
                Err(e) => auth_error(e, "", &name),
            }
        }
        _ => message(405, "Method Not Allowed"),
    }
}

/// Read and write wanted on one v3 range.
type Wanted = std::collections::BTreeMap<(Vec<u8>, Vec<u8>), (bool, bool)>;

fn wanted(lists: &PathLists, into: &mut Wanted) -> Result<(), EtcdError> {
    for (paths, write) in [(&lists.read, false), (&lists.write, true)] {
        for p in paths {
            let range = path_to_range(p).ok_or_else(|| {
                EtcdError::InvalidArgument(format!("invalid permission path {p:?}"))
            })?;
            let e = into.entry(range).or_default();
            if write {
                e.1 = true;
            } else {
                e.0 = true;
            }
        }
    }
    Ok(())
}

/// Creates or changes a role; whether it was created.
async fn put_role(
    s: &EtcdServer,
    who: &Caller,
    name: &str,
    c: RoleChange,
) -> Result<bool, EtcdError> {
    let exists = s.auth.state().roles.contains_key(name);
    let (mut grant, mut revoke) = (Wanted::new(), Wanted::new());
    if let Some(p) = &c.permissions {
        wanted(&p.kv, &mut grant)?;
    }
    if let Some(p) = &c.grant {
        wanted(&p.kv, &mut grant)?;
    }
    if let Some(p) = &c.revoke {
        wanted(&p.kv, &mut revoke)?;
    }
    if !exists {
        if !revoke.is_empty() {
            return Err(EtcdError::RoleNotFound);
        }
        s.role_add(who, AuthRoleAddRequest { name: name.into() })
            .await?;
    }
    // What each touched range holds now, then what it should hold.
    let held: Wanted = s
        .auth
        .state()
        .roles
        .get(name)
        .map(|r| {
            r.perms
                .iter()
                .map(|p| {
                    let (read, write) = (
                        p.kind != PermType::Write as i32,
                        p.kind != PermType::Read as i32,
                    );
                    ((p.key.clone(), p.range_end.clone()), (read, write))
                })
                .collect()
        })
        .unwrap_or_default();
    let ranges: std::collections::BTreeSet<_> =
        grant.keys().chain(revoke.keys()).cloned().collect();
    for range in ranges {
        let (mut read, mut write) = held.get(&range).copied().unwrap_or_default();
        let before = (read, write);
        if let Some((r, w)) = grant.get(&range) {
            read |= r;
            write |= w;
        }
        if let Some((r, w)) = revoke.get(&range) {
            read &= !r;
            write &= !w;
        }
        if (read, write) == before {
            continue;
        }
        let (key, range_end) = range;
        let kind = match (read, write) {
            (false, false) => {
                s.role_revoke_permission(
                    who,
                    AuthRoleRevokePermissionRequest {
                        role: name.into(),
                        key,
                        range_end,
                    },
                )
                .await?;
                continue;
            }
            (true, false) => PermType::Read,
            (false, true) => PermType::Write,
            (true, true) => PermType::Readwrite,
        };
        s.role_grant_permission(
            who,
            AuthRoleGrantPermissionRequest {
                name: name.into(),
                perm: Some(Permission {
                    perm_type: kind as i32,
                    key,
                    range_end,
                }),
            },
        )
        .await?;
    }
    Ok(!exists)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_go_writes_them() {
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(go_duration(Duration::from_micros(1500)), "1.5ms");
        assert_eq!(go_duration(Duration::from_millis(2500)), "2.5s");
        assert_eq!(go_duration(Duration::from_secs(62)), "1m2s");
        assert_eq!(go_duration(Duration::from_millis(3_723_040)), "1h2m3.04s");
    }

    #[test]
    fn v2_permission_paths_map_onto_v3_ranges_and_back() {
        for (path, back) in [
            ("*", "*"),
            ("/*", "*"),
            ("/test/*", "/test/*"),
            ("/a/b", "/a/b"),
        ] {
            let (k, e) = path_to_range(path).expect(path);
            assert_eq!(range_to_path(&k, &e), back);
        }
        assert_eq!(
            path_to_range("/test/*"),
            Some((b"test/".to_vec(), b"test0".to_vec()))
        );
        assert_eq!(path_to_range("/a*b"), None);
        assert_eq!(path_to_range(""), None);
    }
}
