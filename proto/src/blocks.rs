//! Fixed-size block hashing for the initial sync.
//!
//! Blocks are aligned to [`BLOCK_SIZE`] so a differing block can be rewritten in
//! place on the standby; a rolling checksum would find shifted data but would
//! force rewriting the file.

use crate::Hash;
use std::io::{self, Read};

/// Size of a block compared during the initial sync.
pub const BLOCK_SIZE: u64 = 64 * 1024;

/// blake3 of a byte slice.
pub fn hash(data: &[u8]) -> Hash {
    *blake3::hash(data).as_bytes()
}

/// blake3 of a whole block of zeros: what a hole hashes to.
pub fn zero_block_hash() -> Hash {
    static ZERO: std::sync::OnceLock<Hash> = std::sync::OnceLock::new();
    *ZERO.get_or_init(|| hash(&[0u8; BLOCK_SIZE as usize]))
}

/// Hashes every block of `reader`.
pub fn hash_blocks(mut reader: impl Read) -> io::Result<Vec<Hash>> {
    let mut hashes = Vec::new();
    let mut buf = vec![0u8; BLOCK_SIZE as usize];
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        hashes.push(hash(&buf[..filled]));
        if filled < buf.len() {
            break;
        }
    }
    Ok(hashes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_each_block() {
        let data = vec![7u8; BLOCK_SIZE as usize * 2 + 10];
        let hashes = hash_blocks(&data[..]).unwrap();
        assert_eq!(hashes.len(), 3);
        assert_eq!(hashes[0], hashes[1]);
        assert_eq!(hashes[2], hash(&data[..10]));
        assert!(hash_blocks(&[][..]).unwrap().is_empty());
    }
}
