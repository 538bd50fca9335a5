//! Phoenix V2 JSON frames as a client writes and reads them:
//! `[join_ref, ref, topic, event, payload]`, refs as decimal strings from one per-socket
//! counter (the official JS client's habit).
//!
//! Reading is on the generator's hot path (hundreds of thousands of frames a second on one
//! core), so the envelope is split by hand; anything unusual (escapes in the first four
//! fields) falls back to `serde_json`.

use std::fmt::Write as _;

/// Formats a client frame; refs are written as JSON strings, `None` as `null`.
pub fn frame(join_ref: Option<u64>, ref_: u64, topic: &str, event: &str, payload: &str) -> String {
    let mut s = String::with_capacity(32 + topic.len() + event.len() + payload.len());
    s.push('[');
    match join_ref {
        Some(j) => {
            let _ = write!(s, "\"{j}\"");
        }
        None => s.push_str("null"),
    }
    let _ = write!(s, ",\"{ref_}\",\"{topic}\",\"{event}\",{payload}]");
    s
}

/// The envelope of a received frame, borrowing from the text.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    pub ref_: Option<&'a str>,
    pub topic: &'a str,
    pub event: &'a str,
    pub payload: &'a str,
}

impl Head<'_> {
    pub fn ref_num(&self) -> Option<u64> {
        self.ref_.and_then(|r| r.parse().ok())
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// One `null` or escape-free string, then a comma; returns the value and the next index.
fn token(s: &str, i: usize) -> Option<(Option<&str>, usize)> {
    let b = s.as_bytes();
    let i = skip_ws(b, i);
    let (val, end) = if b.get(i..i + 4) == Some(b"null") {
        (None, i + 4)
    } else if b.get(i) == Some(&b'"') {
        let start = i + 1;
        let len = b[start..].iter().position(|&c| c == b'"' || c == b'\\')?;
        if b[start + len] == b'\\' {
            return None;
        }
        (Some(&s[start..start + len]), start + len + 1)
    } else {
        return None;
    };
    let j = skip_ws(b, end);
    (b.get(j) == Some(&b',')).then_some((val, j + 1))
}

/// Splits a V2 frame into its envelope, or `None` if it does not look like one.
pub fn parse_head(s: &str) -> Option<Head<'_>> {
    let b = s.as_bytes();
    let i = skip_ws(b, 0);
    if b.get(i) != Some(&b'[') {
        return None;
    }
    let (_join_ref, i) = token(s, i + 1)?;
    let (ref_, i) = token(s, i)?;
    let (topic, i) = token(s, i)?;
    let (event, i) = token(s, i)?;
    let end = s.rfind(']')?;
    (end > i).then(|| Head {
        ref_,
        topic: topic.unwrap_or(""),
        event: event.unwrap_or(""),
        payload: s[i..end].trim(),
    })
}

/// An owned envelope for frames the fast path could not split.
pub struct OwnedHead {
    ref_: Option<String>,
    topic: String,
    event: String,
    payload: String,
}

impl OwnedHead {
    pub fn parse(s: &str) -> Option<OwnedHead> {
        let v: Vec<serde_json::Value> = serde_json::from_str(s).ok()?;
        if v.len() < 5 {
            return None;
        }
        let text = |x: &serde_json::Value| match x {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        };
        Some(OwnedHead {
            ref_: text(&v[1]),
            topic: text(&v[2]).unwrap_or_default(),
            event: text(&v[3]).unwrap_or_default(),
            payload: v[4].to_string(),
        })
    }

    pub fn head(&self) -> Head<'_> {
        Head {
            ref_: self.ref_.as_deref(),
            topic: &self.topic,
            event: &self.event,
            payload: &self.payload,
        }
    }
}

/// The unsigned integer that follows `key` (e.g. `"t":`) in `s`.
pub fn num_after(s: &str, key: &str) -> Option<u64> {
    let at = s.find(key)? + key.len();
    let digits = s[at..].trim_start();
    let end = digits
        .bytes()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// Whether a `phx_reply` payload has status `ok`.
pub fn reply_ok(payload: &str) -> bool {
    if let Some(rest) = payload.strip_prefix("{\"status\":\"") {
        return rest.starts_with("ok\"");
    }
    serde_json::from_str::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(|s| s == "ok"))
        .unwrap_or(false)
}

/// The `reason` of an error reply, for the error tally.
pub fn reply_reason(payload: &str) -> String {
    serde_json::from_str::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| {
            v.pointer("/response/reason")
                .and_then(|r| r.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "error reply".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_string_refs() {
        assert_eq!(
            frame(Some(3), 4, "lock:SN-1", "phx_join", "{}"),
            r#"["3","4","lock:SN-1","phx_join",{}]"#
        );
        assert_eq!(
            frame(None, 7, "phoenix", "heartbeat", "{}"),
            r#"[null,"7","phoenix","heartbeat",{}]"#
        );
    }

    #[test]
    fn heads_split_fast_and_slow() {
        let s = r#"["1",null,"relay","packet",{"sender":"a","payload":{"t":42}}]"#;
        let h = parse_head(s).unwrap();
        assert_eq!(h.ref_, None);
        assert_eq!(h.topic, "relay");
        assert_eq!(h.event, "packet");
        assert_eq!(num_after(h.payload, "\"t\":"), Some(42));
        let esc = r#"[null,"2","a\"b","phx_reply",{"status":"ok","response":{}}]"#;
        assert!(parse_head(esc).is_none());
        let o = OwnedHead::parse(esc).unwrap();
        assert_eq!(o.head().topic, "a\"b");
        assert!(reply_ok(o.head().payload));
        assert!(!reply_ok(r#"{"status":"error","response":{"reason":"x"}}"#));
        assert_eq!(
            reply_reason(r#"{"status":"error","response":{"reason":"x"}}"#),
            "x"
        );
    }
}
