//! The agent's durable state in its `state_dir`: which operations and which dirty
//! ranges the standby may not hold yet, so a restart (after `kill -9` or a reboot)
//! resends exactly those instead of comparing the whole tree.
//!
//! The state is a snapshot, not a log: while the link is up it holds only what
//! the receiver has not yet made durable (a few hundred milliseconds of changes),
//! so rewriting it whole is cheaper than appending every change and compacting
//! later, and repeated writes to the same range collapse into one entry. It is
//! written only when it changed, at most every `interval` (more rarely as it
//! grows, so a long outage cannot turn it into a write-heavy workload of its own),
//! alternating between two files with a checksum so that a crash in the middle of
//! a write leaves the previous snapshot to load. Whatever changed after the last
//! snapshot is found by inode change time (`verify_since`).

use crate::backlog::Record;
use crate::engine::DirtyInode;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// J2 added `tree_nonempty`; a J1 snapshot is ignored (a comparison of the tree follows).
const MAGIC: &[u8; 8] = b"SLUICEJ2";
const HEADER_LEN: usize = 8 + 8 + 8 + 32;
/// Bytes of snapshot written per second, at most, once snapshots grow large.
const BYTES_PER_SECOND: u64 = 4 << 20;

/// Why the durable state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot encode the agent state: {0}")]
    Encode(postcard::Error),
}

/// What the agent keeps on disk.
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
}

/// The two snapshot slots of `state_dir`.
pub struct Journal {
    dir: PathBuf,
    generation: u64,
    last_len: u64,
    /// Bytes written to the slots so far.
    bytes_written: u64,
}

impl Journal {
    /// Opens the state in `dir` and loads the newest intact snapshot, if any.
    pub fn open(dir: &Path) -> Result<(Journal, Option<Snapshot>), JournalError> {
        std::fs::create_dir_all(dir).map_err(|source| JournalError::Io { path: dir.into(), source })?;
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
        let generation = best.as_ref().map_or(0, |(g, _)| *g);
        let journal = Journal { dir: dir.into(), generation, last_len: 0, bytes_written: 0 };
        Ok((journal, best.map(|(_, s)| s)))
    }

    /// Writes `snapshot` to the older slot and makes it durable.
    pub fn write(&mut self, snapshot: &Snapshot) -> Result<(), JournalError> {
        let body = postcard::to_stdvec(snapshot).map_err(JournalError::Encode)?;
        let generation = self.generation + 1;
        let mut bytes = Vec::with_capacity(HEADER_LEN + body.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&generation.to_le_bytes());
        bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
        bytes.extend_from_slice(blake3::hash(&body).as_bytes());
        bytes.extend_from_slice(&body);
        let path = slot_path(&self.dir, generation % 2);
        let io = |source| JournalError::Io { path: path.clone(), source };
        let file = OpenOptions::new().create(true).write(true).truncate(false).open(&path).map_err(io)?;
        file.write_all_at(&bytes, 0).map_err(io)?;
        file.set_len(bytes.len() as u64).map_err(io)?;
        file.sync_data().map_err(io)?;
        self.generation = generation;
        self.last_len = bytes.len() as u64;
        self.bytes_written += bytes.len() as u64;
        Ok(())
    }
}

/// Writes snapshots on a thread of its own: an fdatasync can wait for a journal
/// commit of the whole filesystem, which must not stall capture and streaming.
/// Only the newest snapshot handed over is written; one that is superseded
/// before its turn is dropped, which only leaves an older `verify_since` on disk.
pub struct JournalWriter {
    shared: Arc<(Mutex<Handover>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
    interval: Duration,
    last_submit: Option<Instant>,
    last_len: Arc<AtomicU64>,
    bytes_written: Arc<AtomicU64>,
}

#[derive(Default)]
struct Handover {
    pending: Option<Snapshot>,
    stop: bool,
}

impl JournalWriter {
    /// Starts the writing thread; snapshots are taken at most every `interval`
    /// (more rarely as they grow, see [`JournalWriter::due`]).
    pub fn start(mut journal: Journal, interval: Duration) -> JournalWriter {
        let shared = Arc::new((Mutex::new(Handover::default()), Condvar::new()));
        let (last_len, bytes_written) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let thread = {
            let (shared, last_len, bytes_written) = (shared.clone(), last_len.clone(), bytes_written.clone());
            std::thread::Builder::new()
                .name("journal".into())
                .spawn(move || loop {
                    let (lock, ready) = &*shared;
                    let mut handover = lock.lock().expect("journal handover");
                    while handover.pending.is_none() && !handover.stop {
                        handover = ready.wait(handover).expect("journal handover");
                    }
                    let Some(snapshot) = handover.pending.take() else { return };
                    drop(handover);
                    match journal.write(&snapshot) {
                        Ok(()) => {
                            last_len.store(journal.last_len, Ordering::Relaxed);
                            bytes_written.store(journal.bytes_written, Ordering::Relaxed);
                        }
                        Err(e) => tracing::error!("cannot write the agent's durable state: {e}"),
                    }
                })
                .expect("spawning the journal thread")
        };
        JournalWriter { shared, thread: Some(thread), interval, last_submit: None, last_len, bytes_written }
    }

    /// True when enough time has passed since the last snapshot for another.
    pub fn due(&self) -> bool {
        let len = self.last_len.load(Ordering::Relaxed);
        let spacing = self.interval + Duration::from_secs_f64(len as f64 / BYTES_PER_SECOND as f64);
        self.last_submit.is_none_or(|at| at.elapsed() >= spacing)
    }

    /// Hands `snapshot` to the writing thread.
    pub fn submit(&mut self, snapshot: Snapshot) {
        let (lock, ready) = &*self.shared;
        lock.lock().expect("journal handover").pending = Some(snapshot);
        ready.notify_one();
        self.last_submit = Some(Instant::now());
    }

    /// Bytes written to the slots so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    /// Writes what is pending and stops the thread.
    pub fn finish(&mut self) {
        let (lock, ready) = &*self.shared;
        lock.lock().expect("journal handover").stop = true;
        ready.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn slot_path(dir: &Path, slot: u64) -> PathBuf {
    dir.join(format!("state.{slot}"))
}

/// The snapshot in one slot, or `None` when it is missing, torn or corrupt.
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

/// Writes `bytes` to `path` (for tests that tear a slot).
#[cfg(test)]
fn overwrite(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::{Op, RelPath};

    fn snapshot(next_seq: u64) -> Snapshot {
        Snapshot {
            written_unix_ns: 1,
            next_seq,
            durable: 3,
            compare_owed: false,
            verify_since: 100,
            ops: vec![Record::Op { seq: 4, op: Op::Mkdir { path: RelPath::from_bytes("d").unwrap(), mode: 0o755 } }],
            dirty: vec![DirtyInode { ino: 12, ranges: vec![(0, 4096)], attrs: true }],
            tree_nonempty: true,
        }
    }

    #[test]
    fn newest_intact_slot_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, loaded) = Journal::open(dir.path()).unwrap();
        assert!(loaded.is_none());
        journal.write(&snapshot(5)).unwrap();
        journal.write(&snapshot(6)).unwrap();
        assert_eq!(Journal::open(dir.path()).unwrap().1, Some(snapshot(6)));
        // A write torn by a crash leaves the previous snapshot.
        let newest = slot_path(dir.path(), 0);
        let mut torn = std::fs::read(&newest).unwrap();
        torn.truncate(torn.len() - 3);
        overwrite(&newest, &torn);
        let (mut journal, loaded) = Journal::open(dir.path()).unwrap();
        assert_eq!(loaded, Some(snapshot(5)));
        // The next write goes over the torn slot, not the intact one.
        journal.write(&snapshot(7)).unwrap();
        assert_eq!(Journal::open(dir.path()).unwrap().1, Some(snapshot(7)));
    }

    #[test]
    fn writes_are_spaced_and_finish_waits_for_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path()).unwrap();
        let mut writer = JournalWriter::start(journal, Duration::from_secs(60));
        assert!(writer.due());
        writer.submit(snapshot(1));
        assert!(!writer.due());
        writer.finish();
        assert_eq!(Journal::open(dir.path()).unwrap().1, Some(snapshot(1)));
        assert!(writer.bytes_written() > 0);
    }
}
