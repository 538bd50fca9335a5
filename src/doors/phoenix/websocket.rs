//! `GET /socket/websocket`: the Phoenix WebSocket transport (§1, §4, §10).
//!
//! [`admit`] is the last point that sees HTTP: it picks the serializer from `vsn`,
//! validates the `name` connect param and the offered subprotocols, and refuses with HTTP
//! 403 exactly where Phoenix does (the upgrade itself is [`super::handshake`]'s). After the
//! upgrade the shared driver ([`super::ws::drive`]) runs the socket with a
//! [`PhoenixHandler`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};
use tungstenite::Message as WsMessage;

use futures_util::FutureExt as _;

use crate::config::CloseFrames;
use crate::core::outbox::Receiver;
use crate::core::{Conn, Outbound};
use crate::domain::DeviceName;
use crate::doors::phoenix::Ctx as PhoenixCtx;
use crate::doors::phoenix::session::Session;
use crate::doors::phoenix::{DecodeError, Frame, Vsn, WireFrame};
use crate::metrics;
use crate::net::ws::{self, Close, Handler, WsStream};

/// Subprotocol entries that carry an auth token rather than name a protocol (§1.5).
const AUTH_TOKEN_PREFIX: &str = "base64url.bearer.phx.";

/// A Phoenix connect that passed [`admit`].
pub struct Admitted {
    pub name: DeviceName,
    pub vsn: Vsn,
    pub token_id: Option<crate::auth::TokenId>,
}

/// Phoenix's `connect` for an upgrade request: origin, offered subprotocols, serializer,
/// name, token and the per-address cap. `Ok` carries the subprotocol to confirm
/// (`phoenix`, when offered); `Err` is the status to refuse with (403, as Phoenix does).
pub fn admit(
    gate: &crate::doors::admission::Gate,
    peer: SocketAddr,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<(Admitted, Option<&'static str>), StatusCode> {
    let params = crate::doors::admission::Params::parse(query);
    if !gate.origin_allowed(headers) {
        gate.count_refused();
        tracing::info!(%peer, "connect refused: origin not allowed");
        return Err(StatusCode::FORBIDDEN);
    }
    if !subprotocols_acceptable(headers) {
        gate.count_refused();
        tracing::info!(%peer, "connect refused: no acceptable subprotocol");
        return Err(StatusCode::FORBIDDEN);
    }
    let auth_token = subprotocol_token(headers);
    let super::connect::Connect {
        name,
        vsn,
        token_id,
    } = super::connect::authorize_connect(gate, peer, &params, auth_token.as_deref())
        .map_err(|_| StatusCode::FORBIDDEN)?;
    let protocol = offers_phoenix(headers).then_some(PROTOCOL);
    Ok((
        Admitted {
            name,
            vsn,
            token_id,
        },
        protocol,
    ))
}

/// The subprotocol this door speaks.
const PROTOCOL: &str = "phoenix";

fn offered(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

fn offers_phoenix(headers: &HeaderMap) -> bool {
    offered(headers).any(|p| p == PROTOCOL)
}

/// A client that offers subprotocols must offer `phoenix` (token entries aside), or the
/// handshake would complete without a selected protocol, which browsers reject (§1.5).
fn subprotocols_acceptable(headers: &HeaderMap) -> bool {
    let mut protocols = offered(headers)
        .filter(|p| !p.is_empty() && !p.starts_with(AUTH_TOKEN_PREFIX))
        .peekable();
    protocols.peek().is_none() || protocols.any(|p| p == PROTOCOL)
}

/// The token of a `base64url.bearer.phx.<b64>` subprotocol entry (Phoenix `authToken`).
fn subprotocol_token(headers: &HeaderMap) -> Option<String> {
    offered(headers).find_map(crate::auth::token_from_subprotocol)
}

fn to_ws(w: WireFrame) -> WsMessage {
    match w {
        WireFrame::Text(t) => WsMessage::Text(t),
        WireFrame::Binary(b) => WsMessage::Binary(b),
    }
}

/// The Phoenix protocol on the WebSocket driver: decode, hand to the [`Session`], encode.
struct PhoenixHandler {
    session: Session,
    /// `HOMEHUB_CLOSE_FRAMES`.
    close_frames: CloseFrames,
    /// The client sends its JSON in binary frames: the lock firmware's Erlang client
    /// (`phoenix_gen_socket_client` on `websocket_client` 1.5), which never reports a
    /// server's close frame and would stay disconnected after one; it notices a TCP
    /// connection that ends without one and reconnects. Browsers and the `phoenix` JS
    /// client send JSON as text.
    json_in_binary: bool,
}

/// Whether a binary frame carries JSON (a V1 object or a V2 array) rather than a V2
/// binary push (whose first byte is its kind, 0).
fn is_json(data: &[u8]) -> bool {
    matches!(
        data.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'[' | b'{')
    )
}

impl Handler for PhoenixHandler {
    async fn on_frame(
        &mut self,
        data: &[u8],
        binary: bool,
        out: &mut Vec<WsMessage>,
    ) -> Result<(), Close> {
        let vsn = self.session.vsn();
        if binary && !self.json_in_binary && is_json(data) {
            self.json_in_binary = true;
            tracing::debug!(
                conn = self.session.conn().id,
                "client sends JSON in binary frames: hub closes end its TCP connection without a close frame"
            );
        }
        // Not kept between frames: an idle socket should not hold reply buffers.
        let mut frames: Vec<Frame> = Vec::new();
        let hub_metrics = &self.session.door().metrics;
        match vsn.decode(data, binary) {
            Ok(m) => self.session.handle(m, &mut frames).await,
            Err(DecodeError::Malformed {
                ref_,
                topic,
                reason,
            }) => {
                metrics::inc(&hub_metrics.decode_errors);
                self.session.malformed(ref_, &topic, reason, &mut frames)
            }
            Err(DecodeError::Fatal { code, reason }) => {
                metrics::inc(&hub_metrics.decode_errors);
                tracing::info!(
                    conn = self.session.conn().id,
                    code = u16::from(code),
                    reason,
                    "undecodable frame"
                );
                return Err(Close { code, reason });
            }
        }
        out.extend(frames.drain(..).filter_map(|f| vsn.encode(&f)).map(to_ws));
        Ok(())
    }

    fn on_outbound(&mut self, item: Outbound, out: &mut Vec<WsMessage>) -> Result<(), Close> {
        out.extend(self.session.outbound(item).map(to_ws));
        Ok(())
    }

    fn wants_close_frame(&self) -> bool {
        self.close_frames == CloseFrames::Always || !self.json_in_binary
    }
}

/// The socket's task: registers the connection and drives it. A plain function that builds
/// the driver future before the task's state machine exists (an `async fn` would keep its
/// own copy of the socket beside the driver's), so an idle socket costs less memory.
pub fn run(
    socket: WsStream,
    door: Arc<PhoenixCtx>,
    vsn: Vsn,
    (conn, rx): (Arc<Conn>, Receiver),
    peer: SocketAddr,
) -> impl Future<Output = ()> + Send {
    tracing::info!(conn = conn.id, device = %conn.name, %peer, ?vsn, "connected");
    if vsn == Vsn::V2 {
        conn.set_binary_capable();
    }
    let metrics = door.metrics.clone();
    let handler = PhoenixHandler {
        close_frames: door.settings.close_frames,
        session: Session::new(door, conn.clone(), vsn),
        json_in_binary: false,
    };
    ws::drive(socket, conn.clone(), rx, handler, metrics, false).map(move |(code, handler)| {
        // Ending the session leaves its channels and Presence.
        drop(handler);
        tracing::info!(conn = conn.id, device = %conn.name, close_code = ?code.map(u16::from), "disconnected");
    })
}
