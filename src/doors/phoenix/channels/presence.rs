//! `presence:devices` — Phoenix Presence of connected devices (spec §1, extension).
//!
//! The join reply is `{}`; right after it the hub pushes `presence_state` (after every
//! join, so the JS `Presence` helper applies later diffs), then `presence_diff` broadcasts
//! follow as devices connect, disconnect, join locks or the relay. The tracking itself is
//! in [`crate::core::presence`]; metas are set by the doors.

use serde_json::value::RawValue;

use super::Ctx;
use crate::core::presence::DeviceMeta;

/// The `presence_state` to push after the join reply.
pub fn state(ctx: &Ctx<'_>) -> Box<RawValue> {
    ctx.presence.state_json()
}

/// The meta of a device: its door, when it came online, the locks it has joined, and
/// whether it is on the relay.
pub fn meta(door: &'static str, online_at: i64, locks: Vec<String>, relay: bool) -> DeviceMeta {
    DeviceMeta {
        door: door.into(),
        online_at,
        locks,
        relay,
    }
}
