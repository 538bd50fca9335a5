//! Decoded client frames (§2.1): what the Phoenix serializers decode into.

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::core::message::{Event, RawRef};

/// A message payload from a client: JSON (kept raw, decoded by the channel into a typed
/// struct, or forwarded verbatim) or bytes from a V2 binary frame.
#[derive(Debug, Clone)]
pub enum Payload {
    Json(Box<RawValue>),
    Binary(Bytes),
}

impl Payload {
    pub fn json(&self) -> Option<&RawValue> {
        match self {
            Payload::Json(raw) => Some(raw),
            Payload::Binary(_) => None,
        }
    }
}

/// One decoded client frame (§2.1).
#[derive(Debug, Clone)]
pub struct Message {
    pub join_ref: Option<RawRef>,
    pub ref_: Option<RawRef>,
    pub topic: String,
    pub event: Event,
    pub payload: Payload,
}
