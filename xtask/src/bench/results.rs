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
    /// S6: seconds the workload spent writing, so the time from its first byte is
    /// this plus `converged_s`.
    pub write_s: Option<f64>,
    pub error: Option<String>,
}

impl Row {
    /// S6's figure: from the first byte written until the standby held the file.
    pub fn since_first_byte_s(&self) -> Option<f64> {
        Some(self.write_s? + self.converged_s?)
    }
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
    /// Random writes per second the writer reached (it aims at the case's rate).
    pub writes_per_s: f64,
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
            writes_per_s: 0.0,
        }
    }
}

/// S5: nanoseconds per syscall, timed by `sluice-syscost` in the calling thread,
/// without and with the agent attached. `None` where a run failed.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Costs {
    pub getppid: Option<f64>,
    pub pwrite_unrelated: Option<f64>,
    pub pwrite_watched: Option<f64>,
    pub fsync_unrelated: Option<f64>,
    pub fsync_watched: Option<f64>,
}

/// Which figure of [`Costs`], its label and the most the agent may add to it.
pub struct Call {
    pub label: &'static str,
    pub get: fn(&Costs) -> Option<f64>,
    pub goal_ns: Option<f64>,
}

pub const CALLS: [Call; 5] = [
    Call {
        label: "getppid",
        get: |c| c.getppid,
        goal_ns: Some(20.0),
    },
    Call {
        label: "4 KiB pwrite, unrelated fs",
        get: |c| c.pwrite_unrelated,
        goal_ns: Some(50.0),
    },
    Call {
        label: "4 KiB pwrite, watched fs",
        get: |c| c.pwrite_watched,
        goal_ns: Some(300.0),
    },
    Call {
        label: "fsync after a 4 KiB pwrite, unrelated fs",
        get: |c| c.fsync_unrelated,
        goal_ns: None,
    },
    Call {
        label: "fsync after a 4 KiB pwrite, watched fs",
        get: |c| c.fsync_watched,
        goal_ns: None,
    },
];

/// The agent's work for one round's writes on the watched filesystem.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AgentWork {
    /// Bytes the writes changed (every 4 KiB write counted, repeats included).
    pub changed_bytes: u64,
    /// The agent's utime+stime from the first write until the standby's copy matched.
    pub cpu_s: f64,
    /// The receiver's, over the same span.
    pub receiver_cpu_s: f64,
    /// From the last write until the standby's copy matched; `None` if it did not
    /// within the limit.
    pub converged_s: Option<f64>,
}

impl AgentWork {
    pub fn cpu_ms_per_mib(&self) -> f64 {
        self.cpu_s * 1e3 / (self.changed_bytes as f64 / (1 << 20) as f64).max(1e-9)
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CostRound {
    pub without: Costs,
    pub with: Costs,
    pub agent: Option<AgentWork>,
}

/// One BPF program of the agent, from `/proc/<pid>/fdinfo` during the watched
/// `pwrite` loop with `kernel.bpf_stats_enabled=1`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BpfProgram {
    pub id: u32,
    /// From `BPF_OBJ_GET_INFO_BY_FD`; `None` if the kernel would not say.
    pub name: Option<String>,
    pub tag: String,
    pub prog_type: String,
    /// Runs and run time during the loop (deltas).
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

impl BpfProgram {
    pub fn ns_per_run(&self) -> Option<f64> {
        (self.run_cnt > 0).then(|| self.run_time_ns as f64 / self.run_cnt as f64)
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct SyscallCosts {
    pub getppid_iterations: u64,
    pub pwrite_iterations: u64,
    pub fsync_iterations: u64,
    pub rounds: Vec<CostRound>,
    /// The agent's programs over the BPF-stats pass, busiest first.
    pub bpf_programs: Vec<BpfProgram>,
    /// `pwrite` iterations of the BPF-stats pass and their ns per call then
    /// (stats on, so not comparable with the rounds).
    pub bpf_pass_pwrites: u64,
    pub bpf_pass_pwrite_ns: Option<f64>,
    pub bpf_error: Option<String>,
    /// Conditions that make the figures less trustworthy (other agents running).
    pub notes: Vec<String>,
    pub error: Option<String>,
}

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

impl SyscallCosts {
    /// Median over the rounds of one figure, without and with the agent.
    pub fn medians(&self, call: &Call) -> (Option<f64>, Option<f64>) {
        let pick = |with: bool| {
            median(
                self.rounds
                    .iter()
                    .filter_map(|r| (call.get)(if with { &r.with } else { &r.without }))
                    .collect(),
            )
        };
        (pick(false), pick(true))
    }

    /// What the agent adds to one call: the difference of the medians.
    pub fn added(&self, call: &Call) -> Option<f64> {
        match self.medians(call) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        }
    }

    /// The rounds' agent work, median CPU per changed MiB.
    pub fn agent_cpu_ms_per_mib(&self) -> Option<f64> {
        median(
            self.rounds
                .iter()
                .filter_map(|r| r.agent.as_ref())
                .filter(|a| a.converged_s.is_some())
                .map(AgentWork::cpu_ms_per_mib)
                .collect(),
        )
    }
}

/// S7 for sluice: one agent started against an empty standby.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SluiceScale {
    /// From starting the agent until its metrics answered (eBPF attached).
    pub capture_s: Option<f64>,
    /// From starting the agent until it had listed the tree for the comparison
    /// with the standby (its log's "comparing the tree with the standby").
    pub listed_s: Option<f64>,
    /// Entries it listed.
    pub entries: Option<u64>,
    /// From starting the agent until `sluice_initial_sync_complete 1`.
    pub initial_sync_s: Option<f64>,
    pub identical: Option<bool>,
    /// The agent's resident memory when its metrics first answered, and its peak
    /// (`VmHWM`) at the end of the initial sync (or at the limit).
    pub rss_start_bytes: u64,
    pub vm_hwm_bytes: u64,
    pub master_cpu_s: f64,
    pub standby_cpu_s: f64,
    /// After the initial sync: the agent stopped and started again on the
    /// unchanged tree; time until a new file reached the standby, the walk it
    /// logged, and its peak memory.
    pub restart_live_s: Option<f64>,
    pub restart_walk_s: Option<f64>,
    pub restart_vm_hwm_bytes: Option<u64>,
    /// When the initial sync did not finish: files on the standby then.
    pub standby_files_reached: Option<u64>,
    /// The agent's progress and backlog metrics at the end (or at the limit), and
    /// its last "initial sync in progress" count.
    pub metrics_at_end: Vec<(String, f64)>,
    pub files_compared_logged: Option<u64>,
    pub error: Option<String>,
}

/// S7 for rsync: `rsync -a` to an empty directory, then again with nothing changed.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RsyncScale {
    pub copy_s: Option<f64>,
    pub copy_cpu_s: f64,
    pub noop_s: Option<f64>,
    pub noop_cpu_s: f64,
    pub error: Option<String>,
}

/// S7: one tree of many small files.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ScaleRun {
    pub files: usize,
    pub dirs: usize,
    pub file_bytes: u64,
    pub mkfs_options: String,
    pub timeout_s: f64,
    /// Time to write the tree on the master (not measured against anything).
    pub write_s: f64,
    pub sluice: Option<SluiceScale>,
    pub rsync: Option<RsyncScale>,
    pub error: Option<String>,
}

/// S8: one phase of the fan-out workload for one configuration, measured from
/// its start until every standby matched the master (and the full comparison
/// ran).
#[derive(Clone, Debug, Default, Serialize)]
pub struct FanoutPhase {
    /// Bytes of data the phase replicates (the tree, or the bytes written).
    pub data_bytes: u64,
    /// Per standby: seconds until it matched, `None` if not within the limit.
    pub converged_s: Vec<Option<f64>>,
    /// Per standby: whether the full comparison found it identical.
    pub identical: Vec<Option<bool>>,
    /// utime+stime (children included) of the master side: the agent, or lsyncd
    /// and the rsyncs it started.
    pub master_cpu_s: f64,
    /// The same for every standby's processes together.
    pub standby_cpu_s: f64,
    /// `rchar` of the master side: bytes its read syscalls returned.
    pub read_syscall_bytes: u64,
    /// `read_bytes` of the master side: bytes read from the master's device.
    pub read_device_bytes: u64,
    /// sluice: `sluice_bytes_read_total` (file bytes read to build operations,
    /// once for all standbys), `sluice_payload_bytes_sent_total` and
    /// `sluice_verify_bytes_total`.
    pub agent_bytes_read: Option<f64>,
    /// Content sent to a standby from a read made for another (the agent's metric).
    #[serde(default)]
    pub agent_bytes_shared: Option<f64>,
    pub agent_payload_bytes: Option<f64>,
    pub agent_verify_bytes: Option<f64>,
    /// sluice, per standby: `sluice_standby_wire_bytes_sent_total` and
    /// `sluice_standby_payload_bytes_sent_total`.
    pub standby_wire_bytes: Vec<f64>,
    pub standby_payload_bytes: Vec<f64>,
    /// Bytes on the replicator's loopback, all standbys together.
    pub lo_bytes: u64,
}

impl FanoutPhase {
    /// When the last standby matched; `None` if any did not.
    pub fn all_converged_s(&self) -> Option<f64> {
        self.converged_s
            .iter()
            .try_fold(0.0f64, |max, t| t.map(|t| max.max(t)))
    }
}

/// S8: one replicator feeding `standbys` standbys through both phases.
#[derive(Clone, Debug, Serialize)]
pub struct FanoutRun {
    pub replicator: Kind,
    pub standbys: usize,
    /// The initial sync of the tree to empty standbys.
    pub initial: Option<FanoutPhase>,
    /// The random writes into the tree's files.
    pub writes: Option<FanoutPhase>,
    pub error: Option<String>,
}

/// S8, fan-out: master CPU and reads feeding several standbys against one.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Fanout {
    pub tree_bytes: u64,
    pub files: usize,
    /// Files written to in the second phase, and 4 KiB writes into each.
    pub written_files: usize,
    pub writes_per_file: usize,
    pub timeout_s: f64,
    pub runs: Vec<FanoutRun>,
}

impl Fanout {
    pub fn run(&self, replicator: Kind, standbys: usize) -> Option<&FanoutRun> {
        self.runs
            .iter()
            .find(|r| r.replicator == replicator && r.standbys == standbys)
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
    /// S5, when it ran.
    pub syscall_costs: Option<SyscallCosts>,
    /// S7, one entry per tree size.
    pub scale: Vec<ScaleRun>,
    /// S8, when it ran.
    pub fanout: Option<Fanout>,
    pub wall_s: f64,
}

#[cfg(test)]
mod tests {
    use super::{Lag, median};

    #[test]
    fn medians_skip_missing_runs() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, f64::NAN, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(Vec::new()), None);
    }

    #[test]
    fn lag_percentiles_are_over_the_markers_seen() {
        let points: Vec<(f64, f64)> = (1..=100).map(|i| (i as f64 / 10.0, i as f64)).collect();
        let lag = Lag::from_points(points, 120);
        assert_eq!((lag.p50_ms, lag.p99_ms, lag.max_ms), (51.0, 99.0, 100.0));
        assert_eq!((lag.seen, lag.total), (100, 120));
    }
}
