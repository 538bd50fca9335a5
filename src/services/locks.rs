//! The lock rules that both the lock channel and the admin API apply: changing a lock's
//! intended state, pairing, reassigning its holder, and telling watchers (`events`,
//! `events:<serial>`) what happened. Doors and admin routes stay thin: they decode, call
//! one of these, and encode the answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

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
    watch: Arc<StateWatch>,
}

/// How long a lock has to report a pushed intended state, and the longest pause between
/// two pushes to a lock that drifts (`HOMEHUB_STATE_DRIFT_MS`, `HOMEHUB_STATE_RETRY_MAX_MS`).
#[derive(Debug, Clone, Copy)]
pub struct DriftPolicy {
    pub drift_after: Duration,
    pub max_pause: Duration,
}

impl DriftPolicy {
    /// The pause after the `attempts`-th push: the drift time, doubling, capped.
    fn pause(&self, attempts: u32) -> Duration {
        self.drift_after
            .saturating_mul(1u32 << attempts.min(20))
            .min(self.max_pause.max(self.drift_after))
    }
}

/// An intended state this node pushed and the lock has not reported back yet.
#[derive(Debug, Clone)]
struct Pending {
    version: i64,
    state: Value,
    /// When the first push went out (what `drifting_since` says once it drifts).
    first_push: String,
    last_push: Instant,
    /// Pushes so far.
    pushes: u32,
    drifting: bool,
}

/// The locks awaiting their report, by serial.
#[derive(Debug)]
struct StateWatch {
    policy: DriftPolicy,
    pending: Mutex<HashMap<String, Pending>>,
}

impl StateWatch {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        // Nothing panics while holding it; recover the map rather than the hub.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Locks {
    pub fn new(
        store: Store,
        fabric: Arc<dyn Fabric>,
        registry: Arc<Registry>,
        auth: AuthMode,
        pair_ttl: Duration,
        policy: DriftPolicy,
    ) -> Locks {
        Locks {
            store,
            fabric,
            registry,
            auth,
            pair_ttl,
            watch: Arc::new(StateWatch {
                policy,
                pending: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// How long a pairing request lives when the admin gives no `ttl_secs`
    /// (`HOMEHUB_PAIR_TTL_SECS`).
    pub fn default_pair_ttl(&self) -> Duration {
        self.pair_ttl
    }

    /// Whether a connection (on any node) has lock `serial`'s channel joined right now.
    pub async fn online(&self, serial: &str) -> bool {
        self.online_here(serial) || self.online_elsewhere().await.contains(serial)
    }

    /// Whether a connection of this process has lock `serial`'s channel joined.
    pub fn online_here(&self, serial: &str) -> bool {
        lock_topic(serial).is_some_and(|t| self.registry.has_subscribers(&t))
    }

    /// The serials of the locks whose channel a connection of another node has joined:
    /// none on a single hub (nothing to ask), and none this node can learn while the
    /// cluster is unreachable.
    pub async fn online_elsewhere(&self) -> std::collections::HashSet<String> {
        if !self.fabric.cluster().clustered {
            return Default::default();
        }
        let devices = self.fabric.devices().await.unwrap_or_default();
        devices
            .iter()
            .flat_map(|d| d.topics.iter())
            .filter_map(|t| t.strip_prefix("lock:"))
            .map(str::to_owned)
            .collect()
    }

    /// Stores a new intended state (only if it is still at version `expected`, when given:
    /// `If-Match`), pushes `state` to the lock's channel instances that accept it (the
    /// others get it at their next join or `reset`) and tells watchers. Until the lock
    /// reports that state, the hub pushes it again on the [`DriftPolicy`] and marks the lock
    /// drifting. Returns the lock and how many instances the push was queued for.
    pub async fn set_state(
        &self,
        serial: &str,
        state: &Value,
        expected: Option<i64>,
    ) -> Result<(LockRecord, usize), ServiceError> {
        let lock = self
            .store
            .set_intended_state(serial, state, expected)
            .await?;
        let delivered = push_to_lock(
            self.fabric.as_ref(),
            serial,
            STATE_EVENT,
            OutPayload::json(state),
        )?;
        self.watch.lock().insert(
            lock.serial.clone(),
            Pending {
                version: lock.intended_version,
                state: state.clone(),
                first_push: crate::domain::now_rfc3339(),
                last_push: Instant::now(),
                pushes: 1,
                drifting: false,
            },
        );
        if let Some(serial) = Serial::parse(serial) {
            let body = serde_json::json!({ "serial": serial, "state": state });
            announce(self.fabric.as_ref(), &serial, STATE_EVENT, &body);
        }
        tracing::info!(%serial, version = lock.intended_version, delivered, "intended state changed");
        Ok((lock, delivered))
    }

    /// A lock's `report` of its actual state: stored; when it is the intended state the
    /// lock no longer drifts and is not pushed again.
    pub async fn report(&self, serial: &Serial, state: &Value) -> Result<(), ServiceError> {
        let lock = self.store.set_reported_state(serial, state).await?;
        if lock.agrees() {
            self.watch.lock().remove(serial.as_str());
            if lock.drifting_since.is_some() {
                self.store
                    .set_drifting(serial.as_str(), Some(lock.intended_version), None)
                    .await?;
                tracing::info!(%serial, version = lock.intended_version, "lock reported its intended state; no longer drifting");
            }
        }
        Ok(())
    }

    /// Pushes the intended state again to the locks that have not reported it, on the
    /// [`DriftPolicy`], and marks them drifting, until `shutdown`. One per hub.
    pub async fn watch_drift(self, shutdown: tokio_util::sync::CancellationToken) {
        self.resume_watch().await;
        let every = (self.watch.policy.drift_after / 4)
            .clamp(Duration::from_millis(5), Duration::from_secs(1));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.repush_due().await,
            }
        }
    }

    /// At start: the changes a lock has not reported yet (made before a restart, or on
    /// another node) are watched again, the first repeat one drift time from now.
    async fn resume_watch(&self) {
        let locks = match self.store.list_locks().await {
            Ok(locks) => locks,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the locks whose state is not reported yet");
                return;
            }
        };
        let mut watch = self.watch.lock();
        for lock in locks {
            let Some(changed) = &lock.intended_at else {
                continue;
            };
            if lock.agrees() {
                continue;
            }
            watch.entry(lock.serial.clone()).or_insert(Pending {
                version: lock.intended_version,
                state: lock.intended_state.clone(),
                first_push: lock
                    .drifting_since
                    .clone()
                    .unwrap_or_else(|| changed.clone()),
                last_push: Instant::now(),
                pushes: 1,
                drifting: lock.drifting_since.is_some(),
            });
        }
        if !watch.is_empty() {
            tracing::info!(
                locks = watch.len(),
                "watching intended states not reported yet"
            );
        }
    }

    async fn repush_due(&self) {
        let policy = self.watch.policy;
        let due: Vec<(String, Pending)> = self
            .watch
            .lock()
            .iter()
            .filter(|(_, p)| p.last_push.elapsed() >= policy.pause(p.pushes.saturating_sub(1)))
            .map(|(s, p)| (s.clone(), p.clone()))
            .collect();
        for (serial, pending) in due {
            // The lock may have reported on another node, or the state changed there.
            match self.store.get_lock(&serial).await {
                Ok(Some(lock)) if lock.intended_version == pending.version && !lock.agrees() => {}
                Ok(_) => {
                    self.forget_if(&serial, pending.version);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(%serial, error = %e, "cannot check a drifting lock");
                    continue;
                }
            }
            if !pending.drifting {
                match self
                    .store
                    .set_drifting(&serial, Some(pending.version), Some(&pending.first_push))
                    .await
                {
                    Ok(()) => {
                        tracing::warn!(%serial, version = pending.version, "lock drifting: it did not report its intended state")
                    }
                    Err(e) => tracing::warn!(%serial, error = %e, "cannot mark a lock drifting"),
                }
            }
            let delivered = push_to_lock(
                self.fabric.as_ref(),
                &serial,
                STATE_EVENT,
                OutPayload::json(&pending.state),
            )
            .unwrap_or(0);
            let mut watch = self.watch.lock();
            if let Some(p) = watch.get_mut(&serial)
                && p.version == pending.version
            {
                p.drifting = true;
                p.pushes = p.pushes.saturating_add(1);
                p.last_push = Instant::now();
                tracing::info!(%serial, version = p.version, push = p.pushes, delivered, "intended state pushed again");
            }
        }
    }

    fn forget_if(&self, serial: &str, version: i64) {
        let mut watch = self.watch.lock();
        if watch.get(serial).is_some_and(|p| p.version == version) {
            watch.remove(serial);
        }
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
