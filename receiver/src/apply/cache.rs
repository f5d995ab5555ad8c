//! A small cache of open, writable file descriptors keyed by path, so a stream of
//! small writes to one file does not reopen (and re-resolve) it every time.

use std::collections::HashMap;
use std::fs::File;

use sluice_proto::RelPath;

/// Least-recently-used set of at most `capacity` open files.
pub(crate) struct FdCache {
    capacity: usize,
    tick: u64,
    files: HashMap<RelPath, (File, u64)>,
}

impl FdCache {
    pub(crate) fn new(capacity: usize) -> Self {
        FdCache {
            capacity,
            tick: 0,
            files: HashMap::new(),
        }
    }

    /// The cached file for `path`, marked as just used.
    pub(crate) fn get(&mut self, path: &RelPath) -> Option<&File> {
        self.tick += 1;
        let tick = self.tick;
        self.files.get_mut(path).map(|(file, used)| {
            *used = tick;
            &*file
        })
    }

    /// Caches `file` for `path`, evicting the least recently used entry when full.
    pub(crate) fn insert(&mut self, path: RelPath, file: File) -> &File {
        if self.files.len() >= self.capacity && !self.files.contains_key(&path) {
            // A linear scan: the cache is small and eviction is rare next to hits.
            if let Some(oldest) = self
                .files
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(p, _)| p.clone())
            {
                self.files.remove(&oldest);
            }
        }
        self.tick += 1;
        let entry = self.files.entry(path).insert_entry((file, self.tick));
        &entry.into_mut().0
    }

    /// Forgets `prefix` and everything below it: after a rename or removal those
    /// names may point at other inodes.
    pub(crate) fn invalidate(&mut self, prefix: &RelPath) {
        self.files.retain(|path, _| !path.starts_with(prefix));
    }

    /// Forgets every file.
    pub(crate) fn clear(&mut self) {
        self.files.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.files.len()
    }
}
