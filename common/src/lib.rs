//! The `#[repr(C)]` ABI between the eBPF capture programs and the agent.
//!
//! Every record in the ring buffer starts with an [`EventHeader`]; its `kind` says
//! which struct follows. Fields are fixed-width integers laid out without implicit
//! padding so both sides agree on the bytes.
//!
//! # Layout
//! - [`EventHeader`], [`DataEvent`], [`PathEvent`]: ring-buffer records.
//! - [`Config`], [`KernelOffsets`]: the single-slot config map the agent fills.
//! - [`Calibration`]: how the kernel names a directory the agent opened.
//! - [`AncestorKey`]: the directories above the watched root (`ANCESTORS` map).
//! - [`op`]: operation codes; [`repair`]: why a repair was asked for.
#![no_std]

/// Longest path prefix copied from user memory, including the terminating NUL.
pub const PATH_LEN: usize = 256;

/// Names of the maps and programs, so the loader and the programs cannot drift apart.
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const CONFIG: &str = "CONFIG";
    pub const DROPS: &str = "DROPS";
    pub const CALIBRATION: &str = "CALIBRATION";
    /// `tp_btf/sys_exit`: every syscall; attached only for 32-bit (ia32, x32)
    /// programs, whose syscalls the classic tracepoints do not report.
    pub const SYS_EXIT: &str = "sluice_sys_exit";
    /// Classic tracepoint program attached to `syscalls/sys_exit_<name>` for each
    /// of [`super::EXIT_SYSCALLS`]: only those syscalls pay for capture.
    pub const SYS_EXIT_TP: &str = "sluice_sys_exit_tp";
    /// `tp_btf/sched_process_fork`: a child inherits its parent's shared mappings.
    pub const PROCESS_FORK: &str = "sluice_process_fork";
    /// `tp_btf/sched_process_exec`: announces 32-bit programs.
    pub const PROCESS_EXEC: &str = "sluice_process_exec";
    /// Processes (tgid) that may hold a shared mapping of a watched file.
    pub const MAPPERS: &str = "MAPPERS";
    pub const DIRTY_FOLIO: &str = "sluice_dirty_folio";
    pub const PAGE_FAULT_USER: &str = "sluice_page_fault_user";
    pub const IO_URING_COMPLETE: &str = "sluice_io_uring_complete";
    pub const IO_URING_SEEN: &str = "IO_URING_SEEN";
    pub const ANCESTORS: &str = "ANCESTORS";
    pub const WRITE_ENTRY: &str = "WRITE_ENTRY";
    /// Classic tracepoint program attached to `syscalls/sys_enter_{write,writev,
    /// pwrite64,pwritev,pwritev2}` (see [`super::ENTRY_SYSCALLS`]).
    pub const SYS_ENTER_WRITE: &str = "sluice_sys_enter_write";
    /// fexit programs on VFS functions (see [`super::vfs`]).
    pub const VFS_WRITE: &str = "sluice_vfs_write";
    pub const VFS_WRITEV: &str = "sluice_vfs_writev";
    pub const VFS_ITER_WRITE: &str = "sluice_vfs_iter_write";
    pub const VFS_IOCB_ITER_WRITE: &str = "sluice_vfs_iocb_iter_write";
    pub const VFS_FALLOCATE: &str = "sluice_vfs_fallocate";
    pub const DO_TRUNCATE: &str = "sluice_do_truncate";
}

/// Bits of [`Config::data_from_vfs`]: which data operations an attached fexit
/// program reports, so `sys_exit` skips the matching syscalls (no double reports).
pub mod vfs {
    /// `fexit/vfs_write` is attached: skip write, pwrite64 at `sys_exit`.
    pub const WRITE: u32 = 1 << 0;
    /// `fexit/vfs_writev` is attached: skip writev, pwritev, pwritev2.
    pub const WRITEV: u32 = 1 << 1;
    /// `fexit/do_truncate` is attached: skip ftruncate.
    pub const TRUNCATE: u32 = 1 << 2;
    /// `fexit/vfs_fallocate` is attached: skip fallocate.
    pub const FALLOCATE: u32 = 1 << 3;
}

/// Record kinds stored in [`EventHeader::kind`].
pub mod kind {
    /// A [`super::DataEvent`].
    pub const DATA: u32 = 1;
    /// A [`super::PathEvent`].
    pub const PATH: u32 = 2;
}

/// Operation codes stored in [`DataEvent::op`] and [`PathEvent::op`].
pub mod op {
    /// write, pwrite64, writev, pwritev, pwritev2, native AIO writes, copies into
    /// the file: `offset`/`len` are the bytes written (a range that contains them
    /// when the position was shared with another thread). Also the destination
    /// range of a reflink (`FICLONE`: the whole file, `FICLONERANGE`) and of a
    /// btrfs encoded write: its contents changed without a write.
    pub const WRITE: u32 = 1;
    /// ftruncate: `offset` is the new size.
    pub const TRUNCATE: u32 = 2;
    /// fallocate: `offset`/`len` are the range, `flags` the mode.
    pub const FALLOCATE: u32 = 3;
    /// fchmod, fchown, futimens (utimensat with a NULL path): metadata of an open file.
    pub const FD_META: u32 = 4;
    /// A page-cache folio of the file became dirty outside the write-family syscalls
    /// (mmap stores, io_uring buffered writes, in-kernel writers): `offset`/`len` is
    /// the folio; or a user write fault on a shared writable file mapping (an mmap
    /// store, possibly to a folio already dirty): `offset`/`len` is the page.
    /// `fd` is [`super::NO_FD`].
    pub const WRITEBACK: u32 = 5;
    /// A sync barrier: `flags` is one of [`super::sync_kind`], `offset`/`len` the
    /// range (`len` [`super::TO_END`] for "to the end of the file"). A zero `inode`
    /// means "not known" (syncfs names a filesystem; msync of an unresolvable address).
    pub const SYNC: u32 = 6;
    /// The process set up or entered an io_uring; `inode` is zero. Sent at most once
    /// per process per [`super::IO_URING_RENOTIFY_NS`].
    pub const IO_URING_USER: u32 = 7;
    /// The file may have changed in a way that was not decoded into a range (an
    /// io_uring operation other than a write: fallocate, ftruncate, fsetxattr,
    /// splice, uring_cmd, or an open with O_CREAT/O_TRUNC): `offset`/`len` is the
    /// whole file as the kernel sized it (`[0, i_size)`), and its metadata and
    /// extended attributes must be read again too. `fd` is the descriptor when one
    /// names the file in the process (a ring open's result), else [`super::NO_FD`].
    pub const CHANGED: u32 = 8;
    /// Files on some filesystem may have changed in a way the programs could not
    /// decode: `flags` is one of [`super::repair`], `offset` a detail (a syscall or
    /// opcode number, a count). `inode` is zero. The agent must repair (compare
    /// the tree) rather than trust the event stream.
    pub const REPAIR: u32 = 9;

    /// open/openat/openat2/creat with O_CREAT or O_TRUNC; `target` is the opened inode.
    pub const OPEN_CREATE: u32 = 10;
    pub const MKDIR: u32 = 11;
    pub const RMDIR: u32 = 12;
    pub const UNLINK: u32 = 13;
    /// rename/renameat/renameat2; `flags` carries RENAME_EXCHANGE / RENAME_NOREPLACE.
    pub const RENAME: u32 = 14;
    /// link/linkat: `path1` is the existing name, `path2` the new one.
    pub const LINK: u32 = 15;
    /// symlink/symlinkat: `path1` is the new link, `path2` its target text.
    pub const SYMLINK: u32 = 16;
    /// chmod/fchmodat, chown/lchown/fchownat, utimensat with a path.
    pub const PATH_META: u32 = 17;
    /// truncate(2) by path: `size` is the new size.
    pub const PATH_TRUNCATE: u32 = 18;
    /// mknod/mknodat (FIFOs, device nodes); `size` is the `dev` argument.
    pub const MKNOD: u32 = 19;
    /// setxattr/lsetxattr/removexattr/lremovexattr/setxattrat/removexattrat by path:
    /// `path2` is the attribute name, `flags` is non-zero when symlinks are not followed.
    pub const XATTR_PATH: u32 = 20;
    /// fsetxattr/fremovexattr (and the `*xattrat` calls with `AT_EMPTY_PATH`):
    /// `target` is the file, `size` the fd, `path2` the attribute name.
    pub const XATTR_FD: u32 = 21;
}

/// Why an [`op::REPAIR`] record was sent (`DataEvent::flags`).
pub mod repair {
    /// A 32-bit (ia32) syscall that can change files and is not decoded;
    /// `offset` is its ia32 number.
    pub const COMPAT_SYSCALL: u32 = 1;
    /// `io_getevents`/`io_pgetevents` returned more completions than one program
    /// run decodes ([`super::AIO_BATCH`]); `offset` is the count.
    pub const AIO_OVERFLOW: u32 = 2;
    /// A completed native AIO write whose request could not be read back (its
    /// `struct iocb` was unreadable or already reused, or its fd was closed):
    /// the file and range are unknown.
    pub const AIO_UNRESOLVED: u32 = 3;
    /// An io_uring namespace operation completed (renameat, unlinkat, mkdirat,
    /// symlinkat, linkat, setxattr, or an open with O_CREAT/O_TRUNC into a fixed
    /// file slot); `offset` is the opcode. Ring requests carry their paths in
    /// kernel memory the programs do not decode.
    pub const IO_URING_NAMESPACE: u32 = 4;
    /// A user write fault on a file mapping whose VMA could not be looked up
    /// (`bpf_find_vma` is busy while another program on the CPU uses it, e.g.
    /// a second agent): `offset` is the faulting user address; the agent finds
    /// the mapping in `/proc/<pid>/maps`.
    pub const FAULT_LOOKUP: u32 = 5;
    /// An `msync` whose range could not be looked up likewise: `offset` is the
    /// address. The agent takes it as a barrier for every mapped file.
    pub const MSYNC_LOOKUP: u32 = 6;
    /// A 32-bit (ia32 or x32) program was executed while 32-bit syscalls were
    /// not captured: the agent attaches their capture and compares the tree
    /// (the program may have changed files before the capture was in place).
    pub const COMPAT_EXEC: u32 = 7;
}

/// Most `struct iocb`s (`io_submit`) or `struct io_event`s (`io_getevents`) one
/// program run looks at; past it, completions are reported as
/// [`repair::AIO_OVERFLOW`].
pub const AIO_BATCH: u32 = 256;

/// The syscalls whose entry `SYS_ENTER_WRITE` watches (classic tracepoint names
/// under `syscalls/`): it records the file position (and size) of a shared file,
/// or the size of an `O_APPEND` file, so the exit can report a range that
/// contains the bytes written even when another thread moves the position.
pub const ENTRY_SYSCALLS: [&str; 5] = [
    "sys_enter_write",
    "sys_enter_writev",
    "sys_enter_pwrite64",
    "sys_enter_pwritev",
    "sys_enter_pwritev2",
];

/// The syscalls whose exit `SYS_EXIT_TP` decodes (classic tracepoints under
/// `syscalls/`, without the `sys_exit_` prefix): the 64-bit syscalls that can
/// change files, and `mmap` (which shared mappings exist). A name the running
/// kernel lacks (a syscall newer than it) is skipped.
pub const EXIT_SYSCALLS: [&str; 62] = [
    "write", "open", "pwrite64", "writev", "msync", "sendfile64", "fsync", "fdatasync",
    "truncate", "ftruncate", "rename", "mkdir", "rmdir", "creat", "link", "unlink",
    "symlink", "chmod", "fchmod", "chown", "fchown", "ioctl", "lchown", "utime",
    "mknod", "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr",
    "fremovexattr", "utimes", "io_getevents", "io_submit", "open_by_handle_at",
    "io_pgetevents", "openat", "mkdirat", "mknodat", "fchownat", "futimesat", "unlinkat",
    "renameat", "linkat", "symlinkat", "fchmodat", "splice", "sync_file_range",
    "utimensat", "fallocate", "pwritev", "syncfs", "renameat2", "copy_file_range",
    "pwritev2", "io_uring_setup", "io_uring_enter", "openat2", "fchmodat2", "setxattrat",
    "removexattrat", "mmap",
];

/// `InodeId::dev` of a path event's base directory that is one of the watched
/// root's ancestors (see [`AncestorKey`]): `ino` is then its position in the list
/// of ancestors the agent wrote (0 = the root's parent). Kernel `dev_t`s are
/// 32-bit, so this never names a real device.
pub const ANCESTOR_DEV: u64 = u64::MAX;

/// `DataEvent::fd` when the operation used no file descriptor of the process.
pub const NO_FD: u32 = u32::MAX;

/// `DataEvent::len` of a range that extends to the end of the file.
pub const TO_END: u64 = u64::MAX;

/// How long an [`op::IO_URING_USER`] notification suppresses the next one for the
/// same process (so a pid reused by a new process is announced again).
pub const IO_URING_RENOTIFY_NS: u64 = 10_000_000_000;

/// Sync barrier kinds stored in `DataEvent::flags` for [`op::SYNC`].
pub mod sync_kind {
    pub const FSYNC: u32 = 1;
    pub const FDATASYNC: u32 = 2;
    /// `offset`/`len` are the range (`len` [`super::TO_END`] for nbytes = 0).
    pub const SYNC_FILE_RANGE: u32 = 3;
    /// The whole filesystem of the fd; `inode` is zero.
    pub const SYNCFS: u32 = 4;
    /// `offset`/`len` are the file range the address range maps.
    pub const MSYNC: u32 = 5;
}

/// First field of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of [`kind`].
    pub kind: u32,
    /// Thread-group id (the process id userspace sees).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// One of [`op`].
    pub op: u32,
    /// `bpf_ktime_get_ns()` when the syscall returned (CLOCK_MONOTONIC).
    pub ts_ns: u64,
}

/// An inode as the kernel names it: `inode->i_sb->s_dev` and `inode->i_ino`.
///
/// `dev` is the kernel-internal `dev_t` (major << 20 | minor), which differs from
/// `stat(2)`'s `st_dev` encoding, and on btrfs names the superblock rather than the
/// subvolume's anonymous dev: compare it with the calibrated watched dev, never st_dev.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InodeId {
    pub dev: u64,
    pub ino: u64,
}

/// A completed change to the contents or metadata of an open file.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataEvent {
    pub header: EventHeader,
    pub inode: InodeId,
    /// Start of the changed range (or new size for TRUNCATE).
    pub offset: u64,
    /// Length of the changed range in bytes.
    pub len: u64,
    /// fallocate mode, or zero.
    pub flags: u32,
    /// The file descriptor used, so userspace can fall back to /proc/<pid>/fd.
    pub fd: u32,
}

/// A completed namespace operation (or a metadata change addressed by path).
///
/// Paths are copied as the program passed them; relative paths are resolved by
/// userspace against `base1`/`base2`, the directory inodes of the dirfd (or cwd).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathEvent {
    pub header: EventHeader,
    /// Directory `path1` is relative to (dirfd, or the cwd for AT_FDCWD).
    pub base1: InodeId,
    /// Directory `path2` is relative to.
    pub base2: InodeId,
    /// The inode the operation produced when the syscall returns one (a new fd).
    pub target: InodeId,
    /// Syscall flags: open flags, RENAME_* flags, AT_* flags.
    pub flags: u32,
    /// File mode argument (mkdir, open, mknod, chmod), or zero.
    pub mode: u32,
    /// Extra integer argument: new size for PATH_TRUNCATE, `dev` for MKNOD, fd for XATTR_FD.
    pub size: u64,
    pub path1: [u8; PATH_LEN],
    pub path2: [u8; PATH_LEN],
}

/// Byte offsets of the kernel struct fields the programs walk, read by the agent
/// from `/sys/kernel/btf/vmlinux` at start-up (the programs carry no CO-RE relocations).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_files: u64,
    pub task_fs: u64,
    pub files_fdt: u64,
    pub fdt_max_fds: u64,
    pub fdt_fd: u64,
    pub file_f_inode: u64,
    pub file_f_pos: u64,
    pub file_f_flags: u64,
    pub inode_i_ino: u64,
    pub inode_i_sb: u64,
    pub inode_i_mode: u64,
    pub sb_s_dev: u64,
    pub fs_pwd: u64,
    pub path_dentry: u64,
    pub dentry_d_inode: u64,
    /// `struct folio`: `flags`, `index`, `_flags_1` (holds the order of a large folio).
    pub folio_flags: u64,
    pub folio_index: u64,
    pub folio_flags_1: u64,
    /// Bit number of `PG_head` in `folio->flags` (set on large folios).
    pub pg_head: u64,
    pub mapping_host: u64,
    /// `inode->i_dentry`: an inode no dentry points at is internal to its filesystem.
    pub inode_i_dentry: u64,
    /// `struct vm_area_struct`: `vm_start`, `vm_pgoff`, `vm_file`, `vm_flags`.
    pub vma_vm_start: u64,
    pub vma_vm_pgoff: u64,
    pub vma_vm_file: u64,
    pub vma_vm_flags: u64,
    /// The page-cache lookup a user write fault does to find the folio it maps:
    /// `file->f_mapping`, `address_space->i_pages`, `xarray->xa_head`,
    /// `xa_node->shift`, `xa_node->slots`.
    pub file_f_mapping: u64,
    pub mapping_i_pages: u64,
    pub xarray_xa_head: u64,
    pub xa_node_shift: u64,
    pub xa_node_slots: u64,
    /// `struct io_kiocb`: `file`, `opcode`, and the rw command's `kiocb.ki_pos`
    /// (the command data overlays the start of the request). Zero when the kernel
    /// has no io_uring; the io_uring program is then not attached.
    pub io_kiocb_file: u64,
    pub io_kiocb_opcode: u64,
    pub io_rw_ki_pos: u64,
    /// `struct kiocb`: `ki_pos` (advanced past the bytes written by `write_iter`).
    pub kiocb_ki_pos: u64,
    /// `inode->i_size`: where `O_APPEND` writes land, and the extent of a clone.
    pub inode_i_size: u64,
    /// The reference count of a `struct file` (`f_ref`, a `file_ref_t`, since 6.13;
    /// `f_count` before) and its raw value when one reference is held (0 for
    /// `file_ref_t`, 1 for `f_count`): more means the file is shared.
    pub file_f_ref: u64,
    pub file_ref_one: u64,
    /// `files_struct->count`: above one, the fd table is shared by threads.
    pub files_count: u64,
    /// `task_struct.thread_info.status`, where x86 sets `TS_COMPAT` for the
    /// duration of a 32-bit syscall.
    pub task_ti_status: u64,
    /// `task_struct.tgid`: a forked child's process id.
    pub task_tgid: u64,
    /// `linux_binprm.buf`: the first bytes of an executed file (its ELF header).
    pub binprm_buf: u64,
    /// `super_block->s_magic`.
    pub sb_s_magic: u64,
    /// btrfs: `struct btrfs_inode` embeds the VFS inode at `vfs_inode`; its `root`
    /// is the subvolume, whose id is `root->root_key.objectid`. All zero when the
    /// kernel's BTF does not describe btrfs.
    pub btrfs_inode_vfs_inode: u64,
    pub btrfs_inode_root: u64,
    pub btrfs_root_objectid: u64,
    /// io_uring open requests (`struct io_open` overlays the request's command):
    /// `how.flags` and `file_slot`. Zero when unknown.
    pub io_open_flags: u64,
    pub io_open_file_slot: u64,
}

/// Single-slot configuration map written by the agent before it enables capture.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// `s_dev` of the watched filesystem; zero disables all capture.
    pub watched_dev: u64,
    /// The agent's own tgid, whose I/O is never reported.
    pub agent_tgid: u32,
    /// Non-zero while the agent is learning `watched_dev` (see [`Calibration`]).
    pub calibrating: u32,
    pub offsets: KernelOffsets,
    /// [`vfs`] bits: data operations reported by fexit programs on the VFS, which
    /// `sys_exit` then leaves alone. Zero in the plain `tp_btf` mode.
    pub data_from_vfs: u32,
    /// Non-zero when the `SYS_ENTER_WRITE` program is attached; without it the
    /// exit of a write to a shared or appending file reports the whole file.
    pub write_entry: u32,
    /// btrfs: the subvolume (`root_key.objectid`) the watched root lives in. An
    /// inode on `watched_dev` belongs to the watched tree only if it is in this
    /// subvolume: snapshots and other subvolumes share `s_dev` and inode numbers.
    /// Zero on other filesystems (no subvolume check).
    pub watched_subvol: u64,
    /// Non-zero once `SYS_EXIT` (32-bit syscalls) is attached: the exec of a
    /// 32-bit program is then no longer announced.
    pub compat_exits: u32,
    pub _padding: u32,
}

/// Written by the program when the agent opens its root directory while
/// `Config::calibrating` is set: how the kernel names the watched root.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Calibration {
    pub root: InodeId,
    pub seen: u64,
    /// The directory's btrfs subvolume id, or zero on other filesystems.
    pub subvol: u64,
}

/// Key of the `ANCESTORS` map: a directory above the watched root, as the kernel
/// names it, with its btrfs subvolume (zero elsewhere). The value is its position
/// in the agent's list (see [`ANCESTOR_DEV`]). A relative path whose base is one of
/// these may lead into the watched tree (`cd /srv && mv data/a data/b`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AncestorKey {
    pub dev: u64,
    pub ino: u64,
    pub subvol: u64,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are repr(C) integer-only structs with no padding.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Calibration {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::AncestorKey {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<EventHeader>(), 24);
        assert_eq!(size_of::<InodeId>(), 16);
        assert_eq!(size_of::<DataEvent>(), 24 + 16 + 8 + 8 + 4 + 4);
        assert_eq!(
            size_of::<PathEvent>(),
            24 + 16 * 3 + 4 + 4 + 8 + 2 * PATH_LEN
        );
        assert_eq!(size_of::<KernelOffsets>(), 47 * 8);
        assert_eq!(size_of::<Config>(), 16 + 47 * 8 + 8 + 8 + 8);
        assert_eq!(size_of::<Calibration>(), 16 + 8 + 8);
        assert_eq!(size_of::<AncestorKey>(), 24);
    }
}
