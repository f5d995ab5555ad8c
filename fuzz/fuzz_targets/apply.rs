//! Random operations on paths that lead through symlinks, into `.sluice` and out
//! of the root, applied to a scratch root: nothing outside the root or inside
//! `.sluice` may change, no device node may appear, nothing may panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use sluice_proto::{Attrs, Op, RelPath, Xattr};
use sluice_receiver::apply::Applier;
use sluice_receiver::apply::rollback::RollbackCounters;
use sluice_receiver::state::Position;

const PATHS: &[&str] = &["a", "b", "a/b", "a/c", "x", "x/a", "x/.sluice", "x/.sluice/state", "x/.sluice/state.tmp", ".sluice", ".sluice/state", "a/.sluice", "l", "l/f", "fifo"];
const TARGETS: &[&str] = &[".", "..", "/", "../canary", "../canary/secret", ".sluice", "a", "/etc"];

fn path(u: &mut Unstructured<'_>) -> Result<RelPath> {
    Ok(RelPath::from_bytes(*u.choose(PATHS)?).expect("valid constant"))
}

fn op(u: &mut Unstructured<'_>) -> Result<Op> {
    Ok(match u.int_in_range(0..=12u8)? {
        0 => {
            let data: Vec<u8> = u.arbitrary()?;
            let hash = sluice_proto::blocks::hash(&data);
            Op::Write { path: path(u)?, offset: u.int_in_range(0..=1 << 20)?, data, hash }
        }
        1 => Op::CreateFile { path: path(u)?, mode: 0o644, truncate: u.arbitrary()? },
        2 => Op::Mkdir { path: path(u)?, mode: 0o755 },
        3 => Op::Symlink { path: path(u)?, target: u.choose(TARGETS)?.as_bytes().to_vec() },
        4 => Op::HardLink { existing: path(u)?, path: path(u)? },
        5 => Op::Mkfifo { path: path(u)?, mode: 0o600 },
        6 => Op::Remove { path: path(u)? },
        7 => Op::Rename { from: path(u)?, to: path(u)?, exchange: u.arbitrary()?, noreplace: u.arbitrary()? },
        8 => Op::Truncate { path: path(u)?, size: u.int_in_range(0..=1 << 20)? },
        9 => Op::SetAttrs { path: path(u)?, attrs: Attrs { size: Some(u.int_in_range(0..=1 << 20)?), mode: Some(0o600), ..Attrs::default() } },
        10 => Op::Fallocate { path: path(u)?, mode: u.arbitrary::<u32>()? & 0x7f, offset: u.int_in_range(0..=1 << 20)?, len: u.int_in_range(1..=1 << 20)? },
        11 => Op::SetXattrs { path: path(u)?, xattrs: vec![Xattr { name: b"user.k".to_vec(), value: u.arbitrary()? }] },
        _ => Op::Mknod { path: path(u)?, mode: libc::S_IFBLK | 0o600, rdev: u.arbitrary()? },
    })
}

fn listing(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let meta = path.symlink_metadata().unwrap();
            if meta.is_dir() {
                stack.push(path.clone());
            }
            let content = if meta.is_file() { std::fs::read(&path).unwrap_or_default() } else { Vec::new() };
            out.push((path, content));
        }
    }
    out.sort();
    out
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let top = tempfile::tempdir().unwrap();
    let root = top.path().join("root");
    let canary = top.path().join("canary");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&canary).unwrap();
    std::fs::write(canary.join("secret"), b"do not touch").unwrap();
    let state = sluice_receiver::state::State::open(&root).unwrap();
    state.store(Position { seq: 41, ..Position::default() }).unwrap();
    let mut applier = Applier::open(&root).unwrap();
    if u.arbitrary().unwrap_or(false) {
        applier.enable_rollback(RollbackCounters::default());
    }
    let canary_before = listing(&canary);
    while let Ok(op) = op(&mut u) {
        let _ = applier.apply(&op);
        if u.is_empty() {
            break;
        }
    }
    state.store(Position { seq: 42, ..Position::default() }).unwrap();
    assert_eq!(listing(&canary), canary_before, "outside the root changed");
    assert_eq!(state.load().unwrap(), 42, ".sluice/state was tampered with");
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            use std::os::unix::fs::FileTypeExt;
            let kind = entry.path().symlink_metadata().unwrap().file_type();
            assert!(!kind.is_block_device() && !kind.is_char_device(), "a device node was made");
            if kind.is_dir() {
                stack.push(entry.path());
            }
        }
    }
});
