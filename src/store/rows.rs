//! Rows into the hub's records, once for both stores. The only difference between them is
//! how a JSON column is read (text on SQLite, `jsonb` on PostgreSQL): each backend's row
//! type says it with [`JsonColumns`].

use serde::de::DeserializeOwned;
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::StoreError;
use crate::domain::{ItemKind, LockRecord, PairedItem, PairingRequest};

/// How a backend's row reads a JSON column into the type the hub wants. Malformed or
/// mis-shaped JSON (possible only through hand edits) is a decode error naming the column
/// and `whose` row, never a panic.
pub trait JsonColumns {
    fn json<T: DeserializeOwned>(&self, column: &str, whose: &str) -> Result<T, sqlx::Error>;
    fn json_opt<T: DeserializeOwned>(
        &self,
        column: &str,
        whose: &str,
    ) -> Result<Option<T>, sqlx::Error>;
}

/// A row type the record readers accept: text, integers and JSON by column name.
pub trait RecordRow: Row + JsonColumns
where
    for<'c> &'c str: ColumnIndex<Self>,
{
}

impl<R> RecordRow for R
where
    R: Row + JsonColumns,
    for<'c> &'c str: ColumnIndex<R>,
{
}

fn text<R>(row: &R, column: &str) -> Result<String, sqlx::Error>
where
    R: RecordRow,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    row.try_get(column)
}

fn item_kind<R>(row: &R, column: &str) -> Result<ItemKind, sqlx::Error>
where
    R: RecordRow,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    parse_item_kind(&text(row, column)?, column)
}

pub fn lock<R>(row: &R) -> Result<LockRecord, sqlx::Error>
where
    R: RecordRow,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let serial = text(row, "serial")?;
    let whose = format!("lock {serial:?}");
    Ok(LockRecord {
        uuid: row.try_get("uuid")?,
        name: row.try_get("name")?,
        mode: row.try_get("mode")?,
        feature_flags: row.json("feature_flags", &whose)?,
        config: row.json("config", &whose)?,
        intended_state: row.json("intended_state", &whose)?,
        intended_version: row.try_get("intended_version")?,
        intended_at: row.try_get("intended_at")?,
        drifting_since: row.try_get("drifting_since")?,
        reported_state: row.json_opt("reported_state", &whose)?,
        reported_at: row.try_get("reported_at")?,
        holder_device: row.try_get("holder_device")?,
        first_seen_at: row.try_get("first_seen_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        serial,
    })
}

/// The lock row an `UPDATE … RETURNING` found, or `LockNotFound`.
pub fn found_lock<R>(row: Option<R>) -> Result<LockRecord, StoreError>
where
    R: RecordRow,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    match row {
        Some(row) => Ok(lock(&row)?),
        None => Err(StoreError::LockNotFound),
    }
}

pub fn pairing<R>(row: &R) -> Result<PairingRequest, sqlx::Error>
where
    R: RecordRow,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(PairingRequest {
        pair_id: row.try_get("pair_id")?,
        lock: row.try_get("lock_serial")?,
        name: row.try_get("name")?,
        kind: item_kind(row, "item_type")?,
        expires_at: row.try_get("expires_at")?,
        created_at: row.try_get("created_at")?,
        completed_at: row.try_get("completed_at")?,
        delivered_at: row.try_get("delivered_at")?,
        deliveries: row.try_get("deliveries")?,
        cancelled_at: row.try_get("cancelled_at")?,
    })
}

pub fn paired_item<R>(row: &R) -> Result<PairedItem, sqlx::Error>
where
    R: RecordRow,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<String>: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(PairedItem {
        lock: row.try_get("lock_serial")?,
        serial: row.try_get("item_serial")?,
        name: row.try_get("name")?,
        kind: item_kind(row, "item_type")?,
        pair_id: row.try_get("pair_id")?,
        paired_at: row.try_get("paired_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}

impl JsonColumns for sqlx::sqlite::SqliteRow {
    fn json<T: DeserializeOwned>(&self, column: &str, whose: &str) -> Result<T, sqlx::Error> {
        let text: String = self.try_get(column)?;
        parse_json(&text, column, whose)
    }

    fn json_opt<T: DeserializeOwned>(
        &self,
        column: &str,
        whose: &str,
    ) -> Result<Option<T>, sqlx::Error> {
        let text: Option<String> = self.try_get(column)?;
        text.map(|text| parse_json(&text, column, whose))
            .transpose()
    }
}

impl JsonColumns for sqlx::postgres::PgRow {
    fn json<T: DeserializeOwned>(&self, column: &str, whose: &str) -> Result<T, sqlx::Error> {
        let value: serde_json::Value = self.try_get(column)?;
        from_json(value, column, whose)
    }

    fn json_opt<T: DeserializeOwned>(
        &self,
        column: &str,
        whose: &str,
    ) -> Result<Option<T>, sqlx::Error> {
        let value: Option<serde_json::Value> = self.try_get(column)?;
        value.map(|v| from_json(v, column, whose)).transpose()
    }
}

/// Parses JSON text read from a column. Malformed or mis-shaped JSON (possible only
/// through hand edits) is a decode error naming the column and `whose` row, never a panic.
fn parse_json<T: serde::de::DeserializeOwned>(
    text: &str,
    column: &str,
    whose: &str,
) -> Result<T, sqlx::Error> {
    serde_json::from_str(text).map_err(|e| mis_shaped(column, whose, e))
}

/// Takes a JSON value read from a column into the type the hub wants.
fn from_json<T: serde::de::DeserializeOwned>(
    value: serde_json::Value,
    column: &str,
    whose: &str,
) -> Result<T, sqlx::Error> {
    serde_json::from_value(value).map_err(|e| mis_shaped(column, whose, e))
}

fn mis_shaped(column: &str, whose: &str, e: serde_json::Error) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: format!("{column} of {whose}"),
        source: Box::new(e),
    }
}

/// An `item_type` value (`'tag'` or `'mobile_phone'`, enforced by a CHECK).
fn parse_item_kind(text: &str, column: &str) -> Result<ItemKind, sqlx::Error> {
    ItemKind::parse(text).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: format!("unknown item type {text:?}").into(),
    })
}
