//! `GET /compendium`: the Compendium relay (spec §3, seed: Compendium web socket server).
//!
//! Messages are JSON objects with a `type`:
//! - `INIT` → `INITRESP {"EpheWssAddr": <32 hex digits>}`: a fresh random 128-bit address
//!   owned by this connection (a second `INIT` replaces it; the old one stops routing).
//! - `ROUTE {"EpheWssAddr", "msg": {…}}` → the holder of the address receives
//!   `DELIVER {"msg": {…}}`. The sender gets nothing back on success.
//! - anything invalid → `ERR {"errCode", "errMsg"}`; the connection stays open.
//!   Clients may send `ERR` or `ERROR` (the seed shows both); the hub logs and ignores it.
//!
//! Error codes (HTTP-like, as the original server used 404):
//! 400 not JSON / not an object / missing or ill-typed field, 404 no connection holds the
//! target address, 405 a message type clients may not send or an unknown type, 413 the
//! message exceeds `HOMEHUB_COMPENDIUM_MAX_BYTES` (a frame beyond `HOMEHUB_MAX_FRAME_BYTES`
//! closes the socket with 1009), 429 the connection is over its rate limit, 503 the
//! target's queue is full.
//! Addresses live in memory only and die with their connection.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::value::RawValue;
use tungstenite::{Message as WsMessage, Utf8Bytes};

use futures_util::FutureExt as _;

use crate::auth::RateLimiter;
use crate::core::fabric::DeliveryError;
use crate::core::{Conn, Door, Outbound};
use crate::net::ws::{self, Close, Handler, WsStream};
use crate::services::Hub;

/// A decoded client message ([`decode`]).
#[derive(Debug)]
pub enum ClientMsg {
    Init,
    Route {
        addr: String,
        msg: Box<RawValue>,
    },
    /// A client reporting an error (`ERR` or `ERROR`).
    Error,
}

/// An `ERR` to send back: `errCode` and `errMsg`.
#[derive(Debug, PartialEq)]
pub struct Err {
    pub code: u16,
    pub msg: String,
}

fn err(code: u16, msg: impl Into<String>) -> Err {
    Err {
        code,
        msg: msg.into(),
    }
}

/// A message the hub sends, written by serde (`msg` passes through byte for byte).
#[derive(Debug, serde::Serialize)]
#[serde(tag = "type")]
pub enum ServerMsg<'a> {
    #[serde(rename = "INITRESP")]
    InitResp {
        #[serde(rename = "EpheWssAddr")]
        addr: &'a str,
    },
    #[serde(rename = "DELIVER")]
    Deliver { msg: &'a RawValue },
    #[serde(rename = "ERR")]
    Err {
        #[serde(rename = "errCode")]
        code: u16,
        #[serde(rename = "errMsg")]
        msg: &'a str,
    },
}

impl ServerMsg<'_> {
    /// The message's JSON text.
    pub fn to_text(&self) -> String {
        Box::<str>::from(crate::core::message::to_json(self)).into_string()
    }
}

/// A valid address: exactly 32 lower- or upper-case hex digits.
fn valid_address(a: &str) -> bool {
    a.len() == 32 && a.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Decodes one client message of at most `max` bytes.
pub fn decode(data: &[u8], max: usize) -> Result<ClientMsg, Err> {
    if data.len() > max {
        return Err(err(413, format!("message larger than {max} bytes")));
    }
    // Fields stay raw: `msg` is forwarded byte for byte, as the sender wrote it.
    #[derive(serde::Deserialize)]
    struct Wire<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<&'a RawValue>,
        #[serde(rename = "EpheWssAddr", borrow)]
        addr: Option<&'a RawValue>,
        #[serde(borrow)]
        msg: Option<&'a RawValue>,
    }
    let not_object = || err(400, "message must be a JSON object");
    let text = std::str::from_utf8(data).map_err(|_| not_object())?;
    if !text.trim_start().starts_with('{') {
        return Err(not_object());
    }
    let wire: Wire = serde_json::from_str(text).map_err(|_| not_object())?;
    let string = |raw: &RawValue| serde_json::from_str::<String>(raw.get()).ok();
    let kind = match wire.kind {
        Some(t) => string(t).ok_or_else(|| err(400, "type must be a string"))?,
        None => return Err(err(400, "missing field type")),
    };
    match kind.as_str() {
        "INIT" => Ok(ClientMsg::Init),
        "ROUTE" => {
            let addr = match wire.addr.map(string) {
                Some(Some(a)) if valid_address(&a) => a.to_ascii_lowercase(),
                Some(_) => return Err(err(400, "EpheWssAddr must be 32 hex digits")),
                None => return Err(err(400, "missing field EpheWssAddr")),
            };
            let msg = match wire.msg {
                Some(m) if m.get().starts_with('{') => m.to_owned(),
                Some(_) => return Err(err(400, "msg must be a JSON object")),
                None => return Err(err(400, "missing field msg")),
            };
            Ok(ClientMsg::Route { addr, msg })
        }
        "ERR" | "ERROR" => Ok(ClientMsg::Error),
        "INITRESP" | "DELIVER" => Err(err(405, format!("{kind} is sent by the server only"))),
        other => Err(err(405, format!("unknown message type {other:?}"))),
    }
}

/// A Compendium connection that passed [`admit`]: in token mode, the id of its token.
pub struct Admitted {
    token_id: Option<crate::auth::TokenId>,
}

/// Admission to `/compendium` (origin, per-address cap, the token in token mode); `Err` is
/// the status to refuse with.
pub fn admit(
    hub: &Hub,
    peer: SocketAddr,
    query: Option<&str>,
    headers: &axum::http::HeaderMap,
) -> Result<Admitted, axum::http::StatusCode> {
    let claims = crate::doors::admission::admit(hub, peer, headers, query)?;
    Ok(Admitted {
        token_id: claims.map(|c| c.jti.into_boxed_str()),
    })
}

struct Compendium {
    hub: Arc<Hub>,
    conn: Arc<Conn>,
    limiter: RateLimiter,
    /// The address this connection holds, if it sent `INIT`.
    addr: Option<String>,
}

impl Compendium {
    async fn handle(&mut self, data: &[u8]) -> Option<String> {
        if !self.limiter.allow() {
            return Some(error_json(&err(429, "rate limited")));
        }
        let registry = &self.hub.registry;
        match decode(data, self.hub.config.compendium.max_bytes) {
            Ok(ClientMsg::Init) => {
                if let Some(old) = self.addr.take() {
                    registry.compendium.release(&old, self.conn.id);
                }
                let addr = registry.compendium.allocate(&self.conn);
                tracing::info!(conn = self.conn.id, %addr, "compendium address allocated");
                let resp = ServerMsg::InitResp { addr: &addr }.to_text();
                self.addr = Some(addr);
                Some(resp)
            }
            Ok(ClientMsg::Route { addr, msg }) => {
                let text = Utf8Bytes::from(ServerMsg::Deliver { msg: &msg }.to_text());
                match self.hub.fabric.deliver_to_address(&addr, text).await {
                    Ok(()) => None,
                    Err(DeliveryError::TargetBusy) => Some(error_json(&err(503, "target busy"))),
                    Err(_) => Some(error_json(&err(404, "no such address"))),
                }
            }
            Ok(ClientMsg::Error) => {
                tracing::info!(conn = self.conn.id, "client reported an error");
                None
            }
            Err(e) => {
                tracing::info!(conn = self.conn.id, code = e.code, reason = %e.msg, "invalid compendium message");
                Some(error_json(&e))
            }
        }
    }
}

fn error_json(e: &Err) -> String {
    ServerMsg::Err {
        code: e.code,
        msg: &e.msg,
    }
    .to_text()
}

impl Handler for Compendium {
    async fn on_frame(
        &mut self,
        data: &[u8],
        _binary: bool,
        out: &mut Vec<WsMessage>,
    ) -> Result<(), Close> {
        if let Some(answer) = self.handle(data).await {
            out.push(WsMessage::Text(Utf8Bytes::from(answer)));
        }
        Ok(())
    }

    fn on_outbound(&mut self, item: Outbound, out: &mut Vec<WsMessage>) -> Result<(), Close> {
        if let Outbound::Text(t) = item {
            out.push(WsMessage::Text(*t));
        }
        Ok(())
    }
}

/// The socket's task (built up front like the Phoenix door's, see `websocket::run`).
pub fn run(
    socket: WsStream,
    hub: Arc<Hub>,
    admitted: Admitted,
    peer: SocketAddr,
) -> impl Future<Output = ()> + Send {
    let (conn, rx) =
        crate::doors::admission::connect(&hub, None, Door::Compendium, peer, admitted.token_id);
    tracing::info!(conn = conn.id, %peer, "compendium connected");
    let handler = Compendium {
        hub: hub.clone(),
        conn: conn.clone(),
        limiter: RateLimiter::new(hub.config.rate_limit, hub.config.rate_burst),
        addr: None,
    };
    ws::drive(socket, conn.clone(), rx, handler, hub.metrics.clone(), true).map(
        move |(code, mut handler)| {
            if let Some(addr) = handler.addr.take() {
                hub.registry.compendium.release(&addr, conn.id);
            }
            hub.registry.disconnect(&conn, []);
            tracing::info!(conn = conn.id, close_code = ?code.map(u16::from), "compendium disconnected");
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_are_written_by_serde_and_msg_passes_through() {
        let msg = RawValue::from_string(r#"{"b": 1.50, "a": "\u00e9"}"#.to_owned()).unwrap();
        assert_eq!(
            ServerMsg::Deliver { msg: &msg }.to_text(),
            r#"{"type":"DELIVER","msg":{"b": 1.50, "a": "\u00e9"}}"#
        );
        assert_eq!(
            ServerMsg::InitResp { addr: "ab" }.to_text(),
            r#"{"type":"INITRESP","EpheWssAddr":"ab"}"#
        );
        assert_eq!(
            error_json(&err(404, "no \"such\" address")),
            r#"{"type":"ERR","errCode":404,"errMsg":"no \"such\" address"}"#
        );
    }

    #[test]
    fn validates_every_field() {
        assert!(matches!(
            decode(br#"{"type":"INIT"}"#, 100),
            Ok(ClientMsg::Init)
        ));
        let addr = "0123456789abcdef0123456789ABCDEF";
        let route = format!(r#"{{"type":"ROUTE","EpheWssAddr":"{addr}","msg":{{"a":1}}}}"#);
        match decode(route.as_bytes(), 1000) {
            Ok(ClientMsg::Route { addr, msg }) => {
                assert_eq!(addr, "0123456789abcdef0123456789abcdef");
                assert_eq!(msg.get(), r#"{"a":1}"#);
            }
            other => panic!("{other:?}"),
        }
        let code = |s: &str| decode(s.as_bytes(), 1000).err().map(|e| e.code);
        assert_eq!(code("nope"), Some(400));
        assert_eq!(code("[1]"), Some(400));
        assert_eq!(code(r#"{"t":1}"#), Some(400));
        assert_eq!(code(r#"{"type":5}"#), Some(400));
        assert_eq!(code(r#"{"type":"ROUTE","msg":{}}"#), Some(400));
        assert_eq!(
            code(r#"{"type":"ROUTE","EpheWssAddr":"xyz","msg":{}}"#),
            Some(400)
        );
        let no_msg = format!(r#"{{"type":"ROUTE","EpheWssAddr":"{addr}"}}"#);
        assert_eq!(code(&no_msg), Some(400));
        let bad_msg = format!(r#"{{"type":"ROUTE","EpheWssAddr":"{addr}","msg":"hi"}}"#);
        assert_eq!(code(&bad_msg), Some(400));
        assert_eq!(code(r#"{"type":"DELIVER","msg":{}}"#), Some(405));
        assert_eq!(code(r#"{"type":"HELLO"}"#), Some(405));
        assert!(matches!(
            decode(br#"{"type":"ERROR","errCode":1,"errMsg":"x"}"#, 100),
            Ok(ClientMsg::Error)
        ));
        assert_eq!(decode(&[b' '; 101], 100).err().map(|e| e.code), Some(413));
    }
}
