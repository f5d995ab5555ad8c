//! Namespace operations addressed by path.
//!
//! Paths are copied as the caller passed them, with the directory they are
//! relative to (`base`: the dirfd's inode, or the cwd's for `AT_FDCWD`, see
//! `kernel::base_dir`). An event is kept when a path is absolute, or its base is
//! in the watched tree's filesystem (and btrfs subvolume), or its base is one of
//! the watched root's ancestors (`cd /srv && mv data/a data/b` with `/srv/data`
//! watched). A relative path from any other directory is dropped here even if it
//! leads back into the tree through `..` or a symlink (e.g. `../srv/data/x` from
//! `/tmp`). Absolute paths anywhere on the system pass; userspace places them by
//! prefix, or by looking up their parent directory.
//!
//! Prototypes:
//! - `int open(const char *path, int flags, mode_t mode)`, `int creat(const char *path, mode_t mode)`
//! - `int openat(int dirfd, const char *path, int flags, mode_t mode)`
//! - `long openat2(int dirfd, const char *path, struct open_how *how, size_t size)`
//! - `int mkdir(const char *path, mode_t mode)`, `int mkdirat(int dirfd, const char *path, mode_t mode)`
//! - `int rmdir(const char *path)`, `int unlink(const char *path)`
//! - `int unlinkat(int dirfd, const char *path, int flags)`
//! - `int rename(const char *old, const char *new)`
//! - `int renameat2(int olddirfd, const char *old, int newdirfd, const char *new, unsigned flags)`
//! - `int link(const char *old, const char *new)`
//! - `int linkat(int olddirfd, const char *old, int newdirfd, const char *new, int flags)`
//! - `int symlink(const char *target, const char *linkpath)`
//! - `int symlinkat(const char *target, int newdirfd, const char *linkpath)`
//! - `int chmod(const char *path, mode_t mode)`, `int fchmodat2(int dirfd, const char *path, mode_t mode, int flags)`
//! - `int chown(const char *path, uid_t, gid_t)`, `int fchownat(int dirfd, const char *path, uid_t, gid_t, int flags)`
//! - `int utimensat(int dirfd, const char *path, const struct timespec t[2], int flags)`, `utime`, `utimes`, `futimesat`
//! - `int truncate(const char *path, off_t length)`
//! - `int mknod(const char *path, umode_t mode, unsigned int dev)`,
//!   `int mknodat(int dirfd, const char *path, umode_t mode, unsigned int dev)`: `dev` is
//!   the 32-bit userspace encoding (`makedev`), carried in `size` so device nodes can
//!   be recreated with the same numbers

use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, generated},
};
use sluice_common::{ANCESTOR_DEV, Config, InodeId, PATH_LEN, PathEvent, kind, op};

use super::{SysArgs, header, sys_exit::nr};
use crate::{
    kernel::{AT_FDCWD, Res, base_dir, current_task, fd_inode, fd_table_shared, watched},
    maps::{EVENTS, count_drop, note_writer, writer},
};

const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;
const O_WRONLY: u64 = 0o1;
const O_APPEND: u64 = 0o2000;
const O_ACCMODE: u64 = 0o3;
const AT_REMOVEDIR: u64 = 0x200;
const AT_SYMLINK_NOFOLLOW: u64 = 0x100;

/// What the second path argument is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Second {
    None,
    /// A path relative to `dfd2` (rename, link).
    Path,
    /// Free text stored verbatim (a symlink's target).
    Text,
}

struct Plan {
    op: u32,
    dfd1: i32,
    p1: u64,
    dfd2: i32,
    p2: u64,
    second: Second,
    flags: u64,
    mode: u64,
    size: u64,
}

#[inline(always)]
fn plan(n: u64, a: &SysArgs) -> Option<Plan> {
    let cwd = AT_FDCWD;
    let dfd = a[0] as i32;
    let one = |op, dfd1, p1, flags, mode| Plan {
        op,
        dfd1,
        p1,
        dfd2: 0,
        p2: 0,
        second: Second::None,
        flags,
        mode,
        size: 0,
    };
    let two = |op, dfd1, p1, dfd2, p2, second, flags| Plan {
        op,
        dfd1,
        p1,
        dfd2,
        p2,
        second,
        flags,
        mode: 0,
        size: 0,
    };
    Some(match n {
        nr::OPEN => one(op::OPEN_CREATE, cwd, a[0], a[1], a[2]),
        nr::CREAT => one(
            op::OPEN_CREATE,
            cwd,
            a[0],
            O_CREAT | O_WRONLY | O_TRUNC,
            a[1],
        ),
        nr::OPENAT => one(op::OPEN_CREATE, dfd, a[1], a[2], a[3]),
        nr::OPENAT2 => {
            // struct open_how { __u64 flags; __u64 mode; __u64 resolve; }
            let how = a[2] as *const u64;
            // SAFETY: bpf_probe_read_user reports faults instead of trapping.
            let flags = unsafe { bpf_probe_read_user(how) }.ok()?;
            let mode = unsafe { bpf_probe_read_user(how.wrapping_add(1)) }.unwrap_or(0);
            one(op::OPEN_CREATE, dfd, a[1], flags, mode)
        }
        nr::MKDIR => one(op::MKDIR, cwd, a[0], 0, a[1]),
        nr::MKDIRAT => one(op::MKDIR, dfd, a[1], 0, a[2]),
        nr::RMDIR => one(op::RMDIR, cwd, a[0], 0, 0),
        nr::UNLINK => one(op::UNLINK, cwd, a[0], 0, 0),
        nr::UNLINKAT => {
            let op = if a[2] & AT_REMOVEDIR != 0 {
                op::RMDIR
            } else {
                op::UNLINK
            };
            one(op, dfd, a[1], a[2], 0)
        }
        nr::RENAME => two(op::RENAME, cwd, a[0], cwd, a[1], Second::Path, 0),
        nr::RENAMEAT => two(op::RENAME, dfd, a[1], a[2] as i32, a[3], Second::Path, 0),
        nr::RENAMEAT2 => two(op::RENAME, dfd, a[1], a[2] as i32, a[3], Second::Path, a[4]),
        nr::LINK => two(op::LINK, cwd, a[0], cwd, a[1], Second::Path, 0),
        nr::LINKAT => two(op::LINK, dfd, a[1], a[2] as i32, a[3], Second::Path, a[4]),
        nr::SYMLINK => two(op::SYMLINK, cwd, a[1], 0, a[0], Second::Text, 0),
        nr::SYMLINKAT => two(op::SYMLINK, a[1] as i32, a[2], 0, a[0], Second::Text, 0),
        nr::CHMOD => one(op::PATH_META, cwd, a[0], 0, a[1]),
        nr::FCHMODAT => one(op::PATH_META, dfd, a[1], 0, a[2]),
        nr::FCHMODAT2 => one(op::PATH_META, dfd, a[1], a[3], a[2]),
        nr::CHOWN | nr::UTIME | nr::UTIMES => one(op::PATH_META, cwd, a[0], 0, 0),
        nr::LCHOWN => one(op::PATH_META, cwd, a[0], AT_SYMLINK_NOFOLLOW, 0),
        nr::FCHOWNAT => one(op::PATH_META, dfd, a[1], a[4], 0),
        nr::FUTIMESAT => one(op::PATH_META, dfd, a[1], 0, 0),
        nr::UTIMENSAT => one(op::PATH_META, dfd, a[1], a[3], 0),
        nr::TRUNCATE => {
            let mut p = one(op::PATH_TRUNCATE, cwd, a[0], 0, 0);
            p.size = a[1];
            p
        }
        nr::MKNOD => {
            let mut p = one(op::MKNOD, cwd, a[0], 0, a[1]);
            p.size = a[2] & 0xffff_ffff;
            p
        }
        nr::MKNODAT => {
            let mut p = one(op::MKNOD, dfd, a[1], 0, a[2]);
            p.size = a[3] & 0xffff_ffff;
            p
        }
        _ => return None,
    })
}

/// Copies a user string into `dst`; an unreadable one becomes "".
#[inline(always)]
pub fn copy_user_str(dst: *mut u8, src: u64) {
    // SAFETY: `dst` points at PATH_LEN bytes of a reserved ring-buffer record and
    // the helper never writes more than the size it is given.
    let r = unsafe {
        generated::bpf_probe_read_user_str(
            dst as *mut c_void,
            PATH_LEN as u32,
            src as *const c_void,
        )
    };
    if r <= 0 {
        // SAFETY: as above; the record is at least one byte long.
        unsafe { *dst = 0 };
    }
}

pub fn on_exit(cfg: &Config, n: u64, a: &SysArgs, ret: i64) -> Res<()> {
    let Some(p) = plan(n, a) else { return Ok(()) };
    let o = &cfg.offsets;
    let task = current_task();
    let mut target = InodeId::default();
    if p.op == op::OPEN_CREATE {
        let creates = p.flags & (O_CREAT | O_TRUNC) != 0;
        let writable = p.flags & O_ACCMODE != 0;
        // Read-only opens, by far the most common, cost nothing more.
        if !creates && !writable {
            return Ok(());
        }
        // The new fd names the file exactly, so filter on it rather than the path.
        let Some(id) = watched(cfg, fd_inode(o, task, ret as i32)?)? else {
            return Ok(());
        };
        // It will most likely write there: from now on look at the entry of its
        // writes that need it (see `entry`).
        let mut bits = if fd_table_shared(o, task).unwrap_or(true) {
            writer::SHARED
        } else {
            0
        };
        if p.flags & O_APPEND != 0 {
            bits |= writer::APPENDS;
        }
        if bits != 0 {
            note_writer((bpf_get_current_pid_tgid() >> 32) as u32, bits);
        }
        if !creates {
            return Ok(());
        }
        target = id;
    }
    let base1 = base_dir(cfg, task, p.dfd1);
    let base2 = if p.second == Second::Path {
        base_dir(cfg, task, p.dfd2)
    } else {
        InodeId::default()
    };

    let Some(mut entry) = EVENTS.reserve::<PathEvent>(0) else {
        count_drop();
        return Ok(());
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a reserved, exclusively owned ring-buffer record of the right
    // size; fields are written through raw pointers because it is uninitialised.
    let keep = unsafe {
        (*ev).header = header(kind::PATH, p.op);
        (*ev).base1 = base1;
        (*ev).base2 = base2;
        (*ev).target = target;
        (*ev).flags = p.flags as u32;
        (*ev).mode = p.mode as u32;
        (*ev).size = p.size;
        let path1 = core::ptr::addr_of_mut!((*ev).path1) as *mut u8;
        let path2 = core::ptr::addr_of_mut!((*ev).path2) as *mut u8;
        copy_user_str(path1, p.p1);
        if p.second == Second::None {
            *path2 = 0;
        } else {
            copy_user_str(path2, p.p2);
        }
        let near = |base: InodeId| base.dev == cfg.watched_dev || base.dev == ANCESTOR_DEV;
        p.op == op::OPEN_CREATE
            || *path1 == b'/'
            || near(base1)
            || (p.second == Second::Path && (*path2 == b'/' || near(base2)))
    };
    if keep {
        entry.submit(0);
    } else {
        entry.discard(0);
    }
    Ok(())
}
