//! The device relay directory: devices addressed by name, whatever door they came through
//! (the Phoenix `relay` topic or the raw `/relay` WebSocket). Spec §1 (`relay`) and §2.
//!
//! This is the seam for a multi-node fabric: every door calls only [`Directory::register`],
//! [`Directory::unregister`], [`Directory::info`], [`Directory::names`] and
//! [`Directory::deliver`]. A NATS-backed directory would keep the same five calls, publish
//! packets on a subject per device name and subscribe each local registration to its
//! subject, without any door changing.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::Serialize;
use serde_json::value::RawValue;

use super::{Conn, Outbound, SendError};

/// A packet travelling from one device to another.
#[derive(Debug)]
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
        let sender = serde_json::Value::String(self.sender.clone());
        format!("{{\"sender\":{sender},\"payload\":{}}}", self.payload.get())
    }
}

/// A packet of bytes (a Phoenix V2 binary push): delivered as a binary push whose event
/// names the sender, `packet:<sender>`.
#[derive(Debug)]
pub struct BinaryPacket {
    pub sender: String,
    pub bytes: bytes::Bytes,
}

/// What a device says about itself when it registers (seed: device relay server).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeviceInfo {
    pub description: Option<String>,
    pub version: Option<String>,
    pub interface: Option<String>,
}

/// Why a relay operation failed; the text is what the sender is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    #[error("unknown target")]
    UnknownTarget,
    /// The target's outbound queue is full (it is being disconnected as too slow).
    #[error("target busy")]
    TargetBusy,
    #[error("name taken")]
    NameTaken,
    /// A binary packet for a device that cannot receive binary frames.
    #[error("target cannot receive binary packets")]
    BinaryUnsupported,
}

struct Entry {
    conn: Arc<Conn>,
    info: DeviceInfo,
}

/// Registered relay devices by lower-case name.
#[derive(Default)]
pub struct Directory {
    map: RwLock<HashMap<String, Entry>>,
}

/// Relay names are case-insensitive and stored lower-case (as the original server did).
pub fn normalize(name: &str) -> String {
    name.to_ascii_lowercase()
}

impl Directory {
    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Entry>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, Entry>> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `conn` under `name` (already normalized) or updates its metadata. A name
    /// held by another connection is refused, unless `force`: then the old holder is
    /// returned, already removed, for the caller to drop.
    pub fn register(
        &self,
        name: &str,
        conn: &Arc<Conn>,
        info: DeviceInfo,
        force: bool,
    ) -> Result<Option<Arc<Conn>>, RelayError> {
        let mut map = self.write();
        let displaced = match map.get(name) {
            Some(e) if e.conn.id == conn.id => None,
            Some(_) if !force => return Err(RelayError::NameTaken),
            Some(e) => Some(e.conn.clone()),
            None => None,
        };
        map.insert(
            name.to_owned(),
            Entry {
                conn: conn.clone(),
                info,
            },
        );
        Ok(displaced)
    }

    /// Removes `name` if `conn_id` holds it.
    pub fn unregister(&self, name: &str, conn_id: u64) -> bool {
        let mut map = self.write();
        if map.get(name).is_some_and(|e| e.conn.id == conn_id) {
            map.remove(name);
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
    /// is reported to the sender as [`RelayError::TargetBusy`].
    pub fn deliver(&self, target: &str, packet: Arc<Packet>) -> Result<(), RelayError> {
        let conn = self
            .read()
            .get(&normalize(target))
            .map(|e| e.conn.clone())
            .ok_or(RelayError::UnknownTarget)?;
        match conn.send(Outbound::Packet(packet)) {
            Ok(()) => {
                conn.count_packet_received();
                Ok(())
            }
            Err(SendError::Full) => Err(RelayError::TargetBusy),
            Err(SendError::Closed) => Err(RelayError::UnknownTarget),
        }
    }

    /// Queues a binary packet for `target`, if its connection can receive binary frames.
    pub fn deliver_binary(
        &self,
        target: &str,
        packet: Arc<BinaryPacket>,
    ) -> Result<(), RelayError> {
        let conn = self
            .read()
            .get(&normalize(target))
            .map(|e| e.conn.clone())
            .ok_or(RelayError::UnknownTarget)?;
        if !conn.binary_capable() {
            return Err(RelayError::BinaryUnsupported);
        }
        match conn.send(Outbound::BinaryPacket(packet)) {
            Ok(()) => {
                conn.count_packet_received();
                Ok(())
            }
            Err(SendError::Full) => Err(RelayError::TargetBusy),
            Err(SendError::Closed) => Err(RelayError::UnknownTarget),
        }
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
