//! Walks kernel structs at offsets supplied by the agent (`KernelOffsets`).
//!
//! Every dereference goes through `bpf_probe_read_kernel`, so a stale or wrong
//! offset yields an error (and a skipped event), never a verifier rejection.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use sluice_common::{ANCESTOR_DEV, AncestorKey, Config, InodeId, KernelOffsets};

use crate::maps::ANCESTORS;

/// `AT_FDCWD` as the syscalls receive it in a 64-bit register.
pub const AT_FDCWD: i32 = -100;
const S_IFMT: u16 = 0o170000;
const S_IFDIR: u16 = 0o040000;
const S_IFREG: u16 = 0o100000;
/// `BTRFS_SUPER_MAGIC` (include/uapi/linux/magic.h).
const BTRFS_SUPER_MAGIC: u64 = 0x9123_683e;
/// `TS_COMPAT` (arch/x86/include/asm/thread_info.h): a 32-bit syscall is active.
/// A flag value, not a layout: the field holding it comes from BTF.
const TS_COMPAT: u32 = 0x0002;

pub type Res<T> = Result<T, i64>;

#[inline(always)]
pub fn read<T>(base: u64, off: u64) -> Res<T> {
    // SAFETY: bpf_probe_read_kernel tolerates any address and reports faults.
    unsafe { bpf_probe_read_kernel((base + off) as *const T) }.map_err(|e| e as i64)
}

#[inline(always)]
pub fn read_ptr(base: u64, off: u64) -> Res<u64> {
    let p: u64 = read(base, off)?;
    if p == 0 { Err(-1) } else { Ok(p) }
}

/// A BTF-typed pointer (a tracepoint argument, a helper's callback argument) as a
/// plain number. The verifier refuses adding a runtime offset to a typed pointer,
/// and every offset here comes from the agent at run time; copied through the
/// helper, the value loses its type and the reads above accept it.
#[inline(always)]
pub fn untyped(ptr: u64) -> Res<u64> {
    let slot = ptr;
    // SAFETY: reads this frame's own stack slot.
    unsafe { bpf_probe_read_kernel(&slot as *const u64) }.map_err(|e| e as i64)
}

#[inline(always)]
pub fn current_task() -> u64 {
    // SAFETY: the helper takes no arguments.
    unsafe { bpf_get_current_task() }
}

/// `task->files->fdt->fd[fd]`, bounds-checked against `fdt->max_fds`.
#[inline(always)]
pub fn file_of_fd(o: &KernelOffsets, task: u64, fd: i32) -> Res<u64> {
    if fd < 0 {
        return Err(-1);
    }
    let files = read_ptr(task, o.task_files)?;
    let fdt = read_ptr(files, o.files_fdt)?;
    let max_fds: u32 = read(fdt, o.fdt_max_fds)?;
    if fd as u32 >= max_fds {
        return Err(-1);
    }
    let fds = read_ptr(fdt, o.fdt_fd)?;
    read_ptr(fds, (fd as u64) * 8)
}

#[inline(always)]
pub fn file_inode(o: &KernelOffsets, file: u64) -> Res<u64> {
    read_ptr(file, o.file_f_inode)
}

#[inline(always)]
pub fn file_pos(o: &KernelOffsets, file: u64) -> Res<i64> {
    read(file, o.file_f_pos)
}

/// `(inode->i_sb->s_dev, inode->i_ino)`; `s_dev` is a 32-bit `dev_t` in the kernel.
#[inline(always)]
pub fn inode_id(o: &KernelOffsets, inode: u64) -> Res<InodeId> {
    let ino: u64 = read(inode, o.inode_i_ino)?;
    let sb = read_ptr(inode, o.inode_i_sb)?;
    let dev: u32 = read(sb, o.sb_s_dev)?;
    Ok(InodeId {
        dev: dev as u64,
        ino,
    })
}

#[inline(always)]
pub fn inode_is_reg(o: &KernelOffsets, inode: u64) -> Res<bool> {
    let mode: u16 = read(inode, o.inode_i_mode)?;
    Ok(mode & S_IFMT == S_IFREG)
}

#[inline(always)]
pub fn inode_is_dir(o: &KernelOffsets, inode: u64) -> Res<bool> {
    let mode: u16 = read(inode, o.inode_i_mode)?;
    Ok(mode & S_IFMT == S_IFDIR)
}

/// Whether the current syscall of `task` is a 32-bit one (int 0x80, sysenter, or
/// syscall from 32-bit code), whose numbers and argument registers are the ia32 ones.
#[inline(always)]
pub fn in_compat_syscall(o: &KernelOffsets, task: u64) -> Res<bool> {
    let status: u32 = read(task, o.task_ti_status)?;
    Ok(status & TS_COMPAT != 0)
}

/// The btrfs subvolume of a btrfs inode: `BTRFS_I(inode)->root->root_key.objectid`.
/// Only valid for inodes of a btrfs superblock.
#[inline(always)]
pub fn btrfs_subvol(o: &KernelOffsets, inode: u64) -> Res<u64> {
    let btrfs_inode = inode.wrapping_sub(o.btrfs_inode_vfs_inode);
    let root = read_ptr(btrfs_inode, o.btrfs_inode_root)?;
    read(root, o.btrfs_root_objectid)
}

/// The btrfs subvolume of any inode, zero when it is not on btrfs (or the kernel's
/// BTF does not describe btrfs).
#[inline(always)]
pub fn subvol_of(o: &KernelOffsets, inode: u64) -> Res<u64> {
    if o.btrfs_inode_vfs_inode == 0 {
        return Ok(0);
    }
    let sb = read_ptr(inode, o.inode_i_sb)?;
    let magic: u64 = read(sb, o.sb_s_magic)?;
    if magic != BTRFS_SUPER_MAGIC {
        return Ok(0);
    }
    btrfs_subvol(o, inode)
}

/// The id of `inode` when it belongs to the watched tree's filesystem: its
/// superblock is `watched_dev` and, on btrfs, it lives in the watched subvolume
/// (snapshots and other subvolumes share `s_dev` and inode numbers).
#[inline(always)]
pub fn watched(cfg: &Config, inode: u64) -> Res<Option<InodeId>> {
    let id = inode_id(&cfg.offsets, inode)?;
    if id.dev != cfg.watched_dev {
        return Ok(None);
    }
    if cfg.watched_subvol != 0 && btrfs_subvol(&cfg.offsets, inode)? != cfg.watched_subvol {
        return Ok(None);
    }
    Ok(Some(id))
}

/// `inode->i_size`.
#[inline(always)]
pub fn inode_size(o: &KernelOffsets, inode: u64) -> Res<u64> {
    let size: i64 = read(inode, o.inode_i_size)?;
    Ok(if size < 0 { 0 } else { size as u64 })
}

/// Whether `file` may be used by another thread or process at the same time:
/// more than one reference to it (a dup, a fork), or an fd table shared by
/// threads (`task->files->count > 1`).
#[inline(always)]
pub fn file_shared(o: &KernelOffsets, task: u64, file: u64) -> Res<bool> {
    let refs: i64 = read(file, o.file_f_ref)?;
    if refs > o.file_ref_one as i64 {
        return Ok(true);
    }
    fd_table_shared(o, task)
}

/// Whether `task`'s fd table is shared with other threads (`files->count > 1`).
#[inline(always)]
pub fn fd_table_shared(o: &KernelOffsets, task: u64) -> Res<bool> {
    let files = read_ptr(task, o.task_files)?;
    let count: i32 = read(files, o.files_count)?;
    Ok(count > 1)
}

/// `file->f_flags`.
#[inline(always)]
pub fn file_flags(o: &KernelOffsets, file: u64) -> Res<u32> {
    read(file, o.file_f_flags)
}

/// `task->fs->pwd.dentry->d_inode`.
#[inline(always)]
fn cwd_inode(o: &KernelOffsets, task: u64) -> Res<u64> {
    let fs = read_ptr(task, o.task_fs)?;
    let dentry = read_ptr(fs, o.fs_pwd + o.path_dentry)?;
    read_ptr(dentry, o.dentry_d_inode)
}

/// The inode of an open fd.
#[inline(always)]
pub fn fd_inode(o: &KernelOffsets, task: u64, fd: i32) -> Res<u64> {
    let file = file_of_fd(o, task, fd)?;
    file_inode(o, file)
}

/// The directory a `*at` path is relative to: the dirfd's inode, or the cwd.
///
/// - In the watched tree's filesystem (and subvolume): its id.
/// - One of the watched root's ancestors (`ANCESTORS`): `{ dev: ANCESTOR_DEV, ino:
///   its position }`, so userspace can resolve the path from the ancestor's path.
/// - On the watched superblock but in another btrfs subvolume (a snapshot): the
///   zero id, so it can never be taken for a directory of the tree.
/// - Elsewhere: its id (userspace knows it is outside by its dev).
///
/// Unresolvable bases come back as the zero id rather than dropping the event,
/// because an absolute path does not need one.
#[inline(always)]
pub fn base_dir(cfg: &Config, task: u64, dirfd: i32) -> InodeId {
    let o = &cfg.offsets;
    let inode = if dirfd == AT_FDCWD {
        cwd_inode(o, task)
    } else {
        fd_inode(o, task, dirfd)
    };
    let Ok(inode) = inode else {
        return InodeId::default();
    };
    let Ok(id) = inode_id(o, inode) else {
        return InodeId::default();
    };
    let subvol = if id.dev == cfg.watched_dev && cfg.watched_subvol != 0 {
        btrfs_subvol(o, inode).unwrap_or(0)
    } else {
        subvol_of(o, inode).unwrap_or(0)
    };
    if id.dev == cfg.watched_dev && subvol == cfg.watched_subvol {
        return id;
    }
    let key = AncestorKey {
        dev: id.dev,
        ino: id.ino,
        subvol,
    };
    // SAFETY: the value is a plain u64 copied out immediately.
    if let Some(position) = unsafe { ANCESTORS.get(&key) } {
        return InodeId {
            dev: ANCESTOR_DEV,
            ino: *position,
        };
    }
    if id.dev == cfg.watched_dev {
        InodeId::default()
    } else {
        id
    }
}
