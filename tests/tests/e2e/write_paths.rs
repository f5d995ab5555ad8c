//! Write paths beyond write(2): fallocate modes, holes, O_DIRECT,
//! copy_file_range/sendfile, memory-mapped stores.

use crate::common::{converge, sh};
use sluice_tests::{FsKind, LoopFs, Pair, random_bytes, run};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn blocks(path: &Path) -> u64 {
    fs::metadata(path).unwrap().blocks()
}

#[test]
fn fallocate_modes_ext4() {
    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let m = master.path();
    fs::write(m.join("punched"), random_bytes(8 * MIB as usize, 1)).unwrap();
    fs::write(m.join("zeroed"), random_bytes(8 * MIB as usize, 2)).unwrap();
    fs::write(m.join("collapsed"), random_bytes(8 * MIB as usize, 3)).unwrap();
    fs::write(m.join("inserted"), random_bytes(8 * MIB as usize, 4)).unwrap();
    let pair = Pair::start(m, standby.path()).unwrap();
    let before = converge(&pair, Duration::from_secs(60));

    sh(m, "fallocate -p -o 1MiB -l 2MiB punched");
    sh(m, "fallocate -z -o 3MiB -l 64KiB zeroed");
    sh(m, "fallocate -c -o 4MiB -l 1MiB collapsed");
    sh(m, "fallocate -i -o 2MiB -l 1MiB inserted");
    sh(m, "fallocate -l 12MiB plain && fallocate -n -o 12MiB -l 4MiB plain");
    let after = converge(&pair, Duration::from_secs(30));
    // Allocation, to within an extent-tree block or two (allocator detail).
    for name in ["punched", "zeroed", "collapsed", "inserted", "plain"] {
        let (a, b) = (blocks(&m.join(name)), blocks(&standby.path().join(name)));
        assert!(a.abs_diff(b) <= 16, "{name}: st_blocks {a} on the master, {b} on the standby");
    }
    assert_eq!(fs::metadata(standby.path().join("collapsed")).unwrap().len(), 7 * MIB);
    assert_eq!(fs::metadata(standby.path().join("inserted")).unwrap().len(), 9 * MIB);
    assert!(blocks(&standby.path().join("punched")) < blocks(&m.join("zeroed")), "the punched hole was filled on the standby");
    // Punch and zero send no data; collapse and insert resend the shifted tail.
    let payload = after.get("sluice_payload_bytes_sent_total") - before.get("sluice_payload_bytes_sent_total");
    assert!(payload <= (4 + 6) as f64 * MIB as f64 + 64.0 * 1024.0, "sent {payload} bytes");
}

fn holes_stay_holes(kind: FsKind) {
    let master = LoopFs::new(kind, 512).unwrap();
    let standby = LoopFs::new(kind, 512).unwrap();
    let m = master.path();
    // Sparse before the agent starts (initial sync) ...
    sh(m, "truncate -s 1G before.img && dd if=/dev/urandom of=before.img bs=64k count=4 seek=1000 conv=notrunc status=none");
    let pair = Pair::start(m, standby.path()).unwrap();
    // ... and made sparse while it runs.
    sh(m, "truncate -s 2G live.img && dd if=/dev/urandom of=live.img bs=4k count=8 seek=100000 conv=notrunc status=none");
    fs::write(m.join("dense"), random_bytes(4 * MIB as usize, 9)).unwrap();
    converge(&pair, Duration::from_secs(60));
    sh(m, "fallocate -p -o 1MiB -l 2MiB dense");
    converge(&pair, Duration::from_secs(30));
    for name in ["before.img", "live.img", "dense"] {
        let (a, b) = (blocks(&m.join(name)), blocks(&standby.path().join(name)));
        assert!(b <= a + 64, "{name}: standby allocates {b} blocks, master {a}");
    }
    let wire = pair.agent_metrics().unwrap().get("sluice_wire_bytes_sent_total");
    assert!(wire < 16.0 * MIB as f64, "holes cost {wire} bytes on the wire");
}

#[test]
fn holes_stay_holes_ext4() {
    holes_stay_holes(FsKind::Ext4);
}

#[test]
fn holes_stay_holes_btrfs() {
    holes_stay_holes(FsKind::Btrfs);
}

#[test]
fn direct_io_writes() {
    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let m = master.path();
    fs::write(m.join("db.sqlite"), random_bytes(16 * MIB as usize, 5)).unwrap();
    let pair = Pair::start(m, standby.path()).unwrap();
    sh(m, "dd if=/dev/urandom of=db.sqlite bs=64k count=16 seek=20 oflag=direct conv=notrunc status=none");
    sh(m, "dd if=/dev/urandom of=new-direct bs=1M count=3 oflag=direct status=none");
    converge(&pair, Duration::from_secs(30));
}

fn python(m: &Path, code: &str) {
    let script = m.parent().unwrap().join("script.py");
    fs::write(&script, code).unwrap();
    run(&format!("cd {} && python3 {}", m.display(), script.display())).unwrap();
}

#[test]
fn copies_and_splices() {
    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let m = master.path();
    fs::write(m.join("source"), random_bytes(3 * MIB as usize, 11)).unwrap();
    fs::write(m.join("target"), random_bytes(4 * MIB as usize, 12)).unwrap();
    let pair = Pair::start(m, standby.path()).unwrap();
    python(
        m,
        r#"
import os
src = os.open("source", os.O_RDONLY)
dst = os.open("target", os.O_WRONLY)
os.copy_file_range(src, dst, 1 << 20, 0, 2 << 20)
new = os.open("copied", os.O_WRONLY | os.O_CREAT, 0o644)
os.copy_file_range(src, new, 3 << 20)
sent = os.open("sent", os.O_WRONLY | os.O_CREAT, 0o644)
os.lseek(sent, 100, os.SEEK_SET)
os.sendfile(sent, src, 0, 500000)
r, w = os.pipe()
os.write(w, b"through a pipe" * 100)
spliced = os.open("spliced", os.O_WRONLY | os.O_CREAT, 0o644)
os.splice(r, spliced, 1400, offset_dst=4096)
"#,
    );
    sh(m, "cp --reflink=never source cp-copy");
    converge(&pair, Duration::from_secs(30));
}

#[test]
fn memory_mapped_stores() {
    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let m = master.path();
    fs::write(m.join("flushed.db"), random_bytes(8 * MIB as usize, 21)).unwrap();
    fs::write(m.join("unflushed.db"), random_bytes(8 * MIB as usize, 22)).unwrap();
    let pair = Pair::start(m, standby.path()).unwrap();
    python(
        m,
        r#"
import mmap, os, time
with open("flushed.db", "r+b") as f:
    mm = mmap.mmap(f.fileno(), 0)
    mm[8202:8210] = b"ABCDEFGH"
    mm[5000000:5000004] = b"WXYZ"
    mm.flush()
    # The same pages again, already dirty: no new writeback event, only the msync.
    time.sleep(0.2)
    mm[8202:8210] = b"abcdefgh"
    mm.flush()
    mm.close()
with open("unflushed.db", "r+b") as f:
    mm = mmap.mmap(f.fileno(), 0)
    for i in range(0, 8 << 20, 1 << 20):
        mm[i + 77:i + 80] = b"map"
    time.sleep(0.2)
    mm[77:80] = b"MAP"
    mm.close()
"#,
    );
    converge(&pair, Duration::from_secs(30));
    let standby_bytes = fs::read(standby.path().join("flushed.db")).unwrap();
    assert_eq!(&standby_bytes[8202..8210], b"abcdefgh");
}

#[test]
fn io_uring_writes() {
    if run("command -v fio").is_err() {
        panic!("fio is not installed; `cargo xtask setup` installs it");
    }
    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let m = master.path();
    let pair = Pair::start(m, standby.path()).unwrap();
    sh(m, "fio --name=ring --filename=ring.dat --size=8M --rw=randwrite --bs=4k --ioengine=io_uring --iodepth=8 --number_ios=300 --randrepeat=0 --output=/dev/null");
    sh(m, "fio --name=ringdirect --filename=ring-direct.dat --size=4M --rw=write --bs=64k --ioengine=io_uring --direct=1 --output=/dev/null");
    converge(&pair, Duration::from_secs(30));
}
