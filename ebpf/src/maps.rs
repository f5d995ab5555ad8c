//! The maps shared with the agent; their names are fixed by `sluice_common::names`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use sluice_common::{AncestorKey, Calibration, Config};

/// Completed operations. The agent overrides the size at load time.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Single slot written by the agent before capture is enabled.
#[map(name = "CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Ring-buffer reserve failures; per CPU so the hot path needs no atomics.
#[map(name = "DROPS")]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// How the kernel names the watched root, learned while `Config::calibrating` is set.
#[map(name = "CALIBRATION")]
pub static CALIBRATION: Array<Calibration> = Array::with_max_entries(1, 0);

/// tgid → when it was last announced as an io_uring user, so a busy ring costs one
/// event per process rather than one per `io_uring_enter`. LRU: an evicted process
/// is simply announced again.
#[map(name = "IO_URING_SEEN")]
pub static IO_URING_SEEN: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4096, 0);

/// The directories above the watched root (key) and their position in the
/// agent's list (value), written by the agent before capture is enabled.
#[map(name = "ANCESTORS")]
pub static ANCESTORS: HashMap<AncestorKey, u64> = HashMap::with_max_entries(256, 0);

/// What the entry of a write-family syscall saw, for its exit (see
/// `probes::entry`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WriteEntry {
    /// The fd the syscall was given.
    pub fd: u64,
    /// `file->f_pos` at entry.
    pub pos: u64,
    /// `inode->i_size` at entry.
    pub size: u64,
}

/// Thread id → [`WriteEntry`] of its write-family syscall in progress. LRU: an
/// entry lost to eviction makes the exit fall back to a conservative range.
#[map(name = "WRITE_ENTRY")]
pub static WRITE_ENTRY: LruHashMap<u32, WriteEntry> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
pub fn count_drop() {
    if let Some(slot) = DROPS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot; tracing programs do not preempt each other on a CPU.
        unsafe { *slot += 1 };
    }
}
