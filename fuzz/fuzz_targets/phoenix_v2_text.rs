//! Phoenix V2 JSON arrays in text frames: decode or are refused; a decoded message's
//! payload is JSON.
#![no_main]

use homehub::doors::phoenix::{Payload, Vsn};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Vsn::V2.decode(data, false) {
        assert!(matches!(m.payload, Payload::Json(_)));
    }
});
