//! A compromised or buggy agent, through the receiver's public session API:
//! sequence numbers that jump or go back, a manifest that lists almost nothing,
//! and a file too large for one answer.

use std::sync::Arc;

use sluice_proto::{AgentMessage, Entry, EntryKind, Meta, Op, PROTOCOL_VERSION, ReceiverMessage, RelPath, SeqOp, Timestamp, encode_frame};
use sluice_receiver::apply::Applier;
use sluice_receiver::metrics::Metrics;
use sluice_receiver::session::Session;
use sluice_receiver::state::State;

fn session(root: &std::path::Path) -> Session {
    let state = State::open(root).unwrap();
    let durable = state.load().unwrap();
    let mut session = Session::new(Applier::open(root).unwrap(), state, durable, false, Arc::new(Metrics::new()));
    session.connected();
    session.handle(AgentMessage::Hello { version: PROTOCOL_VERSION, agent: "hostile".into(), lineage: sluice_proto::Lineage { current: sluice_proto::GenerationId(1), forks: Vec::new() }, activity: sluice_proto::lineage::Activity::default() }, &mut Vec::new()).unwrap();
    session
}

fn mkdir(seq: u64, path: &str) -> AgentMessage {
    AgentMessage::Op(SeqOp { seq, captured_unix_ns: 0, op: Op::Mkdir { path: RelPath::from_bytes(path).unwrap(), mode: 0o755 } })
}

fn meta() -> Meta {
    Meta { mode: 0o755, uid: 0, gid: 0, mtime: Timestamp { secs: 1, nanos: 0 } }
}

fn entry(path: &str, kind: EntryKind) -> Entry {
    Entry { path: RelPath::from_bytes(path).unwrap(), kind, meta: meta(), hardlink_of: None, names: 1, xattrs: Vec::new(), verify: false }
}

#[test]
fn sequence_numbers_only_go_forward_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = session(dir.path());
    let mut out = Vec::new();
    s.handle(mkdir(1, "a"), &mut out).unwrap();
    s.handle(mkdir(2, "b"), &mut out).unwrap();
    let replay = s.handle(mkdir(2, "c"), &mut out).unwrap_err();
    assert!(replay.reason.contains("went backwards"), "{replay}");
    let gap = s.handle(mkdir(5, "d"), &mut out).unwrap_err();
    assert!(gap.reason.contains("gap") && gap.reason.contains("expected 3"), "{gap}");
    assert!(!dir.path().join("c").exists() && !dir.path().join("d").exists());
    // An announced skip allows gaps below it, and only there.
    s.handle(AgentMessage::Skip { next_seq: 10 }, &mut out).unwrap();
    s.handle(mkdir(4, "e"), &mut out).unwrap();
    s.handle(mkdir(7, "f"), &mut out).unwrap();
    s.handle(mkdir(10, "g"), &mut out).unwrap();
    assert!(s.handle(mkdir(12, "h"), &mut out).is_err());
    s.handle(mkdir(11, "h"), &mut out).unwrap();
    // Absurd numbers are refused: the standby would skip everything after them.
    for absurd in [u64::MAX, 1 << 62, 12 + (1 << 48) + 1] {
        assert!(s.handle(AgentMessage::Skip { next_seq: absurd }, &mut out).is_err(), "skip to {absurd}");
        assert!(s.handle(mkdir(absurd, "x"), &mut out).is_err(), "op {absurd}");
    }
    s.make_durable().unwrap();
    assert_eq!(State::open(dir.path()).unwrap().load().unwrap(), 11);
    // A new connection starts without the skip.
    s.connected();
    s.handle(AgentMessage::Hello { version: PROTOCOL_VERSION, agent: "again".into(), lineage: sluice_proto::Lineage { current: sluice_proto::GenerationId(1), forks: Vec::new() }, activity: sluice_proto::lineage::Activity::default() }, &mut out).unwrap();
    assert!(s.handle(mkdir(13, "i"), &mut out).is_err());
    s.handle(mkdir(12, "i"), &mut out).unwrap();
}

#[test]
fn a_manifest_that_lists_almost_nothing_deletes_nothing_until_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("data")).unwrap();
    for i in 0..10 {
        std::fs::write(root.join(format!("data/f{i}")), b"precious").unwrap();
    }
    let mut s = session(root);
    let mut out = Vec::new();
    // The master's filesystem is not mounted: its manifest is just the root.
    s.handle(AgentMessage::Manifest(vec![entry("", EntryKind::Dir)]), &mut out).unwrap();
    let refused = s.handle(AgentMessage::ManifestEnd, &mut out).unwrap_err();
    assert!(refused.reason.contains("allow-mass-delete"), "{refused}");
    assert_eq!(std::fs::read_dir(root.join("data")).unwrap().count(), 10, "nothing was deleted");
    // A manifest missing a few entries is no mass deletion.
    s.connected();
    s.handle(AgentMessage::Hello { version: PROTOCOL_VERSION, agent: "again".into(), lineage: sluice_proto::Lineage { current: sluice_proto::GenerationId(1), forks: Vec::new() }, activity: sluice_proto::lineage::Activity::default() }, &mut out).unwrap();
    let mut most = vec![entry("", EntryKind::Dir), entry("data", EntryKind::Dir)];
    for i in 0..8 {
        let path = format!("data/f{i}");
        let mut listed = entry(&path, EntryKind::File { size: 8 });
        let m = std::fs::metadata(root.join(&path)).unwrap();
        use std::os::unix::fs::MetadataExt;
        listed.meta.mtime = Timestamp { secs: m.mtime(), nanos: m.mtime_nsec() as u32 };
        most.push(listed);
    }
    s.handle(AgentMessage::Manifest(most), &mut out).unwrap();
    s.handle(AgentMessage::ManifestEnd, &mut out).unwrap();
    assert_eq!(std::fs::read_dir(root.join("data")).unwrap().count(), 8);
    // Once the operator allows it, the next one goes through, once.
    State::open_existing(root).unwrap().grant_mass_delete_permit().unwrap();
    s.connected();
    s.handle(AgentMessage::Hello { version: PROTOCOL_VERSION, agent: "again".into(), lineage: sluice_proto::Lineage { current: sluice_proto::GenerationId(1), forks: Vec::new() }, activity: sluice_proto::lineage::Activity::default() }, &mut out).unwrap();
    s.handle(AgentMessage::Manifest(vec![entry("", EntryKind::Dir)]), &mut out).unwrap();
    s.handle(AgentMessage::ManifestEnd, &mut out).unwrap();
    assert!(!root.join("data").exists());
    assert!(root.join(".sluice").is_dir());
}

#[test]
fn a_huge_sparse_file_is_answered_in_frames_that_fit() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let file = std::fs::File::create(root.join("huge")).unwrap();
    file.set_len(200 << 30).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, b"data", 1 << 30).unwrap();
    let mut s = session(root);
    let mut out = Vec::new();
    s.handle(AgentMessage::Manifest(vec![entry("", EntryKind::Dir), entry("huge", EntryKind::File { size: 1 })]), &mut out).unwrap();
    s.handle(AgentMessage::ManifestEnd, &mut out).unwrap();
    let wants: Vec<_> = out.iter().filter(|m| matches!(m, ReceiverMessage::Want { .. })).collect();
    assert!(!wants.is_empty());
    for want in &wants {
        encode_frame(want, false).expect("every Want fits a frame");
    }
    assert!(matches!(wants.last(), Some(ReceiverMessage::Want { last: true, .. })));
    assert!(matches!(out.last(), Some(ReceiverMessage::ManifestDone { wanted: 1 })));
}
