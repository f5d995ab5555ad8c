//! The committed list of exercises CI repeats (`tests/torture-seeds.toml`): random
//! runs by seed (`[[run]]`), and minimal operation sequences that once exposed a
//! bug, replayed as they are (`[[repro]]`, logs in `tests/torture-repros/`). A seed
//! or a minimized log that found a bug is added there, so the bug stays fixed.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::FsKind;

use super::args::TortureArgs;
use super::check::DEFAULT_BLOCK_SLACK;
use super::ops::Class;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedsFile {
    #[serde(default)]
    run: Vec<SeedRun>,
    #[serde(default)]
    repro: Vec<Repro>,
}

/// One `[[run]]` entry: a random exercise.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedRun {
    pub fs: String,
    pub seed: u64,
    pub ops: u64,
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Restrict to these classes (default all).
    #[serde(default)]
    pub classes: Vec<String>,
    /// Why the entry is there (e.g. the finding it guards against).
    #[serde(default)]
    pub note: String,
    /// Per-file allocation the standby may have beyond the master's before the run
    /// fails with "holes filled", in KiB (default 64).
    #[serde(default)]
    pub block_slack_kib: Option<u64>,
}

/// One `[[repro]]` entry: a logged operation sequence replayed on `fs`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repro {
    /// The log, relative to the seeds file.
    pub file: String,
    pub fs: String,
    /// The finding it reproduces.
    #[serde(default)]
    pub note: String,
}

/// An entry of the list, either kind.
#[derive(Clone, Debug)]
pub enum Entry {
    Run(SeedRun),
    Repro { repro: Repro, log: PathBuf },
}

fn default_workers() -> usize {
    4
}

/// Settings every listed exercise shares. The waits are shorter than on the
/// command line so that a failing list stays within CI's time budget: a healthy
/// agent is idle within seconds of the last operation, and the trees match within
/// 40 s (mapped stores are re-read for 35 s, no longer).
fn base(fs: &str) -> anyhow::Result<TortureArgs> {
    Ok(TortureArgs {
        fs: Some(fs.parse::<FsKind>()?),
        workers: default_workers(),
        rate: 200,
        settle_secs: 60,
        grace_secs: 40,
        block_slack_kib: DEFAULT_BLOCK_SLACK / 1024,
        image_mib: 2048,
        ..TortureArgs::default()
    })
}

impl Entry {
    /// The exerciser's arguments for this entry.
    pub fn args(&self) -> anyhow::Result<TortureArgs> {
        match self {
            Entry::Run(run) => Ok(TortureArgs {
                seed: Some(run.seed),
                ops: Some(run.ops),
                workers: run.workers,
                classes: run.classes.iter().map(|c| c.parse::<Class>()).collect::<anyhow::Result<_>>()?,
                block_slack_kib: run.block_slack_kib.unwrap_or(DEFAULT_BLOCK_SLACK / 1024),
                ..base(&run.fs)?
            }),
            // The committed repros leave no mapped store unsynced, so there is no
            // re-read to wait for.
            Entry::Repro { repro, log } => {
                Ok(TortureArgs { replay: Some(log.clone()), settle_secs: 30, grace_secs: 15, ..base(&repro.fs)? })
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Entry::Run(run) => {
                let classes = if run.classes.is_empty() { "all".to_owned() } else { run.classes.join(",") };
                format!("fs={} seed={} ops={} workers={} classes={classes}", run.fs, run.seed, run.ops, run.workers)
            }
            Entry::Repro { repro, .. } => format!("fs={} repro={}", repro.fs, repro.file),
        }
    }
}

/// Where the committed list lives.
pub fn default_path() -> PathBuf {
    crate::daemons::workspace_root().join("tests/torture-seeds.toml")
}

/// Every entry of a seeds file, runs first; each is checked to be runnable.
pub fn load(path: &Path) -> anyhow::Result<Vec<Entry>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: SeedsFile = toml::from_str(&text).with_context(|| format!("{} is not a seeds file", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let entries: Vec<Entry> = file
        .run
        .into_iter()
        .map(Entry::Run)
        .chain(file.repro.into_iter().map(|repro| {
            let log = dir.join(&repro.file);
            Entry::Repro { repro, log }
        }))
        .collect();
    for entry in &entries {
        entry.args().with_context(|| format!("{}: entry {}", path.display(), entry.describe()))?;
        match entry {
            Entry::Run(run) if run.workers == 0 || run.ops == 0 => {
                bail!("{}: entry {} runs nothing", path.display(), entry.describe())
            }
            Entry::Repro { log, .. } => {
                super::log::read_log(log).with_context(|| format!("{}: entry {}", path.display(), entry.describe()))?;
            }
            Entry::Run(_) => {}
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_list_loads() {
        let entries = load(&default_path()).unwrap();
        let runs: Vec<&SeedRun> = entries.iter().filter_map(|e| if let Entry::Run(r) = e { Some(r) } else { None }).collect();
        assert!(runs.iter().any(|r| r.fs == "ext4"));
        assert!(runs.iter().any(|r| r.fs == "btrfs"));
        assert!(entries.iter().any(|e| matches!(e, Entry::Repro { .. })));
    }

    #[test]
    fn entries_become_arguments() {
        let file: SeedsFile = toml::from_str(
            "[[run]]\nfs = \"btrfs\"\nseed = 3\nops = 100\nclasses = [\"mmap\"]\n\
             [[repro]]\nfile = \"r/x.jsonl\"\nfs = \"xfs\"\n",
        )
        .unwrap();
        let args = Entry::Run(file.run[0].clone()).args().unwrap();
        assert_eq!(args.fs, Some(FsKind::Btrfs));
        assert_eq!(args.workers, 4);
        assert_eq!(args.classes, vec![Class::Mmap]);
        let repro = Entry::Repro { repro: file.repro[0].clone(), log: "/t/r/x.jsonl".into() };
        let args = repro.args().unwrap();
        assert_eq!(args.fs, Some(FsKind::Xfs));
        assert_eq!(args.replay.as_deref(), Some(Path::new("/t/r/x.jsonl")));
        assert!(toml::from_str::<SeedsFile>("[[run]]\nfs = \"ext4\"\nseed = 1\nops = 1\nbogus = 1\n").is_err());
    }
}
