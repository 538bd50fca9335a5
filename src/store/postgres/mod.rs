//! The PostgreSQL store (`DATABASE_URL=postgres://…` or `postgresql://…`): the same tables,
//! views and behaviour as the SQLite store, with migrations from `migrations/postgres/`
//! (same numbers) applied at open. JSON columns are `jsonb`; timestamps are RFC 3339 UTC
//! text, as on SQLite. Several hub processes may share one database.
//!
//! A database that does not answer is an error within a bounded time, never a hang: a
//! connection is waited for at most [`ACQUIRE_TIMEOUT`], and every statement runs under the
//! server-side `statement_timeout` of [`STATEMENT_TIMEOUT`]. The pool reconnects by itself
//! when the server is back.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::types::Json;

use super::rows::{
    found_lock, lock as lock_from_row, paired_item as paired_item_from_row,
    pairing as pairing_from_row,
};
use super::{BesterUser, LockPatch, StoreError, StoreOptions, TokenRecord};
use crate::domain::{
    AccessDecision, DeviceInfo, DeviceName, Door, ItemKind, LockRecord, PairedItem, PairingRequest,
    Serial, format_ts, now_rfc3339,
};

mod joins;

/// The schema, embedded at compile time from `migrations/postgres/` and applied at open.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections in the pool (the join writer has one more of its own).
const MAX_CONNECTIONS: u32 = 8;

/// Longest wait for a pooled connection: a database that is down fails a request in this
/// time instead of holding it.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest a statement may run on the server.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Columns of `locks`, in the order [`lock_from_row`] reads them.
macro_rules! lock_columns {
    () => {
        "serial, uuid, name, mode, feature_flags, config, intended_state, intended_version, \
         intended_at, reported_state, reported_at, drifting_since, holder_device, \
         first_seen_at, last_seen_at"
    };
}

macro_rules! pairing_columns {
    () => {
        "pair_id, lock_serial, name, item_type, created_at, expires_at, completed_at, \
         delivered_at, deliveries, cancelled_at"
    };
}

macro_rules! paired_item_columns {
    () => {
        "lock_serial, item_serial, name, item_type, pair_id, paired_at, revoked_at"
    };
}

/// Columns of `locks` as a constant, for SQL built at run time ([`joins`]).
const LOCK_COLUMNS: &str = lock_columns!();

/// Handle to a PostgreSQL database; cheap to clone (wraps a pool).
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    joins: crate::store::join_queue::JoinWriter,
    /// As in the SQLite store: joins ask for pending pairing requests only before this
    /// Unix time. Requests created by another hub process sharing the database move it
    /// too: a trigger notifies `homehub_pairing_requests` and [`watch_pairings`] listens.
    pairings_pending_until: Arc<AtomicI64>,
    /// Ends the listener when the store closes.
    closing: tokio_util::sync::CancellationToken,
}

/// The connect options for `database_url`, with the hub's timeouts.
fn connect_options(database_url: &str) -> Result<PgConnectOptions, StoreError> {
    let statement_timeout = format!("{}", STATEMENT_TIMEOUT.as_millis());
    Ok(PgConnectOptions::from_str(database_url)?
        .application_name("homehub")
        .options([("statement_timeout", statement_timeout.as_str())]))
}

impl PgStore {
    /// Connects to `database_url` (a server that does not answer fails within
    /// [`ACQUIRE_TIMEOUT`]) and applies pending migrations.
    pub async fn open(database_url: &str, opts: &StoreOptions) -> Result<PgStore, StoreError> {
        let options = connect_options(database_url)?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        if let Err(e) = MIGRATOR.run(&pool).await {
            pool.close().await;
            return Err(e.into());
        }
        let new_lock_flags = Value::from(opts.new_lock_flags.clone());
        let joins = joins::spawn(options, new_lock_flags);
        let latest: Option<String> = match sqlx::query_scalar(LATEST_PENDING).fetch_one(&pool).await
        {
            Ok(v) => v,
            Err(e) => {
                pool.close().await;
                return Err(e.into());
            }
        };
        let pending = Arc::new(AtomicI64::new(super::pending_until(latest)));
        let listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                pool.close().await;
                return Err(e.into());
            }
        };
        let closing = tokio_util::sync::CancellationToken::new();
        tokio::spawn(watch_pairings(
            listener,
            pool.clone(),
            pending.clone(),
            closing.clone(),
        ));
        Ok(PgStore {
            pool,
            joins,
            pairings_pending_until: pending,
            closing,
        })
    }

    /// The pool, for tests that look at the tables.
    #[cfg(test)]
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn close(&self) {
        self.closing.cancel();
        self.joins.close().await;
        self.pool.close().await;
    }

    pub fn lock_join_known_hits(&self) -> u64 {
        self.joins.known_hits()
    }

    pub async fn join_lock(
        &self,
        serial: &Serial,
        holder: &DeviceName,
    ) -> Result<LockRecord, StoreError> {
        self.joins
            .join(serial.as_str(), holder.as_str(), false)
            .await?
            .ok_or(StoreError::LockNotFound)
    }

    pub async fn join_lock_exclusive(
        &self,
        serial: &Serial,
        holder: &DeviceName,
    ) -> Result<Option<LockRecord>, StoreError> {
        self.joins
            .join(serial.as_str(), holder.as_str(), true)
            .await
    }

    /// One round trip to the database (`/health/ready`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn get_lock(&self, serial: &str) -> Result<Option<LockRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            lock_columns!(),
            " FROM locks WHERE serial = $1"
        ))
        .bind(serial)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(lock_from_row).transpose()?)
    }

    pub async fn list_locks(&self) -> Result<Vec<LockRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            lock_columns!(),
            " FROM locks ORDER BY serial COLLATE \"C\""
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(lock_from_row).collect::<Result<_, _>>()?)
    }

    /// The changed lock, or `None` when no lock is at `expected` (see
    /// [`crate::store::Store::set_intended_state`]).
    pub async fn set_intended_state(
        &self,
        serial: &str,
        state: &Value,
        expected: Option<i64>,
    ) -> Result<Option<LockRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE locks SET intended_state = $1, intended_version = intended_version + 1, \
                 intended_at = $2, drifting_since = NULL \
             WHERE serial = $3 AND ($4::BIGINT IS NULL OR intended_version = $4) RETURNING ",
            lock_columns!()
        ))
        .bind(Json(state))
        .bind(now_rfc3339())
        .bind(serial)
        .bind(expected)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(lock_from_row).transpose()?)
    }

    /// Whether a lock was changed (see [`crate::store::Store::set_drifting`]).
    pub async fn set_drifting(
        &self,
        serial: &str,
        version: Option<i64>,
        since: Option<&str>,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE locks SET drifting_since = $1 \
             WHERE serial = $2 AND ($3::BIGINT IS NULL OR intended_version = $3)",
        )
        .bind(since)
        .bind(serial)
        .bind(version)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    pub async fn count_drifting(&self) -> Result<u64, StoreError> {
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM locks WHERE drifting_since IS NOT NULL")
                .fetch_one(&self.pool)
                .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub async fn update_lock(
        &self,
        serial: &str,
        patch: &LockPatch,
    ) -> Result<LockRecord, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE locks SET name = COALESCE($1, name), mode = COALESCE($2, mode), \
                 feature_flags = COALESCE($3, feature_flags), config = COALESCE($4, config) \
             WHERE serial = $5 RETURNING ",
            lock_columns!()
        ))
        .bind(patch.name.as_deref())
        .bind(patch.mode)
        .bind(patch.feature_flags.as_ref().map(Json))
        .bind(patch.config.as_ref().map(Json))
        .bind(serial)
        .fetch_optional(&self.pool)
        .await?;
        found_lock(row)
    }

    pub async fn set_reported_state(
        &self,
        serial: &Serial,
        state: &Value,
    ) -> Result<LockRecord, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE locks SET reported_state = $1, reported_at = $2 WHERE serial = $3 RETURNING ",
            lock_columns!()
        ))
        .bind(Json(state))
        .bind(now_rfc3339())
        .bind(serial.as_str())
        .fetch_optional(&self.pool)
        .await?;
        found_lock(row)
    }

    pub async fn create_pairing(
        &self,
        serial: &str,
        name: &str,
        kind: ItemKind,
        ttl: Duration,
    ) -> Result<PairingRequest, StoreError> {
        let now = time::OffsetDateTime::now_utc();
        let expires = time::Duration::try_from(ttl)
            .ok()
            .and_then(|ttl| now.checked_add(ttl))
            .unwrap_or_else(|| time::PrimitiveDateTime::MAX.assume_utc());
        let row = sqlx::query(concat!(
            "INSERT INTO pairing_requests \
                 (pair_id, lock_serial, name, item_type, created_at, expires_at) \
             SELECT $1, serial, $2, $3, $4, $5 FROM locks WHERE serial = $6 \
             RETURNING ",
            pairing_columns!()
        ))
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(name)
        .bind(kind.as_str())
        .bind(format_ts(now))
        .bind(format_ts(expires))
        .bind(serial)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => {
                self.pairings_pending_until
                    .fetch_max(expires.unix_timestamp() + 1, Ordering::Relaxed);
                Ok(pairing_from_row(&row)?)
            }
            None => Err(StoreError::LockNotFound),
        }
    }

    pub async fn deliver_pending_pairings(
        &self,
        serial: &str,
    ) -> Result<Vec<PairingRequest>, StoreError> {
        let now = time::OffsetDateTime::now_utc();
        if now.unix_timestamp() > self.pairings_pending_until.load(Ordering::Relaxed) {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(concat!(
            "UPDATE pairing_requests SET delivered_at = $1, deliveries = deliveries + 1 \
             WHERE lock_serial = $2 AND completed_at IS NULL AND cancelled_at IS NULL \
               AND expires_at > $1 \
             RETURNING ",
            pairing_columns!(),
            ", id"
        ))
        .bind(format_ts(now))
        .bind(serial)
        .fetch_all(&self.pool)
        .await?;
        let mut requests = Vec::with_capacity(rows.len());
        for row in &rows {
            requests.push((row.try_get::<i64, _>("id")?, pairing_from_row(row)?));
        }
        requests.sort_by(|a, b| a.1.created_at.cmp(&b.1.created_at).then(a.0.cmp(&b.0)));
        Ok(requests.into_iter().map(|(_, r)| r).collect())
    }

    pub async fn record_pairing_delivered(&self, pair_id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE pairing_requests SET delivered_at = $1, deliveries = deliveries + 1 \
             WHERE pair_id = $2",
        )
        .bind(now_rfc3339())
        .bind(pair_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn cancel_pairing(&self, pair_id: &str) -> Result<PairingRequest, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE pairing_requests SET cancelled_at = $1 \
             WHERE pair_id = $2 AND completed_at IS NULL AND cancelled_at IS NULL \
             RETURNING ",
            pairing_columns!()
        ))
        .bind(now_rfc3339())
        .bind(pair_id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => Ok(pairing_from_row(&row)?),
            None if self.get_pairing(pair_id).await?.is_some() => Err(StoreError::PairingClosed),
            None => Err(StoreError::PairingNotFound),
        }
    }

    pub async fn get_pairing(&self, pair_id: &str) -> Result<Option<PairingRequest>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            pairing_columns!(),
            " FROM pairing_requests WHERE pair_id = $1"
        ))
        .bind(pair_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(pairing_from_row).transpose()?)
    }

    pub async fn complete_pairing(
        &self,
        pair_id: &str,
        item_serial: &str,
    ) -> Result<PairedItem, StoreError> {
        let now = now_rfc3339();
        let mut tx = self.pool.begin().await?;
        let request = sqlx::query(
            "UPDATE pairing_requests SET completed_at = $1 \
             WHERE pair_id = $2 AND completed_at IS NULL AND cancelled_at IS NULL \
             RETURNING lock_serial, name, item_type",
        )
        .bind(&now)
        .bind(pair_id)
        .fetch_optional(&mut *tx)
        .await?;
        // Dropping `tx` on any early return rolls back.
        let Some(request) = request else {
            return Err(StoreError::PairingNotFound);
        };
        let lock_serial: String = request.try_get("lock_serial")?;
        let name: String = request.try_get("name")?;
        let item_type: String = request.try_get("item_type")?;
        let row = sqlx::query(concat!(
            "INSERT INTO paired_items \
                 (lock_serial, item_serial, name, item_type, pair_id, paired_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL) \
             ON CONFLICT (lock_serial, item_serial) DO UPDATE SET \
                 name = excluded.name, \
                 item_type = excluded.item_type, \
                 pair_id = excluded.pair_id, \
                 paired_at = excluded.paired_at, \
                 revoked_at = NULL \
             RETURNING ",
            paired_item_columns!()
        ))
        .bind(&lock_serial)
        .bind(item_serial)
        .bind(&name)
        .bind(&item_type)
        .bind(pair_id)
        .bind(&now)
        .fetch_one(&mut *tx)
        .await?;
        let item = paired_item_from_row(&row)?;
        tx.commit().await?;
        Ok(item)
    }

    pub async fn list_pairings(
        &self,
    ) -> Result<(Vec<PairingRequest>, Vec<PairedItem>), StoreError> {
        let requests = sqlx::query(concat!(
            "SELECT ",
            pairing_columns!(),
            " FROM pairing_requests ORDER BY created_at DESC, id DESC"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(pairing_from_row)
        .collect::<Result<Vec<_>, _>>()?;
        let items = sqlx::query(concat!(
            "SELECT ",
            paired_item_columns!(),
            " FROM paired_items ORDER BY paired_at DESC, id DESC"
        ))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(paired_item_from_row)
        .collect::<Result<Vec<_>, _>>()?;
        Ok((requests, items))
    }

    pub async fn decide_access(
        &self,
        lock: &Serial,
        item: &str,
        device: &str,
    ) -> Result<AccessDecision, StoreError> {
        // Decide and log in one statement, as on SQLite.
        let row = sqlx::query(
            "INSERT INTO access_decisions \
                 (lock_serial, item, device, granted, user_name, decided_at) \
             SELECT $1, $2, $3, CASE WHEN p.name IS NULL THEN 0 ELSE 1 END, p.name, $4 \
             FROM (SELECT 1) AS one \
             LEFT JOIN paired_items AS p \
                 ON p.lock_serial = $1 AND p.item_serial = $2 AND p.revoked_at IS NULL \
             RETURNING granted, user_name",
        )
        .bind(lock.as_str())
        .bind(item)
        .bind(device)
        .bind(now_rfc3339())
        .fetch_one(&self.pool)
        .await?;
        let access = row.try_get::<i16, _>("granted")? == 1;
        let user: Option<String> = row.try_get("user_name")?;
        Ok(AccessDecision {
            access,
            user: if access { user } else { None },
        })
    }

    pub async fn record_event(
        &self,
        lock: &Serial,
        from: &DeviceName,
        message: &Value,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO lock_events (lock_serial, from_device, message, received_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(lock.as_str())
        .bind(from.as_str())
        .bind(Json(message))
        .bind(now_rfc3339())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn record_device_registration(
        &self,
        name: &str,
        door: Door,
        info: &DeviceInfo,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO devices (name, door, description, version, interface, \
                                  first_seen_at, registered_at, last_seen_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, $6) \
             ON CONFLICT (name) DO UPDATE SET door = excluded.door, \
                 description = excluded.description, version = excluded.version, \
                 interface = excluded.interface, registered_at = excluded.registered_at, \
                 last_seen_at = excluded.last_seen_at",
        )
        .bind(name)
        .bind(door.as_str())
        .bind(&info.description)
        .bind(&info.version)
        .bind(&info.interface)
        .bind(now_rfc3339())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn record_device_departure(
        &self,
        name: &str,
        packets_sent: u64,
        packets_received: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE devices SET last_seen_at = $2, packets_sent = packets_sent + $3, \
                 packets_received = packets_received + $4 WHERE name = $1",
        )
        .bind(name)
        .bind(now_rfc3339())
        .bind(i64::try_from(packets_sent).unwrap_or(i64::MAX))
        .bind(i64::try_from(packets_received).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn token_key(&self) -> Result<Vec<u8>, StoreError> {
        let fresh = format!(
            "{:032x}{:032x}",
            rand::random::<u128>(),
            rand::random::<u128>()
        );
        sqlx::query(
            "INSERT INTO hub_settings (key, value) VALUES ('token_key', $1) \
             ON CONFLICT (key) DO NOTHING",
        )
        .bind(&fresh)
        .execute(&self.pool)
        .await?;
        let value: String =
            sqlx::query_scalar("SELECT value FROM hub_settings WHERE key = 'token_key'")
                .fetch_one(&self.pool)
                .await?;
        Ok(value.into_bytes())
    }

    pub async fn record_token(
        &self,
        id: &str,
        device: &str,
        expires_at: &str,
    ) -> Result<TokenRecord, StoreError> {
        let issued_at = now_rfc3339();
        sqlx::query(
            "INSERT INTO device_tokens (id, device, issued_at, expires_at) VALUES ($1, $2, $3, $4)",
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

    pub async fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE device_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1",
        )
        .bind(id)
        .bind(now_rfc3339())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn revoked_token_ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM device_tokens WHERE revoked_at IS NOT NULL AND expires_at > $1",
        )
        .bind(now_rfc3339())
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, device, issued_at, expires_at, revoked_at FROM device_tokens \
             ORDER BY issued_at DESC, id COLLATE \"C\"",
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

    pub async fn set_lock_holder(
        &self,
        serial: &str,
        holder: Option<&str>,
    ) -> Result<LockRecord, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE locks SET holder_device = $2 WHERE serial = $1 RETURNING ",
            lock_columns!()
        ))
        .bind(serial)
        .bind(holder)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::LockNotFound)?;
        Ok(lock_from_row(&row)?)
    }

    pub async fn create_bester_user(
        &self,
        username: &str,
        password_hash: &str,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "INSERT INTO bester_users (username, password_hash, created_at, password_changed_at) \
             VALUES ($1, $2, $3, $3) ON CONFLICT (username) DO NOTHING",
        )
        .bind(username)
        .bind(password_hash)
        .bind(now_rfc3339())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    pub async fn set_bester_password(
        &self,
        username: &str,
        password_hash: &str,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE bester_users SET password_hash = $2, password_changed_at = $3 \
             WHERE username = $1",
        )
        .bind(username)
        .bind(password_hash)
        .bind(now_rfc3339())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    pub async fn delete_bester_user(&self, username: &str) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM bester_users WHERE username = $1")
            .bind(username)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    pub async fn bester_password_hash(&self, username: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT password_hash FROM bester_users WHERE username = $1")
                .bind(username)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn record_bester_login(&self, username: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE bester_users SET last_login_at = $2 WHERE username = $1")
            .bind(username)
            .bind(now_rfc3339())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn list_bester_users(&self) -> Result<Vec<BesterUser>, StoreError> {
        let rows = sqlx::query(
            "SELECT username, created_at, password_changed_at, last_login_at \
             FROM bester_users ORDER BY username COLLATE \"C\"",
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

/// The channel the `pairing_requests` trigger notifies (migration 0002).
const PAIRING_CHANNEL: &str = "homehub_pairing_requests";

/// The latest `expires_at` of the pending pairing requests.
const LATEST_PENDING: &str = "SELECT MAX(expires_at) FROM pairing_requests \
     WHERE completed_at IS NULL AND cancelled_at IS NULL";

/// Follows the pairing requests other hub processes create: each notification moves
/// `pending` to the request's expiry. After the listener's connection was lost (it
/// reconnects by itself), notifications sent meanwhile are gone, so the latest expiry is
/// read from the table again.
async fn watch_pairings(
    mut listener: PgListener,
    pool: PgPool,
    pending: Arc<AtomicI64>,
    closing: tokio_util::sync::CancellationToken,
) {
    if let Err(e) = listener.listen(PAIRING_CHANNEL).await {
        tracing::warn!(error = %e, "cannot listen for pairing requests of other hub processes");
    }
    loop {
        let next = tokio::select! {
            _ = closing.cancelled() => return,
            n = listener.try_recv() => n,
        };
        match next {
            Ok(Some(note)) => {
                let until = super::pending_until(Some(note.payload().to_owned()));
                pending.fetch_max(until + 1, Ordering::Relaxed);
            }
            Ok(None) => {
                // Reconnected: catch up from the table.
                match sqlx::query_scalar::<_, Option<String>>(LATEST_PENDING)
                    .fetch_one(&pool)
                    .await
                {
                    Ok(latest) => {
                        pending.fetch_max(super::pending_until(latest) + 1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read pending pairing requests"),
                }
            }
            Err(_) if closing.is_cancelled() => return,
            Err(e) => {
                tracing::warn!(error = %e, "pairing request listener lost its connection");
                tokio::select! {
                    _ = closing.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}
