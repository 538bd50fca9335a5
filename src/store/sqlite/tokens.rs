//! SQL for device tokens, the token-signing key, and lock holders (token mode).

use sqlx::Row;

use super::{SqliteStore, StoreError, lock_from_row};
use crate::domain::{LockRecord, now_rfc3339};
use crate::store::TokenRecord;

impl SqliteStore {
    /// The key that signs device tokens: created (32 random bytes, hex) on first use and
    /// kept in `hub_settings`, so tokens survive restarts.
    pub async fn token_key(&self) -> Result<Vec<u8>, StoreError> {
        let fresh = format!(
            "{:032x}{:032x}",
            rand::random::<u128>(),
            rand::random::<u128>()
        );
        sqlx::query("INSERT INTO hub_settings (key, value) VALUES ('token_key', ?1) ON CONFLICT (key) DO NOTHING")
            .bind(&fresh)
            .execute(&self.pool)
            .await?;
        let row = sqlx::query("SELECT value FROM hub_settings WHERE key = 'token_key'")
            .fetch_one(&self.pool)
            .await?;
        let value: String = row.try_get("value")?;
        Ok(value.into_bytes())
    }

    /// Records an issued token.
    pub async fn record_token(
        &self,
        id: &str,
        device: &str,
        expires_at: &str,
    ) -> Result<TokenRecord, StoreError> {
        let issued_at = now_rfc3339();
        sqlx::query(
            "INSERT INTO device_tokens (id, device, issued_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(id)
        .bind(device)
        .bind(&issued_at)
        .bind(expires_at)
        .execute(&self.pool)
        .await?;
        Ok(TokenRecord {
            id: id.to_owned(),
            device: device.to_owned(),
            issued_at,
            expires_at: expires_at.to_owned(),
            revoked_at: None,
        })
    }

    /// Revokes a token by id; `false` if no such token was issued.
    pub async fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE device_tokens SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
        )
        .bind(id)
        .bind(now_rfc3339())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Ids of revoked tokens that have not expired yet (loaded at start).
    pub async fn revoked_token_ids(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT id FROM device_tokens WHERE revoked_at IS NOT NULL AND expires_at > ?1",
        )
        .bind(now_rfc3339())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get::<String, _>("id"))
            .collect::<Result<_, _>>()?)
    }

    /// Every issued token, newest first.
    pub async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, device, issued_at, expires_at, revoked_at FROM device_tokens \
             ORDER BY issued_at DESC, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TokenRecord {
                    id: r.try_get("id")?,
                    device: r.try_get("device")?,
                    issued_at: r.try_get("issued_at")?,
                    expires_at: r.try_get("expires_at")?,
                    revoked_at: r.try_get("revoked_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Sets (or clears) the device that holds a lock; `LockNotFound` for unknown locks.
    pub async fn set_lock_holder(
        &self,
        serial: &str,
        holder: Option<&str>,
    ) -> Result<LockRecord, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE locks SET holder_device = ?2 WHERE serial = ?1 RETURNING ",
            lock_columns!()
        ))
        .bind(serial)
        .bind(holder)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::LockNotFound)?;
        Ok(lock_from_row(&row)?)
    }
}
