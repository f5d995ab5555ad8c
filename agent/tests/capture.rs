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

use sluice_agent::capture::{
    Capture, CaptureOptions, Event, EventKind, InodeId, NO_FD, SyncKind, TO_END,
};

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
        | EventKind::Mknod { path, .. }
        | EventKind::XattrPath { path, .. } => vec![path],
        EventKind::Rename { from, to, .. } => vec![from, to],
        EventKind::Link { existing, new, .. } => vec![existing, new],
        EventKind::Symlink { path, target, .. } => vec![path, target],
        _ => vec![],
    }
}

/// One capture at a time: `page_fault_user` runs with interrupts off, where
/// `bpf_find_vma` fails (-EBUSY) once another program has used it during the same
/// fault, so a second capture attached at once misses write faults.
static ONE_CAPTURE: std::sync::Mutex<()> = std::sync::Mutex::new(());

async fn exercise(fs: &str) {
    if !is_root() {
        eprintln!("skipping {fs} capture test: needs root");
        return;
    }
    let _serial = ONE_CAPTURE.lock().unwrap_or_else(|e| e.into_inner());
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

    beyond_plain_syscalls(fs, &mut capture, &root, root_id).await;
    mmap_over_dirty_pages(fs, &mut capture, &root).await;

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
        if let EventKind::Write { inode, .. }
        | EventKind::Truncate { inode, .. }
        | EventKind::Writeback { inode, .. }
        | EventKind::XattrFd { inode, .. } = &e.kind
        {
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

/// In-kernel copies, mmap stores, sync barriers, xattrs/ACLs, device nodes and
/// io_uring, each done by the real tool in a child process.
async fn beyond_plain_syscalls(fs: &str, capture: &mut Capture, root: &Path, root_id: InodeId) {
    let dev = capture.watched_dev();
    let fio = Command::new("fio")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    eprintln!(
        "{fs}: fio {}, io_uring writes decoded: {}",
        if fio { "present" } else { "absent" },
        capture.sees_io_uring_writes()
    );
    sh(
        root,
        r#"
head -c 20000 /dev/urandom > src
touch xa acl
python3 -c '
import mmap, os
src = os.open("src", os.O_RDONLY)
dst = os.open("cfr", os.O_WRONLY | os.O_CREAT, 0o644)
assert os.copy_file_range(src, dst, 5000, 0, 3000) == 5000
assert os.copy_file_range(src, dst, 1000) == 1000
sf = os.open("sf", os.O_WRONLY | os.O_CREAT, 0o644)
os.lseek(sf, 100, os.SEEK_SET)
assert os.sendfile(sf, src, 0, 7000) == 7000
os.fsync(sf)
os.fdatasync(sf)
os.setxattr(sf, "user.fd", b"v")
r, w = os.pipe()
os.write(w, b"p" * 600)
assert os.splice(r, dst, 600, offset_dst=50000) == 600
m = os.open("mm", os.O_RDWR | os.O_CREAT, 0o644)
os.ftruncate(m, 3 * 4096)
with mmap.mmap(m, 3 * 4096) as mp:
    mp[2 * 4096 + 10] = 0x41
    mp.flush()
'
dd if=/dev/zero of=dio bs=4096 count=2 oflag=direct status=none
cp --reflink=never src cpy
sync -f src
setfattr -n user.x -v y xa
setfacl -m u:1234:r acl
mknod nulldev c 1 3
"#,
    );
    if fio {
        sh(
            root,
            "fio --name=ring --filename=uring --ioengine=io_uring --rw=write --bs=4k \
             --size=16k --fsync_on_close=0 --output=/dev/null",
        );
    } else {
        eprintln!("{fs}: fio not installed, io_uring writes not exercised");
    }

    let ino = |p: &str| std::fs::metadata(root.join(p)).unwrap().ino();
    let inode = |p: &str| InodeId { dev, ino: ino(p) };
    let (cfr, sf, mm, dio, cpy) = (
        inode("cfr"),
        inode("sf"),
        inode("mm"),
        inode("dio"),
        inode("cpy"),
    );
    let at_root = move |base: &InodeId| *base == root_id;
    let mut checks: Vec<Check<'_>> = vec![
        (
            "copy_file_range with off_out",
            Box::new(
                move |k| matches!(k, EventKind::Write { inode, offset: 3000, len: 5000, .. } if *inode == cfr),
            ),
        ),
        (
            "copy_file_range at the file position",
            Box::new(
                move |k| matches!(k, EventKind::Write { inode, offset: 0, len: 1000, .. } if *inode == cfr),
            ),
        ),
        (
            "splice with off_out",
            Box::new(
                move |k| matches!(k, EventKind::Write { inode, offset: 50000, len: 600, .. } if *inode == cfr),
            ),
        ),
        (
            "sendfile",
            Box::new(
                move |k| matches!(k, EventKind::Write { inode, offset: 100, len: 7000, .. } if *inode == sf),
            ),
        ),
        (
            "fsync",
            Box::new(
                move |k| matches!(k, EventKind::Sync { inode: Some(i), offset: 0, len: TO_END, kind: SyncKind::Fsync } if *i == sf),
            ),
        ),
        (
            "fdatasync",
            Box::new(
                move |k| matches!(k, EventKind::Sync { inode: Some(i), kind: SyncKind::Fdatasync, .. } if *i == sf),
            ),
        ),
        (
            "syncfs",
            Box::new(|k| {
                matches!(
                    k,
                    EventKind::Sync {
                        inode: None,
                        kind: SyncKind::Syncfs,
                        ..
                    }
                )
            }),
        ),
        (
            "fsetxattr",
            Box::new(
                move |k| matches!(k, EventKind::XattrFd { inode, name, .. } if *inode == sf && name == b"user.fd"),
            ),
        ),
        (
            "mmap store",
            Box::new(move |k| {
                matches!(k, EventKind::Writeback { inode, offset, len }
                    if *inode == mm && *offset <= 2 * 4096 + 10 && 2 * 4096 + 10 < offset + len)
            }),
        ),
        (
            "msync",
            Box::new(
                move |k| matches!(k, EventKind::Sync { inode: Some(i), offset: 0, len: 12288, kind: SyncKind::Msync } if *i == mm),
            ),
        ),
        (
            "O_DIRECT write",
            Box::new(
                move |k| matches!(k, EventKind::Write { inode, offset: 4096, len: 4096, .. } if *inode == dio),
            ),
        ),
        (
            "cp --reflink=never",
            Box::new(
                move |k| matches!(k, EventKind::Write { inode, offset: 0, .. } if *inode == cpy),
            ),
        ),
        (
            "setfattr",
            Box::new(move |k| {
                matches!(k, EventKind::XattrPath { base, path, name, nofollow: false }
                    if at_root(base) && path == b"xa" && name == b"user.x")
            }),
        ),
        (
            "setfacl",
            Box::new(move |k| {
                matches!(k, EventKind::XattrPath { path, name, .. }
                    if path == b"acl" && name == b"system.posix_acl_access")
            }),
        ),
        (
            "mknod c 1 3",
            Box::new(move |k| {
                matches!(k, EventKind::Mknod { base, path, mode, rdev }
                    if at_root(base) && path == b"nulldev" && mode & 0o170000 == 0o020000
                        && *rdev == libc::makedev(1, 3))
            }),
        ),
    ];
    if fio {
        let uring = inode("uring");
        checks.push((
            "io_uring user",
            Box::new(|k| matches!(k, EventKind::IoUringUser { .. })),
        ));
        if capture.sees_io_uring_writes() {
            checks.push((
                "io_uring write",
                Box::new(move |k| {
                    matches!(k, EventKind::Write { inode, offset: 8192, len: 4096, fd: NO_FD } if *inode == uring)
                }),
            ));
        }
    }

    let mut events = Vec::new();
    collect_until(capture, &mut events, |ev| {
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
    // cp wrote through write(2), which is reported at syscall exit; the folios it
    // dirtied must not be reported a second time.
    let doubled: Vec<_> = events
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::Writeback { inode, .. } if *inode == cpy))
        .collect();
    assert!(
        doubled.is_empty(),
        "{fs}: write(2) also reported as writeback: {doubled:?}"
    );
    for e in &events {
        if matches!(
            e.kind,
            EventKind::Writeback { .. } | EventKind::IoUringUser { .. } | EventKind::Sync { .. }
        ) || matches!(e.kind, EventKind::Write { fd: NO_FD, .. })
        {
            eprintln!("{fs}: {:?}", e.kind);
        }
    }
}

/// Stores through a fresh shared mapping to pages `write(2)` dirtied a moment
/// before: no folio goes clean → dirty, so only the write faults report them.
async fn mmap_over_dirty_pages(fs: &str, capture: &mut Capture, root: &Path) {
    const MIB: u64 = 1 << 20;
    const PAGES: u64 = 8;
    sh(
        root,
        r#"
python3 -c '
import mmap, os
with open("dirty", "wb") as f:
    f.write(os.urandom(8 << 20))
fd = os.open("dirty", os.O_RDWR)
mp = mmap.mmap(fd, 8 << 20)
for k in range(8):
    o = (k << 20) + 77
    mp[o:o + 3] = b"xyz"
mp.close()
os.close(fd)
'
"#,
    );
    let dirty = InodeId {
        dev: capture.watched_dev(),
        ino: std::fs::metadata(root.join("dirty")).unwrap().ino(),
    };
    let stored: Vec<u64> = (0..PAGES).map(|k| k * MIB + 77).collect();
    let covers = move |k: &EventKind, at: u64| {
        matches!(k, EventKind::Writeback { inode, offset, len }
            if *inode == dirty && *offset <= at && at + 3 <= offset + len)
    };
    let mut events = Vec::new();
    collect_until(capture, &mut events, |ev| {
        stored.iter().all(|&at| has(ev, |k| covers(k, at)))
    })
    .await;
    let missing: Vec<_> = stored
        .iter()
        .filter(|&&at| !has(&events, |k| covers(k, at)))
        .collect();
    let seen: Vec<_> = events
        .iter()
        .filter(|e| matches!(&e.kind, EventKind::Writeback { inode, .. } if *inode == dirty))
        .map(|e| &e.kind)
        .collect();
    assert!(
        missing.is_empty(),
        "{fs}: no writeback covering stores at {missing:?}; writebacks of the file: {seen:?}"
    );
    eprintln!("{fs}: mmap over dirty pages: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_ext4() {
    exercise("ext4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_btrfs() {
    exercise("btrfs").await;
}

/// `BPF_TRACE_FEXIT` in `enum bpf_attach_type` (include/uapi/linux/bpf.h).
const BPF_TRACE_FEXIT: &str = "25";

/// BPF links held by this process whose fdinfo says they attach as fexit.
fn fexit_links() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fdinfo") else {
        return 0;
    };
    dir.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter(|info| info.contains("link_type:"))
        .filter(|info| {
            // Printed as a number (`25`) or, on newer kernels, a name (`trace_fexit`).
            info.lines().any(|l| {
                l.strip_prefix("attach_type:")
                    .is_some_and(|v| matches!(v.trim(), BPF_TRACE_FEXIT | "trace_fexit"))
            })
        })
        .count()
}

/// On these hosts fentry/fexit are refused (EPERM): `Capture::start` must fall back
/// to the tracepoints, say so through `mode()`, leave no fexit link behind, and
/// still see writes (from `sys_exit`, hence with the writer's fd).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_to_tracepoints_when_fexit_is_refused() {
    if !is_root() {
        eprintln!("skipping fallback test: needs root");
        return;
    }
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let _serial = ONE_CAPTURE.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let mount = mount_loop(tmp.path(), "ext4");
    let root = mount.dir.clone();

    let mut capture = Capture::start(&root, &CaptureOptions::default()).expect("start capture");
    assert_eq!(
        capture.mode(),
        "tp_btf",
        "fexit is expected to be refused on this host"
    );
    assert_eq!(fexit_links(), 0, "a refused fexit mode left links attached");

    sh(&root, "printf 0123456789 > w\nprintf abc >> w\n");
    let w = InodeId {
        dev: capture.watched_dev(),
        ino: std::fs::metadata(root.join("w")).unwrap().ino(),
    };
    let appended = move |k: &EventKind| matches!(k, EventKind::Write { inode, offset: 10, len: 3, fd } if *inode == w && *fd != NO_FD);
    let mut events = Vec::new();
    collect_until(&mut capture, &mut events, |ev| has(ev, appended)).await;
    assert!(
        has(&events, appended),
        "append not captured in tp_btf mode: {:?}",
        events.iter().map(|e| &e.kind).collect::<Vec<_>>()
    );
    drop(capture);
}
