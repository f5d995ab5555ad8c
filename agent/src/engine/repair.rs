//! Targeted repairs: paths whose copy on the standby is known or suspected to
//! differ from the master's (an operation the receiver could not apply, a replay
//! that could not be trusted, a change capture could not place) are made
//! identical by a scoped comparison of just those paths, instead of a comparison
//! of the whole tree.

use super::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// More paths than this waiting for repair at once: the whole tree is compared.
const MAX_REPAIR_PATHS: usize = 512;
/// Repairs of one path within [`REPAIR_WINDOW`] before it is given up (and
/// reported) instead of repaired again and again.
const MAX_REPAIR_ATTEMPTS: u32 = 8;
const REPAIR_WINDOW: Duration = Duration::from_secs(600);
/// Files below a repaired directory whose inode changed within this long are
/// compared block by block, not by size and mtime only.
const REPAIR_VERIFY_SECS: i64 = 120;

/// How long a walk is remembered for the events captured before it ends.
const WALK_MEMORY_NS: u64 = 30_000_000_000;

/// A walk of (part of) the live tree: what the index and the manifest reflect.
#[derive(Debug)]
pub(super) struct WalkRecord {
    /// CLOCK_MONOTONIC when it began and ended.
    pub(super) start_ns: u64,
    pub(super) end_ns: u64,
    /// The parts walked; `None` for the whole tree.
    pub(super) subtrees: Option<Vec<RelPath>>,
}

impl WalkRecord {
    fn covers(&self, path: &RelPath) -> bool {
        self.subtrees.as_ref().is_none_or(|subtrees| subtrees.iter().any(|s| path.starts_with(s)))
    }
}

/// Paths waiting for repair and how often each was repaired lately.
#[derive(Debug, Default)]
pub(super) struct Repairs {
    pending: BTreeMap<RelPath, String>,
    /// Paths whose copy on the standby goes before they are repaired.
    replace: std::collections::BTreeSet<RelPath>,
    attempts: HashMap<RelPath, (u32, Instant)>,
    /// Paths given up on: repaired too often without converging.
    pub(super) abandoned: u64,
}

impl Repairs {
    /// Forgets the waiting paths (a comparison of the whole tree covers them).
    pub(super) fn clear(&mut self) {
        self.pending.clear();
        self.replace.clear();
        self.attempts.clear();
    }
}

/// A scoped comparison that repairs some paths: the entries to list and the
/// paths below which whatever is not listed goes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RepairManifest {
    /// Paths the standby removes before the comparison makes them anew.
    pub removes: Vec<RelPath>,
    pub entries: Vec<Entry>,
    pub subtrees: Vec<RelPath>,
    pub reasons: Vec<String>,
}

impl Engine {
    /// Records a walk of `subtrees` (`None`: the whole tree) that began at `start_ns`.
    pub(super) fn walked(&mut self, start_ns: u64, subtrees: Option<Vec<RelPath>>) {
        let end_ns = crate::session::monotonic_ns();
        self.walks.retain(|w| end_ns.saturating_sub(w.end_ns) < WALK_MEMORY_NS);
        self.walks.push(WalkRecord { start_ns, end_ns, subtrees });
    }

    /// True when a namespace event naming `paths` was captured before a walk of
    /// those paths ended, so the walk already reflects it, or may (for one that
    /// happened while the walk went on): replaying its operation after the
    /// walk's manifest could undo what the manifest made right (a rename over a
    /// name that was recreated since, an exchange). Instead, what the walk may
    /// not have seen rightly is repaired.
    pub(super) fn superseded_by_walk(&mut self, ts: u64, paths: &[RelPath]) -> bool {
        let Some(walk) = self.walks.iter().rev().find(|w| ts <= w.end_ns && paths.iter().any(|p| w.covers(p))) else {
            return false;
        };
        let before = ts < walk.start_ns;
        let whole = walk.subtrees.is_none();
        if !before && whole {
            // During a walk of the whole tree: replayed as usual (repairing each
            // such path would only start another walk).
            return false;
        }
        let again: Vec<RelPath> = paths.iter().filter(|p| !before || !walk.covers(p)).cloned().collect();
        for path in again {
            self.request_repair(path, "changed while the tree was walked");
        }
        true
    }

    /// Asks for `path` (which may be missing on either side) to be made identical
    /// on the standby, with everything below it.
    pub fn request_repair(&mut self, path: RelPath, reason: impl Into<String>) {
        if self.rescan.is_some() || scan::is_excluded(&path) {
            return;
        }
        let now = Instant::now();
        let repairs = &mut self.repairs;
        repairs.attempts.retain(|_, (_, first)| now.duration_since(*first) < REPAIR_WINDOW);
        let (count, _) = repairs.attempts.entry(path.clone()).or_insert((0, now));
        *count += 1;
        if *count > MAX_REPAIR_ATTEMPTS {
            if *count == MAX_REPAIR_ATTEMPTS + 1 {
                repairs.abandoned += 1;
                tracing::error!(%path, reason = %reason.into(), "the standby's copy still differs after {MAX_REPAIR_ATTEMPTS} repairs; left for the verifier");
            }
            return;
        }
        repairs.pending.entry(path).or_insert_with(|| reason.into());
        if repairs.pending.len() > MAX_REPAIR_PATHS {
            let count = repairs.pending.len();
            repairs.pending.clear();
            self.request_rescan(format!("{count} paths to repair at once"));
        }
    }

    /// Like [`Engine::request_repair`], but the standby's copy of `path` is
    /// removed first and made anew, not compared in place.
    pub fn request_replacement(&mut self, path: RelPath, reason: impl Into<String>) {
        self.repairs.replace.insert(path.clone());
        self.request_repair(path, reason);
    }

    /// True when paths wait for repair.
    pub fn has_repairs(&self) -> bool {
        !self.repairs.pending.is_empty()
    }

    /// Paths given up on since the start.
    pub fn repairs_abandoned(&self) -> u64 {
        self.repairs.abandoned
    }

    /// Builds the comparison repairing every waiting path, reading the master's
    /// tree as it is now and bringing the index in line with it; `None` when
    /// nothing waits, or when the whole tree is to be compared instead.
    pub fn take_repairs(&mut self) -> io::Result<Option<RepairManifest>> {
        if self.repairs.pending.is_empty() {
            return Ok(None);
        }
        let pending = std::mem::take(&mut self.repairs.pending);
        let replace = std::mem::take(&mut self.repairs.replace);
        if self.rescan.is_some() {
            return Ok(None);
        }
        // Deepest first would list a subtree twice; a path below another waiting
        // one is covered by it.
        let mut roots: Vec<(RelPath, String)> = Vec::new();
        for (path, reason) in pending {
            if roots.iter().any(|(root, _)| path.starts_with(root)) {
                continue;
            }
            roots.push((path, reason));
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let walk_start = crate::session::monotonic_ns();
        let mut manifest = RepairManifest { removes: replace.into_iter().collect(), ..RepairManifest::default() };
        let mut listed: HashSet<RelPath> = HashSet::new();
        for (path, reason) in roots {
            let path = self.repairable(path);
            if path.is_root() {
                self.request_rescan(format!("repair of the whole tree: {reason}"));
                return Ok(None);
            }
            tracing::info!(%path, %reason, "repairing the standby's copy");
            manifest.reasons.push(reason);
            self.repair_one(&path, now - REPAIR_VERIFY_SECS, &mut manifest, &mut listed)?;
        }
        self.walked(walk_start, Some(manifest.subtrees.clone()));
        Ok(Some(manifest))
    }

    /// Lists `dir` and its ancestors not listed yet, so the standby can make them
    /// if it lacks them.
    fn list_ancestors(&self, dir: &RelPath, manifest: &mut RepairManifest, listed: &mut HashSet<RelPath>) -> io::Result<()> {
        let mut ancestor = RelPath::root();
        for component in dir.as_bytes().split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            ancestor = ancestor.join(OsStr::from_bytes(component)).map_err(io::Error::other)?;
            if listed.insert(ancestor.clone()) {
                let meta = std::fs::symlink_metadata(self.root.join(ancestor.as_path()))?;
                if let Some(entry) = scan::entry_of(&self.root, &ancestor, &meta, self.options.devices, false) {
                    manifest.entries.push(entry);
                }
            }
        }
        Ok(())
    }

    /// The path to repair for `path`: itself when its parent is an indexed
    /// directory that is still a directory on the master, else the nearest
    /// ancestor for which that holds.
    fn repairable(&mut self, mut path: RelPath) -> RelPath {
        loop {
            let Some(parent) = path.parent() else { return path };
            let live = std::fs::symlink_metadata(self.root.join(parent.as_path()));
            let indexed = self.index.resolve(&parent);
            match (live, indexed) {
                (Ok(meta), Some(ino)) if meta.is_dir() && meta.ino() == ino => return path,
                _ => path = parent,
            }
        }
    }

    /// Lists `path` (whose parent is indexed and live) and its ancestors, and
    /// everything below it when it is a directory; updates the index to match.
    fn repair_one(&mut self, path: &RelPath, verify_since: i64, manifest: &mut RepairManifest, listed: &mut HashSet<RelPath>) -> io::Result<()> {
        let parent_path = path.parent().unwrap_or_else(RelPath::root);
        let parent = self.index.resolve(&parent_path).ok_or_else(|| io::Error::other(format!("{parent_path} is not indexed")))?;
        let name = path.file_name().unwrap_or_default().to_os_string();
        self.list_ancestors(&parent_path, manifest, listed)?;
        manifest.subtrees.push(path.clone());
        let meta = match std::fs::symlink_metadata(self.root.join(path.as_path())) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Gone from the master: the standby removes it too.
                if let Some(ino) = self.index.unlink(parent, &name)
                    && !self.index.contains(ino)
                {
                    self.dirty.remove(&ino);
                    self.files.forget(ino);
                }
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let kind = kind_of(&meta);
        self.index.insert(parent, &name, meta.ino(), kind);
        self.outside.remove(&meta.ino());
        let Some(mut entry) = scan::entry_of(&self.root, path, &meta, self.options.devices, true) else {
            return Ok(());
        };
        if !meta.is_dir() && meta.nlink() > 1 {
            // Another name of the same inode, as the master has it now (the
            // index may still hold a name that went to another inode).
            let root = &self.root;
            let names: Vec<RelPath> = self
                .index
                .paths_of(meta.ino())
                .into_iter()
                .filter(|other| std::fs::symlink_metadata(root.join(other.as_path())).is_ok_and(|m| m.ino() == meta.ino()))
                .collect();
            entry.names = names.len().max(1) as u32;
            entry.hardlink_of = names.into_iter().find(|other| other != path);
            // The copy is linked to that name's inode on the standby, so that one
            // is compared first: linking alone would take whatever it holds.
            if let Some(other) = &entry.hardlink_of
                && !listed.contains(other)
            {
                let other_parent = other.parent().unwrap_or_else(RelPath::root);
                self.list_ancestors(&other_parent, manifest, listed)?;
                if let Some(first) = scan::entry_of(&self.root, other, &meta, self.options.devices, true) {
                    listed.insert(other.clone());
                    manifest.entries.push(first);
                }
            }
        }
        if meta.is_file() {
            self.files.remember(meta.ino(), path.as_path());
        }
        listed.insert(path.clone());
        manifest.entries.push(entry);
        if meta.is_dir() {
            let below = scan::rescan_below(&self.root, path, &mut self.index, &mut self.files, self.options.devices, Some(verify_since))?;
            manifest.entries.extend(below.into_iter().filter(|e| listed.insert(e.path.clone())));
        }
        self.dirty.retain(|ino, _| self.index.contains(*ino));
        Ok(())
    }
}
