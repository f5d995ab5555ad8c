//! One master feeding several standbys: a slow standby and a cut one do not hold
//! back a healthy one, a standby started late gets its initial sync while the
//! others keep streaming, and `sluice-agent status` reports each standby.
//!
//! Measured figures are printed on lines starting with `fanout:`.

use crate::common::tail;
use sluice_tests::fanout::standby_value;
use sluice_tests::{
    Fanout, FanoutOptions, FsKind, LoopFs, Metrics, StandbySpec, compare_trees, random_bytes,
    wait_until, wait_until_identical,
};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// xorshift64*: a seeded, replayable stream of choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `count` files of `size` bytes under `<root>/data`, written whole.
fn preallocate(root: &Path, count: u64, size: u64, seed: u64) -> Vec<PathBuf> {
    fs::create_dir_all(root.join("data")).unwrap();
    (0..count)
        .map(|i| {
            let path = root.join(format!("data/file{i}.bin"));
            fs::write(&path, random_bytes(size as usize, seed + i)).unwrap();
            path
        })
        .collect()
}

/// A steady, paced, seeded load on the master: random pwrites of 4–64 KiB into
/// preallocated files, and now and then a small file created, renamed or removed
/// under `<root>/misc`. Counts the bytes it wrote.
struct Load {
    stopping: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<LoadReport>>,
}

#[derive(Debug, Default)]
struct LoadReport {
    written: u64,
    pwrites: u64,
    creates: u64,
    renames: u64,
    removes: u64,
}

impl Load {
    fn start(root: &Path, files: Vec<PathBuf>, bytes_per_second: u64, seed: u64) -> Load {
        let (stopping, written) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let misc = root.join("misc");
        fs::create_dir_all(&misc).unwrap();
        let (stop, written2) = (stopping.clone(), written.clone());
        let thread = std::thread::spawn(move || {
            let mut rng = Rng(seed.max(1));
            let handles: Vec<(fs::File, u64)> = files
                .iter()
                .map(|path| {
                    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
                    let size = file.metadata().unwrap().len();
                    (file, size)
                })
                .collect();
            let mut report = LoadReport::default();
            let mut names: Vec<PathBuf> = Vec::new();
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let choice = rng.below(100);
                if choice < 90 || (names.is_empty() && choice >= 96) {
                    let (file, size) = &handles[rng.below(handles.len() as u64) as usize];
                    let len = 4096 + rng.below(60 * 1024 + 1);
                    let offset = rng.below(size - len + 1);
                    file.write_all_at(&random_bytes(len as usize, rng.next()), offset).unwrap();
                    report.pwrites += 1;
                    report.written += len;
                } else if choice < 96 {
                    let len = 1 + rng.below(128 * 1024);
                    let path = misc.join(format!("new{}", report.creates));
                    fs::write(&path, random_bytes(len as usize, rng.next())).unwrap();
                    names.push(path);
                    report.creates += 1;
                    report.written += len;
                } else if choice < 98 {
                    let i = rng.below(names.len() as u64) as usize;
                    let to = misc.join(format!("renamed{}", report.renames));
                    fs::rename(&names[i], &to).unwrap();
                    names[i] = to;
                    report.renames += 1;
                } else {
                    let path = names.swap_remove(rng.below(names.len() as u64) as usize);
                    fs::remove_file(path).unwrap();
                    report.removes += 1;
                }
                written2.store(report.written, Ordering::Relaxed);
                // Paced on the bytes written so far, so the rate holds whatever
                // the size of each write.
                let due = Duration::from_secs_f64(report.written as f64 / bytes_per_second as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            report
        });
        Load { stopping, written, thread: Some(thread) }
    }

    /// Bytes written so far.
    fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Asks the writer to stop without waiting for it.
    fn finish(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    fn stop(mut self) -> LoadReport {
        self.finish();
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Load {
    /// A test that panics still stops the writer before its filesystem goes.
    fn drop(&mut self) {
        self.finish();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The value below which `q` of `values` lie (nearest rank).
fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn max(values: impl IntoIterator<Item = f64>) -> f64 {
    values.into_iter().fold(0.0, f64::max)
}

/// Sleeps until `next`, then moves it one sampling period on.
fn tick(next: &mut Instant) {
    if let Some(wait) = next.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    *next += SAMPLE_EVERY;
}

/// The agent's per-standby view, for failure messages.
fn standby_state(fanout: &Fanout) -> String {
    let Ok(m) = fanout.agent_metrics() else { return "agent metrics unavailable".into() };
    let names = [
        "sluice_standby_connected",
        "sluice_standby_initial_sync_complete",
        "sluice_standby_lag_seconds",
        "sluice_standby_lag_bytes",
        "sluice_standby_durable_seq",
        "sluice_standby_backlog_bytes",
        "sluice_standby_ahead",
        "sluice_standby_payload_bytes_sent_total",
    ];
    let mut lines = Vec::new();
    for i in 0..fanout.len() {
        let values: Vec<String> = names
            .iter()
            .map(|n| format!("{}={}", n.trim_start_matches("sluice_standby_"), fanout.standby_value(&m, n, i)))
            .collect();
        lines.push(format!("{}: {}", fanout.name(i), values.join(" ")));
    }
    lines.push(format!(
        "aggregate: lag_seconds={} initial_sync_complete={}",
        m.get("sluice_lag_seconds"),
        m.get("sluice_initial_sync_complete")
    ));
    lines.join("\n")
}

fn failure(fanout: &Fanout, e: anyhow::Error) -> String {
    format!(
        "{e:#}\n--- agent's view of its standbys ---\n{}\n--- agent log ---\n{}\n{}",
        standby_state(fanout),
        tail(&fanout.agent_log()),
        fanout.receiver_logs()
    )
}

/// Frame bytes the slow standby's receiver has read (through its limited link).
fn slow_received(fanout: &Fanout) -> f64 {
    let i = fanout.index_of("slow").unwrap();
    let m = fanout.receiver_metrics(i).unwrap_or_else(|e| panic!("{}", failure(fanout, e)));
    m.get("sluice_wire_bytes_received_total")
}

/// Connected, in sync and with nothing unacknowledged.
fn caught_up(fanout: &Fanout, m: &Metrics, i: usize) -> bool {
    fanout.standby_value(m, "sluice_standby_connected", i) == 1.0
        && fanout.standby_value(m, "sluice_standby_initial_sync_complete", i) == 1.0
        && fanout.standby_value(m, "sluice_standby_lag_bytes", i) == 0.0
}

/// Waits until every standby has caught up and holds a tree identical to the
/// master's (content and metadata), then compares once more.
fn converge_all(fanout: &Fanout, timeout: Duration) -> Metrics {
    let all = || -> anyhow::Result<bool> {
        let m = fanout.agent_metrics()?;
        Ok((0..fanout.len()).all(|i| caught_up(fanout, &m, i)) && m.get("sluice_initial_sync_complete") == 1.0)
    };
    wait_until("every standby to catch up", timeout, all).unwrap_or_else(|e| panic!("{}", failure(fanout, e)));
    for i in 0..fanout.len() {
        if let Err(e) = wait_until_identical(fanout.master(), fanout.standby(i), timeout) {
            panic!("{}", failure(fanout, e.context(format!("standby {}", fanout.name(i)))));
        }
    }
    for i in 0..fanout.len() {
        if let Err(diff) = compare_trees(fanout.master(), fanout.standby(i)) {
            panic!("standby {} differs from the master:\n{diff}", fanout.name(i));
        }
    }
    // Counters are sampled every 100 ms.
    std::thread::sleep(Duration::from_millis(300));
    fanout.agent_metrics().unwrap()
}

#[test]
fn three_standbys_slow_cut_and_healthy_all_converge() {
    const BACKLOG: u64 = 4 * MIB;
    const FILE_SIZE: u64 = 12 * MIB;
    const FILES: u64 = 8;
    const RATE: u64 = 1_500_000;
    const SLOW_MBIT: u32 = 4;
    const SEED: u64 = 0x5eed_fa40;
    // Timeline of the load, from its start.
    const SLOW_AT: Duration = Duration::from_secs(5);
    // The slow standby's rate is measured from this long after its link slowed,
    // once what its congestion window let through at the old speed is gone.
    const SLOW_SETTLED: Duration = Duration::from_secs(3);
    const CUT_AT: Duration = Duration::from_secs(8);
    const CUT_FOR: Duration = Duration::from_secs(10);
    const LOAD_FOR: Duration = Duration::from_secs(25);

    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let trees: Vec<LoopFs> = (0..3).map(|_| LoopFs::new(FsKind::Ext4, 256).unwrap()).collect();
    let files = preallocate(master.path(), FILES, FILE_SIZE, SEED);
    let (healthy, slow, cut) = (0, 1, 2);
    let options = FanoutOptions {
        agent_toml: format!("[durability]\nbacklog_bytes = {BACKLOG}\n"),
        ..FanoutOptions::named(&["healthy", "slow", "cut"], true)
    };
    let roots: Vec<&Path> = trees.iter().map(LoopFs::path).collect();
    let fanout = Fanout::start_with(master.path(), &roots, options).unwrap();
    let rss_synced = fanout.agent_rss_bytes().unwrap();

    let lag_of = |m: &Metrics, i| fanout.standby_value(m, "sluice_standby_lag_seconds", i);
    let payload_of = |m: &Metrics, i| fanout.standby_value(m, "sluice_standby_payload_bytes_sent_total", i);
    let before = fanout.agent_metrics().unwrap();
    let load = Load::start(master.path(), files, RATE, SEED);
    let started = Instant::now();
    let (mut baseline, mut disturbed) = (Vec::new(), Vec::new());
    let mut backlog_peak = [0f64; 3];
    let (mut slow_ahead_samples, mut rss_peak) = (0, rss_synced);
    let (mut slowed_at, mut slow_mark) = (None, None);
    let (mut at_cut, mut at_restore, mut at_caught_up) = (None, None, None);
    let mut next = Instant::now();
    let mut failed_scrapes = 0;
    while started.elapsed() < LOAD_FOR
        || (at_restore.is_some() && at_caught_up.is_none() && started.elapsed() < LOAD_FOR + Duration::from_secs(60))
    {
        tick(&mut next);
        let now = started.elapsed();
        if slowed_at.is_none() && now >= SLOW_AT {
            fanout.link(slow).unwrap().rate_limit(SLOW_MBIT).unwrap();
            slowed_at = Some(Instant::now());
        }
        if at_cut.is_none() && now >= CUT_AT {
            let m = fanout.agent_metrics().unwrap();
            fanout.link(cut).unwrap().cut().unwrap();
            at_cut = Some((Instant::now(), load.written(), payload_of(&m, cut)));
        }
        let m = match fanout.agent_metrics() {
            Ok(m) => m,
            Err(e) if failed_scrapes > 20 => panic!("{}", failure(&fanout, e)),
            Err(_) => {
                failed_scrapes += 1;
                continue;
            }
        };
        if slow_mark.is_none() && now >= SLOW_AT + SLOW_SETTLED {
            slow_mark = Some((Instant::now(), slow_received(&fanout)));
        }
        if at_restore.is_none() && now >= CUT_AT + CUT_FOR {
            fanout.link(cut).unwrap().restore().unwrap();
            let worst = max((0..3).map(|i| lag_of(&m, i)));
            at_restore = Some((Instant::now(), load.written(), lag_of(&m, cut), worst, m.get("sluice_lag_seconds")));
        }
        if let Some((restored, ..)) = at_restore
            && at_caught_up.is_none()
            && restored.elapsed() > SAMPLE_EVERY
            && lag_of(&m, cut) < 0.5
            && fanout.standby_value(&m, "sluice_standby_lag_bytes", cut) < (2 * MIB) as f64
            && fanout.standby_value(&m, "sluice_standby_connected", cut) == 1.0
            && fanout.standby_value(&m, "sluice_standby_initial_sync_complete", cut) == 1.0
        {
            at_caught_up = Some((restored.elapsed(), load.written(), payload_of(&m, cut)));
        }
        if now < LOAD_FOR {
            let samples = if slowed_at.is_none() { &mut baseline } else { &mut disturbed };
            samples.push(lag_of(&m, healthy));
        }
        for (i, peak) in backlog_peak.iter_mut().enumerate() {
            *peak = peak.max(fanout.standby_value(&m, "sluice_standby_backlog_bytes", i));
        }
        slow_ahead_samples += (fanout.standby_value(&m, "sluice_standby_ahead", slow) == 1.0) as usize;
        rss_peak = rss_peak.max(fanout.agent_rss_bytes().unwrap_or(0));
        if now >= LOAD_FOR {
            load.finish();
        }
    }
    let report = load.stop();
    let load_seconds = started.elapsed().as_secs_f64().min(LOAD_FOR.as_secs_f64());
    let (marked, slow_at_mark) = slow_mark.unwrap();
    let slow_received_bytes = slow_received(&fanout) - slow_at_mark;
    let slow_seconds = marked.elapsed().as_secs_f64();
    // Everything was streamed; now the slow link is lifted so the end does not
    // wait for 4 Mbit/s to carry the slow standby's ranges.
    fanout.link(slow).unwrap().clear_rate_limit().unwrap();
    let after = converge_all(&fanout, Duration::from_secs(90));

    let (_, written_at_cut, payload_at_cut) = at_cut.unwrap();
    let (_, written_at_restore, cut_lag_at_restore, worst_lag_at_restore, aggregate_lag_at_restore) = at_restore.unwrap();
    let (caught_up_after, written_at_caught_up, payload_at_caught_up) = at_caught_up.unwrap_or_else(|| {
        panic!("{}", failure(&fanout, anyhow::anyhow!("standby `cut` did not catch up within 60 s of the restore")))
    });
    let changed_during_cut = (written_at_restore - written_at_cut) as f64;
    let changed_until_caught_up = (written_at_caught_up - written_at_cut) as f64;
    let cut_payload = payload_at_caught_up - payload_at_cut;
    let (base_p50, base_p99, base_max) = (quantile(&baseline, 0.5), quantile(&baseline, 0.99), max(baseline.iter().copied()));
    let (run_p50, run_p99, run_max) = (quantile(&disturbed, 0.5), quantile(&disturbed, 0.99), max(disturbed.iter().copied()));
    let slow_rate = slow_received_bytes * 8.0 / slow_seconds / 1e6;
    let tree_bytes = (FILES * FILE_SIZE) as f64;
    println!(
        "fanout: load {:.1} s at {:.2} MB/s, seed {SEED:#x}: {} bytes written ({} pwrites, {} creates, {} renames, {} removes) into {} MiB of files",
        load_seconds,
        report.written as f64 / load_seconds / 1e6,
        report.written,
        report.pwrites,
        report.creates,
        report.renames,
        report.removes,
        (FILES * FILE_SIZE) >> 20
    );
    println!(
        "fanout: healthy lag p50/p99/max {base_p50:.3}/{base_p99:.3}/{base_max:.3} s undisturbed ({} samples), \
         {run_p50:.3}/{run_p99:.3}/{run_max:.3} s with slow and cut ({} samples)",
        baseline.len(),
        disturbed.len()
    );
    println!(
        "fanout: cut: {changed_during_cut} bytes written during the {:.0} s cut, {changed_until_caught_up} until it caught up \
         {caught_up_after:.1?} after the restore; {cut_payload} bytes of content sent in that window ({:.2}x the bytes written during the cut, \
         {:.2}x the bytes written until caught up); lag {cut_lag_at_restore:.1} s at the restore (aggregate lag {aggregate_lag_at_restore:.1} s)",
        CUT_FOR.as_secs_f64(),
        cut_payload / changed_during_cut,
        cut_payload / changed_until_caught_up
    );
    println!(
        "fanout: slow ({SLOW_MBIT} Mbit/s): its receiver read {slow_received_bytes} bytes of frames in {slow_seconds:.1} s ({slow_rate:.2} Mbit/s), \
         ahead in {slow_ahead_samples} samples, backlog peak {} bytes (bound {BACKLOG}); backlog peaks healthy {} cut {}",
        backlog_peak[slow], backlog_peak[healthy], backlog_peak[cut]
    );
    println!(
        "fanout: agent RSS {} MiB after the initial sync, peak {} MiB sampled during the run; {} file bytes read on the master, \
         content sent healthy/slow/cut {}/{}/{} bytes",
        rss_synced >> 20,
        rss_peak >> 20,
        after.get("sluice_bytes_read_total") - before.get("sluice_bytes_read_total"),
        payload_of(&after, healthy) - payload_of(&before, healthy),
        payload_of(&after, slow) - payload_of(&before, slow),
        payload_of(&after, cut) - payload_of(&before, cut)
    );

    // The healthy standby streams as if the other two were not there.
    assert!(baseline.len() >= 30 && disturbed.len() >= 150, "too few samples: the agent's /metrics was unreachable");
    assert!(run_p99 < 1.0, "healthy lag p99 {run_p99:.3} s while another standby was slow or cut");
    assert!(
        run_p99 <= 4.0 * base_p99 + 0.3,
        "healthy lag p99 {run_p99:.3} s with slow and cut against {base_p99:.3} s undisturbed"
    );
    // The cut one was seen as behind, then resumed with what changed.
    assert!(cut_lag_at_restore >= 5.0, "lag of the cut standby {cut_lag_at_restore} s after a {CUT_FOR:?} cut");
    assert!(
        aggregate_lag_at_restore >= worst_lag_at_restore - 0.5,
        "sluice_lag_seconds {aggregate_lag_at_restore} is not the worst standby's {worst_lag_at_restore}"
    );
    assert!(
        cut_payload <= 2.0 * changed_until_caught_up + 2.0 * MIB as f64,
        "the cut standby was sent {cut_payload} bytes for {changed_until_caught_up} written from the cut until it caught up"
    );
    assert!(cut_payload < tree_bytes / 2.0, "the cut standby was sent {cut_payload} bytes: a resend of the tree ({tree_bytes})");
    // The slow one went ahead, kept its memory bound and used its link.
    assert!(slow_ahead_samples > 0, "the slow standby never kept its changes as ranges (sluice_standby_ahead)");
    for (i, peak) in backlog_peak.iter().enumerate() {
        assert!(*peak <= (BACKLOG + 2 * MIB) as f64, "standby {i} held {peak} bytes in memory, bound {BACKLOG}");
    }
    // Busy all along (ranges kept its link full), and really held to its rate
    // (unlimited, it would have taken the whole load).
    assert!(
        slow_rate > 0.5 * SLOW_MBIT as f64 && slow_rate < 1.25 * SLOW_MBIT as f64,
        "the slow standby received {slow_rate:.2} Mbit/s over a {SLOW_MBIT} Mbit/s link"
    );
    assert!(rss_peak < 256 * MIB, "agent RSS reached {} MiB", rss_peak >> 20);
}

#[test]
fn a_standby_added_later_gets_an_initial_sync_while_the_others_stream() {
    const FILE_SIZE: u64 = 16 * MIB;
    const RATE: u64 = 500_000;
    const SEED: u64 = 0x1a7e;
    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let first = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let late = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let (m, l) = (master.path(), late.path());
    let files = preallocate(m, 4, FILE_SIZE, SEED);
    fs::create_dir(m.join("small")).unwrap();
    for i in 0..200 {
        fs::write(m.join(format!("small/f{i}")), random_bytes(4096, 500 + i)).unwrap();
    }
    // The late standby holds a stale partial copy: three of the four large files,
    // half the small ones (one drifted) and a file the master never had.
    fs::create_dir_all(l.join("data")).unwrap();
    fs::create_dir(l.join("small")).unwrap();
    for path in &files[..3] {
        let relative = path.strip_prefix(m).unwrap();
        fs::copy(path, l.join(relative)).unwrap();
    }
    for i in 0..100 {
        fs::copy(m.join(format!("small/f{i}")), l.join(format!("small/f{i}"))).unwrap();
    }
    fs::write(l.join("small/f7"), b"drifted").unwrap();
    fs::write(l.join("only-on-late"), b"stale").unwrap();
    let missing = (FILE_SIZE + 100 * 4096) as f64;
    let tree_bytes = (4 * FILE_SIZE + 200 * 4096) as f64;

    let options = FanoutOptions {
        standbys: vec![StandbySpec::new("first"), StandbySpec::new("late").deferred()],
        ..FanoutOptions::default()
    };
    let mut fanout = Fanout::start_with(m, &[first.path(), l], options).unwrap();
    let (one, two) = (0, 1);
    let load = Load::start(m, files, RATE, SEED);
    let mut lags = Vec::new();
    let mut sample = |fanout: &Fanout| -> Metrics {
        let m = fanout.agent_metrics().unwrap();
        lags.push(fanout.standby_value(&m, "sluice_standby_lag_seconds", one));
        m
    };
    let mut next = Instant::now();
    let alone = Instant::now();
    let mut metrics = Metrics::default();
    while alone.elapsed() < Duration::from_secs(4) {
        tick(&mut next);
        metrics = sample(&fanout);
    }
    // Four seconds with one standby unreachable: the agent runs and says so.
    assert!(fanout.agent().is_running(), "{}", tail(&fanout.agent_log()));
    assert_eq!(fanout.standby_value(&metrics, "sluice_standby_connected", one), 1.0, "{}", standby_state(&fanout));
    assert_eq!(fanout.standby_value(&metrics, "sluice_standby_connected", two), 0.0, "{}", standby_state(&fanout));
    assert_eq!(fanout.standby_value(&metrics, "sluice_standby_initial_sync_complete", two), 0.0);
    assert_eq!(metrics.get("sluice_initial_sync_complete"), 0.0, "not every standby is in sync");
    let written_before = load.written();
    fanout.start_receiver(two).unwrap();
    let joined = Instant::now();
    let mut synced_after = None;
    while synced_after.is_none_or(|at: Duration| joined.elapsed() < at + Duration::from_secs(2)) {
        tick(&mut next);
        let metrics = sample(&fanout);
        if synced_after.is_none() && fanout.standby_value(&metrics, "sluice_standby_initial_sync_complete", two) == 1.0 {
            synced_after = Some(joined.elapsed());
        }
        if joined.elapsed() > Duration::from_secs(60) {
            panic!("{}", failure(&fanout, anyhow::anyhow!("the late standby was not in sync 60 s after it started")));
        }
    }
    let report = load.stop();
    let after = converge_all(&fanout, Duration::from_secs(60));

    let synced_after = synced_after.unwrap();
    let late_payload = fanout.standby_value(&after, "sluice_standby_payload_bytes_sent_total", two);
    let (p99, worst) = (quantile(&lags, 0.99), max(lags.iter().copied()));
    println!(
        "fanout: late standby: in sync {synced_after:.1?} after it started, {late_payload} bytes of content sent to it \
         ({missing} missing from its stale copy, {} written by the load, {written_before} of them before it started); \
         lag of the first standby p99 {p99:.3} s, max {worst:.3} s over {} samples",
        report.written,
        lags.len()
    );
    assert!(p99 < 1.0, "the first standby's lag p99 was {p99:.3} s while the late one synced");
    // What it lacked, plus what was written, each write rounded out to whole
    // blocks when compared (a write of 4 KiB can make a 64 KiB block differ).
    assert!(
        late_payload <= missing + 4.0 * report.written as f64 + 4.0 * MIB as f64,
        "the late standby was sent {late_payload} bytes: more than what it lacked ({missing}) and what was written ({})",
        report.written
    );
    assert!(late_payload < tree_bytes, "the late standby was sent {late_payload} bytes: the whole tree ({tree_bytes}) again");
    assert!(!l.join("only-on-late").exists());
}

#[test]
fn the_agent_reports_each_standby_in_status_json() {
    let master = LoopFs::new(FsKind::Ext4, 128).unwrap();
    let trees = [LoopFs::new(FsKind::Ext4, 128).unwrap(), LoopFs::new(FsKind::Ext4, 128).unwrap()];
    fs::write(master.path().join("file"), random_bytes(100_000, 1)).unwrap();
    let options = FanoutOptions::named(&["lan", "offsite"], false);
    let mut fanout = Fanout::start_with(master.path(), &[trees[0].path(), trees[1].path()], options).unwrap();

    let entry = |status: &serde_json::Value, name: &str| -> serde_json::Value {
        let standbys = status["standbys"].as_array().unwrap_or_else(|| panic!("no `standbys` array: {status:#}"));
        assert_eq!(standbys.len(), 2, "{status:#}");
        standbys.iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no standby `{name}`: {status:#}")).clone()
    };
    let status = fanout.agent_status_json().unwrap();
    for i in 0..2 {
        let s = entry(&status, fanout.name(i));
        assert_eq!(s["address"], fanout.address(i).to_string(), "{s:#}");
        assert_eq!(s["connected"], true, "{s:#}");
        assert_eq!(s["synced"], true, "{s:#}");
        assert!(s["lag_seconds"].is_number() && s["lag_bytes"].is_u64() && s["durable_seq"].is_u64(), "{s:#}");
    }

    fanout.stop_receiver(1).unwrap();
    let gone = fanout.wait_for_standby(1, "standby offsite to be seen as disconnected", Duration::from_secs(30), |m| {
        standby_value(m, "sluice_standby_connected", "offsite") == Some(0.0)
    });
    gone.unwrap_or_else(|e| panic!("{}", failure(&fanout, e)));
    let status = fanout.agent_status_json().unwrap();
    let (lan, offsite) = (entry(&status, "lan"), entry(&status, "offsite"));
    println!("fanout: status with one standby stopped: {}", serde_json::to_string(&status["standbys"]).unwrap());
    assert_eq!(lan["connected"], true, "{status:#}");
    assert_eq!(offsite["connected"], false, "{status:#}");
    assert_eq!(offsite["synced"], false, "{status:#}");
}

/// The harness itself, needing no agent: numbered links come up side by side,
/// each reachable at its own address, and `rate_limit` holds a TCP stream to
/// the rate while another link stays fast; a cut link carries nothing until
/// restored.
#[test]
fn standby_links_are_independent_and_rate_limited() {
    use sluice_tests::netns::StandbyLink;
    let links: Vec<StandbyLink> = (1..=3).map(|k| StandbyLink::numbered(k).unwrap()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    // A sink in each namespace counting what it receives. The sockets are closed
    // before the links are dropped: an open socket would keep its namespace alive.
    let sinks: Vec<(Arc<AtomicU64>, std::thread::JoinHandle<()>)> = links
        .iter()
        .map(|link| {
            let addr = SocketAddr::new(link.standby_addr(), 5001);
            let listener = link.run_inside(move || TcpListener::bind(addr)).unwrap().unwrap();
            listener.set_nonblocking(true).unwrap();
            let (received, stop) = (Arc::new(AtomicU64::new(0)), stop.clone());
            let received2 = received.clone();
            let thread = std::thread::spawn(move || {
                let mut readers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            stream.set_nonblocking(false).unwrap();
                            let counter = received2.clone();
                            readers.push(std::thread::spawn(move || {
                                let mut buf = vec![0u8; 1 << 16];
                                while let Ok(n @ 1..) = stream.read(&mut buf) {
                                    counter.fetch_add(n as u64, Ordering::Relaxed);
                                }
                            }));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
                // Every sender has closed its end by now.
                readers.into_iter().for_each(|r| r.join().unwrap());
            });
            (received, thread)
        })
        .collect();

    // Mbit/s of a TCP stream over link `i`, counted at the receiving end over
    // `window` after one second of warm-up.
    let measure = |i: usize, window: Duration| -> f64 {
        let addr = SocketAddr::new(links[i].standby_addr(), 5001);
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let done2 = done.clone();
        let sender = std::thread::spawn(move || {
            let chunk = vec![0x5au8; 1 << 16];
            while !done2.load(Ordering::Relaxed) && stream.write_all(&chunk).is_ok() {}
        });
        std::thread::sleep(Duration::from_secs(1));
        let (start, from) = (Instant::now(), sinks[i].0.load(Ordering::Relaxed));
        std::thread::sleep(window);
        let bytes = sinks[i].0.load(Ordering::Relaxed) - from;
        let mbit = bytes as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e6;
        done.store(true, Ordering::Relaxed);
        sender.join().unwrap();
        mbit
    };
    links[1].rate_limit(4).unwrap();
    let limited = measure(1, Duration::from_secs(3));
    let free = measure(0, Duration::from_secs(1));
    links[1].rate_limit(20).unwrap();
    let raised = measure(1, Duration::from_secs(2));
    links[1].clear_rate_limit().unwrap();
    let cleared = measure(1, Duration::from_secs(1));
    links[1].clear_rate_limit().unwrap();

    links[2].cut().unwrap();
    let addr = SocketAddr::new(links[2].standby_addr(), 5001);
    let while_cut = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
    links[2].restore().unwrap();
    wait_until("the restored link to carry a connection", Duration::from_secs(10), || {
        Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())
    })
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    sinks.into_iter().for_each(|(_, thread)| thread.join().unwrap());
    println!(
        "fanout: links: tbf 4 Mbit/s carried {limited:.2} Mbit/s of TCP payload, 20 Mbit/s carried {raised:.2}, \
         an unlimited link {free:.0}, the cleared link {cleared:.0}"
    );
    assert!(while_cut.is_err(), "a cut link carried a connection");
    assert!((3.4..=4.6).contains(&limited), "a 4 Mbit/s limit carried {limited:.2} Mbit/s");
    assert!((17.0..=23.0).contains(&raised), "a 20 Mbit/s limit carried {raised:.2} Mbit/s");
    assert!(free > 100.0 && cleared > 100.0, "unlimited links carried {free:.0} and {cleared:.0} Mbit/s");
}
