//! S1, the big mutable file: random 4 KiB writes at a fixed rate (the writer
//! catches up in bursts when a sleep overshoots), with a marker (a
//! unique 16-byte value at a page no other write touches) every 100 ms, and a
//! poller that preads the standby's copy every millisecond to time when each
//! marker becomes readable there.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sluice_tests::random_bytes;

use super::Sizes;
use super::replicator::Kind;
use super::results::Lag;
use super::scenarios::Outcome;
use super::workload::Expect;

const PAGE: u64 = 4096;
/// Markers live on every 64th page; random writes skip those pages, so a marker is
/// never overwritten and its presence on the standby means exactly its own write.
const MARKER_STRIDE: u64 = 64;
const MARKER_EVERY: Duration = Duration::from_millis(100);
const FILE: &str = "big.img";

struct Marker {
    offset: u64,
    value: [u8; 16],
    written: Instant,
}

/// The case name of one load, as the report shows it.
pub fn case(rate: u64) -> String {
    let mut digits = rate.to_string();
    if rate >= 1_000 {
        digits.insert(digits.len() - 3, ',');
    }
    format!("random 4 KiB writes, {digits}/s")
}

pub fn workload(
    master: &Path,
    standby: &Path,
    kind: Kind,
    sizes: &Sizes,
    (rate, secs): (u64, u64),
) -> anyhow::Result<Outcome> {
    let file = OpenOptions::new()
        .write(true)
        .open(master.join(FILE))
        .context("cannot open the master's big file")?;
    let pages = sizes.s1_file / PAGE;
    let duration = Duration::from_secs(secs);
    let (tx, rx) = mpsc::channel::<Marker>();
    // rsync only replicates after the workload, so waiting for its markers during
    // it would measure nothing; its lag is the pass that follows.
    let grace = if kind == Kind::Rsync {
        Duration::ZERO
    } else {
        sizes.s1_grace
    };
    let standby_file = standby.join(FILE);
    let start = Instant::now();
    let poller = std::thread::spawn(move || poll(&standby_file, rx, start, duration + grace));

    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut state = 0x1234_5678_9abc_def1u64 ^ std::process::id() as u64;
    let mut writes = 0u64;
    let mut markers = 0u64;
    let mut next_write = start;
    let mut next_marker = start;
    let nonce = random_bytes(8, start.elapsed().as_nanos() as u64 ^ state);
    while start.elapsed() < duration {
        let now = Instant::now();
        if now >= next_marker && markers < pages / MARKER_STRIDE {
            let mut value = [0u8; 16];
            value[..8].copy_from_slice(&nonce);
            value[8..].copy_from_slice(&markers.to_le_bytes());
            let offset = markers * MARKER_STRIDE * PAGE;
            file.write_all_at(&value, offset)?;
            let _ = tx.send(Marker {
                offset,
                value,
                written: Instant::now(),
            });
            markers += 1;
            next_marker += MARKER_EVERY;
        }
        if now >= next_write {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut page = state % pages;
            if page.is_multiple_of(MARKER_STRIDE) {
                page += 1;
            }
            file.write_all_at(&random_bytes(PAGE as usize, state), page * PAGE)?;
            writes += 1;
            next_write += interval;
        }
        let wake = next_write.min(next_marker);
        if let Some(pause) = wake.checked_duration_since(Instant::now()) {
            std::thread::sleep(pause);
        }
    }
    let end = Instant::now();
    // Closing is part of the workload: lsyncd reacts to close-after-write only, so
    // a file kept open is not replicated by it until then.
    drop(file);
    drop(tx);
    let (points, last_seen) = poller
        .join()
        .map_err(|_| anyhow::anyhow!("poller panicked"))?;
    let all_seen = points.len() as u64 == markers;
    let mut lag = Lag::from_points(points, markers as usize);
    lag.writes_per_s = writes as f64 / end.duration_since(start).as_secs_f64();
    let converged = if all_seen {
        Some(last_seen.map_or(Duration::ZERO, |t| t.saturating_duration_since(end)))
    } else {
        None
    };
    Ok(Outcome {
        expect: Expect::from_master(master, &[PathBuf::from(FILE)], &[])?,
        changed_bytes: writes * PAGE + markers * 16,
        lag: Some((lag, converged)),
        write_s: None,
        last_change: None,
    })
}

/// Checks pending markers on the standby every millisecond until all arrived and
/// the writer is done, or `limit` after `start`. Returns (write time in s since
/// `start`, lag in ms) per marker seen, and when the last one was seen.
fn poll(
    path: &Path,
    rx: mpsc::Receiver<Marker>,
    start: Instant,
    limit: Duration,
) -> (Vec<(f64, f64)>, Option<Instant>) {
    let mut pending: Vec<Marker> = Vec::new();
    let mut points = Vec::new();
    let mut last_seen = None;
    let mut writer_done = false;
    let mut buf = [0u8; 16];
    loop {
        loop {
            match rx.try_recv() {
                Ok(m) => pending.push(m),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    writer_done = true;
                    break;
                }
            }
        }
        if !pending.is_empty() {
            // Reopened each round: peers replace the file by renaming a temp copy.
            if let Ok(file) = File::open(path) {
                let now = Instant::now();
                pending.retain(|m| {
                    let arrived = file.read_exact_at(&mut buf, m.offset).is_ok() && buf == m.value;
                    if arrived {
                        points.push((
                            m.written.duration_since(start).as_secs_f64(),
                            now.duration_since(m.written).as_secs_f64() * 1e3,
                        ));
                        last_seen = Some(now);
                    }
                    !arrived
                });
            }
        }
        if (writer_done && pending.is_empty()) || start.elapsed() > limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    (points, last_seen)
}
