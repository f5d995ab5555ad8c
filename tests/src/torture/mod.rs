//! The randomized differential exerciser ("torture"): random operations from
//! several processes on a master tree replicated by the real daemons, then a full
//! comparison with the standby. It checks the project's first promise: any event
//! sequence is replicated exactly or detected and repaired, the agent never panics,
//! and a refused operation never stalls replication.
//!
//! # Layout
//! - [`args`]: the command line (`sluice-torture`, `cargo xtask torture`).
//! - [`ops`]: operation classes and every operation as replayable data.
//! - [`generator`]: choosing the next operation against the live tree.
//! - [`exec`]: executing an operation with the real system calls.
//! - [`sys`]: AIO, clone ioctls, ACL encoding, aligned buffers, SIGBUS survival.
//! - [`worker`]: the worker process loop and the run spec it reads.
//! - [`log`]: the per-worker op logs, merging them, and excerpts for a failure.
//! - [`population`]: the deterministic initial tree.
//! - [`check`]: stall, divergence, holes, panics and refusals.
//! - [`seeds`]: the committed seed list CI repeats.
//!
//! This module itself runs one exercise end to end ([`run`]).

pub mod args;
pub mod check;
pub mod exec;
pub mod generator;
pub mod log;
pub mod ops;
pub mod population;
pub mod rng;
pub mod seeds;
pub mod sys;
pub mod worker;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use tempfile::TempDir;

pub use args::TortureArgs;

use self::check::{Finding, describe_metrics};
use self::exec::Executor;
use self::log::{Header, LogWriter, Record, monotonic_ns};
use self::ops::{Class, Via};
use self::worker::Spec;
use crate::{FsKind, LoopFs, Metrics, Pair, PairOptions, run as sh};

/// Operations per run when neither `--ops` nor `--minutes` is given.
const DEFAULT_OPS: u64 = 2000;
/// Excerpt lines printed.
const EXCERPT_PRINTED: usize = 60;
/// Excerpt operations saved (the most recent ones).
const EXCERPT_SAVED: usize = 5000;

/// How an exercise ended.
#[derive(Debug)]
pub struct Outcome {
    pub passed: bool,
    /// What failed (`Finding::label`s), most severe first.
    pub labels: Vec<&'static str>,
    /// The output directory (removed after a pass unless `--keep`).
    pub out: PathBuf,
}

/// Everything printed is also appended to `<out>/report.txt`.
struct Report {
    file: Option<File>,
    quiet: bool,
}

impl Report {
    fn line(&mut self, text: impl AsRef<str>) {
        let text = text.as_ref();
        if !self.quiet || text.starts_with("RESULT:") {
            println!("{text}");
        }
        if let Some(file) = &mut self.file {
            let _ = writeln!(file, "{text}");
        }
    }
}

/// A bind mount of the tree, so workers can reach it through a second mount.
struct BindMount {
    path: PathBuf,
    mounted: bool,
    _dir: TempDir,
}

impl BindMount {
    fn new(source: &Path) -> anyhow::Result<BindMount> {
        let dir = tempfile::Builder::new().prefix("sluice-torture-bind-").tempdir()?;
        let path = dir.path().join("bind");
        fs::create_dir(&path)?;
        sh(&format!("mount --bind '{}' '{}'", source.display(), path.display())).context("cannot bind-mount the tree")?;
        Ok(BindMount { path, mounted: true, _dir: dir })
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        if self.mounted && sh(&format!("umount '{}'", self.path.display())).is_err() {
            let _ = sh(&format!("umount -l '{}'", self.path.display()));
        }
    }
}

/// What one exercise does, decided from the arguments (and, for a replay, from
/// the log's header) before anything is set up.
struct Plan {
    seed: u64,
    workers: usize,
    fs: FsKind,
    classes: Vec<Class>,
    access: Vec<Via>,
    /// Operations over all workers, when bounded by count.
    ops_total: Option<u64>,
    replay: Option<(Header, Vec<Record>)>,
    out: PathBuf,
}

impl Plan {
    fn new(args: &TortureArgs) -> anyhow::Result<Plan> {
        let replay = match &args.replay {
            Some(path) => {
                let (header, records) = log::read_log(path)?;
                let header = header.with_context(|| format!("{} has no header line", path.display()))?;
                Some((header, records))
            }
            None => None,
        };
        // A replay starts from the population its log was made on.
        let (seed, workers, logged_fs) = match &replay {
            Some((header, _)) => (header.seed, header.workers, Some(header.fs.parse::<FsKind>()?)),
            None => (args.seed.unwrap_or_else(clock_seed), args.workers.max(1), None),
        };
        let fs = args.fs.or(logged_fs).unwrap_or_default();
        let classes = args.enabled_classes();
        if classes.is_empty() {
            bail!("--classes and --exclude leave no operation class to run");
        }
        let out = match &args.out {
            Some(out) => out.clone(),
            None => PathBuf::from("/tmp/sluice-torture").join(format!("{}-seed{seed}-{}", fs.name(), unix_secs())),
        };
        Ok(Plan {
            seed,
            workers,
            fs,
            classes,
            access: if args.access.is_empty() { Via::TREE.to_vec() } else { args.access.clone() },
            ops_total: args.ops.or(if args.minutes.is_none() { Some(DEFAULT_OPS) } else { None }),
            replay,
            out,
        })
    }

    fn describe(&self, args: &TortureArgs) -> String {
        let what = match (&self.replay, &args.replay) {
            (Some((_, records)), Some(path)) => format!("replay of {} ({} ops)", path.display(), records.len()),
            _ => format!(
                "workers={} ops={} minutes={} rate={}",
                self.workers,
                self.ops_total.map_or("-".into(), |o| o.to_string()),
                args.minutes.map_or("-".into(), |m| m.to_string()),
                if args.rate == 0 { "unlimited".into() } else { format!("{}/s/worker", args.rate) }
            ),
        };
        let classes = if self.classes.len() == Class::ALL.len() { "all".into() } else { names(&self.classes, |c| c.name()) };
        let access = if args.access.is_empty() { "all".into() } else { names(&self.access, |v| v.name()) };
        format!("torture: fs={} seed={} {what} classes={classes} access={access}", self.fs, self.seed)
    }
}

/// The two filesystems, the bind mount and the daemons of one exercise. Fields
/// drop in order: the daemons stop before the mounts they use go away.
struct Rig {
    pair: Pair,
    bind: BindMount,
    standby: LoopFs,
    master: LoopFs,
}

impl Rig {
    /// Makes both filesystems, the initial tree and the bind mount, then starts the
    /// daemons and waits for the initial sync.
    fn start(plan: &Plan, args: &TortureArgs, report: &mut Report) -> anyhow::Result<Rig> {
        let master = LoopFs::new(plan.fs, args.image_mib).context("cannot make the master filesystem")?;
        let standby = LoopFs::new(plan.fs, args.image_mib).context("cannot make the standby filesystem")?;
        let tree = master.path().join("tree");
        let made = population::populate(&tree, &master.path().join("outside"), plan.seed, plan.workers)?;
        let bind = BindMount::new(&tree)?;
        report.line(format!(
            "population: {} files, {} dirs, {:.1} MiB of data",
            made.files,
            made.dirs,
            made.bytes as f64 / 1048576.0
        ));
        let started = Instant::now();
        // The workers delete and rename away most of a small tree within seconds, so
        // a comparison after a burst of rescans may rightly delete most of the
        // standby: the mass-deletion guard (an operator's confirmation, tested in
        // the hostile suite) would stop the exercise there.
        let options = PairOptions {
            startup_timeout: Duration::from_secs(180),
            receiver_toml: "[safety]\nmax_delete_fraction = 1.0\n".into(),
            ..PairOptions::default()
        };
        let pair = Pair::start_with(&tree, standby.path(), options).context("cannot start the daemons")?;
        report.line(format!("initial sync: {:.1} s", started.elapsed().as_secs_f64()));
        Ok(Rig { pair, bind, standby, master })
    }

    fn tree(&self) -> PathBuf {
        self.master.path().join("tree")
    }
}

/// Runs one exercise (or a replay) and reports it. Needs root.
pub fn run(args: &TortureArgs) -> anyhow::Result<Outcome> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("sluice-torture must run as root: it mounts loop filesystems and the agent loads BPF programs");
    }
    let plan = Plan::new(args)?;
    sys::catch_interrupts()?;
    fs::create_dir_all(&plan.out).with_context(|| format!("cannot create {}", plan.out.display()))?;
    let mut report = Report {
        file: OpenOptions::new().create(true).append(true).open(plan.out.join("report.txt")).ok(),
        quiet: args.quiet,
    };
    report.line(plan.describe(args));
    report.line(format!("output: {}", plan.out.display()));
    let started = Instant::now();

    let mut rig = Rig::start(&plan, args, &mut report)?;
    let setup = started.elapsed();
    let spec = Spec {
        seed: plan.seed,
        fs: plan.fs.name().to_owned(),
        workers: plan.workers,
        ops_per_worker: plan.ops_total.map(|total| total.div_ceil(plan.workers as u64)),
        deadline_ns: args.minutes.map(|m| monotonic_ns() + (m * 60e9) as u64),
        rate: args.rate,
        classes: plan.classes.clone(),
        access: plan.access.iter().map(|v| v.name().to_owned()).collect(),
        mnt: rig.master.path().to_owned(),
        bind: rig.bind.path.clone(),
        out: plan.out.clone(),
    };
    let spec_path = plan.out.join("run.json");
    spec.save(&spec_path)?;

    let mut findings = Vec::new();
    let mut agent_exit_ns = None;
    let ops_started = Instant::now();
    match &plan.replay {
        Some((header, records)) => replay_records(&spec, header, records, !args.replay_fast, &mut report)?,
        None => run_workers(&spec, &spec_path, &mut rig.pair, &mut findings, &mut agent_exit_ns, &mut report)?,
    }
    let ops_phase = ops_started.elapsed();
    report.line(format!("operations done after {:.1} s; waiting for the agent to go idle", ops_phase.as_secs_f64()));

    let settle_started = Instant::now();
    let (agent_metrics, receiver_metrics) = check_after(&plan, args, &mut rig, &mut findings, &mut agent_exit_ns, &mut report)?;
    let settle = settle_started.elapsed();
    if sys::interrupted() && !findings.iter().any(|f| matches!(f, Finding::Interrupted)) {
        findings.push(Finding::Interrupted);
    }
    save_daemon_logs(&rig.pair, &plan.out);
    let agent_log = rig.pair.agent_log();
    drop(rig);

    let records = log::merge(&log::worker_logs(&plan.out)?)?;
    summary(&records, &mut report);
    report.line(format!(
        "duration: {:.1} s in all (setup and initial sync {:.1} s, operations {:.1} s, settling and checks {:.1} s)",
        started.elapsed().as_secs_f64(),
        setup.as_secs_f64(),
        ops_phase.as_secs_f64(),
        settle.as_secs_f64()
    ));
    if let Some(m) = &agent_metrics {
        report.line("agent metrics:");
        report.line(describe_metrics(m, &SUMMARY_AGENT_SERIES));
    }
    if let Some(m) = &receiver_metrics {
        report.line("receiver metrics:");
        report.line(describe_metrics(m, &["sluice_ops_applied_total", "sluice_ops_refused_total", "sluice_bytes_applied_total"]));
    }
    // What the verifier had to repair: each one is a change capture missed.
    let mismatches: Vec<String> = agent_log
        .lines()
        .filter(|line| line.contains("verifier: the standby's copy differs"))
        .map(|line| check::strip_ansi(line).split_once("differs from the master's").map_or(String::new(), |(_, rest)| rest.trim().to_owned()))
        .collect();
    if !mismatches.is_empty() {
        report.line(format!("verifier mismatches ({}):", mismatches.len()));
        for mismatch in mismatches.iter().take(20) {
            report.line(format!("  {mismatch}"));
        }
    }

    let passed = findings.is_empty();
    if !passed {
        report_failure(&findings, &records, &spec, agent_exit_ns, &mut report)?;
    }
    let mut labels: Vec<&'static str> = findings.iter().map(|f| f.label()).collect();
    labels.sort_by_key(|label| Finding::SEVERITY.iter().position(|l| l == label));
    labels.dedup();
    report.line(format!(
        "RESULT: {} fs={} seed={}{}",
        if passed { "PASS" } else { "FAIL" },
        plan.fs,
        plan.seed,
        if passed { String::new() } else { format!(" ({})", labels.join(", ")) }
    ));
    if passed && !args.keep {
        let _ = fs::remove_dir_all(&plan.out);
    } else {
        report.line(format!("logs kept in {}", plan.out.display()));
    }
    Ok(Outcome { passed, labels, out: plan.out })
}

/// The agent series the summary shows.
const SUMMARY_AGENT_SERIES: [&str; 8] = [
    "sluice_rescans_total",
    "sluice_tree_compares_total",
    "sluice_events_dropped_total",
    "sluice_verify_mismatches_total",
    "sluice_events_captured_total",
    "sluice_ops_sent_total",
    "sluice_payload_bytes_sent_total",
    "sluice_backlog_overflows_total",
];

/// Everything after the operations: the agent going idle (with a probe file
/// proving it alive), the trees matching, allocation, and the daemons' health.
/// Returns the agent's and the receiver's last metrics.
fn check_after(
    plan: &Plan,
    args: &TortureArgs,
    rig: &mut Rig,
    findings: &mut Vec<Finding>,
    agent_exit_ns: &mut Option<u64>,
    report: &mut Report,
) -> anyhow::Result<(Option<Metrics>, Option<Metrics>)> {
    let tree = rig.tree();
    let started = Instant::now();
    let probe = check::Probe::write(&tree, plan.seed).context("cannot write the probe file")?;
    let idle = if rig.pair.agent().is_running() {
        match check::wait_idle(&mut rig.pair, &probe, Duration::from_secs(args.settle_secs)) {
            Ok(metrics) => Some(metrics),
            Err(finding) => {
                if let Finding::Exited { .. } = finding {
                    agent_exit_ns.get_or_insert(monotonic_ns());
                }
                findings.push(finding);
                None
            }
        }
    } else {
        None
    };
    let idle_after = started.elapsed();
    // A stalled or dead agent repairs nothing: compare once, without a grace.
    let grace = if idle.is_some() { Duration::from_secs(args.grace_secs) } else { Duration::ZERO };
    match check::wait_identical(&tree, rig.standby.path(), grace) {
        Ok(took) => report.line(format!(
            "trees identical {:.1} s after the agent went idle (idle after {:.1} s)",
            took.as_secs_f64(),
            idle_after.as_secs_f64()
        )),
        Err(diff) => findings.push(Finding::Divergence(diff)),
    }
    check::settle_allocation(plan.fs.name(), &[rig.master.path(), rig.standby.path()]);
    let blocks = check::block_usage(&tree, rig.standby.path(), args.block_slack_kib * 1024);
    report.line(format!("allocation: {blocks}").lines().next().unwrap_or_default());
    if !blocks.offenders.is_empty() {
        findings.push(Finding::Holes(blocks));
    }
    let receiver_metrics = rig.pair.receiver_metrics().ok();
    let agent_metrics = rig.pair.agent_metrics().ok();
    daemon_findings(&mut rig.pair, receiver_metrics.as_ref(), findings);
    Ok((agent_metrics, receiver_metrics))
}

/// Shrinks the `--replay` log to a short sequence that still fails with the most
/// severe finding of the full replay: removes ever smaller chunks of operations
/// while the failure persists (ddmin, complements only). Writes `minimal.jsonl`.
pub fn minimize(args: &TortureArgs) -> anyhow::Result<Outcome> {
    let source = args.replay.clone().context("--minimize needs --replay")?;
    let (header, records) = log::read_log(&source)?;
    let header = header.with_context(|| format!("{} has no header line", source.display()))?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("/tmp/sluice-torture").join(format!("minimize-{}-{}", header.fs, unix_secs()))
    });
    fs::create_dir_all(&out)?;
    let mut tries = 0usize;
    let mut attempt = |ops: &[Record]| -> anyhow::Result<Vec<&'static str>> {
        tries += 1;
        let log_path = out.join(format!("try-{tries}.jsonl"));
        log::write_log(&log_path, &header, &ops.iter().collect::<Vec<_>>())?;
        let trial = TortureArgs {
            replay: Some(log_path.clone()),
            out: Some(out.join(format!("try-{tries}"))),
            quiet: true,
            keep: false,
            minimize: false,
            ..args.clone()
        };
        let outcome = run(&trial)?;
        let _ = fs::remove_file(&log_path);
        let _ = fs::remove_dir_all(&outcome.out);
        Ok(outcome.labels)
    };
    if let Some(wanted) = &args.target
        && !Finding::SEVERITY.contains(&wanted.as_str())
    {
        bail!("--target must be one of: {}", Finding::SEVERITY.join(", "));
    }
    println!("minimize: replaying all {} operations of {}", records.len(), source.display());
    let labels = attempt(&records)?;
    let found = match &args.target {
        Some(wanted) => labels.iter().copied().find(|l| l == wanted),
        None => labels.first().copied(),
    };
    let Some(target) = found else {
        println!("minimize: the full replay does not fail that way ({}); nothing to shrink", labels.join(", "));
        return Ok(Outcome { passed: true, labels, out });
    };
    println!("minimize: looking for a shorter sequence that still ends in `{target}`");
    let mut ops = records;
    let mut chunks = 2usize;
    while ops.len() > 1 {
        let size = ops.len().div_ceil(chunks);
        let mut shrunk = false;
        let mut start = 0;
        while start < ops.len() {
            let candidate: Vec<Record> =
                ops[..start].iter().chain(ops[(start + size).min(ops.len())..].iter()).cloned().collect();
            if sys::interrupted() {
                bail!("interrupted; the shortest failing sequence so far has {} operations", ops.len());
            }
            if !candidate.is_empty() && attempt(&candidate)?.contains(&target) {
                println!("minimize: {} operations still fail ({target})", candidate.len());
                ops = candidate;
                shrunk = true;
            } else {
                start += size;
            }
        }
        if shrunk {
            chunks = chunks.saturating_sub(1).max(2);
        } else if size == 1 {
            break;
        } else {
            chunks = (chunks * 2).min(ops.len());
        }
    }
    let minimal = out.join("minimal.jsonl");
    log::write_log(&minimal, &header, &ops.iter().collect::<Vec<_>>())?;
    let t0 = ops.first().map_or(0, |r| r.t);
    println!("minimize: {} operation(s) after {tries} tries still fail ({target}):", ops.len());
    for record in &ops {
        println!("  {}", record.render(t0));
    }
    println!("minimize: saved as {}; run it with --replay {0} --keep to see the report", minimal.display());
    Ok(Outcome { passed: false, labels: vec![target], out })
}

/// Starts the worker processes and watches them and the daemons until the workers
/// finish; a daemon that exits stops the run early.
fn run_workers(
    spec: &Spec,
    spec_path: &Path,
    pair: &mut Pair,
    findings: &mut Vec<Finding>,
    agent_exit_ns: &mut Option<u64>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find this program to start workers")?;
    let mut children: Vec<(usize, Child)> = Vec::new();
    for k in 0..spec.workers {
        let stderr = File::create(spec.out.join(format!("worker-{k}.stderr")))?;
        let child = Command::new(&exe)
            .arg("--worker")
            .arg(k.to_string())
            .arg("--spec")
            .arg(spec_path)
            .stdin(Stdio::null())
            .stdout(stderr.try_clone()?)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start worker {k}"))?;
        children.push((k, child));
    }
    // A worker blocked for good (it should never be) must not hang the run.
    let limit = match spec.deadline_ns {
        Some(deadline) => Duration::from_nanos(deadline.saturating_sub(monotonic_ns())) + Duration::from_secs(120),
        None => Duration::from_secs(30 * 60),
    };
    let started = Instant::now();
    let mut last_progress = Instant::now();
    while !children.is_empty() {
        let mut still = Vec::new();
        for (k, mut child) in children {
            match child.try_wait()? {
                Some(status) if !status.success() => {
                    findings.push(Finding::Worker { worker: k, status: status.to_string() })
                }
                Some(_) => {}
                None => still.push((k, child)),
            }
        }
        children = still;
        let mut stop = None;
        for which in ["agent", "receiver"] {
            let daemon = if which == "agent" { pair.agent() } else { pair.receiver() };
            if let Ok(Some(status)) = daemon.try_wait() {
                stop = Some(format!("the {} exited", daemon.name()));
                if daemon.name() == "agent" {
                    agent_exit_ns.get_or_insert(monotonic_ns());
                }
                findings.push(Finding::Exited { daemon: daemon.name(), status: status.to_string() });
            }
        }
        if sys::interrupted() {
            stop = Some("interrupted".to_owned());
            findings.push(Finding::Interrupted);
        }
        if started.elapsed() > limit {
            stop = Some(format!("workers still running after {limit:?}"));
            for (k, _) in &children {
                findings.push(Finding::Worker { worker: *k, status: format!("killed: still running after {limit:?}") });
            }
        }
        if let Some(why) = stop {
            report.line(format!("stopping the workers: {why}"));
            for (_, child) in &mut children {
                let _ = child.kill();
                let _ = child.wait();
            }
            break;
        }
        if last_progress.elapsed() >= Duration::from_secs(15) {
            last_progress = Instant::now();
            let lag = pair.agent_metrics().map(|m| m.get("sluice_lag_bytes")).unwrap_or(f64::NAN);
            report.line(format!(
                "  {:>5.0} s: {} ops done, agent lag {lag} bytes",
                started.elapsed().as_secs_f64(),
                ops_done(spec)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Longest pause kept between two replayed operations.
const MAX_REPLAY_GAP: Duration = Duration::from_secs(5);

/// Runs logged operations one after another in this process, at their logged pace
/// when `paced`.
fn replay_records(spec: &Spec, header: &Header, records: &[Record], paced: bool, report: &mut Report) -> anyhow::Result<()> {
    sys::survive_sigbus()?;
    let executor = Executor::new(spec.layout());
    let mut log = LogWriter::create(&spec.out.join("worker-replay.jsonl"), &spec.header(header.worker))?;
    let mut ordered: Vec<&Record> = records.iter().collect();
    ordered.sort_by_key(|r| (r.t, r.w, r.n));
    let mut changed = 0;
    let mut previous: Option<(u64, Instant)> = None;
    for record in ordered {
        if sys::interrupted() {
            report.line("replay interrupted");
            break;
        }
        if let Some((t, at)) = previous
            && paced
        {
            let gap = Duration::from_nanos(record.t.saturating_sub(t)).min(MAX_REPLAY_GAP);
            std::thread::sleep(gap.saturating_sub(at.elapsed()));
        }
        previous = Some((record.t, Instant::now()));
        for p in record.op.paths() {
            p.check().with_context(|| format!("operation w{}#{} of the log", record.w, record.n))?;
        }
        let t = monotonic_ns();
        let res = executor.run(&record.op);
        let dt = monotonic_ns() - t;
        if res != record.res {
            changed += 1;
        }
        log.append(&Record { t, dt, res, ..record.clone() })?;
    }
    std::env::set_current_dir("/")?;
    report.line(format!(
        "replayed {} ops; {changed} gave a different result than logged (other workers' effects are missing)",
        records.len()
    ));
    Ok(())
}

fn daemon_findings(pair: &mut Pair, receiver_metrics: Option<&Metrics>, findings: &mut Vec<Finding>) {
    for (daemon, log) in [("agent", pair.agent_log()), ("receiver", pair.receiver_log())] {
        let lines = check::panics(&log);
        if !lines.is_empty() {
            findings.push(Finding::Panic { daemon, lines });
        }
    }
    let already: BTreeSet<&str> = findings
        .iter()
        .filter_map(|f| if let Finding::Exited { daemon, .. } = f { Some(*daemon) } else { None })
        .collect::<BTreeSet<_>>();
    let mut exited = Vec::new();
    for which in ["agent", "receiver"] {
        let daemon = if which == "agent" { pair.agent() } else { pair.receiver() };
        if let Ok(Some(status)) = daemon.try_wait()
            && !already.contains(daemon.name())
        {
            exited.push(Finding::Exited { daemon: daemon.name(), status: status.to_string() });
        }
    }
    findings.extend(exited);
    let lines = check::refusals(&pair.receiver_log());
    let count = receiver_metrics.map_or(lines.len() as f64, |m| m.get("sluice_ops_refused_total"));
    if count > 0.0 || !lines.is_empty() {
        findings.push(Finding::Refused { count, lines });
    }
}

fn save_daemon_logs(pair: &Pair, out: &Path) {
    for name in ["agent.log", "receiver.log", "agent.toml", "receiver.toml"] {
        let _ = fs::copy(pair.dir().join(name), out.join(name));
    }
}

/// Prints every finding, then the operations related to them, and saves those as a
/// replayable excerpt.
fn report_failure(
    findings: &[Finding],
    records: &[Record],
    spec: &Spec,
    agent_exit_ns: Option<u64>,
    report: &mut Report,
) -> anyhow::Result<()> {
    report.line(format!("FAILED: fs={} seed={}", spec.fs, spec.seed));
    for finding in findings {
        report.line(finding.to_string());
    }
    let paths: BTreeSet<String> = findings.iter().flat_map(|f| f.paths()).collect();
    let t0 = records.first().map_or(0, |r| r.t);
    if !paths.is_empty() {
        let mut picked = log::excerpt(records, &paths);
        let related = picked.len();
        // Long runs relate nearly everything to everything; the latest operations
        // are the ones that matter, and a longer excerpt is useless to replay.
        picked.drain(..picked.len().saturating_sub(EXCERPT_SAVED));
        let excerpt_path = spec.out.join("excerpt.jsonl");
        log::write_log(&excerpt_path, &spec.header(None), &picked)?;
        let text: Vec<String> = picked.iter().map(|r| r.render(t0)).collect();
        fs::write(spec.out.join("excerpt.txt"), text.join("\n") + "\n")?;
        report.line(format!(
            "operations on the differing paths, their parents and their sources ({related} of {}{}; times from the first op):",
            records.len(),
            if related > picked.len() { format!(", the last {} saved", picked.len()) } else { String::new() }
        ));
        if text.len() > EXCERPT_PRINTED {
            report.line(format!("  ... {} earlier ones in {}", text.len() - EXCERPT_PRINTED, spec.out.join("excerpt.txt").display()));
        }
        for line in text.iter().skip(text.len().saturating_sub(EXCERPT_PRINTED)) {
            report.line(format!("  {line}"));
        }
        report.line(format!(
            "replay them alone: cargo xtask torture --replay {} (add --minimize to shrink them)",
            excerpt_path.display()
        ));
    }
    if let Some(exit) = agent_exit_ns {
        // Exits are polled every 50 ms and the agent trails capture by a few ms, so
        // the operation that killed it is among the last ones started before.
        let window: Vec<&Record> = records.iter().filter(|r| r.t <= exit && r.t + 300_000_000 >= exit).collect();
        report.line(format!(
            "operations started in the 300 ms before the agent was seen gone ({}, last {} shown):",
            window.len(),
            window.len().min(40)
        ));
        for record in window.iter().skip(window.len().saturating_sub(40)) {
            report.line(format!("  {}", record.render(t0)));
        }
    }
    report.line(format!("full op logs: {}/worker-*.jsonl; daemon logs: {0}/agent.log, {0}/receiver.log", spec.out.display()));
    Ok(())
}

/// Operations attempted and succeeded per class, with the most common errors.
fn summary(records: &[Record], report: &mut Report) {
    #[derive(Default)]
    struct Tally {
        attempted: u64,
        succeeded: u64,
        errors: BTreeMap<String, u64>,
    }
    let mut per_class: BTreeMap<Class, Tally> = BTreeMap::new();
    for record in records {
        let tally = per_class.entry(record.class).or_default();
        tally.attempted += 1;
        if record.succeeded() {
            tally.succeeded += 1;
        }
        for res in record.res.iter().filter(|r| *r != "ok" && !r.starts_with("ok=")) {
            *tally.errors.entry(res.clone()).or_default() += 1;
        }
    }
    report.line(format!("operations: {} in all", records.len()));
    report.line(format!("  {:<10} {:>9} {:>9}  most common errors", "class", "attempted", "succeeded"));
    for (class, tally) in per_class {
        let mut errors: Vec<(String, u64)> = tally.errors.into_iter().collect();
        errors.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let common: Vec<String> = errors.iter().take(4).map(|(e, n)| format!("{e} {n}")).collect();
        report.line(format!("  {:<10} {:>9} {:>9}  {}", class.name(), tally.attempted, tally.succeeded, common.join(", ")));
    }
}

fn ops_done(spec: &Spec) -> usize {
    (0..spec.workers)
        .filter_map(|k| fs::read(spec.log_path(k)).ok())
        .map(|bytes| bytes.iter().filter(|b| **b == b'\n').count().saturating_sub(1))
        .sum()
}

fn names<T>(items: &[T], name: impl Fn(&T) -> &'static str) -> String {
    items.iter().map(name).collect::<Vec<_>>().join(",")
}

fn clock_seed() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64 % 1_000_000)
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
