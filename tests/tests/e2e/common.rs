//! Waiting for replication to go idle and reading what it cost.

use sluice_tests::{Metrics, Pair, run, wait_until, wait_until_identical};
use std::path::Path;
use std::time::Duration;

/// Waits until master and standby are identical and the agent has nothing in
/// flight; returns the agent's metrics at that point.
pub fn converge(pair: &Pair, timeout: Duration) -> Metrics {
    if let Err(e) = wait_until_identical(pair.master(), pair.standby(), timeout) {
        panic!(
            "{e:#}\n--- agent ---\n{}\n--- agent log ---\n{}\n--- receiver log ---\n{}",
            agent_state(pair),
            tail(&pair.agent_log()),
            tail(&pair.receiver_log())
        );
    }
    idle(pair, timeout)
}

/// Waits until the agent has no captured change left unacknowledged.
pub fn idle(pair: &Pair, timeout: Duration) -> Metrics {
    wait_until("the agent to have nothing in flight", timeout, || {
        let m = pair.agent_metrics()?;
        Ok(m.get("sluice_lag_bytes") == 0.0 && m.get("sluice_ops_in_flight") == 0.0 && m.get("sluice_connected") == 1.0)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n--- agent log ---\n{}", tail(&pair.agent_log())));
    // Wire counters are sampled every 100 ms.
    std::thread::sleep(Duration::from_millis(300));
    pair.agent_metrics().expect("agent metrics")
}

/// The agent's replication counters, for failure messages.
pub fn agent_state(pair: &Pair) -> String {
    let Ok(m) = pair.agent_metrics() else { return "metrics unavailable".into() };
    let names = [
        "sluice_connected",
        "sluice_events_captured_total",
        "sluice_ops_sent_total",
        "sluice_ops_acked_total",
        "sluice_ops_in_flight",
        "sluice_backlog_ops",
        "sluice_lag_bytes",
        "sluice_lag_seconds",
        "sluice_tree_compares_total",
    ];
    names.iter().map(|n| format!("{n} {}", m.get(n))).collect::<Vec<_>>().join("\n")
}

/// The last lines of a log, for failure messages.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Runs a shell script with `dir` as its working directory (as a separate process,
/// like any program writing to the master).
pub fn sh(dir: &Path, script: &str) {
    run(&format!("cd {} && {script}", dir.display())).unwrap();
}

/// Thaws a frozen filesystem however the test ends.
pub struct Frozen<'a>(pub &'a Path);

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let _ = run(&format!("fsfreeze -u {}", self.0.display()));
    }
}
