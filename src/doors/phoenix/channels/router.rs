//! The topic router: dispatches joins (of a [`Topic`], parsed once by the session), events
//! and terminations to the channel that owns it. The only place that knows every channel.

use serde_json::value::RawValue;

use super::{ChannelError, Ctx, Reply, events, lock, presence, relay};
use crate::core::Topic;
use crate::core::message::{Event, empty_json};
use crate::doors::phoenix::{Message, Payload};

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
        Topic::Lock(serial) => {
            let joined = lock::join(serial, payload, ctx).await?;
            (
                ChannelState::Lock(joined.channel),
                joined.reply,
                joined.pushes,
            )
        }
        Topic::Events | Topic::LockEvents(_) => (ChannelState::Events, events::join(), Vec::new()),
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
