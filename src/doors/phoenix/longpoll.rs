//! `/socket/longpoll`: the Phoenix long-poll transport (§7 of the protocol reference), for
//! clients that cannot keep a WebSocket (`transport: LongPoll`, or the JS client's fallback).
//!
//! A session is a [`Session`] (the same Phoenix socket the WebSocket transport runs) owned
//! by one task, addressed by an unguessable token. `POST` hands that task a batch of
//! frames and returns once they are processed; replies and pushes wait in the session's
//! registry outbox (the one bounded queue type, `HOMEHUB_OUTBOUND_QUEUE` items; a client
//! that lets it fill is closed by policy) until a `GET` collects them: the GET hands the
//! session task a [`Request::Poll`], and the task renders what is queued (at once when
//! something is, else what arrives within one window, `HOMEHUB_LONGPOLL_WINDOW_MS`, 10 s
//! by default). The session is a registry [`Conn`] like a WebSocket (listed in
//! `/api/devices` with `transport: "longpoll"`), and its idleness is the registry's one
//! idle sweep: a session nobody polls for two windows is closed by it and destroyed with
//! its channels.
//! Every answer is HTTP 200 with the real status in the JSON body, as Phoenix does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::core::outbox::Receiver;
use crate::core::{Conn, Door, Outbound};
use crate::domain::DeviceName;
use crate::doors::admission::Gate;
use crate::doors::phoenix::Ctx as PhoenixCtx;
use crate::doors::phoenix::session::Session;
use crate::doors::phoenix::{DecodeError, Frame, Vsn, WireFrame};
use crate::metrics;
use crate::services::Hub;

/// At most this many lines of one ndjson `POST` are processed (§7.6).
pub const MAX_LINES: usize = 100;
/// Header carrying the session token (Phoenix ≥ 1.8.10 clients).
const TOKEN_HEADER: &str = "x-phoenix-longpoll-token";

/// What the HTTP side asks of a session task.
enum Request {
    /// Frames posted by the client, processed in order; `done` once they are.
    Batch {
        frames: Vec<(Vec<u8>, bool)>,
        done: oneshot::Sender<()>,
    },
    /// A GET: the encoded frames queued now, else those that arrive before `deadline`
    /// (empty: nothing came).
    Poll {
        deadline: Instant,
        reply: oneshot::Sender<Vec<String>>,
    },
}

/// One long-poll session.
struct LpSession {
    token: String,
    conn: Arc<Conn>,
    /// Requests for the session task.
    inbox: mpsc::Sender<Request>,
    /// How long a GET is held when nothing is queued (Phoenix's `window_ms`).
    window: Duration,
}

impl LpSession {
    /// A GET: the session is being polled (the registry's idle sweep watches this).
    fn touch(&self) {
        self.conn.touch();
    }
}

/// Renders a queued item for the messages array: text frames as they are; binary frames
/// are not representable there (§7.8) and are dropped, logged.
fn render(conn: &Conn, session: &mut Session, item: Outbound, out: &mut Vec<String>) {
    let frame = match item {
        // A reply the session task queued, already encoded.
        Outbound::Text(t) => Some(WireFrame::Text(*t)),
        item => session.outbound(item),
    };
    match frame {
        Some(WireFrame::Text(t)) => out.push(t.as_str().to_owned()),
        Some(WireFrame::Binary(_)) => {
            tracing::info!(
                conn = conn.id,
                "binary frame dropped on a long-poll session"
            )
        }
        None => {}
    }
}

/// Queues the session's replies in its registry outbox, behind what is queued already.
fn queue_replies(conn: &Conn, frames: impl IntoIterator<Item = WireFrame>) {
    for f in frames {
        let item = match f {
            WireFrame::Text(t) => Outbound::Text(Box::new(t)),
            WireFrame::Binary(_) => {
                tracing::info!(
                    conn = conn.id,
                    "binary frame dropped on a long-poll session"
                );
                continue;
            }
        };
        if conn.send(item).is_err() {
            // Full: the connection is being closed (policy); or already gone.
            return;
        }
    }
}

/// The long-poll transport's state: the hub's services and the live sessions by token.
pub struct LongPoll {
    /// Admission (origin, connect checks, tokens), shared with the WebSocket doors.
    gate: Arc<Gate>,
    /// What each session uses.
    door: Arc<PhoenixCtx>,
    /// Every session task is spawned on the hub's tracker, so shutdown waits for it.
    tracker: TaskTracker,
    sessions: Sessions,
}

impl LongPoll {
    pub fn new(hub: &Hub, gate: Arc<Gate>) -> Arc<LongPoll> {
        Arc::new(LongPoll {
            gate,
            door: PhoenixCtx::new(hub),
            tracker: hub.tracker.clone(),
            sessions: Sessions::default(),
        })
    }
}

/// Live long-poll sessions by token: the door's routing from an HTTP request to its
/// session task. The connection itself (queue, kill switch, idle clock, per-address count)
/// is the registry's, like any other; this map only finds the task that serves it, the way
/// a WebSocket's task is found by its socket.
#[derive(Default)]
struct Sessions {
    map: Mutex<HashMap<String, Arc<LpSession>>>,
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<LpSession>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, token: &str) -> Option<Arc<LpSession>> {
        self.lock().get(token).cloned()
    }
}

fn json_response(body: serde_json::Value) -> Response {
    let mut resp = (StatusCode::OK, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    resp
}

fn status(code: u16) -> Response {
    json_response(json!({ "status": code }))
}

/// The session token: the header first, else the last `token` query parameter (§7.5).
fn session_token(headers: &HeaderMap, params: &crate::doors::admission::Params) -> Option<String> {
    headers
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| params.get("token").map(str::to_owned))
        .filter(|t| !t.is_empty())
}

pub async fn handle(
    State(lp): State<Arc<LongPoll>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method == Method::OPTIONS {
        return preflight(&headers);
    }
    if method != Method::GET && method != Method::POST {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let params = crate::doors::admission::Params::parse(query.as_deref());
    // Origin is checked on every request, not only when a session is created (§1.7).
    if !lp.gate.origin_allowed(&headers) {
        tracing::info!(%peer, "long-poll refused: origin not allowed");
        return status(403);
    }
    let session = session_token(&headers, &params).and_then(|t| lp.sessions.get(&t));
    match (method, session) {
        (Method::GET, Some(s)) => poll(s).await,
        (Method::GET, None) => open(&lp, peer, &params, &headers),
        (_, Some(s)) => publish(s, &headers, &body).await,
        (_, None) => status(410),
    }
}

/// `OPTIONS`: CORS preflight (§7.8).
fn preflight(headers: &HeaderMap) -> Response {
    let mut resp = StatusCode::OK.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("get, post, options"),
    );
    if let Some(req) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, req.clone());
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("3600"),
    );
    resp
}

/// A GET without a live session: run connect and answer 410 with a new token, or 403.
fn open(
    lp: &Arc<LongPoll>,
    peer: SocketAddr,
    params: &crate::doors::admission::Params,
    headers: &HeaderMap,
) -> Response {
    let auth_token = headers
        .get("x-phoenix-authtoken")
        .and_then(|v| v.to_str().ok());
    let super::connect::Connect {
        name,
        vsn,
        token_id,
    } = match super::connect::authorize_connect(&lp.gate, peer, params, auth_token) {
        Ok(ok) => ok,
        Err(crate::doors::admission::Refused) => return status(403),
    };
    let token = format!("{:032x}", rand::random::<u128>());
    let (conn, rx) = crate::doors::admission::connect(
        &lp.gate,
        Some(name.clone()),
        Door::Phoenix,
        peer,
        token_id,
    );
    let window = lp.door.settings.longpoll_window;
    let (inbox, inbox_rx) = mpsc::channel(8);
    let s = Arc::new(LpSession {
        token: token.clone(),
        conn: conn.clone(),
        inbox,
        window,
    });
    conn.set_long_poll();
    lp.door.registry.watch_idle_within(&conn, window * 2);
    lp.sessions.lock().insert(token.clone(), s.clone());
    tracing::info!(conn = conn.id, device = %name, %peer, ?vsn, "long-poll session opened");
    let task_lp = lp.clone();
    let task_token = token.clone();
    lp.tracker.spawn(async move {
        run(task_lp.door.clone(), s, rx, inbox_rx, vsn, name).await;
        task_lp.sessions.lock().remove(&task_token);
    });
    json_response(json!({ "status": 410, "token": token, "messages": [] }))
}

/// A GET with a live session: everything queued now, or wait up to the window.
async fn poll(s: Arc<LpSession>) -> Response {
    s.touch();
    let (reply, messages) = oneshot::channel();
    let deadline = Instant::now() + s.window;
    let asked = !s.conn.is_killed()
        && s.inbox
            .send(Request::Poll { deadline, reply })
            .await
            .is_ok();
    // The session task answers by the deadline; it ending answers too (nothing).
    let messages = if asked {
        messages.await.unwrap_or_default()
    } else {
        Vec::new()
    };
    s.touch();
    if messages.is_empty() {
        json_response(json!({ "status": 204, "token": s.token, "messages": [] }))
    } else {
        json_response(json!({ "status": 200, "token": s.token, "messages": messages }))
    }
}

/// A POST: frames in order, processed before the answer; replies come through GETs.
async fn publish(s: Arc<LpSession>, headers: &HeaderMap, body: &[u8]) -> Response {
    let frames = frames(body, is_ndjson(headers));
    let (done, processed) = oneshot::channel();
    if s.inbox.send(Request::Batch { frames, done }).await.is_err() {
        return status(410);
    }
    match tokio::time::timeout(s.window, processed).await {
        Ok(Ok(())) => status(200),
        Ok(Err(_)) => status(410),
        Err(_) => status(408),
    }
}

/// Whether a POST body is ndjson (`Content-Type: application/x-ndjson`, any parameters).
pub fn is_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/x-ndjson"))
}

/// The frames of a POST body, `(bytes, binary)` in order, for [`Vsn::decode`]: the whole
/// body as one text frame, or with `ndjson` one frame a line (at most [`MAX_LINES`]):
/// a line starting with `[` is a text frame, any other a base64 binary frame.
pub fn frames(body: &[u8], ndjson: bool) -> Vec<(Vec<u8>, bool)> {
    if ndjson {
        body.split(|b| *b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.is_empty())
            .take(MAX_LINES)
            .map(|line| {
                if line.first() == Some(&b'[') {
                    (line.to_vec(), false)
                } else {
                    // Any other line is a base64 V2 binary frame; undecodable base64 reaches
                    // the decoder as an empty binary frame and is refused there.
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(line)
                        .unwrap_or_default();
                    (bytes, true)
                }
            })
            .collect()
    } else {
        vec![(body.to_vec(), false)]
    }
}

/// A GET waiting for frames.
struct Parked {
    deadline: Instant,
    reply: oneshot::Sender<Vec<String>>,
}

/// The session task: owns the Phoenix [`Session`] until the client stops polling (the
/// registry's idle sweep closes the connection), the connection is killed, or the hub
/// shuts down. It is the one consumer of the session's registry outbox: a parked GET is
/// answered with what it renders.
async fn run(
    door: Arc<PhoenixCtx>,
    s: Arc<LpSession>,
    mut rx: Receiver,
    mut inbox: mpsc::Receiver<Request>,
    vsn: Vsn,
    name: DeviceName,
) {
    let conn = s.conn.clone();
    let metrics = door.metrics.clone();
    let mut session = Session::new(door, conn.clone(), vsn);
    let mut frames: Vec<Frame> = Vec::new();
    let mut parked: Option<Parked> = None;
    // Rendered for a GET that went away before its answer: the next GET's.
    let mut carried: Vec<String> = Vec::new();
    let reason = loop {
        let deadline = parked.as_ref().map(|p| p.deadline);
        let expired = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let mut answer: Option<Vec<String>> = None;
        tokio::select! {
            biased;
            _ = conn.killed() => break if conn.idled_out() { "not polled" } else { "closed by the hub" },
            request = inbox.recv() => match request {
                None => break "gone",
                Some(Request::Batch { frames: batch, done }) => {
                    let mut fatal = None;
                    for (data, binary) in batch {
                        metrics::inc(&metrics.frames_in);
                        match vsn.decode(&data, binary) {
                            Ok(m) => session.handle(m, &mut frames).await,
                            Err(DecodeError::Malformed { ref_, topic, reason }) => {
                                metrics::inc(&metrics.decode_errors);
                                session.malformed(ref_, &topic, reason, &mut frames);
                            }
                            Err(DecodeError::Fatal { reason, .. }) => {
                                metrics::inc(&metrics.decode_errors);
                                fatal = Some(reason);
                                break;
                            }
                        }
                    }
                    queue_replies(&conn, frames.drain(..).filter_map(|f| vsn.encode(&f)));
                    let _ = done.send(());
                    if let Some(reason) = fatal {
                        tracing::info!(conn = conn.id, reason, "undecodable long-poll frame");
                        break "undecodable frame";
                    }
                }
                Some(Request::Poll { deadline, reply }) => {
                    // A newer GET ends the one waiting (nothing for it).
                    if let Some(old) = parked.replace(Parked { deadline, reply }) {
                        let _ = old.reply.send(Vec::new());
                    }
                    let mut out = std::mem::take(&mut carried);
                    while let Some(item) = rx.try_recv() {
                        render(&conn, &mut session, item, &mut out);
                    }
                    answer = Some(out);
                }
            },
            item = rx.recv(), if parked.is_some() => {
                let mut out = Vec::new();
                render(&conn, &mut session, item, &mut out);
                while let Some(item) = rx.try_recv() {
                    render(&conn, &mut session, item, &mut out);
                }
                answer = Some(out);
            }
            _ = expired => {
                if let Some(p) = parked.take() {
                    let _ = p.reply.send(Vec::new());
                }
            }
        }
        if let Some(out) = answer.filter(|o| !o.is_empty())
            && let Some(p) = parked.take()
            && let Err(unsent) = p.reply.send(out)
        {
            carried = unsent;
        }
    };
    drop(parked);
    drop(session);
    tracing::info!(conn = conn.id, device = %name, reason, "long-poll session closed");
}
