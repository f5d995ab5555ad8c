//! Scenarios S1–S4 and S6: for one replicator, a fresh master and standby, the scenario's
//! data and workload, and the measurements around it ([`run_case`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use sluice_tests::{FsKind, LoopFs};

use super::Sizes;
use super::procs::{device_written_bytes, loop_device};
use super::replicator::{Counters, Kind, Replicator};
use super::results::{Lag, Row};
use super::s1;
use super::workload::{
    Expect, copy_tree, spread, wait_converged, wait_identical, write_file, write_tree,
    write_tree_expecting,
};

/// What a workload leaves for the measurement to check.
pub struct Outcome {
    pub expect: Expect,
    pub changed_bytes: u64,
    /// S1 only: lags already measured, and the time from the last write until the
    /// last marker showed up.
    pub lag: Option<(Lag, Option<Duration>)>,
    /// S6 only: how long the write took.
    pub write_s: Option<f64>,
    /// When the workload's last change was made, if it did more after it (such
    /// as reading the expectation from the master's files, which for many
    /// files takes long enough for a replicator to converge meanwhile).
    pub last_change: Option<Instant>,
}

/// When the clock starts and what runs before it.
pub enum Mode {
    /// Start the replicator, wait until it is live, then run the workload; time is
    /// measured from the workload's last write.
    Continuous,
    /// The workload happens before the replicator starts; time is measured from its
    /// start (initial sync).
    Initial,
}

type Prepare<'a> = &'a dyn Fn(&Path, &Path) -> anyhow::Result<()>;
type Workload<'a> = &'a dyn Fn(&Path, &Path, Kind) -> anyhow::Result<Outcome>;

/// One replicator through one case. Failures become a row with the error rather
/// than ending the bench, so one broken peer does not hide the others' numbers.
#[allow(clippy::too_many_arguments)]
pub fn run_case(
    scenario: &'static str,
    case: &str,
    kind: Kind,
    sizes: &Sizes,
    fs_mib: u64,
    mode: Mode,
    prepare: Prepare,
    workload: Workload,
    bin_dir: &Path,
) -> Row {
    println!("bench: {scenario} {case}: {}", kind.name());
    let started = Instant::now();
    let mut row = Row {
        scenario,
        case: case.to_owned(),
        replicator: kind,
        converged_s: None,
        timeout_s: sizes.timeout.as_secs_f64(),
        identical: None,
        changed_bytes: 0,
        lo_bytes: 0,
        agent_wire_bytes: None,
        standby_written_bytes: 0,
        master_cpu_s: 0.0,
        standby_cpu_s: 0.0,
        lag: None,
        write_s: None,
        error: None,
    };
    if let Err(e) = measure(&mut row, sizes, fs_mib, mode, prepare, workload, bin_dir) {
        eprintln!("bench: {scenario} {case} {}: {e:#}", kind.name());
        row.error = Some(format!("{e:#}").chars().take(600).collect());
    }
    println!("bench:   took {:.1} s", started.elapsed().as_secs_f64());
    row
}

#[allow(clippy::too_many_arguments)]
fn measure(
    row: &mut Row,
    sizes: &Sizes,
    fs_mib: u64,
    mode: Mode,
    prepare: Prepare,
    workload: Workload,
    bin_dir: &Path,
) -> anyhow::Result<()> {
    let kind = row.replicator;
    let master = LoopFs::new(FsKind::Ext4, fs_mib).context("master filesystem")?;
    let standby = LoopFs::new(FsKind::Ext4, fs_mib).context("standby filesystem")?;
    let (m, s) = (master.path(), standby.path());
    let device = loop_device(standby.image())?;
    prepare(m, s).context("preparing the data")?;
    let timeout = if row.scenario == "S6" {
        sizes.s6_timeout
    } else {
        sizes.timeout
    };
    row.timeout_s = timeout.as_secs_f64();

    let (mut replicator, before, written_before, outcome, since) = match mode {
        Mode::Continuous => {
            let mut r = Replicator::start(kind, m, s, bin_dir)?;
            if !r.wait_live(timeout)? {
                anyhow::bail!("not live after {timeout:?}:\n{}", r.logs());
            }
            let before = r.counters()?;
            let written = device_written_bytes(&device, s)?;
            let outcome = workload(m, s, kind)?;
            let since = outcome.last_change.unwrap_or_else(Instant::now);
            (r, before, written, outcome, since)
        }
        Mode::Initial => {
            let outcome = workload(m, s, kind)?;
            let written = device_written_bytes(&device, s)?;
            let since = Instant::now();
            let r = Replicator::start(kind, m, s, bin_dir)?;
            (r, Counters::default(), written, outcome, since)
        }
    };
    row.changed_bytes = outcome.changed_bytes;
    row.write_s = outcome.write_s;
    if outcome.lag.is_some() {
        // S1's limit is how long markers are looked for after the writes stop.
        row.timeout_s = sizes.s1_grace.as_secs_f64();
    }

    // rsync's clock starts with its pass: it is a scheduled tool, and the time
    // until its schedule fires is not counted against it.
    let since = if kind == Kind::Rsync && matches!(mode, Mode::Continuous) {
        Instant::now()
    } else {
        since
    };
    let pass = replicator.periodic_pass(timeout)?;
    let converged = match (&outcome.lag, pass) {
        (_, None) => None,
        // rsync's pass is its lag: it runs once, after the writes.
        (Some(_), Some(pass)) if kind == Kind::Rsync => Some(pass),
        (Some((_, last_marker)), _) => *last_marker,
        (None, Some(_)) => wait_converged(s, &outcome.expect, since, timeout, || {
            replicator.check_alive()
        })?,
    };
    row.converged_s = converged.map(|d| d.as_secs_f64());
    row.lag = outcome.lag.map(|(lag, _)| match (kind, converged) {
        (Kind::Rsync, Some(pass)) => {
            let ms = pass.as_secs_f64() * 1e3;
            Lag {
                p50_ms: ms,
                p99_ms: ms,
                max_ms: ms,
                seen: lag.total,
                total: lag.total,
                points: Vec::new(),
                periodic_pass: true,
                writes_per_s: lag.writes_per_s,
            }
        }
        _ => lag,
    });

    if converged.is_some() {
        // Content, metadata and layout, with a short grace for what trails the data the
        // convergence check looks at (S1 checks markers, and rsync under lsyncd may
        // still be writing the rest of the file); before the counters, so they
        // cover the whole replication.
        let diff = wait_identical(m, s, Duration::from_secs(10))?;
        if let Some(diff) = &diff {
            eprintln!("bench: {} not identical:\n{diff}", kind.name());
        }
        row.identical = Some(diff.is_none());
    }
    let after = replicator.counters()?;
    row.lo_bytes = after.lo_bytes.saturating_sub(before.lo_bytes_after_scrape);
    row.agent_wire_bytes = after
        .agent_wire_bytes
        .map(|a| a - before.agent_wire_bytes.unwrap_or(0.0));
    row.master_cpu_s = after.master_cpu_s - before.master_cpu_s;
    row.standby_cpu_s = after.standby_cpu_s - before.standby_cpu_s;
    row.standby_written_bytes = device_written_bytes(&device, s)? - written_before;
    if converged.is_none() {
        eprintln!(
            "bench: {} did not converge; logs:\n{}",
            kind.name(),
            replicator.logs()
        );
    }
    replicator.stop();
    drop(standby);
    drop(master);
    Ok(())
}

/// S6's file, written in 1 MiB writes from a 64 MiB random pattern read at a
/// shifting offset, so no compressor window sees a repeat.
fn write_sequential(path: &Path, len: u64) -> anyhow::Result<Duration> {
    use std::io::Write;
    const CHUNK: usize = 1 << 20;
    let pattern = sluice_tests::random_bytes(64 << 20, len ^ 0x5e9);
    let mut file = std::fs::File::create(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let started = Instant::now();
    let mut written = 0u64;
    let mut shift = 0usize;
    while written < len {
        let n = CHUNK.min((len - written) as usize);
        // Any offset up to 63 MiB leaves a whole chunk in the pattern.
        shift = (shift + 7 * 4096 + 123) % (pattern.len() - CHUNK);
        file.write_all(&pattern[shift..shift + n])
            .with_context(|| format!("cannot write {}", path.display()))?;
        written += n as u64;
    }
    drop(file);
    Ok(started.elapsed())
}

/// Every case of S1–S4 and S6 in the order they run, for `kinds`.
pub fn run_all(sizes: &Sizes, wanted: &[String], kinds: &[Kind], bin_dir: &Path) -> Vec<Row> {
    let want = |s: &str| wanted.is_empty() || wanted.iter().any(|w| w.eq_ignore_ascii_case(s));
    let mut rows = Vec::new();
    let fs_for = |bytes: u64| (bytes >> 20) * 2 + 512;
    for sc in ["S1", "S2", "S3", "S4", "S6"] {
        if !want(sc) {
            continue;
        }
        for &kind in kinds {
            if sc == "S1" {
                for &load in &sizes.s1_loads {
                    rows.push(run_case(
                        "S1",
                        &s1::case(load.0),
                        kind,
                        sizes,
                        fs_for(sizes.s1_file),
                        Mode::Continuous,
                        &|m: &Path, s: &Path| {
                            write_file(&m.join("big.img"), sizes.s1_file)?;
                            copy_tree(m, s)
                        },
                        &|m: &Path, s: &Path, k: Kind| s1::workload(m, s, k, sizes, load),
                        bin_dir,
                    ));
                }
            }
            if sc == "S6" {
                rows.push(run_case(
                    "S6",
                    &format!("sequential write of {} MiB", sizes.s6_bytes >> 20),
                    kind,
                    sizes,
                    fs_for(sizes.s6_bytes),
                    Mode::Continuous,
                    &|_: &Path, _: &Path| Ok(()),
                    &|m: &Path, _: &Path, _: Kind| {
                        let path = PathBuf::from("sequential.bin");
                        let took = write_sequential(&m.join(&path), sizes.s6_bytes)?;
                        let last_change = Some(Instant::now());
                        Ok(Outcome {
                            expect: Expect::from_master(m, &[path], &[])?,
                            changed_bytes: sizes.s6_bytes,
                            lag: None,
                            write_s: Some(took.as_secs_f64()),
                            last_change,
                        })
                    },
                    bin_dir,
                ));
            }
            if sc == "S2" {
                rows.push(run_case(
                    "S2",
                    &format!("{} small files", sizes.s2_files),
                    kind,
                    sizes,
                    1024,
                    Mode::Continuous,
                    &|_: &Path, _: &Path| Ok(()),
                    &|m: &Path, _: &Path, _: Kind| {
                        let (expect, total) =
                            write_tree_expecting(m, "small", sizes.s2_dirs, sizes.s2_files, |i| {
                                spread(i, 1024, 16 * 1024)
                            })?;
                        let last_change = Some(Instant::now());
                        Ok(Outcome {
                            expect,
                            changed_bytes: total,
                            lag: None,
                            write_s: None,
                            last_change,
                        })
                    },
                    bin_dir,
                ));
            }
            if sc == "S3" {
                let per_file = sizes.s3_bytes / sizes.s3_files as u64;
                rows.push(run_case(
                    "S3",
                    &format!("rename dir ({} files)", sizes.s3_files),
                    kind,
                    sizes,
                    fs_for(sizes.s3_bytes),
                    Mode::Continuous,
                    &|m: &Path, s: &Path| {
                        write_tree(m, "tree", 10, sizes.s3_files, |_| per_file)?;
                        copy_tree(m, s)
                    },
                    &|m: &Path, _: &Path, _: Kind| {
                        let paths: Vec<PathBuf> = (0..sizes.s3_files)
                            .map(|i| {
                                Path::new("tree")
                                    .join(format!("d{:04}", i % 10))
                                    .join(format!("f{i:06}.bin"))
                            })
                            .collect();
                        let before = Expect::from_master(m, &paths, &[])?;
                        std::fs::rename(m.join("tree"), m.join("moved"))?;
                        let last_change = Some(Instant::now());
                        Ok(Outcome {
                            expect: before.moved(
                                Path::new("tree"),
                                Path::new("moved"),
                                &[PathBuf::from("tree")],
                            ),
                            changed_bytes: 0,
                            lag: None,
                            write_s: None,
                            last_change,
                        })
                    },
                    bin_dir,
                ));
                rows.push(run_case(
                    "S3",
                    "rename one big file",
                    kind,
                    sizes,
                    fs_for(sizes.s3_big),
                    Mode::Continuous,
                    &|m: &Path, s: &Path| {
                        write_file(&m.join("big.bin"), sizes.s3_big)?;
                        copy_tree(m, s)
                    },
                    &|m: &Path, _: &Path, _: Kind| {
                        std::fs::rename(m.join("big.bin"), m.join("big-moved.bin"))?;
                        let last_change = Some(Instant::now());
                        Ok(Outcome {
                            expect: Expect::from_master(
                                m,
                                &[PathBuf::from("big-moved.bin")],
                                &[PathBuf::from("big.bin")],
                            )?,
                            changed_bytes: 0,
                            lag: None,
                            write_s: None,
                            last_change,
                        })
                    },
                    bin_dir,
                ));
            }
            if sc == "S4" {
                for stale in [false, true] {
                    let case = if stale {
                        "90%-identical standby"
                    } else {
                        "empty standby"
                    };
                    let per_file = sizes.s4_bytes / sizes.s4_files as u64;
                    rows.push(run_case(
                        "S4",
                        case,
                        kind,
                        sizes,
                        fs_for(sizes.s4_bytes),
                        Mode::Initial,
                        &|_: &Path, _: &Path| Ok(()),
                        &|m: &Path, s: &Path, _: Kind| {
                            let (paths, total) =
                                write_tree(m, "tree", 16, sizes.s4_files, |_| per_file)?;
                            if stale {
                                copy_tree(m, s)?;
                                // Every tenth file differs: 10% of the bytes are stale, and
                                // a day older, as a copy left from yesterday would be (so
                                // rsync's size+mtime check cannot mistake it for current).
                                let yesterday =
                                    std::time::SystemTime::now() - Duration::from_secs(86_400);
                                for p in paths.iter().step_by(10) {
                                    write_file(&s.join(p), per_file)?;
                                    std::fs::File::options()
                                        .write(true)
                                        .open(s.join(p))?
                                        .set_modified(yesterday)?;
                                }
                            }
                            Ok(Outcome {
                                expect: Expect::from_master(m, &paths, &[])?,
                                changed_bytes: total,
                                lag: None,
                                write_s: None,
                                last_change: None,
                            })
                        },
                        bin_dir,
                    ));
                }
            }
        }
    }
    rows
}
