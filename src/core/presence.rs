//! Presence on `presence:devices` (spec §1, protocol reference §8): which devices are
//! connected, through which door, with which locks joined and whether they are on the
//! relay. Payloads have Phoenix Presence's exact shapes, so the JS client's `Presence`
//! helper (`onSync`, `list`) works unchanged.
//!
//! Key = device name; one meta per connection, each with a unique `phx_ref`. A changed
//! meta is announced as one diff holding the new meta in `joins` (with `phx_ref_prev`) and
//! the old one in `leaves`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// The presence topic.
pub const TOPIC: &str = "presence:devices";

/// One connection's meta. The application fields are kept as their JSON object text: a
/// few dozen bytes per device instead of a map of values, compared and copied as a whole.
struct Meta {
    /// Rendered as 16 hex digits.
    phx_ref: u64,
    fields: Box<str>,
}

/// A key's metas by connection id: almost always exactly one, so a list grown one entry
/// at a time rather than a hash map.
type Metas = Vec<(u64, Meta)>;

fn ref_str(phx_ref: u64) -> String {
    format!("{phx_ref:016x}")
}

impl Meta {
    /// The meta as Phoenix sends it: the fields plus `phx_ref` (and `phx_ref_prev`).
    fn write(&self, out: &mut String, prev: Option<u64>) {
        let inner = self.fields.trim_end().strip_suffix('}').unwrap_or("{");
        out.push_str(inner);
        if inner.trim() != "{" {
            out.push(',');
        }
        let _ = write!(out, "\"phx_ref\":\"{}\"", ref_str(self.phx_ref));
        if let Some(prev) = prev {
            let _ = write!(out, ",\"phx_ref_prev\":\"{}\"", ref_str(prev));
        }
        out.push('}');
    }
}

fn json_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// `{"<key>":{"metas":[<meta>]}}`
fn entry(key: &str, meta: &Meta, prev: Option<u64>) -> String {
    let mut out = format!("{{{}:{{\"metas\":[", json_str(key));
    meta.write(&mut out, prev);
    out.push_str("]}}");
    out
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
    /// `key`; `fields` is a JSON object's text. Returns the `presence_diff` payload when
    /// something changed and `want_diff`.
    pub fn set(
        &self,
        key: &str,
        conn_id: u64,
        fields: Option<String>,
        want_diff: bool,
    ) -> Option<String> {
        let mut entries = self.lock();
        if !entries.contains_key(key) {
            fields.as_ref()?;
            entries.insert(key.to_owned(), Vec::new());
        }
        let metas = entries.get_mut(key)?;
        let at = metas.iter().position(|(id, _)| *id == conn_id);
        let old = match fields {
            Some(fields) => {
                if at.is_some_and(|i| *metas[i].1.fields == *fields) {
                    return None;
                }
                let new = Meta {
                    phx_ref: self.next_ref(),
                    fields: fields.into_boxed_str(),
                };
                let joins = want_diff.then(|| {
                    let prev = at.map(|i| metas[i].1.phx_ref);
                    entry(key, &new, prev)
                });
                let old = match at {
                    Some(i) => Some(std::mem::replace(&mut metas[i].1, new)),
                    None => {
                        metas.reserve_exact(1);
                        metas.push((conn_id, new));
                        None
                    }
                };
                let joins = joins?;
                let leaves = match &old {
                    Some(old) => entry(key, old, None),
                    None => "{}".to_owned(),
                };
                return Some(format!("{{\"joins\":{joins},\"leaves\":{leaves}}}"));
            }
            None => at.map(|i| metas.swap_remove(i).1),
        };
        if metas.is_empty() {
            entries.remove(key);
        }
        let old = old?;
        want_diff.then(|| format!("{{\"joins\":{{}},\"leaves\":{}}}", entry(key, &old, None)))
    }

    /// The `presence_state` payload: every key with all its metas.
    pub fn state_json(&self) -> String {
        let entries = self.lock();
        let mut out = String::from("{");
        for (i, (key, metas)) in entries.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{}:{{\"metas\":[", json_str(key));
            for (j, (_, meta)) in metas.iter().enumerate() {
                if j > 0 {
                    out.push(',');
                }
                meta.write(&mut out, None);
            }
            out.push_str("]}");
        }
        out.push('}');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn fields(v: Value) -> String {
        v.to_string()
    }

    #[test]
    fn track_update_untrack_produce_phoenix_diffs() {
        let p = Presence::default();
        let d: Value =
            serde_json::from_str(&p.set("a", 1, Some(fields(json!({"x": 1}))), true).unwrap())
                .unwrap();
        let r1 = d["joins"]["a"]["metas"][0]["phx_ref"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(d["leaves"], json!({}));
        assert!(p.set("a", 1, Some(fields(json!({"x": 1}))), true).is_none());
        let d: Value =
            serde_json::from_str(&p.set("a", 1, Some(fields(json!({"x": 2}))), true).unwrap())
                .unwrap();
        let joined = &d["joins"]["a"]["metas"][0];
        assert_eq!(joined["x"], 2);
        assert_eq!(joined["phx_ref_prev"], r1.as_str());
        assert_ne!(joined["phx_ref"], r1.as_str());
        assert_eq!(d["leaves"]["a"]["metas"][0]["phx_ref"], r1.as_str());
        let state: Value = serde_json::from_str(&p.state_json()).unwrap();
        assert_eq!(state["a"]["metas"].as_array().unwrap().len(), 1);
        let d: Value = serde_json::from_str(&p.set("a", 1, None, true).unwrap()).unwrap();
        assert_eq!(d["joins"], json!({}));
        assert_eq!(d["leaves"]["a"]["metas"][0]["x"], 2);
        assert_eq!(p.state_json(), "{}");
        assert!(p.set("a", 1, None, true).is_none());
    }
}
