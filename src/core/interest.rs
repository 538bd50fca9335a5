//! What this process holds that other hub nodes may address: topics with local
//! subscribers, named Phoenix devices, relay names, Compendium addresses and Bester users. The registry
//! and its directories report every change here; a cluster fabric listens
//! ([`Interest::listen`]) and keeps one NATS subscription per held name, reconciling each
//! reported name against the registry (so the order of reports never matters). A single
//! hub listens to nothing, and a report costs one atomic load.

use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;

use super::topic::Topic;
use crate::domain::DeviceName;

/// Something other nodes can address, reported when this process starts or stops holding it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Name {
    /// A topic whose local subscriber count went from or to zero.
    Topic(Topic),
    /// A Phoenix socket's `name` (one socket per name, cluster-wide).
    Device(DeviceName),
    /// A relay name (lower-case).
    Relay(String),
    /// A Compendium address.
    Address(String),
    /// A logged-in Bester user (any number of connections).
    User(String),
}

/// The listener of [`Name`] reports, shared by the registry and its directories.
#[derive(Debug, Clone, Default)]
pub struct Interest {
    tx: Arc<OnceLock<mpsc::UnboundedSender<Name>>>,
}

impl Interest {
    /// Reports `name` to the listener, if there is one.
    pub fn changed(&self, name: Name) {
        if let Some(tx) = self.tx.get() {
            let _ = tx.send(name);
        }
    }

    /// Starts listening: every later report arrives on the returned receiver. Only the
    /// first call listens (`None` after that).
    pub fn listen(&self) -> Option<mpsc::UnboundedReceiver<Name>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.tx.set(tx).ok().map(|()| rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_reach_the_one_listener() {
        let interest = Interest::default();
        interest.changed(Name::Relay("before".into()));
        let mut rx = interest.listen().expect("first listener");
        assert!(interest.listen().is_none());
        interest.clone().changed(Name::Relay("lamp".into()));
        assert_eq!(rx.try_recv().ok(), Some(Name::Relay("lamp".into())));
        assert!(rx.try_recv().is_err());
    }
}
