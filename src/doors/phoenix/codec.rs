//! V1 (JSON objects) and V2 (JSON arrays + binary) serializers (§1.2, §2.2–§2.5).
//!
//! This is the only code that reads Phoenix wire JSON, and the only code that writes the
//! frame around a payload (refs, topic, event, reply status); payloads arrive here already
//! written by serde (`OutPayload::Json`, reply responses). Decoding is lenient where Phoenix
//! is (extra array elements, any JSON as payload, refs of any JSON type echoed verbatim) and
//! turns everything else into a [`DecodeError`] that says whether the frame can still be
//! answered (topic and ref recovered) or the connection must close, and with which code.

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde_json::value::RawValue;
use tungstenite::Utf8Bytes;

use super::message::{Message, Payload};
use crate::core::close_code::{self, CloseCode};
use crate::core::message::{Event, Frame, OutPayload, RawRef, SharedFrame, WireFrame};

/// The serializer of one connection, chosen once from the `vsn` connect param (§1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vsn {
    V1,
    V2,
}

/// Why a client frame could not be decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum DecodeError {
    /// Topic (and possibly ref) were recovered: answer with an error reply and keep going.
    Malformed {
        ref_: Option<RawRef>,
        topic: String,
        reason: &'static str,
    },
    /// Nothing to answer: close the connection with `code`.
    Fatal {
        code: CloseCode,
        reason: &'static str,
    },
}

impl Vsn {
    /// A shared broadcast encoded for this serializer (once per serializer, §5).
    pub fn encode_shared(self, shared: &SharedFrame) -> Option<WireFrame> {
        let slot = match self {
            Vsn::V1 => 0,
            Vsn::V2 => 1,
        };
        shared.encoded_with(slot, |frame| self.encode(frame))
    }

    /// Phoenix's choice (§1.2): absent or `~> 1.0.0` is V1, `~> 2.0.0` is V2, anything
    /// else (another version, not a semver) is refused (`None`).
    pub fn negotiate(vsn: Option<&str>) -> Option<Vsn> {
        let Some(v) = vsn else { return Some(Vsn::V1) };
        let mut parts = v.split('.');
        let mut num = || -> Option<u64> {
            let p = parts.next()?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse().ok()
        };
        let (major, minor, _patch) = (num()?, num()?, num()?);
        if parts.next().is_some() {
            return None;
        }
        match (major, minor) {
            (1, 0) => Some(Vsn::V1),
            (2, 0) => Some(Vsn::V2),
            _ => None,
        }
    }

    /// Decodes one client frame. `binary` says which WebSocket frame type carried it.
    pub fn decode(self, data: &[u8], binary: bool) -> Result<Message, DecodeError> {
        let looks_json = matches!(first_non_ws(data), Some(b'[' | b'{'));
        if binary && self == Vsn::V2 && !looks_json {
            return decode_binary(data);
        }
        // JSON in a binary frame is accepted on both serializers (lock firmware sends V1
        // objects in binary frames); it must still be UTF-8.
        let text = std::str::from_utf8(data).map_err(|_| DecodeError::Fatal {
            code: close_code::INVALID_DATA,
            reason: "invalid utf-8",
        })?;
        let loose = match self {
            Vsn::V2 => decode_v2(text)?,
            Vsn::V1 => decode_v1(text)?,
        };
        loose.into_message()
    }

    /// Encodes a frame. `None` when the frame cannot be represented on this serializer
    /// (binary payloads on V1, binary fields over 255 bytes).
    pub fn encode(self, frame: &Frame) -> Option<WireFrame> {
        match (&frame.payload, self) {
            (OutPayload::Binary(_) | OutPayload::BinaryReply { .. }, Vsn::V1) => None,
            (OutPayload::Binary(_) | OutPayload::BinaryReply { .. }, Vsn::V2) => {
                encode_binary(frame).map(WireFrame::Binary)
            }
            (_, Vsn::V2) => Some(WireFrame::Text(Utf8Bytes::from(encode_v2_text(frame)))),
            (_, Vsn::V1) => Some(WireFrame::Text(Utf8Bytes::from(encode_v1_text(frame)))),
        }
    }
}

fn first_non_ws(data: &[u8]) -> Option<u8> {
    data.iter().copied().find(|b| !b.is_ascii_whitespace())
}

/// The five logical fields as raw JSON, before type checks.
#[derive(Default)]
struct Loose {
    join_ref: Option<Box<RawValue>>,
    ref_: Option<Box<RawValue>>,
    topic: Option<Box<RawValue>>,
    event: Option<Box<RawValue>>,
    payload: Option<Box<RawValue>>,
}

impl Loose {
    fn into_message(self) -> Result<Message, DecodeError> {
        let ref_ = self.ref_.and_then(RawRef::from_raw);
        let topic = self
            .topic
            .and_then(|t| serde_json::from_str::<String>(t.get()).ok())
            .ok_or(DecodeError::Fatal {
                code: close_code::UNSUPPORTED,
                reason: "message without a topic",
            })?;
        let malformed = |reason| DecodeError::Malformed {
            ref_: ref_.clone(),
            topic: topic.clone(),
            reason,
        };
        let event = self
            .event
            .and_then(|e| serde_json::from_str::<String>(e.get()).ok())
            .ok_or_else(|| malformed("malformed message: event must be a string"))?;
        let payload = self
            .payload
            .ok_or_else(|| malformed("malformed message: missing payload"))?;
        Ok(Message {
            join_ref: self.join_ref.and_then(RawRef::from_raw),
            ref_,
            topic,
            event: Event::decoded(event),
            payload: Payload::Json(payload),
        })
    }
}

/// `[join_ref, ref, topic, event, payload, ...extras]`.
fn decode_v2(text: &str) -> Result<Loose, DecodeError> {
    struct V2Visitor;
    impl<'de> Visitor<'de> for V2Visitor {
        type Value = Loose;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a Phoenix V2 array")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut slots: [Option<Box<RawValue>>; 5] = Default::default();
            let mut complete = true;
            for slot in slots.iter_mut() {
                *slot = seq.next_element::<Box<RawValue>>()?;
                if slot.is_none() {
                    complete = false;
                    break;
                }
            }
            if complete {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
            }
            let [join_ref, ref_, topic, event, payload] = slots;
            Ok(Loose {
                join_ref,
                ref_,
                topic,
                event,
                payload,
            })
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = de
        .deserialize_seq(V2Visitor)
        .and_then(|v| de.end().map(|_| v));
    match parsed {
        Ok(loose) => Ok(loose),
        Err(_) => Err(DecodeError::Fatal {
            code: close_code::UNSUPPORTED,
            reason: "frame is not a JSON array",
        }),
    }
}

/// `{"topic", "event", "payload", "ref", "join_ref"?}`.
fn decode_v1(text: &str) -> Result<Loose, DecodeError> {
    #[derive(serde::Deserialize)]
    struct V1 {
        topic: Option<Box<RawValue>>,
        event: Option<Box<RawValue>>,
        /// `null` is a payload like any other (§2.3): absent only when the key is.
        #[serde(default, deserialize_with = "present")]
        payload: Option<Box<RawValue>>,
        #[serde(rename = "ref")]
        ref_: Option<Box<RawValue>>,
        join_ref: Option<Box<RawValue>>,
    }
    fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
        serde::Deserialize::deserialize(d).map(Some)
    }
    let v: V1 = serde_json::from_str(text).map_err(|_| DecodeError::Fatal {
        code: close_code::UNSUPPORTED,
        reason: "frame is not a JSON object",
    })?;
    Ok(Loose {
        join_ref: v.join_ref,
        ref_: v.ref_,
        topic: v.topic,
        event: v.event,
        payload: v.payload,
    })
}

/// C→S binary push, kind 0 (§2.4).
fn decode_binary(data: &[u8]) -> Result<Message, DecodeError> {
    let bad = |reason| DecodeError::Fatal {
        code: close_code::UNSUPPORTED,
        reason,
    };
    if data.len() < 5 {
        return Err(bad("binary frame shorter than its header"));
    }
    if data[0] != 0 {
        return Err(bad("binary frame of unknown kind"));
    }
    let lens = [data[1], data[2], data[3], data[4]].map(usize::from);
    let mut pos = 5;
    let mut fields: [&str; 4] = [""; 4];
    for (i, len) in lens.iter().enumerate() {
        let end = pos + len;
        let bytes = data
            .get(pos..end)
            .ok_or(bad("binary frame header longer than the frame"))?;
        fields[i] = std::str::from_utf8(bytes).map_err(|_| DecodeError::Fatal {
            code: close_code::INVALID_DATA,
            reason: "binary frame field is not utf-8",
        })?;
        pos = end;
    }
    Ok(Message {
        join_ref: Some(RawRef::from_str_value(fields[0])),
        ref_: Some(RawRef::from_str_value(fields[1])),
        topic: fields[2].to_owned(),
        event: Event::decoded(fields[3].to_owned()),
        payload: Payload::Binary(Bytes::copy_from_slice(&data[pos..])),
    })
}

fn push_ref(out: &mut String, r: &Option<RawRef>) {
    match r {
        Some(r) => out.push_str(r.json()),
        None => out.push_str("null"),
    }
}

fn push_str_json(out: &mut String, s: &str) {
    // Serializing a &str to JSON cannot fail.
    let _ = serde_json::to_writer(string_writer(out), s);
}

/// Adapter so serde_json can append into a `String` (it only ever writes valid UTF-8).
fn string_writer(out: &mut String) -> impl std::io::Write + '_ {
    struct W<'a>(&'a mut String);
    impl std::io::Write for W<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let s = std::str::from_utf8(buf)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            self.0.push_str(s);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    W(out)
}

fn push_payload(out: &mut String, p: &OutPayload) {
    match p {
        OutPayload::Json(json) => out.push_str(json.get()),
        OutPayload::Reply { status, response } => {
            out.push_str("{\"status\":");
            push_str_json(out, status.as_str());
            out.push_str(",\"response\":");
            out.push_str(response.get());
            out.push('}');
        }
        // Not reachable: binary payloads are encoded as binary frames.
        OutPayload::Binary(_) | OutPayload::BinaryReply { .. } => out.push_str("{}"),
    }
}

fn payload_len(p: &OutPayload) -> usize {
    match p {
        OutPayload::Json(j) => j.get().len(),
        OutPayload::Reply { response, .. } => response.get().len() + 32,
        _ => 2,
    }
}

fn encode_v2_text(f: &Frame) -> String {
    let mut out = String::with_capacity(
        32 + f.topic.len() + f.event.as_str().len() + payload_len(&f.payload),
    );
    out.push('[');
    push_ref(&mut out, &f.join_ref);
    out.push(',');
    push_ref(&mut out, &f.ref_);
    out.push(',');
    push_str_json(&mut out, &f.topic);
    out.push(',');
    push_str_json(&mut out, f.event.as_str());
    out.push(',');
    push_payload(&mut out, &f.payload);
    out.push(']');
    out
}

/// V1 output never carries `join_ref` (§2.3).
fn encode_v1_text(f: &Frame) -> String {
    let mut out = String::with_capacity(
        48 + f.topic.len() + f.event.as_str().len() + payload_len(&f.payload),
    );
    out.push_str("{\"topic\":");
    push_str_json(&mut out, &f.topic);
    out.push_str(",\"event\":");
    push_str_json(&mut out, f.event.as_str());
    out.push_str(",\"payload\":");
    push_payload(&mut out, &f.payload);
    out.push_str(",\"ref\":");
    push_ref(&mut out, &f.ref_);
    out.push('}');
    out
}

fn ref_bytes(r: &Option<RawRef>) -> Option<String> {
    match r {
        None => Some(String::new()),
        Some(r) => r.as_string(),
    }
}

/// S→C binary layouts (§2.4): push kind 0 (no ref), reply kind 1, broadcast kind 2.
fn encode_binary(f: &Frame) -> Option<Bytes> {
    let short = |s: &str| u8::try_from(s.len()).ok();
    let join_ref = ref_bytes(&f.join_ref)?;
    let mut out = BytesMut::new();
    match &f.payload {
        OutPayload::BinaryReply { status, response } => {
            let ref_ = ref_bytes(&f.ref_)?;
            out.put_u8(1);
            out.put_u8(short(&join_ref)?);
            out.put_u8(short(&ref_)?);
            out.put_u8(short(&f.topic)?);
            let status = status.as_str();
            out.put_u8(short(status)?);
            out.put_slice(join_ref.as_bytes());
            out.put_slice(ref_.as_bytes());
            out.put_slice(f.topic.as_bytes());
            out.put_slice(status.as_bytes());
            out.put_slice(response);
        }
        OutPayload::Binary(bytes) if f.join_ref.is_none() => {
            out.put_u8(2);
            out.put_u8(short(&f.topic)?);
            out.put_u8(short(f.event.as_str())?);
            out.put_slice(f.topic.as_bytes());
            out.put_slice(f.event.as_str().as_bytes());
            out.put_slice(bytes);
        }
        OutPayload::Binary(bytes) => {
            out.put_u8(0);
            out.put_u8(short(&join_ref)?);
            out.put_u8(short(&f.topic)?);
            out.put_u8(short(f.event.as_str())?);
            out.put_slice(join_ref.as_bytes());
            out.put_slice(f.topic.as_bytes());
            out.put_slice(f.event.as_str().as_bytes());
            out.put_slice(bytes);
        }
        _ => return None,
    }
    Some(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::message::Status;

    fn text(w: WireFrame) -> String {
        match w {
            WireFrame::Text(t) => t.as_str().to_owned(),
            WireFrame::Binary(_) => panic!("expected text"),
        }
    }

    #[test]
    fn vsn_negotiation_matches_phoenix() {
        assert_eq!(Vsn::negotiate(None), Some(Vsn::V1));
        assert_eq!(Vsn::negotiate(Some("1.0.0")), Some(Vsn::V1));
        assert_eq!(Vsn::negotiate(Some("1.0.7")), Some(Vsn::V1));
        assert_eq!(Vsn::negotiate(Some("2.0.0")), Some(Vsn::V2));
        assert_eq!(Vsn::negotiate(Some("2.0.3")), Some(Vsn::V2));
        for bad in ["2.1.0", "3.0.0", "1.1.0", "2", "abc", "2.0", "2.0.0.1", ""] {
            assert_eq!(Vsn::negotiate(Some(bad)), None, "{bad}");
        }
    }

    #[test]
    fn v2_decodes_with_extras_and_keeps_refs_verbatim() {
        let m = Vsn::V2
            .decode(br#"[1, "7", "lock:A", "reset", [1,2], "extra", 9]"#, false)
            .unwrap();
        assert_eq!(m.join_ref.unwrap().json(), "1");
        assert_eq!(m.ref_.unwrap().json(), "\"7\"");
        assert_eq!(m.topic, "lock:A");
        assert_eq!(m.event, "reset");
        assert_eq!(m.payload.json().unwrap().get(), "[1,2]");
    }

    #[test]
    fn v2_short_array_is_answerable_when_topic_known() {
        let e = Vsn::V2
            .decode(br#"["1","1","lock:ABC"]"#, false)
            .unwrap_err();
        match e {
            DecodeError::Malformed { ref_, topic, .. } => {
                assert_eq!(topic, "lock:ABC");
                assert_eq!(ref_.unwrap().json(), "\"1\"");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Vsn::V2.decode(b"not json", false),
            Err(DecodeError::Fatal {
                code: CloseCode::Unsupported,
                ..
            })
        ));
        assert!(matches!(
            Vsn::V2.decode(b"[1,2]", false),
            Err(DecodeError::Fatal {
                code: CloseCode::Unsupported,
                ..
            })
        ));
        assert!(matches!(
            Vsn::V1.decode(b"{\"topic\":\"\xff\"}", true),
            Err(DecodeError::Fatal {
                code: CloseCode::Invalid,
                ..
            })
        ));
    }

    #[test]
    fn v1_accepts_binary_json_and_missing_join_ref() {
        let m = Vsn::V1
            .decode(
                br#"{"topic":"lock:A","event":"phx_join","payload":{},"ref":"1"}"#,
                true,
            )
            .unwrap();
        assert!(m.join_ref.is_none());
        assert_eq!(m.event, "phx_join");
    }

    #[test]
    fn binary_push_decodes_per_spec_example() {
        let frame = [
            0x00, 0x01, 0x01, 0x06, 0x05, b'3', b'7', b'f', b'i', b'l', b'e', b':', b'1', b'c',
            b'h', b'u', b'n', b'k', 0xde, 0xad, 0xbe, 0xef,
        ];
        let m = Vsn::V2.decode(&frame, true).unwrap();
        assert_eq!(m.join_ref.unwrap().json(), "\"3\"");
        assert_eq!(m.topic, "file:1");
        assert_eq!(m.event, "chunk");
        match m.payload {
            Payload::Binary(b) => assert_eq!(&b[..], &[0xde, 0xad, 0xbe, 0xef]),
            _ => panic!(),
        }
        assert!(Vsn::V2.decode(&[0x00, 0x09, 0, 0, 0], true).is_err());
        assert!(Vsn::V2.decode(&[0x05, 0, 0, 0, 0], true).is_err());
    }

    #[test]
    fn encodes_v2_and_v1_shapes() {
        let jr = RawRef::from_str_value("3");
        let f = Frame::reply(
            Some(jr.clone()),
            Some(jr),
            "room:lobby",
            Status::Ok,
            crate::core::message::empty_json(),
        );
        assert_eq!(
            text(Vsn::V2.encode(&f).unwrap()),
            r#"["3","3","room:lobby","phx_reply",{"status":"ok","response":{}}]"#
        );
        let v1: serde_json::Value =
            serde_json::from_str(&text(Vsn::V1.encode(&f).unwrap())).unwrap();
        assert_eq!(
            v1,
            serde_json::json!({"topic":"room:lobby","event":"phx_reply",
                "payload":{"status":"ok","response":{}},"ref":"3"})
        );
        let b = Frame::broadcast("t", "e", OutPayload::json(&serde_json::json!({"a": 1})));
        assert_eq!(
            text(Vsn::V2.encode(&b).unwrap()),
            r#"[null,null,"t","e",{"a":1}]"#
        );
    }

    #[test]
    fn encodes_binary_layouts_per_spec_example() {
        let jr = RawRef::from_str_value("3");
        let reply = Frame {
            join_ref: Some(jr.clone()),
            ref_: Some(RawRef::from_str_value("7")),
            topic: "file:1".into(),
            event: "phx_reply".into(),
            payload: OutPayload::BinaryReply {
                status: Status::Ok,
                response: Bytes::from_static(&[1, 2]),
            },
        };
        let Some(WireFrame::Binary(b)) = Vsn::V2.encode(&reply) else {
            panic!()
        };
        assert_eq!(&b[..], b"\x01\x01\x01\x06\x0237file:1ok\x01\x02");
        let push = Frame {
            join_ref: Some(jr),
            ref_: None,
            topic: "file:1".into(),
            event: "frame".into(),
            payload: OutPayload::Binary(Bytes::from_static(b"xy")),
        };
        let Some(WireFrame::Binary(b)) = Vsn::V2.encode(&push) else {
            panic!()
        };
        assert_eq!(&b[..], b"\x00\x01\x06\x053file:1framexy");
        let bc = Frame::broadcast(
            "file:1",
            "frame",
            OutPayload::Binary(Bytes::from_static(b"z")),
        );
        let Some(WireFrame::Binary(b)) = Vsn::V2.encode(&bc) else {
            panic!()
        };
        assert_eq!(&b[..], b"\x02\x06\x05file:1framez");
        assert!(Vsn::V1.encode(&bc).is_none());
        let long = Frame::broadcast("t".repeat(256), "e", OutPayload::Binary(Bytes::new()));
        assert!(Vsn::V2.encode(&long).is_none());
    }
}
