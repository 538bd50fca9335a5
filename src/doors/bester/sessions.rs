//! The directory of live Bester connections. Only a connection's own tasks touch its
//! socket; everyone else reaches it through its bounded outbound queue (`try_send`, never
//! waiting) or its kill switch. A full queue means the reader is too slow: the connection
//! is closed rather than letting memory grow or the sender wait.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::auth::Username;
use crate::core::DeviceView;

/// Where a connection comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remote {
    Tcp(SocketAddr),
    /// The Unix socket (no address).
    Unix,
}

impl Remote {
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        match self {
            Remote::Tcp(a) => Some(a.ip()),
            Remote::Unix => None,
        }
    }
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Remote::Tcp(a) => a.fmt(f),
            Remote::Unix => f.write_str("unix"),
        }
    }
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Not authenticated yet (or logged out).
    Anonymous,
    User(Username),
    /// A configured peer server.
    Peer(String),
}

/// The outcome of delivering to one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for this many of the user's connections.
    Delivered(usize),
    /// The user has no connection.
    NotConnected,
    /// Every connection of the user was too slow (each is being closed).
    Busy,
}

struct Entry {
    /// The connection's outbound queue; its writer task is the only receiver.
    tx: mpsc::Sender<Bytes>,
    /// Cancelled to make the connection's tasks stop (slow reader, user removed, shutdown).
    kill: CancellationToken,
    identity: Identity,
    remote: Remote,
    connected_at: time::OffsetDateTime,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<u64, Entry>,
    /// Username → ids of its connections (a user may be connected several times).
    by_user: HashMap<String, BTreeSet<u64>>,
}

/// Live Bester connections.
#[derive(Default)]
pub struct Sessions {
    next_id: AtomicU64,
    inner: Mutex<Inner>,
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding this lock; recover the guard rather than the hub.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new, anonymous connection from `remote`; returns its id.
    pub fn open(&self, tx: mpsc::Sender<Bytes>, kill: CancellationToken, remote: Remote) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.lock().entries.insert(
            id,
            Entry {
                tx,
                kill,
                identity: Identity::Anonymous,
                remote,
                connected_at: time::OffsetDateTime::now_utc(),
            },
        );
        id
    }

    /// Records who a connection is (after authentication or logout).
    pub fn set_identity(&self, id: u64, identity: Identity) {
        let mut inner = self.lock();
        let Some(entry) = inner.entries.get_mut(&id) else {
            return;
        };
        let old = std::mem::replace(&mut entry.identity, identity.clone());
        if let Identity::User(u) = old {
            unindex(&mut inner, u.as_str(), id);
        }
        if let Identity::User(u) = identity {
            inner
                .by_user
                .entry(u.as_str().to_owned())
                .or_default()
                .insert(id);
        }
    }

    /// Forgets a connection (its task ended).
    pub fn close(&self, id: u64) {
        let mut inner = self.lock();
        if let Some(Entry {
            identity: Identity::User(u),
            ..
        }) = inner.entries.remove(&id)
        {
            unindex(&mut inner, u.as_str(), id);
        }
    }

    /// Queues `frame` for every connection of `user`, never waiting.
    pub fn deliver(&self, user: &str, frame: &Bytes) -> Delivery {
        let inner = self.lock();
        let Some(ids) = inner.by_user.get(user) else {
            return Delivery::NotConnected;
        };
        let mut delivered = 0;
        for id in ids {
            let Some(entry) = inner.entries.get(id) else {
                continue;
            };
            match entry.tx.try_send(frame.clone()) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if !entry.kill.is_cancelled() {
                        tracing::warn!(conn = id, %user, "bester outbound queue full; closing slow connection");
                    }
                    entry.kill.cancel();
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        if delivered > 0 {
            Delivery::Delivered(delivered)
        } else if ids.is_empty() {
            Delivery::NotConnected
        } else {
            Delivery::Busy
        }
    }

    /// Usernames with at least one connection, sorted.
    pub fn users(&self) -> Vec<String> {
        let mut users: Vec<String> = self
            .lock()
            .by_user
            .iter()
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(u, _)| u.clone())
            .collect();
        users.sort();
        users
    }

    /// How many connections `user` has.
    pub fn connections_of(&self, user: &str) -> usize {
        self.lock().by_user.get(user).map_or(0, BTreeSet::len)
    }

    /// Closes every connection of `user` (the user was removed); returns how many.
    pub fn kick_user(&self, user: &str) -> usize {
        let inner = self.lock();
        let Some(ids) = inner.by_user.get(user) else {
            return 0;
        };
        for id in ids {
            if let Some(entry) = inner.entries.get(id) {
                entry.kill.cancel();
            }
        }
        ids.len()
    }

    /// Every live connection as `/api/devices` lists it (door `bester`): a user's
    /// connection is named after the user, a peer's `server:<peer>`, one not logged in
    /// `bester-<id>`.
    pub fn views(&self) -> Vec<DeviceView> {
        let inner = self.lock();
        inner
            .entries
            .iter()
            .map(|(id, e)| {
                let (name, user) = match &e.identity {
                    Identity::User(u) => (u.to_string(), Some(u.to_string())),
                    Identity::Peer(p) => (format!("server:{p}"), None),
                    Identity::Anonymous => (format!("bester-{id}"), None),
                };
                DeviceView {
                    name,
                    door: "bester",
                    user,
                    relay_name: None,
                    compendium_address: None,
                    remote: e.remote.to_string(),
                    connected_at: crate::domain::format_ts(e.connected_at),
                    topics: Vec::new(),
                    packets_sent: 0,
                    packets_received: 0,
                    // Bester users log in with passwords, not device tokens.
                    token_id: None,
                }
            })
            .collect()
    }

    /// Live connections, authenticated or not.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn unindex(inner: &mut Inner, user: &str, id: u64) {
    if let Some(ids) = inner.by_user.get_mut(user) {
        ids.remove(&id);
        if ids.is_empty() {
            inner.by_user.remove(user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> Identity {
        Identity::User(Username::parse(name).unwrap())
    }

    #[test]
    fn delivers_to_every_connection_of_a_user() {
        let s = Sessions::default();
        let (tx1, mut rx1) = mpsc::channel(4);
        let (tx2, mut rx2) = mpsc::channel(4);
        let remote = Remote::Tcp("127.0.0.1:5000".parse().unwrap());
        let a = s.open(tx1, CancellationToken::new(), remote);
        let b = s.open(tx2, CancellationToken::new(), Remote::Unix);
        assert_eq!(
            s.deliver("bob", &Bytes::from_static(b"x")),
            Delivery::NotConnected
        );
        s.set_identity(a, user("bob"));
        s.set_identity(b, user("bob"));
        assert_eq!(s.users(), vec!["bob".to_owned()]);
        let mut views = s.views();
        views.sort_by(|x, y| x.remote.cmp(&y.remote));
        assert_eq!(views.len(), 2);
        assert_eq!(views[0].remote, "127.0.0.1:5000");
        assert_eq!(views[1].remote, "unix");
        assert!(views.iter().all(|v| v.door == "bester" && v.name == "bob"));
        assert_eq!(views[0].user.as_deref(), Some("bob"));
        assert_eq!(
            s.deliver("bob", &Bytes::from_static(b"x")),
            Delivery::Delivered(2)
        );
        assert_eq!(rx1.try_recv().unwrap(), Bytes::from_static(b"x"));
        assert_eq!(rx2.try_recv().unwrap(), Bytes::from_static(b"x"));
        s.set_identity(a, Identity::Anonymous);
        s.close(b);
        assert!(s.users().is_empty());
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_full_queue_kills_the_slow_connection() {
        let s = Sessions::default();
        let (tx, _rx) = mpsc::channel(1);
        let kill = CancellationToken::new();
        let id = s.open(tx, kill.clone(), Remote::Unix);
        s.set_identity(id, user("slow"));
        assert_eq!(
            s.deliver("slow", &Bytes::from_static(b"1")),
            Delivery::Delivered(1)
        );
        assert_eq!(s.deliver("slow", &Bytes::from_static(b"2")), Delivery::Busy);
        assert!(kill.is_cancelled());
    }
}
