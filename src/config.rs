//! Configuration: one struct, parsed once from flags and the environment (`.env` is loaded
//! first when present). Every field is listed in `.env.example` with its default.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// How devices authenticate on the device doors (Phoenix socket, raw relay, Compendium).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Any device may connect under any name (a home LAN behind a firewall).
    Open,
    /// Devices need a signed token (`homehub token issue NAME`), passed as the `token`
    /// connect param (or Phoenix's `authToken`); a held lock can only be joined by its
    /// holder.
    Token,
}

/// Whether server-initiated closes of Phoenix sockets carry a WebSocket close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CloseFrames {
    /// A close frame, except to clients that send JSON in binary frames (lock firmware).
    Auto,
    /// A close frame to every client.
    Always,
}

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

    /// Seconds a peer may keep its TCP receive window closed (or leave sent data
    /// unacknowledged) before the kernel drops the connection (`TCP_USER_TIMEOUT`): the
    /// slow-consumer policy for readers whose backlog sits in kernel buffers, and dead-peer
    /// detection. 0 = the kernel's default (about 15 minutes of retransmissions).
    #[arg(
        long,
        env = "HOMEHUB_SEND_TIMEOUT_SECS",
        default_value_t = 20,
        global = true
    )]
    pub send_timeout_secs: u64,

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

    /// Feature flags a lock gets when it first joins (comma-separated). Lock firmware
    /// starts its lock feature only when the flags contain `lock`; an administrator changes
    /// a lock's flags with `homehub lock set SERIAL --flags …`. An empty value: `[]`.
    #[arg(
        long,
        env = "HOMEHUB_LOCK_FEATURE_FLAGS",
        default_value = "lock",
        value_delimiter = ',',
        global = true
    )]
    pub lock_feature_flags: Vec<String>,

    /// How the hub ends a Phoenix socket it closes (admin disconnect, idle timeout,
    /// replacement, shutdown): `auto` sends a WebSocket close frame, except to clients
    /// that send their JSON in binary frames (the lock firmware's Erlang client, which
    /// never notices a close frame and would stay offline), whose TCP connection is ended
    /// without one; `always` sends close frames to every client.
    #[arg(
        long,
        env = "HOMEHUB_CLOSE_FRAMES",
        value_enum,
        default_value_t = CloseFrames::Auto,
        global = true
    )]
    pub close_frames: CloseFrames,

    /// Seconds a graceful shutdown waits for connections to close before giving up.
    #[arg(
        long,
        env = "HOMEHUB_SHUTDOWN_GRACE_SECS",
        default_value_t = 5,
        global = true
    )]
    pub shutdown_grace_secs: u64,

    /// Address of the Bester TCP listener (length-prefixed JSON, docs/bester.md); an empty
    /// value disables it.
    // `std::option::Option` (not `Option`) so clap keeps the default and lets the parser
    // turn an empty value into `None`.
    #[arg(
        long,
        env = "HOMEHUB_BESTER_BIND",
        default_value = "127.0.0.1:2222",
        value_parser = parse_optional_addr,
        global = true
    )]
    pub bester_bind: std::option::Option<SocketAddr>,

    /// `open` or `token`: whether devices need a token to connect (see README, Security).
    #[arg(
        long,
        env = "HOMEHUB_AUTH",
        value_enum,
        default_value = "open",
        global = true
    )]
    pub auth: AuthMode,

    /// Allow `open` mode on a non-loopback bind address (refused at start otherwise).
    #[arg(
        long,
        env = "HOMEHUB_ALLOW_OPEN_NETWORK",
        default_value_t = false,
        global = true
    )]
    pub allow_open_network: bool,

    /// Key that signs device tokens (at least 32 characters). Unset: a random key is
    /// generated on first start and kept in the database.
    #[arg(
        long,
        env = "HOMEHUB_SECRET_KEY",
        hide_env_values = true,
        global = true
    )]
    pub secret_key: Option<String>,

    /// Lifetime of a device token when `homehub token issue` gives no `--ttl`.
    #[arg(
        long,
        env = "HOMEHUB_TOKEN_TTL_SECS",
        default_value_t = 31_536_000,
        global = true
    )]
    pub token_ttl_secs: u64,

    /// Browser origins allowed to connect: empty = the hub's own host only, `*` = any, or
    /// a comma-separated list (`https://app.example.com`, `*.home.lan`, `http://localhost:3000`).
    /// Clients that send no `Origin` (devices, native apps) are always allowed.
    #[arg(
        long,
        env = "HOMEHUB_ALLOWED_ORIGINS",
        default_value = "",
        global = true
    )]
    pub allowed_origins: String,

    /// Connections at once from one remote address (HTTP connections at accept, and live
    /// sockets at upgrade); 0 = unlimited.
    #[arg(
        long,
        env = "HOMEHUB_MAX_CONNS_PER_IP",
        default_value_t = 4096,
        global = true
    )]
    pub max_conns_per_ip: usize,

    /// Messages per second one socket may push (heartbeats excepted); past it they are
    /// answered with an error. 0 = unlimited.
    #[arg(long, env = "HOMEHUB_RATE_LIMIT", default_value_t = 100, global = true)]
    pub rate_limit: u32,

    /// Burst allowance of the per-socket rate limit.
    #[arg(long, env = "HOMEHUB_RATE_BURST", default_value_t = 200, global = true)]
    pub rate_burst: u32,

    /// Seconds a new connection has to finish its TLS handshake and send its HTTP request.
    #[arg(
        long,
        env = "HOMEHUB_HANDSHAKE_TIMEOUT_SECS",
        default_value_t = 5,
        global = true
    )]
    pub handshake_timeout_secs: u64,

    /// PEM certificate chain; with `HOMEHUB_TLS_KEY`, the hub serves `https://`/`wss://` only.
    #[arg(long, env = "HOMEHUB_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for `HOMEHUB_TLS_CERT`.
    #[arg(long, env = "HOMEHUB_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,

    /// Milliseconds a long-poll GET is held when nothing is queued; a session not polled for
    /// two windows is closed.
    #[arg(
        long,
        env = "HOMEHUB_LONGPOLL_WINDOW_MS",
        default_value_t = 10_000,
        global = true
    )]
    pub longpoll_window_ms: u64,

    /// Path of an additional Bester listener on a Unix socket (unset: none).
    #[arg(long, env = "HOMEHUB_BESTER_SOCKET", global = true)]
    pub bester_socket: Option<PathBuf>,

    /// JSON file with the Bester message handlers, federation peers and this hub's name
    /// (format in docs/bester.md; unset: no handlers, no peers).
    #[arg(long, env = "HOMEHUB_BESTER_CONFIG", global = true)]
    pub bester_config: Option<PathBuf>,

    /// Largest Bester message in bytes (the 4-byte length prefix); a larger prefix gets
    /// `too_large` and the connection is closed. Also caps handler and peer replies.
    #[arg(
        long,
        env = "HOMEHUB_BESTER_MAX_FRAME_BYTES",
        default_value_t = 1_048_576,
        global = true
    )]
    pub bester_max_frame_bytes: usize,

    /// Milliseconds a Bester message handler (or a peer server) has to answer one message.
    #[arg(
        long,
        env = "HOMEHUB_BESTER_HANDLER_TIMEOUT_MS",
        default_value_t = 5_000,
        global = true
    )]
    pub bester_handler_timeout_ms: u64,

    /// Most message handlers one Bester message may pass through (`sendHandler` chains),
    /// and most server-to-server hops.
    #[arg(
        long,
        env = "HOMEHUB_BESTER_MAX_CHAIN",
        default_value_t = 8,
        global = true
    )]
    pub bester_max_chain: usize,

    /// Seconds a new Bester connection has to authenticate before it is closed.
    #[arg(
        long,
        env = "HOMEHUB_BESTER_LOGIN_TIMEOUT_SECS",
        default_value_t = 10,
        global = true
    )]
    pub bester_login_timeout_secs: u64,
}

/// `HOMEHUB_BESTER_BIND`: a socket address, or empty for "disabled".
fn parse_optional_addr(s: &str) -> Result<Option<SocketAddr>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|e| format!("{s:?} is not an address like 127.0.0.1:2222: {e}"))
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
            send_timeout_secs: 20,
            max_channels: 100,
            relay_max_packet: 1024,
            compendium_max_bytes: 65_536,
            pair_ttl_secs: 300,
            lock_feature_flags: vec!["lock".to_owned()],
            close_frames: CloseFrames::Auto,
            shutdown_grace_secs: 5,
            // Disabled, so tests that run many hubs at once never bind port 2222.
            bester_bind: None,
            bester_socket: None,
            bester_config: None,
            bester_max_frame_bytes: 1_048_576,
            bester_handler_timeout_ms: 5_000,
            bester_max_chain: 8,
            bester_login_timeout_secs: 10,
            auth: AuthMode::Open,
            allow_open_network: false,
            secret_key: None,
            token_ttl_secs: 31_536_000,
            allowed_origins: String::new(),
            max_conns_per_ip: 4096,
            rate_limit: 100,
            rate_burst: 200,
            handshake_timeout_secs: 5,
            tls_cert: None,
            tls_key: None,
            longpoll_window_ms: 10_000,
        }
    }
}
