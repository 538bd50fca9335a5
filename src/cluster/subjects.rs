//! The NATS subjects of a cluster, all under one prefix (`HOMEHUB_CLUSTER_SUBJECT_PREFIX`,
//! default `homehub`). Names become single subject tokens with [`token`]. docs/cluster.md
//! lists them.

use crate::core::Topic;

/// One name as one subject token: `.` (the token separator, allowed in device names)
/// becomes `~` (which no device name, serial or address contains); any other character
/// outside `A-Za-z0-9_:-` becomes `%XX` per byte, so the mapping is one-to-one and a token
/// never holds `.`, `*`, `>` or white space.
pub fn token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        match b {
            b'.' => out.push('~'),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b':' | b'-' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    if out.is_empty() {
        out.push('%');
    }
    out
}

/// The subjects of one cluster.
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

impl Subjects {
    pub fn new(prefix: &str) -> Subjects {
        let prefix = prefix.split('.').map(token).collect::<Vec<_>>().join(".");
        Subjects { prefix }
    }

    /// Broadcasts, hub pushes and channel ends of a topic; subscribed by the nodes that
    /// have a local subscriber of it.
    pub fn topic(&self, topic: &Topic) -> String {
        format!("{}.topic.{}", self.prefix, token(&topic.to_string()))
    }

    /// Requests for the Phoenix socket of this `name` (takeover, disconnect); subscribed
    /// by the node that holds it.
    pub fn device(&self, name: &str) -> String {
        format!("{}.device.{}", self.prefix, token(name))
    }

    /// Requests for the holder of a relay name (packets, claims).
    pub fn relay(&self, name: &str) -> String {
        format!("{}.relay.{}", self.prefix, token(name))
    }

    /// Requests for the holder of a Compendium address.
    pub fn address(&self, address: &str) -> String {
        format!("{}.address.{}", self.prefix, token(address))
    }

    /// Deliveries to (and the removal of) a Bester user; subscribed by every node where
    /// the user has a connection.
    pub fn user(&self, user: &str) -> String {
        format!("{}.user.{}", self.prefix, token(user))
    }

    /// Every node's heartbeat; every node subscribes.
    pub fn heartbeat(&self) -> String {
        format!("{}.heartbeat", self.prefix)
    }

    /// Every node's Presence changes; every node subscribes.
    pub fn presence(&self) -> String {
        format!("{}.presence", self.prefix)
    }

    /// One node's full Presence state, on request.
    pub fn presence_state(&self, node: &str) -> String {
        format!("{}.node.{}.presence", self.prefix, token(node))
    }

    /// A subject nobody subscribes to, for one node's round trips to the server (answered
    /// by the server itself with "no responders").
    pub fn ping(&self, node: &str) -> String {
        format!("{}.node.{}.ping", self.prefix, token(node))
    }

    /// Scatter: close the connections of a revoked token, on every node.
    pub fn token_revoked(&self) -> String {
        format!("{}.token", self.prefix)
    }

    /// Scatter: every node's connections, for the admin API.
    pub fn devices(&self) -> String {
        format!("{}.devices", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_single_tokens_one_to_one() {
        assert_eq!(token("door-1"), "door-1");
        assert_eq!(token("hall.lamp"), "hall~lamp");
        assert_eq!(token("lock:AB12"), "lock:AB12");
        assert_eq!(token("a b*>"), "a%20b%2A%3E");
        assert_ne!(token("a.b"), token("a~b"));
        assert_eq!(token(""), "%");
        let s = Subjects::new("home.hub");
        assert_eq!(s.relay("Hall.Lamp"), "home.hub.relay.Hall~Lamp");
        assert_eq!(s.topic(&Topic::Events), "home.hub.topic.events");
        assert_eq!(s.topic(&Topic::Presence), "home.hub.topic.presence:devices");
    }
}
