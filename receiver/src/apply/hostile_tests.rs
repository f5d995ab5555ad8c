//! Operations a compromised or buggy master could send: none may reach outside the
//! root, into `.sluice`, block the applier, or destroy what rollback keeps.

use std::fs;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use sluice_proto::{Op, RelPath};

use super::Applier;
use super::rollback::RollbackCounters;
use super::tests::{p, write};

fn setup() -> (tempfile::TempDir, Applier) {
    let dir = tempfile::tempdir().unwrap();
    let applier = Applier::open(dir.path()).unwrap();
    (dir, applier)
}

fn symlink(path: &str, target: &str) -> Op {
    Op::Symlink { path: p(path), target: target.as_bytes().to_vec() }
}

/// Runs `op` on a thread and fails if it has not returned within a few seconds.
fn apply_in_time(mut applier: Applier, op: Op) -> (Applier, Result<(), String>) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let result = applier.apply(&op).map(drop).map_err(|e| e.to_string());
        let _ = tx.send((applier, result));
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("the operation blocked the applier")
}

#[test]
fn device_nodes_are_refused_unless_enabled() {
    let (dir, mut a) = setup();
    let rdev = libc::makedev(8, 0);
    assert!(a.apply(&Op::Mknod { path: p("disk"), mode: libc::S_IFBLK | 0o600, rdev }).is_err());
    assert!(fs::symlink_metadata(dir.path().join("disk")).is_err(), "no device node was made");
}

#[test]
fn writes_into_a_fifo_do_not_block() {
    let (dir, mut a) = setup();
    a.apply(&Op::Mkfifo { path: p("pipe"), mode: 0o600 }).unwrap();
    let (a, result) = apply_in_time(a, write("pipe", 0, b"x"));
    assert!(result.is_err(), "a FIFO is not a file to write into");
    let (a, result) = apply_in_time(a, Op::CreateFile { path: p("pipe"), mode: 0o600, truncate: true });
    assert!(result.is_ok() || result.is_err());
    let (_, result) = apply_in_time(a, Op::Truncate { path: p("pipe"), size: 0 });
    assert!(result.is_err());
    drop(dir);
}

#[test]
fn writes_into_an_existing_device_node_are_refused() {
    let (dir, mut a) = setup();
    // A node for /dev/null: harmless if the check is missing, and visible as a success.
    nix::sys::stat::mknod(
        &dir.path().join("null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        libc::makedev(1, 3),
    )
    .unwrap();
    assert!(a.apply(&write("null", 0, b"x")).is_err());
    let punch = (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u32;
    assert!(a.apply(&Op::Fallocate { path: p("null"), mode: punch, offset: 0, len: 4096 }).is_err());
}

#[test]
fn symlinks_in_the_middle_of_a_path_are_not_followed() {
    let (dir, mut a) = setup();
    a.apply(&symlink("x", ".")).unwrap();
    assert!(a.apply(&write("x/f", 0, b"through a link")).is_err());
    assert!(!dir.path().join("f").exists());
    a.apply(&Op::Mkdir { path: p("d"), mode: 0o755 }).unwrap();
    assert!(a.apply(&Op::Mkdir { path: p("x/d/e"), mode: 0o755 }).is_err());
    assert!(!dir.path().join("d/e").exists());
}

#[test]
fn the_state_directory_cannot_be_reached_through_an_alias() {
    let (dir, mut a) = setup();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("shadow");
    fs::write(&target, b"secret").unwrap();
    let state = crate::state::State::open(dir.path()).unwrap();
    state.store(crate::state::Position { seq: 7, ..Default::default() }).unwrap();
    a.apply(&symlink("x", ".")).unwrap();
    let aliased = [
        symlink("x/.sluice/state.tmp", target.to_str().unwrap()),
        Op::Remove { path: p("x/.sluice") },
        write("x/.sluice/state", 0, b"999999"),
        Op::Rename { from: p("x/.sluice"), to: p("gone"), exchange: false, noreplace: false },
    ];
    for op in aliased {
        assert!(a.apply(&op).is_err(), "{op:?} reached .sluice");
    }
    state.store(crate::state::Position { seq: 8, ..Default::default() }).unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"secret", "the flush wrote outside the root");
    assert_eq!(state.load().unwrap(), 8);
}

#[test]
fn the_fd_cache_does_not_write_through_a_stale_alias() {
    let (dir, mut a) = setup();
    a.apply(&symlink("x", ".")).unwrap();
    let _ = a.apply(&write("x/f", 0, b"first"));
    fs::write(dir.path().join("f"), b"first").unwrap();
    a.apply(&Op::Rename { from: p("f"), to: p("g"), exchange: false, noreplace: false }).unwrap();
    let _ = a.apply(&write("x/f", 0, b"AFTER"));
    assert_eq!(fs::read(dir.path().join("g")).unwrap(), b"first", "written into the moved inode");
}

#[test]
fn a_root_entry_of_another_kind_removes_nothing() {
    use sluice_proto::{Entry, EntryKind, Meta, Timestamp};
    let (dir, mut a) = setup();
    fs::create_dir(dir.path().join("keep")).unwrap();
    fs::write(dir.path().join("keep/f"), b"precious").unwrap();
    crate::state::State::open(dir.path()).unwrap().store(crate::state::Position { seq: 3, ..Default::default() }).unwrap();
    let meta = Meta { mode: 0o644, uid: 0, gid: 0, mtime: Timestamp { secs: 1, nanos: 0 } };
    let mut sync = crate::sync::InitialSync::new();
    for kind in [EntryKind::File { size: 1 }, EntryKind::Fifo, EntryKind::Symlink { target: b"/".to_vec() }] {
        let root = Entry { path: RelPath::root(), kind, meta, hardlink_of: None, names: 1, xattrs: Vec::new(), verify: false };
        let _ = sync.entries(&mut a, &[root]);
    }
    assert_eq!(fs::read(dir.path().join("keep/f")).unwrap(), b"precious");
    assert!(dir.path().join(".sluice/state").exists());
}

#[test]
fn replacing_an_entry_by_another_kind_keeps_it() {
    let (dir, mut a) = setup();
    a.enable_rollback(RollbackCounters::default());
    for (name, op) in [
        ("a", Op::Mkdir { path: p("a"), mode: 0o755 }),
        ("b", symlink("b", "elsewhere")),
        ("c", Op::Mkfifo { path: p("c"), mode: 0o600 }),
    ] {
        a.apply(&write(name, 0, b"old content")).unwrap();
        a.apply(&op).unwrap();
        let kept = find_kept(dir.path(), name);
        assert_eq!(fs::read(&kept).unwrap(), b"old content", "{name} was not kept");
    }
}

fn find_kept(root: &Path, name: &str) -> std::path::PathBuf {
    let rollback = root.join(".sluice/rollback");
    let day = fs::read_dir(&rollback).unwrap().next().expect("a date directory").unwrap().path();
    day.join(name)
}

#[test]
fn a_very_deep_tree_is_removed_and_kept_without_recursion() {
    use std::os::fd::AsFd;
    for rollback in [false, true] {
        let (dir, mut a) = setup();
        if rollback {
            a.enable_rollback(RollbackCounters::default());
        }
        // Deeper than any stack or descriptor limit allows a recursive walk.
        let mut fd = nix::fcntl::open(dir.path(), nix::fcntl::OFlag::O_DIRECTORY, nix::sys::stat::Mode::empty()).unwrap();
        nix::sys::stat::mkdirat(fd.as_fd(), "deep", nix::sys::stat::Mode::from_bits_truncate(0o755)).unwrap();
        fd = nix::fcntl::openat(fd.as_fd(), "deep", nix::fcntl::OFlag::O_DIRECTORY, nix::sys::stat::Mode::empty()).unwrap();
        for _ in 0..10_000 {
            nix::sys::stat::mkdirat(fd.as_fd(), "d", nix::sys::stat::Mode::from_bits_truncate(0o755)).unwrap();
            fd = nix::fcntl::openat(fd.as_fd(), "d", nix::fcntl::OFlag::O_DIRECTORY, nix::sys::stat::Mode::empty()).unwrap();
        }
        let (tx, rx) = mpsc::channel();
        // A small stack, as a tokio blocking thread has.
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let result = a.apply(&Op::Remove { path: p("deep") }).map(drop).map_err(|e| e.to_string());
                let _ = tx.send(result);
            })
            .unwrap();
        rx.recv_timeout(Duration::from_secs(120)).unwrap().unwrap();
        assert!(!dir.path().join("deep").exists());
        // Dropping a kept 30,000-level tree is the test harness's problem, not the receiver's.
        if rollback {
            let kept = find_kept(dir.path(), "deep");
            assert!(kept.is_dir());
            super::fs::remove_tree(
                nix::fcntl::open(kept.parent().unwrap(), nix::fcntl::OFlag::O_DIRECTORY, nix::sys::stat::Mode::empty()).unwrap().as_fd(),
                kept.file_name().unwrap(),
            )
            .unwrap();
        }
    }
}

#[test]
fn a_failed_rename_leaves_its_target_in_place() {
    let (dir, mut a) = setup();
    a.enable_rollback(RollbackCounters::default());
    a.apply(&Op::Mkdir { path: p("src"), mode: 0o755 }).unwrap();
    a.apply(&write("src/from", 0, b"new")).unwrap();
    a.apply(&write("to", 0, b"old")).unwrap();
    // An immutable source directory makes the rename itself fail after the
    // target was looked at.
    let chattr = |flag: &str| std::process::Command::new("chattr").arg(flag).arg(dir.path().join("src")).status().unwrap();
    if !chattr("+i").success() {
        eprintln!("chattr +i not supported here; skipped");
        return;
    }
    let result = a.apply(&Op::Rename { from: p("src/from"), to: p("to"), exchange: false, noreplace: false });
    chattr("-i");
    assert!(result.is_err());
    assert_eq!(fs::read(dir.path().join("to")).unwrap(), b"old", "the target left the live tree");
}
