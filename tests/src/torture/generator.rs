//! Choosing the next operation: which class, which entry (looked up in the live
//! tree, so most operations hit something that exists), which way to name it, and
//! arguments that stress the edges (unaligned offsets, sparse extension, shrinking
//! under a mapping, names another worker is using at the same moment).

use std::fs;
use std::os::unix::fs::MetadataExt;

use super::exec::Layout;
use super::ops::{
    AclEntry, AioWrite, Class, FallocMode, Msync, Op, OpenFlag, P, RenameMode, Step, Time, UringCall, UringWrite,
    UringWriteKind, Via, Whence,
};
use super::rng::Rng;
use super::sys::{ACL_GROUP, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER, ACL_USER, ACL_USER_OBJ};

/// Directories every worker uses, so that one worker's rename or unlink races
/// another's write to the same name.
pub const SHARED_AREAS: usize = 3;
/// Names are drawn from small pools so that workers collide on them.
const FILE_NAMES: [&str; 10] = ["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8", "f9"];
const DIR_NAMES: [&str; 4] = ["d0", "d1", "d2", "d3"];
const LINK_NAMES: [&str; 3] = ["l0", "l1", "l2"];
const FIFO_NAMES: [&str; 2] = ["p0", "p1"];
const OUTSIDE_NAMES: [&str; 8] = ["o0", "o1", "o2", "o3", "o4", "o5", "o6", "o7"];
/// New directories are made at most this deep (the area root is depth 1), so paths
/// stay far below the 255-byte limit the agent documents.
const MAX_MKDIR_DEPTH: usize = 3;
/// Files stop growing past this: offsets and insertions stay below it.
const SIZE_CAP: u64 = 16 << 20;
const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
const BLOCK: u64 = 4096;

/// The area roots (`w<k>` is worker k's private one).
pub fn area_roots(workers: usize) -> Vec<String> {
    (0..workers).map(|k| format!("w{k}")).chain((0..SHARED_AREAS).map(|i| format!("shared{i}"))).collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Other,
}

struct Entry {
    rel: String,
    kind: Kind,
    size: u64,
}

/// One worker's operation generator.
pub struct Gen {
    rng: Rng,
    worker: usize,
    layout: Layout,
    classes: Vec<Class>,
    weights: Vec<u64>,
    vias: Vec<Via>,
    private_dirs: Vec<String>,
    shared_dirs: Vec<String>,
    until_refresh: u32,
}

impl Gen {
    pub fn new(seed: u64, worker: usize, layout: Layout, classes: &[Class], vias: &[Via]) -> Gen {
        let mut classes = classes.to_vec();
        classes.sort();
        classes.dedup();
        let weights = classes.iter().map(|c| c.weight()).collect();
        Gen {
            rng: Rng::for_worker(seed, worker),
            worker,
            layout,
            classes,
            weights,
            vias: if vias.is_empty() { Via::TREE.to_vec() } else { vias.to_vec() },
            private_dirs: Vec::new(),
            shared_dirs: Vec::new(),
            until_refresh: 0,
        }
    }

    /// The next operation and its class.
    pub fn next_op(&mut self) -> (Class, Op) {
        if self.until_refresh == 0 {
            self.refresh_dirs();
            self.until_refresh = 8;
        }
        self.until_refresh -= 1;
        let class = self.classes[self.rng.weighted(&self.weights)];
        let op = match class {
            Class::Write => self.write(),
            Class::Mmap => self.mmap(),
            Class::Direct => self.direct(),
            Class::Aio => self.aio(),
            Class::Uring => self.uring(),
            Class::UringNs => self.uring_ns(),
            Class::Truncate => self.truncate(),
            Class::Fallocate => self.fallocate(),
            Class::Copy => self.copy(),
            Class::Clone => self.clone_op(),
            Class::Tmpfile => self.tmpfile(),
            Class::Rename => self.rename(),
            Class::Link => self.link(),
            Class::Symlink => self.symlink(),
            Class::Fifo => self.fifo(),
            Class::Create => self.create(),
            Class::Dir => self.dir_op(),
            Class::Meta => self.meta(),
            Class::Xattr => self.xattr(),
            Class::Acl => self.acl(),
            Class::SharedFd => self.shared_fd(),
            Class::Mixed => self.mixed(),
        };
        if matches!(class, Class::Dir | Class::Rename | Class::UringNs) {
            self.until_refresh = 0;
        }
        (class, op)
    }

    // ---- picking entries ------------------------------------------------------

    fn refresh_dirs(&mut self) {
        let private = format!("w{}", self.worker);
        self.private_dirs = self.walk_dirs(&private);
        self.shared_dirs = (0..SHARED_AREAS).flat_map(|i| self.walk_dirs(&format!("shared{i}"))).collect();
    }

    fn walk_dirs(&self, root: &str) -> Vec<String> {
        let mut found = vec![root.to_owned()];
        let mut stack = vec![(root.to_owned(), 1usize)];
        while let Some((dir, depth)) = stack.pop() {
            if depth > MAX_MKDIR_DEPTH + 2 {
                continue;
            }
            let Ok(entries) = fs::read_dir(self.layout.tree().join(&dir)) else { continue };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let rel = format!("{dir}/{}", entry.file_name().to_string_lossy());
                    found.push(rel.clone());
                    stack.push((rel, depth + 1));
                }
            }
        }
        found.sort();
        found
    }

    /// A directory of this worker's private area or of a shared one, half and half.
    fn dir(&mut self) -> String {
        let list = if self.rng.coin() { &self.private_dirs } else { &self.shared_dirs };
        if list.is_empty() {
            return format!("w{}", self.worker);
        }
        list[self.rng.below(list.len() as u64) as usize].clone()
    }

    /// A directory below an area root (never the root itself, which must survive).
    fn subdir(&mut self) -> Option<String> {
        let candidates: Vec<String> = self
            .private_dirs
            .iter()
            .chain(&self.shared_dirs)
            .filter(|d| d.contains('/'))
            .cloned()
            .collect();
        (!candidates.is_empty()).then(|| self.rng.pick(&candidates).clone())
    }

    fn list(&self, dir: &str) -> Vec<Entry> {
        let Ok(entries) = fs::read_dir(self.layout.tree().join(dir)) else { return Vec::new() };
        let mut found: Vec<Entry> = entries
            .flatten()
            .map(|entry| {
                let rel = format!("{dir}/{}", entry.file_name().to_string_lossy());
                let (kind, size) = match entry.metadata() {
                    Ok(m) if m.is_file() => (Kind::File, m.size()),
                    Ok(m) if m.is_dir() => (Kind::Dir, 0),
                    _ => (Kind::Other, 0),
                };
                Entry { rel, kind, size }
            })
            .collect();
        found.sort_by(|a, b| a.rel.cmp(&b.rel));
        found
    }

    fn size_of(&self, rel: &str) -> u64 {
        fs::symlink_metadata(self.layout.tree().join(rel)).map(|m| if m.is_file() { m.size() } else { 0 }).unwrap_or(0)
    }

    /// An existing regular file (or, with probability `new_percent` or when the
    /// directory has none, a pool name that may not exist yet), with its size.
    fn file(&mut self, new_percent: u64) -> (String, u64) {
        let dir = self.dir();
        let files: Vec<Entry> = self.list(&dir).into_iter().filter(|e| e.kind == Kind::File).collect();
        if files.is_empty() || self.rng.percent(new_percent) {
            let rel = format!("{dir}/{}", self.rng.pick(&FILE_NAMES));
            let size = self.size_of(&rel);
            return (rel, size);
        }
        let entry = &files[self.rng.below(files.len() as u64) as usize];
        (entry.rel.clone(), entry.size)
    }

    /// Any existing entry of a directory, or a pool name.
    fn any_entry(&mut self) -> (String, Kind) {
        let dir = self.dir();
        let entries = self.list(&dir);
        if entries.is_empty() || self.rng.percent(10) {
            return (format!("{dir}/{}", self.rng.pick(&FILE_NAMES)), Kind::File);
        }
        let entry = &entries[self.rng.below(entries.len() as u64) as usize];
        (entry.rel.clone(), entry.kind)
    }

    /// A name in some directory: an existing entry (to be replaced) or a pool name.
    fn target_name(&mut self, pool: &[&str]) -> String {
        let dir = self.dir();
        if self.rng.percent(30) {
            let entries = self.list(&dir);
            if !entries.is_empty() {
                return entries[self.rng.below(entries.len() as u64) as usize].rel.clone();
            }
        }
        format!("{dir}/{}", self.rng.pick(pool))
    }

    fn outside_entries(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.layout.outside()) else { return Vec::new() };
        let mut names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    /// A name in `<mnt>/outside` (shared by all workers).
    fn outside_name(&mut self) -> &'static str {
        OUTSIDE_NAMES[self.rng.below(OUTSIDE_NAMES.len() as u64) as usize]
    }

    fn via(&mut self) -> Via {
        *self.rng.pick(&self.vias)
    }

    /// A via for an operation that also names `<mnt>/outside`: the bind mount is a
    /// different mount, where a rename or link would only fail with EXDEV.
    fn via_same_mount(&mut self) -> Via {
        let usable: Vec<Via> = self.vias.iter().copied().filter(|v| *v != Via::Bind).collect();
        if usable.is_empty() { Via::Abs } else { *self.rng.pick(&usable) }
    }

    fn p(&mut self, rel: &str) -> P {
        let via = self.via();
        P::new(via, rel)
    }

    // ---- sizes and offsets ------------------------------------------------------

    fn seed(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// Mostly small writes, some medium, a few large.
    fn len(&mut self) -> u32 {
        let (lo, hi) = match self.rng.weighted(&[55, 25, 15, 5]) {
            0 => (1, 4 * KIB),
            1 => (4 * KIB, 64 * KIB),
            2 => (64 * KIB, MIB),
            _ => (MIB, 4 * MIB),
        };
        self.rng.range(lo, hi + 1) as u32
    }

    fn aligned_len(&mut self, max_blocks: u64) -> u32 {
        (self.rng.range(1, max_blocks + 1) * BLOCK) as u32
    }

    /// An offset for a write into a file of `size` bytes: inside it, at its end,
    /// just past it, or far past it (leaving a hole).
    fn offset(&mut self, size: u64) -> u64 {
        if size > SIZE_CAP {
            return self.rng.below(size);
        }
        match self.rng.weighted(&[35, 20, 20, 15, 5, 5]) {
            0 => self.rng.below(size + 1),
            1 => size,
            2 => self.rng.below(MIB),
            3 => self.rng.below(4 * MIB / BLOCK) * BLOCK,
            4 => self.rng.below(SIZE_CAP),
            _ => size + self.rng.range(1, 3 * BLOCK),
        }
    }

    fn aligned_offset(&mut self, size: u64) -> u64 {
        let limit = (size.min(SIZE_CAP) + MIB) / BLOCK;
        self.rng.below(limit + 1) * BLOCK
    }

    /// A size for a truncate: smaller, zero, the same, or larger.
    fn new_size(&mut self, size: u64) -> u64 {
        match self.rng.weighted(&[35, 15, 5, 30, 15]) {
            0 => self.rng.below(size + 1),
            1 => 0,
            2 => size,
            3 => size + self.rng.range(1, MIB),
            _ => self.rng.below(SIZE_CAP / BLOCK) * BLOCK,
        }
    }

    fn pieces(&mut self, total: u32) -> Vec<u32> {
        let count = self.rng.range(1, 5) as u32;
        let mut lens = Vec::new();
        let mut left = total;
        for i in 0..count {
            let piece = if i + 1 == count { left } else { self.rng.below(u64::from(left) + 1) as u32 };
            lens.push(piece);
            left -= piece;
        }
        lens
    }

    fn mode(&mut self, dir: bool) -> u32 {
        let base = if dir { 0o755 } else { 0o644 };
        match self.rng.weighted(&[60, 30, 10]) {
            0 => base,
            1 => self.rng.below(0o1000) as u32,
            _ => self.rng.below(0o10000) as u32,
        }
    }

    // ---- classes ----------------------------------------------------------------

    fn write(&mut self) -> Op {
        let (rel, size) = self.file(20);
        let path = if self.rng.percent(5) {
            P::new(Via::Out, self.outside_name())
        } else {
            self.p(&rel)
        };
        let append = self.rng.percent(25);
        let mut flags = vec![OpenFlag::Creat];
        if append {
            flags.push(OpenFlag::Append);
        }
        if self.rng.percent(30) {
            flags.push(OpenFlag::Wronly);
        }
        if self.rng.percent(5) {
            flags.push(OpenFlag::Trunc);
        }
        if self.rng.percent(3) {
            flags.push(OpenFlag::Sync);
        }
        let steps = (0..self.rng.range(1, 5)).map(|_| self.write_step(size, append)).collect();
        Op::Fd { path, flags, mode: 0o644, steps }
    }

    fn write_step(&mut self, size: u64, append: bool) -> Step {
        let len = self.len();
        let seed = self.seed();
        let off = self.offset(size);
        match self.rng.weighted(&[25, 25, 15, 10, 10, 10, 5]) {
            0 => Step::Write { len, seed },
            // On an O_APPEND fd, Linux appends whatever offset pwrite is given.
            1 => Step::Pwrite { off, len, seed },
            2 => Step::Writev { lens: self.pieces(len), seed },
            3 => Step::Pwritev { off, lens: self.pieces(len), seed },
            4 => Step::Pwritev2 { off: off as i64, lens: self.pieces(len), seed, append: true },
            5 => Step::Pwritev2 {
                off: if self.rng.coin() { -1 } else { off as i64 },
                lens: self.pieces(len),
                seed,
                append: append && self.rng.coin(),
            },
            _ => Step::Lseek { off: off as i64, whence: Whence::Set },
        }
    }

    fn mmap(&mut self) -> Op {
        let (rel, size) = self.file(10);
        let mut steps = Vec::new();
        let mut size = size;
        if size == 0 || self.rng.percent(10) {
            size = self.rng.range(1, 256) * BLOCK - self.rng.below(BLOCK);
            steps.push(Step::Ftruncate { size });
        }
        for _ in 0..self.rng.range(1, 4) {
            steps.push(self.mmap_step(size));
        }
        Op::Fd { path: self.p(&rel), flags: vec![OpenFlag::Creat], mode: 0o644, steps }
    }

    fn mmap_step(&mut self, size: u64) -> Step {
        let off = self.rng.below(size.max(1));
        let room = (size.max(1) - off).min(256 * KIB);
        let len = self.rng.range(1, room + 1) as u32;
        let msync = *self.rng.pick(&[Msync::None, Msync::None, Msync::Sync, Msync::Sync, Msync::Async]);
        Step::Mmap { off, len, seed: self.seed(), msync }
    }

    fn direct(&mut self) -> Op {
        let (rel, size) = self.file(20);
        let mut flags = vec![OpenFlag::Creat, OpenFlag::Direct];
        if self.rng.coin() {
            flags.push(OpenFlag::Wronly);
        }
        let mut steps = Vec::new();
        for _ in 0..self.rng.range(1, 4) {
            let len = self.aligned_len(64);
            let seed = self.seed();
            steps.push(match self.rng.weighted(&[60, 20, 20]) {
                0 => Step::Pwrite { off: self.aligned_offset(size), len, seed },
                1 => Step::Write { len, seed },
                _ => Step::Lseek { off: self.aligned_offset(size) as i64, whence: Whence::Set },
            });
        }
        Op::Fd { path: self.p(&rel), flags, mode: 0o644, steps }
    }

    fn aio(&mut self) -> Op {
        let (rel, size) = self.file(20);
        let direct = self.rng.coin();
        let writes = (0..self.rng.range(1, 7))
            .map(|_| {
                let (off, len) = if direct {
                    (self.aligned_offset(size), self.aligned_len(32))
                } else {
                    (self.offset(size), self.len().min(256 * KIB as u32))
                };
                AioWrite { off, len, seed: self.seed(), vectored: self.rng.percent(30) }
            })
            .collect();
        Op::Aio { path: self.p(&rel), direct, writes }
    }

    fn uring(&mut self) -> Op {
        let (rel, size) = self.file(20);
        let direct = self.rng.percent(30);
        let writes = (0..self.rng.range(1, 9))
            .map(|_| {
                let (off, len) = if direct {
                    (self.aligned_offset(size), self.aligned_len(32))
                } else {
                    (self.offset(size), self.len().min(256 * KIB as u32))
                };
                let kind = *self.rng.pick(&[UringWriteKind::Write, UringWriteKind::Writev, UringWriteKind::WriteFixed]);
                UringWrite { kind, off, len, seed: self.seed() }
            })
            .collect();
        Op::Uring { path: self.p(&rel), direct, writes }
    }

    fn uring_ns(&mut self) -> Op {
        let call = match self.rng.weighted(&[20, 20, 10, 5, 10, 5, 10, 10, 5, 5]) {
            0 => {
                let (rel, _) = self.file(50);
                let len = if self.rng.coin() { 0 } else { self.len().min(64 * KIB as u32) };
                UringCall::Create { path: self.p(&rel), mode: self.mode(false), trunc: self.rng.percent(30), len, seed: self.seed() }
            }
            1 => {
                let (from, _) = self.any_entry();
                let to = self.target_name(&FILE_NAMES);
                let via = self.via();
                UringCall::Rename { from: P::new(via, &from), to: P::new(via, &to), mode: self.rename_mode() }
            }
            2 => {
                let (rel, _) = self.any_entry();
                UringCall::Unlink { path: self.p(&rel) }
            }
            3 => match self.subdir() {
                Some(dir) => UringCall::Rmdir { path: self.p(&dir) },
                None => UringCall::Unlink { path: self.p(&format!("w{}/f0", self.worker)) },
            },
            4 => {
                let rel = self.mkdir_target();
                UringCall::Mkdir { path: self.p(&rel), mode: self.mode(true) }
            }
            5 => {
                let rel = self.target_name(&LINK_NAMES);
                UringCall::Symlink { target: self.symlink_target(), path: self.p(&rel) }
            }
            6 => {
                let (from, _) = self.file(0);
                let to = self.target_name(&FILE_NAMES);
                let via = self.via();
                UringCall::Link { from: P::new(via, &from), to: P::new(via, &to) }
            }
            7 => {
                let (rel, size) = self.file(0);
                let (mode, off, len) = self.fallocate_args(size);
                UringCall::Fallocate { path: self.p(&rel), mode, off, len }
            }
            8 => {
                let (rel, size) = self.file(0);
                let size = self.new_size(size);
                UringCall::Ftruncate { path: self.p(&rel), size }
            }
            _ => {
                let (rel, _) = self.any_entry();
                UringCall::Setxattr {
                    path: self.p(&rel),
                    name: format!("user.u{}", self.rng.below(3)),
                    len: self.rng.below(200) as u32,
                    seed: self.seed(),
                }
            }
        };
        Op::UringNs(call)
    }

    fn truncate(&mut self) -> Op {
        let (rel, size) = self.file(10);
        let path = self.p(&rel);
        match self.rng.weighted(&[25, 50, 25]) {
            0 => Op::Truncate { path, size: self.new_size(size) },
            1 => {
                // Shrink, maybe write, then grow: the grown range must read as zeros.
                let shrunk = self.rng.below(size + 1);
                let mut steps = vec![Step::Ftruncate { size: shrunk }];
                if self.rng.coin() {
                    let off = self.offset(shrunk);
                    steps.push(Step::Pwrite { off, len: self.len().min(64 * KIB as u32), seed: self.seed() });
                }
                let grown = shrunk + self.rng.range(1, 2 * MIB);
                steps.push(Step::Ftruncate { size: grown });
                Op::Fd { path, flags: vec![OpenFlag::Creat], mode: 0o644, steps }
            }
            _ => {
                // The shape of issue #9's known case: empty it, write past a hole,
                // extend far beyond.
                let off = self.rng.range(1, 4) * 4 * KIB;
                let steps = vec![
                    Step::Ftruncate { size: 0 },
                    Step::Pwrite { off, len: self.rng.range(1, 8 * KIB) as u32, seed: self.seed() },
                    Step::Ftruncate { size: self.rng.range(1, 3) * MIB },
                ];
                Op::Fd { path, flags: vec![OpenFlag::Creat], mode: 0o644, steps }
            }
        }
    }

    fn fallocate_args(&mut self, size: u64) -> (FallocMode, u64, u64) {
        let mode = *self.rng.pick(&FallocMode::ALL);
        if mode.needs_alignment() {
            let blocks = (size / BLOCK).max(1);
            let off = self.rng.below(blocks) * BLOCK;
            let len = if mode == FallocMode::InsertRange && size > SIZE_CAP {
                BLOCK
            } else {
                self.rng.range(1, (blocks.min(256)) + 1) * BLOCK
            };
            (mode, off, len)
        } else {
            let off = if self.rng.percent(70) { self.offset(size) } else { self.rng.below(size + 1) / BLOCK * BLOCK };
            let len = if self.rng.percent(60) { self.rng.range(1, 2 * MIB) } else { self.aligned_len(256) as u64 };
            (mode, off, len)
        }
    }

    fn fallocate(&mut self) -> Op {
        let (rel, size) = self.file(10);
        let mut steps = Vec::new();
        for _ in 0..self.rng.range(1, 3) {
            let (mode, off, len) = self.fallocate_args(size);
            steps.push(Step::Fallocate { mode, off, len });
        }
        if self.rng.percent(30) {
            let off = self.offset(size);
            steps.push(Step::Pwrite { off, len: self.len().min(64 * KIB as u32), seed: self.seed() });
        }
        Op::Fd { path: self.p(&rel), flags: vec![OpenFlag::Creat], mode: 0o644, steps }
    }

    fn copy(&mut self) -> Op {
        let (src_rel, src_size) = self.file(0);
        let (dst_rel, dst_size) = self.file(30);
        let via = self.via();
        let src = if self.rng.percent(5) { P::new(Via::Out, self.outside_name()) } else { P::new(via, &src_rel) };
        let dst = P::new(via, &dst_rel);
        let src_off = self.rng.below(src_size + 1);
        let len = if self.rng.percent(10) { self.rng.range(1, MIB) } else { self.rng.range(0, (src_size - src_off).min(MIB) + 1) };
        let dst_off = self.offset(dst_size);
        match self.rng.below(3) {
            0 => Op::CopyFileRange { src, dst, src_off, dst_off, len },
            1 => Op::Sendfile { src, dst, src_off, dst_off, len },
            _ => Op::Splice { src, dst, src_off, dst_off, len },
        }
    }

    fn clone_op(&mut self) -> Op {
        let (src_rel, src_size) = self.file(0);
        let (dst_rel, dst_size) = self.file(30);
        let via = self.via();
        let (src, dst) = (P::new(via, &src_rel), P::new(via, &dst_rel));
        let blocks = src_size / BLOCK;
        let src_off = self.rng.below(blocks + 1) * BLOCK;
        let len = if self.rng.percent(20) { 0 } else { self.rng.range(1, (blocks.saturating_sub(src_off / BLOCK)).clamp(1, 256) + 1) * BLOCK };
        let dst_off = self.rng.below(dst_size / BLOCK + 2) * BLOCK;
        match self.rng.weighted(&[30, 45, 25]) {
            0 => Op::Ficlone { src, dst },
            1 => Op::Ficlonerange { src, dst, src_off, dst_off, len },
            _ => Op::Dedupe { src, dst, src_off, dst_off, len: len.max(BLOCK) },
        }
    }

    fn tmpfile(&mut self) -> Op {
        let dir = self.dir();
        let name = self.target_name(&FILE_NAMES);
        let via = self.via();
        Op::Tmpfile {
            dir: P::new(via, &dir),
            path: P::new(via, &name),
            mode: self.mode(false),
            len: self.len().min(256 * KIB as u32),
            seed: self.seed(),
        }
    }

    fn rename_mode(&mut self) -> RenameMode {
        match self.rng.weighted(&[60, 20, 20]) {
            0 => RenameMode::Plain,
            1 => RenameMode::Noreplace,
            _ => RenameMode::Exchange,
        }
    }

    fn rename(&mut self) -> Op {
        match self.rng.weighted(&[35, 15, 15, 15, 20]) {
            0 => {
                let (from, _) = self.any_entry();
                let to = self.target_name(&FILE_NAMES);
                let via = self.via();
                Op::Rename { from: P::new(via, &from), to: P::new(via, &to), mode: self.rename_mode() }
            }
            1 => match self.subdir() {
                Some(from) => {
                    let to = self.mkdir_target();
                    let via = self.via();
                    Op::Rename { from: P::new(via, &from), to: P::new(via, &to), mode: self.rename_mode() }
                }
                None => self.mkdir(),
            },
            2 => {
                // Out of the tree: a file or a whole directory leaves the watched root.
                let (from, _) = if self.rng.percent(30) {
                    self.subdir().map_or_else(|| self.any_entry(), |d| (d, Kind::Dir))
                } else {
                    self.any_entry()
                };
                let via = self.via_same_mount();
                let mode = if self.rng.percent(70) { RenameMode::Plain } else { self.rename_mode() };
                Op::Rename { from: P::new(via, &from), to: P::new(Via::Out, self.outside_name()), mode }
            }
            3 => {
                // Into the tree: something that changed outside appears, complete.
                let outside = self.outside_entries();
                let from = if outside.is_empty() { self.outside_name().to_owned() } else { self.rng.pick(&outside).clone() };
                let to = self.target_name(&FILE_NAMES);
                let via = self.via_same_mount();
                let mode = if self.rng.percent(70) { RenameMode::Plain } else { self.rename_mode() };
                Op::Rename { from: P::new(Via::Out, &from), to: P::new(via, &to), mode }
            }
            _ => {
                // Over an existing file.
                let (from, _) = self.file(0);
                let (to, _) = self.file(0);
                let via = self.via();
                Op::Rename { from: P::new(via, &from), to: P::new(via, &to), mode: RenameMode::Plain }
            }
        }
    }

    fn link(&mut self) -> Op {
        match self.rng.weighted(&[75, 15, 10]) {
            0 => {
                let (from, _) = self.file(0);
                let to = self.target_name(&FILE_NAMES);
                let via = self.via();
                Op::Link { from: P::new(via, &from), to: P::new(via, &to) }
            }
            1 => {
                // A second name outside the tree: writes through it change the tree.
                let (from, _) = self.file(0);
                let via = self.via_same_mount();
                Op::Link { from: P::new(via, &from), to: P::new(Via::Out, self.outside_name()) }
            }
            _ => {
                let to = self.target_name(&FILE_NAMES);
                let via = self.via_same_mount();
                Op::Link { from: P::new(Via::Out, self.outside_name()), to: P::new(via, &to) }
            }
        }
    }

    /// A symlink target that resolves (if at all) within the directory or its
    /// parent, never above the master filesystem: workers open through symlinks.
    fn symlink_target(&mut self) -> String {
        match self.rng.weighted(&[30, 25, 20, 15, 10]) {
            0 => self.rng.pick(&FILE_NAMES).to_string(),
            1 => format!("../{}", self.rng.pick(&FILE_NAMES)),
            2 => format!("../{}/{}", self.rng.pick(&DIR_NAMES), self.rng.pick(&FILE_NAMES)),
            3 => self.rng.pick(&DIR_NAMES).to_string(),
            _ => format!("dangling-{}", self.rng.below(1000)),
        }
    }

    fn symlink(&mut self) -> Op {
        let rel = self.target_name(&LINK_NAMES);
        Op::Symlink { target: self.symlink_target(), path: self.p(&rel) }
    }

    fn fifo(&mut self) -> Op {
        let rel = self.target_name(&FIFO_NAMES);
        Op::Mkfifo { path: self.p(&rel), mode: self.mode(false) & 0o777 }
    }

    fn create(&mut self) -> Op {
        if self.rng.percent(55) {
            let (rel, _) = self.file(60);
            Op::Create { path: self.p(&rel), mode: self.mode(false), excl: self.rng.coin() }
        } else {
            let (rel, _) = self.any_entry();
            Op::Unlink { path: self.p(&rel) }
        }
    }

    /// A pool name for a new directory in a directory not yet too deep.
    fn mkdir_target(&mut self) -> String {
        for _ in 0..8 {
            let dir = self.dir();
            if dir.split('/').count() <= MAX_MKDIR_DEPTH {
                return format!("{dir}/{}", self.rng.pick(&DIR_NAMES));
            }
        }
        format!("w{}/{}", self.worker, self.rng.pick(&DIR_NAMES))
    }

    fn mkdir(&mut self) -> Op {
        let rel = self.mkdir_target();
        Op::Mkdir { path: self.p(&rel), mode: self.mode(true) | 0o700 }
    }

    fn dir_op(&mut self) -> Op {
        match self.rng.weighted(&[50, 30, 20]) {
            0 => self.mkdir(),
            1 => match self.subdir() {
                Some(dir) => Op::Rmdir { path: self.p(&dir) },
                None => self.mkdir(),
            },
            _ => match self.subdir() {
                Some(dir) => Op::RemoveTree { path: self.p(&dir) },
                None => self.mkdir(),
            },
        }
    }

    fn time(&mut self) -> Time {
        match self.rng.weighted(&[70, 15, 15]) {
            0 => Time::At { sec: self.rng.range(0, 2_000_000_000) as i64, nsec: self.rng.below(1_000_000_000) as i64 },
            1 => Time::Now,
            _ => Time::Omit,
        }
    }

    fn id(&mut self) -> u32 {
        *self.rng.pick(&[0, 0, 1000, 1001, 65534])
    }

    fn meta(&mut self) -> Op {
        let (rel, kind) = self.any_entry();
        let path = self.p(&rel);
        match self.rng.weighted(&[35, 25, 40]) {
            0 => Op::Chmod { path, mode: self.mode(kind == Kind::Dir) },
            1 => Op::Chown { path, uid: self.id(), gid: self.id(), nofollow: self.rng.percent(30) },
            _ => Op::Utimens { path, atime: self.time(), mtime: self.time(), nofollow: self.rng.percent(20) },
        }
    }

    fn xattr(&mut self) -> Op {
        let (rel, _) = self.any_entry();
        let path = self.p(&rel);
        let name = format!("user.x{}", self.rng.below(4));
        if self.rng.percent(75) {
            let len = if self.rng.percent(5) { self.rng.range(1000, 3500) } else { self.rng.below(256) } as u32;
            Op::SetXattr { path, name, len, seed: self.seed(), flags: *self.rng.pick(&[0, 0, 1, 2]) }
        } else {
            Op::RemoveXattr { path, name }
        }
    }

    fn acl(&mut self) -> Op {
        let (rel, kind) = if self.rng.coin() {
            self.subdir().map_or_else(|| self.any_entry(), |d| (d, Kind::Dir))
        } else {
            self.any_entry()
        };
        let path = self.p(&rel);
        let default = kind == Kind::Dir && self.rng.percent(40);
        if self.rng.percent(20) {
            return Op::RemoveAcl { path, default };
        }
        let perm = |rng: &mut Rng| rng.below(8) as u16;
        let mut entries = vec![
            AclEntry { tag: ACL_USER_OBJ, perm: perm(&mut self.rng), id: 0 },
            AclEntry { tag: ACL_GROUP_OBJ, perm: perm(&mut self.rng), id: 0 },
            AclEntry { tag: ACL_OTHER, perm: perm(&mut self.rng), id: 0 },
        ];
        let named = self.rng.below(3);
        for i in 0..named {
            let tag = if self.rng.coin() { ACL_USER } else { ACL_GROUP };
            entries.push(AclEntry { tag, perm: perm(&mut self.rng), id: 1000 + i as u32 * 7 });
        }
        if named > 0 {
            entries.push(AclEntry { tag: ACL_MASK, perm: perm(&mut self.rng), id: 0 });
        }
        Op::SetAcl { path, default, entries }
    }

    fn shared_fd(&mut self) -> Op {
        let (rel, _) = self.file(30);
        Op::SharedFd {
            path: self.p(&rel),
            trunc: self.rng.percent(30),
            threads: 2,
            writes: self.rng.range(2, 21) as u32,
            len: self.rng.range(1, 16 * KIB) as u32,
            seed: self.seed(),
        }
    }

    fn mixed(&mut self) -> Op {
        let (rel, size) = self.file(10);
        // What the file's size should be after each step, so mapped stores mostly
        // land inside it (and sometimes, deliberately, just past it).
        let mut size = size;
        let mut steps = Vec::new();
        for _ in 0..self.rng.range(3, 9) {
            let step = match self.rng.weighted(&[25, 10, 25, 15, 20, 5]) {
                0 => {
                    let off = self.offset(size);
                    let len = self.len().min(256 * KIB as u32);
                    size = size.max(off + u64::from(len));
                    Step::Pwrite { off, len, seed: self.seed() }
                }
                1 => Step::Write { len: self.len().min(64 * KIB as u32), seed: self.seed() },
                2 => {
                    size = self.new_size(size);
                    Step::Ftruncate { size }
                }
                3 => {
                    let (mode, off, len) = self.fallocate_args(size);
                    size = match mode {
                        FallocMode::Default | FallocMode::ZeroRange => size.max(off + len),
                        FallocMode::CollapseRange if off + len < size => size - len,
                        FallocMode::InsertRange if off < size => size + len,
                        _ => size,
                    };
                    Step::Fallocate { mode, off, len }
                }
                4 => {
                    if size == 0 || self.rng.percent(10) {
                        Step::Mmap { off: size + self.rng.below(2 * BLOCK), len: 16, seed: self.seed(), msync: Msync::None }
                    } else {
                        self.mmap_step(size)
                    }
                }
                _ => self.rng.pick(&[Step::Fsync, Step::Fdatasync]).clone(),
            };
            steps.push(step);
        }
        Op::Fd { path: self.p(&rel), flags: vec![OpenFlag::Creat], mode: 0o644, steps }
    }
}
