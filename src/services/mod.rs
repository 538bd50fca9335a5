//! The hub's shared state ([`Hub`]): what the doors and the admin API reach through a
//! handler context. It is built, run and shut down by the composition root
//! ([`crate::app`]), which nothing inside the crate imports.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod locks;
pub mod relay;
#[cfg(test)]
pub mod testing;
#[cfg(test)]
mod tests;
pub mod tokens;

use crate::config::Config;
use crate::core::{Fabric, Registry};
use crate::metrics::Metrics;
use crate::store::Store;

/// State shared by every door and the admin API.
pub struct Hub {
    pub config: Config,
    pub store: Store,
    pub registry: Arc<Registry>,
    /// Every socket task is spawned on this tracker so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Cancelled once, at shutdown; every connection's kill switch is a child of it.
    pub shutdown: CancellationToken,
    pub metrics: Arc<Metrics>,
    /// Device-token key and revocations.
    pub keyring: Arc<crate::auth::Keyring>,
    /// Browser origins allowed on the device doors.
    pub origins: crate::auth::OriginPolicy,
    /// Everything that crosses connections (delivery, broadcast, Presence, disconnects).
    pub fabric: Arc<dyn Fabric>,
    /// The device relay: registration, delivery, the `devices` records.
    pub relay: Arc<relay::Relay>,
    /// The lock rules (state, pairing, holders, announcements).
    pub locks: locks::Locks,
    /// Device tokens (issue, revoke).
    pub tokens: tokens::Tokens,
}

/// What a fabric is built over.
pub struct FabricParts {
    pub registry: Arc<Registry>,
    /// Cancelled at shutdown.
    pub shutdown: CancellationToken,
    /// Token revocations another node announces are marked here too.
    pub keyring: Arc<crate::auth::Keyring>,
    /// What a cluster node reads again after a reconnection (revocations it missed).
    pub store: Store,
}

impl Hub {
    /// The hub on `store`, with a fresh registry, metrics and shutdown token, and the
    /// in-process fabric over that registry.
    pub fn new(config: Config, store: Store, keyring: crate::auth::Keyring) -> Hub {
        let node = config.node_name();
        Hub::with_fabric(config, store, keyring, |parts| {
            Arc::new(crate::core::LocalFabric::new(parts.registry.clone(), node))
        })
    }

    /// The hub on `store` with the fabric `fabric` builds over the hub's registry (a
    /// cluster's, in `app.rs`).
    pub fn with_fabric(
        config: Config,
        store: Store,
        keyring: crate::auth::Keyring,
        fabric: impl FnOnce(&FabricParts) -> Arc<dyn Fabric>,
    ) -> Hub {
        let origins = crate::auth::OriginPolicy::parse(&config.allowed_origins);
        let shutdown = CancellationToken::new();
        let metrics = Arc::new(Metrics::default());
        let registry = Arc::new(Registry::new(
            shutdown.clone(),
            config.outbound_queue,
            metrics.clone(),
        ));
        let keyring = Arc::new(keyring);
        let fabric = fabric(&FabricParts {
            registry: registry.clone(),
            shutdown: shutdown.clone(),
            keyring: keyring.clone(),
            store: store.clone(),
        });
        let relay = Arc::new(relay::Relay::new(fabric.clone(), store.clone()));
        let locks = locks::Locks::new(
            store.clone(),
            fabric.clone(),
            registry.clone(),
            config.auth,
            config.pair_ttl,
            locks::DriftPolicy {
                drift_after: config.state_drift,
                max_pause: config.state_retry_max,
            },
        );
        tokio::spawn(locks.clone().watch_drift(shutdown.clone()));
        let tokens = tokens::Tokens::new(
            store.clone(),
            keyring.clone(),
            fabric.clone(),
            config.token_ttl,
        );
        Hub {
            config,
            store,
            registry,
            tracker: TaskTracker::new(),
            shutdown,
            metrics,
            keyring,
            origins,
            fabric,
            relay,
            locks,
            tokens,
        }
    }
}

/// Why a service call failed: the store refused or broke, or the fabric could not carry
/// what crosses connections.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("fabric unavailable")]
    Unavailable,
}

impl From<crate::core::fabric::Unavailable> for ServiceError {
    fn from(_: crate::core::fabric::Unavailable) -> ServiceError {
        ServiceError::Unavailable
    }
}

impl From<crate::core::DeliveryError> for ServiceError {
    fn from(_: crate::core::DeliveryError) -> ServiceError {
        ServiceError::Unavailable
    }
}
