//! Group commit for lock joins.
//!
//! Every lock join writes (first sight creates the lock and its UUID; later joins record the
//! holder and last-seen time), and its reply must not go out before the write is durable in
//! the WAL, or a crash could forget a UUID the lock was already given. One writer task owns
//! these writes: it takes every join waiting in its queue, runs them in one transaction, and
//! answers them all after one commit. Under a join storm a batch grows to whatever arrived
//! during the previous commit, so the cost of a commit is shared by many joins; with no load
//! a join is committed alone, at once.

use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use super::{JOIN_LOCK_EXCLUSIVE_SQL, JOIN_LOCK_SQL, StoreError, lock_from_row};
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

/// Runs the batch in one transaction. A row that cannot be decoded fails only its own join;
/// a statement or commit failure fails the batch.
async fn commit(pool: &SqlitePool, batch: &[Op]) -> Result<Vec<Answer>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let now = now_rfc3339();
    let mut records = Vec::with_capacity(batch.len());
    for op in batch {
        let sql = if op.exclusive {
            JOIN_LOCK_EXCLUSIVE_SQL
        } else {
            JOIN_LOCK_SQL
        };
        let row = sqlx::query(sql)
            .bind(&op.serial)
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(&op.holder)
            .bind(&now)
            .fetch_optional(&mut *tx)
            .await?;
        records.push(
            row.as_ref()
                .map(lock_from_row)
                .transpose()
                .map_err(StoreError::from),
        );
    }
    tx.commit().await?;
    Ok(records)
}
