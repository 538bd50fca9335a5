//! `presence:devices` — Phoenix Presence of connected devices (spec §1, extension).
//!
//! The join reply is `{}`; right after it the hub pushes `presence_state` (after every
//! join, so the JS `Presence` helper applies later diffs), then `presence_diff` broadcasts
//! follow as devices connect, disconnect, join locks or the relay. The tracking itself is
//! in [`crate::registry::presence`]; metas are set by the doors.

use serde_json::json;

use super::Ctx;

/// The `presence_state` to push after the join reply.
pub fn state(ctx: &Ctx<'_>) -> String {
    ctx.hub.registry.presence.state_json()
}

/// The meta of a device (a JSON object's text): its door, when it came online, the locks
/// it has joined, and whether it is on the relay.
pub fn meta(door: &str, online_at: i64, locks: Vec<String>, relay: bool) -> String {
    json!({ "door": door, "online_at": online_at, "locks": locks, "relay": relay }).to_string()
}
