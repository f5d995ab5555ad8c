//! fexit programs on the VFS data paths: they see every writer of a file (nfsd,
//! overlayfs, io_uring fallocate, other in-kernel callers), not only the syscalls
//! `sys_exit` decodes. The agent attaches them when the kernel allows fentry/fexit
//! and then sets `Config::data_from_vfs` so `sys_exit` skips the same syscalls.
//!
//! UNTESTED at run time: the development and CI hosts refuse fentry/fexit (EPERM),
//! so these programs are only checked to build and link; the agent falls back to
//! `tp_btf/sys_exit` alone there.
//!
//! Prototypes (6.x; the return value follows the arguments in the fexit context):
//! - `ssize_t vfs_write(struct file *, const char __user *, size_t, loff_t *pos)`
//! - `static ssize_t vfs_writev(struct file *, const struct iovec __user *, unsigned long vlen, loff_t *pos, rwf_t)`
//! - `ssize_t vfs_iter_write(struct file *, struct iov_iter *, loff_t *ppos, rwf_t)`
//! - `ssize_t vfs_iocb_iter_write(struct file *, struct kiocb *, struct iov_iter *)`
//! - `int vfs_fallocate(struct file *, int mode, loff_t offset, loff_t len)`
//! - `int do_truncate(struct mnt_idmap *, struct dentry *, loff_t length, unsigned int time_attrs, struct file *)`
//!
//! In every write case the position (`*pos`, `iocb->ki_pos`) has been advanced past
//! the bytes written when the function returns, so the write started at `pos - ret`.
//! The file descriptor is not known here: events carry [`NO_FD`].

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::fexit, programs::FExitContext};
use sluice_common::{Config, InodeId, NO_FD, op};

use super::data;
use crate::{
    kernel::{self, Res, file_inode, read, untyped},
    maps::CONFIG,
};

/// `ATTR_OPEN` (include/linux/fs.h): `do_truncate` called by `open(O_TRUNC)`,
/// which `sys_exit` already reports as an open.
const ATTR_OPEN: u32 = 1 << 15;

/// The config and the file's inode when `file` is on the watched filesystem and
/// the caller is not the agent.
#[inline(always)]
fn watched_file(file: u64) -> Res<Option<(&'static Config, InodeId)>> {
    let Some(cfg) = CONFIG.get(0) else {
        return Ok(None);
    };
    if cfg.watched_dev == 0 || (bpf_get_current_pid_tgid() >> 32) as u32 == cfg.agent_tgid {
        return Ok(None);
    }
    if file == 0 {
        return Ok(None);
    }
    let file = untyped(file)?;
    let Some(inode) = kernel::watched(cfg, file_inode(&cfg.offsets, file)?)? else {
        return Ok(None);
    };
    Ok(Some((cfg, inode)))
}

/// A write of `ret` bytes that left the position at `*pos` (0 when `pos` is NULL:
/// stream files have no position).
#[inline(always)]
fn write_at_pos(file: u64, pos: u64, ret: i64) -> Res<()> {
    if ret <= 0 {
        return Ok(());
    }
    let Some((_, inode)) = watched_file(file)? else {
        return Ok(());
    };
    let end: u64 = if pos == 0 {
        ret as u64
    } else {
        read(untyped(pos)?, 0)?
    };
    let len = ret as u64;
    data::emit(op::WRITE, inode, end.saturating_sub(len), len, 0, NO_FD);
    Ok(())
}

#[fexit(function = "vfs_write")]
pub fn sluice_vfs_write(ctx: FExitContext) -> i32 {
    let _ = write_at_pos(ctx.arg(0), ctx.arg(3), ctx.arg(4));
    0
}

#[fexit(function = "vfs_writev")]
pub fn sluice_vfs_writev(ctx: FExitContext) -> i32 {
    let _ = write_at_pos(ctx.arg(0), ctx.arg(3), ctx.arg(5));
    0
}

#[fexit(function = "vfs_iter_write")]
pub fn sluice_vfs_iter_write(ctx: FExitContext) -> i32 {
    let _ = write_at_pos(ctx.arg(0), ctx.arg(2), ctx.arg(4));
    0
}

#[fexit(function = "vfs_iocb_iter_write")]
pub fn sluice_vfs_iocb_iter_write(ctx: FExitContext) -> i32 {
    let _ = try_iocb_iter_write(&ctx);
    0
}

fn try_iocb_iter_write(ctx: &FExitContext) -> Res<()> {
    let ret: i64 = ctx.arg(3);
    if ret <= 0 {
        return Ok(());
    }
    let Some((cfg, inode)) = watched_file(ctx.arg(0))? else {
        return Ok(());
    };
    let iocb = untyped(ctx.arg(1))?;
    let end: u64 = read(iocb, cfg.offsets.kiocb_ki_pos)?;
    let len = ret as u64;
    data::emit(op::WRITE, inode, end.saturating_sub(len), len, 0, NO_FD);
    Ok(())
}

#[fexit(function = "vfs_fallocate")]
pub fn sluice_vfs_fallocate(ctx: FExitContext) -> i32 {
    let _ = try_fallocate(&ctx);
    0
}

fn try_fallocate(ctx: &FExitContext) -> Res<()> {
    // `int`: only the low 32 bits of the return register are meaningful.
    let ret = ctx.arg::<u64>(4) as i32;
    if ret != 0 {
        return Ok(());
    }
    let Some((_, inode)) = watched_file(ctx.arg(0))? else {
        return Ok(());
    };
    let mode = ctx.arg::<u64>(1) as u32;
    let offset: u64 = ctx.arg(2);
    let len: u64 = ctx.arg(3);
    data::emit(op::FALLOCATE, inode, offset, len, mode, NO_FD);
    Ok(())
}

#[fexit(function = "do_truncate")]
pub fn sluice_do_truncate(ctx: FExitContext) -> i32 {
    let _ = try_truncate(&ctx);
    0
}

fn try_truncate(ctx: &FExitContext) -> Res<()> {
    let ret = ctx.arg::<u64>(5) as i32;
    let time_attrs = ctx.arg::<u64>(3) as u32;
    // No file: truncate(2) by path, reported by `sys_exit` as PATH_TRUNCATE.
    // ATTR_OPEN: open(O_TRUNC), reported by `sys_exit` as an open.
    if ret != 0 || time_attrs & ATTR_OPEN != 0 {
        return Ok(());
    }
    let Some((_, inode)) = watched_file(ctx.arg(4))? else {
        return Ok(());
    };
    let length: u64 = ctx.arg(2);
    data::emit(op::TRUNCATE, inode, length, 0, 0, NO_FD);
    Ok(())
}
