//! A worker process: generates and executes operations until its operation budget
//! or the run's deadline is reached, logging each one as it completes. Workers are
//! separate processes (the binary re-executed with `--worker K`) so that capture
//! sees several pids, cwds and fd tables, as it would in production.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::exec::{Executor, Layout};
use super::generator::Gen;
use super::log::{Header, LogWriter, Record, monotonic_ns};
use super::ops::{Class, Via};
use super::sys;

/// What the controller tells its workers, written to `<out>/run.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spec {
    pub seed: u64,
    pub fs: String,
    pub workers: usize,
    /// Operations each worker runs, if bounded by count.
    pub ops_per_worker: Option<u64>,
    /// CLOCK_MONOTONIC ns after which workers stop, if bounded by time.
    pub deadline_ns: Option<u64>,
    /// Operations per second per worker at most (0: unlimited).
    #[serde(default)]
    pub rate: u32,
    pub classes: Vec<Class>,
    /// Access modes, by name (see [`Via`]).
    pub access: Vec<String>,
    pub mnt: PathBuf,
    pub bind: PathBuf,
    pub out: PathBuf,
}

impl Spec {
    pub fn layout(&self) -> Layout {
        Layout { mnt: self.mnt.clone(), bind: self.bind.clone() }
    }

    pub fn vias(&self) -> anyhow::Result<Vec<Via>> {
        self.access.iter().map(|a| a.parse()).collect()
    }

    pub fn log_path(&self, worker: usize) -> PathBuf {
        self.out.join(format!("worker-{worker}.jsonl"))
    }

    pub fn header(&self, worker: Option<usize>) -> Header {
        Header { seed: self.seed, fs: self.fs.clone(), workers: self.workers, worker }
    }

    pub fn load(path: &Path) -> anyhow::Result<Spec> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a run spec", path.display()))
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(self)?).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// The body of `sluice-torture --worker K --spec FILE`.
pub fn run(spec_path: &Path, worker: usize) -> anyhow::Result<()> {
    let spec = Spec::load(spec_path)?;
    sys::survive_sigbus()?;
    // Relative paths are resolved from cwds the executor sets; start from none of them.
    std::env::set_current_dir("/")?;
    let executor = Executor::new(spec.layout());
    let mut generator = Gen::new(spec.seed, worker, spec.layout(), &spec.classes, &spec.vias()?);
    let mut log = LogWriter::create(&spec.log_path(worker), &spec.header(Some(worker)))?;
    let interval = (spec.rate > 0).then(|| 1_000_000_000 / u64::from(spec.rate));
    let started = monotonic_ns();
    for n in 0.. {
        if spec.ops_per_worker.is_some_and(|limit| n >= limit) {
            break;
        }
        if spec.deadline_ns.is_some_and(|deadline| monotonic_ns() >= deadline) {
            break;
        }
        if let Some(interval) = interval {
            // Paced against the start, so a slow operation is made up for by the
            // next ones rather than lowering the rate.
            let due = started + n * interval;
            let now = monotonic_ns();
            if due > now {
                std::thread::sleep(std::time::Duration::from_nanos(due - now));
            }
        }
        let (class, op) = generator.next_op();
        let t = monotonic_ns();
        let res = executor.run(&op);
        let dt = monotonic_ns() - t;
        log.append(&Record { t, dt, w: worker, n, class, op, res })?;
    }
    Ok(())
}
