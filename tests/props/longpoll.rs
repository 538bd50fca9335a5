//! Long-poll POST bodies (`homehub::doors::phoenix::longpoll::{frames, is_ndjson}`): one JSON
//! frame, or ndjson with one text or base64 binary frame a line.

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine as _;
use homehub::doors::phoenix::Vsn;
use homehub::doors::phoenix::longpoll::{MAX_LINES, frames, is_ndjson};
use proptest::prelude::*;

use crate::strategies::{config, json_value};

/// A frame as a client posts it: a compact V2 array (text) or bytes (binary).
fn frame() -> impl Strategy<Value = (Vec<u8>, bool)> {
    prop_oneof![
        (".*", ".*", json_value()).prop_map(|(topic, event, payload)| {
            let text = serde_json::json!([null, "1", topic, event, payload]).to_string();
            (text.into_bytes(), false)
        }),
        // Non-empty: an empty line is skipped, as Phoenix does.
        prop::collection::vec(any::<u8>(), 1..64).prop_map(|b| (b, true)),
    ]
}

fn ndjson(frames: &[(Vec<u8>, bool)], crlf: bool, trailing: bool) -> Vec<u8> {
    let sep: &[u8] = if crlf { b"\r\n" } else { b"\n" };
    let mut body = Vec::new();
    for (i, (bytes, binary)) in frames.iter().enumerate() {
        if i > 0 {
            body.extend_from_slice(sep);
        }
        if *binary {
            let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
            body.extend_from_slice(b64.as_bytes());
        } else {
            body.extend_from_slice(bytes);
        }
    }
    if trailing {
        body.extend_from_slice(sep);
    }
    body
}

proptest! {
    #![proptest_config(config())]

    /// Any body, either way: frames, then each frame through the V2 decoder: no panic.
    #[test]
    fn arbitrary_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        for nd in [false, true] {
            for (data, binary) in frames(&body, nd) {
                let _ = Vsn::V2.decode(&data, binary);
            }
        }
    }

    /// A JSON body is one text frame, byte for byte, and decodes to what was sent.
    #[test]
    fn json_body_is_one_frame((body, _) in frame().prop_filter("text", |f| !f.1)) {
        let got = frames(&body, false);
        prop_assert_eq!(&got, &vec![(body.clone(), false)]);
        let m = Vsn::V2.decode(&got[0].0, false).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        prop_assert_eq!(m.topic.as_str(), v[2].as_str().unwrap());
    }

    /// ndjson: the frames come back in order, text ones verbatim and binary ones decoded
    /// from base64, whatever the line endings.
    #[test]
    fn ndjson_round_trips(
        sent in prop::collection::vec(frame(), 0..MAX_LINES),
        crlf in any::<bool>(),
        trailing in any::<bool>(),
    ) {
        let body = ndjson(&sent, crlf, trailing);
        prop_assert_eq!(frames(&body, true), sent);
    }

    /// More than `MAX_LINES` lines: only the first `MAX_LINES` are frames.
    #[test]
    fn ndjson_is_capped(sent in prop::collection::vec(frame(), MAX_LINES + 1..MAX_LINES + 20)) {
        let body = ndjson(&sent, false, false);
        prop_assert_eq!(frames(&body, true), sent[..MAX_LINES].to_vec());
    }

    /// `Content-Type: application/x-ndjson`, in any case, with or without parameters.
    #[test]
    fn ndjson_is_the_content_type(
        mime in "[aA][pP][pP][lL][iI][cC][aA][tT][iI][oO][nN]/[xX]-[nN][dD][jJ][sS][oO][nN]",
        params in prop::option::of("; ?[a-z]{1,8}=[a-z0-9-]{1,8}"),
        other in "[a-z]{1,12}/[a-z-]{1,12}",
    ) {
        let mut h = HeaderMap::new();
        prop_assert!(!is_ndjson(&h));
        let value = format!("{mime}{}", params.unwrap_or_default());
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(&value).unwrap());
        prop_assert!(is_ndjson(&h));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(&other).unwrap());
        prop_assert_eq!(is_ndjson(&h), other.eq_ignore_ascii_case("application/x-ndjson"));
    }
}
