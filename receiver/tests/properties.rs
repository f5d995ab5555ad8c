//! Property tests of what a hostile stream can do: any frame decodes or fails
//! within its limits without panicking, and any sequence of operations leaves
//! everything outside the root and inside `.sluice` as it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use sluice_proto::{AgentMessage, Attrs, Op, ReceiverMessage, RelPath, Xattr, decode_body};
use sluice_receiver::apply::Applier;
use sluice_receiver::apply::rollback::RollbackCounters;

/// Paths that name the root's children, `.sluice` and things below a symlink.
const PATHS: &[&str] = &["a", "b", "a/b", "a/c", "x", "x/a", "x/.sluice", "x/.sluice/state", "x/.sluice/state.tmp", ".sluice", ".sluice/state", "a/.sluice", "l", "l/f", "fifo", "dev"];
/// Symlink targets that lead out of the root, to it, or into `.sluice`.
const TARGETS: &[&str] = &[".", "..", "/", "../canary", "../canary/secret", ".sluice", "a", "/etc"];

fn path() -> impl Strategy<Value = RelPath> {
    prop::sample::select(PATHS).prop_map(|p| RelPath::from_bytes(p).unwrap())
}

fn op() -> impl Strategy<Value = Op> {
    let data = prop::collection::vec(any::<u8>(), 0..64);
    prop_oneof![
        (path(), 0u64..1 << 20, data.clone()).prop_map(|(path, offset, data)| {
            let hash = sluice_proto::blocks::hash(&data);
            Op::Write { path, offset, data, hash }
        }),
        (path(), any::<bool>()).prop_map(|(path, truncate)| Op::CreateFile { path, mode: 0o644, truncate }),
        path().prop_map(|path| Op::Mkdir { path, mode: 0o755 }),
        (path(), prop::sample::select(TARGETS)).prop_map(|(path, t)| Op::Symlink { path, target: t.as_bytes().to_vec() }),
        (path(), path()).prop_map(|(existing, path)| Op::HardLink { existing, path }),
        path().prop_map(|path| Op::Mkfifo { path, mode: 0o600 }),
        path().prop_map(|path| Op::Remove { path }),
        (path(), path(), any::<bool>(), any::<bool>()).prop_map(|(from, to, exchange, noreplace)| Op::Rename { from, to, exchange, noreplace }),
        (path(), 0u64..1 << 20).prop_map(|(path, size)| Op::Truncate { path, size }),
        (path(), 0u64..1 << 20).prop_map(|(path, size)| Op::SetAttrs { path, attrs: Attrs { size: Some(size), mode: Some(0o600), ..Attrs::default() } }),
        path().prop_map(|path| Op::Fallocate { path, mode: 0, offset: 0, len: 4096 }),
        path().prop_map(|path| Op::SetXattrs { path, xattrs: vec![Xattr { name: b"user.k".to_vec(), value: b"v".to_vec() }] }),
        path().prop_map(|path| Op::Mknod { path, mode: libc::S_IFCHR | 0o600, rdev: libc::makedev(1, 3) }),
    ]
}

/// Content of every entry below `dir`, by path (symlinks by target).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(dir).into_iter().filter_map(Result::ok) {
        let meta = entry.path().symlink_metadata().unwrap();
        let content = if meta.is_file() {
            std::fs::read(entry.path()).unwrap_or_default()
        } else if meta.file_type().is_symlink() {
            std::fs::read_link(entry.path()).unwrap().into_os_string().into_encoded_bytes()
        } else {
            format!("{:?}", meta.file_type()).into_bytes()
        };
        out.insert(entry.path().strip_prefix(dir).unwrap().to_owned(), content);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_frame_decodes_or_fails_without_panicking(flags in 0u8..2, body in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = decode_body::<AgentMessage>(flags, &body);
        prop_assert!(sluice_proto::limit::decoded_cost() <= sluice_proto::limit::MAX_DECODED_LEN + 4096);
        let _ = decode_body::<ReceiverMessage>(flags, &body);
    }

    #[test]
    fn no_operation_reaches_outside_the_root_or_into_sluice(ops in prop::collection::vec(op(), 1..40), rollback in any::<bool>()) {
        let top = tempfile::tempdir().unwrap();
        let root = top.path().join("root");
        let canary = top.path().join("canary");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&canary).unwrap();
        std::fs::write(canary.join("secret"), b"do not touch").unwrap();
        let state = sluice_receiver::state::State::open(&root).unwrap();
        state.store(sluice_receiver::state::Position { seq: 41, ..Default::default() }).unwrap();
        let mut applier = Applier::open(&root).unwrap();
        if rollback {
            applier.enable_rollback(RollbackCounters::default());
        }
        let canary_before = snapshot(&canary);
        let state_before: Vec<_> = snapshot(&root.join(".sluice")).into_iter().filter(|(p, _)| !p.starts_with("rollback")).collect();
        let kept_before = snapshot(&root.join(".sluice/rollback"));
        for op in &ops {
            let _ = applier.apply(op);
        }
        state.store(sluice_receiver::state::Position { seq: 42, ..Default::default() }).unwrap();
        prop_assert_eq!(snapshot(&canary), canary_before, "outside the root changed");
        let state_after: Vec<_> = snapshot(&root.join(".sluice")).into_iter().filter(|(p, _)| !p.starts_with("rollback")).collect();
        prop_assert_eq!(state_after.len(), state_before.len(), ".sluice changed: {:?}", state_after);
        prop_assert_eq!(state.load().unwrap(), 42);
        let kept_after = snapshot(&root.join(".sluice/rollback"));
        for (path, content) in kept_before {
            prop_assert_eq!(kept_after.get(&path), Some(&content), "a kept entry changed");
        }
        // Nothing in the tree is a device node: devices are off by default.
        for entry in walkdir::WalkDir::new(&root).into_iter().filter_map(Result::ok) {
            use std::os::unix::fs::FileTypeExt;
            let kind = entry.path().symlink_metadata().unwrap().file_type();
            prop_assert!(!kind.is_block_device() && !kind.is_char_device());
        }
    }
}
