//! `events` and `events:<serial>`: read-only topics where admin clients watch what happens
//! at the locks: `event` `{"from", "message"}` (an access event a lock reported),
//! `pair:complete` `{"pair_id", "lock", "name", "type", "serial"}` (a pairing finished) and
//! `state` `{"serial", "state"}` (an administrator changed a lock's intended state).

use crate::core::Registry;
use crate::domain::Serial;
use crate::doors::phoenix::OutPayload;

/// Anyone connected may watch; nothing is pushed by clients on these topics.
pub fn join() -> String {
    "{}".to_owned()
}

/// Broadcasts `event` with the JSON `body` on `events` and on `events:<serial>`.
pub fn announce(registry: &Registry, serial: &Serial, event: &str, body: String) {
    registry.broadcast("events", event, OutPayload::Json(body.clone()), None);
    registry.broadcast(
        &format!("events:{serial}"),
        event,
        OutPayload::Json(body),
        None,
    );
}
