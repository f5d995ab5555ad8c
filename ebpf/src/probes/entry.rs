//! Entry of the write-family syscalls, for the cases where the exit alone cannot
//! tell where the bytes went.
//!
//! - `write`/`writev` (and `pwritev2` at offset -1) write at `file->f_pos` and
//!   leave it past the bytes written, so the exit takes `f_pos - ret` as the start.
//!   When the file is shared (a dup or fork shares the `struct file`, threads
//!   share the fd table), another thread may move `f_pos` between the write and
//!   its exit. The entry records `f_pos`; the exit then reports
//!   `[min(pos_at_entry, f_pos - ret), f_pos)`, which contains the write as long
//!   as the others only write; an `lseek` by another thread in between is seen as
//!   an inconsistency and reported as the whole file.
//! - `pwrite64`/`pwritev`/`pwritev2` on an `O_APPEND` file (or with `RWF_APPEND`)
//!   ignore the offset and append at `i_size`; another appender may grow the file
//!   before the exit reads `i_size`, so the entry records `i_size` and the exit
//!   reports `[min(size_at_entry, i_size - ret), i_size)`.
//!
//! Classic tracepoints (`syscalls/sys_enter_write` ...) cost only those syscalls,
//! not every syscall of the system like `tp_btf/sys_enter` would. Writes to
//! sockets and pipes are among them, so only processes known to make writes of
//! the kind that needs a record to the watched tree (`WRITERS`, filled by the
//! exit of such a write and by O_CREAT/O_TRUNC opens) are looked at beyond a
//! hash lookup; the first such write of a process, which the exit sees without a
//! record, is reported conservatively (the whole file), as are 32-bit (compat)
//! syscalls, for which the classic syscall tracepoints do not fire. Only files
//! of the watched tree that need it (shared, appending) get a record, keyed by
//! thread id (`WRITE_ENTRY`) and removed by the exit.
//!
//! Context (`/sys/kernel/tracing/events/syscalls/sys_enter_write/format`):
//! `int __syscall_nr` at offset 8, then the six arguments as 8-byte fields from 16.

use aya_ebpf::{
    EbpfContext as _, helpers::bpf_get_current_pid_tgid, macros::tracepoint,
    programs::TracePointContext,
};

use super::sys_exit::nr;
use crate::{
    kernel::{
        Res, current_task, file_flags, file_inode, file_of_fd, file_pos, file_shared, inode_size,
        watched,
    },
    maps::{CONFIG, WRITE_ENTRY, WRITERS, WriteEntry, some_writer, writer},
};

const SYSCALL_NR: usize = 8;
const ARGS: usize = 16;
pub const O_APPEND: u32 = 0o2000;
/// `RWF_APPEND`, `RWF_NOAPPEND` (include/uapi/linux/fs.h).
pub const RWF_APPEND: u64 = 0x10;
pub const RWF_NOAPPEND: u64 = 0x20;
/// `pwritev2`'s offset meaning "at the file position".
pub const AT_F_POS: u64 = u64::MAX;

#[tracepoint]
pub fn sluice_sys_enter_write(ctx: TracePointContext) -> u32 {
    let _ = try_enter(&ctx);
    0
}

/// Whether a positioned write appends: `O_APPEND` or `RWF_APPEND`, unless
/// `RWF_NOAPPEND` (6.9+) overrides both (`kiocb_set_rw_flags`).
#[inline(always)]
pub fn appends(f_flags: u32, rwf: u64) -> bool {
    (f_flags & O_APPEND != 0 || rwf & RWF_APPEND != 0) && rwf & RWF_NOAPPEND == 0
}

/// The fd, the first argument, loaded straight from the tracepoint record. The
/// kernel refuses to attach a program whose context loads go past the record of
/// any of its tracepoints, and `sys_enter_write` has three arguments: later ones
/// are read with the helper.
#[inline(always)]
fn first_arg(ctx: &TracePointContext) -> u64 {
    // SAFETY: every syscall record has its first argument at `ARGS`.
    unsafe { *(ctx.as_ptr() as *const u8).add(ARGS).cast::<u64>() }
}

/// Argument `i` of the syscall (for `pwritev2`, which has six).
#[inline(always)]
fn arg(ctx: &TracePointContext, i: usize) -> Res<u64> {
    // SAFETY: bpf_probe_read_kernel reports faults instead of trapping.
    unsafe { ctx.read_at::<u64>(ARGS + 8 * i) }.map_err(|e| e as i64)
}

fn try_enter(ctx: &TracePointContext) -> Res<()> {
    let Some(cfg) = CONFIG.get(0) else {
        return Ok(());
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if cfg.watched_dev == 0 || tgid == cfg.agent_tgid {
        return Ok(());
    }
    let o = &cfg.offsets;
    // SAFETY: every syscall record has its number at `SYSCALL_NR`.
    let n = unsafe { *(ctx.as_ptr() as *const u8).add(SYSCALL_NR).cast::<i32>() } as u64;
    // Which case this syscall could be, before any pointer is followed.
    let at_pos = match n {
        nr::WRITE | nr::WRITEV => true,
        nr::PWRITE64 | nr::PWRITEV => false,
        nr::PWRITEV2 => arg(ctx, 3)? == AT_F_POS,
        _ => return Ok(()),
    };
    let need = if at_pos {
        writer::SHARED
    } else {
        writer::APPENDS
    };
    if !some_writer(need) {
        return Ok(());
    }
    // SAFETY: the value is copied out at once.
    let bits = unsafe { WRITERS.get(&tgid) }.copied().unwrap_or(0);
    if bits & need == 0 {
        return Ok(());
    }
    let fd = first_arg(ctx);
    let task = current_task();
    let file = file_of_fd(o, task, fd as i32)?;
    let record = if at_pos {
        file_shared(o, task, file)?
    } else {
        let rwf = if n == nr::PWRITEV2 { arg(ctx, 5)? } else { 0 };
        appends(file_flags(o, file)?, rwf)
    };
    if !record {
        return Ok(());
    }
    let inode = file_inode(o, file)?;
    if watched(cfg, inode)?.is_none() {
        return Ok(());
    }
    let entry = WriteEntry {
        fd,
        pos: file_pos(o, file)? as u64,
        size: inode_size(o, inode)?,
    };
    let _ = WRITE_ENTRY.insert(&(pid_tgid as u32), &entry, 0);
    Ok(())
}
