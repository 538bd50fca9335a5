//! What the hub delivers: outbound frames (an event on a topic with a payload and refs),
//! shared broadcasts encoded at most once per serializer, and encoded WebSocket messages.
//! Door-neutral: the serializers that turn a [`Frame`] into bytes live with their door.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::value::RawValue;

use tungstenite::Utf8Bytes;

/// An opaque ref or join_ref, kept as the exact JSON the client sent (never `null`: an
/// absent ref is `None`). Phoenix echoes refs byte-for-byte (§2.1, checklist item 14).
#[derive(Debug, Clone)]
pub struct RawRef(Arc<RawValue>);

impl PartialEq for RawRef {
    fn eq(&self, other: &RawRef) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for RawRef {}

impl RawRef {
    /// `None` for JSON `null`.
    pub fn from_raw(raw: Box<RawValue>) -> Option<RawRef> {
        if raw.get().trim() == "null" {
            None
        } else {
            Some(RawRef(Arc::from(raw)))
        }
    }

    /// A ref from a string (binary frames carry refs as bytes).
    pub fn from_str_value(s: &str) -> RawRef {
        let json = serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned());
        match RawValue::from_string(json) {
            Ok(raw) => RawRef(Arc::from(raw)),
            Err(_) => RawRef(Arc::from(RawValue::NULL.to_owned())),
        }
    }

    /// The JSON text of the ref.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// The ref as a string, when it is one (binary frames can only carry strings).
    pub fn as_string(&self) -> Option<String> {
        serde_json::from_str::<String>(self.0.get()).ok()
    }
}

/// The payload of an outbound frame.
#[derive(Debug, Clone)]
pub enum OutPayload {
    /// Serialized JSON text (always an object for pushes and broadcasts, §2.2).
    Json(String),
    /// A `phx_reply`: status plus serialized JSON response.
    Reply { status: String, response: String },
    /// A `phx_reply` whose response is bytes (binary reply, kind 1).
    BinaryReply { status: String, response: Bytes },
    /// Raw bytes (binary push or broadcast, kinds 0 and 2).
    Binary(Bytes),
}

/// One outbound frame before serialization.
#[derive(Debug, Clone)]
pub struct Frame {
    pub join_ref: Option<RawRef>,
    pub ref_: Option<RawRef>,
    pub topic: String,
    pub event: String,
    pub payload: OutPayload,
}

impl Frame {
    /// `phx_reply` to `ref_` with a JSON response.
    pub fn reply(
        join_ref: Option<RawRef>,
        ref_: Option<RawRef>,
        topic: &str,
        status: &str,
        response: String,
    ) -> Frame {
        Frame {
            join_ref,
            ref_,
            topic: topic.to_owned(),
            event: "phx_reply".to_owned(),
            payload: OutPayload::Reply {
                status: status.to_owned(),
                response,
            },
        }
    }

    /// A frame without refs (broadcast shape, §5).
    pub fn broadcast(topic: &str, event: &str, payload: OutPayload) -> Frame {
        Frame {
            join_ref: None,
            ref_: None,
            topic: topic.to_owned(),
            event: event.to_owned(),
            payload,
        }
    }
}

/// A broadcast frame encoded at most once per serializer and shared by every receiver
/// (Phoenix's "fastlane", §5): the bytes are built on first use and cloned by reference.
#[derive(Debug)]
pub struct SharedFrame {
    pub frame: Frame,
    /// Connection to skip (broadcast-from), if any.
    pub except: Option<u64>,
    /// The encoded bytes, one cell per serializer (see [`SharedFrame::encoded_with`]).
    encoded: [OnceLock<WireFrame>; SERIALIZERS],
}

/// How many serializers a shared frame keeps an encoding for (Phoenix V1 and V2).
pub const SERIALIZERS: usize = 2;

impl SharedFrame {
    pub fn new(frame: Frame, except: Option<u64>) -> Arc<SharedFrame> {
        Arc::new(SharedFrame {
            frame,
            except,
            encoded: [OnceLock::new(), OnceLock::new()],
        })
    }

    /// The frame encoded by serializer number `slot` (below [`SERIALIZERS`]), built once
    /// with `encode` by the first receiver that needs it and shared by the others.
    pub fn encoded_with(
        &self,
        slot: usize,
        encode: impl FnOnce(&Frame) -> Option<WireFrame>,
    ) -> Option<WireFrame> {
        let cell = self.encoded.get(slot)?;
        if let Some(w) = cell.get() {
            return Some(w.clone());
        }
        let w = encode(&self.frame)?;
        Some(cell.get_or_init(|| w).clone())
    }
}

/// One encoded WebSocket message.
#[derive(Debug, Clone)]
pub enum WireFrame {
    Text(Utf8Bytes),
    Binary(Bytes),
}
