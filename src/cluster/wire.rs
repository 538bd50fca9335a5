//! What nodes send each other over NATS: JSON bodies written and read by serde only here.
//! Payloads that are JSON travel as raw JSON (never re-parsed on the way); bytes (binary
//! Phoenix payloads, rare) as base64.

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::core::DeliveryError;
use crate::core::message::OutPayload;
use crate::core::presence::{DeviceMeta, Tracked};
use crate::core::registry::DeviceView;
use crate::domain::DeviceInfo;

/// What a node does with a message on a topic's subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicOp {
    /// A broadcast to the topic's subscribers.
    Broadcast,
    /// A hub push to the topic's channel instances (with their join_refs).
    Push,
    /// End the topic's channel instances, but those of device `keep`.
    End,
}

/// A message on a topic's subject.
#[derive(Debug, Serialize, Deserialize)]
pub struct TopicMsg {
    pub op: TopicOp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Box<RawValue>>,
    /// A binary payload, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<String>,
}

impl TopicMsg {
    /// A broadcast or push of `payload`; `None` for payloads that are never broadcast
    /// (replies).
    pub fn carrying(op: TopicOp, event: &str, payload: &OutPayload) -> Option<TopicMsg> {
        let (payload, bytes) = match payload {
            OutPayload::Json(json) => (Some(json.clone()), None),
            OutPayload::Binary(bytes) => (None, Some(encode_bytes(bytes))),
            OutPayload::Reply { .. } | OutPayload::BinaryReply { .. } => return None,
        };
        Some(TopicMsg {
            op,
            event: Some(event.to_owned()),
            payload,
            bytes,
            keep: None,
        })
    }

    /// The payload it carries, if it carries one.
    pub fn out_payload(&self) -> Option<OutPayload> {
        match (&self.payload, &self.bytes) {
            (Some(json), _) => Some(OutPayload::Json(json.clone())),
            (None, Some(b64)) => decode_bytes(b64).map(|b| OutPayload::Binary(b.into())),
            (None, None) => None,
        }
    }
}

/// What a request for the holder of a relay name asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayOp {
    /// Deliver a packet: JSON in `payload`, or bytes (base64) in `bytes`.
    Packet,
    /// Another node registers the name: give it up (`force`) or refuse.
    Claim,
    /// What the device said about itself when it registered (answered with `info`).
    Info,
}

/// A request for the holder of a relay name (a struct, not a tagged enum: serde reads
/// raw JSON only outside of buffered enum content).
#[derive(Debug, Serialize, Deserialize)]
pub struct RelayReq {
    pub op: RelayOp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<String>,
    #[serde(default)]
    pub force: bool,
}

impl RelayReq {
    /// A request of `op` with nothing else set.
    pub fn new(op: RelayOp) -> RelayReq {
        RelayReq {
            op,
            sender: None,
            payload: None,
            bytes: None,
            force: false,
        }
    }
}

/// A request for the node holding a Phoenix socket's name.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum DeviceReq {
    /// A newer socket of this name connected to node `node` at `connected_at` (Unix ms):
    /// close an older one. Published, not requested.
    Takeover { node: String, connected_at: i64 },
    /// Close the socket (admin or socket-id disconnect); answered with `closed`.
    Disconnect,
}

/// A request for the nodes holding connections of a Bester user (every such node
/// subscribes to the user's subject, so all of them act; the first answer decides).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum UserReq {
    /// Queue this frame (a Bester delivery, already encoded) for each connection of the user.
    Deliver { frame: String },
    /// Close each connection of the user (the user was removed); answered with `closed`.
    Kick,
}

/// The answer to a request.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Reply {
    /// What failed (a [`DeliveryError`]'s text, or `name taken`); absent when it worked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How many connections a disconnect closed.
    #[serde(default)]
    pub closed: usize,
    /// A relay device's registration info ([`RelayOp::Info`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<DeviceInfo>,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::default()
    }

    pub fn closed(n: usize) -> Reply {
        Reply {
            closed: n,
            ..Reply::default()
        }
    }

    pub fn failed(error: impl ToString) -> Reply {
        Reply {
            error: Some(error.to_string()),
            ..Reply::default()
        }
    }

    pub fn delivery(result: Result<(), DeliveryError>) -> Reply {
        match result {
            Ok(()) => Reply::ok(),
            Err(e) => Reply::failed(e),
        }
    }

    /// The delivery result it stands for; an error this node does not know is the fabric's.
    pub fn delivery_result(&self) -> Result<(), DeliveryError> {
        match self.error.as_deref() {
            None => Ok(()),
            Some(e) => Err(delivery_error(e)),
        }
    }
}

fn delivery_error(text: &str) -> DeliveryError {
    [
        DeliveryError::UnknownTarget,
        DeliveryError::TargetBusy,
        DeliveryError::BinaryUnsupported,
    ]
    .into_iter()
    .find(|e| e.to_string() == text)
    .unwrap_or(DeliveryError::Unavailable)
}

/// A node's heartbeat: who it is, since when, how loaded, and how far its Presence
/// changes have got (so a node that missed the last one notices).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: String,
    /// Random per process start: a restarted node is a new member.
    pub epoch: u64,
    /// When the process started (RFC 3339).
    pub started_at: String,
    /// Its live connections.
    pub connections: usize,
    /// The sequence number of its last Presence change.
    pub presence_seq: u64,
    /// Sent at start and after a reconnection: every node answers with its own heartbeat.
    #[serde(default)]
    pub hello: bool,
}

/// One Presence change of a node's own connection.
#[derive(Debug, Serialize, Deserialize)]
pub struct PresenceChange {
    pub node: String,
    pub epoch: u64,
    pub seq: u64,
    pub key: String,
    pub conn: u64,
    /// The new meta and its `phx_ref`; absent: untracked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<(DeviceMeta, u64)>,
}

/// A node's full Presence state, as of its change `seq`.
#[derive(Debug, Serialize, Deserialize)]
pub struct PresenceState {
    pub epoch: u64,
    pub seq: u64,
    pub entries: Vec<Tracked>,
}

/// A token revocation scattered to every node.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenRevoked {
    pub token_id: String,
}

/// One node's connections.
#[derive(Debug, Serialize, Deserialize)]
pub struct Devices {
    pub node: String,
    pub devices: Vec<DeviceView>,
}

pub fn encode_bytes(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn decode_bytes(b64: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// `value` as a NATS payload. Serializing these types cannot fail (string keys, raw JSON
/// that is already valid); an empty body would be refused by the receiver.
pub fn body(value: &impl Serialize) -> bytes::Bytes {
    serde_json::to_vec(value).unwrap_or_default().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_carry_delivery_errors_by_their_text() {
        for e in [
            DeliveryError::UnknownTarget,
            DeliveryError::TargetBusy,
            DeliveryError::BinaryUnsupported,
        ] {
            let reply: Reply = serde_json::from_slice(&body(&Reply::delivery(Err(e)))).unwrap();
            assert_eq!(reply.delivery_result(), Err(e));
        }
        let ok: Reply = serde_json::from_slice(&body(&Reply::ok())).unwrap();
        assert_eq!(ok.delivery_result(), Ok(()));
        assert_eq!(
            Reply::failed("something new").delivery_result(),
            Err(DeliveryError::Unavailable)
        );
    }

    #[test]
    fn a_relay_packet_keeps_its_payload() {
        let req = RelayReq {
            op: RelayOp::Packet,
            sender: Some("a".into()),
            payload: Some(RawValue::from_string("[1, 2]".to_owned()).unwrap()),
            bytes: None,
            force: false,
        };
        let back: RelayReq = serde_json::from_slice(&body(&req)).unwrap();
        assert_eq!(back.op, RelayOp::Packet);
        assert_eq!(back.payload.unwrap().get(), "[1, 2]");
    }

    #[test]
    fn a_broadcast_keeps_its_payload_byte_for_byte() {
        let raw = RawValue::from_string(r#"{"b": 1,  "a":[2]}"#.to_owned()).unwrap();
        let msg = TopicMsg::carrying(TopicOp::Broadcast, "event", &OutPayload::Json(raw)).unwrap();
        let back: TopicMsg = serde_json::from_slice(&body(&msg)).unwrap();
        match back.out_payload() {
            Some(OutPayload::Json(json)) => assert_eq!(json.get(), r#"{"b": 1,  "a":[2]}"#),
            other => panic!("{other:?}"),
        }
        let bin = TopicMsg::carrying(
            TopicOp::Push,
            "blob",
            &OutPayload::Binary(bytes::Bytes::from_static(b"\x00\x01")),
        )
        .unwrap();
        let back: TopicMsg = serde_json::from_slice(&body(&bin)).unwrap();
        assert!(matches!(back.out_payload(), Some(OutPayload::Binary(b)) if &b[..] == b"\x00\x01"));
    }
}
