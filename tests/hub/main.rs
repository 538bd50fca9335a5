//! Integration tests: the real hub on port 0 with a temp SQLite file, driven over real
//! WebSockets and HTTP. One binary, one module per area.

mod admin;
// The Bester door's harness, for the bridge's side of the relay rule (`relay.rs`).
#[allow(dead_code)]
#[path = "../bester/common.rs"]
mod bester_common;
mod common;
mod compendium;
mod db_copy;
mod durability;
mod firmware;
mod lock_admin;
mod lock_channel;
mod longpoll;
mod one_registry;
mod outage;
mod postgres;
mod presence;
mod protocol;
mod relay;
mod revocation;
mod security;
mod shadow;
mod sqlite_held;
#[path = "../support/mod.rs"]
mod support;
