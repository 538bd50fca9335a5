//! `lock:<serial>` — the channel every lock joins (spec §1, seed: smart-home internal API).
//!
//! Join gives the lock its UUID (stable forever) and its configuration and intended state;
//! `reset` repeats that; `pair:complete` finishes a pairing the hub started with
//! `mode:pair`; `access:request` asks whether a presented item may open the lock; `event`
//! reports an access event; `report` tells the lock's actual state. The hub pushes
//! `mode:pair` and `state` to every instance joined to the topic, each with its join_ref
//! (see `admin` and `Registry::push_topic`).

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::{ChannelError, Ctx, decode_json};
use crate::config::AuthMode;
use crate::domain::{LockRecord, Serial, parse_ts};
use crate::protocol::{OutPayload, Payload};

/// Longest item serial accepted in `pair:complete` and `access:request`.
const MAX_ITEM_SERIAL: usize = 256;

/// State of one joined `lock:<serial>` channel.
#[derive(Debug)]
pub struct LockChannel {
    pub serial: Serial,
}

/// The topic of a lock.
pub fn topic(serial: &str) -> String {
    format!("lock:{serial}")
}

/// The join/reset reply, in the shape lock firmware reads.
pub fn lock_reply(lock: &LockRecord) -> String {
    #[derive(serde::Serialize)]
    struct Reply<'a> {
        uuid: &'a str,
        serial: &'a str,
        name: &'a str,
        mode: i64,
        feature_flags: &'a [String],
        config: &'a Value,
        state: &'a Value,
    }
    let reply = Reply {
        uuid: &lock.uuid,
        serial: &lock.serial,
        name: &lock.name,
        mode: lock.mode,
        feature_flags: &lock.feature_flags,
        config: &lock.config,
        state: &lock.intended_state,
    };
    serde_json::to_string(&reply).unwrap_or_else(|_| "{}".to_owned())
}

/// Join: create-or-load the lock, record the holder device, reply with the lock.
pub async fn join(serial: Serial, ctx: &Ctx<'_>) -> Result<(LockChannel, String), ChannelError> {
    let store = &ctx.hub.store;
    let lock = match ctx.hub.config.auth {
        AuthMode::Open => store.join_lock(&serial, &ctx.conn.name).await?,
        // Token mode: a lock, once held, is joined only by its holder (or after an admin
        // reassigns it).
        AuthMode::Token => store
            .join_lock_exclusive(&serial, &ctx.conn.name)
            .await?
            .ok_or_else(|| ChannelError::refused("lock held by another device"))?,
    };
    Ok((LockChannel { serial }, lock_reply(&lock)))
}

/// Events a lock may push, decoded from the wire once.
#[derive(Debug)]
pub enum LockIn {
    Reset,
    PairComplete(PairComplete),
    AccessRequest(AccessRequest),
    Event(Box<RawValue>),
    Report(Map<String, Value>),
}

/// `pair:complete`: every key of `mode:pair` plus the paired item's `serial`.
#[derive(Debug, Deserialize)]
pub struct PairComplete {
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

/// `access:request` `{"uuid": <presented item>, "device": <reader, optional>}`.
#[derive(Debug, Deserialize)]
pub struct AccessRequest {
    pub uuid: String,
    #[serde(default)]
    pub device: Option<String>,
}

impl LockIn {
    pub fn decode(event: &str, payload: &Payload) -> Result<LockIn, ChannelError> {
        match event {
            "reset" => Ok(LockIn::Reset),
            "pair:complete" => decode_json(payload, "pair:complete needs an object payload")
                .map(LockIn::PairComplete),
            "access:request" => {
                let req: AccessRequest =
                    decode_json(payload, "access:request needs {\"uuid\": string}")?;
                if req.uuid.is_empty() || req.uuid.len() > MAX_ITEM_SERIAL {
                    return Err(ChannelError::refused("invalid uuid"));
                }
                Ok(LockIn::AccessRequest(req))
            }
            "event" => match payload {
                Payload::Json(raw) => Ok(LockIn::Event(raw.clone())),
                Payload::Binary(_) => Err(ChannelError::refused("event needs a JSON payload")),
            },
            "report" => decode_json(payload, "report needs an object payload").map(LockIn::Report),
            _ => Err(ChannelError::UnknownEvent),
        }
    }
}

pub async fn handle_in(
    ch: &LockChannel,
    event: LockIn,
    ctx: &Ctx<'_>,
) -> Result<String, ChannelError> {
    let store = &ctx.hub.store;
    match event {
        LockIn::Reset => {
            let lock = store
                .get_lock(ch.serial.as_str())
                .await?
                .ok_or_else(|| ChannelError::Internal(anyhow::anyhow!("joined lock vanished")))?;
            Ok(lock_reply(&lock))
        }
        LockIn::PairComplete(body) => pair_complete(ch, body, ctx).await,
        LockIn::AccessRequest(req) => {
            let device = req.device.as_deref().unwrap_or("");
            let decision = store.decide_access(&ch.serial, &req.uuid, device).await?;
            tracing::info!(serial = %ch.serial, item = %req.uuid, granted = decision.access, "access decision");
            Ok(json!({ "access": decision.access, "user": decision.user }).to_string())
        }
        LockIn::Event(message) => {
            let value: Value = serde_json::from_str(message.get())
                .map_err(|e| ChannelError::Internal(e.into()))?;
            store
                .record_event(&ch.serial, &ctx.conn.name, &value)
                .await?;
            let body = format!(
                "{{\"from\":{},\"message\":{}}}",
                Value::String(ctx.conn.name.to_string()),
                message.get()
            );
            let reg = &ctx.hub.registry;
            reg.broadcast("events", "event", OutPayload::Json(body.clone()), None);
            reg.broadcast(
                &format!("events:{}", ch.serial),
                "event",
                OutPayload::Json(body),
                None,
            );
            Ok(json!({}).to_string())
        }
        LockIn::Report(state) => {
            store
                .set_reported_state(&ch.serial, &Value::Object(state))
                .await?;
            Ok(json!({}).to_string())
        }
    }
}

/// Checks `pair:complete` against the pending request: the pair_id must name an unexpired,
/// uncompleted request for this lock, every key the hub sent must come back unchanged, and
/// the item's `serial` must be present. Keys the lock adds are ignored.
async fn pair_complete(
    ch: &LockChannel,
    body: PairComplete,
    ctx: &Ctx<'_>,
) -> Result<String, ChannelError> {
    let fields = body.fields;
    let pair_id = fields
        .get("pair_id")
        .and_then(Value::as_str)
        .ok_or_else(|| ChannelError::refused("missing pair_id"))?;
    let item_serial = fields
        .get("serial")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= MAX_ITEM_SERIAL)
        .ok_or_else(|| ChannelError::refused("missing serial"))?;
    let store = &ctx.hub.store;
    let request = store
        .get_pairing(pair_id)
        .await?
        .filter(|r| r.lock == ch.serial.as_str())
        .ok_or_else(|| ChannelError::refused("unknown pairing request"))?;
    if request.completed_at.is_some() {
        return Err(ChannelError::refused("pairing request already completed"));
    }
    let expired =
        parse_ts(&request.expires_at).is_none_or(|t| t <= time::OffsetDateTime::now_utc());
    if expired {
        return Err(ChannelError::refused("pairing request expired"));
    }
    let sent = request.mode_pair_payload();
    let altered = sent
        .as_object()
        .into_iter()
        .flatten()
        .any(|(k, v)| fields.get(k) != Some(v));
    if altered {
        return Err(ChannelError::refused("pairing request altered"));
    }
    let item = match store.complete_pairing(pair_id, item_serial).await {
        Ok(item) => item,
        Err(crate::store::StoreError::PairingNotFound) => {
            return Err(ChannelError::refused("pairing request already completed"));
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(serial = %ch.serial, item = %item.serial, pair_id, "pairing completed");
    let announce = json!({
        "pair_id": item.pair_id,
        "lock": item.lock,
        "name": item.name,
        "type": item.kind,
        "serial": item.serial,
    });
    ctx.hub.registry.push_topic(
        &topic(ch.serial.as_str()),
        "pair:complete",
        OutPayload::Json(announce.to_string()),
    );
    Ok(json!({}).to_string())
}
