//! Integration tests of the Bester door: the real hub (port 0, temp SQLite file, Bester
//! listener on 127.0.0.1:0), real TCP clients, real handler processes (the example in
//! `examples/bester_upper.py` and `fixtures/misbehave.py`), and two hubs for federation.

mod admin;
mod auth;
mod common;
mod federation;
mod flood;
mod framing;
mod handlers;
mod limits;
#[path = "../support/mod.rs"]
mod support;
mod visibility;
