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
    let mut entries = Vec::new();
    let mut first_name_of: HashMap<u64, RelPath> = HashMap::new();
    let mut file_bytes = 0;
    let changed_since = |meta: &Metadata| verify_since.is_some_and(|since| meta.ctime() >= since);
    let mut changed_non_files = Vec::new();
    if changed_since(&root_meta) {
        changed_non_files.push(RelPath::root());
    }
    files.clear();
    let walker = walkdir::WalkDir::new(root).follow_links(false).same_file_system(true).min_depth(1);
    let walker = walker.into_iter().filter_entry(|e| {
        !(e.depth() == 1 && EXCLUDED_TOP_LEVEL.iter().any(|n| e.file_name().as_bytes() == n.as_bytes()))
    });
    for item in walker {
        let item = match item {
            Ok(item) => item,
            // Entries vanish while a live tree is walked; the events that removed them follow.
            Err(e) if e.io_error().is_some_and(|io| io.kind() == io::ErrorKind::NotFound) => continue,
            Err(e) => return Err(io::Error::other(e)),
        };
        let relative = item.path().strip_prefix(root).map_err(io::Error::other)?;
        let Ok(path) = RelPath::from_path(relative) else { continue };
        let meta = match item.metadata() {
            Ok(meta) => meta,
            Err(_) => continue,
        };
        if meta.dev() != root_meta.dev() {
            // A mount point or a nested btrfs subvolume (its own st_dev, and inode
            // numbers that collide with the tree's): not replicated, like `rsync -x`
            // minus the empty directory. The capture ignores its inodes too.
            continue;
        }
        let parent_path = path.parent().unwrap_or_else(RelPath::root);
        let Some(parent) = index.resolve(&parent_path) else { continue };
        let kind = kind_of(&meta);
        index.insert(parent, item.file_name(), meta.ino(), kind);
        let file_type = meta.file_type();
        let (entry_kind, hardlink_of) = if file_type.is_file() {
            file_bytes += meta.len();
            let hardlink_of = if meta.nlink() > 1 {
                match first_name_of.get(&meta.ino()) {
                    Some(first) => Some(first.clone()),
                    None => {
                        first_name_of.insert(meta.ino(), path.clone());
                        None
                    }
                }
            } else {
                None
            };
            if hardlink_of.is_none() {
                files.remember(meta.ino(), relative);
            }
            (EntryKind::File { size: meta.len() }, hardlink_of)
        } else if file_type.is_dir() {
            (EntryKind::Dir, None)
        } else if file_type.is_symlink() {
            let target = std::fs::read_link(item.path()).map(|t| t.as_os_str().as_bytes().to_vec()).unwrap_or_default();
            (EntryKind::Symlink { target }, None)
        } else if file_type.is_fifo() {
            (EntryKind::Fifo, None)
        } else if devices && (file_type.is_char_device() || file_type.is_block_device()) {
            (EntryKind::Device { block: file_type.is_block_device(), rdev: meta.rdev() }, None)
        } else {
            // Device nodes and sockets are not replicated.
            continue;
        };
        let xattrs = if hardlink_of.is_some() { Vec::new() } else { read_xattrs(item.path()).ok().flatten().unwrap_or_default() };
        // ctime, not mtime: it cannot be set back, and SetAttrs does not move it forward.
        let verify = file_type.is_file() && changed_since(&meta);
        if !file_type.is_file() && changed_since(&meta) {
            changed_non_files.push(path.clone());
        }
        entries.push(Entry { path, kind: entry_kind, meta: meta_of(&meta), hardlink_of, xattrs, verify });
    }
    Ok(Scan { index, entries, file_bytes, changed_non_files })
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
