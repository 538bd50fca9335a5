//! The fabric: everything that crosses connections goes through [`Fabric`], so that a
//! cluster (several hub processes on NATS, issue 15) can replace today's in-process
//! implementation, [`LocalFabric`], without any door changing.
//!
//! Two kinds of operation, shaped as a cluster needs them:
//!
//! * **Requests** — deliver to one named device or address, disconnect a device or the
//!   holders of a token. They are asynchronous and answer: `Ok` once the owner of the
//!   target has queued it, [`DeliveryError::UnknownTarget`] when nobody holds the target
//!   (in a cluster: no node answered), [`DeliveryError::Unavailable`] when the fabric itself
//!   cannot carry the request. A door never reports a false `ok`.
//! * **Publications** — broadcasts to a topic, pushes to a topic's channel instances,
//!   Presence changes. They never wait (a socket's task or its `Drop` publishes): the
//!   local receivers are queued at once and the implementation carries the rest in the
//!   background. They fail only when the fabric cannot take them.
//!
//! Relay-name takeover is part of registration ([`Fabric::register_relay`]): the holder
//! being displaced, wherever it is, is told through its own queue.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tungstenite::Utf8Bytes;

use super::close_code;
use super::directory::{BinaryPacket, Claim, Packet, RegisterError, Registered};
use super::interest::Name;
use super::message::OutPayload;
use super::presence::DeviceMeta;
use super::registry::{Conn, DeviceView, Registry};
use super::topic::Topic;
use crate::domain::{DeviceInfo, DeviceName};

/// Why a delivery failed; the text is what the sender is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Nobody holds the target.
    #[error("unknown target")]
    UnknownTarget,
    /// The target's outbound queue is full (it is being disconnected as too slow).
    #[error("target busy")]
    TargetBusy,
    /// A binary packet for a device that cannot receive binary frames.
    #[error("target cannot receive binary packets")]
    BinaryUnsupported,
    /// The fabric cannot carry the request (a cluster whose messaging is down).
    #[error("fabric unavailable")]
    Unavailable,
}

/// A publication the fabric could not take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("fabric unavailable")]
pub struct Unavailable;

/// One hub node as `/api/cluster` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeView {
    pub name: String,
    /// The node answering the request.
    pub this_node: bool,
    /// `up`: heartbeating (nodes that stop are removed).
    pub state: &'static str,
    /// Its live connections.
    pub connections: usize,
    pub started_at: String,
    /// Milliseconds since its last heartbeat arrived (absent for this node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_ms: Option<u64>,
}

/// The cluster as one node sees it (`/api/cluster`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterView {
    /// Whether this hub is a node of a cluster (`HOMEHUB_CLUSTER`).
    pub clustered: bool,
    /// This node's name.
    pub node: String,
    /// Whether the fabric can reach the other nodes (a single hub always can).
    pub connected: bool,
    pub nodes: Vec<NodeView>,
}

/// Everything that crosses connections. See the module docs for the two kinds of call.
pub trait Fabric: Send + Sync + 'static {
    /// Queues a relay packet for the device registered as `target`.
    fn deliver<'a>(
        &'a self,
        target: &'a str,
        packet: Arc<Packet>,
    ) -> BoxFuture<'a, Result<(), DeliveryError>>;

    /// Queues a binary relay packet for `target`, if it can receive binary frames.
    fn deliver_binary<'a>(
        &'a self,
        target: &'a str,
        packet: Arc<BinaryPacket>,
    ) -> BoxFuture<'a, Result<(), DeliveryError>>;

    /// Queues text already encoded for the Compendium door for the holder of `address`.
    fn deliver_to_address<'a>(
        &'a self,
        address: &'a str,
        text: Utf8Bytes,
    ) -> BoxFuture<'a, Result<(), DeliveryError>>;

    /// Closes the connection of device `name` (the socket-id `disconnect`, admin
    /// disconnect): `Ok(false)` if no connection has that name.
    fn disconnect_device<'a>(
        &'a self,
        name: &'a DeviceName,
    ) -> BoxFuture<'a, Result<bool, DeliveryError>>;

    /// Closes every connection admitted with token `token_id` (revocation); how many.
    fn disconnect_token<'a>(
        &'a self,
        token_id: &'a str,
    ) -> BoxFuture<'a, Result<usize, DeliveryError>>;

    /// Puts `conn` on the relay under the one registration rule, displacing (with
    /// `force`) the name's current holder wherever it is.
    fn register_relay<'a>(
        &'a self,
        conn: &'a Arc<Conn>,
        claim: Claim<'a>,
    ) -> BoxFuture<'a, Result<Registered, RegisterError>>;

    /// Takes `conn_id` off the relay name `name` if it still holds it.
    fn unregister_relay(&self, name: &str, conn_id: u64) -> bool;

    /// Broadcasts `event` on `topic` to every subscriber but `except`. `Ok` is how many
    /// local connections it was queued for.
    fn broadcast(
        &self,
        topic: &Topic,
        event: &str,
        payload: OutPayload,
        except: Option<u64>,
    ) -> Result<usize, Unavailable>;

    /// Pushes `event` to every channel instance joined to `topic`, each with its join_ref
    /// (the hub's pushes to locks). `Ok` is how many local connections it was queued for.
    fn push_topic(
        &self,
        topic: &Topic,
        event: &str,
        payload: OutPayload,
    ) -> Result<usize, Unavailable>;

    /// Ends the channel instance on `topic` of every connection whose device is not
    /// `keep` (a lock reassigned to another device): the door tells its client (Phoenix:
    /// `phx_close`, no rejoin). How many local connections were told.
    fn end_channel(&self, topic: &Topic, keep: Option<&str>) -> Result<usize, Unavailable>;

    /// Tracks, updates (`Some`) or untracks (`None`) a connection's Presence meta under
    /// `key`; subscribers of `presence:devices` get the `presence_diff`.
    fn presence_set(
        &self,
        key: &str,
        conn_id: u64,
        fields: Option<DeviceMeta>,
    ) -> Result<(), Unavailable>;

    /// What the relay device `name` said about itself when it registered, wherever it
    /// is (`None`: no device has that name).
    fn relay_info<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<DeviceInfo>, DeliveryError>>;

    /// Every relay name on every node, sorted.
    fn relay_names(&self) -> BoxFuture<'_, Result<Vec<String>, DeliveryError>> {
        Box::pin(async move {
            let mut names: Vec<String> = self
                .devices()
                .await?
                .into_iter()
                .filter_map(|d| d.relay_name)
                .collect();
            names.sort();
            names.dedup();
            Ok(names)
        })
    }

    /// Queues an encoded Bester delivery `frame` for every connection of Bester user
    /// `user`, wherever they are. `UnknownTarget`: the user has no connection anywhere.
    fn deliver_to_user<'a>(
        &'a self,
        user: &'a str,
        frame: Utf8Bytes,
    ) -> BoxFuture<'a, Result<(), DeliveryError>>;

    /// Closes every connection of Bester user `user` (the user was removed); how many.
    fn kick_user<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<usize, DeliveryError>>;

    /// The Bester users with at least one connection on any node, sorted.
    fn bester_users(&self) -> BoxFuture<'_, Result<Vec<String>, DeliveryError>> {
        Box::pin(async move {
            let mut users: Vec<String> = self
                .devices()
                .await?
                .into_iter()
                .filter_map(|d| d.user)
                .collect();
            users.sort();
            users.dedup();
            Ok(users)
        })
    }

    /// Returns once what is sent to `name` from anywhere reaches this process (called
    /// after a join subscribed to a topic, or an address was allocated, before the client
    /// is told). A single hub has nothing to wait for; a cluster node makes its NATS
    /// subscription and waits for the server to have it, the first time.
    fn hold<'a>(&'a self, _name: &'a Name) -> BoxFuture<'a, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Every live connection of every node (each with its node in a cluster), by name.
    fn devices(&self) -> BoxFuture<'_, Result<Vec<DeviceView>, DeliveryError>>;

    /// The nodes and whether this one reaches them.
    fn cluster(&self) -> ClusterView;

    /// Appends the fabric's own Prometheus lines to `/metrics` (none for a single hub).
    fn render_metrics(&self, _out: &mut String) {}
}

/// The fabric of one hub process: every target is in this process's [`Registry`].
pub struct LocalFabric {
    registry: Arc<Registry>,
    node: String,
    started_at: String,
}

impl LocalFabric {
    /// The fabric over `registry` of the hub called `node`.
    pub fn new(registry: Arc<Registry>, node: String) -> LocalFabric {
        LocalFabric {
            registry,
            node,
            started_at: crate::domain::format_ts(time::OffsetDateTime::now_utc()),
        }
    }
}

impl Fabric for LocalFabric {
    fn deliver<'a>(
        &'a self,
        target: &'a str,
        packet: Arc<Packet>,
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        let result = self.registry.relay.deliver(target, packet);
        Box::pin(std::future::ready(result))
    }

    fn deliver_binary<'a>(
        &'a self,
        target: &'a str,
        packet: Arc<BinaryPacket>,
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        let result = self.registry.relay.deliver_binary(target, packet);
        Box::pin(std::future::ready(result))
    }

    fn deliver_to_address<'a>(
        &'a self,
        address: &'a str,
        text: Utf8Bytes,
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        let result = self.registry.compendium.deliver(address, text);
        Box::pin(std::future::ready(result))
    }

    fn disconnect_device<'a>(
        &'a self,
        name: &'a DeviceName,
    ) -> BoxFuture<'a, Result<bool, DeliveryError>> {
        let closed = match self.registry.device(name) {
            Some(conn) => {
                conn.kill(close_code::GOING_AWAY);
                true
            }
            None => false,
        };
        Box::pin(std::future::ready(Ok(closed)))
    }

    fn disconnect_token<'a>(
        &'a self,
        token_id: &'a str,
    ) -> BoxFuture<'a, Result<usize, DeliveryError>> {
        let closed = self.registry.kill_token(token_id);
        Box::pin(std::future::ready(Ok(closed)))
    }

    fn register_relay<'a>(
        &'a self,
        conn: &'a Arc<Conn>,
        claim: Claim<'a>,
    ) -> BoxFuture<'a, Result<Registered, RegisterError>> {
        let result = self.registry.relay.register(conn, claim);
        Box::pin(std::future::ready(result))
    }

    fn unregister_relay(&self, name: &str, conn_id: u64) -> bool {
        self.registry.relay.unregister(name, conn_id)
    }

    fn broadcast(
        &self,
        topic: &Topic,
        event: &str,
        payload: OutPayload,
        except: Option<u64>,
    ) -> Result<usize, Unavailable> {
        Ok(self.registry.broadcast(topic, event, payload, except))
    }

    fn push_topic(
        &self,
        topic: &Topic,
        event: &str,
        payload: OutPayload,
    ) -> Result<usize, Unavailable> {
        Ok(self.registry.push_topic(topic, event, payload))
    }

    fn end_channel(&self, topic: &Topic, keep: Option<&str>) -> Result<usize, Unavailable> {
        Ok(self.registry.end_channel(topic, keep))
    }

    fn presence_set(
        &self,
        key: &str,
        conn_id: u64,
        fields: Option<DeviceMeta>,
    ) -> Result<(), Unavailable> {
        self.registry.presence_set(key, conn_id, fields);
        Ok(())
    }

    fn relay_info<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<DeviceInfo>, DeliveryError>> {
        Box::pin(std::future::ready(Ok(self.registry.relay.info(name))))
    }

    fn relay_names(&self) -> BoxFuture<'_, Result<Vec<String>, DeliveryError>> {
        Box::pin(std::future::ready(Ok(self.registry.relay.names())))
    }

    fn deliver_to_user<'a>(
        &'a self,
        user: &'a str,
        frame: Utf8Bytes,
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        let result = self.registry.deliver_to_user(user, &frame).map(|_| ());
        Box::pin(std::future::ready(result))
    }

    fn kick_user<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<usize, DeliveryError>> {
        Box::pin(std::future::ready(Ok(self.registry.kick_user(user))))
    }

    fn bester_users(&self) -> BoxFuture<'_, Result<Vec<String>, DeliveryError>> {
        Box::pin(std::future::ready(Ok(self.registry.users.names())))
    }

    fn devices(&self) -> BoxFuture<'_, Result<Vec<DeviceView>, DeliveryError>> {
        Box::pin(std::future::ready(Ok(self.registry.devices())))
    }

    fn cluster(&self) -> ClusterView {
        ClusterView {
            clustered: false,
            node: self.node.clone(),
            connected: true,
            nodes: vec![NodeView {
                name: self.node.clone(),
                this_node: true,
                state: "up",
                connections: self.registry.connection_count(),
                started_at: self.started_at.clone(),
                last_heartbeat_ms: None,
            }],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::outbox::Receiver;
    use crate::core::{Door, Outbound};
    use crate::domain::DeviceInfo;
    use crate::metrics::Metrics;
    use tokio_util::sync::CancellationToken;

    fn fabric() -> (Arc<Registry>, LocalFabric) {
        let registry = Arc::new(Registry::new(
            CancellationToken::new(),
            16,
            Arc::new(Metrics::default()),
        ));
        (
            registry.clone(),
            LocalFabric::new(registry, "hub".to_owned()),
        )
    }

    fn connect(registry: &Registry, name: &str) -> (Arc<Conn>, Receiver) {
        let peer = "127.0.0.1:1".parse().expect("address");
        registry.connect(DeviceName::parse(name), Door::Relay, peer, None)
    }

    fn claim(name: &str) -> Claim<'_> {
        Claim {
            name,
            info: DeviceInfo::default(),
            force: false,
            token_device: None,
        }
    }

    #[tokio::test]
    async fn a_request_reports_an_unknown_target_and_delivers_to_a_known_one() {
        let (registry, fabric) = fabric();
        let packet = |sender: &str| {
            Arc::new(Packet {
                sender: sender.to_owned(),
                payload: serde_json::value::RawValue::from_string("1".to_owned()).expect("json"),
            })
        };
        assert_eq!(
            fabric.deliver("nobody", packet("a")).await,
            Err(DeliveryError::UnknownTarget)
        );
        let (conn, mut rx) = connect(&registry, "lamp");
        fabric
            .register_relay(&conn, claim("lamp"))
            .await
            .expect("registered");
        fabric
            .deliver("LAMP", packet("a"))
            .await
            .expect("delivered");
        assert!(matches!(rx.try_recv(), Some(Outbound::Packet(p)) if p.sender == "a"));
        assert!(fabric.unregister_relay("lamp", conn.id));
        assert_eq!(
            fabric.deliver("lamp", packet("a")).await,
            Err(DeliveryError::UnknownTarget)
        );
    }

    #[tokio::test]
    async fn disconnect_reports_whether_a_device_was_there() {
        let (registry, fabric) = fabric();
        let (conn, _rx) = connect(&registry, "door-1");
        let name = DeviceName::parse("door-1").expect("name");
        let other = DeviceName::parse("door-2").expect("name");
        assert_eq!(fabric.disconnect_device(&other).await, Ok(false));
        assert_eq!(fabric.disconnect_device(&name).await, Ok(true));
        assert!(conn.is_killed());
    }

    #[test]
    fn a_broadcast_counts_the_local_receivers() {
        let (registry, fabric) = fabric();
        let (a, mut rx_a) = connect(&registry, "a");
        let (b, _rx_b) = connect(&registry, "b");
        registry.subscribe(&Topic::Events, &a);
        registry.subscribe(&Topic::Events, &b);
        let sent = fabric.broadcast(&Topic::Events, "event", OutPayload::empty(), Some(b.id));
        assert_eq!(sent, Ok(1));
        assert!(matches!(rx_a.try_recv(), Some(Outbound::Broadcast(_))));
        assert_eq!(
            fabric.broadcast(&Topic::Relay, "event", OutPayload::empty(), None),
            Ok(0)
        );
    }
}
