//! The raw `/relay` door (`homehub::doors::relay::decode`).

use homehub::doors::relay::{Command, Decoded, decode};
use proptest::prelude::*;

use crate::strategies::{config, json_text};

const MAX: usize = 4096;

proptest! {
    #![proptest_config(config())]

    /// Any text is decoded or refused with a message; never a panic.
    #[test]
    fn arbitrary_text_never_panics(text in ".*", bytes in prop::collection::vec(any::<u8>(), 0..128)) {
        let _ = decode(&text, MAX);
        let _ = decode(&String::from_utf8_lossy(&bytes), MAX);
    }

    /// A packet for a device gives back its target and its payload byte for byte.
    #[test]
    fn device_packet_round_trips(
        target in ".*".prop_filter("not the server", |t| !t.eq_ignore_ascii_case("server")),
        payload in json_text(),
    ) {
        let text = format!(
            r#"{{"target": {}, "payload": {payload}}}"#,
            serde_json::to_string(&target).unwrap()
        );
        match decode(&text, MAX) {
            Ok(Decoded::Device { target: t, payload: p }) => {
                prop_assert_eq!(t, target);
                prop_assert_eq!(p.get(), payload.as_str());
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }

    /// `register` for target `server` (any case) gives back the registration fields.
    #[test]
    fn register_round_trips(
        server in "[sS][eE][rR][vV][eE][rR]",
        name in ".*", description in prop::option::of(".*"), force in any::<bool>(),
    ) {
        let payload = serde_json::json!({
            "command": "register", "device_name": name, "description": description, "force": force,
        });
        let text = serde_json::json!({"target": server, "payload": payload}).to_string();
        match decode(&text, MAX) {
            Ok(Decoded::Server(Command::Register(meta))) => {
                prop_assert_eq!(meta.device_name, Some(name));
                prop_assert_eq!(meta.description, description);
                prop_assert_eq!(meta.force, force);
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }

    /// A packet of `max` characters or more is refused as too large, whatever it holds;
    /// one under the limit is not.
    #[test]
    fn oversize_is_refused(payload in json_text(), max in 1usize..256) {
        let text = format!(r#"{{"target":"dev","payload":{payload}}}"#);
        let chars = text.chars().count();
        let refused = matches!(decode(&text, max), Err(e) if e == "packet too large");
        prop_assert_eq!(refused, chars >= max);
        prop_assert!(decode(&text, chars + 1).is_ok());
    }
}
