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

/// A decoded frame: a single-segment message read in place from the frame's bytes.
pub type Message<'a> = capnp::message::Reader<Segment<'a>>;

/// The one segment of a frame. Borrowed from the received bytes when they are 8-byte aligned
/// (a reader's buffer from the allocator, or a [`FrameBuf`]): no copy and no allocation per
/// frame; otherwise copied once into aligned words, as Cap'n Proto readers need.
pub enum Segment<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<capnp::Word>),
}

impl ReaderSegments for Segment<'_> {
    fn get_segment(&self, idx: u32) -> Option<&[u8]> {
        match (idx, self) {
            (0, Segment::Borrowed(b)) => Some(b),
            (0, Segment::Owned(w)) => Some(capnp::Word::words_to_bytes(w)),
            _ => None,
        }
    }
}

/// A reusable 8-byte aligned buffer for one frame body at a time: a reader that keeps one per
/// connection allocates nothing per frame, and [`decode`] reads it in place.
#[derive(Default)]
pub struct FrameBuf {
    words: Vec<capnp::Word>,
    len: usize,
}

/// A buffer grown for a rare large frame is given back above this size.
const KEEP_BYTES: usize = 64 * 1024;

impl FrameBuf {
    pub fn new() -> Self {
        FrameBuf::default()
    }

    /// Room for a body of `len` bytes, to be filled by the caller (its content is stale).
    pub fn prepare(&mut self, len: usize) -> &mut [u8] {
        let words = len.div_ceil(8);
        if self.words.len() * 8 > KEEP_BYTES && words * 8 <= KEEP_BYTES {
            self.words = Vec::new();
        }
        if self.words.len() < words {
            self.words
                .resize(words, capnp::word(0, 0, 0, 0, 0, 0, 0, 0));
        }
        self.len = len;
        &mut capnp::Word::words_to_bytes_mut(&mut self.words)[..len]
    }

    /// The body last prepared.
    pub fn bytes(&self) -> &[u8] {
        &capnp::Word::words_to_bytes(&self.words)[..self.len]
    }
}

/// Room for the fixed parts of any frame besides its variable-length fields.
const FIXED_WORDS: usize = 32;

/// A builder whose first segment holds a frame with `variable` bytes of text and data fields,
/// so that encoding never flattens a second segment (a copy of the whole payload) and a small
/// frame does not pay for zeroing the default 8 KiB segment.
pub fn builder_for(variable: usize) -> Builder<HeapAllocator> {
    let words = u32::try_from(variable / 8 + FIXED_WORDS).unwrap_or(u32::MAX);
    Builder::new(HeapAllocator::new().first_segment_words(words))
}

/// Serialises `message` as one frame: length prefix, segment table, one segment. A builder that
/// grew a second segment is copied into one segment first.
pub fn encode(message: &Builder<HeapAllocator>) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode_into(message, &mut out, u32::MAX)?;
    Ok(out)
}

/// Appends `message` to `out` as one frame, unless its body would exceed `max` bytes: then
/// `out` is left as it was. Frames for one destination collect in one buffer this way.
pub fn encode_into(
    message: &Builder<HeapAllocator>,
    out: &mut Vec<u8>,
    max: u32,
) -> Result<(), FrameError> {
    let segments = message.get_segments_for_output();
    if segments.len() == 1 {
        return frame_into(segments[0], out, max);
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
    frame_into(segments[0], out, max)
}

fn frame_into(segment: &[u8], out: &mut Vec<u8>, max: u32) -> Result<(), FrameError> {
    let body_len = 8 + segment.len();
    let len = u32::try_from(body_len).unwrap_or(u32::MAX);
    if len > max {
        return Err(FrameError::TooLong { len, max });
    }
    out.reserve(4 + body_len);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&((segment.len() / 8) as u32).to_le_bytes());
    out.extend_from_slice(segment);
    Ok(())
}

/// Decodes the bytes of one frame (without its length prefix). Never panics on any input.
/// Reads in place when `body` is 8-byte aligned, and copies it once otherwise.
pub fn decode(body: &[u8]) -> Result<Message<'_>, FrameError> {
    if body.len() < 8 || !body.len().is_multiple_of(8) {
        return Err(FrameError::Malformed(
            "length is not a whole number of 8-byte words".into(),
        ));
    }
    // The segment table of a single-segment message: segment count minus one, then its size.
    let word = |i: usize| u32::from_le_bytes([body[i], body[i + 1], body[i + 2], body[i + 3]]);
    if word(0) != 0 {
        return Err(FrameError::Malformed("more than one segment".into()));
    }
    let segment = &body[8..];
    let declared = word(4) as usize;
    if declared != segment.len() / 8 {
        return Err(FrameError::Malformed(format!(
            "the segment table declares {declared} words, the frame holds {}",
            segment.len() / 8
        )));
    }
    let mut options = ReaderOptions::new();
    options
        .traversal_limit_in_words(Some(body.len() / 8))
        .nesting_limit(NESTING_LIMIT);
    let segment = if segment.as_ptr().align_offset(8) == 0 {
        Segment::Borrowed(segment)
    } else {
        let mut words = capnp::Word::allocate_zeroed_vec(segment.len() / 8);
        capnp::Word::words_to_bytes_mut(&mut words).copy_from_slice(segment);
        Segment::Owned(words)
    };
    Ok(capnp::message::Reader::new(segment, options))
}

/// Reads one frame body (without the length prefix). `Ok(None)` is a clean end of stream before a
/// frame began; a stream that ends inside a frame is an error.
pub fn read_frame(r: &mut impl Read, max: u32) -> Result<Option<Vec<u8>>, FrameError> {
    let Some(len) = read_len(r, max)? else {
        return Ok(None);
    };
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Some(body))
}

/// [`read_frame`] into a reusable buffer: `Ok(false)` at a clean end of stream.
pub fn read_frame_into(
    r: &mut impl Read,
    max: u32,
    buf: &mut FrameBuf,
) -> Result<bool, FrameError> {
    let Some(len) = read_len(r, max)? else {
        return Ok(false);
    };
    r.read_exact(buf.prepare(len))?;
    Ok(true)
}

fn read_len(r: &mut impl Read, max: u32) -> Result<Option<usize>, FrameError> {
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
    Ok(Some(len as usize))
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
        let mut buf = FrameBuf::new();
        assert!(!read_frame_into(&mut &[][..], MAX_FRAME, &mut buf).unwrap());
        assert!(read_frame_into(&mut &bytes[..bytes.len() - 1], MAX_FRAME, &mut buf).is_err());
        let err = read_frame_into(&mut &bytes[..], 8, &mut buf).unwrap_err();
        assert!(matches!(err, FrameError::TooLong { .. }), "{err}");
    }

    #[test]
    fn frames_read_into_one_buffer_one_after_another() {
        let mut two = hello();
        two.extend_from_slice(&hello());
        let mut r = &two[..];
        let mut buf = FrameBuf::new();
        for _ in 0..2 {
            assert!(read_frame_into(&mut r, MAX_FRAME, &mut buf).unwrap());
            assert_eq!(sdk_of(buf.bytes()), "test");
        }
        assert!(!read_frame_into(&mut r, MAX_FRAME, &mut buf).unwrap());
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

    fn sdk_of(body: &[u8]) -> String {
        let msg = decode(body).unwrap();
        let f = msg.get_root::<frame::Reader>().unwrap();
        let frame::Which::Hello(h) = f.which().unwrap() else {
            panic!("not a hello")
        };
        h.unwrap().get_sdk().unwrap().to_string().unwrap()
    }

    #[test]
    fn aligned_bodies_are_read_in_place_and_unaligned_ones_copied_alike() {
        let bytes = hello();
        let mut buf = FrameBuf::new();
        buf.prepare(bytes.len() - 4).copy_from_slice(&bytes[4..]);
        assert!(matches!(
            decode(buf.bytes()).unwrap().into_segments(),
            Segment::Borrowed(_)
        ));
        assert_eq!(sdk_of(buf.bytes()), "test");
        // One byte off alignment: the same message, through a copy.
        let mut shifted = vec![0u8; bytes.len() + 1];
        shifted[1..bytes.len() - 3].copy_from_slice(&bytes[4..]);
        let unaligned = &shifted[1..bytes.len() - 3];
        assert_ne!(unaligned.as_ptr().align_offset(8), 0);
        assert!(matches!(
            decode(unaligned).unwrap().into_segments(),
            Segment::Owned(_)
        ));
        assert_eq!(sdk_of(unaligned), "test");
    }

    #[test]
    fn a_frame_buffer_is_reused_and_gives_back_what_a_large_frame_took() {
        let mut buf = FrameBuf::new();
        buf.prepare(100);
        let small = buf.words.capacity();
        buf.prepare(40);
        assert_eq!(buf.bytes().len(), 40);
        assert_eq!(
            buf.words.capacity(),
            small,
            "a smaller frame reuses the buffer"
        );
        buf.prepare(1 << 20);
        buf.prepare(100);
        assert!(buf.words.capacity() * 8 <= KEEP_BYTES);
    }

    #[test]
    fn frames_collect_in_one_buffer_and_one_over_the_limit_leaves_it_untouched() {
        let mut out = Vec::new();
        let mut m = builder_for(4);
        m.init_root::<frame::Builder>().init_hello().set_sdk("test");
        encode_into(&m, &mut out, MAX_FRAME).unwrap();
        let one = out.len();
        encode_into(&m, &mut out, MAX_FRAME).unwrap();
        assert_eq!(out.len(), 2 * one);
        let err = encode_into(&m, &mut out, 8).unwrap_err();
        assert!(matches!(err, FrameError::TooLong { .. }), "{err}");
        assert_eq!(out.len(), 2 * one);
        let mut r = &out[..];
        for _ in 0..2 {
            let body = read_frame(&mut r, MAX_FRAME).unwrap().unwrap();
            assert_eq!(sdk_of(&body), "test");
        }
        assert!(r.is_empty());
    }

    #[test]
    fn a_sized_builder_encodes_a_payload_without_a_second_segment() {
        let payload = vec![9u8; 10_000];
        let mut m = builder_for(payload.len());
        let mut a = m.init_root::<frame::Builder>().init_answer();
        a.set_message("some words");
        a.set_payload(&payload);
        assert_eq!(m.get_segments_for_output().len(), 1);
    }

    #[test]
    fn a_segment_table_that_disagrees_with_the_length_is_malformed() {
        let mut h = hello()[4..].to_vec();
        h[4] += 1;
        assert!(decode(&h).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            shift in 0usize..8,
        ) {
            // At every alignment: in place and copied.
            let mut shifted = vec![0u8; shift];
            shifted.extend_from_slice(&bytes);
            if let Ok(msg) = decode(&shifted[shift..]) {
                if let Ok(f) = msg.get_root::<frame::Reader>() {
                    let _ = f.which();
                }
            }
        }
    }
}
