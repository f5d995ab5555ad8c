//! The verifier: compares the standby's copy with the master's, directory by
//! directory (names, kinds, sizes, metadata, extended attributes) and file by file
//! (blake3 of every block on both sides), without trusting what capture reported,
//! like DRBD's online verify or a ZFS scrub.
//!
//! It runs continuously at a modest rate in the background and repairs what it
//! finds; `sluice-agent verify` asks for a pass at full speed that only reports
//! unless told to repair. A difference is counted only when it shows twice, a
//! second apart, with no change to the entry seen in between: a copy that merely
//! lags behind a recent change (whose event was still on its way at the first
//! look) is not a mismatch. Files being written, or mapped for writing, are left
//! to a later pass. A mismatch means capture missed something.
//!
//! Requests travel in the replication stream, after every operation sent before
//! them, so the receiver answers with the state those operations left.

use crate::engine::Engine;
use crate::files::read_range;
use crate::scan::{EXCLUDED_TOP_LEVEL, entry_of};
use sluice_proto::blocks::{BLOCK_SIZE, hash};
use sluice_proto::{AgentMessage, EntryKind, Hash, Listed, RelPath, xattrs_digest};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Entries asked for per listing.
const LIST_BATCH: u32 = 256;
/// Blocks asked for per request (4 MiB of content).
const BLOCKS_PER_REQUEST: u32 = 64;
/// Requests waiting for an answer at once.
const MAX_OUTSTANDING: usize = 4;
/// How long after a first difference it is looked at again.
const CONFIRM_AFTER: Duration = Duration::from_secs(1);
/// What one listed entry costs of the rate budget, in bytes.
const LIST_ENTRY_COST: u64 = 512;
/// What a file linked on the standby but not on the master is reported as.
const HARD_LINKED_ON_STANDBY: &str = "hard-linked to another name on the standby only";
const NOT_HARD_LINKED_ON_STANDBY: &str = "hard-linked to another name on the master, not on the standby";
/// The rate of a pass asked for on demand.
const DEMAND_RATE: u64 = 1 << 30;
/// A path found differing again within this long of its last report is being
/// repaired already: it is not counted twice.
const REPORTED_FOR: Duration = Duration::from_secs(30);

/// One difference found (and seen twice).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mismatch {
    pub path: String,
    pub what: String,
}

/// What a request on the control socket reports to whoever asked: a pass
/// asked for on demand, the status, or a switchover.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Report {
    Mismatch(Mismatch),
    Done { mismatches: u64, bytes: u64, entries: u64, seconds: f64 },
    Error(String),
    Status(Box<crate::control::AgentStatus>),
    /// A switchover waiting, and for what.
    Progress(String),
    SwitchedOver(crate::control::SwitchoverProof),
}

impl Report {
    /// True for the last report of a request.
    pub fn is_last(&self) -> bool {
        !matches!(self, Report::Mismatch(_) | Report::Progress(_))
    }
}

/// Totals since the agent started.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// File content compared, in bytes.
    pub bytes: u64,
    /// Directory entries compared.
    pub entries: u64,
    pub mismatches: u64,
    pub passes: u64,
    /// When the last whole pass ended (Unix seconds).
    pub last_pass_unix: Option<f64>,
}

#[derive(Clone, Debug)]
enum Work {
    /// Entries of `dir` after `after`; when `suspects` is set, only those names
    /// are judged (a confirmation).
    List { dir: RelPath, after: Vec<u8>, suspects: Option<HashSet<Vec<u8>>> },
    Blocks { path: RelPath, offset: u64, blocks: u32 },
}

struct Request {
    work: Work,
    /// The engine's change count when the request was sent; for a confirmation,
    /// when the first look was sent.
    changes: u64,
    confirming: bool,
    pass: u64,
}

/// One walk over the whole tree.
#[derive(Default)]
struct Pass {
    number: u64,
    dirs: VecDeque<RelPath>,
    listing: VecDeque<(RelPath, Vec<u8>)>,
    files: VecDeque<RelPath>,
    file: Option<(RelPath, u64)>,
    started: Option<Instant>,
    mismatches: u64,
    bytes: u64,
    entries: u64,
}

impl Pass {
    fn new(number: u64) -> Pass {
        Pass { number, dirs: VecDeque::from([RelPath::root()]), started: Some(Instant::now()), ..Pass::default() }
    }
}

struct Demand {
    repair: bool,
    report: mpsc::UnboundedSender<Report>,
}

/// The verifier's state; it outlives connections.
pub struct Verifier {
    rate: u64,
    tokens: f64,
    refilled: Instant,
    next_id: u64,
    pass: Pass,
    outstanding: HashMap<u64, Request>,
    /// Differences to look at again, when, and the change count at the first look:
    /// a difference is confirmed only if its entry did not change since then. The
    /// master's file is read ahead of the events about it, so a file written all
    /// the time looks different on every look, but never unchanged.
    confirm: VecDeque<(Instant, Work, u64)>,
    demand: Option<Demand>,
    /// Paths reported lately, and when.
    reported: HashMap<RelPath, Instant>,
    pub stats: Stats,
}

impl Verifier {
    /// A verifier comparing `bytes_per_second` of content (0: only on demand).
    pub fn new(bytes_per_second: u64) -> Verifier {
        Verifier {
            rate: bytes_per_second,
            tokens: 0.0,
            refilled: Instant::now(),
            next_id: 1,
            pass: Pass::new(1),
            outstanding: HashMap::new(),
            confirm: VecDeque::new(),
            demand: None,
            reported: HashMap::new(),
            stats: Stats::default(),
        }
    }

    /// Compares `bytes_per_second` of content from now on (0: only on demand).
    pub fn set_rate(&mut self, bytes_per_second: u64) {
        self.rate = bytes_per_second;
    }

    fn current_rate(&self) -> u64 {
        if self.demand.is_some() { DEMAND_RATE } else { self.rate }
    }

    /// Starts a pass at full speed from the root, reporting to `report`; mismatches
    /// are repaired only with `repair`.
    pub fn start_demand(&mut self, repair: bool, report: mpsc::UnboundedSender<Report>) {
        if let Some(previous) = self.demand.take() {
            let _ = previous.report.send(Report::Error("superseded by a newer verification".into()));
        }
        self.pass = Pass::new(self.pass.number + 1);
        self.confirm.clear();
        self.demand = Some(Demand { repair, report });
    }

    /// Forgets requests sent on a connection that ended.
    pub fn connection_lost(&mut self) {
        self.outstanding.clear();
    }

    /// The oldest change count a waiting request compares against.
    pub fn oldest_change_asked(&self) -> Option<u64> {
        self.outstanding.values().map(|r| r.changes).min()
    }

    /// The next request to send, if the rate and the requests waiting allow one.
    pub fn next_request(&mut self, engine: &Engine, now: Instant) -> Option<AgentMessage> {
        let rate = self.current_rate();
        if rate == 0 || self.outstanding.len() >= MAX_OUTSTANDING {
            return None;
        }
        let burst = (rate as f64).max((BLOCKS_PER_REQUEST as u64 * BLOCK_SIZE) as f64);
        self.tokens = (self.tokens + now.duration_since(self.refilled).as_secs_f64() * rate as f64).min(burst);
        self.refilled = now;
        if self.tokens <= 0.0 {
            return None;
        }
        let (work, changes, confirming) = match self.confirm.front() {
            Some((due, _, _)) if *due <= now => {
                let (_, work, changes) = self.confirm.pop_front()?;
                (work, changes, true)
            }
            _ => match self.next_work(engine) {
                Some(work) => (work, engine.change_count(), false),
                None => {
                    self.end_pass_if_done();
                    return None;
                }
            },
        };
        let id = self.next_id;
        self.next_id += 1;
        let message = match &work {
            Work::List { dir, after, .. } => {
                self.tokens -= (LIST_BATCH as u64 * LIST_ENTRY_COST) as f64;
                AgentMessage::List { id, path: dir.clone(), after: after.clone(), max: LIST_BATCH }
            }
            Work::Blocks { path, offset, blocks } => {
                self.tokens -= (*blocks as u64 * BLOCK_SIZE) as f64;
                AgentMessage::Verify { id, path: path.clone(), offset: *offset, blocks: *blocks }
            }
        };
        tracing::debug!(id, work = ?work, confirming, "verifier request");
        self.outstanding.insert(id, Request { work, changes, confirming, pass: self.pass.number });
        Some(message)
    }

    fn next_work(&mut self, engine: &Engine) -> Option<Work> {
        let pass = &mut self.pass;
        loop {
            if let Some((dir, after)) = pass.listing.pop_front() {
                return Some(Work::List { dir, after, suspects: None });
            }
            if let Some((path, offset)) = pass.file.take() {
                let Some(ino) = engine.index().resolve(&path) else { continue };
                let Ok(meta) = std::fs::symlink_metadata(engine.full_path(&path)) else { continue };
                if !meta.is_file() || meta.ino() != ino || (offset > 0 && offset >= meta.len()) {
                    continue;
                }
                if !engine.is_settled(ino) {
                    // Being written: replication has it in hand; a later pass looks again.
                    continue;
                }
                let left = meta.len() - offset;
                let blocks = left.div_ceil(BLOCK_SIZE).clamp(1, BLOCKS_PER_REQUEST as u64) as u32;
                let next = offset + blocks as u64 * BLOCK_SIZE;
                if next < meta.len() {
                    pass.file = Some((path.clone(), next));
                }
                return Some(Work::Blocks { path, offset, blocks });
            }
            if let Some(path) = pass.files.pop_front() {
                pass.file = Some((path, 0));
                continue;
            }
            if let Some(dir) = pass.dirs.pop_front() {
                pass.listing.push_back((dir, Vec::new()));
                continue;
            }
            return None;
        }
    }

    fn end_pass_if_done(&mut self) {
        let current = self.pass.number;
        if self.outstanding.values().any(|r| r.pass == current) || !self.confirm.is_empty() {
            return;
        }
        let pass = std::mem::replace(&mut self.pass, Pass::new(current + 1));
        let seconds = pass.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        self.stats.passes += 1;
        self.stats.last_pass_unix = Some(unix_now());
        tracing::info!(pass = pass.number, mismatches = pass.mismatches, bytes = pass.bytes, entries = pass.entries, seconds, "verification pass complete");
        if let Some(demand) = self.demand.take() {
            let _ = demand.report.send(Report::Done { mismatches: pass.mismatches, bytes: pass.bytes, entries: pass.entries, seconds });
        }
    }

    fn repairing(&self) -> bool {
        self.demand.as_ref().is_none_or(|d| d.repair)
    }

    /// Records a difference seen twice: counted, logged, reported, repaired.
    fn confirmed(&mut self, engine: &mut Engine, path: RelPath, what: String, from_pass: u64) {
        let now = Instant::now();
        self.reported.retain(|_, at| now.duration_since(*at) < REPORTED_FOR);
        if self.reported.insert(path.clone(), now).is_some() && self.demand.is_none() {
            // Still being repaired from the last report.
            engine.request_repair(path, format!("verifier: {what}"));
            return;
        }
        self.stats.mismatches += 1;
        if from_pass == self.pass.number {
            self.pass.mismatches += 1;
        }
        tracing::error!(%path, %what, "verifier: the standby's copy differs from the master's");
        if let Some(demand) = &self.demand {
            let _ = demand.report.send(Report::Mismatch(Mismatch { path: path.to_string(), what: what.clone() }));
        }
        if self.repairing() {
            if what == HARD_LINKED_ON_STANDBY {
                // Comparing it in place would write through the other name too.
                engine.request_replacement(path, format!("verifier: {what}"));
            } else {
                engine.request_repair(path, format!("verifier: {what}"));
            }
        }
    }

    /// Compares the receiver's block hashes with the master's.
    pub fn on_hashes(&mut self, engine: &mut Engine, id: u64, size: Option<u64>, theirs: &[Hash]) {
        let Some(request) = self.outstanding.remove(&id) else { return };
        let Work::Blocks { path, offset, blocks } = request.work.clone() else { return };
        let Some(ino) = engine.index().resolve(&path) else { return };
        if engine.changed_since(ino, request.changes) || !engine.is_settled(ino) {
            return;
        }
        let Ok(file) = engine.open_file(ino, &path) else { return };
        let Ok(meta) = file.metadata() else { return };
        let mut differs = Vec::new();
        if size != Some(meta.len()) {
            differs.push(format!("size {} on the standby, {} on the master", size.map_or("none".into(), |s| s.to_string()), meta.len()));
        } else {
            for block in 0..blocks as u64 {
                let at = offset + block * BLOCK_SIZE;
                if at >= meta.len() {
                    break;
                }
                let Ok(data) = read_range(&file, at, BLOCK_SIZE) else { return };
                self.stats.bytes += data.len() as u64;
                if request.pass == self.pass.number {
                    self.pass.bytes += data.len() as u64;
                }
                if theirs.get(block as usize) != Some(&hash(&data)) {
                    differs.push(format!("bytes {at}..{}", at + data.len() as u64));
                }
            }
        }
        if differs.is_empty() {
            return;
        }
        if request.confirming {
            self.confirmed(engine, path, differs.join(", "), request.pass);
        } else {
            self.confirm.push_back((Instant::now() + CONFIRM_AFTER, request.work, request.changes));
        }
    }

    /// Compares the receiver's listing of a directory with the master's, and
    /// queues what the directory holds for the rest of the pass.
    pub fn on_listing(&mut self, engine: &mut Engine, id: u64, exists: bool, theirs: Vec<Listed>, more: bool) {
        let Some(request) = self.outstanding.remove(&id) else { return };
        let Work::List { dir, after, suspects } = request.work.clone() else { return };
        let full = engine.full_path(&dir);
        let Ok(dir_meta) = std::fs::symlink_metadata(&full) else { return };
        if !dir_meta.is_dir() {
            return;
        }
        let counts = request.pass == self.pass.number && !request.confirming;
        if !exists {
            self.suspect(engine, &request, &dir, Vec::new(), vec![(Vec::new(), "directory missing on the standby".into())]);
            return;
        }
        // The window of names this answer covers.
        let last = if more { theirs.last().map(|e| e.name.clone()) } else { None };
        let ours = match master_listing(engine, &dir, &after, last.as_deref(), &request) {
            Ok(ours) => ours,
            Err(_) => return,
        };
        let theirs: BTreeMap<Vec<u8>, Listed> = theirs.into_iter().map(|e| (e.name.clone(), e)).collect();
        self.stats.entries += theirs.len() as u64;
        if counts {
            self.pass.entries += theirs.len() as u64;
        }
        let mut differences = Vec::new();
        let names: std::collections::BTreeSet<&Vec<u8>> = ours.keys().chain(theirs.keys()).collect();
        for name in names {
            if suspects.as_ref().is_some_and(|s| !s.contains(name)) {
                continue;
            }
            let what = match (ours.get(name), theirs.get(name)) {
                (Some(ours), standby) => {
                    if ours.unsettled {
                        continue;
                    }
                    match standby {
                        None => Some("missing on the standby".to_string()),
                        // A file with fewer names in the tree on the master shares its
                        // inode with another name on the standby: writes to one change both.
                        Some(standby) if standby.links > ours.names_in_tree && matches!(ours.entry.kind, EntryKind::File { .. }) => {
                            Some(HARD_LINKED_ON_STANDBY.to_string())
                        }
                        Some(standby) if standby.links < ours.names_in_tree && ours.entry.kind != EntryKind::Dir => {
                            Some(NOT_HARD_LINKED_ON_STANDBY.to_string())
                        }
                        Some(standby) => compare_entry(&ours.entry, standby),
                    }
                }
                (None, Some(_)) => Some("on the standby only".to_string()),
                _ => None,
            };
            if let Some(what) = what {
                differences.push((name.clone(), what));
            }
        }
        if !request.confirming {
            if let Some(last) = last {
                self.pass.listing.push_front((dir.clone(), last));
            }
            if request.pass == self.pass.number {
                for (name, ours) in &ours {
                    let Ok(child) = dir.join(OsStr::from_bytes(name)) else { continue };
                    match ours.entry.kind {
                        EntryKind::Dir => self.pass.dirs.push_back(child),
                        EntryKind::File { .. } => self.pass.files.push_back(child),
                        _ => {}
                    }
                }
            }
        }
        if !differences.is_empty() {
            self.suspect(engine, &request, &dir, after, differences);
        }
    }

    /// A first sighting is looked at again later; a second one is a mismatch.
    fn suspect(&mut self, engine: &mut Engine, request: &Request, dir: &RelPath, after: Vec<u8>, differences: Vec<(Vec<u8>, String)>) {
        if request.confirming {
            for (name, what) in differences {
                let path = if name.is_empty() { Ok(dir.clone()) } else { dir.join(OsStr::from_bytes(&name)) };
                if let Ok(path) = path {
                    self.confirmed(engine, path, what, request.pass);
                }
            }
            return;
        }
        let suspects = differences.into_iter().map(|(name, _)| name).collect();
        self.confirm.push_back((Instant::now() + CONFIRM_AFTER, Work::List { dir: dir.clone(), after, suspects: Some(suspects) }, request.changes));
    }
}

/// An entry of the master's listing and whether it may be judged now.
struct Ours {
    entry: sluice_proto::Entry,
    /// Its number of names in the tree on the master (names outside it are
    /// not replicated).
    names_in_tree: u32,
    /// Changed too recently, or still being replicated: not judged.
    unsettled: bool,
}

/// The master's entries of `dir` named after `after` (and up to `last`).
fn master_listing(
    engine: &Engine,
    dir: &RelPath,
    after: &[u8],
    last: Option<&[u8]>,
    request: &Request,
) -> std::io::Result<BTreeMap<Vec<u8>, Ours>> {
    let full = engine.full_path(dir);
    let dev = std::fs::symlink_metadata(&full)?.dev();
    let mut found = BTreeMap::new();
    for item in std::fs::read_dir(&full)? {
        let item = item?;
        let name = item.file_name().as_bytes().to_vec();
        if name.as_slice() <= after || last.is_some_and(|last| name.as_slice() > last) {
            continue;
        }
        if dir.is_root() && EXCLUDED_TOP_LEVEL.iter().any(|n| n.as_bytes() == name.as_slice()) {
            continue;
        }
        let Ok(path) = dir.join(OsStr::from_bytes(&name)) else { continue };
        let Ok(meta) = std::fs::symlink_metadata(item.path()) else { continue };
        // Another filesystem mounted inside the tree is not replicated.
        if meta.dev() != dev {
            continue;
        }
        if let Some(entry) = entry_of(engine.root(), &path, &meta, engine.replicates_devices(), false) {
            let unsettled = engine.changed_since(meta.ino(), request.changes) || !engine.is_settled(meta.ino());
            if unsettled {
                tracing::debug!(%path, ino = meta.ino(), changed = engine.changed_since(meta.ino(), request.changes), dirty = engine.is_dirty(meta.ino()), "verifier: not judged yet");
            }
            let names_in_tree = if meta.nlink() > 1 && !meta.is_dir() {
                let root = engine.root();
                let live = engine.index().paths_of(meta.ino()).into_iter().filter(|other| {
                    std::fs::symlink_metadata(root.join(other.as_path())).is_ok_and(|m| m.ino() == meta.ino())
                });
                live.count().max(1) as u32
            } else {
                1
            };
            found.insert(name, Ours { entry, names_in_tree, unsettled });
        }
    }
    Ok(found)
}

/// How a master entry and the standby's differ, if they do.
fn compare_entry(ours: &sluice_proto::Entry, theirs: &Listed) -> Option<String> {
    if ours.kind != theirs.kind {
        return Some(format!("{:?} on the master, {:?} on the standby", short(&ours.kind), short(&theirs.kind)));
    }
    let (a, b) = (&ours.meta, &theirs.meta);
    let symlink = matches!(ours.kind, EntryKind::Symlink { .. });
    if !symlink && a.mode != b.mode {
        return Some(format!("mode {:04o} on the master, {:04o} on the standby", a.mode, b.mode));
    }
    if (a.uid, a.gid) != (b.uid, b.gid) {
        return Some(format!("owner {}:{} on the master, {}:{} on the standby", a.uid, a.gid, b.uid, b.gid));
    }
    // Directory times move with every change inside and are not mirrored.
    if ours.kind != EntryKind::Dir && a.mtime != b.mtime {
        return Some(format!("mtime {}.{:09} on the master, {}.{:09} on the standby", a.mtime.secs, a.mtime.nanos, b.mtime.secs, b.mtime.nanos));
    }
    if matches!(ours.kind, EntryKind::File { .. } | EntryKind::Dir) && xattrs_digest(&ours.xattrs) != theirs.xattrs {
        return Some("extended attributes differ".into());
    }
    None
}

fn short(kind: &EntryKind) -> String {
    match kind {
        EntryKind::File { size } => format!("file of {size} bytes"),
        EntryKind::Dir => "directory".into(),
        EntryKind::Symlink { target } => format!("symlink to {}", String::from_utf8_lossy(target)),
        EntryKind::Fifo => "fifo".into(),
        EntryKind::Device { block, rdev } => format!("{} device {rdev:#x}", if *block { "block" } else { "character" }),
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
