//! The verifier: differences planted on the standby behind the agent's back (a
//! block rewritten with size and mtime kept, a file deleted, a stray file) are
//! found by content and repaired, in the background and on demand with
//! `sluice-agent verify`.

use crate::common::{converge, tail};
use sluice_tests::{Binaries, FsKind, LoopFs, Pair, PairOptions, compare_trees, random_bytes, wait_until};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The differences these tests plant stand for ones no watch sees (a disk that
/// corrupts, a standby changed while its receiver was stopped): the receiver's
/// own watch for local changes is off, so only the verifier can find them.
fn unwatched() -> PairOptions {
    PairOptions { receiver_toml: "[safety]\nrevert_local_changes = false\n".into(), ..PairOptions::default() }
}

const MIB: usize = 1 << 20;

/// Rewrites `len` bytes at `offset` of `path` and puts its mtime back, so size and
/// mtime say nothing changed.
fn corrupt_keeping_mtime(path: &Path, offset: u64, len: usize) {
    let before = fs::metadata(path).unwrap();
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&vec![0xA5; len], offset).unwrap();
    file.set_modified(before.modified().unwrap()).unwrap();
    drop(file);
    assert_eq!(fs::metadata(path).unwrap().modified().unwrap(), before.modified().unwrap());
}

fn populate(master: &Path) -> usize {
    fs::create_dir_all(master.join("docs/old")).unwrap();
    let mut bytes = 0;
    for i in 0..20 {
        let data = random_bytes(256 * 1024, i);
        bytes += data.len();
        fs::write(master.join(format!("docs/f{i}")), data).unwrap();
    }
    fs::write(master.join("docs/old/notes"), b"kept").unwrap();
    let big = random_bytes(16 * MIB, 99);
    bytes += big.len();
    fs::write(master.join("big.img"), big).unwrap();
    bytes
}

#[test]
fn background_verifier_finds_and_repairs_planted_differences() {
    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let tree_bytes = populate(master.path());
    let pair = Pair::start_with(master.path(), standby.path(), unwatched()).unwrap();
    converge(&pair, Duration::from_secs(60));
    let before = pair.agent_metrics().unwrap().get("sluice_verify_mismatches_total");

    let s = standby.path();
    corrupt_keeping_mtime(&s.join("big.img"), 9 * MIB as u64 + 4096, 4096);
    fs::remove_file(s.join("docs/old/notes")).unwrap();
    assert!(compare_trees(master.path(), s).is_err(), "the plant must be visible to the comparison");
    let planted = Instant::now();
    wait_until("the verifier to find and repair both differences", Duration::from_secs(120), || {
        let m = pair.agent_metrics()?;
        Ok(m.get("sluice_verify_mismatches_total") - before >= 2.0 && compare_trees(master.path(), s).is_ok())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n--- agent log ---\n{}", tail(&pair.agent_log())));
    let detected = planted.elapsed();
    let metrics = pair.agent_metrics().unwrap();
    println!(
        "verifier: {} planted differences found and repaired {:.1} s after planting, in a tree of {:.1} MiB at the default rate; {} bytes compared so far, {} passes",
        metrics.get("sluice_verify_mismatches_total") - before,
        detected.as_secs_f64(),
        tree_bytes as f64 / MIB as f64,
        metrics.get("sluice_verify_bytes_total"),
        metrics.get("sluice_verify_passes_total"),
    );
    assert_eq!(metrics.get("sluice_verify_mismatches_total") - before, 2.0, "each difference counted once");
    wait_until("a whole pass to end", Duration::from_secs(60), || {
        let m = pair.agent_metrics()?;
        Ok(m.get("sluice_verify_passes_total") >= 1.0 && m.get("sluice_verify_last_pass_timestamp_seconds") > 1.7e9)
    })
    .unwrap();
    let log = pair.agent_log();
    assert!(log.contains("big.img") && log.contains("bytes 9437184..9502720"), "the mismatch is logged with its path and range:\n{}", tail(&log));
    assert!(log.contains("docs/old/notes") && log.contains("missing on the standby"), "{}", tail(&log));
}

/// A file written thousands of times a second looks different on the standby at
/// any instant (its mtime is ahead of the events about it); the verifier must
/// not take that for divergence, or it re-reads and resends the whole file over
/// and over while the writes go on.
#[test]
fn a_file_written_all_the_time_is_not_taken_for_a_difference() {
    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let size = 32 * MIB as u64;
    fs::write(master.path().join("db"), random_bytes(size as usize, 7)).unwrap();
    let pair = Pair::start(master.path(), standby.path()).unwrap();
    converge(&pair, Duration::from_secs(60));
    let before = pair.agent_metrics().unwrap();

    let file = fs::OpenOptions::new().write(true).open(master.path().join("db")).unwrap();
    let page = random_bytes(4096, 8);
    let (started, mut writes, mut state) = (Instant::now(), 0u64, 0x2545_f491_4f6c_dd1du64);
    while started.elapsed() < Duration::from_secs(8) {
        for _ in 0..20 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            file.write_all_at(&page, (state % (size / 4096)) * 4096).unwrap();
            writes += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(file);
    converge(&pair, Duration::from_secs(60));
    let after = pair.agent_metrics().unwrap();
    let passes = after.get("sluice_verify_passes_total") - before.get("sluice_verify_passes_total");
    println!("{writes} writes in 8 s; {passes} verification passes meanwhile");
    assert!(passes >= 2.0, "the verifier looked at the file while it was written ({passes} passes)");
    for metric in ["sluice_verify_mismatches_total", "sluice_repairs_total", "sluice_tree_compares_total"] {
        assert_eq!(after.get(metric), before.get(metric), "{metric}\n--- agent log ---\n{}", tail(&pair.agent_log()));
    }
    let sent = after.get("sluice_payload_bytes_sent_total") - before.get("sluice_payload_bytes_sent_total");
    assert!(sent <= (writes * 4096) as f64 * 1.05, "{sent} payload bytes sent for {writes} 4 KiB writes");
}

/// Runs `sluice-agent verify` for `pair`, returning its exit code and stdout.
fn verify_command(pair: &Pair, repair: bool) -> (i32, String) {
    let binaries = Binaries::locate().unwrap();
    let mut command = Command::new(&binaries.agent);
    command.arg("verify").arg("--config").arg(pair.dir().join("agent.toml")).args(["--timeout", "120"]);
    if repair {
        command.arg("--repair");
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("$ sluice-agent verify{}\n{stdout}{}", if repair { " --repair" } else { "" }, String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), stdout)
}

#[test]
fn verify_command_reports_differences_and_repairs_only_when_asked() {
    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 256).unwrap();
    populate(master.path());
    // Background verification off: only the command looks.
    let options = PairOptions { agent_toml: "[verify]\nbytes_per_second = 0\n".into(), ..unwatched() };
    let pair = Pair::start_with(master.path(), standby.path(), options).unwrap();
    converge(&pair, Duration::from_secs(60));
    let (code, stdout) = verify_command(&pair, false);
    assert_eq!(code, 0, "an identical standby verifies clean: {stdout}");
    assert!(stdout.contains("0 difference(s)"), "{stdout}");

    let s = standby.path();
    corrupt_keeping_mtime(&s.join("docs/f3"), 1000, 10);
    fs::write(s.join("docs/stray"), b"only here").unwrap();
    let (code, stdout) = verify_command(&pair, false);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("differs: docs/f3: bytes 0..65536"), "{stdout}");
    assert!(stdout.contains("differs: docs/stray: on the standby only"), "{stdout}");
    assert!(stdout.contains("2 difference(s)"), "{stdout}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(compare_trees(master.path(), s).is_err(), "without --repair nothing is changed");

    let (code, stdout) = verify_command(&pair, true);
    assert_eq!(code, 1, "differences were found: {stdout}");
    assert!(stdout.contains("(repaired)"), "{stdout}");
    converge(&pair, Duration::from_secs(30));
    let (code, stdout) = verify_command(&pair, false);
    assert_eq!(code, 0, "{stdout}");

    // No agent, no verification: a clear error.
    let mut pair = pair;
    pair.stop_agent().unwrap();
    let (code, _) = verify_command(&pair, false);
    assert_ne!(code, 0);
    let binaries = Binaries::locate().unwrap();
    let output = Command::new(&binaries.agent).arg("verify").arg("--config").arg(pair.dir().join("agent.toml")).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot reach the agent"), "{stderr}");
}

/// A rename made with relative paths from a working directory on another
/// filesystem (`cd /srv && mv data/a data/b` where `/srv/data` is watched) is
/// replicated, by capture or, failing that, found by the fanotify cross-check and
/// repaired.
#[test]
fn changes_capture_cannot_place_are_repaired() {
    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let m = master.path();
    fs::create_dir_all(m.join("sub")).unwrap();
    fs::write(m.join("sub/a"), random_bytes(100_000, 5)).unwrap();
    let pair = Pair::start_with(m, standby.path(), unwatched()).unwrap();
    converge(&pair, Duration::from_secs(30));
    let parent = m.parent().unwrap();
    let mount = m.file_name().unwrap().to_str().unwrap();
    sluice_tests::run(&format!("cd {} && mv {mount}/sub/a {mount}/sub/b && mkdir {mount}/sub/d && echo hi > {mount}/sub/d/f", parent.display())).unwrap();
    converge(&pair, Duration::from_secs(30));
    // Later writes to the renamed file land in the right file on the standby.
    fs::OpenOptions::new().write(true).open(m.join("sub/b")).unwrap().write_all_at(b"late", 10).unwrap();
    converge(&pair, Duration::from_secs(30));
    let metrics = pair.agent_metrics().unwrap();
    println!(
        "relative paths from outside: {} cross-check repairs, {} tree comparisons",
        metrics.get("sluice_crosscheck_misses_total"),
        metrics.get("sluice_tree_compares_total")
    );
}

/// Copies `from` to `to` as a file of its own, with the same content, mode and
/// mtime: only the hard-link group tells them apart.
fn copy_unlinked(from: &Path, to: &Path) {
    let meta = fs::metadata(from).unwrap();
    let _ = fs::remove_file(to);
    fs::copy(from, to).unwrap();
    fs::OpenOptions::new().write(true).open(to).unwrap().set_modified(meta.modified().unwrap()).unwrap();
}

#[test]
fn hard_link_groups_that_differ_are_restored() {
    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let m = master.path();
    fs::create_dir_all(m.join("mail/cur")).unwrap();
    fs::write(m.join("mail/cur/1"), random_bytes(64 * 1024, 1)).unwrap();
    fs::hard_link(m.join("mail/cur/1"), m.join("mail/linked")).unwrap();
    let same = random_bytes(32 * 1024, 2);
    fs::write(m.join("mail/cur/2"), &same).unwrap();
    fs::write(m.join("mail/cur/3"), &same).unwrap();
    let pair = Pair::start_with(master.path(), standby.path(), unwatched()).unwrap();
    converge(&pair, Duration::from_secs(60));
    let before = pair.agent_metrics().unwrap().get("sluice_verify_mismatches_total");

    let s = standby.path();
    // Linked on the master, two separate files on the standby: a write to one
    // name after failover would not show under the other.
    copy_unlinked(&s.join("mail/cur/1"), &s.join("mail/linked"));
    // Two files on the master, one inode on the standby.
    let mtime = fs::metadata(s.join("mail/cur/3")).unwrap().modified().unwrap();
    fs::remove_file(s.join("mail/cur/3")).unwrap();
    fs::hard_link(s.join("mail/cur/2"), s.join("mail/cur/3")).unwrap();
    fs::OpenOptions::new().write(true).open(s.join("mail/cur/3")).unwrap().set_modified(mtime).unwrap();
    let diff = compare_trees(m, s).expect_err("the plant must be visible to the comparison");
    assert!(diff.to_string().contains("hardlinked"), "{diff}");

    wait_until("the verifier to restore both link groups", Duration::from_secs(120), || {
        Ok(compare_trees(m, s).is_ok())
    })
    .unwrap_or_else(|e| panic!("{e:#}\n--- agent log ---\n{}", tail(&pair.agent_log())));
    // Metrics are refreshed every 100 ms.
    wait_until("both differences to be counted", Duration::from_secs(5), || {
        Ok(pair.agent_metrics()?.get("sluice_verify_mismatches_total") - before >= 2.0)
    })
    .unwrap();
    let log = pair.agent_log();
    assert!(log.contains("hard-linked to another name on the master, not on the standby"), "{}", tail(&log));
    assert!(log.contains("hard-linked to another name on the standby only"), "{}", tail(&log));
    // The standby's names share one inode again, and only where the master's do.
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &str| fs::metadata(s.join(p)).unwrap().ino();
    assert_eq!(ino("mail/cur/1"), ino("mail/linked"));
    assert_ne!(ino("mail/cur/2"), ino("mail/cur/3"));
}
