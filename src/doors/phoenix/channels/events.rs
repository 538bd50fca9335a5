//! `events` and `events:<serial>`: read-only topics where admin clients watch what happens
//! at the locks: `event` `{"from", "message"}` (an access event a lock reported),
//! `pair:complete` `{"pair_id", "lock", "name", "type", "serial"}` (a pairing finished) and
//! `state` `{"serial", "state"}` (an administrator changed a lock's intended state).

use crate::core::Fabric;
use crate::domain::Serial;
use crate::doors::phoenix::OutPayload;

/// Anyone connected may watch; nothing is pushed by clients on these topics.
pub fn join() -> String {
    "{}".to_owned()
}

/// Broadcasts `event` with the JSON `body` on `events` and on `events:<serial>`.
pub fn announce(fabric: &dyn Fabric, serial: &Serial, event: &str, body: String) {
    let all = fabric.broadcast("events", event, OutPayload::Json(body.clone()), None);
    let one = fabric.broadcast(
        &format!("events:{serial}"),
        event,
        OutPayload::Json(body),
        None,
    );
    if all.is_err() || one.is_err() {
        tracing::warn!(%serial, event, "event not announced: fabric unavailable");
    }
}
