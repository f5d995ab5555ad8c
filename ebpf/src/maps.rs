//! The maps shared with the agent; their names are fixed by `sluice_common::names`.

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
};
use sluice_common::{Calibration, Config};

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

#[inline(always)]
pub fn count_drop() {
    if let Some(slot) = DROPS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot; tracing programs do not preempt each other on a CPU.
        unsafe { *slot += 1 };
    }
}
