//! Confined file-system primitives: every lookup starts at the root's fd and is
//! resolved by the kernel with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, so no path,
//! `..` or symlink can reach outside the replicated tree, and a path names exactly
//! the directories its text names (an alias such as `x -> .` cannot lead into
//! `.sluice`). Trees are walked iteratively, holding two descriptors at a time, so
//! no depth can exhaust the stack or the descriptor table.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// How many times a lookup is retried when the kernel reports a concurrent rename
/// (`EAGAIN` from `openat2` with `RESOLVE_BENEATH`).
const EAGAIN_RETRIES: usize = 8;

/// Opens `path` below `root` with `flags`, refusing any resolution that leaves it
/// (`EXDEV`) or goes through a symlink (`ELOOP`): the agent names real
/// directories, so a symlink met on the way means the standby's copy differs, or
/// the path is an attempt to reach somewhere its text does not say.
pub(crate) fn open_beneath(
    root: BorrowedFd<'_>,
    path: &Path,
    flags: OFlag,
) -> nix::Result<OwnedFd> {
    let mut how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    // openat2 refuses a non-zero mode without O_CREAT; created files start private
    // and get their real mode from the SetAttrs that follows.
    if flags.contains(OFlag::O_CREAT) {
        how = how.mode(Mode::from_bits_truncate(0o600));
    }
    let mut attempt = 0;
    loop {
        match openat2(root, path, how) {
            Err(Errno::EAGAIN) if attempt < EAGAIN_RETRIES => attempt += 1,
            other => return other,
        }
    }
}

/// `lstat` of `name` in `dir`; `None` when it does not exist.
pub(crate) fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<Option<FileStat>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(stat)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The file type bits of a stat.
pub(crate) fn kind_of(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits())
}

/// Removes `name` in `dir` whatever it is; a directory goes with everything
/// below it. A missing entry is not an error. `.` and `..` are refused: removing
/// them would mean removing the directory itself or its parent.
pub(crate) fn remove_any(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<()> {
    if is_dot(name) {
        return Err(Errno::EINVAL);
    }
    match lstat_at(dir, name)? {
        None => Ok(()),
        Some(stat) if kind_of(&stat) == SFlag::S_IFDIR => remove_tree(dir, name),
        Some(_) => ignore_missing(unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)),
    }
}

/// True for `.` and `..`, which name no entry of their own.
pub(crate) fn is_dot(name: &OsStr) -> bool {
    matches!(name.as_bytes(), b"." | b"..")
}

/// Removes directory `name` in `parent` with everything below it. Each level is
/// opened with `O_NOFOLLOW` relative to the level above, so a symlink met on the
/// way is unlinked, never followed.
pub(crate) fn remove_tree(parent: BorrowedFd<'_>, name: &OsStr) -> nix::Result<()> {
    walk(
        parent,
        name,
        |dir, child, _| ignore_missing(unlinkat(dir, child, UnlinkatFlags::NoRemoveDir)),
        |dir, child| ignore_missing(unlinkat(dir, child, UnlinkatFlags::RemoveDir)),
    )
}

const WALK_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// One directory of a walk: its name in its parent, its identity, and the
/// subdirectories still to visit.
struct Level {
    name: CString,
    id: (libc::dev_t, libc::ino_t),
    pending: Vec<CString>,
}

/// Walks directory `name` in `parent` depth first without recursion: `entry` is
/// called for every entry that is not a directory (with its parent's fd), `done`
/// for every directory once everything below it was visited (with the fd of the
/// directory holding it; the last call is for `name` in `parent`). A missing
/// `name` is an empty walk.
///
/// Only the current directory is open: the walk climbs back with `..`, and
/// checks that it arrives where it came from, so an entry moved while walking
/// stops the walk (`ESTALE`) instead of sending it elsewhere.
pub(crate) fn walk(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    mut entry: impl FnMut(BorrowedFd<'_>, &OsStr, &FileStat) -> nix::Result<()>,
    mut done: impl FnMut(BorrowedFd<'_>, &OsStr) -> nix::Result<()>,
) -> nix::Result<()> {
    let name = CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)?;
    let (mut current, first) = match descend(parent, &name, &mut entry)? {
        Some(opened) => opened,
        None => return Ok(()),
    };
    let mut levels = vec![first];
    loop {
        let level = levels.last_mut().expect("the walk ends when the first level is done");
        if let Some(child) = level.pending.pop() {
            if let Some((fd, level)) = descend(current.as_fd(), &child, &mut entry)? {
                current = fd;
                levels.push(level);
            }
            continue;
        }
        let finished = levels.pop().expect("checked above");
        let Some(above) = levels.last() else {
            drop(current);
            return done(parent, OsStr::from_bytes(finished.name.as_bytes()));
        };
        let up = openat(current.as_fd(), "..", WALK_FLAGS, Mode::empty())?;
        let stat = nix::sys::stat::fstat(&up)?;
        if (stat.st_dev, stat.st_ino) != above.id {
            return Err(Errno::ESTALE);
        }
        current = up;
        done(current.as_fd(), OsStr::from_bytes(finished.name.as_bytes()))?;
    }
}

/// Opens directory `name` in `parent` for a walk, hands its non-directory
/// entries to `entry` and returns it with its subdirectories; `None` when it is
/// gone. Something other than a directory in its place goes to `entry` too.
fn descend(
    parent: BorrowedFd<'_>,
    name: &CString,
    entry: &mut impl FnMut(BorrowedFd<'_>, &OsStr, &FileStat) -> nix::Result<()>,
) -> nix::Result<Option<(OwnedFd, Level)>> {
    let fd = match openat(parent, name.as_c_str(), WALK_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ENOTDIR | Errno::ELOOP) => {
            let child = OsStr::from_bytes(name.as_bytes());
            if let Some(stat) = lstat_at(parent, child)? {
                entry(parent, child, &stat)?;
            }
            return Ok(None);
        }
        Err(errno) => return Err(errno),
    };
    let stat = nix::sys::stat::fstat(&fd)?;
    let mut pending = Vec::new();
    for (child, _) in list_dir(fd.as_fd())? {
        let child_name = OsStr::from_bytes(&child);
        let Some(child_stat) = lstat_at(fd.as_fd(), child_name)? else { continue };
        if kind_of(&child_stat) == SFlag::S_IFDIR {
            pending.push(CString::new(child).map_err(|_| Errno::EINVAL)?);
        } else {
            entry(fd.as_fd(), child_name, &child_stat)?;
        }
    }
    Ok(Some((fd, Level { name: name.clone(), id: (stat.st_dev, stat.st_ino), pending })))
}

/// How many entries `name` in `parent` is: 1, or for a directory, 1 and all
/// below it. Unreadable parts count as nothing more.
pub(crate) fn count_tree(parent: BorrowedFd<'_>, name: &OsStr) -> u64 {
    let count = std::cell::Cell::new(0u64);
    let add = |_: BorrowedFd<'_>, _: &OsStr| {
        count.set(count.get() + 1);
        Ok(())
    };
    match lstat_at(parent, name) {
        Ok(Some(stat)) if kind_of(&stat) == SFlag::S_IFDIR => {
            let _ = walk(parent, name, |dir, child, _| add(dir, child), add);
            count.get().max(1)
        }
        Ok(Some(_)) => 1,
        _ => 0,
    }
}

/// Lists the names in directory `dir` (without `.` and `..`).
pub(crate) fn list_dir(dir: BorrowedFd<'_>) -> nix::Result<Vec<(Vec<u8>, Option<Type>)>> {
    let fd = openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut dir = Dir::from_fd(fd)?;
    Ok(dir
        .iter()
        .filter_map(Result::ok)
        .filter(|e| !matches!(e.file_name().to_bytes(), b"." | b".."))
        .map(|e| (e.file_name().to_bytes().to_vec(), e.file_type()))
        .collect())
}

/// `fchmodat2(dir, name, mode, AT_SYMLINK_NOFOLLOW)`: changes the mode without
/// following a symlink at the last component, which plain `fchmodat` cannot do
/// race-free on glibc before 2.39.
pub(crate) fn chmod_nofollow(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> nix::Result<()> {
    let name = CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call, and `dir`
    // is a borrowed, open fd; the syscall reads no other memory.
    let res = unsafe {
        libc::syscall(
            libc::SYS_fchmodat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            mode & 0o7777,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    Errno::result(res).map(drop)
}

fn ignore_missing(result: nix::Result<()>) -> nix::Result<()> {
    match result {
        Err(Errno::ENOENT) => Ok(()),
        other => other,
    }
}
