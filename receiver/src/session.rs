//! The replication protocol as the receiver sees it, free of I/O: one
//! [`Session`] takes [`AgentMessage`]s and produces [`ReceiverMessage`]s, so the
//! sequencing rules (handshake, manifest, skipping replayed ops, cumulative acks,
//! durability) can be tested without a network.
//!
//! One `Session` lives as long as the daemon; connections come and go, and each
//! starts with [`Session::connected`].

use std::sync::Arc;

use sluice_proto::blocks::BLOCK_SIZE;
use sluice_proto::lineage::{Activity, Fork, Kinship, Lineage, Promotion, Role, TreeLineage};
use sluice_proto::{AgentMessage, Hash, PROTOCOL_VERSION, ReceiverMessage, RelPath, SeqOp};

use crate::apply::rollback::RollbackCounters;
use crate::apply::{Applier, ApplyError};
use crate::config::SplitBrainPolicy;
use crate::metrics::Metrics;
use crate::state::{Position, State, StateError};
use crate::sync::InitialSync;

/// Most blocks one `Verify` may ask for (64 MiB of file content): hashing runs
/// in the applying loop, so one request must not hold the stream for long.
pub const MAX_VERIFY_BLOCKS: u32 = 1024;
/// Sequence numbers stay below this: a stream cannot use up the number space
/// and leave the standby refusing everything after it.
pub const MAX_SEQ: u64 = 1 << 62;
/// Largest forward jump one `Skip` may announce: more operations than an agent
/// could have dropped (it holds each in memory first) in centuries.
pub const MAX_SEQ_JUMP: u64 = 1 << 48;

/// What a split brain between this tree and `agent`'s is, and what is done about it.
fn split_brain(root: &str, agent: &str, fork: &Fork, ours: u64, theirs: u64, policy: SplitBrainPolicy, discard_ours: bool) -> String {
    let when = humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(fork.at_unix_ns));
    let both = format!(
        "split brain: both {root} ({ours} changes) and {agent}'s tree ({theirs} changes) were written after the promotion of {when} (generation {} forked at operation {})",
        fork.child, fork.seq
    );
    match (policy, discard_ours) {
        (_, true) => format!("{both}; `after_split_brain = {policy:?}` discards this tree's changes: it follows {agent}, and what that replaces is kept in its rollback directory"),
        (SplitBrainPolicy::Disconnect, _) => format!(
            "{both}; refusing (`[failover] after_split_brain = disconnect`). Decide which side's changes to keep: set `after_split_brain` to `discard-younger-primary` or `discard-least-changes` on the receiver of the side to discard, or make that side follow the other"
        ),
        _ => format!(
            "{both}; `after_split_brain = {policy:?}` discards {agent}'s changes, not this tree's: stop the agent on {agent} and make its tree follow this one (the discarded side keeps its changes in its rollback directory)"
        ),
    }
}

/// The lineage of `tree` (a fresh one when it never had one) promoted at
/// `at`: a primary of a new generation forked from the one it followed.
pub fn promotion_of(tree: Option<&TreeLineage>, at: Position, host: &str) -> TreeLineage {
    let base = tree.map_or_else(|| Lineage::fresh(host), |t| t.lineage.clone());
    let now = unix_ns_now();
    TreeLineage {
        role: Role::Primary,
        lineage: base.fork(host, at.seq, now),
        promoted: Some(Promotion {
            at_unix_ns: now,
            durable_seq: at.seq,
            consistent_unix_ns: at.captured_unix_ns,
            at_barrier: at.at_barrier,
            barrier_unix_ns: at.barrier_unix_ns,
        }),
        keep_replaced: false,
        activity: None,
    }
}

fn unix_ns_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// What the comparisons of the tree may do.
#[derive(Clone, Copy, Debug)]
pub struct SyncLimits {
    /// Entries one comparison may list.
    pub max_entries: u64,
    /// Share of the standby's entries a comparison of the whole tree may delete
    /// without an operator's permission.
    pub max_delete_fraction: f64,
    /// Never ask (the guard off).
    pub allow_mass_delete: bool,
}

impl Default for SyncLimits {
    fn default() -> Self {
        SyncLimits { max_entries: crate::sync::DEFAULT_MAX_ENTRIES, max_delete_fraction: 0.5, allow_mass_delete: false }
    }
}

/// Why the session stops: sent to the agent as `Refused`, then the connection closes.
#[derive(Debug, thiserror::Error)]
#[error("seq {seq}: {reason}")]
pub struct Refusal {
    /// The refused operation, or 0 when the refusal is not about an operation
    /// (handshake, manifest, a malformed frame).
    pub seq: u64,
    pub reason: String,
    /// The agent was fenced: `Fenced` was sent in place of `Hello`.
    pub fenced: bool,
}

/// Why the applied state could not be made durable.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    /// Flushing the replicated filesystem failed.
    #[error("cannot flush applied data: {0}")]
    Flush(#[from] ApplyError),
    /// Writing the state file failed.
    #[error("cannot store the applied sequence number: {0}")]
    Store(#[from] StateError),
}

/// Why the standby could not be promoted.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    #[error(transparent)]
    Durable(#[from] DurableError),
    #[error("cannot record the promotion: {0}")]
    Store(#[from] StateError),
}

/// Makes applied operations durable away from the session: syncfs, then the
/// position it covers is stored.
pub struct BackgroundFlush {
    position: Position,
    sync: crate::apply::SyncHandle,
    state: State,
}

impl BackgroundFlush {
    /// Runs the flush (blocking); returns the position now durable.
    pub fn run(self) -> Result<Position, DurableError> {
        self.sync.sync()?;
        self.state.store(self.position)?;
        Ok(self.position)
    }
}

/// The receiver's replication state across connections.
pub struct Session {
    applier: Applier,
    state: State,
    metrics: Arc<Metrics>,
    /// Where a relay forwarding this tree learns the master's capture time of
    /// what is applied (with `[[forward]]`).
    origin: Option<sluice_net::origin::OriginClock>,
    greeted: bool,
    sync: Option<InitialSync>,
    last_applied: u64,
    durable: u64,
    acked: u64,
    /// The durable sequence number last reported to the agent.
    durable_reported: u64,
    /// Capture time of the newest applied barrier not yet made durable.
    barrier: Option<u64>,
    /// The previous run did not stop cleanly: until something is applied in this
    /// one, operations after the durable sequence number may already be applied.
    unclean_start: bool,
    /// The durable sequence number this run started from.
    started_at: u64,
    /// Operations numbered below this may skip numbers (announced by `Skip`).
    skip_to: u64,
    limits: SyncLimits,
    /// Where the last applied operation stands in the master's stream.
    applied_at: Position,
    /// Where the copy on disk stands.
    durable_at: Position,
    /// The tree's role and history; `None` until a master is first followed.
    tree: Option<TreeLineage>,
    /// This host's name, for fresh generation identifiers.
    host: String,
    /// A change of role not yet announced to the operator's hooks.
    role_change: Option<RoleChange>,
    split_brain: SplitBrainPolicy,
    /// Paths changed on the standby by someone else, until a comparison puts
    /// them back (their local version is kept first).
    local_paths: std::collections::BTreeSet<RelPath>,
    /// Of those, the ones not yet reported to the agent.
    local_unreported: Vec<RelPath>,
    /// Files an old primary changed that its new master never received, not yet
    /// copied to the rollback directory: the first operation of the failback
    /// that changes one keeps it first.
    failback_keep: std::collections::BTreeSet<RelPath>,
}

/// Most paths changed locally that are remembered; past it, the oldest reports
/// stand and the verifier finds the rest.
const MAX_LOCAL_PATHS: usize = 100_000;

/// A change of the tree's role, for the operator's hooks.
#[derive(Clone, Debug)]
pub enum RoleChange {
    /// The standby became a primary.
    Promoted(TreeLineage),
    /// An old primary's tree follows the master promoted out of it.
    Demoted(TreeLineage),
}

impl Session {
    /// A session resuming after `durable` (loaded from `state`); `unclean_start`
    /// when the previous run did not stop cleanly (see [`State::open`]).
    pub fn new(applier: Applier, state: State, durable: u64, unclean_start: bool, metrics: Arc<Metrics>) -> Session {
        metrics
            .last_applied_seq
            .set(i64::try_from(durable).unwrap_or(i64::MAX));
        Session {
            applier,
            state,
            metrics,
            origin: None,
            greeted: false,
            sync: None,
            last_applied: durable,
            durable,
            acked: durable,
            durable_reported: durable,
            barrier: None,
            unclean_start,
            started_at: durable,
            skip_to: 0,
            limits: SyncLimits::default(),
            applied_at: Position { seq: durable, ..Position::default() },
            durable_at: Position { seq: durable, ..Position::default() },
            tree: None,
            host: nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
            role_change: None,
            split_brain: SplitBrainPolicy::Disconnect,
            local_paths: std::collections::BTreeSet::new(),
            local_unreported: Vec::new(),
            failback_keep: std::collections::BTreeSet::new(),
        }
    }

    /// Takes changes made on the standby by someone other than the receiver:
    /// logged, counted, and (when an agent is connected) reported for repair.
    /// What the repair replaces is kept in the rollback directory.
    pub fn local_changes(&mut self, changes: std::collections::BTreeSet<crate::local::LocalChange>, out: &mut Vec<ReceiverMessage>) {
        if changes.is_empty() || self.is_primary() {
            return;
        }
        self.keep_rollback();
        for change in changes {
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", change.pid)).unwrap_or_default();
            tracing::warn!(path = %change.path, pid = change.pid, process = comm.trim(), "changed on the standby by someone other than the receiver: putting the master's version back, the local one kept in the rollback directory");
            self.metrics.local_changes.inc();
            if self.local_paths.len() < MAX_LOCAL_PATHS && self.local_paths.insert(change.path.clone()) {
                self.local_unreported.push(change.path);
            }
        }
        self.report_local_changes(out);
    }

    fn report_local_changes(&mut self, out: &mut Vec<ReceiverMessage>) {
        if !self.greeted || self.sync.is_some() {
            return;
        }
        while !self.local_unreported.is_empty() {
            let count = self.local_unreported.len().min(sluice_proto::MAX_PATHS);
            let paths: Vec<RelPath> = self.local_unreported.drain(..count).collect();
            out.push(ReceiverMessage::Diverged { seq: 0, paths, reason: "changed on the standby by another process".into() });
        }
    }

    /// What a split brain is answered with.
    pub fn set_split_brain_policy(&mut self, policy: SplitBrainPolicy) {
        self.split_brain = policy;
    }

    /// Publishes the master's capture time of each operation as it is applied,
    /// for the relay forwarding this tree.
    pub fn set_origin_clock(&mut self, origin: sluice_net::origin::OriginClock) {
        self.origin = Some(origin);
    }

    /// The last change of role, once.
    pub fn take_role_change(&mut self) -> Option<RoleChange> {
        self.role_change.take()
    }

    /// This host's name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The highest sequence number whose effects are on disk.
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// Resumes from the durable position and lineage stored in the state directory.
    pub fn restore(&mut self, position: Position, tree: Option<TreeLineage>) {
        if position.seq == self.durable {
            self.applied_at = position;
            self.durable_at = position;
        }
        if tree.as_ref().is_some_and(|t| t.keep_replaced) {
            self.keep_rollback();
        }
        self.tree = tree;
    }

    /// Keeps what replication destroys in the rollback directory, or stops
    /// (a reload of `[rollback] enabled`), unless a failback or local changes
    /// need it kept for now.
    pub fn set_rollback(&mut self, enabled: bool) {
        let forced = self.tree.as_ref().is_some_and(|t| t.keep_replaced) || !self.local_paths.is_empty();
        if enabled {
            self.keep_rollback();
        } else if !forced {
            self.applier.disable_rollback();
        }
    }

    /// Keeps what replication replaces, whatever the configuration says.
    fn keep_rollback(&mut self) {
        if !self.applier.rollback_enabled() {
            self.applier.enable_rollback(RollbackCounters {
                bytes_kept: self.metrics.rollback_bytes_kept.clone(),
                entries_kept: self.metrics.rollback_entries_kept.clone(),
            });
        }
    }

    /// The failback of an old primary compared its whole tree with the new
    /// master: what it replaces no longer needs keeping beyond configuration.
    fn failback_compared(&mut self) -> Result<(), StateError> {
        if let Some(tree) = self.tree.as_mut().filter(|t| t.keep_replaced) {
            tree.keep_replaced = false;
            let tree = tree.clone();
            self.state.store_lineage(&tree)?;
            self.state.remove_unsent()?;
            self.failback_keep.clear();
            tracing::info!("failback: the old primary's tree matches the new master; its replaced content is in the rollback directory");
        }
        Ok(())
    }

    /// What a demoted old primary tells its new master in `Hello`: what its
    /// agent recorded it had not sent, when that record belongs to the
    /// generation this tree was demoted from.
    fn failback_record(&mut self) -> Result<Option<sluice_proto::lineage::Unsent>, StateError> {
        use sluice_proto::lineage::Unsent;
        let Some(tree) = self.tree.as_ref().filter(|t| t.keep_replaced) else { return Ok(None) };
        let parent = tree.lineage.forks.first().map_or(tree.lineage.current, |f| f.parent);
        let unsent = match self.state.load_unsent()? {
            Some(unsent) if tree.lineage.forks.iter().any(|f| f.parent == unsent.generation) => unsent,
            Some(unsent) => {
                tracing::warn!(recorded = %unsent.generation, "the record of what this tree's agent had not sent belongs to another generation; the failback compares the whole tree");
                Unsent::unknown(parent)
            }
            None => Unsent::unknown(parent),
        };
        self.failback_keep = unsent.all_paths().cloned().collect();
        if unsent.complete {
            tracing::info!(
                files = unsent.files.len(),
                paths = unsent.paths.len(),
                "failback: the new master sends what it changed since the fork and what this tree's agent had not sent; the old versions go to the rollback directory"
            );
        } else {
            tracing::info!("failback: no complete record of what this tree's agent had not sent; the new master compares the whole tree");
        }
        Ok(Some(unsent))
    }

    /// The tree's role and history.
    pub fn tree(&self) -> Option<&TreeLineage> {
        self.tree.as_ref()
    }

    /// True when the tree is a primary: no agent streams into it.
    pub fn is_primary(&self) -> bool {
        self.tree.as_ref().is_some_and(|t| t.role == Role::Primary)
    }

    /// Where the last applied operation stands in the master's stream.
    pub fn applied_position(&self) -> Position {
        self.applied_at
    }

    /// Where the copy on disk stands in the master's stream.
    pub fn durable_position(&self) -> Position {
        self.durable_at
    }

    /// Makes the tree a primary of a new generation, forked from the one it
    /// followed at the durable position: from now on every agent of the old
    /// generation is fenced. A tree already primary keeps its promotion.
    pub fn promote(&mut self) -> Result<TreeLineage, PromoteError> {
        self.make_durable()?;
        if let Some(tree) = self.tree.as_ref().filter(|t| t.role == Role::Primary) {
            return Ok(tree.clone());
        }
        let at = self.durable_at;
        let promoted = promotion_of(self.tree.as_ref(), at, &self.host);
        self.state.store_lineage(&promoted)?;
        self.role_change = Some(RoleChange::Promoted(promoted.clone()));
        self.metrics.role_primary.set(1);
        tracing::warn!(
            generation = %promoted.lineage.current,
            durable_seq = at.seq,
            "promoted: this tree is a primary now; agents of the old generation are fenced"
        );
        self.tree = Some(promoted.clone());
        Ok(promoted)
    }

    /// Decides whether the agent of `theirs` may stream into this tree, adopting
    /// its lineage when it may. `Err` names why not (the agent is fenced).
    fn admit(&mut self, agent: &str, theirs: &Lineage, activity: &Activity) -> Result<(), String> {
        let Some(tree) = &self.tree else {
            tracing::info!(generation = %theirs.current, "following the first master of this tree");
            return self.follow(theirs, false, false).map_err(|e| e.to_string());
        };
        let root = self.state.dir().parent().unwrap_or(self.state.dir()).display().to_string();
        let ours = tree.lineage.current;
        match (tree.role, tree.lineage.kinship(theirs)) {
            (Role::Standby, Kinship::Same) => Ok(()),
            (Role::Standby, Kinship::Ancestor(fork)) => {
                tracing::info!(generation = %theirs.current, previous = %ours, fork_seq = fork.seq, "following a master promoted out of the generation this tree held");
                self.follow(theirs, true, false).map_err(|e| e.to_string())
            }
            (Role::Primary, Kinship::Ancestor(fork)) => {
                // This tree is the old primary. Changes it took after the agent's
                // tree was promoted, while the agent's took some too, are a split brain.
                let changed = tree.activity.and_then(|a| a.after(&fork));
                if let Some(changed) = changed
                    && activity.total() > 0
                {
                    let discard_ours = match self.split_brain {
                        SplitBrainPolicy::Disconnect => false,
                        // The agent's tree was promoted out of this one: it is the younger.
                        SplitBrainPolicy::DiscardYoungerPrimary => false,
                        SplitBrainPolicy::DiscardLeastChanges => changed <= activity.total(),
                    };
                    let verdict = split_brain(&root, agent, &fork, changed, activity.total(), self.split_brain, discard_ours);
                    if !discard_ours {
                        self.metrics.split_brains.inc();
                        return Err(verdict);
                    }
                    tracing::warn!("{verdict}");
                }
                tracing::warn!(
                    generation = %theirs.current,
                    previous = %ours,
                    fork_seq = fork.seq,
                    "this tree was a primary; {agent} was promoted out of its generation and is the master now: this tree becomes its standby, and what it holds that the new master does not is kept in the rollback directory"
                );
                self.follow(theirs, true, true).map_err(|e| e.to_string())
            }
            (Role::Primary, Kinship::Descendant(fork)) if activity.after(&fork).is_some() => {
                // The agent is the old primary and took changes after this tree was
                // promoted, while this one may have taken its own: a split brain.
                let theirs_after = activity.after(&fork).unwrap_or(1);
                let ours = tree.activity.map_or(0, |a| a.total());
                let discard_ours = match self.split_brain {
                    SplitBrainPolicy::Disconnect => false,
                    SplitBrainPolicy::DiscardYoungerPrimary => true,
                    SplitBrainPolicy::DiscardLeastChanges => ours <= theirs_after,
                };
                let verdict = split_brain(&root, agent, &fork, ours, theirs_after, self.split_brain, discard_ours);
                if !discard_ours {
                    self.metrics.split_brains.inc();
                    return Err(verdict);
                }
                tracing::warn!("{verdict}");
                self.follow(theirs, true, true).map_err(|e| e.to_string())
            }
            (Role::Primary, Kinship::Descendant(fork)) => Err(format!(
                "{root} was promoted out of this agent's generation {} (holding its operations up to {}) and is a primary now (generation {ours}); two primaries never stream into each other. To make the agent's tree a standby of this one, stop `sluice-agent` on {agent}, run `sluice-receiver` on its tree and point this tree's agent at it",
                theirs.current, fork.seq
            )),
            (Role::Standby, Kinship::Descendant(fork)) => Err(format!(
                "{root} follows generation {ours}, promoted out of this agent's generation {} at operation {}: the agent's tree is the old master and must not stream here. Make it a standby of the new master instead",
                theirs.current, fork.seq
            )),
            (Role::Primary, Kinship::Same) => Err(format!(
                "{root} is a primary of the same generation {ours} as the agent's tree: both were written as masters of one history (a copied tree?); refusing rather than merging them"
            )),
            (_, Kinship::Unrelated) => Err(format!(
                "{root} holds generation {ours} ({}), unrelated to the agent's {}: it is a copy of another master. To make it a copy of this one, remove {}/lineage on it; its content is then compared and replaced",
                tree.role,
                theirs.current,
                self.state.dir().display()
            )),
        }
    }

    /// Makes the tree a standby of `lineage`; with `restart` the sequence
    /// starts over (the master numbers its own operations), with `demoted` what
    /// the comparison that follows replaces is kept in the rollback directory.
    fn follow(&mut self, lineage: &Lineage, restart: bool, demoted: bool) -> Result<(), StateError> {
        if restart {
            self.state.reset_position()?;
            self.last_applied = 0;
            self.durable = 0;
            self.acked = 0;
            self.durable_reported = 0;
            self.started_at = 0;
            self.unclean_start = false;
            self.barrier = None;
            self.applied_at = Position::default();
            self.durable_at = Position::default();
            self.metrics.last_applied_seq.set(0);
        }
        if demoted {
            self.keep_rollback();
        }
        let tree = TreeLineage { role: Role::Standby, lineage: lineage.clone(), promoted: None, keep_replaced: demoted, activity: None };
        self.state.store_lineage(&tree)?;
        if demoted {
            self.role_change = Some(RoleChange::Demoted(tree.clone()));
        }
        self.tree = Some(tree);
        self.metrics.role_primary.set(0);
        Ok(())
    }

    /// Sets what comparisons of the tree may do.
    pub fn set_limits(&mut self, limits: SyncLimits) {
        self.limits = limits;
    }

    /// Records a clean stop once everything applied is durable, so the next run
    /// reports no uncertainty.
    pub fn stop_cleanly(&mut self) -> Result<(), DurableError> {
        self.make_durable()?;
        self.state.mark_stopped()?;
        Ok(())
    }

    /// Resets the per-connection state for a new agent connection.
    pub fn connected(&mut self) {
        self.greeted = false;
        self.sync = None;
        self.skip_to = 0;
        self.acked = self.last_applied;
        self.durable_reported = self.durable;
        // Names may have changed under cached fds while nobody was connected.
        self.applier.close_files();
    }

    /// The highest applied sequence number.
    pub fn last_applied(&self) -> u64 {
        self.last_applied
    }

    /// True when operations were applied since the last [`Session::make_durable`].
    pub fn needs_flush(&self) -> bool {
        self.last_applied > self.durable
    }

    /// Flushes applied data to disk, then records the applied sequence number as durable.
    pub fn make_durable(&mut self) -> Result<(), DurableError> {
        if self.last_applied == self.durable {
            return Ok(());
        }
        let seq = self.last_applied;
        self.applier.sync_to_disk()?;
        self.state.store(self.applied_at)?;
        self.durable = seq;
        self.durable_at = self.applied_at;
        if let Some(captured) = self.barrier.take() {
            self.metrics.durable_epoch(captured);
        }
        Ok(())
    }

    /// What a background flush must cover: the highest applied sequence number and
    /// a handle to sync the standby's filesystem with; `None` when nothing is pending.
    pub fn flush_target(&self) -> Result<Option<BackgroundFlush>, ApplyError> {
        if self.last_applied == self.durable {
            return Ok(None);
        }
        let sync = self.applier.sync_handle()?;
        Ok(Some(BackgroundFlush { position: self.applied_at, sync, state: self.state.clone() }))
    }

    /// Records that a background flush made everything up to `position` durable.
    pub fn durable_reached(&mut self, position: Position) {
        if position.seq > self.durable {
            self.durable = position.seq;
            self.durable_at = position;
        }
    }

    /// True when an applied fsync barrier must be made durable before the next ack.
    pub fn barrier_pending(&self) -> bool {
        self.barrier.is_some()
    }

    /// A cumulative `Ack` when something was applied since the last one, else a
    /// `Durable` when more of it reached the disk since that was last reported.
    /// Call until `None`: a barrier makes what it acknowledges durable at once,
    /// and both must reach the agent.
    pub fn take_ack(&mut self) -> Option<ReceiverMessage> {
        if self.last_applied > self.acked {
            self.acked = self.last_applied;
            return Some(ReceiverMessage::Ack { seq: self.acked });
        }
        (self.durable > self.durable_reported).then(|| {
            self.durable_reported = self.durable;
            ReceiverMessage::Durable { seq: self.durable }
        })
    }

    /// Handles one message, pushing replies to `out`. An `Err` ends the connection.
    pub fn handle(
        &mut self,
        message: AgentMessage,
        out: &mut Vec<ReceiverMessage>,
    ) -> Result<(), Refusal> {
        let refuse = |reason: String| Refusal { seq: 0, reason, fenced: false };
        match message {
            AgentMessage::Hello { version, agent, lineage, activity } => {
                if self.greeted {
                    return Err(refuse("second Hello on one connection".into()));
                }
                if version != PROTOCOL_VERSION {
                    return Err(refuse(format!(
                        "protocol version {version}, this receiver speaks {PROTOCOL_VERSION}"
                    )));
                }
                if let Err(reason) = self.admit(&agent, &lineage, &activity) {
                    tracing::error!(agent = ?agent, "fenced: {reason}");
                    self.metrics.agents_fenced.inc();
                    let ours = self.tree.as_ref().map_or(lineage, |t| t.lineage.clone());
                    out.push(ReceiverMessage::Fenced { reason: reason.clone(), lineage: ours });
                    return Err(Refusal { seq: 0, reason, fenced: true });
                }
                // The agent resumes after what we report, so report only what is on disk.
                self.make_durable().map_err(|e| refuse(e.to_string()))?;
                tracing::info!(agent = ?agent, durable_seq = self.durable, "agent said hello");
                self.greeted = true;
                let lineage = self.tree.as_ref().map(|t| t.lineage.clone()).ok_or_else(|| refuse("no lineage after admitting the agent".into()))?;
                let failback = self.failback_record().map_err(|e| refuse(e.to_string()))?;
                out.push(ReceiverMessage::Hello {
                    version: PROTOCOL_VERSION,
                    durable_seq: self.durable,
                    uncertain: self.unclean_start && self.last_applied == self.started_at,
                    lineage,
                    failback,
                });
                self.local_unreported = self.local_paths.iter().cloned().collect();
                self.report_local_changes(out);
            }
            AgentMessage::Promote => {
                if self.sync.is_some() {
                    return Err(refuse("switchover in the middle of a manifest".into()));
                }
                let tree = self.promote().map_err(|e| refuse(e.to_string()))?;
                let at = self.durable_at;
                out.push(ReceiverMessage::Promoted {
                    durable_seq: at.seq,
                    at_barrier: at.at_barrier,
                    consistent_unix_ns: at.captured_unix_ns,
                    lineage: tree.lineage,
                });
            }
            _ if !self.greeted => return Err(refuse("message before Hello".into())),
            AgentMessage::FailbackDone => self.failback_compared().map_err(|e| refuse(e.to_string()))?,
            AgentMessage::Manifest(entries) => {
                let max_entries = self.limits.max_entries;
                let keep = self.tree.as_ref().is_some_and(|t| t.keep_replaced);
                let keep_paths = self.local_paths.iter().chain(&self.failback_keep).cloned().collect();
                let sync = self.sync.get_or_insert_with(|| InitialSync::with_limit(max_entries).keeping_replaced(keep).keeping_paths(keep_paths));
                let replies = sync
                    .entries(&mut self.applier, &entries)
                    .map_err(|e| refuse(e.to_string()))?;
                self.count_diverged(&replies);
                out.extend(replies.into_iter().flat_map(crate::sync::SyncReply::into_messages));
            }
            AgentMessage::ManifestEnd | AgentMessage::ScopedManifestEnd { .. } => {
                let subtrees = match message {
                    AgentMessage::ScopedManifestEnd { subtrees } => subtrees,
                    _ => vec![RelPath::root()],
                };
                let sync = self.sync.take().unwrap_or_default();
                if subtrees.iter().any(RelPath::is_root) {
                    self.guard_mass_deletion(&sync).map_err(refuse)?;
                }
                let (wanted, replies) = sync
                    .finish(&mut self.applier, &subtrees)
                    .map_err(|e| refuse(e.to_string()))?;
                if subtrees.iter().any(RelPath::is_root) {
                    self.failback_compared().map_err(|e| refuse(e.to_string()))?;
                    self.local_paths.clear();
                } else {
                    self.local_paths.retain(|path| !subtrees.iter().any(|top| path.starts_with(top)) && self.local_unreported.contains(path));
                }
                tracing::info!(
                    wanted,
                    subtrees = subtrees.len(),
                    "manifest listed; waiting for file contents"
                );
                self.count_diverged(&replies);
                out.extend(replies.into_iter().flat_map(crate::sync::SyncReply::into_messages));
                out.push(ReceiverMessage::ManifestDone { wanted });
            }
            AgentMessage::Op(op) => self.apply(op, out)?,
            AgentMessage::Ops(ops) => {
                for op in ops {
                    self.apply(op, out)?;
                }
            }
            AgentMessage::List { id, path, after, max } => {
                let listing = self.applier.list(&path, &after, max).map_err(|e| refuse(e.to_string()))?;
                out.push(match listing {
                    Some((entries, more)) => ReceiverMessage::Listing { id, exists: true, entries, more },
                    None => ReceiverMessage::Listing { id, exists: false, entries: Vec::new(), more: false },
                });
            }
            AgentMessage::Verify { id, path, offset, blocks } => {
                out.push(self.verify(id, &path, offset, blocks).map_err(|e| refuse(e.to_string()))?);
            }
            AgentMessage::Skip { next_seq } => {
                let floor = self.last_applied.saturating_add(1);
                if next_seq >= MAX_SEQ || next_seq.saturating_sub(floor) > MAX_SEQ_JUMP {
                    return Err(refuse(format!(
                        "the agent skips to operation {next_seq} from {}: more than any agent could have dropped; refusing to move the sequence that far",
                        self.last_applied
                    )));
                }
                self.skip_to = self.skip_to.max(next_seq);
            }
        }
        Ok(())
    }

    /// Refuses a comparison of the whole tree that would delete more than the
    /// configured share of the standby, unless an operator allowed it (by
    /// config, or once with `sluice-receiver allow-mass-delete`).
    fn guard_mass_deletion(&mut self, sync: &InitialSync) -> Result<(), String> {
        if self.limits.allow_mass_delete || self.limits.max_delete_fraction >= 1.0 {
            return Ok(());
        }
        let (doomed, total) = sync.deletions(&self.applier).map_err(|e| e.to_string())?;
        if doomed == 0 || (doomed as f64) <= self.limits.max_delete_fraction * total as f64 {
            return Ok(());
        }
        if self.state.take_mass_delete_permit().map_err(|e| e.to_string())? {
            tracing::warn!(doomed, total, "comparison deletes most of the standby; allowed once by the operator");
            self.metrics.mass_deletes_allowed.inc();
            return Ok(());
        }
        self.metrics.mass_deletes_refused.inc();
        let reason = format!(
            "the master lists so little that comparing would delete {doomed} of the standby's {total} entries (more than `[safety] max_delete_fraction` = {}); nothing was deleted. If the master's tree is meant to be like this, run `sluice-receiver allow-mass-delete --config <receiver.toml>` on the standby (or set `[safety] allow_mass_delete = true`)",
            self.limits.max_delete_fraction
        );
        tracing::error!("{reason}");
        Err(reason)
    }

    fn count_diverged(&self, replies: &[crate::sync::SyncReply]) {
        let diverged = replies.iter().filter(|r| matches!(r, crate::sync::SyncReply::Diverged { .. })).count();
        self.metrics.ops_diverged.inc_by(diverged as u64);
    }

    /// The hashes of `blocks` blocks of `path` from `offset`, as the standby holds them.
    fn verify(&mut self, id: u64, path: &RelPath, offset: u64, blocks: u32) -> Result<ReceiverMessage, ApplyError> {
        if !offset.is_multiple_of(BLOCK_SIZE) || blocks > MAX_VERIFY_BLOCKS {
            return Err(ApplyError::Invalid {
                path: path.clone(),
                reason: format!("verify of {blocks} blocks at offset {offset}: at most {MAX_VERIFY_BLOCKS} blocks from a block boundary"),
            });
        }
        let hashes = match self.applier.block_hashes(path, offset, blocks)? {
            Some((size, hashes)) => (Some(size), hashes),
            None => (None, Vec::<Hash>::new()),
        };
        Ok(ReceiverMessage::Hashes { id, size: hashes.0, hashes: hashes.1 })
    }

    /// Copies a file the old primary changed (and its new master never received)
    /// to the rollback directory before `op` changes it in place; removals and
    /// replacing renames keep what they replace anyway.
    fn keep_before_failback_changes(&mut self, op: &sluice_proto::Op) -> Result<(), ApplyError> {
        use sluice_proto::Op;
        let path = match op {
            Op::Write { path, .. }
            | Op::SetAttrs { path, .. }
            | Op::Truncate { path, .. }
            | Op::Fallocate { path, .. }
            | Op::SetXattrs { path, .. }
            | Op::CreateFile { path, truncate: true, .. } => path,
            _ => return Ok(()),
        };
        if self.failback_keep.remove(path) {
            self.applier.keep_file(path)?;
        }
        Ok(())
    }

    fn apply(&mut self, op: SeqOp, out: &mut Vec<ReceiverMessage>) -> Result<(), Refusal> {
        if self.sync.is_some() {
            // Deleting unlisted entries at ManifestEnd would undo such an op.
            return Err(Refusal {
                seq: op.seq,
                reason: "operation in the middle of a manifest".into(),
                fenced: false,
            });
        }
        // Numbers only go forward, one at a time, except where the agent said
        // some are skipped: a replay or a gap is a bug (or a forgery) that
        // would otherwise lose operations or make the standby skip later ones.
        let expected = self.last_applied.saturating_add(1).max(self.skip_to);
        if op.seq <= self.last_applied || op.seq > expected || op.seq >= MAX_SEQ {
            let reason = if op.seq <= self.last_applied {
                format!("operation {} is not after {}, the last one applied: the stream went backwards", op.seq, self.last_applied)
            } else {
                format!("operation {} leaves a gap after {}, the last one applied (expected {expected})", op.seq, self.last_applied)
            };
            tracing::error!(seq = op.seq, "{reason}");
            return Err(Refusal { seq: op.seq, reason, fenced: false });
        }
        if !self.failback_keep.is_empty() {
            self.keep_before_failback_changes(&op.op).map_err(|e| Refusal { seq: op.seq, reason: e.to_string(), fenced: false })?;
        }
        if let Some(origin) = &self.origin {
            origin.set(op.captured_unix_ns);
        }
        match self.applier.apply(&op.op) {
            Ok(applied) => {
                self.last_applied = op.seq;
                self.metrics
                    .applied(op.seq, op.captured_unix_ns, applied.bytes_written);
                let at_barrier = matches!(op.op, sluice_proto::Op::Barrier { .. });
                if at_barrier {
                    self.barrier = Some(op.captured_unix_ns);
                }
                self.applied_at = Position {
                    seq: op.seq,
                    captured_unix_ns: op.captured_unix_ns,
                    at_barrier,
                    barrier_unix_ns: if at_barrier { op.captured_unix_ns } else { self.applied_at.barrier_unix_ns },
                };
                Ok(())
            }
            Err(e) if e.is_environmental() => {
                tracing::error!(seq = op.seq, path = %op.op.path(), error = %e, "operation refused");
                Err(Refusal {
                    seq: op.seq,
                    reason: e.to_string(),
                    fenced: false,
                })
            }
            Err(e) => {
                // The copy is not what the agent believes: go on with the stream
                // and let the agent repair these paths.
                tracing::warn!(seq = op.seq, path = %op.op.path(), error = %e, "operation does not fit the standby's copy; skipped, reported for repair");
                self.last_applied = op.seq;
                self.applied_at = Position { seq: op.seq, captured_unix_ns: op.captured_unix_ns, at_barrier: false, ..self.applied_at };
                self.metrics.last_applied_seq.set(i64::try_from(op.seq).unwrap_or(i64::MAX));
                self.metrics.ops_diverged.inc();
                out.push(ReceiverMessage::Diverged {
                    seq: op.seq,
                    paths: op.op.paths().into_iter().cloned().collect(),
                    reason: e.to_string(),
                });
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::{Entry, EntryKind, Meta, Op, RelPath, Timestamp, blocks};

    fn session(root: &std::path::Path) -> Session {
        let state = State::open(root).unwrap();
        let durable = state.load().unwrap();
        let unclean = state.unclean();
        let position = state.load_position().unwrap();
        let tree = state.load_lineage().unwrap();
        let mut session = Session::new(
            Applier::open(root).unwrap(),
            state,
            durable,
            unclean,
            Arc::new(Metrics::new()),
        );
        session.restore(position, tree);
        session
    }

    fn hello_of(lineage: &Lineage) -> AgentMessage {
        AgentMessage::Hello { version: PROTOCOL_VERSION, agent: "test".into(), lineage: lineage.clone(), activity: sluice_proto::lineage::Activity::default() }
    }

    fn fenced(s: &mut Session, lineage: &Lineage) -> String {
        s.connected();
        let mut out = Vec::new();
        let refusal = s.handle(hello_of(lineage), &mut out).unwrap_err();
        assert!(refusal.fenced, "{refusal}");
        match out.pop() {
            Some(ReceiverMessage::Fenced { reason, .. }) => reason,
            other => panic!("expected Fenced, got {other:?}"),
        }
    }

    #[test]
    fn a_promoted_standby_fences_its_old_master_and_an_old_primary_follows_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let first = Lineage::fresh("master");
        let mut s = session(dir.path());
        let mut out = Vec::new();
        s.connected();
        s.handle(hello_of(&first), &mut out).unwrap();
        s.handle(AgentMessage::Skip { next_seq: 1 }, &mut out).unwrap();
        s.handle(AgentMessage::Op(SeqOp { seq: 1, captured_unix_ns: 11, op: Op::Barrier { path: None } }), &mut out).unwrap();
        s.handle(AgentMessage::Op(mkdir(2, "d")), &mut out).unwrap();
        out.clear();
        s.handle(AgentMessage::Promote, &mut out).unwrap();
        let Some(ReceiverMessage::Promoted { durable_seq: 2, at_barrier: false, lineage: promoted, .. }) = out.pop() else {
            panic!("expected Promoted at operation 2")
        };
        assert!(matches!(first.kinship(&promoted), Kinship::Ancestor(f) if f.seq == 2));
        assert!(s.is_primary());
        assert!(matches!(s.take_role_change(), Some(RoleChange::Promoted(_))));
        assert_eq!(s.durable_position().barrier_unix_ns, 11, "the last barrier held");

        // The old master comes back: fenced, now and after a restart.
        let reason = fenced(&mut s, &first);
        assert!(reason.contains("promoted") && reason.contains("two primaries"), "{reason}");
        drop(s);
        let mut s = session(dir.path());
        assert!(s.is_primary());
        fenced(&mut s, &first);
        let reason = fenced(&mut s, &Lineage::fresh("stranger"));
        assert!(reason.contains("unrelated"), "{reason}");
        assert!(s.handle(AgentMessage::Op(mkdir(3, "e")), &mut out).is_err(), "nothing applied after a fence");
        assert!(!dir.path().join("e").exists());

        // This tree as an old primary: a master promoted out of it is followed,
        // from operation 1 of its own numbering, and what it replaces is kept.
        let newer = promoted.fork("elsewhere", 5, 1);
        s.connected();
        out.clear();
        s.handle(hello_of(&newer), &mut out).unwrap();
        assert!(matches!(out.pop(), Some(ReceiverMessage::Hello { durable_seq: 0, ref lineage, .. }) if *lineage == newer));
        assert!(!s.is_primary());
        assert!(matches!(s.take_role_change(), Some(RoleChange::Demoted(_))));
        assert!(s.applier.rollback_enabled(), "a demoted tree keeps what the new master replaces");
        s.handle(AgentMessage::Op(mkdir(1, "from-new-master")), &mut out).unwrap();
        assert!(dir.path().join("from-new-master").is_dir());
    }

    #[test]
    fn a_promotion_is_kept_once_and_an_old_generation_cannot_follow_a_newer_standby() {
        let dir = tempfile::tempdir().unwrap();
        let first = Lineage::fresh("master");
        let mut s = session(dir.path());
        s.connected();
        s.handle(hello_of(&first), &mut Vec::new()).unwrap();
        let promoted = s.promote().unwrap();
        assert_eq!(s.promote().unwrap(), promoted, "promoting twice changes nothing");
        // A standby of the promoted tree refuses the old master too.
        let other = tempfile::tempdir().unwrap();
        let mut t = session(other.path());
        t.connected();
        t.handle(hello_of(&promoted.lineage), &mut Vec::new()).unwrap();
        let reason = fenced(&mut t, &first);
        assert!(reason.contains("old master"), "{reason}");
    }

    fn hello() -> AgentMessage {
        AgentMessage::Hello {
            version: PROTOCOL_VERSION,
            agent: "test".into(),
            lineage: sluice_proto::Lineage { current: sluice_proto::GenerationId(1), forks: Vec::new() },
            activity: sluice_proto::lineage::Activity::default(),
        }
    }

    fn mkdir(seq: u64, path: &str) -> SeqOp {
        SeqOp {
            seq,
            captured_unix_ns: 0,
            op: Op::Mkdir {
                path: RelPath::from_bytes(path).unwrap(),
                mode: 0o755,
            },
        }
    }

    #[test]
    fn handshake_sync_ops_ack_and_resume() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = session(dir.path());
        let mut out = Vec::new();
        assert!(
            s.handle(AgentMessage::ManifestEnd, &mut out).is_err(),
            "Hello comes first"
        );
        s.connected();
        s.handle(hello(), &mut out).unwrap();
        assert_eq!(
            out.pop(),
            Some(ReceiverMessage::Hello {
                version: PROTOCOL_VERSION,
                durable_seq: 0,
                uncertain: false,
                lineage: sluice_proto::Lineage { current: sluice_proto::GenerationId(1), forks: Vec::new() },
                failback: None,
            })
        );
        let meta = Meta {
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime: Timestamp { secs: 1, nanos: 0 },
        };
        let dir_entry = Entry {
            path: RelPath::from_bytes("a").unwrap(),
            kind: EntryKind::Dir,
            meta,
            hardlink_of: None,
            names: 1,
            xattrs: Vec::new(),
            verify: false,
        };
        s.handle(AgentMessage::Manifest(vec![dir_entry]), &mut out)
            .unwrap();
        let refused = s
            .handle(AgentMessage::Op(mkdir(1, "x")), &mut Vec::new())
            .unwrap_err();
        assert_eq!(refused.seq, 1);
        s.handle(AgentMessage::ManifestEnd, &mut out).unwrap();
        assert_eq!(out.pop(), Some(ReceiverMessage::ManifestDone { wanted: 0 }));

        s.handle(
            AgentMessage::Ops(vec![mkdir(1, "a/b"), mkdir(2, "a/c")]),
            &mut out,
        )
        .unwrap();
        assert_eq!(s.take_ack(), Some(ReceiverMessage::Ack { seq: 2 }));
        assert_eq!(s.take_ack(), None);
        // A replayed op is refused: the stream must go forward.
        let bad = SeqOp {
            seq: 2,
            captured_unix_ns: 0,
            op: Op::Remove {
                path: RelPath::root(),
            },
        };
        assert!(s.handle(AgentMessage::Op(bad), &mut out).is_err());
        assert!(s.needs_flush());

        // A write with a wrong hash is skipped and reported for repair: the stream goes on.
        let op = Op::Write {
            path: RelPath::from_bytes("f").unwrap(),
            offset: 0,
            data: b"x".to_vec(),
            hash: blocks::hash(b"y"),
        };
        out.clear();
        s.handle(AgentMessage::Op(SeqOp { seq: 3, captured_unix_ns: 0, op }), &mut out).unwrap();
        assert!(
            matches!(&out[..], [ReceiverMessage::Diverged { seq: 3, paths, reason }]
                if paths == &vec![RelPath::from_bytes("f").unwrap()] && reason.contains("hash")),
            "{out:?}"
        );
        assert!(!dir.path().join("f").exists(), "nothing was written");
        // So is an operation on a path the standby lacks.
        out.clear();
        let rename = Op::Rename {
            from: RelPath::from_bytes("nope").unwrap(),
            to: RelPath::from_bytes("a/z").unwrap(),
            exchange: false,
            noreplace: false,
        };
        s.handle(AgentMessage::Op(SeqOp { seq: 4, captured_unix_ns: 0, op: rename }), &mut out).unwrap();
        assert!(matches!(&out[..], [ReceiverMessage::Diverged { seq: 4, paths, .. }] if paths.len() == 2), "{out:?}");
        assert_eq!(s.last_applied(), 4);
        // Once on disk, the agent hears that it may forget ops 1 to 4.
        s.make_durable().unwrap();
        assert_eq!(s.take_ack(), Some(ReceiverMessage::Ack { seq: 4 }));
        assert_eq!(s.take_ack(), Some(ReceiverMessage::Durable { seq: 4 }));
        assert_eq!(s.take_ack(), None);

        // The next connection's Hello reports what was flushed, and so does a restart.
        s.connected();
        s.handle(hello(), &mut out).unwrap();
        assert_eq!(
            out.pop(),
            Some(ReceiverMessage::Hello {
                version: PROTOCOL_VERSION,
                durable_seq: 4,
                uncertain: false,
                lineage: sluice_proto::Lineage { current: sluice_proto::GenerationId(1), forks: Vec::new() },
                failback: None,
            })
        );
        // A run that ends without a clean stop leaves the next one uncertain about
        // what follows its durable state, until it applies something.
        drop(s);
        let mut s = session(dir.path());
        s.connected();
        s.handle(hello(), &mut out).unwrap();
        assert_eq!(
            out.pop(),
            Some(ReceiverMessage::Hello {
                version: PROTOCOL_VERSION,
                durable_seq: 4,
                uncertain: true,
                lineage: sluice_proto::Lineage { current: sluice_proto::GenerationId(1), forks: Vec::new() },
                failback: None,
            })
        );
        assert!(
            s.handle(hello(), &mut out).is_err(),
            "one Hello per connection"
        );
        s.connected();
        s.handle(hello(), &mut out).unwrap();
        s.handle(AgentMessage::Op(mkdir(5, "c")), &mut out).unwrap();
        s.connected();
        s.handle(hello(), &mut out).unwrap();
        assert!(matches!(out.pop(), Some(ReceiverMessage::Hello { uncertain: false, .. })));
        // After a clean stop the next run is certain again.
        s.stop_cleanly().unwrap();
        drop(s);
        let mut s = session(dir.path());
        s.connected();
        s.handle(hello(), &mut out).unwrap();
        assert!(matches!(out.pop(), Some(ReceiverMessage::Hello { durable_seq: 5, uncertain: false, .. })));
    }

    #[test]
    fn verify_answers_block_hashes_of_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = session(dir.path());
        let mut out = Vec::new();
        s.connected();
        s.handle(hello(), &mut out).unwrap();
        let data = vec![7u8; BLOCK_SIZE as usize * 2 + 5];
        std::fs::write(dir.path().join("f"), &data).unwrap();
        out.clear();
        let verify = |offset, blocks| AgentMessage::Verify { id: 9, path: RelPath::from_bytes("f").unwrap(), offset, blocks };
        s.handle(verify(BLOCK_SIZE, 10), &mut out).unwrap();
        let expected = vec![blocks::hash(&data[BLOCK_SIZE as usize..2 * BLOCK_SIZE as usize]), blocks::hash(&data[2 * BLOCK_SIZE as usize..])];
        assert_eq!(out.pop(), Some(ReceiverMessage::Hashes { id: 9, size: Some(data.len() as u64), hashes: expected }));
        s.handle(AgentMessage::Verify { id: 1, path: RelPath::from_bytes("missing").unwrap(), offset: 0, blocks: 1 }, &mut out).unwrap();
        assert_eq!(out.pop(), Some(ReceiverMessage::Hashes { id: 1, size: None, hashes: vec![] }));
        assert!(s.handle(verify(1, 1), &mut out).is_err(), "unaligned");
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/b"), b"12345").unwrap();
        std::os::unix::fs::symlink("b", dir.path().join("d/a")).unwrap();
        std::fs::create_dir(dir.path().join("d/c")).unwrap();
        let list = |after: &[u8], max| AgentMessage::List { id: 3, path: RelPath::from_bytes("d").unwrap(), after: after.to_vec(), max };
        s.handle(list(b"", 2), &mut out).unwrap();
        let Some(ReceiverMessage::Listing { id: 3, exists: true, entries, more: true }) = out.pop() else { panic!("{out:?}") };
        let names: Vec<&[u8]> = entries.iter().map(|e| e.name.as_slice()).collect();
        assert_eq!(names, [&b"a"[..], b"b"]);
        assert_eq!(entries[0].kind, sluice_proto::EntryKind::Symlink { target: b"b".to_vec() });
        assert_eq!(entries[1].kind, sluice_proto::EntryKind::File { size: 5 });
        s.handle(list(b"b", 2), &mut out).unwrap();
        assert!(matches!(out.pop(), Some(ReceiverMessage::Listing { entries, more: false, .. }) if entries.len() == 1 && entries[0].name == b"c"));
        s.handle(AgentMessage::List { id: 4, path: RelPath::root(), after: Vec::new(), max: 100 }, &mut out).unwrap();
        let Some(ReceiverMessage::Listing { entries, .. }) = out.pop() else { panic!() };
        assert!(!entries.iter().any(|e| e.name == b".sluice"), "the receiver's own state is not listed");
        s.handle(AgentMessage::List { id: 5, path: RelPath::from_bytes("d/b").unwrap(), after: Vec::new(), max: 1 }, &mut out).unwrap();
        assert!(matches!(out.pop(), Some(ReceiverMessage::Listing { exists: false, .. })));
        assert!(s.handle(verify(0, MAX_VERIFY_BLOCKS + 1), &mut out).is_err(), "too large");
    }

    #[test]
    fn wrong_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = session(dir.path());
        let hello = AgentMessage::Hello {
            version: PROTOCOL_VERSION + 1,
            agent: "future".into(),
            lineage: sluice_proto::Lineage { current: sluice_proto::GenerationId(1), forks: Vec::new() },
            activity: sluice_proto::lineage::Activity::default(),
        };
        assert!(s.handle(hello, &mut Vec::new()).is_err());
    }
}
