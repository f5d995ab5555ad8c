//! In-kernel copies into a file: reported as a write of `ret` bytes to the
//! destination fd, when that fd is a file on the watched filesystem (a pipe or
//! socket destination lives on pipefs/sockfs and is filtered by its `s_dev`).
//!
//! Prototypes:
//! - `ssize_t copy_file_range(int fd_in, loff_t *off_in, int fd_out, loff_t *off_out, size_t len, unsigned int flags)`
//! - `ssize_t sendfile(int out_fd, int in_fd, off_t *offset, size_t count)` (`sendfile64`;
//!   `offset` belongs to the input, the output is written at its file position)
//! - `ssize_t splice(int fd_in, loff_t *off_in, int fd_out, loff_t *off_out, size_t len, unsigned int flags)`
//!
//! `tee(2)` and `vmsplice(2)` only ever write into pipes, so they are not hooked.
//! On btrfs/XFS `copy_file_range` may share extents instead of copying bytes; the
//! destination's contents change all the same, so it is still reported as a write.

use aya_ebpf::helpers::bpf_probe_read_user;
use sluice_common::{Config, op};

use super::{SysArgs, data, sys_exit::nr};
use crate::kernel::{Res, current_task, file_inode, file_of_fd, file_pos, watched};

pub fn on_exit(cfg: &Config, n: u64, a: &SysArgs, ret: i64) -> Res<()> {
    if ret <= 0 {
        return Ok(());
    }
    let len = ret as u64;
    // The destination and the user pointer to its offset (0: the file position is used).
    let (fd, off_ptr) = match n {
        nr::COPY_FILE_RANGE | nr::SPLICE => (a[2] as i32, a[3]),
        nr::SENDFILE => (a[0] as i32, 0),
        _ => return Ok(()),
    };
    let o = &cfg.offsets;
    let file = file_of_fd(o, current_task(), fd)?;
    let Some(inode) = watched(cfg, file_inode(o, file)?)? else {
        return Ok(());
    };
    // Both the user offset and f_pos have been advanced past the copied bytes by now.
    let end = if off_ptr != 0 {
        // SAFETY: bpf_probe_read_user reports faults instead of trapping.
        unsafe { bpf_probe_read_user(off_ptr as *const u64) }.map_err(|e| e as i64)?
    } else {
        file_pos(o, file)? as u64
    };
    data::emit(op::WRITE, inode, end.saturating_sub(len), len, 0, fd as u32);
    Ok(())
}
