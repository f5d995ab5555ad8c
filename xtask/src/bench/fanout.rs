//! S8, fan-out: what feeding three standbys costs the master against feeding
//! one. The same workload runs for sluice with one standby and with three (one
//! agent with a `[[standby]]` entry per standby, a receiver for each), and for
//! lsyncd with one target and with three (a `sync{}` per target): a tree written
//! before the replicator starts (the initial sync to empty standbys), then random
//! 4 KiB writes into every file of it. Each standby has a loop-mounted ext4 of
//! its own. Measured on the master side: CPU, bytes read (by read syscalls and
//! from the device), bytes sent per standby, and the time until every standby
//! matched the master.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use sluice_tests::{FsKind, LoopFs, Metrics};

use super::Sizes;
use super::replicator::{Counters, Kind, Replicator, standby_name};
use super::results::{Fanout, FanoutPhase, FanoutRun};
use super::workload::{Expect, random_writes, wait_converged_all, wait_identical, write_tree};

/// Standbys of the fan-out configuration, measured against one.
pub const STANDBYS: usize = 3;

/// The background verifier reads at a set rate per standby for as long as the
/// agent runs, whatever the workload: off, so the figures are the workload's.
const AGENT_EXTRA: &str = "[verify]\nbytes_per_second = 0\n";

pub fn run(sizes: &Sizes, kinds: &[Kind], bin_dir: &Path) -> Option<Fanout> {
    let kinds: Vec<Kind> = kinds
        .iter()
        .copied()
        .filter(|k| matches!(k, Kind::Sluice | Kind::Lsyncd))
        .collect();
    if kinds.is_empty() {
        println!("bench: S8 runs sluice and lsyncd only; neither was asked for");
        return None;
    }
    let mut out = Fanout {
        tree_bytes: sizes.s8_bytes,
        files: sizes.s8_files,
        written_files: sizes.s8_files,
        writes_per_file: sizes.s8_writes_per_file,
        timeout_s: sizes.s8_timeout.as_secs_f64(),
        runs: Vec::new(),
    };
    for &kind in &kinds {
        for standbys in [1, STANDBYS] {
            out.runs.push(run_one(kind, standbys, sizes, bin_dir));
        }
        print_ratios(&out, kind);
    }
    Some(out)
}

fn run_one(kind: Kind, standbys: usize, sizes: &Sizes, bin_dir: &Path) -> FanoutRun {
    println!(
        "bench: S8 fan-out: {} to {standbys} standby{}",
        kind.name(),
        if standbys == 1 { "" } else { "s" }
    );
    let started = Instant::now();
    let mut run = FanoutRun {
        replicator: kind,
        standbys,
        initial: None,
        writes: None,
        error: None,
    };
    if let Err(e) = measure(&mut run, sizes, bin_dir) {
        eprintln!("bench: S8 {} to {standbys}: {e:#}", kind.name());
        run.error = Some(format!("{e:#}").chars().take(600).collect());
    }
    println!("bench:   took {:.1} s", started.elapsed().as_secs_f64());
    run
}

fn measure(run: &mut FanoutRun, sizes: &Sizes, bin_dir: &Path) -> anyhow::Result<()> {
    let fs_mib = (sizes.s8_bytes >> 20) * 2 + 512;
    let master = LoopFs::new(FsKind::Ext4, fs_mib).context("master filesystem")?;
    let standby_fs = (0..run.standbys)
        .map(|i| LoopFs::new(FsKind::Ext4, fs_mib).with_context(|| format!("standby {i}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let standbys: Vec<PathBuf> = standby_fs.iter().map(|f| f.path().to_owned()).collect();
    let m = master.path();
    let timeout = sizes.s8_timeout;

    let per_file = sizes.s8_bytes / sizes.s8_files as u64;
    let (paths, total) = write_tree(m, "tree", 16, sizes.s8_files, |_| per_file)?;
    let expect = Expect::from_master(m, &paths, &[])?;
    // An hour old, as a tree being replicated usually is: rsync's quick check
    // compares mtimes in whole seconds, so a write within the second the file
    // was created in, at the same size, would be skipped (and lsyncd's standby
    // never match) for reasons that have nothing to do with fan-out.
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    for rel in &paths {
        std::fs::File::options()
            .write(true)
            .open(m.join(rel))?
            .set_modified(hour_ago)?;
    }
    // A cold page cache, so that reads from the device show what the replicator
    // had to fetch.
    evict(m, &paths)?;

    let since = Instant::now();
    let mut r = Replicator::start_fanout(run.replicator, m, &standbys, AGENT_EXTRA, bin_dir)?;
    // Everything since the processes started counts: for both, starting is the
    // initial sync.
    let (initial, after) = phase(
        &mut r,
        m,
        &standbys,
        &expect,
        since,
        &Counters::default(),
        total,
        timeout,
    )?;
    report_phase("initial sync", &initial);
    let synced = initial.all_converged_s().is_some();
    run.initial = Some(initial);
    if !synced {
        r.stop();
        return Ok(());
    }

    let (expect, written) = random_writes(m, &paths, sizes.s8_writes_per_file)?;
    let since = Instant::now();
    let (writes, _) = phase(
        &mut r, m, &standbys, &expect, since, &after, written, timeout,
    )?;
    report_phase("random writes", &writes);
    run.writes = Some(writes);
    r.stop();
    drop(standby_fs);
    drop(master);
    Ok(())
}

/// Waits until every standby holds `expect` (times from `since`), compares each
/// with the master in full, and returns the phase's figures from `before` on
/// with the counters at its end.
#[allow(clippy::too_many_arguments)]
fn phase(
    r: &mut Replicator,
    m: &Path,
    standbys: &[PathBuf],
    expect: &Expect,
    since: Instant,
    before: &Counters,
    data_bytes: u64,
    timeout: Duration,
) -> anyhow::Result<(FanoutPhase, Counters)> {
    let times = wait_converged_all(standbys, expect, since, timeout, || r.check_alive())?;
    let mut p = FanoutPhase {
        data_bytes,
        converged_s: times.iter().map(|t| t.map(|d| d.as_secs_f64())).collect(),
        ..FanoutPhase::default()
    };
    if p.all_converged_s().is_some() {
        // sluice: until the agent reports every standby's initial sync complete,
        // so what trails the data is counted too (lsyncd: at once).
        if !r.wait_synced(timeout)? {
            eprintln!("bench: S8 the agent did not report every standby in sync");
        }
        for s in standbys {
            let diff = wait_identical(m, s, Duration::from_secs(10))?;
            if let Some(diff) = &diff {
                eprintln!("bench: S8 {} not identical:\n{diff}", s.display());
            }
            p.identical.push(Some(diff.is_none()));
        }
    } else {
        p.identical = vec![None; standbys.len()];
        eprintln!(
            "bench: S8 {} did not converge; logs:\n{}",
            r.kind.name(),
            r.logs()
        );
    }
    let after = r.counters()?;
    p.master_cpu_s = after.master_cpu_s - before.master_cpu_s;
    p.standby_cpu_s = after.standby_cpu_s - before.standby_cpu_s;
    let read = after.master_read.since(before.master_read);
    p.read_syscall_bytes = read.rchar;
    p.read_device_bytes = read.read_bytes;
    p.lo_bytes = after.lo_bytes.saturating_sub(before.lo_bytes_after_scrape);
    if let Some(now) = &after.agent_metrics {
        let then = before.agent_metrics.as_ref();
        let delta = |f: &dyn Fn(&Metrics) -> f64| f(now) - then.map_or(0.0, f);
        p.agent_bytes_read = Some(delta(&|x| x.get("sluice_bytes_read_total")));
        p.agent_bytes_shared = Some(delta(&|x| x.get("sluice_bytes_shared_total")));
        p.agent_payload_bytes = Some(delta(&|x| x.get("sluice_payload_bytes_sent_total")));
        p.agent_verify_bytes = Some(delta(&|x| x.get("sluice_verify_bytes_total")));
        for i in 0..standbys.len() {
            let name = standby_name(i);
            p.standby_wire_bytes.push(delta(&|x| {
                labelled(x, "sluice_standby_wire_bytes_sent_total", &name)
            }));
            p.standby_payload_bytes.push(delta(&|x| {
                labelled(x, "sluice_standby_payload_bytes_sent_total", &name)
            }));
        }
    }
    Ok((p, after))
}

/// The value of `name{standby="<standby>"}` (other labels allowed).
fn labelled(metrics: &Metrics, name: &str, standby: &str) -> f64 {
    let label = format!("standby=\"{standby}\"");
    metrics
        .iter()
        .filter(|(series, _)| {
            series
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') && rest.contains(&label))
        })
        .map(|(_, v)| v)
        .sum()
}

/// Writes the master's dirty pages back, then drops the files' pages from the
/// page cache.
fn evict(root: &Path, paths: &[PathBuf]) -> anyhow::Result<()> {
    sluice_tests::run(&format!("sync -f '{}'", root.display()))?;
    for rel in paths {
        let path = root.join(rel);
        let file = std::fs::File::open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: a plain syscall on a descriptor this function owns.
        let err = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        anyhow::ensure!(err == 0, "posix_fadvise on {}: error {err}", path.display());
    }
    Ok(())
}

fn report_phase(what: &str, p: &FanoutPhase) {
    let mib = |b: f64| b / (1u64 << 20) as f64;
    println!(
        "bench:   {what}: {}, master CPU {:.2} s, read {:.1} MiB by syscalls ({:.1} MiB from the device{})",
        match p.all_converged_s() {
            Some(t) => format!("every standby matched after {t:.2} s"),
            None => "not every standby matched".into(),
        },
        p.master_cpu_s,
        mib(p.read_syscall_bytes as f64),
        mib(p.read_device_bytes as f64),
        p.agent_bytes_read.map_or(String::new(), |b| format!(
            ", agent metric {:.1} MiB; {:.1} MiB sent from reads shared between standbys",
            mib(b),
            mib(p.agent_bytes_shared.unwrap_or(0.0))
        ))
    );
}

/// Prints the ratios of the fan-out configuration to the single standby.
fn print_ratios(out: &Fanout, kind: Kind) {
    let (Some(one), Some(many)) = (out.run(kind, 1), out.run(kind, STANDBYS)) else {
        return;
    };
    for (what, a, b) in [
        ("initial sync", &one.initial, &many.initial),
        ("random writes", &one.writes, &many.writes),
    ] {
        let (Some(a), Some(b)) = (a, b) else {
            continue;
        };
        let r = |x: f64, y: f64| {
            if y > 0.0 {
                format!("{:.2}×", x / y)
            } else {
                "–".into()
            }
        };
        println!(
            "bench: S8 {} {what}, {STANDBYS} standbys ÷ 1: master CPU {}, bytes read {}",
            kind.name(),
            r(b.master_cpu_s, a.master_cpu_s),
            r(b.read_syscall_bytes as f64, a.read_syscall_bytes as f64)
        );
    }
}
