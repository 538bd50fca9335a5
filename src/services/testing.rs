//! A [`Hub`] for unit tests: the shipped defaults ([`Config::default_for`]) on a fresh
//! SQLite file in a temp directory, with the in-process fabric, and no listener. Doors,
//! channels and services are then driven by calling them, without sockets; the
//! composition root ([`crate::app`]) stays unimported.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Hub;
use crate::auth::{Keyring, OriginPolicy};
use crate::config::Config;
use crate::core::{Conn, Door, Fabric, LocalFabric, Registry, outbox};
use crate::domain::DeviceName;
use crate::metrics::Metrics;
use crate::store::{Store, StoreOptions};

/// A hub on a temp SQLite file; the file lives as long as this value.
pub struct TestHub {
    pub hub: Arc<Hub>,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for TestHub {
    type Target = Arc<Hub>;
    fn deref(&self) -> &Arc<Hub> {
        &self.hub
    }
}

/// The address unit-test connections come from.
pub fn peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40_000))
}

impl TestHub {
    /// A hub with the shipped defaults.
    pub async fn new() -> TestHub {
        TestHub::with(|_| {}).await
    }

    /// A hub with the shipped defaults changed by `tweak`.
    pub async fn with(tweak: impl FnOnce(&mut Config)) -> TestHub {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("homehub.db").display());
        let mut config = Config::default_for(SocketAddr::from(([127, 0, 0, 1], 0)), &url);
        tweak(&mut config);
        let options = StoreOptions {
            new_lock_flags: config.lock_feature_flags.clone(),
        };
        let store = Store::open_with(&url, &options).await.expect("temp store");
        let key = store.token_key().await.expect("token key");
        let keyring = Keyring::new(key, Vec::new());
        let origins = OriginPolicy::parse(&config.allowed_origins);
        let shutdown = CancellationToken::new();
        let metrics = Arc::new(Metrics::default());
        let registry = Arc::new(Registry::new(
            shutdown.clone(),
            config.outbound_queue,
            metrics.clone(),
        ));
        let fabric: Arc<dyn Fabric> = Arc::new(LocalFabric::new(registry.clone()));
        let relay = super::relay::Relay::new(fabric.clone(), registry.clone(), store.clone());
        let hub = Arc::new(Hub {
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
        });
        TestHub { hub, _dir: dir }
    }

    /// A live connection on `door` (named `name`, for Phoenix sockets), as a door's
    /// admission would register it, with the receiving end of its outbound queue.
    pub fn connect(&self, name: Option<&str>, door: Door) -> (Arc<Conn>, outbox::Receiver) {
        let name = name.map(|n| DeviceName::parse(n).expect("a valid device name"));
        self.hub.registry.connect(name, door, peer(), None)
    }
}
