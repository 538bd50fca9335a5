//! The admin HTTP JSON API under `/api` (spec §5), used by administrators and the
//! `homehub` CLI.
//!
//! Every route needs `Authorization: Bearer <HOMEHUB_ADMIN_TOKEN>`. With no token
//! configured the API answers only clients on a loopback address (so a fresh install is
//! usable locally and closed to the network).

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

use crate::channels::lock::topic as lock_topic;
use crate::domain::{DeviceName, ItemKind, LockRecord};
use crate::hub::Hub;
use crate::protocol::OutPayload;
use crate::registry::Outbound;
use crate::store::StoreError;

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
    /// 500: logged; the client sees a generic message.
    #[error("internal error")]
    Internal(#[from] StoreError),
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match &self {
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::Forbidden => StatusCode::FORBIDDEN,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::Internal(e) => {
                tracing::error!(error = %e, "admin request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let mut resp = (status, Json(json!({ "error": self.to_string() }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// `GET /metrics` (Prometheus text format), behind the same authorization as `/api`.
pub fn metrics_router(hub: Arc<Hub>) -> Router<Arc<Hub>> {
    Router::new()
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(hub, authorize))
}

async fn metrics(State(hub): State<Arc<Hub>>) -> Response {
    let body = hub.metrics.render(
        hub.registry.connection_count(),
        hub.bester.sessions.len(),
        hub.store.lock_join_known_hits(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

pub fn router(hub: Arc<Hub>) -> Router<Arc<Hub>> {
    Router::new()
        .route("/locks", get(list_locks))
        .route("/locks/{serial}", get(show_lock))
        .route("/locks/{serial}/state", put(set_state))
        .route("/locks/{serial}/pair", post(start_pairing))
        .route("/pairings", get(list_pairings))
        .route("/devices", get(list_devices))
        .route("/devices/{name}/disconnect", post(disconnect_device))
        .route("/locks/{serial}/holder", put(set_holder))
        .route("/tokens", get(list_tokens).post(issue_token))
        .route("/tokens/{id}", axum::routing::delete(revoke_token))
        .route(
            "/bester/users",
            get(crate::bester::admin::list_users).post(crate::bester::admin::add_user),
        )
        .route(
            "/bester/users/{name}",
            axum::routing::delete(crate::bester::admin::remove_user),
        )
        .route(
            "/bester/users/{name}/password",
            put(crate::bester::admin::set_password),
        )
        .layer(middleware::from_fn_with_state(hub, authorize))
}

async fn authorize(
    State(hub): State<Arc<Hub>>,
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
    let allowed = match (&hub.config.admin_token, given) {
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
}

fn view(hub: &Hub, lock: LockRecord) -> LockView {
    let online = hub.registry.has_subscribers(&lock_topic(&lock.serial));
    LockView { lock, online }
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
async fn list_locks(State(hub): State<Arc<Hub>>) -> Result<Json<Vec<LockView>>, AdminError> {
    let locks = hub.store.list_locks().await?;
    Ok(Json(locks.into_iter().map(|l| view(&hub, l)).collect()))
}

/// `GET /api/locks/{serial}`
async fn show_lock(
    State(hub): State<Arc<Hub>>,
    Path(serial): Path<String>,
) -> Result<Json<LockView>, AdminError> {
    let lock = hub
        .store
        .get_lock(&serial)
        .await?
        .ok_or(AdminError::NotFound("lock not found"))?;
    Ok(Json(view(&hub, lock)))
}

/// `PUT /api/locks/{serial}/state`: stores the intended state and pushes `state` to the
/// lock's channel.
async fn set_state(
    State(hub): State<Arc<Hub>>,
    Path(serial): Path<String>,
    body: Bytes,
) -> Result<Json<LockView>, AdminError> {
    let state: Value = json_body(&body)?;
    if !state.is_object() {
        return Err(AdminError::BadRequest("state must be a JSON object".into()));
    }
    let lock = match hub.store.set_intended_state(&serial, &state).await {
        Ok(lock) => lock,
        Err(StoreError::LockNotFound) => return Err(AdminError::NotFound("lock not found")),
        Err(e) => return Err(e.into()),
    };
    let delivered = hub.registry.push_topic(
        &lock_topic(&serial),
        "state",
        OutPayload::Json(state.to_string()),
    );
    tracing::info!(%serial, delivered, "intended state changed");
    Ok(Json(view(&hub, lock)))
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
    State(hub): State<Arc<Hub>>,
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
    let ttl = body.ttl_secs.unwrap_or(hub.config.pair_ttl_secs);
    if ttl == 0 || ttl > MAX_PAIR_TTL_SECS {
        return Err(AdminError::BadRequest(format!(
            "ttl_secs must be 1-{MAX_PAIR_TTL_SECS}"
        )));
    }
    let request = match hub
        .store
        .create_pairing(&serial, &name, kind, Duration::from_secs(ttl))
        .await
    {
        Ok(r) => r,
        Err(StoreError::LockNotFound) => return Err(AdminError::NotFound("lock not found")),
        Err(e) => return Err(e.into()),
    };
    let delivered = hub.registry.push_topic(
        &lock_topic(&serial),
        "mode:pair",
        OutPayload::Json(request.mode_pair_payload().to_string()),
    );
    tracing::info!(%serial, pair_id = %request.pair_id, delivered, "pairing started");
    let mut out = serde_json::to_value(&request).unwrap_or_else(|_| json!({}));
    if let Some(obj) = out.as_object_mut() {
        obj.insert("delivered".into(), json!(delivered > 0));
    }
    Ok((StatusCode::CREATED, Json(out)))
}

/// `GET /api/pairings`
async fn list_pairings(State(hub): State<Arc<Hub>>) -> Result<Json<Value>, AdminError> {
    let (requests, items) = hub.store.list_pairings().await?;
    Ok(Json(json!({ "requests": requests, "items": items })))
}

/// `GET /api/devices`: connected devices, their doors and joined topics, and the live
/// Bester connections (door `bester`, with the user they are logged in as).
async fn list_devices(State(hub): State<Arc<Hub>>) -> Json<Value> {
    let mut devices = hub.registry.devices();
    devices.extend(hub.bester.sessions.views());
    devices.sort_by(|a, b| a.name.cmp(&b.name));
    Json(json!({ "devices": devices }))
}

/// `POST /api/devices/{name}/disconnect`: the socket-id `disconnect` broadcast (§6):
/// closes the device's connection with 1001 (it will reconnect).
async fn disconnect_device(
    State(hub): State<Arc<Hub>>,
    Path(name): Path<String>,
) -> Result<StatusCode, AdminError> {
    let name = DeviceName::parse(&name).ok_or(AdminError::NotFound("device not connected"))?;
    if hub.registry.kick(&name) {
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
    State(hub): State<Arc<Hub>>,
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
    let lock = match hub
        .store
        .set_lock_holder(&serial, device.as_ref().map(DeviceName::as_str))
        .await
    {
        Ok(lock) => lock,
        Err(StoreError::LockNotFound) => return Err(AdminError::NotFound("lock not found")),
        Err(e) => return Err(e.into()),
    };
    tracing::info!(%serial, holder = ?lock.holder_device, "lock holder reassigned");
    if hub.config.auth == crate::config::AuthMode::Token {
        // Only the holder may have the lock's channel: other instances end (phx_close).
        let topic = Arc::new(lock_topic(&serial));
        for conn in hub.registry.subscribers(&topic) {
            if Some(conn.name.as_str()) != lock.holder_device.as_deref() {
                let _ = conn.send(Outbound::EndChannel(topic.clone()));
            }
        }
    }
    Ok(Json(view(&hub, lock)))
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
    State(hub): State<Arc<Hub>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), AdminError> {
    let body: TokenBody = json_body(&body)?;
    let device = DeviceName::parse(&body.device)
        .ok_or_else(|| AdminError::BadRequest("invalid device name".into()))?;
    let ttl = body.ttl_secs.unwrap_or(hub.config.token_ttl_secs);
    if ttl == 0 {
        return Err(AdminError::BadRequest("ttl_secs must be positive".into()));
    }
    let now = time::OffsetDateTime::now_utc();
    let (token, claims) = hub
        .keyring
        .issue(device.as_str(), now.unix_timestamp(), ttl);
    let expires_at = time::OffsetDateTime::from_unix_timestamp(claims.exp)
        .map(crate::domain::format_ts)
        .unwrap_or_else(|_| "9999-12-31T23:59:59.000Z".to_owned());
    let record = hub
        .store
        .record_token(&claims.jti, device.as_str(), &expires_at)
        .await?;
    tracing::info!(device = %device, id = %record.id, "device token issued");
    let mut out = serde_json::to_value(&record).unwrap_or_else(|_| json!({}));
    if let Some(obj) = out.as_object_mut() {
        obj.insert("token".into(), Value::String(token));
    }
    Ok((StatusCode::CREATED, Json(out)))
}

/// `GET /api/tokens`: issued tokens (ids, devices, expiry, revocation), never the tokens.
async fn list_tokens(State(hub): State<Arc<Hub>>) -> Result<Json<Value>, AdminError> {
    Ok(Json(json!({ "tokens": hub.store.list_tokens().await? })))
}

/// `DELETE /api/tokens/{id}`: revokes a token; a device connected under its name is
/// disconnected (its reconnect with the revoked token is refused).
async fn revoke_token(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
) -> Result<StatusCode, AdminError> {
    let tokens = hub.store.list_tokens().await?;
    let Some(record) = tokens.into_iter().find(|t| t.id == id) else {
        return Err(AdminError::NotFound("token not found"));
    };
    hub.store.revoke_token(&id).await?;
    hub.keyring.revoke(&id);
    // Connections of that device are closed; they cannot come back with this token.
    if let Some(name) = DeviceName::parse(&record.device) {
        hub.registry.kick(&name);
    }
    if let Some(conn) = hub.registry.relay.conn_of(&record.device) {
        conn.kill(crate::protocol::serializer::close_code::GOING_AWAY);
    }
    tracing::info!(device = %record.device, %id, "device token revoked");
    Ok(StatusCode::NO_CONTENT)
}
