//! Metadata like `rsync -aAXH --numeric-ids`: extended attributes, POSIX ACLs,
//! device nodes (when enabled).

use crate::common::{converge, sh};
use sluice_tests::{FsKind, LoopFs, Pair, PairOptions, run};
use std::fs;
use std::time::Duration;

#[test]
fn xattrs_and_acls_at_initial_sync() {
    let master = LoopFs::new(FsKind::Ext4, 64).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 64).unwrap();
    let m = master.path();
    fs::create_dir(m.join("shared")).unwrap();
    fs::write(m.join("shared/report.pdf"), b"%PDF").unwrap();
    sh(m, "setfattr -n user.origin -v scanner shared/report.pdf");
    sh(m, "setfattr -n user.binary -v 0x00ff10 shared/report.pdf");
    sh(m, "setfacl -m u:1234:rw,g:5678:r shared/report.pdf");
    sh(m, "setfacl -d -m g:5678:rx shared");
    // A stale attribute on the standby must go.
    fs::create_dir(standby.path().join("shared")).unwrap();
    fs::write(standby.path().join("shared/report.pdf"), b"old").unwrap();
    sh(standby.path(), "setfattr -n user.stale -v 1 shared/report.pdf");
    let pair = Pair::start(m, standby.path()).unwrap();
    converge(&pair, Duration::from_secs(30));
    let acl = run(&format!("getfacl -cn {}", standby.path().join("shared/report.pdf").display())).unwrap();
    assert!(acl.contains("user:1234:rw-"), "{acl}");
}

#[test]
fn device_nodes_when_enabled() {
    let master = LoopFs::new(FsKind::Ext4, 64).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 64).unwrap();
    let m = master.path();
    sh(m, "mknod -m 0640 null c 1 3 && mknod -m 0600 loopish b 7 200");
    let options = PairOptions {
        agent_toml: "[replication]\ndevices = true\n".into(),
        receiver_toml: "[replication]\ndevices = true\n".into(),
        ..PairOptions::default()
    };
    let pair = Pair::start_with(m, standby.path(), options).unwrap();
    converge(&pair, Duration::from_secs(30));
}

fn live_xattrs(kind: FsKind) {
    let master = LoopFs::new(kind, 256).unwrap();
    let standby = LoopFs::new(kind, 256).unwrap();
    let m = master.path();
    fs::create_dir(m.join("team")).unwrap();
    fs::write(m.join("team/notes.txt"), b"notes").unwrap();
    fs::write(m.join("team/tagged"), b"x").unwrap();
    sh(m, "setfattr -n user.to-remove -v 1 team/tagged");
    let pair = Pair::start(m, standby.path()).unwrap();
    sh(m, "setfattr -n user.checksum -v 0xdeadbeef team/notes.txt");
    sh(m, "setfacl -m u:2000:rwx team/notes.txt && setfacl -d -m u:2000:rx team");
    sh(m, "setfattr -x user.to-remove team/tagged");
    sh(m, "python3 -c \"import os; fd = os.open('team/tagged', os.O_RDONLY); os.setxattr(fd, 'user.by-fd', b'1')\"");
    // A file created under a default ACL inherits it, on both sides.
    fs::write(m.join("team/inherited"), b"y").unwrap();
    converge(&pair, Duration::from_secs(30));
}

#[test]
fn live_xattrs_ext4() {
    live_xattrs(FsKind::Ext4);
}

#[test]
fn live_xattrs_btrfs() {
    live_xattrs(FsKind::Btrfs);
}
