//! The agent's durable state in its `state_dir`: which operations and which dirty
//! ranges the standby may not hold yet, so a restart (after `kill -9` or a reboot)
//! resends exactly those instead of comparing the whole tree.
//!
//! The state is a log: a checkpoint (a whole [`Snapshot`]) followed by what changed
//! since, appended at most every `interval` and made durable with one fdatasync:
//! operations queued, the receiver's durable mark moving, ranges found dirty. So
//! the cost of recording follows what changed, not how much is in flight (a
//! backlog of 200,000 operations costs nothing more per change than an empty one).
//! A new checkpoint starts a new file once the log outgrows twice the last
//! checkpoint, which keeps replay and disk use in proportion to what is live; the
//! older file is deleted only once the new checkpoint is durable. Each entry
//! carries a checksum: a crash in the middle of an append leaves a torn tail,
//! which loading stops at. Whatever changed after the last entry is found by
//! inode change time (`verify_since`).

use crate::backlog::{DirtyMap, Record, dirty_inodes, split_records};
use crate::engine::DirtyInode;
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// J3 added `failback_base`, J2 `tree_nonempty`; an older snapshot is ignored
/// (a comparison of the tree follows).
const MAGIC: &[u8; 8] = b"SLUICEJ3";
const HEADER_LEN: usize = 8 + 8 + 8 + 32;
/// Each log entry: body length (u32 LE), the first 8 bytes of its blake3 hash, the body.
const FRAME_HEADER: usize = 4 + 8;
/// A log is checkpointed once it holds this much and twice its checkpoint.
const CHECKPOINT_MIN_BYTES: u64 = 8 << 20;
/// Refuses absurd entry lengths from a corrupt file.
const MAX_ENTRY_BYTES: usize = 1 << 30;

/// Why the durable state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot encode the agent state: {0}")]
    Encode(postcard::Error),
}

/// What the agent keeps on disk, as of one checkpoint or the replay of a log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When it was written (Unix ns).
    pub written_unix_ns: u64,
    pub next_seq: u64,
    /// The highest sequence number the receiver reported durable.
    pub durable: u64,
    /// Changes may be missing from the snapshot (events were lost, the backlog
    /// overflowed, or a comparison of the whole tree had not finished).
    pub compare_owed: bool,
    /// Inodes changed at or after this time (Unix seconds) may be missing from
    /// the snapshot and are compared with the standby on restart.
    pub verify_since: i64,
    /// Operations other than writes and attribute changes, in sequence order.
    pub ops: Vec<Record>,
    /// Inodes with ranges (or metadata) the standby may lack.
    pub dirty: Vec<DirtyInode>,
    /// The watched tree held something besides its root: an empty root at the
    /// next start means the filesystem is not mounted (or was wiped), and
    /// replicating that would empty the standby.
    pub tree_nonempty: bool,
    /// What is queued is everything this tree changed since it was promoted: a
    /// failback to the old primary sends just that (see [`crate::failback`]).
    pub failback_base: bool,
}

/// The scalar part of the state, written with every append.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub written_unix_ns: u64,
    pub next_seq: u64,
    pub compare_owed: bool,
    pub verify_since: i64,
    pub tree_nonempty: bool,
    pub failback_base: bool,
}

/// One entry of the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogEntry {
    /// The whole state; first in every log file.
    Checkpoint(Snapshot),
    /// Operations queued, in sequence order (writes and attribute changes as
    /// [`Record::Dirty`], without their bytes).
    Pushed(Vec<Record>),
    /// Everything queued before was dropped: a comparison of the tree covers it.
    Cleared,
    /// The receiver holds everything up to this sequence number durably.
    Durable(u64),
    /// Ranges and metadata the agent found changed and has not queued yet; a
    /// later [`Record::Dirty`] of the same range supersedes them.
    Dirtied(Vec<DirtyInode>),
    /// Pages of shared mappings, which stay suspect until the next checkpoint.
    Mapped(Vec<DirtyInode>),
    Header(Header),
}

/// The state a log replays to.
#[derive(Default)]
struct Replay {
    header: Header,
    durable: u64,
    records: BTreeMap<u64, Record>,
    dirtied: DirtyMap,
    mapped: DirtyMap,
}

impl Replay {
    fn apply(&mut self, entry: LogEntry) {
        match entry {
            LogEntry::Checkpoint(snapshot) => {
                *self = Replay::default();
                self.header = Header {
                    written_unix_ns: snapshot.written_unix_ns,
                    next_seq: snapshot.next_seq,
                    compare_owed: snapshot.compare_owed,
                    verify_since: snapshot.verify_since,
                    tree_nonempty: snapshot.tree_nonempty,
                    failback_base: snapshot.failback_base,
                };
                self.durable = snapshot.durable;
                self.records = snapshot.ops.into_iter().map(|r| (r.seq(), r)).collect();
                merge(&mut self.dirtied, snapshot.dirty);
            }
            LogEntry::Pushed(records) => {
                for record in records {
                    if record.seq() <= self.durable {
                        continue;
                    }
                    if let Record::Dirty { ino, range, .. } = &record
                        && let Some((ranges, attrs)) = self.dirtied.get_mut(ino)
                    {
                        match range {
                            Some((start, end)) => ranges.remove(*start, *end),
                            None => *attrs = false,
                        }
                        if ranges.is_empty() && !*attrs {
                            self.dirtied.remove(ino);
                        }
                    }
                    self.records.insert(record.seq(), record);
                }
            }
            LogEntry::Cleared => self.records.clear(),
            LogEntry::Durable(seq) => {
                self.durable = self.durable.max(seq);
                self.records = self.records.split_off(&(self.durable + 1));
            }
            LogEntry::Dirtied(inodes) => merge(&mut self.dirtied, inodes),
            LogEntry::Mapped(inodes) => merge(&mut self.mapped, inodes),
            LogEntry::Header(header) => self.header = header,
        }
    }

    fn into_snapshot(self) -> Snapshot {
        let mut dirty = self.dirtied;
        for (ino, (ranges, attrs)) in self.mapped {
            let (into, into_attrs) = dirty.entry(ino).or_default();
            for (start, end) in ranges.iter() {
                into.insert(start, end - start);
            }
            *into_attrs |= attrs;
        }
        let ops = split_records(self.records.into_values(), &mut dirty);
        Snapshot {
            written_unix_ns: self.header.written_unix_ns,
            next_seq: self.header.next_seq,
            durable: self.durable,
            compare_owed: self.header.compare_owed,
            verify_since: self.header.verify_since,
            ops,
            dirty: dirty_inodes(dirty),
            tree_nonempty: self.header.tree_nonempty,
            failback_base: self.header.failback_base,
        }
    }
}

fn merge(into: &mut DirtyMap, inodes: Vec<DirtyInode>) {
    for inode in inodes {
        let (ranges, attrs) = into.entry(inode.ino).or_default();
        for (start, end) in inode.ranges {
            ranges.insert(start, end.saturating_sub(start));
        }
        *attrs |= inode.attrs;
    }
}

/// The log files of `state_dir`.
pub struct Journal {
    dir: PathBuf,
    generation: u64,
    file: Option<File>,
    /// Bytes in the current log file, and in its checkpoint.
    log_len: u64,
    checkpoint_len: u64,
    /// Bytes written so far.
    bytes_written: u64,
}

impl Journal {
    /// Opens the state in `dir` and replays the newest intact log, if any (or the
    /// snapshot an older agent left).
    pub fn open(dir: &Path) -> Result<(Journal, Option<Snapshot>), JournalError> {
        std::fs::create_dir_all(dir).map_err(|source| JournalError::Io { path: dir.into(), source })?;
        let mut generations = log_generations(dir);
        generations.sort_unstable_by(|a, b| b.cmp(a));
        let mut loaded = None;
        let mut newest = generations.first().copied().unwrap_or(0);
        for generation in generations {
            let path = log_path(dir, generation);
            match read_log(&path) {
                Ok(Some(snapshot)) => {
                    loaded = Some(snapshot);
                    break;
                }
                Ok(None) => tracing::warn!(path = %path.display(), "ignoring agent state without an intact checkpoint"),
                Err(e) => tracing::warn!(path = %path.display(), "ignoring unreadable agent state: {e}"),
            }
        }
        if loaded.is_none() {
            let mut best: Option<(u64, Snapshot)> = None;
            for slot in 0..2 {
                let path = slot_path(dir, slot);
                match read_slot(&path) {
                    Ok(Some((generation, snapshot))) if best.as_ref().is_none_or(|(g, _)| generation > *g) => {
                        best = Some((generation, snapshot));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(path = %path.display(), "ignoring unreadable agent state: {e}"),
                }
            }
            if let Some((generation, snapshot)) = best {
                newest = newest.max(generation);
                loaded = Some(snapshot);
            }
        }
        let journal = Journal { dir: dir.into(), generation: newest, file: None, log_len: 0, checkpoint_len: 0, bytes_written: 0 };
        Ok((journal, loaded))
    }

    /// Starts a new log file with `snapshot` and makes it durable; older files go.
    pub fn checkpoint(&mut self, snapshot: Snapshot, then: &[LogEntry]) -> Result<(), JournalError> {
        let generation = self.generation + 1;
        let path = log_path(&self.dir, generation);
        let io = |source| JournalError::Io { path: path.clone(), source };
        let mut bytes = Vec::new();
        frame(&LogEntry::Checkpoint(snapshot), &mut bytes)?;
        let checkpoint_len = bytes.len() as u64;
        for entry in then {
            frame(entry, &mut bytes)?;
        }
        let mut file = OpenOptions::new().create(true).write(true).truncate(true).open(&path).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        file.sync_data().map_err(io)?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|source| JournalError::Io { path: self.dir.clone(), source })?;
        for old in log_generations(&self.dir).into_iter().filter(|&g| g < generation) {
            let _ = std::fs::remove_file(log_path(&self.dir, old));
        }
        for slot in 0..2 {
            let _ = std::fs::remove_file(slot_path(&self.dir, slot));
        }
        self.generation = generation;
        self.file = Some(file);
        self.log_len = bytes.len() as u64;
        self.checkpoint_len = checkpoint_len;
        self.bytes_written += bytes.len() as u64;
        Ok(())
    }

    /// Appends `entries` to the current log and makes them durable. Without a
    /// checkpoint in this run yet there is no log to append to (the previous
    /// run's may end torn): the entries are dropped, which only leaves an older
    /// `verify_since` on disk.
    pub fn append(&mut self, entries: &[LogEntry]) -> Result<(), JournalError> {
        let path = log_path(&self.dir, self.generation);
        let Some(file) = &mut self.file else { return Ok(()) };
        let mut bytes = Vec::new();
        for entry in entries {
            frame(entry, &mut bytes)?;
        }
        let io = |source| JournalError::Io { path: path.clone(), source };
        file.write_all(&bytes).map_err(io)?;
        file.sync_data().map_err(io)?;
        self.log_len += bytes.len() as u64;
        self.bytes_written += bytes.len() as u64;
        Ok(())
    }

    /// Whether the log has grown enough past its checkpoint for a new one.
    fn checkpoint_due(&self) -> bool {
        self.log_len >= CHECKPOINT_MIN_BYTES.max(2 * self.checkpoint_len)
    }
}

fn frame(entry: &LogEntry, out: &mut Vec<u8>) -> Result<(), JournalError> {
    let body = postcard::to_stdvec(entry).map_err(JournalError::Encode)?;
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&blake3::hash(&body).as_bytes()[..8]);
    out.extend_from_slice(&body);
    Ok(())
}

/// Replays one log file: `None` when its checkpoint is missing or torn.
fn read_log(path: &Path) -> std::io::Result<Option<Snapshot>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut replay = Replay::default();
    let mut at = 0;
    let mut first = true;
    // Every read is checked: a torn or corrupt tail ends the replay.
    while let Some(header) = bytes.get(at..at + FRAME_HEADER) {
        let (len, sum) = header.split_at(4);
        let Ok(len) = <[u8; 4]>::try_from(len) else { break };
        let len = u32::from_le_bytes(len) as usize;
        let body_at = at + FRAME_HEADER;
        let Some(body) = bytes.get(body_at..body_at.saturating_add(len)).filter(|_| len <= MAX_ENTRY_BYTES) else { break };
        if blake3::hash(body).as_bytes()[..8] != *sum {
            break;
        }
        let Ok(entry) = postcard::from_bytes::<LogEntry>(body) else { break };
        if first && !matches!(entry, LogEntry::Checkpoint(_)) {
            return Ok(None);
        }
        first = false;
        replay.apply(entry);
        at = body_at + len;
    }
    Ok((!first).then(|| replay.into_snapshot()))
}

fn log_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("journal.{generation}"))
}

/// Generations of the log files in `dir`.
fn log_generations(dir: &Path) -> Vec<u64> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.strip_prefix("journal.")?.parse().ok())
        .collect()
}

/// What the writing thread is handed, in order.
enum Handed {
    Checkpoint(Snapshot),
    Append(Vec<LogEntry>),
}

/// Writes the log on a thread of its own: an fdatasync can wait for a journal
/// commit of the whole filesystem, which must not stall capture and streaming.
pub struct JournalWriter {
    shared: Arc<(Mutex<Handover>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
    interval: Duration,
    last_submit: Option<Instant>,
    bytes_written: Arc<AtomicU64>,
    /// Set by the thread when the log has outgrown its checkpoint.
    checkpoint_due: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Default)]
struct Handover {
    pending: VecDeque<Handed>,
    stop: bool,
}

impl JournalWriter {
    /// Starts the writing thread; appends are made at most every `interval`, and
    /// each write or fdatasync that fails is counted in `failures`.
    pub fn start(mut journal: Journal, interval: Duration, failures: Counter) -> JournalWriter {
        let shared = Arc::new((Mutex::new(Handover::default()), Condvar::new()));
        let bytes_written = Arc::new(AtomicU64::new(0));
        let checkpoint_due = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (shared, bytes_written, checkpoint_due) = (shared.clone(), bytes_written.clone(), checkpoint_due.clone());
            std::thread::Builder::new()
                .name("journal".into())
                .spawn(move || loop {
                    let (lock, ready) = &*shared;
                    let mut handover = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    while handover.pending.is_empty() && !handover.stop {
                        handover = ready.wait(handover).unwrap_or_else(|poisoned| poisoned.into_inner());
                    }
                    if handover.pending.is_empty() {
                        return;
                    }
                    let mut batch: Vec<Handed> = handover.pending.drain(..).collect();
                    drop(handover);
                    // A checkpoint supersedes everything handed over before it.
                    if let Some(last) = batch.iter().rposition(|w| matches!(w, Handed::Checkpoint(_))) {
                        batch.drain(..last);
                    }
                    let mut batch = batch.into_iter();
                    let result = match batch.next() {
                        Some(Handed::Checkpoint(snapshot)) => {
                            let then: Vec<LogEntry> = batch.flat_map(|w| match w { Handed::Append(e) => e, Handed::Checkpoint(_) => Vec::new() }).collect();
                            journal.checkpoint(snapshot, &then)
                        }
                        Some(Handed::Append(mut entries)) => {
                            entries.extend(batch.flat_map(|w| match w { Handed::Append(e) => e, Handed::Checkpoint(_) => Vec::new() }));
                            journal.append(&entries)
                        }
                        None => Ok(()),
                    };
                    match result {
                        Ok(()) => {
                            bytes_written.store(journal.bytes_written, Ordering::Relaxed);
                            checkpoint_due.store(journal.checkpoint_due(), Ordering::Relaxed);
                        }
                        Err(e) => {
                            tracing::error!("cannot write the agent's durable state: {e}");
                            failures.inc();
                            // Start over from a whole checkpoint in a new file.
                            checkpoint_due.store(true, Ordering::Relaxed);
                            journal.file = None;
                        }
                    }
                })
                .expect("spawning the journal thread")
        };
        JournalWriter { shared, thread: Some(thread), interval, last_submit: None, bytes_written, checkpoint_due }
    }

    /// True when enough time has passed since the last write for another.
    pub fn due(&self) -> bool {
        self.last_submit.is_none_or(|at| at.elapsed() >= self.interval)
    }

    /// True when the next write should be a checkpoint.
    pub fn checkpoint_due(&self) -> bool {
        self.checkpoint_due.load(Ordering::Relaxed)
    }

    /// Hands a checkpoint to the writing thread.
    pub fn checkpoint(&mut self, snapshot: Snapshot) {
        self.checkpoint_due.store(false, Ordering::Relaxed);
        self.hand_over(Handed::Checkpoint(snapshot));
    }

    /// Hands entries to append to the writing thread.
    pub fn append(&mut self, entries: Vec<LogEntry>) {
        self.hand_over(Handed::Append(entries));
    }

    fn hand_over(&mut self, write: Handed) {
        let (lock, ready) = &*self.shared;
        lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pending.push_back(write);
        ready.notify_one();
        self.last_submit = Some(Instant::now());
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    /// Writes what is pending and stops the thread.
    pub fn finish(&mut self) {
        let (lock, ready) = &*self.shared;
        lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).stop = true;
        ready.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn slot_path(dir: &Path, slot: u64) -> PathBuf {
    dir.join(format!("state.{slot}"))
}

/// The snapshot an older agent left in one slot, or `None` when it is missing,
/// torn or corrupt.
fn read_slot(path: &Path) -> std::io::Result<Option<(u64, Snapshot)>> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut file) => file.read_to_end(&mut bytes)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Ok(None);
    }
    let generation = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes")) as usize;
    let body = &bytes[HEADER_LEN..];
    if body.len() != len || blake3::hash(body).as_bytes() != &bytes[24..56] {
        return Ok(None);
    }
    Ok(postcard::from_bytes(body).ok().map(|snapshot| (generation, snapshot)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::{Op, RelPath};

    fn mkdir(seq: u64, name: &str) -> Record {
        Record::Op { seq, op: Op::Mkdir { path: RelPath::from_bytes(name).unwrap(), mode: 0o755 } }
    }

    fn snapshot(next_seq: u64) -> Snapshot {
        Snapshot {
            written_unix_ns: 1,
            next_seq,
            durable: 3,
            compare_owed: false,
            verify_since: 100,
            ops: vec![mkdir(4, "d")],
            dirty: vec![DirtyInode { ino: 12, ranges: vec![(0, 4096)], attrs: true }],
            tree_nonempty: true,
            failback_base: false,
        }
    }

    fn header(next_seq: u64) -> LogEntry {
        LogEntry::Header(Header { written_unix_ns: 2, next_seq, compare_owed: false, verify_since: 200, tree_nonempty: true, failback_base: false })
    }

    #[test]
    fn a_log_replays_to_what_the_standby_may_lack() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, loaded) = Journal::open(dir.path()).unwrap();
        assert!(loaded.is_none());
        journal.checkpoint(snapshot(5), &[]).unwrap();
        journal
            .append(&[
                LogEntry::Dirtied(vec![DirtyInode { ino: 20, ranges: vec![(0, 8192)], attrs: false }]),
                LogEntry::Pushed(vec![mkdir(5, "e"), Record::Dirty { seq: 6, ino: 20, range: Some((0, 4096)) }]),
                header(7),
            ])
            .unwrap();
        journal.append(&[LogEntry::Durable(5), header(7)]).unwrap();
        let loaded = Journal::open(dir.path()).unwrap().1.unwrap();
        assert_eq!(loaded.durable, 5);
        assert_eq!(loaded.next_seq, 7);
        assert_eq!(loaded.verify_since, 200);
        assert!(loaded.ops.is_empty(), "ops 4 and 5 are durable: {:?}", loaded.ops);
        // The queued write of [0, 4096) stands for that part of what was dirtied.
        assert_eq!(
            loaded.dirty,
            vec![
                DirtyInode { ino: 12, ranges: vec![(0, 4096)], attrs: true },
                DirtyInode { ino: 20, ranges: vec![(0, 8192)], attrs: false },
            ]
        );
        journal.append(&[LogEntry::Pushed(vec![mkdir(7, "f")]), LogEntry::Cleared, LogEntry::Pushed(vec![mkdir(8, "g")])]).unwrap();
        assert_eq!(Journal::open(dir.path()).unwrap().1.unwrap().ops, vec![mkdir(8, "g")]);
    }

    #[test]
    fn a_torn_tail_or_checkpoint_leaves_what_was_durable_before() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open(dir.path()).unwrap();
        journal.checkpoint(snapshot(5), &[]).unwrap();
        journal.append(&[LogEntry::Pushed(vec![mkdir(5, "e")])]).unwrap();
        let path = log_path(dir.path(), 1);
        let intact = std::fs::read(&path).unwrap();
        journal.append(&[LogEntry::Pushed(vec![mkdir(6, "f")])]).unwrap();
        let mut torn = std::fs::read(&path).unwrap();
        torn.truncate(torn.len() - 2);
        std::fs::write(&path, &torn).unwrap();
        let (mut journal, loaded) = Journal::open(dir.path()).unwrap();
        assert_eq!(loaded.unwrap().ops, vec![mkdir(4, "d"), mkdir(5, "e")]);
        // A new run checkpoints into a new file rather than appending after the tear.
        journal.append(&[LogEntry::Pushed(vec![mkdir(9, "x")])]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), torn);
        journal.checkpoint(snapshot(10), &[]).unwrap();
        assert!(!path.exists(), "the older log goes once the new checkpoint is durable");
        // A checkpoint torn by a crash: the previous log (still there) is loaded.
        std::fs::write(&path, &intact).unwrap();
        let newest = log_path(dir.path(), 2);
        let mut torn = std::fs::read(&newest).unwrap();
        torn.truncate(torn.len() / 2);
        std::fs::write(&newest, &torn).unwrap();
        assert_eq!(Journal::open(dir.path()).unwrap().1.unwrap().ops, vec![mkdir(4, "d"), mkdir(5, "e")]);
    }

    #[test]
    fn an_older_agents_snapshot_is_loaded_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let body = postcard::to_stdvec(&snapshot(5)).unwrap();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&3u64.to_le_bytes());
        bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
        bytes.extend_from_slice(blake3::hash(&body).as_bytes());
        bytes.extend_from_slice(&body);
        std::fs::write(slot_path(dir.path(), 1), &bytes).unwrap();
        let (mut journal, loaded) = Journal::open(dir.path()).unwrap();
        assert_eq!(loaded, Some(snapshot(5)));
        journal.checkpoint(snapshot(6), &[]).unwrap();
        assert!(!slot_path(dir.path(), 1).exists());
        assert_eq!(Journal::open(dir.path()).unwrap().1, Some(snapshot(6)));
    }

    #[test]
    fn the_writer_checkpoints_then_appends_and_finish_waits_for_both() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path()).unwrap();
        let mut writer = JournalWriter::start(journal, Duration::from_secs(60), Counter::default());
        assert!(writer.due());
        writer.checkpoint(snapshot(5));
        assert!(!writer.due());
        writer.append(vec![LogEntry::Pushed(vec![mkdir(5, "e")]), header(6)]);
        writer.finish();
        let loaded = Journal::open(dir.path()).unwrap().1.unwrap();
        assert_eq!(loaded.ops, vec![mkdir(4, "d"), mkdir(5, "e")]);
        assert_eq!(loaded.next_seq, 6);
        assert!(writer.bytes_written() > 0);
    }

    #[test]
    fn the_writer_counts_writes_that_fail() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path()).unwrap();
        let failures = Counter::default();
        let mut writer = JournalWriter::start(journal, Duration::from_secs(60), failures.clone());
        writer.checkpoint(snapshot(5));
        writer.finish();
        assert_eq!(failures.get(), 0);

        let (journal, _) = Journal::open(dir.path()).unwrap();
        let mut writer = JournalWriter::start(journal, Duration::from_secs(60), failures.clone());
        // The state directory vanishing (an unmounted disk) fails every write.
        std::fs::remove_dir_all(dir.path()).unwrap();
        writer.checkpoint(snapshot(6));
        writer.finish();
        assert_eq!(failures.get(), 1);
    }
}
