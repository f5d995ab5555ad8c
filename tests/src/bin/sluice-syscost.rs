//! `sluice-syscost`: times syscalls in the calling thread, for the bench's S5
//! (what the agent's capture adds to each call). Prints one JSON object with the
//! nanoseconds per call:
//!
//! - `getppid_ns`: `getppid()`, the cheapest syscall there is, so the fixed cost of
//!   the `sys_exit` tracepoint stands out;
//! - `pwrite_ns`: a 4 KiB `pwrite` at a random 4 KiB-aligned offset of a
//!   preallocated file (written once in full, so every write lands on a cached page);
//! - `fsync_ns` (and `pwrite_fsync_ns`, the pair): `fsync` after such a `pwrite`.
//!
//! Each loop runs in 20 batches and the figure is the median batch's time per
//! call, so a batch slowed down by another process taking the CPU does not move
//! it (the plain mean is reported beside it as `*_mean_ns`). A loop with 0
//! iterations is skipped and reported as `null`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde::Serialize;

const BLOCK: usize = 4096;
const BATCHES: u64 = 20;

#[derive(Parser)]
#[command(about = "Nanoseconds per getppid, 4 KiB pwrite and fsync, timed in the calling thread")]
struct Cli {
    /// Directory for the data file (`syscost.dat`, kept for the next run).
    #[arg(long, required_unless_present = "only_getppid")]
    dir: Option<PathBuf>,
    #[arg(long, default_value_t = 2_000_000)]
    getppid: u64,
    #[arg(long, default_value_t = 200_000)]
    pwrite: u64,
    /// `pwrite` + `fsync` pairs.
    #[arg(long, default_value_t = 2_000)]
    fsync: u64,
    /// Size of the data file.
    #[arg(long, default_value_t = 64)]
    file_mib: u64,
    /// Time `getppid` only (no file needed).
    #[arg(long)]
    only_getppid: bool,
}

#[derive(Serialize)]
struct Report {
    getppid_ns: Option<f64>,
    getppid_mean_ns: Option<f64>,
    pwrite_ns: Option<f64>,
    pwrite_mean_ns: Option<f64>,
    fsync_ns: Option<f64>,
    fsync_mean_ns: Option<f64>,
    /// `pwrite` + `fsync` pair, mean.
    pwrite_fsync_ns: Option<f64>,
    getppid_iterations: u64,
    pwrite_iterations: u64,
    fsync_iterations: u64,
    file: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut report = Report {
        getppid_ns: None,
        getppid_mean_ns: None,
        pwrite_ns: None,
        pwrite_mean_ns: None,
        fsync_ns: None,
        fsync_mean_ns: None,
        pwrite_fsync_ns: None,
        getppid_iterations: cli.getppid,
        pwrite_iterations: 0,
        fsync_iterations: 0,
        file: None,
    };
    if cli.getppid > 0 {
        let t = time_getppid(cli.getppid);
        (report.getppid_ns, report.getppid_mean_ns) = (Some(t.median), Some(t.mean));
    }
    if !cli.only_getppid && (cli.pwrite > 0 || cli.fsync > 0) {
        let dir = cli
            .dir
            .as_ref()
            .context("--dir is needed for pwrite and fsync")?;
        let path = dir.join("syscost.dat");
        let file = data_file(&path, cli.file_mib << 20)?;
        let blocks = (cli.file_mib << 20) / BLOCK as u64;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
        let mut buf = vec![0u8; BLOCK];
        rng.fill(&mut buf);
        if cli.pwrite > 0 {
            report.pwrite_iterations = cli.pwrite;
            let t = time_pwrite(&file, blocks, cli.pwrite, &mut rng, &mut buf)?;
            (report.pwrite_ns, report.pwrite_mean_ns) = (Some(t.median), Some(t.mean));
        }
        if cli.fsync > 0 {
            report.fsync_iterations = cli.fsync;
            let (t, pair) = time_fsync(&file, blocks, cli.fsync, &mut rng, &mut buf)?;
            (report.fsync_ns, report.fsync_mean_ns) = (Some(t.median), Some(t.mean));
            report.pwrite_fsync_ns = Some(pair);
        }
        report.file = Some(path);
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// ns per call: the median batch's and the mean over all.
struct PerCall {
    median: f64,
    mean: f64,
}

/// Runs `n` calls of `call(i)` in [`BATCHES`] batches; `call` returns the time to
/// count for it (`None`: the batch's wall time counts).
fn batched(
    n: u64,
    mut call: impl FnMut(u64) -> anyhow::Result<Option<Duration>>,
) -> anyhow::Result<PerCall> {
    let batch = n.div_ceil(BATCHES);
    let mut per_batch = Vec::new();
    let (mut total, mut done) = (Duration::ZERO, 0);
    while done < n {
        let len = batch.min(n - done);
        let mut counted = Duration::ZERO;
        let start = Instant::now();
        for i in done..done + len {
            if let Some(d) = call(i)? {
                counted += d;
            }
        }
        let elapsed = if counted.is_zero() {
            start.elapsed()
        } else {
            counted
        };
        per_batch.push(elapsed.as_nanos() as f64 / len as f64);
        total += elapsed;
        done += len;
    }
    per_batch.sort_by(f64::total_cmp);
    Ok(PerCall {
        median: per_batch[per_batch.len() / 2],
        mean: total.as_nanos() as f64 / n as f64,
    })
}

fn time_getppid(n: u64) -> PerCall {
    for _ in 0..n / 20 {
        unsafe { libc::getppid() };
    }
    let batch = n.div_ceil(BATCHES);
    let mut per_batch = Vec::new();
    let mut total = Duration::ZERO;
    let mut done = 0;
    while done < n {
        let len = batch.min(n - done);
        let start = Instant::now();
        for _ in 0..len {
            // black_box: the call is not hoisted out of the loop.
            std::hint::black_box(unsafe { libc::getppid() });
        }
        let elapsed = start.elapsed();
        per_batch.push(elapsed.as_nanos() as f64 / len as f64);
        total += elapsed;
        done += len;
    }
    per_batch.sort_by(f64::total_cmp);
    PerCall {
        median: per_batch[per_batch.len() / 2],
        mean: total.as_nanos() as f64 / n as f64,
    }
}

/// The data file, created and written in full once (so later writes overwrite
/// allocated, cached blocks); an existing one of the right size is reused.
fn data_file(path: &std::path::Path, len: u64) -> anyhow::Result<File> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == len) {
        return OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()));
    }
    let mut file =
        File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..len >> 20 {
        rng.fill(&mut chunk);
        file.write_all(&chunk)?;
    }
    file.sync_all()?;
    Ok(file)
}

fn pwrite_at(file: &File, buf: &[u8], offset: u64) -> anyhow::Result<()> {
    let n = unsafe {
        libc::pwrite(
            file.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            offset as libc::off_t,
        )
    };
    if n != buf.len() as isize {
        bail!("pwrite at {offset}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn offsets(rng: &mut Rng, blocks: u64, n: u64) -> Vec<u64> {
    (0..n)
        .map(|_| (rng.next() % blocks) * BLOCK as u64)
        .collect()
}

fn time_pwrite(
    file: &File,
    blocks: u64,
    n: u64,
    rng: &mut Rng,
    buf: &mut [u8],
) -> anyhow::Result<PerCall> {
    for offset in offsets(rng, blocks, (n / 20).max(1)) {
        pwrite_at(file, buf, offset)?;
    }
    let offsets = offsets(rng, blocks, n);
    batched(n, |i| {
        // Each write changes the block, so none is a no-op for a replicator.
        buf[..8].copy_from_slice(&i.to_le_bytes());
        pwrite_at(file, buf, offsets[i as usize])?;
        Ok(None)
    })
}

/// Returns ns per `fsync` and the mean ns per `pwrite` + `fsync` pair.
fn time_fsync(
    file: &File,
    blocks: u64,
    n: u64,
    rng: &mut Rng,
    buf: &mut [u8],
) -> anyhow::Result<(PerCall, f64)> {
    let offsets = offsets(rng, blocks, n);
    let start = Instant::now();
    let fsync = batched(n, |i| {
        buf[..8].copy_from_slice(&i.to_le_bytes());
        pwrite_at(file, buf, offsets[i as usize])?;
        let before = Instant::now();
        if unsafe { libc::fsync(file.as_raw_fd()) } != 0 {
            bail!("fsync: {}", std::io::Error::last_os_error());
        }
        Ok(Some(before.elapsed()))
    })?;
    Ok((fsync, start.elapsed().as_nanos() as f64 / n as f64))
}

/// xorshift64: offsets and data that are the same for every run with one seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}
