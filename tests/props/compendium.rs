//! The Compendium door (`homehub::doors::compendium::decode`).

use homehub::doors::compendium::{ClientMsg, decode};
use proptest::prelude::*;

use crate::strategies::{config, json_object_text, json_value};

const MAX: usize = 64 * 1024;

proptest! {
    #![proptest_config(config())]

    /// Any bytes or JSON: a message or an `ERR` with one of the documented codes.
    #[test]
    fn arbitrary_input_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        v in json_value(),
    ) {
        for data in [bytes, v.to_string().into_bytes()] {
            if let Err(e) = decode(&data, MAX) {
                prop_assert!([400, 405, 413].contains(&e.code), "{e:?}");
            }
        }
    }

    /// `ROUTE` gives back the address (lower-cased) and `msg` byte for byte: numbers,
    /// escapes, key order and whitespace exactly as the sender wrote them.
    #[test]
    fn route_forwards_msg_verbatim(addr in "[0-9a-fA-F]{32}", msg in json_object_text()) {
        let text = format!(r#"{{"type": "ROUTE", "EpheWssAddr": "{addr}", "msg": {msg}}}"#);
        match decode(text.as_bytes(), MAX) {
            Ok(ClientMsg::Route { addr: a, msg: m }) => {
                prop_assert_eq!(a, addr.to_ascii_lowercase());
                prop_assert_eq!(m.get(), msg.as_str());
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }

    /// An address that is not 32 hex digits, or a `msg` that is not an object: 400.
    #[test]
    fn bad_route_fields_are_400(addr in "[0-9a-z]{0,40}", msg in json_value()) {
        let good_addr = addr.len() == 32 && addr.bytes().all(|b| b.is_ascii_hexdigit());
        let text = serde_json::json!({"type": "ROUTE", "EpheWssAddr": addr, "msg": msg}).to_string();
        let r = decode(text.as_bytes(), MAX);
        if good_addr && msg.is_object() {
            prop_assert!(r.is_ok(), "{r:?}");
        } else {
            prop_assert_eq!(r.err().map(|e| e.code), Some(400));
        }
    }

    /// Over `max` bytes: 413 before anything is parsed, whatever the bytes are.
    #[test]
    fn oversize_is_413(bytes in prop::collection::vec(any::<u8>(), 1..512), max in 0usize..512) {
        let code = decode(&bytes, max).err().map(|e| e.code);
        if bytes.len() > max {
            prop_assert_eq!(code, Some(413));
        } else {
            prop_assert_ne!(code, Some(413));
        }
    }
}
