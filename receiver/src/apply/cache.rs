//! A small cache of open, writable regular files, so a stream of small writes to
//! one file does not reopen (and re-resolve) it every time.
//!
//! Files are kept by inode (device and inode number), and names point at them:
//! two names of one inode share one descriptor, and forgetting a name never
//! leaves another name writing into an inode the first one was about.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;

use sluice_proto::RelPath;

/// (device, inode number) of an open file.
type Inode = (u64, u64);

/// Least-recently-used set of at most `capacity` open files.
pub(crate) struct FdCache {
    capacity: usize,
    tick: u64,
    names: HashMap<RelPath, Inode>,
    files: HashMap<Inode, (File, u64)>,
}

impl FdCache {
    pub(crate) fn new(capacity: usize) -> Self {
        FdCache { capacity, tick: 0, names: HashMap::new(), files: HashMap::new() }
    }

    /// The cached file for `path`, marked as just used.
    pub(crate) fn get(&mut self, path: &RelPath) -> Option<&File> {
        self.tick += 1;
        let tick = self.tick;
        let inode = self.names.get(path)?;
        self.files.get_mut(inode).map(|(file, used)| {
            *used = tick;
            &*file
        })
    }

    /// Caches `file` under `path`, evicting the least recently used file when full.
    pub(crate) fn insert(&mut self, path: RelPath, file: File) -> std::io::Result<&File> {
        let meta = file.metadata()?;
        let inode = (meta.dev(), meta.ino());
        self.forget_name(&path);
        if self.files.len() >= self.capacity && !self.files.contains_key(&inode) {
            // A linear scan: the cache is small and eviction is rare next to hits.
            if let Some(oldest) = self.files.iter().min_by_key(|(_, (_, used))| *used).map(|(inode, _)| *inode) {
                self.files.remove(&oldest);
                self.names.retain(|_, named| *named != oldest);
            }
        }
        self.tick += 1;
        self.names.insert(path, inode);
        let tick = self.tick;
        let entry = self.files.entry(inode).or_insert((file, tick));
        entry.1 = tick;
        Ok(&entry.0)
    }

    /// Forgets `prefix` and every name below it: after a rename or removal those
    /// names may point at other inodes. Files no name points at any more are closed.
    pub(crate) fn invalidate(&mut self, prefix: &RelPath) {
        self.names.retain(|path, _| !path.starts_with(prefix));
        self.close_unnamed();
    }

    fn forget_name(&mut self, path: &RelPath) {
        if self.names.remove(path).is_some() {
            self.close_unnamed();
        }
    }

    fn close_unnamed(&mut self) {
        let named: std::collections::HashSet<&Inode> = self.names.values().collect();
        self.files.retain(|inode, _| named.contains(inode));
    }

    /// Forgets every file.
    pub(crate) fn clear(&mut self) {
        self.names.clear();
        self.files.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.files.len()
    }
}
