//! Directory listings for the agent's verifier: what the standby holds in one
//! directory (names, kinds, sizes, metadata, a digest of extended attributes),
//! read beneath the root like every other access.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{OFlag, readlinkat};
use nix::sys::stat::SFlag;
use sluice_proto::{EntryKind, Listed, Meta, RelPath, Timestamp, xattrs_digest};

use crate::apply::fs::{kind_of, list_dir, lstat_at, open_beneath};
use crate::apply::{Applier, ApplyError, STATE_DIR, check_reserved};

/// Most entries one `List` may ask for.
pub const MAX_LIST_ENTRIES: u32 = 1024;

/// Top-level names that are the receiver's or the filesystem's, never listed.
const UNLISTED_AT_TOP: [&str; 2] = ["lost+found", STATE_DIR];

impl Applier {
    /// Up to `max` entries of directory `path` whose names sort after `after`, and
    /// whether more follow; `None` when `path` is not a directory here.
    pub fn list(&self, path: &RelPath, after: &[u8], max: u32) -> Result<Option<(Vec<Listed>, bool)>, ApplyError> {
        check_reserved(path)?;
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
        let dir = match open_beneath(self.root_fd(), path.as_path(), flags) {
            Ok(dir) => dir,
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => return Ok(None),
            Err(errno) => {
                return Err(ApplyError::Sys { path: path.clone(), call: "openat2", source: errno.into() });
            }
        };
        let sys = |call: &'static str| move |errno: Errno| ApplyError::Sys { path: path.clone(), call, source: errno.into() };
        let mut names: Vec<Vec<u8>> = list_dir(dir.as_fd())
            .map_err(sys("readdir"))?
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| name.as_slice() > after)
            .filter(|name| !(path.is_root() && UNLISTED_AT_TOP.iter().any(|n| n.as_bytes() == name.as_slice())))
            .collect();
        names.sort_unstable();
        let max = max.min(MAX_LIST_ENTRIES) as usize;
        let more = names.len() > max;
        names.truncate(max);
        let mut listed = Vec::with_capacity(names.len());
        for name in names {
            let os_name = OsStr::from_bytes(&name);
            // Gone since the directory was read: the next pass sees the change.
            let Some(stat) = lstat_at(dir.as_fd(), os_name).map_err(sys("fstatat"))? else { continue };
            let kind = match kind_of(&stat) {
                SFlag::S_IFREG => EntryKind::File { size: stat.st_size as u64 },
                SFlag::S_IFDIR => EntryKind::Dir,
                SFlag::S_IFLNK => {
                    let target = readlinkat(dir.as_fd(), os_name).map_err(sys("readlinkat"))?;
                    EntryKind::Symlink { target: target.as_bytes().to_vec() }
                }
                SFlag::S_IFIFO => EntryKind::Fifo,
                SFlag::S_IFBLK => EntryKind::Device { block: true, rdev: stat.st_rdev },
                SFlag::S_IFCHR => EntryKind::Device { block: false, rdev: stat.st_rdev },
                _ => continue,
            };
            let child = path.join(os_name).map_err(|_| ApplyError::Invalid {
                path: path.clone(),
                reason: format!("unusable name {:?}", String::from_utf8_lossy(&name)),
            })?;
            let xattrs = match kind {
                EntryKind::File { .. } | EntryKind::Dir => xattrs_digest(&self.xattrs(&child)?),
                _ => xattrs_digest(&[]),
            };
            let meta = Meta {
                mode: stat.st_mode & 0o7777,
                uid: stat.st_uid,
                gid: stat.st_gid,
                mtime: Timestamp { secs: stat.st_mtime, nanos: stat.st_mtime_nsec as u32 },
            };
            listed.push(Listed { name, kind, meta, xattrs, links: stat.st_nlink as u32 });
        }
        Ok(Some((listed, more)))
    }
}
