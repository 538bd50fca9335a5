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
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use tungstenite::{Message as WsMessage, Utf8Bytes};

use futures_util::FutureExt as _;

use crate::auth::RateLimiter;
use crate::core::close_code;
use crate::core::directory::{self, Claim, Packet};
use crate::core::outbox::Receiver;
use crate::core::{Conn, Fabric, Outbound, Registry};
use crate::doors::phoenix::channels::presence;
use crate::doors::phoenix::channels::relay::{Meta, info_json};
use crate::metrics::Metrics;
use crate::net::ws::{self, Close, Handler, WsStream};
use crate::services::Hub;
use crate::services::relay::Relay;

/// A raw relay connection that passed [`admit`]: in token mode, the only device name it
/// may register as, and the id of its token.
pub struct Admitted {
    pub only_name: Option<String>,
    pub token_id: Option<crate::auth::TokenId>,
}

/// Admission to `/relay` (origin, per-address cap, the token in token mode); `Err` is the
/// status to refuse with.
pub fn admit(
    gate: &crate::doors::admission::Gate,
    peer: SocketAddr,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Admitted, StatusCode> {
    // In token mode the token names the only device this connection may register as.
    let claims = crate::doors::admission::admit(gate, peer, headers, query)?;
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

/// What the raw relay door uses: the relay service, the fabric (Presence), the registry
/// (to end a connection), metrics, and its limits.
#[derive(Clone)]
pub struct Ctx {
    pub relay: Arc<Relay>,
    pub fabric: Arc<dyn Fabric>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// `HOMEHUB_RELAY_MAX_PACKET`: a packet of this many characters or more is refused.
    pub max_packet: usize,
    /// `HOMEHUB_RATE_LIMIT` and `HOMEHUB_RATE_BURST`, per connection.
    pub rate: (u32, u32),
}

impl Ctx {
    pub fn new(hub: &Hub) -> Ctx {
        Ctx {
            relay: hub.relay.clone(),
            fabric: hub.fabric.clone(),
            registry: hub.registry.clone(),
            metrics: hub.metrics.clone(),
            max_packet: hub.config.relay.max_packet,
            rate: (hub.config.rate_limit, hub.config.rate_burst),
        }
    }
}

struct RawRelay {
    ctx: Ctx,
    conn: Arc<Conn>,
    /// Token mode: the one name this connection's token allows.
    only_name: Option<String>,
    limiter: RateLimiter,
    /// The name this connection registered, while registered.
    name: Option<String>,
    online_at: i64,
}

/// Every packet's answer.
#[derive(Serialize)]
struct Answer<'a> {
    success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<Value>,
}

impl Answer<'_> {
    fn text(&self) -> String {
        // A bool, a string and a `Value` (string keys only): serializing cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| r#"{"success":false}"#.to_owned())
    }
}

fn ok(response: Option<Value>) -> String {
    Answer {
        success: true,
        error_message: None,
        response,
    }
    .text()
}

fn fail(message: &str) -> String {
    Answer {
        success: false,
        error_message: Some(message),
        response: None,
    }
    .text()
}

impl RawRelay {
    async fn handle(&mut self, text: &str) -> String {
        if !self.limiter.allow() {
            return fail("rate limited");
        }
        let (target, payload) = match decode(text, self.ctx.max_packet) {
            Ok(Decoded::Server(cmd)) => return self.command(cmd).await,
            Ok(Decoded::Device { target, payload }) => (target, payload),
            Err(e) => return fail(&e),
        };
        let Some(sender) = self.name.clone() else {
            return fail("register before sending");
        };
        let packet = Arc::new(Packet { sender, payload });
        match self.ctx.relay.send(&self.conn, &target, packet).await {
            Ok(()) => ok(None),
            Err(e) => fail(&e.to_string()),
        }
    }

    async fn command(&mut self, cmd: Command) -> String {
        let relay = &self.ctx.relay;
        match cmd {
            Command::GetDevices => match relay.names().await {
                Ok(names) => ok(Some(Value::from(names))),
                Err(e) => fail(&e.to_string()),
            },
            Command::GetDeviceInfo(name) => match relay.info(&name).await {
                Ok(Some(info)) => ok(Some(info_json(&directory::normalize(&name), &info))),
                Ok(None) => fail("unknown device"),
                Err(e) => fail(&e.to_string()),
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
        let name = match self.ctx.relay.register(&self.conn, claim).await {
            Ok(name) => name,
            Err(e) => return fail(&e.to_string()),
        };
        // A device may only register itself: a second name replaces the first (once the
        // second is its own; a refused one changes nothing).
        if let Some(old) = self.name.replace(name.clone())
            && old != name
        {
            self.presence(&old, None);
            self.ctx.relay.unregister(&old, &self.conn);
        }
        let presence = presence::meta("relay", self.online_at, Vec::new(), true);
        self.presence(&name, Some(presence));
        ok(None)
    }

    /// Publishes this connection's Presence under `name` (`None`: it left).
    fn presence(&self, name: &str, meta: Option<crate::core::presence::DeviceMeta>) {
        if self
            .ctx
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
            self.ctx.relay.unregister(&name, &self.conn);
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

/// The socket's task (built up front like the Phoenix door's, see `websocket::run`), on
/// a connection admission registered.
pub fn run(
    socket: WsStream,
    ctx: Ctx,
    only_name: Option<String>,
    (conn, rx): (Arc<Conn>, Receiver),
    peer: SocketAddr,
) -> impl Future<Output = ()> + Send {
    tracing::info!(conn = conn.id, %peer, "relay connected");
    let metrics = ctx.metrics.clone();
    let registry = ctx.registry.clone();
    let handler = RawRelay {
        limiter: RateLimiter::new(ctx.rate.0, ctx.rate.1),
        ctx,
        conn: conn.clone(),
        only_name,
        name: None,
        online_at: time::OffsetDateTime::now_utc().unix_timestamp(),
    };
    ws::drive(socket, conn.clone(), rx, handler, metrics, true).map(move |(code, mut handler)| {
        // A closed connection unregisters its device at once.
        handler.unregister();
        registry.disconnect(&conn, []);
        tracing::info!(conn = conn.id, close_code = ?code.map(u16::from), "relay disconnected");
    })
}

/// The raw relay's rules, driven without sockets on a temp-SQLite hub.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Door;
    use crate::services::testing::TestHub;
    use serde_json::json;

    struct Device {
        handler: RawRelay,
        rx: Receiver,
    }

    impl Device {
        fn new(hub: &TestHub, only_name: Option<&str>) -> Device {
            let (conn, rx) = hub.connect(None, Door::Relay);
            let ctx = Ctx::new(hub);
            Device {
                handler: RawRelay {
                    limiter: RateLimiter::new(ctx.rate.0, ctx.rate.1),
                    ctx,
                    conn,
                    only_name: only_name.map(str::to_owned),
                    name: None,
                    online_at: 0,
                },
                rx,
            }
        }

        /// Sends one text frame; returns the answer as JSON.
        async fn send(&mut self, packet: Value) -> Value {
            let mut out = Vec::new();
            let text = packet.to_string();
            let result = self
                .handler
                .on_frame(text.as_bytes(), false, &mut out)
                .await;
            assert!(result.is_ok(), "a text frame never closes the socket");
            match out.as_slice() {
                [WsMessage::Text(t)] => serde_json::from_str(t.as_str()).expect("JSON answer"),
                other => panic!("one text answer expected, got {other:?}"),
            }
        }

        async fn register(&mut self, name: &str) -> Value {
            self.send(json!({"target": "server", "payload": {"command": "register", "device_name": name}}))
                .await
        }

        /// What the hub queued for this device, as it is written to the socket.
        fn queued(&mut self) -> Vec<Result<Value, Close>> {
            let mut got = Vec::new();
            while let Some(item) = self.rx.try_recv() {
                let mut out = Vec::new();
                match self.handler.on_outbound(item, &mut out) {
                    Ok(()) => {}
                    Err(close) => {
                        got.push(Err(close));
                        continue;
                    }
                }
                for m in out {
                    if let WsMessage::Text(t) = m {
                        got.push(Ok(serde_json::from_str(t.as_str()).expect("JSON")));
                    }
                }
            }
            got
        }
    }

    fn success() -> Value {
        json!({"success": true})
    }

    #[tokio::test]
    async fn a_device_must_register_before_it_sends() {
        let hub = TestHub::new().await;
        let mut a = Device::new(&hub, None);
        let answer = a.send(json!({"target": "b", "payload": {}})).await;
        assert_eq!(
            answer,
            json!({"success": false, "error_message": "register before sending"})
        );
    }

    #[tokio::test]
    async fn registered_devices_exchange_packets_verbatim_and_list_each_other() {
        let hub = TestHub::new().await;
        let mut a = Device::new(&hub, None);
        let mut b = Device::new(&hub, None);
        assert_eq!(a.register("alpha").await, success());
        assert_eq!(b.register("beta").await, success());
        let sent = a
            .send(json!({"target": "beta", "payload": {"n": 1.50, "s": "x"}}))
            .await;
        assert_eq!(sent, success());
        let got = b.queued();
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].as_ref().ok(),
            Some(&json!({"sender": "alpha", "payload": {"n": 1.50, "s": "x"}}))
        );
        let devices = a
            .send(json!({"target": "server", "payload": {"command": "get_devices"}}))
            .await;
        let mut names: Vec<String> =
            serde_json::from_value(devices["response"].clone()).expect("a list of names");
        names.sort();
        assert_eq!(names, ["alpha", "beta"]);
        let unknown = a.send(json!({"target": "gamma", "payload": {}})).await;
        assert_eq!(unknown["success"], false);
    }

    #[tokio::test]
    async fn a_token_allows_registering_only_its_own_name() {
        let hub = TestHub::new().await;
        let mut a = Device::new(&hub, Some("alpha"));
        let refused = a.register("beta").await;
        assert_eq!(refused["success"], false, "{refused}");
        assert_eq!(a.register("alpha").await, success());
    }

    #[tokio::test]
    async fn a_forced_takeover_ends_the_old_holder_with_going_away() {
        let hub = TestHub::new().await;
        let mut old = Device::new(&hub, None);
        let mut new = Device::new(&hub, None);
        assert_eq!(old.register("alpha").await, success());
        let refused = new.register("alpha").await;
        assert_eq!(
            refused["success"], false,
            "a held name needs force: {refused}"
        );
        let forced = new
            .send(json!({"target": "server", "payload": {"command": "register", "device_name": "alpha", "force": true}}))
            .await;
        assert_eq!(forced, success());
        let got = old.queued();
        assert_eq!(got.len(), 1, "{got:?}");
        let close = got[0].as_ref().expect_err("the old holder is closed");
        assert_eq!(close.code, close_code::GOING_AWAY);
        assert!(
            old.handler.name.is_none(),
            "the old holder no longer has the name"
        );
    }

    #[tokio::test]
    async fn packets_past_the_rate_limit_are_refused() {
        let hub = TestHub::with(|c| {
            c.rate_limit = 1;
            c.rate_burst = 2;
        })
        .await;
        let mut a = Device::new(&hub, None);
        let mut answers = Vec::new();
        for _ in 0..3 {
            answers.push(a.send(json!({"target": "b", "payload": {}})).await);
        }
        assert_eq!(answers[0]["error_message"], "register before sending");
        assert_eq!(answers[1]["error_message"], "register before sending");
        assert_eq!(answers[2]["error_message"], "rate limited");
    }

    #[tokio::test]
    async fn binary_frames_and_invalid_utf8_are_answered_not_fatal() {
        let hub = TestHub::new().await;
        let mut a = Device::new(&hub, None);
        let mut out = Vec::new();
        assert!(a.handler.on_frame(b"{}", true, &mut out).await.is_ok());
        assert!(
            a.handler
                .on_frame(&[0xff, 0xfe], false, &mut out)
                .await
                .is_ok()
        );
        assert_eq!(out.len(), 2);
    }
}
