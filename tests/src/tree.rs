//! The one definition of "the standby is identical to the master": [`compare_trees`]
//! walks two trees and lists every difference a replicator is expected to avoid.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use walkdir::WalkDir;

/// Differences past this many are counted, not listed, and file contents are no
/// longer read: a diff of a tree mid-copy would otherwise be huge and slow.
const MAX_LISTED: usize = 20;

/// Top-level entries that belong to the filesystem or to sluice, not to the data.
const SKIPPED_TOP_LEVEL: [&str; 2] = ["lost+found", ".sluice"];

/// What [`compare_trees_with`] looks at beyond the defaults.
#[derive(Clone, Copy, Debug, Default)]
pub struct CompareOptions {
    /// Compare directory mtimes. Off by default: every entry created, renamed or
    /// removed bumps its parent's mtime, so mirroring them exactly needs the receiver
    /// to restore them after each change, which is a separate feature to test.
    pub dir_mtime: bool,
    /// Compare `st_blocks` of regular files, i.e. whether holes were preserved. Off
    /// by default: the block count also depends on the filesystem and its allocator.
    pub blocks: bool,
}

/// Which of the two trees given to [`compare_trees`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// The type of a directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// One way in which the two trees differ, at `path` relative to both roots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Difference {
    /// The entry exists on one side only.
    Missing { path: PathBuf, only_in: Side },
    /// Same name, different type (a file on one side, a directory on the other...).
    FileType {
        path: PathBuf,
        a: FileKind,
        b: FileKind,
    },
    /// Permission bits, including suid, sgid and sticky.
    Mode { path: PathBuf, a: u32, b: u32 },
    /// `(uid, gid)`.
    Owner {
        path: PathBuf,
        a: (u32, u32),
        b: (u32, u32),
    },
    /// Size of a regular file.
    Size { path: PathBuf, a: u64, b: u64 },
    /// Modification time as `(seconds, nanoseconds)`.
    Mtime {
        path: PathBuf,
        a: (i64, i64),
        b: (i64, i64),
    },
    /// Same size, different bytes, first differing at `offset`.
    Content { path: PathBuf, offset: u64 },
    /// Symlinks pointing to different targets.
    SymlinkTarget {
        path: PathBuf,
        a: PathBuf,
        b: PathBuf,
    },
    /// The paths sharing this entry's inode are not the same on both sides.
    Hardlinks {
        path: PathBuf,
        a: Vec<PathBuf>,
        b: Vec<PathBuf>,
    },
    /// Device numbers of a character or block device.
    DeviceNumber { path: PathBuf, a: u64, b: u64 },
    /// `st_blocks` of a regular file (only with [`CompareOptions::blocks`]).
    Blocks { path: PathBuf, a: u64, b: u64 },
    /// Extended attributes (including POSIX ACLs) of a file or directory, as
    /// `name=value` lists.
    Xattrs {
        path: PathBuf,
        a: Vec<String>,
        b: Vec<String>,
    },
    /// The entry could not be read, usually because it changed during the walk.
    Unreadable {
        path: PathBuf,
        side: Side,
        error: String,
    },
}

impl Difference {
    /// The relative path the difference is about.
    pub fn path(&self) -> &Path {
        match self {
            Difference::Missing { path, .. }
            | Difference::FileType { path, .. }
            | Difference::Mode { path, .. }
            | Difference::Owner { path, .. }
            | Difference::Size { path, .. }
            | Difference::Mtime { path, .. }
            | Difference::Content { path, .. }
            | Difference::SymlinkTarget { path, .. }
            | Difference::Hardlinks { path, .. }
            | Difference::DeviceNumber { path, .. }
            | Difference::Blocks { path, .. }
            | Difference::Xattrs { path, .. }
            | Difference::Unreadable { path, .. } => path,
        }
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.path().display();
        match self {
            Difference::Missing { only_in, .. } => write!(f, "{p}: only in {only_in:?}"),
            Difference::FileType { a, b, .. } => write!(f, "{p}: type {a:?} vs {b:?}"),
            Difference::Mode { a, b, .. } => write!(f, "{p}: mode {a:04o} vs {b:04o}"),
            Difference::Owner { a, b, .. } => {
                write!(f, "{p}: owner {}:{} vs {}:{}", a.0, a.1, b.0, b.1)
            }
            Difference::Size { a, b, .. } => write!(f, "{p}: size {a} vs {b}"),
            Difference::Mtime { a, b, .. } => {
                write!(f, "{p}: mtime {}.{:09} vs {}.{:09}", a.0, a.1, b.0, b.1)
            }
            Difference::Content { offset, .. } => {
                write!(f, "{p}: contents differ at byte {offset}")
            }
            Difference::SymlinkTarget { a, b, .. } => {
                write!(f, "{p}: symlink to {} vs {}", a.display(), b.display())
            }
            Difference::Hardlinks { a, b, .. } => {
                write!(f, "{p}: hardlinked with {a:?} vs {b:?}")
            }
            Difference::DeviceNumber { a, b, .. } => write!(f, "{p}: device {a:#x} vs {b:#x}"),
            Difference::Blocks { a, b, .. } => write!(f, "{p}: st_blocks {a} vs {b}"),
            Difference::Xattrs { a, b, .. } => write!(f, "{p}: xattrs {a:?} vs {b:?}"),
            Difference::Unreadable { side, error, .. } => {
                write!(f, "{p}: unreadable in {side:?}: {error}")
            }
        }
    }
}

/// The differences found between two trees; `Display` lists the first
/// [`MAX_LISTED`] of them.
#[derive(Clone, Debug)]
pub struct TreeDiff {
    a: PathBuf,
    b: PathBuf,
    listed: Vec<Difference>,
    total: usize,
}

impl TreeDiff {
    /// The differences listed (at most 20).
    pub fn differences(&self) -> &[Difference] {
        &self.listed
    }

    /// How many differences were found, listed or not.
    pub fn total(&self) -> usize {
        self.total
    }

    fn push(&mut self, difference: Difference) {
        self.total += 1;
        if self.listed.len() < MAX_LISTED {
            self.listed.push(difference);
        }
    }

    fn full(&self) -> bool {
        self.listed.len() >= MAX_LISTED
    }
}

impl fmt::Display for TreeDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} difference(s) between A = {} and B = {}:",
            self.total,
            self.a.display(),
            self.b.display()
        )?;
        for difference in &self.listed {
            write!(f, "\n  {difference}")?;
        }
        if self.total > self.listed.len() {
            write!(f, "\n  ... and {} more", self.total - self.listed.len())?;
        }
        Ok(())
    }
}

impl std::error::Error for TreeDiff {}

/// Compares two trees with the default [`CompareOptions`].
///
/// Looks at the set of paths, file types, permission bits, owners, file sizes,
/// mtimes (ns precision; directories excluded by default), file contents, symlink
/// targets, device numbers and hardlink grouping. Symlinks are not followed. The
/// roots themselves and the top-level `lost+found` and `.sluice` are not compared.
pub fn compare_trees(a: &Path, b: &Path) -> Result<(), TreeDiff> {
    compare_trees_with(a, b, &CompareOptions::default())
}

/// [`compare_trees`] with explicit options.
pub fn compare_trees_with(a: &Path, b: &Path, options: &CompareOptions) -> Result<(), TreeDiff> {
    let mut diff = TreeDiff {
        a: a.to_owned(),
        b: b.to_owned(),
        listed: Vec::new(),
        total: 0,
    };
    let tree_a = Tree::walk(a, Side::A, &mut diff);
    let tree_b = Tree::walk(b, Side::B, &mut diff);

    let paths: std::collections::BTreeSet<&PathBuf> =
        tree_a.nodes.keys().chain(tree_b.nodes.keys()).collect();
    let mut reported_groups = HashSet::new();
    for path in paths {
        match (tree_a.nodes.get(path), tree_b.nodes.get(path)) {
            (Some(_), None) => diff.push(Difference::Missing {
                path: path.clone(),
                only_in: Side::A,
            }),
            (None, Some(_)) => diff.push(Difference::Missing {
                path: path.clone(),
                only_in: Side::B,
            }),
            (Some(na), Some(nb)) => {
                compare_nodes(path, na, nb, a, b, options, &mut diff);
                if na.kind == nb.kind && na.kind != FileKind::Dir {
                    let group_a = tree_a.hardlink_group(na);
                    let group_b = tree_b.hardlink_group(nb);
                    if group_a != group_b && reported_groups.insert(group_a.clone()) {
                        diff.push(Difference::Hardlinks {
                            path: path.clone(),
                            a: group_a,
                            b: group_b,
                        });
                    }
                }
            }
            (None, None) => unreachable!("path came from one of the two maps"),
        }
    }
    if diff.total == 0 { Ok(()) } else { Err(diff) }
}

/// Polls [`compare_trees`] every 50 ms until the trees are identical; on timeout
/// the error carries the last [`TreeDiff`].
pub fn wait_until_identical(a: &Path, b: &Path, timeout: Duration) -> anyhow::Result<()> {
    wait_until_identical_with(a, b, timeout, &CompareOptions::default())
}

/// [`wait_until_identical`] with explicit options.
pub fn wait_until_identical_with(
    a: &Path,
    b: &Path,
    timeout: Duration,
    options: &CompareOptions,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match compare_trees_with(a, b, options) {
            Ok(()) => return Ok(()),
            Err(diff) if Instant::now() >= deadline => {
                return Err(anyhow::Error::new(diff)
                    .context(format!("trees still differ after {timeout:?}")));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// What is compared of one entry.
struct Node {
    kind: FileKind,
    mode: u32,
    owner: (u32, u32),
    size: u64,
    mtime: (i64, i64),
    inode: (u64, u64),
    rdev: u64,
    blocks: u64,
}

struct Tree {
    nodes: BTreeMap<PathBuf, Node>,
    by_inode: HashMap<(u64, u64), Vec<PathBuf>>,
}

impl Tree {
    fn walk(root: &Path, side: Side, diff: &mut TreeDiff) -> Tree {
        let mut tree = Tree {
            nodes: BTreeMap::new(),
            by_inode: HashMap::new(),
        };
        let walker = WalkDir::new(root)
            .follow_links(false)
            .min_depth(1)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|entry| {
                !(entry.depth() == 1
                    && SKIPPED_TOP_LEVEL
                        .iter()
                        .any(|skipped| entry.file_name() == *skipped))
            });
        for entry in walker {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    let path = e
                        .path()
                        .and_then(|p| p.strip_prefix(root).ok())
                        .unwrap_or(Path::new(""));
                    diff.push(Difference::Unreadable {
                        path: path.to_owned(),
                        side,
                        error: e.to_string(),
                    });
                    continue;
                }
            };
            let relative = entry
                .path()
                .strip_prefix(root)
                .unwrap_or(entry.path())
                .to_owned();
            let metadata = match entry.metadata() {
                Ok(metadata) => metadata,
                Err(e) => {
                    diff.push(Difference::Unreadable {
                        path: relative,
                        side,
                        error: e.to_string(),
                    });
                    continue;
                }
            };
            let node = Node {
                kind: kind_of(&metadata.file_type()),
                mode: metadata.mode() & 0o7777,
                owner: (metadata.uid(), metadata.gid()),
                size: metadata.size(),
                mtime: (metadata.mtime(), metadata.mtime_nsec()),
                inode: (metadata.dev(), metadata.ino()),
                rdev: metadata.rdev(),
                blocks: metadata.blocks(),
            };
            if node.kind != FileKind::Dir {
                tree.by_inode
                    .entry(node.inode)
                    .or_default()
                    .push(relative.clone());
            }
            tree.nodes.insert(relative, node);
        }
        tree
    }

    /// The sorted paths sharing `node`'s inode within this tree.
    fn hardlink_group(&self, node: &Node) -> Vec<PathBuf> {
        let mut group = self.by_inode.get(&node.inode).cloned().unwrap_or_default();
        group.sort();
        group
    }
}

fn kind_of(file_type: &fs::FileType) -> FileKind {
    if file_type.is_dir() {
        FileKind::Dir
    } else if file_type.is_symlink() {
        FileKind::Symlink
    } else if file_type.is_fifo() {
        FileKind::Fifo
    } else if file_type.is_socket() {
        FileKind::Socket
    } else if file_type.is_char_device() {
        FileKind::CharDevice
    } else if file_type.is_block_device() {
        FileKind::BlockDevice
    } else {
        FileKind::File
    }
}

/// `name=value` of every extended attribute, sorted (values shown escaped).
fn xattrs_of(path: &Path) -> Vec<String> {
    let mut found: Vec<String> = xattr::list(path)
        .map(|names| {
            names
                .map(|name| {
                    let value = xattr::get(path, &name).ok().flatten().unwrap_or_default();
                    format!("{}={}", name.to_string_lossy(), value.escape_ascii())
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

fn compare_nodes(
    path: &Path,
    na: &Node,
    nb: &Node,
    root_a: &Path,
    root_b: &Path,
    options: &CompareOptions,
    diff: &mut TreeDiff,
) {
    let path_buf = || path.to_owned();
    if na.kind != nb.kind {
        diff.push(Difference::FileType {
            path: path_buf(),
            a: na.kind,
            b: nb.kind,
        });
        return;
    }
    if na.mode != nb.mode {
        diff.push(Difference::Mode {
            path: path_buf(),
            a: na.mode,
            b: nb.mode,
        });
    }
    if na.owner != nb.owner {
        diff.push(Difference::Owner {
            path: path_buf(),
            a: na.owner,
            b: nb.owner,
        });
    }
    if matches!(na.kind, FileKind::File | FileKind::Dir) {
        let (xa, xb) = (xattrs_of(&root_a.join(path)), xattrs_of(&root_b.join(path)));
        if xa != xb {
            diff.push(Difference::Xattrs { path: path_buf(), a: xa, b: xb });
        }
    }
    if (na.kind != FileKind::Dir || options.dir_mtime) && na.mtime != nb.mtime {
        diff.push(Difference::Mtime {
            path: path_buf(),
            a: na.mtime,
            b: nb.mtime,
        });
    }
    match na.kind {
        FileKind::File => {
            if na.size != nb.size {
                diff.push(Difference::Size {
                    path: path_buf(),
                    a: na.size,
                    b: nb.size,
                });
            } else if !diff.full() {
                match first_content_difference(&root_a.join(path), &root_b.join(path)) {
                    Ok(None) => {}
                    Ok(Some(offset)) => diff.push(Difference::Content {
                        path: path_buf(),
                        offset,
                    }),
                    Err((side, e)) => diff.push(Difference::Unreadable {
                        path: path_buf(),
                        side,
                        error: e.to_string(),
                    }),
                }
            }
            if options.blocks && na.blocks != nb.blocks {
                diff.push(Difference::Blocks {
                    path: path_buf(),
                    a: na.blocks,
                    b: nb.blocks,
                });
            }
        }
        FileKind::Symlink => {
            match (
                fs::read_link(root_a.join(path)),
                fs::read_link(root_b.join(path)),
            ) {
                (Ok(a), Ok(b)) if a != b => diff.push(Difference::SymlinkTarget {
                    path: path_buf(),
                    a,
                    b,
                }),
                (Ok(_), Ok(_)) => {}
                (Err(e), _) => diff.push(Difference::Unreadable {
                    path: path_buf(),
                    side: Side::A,
                    error: e.to_string(),
                }),
                (_, Err(e)) => diff.push(Difference::Unreadable {
                    path: path_buf(),
                    side: Side::B,
                    error: e.to_string(),
                }),
            }
        }
        FileKind::CharDevice | FileKind::BlockDevice if na.rdev != nb.rdev => {
            diff.push(Difference::DeviceNumber {
                path: path_buf(),
                a: na.rdev,
                b: nb.rdev,
            });
        }
        _ => {}
    }
}

/// Streams both files and returns the offset of the first differing byte, if any.
fn first_content_difference(a: &Path, b: &Path) -> Result<Option<u64>, (Side, io::Error)> {
    const CHUNK: usize = 1 << 18;
    let mut file_a = File::open(a).map_err(|e| (Side::A, e))?;
    let mut file_b = File::open(b).map_err(|e| (Side::B, e))?;
    let mut buf_a = vec![0u8; CHUNK];
    let mut buf_b = vec![0u8; CHUNK];
    let mut offset = 0u64;
    loop {
        let len_a = read_full(&mut file_a, &mut buf_a).map_err(|e| (Side::A, e))?;
        let len_b = read_full(&mut file_b, &mut buf_b).map_err(|e| (Side::B, e))?;
        let common = len_a.min(len_b);
        if let Some(i) = buf_a[..common]
            .iter()
            .zip(&buf_b[..common])
            .position(|(x, y)| x != y)
        {
            return Ok(Some(offset + i as u64));
        }
        if len_a != len_b {
            // One file changed size since it was stat'ed.
            return Ok(Some(offset + common as u64));
        }
        if len_a == 0 {
            return Ok(None);
        }
        offset += len_a as u64;
    }
}

/// Reads until `buf` is full or the file ends, so both sides compare equal-sized chunks.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The lineage recorded in `<root>/.sluice/lineage` (by the agent on a master,
/// the receiver on a standby), for tests that speak the protocol themselves.
pub fn lineage_of(root: &Path) -> anyhow::Result<sluice_proto::Lineage> {
    let path = root.join(".sluice").join(sluice_proto::lineage::LINEAGE_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let tree: sluice_proto::lineage::TreeLineage = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(tree.lineage)
}
