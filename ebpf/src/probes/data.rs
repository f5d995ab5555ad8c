//! Operations on an open file descriptor, filtered in the kernel by the file's
//! `i_sb->s_dev` so I/O outside the watched filesystem costs a few reads only.
//!
//! Prototypes:
//! - `ssize_t write(int fd, const void *buf, size_t count)`
//! - `ssize_t pwrite64(int fd, const void *buf, size_t count, loff_t pos)`
//! - `ssize_t writev(int fd, const struct iovec *iov, int iovcnt)`
//! - `ssize_t pwritev(int fd, const struct iovec *iov, int iovcnt, loff_t pos)`
//! - `ssize_t pwritev2(int fd, const struct iovec *iov, int iovcnt, loff_t pos, int flags)`
//!   (the syscall takes `pos` as two registers, `pos_l`/`pos_h`, then `flags`: on
//!   x86_64 `pos_l` holds all of it and `flags` is the sixth argument)
//! - `int ftruncate(int fd, off_t length)`
//! - `int fallocate(int fd, int mode, off_t offset, off_t len)`
//! - `int fchmod(int fd, mode_t mode)`, `int fchown(int fd, uid_t owner, gid_t group)`
//! - `int utimensat(int dirfd, NULL, const struct timespec times[2], int flags)` (futimens)
//! - `int open_by_handle_at(int mount_fd, struct file_handle *handle, int flags)`:
//!   with `O_TRUNC`, a truncation to 0 of the file it opens
//!
//! Where the bytes went:
//! - `write`/`writev` (and `pwritev2` at offset -1) end at `file->f_pos`; a shared
//!   file's position is checked against what the entry saw (see `entry`).
//! - `pwrite64`/`pwritev`/`pwritev2` write at their offset, except on an
//!   `O_APPEND` file or with `RWF_APPEND`, where Linux ignores the offset and
//!   appends: those end at `i_size`.
//! - A write with no entry record (the first of its process to the watched tree,
//!   a 32-bit one: classic syscall tracepoints skip compat syscalls, or any when
//!   the entry program could not be attached) whose position someone else could
//!   have moved (a shared file, an append) is reported as the whole file
//!   `[0, i_size)`.

use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use sluice_common::{Config, DataEvent, InodeId, kind, op};

use super::{
    Syscall,
    entry::{AT_F_POS, appends},
    header,
    sys_exit::nr,
};
use crate::{
    kernel::{
        Res, current_task, file_flags, file_inode, file_of_fd, file_pos, file_shared, inode_size,
        watched,
    },
    maps::{EVENTS, WRITE_ENTRY, WriteEntry, count_drop, note_writer, writer},
};

pub fn on_exit(cfg: &Config, call: &Syscall) -> Res<()> {
    let (n, a, ret) = (call.n, &call.args, call.ret);
    let write = matches!(
        n,
        nr::WRITE | nr::WRITEV | nr::PWRITE64 | nr::PWRITEV | nr::PWRITEV2
    );
    if write && ret <= 0 {
        return Ok(());
    }
    let o = &cfg.offsets;
    // open_by_handle_at(mount_fd, handle, flags) cannot create; with O_TRUNC it
    // empties the file whose new fd it returns.
    let fd = if n == nr::OPEN_BY_HANDLE_AT {
        if a[2] & O_TRUNC == 0 {
            return Ok(());
        }
        ret as i32
    } else {
        a[0] as i32
    };
    let task = current_task();
    let file = file_of_fd(o, task, fd)?;
    let inode_ptr = file_inode(o, file)?;
    let Some(inode) = watched(cfg, inode_ptr)? else {
        return Ok(());
    };
    let w = Written {
        task,
        file,
        inode: inode_ptr,
        fd: fd as u64,
        len: ret as u64,
    };
    let (op, offset, len, flags) = match n {
        nr::WRITE | nr::WRITEV => {
            let (start, len) = w.at_f_pos(cfg)?;
            (op::WRITE, start, len, 0)
        }
        nr::PWRITE64 | nr::PWRITEV | nr::PWRITEV2 => {
            let rwf = if n == nr::PWRITEV2 { a[5] } else { 0 };
            let (start, len) = if n == nr::PWRITEV2 && a[3] == AT_F_POS {
                w.at_f_pos(cfg)?
            } else if appends(file_flags(o, file)?, rwf) {
                w.at_end(cfg)?
            } else {
                (a[3], w.len)
            };
            (op::WRITE, start, len, 0)
        }
        nr::FTRUNCATE => (op::TRUNCATE, a[1], 0, 0),
        nr::OPEN_BY_HANDLE_AT => (op::TRUNCATE, 0, 0, 0),
        nr::FALLOCATE => (op::FALLOCATE, a[2], a[3], a[1] as u32),
        _ => (op::FD_META, 0, 0, 0),
    };
    emit(op, inode, offset, len, flags, fd as u32);
    Ok(())
}

/// A completed write of `len` bytes through `fd`.
struct Written {
    task: u64,
    file: u64,
    inode: u64,
    fd: u64,
    len: u64,
}

impl Written {
    /// The entry record of this thread's syscall, if it was for the same fd.
    #[inline(always)]
    fn take_entry(&self) -> Option<WriteEntry> {
        let tid = bpf_get_current_pid_tgid() as u32;
        // SAFETY: the value is copied out before the entry is removed.
        let entry = unsafe { WRITE_ENTRY.get(&tid) }.copied()?;
        let _ = WRITE_ENTRY.remove(&tid);
        (entry.fd == self.fd).then_some(entry)
    }

    /// The whole file as it is now: `[0, max(i_size, end))`.
    #[inline(always)]
    fn whole(&self, cfg: &Config, end: u64) -> Res<(u64, u64)> {
        let size = inode_size(&cfg.offsets, self.inode)?;
        Ok((0, if size > end { size } else { end }))
    }

    /// A write that advanced `f_pos` past its bytes.
    #[inline(always)]
    fn at_f_pos(&self, cfg: &Config) -> Res<(u64, u64)> {
        let end = file_pos(&cfg.offsets, self.file)? as u64;
        if let Some(entry) = self.take_entry() {
            // Others writing through the same file only move the position forward:
            // the write lies in [pos at entry, end). Anything else (an lseek by
            // another thread) leaves no way to know where it went.
            if end < entry.pos.saturating_add(self.len) {
                return self.whole(cfg, end);
            }
            let start = min(entry.pos, end - self.len);
            return Ok((start, end - start));
        }
        // Without a record the write was not looked at on entry (the first write
        // of this process to the tree, a 32-bit one): if someone else could move
        // the position, nothing bounds where it started.
        if file_shared(&cfg.offsets, self.task, self.file)? {
            note_writer((bpf_get_current_pid_tgid() >> 32) as u32, writer::SHARED);
            return self.whole(cfg, end);
        }
        Ok((end.saturating_sub(self.len), self.len))
    }

    /// An append: the bytes end at `i_size`, unless another appender grew the file
    /// since; the size at entry bounds where they can start.
    #[inline(always)]
    fn at_end(&self, cfg: &Config) -> Res<(u64, u64)> {
        let end = inode_size(&cfg.offsets, self.inode)?;
        if let Some(entry) = self.take_entry() {
            if end < entry.size.saturating_add(self.len) {
                // Shrunk in between: a truncation, reported on its own.
                return Ok((0, end));
            }
            let start = min(entry.size, end - self.len);
            return Ok((start, end - start));
        }
        // Not looked at on entry: another appender may have grown the file since.
        note_writer((bpf_get_current_pid_tgid() >> 32) as u32, writer::APPENDS);
        Ok((0, end))
    }
}

const O_TRUNC: u64 = 0o1000;

#[inline(always)]
fn min(a: u64, b: u64) -> u64 {
    if a < b { a } else { b }
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
