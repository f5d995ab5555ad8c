//! The master tree's lineage file, `<root>/.sluice/lineage`: the role and
//! generation the tree holds, sent to the receiver in `Hello` (see
//! [`sluice_proto::lineage`]). The agent starts a tree's first generation, runs
//! only on a primary, and marks the tree a standby after a switchover.
//!
//! `.sluice` is reached without following symlinks and the file is replaced
//! atomically, so whoever can write to the watched tree cannot turn the
//! agent's write into one elsewhere.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};
use sluice_proto::lineage::{Activity, LINEAGE_FILE, Lineage, Role, TreeLineage, UNSENT_FILE, Unsent};

const STATE_DIR: &str = ".sluice";
/// How often how far this master got is recorded beside the tree (for judging
/// a split brain after a failover).
pub const ACTIVITY_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
const LINEAGE_TMP: &str = "lineage.agent.tmp";
const UNSENT_TMP: &str = "unsent.agent.tmp";
const MAX_LINEAGE_LEN: u64 = 64 << 10;

/// Why the lineage could not be read, written, or allows no agent.
#[derive(Debug, thiserror::Error)]
pub enum LineageError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: not a lineage: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    /// The tree is a standby: replicating it would make two masters.
    #[error(
        "{} is a standby (generation {generation}): a receiver applies the master's changes to it, and an agent here would make two masters. Promote it first with `sluice-receiver promote`, or, after a switchover, run `sluice-receiver` on it",
        root.display()
    )]
    Standby { root: PathBuf, generation: String },
}

/// The lineage file of one watched tree.
pub struct TreeFile {
    root: PathBuf,
    dir: OwnedFd,
}

impl TreeFile {
    /// Opens (creating when missing, mode 0700) `<root>/.sluice`.
    pub fn open(root: &Path) -> Result<TreeFile, LineageError> {
        let io = |path: PathBuf| move |errno: Errno| LineageError::Io { path, source: errno.into() };
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let root_fd = nix::fcntl::open(root, flags, Mode::empty()).map_err(io(root.to_owned()))?;
        let dir_path = root.join(STATE_DIR);
        match mkdirat(root_fd.as_fd(), STATE_DIR, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(errno) => return Err(io(dir_path)(errno)),
        }
        let dir = openat(root_fd.as_fd(), STATE_DIR, flags | OFlag::O_NOFOLLOW, Mode::empty()).map_err(io(dir_path))?;
        Ok(TreeFile { root: root.to_owned(), dir })
    }

    /// The tree's lineage as a master: a fresh one for a tree that never had
    /// one (recorded at once); refused for a standby.
    pub fn primary(&self) -> Result<TreeLineage, LineageError> {
        match self.load()? {
            Some(tree) if tree.role == Role::Standby => {
                Err(LineageError::Standby { root: self.root.clone(), generation: tree.lineage.current.to_string() })
            }
            Some(tree) => Ok(tree),
            None => {
                let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
                let tree = TreeLineage { role: Role::Primary, lineage: Lineage::fresh(&host), promoted: None, keep_replaced: false, activity: None };
                self.store(&tree)?;
                tracing::info!(generation = %tree.lineage.current, "first generation of this tree");
                Ok(tree)
            }
        }
    }

    /// Marks the tree a standby of `lineage` (after a switchover promoted the
    /// standby it fed).
    pub fn demote(&self, lineage: &Lineage) -> Result<TreeLineage, LineageError> {
        let tree = TreeLineage { role: Role::Standby, lineage: lineage.clone(), promoted: None, keep_replaced: false, activity: None };
        self.store(&tree)?;
        Ok(tree)
    }

    /// Records how far this master got in its generation, if the tree is still
    /// the primary of `tree`'s generation.
    pub fn record_activity(&self, tree: &TreeLineage, activity: Activity) -> Result<(), LineageError> {
        match self.load()? {
            Some(current) if current.role == Role::Primary && current.lineage == tree.lineage => {
                // A restarted agent has seen nothing yet: what an earlier run saw stays.
                let before = current.activity.unwrap_or_default();
                let activity = Activity {
                    last_seq: activity.last_seq.max(before.last_seq),
                    last_change_unix_ns: activity.last_change_unix_ns.max(before.last_change_unix_ns),
                    changes: activity.changes.max(before.changes),
                };
                self.store(&TreeLineage { activity: Some(activity), ..current })
            }
            _ => Ok(()),
        }
    }

    /// The lineage, `None` when the tree never had one.
    pub fn load(&self) -> Result<Option<TreeLineage>, LineageError> {
        let path = self.path(LINEAGE_FILE);
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let file = match openat(self.dir.as_fd(), LINEAGE_FILE, flags, Mode::empty()) {
            Ok(fd) => File::from(fd),
            Err(Errno::ENOENT) => return Ok(None),
            Err(errno) => return Err(LineageError::Io { path, source: errno.into() }),
        };
        let mut text = String::new();
        let read = match file.metadata() {
            Ok(meta) if meta.is_file() => file.take(MAX_LINEAGE_LEN).read_to_string(&mut text).map(drop),
            Ok(_) => Err(std::io::Error::other("not a regular file")),
            Err(e) => Err(e),
        };
        read.map_err(|source| LineageError::Io { path: path.clone(), source })?;
        serde_json::from_str(&text).map(Some).map_err(|e| LineageError::Corrupt { path, reason: e.to_string() })
    }

    fn store(&self, tree: &TreeLineage) -> Result<(), LineageError> {
        self.write_json(LINEAGE_TMP, LINEAGE_FILE, tree)
    }

    /// Records what this tree holds that its standby never received (read by the
    /// receiver that runs here once the tree follows the new master).
    pub fn store_unsent(&self, unsent: &Unsent) -> Result<(), LineageError> {
        self.write_json(UNSENT_TMP, UNSENT_FILE, unsent)
    }

    fn write_json(&self, tmp_name: &str, name: &str, value: &impl serde::Serialize) -> Result<(), LineageError> {
        let tmp = self.path(tmp_name);
        let io = |path: PathBuf| move |source: std::io::Error| LineageError::Io { path, source };
        let mut text = serde_json::to_string_pretty(value).map_err(|e| LineageError::Corrupt { path: tmp.clone(), reason: e.to_string() })?;
        text.push('\n');
        match unlinkat(self.dir.as_fd(), tmp_name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(errno) => return Err(io(tmp)(errno.into())),
        }
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut file = openat(self.dir.as_fd(), tmp_name, flags, Mode::from_bits_truncate(0o600))
            .map(File::from)
            .map_err(|errno| io(tmp.clone())(errno.into()))?;
        file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(io(tmp.clone()))?;
        renameat(self.dir.as_fd(), tmp_name, self.dir.as_fd(), name).map_err(|errno| io(self.path(name))(errno.into()))?;
        nix::unistd::fsync(self.dir.as_fd()).map_err(|errno| io(self.path(""))(errno.into()))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(STATE_DIR).join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_gets_one_generation_and_refuses_an_agent_once_a_standby() {
        let dir = tempfile::tempdir().unwrap();
        let file = TreeFile::open(dir.path()).unwrap();
        let first = file.primary().unwrap();
        assert_eq!(first.role, Role::Primary);
        assert_eq!(TreeFile::open(dir.path()).unwrap().primary().unwrap(), first, "kept across starts");
        let promoted = first.lineage.fork("standby", 10, 1);
        file.demote(&promoted).unwrap();
        let err = file.primary().unwrap_err().to_string();
        assert!(err.contains("is a standby") && err.contains(&promoted.current.to_string()), "{err}");
    }

    #[test]
    fn a_planted_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join(".sluice")).unwrap();
        assert!(TreeFile::open(dir.path()).is_err());
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
    }
}
