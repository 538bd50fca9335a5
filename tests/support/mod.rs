//! What the integration suites share (`tests/hub`, `tests/bester`): a real hub
//! (`homehub::app::Server`) on an ephemeral port with a temp SQLite file, its admin API and
//! metrics, and the one way to wait for something the hub does in the background.
//! Each suite includes it with `#[path = "../support/mod.rs"] mod support;`.

#![allow(dead_code)] // each suite uses its own part

mod eventually;
pub mod postgres;

pub use eventually::{eventually, eventually_within};

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use homehub::app::Server;
use homehub::config::Config;
use serde_json::Value;
use tokio::task::JoinHandle;

#[allow(unused_imports)] // each suite uses its own part
pub use eventually::WAIT;

/// Hub logs on stderr when `TEST_LOG` is set.
pub fn init_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        homehub::telemetry::init_blocking();
    }
}

/// The shipped defaults (an empty command line) on `bind`, with the database file
/// `homehub.db` in `dir` and `admin_token` as the admin token.
pub fn config_in(dir: &Path, bind: SocketAddr, admin_token: &str) -> Config {
    let db = dir.join("homehub.db");
    let mut config = Config::default_for(bind, &format!("sqlite://{}", db.display()));
    config.admin_token = Some(admin_token.to_owned());
    config
}

/// The store the integration suites run on: `HOMEHUB_TEST_STORE=postgres` for the test
/// PostgreSQL server (`HOMEHUB_TEST_POSTGRES_URL`), else SQLite. `./scripts/test.sh` runs
/// the hub suite once on each.
pub fn store_under_test() -> homehub::store::Kind {
    match std::env::var("HOMEHUB_TEST_STORE").as_deref() {
        Ok("postgres") => homehub::store::Kind::Postgres,
        Ok("sqlite") | Ok("") | Err(_) => homehub::store::Kind::Sqlite,
        Ok(other) => panic!("HOMEHUB_TEST_STORE={other:?}: use sqlite or postgres"),
    }
}

/// The database of a hub whose files are in `dir`: the URL kept in `dir/database_url` if
/// there is one, else on the store under test the SQLite file `dir/homehub.db`, or a fresh
/// PostgreSQL database whose URL is then kept there, so a hub restarted on `dir` finds the
/// same database.
pub async fn database_in(dir: &Path) -> String {
    let kept = dir.join("database_url");
    if let Ok(url) = std::fs::read_to_string(&kept) {
        return url;
    }
    match store_under_test() {
        homehub::store::Kind::Sqlite => format!("sqlite://{}", dir.join("homehub.db").display()),
        homehub::store::Kind::Postgres => {
            let url = postgres::fresh_postgres_database().await;
            std::fs::write(&kept, &url).expect("keep the database URL");
            url
        }
    }
}

/// Rows of `sql` on the database at `url`, every column read as text.
pub async fn text_rows(url: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    use sqlx::{Connection, Row};
    fn read<R: Row>(rows: Vec<R>) -> Vec<Vec<Option<String>>>
    where
        for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        usize: sqlx::ColumnIndex<R>,
    {
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.try_get(i).unwrap_or_else(|e| panic!("column {i}: {e}")))
                    .collect()
            })
            .collect()
    }
    match homehub::store::Kind::of(url) {
        homehub::store::Kind::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(url).await.expect("open db");
            let rows = sqlx::query(sql).fetch_all(&mut conn).await;
            let _ = conn.close().await;
            read(rows.unwrap_or_else(|e| panic!("{sql}: {e}")))
        }
        homehub::store::Kind::Postgres => {
            let mut conn = sqlx::PgConnection::connect(url).await.expect("open db");
            let rows = sqlx::query(sql).fetch_all(&mut conn).await;
            let _ = conn.close().await;
            read(rows.unwrap_or_else(|e| panic!("{sql}: {e}")))
        }
    }
}

/// A running hub. Dropping it without [`Running::stop`] aborts the server task.
pub struct Running {
    pub addr: SocketAddr,
    /// The Bester listener, when it is enabled.
    pub bester_addr: Option<SocketAddr>,
    admin_token: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// Binds and runs a hub on `config`.
    pub async fn start(config: Config) -> Running {
        init_logs();
        let admin_token = config.admin_token.clone().unwrap_or_default();
        let server = Server::bind(config).await.expect("bind hub");
        let addr = server.local_addr().expect("local addr");
        let bester_addr = server.bester_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        Running {
            addr,
            bester_addr,
            admin_token,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Graceful shutdown (as on SIGTERM), waiting for it to finish cleanly.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("hub stops in time")
                .expect("hub task")
                .expect("hub ran cleanly");
        }
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Admin request with the token; returns (status, JSON body or Null).
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let client = reqwest::Client::new();
        let mut req = client
            .request(method, self.http(path))
            .bearer_auth(&self.admin_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("admin request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// The `/metrics` exposition.
    pub async fn metrics_text(&self) -> String {
        reqwest::Client::new()
            .get(self.http("/metrics"))
            .bearer_auth(&self.admin_token)
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// A value of `/metrics` (`None` when absent).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        metric_value(&self.metrics_text().await, name)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The value of `name` (with its labels, if any, as written) in a Prometheus exposition.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}
