//! The Phoenix Channels wire contract: one parsed [`Message`] type, the outbound [`Frame`]
//! types, and the serializers that are the only code to see wire JSON.
//!
//! Reference: `shared/docs/phoenix-protocol.md` (§2 message model and serializers).

pub mod message;
pub mod serializer;

pub use message::{Frame, Message, OutPayload, Payload, RawRef, SharedFrame};
pub use serializer::{DecodeError, Vsn, WireFrame};
