//! The queue in front of each store's lock-join writer (`sqlite/joins.rs`,
//! `postgres/joins.rs`): callers queue a join and wait for its answer; the writer task takes
//! what is waiting as one batch, writes it, and answers every join of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::StoreError;
use crate::domain::LockRecord;

/// Most joins committed in one transaction.
pub(super) const MAX_BATCH: usize = 512;
/// Joins that may wait for the writer before `join` callers wait for room.
const QUEUE: usize = 8192;

/// The answer to one join: `None` when an exclusive (token-mode) join found the lock held
/// by another device.
pub(super) type Answer = Result<Option<LockRecord>, StoreError>;

/// One queued join.
pub(super) struct Op {
    pub serial: String,
    pub holder: String,
    pub exclusive: bool,
    pub reply: oneshot::Sender<Answer>,
}

pub(super) enum Request {
    Join(Op),
    /// Finish: close the writer's connection, then acknowledge.
    Close(oneshot::Sender<()>),
}

/// Handle to a join writer; cheap to clone.
#[derive(Clone, Debug)]
pub(super) struct JoinWriter {
    tx: mpsc::Sender<Request>,
    known_hits: Arc<AtomicU64>,
}

/// The writer task's end of the queue.
pub(super) struct Inbox {
    pub rx: mpsc::Receiver<Request>,
    /// Joins answered from the writer's copy of known locks.
    pub known_hits: Arc<AtomicU64>,
}

fn writer_gone() -> StoreError {
    StoreError::Database(sqlx::Error::PoolClosed)
}

impl JoinWriter {
    /// A queue and the writer's end of it (for the task the backend spawns).
    pub(super) fn channel() -> (JoinWriter, Inbox) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let known_hits = Arc::new(AtomicU64::new(0));
        let inbox = Inbox {
            rx,
            known_hits: known_hits.clone(),
        };
        (JoinWriter { tx, known_hits }, inbox)
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

    /// Joins answered from the known-lock copy since start.
    pub(super) fn known_hits(&self) -> u64 {
        self.known_hits.load(Ordering::Relaxed)
    }

    /// Lets the joins already queued finish, then closes the writer's connection.
    pub(super) async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.tx.send(Request::Close(done)).await.is_ok() {
            let _ = closed.await;
        }
    }
}

impl Inbox {
    /// Adds `first` and whatever else is already waiting (up to [`MAX_BATCH`]) to `batch`;
    /// a close request ends the batch and is returned.
    pub(super) fn gather(
        &mut self,
        first: Request,
        batch: &mut Vec<Op>,
    ) -> Option<oneshot::Sender<()>> {
        let mut closing = match first {
            Request::Join(op) => {
                batch.push(op);
                None
            }
            Request::Close(done) => Some(done),
        };
        while closing.is_none() && batch.len() < MAX_BATCH {
            match self.rx.try_recv() {
                Ok(Request::Join(op)) => batch.push(op),
                Ok(Request::Close(done)) => closing = Some(done),
                Err(_) => break,
            }
        }
        closing
    }

    /// Sends every join of `batch` its answer and counts the copy's hits, or sends each the
    /// batch's error (`Unavailable` when the database was out of reach or busy).
    pub(super) fn answer(
        &self,
        batch: &mut Vec<Op>,
        answers: Result<(Vec<Answer>, u64), sqlx::Error>,
    ) {
        match answers {
            Ok((answers, hits)) => {
                self.known_hits.fetch_add(hits, Ordering::Relaxed);
                for (op, answer) in batch.drain(..).zip(answers) {
                    let _ = op.reply.send(answer);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, joins = batch.len(), "lock join batch failed");
                let unavailable = super::is_unavailable(&e);
                let msg = format!("join batch failed: {e}");
                for op in batch.drain(..) {
                    let err = if unavailable {
                        StoreError::Unavailable(msg.clone())
                    } else {
                        StoreError::Database(sqlx::Error::Protocol(msg.clone()))
                    };
                    let _ = op.reply.send(Err(err));
                }
            }
        }
    }
}
