//! What a bench run measured, as saved to `results.json` and rendered in the report.

use serde::Serialize;

use super::replicator::Kind;

/// One replicator on one scenario case.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub scenario: &'static str,
    pub case: String,
    pub replicator: Kind,
    /// Seconds from the last write (S4: from start) until the standby matched;
    /// `None` when it did not within `timeout_s`.
    pub converged_s: Option<f64>,
    pub timeout_s: f64,
    /// Whether the full tree comparison passed once converged.
    pub identical: Option<bool>,
    /// Bytes the workload wrote on the master (S3/S4: bytes of data moved/synced).
    pub changed_bytes: u64,
    /// Bytes sent on the replicator's private loopback (headers included).
    pub lo_bytes: u64,
    /// The agent's own `sluice_wire_bytes_sent_total` delta (sluice only).
    pub agent_wire_bytes: Option<f64>,
    /// Bytes written to the standby's block device.
    pub standby_written_bytes: u64,
    pub master_cpu_s: f64,
    pub standby_cpu_s: f64,
    pub lag: Option<Lag>,
    pub error: Option<String>,
}

/// S1 replication lag from marker writes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Lag {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub seen: usize,
    pub total: usize,
    /// (seconds since the workload started when the marker was written, lag in ms).
    pub points: Vec<(f64, f64)>,
    /// True when the figures are one full rsync pass rather than marker lags.
    pub periodic_pass: bool,
}

impl Lag {
    pub fn from_points(points: Vec<(f64, f64)>, total: usize) -> Lag {
        let mut lags: Vec<f64> = points.iter().map(|p| p.1).collect();
        lags.sort_by(f64::total_cmp);
        let pct = |q: f64| {
            if lags.is_empty() {
                f64::NAN
            } else {
                lags[((lags.len() - 1) as f64 * q).round() as usize]
            }
        };
        Lag {
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
            max_ms: lags.last().copied().unwrap_or(f64::NAN),
            seen: lags.len(),
            total,
            points,
            periodic_pass: false,
        }
    }
}

/// S5: fio random-write throughput in MiB/s.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Overhead {
    pub runtime_s: u64,
    pub watched_without_agent: Vec<f64>,
    pub watched_with_agent: f64,
    pub other_without_agent: Vec<f64>,
    pub other_with_agent: f64,
    pub error: Option<String>,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

impl Overhead {
    /// Throughput lost with the agent attached, in % of the mean without it.
    pub fn watched_pct(&self) -> f64 {
        100.0 * (1.0 - self.watched_with_agent / mean(&self.watched_without_agent))
    }

    pub fn other_pct(&self) -> f64 {
        100.0 * (1.0 - self.other_with_agent / mean(&self.other_without_agent))
    }

    /// Spread between the baseline runs, in % of their mean: overhead figures
    /// smaller than this are noise.
    pub fn noise_pct(&self) -> f64 {
        let spread = |v: &[f64]| {
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
            100.0 * (hi - lo) / mean(v)
        };
        spread(&self.watched_without_agent).max(spread(&self.other_without_agent))
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub date: String,
    pub quick: bool,
    /// The scenarios asked for (`--scenarios`); empty means all.
    pub scenarios: Vec<String>,
    pub machine: Vec<(String, String)>,
    pub versions: Vec<(String, String)>,
    pub sizes: Vec<(String, String)>,
    pub rows: Vec<Row>,
    pub overhead: Option<Overhead>,
    pub wall_s: f64,
}

#[cfg(test)]
mod tests {
    use super::Lag;

    #[test]
    fn lag_percentiles_are_over_the_markers_seen() {
        let points: Vec<(f64, f64)> = (1..=100).map(|i| (i as f64 / 10.0, i as f64)).collect();
        let lag = Lag::from_points(points, 120);
        assert_eq!((lag.p50_ms, lag.p99_ms, lag.max_ms), (51.0, 99.0, 100.0));
        assert_eq!((lag.seen, lag.total), (100, 120));
    }
}
