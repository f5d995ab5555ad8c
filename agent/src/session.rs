//! Replication state that outlives connections ([`Replicator`]: events into the
//! backlog, memory bounds, the durable journal, restart recovery) and one
//! connection to the receiver ([`Session`]: handshake, resending what the standby
//! lacks, tree comparisons, streaming and acknowledgements).

use crate::backlog::{Backlog, Limits, ManifestState, Next, Rewound};
use crate::capture::Event;
use crate::engine::{DirtyInode, Engine, PendingOp, Recovery};
use crate::journal::{Header, LogEntry, JournalWriter, Snapshot};
use crate::control::{AgentStatus, ControlRequest, Request, SwitchoverProof};
use crate::metrics::Metrics;
use crate::verify::{Report, Verifier};
use anyhow::{Context, anyhow, bail};
use sluice_net::{FrameReader, FrameWriter};
use sluice_proto::lineage::{Activity, Lineage, Role, TreeLineage};
use sluice_proto::{AgentMessage, Entry, Hash, PROTOCOL_VERSION, ReceiverMessage, RelPath};
use std::collections::VecDeque;
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Encoded manifest bytes per frame, about (entries with large extended
/// attributes make few entries a frame).
const MANIFEST_CHUNK_BYTES: usize = 1 << 20;
/// Payload bytes per frame of operations; small ops share a frame.
const FRAME_PAYLOAD: u64 = 1 << 20;
/// Rescans closer together than this are deferred, so a burst of unplaceable events costs one.
const RESCAN_SPACING: Duration = Duration::from_secs(2);
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
/// Wanted files read in one turn of the session loop, at most.
const WANTS_PER_TURN: usize = 32;
/// File content read ahead of sending, by flushes of dirty data and while
/// answering the receiver's wants.
const READ_AHEAD_BYTES: u64 = 16 << 20;
/// File content in flight (sent, not acknowledged as applied), at most.
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

/// Events → operations → backlog, whether connected or not, and the durable
/// record of what the standby may lack.
pub struct Replicator {
    pub engine: Engine,
    pub backlog: Backlog,
    journal: JournalWriter,
    metrics: Metrics,
    /// The header last recorded; `None` until this run's first checkpoint.
    last_written: Option<Header>,
    dropped_seen: u64,
    read_seen: u64,
    journal_seen: u64,
    /// The operation the receiver refused on the previous connection.
    refused: Option<u64>,
    /// The backlog was cleared while connected: the next operations sent do not
    /// follow the last ones, which the receiver must be told.
    skip_owed: bool,
    online: bool,
    /// When the last event was handled (Unix seconds).
    last_event_secs: i64,
    /// When the last event was handled (Unix ns).
    last_event_unix_ns: u64,
    /// Changes captured in this tree's generation, earlier runs included.
    generation_changes: u64,
    ticks: u64,
    scratch: Vec<PendingOp>,
    pub verifier: Verifier,
    verify_seen: crate::verify::Stats,
    pub crosscheck: crate::crosscheck::CrossCheck,
    crosscheck_seen: (u64, u64),
    /// Capture time of the newest event handled.
    latest_event_ns: u64,
    /// What the status names: the tree, the standby, the lineage.
    pub about: About,
    /// A switchover asked for and not finished.
    switchover: Option<PendingSwitchover>,
    /// A switchover the standby confirmed: the daemon makes this tree a standby and stops.
    pub switched: Option<Switched>,
    /// Where how far this master got is recorded now and then.
    pub activity_file: Option<crate::lineage::TreeFile>,
    activity_recorded: (Activity, Option<Instant>),
    /// What is queued is everything this tree changed since its promotion (see
    /// [`crate::failback`]), until the first connection.
    pub(crate) failback_base: bool,
    /// A failback by ranges is under way: once all of it is sent, the standby
    /// is told (`FailbackDone`).
    failback_sending: bool,
    /// What systemd is told (readiness, status lines).
    pub notifier: sluice_net::notify::Notifier,
    /// Beats each time a work loop goes round, for systemd's watchdog.
    pub heartbeat: sluice_net::notify::Heartbeat,
    /// When the agent started, and when systemd last heard of it.
    service_started: Instant,
    service_reported: Option<Instant>,
    /// When the last comparison with the standby ended (Unix seconds) and how
    /// many files differed.
    last_compare: Option<(f64, u64)>,
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
#[error("the standby refused this agent (fenced): {reason}")]
pub struct Fenced {
    pub reason: String,
    /// The standby's lineage.
    pub lineage: Lineage,
}

impl Replicator {
    /// Resumes from the journal's snapshot when there is one: its operations and
    /// dirty ranges are queued for the standby, and the walk that rebuilds the
    /// index finds what changed after it (see [`Engine::recover`]). Without one,
    /// the whole tree is compared on the first connection, unless the tree was
    /// promoted (at `promoted_unix_ns`): then the files changed since are queued
    /// whole, and with what capture finds from now on they are what the old
    /// primary needs at its failback (see [`crate::failback`]).
    pub fn new(
        mut engine: Engine,
        journal: JournalWriter,
        loaded: Option<Snapshot>,
        promoted_unix_ns: Option<u64>,
        limits: Limits,
        verifier: Verifier,
        metrics: Metrics,
    ) -> anyhow::Result<Replicator> {
        let now = monotonic_ns();
        let (next_seq, durable) = loaded.as_ref().map_or((1, 0), |s| (s.next_seq, s.durable));
        let mut backlog = Backlog::new(next_seq, durable, limits);
        let mut failback_base = loaded.as_ref().is_some_and(|s| s.failback_base && !s.compare_owed);
        match loaded {
            None if let Some(promoted) = promoted_unix_ns => {
                // Whatever the receiver applied before the promotion has an older
                // change time, or one within the same second (then the tree is compared).
                let since = (promoted / 1_000_000_000) as i64;
                match engine.recover(since).context("walking the watched tree")? {
                    Recovery::Whole { changed } => {
                        engine.request_compare(format!("{changed} changed between the promotion and the agent's start"))
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
                        failback_base = true;
                        // An empty comparison marks the standby in sync once what is queued is applied.
                        let since = unix_secs() - JOURNAL_SLACK_SECS;
                        backlog.push_manifest(ManifestState { scoped: Some(Vec::new()), subtrees: Vec::new(), done_seq: None, since });
                    }
                }
            }
            None => engine.request_compare(NO_STATE),
            Some(snapshot) if snapshot.compare_owed => {
                engine.request_compare("the previous run had not finished comparing the tree")
            }
            Some(snapshot) => {
                let started = Instant::now();
                let recovery = engine.recover(snapshot.verify_since).context("walking the watched tree")?;
                match recovery {
                    Recovery::Whole { changed } => {
                        engine.request_compare(format!("{changed} changed while the agent was not running"))
                    }
                    Recovery::Scoped(entries) => {
                        tracing::info!(
                            operations = snapshot.ops.len(),
                            dirty_files = snapshot.dirty.len(),
                            files_to_verify = entries.len(),
                            indexed = engine.index().len(),
                            walk_seconds = started.elapsed().as_secs_f64(),
                            "resuming from the durable state of the previous run"
                        );
                        metrics.files_verified.inc_by(entries.len() as u64);
                        backlog.restore(snapshot.ops, now);
                        for dirty in &snapshot.dirty {
                            engine.redirty(dirty, now);
                        }
                        let since = snapshot.verify_since;
                        backlog.push_manifest(ManifestState { scoped: Some(entries), subtrees: Vec::new(), done_seq: None, since });
                    }
                }
            }
        }
        Ok(Replicator {
            engine,
            backlog,
            journal,
            metrics,
            last_written: None,
            dropped_seen: 0,
            read_seen: 0,
            journal_seen: 0,
            refused: None,
            skip_owed: false,
            online: false,
            last_event_secs: 0,
            last_event_unix_ns: 0,
            generation_changes: 0,
            ticks: 0,
            scratch: Vec::new(),
            verifier,
            verify_seen: crate::verify::Stats::default(),
            crosscheck: crate::crosscheck::CrossCheck::default(),
            crosscheck_seen: (0, 0),
            latest_event_ns: 0,
            about: About {
                root: std::path::PathBuf::new(),
                peer: String::new(),
                lineage: TreeLineage { role: Role::Primary, lineage: Lineage::fresh(""), promoted: None, keep_replaced: false, activity: None },
            },
            switchover: None,
            switched: None,
            activity_file: None,
            activity_recorded: (Activity::default(), None),
            failback_base,
            failback_sending: false,
            notifier: sluice_net::notify::Notifier::default(),
            heartbeat: sluice_net::notify::Heartbeat::default(),
            service_started: Instant::now(),
            service_reported: None,
            last_compare: None,
        })
    }

    /// Applies a batch of captured events.
    pub fn handle_batch(&mut self, batch: CaptureBatch) {
        if let Some(switchover) = &mut self.switchover {
            switchover.events_seen += batch.events.len() as u64;
        }
        self.metrics.events_captured.inc_by(batch.events.len() as u64);
        if !batch.events.is_empty() {
            self.last_event_secs = unix_secs();
            self.last_event_unix_ns = unix_ns();
            self.generation_changes += batch.events.len() as u64;
        }
        if let Some(newest) = batch.events.iter().map(|e| e.ts_ns).max() {
            self.latest_event_ns = self.latest_event_ns.max(newest);
        }
        self.note_drops(batch.dropped_total);
        let mut pending = std::mem::take(&mut self.scratch);
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
        self.queue(&mut pending);
        self.scratch = pending;
    }

    /// Reads the dirty ranges whose coalescing time is up into operations.
    pub fn flush(&mut self) {
        let mut pending = std::mem::take(&mut self.scratch);
        self.refill_read_budget();
        tokio::task::block_in_place(|| self.engine.flush(&mut pending));
        self.queue(&mut pending);
        self.scratch = pending;
    }

    fn compare_owed(&self) -> bool {
        self.engine.rescan_reason().is_some()
    }

    fn queue(&mut self, pending: &mut Vec<PendingOp>) {
        if self.compare_owed() && !self.online {
            // The comparison on the next connection covers these.
            pending.clear();
        }
        for op in pending.drain(..) {
            let captured = op.captured_ns;
            self.backlog.push(op, captured);
        }
        if self.backlog.overflowed() {
            self.metrics.backlog_overflows.inc();
            let reason = format!("more than {} operations waited for the standby", self.backlog.unsent_len());
            self.backlog.clear();
            self.skip_owed = true;
            self.engine.request_compare(reason);
        }
        self.hold_data_if_needed();
    }

    /// Dirty data is read no further ahead of sending than [`READ_AHEAD_BYTES`]:
    /// reading and sending overlap, and a file written faster than the link
    /// carries waits as ranges (which later writes to them coalesce into), not as
    /// copies of its content in memory.
    fn refill_read_budget(&mut self) {
        self.engine.read_budget = READ_AHEAD_BYTES.saturating_sub(self.backlog.unsent_payload());
    }

    /// Dirty data stays as ranges while the backlog is at its memory bound, or while
    /// offline with a tree comparison owed (which will cover it).
    fn hold_data_if_needed(&mut self) {
        self.engine.data_held = self.backlog.content_full() || (self.compare_owed() && !self.online);
    }

    fn note_drops(&mut self, dropped_total: u64) {
        if dropped_total > self.dropped_seen {
            let lost = dropped_total - self.dropped_seen;
            self.metrics.events_dropped.inc_by(lost);
            self.dropped_seen = dropped_total;
            self.engine.request_rescan(format!("the kernel ring buffer overflowed, {lost} events lost"));
        }
    }

    /// Queues a scoped comparison of the paths waiting for repair, in stream order.
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
        for path in repair.removes {
            self.backlog.push(PendingOp { op: sluice_proto::Op::Remove { path }, captured_ns: now, ino: None }, now);
        }
        let since = unix_secs() - JOURNAL_SLACK_SECS;
        self.backlog.push_manifest(ManifestState { scoped: Some(repair.entries), subtrees: repair.subtrees, done_seq: None, since });
        Ok(())
    }

    /// Work done every 100 ms while not connected.
    pub fn tick(&mut self) {
        self.heartbeat.beat();
        self.report_to_service_manager(false);
        self.ticks += 1;
        if self.ticks.is_multiple_of(10) {
            self.engine.refresh_mapped(monotonic_ns());
        }
        self.update_metrics();
        if self.journal.due() {
            self.write_journal();
        }
    }

    /// Tells systemd what the agent does, once a second. Ready once the first
    /// comparison is done or the stream runs (`synced`), or once the standby
    /// stayed unreachable for [`READY_WITHOUT_STANDBY`]: capture runs and the
    /// journal keeps every change meanwhile, which is the agent's service.
    pub fn report_to_service_manager(&mut self, synced: bool) {
        if self.service_reported.is_some_and(|at| at.elapsed() < SERVICE_STATUS_INTERVAL) {
            return;
        }
        self.service_reported = Some(Instant::now());
        let (lag, lag_bytes) = (self.metrics.lag_seconds.get(), self.metrics.lag_bytes.get());
        let status = if !self.online {
            format!("standby {} unreachable; {} operations and {} bytes journaled for it", self.about.peer, self.backlog.unsent_len(), self.backlog.unsent_payload())
        } else if !synced || self.compare_owed() {
            format!("comparing the tree with the standby {}", self.about.peer)
        } else {
            format!("streaming to {}; lag {lag:.3} s, {lag_bytes} bytes", self.about.peer)
        };
        if (self.online && synced) || (!self.online && self.service_started.elapsed() >= READY_WITHOUT_STANDBY) {
            self.notifier.ready(&status);
        } else if self.notifier.is_ready() {
            self.notifier.status(&status);
        }
    }

    /// Writes the journal at once and waits for it, as the agent stops.
    pub fn write_journal_now(&mut self) {
        self.record(true);
        self.journal.finish();
    }

    /// Records what changed since the last write: appended to the log, or a
    /// whole checkpoint when one is owed (the first write of a run, sequence
    /// numbers renumbered, the log grown past twice its checkpoint, or a
    /// comparison of the whole tree starting or settling).
    pub fn write_journal(&mut self) {
        self.record(false);
    }

    /// [`Replicator::write_journal`]; with `always`, the header is written even
    /// when nothing changed, so the next start verifies only what changes after.
    fn record(&mut self, always: bool) {
        let now = unix_ns();
        // Everything changed before this has been captured and is either in the
        // journal or durable on the standby; files a pending verification covers
        // are in neither, so their earlier bound is kept.
        let mut verify_since = (now / 1_000_000_000) as i64 - JOURNAL_SLACK_SECS;
        if let Some(manifest) = self.backlog.unsettled_manifest() {
            verify_since = verify_since.min(manifest.since);
        }
        let full_pending = self.backlog.unsettled_manifest().is_some_and(|m| m.scoped.is_none());
        let header = Header {
            written_unix_ns: now,
            next_seq: self.backlog.next_seq(),
            compare_owed: self.compare_owed() || full_pending,
            verify_since,
            tree_nonempty: !self.engine.index().is_empty(),
            failback_base: self.failback_base,
        };
        let (dirtied, mapped) = self.engine.take_journal_deltas();
        let log = self.backlog.take_log();
        let renumbered = self.backlog.take_checkpoint_owed();
        let last = self.last_written;
        let checkpoint = renumbered
            || self.journal.checkpoint_due()
            || last.is_none_or(|last| last.compare_owed != header.compare_owed);
        if checkpoint {
            // While the whole tree is owed a comparison, what is queued is moot:
            // a restart compares the tree again.
            let (ops, dirty) = if header.compare_owed {
                (Vec::new(), Vec::new())
            } else {
                let (ops, mut dirty) = self.backlog.records();
                dirty.extend(self.engine.dirty_inodes());
                (ops, dirty)
            };
            self.journal.checkpoint(Snapshot {
                written_unix_ns: now,
                next_seq: header.next_seq,
                durable: self.backlog.durable(),
                compare_owed: header.compare_owed,
                verify_since,
                ops,
                dirty,
                tree_nonempty: header.tree_nonempty,
                failback_base: header.failback_base,
            });
            self.last_written = Some(header);
            return;
        }
        let mut entries = if header.compare_owed { Vec::new() } else { log };
        if !header.compare_owed && !dirtied.is_empty() {
            entries.push(LogEntry::Dirtied(dirtied));
        }
        if !header.compare_owed && !mapped.is_empty() {
            entries.push(LogEntry::Mapped(mapped));
        }
        // Skipping an unchanged header leaves an older `verify_since` on disk,
        // which only makes a restart verify more; it is written again anyway once
        // the time bound can move past the last change seen, so that a restart
        // does not verify what this journal vouches for.
        let Some(last) = last else { return };
        let stale = last.verify_since <= self.last_event_secs && header.verify_since > last.verify_since;
        let unchanged = entries.is_empty()
            && last.next_seq == header.next_seq
            && last.tree_nonempty == header.tree_nonempty
            && last.failback_base == header.failback_base;
        if unchanged && !stale && !always {
            return;
        }
        entries.push(LogEntry::Header(header));
        self.journal.append(entries);
        self.last_written = Some(header);
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
                self.verifier.start_demand(repair, control.reply);
            }
            Request::Status => {
                let _ = control.reply.send(Report::Status(Box::new(self.status())));
            }
            Request::Reconfigure { verify_bytes_per_second } => {
                tracing::info!(verify_bytes_per_second, "verifier rate changed");
                self.verifier.set_rate(verify_bytes_per_second);
            }
            Request::Switchover if !self.online => {
                let _ = control.reply.send(Report::Error(format!(
                    "not connected to the standby at {}: a switchover needs it (to fail over without the master, run `sluice-receiver promote` on the standby)",
                    self.about.peer
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

    /// How far this master got in its generation.
    pub fn activity(&self) -> Activity {
        Activity {
            last_seq: self.backlog.next_seq().saturating_sub(1),
            last_change_unix_ns: self.last_event_unix_ns,
            changes: self.generation_changes,
        }
    }

    /// What the agent is doing, for `sluice-agent status`.
    pub fn status(&self) -> AgentStatus {
        let m = &self.metrics;
        let connected = self.online;
        let synced = connected && m.initial_sync_complete.get() == 1;
        AgentStatus {
            root: self.about.root.clone(),
            role: self.about.lineage.role.to_string(),
            generation: self.about.lineage.lineage.current.to_string(),
            peer: self.about.peer.clone(),
            connected,
            synced,
            last_seq: self.backlog.next_seq().saturating_sub(1),
            applied_seq: self.backlog.applied_seq(),
            durable_seq: self.backlog.durable(),
            backlog_ops: self.backlog.unsent_len() as u64,
            backlog_bytes: self.backlog.unsent_payload(),
            lag_seconds: m.lag_seconds.get(),
            lag_bytes: u64::try_from(m.lag_bytes.get()).unwrap_or(0),
            events_dropped: m.events_dropped.get(),
            tree_compares: m.tree_compares.get(),
            verify_mismatches: m.verify_mismatches.get(),
            verify_last_pass_unix: m.verify_last_pass.get(),
            verify_passes: self.verifier.stats.passes,
            verify_bytes: self.verifier.stats.bytes,
            last_compare_unix: self.last_compare.map_or(0.0, |(at, _)| at),
            last_compare_files_differing: self.last_compare.map_or(0, |(_, differing)| differing),
            problems: sluice_net::daemon::recent_problems(),
            healthy: synced,
        }
    }

    /// Marks the end of a connection.
    pub fn offline(&mut self) {
        self.online = false;
        if let Some(switchover) = self.switchover.take() {
            let reason = match switchover.point {
                Some(_) => "the connection ended before the standby confirmed its promotion: check `sluice-receiver status` on it before writing anywhere",
                None => "the connection to the standby ended before it held everything; nothing was promoted",
            };
            let _ = switchover.reply.send(Report::Error(reason.into()));
        }
        self.verifier.connection_lost();
        self.hold_data_if_needed();
        self.update_metrics();
    }

    fn update_metrics(&mut self) {
        let now = monotonic_ns();
        let oldest = [self.backlog.oldest_unapplied_ns(), self.engine.oldest_dirty_ns()].into_iter().flatten().min();
        self.metrics.lag_seconds.set(oldest.map_or(0.0, |t| now.saturating_sub(t) as f64 / 1e9));
        let bytes = self.backlog.unsent_payload() + self.backlog.in_flight_bytes() + self.engine.dirty_bytes();
        self.metrics.lag_bytes.set(bytes as i64);
        self.metrics.ops_in_flight.set(self.backlog.in_flight() as i64);
        self.metrics.repairs_abandoned.set(self.engine.repairs_abandoned() as i64);
        let stats = self.verifier.stats;
        self.metrics.verify_bytes.inc_by(stats.bytes.saturating_sub(self.verify_seen.bytes));
        self.metrics.verify_mismatches.inc_by(stats.mismatches.saturating_sub(self.verify_seen.mismatches));
        self.metrics.verify_passes.inc_by(stats.passes.saturating_sub(self.verify_seen.passes));
        if let Some(last) = stats.last_pass_unix {
            self.metrics.verify_last_pass.set(last);
        }
        self.verify_seen = stats;
        let oldest = self.verifier.oldest_change_asked().unwrap_or(self.engine.change_count());
        // The cross-check looks a few seconds back at most.
        self.engine.forget_changes_before(oldest, monotonic_ns().saturating_sub(10_000_000_000));
        self.metrics.crosscheck_misses.inc_by(self.crosscheck.misses.saturating_sub(self.crosscheck_seen.0));
        self.metrics.crosscheck_overflows.inc_by(self.crosscheck.overflows.saturating_sub(self.crosscheck_seen.1));
        self.crosscheck_seen = (self.crosscheck.misses, self.crosscheck.overflows);
        self.metrics.backlog_ops.set(self.backlog.unsent_len() as i64);
        self.metrics.backlog_bytes.set(self.backlog.unsent_payload() as i64);
        self.metrics.bytes_read.inc_by(self.engine.bytes_read.saturating_sub(self.read_seen));
        self.read_seen = self.engine.bytes_read;
        let written = self.journal.bytes_written();
        self.metrics.journal_bytes_written.inc_by(written.saturating_sub(self.journal_seen));
        self.journal_seen = written;
    }
}

/// State of one connection.
pub struct Session<'a> {
    connection: quinn::Connection,
    writer: FrameWriter,
    replies: mpsc::UnboundedReceiver<anyhow::Result<ReceiverMessage>>,
    rep: &'a mut Replicator,
    wire_seen: (u64, u64),
    lost_seen: u64,
    quic_acks_seen: u64,
    synced: bool,
    sync_started: Instant,
    last_rescan: Instant,
    progress: Option<indicatif::ProgressBar>,
    wants_answered: u64,
    last_progress_log: Instant,
    coalesce: Duration,
    /// When acknowledgements last moved forward (or sending started from nothing in flight).
    last_progress: Instant,
    /// Files the receiver wants, not yet read: the path, the standby's block
    /// hashes, and the block to go on from.
    wants: VecDeque<(RelPath, Vec<Hash>, usize)>,
    /// A file whose hashes have come in part.
    partial_want: Option<(RelPath, Vec<Hash>)>,
    /// The receiver's `ManifestDone`, held until every want has been read.
    manifest_done: Option<u64>,
}

impl<'a> Session<'a> {
    /// Opens the stream, exchanges `Hello`, and queues again whatever the receiver
    /// does not hold durably.
    pub async fn open(connection: quinn::Connection, rep: &'a mut Replicator, coalesce: Duration) -> anyhow::Result<Session<'a>> {
        let (send, recv) = connection.open_bi().await.context("opening the replication stream")?;
        let mut writer = FrameWriter::new(send, true);
        let agent = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
        let lineage = rep.about.lineage.lineage.clone();
        writer.write(&AgentMessage::Hello { version: PROTOCOL_VERSION, agent, lineage: lineage.clone(), activity: rep.activity() }).await?;
        let mut reader = FrameReader::new(recv);
        let (durable_seq, uncertain, failback) = match reader.read::<ReceiverMessage>().await? {
            Some(ReceiverMessage::Hello { version, durable_seq, uncertain, lineage: theirs, failback }) if version == PROTOCOL_VERSION => {
                if theirs.current != lineage.current {
                    bail!("the standby answered with generation {}, not this tree's {}", theirs.current, lineage.current);
                }
                (durable_seq, uncertain, failback)
            }
            Some(ReceiverMessage::Fenced { reason, lineage }) => return Err(Fenced { reason, lineage }.into()),
            Some(ReceiverMessage::Hello { version, .. }) => {
                bail!("receiver speaks protocol {version}, this agent {PROTOCOL_VERSION}")
            }
            other => bail!("expected Hello from the receiver, got {other:?}"),
        };
        let (tx, replies) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let message = reader.read::<ReceiverMessage>().await;
                let done = !matches!(message, Ok(Some(_)));
                let _ = tx.send(message.map_err(anyhow::Error::from).and_then(|m| m.ok_or_else(|| anyhow!("receiver closed the stream"))));
                if done {
                    break;
                }
            }
        });
        rep.online = true;
        if durable_seq < rep.backlog.durable() {
            rep.engine.request_compare(format!(
                "the standby holds operations up to {durable_seq} but had reported {} durable",
                rep.backlog.durable()
            ));
        }
        let now = monotonic_ns();
        let failback_base = std::mem::take(&mut rep.failback_base);
        match failback {
            Some(unsent) if failback_base && !rep.compare_owed() => match crate::failback::start(rep, &unsent, now) {
                Ok(started) => {
                    tracing::info!(
                        files = started.files,
                        replaced = started.replaced,
                        own_operations = rep.backlog.unsent_len(),
                        "failback: sending what this tree changed since its promotion and what the old primary had not sent, not the whole tree"
                    );
                    rep.failback_sending = true;
                }
                Err(why) => rep.engine.request_compare(format!("failback: {why}; comparing the whole tree")),
            },
            Some(_) => rep.engine.request_compare("failback: this agent does not hold every change since the promotion; comparing the whole tree"),
            None if failback_base => rep.engine.request_compare(
                "this tree was promoted and the agent held only its changes since, but the standby is not the old primary; comparing the whole tree",
            ),
            None => {}
        }
        let Rewound { requeued, dirty, unfinished, unreplayed } = rep.backlog.rewind(durable_seq, now, !uncertain);
        if unfinished.is_some() {
            rep.engine.request_compare("the previous comparison of the tree did not finish");
        }
        if !unreplayed.is_empty() {
            tracing::warn!(
                receiver_durable = durable_seq,
                operations = unreplayed.len(),
                "the standby stopped uncleanly and may hold some operations after its durable state; comparing the paths they name instead of replaying them"
            );
        }
        for op in &unreplayed {
            for path in op.paths() {
                rep.engine.request_repair(path.clone(), "operation sent before the standby stopped uncleanly");
            }
        }
        let resent = if rep.compare_owed() {
            rep.backlog.clear();
            0
        } else {
            requeued
        };
        // What is resent may skip numbers (re-read writes get new ones), and so
        // may what follows a cleared backlog; the receiver refuses any other gap.
        writer.write(&AgentMessage::Skip { next_seq: rep.backlog.next_seq() }).await?;
        rep.skip_owed = false;
        for inode in &dirty {
            rep.engine.redirty(inode, now);
        }
        if resent + dirty.len() > 0 {
            tracing::info!(
                receiver_durable = durable_seq,
                operations = resent,
                files = dirty.len(),
                "resending what the standby does not hold durably"
            );
            rep.metrics.ops_resent.inc_by(resent as u64);
        }
        Ok(Session {
            connection,
            writer,
            replies,
            rep,
            wire_seen: (0, 0),
            lost_seen: 0,
            quic_acks_seen: 0,
            synced: false,
            sync_started: Instant::now(),
            last_rescan: Instant::now() - RESCAN_SPACING,
            progress: None,
            wants_answered: 0,
            last_progress_log: Instant::now(),
            coalesce,
            last_progress: Instant::now(),
            wants: VecDeque::new(),
            partial_want: None,
            manifest_done: None,
        })
    }

    /// Runs until the connection fails or `events` closes.
    pub async fn run(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<CaptureBatch>,
        control: &mut mpsc::UnboundedReceiver<ControlRequest>,
        notices: &mut mpsc::UnboundedReceiver<Vec<crate::crosscheck::Notice>>,
    ) -> anyhow::Result<()> {
        let mut flush_tick = tokio::time::interval(self.coalesce.max(Duration::from_millis(1)));
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut metrics_tick = tokio::time::interval(Duration::from_millis(100));
        let mut ticks = 0u64;
        if self.rep.backlog.is_idle() && !self.rep.compare_owed() {
            self.synced = true;
            self.rep.metrics.initial_sync_complete.set(1);
        }
        loop {
            let comparing = !self.wants.is_empty() || self.manifest_done.is_some();
            let compare_due = self.rep.compare_owed() && self.rep.backlog.is_idle() && !comparing && self.last_rescan.elapsed() >= RESCAN_SPACING;
            let repairs_due = self.rep.engine.has_repairs() && self.rep.backlog.unsettled_manifest().is_none() && !self.rep.compare_owed();
            if compare_due || repairs_due {
                // Handle what capture already reported first, so that as few events
                // as possible come from before the walk (see `Engine::superseded_by_walk`).
                while let Ok(batch) = events.try_recv() {
                    self.rep.handle_batch(batch);
                }
            }
            if compare_due && self.rep.compare_owed() {
                self.compare_trees().await?;
            }
            if repairs_due && self.rep.engine.has_repairs() && !self.rep.compare_owed() {
                self.rep.queue_repairs()?;
            }
            // Verification goes between bursts of replication, when the standby
            // holds (or is about to hold) everything captured so far.
            let quiet = self.synced
                && !comparing
                && self.rep.backlog.unsent_len() == 0
                && self.rep.backlog.unsettled_manifest().is_none()
                && !self.rep.compare_owed()
                && !self.rep.engine.has_repairs();
            if quiet && let Some(request) = self.rep.verifier.next_request(&self.rep.engine, Instant::now()) {
                self.writer.write(&request).await?;
            }
            let stalled = self.rep.backlog.in_flight() > 0
                && (self.last_progress.elapsed() >= STALL
                    || self.rep.backlog.in_flight_bytes() >= IN_FLIGHT_BYTES
                    || self.rep.backlog.in_flight() >= IN_FLIGHT_OPS.min(self.rep.backlog.ops_limit() / 4).max(1));
            let promoting = self.rep.switchover.as_ref().is_some_and(|s| s.point.is_some());
            let sendable = !self.rep.backlog.is_idle() && !stalled && !promoting;
            if self.rep.switchover.is_some() && !promoting {
                self.advance_switchover(comparing).await?;
            }
            if self.rep.failback_sending && quiet && !self.rep.engine.has_dirty() {
                // In stream order: the standby acts on it once all of it is applied.
                self.rep.failback_sending = false;
                self.writer.write(&AgentMessage::FailbackDone).await?;
                tracing::info!("failback: everything the old primary lacked is sent");
            }
            let answerable = !self.wants.is_empty() && self.room_to_read_ahead();
            tokio::select! {
                reply = self.replies.recv() => {
                    let reply = reply.ok_or_else(|| anyhow!("receiver reader stopped"))??;
                    self.on_reply(reply)?;
                    if self.rep.switched.is_some() {
                        return Ok(());
                    }
                }
                batch = events.recv() => {
                    let Some(batch) = batch else { return Ok(()) };
                    self.rep.handle_batch(batch);
                }
                Some(request) = control.recv() => self.rep.handle_control(request),
                Some(batch) = notices.recv() => self.rep.handle_notices(batch),
                () = std::future::ready(()), if sendable => self.send_next().await?,
                () = std::future::ready(()), if answerable => {
                    // Several per turn: a want of a small file costs less than a
                    // turn of this loop.
                    for _ in 0..WANTS_PER_TURN {
                        self.answer_next_want();
                        if self.wants.is_empty() || !self.room_to_read_ahead() {
                            break;
                        }
                    }
                }
                _ = flush_tick.tick(), if self.rep.engine.has_dirty() => self.rep.flush(),
                _ = metrics_tick.tick() => {
                    self.rep.heartbeat.beat();
                    let in_sync = self.rep.metrics.initial_sync_complete.get() == 1;
                    self.rep.report_to_service_manager(in_sync);
                    ticks += 1;
                    if ticks.is_multiple_of(10) {
                        self.rep.engine.refresh_mapped(monotonic_ns());
                    }
                    self.update_metrics();
                    self.rep.record_activity(Some(crate::lineage::ACTIVITY_INTERVAL));
                    self.rep.judge_notices(events.is_empty());
                    if self.rep.journal.due() {
                        self.rep.write_journal();
                    }
                }
            }
        }
    }

    /// Sends one frame of queued operations, or the queued manifest.
    async fn send_next(&mut self) -> anyhow::Result<()> {
        if self.rep.backlog.in_flight() == 0 {
            self.last_progress = Instant::now();
        }
        match self.rep.backlog.take(FRAME_PAYLOAD, monotonic_ns(), unix_ns()) {
            Some(Next::Ops(ops)) => {
                if self.rep.skip_owed {
                    self.rep.skip_owed = false;
                    self.writer.write(&AgentMessage::Skip { next_seq: ops[0].seq }).await?;
                }
                if !self.synced {
                    self.rep.metrics.initial_sync_complete.set(0);
                }
                for op in &ops {
                    self.rep.metrics.ops_sent.inc();
                    self.rep.metrics.payload_bytes_sent.inc_by(op.op.payload_len());
                }
                self.writer.write(&AgentMessage::Ops(ops)).await?;
            }
            Some(Next::Manifest { entries, subtrees }) => {
                tracing::info!(entries = entries.len(), subtrees = subtrees.len(), "comparing part of the tree with the standby");
                self.synced = false;
                self.sync_started = Instant::now();
                self.write_manifest(&entries).await?;
                self.writer.write(&AgentMessage::ScopedManifestEnd { subtrees }).await?;
            }
            None => {}
        }
        Ok(())
    }

    async fn write_manifest(&mut self, entries: &[Entry]) -> anyhow::Result<()> {
        for chunk in sluice_proto::manifest_chunks(entries, MANIFEST_CHUNK_BYTES) {
            self.writer.write(&AgentMessage::Manifest(chunk.to_vec())).await?;
        }
        Ok(())
    }

    /// Walks the tree and sends it; the receiver answers with `Want`s and `ManifestDone`.
    async fn compare_trees(&mut self) -> anyhow::Result<()> {
        let reason = self.rep.engine.rescan_reason().unwrap_or("requested").to_string();
        if reason != NO_STATE {
            self.rep.metrics.rescans.inc();
        }
        self.rep.metrics.tree_compares.inc();
        self.last_rescan = Instant::now();
        self.sync_started = Instant::now();
        self.synced = false;
        self.wants_answered = 0;
        let since = unix_secs() - JOURNAL_SLACK_SECS;
        let entries: Vec<Entry> = tokio::task::block_in_place(|| self.rep.engine.rescan()).context("walking the watched tree")?;
        tracing::info!(entries = entries.len(), %reason, "comparing the tree with the standby");
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_message(format!("initial sync: {} entries listed", entries.len()));
            bar.enable_steady_tick(Duration::from_millis(200));
            self.progress = Some(bar);
        }
        self.write_manifest(&entries).await?;
        self.writer.write(&AgentMessage::ManifestEnd).await?;
        self.rep.backlog.full_manifest_sent(since);
        Ok(())
    }

    fn on_reply(&mut self, reply: ReceiverMessage) -> anyhow::Result<()> {
        match reply {
            // Answered as the backlog makes room: reading every wanted file at once
            // would hold the whole difference in memory.
            ReceiverMessage::Want { path, first_block, hashes, last, .. } => {
                // A large file's hashes come in parts; blocks no part covers are holes.
                let mut assembled = match self.partial_want.take() {
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
                    self.wants.push_back((path, assembled, 0));
                } else {
                    self.partial_want = Some((path, assembled));
                }
            }
            ReceiverMessage::ManifestDone { wanted } => {
                self.manifest_done = Some(wanted);
                self.finish_manifest_if_answered();
            }
            ReceiverMessage::Ack { seq } => {
                let acked = self.rep.backlog.applied(seq);
                if acked > 0 {
                    self.last_progress = Instant::now();
                }
                self.rep.metrics.ops_acked.inc_by(acked);
                if self.rep.refused.is_some_and(|refused| seq >= refused) {
                    self.rep.refused = None;
                }
                self.check_synced();
            }
            ReceiverMessage::Durable { seq } => self.rep.backlog.confirmed(seq),
            ReceiverMessage::Refused { seq, reason } => {
                if self.rep.refused == Some(seq) {
                    self.rep.engine.request_compare(format!("the receiver refused operation {seq} twice"));
                }
                self.rep.refused = Some(seq);
                bail!("receiver refused operation {seq}: {reason}")
            }
            ReceiverMessage::Diverged { seq, paths, reason } => {
                self.rep.metrics.ops_diverged.inc();
                tracing::warn!(seq, paths = ?paths, %reason, "the standby's copy differs from the master's; repairing");
                for path in paths {
                    self.rep.engine.request_repair(path, format!("the standby could not apply operation {seq}: {reason}"));
                }
            }
            ReceiverMessage::Hashes { id, size, hashes } => self.rep.verifier.on_hashes(&mut self.rep.engine, id, size, &hashes),
            ReceiverMessage::Listing { id, exists, entries, more } => {
                self.rep.verifier.on_listing(&mut self.rep.engine, id, exists, entries, more)
            }
            ReceiverMessage::Hello { .. } => bail!("unexpected second Hello from the receiver"),
            ReceiverMessage::Fenced { reason, lineage } => return Err(Fenced { reason, lineage }.into()),
            ReceiverMessage::Promoted { durable_seq, at_barrier, consistent_unix_ns, lineage } => {
                let Some(switchover) = self.rep.switchover.take() else { bail!("the standby says it was promoted, but no switchover was asked for") };
                let Some(point) = switchover.point else { bail!("the standby was promoted before the switchover point") };
                let last = self.rep.backlog.next_seq().saturating_sub(1);
                let proof = SwitchoverProof {
                    last_seq: point,
                    standby_durable_seq: durable_seq,
                    generation: lineage.current.to_string(),
                    captured_after: last.saturating_sub(point) + u64::from(self.rep.engine.has_dirty()),
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
                self.rep.switched = Some(Switched { proof, lineage, reply: switchover.reply });
            }
        }
        Ok(())
    }

    /// Sends `Promote` once the standby holds everything captured (the switchover
    /// point), and tells the operator what it waits for meanwhile.
    async fn advance_switchover(&mut self, comparing: bool) -> anyhow::Result<()> {
        let rep = &mut *self.rep;
        let backlog = &rep.backlog;
        let mut waiting = Vec::new();
        if !self.synced || comparing || rep.compare_owed() {
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
        if rep.engine.has_dirty() {
            waiting.push("changed files to be read".to_string());
        }
        if rep.engine.has_repairs() {
            waiting.push("repairs of the standby".to_string());
        }
        let ready = waiting.is_empty();
        let Some(switchover) = rep.switchover.as_mut() else { return Ok(()) };
        if switchover.reply.is_closed() {
            tracing::warn!("switchover cancelled: whoever asked for it is gone; nothing was promoted");
            rep.switchover = None;
            return Ok(());
        }
        if ready {
            let point = backlog.next_seq().saturating_sub(1);
            switchover.point = Some(point);
            let _ = switchover.reply.send(Report::Progress(format!("the standby holds every operation up to {point}: promoting it")));
            self.writer.write(&AgentMessage::Promote).await?;
            return Ok(());
        }
        if switchover.last_report.elapsed() >= SWITCHOVER_REPORT {
            let writes = if switchover.events_seen > 0 {
                format!("; {} changes were captured meanwhile: stop the services writing to {}", switchover.events_seen, rep.about.root.display())
            } else {
                String::new()
            };
            let _ = switchover.reply.send(Report::Progress(format!("waiting for {}{writes}", waiting.join(", "))));
            switchover.last_report = Instant::now();
            switchover.events_seen = 0;
        }
        Ok(())
    }

    /// Reads the blocks of the next wanted file that the standby lacks.
    /// Whether answering another want keeps the backlog within its bounds. Half
    /// of its bound on operations is left for what the standby has not made
    /// durable yet (it does so when its stream pauses), the other half for what
    /// the tree's changes bring meanwhile.
    fn room_to_read_ahead(&self) -> bool {
        let backlog = &self.rep.backlog;
        backlog.unsent_payload() < READ_AHEAD_BYTES
            && backlog.unsent_len() < READ_AHEAD_OPS.min(backlog.ops_limit() / 8).max(1)
            && backlog.held_ops() < (backlog.ops_limit() / 2).max(1)
    }

    fn answer_next_want(&mut self) {
        let Some((path, hashes, from)) = self.wants.pop_front() else { return };
        let now = monotonic_ns();
        let mut pending = Vec::new();
        let budget = READ_AHEAD_BYTES.saturating_sub(self.rep.backlog.unsent_payload()).max(1);
        let resume = tokio::task::block_in_place(|| self.rep.engine.answer_want(&path, &hashes, from, budget, now, &mut pending));
        self.rep.queue(&mut pending);
        if let Some(next) = resume {
            self.wants.push_front((path, hashes, next));
            return;
        }
        self.wants_answered += 1;
        let sent = self.rep.metrics.payload_bytes_sent.get();
        if let Some(bar) = &self.progress {
            bar.set_message(format!("initial sync: {} files compared, {sent} bytes sent, now {path}", self.wants_answered));
        } else if self.last_progress_log.elapsed() >= PROGRESS_LOG_EVERY {
            self.last_progress_log = Instant::now();
            tracing::info!(files_compared = self.wants_answered, bytes_sent = sent, current = %path, "initial sync in progress");
        }
        self.finish_manifest_if_answered();
    }

    /// Once the receiver has listed every difference and each has been read, the
    /// comparison is complete as far as the agent is concerned.
    fn finish_manifest_if_answered(&mut self) {
        if !self.wants.is_empty() {
            return;
        }
        let Some(wanted) = self.manifest_done.take() else { return };
        if let Some(bar) = self.progress.take() {
            bar.finish_and_clear();
        }
        self.rep.last_compare = Some((unix_ns() as f64 / 1e9, wanted));
        tracing::info!(
            files_differing = wanted,
            seconds = self.sync_started.elapsed().as_secs_f64(),
            "standby compared; differing blocks are streaming"
        );
        self.rep.backlog.manifest_done();
        self.synced = true;
        self.check_synced();
    }

    fn check_synced(&self) {
        if self.synced && self.rep.backlog.in_flight() == 0 && self.rep.backlog.is_idle() {
            self.rep.metrics.initial_sync_complete.set(1);
        }
    }

    fn update_metrics(&mut self) {
        self.rep.update_metrics();
        let metrics = &self.rep.metrics;
        let stats = self.connection.stats();
        let (tx, rx) = (stats.udp_tx.bytes, stats.udp_rx.bytes);
        metrics.wire_bytes_sent.inc_by(tx.saturating_sub(self.wire_seen.0));
        metrics.wire_bytes_received.inc_by(rx.saturating_sub(self.wire_seen.1));
        self.wire_seen = (tx, rx);
        metrics.wire_bytes_lost.inc_by(stats.path.lost_bytes.saturating_sub(self.lost_seen));
        metrics.path_mtu.set(i64::from(stats.path.current_mtu));
        if stats.frame_rx.acks > self.quic_acks_seen {
            self.quic_acks_seen = stats.frame_rx.acks;
            self.last_progress = Instant::now();
        }
        self.lost_seen = stats.path.lost_bytes;
    }
}
