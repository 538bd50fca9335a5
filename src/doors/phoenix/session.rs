//! One Phoenix socket, whatever transport carries it: the joined channel instances and the
//! socket-level protocol (heartbeat, join, leave, routing, §3–§5 of the protocol reference).
//!
//! The transport decodes frames into [`Message`]s, calls [`Session::handle`], and writes the
//! [`Frame`]s it collects; items from the connection's outbound queue go through
//! [`Session::outbound`], which fills in join_refs and drops frames for topics no longer
//! joined. Channels never learn which transport is in use.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use serde_json::value::RawValue;

use crate::auth::RateLimiter;
use crate::core::presence::DeviceMeta;
use crate::core::topic::{Topic, TopicError};
use crate::core::{Conn, Outbound};
use crate::doors::phoenix::Ctx as PhoenixCtx;
use crate::doors::phoenix::channels::router::{self, ChannelState};
use crate::doors::phoenix::channels::{ChannelError, Ctx, Reason, presence};
use crate::doors::phoenix::{
    Event, Frame, Message, OutPayload, RawRef, Status, Vsn, WireFrame, empty_json, to_json,
};
use crate::metrics;

/// One joined channel instance.
struct Joined {
    /// The join_ref the client sent (may be absent): used for `phx_close`/`phx_error` and
    /// to match later messages.
    join_ref: Option<RawRef>,
    /// The join_ref put on replies and pushes: the client's join_ref, or the join's ref
    /// when the client sent none (§3.1).
    push_ref: Option<RawRef>,
    /// The topic, parsed once at the join: the registry's key for it.
    topic: Topic,
    state: ChannelState,
}

/// The channels a socket has joined, by topic: a short list rather than a hash map, since a
/// device joins one or two topics (at most `HOMEHUB_MAX_CHANNELS`) and an idle socket's
/// memory matters more than lookups among a handful of entries.
#[derive(Default)]
struct Channels(Vec<(String, Joined)>);

impl Channels {
    fn position(&self, topic: &str) -> Option<usize> {
        self.0.iter().position(|(t, _)| t == topic)
    }

    fn get(&self, topic: &str) -> Option<&Joined> {
        self.position(topic).map(|i| &self.0[i].1)
    }

    fn get_mut(&mut self, topic: &str) -> Option<&mut Joined> {
        self.position(topic).map(|i| &mut self.0[i].1)
    }

    fn contains_key(&self, topic: &str) -> bool {
        self.position(topic).is_some()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(t, _)| t)
    }

    fn remove(&mut self, topic: &str) -> Option<Joined> {
        let i = self.position(topic)?;
        Some(self.0.swap_remove(i).1)
    }

    fn insert(&mut self, topic: String, joined: Joined) {
        match self.get_mut(&topic) {
            Some(slot) => *slot = joined,
            None => {
                // Grow one entry at a time: most sockets never hold more than one or two.
                self.0.reserve_exact(1);
                self.0.push((topic, joined));
            }
        }
    }
}

/// The per-connection Phoenix socket state.
pub struct Session {
    door: Arc<PhoenixCtx>,
    conn: Arc<Conn>,
    vsn: Vsn,
    channels: Channels,
    online_at: i64,
    /// Pushes per second this socket may send (heartbeats excepted).
    limiter: RateLimiter,
}

/// `{"reason": reason}`.
fn reason(reason: &str) -> Box<RawValue> {
    to_json(&Reason { reason })
}

/// Topics whose joining or leaving changes the device's Presence meta.
fn affects_presence(topic: &str) -> bool {
    topic == "relay" || topic.starts_with("lock:")
}

impl Session {
    /// A new session; the device becomes present on `presence:devices`.
    pub fn new(door: Arc<PhoenixCtx>, conn: Arc<Conn>, vsn: Vsn) -> Session {
        let session = Session {
            conn,
            vsn,
            channels: Channels::default(),
            online_at: time::OffsetDateTime::now_utc().unix_timestamp(),
            limiter: RateLimiter::new(door.rate.0, door.rate.1),
            door,
        };
        session.sync_presence();
        session
    }

    pub fn vsn(&self) -> Vsn {
        self.vsn
    }

    pub fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }

    pub fn door(&self) -> &Arc<PhoenixCtx> {
        &self.door
    }

    /// Publishes this device's Presence meta: its locks and whether it is on the relay.
    fn sync_presence(&self) {
        let mut locks: Vec<String> = self
            .channels
            .keys()
            .filter_map(|t| t.strip_prefix("lock:"))
            .map(str::to_owned)
            .collect();
        locks.sort();
        let relay = self.channels.get("relay").is_some_and(|j| match &j.state {
            ChannelState::Relay(ch) => ch.registered,
            _ => false,
        });
        let meta = presence::meta("phoenix", self.online_at, locks, relay);
        self.publish_presence(Some(meta));
    }

    /// Publishes this socket's Presence meta (`None`: it left).
    fn publish_presence(&self, meta: Option<DeviceMeta>) {
        let key = self.conn.name.as_str();
        if self
            .door
            .fabric
            .presence_set(key, self.conn.id, meta)
            .is_err()
        {
            tracing::warn!(
                conn = self.conn.id,
                device = key,
                "presence not published: fabric unavailable"
            );
        }
    }

    /// Ends the channel instance on `topic`, if any: unsubscribes and lets the channel
    /// clean up. The caller decides what, if anything, the client is told.
    fn end_channel(&mut self, topic: &str) -> Option<Joined> {
        let joined = self.channels.remove(topic)?;
        self.door.registry.unsubscribe(&joined.topic, self.conn.id);
        let ctx = Ctx::new(&self.door, &self.conn);
        router::terminate(&joined.state, &ctx);
        Some(joined)
    }

    /// Ends the instance on `topic` and returns the `[J, J, T, event, payload]` frame that
    /// tells the client; Presence follows.
    fn close_instance(
        &mut self,
        topic: &str,
        event: Event,
        payload: Box<RawValue>,
    ) -> Option<Frame> {
        let joined = self.end_channel(topic)?;
        if affects_presence(topic) {
            self.sync_presence();
        }
        Some(close_frame(topic, &joined.join_ref, event, payload))
    }

    fn end_by_hub(&mut self, topic: &str) -> Option<WireFrame> {
        let frame = self.close_instance(topic, Event::Close, empty_json())?;
        tracing::info!(conn = self.conn.id, %topic, "channel ended by the hub");
        self.vsn.encode(&frame)
    }

    /// Handles one client message; frames to send are appended to `out`, in order.
    pub async fn handle(&mut self, msg: Message, out: &mut Vec<Frame>) {
        if msg.topic == "phoenix" && msg.event == Event::Heartbeat {
            out.push(Frame::reply(
                None,
                msg.ref_,
                "phoenix",
                Status::Ok,
                empty_json(),
            ));
            return;
        }
        if !self.limiter.allow() {
            tracing::info!(conn = self.conn.id, topic = %msg.topic, "message refused: rate limited");
            let join_ref = self
                .channels
                .get(&msg.topic)
                .and_then(|j| j.push_ref.clone());
            out.push(Frame::reply(
                join_ref,
                msg.ref_,
                &msg.topic,
                Status::Error,
                reason("rate limited"),
            ));
            return;
        }
        match msg.event {
            Event::Join => self.join(msg, out).await,
            Event::Leave => self.leave(msg, out),
            _ => self.handle_in(msg, out).await,
        }
    }

    /// An error reply for a frame that could not be decoded but named a topic.
    pub fn malformed(&self, ref_: Option<RawRef>, topic: &str, why: &str, out: &mut Vec<Frame>) {
        tracing::info!(conn = self.conn.id, %topic, reason = why, "malformed message");
        out.push(Frame::reply(None, ref_, topic, Status::Error, reason(why)));
    }

    fn unmatched(msg: &Message, out: &mut Vec<Frame>) {
        out.push(Frame::reply(
            None,
            msg.ref_.clone(),
            &msg.topic,
            Status::Error,
            reason("unmatched topic"),
        ));
    }

    async fn join(&mut self, msg: Message, out: &mut Vec<Frame>) {
        let topic = match Topic::parse(&msg.topic) {
            Err(TopicError::Unknown) => {
                tracing::info!(conn = self.conn.id, topic = %msg.topic, "join refused: unmatched topic");
                Self::unmatched(&msg, out);
                return;
            }
            Err(TopicError::InvalidSerial) => Err(ChannelError::refused("invalid serial")),
            Ok(topic) => Ok(topic),
        };
        let rejoin = self.channels.contains_key(&msg.topic);
        if !rejoin && self.channels.len() >= self.door.settings.max_channels {
            out.push(Frame::reply(
                msg.join_ref.clone(),
                msg.ref_.clone(),
                &msg.topic,
                Status::Error,
                reason("too many channels joined"),
            ));
            return;
        }
        // A second join of a joined topic ends the old instance: exactly one phx_close with
        // the old join_ref, after the new join's reply (§3.6).
        let old = self.end_channel(&msg.topic);
        let ctx = Ctx::new(&self.door, &self.conn);
        let joined = match topic {
            Ok(topic) => AssertUnwindSafe(router::join(topic.clone(), &msg.payload, &ctx))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| {
                    tracing::error!(conn = self.conn.id, topic = %msg.topic, "channel join panicked");
                    Err(ChannelError::refused("join crashed"))
                })
                .map(|joined| (topic, joined)),
            Err(e) => Err(e),
        };
        match joined {
            Ok((
                topic,
                router::Joined {
                    state,
                    reply,
                    pushes,
                },
            )) => {
                let push_ref = msg.join_ref.clone().or_else(|| msg.ref_.clone());
                // Subscribe before replying: a broadcast queued meanwhile is written after
                // the reply, because the reply goes out first from this task (§3.7).
                self.door.registry.subscribe(&topic, &self.conn);
                // In a cluster: broadcasts from other nodes reach it once it is told.
                self.door
                    .fabric
                    .hold(&crate::core::interest::Name::Topic(topic.clone()))
                    .await;
                out.push(Frame::reply(
                    push_ref.clone(),
                    msg.ref_.clone(),
                    &msg.topic,
                    Status::Ok,
                    reply,
                ));
                for (event, payload) in pushes {
                    out.push(Frame {
                        join_ref: push_ref.clone(),
                        ref_: None,
                        topic: msg.topic.clone(),
                        event: Event::from(event),
                        payload: OutPayload::Json(payload),
                    });
                }
                metrics::inc(&self.door.metrics.joins);
                tracing::info!(conn = self.conn.id, device = %self.conn.name, topic = %msg.topic, "joined");
                self.channels.insert(
                    msg.topic.clone(),
                    Joined {
                        join_ref: msg.join_ref.clone(),
                        push_ref,
                        topic,
                        state,
                    },
                );
            }
            Err(e) => {
                metrics::inc(&self.door.metrics.joins_refused);
                self.log_error(&msg, &e, "join refused");
                out.push(Frame::reply(
                    msg.join_ref.clone(),
                    msg.ref_.clone(),
                    &msg.topic,
                    Status::Error,
                    e.response(),
                ));
            }
        }
        if let Some(old) = old {
            out.push(close_frame(
                &msg.topic,
                &old.join_ref,
                Event::Close,
                empty_json(),
            ));
        }
        if affects_presence(&msg.topic) {
            self.sync_presence();
        }
    }

    fn leave(&mut self, msg: Message, out: &mut Vec<Frame>) {
        let stale = match (self.channels.get(&msg.topic), &msg.join_ref) {
            (Some(joined), Some(jr)) => joined.join_ref.as_ref() != Some(jr),
            _ => false,
        };
        if stale {
            return; // leave of an older instance: ignored (§3.4)
        }
        out.push(Frame::reply(
            msg.join_ref.clone(),
            msg.ref_.clone(),
            &msg.topic,
            Status::Ok,
            empty_json(),
        ));
        if let Some(close) = self.close_instance(&msg.topic, Event::Close, empty_json()) {
            tracing::info!(conn = self.conn.id, device = %self.conn.name, topic = %msg.topic, "left");
            out.push(close);
        }
    }

    async fn handle_in(&mut self, msg: Message, out: &mut Vec<Frame>) {
        let Some(joined) = self.channels.get_mut(&msg.topic) else {
            Self::unmatched(&msg, out);
            return;
        };
        if let Some(jr) = &msg.join_ref
            && joined.join_ref.as_ref() != Some(jr)
        {
            return; // stale join_ref: dropped without reply (§3.3, 1.8.3+)
        }
        let push_ref = joined.push_ref.clone();
        let ctx = Ctx::new(&self.door, &self.conn);
        let handled = AssertUnwindSafe(router::handle_in(&mut joined.state, &msg, &ctx))
            .catch_unwind()
            .await;
        let (status, response) = match handled {
            Ok(Ok(v)) => (Status::Ok, v),
            Ok(Err(e)) => {
                self.log_error(&msg, &e, "event refused");
                (Status::Error, e.response())
            }
            Err(_) => {
                // The channel instance is gone; the client rejoins on phx_error (§3.5).
                tracing::error!(conn = self.conn.id, topic = %msg.topic, event = %msg.event, "channel crashed");
                let crash = reason("channel_crash");
                out.extend(self.close_instance(&msg.topic, Event::Error, crash));
                return;
            }
        };
        out.push(Frame::reply(
            push_ref, msg.ref_, &msg.topic, status, response,
        ));
        if msg.topic == "relay" && matches!(msg.event.as_str(), "register" | "unregister") {
            // Whether the device is on the relay is part of its Presence meta.
            self.sync_presence();
        }
    }

    fn log_error(&self, msg: &Message, e: &ChannelError, what: &str) {
        match e {
            ChannelError::Internal(cause) => {
                tracing::error!(conn = self.conn.id, topic = %msg.topic, event = %msg.event, error = %cause, "{what}: internal error")
            }
            _ => {
                tracing::info!(conn = self.conn.id, topic = %msg.topic, event = %msg.event, reason = %e, "{what}")
            }
        }
    }

    /// Turns a queued item into a wire frame for this connection, or `None` if it no
    /// longer applies (topic left) or cannot be represented on this serializer.
    pub fn outbound(&mut self, item: Outbound) -> Option<WireFrame> {
        match item {
            Outbound::Broadcast(shared) => {
                if shared.except == Some(self.conn.id) {
                    return None;
                }
                let joined = self.channels.get(&shared.frame.topic)?;
                if !joined.state.accepts_push(&shared.frame.event) {
                    return None;
                }
                self.vsn.encode_shared(&shared)
            }
            Outbound::Push(mut frame) => {
                let joined = self.channels.get(&frame.topic)?;
                if !joined.state.accepts_push(&frame.event) {
                    return None;
                }
                frame.join_ref = joined.push_ref.clone();
                self.vsn.encode(&frame)
            }
            Outbound::Packet(packet) => {
                let joined = self.channels.get("relay")?;
                let frame = Frame {
                    join_ref: joined.push_ref.clone(),
                    ref_: None,
                    topic: "relay".to_owned(),
                    event: Event::Named("packet"),
                    payload: OutPayload::json(&*packet),
                };
                self.vsn.encode(&frame)
            }
            Outbound::BinaryPacket(packet) => {
                let joined = self.channels.get("relay")?;
                let frame = Frame {
                    join_ref: joined.push_ref.clone(),
                    ref_: None,
                    topic: "relay".to_owned(),
                    event: Event::Custom(format!("packet:{}", packet.sender)),
                    payload: OutPayload::Binary(packet.bytes.clone()),
                };
                self.vsn.encode(&frame)
            }
            // The hub ends a channel instance (phx_close: the client must not rejoin),
            // e.g. a lock reassigned to another device, or a relay name taken over (the
            // directory entry already belongs to the newcomer).
            Outbound::EndChannel(topic) => self.end_by_hub(&topic.to_string()),
            Outbound::RelayRevoked => self.end_by_hub("relay"),
            // Pre-encoded text belongs to other doors' protocols.
            // Text is Compendium's; pings are written by the WebSocket driver itself.
            Outbound::Text(_) | Outbound::Ping => None,
        }
    }
}

/// Ending a session (normally, or by a panic unwinding its task) terminates its channels
/// silently, removes its Presence, and forgets the connection, so the registry never keeps
/// a dead entry.
impl Drop for Session {
    fn drop(&mut self) {
        let topics: Vec<String> = self.channels.keys().cloned().collect();
        for topic in &topics {
            self.end_channel(topic);
        }
        self.publish_presence(None);
        // Each `end_channel` above unsubscribed its topic.
        self.door.registry.disconnect(&self.conn, []);
    }
}

/// `[J, J, T, "phx_close" | "phx_error", payload]`: the channel instance ended (§3.5).
fn close_frame(
    topic: &str,
    join_ref: &Option<RawRef>,
    event: Event,
    payload: Box<RawValue>,
) -> Frame {
    Frame {
        join_ref: join_ref.clone(),
        ref_: join_ref.clone(),
        topic: topic.to_owned(),
        event,
        payload: OutPayload::Json(payload),
    }
}
