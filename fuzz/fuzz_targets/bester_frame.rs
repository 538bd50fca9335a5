//! Bester length-prefixed framing: the input, cut into reads by its first byte, yields
//! frames within the cap and then the end or an error; never a panic, never a frame over
//! the cap.
#![no_main]

use bytes::BytesMut;
use homehub::doors::bester::codec::{FrameError, codec};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut c = codec(MAX);
    let mut buf = BytesMut::new();
    for chunk in stream.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            match c.decode(&mut buf) {
                Ok(Some(frame)) => assert!(frame.len() <= MAX),
                Ok(None) => break,
                Err(e) => {
                    assert_eq!(FrameError::classify(&e), FrameError::TooLarge);
                    return;
                }
            }
        }
    }
    loop {
        match c.decode_eof(&mut buf) {
            Ok(Some(frame)) => assert!(frame.len() <= MAX),
            Ok(None) => return,
            Err(e) => {
                assert_ne!(FrameError::classify(&e), FrameError::Io);
                return;
            }
        }
    }
});
