//! io_uring: requests submitted through a ring bypass the syscalls `sys_exit` sees.
//!
//! Completed requests are read from the completion tracepoint
//! (include/trace/events/io_uring.h), attached as `tp_btf/io_uring_complete`:
//! `TRACE_EVENT(io_uring_complete, TP_PROTO(struct io_ring_ctx *ctx, void *req,
//! struct io_uring_cqe *cqe), ...)`. It runs in the submitting process (its task,
//! an io-wq worker or the SQPOLL thread, all of which share its fd table), with
//! `req->file` still held. What is reported, by opcode:
//! - `WRITE`, `WRITEV`, `WRITE_FIXED`, `WRITEV_FIXED`: the bytes written. The rw
//!   command's `kiocb.ki_pos` has been advanced past them (also for `O_APPEND` and
//!   "current position" requests), so the write started at `ki_pos - cqe->res`.
//! - `FSYNC`, `SYNC_FILE_RANGE`: a sync barrier on the file.
//! - `OPENAT`, `OPENAT2` with `O_CREAT` or `O_TRUNC`: the opened file, as
//!   `CHANGED` with the new fd so the agent can find it; into a fixed file slot
//!   (no fd), a repair.
//! - `RENAMEAT`, `UNLINKAT`, `MKDIRAT`, `SYMLINKAT`, `LINKAT`, `SETXATTR`: their
//!   paths are in kernel memory and not decoded: a repair (`IO_URING_NAMESPACE`).
//! - Requests known not to change a file (reads, polls, sockets, timeouts,
//!   `STATX`, `FADVISE`, `CLOSE`, ...): nothing.
//! - Any other request on a file of the watched tree (`FALLOCATE`, `FTRUNCATE`,
//!   `FSETXATTR`, `SPLICE`, `URING_CMD`, opcodes newer than this list): the file
//!   as `CHANGED`, to be verified whole.
//!
//! The first `io_uring_setup(2)`/`io_uring_enter(2)` of a process (and again every
//! `IO_URING_RENOTIFY_NS`) is also reported as `IO_URING_USER`.
//!
//! Prototypes:
//! - `int io_uring_setup(u32 entries, struct io_uring_params *p)`
//! - `int io_uring_enter(unsigned int fd, u32 to_submit, u32 min_complete, u32 flags, const void *argp, size_t argsz)`

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use sluice_common::{Config, IO_URING_RENOTIFY_NS, InodeId, NO_FD, TO_END, op, repair, sync_kind};

use super::data;
use crate::{
    kernel::{
        Res, current_task, file_inode, file_of_fd, inode_size, read, read_ptr, untyped, watched,
    },
    maps::{CONFIG, IO_URING_SEEN},
};

/// `enum io_uring_op` (include/uapi/linux/io_uring.h).
mod opcode {
    pub const NOP: u8 = 0;
    pub const READV: u8 = 1;
    pub const WRITEV: u8 = 2;
    pub const FSYNC: u8 = 3;
    pub const READ_FIXED: u8 = 4;
    pub const WRITE_FIXED: u8 = 5;
    pub const POLL_ADD: u8 = 6;
    pub const POLL_REMOVE: u8 = 7;
    pub const SYNC_FILE_RANGE: u8 = 8;
    pub const SENDMSG: u8 = 9;
    pub const CONNECT: u8 = 16;
    pub const OPENAT: u8 = 18;
    pub const CLOSE: u8 = 19;
    pub const FILES_UPDATE: u8 = 20;
    pub const STATX: u8 = 21;
    pub const READ: u8 = 22;
    pub const WRITE: u8 = 23;
    pub const FADVISE: u8 = 24;
    pub const MADVISE: u8 = 25;
    pub const SEND: u8 = 26;
    pub const RECV: u8 = 27;
    pub const OPENAT2: u8 = 28;
    pub const EPOLL_CTL: u8 = 29;
    pub const PROVIDE_BUFFERS: u8 = 31;
    pub const REMOVE_BUFFERS: u8 = 32;
    pub const SHUTDOWN: u8 = 34;
    pub const RENAMEAT: u8 = 35;
    pub const UNLINKAT: u8 = 36;
    pub const MKDIRAT: u8 = 37;
    pub const SYMLINKAT: u8 = 38;
    pub const LINKAT: u8 = 39;
    pub const MSG_RING: u8 = 40;
    pub const SETXATTR: u8 = 42;
    pub const FGETXATTR: u8 = 43;
    pub const GETXATTR: u8 = 44;
    pub const SOCKET: u8 = 45;
    pub const SEND_ZC: u8 = 47;
    pub const SENDMSG_ZC: u8 = 48;
    pub const READ_MULTISHOT: u8 = 49;
    pub const WAITID: u8 = 50;
    pub const FUTEX_WAIT: u8 = 51;
    pub const FUTEX_WAKE: u8 = 52;
    pub const FUTEX_WAITV: u8 = 53;
    pub const FIXED_FD_INSTALL: u8 = 54;
    pub const BIND: u8 = 56;
    pub const LISTEN: u8 = 57;
    pub const RECV_ZC: u8 = 58;
    pub const EPOLL_WAIT: u8 = 59;
    pub const READV_FIXED: u8 = 60;
    pub const WRITEV_FIXED: u8 = 61;
    pub const PIPE: u8 = 62;
}

/// `struct io_uring_cqe { __u64 user_data; __s32 res; __u32 flags; ... }` (UAPI).
const CQE_RES: u64 = 8;
const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;

/// What a completed request means for the watched tree.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Write,
    Sync,
    Open,
    Namespace,
    /// Changes no file.
    Inert,
    /// May change its file in a way not decoded.
    Changed,
}

#[inline(always)]
fn class(code: u8) -> Class {
    use opcode::*;
    match code {
        WRITE | WRITEV | WRITE_FIXED | WRITEV_FIXED => Class::Write,
        FSYNC | SYNC_FILE_RANGE => Class::Sync,
        OPENAT | OPENAT2 => Class::Open,
        RENAMEAT | UNLINKAT | MKDIRAT | SYMLINKAT | LINKAT | SETXATTR => Class::Namespace,
        NOP
        | READV
        | READ_FIXED
        | POLL_ADD
        | POLL_REMOVE
        | SENDMSG..=CONNECT
        | CLOSE
        | FILES_UPDATE
        | STATX
        | READ
        | FADVISE
        | MADVISE
        | SEND
        | RECV
        | EPOLL_CTL
        | PROVIDE_BUFFERS
        | REMOVE_BUFFERS
        | SHUTDOWN
        | MSG_RING
        | FGETXATTR
        | GETXATTR
        | SOCKET
        | SEND_ZC
        | SENDMSG_ZC
        | READ_MULTISHOT
        | WAITID
        | FUTEX_WAIT
        | FUTEX_WAKE
        | FUTEX_WAITV
        | FIXED_FD_INSTALL
        | BIND
        | LISTEN
        | RECV_ZC
        | EPOLL_WAIT
        | READV_FIXED
        | PIPE => Class::Inert,
        // FALLOCATE, SPLICE, TEE, FSETXATTR, URING_CMD, FTRUNCATE, and anything newer.
        _ => Class::Changed,
    }
}

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
    let class = class(code);
    if class == Class::Inert {
        return Ok(());
    }
    let res: i32 = read(cqe, CQE_RES)?;
    if res < 0 {
        return Ok(());
    }
    match class {
        Class::Namespace => {
            data::emit(
                op::REPAIR,
                InodeId::default(),
                code as u64,
                0,
                repair::IO_URING_NAMESPACE,
                NO_FD,
            );
            return Ok(());
        }
        Class::Open => return opened(cfg, req, code, res),
        _ => {}
    }
    let file = read_ptr(req, o.io_kiocb_file)?;
    let inode_ptr = file_inode(o, file)?;
    let Some(inode) = watched(cfg, inode_ptr)? else {
        return Ok(());
    };
    match class {
        Class::Write => {
            if res == 0 {
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
        }
        Class::Sync => data::emit(op::SYNC, inode, 0, TO_END, sync_kind::FSYNC, NO_FD),
        _ => {
            let size = inode_size(o, inode_ptr)?;
            data::emit(op::CHANGED, inode, 0, size, 0, NO_FD);
        }
    }
    Ok(())
}

/// A ring open succeeded: only one that could create or truncate matters. Its
/// result is a new fd of the process, or 0 when the file went into a fixed slot.
fn opened(cfg: &Config, req: u64, code: u8, res: i32) -> Res<()> {
    let o = &cfg.offsets;
    let flags: u32 = if o.io_open_flags == 0 {
        O_CREAT
    } else {
        read(req, o.io_open_flags)?
    };
    if flags & (O_CREAT | O_TRUNC) == 0 {
        return Ok(());
    }
    let slot: u32 = if o.io_open_file_slot == 0 {
        0
    } else {
        read(req, o.io_open_file_slot)?
    };
    if slot != 0 {
        data::emit(
            op::REPAIR,
            InodeId::default(),
            code as u64,
            0,
            repair::IO_URING_NAMESPACE,
            NO_FD,
        );
        return Ok(());
    }
    let file = file_of_fd(o, current_task(), res)?;
    let inode_ptr = file_inode(o, file)?;
    let Some(inode) = watched(cfg, inode_ptr)? else {
        return Ok(());
    };
    let size = inode_size(o, inode_ptr)?;
    data::emit(op::CHANGED, inode, 0, size, 0, res as u32);
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
