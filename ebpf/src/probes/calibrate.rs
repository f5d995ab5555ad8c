//! Learns how the kernel names the watched filesystem.
//!
//! `stat(2)`'s `st_dev` is not always `inode->i_sb->s_dev` (btrfs reports an
//! anonymous per-subvolume dev), so the agent opens its root directory (and then
//! each directory above it) while `Config::calibrating` is set and this records
//! what the kernel saw: the superblock's dev, the inode number and, on btrfs, the
//! subvolume id.
//!
//! Prototype: `int openat(int dirfd, const char *pathname, int flags, mode_t mode)`,
//! observed at exit with the returned fd.

use sluice_common::{Calibration, KernelOffsets};

use crate::{
    kernel::{current_task, fd_inode, inode_id, inode_is_dir, subvol_of},
    maps::CALIBRATION,
};

#[inline(always)]
pub fn on_agent_openat(o: &KernelOffsets, fd: i64) {
    let Ok(inode) = fd_inode(o, current_task(), fd as i32) else {
        return;
    };
    if !matches!(inode_is_dir(o, inode), Ok(true)) {
        return;
    }
    let Ok(root) = inode_id(o, inode) else { return };
    let subvol = subvol_of(o, inode).unwrap_or(0);
    let _ = CALIBRATION.set(
        0,
        Calibration {
            root,
            seen: 1,
            subvol,
        },
        0,
    );
}
