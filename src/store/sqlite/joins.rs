//! Group commit for lock joins.
//!
//! Every lock join writes (first sight creates the lock and its UUID; later joins record the
//! holder and last-seen time), and its reply must not go out before the write is durable in
//! the WAL, or a crash could forget a UUID the lock was already given. One writer task owns
//! these writes: it takes every join waiting in its queue, writes them with one multi-row
//! statement per kind, and answers them all after that commit. Under a join storm a batch
//! grows to whatever arrived during the previous commit, so the cost of a commit is shared by
//! many joins; with no load a join is committed alone, at once.
//!
//! **Known locks.** The writer keeps a copy of the lock rows its joins returned. A join of
//! a lock in that copy is written as a small `UPDATE … RETURNING serial` (holder and
//! last-seen time, and in token mode only if the lock is free or already this device's),
//! and answered from the copy once the update committed: no new UUID, no upsert and no
//! decoding of the whole row. A lock the update does not find (deleted meanwhile) or may not
//! take (held by another device) goes the first-sight way, which decides from the table.
//! The copy stays true because the writer has a connection of its own and asks SQLite, in
//! the update itself, whether any other connection committed since it last asked
//! (`PRAGMA data_version`, read in the update's `RETURNING`: the hub's other connections
//! and an administrator's `sqlite3` alike); if one did, the copy is dropped, those joins
//! go the first-sight way, and the copy is refilled by the following joins. An
//! in-memory database has a single shared connection, so it runs without the copy.
//!
//! **When someone else holds the database.** Administrators are invited to open the file
//! with `sqlite3`; a transaction left open there holds SQLite's write lock. The writer's
//! own connection waits for it only [`WRITER_BUSY_TIMEOUT`]. Then, since readers are not
//! blocked in WAL mode, it reads the batch's locks as they are committed: a lock the hub
//! already knows is answered at once (its UUID and intended state; in token mode only if
//! it is free or this device's) and its bookkeeping write (holder, last-seen time) is kept
//! and retried every [`RETRY_EVERY`] until it is written (the latest per lock); a lock seen
//! for the first time cannot be created, and its join gets `store unavailable` (the lock
//! firmware retries its join). The log names the process holding the lock (once per
//! outage, [`super::holder`]) and says when writing resumed.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, Row, SqlitePool};

use super::{LOCK_COLUMNS, StoreError, lock_from_row};
use crate::domain::{LockRecord, now_rfc3339};
use crate::store::join_queue::{Answer, Inbox, JoinWriter, MAX_BATCH, Op};

/// How long the writer's own connection waits for another connection's write lock before
/// a batch takes the read-only way (module docs).
const WRITER_BUSY_TIMEOUT: Duration = Duration::from_millis(500);

/// How often bookkeeping writes kept during an outage are retried.
const RETRY_EVERY: Duration = Duration::from_millis(250);

/// Most lock rows kept for known-lock joins; beyond that the copy starts over (a home has
/// tens of locks, a large site thousands).
const MAX_KNOWN: usize = 65_536;

/// Where the writer's statements run.
enum Db {
    /// A connection of its own (file databases): the known-lock copy can be kept true.
    Own(SqliteConnection),
    /// The pool's one connection (in-memory databases): no copy.
    Shared(SqlitePool),
}

/// The known-lock copy: rows by serial, valid for one `PRAGMA data_version`.
#[derive(Default)]
struct Known {
    data_version: Option<i64>,
    /// Boxed: the map's table has room for up to twice as many entries as it holds.
    locks: HashMap<String, Box<KnownLock>>,
}

/// A lock row as the copy keeps it: JSON columns as their text, since a parsed map costs
/// ≈ 0.7 KiB per lock (a B-tree node) against a few dozen bytes of text.
struct KnownLock {
    record: LockRecord,
    feature_flags: Box<str>,
    config: Box<str>,
    intended_state: Box<str>,
    reported_state: Option<Box<str>>,
}

impl Known {
    /// Records the `data_version` a statement of the writer read. `false` (and the copy
    /// dropped) when another connection committed since the copy was last found true.
    fn still_true_at(&mut self, version: i64) -> bool {
        if self.data_version == Some(version) {
            return true;
        }
        self.locks.clear();
        self.data_version = Some(version);
        false
    }
}

impl KnownLock {
    fn new(mut record: LockRecord) -> KnownLock {
        use serde_json::Value;
        let text = |v: Value| v.to_string().into_boxed_str();
        KnownLock {
            feature_flags: text(Value::from(std::mem::take(&mut record.feature_flags))),
            config: text(record.config.take()),
            intended_state: text(record.intended_state.take()),
            reported_state: record.reported_state.take().map(text),
            record,
        }
    }

    /// The full record, JSON columns parsed again.
    fn to_record(&self) -> Result<LockRecord, serde_json::Error> {
        Ok(LockRecord {
            feature_flags: serde_json::from_str(&self.feature_flags)?,
            config: serde_json::from_str(&self.config)?,
            intended_state: serde_json::from_str(&self.intended_state)?,
            reported_state: match &self.reported_state {
                Some(text) => Some(serde_json::from_str(text)?),
                None => None,
            },
            ..self.record.clone()
        })
    }
}

/// Starts the writer task. With `own` (a file database) it opens a connection of its own
/// and keeps the known-lock copy; otherwise it borrows `pool`'s connection per batch. It
/// ends when every handle is dropped or [`JoinWriter::close`] is called. `new_lock_flags`
/// is the `feature_flags` JSON a lock gets on first sight.
pub(super) async fn spawn(
    pool: SqlitePool,
    own: Option<&SqliteConnectOptions>,
    new_lock_flags: String,
) -> Result<JoinWriter, StoreError> {
    let (db, path) = match own {
        Some(options) => {
            let options = options.clone().busy_timeout(WRITER_BUSY_TIMEOUT);
            let path = options.get_filename().to_path_buf();
            (
                Db::Own(SqliteConnection::connect_with(&options).await?),
                Some(path),
            )
        }
        None => (Db::Shared(pool), None),
    };
    let (writer, inbox) = JoinWriter::channel();
    tokio::spawn(run(db, path, inbox, new_lock_flags));
    Ok(writer)
}

async fn run(mut db: Db, path: Option<PathBuf>, mut inbox: Inbox, new_lock_flags: String) {
    let mut known = Known::default();
    let mut batch: Vec<Op> = Vec::with_capacity(MAX_BATCH);
    let mut outage = Outage::default();
    loop {
        // While bookkeeping writes wait, wake up to retry them even if no join comes.
        let request = if outage.kept.is_empty() {
            inbox.rx.recv().await
        } else {
            match tokio::time::timeout(RETRY_EVERY, inbox.rx.recv()).await {
                Ok(request) => request,
                Err(_) => {
                    if let Db::Own(conn) = &mut db {
                        outage.retry(conn, &mut known).await;
                    }
                    continue;
                }
            }
        };
        let Some(request) = request else { break };
        let closing = inbox.gather(request, &mut batch);
        if !batch.is_empty() {
            let answers = match &mut db {
                Db::Own(conn) => {
                    if !outage.kept.is_empty() {
                        outage.retry(conn, &mut known).await;
                    }
                    match write_batch(conn, Some(&mut known), &batch, &new_lock_flags).await {
                        Err(e) if crate::store::is_unavailable(&e) => {
                            outage.begin(path.as_deref(), &e);
                            match outage.answer_from_reads(conn, &batch, &mut known).await {
                                Ok(answers) => Ok((answers, 0)),
                                Err(_) => Err(e),
                            }
                        }
                        other => other,
                    }
                }
                Db::Shared(pool) => match pool.acquire().await {
                    Ok(mut conn) => write_batch(&mut conn, None, &batch, &new_lock_flags).await,
                    Err(e) => Err(e),
                },
            };
            inbox.answer(&mut batch, answers);
        }
        if let Some(done) = closing {
            if let Db::Own(conn) = &mut db
                && !outage.kept.is_empty()
            {
                outage.retry(conn, &mut known).await;
                if !outage.kept.is_empty() {
                    tracing::warn!(
                        locks = outage.kept.len(),
                        "closing with lock bookkeeping still unwritten: the database is held"
                    );
                }
            }
            if let Db::Own(conn) = db
                && let Err(e) = conn.close().await
            {
                tracing::warn!(error = %e, "closing the lock join writer's connection failed");
            }
            let _ = done.send(());
            return;
        }
    }
}

/// The writer's state while another connection holds the write lock: the bookkeeping
/// writes still to do (the latest holder and last-seen time per lock, and whether the join
/// was exclusive), and whether the outage was logged.
#[derive(Default)]
struct Outage {
    kept: HashMap<String, (String, bool, String)>,
    logged: bool,
}

impl Outage {
    /// Logs the outage once, naming the process that holds the write lock.
    fn begin(&mut self, path: Option<&std::path::Path>, cause: &sqlx::Error) {
        if self.logged {
            return;
        }
        self.logged = true;
        match path.and_then(super::holder::write_lock_holder) {
            Some((pid, cmdline)) => tracing::warn!(
                pid,
                process = %cmdline,
                error = %cause,
                "the database is held by another process: known locks are answered from \
                 what is committed, their bookkeeping is retried, new locks must wait"
            ),
            None => tracing::warn!(
                error = %cause,
                "the database is busy: known locks are answered from what is committed, \
                 their bookkeeping is retried, new locks must wait"
            ),
        }
    }

    /// Answers a batch that could not be written: reads its locks (WAL readers are not
    /// blocked by a writer), answers the known ones and keeps their bookkeeping; the
    /// others (first sight, or held by another device in token mode) cannot be decided
    /// without writing and get `Unavailable`.
    async fn answer_from_reads(
        &mut self,
        conn: &mut SqliteConnection,
        batch: &[Op],
        known: &mut Known,
    ) -> Result<Vec<Answer>, sqlx::Error> {
        let serials: HashSet<&str> = batch.iter().map(|op| op.serial.as_str()).collect();
        let mut sql = format!("SELECT {LOCK_COLUMNS} FROM locks WHERE serial IN (");
        for i in 0..serials.len() {
            sql.push_str(if i == 0 { "?" } else { ",?" });
        }
        sql.push(')');
        let mut query = sqlx::query(&sql);
        for serial in &serials {
            query = query.bind(*serial);
        }
        let mut rows = HashMap::new();
        for row in query.fetch_all(&mut *conn).await? {
            let lock = lock_from_row(&row)?;
            rows.insert(lock.serial.clone(), lock);
        }
        // What is read is what is committed; the copy is not trusted past this outage.
        known.locks.clear();
        known.data_version = None;
        let now = now_rfc3339();
        Ok(batch
            .iter()
            .map(|op| {
                let Some(lock) = rows.get(&op.serial) else {
                    return Err(unavailable("a new lock cannot be stored now"));
                };
                if op.exclusive
                    && lock
                        .holder_device
                        .as_deref()
                        .is_some_and(|h| h != op.holder)
                {
                    return Ok(None);
                }
                let mut record = lock.clone();
                record.holder_device = Some(op.holder.clone());
                record.last_seen_at = Some(now.clone());
                self.kept.insert(
                    op.serial.clone(),
                    (op.holder.clone(), op.exclusive, now.clone()),
                );
                Ok(Some(record))
            })
            .collect())
    }

    /// Tries the kept bookkeeping writes again; once they are written the outage is over.
    async fn retry(&mut self, conn: &mut SqliteConnection, known: &mut Known) {
        let mut sql = String::from(
            "UPDATE locks SET holder_device = t.column2, last_seen_at = t.column4 FROM (VALUES ",
        );
        for i in 0..self.kept.len() {
            sql.push_str(if i == 0 { "(?,?,?,?)" } else { ",(?,?,?,?)" });
        }
        sql.push_str(
            ") AS t WHERE locks.serial = t.column1 AND (NOT t.column3 \
             OR locks.holder_device IS NULL OR locks.holder_device = t.column2)",
        );
        let mut query = sqlx::query(&sql);
        for (serial, (holder, exclusive, at)) in &self.kept {
            query = query.bind(serial).bind(holder).bind(*exclusive).bind(at);
        }
        match query.execute(&mut *conn).await {
            Ok(_) => {
                tracing::info!(
                    locks = self.kept.len(),
                    "the database is writable again: kept lock bookkeeping written"
                );
                self.kept.clear();
                self.logged = false;
                known.locks.clear();
                known.data_version = None;
            }
            Err(e) if crate::store::is_unavailable(&e) => {}
            Err(e) => {
                tracing::error!(error = %e, "kept lock bookkeeping cannot be written; dropped");
                self.kept.clear();
                self.logged = false;
            }
        }
    }
}

fn unavailable(why: &str) -> StoreError {
    StoreError::Unavailable(why.to_owned())
}

/// Writes one batch: known locks through [`touch_known`], the rest through [`commit`].
/// Returns the answers in batch order and how many came from the known-lock copy.
async fn write_batch(
    conn: &mut SqliteConnection,
    known: Option<&mut Known>,
    batch: &[Op],
    new_lock_flags: &str,
) -> Result<(Vec<Answer>, u64), sqlx::Error> {
    let Some(known) = known else {
        return Ok((commit(conn, batch.iter(), new_lock_flags).await?.0, 0));
    };
    // One candidate per serial: a second join of the same lock in this batch must see the
    // first one's write, so it goes the first-sight way, after it.
    let mut seen = HashSet::new();
    let candidates: Vec<usize> = (0..batch.len())
        .filter(|&i| known.locks.contains_key(&batch[i].serial) && seen.insert(&batch[i].serial))
        .collect();
    let now = now_rfc3339();
    let mut touched = HashSet::new();
    if !candidates.is_empty() {
        let (updated, version) =
            touch_known(conn, candidates.iter().map(|&i| &batch[i]), &now).await?;
        // Anything another connection committed since the copy was last checked may have
        // changed a row we keep: then the copy goes, and these joins take the first-sight
        // way (their update is already written; the upsert writes the same values again and
        // returns the rows as they are now).
        if let Some(v) = version
            && known.still_true_at(v)
        {
            touched = updated;
        }
    }

    let mut answers: Vec<Option<Answer>> = (0..batch.len()).map(|_| None).collect();
    let mut hits = 0;
    for &i in &candidates {
        let op = &batch[i];
        if !touched.contains(op.serial.as_str()) {
            continue;
        }
        if let Some(lock) = known.locks.get_mut(&op.serial) {
            lock.record.holder_device = Some(op.holder.clone());
            lock.record.last_seen_at = Some(now.clone());
            answers[i] = Some(match lock.to_record() {
                Ok(record) => Ok(Some(record)),
                Err(e) => Err(StoreError::Database(sqlx::Error::Decode(e.into()))),
            });
            hits += 1;
        }
    }

    let rest: Vec<usize> = (0..batch.len()).filter(|&i| answers[i].is_none()).collect();
    if !rest.is_empty() {
        let (written, versions) =
            commit(conn, rest.iter().map(|&i| &batch[i]), new_lock_flags).await?;
        // The rows returned are true as of the version their statement read: the copy is
        // kept if that is the version it was last found true at, and started over if not.
        // Two statements (shared and exclusive joins) that read different versions had
        // another connection's commit between them: nothing is kept.
        let agreed = versions
            .first()
            .copied()
            .filter(|v| versions.iter().all(|w| w == v));
        match agreed {
            Some(v) => {
                known.still_true_at(v);
            }
            None if !versions.is_empty() => {
                known.locks.clear();
                known.data_version = None;
            }
            None => {}
        }
        if known.locks.len() + rest.len() > MAX_KNOWN {
            known.locks.clear();
        }
        for (&i, answer) in rest.iter().zip(written) {
            if agreed.is_some()
                && let Ok(Some(lock)) = &answer
            {
                known
                    .locks
                    .insert(lock.serial.clone(), Box::new(KnownLock::new(lock.clone())));
            }
            answers[i] = Some(answer);
        }
    }
    let answers = answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(StoreError::Database(sqlx::Error::RowNotFound))))
        .collect();
    Ok((answers, hits))
}

/// Records holder and last-seen time of known locks with one `UPDATE … FROM (VALUES …)`
/// and returns the serials it updated, with the connection's `PRAGMA data_version` read in
/// the same statement (`None` when no row was updated): the check that the copy is still
/// true costs no round trip of its own. In token mode (`exclusive`) a lock held by another
/// device is not updated.
async fn touch_known<'a>(
    conn: &mut SqliteConnection,
    ops: impl Iterator<Item = &'a Op>,
    now: &str,
) -> Result<(HashSet<String>, Option<i64>), sqlx::Error> {
    let ops: Vec<&Op> = ops.collect();
    // Padded to a power of two like the upsert; a repeated row updates the same lock again
    // with the same values.
    let rows = ops.len().next_power_of_two();
    let sql = touch_sql(rows);
    let mut query = sqlx::query(&sql).bind(now);
    let padding = std::iter::repeat_n(ops[ops.len() - 1], rows - ops.len());
    for op in ops.iter().copied().chain(padding) {
        query = query.bind(&op.serial).bind(&op.holder).bind(op.exclusive);
    }
    let mut touched = HashSet::with_capacity(ops.len());
    let mut version = None;
    for row in query.fetch_all(&mut *conn).await? {
        touched.insert(row.try_get::<String, _>(0)?);
        version = Some(row.try_get::<i64, _>(1)?);
    }
    Ok((touched, version))
}

/// `UPDATE locks … FROM (VALUES (serial, holder, exclusive), …) … RETURNING serial`.
fn touch_sql(rows: usize) -> String {
    let mut sql = String::with_capacity(260 + rows * 8);
    sql.push_str("UPDATE locks SET holder_device = t.column2, last_seen_at = ? FROM (VALUES ");
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?)");
    }
    sql.push_str(
        ") AS t WHERE locks.serial = t.column1 AND (NOT t.column3 \
         OR locks.holder_device IS NULL OR locks.holder_device = t.column2) \
         RETURNING locks.serial, (SELECT data_version FROM pragma_data_version)",
    );
    sql
}

/// Writes joins as one multi-row upsert (one statement, one implicit transaction, one
/// round trip to SQLite's worker thread) per auth mode present in the batch. A row that
/// cannot be decoded fails only its own join; a statement failure fails the batch.
///
/// Also returns the `PRAGMA data_version` each statement that returned rows read in its
/// own transaction (see [`touch_known`]).
async fn commit<'a>(
    conn: &mut SqliteConnection,
    batch: impl Iterator<Item = &'a Op> + Clone,
    new_lock_flags: &str,
) -> Result<(Vec<Answer>, Vec<i64>), sqlx::Error> {
    let now = now_rfc3339();
    // Returned rows by serial, for shared-mode [0] and exclusive [1] joins.
    let mut found: [HashMap<String, Result<LockRecord, String>>; 2] = Default::default();
    let mut versions = Vec::new();
    for exclusive in [false, true] {
        let ops: Vec<&Op> = batch
            .clone()
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
            // serial, uuid, name (the serial until renamed), feature flags of a new lock,
            // holder, first and last seen.
            query = query
                .bind(&op.serial)
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(&op.serial)
                .bind(new_lock_flags)
                .bind(&op.holder)
                .bind(&now)
                .bind(&now);
        }
        let rows = query.fetch_all(&mut *conn).await?;
        if let Some(row) = rows.first() {
            versions.push(row.try_get::<i64, _>("data_version")?);
        }
        for row in rows {
            let serial: String = row.try_get("serial")?;
            let record = lock_from_row(&row).map_err(|e| e.to_string());
            found[usize::from(exclusive)].insert(serial, record);
        }
    }
    let answers = batch
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
        .collect();
    Ok((answers, versions))
}

/// `INSERT … VALUES (…), (…) … ON CONFLICT DO UPDATE … RETURNING …` for `rows` joins. In
/// token mode (`exclusive`) a lock held by another device is left alone and not returned.
fn upsert_sql(rows: usize, exclusive: bool) -> String {
    let mut sql = String::with_capacity(300 + rows * 36);
    sql.push_str(
        "INSERT INTO locks (serial, uuid, name, feature_flags, holder_device, first_seen_at, \
         last_seen_at) VALUES ",
    );
    // Anonymous `?` placeholders, each bound once: sqlx maps every placeholder through
    // sqlite3_bind_parameter_name, a linear search of the statement's named parameters, so
    // numbered ones (`?17`) made binding a 512-row batch quadratic (9 % of the hub's CPU in a
    // join storm).
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?,?,?)");
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
    sql.push_str(", (SELECT data_version FROM pragma_data_version) AS data_version");
    sql
}
