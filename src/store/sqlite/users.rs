//! Bester users (`bester_users`, migration 0006): the username and the argon2id hash of the
//! password (hashing and verification live in `bester::auth`; this file only stores).

use sqlx::Row;

use super::{SqliteStore, StoreError};
use crate::domain::now_rfc3339;
use crate::store::BesterUser;

impl SqliteStore {
    /// Creates a user with a password hash; `Ok(false)` if the username is taken.
    pub async fn create_bester_user(
        &self,
        username: &str,
        password_hash: &str,
    ) -> Result<bool, StoreError> {
        let now = now_rfc3339();
        let result = sqlx::query(
            "INSERT INTO bester_users (username, password_hash, created_at, password_changed_at) \
             VALUES (?1, ?2, ?3, ?3) ON CONFLICT (username) DO NOTHING",
        )
        .bind(username)
        .bind(password_hash)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Replaces a user's password hash; `Ok(false)` if there is no such user.
    pub async fn set_bester_password(
        &self,
        username: &str,
        password_hash: &str,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE bester_users SET password_hash = ?2, password_changed_at = ?3 \
             WHERE username = ?1",
        )
        .bind(username)
        .bind(password_hash)
        .bind(now_rfc3339())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Deletes a user; `Ok(false)` if there is no such user.
    pub async fn delete_bester_user(&self, username: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM bester_users WHERE username = ?1")
            .bind(username)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    /// The stored password hash of a user, if the user exists.
    pub async fn bester_password_hash(&self, username: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT password_hash FROM bester_users WHERE username = ?1")
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("password_hash")).transpose()?)
    }

    /// Records a successful authentication (last_login_at = now).
    pub async fn record_bester_login(&self, username: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE bester_users SET last_login_at = ?2 WHERE username = ?1")
            .bind(username)
            .bind(now_rfc3339())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every user, ordered by username.
    pub async fn list_bester_users(&self) -> Result<Vec<BesterUser>, StoreError> {
        let rows = sqlx::query(
            "SELECT username, created_at, password_changed_at, last_login_at \
             FROM bester_users ORDER BY username",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(BesterUser {
                    username: r.try_get("username")?,
                    created_at: r.try_get("created_at")?,
                    password_changed_at: r.try_get("password_changed_at")?,
                    last_login_at: r.try_get("last_login_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}
