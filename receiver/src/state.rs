//! The durable replication state: the highest sequence number whose effects are
//! on disk, kept in `<root>/.sluice/state` so a restarted receiver tells the
//! agent where to resume, and the markers beside it.
//!
//! Everything here is reached through a descriptor of `.sluice` opened without
//! following symlinks, and files are created with `O_EXCL | O_NOFOLLOW` and
//! renamed relative to it: whatever the replicated tree holds, a flush cannot be
//! turned into a write somewhere else.
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use crate::apply::STATE_DIR;

const STATE_FILE: &str = "state";
const STATE_TMP: &str = "state.tmp";
const RUNNING_FILE: &str = "running";
/// Written by `sluice-receiver allow-mass-delete`; consumed by the comparison it allows.
pub const MASS_DELETE_PERMIT: &str = "allow-mass-delete";
/// The state file holds one number; anything longer is not ours.
const MAX_STATE_LEN: u64 = 64;

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading, writing or syncing the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file does not hold a sequence number.
    #[error("{}: not a sequence number: {content:?}", path.display())]
    Corrupt { path: PathBuf, content: String },
}

/// The state directory of one root.
#[derive(Clone)]
pub struct State {
    /// `<root>/.sluice`, for messages.
    dir: PathBuf,
    fd: Arc<OwnedFd>,
    /// The previous run did not stop cleanly.
    unclean: bool,
    /// The highest sequence number stored, shared by clones: a background flush
    /// that finishes after a newer one must not store an older number.
    stored: Arc<Mutex<u64>>,
}

impl State {
    /// Uses `<root>/.sluice/`, creating it (mode 0700) when missing, and marks
    /// the receiver as running. A `.sluice` that is not a directory (a symlink
    /// included) is refused.
    pub fn open(root: &Path) -> Result<State, StateError> {
        let dir = root.join(STATE_DIR);
        let io = |source: Errno| StateError::Io { path: dir.clone(), source: source.into() };
        let root_fd = crate::apply::open_root(root).map_err(|e| StateError::Io {
            path: root.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
        match mkdirat(root_fd.as_fd(), STATE_DIR, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(errno) => return Err(io(errno)),
        }
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match openat(root_fd.as_fd(), STATE_DIR, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOTDIR | Errno::ELOOP) => {
                return Err(StateError::Io { path: dir, source: std::io::Error::other("exists and is not a directory") });
            }
            Err(errno) => return Err(io(errno)),
        };
        let mut state = State { dir, fd: Arc::new(fd), unclean: false, stored: Arc::new(Mutex::new(0)) };
        state.unclean = nix::sys::stat::fstatat(state.fd.as_fd(), RUNNING_FILE, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).is_ok();
        state.create(RUNNING_FILE)?;
        state.sync_dir()?;
        Ok(state)
    }

    /// Opens `<root>/.sluice/` of a receiver set up before, without marking
    /// anything (for the operator's commands beside a running receiver).
    pub fn open_existing(root: &Path) -> Result<State, StateError> {
        let dir = root.join(STATE_DIR);
        let root_fd = crate::apply::open_root(root).map_err(|e| StateError::Io {
            path: root.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(root_fd.as_fd(), STATE_DIR, flags, Mode::empty())
            .map_err(|errno| StateError::Io { path: dir.clone(), source: errno.into() })?;
        Ok(State { dir, fd: Arc::new(fd), unclean: false, stored: Arc::new(Mutex::new(0)) })
    }

    /// True when the previous run did not stop cleanly (it was killed, or the
    /// machine went down): what it applied after its last durable sequence number
    /// may be on disk.
    pub fn unclean(&self) -> bool {
        self.unclean
    }

    /// Records a clean stop; call once everything applied is durable.
    pub fn mark_stopped(&self) -> Result<(), StateError> {
        self.remove(RUNNING_FILE)?;
        self.sync_dir()
    }

    /// The durable sequence number, 0 when none was ever stored.
    pub fn load(&self) -> Result<u64, StateError> {
        let path = self.dir.join(STATE_FILE);
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let file = match openat(self.fd.as_fd(), STATE_FILE, flags, Mode::empty()) {
            Ok(fd) => File::from(fd),
            Err(Errno::ENOENT) => return Ok(0),
            Err(errno) => return Err(StateError::Io { path, source: errno.into() }),
        };
        let mut text = String::new();
        let read = match file.metadata() {
            Ok(meta) if meta.is_file() => file.take(MAX_STATE_LEN).read_to_string(&mut text).map(drop),
            Ok(_) => Err(std::io::Error::other("not a regular file")),
            Err(e) => Err(e),
        };
        read.map_err(|source| StateError::Io { path: path.clone(), source })?;
        text.trim().parse().map_err(|_| StateError::Corrupt { path, content: text })
    }

    /// Stores `seq` atomically (temp file, fsync, rename, fsync of the directory),
    /// so a crash leaves either the old or the new number.
    pub fn store(&self, seq: u64) -> Result<(), StateError> {
        let mut stored = self.stored.lock().unwrap_or_else(|e| e.into_inner());
        if seq <= *stored {
            return Ok(());
        }
        self.write(seq)?;
        *stored = seq;
        Ok(())
    }

    fn write(&self, seq: u64) -> Result<(), StateError> {
        let tmp = self.dir.join(STATE_TMP);
        let mut file = self.create(STATE_TMP)?;
        writeln!(file, "{seq}")
            .and_then(|()| file.sync_all())
            .map_err(|source| StateError::Io { path: tmp.clone(), source })?;
        renameat(self.fd.as_fd(), STATE_TMP, self.fd.as_fd(), STATE_FILE)
            .map_err(|errno| StateError::Io { path: self.dir.join(STATE_FILE), source: errno.into() })?;
        self.sync_dir()
    }

    /// True (once) when an operator allowed the next mass deletion: the permit
    /// is consumed.
    pub fn take_mass_delete_permit(&self) -> Result<bool, StateError> {
        match unlinkat(self.fd.as_fd(), MASS_DELETE_PERMIT, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => self.sync_dir().map(|()| true),
            Err(Errno::ENOENT) => Ok(false),
            Err(errno) => Err(StateError::Io { path: self.dir.join(MASS_DELETE_PERMIT), source: errno.into() }),
        }
    }

    /// Allows the next comparison to delete more than the configured fraction
    /// of the standby (what `sluice-receiver allow-mass-delete` does).
    pub fn grant_mass_delete_permit(&self) -> Result<(), StateError> {
        self.create(MASS_DELETE_PERMIT)?;
        self.sync_dir()
    }

    /// Creates `name` afresh: whatever had that name (a leftover, or a symlink
    /// planted there) is unlinked first, and the new file is made with `O_EXCL`.
    fn create(&self, name: &str) -> Result<File, StateError> {
        let io = |source: Errno| StateError::Io { path: self.dir.join(name), source: source.into() };
        self.remove(name)?;
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        openat(self.fd.as_fd(), name, flags, Mode::from_bits_truncate(0o600)).map(File::from).map_err(io)
    }

    fn remove(&self, name: &str) -> Result<(), StateError> {
        match unlinkat(self.fd.as_fd(), OsStr::new(name), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(errno) => Err(StateError::Io { path: self.dir.join(name), source: errno.into() }),
        }
    }

    fn sync_dir(&self) -> Result<(), StateError> {
        nix::unistd::fsync(self.fd.as_fd()).map_err(|errno| StateError::Io { path: self.dir.clone(), source: errno.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        assert_eq!(state.load().unwrap(), 0);
        state.store(42).unwrap();
        assert_eq!(State::open(dir.path()).unwrap().load().unwrap(), 42);
        std::fs::write(dir.path().join(".sluice/state"), "junk").unwrap();
        assert!(matches!(state.load(), Err(StateError::Corrupt { .. })));
    }
}
