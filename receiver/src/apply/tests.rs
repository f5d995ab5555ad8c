use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use sluice_proto::{Attrs, Op, RelPath, Timestamp, blocks};

use super::{Applier, ApplyError};

pub(super) fn p(s: &str) -> RelPath {
    RelPath::from_bytes(s).unwrap()
}

pub(super) fn write(path: &str, offset: u64, data: &[u8]) -> Op {
    Op::Write {
        path: p(path),
        offset,
        data: data.to_vec(),
        hash: blocks::hash(data),
    }
}

fn setup() -> (tempfile::TempDir, Applier) {
    let dir = tempfile::tempdir().unwrap();
    let applier = Applier::open(dir.path()).unwrap();
    (dir, applier)
}

#[test]
fn write_creates_and_overwrites_in_place() {
    let (dir, mut a) = setup();
    assert_eq!(
        a.apply(&write("f", 0, b"hello world"))
            .unwrap()
            .bytes_written,
        11
    );
    let ino = fs::metadata(dir.path().join("f")).unwrap().ino();
    a.apply(&write("f", 6, b"WORLD")).unwrap();
    a.apply(&write("f", 20, b"!")).unwrap();
    let content = fs::read(dir.path().join("f")).unwrap();
    assert_eq!(&content[..11], b"hello WORLD");
    assert_eq!(content.len(), 21);
    assert_eq!(
        fs::metadata(dir.path().join("f")).unwrap().ino(),
        ino,
        "written in place"
    );
    assert_eq!(
        fs::metadata(dir.path().join("f")).unwrap().mode() & 0o777,
        0o600
    );
    assert_eq!(a.cache.len(), 1);
}

#[test]
fn write_into_missing_parent_is_an_error() {
    let (dir, mut a) = setup();
    let err = a.apply(&write("nodir/f", 0, b"x")).unwrap_err();
    assert!(matches!(err, ApplyError::MissingParent { .. }), "{err}");
    assert!(!dir.path().join("nodir").exists());
}

#[test]
fn hash_mismatch_writes_nothing() {
    let (dir, mut a) = setup();
    let op = Op::Write {
        path: p("f"),
        offset: 0,
        data: b"evil".to_vec(),
        hash: blocks::hash(b"good"),
    };
    let err = a.apply(&op).unwrap_err();
    assert!(matches!(err, ApplyError::HashMismatch { .. }), "{err}");
    assert!(!dir.path().join("f").exists());
}

#[test]
fn set_attrs_applies_size_mode_owner_mtime() {
    let (dir, mut a) = setup();
    a.apply(&write("f", 0, &[1u8; 100])).unwrap();
    let mtime = Timestamp {
        secs: 1_600_000_000,
        nanos: 123_456_789,
    };
    let attrs = Attrs {
        size: Some(10),
        mode: Some(0o640),
        uid: Some(1234),
        gid: Some(5678),
        mtime: Some(mtime),
    };
    a.apply(&Op::SetAttrs {
        path: p("f"),
        attrs,
    })
    .unwrap();
    let meta = fs::metadata(dir.path().join("f")).unwrap();
    assert_eq!(meta.len(), 10);
    assert_eq!(meta.mode() & 0o7777, 0o640);
    if nix::unistd::geteuid().is_root() {
        assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
    }
    assert_eq!(
        (meta.mtime(), meta.mtime_nsec()),
        (1_600_000_000, 123_456_789)
    );
    // The root's own attributes can be set.
    a.apply(&Op::SetAttrs {
        path: RelPath::root(),
        attrs: Attrs {
            mode: Some(0o751),
            ..Attrs::default()
        },
    })
    .unwrap();
    assert_eq!(fs::metadata(dir.path()).unwrap().mode() & 0o7777, 0o751);
    // A symlink keeps its mode but gets its own mtime, not its target's.
    a.apply(&Op::Symlink {
        path: p("l"),
        target: b"f".to_vec(),
    })
    .unwrap();
    let attrs = Attrs {
        mode: Some(0o600),
        mtime: Some(Timestamp { secs: 5, nanos: 0 }),
        ..Attrs::default()
    };
    a.apply(&Op::SetAttrs {
        path: p("l"),
        attrs,
    })
    .unwrap();
    assert_eq!(
        fs::symlink_metadata(dir.path().join("l")).unwrap().mtime(),
        5
    );
    assert_eq!(
        fs::metadata(dir.path().join("f")).unwrap().mtime(),
        1_600_000_000
    );
    let err = a
        .apply(&Op::SetAttrs {
            path: p("missing"),
            attrs: Attrs::default(),
        })
        .unwrap_err();
    assert!(matches!(err, ApplyError::NotFound { .. }), "{err}");
}

#[test]
fn create_file_truncates_and_sets_mode() {
    let (dir, mut a) = setup();
    a.apply(&write("f", 0, b"content")).unwrap();
    a.apply(&Op::CreateFile {
        path: p("f"),
        mode: 0o644,
        truncate: false,
    })
    .unwrap();
    assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"content");
    a.apply(&Op::CreateFile {
        path: p("f"),
        mode: 0o604,
        truncate: true,
    })
    .unwrap();
    let meta = fs::metadata(dir.path().join("f")).unwrap();
    assert_eq!((meta.len(), meta.mode() & 0o777), (0, 0o604));
    a.apply(&Op::CreateFile {
        path: p("g"),
        mode: 0o755,
        truncate: false,
    })
    .unwrap();
    assert_eq!(
        fs::metadata(dir.path().join("g")).unwrap().mode() & 0o777,
        0o755
    );
}

#[test]
fn mkdir_is_idempotent_and_ignores_umask() {
    let (dir, mut a) = setup();
    a.apply(&Op::Mkdir {
        path: p("d"),
        mode: 0o777,
    })
    .unwrap();
    a.apply(&Op::Mkdir {
        path: p("d"),
        mode: 0o777,
    })
    .unwrap();
    a.apply(&Op::Mkdir {
        path: p("d/e"),
        mode: 0o750,
    })
    .unwrap();
    assert_eq!(
        fs::metadata(dir.path().join("d")).unwrap().mode() & 0o7777,
        0o777
    );
    assert_eq!(
        fs::metadata(dir.path().join("d/e")).unwrap().mode() & 0o7777,
        0o750
    );
    // A file in the way is replaced.
    fs::write(dir.path().join("x"), b"").unwrap();
    a.apply(&Op::Mkdir {
        path: p("x"),
        mode: 0o755,
    })
    .unwrap();
    assert!(dir.path().join("x").is_dir());
}

#[test]
fn symlink_replaces_other_entries() {
    let (dir, mut a) = setup();
    a.apply(&Op::Symlink {
        path: p("l"),
        target: b"a/b".to_vec(),
    })
    .unwrap();
    a.apply(&Op::Symlink {
        path: p("l"),
        target: b"a/b".to_vec(),
    })
    .unwrap();
    assert_eq!(
        fs::read_link(dir.path().join("l")).unwrap(),
        Path::new("a/b")
    );
    a.apply(&Op::Symlink {
        path: p("l"),
        target: b"/elsewhere".to_vec(),
    })
    .unwrap();
    assert_eq!(
        fs::read_link(dir.path().join("l")).unwrap(),
        Path::new("/elsewhere")
    );
    fs::create_dir_all(dir.path().join("d/sub")).unwrap();
    a.apply(&Op::Symlink {
        path: p("d"),
        target: b"l".to_vec(),
    })
    .unwrap();
    assert_eq!(fs::read_link(dir.path().join("d")).unwrap(), Path::new("l"));
}

#[test]
fn hard_link_and_fifo() {
    let (dir, mut a) = setup();
    a.apply(&write("f", 0, b"data")).unwrap();
    a.apply(&Op::HardLink {
        existing: p("f"),
        path: p("g"),
    })
    .unwrap();
    a.apply(&Op::HardLink {
        existing: p("f"),
        path: p("g"),
    })
    .unwrap();
    let (f, g) = (
        fs::metadata(dir.path().join("f")).unwrap(),
        fs::metadata(dir.path().join("g")).unwrap(),
    );
    assert_eq!(f.ino(), g.ino());
    assert_eq!(f.nlink(), 2);
    let err = a
        .apply(&Op::HardLink {
            existing: p("nope"),
            path: p("h"),
        })
        .unwrap_err();
    assert!(matches!(err, ApplyError::NotFound { .. }), "{err}");

    a.apply(&Op::Mkfifo {
        path: p("pipe"),
        mode: 0o640,
    })
    .unwrap();
    a.apply(&Op::Mkfifo {
        path: p("pipe"),
        mode: 0o640,
    })
    .unwrap();
    let meta = fs::symlink_metadata(dir.path().join("pipe")).unwrap();
    assert!(meta.file_type().is_fifo());
    assert_eq!(meta.mode() & 0o777, 0o640);
}

#[test]
fn remove_is_recursive_and_idempotent() {
    let (dir, mut a) = setup();
    fs::create_dir_all(dir.path().join("d/e/f")).unwrap();
    fs::write(dir.path().join("d/e/file"), b"x").unwrap();
    std::os::unix::fs::symlink("/etc", dir.path().join("d/link")).unwrap();
    a.apply(&write("d/e/f/cached", 0, b"x")).unwrap();
    a.apply(&Op::Remove { path: p("d") }).unwrap();
    assert!(!dir.path().join("d").exists());
    assert!(Path::new("/etc/passwd").exists() || Path::new("/etc").exists());
    a.apply(&Op::Remove { path: p("d") }).unwrap();
    a.apply(&Op::Remove {
        path: p("d/e/gone"),
    })
    .unwrap();
    assert_eq!(a.cache.len(), 0);
}

#[test]
fn rename_flags_and_replay() {
    let (dir, mut a) = setup();
    a.apply(&write("a", 0, b"A")).unwrap();
    a.apply(&write("b", 0, b"B")).unwrap();
    let rename = |from: &str, to: &str, exchange, noreplace| Op::Rename {
        from: p(from),
        to: p(to),
        exchange,
        noreplace,
    };
    a.apply(&rename("a", "b", true, false)).unwrap();
    assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"B");
    let err = a.apply(&rename("a", "b", false, true)).unwrap_err();
    assert!(matches!(err, ApplyError::Sys { .. }), "{err}");
    a.apply(&rename("a", "c", false, false)).unwrap();
    // Replayed: the source is gone and the target exists.
    a.apply(&rename("a", "c", false, false)).unwrap();
    assert_eq!(fs::read(dir.path().join("c")).unwrap(), b"B");
    // A later write through the old name must not land in the renamed file.
    a.apply(&write("a", 0, b"new")).unwrap();
    assert_eq!(fs::read(dir.path().join("c")).unwrap(), b"B");
    let err = a
        .apply(&rename("nope", "nothing", false, false))
        .unwrap_err();
    assert!(matches!(err, ApplyError::NotFound { .. }), "{err}");
    // Directories move with what is cached below them.
    a.apply(&Op::Mkdir {
        path: p("d"),
        mode: 0o755,
    })
    .unwrap();
    a.apply(&write("d/f", 0, b"1")).unwrap();
    a.apply(&rename("d", "e", false, false)).unwrap();
    a.apply(&write("e/f", 1, b"2")).unwrap();
    assert_eq!(fs::read(dir.path().join("e/f")).unwrap(), b"12");
}

#[test]
fn root_and_reserved_paths_are_refused() {
    let (dir, mut a) = setup();
    let root = RelPath::root();
    assert!(matches!(
        a.apply(&Op::Remove { path: root.clone() }),
        Err(ApplyError::Root { .. })
    ));
    let rename = Op::Rename {
        from: root.clone(),
        to: p("x"),
        exchange: false,
        noreplace: false,
    };
    assert!(matches!(a.apply(&rename), Err(ApplyError::Root { .. })));
    a.apply(&Op::Mkdir {
        path: root,
        mode: 0o755,
    })
    .unwrap();
    for op in [
        write(".sluice/state", 0, b"9"),
        Op::Mkdir {
            path: p(".sluice"),
            mode: 0o755,
        },
    ] {
        assert!(matches!(a.apply(&op), Err(ApplyError::Reserved { .. })));
    }
    assert!(!dir.path().join(".sluice").exists());
    // Only the first component is reserved.
    a.apply(&Op::Mkdir {
        path: p("d"),
        mode: 0o755,
    })
    .unwrap();
    a.apply(&Op::Mkdir {
        path: p("d/.sluice"),
        mode: 0o755,
    })
    .unwrap();
}

#[test]
fn symlink_escapes_are_refused() {
    let (dir, mut a) = setup();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("evil")).unwrap();
    std::os::unix::fs::symlink("../..", dir.path().join("up")).unwrap();
    fs::write(dir.path().join("inside"), b"x").unwrap();
    let ops = [
        write("evil/x", 0, b"pwned"),
        Op::Mkdir {
            path: p("evil/y"),
            mode: 0o755,
        },
        Op::Rename {
            from: p("inside"),
            to: p("evil/z"),
            exchange: false,
            noreplace: false,
        },
        Op::Symlink {
            path: p("evil/s"),
            target: b"/".to_vec(),
        },
        Op::HardLink {
            existing: p("inside"),
            path: p("evil/h"),
        },
        Op::Mkfifo {
            path: p("evil/p"),
            mode: 0o644,
        },
        Op::CreateFile {
            path: p("evil/c"),
            mode: 0o644,
            truncate: true,
        },
        Op::SetAttrs {
            path: p("evil/x"),
            attrs: Attrs::default(),
        },
        write("up/x", 0, b"pwned"),
        Op::Remove { path: p("up/tmp") },
    ];
    for op in ops {
        match a.apply(&op) {
            Err(ApplyError::Escapes { .. } | ApplyError::Symlink { .. }) => {}
            other => panic!("{op:?}: expected Escapes or Symlink, got {other:?}"),
        }
    }
    assert_eq!(
        fs::read_dir(outside.path()).unwrap().count(),
        0,
        "nothing created outside"
    );
    assert!(dir.path().join("inside").exists());
    // A final-component symlink is not followed for writes either.
    std::os::unix::fs::symlink(outside.path().join("target"), dir.path().join("last")).unwrap();
    assert!(a.apply(&write("last", 0, b"x")).is_err());
    assert!(!outside.path().join("target").exists());
    // The symlink itself can be removed without touching what it points at.
    a.apply(&Op::Remove { path: p("evil") }).unwrap();
    assert!(outside.path().exists());
}

#[test]
fn fallocate_punches_holes_in_place() {
    let (dir, mut a) = setup();
    let path = p("sparse");
    let data = vec![7u8; 1 << 20];
    a.apply(&Op::Write { path: path.clone(), offset: 0, hash: blocks::hash(&data), data }).unwrap();
    a.sync_to_disk().unwrap();
    let before = std::fs::metadata(dir.path().join("sparse")).unwrap();
    let punch = (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE) as u32;
    a.apply(&Op::Fallocate { path: path.clone(), mode: punch, offset: 0, len: 512 * 1024 }).unwrap();
    let after = std::fs::metadata(dir.path().join("sparse")).unwrap();
    assert_eq!(after.len(), 1 << 20);
    assert!(after.blocks() < before.blocks(), "{} !< {}", after.blocks(), before.blocks());
    assert_eq!(after.ino(), before.ino());
    let content = std::fs::read(dir.path().join("sparse")).unwrap();
    assert!(content[..512 * 1024].iter().all(|&b| b == 0));
    assert!(content[512 * 1024..].iter().all(|&b| b == 7));
}

#[test]
fn xattrs_are_made_exactly_equal() {
    let (dir, mut a) = setup();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    xattr::set(dir.path().join("f"), "user.stale", b"old").unwrap();
    let wanted = vec![
        sluice_proto::Xattr { name: b"user.a".to_vec(), value: b"1".to_vec() },
        sluice_proto::Xattr { name: b"user.b".to_vec(), value: vec![0, 1, 2] },
    ];
    a.apply(&Op::SetXattrs { path: p("f"), xattrs: wanted.clone() }).unwrap();
    assert_eq!(a.xattrs(&p("f")).unwrap(), wanted);
    assert!(xattr::get(dir.path().join("f"), "user.stale").unwrap().is_none());
}

#[test]
fn device_nodes_are_created() {
    let (dir, mut a) = setup();
    a.enable_devices();
    let rdev = libc::makedev(1, 3);
    a.apply(&Op::Mknod { path: p("null"), mode: libc::S_IFCHR | 0o640, rdev }).unwrap();
    let meta = std::fs::symlink_metadata(dir.path().join("null")).unwrap();
    assert!(meta.file_type().is_char_device());
    assert_eq!(meta.rdev(), rdev);
    assert_eq!(meta.mode() & 0o7777, 0o640);
}
