//! Channels: what a joined topic does with the events a client pushes.
//!
//! [`router`] is the one place that knows every topic. A join returns the channel's state
//! and the join reply; each inbound event is decoded into the channel's own typed event
//! enum (never raw JSON past that point) and answered with a reply or an error.

pub mod events;
pub mod lock;
pub mod presence;
pub mod relay;
pub mod router;

use std::sync::Arc;

use serde_json::value::RawValue;

use crate::config::AuthMode;
use crate::core::message::{empty_json, to_json};
use crate::core::presence::Presence;
use crate::core::{Conn, Fabric};
use crate::services::relay::Relay;
use crate::store::Store;

/// What a channel handler uses, and nothing else: the store, the fabric (what crosses
/// connections), the relay service, the Presence state, the two settings channels read,
/// and the connection it serves.
pub struct Ctx<'a> {
    pub store: &'a Store,
    pub fabric: &'a dyn Fabric,
    pub relay: &'a Relay,
    pub locks: &'a crate::services::locks::Locks,
    pub presence: &'a Presence,
    /// `HOMEHUB_AUTH`: in token mode a held lock is joined only by its holder.
    pub auth: AuthMode,
    /// `HOMEHUB_RELAY_MAX_PACKET`, for the `relay` topic's packets.
    pub relay_max_packet: usize,
    pub conn: &'a Arc<Conn>,
}

impl<'a> Ctx<'a> {
    /// The parts of the door's context a channel uses, for `conn`.
    pub fn new(door: &'a super::Ctx, conn: &'a Arc<Conn>) -> Ctx<'a> {
        Ctx {
            store: &door.store,
            fabric: door.fabric.as_ref(),
            relay: &door.relay,
            locks: &door.locks,
            presence: &door.registry.presence,
            auth: door.auth,
            relay_max_packet: door.relay_max_packet,
            conn,
        }
    }
}

/// A reply's JSON response, written by serde (see [`crate::core::message::to_json`]).
pub type Reply = Result<Box<RawValue>, ChannelError>;

/// `{}`: the response of an event that has nothing to say.
pub fn ok() -> Reply {
    Ok(empty_json())
}

/// `{"reason": ...}`: why a join or an event was refused.
#[derive(Debug, serde::Serialize)]
pub struct Reason<'a> {
    pub reason: &'a str,
}

/// A refused join or a failed event: becomes a `phx_reply` with status `error` and
/// `{"reason": ...}`.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// A reason for the client, sent as is.
    #[error("{0}")]
    Refused(String),
    /// Event not handled by this channel (`{"reason":"unknown event"}`).
    #[error("unknown event")]
    UnknownEvent,
    /// Something broke inside the hub; logged, and the client sees "internal error".
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ChannelError {
    pub fn refused(reason: impl Into<String>) -> ChannelError {
        ChannelError::Refused(reason.into())
    }

    /// The `response` of the error reply.
    pub fn response(&self) -> Box<RawValue> {
        to_json(&Reason {
            reason: &self.to_string(),
        })
    }
}

impl From<crate::services::ServiceError> for ChannelError {
    fn from(e: crate::services::ServiceError) -> ChannelError {
        match e {
            crate::services::ServiceError::Store(e) => e.into(),
            crate::services::ServiceError::Unavailable => {
                ChannelError::Refused("fabric unavailable".to_owned())
            }
        }
    }
}

impl From<crate::store::StoreError> for ChannelError {
    fn from(e: crate::store::StoreError) -> ChannelError {
        match e {
            // The client may retry (the lock firmware retries its join); logged once.
            crate::store::StoreError::Unavailable(cause) => {
                tracing::warn!(%cause, "store unavailable");
                ChannelError::Refused(STORE_UNAVAILABLE.to_owned())
            }
            e => ChannelError::Internal(e.into()),
        }
    }
}

/// The reason a join or an event gets while the database is out of reach or busy.
pub const STORE_UNAVAILABLE: &str = "store unavailable";

/// Decodes a JSON payload into a typed event body, or refuses with `reason`.
pub fn decode_json<T: serde::de::DeserializeOwned>(
    payload: &crate::doors::phoenix::Payload,
    reason: &str,
) -> Result<T, ChannelError> {
    let raw = payload
        .json()
        .ok_or_else(|| ChannelError::refused(format!("{reason}: binary payload not accepted")))?;
    serde_json::from_str(raw.get()).map_err(|_| ChannelError::refused(reason))
}
