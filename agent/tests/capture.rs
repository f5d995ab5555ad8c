//! End-to-end check of the eBPF capture on loop-mounted ext4 and btrfs.
//!
//! Needs root (mount, BPF). The file operations run in child processes because
//! the capture ignores its own process (the test is the "agent" here).

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use sluice_agent::capture::{Capture, CaptureOptions, Event, EventKind, InodeId};

/// Unmounts (lazily if busy) when dropped, so a failing assertion leaves no mount behind.
struct Mount {
    dir: PathBuf,
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mount_loop(tmp: &Path, fs: &str) -> Mount {
    let img = tmp.join(format!("{fs}.img"));
    let dir = tmp.join("mnt");
    std::fs::create_dir(&dir).unwrap();
    // btrfs refuses images much smaller than this; the file is sparse anyway.
    run(Command::new("truncate").args(["-s", "256M"]).arg(&img));
    match fs {
        "ext4" => run(Command::new("mkfs.ext4").arg("-q").arg(&img)),
        _ => run(Command::new("mkfs.btrfs").arg("-q").arg(&img)),
    }
    run(Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img)
        .arg(&dir));
    Mount { dir }
}

fn sh(cwd: &Path, script: &str) {
    run(Command::new("sh")
        .arg("-c")
        .arg(format!("set -e\n{script}"))
        .current_dir(cwd));
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Collects events until `done` holds for the collected set or the deadline passes.
async fn collect_until(
    capture: &mut Capture,
    events: &mut Vec<Event>,
    done: impl Fn(&[Event]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done(events) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, capture.next_batch(events)).await {
            Ok(result) => result.expect("next_batch"),
            Err(_) => break,
        }
    }
}

/// A named expectation about one event.
type Check<'a> = (&'static str, Box<dyn Fn(&EventKind) -> bool + 'a>);

fn has(events: &[Event], pred: impl Fn(&EventKind) -> bool) -> bool {
    events.iter().any(|e| pred(&e.kind))
}

fn paths(kind: &EventKind) -> Vec<&[u8]> {
    match kind {
        EventKind::OpenCreate { path, .. }
        | EventKind::Mkdir { path, .. }
        | EventKind::Rmdir { path, .. }
        | EventKind::Unlink { path, .. }
        | EventKind::PathMeta { path, .. }
        | EventKind::PathTruncate { path, .. }
        | EventKind::Mknod { path, .. } => vec![path],
        EventKind::Rename { from, to, .. } => vec![from, to],
        EventKind::Link { existing, new, .. } => vec![existing, new],
        EventKind::Symlink { path, target, .. } => vec![path, target],
        _ => vec![],
    }
}

async fn exercise(fs: &str) {
    if !is_root() {
        eprintln!("skipping {fs} capture test: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mount = mount_loop(tmp.path(), fs);
    let root = mount.dir.clone();

    let mut capture = Capture::start(&root, &CaptureOptions::default()).expect("start capture");
    assert_eq!(capture.mode(), "tp_btf");
    let root_id = capture.root();
    let dev = capture.watched_dev();
    assert_eq!(root_id.ino, std::fs::metadata(&root).unwrap().ino());
    assert_eq!(root_id.dev, dev);
    eprintln!(
        "{fs}: kernel dev {dev:#x}, st_dev {:#x}",
        std::fs::metadata(&root).unwrap().dev()
    );

    sh(
        &root,
        r#"
dd if=/dev/zero of=f bs=4096 seek=3 count=1 conv=notrunc status=none
mkdir d
echo hello > d/a
mv d/a d/b
ln d/b hard
ln -s d/b sym
chmod 600 d/b
truncate -s 100 d/b
perl -e 'truncate("f", 8192) or die "truncate: $!"'
rm hard
mkdir e
rmdir e
fallocate -l 8192 g
mkfifo p
touch -h -m f
python3 -c '
import os
fd = os.open("f", os.O_WRONLY)
os.pwrite(fd, b"x" * 10, 100)
os.lseek(fd, 200, os.SEEK_SET)
os.writev(fd, [b"ab", b"cde"])
os.fchmod(fd, 0o640)
'
"#,
    );
    let ino = |p: &str| std::fs::metadata(root.join(p)).unwrap().ino();
    let (f_ino, b_ino, g_ino) = (ino("f"), ino("d/b"), ino("g"));
    let inode = |ino| InodeId { dev, ino };
    let at_root = |base: &InodeId| *base == root_id;

    let checks: Vec<Check<'_>> = vec![
        (
            "write",
            Box::new(
                move |k| matches!(k, EventKind::Write { inode: i, offset: 12288, len: 4096, .. } if *i == inode(f_ino)),
            ),
        ),
        (
            "open-create",
            Box::new(move |k| {
                matches!(k, EventKind::OpenCreate { base, path, target, .. }
                if at_root(base) && path == b"d/a" && *target == inode(b_ino))
            }),
        ),
        (
            "mkdir",
            Box::new(
                move |k| matches!(k, EventKind::Mkdir { base, path, .. } if at_root(base) && path == b"d"),
            ),
        ),
        (
            "rename",
            Box::new(move |k| {
                matches!(k, EventKind::Rename { from_base, from, to_base, to, .. }
                if at_root(from_base) && at_root(to_base) && from == b"d/a" && to == b"d/b")
            }),
        ),
        (
            "link",
            Box::new(
                move |k| matches!(k, EventKind::Link { existing, new, .. } if existing == b"d/b" && new == b"hard"),
            ),
        ),
        (
            "symlink",
            Box::new(
                move |k| matches!(k, EventKind::Symlink { base, path, target } if at_root(base) && path == b"sym" && target == b"d/b"),
            ),
        ),
        (
            "chmod",
            Box::new(move |k| matches!(k, EventKind::PathMeta { path, .. } if path == b"d/b")),
        ),
        (
            "ftruncate",
            Box::new(
                move |k| matches!(k, EventKind::Truncate { inode: i, size: 100, .. } if *i == inode(b_ino)),
            ),
        ),
        (
            "truncate",
            Box::new(
                move |k| matches!(k, EventKind::PathTruncate { base, path, size: 8192 } if at_root(base) && path == b"f"),
            ),
        ),
        (
            "unlink",
            Box::new(move |k| matches!(k, EventKind::Unlink { path, .. } if path == b"hard")),
        ),
        (
            "rmdir",
            Box::new(move |k| matches!(k, EventKind::Rmdir { path, .. } if path == b"e")),
        ),
        (
            "fallocate",
            Box::new(
                move |k| matches!(k, EventKind::Fallocate { inode: i, offset: 0, len: 8192, .. } if *i == inode(g_ino)),
            ),
        ),
        (
            "mknod",
            Box::new(move |k| matches!(k, EventKind::Mknod { path, .. } if path == b"p")),
        ),
        (
            "utimensat",
            Box::new(move |k| matches!(k, EventKind::PathMeta { path, .. } if path == b"f")),
        ),
        (
            "pwrite64",
            Box::new(
                move |k| matches!(k, EventKind::Write { inode: i, offset: 100, len: 10, .. } if *i == inode(f_ino)),
            ),
        ),
        (
            "writev",
            Box::new(
                move |k| matches!(k, EventKind::Write { inode: i, offset: 200, len: 5, .. } if *i == inode(f_ino)),
            ),
        ),
        (
            "fchmod",
            Box::new(
                move |k| matches!(k, EventKind::FdMeta { inode: i, .. } if *i == inode(f_ino)),
            ),
        ),
    ];

    let mut events = Vec::new();
    collect_until(&mut capture, &mut events, |ev| {
        checks.iter().all(|(_, c)| has(ev, c))
    })
    .await;
    let missing: Vec<_> = checks
        .iter()
        .filter(|(_, c)| !has(&events, c))
        .map(|(n, _)| *n)
        .collect();
    assert!(
        missing.is_empty(),
        "{fs}: missing {missing:?} in {events:#?}"
    );

    // I/O on another filesystem, by relative and absolute paths, then a sentinel
    // inside the watched tree: once the sentinel arrives, anything the outside
    // work produced would have arrived too.
    let outside = tempfile::tempdir_in("/tmp").unwrap();
    let marker = "sluice-outside-marker";
    sh(
        outside.path(),
        &format!(
            r#"
dd if=/dev/zero of={marker} bs=4096 count=2 status=none
dd if=/dev/zero of={abs}/{marker} bs=4096 seek=1 count=1 conv=notrunc status=none
mkdir {marker}.d
echo x > {marker}.d/y
mv {marker}.d/y {marker}.d/z
rm {marker}.d/z
rmdir {marker}.d
"#,
            abs = outside.path().display()
        ),
    );
    sh(&root, "mkdir sentinel");
    events.clear();
    collect_until(&mut capture, &mut events, |ev| {
        has(
            ev,
            |k| matches!(k, EventKind::Mkdir { path, .. } if path == b"sentinel"),
        )
    })
    .await;
    assert!(
        has(
            &events,
            |k| matches!(k, EventKind::Mkdir { path, .. } if path == b"sentinel")
        ),
        "{fs}: sentinel not seen"
    );
    for e in &events {
        let leaked = paths(&e.kind)
            .iter()
            .any(|p| p.windows(marker.len()).any(|w| w == marker.as_bytes()));
        assert!(!leaked, "{fs}: event for another filesystem: {e:?}");
        if let EventKind::Write { inode, .. } | EventKind::Truncate { inode, .. } = &e.kind {
            assert_eq!(
                inode.dev, dev,
                "{fs}: data event outside the watched fs: {e:?}"
            );
        }
    }
    assert_eq!(capture.dropped().unwrap(), 0);
    drop(capture);
    drop(mount);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_ext4() {
    exercise("ext4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_btrfs() {
    exercise("btrfs").await;
}
