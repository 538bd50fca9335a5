//! The Phoenix door: the Phoenix Channels wire protocol (`shared/docs/phoenix-protocol.md`)
//! over WebSocket ([`websocket`]) and long-poll ([`longpoll`]).
//!
//! * [`codec`] — the V1 (JSON objects) and V2 (arrays + binary) serializers, the only code
//!   that reads or writes Phoenix wire JSON; [`message`] is what they decode into.
//! * [`session`] — one Phoenix socket whatever the transport: heartbeat, join, leave,
//!   join_ref bookkeeping, routing to channels.
//! * [`channels`] — what each topic does (`lock:<serial>`, `events`, `relay`,
//!   `presence:devices`).

#[cfg(test)]
mod channel_tests;
pub mod channels;
pub mod codec;
pub mod connect;
pub mod longpoll;
pub mod message;
pub mod session;
#[cfg(test)]
mod session_tests;
pub mod websocket;

pub use crate::core::message::{
    Empty, Event, Frame, OutPayload, RawRef, SharedFrame, Status, WireFrame, empty_json, to_json,
};
pub use codec::{DecodeError, Vsn};
pub use message::{Message, Payload};

use std::sync::Arc;

use crate::config::{AuthMode, PhoenixSettings};
use crate::core::{Fabric, Registry};
use crate::metrics::Metrics;
use crate::services::Hub;
use crate::services::relay::Relay;
use crate::store::Store;

/// What a Phoenix socket (its session and its channels, on either transport) uses, built
/// once per hub: the store, the fabric, the relay service, the registry (its own
/// subscriptions and Presence), metrics, and the settings it reads. Never the whole hub.
pub struct Ctx {
    pub store: Store,
    pub fabric: Arc<dyn Fabric>,
    pub relay: Arc<Relay>,
    pub locks: crate::services::locks::Locks,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// `HOMEHUB_AUTH`: in token mode a held lock is joined only by its holder.
    pub auth: AuthMode,
    pub settings: PhoenixSettings,
    /// `HOMEHUB_RELAY_MAX_PACKET`, for the `relay` topic.
    pub relay_max_packet: usize,
    /// `HOMEHUB_RATE_LIMIT` and `HOMEHUB_RATE_BURST`, per socket.
    pub rate: (u32, u32),
}

impl Ctx {
    pub fn new(hub: &Hub) -> Arc<Ctx> {
        Arc::new(Ctx {
            store: hub.store.clone(),
            fabric: hub.fabric.clone(),
            relay: hub.relay.clone(),
            locks: hub.locks.clone(),
            registry: hub.registry.clone(),
            metrics: hub.metrics.clone(),
            auth: hub.config.auth,
            settings: hub.config.phoenix.clone(),
            relay_max_packet: hub.config.relay.max_packet,
            rate: (hub.config.rate_limit, hub.config.rate_burst),
        })
    }
}
