//! The agent's inode → path index of the watched tree.
//!
//! Each inode records the (parent directory inode, name) links that name it, so a
//! rename of a directory is one update however many files lie below it, and a
//! write reported by inode finds its path. Hard-linked files have several links.

use sluice_proto::RelPath;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};

/// What an indexed inode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    Dir,
    File,
    Symlink,
    Other,
}

#[derive(Clone, Debug)]
struct Node {
    kind: NodeKind,
    links: Vec<(u64, OsString)>,
}

/// Inode tree of the watched directory.
#[derive(Debug)]
pub struct Index {
    root: u64,
    nodes: HashMap<u64, Node>,
    names: BTreeMap<(u64, OsString), u64>,
}

/// Deepest directory nesting followed when building a path; deeper means a cycle.
const MAX_DEPTH: usize = 4096;

impl Index {
    /// An index holding only the root directory `root_ino`.
    pub fn new(root_ino: u64) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(root_ino, Node { kind: NodeKind::Dir, links: Vec::new() });
        Index { root: root_ino, nodes, names: BTreeMap::new() }
    }

    pub fn root(&self) -> u64 {
        self.root
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }

    pub fn contains(&self, ino: u64) -> bool {
        self.nodes.contains_key(&ino)
    }

    pub fn kind(&self, ino: u64) -> Option<NodeKind> {
        self.nodes.get(&ino).map(|n| n.kind)
    }

    /// The inode named `name` in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Option<u64> {
        self.names.get(&(parent, name.to_os_string())).copied()
    }

    /// The inode at `path`, walking from the root.
    pub fn resolve(&self, path: &RelPath) -> Option<u64> {
        let mut ino = self.root;
        if path.is_root() {
            return Some(ino);
        }
        for component in path.as_bytes().split(|&b| b == b'/') {
            ino = self.lookup(ino, std::os::unix::ffi::OsStrExt::from_bytes(component))?;
        }
        Some(ino)
    }

    /// The first path of `ino`.
    pub fn path_of(&self, ino: u64) -> Option<RelPath> {
        let node = self.nodes.get(&ino)?;
        if ino == self.root {
            return Some(RelPath::root());
        }
        let (parent, name) = node.links.first()?;
        self.path_via(*parent, name)
    }

    /// Every path naming `ino` (several for a hard-linked file).
    pub fn paths_of(&self, ino: u64) -> Vec<RelPath> {
        match self.nodes.get(&ino) {
            Some(node) if ino != self.root => node.links.iter().filter_map(|(p, n)| self.path_via(*p, n)).collect(),
            Some(_) => vec![RelPath::root()],
            None => Vec::new(),
        }
    }

    fn path_via(&self, parent: u64, name: &OsStr) -> Option<RelPath> {
        let mut names = vec![name.to_os_string()];
        let mut dir = parent;
        while dir != self.root {
            let (up, dir_name) = self.nodes.get(&dir)?.links.first()?;
            names.push(dir_name.clone());
            dir = *up;
            if names.len() > MAX_DEPTH {
                return None;
            }
        }
        let mut path = RelPath::root();
        for name in names.iter().rev() {
            path = path.join(name).ok()?;
        }
        Some(path)
    }

    /// Adds the link `parent/name` → `ino`, replacing whatever that name pointed to.
    pub fn insert(&mut self, parent: u64, name: &OsStr, ino: u64, kind: NodeKind) {
        if let Some(old) = self.lookup(parent, name) {
            if old == ino {
                return;
            }
            self.unlink(parent, name);
        }
        let node = self.nodes.entry(ino).or_insert_with(|| Node { kind, links: Vec::new() });
        node.kind = kind;
        if kind == NodeKind::Dir {
            // A directory has one name; a stale one would make paths ambiguous.
            for (p, n) in std::mem::take(&mut node.links) {
                self.names.remove(&(p, n));
            }
        }
        let node = self.nodes.get_mut(&ino).expect("inserted above");
        node.links.push((parent, name.to_os_string()));
        self.names.insert((parent, name.to_os_string()), ino);
    }

    /// Removes the link `parent/name`; an inode left without links is forgotten,
    /// a directory with everything below it. Returns the inode it named.
    pub fn unlink(&mut self, parent: u64, name: &OsStr) -> Option<u64> {
        let ino = self.names.remove(&(parent, name.to_os_string()))?;
        let orphan = match self.nodes.get_mut(&ino) {
            Some(node) => {
                node.links.retain(|(p, n)| !(*p == parent && n == name));
                node.links.is_empty()
            }
            None => false,
        };
        if orphan {
            self.forget(ino);
        }
        Some(ino)
    }

    fn forget(&mut self, ino: u64) {
        let mut stack = vec![ino];
        while let Some(ino) = stack.pop() {
            if let Some(node) = self.nodes.remove(&ino) {
                for (p, n) in node.links {
                    if self.names.get(&(p, n.clone())) == Some(&ino) {
                        self.names.remove(&(p, n));
                    }
                }
                if node.kind == NodeKind::Dir {
                    let children: Vec<(OsString, u64)> = self.children(ino).map(|(n, c)| (n.to_os_string(), c)).collect();
                    for (name, child) in children {
                        self.names.remove(&(ino, name.clone()));
                        let gone = match self.nodes.get_mut(&child) {
                            Some(c) => {
                                c.links.retain(|(p, n)| !(*p == ino && *n == name));
                                c.links.is_empty()
                            }
                            None => false,
                        };
                        if gone {
                            stack.push(child);
                        }
                    }
                }
            }
        }
    }

    /// Moves the link `from_parent/from_name` to `to_parent/to_name`, replacing the target.
    pub fn rename(&mut self, from_parent: u64, from_name: &OsStr, to_parent: u64, to_name: &OsStr) -> Option<u64> {
        let ino = self.lookup(from_parent, from_name)?;
        if self.lookup(to_parent, to_name) == Some(ino) {
            // rename(2) between two links of the same inode does nothing.
            return Some(ino);
        }
        let kind = self.nodes.get(&ino)?.kind;
        self.names.remove(&(from_parent, from_name.to_os_string()));
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.links.retain(|(p, n)| !(*p == from_parent && n == from_name));
        }
        if self.lookup(to_parent, to_name).is_some() {
            self.unlink(to_parent, to_name);
        }
        let node = self.nodes.get_mut(&ino)?;
        node.links.push((to_parent, to_name.to_os_string()));
        node.kind = kind;
        self.names.insert((to_parent, to_name.to_os_string()), ino);
        Some(ino)
    }

    /// Swaps two names (RENAME_EXCHANGE).
    pub fn exchange(&mut self, a_parent: u64, a_name: &OsStr, b_parent: u64, b_name: &OsStr) {
        let a = self.names.remove(&(a_parent, a_name.to_os_string()));
        let b = self.names.remove(&(b_parent, b_name.to_os_string()));
        let relink = |nodes: &mut HashMap<u64, Node>, ino: u64, old: (u64, &OsStr), new: (u64, &OsStr)| {
            if let Some(node) = nodes.get_mut(&ino) {
                for link in node.links.iter_mut() {
                    if link.0 == old.0 && link.1 == old.1 {
                        *link = (new.0, new.1.to_os_string());
                    }
                }
            }
        };
        if let Some(a) = a {
            relink(&mut self.nodes, a, (a_parent, a_name), (b_parent, b_name));
            self.names.insert((b_parent, b_name.to_os_string()), a);
        }
        if let Some(b) = b {
            relink(&mut self.nodes, b, (b_parent, b_name), (a_parent, a_name));
            self.names.insert((a_parent, a_name.to_os_string()), b);
        }
    }

    /// Forgets everything below directory `dir` (which stays).
    pub fn clear_children(&mut self, dir: u64) {
        let names: Vec<OsString> = self.children(dir).map(|(name, _)| name.to_os_string()).collect();
        for name in names {
            self.unlink(dir, &name);
        }
    }

    /// The entries of directory `dir`.
    pub fn children(&self, dir: u64) -> impl Iterator<Item = (&OsStr, u64)> {
        self.names
            .range((dir, OsString::new())..)
            .take_while(move |((p, _), _)| *p == dir)
            .map(|((_, name), ino)| (name.as_os_str(), *ino))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RelPath {
        RelPath::from_bytes(s).unwrap()
    }

    fn sample() -> Index {
        let mut index = Index::new(1);
        index.insert(1, OsStr::new("a"), 2, NodeKind::Dir);
        index.insert(2, OsStr::new("b"), 3, NodeKind::Dir);
        index.insert(3, OsStr::new("f"), 4, NodeKind::File);
        index.insert(1, OsStr::new("g"), 5, NodeKind::File);
        index
    }

    #[test]
    fn paths_follow_directory_renames() {
        let mut index = sample();
        assert_eq!(index.path_of(4).unwrap(), p("a/b/f"));
        index.rename(1, OsStr::new("a"), 1, OsStr::new("z"));
        assert_eq!(index.path_of(4).unwrap(), p("z/b/f"));
        assert_eq!(index.resolve(&p("z/b/f")), Some(4));
        assert_eq!(index.resolve(&p("a/b/f")), None);
    }

    #[test]
    fn hardlinks_and_unlink() {
        let mut index = sample();
        index.insert(2, OsStr::new("h"), 4, NodeKind::File);
        assert_eq!(index.paths_of(4), vec![p("a/b/f"), p("a/h")]);
        index.unlink(3, OsStr::new("f"));
        assert_eq!(index.paths_of(4), vec![p("a/h")]);
        index.unlink(1, OsStr::new("a"));
        assert!(!index.contains(2) && !index.contains(3) && !index.contains(4));
        assert!(index.contains(5));
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn rename_replaces_target_and_exchange_swaps() {
        let mut index = sample();
        index.rename(1, OsStr::new("g"), 3, OsStr::new("f"));
        assert_eq!(index.resolve(&p("a/b/f")), Some(5));
        assert!(!index.contains(4));
        index.insert(1, OsStr::new("x"), 6, NodeKind::File);
        index.exchange(1, OsStr::new("x"), 3, OsStr::new("f"));
        assert_eq!(index.resolve(&p("x")), Some(5));
        assert_eq!(index.path_of(6).unwrap(), p("a/b/f"));
    }
}
