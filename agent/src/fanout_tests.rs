//! Randomized tests of feeding several standbys at once: random writes,
//! truncations and holes on real files (with the events the kernel would
//! send), standbys that take what they are sent at random times or not at
//! all for a while, small memory bounds so that the slow ones fall behind and
//! are kept as ranges. Each standby's copy, built from exactly what it was
//! sent, must end equal to the master's files, and no standby may hold more
//! content in memory than its bound.

use crate::backlog::{Limits, Next};
use crate::capture::{Event, EventKind, InodeId};
use crate::engine::tests::Rng;
use crate::engine::{Engine, Options};
use crate::journal::{Journal, JournalWriter};
use crate::metrics::Metrics;
use crate::session::{FeedSetup, Replicator, monotonic_ns};
use sluice_proto::Op;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

const DEV: u64 = 0x70_0000;
const FILES: usize = 4;
const FILE_SPAN: u64 = 256 << 10;
/// The largest write one read of the engine makes.
const MAX_WRITE: u64 = 1 << 20;

/// A standby's copy of the files, built from the operations it was sent.
#[derive(Default)]
struct Copy {
    files: BTreeMap<String, Vec<u8>>,
}

impl Copy {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Write { path, offset, data, .. } => {
                let file = self.files.entry(path.to_string()).or_default();
                let end = *offset as usize + data.len();
                if file.len() < end {
                    file.resize(end, 0);
                }
                file[*offset as usize..end].copy_from_slice(data);
            }
            Op::SetAttrs { path, attrs } => {
                if let Some(size) = attrs.size {
                    self.files.entry(path.to_string()).or_default().resize(size as usize, 0);
                }
            }
            Op::Truncate { path, size } => self.files.entry(path.to_string()).or_default().resize(*size as usize, 0),
            Op::Fallocate { path, offset, len, .. } => {
                let file = self.files.entry(path.to_string()).or_default();
                let end = ((offset + len) as usize).min(file.len());
                if (*offset as usize) < end {
                    file[*offset as usize..end].fill(0);
                }
            }
            Op::Barrier { .. } => {}
            other => panic!("unexpected operation for a tree of fixed files: {other:?}"),
        }
    }
}

fn replicator(root: &Path, state: &Path, standbys: usize, limits: Limits) -> Replicator {
    let mut engine = Engine::new(root, DEV, Options { devices: false }).unwrap();
    engine.rescan().unwrap();
    let metrics = Metrics::default();
    let setups = (0..standbys)
        .map(|i| {
            let dir = state.join(format!("standby-{i}"));
            fs::create_dir_all(&dir).unwrap();
            let (journal, loaded) = Journal::open(&dir).unwrap();
            FeedSetup {
                name: format!("s{i}"),
                address: "127.0.0.1:7400".parse().unwrap(),
                journal: JournalWriter::start(journal, std::time::Duration::from_secs(3600), metrics.journal_write_failures.clone()),
                loaded,
                verifier: crate::verify::Verifier::new(0),
                metrics: metrics.standby.of(&format!("s{i}")),
            }
        })
        .collect();
    let mut rep = Replicator::new(engine, setups, None, limits, metrics).unwrap();
    // Every standby starts out holding the tree (as after its first comparison).
    for feed in &mut rep.feeds {
        feed.compare = None;
    }
    rep
}

/// Sends standby `i` everything in its backlog and applies it to `copy`.
fn deliver(rep: &mut Replicator, i: usize, copy: &mut Copy) {
    rep.flush_private(i);
    loop {
        let now = monotonic_ns();
        match rep.feeds[i].backlog.take(1 << 20, now, now) {
            Some(Next::Ops(ops)) => {
                let last = ops.last().map_or(0, |op| op.seq);
                for op in &ops {
                    copy.apply(&op.op);
                }
                rep.feeds[i].backlog.applied(last);
                rep.feeds[i].backlog.confirmed(last);
            }
            Some(Next::Manifest { .. }) => panic!("no comparison is owed"),
            None => break,
        }
        rep.flush_private(i);
    }
}

/// One run: `steps` random steps with `standbys` standbys, then everything
/// delivered; returns how many steps ended with a standby behind (kept as ranges).
fn exercise(seed: u64, standbys: usize, steps: usize) -> usize {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let dir = tempfile::tempdir().unwrap();
    let root = fs::canonicalize(dir.path()).unwrap().join("tree");
    let state = dir.path().join("state");
    fs::create_dir_all(&root).unwrap();
    let mut copies: Vec<Copy> = (0..standbys).map(|_| Copy::default()).collect();
    for f in 0..FILES {
        let content: Vec<u8> = (0..FILE_SPAN / 2).map(|_| rng.next() as u8).collect();
        fs::write(root.join(format!("f{f}")), &content).unwrap();
        for copy in &mut copies {
            copy.files.insert(format!("f{f}"), content.clone());
        }
    }
    let limits = Limits { bytes: 64 << 10, ops: 1_000_000 };
    let mut rep = replicator(&root, &state, standbys, limits);
    // Each standby takes what it is sent at its own pace: some often, some
    // seldom (a thin link), some not for long stretches (a cut one).
    let pace: Vec<u64> = (0..standbys).map(|_| 1 + rng.below(12)).collect();
    let mut away = vec![0usize; standbys];
    let mut behind = 0;
    let pid = std::process::id();
    for _ in 0..steps {
        let f = rng.below(FILES as u64);
        let path = root.join(format!("f{f}"));
        let ino = InodeId { dev: DEV, ino: fs::metadata(&path).unwrap().ino() };
        let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
        let kind = match rng.below(10) {
            0 => {
                let size = rng.below(FILE_SPAN);
                file.set_len(size).unwrap();
                EventKind::Truncate { inode: ino, size, fd: 3 }
            }
            1 => {
                let offset = rng.below(FILE_SPAN);
                let len = 1 + rng.below(64 << 10);
                nix::fcntl::fallocate(&file, nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE, offset as i64, len as i64).unwrap();
                EventKind::Fallocate { inode: ino, offset, len, mode: 3, fd: 3 }
            }
            _ => {
                let offset = rng.below(FILE_SPAN);
                let len = 1 + rng.below(32 << 10);
                let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                file.write_all_at(&data, offset).unwrap();
                EventKind::Write { inode: ino, offset, len, fd: 3 }
            }
        };
        let event = Event { pid, tid: 0, ts_ns: monotonic_ns(), kind };
        rep.handle_batch(crate::session::CaptureBatch { events: vec![event], dropped_total: 0 });
        if rng.below(3) == 0 {
            rep.flush();
        }
        for i in 0..standbys {
            if away[i] > 0 {
                away[i] -= 1;
            } else if rng.below(200) == 0 {
                away[i] = rng.below(steps as u64 / 4) as usize;
            } else if rng.below(pace[i]) == 0 {
                deliver(&mut rep, i, &mut copies[i]);
            }
            behind += usize::from(rep.feeds[i].ahead);
            let held = rep.feeds[i].backlog.unsent_payload();
            assert!(held <= limits.bytes + MAX_WRITE, "seed {seed}: standby {i} holds {held} bytes of content, bound {}", limits.bytes);
        }
    }
    // Everyone comes back and takes everything.
    for _ in 0..1000 {
        rep.flush();
        for (i, copy) in copies.iter_mut().enumerate() {
            deliver(&mut rep, i, copy);
        }
        let idle = rep.feeds.iter().enumerate().all(|(i, f)| f.backlog.is_idle() && !rep.engine.has_dirty_for(i)) && !rep.engine.has_dirty();
        if idle {
            break;
        }
    }
    assert!(rep.feeds.iter().all(|f| f.compare.is_none()), "seed {seed}: nothing should need a comparison");
    for (i, copy) in copies.iter().enumerate() {
        for f in 0..FILES {
            let name = format!("f{f}");
            let master = fs::read(root.join(&name)).unwrap();
            let theirs = copy.files.get(&name).cloned().unwrap_or_default();
            assert!(theirs == master, "seed {seed}: standby {i}'s {name} differs ({} bytes against {})", theirs.len(), master.len());
        }
    }
    behind
}

#[test]
fn every_standby_ends_with_the_masters_files_whatever_its_pace() {
    let seeds: Vec<u64> = match std::env::var("SLUICE_FANOUT_SEEDS") {
        Ok(n) => (1..=n.parse().unwrap_or(20)).collect(),
        Err(_) => (1..=30).collect(),
    };
    let mut behind = 0;
    for seed in seeds {
        behind += exercise(seed, 1 + (seed % 3) as usize, 1000);
    }
    assert!(behind > 0, "no standby ever fell behind: the bound is not exercised");
}
