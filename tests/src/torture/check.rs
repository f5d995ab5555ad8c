//! Deciding whether a run passed: the agent went idle (else it stalled), the trees
//! became identical (else they diverged), the standby kept the master's holes, no
//! daemon panicked or exited, and the receiver refused nothing.

use std::collections::BTreeSet;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use walkdir::WalkDir;

use crate::{CompareOptions, Metrics, Pair, TreeDiff, compare_trees_with, run};

/// Per file, the standby may allocate this much more than the master (by default)
/// before it counts as holes filled: allocator and extent-tree differences stay
/// well below it, a filled hole of more than one 64 KiB block does not.
pub const DEFAULT_BLOCK_SLACK: u64 = 64 * 1024;

/// Refusal log lines printed in a report.
const REFUSALS_SHOWN: usize = 12;

/// Something that makes the run fail.
#[derive(Debug)]
pub enum Finding {
    /// The agent never reported an idle, connected state.
    Stall { waited: Duration, metrics: String },
    /// The trees still differed after the agent went idle and the grace period.
    Divergence(TreeDiff),
    /// Files the standby allocates more blocks for than the master.
    Holes(BlockReport),
    /// A daemon wrote "panicked" to its log.
    Panic { daemon: &'static str, lines: Vec<String> },
    /// A daemon exited while it should have been running.
    Exited { daemon: &'static str, status: String },
    /// The receiver refused operations (`sluice_ops_refused_total`).
    Refused { count: f64, lines: Vec<String> },
    /// A worker process failed or had to be killed; its log is still used.
    Worker { worker: usize, status: String },
    /// The run was stopped by a signal before its checks were complete.
    Interrupted,
}

impl Finding {
    /// Labels from the most to the least severe: a panic or an exit explains a
    /// divergence, not the other way round.
    pub const SEVERITY: [&'static str; 8] = [
        "panic",
        "daemon exited",
        "stalled",
        "operation refused",
        "diverged",
        "holes filled",
        "worker failed",
        "interrupted",
    ];

    pub fn label(&self) -> &'static str {
        match self {
            Finding::Stall { .. } => "stalled",
            Finding::Divergence(_) => "diverged",
            Finding::Holes(_) => "holes filled",
            Finding::Panic { .. } => "panic",
            Finding::Exited { .. } => "daemon exited",
            Finding::Refused { .. } => "operation refused",
            Finding::Worker { .. } => "worker failed",
            Finding::Interrupted => "interrupted",
        }
    }

    /// Paths (relative to the master filesystem) the finding is about, for the
    /// op-log excerpt.
    pub fn paths(&self) -> BTreeSet<String> {
        match self {
            Finding::Divergence(diff) => diff.differences().iter().map(|d| tree_rel(d.path())).collect(),
            Finding::Holes(report) => report.offenders.iter().map(|o| tree_rel(&o.path)).collect(),
            Finding::Refused { lines, .. } => lines.iter().filter_map(|l| field(l, "path=")).map(|p| format!("tree/{p}")).collect(),
            _ => BTreeSet::new(),
        }
    }
}

fn tree_rel(path: &Path) -> String {
    format!("tree/{}", path.display())
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Stall { waited, metrics } => {
                write!(f, "STALLED: the agent was not idle after {waited:?}; agent metrics:\n{metrics}")
            }
            Finding::Divergence(diff) => write!(f, "DIVERGED: {diff}"),
            Finding::Holes(report) => write!(f, "HOLES FILLED: {report}"),
            Finding::Panic { daemon, lines } => write!(f, "PANIC in the {daemon}:\n  {}", lines.join("\n  ")),
            Finding::Exited { daemon, status } => write!(f, "EXITED: the {daemon} exited ({status})"),
            Finding::Refused { count, lines } => {
                write!(f, "REFUSED: sluice_ops_refused_total = {count}")?;
                // A refusal loop logs thousands of identical lines.
                for line in lines.iter().take(REFUSALS_SHOWN) {
                    write!(f, "\n  {line}")?;
                }
                if lines.len() > REFUSALS_SHOWN {
                    write!(f, "\n  ... {} more refusal lines in receiver.log", lines.len() - REFUSALS_SHOWN)?;
                }
                Ok(())
            }
            Finding::Worker { worker, status } => write!(f, "WORKER {worker} failed: {status}"),
            Finding::Interrupted => write!(f, "INTERRUPTED: stopped by a signal; the checks are incomplete"),
        }
    }
}

/// `st_blocks` of the master's and the standby's regular files.
#[derive(Debug, Default)]
pub struct BlockReport {
    /// Totals in bytes (`st_blocks * 512`) over the master's files and their
    /// standby counterparts.
    pub master_bytes: u64,
    pub standby_bytes: u64,
    /// The allowance per file, in bytes.
    pub slack: u64,
    pub offenders: Vec<BlockOffender>,
}

#[derive(Debug)]
pub struct BlockOffender {
    pub path: PathBuf,
    pub size: u64,
    pub master_bytes: u64,
    pub standby_bytes: u64,
}

impl fmt::Display for BlockReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "allocated: master {} bytes, standby {} bytes; {} file(s) over the master + {} KiB",
            self.master_bytes,
            self.standby_bytes,
            self.offenders.len(),
            self.slack / 1024
        )?;
        for o in self.offenders.iter().take(20) {
            write!(
                f,
                "\n  {}: size {}, allocated {} on the master, {} on the standby",
                o.path.display(),
                o.size,
                o.master_bytes,
                o.standby_bytes
            )?;
        }
        Ok(())
    }
}

/// Compares allocation file by file (hard links counted once per path, which is
/// the same on both sides when the trees match). Only files with the same size and
/// mtime on both sides can be offenders: any other file is a divergence already,
/// and its standby copy may simply be older.
pub fn block_usage(master: &Path, standby: &Path, slack: u64) -> BlockReport {
    let mut report = BlockReport { slack, ..BlockReport::default() };
    for entry in WalkDir::new(master).min_depth(1).into_iter().flatten() {
        let Ok(m) = entry.metadata() else { continue };
        if !m.is_file() {
            continue;
        }
        let rel = entry.path().strip_prefix(master).unwrap_or(entry.path()).to_owned();
        let Ok(s) = std::fs::symlink_metadata(standby.join(&rel)) else { continue };
        let (master_bytes, standby_bytes) = (m.blocks() * 512, s.blocks() * 512);
        report.master_bytes += master_bytes;
        report.standby_bytes += standby_bytes;
        let same_version = m.len() == s.len() && (m.mtime(), m.mtime_nsec()) == (s.mtime(), s.mtime_nsec());
        if same_version && standby_bytes > master_bytes + slack {
            // Blocks past the end hold no data: XFS's speculative preallocation
            // outlives `prealloc -s` on files that were ever fallocated, and XFS
            // gives it back on its own. What counts is what lies within the size.
            let within = |path: &Path| allocated_within_size(path, m.len());
            if let (Some(master_within), Some(standby_within)) = (within(entry.path()), within(&standby.join(&rel)))
                && standby_within <= master_within + slack
            {
                continue;
            }
            report.offenders.push(BlockOffender { path: rel, size: m.len(), master_bytes, standby_bytes });
        }
    }
    report
}

/// Bytes of the extents of `path` (written or not) that lie before `size`
/// rounded up to a page, from FIEMAP; `None` where FIEMAP is not answered.
fn allocated_within_size(path: &Path, size: u64) -> Option<u64> {
    use std::os::fd::AsRawFd;
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const FIEMAP_FLAG_SYNC: u32 = 1;
    const FIEMAP_EXTENT_LAST: u32 = 1;
    const BATCH: usize = 256;
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Extent {
        logical: u64,
        physical: u64,
        length: u64,
        reserved64: [u64; 2],
        flags: u32,
        reserved: [u32; 3],
    }
    #[repr(C)]
    struct Request {
        start: u64,
        length: u64,
        flags: u32,
        mapped_extents: u32,
        extent_count: u32,
        reserved: u32,
        extents: [Extent; BATCH],
    }
    let end = size.div_ceil(4096) * 4096;
    let file = std::fs::File::open(path).ok()?;
    let mut total = 0;
    let mut start = 0;
    while start < end {
        let mut request = Request { start, length: end - start, flags: FIEMAP_FLAG_SYNC, mapped_extents: 0, extent_count: BATCH as u32, reserved: 0, extents: [Extent::default(); BATCH] };
        // SAFETY: `request` is a `struct fiemap` with room for BATCH extents, as its extent_count says.
        if unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, &mut request) } != 0 {
            return None;
        }
        let extents = &request.extents[..request.mapped_extents as usize];
        for extent in extents {
            let from = extent.logical.max(start);
            let to = (extent.logical + extent.length).min(end);
            total += to.saturating_sub(from);
        }
        match extents.last() {
            Some(last) if last.flags & FIEMAP_EXTENT_LAST == 0 && extents.len() == BATCH => start = last.logical + last.length,
            _ => break,
        }
    }
    Some(total)
}

/// Makes allocation comparable: flushes both filesystems and, on XFS, drops the
/// speculative preallocation past EOF that either side may still hold.
pub fn settle_allocation(fs: &str, mounts: &[&Path]) {
    for mount in mounts {
        let _ = run(&format!("sync -f '{}'", mount.display()));
        if fs == "xfs" {
            let _ = run(&format!("xfs_spaceman -c 'prealloc -s' '{}'", mount.display()));
        }
    }
}

/// The agent series worth showing when something goes wrong.
pub const AGENT_SERIES: [&str; 14] = [
    "sluice_connected",
    "sluice_lag_bytes",
    "sluice_lag_seconds",
    "sluice_ops_in_flight",
    "sluice_backlog_ops",
    "sluice_backlog_bytes",
    "sluice_events_captured_total",
    "sluice_events_dropped_total",
    "sluice_ops_sent_total",
    "sluice_ops_acked_total",
    "sluice_rescans_total",
    "sluice_tree_compares_total",
    "sluice_backlog_overflows_total",
    "sluice_verify_mismatches_total",
];

pub fn describe_metrics(metrics: &Metrics, series: &[&str]) -> String {
    series
        .iter()
        .filter_map(|name| metrics.try_get(name).map(|v| format!("  {name} {v}")))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_idle(m: &Metrics) -> bool {
    m.get("sluice_connected") == 1.0
        && m.get("sluice_lag_bytes") == 0.0
        && m.get("sluice_ops_in_flight") == 0.0
        && m.get("sluice_backlog_ops") == 0.0
}

/// A file the controller writes into the tree once the workers have stopped. The
/// agent's metrics alone cannot show that it is alive: a capture loop blocked in a
/// system call leaves them frozen at "idle". The probe reaching the standby can.
pub struct Probe {
    pub rel: PathBuf,
    pub contents: Vec<u8>,
}

impl Probe {
    /// Writes the probe (named outside the workers' name pools) into `tree`.
    pub fn write(tree: &Path, nonce: u64) -> std::io::Result<Probe> {
        let probe = Probe { rel: PathBuf::from("torture-probe"), contents: format!("probe {nonce}\n").into_bytes() };
        std::fs::write(tree.join(&probe.rel), &probe.contents)?;
        Ok(probe)
    }

    fn arrived(&self, standby: &Path) -> bool {
        std::fs::read(standby.join(&self.rel)).is_ok_and(|c| c == self.contents)
    }
}

/// Waits until the probe is on the standby and the agent is connected with nothing
/// in flight on three scrapes in a row (one idle scrape can fall between a write
/// and its capture). Returns the metrics then, or a [`Finding::Stall`] /
/// [`Finding::Exited`].
pub fn wait_idle(pair: &mut Pair, probe: &Probe, timeout: Duration) -> Result<Metrics, Finding> {
    let start = Instant::now();
    let mut streak = 0;
    let standby = pair.standby().to_owned();
    loop {
        if let Ok(Some(status)) = pair.agent().try_wait() {
            return Err(Finding::Exited { daemon: "agent", status: status.to_string() });
        }
        if super::sys::interrupted() {
            return Err(Finding::Interrupted);
        }
        let arrived = probe.arrived(&standby);
        match pair.agent_metrics() {
            Ok(m) if arrived && is_idle(&m) => {
                streak += 1;
                if streak >= 3 {
                    return Ok(m);
                }
            }
            Ok(m) if start.elapsed() >= timeout => {
                let mut metrics = describe_metrics(&m, &AGENT_SERIES);
                if !arrived {
                    metrics.push_str(&format!("\n  (the probe file {} never reached the standby)", probe.rel.display()));
                }
                return Err(Finding::Stall { waited: timeout, metrics });
            }
            Err(e) if start.elapsed() >= timeout => {
                return Err(Finding::Stall { waited: timeout, metrics: format!("  metrics unavailable: {e:#}") });
            }
            _ => streak = 0,
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Compares the trees until they match or `grace` runs out (a repair may still be
/// under way when the agent first looks idle). Returns how long it took to match.
pub fn wait_identical(master: &Path, standby: &Path, grace: Duration) -> Result<Duration, TreeDiff> {
    let start = Instant::now();
    let options = CompareOptions::default();
    let mut pause = Duration::from_millis(200);
    loop {
        match compare_trees_with(master, standby, &options) {
            Ok(()) => return Ok(start.elapsed()),
            Err(diff) if start.elapsed() >= grace || super::sys::interrupted() => return Err(diff),
            Err(_) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Lines saying a daemon panicked, with a little context after each.
pub fn panics(log: &str) -> Vec<String> {
    let lines: Vec<&str> = log.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.contains("panicked") {
            found.extend(lines[i..(i + 3).min(lines.len())].iter().map(|l| l.to_string()));
        }
    }
    found
}

/// The receiver's log lines about refused operations.
pub fn refusals(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("operation refused") || l.contains("refusing:"))
        .map(strip_ansi)
        .collect()
}

/// `value` of `name value` in a tracing line (`path=tree/x` ends at a space).
fn field(line: &str, name: &str) -> Option<String> {
    let start = line.find(name)? + name.len();
    let value: String = line[start..].chars().take_while(|c| !c.is_whitespace()).collect();
    let value = value.trim_matches('"').to_owned();
    (!value.is_empty()).then_some(value)
}

pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_paths_are_picked_out_of_log_lines() {
        let log = "2026-12-01T10:00:00Z ERROR sluice_receiver::session: operation refused seq=12 path=shared0/d1/f3 error=shared0/d1/f3: does not exist\n\
                   other line\n\
                   \u{1b}[31mERROR\u{1b}[0m refusing: fallocate: Invalid argument; closing the connection\n";
        let lines = refusals(log);
        assert_eq!(lines.len(), 2);
        assert!(lines[1].starts_with("ERROR refusing"), "{}", lines[1]);
        let finding = Finding::Refused { count: 2.0, lines };
        assert_eq!(finding.paths(), ["tree/shared0/d1/f3".to_owned()].into());
    }

    #[test]
    fn panics_come_with_context() {
        let log = "a\nthread 'x' panicked at agent/src/engine/mod.rs:10:5:\nrange start is greater than range end\nnote\nz\n";
        let found = panics(log);
        assert_eq!(found.len(), 3);
        assert!(found[1].contains("range start"));
    }
}
