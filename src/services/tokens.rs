//! Device tokens: issuing and revoking. Revocation marks the keyring before it closes the
//! token's live connections on every door, so a connection admitted meanwhile finds the
//! mark itself (`doors::admission::connect`).

use std::sync::Arc;
use std::time::Duration;

use super::ServiceError;
use crate::auth::Keyring;
use crate::core::Fabric;
use crate::domain::DeviceName;
use crate::store::{Store, TokenRecord};

/// Issuing and revoking device tokens, on the store (records), the keyring (signing,
/// revocations) and the fabric (closing a revoked token's connections). Cheap to clone.
#[derive(Clone)]
pub struct Tokens {
    store: Store,
    keyring: Arc<Keyring>,
    fabric: Arc<dyn Fabric>,
    ttl: Duration,
}

impl Tokens {
    pub fn new(
        store: Store,
        keyring: Arc<Keyring>,
        fabric: Arc<dyn Fabric>,
        ttl: Duration,
    ) -> Tokens {
        Tokens {
            store,
            keyring,
            fabric,
            ttl,
        }
    }

    /// How long a token lives when the admin gives no `ttl_secs` (`HOMEHUB_TOKEN_TTL_SECS`).
    pub fn default_ttl(&self) -> Duration {
        self.ttl
    }

    /// Issues a signed token for `device`, valid for `ttl_secs`. The token itself is returned
    /// once and never stored; the store keeps its id, device and expiry.
    pub async fn issue(
        &self,
        device: &DeviceName,
        ttl_secs: u64,
    ) -> Result<(String, TokenRecord), ServiceError> {
        let now = time::OffsetDateTime::now_utc();
        let (token, claims) = self
            .keyring
            .issue(device.as_str(), now.unix_timestamp(), ttl_secs);
        let expires_at = time::OffsetDateTime::from_unix_timestamp(claims.exp)
            .map(crate::domain::format_ts)
            .unwrap_or_else(|_| "9999-12-31T23:59:59.000Z".to_owned());
        let record = self
            .store
            .record_token(&claims.jti, device.as_str(), &expires_at)
            .await?;
        tracing::info!(device = %device, id = %record.id, "device token issued");
        Ok((token, record))
    }

    /// Revokes token `id` and closes (1001) every live connection admitted with it. `None` if
    /// no such token was issued; else the token and how many connections were closed.
    pub async fn revoke(&self, id: &str) -> Result<Option<(TokenRecord, usize)>, ServiceError> {
        let tokens = self.store.list_tokens().await?;
        let Some(record) = tokens.into_iter().find(|t| t.id == id) else {
            return Ok(None);
        };
        self.store.revoke_token(id).await?;
        self.keyring.revoke(id);
        let closed = self.fabric.disconnect_token(id).await?;
        tracing::info!(device = %record.device, %id, closed, "device token revoked");
        Ok(Some((record, closed)))
    }
}
