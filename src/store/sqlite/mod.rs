//! The SQLite store (the default: `DATABASE_URL=sqlite://homehub.db`, created if missing,
//! WAL journal, migrations from `migrations/sqlite/` embedded with `sqlx::migrate!` and
//! applied at open). Timestamps are stored as RFC 3339 UTC text (`domain::now_rfc3339`),
//! JSON as text.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde_json::Value;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::domain::{
    AccessDecision, DeviceInfo, DeviceName, Door, ItemKind, LockRecord, PairedItem, PairingRequest,
    Serial, format_ts, now_rfc3339,
};

mod users;

use super::rows::{
    found_lock, lock as lock_from_row, paired_item as paired_item_from_row,
    pairing as pairing_from_row,
};
use super::{LockPatch, StoreError, StoreOptions};

/// The schema, embedded at compile time from `migrations/sqlite/` and applied at open.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Connections in the pool. SQLite serialises writers anyway; a few connections let reads
/// proceed (WAL) while a write is in progress.
const MAX_CONNECTIONS: u32 = 4;

/// How long a statement waits for another connection's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Columns of `locks`, in the order [`lock_from_row`] reads them.
macro_rules! lock_columns {
    () => {
        "serial, uuid, name, mode, feature_flags, config, intended_state, intended_version, \
         intended_at, reported_state, reported_at, drifting_since, holder_device, \
         first_seen_at, last_seen_at"
    };
}

/// Columns of `pairing_requests`, as [`pairing_from_row`] reads them.
macro_rules! pairing_columns {
    () => {
        "pair_id, lock_serial, name, item_type, created_at, expires_at, completed_at, \
         delivered_at, deliveries, cancelled_at"
    };
}

/// Columns of `paired_items`, as [`paired_item_from_row`] reads them.
macro_rules! paired_item_columns {
    () => {
        "lock_serial, item_serial, name, item_type, pair_id, paired_at, revoked_at"
    };
}

mod holder;
mod joins;
mod tokens;

/// Columns of `locks` as a constant, for SQL built at run time ([`joins`]).
const LOCK_COLUMNS: &str = lock_columns!();

/// Handle to a SQLite database; cheap to clone (wraps a pool).
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: sqlx::SqlitePool,
    /// Group-commit writer for lock joins (the hot write path).
    joins: crate::store::join_queue::JoinWriter,
    /// Unix time (seconds) until which some pairing request may still be pending: a lock
    /// join asks for pending requests only before it, so joins cost no query when no
    /// pairing is under way (requests are created only through this store).
    pairings_pending_until: Arc<AtomicI64>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `database_url` (`sqlite://path`,
    /// `sqlite:path` or a bare path), sets WAL, `synchronous=NORMAL`, foreign keys on and a
    /// busy timeout, and applies pending migrations.
    pub async fn open(database_url: &str, opts: &StoreOptions) -> Result<SqliteStore, StoreError> {
        let in_memory = database_url.contains(":memory:") || database_url.contains("mode=memory");
        let base = if database_url.starts_with("sqlite:") || in_memory {
            SqliteConnectOptions::from_str(database_url)?
        } else {
            // A bare path is taken literally (no `?query` or `%` decoding).
            SqliteConnectOptions::new().filename(database_url)
        };
        let options = base
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);

        let pool_options = if in_memory {
            // An in-memory database lives only as long as a connection to it: keep exactly
            // one, forever (shared-cache table locks make several connections fragile).
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            SqlitePoolOptions::new().max_connections(MAX_CONNECTIONS)
        };
        let pool = pool_options.connect_with(options.clone()).await?;

        if let Err(e) = MIGRATOR.run(&pool).await {
            pool.close().await;
            return Err(e.into());
        }
        tracing::debug!(database_url, "store opened, migrations applied");
        // A file database gives the join writer a connection of its own (see `joins`).
        let own = (!in_memory).then_some(&options);
        let new_lock_flags = Value::from(opts.new_lock_flags.clone()).to_string();
        let joins = match joins::spawn(pool.clone(), own, new_lock_flags).await {
            Ok(joins) => joins,
            Err(e) => {
                pool.close().await;
                return Err(e);
            }
        };
        let pending_until: Option<String> = match sqlx::query_scalar(
            "SELECT MAX(expires_at) FROM pairing_requests \
             WHERE completed_at IS NULL AND cancelled_at IS NULL",
        )
        .fetch_one(&pool)
        .await
        {
            Ok(v) => v,
            Err(e) => {
                pool.close().await;
                return Err(e.into());
            }
        };
        let pending_until = super::pending_until(pending_until);
        Ok(SqliteStore {
            pool,
            joins,
            pairings_pending_until: Arc::new(AtomicI64::new(pending_until)),
        })
    }

    /// Finishes the queued lock joins and closes every connection, flushing the WAL.
    pub async fn close(&self) {
        self.joins.close().await;
        self.pool.close().await;
    }

    /// The pool, for tests that look at the tables.
    #[cfg(test)]
    pub(crate) fn pool(&self) -> &sqlx::SqlitePool {
        &self.pool
    }

    /// Lock joins answered from the join writer's copy of known locks since start.
    pub fn lock_join_known_hits(&self) -> u64 {
        self.joins.known_hits()
    }

    /// A lock channel join: creates the lock on first sight (new random v4 UUID, name =
    /// serial, mode 1, no flags, `{}` config, intended state `{"locked": true}`,
    /// first_seen_at = now), records `holder` as the holder device and last_seen_at = now,
    /// and returns the record. The UUID of a serial never changes once created.
    pub async fn join_lock(
        &self,
        serial: &Serial,
        holder: &DeviceName,
    ) -> Result<LockRecord, StoreError> {
        // Group commit: the reply waits for the durable write, shared with other joins.
        self.joins
            .join(serial.as_str(), holder.as_str(), false)
            .await?
            .ok_or(StoreError::LockNotFound)
    }

    /// A lock join in token mode: like [`SqliteStore::join_lock`], but a lock already held by
    /// another device is not touched and `None` is returned.
    pub async fn join_lock_exclusive(
        &self,
        serial: &Serial,
        holder: &DeviceName,
    ) -> Result<Option<LockRecord>, StoreError> {
        self.joins
            .join(serial.as_str(), holder.as_str(), true)
            .await
    }

    /// One lock, if it exists.
    /// One round trip to the database (`/health/ready`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn get_lock(&self, serial: &str) -> Result<Option<LockRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            lock_columns!(),
            " FROM locks WHERE serial = ?1"
        ))
        .bind(serial)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(lock_from_row).transpose()?)
    }

    /// Every lock, ordered by serial.
    pub async fn list_locks(&self) -> Result<Vec<LockRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            lock_columns!(),
            " FROM locks ORDER BY serial"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(lock_from_row).collect::<Result<_, _>>()?)
    }

    /// Stores a new intended state; `LockNotFound` if the lock was never seen.
    /// The changed lock, or `None` when no lock is at `expected` (see
    /// [`crate::store::Store::set_intended_state`]).
    pub async fn set_intended_state(
        &self,
        serial: &str,
        state: &Value,
        expected: Option<i64>,
    ) -> Result<Option<LockRecord>, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE locks SET intended_state = ?1, intended_version = intended_version + 1, \
                 intended_at = ?2, drifting_since = NULL \
             WHERE serial = ?3 AND (?4 IS NULL OR intended_version = ?4) RETURNING ",
            lock_columns!()
        ))
        .bind(state.to_string())
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
            "UPDATE locks SET drifting_since = ?1 \
             WHERE serial = ?2 AND (?3 IS NULL OR intended_version = ?3)",
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

    /// Changes a lock's record (each `Some` field; `None` keeps the column). The lock gets
    /// the new record in its next join or `reset` reply. `LockNotFound` if never seen.
    pub async fn update_lock(
        &self,
        serial: &str,
        patch: &LockPatch,
    ) -> Result<LockRecord, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE locks SET name = COALESCE(?1, name), mode = COALESCE(?2, mode), \
                 feature_flags = COALESCE(?3, feature_flags), config = COALESCE(?4, config) \
             WHERE serial = ?5 RETURNING ",
            lock_columns!()
        ))
        .bind(patch.name.as_deref())
        .bind(patch.mode)
        .bind(
            patch
                .feature_flags
                .as_ref()
                .map(|f| Value::from(f.clone()).to_string()),
        )
        .bind(
            patch
                .config
                .as_ref()
                .map(|c| Value::Object(c.clone()).to_string()),
        )
        .bind(serial)
        .fetch_optional(&self.pool)
        .await?;
        found_lock(row)
    }

    /// Stores what the lock reports as its actual state, with reported_at = now.
    /// `LockNotFound` if the lock was never seen.
    pub async fn set_reported_state(
        &self,
        serial: &Serial,
        state: &Value,
    ) -> Result<LockRecord, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE locks SET reported_state = ?1, reported_at = ?2 WHERE serial = ?3 RETURNING ",
            lock_columns!()
        ))
        .bind(state.to_string())
        .bind(now_rfc3339())
        .bind(serial.as_str())
        .fetch_optional(&self.pool)
        .await?;
        found_lock(row)
    }

    /// Creates a pairing request for an existing lock (`LockNotFound` otherwise): new v4
    /// pair_id, expires_at = now + ttl.
    pub async fn create_pairing(
        &self,
        serial: &str,
        name: &str,
        kind: ItemKind,
        ttl: Duration,
    ) -> Result<PairingRequest, StoreError> {
        let now = time::OffsetDateTime::now_utc();
        // An absurd ttl saturates at the largest representable time instead of panicking.
        let expires = time::Duration::try_from(ttl)
            .ok()
            .and_then(|ttl| now.checked_add(ttl))
            .unwrap_or_else(|| time::PrimitiveDateTime::MAX.assume_utc());
        // INSERT ... SELECT FROM locks: no row is inserted (and none returned) when the lock
        // does not exist, so the existence check and the insert are one statement.
        let row = sqlx::query(concat!(
            "INSERT INTO pairing_requests \
                 (pair_id, lock_serial, name, item_type, created_at, expires_at) \
             SELECT ?1, serial, ?2, ?3, ?4, ?5 FROM locks WHERE serial = ?6 \
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

    /// The pending (not completed, not cancelled, unexpired) pairing requests of `serial`,
    /// oldest first, each recorded as delivered now (`delivered_at`, `deliveries`): the
    /// caller pushes them as `mode:pair` right after the lock's join reply.
    pub async fn deliver_pending_pairings(
        &self,
        serial: &str,
    ) -> Result<Vec<PairingRequest>, StoreError> {
        let now = time::OffsetDateTime::now_utc();
        if now.unix_timestamp() > self.pairings_pending_until.load(Ordering::Relaxed) {
            return Ok(Vec::new());
        }
        let now = format_ts(now);
        let rows = sqlx::query(concat!(
            "UPDATE pairing_requests SET delivered_at = ?1, deliveries = deliveries + 1 \
             WHERE lock_serial = ?2 AND completed_at IS NULL AND cancelled_at IS NULL \
               AND expires_at > ?1 \
             RETURNING ",
            pairing_columns!()
        ))
        .bind(&now)
        .bind(serial)
        .fetch_all(&self.pool)
        .await?;
        let mut requests = rows
            .iter()
            .map(pairing_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        requests.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        Ok(requests)
    }

    /// Records that `mode:pair` of `pair_id` went out now.
    pub async fn record_pairing_delivered(&self, pair_id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE pairing_requests SET delivered_at = ?1, deliveries = deliveries + 1 \
             WHERE pair_id = ?2",
        )
        .bind(now_rfc3339())
        .bind(pair_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Cancels a pending request: `PairingNotFound` if there is none with this id,
    /// `PairingClosed` if it is already completed or cancelled.
    pub async fn cancel_pairing(&self, pair_id: &str) -> Result<PairingRequest, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE pairing_requests SET cancelled_at = ?1 \
             WHERE pair_id = ?2 AND completed_at IS NULL AND cancelled_at IS NULL \
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

    /// A pairing request by id (completed or not, expired or not).
    pub async fn get_pairing(&self, pair_id: &str) -> Result<Option<PairingRequest>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            pairing_columns!(),
            " FROM pairing_requests WHERE pair_id = ?1"
        ))
        .bind(pair_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(pairing_from_row).transpose()?)
    }

    /// Marks the request completed (completed_at = now) and inserts the paired item
    /// (`item_serial`, the request's name and kind) in one transaction. If the same item
    /// serial was already paired with this lock, the old row is replaced (un-revoked).
    /// `PairingNotFound` if no such request exists or it is already completed.
    ///
    /// Expiry is not checked here: callers compare `expires_at` (see `get_pairing`).
    pub async fn complete_pairing(
        &self,
        pair_id: &str,
        item_serial: &str,
    ) -> Result<PairedItem, StoreError> {
        let now = now_rfc3339();
        // The transaction starts with a write, so it takes SQLite's write lock up front
        // (waiting up to the busy timeout) and cannot fail later on a lock upgrade.
        let mut tx = self.pool.begin().await?;
        let request = sqlx::query(
            "UPDATE pairing_requests SET completed_at = ?1 \
             WHERE pair_id = ?2 AND completed_at IS NULL AND cancelled_at IS NULL \
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
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL) \
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

    /// All pairing requests (newest first) and all paired items (newest first).
    pub async fn list_pairings(
        &self,
    ) -> Result<(Vec<PairingRequest>, Vec<PairedItem>), StoreError> {
        // Timestamps have millisecond precision; rowid breaks ties in insertion order.
        let requests = sqlx::query(concat!(
            "SELECT ",
            pairing_columns!(),
            " FROM pairing_requests ORDER BY created_at DESC, rowid DESC"
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

    /// An `access:request`: access is granted iff `item` is paired with `lock` and not
    /// revoked; `user` is that item's name. Every decision is logged in
    /// `access_decisions` (lock, item, device, granted, user, decided_at).
    pub async fn decide_access(
        &self,
        lock: &Serial,
        item: &str,
        device: &str,
    ) -> Result<AccessDecision, StoreError> {
        // Decide and log in one statement: the LEFT JOIN yields exactly one row, with the
        // paired item's name when there is an active pairing (at most one, by the UNIQUE
        // constraint) and NULL otherwise.
        let row = sqlx::query(
            "INSERT INTO access_decisions \
                 (lock_serial, item, device, granted, user_name, decided_at) \
             SELECT ?1, ?2, ?3, p.name IS NOT NULL, p.name, ?4 \
             FROM (SELECT 1) AS one \
             LEFT JOIN paired_items AS p \
                 ON p.lock_serial = ?1 AND p.item_serial = ?2 AND p.revoked_at IS NULL \
             RETURNING granted, user_name",
        )
        .bind(lock.as_str())
        .bind(item)
        .bind(device)
        .bind(now_rfc3339())
        .fetch_one(&self.pool)
        .await?;
        let access: bool = row.try_get("granted")?;
        let user: Option<String> = row.try_get("user_name")?;
        Ok(AccessDecision {
            access,
            user: if access { user } else { None },
        })
    }

    /// Appends a lock event (firmware `event`) to `lock_events`: lock, from device, message
    /// JSON, received_at.
    pub async fn record_event(
        &self,
        lock: &Serial,
        from: &DeviceName,
        message: &Value,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO lock_events (lock_serial, from_device, message, received_at) \
             VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(lock.as_str())
        .bind(from.as_str())
        .bind(message.to_string())
        .bind(now_rfc3339())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A relay registration: creates or updates the device's row in `devices` with its
    /// door and metadata; registered_at = last_seen_at = now.
    pub async fn record_device_registration(
        &self,
        name: &str,
        door: Door,
        info: &DeviceInfo,
    ) -> Result<(), StoreError> {
        let now = now_rfc3339();
        let door = door.as_str();
        sqlx::query(
            "INSERT INTO devices (name, door, description, version, interface, \
                                  first_seen_at, registered_at, last_seen_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?6) \
             ON CONFLICT (name) DO UPDATE SET door = excluded.door, \
                 description = excluded.description, version = excluded.version, \
                 interface = excluded.interface, registered_at = excluded.registered_at, \
                 last_seen_at = excluded.last_seen_at",
        )
        .bind(name)
        .bind(door)
        .bind(&info.description)
        .bind(&info.version)
        .bind(&info.interface)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A relay device left: last_seen_at = now, and its session's packet counts added.
    pub async fn record_device_departure(
        &self,
        name: &str,
        packets_sent: u64,
        packets_received: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE devices SET last_seen_at = ?2, packets_sent = packets_sent + ?3, \
                 packets_received = packets_received + ?4 WHERE name = ?1",
        )
        .bind(name)
        .bind(now_rfc3339())
        .bind(i64::try_from(packets_sent).unwrap_or(i64::MAX))
        .bind(i64::try_from(packets_received).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
