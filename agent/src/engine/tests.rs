//! Engine tests on a real directory with synthetic events, as the kernel would send them.

use super::*;
use crate::capture::{Event, EventKind, InodeId};
use std::fs;
use std::os::unix::fs::MetadataExt;

const DEV: u64 = 0x70_0000;

struct Fixture {
    dir: tempfile::TempDir,
    engine: Engine,
}

impl Fixture {
    fn new(setup: impl FnOnce(&Path)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        setup(dir.path());
        let root = fs::canonicalize(dir.path()).unwrap();
        let mut engine = Engine::new(&root, DEV, Options { devices: true }).unwrap();
        engine.rescan().unwrap();
        Fixture { dir, engine }
    }

    fn root(&self) -> PathBuf {
        fs::canonicalize(self.dir.path()).unwrap()
    }

    fn inode(&self, rel: &str) -> InodeId {
        InodeId { dev: DEV, ino: fs::symlink_metadata(self.root().join(rel)).unwrap().ino() }
    }

    fn root_inode(&self) -> InodeId {
        InodeId { dev: DEV, ino: fs::metadata(self.root()).unwrap().ino() }
    }

    fn feed(&mut self, kind: EventKind) -> Vec<Op> {
        let mut out = Vec::new();
        let event = Event { pid: std::process::id(), tid: 0, ts_ns: crate::session::monotonic_ns(), kind };
        self.engine.handle(&event, &mut out);
        out.into_iter().map(|p| p.op).collect()
    }

    fn flush(&mut self) -> Vec<Op> {
        let mut out = Vec::new();
        self.engine.flush(&mut out);
        out.into_iter().map(|p| p.op).collect()
    }
}

fn rel(s: &str) -> RelPath {
    RelPath::from_bytes(s).unwrap()
}

#[test]
fn directory_rename_is_one_op_without_data() {
    let mut f = Fixture::new(|root| {
        fs::create_dir_all(root.join("d/sub")).unwrap();
        for i in 0..50 {
            fs::write(root.join(format!("d/sub/{i}")), b"content").unwrap();
        }
    });
    fs::rename(f.root().join("d"), f.root().join("e")).unwrap();
    let base = f.root_inode();
    let ops = f.feed(EventKind::Rename { from_base: base, from: b"d".to_vec(), to_base: base, to: b"e".to_vec(), flags: 0 });
    assert_eq!(ops, vec![Op::Rename { from: rel("d"), to: rel("e"), exchange: false, noreplace: false }]);
    assert_eq!(f.engine.index().path_of(f.inode("e/sub/7").ino).unwrap(), rel("e/sub/7"));
    assert!(f.flush().is_empty());
}

#[test]
fn data_of_a_file_renamed_before_the_flush_follows_the_rename() {
    let mut f = Fixture::new(|_| {});
    let base = f.root_inode();
    fs::write(f.root().join("tmp"), b"fresh data").unwrap();
    let ino = f.inode("tmp");
    fs::rename(f.root().join("tmp"), f.root().join("final")).unwrap();
    // Events arrive after the fact: the file is already at its final name.
    let created = f.feed(EventKind::OpenCreate { base, path: b"tmp".to_vec(), target: ino, flags: libc::O_TRUNC as u32, mode: 0o644 });
    assert!(matches!(&created[..], [Op::CreateFile { path, .. }] if *path == rel("tmp")));
    assert!(f.feed(EventKind::Write { inode: ino, offset: 0, len: 10, fd: 3 }).is_empty());
    let ops = f.feed(EventKind::Rename { from_base: base, from: b"tmp".to_vec(), to_base: base, to: b"final".to_vec(), flags: 0 });
    assert!(matches!(&ops[..], [Op::Rename { to, .. }] if *to == rel("final")), "{ops:?}");
    let ops = f.flush();
    assert!(
        matches!(&ops[..], [Op::Write { path, data, .. }, Op::SetAttrs { .. }] if *path == rel("final") && data == b"fresh data"),
        "{ops:?}"
    );
}

#[test]
fn writes_are_coalesced_and_read_from_the_file() {
    let mut f = Fixture::new(|root| fs::write(root.join("f"), vec![b'x'; 100_000]).unwrap());
    let ino = f.inode("f");
    for offset in [0u64, 4096, 2048, 50_000] {
        f.feed(EventKind::Write { inode: ino, offset, len: 4096, fd: 3 });
    }
    let ops = f.flush();
    let writes: Vec<(u64, usize)> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Write { offset, data, hash, .. } => {
                assert_eq!(*hash, sluice_proto::blocks::hash(data));
                Some((*offset, data.len()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(writes, vec![(0, 8192), (50_000, 4096)]);
    assert!(matches!(ops.last(), Some(Op::SetAttrs { attrs, .. }) if attrs.size == Some(100_000)));
}

#[test]
fn deleted_file_drops_its_pending_data() {
    let mut f = Fixture::new(|root| fs::write(root.join("f"), b"data").unwrap());
    let ino = f.inode("f");
    f.feed(EventKind::Write { inode: ino, offset: 0, len: 4, fd: 3 });
    fs::remove_file(f.root().join("f")).unwrap();
    let base = f.root_inode();
    let ops = f.feed(EventKind::Unlink { base, path: b"f".to_vec() });
    assert_eq!(ops, vec![Op::Remove { path: rel("f") }]);
    assert!(!f.engine.has_dirty());
}

#[test]
fn moves_across_the_root_become_creates_and_removes() {
    let outside = tempfile::tempdir().unwrap();
    let mut f = Fixture::new(|root| fs::write(root.join("leaving"), b"bye").unwrap());
    let base = f.root_inode();
    let out_path = outside.path().join("leaving");
    fs::rename(f.root().join("leaving"), &out_path).unwrap();
    let out_bytes = out_path.as_os_str().as_encoded_bytes().to_vec();
    let ops = f.feed(EventKind::Rename { from_base: base, from: b"leaving".to_vec(), to_base: base, to: out_bytes.clone(), flags: 0 });
    assert_eq!(ops, vec![Op::Remove { path: rel("leaving") }]);

    fs::rename(&out_path, f.root().join("back")).unwrap();
    let ops = f.feed(EventKind::Rename { from_base: base, from: out_bytes, to_base: base, to: b"back".to_vec(), flags: 0 });
    assert!(matches!(&ops[..], [Op::Remove { path: gone }, Op::CreateFile { path, .. }] if *gone == rel("back") && *path == rel("back")), "{ops:?}");
    let ops = f.flush();
    assert!(matches!(&ops[0], Op::Write { data, .. } if data == b"bye"), "{ops:?}");
}

#[test]
fn unplaceable_paths_ask_for_a_rescan_instead_of_guessing() {
    let mut f = Fixture::new(|_| {});
    let unknown_dir = InodeId { dev: DEV, ino: 999_999_999 };
    assert!(f.feed(EventKind::Unlink { base: unknown_dir, path: b"x".to_vec() }).is_empty());
    assert!(f.engine.rescan_reason().is_some());
    f.engine.rescan().unwrap();
    assert!(f.engine.rescan_reason().is_none());
    let base = f.root_inode();
    assert!(f.feed(EventKind::Unlink { base, path: b"lost+found/x".to_vec() }).is_empty());
    assert!(f.engine.rescan_reason().is_none(), "excluded names are outside the tree");
}

#[test]
fn chmod_through_proc_fd_finds_the_file() {
    let mut f = Fixture::new(|root| fs::write(root.join("f"), b"x").unwrap());
    let file = fs::File::open(f.root().join("f")).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    let base = f.root_inode();
    f.feed(EventKind::PathMeta { base, path: format!("/proc/self/fd/{fd}").into_bytes(), flags: 0 });
    let ops = f.flush();
    assert!(matches!(&ops[..], [Op::SetAttrs { path, .. }] if *path == rel("f")), "{ops:?}");
}

#[test]
fn mapped_pages_are_rechecked_and_resent_only_when_changed() {
    let mut f = Fixture::new(|root| fs::write(root.join("db"), vec![0u8; 64 * 1024]).unwrap());
    let ino = f.inode("db");
    f.feed(EventKind::Writeback { inode: ino, offset: 8192, len: 4096 });
    let first = f.flush();
    assert!(matches!(&first[0], Op::Write { offset: 8192, data, .. } if data.len() == 4096), "{first:?}");
    let now = crate::session::monotonic_ns();
    f.engine.refresh_mapped(now);
    assert!(f.flush().is_empty(), "an unchanged page must not be sent again");
    // A store to the already dirty page raises no event; the re-check finds it.
    let file = fs::OpenOptions::new().write(true).open(f.root().join("db")).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"late store", 8300).unwrap();
    f.engine.refresh_mapped(now);
    let again = f.flush();
    assert!(matches!(&again[0], Op::Write { offset: 8192, data, .. } if &data[108..118] == b"late store"), "{again:?}");
    // Past the patience window the page is forgotten.
    f.engine.refresh_mapped(now + MAPPED_PATIENCE_NS + 1);
    assert!(f.flush().is_empty());
}

#[test]
fn a_short_unaligned_read_of_a_mapped_file_does_not_panic() {
    let mut f = Fixture::new(|root| fs::write(root.join("m"), vec![1u8; 10_000]).unwrap());
    let ino = f.inode("m");
    f.feed(EventKind::Writeback { inode: ino, offset: 8192, len: 4096 });
    assert!(!f.flush().is_empty());
    // A small write inside a mapped page, not at a page boundary (what a file
    // exerciser mixing mmap and write does): no whole page lies in what is read.
    f.feed(EventKind::Write { inode: ino, offset: 8193, len: 8, fd: 3 });
    let ops = f.flush();
    assert!(matches!(&ops[0], Op::Write { offset: 8193, data, .. } if data.len() == 8), "{ops:?}");
}

#[test]
fn a_barrier_waits_for_the_data_held_before_it() {
    let mut f = Fixture::new(|root| fs::write(root.join("db"), vec![2u8; 8192]).unwrap());
    let ino = f.inode("db");
    f.engine.data_held = true;
    assert!(f.feed(EventKind::Write { inode: ino, offset: 0, len: 4096, fd: 3 }).is_empty());
    let sync = EventKind::Sync { inode: Some(ino), offset: 0, len: sluice_common::TO_END, kind: SyncKind::Fsync };
    assert!(f.feed(sync).is_empty(), "no barrier ahead of the data it covers");
    f.engine.data_held = false;
    let ops = f.flush();
    assert!(
        matches!(&ops[..], [Op::Write { .. }, Op::SetAttrs { .. }, Op::Barrier { path: Some(p) }] if *p == rel("db")),
        "{ops:?}"
    );
}

#[test]
fn a_flush_out_of_budget_leaves_the_rest_and_the_barrier_for_the_next() {
    let len = 3 * MAX_WRITE;
    let mut f = Fixture::new(|root| fs::write(root.join("db"), vec![3u8; len as usize]).unwrap());
    let ino = f.inode("db");
    assert!(f.feed(EventKind::Write { inode: ino, offset: 0, len, fd: 3 }).is_empty());
    f.engine.read_budget = 1;
    let first = f.flush();
    assert!(matches!(&first[..], [Op::Write { offset: 0, data, .. }] if data.len() as u64 == MAX_WRITE), "{first:?}");
    assert_eq!(f.engine.read_budget, 0);
    let sync = EventKind::Sync { inode: Some(ino), offset: 0, len: sluice_common::TO_END, kind: SyncKind::Fsync };
    assert!(f.feed(sync).is_empty(), "no barrier ahead of the data it covers");
    f.engine.read_budget = u64::MAX;
    let rest = f.flush();
    assert!(
        matches!(&rest[..], [Op::Write { offset, .. }, Op::Write { .. }, Op::SetAttrs { .. }, Op::Barrier { path: Some(p) }] if *offset == MAX_WRITE && *p == rel("db")),
        "{rest:?}"
    );
}

#[test]
fn a_want_is_answered_a_piece_at_a_time() {
    let block = sluice_proto::blocks::BLOCK_SIZE;
    let len = 10 * block + 100;
    let content: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
    let mut f = Fixture::new(|root| fs::write(root.join("img"), &content).unwrap());
    // The standby holds the first two blocks already.
    let theirs: Vec<_> = (0..2).map(|b| sluice_proto::blocks::hash(&content[(b * block) as usize..((b + 1) * block) as usize])).collect();
    let mut copy = content[..(2 * block) as usize].to_vec();
    let (mut from, mut pieces, mut ops) = (0, 0, Vec::new());
    loop {
        let mut out = Vec::new();
        let resume = f.engine.answer_want(&rel("img"), &theirs, from, 3 * block, 1, &mut out);
        pieces += 1;
        let read: u64 = out.iter().map(|op| op.op.payload_len()).sum();
        assert!(read <= 3 * block, "piece {pieces} carries {read} bytes");
        ops.extend(out.into_iter().map(|op| op.op));
        match resume {
            Some(next) => {
                assert!(next > from, "no progress from block {from}");
                from = next;
            }
            None => break,
        }
    }
    assert_eq!(pieces, 4, "10 blocks and a tail, 3 blocks a piece");
    assert!(matches!(ops.last(), Some(Op::SetAttrs { .. })), "size and metadata come once, after the data: {ops:?}");
    assert_eq!(ops.iter().filter(|op| matches!(op, Op::SetAttrs { .. })).count(), 1);
    for op in &ops {
        apply_to_copy(&mut copy, op);
    }
    assert_eq!(copy, content);
}

#[test]
fn an_exchange_with_a_name_outside_the_tree_brings_in_what_was_outside() {
    let outside = tempfile::tempdir().unwrap();
    let mut f = Fixture::new(|root| fs::write(root.join("inside"), b"old inside").unwrap());
    let base = f.root_inode();
    let out_path = outside.path().join("other");
    fs::write(&out_path, b"from outside").unwrap();
    // renameat2(RENAME_EXCHANGE) across the root's boundary (same filesystem in real life).
    let (a, b) = (f.root().join("inside"), out_path.clone());
    let tmp = f.root().join(".swap");
    fs::rename(&a, &tmp).unwrap();
    fs::copy(&b, &a).unwrap();
    fs::copy(&tmp, &b).unwrap();
    fs::remove_file(&tmp).unwrap();
    let out_bytes = out_path.as_os_str().as_encoded_bytes().to_vec();
    let ops = f.feed(EventKind::Rename { from_base: base, from: b"inside".to_vec(), to_base: base, to: out_bytes, flags: 2 });
    assert!(matches!(&ops[..], [Op::Remove { .. }, Op::CreateFile { path, truncate: true, .. }] if *path == rel("inside")), "{ops:?}");
    let ops = f.flush();
    assert!(matches!(&ops[0], Op::Write { data, .. } if data == b"from outside"), "{ops:?}");
}

#[test]
fn a_rename_of_an_unindexed_name_repairs_both_names() {
    let mut f = Fixture::new(|root| fs::create_dir(root.join("d")).unwrap());
    let base = f.root_inode();
    // Created behind capture's back, then renamed: the standby cannot hold `d/x`.
    fs::write(f.root().join("d/y"), b"content").unwrap();
    let ops = f.feed(EventKind::Rename { from_base: base, from: b"d/x".to_vec(), to_base: base, to: b"d/y".to_vec(), flags: 0 });
    assert!(ops.is_empty(), "{ops:?}");
    let repair = f.engine.take_repairs().unwrap().unwrap();
    assert_eq!(repair.subtrees, vec![rel("d/x"), rel("d/y")]);
    let listed: Vec<&RelPath> = repair.entries.iter().map(|e| &e.path).collect();
    assert_eq!(listed, [&rel("d"), &rel("d/y")], "the parent, then the file as the master has it");
    assert!(repair.entries[1].verify);
    assert_eq!(f.engine.index().resolve(&rel("d/y")), Some(f.inode("d/y").ino), "the index learned it");
}

#[test]
fn a_shrinking_truncate_is_replicated_in_order() {
    // ftruncate(fd, 0); pwrite(fd, 4 KiB, 8192); ftruncate(fd, 1 MiB) on a 1 MiB file.
    let old = vec![b'o'; 1 << 20];
    let mut f = Fixture::new(|root| fs::write(root.join("f"), &old).unwrap());
    let ino = f.inode("f");
    let file = fs::OpenOptions::new().write(true).open(f.root().join("f")).unwrap();
    file.set_len(0).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &[b'n'; 4096], 8192).unwrap();
    file.set_len(1 << 20).unwrap();
    let mut ops = f.feed(EventKind::Truncate { inode: ino, size: 0, fd: 3 });
    ops.extend(f.feed(EventKind::Write { inode: ino, offset: 8192, len: 4096, fd: 3 }));
    ops.extend(f.feed(EventKind::Truncate { inode: ino, size: 1 << 20, fd: 3 }));
    ops.extend(f.flush());
    let mut copy = old;
    for op in &ops {
        apply_to_copy(&mut copy, op);
    }
    assert_eq!(copy, fs::read(f.root().join("f")).unwrap(), "{ops:?}");
}

/// Applies the data operations of one file to an in-memory copy, as the receiver would.
fn apply_to_copy(copy: &mut Vec<u8>, op: &Op) {
    let zero = |copy: &mut Vec<u8>, offset: u64, len: u64| {
        let start = (offset as usize).min(copy.len());
        let end = (offset.saturating_add(len) as usize).min(copy.len());
        copy[start..end].fill(0);
    };
    match op {
        Op::Write { offset, data, .. } => {
            let end = *offset as usize + data.len();
            if copy.len() < end {
                copy.resize(end, 0);
            }
            copy[*offset as usize..end].copy_from_slice(data);
        }
        Op::Truncate { size, .. } => copy.resize(*size as usize, 0),
        Op::SetAttrs { attrs, .. } => {
            if let Some(size) = attrs.size {
                copy.resize(size as usize, 0);
            }
        }
        Op::CreateFile { truncate: true, .. } => copy.clear(),
        Op::Fallocate { mode, offset, len, .. } => {
            let mode = *mode as i32;
            assert_eq!(mode & (libc::FALLOC_FL_COLLAPSE_RANGE | libc::FALLOC_FL_INSERT_RANGE), 0, "shifts are sent as data");
            if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
                zero(copy, *offset, *len);
            }
            if mode & libc::FALLOC_FL_KEEP_SIZE == 0 && copy.len() < (offset + len) as usize {
                copy.resize((offset + len) as usize, 0);
            }
        }
        _ => {}
    }
}

/// xorshift64*: a small deterministic generator for seeded test sequences.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Random writes, truncations and fallocate calls on one file; their events reach
/// the engine late and sometimes out of order (as events of two CPUs can), with
/// flushes in between. Whatever the order, the operations the engine emits must
/// turn the old content into the new.
#[test]
fn random_data_changes_converge_whatever_the_event_order() {
    const BLOCK: u64 = 4096;
    for seed in 1..=150u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let initial: Vec<u8> = (0..rng.below(200_000)).map(|i| (i % 251) as u8).collect();
        let mut f = Fixture::new(|root| fs::write(root.join("f"), &initial).unwrap());
        let ino = f.inode("f");
        let file = fs::OpenOptions::new().read(true).write(true).open(f.root().join("f")).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        let mut events: Vec<EventKind> = Vec::new();
        let mut ops = Vec::new();
        let mut log = Vec::new();
        // Every other seed flushes with small read budgets, as a busy session
        // does: what a flush leaves dirty must follow in a later one.
        let budgeted = seed % 2 == 0;
        let flush = |f: &mut Fixture, rng: &mut Rng| {
            if budgeted {
                f.engine.read_budget = rng.below(3) * rng.below(30_000);
            }
            f.flush()
        };
        for step in 0..60 {
            let size = file.metadata().unwrap().len();
            let offset = rng.below(size + 50_000);
            let len = 1 + rng.below(40_000);
            let event = match rng.below(8) {
                0..=2 => {
                    let data = vec![(step as u8).wrapping_add(seed as u8) | 1; len as usize];
                    std::os::unix::fs::FileExt::write_all_at(&file, &data, offset).unwrap();
                    Some(EventKind::Write { inode: ino, offset, len, fd: 3 })
                }
                3 => {
                    let new = rng.below(size + 60_000);
                    file.set_len(new).unwrap();
                    Some(EventKind::Truncate { inode: ino, size: new, fd: 3 })
                }
                4..=6 => {
                    let modes = [
                        0,
                        libc::FALLOC_FL_KEEP_SIZE,
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        libc::FALLOC_FL_ZERO_RANGE,
                        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                        libc::FALLOC_FL_COLLAPSE_RANGE,
                        libc::FALLOC_FL_INSERT_RANGE,
                    ];
                    let mode = modes[rng.below(modes.len() as u64) as usize];
                    let (offset, len) = if mode & (libc::FALLOC_FL_COLLAPSE_RANGE | libc::FALLOC_FL_INSERT_RANGE) != 0 {
                        (rng.below(size / BLOCK + 1) * BLOCK, (1 + rng.below(4)) * BLOCK)
                    } else {
                        (offset, len)
                    };
                    // SAFETY: fallocate on an fd this test owns.
                    let rc = unsafe { libc::fallocate(fd, mode, offset as libc::off_t, len as libc::off_t) };
                    (rc == 0).then_some(EventKind::Fallocate { inode: ino, offset, len, mode: mode as u32, fd: 3 })
                }
                _ => {
                    if rng.below(2) == 0 {
                        ops.extend(flush(&mut f, &mut rng));
                    }
                    None
                }
            };
            if let Some(event) = event {
                log.push(format!("{event:?}"));
                events.push(event);
            }
            // Events arrive in batches; two neighbours may have swapped places.
            if rng.below(3) == 0 {
                if events.len() >= 2 && rng.below(2) == 0 {
                    let at = rng.below(events.len() as u64 - 1) as usize;
                    events.swap(at, at + 1);
                    log.push(format!("(events {at} and {} swapped)", at + 1));
                }
                for event in events.drain(..) {
                    ops.extend(f.feed(event));
                    if rng.below(4) == 0 {
                        ops.extend(flush(&mut f, &mut rng));
                    }
                }
            }
        }
        for event in events.drain(..) {
            ops.extend(f.feed(event));
        }
        f.engine.read_budget = u64::MAX;
        ops.extend(f.flush());
        let mut copy = initial.clone();
        for op in &ops {
            apply_to_copy(&mut copy, op);
        }
        let master = fs::read(f.root().join("f")).unwrap();
        if copy != master {
            let at = copy.iter().zip(&master).position(|(a, b)| a != b);
            panic!(
                "seed {seed}: copy of {} bytes differs from the master's {} bytes (first at {at:?})\nchanges:\n{}",
                copy.len(),
                master.len(),
                log.join("\n")
            );
        }
    }
}

#[test]
fn paths_from_an_ancestor_or_through_an_alias_are_placed_in_the_tree() {
    let mut f = Fixture::new(|root| {
        fs::write(root.join("f"), b"x").unwrap();
        fs::write(root.join("g"), b"y").unwrap();
        fs::create_dir(root.join("sub")).unwrap();
        fs::write(root.join("sub/x"), b"z").unwrap();
    });
    let root = f.root();
    f.engine.set_ancestors(root.ancestors().skip(1).map(Path::to_path_buf).collect());
    // `cd <parent> && rm <root name>/f`: the base is ancestor 0.
    fs::remove_file(root.join("f")).unwrap();
    let name = root.file_name().unwrap().as_encoded_bytes();
    let parent = InodeId { dev: crate::capture::ANCESTOR_DEV, ino: 0 };
    let ops = f.feed(EventKind::Unlink { base: parent, path: [name, b"/f"].concat() });
    assert_eq!(ops, vec![Op::Remove { path: rel("f") }]);
    // Through a symlink to the root, from anywhere.
    let elsewhere = tempfile::tempdir().unwrap();
    let alias = elsewhere.path().join("alias");
    std::os::unix::fs::symlink(&root, &alias).unwrap();
    let anywhere = InodeId { dev: 1, ino: 2 };
    fs::remove_file(root.join("g")).unwrap();
    let through = |rest: &str| [alias.as_os_str().as_encoded_bytes(), rest.as_bytes()].concat();
    let ops = f.feed(EventKind::Unlink { base: anywhere, path: through("/g") });
    assert_eq!(ops, vec![Op::Remove { path: rel("g") }]);
    // Its parent directory is already gone when the event is handled.
    fs::remove_dir_all(root.join("sub")).unwrap();
    let ops = f.feed(EventKind::Unlink { base: anywhere, path: through("/sub/x") });
    assert_eq!(ops, vec![Op::Remove { path: rel("sub/x") }]);
    // Elsewhere stays outside, without a comparison.
    let ops = f.feed(EventKind::Unlink { base: anywhere, path: elsewhere.path().join("other").into_os_string().into_encoded_bytes() });
    assert!(ops.is_empty());
    assert!(f.engine.rescan_reason().is_none(), "{:?}", f.engine.rescan_reason());
}

#[test]
fn an_unknown_inode_changed_without_a_descriptor_is_found_or_compared() {
    let mut f = Fixture::new(|_| {});
    // Created unseen (e.g. into an io_uring fixed file slot) and held open by its writer.
    fs::write(f.root().join("unseen"), b"ring data").unwrap();
    let held = fs::File::open(f.root().join("unseen")).unwrap();
    let unseen = f.inode("unseen");
    let ops = f.feed(EventKind::Write { inode: unseen, offset: 0, len: 9, fd: NO_FD });
    assert!(matches!(&ops[..], [Op::Remove { path: gone }, Op::CreateFile { path, .. }] if *gone == rel("unseen") && *path == rel("unseen")), "{ops:?}");
    assert!(matches!(&f.flush()[0], Op::Write { data, .. } if data == b"ring data"));
    drop(held);
    // Nobody holds it: compare the tree; a comparison that does not find it marks it outside.
    let nowhere = InodeId { dev: DEV, ino: 987_654_321 };
    assert!(f.feed(EventKind::Writeback { inode: nowhere, offset: 0, len: 4096 }).is_empty());
    assert!(f.engine.rescan_reason().is_some());
    f.engine.rescan().unwrap();
    assert!(f.feed(EventKind::Writeback { inode: nowhere, offset: 0, len: 4096 }).is_empty());
    assert!(f.engine.rescan_reason().is_none());
}

#[test]
fn undecoded_changes_reread_the_file_or_compare_the_tree() {
    let mut f = Fixture::new(|root| fs::write(root.join("f"), vec![b'q'; 5000]).unwrap());
    let ino = f.inode("f");
    f.feed(EventKind::Changed { inode: ino, offset: 0, len: 5000, fd: NO_FD });
    let ops = f.flush();
    assert!(matches!(&ops[0], Op::Write { offset: 0, data, .. } if data.len() == 5000), "{ops:?}");
    assert!(ops.iter().any(|op| matches!(op, Op::SetAttrs { .. })), "{ops:?}");
    assert!(f.engine.rescan_reason().is_none());
    f.feed(EventKind::Repair { reason: crate::capture::Repair::IoUringNamespace, detail: 35 });
    assert!(f.engine.rescan_reason().is_some());
}

#[test]
fn a_store_the_kernel_could_not_attribute_is_found_in_the_process_maps() {
    let mut f = Fixture::new(|root| fs::write(root.join("db"), vec![0u8; 64 * 1024]).unwrap());
    let file = fs::OpenOptions::new().read(true).write(true).open(f.root().join("db")).unwrap();
    // SAFETY: a fresh shared mapping of a file this test owns, unmapped below.
    let map = unsafe {
        libc::mmap(std::ptr::null_mut(), 64 * 1024, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, std::os::fd::AsRawFd::as_raw_fd(&file), 0)
    };
    assert_ne!(map, libc::MAP_FAILED);
    // SAFETY: inside the mapping.
    unsafe { *(map as *mut u8).add(12_345) = 7 };
    let addr = map as u64 + 12_345;
    let lookup = |detail| EventKind::Repair { reason: crate::capture::Repair::FaultLookup, detail };
    assert!(f.feed(lookup(addr)).is_empty());
    let ops = f.flush();
    // The whole folio the page may sit in is read (here, the whole small file).
    assert!(matches!(&ops[0], Op::Write { path, offset: 0, data, .. } if *path == rel("db") && data[12_345] == 7), "{ops:?}");
    // Anonymous memory is not ours, and asks for nothing.
    let anonymous = vec![0u8; 4096];
    assert!(f.feed(lookup(anonymous.as_ptr() as u64)).is_empty());
    assert!(f.flush().is_empty());
    assert!(f.engine.rescan_reason().is_none());
    // SAFETY: unmaps what was mapped above.
    unsafe { libc::munmap(map, 64 * 1024) };
}

#[test]
fn namespace_events_from_before_a_walk_are_not_replayed_over_it() {
    let mut f = Fixture::new(|root| fs::write(root.join("a"), b"first").unwrap());
    let base = f.root_inode();
    let before = crate::session::monotonic_ns();
    // `mv a c; echo second > a`, then the tree is walked before those events are handled.
    fs::rename(f.root().join("a"), f.root().join("c")).unwrap();
    fs::write(f.root().join("a"), b"second").unwrap();
    f.engine.rescan().unwrap();
    let new_a = f.inode("a");
    let mut out = Vec::new();
    let event = |kind| Event { pid: std::process::id(), tid: 0, ts_ns: before, kind };
    f.engine.handle(&event(EventKind::Rename { from_base: base, from: b"a".to_vec(), to_base: base, to: b"c".to_vec(), flags: 0 }), &mut out);
    f.engine.handle(&event(EventKind::OpenCreate { base, path: b"a".to_vec(), target: new_a, flags: libc::O_TRUNC as u32, mode: 0o644 }), &mut out);
    let ops: Vec<Op> = out.into_iter().map(|p| p.op).collect();
    assert!(ops.is_empty(), "the walk already holds both; replaying the rename would move the new `a` over `c`: {ops:?}");
    assert!(!f.engine.has_repairs());
    // The same events captured after the walk are replayed.
    let ops = f.feed(EventKind::Rename { from_base: base, from: b"a".to_vec(), to_base: base, to: b"d".to_vec(), flags: 0 });
    assert!(matches!(&ops[..], [Op::Rename { .. }]), "{ops:?}");
}

#[test]
fn data_is_not_written_to_a_name_that_now_holds_another_file() {
    let mut f = Fixture::new(|root| fs::write(root.join("f"), vec![b'x'; 10_000]).unwrap());
    let ino = f.inode("f");
    f.feed(EventKind::Write { inode: ino, offset: 0, len: 4096, fd: 3 });
    // Moved away and replaced without an event (an io_uring rename does that).
    let root = f.root();
    fs::rename(root.join("f"), root.join("g")).unwrap();
    fs::write(root.join("f"), b"another file").unwrap();
    let ops = f.flush();
    assert!(
        !ops.iter().any(|op| matches!(op, Op::Write { path, .. } | Op::SetAttrs { path, .. } if *path == rel("f"))),
        "the moved file's bytes must not go to the new f: {ops:?}"
    );
    assert!(f.engine.is_dirty(ino.ino), "kept for when the index catches up");
}
