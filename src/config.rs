//! Configuration: one struct, parsed once from flags and the environment (`.env` is loaded
//! first when present), with a sub-struct per door for the settings only that door reads. Every field is listed in `.env.example` with its default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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
    #[arg(long, env = "HOMEHUB_BIND", default_value = "127.0.0.1:4000")]
    pub bind: SocketAddr,

    /// Database URL; SQLite files are created if missing.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://homehub.db")]
    pub database_url: String,

    /// Bearer token required by the admin API (and sent by the CLI). When unset, the admin
    /// API answers only requests from loopback addresses.
    #[arg(long, env = "HOMEHUB_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Seconds without any inbound frame after which a WebSocket is closed (1001).
    #[arg(
        long = "idle-timeout-secs",
        env = "HOMEHUB_IDLE_TIMEOUT_SECS",
        default_value = "60",
        value_parser = parse_secs_at_least_1
    )]
    pub idle_timeout: Duration,

    /// Largest accepted WebSocket message, in bytes; larger ones close the socket (1009).
    #[arg(long, env = "HOMEHUB_MAX_FRAME_BYTES", default_value_t = 1_048_576)]
    pub max_frame_bytes: usize,

    /// Frames that may wait for one slow reader before its connection is closed (1008).
    #[arg(long, env = "HOMEHUB_OUTBOUND_QUEUE", default_value_t = 256)]
    pub outbound_queue: usize,

    /// Seconds a peer may keep its TCP receive window closed (or leave sent data
    /// unacknowledged) before the kernel drops the connection (`TCP_USER_TIMEOUT`): the
    /// slow-consumer policy for readers whose backlog sits in kernel buffers, and dead-peer
    /// detection. 0 = the kernel's default (about 15 minutes of retransmissions).
    #[arg(
        long = "send-timeout-secs",
        env = "HOMEHUB_SEND_TIMEOUT_SECS",
        default_value = "20",
        value_parser = parse_secs
    )]
    pub send_timeout: Duration,

    /// Lifetime of a pairing request when the admin does not give `ttl_secs`.
    #[arg(
        long = "pair-ttl-secs",
        env = "HOMEHUB_PAIR_TTL_SECS",
        default_value = "300",
        value_parser = parse_secs_at_least_1
    )]
    pub pair_ttl: Duration,

    /// How long a lock has, after the hub pushed it a new intended state, to report that
    /// state; then it is shown as drifting and the hub pushes again, waiting twice as long
    /// each time (up to `HOMEHUB_STATE_RETRY_MAX_MS`).
    #[arg(
        long = "state-drift-ms",
        env = "HOMEHUB_STATE_DRIFT_MS",
        default_value = "30000",
        value_parser = parse_millis_at_least_10
    )]
    pub state_drift: Duration,

    /// The longest pause between two pushes of the intended state to a drifting lock.
    #[arg(
        long = "state-retry-max-ms",
        env = "HOMEHUB_STATE_RETRY_MAX_MS",
        default_value = "300000",
        value_parser = parse_millis_at_least_10
    )]
    pub state_retry_max: Duration,

    /// Feature flags a lock gets when it first joins (comma-separated). Lock firmware
    /// starts its lock feature only when the flags contain `lock`; an administrator changes
    /// a lock's flags with `homehub lock set SERIAL --flags …`. An empty value: `[]`.
    #[arg(
        long,
        env = "HOMEHUB_LOCK_FEATURE_FLAGS",
        default_value = "lock",
        value_delimiter = ','
    )]
    pub lock_feature_flags: Vec<String>,

    /// Seconds a graceful shutdown waits for connections to close before giving up.
    #[arg(
        long = "shutdown-grace-secs",
        env = "HOMEHUB_SHUTDOWN_GRACE_SECS",
        default_value = "5",
        value_parser = parse_secs
    )]
    pub shutdown_grace: Duration,

    /// `open` or `token`: whether devices need a token to connect (see README, Security).
    #[arg(long, env = "HOMEHUB_AUTH", value_enum, default_value = "open")]
    pub auth: AuthMode,

    /// Allow `open` mode on a non-loopback bind address (refused at start otherwise).
    #[arg(long, env = "HOMEHUB_ALLOW_OPEN_NETWORK", default_value_t = false)]
    pub allow_open_network: bool,

    /// Key that signs device tokens (at least 32 characters). Unset: a random key is
    /// generated on first start and kept in the database.
    #[arg(long, env = "HOMEHUB_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,

    /// Lifetime of a device token when `homehub token issue` gives no `--ttl`.
    #[arg(
        long = "token-ttl-secs",
        env = "HOMEHUB_TOKEN_TTL_SECS",
        default_value = "31536000",
        value_parser = parse_secs_at_least_1
    )]
    pub token_ttl: Duration,

    /// Browser origins allowed to connect: empty = the hub's own host only, `*` = any, or
    /// a comma-separated list (`https://app.example.com`, `*.home.lan`, `http://localhost:3000`).
    /// Clients that send no `Origin` (devices, native apps) are always allowed.
    #[arg(long, env = "HOMEHUB_ALLOWED_ORIGINS", default_value = "")]
    pub allowed_origins: String,

    /// Connections at once from one remote address (HTTP connections at accept, and live
    /// sockets at upgrade); 0 = unlimited.
    #[arg(long, env = "HOMEHUB_MAX_CONNS_PER_IP", default_value_t = 4096)]
    pub max_conns_per_ip: usize,

    /// Messages per second one socket may push (heartbeats excepted); past it they are
    /// answered with an error. 0 = unlimited.
    #[arg(long, env = "HOMEHUB_RATE_LIMIT", default_value_t = 100)]
    pub rate_limit: u32,

    /// Burst allowance of the per-socket rate limit.
    #[arg(long, env = "HOMEHUB_RATE_BURST", default_value_t = 200)]
    pub rate_burst: u32,

    /// Seconds a new connection has to finish its TLS handshake and send its HTTP request.
    #[arg(
        long = "handshake-timeout-secs",
        env = "HOMEHUB_HANDSHAKE_TIMEOUT_SECS",
        default_value = "5",
        value_parser = parse_secs_at_least_1
    )]
    pub handshake_timeout: Duration,

    /// PEM certificate chain; with `HOMEHUB_TLS_KEY`, the hub serves `https://`/`wss://` only.
    #[arg(long, env = "HOMEHUB_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for `HOMEHUB_TLS_CERT`.
    #[arg(long, env = "HOMEHUB_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Settings of the Phoenix door (`/socket/websocket`, `/socket/longpoll`).
    #[command(flatten)]
    pub phoenix: PhoenixSettings,

    /// Settings of the raw device relay (`/relay`) and the Phoenix `relay` topic.
    #[command(flatten)]
    pub relay: RelaySettings,

    /// Settings of the Compendium relay (`/compendium`).
    #[command(flatten)]
    pub compendium: CompendiumSettings,

    /// Settings of the Bester door (length-prefixed JSON over TCP, docs/bester.md).
    #[command(flatten)]
    pub bester: BesterSettings,

    /// Settings of a cluster of hub nodes on NATS (docs/cluster.md).
    #[command(flatten)]
    pub cluster: ClusterSettings,
}

/// Several hub processes acting as one on NATS (docs/cluster.md). Unset `HOMEHUB_CLUSTER`:
/// a single hub.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Cluster")]
pub struct ClusterSettings {
    /// The NATS server(s) that make this hub a node of a cluster, e.g.
    /// `nats://10.0.0.5:4222` (several: comma-separated). Needs a PostgreSQL store.
    #[arg(id = "cluster_url", long = "cluster", env = "HOMEHUB_CLUSTER")]
    pub url: Option<String>,

    /// This node's name in the cluster (logs, `/api/cluster`, `/api/devices`); default:
    /// the host name.
    #[arg(id = "cluster_node", long = "node", env = "HOMEHUB_NODE")]
    pub node: Option<String>,

    /// The first token of every subject the cluster uses, so several clusters can share
    /// one NATS account.
    #[arg(
        id = "cluster_subject_prefix",
        long = "cluster-subject-prefix",
        env = "HOMEHUB_CLUSTER_SUBJECT_PREFIX",
        default_value = "homehub"
    )]
    pub subject_prefix: String,

    /// A NATS credentials file (`.creds`: user JWT and NKey seed).
    #[arg(
        id = "cluster_credentials",
        long = "cluster-credentials",
        env = "HOMEHUB_CLUSTER_CREDENTIALS"
    )]
    pub credentials: Option<PathBuf>,

    /// PEM file of the CA that signed the NATS server's certificate; setting it requires TLS.
    #[arg(
        id = "cluster_tls_ca",
        long = "cluster-tls-ca",
        env = "HOMEHUB_CLUSTER_TLS_CA"
    )]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate for NATS servers that verify clients (with
    /// `HOMEHUB_CLUSTER_TLS_KEY`).
    #[arg(
        id = "cluster_tls_cert",
        long = "cluster-tls-cert",
        env = "HOMEHUB_CLUSTER_TLS_CERT"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `HOMEHUB_CLUSTER_TLS_CERT`.
    #[arg(
        id = "cluster_tls_key",
        long = "cluster-tls-key",
        env = "HOMEHUB_CLUSTER_TLS_KEY"
    )]
    pub tls_key: Option<PathBuf>,

    /// Milliseconds without a heartbeat after which the other nodes consider a node gone
    /// and remove its Presence entries (nodes heartbeat every third of it).
    #[arg(
        id = "cluster_node_timeout",
        long = "cluster-node-timeout-ms",
        env = "HOMEHUB_CLUSTER_NODE_TIMEOUT_MS",
        default_value = "3000",
        value_parser = parse_millis_at_least_10
    )]
    pub node_timeout: Duration,

    /// Milliseconds a cross-node request (a relay packet, a disconnect) waits for the node
    /// that holds the target before the sender is told the fabric is unavailable.
    #[arg(
        id = "cluster_request_timeout",
        long = "cluster-request-timeout-ms",
        env = "HOMEHUB_CLUSTER_REQUEST_TIMEOUT_MS",
        default_value = "2000",
        value_parser = parse_millis_at_least_10
    )]
    pub request_timeout: Duration,
}

/// The Phoenix door (`/socket/websocket`, `/socket/longpoll`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Phoenix door")]
pub struct PhoenixSettings {
    /// Channels one connection may have joined at once (Phoenix's default is 100).
    #[arg(
        id = "max_channels",
        long = "max-channels",
        env = "HOMEHUB_MAX_CHANNELS",
        default_value_t = 100
    )]
    pub max_channels: usize,

    /// How the hub ends a Phoenix socket it closes (admin disconnect, idle timeout,
    /// replacement, shutdown): `auto` sends a WebSocket close frame, except to clients
    /// that send their JSON in binary frames (the lock firmware's Erlang client, which
    /// never notices a close frame and would stay offline), whose TCP connection is ended
    /// without one; `always` sends close frames to every client.
    #[arg(
        id = "close_frames",
        long = "close-frames",
        env = "HOMEHUB_CLOSE_FRAMES",
        value_enum,
        default_value_t = CloseFrames::Auto
    )]
    pub close_frames: CloseFrames,

    /// Milliseconds a long-poll GET is held when nothing is queued; a session not polled for
    /// two windows is closed.
    #[arg(
        id = "longpoll_window",
        long = "longpoll-window-ms",
        env = "HOMEHUB_LONGPOLL_WINDOW_MS",
        default_value = "10000",
        value_parser = parse_millis_at_least_10
    )]
    pub longpoll_window: Duration,
}

/// The raw device relay (`/relay`) and the Phoenix `relay` topic.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Device relay")]
pub struct RelaySettings {
    /// Relay packets whose JSON is this many characters or more are refused (the seed's
    /// limit is 1024).
    #[arg(
        id = "relay_max_packet",
        long = "relay-max-packet",
        env = "HOMEHUB_RELAY_MAX_PACKET",
        default_value_t = 1024
    )]
    pub max_packet: usize,
}

/// The Compendium relay (`/compendium`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Compendium relay")]
pub struct CompendiumSettings {
    /// Largest Compendium message in bytes; larger ones get `ERR` 413.
    #[arg(
        id = "compendium_max_bytes",
        long = "compendium-max-bytes",
        env = "HOMEHUB_COMPENDIUM_MAX_BYTES",
        default_value_t = 65_536
    )]
    pub max_bytes: usize,
}

/// The Bester door (length-prefixed JSON over TCP, docs/bester.md).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Bester door")]
pub struct BesterSettings {
    /// Address of the Bester TCP listener (length-prefixed JSON, docs/bester.md); an empty
    /// value disables it.
    // `std::option::Option` (not `Option`) so clap keeps the default and lets the parser
    // turn an empty value into `None`.
    #[arg(
        id = "bester_bind",
        long = "bester-bind",
        env = "HOMEHUB_BESTER_BIND",
        default_value = "127.0.0.1:2222",
        value_parser = parse_optional_addr
    )]
    pub bind: std::option::Option<SocketAddr>,

    /// Path of an additional Bester listener on a Unix socket (unset: none).
    #[arg(
        id = "bester_socket",
        long = "bester-socket",
        env = "HOMEHUB_BESTER_SOCKET"
    )]
    pub socket: Option<PathBuf>,

    /// JSON file with the Bester message handlers, federation peers and this hub's name
    /// (format in docs/bester.md; unset: no handlers, no peers).
    #[arg(
        id = "bester_config",
        long = "bester-config",
        env = "HOMEHUB_BESTER_CONFIG"
    )]
    pub config: Option<PathBuf>,

    /// Largest Bester message in bytes (the 4-byte length prefix); a larger prefix gets
    /// `too_large` and the connection is closed. Also caps handler and peer replies.
    #[arg(
        id = "bester_max_frame_bytes",
        long = "bester-max-frame-bytes",
        env = "HOMEHUB_BESTER_MAX_FRAME_BYTES",
        default_value_t = 1_048_576
    )]
    pub max_frame_bytes: usize,

    /// Milliseconds a Bester message handler (or a peer server) has to answer one message.
    #[arg(
        id = "bester_handler_timeout",
        long = "bester-handler-timeout-ms",
        env = "HOMEHUB_BESTER_HANDLER_TIMEOUT_MS",
        default_value = "5000",
        value_parser = parse_millis_at_least_1
    )]
    pub handler_timeout: Duration,

    /// Most message handlers one Bester message may pass through (`sendHandler` chains),
    /// and most server-to-server hops.
    #[arg(
        id = "bester_max_chain",
        long = "bester-max-chain",
        env = "HOMEHUB_BESTER_MAX_CHAIN",
        default_value_t = 8
    )]
    pub max_chain: usize,

    /// Seconds a new Bester connection has to authenticate before it is closed.
    #[arg(
        id = "bester_login_timeout",
        long = "bester-login-timeout-secs",
        env = "HOMEHUB_BESTER_LOGIN_TIMEOUT_SECS",
        default_value = "10",
        value_parser = parse_secs_at_least_1
    )]
    pub login_timeout: Duration,
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
    /// This hub's node name: `HOMEHUB_NODE`, else the host name, else `homehub`.
    pub fn node_name(&self) -> String {
        self.cluster
            .node
            .clone()
            .filter(|n| !n.trim().is_empty())
            .or_else(|| {
                nix::unistd::gethostname()
                    .ok()
                    .and_then(|h| h.into_string().ok())
                    .filter(|h| !h.is_empty())
            })
            .unwrap_or_else(|| "homehub".to_owned())
    }

    /// The shipped defaults (an empty command line; `HOMEHUB_*` variables still apply)
    /// with the addresses a test or an embedding chooses: `bind`, `database_url`, and no
    /// Bester listener (many hubs run at once in the tests; set `bester.bind` to have one).
    /// Panics if a `HOMEHUB_*` variable in the environment is invalid.
    pub fn default_for(bind: SocketAddr, database_url: &str) -> Config {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            config: Config,
        }
        let mut config = <Defaults as clap::Parser>::try_parse_from(["homehub"])
            .map(|d| d.config)
            .unwrap_or_else(|e| panic!("the shipped defaults must parse: {e}"));
        config.bind = bind;
        config.database_url = database_url.to_owned();
        config.bester.bind = None;
        config
    }
}

/// A number of seconds (`HOMEHUB_*_SECS`).
fn parse_secs(s: &str) -> Result<Duration, String> {
    s.trim()
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| format!("{s:?} is not a whole number of seconds: {e}"))
}

/// A number of milliseconds (`HOMEHUB_*_MS`).
fn parse_millis(s: &str) -> Result<Duration, String> {
    s.trim()
        .parse::<u64>()
        .map(Duration::from_millis)
        .map_err(|e| format!("{s:?} is not a whole number of milliseconds: {e}"))
}

fn at_least(d: Duration, min: Duration, what: &str) -> Result<Duration, String> {
    if d < min {
        return Err(format!("must be at least {what}"));
    }
    Ok(d)
}

fn parse_secs_at_least_1(s: &str) -> Result<Duration, String> {
    at_least(parse_secs(s)?, Duration::from_secs(1), "1 second")
}

fn parse_millis_at_least_1(s: &str) -> Result<Duration, String> {
    at_least(parse_millis(s)?, Duration::from_millis(1), "1 millisecond")
}

fn parse_millis_at_least_10(s: &str) -> Result<Duration, String> {
    at_least(
        parse_millis(s)?,
        Duration::from_millis(10),
        "10 milliseconds",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[derive(clap::Parser)]
    struct Settings {
        #[command(flatten)]
        config: Config,
    }

    /// `KEY=value` lines of `.env.example`, commented (`# KEY=`) or not.
    fn env_example() -> Vec<(String, String, bool)> {
        let text = include_str!("../.env.example");
        text.lines()
            .filter_map(|line| {
                let (commented, rest) = match line.strip_prefix('#') {
                    Some(rest) => (true, rest.trim_start()),
                    None => (false, line),
                };
                let (key, value) = rest.split_once('=')?;
                let is_key =
                    !key.is_empty() && key.bytes().all(|b| b.is_ascii_uppercase() || b == b'_');
                is_key.then(|| (key.to_owned(), value.to_owned(), commented))
            })
            .collect()
    }

    #[test]
    fn every_setting_is_in_env_example_with_its_default() {
        let example = env_example();
        let command = Settings::command();
        let mut envs = Vec::new();
        for arg in command.get_arguments() {
            let Some(env) = arg.get_env() else { continue };
            let env = env.to_string_lossy().into_owned();
            let line = example.iter().find(|(k, _, _)| *k == env);
            let Some((_, value, commented)) = line else {
                panic!("{env} is not in .env.example");
            };
            let default: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            if default.is_empty() {
                assert!(
                    *commented,
                    "{env} has no default, so .env.example comments it out"
                );
            } else {
                assert!(!commented, "{env} has a default, so .env.example sets it");
                assert_eq!(value, &default.join(","), "{env}'s default in .env.example");
            }
            envs.push(env);
        }
        for (key, _, commented) in &example {
            let admin_only = ["HOMEHUB_URL", "HOMEHUB_CA_CERT", "RUST_LOG"];
            if !commented && !admin_only.contains(&key.as_str()) {
                assert!(
                    envs.contains(key),
                    ".env.example sets {key}, which is no setting"
                );
            }
        }
    }

    #[test]
    fn the_shipped_defaults_parse_into_typed_settings() {
        let config = Config::default_for("127.0.0.1:0".parse().expect("addr"), "sqlite::memory:");
        assert_eq!(config.idle_timeout, Duration::from_secs(60));
        assert_eq!(
            config.phoenix.longpoll_window,
            Duration::from_millis(10_000)
        );
        assert_eq!(config.bester.handler_timeout, Duration::from_millis(5_000));
        assert_eq!(config.phoenix.close_frames, CloseFrames::Auto);
        assert_eq!(config.lock_feature_flags, ["lock"]);
        assert_eq!(config.auth, AuthMode::Open);
    }

    #[test]
    fn durations_are_validated_once_at_parse_time() {
        let parse = |args: &[&str]| {
            <Settings as clap::Parser>::try_parse_from(
                std::iter::once("homehub").chain(args.iter().copied()),
            )
        };
        assert!(parse(&["--idle-timeout-secs", "0"]).is_err());
        assert!(parse(&["--longpoll-window-ms", "5"]).is_err());
        assert!(parse(&["--pair-ttl-secs", "soon"]).is_err());
        let ok = parse(&["--idle-timeout-secs", "2", "--send-timeout-secs", "0"])
            .expect("valid durations");
        assert_eq!(ok.config.idle_timeout, Duration::from_secs(2));
        assert_eq!(ok.config.send_timeout, Duration::ZERO);
    }
}
