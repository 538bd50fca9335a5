//! `homehub db copy`: moves a home's data from one store to another (SQLite → PostgreSQL to
//! outgrow one machine, and any other direction: PostgreSQL → SQLite, SQLite → SQLite).
//!
//! [`copy`] opens both with [`Store::open`] (which applies pending migrations, so both have
//! the same tables), closes them, and then works on plain sqlx connections of its own:
//!
//! 1. reads every table the hub owns ([`TABLES`], in dependency order) from the source in
//!    one read transaction (a consistent snapshot), every column as text
//!    (`CAST(col AS TEXT)` reads the same on both stores);
//! 2. writes them to the target in **one** transaction: it refuses a target that holds any
//!    row (unless `replace`, which empties the tables first, in reverse order), inserts the
//!    rows in batches with the target's types (on PostgreSQL text cast in SQL to `jsonb`,
//!    `bigint`, `smallint`; on SQLite integers bound as integers), keeps the ids of
//!    `paired_items`, `access_decisions` and `lock_events` (PostgreSQL:
//!    `OVERRIDING SYSTEM VALUE`, then the identity is moved past them), and commits. An
//!    error anywhere rolls it back: nothing is left half-copied;
//! 3. counts the rows of every table on both and reports them; a difference is an error.
//!
//! `pairing_requests` is copied in insertion order (`created_at, rowid` on SQLite,
//! `created_at, id` on PostgreSQL, whose `id` column stands for SQLite's rowid); the target
//! numbers them itself. `_sqlx_migrations` is not copied (each store has its own).

use std::path::PathBuf;
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode};
use sqlx::{Connection, Row};

use super::{Kind, Store, StoreError};

/// How a column is written on the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Col {
    /// TEXT on both.
    Text,
    /// INTEGER on SQLite, BIGINT on PostgreSQL.
    Int,
    /// INTEGER on SQLite, SMALLINT on PostgreSQL.
    SmallInt,
    /// JSON text on SQLite, `jsonb` on PostgreSQL.
    Json,
}

use Col::{Int, Json, SmallInt, Text};

/// A table the hub owns, as the copy reads and writes it.
struct Table {
    name: &'static str,
    /// Every column that is copied, with how it is written.
    columns: &'static [(&'static str, Col)],
    /// Rows are read in this order (`ORDER BY`) on SQLite and on PostgreSQL.
    order_sqlite: &'static str,
    order_postgres: &'static str,
    /// Has an `id` that is copied: on PostgreSQL a `GENERATED ALWAYS AS IDENTITY` column,
    /// written with `OVERRIDING SYSTEM VALUE` and its sequence moved past the copied ids.
    keeps_identity: bool,
}

/// The hub's tables in dependency order (a table only references tables before it).
const TABLES: &[Table] = &[
    Table {
        name: "locks",
        columns: &[
            ("serial", Text),
            ("uuid", Text),
            ("name", Text),
            ("mode", Int),
            ("feature_flags", Json),
            ("config", Json),
            ("intended_state", Json),
            ("reported_state", Json),
            ("reported_at", Text),
            ("holder_device", Text),
            ("first_seen_at", Text),
            ("last_seen_at", Text),
        ],
        order_sqlite: "serial",
        order_postgres: "serial",
        keeps_identity: false,
    },
    Table {
        name: "pairing_requests",
        columns: &[
            ("pair_id", Text),
            ("lock_serial", Text),
            ("name", Text),
            ("item_type", Text),
            ("created_at", Text),
            ("expires_at", Text),
            ("completed_at", Text),
            ("delivered_at", Text),
            ("deliveries", Int),
            ("cancelled_at", Text),
        ],
        // Insertion order: the target numbers the rows itself (its rowid / id).
        order_sqlite: "created_at, rowid",
        order_postgres: "created_at, id",
        keeps_identity: false,
    },
    Table {
        name: "paired_items",
        columns: &[
            ("id", Int),
            ("lock_serial", Text),
            ("item_serial", Text),
            ("name", Text),
            ("item_type", Text),
            ("pair_id", Text),
            ("paired_at", Text),
            ("revoked_at", Text),
        ],
        order_sqlite: "id",
        order_postgres: "id",
        keeps_identity: true,
    },
    Table {
        name: "access_decisions",
        columns: &[
            ("id", Int),
            ("lock_serial", Text),
            ("item", Text),
            ("device", Text),
            ("granted", SmallInt),
            ("user_name", Text),
            ("decided_at", Text),
        ],
        order_sqlite: "id",
        order_postgres: "id",
        keeps_identity: true,
    },
    Table {
        name: "lock_events",
        columns: &[
            ("id", Int),
            ("lock_serial", Text),
            ("from_device", Text),
            ("message", Json),
            ("received_at", Text),
        ],
        order_sqlite: "id",
        order_postgres: "id",
        keeps_identity: true,
    },
    Table {
        name: "devices",
        columns: &[
            ("name", Text),
            ("door", Text),
            ("description", Text),
            ("version", Text),
            ("interface", Text),
            ("first_seen_at", Text),
            ("registered_at", Text),
            ("last_seen_at", Text),
            ("packets_sent", Int),
            ("packets_received", Int),
        ],
        order_sqlite: "name",
        order_postgres: "name",
        keeps_identity: false,
    },
    Table {
        name: "bester_users",
        columns: &[
            ("username", Text),
            ("password_hash", Text),
            ("created_at", Text),
            ("password_changed_at", Text),
            ("last_login_at", Text),
        ],
        order_sqlite: "username",
        order_postgres: "username",
        keeps_identity: false,
    },
    Table {
        // The device-token signing key: copied so that issued tokens stay valid.
        name: "hub_settings",
        columns: &[("key", Text), ("value", Text)],
        order_sqlite: "key",
        order_postgres: "key",
        keeps_identity: false,
    },
    Table {
        name: "device_tokens",
        columns: &[
            ("id", Text),
            ("device", Text),
            ("issued_at", Text),
            ("expires_at", Text),
            ("revoked_at", Text),
        ],
        order_sqlite: "id",
        order_postgres: "id",
        keeps_identity: false,
    },
];

/// The tables [`copy`] copies, in the order it writes them.
pub fn table_names() -> impl Iterator<Item = &'static str> {
    TABLES.iter().map(|t| t.name)
}

/// Bound values per statement: SQLite's oldest limit (999) and well under PostgreSQL's
/// (65535), so a home of thousands of rows takes a few dozen statements.
const SQLITE_MAX_BINDS: usize = 999;
const POSTGRES_MAX_BINDS: usize = 30_000;

/// What can go wrong; every message is meant for the person running `homehub db copy`.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("the source {url} does not exist (no file {path}); give the SQLite file of the hub")]
    SourceMissing { url: String, path: String },
    #[error("{url} is an in-memory SQLite database; give a file (sqlite://path)")]
    InMemory { url: String },
    #[error("the source and the target are the same database ({url})")]
    SameDatabase { url: String },
    #[error("opening {url}: {error}")]
    Open { url: String, error: StoreError },
    #[error("connecting to {url}: {error}")]
    Connect { url: String, error: sqlx::Error },
    #[error("reading {table} from the source: {error}")]
    Read {
        table: &'static str,
        error: sqlx::Error,
    },
    #[error(
        "the target {url} is not empty ({tables}); give --replace to empty it first \
         (nothing was written)"
    )]
    TargetNotEmpty { url: String, tables: String },
    #[error("{table}.{column}: {value:?} is not an integer (nothing was written)")]
    NotAnInteger {
        table: &'static str,
        column: &'static str,
        value: String,
    },
    #[error("writing {table} to the target: {error} (nothing was written)")]
    Write {
        table: &'static str,
        error: sqlx::Error,
    },
    #[error("{what} on the target: {error} (nothing was written)")]
    Target {
        what: &'static str,
        error: sqlx::Error,
    },
    #[error("counting the rows of {table} after the copy: {error}")]
    Count {
        table: &'static str,
        error: sqlx::Error,
    },
    #[error(
        "the row counts differ after the copy ({details}); the target was written: stop every \
         hub using the source and copy again with --replace"
    )]
    Mismatch { details: String },
}

/// One table's rows, every column as text (`None` for NULL), in [`Table::columns`] order.
type Rows = Vec<Vec<Option<String>>>;

/// A plain connection of the copy's own.
enum Conn {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

/// Copies every table of the hub from the store at `from` to the store at `to` (URLs as in
/// `DATABASE_URL`) in one transaction on the target, then checks the row counts. A target
/// that holds any row is refused unless `replace`, which empties it first (in the same
/// transaction). Returns each table with its row count, in [`table_names`] order.
pub async fn copy(
    from: &str,
    to: &str,
    replace: bool,
) -> Result<Vec<(&'static str, u64)>, CopyError> {
    let from_kind = Kind::of(from);
    let to_kind = Kind::of(to);
    let from_sqlite = match from_kind {
        Kind::Sqlite => {
            let path = sqlite_path(from)?;
            if !path.exists() {
                return Err(CopyError::SourceMissing {
                    url: redact(from),
                    path: path.display().to_string(),
                });
            }
            Some(path)
        }
        Kind::Postgres => None,
    };
    let to_sqlite = match to_kind {
        Kind::Sqlite => Some(sqlite_path(to)?),
        Kind::Postgres => None,
    };
    if same_database(from, from_sqlite.as_ref(), to, to_sqlite.as_ref()) {
        return Err(CopyError::SameDatabase { url: redact(to) });
    }

    // Both schemas up to date (the hub's own migrations), then the stores closed: the copy
    // runs on connections of its own.
    for url in [from, to] {
        let store = Store::open(url).await.map_err(|error| CopyError::Open {
            url: redact(url),
            error,
        })?;
        store.close().await;
    }

    let mut source = connect(from, from_kind).await?;
    let mut target = connect(to, to_kind).await?;
    let result = run(&mut source, &mut target, to, replace).await;
    source.close().await;
    target.close().await;
    result
}

async fn run(
    source: &mut Conn,
    target: &mut Conn,
    to: &str,
    replace: bool,
) -> Result<Vec<(&'static str, u64)>, CopyError> {
    let data = match source {
        Conn::Sqlite(c) => read_sqlite(c).await?,
        Conn::Postgres(c) => read_postgres(c).await?,
    };
    match target {
        Conn::Sqlite(c) => write_sqlite(c, &data, to, replace).await?,
        Conn::Postgres(c) => write_postgres(c, &data, to, replace).await?,
    }

    // The check: every table has as many rows on both (and as many as were copied).
    let on_source = source.counts().await?;
    let on_target = target.counts().await?;
    let mut report = Vec::with_capacity(TABLES.len());
    let mut differences = Vec::new();
    for (i, table) in TABLES.iter().enumerate() {
        let copied = data[i].len() as u64;
        let (s, t) = (on_source[i], on_target[i]);
        if s != t || t != copied {
            differences.push(format!(
                "{}: {s} on the source, {t} on the target, {copied} copied",
                table.name
            ));
        }
        report.push((table.name, t));
    }
    if differences.is_empty() {
        Ok(report)
    } else {
        Err(CopyError::Mismatch {
            details: differences.join("; "),
        })
    }
}

impl Conn {
    /// The number of rows of every table, in [`TABLES`] order.
    async fn counts(&mut self) -> Result<Vec<u64>, CopyError> {
        let mut out = Vec::with_capacity(TABLES.len());
        for table in TABLES {
            let sql = format!("SELECT COUNT(*) FROM {}", table.name);
            let n = match self {
                Conn::Sqlite(c) => sqlx::query_scalar::<_, i64>(&sql).fetch_one(c).await,
                Conn::Postgres(c) => sqlx::query_scalar::<_, i64>(&sql).fetch_one(c).await,
            }
            .map_err(|error| CopyError::Count {
                table: table.name,
                error,
            })?;
            out.push(u64::try_from(n).unwrap_or(0));
        }
        Ok(out)
    }

    async fn close(self) {
        // Nothing is pending on either: a failed close only loses the goodbye.
        let _ = match self {
            Conn::Sqlite(c) => c.close().await,
            Conn::Postgres(c) => c.close().await,
        };
    }
}

/// The file of a SQLite URL, parsed as the SQLite store does (`sqlite://path`,
/// `sqlite:path`, or a bare path taken literally); in-memory databases are refused.
fn sqlite_path(url: &str) -> Result<PathBuf, CopyError> {
    sqlite_options(url).map(|o| o.get_filename().to_path_buf())
}

fn sqlite_options(url: &str) -> Result<SqliteConnectOptions, CopyError> {
    if url.contains(":memory:") || url.contains("mode=memory") {
        return Err(CopyError::InMemory { url: redact(url) });
    }
    if url.starts_with("sqlite:") {
        SqliteConnectOptions::from_str(url).map_err(|error| CopyError::Connect {
            url: redact(url),
            error,
        })
    } else {
        Ok(SqliteConnectOptions::new().filename(url))
    }
}

/// Whether `a` and `b` name the same database: the same SQLite file, or the same
/// PostgreSQL database on the same host and port.
fn same_database(a: &str, a_file: Option<&PathBuf>, b: &str, b_file: Option<&PathBuf>) -> bool {
    match (a_file, b_file) {
        (Some(a), Some(b)) => match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
            (Ok(a), Ok(b)) => a == b,
            // A target that does not exist yet is not the source.
            _ => false,
        },
        (None, None) => match (PgConnectOptions::from_str(a), PgConnectOptions::from_str(b)) {
            (Ok(a), Ok(b)) => {
                a.get_host() == b.get_host()
                    && a.get_port() == b.get_port()
                    && a.get_database().unwrap_or(a.get_username())
                        == b.get_database().unwrap_or(b.get_username())
            }
            _ => false,
        },
        _ => false,
    }
}

async fn connect(url: &str, kind: Kind) -> Result<Conn, CopyError> {
    let failed = |error| CopyError::Connect {
        url: redact(url),
        error,
    };
    match kind {
        Kind::Sqlite => {
            // The file exists (the store just opened it) and is in WAL mode already.
            let options = sqlite_options(url)?
                .create_if_missing(false)
                .journal_mode(SqliteJournalMode::Wal)
                .foreign_keys(true)
                .busy_timeout(std::time::Duration::from_secs(5));
            SqliteConnection::connect_with(&options)
                .await
                .map(Conn::Sqlite)
                .map_err(failed)
        }
        Kind::Postgres => {
            let options = PgConnectOptions::from_str(url)
                .map_err(failed)?
                .application_name("homehub db copy");
            PgConnection::connect_with(&options)
                .await
                .map(Conn::Postgres)
                .map_err(failed)
        }
    }
}

/// `SELECT CAST(c AS TEXT), … FROM t ORDER BY …`.
fn select_sql(table: &Table, order: &str) -> String {
    let columns: Vec<String> = table
        .columns
        .iter()
        .map(|(c, _)| format!("CAST({c} AS TEXT)"))
        .collect();
    format!(
        "SELECT {} FROM {} ORDER BY {order}",
        columns.join(", "),
        table.name
    )
}

/// Rows whose every column is (nullable) text.
fn text_rows<R: Row>(rows: Vec<R>) -> Result<Rows, sqlx::Error>
where
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    rows.iter()
        .map(|r| (0..r.len()).map(|i| r.try_get(i)).collect())
        .collect()
}

/// Every table of a SQLite source, in one read transaction (one snapshot).
async fn read_sqlite(conn: &mut SqliteConnection) -> Result<Vec<Rows>, CopyError> {
    let first = TABLES[0].name;
    let read_error = |table| move |error| CopyError::Read { table, error };
    let mut tx = conn.begin().await.map_err(read_error(first))?;
    let mut out = Vec::with_capacity(TABLES.len());
    for table in TABLES {
        let rows = sqlx::query(&select_sql(table, table.order_sqlite))
            .fetch_all(&mut *tx)
            .await
            .and_then(text_rows)
            .map_err(read_error(table.name))?;
        out.push(rows);
    }
    tx.commit().await.map_err(read_error(first))?;
    Ok(out)
}

/// Every table of a PostgreSQL source, in one read-only repeatable-read transaction.
async fn read_postgres(conn: &mut PgConnection) -> Result<Vec<Rows>, CopyError> {
    let first = TABLES[0].name;
    let read_error = |table| move |error| CopyError::Read { table, error };
    let mut tx = conn
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(read_error(first))?;
    let mut out = Vec::with_capacity(TABLES.len());
    for table in TABLES {
        let rows = sqlx::query(&select_sql(table, table.order_postgres))
            .fetch_all(&mut *tx)
            .await
            .and_then(text_rows)
            .map_err(read_error(table.name))?;
        out.push(rows);
    }
    tx.commit().await.map_err(read_error(first))?;
    Ok(out)
}

/// `INSERT INTO t (…) [OVERRIDING SYSTEM VALUE] VALUES (…), …` for `rows` rows, with
/// PostgreSQL's `$n::type` casts or SQLite's `?`.
fn insert_sql(table: &Table, kind: Kind, rows: usize) -> String {
    let names: Vec<&str> = table.columns.iter().map(|(c, _)| *c).collect();
    let mut sql = format!("INSERT INTO {} ({})", table.name, names.join(", "));
    if kind == Kind::Postgres && table.keeps_identity {
        sql.push_str(" OVERRIDING SYSTEM VALUE");
    }
    sql.push_str(" VALUES ");
    let mut n = 0;
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for (i, (_, col)) in table.columns.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            n += 1;
            match kind {
                Kind::Sqlite => sql.push('?'),
                Kind::Postgres => {
                    sql.push_str(&format!("${n}"));
                    sql.push_str(match col {
                        Text => "",
                        Int => "::bigint",
                        SmallInt => "::smallint",
                        Json => "::jsonb",
                    });
                }
            }
        }
        sql.push(')');
    }
    sql
}

/// Rows per statement for `table` under `max_binds` bound values.
fn batch(table: &Table, max_binds: usize) -> usize {
    (max_binds / table.columns.len()).max(1)
}

/// The tables that hold rows, with their counts ("locks 2, hub_settings 1").
fn occupied(counts: &[i64]) -> Option<String> {
    let held: Vec<String> = TABLES
        .iter()
        .zip(counts)
        .filter(|(_, n)| **n > 0)
        .map(|(t, n)| format!("{} {n}", t.name))
        .collect();
    (!held.is_empty()).then(|| held.join(", "))
}

/// An integer column's text as SQLite binds it.
fn integer(
    table: &'static str,
    column: &'static str,
    value: Option<&str>,
) -> Result<Option<i64>, CopyError> {
    value
        .map(|v| {
            v.parse().map_err(|_| CopyError::NotAnInteger {
                table,
                column,
                value: v.to_owned(),
            })
        })
        .transpose()
}

/// Writes `data` to a SQLite target in one `BEGIN IMMEDIATE` transaction.
async fn write_sqlite(
    conn: &mut SqliteConnection,
    data: &[Rows],
    url: &str,
    replace: bool,
) -> Result<(), CopyError> {
    let target = |what| move |error| CopyError::Target { what, error };
    let mut tx = conn
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(target("starting the transaction"))?;
    empty_target::<sqlx::Sqlite>(&mut tx, url, replace).await?;
    for (table, rows) in TABLES.iter().zip(data) {
        for chunk in rows.chunks(batch(table, SQLITE_MAX_BINDS)) {
            let sql = insert_sql(table, Kind::Sqlite, chunk.len());
            let mut query = sqlx::query(&sql);
            for row in chunk {
                for (value, (column, col)) in row.iter().zip(table.columns) {
                    query = match col {
                        Int | SmallInt => {
                            query.bind(integer(table.name, column, value.as_deref())?)
                        }
                        Text | Json => query.bind(value.as_deref()),
                    };
                }
            }
            query
                .execute(&mut *tx)
                .await
                .map_err(|error| CopyError::Write {
                    table: table.name,
                    error,
                })?;
        }
    }
    tx.commit().await.map_err(target("committing"))
}

/// Refuses a target holding rows in any of the hub's tables, or with `replace` empties
/// them (children first), on the target's open transaction.
async fn empty_target<DB>(
    conn: &mut DB::Connection,
    url: &str,
    replace: bool,
) -> Result<(), CopyError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    (i64,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let mut counts = Vec::with_capacity(TABLES.len());
    for table in TABLES {
        let sql = format!("SELECT COUNT(*) FROM {}", table.name);
        let n = sqlx::query_scalar::<DB, i64>(&sql)
            .fetch_one(&mut *conn)
            .await
            .map_err(|error| CopyError::Target {
                what: "counting rows",
                error,
            })?;
        counts.push(n);
    }
    let Some(tables) = occupied(&counts) else {
        return Ok(());
    };
    if !replace {
        return Err(CopyError::TargetNotEmpty {
            url: redact(url),
            tables,
        });
    }
    for table in TABLES.iter().rev() {
        sqlx::query::<DB>(&format!("DELETE FROM {}", table.name))
            .execute(&mut *conn)
            .await
            .map_err(|error| CopyError::Write {
                table: table.name,
                error,
            })?;
    }
    Ok(())
}

/// Writes `data` to a PostgreSQL target in one transaction, with the hub's tables locked
/// against other writers until it commits.
async fn write_postgres(
    conn: &mut PgConnection,
    data: &[Rows],
    url: &str,
    replace: bool,
) -> Result<(), CopyError> {
    let target = |what| move |error| CopyError::Target { what, error };
    let mut tx = conn
        .begin()
        .await
        .map_err(target("starting the transaction"))?;
    // A hub still running on the target waits (reads go on) rather than slipping rows in
    // between the emptiness check and the commit; a lock held elsewhere fails in bounded
    // time instead of hanging.
    sqlx::query("SET LOCAL lock_timeout = '10s'")
        .execute(&mut *tx)
        .await
        .map_err(target("setting lock_timeout"))?;
    let names: Vec<&str> = table_names().collect();
    sqlx::query(&format!(
        "LOCK TABLE {} IN EXCLUSIVE MODE",
        names.join(", ")
    ))
    .execute(&mut *tx)
    .await
    .map_err(target("locking the tables"))?;
    empty_target::<sqlx::Postgres>(&mut tx, url, replace).await?;
    for (table, rows) in TABLES.iter().zip(data) {
        let write_error = |error| CopyError::Write {
            table: table.name,
            error,
        };
        for chunk in rows.chunks(batch(table, POSTGRES_MAX_BINDS)) {
            let sql = insert_sql(table, Kind::Postgres, chunk.len());
            let mut query = sqlx::query(&sql);
            for row in chunk {
                for value in row {
                    query = query.bind(value.as_deref());
                }
            }
            query.execute(&mut *tx).await.map_err(write_error)?;
        }
        if table.keeps_identity {
            // The next id the hub is given comes after the copied ones.
            let t = table.name;
            sqlx::query(&format!(
                "SELECT setval(pg_get_serial_sequence('{t}', 'id'), \
                 COALESCE((SELECT MAX(id) FROM {t}), 0) + 1, false)"
            ))
            .execute(&mut *tx)
            .await
            .map_err(write_error)?;
        }
    }
    tx.commit().await.map_err(target("committing"))
}

/// `url` without its password (`postgres://user:***@host/db`), for messages.
pub fn redact(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let start = scheme_end + 3;
        let authority_end = out[start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| start + i);
        if let Some(at) = out[start..authority_end].rfind('@') {
            let userinfo = &out[start..start + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(start + colon + 1..start + at, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (base, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out = format!("{base}{}", query.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::*;
    use crate::domain::{DeviceInfo, DeviceName, Door, ItemKind, Serial};
    use crate::store::testing::TestDb;

    /// A small home on `store`: two locks, a completed and a pending pairing, access
    /// decisions, events, a relay device, a Bester user, the token key and a token.
    async fn home(store: &Store) {
        let pi = DeviceName::parse("pi").expect("name");
        let a = Serial::parse("L-A").expect("serial");
        let b = Serial::parse("L-B").expect("serial");
        store.join_lock(&a, &pi).await.expect("join");
        store.join_lock(&b, &pi).await.expect("join");
        store
            .set_reported_state(&a, &json!({"locked": false, "battery": 87}))
            .await
            .expect("report");
        let req = store
            .create_pairing("L-A", "Alice", ItemKind::Tag, Duration::from_secs(600))
            .await
            .expect("pairing");
        store
            .complete_pairing(&req.pair_id, "TAG-1")
            .await
            .expect("complete");
        store
            .create_pairing(
                "L-B",
                "Bob",
                ItemKind::MobilePhone,
                Duration::from_secs(600),
            )
            .await
            .expect("pending pairing");
        assert!(
            store
                .decide_access(&a, "TAG-1", "pi")
                .await
                .expect("access")
                .access
        );
        assert!(
            !store
                .decide_access(&a, "TAG-9", "pi")
                .await
                .expect("access")
                .access
        );
        store
            .record_event(&a, &pi, &json!({"event": "door_opened", "n": [1, 2.5]}))
            .await
            .expect("event");
        let info = DeviceInfo {
            description: Some("Lamp".into()),
            version: Some("2.1".into()),
            interface: None,
        };
        store
            .record_device_registration("lamp", Door::Relay, &info)
            .await
            .expect("device");
        store
            .record_device_departure("lamp", 3, 4)
            .await
            .expect("departure");
        assert!(
            store
                .create_bester_user("alice", "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA")
                .await
                .expect("user")
        );
        store.token_key().await.expect("key");
        store
            .record_token("tok-1", "pi", "2099-01-01T00:00:00.000Z")
            .await
            .expect("token");
    }

    /// Every table as text rows, JSON columns parsed (their text differs between SQLite
    /// and `jsonb`).
    async fn dump(store: &Store) -> Vec<Vec<Vec<Option<Value>>>> {
        let mut out = Vec::new();
        for table in TABLES {
            let order = match store.kind() {
                Kind::Sqlite => table.order_sqlite,
                Kind::Postgres => table.order_postgres,
            };
            let rows = store.text_rows(&select_sql(table, order)).await;
            out.push(
                rows.into_iter()
                    .map(|row| {
                        row.into_iter()
                            .zip(table.columns)
                            .map(|(v, (_, col))| {
                                v.map(|v| match col {
                                    Json => serde_json::from_str(&v).expect("JSON"),
                                    _ => Value::String(v),
                                })
                            })
                            .collect()
                    })
                    .collect(),
            );
        }
        out
    }

    async fn copy_between(from: Kind, to: Kind) {
        let source = TestDb::new(from).await;
        let target = TestDb::new(to).await;
        let store = source.open().await;
        home(&store).await;
        let before = dump(&store).await;
        store.close().await;

        let report = copy(&source.url, &target.url, false).await.expect("copy");
        let expected: Vec<(&str, u64)> = vec![
            ("locks", 2),
            ("pairing_requests", 2),
            ("paired_items", 1),
            ("access_decisions", 2),
            ("lock_events", 1),
            ("devices", 1),
            ("bester_users", 1),
            ("hub_settings", 1),
            ("device_tokens", 1),
        ];
        assert_eq!(report, expected);

        let copied = target.open().await;
        assert_eq!(dump(&copied).await, before);
        // New rows get ids after the copied ones.
        let a = Serial::parse("L-A").expect("serial");
        copied
            .decide_access(&a, "TAG-1", "pi")
            .await
            .expect("access after the copy");
        assert_eq!(
            copied.scalar("SELECT MAX(id) FROM access_decisions").await,
            3
        );

        // Not into a non-empty target; with replace, the same again.
        let refused = copy(&source.url, &target.url, false).await;
        assert!(
            matches!(&refused, Err(CopyError::TargetNotEmpty { tables, .. })
                if tables.contains("access_decisions 3")),
            "{refused:?}"
        );
        let report = copy(&source.url, &target.url, true).await.expect("replace");
        assert_eq!(report, expected);
        assert_eq!(dump(&copied).await, before);
        copied.close().await;
    }

    #[tokio::test]
    async fn sqlite_to_sqlite() {
        copy_between(Kind::Sqlite, Kind::Sqlite).await;
    }

    #[tokio::test]
    async fn postgres_to_sqlite() {
        copy_between(Kind::Postgres, Kind::Sqlite).await;
    }

    #[tokio::test]
    async fn sqlite_to_postgres() {
        copy_between(Kind::Sqlite, Kind::Postgres).await;
    }

    #[tokio::test]
    async fn a_failed_write_leaves_the_target_empty() {
        let source = TestDb::new(Kind::Sqlite).await;
        let target = TestDb::new(Kind::Postgres).await;
        let store = source.open().await;
        home(&store).await;
        // JSON that SQLite takes and jsonb does not (a NUL character). The event is
        // written after locks and pairings, so those were inserted before the error.
        let pi = DeviceName::parse("pi").expect("name");
        let a = Serial::parse("L-A").expect("serial");
        store
            .record_event(&a, &pi, &json!({"text": "nul \u{0} here"}))
            .await
            .expect("event");
        store.close().await;

        let err = copy(&source.url, &target.url, false)
            .await
            .expect_err("bad JSON is refused");
        assert!(
            matches!(
                err,
                CopyError::Write {
                    table: "lock_events",
                    ..
                }
            ),
            "{err}"
        );
        let copied = target.open().await;
        for table in table_names() {
            let n = copied
                .scalar(&format!("SELECT COUNT(*) FROM {table}"))
                .await;
            assert_eq!(n, 0, "{table}");
        }
        copied.close().await;
    }

    #[tokio::test]
    async fn refuses_a_missing_source_and_the_same_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = format!("sqlite://{}", dir.path().join("nope.db").display());
        let to = format!("sqlite://{}", dir.path().join("to.db").display());
        let err = copy(&missing, &to, false).await.expect_err("missing");
        assert!(matches!(err, CopyError::SourceMissing { .. }), "{err}");
        assert!(err.to_string().contains("nope.db"), "{err}");
        assert!(!dir.path().join("nope.db").exists());
        assert!(!dir.path().join("to.db").exists(), "nothing created");

        let db = TestDb::new(Kind::Sqlite).await;
        db.open().await.close().await;
        let err = copy(&db.url, &db.url, true).await.expect_err("same");
        assert!(matches!(err, CopyError::SameDatabase { .. }), "{err}");
        let err = copy(&db.url, "sqlite::memory:", false)
            .await
            .expect_err("memory");
        assert!(matches!(err, CopyError::InMemory { .. }), "{err}");
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://hub:s3cret@db.lan:5432/homehub"),
            "postgres://hub:***@db.lan:5432/homehub"
        );
        assert_eq!(
            redact("postgres://db/homehub?user=hub&password=x"),
            "postgres://db/homehub?user=hub&password=***"
        );
        assert_eq!(redact("sqlite://homehub.db"), "sqlite://homehub.db");
    }

    #[test]
    fn insert_statements() {
        let events = &TABLES[4];
        assert_eq!(
            insert_sql(events, Kind::Postgres, 2),
            "INSERT INTO lock_events (id, lock_serial, from_device, message, received_at) \
             OVERRIDING SYSTEM VALUE VALUES ($1::bigint, $2, $3, $4::jsonb, $5), \
             ($6::bigint, $7, $8, $9::jsonb, $10)"
        );
        assert_eq!(
            insert_sql(events, Kind::Sqlite, 1),
            "INSERT INTO lock_events (id, lock_serial, from_device, message, received_at) \
             VALUES (?, ?, ?, ?, ?)"
        );
    }
}
