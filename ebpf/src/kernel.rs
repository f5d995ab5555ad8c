//! Walks kernel structs at offsets supplied by the agent (`KernelOffsets`).
//!
//! Every dereference goes through `bpf_probe_read_kernel`, so a stale or wrong
//! offset yields an error (and a skipped event), never a verifier rejection.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use sluice_common::{InodeId, KernelOffsets};

/// `AT_FDCWD` as the syscalls receive it in a 64-bit register.
pub const AT_FDCWD: i32 = -100;
const S_IFMT: u16 = 0o170000;
const S_IFDIR: u16 = 0o040000;
const S_IFREG: u16 = 0o100000;

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
/// Unresolvable bases come back as the zero id rather than dropping the event,
/// because an absolute path does not need one.
#[inline(always)]
pub fn base_dir(o: &KernelOffsets, task: u64, dirfd: i32) -> InodeId {
    let inode = if dirfd == AT_FDCWD {
        cwd_inode(o, task)
    } else {
        fd_inode(o, task, dirfd)
    };
    match inode {
        Ok(inode) => inode_id(o, inode).unwrap_or_default(),
        Err(_) => InodeId::default(),
    }
}
