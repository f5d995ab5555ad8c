//! Operations on an open file descriptor, filtered in the kernel by the file's
//! `i_sb->s_dev` so I/O outside the watched filesystem costs a few reads only.
//!
//! Prototypes:
//! - `ssize_t write(int fd, const void *buf, size_t count)`
//! - `ssize_t pwrite64(int fd, const void *buf, size_t count, loff_t pos)`
//! - `ssize_t writev(int fd, const struct iovec *iov, int iovcnt)`
//! - `ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, loff_t pos)`
//! - `ssize_t pwritev2(int fd, const struct iovec *iov, int iovcnt, loff_t pos, int flags)`
//! - `int ftruncate(int fd, off_t length)`
//! - `int fallocate(int fd, int mode, off_t offset, off_t len)`
//! - `int fchmod(int fd, mode_t mode)`, `int fchown(int fd, uid_t owner, gid_t group)`
//! - `int utimensat(int dirfd, NULL, const struct timespec times[2], int flags)` (futimens)

use sluice_common::{Config, DataEvent, InodeId, kind, op};

use super::{SysArgs, header, sys_exit::nr};
use crate::{
    kernel::{Res, current_task, file_inode, file_of_fd, file_pos, inode_id},
    maps::{EVENTS, count_drop},
};

/// Marks an offset that must be taken from `file->f_pos` after the write.
const FROM_F_POS: u64 = u64::MAX;

pub fn on_exit(cfg: &Config, n: u64, a: &SysArgs, ret: i64) -> Res<()> {
    let (op, offset, len, flags) = match n {
        nr::WRITE | nr::WRITEV => (op::WRITE, FROM_F_POS, ret as u64, 0),
        nr::PWRITE64 | nr::PWRITEV => (op::WRITE, a[3], ret as u64, 0),
        // pwritev2 with offset -1 writes at (and advances) the file position.
        nr::PWRITEV2 => (op::WRITE, a[3], ret as u64, 0),
        nr::FTRUNCATE => (op::TRUNCATE, a[1], 0, 0),
        nr::FALLOCATE => (op::FALLOCATE, a[2], a[3], a[1] as u32),
        _ => (op::FD_META, 0, 0, 0),
    };
    if op == op::WRITE && len == 0 {
        return Ok(());
    }
    let fd = a[0] as i32;
    let task = current_task();
    let file = file_of_fd(&cfg.offsets, task, fd)?;
    let inode: InodeId = inode_id(&cfg.offsets, file_inode(&cfg.offsets, file)?)?;
    if inode.dev != cfg.watched_dev {
        return Ok(());
    }
    let offset = if offset == FROM_F_POS {
        let end = file_pos(&cfg.offsets, file)?;
        (end as u64).saturating_sub(len)
    } else {
        offset
    };
    emit(op, inode, offset, len, flags, fd as u32);
    Ok(())
}

/// Sends one [`DataEvent`], counting a drop when the ring buffer is full.
#[inline(always)]
pub fn emit(op: u32, inode: InodeId, offset: u64, len: u64, flags: u32, fd: u32) {
    let event = DataEvent {
        header: header(kind::DATA, op),
        inode,
        offset,
        len,
        flags,
        fd,
    };
    if EVENTS.output::<DataEvent>(&event, 0).is_err() {
        count_drop();
    }
}
