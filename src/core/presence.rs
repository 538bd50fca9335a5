//! Presence on `presence:devices` (spec §1, protocol reference §8): which devices are
//! connected, through which door, with which locks joined and whether they are on the
//! relay. Payloads have Phoenix Presence's exact shapes, so the JS client's `Presence`
//! helper (`onSync`, `list`) works unchanged.
//!
//! Key = device name; one meta per connection, each with a unique `phx_ref`. A changed
//! meta is announced as one diff holding the new meta in `joins` (with `phx_ref_prev`) and
//! the old one in `leaves`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::value::RawValue;

use super::message::to_json;

/// What a device's Presence meta says, set by its door: the door, when it came online,
/// the locks it has joined and whether it is on the relay.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceMeta {
    pub door: Cow<'static, str>,
    pub online_at: i64,
    pub locks: Vec<String>,
    pub relay: bool,
}

/// Who tracked a meta: this process ([`Owner::LOCAL`]) or another hub node (an index the
/// cluster fabric gives each node it knows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner(pub u16);

impl Owner {
    pub const LOCAL: Owner = Owner(0);
}

/// One meta as a node replicates it to the others: the owner's connection id and
/// `phx_ref`, so that every node shows the same meta with the same ref.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tracked {
    pub key: String,
    pub conn: u64,
    pub phx_ref: u64,
    pub meta: DeviceMeta,
}

/// What a local [`Presence::set`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing (the same meta again, or untracking what was not tracked).
    None,
    /// The connection's meta is new or changed; its new `phx_ref`.
    Tracked(u64),
    /// The connection's meta was removed.
    Untracked,
}

/// One connection's meta.
struct Meta {
    /// Rendered as 16 hex digits.
    phx_ref: u64,
    fields: DeviceMeta,
}

/// A meta's owner and the owner's connection id.
type MetaId = (Owner, u64);

/// A key's metas by owner and connection id: almost always exactly one, so a list grown
/// one entry at a time rather than a hash map.
type Metas = Vec<(MetaId, Meta)>;

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
            door: &self.fields.door,
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

    /// Tracks (`Some`), updates, or untracks (`None`) the meta of one local connection
    /// under `key`. Returns the `presence_diff` payload when something changed and
    /// `want_diff`, and what changed.
    pub fn set(
        &self,
        key: &str,
        conn_id: u64,
        fields: Option<DeviceMeta>,
        want_diff: bool,
    ) -> (Option<Box<RawValue>>, Change) {
        let fields = fields.map(|f| (f, self.next_ref()));
        let phx_ref = fields.as_ref().map(|(_, r)| *r);
        let (diff, changed) = self.apply(
            &mut self.lock(),
            key,
            (Owner::LOCAL, conn_id),
            fields,
            want_diff,
        );
        let change = match (changed, phx_ref) {
            (false, _) => Change::None,
            (true, Some(r)) => Change::Tracked(r),
            (true, None) => Change::Untracked,
        };
        (diff, change)
    }

    /// Applies another node's change to one of its metas (`None`: it untracked it).
    pub fn set_remote(
        &self,
        owner: Owner,
        key: &str,
        conn: u64,
        fields: Option<(DeviceMeta, u64)>,
        want_diff: bool,
    ) -> Option<Box<RawValue>> {
        self.apply(&mut self.lock(), key, (owner, conn), fields, want_diff)
            .0
    }

    /// Makes `owner`'s metas exactly `entries` (a node's full state, after it started or
    /// after messages from it were missed); the diffs for watchers, one per changed key.
    pub fn replace_owner(
        &self,
        owner: Owner,
        entries: Vec<Tracked>,
        want_diff: bool,
    ) -> Vec<Box<RawValue>> {
        let mut map = self.lock();
        let mut diffs = Vec::new();
        let stale: Vec<(String, u64)> = map
            .iter()
            .flat_map(|(key, metas)| {
                metas
                    .iter()
                    .filter(|((o, conn), m)| {
                        *o == owner
                            && !entries
                                .iter()
                                .any(|t| t.key == *key && t.conn == *conn && t.phx_ref == m.phx_ref)
                    })
                    .map(|((_, conn), _)| (key.clone(), *conn))
            })
            .collect();
        for (key, conn) in stale {
            diffs.extend(self.apply(&mut map, &key, (owner, conn), None, want_diff).0);
        }
        for t in entries {
            let fresh = map.get(&t.key).is_none_or(|metas| {
                !metas
                    .iter()
                    .any(|(id, m)| *id == (owner, t.conn) && m.phx_ref == t.phx_ref)
            });
            if fresh {
                let id = (owner, t.conn);
                diffs.extend(
                    self.apply(&mut map, &t.key, id, Some((t.meta, t.phx_ref)), want_diff)
                        .0,
                );
            }
        }
        diffs
    }

    /// This process's own metas, as the other nodes replicate them.
    pub fn local_entries(&self) -> Vec<Tracked> {
        self.lock()
            .iter()
            .flat_map(|(key, metas)| {
                metas
                    .iter()
                    .filter(|((owner, _), _)| *owner == Owner::LOCAL)
                    .map(|((_, conn), m)| Tracked {
                        key: key.clone(),
                        conn: *conn,
                        phx_ref: m.phx_ref,
                        meta: m.fields.clone(),
                    })
            })
            .collect()
    }

    /// The one place metas change: sets or removes the meta `id` under `key`. Returns the
    /// diff (when `want_diff`) and whether anything changed.
    fn apply(
        &self,
        entries: &mut HashMap<String, Metas>,
        key: &str,
        id: MetaId,
        fields: Option<(DeviceMeta, u64)>,
        want_diff: bool,
    ) -> (Option<Box<RawValue>>, bool) {
        if !entries.contains_key(key) {
            if fields.is_none() {
                return (None, false);
            }
            entries.insert(key.to_owned(), Vec::new());
        }
        let Some(metas) = entries.get_mut(key) else {
            return (None, false);
        };
        let at = metas.iter().position(|(i, _)| *i == id);
        let old = match fields {
            Some((fields, phx_ref)) => {
                if at.is_some_and(|i| metas[i].1.fields == fields) {
                    return (None, false);
                }
                let new = Meta { phx_ref, fields };
                let prev = at.map(|i| metas[i].1.phx_ref);
                let old = match at {
                    Some(i) => Some(std::mem::replace(&mut metas[i].1, new)),
                    None => {
                        metas.reserve_exact(1);
                        metas.push((id, new));
                        None
                    }
                };
                if !want_diff {
                    return (None, true);
                }
                let i = at.unwrap_or(metas.len() - 1);
                let diff = Diff {
                    joins: Entry(Some((key, &metas[i].1, prev))),
                    leaves: Entry(old.as_ref().map(|old| (key, old, None))),
                };
                return (Some(to_json(&diff)), true);
            }
            None => at.map(|i| metas.swap_remove(i).1),
        };
        if metas.is_empty() {
            entries.remove(key);
        }
        let Some(old) = old else {
            return (None, false);
        };
        let diff = want_diff.then(|| {
            to_json(&Diff {
                joins: Entry(None),
                leaves: Entry(Some((key, &old, None))),
            })
        });
        (diff, true)
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
            door: "phoenix".into(),
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
        let d = parse(p.set("a", 1, Some(fields(1)), true).0.unwrap());
        let r1 = d["joins"]["a"]["metas"][0]["phx_ref"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(r1.len(), 16);
        assert_eq!(d["joins"]["a"]["metas"][0]["locks"], json!(["A1"]));
        assert_eq!(d["joins"]["a"]["metas"][0]["door"], "phoenix");
        assert_eq!(d["leaves"], json!({}));
        assert_eq!(p.set("a", 1, Some(fields(1)), true).1, Change::None);
        let d = parse(p.set("a", 1, Some(fields(2)), true).0.unwrap());
        let joined = &d["joins"]["a"]["metas"][0];
        assert_eq!(joined["online_at"], 2);
        assert_eq!(joined["phx_ref_prev"], r1.as_str());
        assert_ne!(joined["phx_ref"], r1.as_str());
        assert_eq!(d["leaves"]["a"]["metas"][0]["phx_ref"], r1.as_str());
        assert!(d["leaves"]["a"]["metas"][0].get("phx_ref_prev").is_none());
        let state = parse(p.state_json());
        assert_eq!(state["a"]["metas"].as_array().unwrap().len(), 1);
        let d = parse(p.set("a", 1, None, true).0.unwrap());
        assert_eq!(d["joins"], json!({}));
        assert_eq!(d["leaves"]["a"]["metas"][0]["online_at"], 2);
        assert_eq!(p.state_json().get(), "{}");
        assert_eq!(p.set("a", 1, None, true).1, Change::None);
    }

    #[test]
    fn keys_are_escaped_by_serde() {
        let p = Presence::default();
        let d = parse(p.set("a\"b", 1, Some(fields(1)), true).0.unwrap());
        assert!(d["joins"]["a\"b"]["metas"].is_array());
    }

    #[test]
    fn another_nodes_metas_keep_their_refs_and_are_replaced_as_a_whole() {
        let p = Presence::default();
        let node = Owner(3);
        let (_, mine) = p.set("lamp", 1, Some(fields(1)), false);
        assert!(matches!(mine, Change::Tracked(_)));
        // The same connection id on another node is another meta.
        let d = parse(
            p.set_remote(node, "lamp", 1, Some((fields(5), 0xabc)), true)
                .unwrap(),
        );
        assert_eq!(
            d["joins"]["lamp"]["metas"][0]["phx_ref"],
            "0000000000000abc"
        );
        let state = parse(p.state_json());
        assert_eq!(state["lamp"]["metas"].as_array().unwrap().len(), 2);
        assert_eq!(p.local_entries().len(), 1);
        // The node's full state replaces what it had: lamp's meta leaves, door-1 joins.
        let door = Tracked {
            key: "door-1".into(),
            conn: 9,
            phx_ref: 0xdef,
            meta: fields(6),
        };
        let diffs = p.replace_owner(node, vec![door.clone()], true);
        assert_eq!(diffs.len(), 2);
        let state = parse(p.state_json());
        assert_eq!(state["lamp"]["metas"].as_array().unwrap().len(), 1);
        assert_eq!(state["door-1"]["metas"][0]["phx_ref"], "0000000000000def");
        // The same state again changes nothing; an empty one removes the node's metas.
        assert!(p.replace_owner(node, vec![door], true).is_empty());
        assert_eq!(p.replace_owner(node, Vec::new(), true).len(), 1);
        assert!(parse(p.state_json()).get("door-1").is_none());
        assert_eq!(p.local_entries()[0].key, "lamp");
    }
}
