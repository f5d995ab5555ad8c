//! With `[rollback] enabled = true` on the receiver, what the master deletes,
//! truncates or overwrites is kept on the standby under
//! `.sluice/rollback/<UTC date>/<path>` with its old bytes, and date directories
//! past `keep_days` are expired.

use crate::common::{converge, sh};
use sluice_tests::{FsKind, LoopFs, Pair, PairOptions, random_bytes, run};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

fn utc_today() -> String {
    run("date -u +%F").unwrap().trim().to_owned()
}

fn destroyed_content_is_kept(kind: FsKind) {
    let master = LoopFs::new(kind, 256).unwrap();
    let standby = LoopFs::new(kind, 256).unwrap();
    let (m, s) = (master.path(), standby.path());
    let only_on_standby = random_bytes(30_000, 10);
    fs::write(s.join("only-on-standby"), &only_on_standby).unwrap();
    let expired = s.join(".sluice/rollback/2000-01-01");
    fs::create_dir_all(expired.join("dir")).unwrap();
    fs::write(expired.join("dir/old"), b"kept long ago").unwrap();
    let deleted = random_bytes(50_000, 11);
    let truncated = random_bytes(300_000, 12);
    let moved = random_bytes(20_000, 13);
    let overwritten = random_bytes(40_000, 14);
    let (tree_a, tree_b) = (random_bytes(10_000, 15), random_bytes(70_000, 16));
    fs::write(m.join("deleted"), &deleted).unwrap();
    fs::write(m.join("truncated"), &truncated).unwrap();
    fs::write(m.join("moved"), &moved).unwrap();
    fs::write(m.join("overwritten"), &overwritten).unwrap();
    fs::create_dir_all(m.join("tree/sub")).unwrap();
    fs::write(m.join("tree/a"), &tree_a).unwrap();
    fs::write(m.join("tree/sub/b"), &tree_b).unwrap();

    let day_before = utc_today();
    let options = PairOptions { receiver_toml: "[rollback]\nenabled = true\n".into(), ..PairOptions::default() };
    let pair = Pair::start_with(m, s, options).unwrap();
    converge(&pair, Duration::from_secs(30));
    let truncated_ino = fs::metadata(s.join("truncated")).unwrap().ino();

    fs::remove_file(m.join("deleted")).unwrap();
    run(&format!("truncate -s 1000 {}", m.join("truncated").display())).unwrap();
    sh(m, "mv moved overwritten");
    sh(m, "rm -r tree");
    converge(&pair, Duration::from_secs(30));
    let day_after = utc_today();

    let rollback = s.join(".sluice/rollback");
    assert!(!expired.exists(), "expired at start");
    assert!(pair.receiver_log().contains("expired rollback directory"), "{}", pair.receiver_log());
    // The test may straddle midnight UTC; then either day may hold an entry.
    let kept = |path: &str| -> Vec<u8> {
        let found: Vec<PathBuf> = [&day_before, &day_after].iter().map(|day| rollback.join(day).join(path)).filter(|p| p.exists()).collect();
        match &found[..] {
            [one] | [one, _] => fs::read(one).unwrap(),
            _ => panic!("{path} is not in {} for {day_before} or {day_after}", rollback.display()),
        }
    };
    assert!(kept("only-on-standby") == only_on_standby, "pruned by the initial sync");
    assert!(kept("deleted") == deleted, "unlink");
    assert!(kept("truncated") == truncated, "truncate");
    assert!(kept("overwritten") == overwritten, "rename over an existing file");
    assert!(kept("tree/a") == tree_a && kept("tree/sub/b") == tree_b, "rm -r");

    let live = fs::metadata(s.join("truncated")).unwrap();
    assert_eq!((live.ino(), live.len()), (truncated_ino, 1000), "truncated in place");
    assert_eq!(fs::read(s.join("truncated")).unwrap(), truncated[..1000]);
    assert_eq!(fs::read(s.join("overwritten")).unwrap(), moved);
    assert!(!s.join("deleted").exists() && !s.join("tree").exists() && !s.join("only-on-standby").exists());

    let metrics = pair.receiver_metrics().unwrap();
    let bytes = [&only_on_standby, &deleted, &truncated, &overwritten, &tree_a, &tree_b].iter().map(|b| b.len()).sum::<usize>();
    assert_eq!(metrics.get("sluice_rollback_bytes_kept_total"), bytes as f64);
    assert!(metrics.get("sluice_rollback_entries_kept_total") >= 6.0);
}

#[test]
fn rollback_ext4() {
    destroyed_content_is_kept(FsKind::Ext4);
}

#[test]
fn rollback_btrfs() {
    destroyed_content_is_kept(FsKind::Btrfs);
}
