//! Walking the watched tree: the inode index, the manifest sent at initial sync,
//! and per-block hashes of a file.

use crate::files::Files;
use crate::index::{Index, NodeKind};
use sluice_proto::{Entry, EntryKind, Meta, RelPath, Timestamp, Xattr};
use std::collections::HashMap;
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Top-level names that belong to the filesystem or to sluice, never replicated.
pub const EXCLUDED_TOP_LEVEL: [&str; 2] = ["lost+found", ".sluice"];

/// The result of a walk.
pub struct Scan {
    pub index: Index,
    pub entries: Vec<Entry>,
    pub file_bytes: u64,
    /// Entries other than regular files (the root included) whose inode changed
    /// at or after `verify_since`.
    pub changed_non_files: Vec<RelPath>,
}

/// Metadata of an entry as sent on the wire.
pub fn meta_of(meta: &Metadata) -> Meta {
    Meta {
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime: Timestamp { secs: meta.mtime(), nanos: meta.mtime_nsec() as u32 },
    }
}

/// The index kind of a file type.
pub fn kind_of(meta: &Metadata) -> NodeKind {
    let t = meta.file_type();
    if t.is_dir() {
        NodeKind::Dir
    } else if t.is_file() {
        NodeKind::File
    } else if t.is_symlink() {
        NodeKind::Symlink
    } else {
        NodeKind::Other
    }
}

/// True when a top-level name is excluded from replication.
pub fn is_excluded(path: &RelPath) -> bool {
    let first = path.as_bytes().split(|&b| b == b'/').next().unwrap_or_default();
    EXCLUDED_TOP_LEVEL.iter().any(|name| name.as_bytes() == first)
}

/// The extended attributes of a regular file or directory, sorted by name; `None`
/// for other kinds (the receiver does not open those to set attributes).
pub fn read_xattrs(path: &Path) -> io::Result<Option<Vec<Xattr>>> {
    let meta = std::fs::symlink_metadata(path)?;
    if !(meta.is_file() || meta.is_dir()) {
        return Ok(None);
    }
    let mut found = Vec::new();
    for name in xattr::list(path)? {
        if !sluice_proto::is_replicated_xattr(name.as_bytes()) {
            continue;
        }
        if let Some(value) = xattr::get(path, &name)? {
            found.push(Xattr { name: name.as_bytes().to_vec(), value });
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Some(found))
}

/// Walks `root` (without crossing into other filesystems), building the index and
/// the manifest and remembering a handle for every regular file. Device nodes are
/// listed only with `devices`; files whose inode changed at or after `verify_since`
/// (Unix seconds) are marked for a block-by-block comparison.
pub fn scan(root: &Path, files: &mut Files, devices: bool, verify_since: Option<i64>) -> io::Result<Scan> {
    let root_meta = std::fs::symlink_metadata(root)?;
    let mut index = Index::new(root_meta.ino());
    let mut changed_non_files = Vec::new();
    if verify_since.is_some_and(|since| root_meta.ctime() >= since) {
        changed_non_files.push(RelPath::root());
    }
    files.clear();
    let mut walk = Walk { root, root_dev: root_meta.dev(), files, devices, verify_since, index: &mut index, entries: Vec::new(), file_bytes: 0, changed_non_files };
    walk.below(&RelPath::root())?;
    let Walk { entries, file_bytes, changed_non_files, .. } = walk;
    Ok(Scan { index, entries, file_bytes, changed_non_files })
}

/// Walks the part of the tree below `start` (a directory the index holds, named
/// by its path), replacing what the index holds there and returning the manifest
/// entries of everything below it.
pub fn rescan_below(
    root: &Path,
    start: &RelPath,
    index: &mut Index,
    files: &mut Files,
    devices: bool,
    verify_since: Option<i64>,
) -> io::Result<Vec<Entry>> {
    let Some(dir) = index.resolve(start) else {
        return Err(io::Error::new(io::ErrorKind::NotFound, format!("{start} is not indexed")));
    };
    index.clear_children(dir);
    let root_dev = std::fs::symlink_metadata(root)?.dev();
    let mut walk = Walk { root, root_dev, files, devices, verify_since, index, entries: Vec::new(), file_bytes: 0, changed_non_files: Vec::new() };
    walk.below(start)?;
    Ok(walk.entries)
}

/// The manifest entry of one path (`None` for kinds that are not replicated).
pub fn entry_of(root: &Path, path: &RelPath, meta: &Metadata, devices: bool, verify: bool) -> Option<Entry> {
    let full = root.join(path.as_path());
    let file_type = meta.file_type();
    let kind = if file_type.is_file() {
        EntryKind::File { size: meta.len() }
    } else if file_type.is_dir() {
        EntryKind::Dir
    } else if file_type.is_symlink() {
        let target = std::fs::read_link(&full).map(|t| t.as_os_str().as_bytes().to_vec()).unwrap_or_default();
        EntryKind::Symlink { target }
    } else if file_type.is_fifo() {
        EntryKind::Fifo
    } else if devices && (file_type.is_char_device() || file_type.is_block_device()) {
        EntryKind::Device { block: file_type.is_block_device(), rdev: meta.rdev() }
    } else {
        // Device nodes and sockets are not replicated.
        return None;
    };
    let xattrs = read_xattrs(&full).ok().flatten().unwrap_or_default();
    Some(Entry { path: path.clone(), kind, meta: meta_of(meta), hardlink_of: None, names: 1, xattrs, verify: verify && file_type.is_file() })
}

/// One walk of (part of) the tree into an index and a manifest.
struct Walk<'a> {
    root: &'a Path,
    /// `st_dev` of the root: entries of another (a mount point, a nested btrfs
    /// subvolume) are not replicated.
    root_dev: u64,
    files: &'a mut Files,
    devices: bool,
    verify_since: Option<i64>,
    index: &'a mut Index,
    entries: Vec<Entry>,
    file_bytes: u64,
    changed_non_files: Vec<RelPath>,
}

impl Walk<'_> {
    fn below(&mut self, start: &RelPath) -> io::Result<()> {
        let mut first_name_of: HashMap<u64, RelPath> = HashMap::new();
        // Entries of inodes with several names, told their count once all are known.
        let mut linked_entries: Vec<(usize, u64)> = Vec::new();
        let changed_since = |meta: &Metadata, since: Option<i64>| since.is_some_and(|since| meta.ctime() >= since);
        let top = self.root.join(start.as_path());
        let at_root = start.is_root();
        let walker = walkdir::WalkDir::new(&top).follow_links(false).same_file_system(true).min_depth(1);
        let walker = walker.into_iter().filter_entry(|e| {
            !(at_root && e.depth() == 1 && EXCLUDED_TOP_LEVEL.iter().any(|n| e.file_name().as_bytes() == n.as_bytes()))
        });
        for item in walker {
            let item = match item {
                Ok(item) => item,
                // Entries vanish while a live tree is walked; the events that removed them follow.
                Err(e) if e.io_error().is_some_and(|io| io.kind() == io::ErrorKind::NotFound) => continue,
                Err(e) => return Err(io::Error::other(e)),
            };
            let relative = item.path().strip_prefix(self.root).map_err(io::Error::other)?;
            let Ok(path) = RelPath::from_path(relative) else { continue };
            let meta = match item.metadata() {
                Ok(meta) => meta,
                Err(_) => continue,
            };
            if meta.dev() != self.root_dev {
                // A mount point or a nested btrfs subvolume (its own st_dev, and inode
                // numbers that collide with the tree's): not replicated, like `rsync -x`
                // minus the empty directory. The capture ignores its inodes too.
                continue;
            }
            let parent_path = path.parent().unwrap_or_else(RelPath::root);
            let Some(parent) = self.index.resolve(&parent_path) else { continue };
            let kind = kind_of(&meta);
            // Inodes hard-linked from outside the part walked keep their other names
            // in the index; the first of those is what the copy links to.
            let linked = !meta.is_dir() && meta.nlink() > 1;
            let others = if linked && !first_name_of.contains_key(&meta.ino()) { self.index.paths_of(meta.ino()) } else { Vec::new() };
            let linked_elsewhere = others
                .into_iter()
                .find(|other| std::fs::symlink_metadata(self.root.join(other.as_path())).is_ok_and(|m| m.ino() == meta.ino()));
            self.index.insert(parent, item.file_name(), meta.ino(), kind);
            let changed = changed_since(&meta, self.verify_since);
            let Some(mut entry) = entry_of(self.root, &path, &meta, self.devices, changed) else { continue };
            if linked {
                entry.hardlink_of = match (first_name_of.get(&meta.ino()), linked_elsewhere) {
                    (Some(first), _) => Some(first.clone()),
                    (None, Some(elsewhere)) => Some(elsewhere),
                    (None, None) => {
                        first_name_of.insert(meta.ino(), path.clone());
                        None
                    }
                };
                if entry.hardlink_of.is_some() {
                    entry.xattrs.clear();
                }
            }
            if meta.is_file() {
                self.file_bytes += meta.len();
                if entry.hardlink_of.is_none() {
                    self.files.remember(meta.ino(), relative);
                }
            }
            // ctime, not mtime: it cannot be set back, and SetAttrs does not move it forward.
            if !meta.is_file() && changed {
                self.changed_non_files.push(path.clone());
            }
            if linked {
                linked_entries.push((self.entries.len(), meta.ino()));
            }
            self.entries.push(entry);
        }
        for (at, ino) in linked_entries {
            self.entries[at].names = self.index.paths_of(ino).len().max(1) as u32;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_lists_everything_once_with_hardlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("d/e")).unwrap();
        std::fs::write(root.join("d/e/f"), b"12345").unwrap();
        std::fs::hard_link(root.join("d/e/f"), root.join("g")).unwrap();
        std::os::unix::fs::symlink("d/e/f", root.join("s")).unwrap();
        std::fs::create_dir(root.join("lost+found")).unwrap();
        let mut files = Files::new(root).unwrap();
        let scan = scan(root, &mut files, false, None).unwrap();
        let paths: Vec<String> = scan.entries.iter().map(|e| e.path.to_string()).collect();
        assert_eq!(paths.len(), 5, "{paths:?}");
        assert!(!paths.iter().any(|p| p.starts_with("lost+found")));
        let links: Vec<&Entry> = scan.entries.iter().filter(|e| e.hardlink_of.is_some()).collect();
        assert_eq!(links.len(), 1);
        let ino = std::fs::metadata(root.join("g")).unwrap().ino();
        assert_eq!(scan.index.paths_of(ino).len(), 2);
        assert_eq!(scan.file_bytes, 10);
    }
}
