//! The store: the only module that owns SQL.
//!
//! One interface, [`Store`], with two implementations on typed sqlx pools, each with its
//! SQL in its own module and its migrations in its own directory (same numbers, same
//! tables and views):
//!
//! * [`sqlite`] — the default (`DATABASE_URL=sqlite://homehub.db`, or a bare path), a
//!   file administrators open with `sqlite3`;
//! * [`postgres`] — `DATABASE_URL=postgres://…` (or `postgresql://…`), for a store that
//!   several hub processes share.
//!
//! Nothing outside this module knows which one runs: every other module calls the typed
//! methods of [`Store`]. Timestamps are RFC 3339 UTC text on both (so they read, sort and
//! compare the same in `sqlite3` and `psql`); JSON is text on SQLite and `jsonb` on
//! PostgreSQL.

use serde::Serialize;
use serde_json::Value;

use crate::domain::{
    AccessDecision, DeviceInfo, DeviceName, Door, ItemKind, LockMode, LockRecord, PairedItem,
    PairingRequest, Serial,
};

pub mod copy;
mod join_queue;
pub mod postgres;
mod rows;
pub mod sqlite;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

/// Errors the store reports. Callers branch on the domain variants; `Database` is logged
/// and shown to clients only as a generic failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("lock not found")]
    LockNotFound,
    #[error("pairing request not found")]
    PairingNotFound,
    /// The pairing request is already completed or cancelled.
    #[error("pairing request already completed or cancelled")]
    PairingClosed,
    /// The database cannot be reached or is held by someone else right now (PostgreSQL
    /// down or restarting, no connection within the pool's timeout, a statement timeout,
    /// SQLite's write lock held by another process): clients are told
    /// `store unavailable` (HTTP 503) and may retry; the hub recovers by itself.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A conditional change (`If-Match`) found another version of the lock's intended state.
    #[error("intended state is at version {current}")]
    VersionMismatch { current: i64 },
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        if is_unavailable(&e) {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Database(e)
        }
    }
}

/// Whether `e` means the database is out of reach or busy, rather than that the request or
/// the data is wrong.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            // SQLite: SQLITE_BUSY (5) and SQLITE_LOCKED (6), also as extended codes
            // (261, 517, 262, …: the low byte is the primary code).
            let sqlite_busy = code.parse::<u32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6));
            // PostgreSQL: connection exceptions (class 08), the server shutting down or
            // starting (57P01-57P03), too many connections (53300), a statement cancelled
            // by statement_timeout (57014).
            let pg = code.starts_with("08")
                || matches!(code, "57P01" | "57P02" | "57P03" | "53300" | "57014");
            sqlite_busy || pg
        }
        _ => false,
    }
}

/// A change to a lock's record (validated by the caller): `None` keeps the column.
#[derive(Clone, Debug, Default)]
pub struct LockPatch {
    pub name: Option<String>,
    pub mode: Option<LockMode>,
    pub feature_flags: Option<Vec<String>>,
    pub config: Option<serde_json::Map<String, Value>>,
}

/// What the store writes into rows it creates on its own.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// `feature_flags` of a lock created by its first join (`HOMEHUB_LOCK_FEATURE_FLAGS`).
    pub new_lock_flags: Vec<String>,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            new_lock_flags: vec!["lock".to_owned()],
        }
    }
}

/// An issued device token (without the token itself).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenRecord {
    pub id: String,
    pub device: String,
    pub issued_at: String,
    pub expires_at: String,
    pub revoked_at: Option<String>,
}

/// A Bester user as administrators see it (never the hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BesterUser {
    pub username: String,
    pub created_at: String,
    pub password_changed_at: String,
    pub last_login_at: Option<String>,
}

/// Which database a `DATABASE_URL` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

impl Kind {
    /// `postgres://` and `postgresql://` are PostgreSQL; anything else (`sqlite:`, a bare
    /// path) is SQLite.
    pub fn of(database_url: &str) -> Kind {
        let lower = database_url
            .get(..13)
            .unwrap_or(database_url)
            .to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            Kind::Postgres
        } else {
            Kind::Sqlite
        }
    }
}

/// Handle to the database; cheap to clone (wraps a pool).
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone, Debug)]
enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

impl Store {
    /// Opens the database `database_url` names ([`Kind::of`]) with the default options and
    /// applies pending migrations.
    pub async fn open(database_url: &str) -> Result<Store, StoreError> {
        Store::open_with(database_url, &StoreOptions::default()).await
    }

    /// [`Store::open`] with the hub's settings for new rows.
    pub async fn open_with(database_url: &str, opts: &StoreOptions) -> Result<Store, StoreError> {
        let backend = match Kind::of(database_url) {
            Kind::Sqlite => Backend::Sqlite(sqlite::SqliteStore::open(database_url, opts).await?),
            Kind::Postgres => Backend::Postgres(postgres::PgStore::open(database_url, opts).await?),
        };
        Ok(Store { backend })
    }

    /// Which database this is.
    pub fn kind(&self) -> Kind {
        match &self.backend {
            Backend::Sqlite(_) => Kind::Sqlite,
            Backend::Postgres(_) => Kind::Postgres,
        }
    }

    /// Stores a new intended state (its version + 1, no longer drifting), if `expected` is
    /// `None` or the current version; `VersionMismatch` otherwise, `LockNotFound` if the
    /// lock was never seen.
    pub async fn set_intended_state(
        &self,
        serial: &str,
        state: &Value,
        expected: Option<i64>,
    ) -> Result<LockRecord, StoreError> {
        let changed = match &self.backend {
            Backend::Sqlite(s) => s.set_intended_state(serial, state, expected).await?,
            Backend::Postgres(p) => p.set_intended_state(serial, state, expected).await?,
        };
        match changed {
            Some(lock) => Ok(lock),
            None => Err(match self.get_lock(serial).await? {
                Some(lock) => StoreError::VersionMismatch {
                    current: lock.intended_version,
                },
                None => StoreError::LockNotFound,
            }),
        }
    }

    /// Marks the lock drifting since `since` (`None`: not drifting), if its intended state
    /// is still at `version` (`None`: whatever it is). `LockNotFound` if never seen.
    pub async fn set_drifting(
        &self,
        serial: &str,
        version: Option<i64>,
        since: Option<&str>,
    ) -> Result<(), StoreError> {
        let changed = match &self.backend {
            Backend::Sqlite(s) => s.set_drifting(serial, version, since).await?,
            Backend::Postgres(p) => p.set_drifting(serial, version, since).await?,
        };
        if !changed && self.get_lock(serial).await?.is_none() {
            return Err(StoreError::LockNotFound);
        }
        Ok(())
    }

    /// Lock joins answered from the join writer's copy of known locks since start.
    pub fn lock_join_known_hits(&self) -> u64 {
        match &self.backend {
            Backend::Sqlite(s) => s.lock_join_known_hits(),
            Backend::Postgres(p) => p.lock_join_known_hits(),
        }
    }

    /// The SQLite pool, for SQLite-only tests (pragmas); panics on PostgreSQL.
    #[cfg(test)]
    pub(crate) fn sqlite_pool(&self) -> &sqlx::SqlitePool {
        match &self.backend {
            Backend::Sqlite(s) => s.pool(),
            Backend::Postgres(_) => panic!("not a SQLite store"),
        }
    }

    /// Runs `sql`, a query returning one integer, for tests that look at the tables.
    #[cfg(test)]
    pub(crate) async fn scalar(&self, sql: &str) -> i64 {
        match &self.backend {
            Backend::Sqlite(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await,
            Backend::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p.pool()).await,
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Runs `sql`, a statement, for tests that change the tables behind the hub's back.
    #[cfg(test)]
    pub(crate) async fn execute(&self, sql: &str) -> Result<(), sqlx::Error> {
        match &self.backend {
            Backend::Sqlite(s) => sqlx::query(sql).execute(s.pool()).await.map(|_| ()),
            Backend::Postgres(p) => sqlx::query(sql).execute(p.pool()).await.map(|_| ()),
        }
    }

    /// Runs `sql`, a query whose columns are all text (`CAST(x AS TEXT)` reads the same on
    /// both stores), and returns its rows, for tests that look at tables and views.
    #[cfg(test)]
    pub(crate) async fn text_rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        use sqlx::Row;
        fn read<R: Row>(rows: Vec<R>) -> Result<Vec<Vec<Option<String>>>, sqlx::Error>
        where
            for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            usize: sqlx::ColumnIndex<R>,
        {
            rows.iter()
                .map(|r| (0..r.len()).map(|i| r.try_get(i)).collect())
                .collect()
        }
        match &self.backend {
            Backend::Sqlite(s) => sqlx::query(sql).fetch_all(s.pool()).await.and_then(read),
            Backend::Postgres(p) => sqlx::query(sql).fetch_all(p.pool()).await.and_then(read),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

/// Store methods that only pass through to the backend: the signature once, the dispatch
/// generated. Each backend documents what its method does.
macro_rules! delegate {
    ($( $(#[$doc:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty; )*) => {
        impl Store {
            $(
                $(#[$doc])*
                pub async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match &self.backend {
                        Backend::Sqlite(s) => s.$name($($arg),*).await,
                        Backend::Postgres(p) => p.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

delegate! {
    /// Finishes the queued lock joins and closes every connection.
    fn close(&self) -> ();
    /// A lock channel join: creates the lock on first sight (new random v4 UUID, name =
    /// serial, mode 1, `{}` config, intended state `{"locked": true}`), records `holder`
    /// and last_seen_at = now, and returns the record. The UUID of a serial never changes.
    fn join_lock(&self, serial: &Serial, holder: &DeviceName) -> Result<LockRecord, StoreError>;
    /// A lock join in token mode: like [`Store::join_lock`], but a lock already held by
    /// another device is not touched and `None` is returned.
    fn join_lock_exclusive(&self, serial: &Serial, holder: &DeviceName)
        -> Result<Option<LockRecord>, StoreError>;
    /// One round trip to the database: whether it answers (`/health/ready`).
    fn ping(&self) -> Result<(), StoreError>;
    /// One lock, if it exists.
    fn get_lock(&self, serial: &str) -> Result<Option<LockRecord>, StoreError>;
    /// Every lock, ordered by serial.
    fn list_locks(&self) -> Result<Vec<LockRecord>, StoreError>;
    /// How many locks are drifting.
    fn count_drifting(&self) -> Result<u64, StoreError>;
    /// Changes a lock's record (each `Some` field); `LockNotFound` if never seen.
    fn update_lock(&self, serial: &str, patch: &LockPatch) -> Result<LockRecord, StoreError>;
    /// Stores what the lock reports as its actual state, with reported_at = now; the lock
    /// as it is now.
    fn set_reported_state(&self, serial: &Serial, state: &Value) -> Result<LockRecord, StoreError>;
    /// Creates a pairing request for an existing lock (`LockNotFound` otherwise).
    fn create_pairing(&self, serial: &str, name: &str, kind: ItemKind, ttl: std::time::Duration)
        -> Result<PairingRequest, StoreError>;
    /// The pending pairing requests of `serial`, oldest first, each recorded as delivered.
    fn deliver_pending_pairings(&self, serial: &str) -> Result<Vec<PairingRequest>, StoreError>;
    /// Records that `mode:pair` of `pair_id` went out now.
    fn record_pairing_delivered(&self, pair_id: &str) -> Result<(), StoreError>;
    /// Cancels a pending request (`PairingNotFound`, `PairingClosed`).
    fn cancel_pairing(&self, pair_id: &str) -> Result<PairingRequest, StoreError>;
    /// A pairing request by id (completed or not, expired or not).
    fn get_pairing(&self, pair_id: &str) -> Result<Option<PairingRequest>, StoreError>;
    /// Completes a request and pairs the item, in one transaction.
    fn complete_pairing(&self, pair_id: &str, item_serial: &str) -> Result<PairedItem, StoreError>;
    /// All pairing requests and all paired items, newest first.
    fn list_pairings(&self) -> Result<(Vec<PairingRequest>, Vec<PairedItem>), StoreError>;
    /// An `access:request`, decided and logged in `access_decisions`.
    fn decide_access(&self, lock: &Serial, item: &str, device: &str)
        -> Result<AccessDecision, StoreError>;
    /// Appends a lock event to `lock_events`.
    fn record_event(&self, lock: &Serial, from: &DeviceName, message: &Value)
        -> Result<(), StoreError>;
    /// A relay registration: creates or updates the device's row in `devices`.
    fn record_device_registration(&self, name: &str, door: Door, info: &DeviceInfo)
        -> Result<(), StoreError>;
    /// A relay device left: last_seen_at = now, and its session's packet counts added.
    fn record_device_departure(&self, name: &str, packets_sent: u64, packets_received: u64)
        -> Result<(), StoreError>;
    /// The key that signs device tokens, created on first use.
    fn token_key(&self) -> Result<Vec<u8>, StoreError>;
    /// Records an issued token.
    fn record_token(&self, id: &str, device: &str, expires_at: &str)
        -> Result<TokenRecord, StoreError>;
    /// Revokes a token by id; `false` if no such token was issued.
    fn revoke_token(&self, id: &str) -> Result<bool, StoreError>;
    /// Ids of revoked tokens that have not expired yet (loaded at start).
    fn revoked_token_ids(&self) -> Result<Vec<String>, StoreError>;
    /// Every issued token, newest first.
    fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Sets (or clears) the device that holds a lock; `LockNotFound` for unknown locks.
    fn set_lock_holder(&self, serial: &str, holder: Option<&str>) -> Result<LockRecord, StoreError>;
    /// Creates a Bester user; `Ok(false)` if the username is taken.
    fn create_bester_user(&self, username: &str, password_hash: &str) -> Result<bool, StoreError>;
    /// Replaces a user's password hash; `Ok(false)` if there is no such user.
    fn set_bester_password(&self, username: &str, password_hash: &str) -> Result<bool, StoreError>;
    /// Deletes a user; `Ok(false)` if there is no such user.
    fn delete_bester_user(&self, username: &str) -> Result<bool, StoreError>;
    /// The stored password hash of a user, if the user exists.
    fn bester_password_hash(&self, username: &str) -> Result<Option<String>, StoreError>;
    /// Records a successful authentication (last_login_at = now).
    fn record_bester_login(&self, username: &str) -> Result<(), StoreError>;
    /// Every user, ordered by username.
    fn list_bester_users(&self) -> Result<Vec<BesterUser>, StoreError>;
}

/// The Unix time until which a pending pairing request may exist, from the latest
/// `expires_at` of the pending ones (unreadable times count as "maybe, for a day").
fn pending_until(latest: Option<String>) -> i64 {
    latest.map_or(0, |t| {
        crate::domain::parse_ts(&t).map_or(
            time::OffsetDateTime::now_utc().unix_timestamp() + 86_400,
            |t| t.unix_timestamp(),
        )
    })
}
