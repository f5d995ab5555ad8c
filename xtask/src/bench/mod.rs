//! `cargo xtask bench`: sluice side by side with rsync, lsyncd and Syncthing on the
//! same loop-mounted filesystems and workloads, written up under `bench/results/`.
//!
//! # Layout
//! - [`replicator`]: starting each replicator, configured as its docs recommend.
//! - [`procs`]: namespaces, child processes and the counters read about them.
//! - [`workload`]: test data and the convergence check.
//! - [`scenarios`]: S1–S4 and S6 around one replicator; [`s1`] the marker-lag
//!   workload.
//! - [`syscost`]: S5, what capture adds to syscalls; [`bpfstats`] the run time of
//!   the agent's BPF programs.
//! - [`scale`]: S7, a tree of many small files (initial sync, start-up, memory).
//! - [`fanout`]: S8, one master feeding three standbys against one.
//! - [`results`], [`report`], [`svg`]: what was measured and how it is written up.

mod bpfstats;
mod fanout;
mod procs;
mod replicator;
mod report;
mod results;
mod s1;
mod scale;
mod scenarios;
mod svg;
mod syscost;
mod workload;

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cargo::{check, release_dir, workspace_root};
use replicator::Kind;
use results::Results;

/// Workload sizes, scaled so the full run fits in 30 minutes on 2 cores and the
/// quick one in 5 (S7's tree beyond 200,000 files only when asked for).
pub struct Sizes {
    /// Limit for each convergence or startup wait.
    pub timeout: Duration,
    pub s1_file: u64,
    /// S1's loads: random 4 KiB writes per second and for how many seconds.
    pub s1_loads: Vec<(u64, u64)>,
    /// How long S1 keeps looking for markers after the writes stop.
    pub s1_grace: Duration,
    pub s2_files: usize,
    pub s2_dirs: usize,
    pub s3_files: usize,
    pub s3_bytes: u64,
    pub s3_big: u64,
    pub s4_bytes: u64,
    pub s4_files: usize,
    pub s6_bytes: u64,
    /// Limit for S6's convergence, which follows a long write.
    pub s6_timeout: Duration,
    /// `sluice-syscost` iterations per run, and rounds of runs without and with
    /// the agent.
    pub s5_getppid: u64,
    pub s5_pwrites: u64,
    pub s5_fsyncs: u64,
    pub s5_rounds: usize,
    /// S7: files in each tree (1,000 per directory), one run per entry.
    pub s7_files: Vec<usize>,
    /// S8: the tree's bytes and files, 4 KiB writes into each file afterwards, and
    /// the limit for each phase to reach every standby.
    pub s8_bytes: u64,
    pub s8_files: usize,
    pub s8_writes_per_file: usize,
    pub s8_timeout: Duration,
}

const MIB: u64 = 1 << 20;

impl Sizes {
    /// `scale` replaces S7's default tree size when not empty.
    pub fn new(quick: bool, scale: &[usize]) -> Sizes {
        let mut sizes = Sizes::preset(quick);
        if !scale.is_empty() {
            sizes.s7_files = scale.to_vec();
        }
        sizes
    }

    fn preset(quick: bool) -> Sizes {
        if quick {
            Sizes {
                timeout: Duration::from_secs(30),
                s1_file: 256 * MIB,
                s1_loads: vec![(1000, 10), (10_000, 5)],
                s1_grace: Duration::from_secs(25),
                s2_files: 5_000,
                s2_dirs: 50,
                s3_files: 1_000,
                s3_bytes: 128 * MIB,
                s3_big: 128 * MIB,
                s4_bytes: 256 * MIB,
                s4_files: 1_024,
                s6_bytes: 512 * MIB,
                s6_timeout: Duration::from_secs(60),
                s5_getppid: 2_000_000,
                s5_pwrites: 200_000,
                s5_fsyncs: 2_000,
                s5_rounds: 3,
                s7_files: vec![50_000],
                s8_bytes: 128 * MIB,
                s8_files: 64,
                s8_writes_per_file: 256,
                s8_timeout: Duration::from_secs(60),
            }
        } else {
            Sizes {
                timeout: Duration::from_secs(90),
                s1_file: 2048 * MIB,
                s1_loads: vec![(1000, 30), (10_000, 10)],
                s1_grace: Duration::from_secs(30),
                s2_files: 50_000,
                s2_dirs: 500,
                s3_files: 10_000,
                s3_bytes: 1024 * MIB,
                s3_big: 1024 * MIB,
                s4_bytes: 2048 * MIB,
                s4_files: 4_096,
                s6_bytes: 4096 * MIB,
                s6_timeout: Duration::from_secs(300),
                s5_getppid: 2_000_000,
                s5_pwrites: 200_000,
                s5_fsyncs: 2_000,
                s5_rounds: 3,
                s7_files: vec![200_000],
                s8_bytes: 512 * MIB,
                s8_files: 256,
                s8_writes_per_file: 256,
                s8_timeout: Duration::from_secs(180),
            }
        }
    }

    pub fn describe(&self) -> Vec<(String, String)> {
        let mib = |b: u64| format!("{} MiB", b / MIB);
        vec![
            (
                "S1".into(),
                format!(
                    "{} file, {}, marker every 100 ms, markers looked for up to {} s after the writes stop",
                    mib(self.s1_file),
                    self.s1_loads
                        .iter()
                        .map(|(rate, secs)| format!("{rate} random 4 KiB writes/s for {secs} s"))
                        .collect::<Vec<_>>()
                        .join(", then "),
                    self.s1_grace.as_secs()
                ),
            ),
            (
                "S2".into(),
                format!(
                    "{} files of 1–16 KiB in {} dirs",
                    self.s2_files, self.s2_dirs
                ),
            ),
            (
                "S3".into(),
                format!(
                    "rename a dir of {} in {} files; rename a {} file",
                    mib(self.s3_bytes),
                    self.s3_files,
                    mib(self.s3_big)
                ),
            ),
            (
                "S4".into(),
                format!(
                    "{} in {} files, to an empty standby and to one with every 10th file stale",
                    mib(self.s4_bytes),
                    self.s4_files
                ),
            ),
            (
                "S5".into(),
                format!(
                    "{} getppid, {} random 4 KiB pwrites into a 64 MiB file, {} pwrite+fsync pairs per run; {} rounds without and with the agent",
                    self.s5_getppid, self.s5_pwrites, self.s5_fsyncs, self.s5_rounds
                ),
            ),
            (
                "S6".into(),
                format!(
                    "one {} file written sequentially in 1 MiB writes to an empty tree; limit {} s after the last write",
                    mib(self.s6_bytes),
                    self.s6_timeout.as_secs()
                ),
            ),
            (
                "S7".into(),
                format!(
                    "{} files of {} bytes, {} per directory, ext4 `{}`; limit {}",
                    self.s7_files
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(" / "),
                    scale::FILE_BYTES,
                    scale::FILES_PER_DIR,
                    self.s7_files
                        .iter()
                        .map(|&n| scale::mkfs_options(n))
                        .collect::<Vec<_>>()
                        .join("` / `"),
                    self.s7_files
                        .iter()
                        .map(|&n| format!("{} s", scale::limit(n).as_secs()))
                        .collect::<Vec<_>>()
                        .join(" / ")
                ),
            ),
            (
                "S8".into(),
                format!(
                    "{} in {} files of {}, synced to empty standbys, then {} random 4 KiB writes into each file \
                     ({} in all); 1 and {} standbys; limit {} s per phase",
                    mib(self.s8_bytes),
                    self.s8_files,
                    mib(self.s8_bytes / self.s8_files as u64),
                    self.s8_writes_per_file,
                    mib(self.s8_files as u64 * self.s8_writes_per_file as u64 * 4096),
                    fanout::STANDBYS,
                    self.s8_timeout.as_secs()
                ),
            ),
            (
                "limit".into(),
                format!(
                    "{} s per convergence or startup wait",
                    self.timeout.as_secs()
                ),
            ),
        ]
    }
}

/// Debian packages of the peers.
const PEERS: &[&str] = &["rsync", "lsyncd", "syncthing"];

/// A file count as given to `--scale`: `200k`, `2m`, `10m` or a plain number.
pub fn parse_count(text: &str) -> Result<usize, String> {
    let t = text.trim().to_ascii_lowercase();
    let (digits, factor) = match t.strip_suffix('m') {
        Some(d) => (d, 1_000_000),
        None => match t.strip_suffix('k') {
            Some(d) => (d, 1_000),
            None => (t.as_str(), 1),
        },
    };
    match digits.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n * factor),
        _ => Err(format!("`{text}` is not a file count like 200k, 2m or 10m")),
    }
}

pub fn run(
    quick: bool,
    scenarios: &[String],
    replicators: &[String],
    scale: &[usize],
) -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "the bench must run as root: it mounts filesystems, creates network namespaces and loads BPF programs"
        );
    }
    let started = Instant::now();
    install_peers()?;
    crate::setup::run()?;
    // `SLUICE_BIN_DIR` (as for the tests) benchmarks prebuilt daemons, e.g. a
    // release under comparison, instead of building the workspace.
    let bin_dir = match std::env::var_os("SLUICE_BIN_DIR") {
        Some(dir) => {
            println!("bench: using the daemons in $SLUICE_BIN_DIR, not building");
            std::path::PathBuf::from(dir)
        }
        None => {
            crate::cargo::build(true)?;
            release_dir()
        }
    };
    let sizes = Sizes::new(quick, scale);

    let kinds: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| replicators.is_empty() || replicators.iter().any(|r| r.eq_ignore_ascii_case(k.name())))
        .collect();
    if kinds.is_empty() {
        anyhow::bail!("--replicators names none of sluice, rsync, lsyncd, syncthing");
    }
    let wants =
        |s: &str| scenarios.is_empty() || scenarios.iter().any(|w| w.eq_ignore_ascii_case(s));
    let rows = scenarios::run_all(&sizes, scenarios, &kinds, &bin_dir);
    let syscall_costs =
        (wants("S5") && kinds.contains(&Kind::Sluice)).then(|| syscost::run(&sizes, &bin_dir));
    // `--scale` asks for S7 even when --scenarios does not name it.
    let scale_runs = if wants("S7") || !scale.is_empty() {
        scale::run_all(&sizes.s7_files, &kinds, &bin_dir)
    } else {
        Vec::new()
    };
    let fanout = if wants("S8") {
        fanout::run(&sizes, &kinds, &bin_dir)
    } else {
        None
    };

    let date = sluice_tests::run("date +%F")?.trim().to_owned();
    let results = Results {
        date: date.clone(),
        quick,
        scenarios: scenarios.to_vec(),
        machine: machine_info(),
        versions: replicator::versions(&bin_dir),
        sizes: sizes.describe(),
        rows,
        syscall_costs,
        scale: scale_runs,
        fanout,
        wall_s: started.elapsed().as_secs_f64(),
    };
    let dir = workspace_root().join("bench/results").join(run_name(&date, quick, scenarios, scale));
    report::write(&dir, &results)?;
    println!("bench: report in {}", dir.join("report.md").display());
    Ok(())
}

/// The results directory of a run: a partial run (some scenarios, other tree
/// sizes) is written beside the full run of the day, not over it.
fn run_name(date: &str, quick: bool, scenarios: &[String], scale: &[usize]) -> String {
    let mut name = date.to_owned();
    if quick {
        name.push_str("-quick");
    }
    if !scenarios.is_empty() {
        name.push('-');
        name.push_str(&scenarios.join("-").to_ascii_lowercase());
    }
    for files in scale {
        name.push_str(&format!("-{files}-files"));
    }
    name
}

/// Installs the peers that are missing; `apt-get update` only when a plain install
/// fails (the package lists may simply be stale or absent).
fn install_peers() -> anyhow::Result<()> {
    let missing: Vec<&str> = PEERS
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).ends_with(" installed"))
        })
        .collect();
    if missing.is_empty() {
        println!("ok: {} already present", PEERS.join(", "));
        return Ok(());
    }
    let install = || {
        let mut c = Command::new("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing);
        c
    };
    if check(&mut install()).is_err() {
        check(Command::new("apt-get").arg("update")).context("apt-get update failed")?;
        check(&mut install()).with_context(|| format!("cannot install {}", missing.join(" ")))?;
    }
    Ok(())
}

fn machine_info() -> Vec<(String, String)> {
    let sh = |cmd: &str| {
        sluice_tests::run(cmd)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    vec![
        ("kernel".into(), sh("uname -sr")),
        (
            "cpu".into(),
            sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        ),
        ("cores".into(), sh("nproc")),
        (
            "memory".into(),
            sh("grep MemTotal /proc/meminfo | awk '{printf \"%.1f GiB\", $2/1048576}'"),
        ),
        (
            "os".into(),
            sh(". /etc/os-release && echo \"$PRETTY_NAME\""),
        ),
        (
            "load before run".into(),
            sh("cut -d' ' -f1-3 /proc/loadavg"),
        ),
        (
            "storage".into(),
            "ext4 on loop devices backed by sparse files in /tmp".into(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn partial_runs_do_not_overwrite_the_full_one() {
        let name = |q, s: &[&str], n: &[usize]| {
            super::run_name("2026-12-02", q, &s.iter().map(|x| x.to_string()).collect::<Vec<_>>(), n)
        };
        assert_eq!(name(false, &[], &[]), "2026-12-02");
        assert_eq!(name(true, &[], &[]), "2026-12-02-quick");
        assert_eq!(name(false, &["S7"], &[2_000_000]), "2026-12-02-s7-2000000-files");
        assert_eq!(name(true, &["S1", "S6"], &[]), "2026-12-02-quick-s1-s6");
    }
}
