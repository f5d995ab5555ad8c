//! The exerciser's command line, shared by `sluice-torture` and `cargo xtask
//! torture` (which flattens it and passes it through with [`TortureArgs::to_args`]).

use std::path::PathBuf;

use clap::Args;

use crate::FsKind;

use super::ops::{Class, Via};

#[derive(Args, Clone, Debug, Default)]
pub struct TortureArgs {
    /// Seed of the run (default: taken from the clock and printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run for this many minutes (workers stop starting new operations then).
    #[arg(long)]
    pub minutes: Option<f64>,
    /// Total operations over all workers (default 2000 when --minutes is not given).
    #[arg(long)]
    pub ops: Option<u64>,
    /// Filesystem of the master and the standby (default ext4, or for --replay the
    /// one the log was made on).
    #[arg(long, value_parser = parse_fs)]
    pub fs: Option<FsKind>,
    /// Concurrent worker processes.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// At most this many operations per second per worker (0: as fast as they go,
    /// several thousand a second, which no replicator keeps up with and which
    /// writes about 1.5 MB of log a second).
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Operation classes to generate, comma-separated (default: all). One of write,
    /// mmap, direct, aio, uring, uring-ns, truncate, fallocate, copy, clone, tmpfile,
    /// rename, link, symlink, fifo, create, dir, meta, xattr, acl, shared-fd, mixed.
    #[arg(long, value_delimiter = ',')]
    pub classes: Vec<Class>,
    /// Classes to leave out, comma-separated (to get past a finding that ends every
    /// run, e.g. `--exclude mmap,mixed`).
    #[arg(long, value_delimiter = ',')]
    pub exclude: Vec<Class>,
    /// Ways of naming paths, comma-separated (default: all): abs, bind (through a
    /// bind mount), cwd (relative, cwd = the tree), fsroot (relative, cwd = the
    /// filesystem root), up (relative, cwd outside the filesystem), dirfd (*at calls).
    #[arg(long, value_delimiter = ',')]
    pub access: Vec<Via>,
    /// Re-run the operations of a log (a worker's or an excerpt) one after another,
    /// from the same initial tree, instead of generating new ones.
    #[arg(long)]
    pub replay: Option<PathBuf>,
    /// With --replay: run the operations back to back instead of at their logged
    /// pace (gaps between start times are kept by default, capped at 5 s each, as
    /// many findings depend on the agent having caught up in between).
    #[arg(long, requires = "replay")]
    pub replay_fast: bool,
    /// With --replay: shrink the log to a minimal sequence that still fails the same
    /// way (delta debugging; each try is a fresh exercise of a second or two).
    #[arg(long, requires = "replay")]
    pub minimize: bool,
    /// With --minimize: the finding to keep (e.g. "operation refused"; default the
    /// most severe one of the full replay).
    #[arg(long, requires = "minimize")]
    pub target: Option<String>,
    /// Print only the result line (the report still goes to <out>/report.txt).
    #[arg(long)]
    pub quiet: bool,
    /// Where logs and reports go (default /tmp/sluice-torture/<fs>-seed<seed>-<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Keep the output directory when the run passes (it is always kept on failure).
    #[arg(long)]
    pub keep: bool,
    /// How long the agent may take to go idle after the workers stop before the run
    /// counts as stalled, in seconds.
    #[arg(long, default_value_t = 180)]
    pub settle_secs: u64,
    /// How long the trees may still differ once the agent is idle (mapped stores are
    /// re-read for 35 s), in seconds.
    #[arg(long, default_value_t = 60)]
    pub grace_secs: u64,
    /// Per file, how much more the standby may allocate than the master before the
    /// run fails with "holes filled", in KiB.
    #[arg(long, default_value_t = super::check::DEFAULT_BLOCK_SLACK / 1024)]
    pub block_slack_kib: u64,
    /// Size of each loop filesystem image in MiB (sparse; XFS needs at least 300).
    #[arg(long, default_value_t = 2048)]
    pub image_mib: u64,
}

fn parse_fs(name: &str) -> Result<FsKind, String> {
    name.parse().map_err(|e: anyhow::Error| e.to_string())
}

impl TortureArgs {
    /// The classes the run generates: `--classes` (default all) minus `--exclude`.
    pub fn enabled_classes(&self) -> Vec<Class> {
        let chosen = if self.classes.is_empty() { Class::ALL.to_vec() } else { self.classes.clone() };
        chosen.into_iter().filter(|c| !self.exclude.contains(c)).collect()
    }

    /// The arguments that reproduce these settings on the `sluice-torture` command line.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut push = |name: &str, value: String| {
            args.push(format!("--{name}"));
            args.push(value);
        };
        if let Some(seed) = self.seed {
            push("seed", seed.to_string());
        }
        if let Some(minutes) = self.minutes {
            push("minutes", minutes.to_string());
        }
        if let Some(ops) = self.ops {
            push("ops", ops.to_string());
        }
        if let Some(fs) = self.fs {
            push("fs", fs.name().to_owned());
        }
        push("workers", self.workers.to_string());
        push("rate", self.rate.to_string());
        if !self.classes.is_empty() {
            push("classes", self.classes.iter().map(|c| c.name()).collect::<Vec<_>>().join(","));
        }
        if !self.exclude.is_empty() {
            push("exclude", self.exclude.iter().map(|c| c.name()).collect::<Vec<_>>().join(","));
        }
        if !self.access.is_empty() {
            push("access", self.access.iter().map(|v| v.name()).collect::<Vec<_>>().join(","));
        }
        if let Some(replay) = &self.replay {
            push("replay", replay.display().to_string());
        }
        if let Some(out) = &self.out {
            push("out", out.display().to_string());
        }
        if let Some(target) = &self.target {
            push("target", target.clone());
        }
        push("settle-secs", self.settle_secs.to_string());
        push("grace-secs", self.grace_secs.to_string());
        push("block-slack-kib", self.block_slack_kib.to_string());
        push("image-mib", self.image_mib.to_string());
        let flags = [
            ("--keep", self.keep),
            ("--minimize", self.minimize),
            ("--quiet", self.quiet),
            ("--replay-fast", self.replay_fast),
        ];
        for (flag, set) in flags {
            if set {
                args.push(flag.into());
            }
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TortureArgs,
    }

    #[test]
    fn arguments_survive_a_round_trip() {
        let cli = Cli::parse_from([
            "t", "--seed", "7", "--ops", "300", "--fs", "xfs", "--classes", "truncate,mmap", "--exclude", "mmap", "--access",
            "abs,up", "--keep",
        ]);
        let args = cli.args.to_args();
        let again = Cli::parse_from(std::iter::once("t".to_owned()).chain(args.clone())).args;
        assert_eq!(again.to_args(), args);
        assert_eq!(again.fs, Some(FsKind::Xfs));
        assert_eq!(again.classes, vec![Class::Truncate, Class::Mmap]);
        assert_eq!(again.exclude, vec![Class::Mmap]);
        assert_eq!(again.access, vec![Via::Abs, Via::Up]);
        assert!(again.keep);
        assert!(Cli::try_parse_from(["t", "--fs", "zfs"]).is_err());
    }
}
