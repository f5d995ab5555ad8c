//! Confined file-system primitives: every lookup starts at the root's fd and is
//! resolved by the kernel with `RESOLVE_BENEATH`, so no path, `..` or symlink can
//! reach outside the replicated tree.

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
/// (`EXDEV`) or goes through a magic link such as `/proc/self/fd/N`.
pub(crate) fn open_beneath(
    root: BorrowedFd<'_>,
    path: &Path,
    flags: OFlag,
) -> nix::Result<OwnedFd> {
    let mut how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
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
/// below it. A missing entry is not an error.
pub(crate) fn remove_any(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<()> {
    match lstat_at(dir, name)? {
        None => Ok(()),
        Some(stat) if kind_of(&stat) == SFlag::S_IFDIR => remove_tree(dir, name),
        Some(_) => ignore_missing(unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)),
    }
}

/// Removes directory `name` in `parent` recursively. Each level is opened with
/// `O_NOFOLLOW` relative to the fd of the level above, so a symlink met on the way
/// is unlinked, never followed.
pub(crate) fn remove_tree(parent: BorrowedFd<'_>, name: &OsStr) -> nix::Result<()> {
    let fd = match openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Err(Errno::ENOENT) => return Ok(()),
        other => other?,
    };
    let mut dir = Dir::from_fd(fd)?;
    let children: Vec<(CString, Option<Type>)> = dir
        .iter()
        .filter_map(Result::ok)
        .filter(|e| !matches!(e.file_name().to_bytes(), b"." | b".."))
        .map(|e| (e.file_name().to_owned(), e.file_type()))
        .collect();
    for (child, kind) in children {
        let child = OsStr::from_bytes(child.as_bytes());
        let is_dir = match kind {
            Some(kind) => kind == Type::Directory,
            None => lstat_at(dir.as_fd(), child)?.is_some_and(|s| kind_of(&s) == SFlag::S_IFDIR),
        };
        if is_dir {
            remove_tree(dir.as_fd(), child)?;
        } else {
            ignore_missing(unlinkat(dir.as_fd(), child, UnlinkatFlags::NoRemoveDir))?;
        }
    }
    drop(dir);
    ignore_missing(unlinkat(parent, name, UnlinkatFlags::RemoveDir))
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
