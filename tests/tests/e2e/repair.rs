//! Targeted repair: an operation that does not fit the standby's copy does not
//! stall replication; the paths it names are compared and made identical, not the
//! whole tree. A receiver killed right after a rename does not replay it over a
//! newer file of the same name.

use crate::common::{converge, tail};
use sluice_tests::{FsKind, LoopFs, Pair, compare_trees, random_bytes, wait_until};
use std::fs;
use std::time::{Duration, Instant};

#[test]
fn an_operation_the_standby_cannot_apply_is_repaired_without_a_tree_comparison() {
    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let m = master.path();
    fs::create_dir_all(m.join("dir/deeper")).unwrap();
    fs::write(m.join("dir/f"), random_bytes(200_000, 1)).unwrap();
    fs::write(m.join("dir/deeper/g"), b"g").unwrap();
    fs::write(m.join("elsewhere"), b"untouched").unwrap();
    let pair = Pair::start(m, standby.path()).unwrap();
    let before = converge(&pair, Duration::from_secs(30));

    // Behind the agent's back the standby loses a directory.
    fs::remove_dir_all(standby.path().join("dir")).unwrap();
    // The master keeps working in it: every one of these names a path the
    // standby lacks.
    fs::write(m.join("dir/new"), b"new").unwrap();
    fs::rename(m.join("dir/f"), m.join("dir/f2")).unwrap();
    fs::write(m.join("dir/deeper/g"), b"changed").unwrap();
    let started = Instant::now();
    let after = converge(&pair, Duration::from_secs(30));
    let receiver = pair.receiver_metrics().unwrap();
    println!(
        "repair: {} operations diverged, {} paths repaired, converged in {:.2?}",
        receiver.get("sluice_ops_diverged_total"),
        after.get("sluice_repairs_total") - before.get("sluice_repairs_total"),
        started.elapsed()
    );
    assert!(receiver.get("sluice_ops_diverged_total") >= 1.0);
    assert_eq!(receiver.get("sluice_ops_refused_total"), 0.0, "nothing stopped the stream");
    assert!(after.get("sluice_repairs_total") > before.get("sluice_repairs_total"));
    assert_eq!(
        after.get("sluice_tree_compares_total"),
        before.get("sluice_tree_compares_total"),
        "no comparison of the whole tree\n{}",
        tail(&pair.agent_log())
    );
    assert_eq!(fs::read(standby.path().join("elsewhere")).unwrap(), b"untouched");
}

#[test]
fn a_rename_is_not_replayed_over_a_newer_file_after_the_receiver_is_killed() {
    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let m = master.path();
    let mut pair = Pair::start(m, standby.path()).unwrap();
    let mut replays_refused = 0;
    for round in 0..5 {
        fs::write(m.join("a"), random_bytes(50_000, round)).unwrap();
        converge(&pair, Duration::from_secs(30));
        // `mv a b; : > a`, and the standby dies before it made them durable
        // (it flushes every 300 ms): the restarted receiver does not know whether
        // it applied the rename.
        fs::rename(m.join("a"), m.join("b")).unwrap();
        fs::write(m.join("a"), b"").unwrap();
        let pair_ref = &pair;
        wait_until("the rename to be applied", Duration::from_secs(10), || {
            Ok(fs::metadata(pair_ref.standby().join("b")).is_ok())
        })
        .unwrap();
        pair.kill_receiver().unwrap();
        pair.start_receiver().unwrap();
        converge(&pair, Duration::from_secs(60));
        assert!(compare_trees(m, standby.path()).is_ok());
        if pair.receiver_log().contains("did not stop cleanly") {
            replays_refused += 1;
        }
    }
    assert_eq!(replays_refused, 5, "each restart knew it stopped uncleanly\n{}", tail(&pair.receiver_log()));
    assert!(pair.agent_log().contains("comparing the paths they name instead of replaying them"), "{}", tail(&pair.agent_log()));
}
