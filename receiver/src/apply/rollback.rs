//! The rollback directory: content that replication would destroy on the standby
//! is kept under `.sluice/rollback/<UTC date>/<original path>` instead (like
//! `rsync --backup-dir`), and date directories past their age are expired.
//!
//! Removed entries and overwritten rename targets are moved there with one
//! `renameat2` on the same filesystem, so keeping even a large tree copies
//! nothing. A truncated file is copied instead, because the live file must stay
//! the same inode; `copy_file_range` lets btrfs and xfs share the extents.
//!
//! Names are resolved one component at a time relative to directory fds with
//! `O_NOFOLLOW`, below the root's fd, like everything else the applier does.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{OFlag, RenameFlags, openat, renameat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, futimens, mkdirat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, Whence, fchown, lseek, unlinkat};
use prometheus_client::metrics::counter::Counter;
use sluice_proto::RelPath;

use super::fs::{is_dot, kind_of, list_dir, lstat_at, open_beneath, remove_any, remove_tree, walk};
use super::{Applier, ApplyError, STATE_DIR, open_root, sys};

/// The rollback directory, inside [`STATE_DIR`].
pub const ROLLBACK_DIR: &str = "rollback";
/// Directories made in the rollback tree are private: what they hold may come
/// from directories that were less readable than the defaults.
const PRIVATE_DIR_MODE: u32 = 0o700;
/// Longest file name the common Linux filesystems accept; suffixes must fit.
const NAME_MAX: usize = 255;
/// Largest single `copy_file_range` request.
const COPY_CHUNK: usize = 1 << 30;
/// Buffer of the read/write fallback copy.
const FALLBACK_BUFFER: usize = 128 * 1024;
const SECONDS_PER_DAY: i64 = 86_400;

/// Handles on the counters of what was kept; the defaults count without being
/// exported.
#[derive(Clone, Debug, Default)]
pub struct RollbackCounters {
    /// Bytes of file content moved or copied into the rollback directory.
    pub bytes_kept: Counter,
    /// Names kept (a moved directory counts with everything below it).
    pub entries_kept: Counter,
}

/// The applier's rollback settings, present when rollback is enabled.
pub(crate) struct Rollback {
    counters: RollbackCounters,
    /// The clock that names the date directory; replaced in tests.
    clock: fn() -> SystemTime,
}

/// A UTC calendar day, counted from 1970-01-01.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Day(i64);

impl Day {
    /// The UTC day `time` falls on.
    pub fn of(time: SystemTime) -> Day {
        let secs = match time.duration_since(UNIX_EPOCH) {
            Ok(after) => after.as_secs() as i64,
            Err(before) => {
                let before = before.duration();
                -(before.as_secs() as i64) - i64::from(before.subsec_nanos() > 0)
            }
        };
        Day(secs.div_euclid(SECONDS_PER_DAY))
    }

    /// Parses a date directory's name, `YYYY-MM-DD`; anything else is `None`.
    pub fn parse(name: &[u8]) -> Option<Day> {
        let [y0, y1, y2, y3, b'-', m0, m1, b'-', d0, d1] = *name else {
            return None;
        };
        let number = |digits: &[u8]| {
            digits.iter().try_fold(0u32, |acc, &b| {
                b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
            })
        };
        let (year, month, day) = (
            number(&[y0, y1, y2, y3])?,
            number(&[m0, m1])?,
            number(&[d0, d1])?,
        );
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
            return None;
        }
        let parsed = Day(days_from_civil(i64::from(year), month, day));
        // Rejects dates such as 2023-02-30, which the arithmetic would roll over.
        (parsed.civil() == (i64::from(year), month, day)).then_some(parsed)
    }

    /// Whole days from `self` to `later`.
    pub fn days_until(self, later: Day) -> i64 {
        later.0 - self.0
    }

    fn civil(self) -> (i64, u32, u32) {
        civil_from_days(self.0)
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (year, month, day) = self.civil();
        write!(f, "{year:04}-{month:02}-{day:02}")
    }
}

// Howard Hinnant's proleptic Gregorian conversions (days since 1970-01-01), so
// naming a directory needs no calendar crate.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn kept(path: &RelPath, call: &'static str) -> impl FnOnce(Errno) -> ApplyError {
    move |errno| ApplyError::Rollback {
        path: path.clone(),
        call,
        source: errno.into(),
    }
}

/// `name`, or `name.N` for the `n`th collision, shortened so it stays a valid name.
fn suffixed(name: &OsStr, n: u32) -> OsString {
    if n == 0 {
        return name.to_owned();
    }
    let suffix = format!(".{n}");
    let mut bytes = name.as_bytes().to_vec();
    bytes.truncate(NAME_MAX - suffix.len());
    bytes.extend_from_slice(suffix.as_bytes());
    OsString::from_vec(bytes)
}

/// Opens directory `name` in `parent`, creating it (private) when missing.
fn open_or_create_dir(parent: BorrowedFd<'_>, name: &OsStr) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(parent, name, flags, Mode::empty()) {
        Err(Errno::ENOENT) => {}
        other => return other,
    }
    match mkdirat(parent, name, Mode::from_bits_truncate(PRIVATE_DIR_MODE)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(errno) => return Err(errno),
    }
    openat(parent, name, flags, Mode::empty())
}

/// How many names a kept tree holds and the bytes of its regular files. Only
/// for metrics, so unreadable parts are skipped rather than reported.
fn tree_usage(parent: BorrowedFd<'_>, name: &OsStr) -> (u64, u64) {
    let Ok(Some(stat)) = lstat_at(parent, name) else {
        return (0, 0);
    };
    if kind_of(&stat) != SFlag::S_IFDIR {
        let bytes = if kind_of(&stat) == SFlag::S_IFREG { stat.st_size as u64 } else { 0 };
        return (1, bytes);
    }
    let usage = std::cell::Cell::new((0u64, 0u64));
    let add = |entries: u64, bytes: u64| {
        let (e, b) = usage.get();
        usage.set((e + entries, b + bytes));
    };
    let _ = walk(
        parent,
        name,
        |_, _, stat| {
            add(1, if kind_of(stat) == SFlag::S_IFREG { stat.st_size as u64 } else { 0 });
            Ok(())
        },
        |_, _| {
            add(1, 0);
            Ok(())
        },
    );
    let (entries, bytes) = usage.get();
    (entries.max(1), bytes)
}

/// Moves `name` in `dir` to the first free name among `slot_name`, `slot_name.1`,
/// ... in `slot_dir` and returns the name it got, or `None` when `name` was an
/// empty directory whose name is already kept there as a directory (after
/// `rm -r`, its files were kept one by one under that name, and a second, empty
/// copy would restore nothing).
fn move_to_free_name(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    collapse_empty_dir: bool,
    slot_dir: BorrowedFd<'_>,
    slot_name: &OsStr,
) -> nix::Result<Option<OsString>> {
    let mut no_replace = true;
    let mut n = 0;
    loop {
        let candidate = suffixed(slot_name, n);
        let result = if no_replace {
            renameat2(
                dir,
                name,
                slot_dir,
                candidate.as_os_str(),
                RenameFlags::RENAME_NOREPLACE,
            )
        } else if lstat_at(slot_dir, &candidate)?.is_some() {
            Err(Errno::EEXIST)
        } else {
            // Nothing else writes to the rollback directory, so the check above
            // cannot go stale.
            renameat2(
                dir,
                name,
                slot_dir,
                candidate.as_os_str(),
                RenameFlags::empty(),
            )
        };
        match result {
            Ok(()) => return Ok(Some(candidate)),
            // A filesystem without RENAME_NOREPLACE.
            Err(Errno::EINVAL) if no_replace => no_replace = false,
            Err(Errno::EEXIST) => {
                if n == 0
                    && collapse_empty_dir
                    && lstat_at(slot_dir, &candidate)?
                        .is_some_and(|s| kind_of(&s) == SFlag::S_IFDIR)
                {
                    match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
                        Ok(()) => return Ok(None),
                        Err(Errno::ENOTEMPTY | Errno::EEXIST) => {}
                        Err(errno) => return Err(errno),
                    }
                }
                n += 1;
            }
            Err(errno) => return Err(errno),
        }
    }
}

/// Makes a hard link to `name` in `dir` at the first free name among
/// `slot_name`, `slot_name.1`, ... in `slot_dir`, and returns the name it got.
fn link_to_free_name(dir: BorrowedFd<'_>, name: &OsStr, slot_dir: BorrowedFd<'_>, slot_name: &OsStr) -> nix::Result<OsString> {
    let mut n = 0;
    loop {
        let candidate = suffixed(slot_name, n);
        match nix::unistd::linkat(dir, name, slot_dir, candidate.as_os_str(), nix::fcntl::AtFlags::empty()) {
            Ok(()) => return Ok(candidate),
            Err(Errno::EEXIST) => n += 1,
            Err(errno) => return Err(errno),
        }
    }
}

/// A rename target kept in the rollback directory before the rename that
/// replaces it: counted once the rename happened, put back if it failed.
pub(crate) struct KeptTarget {
    slot_dir: OwnedFd,
    kept_name: OsString,
    /// The target itself was moved (a directory), rather than linked (a file).
    moved: bool,
    entries: u64,
    bytes: u64,
    counters: RollbackCounters,
}

impl KeptTarget {
    /// The rename happened: what was kept is the only copy now.
    pub(crate) fn commit(self) {
        self.counters.entries_kept.inc_by(self.entries);
        self.counters.bytes_kept.inc_by(self.bytes);
        tracing::debug!(kept = %Path::new(&self.kept_name).display(), entries = self.entries, bytes = self.bytes, "rename target kept in the rollback directory");
    }

    /// The rename failed: puts the live tree back as it was.
    pub(crate) fn undo(self, to_dir: BorrowedFd<'_>, to_name: &OsStr, to: &RelPath) -> Result<(), ApplyError> {
        let result = if self.moved {
            renameat2(self.slot_dir.as_fd(), self.kept_name.as_os_str(), to_dir, to_name, RenameFlags::RENAME_NOREPLACE)
        } else {
            unlinkat(self.slot_dir.as_fd(), self.kept_name.as_os_str(), UnlinkatFlags::NoRemoveDir)
        };
        result.map_err(kept(to, "undo"))
    }
}

/// Creates a new file for a copy at the first free name among `slot_name`,
/// `slot_name.1`, ... in `slot_dir`.
fn create_at_free_name(
    slot_dir: BorrowedFd<'_>,
    slot_name: &OsStr,
) -> nix::Result<(File, OsString)> {
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut n = 0;
    loop {
        let candidate = suffixed(slot_name, n);
        match openat(
            slot_dir,
            candidate.as_os_str(),
            flags,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => return Ok((File::from(fd), candidate)),
            Err(Errno::EEXIST) => n += 1,
            Err(errno) => return Err(errno),
        }
    }
}

/// Copies `len` bytes at `offset` from `source` to the same offset in `dest`,
/// with `copy_file_range` while the filesystem supports it.
fn copy_range(
    source: &File,
    dest: &File,
    offset: u64,
    len: u64,
    in_kernel: &mut bool,
) -> std::io::Result<()> {
    let mut done = 0;
    while *in_kernel && done < len {
        let mut off_in = (offset + done) as libc::loff_t;
        let mut off_out = off_in;
        let chunk = (len - done).min(COPY_CHUNK as u64) as usize;
        // SAFETY: both fds are open for the duration of the call and the offset
        // pointers refer to live locals; the kernel touches no other memory.
        let copied = unsafe {
            libc::copy_file_range(
                source.as_raw_fd(),
                &mut off_in,
                dest.as_raw_fd(),
                &mut off_out,
                chunk,
                0,
            )
        };
        match copied {
            0 => return Ok(()),
            n if n > 0 => done += n as u64,
            _ => match Errno::last() {
                Errno::EINTR => {}
                Errno::EXDEV | Errno::EOPNOTSUPP | Errno::ENOSYS | Errno::EINVAL if done == 0 => {
                    *in_kernel = false
                }
                errno => return Err(errno.into()),
            },
        }
    }
    let mut buffer = vec![0; FALLBACK_BUFFER.min(len.saturating_sub(done) as usize)];
    while done < len {
        let chunk = (len - done).min(buffer.len() as u64) as usize;
        let read = source.read_at(&mut buffer[..chunk], offset + done)?;
        if read == 0 {
            break;
        }
        dest.write_all_at(&buffer[..read], offset + done)?;
        done += read as u64;
    }
    Ok(())
}

/// Copies the data of `source` (`size` bytes) into the empty `dest`, skipping
/// holes so a sparse file stays sparse; returns the bytes of data copied.
fn copy_content(source: &File, dest: &File, size: u64) -> std::io::Result<u64> {
    let mut in_kernel = true;
    let mut copied = 0;
    let mut offset = 0;
    while offset < size {
        let data = match lseek(source, offset as libc::off_t, Whence::SeekData) {
            Ok(data) => data as u64,
            // No data past `offset`: the rest is one hole.
            Err(Errno::ENXIO) => break,
            // No hole support: all of it is data.
            Err(Errno::EINVAL) => offset,
            Err(errno) => return Err(errno.into()),
        };
        let hole = match lseek(source, data as libc::off_t, Whence::SeekHole) {
            Ok(hole) => (hole as u64).min(size),
            Err(Errno::EINVAL) => size,
            Err(errno) => return Err(errno.into()),
        };
        copy_range(
            source,
            dest,
            data,
            hole.saturating_sub(data),
            &mut in_kernel,
        )?;
        copied += hole.saturating_sub(data);
        offset = hole.max(data + 1);
    }
    dest.set_len(size)?;
    Ok(copied)
}

/// Gives the copy the original's owner, mode and times; an error names the
/// failed call. Without the right to chown, the set-id bits are dropped rather
/// than granted to the receiver's user.
fn preserve_metadata(copy: &File, original: &FileStat) -> Result<(), (&'static str, Errno)> {
    let mut mode = original.st_mode & 0o7777;
    match fchown(
        copy,
        Some(Uid::from_raw(original.st_uid)),
        Some(Gid::from_raw(original.st_gid)),
    ) {
        Ok(()) => {}
        Err(Errno::EPERM) => mode &= !(libc::S_ISUID | libc::S_ISGID),
        Err(errno) => return Err(("fchown", errno)),
    }
    fchmod(copy, Mode::from_bits_truncate(mode)).map_err(|errno| ("fchmod", errno))?;
    let atime = TimeSpec::new(original.st_atime, original.st_atime_nsec);
    let mtime = TimeSpec::new(original.st_mtime, original.st_mtime_nsec);
    futimens(copy, &atime, &mtime).map_err(|errno| ("futimens", errno))
}

impl Applier {
    /// Keeps what later operations would destroy in the rollback directory,
    /// counting it in `counters`.
    /// True when what replication replaces is kept.
    pub fn rollback_enabled(&self) -> bool {
        self.rollback.is_some()
    }

    /// Stops keeping what replication destroys.
    pub fn disable_rollback(&mut self) {
        self.rollback = None;
    }

    pub fn enable_rollback(&mut self, counters: RollbackCounters) {
        self.rollback = Some(Rollback {
            counters,
            clock: SystemTime::now,
        });
    }

    /// Removes `name` in `dir` (which is `path`), keeping it in the rollback
    /// directory when that is enabled. A missing entry is not an error.
    pub(crate) fn keep_or_remove(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        path: &RelPath,
    ) -> Result<(), ApplyError> {
        if is_dot(name) || path.is_root() {
            return Err(ApplyError::Root { op: "removal" });
        }
        if self.rollback.is_none() {
            return remove_any(dir, name).map_err(sys(path, "unlinkat"));
        }
        let Some(stat) = lstat_at(dir, name).map_err(sys(path, "fstatat"))? else {
            return Ok(());
        };
        if kind_of(&stat) == SFlag::S_IFREG && stat.st_nlink > 1 {
            // Another name keeps the content alive.
            return match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => Ok(()),
                Err(errno) => Err(sys(path, "unlinkat")(errno)),
            };
        }
        self.keep_by_moving(dir, name, path, &stat)
    }

    /// Before a rename of `from` over `to`: keeps the `to` that would be
    /// overwritten, and returns what was kept so the caller can undo it if the
    /// rename fails. Nothing is kept when the rename cannot overwrite it (a
    /// missing source, kinds that do not replace each other, the same inode under
    /// two names) or would not destroy content (a file with other names).
    ///
    /// A file is kept as a second hard link, so its name stays in the live tree
    /// until the rename itself replaces it; a directory (empty on the master, as
    /// the rename would have failed there otherwise) is moved, and moved back if
    /// the rename fails.
    pub(crate) fn keep_rename_target(
        &mut self,
        (from_dir, from_name, from): (BorrowedFd<'_>, &OsStr, &RelPath),
        (to_dir, to_name, to): (BorrowedFd<'_>, &OsStr, &RelPath),
    ) -> Result<Option<KeptTarget>, ApplyError> {
        let Some(rollback) = &self.rollback else {
            return Ok(None);
        };
        let counters = rollback.counters.clone();
        let Some(source) = lstat_at(from_dir, from_name).map_err(sys(from, "fstatat"))? else {
            return Ok(None);
        };
        let Some(target) = lstat_at(to_dir, to_name).map_err(sys(to, "fstatat"))? else {
            return Ok(None);
        };
        if (source.st_dev, source.st_ino) == (target.st_dev, target.st_ino) {
            return Ok(None);
        }
        let source_is_dir = kind_of(&source) == SFlag::S_IFDIR;
        let replaced = match kind_of(&target) {
            SFlag::S_IFREG => target.st_nlink == 1 && !source_is_dir,
            // A rename into its own subtree, or over an ancestor, fails anyway.
            SFlag::S_IFDIR => source_is_dir && !from.starts_with(to) && !to.starts_with(from),
            _ => false,
        };
        if !replaced {
            return Ok(None);
        }
        let (slot_dir, slot_name) = self.rollback_slot(to)?;
        let is_file = kind_of(&target) == SFlag::S_IFREG;
        let result = if is_file {
            link_to_free_name(to_dir, to_name, slot_dir.as_fd(), &slot_name).map(|name| (name, false))
        } else {
            move_to_free_name(to_dir, to_name, false, slot_dir.as_fd(), &slot_name)
                .map(|name| (name.expect("only collapsed when asked"), true))
        };
        let (kept_name, moved) = match result {
            Ok(kept) => kept,
            Err(Errno::EXDEV) => {
                tracing::warn!(path = %to, "on another filesystem than the rollback directory; replaced without keeping");
                return Ok(None);
            }
            Err(errno) => return Err(kept(to, if is_file { "linkat" } else { "renameat2" })(errno)),
        };
        let (entries, bytes) = if is_file {
            (1, target.st_size as u64)
        } else {
            tree_usage(slot_dir.as_fd(), &kept_name)
        };
        Ok(Some(KeptTarget { slot_dir, kept_name, moved, entries, bytes, counters }))
    }

    /// Before `path` is truncated (or recreated empty): copies its content to the
    /// rollback directory when it is a regular file longer than `new_size`.
    pub(crate) fn keep_before_truncate(&mut self, path: &RelPath, new_size: u64) -> Result<(), ApplyError> {
        self.keep_file_if(path, |stat| stat.st_size as u64 > new_size)
    }

    /// Copies `path` to the rollback directory if it is a regular file; anything
    /// else is left alone (removing or replacing it keeps it anyway).
    pub fn keep_file(&mut self, path: &RelPath) -> Result<(), ApplyError> {
        self.keep_file_if(path, |_| true)
    }

    fn keep_file_if(&mut self, path: &RelPath, wanted: impl FnOnce(&FileStat) -> bool) -> Result<(), ApplyError> {
        if self.rollback.is_none() {
            return Ok(());
        }
        let (dir, name) = match self.parent(path) {
            Ok(found) => found,
            // Left for the changing call to report.
            Err(ApplyError::MissingParent { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        match lstat_at(dir.as_fd(), name).map_err(sys(path, "fstatat"))? {
            Some(stat) if kind_of(&stat) == SFlag::S_IFREG && wanted(&stat) => self.keep_copy(path, &stat),
            _ => Ok(()),
        }
    }

    /// Copies regular file `path` (whose lstat is `stat`) to the rollback directory.
    pub(crate) fn keep_copy(&mut self, path: &RelPath, stat: &FileStat) -> Result<(), ApplyError> {
        let Some(rollback) = &self.rollback else {
            return Ok(());
        };
        let counters = rollback.counters.clone();
        let source = self.open_read(path)?;
        let (slot_dir, slot_name) = self.rollback_slot(path)?;
        let (copy, copy_name) =
            create_at_free_name(slot_dir.as_fd(), &slot_name).map_err(kept(path, "openat"))?;
        let copied = copy_content(&source, &copy, stat.st_size as u64)
            .map_err(|source| ApplyError::Rollback {
                path: path.clone(),
                call: "copy_file_range",
                source,
            })
            .and_then(|copied| {
                preserve_metadata(&copy, stat).map_err(|(call, errno)| kept(path, call)(errno))?;
                Ok(copied)
            });
        let copied = match copied {
            Ok(copied) => copied,
            Err(e) => {
                // A partial copy would pass for the old content.
                let _ = unlinkat(
                    slot_dir.as_fd(),
                    copy_name.as_os_str(),
                    UnlinkatFlags::NoRemoveDir,
                );
                return Err(e);
            }
        };
        counters.entries_kept.inc();
        counters.bytes_kept.inc_by(copied);
        tracing::debug!(%path, kept = %Path::new(&copy_name).display(), bytes = copied, "old content copied to the rollback directory");
        Ok(())
    }

    /// Moves `name` in `dir` (which is `path`, with lstat `stat`) into the
    /// rollback directory.
    fn keep_by_moving(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        path: &RelPath,
        stat: &FileStat,
    ) -> Result<(), ApplyError> {
        let Some(rollback) = &self.rollback else {
            return remove_any(dir, name).map_err(sys(path, "unlinkat"));
        };
        let counters = rollback.counters.clone();
        let is_dir = kind_of(stat) == SFlag::S_IFDIR;
        let (slot_dir, slot_name) = self.rollback_slot(path)?;
        let kept_name = match move_to_free_name(dir, name, is_dir, slot_dir.as_fd(), &slot_name) {
            Ok(Some(kept_name)) => kept_name,
            Ok(None) => return Ok(()),
            Err(Errno::EXDEV) => {
                // A mount point inside the tree: keeping would mean copying it
                // across filesystems, which this directory promises never to do.
                tracing::warn!(%path, "on another filesystem than the rollback directory; removed without keeping");
                return remove_any(dir, name).map_err(sys(path, "unlinkat"));
            }
            Err(errno) => return Err(kept(path, "renameat2")(errno)),
        };
        let (entries, bytes) = match kind_of(stat) {
            SFlag::S_IFDIR => tree_usage(slot_dir.as_fd(), &kept_name),
            SFlag::S_IFREG => (1, stat.st_size as u64),
            _ => (1, 0),
        };
        counters.entries_kept.inc_by(entries);
        counters.bytes_kept.inc_by(bytes);
        tracing::debug!(%path, kept = %Path::new(&kept_name).display(), entries, bytes, "moved to the rollback directory");
        Ok(())
    }

    /// Opens (creating as needed) the directory of today's rollback directory
    /// that mirrors `path`'s parent, and returns it with `path`'s name. A parent
    /// name already kept as something other than a directory gets a suffix.
    fn rollback_slot(&self, path: &RelPath) -> Result<(OwnedFd, OsString), ApplyError> {
        let rollback = self
            .rollback
            .as_ref()
            .expect("only called with rollback enabled");
        let day = Day::of((rollback.clock)()).to_string();
        let mut dir = open_or_create_dir(self.root_fd(), OsStr::new(STATE_DIR))
            .map_err(kept(path, "mkdirat"))?;
        for fixed in [ROLLBACK_DIR, day.as_str()] {
            dir = open_or_create_dir(dir.as_fd(), OsStr::new(fixed))
                .map_err(kept(path, "mkdirat"))?;
        }
        let name = path.file_name().expect("the root is never kept").to_owned();
        let parent = match path.parent() {
            Some(parent) if !parent.is_root() => parent,
            _ => return Ok((dir, name)),
        };
        for component in parent.as_bytes().split(|&b| b == b'/') {
            let component = OsStr::from_bytes(component);
            dir = (0..)
                .map(|n| open_or_create_dir(dir.as_fd(), &suffixed(component, n)))
                .find(|opened| !matches!(opened, Err(Errno::ENOTDIR | Errno::ELOOP)))
                .expect("an unbounded search ends at a free name")
                .map_err(kept(path, "mkdirat"))?;
        }
        Ok((dir, name))
    }
}

/// What `<root>/.sluice/rollback` holds: entries and bytes of regular files
/// (zero when there is none). Unreadable parts are skipped: this is for people.
pub fn usage(root: &Path) -> Result<(u64, u64), ApplyError> {
    let root_fd = open_root(root)?;
    let state_path = RelPath::from_bytes(STATE_DIR).expect("a valid constant path");
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
    let state = match open_beneath(root_fd.as_fd(), state_path.as_path(), flags) {
        Ok(dir) => dir,
        Err(Errno::ENOENT) => return Ok((0, 0)),
        Err(errno) => return Err(kept(&state_path, "openat2")(errno)),
    };
    match lstat_at(state.as_fd(), OsStr::new(ROLLBACK_DIR)) {
        Ok(Some(_)) => {
            let (entries, bytes) = tree_usage(state.as_fd(), OsStr::new(ROLLBACK_DIR));
            // The directory itself is not something kept.
            Ok((entries.saturating_sub(1), bytes))
        }
        _ => Ok((0, 0)),
    }
}

/// Deletes the date directories under `<root>/.sluice/rollback` that are more than
/// `keep_days` days before the UTC day of `now`, so everything kept stays at
/// least `keep_days` full days; returns their names. Other names are left alone.
pub fn expire(root: &Path, keep_days: u32, now: SystemTime) -> Result<Vec<String>, ApplyError> {
    let root_fd = open_root(root)?;
    let rollback_path =
        RelPath::from_bytes(format!("{STATE_DIR}/{ROLLBACK_DIR}")).expect("a valid constant path");
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
    let dir = match open_beneath(root_fd.as_fd(), rollback_path.as_path(), flags) {
        Ok(dir) => dir,
        Err(Errno::ENOENT) => return Ok(Vec::new()),
        Err(errno) => return Err(kept(&rollback_path, "openat2")(errno)),
    };
    let today = Day::of(now);
    let mut expired = Vec::new();
    let mut names = list_dir(dir.as_fd()).map_err(kept(&rollback_path, "readdir"))?;
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, _) in names {
        let Some(day) = Day::parse(&name) else {
            continue;
        };
        if day.days_until(today) <= i64::from(keep_days) {
            continue;
        }
        let name = OsStr::from_bytes(&name);
        let day_path = rollback_path.join(name).expect("a date is a valid name");
        remove_tree(dir.as_fd(), name).map_err(kept(&day_path, "unlinkat"))?;
        expired.push(day.to_string());
    }
    Ok(expired)
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::path::PathBuf;
    use std::time::Duration;

    use sluice_proto::{Attrs, Entry, EntryKind, Meta, Op, Timestamp};

    use super::*;
    use crate::apply::tests::{p, write};
    use crate::sync::InitialSync;

    /// 2024-03-05 12:00 UTC.
    const NOW_SECS: u64 = 1_709_640_000;
    const TODAY: &str = "2024-03-05";


    fn rename(from: &str, to: &str, exchange: bool, noreplace: bool) -> Op {
        Op::Rename {
            from: p(from),
            to: p(to),
            exchange,
            noreplace,
        }
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW_SECS)
    }

    /// An applier with rollback enabled and a clock fixed on [`TODAY`].
    fn setup() -> (tempfile::TempDir, Applier, RollbackCounters) {
        let dir = tempfile::tempdir().unwrap();
        let mut applier = Applier::open(dir.path()).unwrap();
        let counters = RollbackCounters::default();
        applier.enable_rollback(counters.clone());
        applier.rollback.as_mut().unwrap().clock = now;
        (dir, applier, counters)
    }

    fn kept_dir(root: &Path) -> PathBuf {
        root.join(STATE_DIR).join(ROLLBACK_DIR).join(TODAY)
    }

    fn counted(counters: &RollbackCounters) -> (u64, u64) {
        (counters.entries_kept.get(), counters.bytes_kept.get())
    }

    #[test]
    fn days_are_named_and_parsed_as_utc_dates() {
        assert_eq!(Day::of(UNIX_EPOCH).to_string(), "1970-01-01");
        assert_eq!(Day::of(now()).to_string(), TODAY);
        assert_eq!(
            Day::of(UNIX_EPOCH - Duration::from_secs(1)).to_string(),
            "1969-12-31"
        );
        for name in ["2024-02-29", "2000-02-29", "1999-12-31", "2100-03-01"] {
            assert_eq!(Day::parse(name.as_bytes()).unwrap().to_string(), name);
        }
        for name in [
            "2023-02-29",
            "2100-02-29",
            "2024-13-01",
            "2024-00-10",
            "2024-1-01",
            "2024-01-01x",
            "notadate!!",
            "20240101",
        ] {
            assert_eq!(Day::parse(name.as_bytes()), None, "{name}");
        }
        let today = Day::of(now());
        assert_eq!(Day::parse(b"2024-02-27").unwrap().days_until(today), 7);
    }

    #[test]
    fn removed_file_is_kept_with_its_content() {
        let (dir, mut a, counters) = setup();
        a.apply(&Op::Mkdir {
            path: p("d"),
            mode: 0o755,
        })
        .unwrap();
        a.apply(&Op::Mkdir {
            path: p("d/e"),
            mode: 0o755,
        })
        .unwrap();
        a.apply(&write("d/e/f", 0, b"precious")).unwrap();
        a.apply(&write("top", 0, b"top-level")).unwrap();
        let ino = fs::metadata(dir.path().join("d/e/f")).unwrap().ino();
        a.apply(&Op::Remove { path: p("d/e/f") }).unwrap();
        a.apply(&Op::Remove { path: p("top") }).unwrap();
        assert!(!dir.path().join("d/e/f").exists());
        let kept = kept_dir(dir.path());
        assert_eq!(fs::read(kept.join("d/e/f")).unwrap(), b"precious");
        assert_eq!(
            fs::metadata(kept.join("d/e/f")).unwrap().ino(),
            ino,
            "moved, not copied"
        );
        assert_eq!(fs::read(kept.join("top")).unwrap(), b"top-level");
        assert_eq!(fs::metadata(kept.join("d")).unwrap().mode() & 0o7777, 0o700);
        assert_eq!(
            fs::metadata(kept.join("d/e")).unwrap().mode() & 0o7777,
            0o700
        );
        assert_eq!(counted(&counters), (2, 17));
        // Removing what is already gone keeps nothing more.
        a.apply(&Op::Remove { path: p("top") }).unwrap();
        assert_eq!(counted(&counters), (2, 17));
    }

    #[test]
    fn removed_tree_is_moved_whole() {
        let (dir, mut a, counters) = setup();
        let root = dir.path();
        fs::create_dir_all(root.join("tree/sub/deeper")).unwrap();
        fs::write(root.join("tree/a"), b"aaaa").unwrap();
        fs::write(root.join("tree/sub/deeper/b"), b"bb").unwrap();
        std::os::unix::fs::symlink("a", root.join("tree/link")).unwrap();
        nix::unistd::mkfifo(&root.join("tree/pipe"), Mode::from_bits_truncate(0o600)).unwrap();
        let ino = fs::metadata(root.join("tree")).unwrap().ino();
        a.apply(&write("tree/sub/cached", 0, b"c")).unwrap();
        a.apply(&Op::Remove { path: p("tree") }).unwrap();
        assert!(!root.join("tree").exists());
        let kept = kept_dir(root).join("tree");
        assert_eq!(
            fs::metadata(&kept).unwrap().ino(),
            ino,
            "one rename of the directory"
        );
        assert_eq!(fs::read(kept.join("a")).unwrap(), b"aaaa");
        assert_eq!(fs::read(kept.join("sub/deeper/b")).unwrap(), b"bb");
        assert_eq!(fs::read(kept.join("sub/cached")).unwrap(), b"c");
        assert_eq!(fs::read_link(kept.join("link")).unwrap(), Path::new("a"));
        assert!(
            fs::symlink_metadata(kept.join("pipe"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        // tree, a, sub, deeper, b, cached, link, pipe.
        assert_eq!(counted(&counters), (8, 7));
        // The cached fd went with the old name: a new write creates a new file.
        a.apply(&Op::Mkdir {
            path: p("tree"),
            mode: 0o755,
        })
        .unwrap();
        a.apply(&Op::Mkdir {
            path: p("tree/sub"),
            mode: 0o755,
        })
        .unwrap();
        a.apply(&write("tree/sub/cached", 0, b"new")).unwrap();
        assert_eq!(fs::read(kept.join("sub/cached")).unwrap(), b"c");
    }

    #[test]
    fn files_removed_one_by_one_then_their_directory_leave_one_tree() {
        let (dir, mut a, _) = setup();
        let root = dir.path();
        fs::create_dir_all(root.join("d/sub")).unwrap();
        fs::write(root.join("d/sub/f"), b"f").unwrap();
        fs::write(root.join("d/g"), b"g").unwrap();
        for path in ["d/sub/f", "d/sub", "d/g", "d"] {
            a.apply(&Op::Remove { path: p(path) }).unwrap();
        }
        assert!(!root.join("d").exists());
        let mut names: Vec<_> = fs::read_dir(kept_dir(root))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["d"]);
        assert_eq!(fs::read(kept_dir(root).join("d/sub/f")).unwrap(), b"f");
        assert_eq!(fs::read(kept_dir(root).join("d/g")).unwrap(), b"g");
    }

    #[test]
    fn symlinks_and_fifos_are_kept_and_hard_linked_files_just_unlinked() {
        let (dir, mut a, counters) = setup();
        let root = dir.path();
        a.apply(&Op::Symlink {
            path: p("l"),
            target: b"/somewhere".to_vec(),
        })
        .unwrap();
        a.apply(&Op::Mkfifo {
            path: p("pipe"),
            mode: 0o640,
        })
        .unwrap();
        a.apply(&write("f", 0, b"shared")).unwrap();
        a.apply(&Op::HardLink {
            existing: p("f"),
            path: p("g"),
        })
        .unwrap();
        for path in ["l", "pipe", "g"] {
            a.apply(&Op::Remove { path: p(path) }).unwrap();
        }
        let kept = kept_dir(root);
        assert_eq!(
            fs::read_link(kept.join("l")).unwrap(),
            Path::new("/somewhere")
        );
        assert!(
            fs::symlink_metadata(kept.join("pipe"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        assert!(!kept.join("g").exists() && !root.join("g").exists());
        assert_eq!(fs::metadata(root.join("f")).unwrap().nlink(), 1);
        assert_eq!(counted(&counters), (2, 0));
        // Now the last name: its content would be gone, so it is kept.
        a.apply(&Op::Remove { path: p("f") }).unwrap();
        assert_eq!(fs::read(kept.join("f")).unwrap(), b"shared");
    }

    #[test]
    fn rename_over_an_existing_file_keeps_the_target() {
        let (dir, mut a, counters) = setup();
        let root = dir.path();
        a.apply(&write("new", 0, b"new content")).unwrap();
        a.apply(&write("old", 0, b"old content")).unwrap();
        a.apply(&rename("new", "old", false, false)).unwrap();
        assert_eq!(fs::read(root.join("old")).unwrap(), b"new content");
        assert!(!root.join("new").exists());
        assert_eq!(
            fs::read(kept_dir(root).join("old")).unwrap(),
            b"old content"
        );
        assert_eq!(counted(&counters), (1, 11));
        // A replay (the source is gone) must not move the live file away.
        a.apply(&rename("new", "old", false, false)).unwrap();
        assert_eq!(fs::read(root.join("old")).unwrap(), b"new content");
        // Exchange and noreplace destroy nothing.
        a.apply(&write("other", 0, b"other")).unwrap();
        a.apply(&rename("other", "old", true, false)).unwrap();
        assert!(a.apply(&rename("other", "old", false, true)).is_err());
        assert_eq!(fs::read(root.join("other")).unwrap(), b"new content");
        // A target with another name keeps its content through that name.
        a.apply(&Op::HardLink {
            existing: p("old"),
            path: p("old-link"),
        })
        .unwrap();
        a.apply(&rename("other", "old", false, false)).unwrap();
        assert_eq!(fs::read(root.join("old-link")).unwrap(), b"other");
        // Renaming one name of a file over another is a no-op, not a loss.
        a.apply(&Op::HardLink {
            existing: p("old"),
            path: p("twin"),
        })
        .unwrap();
        a.apply(&rename("twin", "old", false, false)).unwrap();
        assert_eq!(fs::read(root.join("old")).unwrap(), b"new content");
        assert_eq!(counted(&counters), (1, 11));
        // An empty directory replaced by a directory.
        fs::create_dir_all(root.join("from/inside")).unwrap();
        fs::create_dir(root.join("to")).unwrap();
        a.apply(&rename("from", "to", false, false)).unwrap();
        assert!(root.join("to/inside").is_dir());
        assert!(kept_dir(root).join("to").is_dir());
        assert_eq!(counted(&counters), (2, 11));
    }

    #[test]
    fn truncation_keeps_a_copy_and_the_live_inode() {
        let (dir, mut a, counters) = setup();
        let root = dir.path();
        let mtime = Timestamp {
            secs: 1_500_000_000,
            nanos: 42,
        };
        let content = vec![9u8; 200_000];
        a.apply(&write("f", 0, &content)).unwrap();
        a.apply(&Op::SetAttrs {
            path: p("f"),
            attrs: Attrs {
                mode: Some(0o640),
                mtime: Some(mtime),
                ..Attrs::default()
            },
        })
        .unwrap();
        let ino = fs::metadata(root.join("f")).unwrap().ino();
        a.apply(&Op::SetAttrs {
            path: p("f"),
            attrs: Attrs {
                size: Some(1000),
                ..Attrs::default()
            },
        })
        .unwrap();
        let live = fs::metadata(root.join("f")).unwrap();
        assert_eq!((live.ino(), live.len()), (ino, 1000));
        let kept = kept_dir(root).join("f");
        assert_eq!(fs::read(&kept).unwrap(), content);
        let copy = fs::metadata(&kept).unwrap();
        assert_ne!(copy.ino(), ino);
        assert_eq!(copy.mode() & 0o7777, 0o640);
        assert_eq!((copy.mtime(), copy.mtime_nsec()), (1_500_000_000, 42));
        assert_eq!(counted(&counters), (1, 200_000));

        // Growing and setting the same size keep nothing.
        for size in [1000, 5000] {
            a.apply(&Op::SetAttrs {
                path: p("f"),
                attrs: Attrs {
                    size: Some(size),
                    ..Attrs::default()
                },
            })
            .unwrap();
        }
        assert_eq!(counted(&counters), (1, 200_000));

        // Recreated empty: the 5000 bytes (1000 of data, then a hole) are kept,
        // the second copy under a suffixed name.
        a.apply(&Op::CreateFile {
            path: p("f"),
            mode: 0o600,
            truncate: true,
        })
        .unwrap();
        let live = fs::metadata(root.join("f")).unwrap();
        assert_eq!((live.ino(), live.len()), (ino, 0));
        let second = fs::read(kept_dir(root).join("f.1")).unwrap();
        assert_eq!(second.len(), 5000);
        assert_eq!(&second[..1000], &content[..1000]);
        assert!(second[1000..].iter().all(|&b| b == 0));
        assert_eq!(counters.entries_kept.get(), 2);
        // An empty file and a new file have nothing to keep.
        a.apply(&Op::CreateFile {
            path: p("f"),
            mode: 0o600,
            truncate: true,
        })
        .unwrap();
        a.apply(&Op::CreateFile {
            path: p("g"),
            mode: 0o600,
            truncate: true,
        })
        .unwrap();
        assert_eq!(counters.entries_kept.get(), 2);
        // The cached writable fd still writes into the live file.
        a.apply(&write("f", 0, b"after")).unwrap();
        assert_eq!(fs::read(root.join("f")).unwrap(), b"after");
    }

    #[test]
    fn collisions_get_numbered_suffixes() {
        let (dir, mut a, _) = setup();
        let root = dir.path();
        for round in 0..3 {
            a.apply(&write("f", 0, format!("round {round}").as_bytes()))
                .unwrap();
            a.apply(&Op::Remove { path: p("f") }).unwrap();
        }
        let kept = kept_dir(root);
        assert_eq!(fs::read(kept.join("f")).unwrap(), b"round 0");
        assert_eq!(fs::read(kept.join("f.1")).unwrap(), b"round 1");
        assert_eq!(fs::read(kept.join("f.2")).unwrap(), b"round 2");
        // A kept file in the way of a kept directory's parent.
        a.apply(&write("x", 0, b"file x")).unwrap();
        a.apply(&Op::Remove { path: p("x") }).unwrap();
        a.apply(&Op::Mkdir {
            path: p("x"),
            mode: 0o755,
        })
        .unwrap();
        a.apply(&write("x/y", 0, b"y in dir x")).unwrap();
        a.apply(&Op::Remove { path: p("x/y") }).unwrap();
        assert_eq!(fs::read(kept.join("x")).unwrap(), b"file x");
        assert_eq!(fs::read(kept.join("x.1/y")).unwrap(), b"y in dir x");
        // Names at the length limit still take a suffix.
        let long = "n".repeat(255);
        for _ in 0..2 {
            a.apply(&write(&long, 0, b"long")).unwrap();
            a.apply(&Op::Remove { path: p(&long) }).unwrap();
        }
        assert!(kept.join(&long).exists());
        assert!(kept.join(format!("{}.1", &long[..253])).exists());
    }

    #[test]
    fn prune_of_the_initial_sync_keeps_what_the_master_lacks() {
        let (dir, mut a, _) = setup();
        let root = dir.path();
        fs::create_dir_all(root.join("extra-dir/sub")).unwrap();
        fs::write(root.join("extra-dir/sub/f"), b"only on the standby").unwrap();
        fs::write(root.join("extra-file"), b"also").unwrap();
        let mut sync = InitialSync::new();
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        let meta = Meta {
            mode: 0o755,
            uid,
            gid,
            mtime: Timestamp { secs: 1, nanos: 0 },
        };
        let root_entry = Entry {
            path: RelPath::root(),
            kind: EntryKind::Dir,
            meta,
            hardlink_of: None,
            names: 1,
            xattrs: Vec::new(),
            verify: false,
        };
        sync.entries(&mut a, &[root_entry]).unwrap();
        sync.finish(&mut a, &[RelPath::root()]).unwrap();
        assert!(!root.join("extra-dir").exists() && !root.join("extra-file").exists());
        let kept = kept_dir(root);
        assert_eq!(
            fs::read(kept.join("extra-dir/sub/f")).unwrap(),
            b"only on the standby"
        );
        assert_eq!(fs::read(kept.join("extra-file")).unwrap(), b"also");
    }

    #[test]
    fn expiry_deletes_only_old_date_directories() {
        let dir = tempfile::tempdir().unwrap();
        let rollback = dir.path().join(STATE_DIR).join(ROLLBACK_DIR);
        assert!(
            expire(dir.path(), 7, now()).unwrap().is_empty(),
            "no rollback directory yet"
        );
        let names = [
            "2024-02-20",
            "2024-02-26",
            "2024-02-27",
            "2024-03-04",
            TODAY,
            "2024-03-06",
            "keep-me",
            "2024-02-30",
        ];
        for name in names {
            fs::create_dir_all(rollback.join(name).join("sub")).unwrap();
            fs::write(rollback.join(name).join("sub/f"), b"x").unwrap();
        }
        let expired = expire(dir.path(), 7, now()).unwrap();
        assert_eq!(expired, ["2024-02-20", "2024-02-26"]);
        let mut left: Vec<_> = fs::read_dir(&rollback)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "2024-02-27",
                "2024-02-30",
                "2024-03-04",
                TODAY,
                "2024-03-06",
                "keep-me"
            ]
        );
        assert_eq!(expire(dir.path(), 1, now()).unwrap(), ["2024-02-27"]);
    }

    #[test]
    fn usage_counts_what_the_rollback_directory_keeps() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(usage(dir.path()).unwrap(), (0, 0), "no state directory yet");
        let rollback = dir.path().join(STATE_DIR).join(ROLLBACK_DIR);
        fs::create_dir_all(&rollback).unwrap();
        assert_eq!(usage(dir.path()).unwrap(), (0, 0));
        fs::create_dir_all(rollback.join("2024-03-05/sub")).unwrap();
        fs::write(rollback.join("2024-03-05/sub/f"), vec![7u8; 5000]).unwrap();
        fs::write(rollback.join("2024-03-05/g"), b"abc").unwrap();
        assert_eq!(usage(dir.path()).unwrap(), (4, 5003), "two directories and two files");
    }

    #[test]
    fn disabled_rollback_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Applier::open(dir.path()).unwrap();
        let root = dir.path();
        a.apply(&write("f", 0, b"gone")).unwrap();
        a.apply(&write("g", 0, b"long content")).unwrap();
        a.apply(&write("h", 0, b"replaced")).unwrap();
        fs::create_dir_all(root.join("d/e")).unwrap();
        a.apply(&Op::Remove { path: p("f") }).unwrap();
        a.apply(&Op::Remove { path: p("d") }).unwrap();
        a.apply(&Op::SetAttrs {
            path: p("g"),
            attrs: Attrs {
                size: Some(1),
                ..Attrs::default()
            },
        })
        .unwrap();
        a.apply(&Op::CreateFile {
            path: p("g"),
            mode: 0o600,
            truncate: true,
        })
        .unwrap();
        a.apply(&rename("g", "h", false, false)).unwrap();
        assert!(!root.join(STATE_DIR).exists());
        let mut left: Vec<_> = fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["h"]);
    }
}
