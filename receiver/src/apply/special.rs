//! Operations beyond names and bytes: fallocate modes (holes stay holes), extended
//! attributes and POSIX ACLs, and device nodes.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsFd;

use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, OFlag, fallocate};
use nix::sys::stat::{Mode, SFlag, mknodat};
use sluice_proto::{RelPath, Xattr};
use xattr::FileExt as _;

use super::fs::{chmod_nofollow, kind_of, lstat_at, open_beneath};
use super::{Applier, ApplyError, check_entry, check_reserved, io, open_error, sys};

impl Applier {
    /// fallocate(2) with the master's mode, so punched holes, zeroed, collapsed and
    /// inserted ranges come out the same on the standby without sending data.
    pub fn fallocate(&mut self, path: &RelPath, mode: u32, offset: u64, len: u64) -> Result<(), ApplyError> {
        check_entry(path, "fallocate")?;
        let flags = FallocateFlags::from_bits_retain(mode as libc::c_int);
        let file = self.writable_file(path)?;
        fallocate(file.as_fd(), flags, offset as libc::off_t, len as libc::off_t).map_err(sys(path, "fallocate"))
    }

    /// Makes the extended attributes of `path` exactly `wanted`. Symlinks, FIFOs and
    /// device nodes are skipped: opening them to reach their attributes could block
    /// or have side effects, and user attributes are not allowed on them anyway.
    pub fn set_xattrs(&mut self, path: &RelPath, wanted: &[Xattr]) -> Result<(), ApplyError> {
        check_reserved(path)?;
        let Some(file) = self.open_for_xattrs(path)? else { return Ok(()) };
        let current = read_xattrs(&file).map_err(io(path, "flistxattr"))?;
        let wanted: BTreeMap<&[u8], &[u8]> = wanted.iter().map(|x| (x.name.as_slice(), x.value.as_slice())).collect();
        for name in current.keys() {
            if !wanted.contains_key(name.as_slice()) {
                match file.remove_xattr(std::ffi::OsStr::from_bytes(name)) {
                    Ok(()) => {}
                    // Gone already: XFS drops an ACL that the mode bits now express
                    // as soon as the mode is set.
                    Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::EPERM)) => {
                        tracing::warn!(%path, name = ?String::from_utf8_lossy(name), "extended attribute not removed: {e}");
                    }
                    Err(e) => return Err(io(path, "fremovexattr")(e)),
                }
            }
        }
        for (name, value) in wanted {
            if current.get(name).map(Vec::as_slice) != Some(value) {
                match file.set_xattr(std::ffi::OsStr::from_bytes(name), value) {
                    Ok(()) => {}
                    // A namespace this filesystem or this receiver's privileges do
                    // not allow: the rest of the entry is still worth replicating.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::EPERM)) => {
                        tracing::warn!(%path, name = ?String::from_utf8_lossy(name), "extended attribute not replicated: {e}");
                    }
                    Err(e) => return Err(io(path, "fsetxattr")(e)),
                }
            }
        }
        Ok(())
    }

    /// The extended attributes of `path` (empty for entries [`Applier::set_xattrs`] skips).
    pub fn xattrs(&self, path: &RelPath) -> Result<Vec<Xattr>, ApplyError> {
        let Some(file) = self.open_for_xattrs(path)? else { return Ok(Vec::new()) };
        let current = read_xattrs(&file).map_err(io(path, "flistxattr"))?;
        Ok(current.into_iter().map(|(name, value)| Xattr { name, value }).collect())
    }

    fn open_for_xattrs(&self, path: &RelPath) -> Result<Option<File>, ApplyError> {
        let (dir, name) = self.parent(path)?;
        let Some(stat) = lstat_at(dir.as_fd(), name).map_err(sys(path, "fstatat"))? else {
            return Err(ApplyError::NotFound { path: path.clone() });
        };
        let flags = match kind_of(&stat) {
            SFlag::S_IFREG => return self.open_read(path).map(Some),
            SFlag::S_IFDIR => OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            _ => return Ok(None),
        };
        let fd = open_beneath(self.root_fd(), path.as_path(), flags | OFlag::O_NOFOLLOW)
            .map_err(|errno| open_error(path, errno, |path| ApplyError::NotFound { path }))?;
        Ok(Some(File::from(fd)))
    }

    /// Creates a device node; an identical one is kept, anything else is replaced.
    pub fn mknod(&mut self, path: &RelPath, mode: u32, rdev: u64) -> Result<(), ApplyError> {
        check_entry(path, "mknod")?;
        if !self.devices {
            return Err(ApplyError::Forbidden {
                path: path.clone(),
                reason: "device nodes are not replicated (`[replication] devices` is off on the receiver)",
            });
        }
        let kind = SFlag::from_bits_truncate(mode & libc::S_IFMT);
        if kind != SFlag::S_IFCHR && kind != SFlag::S_IFBLK {
            return Err(ApplyError::WrongKind { path: path.clone(), wanted: "character or block device" });
        }
        let (dir, name) = self.parent(path)?;
        let dir = dir.as_fd();
        let private = Mode::from_bits_truncate(0o600);
        match mknodat(dir, name, kind, private, rdev as libc::dev_t) {
            Ok(()) => {}
            Err(Errno::EEXIST) => {
                let stat = lstat_at(dir, name).map_err(sys(path, "fstatat"))?;
                if !stat.is_some_and(|s| kind_of(&s) == kind && s.st_rdev == rdev as libc::dev_t) {
                    self.invalidate(path);
                    self.keep_or_remove(dir, name, path)?;
                    mknodat(dir, name, kind, private, rdev as libc::dev_t).map_err(sys(path, "mknodat"))?;
                }
            }
            Err(errno) => return Err(sys(path, "mknodat")(errno)),
        }
        chmod_nofollow(dir, name, mode & 0o7777).map_err(sys(path, "fchmodat2"))
    }
}

use std::os::unix::ffi::OsStrExt;

fn read_xattrs(file: &File) -> std::io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut found = BTreeMap::new();
    for name in file.list_xattr()? {
        if !sluice_proto::is_replicated_xattr(name.as_bytes()) {
            continue;
        }
        if let Some(value) = file.get_xattr(&name)? {
            found.insert(name.as_bytes().to_vec(), value);
        }
    }
    Ok(found)
}
