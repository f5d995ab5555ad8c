//! Program entry points, one file per hook family.
//!
//! Syscalls are seen at their exit: a syscall's arguments are still in its saved
//! `pt_regs` when it returns (x86_64), and at exit we know it succeeded, so a
//! single hook sees each completed operation once. The classic per-syscall exit
//! tracepoints cover 64-bit programs; 32-bit syscalls reach only the raw
//! `sys_exit`, attached once a 32-bit program runs (`process` announces it), and
//! are translated (`compat`). `process` also follows shared mappings over forks,
//! so `fault` looks only at the write faults of processes that may hold one. The one exception is `entry`: the write
//! family's entry (classic syscall tracepoints) records the file position or size
//! when a write's exit could not tell where it went. Kernel tracepoints cover
//! what involves no syscall of its own: `writeback_dirty_folio` and
//! `page_fault_user` (mmap stores) and `io_uring_complete` (requests submitted
//! through a ring).
//!
//! Where the kernel allows fexit, `vfs` hooks the VFS write/fallocate/truncate
//! functions instead (every writer, in-kernel ones included) and `sys_exit`
//! leaves those syscalls to it (`Config::data_from_vfs`).

mod aio;
mod calibrate;
mod clone;
mod compat;
mod copy;
mod data;
mod entry;
mod fault;
mod io_uring;
mod path;
mod process;
mod sync;
mod sys_exit;
mod vfs;
mod writeback;
mod xattr;

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use sluice_common::EventHeader;

/// The six syscall argument registers, in argument order.
pub type SysArgs = [u64; 6];

/// A completed syscall, decoded to its 64-bit number and argument layout
/// (passed by reference: BPF functions take at most five arguments).
pub struct Syscall {
    pub n: u64,
    pub args: SysArgs,
    pub ret: i64,
}

#[inline(always)]
fn header(kind: u32, op: u32) -> EventHeader {
    let pid_tgid = bpf_get_current_pid_tgid();
    EventHeader {
        kind,
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        op,
        // SAFETY: the helper takes no arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
    }
}
