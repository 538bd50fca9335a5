//! The topic router: parses a topic once into a [`Topic`] and dispatches joins and events
//! to the channel that owns it.

use serde_json::Value;

use super::{ChannelError, Ctx, events, lock};
use crate::domain::Serial;
use crate::protocol::Message;

/// Every topic the hub routes. Anything else is an "unmatched topic" (§3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topic {
    /// `lock:<serial>`; `None` when the serial is invalid (the join is refused).
    Lock(Option<Serial>),
    /// `events` (every lock) or `events:<serial>` (one lock); `Some(None)` = invalid serial.
    Events(Option<Option<Serial>>),
}

impl Topic {
    pub fn parse(topic: &str) -> Option<Topic> {
        if let Some(serial) = topic.strip_prefix("lock:") {
            return Some(Topic::Lock(Serial::parse(serial)));
        }
        if topic == "events" {
            return Some(Topic::Events(None));
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
}

/// Runs the join of `topic`; on success the channel state and the join reply's response.
pub async fn join(topic: Topic, ctx: &Ctx<'_>) -> Result<(ChannelState, Value), ChannelError> {
    match topic {
        Topic::Lock(Some(serial)) => {
            let (ch, reply) = lock::join(serial, ctx).await?;
            Ok((ChannelState::Lock(ch), reply))
        }
        Topic::Lock(None) | Topic::Events(Some(None)) => {
            Err(ChannelError::refused("invalid serial"))
        }
        Topic::Events(_) => Ok((ChannelState::Events, events::join())),
    }
}

/// Handles a non-reserved event on a joined channel; `Ok` is the `ok` reply's response.
pub async fn handle_in(
    state: &mut ChannelState,
    msg: &Message,
    ctx: &Ctx<'_>,
) -> Result<Value, ChannelError> {
    match state {
        ChannelState::Lock(ch) => {
            let event = lock::LockIn::decode(&msg.event, &msg.payload)?;
            lock::handle_in(ch, event, ctx).await
        }
        ChannelState::Events => Err(ChannelError::UnknownEvent),
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
        assert_eq!(Topic::parse("nope:1"), None);
        assert_eq!(Topic::parse("phoenix"), None);
    }
}
