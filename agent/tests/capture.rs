//! End-to-end check of the eBPF capture on loop-mounted ext4 and btrfs.
//!
//! Needs root (mount, BPF). The file operations run in child processes because
//! the capture ignores its own process (the test is the "agent" here).

// The lock only serializes tests (one capture at a time), each on its own runtime:
// holding it across awaits blocks nothing else.
#![allow(clippy::await_holding_lock)]

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use sluice_agent::capture::{
    ANCESTOR_DEV, Capture, CaptureOptions, Event, EventKind, InodeId, NO_FD, Repair, SyncKind,
    TO_END,
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
    // btrfs refuses images much smaller than 256M, XFS than 300M; the file is sparse.
    run(Command::new("truncate").args(["-s", "512M"]).arg(&img));
    match fs {
        "ext4" => run(Command::new("mkfs.ext4").arg("-q").arg(&img)),
        "xfs" => run(Command::new("mkfs.xfs").arg("-q").arg(&img)),
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
    // With another program using `bpf_find_vma` on the machine (a second agent,
    // the other filesystem's test running beside this one) the kernel cannot look
    // the mapping up and reports the fault's address for the agent to attribute.
    // Each such fault maps a whole folio, which holds two of these stores at most
    // (2 MiB folios, stores 1 MiB apart); the agent takes the folio as stored to.
    let unattributed = |ev: &[Event]| {
        2 * ev.iter().filter(|e| matches!(e.kind, EventKind::Repair { reason: Repair::FaultLookup, .. })).count()
    };
    let mut events = Vec::new();
    collect_until(capture, &mut events, |ev| {
        let missing = stored.iter().filter(|&&at| !has(ev, |k| covers(k, at))).count();
        missing <= unattributed(ev)
    })
    .await;
    let mut missing: Vec<_> = stored
        .iter()
        .filter(|&&at| !has(&events, |k| covers(k, at)))
        .collect();
    if missing.len() <= unattributed(&events) {
        missing.clear();
    }
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

// ---------------------------------------------------------------------------
// Write paths and namespace changes beyond the plain 64-bit syscalls.

/// Environment of a [`child_helper`] run: what to do, and where.
const CHILD_ACTION: &str = "SLUICE_CAPTURE_CHILD";
const CHILD_DIR: &str = "SLUICE_CAPTURE_DIR";

/// Runs `action` of [`child_helper`] in a child process of this test binary: the
/// capture ignores its own process, and these need raw syscalls or threads.
fn child(action: &str, dir: &Path) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["child_helper", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ACTION, action)
        .env(CHILD_DIR, dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child {action} failed: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Not a test: the body of [`child`] (does nothing unless asked to).
#[test]
fn child_helper() {
    let Ok(action) = std::env::var(CHILD_ACTION) else {
        return;
    };
    let dir = PathBuf::from(std::env::var_os(CHILD_DIR).unwrap());
    match action.as_str() {
        "compat" => in_single_threaded_fork(|| compat_child(&dir)),
        "shared" => shared_child(&dir),
        "ring" => ring_child(&dir),
        other => panic!("unknown child action {other}"),
    }
}

/// Runs `f` in a forked copy of this process, which has a single thread (the test
/// harness runs tests on threads of its own, and a write through an fd table
/// shared by threads is reported conservatively).
fn in_single_threaded_fork(f: impl FnOnce()) {
    // SAFETY: the child only runs `f` and exits without returning.
    match unsafe { libc::fork() } {
        0 => {
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_ok();
            // SAFETY: leaves the forked child at once.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        pid => {
            assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
            let mut status = 0;
            // SAFETY: waits for our own child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "forked child failed: {status}"
            );
        }
    }
}

/// Everything a test needs watched: dropped in order (capture, mount, tmp).
struct Watched {
    capture: Capture,
    root: PathBuf,
    mount: Mount,
    tmp: tempfile::TempDir,
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// A fresh `fs` filesystem watched from `sub` below its mount point (made a btrfs
/// subvolume when `sub` is not empty), or `None` when not root.
fn watch(fs: &str, sub: &str) -> Option<Watched> {
    watch_with(fs, sub, &CaptureOptions::default())
}

fn watch_with(fs: &str, sub: &str, options: &CaptureOptions) -> Option<Watched> {
    if !is_root() {
        eprintln!("skipping {fs} capture test: needs root");
        return None;
    }
    let serial = ONE_CAPTURE.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let mount = mount_loop(tmp.path(), fs);
    let root = if sub.is_empty() {
        mount.dir.clone()
    } else {
        run(Command::new("btrfs")
            .args(["-q", "subvolume", "create"])
            .arg(mount.dir.join(sub)));
        mount.dir.join(sub)
    };
    let capture = Capture::start(&root, options).expect("start capture");
    Some(Watched {
        capture,
        root,
        mount,
        tmp,
        _serial: serial,
    })
}

impl Watched {
    fn inode(&self, rel: &str) -> InodeId {
        InodeId {
            dev: self.capture.watched_dev(),
            ino: std::fs::metadata(self.root.join(rel)).unwrap().ino(),
        }
    }

    /// Collects events until every check holds, and fails naming those that do not.
    async fn expect(&mut self, what: &str, checks: &[Check<'_>]) -> Vec<Event> {
        let mut events = Vec::new();
        collect_until(&mut self.capture, &mut events, |ev| {
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
            "{what}: missing {missing:?} in {:#?}",
            events.iter().map(|e| &e.kind).collect::<Vec<_>>()
        );
        events
    }

    /// Makes directory `name` in the root and collects events until its Mkdir:
    /// everything caused before it has arrived by then.
    async fn until_sentinel(&mut self, name: &str) -> Vec<Event> {
        sh(&self.root, &format!("mkdir {name}"));
        let seen =
            |k: &EventKind| matches!(k, EventKind::Mkdir { path, .. } if path == name.as_bytes());
        let mut events = Vec::new();
        collect_until(&mut self.capture, &mut events, |ev| has(ev, seen)).await;
        assert!(has(&events, seen), "sentinel {name} not seen");
        events
    }
}

fn write_of(k: &EventKind, inode: InodeId) -> Option<(u64, u64)> {
    match k {
        EventKind::Write {
            inode: i,
            offset,
            len,
            ..
        } if *i == inode => Some((*offset, *len)),
        _ => None,
    }
}

async fn reflinks(fs: &str) {
    let Some(mut w) = watch(fs, "") else { return };
    sh(
        &w.root,
        r#"
head -c 300000 /dev/urandom > src
cp --reflink=always src whole
head -c 100000 /dev/urandom > part
head -c 100000 /dev/urandom > tail
python3 -c '
import fcntl, os, struct
FICLONERANGE = 0x4020940d
src = os.open("src", os.O_RDONLY)
# (src_offset, src_length, dest_offset); a length of 0 clones to the end of src.
for name, args in (("part", (0, 8192, 16384)), ("tail", (65536, 0, 40960))):
    dst = os.open(name, os.O_WRONLY)
    fcntl.ioctl(dst, FICLONERANGE, struct.pack("qQQQ", src, *args))
'
"#,
    );
    let (whole, part, tail) = (w.inode("whole"), w.inode("part"), w.inode("tail"));
    let checks: Vec<Check<'_>> = vec![
        (
            "FICLONE: the whole destination",
            Box::new(move |k| write_of(k, whole) == Some((0, 300_000))),
        ),
        (
            "FICLONERANGE",
            Box::new(move |k| write_of(k, part) == Some((16384, 8192))),
        ),
        (
            "FICLONERANGE to the end of the source",
            Box::new(move |k| write_of(k, tail) == Some((40960, 300_000 - 65536))),
        ),
    ];
    w.expect(fs, &checks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflinks_btrfs() {
    reflinks("btrfs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflinks_xfs() {
    reflinks("xfs").await;
}

/// `pwrite` on an `O_APPEND` file and `pwritev2` with `RWF_APPEND` append whatever
/// offset they are given; `pwritev2` at offset -1 writes at the file position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positioned_writes_that_append() {
    let Some(mut w) = watch("ext4", "") else {
        return;
    };
    sh(
        &w.root,
        r#"
python3 -c '
import os
with open("app", "wb") as f:
    f.write(b"a" * 100)
fd = os.open("app", os.O_WRONLY | os.O_APPEND)
assert os.pwrite(fd, b"b" * 10, 0) == 10
assert os.pwritev(fd, [b"c" * 5, b"d" * 5], 7) == 10
plain = os.open("app", os.O_WRONLY)
assert os.pwritev(plain, [b"e" * 3], 0, os.RWF_APPEND) == 3
assert os.pwritev(plain, [b"f" * 4], -1, os.RWF_DSYNC) == 4
'
"#,
    );
    let app = w.inode("app");
    let checks: Vec<Check<'_>> = vec![
        (
            "pwrite on O_APPEND",
            Box::new(move |k| write_of(k, app) == Some((100, 10))),
        ),
        (
            "pwritev on O_APPEND",
            Box::new(move |k| write_of(k, app) == Some((110, 10))),
        ),
        (
            "pwritev2 RWF_APPEND",
            Box::new(move |k| write_of(k, app) == Some((120, 3))),
        ),
        (
            "pwritev2 at offset -1",
            Box::new(move |k| write_of(k, app) == Some((0, 4))),
        ),
    ];
    let events = w.expect("O_APPEND", &checks).await;
    let wrong: Vec<_> = events
        .iter()
        .filter_map(|e| write_of(&e.kind, app))
        .filter(|&(offset, _)| offset == 7 || offset > 1 << 40)
        .collect();
    assert!(
        wrong.is_empty(),
        "writes reported at the ignored offset: {wrong:?}"
    );
}

/// Native AIO through raw syscalls (`IOCB_CMD_PWRITE`, `PWRITEV`, `FDSYNC`, reaped
/// by `io_getevents` and `io_pgetevents`) and through fio's libaio engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_aio() {
    let Some(mut w) = watch("ext4", "") else {
        return;
    };
    sh(
        &w.root,
        r#"
python3 -c '
import ctypes, mmap, os, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
IO_SETUP, IO_DESTROY, IO_GETEVENTS, IO_SUBMIT, IO_PGETEVENTS = 206, 207, 208, 209, 333
PWRITE, FDSYNC, PWRITEV = 1, 3, 8
ctx = ctypes.c_ulong(0)
assert libc.syscall(IO_SETUP, 16, ctypes.byref(ctx)) == 0
fd = os.open("aio", os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
buf = mmap.mmap(-1, 1 << 16)
buf.write(b"z" * (1 << 16))
addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
iov = ctypes.create_string_buffer(struct.pack("<QQQQ", addr, 4096, addr + 4096, 4096))
def iocb(data, opcode, offset, nbytes, where):
    return ctypes.create_string_buffer(struct.pack("<QIIHhIQQqQII", data, 0, 0, opcode, 0, fd, where, nbytes, offset, 0, 0, 0))
def submit(*cbs):
    ptrs = (ctypes.c_void_p * len(cbs))(*[ctypes.addressof(c) for c in cbs])
    assert libc.syscall(IO_SUBMIT, ctx, len(cbs), ptrs) == len(cbs), ctypes.get_errno()
events = ctypes.create_string_buffer(32 * 8)
def reap(n, call):
    got = 0
    while got < n:
        r = libc.syscall(call, ctx, 1, n - got, events, None, None)
        assert r > 0, ctypes.get_errno()
        for i in range(r):
            _, _, res, _ = struct.unpack_from("<QQqq", events, 32 * i)
            assert res >= 0, res
        got += r
a, b, c = iocb(1, PWRITE, 1 << 20, 8192, addr), iocb(2, PWRITEV, 2 << 20, 2, ctypes.addressof(iov)), iocb(3, FDSYNC, 0, 0, 0)
submit(a, b)
reap(2, IO_GETEVENTS)
submit(c)
reap(1, IO_GETEVENTS)
d = iocb(4, PWRITE, 3 << 20, 4096, addr)
submit(d)
reap(1, IO_PGETEVENTS)
libc.syscall(IO_DESTROY, ctx)
'
fio --name=aio --filename=fio-aio --ioengine=libaio --direct=1 --rw=randwrite --bs=4k \
    --size=64k --iodepth=8 --randrepeat=0 --output=/dev/null
"#,
    );
    let (aio, fio) = (w.inode("aio"), w.inode("fio-aio"));
    let twice = move |events: &[Event], range: (u64, u64)| {
        events
            .iter()
            .filter(|e| write_of(&e.kind, aio) == Some(range))
            .count()
            >= 2
    };
    let mut events = Vec::new();
    collect_until(&mut w.capture, &mut events, |ev| {
        twice(ev, (1 << 20, 8192))
            && twice(ev, (2 << 20, 8192))
            && twice(ev, (3 << 20, 4096))
            && has(ev, |k| matches!(k, EventKind::Sync { inode: Some(i), kind: SyncKind::Fdatasync, .. } if *i == aio))
            && covered(ev, fio, 0, 65536)
    })
    .await;
    let kinds: Vec<_> = events.iter().map(|e| &e.kind).collect();
    // Submission and completion each report the range.
    for range in [(1 << 20, 8192), (2 << 20, 8192), (3 << 20, 4096)] {
        assert!(
            twice(&events, range),
            "AIO write {range:?} not reported at submission and completion: {kinds:#?}"
        );
    }
    assert!(
        has(
            &events,
            |k| matches!(k, EventKind::Sync { inode: Some(i), kind: SyncKind::Fdatasync, .. } if *i == aio)
        ),
        "IOCB_CMD_FDSYNC not reported: {kinds:#?}"
    );
    assert!(
        covered(&events, fio, 0, 65536),
        "fio libaio writes not covered: {kinds:#?}"
    );
}

/// Whether the Write events of `inode` cover `[start, end)`.
fn covered(events: &[Event], inode: InodeId, start: u64, end: u64) -> bool {
    let mut ranges: Vec<(u64, u64)> = events
        .iter()
        .filter_map(|e| write_of(&e.kind, inode))
        .map(|(o, l)| (o, o.saturating_add(l)))
        .collect();
    ranges.sort_unstable();
    let mut reached = start;
    for (s, e) in ranges {
        if s > reached {
            break;
        }
        reached = reached.max(e);
    }
    reached >= end
}

/// Relative paths from a cwd above the root (`cd /srv && mv data/a data/b` with
/// `/srv/data` watched) carry their base as an ancestor of the root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_paths_from_above_the_root() {
    let Some(mut w) = watch("ext4", "") else {
        return;
    };
    let parent = w.tmp.path().canonicalize().unwrap();
    let ancestors = w.capture.ancestors().to_vec();
    assert_eq!(ancestors.first(), Some(&parent), "{ancestors:?}");
    assert_eq!(ancestors.last().map(PathBuf::as_path), Some(Path::new("/")));
    let slash = ancestors.len() as u64 - 1;
    sh(
        &parent,
        "mkdir mnt/d && touch mnt/d/a && mv mnt/d/a mnt/d/b && rm mnt/d/b",
    );
    let from_root = w.root.canonicalize().unwrap();
    let from_root = from_root.strip_prefix("/").unwrap().join("e");
    sh(Path::new("/"), &format!("mkdir {}", from_root.display()));
    let up = |k: u64| InodeId {
        dev: ANCESTOR_DEV,
        ino: k,
    };
    let from_root = from_root.as_os_str().as_encoded_bytes().to_vec();
    let checks: Vec<Check<'_>> = vec![
        (
            "mkdir",
            Box::new(
                move |k| matches!(k, EventKind::Mkdir { base, path, .. } if *base == up(0) && path == b"mnt/d"),
            ),
        ),
        (
            "rename",
            Box::new(move |k| {
                matches!(k, EventKind::Rename { from_base, from, to_base, to, .. }
                    if *from_base == up(0) && *to_base == up(0) && from == b"mnt/d/a" && to == b"mnt/d/b")
            }),
        ),
        (
            "unlink",
            Box::new(
                move |k| matches!(k, EventKind::Unlink { base, path } if *base == up(0) && path == b"mnt/d/b"),
            ),
        ),
        (
            "mkdir from /",
            Box::new(
                move |k| matches!(k, EventKind::Mkdir { base, path, .. } if *base == up(slash) && *path == from_root),
            ),
        ),
    ];
    w.expect("relative paths", &checks).await;
}

/// btrfs snapshots and nested subvolumes share `s_dev` and inode numbers with the
/// watched subvolume: changes there must not look like changes of the tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs_snapshots_are_not_the_tree() {
    let Some(mut w) = watch("btrfs", "vol") else {
        return;
    };
    assert_ne!(w.capture.watched_subvol(), 0);
    let (root_id, dev) = (w.capture.root(), w.capture.watched_dev());
    sh(
        &w.root,
        "for f in a b c e f; do head -c 10000 /dev/urandom > $f; done; mkdir d",
    );
    // Whatever the setup produced.
    w.until_sentinel("sentinel-0").await;

    let mnt = w.mount.dir.clone();
    sh(
        &mnt,
        r#"
btrfs -q subvolume snapshot vol snap
cd snap
echo more >> a
rm b
mkdir d/new
mv c c2
truncate -s 10 e
dd if=/dev/zero of=f bs=4k count=1 conv=notrunc status=none
python3 -c '
import mmap, os
fd = os.open("f", os.O_RDWR)
with mmap.mmap(fd, 4096) as m:
    m[0] = 0x41
    m.flush()
os.fsync(fd)
'
rm "$PWD/a"
cd ..
btrfs -q subvolume create vol/nested
echo hi > vol/nested/x
dd if=/dev/zero of=vol/nested/x bs=4k count=2 conv=notrunc status=none
(cd vol/nested && mkdir y && rm x)
"#,
    );
    let events = w.until_sentinel("sentinel-1").await;
    for e in &events {
        let bad = match &e.kind {
            EventKind::Mkdir { path, .. } if path == b"sentinel-1" => false,
            EventKind::Write { inode, .. }
            | EventKind::Truncate { inode, .. }
            | EventKind::Fallocate { inode, .. }
            | EventKind::FdMeta { inode, .. }
            | EventKind::Writeback { inode, .. }
            | EventKind::XattrFd { inode, .. }
            | EventKind::Changed { inode, .. }
            | EventKind::Sync {
                inode: Some(inode), ..
            } => inode.dev == dev,
            EventKind::OpenCreate { .. } => true,
            EventKind::Mkdir { base, .. }
            | EventKind::Rmdir { base, .. }
            | EventKind::Unlink { base, .. }
            | EventKind::PathMeta { base, .. }
            | EventKind::PathTruncate { base, .. } => *base == root_id || base.dev == dev,
            EventKind::Rename {
                from_base, to_base, ..
            } => *from_base == root_id || from_base.dev == dev || to_base.dev == dev,
            _ => false,
        };
        assert!(
            !bad,
            "a change outside the watched subvolume looks like one inside: {e:?}"
        );
    }
}

/// 32-bit syscalls (`int 0x80` from this 64-bit program) are decoded with the
/// ia32 numbers and registers, never as 64-bit ones.
#[cfg(target_arch = "x86_64")]
/// The smallest static 32-bit x86 program: `exit(0)` through `int 0x80`.
fn elf32_exit() -> Vec<u8> {
    const BASE: u32 = 0x0804_8000;
    const CODE: &[u8] = &[0xb8, 1, 0, 0, 0, 0x31, 0xdb, 0xcd, 0x80]; // mov eax,1; xor ebx,ebx; int 0x80
    let len = (52 + 32 + CODE.len()) as u32;
    let mut elf = vec![0x7f, b'E', b'L', b'F', 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&3u16.to_le_bytes()); // EM_386
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(BASE + 84).to_le_bytes()); // entry
    elf.extend_from_slice(&52u32.to_le_bytes()); // program headers
    elf.extend_from_slice(&[0; 8]); // no sections, no flags
    for half in [52u16, 32, 1, 0, 0, 0] {
        elf.extend_from_slice(&half.to_le_bytes());
    }
    for word in [1u32, 0, BASE, BASE, len, len, 5, 0x1000] {
        elf.extend_from_slice(&word.to_le_bytes()); // PT_LOAD, R+X
    }
    elf.extend_from_slice(CODE);
    elf
}

/// By default 32-bit syscalls are not hooked (the raw `sys_exit` tracepoint
/// would run on every syscall of the system): the exec of a 32-bit program is
/// announced once, and its syscalls are decoded from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_exec_announces_32_bit_programs() {
    let Some(mut w) = watch("ext4", "") else {
        return;
    };
    let program = w.tmp.path().join("exit32");
    std::fs::write(&program, elf32_exit()).unwrap();
    std::fs::set_permissions(&program, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    assert!(Command::new(&program).status().unwrap().success(), "a 32-bit program runs here");
    w.expect(
        "32-bit exec",
        &[("announced", Box::new(|k| matches!(k, EventKind::Repair { reason: Repair::CompatExec, .. })))],
    )
    .await;
    // Once attached, the next run's writes are decoded.
    child("compat", &w.root);
    let f = w.inode("compat.dat");
    w.expect("32-bit writes", &[("write family", Box::new(move |k| write_of(k, f) == Some((0, 100))))]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_syscalls() {
    // 32-bit syscalls captured from the start: what is checked here is how they
    // are decoded (`compat_exec_announces_32_bit_programs` checks the default).
    let Some(mut w) = watch_with("ext4", "", &CaptureOptions { compat_always: true, ..CaptureOptions::default() }) else {
        return;
    };
    child("compat", &w.root);
    let f = w.inode("compat.dat");
    const FOUR_GIB: u64 = 1 << 32;
    let writes = [
        (0, 100),
        (5000, 50),
        (FOUR_GIB + 16, 20),
        (100, 30),
        (8192, 10),
    ];
    let mut checks: Vec<Check<'_>> = writes
        .iter()
        .map(|&range| -> Check<'_> {
            (
                "write family",
                Box::new(move |k| write_of(k, f) == Some(range)),
            )
        })
        .collect();
    checks.push((
        "open",
        Box::new(|k| matches!(k, EventKind::OpenCreate { path, .. } if path == b"compat.dat")),
    ));
    checks.push(("ftruncate64", Box::new(move |k| matches!(k, EventKind::Truncate { inode, size, .. } if *inode == f && *size == FOUR_GIB + 100))));
    checks.push(("fallocate", Box::new(move |k| matches!(k, EventKind::Fallocate { inode, offset: 20000, len: 4096, .. } if *inode == f))));
    checks.push((
        "ftruncate",
        Box::new(
            move |k| matches!(k, EventKind::Truncate { inode, size: 30000, .. } if *inode == f),
        ),
    ));
    let events = w.expect("compat", &checks).await;
    let stray: Vec<_> = events
        .iter()
        .filter_map(|e| write_of(&e.kind, f))
        .filter(|range| !writes.contains(range))
        .collect();
    assert!(
        stray.is_empty(),
        "32-bit syscalls decoded as other writes: {stray:?}"
    );
}

#[cfg(target_arch = "x86_64")]
/// `int 0x80` with the ia32 syscall number and up to six 32-bit arguments.
///
/// # Safety
/// The arguments must be valid for the syscall; pointers must be below 4 GiB.
unsafe fn int80(nr: u32, a: [u32; 6]) -> i32 {
    let ret: i32;
    // SAFETY: rbx and rbp cannot be asm operands; they are saved and restored
    // around the trap. The stack is used (no `nostack`).
    unsafe {
        core::arch::asm!(
            "push rbx",
            "push rbp",
            "mov ebx, {b:e}",
            "mov ebp, {p:e}",
            "int 0x80",
            "pop rbp",
            "pop rbx",
            b = in(reg) a[0],
            p = in(reg) a[5],
            inlateout("eax") nr as i32 => ret,
            in("ecx") a[1],
            in("edx") a[2],
            in("esi") a[3],
            in("edi") a[4],
        );
    }
    ret
}

#[cfg(target_arch = "x86_64")]
fn compat_child(dir: &Path) {
    std::env::set_current_dir(dir).unwrap();
    // Every pointer passed to a 32-bit syscall must fit in 32 bits.
    // SAFETY: an anonymous private mapping.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            1 << 16,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
            -1,
            0,
        )
    };
    assert_ne!(mem, libc::MAP_FAILED);
    let base = mem as usize;
    assert!(base + (1 << 16) < 1 << 32);
    let at = |off: usize| (base + off) as u32;
    // SAFETY: all within the 64 KiB mapping.
    unsafe {
        let name = c"compat.dat".to_bytes_with_nul();
        std::ptr::copy_nonoverlapping(name.as_ptr(), mem as *mut u8, name.len());
        std::ptr::write_bytes((base + 4096) as *mut u8, b'c', 8192);
        // Two `struct compat_iovec { u32 base; u32 len; }`.
        let iov = (base + 2048) as *mut u32;
        *iov = at(4096);
        *iov.add(1) = 10;
        *iov.add(2) = at(4096);
        *iov.add(3) = 20;
    }
    let call = |nr: u32, a: [u32; 6]| {
        // SAFETY: arguments built above for each call.
        unsafe { int80(nr, a) }
    };
    // ia32 `O_LARGEFILE`: without it a 32-bit open refuses offsets past 2 GiB.
    const O_LARGEFILE_32: u32 = 0o100000;
    let flags = (libc::O_WRONLY | libc::O_CREAT) as u32 | O_LARGEFILE_32;
    let fd = call(5, [at(0), flags, 0o644, 0, 0, 0]);
    assert!(fd >= 0, "open: {fd}");
    let fd = fd as u32;
    assert_eq!(call(4, [fd, at(4096), 100, 0, 0, 0]), 100, "write");
    assert_eq!(call(181, [fd, at(4096), 50, 5000, 0, 0]), 50, "pwrite64");
    assert_eq!(
        call(181, [fd, at(4096), 20, 16, 1, 0]),
        20,
        "pwrite64 past 4 GiB"
    );
    assert_eq!(call(146, [fd, at(2048), 2, 0, 0, 0]), 30, "writev");
    assert_eq!(call(334, [fd, at(2048), 1, 8192, 0, 0]), 10, "pwritev");
    assert_eq!(call(194, [fd, 100, 1, 0, 0, 0]), 0, "ftruncate64");
    assert_eq!(call(324, [fd, 0, 20000, 0, 4096, 0]), 0, "fallocate");
    assert_eq!(call(93, [fd, 30000, 0, 0, 0, 0]), 0, "ftruncate");
    // ia32 getpid (20) is the 64-bit writev: with an fd, an iovec and a count in
    // the registers a 64-bit decoding would report a write of `pid` bytes.
    assert!(call(20, [0, 0, 1, at(2048), fd, 0]) > 0, "getpid");
    assert_eq!(call(6, [fd, 0, 0, 0, 0, 0]), 0, "close");
}

#[cfg(not(target_arch = "x86_64"))]
fn compat_child(_dir: &Path) {}

/// Header of each block [`shared_child`] writes, followed by its number.
const SHARED_MARK: &[u8] = b"<sluice-shared-block:";
const SHARED_BLOCKS: usize = 3000;
const SHARED_BLOCK: usize = 4096;

/// Two threads share one fd: one writes numbered blocks, the other moves the
/// shared position forward (`lseek(fd, 600, SEEK_CUR)`, as a read of 600 bytes
/// would, only faster), which can happen between a write and its syscall exit.
fn shared_child(dir: &Path) {
    use std::os::fd::AsRawFd as _;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("shared.dat"))
        .unwrap();
    let fd = file.as_raw_fd();
    let done = std::sync::atomic::AtomicBool::new(false);
    let started = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            pin_to_cpu(1);
            started.store(true, std::sync::atomic::Ordering::Relaxed);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: moves the position of a live fd forward.
                unsafe { libc::lseek(fd, 600, libc::SEEK_CUR) };
            }
        });
        pin_to_cpu(0);
        while !started.load(std::sync::atomic::Ordering::Relaxed) {
            std::hint::spin_loop();
        }
        for k in 0..SHARED_BLOCKS {
            let mut block = vec![(k % 251) as u8; SHARED_BLOCK];
            let mark = format!("{}{k:08}>", String::from_utf8_lossy(SHARED_MARK));
            block[..mark.len()].copy_from_slice(mark.as_bytes());
            // SAFETY: writes a local buffer through a live fd.
            let n = unsafe { libc::write(fd, block.as_ptr().cast(), block.len()) };
            assert_eq!(n, SHARED_BLOCK as isize);
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}

/// Runs the calling thread on `cpu` only (best effort: the two sides of a race
/// should run at the same time).
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; the calls only read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(
            cpu % libc::sysconf(libc::_SC_NPROCESSORS_ONLN).max(1) as usize,
            &mut set,
        );
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Where each block of [`shared_child`] landed in `data`.
fn shared_blocks(data: &[u8]) -> Vec<u64> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(i) = data[at..]
        .windows(SHARED_MARK.len())
        .position(|w| w == SHARED_MARK)
    {
        found.push((at + i) as u64);
        at += i + SHARED_MARK.len();
    }
    found
}

/// A write through an fd another thread uses at the same time (here: moving the
/// shared position forward) is reported with a range that contains it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_a_shared_fd() {
    let Some(mut w) = watch("ext4", "") else {
        return;
    };
    sh(&w.root, "head -c 33554432 /dev/urandom > shared.dat");
    let f = w.inode("shared.dat");
    w.until_sentinel("sentinel-0").await;
    child("shared", &w.root);
    let events = w.until_sentinel("sentinel-1").await;
    let data = std::fs::read(w.root.join("shared.dat")).unwrap();
    let blocks = shared_blocks(&data);
    assert_eq!(blocks.len(), SHARED_BLOCKS);
    let missed: Vec<u64> = blocks
        .iter()
        .copied()
        .filter(|&p| !covered(&events, f, p, p + SHARED_BLOCK as u64))
        .collect();
    let reported = events
        .iter()
        .filter(|e| write_of(&e.kind, f).is_some())
        .count();
    let starts: std::collections::HashSet<u64> = blocks.iter().copied().collect();
    // Writes whose position moved between the write and its exit: `f_pos - ret`
    // alone would have named the wrong bytes.
    let moved = events
        .iter()
        .filter_map(|e| write_of(&e.kind, f))
        .filter(|&(offset, len)| !(len == SHARED_BLOCK as u64 && starts.contains(&offset)))
        .count();
    eprintln!(
        "shared fd: {reported} write events for {SHARED_BLOCKS} blocks, {moved} with the position moved"
    );
    assert!(
        missed.is_empty(),
        "{} blocks written outside every reported range, first at {:?}",
        missed.len(),
        &missed[..missed.len().min(5)]
    );
}

/// io_uring requests other than writes: a file created by a ring OPENAT and
/// changed by ring WRITE, FALLOCATE and FTRUNCATE, and ring namespace changes.
fn ring_child(dir: &Path) {
    use io_uring::{IoUring, opcode, types::Fd};
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt as _;
    let path = |name: &str| CString::new(dir.join(name).as_os_str().as_bytes()).unwrap();
    let mut ring = IoUring::new(8).unwrap();
    let mut run = |entry: io_uring::squeue::Entry| -> i32 {
        // SAFETY: every pointer the entry holds outlives the wait below.
        unsafe { ring.submission().push(&entry).unwrap() };
        ring.submit_and_wait(1).unwrap();
        ring.completion().next().unwrap().result()
    };
    let created = path("ring-created");
    let fd = run(opcode::OpenAt::new(Fd(libc::AT_FDCWD), created.as_ptr())
        .flags(libc::O_CREAT | libc::O_WRONLY)
        .mode(0o644)
        .build());
    assert!(fd >= 0, "ring openat: {fd}");
    let data = vec![b'r'; 10000];
    assert_eq!(
        run(opcode::Write::new(Fd(fd), data.as_ptr(), 10000)
            .offset(0)
            .build()),
        10000
    );
    assert_eq!(run(opcode::Fallocate::new(Fd(fd), 65536).build()), 0);
    assert_eq!(run(opcode::Ftruncate::new(Fd(fd), 20000).build()), 0);
    let new_dir = path("ring-dir");
    assert_eq!(
        run(opcode::MkDirAt::new(Fd(libc::AT_FDCWD), new_dir.as_ptr())
            .mode(0o755)
            .build()),
        0
    );
    let renamed = path("ring-renamed");
    assert_eq!(
        run(opcode::RenameAt::new(
            Fd(libc::AT_FDCWD),
            created.as_ptr(),
            Fd(libc::AT_FDCWD),
            renamed.as_ptr()
        )
        .build()),
        0
    );
    let doomed = path("ring-doomed");
    assert_eq!(
        run(opcode::UnlinkAt::new(Fd(libc::AT_FDCWD), doomed.as_ptr()).build()),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_uring_operations_beyond_writes() {
    let Some(mut w) = watch("ext4", "") else {
        return;
    };
    sh(&w.root, "echo bye > ring-doomed");
    w.until_sentinel("sentinel-0").await;
    child("ring", &w.root);
    let f = w.inode("ring-renamed");
    let namespace = |code: u64| move |k: &EventKind| matches!(k, EventKind::Repair { reason: Repair::IoUringNamespace, detail } if *detail == code);
    let checks: Vec<Check<'_>> = vec![
        (
            "OPENAT with O_CREAT",
            Box::new(
                move |k| matches!(k, EventKind::Changed { inode, offset: 0, len: 0, fd } if *inode == f && *fd != NO_FD),
            ),
        ),
        (
            "WRITE",
            Box::new(
                move |k| matches!(k, EventKind::Write { inode, offset: 0, len: 10000, fd: NO_FD } if *inode == f),
            ),
        ),
        (
            "FALLOCATE",
            Box::new(
                move |k| matches!(k, EventKind::Changed { inode, offset: 0, len: 65536, .. } if *inode == f),
            ),
        ),
        (
            "FTRUNCATE",
            Box::new(
                move |k| matches!(k, EventKind::Changed { inode, offset: 0, len: 20000, .. } if *inode == f),
            ),
        ),
        ("MKDIRAT", Box::new(namespace(37))),
        ("RENAMEAT", Box::new(namespace(35))),
        ("UNLINKAT", Box::new(namespace(36))),
    ];
    w.expect("io_uring", &checks).await;
}
