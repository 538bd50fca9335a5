//! Bester message bodies (and a peer's status responses): decoded or refused.
#![no_main]

use homehub::doors::bester::protocol::{decode, response_status};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode(data);
    let _ = response_status(data);
});
