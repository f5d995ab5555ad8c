//! The raw syscall-exit tracepoint: one program for every syscall.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

use sluice_common::vfs;

use super::{SysArgs, calibrate, copy, data, io_uring, path, sync, xattr};
use crate::maps::CONFIG;

/// x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
pub mod nr {
    pub const WRITE: u64 = 1;
    pub const OPEN: u64 = 2;
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
    pub const R10: u64 = 7 * 8;
    pub const R9: u64 = 8 * 8;
    pub const R8: u64 = 9 * 8;
    pub const DX: u64 = 12 * 8;
    pub const SI: u64 = 13 * 8;
    pub const DI: u64 = 14 * 8;
    pub const ORIG_AX: u64 = 15 * 8;
}

/// `TRACE_EVENT_FN(sys_exit, TP_PROTO(struct pt_regs *regs, long ret), ...)`
/// (include/trace/events/syscalls.h), attached as `tp_btf/sys_exit`.
#[btf_tracepoint(function = "sys_exit")]
pub fn sluice_sys_exit(ctx: BtfTracePointContext) -> u32 {
    match try_sluice_sys_exit(&ctx) {
        Ok(ret) => ret,
        Err(ret) => ret as u32,
    }
}

#[inline(always)]
fn reg(regs: u64, off: u64) -> Result<u64, i64> {
    // SAFETY: bpf_probe_read_kernel tolerates any address and reports faults.
    unsafe { bpf_probe_read_kernel((regs + off) as *const u64) }.map_err(|e| e as i64)
}

#[inline(always)]
fn is_data(n: u64) -> bool {
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
}

#[inline(always)]
fn family(n: u64) -> Option<Family> {
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
        _ => return None,
    })
}

#[inline(always)]
fn is_path(n: u64) -> bool {
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

fn try_sluice_sys_exit(ctx: &BtfTracePointContext) -> Result<u32, i64> {
    let ret: i64 = ctx.arg(1);
    if ret < 0 {
        return Ok(0);
    }
    let regs: u64 = ctx.arg(0);
    let n = reg(regs, regs::ORIG_AX)?;
    let Some(family) = family(n) else {
        return Ok(0);
    };
    let Some(cfg) = CONFIG.get(0) else {
        return Ok(0);
    };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == cfg.agent_tgid {
        if cfg.calibrating != 0 && n == nr::OPENAT {
            calibrate::on_agent_openat(&cfg.offsets, ret);
        }
        return Ok(0);
    }
    if cfg.watched_dev == 0 {
        return Ok(0);
    }
    if family == Family::Data && from_vfs(cfg.data_from_vfs, n) {
        return Ok(0);
    }
    let args: SysArgs = [
        reg(regs, regs::DI)?,
        reg(regs, regs::SI)?,
        reg(regs, regs::DX)?,
        reg(regs, regs::R10)?,
        reg(regs, regs::R8)?,
        reg(regs, regs::R9)?,
    ];
    match family {
        Family::Path if n == nr::UTIMENSAT && args[1] == 0 => data::on_exit(cfg, n, &args, ret)?,
        Family::Data => data::on_exit(cfg, n, &args, ret)?,
        Family::Path => path::on_exit(cfg, n, &args, ret)?,
        Family::Copy => copy::on_exit(cfg, n, &args, ret)?,
        Family::Sync => sync::on_exit(cfg, n, &args)?,
        Family::Xattr => xattr::on_exit(cfg, n, &args)?,
        Family::IoUring => io_uring::on_ring_syscall(cfg)?,
    }
    Ok(0)
}
