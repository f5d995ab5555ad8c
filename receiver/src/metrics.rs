//! The receiver's Prometheus metrics. They are served by
//! [`sluice_net::serve_metrics`] when `[metrics] listen` is set.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Every metric the receiver exports, registered in [`Metrics::registry`].
/// The handles are cheap clones sharing their value with the registry.
pub struct Metrics {
    pub registry: Arc<Registry>,
    /// Operations applied.
    pub ops_applied: Counter,
    /// File content bytes written by applied operations.
    pub bytes_applied: Counter,
    /// Operations or frames refused (each one ends the connection).
    pub ops_refused: Counter,
    /// Operations and manifest entries skipped because the standby's copy did not
    /// fit them, reported to the agent for repair.
    pub ops_diverged: Counter,
    /// Connections refused because the peer's certificate was not the pinned one.
    pub peers_refused: Counter,
    /// Frame bytes read from the agent.
    pub wire_bytes_received: Counter,
    /// 1 while an agent is connected.
    pub connected: Gauge,
    /// Now minus the capture time of the last applied operation. Both clocks are
    /// wall clocks on different machines, so skew between master and standby
    /// shows up here (and may even make it negative); keep them NTP-synced.
    pub lag_seconds: Gauge<f64, AtomicU64>,
    /// Sequence number of the last applied operation.
    pub last_applied_seq: Gauge,
    /// Capture-to-apply time of each operation (subject to the same clock skew).
    pub apply_latency: Histogram,
    /// Master capture time (Unix seconds) of the newest fsync barrier made durable;
    /// the age of the last durable epoch is `time() - this`.
    pub durable_epoch: Gauge<f64, AtomicU64>,
    /// Bytes of file content moved or copied into the rollback directory.
    pub rollback_bytes_kept: Counter,
    /// Entries kept in the rollback directory.
    pub rollback_entries_kept: Counter,
    /// Comparisons refused because they would delete most of the standby.
    pub mass_deletes_refused: Counter,
    /// Such comparisons an operator allowed.
    pub mass_deletes_allowed: Counter,
    /// Incoming connections refused before their handshake (too many at once).
    pub handshakes_refused: Counter,
    /// 1 once the tree is a primary (promoted): no agent streams into it.
    pub role_primary: Gauge,
    /// Agents refused because their generation does not lead to this tree's
    /// (an old master, after a promotion).
    pub agents_fenced: Counter,
    /// Split brains found (both trees written after a promotion) and refused.
    pub split_brains: Counter,
    /// Paths changed on the standby by someone other than the receiver.
    pub local_changes: Counter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let metrics = Metrics {
            registry: Arc::new(Registry::default()),
            ops_applied: Counter::default(),
            bytes_applied: Counter::default(),
            ops_refused: Counter::default(),
            ops_diverged: Counter::default(),
            peers_refused: Counter::default(),
            wire_bytes_received: Counter::default(),
            connected: Gauge::default(),
            lag_seconds: Gauge::default(),
            last_applied_seq: Gauge::default(),
            // 100 µs .. ~1.6 s, then +Inf.
            apply_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 15)),
            durable_epoch: Gauge::default(),
            rollback_bytes_kept: Counter::default(),
            rollback_entries_kept: Counter::default(),
            mass_deletes_refused: Counter::default(),
            mass_deletes_allowed: Counter::default(),
            handshakes_refused: Counter::default(),
            role_primary: Gauge::default(),
            agents_fenced: Counter::default(),
            split_brains: Counter::default(),
            local_changes: Counter::default(),
        };
        registry.register(
            "sluice_local_changes",
            "Paths changed on the standby by someone other than the receiver, put back as the master has them",
            metrics.local_changes.clone(),
        );
        registry.register(
            "sluice_split_brains",
            "Connections refused because both this tree and the agent's were written after a promotion",
            metrics.split_brains.clone(),
        );
        registry.register(
            "sluice_role_primary",
            "1 once this tree was promoted to a primary; 0 while it is a standby",
            metrics.role_primary.clone(),
        );
        registry.register(
            "sluice_agents_fenced",
            "Agents refused because this tree was promoted out of their generation (or holds an unrelated one)",
            metrics.agents_fenced.clone(),
        );
        registry.register(
            "sluice_mass_deletes_refused",
            "Comparisons refused because they would delete more than [safety] max_delete_fraction of the standby",
            metrics.mass_deletes_refused.clone(),
        );
        registry.register(
            "sluice_mass_deletes_allowed",
            "Comparisons deleting most of the standby that an operator allowed",
            metrics.mass_deletes_allowed.clone(),
        );
        registry.register(
            "sluice_handshakes_refused",
            "Incoming connections refused before their handshake because too many were in progress",
            metrics.handshakes_refused.clone(),
        );
        registry.register(
            "sluice_durable_epoch_timestamp_seconds",
            "Master capture time of the newest fsync barrier made durable on the standby",
            metrics.durable_epoch.clone(),
        );
        // prometheus-client appends `_total` to counters.
        registry.register(
            "sluice_ops_applied",
            "Operations applied",
            metrics.ops_applied.clone(),
        );
        registry.register(
            "sluice_bytes_applied",
            "File bytes written",
            metrics.bytes_applied.clone(),
        );
        registry.register(
            "sluice_ops_refused",
            "Operations or frames refused",
            metrics.ops_refused.clone(),
        );
        registry.register(
            "sluice_ops_diverged",
            "Operations and manifest entries that did not fit the standby's copy, skipped and reported to the agent for repair",
            metrics.ops_diverged.clone(),
        );
        registry.register(
            "sluice_peers_refused",
            "Peers refused for an unpinned certificate",
            metrics.peers_refused.clone(),
        );
        registry.register(
            "sluice_wire_bytes_received",
            "Frame bytes received",
            metrics.wire_bytes_received.clone(),
        );
        registry.register(
            "sluice_connected",
            "1 while an agent is connected",
            metrics.connected.clone(),
        );
        registry.register(
            "sluice_lag_seconds",
            "Now minus capture time of the last applied op",
            metrics.lag_seconds.clone(),
        );
        registry.register(
            "sluice_last_applied_seq",
            "Sequence number of the last applied op",
            metrics.last_applied_seq.clone(),
        );
        registry.register(
            "sluice_apply_latency_seconds",
            "Capture-to-apply time",
            metrics.apply_latency.clone(),
        );
        registry.register(
            "sluice_rollback_bytes_kept",
            "File bytes moved or copied into the rollback directory",
            metrics.rollback_bytes_kept.clone(),
        );
        registry.register(
            "sluice_rollback_entries_kept",
            "Entries kept in the rollback directory",
            metrics.rollback_entries_kept.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            ..metrics
        }
    }

    /// Records one applied operation.
    /// Records that the barrier captured at `captured_unix_ns` is durable.
    pub fn durable_epoch(&self, captured_unix_ns: u64) {
        self.durable_epoch.set(captured_unix_ns as f64 / 1e9);
    }

    pub fn applied(&self, seq: u64, captured_unix_ns: u64, bytes: u64) {
        self.ops_applied.inc();
        self.bytes_applied.inc_by(bytes);
        self.last_applied_seq
            .set(i64::try_from(seq).unwrap_or(i64::MAX));
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        let lag = (now_ns - i128::from(captured_unix_ns)) as f64 / 1e9;
        self.lag_seconds.set(lag);
        self.apply_latency.observe(lag.max(0.0));
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
