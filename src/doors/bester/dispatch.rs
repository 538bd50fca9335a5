//! A handler message's path: call the handler of `payload.type`, follow `sendHandler`
//! chains (at most `max_chain` handlers), then carry out `sendClients` or `sendServers`.
//! Whatever goes wrong becomes the [`Outcome`] the sender is told; nothing here waits
//! without a deadline and nothing here touches another connection's socket.
//!
//! Bridge: a `sendClients` target that is not a connected Bester user but a device on the
//! relay directory (Phoenix `relay` topic or raw `/relay`) receives the message as a relay
//! packet `{"sender": "bester:<from>", "payload": {"type", "data"}}`.

use std::sync::Arc;

use futures_util::future::join_all;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::Ctx;
use super::auth::Username;
use super::federation;
use super::handlers::{self, CallError};
use super::protocol::{self, Outcome, Status};
use super::reply::{Command, HandlerReply};
use crate::core::DeliveryError;
use crate::core::directory::{self, Packet};

/// Who a message came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    User(Username),
    /// A peer server, by its configured name.
    Peer(String),
}

impl Origin {
    /// `header.from` of delivered messages: the username, or `server:<peer name>`.
    pub fn label(&self) -> String {
        match self {
            Origin::User(u) => u.to_string(),
            Origin::Peer(p) => format!("server:{p}"),
        }
    }
}

/// Runs a message through its handler(s) and carries out the final command.
pub async fn run(
    door: &Ctx,
    origin: &Origin,
    kind: &str,
    data: Box<RawValue>,
    hops: usize,
) -> Outcome {
    let settings = &door.bester.settings;
    let mut kind = kind.to_owned();
    let mut data = data;
    for step in 1..=settings.max_chain {
        let Some(spec) = settings.handlers.get(&kind) else {
            let message = if step == 1 {
                format!("no handler for type {kind:?}")
            } else {
                format!("sendHandler to unknown type {kind:?}")
            };
            return Outcome::error(Status::UnknownType, message);
        };
        let reply =
            match handlers::call(spec, &data, settings.handler_timeout, settings.max_frame).await {
                Ok(reply) => reply,
                Err(e) => {
                    tracing::warn!(handler = %kind, error = %e, "bester handler call failed");
                    let status = match e {
                        CallError::Unavailable(_) => Status::HandlerUnavailable,
                        CallError::Timeout => Status::HandlerTimeout,
                        CallError::InvalidReply(_) => Status::HandlerInvalidReply,
                    };
                    return Outcome::error_with(status, e.to_string(), handler_field(&kind));
                }
            };
        match reply {
            HandlerReply::Failure { status, data } => {
                tracing::info!(handler = %kind, %status, "bester handler reported a failure");
                let mut extra = handler_field(&kind);
                extra.insert("status".into(), Value::String(status));
                extra.insert("data".into(), to_value(&data));
                return Outcome::error_with(Status::HandlerError, "the handler failed", extra);
            }
            HandlerReply::Success {
                command,
                kind: reply_kind,
                data: reply_data,
            } => {
                let out_kind = reply_kind.unwrap_or_else(|| kind.clone());
                match command {
                    Command::SendHandler(next) => {
                        tracing::debug!(from = %kind, to = %next, step, "bester sendHandler");
                        kind = next;
                        data = reply_data;
                    }
                    Command::SendClients(targets) => {
                        return send_clients(door, origin, &out_kind, &reply_data, &targets).await;
                    }
                    Command::SendServers(targets) => {
                        return send_servers(door, hops, &out_kind, &reply_data, &targets).await;
                    }
                }
            }
        }
    }
    Outcome::error(
        Status::ChainTooDeep,
        format!(
            "a message may pass through at most {} handlers",
            settings.max_chain
        ),
    )
}

fn handler_field(kind: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("handler".into(), Value::String(kind.to_owned()));
    m
}

fn to_value(raw: &RawValue) -> Value {
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

/// Every target reached: `ok {"delivered"}`; otherwise `undelivered` with the reasons.
fn delivery_outcome(delivered: Vec<String>, undelivered: Map<String, Value>) -> Outcome {
    if undelivered.is_empty() {
        return Outcome::ok(json!({ "delivered": delivered }));
    }
    let mut extra = Map::new();
    extra.insert("delivered".into(), json!(delivered));
    extra.insert("undelivered".into(), Value::Object(undelivered));
    Outcome::error_with(Status::Undelivered, "some targets were not reached", extra)
}

/// `sendClients`: every connection of each named user, else a relay device of that name.
async fn send_clients(
    door: &Ctx,
    origin: &Origin,
    kind: &str,
    data: &RawValue,
    targets: &[String],
) -> Outcome {
    let from = origin.label();
    let frame = protocol::delivery_frame(&from, kind, data);
    let too_large = frame.len() > door.bester.settings.max_frame;
    let text = super::sessions::delivery_text(frame);
    let mut delivered = Vec::new();
    let mut undelivered = Map::new();
    let mut seen = std::collections::HashSet::new();
    for target in targets.iter().filter(|t| seen.insert(t.as_str())) {
        let text = match &text {
            Some(text) if !too_large => text.clone(),
            Some(_) => {
                undelivered.insert(target.clone(), json!("too large"));
                continue;
            }
            None => {
                undelivered.insert(target.clone(), json!("busy"));
                continue;
            }
        };
        let result = match door.fabric.deliver_to_user(target, text).await {
            Ok(()) => Ok(()),
            Err(DeliveryError::TargetBusy) => Err("busy"),
            Err(DeliveryError::Unavailable) => Err("fabric unavailable"),
            Err(DeliveryError::UnknownTarget | DeliveryError::BinaryUnsupported) => {
                bridge(door, &from, target, kind, data).await
            }
        };
        match result {
            Ok(()) => delivered.push(target.clone()),
            Err(reason) => {
                undelivered.insert(target.clone(), json!(reason));
            }
        }
    }
    tracing::debug!(%from, kind, delivered = delivered.len(), undelivered = undelivered.len(), "bester sendClients");
    delivery_outcome(delivered, undelivered)
}

/// Delivers to a relay device named `target` (see the module docs). The target is
/// resolved by the relay's own name rule (case-insensitive; a reserved or invalid name is
/// no device), as on every relay door.
async fn bridge(
    door: &Ctx,
    from: &str,
    target: &str,
    kind: &str,
    data: &RawValue,
) -> Result<(), &'static str> {
    let target = directory::relay_name(target).map_err(|_| "not connected")?;
    let payload = protocol::bridge_payload(kind, data).ok_or("not connected")?;
    if payload.get().chars().count() >= door.bester.settings.relay_max_packet {
        return if door.registry.relay.info(&target).is_some() {
            Err("too large for the relay")
        } else {
            Err("not connected")
        };
    }
    let packet = Arc::new(Packet {
        sender: format!("bester:{from}"),
        payload,
    });
    door.fabric
        .deliver(&target, packet)
        .await
        .map_err(|e| match e {
            DeliveryError::TargetBusy => "busy",
            DeliveryError::Unavailable => "fabric unavailable",
            DeliveryError::UnknownTarget | DeliveryError::BinaryUnsupported => "not connected",
        })
}

/// `sendServers`: one connection per peer, all at once, each bounded by the timeout.
async fn send_servers(
    door: &Ctx,
    hops: usize,
    kind: &str,
    data: &RawValue,
    targets: &[String],
) -> Outcome {
    let settings = &door.bester.settings;
    if hops + 1 > settings.max_chain {
        return Outcome::error(
            Status::ChainTooDeep,
            format!(
                "a message may travel at most {} server hops",
                settings.max_chain
            ),
        );
    }
    let mut seen = std::collections::HashSet::new();
    let sends = targets
        .iter()
        .filter(|t| seen.insert(t.as_str()))
        .map(|target| async move {
            let result = match settings.peer_for_target(target) {
                Some(peer) => federation::send(settings, peer, hops + 1, kind, data).await,
                None => Err("unknown peer".to_owned()),
            };
            (target.clone(), result)
        });
    let mut delivered = Vec::new();
    let mut undelivered = Map::new();
    for (target, result) in join_all(sends).await {
        match result {
            Ok(()) => delivered.push(target),
            Err(reason) => {
                tracing::warn!(peer = %target, %reason, "bester sendServers failed");
                undelivered.insert(target, Value::String(reason));
            }
        }
    }
    delivery_outcome(delivered, undelivered)
}
