//! Group commit for lock joins on PostgreSQL.
//!
//! As on SQLite (`store::sqlite::joins`), one writer task takes every join waiting in its
//! queue and writes them together, answering each after the commit. Here a batch is one
//! transaction of at most two statements (shared-mode and token-mode joins), each an
//! `INSERT … SELECT FROM unnest($arrays) ON CONFLICT DO UPDATE … RETURNING`: one statement
//! and one round trip whatever the batch size, and one prepared statement for every size.
//!
//! PostgreSQL refuses to update one row twice in a statement, so each statement carries a
//! serial once: for shared joins the last join of a serial in the batch (its holder is the
//! one left, as SQLite leaves it), for token-mode joins the first (the first holder wins);
//! every join of that serial is answered from the returned row.
//!
//! The writer runs on a pool of one connection of its own (it reconnects by itself after
//! the server went away; a batch waits at most `ACQUIRE_TIMEOUT` for it). There is no
//! known-lock copy yet: every join returns its row from the upsert, so a change made by
//! another hub process or by an administrator is always seen by the next join.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::types::Json;
use tokio::sync::{mpsc, oneshot};

use super::{ACQUIRE_TIMEOUT, LOCK_COLUMNS, lock_from_row};
use crate::domain::{LockRecord, now_rfc3339};
use crate::store::StoreError;

/// Most joins committed in one transaction.
const MAX_BATCH: usize = 512;
/// Joins that may wait for the writer before `join` callers wait for room.
const QUEUE: usize = 8192;

type Answer = Result<Option<LockRecord>, StoreError>;

struct Op {
    serial: String,
    holder: String,
    exclusive: bool,
    reply: oneshot::Sender<Answer>,
}

enum Request {
    Join(Op),
    Close(oneshot::Sender<()>),
}

/// Handle to the join writer; cheap to clone.
#[derive(Clone, Debug)]
pub(super) struct JoinWriter {
    tx: mpsc::Sender<Request>,
}

fn writer_gone() -> StoreError {
    StoreError::Database(sqlx::Error::PoolClosed)
}

impl JoinWriter {
    /// Starts the writer task on a connection of its own to `options` (opened when the
    /// first batch needs it). `new_lock_flags` is the `feature_flags` a lock gets on first
    /// sight.
    pub(super) fn spawn(options: PgConnectOptions, new_lock_flags: Value) -> JoinWriter {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, rx, new_lock_flags));
        JoinWriter { tx }
    }

    /// Queues one join and waits for its commit.
    pub(super) async fn join(&self, serial: &str, holder: &str, exclusive: bool) -> Answer {
        let (reply, answer) = oneshot::channel();
        let op = Op {
            serial: serial.to_owned(),
            holder: holder.to_owned(),
            exclusive,
            reply,
        };
        self.tx
            .send(Request::Join(op))
            .await
            .map_err(|_| writer_gone())?;
        answer.await.map_err(|_| writer_gone())?
    }

    /// Lets the joins already queued finish, then closes the writer's connection.
    pub(super) async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.tx.send(Request::Close(done)).await.is_ok() {
            let _ = closed.await;
        }
    }
}

async fn run(pool: PgPool, mut rx: mpsc::Receiver<Request>, new_lock_flags: Value) {
    let mut batch: Vec<Op> = Vec::with_capacity(MAX_BATCH);
    let mut closing = None;
    while let Some(request) = rx.recv().await {
        match request {
            Request::Join(op) => batch.push(op),
            Request::Close(done) => closing = Some(done),
        }
        while closing.is_none() && batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Request::Join(op)) => batch.push(op),
                Ok(Request::Close(done)) => closing = Some(done),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let answers = commit(&pool, &batch, &new_lock_flags).await;
            answer(&mut batch, answers);
        }
        if let Some(done) = closing {
            pool.close().await;
            let _ = done.send(());
            return;
        }
    }
}

/// Sends every join of `batch` its answer, or the batch's error.
fn answer(batch: &mut Vec<Op>, answers: Result<Vec<Answer>, sqlx::Error>) {
    match answers {
        Ok(answers) => {
            for (op, answer) in batch.drain(..).zip(answers) {
                let _ = op.reply.send(answer);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, joins = batch.len(), "lock join batch failed");
            let msg = e.to_string();
            for op in batch.drain(..) {
                let err = match &e {
                    sqlx::Error::PoolTimedOut => sqlx::Error::PoolTimedOut,
                    _ => sqlx::Error::Protocol(format!("join batch failed: {msg}")),
                };
                let _ = op.reply.send(Err(StoreError::Database(err)));
            }
        }
    }
}

/// Writes one batch in one transaction and returns the answers in batch order.
async fn commit(
    pool: &PgPool,
    batch: &[Op],
    new_lock_flags: &Value,
) -> Result<Vec<Answer>, sqlx::Error> {
    let now = now_rfc3339();
    let mut found: [HashMap<String, Result<LockRecord, String>>; 2] = Default::default();
    let mut tx = pool.begin().await?;
    for exclusive in [false, true] {
        // One row per serial: the last shared join of it, or the first token-mode one.
        let mut pick: HashMap<&str, &Op> = HashMap::new();
        for op in batch.iter().filter(|op| op.exclusive == exclusive) {
            if exclusive {
                pick.entry(op.serial.as_str()).or_insert(op);
            } else {
                pick.insert(op.serial.as_str(), op);
            }
        }
        if pick.is_empty() {
            continue;
        }
        let mut serials = Vec::with_capacity(pick.len());
        let mut uuids = Vec::with_capacity(pick.len());
        let mut holders = Vec::with_capacity(pick.len());
        for (serial, op) in pick {
            serials.push(serial);
            uuids.push(uuid::Uuid::new_v4().to_string());
            holders.push(op.holder.as_str());
        }
        let rows = sqlx::query(upsert_sql(exclusive))
            .bind(&serials)
            .bind(&uuids)
            .bind(&holders)
            .bind(Json(new_lock_flags))
            .bind(&now)
            .fetch_all(&mut *tx)
            .await?;
        for row in rows {
            let record = lock_from_row(&row).map_err(|e| e.to_string());
            let serial = match &record {
                Ok(lock) => lock.serial.clone(),
                Err(_) => sqlx::Row::try_get::<String, _>(&row, "serial")?,
            };
            found[usize::from(exclusive)].insert(serial, record);
        }
    }
    tx.commit().await?;
    Ok(batch
        .iter()
        .map(
            |op| match found[usize::from(op.exclusive)].get(&op.serial) {
                None => Ok(None),
                Some(Ok(lock))
                    if op.exclusive && lock.holder_device.as_deref() != Some(&op.holder) =>
                {
                    Ok(None)
                }
                Some(Ok(lock)) => Ok(Some(lock.clone())),
                Some(Err(e)) => Err(StoreError::Database(sqlx::Error::Decode(e.clone().into()))),
            },
        )
        .collect())
}

/// The upsert of a batch: `$1` serials, `$2` new UUIDs, `$3` holders, `$4` the feature
/// flags of a new lock, `$5` now. In token mode (`exclusive`) a lock held by another
/// device is left alone and not returned.
fn upsert_sql(exclusive: bool) -> &'static str {
    static SHARED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static EXCLUSIVE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let build = |exclusive: bool| {
        let mut sql = String::from(
            "INSERT INTO locks (serial, uuid, name, feature_flags, holder_device, \
             first_seen_at, last_seen_at) \
             SELECT t.serial, t.uuid, t.serial, $4, t.holder, $5, $5 \
             FROM unnest($1::text[], $2::text[], $3::text[]) AS t(serial, uuid, holder) \
             ON CONFLICT (serial) DO UPDATE SET holder_device = excluded.holder_device, \
             last_seen_at = excluded.last_seen_at",
        );
        if exclusive {
            sql.push_str(
                " WHERE locks.holder_device IS NULL \
                 OR locks.holder_device = excluded.holder_device",
            );
        }
        sql.push_str(" RETURNING ");
        sql.push_str(LOCK_COLUMNS);
        sql
    };
    if exclusive {
        EXCLUSIVE.get_or_init(|| build(true))
    } else {
        SHARED.get_or_init(|| build(false))
    }
}
