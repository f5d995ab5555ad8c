//! The capture time, on the master, of the operation a standby is applying:
//! shared through a small mapped file by the receiver (which sets it before
//! each operation) with the relay forwarding what it applies (which stamps what
//! it forwards with it), so that a standby down a chain reports its lag from
//! the master, not from the relay.

use memmap2::MmapMut;
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// One shared `u64`: Unix nanoseconds, 0 before the first operation.
pub struct OriginClock {
    map: MmapMut,
}

impl OriginClock {
    /// Opens `path`, creating it (8 bytes) when missing.
    pub fn open(path: &Path) -> std::io::Result<OriginClock> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        if file.metadata()?.len() < 8 {
            file.set_len(8)?;
        }
        // SAFETY: the mapping is of a file only the receiver and its relay
        // use, and both access it through the atomic in `cell` alone.
        let map = unsafe { MmapMut::map_mut(&file)? };
        Ok(OriginClock { map })
    }

    fn cell(&self) -> &AtomicU64 {
        // SAFETY: the mapping is at least 8 bytes long and page-aligned, so it
        // holds one aligned `u64`, accessed only atomically, for as long as
        // `self` (and the mapping) lives.
        unsafe { &*self.map.as_ptr().cast::<AtomicU64>() }
    }

    /// Records that the operation captured at `unix_ns` is being applied.
    pub fn set(&self, unix_ns: u64) {
        self.cell().store(unix_ns, Ordering::Relaxed);
    }

    /// The capture time of the operation applied last (0: none yet).
    pub fn get(&self) -> u64 {
        self.cell().load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_set_through_one_mapping_is_read_through_another() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("origin");
        let writer = OriginClock::open(&path).unwrap();
        let reader = OriginClock::open(&path).unwrap();
        assert_eq!(reader.get(), 0);
        writer.set(1_700_000_000_123_456_789);
        assert_eq!(reader.get(), 1_700_000_000_123_456_789);
    }
}
