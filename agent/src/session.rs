//! One connection to the receiver: handshake, tree comparison, then streaming
//! numbered operations and tracking their acknowledgements.

use crate::capture::Event;
use crate::engine::{Engine, PendingOp};
use crate::metrics::Metrics;
use anyhow::{Context, anyhow, bail};
use sluice_net::{FrameReader, FrameWriter};
use sluice_proto::{AgentMessage, Entry, PROTOCOL_VERSION, ReceiverMessage, SeqOp};
use std::collections::VecDeque;
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Manifest entries per frame.
const MANIFEST_CHUNK: usize = 2048;
/// Payload bytes per frame of operations; small ops share a frame.
const FRAME_PAYLOAD: u64 = 1 << 20;
/// Rescans closer together than this are deferred, so a burst of unplaceable events costs one.
const RESCAN_SPACING: Duration = Duration::from_secs(2);
/// How often the initial sync logs its progress when no terminal shows a bar.
const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(5);

/// A batch of events and the kernel's drop counter read after it.
pub struct CaptureBatch {
    pub events: Vec<Event>,
    pub dropped_total: u64,
}

/// CLOCK_MONOTONIC now, in the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

struct InFlight {
    seq: u64,
    captured_ns: u64,
    payload: u64,
}

/// State of one connection.
pub struct Session<'a> {
    connection: quinn::Connection,
    writer: FrameWriter,
    replies: mpsc::UnboundedReceiver<anyhow::Result<ReceiverMessage>>,
    engine: &'a mut Engine,
    metrics: &'a Metrics,
    next_seq: u64,
    in_flight: VecDeque<InFlight>,
    dropped_seen: u64,
    wire_seen: (u64, u64),
    lost_seen: u64,
    read_seen: u64,
    synced: bool,
    sync_started: Instant,
    last_rescan: Instant,
    progress: Option<indicatif::ProgressBar>,
    wants_answered: u64,
    last_progress_log: Instant,
    coalesce: Duration,
}

impl<'a> Session<'a> {
    /// Opens the stream and exchanges `Hello`.
    pub async fn open(
        connection: quinn::Connection,
        engine: &'a mut Engine,
        metrics: &'a Metrics,
        next_seq: u64,
        dropped_seen: u64,
        coalesce: Duration,
    ) -> anyhow::Result<Session<'a>> {
        let (send, recv) = connection.open_bi().await.context("opening the replication stream")?;
        let mut writer = FrameWriter::new(send, true);
        let agent = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
        writer.write(&AgentMessage::Hello { version: PROTOCOL_VERSION, agent }).await?;
        let mut reader = FrameReader::new(recv);
        let durable_seq = match reader.read::<ReceiverMessage>().await? {
            Some(ReceiverMessage::Hello { version, durable_seq }) if version == PROTOCOL_VERSION => durable_seq,
            Some(ReceiverMessage::Hello { version, .. }) => {
                bail!("receiver speaks protocol {version}, this agent {PROTOCOL_VERSION}")
            }
            other => bail!("expected Hello from the receiver, got {other:?}"),
        };
        let (tx, replies) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let message = reader.read::<ReceiverMessage>().await;
                let done = !matches!(message, Ok(Some(_)));
                let _ = tx.send(message.map_err(anyhow::Error::from).and_then(|m| m.ok_or_else(|| anyhow!("receiver closed the stream"))));
                if done {
                    break;
                }
            }
        });
        Ok(Session {
            connection,
            writer,
            replies,
            engine,
            metrics,
            next_seq: next_seq.max(durable_seq + 1),
            in_flight: VecDeque::new(),
            dropped_seen,
            wire_seen: (0, 0),
            lost_seen: 0,
            read_seen: 0,
            synced: false,
            sync_started: Instant::now(),
            last_rescan: Instant::now() - RESCAN_SPACING,
            progress: None,
            wants_answered: 0,
            last_progress_log: Instant::now(),
            coalesce,
        })
    }

    /// The next sequence number this session would use (kept across reconnects).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn dropped_seen(&self) -> u64 {
        self.dropped_seen
    }

    /// Runs until the connection fails or `events` closes.
    pub async fn run(&mut self, events: &mut mpsc::UnboundedReceiver<CaptureBatch>) -> anyhow::Result<()> {
        // Whatever was captured before this point is covered by the walk below.
        while let Ok(batch) = events.try_recv() {
            self.note_drops(batch.dropped_total);
        }
        self.engine.request_compare("connected");
        let mut flush_tick = tokio::time::interval(self.coalesce.max(Duration::from_millis(1)));
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut metrics_tick = tokio::time::interval(Duration::from_millis(100));
        let mut pending = Vec::new();
        let mut ticks = 0u64;
        loop {
            if self.engine.rescan_reason().is_some() && self.last_rescan.elapsed() >= RESCAN_SPACING {
                self.compare_trees().await?;
            }
            tokio::select! {
                reply = self.replies.recv() => {
                    let reply = reply.ok_or_else(|| anyhow!("receiver reader stopped"))??;
                    self.on_reply(reply, &mut pending).await?;
                }
                batch = events.recv() => {
                    let Some(batch) = batch else { return Ok(()) };
                    self.metrics.events_captured.inc_by(batch.events.len() as u64);
                    self.note_drops(batch.dropped_total);
                    for event in &batch.events {
                        self.engine.handle(event, &mut pending);
                    }
                    self.send(&mut pending).await?;
                }
                _ = flush_tick.tick(), if self.engine.has_dirty() => {
                    tokio::task::block_in_place(|| self.engine.flush(&mut pending));
                    self.send(&mut pending).await?;
                }
                _ = metrics_tick.tick() => {
                    ticks += 1;
                    if ticks % 10 == 0 {
                        self.engine.refresh_mapped(monotonic_ns());
                    }
                    self.update_metrics();
                }
            }
        }
    }

    fn note_drops(&mut self, dropped_total: u64) {
        if dropped_total > self.dropped_seen {
            let lost = dropped_total - self.dropped_seen;
            self.metrics.events_dropped.inc_by(lost);
            self.dropped_seen = dropped_total;
            self.engine.request_rescan(format!("the kernel ring buffer overflowed, {lost} events lost"));
        }
    }

    /// Walks the tree and sends it; the receiver answers with `Want`s and `ManifestDone`.
    async fn compare_trees(&mut self) -> anyhow::Result<()> {
        let reason = self.engine.rescan_reason().unwrap_or("requested").to_string();
        if reason != "connected" {
            self.metrics.rescans.inc();
        }
        self.last_rescan = Instant::now();
        self.sync_started = Instant::now();
        self.wants_answered = 0;
        let entries: Vec<Entry> = tokio::task::block_in_place(|| self.engine.rescan()).context("walking the watched tree")?;
        tracing::info!(entries = entries.len(), %reason, "comparing the tree with the standby");
        if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_message(format!("initial sync: {} entries listed", entries.len()));
            bar.enable_steady_tick(Duration::from_millis(200));
            self.progress = Some(bar);
        }
        for chunk in entries.chunks(MANIFEST_CHUNK) {
            self.writer.write(&AgentMessage::Manifest(chunk.to_vec())).await?;
        }
        self.writer.write(&AgentMessage::ManifestEnd).await?;
        Ok(())
    }

    async fn on_reply(&mut self, reply: ReceiverMessage, pending: &mut Vec<PendingOp>) -> anyhow::Result<()> {
        match reply {
            ReceiverMessage::Want { path, hashes, .. } => {
                let now = monotonic_ns();
                tokio::task::block_in_place(|| self.engine.answer_want(&path, &hashes, now, pending));
                self.wants_answered += 1;
                let sent = self.metrics.payload_bytes_sent.get();
                if let Some(bar) = &self.progress {
                    bar.set_message(format!("initial sync: {} files compared, {sent} bytes sent, now {path}", self.wants_answered));
                } else if self.last_progress_log.elapsed() >= PROGRESS_LOG_EVERY {
                    self.last_progress_log = Instant::now();
                    tracing::info!(files_compared = self.wants_answered, bytes_sent = sent, current = %path, "initial sync in progress");
                }
                self.send(pending).await?;
            }
            ReceiverMessage::ManifestDone { wanted } => {
                if let Some(bar) = self.progress.take() {
                    bar.finish_and_clear();
                }
                tracing::info!(
                    files_differing = wanted,
                    seconds = self.sync_started.elapsed().as_secs_f64(),
                    "standby compared; differing blocks are streaming"
                );
                self.synced = true;
                if self.in_flight.is_empty() {
                    self.metrics.initial_sync_complete.set(1);
                }
            }
            ReceiverMessage::Ack { seq } => {
                while self.in_flight.front().is_some_and(|f| f.seq <= seq) {
                    self.in_flight.pop_front();
                    self.metrics.ops_acked.inc();
                }
                if self.synced && self.in_flight.is_empty() {
                    self.metrics.initial_sync_complete.set(1);
                }
                self.update_metrics();
            }
            ReceiverMessage::Refused { seq, reason } => bail!("receiver refused operation {seq}: {reason}"),
            ReceiverMessage::Hello { .. } => bail!("unexpected second Hello from the receiver"),
        }
        Ok(())
    }

    /// Numbers and sends `pending`, several small ops to a frame.
    async fn send(&mut self, pending: &mut Vec<PendingOp>) -> anyhow::Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        if !self.synced {
            self.metrics.initial_sync_complete.set(0);
        }
        let now_mono = monotonic_ns();
        let now_unix = unix_ns();
        let mut batch = Vec::new();
        let mut batch_payload = 0;
        for PendingOp { op, captured_ns } in pending.drain(..) {
            let payload = op.payload_len();
            let seq = self.next_seq;
            self.next_seq += 1;
            self.in_flight.push_back(InFlight { seq, captured_ns, payload });
            self.metrics.ops_sent.inc();
            self.metrics.payload_bytes_sent.inc_by(payload);
            let captured_unix_ns = now_unix.saturating_sub(now_mono.saturating_sub(captured_ns));
            batch.push(SeqOp { seq, captured_unix_ns, op });
            batch_payload += payload;
            if batch_payload >= FRAME_PAYLOAD {
                self.writer.write(&AgentMessage::Ops(std::mem::take(&mut batch))).await?;
                batch_payload = 0;
            }
        }
        if !batch.is_empty() {
            self.writer.write(&AgentMessage::Ops(batch)).await?;
        }
        self.update_metrics();
        Ok(())
    }

    fn update_metrics(&mut self) {
        let now = monotonic_ns();
        let oldest = [self.in_flight.front().map(|f| f.captured_ns), self.engine.oldest_dirty_ns()]
            .into_iter()
            .flatten()
            .min();
        let lag = oldest.map_or(0.0, |t| now.saturating_sub(t) as f64 / 1e9);
        self.metrics.lag_seconds.set(lag);
        self.metrics.ops_in_flight.set(self.in_flight.len() as i64);
        let bytes: u64 = self.in_flight.iter().map(|f| f.payload).sum::<u64>() + self.engine.dirty_bytes();
        self.metrics.lag_bytes.set(bytes as i64);
        let stats = self.connection.stats();
        let (tx, rx) = (stats.udp_tx.bytes, stats.udp_rx.bytes);
        self.metrics.wire_bytes_sent.inc_by(tx.saturating_sub(self.wire_seen.0));
        self.metrics.wire_bytes_received.inc_by(rx.saturating_sub(self.wire_seen.1));
        self.wire_seen = (tx, rx);
        self.metrics.wire_bytes_lost.inc_by(stats.path.lost_bytes.saturating_sub(self.lost_seen));
        self.lost_seen = stats.path.lost_bytes;
        self.metrics.bytes_read.inc_by(self.engine.bytes_read.saturating_sub(self.read_seen));
        self.read_seen = self.engine.bytes_read;
    }
}
