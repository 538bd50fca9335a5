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
use crate::core::outbox::Receiver;
use crate::core::{Conn, Fabric, Outbound, Registry};
use crate::metrics::Metrics;
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
    pub token_id: Option<crate::auth::TokenId>,
}

/// Admission to `/compendium` (origin, per-address cap, the token in token mode); `Err` is
/// the status to refuse with.
pub fn admit(
    gate: &crate::doors::admission::Gate,
    peer: SocketAddr,
    query: Option<&str>,
    headers: &axum::http::HeaderMap,
) -> Result<Admitted, axum::http::StatusCode> {
    let claims = crate::doors::admission::admit(gate, peer, headers, query)?;
    Ok(Admitted {
        token_id: claims.map(|c| c.jti.into_boxed_str()),
    })
}

/// What the Compendium door uses: the registry (its addresses, and to end a
/// connection), the fabric (delivery), metrics, and its limits.
#[derive(Clone)]
pub struct Ctx {
    pub registry: Arc<Registry>,
    pub fabric: Arc<dyn Fabric>,
    pub metrics: Arc<Metrics>,
    /// `HOMEHUB_COMPENDIUM_MAX_BYTES`: larger messages get `ERR` 413.
    pub max_bytes: usize,
    /// `HOMEHUB_RATE_LIMIT` and `HOMEHUB_RATE_BURST`, per connection.
    pub rate: (u32, u32),
}

impl Ctx {
    pub fn new(hub: &Hub) -> Ctx {
        Ctx {
            registry: hub.registry.clone(),
            fabric: hub.fabric.clone(),
            metrics: hub.metrics.clone(),
            max_bytes: hub.config.compendium.max_bytes,
            rate: (hub.config.rate_limit, hub.config.rate_burst),
        }
    }
}

struct Compendium {
    ctx: Ctx,
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
        let registry = &self.ctx.registry;
        match decode(data, self.ctx.max_bytes) {
            Ok(ClientMsg::Init) => {
                if let Some(old) = self.addr.take() {
                    registry.compendium.release(&old, self.conn.id);
                }
                let addr = registry.compendium.allocate(&self.conn);
                tracing::info!(conn = self.conn.id, %addr, "compendium address allocated");
                // In a cluster: routable from every node once the client has it.
                self.ctx
                    .fabric
                    .hold(&crate::core::interest::Name::Address(addr.clone()))
                    .await;
                let resp = ServerMsg::InitResp { addr: &addr }.to_text();
                self.addr = Some(addr);
                Some(resp)
            }
            Ok(ClientMsg::Route { addr, msg }) => {
                let text = Utf8Bytes::from(ServerMsg::Deliver { msg: &msg }.to_text());
                match self.ctx.fabric.deliver_to_address(&addr, text).await {
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

/// The socket's task (built up front like the Phoenix door's, see `websocket::run`), on
/// a connection admission registered.
pub fn run(
    socket: WsStream,
    ctx: Ctx,
    (conn, rx): (Arc<Conn>, Receiver),
    peer: SocketAddr,
) -> impl Future<Output = ()> + Send {
    tracing::info!(conn = conn.id, %peer, "compendium connected");
    let metrics = ctx.metrics.clone();
    let registry = ctx.registry.clone();
    let handler = Compendium {
        limiter: RateLimiter::new(ctx.rate.0, ctx.rate.1),
        ctx,
        conn: conn.clone(),
        addr: None,
    };
    ws::drive(socket, conn.clone(), rx, handler, metrics, true).map(move |(code, mut handler)| {
        if let Some(addr) = handler.addr.take() {
            registry.compendium.release(&addr, conn.id);
        }
        registry.disconnect(&conn, []);
        tracing::info!(conn = conn.id, close_code = ?code.map(u16::from), "compendium disconnected");
    })
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

    /// The handler's rules, driven without sockets on a temp-SQLite hub.
    mod handler {
        use super::*;
        use crate::core::Door;
        use crate::services::testing::TestHub;
        use serde_json::{Value, json};

        struct Client {
            handler: Compendium,
            rx: Receiver,
        }

        impl Client {
            fn new(hub: &TestHub) -> Client {
                let (conn, rx) = hub.connect(None, Door::Compendium);
                let ctx = Ctx::new(hub);
                Client {
                    handler: Compendium {
                        limiter: RateLimiter::new(ctx.rate.0, ctx.rate.1),
                        ctx,
                        conn,
                        addr: None,
                    },
                    rx,
                }
            }

            /// Sends one message; returns the answer, if the hub sends one.
            async fn send(&mut self, text: &str) -> Option<Value> {
                let answer = self.handler.handle(text.as_bytes()).await?;
                Some(serde_json::from_str(&answer).expect("JSON answer"))
            }

            async fn init(&mut self) -> String {
                let r = self.send(r#"{"type":"INIT"}"#).await.expect("INITRESP");
                assert_eq!(r["type"], "INITRESP", "{r}");
                r["EpheWssAddr"].as_str().expect("an address").to_owned()
            }

            /// Texts queued for this connection.
            fn queued(&mut self) -> Vec<String> {
                let mut got = Vec::new();
                while let Some(item) = self.rx.try_recv() {
                    let mut out = Vec::new();
                    assert!(self.handler.on_outbound(item, &mut out).is_ok());
                    for m in out {
                        if let WsMessage::Text(t) = m {
                            got.push(t.as_str().to_owned());
                        }
                    }
                }
                got
            }
        }

        #[tokio::test]
        async fn a_routed_message_is_delivered_byte_for_byte_and_not_answered() {
            let hub = TestHub::new().await;
            let mut a = Client::new(&hub);
            let mut b = Client::new(&hub);
            let _ = a.init().await;
            let b_addr = b.init().await;
            assert_eq!(b_addr.len(), 32);
            let route = format!(
                r#"{{"type":"ROUTE","EpheWssAddr":"{b_addr}","msg":{{"n": 1.50, "k": [1]}}}}"#
            );
            assert_eq!(
                a.send(&route).await,
                None,
                "a delivered ROUTE is not answered"
            );
            assert_eq!(
                b.queued(),
                [r#"{"type":"DELIVER","msg":{"n": 1.50, "k": [1]}}"#]
            );
        }

        #[tokio::test]
        async fn an_unknown_address_is_err_404() {
            let hub = TestHub::new().await;
            let mut a = Client::new(&hub);
            let route =
                r#"{"type":"ROUTE","EpheWssAddr":"0123456789abcdef0123456789abcdef","msg":{}}"#;
            let r = a.send(route).await.expect("an error");
            assert_eq!(
                r,
                json!({"type": "ERR", "errCode": 404, "errMsg": "no such address"})
            );
        }

        #[tokio::test]
        async fn a_second_init_releases_the_first_address() {
            let hub = TestHub::new().await;
            let mut a = Client::new(&hub);
            let mut b = Client::new(&hub);
            let first = b.init().await;
            let second = b.init().await;
            assert_ne!(first, second);
            let to =
                |addr: &str| format!(r#"{{"type":"ROUTE","EpheWssAddr":"{addr}","msg":{{}}}}"#);
            let r = a.send(&to(&first)).await.expect("the old address is gone");
            assert_eq!(r["errCode"], 404);
            assert_eq!(a.send(&to(&second)).await, None);
            assert_eq!(b.queued().len(), 1);
        }

        #[tokio::test]
        async fn messages_past_the_rate_limit_are_err_429() {
            let hub = TestHub::with(|c| {
                c.rate_limit = 1;
                c.rate_burst = 2;
            })
            .await;
            let mut a = Client::new(&hub);
            let _ = a.init().await;
            let _ = a.init().await;
            let r = a.send(r#"{"type":"INIT"}"#).await.expect("refused");
            assert_eq!(r["errCode"], 429, "{r}");
        }
    }
}
