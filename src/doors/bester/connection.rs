//! One Bester connection: a reader (this task) that decodes frames and runs requests one
//! at a time, and a writer task that drains the connection's bounded outbound queue.
//! Responses and messages from other connections all go through that queue, so nothing
//! ever waits on this socket but its own writer.
//!
//! States: `Anonymous` (new, or after `logout`) → the first message authenticates a user
//! (`scope: "client"`) or a peer server (`scope: "server"`); a failure is answered and the
//! connection closes. A connection that has not authenticated within the login timeout is
//! closed too.
//!
//! A login first asks the throttle (refused at once, `throttled`, after too many recent
//! failures from the address or for the username), then waits for a hashing slot (at most
//! [`super::settings::HASH_WAIT`], and only while the waiting room has a place, else
//! `busy`); see `docs/bester.md`, "Login limits".

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::Ctx;
use super::auth::{self, AuthError, Username};
use super::codec::{Codec, FrameError, codec};
use super::dispatch::{self, Origin};
use super::federation;
use super::protocol::{
    self, Builtin, Credentials, DecodeError, Message, Outcome, Payload, Request, Scope, Status,
};
use super::sessions::{self, Identity, Remote};
use super::throttle::Throttled;
use crate::core::outbox::Receiver;
use crate::core::{Conn, Outbound, close_code};

/// How long the writer may take to flush the last frames after the reader has finished.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Frames written per flush, so one busy connection yields to others.
const WRITE_BATCH: usize = 64;
/// First capacity of a connection's read and write buffers (they grow for larger
/// frames). tokio-util's default, 8 KiB each, was most of what each of the 2,000
/// connections of a login flood held (issue 12).
const BUFFER: usize = 1024;
/// Bytes the writer buffers before it must flush (tokio-util's default).
const WRITE_BOUNDARY: usize = 8 * 1024;
/// `payload.type` of responses to frames that carried none (not JSON, too large, ...).
const ERROR_TYPE: &str = "error";

/// Serves one accepted connection, already registered as `conn` (its queue drained
/// through `rx`), until it closes.
pub async fn serve<S>(door: Arc<Ctx>, stream: S, remote: Remote, conn: Arc<Conn>, rx: Receiver)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let max_frame = door.bester.settings.max_frame;
    let (rd, wr) = tokio::io::split(stream);
    let mut reader = FramedRead::with_capacity(rd, codec(max_frame), BUFFER);
    let mut writer = FramedWrite::with_capacity(wr, codec(max_frame), BUFFER);
    writer.set_backpressure_boundary(WRITE_BOUNDARY);
    let id = conn.id;
    // Tells the writer the reader is done: write what is queued, then close.
    let done = CancellationToken::new();
    let span = tracing::info_span!("bester", conn = id, %remote);
    async move {
        tracing::info!("bester connection opened");
        let writer_task = door
            .tracker
            .spawn(write_loop(writer, rx, conn.clone(), done.clone()).in_current_span());
        let mut session = Connection {
            state: State::anonymous(&door),
            door: door.clone(),
            remote,
            conn: conn.clone(),
        };
        let reason = session.run(&mut reader).await;
        let who = session.state.describe();
        door.registry.disconnect(&conn, []);
        drop(session);
        done.cancel();
        if tokio::time::timeout(FLUSH_TIMEOUT, writer_task)
            .await
            .is_err()
        {
            conn.kill(close_code::GOING_AWAY);
        }
        tracing::info!(%reason, who, "bester connection closed");
    }
    .instrument(span)
    .await
}

/// The bytes of a queued item; Bester connections are only sent frames.
fn frame_of(item: Outbound) -> Option<Bytes> {
    match item {
        Outbound::Text(t) => Some(Bytes::from(*t)),
        _ => None,
    }
}

/// Writes queued frames until the reader is `done` and the queue is empty (then flushes
/// and shuts the socket) or the kill switch fires (then drops the socket at once).
async fn write_loop<W>(
    mut out: FramedWrite<W, Codec>,
    mut rx: Receiver,
    conn: Arc<Conn>,
    done: CancellationToken,
) where
    W: AsyncWrite + Unpin,
{
    loop {
        let first = tokio::select! {
            biased;
            _ = conn.killed() => return,
            item = rx.recv() => Some(item),
            _ = done.cancelled() => rx.try_recv(),
        };
        let Some(first) = first else { break };
        let write = async {
            if let Some(f) = frame_of(first) {
                out.feed(f).await?;
            }
            for _ in 1..WRITE_BATCH {
                match rx.try_recv() {
                    Some(more) => {
                        if let Some(f) = frame_of(more) {
                            out.feed(f).await?;
                        }
                    }
                    None => break,
                }
            }
            SinkExt::<Bytes>::flush(&mut out).await
        };
        let result = tokio::select! {
            biased;
            _ = conn.killed() => return,
            r = write => r,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "bester write failed");
            conn.kill(close_code::GOING_AWAY);
            return;
        }
    }
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, SinkExt::<Bytes>::close(&mut out)).await;
}

enum State {
    /// Must authenticate before this instant.
    Anonymous {
        deadline: Instant,
    },
    User(Username),
    Peer(String),
}

impl State {
    fn anonymous(door: &Ctx) -> State {
        State::Anonymous {
            deadline: Instant::now() + door.bester.settings.login_timeout,
        }
    }

    fn describe(&self) -> String {
        match self {
            State::Anonymous { .. } => "anonymous".to_owned(),
            State::User(u) => format!("user {u}"),
            State::Peer(p) => format!("peer {p}"),
        }
    }
}

/// Whether to keep reading.
enum Flow {
    Continue,
    Close(&'static str),
}

struct Connection {
    door: Arc<Ctx>,
    remote: Remote,
    /// This connection in the registry: its outbound queue (responses) and kill switch.
    conn: Arc<Conn>,
    state: State,
}

/// The outcome of a login attempt.
enum Login {
    Ok,
    /// Wrong username or password.
    Failed,
    /// Refused without checking: too many recent failures.
    Throttled(Throttled),
    /// No hashing slot became free in time.
    Busy,
    /// The store failed.
    Error,
}

impl Login {
    /// The error response of a login that did not succeed.
    fn refusal(&self) -> Outcome {
        match self {
            Login::Ok => Outcome::ok(json!({})),
            Login::Failed => {
                Outcome::error(Status::AuthenticationFailed, "wrong username or password")
            }
            Login::Throttled(t) => {
                let ms = t.retry_after.as_millis().max(1);
                let mut extra = serde_json::Map::new();
                extra.insert("retry_after_ms".into(), json!(ms));
                Outcome::error_with(
                    Status::Throttled,
                    format!(
                        "too many failed logins for this {}; try again in {} s",
                        t.by,
                        ms.div_ceil(1000)
                    ),
                    extra,
                )
            }
            Login::Busy => Outcome::error(Status::Busy, "the door is busy; try again later"),
            Login::Error => Outcome::error(Status::InternalError, "authentication unavailable"),
        }
    }
}

/// A claimed name as logged: bounded, escaped by `?`.
fn claimed(name: &str) -> String {
    name.chars().take(64).collect()
}

impl Connection {
    async fn run<R>(&mut self, reader: &mut FramedRead<R, Codec>) -> &'static str
    where
        R: AsyncRead + Unpin,
    {
        loop {
            let deadline = match self.state {
                State::Anonymous { deadline } => Some(deadline),
                _ => None,
            };
            let login_expired = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let next = tokio::select! {
                biased;
                _ = self.conn.killed() => return "closed by the door",
                _ = login_expired => {
                    self.respond(
                        &Outcome::error(Status::AuthenticationRequired, "no authentication in time"),
                        "authenticate",
                        None,
                    );
                    return "login timeout";
                }
                next = reader.next() => next,
            };
            let frame = match next {
                None => return "closed by the peer",
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    return match FrameError::classify(&e) {
                        FrameError::TooLarge => {
                            let max = self.door.bester.settings.max_frame;
                            self.respond(
                                &Outcome::error(
                                    Status::TooLarge,
                                    format!("messages are limited to {max} bytes"),
                                ),
                                ERROR_TYPE,
                                None,
                            );
                            "length prefix over the limit"
                        }
                        FrameError::Truncated => {
                            self.respond(
                                &Outcome::error(Status::Malformed, "truncated message"),
                                ERROR_TYPE,
                                None,
                            );
                            "truncated message"
                        }
                        FrameError::Io => "read error",
                    };
                }
            };
            let flow = match protocol::decode(&frame) {
                Err(DecodeError::Malformed(what)) => {
                    self.respond(&Outcome::error(Status::Malformed, what), ERROR_TYPE, None);
                    Flow::Close("malformed message")
                }
                Err(DecodeError::Invalid { kind, id, reason }) => {
                    let kind = kind.as_deref().unwrap_or(ERROR_TYPE);
                    self.respond(
                        &Outcome::error(Status::BadRequest, reason),
                        kind,
                        id.as_ref(),
                    );
                    match self.state {
                        State::Anonymous { .. } => Flow::Close("invalid first message"),
                        _ => Flow::Continue,
                    }
                }
                Ok(message) => {
                    let conn = self.conn.clone();
                    tokio::select! {
                        biased;
                        _ = conn.killed() => return "closed by the door",
                        flow = self.handle(message) => flow,
                    }
                }
            };
            if let Flow::Close(reason) = flow {
                return reason;
            }
        }
    }

    /// Queues a status response, never waiting: a client that does not read its responses
    /// fills its queue and is disconnected.
    fn respond(&self, outcome: &Outcome, kind: &str, id: Option<&Value>) {
        let mut frame = protocol::status_frame(outcome, kind, id);
        if frame.len() > self.door.bester.settings.max_frame {
            let small = Outcome::error(outcome.status, "response too large to send");
            frame = protocol::status_frame(&small, kind, id);
        }
        let Some(item) = sessions::outbound(frame) else {
            return;
        };
        if let Err(crate::core::SendError::Full) = self.conn.send(item) {
            tracing::warn!("bester outbound queue full; closing slow connection");
        }
    }

    async fn handle(&mut self, message: Message) -> Flow {
        if let State::Anonymous { .. } = self.state {
            return self.first(message).await;
        }
        match message.payload {
            Some(payload) => {
                // Only peers forward messages; a user's hop count is always 0.
                let hops = match self.state {
                    State::Peer(_) => message.header.hops,
                    _ => 0,
                };
                Box::pin(self.request(payload, hops)).await
            }
            None => {
                self.respond(
                    &Outcome::error(Status::BadRequest, "missing payload"),
                    ERROR_TYPE,
                    None,
                );
                Flow::Continue
            }
        }
    }

    /// The first message (or the first after `logout`): authenticate, then run its payload.
    async fn first(&mut self, message: Message) -> Flow {
        let Message { header, payload } = message;
        let (kind, id) = match &payload {
            Some(p) => (p.kind.clone(), p.id.clone()),
            None => ("authenticate".to_owned(), None),
        };
        match header.scope {
            Some(Scope::Server) => {
                let peer = header
                    .auth
                    .as_ref()
                    .and_then(|c| federation::authenticate(&self.door.bester.settings, c))
                    .map(|p| p.name.clone());
                let Some(peer) = peer else {
                    let name = header.auth.as_ref().map(|c| claimed(&c.username));
                    tracing::warn!(peer = ?name, "bester peer authentication failed");
                    self.respond(
                        &Outcome::error(
                            Status::AuthenticationFailed,
                            "unknown peer or wrong secret",
                        ),
                        &kind,
                        id.as_ref(),
                    );
                    return Flow::Close("peer authentication failed");
                };
                tracing::info!(%peer, "bester peer authenticated");
                sessions::set_identity(
                    &self.door.registry,
                    &self.conn,
                    Identity::Peer(peer.clone()),
                );
                self.state = State::Peer(peer);
                match payload {
                    Some(p) => Box::pin(self.request(p, header.hops)).await,
                    None => {
                        let name = self.door.bester.settings.name.clone();
                        self.respond(&Outcome::ok(json!({ "server": name })), &kind, None);
                        Flow::Continue
                    }
                }
            }
            Some(Scope::Unknown(scope)) => {
                self.respond(
                    &Outcome::error(
                        Status::AuthenticationRequired,
                        format!(
                            "unknown scope {:?}; use \"client\" or \"server\"",
                            claimed(&scope)
                        ),
                    ),
                    &kind,
                    id.as_ref(),
                );
                Flow::Close("unknown scope")
            }
            Some(Scope::Client) | None => {
                // Credentials: the header's authentication block, or the arguments of an
                // `authenticate` built-in.
                let from_payload = match &payload {
                    Some(Payload {
                        request: Request::Builtin(Builtin::Authenticate(Some(c))),
                        ..
                    }) => Some(c.clone()),
                    _ => None,
                };
                let Some(creds) = header.auth.or(from_payload) else {
                    self.respond(
                        &Outcome::error(
                            Status::AuthenticationRequired,
                            "authenticate first: header.authentication {username, password} \
                             with scope \"client\"",
                        ),
                        &kind,
                        id.as_ref(),
                    );
                    return Flow::Close("not authenticated");
                };
                let login = self.login(&creds).await;
                let reason = match login {
                    Login::Ok => None,
                    Login::Failed => Some("authentication failed"),
                    Login::Throttled(_) => Some("login throttled"),
                    Login::Busy => Some("no password hashing slot"),
                    Login::Error => Some("authentication error"),
                };
                if let Some(reason) = reason {
                    self.respond(&login.refusal(), &kind, id.as_ref());
                    return Flow::Close(reason);
                }
                match payload {
                    Some(Payload {
                        request: Request::Builtin(Builtin::Authenticate(_)),
                        ..
                    })
                    | None => {
                        let who = self.whoami();
                        self.respond(&Outcome::ok(who), &kind, id.as_ref());
                        Flow::Continue
                    }
                    Some(p) => Box::pin(self.request(p, 0)).await,
                }
            }
        }
    }

    /// Checks a user's credentials, unless the throttle refuses the attempt; on success the
    /// connection becomes that user's. Every outcome but success logs one line.
    async fn login(&mut self, creds: &Credentials) -> Login {
        let door = self.door.clone();
        let bester = &door.bester;
        let name = Username::parse(&creds.username);
        let attempt = match bester
            .throttle
            .begin(self.remote.ip(), name.as_ref().map(Username::as_str))
        {
            Ok(attempt) => attempt,
            Err(t) => {
                crate::metrics::inc(&door.metrics.bester_logins_throttled);
                tracing::warn!(
                    user = ?claimed(&creds.username),
                    by = t.by,
                    retry_after_ms = t.retry_after.as_millis() as u64,
                    "bester login throttled"
                );
                return Login::Throttled(t);
            }
        };
        let verified = auth::verify_user(
            &bester.hashing,
            &door.store,
            &creds.username,
            &creds.password,
        )
        .await;
        match verified {
            Ok(Some(user)) => {
                drop(attempt);
                tracing::info!(%user, "bester user authenticated");
                sessions::set_identity(
                    &self.door.registry,
                    &self.conn,
                    Identity::User(user.clone()),
                );
                let store = self.door.store.clone();
                let name = user.to_string();
                self.door.tracker.spawn(async move {
                    if let Err(e) = store.record_bester_login(&name).await {
                        tracing::error!(user = %name, error = %e, "cannot record bester login");
                    }
                });
                self.state = State::User(user);
                Login::Ok
            }
            Ok(None) => {
                attempt.failed();
                crate::metrics::inc(&door.metrics.bester_logins_failed);
                tracing::warn!(user = ?claimed(&creds.username), "bester authentication failed");
                Login::Failed
            }
            Err(AuthError::Busy) => {
                crate::metrics::inc(&door.metrics.bester_logins_busy);
                tracing::warn!(
                    user = ?claimed(&creds.username),
                    waiting = bester.hashing.waiting(),
                    "bester login refused: every password hashing slot is busy"
                );
                Login::Busy
            }
            Err(e) => {
                tracing::error!(error = %e, "bester authentication error");
                Login::Error
            }
        }
    }

    fn whoami(&self) -> Value {
        match &self.state {
            State::User(u) => json!({ "username": u.as_str() }),
            State::Peer(p) => json!({ "server": p }),
            State::Anonymous { .. } => json!({}),
        }
    }

    /// Runs one request and answers it with a status response echoing `payload.id`.
    async fn request(&mut self, payload: Payload, hops: usize) -> Flow {
        let Payload { kind, id, request } = payload;
        let (outcome, flow) = match request {
            Request::Builtin(b) => self.builtin(b).await,
            Request::Handler(data) => {
                let origin = match &self.state {
                    State::User(u) => Origin::User(u.clone()),
                    State::Peer(p) => Origin::Peer(p.clone()),
                    State::Anonymous { .. } => {
                        return Flow::Close("not authenticated");
                    }
                };
                let max_chain = self.door.bester.settings.max_chain;
                let outcome = if hops > max_chain {
                    Outcome::error(
                        Status::ChainTooDeep,
                        format!("a message may travel at most {max_chain} server hops"),
                    )
                } else {
                    dispatch::run(&self.door, &origin, &kind, data, hops).await
                };
                (outcome, Flow::Continue)
            }
        };
        self.respond(&outcome, &kind, id.as_ref());
        flow
    }

    async fn builtin(&mut self, builtin: Builtin) -> (Outcome, Flow) {
        let user = match &self.state {
            State::User(u) => Some(u.clone()),
            _ => None,
        };
        match builtin {
            Builtin::ListClients => {
                // Every node's users; this node's alone while the cluster is unreachable.
                let clients = match self.door.fabric.bester_users().await {
                    Ok(users) => users,
                    Err(_) => self.door.registry.users.names(),
                };
                (Outcome::ok(json!({ "clients": clients })), Flow::Continue)
            }
            Builtin::Close => (
                Outcome::ok(json!({})),
                Flow::Close("closed at the peer's request"),
            ),
            Builtin::Authenticate(None) => (Outcome::ok(self.whoami()), Flow::Continue),
            _ if user.is_none() => (
                Outcome::error(Status::BadRequest, "only users may run this command"),
                Flow::Continue,
            ),
            Builtin::Authenticate(Some(creds)) => match self.login(&creds).await {
                Login::Ok => (Outcome::ok(self.whoami()), Flow::Continue),
                // The connection stays logged in as before when the hub could not check.
                login @ (Login::Busy | Login::Error) => (login.refusal(), Flow::Continue),
                login @ Login::Failed => (login.refusal(), Flow::Close("authentication failed")),
                login @ Login::Throttled(_) => (login.refusal(), Flow::Close("login throttled")),
            },
            Builtin::Logout => {
                tracing::info!(user = ?user, "bester user logged out");
                sessions::set_identity(&self.door.registry, &self.conn, Identity::Anonymous);
                self.state = State::anonymous(&self.door);
                (Outcome::ok(json!({})), Flow::Continue)
            }
            Builtin::ChangePassword { old, new } => {
                let Some(user) = user else {
                    return (
                        Outcome::error(Status::BadRequest, "not a user"),
                        Flow::Continue,
                    );
                };
                (
                    self.change_password(&user, &old, &new).await,
                    Flow::Continue,
                )
            }
        }
    }

    async fn change_password(&self, user: &Username, old: &str, new: &str) -> Outcome {
        if let Err(reason) = auth::check_new_password(new) {
            return Outcome::error(Status::BadRequest, reason);
        }
        let store = &self.door.store;
        let hashing = &self.door.bester.hashing;
        let busy = || {
            crate::metrics::inc(&self.door.metrics.bester_logins_busy);
            tracing::warn!(%user, "bester password change refused: every password hashing slot is busy");
            Outcome::error(Status::Busy, "the door is busy; try again later")
        };
        match auth::verify_user(hashing, store, user.as_str(), old).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::warn!(%user, "bester password change refused: wrong password");
                return Outcome::error(Status::WrongPassword, "the old password is wrong");
            }
            Err(AuthError::Busy) => return busy(),
            Err(e) => {
                tracing::error!(error = %e, "bester password change failed");
                return Outcome::error(Status::InternalError, "password change failed");
            }
        }
        let result = match auth::hash(hashing, new).await {
            Ok(hash) => store
                .set_bester_password(user.as_str(), &hash)
                .await
                .map_err(auth::AuthError::from),
            Err(e) => Err(e),
        };
        match result {
            Ok(true) => {
                tracing::info!(%user, "bester password changed");
                Outcome::ok(json!({}))
            }
            Ok(false) => Outcome::error(Status::WrongPassword, "the user no longer exists"),
            Err(AuthError::Busy) => busy(),
            Err(e) => {
                tracing::error!(error = %e, "bester password change failed");
                Outcome::error(Status::InternalError, "password change failed")
            }
        }
    }
}
