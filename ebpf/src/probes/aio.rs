//! Native (Linux) AIO: `io_submit` queues writes that may complete after it
//! returns (`O_DIRECT` on most filesystems), and the agent reads the bytes from
//! the file, so a write is reported twice:
//! - at `io_submit` exit, from the submitted `struct iocb`s (the range is known
//!   from the request, unless it appends: then only the completion knows), and
//! - at `io_getevents`/`io_pgetevents` exit, once per completed write, from the
//!   returned `struct io_event` (`obj` is the user's iocb, `res` the bytes
//!   written): a report that always comes after the data is in the file.
//!
//! `IOCB_CMD_FSYNC`/`IOCB_CMD_FDSYNC` completions are sync barriers. Reads, polls
//! and no-ops are ignored.
//!
//! Each call looks at no more than [`AIO_BATCH`] requests (a `bpf_loop`, so the
//! cost follows the count). More completions than that in one call, a completed
//! write whose iocb cannot be read back or was reused for another request
//! (`aio_data` differs from the event's `data`), or whose fd is gone, are
//! reported as [`repair`] events: the agent compares the tree instead.
//!
//! Not seen: completions an application reaps from the mapped completion ring
//! without calling `io_getevents` (fio `--userspace_reap`); those writes are
//! reported at submission only.
//!
//! Prototypes (32-bit callers pass `iocbpp` as an array of 32-bit pointers; the
//! `iocb` and `io_event` layouts are the same):
//! - `int io_submit(aio_context_t ctx, long nr, struct iocb **iocbpp)`
//! - `int io_getevents(aio_context_t ctx, long min_nr, long nr, struct io_event *events, struct timespec *timeout)`
//! - `int io_pgetevents(aio_context_t ctx, long min_nr, long nr, struct io_event *events, struct timespec *timeout, const struct __aio_sigset *usig)`

use aya_ebpf::{cty::c_void, helpers::bpf_probe_read_user, helpers::generated::bpf_loop};
use sluice_common::{AIO_BATCH, InodeId, NO_FD, op, repair, sync_kind};

use super::{data, entry::appends};
use crate::{
    kernel::{Res, current_task, file_flags, file_inode, file_of_fd, inode_size, watched},
    maps::CONFIG,
};

/// `struct iocb` (include/uapi/linux/aio_abi.h; `aio_key`, `aio_rw_flags` in
/// little-endian order).
mod iocb {
    pub const DATA: u64 = 0;
    pub const RW_FLAGS: u64 = 12;
    pub const OPCODE: u64 = 16;
    pub const FILDES: u64 = 20;
    pub const BUF: u64 = 24;
    pub const NBYTES: u64 = 32;
    pub const OFFSET: u64 = 40;
}

/// `enum { IOCB_CMD_PREAD = 0, PWRITE = 1, FSYNC = 2, FDSYNC = 3, POLL = 5, NOOP = 6, PREADV = 7, PWRITEV = 8 }`.
mod cmd {
    pub const PWRITE: u16 = 1;
    pub const FSYNC: u16 = 2;
    pub const FDSYNC: u16 = 3;
    pub const PWRITEV: u16 = 8;
}

/// `struct io_event { __u64 data; __u64 obj; __s64 res; __s64 res2; }`.
const EVENT_SIZE: u64 = 32;
/// iovecs summed for a submitted `IOCB_CMD_PWRITEV`; longer vectors are reported
/// at completion only.
const MAX_IOVECS: u64 = 16;

/// What the `bpf_loop` callbacks need: the user array and its pointer width.
#[repr(C)]
struct Batch {
    base: u64,
    compat: u64,
}

#[inline(always)]
fn user<T>(addr: u64) -> Res<T> {
    // SAFETY: bpf_probe_read_user reports faults instead of trapping.
    unsafe { bpf_probe_read_user(addr as *const T) }.map_err(|e| e as i64)
}

#[inline(always)]
fn run(count: u64, callback: extern "C" fn(u64, *mut c_void) -> i64, batch: &mut Batch) {
    let count = if count > AIO_BATCH as u64 {
        AIO_BATCH
    } else {
        count as u32
    };
    // SAFETY: the callback is a static function with the signature the helper
    // expects and `batch` outlives the call.
    unsafe {
        bpf_loop(
            count,
            callback as *mut c_void,
            batch as *mut Batch as *mut c_void,
            0,
        )
    };
}

/// `io_submit` returned `ret` (the number of iocbs queued).
pub fn on_submit(iocbpp: u64, ret: i64, compat: bool) {
    if ret <= 0 {
        return;
    }
    let mut batch = Batch {
        base: iocbpp,
        compat: compat as u64,
    };
    run(ret as u64, submitted, &mut batch);
}

#[inline(never)]
extern "C" fn submitted(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the caller's `Batch`, passed through by the helper.
    let batch = unsafe { &*(ctx as *const Batch) };
    let _ = try_submitted(batch, i);
    0
}

fn try_submitted(batch: &Batch, i: u64) -> Res<()> {
    let Some(cfg) = CONFIG.get(0) else {
        return Ok(());
    };
    let ptr: u64 = if batch.compat != 0 {
        user::<u32>(batch.base + 4 * i)? as u64
    } else {
        user::<u64>(batch.base + 8 * i)?
    };
    let opcode: u16 = user(ptr + iocb::OPCODE)?;
    if opcode != cmd::PWRITE && opcode != cmd::PWRITEV {
        return Ok(());
    }
    let fd: u32 = user(ptr + iocb::FILDES)?;
    let o = &cfg.offsets;
    let file = file_of_fd(o, current_task(), fd as i32)?;
    let Some(inode) = watched(cfg, file_inode(o, file)?)? else {
        return Ok(());
    };
    let rw_flags: u32 = user(ptr + iocb::RW_FLAGS)?;
    if appends(file_flags(o, file)?, rw_flags as u64) {
        // Lands at the size the file has when it runs: only the completion knows.
        return Ok(());
    }
    let offset: u64 = user(ptr + iocb::OFFSET)?;
    let nbytes: u64 = user(ptr + iocb::NBYTES)?;
    let len = if opcode == cmd::PWRITE {
        nbytes
    } else {
        let Some(len) = iovec_bytes(user(ptr + iocb::BUF)?, nbytes, batch.compat != 0) else {
            return Ok(());
        };
        len
    };
    if len > 0 {
        data::emit(op::WRITE, inode, offset, len, 0, fd);
    }
    Ok(())
}

/// Total length of `count` iovecs at `vec` (`struct iovec`, or `struct
/// compat_iovec { u32 base; u32 len; }` for 32-bit callers), if short enough.
#[inline(always)]
fn iovec_bytes(vec: u64, count: u64, compat: bool) -> Option<u64> {
    if count > MAX_IOVECS {
        return None;
    }
    let (size, len_at) = if compat { (8, 4) } else { (16, 8) };
    let mut total = 0u64;
    for k in 0..MAX_IOVECS {
        if k >= count {
            break;
        }
        let addr = vec + k * size + len_at;
        let len = if compat {
            user::<u32>(addr).ok()? as u64
        } else {
            user::<u64>(addr).ok()?
        };
        total = total.saturating_add(len);
    }
    Some(total)
}

/// `io_getevents`/`io_pgetevents` returned `ret` events at `events`.
pub fn on_getevents(events: u64, ret: i64) {
    if ret <= 0 {
        return;
    }
    if ret as u64 > AIO_BATCH as u64 {
        data::emit(
            op::REPAIR,
            InodeId::default(),
            ret as u64,
            0,
            repair::AIO_OVERFLOW,
            NO_FD,
        );
    }
    let mut batch = Batch {
        base: events,
        compat: 0,
    };
    run(ret as u64, completed, &mut batch);
}

#[inline(never)]
extern "C" fn completed(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the caller's `Batch`, passed through by the helper.
    let batch = unsafe { &*(ctx as *const Batch) };
    if try_completed(batch.base + i * EVENT_SIZE).is_err() {
        unresolved();
    }
    0
}

#[inline(always)]
fn unresolved() {
    data::emit(
        op::REPAIR,
        InodeId::default(),
        0,
        0,
        repair::AIO_UNRESOLVED,
        NO_FD,
    );
}

/// One `struct io_event`. An error means a completed write (or one that may have
/// been) could not be attributed.
fn try_completed(event: u64) -> Res<()> {
    let Some(cfg) = CONFIG.get(0) else {
        return Ok(());
    };
    let data_field: u64 = user(event)?;
    let obj: u64 = user(event + 8)?;
    let res: i64 = user(event + 16)?;
    if user::<u64>(obj + iocb::DATA)? != data_field {
        // The iocb was reused for another request before this one was reaped.
        return Err(-1);
    }
    let opcode: u16 = user(obj + iocb::OPCODE)?;
    let write = opcode == cmd::PWRITE || opcode == cmd::PWRITEV;
    let sync = opcode == cmd::FSYNC || opcode == cmd::FDSYNC;
    if !(write && res > 0) && !(sync && res == 0) {
        return Ok(());
    }
    let fd: u32 = user(obj + iocb::FILDES)?;
    let o = &cfg.offsets;
    let file = file_of_fd(o, current_task(), fd as i32)?;
    let inode_ptr = file_inode(o, file)?;
    let Some(inode) = watched(cfg, inode_ptr)? else {
        return Ok(());
    };
    if sync {
        let kind = if opcode == cmd::FSYNC {
            sync_kind::FSYNC
        } else {
            sync_kind::FDATASYNC
        };
        data::emit(op::SYNC, inode, 0, sluice_common::TO_END, kind, fd);
        return Ok(());
    }
    let len = res as u64;
    let rw_flags: u32 = user(obj + iocb::RW_FLAGS)?;
    let offset = if appends(file_flags(o, file)?, rw_flags as u64) {
        inode_size(o, inode_ptr)?.saturating_sub(len)
    } else {
        user(obj + iocb::OFFSET)?
    };
    data::emit(op::WRITE, inode, offset, len, 0, fd);
    Ok(())
}
