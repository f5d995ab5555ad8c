//! Page-cache folios becoming dirty: how stores through a shared writable `mmap`
//! are seen (they involve no syscall), along with io_uring buffered writes and
//! other writers that bypass the write-family syscalls.
//!
//! Prototype (include/trace/events/writeback.h), attached as `tp_btf/writeback_dirty_folio`:
//! `DEFINE_EVENT(writeback_folio_template, writeback_dirty_folio,
//!     TP_PROTO(struct folio *folio, struct address_space *mapping), ...)`
//!
//! Only regular files some dentry points at are reported: filesystems also keep
//! private metadata caches on their own superblock (btrfs's btree inode), which
//! are not user data.
//!
//! Kernel threads writing data back can redirty a folio they could not finish
//! (seen from ext4's `jbd2` journal commit after a `copy_file_range`); such an
//! event repeats a range already reported and is harmless. It
//! is kept because in-kernel writers (nfsd, a loop device backed by a watched
//! file) also run as kernel threads and are seen only here.
//!
//! A folio is reported once per clean → dirty transition, so a page stored to
//! again before it is written back produces no second event; the agent already
//! holds it as dirty. Buffered `write(2)`s dirty folios too: those are reported
//! precisely at syscall exit, so a dirtying that happens while the task is inside
//! one of the syscalls [`reported_at_exit`] lists is skipped here. The syscall is
//! read from the task's saved user registers: a page fault taken from user mode
//! leaves its error code in `orig_ax` instead, and no write fault code (bits
//! `PF_WRITE | PF_USER`, optionally `PF_PROT`/`PF_PK`) is one of those numbers.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_task_pt_regs},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use sluice_common::{Config, NO_FD, op};

use super::{data, sys_exit::nr};
use crate::{
    kernel::{
        Res, current_task, in_compat_syscall, inode_is_reg, read, read_ptr, untyped, watched,
    },
    maps::CONFIG,
};

const PAGE_SIZE: u64 = 4096;
/// `MAX_PAGECACHE_ORDER` is below this on every architecture; anything larger is
/// not an order but a stray read, and the folio is then reported as one page.
const MAX_ORDER: u64 = 20;

#[btf_tracepoint(function = "writeback_dirty_folio")]
pub fn sluice_dirty_folio(ctx: BtfTracePointContext) -> u32 {
    let _ = try_dirty_folio(&ctx);
    0
}

/// Syscalls whose own dirtying is reported at their exit (or, for truncation and
/// fallocate, implied by the size change they report), and the sync family:
/// a filesystem that cannot finish writing a folio back puts it back to dirty
/// (`folio_redirty_for_writepage`, e.g. ext4 delalloc under `syncfs`), which is
/// not a change of its contents.
#[inline(always)]
fn reported_at_exit(n: u64) -> bool {
    matches!(
        n,
        nr::WRITE
            | nr::PWRITE64
            | nr::WRITEV
            | nr::PWRITEV
            | nr::PWRITEV2
            | nr::SENDFILE
            | nr::SPLICE
            | nr::COPY_FILE_RANGE
            | nr::FALLOCATE
            | nr::FTRUNCATE
            | nr::TRUNCATE
            | nr::FSYNC
            | nr::FDATASYNC
            | nr::SYNC_FILE_RANGE
            | nr::SYNCFS
            | nr::SYNC
            | nr::MSYNC
    )
}

/// The syscall the current task is in, from its saved user registers.
#[inline(always)]
fn current_syscall() -> Res<u64> {
    // SAFETY: both helpers are valid in tracing programs; the task pointer is the
    // current task, which outlives this program run.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) };
    if regs == 0 {
        return Err(-1);
    }
    read(untyped(regs as u64)?, super::sys_exit::regs::ORIG_AX)
}

fn try_dirty_folio(ctx: &BtfTracePointContext) -> Res<()> {
    let folio: u64 = ctx.arg(0);
    let mapping: u64 = ctx.arg(1);
    // Anonymous and swap-cache folios have no mapping to report.
    if folio == 0 || mapping == 0 {
        return Ok(());
    }
    let (folio, mapping) = (untyped(folio)?, untyped(mapping)?);
    let Some(cfg) = CONFIG.get(0) else {
        return Ok(());
    };
    if cfg.watched_dev == 0 || (bpf_get_current_pid_tgid() >> 32) as u32 == cfg.agent_tgid {
        return Ok(());
    }
    let o = &cfg.offsets;
    let host = read_ptr(mapping, o.mapping_host)?;
    let Some(inode) = watched(cfg, host)? else {
        return Ok(());
    };
    // Filesystems keep private page caches on their own superblock too (btrfs's
    // metadata lives in its btree inode, ino 1, a regular file no name leads to);
    // only named regular files are the user's data. A mapped file is always named
    // through the dentry of the open file, even once unlinked.
    let named = read::<u64>(host, o.inode_i_dentry)? != 0;
    if !named || !inode_is_reg(o, host)? {
        return Ok(());
    }
    // The numbers are the 64-bit ones: a 32-bit syscall's number means something
    // else (32-bit `ptrace`, 26, would read as `msync`), so it never skips.
    if let Ok(n) = current_syscall()
        && reported_at_exit(n)
        && !in_compat_syscall(o, current_task()).unwrap_or(true)
    {
        return Ok(());
    }
    let index: u64 = read(folio, o.folio_index)?;
    let len = PAGE_SIZE << folio_order(cfg, folio);
    data::emit(op::WRITEBACK, inode, index * PAGE_SIZE, len, 0, NO_FD);
    Ok(())
}

/// `folio_order()`: 0 unless `PG_head` is set, else the low byte of `_flags_1`.
#[inline(always)]
pub(super) fn folio_order(cfg: &Config, folio: u64) -> u64 {
    let o = &cfg.offsets;
    let Ok(flags) = read::<u64>(folio, o.folio_flags) else {
        return 0;
    };
    if o.pg_head >= 64 || flags & (1 << o.pg_head) == 0 {
        return 0;
    }
    match read::<u64>(folio, o.folio_flags_1) {
        Ok(f1) if f1 & 0xff <= MAX_ORDER => f1 & 0xff,
        _ => 0,
    }
}
