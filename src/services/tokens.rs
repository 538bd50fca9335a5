//! Device tokens: issuing and revoking. Revocation marks the keyring before it closes the
//! token's live connections on every door, so a connection admitted meanwhile finds the
//! mark itself (`doors::admission::connect`).

use super::{Hub, ServiceError};
use crate::domain::DeviceName;
use crate::store::TokenRecord;

/// Issues a signed token for `device`, valid for `ttl_secs`. The token itself is returned
/// once and never stored; the store keeps its id, device and expiry.
pub async fn issue(
    hub: &Hub,
    device: &DeviceName,
    ttl_secs: u64,
) -> Result<(String, TokenRecord), ServiceError> {
    let now = time::OffsetDateTime::now_utc();
    let (token, claims) = hub
        .keyring
        .issue(device.as_str(), now.unix_timestamp(), ttl_secs);
    let expires_at = time::OffsetDateTime::from_unix_timestamp(claims.exp)
        .map(crate::domain::format_ts)
        .unwrap_or_else(|_| "9999-12-31T23:59:59.000Z".to_owned());
    let record = hub
        .store
        .record_token(&claims.jti, device.as_str(), &expires_at)
        .await?;
    tracing::info!(device = %device, id = %record.id, "device token issued");
    Ok((token, record))
}

/// Revokes token `id` and closes (1001) every live connection admitted with it. `None` if
/// no such token was issued; else the token and how many connections were closed.
pub async fn revoke(hub: &Hub, id: &str) -> Result<Option<(TokenRecord, usize)>, ServiceError> {
    let tokens = hub.store.list_tokens().await?;
    let Some(record) = tokens.into_iter().find(|t| t.id == id) else {
        return Ok(None);
    };
    hub.store.revoke_token(id).await?;
    hub.keyring.revoke(id);
    let closed = hub.fabric.disconnect_token(id).await?;
    tracing::info!(device = %record.device, %id, closed, "device token revoked");
    Ok(Some((record, closed)))
}
