//! io_uring: writes submitted through a ring bypass the syscalls `sys_exit` sees.
//!
//! Completed write requests are read from the completion tracepoint
//! (include/trace/events/io_uring.h), attached as `tp_btf/io_uring_complete`:
//! `TRACE_EVENT(io_uring_complete, TP_PROTO(struct io_ring_ctx *ctx, void *req,
//! struct io_uring_cqe *cqe), ...)`. At that point `req->file` is still held and
//! the rw command's `kiocb.ki_pos` has been advanced past the bytes written (also
//! for `O_APPEND` and "current position" requests), so the write started at
//! `ki_pos - cqe->res`. Only `IORING_OP_WRITE`, `WRITEV`, `WRITE_FIXED` and
//! `WRITEV_FIXED` are decoded.
//!
//! Everything else a ring can do to files (openat, renameat, unlinkat, mkdirat,
//! linkat, symlinkat, fallocate, ftruncate, splice, setxattr, uring_cmd...) is not
//! decoded. Instead, the first `io_uring_setup(2)`/`io_uring_enter(2)` of a process
//! (and again every `IO_URING_RENOTIFY_NS`) is reported as `IO_URING_USER`, so the
//! agent can verify the files that process has open or rescan.
//!
//! Prototypes:
//! - `int io_uring_setup(u32 entries, struct io_uring_params *p)`
//! - `int io_uring_enter(unsigned int fd, u32 to_submit, u32 min_complete, u32 flags, const void *argp, size_t argsz)`

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use sluice_common::{Config, IO_URING_RENOTIFY_NS, InodeId, NO_FD, op};

use super::data;
use crate::{
    kernel::{Res, file_inode, inode_id, read, read_ptr, untyped},
    maps::{CONFIG, IO_URING_SEEN},
};

/// `enum io_uring_op` (include/uapi/linux/io_uring.h).
mod opcode {
    pub const WRITEV: u8 = 2;
    pub const WRITE_FIXED: u8 = 5;
    pub const WRITE: u8 = 23;
    pub const WRITEV_FIXED: u8 = 61;
}

/// `struct io_uring_cqe { __u64 user_data; __s32 res; __u32 flags; ... }` (UAPI).
const CQE_RES: u64 = 8;

#[btf_tracepoint(function = "io_uring_complete")]
pub fn sluice_io_uring_complete(ctx: BtfTracePointContext) -> u32 {
    let _ = try_complete(&ctx);
    0
}

fn try_complete(ctx: &BtfTracePointContext) -> Res<()> {
    let req: u64 = ctx.arg(1);
    let cqe: u64 = ctx.arg(2);
    // Completions not tied to a request (overflow flushes, msg_ring) carry no req.
    if req == 0 || cqe == 0 {
        return Ok(());
    }
    let (req, cqe) = (untyped(req)?, untyped(cqe)?);
    let Some(cfg) = CONFIG.get(0) else {
        return Ok(());
    };
    if cfg.watched_dev == 0 || cfg.offsets.io_kiocb_opcode == 0 {
        return Ok(());
    }
    if (bpf_get_current_pid_tgid() >> 32) as u32 == cfg.agent_tgid {
        return Ok(());
    }
    let o = &cfg.offsets;
    let code: u8 = read(req, o.io_kiocb_opcode)?;
    if !matches!(
        code,
        opcode::WRITE | opcode::WRITEV | opcode::WRITE_FIXED | opcode::WRITEV_FIXED
    ) {
        return Ok(());
    }
    let res: i32 = read(cqe, CQE_RES)?;
    if res <= 0 {
        return Ok(());
    }
    let file = read_ptr(req, o.io_kiocb_file)?;
    let inode = inode_id(o, file_inode(o, file)?)?;
    if inode.dev != cfg.watched_dev {
        return Ok(());
    }
    let end: i64 = read(req, o.io_rw_ki_pos)?;
    let len = res as u64;
    data::emit(
        op::WRITE,
        inode,
        (end as u64).saturating_sub(len),
        len,
        0,
        NO_FD,
    );
    Ok(())
}

/// io_uring_setup / io_uring_enter returned: announce the process once in a while.
pub fn on_ring_syscall(_cfg: &Config) -> Res<()> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the helper takes no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the value is a plain u64 copied out immediately.
    if let Some(last) = unsafe { IO_URING_SEEN.get(&tgid) }
        && now.saturating_sub(*last) < IO_URING_RENOTIFY_NS
    {
        return Ok(());
    }
    let _ = IO_URING_SEEN.insert(&tgid, &now, 0);
    data::emit(op::IO_URING_USER, InodeId::default(), 0, 0, 0, NO_FD);
    Ok(())
}
