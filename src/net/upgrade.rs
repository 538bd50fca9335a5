//! WebSocket upgrades for the hub's three socket doors: `/socket/websocket` (Phoenix),
//! `/relay` (raw device relay) and `/compendium`.
//!
//! The listener reads a connection's first request head and asks [`Sniffer`] (over
//! [`parse`]) whether it is a WebSocket upgrade to one of these paths, without hyper. If so,
//! [`serve`] hands the head to tungstenite's server handshake
//! (`accept_hdr_async_with_config`), which parses and checks the request, runs the doors'
//! admission as its callback, and writes the 101 (or the refusal). Every other request,
//! including a request to these paths that is not a well-formed upgrade, goes through
//! hyper to [`fallback`], which answers it as before: 400, 403 or 405, or, for an upgrade
//! that arrives on a connection hyper is already serving (a client reusing a kept-alive
//! connection), the same upgrade through hyper's own upgrade mechanism. Both paths build
//! the 101 with tungstenite's `create_response` and [`confirm`], and the decision (origin,
//! subprotocols, name, token, per-address cap) is [`Doors::decide`]'s, so they cannot drift
//! apart.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tungstenite::handshake::server::{self as handshake, ErrorResponse};
use tungstenite::protocol::{Role, WebSocketConfig};

use super::ws::{self, WsStream};
use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::core::Registry;
use crate::net::listener::{Counted, Io, Rewind};

/// Most headers read in a request head on the fast path (hyper takes longer heads; the
/// library's handshake takes up to 124, so everything sniffed here fits it).
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

/// A WebSocket upgrade request recognised by the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upgrade {
    /// Length of the request head; bytes after it are the socket's.
    pub head_len: usize,
    pub path: SocketPath,
}

/// The head is complete but not a WebSocket upgrade to a socket path (or not parseable
/// here): hyper answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotUpgrade;

/// Parses a request head: `Ok(None)` means more bytes are needed.
///
/// It accepts exactly what tungstenite's server handshake accepts (`create_response`: the
/// first `Connection` header lists `upgrade`, the first `Upgrade` is `websocket`, version
/// 13, a key; a target `http::Uri` parses), restricted to GET, HTTP/1.1 and the socket
/// paths, so a head sniffed here is never one the handshake then rejects.
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
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let path = SocketPath::from_path(path).ok_or(NotUpgrade)?;
    let first = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let connection_upgrade = first("connection")
        .filter(|v| v.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b)))
        .and_then(|v| std::str::from_utf8(v).ok())
        .is_some_and(|v| {
            v.split([' ', ','])
                .any(|t| t.eq_ignore_ascii_case("upgrade"))
        });
    let upgrade_websocket = first("upgrade").is_some_and(|v| v.eq_ignore_ascii_case(b"websocket"));
    let version_13 = first("sec-websocket-version").is_some_and(|v| v == b"13");
    let has_key = first("sec-websocket-key").is_some();
    // The handshake turns every header into an `http` header value, and the target into a
    // `Uri`; a head either would refuse is hyper's (which answers 400).
    let values_ok = req.headers.iter().all(|h| {
        h.value
            .iter()
            .all(|&b| b == b'\t' || (b >= b' ' && b != 0x7f))
    });
    if !(connection_upgrade && upgrade_websocket && version_13 && has_key && values_ok)
        || Uri::try_from(target).is_err()
    {
        return Err(NotUpgrade);
    }
    Ok(Some(Upgrade { head_len, path }))
}

/// Recognises an upgrade head as it arrives, however it is split into reads: feed it the
/// whole buffer read so far after each read.
///
/// The head is parsed once its blank line has arrived, so a client that sends it a byte
/// at a time costs a scan of each new byte, not a parse of the whole buffer per read.
#[derive(Debug, Default)]
pub struct Sniffer {
    scanned: usize,
}

impl Sniffer {
    /// `Ok(None)`: more bytes needed; `Ok(Some)`: an upgrade; `Err`: hyper's.
    pub fn feed(&mut self, buf: &[u8]) -> Result<Option<Upgrade>, NotUpgrade> {
        // The blank line may straddle two reads.
        let from = self.scanned.saturating_sub(2);
        self.scanned = buf.len();
        if !ends_head(&buf[from.min(buf.len())..]) {
            return Ok(None);
        }
        parse(buf)
    }
}

/// Whether `bytes` hold the blank line that ends a request head (CRLF, or bare LF as
/// `httparse` also accepts).
pub(crate) fn ends_head(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(3).any(|w| w == b"\n\r\n")
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
/// is spawned on (shutdown waits for it), the hub's kill switch, and the registry whose
/// per-address count (`HOMEHUB_MAX_CONNS_PER_IP`) covers HTTP connections too.
#[derive(Clone)]
pub struct Edge {
    pub doors: Arc<dyn Doors>,
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
    pub registry: Arc<Registry>,
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

/// Adds the accepted subprotocol to a 101 (both paths).
fn confirm(headers: &mut HeaderMap, protocol: Option<&'static str>) {
    if let Some(protocol) = protocol {
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(protocol),
        );
    }
}

/// A refused upgrade's answer: a bare status, and the connection is closed.
pub(crate) fn refusal(status: StatusCode) -> ErrorResponse {
    let mut response = ErrorResponse::new(None);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Answers an upgrade the listener sniffed: tungstenite's handshake reads the head again
/// from `buf` (the bytes read so far, cut at the head: it refuses bytes after the request),
/// with admission as its callback; refused with a bare status and closed, or switched and
/// handed to the door with the bytes after the head.
// The callback's error type is tungstenite's `ErrorResponse` (an `http::Response`).
#[allow(clippy::result_large_err)]
pub async fn serve(io: Io, mut buf: Vec<u8>, up: Upgrade, edge: &Edge, peer: SocketAddr) {
    let leftover = buf.split_off(up.head_len.min(buf.len()));
    let mut accepted = None;
    let callback = |req: &handshake::Request, mut response: handshake::Response| match edge
        .doors
        .decide(up.path, peer, req.uri().query(), req.headers())
    {
        Ok(a) => {
            confirm(response.headers_mut(), a.protocol);
            accepted = Some(a);
            Ok(response)
        }
        Err(status) => Err(refusal(status)),
    };
    // This socket only answers the handshake; `start` opens the door's with its limits.
    let config = Some(config(ws::READ_BUFFER));
    let handshake =
        tokio_tungstenite::accept_hdr_async_with_config(Rewind::new(buf, io), callback, config);
    let ws = match handshake.await {
        Ok(ws) => ws,
        // Refused: the callback's answer was written, the reason logged by admission.
        Err(tungstenite::Error::Http(_)) => return,
        Err(e) => return tracing::info!(%peer, error = %e, "websocket upgrade failed"),
    };
    let Some(accepted) = accepted else {
        return tracing::warn!(%peer, "websocket upgrade without a decision");
    };
    let (unread, io) = ws.into_inner().into_parts();
    let leftover = if unread.is_empty() {
        leftover
    } else {
        [unread, leftover].concat()
    };
    accepted.start(io, leftover, &edge.tracker, peer).await;
}

/// Takes a hyper connection's own per-address count out while its upgrade is decided (the
/// fast path decides with the HTTP connection's count given back too), and puts it back.
struct SetAside<'a> {
    registry: &'a Registry,
    ip: IpAddr,
}

impl<'a> SetAside<'a> {
    fn new(registry: &'a Registry, ip: IpAddr) -> SetAside<'a> {
        registry.release_ip(ip);
        SetAside { registry, ip }
    }
}

impl Drop for SetAside<'_> {
    fn drop(&mut self) {
        // Unconditional (0 = no cap): the connection was counted before.
        self.registry.admit_ip(self.ip, 0);
    }
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
    // The same 101 the fast path's handshake builds, if this is a well-formed upgrade.
    let switching = handshake::create_response_with_body(&req, axum::body::Body::empty).ok();
    if switching.is_none() && path != SocketPath::Phoenix {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let decided = {
        let _aside = req
            .extensions()
            .get::<Counted>()
            .map(|_| SetAside::new(&edge.registry, peer.ip()));
        edge.doors
            .decide(path, peer, req.uri().query(), req.headers())
    };
    let accepted = match decided {
        Ok(accepted) => accepted,
        Err(status) => return status.into_response(),
    };
    let Some(mut response) = switching else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if req
        .extensions()
        .get::<hyper::upgrade::OnUpgrade>()
        .is_none()
    {
        return StatusCode::UPGRADE_REQUIRED.into_response();
    }
    confirm(response.headers_mut(), accepted.protocol);
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
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    #[test]
    fn the_end_of_a_head_is_found_with_either_line_ending() {
        assert!(ends_head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(ends_head(b"GET / HTTP/1.1\nHost: x\n\n"));
        assert!(ends_head(b"\n\r\n"));
        assert!(!ends_head(b"GET / HTTP/1.1\r\nHost: x\r\n"));
    }

    /// What the sniffer decides when `bytes` arrive in reads ending at `cuts` (then the
    /// rest): the first decision, with the length read when it was made.
    fn sniff_in_reads(bytes: &[u8], cuts: &[usize]) -> Result<Option<Upgrade>, NotUpgrade> {
        let mut ends: Vec<usize> = cuts.iter().map(|&c| c.min(bytes.len())).collect();
        ends.push(bytes.len());
        ends.sort_unstable();
        ends.dedup();
        let mut sniffer = Sniffer::default();
        for end in ends.into_iter().filter(|&e| e > 0) {
            match sniffer.feed(&bytes[..end]) {
                Ok(None) => continue,
                decided => return decided,
            }
        }
        Ok(None)
    }

    /// A blocking stream for tungstenite's own (synchronous) server handshake: reads
    /// `input`, records what is written.
    struct Wire {
        input: std::io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl std::io::Read for Wire {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl std::io::Write for Wire {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Whether tungstenite's handshake, the one [`serve`] runs, switches on `head`.
    fn library_switches(head: &[u8]) -> bool {
        let wire = Wire {
            input: std::io::Cursor::new(head.to_vec()),
            output: Vec::new(),
        };
        match tungstenite::accept(wire) {
            Ok(ws) => ws.get_ref().output.starts_with(b"HTTP/1.1 101 "),
            Err(_) => false,
        }
    }

    fn casing() -> impl Strategy<Value = fn(&str) -> String> {
        prop_oneof![
            Just((|s: &str| s.to_owned()) as fn(&str) -> String),
            Just((|s: &str| s.to_ascii_lowercase()) as fn(&str) -> String),
            Just((|s: &str| s.to_ascii_uppercase()) as fn(&str) -> String),
        ]
    }

    prop_compose! {
        /// A valid upgrade head (what any WebSocket client may send), its path, and bytes a
        /// client may send right after it.
        fn upgrade_head()(
            path in prop_oneof![
                Just(("/socket/websocket", SocketPath::Phoenix)),
                Just(("/relay", SocketPath::Relay)),
                Just(("/compendium", SocketPath::Compendium)),
            ],
            query in proptest::option::of("[a-zA-Z0-9=&._~%-]{0,40}"),
            connection in prop_oneof![
                Just("Upgrade"), Just("upgrade"), Just("keep-alive, Upgrade"), Just("Upgrade,keep-alive"),
            ],
            upgrade in prop_oneof![Just("websocket"), Just("WebSocket")],
            case in casing(),
            extra in proptest::collection::vec(("X-[A-Za-z0-9-]{1,12}", "[!-~][ -~]{0,30}"), 0..6),
            shuffle in Just(()).prop_perturb(|_, mut rng| rng.random::<u64>()),
            crlf in any::<bool>(),
            after in proptest::collection::vec(any::<u8>(), 0..32),
        ) -> (Vec<u8>, SocketPath, Vec<u8>) {
            let eol = if crlf { "\r\n" } else { "\n" };
            let mut headers: Vec<(String, String)> = vec![
                (case("Host"), "127.0.0.1:4000".into()),
                (case("Connection"), connection.into()),
                (case("Upgrade"), upgrade.into()),
                (case("Sec-WebSocket-Version"), "13".into()),
                (case("Sec-WebSocket-Key"), "dGhlIHNhbXBsZSBub25jZQ==".into()),
            ];
            headers.extend(extra);
            // A fixed permutation from the drawn seed: header order is free.
            let n = headers.len();
            for i in (1..n).rev() {
                let j = (shuffle >> (i % 32)) as usize % (i + 1);
                headers.swap(i, j);
            }
            let target = match &query {
                Some(q) => format!("{}?{q}", path.0),
                None => path.0.to_owned(),
            };
            let mut head = format!("GET {target} HTTP/1.1{eol}");
            for (name, value) in &headers {
                head.push_str(&format!("{name}: {value}{eol}"));
            }
            head.push_str(eol);
            (head.into_bytes(), path.1, after)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Arbitrary bytes never panic the decoder, and what it decides does not depend on
        /// how the bytes were split into reads.
        #[test]
        fn any_bytes_are_decided_the_same_in_any_reads(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            cuts in proptest::collection::vec(0usize..600, 0..8),
        ) {
            let whole = sniff_in_reads(&bytes, &[]);
            prop_assert_eq!(sniff_in_reads(&bytes, &cuts), whole);
            if let Ok(Some(up)) = whole {
                prop_assert!(library_switches(&bytes[..up.head_len]));
            }
        }

        /// Heads that are mostly right (an upgrade head with bytes changed) reach the
        /// interesting branches; still no panic, and no dependence on the reads.
        #[test]
        fn damaged_upgrade_heads_are_decided_the_same_in_any_reads(
            (head, _, after) in upgrade_head(),
            damage in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cuts in proptest::collection::vec(0usize..700, 0..8),
        ) {
            let mut bytes = [head, after].concat();
            for (at, b) in damage {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            let whole = sniff_in_reads(&bytes, &[]);
            prop_assert_eq!(sniff_in_reads(&bytes, &cuts), whole);
            if let Ok(Some(up)) = whole {
                prop_assert!(library_switches(&bytes[..up.head_len]));
            }
        }

        /// A valid upgrade head is recognised, with its length and path, however it is split
        /// into reads and whatever follows it; and tungstenite's handshake accepts it too.
        #[test]
        fn a_valid_upgrade_head_is_recognised_in_any_reads(
            (head, path, after) in upgrade_head(),
            cuts in proptest::collection::vec(0usize..700, 0..8),
        ) {
            let bytes = [head.clone(), after].concat();
            let expected = Upgrade { head_len: head.len(), path };
            prop_assert_eq!(sniff_in_reads(&bytes, &cuts), Ok(Some(expected)));
            prop_assert!(library_switches(&head));
        }
    }
}
