//! Admin API routes for Bester users (spec §5), mounted under `/api` by `admin::router`
//! behind the same bearer-token check:
//!
//! | route | body | answer |
//! |---|---|---|
//! | `GET /api/bester/users` | | 200 `[{"username", "created_at", "password_changed_at", "last_login_at", "connections"}]` |
//! | `POST /api/bester/users` | `{"username", "password"}` | 201 `{"username"}`; 409 if taken |
//! | `PUT /api/bester/users/{name}/password` | `{"password"}` | 204; 404 |
//! | `DELETE /api/bester/users/{name}` | | 204 (the user's connections are closed); 404 |

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::admin::AdminError;
use crate::doors::bester::Ctx;
use crate::doors::bester::auth::{self, AuthError, Username};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    username: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPassword {
    password: String,
}

fn body<T: serde::de::DeserializeOwned>(bytes: &Bytes) -> Result<T, AdminError> {
    serde_json::from_slice(bytes)
        .map_err(|e| AdminError::BadRequest(format!("invalid JSON body: {e}")))
}

fn internal(e: AuthError) -> Response {
    match e {
        AuthError::Store(e) => AdminError::from(e).into_response(),
        AuthError::Busy => {
            tracing::warn!("bester user admin refused: every password hashing slot is busy");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(axum::http::header::RETRY_AFTER, "1")],
                Json(json!({ "error": "password hashing is busy; try again" })),
            )
                .into_response()
        }
        other => {
            tracing::error!(error = %other, "bester user admin failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({ "error": "internal error" })),
            )
                .into_response()
        }
    }
}

fn username(name: &str) -> Result<Username, AdminError> {
    Username::parse(name).ok_or_else(|| {
        AdminError::BadRequest(format!(
            "username must be 1-{} chars of A-Za-z0-9._-",
            auth::MAX_USERNAME
        ))
    })
}

/// `GET /api/bester/users`
pub async fn list_users(State(door): State<Arc<Ctx>>) -> Result<Json<Value>, AdminError> {
    let users = door.store.list_bester_users().await?;
    // Connections on every node; this node's alone while the cluster is unreachable.
    let devices = match door.fabric.devices().await {
        Ok(all) => all,
        Err(_) => door.registry.devices(),
    };
    let out: Vec<Value> = users
        .into_iter()
        .map(|u| {
            let connections = devices
                .iter()
                .filter(|d| d.user.as_deref() == Some(u.username.as_str()))
                .count();
            let mut v = serde_json::to_value(&u).unwrap_or_else(|_| json!({}));
            if let Some(obj) = v.as_object_mut() {
                obj.insert("connections".into(), json!(connections));
            }
            v
        })
        .collect();
    Ok(Json(Value::Array(out)))
}

/// `POST /api/bester/users`
pub async fn add_user(State(door): State<Arc<Ctx>>, bytes: Bytes) -> Response {
    let new: NewUser = match body(&bytes) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let name = match username(&new.username) {
        Ok(n) => n,
        Err(e) => return e.into_response(),
    };
    if let Err(reason) = auth::check_new_password(&new.password) {
        return AdminError::BadRequest(reason).into_response();
    }
    let hash = match auth::hash(&door.bester.hashing, &new.password).await {
        Ok(h) => h,
        Err(e) => return internal(e),
    };
    match door.store.create_bester_user(name.as_str(), &hash).await {
        Ok(true) => {
            tracing::info!(user = %name, "bester user added");
            (
                StatusCode::CREATED,
                Json(json!({ "username": name.as_str() })),
            )
                .into_response()
        }
        Ok(false) => (
            StatusCode::CONFLICT,
            Json(json!({ "error": "user already exists" })),
        )
            .into_response(),
        Err(e) => AdminError::Internal(e).into_response(),
    }
}

/// `PUT /api/bester/users/{name}/password`: takes effect at the user's next login.
pub async fn set_password(
    State(door): State<Arc<Ctx>>,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Response {
    let new: NewPassword = match body(&bytes) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    if let Err(reason) = auth::check_new_password(&new.password) {
        return AdminError::BadRequest(reason).into_response();
    }
    if Username::parse(&name).is_none() {
        return AdminError::NotFound("user not found").into_response();
    }
    let hash = match auth::hash(&door.bester.hashing, &new.password).await {
        Ok(h) => h,
        Err(e) => return internal(e),
    };
    match door.store.set_bester_password(&name, &hash).await {
        Ok(true) => {
            tracing::info!(user = %name, "bester password set by admin");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => AdminError::NotFound("user not found").into_response(),
        Err(e) => AdminError::Internal(e).into_response(),
    }
}

/// `DELETE /api/bester/users/{name}`: removes the user and closes its connections.
pub async fn remove_user(
    State(door): State<Arc<Ctx>>,
    Path(name): Path<String>,
) -> Result<StatusCode, AdminError> {
    if Username::parse(&name).is_none() {
        return Err(AdminError::NotFound("user not found"));
    }
    if !door.store.delete_bester_user(&name).await? {
        return Err(AdminError::NotFound("user not found"));
    }
    let closed = door.fabric.kick_user(&name).await?;
    tracing::info!(user = %name, closed, "bester user removed");
    Ok(StatusCode::NO_CONTENT)
}
