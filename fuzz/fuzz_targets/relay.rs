//! Raw `/relay` text frames: a packet or an error message; never a panic.
#![no_main]

use homehub::doors::relay::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = decode(text, 4096);
    }
});
