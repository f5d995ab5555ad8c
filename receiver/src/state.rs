//! The durable replication state: the highest sequence number whose effects are
//! on disk (with when the master captured it), kept in `<root>/.sluice/state` so
//! a restarted receiver tells the agent where to resume; the tree's lineage
//! (`<root>/.sluice/lineage`: role and generations); and the markers beside them.
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
use sluice_proto::lineage::{LINEAGE_FILE, TreeLineage, UNSENT_FILE, Unsent};

const STATE_FILE: &str = "state";
const STATE_TMP: &str = "state.tmp";
const LINEAGE_TMP: &str = "lineage.tmp";
/// The lineage file is a few hundred bytes; a longer one is not ours.
const MAX_LINEAGE_LEN: u64 = 64 << 10;
/// Longer than any [`Unsent`] within its limits.
const MAX_UNSENT_LEN: u64 = 16 << 20;
const RUNNING_FILE: &str = "running";
/// Written by `sluice-receiver allow-mass-delete`; consumed by the comparison it allows.
pub const MASS_DELETE_PERMIT: &str = "allow-mass-delete";
/// The state file holds a few numbers; anything longer is not ours.
const MAX_STATE_LEN: u64 = 128;

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
    /// The lineage file is not one.
    #[error("{}: not a lineage: {reason}", path.display())]
    CorruptLineage { path: PathBuf, reason: String },
}

/// Where the durable copy stands in the master's stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// The highest sequence number whose effects are on disk.
    pub seq: u64,
    /// When the master captured that operation (Unix ns; 0 when unknown).
    pub captured_unix_ns: u64,
    /// That operation was an fsync barrier.
    pub at_barrier: bool,
    /// Capture time of the newest barrier on disk (0: none known).
    pub barrier_unix_ns: u64,
}

impl Position {
    fn encode(&self) -> String {
        format!("{} {} {} {}\n", self.seq, self.captured_unix_ns, u8::from(self.at_barrier), self.barrier_unix_ns)
    }

    /// The sequence number alone (what older receivers wrote), or all four fields.
    fn decode(text: &str) -> Option<Position> {
        let mut fields = text.split_whitespace().map(str::parse::<u64>);
        let seq = fields.next()?.ok()?;
        let mut rest = [0u64; 3];
        for slot in &mut rest {
            match fields.next() {
                Some(field) => *slot = field.ok()?,
                None => break,
            }
        }
        let [captured_unix_ns, at_barrier, barrier_unix_ns] = rest;
        if fields.next().is_some() || at_barrier > 1 {
            return None;
        }
        Some(Position { seq, captured_unix_ns, at_barrier: at_barrier == 1, barrier_unix_ns })
    }
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
    stored: Arc<Mutex<Position>>,
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
        let mut state = State { dir, fd: Arc::new(fd), unclean: false, stored: Arc::new(Mutex::new(Position::default())) };
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
        Ok(State { dir, fd: Arc::new(fd), unclean: false, stored: Arc::new(Mutex::new(Position::default())) })
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
        self.load_position().map(|p| p.seq)
    }

    /// The durable position, all zero when none was ever stored.
    pub fn load_position(&self) -> Result<Position, StateError> {
        let path = self.dir.join(STATE_FILE);
        let Some(text) = self.read_small(STATE_FILE, MAX_STATE_LEN)? else { return Ok(Position::default()) };
        let position = Position::decode(&text).ok_or(StateError::Corrupt { path, content: text })?;
        let mut stored = self.stored.lock().unwrap_or_else(|e| e.into_inner());
        if position.seq > stored.seq {
            *stored = position;
        }
        Ok(position)
    }

    /// Reads `name` whole (at most `max` bytes); `None` when it does not exist.
    fn read_small(&self, name: &str, max: u64) -> Result<Option<String>, StateError> {
        let path = self.dir.join(name);
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let file = match openat(self.fd.as_fd(), name, flags, Mode::empty()) {
            Ok(fd) => File::from(fd),
            Err(Errno::ENOENT) => return Ok(None),
            Err(errno) => return Err(StateError::Io { path, source: errno.into() }),
        };
        let mut text = String::new();
        let read = match file.metadata() {
            Ok(meta) if meta.is_file() => file.take(max).read_to_string(&mut text).map(drop),
            Ok(_) => Err(std::io::Error::other("not a regular file")),
            Err(e) => Err(e),
        };
        read.map_err(|source| StateError::Io { path, source })?;
        Ok(Some(text))
    }

    /// Stores `position` atomically (temp file, fsync, rename, fsync of the
    /// directory), so a crash leaves either the old or the new one; an older
    /// position than the one stored is ignored.
    pub fn store(&self, position: Position) -> Result<(), StateError> {
        let mut stored = self.stored.lock().unwrap_or_else(|e| e.into_inner());
        if position.seq <= stored.seq {
            return Ok(());
        }
        self.write_atomically(STATE_TMP, STATE_FILE, position.encode().as_bytes())?;
        *stored = position;
        Ok(())
    }

    /// Starts the sequence over at 0: the tree now follows another master,
    /// whose operations are numbered from its own start.
    pub fn reset_position(&self) -> Result<(), StateError> {
        let mut stored = self.stored.lock().unwrap_or_else(|e| e.into_inner());
        self.write_atomically(STATE_TMP, STATE_FILE, Position::default().encode().as_bytes())?;
        *stored = Position::default();
        Ok(())
    }

    /// The tree's lineage, `None` when it never had one.
    pub fn load_lineage(&self) -> Result<Option<TreeLineage>, StateError> {
        let Some(text) = self.read_small(LINEAGE_FILE, MAX_LINEAGE_LEN)? else { return Ok(None) };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StateError::CorruptLineage { path: self.dir.join(LINEAGE_FILE), reason: e.to_string() })
    }

    /// What the old primary's agent recorded it had not sent (see [`Unsent`]),
    /// `None` when it recorded nothing; a record that cannot be read counts as
    /// knowing nothing.
    pub fn load_unsent(&self) -> Result<Option<Unsent>, StateError> {
        let Some(text) = self.read_small(UNSENT_FILE, MAX_UNSENT_LEN)? else { return Ok(None) };
        match serde_json::from_str::<Unsent>(&text) {
            Ok(unsent) => Ok(Some(unsent.bounded())),
            Err(e) => {
                tracing::warn!(path = %self.dir.join(UNSENT_FILE).display(), error = %e, "cannot read what the old primary had not sent; its failback compares the whole tree");
                Ok(None)
            }
        }
    }

    /// Forgets the old primary's record once its failback is done.
    pub fn remove_unsent(&self) -> Result<(), StateError> {
        self.remove(UNSENT_FILE)
    }

    /// Stores the tree's lineage atomically.
    pub fn store_lineage(&self, lineage: &TreeLineage) -> Result<(), StateError> {
        let mut text = serde_json::to_string_pretty(lineage).map_err(|e| StateError::CorruptLineage {
            path: self.dir.join(LINEAGE_FILE),
            reason: e.to_string(),
        })?;
        text.push('\n');
        self.write_atomically(LINEAGE_TMP, LINEAGE_FILE, text.as_bytes())
    }

    fn write_atomically(&self, tmp: &str, name: &str, content: &[u8]) -> Result<(), StateError> {
        let mut file = self.create(tmp)?;
        file.write_all(content)
            .and_then(|()| file.sync_all())
            .map_err(|source| StateError::Io { path: self.dir.join(tmp), source })?;
        renameat(self.fd.as_fd(), tmp, self.fd.as_fd(), name)
            .map_err(|errno| StateError::Io { path: self.dir.join(name), source: errno.into() })?;
        self.sync_dir()
    }

    /// `<root>/.sluice`.
    pub fn dir(&self) -> &Path {
        &self.dir
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
        let position = Position { seq: 42, captured_unix_ns: 7, at_barrier: true, barrier_unix_ns: 5 };
        state.store(position).unwrap();
        assert_eq!(State::open(dir.path()).unwrap().load_position().unwrap(), position);
        state.store(Position { seq: 41, ..position }).unwrap();
        assert_eq!(state.load().unwrap(), 42, "an older position is not stored over a newer one");
        std::fs::write(dir.path().join(".sluice/state"), "17\n").unwrap();
        assert_eq!(state.load_position().unwrap(), Position { seq: 17, ..Position::default() }, "the older format");
        state.reset_position().unwrap();
        assert_eq!(state.load().unwrap(), 0);
        for junk in ["junk", "1 2 3", "1 2 2 3", "1 2 1 3 4"] {
            std::fs::write(dir.path().join(".sluice/state"), junk).unwrap();
            assert!(matches!(state.load(), Err(StateError::Corrupt { .. })), "{junk}");
        }
        assert_eq!(state.load_lineage().unwrap(), None);
        let lineage = TreeLineage { role: sluice_proto::Role::Standby, lineage: sluice_proto::Lineage::fresh("t"), promoted: None, keep_replaced: false, activity: None };
        state.store_lineage(&lineage).unwrap();
        assert_eq!(state.load_lineage().unwrap(), Some(lineage));
        std::fs::write(dir.path().join(".sluice/lineage"), "{").unwrap();
        assert!(matches!(state.load_lineage(), Err(StateError::CorruptLineage { .. })));
    }
}
