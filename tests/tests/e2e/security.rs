//! Refusals: a peer whose certificate is not pinned, and operations whose paths
//! would leave the standby root.

use serde::Serialize;
use sluice_net::{FrameReader, FrameWriter, Identity, SERVER_NAME, client_endpoint};
use sluice_proto::{AgentMessage, PROTOCOL_VERSION, ReceiverMessage, encode_frame};
use sluice_tests::{PairOptions, FsKind, LoopFs, Pair, wait_until};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

fn receiver_addr(pair: &Pair) -> SocketAddr {
    let text = std::fs::read_to_string(pair.dir().join("receiver.toml")).unwrap();
    let table: toml::Table = text.parse().unwrap();
    table["listen"].as_str().unwrap().parse().unwrap()
}

fn receiver_fingerprint(pair: &Pair) -> String {
    Identity::load(&pair.dir().join("receiver-identity")).unwrap().fingerprint().unwrap()
}

/// The wire shape of `AgentMessage::Op(SeqOp { op: Op::Write { .. } })` with a raw,
/// unvalidated path: what a compromised or buggy peer could send.
#[derive(Serialize)]
enum RawAgentMessage {
    Hello { version: u32, agent: String },
    Manifest(Vec<()>),
    ManifestEnd,
    Op(RawSeqOp),
}

#[derive(Serialize)]
struct RawSeqOp {
    seq: u64,
    captured_unix_ns: u64,
    op: RawOp,
}

#[derive(Serialize)]
enum RawOp {
    Write {
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        hash: [u8; 32],
    },
}

/// Connects as `identity`, says Hello, sends one raw write of `path`, and returns
/// the receiver's answer (or the error that ended the stream).
async fn send_raw_write(addr: SocketAddr, identity: &Identity, receiver_fp: &str, path: &[u8], lineage: sluice_proto::Lineage) -> String {
    let endpoint = client_endpoint(identity, receiver_fp).unwrap();
    let connection = match endpoint.connect(addr, SERVER_NAME).unwrap().await {
        Ok(c) => c,
        Err(e) => return format!("handshake failed: {e}"),
    };
    let (send, recv) = match connection.open_bi().await {
        Ok(s) => s,
        Err(e) => return format!("stream failed: {e}"),
    };
    let mut writer = FrameWriter::new(send, false);
    let mut reader = FrameReader::new(recv);
    let hello = AgentMessage::Hello { version: PROTOCOL_VERSION, agent: "crafted".into(), lineage, activity: sluice_proto::lineage::Activity::default() };
    if let Err(e) = writer.write(&hello).await {
        return format!("hello failed: {e}");
    }
    let durable = match reader.read::<ReceiverMessage>().await {
        Ok(Some(ReceiverMessage::Hello { durable_seq, .. })) => durable_seq,
        other => return format!("no hello: {other:?}"),
    };
    let data = b"escaped".to_vec();
    let op = RawOp::Write { path: path.to_vec(), offset: 0, hash: *blake3::hash(&data).as_bytes(), data };
    let message = RawAgentMessage::Op(RawSeqOp { seq: durable + 1, captured_unix_ns: 0, op });
    let _unused = (RawAgentMessage::Hello { version: 0, agent: String::new() }, RawAgentMessage::Manifest(vec![]), RawAgentMessage::ManifestEnd);
    if let Err(e) = writer.write_frame(&encode_frame(&message, false).unwrap()).await {
        return format!("write failed: {e}");
    }
    let answer = tokio::time::timeout(Duration::from_secs(10), reader.read::<ReceiverMessage>()).await;
    endpoint.close(0u32.into(), b"done");
    format!("{answer:?}")
}

#[tokio::test(flavor = "multi_thread")]
async fn unpinned_peer_is_refused_and_writes_nothing() {
    let master = LoopFs::new(FsKind::Ext4, 64).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 64).unwrap();
    let pair = Pair::start(master.path(), standby.path()).unwrap();
    let intruder = Identity::generate().unwrap();
    let answer = send_raw_write(receiver_addr(&pair), &intruder, &receiver_fingerprint(&pair), b"intruder", sluice_tests::tree::lineage_of(master.path()).unwrap()).await;
    assert!(!answer.contains("Ack"), "an unpinned peer got an answer: {answer}");
    assert!(!standby.path().join("intruder").exists());
    let pair = &pair;
    wait_until("the refusal to be counted", Duration::from_secs(10), || {
        Ok(pair.receiver_metrics()?.get("sluice_peers_refused_total") >= 1.0)
    })
    .unwrap();
    let log = pair.receiver_log();
    assert!(log.contains("not pinned"), "receiver log does not explain the refusal:\n{log}");
}

fn assert_absent(path: &Path) {
    assert!(!path.exists(), "{} was written outside the standby root", path.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn paths_escaping_the_root_are_refused() {
    let master = LoopFs::new(FsKind::Ext4, 64).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 64).unwrap();
    let outside = tempfile::tempdir().unwrap();
    // The symlink planted on the standby below stands for one a compromised
    // master made; the receiver's watch for local changes would report it first.
    let options = PairOptions { receiver_toml: "[safety]\nrevert_local_changes = false\n".into(), ..PairOptions::default() };
    let mut pair = Pair::start_with(master.path(), standby.path(), options).unwrap();
    pair.stop_agent().unwrap();
    std::os::unix::fs::symlink(outside.path(), standby.path().join("evil")).unwrap();
    let agent = Identity::load(&pair.dir().join("agent-identity")).unwrap();
    let (addr, fp) = (receiver_addr(&pair), receiver_fingerprint(&pair));

    let parent_escape = standby.path().parent().unwrap().join("x-escaped");
    let absolute = outside.path().join("absolute");
    let cases: [(&str, Vec<u8>); 3] = [
        ("dot-dot", b"../x-escaped".to_vec()),
        ("absolute", absolute.as_os_str().as_encoded_bytes().to_vec()),
        ("symlink", b"evil/through-link".to_vec()),
    ];
    for (name, path) in cases {
        // The receiver serves one agent at a time; wait until the last one is gone.
        let pair = &pair;
        wait_until("the receiver to drop the previous connection", Duration::from_secs(20), || {
            Ok(pair.receiver_metrics()?.get("sluice_connected") == 0.0)
        })
        .unwrap();
        let answer = send_raw_write(addr, &agent, &fp, &path, sluice_tests::tree::lineage_of(master.path()).unwrap()).await;
        eprintln!("{name}: {answer}");
        // A path that cannot even be a path ends the connection; one through a
        // symlink is a well-formed operation that did nothing, reported as such.
        let expected = if name == "symlink" { "Diverged" } else { "Refused" };
        assert!(answer.contains(expected), "{name}: expected {expected}, got {answer}");
        let why = if name == "symlink" { "goes through a symlink" } else if name == "absolute" { "is absolute" } else { "`..`" };
        assert!(answer.contains(why), "{name}: the refusal should say {why:?}: {answer}");
        assert_absent(&parent_escape);
        assert_absent(&absolute);
        assert_absent(&outside.path().join("through-link"));
    }
    let metrics = pair.receiver_metrics().unwrap();
    assert!(metrics.get("sluice_ops_refused_total") >= 1.0, "the malformed paths were not counted as refused");
    assert!(metrics.get("sluice_ops_diverged_total") >= 1.0, "the symlink escape was not counted");
    let log = pair.receiver_log();
    assert!(log.contains("evil/through-link"), "receiver log does not name the refused path:\n{log}");
}
