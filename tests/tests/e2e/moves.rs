//! Renaming a directory of 1,000 files (100 MiB).

use crate::common::converge;
use sluice_tests::{FsKind, LoopFs, Pair, random_bytes};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

#[test]
fn directory_rename_sends_no_data() {
    let master = LoopFs::new(FsKind::Ext4, 512).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 512).unwrap();
    let dir = master.path().join("photos");
    std::fs::create_dir_all(dir.join("2026")).unwrap();
    for i in 0..1000 {
        std::fs::write(dir.join("2026").join(format!("img{i:04}.raw")), random_bytes(100 * 1024, i)).unwrap();
    }
    let pair = Pair::start(master.path(), standby.path()).unwrap();
    let before = converge(&pair, Duration::from_secs(120));
    let standby_ino = std::fs::metadata(standby.path().join("photos/2026/img0500.raw")).unwrap().ino();

    std::fs::rename(&dir, master.path().join("archive")).unwrap();
    std::fs::create_dir(master.path().join("moved")).unwrap();
    std::fs::rename(master.path().join("archive/2026/img0001.raw"), master.path().join("moved/one.raw")).unwrap();
    let after = converge(&pair, Duration::from_secs(30));

    let wire = after.get("sluice_wire_bytes_sent_total") - before.get("sluice_wire_bytes_sent_total");
    let payload = after.get("sluice_payload_bytes_sent_total") - before.get("sluice_payload_bytes_sent_total");
    eprintln!("rename of 100 MiB: {wire} bytes on the wire, {payload} bytes of file data");
    assert_eq!(payload, 0.0, "a rename must not send file contents");
    assert!(wire < 1024.0 * 1024.0, "rename sent {wire} bytes");
    let moved_ino = std::fs::metadata(standby.path().join("archive/2026/img0500.raw")).unwrap().ino();
    assert_eq!(moved_ino, standby_ino, "the standby must rename, not copy");
}
