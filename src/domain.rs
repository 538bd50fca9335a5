//! Identifiers and records shared by every door, the store and the admin API.
//!
//! Identifiers are newtypes with a `parse` constructor: a `Serial` or a `DeviceName` that
//! exists has been validated, so nothing past the edge re-checks them.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Maximum length of a device name or lock serial.
pub const MAX_IDENT_LEN: usize = 64;

fn valid_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_IDENT_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A lock's serial number: 1–64 chars of `A-Za-z0-9._:-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Serial(String);

impl Serial {
    pub fn parse(s: &str) -> Option<Serial> {
        valid_ident(s).then(|| Serial(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A device's name (the socket's `name` connect param, typically its hostname):
/// 1–64 chars of `A-Za-z0-9._:-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct DeviceName(String);

impl DeviceName {
    pub fn parse(s: &str) -> Option<DeviceName> {
        valid_ident(s).then(|| DeviceName(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which door a connection came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Door {
    /// The Phoenix socket (`/socket/websocket`).
    Phoenix,
    /// The raw device relay (`/relay`).
    Relay,
    /// The Compendium relay (`/compendium`).
    Compendium,
    /// The Bester door (length-prefixed JSON over TCP or the Unix socket).
    Bester,
}

impl Door {
    /// Every door, in the order `/metrics` lists them.
    pub const ALL: [Door; 4] = [Door::Phoenix, Door::Relay, Door::Compendium, Door::Bester];

    /// The door's name in `/api/devices`.
    pub fn as_str(self) -> &'static str {
        match self {
            Door::Phoenix => "phoenix",
            Door::Relay => "relay",
            Door::Compendium => "compendium",
            Door::Bester => "bester",
        }
    }
}

/// What a device says about itself when it registers (seed: device relay server).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub description: Option<String>,
    pub version: Option<String>,
    pub interface: Option<String>,
}

/// Lock mode as the firmware reads it: 1 internal, 2 external, 3 pairing.
pub type LockMode = i64;

/// A lock as stored: everything the join reply and the admin API show.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LockRecord {
    pub serial: String,
    pub uuid: String,
    pub name: String,
    pub mode: LockMode,
    pub feature_flags: Vec<String>,
    pub config: Value,
    /// The state the hub wants the lock in (set by administrators).
    pub intended_state: Value,
    /// 1 for a new lock, +1 with every change of `intended_state` (`If-Match`).
    pub intended_version: i64,
    /// When `intended_state` last changed (`None`: the first join's default).
    pub intended_at: Option<String>,
    /// Since when the lock has not reported its intended state although it was pushed.
    pub drifting_since: Option<String>,
    /// What the lock last said it is (`report`), if it ever did.
    pub reported_state: Option<Value>,
    pub reported_at: Option<String>,
    /// Name of the device that last joined this lock's channel.
    pub holder_device: Option<String>,
    pub first_seen_at: String,
    pub last_seen_at: Option<String>,
}

impl LockRecord {
    /// Whether the lock's last report is its intended state.
    pub fn agrees(&self) -> bool {
        self.reported_state.as_ref() == Some(&self.intended_state)
    }
}

/// What a pairing request labels: an NFC tag or a phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    #[default]
    Tag,
    MobilePhone,
}

impl ItemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Tag => "tag",
            ItemKind::MobilePhone => "mobile_phone",
        }
    }
    pub fn parse(s: &str) -> Option<ItemKind> {
        match s {
            "tag" => Some(ItemKind::Tag),
            "mobile_phone" => Some(ItemKind::MobilePhone),
            _ => None,
        }
    }
}

/// A pairing request started by an administrator (`mode:pair`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairingRequest {
    pub pair_id: String,
    pub lock: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ItemKind,
    /// RFC 3339 UTC timestamp; the request is refused after it.
    pub expires_at: String,
    pub created_at: String,
    /// Set when the lock completed the pairing.
    pub completed_at: Option<String>,
    /// When `mode:pair` last went out to the lock (at the request or after a join).
    pub delivered_at: Option<String>,
    /// How many times `mode:pair` went out.
    pub deliveries: i64,
    /// Set when an administrator cancelled the request.
    pub cancelled_at: Option<String>,
}

impl PairingRequest {
    /// The `mode:pair` payload: exactly the keys the lock must send back.
    pub fn mode_pair_payload(&self) -> Value {
        serde_json::json!({
            "pair_id": self.pair_id,
            "lock": self.lock,
            "name": self.name,
            "type": self.kind.as_str(),
            "expires_at": self.expires_at,
        })
    }
}

/// An item (tag or phone) paired with a lock.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairedItem {
    pub lock: String,
    /// The item's own serial as the lock read it.
    pub serial: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ItemKind,
    pub pair_id: String,
    pub paired_at: String,
    pub revoked_at: Option<String>,
}

/// Outcome of an `access:request`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessDecision {
    pub access: bool,
    /// The paired item's name when access was granted.
    pub user: Option<String>,
}

/// Current time as an RFC 3339 UTC string with millisecond precision, the format of every
/// timestamp the hub stores (sortable as text, readable in `sqlite3`).
pub fn now_rfc3339() -> String {
    format_ts(time::OffsetDateTime::now_utc())
}

pub fn format_ts(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

pub fn parse_ts(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idents_follow_the_spec() {
        assert!(Serial::parse("ABC-123_x.y:z").is_some());
        assert!(Serial::parse("").is_none());
        assert!(Serial::parse(&"a".repeat(64)).is_some());
        assert!(Serial::parse(&"a".repeat(65)).is_none());
        assert!(Serial::parse("a b").is_none());
        assert!(DeviceName::parse("lock/1").is_none());
        assert!(DeviceName::parse("é").is_none());
    }

    #[test]
    fn timestamps_round_trip() {
        let s = now_rfc3339();
        assert!(s.ends_with('Z'));
        assert!(parse_ts(&s).is_some());
    }
}
