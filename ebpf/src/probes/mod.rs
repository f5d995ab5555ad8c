//! Program entry points, one file per hook family.
//!
//! Only `sys_exit` is attached: a syscall's arguments are still in its saved
//! `pt_regs` when it returns (x86_64), and at exit we know it succeeded, so a
//! single hook sees each completed operation once.

mod calibrate;
mod data;
mod path;
mod sys_exit;

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use sluice_common::EventHeader;

/// The six syscall argument registers, in argument order.
pub type SysArgs = [u64; 6];

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
