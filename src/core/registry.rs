//! The registry: every live connection of every door, the topic subscriptions that
//! broadcasts fan out over, the relay directory ([`relay`]), Compendium addresses
//! ([`compendium`]) and Presence ([`presence`]). One instance per hub, shared by all doors.
//!
//! Only a connection's own task touches its socket. Everyone else reaches a connection
//! through its [`Conn`] handle: a bounded outbound queue ([`Conn::send`]) and a kill switch
//! ([`Conn::kill`]). A full queue means the reader is too slow: the connection is closed
//! (policy, close code 1008) instead of letting memory grow.

use super::interest::{Interest, Name};
use super::topic::Topic;
use super::{addresses, directory, outbox, presence, users};

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tungstenite::Utf8Bytes;

use super::fabric::DeliveryError;
use super::message::{Frame, OutPayload, SharedFrame};
use crate::core::close_code;
use crate::domain::DeviceName;
use crate::metrics::{self, Metrics};

pub use crate::domain::Door;

/// Something queued for a connection's writer. Kept to 16 bytes (every variant one
/// pointer): a busy connection's queue holds up to `HOMEHUB_OUTBOUND_QUEUE` of them.
#[derive(Debug)]
pub enum Outbound {
    /// A broadcast, encoded once for all receivers. Delivered only while the receiver
    /// still has the topic joined.
    Broadcast(Arc<SharedFrame>),
    /// A push to this connection's channel instance on `topic`: the writer fills in the
    /// current join_ref, and drops it if the topic is no longer joined.
    Push(Box<Frame>),
    /// A relay packet from another device; each door renders it its own way.
    Packet(Arc<directory::Packet>),
    /// A binary relay packet (Phoenix V2 WebSocket receivers only).
    BinaryPacket(Arc<directory::BinaryPacket>),
    /// Text already encoded for this connection's protocol (Compendium `DELIVER`, a Bester
    /// JSON frame without its length prefix, a long-poll session's reply).
    Text(Box<Utf8Bytes>),
    /// The hub ends this connection's channel instance on the topic (e.g. the lock was
    /// reassigned to another device in token mode): `phx_close`, no rejoin.
    EndChannel(Arc<Topic>),
    /// Another connection took this connection's relay name over (`"force": true`); it is
    /// already out of the relay directory. The door tells its client.
    RelayRevoked,
    /// The idle sweep asks for a WebSocket ping (doors without a heartbeat of their own).
    Ping,
}

/// Milliseconds on the hub's monotonic clock (idle bookkeeping): tokio's, so tests can
/// pause and advance it.
fn now_ms() -> u64 {
    static EPOCH: std::sync::LazyLock<tokio::time::Instant> =
        std::sync::LazyLock::new(tokio::time::Instant::now);
    EPOCH.elapsed().as_millis() as u64
}

/// How the idle sweep treats a connection.
const WATCH_NONE: u8 = 0;
const WATCH_IDLE: u8 = 1;
const WATCH_IDLE_AND_PING: u8 = 2;

/// Why a delivery failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The connection's outbound queue is full; the connection is being closed.
    #[error("receiver's queue is full")]
    Full,
    /// The connection has gone.
    #[error("receiver is gone")]
    Closed,
}

/// Handle to one live connection.
#[derive(Debug)]
pub struct Conn {
    pub id: u64,
    /// The Phoenix socket's `name`; for doors without one, `<door>-<id>` (logs only).
    pub name: DeviceName,
    pub door: Door,
    /// Kept as values and rendered only for `/api/devices`: two strings per socket would
    /// cost every idle connection two allocations.
    pub remote: SocketAddr,
    /// Over a Unix socket (Bester): `remote` is a placeholder, and the connection does not
    /// count against any address's cap.
    local: bool,
    pub connected_at: time::OffsetDateTime,
    /// Token mode: the id of the device token this connection was admitted with, so that
    /// revoking the token closes it ([`Registry::kill_token`]).
    token_id: Option<crate::auth::TokenId>,
    /// Bounded queue drained by the connection's own task.
    outbox: outbox::Outbox,
    /// Cancelled to make the connection's task close the socket with `close_code`.
    kill: CancellationToken,
    close_code: AtomicU16,
    metrics: Arc<Metrics>,
    /// Whether this connection can receive binary frames (a Phoenix V2 WebSocket).
    binary_capable: AtomicBool,
    /// Relay packets this connection sent / received (shown to administrators).
    packets_sent: AtomicU64,
    packets_received: AtomicU64,
    /// The counts already added to the `devices` table ([`Conn::unrecorded_packets`]).
    recorded_sent: AtomicU64,
    recorded_received: AtomicU64,
    /// When the last inbound frame arrived ([`now_ms`]), for the shared idle sweep.
    last_in: AtomicU64,
    /// WATCH_NONE, WATCH_IDLE or WATCH_IDLE_AND_PING.
    watch: AtomicU8,
    /// The connection's own idle limit in ms (a long-poll session: two windows without a
    /// GET); 0 = the sweep's.
    idle_limit_ms: AtomicU64,
    /// A Phoenix long-poll session rather than a WebSocket (shown in `/api/devices`).
    long_poll: AtomicBool,
    /// A ping was queued since the last inbound frame.
    pinged: AtomicBool,
    /// The idle sweep closed this connection.
    idled_out: AtomicBool,
}

impl Conn {
    /// The id of the token this connection was admitted with (token mode).
    pub fn token_id(&self) -> Option<&str> {
        self.token_id.as_deref()
    }

    /// Marks the connection as able to receive binary frames.
    pub fn set_binary_capable(&self) {
        self.binary_capable.store(true, Ordering::Relaxed);
    }

    pub fn binary_capable(&self) -> bool {
        self.binary_capable.load(Ordering::Relaxed)
    }

    pub fn count_packet_sent(&self) {
        self.packets_sent.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_packet_received(&self) {
        self.packets_received.fetch_add(1, Ordering::Relaxed);
    }

    /// (sent, received) relay packets so far.
    pub fn packet_counts(&self) -> (u64, u64) {
        (
            self.packets_sent.load(Ordering::Relaxed),
            self.packets_received.load(Ordering::Relaxed),
        )
    }

    /// The relay packets sent and received since the last call: what a departure adds to
    /// the `devices` table, so a socket that leaves the relay and joins it again is not
    /// counted twice.
    pub fn unrecorded_packets(&self) -> (u64, u64) {
        let (sent, received) = self.packet_counts();
        let sent0 = self.recorded_sent.swap(sent, Ordering::Relaxed);
        let received0 = self.recorded_received.swap(received, Ordering::Relaxed);
        (
            sent.saturating_sub(sent0),
            received.saturating_sub(received0),
        )
    }

    pub(super) fn outbox(&self) -> &outbox::Outbox {
        &self.outbox
    }

    /// Puts the connection under the registry's idle sweep (see [`Registry::sweep_idle`]);
    /// with `ping`, a silent connection is pinged at half the idle time.
    pub fn watch_idle(&self, ping: bool) {
        self.touch();
        let w = if ping {
            WATCH_IDLE_AND_PING
        } else {
            WATCH_IDLE
        };
        self.watch.store(w, Ordering::Relaxed);
    }

    /// Puts the connection under the registry's idle sweep with its own limit: closed
    /// (1001) after `limit` without [`Conn::touch`], never pinged. Long-poll sessions use
    /// it (touched by every GET).
    fn watch_idle_within(&self, limit: std::time::Duration) {
        self.touch();
        let ms = (limit.as_millis() as u64).max(1);
        self.idle_limit_ms.store(ms, Ordering::Relaxed);
        self.watch.store(WATCH_IDLE, Ordering::Relaxed);
    }

    /// Marks the connection as a Phoenix long-poll session.
    pub fn set_long_poll(&self) {
        self.long_poll.store(true, Ordering::Relaxed);
    }

    /// Records an inbound frame: the connection is not idle.
    pub fn touch(&self) {
        self.last_in.store(now_ms(), Ordering::Relaxed);
        if self.pinged.load(Ordering::Relaxed) {
            self.pinged.store(false, Ordering::Relaxed);
        }
    }

    /// Whether the idle sweep closed this connection.
    pub fn idled_out(&self) -> bool {
        self.idled_out.load(Ordering::Relaxed)
    }

    /// Queues `out` without waiting. A full queue kills the connection (slow consumer).
    pub fn send(&self, out: Outbound) -> Result<(), SendError> {
        match self.outbox.push(out) {
            Ok(()) => Ok(()),
            Err(outbox::PushError::Full) => {
                if !self.kill.is_cancelled() {
                    metrics::inc(&self.metrics.slow_consumers_closed);
                    tracing::warn!(conn = self.id, device = %self.name, "outbound queue full; closing slow connection");
                }
                self.kill(close_code::POLICY);
                Err(SendError::Full)
            }
            Err(outbox::PushError::Closed) => Err(SendError::Closed),
        }
    }

    /// Asks the connection's task to close the socket with `code` (first caller wins).
    pub fn kill(&self, code: close_code::CloseCode) {
        let code = u16::from(code);
        let _ = self
            .close_code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.kill.cancel();
    }

    /// Whether the connection has been asked to close.
    pub fn is_killed(&self) -> bool {
        self.kill.is_cancelled()
    }

    /// Resolves when the connection has been asked to close.
    pub fn killed(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.kill.cancelled()
    }

    /// The close code requested by [`Conn::kill`]; 1012 (restart) when the hub is shutting
    /// down.
    pub fn close_code(&self) -> close_code::CloseCode {
        match self.close_code.load(Ordering::Acquire) {
            0 => close_code::RESTART,
            c => c.into(),
        }
    }
}

/// What the admin API shows about a connected device (or Bester connection).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DeviceView {
    pub name: String,
    /// [`Door::as_str`], or `bester`.
    pub door: std::borrow::Cow<'static, str>,
    /// The Bester user a Bester connection is logged in as (absent for other doors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The name the device registered on the relay, if any.
    pub relay_name: Option<String>,
    /// The Compendium address the connection holds, if any.
    pub compendium_address: Option<String>,
    pub remote: String,
    pub connected_at: String,
    pub topics: Vec<String>,
    pub packets_sent: u64,
    pub packets_received: u64,
    /// The id of the device token the connection was admitted with (token mode), the id
    /// `DELETE /api/tokens/{id}` takes.
    pub token_id: Option<String>,
    /// `longpoll` for a Phoenix long-poll session (absent for sockets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<std::borrow::Cow<'static, str>>,
    /// The cluster node that holds the connection (absent on a single hub).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

#[derive(Default)]
struct Inner {
    /// Every live connection, by id.
    conns: HashMap<u64, Arc<Conn>>,
    /// Phoenix devices by socket name: at most one live connection per name (a newer one
    /// replaces it).
    devices: HashMap<DeviceName, Arc<Conn>>,
    /// Live connections per remote address: every `Conn` (those on a Unix socket together,
    /// as one address) and whatever [`Registry::admit_ip`] counted (one cap,
    /// `HOMEHUB_MAX_CONNS_PER_IP`).
    per_address: HashMap<Address, usize>,
    /// Topic → subscribed connections by id.
    topics: HashMap<Topic, HashMap<u64, Arc<Conn>>>,
}

/// Where connections come from, as the per-address cap counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Address {
    Ip(IpAddr),
    /// Every connection on a local Unix socket (Bester's), as one address.
    UnixSocket,
}

impl Conn {
    fn address(&self) -> Address {
        if self.local {
            Address::UnixSocket
        } else {
            Address::Ip(self.remote.ip())
        }
    }
}

/// What [`Registry::open`] registers.
struct Spec {
    name: Option<DeviceName>,
    door: Door,
    /// `None`: a Unix-socket connection.
    remote: Option<SocketAddr>,
    token_id: Option<crate::auth::TokenId>,
    queue: usize,
    /// 0 = unlimited.
    max_per_ip: usize,
}

/// The shared registry.
pub struct Registry {
    next_id: AtomicU64,
    inner: Mutex<Inner>,
    shutdown: CancellationToken,
    queue_capacity: usize,
    metrics: Arc<Metrics>,
    /// Devices addressed by name on the relay (Phoenix `relay` topic and raw `/relay`).
    pub relay: directory::Directory,
    /// Compendium ephemeral addresses.
    pub compendium: addresses::Addresses,
    /// Presence on `presence:devices`.
    pub presence: presence::Presence,
    /// Bester users (and peers) by connection.
    pub users: users::Users,
    /// Where the names other nodes can address are reported (a cluster fabric listens).
    pub interest: Interest,
    /// The shortest [`Conn::watch_idle_within`] limit given so far (ms; 0 = none).
    shortest_own_limit_ms: AtomicU64,
    /// Wakes the idle sweep early: a shorter own limit than any before was given.
    sweep_wake: tokio::sync::Notify,
}

impl Registry {
    pub fn new(
        shutdown: CancellationToken,
        queue_capacity: usize,
        metrics: Arc<Metrics>,
    ) -> Registry {
        let interest = Interest::default();
        Registry {
            next_id: AtomicU64::new(1),
            inner: Mutex::new(Inner::default()),
            shutdown,
            queue_capacity: queue_capacity.max(1),
            metrics,
            relay: directory::Directory::new(interest.clone()),
            compendium: addresses::Addresses::new(interest.clone()),
            presence: presence::Presence::default(),
            users: users::Users::new(interest.clone()),
            interest,
            shortest_own_limit_ms: AtomicU64::new(0),
            sweep_wake: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the maps half-updated in a way that
        // matters more than losing the hub, so recover the guard.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection, admitted with the token `token_id` (token mode). With a
    /// `name` (Phoenix sockets), an older connection of the same name is closed (going
    /// away), as devices reconnect after losing the network.
    pub fn connect(
        &self,
        name: Option<DeviceName>,
        door: Door,
        remote: SocketAddr,
        token_id: Option<crate::auth::TokenId>,
    ) -> (Arc<Conn>, outbox::Receiver) {
        let spec = Spec {
            name,
            door,
            remote: Some(remote),
            token_id,
            queue: self.queue_capacity,
            max_per_ip: 0,
        };
        self.open(spec)
            .unwrap_or_else(|| unreachable!("no cap, never refused"))
    }

    /// Registers a connection of a door that caps connections per address itself (Bester):
    /// refused (`None`) when `remote`'s address already has `max_per_ip` live connections
    /// (0 = unlimited); check and count are one step, so a burst of accepts cannot
    /// overshoot. A `remote` of `None` is a Unix-socket connection: all of those count as
    /// one address. Its outbound queue holds `queue` items.
    pub fn admit(
        &self,
        door: Door,
        remote: Option<SocketAddr>,
        max_per_ip: usize,
        queue: usize,
    ) -> Option<(Arc<Conn>, outbox::Receiver)> {
        self.open(Spec {
            name: None,
            door,
            remote,
            token_id: None,
            queue,
            max_per_ip,
        })
    }

    fn open(&self, spec: Spec) -> Option<(Arc<Conn>, outbox::Receiver)> {
        let Spec {
            name,
            door,
            remote,
            token_id,
            queue,
            max_per_ip,
        } = spec;
        let local = remote.is_none();
        let remote =
            remote.unwrap_or_else(|| SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0)));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let named = name.is_some();
        let name = name.unwrap_or_else(|| {
            DeviceName::parse(&format!("{}-{id}", door.as_str())).unwrap_or_else(|| unreachable!())
        });
        let conn = Arc::new(Conn {
            id,
            name: name.clone(),
            door,
            remote,
            local,
            connected_at: time::OffsetDateTime::now_utc(),
            token_id,
            outbox: outbox::Outbox::new(queue.max(1)),
            kill: self.shutdown.child_token(),
            close_code: AtomicU16::new(0),
            metrics: self.metrics.clone(),
            binary_capable: AtomicBool::new(false),
            packets_sent: AtomicU64::new(0),
            recorded_sent: AtomicU64::new(0),
            recorded_received: AtomicU64::new(0),
            packets_received: AtomicU64::new(0),
            last_in: AtomicU64::new(now_ms()),
            watch: AtomicU8::new(WATCH_NONE),
            idle_limit_ms: AtomicU64::new(0),
            long_poll: AtomicBool::new(false),
            pinged: AtomicBool::new(false),
            idled_out: AtomicBool::new(false),
        });
        let old = {
            let mut inner = self.lock();
            let n = inner.per_address.entry(conn.address()).or_insert(0);
            // A refused address has `max` (≥ 1) connections, so its entry stays.
            if max_per_ip > 0 && *n >= max_per_ip {
                return None;
            }
            *n += 1;
            inner.conns.insert(id, conn.clone());
            if named {
                inner.devices.insert(name.clone(), conn.clone())
            } else {
                None
            }
        };
        if named {
            self.interest.changed(Name::Device(name));
        }
        if let Some(old) = old {
            tracing::info!(device = %old.name, old_conn = old.id, new_conn = conn.id, "device reconnected; closing its older connection");
            old.kill(close_code::GOING_AWAY);
        }
        metrics::inc(&self.metrics.connections_total);
        let rx = outbox::Receiver::new(conn.clone());
        Some((conn, rx))
    }

    /// Forgets a connection (after its task ended): removes it from the device table if it
    /// is still the current one for its name, and from the given topics.
    pub fn disconnect<'a>(&self, conn: &Conn, topics: impl IntoIterator<Item = &'a Topic>) {
        if conn.door == Door::Bester {
            self.users.forget(conn.id);
        }
        let mut gone = Vec::new();
        {
            let mut inner = self.lock();
            if inner.conns.remove(&conn.id).is_some() {
                inner.release(conn.address());
            }
            if inner
                .devices
                .get(&conn.name)
                .is_some_and(|c| c.id == conn.id)
            {
                inner.devices.remove(&conn.name);
                gone.push(Name::Device(conn.name.clone()));
            }
            for t in topics {
                if remove_sub(&mut inner, t, conn.id) {
                    gone.push(Name::Topic(t.clone()));
                }
            }
        }
        for name in gone {
            self.interest.changed(name);
        }
    }

    /// One pass of the shared idle clock (instead of a timer per socket): closes (1001)
    /// every watched connection silent for `idle`, and queues a ping for watched ones that
    /// asked for pings and have been silent for half of it. Returns how long until the
    /// earliest deadline of a connection it left alone (`Duration::MAX` if none): activity
    /// only moves deadlines later, so nothing can time out before then, except connections
    /// watched from now on, whose first deadline is at least half the idle time away.
    pub fn sweep_idle(&self, idle: std::time::Duration) -> std::time::Duration {
        self.sweep_idle_at(idle, now_ms())
    }

    /// [`Registry::sweep_idle`] as if the hub's clock read `now`.
    fn sweep_idle_at(&self, idle: std::time::Duration, now: u64) -> std::time::Duration {
        let sweep_ms = idle.as_millis() as u64;
        let mut stale = Vec::new();
        let mut ping = Vec::new();
        let mut next_ms = u64::MAX;
        {
            let inner = self.lock();
            for c in inner.conns.values() {
                let watch = c.watch.load(Ordering::Relaxed);
                if watch == WATCH_NONE {
                    continue;
                }
                let idle_ms = match c.idle_limit_ms.load(Ordering::Relaxed) {
                    0 => sweep_ms,
                    own => own,
                };
                let silent = now.saturating_sub(c.last_in.load(Ordering::Relaxed));
                if silent >= idle_ms {
                    if !c.is_killed() {
                        stale.push(c.clone());
                    }
                    continue;
                }
                next_ms = next_ms.min(idle_ms - silent);
                if watch == WATCH_IDLE_AND_PING {
                    if silent >= idle_ms / 2 {
                        if !c.pinged.swap(true, Ordering::Relaxed) {
                            ping.push(c.clone());
                        }
                    } else if !c.pinged.load(Ordering::Relaxed) {
                        next_ms = next_ms.min(idle_ms / 2 - silent);
                    }
                }
            }
        }
        // A connection watched from now on with a limit of its own is due no sooner than
        // half the shortest such limit.
        let own = self.shortest_own_limit_ms.load(Ordering::Relaxed);
        if own > 0 {
            next_ms = next_ms.min(own / 2).max(1);
        }
        for c in stale {
            c.idled_out.store(true, Ordering::Relaxed);
            c.kill(close_code::GOING_AWAY);
        }
        for c in ping {
            let _ = c.send(Outbound::Ping);
        }
        if next_ms == u64::MAX {
            std::time::Duration::MAX
        } else {
            std::time::Duration::from_millis(next_ms)
        }
    }

    /// [`Conn::watch_idle_within`], and tells the sweep about the limit.
    pub fn watch_idle_within(&self, conn: &Conn, limit: std::time::Duration) {
        let ms = (limit.as_millis() as u64).max(1);
        conn.watch_idle_within(limit);
        let lowered = self
            .shortest_own_limit_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
                (cur == 0 || ms < cur).then_some(ms)
            })
            .is_ok();
        if lowered {
            // The sweep may be sleeping past this connection's first deadline.
            self.sweep_wake.notify_one();
        }
    }

    /// Resolves when the idle sweep should run before its planned time
    /// ([`Registry::watch_idle_within`] gave a shorter limit than any before).
    pub async fn sweep_woken(&self) {
        self.sweep_wake.notified().await;
    }

    pub fn subscribe(&self, topic: &Topic, conn: &Arc<Conn>) {
        let first = {
            let mut inner = self.lock();
            let subs = inner.topics.entry(topic.clone()).or_default();
            subs.insert(conn.id, conn.clone());
            subs.len() == 1
        };
        if first {
            self.interest.changed(Name::Topic(topic.clone()));
        }
    }

    pub fn unsubscribe(&self, topic: &Topic, conn_id: u64) {
        let last = remove_sub(&mut self.lock(), topic, conn_id);
        if last {
            self.interest.changed(Name::Topic(topic.clone()));
        }
    }

    /// Broadcasts `event` on `topic` to every subscriber except `except`; the frame is
    /// encoded once per serializer. Returns how many connections it was queued for.
    pub fn broadcast(
        &self,
        topic: &Topic,
        event: &str,
        payload: OutPayload,
        except: Option<u64>,
    ) -> usize {
        metrics::inc(&self.metrics.broadcasts);
        let shared = SharedFrame::new(Frame::broadcast(topic.to_string(), event, payload), except);
        let receivers: Vec<Arc<Conn>> = match self.lock().topics.get(topic) {
            Some(subs) => subs
                .values()
                .filter(|c| Some(c.id) != except)
                .cloned()
                .collect(),
            None => return 0,
        };
        receivers
            .iter()
            .filter(|c| c.send(Outbound::Broadcast(shared.clone())).is_ok())
            .count()
    }

    /// Pushes `event` to every channel instance joined to `topic`, each frame carrying that
    /// instance's join_ref (`[J, null, T, E, P]`, Phoenix's intercepted broadcast). Used for
    /// the hub's pushes to locks: some client libraries drop frames without their join_ref.
    /// Returns how many connections it was queued for.
    pub fn push_topic(&self, topic: &Topic, event: &str, payload: OutPayload) -> usize {
        let frame = Frame::broadcast(topic.to_string(), event, payload);
        let receivers: Vec<Arc<Conn>> = match self.lock().topics.get(topic) {
            Some(subs) => subs.values().cloned().collect(),
            None => return 0,
        };
        receivers
            .iter()
            .filter(|c| c.send(Outbound::Push(Box::new(frame.clone()))).is_ok())
            .count()
    }

    /// Ends the channel instance on `topic` of every local connection whose device is not
    /// `keep`; how many were told.
    pub fn end_channel(&self, topic: &Topic, keep: Option<&str>) -> usize {
        let topic = Arc::new(topic.clone());
        self.subscribers(&topic)
            .into_iter()
            .filter(|conn| Some(conn.name.as_str()) != keep)
            .filter(|conn| conn.send(Outbound::EndChannel(topic.clone())).is_ok())
            .count()
    }

    /// The live connection of a device.
    pub fn device(&self, name: &DeviceName) -> Option<Arc<Conn>> {
        self.lock().devices.get(name).cloned()
    }

    /// Closes a device's connection (the socket-id `disconnect` broadcast, §6): code 1001.
    pub fn kick(&self, name: &DeviceName) -> bool {
        match self.device(name) {
            Some(conn) => {
                conn.kill(close_code::GOING_AWAY);
                true
            }
            None => false,
        }
    }

    /// Closes (1001) every live connection admitted with the token `token_id`, whatever
    /// its door or device name: the token was revoked. Connections of the same device
    /// admitted with another token stay. Returns how many were closed.
    pub fn kill_token(&self, token_id: &str) -> usize {
        let admitted: Vec<Arc<Conn>> = self
            .lock()
            .conns
            .values()
            .filter(|c| c.token_id() == Some(token_id))
            .cloned()
            .collect();
        for conn in &admitted {
            tracing::info!(conn = conn.id, device = %conn.name, door = ?conn.door, token = token_id, "token revoked; closing its connection");
            conn.kill(close_code::GOING_AWAY);
        }
        admitted.len()
    }

    /// Every live connection with the topics it has joined, ordered by name.
    pub fn devices(&self) -> Vec<DeviceView> {
        let conns: Vec<Arc<Conn>>;
        let mut topics_of: HashMap<u64, Vec<String>> = HashMap::new();
        {
            let inner = self.lock();
            for (topic, subs) in &inner.topics {
                for id in subs.keys() {
                    topics_of.entry(*id).or_default().push(topic.to_string());
                }
            }
            conns = inner.conns.values().cloned().collect();
        }
        let mut out: Vec<DeviceView> = conns
            .iter()
            .map(|c| {
                let mut topics = topics_of.remove(&c.id).unwrap_or_default();
                topics.sort();
                let relay_name = self.relay.name_of(c.id);
                let label = match c.door {
                    Door::Bester => self.users.label_of(c.id),
                    _ => None,
                };
                DeviceView {
                    name: match (c.door, &relay_name, &label) {
                        (Door::Relay, Some(n), _) => n.clone(),
                        (_, _, Some(users::Label::User(u))) => u.clone(),
                        (_, _, Some(users::Label::Peer(p))) => format!("server:{p}"),
                        _ => c.name.to_string(),
                    },
                    door: c.door.as_str().into(),
                    user: match label {
                        Some(users::Label::User(u)) => Some(u),
                        _ => None,
                    },
                    relay_name,
                    compendium_address: match c.door {
                        Door::Compendium => self.compendium.address_of(c.id),
                        _ => None,
                    },
                    remote: if c.local {
                        "unix".to_owned()
                    } else {
                        c.remote.to_string()
                    },
                    connected_at: crate::domain::format_ts(c.connected_at),
                    topics,
                    packets_sent: c.packet_counts().0,
                    packets_received: c.packet_counts().1,
                    token_id: c.token_id().map(str::to_owned),
                    transport: c
                        .long_poll
                        .load(Ordering::Relaxed)
                        .then_some("longpoll".into()),
                    node: None,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Tracks, updates (`Some`) or untracks (`None`) a connection's Presence meta under
    /// `key`, broadcasting the `presence_diff` to `presence:devices` subscribers here.
    pub fn presence_set(
        &self,
        key: &str,
        conn_id: u64,
        fields: Option<presence::DeviceMeta>,
    ) -> presence::Change {
        let want_diff = self.has_subscribers(&Topic::Presence);
        let (diff, change) = self.presence.set(key, conn_id, fields, want_diff);
        self.presence_tell(diff);
        change
    }

    /// Applies another node's change to one of its Presence metas and tells the local
    /// `presence:devices` subscribers.
    pub fn presence_set_remote(
        &self,
        owner: presence::Owner,
        key: &str,
        conn: u64,
        fields: Option<(presence::DeviceMeta, u64)>,
    ) {
        let want_diff = self.has_subscribers(&Topic::Presence);
        let diff = self
            .presence
            .set_remote(owner, key, conn, fields, want_diff);
        self.presence_tell(diff);
    }

    /// Replaces every Presence meta of another node by `entries` (its full state; empty
    /// when the node is gone) and tells the local `presence:devices` subscribers.
    pub fn presence_replace(&self, owner: presence::Owner, entries: Vec<presence::Tracked>) {
        let want_diff = self.has_subscribers(&Topic::Presence);
        for diff in self.presence.replace_owner(owner, entries, want_diff) {
            self.presence_tell(Some(diff));
        }
    }

    fn presence_tell(&self, diff: Option<Box<serde_json::value::RawValue>>) {
        if let Some(diff) = diff {
            self.broadcast(
                &Topic::Presence,
                "presence_diff",
                OutPayload::Json(diff),
                None,
            );
        }
    }

    /// The connections subscribed to `topic`.
    pub fn subscribers(&self, topic: &Topic) -> Vec<Arc<Conn>> {
        self.lock()
            .topics
            .get(topic)
            .map(|subs| subs.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether any connection has `topic` joined.
    pub fn has_subscribers(&self, topic: &Topic) -> bool {
        self.lock().topics.get(topic).is_some_and(|s| !s.is_empty())
    }

    /// Counts one more live connection from `ip` that is not a registry [`Conn`] (a Bester
    /// connection), unless `ip` already has `max` (0 = unlimited); the caller gives it back
    /// with [`Registry::release_ip`]. Check and count are one step, so a burst of accepts
    /// cannot overshoot the cap.
    pub fn admit_ip(&self, ip: IpAddr, max: usize) -> bool {
        let mut inner = self.lock();
        let n = inner.per_address.entry(Address::Ip(ip)).or_insert(0);
        // A refused address has `max` (≥ 1) connections, so its entry stays meaningful.
        if max > 0 && *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    /// Gives back a connection counted by [`Registry::admit_ip`].
    pub fn release_ip(&self, ip: IpAddr) {
        self.lock().release(Address::Ip(ip));
    }

    /// Live connections from `ip` (WebSocket and Bester).
    pub fn connections_from(&self, ip: IpAddr) -> usize {
        self.lock()
            .per_address
            .get(&Address::Ip(ip))
            .copied()
            .unwrap_or(0)
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.lock().conns.len()
    }

    /// Live connections of each door, in [`Door::ALL`] order.
    pub fn connections_by_door(&self) -> Vec<(Door, usize)> {
        let mut counts = [0usize; Door::ALL.len()];
        for c in self.lock().conns.values() {
            if let Some(i) = Door::ALL.iter().position(|d| *d == c.door) {
                counts[i] += 1;
            }
        }
        Door::ALL.iter().copied().zip(counts).collect()
    }

    /// Queues `text` for every connection of Bester user `user`, never waiting: how many
    /// took it. `UnknownTarget` when the user has no connection here, `TargetBusy` when
    /// none could take it (a full queue closes that connection as too slow).
    pub fn deliver_to_user(&self, user: &str, text: &Utf8Bytes) -> Result<usize, DeliveryError> {
        let conns = self.user_conns(user);
        if conns.is_empty() {
            return Err(DeliveryError::UnknownTarget);
        }
        let delivered = conns
            .iter()
            .filter(|c| match c.send(Outbound::Text(Box::new(text.clone()))) {
                Ok(()) => true,
                Err(SendError::Full) => {
                    tracing::warn!(conn = c.id, %user, "bester outbound queue full; closing slow connection");
                    false
                }
                Err(SendError::Closed) => false,
            })
            .count();
        if delivered > 0 {
            Ok(delivered)
        } else {
            Err(DeliveryError::TargetBusy)
        }
    }

    /// Closes (1001) every connection of Bester user `user` (the user was removed); how
    /// many.
    pub fn kick_user(&self, user: &str) -> usize {
        let conns = self.user_conns(user);
        for c in &conns {
            c.kill(close_code::GOING_AWAY);
        }
        conns.len()
    }

    /// The live connections labelled as Bester user `user` ([`users::Users`]).
    pub fn user_conns(&self, user: &str) -> Vec<Arc<Conn>> {
        let ids = self.users.ids_of(user);
        let inner = self.lock();
        ids.iter()
            .filter_map(|id| inner.conns.get(id).cloned())
            .collect()
    }
}

impl Inner {
    fn release(&mut self, address: Address) {
        if let Some(n) = self.per_address.get_mut(&address) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_address.remove(&address);
            }
        }
    }
}

/// Whether that was the topic's last subscriber.
fn remove_sub(inner: &mut Inner, topic: &Topic, conn_id: u64) -> bool {
    if let Some(subs) = inner.topics.get_mut(topic) {
        subs.remove(&conn_id);
        if subs.is_empty() {
            inner.topics.remove(topic);
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn queued_items_stay_small() {
        assert_eq!(std::mem::size_of::<super::Outbound>(), 16);
    }

    fn registry() -> Registry {
        Registry::new(CancellationToken::new(), 16, Arc::new(Metrics::default()))
    }

    fn conn(r: &Registry) -> Arc<Conn> {
        let (c, _rx) = r.connect(None, Door::Relay, "127.0.0.1:1".parse().unwrap(), None);
        c
    }

    #[test]
    fn kill_token_closes_only_the_connections_of_that_token() {
        let r = registry();
        let at: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let (raw, _r1) = r.connect(None, Door::Relay, at, Some("t1".into()));
        let (phx, _r2) = r.connect(
            DeviceName::parse("lamp"),
            Door::Phoenix,
            at,
            Some("t1".into()),
        );
        let (other, _r3) = r.connect(None, Door::Compendium, at, Some("t2".into()));
        let (open, _r4) = r.connect(None, Door::Compendium, at, None);
        assert_eq!(r.kill_token("t1"), 2);
        assert!(raw.is_killed() && phx.is_killed());
        assert_eq!(
            (u16::from(raw.close_code()), u16::from(phx.close_code())),
            (1001, 1001)
        );
        assert!(!other.is_killed() && !open.is_killed());
        assert_eq!(r.kill_token("t3"), 0);
        assert_eq!(other.token_id(), Some("t2"));
    }

    #[test]
    fn other_doors_share_the_per_address_count() {
        let r = registry();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let ws = conn(&r);
        assert!(r.admit_ip(ip, 2), "one WebSocket and one more");
        assert!(!r.admit_ip(ip, 2), "the cap counts both");
        assert!(r.admit_ip("127.0.0.2".parse().unwrap(), 2));
        assert_eq!(r.connections_from(ip), 2);
        r.disconnect(&ws, []);
        assert!(r.admit_ip(ip, 2));
        r.release_ip(ip);
        r.release_ip(ip);
        assert_eq!(r.connections_from(ip), 0);
        assert!(r.admit_ip(ip, 0), "0 is unlimited");
    }

    #[test]
    fn unix_socket_connections_are_capped_as_one_address() {
        let r = registry();
        let (a, _ra) = r.admit(Door::Bester, None, 2, 8).expect("first");
        let (_b, _rb) = r.admit(Door::Bester, None, 2, 8).expect("second");
        assert!(
            r.admit(Door::Bester, None, 2, 8).is_none(),
            "third over the cap"
        );
        let tcp: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert!(
            r.admit(Door::Bester, Some(tcp), 2, 8).is_some(),
            "TCP addresses are counted apart"
        );
        r.disconnect(&a, []);
        assert!(
            r.admit(Door::Bester, None, 2, 8).is_some(),
            "a freed place is reused"
        );
    }

    #[test]
    fn a_connection_with_its_own_limit_is_swept_by_it() {
        let idle = Duration::from_secs(60);
        let r = registry();
        let socket = conn(&r);
        socket.watch_idle(false);
        let poll = conn(&r);
        r.watch_idle_within(&poll, Duration::from_secs(20));
        let t0 = now_ms();
        socket.last_in.store(t0, Ordering::Relaxed);
        poll.last_in.store(t0, Ordering::Relaxed);
        // The own limit is the earliest deadline, and caps the sweep's pause at half of it.
        assert_eq!(r.sweep_idle_at(idle, t0 + 5_000), Duration::from_secs(10));
        assert_eq!(r.sweep_idle_at(idle, t0 + 19_000), Duration::from_secs(1));
        assert!(!poll.is_killed());
        r.sweep_idle_at(idle, t0 + 21_000);
        assert!(poll.is_killed() && poll.idled_out());
        assert!(!socket.is_killed(), "the others keep the sweep's limit");
    }

    #[test]
    fn the_sweep_says_when_the_earliest_deadline_is() {
        let idle = Duration::from_secs(60);
        let r = registry();
        assert_eq!(r.sweep_idle(idle), Duration::MAX, "nothing watched");
        let quiet = conn(&r);
        quiet.watch_idle(false);
        let pinged = conn(&r);
        pinged.watch_idle(true);
        // Both last heard from at t0.
        let t0 = now_ms();
        quiet.last_in.store(t0, Ordering::Relaxed);
        pinged.last_in.store(t0, Ordering::Relaxed);
        let at = |secs: u64| t0 + secs * 1000;
        // At 25 s: the ping (due at 30 s of silence) comes first.
        assert_eq!(r.sweep_idle_at(idle, at(25)), Duration::from_secs(5));
        assert!(!pinged.pinged.load(Ordering::Relaxed));
        // At 35 s it is pinged, once; then only the idle deadlines (60 s) count.
        assert_eq!(r.sweep_idle_at(idle, at(35)), Duration::from_secs(25));
        assert!(pinged.pinged.load(Ordering::Relaxed));
        assert_eq!(r.sweep_idle_at(idle, at(36)), Duration::from_secs(24));
        // A frame moves a deadline later.
        pinged.last_in.store(at(40), Ordering::Relaxed);
        pinged.pinged.store(false, Ordering::Relaxed);
        assert_eq!(r.sweep_idle_at(idle, at(50)), Duration::from_secs(10));
        // At 61 s the quiet one is closed and no longer anyone's deadline; the other is
        // due its ping at 70 s.
        assert_eq!(r.sweep_idle_at(idle, at(61)), Duration::from_secs(9));
        assert!(quiet.is_killed() && quiet.idled_out());
        assert!(!pinged.is_killed());
        assert_eq!(r.sweep_idle_at(idle, at(101)), Duration::MAX);
        assert!(pinged.is_killed());
    }
}
