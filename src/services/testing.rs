//! A [`Hub`] for unit tests: the shipped defaults ([`Config::default_for`]) on a fresh
//! SQLite file in a temp directory, with the in-process fabric, and no listener. Doors,
//! channels and services are then driven by calling them, without sockets; the
//! composition root ([`crate::app`]) stays unimported.

use std::net::SocketAddr;
use std::sync::Arc;

use super::Hub;
use crate::auth::Keyring;
use crate::config::Config;
use crate::core::{Conn, Door, outbox};
use crate::domain::DeviceName;
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
        let hub = Arc::new(Hub::new(config, store, keyring));
        TestHub { hub, _dir: dir }
    }

    /// A live connection on `door` (named `name`, for Phoenix sockets), as a door's
    /// admission would register it, with the receiving end of its outbound queue.
    pub fn connect(&self, name: Option<&str>, door: Door) -> (Arc<Conn>, outbox::Receiver) {
        let name = name.map(|n| DeviceName::parse(n).expect("a valid device name"));
        self.hub.registry.connect(name, door, peer(), None)
    }
}
