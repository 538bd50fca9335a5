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

/// A frame's event. Phoenix's control events are variants (written without allocating);
/// channel events the hub names are `&'static str`; only events built at run time
/// (`packet:<sender>`) or sent by a client are allocated.
#[derive(Debug, Clone)]
pub enum Event {
    /// `phx_join`
    Join,
    /// `phx_leave`
    Leave,
    /// `phx_reply`
    Reply,
    /// `phx_error`
    Error,
    /// `phx_close`
    Close,
    /// `heartbeat`
    Heartbeat,
    /// A channel event the hub names (`"event"`, `"mode:pair"`, `"presence_diff"`).
    Named(&'static str),
    /// A channel event built at run time or decoded from a client.
    Custom(String),
}

impl Event {
    fn control(name: &str) -> Option<Event> {
        // A match on the name (length first, then bytes), not a scan of a table: this
        // runs on every decoded frame.
        Some(match name {
            "phx_join" => Event::Join,
            "phx_leave" => Event::Leave,
            "phx_reply" => Event::Reply,
            "phx_error" => Event::Error,
            "phx_close" => Event::Close,
            "heartbeat" => Event::Heartbeat,
            _ => return None,
        })
    }

    /// The event of a decoded client frame (control events become their variant).
    pub fn decoded(name: String) -> Event {
        Event::control(&name).unwrap_or(Event::Custom(name))
    }

    /// An event named at run time (copied unless it is a control event).
    pub fn from_name(name: &str) -> Event {
        Event::control(name).unwrap_or_else(|| Event::Custom(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        match self {
            Event::Join => "phx_join",
            Event::Leave => "phx_leave",
            Event::Reply => "phx_reply",
            Event::Error => "phx_error",
            Event::Close => "phx_close",
            Event::Heartbeat => "heartbeat",
            Event::Named(name) => name,
            Event::Custom(name) => name,
        }
    }
}

impl From<&'static str> for Event {
    fn from(name: &'static str) -> Event {
        Event::control(name).unwrap_or(Event::Named(name))
    }
}

impl PartialEq for Event {
    fn eq(&self, other: &Event) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Event {}

impl PartialEq<str> for Event {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Event {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Event {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status of a `phx_reply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
        }
    }
}

/// `{}`, as a type: serializes to an empty JSON object.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Empty {}

/// `value` serialized to JSON by serde (the only way the hub writes a payload). A value
/// serde cannot write (a map with non-string keys) is logged and sent as `{}`.
pub fn to_json(value: &impl serde::Serialize) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).unwrap_or_else(|e| {
        tracing::error!(error = %e, "payload not serializable; sent as {{}}");
        empty_json()
    })
}

/// `{}`.
pub fn empty_json() -> Box<RawValue> {
    serde_json::value::to_raw_value(&Empty {}).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// The payload of an outbound frame.
#[derive(Debug, Clone)]
pub enum OutPayload {
    /// JSON written by serde (always an object for pushes and broadcasts, §2.2).
    Json(Box<RawValue>),
    /// A `phx_reply`: status plus the JSON response.
    Reply {
        status: Status,
        response: Box<RawValue>,
    },
    /// A `phx_reply` whose response is bytes (binary reply, kind 1).
    BinaryReply { status: Status, response: Bytes },
    /// Raw bytes (binary push or broadcast, kinds 0 and 2).
    Binary(Bytes),
}

impl OutPayload {
    /// `value` serialized by serde.
    pub fn json(value: &impl serde::Serialize) -> OutPayload {
        OutPayload::Json(to_json(value))
    }

    /// `{}`.
    pub fn empty() -> OutPayload {
        OutPayload::Json(empty_json())
    }
}

/// One outbound frame before serialization.
#[derive(Debug, Clone)]
pub struct Frame {
    pub join_ref: Option<RawRef>,
    pub ref_: Option<RawRef>,
    pub topic: String,
    pub event: Event,
    pub payload: OutPayload,
}

impl Frame {
    /// `phx_reply` to `ref_` with a JSON response.
    pub fn reply(
        join_ref: Option<RawRef>,
        ref_: Option<RawRef>,
        topic: &str,
        status: Status,
        response: Box<RawValue>,
    ) -> Frame {
        Frame {
            join_ref,
            ref_,
            topic: topic.to_owned(),
            event: Event::Reply,
            payload: OutPayload::Reply { status, response },
        }
    }

    /// A frame without refs (broadcast shape, §5).
    pub fn broadcast(topic: impl Into<String>, event: &str, payload: OutPayload) -> Frame {
        Frame {
            join_ref: None,
            ref_: None,
            topic: topic.into(),
            event: Event::from_name(event),
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
