//! The lock rules that both the lock channel and the admin API apply: changing a lock's
//! intended state, pairing, reassigning its holder, and telling watchers (`events`,
//! `events:<serial>`) what happened. Doors and admin routes stay thin: they decode, call
//! one of these, and encode the answer.

use std::time::Duration;

use serde_json::Value;

use std::sync::Arc;

use super::ServiceError;
use crate::config::AuthMode;
use crate::core::message::OutPayload;
use crate::core::{Fabric, Registry, Topic};
use crate::domain::{DeviceName, ItemKind, LockRecord, PairingRequest, Serial};
use crate::store::Store;

/// The topic of a lock's channel (`None` for a name that is no serial: no lock has it).
pub fn lock_topic(serial: &str) -> Option<Topic> {
    Serial::parse(serial).map(Topic::Lock)
}

/// Pushes `event` to the channel of lock `serial`; how many instances it was queued for.
fn push_to_lock(
    fabric: &dyn Fabric,
    serial: &str,
    event: &str,
    payload: OutPayload,
) -> Result<usize, crate::core::fabric::Unavailable> {
    match lock_topic(serial) {
        Some(topic) => fabric.push_topic(&topic, event, payload),
        None => Ok(0),
    }
}

/// The push that tells a lock its intended state changed.
pub const STATE_EVENT: &str = "state";

/// The push that asks a lock to pair an item.
pub const PAIR_EVENT: &str = "mode:pair";

/// Broadcasts `event` with the JSON `body` on `events` and on `events:<serial>`.
pub fn announce(fabric: &dyn Fabric, serial: &Serial, event: &str, body: &impl serde::Serialize) {
    let body = OutPayload::json(body);
    let all = fabric.broadcast(&Topic::Events, event, body.clone(), None);
    let one = fabric.broadcast(&Topic::LockEvents(serial.clone()), event, body, None);
    if all.is_err() || one.is_err() {
        tracing::warn!(%serial, event, "event not announced: fabric unavailable");
    }
}

/// The lock rules, on what they use: the store, the fabric (pushes and announcements),
/// the registry (whether a lock is online), the auth mode (holders) and the default
/// pairing lifetime. Cheap to clone; one per hub.
#[derive(Clone)]
pub struct Locks {
    store: Store,
    fabric: Arc<dyn Fabric>,
    registry: Arc<Registry>,
    auth: AuthMode,
    pair_ttl: Duration,
}

impl Locks {
    pub fn new(
        store: Store,
        fabric: Arc<dyn Fabric>,
        registry: Arc<Registry>,
        auth: AuthMode,
        pair_ttl: Duration,
    ) -> Locks {
        Locks {
            store,
            fabric,
            registry,
            auth,
            pair_ttl,
        }
    }

    /// How long a pairing request lives when the admin gives no `ttl_secs`
    /// (`HOMEHUB_PAIR_TTL_SECS`).
    pub fn default_pair_ttl(&self) -> Duration {
        self.pair_ttl
    }

    /// Whether a connection (on any node) has lock `serial`'s channel joined right now.
    pub async fn online(&self, serial: &str) -> bool {
        if lock_topic(serial).is_some_and(|t| self.registry.has_subscribers(&t)) {
            return true;
        }
        self.online_serials().await.contains(serial)
    }

    /// The serials of every lock whose channel a connection of any node has joined (this
    /// node's alone while the cluster is unreachable).
    pub async fn online_serials(&self) -> std::collections::HashSet<String> {
        let devices = match self.fabric.devices().await {
            Ok(all) => all,
            Err(_) => self.registry.devices(),
        };
        devices
            .iter()
            .flat_map(|d| d.topics.iter())
            .filter_map(|t| t.strip_prefix("lock:"))
            .map(str::to_owned)
            .collect()
    }

    /// Stores a new intended state, pushes `state` to the lock's channel instances that accept
    /// it (the others get it at their next join or `reset`) and tells watchers. Returns the
    /// lock and how many instances the push was queued for.
    pub async fn set_state(
        &self,
        serial: &str,
        state: &Value,
    ) -> Result<(LockRecord, usize), ServiceError> {
        let lock = self.store.set_intended_state(serial, state).await?;
        let delivered = push_to_lock(
            self.fabric.as_ref(),
            serial,
            STATE_EVENT,
            OutPayload::json(state),
        )?;
        if let Some(serial) = Serial::parse(serial) {
            let body = serde_json::json!({ "serial": serial, "state": state });
            announce(self.fabric.as_ref(), &serial, STATE_EVENT, &body);
        }
        tracing::info!(%serial, delivered, "intended state changed");
        Ok((lock, delivered))
    }

    /// Creates a pairing request and pushes `mode:pair` to the lock if it is connected (else it
    /// gets it after its next join, until the request completes, expires or is cancelled).
    /// The request comes back with its delivery recorded.
    pub async fn start_pairing(
        &self,
        serial: &str,
        name: &str,
        kind: ItemKind,
        ttl: Duration,
    ) -> Result<(PairingRequest, bool), ServiceError> {
        let mut request = self.store.create_pairing(serial, name, kind, ttl).await?;
        let delivered = push_to_lock(
            self.fabric.as_ref(),
            serial,
            PAIR_EVENT,
            OutPayload::json(&request.mode_pair_payload()),
        )?;
        tracing::info!(%serial, pair_id = %request.pair_id, delivered, "pairing started");
        if delivered > 0 {
            // Best effort: the push is out whether or not this record is written.
            match self.store.record_pairing_delivered(&request.pair_id).await {
                Ok(()) => {
                    request.delivered_at = Some(crate::domain::now_rfc3339());
                    request.deliveries += 1;
                }
                Err(e) => {
                    tracing::error!(pair_id = %request.pair_id, error = %e, "cannot record pairing delivery")
                }
            }
        }
        Ok((request, delivered > 0))
    }

    /// Cancels a pending pairing request: it is not pushed again and the lock's
    /// `pair:complete` for it is refused.
    pub async fn cancel_pairing(&self, pair_id: &str) -> Result<PairingRequest, ServiceError> {
        let request = self.store.cancel_pairing(pair_id).await?;
        tracing::info!(%pair_id, serial = %request.lock, "pairing request cancelled");
        Ok(request)
    }

    /// Reassigns (or frees) a lock. In token mode only the holder may have the lock's channel,
    /// so every other device's instance of it ends.
    pub async fn set_holder(
        &self,
        serial: &str,
        device: Option<&DeviceName>,
    ) -> Result<LockRecord, ServiceError> {
        let lock = self
            .store
            .set_lock_holder(serial, device.map(DeviceName::as_str))
            .await?;
        tracing::info!(%serial, holder = ?lock.holder_device, "lock holder reassigned");
        if self.auth == AuthMode::Token
            && let Some(topic) = lock_topic(serial)
        {
            self.fabric
                .end_channel(&topic, lock.holder_device.as_deref())?;
        }
        Ok(lock)
    }
}
