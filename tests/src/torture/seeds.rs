//! The committed list of runs CI repeats (`tests/torture-seeds.toml`): a seed that
//! once found a bug is added there, so the bug stays fixed.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::FsKind;

use super::args::TortureArgs;
use super::ops::Class;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedsFile {
    run: Vec<SeedRun>,
}

/// One `[[run]]` entry.
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
}

fn default_workers() -> usize {
    4
}

impl SeedRun {
    /// The exerciser's arguments for this entry.
    pub fn args(&self) -> anyhow::Result<TortureArgs> {
        Ok(TortureArgs {
            seed: Some(self.seed),
            ops: Some(self.ops),
            fs: self.fs.parse::<FsKind>()?,
            workers: self.workers,
            classes: self.classes.iter().map(|c| c.parse::<Class>()).collect::<anyhow::Result<_>>()?,
            settle_secs: 180,
            grace_secs: 60,
            block_slack_kib: super::check::DEFAULT_BLOCK_SLACK / 1024,
            image_mib: 2048,
            ..TortureArgs::default()
        })
    }

    pub fn describe(&self) -> String {
        let classes = if self.classes.is_empty() { "all".to_owned() } else { self.classes.join(",") };
        format!("fs={} seed={} ops={} workers={} classes={classes}", self.fs, self.seed, self.ops, self.workers)
    }
}

/// Where the committed list lives.
pub fn default_path() -> PathBuf {
    crate::daemons::workspace_root().join("tests/torture-seeds.toml")
}

pub fn load(path: &Path) -> anyhow::Result<Vec<SeedRun>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: SeedsFile = toml::from_str(&text).with_context(|| format!("{} is not a seeds file", path.display()))?;
    for run in &file.run {
        run.args().with_context(|| format!("{}: entry {}", path.display(), run.describe()))?;
        if run.workers == 0 || run.ops == 0 {
            bail!("{}: entry {} runs nothing", path.display(), run.describe());
        }
    }
    Ok(file.run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_list_parses() {
        let runs = load(&default_path()).unwrap();
        assert!(runs.iter().any(|r| r.fs == "ext4"));
        assert!(runs.iter().any(|r| r.fs == "btrfs"));
    }

    #[test]
    fn entries_become_arguments() {
        let file: SeedsFile = toml::from_str("[[run]]\nfs = \"btrfs\"\nseed = 3\nops = 100\nclasses = [\"mmap\"]\n").unwrap();
        let args = file.run[0].args().unwrap();
        assert_eq!(args.fs, FsKind::Btrfs);
        assert_eq!(args.workers, 4);
        assert_eq!(args.classes, vec![Class::Mmap]);
        assert!(toml::from_str::<SeedsFile>("[[run]]\nfs = \"ext4\"\nseed = 1\nops = 1\nbogus = 1\n").is_err());
    }
}
