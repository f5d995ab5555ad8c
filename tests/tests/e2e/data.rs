//! Random 4 KiB writes into a 256 MiB file; files larger than the agent's
//! memory bounds, at initial sync and written at once while streaming.

use crate::common::converge;
use sluice_tests::{FsKind, LoopFs, Pair, compare_trees, random_bytes};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::time::Duration;

const FILE_SIZE: u64 = 256 << 20;
const WRITES: u64 = 500;
const WRITE_SIZE: u64 = 4096;

fn random_writes_cost_what_they_change(kind: FsKind) {
    let master = LoopFs::new(kind, 768).unwrap();
    let standby = LoopFs::new(kind, 768).unwrap();
    let big = master.path().join("vm.img");
    let file = OpenOptions::new().create(true).write(true).truncate(true).open(&big).unwrap();
    for (i, chunk) in (0..FILE_SIZE).step_by(16 << 20).enumerate() {
        file.write_all_at(&random_bytes(16 << 20, i as u64), chunk).unwrap();
    }
    file.sync_all().unwrap();
    let pair = Pair::start(master.path(), standby.path()).unwrap();
    let before = converge(&pair, Duration::from_secs(120));

    let mut state = 0x2545_f491_4f6c_dd1du64;
    for i in 0..WRITES {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let offset = (state % (FILE_SIZE / WRITE_SIZE)) * WRITE_SIZE;
        file.write_all_at(&random_bytes(WRITE_SIZE as usize, 1000 + i), offset).unwrap();
    }
    let after = converge(&pair, Duration::from_secs(60));

    let changed = (WRITES * WRITE_SIZE) as f64;
    let wire = after.get("sluice_wire_bytes_sent_total") - before.get("sluice_wire_bytes_sent_total");
    let payload = after.get("sluice_payload_bytes_sent_total") - before.get("sluice_payload_bytes_sent_total");
    let fixed_overhead = 64.0 * 1024.0;
    let lost = after.get("sluice_wire_bytes_lost_total") - before.get("sluice_wire_bytes_lost_total");
    let ops = after.get("sluice_ops_sent_total") - before.get("sluice_ops_sent_total");
    let mtu = after.get("sluice_path_mtu");
    eprintln!("{}: changed {changed} bytes, payload {payload}, wire {wire} ({:.3}x), lost {lost}, ops {ops}, path MTU {mtu}", kind.name(), wire / changed);
    assert!(payload >= changed * 0.5, "payload {payload} cannot be below what changed ({changed}) minus overlaps");
    assert!(wire <= 1.1 * changed + fixed_overhead, "wire {wire} exceeds 1.1 x changed {changed} + {fixed_overhead}");
    assert!(after.get("sluice_events_captured_total") >= WRITES as f64);
    assert_eq!(after.get("sluice_events_dropped_total"), 0.0);
}

#[test]
fn random_writes_ext4() {
    random_writes_cost_what_they_change(FsKind::Ext4);
}

#[test]
fn random_writes_btrfs() {
    random_writes_cost_what_they_change(FsKind::Btrfs);
}

/// The agent's peak resident memory, from `/proc/<pid>/status`.
fn agent_peak_bytes(pair: &mut Pair) -> u64 {
    let pid = pair.agent().pid().expect("agent running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// A file of 1 GiB, at initial sync to an empty standby and then written in one
/// call while streaming, is read as fast as it is sent: the agent never holds it
/// whole (its bound is about 16 MiB read ahead and 32 MiB in flight).
#[test]
fn files_larger_than_the_agents_bounds_stream_through_them() {
    const GIB: usize = 1 << 30;
    let master = LoopFs::new(FsKind::Ext4, 3 * 1024).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 3 * 1024).unwrap();
    std::fs::write(master.path().join("first.img"), random_bytes(GIB, 41)).unwrap();
    let mut pair = Pair::start(master.path(), standby.path()).unwrap();
    converge(&pair, Duration::from_secs(180));
    let after_initial = agent_peak_bytes(&mut pair);
    std::fs::write(master.path().join("second.img"), random_bytes(GIB, 42)).unwrap();
    converge(&pair, Duration::from_secs(180));
    let after_streaming = agent_peak_bytes(&mut pair);
    println!("agent peak memory: {} MiB after the initial sync of 1 GiB, {} MiB after 1 GiB written at once", after_initial >> 20, after_streaming >> 20);
    compare_trees(master.path(), standby.path()).unwrap();
    assert!(after_initial < 256 << 20, "peak {after_initial} bytes for the initial sync of a 1 GiB file");
    assert!(after_streaming < 256 << 20, "peak {after_streaming} bytes streaming a 1 GiB write");
}
