//! Turns captured events into replication operations, keeping the index in step.
//!
//! Data changes are coalesced per inode ([`RangeSet`]) and read from the file when
//! flushed; namespace events flush pending data first, then update the index and
//! emit their operation, so every operation names paths as the receiver has them
//! at that point of the stream. Anything the engine cannot place with certainty
//! asks for a rescan (a tree comparison with the receiver) instead of guessing.

use crate::capture::{ANCESTOR_DEV, Event, EventKind, InodeId, NO_FD, SyncKind};
use crate::files::{Files, read_range, segments};
use crate::index::{Index, NodeKind};
use crate::ranges::RangeSet;
use crate::scan::{self, EXCLUDED_TOP_LEVEL, kind_of, meta_of};
use sluice_proto::blocks::{BLOCK_SIZE, hash};
use sluice_proto::{Attrs, Entry, Hash, Op, RelPath};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Largest piece of file content carried by one `Write`.
const MAX_WRITE: u64 = 1 << 20;
const O_TRUNC: u32 = libc::O_TRUNC as u32;
const RENAME_NOREPLACE: u32 = 1;
const RENAME_EXCHANGE: u32 = 2;
const AT_SYMLINK_NOFOLLOW: u32 = libc::AT_SYMLINK_NOFOLLOW as u32;
const PUNCH_HOLE: u32 = (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u32;
/// fallocate modes that move the data after `offset`.
const SHIFTING: u32 = (libc::FALLOC_FL_COLLAPSE_RANGE | libc::FALLOC_FL_INSERT_RANGE) as u32;
/// fallocate modes that change what the range reads as.
const CHANGES_CONTENT: u32 = (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) as u32;
/// How long memory-mapped pages are re-read after they were last seen dirtied: a
/// page dirtied again before writeback cleans it raises no new event, and the
/// kernel writes dirty pages back within `dirty_expire_centisecs` (30 s) plus one
/// flusher period (5 s).
const MAPPED_PATIENCE_NS: u64 = 35_000_000_000;
/// How long after the last store seen through a mapping its file is left
/// unjudged by the verifier.
const MAPPED_SETTLE_NS: u64 = 3_000_000_000;
/// How long a dirty file that cannot be opened is retried before the tree is compared instead.
const REOPEN_PATIENCE_NS: u64 = 5_000_000_000;
/// Paths this long were cut by the capture buffer and cannot be trusted.
const CUT_PATH_LEN: usize = sluice_common::PATH_LEN - 1;
/// How long what a directory path outside the root's prefix resolves to is reused.
const ALIAS_TTL_NS: u64 = 1_000_000_000;
/// Directory paths remembered at most; past it the cache starts over.
const ALIAS_CACHE_LEN: usize = 4096;

/// An operation ready to be numbered and sent.
#[derive(Clone, Debug)]
pub struct PendingOp {
    pub op: Op,
    /// Capture time (CLOCK_MONOTONIC ns) of the oldest change the op carries.
    pub captured_ns: u64,
    /// For a `Write` or a `SetAttrs` of a file: its inode, so the change can be kept
    /// as "this range of this inode is dirty" instead of the bytes themselves.
    pub ino: Option<u64>,
}

#[derive(Debug, Default)]
struct Dirty {
    ranges: RangeSet,
    attrs: bool,
    xattrs: bool,
    first_ns: u64,
}

/// What changed about an inode, short of its content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Attrs,
    Xattrs,
}

/// What the engine replicates beyond files, directories, symlinks and FIFOs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Replicate character and block device nodes.
    pub devices: bool,
}

/// Pages of one file seen dirtied through a mapping, with the hash of what was
/// last read of each, so a re-read sends only pages that changed.
#[derive(Debug, Default)]
struct MappedPages {
    pages: std::collections::BTreeMap<u64, Option<Hash>>,
    last_ns: u64,
}

const PAGE: u64 = 4096;

/// Directory path → (indexed directory it leads to, monotonic ns of the lookup).
type AliasCache = HashMap<Vec<u8>, (Option<u64>, u64)>;

/// io_uring opcodes that only change names (`RENAMEAT`, `UNLINKAT`, `MKDIRAT`,
/// `SYMLINKAT`, `LINKAT`), which fanotify reports.
const IO_URING_NAME_OPS: [u64; 5] = [35, 36, 37, 38, 39];

/// How long a process's memory map read for [`Engine::mapping_at`] is reused.
const MAPS_TTL_NS: u64 = 50_000_000;

/// One line of `/proc/<pid>/maps`.
#[derive(Debug)]
struct MapRegion {
    start: u64,
    end: u64,
    shared_writable: bool,
    offset: u64,
    ino: u64,
    path: Vec<u8>,
}

/// What a user address maps.
/// The largest page-cache folio on x86_64 (`HPAGE_PMD_ORDER`: 2 MiB).
const MAX_FOLIO: u64 = 2 << 20;

enum Mapping {
    /// A page of an indexed file, mapped shared and writable.
    Page { ino: u64, offset: u64 },
    /// Anything else (anonymous memory, a private or read-only mapping, a file
    /// outside the tree).
    Other,
    /// The process is gone.
    Unknown,
}

/// Parses `/proc/<pid>/maps`: `start-end perms offset dev inode path` per line.
fn parse_maps(text: &[u8]) -> Vec<MapRegion> {
    let parse = |line: &[u8]| -> Option<MapRegion> {
        let mut fields = line.splitn(6, |&b| b == b' ');
        let (range, perms, offset) = (fields.next()?, fields.next()?, fields.next()?);
        let (_dev, ino) = (fields.next()?, fields.next()?);
        let path = fields.next().unwrap_or_default().trim_ascii_start().to_vec();
        let text = |bytes: &[u8]| std::str::from_utf8(bytes).ok().map(str::to_owned);
        let (start, end) = text(range)?.split_once('-').map(|(a, b)| (u64::from_str_radix(a, 16).ok(), u64::from_str_radix(b, 16).ok()))?;
        Some(MapRegion {
            start: start?,
            end: end?,
            shared_writable: perms.get(1) == Some(&b'w') && perms.get(3) == Some(&b's'),
            offset: u64::from_str_radix(&text(offset)?, 16).ok()?,
            ino: text(ino)?.parse().ok()?,
            path,
        })
    };
    text.split(|&b| b == b'\n').filter_map(parse).collect()
}

/// Where a path from an event lies.
enum Place {
    Inside { parent: u64, name: OsString, path: RelPath },
    Outside,
    /// In the tree, but `path` (a leading part of it) is not in the index: the
    /// standby's copy there cannot be trusted until that part is repaired.
    Unindexed { path: RelPath },
    Unknown,
}

/// Event → operation translation state.
pub struct Engine {
    root: PathBuf,
    watched_dev: u64,
    index: Index,
    files: Files,
    dirty: HashMap<u64, Dirty>,
    /// What [`Engine::take_journal_deltas`] hands to the journal next.
    journal_dirtied: Vec<DirtyInode>,
    journal_mapped: Vec<DirtyInode>,
    outside: HashSet<u64>,
    rescan: Option<String>,
    /// Set when events may have been lost: the next comparison verifies recent files by content.
    verify_recent: bool,
    /// Wall-clock start (Unix seconds) of the last comparison.
    last_compare: Option<i64>,
    options: Options,
    /// Pages dirtied through mappings: re-read on every sync barrier and periodically.
    mapped: HashMap<u64, MappedPages>,
    /// File bytes read to build operations.
    pub bytes_read: u64,
    /// File bytes that answered a standby's want from what was read for another.
    pub bytes_shared: u64,
    /// While set, dirty data stays in [`Engine::dirty`] (where repeated writes to a
    /// range cost nothing) instead of being read into operations: the backlog of
    /// unsent operations is at its memory bound.
    pub data_held: bool,
    /// File content one flush may read; the rest stays dirty for the next. The
    /// session sets it to the room left in the backlog, so a large file written
    /// at once is read as fast as it is sent, not into memory in one piece.
    pub read_budget: u64,
    /// Sync barriers seen while data was held: they follow that data.
    held_barriers: Vec<(Option<RelPath>, u64)>,
    /// Changes seen to any inode so far, and the count at each inode's last one,
    /// so the verifier can tell a copy that only lags from one that diverged.
    changes: u64,
    /// Per inode: the change count and capture time (CLOCK_MONOTONIC ns) of its last change.
    last_change: HashMap<u64, (u64, u64)>,
    repairs: repair::Repairs,
    /// Recent walks of the live tree (see [`Engine::superseded_by_walk`]).
    walks: Vec<repair::WalkRecord>,
    /// fanotify reports every name changed on the watched filesystem (see
    /// [`crate::crosscheck`]), so name changes capture cannot decode need no
    /// comparison of the tree.
    pub names_cross_checked: bool,
    /// The last process memory map read (see [`Engine::mapping_at`]).
    maps: RefCell<Option<(u32, u64, Vec<MapRegion>)>>,
    /// `st_dev` of the root (on btrfs the subvolume's, not the kernel's `s_dev`).
    root_dev: u64,
    /// The directories above the root, as the capture numbers them.
    ancestors: Vec<PathBuf>,
    /// Directory paths outside the root's prefix → the indexed directory they lead
    /// to (`None`: somewhere else), and when that was looked up.
    aliases: RefCell<AliasCache>,
    /// Inodes changed without a descriptor that could not be found: if the next
    /// comparison does not index them either, they are outside the tree.
    unresolved: HashSet<u64>,
    /// Per standby (by index): ranges and metadata only that standby lacks,
    /// because it could not take them when they were read for the others (see
    /// [`Engine::redirty_for`]).
    private: HashMap<usize, Private>,
    /// Set while a standby's private ranges are handled in place of the shared ones.
    in_private: bool,
    /// Blocks read lately to answer wants, kept when several standbys are fed
    /// (see [`read::BlockCache`]).
    block_cache: Option<read::BlockCache>,
}

/// What one standby alone lacks, and its changes since the journal last took them.
#[derive(Default)]
struct Private {
    dirty: HashMap<u64, Dirty>,
    journal_dirtied: Vec<DirtyInode>,
}

/// What the agent found when it restarted with durable state from its previous run.
#[derive(Debug)]
pub enum Recovery {
    /// Only these files changed where the durable state cannot vouch for them:
    /// compare them block by block, and nothing else.
    Scoped(Vec<Entry>),
    /// Directories (or other non-file entries) changed: the whole tree is compared.
    Whole { changed: RelPath },
}

/// Data and metadata of one inode that the standby may not have.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirtyInode {
    pub ino: u64,
    /// `[start, end)` byte ranges.
    pub ranges: Vec<(u64, u64)>,
    pub attrs: bool,
}

impl Engine {
    /// `root` must be absolute and canonical; `watched_dev` is the kernel's `s_dev` of its filesystem.
    pub fn new(root: &Path, watched_dev: u64, options: Options) -> io::Result<Engine> {
        let root_meta = std::fs::metadata(root)?;
        let root_ino = root_meta.ino();
        Ok(Engine {
            root: root.to_path_buf(),
            watched_dev,
            index: Index::new(root_ino),
            files: Files::new(root)?,
            dirty: HashMap::new(),
            journal_dirtied: Vec::new(),
            journal_mapped: Vec::new(),
            outside: HashSet::new(),
            rescan: None,
            verify_recent: false,
            last_compare: None,
            options,
            mapped: HashMap::new(),
            bytes_read: 0,
            bytes_shared: 0,
            data_held: false,
            read_budget: u64::MAX,
            held_barriers: Vec::new(),
            changes: 0,
            last_change: HashMap::new(),
            repairs: repair::Repairs::default(),
            walks: Vec::new(),
            names_cross_checked: false,
            maps: RefCell::new(None),
            root_dev: root_meta.dev(),
            ancestors: Vec::new(),
            aliases: RefCell::new(HashMap::new()),
            unresolved: HashSet::new(),
            private: HashMap::new(),
            in_private: false,
            block_cache: None,
        })
    }

    /// The directories above the root as the capture numbers them
    /// (`Capture::ancestors`), for relative paths based on one of them.
    pub fn set_ancestors(&mut self, dirs: Vec<PathBuf>) {
        self.ancestors = dirs;
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Why a rescan is needed, if it is.
    pub fn rescan_reason(&self) -> Option<&str> {
        self.rescan.as_deref()
    }

    /// Asks for a comparison with the standby after events may have been lost:
    /// files changed since the previous comparison began are compared by content.
    pub fn request_rescan(&mut self, reason: impl Into<String>) {
        self.verify_recent = true;
        self.request_compare(reason);
    }

    /// Asks for a comparison by size and mtime (after connecting, when every
    /// change the standby lacks has moved one of them).
    pub fn request_compare(&mut self, reason: impl Into<String>) {
        if self.rescan.is_none() {
            let reason = reason.into();
            tracing::warn!("tree will be compared with the standby: {reason}");
            self.rescan = Some(reason);
        }
    }

    /// Takes the comparison asked for, if one is: why, and whether events may
    /// have been lost (then files changed since the standby's last comparison
    /// began are compared by content). Each standby keeps its own.
    pub fn take_compare_request(&mut self) -> Option<(String, bool)> {
        let reason = self.rescan.take()?;
        Some((reason, std::mem::take(&mut self.verify_recent)))
    }

    /// Walks the tree anew and returns the manifest. Pending dirty ranges are kept:
    /// a write inside one mtime tick would not show in a size/mtime comparison.
    pub fn rescan(&mut self) -> io::Result<Vec<Entry>> {
        // A second of slack for timestamp granularity.
        let verify_since = if self.verify_recent { Some(self.last_compare.map_or(0, |t| t - 1)) } else { None };
        self.verify_recent = false;
        self.rescan_for(verify_since, true)
    }

    /// [`Engine::rescan`] for one standby's comparison: files changed since
    /// `verify_since` are compared by content. With `covers_repairs`, the
    /// paths waiting for repair are forgotten (the comparison covers them; with
    /// several standbys the others still need theirs).
    pub fn rescan_for(&mut self, verify_since: Option<i64>, covers_repairs: bool) -> io::Result<Vec<Entry>> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        self.last_compare = Some(now);
        let walk_start = crate::session::monotonic_ns();
        let scan = scan::scan(&self.root, &mut self.files, self.options.devices, verify_since)?;
        self.walked(walk_start, None);
        self.index = scan.index;
        self.outside.clear();
        // Changed unseen and still not found by a full walk: not in the tree.
        for ino in std::mem::take(&mut self.unresolved) {
            if !self.index.contains(ino) {
                self.outside.insert(ino);
            }
        }
        self.rescan = None;
        if covers_repairs {
            self.repairs.clear();
        }
        self.dirty.retain(|ino, _| self.index.contains(*ino));
        for private in self.private.values_mut() {
            private.dirty.retain(|ino, _| self.index.contains(*ino));
        }
        Ok(scan.entries)
    }

    /// How many changes the engine has seen so far.
    pub fn change_count(&self) -> u64 {
        self.changes
    }

    /// True when `ino` changed after the engine had seen `count` changes.
    pub fn changed_since(&self, ino: u64, count: u64) -> bool {
        self.last_change.get(&ino).is_some_and(|&(last, _)| last > count)
    }

    /// When capture last reported a change to `ino` (CLOCK_MONOTONIC ns), if it
    /// is still remembered.
    pub fn last_change_ns(&self, ino: u64) -> Option<u64> {
        self.last_change.get(&ino).map(|&(_, ts)| ts)
    }

    /// Stops remembering changes older than change `count` and capture time
    /// `before_ns`: nobody asks about them.
    pub fn forget_changes_before(&mut self, count: u64, before_ns: u64) {
        self.last_change.retain(|_, (last, ts)| *last >= count || *ts >= before_ns);
    }

    /// True when the standby should hold what the master has of `ino`: nothing of
    /// it waits to be read, and no mapping may be storing into it unseen.
    pub fn is_dirty(&self, ino: u64) -> bool {
        self.dirty.contains_key(&ino)
    }

    pub fn is_settled(&self, ino: u64) -> bool {
        // Pages stored to through a mapping are re-read every second for a while
        // (see `refresh_mapped`); once those stores stopped, what they changed
        // shows up as a change like any other.
        let now = crate::session::monotonic_ns();
        !self.dirty.contains_key(&ino) && self.mapped.get(&ino).is_none_or(|m| now.saturating_sub(m.last_ns) >= MAPPED_SETTLE_NS)
    }

    /// Opens indexed file `ino` at `path` for reading.
    pub fn open_file(&self, ino: u64, path: &RelPath) -> io::Result<std::fs::File> {
        self.files.open(ino, path.as_path())
    }

    /// The watched root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether device nodes are replicated.
    pub fn replicates_devices(&self) -> bool {
        self.options.devices
    }

    /// The absolute path of `path` on the master.
    pub fn full_path(&self, path: &RelPath) -> PathBuf {
        self.root.join(path.as_path())
    }

    /// Bytes of file data known dirty and not yet read.
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty.values().fold(0u64, |sum, d| sum.saturating_add(d.ranges.bytes()))
    }

    /// Capture time of the oldest change not yet turned into an operation.
    pub fn oldest_dirty_ns(&self) -> Option<u64> {
        self.dirty.values().map(|d| d.first_ns).min()
    }

    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Marks ranges and metadata of `ino` dirty again: they were sent (or were to
    /// be) but the standby may not have them. They are read anew when flushed.
    pub fn redirty(&mut self, dirty: &DirtyInode, ts: u64) {
        if !self.index.contains(dirty.ino) {
            return;
        }
        for &(start, end) in &dirty.ranges {
            self.mark(dirty.ino, Some((start, end.saturating_sub(start))), ts);
        }
        if dirty.attrs || dirty.ranges.is_empty() {
            self.mark(dirty.ino, None, ts);
        }
    }

    /// Keeps the blocks read to answer wants for a while, so that standbys
    /// comparing at the same time (their first sync) have each block read and
    /// hashed once for all of them.
    pub fn share_reads(&mut self) {
        self.block_cache.get_or_insert_with(read::BlockCache::default);
    }

    /// Runs `f` on standby `feed`'s private ranges in place of the shared ones.
    fn with_private<R>(&mut self, feed: usize, f: impl FnOnce(&mut Engine) -> R) -> R {
        let mut private = self.private.remove(&feed).unwrap_or_default();
        std::mem::swap(&mut self.dirty, &mut private.dirty);
        std::mem::swap(&mut self.journal_dirtied, &mut private.journal_dirtied);
        self.in_private = true;
        let result = f(self);
        self.in_private = false;
        std::mem::swap(&mut self.dirty, &mut private.dirty);
        std::mem::swap(&mut self.journal_dirtied, &mut private.journal_dirtied);
        if !private.dirty.is_empty() || !private.journal_dirtied.is_empty() {
            self.private.insert(feed, private);
        }
        result
    }

    /// [`Engine::redirty`] for standby `feed` alone: it could not take what
    /// was read for the others (it is behind, or away), and reads it anew
    /// itself when it can.
    pub fn redirty_for(&mut self, feed: usize, dirty: &DirtyInode, ts: u64) {
        self.with_private(feed, |engine| engine.redirty(dirty, ts));
    }

    /// Reads about `budget` bytes of what standby `feed` alone lacks into
    /// operations for it; true when nothing of it is left.
    pub fn flush_for(&mut self, feed: usize, budget: &mut u64, out: &mut Vec<PendingOp>) -> bool {
        if !self.private.contains_key(&feed) {
            return true;
        }
        self.with_private(feed, |engine| engine.flush_dirty(budget, out) && engine.dirty.is_empty())
    }

    /// Whether standby `feed` alone lacks anything.
    pub fn has_dirty_for(&self, feed: usize) -> bool {
        self.private.get(&feed).is_some_and(|p| !p.dirty.is_empty())
    }

    /// Bytes standby `feed` alone lacks, and the capture time of the oldest.
    pub fn dirty_for(&self, feed: usize) -> (u64, Option<u64>) {
        let Some(private) = self.private.get(&feed) else { return (0, None) };
        let bytes = private.dirty.values().fold(0u64, |sum, d| sum.saturating_add(d.ranges.bytes()));
        (bytes, private.dirty.values().map(|d| d.first_ns).min())
    }

    /// What standby `feed` alone lacks, as the journal lists it.
    pub fn dirty_inodes_for(&self, feed: usize) -> Vec<DirtyInode> {
        let Some(private) = self.private.get(&feed) else { return Vec::new() };
        private
            .dirty
            .iter()
            .map(|(ino, d)| DirtyInode { ino: *ino, ranges: d.ranges.iter().collect(), attrs: d.attrs || d.xattrs })
            .collect()
    }

    /// [`Engine::take_journal_deltas`] of what standby `feed` alone lacks.
    pub fn take_journal_deltas_for(&mut self, feed: usize) -> Vec<DirtyInode> {
        self.private.get_mut(&feed).map(|p| std::mem::take(&mut p.journal_dirtied)).unwrap_or_default()
    }

    /// Forgets what standby `feed` alone lacks (a comparison of the whole tree
    /// that verifies content covers it, or the standby is gone).
    pub fn forget_private(&mut self, feed: usize) {
        self.private.remove(&feed);
    }

    /// Every inode whose data or metadata is dirty and not yet read, including
    /// pages still watched because they were dirtied through a mapping.
    pub fn dirty_inodes(&self) -> Vec<DirtyInode> {
        let mut found: HashMap<u64, DirtyInode> = HashMap::new();
        for (ino, dirty) in &self.dirty {
            let entry = found.entry(*ino).or_insert_with(|| DirtyInode { ino: *ino, ..DirtyInode::default() });
            entry.ranges.extend(dirty.ranges.iter());
            entry.attrs |= dirty.attrs || dirty.xattrs;
        }
        for (ino, mapped) in &self.mapped {
            let entry = found.entry(*ino).or_insert_with(|| DirtyInode { ino: *ino, ..DirtyInode::default() });
            entry.ranges.extend(mapped.pages.keys().map(|page| (page * PAGE, (page + 1) * PAGE)));
        }
        found.into_values().collect()
    }

    /// Ranges and metadata found changed, and pages of shared mappings seen
    /// stored to, since the last call: what the journal records between checkpoints.
    pub fn take_journal_deltas(&mut self) -> (Vec<DirtyInode>, Vec<DirtyInode>) {
        (std::mem::take(&mut self.journal_dirtied), std::mem::take(&mut self.journal_mapped))
    }

    /// Rebuilds the index by walking the tree after a restart and decides how much
    /// must be compared with the standby: files whose inode changed at or after
    /// `since` (Unix seconds), when the durable state cannot vouch for them, are
    /// compared block by block; a changed directory, symlink or FIFO means the
    /// namespace changed unrecorded, so the whole tree is compared.
    pub fn recover(&mut self, since: i64) -> io::Result<Recovery> {
        let scan = scan::scan(&self.root, &mut self.files, self.options.devices, Some(since))?;
        self.index = scan.index;
        self.outside.clear();
        self.last_compare = Some(since);
        if let Some(changed) = scan.changed_non_files.into_iter().next() {
            return Ok(Recovery::Whole { changed });
        }
        let entries = scan.entries.into_iter().filter(|e| e.verify && e.hardlink_of.is_none()).collect();
        Ok(Recovery::Scoped(entries))
    }

    fn mark(&mut self, ino: u64, range: Option<(u64, u64)>, ts: u64) {
        match range {
            Some((offset, len)) => {
                self.journal_dirtied.push(DirtyInode { ino, ranges: vec![(offset, offset.saturating_add(len))], attrs: false });
                self.dirty_entry(ino, ts).ranges.insert(offset, len)
            }
            None => self.note(ino, Change::Attrs, ts),
        }
    }

    fn note(&mut self, ino: u64, change: Change, ts: u64) {
        self.journal_dirtied.push(DirtyInode { ino, ranges: Vec::new(), attrs: true });
        let dirty = self.dirty_entry(ino, ts);
        match change {
            Change::Attrs => dirty.attrs = true,
            Change::Xattrs => dirty.xattrs = true,
        }
    }

    fn dirty_entry(&mut self, ino: u64, ts: u64) -> &mut Dirty {
        if let Some(cache) = &mut self.block_cache {
            cache.forget(ino);
        }
        self.changes += 1;
        self.last_change.insert(ino, (self.changes, ts));
        let dirty = self.dirty.entry(ino).or_insert_with(|| Dirty { first_ns: ts, ..Dirty::default() });
        dirty.first_ns = dirty.first_ns.min(ts);
        dirty
    }

    /// Applies one event, appending the operations it produces.
    pub fn handle(&mut self, event: &Event, out: &mut Vec<PendingOp>) {
        tracing::trace!(pid = event.pid, kind = ?event.kind, "event");
        let ts = event.ts_ns;
        match &event.kind {
            EventKind::Write { inode, offset, len, fd } => self.data(*inode, event.pid, *fd, Some((*offset, *len)), ts, out),
            EventKind::Writeback { inode, offset, len } => {
                self.data(*inode, event.pid, NO_FD, Some((*offset, *len)), ts, out);
                if self.index.contains(inode.ino) && inode.dev == self.watched_dev {
                    let (first, end) = (offset / PAGE, (offset + len).div_ceil(PAGE));
                    self.journal_mapped.push(DirtyInode { ino: inode.ino, ranges: vec![(first * PAGE, end * PAGE)], attrs: false });
                    let mapped = self.mapped.entry(inode.ino).or_default();
                    for page in first..end {
                        mapped.pages.insert(page, None);
                    }
                    mapped.last_ns = ts;
                }
            }
            EventKind::Sync { inode, kind, .. } => {
                self.sync_barrier(*inode, *kind, ts);
                self.barrier(*inode, ts, out);
            }
            EventKind::XattrFd { inode, fd, .. } => {
                self.data(*inode, event.pid, *fd, None, ts, out);
                if self.index.contains(inode.ino) && inode.dev == self.watched_dev {
                    self.note(inode.ino, Change::Xattrs, ts);
                }
            }
            EventKind::IoUringUser { pid } => self.check_ring_user(*pid, ts),
            EventKind::Fallocate { inode, offset, len, mode, fd } => {
                self.fallocate(*inode, event.pid, *fd, (*offset, *len, *mode), ts, out)
            }
            EventKind::Truncate { inode, size, fd } => {
                self.data(*inode, event.pid, *fd, None, ts, out);
                if inode.dev == self.watched_dev {
                    self.truncate(inode.ino, *size, ts, out);
                }
            }
            EventKind::FdMeta { inode, fd } => self.data(*inode, event.pid, *fd, None, ts, out),
            EventKind::Changed { inode, offset, len, fd } => {
                // Not decoded: read the whole file, its metadata and xattrs again.
                self.data(*inode, event.pid, *fd, Some((*offset, *len)), ts, out);
                if self.index.contains(inode.ino) && inode.dev == self.watched_dev {
                    self.note(inode.ino, Change::Attrs, ts);
                    self.note(inode.ino, Change::Xattrs, ts);
                }
            }
            EventKind::Repair { reason: crate::capture::Repair::FaultLookup, detail } => {
                match self.mapping_at(event.pid, *detail) {
                    Mapping::Page { ino, offset } => {
                        // The fault mapped the whole folio holding the page writable,
                        // so its other pages take stores without a fault of their own:
                        // take the largest folio the page cache makes (naturally
                        // aligned in the file) as stored to.
                        let inode = InodeId { dev: self.watched_dev, ino };
                        let folio = offset / MAX_FOLIO * MAX_FOLIO;
                        let store = Event { kind: EventKind::Writeback { inode, offset: folio, len: MAX_FOLIO }, ..event.clone() };
                        self.handle(&store, out);
                    }
                    Mapping::Other => {}
                    Mapping::Unknown => {
                        self.request_rescan(format!("a store through a mapping of process {} could not be attributed", event.pid))
                    }
                }
            }
            EventKind::Repair { reason: crate::capture::Repair::CompatExec, .. } => self.request_rescan(format!(
                "32-bit program (process {}) may have changed files before its syscalls were captured",
                event.pid
            )),
            EventKind::Repair { reason: crate::capture::Repair::MsyncLookup, .. } => {
                let sync = Event { kind: EventKind::Sync { inode: None, offset: 0, len: u64::MAX, kind: SyncKind::Msync }, ..event.clone() };
                self.handle(&sync, out);
            }
            EventKind::Repair { reason: crate::capture::Repair::IoUringNamespace, detail }
                if self.names_cross_checked && IO_URING_NAME_OPS.contains(detail) =>
            {
                // fanotify reports the names this changed on the watched
                // filesystem, and the cross-check repairs those.
                tracing::debug!(opcode = detail, pid = event.pid, "io_uring namespace operation left to the cross-check");
            }
            EventKind::Repair { reason, detail } => {
                self.request_rescan(format!("the capture could not decode a change ({reason:?}, {detail}) by process {}", event.pid))
            }
            kind => {
                if !self.walks.is_empty() {
                    let paths = self.event_paths(kind);
                    if self.superseded_by_walk(ts, &paths) {
                        return;
                    }
                }
                if matches!(kind, EventKind::Rename { .. } | EventKind::Rmdir { .. } | EventKind::Unlink { .. } | EventKind::Symlink { .. }) {
                    // A directory path may lead elsewhere now.
                    self.aliases.borrow_mut().clear();
                }
                self.flush(out);
                self.namespace(event.pid, kind, ts, out);
            }
        }
    }

    /// The paths of the tree a namespace event names, as far as they can be placed.
    fn event_paths(&self, kind: &EventKind) -> Vec<RelPath> {
        let named: Vec<(InodeId, &[u8])> = match kind {
            EventKind::OpenCreate { base, path, .. }
            | EventKind::Mkdir { base, path, .. }
            | EventKind::Rmdir { base, path }
            | EventKind::Unlink { base, path }
            | EventKind::Symlink { base, path, .. }
            | EventKind::PathMeta { base, path, .. }
            | EventKind::PathTruncate { base, path, .. }
            | EventKind::Mknod { base, path, .. }
            | EventKind::XattrPath { base, path, .. } => vec![(*base, path)],
            EventKind::Rename { from_base, from, to_base, to, .. } => vec![(*from_base, from), (*to_base, to)],
            EventKind::Link { existing_base, existing, new_base, new } => vec![(*existing_base, existing), (*new_base, new)],
            _ => Vec::new(),
        };
        named
            .into_iter()
            .filter_map(|(base, raw)| match self.place(base, raw) {
                Place::Inside { path, .. } | Place::Unindexed { path } => Some(path),
                Place::Outside | Place::Unknown => None,
            })
            .collect()
    }

    /// Replicates fallocate. Modes that only allocate, punch or zero are replayed
    /// as the same call; the range is read again afterwards, so data written
    /// around the call converges whatever order its events arrived in. Collapse
    /// and insert shift everything after `offset`: that tail is sent as data
    /// instead, since the standby's copy of it may not yet hold what the master
    /// shifted.
    fn fallocate(&mut self, inode: InodeId, pid: u32, fd: u32, (offset, len, mode): (u64, u64, u32), ts: u64, out: &mut Vec<PendingOp>) {
        self.data(inode, pid, fd, None, ts, out);
        if inode.dev != self.watched_dev || self.index.kind(inode.ino) != Some(NodeKind::File) {
            return;
        }
        let Some(path) = self.index.path_of(inode.ino) else { return };
        if mode & SHIFTING != 0 {
            self.mark(inode.ino, Some((offset, u64::MAX - offset)), ts);
            return;
        }
        out.push(PendingOp { op: Op::Fallocate { path, mode, offset, len }, captured_ns: ts, ino: None });
        if mode & CHANGES_CONTENT != 0 {
            self.mark(inode.ino, Some((offset, len)), ts);
        }
    }

    /// A size change of a file, replicated in order: a shrink is not just a final
    /// size, since writes after it land in the cut range. What lies past the new
    /// size is read again, so a write whose event arrived before the truncation's
    /// still reaches the standby.
    fn truncate(&mut self, ino: u64, size: u64, ts: u64, out: &mut Vec<PendingOp>) {
        if self.index.kind(ino) != Some(NodeKind::File) {
            return;
        }
        let Some(path) = self.index.path_of(ino) else { return };
        out.push(PendingOp { op: Op::Truncate { path, size }, captured_ns: ts, ino: None });
        self.mark(ino, Some((size, u64::MAX - size)), ts);
    }

    fn data(&mut self, inode: InodeId, pid: u32, fd: u32, range: Option<(u64, u64)>, ts: u64, out: &mut Vec<PendingOp>) {
        if inode.dev != self.watched_dev || self.outside.contains(&inode.ino) {
            return;
        }
        if !self.index.contains(inode.ino) && fd == NO_FD {
            // No descriptor to find it by (writeback, io_uring): outside the tree on
            // the same filesystem, or a file whose creation was not seen.
            return self.find_unknown(inode.ino, pid, ts, out);
        }
        if !self.index.contains(inode.ino) {
            self.adopt_open_file(inode.ino, pid, fd, ts, out);
            if !self.index.contains(inode.ino) {
                return;
            }
        }
        self.mark(inode.ino, range, ts);
    }

    /// A change to an inode the index does not know: find its path through the
    /// writer's fd table; inside the tree it is sent whole, outside it is ignored from now on.
    fn adopt_open_file(&mut self, ino: u64, pid: u32, fd: u32, ts: u64, out: &mut Vec<PendingOp>) {
        let link = match std::fs::read_link(format!("/proc/{pid}/fd/{fd}")) {
            Ok(link) => link,
            Err(_) => return self.request_rescan(format!("inode {ino} changed by a process that is gone")),
        };
        if link.as_os_str().as_bytes().ends_with(b" (deleted)") {
            self.outside.insert(ino);
            return;
        }
        self.adopt_at(ino, link.as_os_str().as_bytes(), ts, out);
    }

    /// A change without a descriptor to an inode the index does not know: look for
    /// it among the writer's open files and mappings. If it is not there, the tree
    /// is compared (it may be a file created unseen, e.g. into an io_uring fixed
    /// file slot); a comparison that does not find it either marks it outside.
    fn find_unknown(&mut self, ino: u64, pid: u32, ts: u64, out: &mut Vec<PendingOp>) {
        let Some(link) = self.held_by(pid, ino) else {
            if self.unresolved.insert(ino) {
                self.request_rescan(format!("inode {ino} changed without a descriptor and is not in the index"));
            }
            return;
        };
        if link.ends_with(b" (deleted)") {
            self.outside.insert(ino);
            return;
        }
        self.adopt_at(ino, &link, ts, out);
    }

    /// Inode `ino` was found open or mapped at absolute path `link`: inside the
    /// tree it is indexed and sent whole; outside it is ignored from now on.
    fn adopt_at(&mut self, ino: u64, link: &[u8], ts: u64, out: &mut Vec<PendingOp>) {
        match self.place_absolute(link) {
            Place::Inside { parent, name, path } => {
                if self.learn(parent, &name, &path) == Some(ino) {
                    tracing::info!(%path, "found unindexed file through its writer, sending it whole");
                    self.send_whole(ino, &path, ts, out);
                } else {
                    self.request_repair(path, format!("inode {ino} changed there but the name holds another now"));
                }
            }
            Place::Outside => {
                self.outside.insert(ino);
            }
            Place::Unindexed { path } => self.request_repair(path, format!("inode {ino} changed below an unindexed directory")),
            Place::Unknown => self.request_rescan(format!("inode {ino} at {} is not in the index", show(link))),
        }
    }

    /// What user address `addr` of process `pid` maps, from `/proc/<pid>/maps`
    /// (read again at most every [`MAPS_TTL_NS`] for the same process: a busy
    /// lookup in the kernel reports every write fault, anonymous ones too).
    fn mapping_at(&self, pid: u32, addr: u64) -> Mapping {
        let now = crate::session::monotonic_ns();
        let mut cache = self.maps.borrow_mut();
        let fresh = cache.as_ref().is_some_and(|(p, at, _)| *p == pid && now.saturating_sub(*at) < MAPS_TTL_NS);
        if !fresh {
            let Ok(text) = std::fs::read(format!("/proc/{pid}/maps")) else { return Mapping::Unknown };
            *cache = Some((pid, now, parse_maps(&text)));
        }
        let Some((_, _, regions)) = cache.as_ref() else { return Mapping::Unknown };
        let Some(region) = regions.iter().find(|r| (r.start..r.end).contains(&addr)) else { return Mapping::Other };
        if !region.shared_writable {
            return Mapping::Other;
        }
        match self.place_absolute(&region.path) {
            Place::Inside { parent, name, .. } if self.index.lookup(parent, &name) == Some(region.ino) => {
                Mapping::Page { ino: region.ino, offset: (region.offset + (addr - region.start)) / PAGE * PAGE }
            }
            _ => Mapping::Other,
        }
    }

    /// The path under which process `pid` holds inode `ino` of the root's
    /// filesystem open (`/proc/<pid>/fd`) or mapped (`/proc/<pid>/maps`).
    fn held_by(&self, pid: u32, ino: u64) -> Option<Vec<u8>> {
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.flatten() {
                if let Ok(meta) = std::fs::metadata(fd.path())
                    && meta.ino() == ino
                    && meta.dev() == self.root_dev
                    && let Ok(link) = std::fs::read_link(fd.path())
                {
                    return Some(std::os::unix::ffi::OsStringExt::into_vec(link.into_os_string()));
                }
            }
        }
        // `start-end perms offset dev inode path`; `dev` is the superblock's, which
        // on btrfs is not the subvolume's st_dev, so the path decides.
        let maps = std::fs::read(format!("/proc/{pid}/maps")).ok()?;
        maps.split(|&b| b == b'\n').find_map(|line| {
            let mut fields = line.splitn(6, |&b| b == b' ');
            let inode = fields.nth(4)?;
            let path = fields.next()?.trim_ascii_start();
            (inode == ino.to_string().as_bytes() && path.first() == Some(&b'/')).then(|| path.to_vec())
        })
    }

    /// Sends a file the standby does not have under `path` as a new file: whatever
    /// the standby holds there (possibly another name of a file it shares) goes
    /// first, so the file is not written into through that other name.
    fn send_whole(&mut self, ino: u64, path: &RelPath, ts: u64, out: &mut Vec<PendingOp>) {
        let size = std::fs::symlink_metadata(self.root.join(path.as_path())).map(|m| m.len()).unwrap_or(0);
        out.push(PendingOp { op: Op::Remove { path: path.clone() }, captured_ns: ts, ino: None });
        out.push(PendingOp { op: Op::CreateFile { path: path.clone(), mode: 0o600, truncate: true }, captured_ns: ts, ino: None });
        self.mark(ino, Some((0, size)), ts);
        self.mark(ino, None, ts);
    }

    /// A sync barrier: pages dirtied through mappings since they were last seen
    /// may have been stored to again without a new event; read them again.
    fn sync_barrier(&mut self, inode: Option<InodeId>, _kind: SyncKind, ts: u64) {
        let inos: Vec<u64> = match inode {
            Some(inode) if inode.dev == self.watched_dev => vec![inode.ino],
            Some(_) => return,
            None => self.mapped.keys().copied().collect(),
        };
        for ino in inos {
            self.recheck_mapped(ino, ts);
        }
    }

    /// Sends what is pending, then a barrier the receiver makes durable before it
    /// acknowledges: the standby's copy is durable at each of the master's syncs.
    fn barrier(&mut self, inode: Option<InodeId>, ts: u64, out: &mut Vec<PendingOp>) {
        let path = match inode {
            Some(inode) if inode.dev == self.watched_dev => match self.index.path_of(inode.ino) {
                Some(path) => Some(path),
                None => return,
            },
            Some(_) => return,
            None => None,
        };
        if !self.flush_within_budget(out) {
            // The data before it is not all read yet; the barrier waits for it.
            self.held_barriers.push((path, ts));
            return;
        }
        out.push(PendingOp { op: Op::Barrier { path }, captured_ns: ts, ino: None });
    }

    /// Re-reads recently mapped pages (see [`MAPPED_PATIENCE_NS`]); call about once a second.
    pub fn refresh_mapped(&mut self, now: u64) {
        self.mapped.retain(|_, m| now.saturating_sub(m.last_ns) < MAPPED_PATIENCE_NS);
        let inos: Vec<u64> = self.mapped.keys().copied().collect();
        for ino in inos {
            self.recheck_mapped(ino, now);
        }
    }

    /// Marks dirty the mapped pages of `ino` whose content changed since last read.
    fn recheck_mapped(&mut self, ino: u64, ts: u64) {
        let Some(path) = self.index.path_of(ino) else { return };
        let Ok(file) = self.files.open(ino, path.as_path()) else { return };
        let Some(mapped) = self.mapped.get_mut(&ino) else { return };
        let mut changed = Vec::new();
        for (page, seen) in mapped.pages.iter_mut() {
            let Ok(data) = read_range(&file, page * PAGE, PAGE) else { continue };
            let now = hash(&data);
            if *seen != Some(now) {
                changed.push(*page);
                *seen = Some(now);
            }
        }
        for page in changed {
            self.mark(ino, Some((page * PAGE, PAGE)), ts);
        }
    }

    /// A process uses io_uring. Its ring writes are captured; other ring operations
    /// are not, so the metadata of the watched files it holds open is re-read.
    fn check_ring_user(&mut self, pid: u32, ts: u64) {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else { continue };
            if let Place::Inside { parent, name, .. } = self.place_absolute(link.as_os_str().as_bytes())
                && let Some(ino) = self.index.lookup(parent, &name) {
                    self.mark(ino, None, ts);
                }
        }
    }

    /// lstat `path` and index what is there; returns its inode.
    fn learn(&mut self, parent: u64, name: &OsStr, path: &RelPath) -> Option<u64> {
        let meta = std::fs::symlink_metadata(self.root.join(path.as_path())).ok()?;
        if meta.dev() != self.root_dev {
            // A mount point or nested btrfs subvolume: not replicated (see `scan`).
            return None;
        }
        let kind = kind_of(&meta);
        self.index.insert(parent, name, meta.ino(), kind);
        self.outside.remove(&meta.ino());
        if kind == NodeKind::File {
            self.files.remember(meta.ino(), path.as_path());
        }
        Some(meta.ino())
    }

    fn place(&self, base: InodeId, raw: &[u8]) -> Place {
        if raw.len() >= CUT_PATH_LEN || raw.is_empty() {
            return Place::Unknown;
        }
        if raw[0] == b'/' {
            return self.place_absolute(raw);
        }
        if base.dev == ANCESTOR_DEV {
            // Relative to a directory above the root (`cd /srv && mv data/a data/b`).
            let Some(dir) = self.ancestors.get(base.ino as usize) else { return Place::Unknown };
            let mut full = dir.as_os_str().as_bytes().to_vec();
            if full.last() != Some(&b'/') {
                full.push(b'/');
            }
            full.extend_from_slice(raw);
            return self.place_absolute(&full);
        }
        if base.dev != self.watched_dev {
            return Place::Outside;
        }
        if !self.index.contains(base.ino) {
            return if self.outside.contains(&base.ino) || self.is_excluded_dir(base.ino) { Place::Outside } else { Place::Unknown };
        }
        self.place_from(base.ino, raw)
    }

    /// True for the inode of a top-level directory that is never replicated
    /// (`.sluice`, where a receiver on this tree keeps its state, or `lost+found`).
    fn is_excluded_dir(&self, ino: u64) -> bool {
        use std::os::unix::fs::MetadataExt;
        EXCLUDED_TOP_LEVEL
            .iter()
            .any(|name| std::fs::symlink_metadata(self.root.join(name)).is_ok_and(|m| m.is_dir() && m.ino() == ino))
    }

    fn place_absolute(&self, raw: &[u8]) -> Place {
        let root = self.root.as_os_str().as_bytes();
        match raw.strip_prefix(root) {
            Some(rest) if rest.first() == Some(&b'/') => self.place_from(self.index.root(), &rest[1..]),
            Some([]) => Place::Outside,
            _ => self.place_alias(raw),
        }
    }

    /// Where symlink `name` in directory `dir` leads now: `Some(Some(dir))` for an
    /// indexed directory, `Some(None)` outside the tree, `None` when unknown.
    fn follow_symlink(&self, dir: u64, name: &OsStr) -> Option<Option<u64>> {
        let path = self.index.path_of(dir)?.join(name).ok()?;
        let real = std::fs::canonicalize(self.root.join(path.as_path())).ok()?;
        let Ok(rest) = real.strip_prefix(&self.root) else { return Some(None) };
        let target = self.index.resolve(&RelPath::from_path(rest).ok()?)?;
        (self.index.kind(target) == Some(NodeKind::Dir)).then_some(Some(target))
    }

    /// An absolute path outside the root's prefix may still lead into the tree,
    /// through a symlink (`/data -> /srv/data`) or another mount of the same
    /// filesystem (`mount --bind /srv/data /mnt/b`): look up the nearest of its
    /// directories that exists now (the event is handled after the fact, so its
    /// own parent may be gone already) and, if that is an indexed directory of
    /// the tree, place the rest from it.
    fn place_alias(&self, raw: &[u8]) -> Place {
        let trimmed = raw.strip_suffix(b"/").unwrap_or(raw);
        let Some(split) = trimmed.iter().rposition(|&b| b == b'/') else { return Place::Outside };
        let mut dir = &trimmed[..split];
        let mut rest = &trimmed[split + 1..];
        loop {
            match self.alias_dir(if dir.is_empty() { b"/" } else { dir }) {
                Some(Some(ino)) => return self.place_from(ino, rest),
                Some(None) => return Place::Outside,
                None if dir.is_empty() => return Place::Outside,
                None => {
                    let up = dir.iter().rposition(|&b| b == b'/').unwrap_or(0);
                    rest = &trimmed[up + 1..];
                    dir = &dir[..up];
                }
            }
        }
    }

    /// What directory path `dir` is now: an indexed directory of the tree
    /// (`Some(Some(ino))`), something else (`Some(None)`), or nothing (`None`).
    fn alias_dir(&self, dir: &[u8]) -> Option<Option<u64>> {
        let now = crate::session::monotonic_ns();
        if let Some(&(found, at)) = self.aliases.borrow().get(dir)
            && now.saturating_sub(at) < ALIAS_TTL_NS
        {
            return Some(found);
        }
        let meta = match std::fs::metadata(OsStr::from_bytes(dir)) {
            Ok(meta) => meta,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => return None,
            Err(_) => return Some(None),
        };
        let found = (meta.dev() == self.root_dev && self.index.kind(meta.ino()) == Some(NodeKind::Dir)).then_some(meta.ino());
        let mut aliases = self.aliases.borrow_mut();
        if aliases.len() >= ALIAS_CACHE_LEN {
            aliases.clear();
        }
        aliases.insert(dir.to_vec(), (found, now));
        Some(found)
    }

    /// Resolves `relative` lexically from directory `dir` of the index.
    fn place_from(&self, mut dir: u64, relative: &[u8]) -> Place {
        let components: Vec<&[u8]> = relative.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".").collect();
        let Some((last, walk)) = components.split_last() else { return Place::Unknown };
        for component in walk {
            if *component == b".." {
                if dir == self.index.root() {
                    return Place::Outside;
                }
                match self.index.path_of(dir).and_then(|p| p.parent()).and_then(|p| self.index.resolve(&p)) {
                    Some(parent) => dir = parent,
                    None => return Place::Unknown,
                }
                continue;
            }
            let name = OsStr::from_bytes(component);
            if dir == self.index.root() && EXCLUDED_TOP_LEVEL.iter().any(|n| n.as_bytes() == *component) {
                return Place::Outside;
            }
            match self.index.lookup(dir, name) {
                Some(next) if self.index.kind(next) == Some(NodeKind::Dir) => dir = next,
                Some(next) if self.index.kind(next) == Some(NodeKind::Symlink) => {
                    // Through a symlink inside the tree: follow it as the kernel did.
                    match self.follow_symlink(dir, name) {
                        Some(Some(target)) => dir = target,
                        Some(None) => return Place::Outside,
                        None => return Place::Unknown,
                    }
                }
                None if self.other_filesystem(dir, name) => return Place::Outside,
                _ => {
                    return match self.index.path_of(dir).and_then(|p| p.join(name).ok()) {
                        Some(path) => Place::Unindexed { path },
                        None => Place::Unknown,
                    };
                }
            }
        }
        if *last == b".." {
            return Place::Unknown;
        }
        let name = OsStr::from_bytes(last);
        if dir == self.index.root() && EXCLUDED_TOP_LEVEL.iter().any(|n| n.as_bytes() == *last) {
            return Place::Outside;
        }
        let Some(parent_path) = self.index.path_of(dir) else { return Place::Unknown };
        match parent_path.join(name) {
            Ok(path) => Place::Inside { parent: dir, name: name.to_os_string(), path },
            Err(_) => Place::Unknown,
        }
    }
}

impl Engine {
    /// Whether `name` in indexed directory `dir` is a directory of another
    /// filesystem or btrfs subvolume (a mount point, a nested subvolume), which
    /// the walk does not index and nothing below is replicated.
    fn other_filesystem(&self, dir: u64, name: &OsStr) -> bool {
        let Some(Ok(path)) = self.index.path_of(dir).map(|p| p.join(name)) else { return false };
        std::fs::symlink_metadata(self.root.join(path.as_path())).is_ok_and(|m| m.is_dir() && m.dev() != self.root_dev)
    }
}

fn show(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

mod namespace;
pub mod read;
mod repair;

pub use repair::RepairManifest;

#[cfg(test)]
pub(crate) mod tests;
