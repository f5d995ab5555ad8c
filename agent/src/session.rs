//! Replication to every standby ([`Replicator`]): events into operations, read
//! once and handed to each standby's [`Feed`]; memory bounds per standby; the
//! durable journals; restart recovery; and, per connection, the handshake,
//! resending what the standby lacks, tree comparisons, streaming and
//! acknowledgements. Nothing here waits on a connection: frames go to each
//! connection's [`Outbox`](crate::link::Outbox), so a slow standby never holds
//! up the others.

use crate::backlog::{Backlog, Limits, ManifestState, Next, Rewound};
use crate::capture::Event;
use crate::control::{AgentStatus, ControlRequest, Request, StandbyStatus, SwitchoverProof};
use crate::engine::{DirtyInode, Engine, PendingOp, Recovery};
use crate::feed::{Feed, Link};
use crate::journal::{Header, JournalWriter, LogEntry, Snapshot};
use crate::link::{Opened, Outbox};
use crate::metrics::{Metrics, StandbyMetrics};
use crate::verify::{Report, Verifier};
use anyhow::{Context, bail};
use sluice_proto::lineage::{Activity, Lineage, Role, TreeLineage};
use sluice_proto::{AgentMessage, Entry, Op, PROTOCOL_VERSION, ReceiverMessage};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};

/// Encoded manifest bytes per frame, about (entries with large extended
/// attributes make few entries a frame).
const MANIFEST_CHUNK_BYTES: usize = 1 << 20;
/// Payload bytes per frame of operations; small ops share a frame.
const FRAME_PAYLOAD: u64 = 1 << 20;
/// Rescans closer together than this are deferred, so a burst of unplaceable events costs one.
pub const RESCAN_SPACING: Duration = Duration::from_secs(2);
/// How often a waiting switchover tells the operator what it waits for.
const SWITCHOVER_REPORT: Duration = Duration::from_secs(1);
/// How often the initial sync logs its progress when no terminal shows a bar.
const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(5);
/// How far before a journal write an inode change may have happened without its
/// event having been processed yet (ring-buffer latency, and a long write(2)
/// that set the change time when it started). Changes later than the last
/// write minus this are verified on restart.
const JOURNAL_SLACK_SECS: i64 = 2;
/// With operations in flight and, for this long, neither an acknowledgement from
/// the receiver nor a QUIC-level ACK from its endpoint, the link is presumed down:
/// nothing more is sent until one arrives, so an outage costs a resend of at most
/// this much of the stream (QUIC's idle timeout ends the connection later; a link
/// that comes back before then loses nothing). A receiver that is merely slow
/// (its disk throttling writes) keeps acknowledging packets and is not paused for.
const STALL: Duration = Duration::from_secs(1);
/// Wanted files read in one turn of the loop, at most.
const WANTS_PER_TURN: usize = 32;
/// Frames queued for one standby in one turn of the loop, at most.
const FRAMES_PER_TURN: usize = 8;
/// File content read ahead of sending, by flushes of dirty data and while
/// answering the receiver's wants.
const READ_AHEAD_BYTES: u64 = 16 << 20;
/// File content in flight (sent, not acknowledged as applied), at most, and
/// no more than a standby's bound on unsent content: what is in flight sits in
/// the connection's buffers, so a standby behind a thin link holds at most
/// twice its bound in memory.
const IN_FLIGHT_BYTES: u64 = 32 << 20;
/// Operations read ahead of sending while answering wants, and in flight, at
/// most (and no more than an eighth and a quarter of the backlog's bound): a
/// tree of small files makes many operations per byte, and the backlog's own
/// bound on operations, which a comparison answers by starting over, must stay
/// far away.
const READ_AHEAD_OPS: usize = 16_384;
const IN_FLIGHT_OPS: usize = 65_536;
/// Why the tree is compared when there is no durable state to resume from.
const NO_STATE: &str = "no durable state from an earlier run";
/// How often systemd hears what the agent does.
const SERVICE_STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// An agent whose standby stays unreachable this long after the start is
/// ready all the same: it captures and journals every change for it.
const READY_WITHOUT_STANDBY: Duration = Duration::from_secs(10);

/// A batch of events and the kernel's drop counter read after it.
pub struct CaptureBatch {
    pub events: Vec<Event>,
    pub dropped_total: u64,
}

/// CLOCK_MONOTONIC now, in the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

pub fn unix_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn unix_secs() -> i64 {
    (unix_ns() / 1_000_000_000) as i64
}

/// A standby as the agent starts: its journal and what it held.
pub struct FeedSetup {
    pub name: String,
    pub address: std::net::SocketAddr,
    pub journal: JournalWriter,
    pub loaded: Option<Snapshot>,
    pub verifier: Verifier,
    pub metrics: StandbyMetrics,
}

/// Events → operations → each standby's backlog, whether connected or not,
/// and the durable record of what each standby may lack.
pub struct Replicator {
    pub engine: Engine,
    pub feeds: Vec<Feed>,
    limits: Limits,
    metrics: Metrics,
    dropped_seen: u64,
    read_seen: u64,
    shared_seen: u64,
    /// When the last event was handled (Unix seconds).
    last_event_secs: i64,
    /// When the last event was handled (Unix ns).
    last_event_unix_ns: u64,
    /// Changes captured in this tree's generation, earlier runs included.
    generation_changes: u64,
    ticks: u64,
    scratch: Vec<PendingOp>,
    pub crosscheck: crate::crosscheck::CrossCheck,
    crosscheck_seen: (u64, u64),
    /// Capture time of the newest event handled.
    latest_event_ns: u64,
    /// What the status names: the tree, the standbys, the lineage.
    pub about: About,
    /// A switchover asked for and not finished (with the one standby there is).
    switchover: Option<PendingSwitchover>,
    /// A switchover the standby confirmed: the daemon makes this tree a standby and stops.
    pub switched: Option<Switched>,
    /// Where how far this master got is recorded now and then.
    pub activity_file: Option<crate::lineage::TreeFile>,
    activity_recorded: (Activity, Option<Instant>),
    /// What systemd is told (readiness, status lines).
    pub notifier: sluice_net::notify::Notifier,
    /// Beats each time the work loop goes round, for systemd's watchdog.
    pub heartbeat: sluice_net::notify::Heartbeat,
    /// When the agent started, and when systemd last heard of it.
    service_started: Instant,
    service_reported: Option<Instant>,
    /// Notified each time a connection's writer took a frame.
    pub written: Arc<Notify>,
    /// When this tree is a standby forwarding what it applies (a relay): the
    /// master's capture times of what its receiver applied.
    pub relay: Option<RelayClock>,
    /// Each standby's lag over the last hour, for the status page.
    lag_history: sluice_net::history::LagHistory,
}

/// The master's capture time of what a relay's receiver applied, by when the
/// relay captured the writes it made (see [`sluice_net::origin`]).
pub struct RelayClock {
    clock: sluice_net::origin::OriginClock,
    /// The capture time (CLOCK_MONOTONIC ns) of the newest event of each batch
    /// handled → the master's capture time (Unix ns) of what was applied then.
    timeline: std::collections::BTreeMap<u64, u64>,
}

/// Batches whose origin a relay remembers, at most.
const RELAY_TIMELINE: usize = 1 << 16;

impl RelayClock {
    pub fn new(clock: sluice_net::origin::OriginClock) -> RelayClock {
        RelayClock { clock, timeline: std::collections::BTreeMap::new() }
    }

    fn note_batch(&mut self, newest_ns: u64) {
        let origin = self.clock.get();
        if origin == 0 {
            return;
        }
        self.timeline.insert(newest_ns, origin);
        while self.timeline.len() > RELAY_TIMELINE {
            self.timeline.pop_first();
        }
    }

    /// The master's capture time of a change this relay captured at `captured_ns`.
    fn origin_of(&self, captured_ns: u64, now_mono: u64, now_unix: u64) -> u64 {
        let local = now_unix.saturating_sub(now_mono.saturating_sub(captured_ns));
        let origin = self.timeline.range(captured_ns..).next().map(|(_, origin)| *origin).unwrap_or_else(|| self.clock.get());
        // Never later than the relay saw it.
        if origin == 0 { local } else { origin.min(local) }
    }
}

/// What the agent's status names besides its counters.
#[derive(Clone, Debug)]
pub struct About {
    pub root: std::path::PathBuf,
    pub peer: String,
    pub lineage: TreeLineage,
}

/// A switchover waiting for the standby to hold everything.
struct PendingSwitchover {
    reply: mpsc::UnboundedSender<crate::verify::Report>,
    started: Instant,
    /// The last operation before the switchover point, once `Promote` was sent.
    point: Option<u64>,
    last_report: Instant,
    /// Events captured since the last progress report.
    events_seen: u64,
}

/// A switchover the standby confirmed.
pub struct Switched {
    pub proof: SwitchoverProof,
    /// The standby's new lineage, which this tree now follows.
    pub lineage: Lineage,
    pub reply: mpsc::UnboundedSender<crate::verify::Report>,
}

/// The standby refused this agent: it was promoted out of this tree's
/// generation (or holds an unrelated one).
#[derive(Clone, Debug, thiserror::Error)]
#[error("the standby {standby} refused this agent (fenced): {reason}")]
pub struct Fenced {
    pub standby: String,
    pub reason: String,
    /// The standby's lineage.
    pub lineage: Lineage,
}

impl Replicator {
    /// Resumes each standby from its journal's snapshot when there is one: its
    /// operations and dirty ranges are queued for it, and the walk that
    /// rebuilds the index finds what changed after the oldest of them (see
    /// [`Engine::recover`]). A standby without one is compared on its first
    /// connection, unless no standby has one and the tree was promoted (at
    /// `promoted_unix_ns`): then the files changed since are queued whole, and
    /// with what capture finds from now on they are what the old primary needs
    /// at its failback (see [`crate::failback`]).
    pub fn new(mut engine: Engine, setups: Vec<FeedSetup>, promoted_unix_ns: Option<u64>, limits: Limits, metrics: Metrics) -> anyhow::Result<Replicator> {
        let now = monotonic_ns();
        let mut feeds = Vec::new();
        let mut loaded = Vec::new();
        for setup in setups {
            let (next_seq, durable) = setup.loaded.as_ref().map_or((1, 0), |s| (s.next_seq, s.durable));
            let mut feed = Feed::new(setup.name, setup.address, setup.journal, Backlog::new(next_seq, durable, limits), setup.verifier, setup.metrics);
            feed.failback_base = setup.loaded.as_ref().is_some_and(|s| s.failback_base && !s.compare_owed);
            feeds.push(feed);
            loaded.push(setup.loaded);
        }
        if feeds.len() > 1 {
            engine.share_reads();
        }
        let resumable: Vec<&Snapshot> = loaded.iter().flatten().filter(|s| !s.compare_owed).collect();
        if resumable.is_empty() && loaded.iter().all(Option::is_none) && let Some(promoted) = promoted_unix_ns {
            // Whatever the receiver applied before the promotion has an older
            // change time, or one within the same second (then the tree is compared).
            let since = (promoted / 1_000_000_000) as i64;
            match engine.recover(since).context("walking the watched tree")? {
                Recovery::Whole { changed } => {
                    for feed in &mut feeds {
                        feed.request_compare(format!("{changed} changed between the promotion and the agent's start"), false);
                    }
                }
                Recovery::Scoped(entries) => {
                    tracing::info!(
                        files = entries.len(),
                        "the tree was promoted and this agent has no state yet: files changed since the promotion are queued whole, for the old primary's failback"
                    );
                    for entry in &entries {
                        if let Some(ino) = engine.index().resolve(&entry.path) {
                            engine.redirty(&DirtyInode { ino, ranges: vec![(0, u64::MAX)], attrs: true }, now);
                        }
                    }
                    // An empty comparison marks the standby in sync once what is queued is applied.
                    let since = unix_secs() - JOURNAL_SLACK_SECS;
                    for feed in &mut feeds {
                        feed.failback_base = true;
                        feed.last_compare_start = Some(since);
                        feed.backlog.push_manifest(ManifestState { scoped: Some(Vec::new()), subtrees: Vec::new(), done_seq: None, since });
                    }
                }
            }
        } else if let Some(since) = resumable.iter().map(|s| s.verify_since).min() {
            let started = Instant::now();
            let recovery = engine.recover(since).context("walking the watched tree")?;
            for (i, (feed, snapshot)) in feeds.iter_mut().zip(loaded).enumerate() {
                let snapshot = match snapshot {
                    None => {
                        feed.request_compare(NO_STATE, false);
                        continue;
                    }
                    Some(snapshot) if snapshot.compare_owed => {
                        feed.request_compare("the previous run had not finished comparing the tree", false);
                        continue;
                    }
                    Some(snapshot) => snapshot,
                };
                match &recovery {
                    Recovery::Whole { changed } => feed.request_compare(format!("{changed} changed while the agent was not running"), false),
                    Recovery::Scoped(entries) => {
                        tracing::info!(
                            standby = %feed.name,
                            operations = snapshot.ops.len(),
                            dirty_files = snapshot.dirty.len(),
                            files_to_verify = entries.len(),
                            indexed = engine.index().len(),
                            walk_seconds = started.elapsed().as_secs_f64(),
                            "resuming from the durable state of the previous run"
                        );
                        metrics.files_verified.inc_by(entries.len() as u64);
                        feed.backlog.restore(snapshot.ops, now);
                        for dirty in &snapshot.dirty {
                            engine.redirty_for(i, dirty, now);
                        }
                        feed.last_compare_start = Some(since);
                        let manifest = ManifestState { scoped: Some(entries.clone()), subtrees: Vec::new(), done_seq: None, since };
                        feed.backlog.push_manifest(manifest);
                    }
                }
            }
        } else {
            for (feed, snapshot) in feeds.iter_mut().zip(&loaded) {
                match snapshot {
                    None => feed.request_compare(NO_STATE, false),
                    Some(_) => feed.request_compare("the previous run had not finished comparing the tree", false),
                }
            }
        }
        let peer = feeds.iter().map(|f| f.address.to_string()).collect::<Vec<_>>().join(", ");
        Ok(Replicator {
            engine,
            feeds,
            limits,
            metrics,
            dropped_seen: 0,
            read_seen: 0,
            shared_seen: 0,
            last_event_secs: 0,
            last_event_unix_ns: 0,
            generation_changes: 0,
            ticks: 0,
            lag_history: sluice_net::history::LagHistory::new(),
            scratch: Vec::new(),
            crosscheck: crate::crosscheck::CrossCheck::default(),
            crosscheck_seen: (0, 0),
            latest_event_ns: 0,
            about: About {
                root: std::path::PathBuf::new(),
                peer,
                lineage: TreeLineage { role: Role::Primary, lineage: Lineage::fresh(""), promoted: None, keep_replaced: false, activity: None },
            },
            switchover: None,
            switched: None,
            activity_file: None,
            activity_recorded: (Activity::default(), None),
            notifier: sluice_net::notify::Notifier::default(),
            heartbeat: sluice_net::notify::Heartbeat::default(),
            service_started: Instant::now(),
            service_reported: None,
            written: Arc::new(Notify::new()),
            relay: None,
        })
    }

    /// Applies a batch of captured events.
    pub fn handle_batch(&mut self, batch: CaptureBatch) {
        if let Some(switchover) = &mut self.switchover {
            switchover.events_seen += batch.events.len() as u64;
        }
        self.metrics.events_captured.inc_by(batch.events.len() as u64);
        if let Some(newest) = batch.events.iter().map(|e| e.ts_ns).max() {
            self.latest_event_ns = self.latest_event_ns.max(newest);
            if let Some(relay) = &mut self.relay {
                relay.note_batch(newest);
            }
        }
        self.note_drops(batch.dropped_total);
        let mut pending = std::mem::take(&mut self.scratch);
        let changes_before = self.engine.change_count();
        for event in &batch.events {
            // A bug in handling one event must not stop replication: the tree is
            // compared instead (which rebuilds every piece of engine state).
            let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.engine.handle(event, &mut pending)));
            if handled.is_err() {
                self.metrics.internal_errors.inc();
                tracing::error!(event = ?event, "failed to process an event; comparing the whole tree");
                pending.clear();
                self.engine.request_rescan("an event could not be processed");
            }
        }
        // What changed the tree, not every event: writes beside it (in
        // `.sluice`, where this agent records its activity) are no change of it.
        let changes = self.engine.change_count().saturating_sub(changes_before) + pending.len() as u64;
        if changes > 0 {
            self.last_event_secs = unix_secs();
            self.last_event_unix_ns = unix_ns();
            self.generation_changes += changes;
        }
        self.queue(&mut pending);
        self.scratch = pending;
    }

    /// Whether anything waits to be read: shared dirty ranges, or a connected
    /// standby's own.
    pub fn has_dirty(&self) -> bool {
        self.engine.has_dirty() || self.feeds.iter().enumerate().any(|(i, f)| f.online() && self.engine.has_dirty_for(i))
    }

    /// Reads the dirty ranges whose coalescing time is up into operations,
    /// once for every standby that takes them; then, for each connected
    /// standby with room, what it alone lacks.
    pub fn flush(&mut self) {
        let mut pending = std::mem::take(&mut self.scratch);
        self.refill_read_budget();
        tokio::task::block_in_place(|| self.engine.flush(&mut pending));
        self.queue(&mut pending);
        self.scratch = pending;
        for i in 0..self.feeds.len() {
            if self.feeds[i].online() && !self.stalled(i) {
                self.flush_private(i);
            }
        }
        self.absorb_compare_requests();
        self.hold_data_if_needed();
    }

    /// Reads what standby `i` alone lacks, as far as its backlog has room.
    pub(crate) fn flush_private(&mut self, i: usize) {
        if !self.engine.has_dirty_for(i) {
            return;
        }
        let mut budget = self.feeds[i].content_room(self.limits, READ_AHEAD_BYTES);
        if budget == 0 {
            return;
        }
        let mut pending = std::mem::take(&mut self.scratch);
        tokio::task::block_in_place(|| self.engine.flush_for(i, &mut budget, &mut pending));
        let feed = &mut self.feeds[i];
        for op in pending.drain(..) {
            let captured = op.captured_ns;
            feed.backlog.push(op, captured);
        }
        self.scratch = pending;
        self.check_overflow(i);
    }

    /// Hands the engine's request for a comparison to every standby.
    fn absorb_compare_requests(&mut self) {
        if let Some((reason, verify_recent)) = self.engine.take_compare_request() {
            for feed in &mut self.feeds {
                feed.request_compare(reason.clone(), verify_recent);
            }
        }
    }

    /// Hands `pending` to every standby.
    fn queue(&mut self, pending: &mut Vec<PendingOp>) {
        self.absorb_compare_requests();
        let count = self.feeds.len();
        for op in pending.drain(..) {
            for i in 1..count {
                self.queue_one(i, op.clone());
            }
            if count > 0 {
                self.queue_one(0, op);
            }
        }
        for i in 0..count {
            self.check_overflow(i);
        }
        self.hold_data_if_needed();
    }

    /// Hands one operation to standby `i`: as it is, or, while the standby is
    /// behind, a write or change of attributes as the range or inode it names
    /// (read again for it when it can take it).
    fn queue_one(&mut self, i: usize, op: PendingOp) {
        let feed = &mut self.feeds[i];
        if feed.compare.is_some() && !feed.online() {
            // The comparison on its next connection covers this.
            return;
        }
        if feed.ahead && let Some(ino) = op.ino {
            let dirty = match &op.op {
                Op::Write { offset, data, .. } => Some(DirtyInode { ino, ranges: vec![(*offset, offset + data.len() as u64)], attrs: false }),
                Op::SetAttrs { .. } => Some(DirtyInode { ino, ranges: Vec::new(), attrs: true }),
                _ => None,
            };
            if let Some(dirty) = dirty {
                self.engine.redirty_for(i, &dirty, op.captured_ns);
                return;
            }
        }
        let captured = op.captured_ns;
        feed.backlog.push(op, captured);
        if feed.backlog.content_full() && !feed.ahead {
            feed.ahead = true;
            tracing::info!(standby = %feed.name, bytes = feed.backlog.unsent_payload(), "the standby is behind: what it lacks is kept as changed ranges until it catches up");
        }
    }

    /// A standby holding more operations than allowed is compared instead.
    fn check_overflow(&mut self, i: usize) {
        let feed = &mut self.feeds[i];
        if feed.backlog.overflowed() {
            self.metrics.backlog_overflows.inc();
            let reason = format!("more than {} operations waited for the standby", feed.backlog.unsent_len());
            feed.backlog.clear();
            feed.skip_owed = true;
            feed.ahead = false;
            // Its ranges stay: a comparison by size and time misses a write within one tick.
            feed.request_compare(reason, false);
        }
    }

    /// Dirty data is read no further ahead of sending than [`READ_AHEAD_BYTES`]
    /// for the standby furthest ahead that takes it: reading and sending
    /// overlap, and a file written faster than the links carry waits as ranges
    /// (which later writes to them coalesce into), not as copies of its content
    /// in memory.
    fn refill_read_budget(&mut self) {
        let least = self.feeds.iter().filter(|f| f.takes_content()).map(|f| f.backlog.unsent_payload()).min().unwrap_or(0);
        self.engine.read_budget = READ_AHEAD_BYTES.saturating_sub(least);
    }

    /// Dirty data stays as ranges while no standby takes content: each is at
    /// its memory bound, or away with a comparison owed (which will cover it).
    fn hold_data_if_needed(&mut self) {
        for i in 0..self.feeds.len() {
            let private = self.engine.has_dirty_for(i);
            let feed = &mut self.feeds[i];
            if feed.ahead && !private && feed.backlog.unsent_payload() < self.limits.bytes / 2 {
                feed.ahead = false;
                tracing::info!(standby = %feed.name, "the standby caught up");
            }
        }
        self.engine.data_held = !self.feeds.iter().any(Feed::takes_content);
    }

    fn note_drops(&mut self, dropped_total: u64) {
        if dropped_total > self.dropped_seen {
            let lost = dropped_total - self.dropped_seen;
            self.metrics.events_dropped.inc_by(lost);
            self.dropped_seen = dropped_total;
            self.engine.request_rescan(format!("the kernel ring buffer overflowed, {lost} events lost"));
        }
    }

    /// Whether the paths waiting for repair can be queued: no standby that
    /// gets them has a comparison of part of the tree under way.
    pub fn repairs_due(&self) -> bool {
        self.engine.has_repairs()
            && self.feeds.iter().any(|f| f.online() && f.compare.is_none())
            && self.feeds.iter().all(|f| f.compare.is_some() || f.backlog.unsettled_manifest().is_none())
    }

    /// Whether a walk of the tree is due (a comparison or repairs): what
    /// capture reported should be handled first.
    pub fn walk_due(&self) -> bool {
        self.repairs_due() || (0..self.feeds.len()).any(|i| self.compare_due(i))
    }

    /// Queues a scoped comparison of the paths waiting for repair, in stream
    /// order, for every standby not owed a comparison of the whole tree.
    pub fn queue_repairs(&mut self) -> anyhow::Result<()> {
        let mut pending = std::mem::take(&mut self.scratch);
        // What was captured before the walk goes first, so the walk is not older
        // than the operations ahead of it.
        self.refill_read_budget();
        tokio::task::block_in_place(|| self.engine.flush(&mut pending));
        self.queue(&mut pending);
        self.scratch = pending;
        let Some(repair) = tokio::task::block_in_place(|| self.engine.take_repairs()).context("walking the paths to repair")? else {
            return Ok(());
        };
        self.metrics.repairs.inc_by(repair.subtrees.len() as u64);
        let now = monotonic_ns();
        let since = unix_secs() - JOURNAL_SLACK_SECS;
        for feed in &mut self.feeds {
            if feed.compare.is_some() {
                continue;
            }
            for path in &repair.removes {
                feed.backlog.push(PendingOp { op: Op::Remove { path: path.clone() }, captured_ns: now, ino: None }, now);
            }
            let manifest = ManifestState { scoped: Some(repair.entries.clone()), subtrees: repair.subtrees.clone(), done_seq: None, since };
            feed.backlog.push_manifest(manifest);
        }
        Ok(())
    }

    /// Work done every 100 ms.
    pub fn tick(&mut self) {
        self.heartbeat.beat();
        self.absorb_compare_requests();
        self.report_to_service_manager();
        self.ticks += 1;
        if self.ticks.is_multiple_of(10) {
            self.engine.refresh_mapped(monotonic_ns());
        }
        self.update_metrics();
        self.record_activity(Some(crate::lineage::ACTIVITY_INTERVAL));
        if self.feeds.iter().any(|f| f.journal.due()) {
            self.write_journal();
        }
    }

    /// Tells systemd what the agent does, once a second. Ready once every
    /// standby is compared and streaming, or once the start is
    /// [`READY_WITHOUT_STANDBY`] past: capture runs and the journal keeps
    /// every change for a standby that is away, which is the agent's service.
    fn report_to_service_manager(&mut self) {
        if self.service_reported.is_some_and(|at| at.elapsed() < SERVICE_STATUS_INTERVAL) {
            return;
        }
        self.service_reported = Some(Instant::now());
        let parts: Vec<String> = self
            .feeds
            .iter()
            .map(|feed| {
                if !feed.online() {
                    format!("standby {} unreachable; {} operations and {} bytes journaled for it", feed.address, feed.backlog.unsent_len(), feed.backlog.unsent_payload())
                } else if !feed.synced() || feed.compare.is_some() {
                    format!("comparing the tree with the standby {}", feed.address)
                } else {
                    format!("streaming to {}; lag {:.3} s, {} bytes", feed.address, feed.metrics.lag_seconds.get(), feed.metrics.lag_bytes.get())
                }
            })
            .collect();
        let status = parts.join("; ");
        let all_synced = self.feeds.iter().all(|f| f.online() && f.synced());
        if all_synced || self.service_started.elapsed() >= READY_WITHOUT_STANDBY {
            self.notifier.ready(&status);
        } else if self.notifier.is_ready() {
            self.notifier.status(&status);
        }
    }

    /// Writes the journals at once and waits for them, as the agent stops.
    pub fn write_journal_now(&mut self) {
        self.record(true);
        for feed in &mut self.feeds {
            feed.journal.finish();
        }
    }

    /// Records what changed since the last write, in each standby's journal:
    /// appended to its log, or a whole checkpoint when one is owed (the first
    /// write of a run, sequence numbers renumbered, the log grown past twice
    /// its checkpoint, or a comparison of the whole tree starting or settling).
    pub fn write_journal(&mut self) {
        self.record(false);
    }

    /// [`Replicator::write_journal`]; with `always`, the header is written even
    /// when nothing changed, so the next start verifies only what changes after.
    fn record(&mut self, always: bool) {
        let now = unix_ns();
        let (dirtied, mapped) = self.engine.take_journal_deltas();
        let shared_dirty = self.engine.dirty_inodes();
        let tree_nonempty = !self.engine.index().is_empty();
        for i in 0..self.feeds.len() {
            let private_deltas = self.engine.take_journal_deltas_for(i);
            let private_dirty = self.engine.dirty_inodes_for(i);
            let last_event_secs = self.last_event_secs;
            let feed = &mut self.feeds[i];
            // Everything changed before this has been captured and is either in the
            // journal or durable on the standby; files a pending verification covers
            // are in neither, so their earlier bound is kept.
            let mut verify_since = (now / 1_000_000_000) as i64 - JOURNAL_SLACK_SECS;
            if let Some(manifest) = feed.backlog.unsettled_manifest() {
                verify_since = verify_since.min(manifest.since);
            }
            let full_pending = feed.backlog.unsettled_manifest().is_some_and(|m| m.scoped.is_none());
            let header = Header {
                written_unix_ns: now,
                next_seq: feed.backlog.next_seq(),
                compare_owed: feed.compare.is_some() || full_pending,
                verify_since,
                tree_nonempty,
                failback_base: feed.failback_base,
            };
            let log = feed.backlog.take_log();
            let renumbered = feed.backlog.take_checkpoint_owed();
            let last = feed.last_written;
            let checkpoint = renumbered || feed.journal.checkpoint_due() || last.is_none_or(|last| last.compare_owed != header.compare_owed);
            if checkpoint {
                // While the whole tree is owed a comparison, what is queued is moot:
                // a restart compares the tree again.
                let (ops, dirty) = if header.compare_owed {
                    (Vec::new(), Vec::new())
                } else {
                    let (ops, mut dirty) = feed.backlog.records();
                    dirty.extend(shared_dirty.iter().cloned());
                    dirty.extend(private_dirty);
                    (ops, dirty)
                };
                feed.journal.checkpoint(Snapshot {
                    written_unix_ns: now,
                    next_seq: header.next_seq,
                    durable: feed.backlog.durable(),
                    compare_owed: header.compare_owed,
                    verify_since,
                    ops,
                    dirty,
                    tree_nonempty: header.tree_nonempty,
                    failback_base: header.failback_base,
                });
                feed.last_written = Some(header);
                continue;
            }
            let mut entries = if header.compare_owed { Vec::new() } else { log };
            if !header.compare_owed && (!dirtied.is_empty() || !private_deltas.is_empty()) {
                entries.push(LogEntry::Dirtied(dirtied.iter().cloned().chain(private_deltas).collect()));
            }
            if !header.compare_owed && !mapped.is_empty() {
                entries.push(LogEntry::Mapped(mapped.clone()));
            }
            // Skipping an unchanged header leaves an older `verify_since` on disk,
            // which only makes a restart verify more; it is written again anyway once
            // the time bound can move past the last change seen, so that a restart
            // does not verify what this journal vouches for.
            let Some(last) = last else { continue };
            let stale = last.verify_since <= last_event_secs && header.verify_since > last.verify_since;
            let unchanged = entries.is_empty()
                && last.next_seq == header.next_seq
                && last.tree_nonempty == header.tree_nonempty
                && last.failback_base == header.failback_base;
            if unchanged && !stale && !always {
                continue;
            }
            entries.push(LogEntry::Header(header));
            feed.journal.append(entries);
            feed.last_written = Some(header);
        }
    }

    /// Judges fanotify's notices whose time has come; `capture_idle` when no
    /// captured event waits to be handled.
    pub fn judge_notices(&mut self, capture_idle: bool) {
        let now = monotonic_ns();
        let caught_up = if capture_idle { now } else { self.latest_event_ns };
        self.crosscheck.judge(&mut self.engine, Instant::now(), now, caught_up);
    }

    /// Takes fanotify's notices, to be checked against capture.
    pub fn handle_notices(&mut self, notices: Vec<crate::crosscheck::Notice>) {
        self.crosscheck.add(notices, Instant::now());
    }

    /// Takes a request from the control socket.
    pub fn handle_control(&mut self, control: ControlRequest) {
        match control.request {
            Request::Verify { repair } => {
                tracing::info!(repair, "verification of the whole tree asked for");
                if let [feed] = self.feeds.as_mut_slice() {
                    feed.verifier.start_demand(repair, control.reply);
                    return;
                }
                let (tx, rx) = mpsc::unbounded_channel();
                for feed in &mut self.feeds {
                    feed.verifier.start_demand(repair, tx.clone());
                }
                tokio::spawn(combine_verifications(self.feeds.len(), rx, control.reply));
            }
            Request::Status => {
                let _ = control.reply.send(Report::Status(Box::new(self.status())));
            }
            Request::Reconfigure { verify_bytes_per_second } => {
                tracing::info!(verify_bytes_per_second, "verifier rate changed");
                for feed in &mut self.feeds {
                    feed.verifier.set_rate(verify_bytes_per_second);
                }
            }
            Request::Switchover if self.feeds.len() != 1 => {
                let _ = control.reply.send(Report::Error(format!(
                    "this master feeds {} standbys: a switchover hands the tree to one standby and needs the others to follow it, which is not done yet; promote the standby with `sluice-receiver promote` and point the others at it",
                    self.feeds.len()
                )));
            }
            Request::Switchover if !self.feeds[0].online() => {
                let _ = control.reply.send(Report::Error(format!(
                    "not connected to the standby at {}: a switchover needs it (to fail over without the master, run `sluice-receiver promote` on the standby)",
                    self.feeds[0].address
                )));
            }
            Request::Switchover if self.switchover.is_some() => {
                let _ = control.reply.send(Report::Error("a switchover is already running".into()));
            }
            Request::Switchover => {
                tracing::warn!("switchover asked for: waiting until the standby holds everything captured, then promoting it");
                self.switchover = Some(PendingSwitchover {
                    reply: control.reply,
                    started: Instant::now(),
                    point: None,
                    last_report: Instant::now(),
                    events_seen: 0,
                });
            }
        }
    }

    /// Takes up the count of changes where earlier runs on this generation left it.
    pub fn resume_activity(&mut self, recorded: Option<Activity>) {
        if let Some(recorded) = recorded {
            self.generation_changes = self.generation_changes.max(recorded.changes);
            self.last_event_unix_ns = self.last_event_unix_ns.max(recorded.last_change_unix_ns);
        }
    }

    /// Records how far this master got beside the tree, at most every
    /// `interval` (or now, with `None`), when it moved.
    pub fn record_activity(&mut self, interval: Option<Duration>) {
        let activity = self.activity();
        let (recorded, at) = self.activity_recorded;
        let due = match (interval, at) {
            (Some(interval), Some(at)) => at.elapsed() >= interval,
            _ => true,
        };
        if activity == recorded || !due {
            return;
        }
        let Some(file) = &self.activity_file else { return };
        match file.record_activity(&self.about.lineage, activity) {
            Ok(()) => self.activity_recorded = (activity, Some(Instant::now())),
            Err(e) => tracing::warn!("recording this master's activity: {e}"),
        }
    }

    /// How far this master got in its generation (its sequence is the one of
    /// the standby it has numbered most operations for).
    pub fn activity(&self) -> Activity {
        Activity {
            last_seq: self.feeds.iter().map(|f| f.backlog.next_seq().saturating_sub(1)).max().unwrap_or(0),
            last_change_unix_ns: self.last_event_unix_ns,
            changes: self.generation_changes,
        }
    }

    /// The `Hello` a new connection to standby `i` sends: its activity counts
    /// operations in that standby's numbering, which its fork point uses.
    pub fn hello(&self, i: usize) -> AgentMessage {
        let agent = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
        let mut activity = self.activity();
        if let Some(feed) = self.feeds.get(i) {
            activity.last_seq = feed.backlog.next_seq().saturating_sub(1);
        }
        AgentMessage::Hello { version: PROTOCOL_VERSION, agent, lineage: self.about.lineage.lineage.clone(), activity }
    }

    /// What the agent is doing, for `sluice-agent status`: the standby
    /// furthest behind in the summary, then each.
    pub fn status(&self) -> AgentStatus {
        let m = &self.metrics;
        let standbys: Vec<StandbyStatus> = self.feeds.iter().map(|feed| self.standby_status(feed)).collect();
        let worst = standbys.iter().max_by(|a, b| a.lag_seconds.total_cmp(&b.lag_seconds));
        let connected = standbys.iter().all(|s| s.connected);
        let synced = standbys.iter().all(|s| s.synced);
        let (verify_passes, verify_bytes) = self.feeds.iter().fold((0, 0), |(p, b), f| (p + f.verifier.stats.passes, b + f.verifier.stats.bytes));
        let last_compare = self.feeds.iter().filter_map(|f| f.last_compare).max_by(|a, b| a.0.total_cmp(&b.0));
        AgentStatus {
            root: self.about.root.clone(),
            role: self.about.lineage.role.to_string(),
            generation: self.about.lineage.lineage.current.to_string(),
            peer: self.about.peer.clone(),
            connected,
            synced,
            last_seq: worst.map_or(0, |s| s.last_seq),
            applied_seq: worst.map_or(0, |s| s.applied_seq),
            durable_seq: worst.map_or(0, |s| s.durable_seq),
            backlog_ops: standbys.iter().map(|s| s.backlog_ops).sum(),
            backlog_bytes: standbys.iter().map(|s| s.backlog_bytes).sum(),
            lag_seconds: m.lag_seconds.get(),
            lag_bytes: u64::try_from(m.lag_bytes.get()).unwrap_or(0),
            events_dropped: m.events_dropped.get(),
            tree_compares: m.tree_compares.get(),
            verify_mismatches: m.verify_mismatches.get(),
            verify_last_pass_unix: m.verify_last_pass.get(),
            verify_passes,
            verify_bytes,
            last_compare_unix: last_compare.map_or(0.0, |(at, _)| at),
            last_compare_files_differing: last_compare.map_or(0, |(_, differing)| differing),
            problems: sluice_net::daemon::recent_problems(),
            healthy: connected && synced,
            standbys,
            lag_history: self.lag_history.clone(),
        }
    }

    fn standby_status(&self, feed: &Feed) -> StandbyStatus {
        StandbyStatus {
            name: feed.name.clone(),
            address: feed.address.to_string(),
            connected: feed.online(),
            synced: feed.synced(),
            last_seq: feed.backlog.next_seq().saturating_sub(1),
            applied_seq: feed.backlog.applied_seq(),
            durable_seq: feed.backlog.durable(),
            durable_captured_unix: feed
                .backlog
                .durable_captured_ns()
                .map_or(0.0, |captured| unix_ns().saturating_sub(monotonic_ns().saturating_sub(captured)) as f64 / 1e9),
            backlog_ops: feed.backlog.unsent_len() as u64,
            backlog_bytes: feed.backlog.unsent_payload(),
            ahead: feed.ahead,
            lag_seconds: feed.metrics.lag_seconds.get(),
            lag_bytes: u64::try_from(feed.metrics.lag_bytes.get()).unwrap_or(0),
            compare_owed: feed.compare.clone(),
            last_compare_unix: feed.last_compare.map_or(0.0, |(at, _)| at),
            last_compare_files_differing: feed.last_compare.map_or(0, |(_, differing)| differing),
            verify_passes: feed.verifier.stats.passes,
            verify_bytes: feed.verifier.stats.bytes,
        }
    }

    fn update_metrics(&mut self) {
        let now = monotonic_ns();
        let now_unix = sluice_net::history::now_unix();
        let (shared_bytes, shared_oldest) = (self.engine.dirty_bytes(), self.engine.oldest_dirty_ns());
        let mut worst_lag: f64 = 0.0;
        let mut worst_bytes = 0u64;
        for i in 0..self.feeds.len() {
            let (private_bytes, private_oldest) = self.engine.dirty_for(i);
            let feed = &mut self.feeds[i];
            let oldest = [feed.backlog.oldest_unapplied_ns(), shared_oldest, private_oldest].into_iter().flatten().min();
            let lag = oldest.map_or(0.0, |t| now.saturating_sub(t) as f64 / 1e9);
            let bytes = feed.backlog.unsent_payload() + feed.backlog.in_flight_bytes() + shared_bytes + private_bytes;
            feed.metrics.lag_seconds.set(lag);
            feed.metrics.lag_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
            feed.metrics.applied_seq.set(i64::try_from(feed.backlog.applied_seq()).unwrap_or(i64::MAX));
            feed.metrics.durable_seq.set(i64::try_from(feed.backlog.durable()).unwrap_or(i64::MAX));
            feed.metrics.backlog_ops.set(feed.backlog.unsent_len() as i64);
            feed.metrics.backlog_bytes.set(i64::try_from(feed.backlog.unsent_payload()).unwrap_or(i64::MAX));
            feed.metrics.ahead.set(i64::from(feed.ahead));
            feed.metrics.connected.set(i64::from(feed.online()));
            worst_lag = worst_lag.max(lag);
            worst_bytes = worst_bytes.max(bytes);
            self.lag_history.record(&feed.name, now_unix, lag, bytes);
            let stats = feed.verifier.stats;
            self.metrics.verify_bytes.inc_by(stats.bytes.saturating_sub(feed.verify_seen.bytes));
            self.metrics.verify_mismatches.inc_by(stats.mismatches.saturating_sub(feed.verify_seen.mismatches));
            self.metrics.verify_passes.inc_by(stats.passes.saturating_sub(feed.verify_seen.passes));
            if let Some(last) = stats.last_pass_unix {
                self.metrics.verify_last_pass.set(self.metrics.verify_last_pass.get().max(last));
            }
            feed.verify_seen = stats;
            let written = feed.journal.bytes_written();
            self.metrics.journal_bytes_written.inc_by(written.saturating_sub(feed.journal_seen));
            feed.journal_seen = written;
            self.update_link_metrics(i);
        }
        self.metrics.lag_seconds.set(worst_lag);
        self.metrics.lag_bytes.set(i64::try_from(worst_bytes).unwrap_or(i64::MAX));
        self.metrics.connected.set(i64::from(self.feeds.iter().all(Feed::online)));
        self.metrics.ops_in_flight.set(self.feeds.iter().map(|f| f.backlog.in_flight() as i64).sum());
        self.metrics.repairs_abandoned.set(self.engine.repairs_abandoned() as i64);
        let oldest = self.feeds.iter().filter_map(|f| f.verifier.oldest_change_asked()).min().unwrap_or(self.engine.change_count());
        // The cross-check looks a few seconds back at most.
        self.engine.forget_changes_before(oldest, monotonic_ns().saturating_sub(10_000_000_000));
        self.metrics.crosscheck_misses.inc_by(self.crosscheck.misses.saturating_sub(self.crosscheck_seen.0));
        self.metrics.crosscheck_overflows.inc_by(self.crosscheck.overflows.saturating_sub(self.crosscheck_seen.1));
        self.crosscheck_seen = (self.crosscheck.misses, self.crosscheck.overflows);
        self.metrics.backlog_ops.set(self.feeds.iter().map(|f| f.backlog.unsent_len() as i64).sum());
        self.metrics.backlog_bytes.set(self.feeds.iter().map(|f| i64::try_from(f.backlog.unsent_payload()).unwrap_or(0)).sum());
        self.metrics.bytes_read.inc_by(self.engine.bytes_read.saturating_sub(self.read_seen));
        self.read_seen = self.engine.bytes_read;
        self.metrics.bytes_shared.inc_by(self.engine.bytes_shared.saturating_sub(self.shared_seen));
        self.shared_seen = self.engine.bytes_shared;
    }

    /// Wire counters of standby `i`'s connection.
    fn update_link_metrics(&mut self, i: usize) {
        let feed = &mut self.feeds[i];
        let Some(link) = &mut feed.link else { return };
        let stats = link.connection.stats();
        let (tx, rx) = (stats.udp_tx.bytes, stats.udp_rx.bytes);
        self.metrics.wire_bytes_sent.inc_by(tx.saturating_sub(link.wire_seen.0));
        feed.metrics.wire_bytes_sent.inc_by(tx.saturating_sub(link.wire_seen.0));
        self.metrics.wire_bytes_received.inc_by(rx.saturating_sub(link.wire_seen.1));
        link.wire_seen = (tx, rx);
        self.metrics.wire_bytes_lost.inc_by(stats.path.lost_bytes.saturating_sub(link.lost_seen));
        self.metrics.path_mtu.set(i64::from(stats.path.current_mtu));
        if stats.frame_rx.acks > link.quic_acks_seen {
            link.quic_acks_seen = stats.frame_rx.acks;
            link.last_progress = Instant::now();
        }
        link.lost_seen = stats.path.lost_bytes;
    }

    /// A standby refused this agent: it was promoted out of this tree.
    pub fn set_fenced(&self) {
        self.metrics.fenced.set(1);
    }

    /// Sets whether every standby is in sync.
    fn update_sync_metric(&self) {
        let all = self.feeds.iter().all(|f| f.metrics.initial_sync_complete.get() == 1 && f.online());
        self.metrics.initial_sync_complete.set(i64::from(all));
    }

    /// Takes up standby `i`'s new connection: checks its answer to `Hello`,
    /// and queues again whatever it does not hold durably.
    pub fn open_feed(&mut self, i: usize, opened: Opened, events: mpsc::UnboundedSender<crate::link::LinkEvent>) -> anyhow::Result<()> {
        let Opened { connection, writer, reader, answer } = opened;
        let feed = &mut self.feeds[i];
        let ours = &self.about.lineage.lineage;
        let (durable_seq, uncertain, failback) = match answer {
            Some(ReceiverMessage::Hello { version, durable_seq, uncertain, lineage: theirs, failback }) if version == PROTOCOL_VERSION => {
                if theirs.current != ours.current {
                    bail!("the standby answered with generation {}, not this tree's {}", theirs.current, ours.current);
                }
                (durable_seq, uncertain, failback)
            }
            Some(ReceiverMessage::Fenced { reason, lineage }) => return Err(Fenced { standby: feed.name.clone(), reason, lineage }.into()),
            Some(ReceiverMessage::Hello { version, .. }) => {
                bail!("receiver speaks protocol {version}, this agent {PROTOCOL_VERSION}")
            }
            other => bail!("expected Hello from the receiver, got {other:?}"),
        };
        feed.links_opened += 1;
        let id = feed.links_opened;
        let outbox = Outbox::start(i, id, writer, reader, events, self.written.clone());
        feed.link = Some(Link::new(id, connection, outbox, RESCAN_SPACING));
        if durable_seq < feed.backlog.durable() {
            let reason = format!("the standby holds operations up to {durable_seq} but had reported {} durable", feed.backlog.durable());
            feed.request_compare(reason, false);
        }
        let now = monotonic_ns();
        let failback_base = std::mem::take(&mut feed.failback_base);
        match failback {
            Some(unsent) if failback_base && feed.compare.is_none() => match crate::failback::start(&mut self.engine, &feed.backlog, &unsent, now) {
                Ok(started) => {
                    tracing::info!(
                        standby = %feed.name,
                        files = started.files,
                        replaced = started.replaced,
                        own_operations = feed.backlog.unsent_len(),
                        "failback: sending what this tree changed since its promotion and what the old primary had not sent, not the whole tree"
                    );
                    feed.failback_sending = true;
                }
                Err(why) => feed.request_compare(format!("failback: {why}; comparing the whole tree"), false),
            },
            Some(_) => feed.request_compare("failback: this agent does not hold every change since the promotion; comparing the whole tree", false),
            None if failback_base => feed.request_compare(
                "this tree was promoted and the agent held only its changes since, but the standby is not the old primary; comparing the whole tree",
                false,
            ),
            None => {}
        }
        let Rewound { requeued, dirty, unfinished, unreplayed } = feed.backlog.rewind(durable_seq, now, !uncertain);
        if unfinished.is_some() {
            feed.request_compare("the previous comparison of the tree did not finish", false);
        }
        if !unreplayed.is_empty() {
            tracing::warn!(
                standby = %feed.name,
                receiver_durable = durable_seq,
                operations = unreplayed.len(),
                "the standby stopped uncleanly and may hold some operations after its durable state; comparing the paths they name instead of replaying them"
            );
        }
        for op in &unreplayed {
            for path in op.paths() {
                self.engine.request_repair(path.clone(), "operation sent before the standby stopped uncleanly");
            }
        }
        let feed = &mut self.feeds[i];
        let resent = if feed.compare.is_some() {
            feed.backlog.clear();
            feed.ahead = false;
            0
        } else {
            requeued
        };
        // What is resent may skip numbers (re-read writes get new ones), and so
        // may what follows a cleared backlog; the receiver refuses any other gap.
        let skip = AgentMessage::Skip { next_seq: feed.backlog.next_seq() };
        feed.skip_owed = false;
        if let Some(link) = &feed.link {
            link.send(skip)?;
        }
        for inode in &dirty {
            self.engine.redirty_for(i, inode, now);
        }
        let feed = &mut self.feeds[i];
        if resent + dirty.len() > 0 {
            tracing::info!(
                standby = %feed.name,
                receiver_durable = durable_seq,
                operations = resent,
                files = dirty.len(),
                "resending what the standby does not hold durably"
            );
            self.metrics.ops_resent.inc_by(resent as u64);
        }
        // Matched unless a comparison is owed or under way: what is resent
        // brings it up to date, and once that is acknowledged it is in sync.
        if feed.compare.is_none() && feed.backlog.unsettled_manifest().is_none() && let Some(link) = &mut feed.link {
            link.synced = true;
        }
        self.check_synced(i);
        self.update_sync_metric();
        self.hold_data_if_needed();
        Ok(())
    }

    /// Marks the end of standby `i`'s connection.
    pub fn feed_offline(&mut self, i: usize) {
        let feed = &mut self.feeds[i];
        let Some(link) = feed.link.take() else { return };
        if let Some(bar) = link.progress {
            bar.finish_and_clear();
        }
        link.connection.close(0u32.into(), b"connection ended");
        feed.metrics.connected.set(0);
        feed.metrics.initial_sync_complete.set(0);
        feed.verifier.connection_lost();
        if let Some(switchover) = self.switchover.take() {
            let reason = match switchover.point {
                Some(_) => "the connection ended before the standby confirmed its promotion: check `sluice-receiver status` on it before writing anywhere",
                None => "the connection to the standby ended before it held everything; nothing was promoted",
            };
            let _ = switchover.reply.send(Report::Error(reason.into()));
        }
        self.update_sync_metric();
        self.hold_data_if_needed();
        self.update_metrics();
    }

    /// Whether standby `i` has operations in flight that it does not acknowledge.
    fn stalled(&self, i: usize) -> bool {
        let feed = &self.feeds[i];
        let Some(link) = &feed.link else { return true };
        let backlog = &feed.backlog;
        backlog.in_flight() > 0
            && (link.last_progress.elapsed() >= STALL
                || backlog.in_flight_bytes() >= IN_FLIGHT_BYTES.min(self.limits.bytes)
                || backlog.in_flight() >= IN_FLIGHT_OPS.min(backlog.ops_limit() / 4).max(1))
    }

    /// Whether standby `i`'s comparison of the whole tree can start now.
    fn compare_due(&self, i: usize) -> bool {
        let feed = &self.feeds[i];
        let Some(link) = &feed.link else { return false };
        feed.compare.is_some() && feed.backlog.is_idle() && !link.comparing() && link.last_rescan.elapsed() >= RESCAN_SPACING
    }

    /// Does what standby `i`'s connection is ready for: a comparison, the
    /// verifier's next request, answers to its wants, and frames of
    /// operations while its writer has room. True when more could be done at once.
    pub fn pump(&mut self, i: usize) -> anyhow::Result<bool> {
        self.absorb_compare_requests();
        if self.feeds[i].link.is_none() {
            return Ok(false);
        }
        if self.compare_due(i) {
            self.compare_trees(i)?;
        }
        let has_repairs = self.engine.has_repairs();
        let promoting = self.switchover.as_ref().is_some_and(|s| s.point.is_some());
        let feed = &mut self.feeds[i];
        let Some(link) = &feed.link else { return Ok(false) };
        let comparing = link.comparing();
        // Verification goes between bursts of replication, when the standby
        // holds (or is about to hold) everything captured so far.
        let quiet = link.synced
            && !comparing
            && feed.backlog.unsent_len() == 0
            && feed.backlog.unsettled_manifest().is_none()
            && feed.compare.is_none()
            && !has_repairs;
        if quiet && link.outbox.has_room() && let Some(request) = feed.verifier.next_request(&self.engine, Instant::now()) {
            link.send(request)?;
        }
        if self.switchover.is_some() && !promoting {
            self.advance_switchover(i, comparing)?;
        }
        let private = self.engine.has_dirty_for(i);
        let feed = &mut self.feeds[i];
        let Some(link) = &feed.link else { return Ok(false) };
        if feed.failback_sending && quiet && !self.engine.has_dirty() && !private {
            // In stream order: the standby acts on it once all of it is applied.
            feed.failback_sending = false;
            link.send(AgentMessage::FailbackDone)?;
            tracing::info!(standby = %feed.name, "failback: everything the old primary lacked is sent");
        }
        if !link.wants.is_empty() && self.room_to_read_ahead(i) {
            // Several per turn: a want of a small file costs less than a turn of this loop.
            for _ in 0..WANTS_PER_TURN {
                self.answer_next_want(i);
                let wants_left = self.feeds[i].link.as_ref().is_some_and(|l| !l.wants.is_empty());
                if !wants_left || !self.room_to_read_ahead(i) {
                    break;
                }
            }
        }
        for _ in 0..FRAMES_PER_TURN {
            if !self.sendable(i, promoting) {
                break;
            }
            self.send_next(i)?;
        }
        let answerable = self.feeds[i].link.as_ref().is_some_and(|l| !l.wants.is_empty()) && self.room_to_read_ahead(i);
        Ok(self.sendable(i, promoting) || answerable)
    }

    /// Whether standby `i` has operations to send and room for them now.
    fn sendable(&self, i: usize, promoting: bool) -> bool {
        let feed = &self.feeds[i];
        let Some(link) = &feed.link else { return false };
        !feed.backlog.is_idle() && !self.stalled(i) && !promoting && link.outbox.has_room()
    }

    /// Sends standby `i` one frame of queued operations, or the queued manifest.
    fn send_next(&mut self, i: usize) -> anyhow::Result<()> {
        let feed = &mut self.feeds[i];
        let Some(link) = &mut feed.link else { return Ok(()) };
        if feed.backlog.in_flight() == 0 {
            link.last_progress = Instant::now();
        }
        let (now_mono, now_unix) = (monotonic_ns(), unix_ns());
        let relay = self.relay.as_ref();
        let stamp = |captured_ns: u64| match relay {
            Some(relay) => relay.origin_of(captured_ns, now_mono, now_unix),
            None => now_unix.saturating_sub(now_mono.saturating_sub(captured_ns)),
        };
        match feed.backlog.take_stamped(FRAME_PAYLOAD, &stamp) {
            Some(Next::Ops(ops)) => {
                if feed.skip_owed {
                    feed.skip_owed = false;
                    link.send(AgentMessage::Skip { next_seq: ops[0].seq })?;
                }
                if !link.synced {
                    feed.metrics.initial_sync_complete.set(0);
                }
                for op in &ops {
                    self.metrics.ops_sent.inc();
                    let payload = op.op.payload_len();
                    self.metrics.payload_bytes_sent.inc_by(payload);
                    feed.metrics.payload_bytes_sent.inc_by(payload);
                }
                link.send(AgentMessage::Ops(ops))?;
            }
            Some(Next::Manifest { entries, subtrees }) => {
                tracing::info!(standby = %feed.name, entries = entries.len(), subtrees = subtrees.len(), "comparing part of the tree with the standby");
                link.synced = false;
                link.sync_started = Instant::now();
                for chunk in sluice_proto::manifest_chunks(&entries, MANIFEST_CHUNK_BYTES) {
                    link.send(AgentMessage::Manifest(chunk.to_vec()))?;
                }
                link.send(AgentMessage::ScopedManifestEnd { subtrees })?;
            }
            None => {}
        }
        if !self.feeds[i].link.as_ref().is_some_and(|l| l.synced) {
            self.update_sync_metric();
        }
        Ok(())
    }

    /// Walks the tree and sends it to standby `i`; the receiver answers with
    /// `Want`s and `ManifestDone`.
    fn compare_trees(&mut self, i: usize) -> anyhow::Result<()> {
        let feed = &mut self.feeds[i];
        let reason = feed.compare.clone().unwrap_or_else(|| "requested".into());
        if reason != NO_STATE {
            self.metrics.rescans.inc();
        }
        self.metrics.tree_compares.inc();
        feed.metrics.tree_compares.inc();
        let since = unix_secs() - JOURNAL_SLACK_SECS;
        let verify_since = feed.verify_since();
        let covers_repairs = self.feeds.len() == 1;
        let entries: Vec<Entry> = tokio::task::block_in_place(|| self.engine.rescan_for(verify_since, covers_repairs)).context("walking the watched tree")?;
        let feed = &mut self.feeds[i];
        feed.compare = None;
        feed.verify_recent = false;
        feed.last_compare_start = Some(since + JOURNAL_SLACK_SECS);
        let Some(link) = &mut feed.link else { return Ok(()) };
        link.last_rescan = Instant::now();
        link.sync_started = Instant::now();
        link.synced = false;
        link.wants_answered = 0;
        feed.metrics.initial_sync_complete.set(0);
        tracing::info!(standby = %feed.name, entries = entries.len(), %reason, "comparing the tree with the standby");
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_message(format!("initial sync of {}: {} entries listed", feed.name, entries.len()));
            bar.enable_steady_tick(Duration::from_millis(200));
            link.progress = Some(bar);
        }
        for chunk in sluice_proto::manifest_chunks(&entries, MANIFEST_CHUNK_BYTES) {
            link.send(AgentMessage::Manifest(chunk.to_vec()))?;
        }
        link.send(AgentMessage::ManifestEnd)?;
        feed.backlog.full_manifest_sent(since);
        self.update_sync_metric();
        Ok(())
    }

    /// Takes a message from standby `i`'s receiver.
    pub fn on_reply(&mut self, i: usize, reply: ReceiverMessage) -> anyhow::Result<()> {
        let feed = &mut self.feeds[i];
        let Some(link) = &mut feed.link else { return Ok(()) };
        match reply {
            // Answered as the backlog makes room: reading every wanted file at once
            // would hold the whole difference in memory.
            ReceiverMessage::Want { path, first_block, hashes, last, .. } => {
                // A large file's hashes come in parts; blocks no part covers are holes.
                let mut assembled = match link.partial_want.take() {
                    Some((partial, assembled)) if partial == path => assembled,
                    _ => Vec::new(),
                };
                let first = usize::try_from(first_block).unwrap_or(usize::MAX);
                if first > assembled.len() {
                    assembled.resize(first, sluice_proto::blocks::zero_block_hash());
                }
                assembled.truncate(first);
                assembled.extend(hashes);
                if last {
                    link.wants.push_back((path, assembled, 0));
                } else {
                    link.partial_want = Some((path, assembled));
                }
            }
            ReceiverMessage::ManifestDone { wanted } => {
                link.manifest_done = Some(wanted);
                self.finish_manifest_if_answered(i);
            }
            ReceiverMessage::Ack { seq } => {
                let acked = feed.backlog.applied(seq);
                if acked > 0 {
                    link.last_progress = Instant::now();
                }
                self.metrics.ops_acked.inc_by(acked);
                if feed.refused.is_some_and(|refused| seq >= refused) {
                    feed.refused = None;
                }
                self.check_synced(i);
            }
            ReceiverMessage::Durable { seq } => feed.backlog.confirmed(seq),
            ReceiverMessage::Refused { seq, reason } => {
                if feed.refused == Some(seq) {
                    feed.request_compare(format!("the receiver refused operation {seq} twice"), false);
                }
                feed.refused = Some(seq);
                bail!("receiver refused operation {seq}: {reason}")
            }
            ReceiverMessage::Diverged { seq, paths, reason } => {
                self.metrics.ops_diverged.inc();
                tracing::warn!(standby = %feed.name, seq, paths = ?paths, %reason, "the standby's copy differs from the master's; repairing");
                for path in paths {
                    self.engine.request_repair(path, format!("the standby could not apply operation {seq}: {reason}"));
                }
            }
            ReceiverMessage::Hashes { id, size, hashes } => feed.verifier.on_hashes(&mut self.engine, id, size, &hashes),
            ReceiverMessage::Listing { id, exists, entries, more } => feed.verifier.on_listing(&mut self.engine, id, exists, entries, more),
            ReceiverMessage::Hello { .. } => bail!("unexpected second Hello from the receiver"),
            ReceiverMessage::Fenced { reason, lineage } => return Err(Fenced { standby: feed.name.clone(), reason, lineage }.into()),
            ReceiverMessage::Promoted { durable_seq, at_barrier, consistent_unix_ns, lineage } => {
                let Some(switchover) = self.switchover.take() else { bail!("the standby says it was promoted, but no switchover was asked for") };
                let Some(point) = switchover.point else { bail!("the standby was promoted before the switchover point") };
                let last = feed.backlog.next_seq().saturating_sub(1);
                let proof = SwitchoverProof {
                    last_seq: point,
                    standby_durable_seq: durable_seq,
                    generation: lineage.current.to_string(),
                    captured_after: last.saturating_sub(point) + u64::from(self.engine.has_dirty()),
                    seconds: switchover.started.elapsed().as_secs_f64(),
                };
                tracing::warn!(
                    last_seq = point,
                    standby_durable_seq = durable_seq,
                    at_barrier,
                    consistent_unix_ns,
                    generation = %lineage.current,
                    "switchover: the standby is the primary now"
                );
                self.switched = Some(Switched { proof, lineage, reply: switchover.reply });
            }
        }
        self.absorb_compare_requests();
        Ok(())
    }

    /// Sends `Promote` once the standby holds everything captured (the switchover
    /// point), and tells the operator what it waits for meanwhile.
    fn advance_switchover(&mut self, i: usize, comparing: bool) -> anyhow::Result<()> {
        let private = self.engine.has_dirty_for(i);
        let feed = &self.feeds[i];
        let backlog = &feed.backlog;
        let Some(link) = &feed.link else { return Ok(()) };
        let mut waiting = Vec::new();
        if !link.synced || comparing || feed.compare.is_some() {
            waiting.push("the comparison of the tree to finish".to_string());
        } else if let Some(manifest) = backlog.unsettled_manifest() {
            let done = manifest.done_seq.map_or_else(|| "not answered yet".to_string(), |seq| format!("up to operation {seq}"));
            waiting.push(format!("the comparison to be durable on the standby ({done}; durable: {})", backlog.durable()));
        }
        if !backlog.is_idle() {
            waiting.push(format!("{} operations to be sent", backlog.unsent_len()));
        }
        if backlog.in_flight() > 0 {
            waiting.push(format!("{} operations to be applied", backlog.in_flight()));
        }
        if self.engine.has_dirty() || private {
            waiting.push("changed files to be read".to_string());
        }
        if self.engine.has_repairs() {
            waiting.push("repairs of the standby".to_string());
        }
        let ready = waiting.is_empty();
        let root = self.about.root.display().to_string();
        let Some(switchover) = self.switchover.as_mut() else { return Ok(()) };
        if switchover.reply.is_closed() {
            tracing::warn!("switchover cancelled: whoever asked for it is gone; nothing was promoted");
            self.switchover = None;
            return Ok(());
        }
        if ready {
            let point = backlog.next_seq().saturating_sub(1);
            switchover.point = Some(point);
            let _ = switchover.reply.send(Report::Progress(format!("the standby holds every operation up to {point}: promoting it")));
            link.send(AgentMessage::Promote)?;
            return Ok(());
        }
        if switchover.last_report.elapsed() >= SWITCHOVER_REPORT {
            let writes = if switchover.events_seen > 0 {
                format!("; {} changes were captured meanwhile: stop the services writing to {root}", switchover.events_seen)
            } else {
                String::new()
            };
            let _ = switchover.reply.send(Report::Progress(format!("waiting for {}{writes}", waiting.join(", "))));
            switchover.last_report = Instant::now();
            switchover.events_seen = 0;
        }
        Ok(())
    }

    /// Whether answering another of standby `i`'s wants keeps its backlog
    /// within its bounds. Half of its bound on operations is left for what the
    /// standby has not made durable yet (it does so when its stream pauses),
    /// the other half for what the tree's changes bring meanwhile.
    fn room_to_read_ahead(&self, i: usize) -> bool {
        let backlog = &self.feeds[i].backlog;
        backlog.unsent_payload() < READ_AHEAD_BYTES.min(self.limits.bytes)
            && backlog.unsent_len() < READ_AHEAD_OPS.min(backlog.ops_limit() / 8).max(1)
            && backlog.held_ops() < (backlog.ops_limit() / 2).max(1)
    }

    /// Reads the blocks of standby `i`'s next wanted file that it lacks; the
    /// same want of other standbys comparing at the same time is answered
    /// right after, from the blocks just read (see [`crate::engine::read::BlockCache`]).
    fn answer_next_want(&mut self, i: usize) {
        let Some((path, from)) = self.answer_one_want(i) else { return };
        for j in 0..self.feeds.len() {
            // Taking it now saves reading it again later: a standby may read
            // this far beyond its usual read-ahead for it.
            let backlog = &self.feeds[j].backlog;
            let room = backlog.unsent_payload() < (2 * READ_AHEAD_BYTES).min(self.limits.bytes) && backlog.held_ops() < (backlog.ops_limit() / 2).max(1);
            if j == i || !room {
                continue;
            }
            let Some(link) = &mut self.feeds[j].link else { continue };
            let Some(at) = link.wants.iter().position(|(wanted, _, start)| *wanted == path && *start == from) else { continue };
            if let Some(want) = link.wants.remove(at) {
                link.wants.push_front(want);
                self.answer_one_want(j);
            }
        }
    }

    /// Answers (part of) standby `i`'s next want; returns its path and where it began.
    fn answer_one_want(&mut self, i: usize) -> Option<(sluice_proto::RelPath, usize)> {
        let feed = &mut self.feeds[i];
        let link = feed.link.as_mut()?;
        let (path, hashes, from) = link.wants.pop_front()?;
        let answered = (path.clone(), from);
        let now = monotonic_ns();
        let mut pending = Vec::new();
        let budget = READ_AHEAD_BYTES.min(self.limits.bytes).saturating_sub(feed.backlog.unsent_payload()).max(1);
        let resume = tokio::task::block_in_place(|| self.engine.answer_want(&path, &hashes, from, budget, now, &mut pending));
        let feed = &mut self.feeds[i];
        for op in pending {
            let captured = op.captured_ns;
            feed.backlog.push(op, captured);
        }
        self.check_overflow(i);
        self.absorb_compare_requests();
        let feed = &mut self.feeds[i];
        let Some(link) = &mut feed.link else { return Some(answered) };
        if let Some(next) = resume {
            link.wants.push_front((path, hashes, next));
            return Some(answered);
        }
        link.wants_answered += 1;
        let sent = feed.metrics.payload_bytes_sent.get();
        if let Some(bar) = &link.progress {
            bar.set_message(format!("initial sync of {}: {} files compared, {sent} bytes sent, now {path}", feed.name, link.wants_answered));
        } else if link.last_progress_log.elapsed() >= PROGRESS_LOG_EVERY {
            link.last_progress_log = Instant::now();
            tracing::info!(standby = %feed.name, files_compared = link.wants_answered, bytes_sent = sent, current = %path, "initial sync in progress");
        }
        self.finish_manifest_if_answered(i);
        Some(answered)
    }

    /// Once the receiver has listed every difference and each has been read, the
    /// comparison is complete as far as the agent is concerned.
    fn finish_manifest_if_answered(&mut self, i: usize) {
        let feed = &mut self.feeds[i];
        let Some(link) = &mut feed.link else { return };
        if !link.wants.is_empty() {
            return;
        }
        let Some(wanted) = link.manifest_done.take() else { return };
        if let Some(bar) = link.progress.take() {
            bar.finish_and_clear();
        }
        feed.last_compare = Some((unix_ns() as f64 / 1e9, wanted));
        tracing::info!(
            standby = %feed.name,
            files_differing = wanted,
            seconds = link.sync_started.elapsed().as_secs_f64(),
            "standby compared; differing blocks are streaming"
        );
        feed.backlog.manifest_done();
        link.synced = true;
        self.check_synced(i);
    }

    fn check_synced(&self, i: usize) {
        let feed = &self.feeds[i];
        if feed.link.as_ref().is_some_and(|l| l.synced) && feed.backlog.in_flight() == 0 && feed.backlog.is_idle() {
            feed.metrics.initial_sync_complete.set(1);
            self.update_sync_metric();
        }
    }
}

/// Passes on the reports of `count` standbys' verifications as one: every
/// mismatch and progress line, then one summary (or the first error).
async fn combine_verifications(count: usize, mut reports: mpsc::UnboundedReceiver<Report>, reply: mpsc::UnboundedSender<Report>) {
    let mut done = 0;
    let (mut mismatches, mut bytes, mut entries, mut seconds) = (0, 0, 0, 0.0f64);
    while let Some(report) = reports.recv().await {
        match report {
            Report::Done { mismatches: m, bytes: b, entries: e, seconds: s } => {
                mismatches += m;
                bytes += b;
                entries = entries.max(e);
                seconds = seconds.max(s);
                done += 1;
                if done == count {
                    let _ = reply.send(Report::Done { mismatches, bytes, entries, seconds });
                    return;
                }
            }
            Report::Error(e) => {
                let _ = reply.send(Report::Error(e));
                return;
            }
            other => {
                if reply.send(other).is_err() {
                    return;
                }
            }
        }
    }
}
