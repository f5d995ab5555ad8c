//! Failback by ranges: what an old primary records it had not sent when the
//! standby promoted out of it fences it, and how the new primary turns that
//! record and its own changes since the promotion into the ranges and repairs
//! it sends, instead of comparing the whole tree.
//!
//! The old primary's tree is the fork's content plus what it changed and never
//! sent (its journal's unacknowledged ranges and operations); the new
//! primary's is the fork's content plus what it changed since its promotion,
//! all of which its agent keeps queued from the promotion on (see
//! [`Replicator::new`]). Sending the new primary's content for the union of both
//! makes the trees equal, unless one side moved or removed a path the other
//! changed: then the whole tree is compared.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use sluice_proto::lineage::{GenerationId, MAX_UNSENT_RANGES, Unsent, UnsentFile};
use sluice_proto::{Op, RelPath};

use crate::backlog::{Backlog, Record};
use crate::engine::{DirtyInode, Engine};
use crate::index::NodeKind;
use crate::ranges::RangeSet;
use crate::session::Replicator;

/// What this agent holds that its standby may lack, for the failback that
/// follows a promotion of that standby.
pub fn unsent(rep: &Replicator, feed: usize, generation: GenerationId, now_unix_ns: u64) -> Unsent {
    let Some(standby) = rep.feeds.get(feed) else { return Unsent { recorded_unix_ns: now_unix_ns, ..Unsent::unknown(generation) } };
    if standby.compare.is_some() || rep.engine.rescan_reason().is_some() || rep.engine.has_repairs() {
        return Unsent { recorded_unix_ns: now_unix_ns, ..Unsent::unknown(generation) };
    }
    // Files changed after the journal's last entry, how is not known; a pending
    // comparison of the whole tree means nothing is.
    let changed = match standby.backlog.unsettled_manifest() {
        Some(manifest) => manifest.scoped.as_ref().map(|entries| entries.iter().map(|e| e.path.clone()).collect()),
        None => Some(Vec::new()),
    };
    let (records, mut dirty) = standby.backlog.records();
    dirty.extend(rep.engine.dirty_inodes());
    dirty.extend(rep.engine.dirty_inodes_for(feed));
    // An inode no longer in the tree was removed, which an operation names.
    let dirty = dirty.into_iter().map(|inode| (rep.engine.index().paths_of(inode.ino), inode.ranges)).collect();
    let ops = records.into_iter().filter_map(|r| match r {
        Record::Op { op, .. } => Some(op),
        Record::Dirty { .. } => None,
    });
    record(generation, now_unix_ns, changed, ops, dirty)
}

/// The record of `ops` and `dirty` (each inode's names and ranges) not sent,
/// and of the files `changed` in unknown ways (`None`: anything may have).
fn record(
    generation: GenerationId,
    now_unix_ns: u64,
    changed: Option<Vec<RelPath>>,
    ops: impl IntoIterator<Item = Op>,
    dirty: Vec<DirtyNames>,
) -> Unsent {
    let Some(changed) = changed else {
        return Unsent { recorded_unix_ns: now_unix_ns, ..Unsent::unknown(generation) };
    };
    let mut files: BTreeMap<RelPath, RangeSet> = BTreeMap::new();
    let mut paths: BTreeSet<RelPath> = changed.into_iter().collect();
    let mut add = |path: &RelPath, range: Option<(u64, u64)>| {
        let ranges = files.entry(path.clone()).or_default();
        if let Some((start, end)) = range.filter(|(start, end)| end > start) {
            ranges.insert(start, end - start);
        }
    };
    for (names, ranges) in &dirty {
        for path in names {
            add(path, None);
            for &(start, end) in ranges {
                add(path, Some((start, end)));
            }
        }
    }
    for op in ops {
        match &op {
            Op::Write { path, offset, data, .. } => add(path, Some((*offset, offset.saturating_add(data.len() as u64)))),
            Op::Truncate { path, size } => add(path, Some((*size, u64::MAX))),
            Op::Fallocate { path, offset, len, .. } => add(path, Some((*offset, offset.saturating_add(*len)))),
            Op::SetAttrs { path, .. } => add(path, None),
            Op::Barrier { .. } => {}
            other => paths.extend(other.paths().into_iter().cloned()),
        }
    }
    let files = files
        .into_iter()
        .filter(|(path, _)| !paths.contains(path))
        .map(|(path, ranges)| {
            let mut ranges: Vec<(u64, u64)> = ranges.iter().collect();
            if ranges.len() > MAX_UNSENT_RANGES {
                let (start, end) = (ranges.first().map_or(0, |r| r.0), ranges.last().map_or(0, |r| r.1));
                ranges = vec![(start, end)];
            }
            UnsentFile { path, ranges }
        })
        .collect();
    Unsent { generation, files, paths: paths.into_iter().collect(), complete: true, recorded_unix_ns: now_unix_ns }.bounded()
}

/// A path the old primary changed, and the path this tree's own namespace
/// operations `ops` moved, made or removed at, above or below it: sending
/// ranges by name could then put the old primary's content under a name the
/// new primary gave to something else.
fn overlap<'a>(ops: impl IntoIterator<Item = &'a Op>, unsent: &Unsent) -> Option<(RelPath, RelPath)> {
    let mut touched: HashSet<RelPath> = HashSet::new();
    let mut above: HashSet<RelPath> = HashSet::new();
    for op in ops {
        if matches!(op, Op::Write { .. } | Op::Truncate { .. } | Op::Fallocate { .. } | Op::SetAttrs { .. } | Op::SetXattrs { .. } | Op::Barrier { .. }) {
            continue;
        }
        for path in op.paths() {
            touched.insert(path.clone());
            let mut parent = path.parent();
            while let Some(dir) = parent {
                parent = dir.parent();
                above.insert(dir);
            }
        }
    }
    unsent.all_paths().find_map(|path| {
        let at_or_above = std::iter::successors(Some(path.clone()), |p| p.parent()).find(|p| touched.contains(p));
        at_or_above.or_else(|| above.contains(path).then(|| path.clone())).map(|moved| (path.clone(), moved))
    })
}

/// An inode's names and the byte ranges of it not sent.
type DirtyNames = (Vec<RelPath>, Vec<(u64, u64)>);

/// What a failback by ranges queued.
#[derive(Debug, Default)]
pub struct Started {
    /// Files whose ranges are sent.
    pub files: usize,
    /// Paths made anew on the standby, whole.
    pub replaced: usize,
}

/// Queues the old primary's `unsent` changes on top of this tree's own since
/// the promotion: the ranges it changed in files both trees hold are read
/// here and sent; whatever it made, moved or removed is made anew. `Err` says
/// why the whole tree must be compared instead.
pub fn start(engine: &mut Engine, backlog: &Backlog, unsent: &Unsent, now_mono: u64) -> Result<Started, String> {
    if !unsent.complete {
        return Err("the old primary's agent left no complete record of what it had not sent".into());
    }
    let (records, _) = backlog.records();
    let ops = records.iter().filter_map(|r| match r {
        Record::Op { op, .. } => Some(op),
        Record::Dirty { .. } => None,
    });
    if let Some((path, moved)) = overlap(ops, unsent) {
        return Err(format!("the old primary changed {path} and this tree moved, made or removed {moved} since the promotion"));
    }
    let mut started = Started::default();
    for file in &unsent.files {
        let ino = engine.index().resolve(&file.path).filter(|&ino| engine.index().kind(ino) == Some(NodeKind::File));
        match ino {
            Some(ino) => {
                engine.redirty(&DirtyInode { ino, ranges: file.ranges.clone(), attrs: true }, now_mono);
                started.files += 1;
            }
            None => {
                engine.request_replacement(file.path.clone(), "changed on the old primary, which this tree does not hold as a file");
                started.replaced += 1;
            }
        }
    }
    for path in &unsent.paths {
        engine.request_replacement(path.clone(), "made, moved or removed on the old primary");
        started.replaced += 1;
    }
    Ok(started)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::Attrs;

    fn p(s: &str) -> RelPath {
        RelPath::from_bytes(s).unwrap()
    }

    fn rename(from: &str, to: &str) -> Op {
        Op::Rename { from: p(from), to: p(to), exchange: false, noreplace: false }
    }

    #[test]
    fn the_record_names_ranges_for_data_and_paths_for_everything_else() {
        let ops = vec![
            Op::Truncate { path: p("db/shrunk"), size: 100 },
            Op::SetAttrs { path: p("db/chmod"), attrs: Attrs::default() },
            Op::CreateFile { path: p("db/new"), mode: 0o600, truncate: false },
            rename("db/old", "db/renamed"),
            Op::Barrier { path: None },
        ];
        let dirty = vec![
            (vec![p("db/data")], vec![(0, 10), (5, 20), (10_000, 10_200)]),
            (vec![p("db/new")], vec![(0, 4096)]),
            (Vec::new(), vec![(0, 1)]),
        ];
        let unsent = record(GenerationId(7), 1, Some(vec![p("db/after-journal")]), ops, dirty);
        assert!(unsent.complete);
        let files: Vec<(String, Vec<(u64, u64)>)> = unsent.files.iter().map(|f| (f.path.to_string(), f.ranges.clone())).collect();
        assert_eq!(
            files,
            vec![
                ("db/chmod".into(), vec![]),
                ("db/data".into(), vec![(0, 20), (10_000, 10_200)]),
                ("db/shrunk".into(), vec![(100, u64::MAX)]),
            ]
        );
        let paths: Vec<String> = unsent.paths.iter().map(ToString::to_string).collect();
        assert_eq!(paths, ["db/after-journal", "db/new", "db/old", "db/renamed"], "a new file is made whole, not by ranges");
        assert!(!record(GenerationId(7), 1, None, Vec::new(), Vec::new()).complete, "a pending comparison of the whole tree");
    }

    #[test]
    fn too_many_ranges_in_one_file_become_one() {
        let ranges: Vec<(u64, u64)> = (0..1000).map(|i| (i * 1000, i * 1000 + 1)).collect();
        let unsent = record(GenerationId(1), 1, Some(Vec::new()), Vec::new(), vec![(vec![p("f")], ranges)]);
        assert_eq!(unsent.files[0].ranges, vec![(0, 999_001)]);
    }

    #[test]
    fn a_namespace_change_at_above_or_below_a_changed_path_overlaps() {
        let unsent = Unsent {
            generation: GenerationId(1),
            files: vec![UnsentFile { path: p("a/b/file"), ranges: vec![(0, 1)] }],
            paths: vec![p("made/dir")],
            complete: true,
            recorded_unix_ns: 0,
        };
        let overlaps = |op: Op| overlap([&op], &unsent).map(|(path, moved)| (path.to_string(), moved.to_string()));
        assert_eq!(overlaps(rename("a", "z")), Some(("a/b/file".into(), "a".into())), "a directory above it moved");
        assert_eq!(overlaps(Op::Remove { path: p("a/b/file") }), Some(("a/b/file".into(), "a/b/file".into())));
        assert_eq!(overlaps(Op::Mkdir { path: p("made/dir/sub"), mode: 0o755 }), Some(("made/dir".into(), "made/dir".into())), "made below it");
        assert_eq!(overlaps(rename("a/b/other", "a/b/third")), None, "a sibling");
        assert_eq!(overlaps(Op::Write { path: p("a/b/file"), offset: 0, data: vec![1], hash: sluice_proto::blocks::hash(&[1]) }), None, "data is not a move");
    }
}
