//! `GET /relay`: the raw device relay (spec §2, seed: device relay server), verbatim over
//! WebSocket text frames, on the same relay directory as the Phoenix `relay` topic.
//!
//! In: `{"target": …, "payload": …}`. Target `server` runs a command (`get_devices`,
//! `get_device_info` (also `device_info`), `register`, `unregister`); any other target is
//! a registered device, which receives `{"sender": …, "payload": …}`. Every packet is
//! answered with `{"success": bool, "error_message"?: str, "response"?: any}`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tungstenite::{Message as WsMessage, Utf8Bytes};

use futures_util::FutureExt as _;

use crate::auth::RateLimiter;
use crate::core::close_code;
use crate::core::directory::{self, Claim, Packet};
use crate::core::{Conn, Door, Outbound};
use crate::doors::phoenix::channels::presence;
use crate::doors::phoenix::channels::relay::{Meta, info_json};
use crate::net::ws::{self, Close, Handler, WsStream};
use crate::services::Hub;

/// A raw relay connection that passed [`admit`]: in token mode, the only device name it
/// may register as, and the id of its token.
pub struct Admitted {
    only_name: Option<String>,
    token_id: Option<crate::auth::TokenId>,
}

/// Admission to `/relay` (origin, per-address cap, the token in token mode); `Err` is the
/// status to refuse with.
pub fn admit(
    hub: &Hub,
    peer: SocketAddr,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Admitted, StatusCode> {
    // In token mode the token names the only device this connection may register as.
    let claims = crate::doors::admission::admit(hub, peer, headers, query)?;
    Ok(match claims {
        Some(c) => Admitted {
            only_name: Some(c.sub),
            token_id: Some(c.jti.into_boxed_str()),
        },
        None => Admitted {
            only_name: None,
            token_id: None,
        },
    })
}

/// One packet, decoded once.
#[derive(Deserialize)]
struct RawPacket {
    target: String,
    payload: Box<RawValue>,
}

/// What one text frame asks for ([`decode`]).
#[derive(Debug)]
pub enum Decoded {
    /// Target `server` (any case): a command the hub runs.
    Server(Command),
    /// Any other target: `payload` exactly as sent, for the device named `target`.
    Device {
        target: String,
        payload: Box<RawValue>,
    },
}

/// Decodes one text frame of at most `max_packet` characters (exclusive, as the seed
/// counts); `Err` is the `error_message` to answer with.
pub fn decode(text: &str, max_packet: usize) -> Result<Decoded, String> {
    if text.chars().count() >= max_packet {
        return Err("packet too large".into());
    }
    let packet = serde_json::from_str::<RawPacket>(text)
        .map_err(|_| "packet must be a JSON object with target and payload".to_owned())?;
    if packet.target.eq_ignore_ascii_case("server") {
        return Command::decode(&packet.payload).map(Decoded::Server);
    }
    let RawPacket { target, payload } = packet;
    Ok(Decoded::Device { target, payload })
}

/// A command for target `server`.
#[derive(Debug)]
pub enum Command {
    GetDevices,
    GetDeviceInfo(String),
    Register(Meta),
    Unregister,
}

#[derive(Deserialize)]
struct ServerPayload {
    command: Option<String>,
    device_name: Option<String>,
    description: Option<String>,
    version: Option<String>,
    interface: Option<String>,
    #[serde(default)]
    force: bool,
}

impl Command {
    fn decode(payload: &RawValue) -> Result<Command, String> {
        let p: ServerPayload = serde_json::from_str(payload.get()).map_err(|e| {
            if payload.get().trim_start().starts_with('{') {
                format!("invalid server payload: {e}")
            } else {
                "payload for server must be an object".to_owned()
            }
        })?;
        // The seed's register example has no `command`: a bare `device_name` registers.
        let command = match (&p.command, &p.device_name) {
            (Some(c), _) => c.as_str(),
            (None, Some(_)) => "register",
            (None, None) => return Err("missing command".into()),
        };
        match command {
            "get_devices" => Ok(Command::GetDevices),
            "get_device_info" | "device_info" => p
                .device_name
                .map(Command::GetDeviceInfo)
                .ok_or_else(|| "missing device_name".into()),
            "register" => Ok(Command::Register(Meta {
                device_name: p.device_name,
                description: p.description,
                version: p.version,
                interface: p.interface,
                force: p.force,
            })),
            "unregister" => Ok(Command::Unregister),
            other => Err(format!("unknown command {other:?}")),
        }
    }
}

struct RawRelay {
    hub: Arc<Hub>,
    conn: Arc<Conn>,
    /// Token mode: the one name this connection's token allows.
    only_name: Option<String>,
    limiter: RateLimiter,
    /// The name this connection registered, while registered.
    name: Option<String>,
    online_at: i64,
}

fn ok(response: Option<Value>) -> String {
    match response {
        Some(r) => json!({ "success": true, "response": r }).to_string(),
        None => json!({ "success": true }).to_string(),
    }
}

fn fail(message: &str) -> String {
    json!({ "success": false, "error_message": message }).to_string()
}

impl RawRelay {
    async fn handle(&mut self, text: &str) -> String {
        if !self.limiter.allow() {
            return fail("rate limited");
        }
        let (target, payload) = match decode(text, self.hub.config.relay_max_packet) {
            Ok(Decoded::Server(cmd)) => return self.command(cmd).await,
            Ok(Decoded::Device { target, payload }) => (target, payload),
            Err(e) => return fail(&e),
        };
        let Some(sender) = self.name.clone() else {
            return fail("register before sending");
        };
        let packet = Arc::new(Packet { sender, payload });
        match self.hub.relay.send(&self.conn, &target, packet).await {
            Ok(()) => ok(None),
            Err(e) => fail(&e.to_string()),
        }
    }

    async fn command(&mut self, cmd: Command) -> String {
        let relay = &self.hub.relay;
        match cmd {
            Command::GetDevices => ok(Some(json!(relay.names()))),
            Command::GetDeviceInfo(name) => match relay.info(&name) {
                Some(info) => ok(Some(info_json(&directory::normalize(&name), &info))),
                None => fail("unknown device"),
            },
            Command::Register(meta) => self.register(&meta).await,
            Command::Unregister => {
                self.unregister();
                ok(None)
            }
        }
    }

    /// Registers by the directory's one rule ([`crate::services::relay::Relay::register`]).
    async fn register(&mut self, meta: &Meta) -> String {
        let Some(requested) = meta.device_name.as_deref() else {
            return fail("missing device_name");
        };
        let info = match meta.info() {
            Ok(info) => info,
            Err(e) => return fail(&e),
        };
        let claim = Claim {
            name: requested,
            info,
            force: meta.force,
            token_device: self.only_name.as_deref(),
        };
        let name = match self.hub.relay.register(&self.conn, claim).await {
            Ok(name) => name,
            Err(e) => return fail(&e.to_string()),
        };
        // A device may only register itself: a second name replaces the first (once the
        // second is its own; a refused one changes nothing).
        if let Some(old) = self.name.replace(name.clone())
            && old != name
        {
            self.presence(&old, None);
            self.hub.relay.unregister(&old, &self.conn);
        }
        let presence = presence::meta("relay", self.online_at, Vec::new(), true);
        self.presence(&name, Some(presence));
        ok(None)
    }

    /// Publishes this connection's Presence under `name` (`None`: it left).
    fn presence(&self, name: &str, meta: Option<crate::core::presence::DeviceMeta>) {
        if self
            .hub
            .fabric
            .presence_set(name, self.conn.id, meta)
            .is_err()
        {
            tracing::warn!(
                conn = self.conn.id,
                device = name,
                "presence not published: fabric unavailable"
            );
        }
    }

    fn unregister(&mut self) {
        if let Some(name) = self.name.take() {
            self.presence(&name, None);
            self.hub.relay.unregister(&name, &self.conn);
        }
    }
}

impl Handler for RawRelay {
    async fn on_frame(
        &mut self,
        data: &[u8],
        binary: bool,
        out: &mut Vec<WsMessage>,
    ) -> Result<(), Close> {
        let answer = match (binary, std::str::from_utf8(data)) {
            (true, _) => fail("binary frames are not supported; send JSON text"),
            (false, Ok(text)) => self.handle(text).await,
            (false, Err(_)) => fail("invalid utf-8"),
        };
        out.push(WsMessage::Text(Utf8Bytes::from(answer)));
        Ok(())
    }

    fn on_outbound(&mut self, item: Outbound, out: &mut Vec<WsMessage>) -> Result<(), Close> {
        match item {
            Outbound::Packet(p) => out.push(WsMessage::Text(Utf8Bytes::from(p.body_json()))),
            Outbound::RelayRevoked => {
                // The directory entry already belongs to the newcomer, and the departure
                // was recorded when it took the name.
                if let Some(name) = self.name.take() {
                    self.presence(&name, None);
                }
                let notice = fail("name taken over by another connection");
                out.push(WsMessage::Text(Utf8Bytes::from(notice)));
                return Err(Close {
                    code: close_code::GOING_AWAY,
                    reason: "name taken over",
                });
            }
            _ => {}
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
    let Admitted {
        only_name,
        token_id,
    } = admitted;
    let (conn, rx) = crate::doors::admission::connect(&hub, None, Door::Relay, peer, token_id);
    tracing::info!(conn = conn.id, %peer, "relay connected");
    let handler = RawRelay {
        hub: hub.clone(),
        conn: conn.clone(),
        only_name,
        limiter: RateLimiter::new(hub.config.rate_limit, hub.config.rate_burst),
        name: None,
        online_at: time::OffsetDateTime::now_utc().unix_timestamp(),
    };
    ws::drive(socket, conn.clone(), rx, handler, hub.metrics.clone(), true).map(
        move |(code, mut handler)| {
            // A closed connection unregisters its device at once.
            handler.unregister();
            hub.registry.disconnect(&conn, []);
            tracing::info!(conn = conn.id, close_code = ?code.map(u16::from), "relay disconnected");
        },
    )
}
