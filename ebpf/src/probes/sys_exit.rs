//! Syscall exits: the classic per-syscall tracepoints (`syscalls/sys_exit_*`),
//! attached to just the syscalls that can change files so that no other syscall
//! of the system pays, and the raw `sys_exit` tracepoint for 32-bit programs,
//! whose syscalls the classic ones do not report. Both decode the same way.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    helpers::{bpf_get_current_task_btf, generated::bpf_task_pt_regs},
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};

use sluice_common::{InodeId, NO_FD, op, repair, vfs};

use super::{Syscall, aio, calibrate, clone, compat, copy, data, fault, io_uring, path, sync, xattr};
use crate::{
    kernel::{current_task, in_compat_syscall, untyped},
    maps::CONFIG,
};

/// x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
pub mod nr {
    pub const WRITE: u64 = 1;
    pub const OPEN: u64 = 2;
    pub const MMAP: u64 = 9;
    pub const PWRITE64: u64 = 18;
    pub const WRITEV: u64 = 20;
    pub const MSYNC: u64 = 26;
    pub const SENDFILE: u64 = 40;
    pub const FSYNC: u64 = 74;
    pub const FDATASYNC: u64 = 75;
    pub const TRUNCATE: u64 = 76;
    pub const FTRUNCATE: u64 = 77;
    pub const RENAME: u64 = 82;
    pub const MKDIR: u64 = 83;
    pub const RMDIR: u64 = 84;
    pub const CREAT: u64 = 85;
    pub const LINK: u64 = 86;
    pub const UNLINK: u64 = 87;
    pub const SYMLINK: u64 = 88;
    pub const CHMOD: u64 = 90;
    pub const FCHMOD: u64 = 91;
    pub const CHOWN: u64 = 92;
    pub const FCHOWN: u64 = 93;
    pub const IOCTL: u64 = 16;
    pub const LCHOWN: u64 = 94;
    pub const UTIME: u64 = 132;
    pub const SYNC: u64 = 162;
    pub const MKNOD: u64 = 133;
    pub const SETXATTR: u64 = 188;
    pub const LSETXATTR: u64 = 189;
    pub const FSETXATTR: u64 = 190;
    pub const REMOVEXATTR: u64 = 197;
    pub const LREMOVEXATTR: u64 = 198;
    pub const FREMOVEXATTR: u64 = 199;
    pub const UTIMES: u64 = 235;
    pub const IO_GETEVENTS: u64 = 208;
    pub const IO_SUBMIT: u64 = 209;
    pub const OPEN_BY_HANDLE_AT: u64 = 304;
    pub const IO_PGETEVENTS: u64 = 333;
    pub const OPENAT: u64 = 257;
    pub const MKDIRAT: u64 = 258;
    pub const MKNODAT: u64 = 259;
    pub const FCHOWNAT: u64 = 260;
    pub const FUTIMESAT: u64 = 261;
    pub const UNLINKAT: u64 = 263;
    pub const RENAMEAT: u64 = 264;
    pub const LINKAT: u64 = 265;
    pub const SYMLINKAT: u64 = 266;
    pub const FCHMODAT: u64 = 268;
    pub const SPLICE: u64 = 275;
    pub const SYNC_FILE_RANGE: u64 = 277;
    pub const UTIMENSAT: u64 = 280;
    pub const FALLOCATE: u64 = 285;
    pub const PWRITEV: u64 = 296;
    pub const SYNCFS: u64 = 306;
    pub const RENAMEAT2: u64 = 316;
    pub const COPY_FILE_RANGE: u64 = 326;
    pub const PWRITEV2: u64 = 328;
    pub const IO_URING_SETUP: u64 = 425;
    pub const IO_URING_ENTER: u64 = 426;
    pub const OPENAT2: u64 = 437;
    pub const FCHMODAT2: u64 = 452;
    pub const SETXATTRAT: u64 = 463;
    pub const REMOVEXATTRAT: u64 = 466;
}

/// Offsets in x86_64 `struct pt_regs`, a fixed user-visible ABI (`user_regs_struct`).
pub mod regs {
    pub const BP: u64 = 4 * 8;
    pub const ORIG_AX: u64 = 15 * 8;
}

/// `pt_regs` from `bp` to `di`, read in one go: the argument registers of both
/// the 64-bit (`di, si, dx, r10, r8, r9`) and the ia32 (`bx, cx, dx, si, di, bp`)
/// syscall conventions.
#[repr(C)]
pub struct ArgRegs {
    pub bp: u64,
    pub bx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub ax: u64,
    pub cx: u64,
    pub dx: u64,
    pub si: u64,
    pub di: u64,
}

/// `__X32_SYSCALL_BIT`: an x32-ABI syscall (kernels built with `CONFIG_X86_X32_ABI`).
const X32_SYSCALL_BIT: u64 = 0x4000_0000;

/// Both syscall tables end below this (the highest number decoded is 466).
const TABLE_END: u64 = 512;

/// One bit per syscall number below [`TABLE_END`] that the 64-bit or the ia32
/// table decodes: the first test of every syscall, a load and a mask instead of
/// two chains of comparisons (BPF has no jump tables).
static DECODED: [u64; (TABLE_END / 64) as usize] = decoded_numbers();

const fn decoded_numbers() -> [u64; (TABLE_END / 64) as usize] {
    let mut bits = [0u64; (TABLE_END / 64) as usize];
    let mut n = 0;
    while n < TABLE_END {
        if compat::decoded(n) {
            bits[(n / 64) as usize] |= 1 << (n % 64);
        }
        n += 1;
    }
    bits
}

/// Whether syscall `n` is decoded by either table.
#[inline(always)]
fn decoded(n: u64) -> bool {
    if n >= TABLE_END {
        return false;
    }
    let Some(word) = DECODED.get((n / 64) as usize) else {
        return false;
    };
    // SAFETY: a read of an immutable static (volatile: a load from the program's
    // read-only data rather than code LLVM could turn back into comparisons).
    let word = unsafe { core::ptr::read_volatile(word) };
    word & (1 << (n % 64)) != 0
}

/// `TRACE_EVENT_FN(sys_exit, TP_PROTO(struct pt_regs *regs, long ret), ...)`
/// (include/trace/events/syscalls.h), attached as `tp_btf/sys_exit` only while
/// 32-bit programs may run: it runs for every syscall of the system, and leaves
/// 64-bit ones to [`sluice_sys_exit_tp`].
#[btf_tracepoint(function = "sys_exit")]
pub fn sluice_sys_exit(ctx: BtfTracePointContext) -> u32 {
    match try_raw_exit(&ctx) {
        Ok(ret) => ret,
        Err(ret) => ret as u32,
    }
}

/// Context of `syscalls/sys_exit_*` (`/sys/kernel/tracing/events/syscalls/
/// sys_exit_write/format`): `int __syscall_nr` at 8, `long ret` at 16.
const TP_SYSCALL_NR: usize = 8;
const TP_RET: usize = 16;

/// The classic exit tracepoint of one syscall (attached to each of
/// `sluice_common::EXIT_SYSCALLS`). It carries no arguments: they are read from
/// the task's saved user registers, which hold them until the return to user space.
#[tracepoint]
pub fn sluice_sys_exit_tp(ctx: TracePointContext) -> u32 {
    match try_classic_exit(&ctx) {
        Ok(ret) => ret,
        Err(ret) => ret as u32,
    }
}

fn try_classic_exit(ctx: &TracePointContext) -> Result<u32, i64> {
    // SAFETY: both fields are inside the tracepoint record (see the format above).
    let ret: i64 = unsafe { ctx.read_at(TP_RET) }?;
    if ret < 0 {
        return Ok(0);
    }
    // SAFETY: as above.
    let n: i32 = unsafe { ctx.read_at(TP_SYSCALL_NR) }?;
    // SAFETY: the helper takes the current task, a trusted BTF pointer.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf() as *mut _) } as u64;
    let regs = untyped(regs)?;
    on_exit(regs, n as u64, ret, false)
}

fn try_raw_exit(ctx: &BtfTracePointContext) -> Result<u32, i64> {
    let ret: i64 = ctx.arg(1);
    if ret < 0 {
        return Ok(0);
    }
    let regs: u64 = ctx.arg(0);
    let n = reg(regs, regs::ORIG_AX)?;
    // Cheapest test first: this runs on every syscall of the system, and most are
    // in neither table.
    if !decoded(n) {
        if n & X32_SYSCALL_BIT != 0 {
            return x32(n);
        }
        return Ok(0);
    }
    // ia32 `exit` (1) never returns, so a 1 here is always the 64-bit `write`,
    // which the classic tracepoints report.
    if n == nr::WRITE || !in_compat_syscall(&CONFIG.get(0).ok_or(0i64)?.offsets, current_task())? {
        return Ok(0);
    }
    on_exit(regs, n, ret, true)
}

/// Decodes a completed syscall `n` (an ia32 number when `compat`) whose user
/// registers are at `regs`.
#[inline(always)]
fn on_exit(regs: u64, n: u64, ret: i64, compat: bool) -> Result<u32, i64> {
    let Some(cfg) = CONFIG.get(0) else {
        return Ok(0);
    };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == cfg.agent_tgid {
        // The agent is a 64-bit program and never makes 32-bit syscalls.
        if cfg.calibrating != 0 && n == nr::OPENAT && !compat {
            calibrate::on_agent_openat(&cfg.offsets, ret);
        }
        return Ok(0);
    }
    if cfg.watched_dev == 0 {
        return Ok(0);
    }
    let r = arg_regs(regs)?;
    let (n, family, args) = if compat {
        let Some((n, args)) = compat::translate(n, &[r.bx, r.cx, r.dx, r.si, r.di, r.bp]) else {
            return Ok(0);
        };
        let Some(family) = family(n) else {
            return Ok(0);
        };
        (n, family, args)
    } else {
        let Some(family) = family(n) else {
            return Ok(0);
        };
        (n, family, [r.di, r.si, r.dx, r.r10, r.r8, r.r9])
    };
    if family == Family::Ioctl && !clone::changes_contents(args[1]) {
        return Ok(0);
    }
    if family == Family::Data && from_vfs(cfg.data_from_vfs, n) {
        return Ok(0);
    }
    let call = Syscall { n, args, ret };
    match family {
        Family::Path if n == nr::UTIMENSAT && args[1] == 0 => data::on_exit(cfg, &call)?,
        Family::Data => data::on_exit(cfg, &call)?,
        Family::Path => path::on_exit(cfg, n, &args, ret)?,
        Family::Copy => copy::on_exit(cfg, n, &args, ret)?,
        Family::Sync => sync::on_exit(cfg, n, &args)?,
        Family::Xattr => xattr::on_exit(cfg, n, &args)?,
        Family::IoUring => io_uring::on_ring_syscall(cfg)?,
        Family::Ioctl => clone::on_exit(cfg, &args)?,
        Family::AioSubmit => aio::on_submit(args[2], ret, compat),
        Family::AioComplete => aio::on_getevents(args[3], ret),
        Family::Mmap => fault::on_mmap(cfg, tgid, &args),
    }
    Ok(0)
}

#[inline(always)]
fn reg(regs: u64, off: u64) -> Result<u64, i64> {
    // SAFETY: bpf_probe_read_kernel tolerates any address and reports faults.
    unsafe { bpf_probe_read_kernel((regs + off) as *const u64) }.map_err(|e| e as i64)
}

#[inline(always)]
fn arg_regs(regs: u64) -> Result<ArgRegs, i64> {
    // SAFETY: as above.
    unsafe { bpf_probe_read_kernel((regs + regs::BP) as *const ArgRegs) }.map_err(|e| e as i64)
}

#[inline(always)]
const fn is_data(n: u64) -> bool {
    matches!(
        n,
        nr::WRITE
            | nr::PWRITE64
            | nr::WRITEV
            | nr::PWRITEV
            | nr::PWRITEV2
            | nr::FTRUNCATE
            | nr::FALLOCATE
            | nr::FCHMOD
            | nr::FCHOWN
            | nr::OPEN_BY_HANDLE_AT
    )
}

/// Whether an attached fexit program on the VFS reports syscall `n` (see
/// `sluice_common::vfs`), so reporting it here too would duplicate it.
#[inline(always)]
fn from_vfs(bits: u32, n: u64) -> bool {
    let bit = match n {
        nr::WRITE | nr::PWRITE64 => vfs::WRITE,
        nr::WRITEV | nr::PWRITEV | nr::PWRITEV2 => vfs::WRITEV,
        nr::FTRUNCATE => vfs::TRUNCATE,
        nr::FALLOCATE => vfs::FALLOCATE,
        _ => 0,
    };
    bits & bit != 0
}

/// Which handler a syscall number belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Data,
    Path,
    Copy,
    Sync,
    Xattr,
    IoUring,
    Ioctl,
    AioSubmit,
    AioComplete,
    Mmap,
}

#[inline(always)]
const fn family(n: u64) -> Option<Family> {
    if is_data(n) {
        return Some(Family::Data);
    }
    // utimensat is both: a NULL path means "the dirfd itself" (futimens).
    if is_path(n) || n == nr::UTIMENSAT {
        return Some(Family::Path);
    }
    Some(match n {
        nr::COPY_FILE_RANGE | nr::SENDFILE | nr::SPLICE => Family::Copy,
        nr::FSYNC | nr::FDATASYNC | nr::SYNC_FILE_RANGE | nr::SYNCFS | nr::MSYNC => Family::Sync,
        nr::SETXATTR
        | nr::LSETXATTR
        | nr::FSETXATTR
        | nr::REMOVEXATTR
        | nr::LREMOVEXATTR
        | nr::FREMOVEXATTR
        | nr::SETXATTRAT
        | nr::REMOVEXATTRAT => Family::Xattr,
        nr::IO_URING_SETUP | nr::IO_URING_ENTER => Family::IoUring,
        nr::IOCTL => Family::Ioctl,
        nr::IO_SUBMIT => Family::AioSubmit,
        nr::IO_GETEVENTS | nr::IO_PGETEVENTS => Family::AioComplete,
        nr::MMAP => Family::Mmap,
        _ => return None,
    })
}

#[inline(always)]
const fn is_path(n: u64) -> bool {
    matches!(
        n,
        nr::OPEN
            | nr::OPENAT
            | nr::OPENAT2
            | nr::CREAT
            | nr::TRUNCATE
            | nr::RENAME
            | nr::RENAMEAT
            | nr::RENAMEAT2
            | nr::MKDIR
            | nr::MKDIRAT
            | nr::RMDIR
            | nr::LINK
            | nr::LINKAT
            | nr::UNLINK
            | nr::UNLINKAT
            | nr::SYMLINK
            | nr::SYMLINKAT
            | nr::CHMOD
            | nr::FCHMODAT
            | nr::FCHMODAT2
            | nr::CHOWN
            | nr::LCHOWN
            | nr::FCHOWNAT
            | nr::UTIME
            | nr::UTIMES
            | nr::FUTIMESAT
            | nr::MKNOD
            | nr::MKNODAT
    )
}

/// An x32-ABI syscall (not built into the supported kernels, so not decoded):
/// one that may change files asks for a repair.
#[cold]
fn x32(n: u64) -> Result<u32, i64> {
    let Some(cfg) = CONFIG.get(0) else {
        return Ok(0);
    };
    if cfg.watched_dev == 0 || (bpf_get_current_pid_tgid() >> 32) as u32 == cfg.agent_tgid {
        return Ok(0);
    }
    let n64 = n & !X32_SYSCALL_BIT;
    // 512..=547 are the x32 variants of ioctl, writev, pwritev, pwritev2 and others.
    if family(n64).is_some() || (512..=547).contains(&n64) {
        data::emit(
            op::REPAIR,
            InodeId::default(),
            n,
            0,
            repair::COMPAT_SYSCALL,
            NO_FD,
        );
    }
    Ok(0)
}
