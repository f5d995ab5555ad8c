//! Decoding ring-buffer records into [`Event`]s.

use std::mem::size_of;

use sluice_common::{DataEvent, EventHeader, InodeId, PathEvent, kind, op, repair, sync_kind};

/// One completed operation observed in the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Process (thread-group) id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// CLOCK_MONOTONIC nanoseconds when the syscall returned.
    pub ts_ns: u64,
    pub kind: EventKind,
}

/// What happened. Paths are the bytes the process passed, up to the first NUL
/// (at most 255 bytes: longer paths are cut), relative to the `base` directory
/// inode unless absolute. A base whose `dev` is [`sluice_common::ANCESTOR_DEV`] is
/// one of the root's ancestors: [`super::Capture::ancestors`]`[ino]`. A base in
/// another btrfs subvolume of the watched filesystem is the zero id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `len` bytes were written at `offset`: write, pwrite64, writev, pwritev,
    /// pwritev2 (their 32-bit forms too), native AIO writes (at submission and
    /// again at completion), the destination of copy_file_range/sendfile/splice,
    /// the destination range of a reflink (`FICLONE`, `FICLONERANGE`) or btrfs
    /// encoded write, and io_uring WRITE/WRITEV/WRITE_FIXED/WRITEV_FIXED
    /// completions (those have `fd` [`sluice_common::NO_FD`]: the ring may use a
    /// registered file). A write through a file whose position another thread
    /// may have moved carries a range that contains the bytes written. In the
    /// `"fexit+tp_btf"` mode writes come from the VFS and also carry `NO_FD`,
    /// as do fallocate and ftruncate ([`EventKind::Fallocate`], [`EventKind::Truncate`]).
    Write {
        inode: InodeId,
        offset: u64,
        len: u64,
        fd: u32,
    },
    /// ftruncate to `size`.
    Truncate {
        inode: InodeId,
        size: u64,
        fd: u32,
    },
    /// fallocate on `[offset, offset + len)` with `mode` flags.
    Fallocate {
        inode: InodeId,
        offset: u64,
        len: u64,
        mode: u32,
        fd: u32,
    },
    /// Metadata of an open file changed (fchmod, fchown, futimens).
    FdMeta {
        inode: InodeId,
        fd: u32,
    },
    /// open/openat/openat2/creat with O_CREAT or O_TRUNC; `target` is the opened file.
    OpenCreate {
        base: InodeId,
        path: Vec<u8>,
        target: InodeId,
        flags: u32,
        mode: u32,
    },
    Mkdir {
        base: InodeId,
        path: Vec<u8>,
        mode: u32,
    },
    Rmdir {
        base: InodeId,
        path: Vec<u8>,
    },
    Unlink {
        base: InodeId,
        path: Vec<u8>,
    },
    /// rename/renameat/renameat2; `flags` holds RENAME_EXCHANGE / RENAME_NOREPLACE.
    Rename {
        from_base: InodeId,
        from: Vec<u8>,
        to_base: InodeId,
        to: Vec<u8>,
        flags: u32,
    },
    Link {
        existing_base: InodeId,
        existing: Vec<u8>,
        new_base: InodeId,
        new: Vec<u8>,
    },
    /// A symlink at `path` whose content is `target` (not resolved).
    Symlink {
        base: InodeId,
        path: Vec<u8>,
        target: Vec<u8>,
    },
    /// chmod/chown/utimes family by path; `flags` are the AT_* flags.
    PathMeta {
        base: InodeId,
        path: Vec<u8>,
        flags: u32,
    },
    /// truncate(2) by path.
    PathTruncate {
        base: InodeId,
        path: Vec<u8>,
        size: u64,
    },
    /// mknod/mknodat; `rdev` is the `dev` argument in the userspace `makedev`
    /// encoding (zero for FIFOs and sockets), ready to be passed to mknod(2).
    Mknod {
        base: InodeId,
        path: Vec<u8>,
        mode: u32,
        rdev: u64,
    },
    /// A page-cache folio `[offset, offset + len)` of the file became dirty outside
    /// the write-family syscalls: a store through a shared mmap, or another writer
    /// that goes through the page cache. Reported on the clean → dirty transition,
    /// and (one page, `len` 4096) on every user write fault of a shared writable
    /// file mapping, which also covers stores to folios that were already dirty;
    /// the fault is reported before the store completes.
    Writeback {
        inode: InodeId,
        offset: u64,
        len: u64,
    },
    /// A sync barrier on `[offset, offset + len)` (`len` [`sluice_common::TO_END`]:
    /// to the end of the file). `inode` is `None` for syncfs (the whole watched
    /// filesystem).
    Sync {
        inode: Option<InodeId>,
        offset: u64,
        len: u64,
        kind: SyncKind,
    },
    /// An extended attribute `name` was set or removed by path (setxattr,
    /// lsetxattr, removexattr, lremovexattr, setxattrat, removexattrat). ACL changes
    /// arrive here as `system.posix_acl_access` / `system.posix_acl_default`.
    XattrPath {
        base: InodeId,
        path: Vec<u8>,
        name: Vec<u8>,
        /// The call does not follow a final symlink (the `l*` variants, AT_SYMLINK_NOFOLLOW).
        nofollow: bool,
    },
    /// An extended attribute `name` of an open file was set or removed (fsetxattr,
    /// fremovexattr, `*xattrat` with AT_EMPTY_PATH).
    XattrFd {
        inode: InodeId,
        fd: u32,
        name: Vec<u8>,
    },
    /// Process `pid` set up or entered an io_uring. Ring operations other than
    /// writes are not decoded, so its open files deserve a check. Sent at most once
    /// per process per [`sluice_common::IO_URING_RENOTIFY_NS`].
    IoUringUser {
        pid: u32,
    },
    /// The file may have changed in a way that was not decoded (an io_uring
    /// operation other than a write, an io_uring open that may have created or
    /// truncated it): `[offset, offset + len)` is the whole file as it was then,
    /// and its metadata and extended attributes are to be read again as well.
    /// `fd` names it in process `pid` when known, else [`sluice_common::NO_FD`].
    Changed {
        inode: InodeId,
        offset: u64,
        len: u64,
        fd: u32,
    },
    /// Something may have changed files in a way the programs could not decode:
    /// the event stream alone cannot be trusted to describe it.
    Repair {
        reason: Repair,
        /// The 32-bit syscall number, io_uring opcode or completion count.
        detail: u64,
    },
}

/// Why an [`EventKind::Repair`] was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Repair {
    /// A syscall of another ABI (x32) that may change files.
    OtherAbiSyscall,
    /// A 32-bit program started before 32-bit syscalls were captured.
    CompatExec,
    /// More native AIO completions in one `io_getevents` than are decoded.
    AioOverflow,
    /// A completed native AIO write that could not be attributed to a file.
    AioUnresolved,
    /// An io_uring namespace operation (renameat, unlinkat, mkdirat, ...).
    IoUringNamespace,
    /// A store through a file mapping whose mapping could not be looked up in the
    /// kernel; `detail` is the user address.
    FaultLookup,
    /// An `msync` whose mapping could not be looked up; `detail` is the address.
    MsyncLookup,
    /// A reason this build does not know (newer programs).
    Other(u32),
}

/// Which call asked for durability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncKind {
    Fsync,
    Fdatasync,
    SyncFileRange,
    Syncfs,
    Msync,
}

/// Why a record could not be decoded (only an ABI mismatch between the
/// embedded programs and this build would cause it).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The record is shorter than its declared kind requires.
    #[error("record of {got} bytes is too short for kind {kind} (needs {need})")]
    Short { kind: u32, got: usize, need: usize },
    /// The header's kind is not one of `sluice_common::kind`.
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    /// The header's op is not valid for its kind.
    #[error("unknown op {op} for kind {kind}")]
    UnknownOp { kind: u32, op: u32 },
    /// A sync record carries a kind that is not one of `sluice_common::sync_kind`.
    #[error("unknown sync kind {0}")]
    UnknownSyncKind(u32),
}

fn read<T: Copy>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short {
            kind,
            got: bytes.len(),
            need: size_of::<T>(),
        });
    }
    // SAFETY: length checked; T is a repr(C) integer-only struct valid for any bytes.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// The bytes of a fixed-size path buffer up to its first NUL.
pub fn c_path(buf: &[u8]) -> Vec<u8> {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    buf[..end].to_vec()
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let header: EventHeader = read(bytes, 0)?;
    let kind = match header.kind {
        kind::DATA => decode_data(read(bytes, header.kind)?)?,
        kind::PATH => decode_path(&read(bytes, header.kind)?)?,
        other => return Err(DecodeError::UnknownKind(other)),
    };
    Ok(Event {
        pid: header.pid,
        tid: header.tid,
        ts_ns: header.ts_ns,
        kind,
    })
}

fn decode_data(e: DataEvent) -> Result<EventKind, DecodeError> {
    let (inode, fd) = (e.inode, e.fd);
    Ok(match e.header.op {
        op::WRITE => EventKind::Write {
            inode,
            offset: e.offset,
            len: e.len,
            fd,
        },
        op::TRUNCATE => EventKind::Truncate {
            inode,
            size: e.offset,
            fd,
        },
        op::FALLOCATE => EventKind::Fallocate {
            inode,
            offset: e.offset,
            len: e.len,
            mode: e.flags,
            fd,
        },
        op::FD_META => EventKind::FdMeta { inode, fd },
        op::WRITEBACK => EventKind::Writeback {
            inode,
            offset: e.offset,
            len: e.len,
        },
        op::SYNC => EventKind::Sync {
            inode: (inode != InodeId::default()).then_some(inode),
            offset: e.offset,
            len: e.len,
            kind: match e.flags {
                sync_kind::FSYNC => SyncKind::Fsync,
                sync_kind::FDATASYNC => SyncKind::Fdatasync,
                sync_kind::SYNC_FILE_RANGE => SyncKind::SyncFileRange,
                sync_kind::SYNCFS => SyncKind::Syncfs,
                sync_kind::MSYNC => SyncKind::Msync,
                other => return Err(DecodeError::UnknownSyncKind(other)),
            },
        },
        op::IO_URING_USER => EventKind::IoUringUser { pid: e.header.pid },
        op::CHANGED => EventKind::Changed {
            inode,
            offset: e.offset,
            len: e.len,
            fd,
        },
        op::REPAIR => EventKind::Repair {
            reason: match e.flags {
                repair::COMPAT_SYSCALL => Repair::OtherAbiSyscall,
                repair::AIO_OVERFLOW => Repair::AioOverflow,
                repair::AIO_UNRESOLVED => Repair::AioUnresolved,
                repair::IO_URING_NAMESPACE => Repair::IoUringNamespace,
                repair::FAULT_LOOKUP => Repair::FaultLookup,
                repair::MSYNC_LOOKUP => Repair::MsyncLookup,
                repair::COMPAT_EXEC => Repair::CompatExec,
                other => Repair::Other(other),
            },
            detail: e.offset,
        },
        other => {
            return Err(DecodeError::UnknownOp {
                kind: kind::DATA,
                op: other,
            });
        }
    })
}

fn decode_path(e: &PathEvent) -> Result<EventKind, DecodeError> {
    let (base, path) = (e.base1, c_path(&e.path1));
    Ok(match e.header.op {
        op::OPEN_CREATE => EventKind::OpenCreate {
            base,
            path,
            target: e.target,
            flags: e.flags,
            mode: e.mode,
        },
        op::MKDIR => EventKind::Mkdir {
            base,
            path,
            mode: e.mode,
        },
        op::RMDIR => EventKind::Rmdir { base, path },
        op::UNLINK => EventKind::Unlink { base, path },
        op::RENAME => EventKind::Rename {
            from_base: base,
            from: path,
            to_base: e.base2,
            to: c_path(&e.path2),
            flags: e.flags,
        },
        op::LINK => EventKind::Link {
            existing_base: base,
            existing: path,
            new_base: e.base2,
            new: c_path(&e.path2),
        },
        op::SYMLINK => EventKind::Symlink {
            base,
            path,
            target: c_path(&e.path2),
        },
        op::PATH_META => EventKind::PathMeta {
            base,
            path,
            flags: e.flags,
        },
        op::PATH_TRUNCATE => EventKind::PathTruncate {
            base,
            path,
            size: e.size,
        },
        op::MKNOD => EventKind::Mknod {
            base,
            path,
            mode: e.mode,
            rdev: e.size,
        },
        op::XATTR_PATH => EventKind::XattrPath {
            base,
            path,
            name: c_path(&e.path2),
            nofollow: e.flags != 0,
        },
        op::XATTR_FD => EventKind::XattrFd {
            inode: e.target,
            fd: e.size as u32,
            name: c_path(&e.path2),
        },
        other => {
            return Err(DecodeError::UnknownOp {
                kind: kind::PATH,
                op: other,
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_common::PATH_LEN;

    fn bytes<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the object representation of a padding-free repr(C) struct.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn header(kind: u32, op: u32) -> EventHeader {
        EventHeader {
            kind,
            pid: 7,
            tid: 8,
            op,
            ts_ns: 9,
        }
    }

    #[test]
    fn decodes_a_write() {
        let inode = InodeId { dev: 1, ino: 2 };
        let e = DataEvent {
            header: header(kind::DATA, op::WRITE),
            inode,
            offset: 12288,
            len: 4096,
            flags: 0,
            fd: 3,
        };
        let ev = decode(&bytes(&e)).unwrap();
        assert_eq!((ev.pid, ev.tid, ev.ts_ns), (7, 8, 9));
        assert_eq!(
            ev.kind,
            EventKind::Write {
                inode,
                offset: 12288,
                len: 4096,
                fd: 3
            }
        );
    }

    #[test]
    fn decodes_a_rename_with_both_paths() {
        let mut e = PathEvent {
            header: header(kind::PATH, op::RENAME),
            base1: InodeId { dev: 1, ino: 10 },
            base2: InodeId { dev: 1, ino: 11 },
            target: InodeId::default(),
            flags: 1,
            mode: 0,
            size: 0,
            path1: [0; PATH_LEN],
            path2: [0xff; PATH_LEN],
        };
        e.path1[..3].copy_from_slice(b"a\0b");
        e.path2[..2].copy_from_slice(b"c\0");
        let ev = decode(&bytes(&e)).unwrap();
        assert_eq!(
            ev.kind,
            EventKind::Rename {
                from_base: e.base1,
                from: b"a".to_vec(),
                to_base: e.base2,
                to: b"c".to_vec(),
                flags: 1
            }
        );
    }

    fn path_event(op: u32) -> PathEvent {
        PathEvent {
            header: header(kind::PATH, op),
            base1: InodeId { dev: 1, ino: 2 },
            base2: InodeId::default(),
            target: InodeId::default(),
            flags: 0,
            mode: 0,
            size: 0,
            path1: [0; PATH_LEN],
            path2: [0; PATH_LEN],
        }
    }

    #[test]
    fn decodes_sync_kinds_and_an_unknown_inode() {
        let inode = InodeId { dev: 1, ino: 2 };
        let mut e = DataEvent {
            header: header(kind::DATA, op::SYNC),
            inode,
            offset: 4096,
            len: 8192,
            flags: sync_kind::SYNC_FILE_RANGE,
            fd: 3,
        };
        assert_eq!(
            decode(&bytes(&e)).unwrap().kind,
            EventKind::Sync {
                inode: Some(inode),
                offset: 4096,
                len: 8192,
                kind: SyncKind::SyncFileRange
            }
        );
        e.inode = InodeId::default();
        e.flags = sync_kind::SYNCFS;
        assert!(matches!(
            decode(&bytes(&e)).unwrap().kind,
            EventKind::Sync {
                inode: None,
                kind: SyncKind::Syncfs,
                ..
            }
        ));
        e.flags = 42;
        assert_eq!(decode(&bytes(&e)), Err(DecodeError::UnknownSyncKind(42)));
    }

    #[test]
    fn decodes_writeback_and_io_uring_user() {
        let inode = InodeId { dev: 1, ino: 2 };
        let e = DataEvent {
            header: header(kind::DATA, op::WRITEBACK),
            inode,
            offset: 8192,
            len: 4096,
            flags: 0,
            fd: sluice_common::NO_FD,
        };
        assert_eq!(
            decode(&bytes(&e)).unwrap().kind,
            EventKind::Writeback {
                inode,
                offset: 8192,
                len: 4096
            }
        );
        let e = DataEvent {
            header: header(kind::DATA, op::IO_URING_USER),
            ..Default::default()
        };
        assert_eq!(
            decode(&bytes(&e)).unwrap().kind,
            EventKind::IoUringUser { pid: 7 }
        );
    }

    #[test]
    fn decodes_changed_and_repair() {
        let inode = InodeId { dev: 1, ino: 2 };
        let e = DataEvent {
            header: header(kind::DATA, op::CHANGED),
            inode,
            offset: 0,
            len: 5000,
            flags: 0,
            fd: 6,
        };
        assert_eq!(
            decode(&bytes(&e)).unwrap().kind,
            EventKind::Changed { inode, offset: 0, len: 5000, fd: 6 }
        );
        let mut e = DataEvent {
            header: header(kind::DATA, op::REPAIR),
            offset: 35,
            flags: repair::IO_URING_NAMESPACE,
            ..Default::default()
        };
        assert_eq!(
            decode(&bytes(&e)).unwrap().kind,
            EventKind::Repair { reason: Repair::IoUringNamespace, detail: 35 }
        );
        // A reason from newer programs still asks for a repair.
        e.flags = 77;
        assert_eq!(
            decode(&bytes(&e)).unwrap().kind,
            EventKind::Repair { reason: Repair::Other(77), detail: 35 }
        );
    }

    #[test]
    fn decodes_xattrs_and_mknod_rdev() {
        let mut e = path_event(op::XATTR_PATH);
        e.path1[..1].copy_from_slice(b"f");
        e.path2[..6].copy_from_slice(b"user.x");
        e.flags = 1;
        assert_eq!(
            decode(&bytes(&e)).unwrap().kind,
            EventKind::XattrPath {
                base: e.base1,
                path: b"f".to_vec(),
                name: b"user.x".to_vec(),
                nofollow: true
            }
        );
        let mut e = path_event(op::XATTR_FD);
        e.target = InodeId { dev: 1, ino: 9 };
        e.size = 4;
        e.path2[..6].copy_from_slice(b"user.y");
        assert_eq!(
            decode(&bytes(&e)).unwrap().kind,
            EventKind::XattrFd {
                inode: e.target,
                fd: 4,
                name: b"user.y".to_vec()
            }
        );
        let mut e = path_event(op::MKNOD);
        e.path1[..4].copy_from_slice(b"null");
        e.mode = 0o20644;
        e.size = (1 << 8) | 3;
        assert!(matches!(
            decode(&bytes(&e)).unwrap().kind,
            EventKind::Mknod {
                mode: 0o20644,
                rdev: 0x103,
                ..
            }
        ));
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let e = DataEvent {
            header: header(kind::DATA, op::WRITE),
            ..Default::default()
        };
        assert!(matches!(
            decode(&bytes(&e)[..30]),
            Err(DecodeError::Short { .. })
        ));
        let h = header(99, 1);
        assert_eq!(decode(&bytes(&h)), Err(DecodeError::UnknownKind(99)));
        assert!(c_path(&[b'x'; 4]) == b"xxxx");
    }
}
