//! Phoenix serializers (`homehub::doors::phoenix`): V1 objects, V2 arrays, V2 binary frames.

use bytes::Bytes;
use homehub::core::close_code;
use homehub::doors::phoenix::{
    DecodeError, Event, Frame, Message, OutPayload, Payload, RawRef, Status, Vsn, WireFrame,
};
use proptest::prelude::*;
use serde_json::value::RawValue;

use crate::strategies::{config, json_text, json_value, ref_json, short_string};

fn raw_ref(json: &Option<String>) -> Option<RawRef> {
    json.as_ref()
        .and_then(|j| RawRef::from_raw(RawValue::from_string(j.clone()).unwrap()))
}

fn ref_text(r: &Option<RawRef>) -> Option<String> {
    r.as_ref().map(|r| r.json().to_owned())
}

fn text(w: WireFrame) -> String {
    match w {
        WireFrame::Text(t) => t.as_str().to_owned(),
        WireFrame::Binary(_) => panic!("expected a text frame"),
    }
}

fn binary(w: WireFrame) -> Bytes {
    match w {
        WireFrame::Binary(b) => b,
        WireFrame::Text(_) => panic!("expected a binary frame"),
    }
}

fn json_payload(m: &Message) -> &str {
    match &m.payload {
        Payload::Json(raw) => raw.get(),
        Payload::Binary(_) => panic!("expected a JSON payload"),
    }
}

/// The fields of a server-to-client binary frame read back per §2.4, independently of the
/// hub's encoder: `(kind, join_ref, ref, topic, event or status, payload)`.
fn parse_s2c(b: &[u8]) -> (u8, String, String, String, String, Vec<u8>) {
    let field = |pos: &mut usize, len: u8| {
        let s = std::str::from_utf8(&b[*pos..*pos + usize::from(len)])
            .unwrap()
            .to_owned();
        *pos += usize::from(len);
        s
    };
    match b[0] {
        0 => {
            let mut pos = 4;
            let jr = field(&mut pos, b[1]);
            let topic = field(&mut pos, b[2]);
            let event = field(&mut pos, b[3]);
            (0, jr, String::new(), topic, event, b[pos..].to_vec())
        }
        1 => {
            let mut pos = 5;
            let jr = field(&mut pos, b[1]);
            let r = field(&mut pos, b[2]);
            let topic = field(&mut pos, b[3]);
            let status = field(&mut pos, b[4]);
            (1, jr, r, topic, status, b[pos..].to_vec())
        }
        2 => {
            let mut pos = 3;
            let topic = field(&mut pos, b[1]);
            let event = field(&mut pos, b[2]);
            (
                2,
                String::new(),
                String::new(),
                topic,
                event,
                b[pos..].to_vec(),
            )
        }
        k => panic!("unknown kind {k}"),
    }
}

/// A client-to-server binary push (kind 0, §2.4), built by hand.
fn c2s_push(jr: &str, r: &str, topic: &str, event: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    for f in [jr, r, topic, event] {
        out.push(u8::try_from(f.len()).unwrap());
    }
    for f in [jr, r, topic, event] {
        out.extend_from_slice(f.as_bytes());
    }
    out.extend_from_slice(payload);
    out
}

/// An outbound frame with these refs (JSON text), topic, event and JSON payload.
fn frame_of(
    jr: &Option<String>,
    r: &Option<String>,
    topic: &str,
    event: &str,
    payload: &str,
) -> Frame {
    Frame {
        join_ref: raw_ref(jr),
        ref_: raw_ref(r),
        topic: topic.to_owned(),
        event: Event::from_name(event),
        payload: OutPayload::Json(RawValue::from_string(payload.to_owned()).unwrap()),
    }
}

proptest! {
    #![proptest_config(config())]

    /// Any bytes, on either serializer, in either frame type: an error value, no panic;
    /// and an error that closes carries a close code the hub uses.
    #[test]
    fn arbitrary_bytes_never_panic(
        data in prop::collection::vec(any::<u8>(), 0..256),
        binary in any::<bool>(),
    ) {
        for vsn in [Vsn::V1, Vsn::V2] {
            if let Err(DecodeError::Fatal { code, .. }) = vsn.decode(&data, binary) {
                prop_assert!([close_code::UNSUPPORTED, close_code::INVALID_DATA].contains(&code));
            }
        }
    }

    /// Any JSON value: decodes or is refused, never panics; an array (V2) or object (V1)
    /// whose topic and event are strings and that has a payload always decodes.
    #[test]
    fn arbitrary_json_never_panics(v in json_value(), topic in ".*", event in ".*") {
        let text = v.to_string();
        for vsn in [Vsn::V1, Vsn::V2] {
            let _ = vsn.decode(text.as_bytes(), false);
            let _ = vsn.decode(text.as_bytes(), true);
        }
        let arr = serde_json::json!([null, "1", topic, event, v, "extra"]).to_string();
        let m = Vsn::V2.decode(arr.as_bytes(), false).unwrap();
        prop_assert_eq!(&m.topic, &topic);
        prop_assert_eq!(&m.event, &event);
        let obj = serde_json::json!({"topic": topic, "event": event, "payload": v}).to_string();
        let m = Vsn::V1.decode(obj.as_bytes(), true).unwrap();
        prop_assert_eq!(&m.topic, &topic);
    }

    /// V2 text: the hub's encoding of a frame decodes to the same refs (byte for byte),
    /// topic, event and payload (byte for byte).
    #[test]
    fn v2_text_round_trips(
        jr in ref_json(), r in ref_json(), topic in ".*", event in ".*", payload in json_text(),
    ) {
        let frame = frame_of(&jr, &r, &topic, &event, &payload);
        let wire = text(Vsn::V2.encode(&frame).unwrap());
        let m = Vsn::V2.decode(wire.as_bytes(), false).unwrap();
        prop_assert_eq!(ref_text(&m.join_ref), jr);
        prop_assert_eq!(ref_text(&m.ref_), r);
        prop_assert_eq!(&m.topic, &topic);
        prop_assert_eq!(&m.event, &event);
        prop_assert_eq!(json_payload(&m), payload.as_str());
    }

    /// V1 text: the same, except that V1 output never carries `join_ref`; a client's V1
    /// object with a `join_ref` keeps it.
    #[test]
    fn v1_text_round_trips(
        jr in ref_json(), r in ref_json(), topic in ".*", event in ".*", payload in json_text(),
    ) {
        let frame = frame_of(&jr, &r, &topic, &event, &payload);
        let wire = text(Vsn::V1.encode(&frame).unwrap());
        let m = Vsn::V1.decode(wire.as_bytes(), false).unwrap();
        prop_assert_eq!(ref_text(&m.join_ref), None);
        prop_assert_eq!(ref_text(&m.ref_), r.clone());
        prop_assert_eq!(&m.topic, &topic);
        prop_assert_eq!(&m.event, &event);
        prop_assert_eq!(json_payload(&m), payload.as_str());

        let client = format!(
            r#"{{"join_ref": {}, "ref": {}, "topic": {}, "event": {}, "payload": {}}}"#,
            jr.as_deref().unwrap_or("null"),
            r.as_deref().unwrap_or("null"),
            serde_json::to_string(&topic).unwrap(),
            serde_json::to_string(&event).unwrap(),
            payload,
        );
        let m = Vsn::V1.decode(client.as_bytes(), true).unwrap();
        prop_assert_eq!(ref_text(&m.join_ref), jr);
        prop_assert_eq!(json_payload(&m), payload.as_str());
    }

    /// V2 binary, client to server: every field and the payload bytes come back.
    #[test]
    fn v2_binary_push_decodes(
        jr in short_string(), r in short_string(), topic in short_string(),
        event in short_string(), payload in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let frame = c2s_push(&jr, &r, &topic, &event, &payload);
        let fields = 5 + jr.len() + r.len() + topic.len() + event.len();
        let m = Vsn::V2.decode(&frame, true).unwrap();
        prop_assert_eq!(m.join_ref.and_then(|r| r.as_string()), Some(jr));
        prop_assert_eq!(m.ref_.and_then(|r| r.as_string()), Some(r));
        prop_assert_eq!(m.topic, topic);
        prop_assert_eq!(m.event, event);
        match m.payload {
            Payload::Binary(b) => prop_assert_eq!(&b[..], &payload[..]),
            Payload::Json(_) => prop_assert!(false, "binary payload decoded as JSON"),
        }
        // Any cut of the frame inside its header or fields is refused, not misread.
        for cut in [0, 4, fields.saturating_sub(1)] {
            if cut < fields {
                prop_assert!(Vsn::V2.decode(&frame[..cut], true).is_err());
            }
        }
    }

    /// V2 binary, server to client: push (kind 0), reply (kind 1) and broadcast (kind 2)
    /// read back per §2.4 give the frame's fields; a field over 255 bytes is not encoded.
    #[test]
    fn v2_binary_frames_round_trip(
        jr in short_string(), r in short_string(), topic in short_string(),
        event in short_string(), payload in prop::collection::vec(any::<u8>(), 0..64),
        long in "[a-z]{256,300}", ok in any::<bool>(),
    ) {
        let bytes = Bytes::from(payload.clone());
        let push = Frame {
            join_ref: Some(RawRef::from_str_value(&jr)),
            ref_: None,
            topic: topic.clone(),
            event: Event::from_name(&event),
            payload: OutPayload::Binary(bytes.clone()),
        };
        let got = parse_s2c(&binary(Vsn::V2.encode(&push).unwrap()));
        prop_assert_eq!(got, (0, jr.clone(), String::new(), topic.clone(), event.clone(), payload.clone()));

        let status = if ok { Status::Ok } else { Status::Error };
        let reply = Frame {
            join_ref: Some(RawRef::from_str_value(&jr)),
            ref_: Some(RawRef::from_str_value(&r)),
            topic: topic.clone(),
            event: "phx_reply".into(),
            payload: OutPayload::BinaryReply { status, response: bytes.clone() },
        };
        let got = parse_s2c(&binary(Vsn::V2.encode(&reply).unwrap()));
        prop_assert_eq!(got, (1, jr, r, topic.clone(), status.as_str().to_owned(), payload.clone()));

        let broadcast = Frame::broadcast(&topic, &event, OutPayload::Binary(bytes.clone()));
        let got = parse_s2c(&binary(Vsn::V2.encode(&broadcast).unwrap()));
        prop_assert_eq!(got, (2, String::new(), String::new(), topic.clone(), event, payload));
        prop_assert!(Vsn::V1.encode(&broadcast).is_none());

        let too_long = Frame::broadcast(&topic, &long, OutPayload::Binary(bytes));
        prop_assert!(Vsn::V2.encode(&too_long).is_none());
    }
}
