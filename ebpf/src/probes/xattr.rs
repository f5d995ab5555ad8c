//! Extended-attribute changes (which include POSIX ACLs: `setfacl` stores
//! `system.posix_acl_access` through `setxattr`).
//!
//! Path variants are reported like the namespace operations in `path`: the path as
//! passed with its base directory, kept when absolute or based in the watched
//! filesystem or on one of the root's ancestors. Fd variants are filtered by the
//! file's `s_dev` (and btrfs subvolume). The attribute name
//! travels in `path2` so the agent can tell ACLs, security labels and user
//! attributes apart; values are not copied (the agent reads them from the file).
//!
//! Prototypes:
//! - `int setxattr(const char *path, const char *name, const void *value, size_t size, int flags)`
//! - `int lsetxattr(const char *path, const char *name, const void *value, size_t size, int flags)`
//! - `int fsetxattr(int fd, const char *name, const void *value, size_t size, int flags)`
//! - `int removexattr(const char *path, const char *name)`, `lremovexattr`, `int fremovexattr(int fd, const char *name)`
//! - `int setxattrat(int dfd, const char *path, unsigned int at_flags, const char *name, const struct xattr_args *args, size_t size)` (6.13+)
//! - `int removexattrat(int dfd, const char *path, unsigned int at_flags, const char *name)` (6.13+)
//!
//! For the `*xattrat` calls `AT_SYMLINK_NOFOLLOW` selects the `l*` behaviour and
//! `AT_EMPTY_PATH` with an empty path the `f*` one.

use aya_ebpf::helpers::bpf_probe_read_user;
use sluice_common::{ANCESTOR_DEV, Config, InodeId, PathEvent, kind, op};

use super::{SysArgs, header, path::copy_user_str, sys_exit::nr};
use crate::{
    kernel::{AT_FDCWD, Res, base_dir, current_task, fd_inode, watched},
    maps::{EVENTS, count_drop},
};

const AT_SYMLINK_NOFOLLOW: u64 = 0x100;
const AT_EMPTY_PATH: u64 = 0x1000;

enum Target {
    /// `path` relative to `dfd`.
    Path { dfd: i32, path: u64, nofollow: bool },
    /// An open file.
    Fd(i32),
}

#[inline(always)]
fn target(n: u64, a: &SysArgs) -> Option<(Target, u64)> {
    let cwd = AT_FDCWD;
    Some(match n {
        nr::SETXATTR | nr::REMOVEXATTR => (
            Target::Path {
                dfd: cwd,
                path: a[0],
                nofollow: false,
            },
            a[1],
        ),
        nr::LSETXATTR | nr::LREMOVEXATTR => (
            Target::Path {
                dfd: cwd,
                path: a[0],
                nofollow: true,
            },
            a[1],
        ),
        nr::FSETXATTR | nr::FREMOVEXATTR => (Target::Fd(a[0] as i32), a[1]),
        nr::SETXATTRAT | nr::REMOVEXATTRAT => {
            let flags = a[2];
            // SAFETY: bpf_probe_read_user reports faults instead of trapping.
            let empty = flags & AT_EMPTY_PATH != 0
                && unsafe { bpf_probe_read_user(a[1] as *const u8) }.unwrap_or(1) == 0;
            let t = if empty {
                Target::Fd(a[0] as i32)
            } else {
                Target::Path {
                    dfd: a[0] as i32,
                    path: a[1],
                    nofollow: flags & AT_SYMLINK_NOFOLLOW != 0,
                }
            };
            (t, a[3])
        }
        _ => return None,
    })
}

pub fn on_exit(cfg: &Config, n: u64, a: &SysArgs) -> Res<()> {
    let Some((t, name)) = target(n, a) else {
        return Ok(());
    };
    let o = &cfg.offsets;
    let task = current_task();
    let (op, base, inode, fd, path, nofollow) = match t {
        Target::Fd(fd) => {
            let Some(inode) = watched(cfg, fd_inode(o, task, fd)?)? else {
                return Ok(());
            };
            (op::XATTR_FD, InodeId::default(), inode, fd, 0, false)
        }
        Target::Path {
            dfd,
            path,
            nofollow,
        } => (
            op::XATTR_PATH,
            base_dir(cfg, task, dfd),
            InodeId::default(),
            0,
            path,
            nofollow,
        ),
    };

    let Some(mut entry) = EVENTS.reserve::<PathEvent>(0) else {
        count_drop();
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a reserved, exclusively owned ring-buffer record of the right
    // size; fields are written through raw pointers because it is uninitialised.
    let keep = unsafe {
        (*ev).header = header(kind::PATH, op);
        (*ev).base1 = base;
        (*ev).base2 = InodeId::default();
        (*ev).target = inode;
        (*ev).flags = nofollow as u32;
        (*ev).mode = 0;
        (*ev).size = fd as u32 as u64;
        let path1 = core::ptr::addr_of_mut!((*ev).path1) as *mut u8;
        let path2 = core::ptr::addr_of_mut!((*ev).path2) as *mut u8;
        if op == op::XATTR_FD {
            *path1 = 0;
        } else {
            copy_user_str(path1, path);
        }
        copy_user_str(path2, name);
        op == op::XATTR_FD
            || *path1 == b'/'
            || base.dev == cfg.watched_dev
            || base.dev == ANCESTOR_DEV
    };
    if keep {
        entry.submit(0);
    } else {
        entry.discard(0);
    }
    Ok(())
}
