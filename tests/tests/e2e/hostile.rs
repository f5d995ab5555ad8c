//! A hostile agent: a client holding the agent's pinned certificate (what a
//! compromised or buggy master has) sends each attack of issue #10 over real
//! QUIC to the real receiver. After every attack: a canary directory outside the
//! standby root is unchanged, `.sluice` and the rollback directory are intact,
//! and the receiver still serves; at the end an honest agent replicates again.

use sluice_net::{FrameReader, FrameWriter, Identity, SERVER_NAME, client_endpoint};
use sluice_proto::{AgentMessage, Entry, EntryKind, Meta, Op, PROTOCOL_VERSION, ReceiverMessage, RelPath, SeqOp, Timestamp};
use sluice_tests::{FsKind, LoopFs, Pair, PairOptions, wait_until, wait_until_identical};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the receiver may take to answer anything; past it, it hangs.
const ANSWER: Duration = Duration::from_secs(20);

fn p(s: &str) -> RelPath {
    RelPath::from_bytes(s).unwrap()
}

fn receiver_addr(pair: &Pair) -> SocketAddr {
    let text = std::fs::read_to_string(pair.dir().join("receiver.toml")).unwrap();
    let table: toml::Table = text.parse().unwrap();
    table["listen"].as_str().unwrap().parse().unwrap()
}

/// blake3 of every file below `dir` (and every symlink's target), by path.
fn fingerprint(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    if !dir.exists() {
        return out;
    }
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.unwrap();
        let meta = entry.path().symlink_metadata().unwrap();
        let value = if meta.is_file() {
            blake3::hash(&std::fs::read(entry.path()).unwrap()).to_hex().to_string()
        } else if meta.file_type().is_symlink() {
            format!("-> {}", std::fs::read_link(entry.path()).unwrap().display())
        } else {
            format!("{:o}", meta.mode())
        };
        out.insert(entry.path().strip_prefix(dir).unwrap().to_owned(), value);
    }
    out
}

/// A connection speaking as the agent, numbering its operations after what the
/// receiver holds.
struct Hostile {
    _endpoint: quinn::Endpoint,
    writer: FrameWriter,
    reader: FrameReader,
    next_seq: u64,
}

impl Hostile {
    async fn connect(pair: &Pair) -> Hostile {
        wait_until("the receiver to drop the previous connection", Duration::from_secs(30), || {
            Ok(pair.receiver_metrics()?.get("sluice_connected") == 0.0)
        })
        .unwrap();
        let agent = Identity::load(&pair.dir().join("agent-identity")).unwrap();
        let receiver = Identity::load(&pair.dir().join("receiver-identity")).unwrap();
        let endpoint = client_endpoint(&agent, &receiver.fingerprint().unwrap()).unwrap();
        let connection = endpoint.connect(receiver_addr(pair), SERVER_NAME).unwrap().await.unwrap();
        let (send, recv) = connection.open_bi().await.unwrap();
        let mut writer = FrameWriter::new(send, false);
        let mut reader = FrameReader::new(recv);
        writer.write(&AgentMessage::Hello { version: PROTOCOL_VERSION, agent: "hostile".into(), lineage: sluice_tests::tree::lineage_of(pair.master()).unwrap(), activity: sluice_proto::lineage::Activity::default() }).await.unwrap();
        let durable = match tokio::time::timeout(ANSWER, reader.read::<ReceiverMessage>()).await {
            Ok(Ok(Some(ReceiverMessage::Hello { durable_seq, .. }))) => durable_seq,
            other => panic!("no Hello from the receiver: {other:?}"),
        };
        Hostile { _endpoint: endpoint, writer, reader, next_seq: durable + 1 }
    }

    /// Sends `message` and reads answers until `done` says so, the stream
    /// ends, or the receiver refuses; panics if it stops answering.
    async fn exchange(&mut self, message: &AgentMessage, done: impl Fn(&ReceiverMessage) -> bool) -> Vec<ReceiverMessage> {
        let _ = self.writer.write(message).await;
        self.collect(done).await
    }

    async fn collect(&mut self, done: impl Fn(&ReceiverMessage) -> bool) -> Vec<ReceiverMessage> {
        let mut answers = Vec::new();
        loop {
            let answer = tokio::time::timeout(ANSWER, self.reader.read::<ReceiverMessage>()).await;
            match answer.expect("the receiver stopped answering") {
                Ok(Some(message)) => {
                    let finished = done(&message) || matches!(message, ReceiverMessage::Refused { .. });
                    answers.push(message);
                    if finished {
                        return answers;
                    }
                }
                Ok(None) | Err(_) => return answers,
            }
        }
    }

    /// Sends `ops` as numbered operations and waits until the last is
    /// acknowledged (or the connection is refused).
    async fn ops(&mut self, ops: Vec<Op>) -> Vec<ReceiverMessage> {
        let mut last = 0;
        let mut answers = Vec::new();
        for chunk in ops.chunks(1000) {
            let batch: Vec<SeqOp> = chunk
                .iter()
                .map(|op| {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    last = seq;
                    SeqOp { seq, captured_unix_ns: 0, op: op.clone() }
                })
                .collect();
            if self.writer.write(&AgentMessage::Ops(batch)).await.is_err() {
                break;
            }
        }
        answers.extend(self.collect(|m| matches!(m, ReceiverMessage::Ack { seq } if *seq >= last)).await);
        answers
    }
}

fn write(path: &str, offset: u64, data: &[u8]) -> Op {
    Op::Write { path: p(path), offset, data: data.to_vec(), hash: *blake3::hash(data).as_bytes() }
}

fn symlink(path: &str, target: &Path) -> Op {
    Op::Symlink { path: p(path), target: target.as_os_str().as_encoded_bytes().to_vec() }
}

fn dir_entry(path: &str) -> Entry {
    let meta = Meta { mode: 0o755, uid: 0, gid: 0, mtime: Timestamp { secs: 1, nanos: 0 } };
    Entry { path: p(path), kind: EntryKind::Dir, meta, hardlink_of: None, names: 1, xattrs: Vec::new(), verify: false }
}

/// Everything an attack must leave alone.
struct Kept {
    canary: tempfile::TempDir,
    canary_print: BTreeMap<PathBuf, String>,
    rollback_print: BTreeMap<PathBuf, String>,
    standby: PathBuf,
}

impl Kept {
    fn check(&self, pair: &mut Pair, attack: &str) {
        assert_eq!(fingerprint(self.canary.path()), self.canary_print, "{attack}: the canary outside the root changed");
        // Entry by entry: the rollback directory may have grown (a kept tree
        // deeper than a path can name, for one).
        let rollback = self.standby.join(".sluice/rollback");
        for (path, print) in &self.rollback_print {
            let full = rollback.join(path);
            let meta = full.symlink_metadata().unwrap_or_else(|e| panic!("{attack}: {} is gone from the rollback directory: {e}", path.display()));
            let now = if meta.is_file() { blake3::hash(&std::fs::read(&full).unwrap()).to_hex().to_string() } else { format!("{:o}", meta.mode()) };
            assert_eq!(&now, print, "{attack}: {} changed in the rollback directory", path.display());
        }
        assert!(self.standby.join(".sluice").is_dir(), "{attack}: .sluice is gone");
        assert!(pair.receiver().is_running(), "{attack}: the receiver died:\n{}", pair.receiver().log_tail(30));
        pair.receiver_metrics().unwrap_or_else(|e| panic!("{attack}: the receiver stopped serving metrics: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_agent_cannot_escape_exhaust_or_destroy() {
    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let (m, s) = (master.path().to_owned(), standby.path().to_owned());
    std::fs::create_dir(m.join("data")).unwrap();
    for i in 0..20 {
        std::fs::write(m.join(format!("data/f{i}")), format!("file {i}")).unwrap();
    }
    std::fs::write(m.join("doomed"), b"kept by rollback").unwrap();
    let options = PairOptions { receiver_toml: "[rollback]\nenabled = true\n".into(), ..PairOptions::default() };
    let mut pair = Pair::start_with(&m, &s, options).unwrap();
    wait_until_identical(&m, &s, Duration::from_secs(30)).unwrap();
    std::fs::remove_file(m.join("doomed")).unwrap();
    wait_until("the deleted file to be kept", Duration::from_secs(30), || Ok(fingerprint(&s.join(".sluice/rollback")).len() > 2)).unwrap();
    pair.stop_agent().unwrap();

    let canary = tempfile::tempdir().unwrap();
    std::fs::write(canary.path().join("shadow"), b"root:secret").unwrap();
    std::fs::create_dir(canary.path().join("etc")).unwrap();
    let kept = Kept {
        canary_print: fingerprint(canary.path()),
        rollback_print: fingerprint(&s.join(".sluice/rollback")),
        canary,
        standby: s.clone(),
    };
    let shadow = kept.canary.path().join("shadow");
    let day = std::fs::read_dir(s.join(".sluice/rollback")).unwrap().next().unwrap().unwrap().file_name();
    let day = day.to_str().unwrap().to_owned();

    // 1. A device node of the standby's own disk, then a write into it.
    let disk = std::fs::metadata(&s).unwrap().dev();
    let mut h = Hostile::connect(&pair).await;
    h.ops(vec![Op::Mknod { path: p("disk"), mode: libc::S_IFBLK | 0o600, rdev: disk }, write("disk", 0, b"escaped")]).await;
    // The write that follows may make a plain file of that name; never a device.
    use std::os::unix::fs::FileTypeExt;
    let made = std::fs::symlink_metadata(s.join("disk")).map(|m| m.file_type());
    assert!(!made.is_ok_and(|t| t.is_block_device() || t.is_char_device()), "a device node was made");
    kept.check(&mut pair, "device node");

    // 2. A FIFO, then writes into it: nothing may block the receiver.
    let answers = h.ops(vec![Op::Mkfifo { path: p("pipe"), mode: 0o600 }, write("pipe", 0, b"x"), Op::Truncate { path: p("pipe"), size: 0 }]).await;
    assert!(answers.iter().any(|a| matches!(a, ReceiverMessage::Ack { .. } | ReceiverMessage::Refused { .. })), "{answers:?}");
    kept.check(&mut pair, "FIFO");
    drop(h);

    // 3. A symlink to the root, and the state directory through it.
    let mut h = Hostile::connect(&pair).await;
    h.ops(vec![
        symlink("x", Path::new(".")),
        symlink("x/.sluice/state.tmp", &shadow),
        write("x/.sluice/state", 0, b"18446744073709551615\n"),
        write(&format!("x/.sluice/rollback/{day}/doomed"), 0, b"rewritten"),
        Op::Remove { path: p("x/.sluice") },
        Op::Barrier { path: None },
    ])
    .await;
    drop(h);
    // Let a flush happen through whatever the attack planted.
    tokio::time::sleep(Duration::from_secs(1)).await;
    kept.check(&mut pair, "symlink alias of .sluice");

    // 4. A manifest whose root is a file, and one that lists nothing.
    let mut h = Hostile::connect(&pair).await;
    let mut root_file = dir_entry("");
    root_file.kind = EntryKind::File { size: 0 };
    h.exchange(&AgentMessage::Manifest(vec![root_file]), |_| true).await;
    let answers = h.exchange(&AgentMessage::ManifestEnd, |m| matches!(m, ReceiverMessage::ManifestDone { .. })).await;
    assert!(answers.iter().any(|a| matches!(a, ReceiverMessage::Refused { reason, .. } if reason.contains("allow-mass-delete"))), "{answers:?}");
    assert_eq!(std::fs::read_dir(s.join("data")).unwrap().count(), 20, "the standby was emptied");
    kept.check(&mut pair, "lone manifest");
    drop(h);

    // 5. A tree 20,000 levels deep, built with renames, then removed.
    let mut h = Hostile::connect(&pair).await;
    let mut ops = vec![Op::Mkdir { path: p("deep"), mode: 0o755 }];
    for _ in 0..20_000 {
        ops.push(Op::Mkdir { path: p("w"), mode: 0o755 });
        ops.push(Op::Rename { from: p("deep"), to: p("w/deep"), exchange: false, noreplace: false });
        ops.push(Op::Rename { from: p("w"), to: p("deep"), exchange: false, noreplace: false });
    }
    ops.push(Op::Remove { path: p("deep") });
    let answers = h.ops(ops).await;
    assert!(!answers.iter().any(|a| matches!(a, ReceiverMessage::Refused { .. })), "{answers:?}");
    assert!(!s.join("deep").exists());
    kept.check(&mut pair, "deep tree");
    drop(h);

    // 6. Sequence numbers: an absurd one must not poison the durable state.
    let mut h = Hostile::connect(&pair).await;
    let forged = AgentMessage::Op(SeqOp { seq: u64::MAX, captured_unix_ns: 0, op: Op::Mkdir { path: p("late"), mode: 0o755 } });
    let answers = h.exchange(&forged, |m| matches!(m, ReceiverMessage::Ack { .. })).await;
    assert!(answers.iter().any(|a| matches!(a, ReceiverMessage::Refused { .. })), "{answers:?}");
    drop(h);
    kept.check(&mut pair, "absurd sequence number");

    // 7. A frame of the most operations that fit, each as small as can be.
    let pid = pair.receiver().pid().unwrap();
    let mut h = Hostile::connect(&pair).await;
    let tiny: Vec<SeqOp> = (0..8_000_000u64).map(|i| SeqOp { seq: h.next_seq + i, captured_unix_ns: 0, op: Op::Barrier { path: None } }).collect();
    let frame = sluice_proto::encode_frame(&AgentMessage::Ops(tiny), false);
    match frame {
        // The sender's own limit: build the frame by hand as a hostile peer would.
        Err(_) => {
            let body = postcard::to_stdvec(&AgentMessage::Ops((0..8_000_000u64).map(|i| SeqOp { seq: i + 1, captured_unix_ns: 0, op: Op::Barrier { path: None } }).collect())).unwrap();
            let mut raw = (body.len() as u32).to_le_bytes().to_vec();
            raw.push(0);
            raw.extend_from_slice(&body);
            let _ = h.writer.write_frame(&raw).await;
        }
        Ok(frame) => {
            let _ = h.writer.write_frame(&frame).await;
        }
    }
    h.collect(|_| false).await;
    drop(h);
    let peak = peak_memory_kib(pid);
    eprintln!("receiver peak memory after the inflation attack: {peak} KiB");
    assert!(peak < 512 * 1024, "the receiver grew to {peak} KiB");
    kept.check(&mut pair, "inflated frame");

    // 8. A crowd of unauthenticated handshakes and idle metrics connections.
    let addr = receiver_addr(&pair);
    let stranger = client_endpoint(&Identity::generate().unwrap(), &Identity::load(&pair.dir().join("receiver-identity")).unwrap().fingerprint().unwrap()).unwrap();
    let attempts: Vec<_> = (0..200).map(|_| stranger.connect(addr, SERVER_NAME).unwrap()).collect();
    let metrics_addr = pair.receiver().metrics_addr();
    let idle: Vec<_> = (0..1100).filter_map(|_| std::net::TcpStream::connect(metrics_addr).ok()).collect();
    for attempt in attempts {
        let _ = tokio::time::timeout(Duration::from_secs(10), attempt).await;
    }
    kept.check(&mut pair, "handshake and metrics flood");
    drop(idle);

    // The receiver still serves an honest agent; without its state, it compares
    // the whole tree, which also clears what the attacks left (a FIFO, a symlink).
    std::fs::remove_dir_all(pair.dir().join("agent-state")).unwrap();
    pair.start_agent().unwrap();
    std::fs::write(m.join("after"), b"replicated after the attacks").unwrap();
    wait_until_identical(&m, &s, Duration::from_secs(60)).unwrap();
    kept.check(&mut pair, "honest agent");
    let log = pair.receiver_log();
    assert!(!log.contains("panicked"), "the receiver panicked:\n{log}");
}

/// The receiver's peak resident memory (`VmHWM`), in KiB.
fn peak_memory_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn the_receiver_keeps_only_the_capabilities_it_needs() {
    let master = LoopFs::new(FsKind::Ext4, 64).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 64).unwrap();
    let mut pair = Pair::start(master.path(), standby.path()).unwrap();
    let pid = pair.receiver().pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        let value = status.lines().find_map(|l| l.strip_prefix(name)).unwrap().trim();
        u64::from_str_radix(value, 16).unwrap()
    };
    // CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID.
    let expected = 0b1_1111;
    for set in ["CapEff:", "CapPrm:", "CapBnd:"] {
        assert_eq!(field(set), expected, "{set} of the receiver is {:#x}\n{status}", field(set));
    }
    assert_eq!(field("CapInh:"), 0);
    assert!(status.lines().any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1')), "{status}");
    // And it still replicates (ownership and modes included).
    std::fs::write(master.path().join("f"), b"x").unwrap();
    std::os::unix::fs::chown(master.path().join("f"), Some(1234), Some(5678)).unwrap();
    wait_until_identical(master.path(), standby.path(), Duration::from_secs(30)).unwrap();
}

#[test]
fn a_sparse_200_gib_file_does_not_stall_the_initial_sync() {
    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let (m, s) = (master.path(), standby.path());
    let size = 200u64 << 30;
    // The standby holds an older copy: a comparison must hash it, and its hashes
    // alone (3.2 million blocks) are larger than a frame.
    for (dir, content) in [(m, b"master's"), (s, b"standby ")] {
        let file = std::fs::File::create(dir.join("huge")).unwrap();
        file.set_len(size).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, content, 0).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, content, size - 8).unwrap();
    }
    // Same size; an older mtime makes the copy differ for the comparison.
    sluice_tests::run(&format!("touch -d 2020-01-01 {}", s.join("huge").display())).unwrap();
    // Returns once the agent reports the initial sync complete.
    let pair = Pair::start(m, s).unwrap();
    // Comparing whole trees would read 400 GiB of holes: the data and the metadata suffice.
    let copy = std::fs::File::open(s.join("huge")).unwrap();
    let mut head = [0u8; 8];
    let mut tail = [0u8; 8];
    std::os::unix::fs::FileExt::read_exact_at(&copy, &mut head, 0).unwrap();
    std::os::unix::fs::FileExt::read_exact_at(&copy, &mut tail, size - 8).unwrap();
    assert_eq!((&head, &tail), (b"master's", b"master's"), "agent:\n{}\nreceiver:\n{}", pair.agent_log(), pair.receiver_log());
    let (a, b) = (std::fs::metadata(m.join("huge")).unwrap(), copy.metadata().unwrap());
    assert_eq!((a.len(), a.mtime(), a.mtime_nsec()), (b.len(), b.mtime(), b.mtime_nsec()));
    let sent = pair.agent_metrics().unwrap().get("sluice_payload_bytes_sent_total");
    assert!(sent <= 2.0 * 64.0 * 1024.0, "sent {sent} bytes for two differing blocks");
}

#[test]
fn an_agent_whose_tree_vanished_refuses_to_start() {
    let master = LoopFs::new(FsKind::Ext4, 64).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 64).unwrap();
    let (m, s) = (master.path(), standby.path());
    for i in 0..5 {
        std::fs::write(m.join(format!("f{i}")), b"data").unwrap();
    }
    let mut pair = Pair::start(m, s).unwrap();
    wait_until_identical(m, s, Duration::from_secs(30)).unwrap();
    pair.stop_agent().unwrap();
    // What an unmounted filesystem looks like from the agent's side.
    for i in 0..5 {
        std::fs::remove_file(m.join(format!("f{i}"))).unwrap();
    }
    let _ = pair.agent().spawn();
    wait_until("the agent to refuse to start", Duration::from_secs(30), || Ok(!pair.agent().is_running())).unwrap();
    assert!(pair.agent_log().contains("is its filesystem mounted"), "{}", pair.agent().log_tail(20));
    assert_eq!(std::fs::read_dir(s).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_str().unwrap().starts_with('f')).count(), 5);
}
