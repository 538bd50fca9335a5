//! `events` and `events:<serial>`: read-only topics where admin clients watch what happens
//! at the locks: `event` `{"from", "message"}` (an access event a lock reported),
//! `pair:complete` `{"pair_id", "lock", "name", "type", "serial"}` (a pairing finished) and
//! `state` `{"serial", "state"}` (an administrator changed a lock's intended state).
//! What is announced, and when, is the locks service's rule
//! ([`crate::services::locks::announce`]).

/// Anyone connected may watch; nothing is pushed by clients on these topics.
pub fn join() -> Box<serde_json::value::RawValue> {
    crate::core::message::empty_json()
}
