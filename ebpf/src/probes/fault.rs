//! User write faults on shared file mappings: mmap stores to folios that are
//! already dirty.
//!
//! `writeback_dirty_folio` only fires on a folio's clean → dirty transition, so a
//! store through a new shared mapping to a page that `write(2)` dirtied a moment
//! before (and that has not been written back yet) is invisible there. The store
//! still faults: the PTE of a fresh mapping is absent, and a read-faulted page of
//! a shared writable mapping is mapped read-only for dirty tracking. This program
//! reports every such write fault as the folio the page cache holds at the
//! faulting index (a fault maps a large folio whole, so its other pages take no
//! fault of their own), or the page alone when none is cached yet.
//!
//! Prototype (arch/x86/include/asm/trace/exceptions.h), attached as
//! `tp_btf/page_fault_user`:
//! `DEFINE_PAGE_FAULT_EVENT(page_fault_user)` with
//! `TP_PROTO(unsigned long address, struct pt_regs *regs, unsigned long error_code)`.
//!
//! The event fires before the fault is handled (and before the store completes);
//! the agent reads the page later, so that is harmless. A fault that turns out to
//! be invalid (SIGSEGV, SIGBUS past EOF) may still be reported; the agent then
//! finds nothing changed. A store to a clean page is reported both here and by
//! `writeback_dirty_folio`. A page stays writable once faulted in until writeback
//! write-protects it again, so further stores to it do not fault: those are covered
//! by the earlier event (the agent re-reads mapped pages periodically).
//!
//! Not seen: the kernel writing into a shared mapping on behalf of a syscall (e.g.
//! `read(2)` into a mapped buffer), which takes a kernel-mode fault
//! (`page_fault_kernel`) if any, and stores through a PTE that is already writable.

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task_btf, generated::bpf_find_vma},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use sluice_common::{Config, InodeId, NO_FD, op, repair};

use super::{data, writeback::folio_order};
use crate::{
    kernel::{Res, current_task, file_inode, file_of_fd, inode_is_reg, read, read_ptr, untyped, watched},
    maps::{CONFIG, may_map_watched, note_mapper},
};

/// `MAP_SHARED`; `MAP_SHARED_VALIDATE` is `MAP_SHARED | MAP_PRIVATE`
/// (include/uapi/linux/mman.h).
pub const MAP_SHARED: u64 = 0x01;
const MAP_TYPE: u64 = 0x0f;
const MAP_SHARED_VALIDATE: u64 = 0x03;
/// The fd argument of an `mmap` whose arguments were not read: any file.
pub const UNKNOWN_FD: u64 = 0xffff_fffe;

/// A completed `mmap(addr, len, prot, flags, fd, pgoff)`: a shared mapping of a
/// file on the watched filesystem makes the process one whose write faults are
/// looked at. Any protection counts, as `mprotect` can make it writable later.
#[inline(always)]
pub fn on_mmap(cfg: &Config, tgid: u32, args: &[u64; 6]) {
    let kind = args[3] & MAP_TYPE;
    if kind != MAP_SHARED && kind != MAP_SHARED_VALIDATE {
        return;
    }
    if args[4] == UNKNOWN_FD {
        note_mapper(tgid);
        return;
    }
    let on_watched = file_of_fd(&cfg.offsets, current_task(), args[4] as i32)
        .and_then(|file| file_inode(&cfg.offsets, file))
        .and_then(|inode| watched(cfg, inode));
    match on_watched {
        Ok(None) => {}
        // A mapping that cannot be told apart is taken as one of the tree.
        Ok(Some(_)) | Err(_) => note_mapper(tgid),
    }
}

const PAGE_SIZE: u64 = 4096;
const PAGE_SHIFT: u64 = 12;
/// `ENOENT`: no VMA contains the address (the fault will be a SIGSEGV).
const ENOENT: i64 = 2;
/// `X86_PF_WRITE | X86_PF_USER` (arch/x86/include/asm/trap_pf.h).
const PF_WRITE: u64 = 1 << 1;
const PF_USER: u64 = 1 << 2;
/// `VM_WRITE`, `VM_SHARED` (include/linux/mm.h).
const VM_WRITE: u64 = 0x2;
const VM_SHARED: u64 = 0x8;

#[btf_tracepoint(function = "page_fault_user")]
pub fn sluice_page_fault_user(ctx: BtfTracePointContext) -> u32 {
    let _ = try_fault(&ctx);
    0
}

/// What the `bpf_find_vma` callback learns about the page at `addr`.
#[repr(C)]
struct FaultLookup {
    addr: u64,
    inode: InodeId,
    /// `file->f_mapping` of the mapped file.
    mapping: u64,
    /// Page index in the file.
    index: u64,
    found: u64,
}

fn try_fault(ctx: &BtfTracePointContext) -> Res<()> {
    let addr: u64 = ctx.arg(0);
    let error_code: u64 = ctx.arg(2);
    // Cheapest test first: this runs on every user page fault of the system.
    if error_code & (PF_WRITE | PF_USER) != PF_WRITE | PF_USER {
        return Ok(());
    }
    let Some(cfg) = CONFIG.get(0) else {
        return Ok(());
    };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if cfg.watched_dev == 0 || tgid == cfg.agent_tgid || !may_map_watched(tgid) {
        return Ok(());
    }
    let mut lookup = FaultLookup {
        addr,
        inode: InodeId::default(),
        mapping: 0,
        index: 0,
        found: 0,
    };
    // SAFETY: the task is the current one (a trusted pointer), the callback is a
    // static function with the signature the helper expects, and `lookup` lives on
    // this stack frame for the duration of the call.
    let r = unsafe {
        bpf_find_vma(
            bpf_get_current_task_btf() as *mut _,
            addr,
            fault_vma_callback as *mut c_void,
            &mut lookup as *mut FaultLookup as *mut c_void,
            0,
        )
    };
    if r != 0 && r != -ENOENT {
        // The lookup did not happen (busy): say so rather than lose the store.
        data::emit(op::REPAIR, InodeId::default(), addr, 0, repair::FAULT_LOOKUP, NO_FD);
        return Ok(());
    }
    if r != 0 || lookup.found == 0 {
        return Ok(());
    }
    // A fault on a large folio maps (and makes writable) the whole folio at once,
    // so its other pages take no fault of their own: report the folio cached at
    // that index, or the page alone when the cache holds none yet.
    let (offset, len) = match cached_folio(cfg, lookup.mapping, lookup.index) {
        Ok(Some((first, pages))) => (first * PAGE_SIZE, pages * PAGE_SIZE),
        _ => (lookup.index * PAGE_SIZE, PAGE_SIZE),
    };
    data::emit(op::WRITEBACK, lookup.inode, offset, len, 0, NO_FD);
    Ok(())
}

/// `long (*callback_fn)(struct task_struct *task, struct vm_area_struct *vma, void *ctx)`.
///
/// Runs with the mmap lock held; only reads the VMA.
#[inline(never)]
extern "C" fn fault_vma_callback(_task: *mut c_void, vma: *mut c_void, ctx: *mut c_void) -> i64 {
    let lookup = ctx as *mut FaultLookup;
    let Some(cfg) = CONFIG.get(0) else { return 0 };
    // SAFETY: `ctx` is the caller's `FaultLookup`, passed through by the helper.
    let addr = unsafe { (*lookup).addr };
    if let Ok(Some((inode, mapping, index))) = shared_file_page(cfg, vma, addr) {
        // SAFETY: as above.
        unsafe {
            (*lookup).inode = inode;
            (*lookup).mapping = mapping;
            (*lookup).index = index;
            (*lookup).found = 1;
        }
    }
    0
}

/// The regular file, its page cache and the file page index that `addr` maps, if
/// `vma` is a shared writable mapping of a file in the watched tree's filesystem.
#[inline(always)]
fn shared_file_page(cfg: &Config, vma: *mut c_void, addr: u64) -> Res<Option<(InodeId, u64, u64)>> {
    let o = &cfg.offsets;
    let vma = untyped(vma as u64)?;
    let flags: u64 = read(vma, o.vma_vm_flags)?;
    if flags & (VM_SHARED | VM_WRITE) != VM_SHARED | VM_WRITE {
        return Ok(None);
    }
    let file = read_ptr(vma, o.vma_vm_file)?;
    let inode = file_inode(o, file)?;
    if !inode_is_reg(o, inode)? {
        return Ok(None);
    }
    let mapping = read_ptr(file, o.file_f_mapping)?;
    let start: u64 = read(vma, o.vma_vm_start)?;
    let pgoff: u64 = read(vma, o.vma_vm_pgoff)?;
    let index = pgoff + (addr.saturating_sub(start) >> PAGE_SHIFT);
    let Some(id) = watched(cfg, inode)? else {
        return Ok(None);
    };
    Ok(Some((id, mapping, index)))
}

/// xarray entry encoding (include/linux/xarray.h, `XA_CHUNK_SHIFT` 6).
const XA_CHUNK_SHIFT: u64 = 6;
const XA_CHUNK_MASK: u64 = (1 << XA_CHUNK_SHIFT) - 1;
/// Levels needed for any page index of a 64-bit `loff_t` (52 bits / 6 per level).
const XA_MAX_DEPTH: usize = 9;

#[inline(always)]
fn xa_is_internal(entry: u64) -> bool {
    entry & 3 == 2
}

#[inline(always)]
fn xa_is_node(entry: u64) -> bool {
    xa_is_internal(entry) && entry > 4096
}

/// A sibling entry (the other slots of a multi-index entry) points at the slot
/// holding the entry itself.
#[inline(always)]
fn xa_sibling(entry: u64) -> Option<u64> {
    (xa_is_internal(entry) && entry < (((XA_CHUNK_MASK) << 2) | 2)).then_some(entry >> 2)
}

/// The folio the page cache of `mapping` holds at `index`, as (first page index,
/// page count): a read-only walk of `mapping->i_pages` as `xas_load()` does it.
/// A concurrent change can make this see a stale node; the answer is then
/// checked against the folio's own index and at worst falls back to the page.
#[inline(always)]
fn cached_folio(cfg: &Config, mapping: u64, index: u64) -> Res<Option<(u64, u64)>> {
    let o = &cfg.offsets;
    let mut entry: u64 = read(mapping, o.mapping_i_pages + o.xarray_xa_head)?;
    if xa_is_node(entry) {
        let shift: u8 = read(entry - 2, o.xa_node_shift)?;
        if (index >> shift) > XA_CHUNK_MASK {
            return Ok(None);
        }
    } else if index != 0 {
        return Ok(None);
    }
    for _ in 0..XA_MAX_DEPTH {
        if !xa_is_node(entry) {
            break;
        }
        let node = entry - 2;
        let shift: u8 = read(node, o.xa_node_shift)?;
        let slot = (index >> (shift as u64 & 63)) & XA_CHUNK_MASK;
        entry = read(node, o.xa_node_slots + slot * 8)?;
        if let Some(sibling) = xa_sibling(entry) {
            entry = read(node, o.xa_node_slots + (sibling & XA_CHUNK_MASK) * 8)?;
        }
        if shift == 0 {
            break;
        }
    }
    // Empty, a shadow/swap value entry (bit 0), or an internal entry left over.
    if entry == 0 || entry & 3 != 0 {
        return Ok(None);
    }
    let first: u64 = read(entry, o.folio_index)?;
    let pages = 1u64 << folio_order(cfg, entry);
    if first > index || index >= first + pages {
        return Ok(None);
    }
    Ok(Some((first, pages)))
}
