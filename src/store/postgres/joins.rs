//! Group commit for lock joins on PostgreSQL.
//!
//! As on SQLite (`store::sqlite::joins`), one writer task takes every join waiting in its
//! queue and writes them together, answering each after the commit. Here a batch is at
//! most three statements, each committing by itself: the known locks' touch (below), then
//! the upserts of shared-mode and token-mode joins, each an
//! `INSERT … SELECT FROM unnest($arrays) ON CONFLICT DO UPDATE … RETURNING`. Each is one
//! round trip whatever the batch size, and one prepared statement for every size.
//!
//! PostgreSQL refuses to update one row twice in a statement, so each statement carries a
//! serial once: for shared joins the last join of a serial in the batch (its holder is the
//! one left, as SQLite leaves it), for token-mode joins the first (the first holder wins);
//! every join of that serial is answered from the returned row.
//!
//! The writer runs on a pool of one connection of its own (it reconnects by itself after
//! the server went away; a batch waits at most `ACQUIRE_TIMEOUT` for it).
//!
//! **Known locks.** As on SQLite, the writer keeps a copy of the lock rows its joins
//! returned, and a join of a lock in the copy is written as a small `UPDATE … RETURNING
//! serial` and answered from the copy. PostgreSQL has no `data_version`; the copy keeps
//! each row's `xmin` instead (the id of the transaction that last wrote the row version,
//! which every update by anyone changes: another hub process or node, an administrator's
//! `psql`), and the update only touches a row whose `xmin` is still the one the copy holds
//! (`WHERE locks.xmin = t.seen`). A row someone else wrote since is not touched, so its
//! join goes the first-sight way, which reads the row as it is now and refills the copy.
//! Concurrent writers are ordered by PostgreSQL's row locks (an update that waited for
//! another re-checks the condition on the new row version), so no change is missed and the
//! check costs no round trip of its own. If a batch's transaction fails, the copy is
//! dropped.

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::types::Json;

use super::{ACQUIRE_TIMEOUT, LOCK_COLUMNS, lock_from_row};
use crate::domain::{LockRecord, now_rfc3339};
use crate::store::StoreError;
use crate::store::join_queue::{Answer, Inbox, JoinWriter, MAX_BATCH, Op};

/// Most lock rows kept for known-lock joins; beyond that the copy starts over.
const MAX_KNOWN: usize = 65_536;

/// A lock row as the copy keeps it, with the `xmin` of the row version it was read from.
struct KnownLock {
    record: LockRecord,
    xmin: i64,
}

type Known = HashMap<String, KnownLock>;

/// Starts the writer task on a connection of its own to `options` (opened when the first
/// batch needs it). `new_lock_flags` is the `feature_flags` a lock gets on first sight.
pub(super) fn spawn(options: PgConnectOptions, new_lock_flags: Value) -> JoinWriter {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(options);
    let (writer, inbox) = JoinWriter::channel();
    tokio::spawn(run(pool, inbox, new_lock_flags));
    writer
}

async fn run(pool: PgPool, mut inbox: Inbox, new_lock_flags: Value) {
    let mut known = Known::new();
    let mut batch: Vec<Op> = Vec::with_capacity(MAX_BATCH);
    while let Some(request) = inbox.rx.recv().await {
        let closing = inbox.gather(request, &mut batch);
        if !batch.is_empty() {
            let answers = write_batch(&pool, &mut known, &batch, &new_lock_flags).await;
            if answers.is_err() {
                known.clear();
            }
            inbox.answer(&mut batch, answers);
        }
        if let Some(done) = closing {
            pool.close().await;
            let _ = done.send(());
            return;
        }
    }
}

/// Writes one batch: known locks through [`touch_known`], the rest through [`upsert`].
/// Returns the answers in batch order and how many came from the copy. The copy is changed
/// only once every statement committed.
async fn write_batch(
    pool: &PgPool,
    known: &mut Known,
    batch: &[Op],
    new_lock_flags: &Value,
) -> Result<(Vec<Answer>, u64), sqlx::Error> {
    let now = now_rfc3339();
    // Each statement commits by itself (no BEGIN/COMMIT round trips): a batch of known
    // locks is one round trip and one WAL flush. A later statement failing fails the
    // batch's replies, while an earlier one's write stays: it only recorded a join that
    // the client is told failed and will retry.
    let mut conn = pool.acquire().await?;
    // One candidate per serial: a second join of the same lock in this batch goes the
    // first-sight way, after the first one's write.
    let mut seen = HashSet::new();
    let candidates: Vec<usize> = (0..batch.len())
        .filter(|&i| known.contains_key(&batch[i].serial) && seen.insert(&batch[i].serial))
        .collect();
    let touched = if candidates.is_empty() {
        HashMap::new()
    } else {
        touch_known(
            &mut conn,
            known,
            candidates.iter().map(|&i| &batch[i]),
            &now,
        )
        .await?
    };
    let mut answers: Vec<Option<Answer>> = (0..batch.len()).map(|_| None).collect();
    let mut copied = Vec::new();
    for &i in &candidates {
        let op = &batch[i];
        if let (Some(&xmin), Some(lock)) = (touched.get(&op.serial), known.get(&op.serial)) {
            let mut record = lock.record.clone();
            record.holder_device = Some(op.holder.clone());
            record.last_seen_at = Some(now.clone());
            answers[i] = Some(Ok(Some(record.clone())));
            copied.push(KnownLock { record, xmin });
        }
    }
    let hits = copied.len() as u64;
    let rest: Vec<usize> = (0..batch.len()).filter(|&i| answers[i].is_none()).collect();
    let mut read = Vec::new();
    if !rest.is_empty() {
        let ops: Vec<&Op> = rest.iter().map(|&i| &batch[i]).collect();
        let (written, rows) = upsert(&mut conn, &ops, new_lock_flags, &now).await?;
        for (&i, answer) in rest.iter().zip(written) {
            answers[i] = Some(answer);
        }
        read = rows;
    }
    if known.len() + read.len() > MAX_KNOWN {
        known.clear();
    }
    for lock in copied.into_iter().chain(read) {
        known.insert(lock.record.serial.clone(), lock);
    }
    let answers = answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(StoreError::Database(sqlx::Error::RowNotFound))))
        .collect();
    Ok((answers, hits))
}

/// Records holder and last-seen time of known locks in one `UPDATE … FROM unnest(…)`, only
/// where the row is still the version the copy holds (its `xmin`) and, in token mode, free
/// or already this device's. Returns the serials it updated with their new `xmin`.
async fn touch_known<'a>(
    tx: &mut sqlx::PgConnection,
    known: &Known,
    ops: impl Iterator<Item = &'a Op>,
    now: &str,
) -> Result<HashMap<String, i64>, sqlx::Error> {
    let mut serials = Vec::new();
    let mut holders = Vec::new();
    let mut seen = Vec::new();
    let mut exclusive = Vec::new();
    for op in ops {
        if let Some(lock) = known.get(&op.serial) {
            serials.push(op.serial.as_str());
            holders.push(op.holder.as_str());
            seen.push(lock.xmin);
            exclusive.push(op.exclusive);
        }
    }
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "UPDATE locks SET holder_device = t.holder, last_seen_at = $5 \
         FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bool[]) \
             AS t(serial, holder, seen, exclusive) \
         WHERE locks.serial = t.serial AND locks.xmin::text::bigint = t.seen \
           AND (NOT t.exclusive OR locks.holder_device IS NULL \
                OR locks.holder_device = t.holder) \
         RETURNING locks.serial, locks.xmin::text::bigint",
    )
    .bind(&serials)
    .bind(&holders)
    .bind(&seen)
    .bind(&exclusive)
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Writes joins as at most two upserts (shared and token mode). Returns the answers in
/// `ops` order and the rows read, with their `xmin`, for the copy.
async fn upsert(
    tx: &mut sqlx::PgConnection,
    ops: &[&Op],
    new_lock_flags: &Value,
    now: &str,
) -> Result<(Vec<Answer>, Vec<KnownLock>), sqlx::Error> {
    let mut found: [HashMap<String, Result<LockRecord, String>>; 2] = Default::default();
    let mut read = Vec::new();
    for exclusive in [false, true] {
        // One row per serial: the last shared join of it, or the first token-mode one.
        let mut pick: HashMap<&str, &Op> = HashMap::new();
        for op in ops.iter().copied().filter(|op| op.exclusive == exclusive) {
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
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
        for row in rows {
            let serial: String = sqlx::Row::try_get(&row, "serial")?;
            let xmin: i64 = sqlx::Row::try_get(&row, "row_xmin")?;
            let record = lock_from_row(&row).map_err(|e| e.to_string());
            if let Ok(lock) = &record {
                read.push(KnownLock {
                    record: lock.clone(),
                    xmin,
                });
            }
            found[usize::from(exclusive)].insert(serial, record);
        }
    }
    let answers = ops
        .iter()
        .map(
            |op| match found[usize::from(op.exclusive)].get(&op.serial) {
                None => Ok(None),
                // In token mode, two joins of one new lock in one batch: the first wins.
                Some(Ok(lock))
                    if op.exclusive && lock.holder_device.as_deref() != Some(&op.holder) =>
                {
                    Ok(None)
                }
                Some(Ok(lock)) => Ok(Some(lock.clone())),
                Some(Err(e)) => Err(StoreError::Database(sqlx::Error::Decode(e.clone().into()))),
            },
        )
        .collect();
    Ok((answers, read))
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
        sql.push_str(", locks.xmin::text::bigint AS row_xmin");
        sql
    };
    if exclusive {
        EXCLUSIVE.get_or_init(|| build(true))
    } else {
        SHARED.get_or_init(|| build(false))
    }
}
