//! The initial sync: bringing the standby tree in line with the agent's manifest
//! before live operations resume.
//!
//! Directories, symlinks, FIFOs and hard links are made directly from the
//! manifest. A regular file whose size or mtime differs is answered with a
//! [`Want`] carrying the hashes of the blocks the standby already holds, so the
//! agent sends only the blocks that differ (as `Write` ops) and then a `SetAttrs`.
//! When the manifest ends, whatever it did not list is deleted (below the root for
//! a whole-tree manifest, below the named subtrees for a scoped one) and the
//! metadata of directories is set, deepest first so creating children does not
//! disturb a parent's mtime afterwards.
//!
//! An entry the standby cannot make as listed is skipped and reported as
//! diverged, so the agent repairs it; only a standby that cannot take writes at
//! all (see [`ApplyError::is_environmental`]) ends the comparison with an error.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::dir::Type;
use nix::fcntl::OFlag;
use nix::sys::stat::SFlag;
use sluice_proto::{Attrs, Entry, EntryKind, Meta, Op, ReceiverMessage, RelPath};

use crate::apply::fs::{kind_of, list_dir, lstat_at, open_beneath};
use crate::apply::hashes::{Run, data_block_hashes};
use crate::apply::{Applier, ApplyError, STATE_DIR, check_reserved};

/// Top-level names the manifest never lists but that are not deleted.
const KEPT_AT_TOP: [&str; 2] = ["lost+found", STATE_DIR];

/// Why the initial sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Creating or changing an entry failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The local copy of a file could not be read for hashing.
    #[error("{path}: cannot hash the local copy: {source}")]
    Hash {
        path: RelPath,
        source: std::io::Error,
    },
    /// Listing or removing local entries failed.
    #[error("{path}: {call}: {source}")]
    Local {
        path: RelPath,
        call: &'static str,
        source: std::io::Error,
    },
    /// The manifest lists more entries than one comparison may.
    #[error("the manifest lists more than {max} entries (`[safety] max_manifest_entries`)")]
    TooManyEntries { max: u64 },
}

/// A file the standby needs: its local size and the hashes of the blocks of
/// its copy that hold data (holes are left out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    pub path: RelPath,
    pub size: u64,
    pub runs: Vec<Run>,
}

impl Want {
    /// One `Want` message per run of hashes (at least one), so no message
    /// outgrows a frame however large the file.
    pub fn into_messages(self) -> Vec<ReceiverMessage> {
        let mut runs = self.runs;
        if runs.is_empty() {
            runs.push(Run { first_block: 0, hashes: Vec::new() });
        }
        let count = runs.len();
        runs.into_iter()
            .enumerate()
            .map(|(i, run)| ReceiverMessage::Want {
                path: self.path.clone(),
                size: self.size,
                first_block: run.first_block,
                hashes: run.hashes,
                last: i + 1 == count,
            })
            .collect()
    }
}

/// What the receiver answers to part of a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncReply {
    /// A file whose copy differs.
    Want(Want),
    /// An entry that could not be made as listed.
    Diverged { path: RelPath, reason: String },
}

impl SyncReply {
    /// The messages that carry the reply.
    pub fn into_messages(self) -> Vec<ReceiverMessage> {
        match self {
            SyncReply::Want(want) => want.into_messages(),
            SyncReply::Diverged { path, reason } => vec![ReceiverMessage::Diverged { seq: 0, paths: vec![path], reason }],
        }
    }
}

/// The state of one initial sync, from the first manifest chunk to `ManifestEnd`.
pub struct InitialSync {
    /// Keyed hashes of the listed paths: a large manifest costs 8 bytes an
    /// entry, not its paths. Two paths sharing a hash (unlikely, and not
    /// something a peer can aim for with a random key) only mean an unlisted
    /// entry is kept, never that a listed one is deleted.
    listed: HashSet<u64>,
    keys: RandomState,
    max_entries: u64,
    /// Keyed hashes of the listed directories, whose unlisted content a subtree
    /// prune removes.
    listed_dirs: HashSet<u64>,
    /// Metadata applied at the end, in manifest order (parents first).
    deferred: Vec<(RelPath, Meta, bool)>,
    wanted: u64,
    /// Copy each file that differs into the rollback directory before it is
    /// rewritten (failback of an old primary).
    keep_replaced: bool,
    /// Files changed on the standby by someone else: kept the same way.
    keep_paths: std::collections::BTreeSet<RelPath>,
}

/// Turns an entry's failure into a reply, unless the standby cannot take writes.
fn diverged(path: &RelPath, error: SyncError, out: &mut Vec<SyncReply>) -> Result<(), SyncError> {
    if error.is_environmental() {
        return Err(error);
    }
    tracing::warn!(%path, %error, "entry does not fit the standby's copy; reported for repair");
    out.push(SyncReply::Diverged { path: path.clone(), reason: error.to_string() });
    Ok(())
}

impl SyncError {
    /// See [`ApplyError::is_environmental`].
    pub fn is_environmental(&self) -> bool {
        match self {
            SyncError::Apply(e) => e.is_environmental(),
            SyncError::TooManyEntries { .. } => false,
            SyncError::Hash { source, .. } | SyncError::Local { source, .. } => {
                matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT | libc::EIO | libc::EROFS | libc::ENOMEM | libc::ENFILE | libc::EMFILE))
            }
        }
    }
}

fn local(path: &RelPath, call: &'static str) -> impl FnOnce(nix::errno::Errno) -> SyncError {
    move |errno| SyncError::Local {
        path: path.clone(),
        call,
        source: errno.into(),
    }
}

/// Entries one comparison lists at most, unless configured otherwise.
pub const DEFAULT_MAX_ENTRIES: u64 = 50_000_000;

impl Default for InitialSync {
    fn default() -> Self {
        Self::with_limit(DEFAULT_MAX_ENTRIES)
    }
}

impl InitialSync {
    pub fn new() -> Self {
        Self::default()
    }

    /// A sync that refuses a manifest of more than `max_entries` entries.
    pub fn with_limit(max_entries: u64) -> Self {
        InitialSync {
            listed: HashSet::new(),
            keys: RandomState::new(),
            max_entries,
            listed_dirs: HashSet::new(),
            deferred: Vec::new(),
            wanted: 0,
            keep_replaced: false,
            keep_paths: std::collections::BTreeSet::new(),
        }
    }

    /// Copies these files into the rollback directory before they are rewritten.
    pub fn keeping_paths(mut self, paths: std::collections::BTreeSet<RelPath>) -> Self {
        self.keep_paths = paths;
        self
    }

    /// Copies each differing file into the rollback directory before it is
    /// rewritten (the applier must keep rollback on).
    pub fn keeping_replaced(mut self, keep: bool) -> Self {
        self.keep_replaced = keep;
        self
    }

    fn key(&self, path: &RelPath) -> u64 {
        self.keys.hash_one(path.as_bytes())
    }

    fn is_listed(&self, path: &RelPath) -> bool {
        self.listed.contains(&self.key(path))
    }

    /// How many entries of the standby a comparison of the whole tree would
    /// delete, and how many it holds (both counting everything below a
    /// directory, and leaving out `.sluice` and `lost+found`).
    pub fn deletions(&self, applier: &Applier) -> Result<(u64, u64), SyncError> {
        let (mut doomed, mut total) = (0u64, 0u64);
        let mut dirs = vec![RelPath::root()];
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
        while let Some(dir) = dirs.pop() {
            let Ok(fd) = open_beneath(applier.root_fd(), dir.as_path(), flags) else { continue };
            for (name, kind) in list_dir(fd.as_fd()).map_err(local(&dir, "readdir"))? {
                let name = OsStr::from_bytes(&name);
                if dir.is_root() && KEPT_AT_TOP.iter().any(|kept| name == OsStr::new(kept)) {
                    continue;
                }
                let Ok(child) = dir.join(name) else { continue };
                let is_dir = match kind {
                    Some(kind) => kind == Type::Directory,
                    None => lstat_at(fd.as_fd(), name).ok().flatten().is_some_and(|s| kind_of(&s) == SFlag::S_IFDIR),
                };
                if self.is_listed(&child) {
                    total += 1;
                    if is_dir {
                        dirs.push(child);
                    }
                } else {
                    let below = crate::apply::fs::count_tree(fd.as_fd(), name);
                    doomed += below;
                    total += below;
                }
            }
        }
        Ok((doomed, total))
    }

    /// Applies one manifest chunk and returns the files the standby wants and the
    /// entries it could not make.
    pub fn entries(
        &mut self,
        applier: &mut Applier,
        entries: &[Entry],
    ) -> Result<Vec<SyncReply>, SyncError> {
        let mut replies = Vec::new();
        for entry in entries {
            if check_reserved(&entry.path).is_err() {
                tracing::warn!(path = %entry.path, "manifest lists the receiver's reserved directory; skipped");
                continue;
            }
            if self.listed.len() as u64 >= self.max_entries {
                return Err(SyncError::TooManyEntries { max: self.max_entries });
            }
            let key = self.key(&entry.path);
            self.listed.insert(key);
            if entry.kind == EntryKind::Dir {
                self.listed_dirs.insert(key);
            }
            match self.entry(applier, entry) {
                Ok(Some(want)) => {
                    self.wanted += 1;
                    replies.push(SyncReply::Want(want));
                }
                Ok(None) => {}
                Err(e) => diverged(&entry.path, e, &mut replies)?,
            }
        }
        Ok(replies)
    }

    fn entry(&mut self, applier: &mut Applier, entry: &Entry) -> Result<Option<Want>, SyncError> {
        let want = self.entry_kind(applier, entry)?;
        if entry.hardlink_of.is_none() {
            applier.set_xattrs(&entry.path, &entry.xattrs)?;
        }
        Ok(want)
    }

    fn entry_kind(&mut self, applier: &mut Applier, entry: &Entry) -> Result<Option<Want>, SyncError> {
        let path = &entry.path;
        if path.is_root() && entry.kind != EntryKind::Dir {
            // Replacing the root would empty the standby, `.sluice` included.
            return Err(ApplyError::Root { op: "replacing by a non-directory" }.into());
        }
        if let Some(existing) = &entry.hardlink_of
            && entry.kind != EntryKind::Dir
        {
            applier.hard_link(existing, path)?;
            return Ok(None);
        }
        match &entry.kind {
            EntryKind::Dir => {
                applier.mkdir(path, entry.meta.mode)?;
                self.deferred.push((path.clone(), entry.meta, true));
            }
            EntryKind::Symlink { target } => {
                applier.symlink(path, target)?;
                self.deferred.push((path.clone(), entry.meta, false));
            }
            EntryKind::Fifo => {
                applier.mkfifo(path, entry.meta.mode)?;
                self.deferred.push((path.clone(), entry.meta, false));
            }
            EntryKind::Device { block, rdev } => {
                let kind = if *block { libc::S_IFBLK } else { libc::S_IFCHR };
                applier.mknod(path, kind | entry.meta.mode, *rdev)?;
                self.deferred.push((path.clone(), entry.meta, false));
            }
            EntryKind::File { size } => return self.file(applier, path, *size, &entry.meta, entry.verify, entry.names),
        }
        Ok(None)
    }

    /// Compares a regular file with the local copy. A missing (or non-file) copy is
    /// replaced by an empty file at once, so later hard links to it can be made
    /// before its content arrives.
    fn file(
        &mut self,
        applier: &mut Applier,
        path: &RelPath,
        size: u64,
        meta: &Meta,
        verify: bool,
        names: u32,
    ) -> Result<Option<Want>, SyncError> {
        let (dir, name) = applier.parent(path)?;
        let stat = lstat_at(dir.as_fd(), name).map_err(local(path, "fstatat"))?;
        let stat = match stat {
            // A copy with more names than the master's file shares its content with
            // a name it should not: comparing it in place would write through both.
            Some(stat) if kind_of(&stat) == SFlag::S_IFREG && stat.st_nlink <= u64::from(names.max(1)) => stat,
            other => {
                if other.is_some() {
                    applier.invalidate(path);
                    applier.keep_or_remove(dir.as_fd(), name, path)?;
                }
                applier.apply(&Op::CreateFile {
                    path: path.clone(),
                    mode: 0o600,
                    truncate: false,
                })?;
                return Ok(Some(Want {
                    path: path.clone(),
                    size: 0,
                    runs: Vec::new(),
                }));
            }
        };
        let same_mtime =
            stat.st_mtime == meta.mtime.secs && stat.st_mtime_nsec == i64::from(meta.mtime.nanos);
        if stat.st_size as u64 == size && same_mtime && !verify {
            let attrs = Attrs {
                mode: Some(meta.mode),
                uid: Some(meta.uid),
                gid: Some(meta.gid),
                ..Attrs::default()
            };
            applier.set_attrs(path, &attrs)?;
            return Ok(None);
        }
        if self.keep_replaced || self.keep_paths.contains(path) {
            applier.keep_copy(path, &stat)?;
        }
        let file = applier.open_read(path)?;
        let runs = data_block_hashes(&file, stat.st_size as u64).map_err(|source| SyncError::Hash {
            path: path.clone(),
            source,
        })?;
        Ok(Some(Want {
            path: path.clone(),
            size: stat.st_size as u64,
            runs,
        }))
    }

    /// Ends the sync: below each directory of `subtrees` (the root for a
    /// whole-tree manifest), deletes what the manifest did not list; then sets the
    /// deferred metadata deepest first. Returns how many files were wanted and the
    /// entries that could not be made as listed.
    pub fn finish(self, applier: &mut Applier, subtrees: &[RelPath]) -> Result<(u64, Vec<SyncReply>), SyncError> {
        let mut replies = Vec::new();
        for subtree in subtrees {
            if check_reserved(subtree).is_err() {
                continue;
            }
            let result = if subtree.is_root() || self.is_listed(subtree) {
                if subtree.is_root() || self.listed_dirs.contains(&self.key(subtree)) {
                    self.prune(applier, subtree, &mut replies)
                } else {
                    // A file or other leaf: listing it was the whole comparison.
                    Ok(())
                }
            } else {
                // Gone from the master since the agent asked: the whole subtree goes.
                applier.remove(subtree).map_err(SyncError::from)
            };
            if let Err(e) = result {
                diverged(subtree, e, &mut replies)?;
            }
        }
        for (path, meta, _) in self.deferred.iter().rev() {
            let attrs = Attrs {
                size: None,
                mode: Some(meta.mode),
                uid: Some(meta.uid),
                gid: Some(meta.gid),
                mtime: Some(meta.mtime),
            };
            if let Err(e) = applier.set_attrs(path, &attrs) {
                diverged(path, e.into(), &mut replies)?;
            }
        }
        Ok((self.wanted, replies))
    }

    /// Removes every entry below directory `top` that was not listed, and goes
    /// on into the listed directories (from a work list, not by recursion: a
    /// tree can be deeper than the stack).
    fn prune(&self, applier: &mut Applier, top: &RelPath, replies: &mut Vec<SyncReply>) -> Result<(), SyncError> {
        let mut dirs = vec![top.clone()];
        while let Some(dir) = dirs.pop() {
            let result = self.prune_dir(applier, &dir, replies, &mut dirs);
            match result {
                Err(e) if dir != *top => diverged(&dir, e, replies)?,
                other => other?,
            }
        }
        Ok(())
    }

    /// Removes the unlisted entries of `dir` and adds its listed directories to `dirs`.
    fn prune_dir(&self, applier: &mut Applier, dir: &RelPath, replies: &mut Vec<SyncReply>, dirs: &mut Vec<RelPath>) -> Result<(), SyncError> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW;
        let fd =
            open_beneath(applier.root_fd(), dir.as_path(), flags).map_err(local(dir, "openat2"))?;
        for (name, kind) in list_dir(fd.as_fd()).map_err(local(dir, "readdir"))? {
            let name = OsStr::from_bytes(&name);
            if dir.is_root() && KEPT_AT_TOP.iter().any(|kept| name == OsStr::new(kept)) {
                continue;
            }
            let child = dir.join(name).map_err(|_| SyncError::Local {
                path: dir.clone(),
                call: "readdir",
                source: std::io::Error::other(format!("unusable name {:?}", Path::new(name))),
            })?;
            if !self.is_listed(&child) {
                tracing::debug!(path = %child, "not on the master; removed");
                applier.invalidate(&child);
                if let Err(e) = applier.keep_or_remove(fd.as_fd(), name, &child) {
                    diverged(&child, e.into(), replies)?;
                }
                continue;
            }
            let is_dir = match kind {
                Some(kind) => kind == Type::Directory,
                None => lstat_at(fd.as_fd(), name)
                    .map_err(local(&child, "fstatat"))?
                    .is_some_and(|s| kind_of(&s) == SFlag::S_IFDIR),
            };
            if is_dir {
                dirs.push(child);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::{Timestamp, blocks};
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    fn p(s: &str) -> RelPath {
        RelPath::from_bytes(s).unwrap()
    }

    fn meta(mode: u32, secs: i64) -> Meta {
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        Meta {
            mode,
            uid,
            gid,
            mtime: Timestamp { secs, nanos: 0 },
        }
    }

    /// The metadata of an existing local file, so it compares as identical.
    fn local_meta(path: &Path, mode: u32) -> Meta {
        let m = fs::metadata(path).unwrap();
        Meta {
            mtime: Timestamp {
                secs: m.mtime(),
                nanos: m.mtime_nsec() as u32,
            },
            ..meta(mode, 0)
        }
    }

    fn entry(path: &str, kind: EntryKind, meta: Meta) -> Entry {
        Entry {
            path: p(path),
            kind,
            meta,
            hardlink_of: None,
            names: 1,
            xattrs: Vec::new(),
            verify: false,
        }
    }

    #[test]
    fn stale_copy_yields_wants_with_local_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let mut applier = Applier::open(dir.path()).unwrap();
        let stale = vec![3u8; blocks::BLOCK_SIZE as usize + 100];
        fs::write(dir.path().join("stale"), &stale).unwrap();
        fs::write(dir.path().join("same"), b"same").unwrap();
        let mut sync = InitialSync::new();
        let entries = vec![
            entry("", EntryKind::Dir, meta(0o755, 1000)),
            entry("d", EntryKind::Dir, meta(0o750, 2000)),
            entry("stale", EntryKind::File { size: 5 }, meta(0o644, 3000)),
            entry(
                "same",
                EntryKind::File { size: 4 },
                local_meta(&dir.path().join("same"), 0o640),
            ),
            entry("d/new", EntryKind::File { size: 10 }, meta(0o644, 3000)),
            Entry {
                hardlink_of: Some(p("d/new")),
                names: 1,
                ..entry("d/link", EntryKind::File { size: 10 }, meta(0o644, 3000))
            },
            entry(
                "d/l",
                EntryKind::Symlink {
                    target: b"new".to_vec(),
                },
                meta(0o777, 4000),
            ),
            entry("fifo", EntryKind::Fifo, meta(0o600, 5000)),
        ];
        let wants = wants_of(sync.entries(&mut applier, &entries).unwrap());
        assert_eq!(wants.len(), 2);
        assert_eq!(wants[0].path, p("stale"));
        assert_eq!(wants[0].size, stale.len() as u64);
        assert_eq!(wants[0].runs, vec![Run { first_block: 0, hashes: blocks::hash_blocks(&stale[..]).unwrap() }]);
        assert_eq!(
            wants[1],
            Want {
                path: p("d/new"),
                size: 0,
                runs: vec![]
            }
        );
        assert_eq!(sync.finish(&mut applier, &[RelPath::root()]).unwrap(), (2, vec![]));

        let root = dir.path();
        assert_eq!(
            fs::metadata(root.join("same")).unwrap().mode() & 0o7777,
            0o640
        );
        let (new, link) = (
            fs::metadata(root.join("d/new")).unwrap(),
            fs::metadata(root.join("d/link")).unwrap(),
        );
        assert_eq!(new.ino(), link.ino());
        assert_eq!(fs::read_link(root.join("d/l")).unwrap(), Path::new("new"));
        assert_eq!(
            fs::symlink_metadata(root.join("d/l")).unwrap().mtime(),
            4000
        );
        let d = fs::metadata(root.join("d")).unwrap();
        assert_eq!((d.mode() & 0o7777, d.mtime()), (0o750, 2000));
        assert_eq!(fs::metadata(root).unwrap().mtime(), 1000);
    }

    #[test]
    fn unlisted_entries_are_removed_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("keep/gone/deeper")).unwrap();
        fs::write(root.join("keep/gone/deeper/f"), b"x").unwrap();
        fs::write(root.join("keep/extra"), b"x").unwrap();
        fs::write(root.join("keep/file"), b"x").unwrap();
        fs::create_dir_all(root.join("lost+found")).unwrap();
        fs::create_dir_all(root.join(".sluice")).unwrap();
        std::os::unix::fs::symlink("/", root.join("danglingroot")).unwrap();
        let mut applier = Applier::open(root).unwrap();
        let mut sync = InitialSync::new();
        let entries = vec![
            entry("keep", EntryKind::Dir, meta(0o755, 10)),
            entry(
                "keep/file",
                EntryKind::File { size: 1 },
                local_meta(&root.join("keep/file"), 0o644),
            ),
        ];
        assert!(sync.entries(&mut applier, &entries).unwrap().is_empty());
        assert_eq!(sync.finish(&mut applier, &[RelPath::root()]).unwrap(), (0, vec![]));
        let mut left: Vec<_> = walk(root);
        left.sort();
        assert_eq!(left, [".sluice", "keep", "keep/file", "lost+found"]);
        assert_eq!(fs::metadata(root.join("keep")).unwrap().mtime(), 10);
    }

    #[test]
    fn scoped_manifest_compares_only_what_it_lists() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("unlisted"), b"x").unwrap();
        fs::write(root.join("listed"), b"old").unwrap();
        let mut applier = Applier::open(root).unwrap();
        let mut sync = InitialSync::new();
        let listed = Entry {
            verify: true,
            ..entry(
                "listed",
                EntryKind::File { size: 3 },
                local_meta(&root.join("listed"), 0o644),
            )
        };
        let wants = sync.entries(&mut applier, &[listed]).unwrap();
        assert_eq!(wants.len(), 1, "verify compares blocks even when size and mtime match");
        assert_eq!(sync.finish(&mut applier, &[]).unwrap(), (1, vec![]));
        assert!(root.join("unlisted").exists());
    }

    #[test]
    fn scoped_manifest_prunes_only_its_subtrees() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/sub")).unwrap();
        fs::create_dir_all(root.join("b")).unwrap();
        fs::create_dir_all(root.join("gone/deep")).unwrap();
        fs::write(root.join("a/extra"), b"x").unwrap();
        fs::write(root.join("a/sub/extra"), b"x").unwrap();
        fs::write(root.join("b/extra"), b"x").unwrap();
        let mut applier = Applier::open(root).unwrap();
        let mut sync = InitialSync::new();
        let entries = vec![entry("a", EntryKind::Dir, meta(0o755, 10)), entry("a/sub", EntryKind::Dir, meta(0o755, 10))];
        assert!(sync.entries(&mut applier, &entries).unwrap().is_empty());
        let file = entry("b/extra", EntryKind::File { size: 1 }, local_meta(&root.join("b/extra"), 0o644));
        assert!(sync.entries(&mut applier, &[file]).unwrap().is_empty());
        assert_eq!(sync.finish(&mut applier, &[p("a"), p("gone"), p("b/extra")]).unwrap(), (0, vec![]));
        assert!(!root.join("a/extra").exists() && !root.join("a/sub/extra").exists());
        assert!(!root.join("gone").exists(), "a subtree the master no longer has is removed");
        assert!(root.join("b/extra").exists(), "outside the subtrees nothing is touched");
    }

    #[test]
    fn an_entry_that_cannot_be_made_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut applier = Applier::open(root).unwrap();
        let mut sync = InitialSync::new();
        let entries = vec![
            entry("missing/child", EntryKind::Dir, meta(0o755, 10)),
            entry("ok", EntryKind::Dir, meta(0o755, 10)),
        ];
        let replies = sync.entries(&mut applier, &entries).unwrap();
        assert!(
            matches!(&replies[..], [SyncReply::Diverged { path, .. }] if *path == p("missing/child")),
            "{replies:?}"
        );
        assert!(root.join("ok").is_dir(), "the entries after it are still made");
    }

    fn wants_of(replies: Vec<SyncReply>) -> Vec<Want> {
        replies
            .into_iter()
            .map(|r| match r {
                SyncReply::Want(want) => want,
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    fn walk(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                out.push(
                    entry
                        .path()
                        .strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
                if entry.file_type().unwrap().is_dir() {
                    stack.push(entry.path());
                }
            }
        }
        out
    }
}
