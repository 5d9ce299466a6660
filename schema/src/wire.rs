//! Framing of the capsule wire protocol (`schema/wire.capnp`), shared by the supervisor and the
//! guest SDK so both sides agree byte for byte.
//!
//! A frame is a little-endian `u32` length followed by that many bytes: one standard
//! single-segment Cap'n Proto message (segment table, then the segment). Single segment keeps the
//! reader simple and its limits exact: the traversal limit is the frame's own size, so a hostile
//! frame cannot make the reader walk more memory than it sent. A length above the reader's maximum
//! is a protocol violation that ends the connection (the reader cannot resynchronise without
//! reading the bytes it refuses); a frame of acceptable length that does not decode is an error
//! for that frame only.
//!
//! Everything here is blocking std I/O or pure functions: the guest SDK has no async runtime, and
//! the supervisor calls [`decode`] and [`encode`] from its own tasks.

use std::io::{self, Read, Write};

use capnp::message::{Builder, HeapAllocator, ReaderOptions, ReaderSegments};

/// The largest frame accepted by default (1 MiB). Larger payloads go in `Chunk` streams.
pub const MAX_FRAME: u32 = 1 << 20;
/// Frames nest little: Frame → union member → struct → list/text.
const NESTING_LIMIT: i32 = 8;

/// Why a frame could not be read or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The declared length exceeds the reader's maximum: the connection must be closed.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLong { len: u32, max: u32 },
    /// The bytes are not one well-formed single-segment message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("i/o on the capsule socket: {0}")]
    Io(#[from] io::Error),
}

/// A decoded frame: an owned, aligned single-segment message.
pub type Message = capnp::message::Reader<capnp::serialize::OwnedSegments>;

/// Serialises `message` as one frame: length prefix, segment table, one segment. A builder that
/// grew a second segment is copied into one segment first.
pub fn encode(message: &Builder<HeapAllocator>) -> Result<Vec<u8>, FrameError> {
    let segments = message.get_segments_for_output();
    if segments.len() == 1 {
        return Ok(frame_of(segments[0]));
    }
    let total: usize = segments.iter().map(|s| s.len()).sum();
    let words =
        u32::try_from(total / 8 + 8).map_err(|_| FrameError::Malformed("too large".into()))?;
    let mut flat = Builder::new(HeapAllocator::new().first_segment_words(words));
    let root: capnp::any_pointer::Reader = message
        .get_root_as_reader()
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    flat.set_root(root)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    let segments = flat.get_segments_for_output();
    if segments.len() != 1 {
        return Err(FrameError::Malformed(
            "message does not fit one segment".into(),
        ));
    }
    Ok(frame_of(segments[0]))
}

fn frame_of(segment: &[u8]) -> Vec<u8> {
    let body_len = 8 + segment.len();
    let mut out = Vec::with_capacity(4 + body_len);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&((segment.len() / 8) as u32).to_le_bytes());
    out.extend_from_slice(segment);
    out
}

/// Decodes the bytes of one frame (without its length prefix). Never panics on any input.
pub fn decode(body: &[u8]) -> Result<Message, FrameError> {
    if body.len() < 8 || !body.len().is_multiple_of(8) {
        return Err(FrameError::Malformed(
            "length is not a whole number of 8-byte words".into(),
        ));
    }
    let mut options = ReaderOptions::new();
    options
        .traversal_limit_in_words(Some(body.len() / 8))
        .nesting_limit(NESTING_LIMIT);
    // `read_message` copies into aligned words it owns, detaching the message from the
    // connection's read buffer.
    let mut rest = body;
    let reader = capnp::serialize::read_message(&mut rest, options)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!(
            "{} trailing bytes after the message",
            rest.len()
        )));
    }
    if reader.get_segments().len() != 1 {
        return Err(FrameError::Malformed("more than one segment".into()));
    }
    Ok(reader)
}

/// Reads one frame body (without the length prefix). `Ok(None)` is a clean end of stream before a
/// frame began; a stream that ends inside a frame is an error.
pub fn read_frame(r: &mut impl Read, max: u32) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes(len);
    if len > max {
        return Err(FrameError::TooLong { len, max });
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    Ok(Some(body))
}

/// Writes an encoded frame (as made by [`encode`]) in one call.
pub fn write_frame(w: &mut impl Write, frame: &[u8]) -> Result<(), FrameError> {
    w.write_all(frame)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire_capnp::{frame, Status};

    fn hello() -> Vec<u8> {
        let mut m = Builder::new_default();
        let mut h = m.init_root::<frame::Builder>().init_hello();
        h.set_version(crate::versions::WIRE);
        h.set_sdk("test");
        encode(&m).unwrap()
    }

    #[test]
    fn a_frame_round_trips() {
        let bytes = hello();
        let mut r = &bytes[..];
        let body = read_frame(&mut r, MAX_FRAME).unwrap().unwrap();
        assert!(r.is_empty());
        let msg = decode(&body).unwrap();
        let f = msg.get_root::<frame::Reader>().unwrap();
        match f.which().unwrap() {
            frame::Which::Hello(h) => {
                let h = h.unwrap();
                assert_eq!(h.get_version(), crate::versions::WIRE);
                assert_eq!(h.get_sdk().unwrap().to_str().unwrap(), "test");
            }
            _ => panic!("not a hello"),
        }
    }

    #[test]
    fn a_large_message_is_flattened_to_one_segment() {
        let mut m = Builder::new_default();
        let mut a = m.init_root::<frame::Builder>().init_answer();
        a.set_status(Status::Ok);
        a.set_payload(&vec![7u8; 100_000]);
        let bytes = encode(&m).unwrap();
        let msg = decode(&bytes[4..]).unwrap();
        let f = msg.get_root::<frame::Reader>().unwrap();
        let frame::Which::Answer(a) = f.which().unwrap() else {
            panic!("not an answer")
        };
        assert_eq!(a.unwrap().get_payload().unwrap().len(), 100_000);
    }

    #[test]
    fn an_oversized_length_is_refused_before_reading() {
        let mut bytes = (MAX_FRAME + 1).to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 16]);
        let err = read_frame(&mut &bytes[..], MAX_FRAME).unwrap_err();
        assert!(matches!(err, FrameError::TooLong { .. }), "{err}");
    }

    #[test]
    fn a_stream_ending_inside_a_frame_is_an_error_but_eof_between_frames_is_not() {
        assert!(read_frame(&mut &[][..], MAX_FRAME).unwrap().is_none());
        let bytes = hello();
        assert!(read_frame(&mut &bytes[..bytes.len() - 1], MAX_FRAME).is_err());
        assert!(read_frame(&mut &bytes[..2], MAX_FRAME).is_err());
    }

    #[test]
    fn garbage_and_multi_segment_bodies_are_malformed() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[1, 2, 3]).is_err());
        // Two segments declared.
        let mut two = vec![1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        two.extend_from_slice(&[0; 16]);
        assert!(decode(&two).is_err());
        // Trailing bytes.
        let mut h = hello()[4..].to_vec();
        h.extend_from_slice(&[0; 8]);
        assert!(decode(&h).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            if let Ok(msg) = decode(&bytes) {
                if let Ok(f) = msg.get_root::<frame::Reader>() {
                    let _ = f.which();
                }
            }
        }
    }
}
