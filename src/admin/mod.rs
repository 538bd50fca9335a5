//! The admin HTTP JSON API under `/api` (spec §5), used by administrators and the
//! `homehub` CLI.
//!
//! Every route needs `Authorization: Bearer <HOMEHUB_ADMIN_TOKEN>`. With no token
//! configured the API answers only clients on a loopback address (so a fresh install is
//! usable locally and closed to the network).

pub mod bester;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::core::{Fabric, Registry};
use crate::domain::{DeviceName, ItemKind, LockRecord};
use crate::metrics::Metrics;
use crate::services::locks::Locks;
use crate::services::tokens::Tokens;
use crate::services::{Hub, ServiceError};
use crate::store::{Store, StoreError};

/// Longest pairing request lifetime an administrator may ask for.
const MAX_PAIR_TTL_SECS: u64 = 86_400;
/// Longest label of a paired item.
const MAX_ITEM_NAME: usize = 128;

/// API errors; each becomes a status code and `{"error": message}`.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// 401: token missing or wrong.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// 403: no token configured and the client is not on loopback.
    #[error("admin API is only open to loopback clients when HOMEHUB_ADMIN_TOKEN is unset")]
    Forbidden,
    /// 404.
    #[error("{0}")]
    NotFound(&'static str),
    /// 400: the request body or parameters are invalid.
    #[error("{0}")]
    BadRequest(String),
    /// 409: the request conflicts with the resource's state.
    #[error("{0}")]
    Conflict(&'static str),
    /// 409: `If-Match` named another version of the lock's intended state than it has.
    #[error("intended state changed meanwhile: it is at version {0}")]
    StaleVersion(i64),
    /// 422: well-formed JSON with unknown fields, wrong types or values out of range.
    #[error("{0}")]
    Unprocessable(String),
    /// 500: logged; the client sees a generic message.
    #[error("internal error")]
    Internal(StoreError),
    /// 503: the database is out of reach or busy; the client may retry.
    #[error("store unavailable")]
    StoreUnavailable,
    /// 503: the fabric (the messaging between hub nodes) cannot carry the request.
    #[error("fabric unavailable")]
    Unavailable,
}

impl From<crate::core::DeliveryError> for AdminError {
    fn from(_: crate::core::DeliveryError) -> AdminError {
        AdminError::Unavailable
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> AdminError {
        match e {
            StoreError::Unavailable(cause) => {
                tracing::warn!(%cause, "admin request failed: store unavailable");
                AdminError::StoreUnavailable
            }
            e => AdminError::Internal(e),
        }
    }
}

impl From<ServiceError> for AdminError {
    fn from(e: ServiceError) -> AdminError {
        match e {
            ServiceError::Store(e) => e.into(),
            ServiceError::Unavailable => AdminError::Unavailable,
        }
    }
}

/// A lock service's error as the admin API answers it: an unknown lock is 404.
fn lock_error(e: ServiceError) -> AdminError {
    match e {
        ServiceError::Store(StoreError::LockNotFound) => AdminError::NotFound("lock not found"),
        ServiceError::Store(StoreError::VersionMismatch { current }) => {
            AdminError::StaleVersion(current)
        }
        e => e.into(),
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match &self {
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::Forbidden => StatusCode::FORBIDDEN,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::Conflict(_) | AdminError::StaleVersion(_) => StatusCode::CONFLICT,
            AdminError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AdminError::Internal(e) => {
                tracing::error!(error = %e, "admin request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            AdminError::Unavailable | AdminError::StoreUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        let mut body = json!({ "error": self.to_string() });
        if let AdminError::StaleVersion(current) = &self {
            body["intended_version"] = json!(current);
        }
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// What the admin routes reach: the hub's services, the registry (live connections), the
/// fabric (disconnects), metrics, and the Bester door (its users and connections). Each
/// handler extracts only the parts it uses (axum's `FromRef`); none sees the whole hub.
#[derive(Clone, axum::extract::FromRef)]
pub struct AdminState {
    pub store: Store,
    pub locks: Locks,
    pub tokens: Tokens,
    pub registry: Arc<Registry>,
    pub fabric: Arc<dyn Fabric>,
    pub metrics: Arc<Metrics>,
    pub access: Access,
    pub bester: Arc<crate::doors::bester::Ctx>,
}

impl AdminState {
    pub fn new(hub: &Hub, bester: Arc<crate::doors::bester::Ctx>) -> AdminState {
        AdminState {
            store: hub.store.clone(),
            locks: hub.locks.clone(),
            tokens: hub.tokens.clone(),
            registry: hub.registry.clone(),
            fabric: hub.fabric.clone(),
            metrics: hub.metrics.clone(),
            access: Access {
                admin_token: hub.config.admin_token.as_deref().map(Arc::from),
            },
            bester,
        }
    }
}

/// Who may use the admin API: the bearer token (`HOMEHUB_ADMIN_TOKEN`); with none, only
/// clients on loopback.
#[derive(Clone)]
pub struct Access {
    admin_token: Option<Arc<str>>,
}

/// `GET /metrics` (Prometheus text format), behind the same authorization as `/api`.
pub fn metrics_router(state: &AdminState) -> Router<AdminState> {
    Router::new()
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(
            state.access.clone(),
            authorize,
        ))
}

async fn metrics(
    State(metrics): State<Arc<Metrics>>,
    State(registry): State<Arc<Registry>>,
    State(store): State<Store>,
    State(fabric): State<Arc<dyn Fabric>>,
) -> Response {
    let mut body = metrics.render(
        &registry.connections_by_door(),
        store.lock_join_known_hits(),
    );
    fabric.render_metrics(&mut body);
    // From the database, so every node of a cluster shows the same figure; absent while
    // the store does not answer.
    if let Ok(Ok(n)) =
        tokio::time::timeout(std::time::Duration::from_secs(2), store.count_drifting()).await
    {
        body.push_str(
            "# HELP homehub_locks_drifting locks that did not report a pushed intended state in time (HOMEHUB_STATE_DRIFT_MS)\n\
             # TYPE homehub_locks_drifting gauge\n",
        );
        body.push_str(&format!("homehub_locks_drifting {n}\n"));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// `GET /health/live` (the process answers) and `GET /health/ready` (it can serve: the
/// database answers and, on a cluster node, NATS is reachable), for load balancers and
/// orchestrators; no authorization, no secrets.
pub fn health_router() -> Router<AdminState> {
    Router::new()
        .route(
            "/health/live",
            get(|| async { Json(json!({ "live": true })) }),
        )
        .route("/health/ready", get(ready))
}

async fn ready(State(store): State<Store>, State(fabric): State<Arc<dyn Fabric>>) -> Response {
    let database = tokio::time::timeout(std::time::Duration::from_secs(2), store.ping())
        .await
        .is_ok_and(|r| r.is_ok());
    let cluster = fabric.cluster();
    let ready = database && cluster.connected;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "database": database,
        "cluster": if cluster.clustered { json!(cluster.connected) } else { Value::Null },
    });
    (status, Json(body)).into_response()
}

pub fn router(state: &AdminState) -> Router<AdminState> {
    Router::new()
        .route("/cluster", get(show_cluster))
        .route("/locks", get(list_locks))
        .route("/locks/{serial}", get(show_lock).patch(update_lock))
        .route("/locks/{serial}/state", put(set_state))
        .route("/locks/{serial}/pair", post(start_pairing))
        .route("/pairings", get(list_pairings))
        .route("/pairings/{pair_id}", axum::routing::delete(cancel_pairing))
        .route("/devices", get(list_devices))
        .route("/devices/{name}/disconnect", post(disconnect_device))
        .route("/locks/{serial}/holder", put(set_holder))
        .route("/tokens", get(list_tokens).post(issue_token))
        .route("/tokens/{id}", axum::routing::delete(revoke_token))
        .route(
            "/bester/users",
            get(crate::admin::bester::list_users).post(crate::admin::bester::add_user),
        )
        .route(
            "/bester/users/{name}",
            axum::routing::delete(crate::admin::bester::remove_user),
        )
        .route(
            "/bester/users/{name}/password",
            put(crate::admin::bester::set_password),
        )
        .layer(middleware::from_fn_with_state(
            state.access.clone(),
            authorize,
        ))
}

async fn authorize(
    State(access): State<Access>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let allowed = match (&access.admin_token, given) {
        (Some(expected), Some(given)) => {
            crate::auth::constant_time_eq(given.as_bytes(), expected.as_bytes())
        }
        (Some(_), None) => false,
        (None, _) if peer.ip().is_loopback() => true,
        (None, _) => {
            tracing::warn!(%peer, "admin request refused: no token configured and peer not on loopback");
            return AdminError::Forbidden.into_response();
        }
    };
    if !allowed {
        tracing::warn!(%peer, path = %req.uri().path(), "admin request refused: bad token");
        return AdminError::Unauthorized.into_response();
    }
    next.run(req).await
}

/// A lock as the API shows it.
#[derive(Debug, Serialize)]
pub struct LockView {
    #[serde(flatten)]
    pub lock: LockRecord,
    /// Whether a connection has the lock's channel joined right now.
    pub online: bool,
    /// Whether the lock's last report is its intended state.
    pub agrees: bool,
    /// Whether the lock did not report a pushed intended state in time (`drifting_since`).
    pub drifting: bool,
}

impl LockView {
    fn new(lock: LockRecord, online: bool) -> LockView {
        LockView {
            agrees: lock.agrees(),
            drifting: lock.drifting_since.is_some(),
            online,
            lock,
        }
    }
}

async fn view(locks: &Locks, lock: LockRecord) -> LockView {
    let online = locks.online(&lock.serial).await;
    LockView::new(lock, online)
}

/// A lock with its intended state's version as the `ETag` (`If-Match` takes it back).
fn tagged(view: LockView) -> Response {
    let tag = format!("\"{}\"", view.lock.intended_version);
    let mut resp = Json(view).into_response();
    if let Ok(value) = header::HeaderValue::from_str(&tag) {
        resp.headers_mut().insert(header::ETAG, value);
    }
    resp
}

/// The version an `If-Match` header asks for: `"3"` or `3`; `*` or no header is any.
fn if_match(headers: &axum::http::HeaderMap) -> Result<Option<i64>, AdminError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| AdminError::BadRequest("If-Match must be a version number".into()))?
        .trim();
    if text == "*" {
        return Ok(None);
    }
    text.trim_start_matches("W/")
        .trim_matches('"')
        .parse::<i64>()
        .map(Some)
        .map_err(|_| {
            AdminError::BadRequest(
                "If-Match must be the lock's intended_version (its ETag), e.g. \"3\"".into(),
            )
        })
}

/// Parses a JSON body; an empty body is `{}`.
fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, AdminError> {
    let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(text)
        .map_err(|e| AdminError::BadRequest(format!("invalid JSON body: {e}")))
}

/// `GET /api/locks`
async fn list_locks(
    State(store): State<Store>,
    State(locks): State<Locks>,
) -> Result<Json<Vec<LockView>>, AdminError> {
    let all = store.list_locks().await?;
    let elsewhere = locks.online_elsewhere().await;
    Ok(Json(
        all.into_iter()
            .map(|lock| {
                let on = locks.online_here(&lock.serial) || elsewhere.contains(&lock.serial);
                LockView::new(lock, on)
            })
            .collect(),
    ))
}

/// `GET /api/locks/{serial}`
async fn show_lock(
    State(store): State<Store>,
    State(locks): State<Locks>,
    Path(serial): Path<String>,
) -> Result<Response, AdminError> {
    let lock = store
        .get_lock(&serial)
        .await?
        .ok_or(AdminError::NotFound("lock not found"))?;
    Ok(tagged(view(&locks, lock).await))
}

/// `PUT /api/locks/{serial}/state`: stores the intended state and pushes `state` to the
/// lock's channel.
async fn set_state(
    State(locks): State<Locks>,
    Path(serial): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, AdminError> {
    let expected = if_match(&headers)?;
    let state: Value = json_body(&body)?;
    if !state.is_object() {
        return Err(AdminError::BadRequest("state must be a JSON object".into()));
    }
    // Pushed only to lock instances that joined with `{"accepts": ["state"]}`; any other
    // lock gets its intended state in its next join or `reset` reply.
    let (lock, _) = locks
        .set_state(&serial, &state, expected)
        .await
        .map_err(lock_error)?;
    Ok(tagged(view(&locks, lock).await))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PairBody {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    ttl_secs: Option<u64>,
}

/// `POST /api/locks/{serial}/pair`: creates a pairing request and pushes `mode:pair`.
async fn start_pairing(
    State(locks): State<Locks>,
    Path(serial): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), AdminError> {
    let body: PairBody = json_body(&body)?;
    let kind = match body.kind.as_deref() {
        None => ItemKind::Tag,
        Some(k) => ItemKind::parse(k).ok_or_else(|| {
            AdminError::BadRequest("type must be \"tag\" or \"mobile_phone\"".into())
        })?,
    };
    let name = body
        .name
        .unwrap_or_else(|| format!("new {}", kind.as_str()));
    if name.is_empty() || name.len() > MAX_ITEM_NAME {
        return Err(AdminError::BadRequest(format!(
            "name must be 1-{MAX_ITEM_NAME} bytes"
        )));
    }
    let ttl = body.ttl_secs.unwrap_or(locks.default_pair_ttl().as_secs());
    if ttl == 0 || ttl > MAX_PAIR_TTL_SECS {
        return Err(AdminError::BadRequest(format!(
            "ttl_secs must be 1-{MAX_PAIR_TTL_SECS}"
        )));
    }
    let (request, delivered) = locks
        .start_pairing(&serial, &name, kind, Duration::from_secs(ttl))
        .await
        .map_err(lock_error)?;
    let mut out = serde_json::to_value(&request).unwrap_or_else(|_| json!({}));
    if let Some(obj) = out.as_object_mut() {
        obj.insert("delivered".into(), json!(delivered));
    }
    Ok((StatusCode::CREATED, Json(out)))
}

/// `DELETE /api/pairings/{pair_id}`: cancels a pending pairing request; it is not pushed
/// again and the lock's `pair:complete` for it is refused. 409 if already completed or
/// cancelled.
async fn cancel_pairing(
    State(locks): State<Locks>,
    Path(pair_id): Path<String>,
) -> Result<Json<crate::domain::PairingRequest>, AdminError> {
    match locks.cancel_pairing(&pair_id).await {
        Ok(request) => Ok(Json(request)),
        Err(ServiceError::Store(StoreError::PairingNotFound)) => {
            Err(AdminError::NotFound("pairing request not found"))
        }
        Err(ServiceError::Store(StoreError::PairingClosed)) => Err(AdminError::Conflict(
            "pairing request already completed or cancelled",
        )),
        Err(e) => Err(e.into()),
    }
}

/// `PATCH /api/locks/{serial}` body: every field optional, nothing else allowed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LockPatchBody {
    name: Option<String>,
    mode: Option<i64>,
    feature_flags: Option<Vec<String>>,
    config: Option<serde_json::Map<String, Value>>,
}

/// Most feature flags of one lock, and the longest flag.
const MAX_FLAGS: usize = 32;
const MAX_FLAG_LEN: usize = 64;
/// Longest lock name.
const MAX_LOCK_NAME: usize = 128;

/// Parses a PATCH body: invalid JSON is 400; unknown fields and wrong types are 422.
fn patch_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, AdminError> {
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => AdminError::Unprocessable(e.to_string()),
        _ => AdminError::BadRequest(format!("invalid JSON body: {e}")),
    })
}

impl LockPatchBody {
    fn validate(self) -> Result<crate::store::LockPatch, AdminError> {
        let bad = |m: String| Err(AdminError::Unprocessable(m));
        if let Some(name) = &self.name
            && (name.trim().is_empty() || name.len() > MAX_LOCK_NAME)
        {
            return bad(format!("name must be 1-{MAX_LOCK_NAME} bytes"));
        }
        if let Some(mode) = self.mode
            && !(1..=3).contains(&mode)
        {
            return bad("mode must be 1 (internal), 2 (external) or 3 (pairing)".into());
        }
        if let Some(flags) = &self.feature_flags
            && (flags.len() > MAX_FLAGS
                || flags.iter().any(|f| f.is_empty() || f.len() > MAX_FLAG_LEN))
        {
            return bad(format!(
                "feature_flags must be at most {MAX_FLAGS} strings of 1-{MAX_FLAG_LEN} bytes"
            ));
        }
        if self.name.is_none()
            && self.mode.is_none()
            && self.feature_flags.is_none()
            && self.config.is_none()
        {
            return bad("nothing to change: give name, mode, feature_flags or config".into());
        }
        Ok(crate::store::LockPatch {
            name: self.name,
            mode: self.mode,
            feature_flags: self.feature_flags,
            config: self.config,
        })
    }
}

/// `PATCH /api/locks/{serial}` `{"name"?, "mode"?, "feature_flags"?, "config"?}`: changes the
/// lock's record. The lock firmware reads its record only in the join and `reset` replies,
/// so the answer says the change `takes_effect` at the lock's next join or reset.
async fn update_lock(
    State(store): State<Store>,
    State(locks): State<Locks>,
    Path(serial): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, AdminError> {
    let patch = patch_body::<LockPatchBody>(&body)?.validate()?;
    let lock = match store.update_lock(&serial, &patch).await {
        Ok(lock) => lock,
        Err(StoreError::LockNotFound) => return Err(AdminError::NotFound("lock not found")),
        Err(e) => return Err(e.into()),
    };
    tracing::info!(%serial, name = %lock.name, mode = lock.mode, flags = ?lock.feature_flags, "lock record changed");
    let mut out = serde_json::to_value(view(&locks, lock).await).unwrap_or_else(|_| json!({}));
    if let Some(obj) = out.as_object_mut() {
        obj.insert("takes_effect".into(), json!("next join or reset"));
    }
    Ok(Json(out))
}

/// `GET /api/pairings`
async fn list_pairings(State(store): State<Store>) -> Result<Json<Value>, AdminError> {
    let (requests, items) = store.list_pairings().await?;
    Ok(Json(json!({ "requests": requests, "items": items })))
}

/// `GET /api/devices`: connected devices, their doors and joined topics, and the live
/// Bester connections (door `bester`, with the user they are logged in as).
/// `GET /api/devices`: every live connection of every node (each with its `node` on a
/// cluster).
async fn list_devices(State(fabric): State<Arc<dyn Fabric>>) -> Result<Json<Value>, AdminError> {
    let devices = fabric.devices().await?;
    Ok(Json(json!({ "devices": devices })))
}

/// `GET /api/cluster`: this node, whether it reaches the others, and every node it sees.
async fn show_cluster(State(fabric): State<Arc<dyn Fabric>>) -> Json<crate::core::ClusterView> {
    Json(fabric.cluster())
}

/// `POST /api/devices/{name}/disconnect`: the socket-id `disconnect` broadcast (§6):
/// closes the device's connection with 1001 (it will reconnect).
async fn disconnect_device(
    State(fabric): State<Arc<dyn Fabric>>,
    Path(name): Path<String>,
) -> Result<StatusCode, AdminError> {
    let name = DeviceName::parse(&name).ok_or(AdminError::NotFound("device not connected"))?;
    if fabric.disconnect_device(&name).await? {
        tracing::info!(device = %name, "device disconnected by admin");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AdminError::NotFound("device not connected"))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HolderBody {
    device: Option<String>,
}

/// `PUT /api/locks/{serial}/holder` `{"device": name | null}`: reassigns (or frees) a lock.
/// In token mode only the holder may join a held lock.
async fn set_holder(
    State(locks): State<Locks>,
    Path(serial): Path<String>,
    body: Bytes,
) -> Result<Json<LockView>, AdminError> {
    let body: HolderBody = json_body(&body)?;
    let device = match body.device.as_deref() {
        None => None,
        Some(d) => Some(
            DeviceName::parse(d)
                .ok_or_else(|| AdminError::BadRequest("invalid device name".into()))?,
        ),
    };
    let lock = locks
        .set_holder(&serial, device.as_ref())
        .await
        .map_err(lock_error)?;
    Ok(Json(view(&locks, lock).await))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    device: String,
    ttl_secs: Option<u64>,
}

/// `POST /api/tokens` `{"device", "ttl_secs"?}`: issues a signed device token. The token
/// itself is returned once and never stored.
async fn issue_token(
    State(tokens): State<Tokens>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), AdminError> {
    let body: TokenBody = json_body(&body)?;
    let device = DeviceName::parse(&body.device)
        .ok_or_else(|| AdminError::BadRequest("invalid device name".into()))?;
    let ttl = body.ttl_secs.unwrap_or(tokens.default_ttl().as_secs());
    if ttl == 0 {
        return Err(AdminError::BadRequest("ttl_secs must be positive".into()));
    }
    let (token, record) = tokens.issue(&device, ttl).await?;
    let mut out = serde_json::to_value(&record).unwrap_or_else(|_| json!({}));
    if let Some(obj) = out.as_object_mut() {
        obj.insert("token".into(), Value::String(token));
    }
    Ok((StatusCode::CREATED, Json(out)))
}

/// `GET /api/tokens`: issued tokens (ids, devices, expiry, revocation), never the tokens.
async fn list_tokens(State(store): State<Store>) -> Result<Json<Value>, AdminError> {
    Ok(Json(json!({ "tokens": store.list_tokens().await? })))
}

/// `DELETE /api/tokens/{id}`: revokes a token and closes (1001) every live connection
/// admitted with it, on every door (Phoenix WebSocket and long-poll, raw relay,
/// Compendium); their reconnects with it are refused. Connections of the same device
/// admitted with another token stay.
async fn revoke_token(
    State(tokens): State<Tokens>,
    Path(id): Path<String>,
) -> Result<StatusCode, AdminError> {
    match tokens.revoke(&id).await? {
        Some(_) => {}
        None => return Err(AdminError::NotFound("token not found")),
    }
    Ok(StatusCode::NO_CONTENT)
}
