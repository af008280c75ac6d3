//! fleet's HTTP API v1, served by every fleetd (unix socket, optionally TCP):
//! `/fleet/v1/units[/{name}]` (GET, PUT, DELETE), `/fleet/v1/machines`,
//! `/fleet/v1/state[/{name}]`, with fleet's JSON shapes (every empty field left out), PUT
//! semantics (create, replace, desired state), pagination and error bodies; plus corelite's
//! `/fleet/v1/units/{name}/status` and `/journal` (answered by the unit's machine, forwarded there
//! by any fleetd), `/health` and `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use kv_client::Client;
use serde::Deserialize;

use crate::client::Endpoint;
use crate::model::{
    ErrorBody, ErrorDetail, KeyKind, Keys, Machine, MachinePage, TargetState, Unit, UnitPage,
    UnitRecord, UnitState, UnitStatePage,
};
use crate::systemd::Systemd;
use crate::unit;

/// Items per page, as fleet.
pub const PAGE_SIZE: usize = 100;

/// What the handlers share.
pub struct ApiState<S> {
    /// The store.
    pub client: Client,
    /// fleet's keys in it.
    pub keys: Keys,
    /// This machine.
    pub me: Machine,
    /// Its systemd (for status and journal).
    pub sd: Arc<S>,
    /// How to reach other machines' https:// APIs (status and journal of their units): the
    /// cluster CA and this machine's certificate.
    pub peer_tls: Option<Arc<rustls::ClientConfig>>,
}

/// fleet's error response.
pub fn error(code: StatusCode, message: impl Into<String>) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.as_u16(),
            message: message.into(),
        },
    };
    (code, Json(body)).into_response()
}

fn store_error(e: kv_client::Error) -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("store unavailable: {e}"),
    )
}

/// The API's routes.
pub fn router<S: Systemd>(state: Arc<ApiState<S>>) -> Router {
    Router::new()
        .route(
            "/fleet/v1/units",
            get(list_units::<S>).fallback(only(ONLY_GET)),
        )
        .route(
            "/fleet/v1/units/:name",
            get(get_unit::<S>)
                .put(put_unit::<S>)
                .delete(delete_unit::<S>)
                .fallback(only(
                    "only GET, PUT and DELETE supported against this resource",
                )),
        )
        .route("/fleet/v1/units/:name/status", get(unit_status::<S>))
        .route("/fleet/v1/units/:name/journal", get(unit_journal::<S>))
        .route(
            "/fleet/v1/machines",
            get(list_machines::<S>).fallback(only(ONLY_GET)),
        )
        .route(
            "/fleet/v1/state",
            get(list_states::<S>).fallback(only(ONLY_GET)),
        )
        .route(
            "/fleet/v1/state/:name",
            get(get_state::<S>).fallback(only(ONLY_GET)),
        )
        .route("/health", get(health::<S>))
        .route("/metrics", get(|| async { crate::metrics::render() }))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not found") })
        .with_state(state)
}

const ONLY_GET: &str = "only GET supported against this resource";

/// fleet's answer to a method a resource does not take: 405 with its message.
fn only(message: &'static str) -> impl Fn() -> std::future::Ready<Response> + Clone {
    move || std::future::ready(error(StatusCode::METHOD_NOT_ALLOWED, message))
}

#[derive(Deserialize, Default)]
struct PageQuery {
    #[serde(rename = "nextPageToken")]
    next_page_token: Option<String>,
}

#[allow(clippy::result_large_err)] // the error is the response itself
fn decode_token(t: &Option<String>) -> Result<Option<String>, Response> {
    match t {
        None => Ok(None),
        Some(t) => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .map(Some)
            .ok_or_else(|| error(StatusCode::BAD_REQUEST, "invalid nextPageToken")),
    }
}

fn encode_token(last: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last)
}

/// One page of `items` (in the order of `key`): those after the token's key, at most
/// [`PAGE_SIZE`], and the token of the next page if there is one.
fn page<T>(
    items: impl Iterator<Item = T>,
    after: Option<&str>,
    key: impl Fn(&T) -> String,
) -> (Vec<T>, Option<String>) {
    let mut out: Vec<T> = items
        .filter(|t| after.is_none_or(|a| key(t).as_str() > a))
        .take(PAGE_SIZE + 1)
        .collect();
    let next = (out.len() > PAGE_SIZE).then(|| {
        out.truncate(PAGE_SIZE);
        encode_token(&key(&out[PAGE_SIZE - 1]))
    });
    (out, next)
}

/// Everything the unit views need, read from the store in one range (a consistent view).
struct Registry {
    units: BTreeMap<String, UnitRecord>,
    schedule: BTreeMap<String, String>,
    states: Vec<UnitState>,
    unschedulable: BTreeMap<String, String>,
}

async fn read_registry(client: &Client, keys: &Keys) -> Result<Registry, kv_client::Error> {
    let (kvs, _) = client.get_prefix(keys.root()).await?;
    let mut reg = Registry {
        units: BTreeMap::new(),
        schedule: BTreeMap::new(),
        states: Vec::new(),
        unschedulable: BTreeMap::new(),
    };
    for kv in kvs {
        let Ok(key) = std::str::from_utf8(&kv.key) else {
            continue;
        };
        match keys.classify(key) {
            Some(KeyKind::Unit(n)) => {
                if let Ok(rec) = serde_json::from_slice(&kv.value) {
                    reg.units.insert(n.to_string(), rec);
                }
            }
            Some(KeyKind::Schedule(n)) => {
                reg.schedule
                    .insert(n.to_string(), String::from_utf8_lossy(&kv.value).into());
            }
            Some(KeyKind::Unschedulable(n)) => {
                reg.unschedulable
                    .insert(n.to_string(), String::from_utf8_lossy(&kv.value).into());
            }
            Some(KeyKind::State(..)) => {
                if let Ok(st) = serde_json::from_slice(&kv.value) {
                    reg.states.push(st);
                }
            }
            _ => {}
        }
    }
    Ok(reg)
}

fn unit_view(name: &str, rec: &UnitRecord, reg: &Registry) -> Unit {
    let machine = reg.schedule.get(name).cloned();
    let current = match &machine {
        Some(m) => reg
            .states
            .iter()
            .find(|s| s.name == name && &s.machine_id == m)
            .map(UnitState::current)
            .unwrap_or(TargetState::Inactive),
        // Global units: the furthest state any machine reached.
        None => reg
            .states
            .iter()
            .filter(|s| s.name == name)
            .map(UnitState::current)
            .max()
            .unwrap_or(TargetState::Inactive),
    };
    Unit {
        name: name.to_string(),
        options: rec.options.clone(),
        desired_state: Some(rec.desired_state.as_str().to_string()),
        current_state: Some(current.as_str().to_string()),
        unschedulable_reason: machine
            .is_none()
            .then(|| reg.unschedulable.get(name).cloned())
            .flatten(),
        machine_id: machine,
    }
}

async fn list_units<S: Systemd>(
    State(st): State<Arc<ApiState<S>>>,
    Query(q): Query<PageQuery>,
) -> Response {
    crate::metrics::API_REQUESTS.inc();
    let after = match decode_token(&q.next_page_token) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let reg = match read_registry(&st.client, &st.keys).await {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let (names, next) = page(reg.units.keys(), after.as_deref(), |n| n.to_string());
    let units: Vec<Unit> = names
        .into_iter()
        .map(|n| unit_view(n, &reg.units[n], &reg))
        .collect();
    Json(UnitPage {
        units,
        next_page_token: next,
    })
    .into_response()
}

async fn get_unit<S: Systemd>(
    State(st): State<Arc<ApiState<S>>>,
    Path(name): Path<String>,
) -> Response {
    crate::metrics::API_REQUESTS.inc();
    let reg = match read_registry(&st.client, &st.keys).await {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    match reg.units.get(&name) {
        Some(rec) => Json(unit_view(&name, rec, &reg)).into_response(),
        None => error(StatusCode::NOT_FOUND, "unit does not exist"),
    }
}

/// fleet's check of a request body's type: exactly one `Content-Type`, `application/json`.
fn json_content_type(headers: &axum::http::HeaderMap) -> Result<(), String> {
    let values: Vec<_> = headers.get_all("content-type").iter().collect();
    if values.len() != 1 {
        return Err(format!("expected 1 Content-Type, got {}", values.len()));
    }
    let value = values[0].to_str().unwrap_or_default();
    let mime = value.split(';').next().unwrap_or_default().trim();
    if mime != "application/json" {
        return Err("only acceptable Content-Type is application/json".into());
    }
    Ok(())
}

/// `PUT /fleet/v1/units/{name}`, as fleet answers it: a new unit is created (201), inactive
/// unless the body asks otherwise; a unit whose options differ from the stored ones is
/// replaced the same way (fleetctl's `--replace`); otherwise only the desired state changes
/// (204), and then one must be given.
async fn put_unit<S: Systemd>(
    State(st): State<Arc<ApiState<S>>>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    crate::metrics::API_REQUESTS.inc();
    if let Err(e) = json_content_type(&headers) {
        return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, e);
    }
    let u: Unit = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("unable to decode body: {e}"),
            )
        }
    };
    if !u.name.is_empty() && u.name != name {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "name in URL {name:?} differs from unit name in request body {:?}",
                u.name
            ),
        );
    }
    if let Err(e) = unit::validate_name(&name) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let desired: Option<TargetState> = match u.desired_state.as_deref() {
        None | Some("") => None,
        Some(s) => match s.parse() {
            Ok(d) => Some(d),
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        },
    };
    if unit::is_template(&name) && desired.is_some_and(|d| d != TargetState::Inactive) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("cannot activate template {name:?}"),
        );
    }
    let key = st.keys.unit(&name);
    for _ in 0..5 {
        let existing = match st.client.get(&key).await {
            Ok(e) => e,
            Err(e) => return store_error(e),
        };
        let stored = match &existing {
            None => None,
            Some(kv) => match serde_json::from_slice::<UnitRecord>(&kv.value) {
                Ok(rec) => Some((rec, kv.mod_revision)),
                Err(_) => {
                    return error(StatusCode::INTERNAL_SERVER_ERROR, "stored unit undecodable")
                }
            },
        };
        let (rec, rev, created) = match stored {
            None if u.options.is_empty() => {
                return error(
                    StatusCode::CONFLICT,
                    "unit does not exist and options field empty",
                );
            }
            // New, or replaced by different options.
            None => (None, 0, true),
            Some((rec, rev))
                if !u.options.is_empty() && unit::hash(&u.options) != unit::hash(&rec.options) =>
            {
                (None, rev, true)
            }
            Some((mut rec, rev)) => {
                let Some(desired) = desired else {
                    return error(
                        StatusCode::CONFLICT,
                        "must provide DesiredState to update existing unit",
                    );
                };
                rec.desired_state = desired;
                (Some(rec), rev, false)
            }
        };
        let rec = match rec {
            Some(rec) => rec,
            None => {
                if let Err(e) = unit::requirements(&u.options, &name) {
                    return error(StatusCode::BAD_REQUEST, e.to_string());
                }
                UnitRecord {
                    options: u.options.clone(),
                    desired_state: desired.unwrap_or(TargetState::Inactive),
                }
            }
        };
        let Ok(value) = serde_json::to_vec(&rec) else {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode unit");
        };
        match st.client.put_if_mod_revision(&key, value, 0, rev).await {
            Ok(true) if created => return StatusCode::CREATED.into_response(),
            Ok(true) => return StatusCode::NO_CONTENT.into_response(),
            Ok(false) => continue, // raced with another writer: read again
            Err(e) => return store_error(e),
        }
    }
    error(StatusCode::CONFLICT, "unit changed concurrently; try again")
}

async fn delete_unit<S: Systemd>(
    State(st): State<Arc<ApiState<S>>>,
    Path(name): Path<String>,
) -> Response {
    crate::metrics::API_REQUESTS.inc();
    match st.client.delete(&st.keys.unit(&name)).await {
        Ok(0) => error(StatusCode::NOT_FOUND, "unit does not exist"),
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => store_error(e),
    }
}

async fn list_machines<S: Systemd>(
    State(st): State<Arc<ApiState<S>>>,
    Query(q): Query<PageQuery>,
) -> Response {
    crate::metrics::API_REQUESTS.inc();
    let after = match decode_token(&q.next_page_token) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let (kvs, _) = match st.client.get_prefix(&st.keys.machines()).await {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let listed = kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Machine>(&kv.value).ok());
    let (machines, next) = page(listed, after.as_deref(), |m| m.id.clone());
    Json(MachinePage {
        machines,
        next_page_token: next,
    })
    .into_response()
}

#[derive(Deserialize, Default)]
struct StateQuery {
    #[serde(rename = "machineID")]
    machine_id: Option<String>,
    #[serde(rename = "unitName")]
    unit_name: Option<String>,
    #[serde(rename = "nextPageToken")]
    next_page_token: Option<String>,
}

async fn list_states<S: Systemd>(
    State(st): State<Arc<ApiState<S>>>,
    Query(q): Query<StateQuery>,
) -> Response {
    crate::metrics::API_REQUESTS.inc();
    let after = match decode_token(&q.next_page_token) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let (kvs, _) = match st.client.get_prefix(&st.keys.states()).await {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let mut states: Vec<UnitState> = kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<UnitState>(&kv.value).ok())
        .filter(|s| q.machine_id.as_ref().is_none_or(|m| *m == s.machine_id))
        .filter(|s| q.unit_name.as_ref().is_none_or(|n| *n == s.name))
        .collect();
    states.sort_by(|a, b| (&a.name, &a.machine_id).cmp(&(&b.name, &b.machine_id)));
    let (states, next) = page(states.into_iter(), after.as_deref(), |s| {
        format!("{}\u{0}{}", s.name, s.machine_id)
    });
    Json(UnitStatePage {
        states,
        next_page_token: next,
    })
    .into_response()
}

/// `GET /fleet/v1/state/{name}`: the unit's state on the first machine (by id) that reports
/// one, as fleet's `UnitState(name)`; what the original fleetctl checks after a blocking start.
async fn get_state<S: Systemd>(
    State(st): State<Arc<ApiState<S>>>,
    Path(name): Path<String>,
) -> Response {
    crate::metrics::API_REQUESTS.inc();
    let (kvs, _) = match st.client.get_prefix(&st.keys.states()).await {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let first = kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<UnitState>(&kv.value).ok())
        .filter(|s| s.name == name)
        .min_by(|a, b| a.machine_id.cmp(&b.machine_id));
    match first {
        Some(s) => Json(s).into_response(),
        None => error(StatusCode::NOT_FOUND, "unit state does not exist"),
    }
}

#[derive(Deserialize, Default)]
struct UnitQuery {
    #[serde(rename = "machineID")]
    machine_id: Option<String>,
    lines: Option<u32>,
}

/// Which machine answers for `name`: the one asked for, the one it is scheduled to, or the only
/// one reporting it.
#[allow(clippy::result_large_err)]
async fn unit_machine<S: Systemd>(
    st: &ApiState<S>,
    name: &str,
    asked: Option<String>,
) -> Result<String, Response> {
    if let Some(m) = asked {
        return Ok(m);
    }
    let reg = read_registry(&st.client, &st.keys)
        .await
        .map_err(store_error)?;
    if !reg.units.contains_key(name) {
        return Err(error(StatusCode::NOT_FOUND, "unit does not exist"));
    }
    if let Some(m) = reg.schedule.get(name) {
        return Ok(m.clone());
    }
    let on: Vec<&UnitState> = reg.states.iter().filter(|s| s.name == name).collect();
    match on.as_slice() {
        [] => Err(error(
            StatusCode::CONFLICT,
            "unit is not running on any machine",
        )),
        [one] => Ok(one.machine_id.clone()),
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            "unit runs on several machines (global); give machineID",
        )),
    }
}

/// Answers locally, or forwards to the machine's fleetd.
async fn on_machine<S: Systemd>(
    st: &ApiState<S>,
    name: &str,
    q: UnitQuery,
    what: &str,
) -> Response {
    crate::metrics::API_REQUESTS.inc();
    if let Err(e) = unit::validate_name(name) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    let lines = q.lines.unwrap_or(10).min(10_000);
    let machine = match unit_machine(st, name, q.machine_id).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    if machine == st.me.id {
        let res = if what == "status" {
            st.sd.status(name).await
        } else {
            st.sd.journal(name, lines).await
        };
        return match res {
            Ok(text) => text.into_response(),
            Err(e) => error(StatusCode::BAD_GATEWAY, e.to_string()),
        };
    }
    let rec = match st.client.get(&st.keys.machine(&machine)).await {
        Ok(Some(kv)) => serde_json::from_slice::<Machine>(&kv.value).ok(),
        Ok(None) => None,
        Err(e) => return store_error(e),
    };
    let Some(rec) = rec else {
        return error(
            StatusCode::NOT_FOUND,
            format!("machine {machine} is not in the cluster"),
        );
    };
    let Some(url) = rec.api_url else {
        return error(
            StatusCode::BAD_GATEWAY,
            format!("machine {machine} does not serve the fleet API over TCP (--listen-tcp)"),
        );
    };
    let ep: Endpoint = match url.parse() {
        Ok(ep) => ep,
        Err(e) => return error(StatusCode::BAD_GATEWAY, e),
    };
    let path = format!("/fleet/v1/units/{name}/{what}?machineID={machine}&lines={lines}");
    match ep
        .request_with(
            st.peer_tls.as_ref(),
            "GET",
            &path,
            None,
            Duration::from_secs(10),
        )
        .await
    {
        Ok(r) => {
            let code = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
            (
                code,
                [("content-type", "text/plain; charset=utf-8")],
                r.body,
            )
                .into_response()
        }
        Err(e) => error(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

async fn unit_status<S: Systemd>(
    State(st): State<Arc<ApiState<S>>>,
    Path(name): Path<String>,
    Query(q): Query<UnitQuery>,
) -> Response {
    on_machine(&st, &name, q, "status").await
}

async fn unit_journal<S: Systemd>(
    State(st): State<Arc<ApiState<S>>>,
    Path(name): Path<String>,
    Query(q): Query<UnitQuery>,
) -> Response {
    on_machine(&st, &name, q, "journal").await
}

async fn health<S: Systemd>(State(st): State<Arc<ApiState<S>>>) -> Response {
    match st.client.get(&st.keys.engine_leader()).await {
        Ok(_) => Json(serde_json::json!({"health": "true"})).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"health": "false", "reason": e.to_string()})),
        )
            .into_response(),
    }
}
