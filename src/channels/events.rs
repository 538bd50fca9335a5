//! `events` and `events:<serial>`: read-only topics where admin clients watch the access
//! events locks report (broadcast by [`super::lock`] as `event` `{"from", "message"}`).

/// Anyone connected may watch; nothing is pushed by clients on these topics.
pub fn join() -> String {
    "{}".to_owned()
}
