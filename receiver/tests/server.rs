//! The receiver daemon end to end over real QUIC on localhost, with a hand-driven agent.

use std::path::Path;
use std::time::Duration;

use sluice_net::{FrameReader, FrameWriter, Identity, SERVER_NAME, client_endpoint};
use sluice_proto::{
    AgentMessage, Entry, EntryKind, Meta, Op, PROTOCOL_VERSION, ReceiverMessage, RelPath, SeqOp,
    Timestamp, blocks,
};
use sluice_receiver::config::Config;
use sluice_receiver::server::Server;
use tokio::sync::oneshot;

struct Fixture {
    _dirs: tempfile::TempDir,
    root: std::path::PathBuf,
    agent: Identity,
    receiver_fp: String,
    config: Config,
}

fn fixture() -> Fixture {
    let dirs = tempfile::tempdir().unwrap();
    let root = dirs.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let receiver = Identity::generate().unwrap();
    receiver.write_to(&dirs.path().join("id"), false).unwrap();
    let agent = Identity::generate().unwrap();
    let text = format!(
        "root = {root:?}\nlisten = \"127.0.0.1:0\"\n[tls]\nidentity = {:?}\npeer_fingerprint = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
        dirs.path().join("id"),
        agent.fingerprint().unwrap()
    );
    let config = Config::parse(&text, Path::new("receiver.toml")).unwrap();
    Fixture {
        receiver_fp: receiver.fingerprint().unwrap(),
        _dirs: dirs,
        root,
        agent,
        config,
    }
}

fn p(s: &str) -> RelPath {
    RelPath::from_bytes(s).unwrap()
}

fn op(seq: u64, op: Op) -> SeqOp {
    SeqOp {
        seq,
        captured_unix_ns: 0,
        op,
    }
}

async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

/// Reads replies until one matches `pred`.
async fn expect(
    reader: &mut FrameReader,
    pred: impl Fn(&ReceiverMessage) -> bool,
) -> ReceiverMessage {
    loop {
        let msg: ReceiverMessage = tokio::time::timeout(Duration::from_secs(10), reader.read())
            .await
            .expect("reply in time")
            .unwrap()
            .expect("stream open");
        if pred(&msg) {
            return msg;
        }
    }
}

#[tokio::test]
async fn session_over_quic() {
    let f = fixture();
    std::fs::write(f.root.join("stale"), b"old").unwrap();
    let server = Server::bind(&f.config).await.unwrap();
    let (addr, metrics_addr) = (server.local_addr().unwrap(), server.metrics_addr().unwrap());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let daemon = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));

    let client = client_endpoint(&f.agent, &f.receiver_fp).unwrap();
    let conn = client.connect(addr, SERVER_NAME).unwrap().await.unwrap();
    let (send, recv) = conn.open_bi().await.unwrap();
    let (mut writer, mut reader) = (FrameWriter::new(send, true), FrameReader::new(recv));
    writer
        .write(&AgentMessage::Hello {
            version: PROTOCOL_VERSION,
            agent: "test".into(),
            lineage: sluice_proto::Lineage { current: sluice_proto::GenerationId(1), forks: Vec::new() },
            activity: sluice_proto::lineage::Activity::default(),
        })
        .await
        .unwrap();
    let hello = expect(&mut reader, |_| true).await;
    assert_eq!(
        hello,
        ReceiverMessage::Hello {
            version: PROTOCOL_VERSION,
            durable_seq: 0,
            uncertain: false,
            lineage: sluice_proto::Lineage { current: sluice_proto::GenerationId(1), forks: Vec::new() },
            failback: None,
        }
    );

    let meta = Meta {
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: Timestamp { secs: 7, nanos: 0 },
    };
    let entries = vec![
        Entry {
            path: p("d"),
            kind: EntryKind::Dir,
            meta,
            hardlink_of: None,
            names: 1,
            xattrs: Vec::new(),
            verify: false,
        },
        Entry {
            path: p("d/f"),
            kind: EntryKind::File { size: 5 },
            meta,
            hardlink_of: None,
            names: 1,
            xattrs: Vec::new(),
            verify: false,
        },
    ];
    writer
        .write(&AgentMessage::Manifest(entries))
        .await
        .unwrap();
    writer.write(&AgentMessage::ManifestEnd).await.unwrap();
    let want = expect(&mut reader, |_| true).await;
    assert_eq!(
        want,
        ReceiverMessage::Want {
            path: p("d/f"),
            size: 0,
            first_block: 0,
            hashes: vec![],
            last: true,
        }
    );
    assert_eq!(
        expect(&mut reader, |_| true).await,
        ReceiverMessage::ManifestDone { wanted: 1 }
    );
    assert!(!f.root.join("stale").exists(), "unlisted file removed");

    let data = b"hello".to_vec();
    let ops = vec![
        op(
            1,
            Op::Write {
                path: p("d/f"),
                offset: 0,
                hash: blocks::hash(&data),
                data,
            },
        ),
        op(
            2,
            Op::Mkdir {
                path: p("d/e"),
                mode: 0o700,
            },
        ),
    ];
    writer.write(&AgentMessage::Ops(ops)).await.unwrap();
    expect(&mut reader, |m| *m == ReceiverMessage::Ack { seq: 2 }).await;
    assert_eq!(std::fs::read(f.root.join("d/f")).unwrap(), b"hello");

    // An unpinned client fails the handshake and is counted.
    let stranger = client_endpoint(&Identity::generate().unwrap(), &f.receiver_fp).unwrap();
    let refused = stranger.connect(addr, SERVER_NAME).unwrap().await;
    if let Ok(conn) = refused {
        // TLS 1.3 lets the client finish before the server checks its certificate.
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    }

    // An op that does not fit the standby's copy is skipped and reported for
    // repair; the stream goes on.
    let bad = op(
        3,
        Op::Write {
            path: p("d/g"),
            offset: 0,
            data: b"x".to_vec(),
            hash: [0; 32],
        },
    );
    writer.write(&AgentMessage::Op(bad)).await.unwrap();
    let diverged = expect(&mut reader, |m| matches!(m, ReceiverMessage::Diverged { .. })).await;
    assert!(
        matches!(&diverged, ReceiverMessage::Diverged { seq: 3, paths, .. } if *paths == vec![p("d/g")]),
        "{diverged:?}"
    );
    expect(&mut reader, |m| *m == ReceiverMessage::Ack { seq: 3 }).await;
    assert!(!f.root.join("d/g").exists());
    // A malformed frame is refused and the connection closes.
    writer.write_frame(&[2, 0, 0, 0, 0, 0xff, 0xff]).await.unwrap();
    expect(&mut reader, |m| matches!(m, ReceiverMessage::Refused { seq: 0, .. })).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .unwrap();

    let text = scrape(metrics_addr).await;
    for line in [
        "sluice_ops_applied_total 2",
        "sluice_bytes_applied_total 5",
        "sluice_ops_diverged_total 1",
        "sluice_ops_refused_total 1",
        "sluice_peers_refused_total 1",
        "sluice_last_applied_seq 3",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }

    // A reconnecting agent learns what is durable.
    let conn = client.connect(addr, SERVER_NAME).unwrap().await.unwrap();
    let (send, recv) = conn.open_bi().await.unwrap();
    let (mut writer, mut reader) = (FrameWriter::new(send, false), FrameReader::new(recv));
    writer
        .write(&AgentMessage::Hello {
            version: PROTOCOL_VERSION,
            agent: "test".into(),
            lineage: sluice_proto::Lineage { current: sluice_proto::GenerationId(1), forks: Vec::new() },
            activity: sluice_proto::lineage::Activity::default(),
        })
        .await
        .unwrap();
    let hello = expect(&mut reader, |_| true).await;
    assert_eq!(
        hello,
        ReceiverMessage::Hello {
            version: PROTOCOL_VERSION,
            durable_seq: 3,
            uncertain: false,
            lineage: sluice_proto::Lineage { current: sluice_proto::GenerationId(1), forks: Vec::new() },
            failback: None,
        }
    );

    // A newer connection from the pinned agent supersedes this one (the agent was
    // restarted, or its old connection is dead) instead of waiting for a timeout.
    let _newer = client.connect(addr, SERVER_NAME).unwrap().await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .unwrap();
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == quinn::VarInt::from_u32(3)),
        "{closed}"
    );

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), daemon)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let state = std::fs::read_to_string(f.root.join(".sluice/state")).unwrap();
    assert_eq!(state.split_whitespace().next(), Some("3"), "{state}");
    assert!(!f.root.join(".sluice/running").exists(), "a clean stop is recorded");
}
