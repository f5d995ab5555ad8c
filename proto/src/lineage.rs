//! The history of a replicated tree: which generation of data it holds, and
//! which generation each earlier one forked into. Both daemons keep it beside
//! the tree (`<root>/.sluice/lineage`) and exchange it in `Hello`, so a standby
//! that was promoted recognises its old master when it comes back and refuses it
//! (fencing), and an old master's tree recognises the new master it must now
//! follow (failback). Like DRBD's generation identifiers, without the bitmap.

use serde::{Deserialize, Serialize};

use crate::limit;

/// Most forks a lineage remembers; older ones are forgotten (a tree that was
/// promoted and demoted that many times compares its history that far back).
pub const MAX_FORKS: usize = 64;

/// One generation of a tree's data: a new one starts when a standby is promoted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GenerationId(pub u64);

impl std::fmt::Display for GenerationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl GenerationId {
    /// A fresh identifier: a digest of the clock, the process and the host, so
    /// two promotions anywhere never draw the same one.
    pub fn fresh(host: &str) -> GenerationId {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let mut hasher = blake3::Hasher::new();
        hasher.update(&now.to_le_bytes());
        hasher.update(&std::process::id().to_le_bytes());
        hasher.update(host.as_bytes());
        let digest = hasher.finalize();
        let id = digest.as_bytes().first_chunk::<8>().copied().unwrap_or_default();
        GenerationId(u64::from_le_bytes(id).max(1))
    }
}

/// Where a generation began: a standby holding `parent`'s stream up to `seq`
/// durably was promoted at `at_unix_ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fork {
    pub parent: GenerationId,
    pub child: GenerationId,
    pub seq: u64,
    pub at_unix_ns: u64,
}

/// A tree's generation and the forks that led to it, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    pub current: GenerationId,
    #[serde(deserialize_with = "limit::vec::<_, _, MAX_FORKS>")]
    pub forks: Vec<Fork>,
}

/// What a tree is for now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Written by its users and replicated from (an agent runs on it).
    Primary,
    /// A copy that only replication writes (a receiver applies to it).
    Standby,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
        })
    }
}

/// How one lineage stands to another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kinship {
    /// The same generation.
    Same,
    /// The other lineage forked from this one's current generation (directly
    /// or further down): it is newer, and this one is its past. The fork is the
    /// first one after this generation.
    Ancestor(Fork),
    /// This lineage forked from the other's current generation: this one is newer.
    Descendant(Fork),
    /// Neither holds the other's generation.
    Unrelated,
}

impl Lineage {
    /// A new history starting with a fresh generation.
    pub fn fresh(host: &str) -> Lineage {
        Lineage { current: GenerationId::fresh(host), forks: Vec::new() }
    }

    /// This lineage forked into a new generation: a standby holding `seq` of
    /// the current one durably was promoted.
    pub fn fork(&self, host: &str, seq: u64, at_unix_ns: u64) -> Lineage {
        let child = GenerationId::fresh(host);
        let mut forks = vec![Fork { parent: self.current, child, seq, at_unix_ns }];
        forks.extend(self.forks.iter().copied().take(MAX_FORKS - 1));
        Lineage { current: child, forks }
    }

    /// How this lineage stands to `other`.
    pub fn kinship(&self, other: &Lineage) -> Kinship {
        if self.current == other.current {
            return Kinship::Same;
        }
        // Forks are newest first: the oldest fork out of a generation is the
        // one that left it.
        if let Some(fork) = other.forks.iter().rev().find(|f| f.parent == self.current) {
            return Kinship::Ancestor(*fork);
        }
        if let Some(fork) = self.forks.iter().rev().find(|f| f.parent == other.current) {
            return Kinship::Descendant(*fork);
        }
        Kinship::Unrelated
    }
}

/// The file in `<root>/.sluice/` that holds a tree's [`TreeLineage`].
pub const LINEAGE_FILE: &str = "lineage";

/// What a tree's lineage file holds: its role and history, and how it was
/// last promoted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeLineage {
    pub role: Role,
    pub lineage: Lineage,
    #[serde(default)]
    pub promoted: Option<Promotion>,
    /// An old primary now following the master promoted out of it, whose first
    /// comparison with that master has not finished: whatever the comparison
    /// replaces is kept in the rollback directory (the old primary's changes
    /// the new one never received).
    #[serde(default)]
    pub keep_replaced: bool,
    /// How far a primary's agent got in its generation, recorded now and then:
    /// the changes an old primary made after a fork decide a split brain.
    #[serde(default)]
    pub activity: Option<Activity>,
}

/// How far a primary's agent got in its generation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    /// The last sequence number given to an operation.
    pub last_seq: u64,
    /// When the last change was captured (Unix ns; 0: none).
    pub last_change_unix_ns: u64,
    /// Changes captured in this generation (by every run of the agent).
    #[serde(default)]
    pub changes: u64,
}

impl Activity {
    /// Operations after `fork` when a change was captured after the promotion
    /// that made it (the clocks of both hosts are compared, as for lag): `None`
    /// when this side took no change once the other was promoted.
    pub fn after(&self, fork: &Fork) -> Option<u64> {
        (self.last_change_unix_ns > fork.at_unix_ns).then(|| self.last_seq.saturating_sub(fork.seq).max(1))
    }

    /// The changes of a whole generation: operations numbered, or (before the
    /// first comparison with a standby numbers any) changes captured.
    pub fn total(&self) -> u64 {
        self.last_seq.max(self.changes)
    }
}

/// The point a promoted standby's copy is consistent as of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    pub at_unix_ns: u64,
    /// The last operation of the old master's stream the copy holds durably.
    pub durable_seq: u64,
    /// When the master captured it.
    pub consistent_unix_ns: u64,
    /// It was an fsync barrier: the copy is what the master held at an fsync.
    pub at_barrier: bool,
    /// The capture time of the last fsync barrier the copy holds (0: none).
    pub barrier_unix_ns: u64,
}

/// The file in `<root>/.sluice/` where an old primary's agent, once fenced,
/// records what it had not sent: the [`Unsent`] a failback repairs.
pub const UNSENT_FILE: &str = "unsent";
/// Most files an [`Unsent`] names by range; past it the failback compares the
/// whole tree.
pub const MAX_UNSENT_FILES: usize = 4096;
/// Most ranges one [`UnsentFile`] names.
pub const MAX_UNSENT_RANGES: usize = 256;
/// Most paths an [`Unsent`] names for replacement.
pub const MAX_UNSENT_PATHS: usize = 512;
/// Most bytes of path names an [`Unsent`] carries, so it fits one frame.
pub const MAX_UNSENT_PATH_BYTES: usize = 1 << 20;

/// What an old primary changed that its standby may never have received, as its
/// agent knew it when the promoted standby fenced it: its journal's
/// unacknowledged ranges and operations, and the files changed after the
/// journal's last entry. The new master sends its own content for exactly these
/// (with what it changed itself since the fork) instead of comparing the tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsent {
    /// The generation the old primary held when it recorded this.
    pub generation: GenerationId,
    /// Files whose data changed in these ranges (`end` may run past the file's
    /// size) or whose metadata changed (no ranges).
    #[serde(deserialize_with = "limit::vec::<_, _, MAX_UNSENT_FILES>")]
    pub files: Vec<UnsentFile>,
    /// Paths a namespace operation (create, remove, rename, link) or an
    /// unknown change touched: made anew from the new master, whole.
    #[serde(deserialize_with = "limit::vec::<_, _, MAX_UNSENT_PATHS>")]
    pub paths: Vec<crate::RelPath>,
    /// False when the agent could not know everything it had not sent (events
    /// were lost, a comparison was owed, or the record did not fit): the
    /// failback compares the whole tree.
    pub complete: bool,
    /// When it was recorded (Unix ns).
    pub recorded_unix_ns: u64,
}

/// A file of an [`Unsent`] and the byte ranges `[start, end)` changed in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsentFile {
    pub path: crate::RelPath,
    #[serde(deserialize_with = "limit::vec::<_, _, MAX_UNSENT_RANGES>")]
    pub ranges: Vec<(u64, u64)>,
}

impl Unsent {
    /// Nothing is known of what `generation`'s primary did not send.
    pub fn unknown(generation: GenerationId) -> Unsent {
        Unsent { generation, files: Vec::new(), paths: Vec::new(), complete: false, recorded_unix_ns: 0 }
    }

    /// Every path named.
    pub fn all_paths(&self) -> impl Iterator<Item = &crate::RelPath> {
        self.files.iter().map(|f| &f.path).chain(&self.paths)
    }

    /// Within the limits that let it travel in one `Hello`; else the same record
    /// marked incomplete and emptied.
    pub fn bounded(mut self) -> Unsent {
        let path_bytes: usize = self.all_paths().map(|p| p.as_bytes().len()).sum();
        let fits = self.files.len() <= MAX_UNSENT_FILES
            && self.paths.len() <= MAX_UNSENT_PATHS
            && self.files.iter().all(|f| f.ranges.len() <= MAX_UNSENT_RANGES)
            && path_bytes <= MAX_UNSENT_PATH_BYTES;
        if !fits {
            self.files.clear();
            self.paths.clear();
            self.complete = false;
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinship_follows_forks_both_ways() {
        let first = Lineage::fresh("a");
        let promoted = first.fork("b", 41, 1);
        let again = promoted.fork("a", 7, 2);
        assert_eq!(first.kinship(&first.clone()), Kinship::Same);
        assert!(matches!(first.kinship(&promoted), Kinship::Ancestor(f) if f.seq == 41 && f.child == promoted.current));
        assert!(matches!(promoted.kinship(&first), Kinship::Descendant(f) if f.seq == 41));
        assert!(matches!(first.kinship(&again), Kinship::Ancestor(f) if f.seq == 41), "the fork that left the old generation");
        assert!(matches!(promoted.kinship(&again), Kinship::Ancestor(f) if f.seq == 7));
        assert_eq!(Lineage::fresh("c").kinship(&again), Kinship::Unrelated);
        assert_ne!(first.current, promoted.current);
    }

    #[test]
    fn forks_stay_bounded() {
        let mut lineage = Lineage::fresh("a");
        for i in 0..(MAX_FORKS as u64 + 10) {
            lineage = lineage.fork("a", i, i);
        }
        assert_eq!(lineage.forks.len(), MAX_FORKS);
    }
}
