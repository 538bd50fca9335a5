//! `presence:devices` — Phoenix Presence of connected devices (spec §1, extension).
//!
//! The join reply is `{}`; right after it the hub pushes `presence_state` (after every
//! join, so the JS `Presence` helper applies later diffs), then `presence_diff` broadcasts
//! follow as devices connect, disconnect, join locks or the relay. The tracking itself is
//! in [`crate::core::presence`]; metas are set by the doors.

use super::Ctx;

/// The `presence_state` to push after the join reply.
pub fn state(ctx: &Ctx<'_>) -> String {
    ctx.hub.registry.presence.state_json()
}

/// The meta of a device (a JSON object's text): its door, when it came online, the locks
/// it has joined, and whether it is on the relay.
pub fn meta(door: &str, online_at: i64, locks: Vec<String>, relay: bool) -> String {
    #[derive(serde::Serialize)]
    struct Meta<'a> {
        door: &'a str,
        online_at: i64,
        locks: Vec<String>,
        relay: bool,
    }
    let meta = Meta {
        door,
        online_at,
        locks,
        relay,
    };
    // Serializing plain strings, numbers and bools cannot fail.
    serde_json::to_string(&meta).unwrap_or_else(|_| "{}".to_owned())
}
