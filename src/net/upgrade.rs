//! WebSocket upgrades for the hub's three socket doors: `/socket/websocket` (Phoenix),
//! `/relay` (raw device relay) and `/compendium`.
//!
//! The listener reads a connection's first request head and asks [`parse`] whether it is a
//! WebSocket upgrade to one of these paths; if so the upgrade is decided and answered here
//! ([`serve`]) without hyper, and the socket goes to its door's driver. Every other request,
//! including a request to these paths that is not a well-formed upgrade, goes through
//! hyper to [`fallback`], which answers it as before: 400, 403 or 405, or, for an upgrade
//! that arrives on a connection hyper is already serving (a client reusing a kept-alive
//! connection), the same upgrade through hyper's own upgrade mechanism. Either way the
//! decision (origin, subprotocols, name, token, per-address cap) is [`decide`]'s, so the two
//! paths cannot drift apart.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::{Role, WebSocketConfig};

use super::ws::{self, WsStream};
use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::net::listener::Io;

/// Most headers read in a request head on the fast path (hyper takes longer heads).
const MAX_HEADERS: usize = 64;

/// The socket paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketPath {
    Phoenix,
    Relay,
    Compendium,
}

impl SocketPath {
    pub fn from_path(path: &str) -> Option<SocketPath> {
        match path {
            "/socket/websocket" => Some(SocketPath::Phoenix),
            "/relay" => Some(SocketPath::Relay),
            "/compendium" => Some(SocketPath::Compendium),
            _ => None,
        }
    }
}

/// A WebSocket upgrade request read by the listener.
#[derive(Debug)]
pub struct Upgrade {
    /// Length of the request head; bytes after it are the socket's.
    pub head_len: usize,
    path: SocketPath,
    query: Option<String>,
    headers: HeaderMap,
    /// Its `Sec-WebSocket-Accept`, from the key.
    accept: String,
}

/// The head is complete but not a WebSocket upgrade to a socket path (or not parseable
/// here): hyper answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotUpgrade;

/// Parses a request head: `Ok(None)` means more bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<Upgrade>, NotUpgrade> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(NotUpgrade),
    };
    if req.method != Some("GET") || req.version != Some(1) {
        return Err(NotUpgrade);
    }
    let target = req.path.ok_or(NotUpgrade)?;
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (target, None),
    };
    let path = SocketPath::from_path(path).ok_or(NotUpgrade)?;
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| NotUpgrade)?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| NotUpgrade)?;
        headers.append(name, value);
    }
    let accept = upgrade_key(&headers).map(accept_value).ok_or(NotUpgrade)?;
    Ok(Some(Upgrade {
        head_len,
        path,
        query,
        headers,
        accept,
    }))
}

/// Whether `value` lists `token` (comma-separated, case-insensitive), as `Connection` and
/// `Upgrade` headers do.
fn lists(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// The `Sec-WebSocket-Key` of a well-formed WebSocket upgrade (RFC 6455 §4.2.1), if the
/// headers are one.
fn upgrade_key(headers: &HeaderMap) -> Option<&HeaderValue> {
    let has = |name: HeaderName, token: &str| headers.get_all(name).iter().any(|v| lists(v, token));
    let version_13 = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    (has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "websocket") && version_13)
        .then(|| headers.get(header::SEC_WEBSOCKET_KEY))
        .flatten()
}

/// An accepted upgrade: the door's task for the socket, and how to open it.
pub struct Accepted {
    /// Runs the socket once it is a WebSocket (the door's task, spawned on the tracker).
    pub run: Box<dyn FnOnce(WsStream, SocketAddr) -> BoxFuture<'static, ()> + Send>,
    /// The subprotocol to confirm, if the client offered one the door speaks.
    pub protocol: Option<&'static str>,
    /// Largest message the socket reads (1009 past it).
    pub max_frame: usize,
}

/// The doors behind the socket paths, as the edge sees them: admission decides an upgrade
/// (origin, subprotocols, name and token, per-address cap) and names the task that runs
/// it. `Err` is the HTTP status to refuse with; the reason was logged where it was decided.
/// Implemented by [`crate::doors::SocketDoors`]; the edge imports no door.
pub trait Doors: Send + Sync + 'static {
    fn decide(
        &self,
        path: SocketPath,
        peer: SocketAddr,
        query: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Accepted, StatusCode>;
}

/// What the edge needs to hand sockets to doors: the doors, the tracker every socket task
/// is spawned on (shutdown waits for it), and the hub's kill switch.
#[derive(Clone)]
pub struct Edge {
    pub doors: Arc<dyn Doors>,
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
}

impl Accepted {
    /// Turns the upgraded stream into a WebSocket and starts the door's task for it.
    async fn start(self, io: Io, leftover: Vec<u8>, tracker: &TaskTracker, peer: SocketAddr) {
        let ws: WsStream = WebSocketStream::from_partially_read(
            io,
            leftover,
            Role::Server,
            Some(config(self.max_frame)),
        )
        .await;
        tracker.spawn((self.run)(ws, peer));
    }
}

/// The hub's WebSocket limits: small read chunks, writes flushed per batch rather than
/// buffered, and the maximum message size.
fn config(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(ws::READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(max_frame.saturating_mul(2).max(64 * 1024))
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
}

fn accept_value(key: &HeaderValue) -> String {
    tungstenite::handshake::derive_accept_key(key.as_bytes())
}

/// The headers of a 101 answer (both paths send the same).
fn switching_headers<'a>(accept: &'a str, protocol: Option<&'a str>) -> Vec<(HeaderName, &'a str)> {
    let mut headers = vec![
        (header::CONNECTION, "upgrade"),
        (header::UPGRADE, "websocket"),
        (header::SEC_WEBSOCKET_ACCEPT, accept),
    ];
    if let Some(protocol) = protocol {
        headers.push((header::SEC_WEBSOCKET_PROTOCOL, protocol));
    }
    headers
}

/// Answers an upgrade the listener read: refused with a bare status and closed, or
/// switched and handed to its door.
pub async fn serve(mut io: Io, leftover: Vec<u8>, up: Upgrade, edge: &Edge, peer: SocketAddr) {
    let decided = edge
        .doors
        .decide(up.path, peer, up.query.as_deref(), &up.headers);
    let accepted = match decided {
        Ok(accepted) => accepted,
        Err(status) => {
            let reason = status.canonical_reason().unwrap_or("");
            let response = format!(
                "HTTP/1.1 {} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                status.as_u16()
            );
            if io.write_response(response.as_bytes()).await.is_ok() {
                let _ = io.shutdown().await;
            }
            return;
        }
    };
    let mut response = String::from("HTTP/1.1 101 Switching Protocols\r\n");
    for (name, value) in switching_headers(&up.accept, accepted.protocol) {
        response.push_str(name.as_str());
        response.push_str(": ");
        response.push_str(value);
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    if let Err(e) = io.write_response(response.as_bytes()).await {
        return tracing::info!(%peer, error = %e, "websocket upgrade failed");
    }
    accepted.start(io, leftover, &edge.tracker, peer).await;
}

/// The socket paths' axum handler, for requests the listener did not take: anything that
/// is not a WebSocket upgrade (non-GET on `/socket/websocket` is 400, as in Phoenix; a GET
/// without upgrade headers is 400 after Phoenix's connect checks), and upgrades arriving on
/// a connection hyper was already serving.
pub async fn fallback(
    State(edge): State<Edge>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
) -> Response {
    let Some(path) = SocketPath::from_path(req.uri().path()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if req.method() != Method::GET {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let key = upgrade_key(req.headers()).cloned();
    if key.is_none() && path != SocketPath::Phoenix {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let accepted = match edge
        .doors
        .decide(path, peer, req.uri().query(), req.headers())
    {
        Ok(accepted) => accepted,
        Err(status) => return status.into_response(),
    };
    let Some(key) = key else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if req
        .extensions()
        .get::<hyper::upgrade::OnUpgrade>()
        .is_none()
    {
        return StatusCode::UPGRADE_REQUIRED.into_response();
    }
    let protocol = accepted.protocol;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let tracker = edge.tracker.clone();
    edge.tracker.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = Io::Upgraded(Box::new(TokioIo::new(upgraded)));
                accepted.start(io, Vec::new(), &tracker, peer).await;
            }
            Err(e) => tracing::info!(%peer, error = %e, "websocket upgrade failed"),
        }
    });
    let accept = accept_value(&key);
    let mut response = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (name, value) in switching_headers(&accept, protocol) {
        response = response.header(name, value);
    }
    response
        .body(axum::body::Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &str = "GET /socket/websocket?name=a&vsn=2.0.0 HTTP/1.1\r\nHost: x\r\n\
        Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    #[test]
    fn an_upgrade_head_is_recognised_and_its_length_known() {
        let mut buf = UPGRADE.as_bytes().to_vec();
        buf.extend_from_slice(b"\x81\x00");
        let up = parse(&buf).unwrap().unwrap();
        assert_eq!(up.head_len, UPGRADE.len());
        assert_eq!(up.path, SocketPath::Phoenix);
        assert_eq!(up.query.as_deref(), Some("name=a&vsn=2.0.0"));
        // RFC 6455's own example key and answer.
        assert_eq!(up.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn a_partial_head_asks_for_more() {
        assert!(matches!(parse(&UPGRADE.as_bytes()[..40]), Ok(None)));
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        let not = |s: &str| parse(s.as_bytes()).err() == Some(NotUpgrade);
        assert!(not("GET /api/devices HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(not(&UPGRADE.replace("GET ", "POST ")));
        assert!(not(&UPGRADE.replace("HTTP/1.1", "HTTP/1.0")));
        assert!(not(
            &UPGRADE.replace("/socket/websocket", "/socket/longpoll")
        ));
        assert!(not(&UPGRADE.replace("Upgrade: websocket", "Upgrade: h2c")));
        assert!(not(&UPGRADE.replace("keep-alive, Upgrade", "keep-alive")));
        assert!(not(&UPGRADE.replace("Version: 13", "Version: 8")));
        assert!(not(&UPGRADE.replace("Sec-WebSocket-Key", "X-Key")));
        assert!(not("\x16\x03\x01 not http at all\r\n\r\n"));
        assert!(parse(UPGRADE.replace("/socket/websocket", "/relay").as_bytes()).is_ok());
    }
}
