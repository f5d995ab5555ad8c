//! Measures what the capture programs cost per run under a fixed load.
//!
//! `cargo run --release --example capture_cost -- DIR [ITERATIONS]` (root; DIR is
//! the watched root, best a loop-mounted scratch filesystem): starts the capture
//! on DIR, enables `kernel.bpf_stats_enabled`, then runs two loads in a child
//! process (the capture ignores its own process):
//! - `pwrite`: ITERATIONS 4 KiB `pwrite64`s to a file under DIR,
//! - `getppid`: ITERATIONS `getppid()`s, a syscall no program decodes,
//! - `devnull`: ITERATIONS 1-byte `write`s to `/dev/null` (what a write to a pipe
//!   or socket costs: the syscall is decoded, the file is elsewhere),
//!
//! and prints, for each load and each program of ours, the run count and the
//! average nanoseconds per run from `/proc/self/fdinfo/<prog fd>` (`run_cnt`,
//! `run_time_ns`). Every syscall of the system runs `sys_exit`, so other activity
//! on the machine is counted too; run it on an otherwise quiet host.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sluice_agent::capture::{Capture, CaptureOptions};

const PAGE: usize = 4096;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--load") {
        return load(&args[2], Path::new(&args[3]), args[4].parse()?);
    }
    let dir = PathBuf::from(
        args.get(1)
            .ok_or_else(|| anyhow::anyhow!("usage: capture_cost DIR [ITERATIONS]"))?,
    );
    let iterations: u64 = args.get(2).map_or(Ok(2_000_000), |s| s.parse())?;
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut capture = Capture::start(&dir, &CaptureOptions::default())?;
        let drain = tokio::spawn(async move {
            let mut events = Vec::new();
            loop {
                events.clear();
                if capture.next_batch(&mut events).await.is_err() {
                    return;
                }
            }
        });
        let names = program_names();
        for kind in ["pwrite", "getppid", "devnull"] {
            let before = stats();
            let start = Instant::now();
            let status = Command::new(std::env::current_exe()?)
                .args(["--load", kind])
                .arg(&dir)
                .arg(iterations.to_string())
                .status()?;
            anyhow::ensure!(status.success(), "load {kind} failed: {status}");
            let elapsed = start.elapsed();
            let after = stats();
            println!(
                "load {kind}: {iterations} calls in {:.2} s",
                elapsed.as_secs_f64()
            );
            let mut ids: Vec<&u32> = after.keys().collect();
            ids.sort();
            for id in ids {
                let (t1, c1) = after[id];
                let (t0, c0) = before.get(id).copied().unwrap_or((0, 0));
                let (dt, dc) = (t1 - t0, c1 - c0);
                let name = names.get(id).map_or("?", String::as_str);
                if dc > 0 {
                    println!(
                        "  {name:<24} runs {dc:>10}  {:>7.1} ns/run",
                        dt as f64 / dc as f64
                    );
                }
            }
        }
        drain.abort();
        anyhow::Ok(())
    })?;
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "0")?;
    Ok(())
}

/// `prog_id` → (`run_time_ns`, `run_cnt`) of every BPF program fd this process holds.
fn stats() -> HashMap<u32, (u64, u64)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(time), Some(count)) =
            (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
        {
            out.insert(id as u32, (time, count));
        }
    }
    out
}

fn program_names() -> HashMap<u32, String> {
    aya::programs::loaded_programs()
        .flatten()
        .filter_map(|p| Some((p.id(), p.name_as_str()?.to_owned())))
        .collect()
}

/// The load itself, in a child process.
fn load(kind: &str, dir: &Path, iterations: u64) -> anyhow::Result<()> {
    match kind {
        "pwrite" => {
            use std::os::unix::fs::FileExt as _;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .open(dir.join("capture-cost.dat"))?;
            let buf = vec![0x5a_u8; PAGE];
            for i in 0..iterations {
                file.write_all_at(&buf, (i % 256) * PAGE as u64)?;
            }
        }
        "devnull" => {
            use std::io::Write as _;
            let mut null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
            for _ in 0..iterations {
                null.write_all(b"x")?;
            }
        }
        _ => {
            for _ in 0..iterations {
                // SAFETY: getppid has no preconditions.
                unsafe { libc::syscall(libc::SYS_getppid) };
            }
        }
    }
    Ok(())
}
