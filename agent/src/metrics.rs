//! The agent's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabel {
    pub mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StandbyLabel {
    pub standby: String,
}

/// Per standby (the `standby` label): how far behind it is and what it was sent.
#[derive(Clone, Default)]
pub struct StandbyFamilies {
    pub connected: Family<StandbyLabel, Gauge>,
    pub initial_sync_complete: Family<StandbyLabel, Gauge>,
    pub lag_seconds: Family<StandbyLabel, Gauge<f64, AtomicU64>>,
    pub lag_bytes: Family<StandbyLabel, Gauge>,
    pub applied_seq: Family<StandbyLabel, Gauge>,
    pub durable_seq: Family<StandbyLabel, Gauge>,
    pub payload_bytes_sent: Family<StandbyLabel, Counter>,
    pub wire_bytes_sent: Family<StandbyLabel, Counter>,
    pub backlog_ops: Family<StandbyLabel, Gauge>,
    pub backlog_bytes: Family<StandbyLabel, Gauge>,
    pub ahead: Family<StandbyLabel, Gauge>,
    pub tree_compares: Family<StandbyLabel, Counter>,
}

/// The handles of one standby's series.
#[derive(Clone)]
pub struct StandbyMetrics {
    pub connected: Gauge,
    pub initial_sync_complete: Gauge,
    pub lag_seconds: Gauge<f64, AtomicU64>,
    pub lag_bytes: Gauge,
    pub applied_seq: Gauge,
    pub durable_seq: Gauge,
    pub payload_bytes_sent: Counter,
    pub wire_bytes_sent: Counter,
    pub backlog_ops: Gauge,
    pub backlog_bytes: Gauge,
    pub ahead: Gauge,
    pub tree_compares: Counter,
}

impl StandbyFamilies {
    /// The series of the standby called `name`.
    pub fn of(&self, name: &str) -> StandbyMetrics {
        let label = StandbyLabel { standby: name.to_string() };
        StandbyMetrics {
            connected: self.connected.get_or_create(&label).clone(),
            initial_sync_complete: self.initial_sync_complete.get_or_create(&label).clone(),
            lag_seconds: self.lag_seconds.get_or_create(&label).clone(),
            lag_bytes: self.lag_bytes.get_or_create(&label).clone(),
            applied_seq: self.applied_seq.get_or_create(&label).clone(),
            durable_seq: self.durable_seq.get_or_create(&label).clone(),
            payload_bytes_sent: self.payload_bytes_sent.get_or_create(&label).clone(),
            wire_bytes_sent: self.wire_bytes_sent.get_or_create(&label).clone(),
            backlog_ops: self.backlog_ops.get_or_create(&label).clone(),
            backlog_bytes: self.backlog_bytes.get_or_create(&label).clone(),
            ahead: self.ahead.get_or_create(&label).clone(),
            tree_compares: self.tree_compares.get_or_create(&label).clone(),
        }
    }
}

/// Every metric the agent exports; cheap to clone (handles share their values).
#[derive(Clone, Default)]
pub struct Metrics {
    pub lag_seconds: Gauge<f64, AtomicU64>,
    pub lag_bytes: Gauge,
    pub events_captured: Counter,
    pub events_dropped: Counter,
    pub bytes_read: Counter,
    pub bytes_shared: Counter,
    pub wire_bytes_sent: Counter,
    pub wire_bytes_received: Counter,
    pub wire_bytes_lost: Counter,
    pub payload_bytes_sent: Counter,
    pub ops_sent: Counter,
    pub ops_acked: Counter,
    pub ops_in_flight: Gauge,
    pub rescans: Counter,
    pub ops_diverged: Counter,
    pub repairs: Counter,
    pub repairs_abandoned: Gauge,
    pub internal_errors: Counter,
    pub crosscheck_misses: Counter,
    pub crosscheck_overflows: Counter,
    pub verify_bytes: Counter,
    pub verify_mismatches: Counter,
    pub verify_passes: Counter,
    pub verify_last_pass: Gauge<f64, AtomicU64>,
    pub tree_compares: Counter,
    pub files_verified: Counter,
    pub ops_resent: Counter,
    pub backlog_ops: Gauge,
    pub backlog_bytes: Gauge,
    pub backlog_overflows: Counter,
    pub journal_bytes_written: Counter,
    pub journal_write_failures: Counter,
    pub path_mtu: Gauge,
    pub connected: Gauge,
    pub initial_sync_complete: Gauge,
    pub fenced: Gauge,
    pub capture_mode: Family<ModeLabel, Gauge>,
    pub standby: StandbyFamilies,
}

impl Metrics {
    /// Registers every metric under its `sluice_` name.
    pub fn register(&self) -> Registry {
        let mut r = Registry::default();
        r.register("sluice_lag_seconds", "Age of the oldest captured change not yet acknowledged as applied by the receiver (the standby furthest behind)", self.lag_seconds.clone());
        r.register("sluice_lag_bytes", "File bytes captured and not yet acknowledged as applied", self.lag_bytes.clone());
        r.register("sluice_events_captured", "Events read from the kernel ring buffer", self.events_captured.clone());
        r.register("sluice_events_dropped", "Events lost because the ring buffer was full", self.events_dropped.clone());
        r.register("sluice_bytes_read", "File bytes read to build operations", self.bytes_read.clone());
        r.register("sluice_bytes_shared", "File bytes sent to a standby comparing the tree from what was read for another one comparing it at the same time", self.bytes_shared.clone());
        r.register("sluice_wire_bytes_sent", "UDP payload bytes sent to the receiver (QUIC)", self.wire_bytes_sent.clone());
        r.register("sluice_wire_bytes_received", "UDP payload bytes received from the receiver (QUIC)", self.wire_bytes_received.clone());
        r.register("sluice_wire_bytes_lost", "Bytes QUIC declared lost and sent again", self.wire_bytes_lost.clone());
        r.register("sluice_payload_bytes_sent", "File content bytes sent in write operations", self.payload_bytes_sent.clone());
        r.register("sluice_ops_sent", "Operations sent", self.ops_sent.clone());
        r.register("sluice_ops_acked", "Operations acknowledged as applied", self.ops_acked.clone());
        r.register("sluice_ops_in_flight", "Operations sent on this connection and not yet acknowledged", self.ops_in_flight.clone());
        r.register("sluice_rescans", "Tree comparisons with the receiver after the first", self.rescans.clone());
        r.register("sluice_ops_diverged", "Operations the standby could not apply to its copy, whose paths were then repaired", self.ops_diverged.clone());
        r.register("sluice_repairs", "Paths of the standby compared and repaired without comparing the whole tree", self.repairs.clone());
        r.register("sluice_repairs_abandoned", "Paths still differing after repeated repairs, left to the verifier", self.repairs_abandoned.clone());
        r.register("sluice_crosscheck_misses", "Changes fanotify reported that capture did not; each path was repaired", self.crosscheck_misses.clone());
        r.register("sluice_crosscheck_overflows", "Times fanotify's queue overflowed and changes went unchecked", self.crosscheck_overflows.clone());
        r.register("sluice_verify_bytes", "File content compared by the verifier, on both sides", self.verify_bytes.clone());
        r.register("sluice_verify_mismatches", "Differences between the standby and the master found by the verifier (each means capture missed a change)", self.verify_mismatches.clone());
        r.register("sluice_verify_passes", "Complete verification passes over the tree", self.verify_passes.clone());
        r.register("sluice_verify_last_pass_timestamp_seconds", "When the last complete verification pass ended (Unix time)", self.verify_last_pass.clone());
        r.register("sluice_internal_errors", "Events the agent failed to process (a bug); each is followed by a comparison of the whole tree", self.internal_errors.clone());
        r.register("sluice_tree_compares", "Comparisons of the whole tree with the standby (the first included)", self.tree_compares.clone());
        r.register("sluice_files_verified", "Files compared block by block after a restart because they changed after the last durable state", self.files_verified.clone());
        r.register("sluice_ops_resent", "Operations sent again on a new connection because the standby did not hold them durably", self.ops_resent.clone());
        r.register("sluice_backlog_ops", "Operations waiting to be sent", self.backlog_ops.clone());
        r.register("sluice_backlog_bytes", "File content held in memory by operations waiting to be sent", self.backlog_bytes.clone());
        r.register("sluice_backlog_overflows", "Times the backlog exceeded its operation limit and was replaced by a tree comparison", self.backlog_overflows.clone());
        r.register("sluice_journal_bytes_written", "Bytes written to the agent's durable state", self.journal_bytes_written.clone());
        r.register("sluice_journal_write_failures", "Writes or fdatasyncs of the agent's durable state that failed (a restart may then compare the whole tree)", self.journal_write_failures.clone());
        r.register("sluice_path_mtu", "Largest UDP payload the path to the receiver carries, as QUIC discovered it", self.path_mtu.clone());
        r.register("sluice_connected", "1 while connected to the receiver (to every standby)", self.connected.clone());
        r.register("sluice_initial_sync_complete", "1 once the standby matched the tree in this connection (every standby)", self.initial_sync_complete.clone());
        r.register("sluice_fenced", "1 while the standby refuses this agent because it was promoted (or holds an unrelated generation)", self.fenced.clone());
        r.register("sluice_capture_mode", "How changes are captured (tp_btf: BTF raw syscall tracepoints)", self.capture_mode.clone());
        let s = &self.standby;
        r.register("sluice_standby_connected", "1 while connected to this standby", s.connected.clone());
        r.register("sluice_standby_initial_sync_complete", "1 once this standby matched the tree in its connection and holds everything sent", s.initial_sync_complete.clone());
        r.register("sluice_standby_lag_seconds", "Age of the oldest captured change this standby has not applied", s.lag_seconds.clone());
        r.register("sluice_standby_lag_bytes", "File bytes captured and not yet applied by this standby", s.lag_bytes.clone());
        r.register("sluice_standby_applied_seq", "The last operation this standby applied", s.applied_seq.clone());
        r.register("sluice_standby_durable_seq", "The last operation this standby holds on disk", s.durable_seq.clone());
        r.register("sluice_standby_payload_bytes_sent", "File content bytes sent to this standby", s.payload_bytes_sent.clone());
        r.register("sluice_standby_wire_bytes_sent", "UDP payload bytes sent to this standby (QUIC)", s.wire_bytes_sent.clone());
        r.register("sluice_standby_backlog_ops", "Operations waiting to be sent to this standby", s.backlog_ops.clone());
        r.register("sluice_standby_backlog_bytes", "File content held in memory for this standby", s.backlog_bytes.clone());
        r.register("sluice_standby_ahead", "1 while what this standby lacks is kept as changed ranges, read again when it can take them, instead of as content in memory", s.ahead.clone());
        r.register("sluice_standby_tree_compares", "Comparisons of the whole tree with this standby", s.tree_compares.clone());
        r
    }
}
