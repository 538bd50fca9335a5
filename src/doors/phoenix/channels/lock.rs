//! `lock:<serial>` — the channel every lock joins (spec §1, seed: smart-home internal API).
//!
//! Join gives the lock its UUID (stable forever) and its configuration and intended state;
//! `reset` repeats that; `pair:complete` finishes a pairing the hub started with
//! `mode:pair`; `access:request` asks whether a presented item may open the lock; `event`
//! reports an access event; `report` tells the lock's actual state. The hub pushes
//! `mode:pair` to every instance joined to the topic, each with its join_ref (see `admin`
//! and `Registry::push_topic`). Anything else the hub pushes on a lock's topic (`state`)
//! is an extension the shipped firmware has no handler for (an unknown push crashes its
//! client), so it reaches only an instance that asked for it with the join param
//! `{"accepts": ["state"]}` ([`LockChannel::accepts_push`]). Watchers learn of pairings and
//! state changes on `events` and `events:<serial>`, never on the lock's own topic.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{ChannelError, Ctx, Reply, decode_json, ok};
use crate::config::AuthMode;
use crate::core::message::to_json;
use crate::domain::{LockRecord, Serial, parse_ts};
use crate::doors::phoenix::Payload;

/// Longest item serial accepted in `pair:complete` and `access:request`.
const MAX_ITEM_SERIAL: usize = 256;
/// Most entries of the `accepts` join param, and the longest entry.
const MAX_ACCEPTS: usize = 16;
const MAX_ACCEPT_LEN: usize = 64;

/// The push every lock handles, whatever it accepts.
pub const MODE_PAIR: &str = "mode:pair";
/// The extension push of intended state (only to locks that accept it).
pub const STATE: &str = crate::services::locks::STATE_EVENT;

/// State of one joined `lock:<serial>` channel.
#[derive(Debug)]
pub struct LockChannel {
    pub serial: Serial,
    /// The lock's UUID, as the join reply gave it: `access:request` must name it.
    pub uuid: String,
    /// Extension pushes this instance asked for (`{"accepts": [...]}` in the join).
    accepts: Vec<String>,
}

impl LockChannel {
    /// Whether a push of `event` may go to this instance: `mode:pair` always, any other
    /// event only when the lock listed it in `accepts`.
    pub fn accepts_push(&self, event: &str) -> bool {
        event == MODE_PAIR || self.accepts.iter().any(|a| a == event)
    }
}

/// The lock join's params: `{"accepts": ["state", ...]}`, everything else ignored (the
/// firmware's own join params are not ours to judge).
#[derive(Debug, Default, Deserialize)]
struct JoinParams {
    #[serde(default)]
    accepts: Option<Value>,
}

fn parse_accepts(payload: &Payload) -> Result<Vec<String>, ChannelError> {
    const BAD: &str = "accepts must be a list of event names";
    let params: JoinParams = match payload.json() {
        // A non-object join payload (`null`, a list) carries no accepts.
        Some(raw) => serde_json::from_str(raw.get()).unwrap_or_default(),
        None => JoinParams::default(),
    };
    let Some(accepts) = params.accepts else {
        return Ok(Vec::new());
    };
    let list = accepts
        .as_array()
        .ok_or_else(|| ChannelError::refused(BAD))?;
    if list.len() > MAX_ACCEPTS {
        return Err(ChannelError::refused(BAD));
    }
    list.iter()
        .map(|v| match v.as_str() {
            Some(s) if !s.is_empty() && s.len() <= MAX_ACCEPT_LEN => Ok(s.to_owned()),
            _ => Err(ChannelError::refused(BAD)),
        })
        .collect()
}

/// The join/reset reply, in the shape lock firmware reads.
pub fn lock_reply(lock: &LockRecord) -> Box<RawValue> {
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
    to_json(&reply)
}

/// A successful lock join: the channel, the reply, and the pushes that follow the reply
/// (`mode:pair` of every pending pairing request, so a lock that was offline when the
/// administrator started pairing receives it now).
pub struct LockJoined {
    pub channel: LockChannel,
    pub reply: Box<RawValue>,
    pub pushes: Vec<(&'static str, Box<RawValue>)>,
}

/// Join: create-or-load the lock, record the holder device, reply with the lock, then push
/// its pending pairing requests.
pub async fn join(
    serial: Serial,
    payload: &Payload,
    ctx: &Ctx<'_>,
) -> Result<LockJoined, ChannelError> {
    let accepts = parse_accepts(payload)?;
    let store = ctx.store;
    let lock = match ctx.auth {
        AuthMode::Open => store.join_lock(&serial, &ctx.conn.name).await?,
        // Token mode: a lock, once held, is joined only by its holder (or after an admin
        // reassigns it).
        AuthMode::Token => store
            .join_lock_exclusive(&serial, &ctx.conn.name)
            .await?
            .ok_or_else(|| ChannelError::refused("lock held by another device"))?,
    };
    let reply = lock_reply(&lock);
    // The join already succeeded: a failure here costs the pushes, not the join.
    let pending = match store.deliver_pending_pairings(serial.as_str()).await {
        Ok(pending) => pending,
        Err(e) => {
            tracing::error!(%serial, error = %e, "cannot load pending pairing requests");
            Vec::new()
        }
    };
    let pushes = pending
        .iter()
        .map(|request| {
            tracing::info!(%serial, pair_id = %request.pair_id, "pending pairing request sent after join");
            (MODE_PAIR, to_json(&request.mode_pair_payload()))
        })
        .collect();
    let channel = LockChannel {
        serial,
        uuid: lock.uuid,
        accepts,
    };
    Ok(LockJoined {
        channel,
        reply,
        pushes,
    })
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

/// `access:request` `{"uuid": <this lock's UUID>, "device": <presented item's serial>}`,
/// as the lock firmware sends it (the original hub loads the door by `uuid` and looks up
/// the owner of the item whose serial is `device`).
#[derive(Debug, Deserialize)]
pub struct AccessRequest {
    pub uuid: String,
    pub device: String,
}

impl LockIn {
    pub fn decode(event: &str, payload: &Payload) -> Result<LockIn, ChannelError> {
        match event {
            "reset" => Ok(LockIn::Reset),
            "pair:complete" => decode_json(payload, "pair:complete needs an object payload")
                .map(LockIn::PairComplete),
            "access:request" => {
                let req: AccessRequest = decode_json(
                    payload,
                    "access:request needs {\"uuid\": string, \"device\": string}",
                )?;
                if req.device.is_empty() || req.device.len() > MAX_ITEM_SERIAL {
                    return Err(ChannelError::refused("invalid device"));
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

pub async fn handle_in(ch: &LockChannel, event: LockIn, ctx: &Ctx<'_>) -> Reply {
    let store = ctx.store;
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
            // Never decide for another lock: the uuid must be the one this channel joined.
            if req.uuid != ch.uuid {
                tracing::warn!(serial = %ch.serial, uuid = %req.uuid, item = %req.device, "access request refused: wrong lock");
                return Err(ChannelError::refused("wrong lock"));
            }
            let decision = store
                .decide_access(&ch.serial, &req.device, ctx.conn.name.as_str())
                .await?;
            tracing::info!(serial = %ch.serial, item = %req.device, granted = decision.access, "access decision");
            Ok(to_json(&decision))
        }
        LockIn::Event(message) => {
            let value: Value = serde_json::from_str(message.get())
                .map_err(|e| ChannelError::Internal(e.into()))?;
            store
                .record_event(&ch.serial, &ctx.conn.name, &value)
                .await?;
            #[derive(serde::Serialize)]
            struct Announce<'a> {
                from: &'a str,
                message: &'a RawValue,
            }
            let body = Announce {
                from: ctx.conn.name.as_str(),
                message: &message,
            };
            crate::services::locks::announce(ctx.fabric, &ch.serial, "event", &body);
            ok()
        }
        LockIn::Report(state) => {
            ctx.locks.report(&ch.serial, &Value::Object(state)).await?;
            ok()
        }
    }
}

/// Checks `pair:complete` against the pending request: the pair_id must name an unexpired,
/// uncompleted request for this lock, every key the hub sent must come back unchanged, and
/// the item's `serial` must be present. Keys the lock adds are ignored.
async fn pair_complete(ch: &LockChannel, body: PairComplete, ctx: &Ctx<'_>) -> Reply {
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
    let store = ctx.store;
    let request = store
        .get_pairing(pair_id)
        .await?
        .filter(|r| r.lock == ch.serial.as_str())
        .ok_or_else(|| ChannelError::refused("unknown pairing request"))?;
    if request.completed_at.is_some() {
        return Err(ChannelError::refused("pairing request already completed"));
    }
    if request.cancelled_at.is_some() {
        return Err(ChannelError::refused("pairing request cancelled"));
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
            return Err(ChannelError::refused(
                "pairing request already completed or cancelled",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(serial = %ch.serial, item = %item.serial, pair_id, "pairing completed");
    let announce = PairAnnounce {
        pair_id: &item.pair_id,
        lock: &item.lock,
        name: &item.name,
        kind: &item.kind,
        serial: &item.serial,
    };
    // For watchers, not for the lock (its firmware has no handler for this push).
    crate::services::locks::announce(ctx.fabric, &ch.serial, "pair:complete", &announce);
    ok()
}

/// `pair:complete` on `events`: the item that was paired.
#[derive(serde::Serialize)]
struct PairAnnounce<'a> {
    pair_id: &'a str,
    lock: &'a str,
    name: &'a str,
    #[serde(rename = "type")]
    kind: &'a crate::domain::ItemKind,
    serial: &'a str,
}
