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

/// Processes (tgid) whose writes to the watched tree need their entry looked at,
/// and which ones ([`writer`] bits): a write to a socket or pipe, or a `pwrite`
/// of a database, costs a hash lookup there. Bits are added by the exit of a
/// write that needed a record and had none, and by O_CREAT/O_TRUNC opens. LRU: an
/// evicted process is added again by its next such write.
#[map(name = "WRITERS")]
pub static WRITERS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

/// Bits of a [`WRITERS`] value.
pub mod writer {
    /// Writes at the file position through a file others may use too
    /// (`write`, `writev`, `pwritev2` at -1).
    pub const SHARED: u64 = 1;
    /// Positioned writes that append (`O_APPEND`, `RWF_APPEND`).
    pub const APPENDS: u64 = 2;
}

/// The union of every [`WRITERS`] value: while no process has a bit, the entry
/// of the syscalls it covers is left before the hash lookup (a `pwrite` where
/// nothing appends costs an array lookup). Updated without atomics: a bit lost
/// to a race is set again by the next write that needed it.
#[map(name = "WRITER_KINDS")]
pub static WRITER_KINDS: Array<u64> = Array::with_max_entries(1, 0);

/// Whether some process has any of `bits`.
#[inline(always)]
pub fn some_writer(bits: u64) -> bool {
    WRITER_KINDS.get(0).is_some_and(|kinds| kinds & bits != 0)
}

/// Adds `bits` to what the entry looks at for process `tgid`.
#[inline(always)]
pub fn note_writer(tgid: u32, bits: u64) {
    // SAFETY: the value is copied out at once.
    let known = unsafe { WRITERS.get(&tgid) }.copied().unwrap_or(0);
    if known & bits != bits {
        let _ = WRITERS.insert(&tgid, &(known | bits), 0);
    }
    if let Some(kinds) = WRITER_KINDS.get_ptr_mut(0) {
        // SAFETY: the map's single slot; see WRITER_KINDS for the lack of atomics.
        unsafe {
            if *kinds & bits != bits {
                *kinds |= bits;
            }
        }
    }
}

/// Thread id → [`WriteEntry`] of its write-family syscall in progress. LRU: an
/// entry lost to eviction makes the exit fall back to a conservative range.
#[map(name = "WRITE_ENTRY")]
pub static WRITE_ENTRY: LruHashMap<u32, WriteEntry> = LruHashMap::with_max_entries(16384, 0);

/// Processes (tgid) that may hold a shared mapping of a file on the watched
/// filesystem: added by `mmap` with `MAP_SHARED` of such a file, by a fork of
/// such a process, and by the agent for processes running when it started;
/// removed by the agent once the process is gone. A user write fault of any
/// other process is not looked at (a hash lookup instead of a VMA walk). Not
/// LRU: a process forgotten would have its stores missed.
#[map(name = "MAPPERS")]
pub static MAPPERS: HashMap<u32, u8> = HashMap::with_max_entries(65536, 0);

/// Set (slot 0 non-zero) once [`MAPPERS`] was full when a process had to be
/// added: from then on every write fault is looked at.
#[map(name = "MAPPERS_FULL")]
pub static MAPPERS_FULL: Array<u64> = Array::with_max_entries(1, 0);

/// Records that process `tgid` may hold a shared mapping of a watched file.
#[inline(always)]
pub fn note_mapper(tgid: u32) {
    if MAPPERS.insert(&tgid, &1, 0).is_err()
        && let Some(full) = MAPPERS_FULL.get_ptr_mut(0)
    {
        // SAFETY: the map's single slot; any writer stores the same value.
        unsafe { *full = 1 };
    }
}

/// Whether a write fault of process `tgid` may be a store to a watched file.
#[inline(always)]
pub fn may_map_watched(tgid: u32) -> bool {
    // SAFETY: the value is copied out at once.
    unsafe { MAPPERS.get(&tgid) }.is_some() || MAPPERS_FULL.get(0).is_some_and(|full| *full != 0)
}

#[inline(always)]
pub fn count_drop() {
    if let Some(slot) = DROPS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot; tracing programs do not preempt each other on a CPU.
        unsafe { *slot += 1 };
    }
}
