//! `GET /socket/websocket`: the Phoenix WebSocket transport (§1, §4, §10).
//!
//! The upgrade handler is the last point that sees HTTP: it picks the serializer from
//! `vsn`, validates the `name` connect param and the offered subprotocols, and refuses with
//! HTTP 403 exactly where Phoenix does. After the upgrade, one task per socket runs
//! [`run`]: a single `select!` over inbound frames, the connection's outbound queue, its
//! kill switch and the idle deadline — no extra tasks or per-frame timers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::SinkExt;
use tokio::time::Instant;

use crate::domain::DeviceName;
use crate::hub::Hub;
use crate::metrics;
use crate::protocol::serializer::close_code;
use crate::protocol::{DecodeError, Frame, Vsn, WireFrame};
use crate::registry::{Conn, Door};
use crate::socket::Session;

/// Read chunk size of a socket: small, since lock traffic is tiny and memory per idle
/// connection matters more than the syscall count of rare large frames.
const READ_BUFFER: usize = 4 * 1024;
/// Queued items written per flush, so one busy connection yields to others.
const WRITE_BATCH: usize = 64;
/// How long a closing handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Subprotocol entries that carry an auth token rather than name a protocol (§1.5).
const AUTH_TOKEN_PREFIX: &str = "base64url.bearer.phx.";

pub async fn upgrade(
    State(hub): State<Arc<Hub>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    if method != Method::GET {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let refuse = || {
        metrics::inc(&hub.metrics.connections_refused);
        StatusCode::FORBIDDEN.into_response()
    };
    let params = super::query_params(query.as_deref());
    let Some(vsn) = Vsn::negotiate(params.get("vsn").map(String::as_str)) else {
        tracing::info!(%peer, vsn = ?params.get("vsn"), "connect refused: unsupported vsn");
        return refuse();
    };
    if !subprotocols_acceptable(&headers) {
        tracing::info!(%peer, "connect refused: no acceptable subprotocol");
        return refuse();
    }
    let Some(name) = params.get("name").and_then(|n| DeviceName::parse(n)) else {
        tracing::info!(%peer, name = ?params.get("name"), "connect refused: missing or invalid name");
        return refuse();
    };
    let Ok(ws) = ws else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let max = hub.config.max_frame_bytes;
    let tracker = hub.tracker.clone();
    ws.protocols(["phoenix"])
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(max.saturating_mul(2).max(64 * 1024))
        .max_message_size(max)
        .max_frame_size(max)
        .on_failed_upgrade(move |e| tracing::info!(%peer, error = %e, "websocket upgrade failed"))
        .on_upgrade(move |socket| tracker.track_future(run(socket, hub, name, vsn, peer)))
}

/// A client that offers subprotocols must offer `phoenix` (token entries aside), or the
/// handshake would complete without a selected protocol, which browsers reject (§1.5).
fn subprotocols_acceptable(headers: &HeaderMap) -> bool {
    let offered: Vec<&str> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty() && !p.starts_with(AUTH_TOKEN_PREFIX))
        .collect();
    offered.is_empty() || offered.contains(&"phoenix")
}

fn to_ws(w: WireFrame) -> WsMessage {
    match w {
        WireFrame::Text(t) => WsMessage::Text(t),
        WireFrame::Binary(b) => WsMessage::Binary(b),
    }
}

/// Why the read loop ended.
enum End {
    /// The peer closed or vanished; nothing more to send.
    Gone,
    /// Close the socket with this code and reason.
    Close(u16, &'static str),
}

/// Close code for a read error: 1009 too big, 1007 bad UTF-8, 1002 protocol violation.
fn classify(err: axum::Error) -> End {
    let inner = err.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => End::Close(close_code::TOO_BIG, "frame too big"),
        Some(tungstenite::Error::Utf8(_)) => End::Close(close_code::INVALID_DATA, "invalid utf-8"),
        Some(tungstenite::Error::Protocol(_)) => End::Close(1002, "protocol error"),
        _ => End::Gone,
    }
}

/// Sends `msgs` and flushes, unless the connection is killed meanwhile (a reader that does
/// not read must not hold its task hostage).
async fn write_all(socket: &mut WebSocket, conn: &Conn, msgs: Vec<WsMessage>) -> bool {
    if msgs.is_empty() {
        return true;
    }
    let write = async {
        for m in msgs {
            socket.feed(m).await?;
        }
        socket.flush().await
    };
    tokio::select! {
        r = write => r.is_ok(),
        _ = conn.killed() => false,
    }
}

#[tracing::instrument(name = "socket", skip_all, fields(device = %name, %peer))]
async fn run(mut socket: WebSocket, hub: Arc<Hub>, name: DeviceName, vsn: Vsn, peer: SocketAddr) {
    let (conn, mut rx) = hub.registry.connect(name, Door::Phoenix, peer.to_string());
    tracing::info!(conn = conn.id, ?vsn, "connected");
    let mut session = Session::new(hub.clone(), conn.clone(), vsn);
    let idle = Duration::from_secs(hub.config.idle_timeout_secs.max(1));
    let mut last_in = Instant::now();
    let deadline = tokio::time::sleep(idle);
    tokio::pin!(deadline);
    let mut frames: Vec<Frame> = Vec::new();

    let end = loop {
        let mut wire: Vec<WsMessage> = Vec::new();
        tokio::select! {
            biased;
            _ = conn.killed() => break End::Close(conn.close_code(), "closed by the hub"),
            inbound = socket.recv() => {
                let msg = match inbound {
                    None => break End::Gone,
                    Some(Err(e)) => break classify(e),
                    Some(Ok(m)) => m,
                };
                last_in = Instant::now();
                metrics::inc(&hub.metrics.frames_in);
                let decoded = match &msg {
                    WsMessage::Text(t) => vsn.decode(t.as_bytes(), false),
                    WsMessage::Binary(b) => vsn.decode(b, true),
                    WsMessage::Close(_) => break End::Gone,
                    WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
                };
                match decoded {
                    Ok(m) => session.handle(m, &mut frames).await,
                    Err(DecodeError::Malformed { ref_, topic, reason }) => {
                        metrics::inc(&hub.metrics.decode_errors);
                        session.malformed(ref_, &topic, reason, &mut frames)
                    }
                    Err(DecodeError::Fatal { code, reason }) => {
                        metrics::inc(&hub.metrics.decode_errors);
                        tracing::info!(conn = conn.id, code, reason, "undecodable frame");
                        break End::Close(code, reason);
                    }
                }
                wire.extend(frames.drain(..).filter_map(|f| vsn.encode(&f)).map(to_ws));
            }
            item = rx.recv() => {
                // `conn` holds the sender, so the queue cannot close while we run.
                let Some(item) = item else { break End::Gone };
                wire.extend(session.outbound(item).map(to_ws));
                while wire.len() < WRITE_BATCH {
                    match rx.try_recv() {
                        Ok(item) => wire.extend(session.outbound(item).map(to_ws)),
                        Err(_) => break,
                    }
                }
            }
            _ = &mut deadline => {
                if last_in.elapsed() >= idle {
                    break End::Close(close_code::GOING_AWAY, "idle timeout");
                }
                deadline.as_mut().reset(last_in + idle);
            }
        }
        metrics::add(&hub.metrics.frames_out, wire.len() as u64);
        if !write_all(&mut socket, &conn, wire).await {
            break if conn.is_killed() {
                End::Close(conn.close_code(), "closed by the hub")
            } else {
                End::Gone
            };
        }
    };

    let code = match end {
        End::Close(code, reason) => {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.send(WsMessage::Close(Some(frame))))
                .await;
            Some(code)
        }
        End::Gone => None,
    };
    drop(session);
    tracing::info!(conn = conn.id, close_code = ?code, "disconnected");
}
