//! homehub: a smart-home hub that speaks the Phoenix Channels wire protocol.
//!
//! The tree is the architecture (docs/architecture.md). Dependencies point one way:
//! `core ← store ← services ← doors ← net ← app`, with `admin → services`; nothing imports
//! [`app`].
//!
//! * [`core`] — the door-agnostic runtime: every live connection ([`core::Registry`]),
//!   the one bounded outbound queue, topic subscriptions, addressable names (relay
//!   devices, Compendium addresses) and Presence. Knows no protocol.
//! * [`store`] — all SQL (SQLite through sqlx, migrations in `migrations/`).
//! * [`services`] — the hub's rules shared by doors and the admin API (the relay's one
//!   registration rule and its `devices` records, …).
//! * [`doors`] — one folder or file per device protocol, each owning it end to end:
//!   [`doors::phoenix`] (codec, session, channels, WebSocket and long-poll), the raw
//!   [`doors::relay`], [`doors::compendium`], [`doors::bester`]; [`doors::admission`] is
//!   what every device door checks first.
//! * [`net`] — the network edge: accept, TLS, WebSocket upgrades to the socket paths, the
//!   WebSocket driver. Knows doors only through [`net::upgrade::Doors`].
//! * [`admin`] — the HTTP JSON admin API and `/metrics`; [`cli`] wraps it.
//! * [`config`], [`domain`] (the hub's nouns), [`auth`] (tokens, origins, rate limits),
//!   [`metrics`], [`telemetry`], [`shutdown`] — leaves everything above may use.
//! * [`app`] — the composition root: builds the parts, binds, serves, shuts down.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod core;
pub mod domain;
pub mod doors;
pub mod metrics;
pub mod net;
pub mod services;
pub mod shutdown;
pub mod store;
pub mod telemetry;
