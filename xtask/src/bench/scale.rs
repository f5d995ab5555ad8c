//! S7, scale: a tree of many 100-byte files (1,000 per directory). sluice starts
//! against an empty standby: how long until its eBPF capture is attached, until
//! it has listed the tree, until `sluice_initial_sync_complete 1`, its peak
//! memory, CPU on both sides, and then a restart on the unchanged tree. rsync
//! copies the same tree with `rsync -a` to an empty directory and runs again with
//! nothing changed (its scan time).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use sluice_tests::{FsKind, LoopFs, run as sh};

use super::procs::Proc;
use super::replicator::{Kind, Replicator};
use super::results::{RsyncScale, ScaleRun, SluiceScale};
use super::workload::wait_identical;

pub const FILES_PER_DIR: usize = 1000;
pub const FILE_BYTES: u64 = 100;
/// Up to this many files, ext4 as usual (4 KiB blocks) with an inode per block.
/// Beyond it, 1 KiB blocks and an inode per 2 KiB, so that 10 million files take
/// ~13 GiB per image rather than ~45 GiB.
const LARGE: usize = 2_000_000;

pub fn mkfs_options(files: usize) -> &'static str {
    if files <= LARGE {
        "-b 4096 -i 4096 -I 256"
    } else {
        "-b 1024 -i 2048 -I 256"
    }
}

/// 600 s per 200,000 files, at least 300 s.
pub fn limit(files: usize) -> Duration {
    Duration::from_secs((files as u64 * 600 / 200_000).max(300))
}

/// Image size: per file a data block, its inode and directory entries, plus room
/// for the journal; the image is sparse.
fn fs_mib(files: usize) -> u64 {
    let per_file = if files <= LARGE {
        5 * 1024
    } else {
        5 * 1024 / 2
    };
    files as u64 * per_file / (1 << 20) + 512
}

pub fn run_all(sizes: &[usize], kinds: &[Kind], bin_dir: &Path) -> Vec<ScaleRun> {
    let kinds: Vec<Kind> = kinds
        .iter()
        .copied()
        .filter(|k| matches!(k, Kind::Sluice | Kind::Rsync))
        .collect();
    if kinds.is_empty() {
        println!("bench: S7 runs sluice and rsync only; neither was asked for");
        return Vec::new();
    }
    sizes
        .iter()
        .map(|&files| {
            let dirs = files.div_ceil(FILES_PER_DIR);
            let mut run = ScaleRun {
                files,
                dirs,
                file_bytes: FILE_BYTES,
                mkfs_options: mkfs_options(files).into(),
                timeout_s: limit(files).as_secs_f64(),
                ..ScaleRun::default()
            };
            println!("bench: S7 {files} files in {dirs} dirs");
            if let Err(e) = measure(&mut run, &kinds, bin_dir) {
                eprintln!("bench: S7 {files}: {e:#}");
                run.error = Some(format!("{e:#}").chars().take(600).collect());
            }
            run
        })
        .collect()
}

fn measure(run: &mut ScaleRun, kinds: &[Kind], bin_dir: &Path) -> anyhow::Result<()> {
    let master =
        LoopFs::with_mkfs_options(FsKind::Ext4, fs_mib(run.files), mkfs_options(run.files))
            .context("master filesystem")?;
    let m = master.path();
    let started = Instant::now();
    write_tree(m, run.files)?;
    sh(&format!("sync -f '{}'", m.display()))?;
    run.write_s = started.elapsed().as_secs_f64();
    println!("bench:   tree written in {:.1} s", run.write_s);
    let limit = limit(run.files);
    if kinds.contains(&Kind::Sluice) {
        let mut out = SluiceScale::default();
        if let Err(e) = sluice(&mut out, m, run.files, limit, bin_dir) {
            eprintln!("bench: S7 {} sluice: {e:#}", run.files);
            out.error = Some(format!("{e:#}").chars().take(600).collect());
        }
        run.sluice = Some(out);
    }
    if kinds.contains(&Kind::Rsync) {
        let mut out = RsyncScale::default();
        if let Err(e) = rsync(&mut out, m, run.files, limit) {
            eprintln!("bench: S7 {} rsync: {e:#}", run.files);
            out.error = Some(format!("{e:#}").chars().take(600).collect());
        }
        run.rsync = Some(out);
    }
    Ok(())
}

/// `files` files of `FILE_BYTES` distinct bytes under `tree/dNNNNN/fNNNN`.
fn write_tree(root: &Path, files: usize) -> anyhow::Result<()> {
    let mut data = [0u8; FILE_BYTES as usize];
    for i in 0..files {
        let dir = root.join("tree").join(format!("d{:05}", i / FILES_PER_DIR));
        if i % FILES_PER_DIR == 0 {
            std::fs::create_dir_all(&dir)?;
        }
        let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for chunk in data.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let path = dir.join(format!("f{:04}", i % FILES_PER_DIR));
        std::fs::write(&path, data).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The sluice run: its standby filesystem lives only as long as this.
fn sluice(
    out: &mut SluiceScale,
    m: &Path,
    files: usize,
    limit: Duration,
    bin_dir: &Path,
) -> anyhow::Result<()> {
    let standby = LoopFs::with_mkfs_options(FsKind::Ext4, fs_mib(files), mkfs_options(files))
        .context("standby filesystem")?;
    let s = standby.path();
    println!("bench: S7 {files} sluice: starting against an empty standby");
    let start = Instant::now();
    // Returns once the agent's metrics answer, which it serves once capture is on.
    let mut r = Replicator::start(Kind::Sluice, m, s, bin_dir)?;
    out.capture_s = Some(start.elapsed().as_secs_f64());
    let pid = r.agent_pid().context("no agent pid")?;
    let log = r.agent_log().context("no agent log")?;
    out.rss_start_bytes = status_bytes(pid, "VmRSS").unwrap_or(0);
    let deadline = start + limit;
    let mut last_scrape = Instant::now();
    let mut last_report = Instant::now();
    loop {
        if out.listed_s.is_none()
            && let Some(line) = log_line(&log, 0, "comparing the tree with the standby")
        {
            out.listed_s = Some(start.elapsed().as_secs_f64());
            out.entries = field(&line, "entries").and_then(|v| v.parse().ok());
            println!(
                "bench:   tree listed after {:.1} s ({} entries)",
                start.elapsed().as_secs_f64(),
                out.entries.unwrap_or(0)
            );
        }
        if last_scrape.elapsed() >= Duration::from_millis(200) {
            last_scrape = Instant::now();
            if r.agent_metrics()
                .is_ok_and(|m| m.get("sluice_initial_sync_complete") == 1.0)
            {
                out.initial_sync_s = Some(start.elapsed().as_secs_f64());
                break;
            }
        }
        if last_report.elapsed() >= Duration::from_secs(30) {
            last_report = Instant::now();
            println!(
                "bench:   {:.0} s: {} files compared (agent log)",
                start.elapsed().as_secs_f64(),
                last_field(&log, 0, "files_compared").unwrap_or(0)
            );
        }
        if Instant::now() >= deadline {
            break;
        }
        r.check_alive()?;
        std::thread::sleep(Duration::from_millis(50));
    }
    out.vm_hwm_bytes = status_bytes(pid, "VmHWM").unwrap_or(0);
    let counters = r.counters()?;
    out.master_cpu_s = counters.master_cpu_s;
    out.standby_cpu_s = counters.standby_cpu_s;
    out.files_compared_logged = last_field(&log, 0, "files_compared");
    if let Ok(metrics) = r.agent_metrics() {
        const KEPT: &[&str] = &[
            "sluice_initial_sync_complete",
            "sluice_connected",
            "sluice_backlog_ops",
            "sluice_backlog_bytes",
            "sluice_ops_in_flight",
            "sluice_ops_sent",
            "sluice_ops_acked",
            "sluice_payload_bytes_sent",
            "sluice_wire_bytes_sent",
            "sluice_tree_compares",
            "sluice_rescans",
            "sluice_events_dropped",
            "sluice_lag_seconds",
        ];
        out.metrics_at_end = metrics
            .iter()
            .filter(|(series, _)| {
                let name = series.split('{').next().unwrap_or(series);
                let base = name.strip_suffix("_total").unwrap_or(name);
                KEPT.contains(&base)
            })
            .map(|(series, v)| (series.to_owned(), v))
            .collect();
    }
    match out.initial_sync_s {
        Some(t) => println!(
            "bench:   initial sync complete after {t:.1} s, agent peak {} MiB",
            out.vm_hwm_bytes >> 20
        ),
        None => {
            let reached = count_files(&s.join("tree"));
            out.standby_files_reached = Some(reached);
            println!(
                "bench:   initial sync not complete after {:.0} s: {reached} of {files} files on the standby; {:?}",
                limit.as_secs_f64(),
                out.metrics_at_end
            );
            r.stop();
            return Ok(());
        }
    }
    let diff = wait_identical(m, s, Duration::from_secs(30))?;
    if let Some(d) = &diff {
        eprintln!("bench: S7 {files}: standby not identical:\n{d}");
    }
    out.identical = Some(diff.is_none());

    // A restart on the unchanged tree: the agent's own "no-change scan".
    let offset = std::fs::metadata(&log).map_or(0, |m| m.len());
    let start = Instant::now();
    r.restart_agent()?;
    let live = r.wait_live(limit)?;
    out.restart_live_s = live.then(|| start.elapsed().as_secs_f64());
    out.restart_walk_s = last_field(&log, offset, "walk_seconds");
    out.restart_vm_hwm_bytes = r.agent_pid().and_then(|p| status_bytes(p, "VmHWM"));
    println!(
        "bench:   restart: live after {}",
        out.restart_live_s.map_or(
            format!("more than {:.0} s", limit.as_secs_f64()),
            |t| format!("{t:.1} s")
        )
    );
    r.stop();
    Ok(())
}

/// `rsync -a` to an empty filesystem, then the same with nothing changed.
fn rsync(out: &mut RsyncScale, m: &Path, files: usize, limit: Duration) -> anyhow::Result<()> {
    let target = LoopFs::with_mkfs_options(FsKind::Ext4, fs_mib(files), mkfs_options(files))
        .context("rsync's target filesystem")?;
    let work = tempfile::Builder::new()
        .prefix("sluice-bench-s7-")
        .tempdir()?;
    for noop in [false, true] {
        println!(
            "bench: S7 {files} rsync -a{}",
            if noop { ", nothing changed" } else { "" }
        );
        let mut command = std::process::Command::new("rsync");
        command
            .args(["-a", "--exclude=/lost+found"])
            .arg(format!("{}/", m.display()))
            .arg(format!("{}/", target.path().display()));
        let log = work.path().join("rsync.log");
        let start = Instant::now();
        let mut pass = Proc::spawn("rsync", command, &log)?;
        let (time, cpu) = match pass.wait_with_cpu(limit)? {
            Some((true, cpu)) => (Some(start.elapsed().as_secs_f64()), cpu),
            Some((false, _)) => {
                anyhow::bail!("rsync failed:\n{}", super::procs::tail(&log, 20))
            }
            None => (None, 0.0),
        };
        println!("bench:   {:?} s, {cpu:.2} s CPU", time);
        if noop {
            (out.noop_s, out.noop_cpu_s) = (time, cpu);
        } else {
            (out.copy_s, out.copy_cpu_s) = (time, cpu);
            if time.is_none() {
                break;
            }
        }
    }
    Ok(())
}

/// A `/proc/<pid>/status` field given in kB, in bytes.
fn status_bytes(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?;
    let kib: u64 = line.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// `text` without ANSI colour sequences (the daemons' log may have them).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
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

/// The log from byte `offset` on, without colours.
fn read_log(log: &Path, offset: u64) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    let from = (offset as usize).min(bytes.len());
    strip_ansi(&String::from_utf8_lossy(&bytes[from..]))
}

/// The first log line (from `offset`) containing `needle`.
fn log_line(log: &Path, offset: u64, needle: &str) -> Option<String> {
    read_log(log, offset)
        .lines()
        .find(|l| l.contains(needle))
        .map(str::to_owned)
}

/// The value of `key=value` in a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!("{key}="))?;
    line[at + key.len() + 1..].split_whitespace().next()
}

/// The last value logged (from `offset`) for `key`.
fn last_field<T: std::str::FromStr>(log: &Path, offset: u64, key: &str) -> Option<T> {
    read_log(log, offset)
        .lines()
        .rev()
        .find_map(|l| field(l, key)?.parse().ok())
}

/// Files (anything but directories) below `dir`.
fn count_files(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            Ok(_) => 1,
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_fields_of_coloured_log_lines() {
        let line = "\u{1b}[2m2026-12-02T12:00:00Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[2msluice_agent::session\u{1b}[0m\u{1b}[2m:\u{1b}[0m comparing the tree with the standby \u{1b}[3mentries\u{1b}[0m\u{1b}[2m=\u{1b}[0m200201 \u{1b}[3mreason\u{1b}[0m\u{1b}[2m=\u{1b}[0mno state";
        let plain = super::strip_ansi(line);
        assert!(plain.contains("comparing the tree with the standby"));
        assert_eq!(super::field(&plain, "entries"), Some("200201"));
        assert_eq!(
            super::field("walk_seconds=1.5 x", "walk_seconds"),
            Some("1.5")
        );
    }

    #[test]
    fn limits_scale_with_the_tree() {
        assert_eq!(super::limit(200_000).as_secs(), 600);
        assert_eq!(super::limit(50_000).as_secs(), 300);
        assert_eq!(super::limit(2_000_000).as_secs(), 6000);
    }
}
