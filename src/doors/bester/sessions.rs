//! Bester connections in the core registry. Each is a registry [`Conn`] of door
//! [`Door::Bester`] (so `/api/devices` and `/metrics` count it like any connection); its
//! outbound queue is the registry's bounded outbox (a full one closes the slow reader),
//! its kill switch the `Conn`'s, and who it is logged in as a name held by the core
//! ([`crate::core::users`]). This module is the Bester view of those.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tungstenite::Utf8Bytes;

use super::auth::Username;
use crate::core::users::Label;
use crate::core::{Conn, Door, Outbound, Registry};

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

/// Registers a new, anonymous connection from `remote`, unless its address already has
/// `max_per_ip` (0 = unlimited; the Unix socket's connections count as one address). Its queue
/// holds `queue` frames.
pub fn open(
    registry: &Registry,
    remote: Remote,
    max_per_ip: usize,
    queue: usize,
) -> Option<(Arc<Conn>, crate::core::outbox::Receiver)> {
    let addr: Option<SocketAddr> = match remote {
        Remote::Tcp(a) => Some(a),
        Remote::Unix => None,
    };
    registry.admit(Door::Bester, addr, max_per_ip, queue)
}

/// Records who a connection is (after authentication or logout).
pub fn set_identity(registry: &Registry, conn: &Conn, identity: Identity) {
    let label = match identity {
        Identity::Anonymous => None,
        Identity::User(u) => Some(Label::User(u.as_str().to_owned())),
        Identity::Peer(p) => Some(Label::Peer(p)),
    };
    registry.users.set(conn.id, label);
}

/// A frame as Bester connections receive it (frames are serde_json output, so valid UTF-8).
pub fn delivery_text(frame: Bytes) -> Option<Utf8Bytes> {
    Utf8Bytes::try_from(frame).ok()
}

/// A frame as the registry queues it.
pub fn outbound(frame: Bytes) -> Option<Outbound> {
    delivery_text(frame).map(|t| Outbound::Text(Box::new(t)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::DeliveryError;
    use tokio_util::sync::CancellationToken;

    fn registry(queue: usize) -> Registry {
        Registry::new(
            CancellationToken::new(),
            queue,
            Arc::new(crate::metrics::Metrics::default()),
        )
    }

    fn user(name: &str) -> Identity {
        Identity::User(Username::parse(name).unwrap())
    }

    fn text(out: Option<Outbound>) -> String {
        match out {
            Some(Outbound::Text(t)) => t.as_str().to_owned(),
            other => panic!("not a frame: {other:?}"),
        }
    }

    #[test]
    fn delivers_to_every_connection_of_a_user() {
        let r = registry(4);
        let remote = Remote::Tcp("127.0.0.1:5000".parse().unwrap());
        let (a, mut rx1) = open(&r, remote, 0, 4).unwrap();
        let (b, mut rx2) = open(&r, Remote::Unix, 0, 4).unwrap();
        let x = Utf8Bytes::from_static("x");
        assert_eq!(
            r.deliver_to_user("bob", &x),
            Err(DeliveryError::UnknownTarget)
        );
        set_identity(&r, &a, user("bob"));
        set_identity(&r, &b, user("bob"));
        assert_eq!(r.users.names(), vec!["bob".to_owned()]);
        let mut views = r.devices();
        views.sort_by(|x, y| x.remote.cmp(&y.remote));
        assert_eq!(views.len(), 2);
        assert_eq!(views[0].remote, "127.0.0.1:5000");
        assert_eq!(views[1].remote, "unix");
        assert!(views.iter().all(|v| v.door == "bester" && v.name == "bob"));
        assert_eq!(views[0].user.as_deref(), Some("bob"));
        assert_eq!(r.deliver_to_user("bob", &x), Ok(2));
        assert_eq!(text(rx1.try_recv()), "x");
        assert_eq!(text(rx2.try_recv()), "x");
        set_identity(&r, &a, Identity::Anonymous);
        r.disconnect(&b, []);
        assert!(r.users.names().is_empty());
        assert_eq!(r.connection_count(), 1);
        assert!(r.devices()[0].name.starts_with("bester-"));
    }

    #[test]
    fn a_full_queue_kills_the_slow_connection() {
        let r = registry(16);
        let (c, _rx) = open(&r, Remote::Unix, 0, 1).unwrap();
        set_identity(&r, &c, user("slow"));
        assert_eq!(
            r.deliver_to_user("slow", &Utf8Bytes::from_static("1")),
            Ok(1)
        );
        assert_eq!(
            r.deliver_to_user("slow", &Utf8Bytes::from_static("2")),
            Err(DeliveryError::TargetBusy)
        );
        assert!(c.is_killed());
    }

    #[test]
    fn the_address_cap_counts_live_connections_and_the_unix_socket_as_one_address() {
        let r = registry(4);
        let at = Remote::Tcp("127.0.0.1:5000".parse().unwrap());
        let (first, _r1) = open(&r, at, 1, 4).unwrap();
        assert!(open(&r, at, 1, 4).is_none(), "over the cap");
        let _u = open(&r, Remote::Unix, 1, 4).expect("the Unix socket is another address");
        assert!(
            open(&r, Remote::Unix, 1, 4).is_none(),
            "the Unix socket's connections share one place under the cap"
        );
        r.disconnect(&first, []);
        assert!(open(&r, at, 1, 4).is_some(), "the slot was given back");
    }
}
