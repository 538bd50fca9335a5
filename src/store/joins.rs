//! Group commit for lock joins.
//!
//! Every lock join writes (first sight creates the lock and its UUID; later joins record the
//! holder and last-seen time), and its reply must not go out before the write is durable in
//! the WAL, or a crash could forget a UUID the lock was already given. One writer task owns
//! these writes: it takes every join waiting in its queue, writes them with one multi-row
//! upsert statement (one transaction), and answers them all after that commit. Under a join
//! storm a batch grows to whatever arrived during the previous commit, so the cost of a
//! commit is shared by many joins; with no load a join is committed alone, at once.

use std::collections::HashMap;

use sqlx::{Row, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::{LOCK_COLUMNS, StoreError, lock_from_row};
use crate::domain::{LockRecord, now_rfc3339};

/// Most joins committed in one transaction.
const MAX_BATCH: usize = 512;
/// Joins that may wait for the writer before `join` callers wait for room.
const QUEUE: usize = 8192;

/// The answer to one join: `None` when an exclusive join found the lock held by another
/// device.
type Answer = Result<Option<LockRecord>, StoreError>;

struct Op {
    serial: String,
    holder: String,
    exclusive: bool,
    reply: oneshot::Sender<Answer>,
}

/// Handle to the join writer; cheap to clone.
#[derive(Clone, Debug)]
pub(super) struct JoinWriter {
    tx: mpsc::Sender<Op>,
}

fn writer_gone() -> StoreError {
    StoreError::Database(sqlx::Error::PoolClosed)
}

impl JoinWriter {
    /// Starts the writer task on `pool`. It ends when every handle is dropped.
    pub(super) fn spawn(pool: SqlitePool) -> JoinWriter {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, rx));
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
        self.tx.send(op).await.map_err(|_| writer_gone())?;
        answer.await.map_err(|_| writer_gone())?
    }
}

async fn run(pool: SqlitePool, mut rx: mpsc::Receiver<Op>) {
    let mut batch: Vec<Op> = Vec::with_capacity(MAX_BATCH);
    while let Some(op) = rx.recv().await {
        batch.push(op);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        match commit(&pool, &batch).await {
            Ok(records) => {
                for (op, record) in batch.drain(..).zip(records) {
                    let _ = op.reply.send(record);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, joins = batch.len(), "lock join batch failed");
                let msg = e.to_string();
                for op in batch.drain(..) {
                    let err = sqlx::Error::Protocol(format!("join batch failed: {msg}"));
                    let _ = op.reply.send(Err(StoreError::Database(err)));
                }
            }
        }
    }
}

/// Runs the batch as one multi-row upsert (one statement, one implicit transaction, one
/// round trip to SQLite's worker thread) per auth mode present in the batch. A row that
/// cannot be decoded fails only its own join; a statement failure fails the batch.
async fn commit(pool: &SqlitePool, batch: &[Op]) -> Result<Vec<Answer>, sqlx::Error> {
    let now = now_rfc3339();
    // Returned rows by serial, for shared-mode [0] and exclusive [1] joins.
    let mut found: [HashMap<String, Result<LockRecord, String>>; 2] = Default::default();
    for exclusive in [false, true] {
        let ops: Vec<&Op> = batch
            .iter()
            .filter(|op| op.exclusive == exclusive)
            .collect();
        if ops.is_empty() {
            continue;
        }
        // Rows are padded to a power of two by repeating the last join (an upsert of the
        // same row twice changes nothing), so SQLite's statement cache holds a handful of
        // statements instead of one per batch size.
        let rows = ops.len().next_power_of_two();
        let sql = upsert_sql(rows, exclusive);
        let mut query = sqlx::query(&sql);
        let padding = std::iter::repeat_n(ops[ops.len() - 1], rows - ops.len());
        for op in ops.iter().copied().chain(padding) {
            // serial, uuid, name (the serial until renamed), holder, first and last seen.
            query = query
                .bind(&op.serial)
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(&op.serial)
                .bind(&op.holder)
                .bind(&now)
                .bind(&now);
        }
        for row in query.fetch_all(pool).await? {
            let serial: String = row.try_get("serial")?;
            let record = lock_from_row(&row).map_err(|e| e.to_string());
            found[usize::from(exclusive)].insert(serial, record);
        }
    }
    Ok(batch
        .iter()
        .map(
            |op| match found[usize::from(op.exclusive)].get(&op.serial) {
                None => Ok(None),
                // In token mode, two joins of one new lock in one batch: the first holder wins.
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

/// `INSERT … VALUES (…), (…) … ON CONFLICT DO UPDATE … RETURNING …` for `rows` joins. In
/// token mode (`exclusive`) a lock held by another device is left alone and not returned.
fn upsert_sql(rows: usize, exclusive: bool) -> String {
    let mut sql = String::with_capacity(300 + rows * 36);
    sql.push_str(
        "INSERT INTO locks (serial, uuid, name, holder_device, first_seen_at, last_seen_at) VALUES ",
    );
    // Anonymous `?` placeholders, each bound once: sqlx maps every placeholder through
    // sqlite3_bind_parameter_name, a linear search of the statement's named parameters, so
    // numbered ones (`?17`) made binding a 512-row batch quadratic (9 % of the hub's CPU in a
    // join storm).
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?,?)");
    }
    sql.push_str(
        " ON CONFLICT (serial) DO UPDATE SET holder_device = excluded.holder_device, \
         last_seen_at = excluded.last_seen_at",
    );
    if exclusive {
        sql.push_str(
            " WHERE locks.holder_device IS NULL OR locks.holder_device = excluded.holder_device",
        );
    }
    sql.push_str(" RETURNING ");
    sql.push_str(LOCK_COLUMNS);
    sql
}
