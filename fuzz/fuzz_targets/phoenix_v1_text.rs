//! Phoenix V1 (JSON objects): any bytes, in a text or a binary frame, decode or are
//! refused; never a panic.
#![no_main]

use homehub::doors::phoenix::Vsn;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Vsn::V1.decode(data, false);
    let _ = Vsn::V1.decode(data, true);
});
