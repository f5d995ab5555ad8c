//! 32-bit (ia32) syscalls: a 32-bit program, or a 64-bit one using `int 0x80`.
//!
//! They reach the same `sys_exit` tracepoint with ia32 syscall numbers (compat
//! `write` is 4, which is 64-bit `stat`) and their arguments in `bx, cx, dx, si,
//! di, bp`. The kernel marks them with `TS_COMPAT` in `thread_info.status` for
//! the duration of the syscall, which `sys_exit` checks whenever the number is in
//! either table, so a 32-bit syscall is never decoded as a 64-bit one.
//!
//! [`translate`] maps each ia32 syscall that can change files to the 64-bit
//! syscall with the same meaning and its arguments to the 64-bit layout: 32-bit
//! registers are zero-extended, and a 64-bit offset that ia32 splits over two
//! registers (low word first) is joined. Pointer arguments keep pointing at the
//! same user memory; the structs they point to (`open_how`, `file_clone_range`,
//! `iocb`, `io_event`, `loff_t`) have the same layout for both, except the
//! `iocb` pointer array of `io_submit` (32-bit pointers, handled by `aio`).
//!
//! Numbers: arch/x86/entry/syscalls/syscall_32.tbl. Since 5.1 (424 and up) both
//! tables share numbers.

use super::{SysArgs, sys_exit::nr};

mod nr32 {
    pub const WRITE: u64 = 4;
    pub const OPEN: u64 = 5;
    pub const CREAT: u64 = 8;
    pub const LINK: u64 = 9;
    pub const UNLINK: u64 = 10;
    pub const MKNOD: u64 = 14;
    pub const CHMOD: u64 = 15;
    /// `lchown16`
    pub const LCHOWN16: u64 = 16;
    pub const UTIME: u64 = 30;
    pub const RENAME: u64 = 38;
    pub const MKDIR: u64 = 39;
    pub const RMDIR: u64 = 40;
    pub const IOCTL: u64 = 54;
    pub const SYMLINK: u64 = 83;
    pub const TRUNCATE: u64 = 92;
    pub const FTRUNCATE: u64 = 93;
    pub const FCHMOD: u64 = 94;
    /// `fchown16`
    pub const FCHOWN16: u64 = 95;
    pub const FSYNC: u64 = 118;
    pub const MSYNC: u64 = 144;
    pub const WRITEV: u64 = 146;
    pub const FDATASYNC: u64 = 148;
    pub const PWRITE64: u64 = 181;
    /// `chown16`
    pub const CHOWN16: u64 = 182;
    pub const SENDFILE: u64 = 187;
    pub const TRUNCATE64: u64 = 193;
    pub const FTRUNCATE64: u64 = 194;
    pub const LCHOWN32: u64 = 198;
    pub const FCHOWN32: u64 = 207;
    pub const CHOWN32: u64 = 212;
    pub const SETXATTR: u64 = 226;
    pub const LSETXATTR: u64 = 227;
    pub const FSETXATTR: u64 = 228;
    pub const REMOVEXATTR: u64 = 235;
    pub const LREMOVEXATTR: u64 = 236;
    pub const FREMOVEXATTR: u64 = 237;
    pub const SENDFILE64: u64 = 239;
    pub const IO_GETEVENTS: u64 = 247;
    pub const IO_SUBMIT: u64 = 248;
    pub const UTIMES: u64 = 271;
    pub const OPENAT: u64 = 295;
    pub const MKDIRAT: u64 = 296;
    pub const MKNODAT: u64 = 297;
    pub const FCHOWNAT: u64 = 298;
    pub const FUTIMESAT: u64 = 299;
    pub const UNLINKAT: u64 = 301;
    pub const RENAMEAT: u64 = 302;
    pub const LINKAT: u64 = 303;
    pub const SYMLINKAT: u64 = 304;
    pub const FCHMODAT: u64 = 306;
    pub const SPLICE: u64 = 313;
    pub const SYNC_FILE_RANGE: u64 = 314;
    pub const UTIMENSAT: u64 = 320;
    pub const FALLOCATE: u64 = 324;
    pub const PWRITEV: u64 = 334;
    /// `old_mmap`: its arguments are in a struct in user memory.
    pub const OLD_MMAP: u64 = 90;
    pub const MMAP2: u64 = 192;
    pub const OPEN_BY_HANDLE_AT: u64 = 342;
    pub const SYNCFS: u64 = 344;
    pub const RENAMEAT2: u64 = 353;
    pub const COPY_FILE_RANGE: u64 = 377;
    pub const PWRITEV2: u64 = 379;
    pub const IO_PGETEVENTS: u64 = 385;
    pub const UTIMENSAT_TIME64: u64 = 412;
    pub const IO_PGETEVENTS_TIME64: u64 = 416;
}

/// Whether `n` is an ia32 syscall [`translate`] decodes (cheap: no reads).
#[inline(always)]
pub const fn decoded(n: u64) -> bool {
    target(n).is_some()
}

/// The 64-bit syscall an ia32 one means, when its arguments need no rework
/// (`Some(0)` when they do; see [`translate`]).
#[inline(always)]
const fn target(n: u64) -> Option<u64> {
    use nr32::*;
    Some(match n {
        WRITE => nr::WRITE,
        OPEN => nr::OPEN,
        CREAT => nr::CREAT,
        LINK => nr::LINK,
        UNLINK => nr::UNLINK,
        MKNOD => nr::MKNOD,
        CHMOD => nr::CHMOD,
        LCHOWN16 | LCHOWN32 => nr::LCHOWN,
        UTIME => nr::UTIME,
        RENAME => nr::RENAME,
        MKDIR => nr::MKDIR,
        RMDIR => nr::RMDIR,
        IOCTL => nr::IOCTL,
        SYMLINK => nr::SYMLINK,
        TRUNCATE => nr::TRUNCATE,
        FTRUNCATE => nr::FTRUNCATE,
        FCHMOD => nr::FCHMOD,
        FCHOWN16 | FCHOWN32 => nr::FCHOWN,
        FSYNC => nr::FSYNC,
        MSYNC => nr::MSYNC,
        WRITEV => nr::WRITEV,
        FDATASYNC => nr::FDATASYNC,
        CHOWN16 | CHOWN32 => nr::CHOWN,
        SENDFILE | SENDFILE64 => nr::SENDFILE,
        SETXATTR => nr::SETXATTR,
        LSETXATTR => nr::LSETXATTR,
        FSETXATTR => nr::FSETXATTR,
        REMOVEXATTR => nr::REMOVEXATTR,
        LREMOVEXATTR => nr::LREMOVEXATTR,
        FREMOVEXATTR => nr::FREMOVEXATTR,
        IO_GETEVENTS => nr::IO_GETEVENTS,
        IO_SUBMIT => nr::IO_SUBMIT,
        UTIMES => nr::UTIMES,
        OPENAT => nr::OPENAT,
        MKDIRAT => nr::MKDIRAT,
        MKNODAT => nr::MKNODAT,
        FCHOWNAT => nr::FCHOWNAT,
        FUTIMESAT => nr::FUTIMESAT,
        UNLINKAT => nr::UNLINKAT,
        RENAMEAT => nr::RENAMEAT,
        LINKAT => nr::LINKAT,
        SYMLINKAT => nr::SYMLINKAT,
        FCHMODAT => nr::FCHMODAT,
        SPLICE => nr::SPLICE,
        UTIMENSAT | UTIMENSAT_TIME64 => nr::UTIMENSAT,
        OPEN_BY_HANDLE_AT => nr::OPEN_BY_HANDLE_AT,
        SYNCFS => nr::SYNCFS,
        RENAMEAT2 => nr::RENAMEAT2,
        COPY_FILE_RANGE => nr::COPY_FILE_RANGE,
        IO_PGETEVENTS | IO_PGETEVENTS_TIME64 => nr::IO_PGETEVENTS,
        // (addr, len, prot, flags, fd, pgoff)
        MMAP2 => nr::MMAP,
        // Shared numbers.
        nr::IO_URING_SETUP
        | nr::IO_URING_ENTER
        | nr::OPENAT2
        | nr::FCHMODAT2
        | nr::SETXATTRAT
        | nr::REMOVEXATTRAT => n,
        // Offsets split over two registers.
        PWRITE64 | TRUNCATE64 | FTRUNCATE64 | SYNC_FILE_RANGE | FALLOCATE | PWRITEV | PWRITEV2 | OLD_MMAP => 0,
        _ => return None,
    })
}

/// The 64-bit syscall and arguments an ia32 syscall `n` with argument registers
/// `r` (`bx, cx, dx, si, di, bp`) stands for, or `None` if it changes no file.
#[inline(always)]
pub fn translate(n: u64, r: &[u64; 6]) -> Option<(u64, SysArgs)> {
    const LOW: u64 = 0xffff_ffff;
    let a: SysArgs = [
        r[0] & LOW,
        r[1] & LOW,
        r[2] & LOW,
        r[3] & LOW,
        r[4] & LOW,
        r[5] & LOW,
    ];
    let pair = |lo: u64, hi: u64| lo | (hi << 32);
    match target(n)? {
        0 => Some(match n {
            // (fd, buf, count, pos_lo, pos_hi)
            nr32::PWRITE64 => (nr::PWRITE64, [a[0], a[1], a[2], pair(a[3], a[4]), 0, 0]),
            // (fd, vec, vlen, pos_lo, pos_hi)
            nr32::PWRITEV => (nr::PWRITEV, [a[0], a[1], a[2], pair(a[3], a[4]), 0, 0]),
            // (fd, vec, vlen, pos_lo, pos_hi, flags)
            nr32::PWRITEV2 => (nr::PWRITEV2, [a[0], a[1], a[2], pair(a[3], a[4]), 0, a[5]]),
            // (path, len_lo, len_hi)
            nr32::TRUNCATE64 => (nr::TRUNCATE, [a[0], pair(a[1], a[2]), 0, 0, 0, 0]),
            // (fd, len_lo, len_hi)
            nr32::FTRUNCATE64 => (nr::FTRUNCATE, [a[0], pair(a[1], a[2]), 0, 0, 0, 0]),
            // (fd, off_lo, off_hi, n_lo, n_hi, flags)
            nr32::SYNC_FILE_RANGE => (
                nr::SYNC_FILE_RANGE,
                [a[0], pair(a[1], a[2]), pair(a[3], a[4]), a[5], 0, 0],
            ),
            // (fd, mode, off_lo, off_hi, len_lo, len_hi)
            nr32::FALLOCATE => (
                nr::FALLOCATE,
                [a[0], a[1], pair(a[2], a[3]), pair(a[4], a[5]), 0, 0],
            ),
            // Not read from user memory: taken as a shared mapping of a file.
            nr32::OLD_MMAP => (nr::MMAP, [0, 0, 0, super::fault::MAP_SHARED, super::fault::UNKNOWN_FD, 0]),
            _ => return None,
        }),
        n64 => Some((n64, a)),
    }
}
