//! The sluice wire protocol, free of I/O: what the agent and the receiver say to
//! each other over a QUIC stream, and how it is framed, compressed and checked.
//!
//! # Layout
//! - [`message`]: the messages and replication operations.
//! - [`path`]: [`RelPath`], a path relative to the replicated root, validated.
//! - [`frame`]: length-prefixed frames with optional zstd compression.
//! - [`blocks`]: fixed-size block hashing used by the initial sync.
//! - [`lineage`]: a tree's generations, exchanged to fence and fail back.
//! - [`limit`]: element counts and the memory budget checked while decoding.

pub mod blocks;
pub mod frame;
pub mod limit;
pub mod lineage;
pub mod message;
pub mod path;

pub use frame::{FRAME_HEADER_LEN, FrameError, MAX_FRAME_LEN, decode_body, encode_frame, parse_header};
pub use lineage::{GenerationId, Kinship, Lineage, Role};
pub use message::*;
pub use path::{PathError, RelPath};

/// Bumped whenever a message changes shape; peers with different versions refuse each other.
pub const PROTOCOL_VERSION: u32 = 9;
