//! Initial sync against a standby that already holds a stale copy, and of a tree
//! holding more files than the backlog may hold operations.

use crate::common::converge;
use sluice_tests::{FsKind, LoopFs, Pair, PairOptions, compare_trees, random_bytes, run};
use std::fs;
use std::os::unix::fs::FileExt;
use std::time::Duration;

const BLOCK: u64 = 64 * 1024;

#[test]
fn stale_standby_gets_only_differing_blocks() {
    let master = LoopFs::new(FsKind::Ext4, 512).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 512).unwrap();
    let (m, s) = (master.path(), standby.path());
    fs::create_dir(m.join("db")).unwrap();
    fs::write(m.join("db/table.dat"), random_bytes(64 << 20, 7)).unwrap();
    for i in 0..50 {
        fs::write(m.join(format!("db/small{i}")), random_bytes(2000, 100 + i)).unwrap();
    }
    fs::write(m.join("gone-on-master"), b"remove me").unwrap();
    run(&format!("cp -a {}/. {}/", m.display(), s.display())).unwrap();

    // The master moves on while the standby is offline.
    let table = fs::OpenOptions::new().write(true).open(m.join("db/table.dat")).unwrap();
    let changed_blocks = [3u64, 100, 511, 700, 1023];
    for (i, block) in changed_blocks.iter().enumerate() {
        table.write_all_at(&random_bytes(100, 900 + i as u64), block * BLOCK + 10).unwrap();
    }
    fs::write(m.join("db/new-file"), random_bytes(30_000, 55)).unwrap();
    fs::remove_file(m.join("gone-on-master")).unwrap();
    fs::write(s.join("db/small7"), b"standby drifted").unwrap();
    fs::write(s.join("only-on-standby"), b"extra").unwrap();

    let pair = Pair::start(m, s).unwrap();
    let metrics = converge(&pair, Duration::from_secs(60));
    let expected = changed_blocks.len() as f64 * BLOCK as f64 + 30_000.0 + 2000.0;
    let payload = metrics.get("sluice_payload_bytes_sent_total");
    let wire = metrics.get("sluice_wire_bytes_sent_total");
    eprintln!("stale standby: expected {expected} bytes of blocks, payload {payload}, wire {wire}");
    assert!(payload <= expected, "sent {payload} bytes of file data, only {expected} differ");
    assert!(payload >= expected - 64.0 * 1024.0, "sent {payload}: too little to repair");
    assert!(wire <= 1.1 * expected + 512.0 * 1024.0, "wire {wire} for {expected} differing bytes");
    assert!(!s.join("only-on-standby").exists());
}

/// Each file becomes a few operations; a tree with several times more files than
/// the backlog may hold operations is synced in one comparison, not restarted
/// whenever the operations in flight pass that bound.
#[test]
fn more_files_than_the_backlog_holds_operations_sync_in_one_comparison() {
    let master = LoopFs::new(FsKind::Ext4, 512).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 512).unwrap();
    let files = 12_000;
    for d in 0..12 {
        fs::create_dir(master.path().join(format!("d{d}"))).unwrap();
    }
    for i in 0..files {
        fs::write(master.path().join(format!("d{}/f{i}", i % 12)), format!("file {i}\n")).unwrap();
    }
    let options = PairOptions { agent_toml: "[durability]\nbacklog_ops = 4000\n".into(), ..PairOptions::default() };
    let pair = Pair::start_with(master.path(), standby.path(), options).unwrap();
    let metrics = converge(&pair, Duration::from_secs(120));
    compare_trees(master.path(), standby.path()).unwrap();
    assert_eq!(metrics.get("sluice_tree_compares_total"), 1.0, "{}", crate::common::tail(&pair.agent_log()));
    assert_eq!(metrics.get("sluice_backlog_overflows_total"), 0.0);
}
