//! Sync barriers: the points where an application asks for durability, which the
//! agent can mirror on the replica.
//!
//! Prototypes:
//! - `int fsync(int fd)`, `int fdatasync(int fd)`
//! - `int sync_file_range(int fd, loff_t offset, loff_t nbytes, unsigned int flags)`
//!   (`nbytes == 0` means "to the end of the file")
//! - `int syncfs(int fd)`: the whole filesystem `fd` is on; reported with a zero inode
//! - `int msync(unsigned long start, size_t len, int flags)`: the address is turned
//!   into a file range with `bpf_find_vma` (`vm_file`, `vm_start`, `vm_pgoff`); a
//!   range whose first page is not a file mapping on the watched filesystem is
//!   dropped. Only the VMA containing `start` is looked at, so an msync spanning
//!   several mappings reports the first one's file with the full length.
//!
//! `sync(2)` names no file and is not reported.

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_get_current_task_btf, generated::bpf_find_vma},
};
use sluice_common::{Config, InodeId, NO_FD, TO_END, op, repair, sync_kind};

use super::{SysArgs, data, sys_exit::nr};
use crate::{
    kernel::{Res, current_task, fd_inode, file_inode, read, read_ptr, untyped, watched},
    maps::CONFIG,
};

const PAGE_SHIFT: u64 = 12;
/// `ENOENT`: no VMA contains the address.
const ENOENT: i64 = 2;

pub fn on_exit(cfg: &Config, n: u64, a: &SysArgs) -> Res<()> {
    let o = &cfg.offsets;
    if n == nr::MSYNC {
        return on_msync(a[0], a[1]);
    }
    let fd = a[0] as i32;
    let Some(inode) = watched(cfg, fd_inode(o, current_task(), fd)?)? else {
        return Ok(());
    };
    let (kind, inode, offset, len) = match n {
        nr::FSYNC => (sync_kind::FSYNC, inode, 0, TO_END),
        nr::FDATASYNC => (sync_kind::FDATASYNC, inode, 0, TO_END),
        nr::SYNC_FILE_RANGE => {
            let len = if a[2] == 0 { TO_END } else { a[2] };
            (sync_kind::SYNC_FILE_RANGE, inode, a[1], len)
        }
        nr::SYNCFS => (sync_kind::SYNCFS, InodeId::default(), 0, TO_END),
        _ => return Ok(()),
    };
    data::emit(op::SYNC, inode, offset, len, kind, fd as u32);
    Ok(())
}

/// What the `bpf_find_vma` callback learns about the mapping containing `addr`.
#[repr(C)]
struct VmaLookup {
    addr: u64,
    inode: InodeId,
    offset: u64,
    found: u64,
}

fn on_msync(addr: u64, len: u64) -> Res<()> {
    let mut lookup = VmaLookup {
        addr,
        inode: InodeId::default(),
        offset: 0,
        found: 0,
    };
    // SAFETY: the task is the current one (a trusted pointer), the callback is a
    // static function with the signature the helper expects, and `lookup` lives on
    // this stack frame for the duration of the call.
    let r = unsafe {
        bpf_find_vma(
            bpf_get_current_task_btf() as *mut _,
            addr,
            vma_callback as *mut c_void,
            &mut lookup as *mut VmaLookup as *mut c_void,
            0,
        )
    };
    if r != 0 && r != -ENOENT {
        // The lookup did not happen (busy, see `repair::MSYNC_LOOKUP`).
        data::emit(op::REPAIR, InodeId::default(), addr, 0, repair::MSYNC_LOOKUP, NO_FD);
        return Ok(());
    }
    if r != 0 || lookup.found == 0 {
        return Ok(());
    }
    data::emit(
        op::SYNC,
        lookup.inode,
        lookup.offset,
        len,
        sync_kind::MSYNC,
        NO_FD,
    );
    Ok(())
}

/// `long (*callback_fn)(struct task_struct *task, struct vm_area_struct *vma, void *ctx)`.
///
/// Runs with the mmap lock held; only reads the VMA. The config is looked up again
/// here because a callback cannot capture the caller's references.
#[inline(never)]
extern "C" fn vma_callback(_task: *mut c_void, vma: *mut c_void, ctx: *mut c_void) -> i64 {
    let lookup = ctx as *mut VmaLookup;
    let Some(cfg) = CONFIG.get(0) else { return 0 };
    // SAFETY: `ctx` is the caller's `VmaLookup`, passed through by the helper.
    let addr = unsafe { (*lookup).addr };
    if let Ok(Some((inode, offset))) = vma_file_range(cfg, vma, addr) {
        // SAFETY: as above.
        unsafe {
            (*lookup).inode = inode;
            (*lookup).offset = offset;
            (*lookup).found = 1;
        }
    }
    0
}

/// The file and file offset that user address `addr` maps in `vma`, if the file
/// is in the watched tree's filesystem.
#[inline(always)]
fn vma_file_range(cfg: &Config, vma: *mut c_void, addr: u64) -> Res<Option<(InodeId, u64)>> {
    let o = &cfg.offsets;
    let vma = untyped(vma as u64)?;
    let file = read_ptr(vma, o.vma_vm_file)?;
    let start: u64 = read(vma, o.vma_vm_start)?;
    let pgoff: u64 = read(vma, o.vma_vm_pgoff)?;
    let Some(inode) = watched(cfg, file_inode(o, file)?)? else {
        return Ok(None);
    };
    Ok(Some((
        inode,
        (pgoff << PAGE_SHIFT) + addr.saturating_sub(start),
    )))
}
