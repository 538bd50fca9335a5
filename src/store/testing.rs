//! Databases for tests: a temp SQLite file, or a fresh database on the test PostgreSQL
//! server (`HOMEHUB_TEST_POSTGRES_URL`, started by `./scripts/test.sh`; see
//! docs/testing.md). A PostgreSQL test without that server fails and says so: it is never
//! skipped.

use super::{Kind, Store, StoreOptions};

/// A database for one test, and its URL. A SQLite file is removed with the value; a
/// PostgreSQL database stays on the throw-away test server.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(kind: Kind) -> TestDb {
        match kind {
            Kind::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite://{}", dir.path().join("homehub.db").display());
                TestDb {
                    url,
                    _dir: Some(dir),
                }
            }
            Kind::Postgres => TestDb {
                url: fresh_postgres_database().await,
                _dir: None,
            },
        }
    }

    /// The store on this database, with the default options.
    pub async fn open(&self) -> Store {
        self.open_with(&StoreOptions::default()).await
    }

    pub async fn open_with(&self, opts: &StoreOptions) -> Store {
        Store::open_with(&self.url, opts)
            .await
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.url))
    }
}

#[path = "../../tests/support/postgres.rs"]
mod postgres_db;
#[path = "../../tests/support/eventually.rs"]
mod wait;
pub use postgres_db::fresh_postgres_database;
pub use wait::eventually;
