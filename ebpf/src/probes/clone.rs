//! ioctls that change a file's contents without writing bytes through it.
//!
//! Prototype: `int ioctl(int fd, unsigned long cmd, ...)`; `ioctl` is one of the
//! busiest syscalls, so `sys_exit` compares `cmd` against [`changes_contents`]
//! before anything else.
//!
//! - `FICLONE` (`ioctl(dest, FICLONE, src_fd)`): the destination shares all of the
//!   source's extents; reported as a write of the whole destination, `[0, i_size)`.
//! - `FICLONERANGE` (`struct file_clone_range { __s64 src_fd; __u64 src_offset;
//!   __u64 src_length; __u64 dest_offset; }`): `[dest_offset, dest_offset +
//!   src_length)`, or `[dest_offset, i_size)` when `src_length` is 0 ("to the end
//!   of the source"). `BTRFS_IOC_CLONE`/`BTRFS_IOC_CLONE_RANGE` are the same numbers.
//! - `BTRFS_IOC_ENCODED_WRITE` (`btrfs receive --compressed-data`): writes
//!   compressed extents; `[offset, offset + len)` of `struct
//!   btrfs_ioctl_encoded_io_args` (its 32-bit layout for compat callers).
//!
//! `FIDEDUPERANGE` is not reported: it only shares extents whose bytes are already
//! identical (the kernel compares them first), so no file's contents change.
//!
//! These are UAPI layouts and numbers, fixed across kernels.

use aya_ebpf::helpers::bpf_probe_read_user;
use sluice_common::{Config, op};

use super::{SysArgs, data};
use crate::kernel::{Res, current_task, file_inode, file_of_fd, inode_size, watched};

/// `_IOW(0x94, 9, int)`.
pub const FICLONE: u64 = 0x4004_9409;
/// `_IOW(0x94, 13, struct file_clone_range)`.
pub const FICLONERANGE: u64 = 0x4020_940d;
/// `_IOW(0x94, 64, struct btrfs_ioctl_encoded_io_args)` (128 bytes).
pub const BTRFS_IOC_ENCODED_WRITE: u64 = 0x4080_9440;
/// The same with the 120-byte 32-bit layout.
pub const BTRFS_IOC_ENCODED_WRITE_32: u64 = 0x4078_9440;

/// Whether ioctl `cmd` (an `unsigned int`) is one this module reports.
#[inline(always)]
pub fn changes_contents(cmd: u64) -> bool {
    matches!(
        cmd & 0xffff_ffff,
        FICLONE | FICLONERANGE | BTRFS_IOC_ENCODED_WRITE | BTRFS_IOC_ENCODED_WRITE_32
    )
}

#[inline(always)]
fn user_u64(addr: u64) -> Res<u64> {
    // SAFETY: bpf_probe_read_user reports faults instead of trapping.
    unsafe { bpf_probe_read_user(addr as *const u64) }.map_err(|e| e as i64)
}

pub fn on_exit(cfg: &Config, a: &SysArgs) -> Res<()> {
    let o = &cfg.offsets;
    let fd = a[0] as i32;
    let file = file_of_fd(o, current_task(), fd)?;
    let inode_ptr = file_inode(o, file)?;
    let Some(inode) = watched(cfg, inode_ptr)? else {
        return Ok(());
    };
    let size = inode_size(o, inode_ptr)?;
    let (start, len) = match a[1] & 0xffff_ffff {
        FICLONE => (0, size),
        FICLONERANGE => {
            let length = user_u64(a[2] + 16)?;
            let dest = user_u64(a[2] + 24)?;
            if length == 0 {
                (dest, size.saturating_sub(dest))
            } else {
                (dest, length)
            }
        }
        // `__s64 offset` then `__u64 flags`, `__u64 len`, after two pointer-sized fields.
        BTRFS_IOC_ENCODED_WRITE => (user_u64(a[2] + 16)?, user_u64(a[2] + 32)?),
        BTRFS_IOC_ENCODED_WRITE_32 => (user_u64(a[2] + 8)?, user_u64(a[2] + 24)?),
        _ => return Ok(()),
    };
    if len == 0 {
        return Ok(());
    }
    data::emit(op::WRITE, inode, start, len, 0, fd as u32);
    Ok(())
}
