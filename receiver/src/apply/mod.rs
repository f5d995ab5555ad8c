//! Applies replicated [`Op`]s to the standby tree, in place and confined to the root.
//!
//! Every path is resolved by the kernel beneath an `O_PATH` fd of the root
//! (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`); namespace changes
//! open the parent that way and then act on the final name relative to it with the
//! `*at` calls, never following a symlink at the last component. A path that
//! resolves outside the root is refused with [`ApplyError::Escapes`], one that
//! goes through a symlink with [`ApplyError::Symlink`]: the agent names real
//! directories, so the text of a path is exactly where it leads, and the
//! reserved `.sluice` directory can be recognised by its first component.
//!
//! Only regular files are opened for content, and without blocking: a FIFO or a
//! device node in a file's place is reported, never written (device nodes are
//! only made with [`Applier::enable_devices`]).
//!
//! Writes go straight into the existing file (no temp file and rename): the
//! standby may sit on flash, and a rewrite of a whole file for a 4 KiB change
//! would multiply wear.
//!
//! With the rollback directory enabled ([`rollback`]), removals, overwriting
//! renames and truncations keep the old content under `.sluice/rollback/` first.

mod cache;
pub(crate) mod fs;
pub mod hashes;
pub mod rollback;
mod special;
#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod tests;

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags, readlinkat, renameat2};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, fchmod, mkdirat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchownat, linkat, mkfifoat, symlinkat, syncfs};
use sluice_proto::{Attrs, Op, RelPath, blocks};

use self::cache::FdCache;
use self::fs::{chmod_nofollow, kind_of, lstat_at, open_beneath};
use self::rollback::Rollback;

/// The receiver's own directory under the root; operations may not touch it.
pub const STATE_DIR: &str = ".sluice";
/// Open files kept for repeated writes.
const FD_CACHE_SIZE: usize = 64;

/// Why an operation was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The root directory could not be opened.
    #[error("cannot open root {}: {source}", root.display())]
    OpenRoot {
        root: PathBuf,
        source: std::io::Error,
    },
    /// The path resolves outside the root (through a symlink or a mount point).
    #[error("{path}: resolves outside the root")]
    Escapes { path: RelPath },
    /// A component of the path is a symlink, which is never followed.
    #[error("{path}: goes through a symlink")]
    Symlink { path: RelPath },
    /// The receiver is configured not to do this.
    #[error("{path}: {reason}")]
    Forbidden { path: RelPath, reason: &'static str },
    /// The path lies in the receiver's own state directory.
    #[error("{path}: lies in the receiver's reserved `{STATE_DIR}` directory")]
    Reserved { path: RelPath },
    /// The operation makes no sense on the root directory itself.
    #[error("{op} of the root directory is refused")]
    Root { op: &'static str },
    /// The data of a write does not match the hash sent with it.
    #[error("{path}: {len} bytes at offset {offset} do not match their hash")]
    HashMismatch {
        path: RelPath,
        offset: u64,
        len: usize,
    },
    /// The directory that should contain the path does not exist.
    #[error("{path}: parent directory does not exist")]
    MissingParent { path: RelPath },
    /// The path does not exist.
    #[error("{path}: does not exist")]
    NotFound { path: RelPath },
    /// The entry is not of the kind the operation needs.
    #[error("{path}: is not a {wanted}")]
    WrongKind { path: RelPath, wanted: &'static str },
    /// A system call failed.
    #[error("{path}: {call}: {source}")]
    Sys {
        path: RelPath,
        call: &'static str,
        source: std::io::Error,
    },
    /// A request that makes no sense (unaligned, too large).
    #[error("{path}: {reason}")]
    Invalid { path: RelPath, reason: String },
    /// Keeping old content in the rollback directory (or expiring it) failed; a
    /// change that would destroy content is not made without its copy.
    #[error("{path}: rollback directory: {call}: {source}")]
    Rollback {
        path: RelPath,
        call: &'static str,
        source: std::io::Error,
    },
}

impl ApplyError {
    /// True when the standby cannot take writes at all (disk or quota full, a
    /// read-only or failing disk, exhausted memory or descriptors): the operation is
    /// not at fault, so replication waits instead of skipping it. Every other
    /// failure means the copy differs from what the operation expects.
    pub fn is_environmental(&self) -> bool {
        let source = match self {
            ApplyError::OpenRoot { .. } => return true,
            ApplyError::Sys { source, .. } | ApplyError::Rollback { source, .. } => source,
            _ => return false,
        };
        matches!(
            source.raw_os_error(),
            Some(libc::ENOSPC | libc::EDQUOT | libc::EIO | libc::EROFS | libc::ENOMEM | libc::ENFILE | libc::EMFILE)
        )
    }
}

/// What an applied operation did, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Bytes of file content written.
    pub bytes_written: u64,
}

/// The standby's root directory, opened to sync its filesystem.
pub struct SyncHandle(std::os::fd::OwnedFd);

impl SyncHandle {
    /// syncfs(2): everything written to the filesystem so far reaches the disk.
    pub fn sync(&self) -> Result<(), ApplyError> {
        syncfs(&self.0).map_err(sys(&RelPath::root(), "syncfs"))
    }
}

/// Applies operations beneath one root directory.
pub struct Applier {
    root: OwnedFd,
    cache: FdCache,
    /// Present when destroyed content is kept in the rollback directory.
    rollback: Option<Rollback>,
    /// Device nodes may be made (`[replication] devices`).
    devices: bool,
}

fn sys(path: &RelPath, call: &'static str) -> impl FnOnce(Errno) -> ApplyError {
    move |errno| ApplyError::Sys {
        path: path.clone(),
        call,
        source: errno.into(),
    }
}

fn io(path: &RelPath, call: &'static str) -> impl FnOnce(std::io::Error) -> ApplyError {
    move |source| ApplyError::Sys {
        path: path.clone(),
        call,
        source,
    }
}

/// Maps an `openat2` failure: `EXDEV` is the kernel saying "outside the root".
fn open_error(path: &RelPath, errno: Errno, missing: fn(RelPath) -> ApplyError) -> ApplyError {
    match errno {
        Errno::EXDEV => ApplyError::Escapes { path: path.clone() },
        Errno::ELOOP => ApplyError::Symlink { path: path.clone() },
        Errno::ENOENT => missing(path.clone()),
        errno => sys(path, "openat2")(errno),
    }
}

/// Refuses paths inside the receiver's state directory.
pub fn check_reserved(path: &RelPath) -> Result<(), ApplyError> {
    let first = path
        .as_bytes()
        .split(|&b| b == b'/')
        .next()
        .unwrap_or_default();
    if first == STATE_DIR.as_bytes() {
        return Err(ApplyError::Reserved { path: path.clone() });
    }
    Ok(())
}

/// Refuses `path` when it is the root or reserved.
fn check_entry(path: &RelPath, op: &'static str) -> Result<(), ApplyError> {
    if path.is_root() {
        return Err(ApplyError::Root { op });
    }
    check_reserved(path)
}

/// Opens the standby root (which must be a directory) as the anchor of confined access.
pub(crate) fn open_root(root: &Path) -> Result<OwnedFd, ApplyError> {
    nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| ApplyError::OpenRoot {
        root: root.to_owned(),
        source: errno.into(),
    })
}

impl Applier {
    /// Opens `root` (which must be a directory) for confined access.
    pub fn open(root: &Path) -> Result<Applier, ApplyError> {
        let root_fd = open_root(root)?;
        Ok(Applier {
            root: root_fd,
            cache: FdCache::new(FD_CACHE_SIZE),
            rollback: None,
            devices: false,
        })
    }

    /// Lets `Mknod` and device entries make character and block device nodes.
    pub fn enable_devices(&mut self) {
        self.devices = true;
    }

    pub(crate) fn root_fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Opens the directory containing `path` beneath the root and returns it with
    /// the final name. The root itself is returned as (root, ".").
    pub(crate) fn parent<'p>(&self, path: &'p RelPath) -> Result<(OwnedFd, &'p OsStr), ApplyError> {
        let (parent, name) = match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) => (parent, name),
            _ => (RelPath::root(), OsStr::new(".")),
        };
        let fd = open_beneath(
            self.root_fd(),
            parent.as_path(),
            OFlag::O_PATH | OFlag::O_DIRECTORY,
        )
        .map_err(|errno| open_error(path, errno, |path| ApplyError::MissingParent { path }))?;
        Ok((fd, name))
    }

    /// Opens regular file `path` read-only beneath the root.
    pub(crate) fn open_read(&self, path: &RelPath) -> Result<File, ApplyError> {
        self.open_regular(path, OFlag::O_RDONLY)
    }

    /// Opens `path` with `flags` if it is a regular file (or, with `O_CREAT`, if
    /// it is missing). Anything else in its place is [`ApplyError::WrongKind`]
    /// and is never opened: opening a device can have effects of its own, and
    /// opening a FIFO would wait for a peer. The type is checked before the open
    /// and again on the open file, which is opened non-blocking in case it changed.
    fn open_regular(&self, path: &RelPath, flags: OFlag) -> Result<File, ApplyError> {
        let create = flags.contains(OFlag::O_CREAT);
        let (dir, name) = self.parent(path).map_err(|e| match e {
            ApplyError::MissingParent { path } if !create => ApplyError::NotFound { path },
            other => other,
        })?;
        let wrong_kind = || ApplyError::WrongKind { path: path.clone(), wanted: "regular file" };
        match lstat_at(dir.as_fd(), name).map_err(sys(path, "fstatat"))? {
            Some(stat) if kind_of(&stat) != SFlag::S_IFREG => return Err(wrong_kind()),
            None if !create => return Err(ApplyError::NotFound { path: path.clone() }),
            _ => {}
        }
        let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
        // Created private; the real mode follows in a SetAttrs.
        let fd = nix::fcntl::openat(dir.as_fd(), name, flags, Mode::from_bits_truncate(0o600))
            .map_err(|errno| open_error(path, errno, |path| ApplyError::NotFound { path }))?;
        let file = File::from(fd);
        if !file.metadata().map_err(io(path, "fstat"))?.is_file() {
            return Err(wrong_kind());
        }
        Ok(file)
    }

    /// The size of regular file `path` and the hashes of up to `blocks` blocks
    /// from `offset`; `None` when `path` is missing or not a regular file.
    pub fn block_hashes(&self, path: &RelPath, offset: u64, blocks: u32) -> Result<Option<(u64, Vec<sluice_proto::Hash>)>, ApplyError> {
        check_reserved(path)?;
        let file = match self.open_read(path) {
            Ok(file) => file,
            Err(
                ApplyError::NotFound { .. }
                | ApplyError::MissingParent { .. }
                | ApplyError::WrongKind { .. }
                | ApplyError::Symlink { .. }
                | ApplyError::Root { .. },
            ) => return Ok(None),
            Err(ApplyError::Sys { source, .. }) if source.raw_os_error() == Some(libc::ENOTDIR) => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = file.metadata().map_err(io(path, "fstat"))?;
        let mut hashes = Vec::new();
        let mut buf = vec![0u8; blocks::BLOCK_SIZE as usize];
        for block in 0..u64::from(blocks) {
            let at = offset + block * blocks::BLOCK_SIZE;
            if at >= meta.len() {
                break;
            }
            let want = (meta.len() - at).min(blocks::BLOCK_SIZE) as usize;
            file.read_exact_at(&mut buf[..want], at).map_err(io(path, "pread"))?;
            hashes.push(blocks::hash(&buf[..want]));
        }
        Ok(Some((meta.len(), hashes)))
    }

    /// The cached writable fd of regular file `path`, opening (and with
    /// `create`, creating) it.
    fn writable(&mut self, path: &RelPath, create: bool) -> Result<&File, ApplyError> {
        if self.cache.get(path).is_none() {
            let mut flags = OFlag::O_WRONLY;
            if create {
                flags |= OFlag::O_CREAT;
            }
            let file = self.open_regular(path, flags)?;
            return self.cache.insert(path.clone(), file).map_err(io(path, "fstat"));
        }
        Ok(self.cache.get(path).expect("checked above"))
    }

    /// The writable fd of an existing regular file.
    pub(crate) fn writable_file(&mut self, path: &RelPath) -> Result<&File, ApplyError> {
        self.writable(path, false)
    }

    /// Forgets cached fds for `path` and below, after its name changed meaning.
    pub(crate) fn invalidate(&mut self, path: &RelPath) {
        self.cache.invalidate(path);
    }

    /// Makes everything applied so far durable (one `syncfs` of the root's
    /// filesystem, cheaper than an fsync per touched file).
    pub fn sync_to_disk(&mut self) -> Result<(), ApplyError> {
        self.sync_handle()?.sync()
    }

    /// A handle that syncs the standby's filesystem, usable from another thread.
    pub fn sync_handle(&self) -> Result<SyncHandle, ApplyError> {
        let fd = open_beneath(
            self.root_fd(),
            Path::new("."),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        )
        .map_err(sys(&RelPath::root(), "openat2"))?;
        Ok(SyncHandle(fd))
    }

    /// Closes every cached fd.
    pub fn close_files(&mut self) {
        self.cache.clear();
    }

    /// Applies one operation.
    pub fn apply(&mut self, op: &Op) -> Result<Applied, ApplyError> {
        match op {
            Op::Write {
                path,
                offset,
                data,
                hash,
            } => {
                check_entry(path, "write")?;
                // Verified before anything is opened, so corrupt data never lands on disk.
                if blocks::hash(data) != *hash {
                    return Err(ApplyError::HashMismatch {
                        path: path.clone(),
                        offset: *offset,
                        len: data.len(),
                    });
                }
                self.writable(path, true)?
                    .write_all_at(data, *offset)
                    .map_err(io(path, "pwrite"))?;
                return Ok(Applied {
                    bytes_written: data.len() as u64,
                });
            }
            Op::SetAttrs { path, attrs } => self.set_attrs(path, attrs)?,
            Op::CreateFile {
                path,
                mode,
                truncate,
            } => self.create_file(path, *mode, *truncate)?,
            Op::Mkdir { path, mode } => self.mkdir(path, *mode)?,
            Op::Symlink { path, target } => self.symlink(path, target)?,
            Op::HardLink { existing, path } => self.hard_link(existing, path)?,
            Op::Mkfifo { path, mode } => self.mkfifo(path, *mode)?,
            Op::Remove { path } => self.remove(path)?,
            Op::Rename {
                from,
                to,
                exchange,
                noreplace,
            } => self.rename(from, to, *exchange, *noreplace)?,
            Op::Fallocate { path, mode, offset, len } => self.fallocate(path, *mode, *offset, *len)?,
            Op::SetXattrs { path, xattrs } => self.set_xattrs(path, xattrs)?,
            Op::Truncate { path, size } => self.truncate(path, *size)?,
            Op::Mknod { path, mode, rdev } => self.mknod(path, *mode, *rdev)?,
            // Durability is the session's business: it syncs before acknowledging.
            Op::Barrier { .. } => {}
        }
        Ok(Applied::default())
    }

    /// Applies size, owner, mode and mtime, in that order: `chown` clears the
    /// setuid bits, so the mode goes after it, and the mtime goes last because a
    /// truncate would bump it.
    pub fn set_attrs(&mut self, path: &RelPath, attrs: &Attrs) -> Result<(), ApplyError> {
        check_reserved(path)?;
        let (dir, name) = self.parent(path)?;
        let stat = lstat_at(dir.as_fd(), name)
            .map_err(sys(path, "fstatat"))?
            .ok_or_else(|| ApplyError::NotFound { path: path.clone() })?;
        let kind = kind_of(&stat);
        if let Some(size) = attrs.size {
            if kind != SFlag::S_IFREG {
                return Err(ApplyError::WrongKind {
                    path: path.clone(),
                    wanted: "regular file",
                });
            }
            self.resize(path, &stat, size)?;
        }
        let uid = attrs.uid.filter(|&uid| uid != stat.st_uid);
        let gid = attrs.gid.filter(|&gid| gid != stat.st_gid);
        if uid.is_some() || gid.is_some() {
            fchownat(
                dir.as_fd(),
                name,
                uid.map(Uid::from_raw),
                gid.map(Gid::from_raw),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(sys(path, "fchownat"))?;
        }
        // A symlink's mode is meaningless on Linux and cannot be changed.
        if let Some(mode) = attrs.mode
            && kind != SFlag::S_IFLNK
            && (uid.is_some() || gid.is_some() || mode & 0o7777 != stat.st_mode & 0o7777)
        {
            chmod_nofollow(dir.as_fd(), name, mode).map_err(sys(path, "fchmodat2"))?;
        }
        if let Some(mtime) = attrs.mtime {
            let mtime = TimeSpec::new(mtime.secs, i64::from(mtime.nanos));
            utimensat(
                dir.as_fd(),
                name,
                &TimeSpec::UTIME_OMIT,
                &mtime,
                UtimensatFlags::NoFollowSymlink,
            )
            .map_err(sys(path, "utimensat"))?;
        }
        Ok(())
    }

    /// Sets the size of regular file `path` in stream order.
    fn truncate(&mut self, path: &RelPath, size: u64) -> Result<(), ApplyError> {
        check_entry(path, "truncate")?;
        let (dir, name) = self.parent(path)?;
        let stat = lstat_at(dir.as_fd(), name)
            .map_err(sys(path, "fstatat"))?
            .ok_or_else(|| ApplyError::NotFound { path: path.clone() })?;
        if kind_of(&stat) != SFlag::S_IFREG {
            return Err(ApplyError::WrongKind {
                path: path.clone(),
                wanted: "regular file",
            });
        }
        // Even to the same size: the master's truncation did the same, and on ext4
        // it frees what was preallocated past the end of the file.
        self.set_size(path, &stat, size)
    }

    /// Gives regular file `path` (whose lstat is `stat`) `size` bytes, keeping the
    /// old content in the rollback directory first when it shrinks.
    fn resize(&mut self, path: &RelPath, stat: &nix::sys::stat::FileStat, size: u64) -> Result<(), ApplyError> {
        // Only on a real change: ext4 truncates preallocated blocks past EOF
        // even when the size stays, undoing a replicated FALLOC_FL_KEEP_SIZE.
        if stat.st_size as u64 == size {
            return Ok(());
        }
        self.set_size(path, stat, size)
    }

    fn set_size(&mut self, path: &RelPath, stat: &nix::sys::stat::FileStat, size: u64) -> Result<(), ApplyError> {
        if size < stat.st_size as u64 {
            self.keep_copy(path, stat)?;
        }
        self.writable(path, false)?
            .set_len(size)
            .map_err(io(path, "ftruncate"))
    }

    fn create_file(&mut self, path: &RelPath, mode: u32, truncate: bool) -> Result<(), ApplyError> {
        check_entry(path, "create")?;
        self.invalidate(path);
        let mut flags = OFlag::O_WRONLY | OFlag::O_CREAT;
        if truncate {
            self.keep_before_truncate(path, 0)?;
            flags |= OFlag::O_TRUNC;
        }
        let file = self.open_regular(path, flags)?;
        fchmod(&file, Mode::from_bits_truncate(mode & 0o7777)).map_err(sys(path, "fchmod"))?;
        self.cache.insert(path.clone(), file).map_err(io(path, "fstat"))?;
        Ok(())
    }

    /// Creates a directory; an existing one is left as it is (replay), anything
    /// else in the way is replaced so the standby converges on the master.
    pub fn mkdir(&mut self, path: &RelPath, mode: u32) -> Result<(), ApplyError> {
        if path.is_root() {
            return Ok(());
        }
        check_reserved(path)?;
        let (dir, name) = self.parent(path)?;
        let dir = dir.as_fd();
        // Created private, then given its real mode, which the umask would otherwise trim.
        match mkdirat(dir, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                let stat = lstat_at(dir, name).map_err(sys(path, "fstatat"))?;
                if stat.is_some_and(|s| kind_of(&s) == SFlag::S_IFDIR) {
                    return Ok(());
                }
                self.invalidate(path);
                self.keep_or_remove(dir, name, path)?;
                mkdirat(dir, name, Mode::from_bits_truncate(0o700))
                    .map_err(sys(path, "mkdirat"))?;
            }
            Err(errno) => return Err(sys(path, "mkdirat")(errno)),
        }
        chmod_nofollow(dir, name, mode).map_err(sys(path, "fchmodat2"))
    }

    /// Makes `path` a symlink to `target`, replacing whatever else is there.
    pub fn symlink(&mut self, path: &RelPath, target: &[u8]) -> Result<(), ApplyError> {
        check_entry(path, "symlink")?;
        let (dir, name) = self.parent(path)?;
        let dir = dir.as_fd();
        let target = OsStr::from_bytes(target);
        match symlinkat(target, dir, name) {
            Ok(()) => return Ok(()),
            Err(Errno::EEXIST) => {}
            Err(errno) => return Err(sys(path, "symlinkat")(errno)),
        }
        if readlinkat(dir, name).is_ok_and(|current| current == target) {
            return Ok(());
        }
        self.invalidate(path);
        self.keep_or_remove(dir, name, path)?;
        symlinkat(target, dir, name).map_err(sys(path, "symlinkat"))
    }

    /// Makes `path` another name of `existing`, replacing a different entry there.
    pub fn hard_link(&mut self, existing: &RelPath, path: &RelPath) -> Result<(), ApplyError> {
        check_entry(existing, "hard link")?;
        check_entry(path, "hard link")?;
        let (from_dir, from_name) = self.parent(existing)?;
        let (dir, name) = self.parent(path)?;
        let link = || {
            linkat(
                from_dir.as_fd(),
                from_name,
                dir.as_fd(),
                name,
                AtFlags::empty(),
            )
        };
        match link() {
            Ok(()) => return Ok(()),
            Err(Errno::ENOENT) => {
                return Err(ApplyError::NotFound {
                    path: existing.clone(),
                });
            }
            Err(Errno::EEXIST) => {}
            Err(errno) => return Err(sys(path, "linkat")(errno)),
        }
        let source = lstat_at(from_dir.as_fd(), from_name).map_err(sys(existing, "fstatat"))?;
        let current = lstat_at(dir.as_fd(), name).map_err(sys(path, "fstatat"))?;
        if let (Some(a), Some(b)) = (source, current)
            && (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
        {
            return Ok(());
        }
        self.invalidate(path);
        self.keep_or_remove(dir.as_fd(), name, path)?;
        link().map_err(sys(path, "linkat"))
    }

    /// Creates a FIFO; an existing FIFO is kept, anything else is replaced.
    pub fn mkfifo(&mut self, path: &RelPath, mode: u32) -> Result<(), ApplyError> {
        check_entry(path, "mkfifo")?;
        let (dir, name) = self.parent(path)?;
        let dir = dir.as_fd();
        let private = Mode::from_bits_truncate(0o600);
        match mkfifoat(dir, name, private) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                let stat = lstat_at(dir, name).map_err(sys(path, "fstatat"))?;
                if stat.is_some_and(|s| kind_of(&s) == SFlag::S_IFIFO) {
                    return Ok(());
                }
                self.invalidate(path);
                self.keep_or_remove(dir, name, path)?;
                mkfifoat(dir, name, private).map_err(sys(path, "mkfifoat"))?;
            }
            Err(errno) => return Err(sys(path, "mkfifoat")(errno)),
        }
        chmod_nofollow(dir, name, mode).map_err(sys(path, "fchmodat2"))
    }

    /// Removes `path` (recursively for a directory), or moves it to the rollback
    /// directory; a missing path is already removed.
    pub fn remove(&mut self, path: &RelPath) -> Result<(), ApplyError> {
        check_entry(path, "removal")?;
        self.invalidate(path);
        let (dir, name) = match self.parent(path) {
            Ok(found) => found,
            Err(ApplyError::MissingParent { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.keep_or_remove(dir.as_fd(), name, path)
    }

    /// Renames `from` to `to`. When `from` is gone and `to` exists the rename is
    /// taken as already applied, so replaying it after a reconnect is harmless.
    /// An exchange cannot be recognised that way: replaying one swaps back.
    fn rename(
        &mut self,
        from: &RelPath,
        to: &RelPath,
        exchange: bool,
        noreplace: bool,
    ) -> Result<(), ApplyError> {
        check_entry(from, "rename")?;
        check_entry(to, "rename")?;
        self.invalidate(from);
        self.invalidate(to);
        let (to_dir, to_name) = self.parent(to)?;
        let from_parent = match self.parent(from) {
            Ok(found) => Some(found),
            Err(ApplyError::MissingParent { .. }) => None,
            Err(e) => return Err(e),
        };
        let kept = match &from_parent {
            Some((from_dir, from_name)) if !exchange && !noreplace => self.keep_rename_target(
                (from_dir.as_fd(), from_name, from),
                (to_dir.as_fd(), to_name, to),
            )?,
            _ => None,
        };
        let mut flags = RenameFlags::empty();
        flags.set(RenameFlags::RENAME_EXCHANGE, exchange);
        flags.set(RenameFlags::RENAME_NOREPLACE, noreplace);
        let result = match &from_parent {
            Some((from_dir, from_name)) => {
                renameat2(from_dir.as_fd(), *from_name, to_dir.as_fd(), to_name, flags)
            }
            None => Err(Errno::ENOENT),
        };
        if let Some(kept) = kept {
            // The target was kept before the rename; only a rename that happened
            // may leave it out of the live tree.
            match &result {
                Ok(()) => kept.commit(),
                Err(_) => kept.undo(to_dir.as_fd(), to_name, to)?,
            }
        }
        match result {
            Ok(()) => Ok(()),
            Err(Errno::ENOENT) => {
                let from_exists = match &from_parent {
                    Some((from_dir, from_name)) => lstat_at(from_dir.as_fd(), from_name)
                        .map_err(sys(from, "fstatat"))?
                        .is_some(),
                    None => false,
                };
                let to_exists = lstat_at(to_dir.as_fd(), to_name)
                    .map_err(sys(to, "fstatat"))?
                    .is_some();
                if !from_exists && to_exists && !exchange {
                    tracing::debug!(%from, %to, "rename already applied");
                    Ok(())
                } else {
                    Err(ApplyError::NotFound { path: from.clone() })
                }
            }
            Err(errno) => Err(sys(from, "renameat2")(errno)),
        }
    }
}
