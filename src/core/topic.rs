//! The hub's topics: the keys of subscriptions, broadcasts and hub pushes. A topic a client
//! names is parsed once, at its join; the wire form is written only where a frame is
//! encoded (and in `/api/devices`).

use std::fmt;

use crate::domain::Serial;

/// A topic the hub serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// `lock:<serial>`: one lock's channel.
    Lock(Serial),
    /// `events`: every lock's events, for watchers.
    Events,
    /// `events:<serial>`: one lock's events.
    LockEvents(Serial),
    /// `relay`: the device relay.
    Relay,
    /// `presence:devices`: Phoenix Presence of the connected devices.
    Presence,
}

/// Why a topic name is not one of the hub's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    /// No such topic (Phoenix answers `unmatched topic`).
    Unknown,
    /// `lock:` or `events:` with a serial that is not one.
    InvalidSerial,
}

impl Topic {
    pub fn parse(topic: &str) -> Result<Topic, TopicError> {
        let serial = |s: &str| Serial::parse(s).ok_or(TopicError::InvalidSerial);
        match topic {
            "events" => Ok(Topic::Events),
            "relay" => Ok(Topic::Relay),
            "presence:devices" => Ok(Topic::Presence),
            _ => {
                if let Some(s) = topic.strip_prefix("lock:") {
                    serial(s).map(Topic::Lock)
                } else if let Some(s) = topic.strip_prefix("events:") {
                    serial(s).map(Topic::LockEvents)
                } else {
                    Err(TopicError::Unknown)
                }
            }
        }
    }

    /// Whether joining or leaving it changes the device's Presence meta.
    pub fn affects_presence(&self) -> bool {
        matches!(self, Topic::Lock(_) | Topic::Relay)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Lock(serial) => write!(f, "lock:{serial}"),
            Topic::Events => f.write_str("events"),
            Topic::LockEvents(serial) => write!(f, "events:{serial}"),
            Topic::Relay => f.write_str("relay"),
            Topic::Presence => f.write_str("presence:devices"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serial(s: &str) -> Serial {
        Serial::parse(s).expect("a serial")
    }

    #[test]
    fn topics_parse_once_and_write_back_as_named() {
        let cases = [
            ("lock:A1", Topic::Lock(serial("A1"))),
            ("events", Topic::Events),
            ("events:A1", Topic::LockEvents(serial("A1"))),
            ("relay", Topic::Relay),
            ("presence:devices", Topic::Presence),
        ];
        for (name, topic) in cases {
            assert_eq!(Topic::parse(name), Ok(topic.clone()));
            assert_eq!(topic.to_string(), name);
        }
    }

    #[test]
    fn other_names_are_unknown_or_carry_an_invalid_serial() {
        assert_eq!(
            Topic::parse("lock:bad serial"),
            Err(TopicError::InvalidSerial)
        );
        assert_eq!(Topic::parse("lock:"), Err(TopicError::InvalidSerial));
        assert_eq!(Topic::parse("events:"), Err(TopicError::InvalidSerial));
        for name in [
            "presence:other",
            "nope:1",
            "phoenix",
            "",
            "Relay",
            "events ",
        ] {
            assert_eq!(Topic::parse(name), Err(TopicError::Unknown), "{name:?}");
        }
    }
}
