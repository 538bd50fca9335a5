//! Compendium ephemeral addresses (spec §3): random 128-bit hex strings, held in memory
//! only, each owned by one connection and freed when it goes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tungstenite::Utf8Bytes;

use super::fabric::DeliveryError;
use super::interest::{Interest, Name};
use super::{Conn, Outbound, SendError};

#[derive(Default)]
pub struct Addresses {
    map: Mutex<HashMap<String, Arc<Conn>>>,
    interest: Interest,
}

/// A fresh address: 128 random bits as 32 lower-case hex digits.
fn random_address() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Addresses {
    /// Addresses whose changes are reported to `interest`.
    pub fn new(interest: Interest) -> Addresses {
        Addresses {
            map: Mutex::default(),
            interest,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Conn>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this process holds `addr`.
    pub fn holds(&self, addr: &str) -> bool {
        self.lock().contains_key(addr)
    }

    /// Gives `conn` a new address.
    pub fn allocate(&self, conn: &Arc<Conn>) -> String {
        let mut map = self.lock();
        loop {
            let addr = random_address();
            if !map.contains_key(&addr) {
                map.insert(addr.clone(), conn.clone());
                drop(map);
                self.interest.changed(Name::Address(addr.clone()));
                return addr;
            }
        }
    }

    /// Frees `addr` if `conn_id` holds it.
    pub fn release(&self, addr: &str, conn_id: u64) {
        let mut map = self.lock();
        if map.get(addr).is_some_and(|c| c.id == conn_id) {
            map.remove(addr);
            drop(map);
            self.interest.changed(Name::Address(addr.to_owned()));
        }
    }

    /// Queues an encoded message for the holder of `addr`.
    pub fn deliver(&self, addr: &str, text: Utf8Bytes) -> Result<(), DeliveryError> {
        let conn = self
            .lock()
            .get(addr)
            .cloned()
            .ok_or(DeliveryError::UnknownTarget)?;
        match conn.send(Outbound::Text(Box::new(text))) {
            Ok(()) => Ok(()),
            Err(SendError::Full) => Err(DeliveryError::TargetBusy),
            Err(SendError::Closed) => Err(DeliveryError::UnknownTarget),
        }
    }

    /// The address a connection holds, if any (for the admin view).
    pub fn address_of(&self, conn_id: u64) -> Option<String> {
        self.lock()
            .iter()
            .find(|(_, c)| c.id == conn_id)
            .map(|(a, _)| a.clone())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
