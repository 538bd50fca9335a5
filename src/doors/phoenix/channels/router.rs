//! The topic router: parses a topic once into a [`Topic`] and dispatches joins, events and
//! terminations to the channel that owns it. The only place that knows every topic.

use serde_json::value::RawValue;

use super::{ChannelError, Ctx, Reply, events, lock, presence, relay};
use crate::core::message::{Event, empty_json};
use crate::core::presence::TOPIC as PRESENCE_TOPIC;
use crate::domain::Serial;
use crate::doors::phoenix::{Message, Payload};

/// Every topic the hub routes. Anything else is an "unmatched topic" (§3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// `lock:<serial>`; `None` when the serial is invalid (the join is refused).
    Lock(Option<Serial>),
    /// `events` (every lock) or `events:<serial>` (one lock); `Some(None)` = invalid serial.
    Events(Option<Option<Serial>>),
    /// `relay`: the device relay.
    Relay,
    /// `presence:devices`.
    Presence,
}

impl Topic {
    pub fn parse(topic: &str) -> Option<Topic> {
        if let Some(serial) = topic.strip_prefix("lock:") {
            return Some(Topic::Lock(Serial::parse(serial)));
        }
        match topic {
            "events" => return Some(Topic::Events(None)),
            "relay" => return Some(Topic::Relay),
            PRESENCE_TOPIC => return Some(Topic::Presence),
            _ => {}
        }
        if let Some(serial) = topic.strip_prefix("events:") {
            return Some(Topic::Events(Some(Serial::parse(serial))));
        }
        None
    }
}

/// State of one joined channel instance.
#[derive(Debug)]
pub enum ChannelState {
    Lock(lock::LockChannel),
    Events,
    Relay(relay::RelayChannel),
    Presence,
}

impl ChannelState {
    /// Whether a hub push of `event` may reach this channel instance: a lock instance takes
    /// only what its firmware handles (see [`lock::LockChannel::accepts_push`]).
    pub fn accepts_push(&self, event: &Event) -> bool {
        match self {
            ChannelState::Lock(ch) => ch.accepts_push(event.as_str()),
            _ => true,
        }
    }
}

/// A successful join: the channel's state, the reply's response, and the pushes to send
/// right after the reply.
pub struct Joined {
    pub state: ChannelState,
    pub reply: Box<RawValue>,
    /// (event, payload) pushes to send right after the reply, in order.
    pub pushes: Vec<(&'static str, Box<RawValue>)>,
}

/// Runs the join of `topic`.
pub async fn join(topic: Topic, payload: &Payload, ctx: &Ctx<'_>) -> Result<Joined, ChannelError> {
    let (state, reply, pushes) = match topic {
        Topic::Lock(Some(serial)) => {
            let joined = lock::join(serial, payload, ctx).await?;
            (
                ChannelState::Lock(joined.channel),
                joined.reply,
                joined.pushes,
            )
        }
        Topic::Lock(None) | Topic::Events(Some(None)) => {
            return Err(ChannelError::refused("invalid serial"));
        }
        Topic::Events(_) => (ChannelState::Events, events::join(), Vec::new()),
        Topic::Relay => {
            let (ch, reply) = relay::join(payload, ctx).await?;
            (ChannelState::Relay(ch), reply, Vec::new())
        }
        Topic::Presence => (
            ChannelState::Presence,
            empty_json(),
            vec![("presence_state", presence::state(ctx))],
        ),
    };
    Ok(Joined {
        state,
        reply,
        pushes,
    })
}

/// Handles a non-reserved event on a joined channel; `Ok` is the `ok` reply's response.
pub async fn handle_in(state: &mut ChannelState, msg: &Message, ctx: &Ctx<'_>) -> Reply {
    match state {
        ChannelState::Lock(ch) => {
            let event = lock::LockIn::decode(msg.event.as_str(), &msg.payload)?;
            lock::handle_in(ch, event, ctx).await
        }
        ChannelState::Relay(ch) => {
            let max = ctx.relay_max_packet;
            let event = relay::RelayIn::decode(msg.event.as_str(), &msg.payload, max)?;
            relay::handle_in(ch, event, ctx).await
        }
        ChannelState::Events | ChannelState::Presence => Err(ChannelError::UnknownEvent),
    }
}

/// Called whenever a channel instance ends: leave, rejoin, crash, or disconnect.
pub fn terminate(state: &ChannelState, ctx: &Ctx<'_>) {
    if let ChannelState::Relay(ch) = state {
        relay::terminate(ch, ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_parse_once() {
        assert_eq!(
            Topic::parse("lock:A1"),
            Some(Topic::Lock(Serial::parse("A1")))
        );
        assert_eq!(Topic::parse("lock:bad serial"), Some(Topic::Lock(None)));
        assert_eq!(Topic::parse("lock:"), Some(Topic::Lock(None)));
        assert_eq!(Topic::parse("events"), Some(Topic::Events(None)));
        assert_eq!(
            Topic::parse("events:A1"),
            Some(Topic::Events(Some(Serial::parse("A1"))))
        );
        assert_eq!(Topic::parse("relay"), Some(Topic::Relay));
        assert_eq!(Topic::parse("presence:devices"), Some(Topic::Presence));
        assert_eq!(Topic::parse("presence:other"), None);
        assert_eq!(Topic::parse("nope:1"), None);
        assert_eq!(Topic::parse("phoenix"), None);
    }
}
