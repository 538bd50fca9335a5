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
