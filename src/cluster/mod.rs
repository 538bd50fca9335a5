//! A cluster of hub nodes on NATS core (docs/cluster.md): [`NatsFabric`] is the
//! [`Fabric`] of a node, so that several hub processes behave as one hub to every client,
//! with no door changed. The database (PostgreSQL) is the shared state; NATS carries only
//! what is live:
//!
//! * **Requests to one holder** (a relay packet, a Compendium message, a disconnect, a
//!   relay-name claim) go to a subject per name (`<prefix>.relay.<name>`, `.device.`,
//!   `.address.`) that only the node holding the name subscribes to: NATS request/reply,
//!   so exactly the owner answers, and "no responders" means nobody holds it. There is no
//!   name → node table to go stale. The local registry is always asked first.
//! * **Topics** (`<prefix>.topic.<topic>`): a node subscribes when its first local socket
//!   joins a topic and unsubscribes after the last leaves ([`crate::core::interest`]), so
//!   a broadcast crosses NATS once per interested node, and never to itself (`no_echo`).
//! * **Membership and Presence**: every node heartbeats; each owns its Presence metas and
//!   publishes their changes in sequence; a node that misses one (or sees a new node)
//!   fetches that node's full state; a node silent for `HOMEHUB_CLUSTER_NODE_TIMEOUT_MS`
//!   is dropped with its metas, and the local `presence:devices` watchers get the diffs.
//!
//! Fabric trouble never produces a false `ok`: while NATS is unreachable a cross-node
//! request fails with [`DeliveryError::Unavailable`], publications for other nodes are
//! dropped and counted, local clients are served as before, and the client library
//! reconnects and restores every subscription by itself.

pub mod subjects;
mod wire;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::{Client, ConnectOptions, Message};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tungstenite::Utf8Bytes;

use crate::config::Config;
use crate::core::directory::{self, BinaryPacket, Claim, Packet, RegisterError, Registered};
use crate::core::fabric::Unavailable;
use crate::core::interest::Name;
use crate::core::message::OutPayload;
use crate::core::presence::{Change, DeviceMeta, Owner};
use crate::core::registry::DeviceView;
use crate::core::{
    ClusterView, Conn, DeliveryError, Fabric, NodeView, Outbound, Registry, Topic, close_code,
};
use crate::domain::{DeviceInfo, DeviceName};
use subjects::Subjects;
use wire::{
    DeviceReq, Devices, Heartbeat, PresenceChange, PresenceState, RelayOp, RelayReq, Reply,
    TokenRevoked, TopicMsg, TopicOp, UserReq, body,
};

/// How a node reaches NATS, from `HOMEHUB_CLUSTER*`.
#[derive(Debug, Clone)]
pub struct Options {
    pub url: String,
    pub node: String,
    pub subject_prefix: String,
    pub credentials: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub node_timeout: Duration,
    pub request_timeout: Duration,
}

impl Options {
    /// The cluster settings, if `HOMEHUB_CLUSTER` makes this hub a node.
    pub fn from_config(config: &Config) -> Option<Options> {
        let c = &config.cluster;
        let url = c.url.clone().filter(|u| !u.trim().is_empty())?;
        Some(Options {
            url,
            node: config.node_name(),
            subject_prefix: c.subject_prefix.clone(),
            credentials: c.credentials.clone(),
            tls_ca: c.tls_ca.clone(),
            tls_cert: c.tls_cert.clone(),
            tls_key: c.tls_key.clone(),
            node_timeout: c.node_timeout,
            request_timeout: c.request_timeout,
        })
    }
}

/// NATS events the fabric reacts to (a reconnection).
pub type Events = mpsc::UnboundedReceiver<async_nats::Event>;

/// Connects to NATS. The hub starts even if NATS is not up yet (it serves its local
/// clients, reports not ready and keeps trying), but a bad URL or credentials file is an
/// error at once.
pub async fn connect(options: &Options) -> anyhow::Result<(Client, Events)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut connect = match &options.credentials {
        Some(path) => ConnectOptions::with_credentials_file(path)
            .await
            .with_context(|| format!("reading the NATS credentials file {}", path.display()))?,
        None => ConnectOptions::new(),
    };
    if let Some(ca) = &options.tls_ca {
        connect = connect.add_root_certificates(ca.clone()).require_tls(true);
    }
    match (&options.tls_cert, &options.tls_key) {
        (Some(cert), Some(key)) => {
            connect = connect.add_client_certificate(cert.clone(), key.clone());
        }
        (None, None) => {}
        _ => anyhow::bail!(
            "HOMEHUB_CLUSTER_TLS_CERT and HOMEHUB_CLUSTER_TLS_KEY must be set together"
        ),
    }
    let client = connect
        .name(format!("homehub {}", options.node))
        .no_echo()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 250).clamp(100, 2_000))
        })
        .request_timeout(Some(options.request_timeout))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(event);
            }
        })
        .connect(servers(&options.url))
        .await
        .with_context(|| format!("HOMEHUB_CLUSTER={}", options.url))?;
    Ok((client, rx))
}

/// The NATS servers of `HOMEHUB_CLUSTER`: one URL, or several separated by commas.
fn servers(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// What crosses NATS, for `/metrics`.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Broadcast,
    Push,
    EndChannel,
    Relay,
    Device,
    Address,
    Heartbeat,
    Presence,
    PresenceState,
    Token,
    Devices,
    User,
}

impl Kind {
    const ALL: [Kind; 12] = [
        Kind::Broadcast,
        Kind::Push,
        Kind::EndChannel,
        Kind::Relay,
        Kind::Device,
        Kind::Address,
        Kind::Heartbeat,
        Kind::Presence,
        Kind::PresenceState,
        Kind::Token,
        Kind::Devices,
        Kind::User,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Kind::Broadcast => "broadcast",
            Kind::Push => "push",
            Kind::EndChannel => "end_channel",
            Kind::Relay => "relay",
            Kind::Device => "device",
            Kind::Address => "address",
            Kind::Heartbeat => "heartbeat",
            Kind::Presence => "presence",
            Kind::PresenceState => "presence_state",
            Kind::Token => "token",
            Kind::Devices => "devices",
            Kind::User => "user",
        }
    }
}

#[derive(Default)]
struct Counters {
    sent: [AtomicU64; Kind::ALL.len()],
    received: [AtomicU64; Kind::ALL.len()],
    /// Publications for other nodes not sent: NATS unreachable or the queue full.
    dropped: AtomicU64,
    /// Requests to other nodes that failed (unreachable, timed out).
    requests_failed: AtomicU64,
}

impl Counters {
    fn sent(&self, kind: Kind) {
        self.sent[kind as usize].fetch_add(1, Ordering::Relaxed);
    }
    fn received(&self, kind: Kind) {
        self.received[kind as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Another node, as this one knows it from its heartbeats.
struct Member {
    owner: Owner,
    epoch: u64,
    last_seen: Instant,
    connections: usize,
    started_at: String,
    /// The last of its Presence changes applied here.
    presence_seq: u64,
    /// Its Presence metas here are complete up to `presence_seq`.
    synced: bool,
    /// A fetch of its full Presence state is under way.
    syncing: bool,
}

#[derive(Default)]
struct Members {
    by_name: HashMap<String, Member>,
    next_owner: u16,
}

/// A NATS subscription this node holds for a name it holds.
struct Held {
    task: tokio::task::AbortHandle,
    /// For a device name: the connection whose takeover was announced.
    announced: Option<u64>,
}

/// Outgoing publications are queued here, never awaited by a socket's task.
const OUTGOING_QUEUE: usize = 65_536;

struct Inner {
    client: Client,
    registry: Arc<Registry>,
    keyring: Arc<crate::auth::Keyring>,
    store: crate::store::Store,
    subjects: Subjects,
    node: String,
    epoch: u64,
    started_at: String,
    options: Options,
    outgoing: mpsc::Sender<(String, Bytes)>,
    held: Mutex<HashMap<Name, Held>>,
    /// One reconciliation at a time (the reconciler task, and a relay registration that
    /// waits for its subscription).
    reconciling: tokio::sync::Mutex<()>,
    members: Mutex<Members>,
    /// The sequence number of this node's last Presence change; held while a change is
    /// made and queued, and while the full state is read, so the two always agree.
    presence_seq: Mutex<u64>,
    counters: Counters,
}

/// The fabric of a cluster node. See the module docs.
pub struct NatsFabric {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_ms(t: time::OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

impl NatsFabric {
    /// Starts the node's tasks on `client` (until `parts.shutdown`): the fixed subscriptions,
    /// heartbeats, the reconciler of held names and the publisher.
    pub fn start(
        client: Client,
        events: Events,
        options: Options,
        parts: &crate::services::FabricParts,
    ) -> NatsFabric {
        let registry = parts.registry.clone();
        let shutdown = parts.shutdown.clone();
        let (outgoing, queued) = mpsc::channel(OUTGOING_QUEUE);
        let inner = Arc::new(Inner {
            client,
            registry: registry.clone(),
            keyring: parts.keyring.clone(),
            store: parts.store.clone(),
            subjects: Subjects::new(&options.subject_prefix),
            node: options.node.clone(),
            epoch: rand::random(),
            started_at: crate::domain::format_ts(time::OffsetDateTime::now_utc()),
            options,
            outgoing,
            held: Mutex::new(HashMap::new()),
            reconciling: tokio::sync::Mutex::new(()),
            members: Mutex::new(Members::default()),
            presence_seq: Mutex::new(0),
            counters: Counters::default(),
        });
        let names = registry.interest.listen();
        tokio::spawn(inner.clone().publisher(queued, shutdown.clone()));
        tokio::spawn(inner.clone().fixed_subscriptions(shutdown.clone()));
        tokio::spawn(inner.clone().heartbeats(events, shutdown.clone()));
        if let Some(names) = names {
            tokio::spawn(inner.clone().reconciler(names, shutdown));
        }
        tracing::info!(node = %inner.node, url = %inner.options.url, "cluster node starting");
        NatsFabric { inner }
    }
}

impl Inner {
    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Queues a publication for other nodes; dropped (and counted) when NATS is unreachable
    /// or the queue is full: at most once, like every broadcast.
    fn publish(&self, kind: Kind, subject: String, payload: Bytes) {
        if !self.connected() || self.outgoing.try_send((subject, payload)).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.counters.sent(kind);
    }

    async fn publisher(
        self: Arc<Self>,
        mut queued: mpsc::Receiver<(String, Bytes)>,
        shutdown: CancellationToken,
    ) {
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = queued.recv() => next,
            };
            let Some((subject, payload)) = next else {
                break;
            };
            if self.client.publish(subject, payload).await.is_err() {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// One request to the one holder of a name: `UnknownTarget` when nobody subscribes to
    /// it, `Unavailable` when NATS is unreachable or the holder does not answer in time.
    async fn request(
        &self,
        kind: Kind,
        subject: String,
        payload: Bytes,
    ) -> Result<Reply, DeliveryError> {
        if !self.connected() {
            self.counters
                .requests_failed
                .fetch_add(1, Ordering::Relaxed);
            return Err(DeliveryError::Unavailable);
        }
        self.counters.sent(kind);
        let answer = tokio::time::timeout(
            self.options.request_timeout,
            self.client.request(subject, payload),
        )
        .await;
        let failed = || {
            self.counters
                .requests_failed
                .fetch_add(1, Ordering::Relaxed);
            DeliveryError::Unavailable
        };
        match answer {
            Ok(Ok(msg)) => serde_json::from_slice::<Reply>(&msg.payload).map_err(|_| failed()),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                Err(DeliveryError::UnknownTarget)
            }
            Ok(Err(_)) | Err(_) => Err(failed()),
        }
    }

    /// Scatter-gather: asks every node, and collects the answers of the nodes known alive
    /// (until each has answered or the request timeout passed).
    async fn gather(
        &self,
        kind: Kind,
        subject: String,
        payload: Bytes,
    ) -> Result<Vec<Message>, DeliveryError> {
        if !self.connected() {
            self.counters
                .requests_failed
                .fetch_add(1, Ordering::Relaxed);
            return Err(DeliveryError::Unavailable);
        }
        let expect = lock(&self.members).by_name.len();
        if expect == 0 {
            return Ok(Vec::new());
        }
        let inbox = self.client.new_inbox();
        let mut answers = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|_| DeliveryError::Unavailable)?;
        self.counters.sent(kind);
        self.client
            .publish_with_reply(subject, inbox, payload)
            .await
            .map_err(|_| DeliveryError::Unavailable)?;
        let deadline = tokio::time::Instant::now() + self.options.request_timeout;
        let mut got = Vec::with_capacity(expect);
        while got.len() < expect {
            match tokio::time::timeout_at(deadline, answers.next()).await {
                Ok(Some(msg)) => got.push(msg),
                _ => {
                    tracing::warn!(
                        asked = expect,
                        answered = got.len(),
                        what = kind.as_str(),
                        "cluster: not every node answered in time"
                    );
                    break;
                }
            }
        }
        Ok(got)
    }

    /// Returns once the NATS server has processed everything this node sent before: a
    /// request on a subject nobody subscribes to, which the server itself answers ("no
    /// responders") after the operations this connection sent before it, in order.
    /// `Client::flush` only empties the socket buffer, so a subscription made just before
    /// could still be unknown to the server when another node's request arrives. Best
    /// effort: a timeout or an outage just returns.
    async fn barrier(&self) {
        let subject = self.subjects.ping(&self.node);
        let _ = tokio::time::timeout(
            self.options.request_timeout,
            self.client.request(subject, Bytes::new()),
        )
        .await;
    }

    /// A relay packet for the holder of `target` on another node.
    async fn relay_packet(&self, target: &str, req: &RelayReq) -> Result<(), DeliveryError> {
        let subject = self.subjects.relay(&directory::normalize(target));
        self.request(Kind::Relay, subject, body(req))
            .await?
            .delivery_result()
    }

    async fn respond(&self, msg: &Message, reply: &impl serde::Serialize) {
        if let Some(to) = &msg.reply {
            let _ = self.client.publish(to.clone(), body(reply)).await;
        }
    }

    // ---- names this node holds -------------------------------------------------------

    fn subject_of(&self, name: &Name) -> String {
        match name {
            Name::Topic(t) => self.subjects.topic(t),
            Name::Device(d) => self.subjects.device(d.as_str()),
            Name::Relay(r) => self.subjects.relay(r),
            Name::Address(a) => self.subjects.address(a),
            Name::User(u) => self.subjects.user(u),
        }
    }

    fn holds(&self, name: &Name) -> bool {
        match name {
            // Presence is replicated on its own subjects; its diffs are made on each node.
            Name::Topic(Topic::Presence) => false,
            Name::Topic(t) => self.registry.has_subscribers(t),
            Name::Device(d) => self.registry.device(d).is_some(),
            Name::Relay(r) => self.registry.relay.conn_of(r).is_some(),
            Name::Address(a) => self.registry.compendium.holds(a),
            Name::User(u) => !self.registry.users.ids_of(u).is_empty(),
        }
    }

    /// Keeps one subscription per name this node holds. Reports may arrive in any order:
    /// each is checked against the registry as it is now.
    async fn reconciler(
        self: Arc<Self>,
        mut names: mpsc::UnboundedReceiver<Name>,
        shutdown: CancellationToken,
    ) {
        loop {
            let name = tokio::select! {
                _ = shutdown.cancelled() => break,
                name = names.recv() => name,
            };
            let Some(name) = name else { break };
            self.reconcile(name).await;
        }
        for (_, held) in lock(&self.held).drain() {
            held.task.abort();
        }
    }

    async fn reconcile(self: &Arc<Self>, name: Name) {
        let _one = self.reconciling.lock().await;
        let wanted = self.holds(&name);
        let subscribed = lock(&self.held).contains_key(&name);
        if wanted && !subscribed {
            let subject = self.subject_of(&name);
            match self.client.subscribe(subject.clone()).await {
                Ok(mut sub) => {
                    let me = self.clone();
                    let serving = name.clone();
                    let task = tokio::spawn(async move {
                        while let Some(msg) = sub.next().await {
                            me.serve(&serving, msg).await;
                        }
                    });
                    lock(&self.held).insert(
                        name.clone(),
                        Held {
                            task: task.abort_handle(),
                            announced: None,
                        },
                    );
                }
                Err(e) => tracing::warn!(%subject, error = %e, "cluster: cannot subscribe"),
            }
        } else if !wanted
            && subscribed
            && let Some(held) = lock(&self.held).remove(&name)
        {
            held.task.abort();
        }
        // One socket per name, cluster-wide: a new socket of this name tells the node of
        // an older one to close it.
        if let Name::Device(device) = &name
            && let Some(conn) = self.registry.device(device)
        {
            let fresh = lock(&self.held)
                .get_mut(&name)
                .is_some_and(|h| h.announced.replace(conn.id) != Some(conn.id));
            if fresh {
                let takeover = DeviceReq::Takeover {
                    node: self.node.clone(),
                    connected_at: unix_ms(conn.connected_at),
                };
                self.publish(Kind::Device, self.subject_of(&name), body(&takeover));
            }
        }
    }

    /// A message on the subject of a name this node holds.
    async fn serve(&self, name: &Name, msg: Message) {
        match name {
            Name::Topic(topic) => self.serve_topic(topic, &msg),
            Name::Device(device) => self.serve_device(device, &msg).await,
            Name::Relay(relay) => self.serve_relay(relay, &msg).await,
            Name::Address(address) => {
                self.counters.received(Kind::Address);
                let result = match std::str::from_utf8(&msg.payload) {
                    Ok(text) => self
                        .registry
                        .compendium
                        .deliver(address, Utf8Bytes::from(text.to_owned())),
                    Err(_) => Err(DeliveryError::Unavailable),
                };
                self.respond(&msg, &Reply::delivery(result)).await;
            }
            Name::User(user) => self.serve_user(user, &msg).await,
        }
    }

    async fn serve_user(&self, user: &str, msg: &Message) {
        self.counters.received(Kind::User);
        let reply = match serde_json::from_slice::<UserReq>(&msg.payload) {
            Ok(UserReq::Deliver { frame }) => Reply::delivery(
                self.registry
                    .deliver_to_user(user, &Utf8Bytes::from(frame))
                    .map(|_| ()),
            ),
            Ok(UserReq::Kick) => Reply::closed(self.registry.kick_user(user)),
            Err(_) => Reply::failed("bad request"),
        };
        self.respond(msg, &reply).await;
    }

    fn serve_topic(&self, topic: &Topic, msg: &Message) {
        let Ok(m) = serde_json::from_slice::<TopicMsg>(&msg.payload) else {
            tracing::warn!(%topic, "cluster: undecodable topic message");
            return;
        };
        match m.op {
            TopicOp::Broadcast => {
                self.counters.received(Kind::Broadcast);
                if let (Some(event), Some(payload)) = (&m.event, m.out_payload()) {
                    self.registry.broadcast(topic, event, payload, None);
                }
            }
            TopicOp::Push => {
                self.counters.received(Kind::Push);
                if let (Some(event), Some(payload)) = (&m.event, m.out_payload()) {
                    self.registry.push_topic(topic, event, payload);
                }
            }
            TopicOp::End => {
                self.counters.received(Kind::EndChannel);
                self.registry.end_channel(topic, m.keep.as_deref());
            }
        }
    }

    async fn serve_device(&self, device: &DeviceName, msg: &Message) {
        self.counters.received(Kind::Device);
        match serde_json::from_slice::<DeviceReq>(&msg.payload) {
            Ok(DeviceReq::Takeover { node, connected_at }) => {
                if let Some(old) = self.registry.device(device)
                    && unix_ms(old.connected_at) <= connected_at
                {
                    tracing::info!(%device, old_conn = old.id, new_node = %node, "device reconnected to another node; closing its older connection");
                    old.kill(close_code::GOING_AWAY);
                }
            }
            Ok(DeviceReq::Disconnect) => {
                let closed = self.registry.kick(device);
                self.respond(msg, &Reply::closed(usize::from(closed))).await;
            }
            Err(_) => self.respond(msg, &Reply::failed("bad request")).await,
        }
    }

    async fn serve_relay(&self, name: &str, msg: &Message) {
        self.counters.received(Kind::Relay);
        let Ok(req) = serde_json::from_slice::<RelayReq>(&msg.payload) else {
            self.respond(msg, &Reply::failed("bad request")).await;
            return;
        };
        let reply = match req.op {
            RelayOp::Packet => {
                let sender = req.sender.unwrap_or_default();
                let result = match (req.payload, req.bytes) {
                    (Some(payload), _) => self
                        .registry
                        .relay
                        .deliver(name, Arc::new(Packet { sender, payload })),
                    (None, Some(b64)) => match wire::decode_bytes(&b64) {
                        Some(bytes) => self.registry.relay.deliver_binary(
                            name,
                            Arc::new(BinaryPacket {
                                sender,
                                bytes: bytes.into(),
                            }),
                        ),
                        None => Err(DeliveryError::Unavailable),
                    },
                    (None, None) => Err(DeliveryError::Unavailable),
                };
                Reply::delivery(result)
            }
            RelayOp::Claim if req.force => {
                if let Some(old) = self.registry.relay.conn_of(name)
                    && self.registry.relay.unregister(name, old.id)
                {
                    tracing::info!(device = %name, old_conn = old.id, "relay name taken over on another node");
                    if old.send(Outbound::RelayRevoked).is_err() {
                        old.kill(close_code::GOING_AWAY);
                    }
                }
                Reply::ok()
            }
            RelayOp::Info => match self.registry.relay.info(name) {
                Some(info) => Reply {
                    info: Some(info),
                    ..Reply::default()
                },
                None => Reply::failed(DeliveryError::UnknownTarget),
            },
            RelayOp::Claim => match self.registry.relay.conn_of(name) {
                Some(_) => Reply::failed(RegisterError::NameTaken),
                None => Reply::ok(),
            },
        };
        self.respond(msg, &reply).await;
    }

    // ---- membership and Presence -----------------------------------------------------

    /// Subscriptions every node holds: heartbeats, Presence changes, this node's
    /// Presence state, token revocations and the device listing.
    async fn fixed_subscriptions(self: Arc<Self>, shutdown: CancellationToken) {
        let subjects = [
            (Kind::Heartbeat, self.subjects.heartbeat()),
            (Kind::Presence, self.subjects.presence()),
            (
                Kind::PresenceState,
                self.subjects.presence_state(&self.node),
            ),
            (Kind::Token, self.subjects.token_revoked()),
            (Kind::Devices, self.subjects.devices()),
        ];
        let mut tasks = Vec::new();
        for (kind, subject) in subjects {
            match self.client.subscribe(subject.clone()).await {
                Ok(mut sub) => {
                    let me = self.clone();
                    tasks.push(tokio::spawn(async move {
                        while let Some(msg) = sub.next().await {
                            me.counters.received(kind);
                            me.serve_fixed(kind, msg).await;
                        }
                    }));
                }
                Err(e) => tracing::error!(%subject, error = %e, "cluster: cannot subscribe"),
            }
        }
        shutdown.cancelled().await;
        for t in tasks {
            t.abort();
        }
    }

    async fn serve_fixed(self: &Arc<Self>, kind: Kind, msg: Message) {
        match kind {
            Kind::Heartbeat => {
                if let Ok(hb) = serde_json::from_slice::<Heartbeat>(&msg.payload) {
                    self.on_heartbeat(hb);
                }
            }
            Kind::Presence => {
                if let Ok(change) = serde_json::from_slice::<PresenceChange>(&msg.payload) {
                    self.on_presence(change);
                }
            }
            Kind::PresenceState => {
                let state = {
                    let seq = lock(&self.presence_seq);
                    PresenceState {
                        epoch: self.epoch,
                        seq: *seq,
                        entries: self.registry.presence.local_entries(),
                    }
                };
                self.respond(&msg, &state).await;
            }
            Kind::Token => {
                if let Ok(t) = serde_json::from_slice::<TokenRevoked>(&msg.payload) {
                    self.keyring.revoke(&t.token_id);
                    let closed = self.registry.kill_token(&t.token_id);
                    self.respond(&msg, &Reply::closed(closed)).await;
                }
            }
            Kind::Devices => {
                let devices = Devices {
                    node: self.node.clone(),
                    devices: self.local_devices(),
                };
                self.respond(&msg, &devices).await;
            }
            _ => {}
        }
    }

    fn local_devices(&self) -> Vec<DeviceView> {
        let mut devices = self.registry.devices();
        for d in &mut devices {
            d.node = Some(self.node.clone());
        }
        devices
    }

    fn heartbeat(&self, hello: bool) -> Heartbeat {
        Heartbeat {
            node: self.node.clone(),
            epoch: self.epoch,
            started_at: self.started_at.clone(),
            connections: self.registry.connection_count(),
            presence_seq: *lock(&self.presence_seq),
            hello,
        }
    }

    /// Heartbeats every third of the node timeout, drops nodes that went silent, and says
    /// hello (every node answers with its heartbeat) at start and after a reconnection.
    async fn heartbeats(self: Arc<Self>, mut events: Events, shutdown: CancellationToken) {
        let every = self.options.node_timeout / 3;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_connected = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                event = events.recv() => match event {
                    Some(async_nats::Event::Connected) => {
                        tracing::info!(node = %self.node, "cluster: connected to NATS");
                        if was_connected {
                            tokio::spawn(self.clone().catch_up_revocations());
                        }
                        was_connected = true;
                        self.publish(Kind::Heartbeat, self.subjects.heartbeat(), body(&self.heartbeat(true)));
                    }
                    Some(async_nats::Event::Disconnected) => {
                        tracing::warn!(node = %self.node, "cluster: NATS unreachable; serving local clients only");
                    }
                    Some(other) => tracing::debug!(event = %other, "cluster: NATS event"),
                    None => {}
                },
                _ = tick.tick() => {
                    let hello = !was_connected && self.connected();
                    was_connected |= hello;
                    self.publish(Kind::Heartbeat, self.subjects.heartbeat(), body(&self.heartbeat(hello)));
                    self.drop_silent_nodes();
                }
            }
        }
    }

    /// After a reconnection: the tokens revoked (on another node) while this one was cut
    /// off were announced to nobody here, so read them from the store, forget them and
    /// close what they admitted.
    async fn catch_up_revocations(self: Arc<Self>) {
        match self.store.revoked_token_ids().await {
            Ok(ids) => {
                let mut closed = 0;
                for id in ids {
                    if !self.keyring.is_revoked(&id) {
                        self.keyring.revoke(&id);
                        closed += self.registry.kill_token(&id);
                    }
                }
                if closed > 0 {
                    tracing::info!(
                        closed,
                        "cluster: closed connections of tokens revoked while NATS was unreachable"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster: cannot read revoked tokens after reconnecting")
            }
        }
    }

    fn drop_silent_nodes(&self) {
        let timeout = self.options.node_timeout;
        let gone: Vec<(String, Owner)> = {
            let mut members = lock(&self.members);
            let gone: Vec<(String, Owner)> = members
                .by_name
                .iter()
                .filter(|(_, m)| m.last_seen.elapsed() > timeout)
                .map(|(n, m)| (n.clone(), m.owner))
                .collect();
            for (name, _) in &gone {
                members.by_name.remove(name);
            }
            gone
        };
        for (node, owner) in gone {
            tracing::warn!(%node, "cluster: node silent; removing its Presence entries");
            self.registry.presence_replace(owner, Vec::new());
        }
    }

    fn on_heartbeat(self: &Arc<Self>, hb: Heartbeat) {
        if hb.node == self.node {
            if hb.epoch != self.epoch {
                tracing::error!(node = %hb.node, "cluster: another process uses this node name (HOMEHUB_NODE)");
            }
            return;
        }
        let sync = {
            let mut guard = lock(&self.members);
            let members = &mut *guard;
            let member = match members.by_name.get_mut(&hb.node) {
                Some(m) if m.epoch == hb.epoch => m,
                Some(m) => {
                    tracing::info!(node = %hb.node, "cluster: node restarted");
                    self.registry.presence_replace(m.owner, Vec::new());
                    m.epoch = hb.epoch;
                    m.synced = false;
                    m.syncing = false;
                    m.presence_seq = 0;
                    m
                }
                None => {
                    members.next_owner = members.next_owner.wrapping_add(1).max(1);
                    tracing::info!(node = %hb.node, "cluster: node joined");
                    members
                        .by_name
                        .entry(hb.node.clone())
                        .or_insert_with(|| Member {
                            owner: Owner(members.next_owner),
                            epoch: hb.epoch,
                            last_seen: Instant::now(),
                            connections: 0,
                            started_at: String::new(),
                            presence_seq: 0,
                            synced: false,
                            syncing: false,
                        })
                }
            };
            member.last_seen = Instant::now();
            member.connections = hb.connections;
            member.started_at = hb.started_at.clone();
            if member.synced && hb.presence_seq > member.presence_seq {
                member.synced = false;
            }
            let sync = !member.synced && !member.syncing;
            if sync {
                member.syncing = true;
            }
            sync.then_some((member.owner, member.epoch))
        };
        if hb.hello {
            self.publish(
                Kind::Heartbeat,
                self.subjects.heartbeat(),
                body(&self.heartbeat(false)),
            );
        }
        if let Some((owner, epoch)) = sync {
            let me = self.clone();
            tokio::spawn(async move { me.fetch_presence(hb.node, owner, epoch).await });
        }
    }

    /// Fetches a node's full Presence state and makes its metas here exactly that.
    async fn fetch_presence(&self, node: String, owner: Owner, epoch: u64) {
        let subject = self.subjects.presence_state(&node);
        let state = match self.client.request(subject, Bytes::new()).await {
            Ok(msg) => serde_json::from_slice::<PresenceState>(&msg.payload).ok(),
            Err(_) => None,
        };
        let mut members = lock(&self.members);
        let Some(member) = members.by_name.get_mut(&node) else {
            return;
        };
        member.syncing = false;
        match state {
            Some(state) if state.epoch == epoch && member.epoch == epoch => {
                member.presence_seq = state.seq;
                member.synced = true;
                self.registry.presence_replace(owner, state.entries);
            }
            // Retried at its next heartbeat.
            _ => tracing::debug!(%node, "cluster: could not fetch a node's Presence state"),
        }
    }

    fn on_presence(self: &Arc<Self>, change: PresenceChange) {
        if change.node == self.node {
            return;
        }
        let mut members = lock(&self.members);
        let Some(member) = members.by_name.get_mut(&change.node) else {
            return; // its heartbeat will introduce it
        };
        if member.epoch != change.epoch || !member.synced || change.seq <= member.presence_seq {
            return;
        }
        if change.seq == member.presence_seq + 1 {
            member.presence_seq = change.seq;
            self.registry
                .presence_set_remote(member.owner, &change.key, change.conn, change.meta);
        } else {
            // A change was missed: fetch the node's whole state again.
            member.synced = false;
            member.syncing = true;
            let (owner, epoch) = (member.owner, member.epoch);
            drop(members);
            let me = self.clone();
            tokio::spawn(async move { me.fetch_presence(change.node, owner, epoch).await });
        }
    }
}

impl Fabric for NatsFabric {
    fn deliver<'a>(
        &'a self,
        target: &'a str,
        packet: Arc<Packet>,
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let inner = &self.inner;
            match inner.registry.relay.deliver(target, packet.clone()) {
                Err(DeliveryError::UnknownTarget) => {}
                local => return local,
            }
            let req = RelayReq {
                sender: Some(packet.sender.clone()),
                payload: Some(packet.payload.clone()),
                ..RelayReq::new(RelayOp::Packet)
            };
            inner.relay_packet(target, &req).await
        })
    }

    fn deliver_binary<'a>(
        &'a self,
        target: &'a str,
        packet: Arc<BinaryPacket>,
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let inner = &self.inner;
            match inner.registry.relay.deliver_binary(target, packet.clone()) {
                Err(DeliveryError::UnknownTarget) => {}
                local => return local,
            }
            let req = RelayReq {
                sender: Some(packet.sender.clone()),
                bytes: Some(wire::encode_bytes(&packet.bytes)),
                ..RelayReq::new(RelayOp::Packet)
            };
            inner.relay_packet(target, &req).await
        })
    }

    fn deliver_to_address<'a>(
        &'a self,
        address: &'a str,
        text: Utf8Bytes,
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let inner = &self.inner;
            match inner.registry.compendium.deliver(address, text.clone()) {
                Err(DeliveryError::UnknownTarget) => {}
                local => return local,
            }
            let payload = Bytes::copy_from_slice(text.as_bytes());
            inner
                .request(Kind::Address, inner.subjects.address(address), payload)
                .await?
                .delivery_result()
        })
    }

    fn disconnect_device<'a>(
        &'a self,
        name: &'a DeviceName,
    ) -> BoxFuture<'a, Result<bool, DeliveryError>> {
        Box::pin(async move {
            let inner = &self.inner;
            if inner.registry.kick(name) {
                return Ok(true);
            }
            let subject = inner.subjects.device(name.as_str());
            match inner
                .request(Kind::Device, subject, body(&DeviceReq::Disconnect))
                .await
            {
                Ok(reply) => Ok(reply.closed > 0),
                Err(DeliveryError::UnknownTarget) => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    fn disconnect_token<'a>(
        &'a self,
        token_id: &'a str,
    ) -> BoxFuture<'a, Result<usize, DeliveryError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let local = inner.registry.kill_token(token_id);
            let req = TokenRevoked {
                token_id: token_id.to_owned(),
            };
            let answers = inner
                .gather(Kind::Token, inner.subjects.token_revoked(), body(&req))
                .await?;
            let remote: usize = answers
                .iter()
                .filter_map(|m| serde_json::from_slice::<Reply>(&m.payload).ok())
                .map(|r| r.closed)
                .sum();
            Ok(local + remote)
        })
    }

    fn register_relay<'a>(
        &'a self,
        conn: &'a Arc<Conn>,
        claim: Claim<'a>,
    ) -> BoxFuture<'a, Result<Registered, RegisterError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let force = claim.force;
            let registered = inner.registry.relay.register(conn, claim)?;
            if registered.displaced.is_some() || !inner.connected() {
                // Displaced here, so no other node held it; or NATS is unreachable and
                // the name is this node's until the next claim.
                return Ok(registered);
            }
            let req = RelayReq {
                force,
                ..RelayReq::new(RelayOp::Claim)
            };
            let subject = inner.subjects.relay(&registered.name);
            match inner.request(Kind::Relay, subject, body(&req)).await {
                Ok(reply) if reply.error.is_some() => {
                    inner.registry.relay.unregister(&registered.name, conn.id);
                    Err(RegisterError::NameTaken)
                }
                _ => {
                    // Reachable from every node once the device is told it is registered:
                    // the subscription is made and the server has it.
                    self.hold(&Name::Relay(registered.name.clone())).await;
                    Ok(registered)
                }
            }
        })
    }

    fn unregister_relay(&self, name: &str, conn_id: u64) -> bool {
        self.inner.registry.relay.unregister(name, conn_id)
    }

    fn broadcast(
        &self,
        topic: &Topic,
        event: &str,
        payload: OutPayload,
        except: Option<u64>,
    ) -> Result<usize, Unavailable> {
        let inner = &self.inner;
        if *topic != Topic::Presence
            && let Some(msg) = TopicMsg::carrying(TopicOp::Broadcast, event, &payload)
        {
            inner.publish(Kind::Broadcast, inner.subjects.topic(topic), body(&msg));
        }
        Ok(inner.registry.broadcast(topic, event, payload, except))
    }

    fn push_topic(
        &self,
        topic: &Topic,
        event: &str,
        payload: OutPayload,
    ) -> Result<usize, Unavailable> {
        let inner = &self.inner;
        if let Some(msg) = TopicMsg::carrying(TopicOp::Push, event, &payload) {
            inner.publish(Kind::Push, inner.subjects.topic(topic), body(&msg));
        }
        Ok(inner.registry.push_topic(topic, event, payload))
    }

    fn end_channel(&self, topic: &Topic, keep: Option<&str>) -> Result<usize, Unavailable> {
        let inner = &self.inner;
        let msg = TopicMsg {
            op: TopicOp::End,
            event: None,
            payload: None,
            bytes: None,
            keep: keep.map(str::to_owned),
        };
        inner.publish(Kind::EndChannel, inner.subjects.topic(topic), body(&msg));
        Ok(inner.registry.end_channel(topic, keep))
    }

    fn presence_set(
        &self,
        key: &str,
        conn_id: u64,
        fields: Option<DeviceMeta>,
    ) -> Result<(), Unavailable> {
        let inner = &self.inner;
        let mut seq = lock(&inner.presence_seq);
        let meta = fields.clone();
        let change = inner.registry.presence_set(key, conn_id, fields);
        let meta = match change {
            Change::None => return Ok(()),
            Change::Tracked(phx_ref) => meta.map(|m| (m, phx_ref)),
            Change::Untracked => None,
        };
        *seq += 1;
        let change = PresenceChange {
            node: inner.node.clone(),
            epoch: inner.epoch,
            seq: *seq,
            key: key.to_owned(),
            conn: conn_id,
            meta,
        };
        // A change that cannot be sent leaves a gap the other nodes notice (the next
        // heartbeat's `presence_seq`), and they fetch this node's whole state.
        inner.publish(Kind::Presence, inner.subjects.presence(), body(&change));
        Ok(())
    }

    fn relay_info<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<DeviceInfo>, DeliveryError>> {
        Box::pin(async move {
            let inner = &self.inner;
            if let Some(info) = inner.registry.relay.info(name) {
                return Ok(Some(info));
            }
            let Ok(name) = directory::relay_name(name) else {
                return Ok(None);
            };
            let req = RelayReq::new(RelayOp::Info);
            match inner
                .request(Kind::Relay, inner.subjects.relay(&name), body(&req))
                .await
            {
                Ok(reply) => Ok(reply.info),
                Err(DeliveryError::UnknownTarget) => Ok(None),
                Err(e) => Err(e),
            }
        })
    }

    fn deliver_to_user<'a>(
        &'a self,
        user: &'a str,
        frame: Utf8Bytes,
    ) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let subject = inner.subjects.user(user);
            let req = UserReq::Deliver {
                frame: frame.as_str().to_owned(),
            };
            match inner.registry.deliver_to_user(user, &frame) {
                // Delivered here: the user's connections on other nodes, if any, get it
                // too (every node holding the user subscribes to its subject).
                Ok(_) => {
                    inner.publish(Kind::User, subject, body(&req));
                    Ok(())
                }
                // Not here: every node holding the user delivers; the first answer
                // decides (no responders: the user is connected nowhere).
                Err(DeliveryError::UnknownTarget) => inner
                    .request(Kind::User, subject, body(&req))
                    .await?
                    .delivery_result(),
                Err(e) => Err(e),
            }
        })
    }

    fn kick_user<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<usize, DeliveryError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let local = inner.registry.kick_user(user);
            // Every node holding the user closes its connections; each answers.
            let subject = inner.subjects.user(user);
            let remote = match inner
                .request(Kind::User, subject, body(&UserReq::Kick))
                .await
            {
                Ok(reply) => reply.closed,
                Err(DeliveryError::UnknownTarget) => 0,
                Err(e) if local == 0 => return Err(e),
                Err(_) => 0,
            };
            Ok(local + remote)
        })
    }

    fn hold<'a>(&'a self, name: &'a Name) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            if *name == Name::Topic(Topic::Presence)
                || !inner.connected()
                || lock(&inner.held).contains_key(name)
            {
                return;
            }
            inner.reconcile(name.clone()).await;
            inner.barrier().await;
        })
    }

    fn devices(&self) -> BoxFuture<'_, Result<Vec<DeviceView>, DeliveryError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let mut devices = inner.local_devices();
            let answers = inner
                .gather(Kind::Devices, inner.subjects.devices(), Bytes::new())
                .await?;
            for answer in answers {
                if let Ok(remote) = serde_json::from_slice::<Devices>(&answer.payload) {
                    devices.extend(remote.devices.into_iter().map(|mut d| {
                        d.node = Some(remote.node.clone());
                        d
                    }));
                }
            }
            devices.sort_by(|a, b| (&a.name, &a.node).cmp(&(&b.name, &b.node)));
            Ok(devices)
        })
    }

    fn cluster(&self) -> ClusterView {
        let inner = &self.inner;
        let mut nodes = vec![NodeView {
            name: inner.node.clone(),
            this_node: true,
            state: "up",
            connections: inner.registry.connection_count(),
            started_at: inner.started_at.clone(),
            last_heartbeat_ms: None,
        }];
        nodes.extend(
            lock(&inner.members)
                .by_name
                .iter()
                .map(|(name, m)| NodeView {
                    name: name.clone(),
                    this_node: false,
                    state: "up",
                    connections: m.connections,
                    started_at: m.started_at.clone(),
                    last_heartbeat_ms: Some(m.last_seen.elapsed().as_millis() as u64),
                }),
        );
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        ClusterView {
            clustered: true,
            node: inner.node.clone(),
            connected: inner.connected(),
            nodes,
        }
    }

    fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let inner = &self.inner;
        let c = &inner.counters;
        let _ = writeln!(
            out,
            "# HELP homehub_cluster_connected whether this node reaches NATS (1) or not (0)"
        );
        let _ = writeln!(out, "# TYPE homehub_cluster_connected gauge");
        let _ = writeln!(
            out,
            "homehub_cluster_connected {}",
            u8::from(inner.connected())
        );
        let _ = writeln!(
            out,
            "# HELP homehub_cluster_nodes nodes of the cluster this node sees, itself included"
        );
        let _ = writeln!(out, "# TYPE homehub_cluster_nodes gauge");
        let _ = writeln!(
            out,
            "homehub_cluster_nodes {}",
            lock(&inner.members).by_name.len() + 1
        );
        for (name, help, values) in [
            (
                "homehub_cluster_messages_sent_total",
                "messages this node sent to other nodes over NATS, by kind",
                &c.sent,
            ),
            (
                "homehub_cluster_messages_received_total",
                "messages this node received from other nodes over NATS, by kind",
                &c.received,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for kind in Kind::ALL {
                let _ = writeln!(
                    out,
                    "{name}{{kind=\"{}\"}} {}",
                    kind.as_str(),
                    values[kind as usize].load(Ordering::Relaxed)
                );
            }
        }
        for (name, help, value) in [
            (
                "homehub_cluster_publications_dropped_total",
                "publications for other nodes not sent (NATS unreachable or queue full)",
                &c.dropped,
            ),
            (
                "homehub_cluster_requests_failed_total",
                "requests to other nodes that failed (NATS unreachable, no answer in time)",
                &c.requests_failed,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_url_may_list_several_servers() {
        assert_eq!(servers("nats://a:4222"), ["nats://a:4222"]);
        assert_eq!(
            servers("nats://a:4222, nats://b:4222,,tls://c:4222 "),
            ["nats://a:4222", "nats://b:4222", "tls://c:4222"]
        );
    }
}
