//! Integration tests: the real hub on port 0 with a temp SQLite file, driven over real
//! WebSockets and HTTP. One binary, one module per area.

mod admin;
mod common;
mod compendium;
mod firmware;
mod lock_admin;
mod lock_channel;
mod longpoll;
mod presence;
mod protocol;
mod relay;
mod security;
