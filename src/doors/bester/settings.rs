//! Bester settings: the limits from [`Config`] and the configuration file
//! (`HOMEHUB_BESTER_CONFIG`, JSON) with this hub's name, the message handlers and the
//! federation peers:
//!
//! ```json
//! {
//!   "name": "home-a",
//!   "handlers": {
//!     "upper": { "socket": "/run/homehub/upper.sock",
//!                "command": ["python3", "/opt/homehub/examples/bester_upper.py"] },
//!     "chat":  { "socket": "/run/chat/chat.sock" }
//!   },
//!   "peers": {
//!     "home-b": { "address": "192.168.1.20:2222", "secret": "a long random string" }
//!   }
//! }
//! ```
//!
//! Relative paths (`socket`, and the working directory of `command`) are relative to the
//! file's directory. Unknown keys are errors, so a typo cannot silently disable a handler.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use super::protocol::BUILTIN_TYPES;
use crate::config::Config;

/// This hub's name towards peers when the file does not give one.
pub const DEFAULT_NAME: &str = "homehub";

/// Longest handler type, hub name or peer name.
const MAX_NAME: usize = 64;

/// Memory one argon2id hash of the hub's parameters takes (argon2's default m = 19 MiB).
pub const HASH_MEMORY: usize = argon2::Params::DEFAULT_M_COST as usize * 1024;
/// Memory all password hashes running at once may take together: this bounds the number of
/// hashing slots whatever the CPU count (issue 12: a login flood must not take the hub's
/// memory). 48 MiB allows two hashes.
pub const HASH_MEMORY_BUDGET: usize = 48 * 1024 * 1024;
/// How long a login (or password change) waits for a hashing slot before it is answered
/// `busy`.
pub const HASH_WAIT: Duration = Duration::from_secs(3);
/// Requests that may wait for a hashing slot, per slot; with that many waiting, the next
/// is answered `busy` at once. At 20–60 ms per hash, 32 waiters are served within
/// [`HASH_WAIT`].
pub const HASH_QUEUE_PER_SLOT: usize = 32;

/// Failed logins a remote address or a username may have before its attempts are delayed.
pub const THROTTLE_FREE_FAILURES: u32 = 5;
/// Delay after the first failure beyond the free ones; it doubles with every further one.
pub const THROTTLE_BASE_DELAY: Duration = Duration::from_secs(1);
/// Longest delay between two attempts of a throttled address or username.
pub const THROTTLE_MAX_DELAY: Duration = Duration::from_secs(60);
/// An address or username without a failed login for this long is forgotten.
pub const THROTTLE_QUIET: Duration = Duration::from_secs(15 * 60);
/// Addresses (and, separately, usernames) tracked at most; the least recently active are
/// forgotten first when a flood brings more.
pub const THROTTLE_MAX_KEYS: usize = 10_000;

/// Hashing slots: one per CPU less one (so hashes never take every core from the sockets),
/// at least one, and no more than [`HASH_MEMORY_BUDGET`] allows.
pub fn hash_slots(cpus: usize) -> usize {
    let by_memory = (HASH_MEMORY_BUDGET / HASH_MEMORY).max(1);
    cpus.saturating_sub(1).clamp(1, by_memory)
}

/// Everything the Bester door needs to know, fixed at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This hub's name: the username it authenticates with at its peers.
    pub name: String,
    /// Largest frame accepted or sent, in bytes.
    pub max_frame: usize,
    /// How long one handler call (or one delivery to a peer) may take.
    pub handler_timeout: Duration,
    /// Most handlers one message may pass through; most server-to-server hops.
    pub max_chain: usize,
    /// How long a new connection has to authenticate.
    pub login_timeout: Duration,
    /// Outbound queue of one connection (frames), `HOMEHUB_OUTBOUND_QUEUE`.
    pub queue: usize,
    /// Relay packets of this many characters or more are not bridged (the relay's limit).
    pub relay_max_packet: usize,
    /// Password hashes that may run at once ([`hash_slots`] of the CPU count).
    pub hash_slots: usize,
    /// Live connections per remote address (`HOMEHUB_MAX_CONNS_PER_IP`, shared with the
    /// WebSocket doors; 0 = unlimited). The Unix socket counts as one address.
    pub max_conns_per_ip: usize,
    /// Message handlers by `payload.type`.
    pub handlers: HashMap<String, HandlerSpec>,
    /// Peer servers by name.
    pub peers: HashMap<String, PeerSpec>,
}

/// One message handler: where it listens and, optionally, how the hub starts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerSpec {
    /// The `payload.type` it handles.
    pub kind: String,
    /// Its Unix socket (absolute).
    pub socket: PathBuf,
    /// Program and arguments the hub runs (and restarts) for it, if any.
    pub command: Option<Vec<String>>,
    /// Working directory of `command`: the configuration file's directory.
    pub workdir: PathBuf,
}

/// One peer server.
#[derive(Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub name: String,
    /// `host:port` of its Bester listener; needed only to send to it.
    pub address: Option<String>,
    /// Shared secret: what it must present to us, and what we present to it.
    pub secret: String,
}

impl std::fmt::Debug for PeerSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSpec")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("secret", &"<hidden>")
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: Option<String>,
    #[serde(default)]
    handlers: HashMap<String, FileHandler>,
    #[serde(default)]
    peers: HashMap<String, FilePeer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHandler {
    socket: PathBuf,
    command: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePeer {
    address: Option<String>,
    secret: String,
}

/// Hub, peer and handler names: 1–64 chars of `A-Za-z0-9._:-`.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

impl Settings {
    /// Limits from `config`; handlers and peers from the file when `read_file`.
    pub fn load(config: &Config, read_file: bool) -> anyhow::Result<Settings> {
        let (file, base) = match (&config.bester.config, read_file) {
            (Some(path), true) if !path.as_os_str().is_empty() => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let file: File = serde_json::from_str(&text)
                    .with_context(|| format!("parsing {}", path.display()))?;
                let base = path
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from("."));
                (file, base)
            }
            _ => (File::default(), PathBuf::from(".")),
        };
        let base = std::path::absolute(&base).unwrap_or(base);
        let settings = Settings::from_file(config, file, &base).with_context(|| {
            match &config.bester.config {
                Some(p) => format!("in {}", p.display()),
                None => "in the Bester settings".to_owned(),
            }
        })?;
        Ok(settings)
    }

    fn from_file(config: &Config, file: File, base: &Path) -> anyhow::Result<Settings> {
        let name = file.name.unwrap_or_else(|| DEFAULT_NAME.to_owned());
        anyhow::ensure!(
            valid_name(&name),
            "name {name:?} must be 1-{MAX_NAME} chars of A-Za-z0-9._:-"
        );
        let mut handlers = HashMap::new();
        for (kind, h) in file.handlers {
            anyhow::ensure!(
                valid_name(&kind),
                "handler type {kind:?} must be 1-{MAX_NAME} chars of A-Za-z0-9._:-"
            );
            anyhow::ensure!(
                !BUILTIN_TYPES.contains(&kind.as_str()),
                "handler type {kind:?} is a built-in command"
            );
            if let Some(command) = &h.command {
                anyhow::ensure!(
                    command.first().is_some_and(|p| !p.is_empty()),
                    "handler {kind:?}: command must be a non-empty list [program, args...]"
                );
            }
            let socket = base.join(&h.socket);
            handlers.insert(
                kind.clone(),
                HandlerSpec {
                    kind,
                    socket,
                    command: h.command,
                    workdir: base.to_owned(),
                },
            );
        }
        let mut peers = HashMap::new();
        for (peer, p) in file.peers {
            anyhow::ensure!(
                valid_name(&peer),
                "peer name {peer:?} must be 1-{MAX_NAME} chars of A-Za-z0-9._:-"
            );
            anyhow::ensure!(!p.secret.is_empty(), "peer {peer:?}: empty secret");
            if p.secret.len() < 16 {
                tracing::warn!(%peer, "peer secret is shorter than 16 characters");
            }
            peers.insert(
                peer.clone(),
                PeerSpec {
                    name: peer,
                    address: p.address.filter(|a| !a.is_empty()),
                    secret: p.secret,
                },
            );
        }
        Ok(Settings {
            name,
            max_frame: config.bester.max_frame_bytes.max(1),
            handler_timeout: config.bester.handler_timeout,
            max_chain: config.bester.max_chain.max(1),
            login_timeout: config.bester.login_timeout,
            queue: config.outbound_queue.max(1),
            relay_max_packet: config.relay.max_packet,
            hash_slots: hash_slots(std::thread::available_parallelism().map_or(1, |n| n.get())),
            max_conns_per_ip: config.max_conns_per_ip,
            handlers,
            peers,
        })
    }

    /// The peer a `sendServers` target names: by its `address` or by its name.
    pub fn peer_for_target(&self, target: &str) -> Option<&PeerSpec> {
        self.peers
            .values()
            .find(|p| p.address.as_deref() == Some(target))
            .or_else(|| self.peers.get(target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::default_for("127.0.0.1:0".parse().unwrap(), "sqlite::memory:")
    }

    fn parse(json: &str) -> anyhow::Result<Settings> {
        let file: File = serde_json::from_str(json)?;
        Settings::from_file(&config(), file, Path::new("/etc/homehub"))
    }

    #[test]
    fn reads_handlers_and_peers() {
        let s = parse(
            r#"{"name": "a", "handlers": {"up": {"socket": "up.sock", "command": ["python3", "x.py"]}},
                "peers": {"b": {"address": "10.0.0.2:2222", "secret": "0123456789abcdef"}}}"#,
        )
        .unwrap();
        assert_eq!(s.name, "a");
        assert_eq!(s.handlers["up"].socket, Path::new("/etc/homehub/up.sock"));
        assert_eq!(s.peer_for_target("10.0.0.2:2222").unwrap().name, "b");
        assert_eq!(s.peer_for_target("b").unwrap().name, "b");
        assert!(s.peer_for_target("10.0.0.3:2222").is_none());
        assert!(!format!("{:?}", s.peers["b"]).contains("0123"));
    }

    #[test]
    fn hashing_slots_follow_the_cpus_within_the_memory_budget() {
        assert_eq!(hash_slots(1), 1);
        assert_eq!(hash_slots(2), 1);
        assert_eq!(hash_slots(3), 2);
        assert_eq!(hash_slots(64), 2);
        assert!(hash_slots(64) * HASH_MEMORY <= HASH_MEMORY_BUDGET);
    }

    #[test]
    fn refuses_bad_files() {
        assert!(parse(r#"{"handlers": {"close": {"socket": "x"}}}"#).is_err());
        assert!(parse(r#"{"handlers": {"x": {"socket": "x", "command": []}}}"#).is_err());
        assert!(parse(r#"{"handlers": {"x": {"sock": "x"}}}"#).is_err());
        assert!(parse(r#"{"peers": {"b": {"secret": ""}}}"#).is_err());
        assert!(parse(r#"{"name": "has space"}"#).is_err());
    }
}
