//! Everything the standby does not yet hold on disk: operations not sent yet (a
//! queue bounded in memory, drained oldest first) and operations sent but not yet
//! reported durable by the receiver, kept without their file content so that a
//! lost connection or a crashed receiver costs a resend of exactly those.
//!
//! Sequence numbers are given when an operation enters the backlog, so the order
//! of the stream is fixed at capture time whether the link is up or not.

use crate::engine::{DirtyInode, PendingOp};
use crate::ranges::RangeSet;
use serde::{Deserialize, Serialize};
use sluice_proto::{Entry, Op, RelPath, SeqOp};
use std::collections::{BTreeMap, VecDeque};

/// How much the backlog may hold in memory.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// File content held in unsent operations; past it, dirty data stays a list
    /// of ranges in the engine and is read when it can be sent.
    pub bytes: u64,
    /// Operations held; past it, the backlog is dropped and the tree compared.
    pub ops: usize,
}

/// An operation as kept once sent (or as stored in the journal): without content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// A write (`range`) or a metadata change (`None`) of an inode: resending it
    /// means reading the inode again.
    Dirty { seq: u64, ino: u64, range: Option<(u64, u64)> },
    /// Any other operation, resent as it was.
    Op { seq: u64, op: Op },
}

impl Record {
    pub fn seq(&self) -> u64 {
        match self {
            Record::Dirty { seq, .. } | Record::Op { seq, .. } => *seq,
        }
    }

    /// File bytes the record stands for.
    fn content_len(&self) -> u64 {
        match self {
            Record::Dirty { range: Some((start, end)), .. } => end - start,
            Record::Op { op, .. } => op.payload_len(),
            Record::Dirty { .. } => 0,
        }
    }

    fn of(seq: u64, pending: &PendingOp) -> Record {
        match (&pending.op, pending.ino) {
            (Op::Write { offset, data, .. }, Some(ino)) => {
                Record::Dirty { seq, ino, range: Some((*offset, offset + data.len() as u64)) }
            }
            (Op::SetAttrs { .. }, Some(ino)) => Record::Dirty { seq, ino, range: None },
            // A write without an inode to read it again from is kept with its bytes.
            (op, _) => Record::Op { seq, op: op.clone() },
        }
    }
}

struct Queued {
    seq: u64,
    captured_ns: u64,
    pending: PendingOp,
}

/// A manifest that must be sent, or was sent and is not settled yet.
#[derive(Clone, Debug)]
pub struct ManifestState {
    /// The entries of a scoped manifest; `None` for a comparison of the whole tree.
    pub scoped: Option<Vec<Entry>>,
    /// For a scoped manifest, the paths below which the standby removes what it
    /// does not list.
    pub subtrees: Vec<RelPath>,
    /// Set when the receiver reported `ManifestDone`: the last sequence number given
    /// by then, which covers the answers to its `Want`s.
    pub done_seq: Option<u64>,
    /// Lower bound (Unix seconds) of the inode change times the manifest verifies.
    pub since: i64,
}

/// What a new connection must send again.
pub struct Rewound {
    /// Operations queued again, in order, ahead of what was never sent.
    pub requeued: usize,
    /// Inodes whose sent writes or metadata must be read again.
    pub dirty: Vec<DirtyInode>,
    /// A comparison of the whole tree that did not settle and must be redone.
    pub unfinished: Option<ManifestState>,
    /// Operations sent and not durable that were not queued again, because the
    /// standby may already have applied them (see [`Backlog::rewind`]).
    pub unreplayed: Vec<Op>,
}

/// What to send next.
pub enum Next {
    Ops(Vec<SeqOp>),
    Manifest { entries: Vec<Entry>, subtrees: Vec<RelPath> },
}

/// The ordered, bounded backlog of one agent (it outlives connections).
pub struct Backlog {
    next_seq: u64,
    limits: Limits,
    unsent: VecDeque<Queued>,
    unsent_payload: u64,
    /// A scoped manifest waiting to be sent after the unsent operations numbered below it.
    queued_manifest: Option<(u64, ManifestState)>,
    unconfirmed: BTreeMap<u64, (u64, Record)>,
    /// The manifest sent last and not settled, with the sequence number it precedes.
    manifest_in_flight: Option<(u64, ManifestState)>,
    /// Operations and file bytes sent and not yet acknowledged as applied.
    in_flight: (usize, u64),
    applied: u64,
    durable: u64,
    /// When the last durable operation was captured (CLOCK_MONOTONIC ns), when
    /// this run sent it.
    durable_captured_ns: Option<u64>,
    /// What changed since the journal last took it (see [`Backlog::take_log`]).
    log: Vec<Record>,
    log_cleared: bool,
    log_durable: Option<u64>,
    /// The journal must record the whole backlog again (sequence numbers changed).
    checkpoint_owed: bool,
}

impl Backlog {
    pub fn new(next_seq: u64, durable: u64, limits: Limits) -> Backlog {
        Backlog {
            next_seq: next_seq.max(durable + 1),
            limits,
            unsent: VecDeque::new(),
            unsent_payload: 0,
            queued_manifest: None,
            unconfirmed: BTreeMap::new(),
            manifest_in_flight: None,
            in_flight: (0, 0),
            applied: durable,
            durable,
            durable_captured_ns: None,
            log: Vec::new(),
            log_cleared: false,
            log_durable: None,
            checkpoint_owed: false,
        }
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The highest sequence number the receiver reported durable.
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// When the operation the receiver last reported durable was captured
    /// (CLOCK_MONOTONIC ns); `None` when this run did not send it.
    pub fn durable_captured_ns(&self) -> Option<u64> {
        self.durable_captured_ns
    }

    /// The highest sequence number the receiver reported applied.
    pub fn applied_seq(&self) -> u64 {
        self.applied
    }

    /// Numbers `pending` and queues it.
    pub fn push(&mut self, pending: PendingOp, captured_ns: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.unsent_payload += pending.op.payload_len();
        self.log.push(Record::of(seq, &pending));
        self.unsent.push_back(Queued { seq, captured_ns, pending });
    }

    /// Queues a scoped manifest after everything queued so far.
    pub fn push_manifest(&mut self, state: ManifestState) {
        self.queued_manifest = Some((self.next_seq, state));
    }

    /// True when unsent operations hold as much file content as allowed.
    pub fn content_full(&self) -> bool {
        self.unsent_payload >= self.limits.bytes
    }

    /// True when more operations are held than allowed.
    pub fn overflowed(&self) -> bool {
        self.held_ops() > self.limits.ops
    }

    /// Operations held: unsent, and sent but not yet durable on the standby.
    pub fn held_ops(&self) -> usize {
        self.unsent.len() + self.unconfirmed.len()
    }

    /// The most operations it may hold before it overflows.
    pub fn ops_limit(&self) -> usize {
        self.limits.ops
    }

    pub fn unsent_len(&self) -> usize {
        self.unsent.len()
    }

    pub fn unsent_payload(&self) -> u64 {
        self.unsent_payload
    }

    pub fn is_idle(&self) -> bool {
        self.unsent.is_empty() && self.queued_manifest.is_none()
    }

    /// Operations sent and not yet acknowledged as applied.
    pub fn in_flight(&self) -> usize {
        self.in_flight.0
    }

    /// File bytes sent and not yet acknowledged as applied.
    pub fn in_flight_bytes(&self) -> u64 {
        self.in_flight.1
    }

    /// Capture time (CLOCK_MONOTONIC ns) of the oldest change not yet applied
    /// (that of the first one in sequence order, which is captured first).
    pub fn oldest_unapplied_ns(&self) -> Option<u64> {
        let unsent = self.unsent.front().map(|q| q.captured_ns);
        let sent = self.unconfirmed.range(self.applied + 1..).next().map(|(_, (ns, _))| *ns);
        unsent.into_iter().chain(sent).min()
    }

    /// Moves the applied mark to `seq`, taking what it passes out of the in-flight counts.
    fn advance_applied(&mut self, seq: u64) -> u64 {
        if seq <= self.applied {
            return 0;
        }
        let mut newly = 0;
        for (_, (_, record)) in self.unconfirmed.range(self.applied + 1..=seq) {
            newly += 1;
            self.in_flight.0 -= 1;
            self.in_flight.1 -= record.content_len();
        }
        self.applied = seq;
        newly
    }

    /// Takes the next operations to send (up to about `max_payload` bytes of
    /// content), or the queued manifest when its turn has come.
    pub fn take(&mut self, max_payload: u64, now_mono: u64, now_unix: u64) -> Option<Next> {
        self.take_stamped(max_payload, &|captured_ns| now_unix.saturating_sub(now_mono.saturating_sub(captured_ns)))
    }

    /// [`Backlog::take`], with `stamp` turning each operation's capture time
    /// (CLOCK_MONOTONIC ns) into the Unix time the receiver is told.
    pub fn take_stamped(&mut self, max_payload: u64, stamp: &dyn Fn(u64) -> u64) -> Option<Next> {
        if let Some((after, _)) = &self.queued_manifest
            && self.unsent.front().is_none_or(|q| q.seq >= *after) {
                let (after, state) = self.queued_manifest.take().expect("checked above");
                let entries = state.scoped.clone().unwrap_or_default();
                let subtrees = state.subtrees.clone();
                self.manifest_in_flight = Some((after, state));
                return Some(Next::Manifest { entries, subtrees });
            }
        let mut batch = Vec::new();
        let mut payload = 0;
        while let Some(queued) = self.unsent.front() {
            if self.queued_manifest.as_ref().is_some_and(|(after, _)| queued.seq >= *after) {
                break;
            }
            if batch.len() >= sluice_proto::MAX_OPS {
                break;
            }
            let queued = self.unsent.pop_front().expect("front exists");
            let len = queued.pending.op.payload_len();
            // Frames are bounded by what operations take encoded, not only by the
            // file content they carry: a backlog of creates holds no content.
            let encoded = queued.pending.op.encoded_len_hint() as u64;
            self.unsent_payload -= len;
            let record = Record::of(queued.seq, &queued.pending);
            self.in_flight.0 += 1;
            self.in_flight.1 += record.content_len();
            self.unconfirmed.insert(queued.seq, (queued.captured_ns, record));
            let captured_unix_ns = stamp(queued.captured_ns);
            batch.push(SeqOp { seq: queued.seq, captured_unix_ns, op: queued.pending.op });
            payload += encoded;
            if payload >= max_payload {
                break;
            }
        }
        (!batch.is_empty()).then_some(Next::Ops(batch))
    }

    /// Records that a full comparison's manifest was sent.
    pub fn full_manifest_sent(&mut self, since: i64) {
        self.manifest_in_flight = Some((self.next_seq, ManifestState { scoped: None, subtrees: Vec::new(), done_seq: None, since }));
    }

    /// The receiver answered every entry of the manifest in flight.
    pub fn manifest_done(&mut self) {
        if let Some((_, state)) = &mut self.manifest_in_flight {
            state.done_seq = Some(self.next_seq - 1);
        }
        self.settle_manifest();
    }

    fn settle_manifest(&mut self) {
        if self.manifest_in_flight.as_ref().is_some_and(|(_, m)| m.done_seq.is_some_and(|done| done <= self.durable)) {
            self.manifest_in_flight = None;
        }
    }

    /// A manifest whose comparison is not yet durable on the standby, or one waiting to be sent.
    pub fn unsettled_manifest(&self) -> Option<&ManifestState> {
        self.manifest_in_flight.as_ref().or(self.queued_manifest.as_ref()).map(|(_, m)| m)
    }

    /// The receiver applied everything up to `seq`; returns how many operations that acknowledged.
    pub fn applied(&mut self, seq: u64) -> u64 {
        self.advance_applied(seq)
    }

    /// The receiver made everything up to `seq` durable: forget it.
    pub fn confirmed(&mut self, seq: u64) {
        if seq <= self.durable {
            return;
        }
        self.durable = seq;
        self.log_durable = Some(seq);
        if let Some((captured_ns, _)) = self.unconfirmed.get(&seq) {
            self.durable_captured_ns = Some(*captured_ns);
        }
        self.advance_applied(seq);
        self.unconfirmed = self.unconfirmed.split_off(&(seq + 1));
        self.settle_manifest();
    }

    /// Starts a new connection whose receiver holds everything up to `durable`:
    /// operations after it go back to the front of the queue, in order, and the
    /// inodes whose writes must be read again are returned. A manifest not settled
    /// is returned too: scoped ones are queued again, a full one must be redone.
    ///
    /// Without `replay` (the receiver stopped uncleanly and may hold some of them
    /// already), operations other than writes are not queued again but returned
    /// in `unreplayed`: replaying a rename that was applied could do harm, so the
    /// paths they name are compared instead.
    pub fn rewind(&mut self, durable: u64, now_mono: u64, replay: bool) -> Rewound {
        self.confirmed(durable);
        self.checkpoint_owed = true;
        self.applied = self.durable;
        self.in_flight = (0, 0);
        // The receiver may hold operations numbered past what this agent's journal
        // recorded (sent just before a crash): number everything not yet sent after
        // them, or the receiver would take it for a replay and skip it.
        if let Some(first) = self.unsent.front().map(|q| q.seq).filter(|&first| first <= durable) {
            let shift = durable + 1 - first;
            for queued in &mut self.unsent {
                queued.seq += shift;
            }
            if let Some((after, _)) = &mut self.queued_manifest {
                *after += shift;
            }
            self.next_seq += shift;
        }
        self.next_seq = self.next_seq.max(durable + 1);
        let mut dirty: BTreeMap<u64, DirtyInode> = BTreeMap::new();
        let mut resend = Vec::new();
        let mut unreplayed = Vec::new();
        for (seq, (captured_ns, record)) in std::mem::take(&mut self.unconfirmed) {
            match record {
                Record::Dirty { ino, range, .. } => {
                    let entry = dirty.entry(ino).or_insert_with(|| DirtyInode { ino, ..DirtyInode::default() });
                    match range {
                        Some(range) => entry.ranges.push(range),
                        None => entry.attrs = true,
                    }
                }
                Record::Op { op, .. } if !replay => unreplayed.push(op),
                Record::Op { op, .. } => {
                    let pending = PendingOp { op, captured_ns: captured_ns.min(now_mono), ino: None };
                    resend.push(Queued { seq, captured_ns: pending.captured_ns, pending });
                }
            }
        }
        let requeued = resend.len();
        for queued in resend.into_iter().rev() {
            self.unsent.push_front(queued);
        }
        let manifest = match self.manifest_in_flight.take() {
            Some((after, state)) if state.scoped.is_some() => {
                if self.queued_manifest.is_none() {
                    self.queued_manifest = Some((after, ManifestState { done_seq: None, ..state }));
                }
                None
            }
            other => other.map(|(_, state)| state),
        };
        Rewound { requeued, dirty: dirty.into_values().collect(), unfinished: manifest, unreplayed }
    }

    /// Drops everything: a comparison of the whole tree is about to cover it.
    pub fn clear(&mut self) {
        self.log.clear();
        self.log_cleared = true;
        self.unsent.clear();
        self.unsent_payload = 0;
        self.unconfirmed.clear();
        self.in_flight = (0, 0);
        self.queued_manifest = None;
        self.manifest_in_flight = None;
        self.applied = self.applied.max(self.next_seq - 1);
    }

    /// What changed since the last call, as journal entries in the order they apply.
    pub fn take_log(&mut self) -> Vec<crate::journal::LogEntry> {
        use crate::journal::LogEntry;
        let mut entries = Vec::new();
        if std::mem::take(&mut self.log_cleared) {
            entries.push(LogEntry::Cleared);
        }
        if !self.log.is_empty() {
            entries.push(LogEntry::Pushed(std::mem::take(&mut self.log)));
        }
        if let Some(durable) = self.log_durable.take() {
            entries.push(LogEntry::Durable(durable));
        }
        entries
    }

    /// Whether the journal must record the whole backlog again; forgets the
    /// changes taken by [`Backlog::take_log`] so far, which that record covers.
    pub fn take_checkpoint_owed(&mut self) -> bool {
        std::mem::take(&mut self.checkpoint_owed)
    }

    /// What the journal must keep: operations in order, and inodes whose data
    /// (or metadata) the standby may lack.
    pub fn records(&self) -> (Vec<Record>, Vec<DirtyInode>) {
        let mut dirty = BTreeMap::new();
        let sent = self.unconfirmed.values().map(|(_, record)| record.clone());
        let unsent = self.unsent.iter().map(|q| Record::of(q.seq, &q.pending));
        let ops = split_records(sent.chain(unsent), &mut dirty);
        (ops, dirty_inodes(dirty))
    }

    /// Restores operations from the journal as sent-but-unconfirmed, so the next
    /// connection resends those the receiver does not hold.
    pub fn restore(&mut self, records: Vec<Record>, now_mono: u64) {
        self.checkpoint_owed = true;
        for record in records {
            if record.seq() > self.durable {
                self.next_seq = self.next_seq.max(record.seq() + 1);
                self.in_flight.0 += 1;
                self.in_flight.1 += record.content_len();
                self.unconfirmed.insert(record.seq(), (now_mono, record));
            }
        }
    }
}

/// Per inode, the ranges and whether the metadata may be missing on the standby.
pub type DirtyMap = BTreeMap<u64, (RangeSet, bool)>;

/// Folds the writes and attribute changes among `records` into `dirty` (they are
/// resent by reading the inode again) and returns the other operations, in order.
pub fn split_records(records: impl IntoIterator<Item = Record>, dirty: &mut DirtyMap) -> Vec<Record> {
    let mut ops = Vec::new();
    for record in records {
        match record {
            Record::Dirty { ino, range, .. } => {
                let (ranges, attrs) = dirty.entry(ino).or_default();
                match range {
                    Some((start, end)) => ranges.insert(start, end - start),
                    None => *attrs = true,
                }
            }
            Record::Op { .. } => ops.push(record),
        }
    }
    ops
}

/// `dirty` as the journal and the engine list it.
pub fn dirty_inodes(dirty: DirtyMap) -> Vec<DirtyInode> {
    dirty.into_iter().map(|(ino, (ranges, attrs))| DirtyInode { ino, ranges: ranges.iter().collect(), attrs }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::{Attrs, RelPath};

    fn p(s: &str) -> RelPath {
        RelPath::from_bytes(s).unwrap()
    }

    fn write(ino: u64, offset: u64, len: usize) -> PendingOp {
        let data = vec![1u8; len];
        let hash = sluice_proto::blocks::hash(&data);
        PendingOp { op: Op::Write { path: p("f"), offset, data, hash }, captured_ns: 1, ino: Some(ino) }
    }

    fn mkdir(name: &str) -> PendingOp {
        PendingOp { op: Op::Mkdir { path: p(name), mode: 0o755 }, captured_ns: 1, ino: None }
    }

    fn seqs(next: Option<Next>) -> Vec<u64> {
        match next {
            Some(Next::Ops(ops)) => ops.iter().map(|o| o.seq).collect(),
            Some(Next::Manifest { .. }) => vec![0],
            None => vec![],
        }
    }

    #[test]
    fn drains_in_order_and_forgets_what_is_durable() {
        let mut backlog = Backlog::new(1, 0, Limits { bytes: 1 << 20, ops: 100 });
        backlog.push(mkdir("a"), 1);
        backlog.push(write(7, 0, 4096), 1);
        backlog.push(mkdir("b"), 5);
        assert_eq!(seqs(backlog.take(1 << 20, 1, 1)), vec![1, 2, 3]);
        assert_eq!(backlog.applied(3), 3);
        assert_eq!(backlog.in_flight(), 0);
        let (ops, dirty) = backlog.records();
        assert_eq!(ops.len(), 2, "sent but not durable: still journaled");
        assert_eq!(dirty, vec![DirtyInode { ino: 7, ranges: vec![(0, 4096)], attrs: false }]);
        assert_eq!(backlog.durable_captured_ns(), None);
        backlog.confirmed(3);
        assert_eq!(backlog.records(), (vec![], vec![]));
        assert_eq!(backlog.durable_captured_ns(), Some(5), "the capture time of mkdir b");
    }

    #[test]
    fn rewind_resends_after_what_the_receiver_holds() {
        let mut backlog = Backlog::new(1, 0, Limits { bytes: 1 << 20, ops: 100 });
        backlog.push(mkdir("a"), 1);
        backlog.push(write(7, 8192, 100), 1);
        let attrs = PendingOp { op: Op::SetAttrs { path: p("f"), attrs: Attrs::default() }, captured_ns: 1, ino: Some(7) };
        backlog.push(attrs, 1);
        backlog.push(mkdir("b"), 1);
        assert_eq!(seqs(backlog.take(1 << 20, 1, 1)), vec![1, 2, 3, 4]);
        backlog.push(mkdir("c"), 1);
        let Rewound { requeued, dirty, unfinished, unreplayed } = backlog.rewind(1, 1, true);
        assert!(unreplayed.is_empty());
        assert!(unfinished.is_none());
        assert_eq!(requeued, 1, "mkdir b");
        assert_eq!(dirty, vec![DirtyInode { ino: 7, ranges: vec![(8192, 8292)], attrs: true }]);
        assert_eq!(seqs(backlog.take(1 << 20, 1, 1)), vec![4, 5], "mkdir b again, then the unsent mkdir c");
    }

    #[test]
    fn an_uncertain_receiver_gets_writes_again_but_not_renames() {
        let mut backlog = Backlog::new(1, 0, Limits { bytes: 1 << 20, ops: 100 });
        backlog.push(write(7, 0, 100), 1);
        let rename = Op::Rename { from: p("a"), to: p("b"), exchange: false, noreplace: false };
        backlog.push(PendingOp { op: rename.clone(), captured_ns: 1, ino: None }, 1);
        assert_eq!(seqs(backlog.take(1 << 20, 1, 1)), vec![1, 2]);
        let rewound = backlog.rewind(0, 1, false);
        assert_eq!(rewound.requeued, 0);
        assert_eq!(rewound.unreplayed, vec![rename]);
        assert_eq!(rewound.dirty, vec![DirtyInode { ino: 7, ranges: vec![(0, 100)], attrs: false }]);
        assert!(backlog.is_idle());
    }

    #[test]
    fn unsent_ops_are_numbered_after_what_the_receiver_holds() {
        // The journal knew of ops up to 4; the receiver applied up to 12 before the crash.
        let mut backlog = Backlog::new(5, 4, Limits { bytes: 1 << 20, ops: 100 });
        backlog.push(mkdir("a"), 1);
        backlog.push(mkdir("b"), 1);
        let rewound = backlog.rewind(12, 1, true);
        assert!(rewound.dirty.is_empty() && rewound.unfinished.is_none());
        assert_eq!(seqs(backlog.take(1 << 20, 1, 1)), vec![13, 14]);
        backlog.push(mkdir("c"), 1);
        assert_eq!(seqs(backlog.take(1 << 20, 1, 1)), vec![15]);
        // With nothing unsent, new ops still follow the receiver's.
        let mut backlog = Backlog::new(5, 4, Limits { bytes: 1 << 20, ops: 100 });
        backlog.rewind(12, 1, true);
        backlog.push(mkdir("d"), 1);
        assert_eq!(seqs(backlog.take(1 << 20, 1, 1)), vec![13]);
    }

    #[test]
    fn content_bound_and_op_bound() {
        let mut backlog = Backlog::new(1, 0, Limits { bytes: 8192, ops: 3 });
        backlog.push(write(1, 0, 4096), 1);
        assert!(!backlog.content_full());
        backlog.push(write(1, 4096, 4096), 1);
        assert!(backlog.content_full());
        backlog.push(mkdir("a"), 1);
        assert!(!backlog.overflowed());
        backlog.push(mkdir("b"), 1);
        assert!(backlog.overflowed());
        backlog.clear();
        assert!(backlog.is_idle() && !backlog.content_full());
    }

    #[test]
    fn scoped_manifest_goes_after_earlier_ops_and_is_redone_until_durable() {
        let mut backlog = Backlog::new(1, 0, Limits { bytes: 1 << 20, ops: 100 });
        backlog.push(mkdir("a"), 1);
        backlog.push_manifest(ManifestState { scoped: Some(vec![]), subtrees: vec![], done_seq: None, since: 5 });
        backlog.push(mkdir("b"), 1);
        assert_eq!(seqs(backlog.take(1 << 20, 1, 1)), vec![1]);
        assert_eq!(seqs(backlog.take(1 << 20, 1, 1)), vec![0], "then the manifest");
        assert_eq!(seqs(backlog.take(1 << 20, 1, 1)), vec![2]);
        // The connection drops before the comparison settles: it is queued again.
        assert!(backlog.rewind(0, 1, true).unfinished.is_none());
        assert_eq!(seqs(backlog.take(1 << 20, 1, 1)), vec![1]);
        assert_eq!(seqs(backlog.take(1 << 20, 1, 1)), vec![0]);
        backlog.manifest_done();
        assert!(backlog.unsettled_manifest().is_some());
        backlog.confirmed(2);
        assert!(backlog.unsettled_manifest().is_none());
    }
}
