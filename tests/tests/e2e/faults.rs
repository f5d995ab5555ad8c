//! Faults: a cut link, daemons killed mid-stream, a full standby, a flooded ring
//! buffer, changes made while the agent was down. Each ends with identical trees
//! and reports what was resent against what changed, and how long recovery took.

use crate::common::{converge, idle, sh, tail};
use sluice_tests::{FsKind, LoopFs, Pair, PairOptions, random_bytes, wait_until};
use std::fs;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const BLOCK: f64 = 64.0 * 1024.0;

/// Random 4 KiB writes into `file` at about `per_second` until `stop`; counts them.
fn steady_writes(path: std::path::PathBuf, size: u64, per_second: u64, stop: Arc<AtomicBool>, count: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let file = fs::OpenOptions::new().write(true).open(path).unwrap();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        while !stop.load(Ordering::Relaxed) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let offset = (state % (size / 4096)) * 4096;
            file.write_all_at(&random_bytes(4096, state), offset).unwrap();
            count.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_micros(1_000_000 / per_second));
        }
    })
}

fn delta(pair: &Pair, before: &sluice_tests::Metrics, name: &str) -> f64 {
    pair.agent_metrics().unwrap().get(name) - before.get(name)
}

/// Lag and backlog as the agent reports them while the standby is unreachable.
fn sample_outage(pair: &Pair) -> (f64, f64) {
    let m = pair.agent_metrics().unwrap();
    (m.get("sluice_lag_seconds"), m.get("sluice_backlog_bytes"))
}

#[test]
fn link_cut_for_ten_seconds_during_writes() {
    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let data = master.path().join("data.img");
    fs::write(&data, random_bytes(64 * MIB as usize, 1)).unwrap();
    // A small memory bound, so the outage outgrows it and collapses into ranges.
    let agent_toml = "[durability]\nbacklog_bytes = 262144\n".to_string();
    let options = PairOptions { standby_netns: true, agent_toml, ..PairOptions::default() };
    let pair = Pair::start_with(master.path(), standby.path(), options).unwrap();
    let before = converge(&pair, Duration::from_secs(60));

    let (stop, count) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let writer = steady_writes(data.clone(), 64 * MIB, 200, stop.clone(), count.clone());
    std::thread::sleep(Duration::from_secs(2));
    pair.link().unwrap().cut().unwrap();
    let mut peak_backlog = 0f64;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        peak_backlog = peak_backlog.max(sample_outage(&pair).1);
    }
    let (lag_at_restore, _) = sample_outage(&pair);
    pair.link().unwrap().restore().unwrap();
    let restored = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let after = converge(&pair, Duration::from_secs(60));
    let recovery = restored.elapsed();

    let changed = count.load(Ordering::Relaxed) as f64 * 4096.0;
    let payload = after.get("sluice_payload_bytes_sent_total") - before.get("sluice_payload_bytes_sent_total");
    let compares = after.get("sluice_tree_compares_total") - before.get("sluice_tree_compares_total");
    eprintln!(
        "link cut: {changed} bytes changed, {payload} bytes of data sent ({:.2}x), lag {lag_at_restore:.1} s when the link came back, \
         backlog peak {peak_backlog} bytes in memory, converged {recovery:.1?} after the link came back, {compares} tree comparisons",
        payload / changed
    );
    assert!(lag_at_restore >= 5.0, "lag during the outage was {lag_at_restore} s");
    assert!(peak_backlog <= (256 * 1024 + MIB) as f64, "backlog held {peak_backlog} bytes, bound 256 KiB");
    assert_eq!(compares, 0.0, "the backlog drained without comparing the tree");
    // Ranges written twice during the outage are sent once; what was sent in the
    // second before the agent saw acknowledgements stop is sent again.
    assert!(payload <= changed * 1.1 + MIB as f64, "resent {payload} for {changed} changed");
}

#[test]
fn agent_killed_during_an_outage_resends_exactly_its_journal() {
    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let m = master.path();
    let data = m.join("data.img");
    fs::write(&data, random_bytes(64 * MIB as usize, 5)).unwrap();
    sh(m, "mkdir -p tree/moved && for i in $(seq 1 100); do head -c 65536 /dev/urandom > tree/moved/f$i; done && for i in $(seq 1 1000); do echo $i > tree/small$i; done");
    let options = PairOptions { standby_netns: true, ..PairOptions::default() };
    let mut pair = Pair::start_with(m, standby.path(), options).unwrap();
    converge(&pair, Duration::from_secs(60));

    pair.link().unwrap().cut().unwrap();
    let file = fs::OpenOptions::new().write(true).open(&data).unwrap();
    let mut changed = 0u64;
    for i in 0..500u64 {
        file.write_all_at(&random_bytes(4096, 1000 + i), (i * 7919 % 16384) * 4096).unwrap();
        changed += 4096;
    }
    fs::rename(m.join("tree/moved"), m.join("moved-out")).unwrap();
    // Past the journal's slack, so the restart trusts the journal for these.
    std::thread::sleep(Duration::from_secs(4));
    pair.kill_agent().unwrap();
    pair.link().unwrap().restore().unwrap();
    pair.start_agent().unwrap();
    let restarted = Instant::now();
    let after = converge(&pair, Duration::from_secs(60));
    let payload = after.get("sluice_payload_bytes_sent_total");
    eprintln!(
        "agent kill -9 during an outage: {changed} bytes changed and a 6.4 MB directory moved; after the restart {payload} bytes of data sent \
         ({:.2}x), {} operations resent, {} files verified, {} tree comparisons, converged in {:.1?}",
        payload / changed as f64,
        after.get("sluice_ops_resent_total"),
        after.get("sluice_files_verified_total"),
        after.get("sluice_tree_compares_total"),
        restarted.elapsed()
    );
    assert_eq!(after.get("sluice_tree_compares_total"), 0.0, "{}", tail(&pair.agent_log()));
    assert_eq!(after.get("sluice_files_verified_total"), 0.0);
    assert!(payload <= changed as f64 * 1.05, "sent {payload} for {changed} changed: the move must cost no data");
    assert!(pair.standby().join("moved-out/f100").exists());
}

#[test]
fn agent_stopped_while_one_file_changed_verifies_only_that_file() {
    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let m = master.path();
    for i in 0..20 {
        fs::write(m.join(format!("file{i}")), random_bytes(2 * MIB as usize, 200 + i)).unwrap();
    }
    let mut pair = Pair::start(m, standby.path()).unwrap();
    converge(&pair, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(3));
    pair.stop_agent().unwrap();
    let file = fs::OpenOptions::new().write(true).open(m.join("file3")).unwrap();
    file.write_all_at(b"changed while nobody watched", 5 * 64 * 1024 + 7).unwrap();
    pair.start_agent().unwrap();
    let after = converge(&pair, Duration::from_secs(60));
    let payload = after.get("sluice_payload_bytes_sent_total");
    eprintln!(
        "agent down, one file changed: {payload} bytes sent, {} files verified, {} tree comparisons",
        after.get("sluice_files_verified_total"),
        after.get("sluice_tree_compares_total")
    );
    assert_eq!(after.get("sluice_tree_compares_total"), 0.0, "{}", tail(&pair.agent_log()));
    assert_eq!(after.get("sluice_files_verified_total"), 1.0);
    assert_eq!(payload, BLOCK);
}

#[test]
fn agent_killed_mid_stream_then_restarted() {
    let master = LoopFs::new(FsKind::Ext4, 512).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 512).unwrap();
    let mut pair = Pair::start(master.path(), standby.path()).unwrap();
    let big = master.path().join("big.bin");
    let file = fs::File::create(&big).unwrap();
    for i in 0..32u64 {
        file.write_all_at(&random_bytes(4 * MIB as usize, i), i * 4 * MIB).unwrap();
        if i == 16 {
            pair.kill_agent().unwrap();
        }
    }
    let changed = 128.0 * MIB as f64;
    pair.start_agent().unwrap();
    let restarted = Instant::now();
    let after = converge(&pair, Duration::from_secs(120));
    let payload = after.get("sluice_payload_bytes_sent_total");
    eprintln!("agent kill -9: {changed} bytes written, {payload} sent after the restart, converged in {:.1?}", restarted.elapsed());
    assert!(payload <= changed + BLOCK, "the restarted agent sent {payload} for {changed}");
}

#[test]
fn receiver_killed_mid_apply_then_restarted() {
    let master = LoopFs::new(FsKind::Ext4, 512).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 512).unwrap();
    let mut pair = Pair::start(master.path(), standby.path()).unwrap();
    let big = master.path().join("big.bin");
    fs::write(&big, random_bytes(128 * MIB as usize, 3)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    pair.kill_receiver().unwrap();
    let killed_after = pair.agent_metrics().unwrap().get("sluice_payload_bytes_sent_total");
    pair.start_receiver().unwrap();
    let restarted = Instant::now();
    let after = converge(&pair, Duration::from_secs(120));
    let total = after.get("sluice_payload_bytes_sent_total");
    let changed = 128.0 * MIB as f64;
    // The agent notices the dead peer at the QUIC idle timeout and resends what
    // the receiver had not made durable.
    eprintln!(
        "receiver kill -9: {changed} bytes changed, {total} bytes of data sent in all ({:.2}x; {killed_after} before the kill), converged {:.1?} after the restart",
        total / changed,
        restarted.elapsed()
    );
    // Everything sent before the kill may be sent again (none of it was durable
    // yet), and a writeback thread may redirty a large folio (2 MiB on ext4)
    // that was already read, which is read and sent once more.
    let redirtied = 2.0 * (2 * MIB) as f64;
    assert!(total <= 2.0 * changed + redirtied, "sent {total} for {changed} changed");
    assert!(restarted.elapsed() < Duration::from_secs(30), "recovery took {:.1?}", restarted.elapsed());
}

#[test]
fn full_standby_reports_and_resumes_when_space_is_freed() {
    let master = LoopFs::new(FsKind::Ext4, 512).unwrap();
    let standby_fs = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let standby = standby_fs.path().join("replica");
    fs::create_dir(&standby).unwrap();
    // Something else on the standby's filesystem takes most of the space.
    sh(standby_fs.path(), "fallocate -l 180MiB ballast");
    let pair = Pair::start(master.path(), &standby).unwrap();
    fs::write(master.path().join("too-big"), random_bytes(100 * MIB as usize, 4)).unwrap();
    let pair = &pair;
    wait_until("the receiver to report the full disk", Duration::from_secs(60), || {
        Ok(pair.receiver_log().contains("No space left on device"))
    })
    .unwrap();
    assert!(pair.receiver_metrics().unwrap().get("sluice_ops_refused_total") >= 1.0);
    fs::remove_file(standby_fs.path().join("ballast")).unwrap();
    let freed = Instant::now();
    converge(pair, Duration::from_secs(120));
    eprintln!("disk full: converged {:.1?} after space was freed", freed.elapsed());
}

#[test]
fn flooded_ring_buffer_is_detected_and_repaired() {
    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let options = PairOptions { agent_toml: "[capture]\nring_buffer_bytes = 4096\n".into(), ..PairOptions::default() };
    let pair = Pair::start_with(master.path(), standby.path(), options).unwrap();
    sh(master.path(), "mkdir flood && cd flood && for i in $(seq 1 3000); do echo $i > f$i; done && mv f1 renamed && rm f2");
    let metrics = converge(&pair, Duration::from_secs(120));
    let dropped = metrics.get("sluice_events_dropped_total");
    eprintln!("flood: {dropped} events dropped, {} rescans", metrics.get("sluice_rescans_total"));
    assert!(dropped > 0.0, "the flood did not overflow a 4 KiB ring buffer");
    assert!(metrics.get("sluice_rescans_total") >= 1.0);
    assert!(pair.agent_log().contains("ring buffer overflowed"), "{}", tail(&pair.agent_log()));
}

#[test]
fn changes_while_the_agent_was_down_send_only_what_changed() {
    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let m = master.path();
    for i in 0..20 {
        fs::write(m.join(format!("file{i}")), random_bytes(2 * MIB as usize, 100 + i)).unwrap();
    }
    let mut pair = Pair::start(m, standby.path()).unwrap();
    converge(&pair, Duration::from_secs(60));
    pair.stop_agent().unwrap();
    let file = fs::OpenOptions::new().write(true).open(m.join("file3")).unwrap();
    file.write_all_at(b"changed while nobody watched", 5 * 64 * 1024 + 7).unwrap();
    fs::write(m.join("new-file"), random_bytes(100_000, 7)).unwrap();
    fs::remove_file(m.join("file9")).unwrap();
    fs::rename(m.join("file4"), m.join("file4-renamed")).unwrap();
    pair.start_agent().unwrap();
    let before = sluice_tests::Metrics::default();
    let started = Instant::now();
    let after = converge(&pair, Duration::from_secs(60));
    let _ = idle(&pair, Duration::from_secs(10));
    let payload = delta(&pair, &before, "sluice_payload_bytes_sent_total");
    let expected = BLOCK + 100_000.0 + 2.0 * MIB as f64;
    eprintln!("agent down: sent {payload} bytes (block + new file + renamed file {expected}), converged in {:.1?}", started.elapsed());
    // A rename while the agent is down looks like a new file: sent whole.
    assert!(payload <= expected, "sent {payload}, expected at most {expected}");
    assert!(after.get("sluice_initial_sync_complete") == 1.0);
}
