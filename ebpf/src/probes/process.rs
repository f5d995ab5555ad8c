//! Process lifecycle: a fork passes shared mappings on to the child, and the
//! exec of a 32-bit program needs the capture of 32-bit syscalls.
//!
//! Prototypes (include/trace/events/sched.h), attached as BTF tracepoints:
//! - `sched_process_fork`: `TP_PROTO(struct task_struct *parent, struct task_struct *child)`;
//! - `sched_process_exec`: `TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`.
//!
//! Both run once per fork or exec, never per syscall.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use sluice_common::{InodeId, NO_FD, op, repair};

use super::data;
use crate::{
    kernel::{Res, read, untyped},
    maps::{CONFIG, may_map_watched, note_mapper},
};

/// `ELFMAG` and `EI_CLASS`/`ELFCLASS32` (include/uapi/linux/elf.h).
const ELF_MAGIC: u32 = u32::from_le_bytes(*b"\x7fELF");
const ELFCLASS32: u8 = 1;

#[btf_tracepoint(function = "sched_process_fork")]
pub fn sluice_process_fork(ctx: BtfTracePointContext) -> u32 {
    let _ = try_fork(&ctx);
    0
}

fn try_fork(ctx: &BtfTracePointContext) -> Res<()> {
    // The parent is the current task.
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !may_map_watched(parent) {
        return Ok(());
    }
    let Some(cfg) = CONFIG.get(0) else {
        return Ok(());
    };
    let child = untyped(ctx.arg::<u64>(1))?;
    let tgid: i32 = read(child, cfg.offsets.task_tgid)?;
    if tgid as u32 != parent {
        note_mapper(tgid as u32);
    }
    Ok(())
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn sluice_process_exec(ctx: BtfTracePointContext) -> u32 {
    let _ = try_exec(&ctx);
    0
}

fn try_exec(ctx: &BtfTracePointContext) -> Res<()> {
    let Some(cfg) = CONFIG.get(0) else {
        return Ok(());
    };
    if cfg.watched_dev == 0 || cfg.compat_exits != 0 {
        return Ok(());
    }
    let bprm = untyped(ctx.arg::<u64>(2))?;
    let header: [u8; 8] = read(bprm, cfg.offsets.binprm_buf)?;
    let magic = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    if magic == ELF_MAGIC && header[4] == ELFCLASS32 {
        data::emit(op::REPAIR, InodeId::default(), 0, 0, repair::COMPAT_EXEC, NO_FD);
    }
    Ok(())
}
