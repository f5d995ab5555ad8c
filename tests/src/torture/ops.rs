//! What a worker does, as data: the operation classes, how a path is reached, and
//! every operation with concrete arguments, so that a logged operation can be
//! printed, matched against a differing path, and executed again by `--replay`.

use std::fmt;
use std::str::FromStr;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// A family of operations that can be switched on and off with `--classes`, so a
/// failure can be attributed to one kind of change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// write, pwrite, writev, pwritev, O_APPEND writes, pwrite on an O_APPEND fd,
    /// pwritev2 with RWF_APPEND.
    Write,
    /// Stores through MAP_SHARED mappings, with and without msync.
    Mmap,
    /// O_DIRECT writes from aligned buffers.
    Direct,
    /// Native AIO (io_submit) writes.
    Aio,
    /// io_uring WRITE, WRITEV and WRITE_FIXED.
    Uring,
    /// io_uring namespace operations (openat, renameat, unlinkat, mkdirat, ...).
    UringNs,
    /// truncate and ftruncate that shrink then grow.
    Truncate,
    /// Every fallocate mode.
    Fallocate,
    /// copy_file_range, sendfile, splice.
    Copy,
    /// FICLONE, FICLONERANGE, FIDEDUPERANGE.
    Clone,
    /// O_TMPFILE then linkat.
    Tmpfile,
    /// rename, RENAME_NOREPLACE, RENAME_EXCHANGE, of files and directories, into and
    /// out of the tree.
    Rename,
    /// Hard links, including to a name outside the tree.
    Link,
    Symlink,
    /// mkfifo.
    Fifo,
    /// Creating and unlinking files.
    Create,
    /// mkdir, rmdir, removing a whole subtree.
    Dir,
    /// chmod, chown, utimensat.
    Meta,
    /// `user.*` extended attributes.
    Xattr,
    /// POSIX ACLs, written as raw `system.posix_acl_*` attributes.
    Acl,
    /// Two threads writing through one fd, sharing its file position.
    SharedFd,
    /// One fd, several steps drawn from writes, mapped stores, truncates and
    /// fallocate: the interleavings the other classes do not produce.
    Mixed,
}

impl Class {
    pub const ALL: [Class; 22] = [
        Class::Write,
        Class::Mmap,
        Class::Direct,
        Class::Aio,
        Class::Uring,
        Class::UringNs,
        Class::Truncate,
        Class::Fallocate,
        Class::Copy,
        Class::Clone,
        Class::Tmpfile,
        Class::Rename,
        Class::Link,
        Class::Symlink,
        Class::Fifo,
        Class::Create,
        Class::Dir,
        Class::Meta,
        Class::Xattr,
        Class::Acl,
        Class::SharedFd,
        Class::Mixed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::Write => "write",
            Class::Mmap => "mmap",
            Class::Direct => "direct",
            Class::Aio => "aio",
            Class::Uring => "uring",
            Class::UringNs => "uring-ns",
            Class::Truncate => "truncate",
            Class::Fallocate => "fallocate",
            Class::Copy => "copy",
            Class::Clone => "clone",
            Class::Tmpfile => "tmpfile",
            Class::Rename => "rename",
            Class::Link => "link",
            Class::Symlink => "symlink",
            Class::Fifo => "fifo",
            Class::Create => "create",
            Class::Dir => "dir",
            Class::Meta => "meta",
            Class::Xattr => "xattr",
            Class::Acl => "acl",
            Class::SharedFd => "shared-fd",
            Class::Mixed => "mixed",
        }
    }

    /// How often the class is drawn relative to the others when all are enabled:
    /// data paths dominate, as they do in real workloads, but every class shows up
    /// dozens of times in a few thousand operations.
    pub fn weight(self) -> u64 {
        match self {
            Class::Write | Class::Rename => 10,
            Class::Mixed | Class::Truncate | Class::Mmap | Class::Fallocate => 6,
            Class::Create | Class::Dir | Class::Meta | Class::Copy => 5,
            Class::Direct | Class::Aio | Class::Uring | Class::Link | Class::Xattr => 4,
            Class::UringNs | Class::Clone | Class::Tmpfile | Class::Symlink | Class::Acl => 3,
            Class::SharedFd | Class::Fifo => 2,
        }
    }
}

impl FromStr for Class {
    type Err = anyhow::Error;

    fn from_str(name: &str) -> anyhow::Result<Class> {
        Class::ALL
            .into_iter()
            .find(|class| class.name() == name)
            .with_context(|| {
                let names: Vec<&str> = Class::ALL.iter().map(|c| c.name()).collect();
                format!("unknown operation class `{name}` (one of {})", names.join(", "))
            })
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a worker names a path inside the tree. The agent must resolve all of them to
/// the same entry, so each is a way for capture to go wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Via {
    /// `<mnt>/tree/REL`.
    Abs,
    /// `<bind>/REL`, through a bind mount of the tree.
    Bind,
    /// `REL` from cwd `<mnt>/tree`.
    Cwd,
    /// `tree/REL` from cwd `<mnt>`: inside the watched filesystem, outside the tree.
    FsRoot,
    /// `<mnt name>/tree/REL` from cwd = the parent of the mount point, i.e. a cwd on
    /// another filesystem.
    Up,
    /// `*at(dirfd of <mnt>/tree/dirname(REL), basename(REL))`.
    DirFd,
    /// `<mnt>/outside/REL`: same filesystem, outside the watched tree.
    Out,
}

impl Via {
    /// The ways into the tree selectable with `--access` (`Out` is an area, not an
    /// access mode, and is always used for moves in and out).
    pub const TREE: [Via; 6] = [Via::Abs, Via::Bind, Via::Cwd, Via::FsRoot, Via::Up, Via::DirFd];

    pub fn name(self) -> &'static str {
        match self {
            Via::Abs => "abs",
            Via::Bind => "bind",
            Via::Cwd => "cwd",
            Via::FsRoot => "fsroot",
            Via::Up => "up",
            Via::DirFd => "dirfd",
            Via::Out => "out",
        }
    }
}

impl FromStr for Via {
    type Err = anyhow::Error;

    fn from_str(name: &str) -> anyhow::Result<Via> {
        Via::TREE
            .into_iter()
            .chain([Via::Out])
            .find(|via| via.name() == name)
            .with_context(|| format!("unknown access mode `{name}` (abs, bind, cwd, fsroot, up, dirfd)"))
    }
}

/// A path as a worker used it: `via:rel`, e.g. `bind:shared0/d1/f3` or `out:o2`.
/// `rel` is relative to the tree (or to `<mnt>/outside` for `out:`), so the same
/// entry has the same `rel` whichever way it was reached.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct P(pub String);

impl P {
    pub fn new(via: Via, rel: &str) -> P {
        P(format!("{}:{rel}", via.name()))
    }

    pub fn via(&self) -> Via {
        self.split().0
    }

    pub fn rel(&self) -> &str {
        self.split().1
    }

    /// The path relative to the master filesystem's root: `tree/REL` or
    /// `outside/REL`. Used to relate operations to each other across areas.
    pub fn fs_rel(&self) -> String {
        match self.via() {
            Via::Out => format!("outside/{}", self.rel()),
            _ => format!("tree/{}", self.rel()),
        }
    }

    fn split(&self) -> (Via, &str) {
        let (via, rel) = self.0.split_once(':').unwrap_or(("abs", &self.0));
        (via.parse().unwrap_or(Via::Abs), rel)
    }

    pub fn check(&self) -> anyhow::Result<()> {
        let Some((via, rel)) = self.0.split_once(':') else {
            bail!("path `{}` has no `via:` prefix", self.0)
        };
        via.parse::<Via>()?;
        if rel.is_empty() || rel.starts_with('/') || rel.split('/').any(|c| c == ".." || c.is_empty()) {
            bail!("path `{}` must be relative and stay below its area", self.0);
        }
        Ok(())
    }
}

impl fmt::Display for P {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `open(2)` flags, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpenFlag {
    /// Write-only (the default access mode is read-write).
    Wronly,
    Creat,
    Excl,
    Trunc,
    Append,
    Direct,
    Sync,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FallocMode {
    Default,
    KeepSize,
    /// PUNCH_HOLE | KEEP_SIZE (the kernel requires both).
    PunchHole,
    ZeroRange,
    ZeroRangeKeepSize,
    CollapseRange,
    InsertRange,
}

impl FallocMode {
    pub const ALL: [FallocMode; 7] = [
        FallocMode::Default,
        FallocMode::KeepSize,
        FallocMode::PunchHole,
        FallocMode::ZeroRange,
        FallocMode::ZeroRangeKeepSize,
        FallocMode::CollapseRange,
        FallocMode::InsertRange,
    ];

    pub fn bits(self) -> i32 {
        const KEEP_SIZE: i32 = 0x01;
        const PUNCH_HOLE: i32 = 0x02;
        const COLLAPSE_RANGE: i32 = 0x08;
        const ZERO_RANGE: i32 = 0x10;
        const INSERT_RANGE: i32 = 0x20;
        match self {
            FallocMode::Default => 0,
            FallocMode::KeepSize => KEEP_SIZE,
            FallocMode::PunchHole => PUNCH_HOLE | KEEP_SIZE,
            FallocMode::ZeroRange => ZERO_RANGE,
            FallocMode::ZeroRangeKeepSize => ZERO_RANGE | KEEP_SIZE,
            FallocMode::CollapseRange => COLLAPSE_RANGE,
            FallocMode::InsertRange => INSERT_RANGE,
        }
    }

    /// Collapse and insert need offsets and lengths aligned to the block size.
    pub fn needs_alignment(self) -> bool {
        matches!(self, FallocMode::CollapseRange | FallocMode::InsertRange)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Msync {
    None,
    Sync,
    Async,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Whence {
    Set,
    Cur,
    End,
}

/// One call on the fd an [`Op::Fd`] opened. Data is `random_bytes(len, seed)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Write { len: u32, seed: u64 },
    Pwrite { off: u64, len: u32, seed: u64 },
    Writev { lens: Vec<u32>, seed: u64 },
    Pwritev { off: u64, lens: Vec<u32>, seed: u64 },
    /// `pwritev2(fd, iov, off, append ? RWF_APPEND : 0)`.
    Pwritev2 { off: i64, lens: Vec<u32>, seed: u64, append: bool },
    Lseek { off: i64, whence: Whence },
    Ftruncate { size: u64 },
    Fallocate { mode: FallocMode, off: u64, len: u64 },
    /// Maps `[off, off+len)` MAP_SHARED, stores the data, optionally msyncs, unmaps.
    /// A store beyond EOF (the file shrank meanwhile) raises SIGBUS, which the
    /// worker survives and reports.
    Mmap { off: u64, len: u32, seed: u64, msync: Msync },
    Fsync,
    Fdatasync,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RenameMode {
    Plain,
    Noreplace,
    Exchange,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UringWriteKind {
    Write,
    Writev,
    WriteFixed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UringWrite {
    pub kind: UringWriteKind,
    pub off: u64,
    pub len: u32,
    pub seed: u64,
}

/// One native AIO write (`IOCB_CMD_PWRITE`, or `PWRITEV` when `vectored`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AioWrite {
    pub off: u64,
    pub len: u32,
    pub seed: u64,
    pub vectored: bool,
}

/// A namespace or metadata call submitted through io_uring.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "call")]
pub enum UringCall {
    /// OPENAT with O_CREAT (O_TRUNC when `trunc`), then a ring WRITE of `len` bytes
    /// at 0 when `len > 0`, then CLOSE.
    Create { path: P, mode: u32, trunc: bool, len: u32, seed: u64 },
    Rename { from: P, to: P, mode: RenameMode },
    Unlink { path: P },
    Rmdir { path: P },
    Mkdir { path: P, mode: u32 },
    Symlink { target: String, path: P },
    Link { from: P, to: P },
    /// FALLOCATE on a file opened normally.
    Fallocate { path: P, mode: FallocMode, off: u64, len: u64 },
    /// FTRUNCATE on a file opened normally.
    Ftruncate { path: P, size: u64 },
    Setxattr { path: P, name: String, len: u32, seed: u64 },
}

/// A timestamp argument of `utimensat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Time {
    Now,
    Omit,
    At { sec: i64, nsec: i64 },
}

/// One POSIX ACL entry: `tag` is the on-disk ACL_* tag (1 USER_OBJ, 2 USER, 4
/// GROUP_OBJ, 8 GROUP, 0x10 MASK, 0x20 OTHER).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclEntry {
    pub tag: u16,
    pub perm: u16,
    pub id: u32,
}

/// One logged operation. Workers treat each as self-contained: every fd it opens is
/// closed before the next one starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Op {
    /// Opens `path` and runs `steps` on that one fd.
    Fd { path: P, flags: Vec<OpenFlag>, mode: u32, steps: Vec<Step> },
    /// `truncate(2)` by path.
    Truncate { path: P, size: u64 },
    CopyFileRange { src: P, dst: P, src_off: u64, dst_off: u64, len: u64 },
    /// `lseek(dst, dst_off)`, then `sendfile(dst, src, &src_off, len)`.
    Sendfile { src: P, dst: P, src_off: u64, dst_off: u64, len: u64 },
    /// `src` → pipe → `dst` at `dst_off`, in pipe-sized rounds.
    Splice { src: P, dst: P, src_off: u64, dst_off: u64, len: u64 },
    Ficlone { src: P, dst: P },
    Ficlonerange { src: P, dst: P, src_off: u64, dst_off: u64, len: u64 },
    Dedupe { src: P, dst: P, src_off: u64, dst_off: u64, len: u64 },
    /// `open(dir, O_TMPFILE)`, write `len` bytes, `linkat(fd, "", path, AT_EMPTY_PATH)`.
    Tmpfile { dir: P, path: P, mode: u32, len: u32, seed: u64 },
    Aio { path: P, direct: bool, writes: Vec<AioWrite> },
    Uring { path: P, direct: bool, writes: Vec<UringWrite> },
    UringNs(UringCall),
    /// `threads` threads each issue `writes` plain `write`s of `len` bytes through
    /// one fd (opened with O_TRUNC when `trunc`).
    SharedFd { path: P, trunc: bool, threads: u32, writes: u32, len: u32, seed: u64 },
    Create { path: P, mode: u32, excl: bool },
    Unlink { path: P },
    Mkdir { path: P, mode: u32 },
    Rmdir { path: P },
    /// Removes a directory and everything below it.
    RemoveTree { path: P },
    Rename { from: P, to: P, mode: RenameMode },
    Link { from: P, to: P },
    Symlink { target: String, path: P },
    Mkfifo { path: P, mode: u32 },
    Chmod { path: P, mode: u32 },
    Chown { path: P, uid: u32, gid: u32, nofollow: bool },
    Utimens { path: P, atime: Time, mtime: Time, nofollow: bool },
    /// `setxattr(path, name, random_bytes(len, seed), flags)`; flags 0, 1 CREATE, 2 REPLACE.
    SetXattr { path: P, name: String, len: u32, seed: u64, flags: i32 },
    RemoveXattr { path: P, name: String },
    /// Writes `system.posix_acl_default` when `default`, else `..._access`.
    SetAcl { path: P, default: bool, entries: Vec<AclEntry> },
    RemoveAcl { path: P, default: bool },
}

impl Op {
    /// Every path the operation names, for relating it to a differing path.
    pub fn paths(&self) -> Vec<&P> {
        match self {
            Op::Fd { path, .. }
            | Op::Truncate { path, .. }
            | Op::Aio { path, .. }
            | Op::Uring { path, .. }
            | Op::SharedFd { path, .. }
            | Op::Create { path, .. }
            | Op::Unlink { path }
            | Op::Mkdir { path, .. }
            | Op::Rmdir { path }
            | Op::RemoveTree { path }
            | Op::Symlink { path, .. }
            | Op::Mkfifo { path, .. }
            | Op::Chmod { path, .. }
            | Op::Chown { path, .. }
            | Op::Utimens { path, .. }
            | Op::SetXattr { path, .. }
            | Op::RemoveXattr { path, .. }
            | Op::SetAcl { path, .. }
            | Op::RemoveAcl { path, .. } => vec![path],
            Op::CopyFileRange { src, dst, .. }
            | Op::Sendfile { src, dst, .. }
            | Op::Splice { src, dst, .. }
            | Op::Ficlone { src, dst }
            | Op::Ficlonerange { src, dst, .. }
            | Op::Dedupe { src, dst, .. } => vec![src, dst],
            Op::Tmpfile { dir, path, .. } => vec![dir, path],
            Op::Rename { from, to, .. } | Op::Link { from, to } => vec![from, to],
            Op::UringNs(call) => match call {
                UringCall::Create { path, .. }
                | UringCall::Unlink { path }
                | UringCall::Rmdir { path }
                | UringCall::Mkdir { path, .. }
                | UringCall::Symlink { path, .. }
                | UringCall::Fallocate { path, .. }
                | UringCall::Ftruncate { path, .. }
                | UringCall::Setxattr { path, .. } => vec![path],
                UringCall::Rename { from, to, .. } | UringCall::Link { from, to } => vec![from, to],
            },
        }
    }

    /// The paths whose *identity* flows into another path (the old name of a
    /// rename, the source of a link or copy): following them back in time finds
    /// where a differing entry's contents came from.
    pub fn sources(&self) -> Vec<&P> {
        match self {
            Op::Rename { from, to, .. } | Op::Link { from, to } => vec![from, to],
            Op::UringNs(UringCall::Rename { from, to, .. } | UringCall::Link { from, to }) => {
                vec![from, to]
            }
            Op::CopyFileRange { src, .. }
            | Op::Sendfile { src, .. }
            | Op::Splice { src, .. }
            | Op::Ficlone { src, .. }
            | Op::Ficlonerange { src, .. }
            | Op::Dedupe { src, .. } => vec![src],
            _ => Vec::new(),
        }
    }

    /// A short name for summaries: the syscall (or the fd steps) it stands for.
    pub fn kind(&self) -> String {
        match self {
            Op::Fd { flags, steps, .. } => {
                let mut names: Vec<&str> = steps.iter().map(step_name).collect();
                names.dedup();
                let mut kind = names.join("+");
                if flags.contains(&OpenFlag::Append) {
                    kind.insert_str(0, "append:");
                }
                if flags.contains(&OpenFlag::Direct) {
                    kind.insert_str(0, "direct:");
                }
                kind
            }
            Op::UringNs(call) => format!(
                "uring_{}",
                match call {
                    UringCall::Create { .. } => "create",
                    UringCall::Rename { .. } => "rename",
                    UringCall::Unlink { .. } => "unlink",
                    UringCall::Rmdir { .. } => "rmdir",
                    UringCall::Mkdir { .. } => "mkdir",
                    UringCall::Symlink { .. } => "symlink",
                    UringCall::Link { .. } => "link",
                    UringCall::Fallocate { .. } => "fallocate",
                    UringCall::Ftruncate { .. } => "ftruncate",
                    UringCall::Setxattr { .. } => "setxattr",
                }
            ),
            Op::Rename { mode, .. } => format!("rename_{mode:?}").to_lowercase(),
            other => serde_json::to_value(other)
                .ok()
                .and_then(|v| v.get("op").and_then(|o| o.as_str()).map(str::to_owned))
                .unwrap_or_else(|| "?".into()),
        }
    }
}

fn step_name(step: &Step) -> &'static str {
    match step {
        Step::Write { .. } => "write",
        Step::Pwrite { .. } => "pwrite",
        Step::Writev { .. } => "writev",
        Step::Pwritev { .. } => "pwritev",
        Step::Pwritev2 { append: true, .. } => "pwritev2_append",
        Step::Pwritev2 { .. } => "pwritev2",
        Step::Lseek { .. } => "lseek",
        Step::Ftruncate { .. } => "ftruncate",
        Step::Fallocate { mode, .. } => match mode {
            FallocMode::Default => "fallocate",
            FallocMode::KeepSize => "fallocate_keep",
            FallocMode::PunchHole => "punch_hole",
            FallocMode::ZeroRange => "zero_range",
            FallocMode::ZeroRangeKeepSize => "zero_range_keep",
            FallocMode::CollapseRange => "collapse_range",
            FallocMode::InsertRange => "insert_range",
        },
        Step::Mmap { msync: Msync::None, .. } => "mmap",
        Step::Mmap { .. } => "mmap_msync",
        Step::Fsync => "fsync",
        Step::Fdatasync => "fdatasync",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_keep_their_access_mode() {
        let p = P::new(Via::Bind, "shared0/d1/f3");
        assert_eq!(p.0, "bind:shared0/d1/f3");
        assert_eq!(p.via(), Via::Bind);
        assert_eq!(p.rel(), "shared0/d1/f3");
        assert_eq!(p.fs_rel(), "tree/shared0/d1/f3");
        assert_eq!(P::new(Via::Out, "o1").fs_rel(), "outside/o1");
        p.check().unwrap();
        assert!(P("abs:../etc".into()).check().is_err());
        assert!(P("nope".into()).check().is_err());
    }

    #[test]
    fn ops_round_trip_through_json() {
        let op = Op::Fd {
            path: P::new(Via::Cwd, "w0/f1"),
            flags: vec![OpenFlag::Creat, OpenFlag::Append],
            mode: 0o644,
            steps: vec![
                Step::Ftruncate { size: 0 },
                Step::Pwrite { off: 8192, len: 10, seed: 3 },
                Step::Fallocate { mode: FallocMode::PunchHole, off: 0, len: 4096 },
                Step::Mmap { off: 1, len: 2, seed: 4, msync: Msync::Sync },
            ],
        };
        let json = serde_json::to_string(&op).unwrap();
        assert!(json.starts_with(r#"{"op":"fd","path":"cwd:w0/f1""#), "{json}");
        assert_eq!(serde_json::from_str::<Op>(&json).unwrap(), op);
        assert_eq!(op.kind(), "append:ftruncate+pwrite+punch_hole+mmap_msync");

        let call = Op::UringNs(UringCall::Rename {
            from: P::new(Via::Abs, "a"),
            to: P::new(Via::Abs, "b"),
            mode: RenameMode::Exchange,
        });
        let json = serde_json::to_string(&call).unwrap();
        assert_eq!(serde_json::from_str::<Op>(&json).unwrap(), call);
        assert_eq!(call.kind(), "uring_rename");
        assert_eq!(Op::Unlink { path: P::new(Via::Abs, "x") }.kind(), "unlink");
    }

    #[test]
    fn classes_parse_by_name() {
        for class in Class::ALL {
            assert_eq!(class.name().parse::<Class>().unwrap(), class);
            assert!(class.weight() > 0);
        }
        assert!("bogus".parse::<Class>().is_err());
    }
}
