//! Configuration: one struct, parsed once from flags and the environment (`.env` is loaded
//! first when present). Every field is listed in `.env.example` with its default.

use std::net::SocketAddr;

use clap::Args;

/// Settings of the running hub. Each field's doc comment is its `--help` text.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address of the HTTP/WebSocket listener (Phoenix socket, relays, admin API).
    #[arg(
        long,
        env = "HOMEHUB_BIND",
        default_value = "127.0.0.1:4000",
        global = true
    )]
    pub bind: SocketAddr,

    /// Database URL; SQLite files are created if missing.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://homehub.db",
        global = true
    )]
    pub database_url: String,

    /// Bearer token required by the admin API (and sent by the CLI). When unset, the admin
    /// API answers only requests from loopback addresses.
    #[arg(
        long,
        env = "HOMEHUB_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub admin_token: Option<String>,

    /// Seconds without any inbound frame after which a WebSocket is closed (1001).
    #[arg(
        long,
        env = "HOMEHUB_IDLE_TIMEOUT_SECS",
        default_value_t = 60,
        global = true
    )]
    pub idle_timeout_secs: u64,

    /// Largest accepted WebSocket message, in bytes; larger ones close the socket (1009).
    #[arg(
        long,
        env = "HOMEHUB_MAX_FRAME_BYTES",
        default_value_t = 1_048_576,
        global = true
    )]
    pub max_frame_bytes: usize,

    /// Frames that may wait for one slow reader before its connection is closed (1008).
    #[arg(
        long,
        env = "HOMEHUB_OUTBOUND_QUEUE",
        default_value_t = 256,
        global = true
    )]
    pub outbound_queue: usize,

    /// Channels one connection may have joined at once (Phoenix's default is 100).
    #[arg(
        long,
        env = "HOMEHUB_MAX_CHANNELS",
        default_value_t = 100,
        global = true
    )]
    pub max_channels: usize,

    /// Relay packets whose JSON is this many characters or more are refused (the seed's
    /// limit is 1024).
    #[arg(
        long,
        env = "HOMEHUB_RELAY_MAX_PACKET",
        default_value_t = 1024,
        global = true
    )]
    pub relay_max_packet: usize,

    /// Largest Compendium message in bytes; larger ones get `ERR` 413.
    #[arg(
        long,
        env = "HOMEHUB_COMPENDIUM_MAX_BYTES",
        default_value_t = 65_536,
        global = true
    )]
    pub compendium_max_bytes: usize,

    /// Lifetime of a pairing request when the admin does not give `ttl_secs`.
    #[arg(
        long,
        env = "HOMEHUB_PAIR_TTL_SECS",
        default_value_t = 300,
        global = true
    )]
    pub pair_ttl_secs: u64,

    /// Seconds a graceful shutdown waits for connections to close before giving up.
    #[arg(
        long,
        env = "HOMEHUB_SHUTDOWN_GRACE_SECS",
        default_value_t = 5,
        global = true
    )]
    pub shutdown_grace_secs: u64,
}

impl Config {
    /// A configuration with every default, for tests and embedding.
    pub fn default_for(bind: SocketAddr, database_url: &str) -> Config {
        Config {
            bind,
            database_url: database_url.to_owned(),
            admin_token: None,
            idle_timeout_secs: 60,
            max_frame_bytes: 1_048_576,
            outbound_queue: 256,
            max_channels: 100,
            relay_max_packet: 1024,
            compendium_max_bytes: 65_536,
            pair_ttl_secs: 300,
            shutdown_grace_secs: 5,
        }
    }
}
