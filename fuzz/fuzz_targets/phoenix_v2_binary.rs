//! Phoenix V2 binary frames (kind 0 pushes, or JSON sent in a binary frame): decode or
//! are refused; a binary push's fields fit in the frame.
#![no_main]

use homehub::doors::phoenix::{Payload, Vsn};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Vsn::V2.decode(data, true)
        && let Payload::Binary(b) = &m.payload
    {
        assert!(5 + m.topic.len() + m.event.len() + b.len() <= data.len());
    }
});
