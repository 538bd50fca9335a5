//! Compendium messages: a message or an `ERR` with a documented code; a routed `msg` is
//! a JSON object.
#![no_main]

use homehub::doors::compendium::{ClientMsg, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode(data, 64 * 1024) {
        Ok(ClientMsg::Route { addr, msg }) => {
            assert_eq!(addr.len(), 32);
            assert!(msg.get().starts_with('{'));
        }
        Ok(_) => {}
        Err(e) => assert!([400, 405, 413].contains(&e.code)),
    }
});
