//! The device relay directory: devices addressed by name, whatever door they came through
//! (the Phoenix `relay` topic or the raw `/relay` WebSocket). Spec §1 (`relay`) and §2.
//!
//! Getting onto the relay is one rule for every door, [`Directory::register`]: the name
//! rule ([`relay_name`]: case-insensitive, the socket-name alphabet, reserved names), the
//! token's device in token mode, one connection per name, and `force` takeover, whose
//! displaced holder is told through its own queue ([`Outbound::RelayRevoked`]) so that its
//! door tells its client the way that door always does. [`crate::services::relay`] adds
//! the hub's records (the `devices` table) around it; doors register only through that
//! service. Lookups ([`Directory::info`], [`Directory::deliver`]) fold case the same way, and
//! a reserved name is never registered, so it is never found; the Bester bridge checks its
//! targets with [`relay_name`] too.
//!
//! This is the seam for a multi-node fabric: every door calls only [`Directory::register`],
//! [`Directory::unregister`], [`Directory::info`], [`Directory::names`] and
//! [`Directory::deliver`]. A NATS-backed directory would keep the same five calls, publish
//! packets on a subject per device name and subscribe each local registration to its
//! subject, without any door changing.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde_json::value::RawValue;

use super::close_code;
use super::fabric::DeliveryError;
use super::interest::{Interest, Name};
use super::{Conn, Outbound, SendError};
use crate::domain::DeviceName;

/// A packet travelling from one device to another.
#[derive(Debug, serde::Serialize)]
pub struct Packet {
    /// The sender's relay name.
    pub sender: String,
    /// The payload exactly as the sender wrote it.
    pub payload: Box<RawValue>,
}

impl Packet {
    /// `{"sender": …, "payload": …}`: the body every door delivers (raw relay frame,
    /// Phoenix `packet` push payload).
    pub fn body_json(&self) -> String {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            sender: &'a str,
            payload: &'a RawValue,
        }
        let body = Body {
            sender: &self.sender,
            payload: &self.payload,
        };
        // A string and JSON that is already valid: serializing cannot fail.
        serde_json::to_string(&body).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// A packet of bytes (a Phoenix V2 binary push): delivered as a binary push whose event
/// names the sender, `packet:<sender>`.
#[derive(Debug)]
pub struct BinaryPacket {
    pub sender: String,
    pub bytes: bytes::Bytes,
}

pub use crate::domain::DeviceInfo;

struct Entry {
    conn: Arc<Conn>,
    info: DeviceInfo,
}

/// Registered relay devices by lower-case name.
#[derive(Default)]
pub struct Directory {
    map: RwLock<HashMap<String, Entry>>,
    interest: Interest,
}

/// Why a registration was refused. The text is what every door tells the device (Phoenix
/// `{"reason": …}`, raw `error_message`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// Not a name a device may hold: outside the socket-name rule, or reserved.
    #[error("invalid device_name")]
    InvalidName,
    /// Token mode: the connection's token was issued to another device.
    #[error("token issued to another device")]
    WrongDevice,
    /// Another connection holds the name (and the request had no `force`).
    #[error("name taken")]
    NameTaken,
}

/// Names no device may register. `server` is the raw door's address of the hub itself
/// (`{"target": "server"}`), so a device of that name could never be reached.
pub const RESERVED_NAMES: &[&str] = &["server"];

/// Prefixes no device name may start with. `bester:<user>` is the sender of every packet
/// the Bester bridge delivers; a device of such a name could pass for a Bester user.
pub const RESERVED_PREFIXES: &[&str] = &["bester:"];

/// Relay names are case-insensitive and stored lower-case (as the original server did).
pub fn normalize(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// The relay name `requested` stands for (lower-case), if a device may hold it: 1–64
/// characters of `A-Za-z0-9._:-` (the socket-name rule), not reserved. The one name rule
/// of every door.
pub fn relay_name(requested: &str) -> Result<String, RegisterError> {
    let name = normalize(requested);
    let reserved = RESERVED_NAMES.contains(&name.as_str())
        || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p));
    if reserved || DeviceName::parse(&name).is_none() {
        return Err(RegisterError::InvalidName);
    }
    Ok(name)
}

/// A request to be on the relay, from any door.
#[derive(Debug)]
pub struct Claim<'a> {
    /// The name as the device spelled it (a Phoenix socket's `name`, a raw `device_name`).
    pub name: &'a str,
    pub info: DeviceInfo,
    /// Take the name over from the connection that holds it.
    pub force: bool,
    /// Token mode: the device the connection's token was issued to; only that name (in
    /// any case) may be registered.
    pub token_device: Option<&'a str>,
}

/// A registration that went through.
#[derive(Debug)]
pub struct Registered {
    /// The relay name (lower-case).
    pub name: String,
    /// The connection the name was taken from (`force`), already out of the directory
    /// and told so.
    pub displaced: Option<Arc<Conn>>,
}

impl Directory {
    /// A directory whose changes are reported to `interest`.
    pub fn new(interest: Interest) -> Directory {
        Directory {
            map: RwLock::default(),
            interest,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Entry>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, Entry>> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `conn` under the name it claims, or updates its metadata: the one rule
    /// of every door (see the module docs). A name held by another connection is refused,
    /// unless `force`: then the old holder is removed and told through its queue
    /// ([`Outbound::RelayRevoked`]; its door tells its client), or closed (1001) when its
    /// queue cannot take that.
    pub fn register(
        &self,
        conn: &Arc<Conn>,
        claim: Claim<'_>,
    ) -> Result<Registered, RegisterError> {
        let name = relay_name(claim.name)?;
        if claim.token_device.is_some_and(|d| normalize(d) != name) {
            return Err(RegisterError::WrongDevice);
        }
        let (displaced, fresh) = {
            let mut map = self.write();
            let displaced = match map.get(&name) {
                Some(e) if e.conn.id == conn.id => None,
                Some(_) if !claim.force => return Err(RegisterError::NameTaken),
                Some(e) => Some(e.conn.clone()),
                None => None,
            };
            let fresh = map
                .insert(
                    name.clone(),
                    Entry {
                        conn: conn.clone(),
                        info: claim.info,
                    },
                )
                .is_none();
            (displaced, fresh)
        };
        if fresh {
            self.interest.changed(Name::Relay(name.clone()));
        }
        if let Some(old) = &displaced {
            tracing::info!(device = %name, old_conn = old.id, new_conn = conn.id, "relay name taken over");
            if old.send(Outbound::RelayRevoked).is_err() {
                old.kill(close_code::GOING_AWAY);
            }
        }
        Ok(Registered { name, displaced })
    }

    /// Removes `name` if `conn_id` holds it.
    pub fn unregister(&self, name: &str, conn_id: u64) -> bool {
        let mut map = self.write();
        if map.get(name).is_some_and(|e| e.conn.id == conn_id) {
            map.remove(name);
            drop(map);
            self.interest.changed(Name::Relay(name.to_owned()));
            true
        } else {
            false
        }
    }

    /// Whether `name` is registered by `conn_id`.
    pub fn holds(&self, name: &str, conn_id: u64) -> bool {
        self.read().get(name).is_some_and(|e| e.conn.id == conn_id)
    }

    /// A registered device's metadata.
    pub fn info(&self, name: &str) -> Option<DeviceInfo> {
        self.read().get(&normalize(name)).map(|e| e.info.clone())
    }

    /// Every registered name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.read().keys().cloned().collect();
        names.sort();
        names
    }

    /// The connection registered as `name`.
    pub fn conn_of(&self, name: &str) -> Option<Arc<Conn>> {
        self.read().get(&normalize(name)).map(|e| e.conn.clone())
    }

    /// The relay name a connection registered, if any (for the admin view).
    pub fn name_of(&self, conn_id: u64) -> Option<String> {
        self.read()
            .iter()
            .find(|(_, e)| e.conn.id == conn_id)
            .map(|(n, _)| n.clone())
    }

    /// Queues `packet` for the device registered as `target`, never waiting: a full queue
    /// is reported to the sender as [`DeliveryError::TargetBusy`].
    pub fn deliver(&self, target: &str, packet: Arc<Packet>) -> Result<(), DeliveryError> {
        let conn = self
            .read()
            .get(&normalize(target))
            .map(|e| e.conn.clone())
            .ok_or(DeliveryError::UnknownTarget)?;
        match conn.send(Outbound::Packet(packet)) {
            Ok(()) => {
                conn.count_packet_received();
                Ok(())
            }
            Err(SendError::Full) => Err(DeliveryError::TargetBusy),
            Err(SendError::Closed) => Err(DeliveryError::UnknownTarget),
        }
    }

    /// Queues a binary packet for `target`, if its connection can receive binary frames.
    pub fn deliver_binary(
        &self,
        target: &str,
        packet: Arc<BinaryPacket>,
    ) -> Result<(), DeliveryError> {
        let conn = self
            .read()
            .get(&normalize(target))
            .map(|e| e.conn.clone())
            .ok_or(DeliveryError::UnknownTarget)?;
        if !conn.binary_capable() {
            return Err(DeliveryError::BinaryUnsupported);
        }
        match conn.send(Outbound::BinaryPacket(packet)) {
            Ok(()) => {
                conn.count_packet_received();
                Ok(())
            }
            Err(SendError::Full) => Err(DeliveryError::TargetBusy),
            Err(SendError::Closed) => Err(DeliveryError::UnknownTarget),
        }
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_name_rule() {
        assert_eq!(relay_name("LED_Strip"), Ok("led_strip".to_owned()));
        assert_eq!(relay_name("ok.name:1-x_y"), Ok("ok.name:1-x_y".to_owned()));
        for bad in [
            "",
            "bad name!",
            "server",
            "SERVER",
            "Server",
            "bester:alice",
            "Bester:x",
        ] {
            assert_eq!(relay_name(bad), Err(RegisterError::InvalidName), "{bad:?}");
        }
        assert_eq!(relay_name(&"n".repeat(65)), Err(RegisterError::InvalidName));
        assert_eq!(relay_name(&"n".repeat(64)), Ok("n".repeat(64)));
        // Names that merely contain a reserved word are fine.
        assert!(relay_name("servers").is_ok() && relay_name("my-bester:x").is_ok());
    }
}
