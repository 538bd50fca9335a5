//! The Bester door: length-prefixed framing (`homehub::doors::bester::codec`) and messages
//! (`homehub::doors::bester::protocol`).

use bytes::{BufMut, Bytes, BytesMut};
use homehub::doors::bester::codec::{FrameError, codec};
use homehub::doors::bester::protocol::{
    Builtin, DecodeError, Outcome, Request, Scope, Status, decode, response_status, server_frame,
    status_frame,
};
use proptest::prelude::*;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio_util::codec::{Decoder, Encoder};

use crate::strategies::{chunks, config, json_text, json_value, split_points};

const MAX: usize = 1024;

/// Frames of up to `MAX` bytes each.
fn bodies() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..=MAX), 0..6)
}

fn encode_all(bodies: &[Vec<u8>]) -> BytesMut {
    let mut c = codec(MAX);
    let mut wire = BytesMut::new();
    for b in bodies {
        c.encode(Bytes::from(b.clone()), &mut wire).unwrap();
    }
    wire
}

/// What a reader gets from the stream delivered in reads of `lens` bytes, then the end.
fn read_chunked(wire: &[u8], lens: &[usize]) -> (Vec<Vec<u8>>, Option<FrameError>) {
    let mut c = codec(MAX);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks(wire, lens) {
        buf.extend_from_slice(chunk);
        loop {
            match c.decode(&mut buf) {
                Ok(Some(frame)) => out.push(frame.to_vec()),
                Ok(None) => break,
                Err(e) => return (out, Some(FrameError::classify(&e))),
            }
        }
    }
    loop {
        match c.decode_eof(&mut buf) {
            Ok(Some(frame)) => out.push(frame.to_vec()),
            Ok(None) => return (out, None),
            Err(e) => return (out, Some(FrameError::classify(&e))),
        }
    }
}

/// A client's JSON message with credentials, a scope, hops and a handler request.
fn client_message() -> impl Strategy<Value = (String, String, String, usize, String, Value, String)>
{
    (
        ".*",
        ".*",
        prop_oneof![
            Just("client".to_owned()),
            Just("server".to_owned()),
            "[a-z]{0,6}"
        ],
        0usize..1000,
        ".+".prop_filter("not a built-in", |k| {
            !homehub::doors::bester::protocol::BUILTIN_TYPES.contains(&k.as_str())
        }),
        json_value(),
        json_text(),
    )
}

proptest! {
    #![proptest_config(config())]

    /// Frames encoded one after another come back the same, read in one piece or in
    /// arbitrary chunks.
    #[test]
    fn framing_is_independent_of_reads(
        (bodies, lens) in bodies().prop_flat_map(|b| {
            let len = b.iter().map(|f| 4 + f.len()).sum();
            (Just(b), split_points(len))
        }),
    ) {
        let wire = encode_all(&bodies);
        let (whole, err) = read_chunked(&wire, &[wire.len()]);
        prop_assert_eq!(err, None);
        prop_assert_eq!(&whole, &bodies);
        let (split, err) = read_chunked(&wire, &lens);
        prop_assert_eq!(err, None);
        prop_assert_eq!(split, bodies);
    }

    /// The stream split at every possible single point gives the same frames.
    #[test]
    fn framing_survives_any_one_cut(bodies in bodies(), at in any::<prop::sample::Index>()) {
        let wire = encode_all(&bodies);
        let k = if wire.is_empty() { 0 } else { at.index(wire.len() + 1) };
        let (got, err) = read_chunked(&wire, &[k, wire.len() - k]);
        prop_assert_eq!(err, None);
        prop_assert_eq!(got, bodies);
    }

    /// The stream ending inside a frame is `Truncated`, with the complete frames before it
    /// delivered.
    #[test]
    fn end_mid_frame_is_truncated(bodies in bodies(), body in prop::collection::vec(any::<u8>(), 1..=MAX), at in any::<prop::sample::Index>()) {
        let mut wire = encode_all(&bodies);
        let before = wire.len();
        codec(MAX).encode(Bytes::from(body), &mut wire).unwrap();
        let cut = before + 1 + at.index(wire.len() - before - 1);
        let (got, err) = read_chunked(&wire[..cut], &[cut]);
        prop_assert_eq!(err, Some(FrameError::Truncated));
        prop_assert_eq!(got, bodies);
    }

    /// A length prefix over the cap is `TooLarge` as soon as the 4 prefix bytes are in,
    /// without waiting for (or buffering) the body; an encoder refuses such a frame too.
    #[test]
    fn oversize_prefix_is_too_large(len in (MAX as u32 + 1)..=u32::MAX, extra in prop::collection::vec(any::<u8>(), 0..16)) {
        let mut wire = BytesMut::new();
        wire.put_u32_le(len);
        wire.extend_from_slice(&extra);
        let (got, err) = read_chunked(&wire, &[4, extra.len()]);
        prop_assert!(got.is_empty());
        prop_assert_eq!(err, Some(FrameError::TooLarge));
        let mut out = BytesMut::new();
        let e = codec(MAX).encode(Bytes::from(vec![0u8; MAX + 1]), &mut out).unwrap_err();
        prop_assert_eq!(FrameError::classify(&e), FrameError::TooLarge);
    }

    /// Any frame body: a message or a `Malformed`/`Invalid` error, never a panic; JSON
    /// that is not an object is never a message.
    #[test]
    fn arbitrary_bodies_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256), v in json_value()) {
        let _ = decode(&bytes);
        let r = decode(v.to_string().as_bytes());
        if !v.is_object() {
            prop_assert!(matches!(r, Err(DecodeError::Invalid { .. })), "{r:?}");
        }
        let _ = response_status(&bytes);
    }

    /// A client's message decodes to its header, type, id, and `data` byte for byte.
    #[test]
    fn message_round_trips(m in client_message()) {
        let (user, pass, scope, hops, kind, id, data) = m;
        let text = format!(
            r#"{{"header": {}, "payload": {{"type": {}, "id": {}, "data": {data}}}}}"#,
            json!({"authentication": {"username": user, "password": pass}, "scope": scope, "hops": hops}),
            serde_json::to_string(&kind).unwrap(),
            id,
        );
        let msg = decode(text.as_bytes()).unwrap();
        let want_scope = match scope.as_str() {
            "client" => Scope::Client,
            "server" => Scope::Server,
            other => Scope::Unknown(other.to_owned()),
        };
        prop_assert_eq!(msg.header.scope, Some(want_scope));
        let auth = msg.header.auth.unwrap();
        prop_assert_eq!((auth.username, auth.password), (user, pass));
        prop_assert_eq!(msg.header.hops, hops);
        let p = msg.payload.unwrap();
        prop_assert_eq!(p.kind, kind);
        // Any JSON is an id, `null` too (echoed as `null`).
        prop_assert_eq!(p.id, Some(id));
        match p.request {
            Request::Handler(d) => prop_assert_eq!(d.get(), data.as_str()),
            other => prop_assert!(false, "{other:?}"),
        }
    }

    /// Built-ins in both shapes carry their arguments.
    #[test]
    fn change_password_round_trips(old in ".*", new in ".*", block in any::<bool>()) {
        let args = json!({"old_password": old, "new_password": new});
        let payload = if block {
            json!({"type": "builtin", "data": {"command": {"type": "change_password", "args": args}}})
        } else {
            json!({"type": "change_password", "data": args})
        };
        let msg = decode(json!({"payload": payload}).to_string().as_bytes()).unwrap();
        match msg.payload.unwrap().request {
            Request::Builtin(b) => prop_assert_eq!(b, Builtin::ChangePassword { old, new }),
            other => prop_assert!(false, "{other:?}"),
        }
    }

    /// What the hub sends a peer decodes, on the peer, to what it meant.
    #[test]
    fn server_frame_round_trips(name in ".*", secret in ".*", hops in 0usize..64, kind in ".+", data in json_text()) {
        let raw = RawValue::from_string(data.clone()).unwrap();
        let frame = server_frame(&name, &secret, hops, &kind, &raw);
        let msg = decode(&frame).unwrap();
        prop_assert_eq!(msg.header.scope, Some(Scope::Server));
        let auth = msg.header.auth.unwrap();
        prop_assert_eq!((auth.username, auth.password), (name, secret));
        prop_assert_eq!(msg.header.hops, hops);
        let p = msg.payload.unwrap();
        prop_assert_eq!(&p.kind, &kind);
        if let Request::Handler(d) = p.request {
            prop_assert_eq!(d.get(), data.as_str());
        }
    }

    /// A status response reads back with its status, type, id and data.
    #[test]
    fn status_frame_round_trips(kind in ".*", id in prop::option::of(json_value()), data in json_value()) {
        let frame = status_frame(&Outcome { status: Status::BadRequest, data: data.clone() }, &kind, id.as_ref());
        let status = response_status(&frame);
        prop_assert_eq!(status.as_deref(), Some("bad_request"));
        let v: Value = serde_json::from_slice(&frame).unwrap();
        prop_assert_eq!(&v["payload"]["type"], &json!(kind));
        prop_assert_eq!(v["payload"].get("id"), id.as_ref());
        prop_assert_eq!(&v["payload"]["data"], &data);
    }
}
