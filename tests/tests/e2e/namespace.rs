//! Every namespace and metadata operation of the master is mirrored.

use crate::common::converge;
use sluice_tests::{FsKind, LoopFs, Pair, random_bytes, run};
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::time::Duration;

fn namespace_and_metadata_are_mirrored(kind: FsKind) {
    let master = LoopFs::new(kind, 256).unwrap();
    let standby = LoopFs::new(kind, 256).unwrap();
    let m = master.path();
    fs::write(m.join("existing"), b"before the agent started").unwrap();
    let pair = Pair::start(m, standby.path()).unwrap();

    // Creation and content.
    fs::create_dir_all(m.join("a/b/c")).unwrap();
    fs::write(m.join("a/b/c/new.txt"), random_bytes(10_000, 1)).unwrap();
    fs::write(m.join("doomed"), b"x").unwrap();
    fs::create_dir(m.join("empty-dir")).unwrap();
    converge(&pair, Duration::from_secs(30));

    // Removal.
    fs::remove_file(m.join("doomed")).unwrap();
    fs::remove_dir(m.join("empty-dir")).unwrap();

    // Truncate: grow (sparse tail), then shrink.
    fs::write(m.join("grow"), b"short").unwrap();
    fs::OpenOptions::new().write(true).open(m.join("grow")).unwrap().set_len(1 << 20).unwrap();
    fs::write(m.join("shrink"), random_bytes(300_000, 2)).unwrap();
    run(&format!("truncate -s 1000 {}", m.join("shrink").display())).unwrap();

    // Links.
    symlink("a/b/c/new.txt", m.join("link-to-new")).unwrap();
    symlink("/nonexistent/target", m.join("dangling")).unwrap();
    fs::hard_link(m.join("a/b/c/new.txt"), m.join("a/hard")).unwrap();
    run(&format!("ln {} {}", m.join("existing").display(), m.join("a/b/existing-2").display())).unwrap();

    // Metadata.
    fs::set_permissions(m.join("a/b/c/new.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    run(&format!("chmod 4711 {}", m.join("grow").display())).unwrap();
    run(&format!("chown 1234:5678 {}", m.join("shrink").display())).unwrap();
    run(&format!("chown -h 42:43 {}", m.join("link-to-new").display())).unwrap();
    run(&format!("touch -m -d '2001-02-03 04:05:06.789' {}", m.join("existing").display())).unwrap();
    run(&format!("chmod 0700 {}", m.join("a/b").display())).unwrap();

    // Writes through a hard link reach every name on the standby.
    fs::OpenOptions::new().append(true).open(m.join("a/hard")).map(|mut f| std::io::Write::write_all(&mut f, b"appended")).unwrap().unwrap();

    // Renames of files, replacing an existing target, and a FIFO.
    fs::write(m.join("replaced"), b"old").unwrap();
    fs::write(m.join("replacement"), b"new").unwrap();
    fs::rename(m.join("replacement"), m.join("replaced")).unwrap();
    run(&format!("mkfifo -m 0620 {}", m.join("pipe").display())).unwrap();
    run(&format!("cd {} && mv a/b/c/new.txt a/renamed.txt", m.display())).unwrap();

    converge(&pair, Duration::from_secs(30));
    let s = standby.path();
    assert!(!s.join("doomed").exists() && !s.join("empty-dir").exists());
    assert_eq!(fs::read_link(s.join("dangling")).unwrap().to_str(), Some("/nonexistent/target"));
    assert_eq!(fs::metadata(s.join("grow")).unwrap().len(), 1 << 20);
    assert_eq!(fs::metadata(s.join("shrink")).unwrap().len(), 1000);
    assert_eq!(fs::metadata(s.join("grow")).unwrap().permissions().mode() & 0o7777, 0o4711);
    let m_agent = pair.agent_metrics().unwrap();
    assert_eq!(m_agent.get("sluice_events_dropped_total"), 0.0);
}

#[test]
fn namespace_ext4() {
    namespace_and_metadata_are_mirrored(FsKind::Ext4);
}

#[test]
fn namespace_btrfs() {
    namespace_and_metadata_are_mirrored(FsKind::Btrfs);
}
