//! Block hashes of a local file for a `Want`, skipping its holes: a hole needs
//! no reading and no hash (the agent takes an uncovered block as zeros), so a
//! sparse file of any apparent size costs what its data costs.

use std::fs::File;
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::unistd::{Whence, lseek};
use sluice_proto::blocks::{BLOCK_SIZE, hash};
use sluice_proto::{Hash, MAX_WANT_HASHES};

/// Hashes of consecutive blocks, from block `first_block` on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub first_block: u64,
    pub hashes: Vec<Hash>,
}

/// The hashes of every block of `file` (`size` bytes) that holds data, in runs
/// of at most [`MAX_WANT_HASHES`] consecutive blocks.
pub fn data_block_hashes(file: &File, size: u64) -> std::io::Result<Vec<Run>> {
    let mut runs: Vec<Run> = Vec::new();
    let mut buf = vec![0u8; BLOCK_SIZE as usize];
    let blocks = size.div_ceil(BLOCK_SIZE);
    let mut next_block = 0;
    for (start, end) in data_segments(file, size)? {
        let first = (start / BLOCK_SIZE).max(next_block);
        let last = end.div_ceil(BLOCK_SIZE).min(blocks);
        for block in first..last {
            let at = block * BLOCK_SIZE;
            let len = (size - at).min(BLOCK_SIZE) as usize;
            let read = read_full(file, &mut buf[..len], at)?;
            let digest = hash(&buf[..read]);
            match runs.last_mut() {
                Some(run) if run.first_block + run.hashes.len() as u64 == block && run.hashes.len() < MAX_WANT_HASHES => {
                    run.hashes.push(digest)
                }
                _ => runs.push(Run { first_block: block, hashes: vec![digest] }),
            }
            if read < len {
                // The file shrank while being read: what is left is not there.
                return Ok(runs);
            }
        }
        next_block = next_block.max(last);
    }
    Ok(runs)
}

fn read_full(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], at + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The byte ranges of `file` that hold data; all of it where the filesystem
/// cannot tell holes.
fn data_segments(file: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut segments = Vec::new();
    let mut offset = 0;
    while offset < size {
        let data = match lseek(file, offset as libc::off_t, Whence::SeekData) {
            Ok(data) => data as u64,
            Err(Errno::ENXIO) => break,
            Err(Errno::EINVAL) => return Ok(vec![(0, size)]),
            Err(errno) => return Err(errno.into()),
        };
        let hole = match lseek(file, data as libc::off_t, Whence::SeekHole) {
            Ok(hole) => (hole as u64).min(size),
            Err(Errno::EINVAL) => size,
            Err(errno) => return Err(errno.into()),
        };
        if hole <= data {
            break;
        }
        segments.push((data, hole));
        offset = hole;
    }
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_cost_no_hashes_and_runs_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(dir.path().join("f")).unwrap();
        // 200 GiB apparent size, data in two places.
        let size = 200u64 << 30;
        file.set_len(size).unwrap();
        file.write_all_at(b"head", 10).unwrap();
        file.write_all_at(&[7u8; 100], size - 50).unwrap();
        let runs = data_block_hashes(&file, size).unwrap();
        let mut head = vec![0u8; BLOCK_SIZE as usize];
        head[10..14].copy_from_slice(b"head");
        assert_eq!(runs[0], Run { first_block: 0, hashes: vec![hash(&head)] });
        let last = runs.last().unwrap();
        assert_eq!(last.first_block + last.hashes.len() as u64, size / BLOCK_SIZE);
        let blocks: usize = runs.iter().map(|r| r.hashes.len()).sum();
        assert!(blocks <= 4, "{blocks} blocks hashed for two small writes");
        // A dense file larger than one run takes several.
        let dense = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(dir.path().join("g")).unwrap();
        let size = (MAX_WANT_HASHES as u64 + 3) * BLOCK_SIZE;
        dense.write_all_at(&vec![1u8; size as usize], 0).unwrap();
        let runs = data_block_hashes(&dense, size).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!((runs[1].first_block, runs[1].hashes.len()), (MAX_WANT_HASHES as u64, 3));
        assert_eq!(runs[0].hashes[5], hash(&[1u8; BLOCK_SIZE as usize]));
    }
}
