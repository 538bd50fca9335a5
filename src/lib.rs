//! homehub: a smart-home hub that speaks the Phoenix Channels wire protocol.
//!
//! How a message travels:
//!
//! * [`transport`] — the edges. `transport::websocket` upgrades `/socket/websocket`, picks
//!   the serializer from `vsn`, and runs one task per socket.
//! * [`protocol`] — the wire contract: [`protocol::Message`] in, [`protocol::Frame`] out;
//!   `protocol::serializer` is the only code that reads or writes wire JSON.
//! * [`socket`] — one Phoenix socket whatever the transport: heartbeat, join, leave,
//!   join_ref bookkeeping, routing to channels.
//! * [`channels`] — `channels::router` maps a topic to its channel (`lock:<serial>`,
//!   `events`); channel handlers get typed events, never raw JSON.
//! * [`registry`] — every live connection and topic subscription; broadcasts are encoded
//!   once and queued on each receiver's bounded queue. Shared by every door.
//! * [`store`] — all SQL (SQLite through sqlx, migrations in `migrations/`).
//! * [`bester`] — the Bester door: length-prefixed JSON over TCP, users, message handlers,
//!   federation.
//! * [`admin`] — the HTTP JSON admin API; [`cli`] wraps it.
//! * [`hub`] — the shared state handlers reach ([`hub::Hub`]).
//! * [`app`] — the composition root: binds the listeners, wires the above together, shuts
//!   down gracefully. Nothing in the crate imports it; `main` and the tests do.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod bester;
pub mod channels;
pub mod cli;
pub mod config;
pub mod domain;
pub mod hub;
pub mod listener;
pub mod metrics;
pub mod protocol;
pub mod registry;
pub mod shutdown;
pub mod socket;
pub mod store;
pub mod telemetry;
pub mod transport;
