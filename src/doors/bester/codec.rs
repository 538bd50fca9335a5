//! Framing: `[4-byte little-endian length][body]`, for clients, handlers and peers alike,
//! with tokio-util's length-delimited codec. A length over the cap is an error before any
//! byte of the body is buffered, so a hostile prefix cannot make the hub allocate.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::length_delimited::LengthDelimitedCodecError;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// The codec for frames of at most `max_frame` bytes.
pub fn codec(max_frame: usize) -> Codec {
    Codec {
        inner: LengthDelimitedCodec::builder()
            .little_endian()
            .length_field_length(4)
            .max_frame_length(max_frame)
            .new_codec(),
        mid_frame: false,
    }
}

/// tokio-util's length-delimited codec, except that a stream ending right after a length
/// prefix is [`FrameError::Truncated`] like one ending inside a body: the inner codec
/// consumes the prefix, so its end-of-stream check sees an empty buffer and reports a
/// clean end.
#[derive(Debug)]
pub struct Codec {
    inner: LengthDelimitedCodec,
    /// A prefix was consumed and its body has not been delivered yet.
    mid_frame: bool,
}

impl Decoder for Codec {
    type Item = BytesMut;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, std::io::Error> {
        let before = src.len();
        let frame = self.inner.decode(src)?;
        if frame.is_some() {
            self.mid_frame = false;
        } else if src.len() < before {
            self.mid_frame = true;
        }
        Ok(frame)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, std::io::Error> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() && !self.mid_frame => Ok(None),
            // The wording `FrameError::classify` (and tokio-util's own check) knows.
            None => Err(std::io::Error::other("bytes remaining on stream")),
        }
    }
}

impl Encoder<Bytes> for Codec {
    type Error = std::io::Error;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        self.inner.encode(frame, dst)
    }
}

/// Why reading a frame failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix is over the cap; the stream cannot be resynchronised.
    TooLarge,
    /// The stream ended in the middle of a frame.
    Truncated,
    /// The transport failed (reset, ...).
    Io,
}

impl FrameError {
    pub fn classify(err: &std::io::Error) -> FrameError {
        if err
            .get_ref()
            .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>())
        {
            FrameError::TooLarge
        } else if err.kind() == std::io::ErrorKind::Other
            && err.to_string().contains("bytes remaining")
        {
            // `Decoder::decode_eof`: end of stream with a partial frame buffered.
            FrameError::Truncated
        } else {
            FrameError::Io
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use tokio_util::codec::Decoder;

    #[test]
    fn little_endian_prefix() {
        let mut c = codec(16);
        let mut buf = BytesMut::new();
        buf.put_u32_le(2);
        buf.put_slice(b"{}");
        assert_eq!(&c.decode(&mut buf).unwrap().unwrap()[..], b"{}");
    }

    #[test]
    fn over_the_cap_is_too_large() {
        let mut c = codec(16);
        let mut buf = BytesMut::new();
        buf.put_u32_le(17);
        let err = c.decode(&mut buf).unwrap_err();
        assert_eq!(FrameError::classify(&err), FrameError::TooLarge);
    }

    #[test]
    fn end_of_stream_after_a_prefix_is_truncated() {
        let mut c = codec(16);
        let mut buf = BytesMut::new();
        buf.put_u32_le(2);
        assert!(c.decode(&mut buf).unwrap().is_none());
        let err = c.decode_eof(&mut buf).unwrap_err();
        assert_eq!(FrameError::classify(&err), FrameError::Truncated);
    }

    #[test]
    fn end_of_stream_mid_frame_is_truncated() {
        let mut c = codec(16);
        let mut buf = BytesMut::new();
        buf.put_u32_le(10);
        buf.put_slice(b"abc");
        let err = c.decode_eof(&mut buf).unwrap_err();
        assert_eq!(FrameError::classify(&err), FrameError::Truncated);
    }
}
