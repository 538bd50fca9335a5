//! The Bester door (spec §4, seed: Bester protocol; the protocol as implemented is in
//! `docs/bester.md`): `[4-byte little-endian length][JSON]` messages over TCP and, optionally,
//! a Unix socket.
//!
//! How a message travels:
//!
//! * [`Listeners`] accepts connections (TCP, Unix) and spawns one [`connection`] task per
//!   connection on the hub's tracker, under the hub's shutdown token. The door runs on a
//!   runtime thread of its own (`bester`), so a flood of Bester connections queues behind
//!   itself and not in front of the WebSocket devices' tasks (issue 12).
//! * [`codec`] frames bytes (tokio-util's length-delimited codec with a cap); [`protocol`]
//!   decodes a frame once into a typed [`protocol::Message`] (header, typed [`protocol::Request`])
//!   and encodes every frame the hub sends. Nothing past it reads wire JSON, except the
//!   opaque `payload.data` that is forwarded untouched.
//! * [`connection`] runs the per-connection state machine: the first message authenticates
//!   a user ([`auth`], argon2 hashes in the store) or a peer server ([`federation`]); built-ins
//!   run in place; any other `payload.type` goes to [`dispatch`].
//! * [`dispatch`] calls the message handler for the type ([`handlers`], an external process
//!   on a Unix socket, with a timeout), follows `sendHandler` chains, and carries out
//!   `sendClients` ([`sessions`], or a relay device as a bridge) and `sendServers`
//!   ([`federation`]). Handler replies are decoded once by [`reply`].
//! * [`sessions`] is the Bester view of its connections in the core registry: each is a
//!   registry `Conn` (door `bester`) whose bounded outbox is drained by its own writer
//!   task, so a slow reader never stalls anyone else; logged-in users are core names.
//! * [`settings`] reads the handler/peer configuration file; [`admin`] and [`cli`] manage
//!   users.
//! * A login flood (issue 12) meets three limits: the accept loops cap live connections
//!   per remote address (`HOMEHUB_MAX_CONNS_PER_IP`, counted in the registry together with
//!   the WebSocket doors'); [`throttle`] refuses, without hashing, logins from addresses
//!   and for usernames that failed too often lately; and [`auth::Hashing`] lets only a
//!   few argon2 hashes (19 MiB each) run at once, a bounded number waiting at most
//!   [`settings::HASH_WAIT`] for a slot, and answers the others `busy` at once.

pub mod auth;
pub mod codec;
pub mod connection;
pub mod dispatch;
pub mod federation;
pub mod handlers;
pub mod protocol;
pub mod reply;
pub mod sessions;
pub mod settings;
pub mod throttle;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, UnixListener};

use crate::config::Config;

use protocol::{Outcome, Status};
pub use sessions::Remote;
pub use settings::Settings;

/// What the Bester door's tasks use: its own state and the hub parts it needs.
pub struct Ctx {
    pub bester: Bester,
    pub store: crate::store::Store,
    pub registry: Arc<crate::core::Registry>,
    /// Delivery to relay devices (the bridge).
    pub fabric: Arc<dyn crate::core::Fabric>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Every connection task is spawned on this tracker so shutdown can wait for them.
    pub tracker: tokio_util::task::TaskTracker,
    /// Cancelled once, at shutdown.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// `TCP_USER_TIMEOUT` of Bester connections (HOMEHUB_SEND_TIMEOUT_SECS).
    pub send_timeout: Duration,
}

/// The Bester door's shared state, one per hub.
pub struct Bester {
    /// Limits, handlers, peers and this hub's name (fixed at start).
    pub settings: Settings,
    /// The slots every password hash and verification runs in.
    pub hashing: auth::Hashing,
    /// Failed logins by remote address and by username.
    pub throttle: throttle::Throttle,
}

impl Bester {
    /// Reads the Bester settings; the configuration file is read only when a listener is
    /// enabled (a disabled door needs no handlers or peers).
    pub fn load(config: &Config) -> anyhow::Result<Bester> {
        let enabled = config.bester.bind.is_some() || socket_path(config).is_some();
        let settings = Settings::load(config, enabled)?;
        let hashing = auth::Hashing::new(
            settings.hash_slots,
            settings.hash_slots * settings::HASH_QUEUE_PER_SLOT,
            settings::HASH_WAIT,
        );
        Ok(Bester {
            settings,
            hashing,
            throttle: throttle::Throttle::default(),
        })
    }
}

/// What a connection over the per-address cap is sent before it is closed: one `busy`
/// status response, written only if the socket takes it at once (a fresh socket's send
/// buffer is empty); the accept loop never waits on a refused client.
fn refusal() -> Vec<u8> {
    let frame = protocol::status_frame(
        &Outcome::error(Status::Busy, "too many connections from this address"),
        "error",
        None,
    );
    let mut out = Vec::with_capacity(4 + frame.len());
    out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    out.extend_from_slice(&frame);
    out
}

/// `HOMEHUB_BESTER_SOCKET`, with an empty value meaning unset.
fn socket_path(config: &Config) -> Option<&Path> {
    config
        .bester
        .socket
        .as_deref()
        .filter(|p| !p.as_os_str().is_empty())
}

/// The bound Bester listeners of a not yet running hub.
#[derive(Default)]
pub struct Listeners {
    tcp: Option<TcpListener>,
    unix: Option<(UnixListener, PathBuf)>,
}

impl Listeners {
    /// Binds the TCP listener (`HOMEHUB_BESTER_BIND`, port 0 works) and the Unix socket
    /// (`HOMEHUB_BESTER_SOCKET`; a stale socket file left by a previous run is replaced, a
    /// live one is an error).
    pub async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let tcp = match config.bester.bind {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding the Bester listener {addr}"))?,
            ),
            None => None,
        };
        let unix = match socket_path(config) {
            Some(path) => {
                remove_stale_socket(path).await?;
                let listener = UnixListener::bind(path).with_context(|| {
                    format!("binding the Bester Unix socket {}", path.display())
                })?;
                Some((listener, path.to_owned()))
            }
            None => None,
        };
        Ok(Listeners { tcp, unix })
    }

    /// The TCP listener's address, when enabled.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Starts the accept loops (on the door's own runtime thread, see [`door_runtime`])
    /// and the handler processes the hub manages, on the hub's tracker; everything stops
    /// when the hub's shutdown token is cancelled.
    pub fn spawn(self, door: &Arc<Ctx>) {
        if self.tcp.is_none() && self.unix.is_none() {
            return;
        }
        for spec in door.bester.settings.handlers.values() {
            if spec.command.is_some() {
                door.tracker
                    .spawn(handlers::supervise(spec.clone(), door.shutdown.clone()));
            }
        }
        let runtime = match door_runtime(door) {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "no runtime thread for the Bester door; it shares the door's");
                None
            }
        };
        let spawn = |task: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>| match &runtime {
            Some(handle) => drop(door.tracker.spawn_on(task, handle)),
            None => drop(door.tracker.spawn(task)),
        };
        if let Some(listener) = self.tcp {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "bester listening");
            }
            // Registered again with the runtime that polls it.
            match listener.into_std() {
                Ok(listener) => spawn(Box::pin(accept_tcp(listener, door.clone()))),
                Err(e) => tracing::error!(error = %e, "cannot move the Bester listener"),
            }
        }
        if let Some((listener, path)) = self.unix {
            tracing::info!(path = %path.display(), "bester listening on a Unix socket");
            match listener.into_std() {
                Ok(listener) => spawn(Box::pin(accept_unix(listener, path, door.clone()))),
                Err(e) => tracing::error!(error = %e, "cannot move the Bester Unix socket"),
            }
        }
    }
}

/// The Bester door's runtime: one thread (`bester`) with a current-thread runtime. Every
/// Bester connection's tasks run there, so the WebSocket doors' tasks never wait in a run
/// queue behind a flood of Bester logins: measured with 2,000 concurrent logins, a Phoenix
/// device's heartbeat replies took up to 150–270 ms when both doors shared the runtime
/// (debug build). Password hashes still run on that runtime's blocking pool, in the
/// hashing slots. The thread ends once the hub has shut down and its tasks are done, or
/// when the runtime that started the hub is gone (a test that drops its hub).
fn door_runtime(door: &Arc<Ctx>) -> std::io::Result<tokio::runtime::Handle> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("bester")
        .build()?;
    let handle = rt.handle().clone();
    let (shutdown, tracker) = (door.shutdown.clone(), door.tracker.clone());
    let (alive, parent_gone) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _alive = alive;
        std::future::pending::<()>().await
    });
    std::thread::Builder::new()
        .name("bester".to_owned())
        .spawn(move || {
            rt.block_on(async move {
                tokio::select! {
                    _ = async { shutdown.cancelled().await; tracker.wait().await } => {}
                    _ = parent_gone => {}
                }
            });
        })?;
    Ok(handle)
}

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

async fn accept_tcp(listener: std::net::TcpListener, door: Arc<Ctx>) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return tracing::error!(error = %e, "cannot register the Bester listener"),
    };
    loop {
        let accepted = tokio::select! {
            _ = door.shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let max = door.bester.settings.max_conns_per_ip;
                let remote = Remote::Tcp(peer);
                let queue = door.bester.settings.queue;
                let Some((conn, rx)) = sessions::open(&door.registry, remote, max, queue) else {
                    crate::metrics::inc(&door.metrics.bester_connections_refused);
                    tracing::warn!(%peer, max, "bester connection refused: too many connections from this address");
                    let _ = stream.try_write(&refusal());
                    continue;
                };
                let _ = stream.set_nodelay(true);
                // A client that stops reading is dropped like a WebSocket one (README,
                // HOMEHUB_SEND_TIMEOUT_SECS); its queue would not fill for a long time.
                let send_timeout = door.send_timeout;
                crate::net::listener::set_send_timeout(&stream, send_timeout);
                let serve = connection::serve(door.clone(), stream, remote, conn, rx);
                door.tracker.spawn(serve);
            }
            Err(e) => {
                tracing::warn!(error = %e, "bester accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn accept_unix(listener: std::os::unix::net::UnixListener, path: PathBuf, door: Arc<Ctx>) {
    let listener = match UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return tracing::error!(error = %e, "cannot register the Bester Unix socket"),
    };
    loop {
        let accepted = tokio::select! {
            _ = door.shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                // Every Unix-socket connection counts as one address against the cap.
                let max = door.bester.settings.max_conns_per_ip;
                let queue = door.bester.settings.queue;
                let Some((conn, rx)) = sessions::open(&door.registry, Remote::Unix, max, queue)
                else {
                    crate::metrics::inc(&door.metrics.bester_connections_refused);
                    tracing::warn!(
                        max,
                        "bester connection refused: too many connections on the Unix socket"
                    );
                    let _ = stream.try_write(&refusal());
                    continue;
                };
                door.tracker.spawn(connection::serve(
                    door.clone(),
                    stream,
                    Remote::Unix,
                    conn,
                    rx,
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "bester accept failed (Unix socket)");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    drop(listener);
    if let Err(e) = std::fs::remove_file(&path) {
        tracing::debug!(path = %path.display(), error = %e, "cannot remove the Bester socket file");
    }
}

/// Removes a socket file nobody listens on; refuses to touch anything else.
async fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        anyhow::bail!(
            "{} exists and is not a socket; not replacing it",
            path.display()
        );
    }
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        anyhow::bail!("{} is in use by another process", path.display());
    }
    std::fs::remove_file(path)
        .with_context(|| format!("removing the stale socket {}", path.display()))
}
