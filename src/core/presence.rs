//! Presence on `presence:devices` (spec §1, protocol reference §8): which devices are
//! connected, through which door, with which locks joined and whether they are on the
//! relay. Payloads have Phoenix Presence's exact shapes, so the JS client's `Presence`
//! helper (`onSync`, `list`) works unchanged.
//!
//! Key = device name; one meta per connection, each with a unique `phx_ref`. A changed
//! meta is announced as one diff holding the new meta in `joins` (with `phx_ref_prev`) and
//! the old one in `leaves`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::value::RawValue;

use super::message::to_json;

/// What a device's Presence meta says, set by its door: the door, when it came online,
/// the locks it has joined and whether it is on the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceMeta {
    pub door: &'static str,
    pub online_at: i64,
    pub locks: Vec<String>,
    pub relay: bool,
}

/// One connection's meta.
struct Meta {
    /// Rendered as 16 hex digits.
    phx_ref: u64,
    fields: DeviceMeta,
}

/// A key's metas by connection id: almost always exactly one, so a list grown one entry
/// at a time rather than a hash map.
type Metas = Vec<(u64, Meta)>;

/// A `phx_ref`: 16 hex digits.
struct Ref(u64);

impl Serialize for Ref {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:016x}", self.0))
    }
}

/// A meta as Phoenix sends it: the fields plus `phx_ref` (and `phx_ref_prev`).
#[derive(serde::Serialize)]
struct WireMeta<'a> {
    door: &'a str,
    online_at: i64,
    locks: &'a [String],
    relay: bool,
    phx_ref: Ref,
    #[serde(skip_serializing_if = "Option::is_none")]
    phx_ref_prev: Option<Ref>,
}

impl Meta {
    fn wire(&self, prev: Option<u64>) -> WireMeta<'_> {
        WireMeta {
            door: self.fields.door,
            online_at: self.fields.online_at,
            locks: &self.fields.locks,
            relay: self.fields.relay,
            phx_ref: Ref(self.phx_ref),
            phx_ref_prev: prev.map(Ref),
        }
    }
}

/// The metas of one key: `[<meta>, ...]`.
enum MetaList<'a> {
    /// One meta (a diff), with its `phx_ref_prev`.
    One(&'a Meta, Option<u64>),
    /// All of a key's metas (the state).
    All(&'a Metas),
}

impl Serialize for MetaList<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MetaList::One(meta, prev) => {
                let mut seq = s.serialize_seq(Some(1))?;
                seq.serialize_element(&meta.wire(*prev))?;
                seq.end()
            }
            MetaList::All(metas) => s.collect_seq(metas.iter().map(|(_, m)| m.wire(None))),
        }
    }
}

/// `{"metas": [...]}`
#[derive(serde::Serialize)]
struct KeyMetas<'a> {
    metas: MetaList<'a>,
}

/// `{"<key>": {"metas": [<meta>]}}`, or `{}`.
struct Entry<'a>(Option<(&'a str, &'a Meta, Option<u64>)>);

impl Serialize for Entry<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(usize::from(self.0.is_some())))?;
        if let Some((key, meta, prev)) = self.0 {
            map.serialize_entry(
                key,
                &KeyMetas {
                    metas: MetaList::One(meta, prev),
                },
            )?;
        }
        map.end()
    }
}

/// The `presence_diff` payload.
#[derive(serde::Serialize)]
struct Diff<'a> {
    joins: Entry<'a>,
    leaves: Entry<'a>,
}

/// The `presence_state` payload: every key with all its metas.
struct State<'a>(&'a HashMap<String, Metas>);

impl Serialize for State<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(key, metas)| {
            (
                key,
                KeyMetas {
                    metas: MetaList::All(metas),
                },
            )
        }))
    }
}

pub struct Presence {
    entries: Mutex<HashMap<String, Metas>>,
    seq: AtomicU64,
    /// Random per process, so refs from before a restart never collide with new ones.
    epoch: u32,
}

impl Default for Presence {
    fn default() -> Presence {
        Presence {
            entries: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(1),
            epoch: rand::random(),
        }
    }
}

impl Presence {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Metas>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_ref(&self) -> u64 {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        (u64::from(self.epoch) << 32) | u64::from(n as u32)
    }

    /// Tracks (`Some`), updates, or untracks (`None`) the meta of one connection under
    /// `key`. Returns the `presence_diff` payload when something changed and `want_diff`.
    pub fn set(
        &self,
        key: &str,
        conn_id: u64,
        fields: Option<DeviceMeta>,
        want_diff: bool,
    ) -> Option<Box<RawValue>> {
        let mut entries = self.lock();
        if !entries.contains_key(key) {
            fields.as_ref()?;
            entries.insert(key.to_owned(), Vec::new());
        }
        let metas = entries.get_mut(key)?;
        let at = metas.iter().position(|(id, _)| *id == conn_id);
        let old = match fields {
            Some(fields) => {
                if at.is_some_and(|i| metas[i].1.fields == fields) {
                    return None;
                }
                let new = Meta {
                    phx_ref: self.next_ref(),
                    fields,
                };
                let prev = at.map(|i| metas[i].1.phx_ref);
                let old = match at {
                    Some(i) => Some(std::mem::replace(&mut metas[i].1, new)),
                    None => {
                        metas.reserve_exact(1);
                        metas.push((conn_id, new));
                        None
                    }
                };
                if !want_diff {
                    return None;
                }
                let i = at.unwrap_or(metas.len() - 1);
                let diff = Diff {
                    joins: Entry(Some((key, &metas[i].1, prev))),
                    leaves: Entry(old.as_ref().map(|old| (key, old, None))),
                };
                return Some(to_json(&diff));
            }
            None => at.map(|i| metas.swap_remove(i).1),
        };
        if metas.is_empty() {
            entries.remove(key);
        }
        let old = old?;
        want_diff.then(|| {
            to_json(&Diff {
                joins: Entry(None),
                leaves: Entry(Some((key, &old, None))),
            })
        })
    }

    /// The `presence_state` payload: every key with all its metas.
    pub fn state_json(&self) -> Box<RawValue> {
        to_json(&State(&self.lock()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn fields(online_at: i64) -> DeviceMeta {
        DeviceMeta {
            door: "phoenix",
            online_at,
            locks: vec!["A1".to_owned()],
            relay: false,
        }
    }

    fn parse(raw: impl AsRef<RawValue>) -> Value {
        serde_json::from_str(raw.as_ref().get()).unwrap()
    }

    #[test]
    fn track_update_untrack_produce_phoenix_diffs() {
        let p = Presence::default();
        let d = parse(p.set("a", 1, Some(fields(1)), true).unwrap());
        let r1 = d["joins"]["a"]["metas"][0]["phx_ref"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(r1.len(), 16);
        assert_eq!(d["joins"]["a"]["metas"][0]["locks"], json!(["A1"]));
        assert_eq!(d["joins"]["a"]["metas"][0]["door"], "phoenix");
        assert_eq!(d["leaves"], json!({}));
        assert!(p.set("a", 1, Some(fields(1)), true).is_none());
        let d = parse(p.set("a", 1, Some(fields(2)), true).unwrap());
        let joined = &d["joins"]["a"]["metas"][0];
        assert_eq!(joined["online_at"], 2);
        assert_eq!(joined["phx_ref_prev"], r1.as_str());
        assert_ne!(joined["phx_ref"], r1.as_str());
        assert_eq!(d["leaves"]["a"]["metas"][0]["phx_ref"], r1.as_str());
        assert!(d["leaves"]["a"]["metas"][0].get("phx_ref_prev").is_none());
        let state = parse(p.state_json());
        assert_eq!(state["a"]["metas"].as_array().unwrap().len(), 1);
        let d = parse(p.set("a", 1, None, true).unwrap());
        assert_eq!(d["joins"], json!({}));
        assert_eq!(d["leaves"]["a"]["metas"][0]["online_at"], 2);
        assert_eq!(p.state_json().get(), "{}");
        assert!(p.set("a", 1, None, true).is_none());
    }

    #[test]
    fn keys_are_escaped_by_serde() {
        let p = Presence::default();
        let d = parse(p.set("a\"b", 1, Some(fields(1)), true).unwrap());
        assert!(d["joins"]["a\"b"]["metas"].is_array());
    }
}
