//! Framed message I/O over quinn streams (frames as defined by `sluice_proto::frame`).

use crate::NetError;
use serde::{Serialize, de::DeserializeOwned};
use sluice_proto::{FRAME_HEADER_LEN, decode_body, encode_frame, parse_header};

/// Reads whole frames from a receive stream.
pub struct FrameReader {
    recv: quinn::RecvStream,
    body: Vec<u8>,
    bytes_read: u64,
    last_cost: usize,
}

impl FrameReader {
    pub fn new(recv: quinn::RecvStream) -> Self {
        FrameReader { recv, body: Vec::new(), bytes_read: 0, last_cost: 0 }
    }

    /// The next message, or `None` when the peer finished the stream between frames.
    pub async fn read<T: DeserializeOwned>(&mut self) -> Result<Option<T>, NetError> {
        let mut header = [0u8; FRAME_HEADER_LEN];
        if !self.fill(&mut header, true).await? {
            return Ok(None);
        }
        let (len, flags) = parse_header(header)?;
        let mut body = std::mem::take(&mut self.body);
        body.resize(len, 0);
        if !self.fill(&mut body, false).await? {
            return Err(NetError::TruncatedFrame);
        }
        let message = decode_body(flags, &body);
        self.last_cost = len + sluice_proto::limit::decoded_cost();
        self.body = body;
        self.bytes_read += (FRAME_HEADER_LEN + len) as u64;
        Ok(Some(message?))
    }

    /// Memory the last message read takes: its frame and what it decoded into.
    pub fn last_cost(&self) -> usize {
        self.last_cost
    }

    /// Frame bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Fills `buf`; `Ok(false)` if the stream ended before the first byte (only allowed when `eof_ok`).
    async fn fill(&mut self, buf: &mut [u8], eof_ok: bool) -> Result<bool, NetError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.recv.read(&mut buf[filled..]).await? {
                Some(n) => filled += n,
                None if filled == 0 && eof_ok => return Ok(false),
                None => return Err(NetError::TruncatedFrame),
            }
        }
        Ok(true)
    }
}

/// Writes whole frames to a send stream.
pub struct FrameWriter {
    send: quinn::SendStream,
    compress: bool,
    bytes_written: u64,
}

impl FrameWriter {
    /// `compress`: try zstd on each frame (it is skipped where it does not pay).
    pub fn new(send: quinn::SendStream, compress: bool) -> Self {
        FrameWriter { send, compress, bytes_written: 0 }
    }

    /// Sends one message; returns the frame's size in bytes.
    pub async fn write<T: Serialize>(&mut self, message: &T) -> Result<usize, NetError> {
        let frame = encode_frame(message, self.compress)?;
        let len = frame.len();
        // Handed over, not copied into the stream's buffer.
        self.send.write_chunk(bytes::Bytes::from(frame)).await?;
        self.bytes_written += len as u64;
        Ok(len)
    }

    /// Sends an already encoded frame.
    pub async fn write_frame(&mut self, frame: &[u8]) -> Result<(), NetError> {
        self.send.write_all(frame).await?;
        self.bytes_written += frame.len() as u64;
        Ok(())
    }

    /// Frame bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Finishes the stream so the peer reads a clean end.
    pub async fn finish(mut self) -> Result<(), NetError> {
        self.send.finish()?;
        let _ = self.send.stopped().await;
        Ok(())
    }
}
