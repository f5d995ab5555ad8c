//! Length-prefixed frames: `u32 length (LE) | u8 flags | body`.
//!
//! The body is a postcard-encoded message, zstd-compressed when that saves at
//! least an eighth; random or already-compressed data is sent as is. A large
//! body is first tried on a sample from its middle, so incompressible content
//! (most file data worth replicating in bulk) costs a 16 KiB trial, not a full
//! compression pass per megabyte.

use serde::{Serialize, de::DeserializeOwned};

/// Bytes before the body: the length and the flags.
pub const FRAME_HEADER_LEN: usize = 5;
/// Largest body accepted, before and after decompression; a peer announcing
/// more is refused before any allocation. The agent sends about 1 MiB of file
/// content per frame, so this leaves room for one more write and the framing.
pub const MAX_FRAME_LEN: usize = 4 * 1024 * 1024;
/// Bodies shorter than this are never compressed.
const COMPRESS_MIN: usize = 256;
const FLAG_ZSTD: u8 = 1;
/// Bodies longer than this are tried on a sample before being compressed whole.
const SAMPLE_ABOVE: usize = 64 * 1024;
const SAMPLE_LEN: usize = 16 * 1024;

/// Why a frame could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix exceeds [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge { len: usize },
    /// Flags other than the known ones.
    #[error("frame has unknown flags {flags:#04x}")]
    UnknownFlags { flags: u8 },
    /// The compressed body did not decompress.
    #[error("frame body does not decompress: {source}")]
    Decompress { source: std::io::Error },
    /// A path in the message is absolute, has `..` or is otherwise refused.
    #[error("refused path: {source}")]
    Path { source: crate::PathError },
    /// The body is not a valid message.
    #[error("malformed message: {source}")]
    Malformed { source: postcard::Error },
    /// The message holds more than a message may (see [`crate::limit`]).
    #[error("message over its limits: {source}")]
    Limit { source: crate::limit::LimitError },
    /// The message could not be encoded.
    #[error("cannot encode message: {source}")]
    Encode { source: postcard::Error },
}

/// Encodes `message` into a complete frame, compressing when `compress` is set and it pays.
/// The message is serialized once, straight into the frame: bulk file data is
/// copied no more than that on its way out.
pub fn encode_frame<T: Serialize>(message: &T, compress: bool) -> Result<Vec<u8>, FrameError> {
    let len = postcard::experimental::serialized_size(message).map_err(|source| FrameError::Encode { source })?;
    // Checked before compression: the receiving side bounds what it decompresses by it.
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len });
    }
    let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + len);
    frame.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    let mut frame = postcard::to_extend(message, frame).map_err(|source| FrameError::Encode { source })?;
    let body = frame.get(FRAME_HEADER_LEN..).unwrap_or_default();
    if compress && body.len() >= COMPRESS_MIN && sample_compresses(body) {
        match compress_fast(body) {
            Ok(small) if small.len() < body.len() - body.len() / 8 => {
                let mut compressed = Vec::with_capacity(FRAME_HEADER_LEN + small.len());
                compressed.extend_from_slice(&header(small.len(), FLAG_ZSTD));
                compressed.extend_from_slice(&small);
                return Ok(compressed);
            }
            _ => {}
        }
    }
    let plain = header(frame.len() - FRAME_HEADER_LEN, 0);
    if let Some(head) = frame.get_mut(..FRAME_HEADER_LEN) {
        head.copy_from_slice(&plain);
    }
    Ok(frame)
}

fn header(body_len: usize, flags: u8) -> [u8; FRAME_HEADER_LEN] {
    let [a, b, c, d] = (body_len as u32).to_le_bytes();
    [a, b, c, d, flags]
}

/// True when `body` is small, or a sample from its middle shrinks by an eighth.
fn sample_compresses(body: &[u8]) -> bool {
    if body.len() <= SAMPLE_ABOVE {
        return true;
    }
    let start = body.len() / 2 - SAMPLE_LEN / 2;
    let sample = &body[start..start + SAMPLE_LEN];
    matches!(compress_fast(sample), Ok(small) if small.len() < SAMPLE_LEN - SAMPLE_LEN / 8)
}

/// zstd at level 1 with a context kept per thread: creating one costs more
/// than compressing a frame of small operations.
fn compress_fast(data: &[u8]) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> = const { std::cell::RefCell::new(None) };
    }
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let compressor = match cell.as_mut() {
            Some(compressor) => compressor,
            None => cell.insert(zstd::bulk::Compressor::new(1)?),
        };
        compressor.compress(data)
    })
}

/// Parses a frame header into (body length, flags), refusing oversized frames.
pub fn parse_header(header: [u8; FRAME_HEADER_LEN]) -> Result<(usize, u8), FrameError> {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len });
    }
    let flags = header[4];
    if flags & !FLAG_ZSTD != 0 {
        return Err(FrameError::UnknownFlags { flags });
    }
    Ok((len, flags))
}

/// Decodes a frame body read after a header with `flags`. What the message
/// costs in memory is then [`crate::limit::decoded_cost`].
pub fn decode_body<T: DeserializeOwned>(flags: u8, body: &[u8]) -> Result<T, FrameError> {
    crate::path::take_last_refused();
    crate::limit::reset();
    let decoded = if flags & FLAG_ZSTD != 0 {
        let plain = decompress(body)?;
        postcard::from_bytes(&plain)
    } else {
        postcard::from_bytes(body)
    };
    decoded.map_err(|source| {
        if let Some(source) = crate::limit::take_exceeded() {
            return FrameError::Limit { source };
        }
        match crate::path::take_last_refused() {
            Some(source) => FrameError::Path { source },
            None => FrameError::Malformed { source },
        }
    })
}

/// Decompresses a body into at most [`MAX_FRAME_LEN`] bytes. The size its header
/// declares (bounded by the limit) is reserved once, with a decompression
/// context kept per thread: making one per frame cost more than decompressing a
/// frame of small operations. A body that declares no size is decompressed as
/// a stream, the buffer growing as data comes.
fn decompress(body: &[u8]) -> Result<Vec<u8>, FrameError> {
    thread_local! {
        static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
    }
    let declared = match zstd::zstd_safe::get_frame_content_size(body) {
        Ok(Some(len)) if len > MAX_FRAME_LEN as u64 => return Err(FrameError::TooLarge { len: usize::try_from(len).unwrap_or(usize::MAX) }),
        Ok(Some(len)) => len as usize,
        Ok(None) => return decompress_stream(body),
        Err(_) => return Err(FrameError::Decompress { source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a zstd frame") }),
    };
    let mut plain = Vec::with_capacity(declared);
    DECOMPRESSOR
        .with(|cell| {
            let mut cell = cell.borrow_mut();
            let decompressor = match cell.as_mut() {
                Some(decompressor) => decompressor,
                None => cell.insert(zstd::bulk::Decompressor::new()?),
            };
            decompressor.decompress_to_buffer(body, &mut plain)
        })
        .map_err(|source| FrameError::Decompress { source })?;
    Ok(plain)
}

fn decompress_stream(body: &[u8]) -> Result<Vec<u8>, FrameError> {
    use std::io::Read;
    let decoder = zstd::stream::read::Decoder::with_buffer(body).map_err(|source| FrameError::Decompress { source })?;
    let mut plain = Vec::with_capacity(body.len().saturating_mul(2).min(MAX_FRAME_LEN));
    decoder
        .take(MAX_FRAME_LEN as u64 + 1)
        .read_to_end(&mut plain)
        .map_err(|source| FrameError::Decompress { source })?;
    if plain.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len: plain.len() });
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AgentMessage, Op, RelPath, SeqOp};

    fn roundtrip(message: &AgentMessage, compress: bool) -> (AgentMessage, usize) {
        let frame = encode_frame(message, compress).unwrap();
        let (len, flags) = parse_header(frame[..5].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - FRAME_HEADER_LEN);
        (decode_body(flags, &frame[5..]).unwrap(), frame.len())
    }

    fn write(data: Vec<u8>) -> AgentMessage {
        let hash = crate::blocks::hash(&data);
        AgentMessage::Op(SeqOp {
            seq: 9,
            captured_unix_ns: 1,
            op: Op::Write { path: RelPath::from_bytes("f").unwrap(), offset: 4096, data, hash },
        })
    }

    #[test]
    fn compressible_data_shrinks() {
        let message = write(vec![b'a'; 100_000]);
        let (back, len) = roundtrip(&message, true);
        assert_eq!(back, message);
        assert!(len < 1_000, "{len}");
    }

    #[test]
    fn incompressible_data_is_sent_raw() {
        let mut state = 0x9e3779b97f4a7c15u64;
        let data: Vec<u8> = (0..65_536)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let message = write(data);
        let frame = encode_frame(&message, true).unwrap();
        assert_eq!(frame[4], 0, "random data must not be compressed");
        assert!(frame.len() < 65_536 + 80);
        assert_eq!(roundtrip(&message, true).0, message);
    }

    #[test]
    fn decompression_is_bounded() {
        // 64 MiB of zeros compress to a few KiB: a bomb.
        let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 19).unwrap();
        let err = decode_body::<AgentMessage>(FLAG_ZSTD, &bomb).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
        let too_big = AgentMessage::Manifest(Vec::new());
        assert!(encode_frame(&too_big, true).is_ok());
    }

    #[test]
    fn a_body_holding_more_than_its_header_declares_is_refused() {
        let body = postcard::to_stdvec(&write(vec![b'x'; 10_000])).unwrap();
        // Two frames back to back: the first declares a few bytes, the second
        // holds the message.
        let mut lying = zstd::bulk::compress(b"tiny", 1).unwrap();
        lying.extend(zstd::bulk::compress(&body, 1).unwrap());
        let err = decode_body::<AgentMessage>(FLAG_ZSTD, &lying).unwrap_err();
        assert!(matches!(err, FrameError::Decompress { .. }), "{err}");
        // A body that declares no size at all decodes as a stream.
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        std::io::Write::write_all(&mut encoder, &body).unwrap();
        let streamed = encoder.finish().unwrap();
        assert!(matches!(zstd::zstd_safe::get_frame_content_size(&streamed), Ok(None)));
        assert_eq!(decode_body::<AgentMessage>(FLAG_ZSTD, &streamed).unwrap(), write(vec![b'x'; 10_000]));
    }

    #[test]
    fn tiny_operations_cannot_inflate_a_frame() {
        // The most operations a frame can hold, each as small as can be: decoded,
        // they would take far more memory than the frame.
        let op = SeqOp { seq: 1, captured_unix_ns: 0, op: Op::Barrier { path: None } };
        let flood = AgentMessage::Ops(vec![op; crate::MAX_OPS + 1]);
        let frame = encode_frame(&flood, false).unwrap();
        let err = decode_body::<AgentMessage>(frame[4], &frame[5..]).unwrap_err();
        assert!(matches!(err, FrameError::Limit { .. }), "{err}");
        assert!(err.to_string().contains("at most 4096"), "{err}");
        // Under the count, the budget still holds: every op with 1,000 empty xattrs.
        let xattrs = vec![crate::Xattr { name: Vec::new(), value: Vec::new() }; 1000];
        let op = SeqOp { seq: 1, captured_unix_ns: 0, op: Op::SetXattrs { path: RelPath::root(), xattrs } };
        let flood = AgentMessage::Ops(vec![op; 1000]);
        let frame = encode_frame(&flood, false).unwrap();
        assert!(frame.len() < MAX_FRAME_LEN);
        let err = decode_body::<AgentMessage>(frame[4], &frame[5..]).unwrap_err();
        assert!(matches!(err, FrameError::Limit { source: crate::limit::LimitError::Budget }), "{err}");
        // An honest frame decodes, and its cost is known.
        let ok = AgentMessage::Ops(vec![SeqOp { seq: 1, captured_unix_ns: 0, op: Op::Barrier { path: None } }; 100]);
        let frame = encode_frame(&ok, false).unwrap();
        decode_body::<AgentMessage>(frame[4], &frame[5..]).unwrap();
        assert_eq!(crate::limit::decoded_cost(), 100 * std::mem::size_of::<SeqOp>());
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert!(matches!(parse_header([0xff, 0xff, 0xff, 0x7f, 0]), Err(FrameError::TooLarge { .. })));
        assert!(matches!(parse_header([1, 0, 0, 0, 0x80]), Err(FrameError::UnknownFlags { .. })));
        assert!(matches!(decode_body::<AgentMessage>(0, &[0xff, 0xff]), Err(FrameError::Malformed { .. })));
        let mut evil = encode_frame(&write(b"x".to_vec()), false).unwrap();
        // Turn the one-byte path "f" into "/" inside the frame.
        let at = evil.iter().position(|&b| b == b'f').unwrap();
        evil[at] = b'/';
        let err = decode_body::<AgentMessage>(evil[4], &evil[5..]).unwrap_err();
        assert!(err.to_string().contains("is absolute"), "{err}");
        assert!(matches!(
            decode_body::<AgentMessage>(FLAG_ZSTD, &[1, 2, 3]),
            Err(FrameError::Decompress { .. })
        ));
    }
}
