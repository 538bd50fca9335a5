//! Long-poll POST bodies: the first byte picks JSON or ndjson; every frame of the rest
//! goes through the V2 decoder. Never a panic, never more frames than lines allowed.
#![no_main]

use homehub::doors::phoenix::Vsn;
use homehub::doors::phoenix::longpoll::{MAX_LINES, frames};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let ndjson = mode & 1 == 1;
    let frames = frames(body, ndjson);
    assert!(frames.len() <= if ndjson { MAX_LINES } else { 1 });
    for (bytes, binary) in frames {
        let _ = Vsn::V2.decode(&bytes, binary);
    }
});
