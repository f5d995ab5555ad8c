//! Connections to the standbys: connecting, the `Hello` exchange, and the tasks
//! that write and read each connection's frames, so that a standby behind a
//! thin or dead link never holds up the loop that feeds the others.

use anyhow::{Context, anyhow};
use sluice_net::{FrameReader, FrameWriter, SERVER_NAME, is_unknown_peer};
use sluice_proto::{AgentMessage, ReceiverMessage};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, oneshot};

/// Between two attempts to reach a standby that does not answer.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// Frames handed to a connection's writer and not yet written, at most: more
/// would only queue in memory behind a slow link.
const MAX_QUEUED_FRAMES: usize = 4;

/// What the connections tell the loop that feeds the standbys.
pub enum LinkEvent {
    /// Standby `feed` answered; the `Hello` to send it is asked for now, so
    /// that it names this master's activity as of the handshake.
    HelloWanted { feed: usize, reply: oneshot::Sender<AgentMessage> },
    /// Standby `feed` answered the `Hello`.
    Opened { feed: usize, opened: Box<Opened> },
    /// The handshake with standby `feed` failed after its QUIC connection was made.
    Failed { feed: usize, error: anyhow::Error },
    /// A message (or the end) of connection `id` of standby `feed`.
    Message { feed: usize, id: u64, message: anyhow::Result<ReceiverMessage> },
}

/// A connection past the `Hello` exchange.
pub struct Opened {
    pub connection: quinn::Connection,
    pub writer: FrameWriter,
    pub reader: FrameReader,
    /// The receiver's answer to `Hello`.
    pub answer: Option<ReceiverMessage>,
}

/// Connects to standby `feed` at `address` after `delay`, trying again every
/// [`RECONNECT_DELAY`] until it answers, and exchanges `Hello`.
pub fn spawn_connect(
    feed: usize,
    name: String,
    endpoint: quinn::Endpoint,
    address: SocketAddr,
    delay: Duration,
    events: mpsc::UnboundedSender<LinkEvent>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let connection = connect(&endpoint, &name, address).await;
        let handshake = async {
            let (send, recv) = connection.open_bi().await.context("opening the replication stream")?;
            let mut writer = FrameWriter::new(send, true);
            let (reply, hello) = oneshot::channel();
            events.send(LinkEvent::HelloWanted { feed, reply }).map_err(|_| anyhow!("the agent is stopping"))?;
            let hello = hello.await.map_err(|_| anyhow!("the agent is stopping"))?;
            writer.write(&hello).await?;
            let mut reader = FrameReader::new(recv);
            let answer = reader.read::<ReceiverMessage>().await?;
            anyhow::Ok(Opened { connection: connection.clone(), writer, reader, answer })
        };
        let event = match handshake.await {
            Ok(opened) => LinkEvent::Opened { feed, opened: Box::new(opened) },
            Err(error) => LinkEvent::Failed { feed, error },
        };
        let _ = events.send(event);
    })
}

/// Connects to the receiver, trying again every [`RECONNECT_DELAY`] until it answers.
async fn connect(endpoint: &quinn::Endpoint, name: &str, receiver: SocketAddr) -> quinn::Connection {
    loop {
        let attempt = async {
            let connecting = endpoint.connect(receiver, SERVER_NAME).context("connecting")?;
            match connecting.await {
                Ok(connection) => Ok(connection),
                Err(e) if is_unknown_peer(&e) => {
                    anyhow::bail!("receiver {receiver} refused the handshake or presented a certificate that is not pinned: {e}")
                }
                Err(e) => Err(e).context(format!("connecting to {receiver}")),
            }
        };
        match attempt.await {
            Ok(connection) => return connection,
            Err(e) => tracing::warn!(standby = name, "{e:#}; trying again"),
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

/// The sending side of an open connection: frames go to a task that writes
/// them, at most [`MAX_QUEUED_FRAMES`] ahead.
pub struct Outbox {
    frames: mpsc::UnboundedSender<AgentMessage>,
    queued: Arc<AtomicUsize>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Outbox {
    /// Starts the tasks that write `writer`'s frames and read `reader`'s
    /// messages; `written` is notified each time a frame is written, and
    /// messages (and the end of the connection) go to `events` as connection `id`.
    pub fn start(
        feed: usize,
        id: u64,
        mut writer: FrameWriter,
        mut reader: FrameReader,
        events: mpsc::UnboundedSender<LinkEvent>,
        written: Arc<Notify>,
    ) -> Outbox {
        let (frames, mut to_write) = mpsc::unbounded_channel::<AgentMessage>();
        let queued = Arc::new(AtomicUsize::new(0));
        let writer_events = events.clone();
        let writer_queued = queued.clone();
        let writer_task = tokio::spawn(async move {
            while let Some(frame) = to_write.recv().await {
                if let Err(e) = writer.write(&frame).await {
                    let _ = writer_events.send(LinkEvent::Message { feed, id, message: Err(anyhow::Error::from(e)) });
                    return;
                }
                writer_queued.fetch_sub(1, Ordering::Relaxed);
                written.notify_one();
            }
        });
        let reader_task = tokio::spawn(async move {
            loop {
                let message = reader.read::<ReceiverMessage>().await;
                let done = !matches!(message, Ok(Some(_)));
                let message = message.map_err(anyhow::Error::from).and_then(|m| m.ok_or_else(|| anyhow!("receiver closed the stream")));
                if events.send(LinkEvent::Message { feed, id, message }).is_err() || done {
                    return;
                }
            }
        });
        Outbox { frames, queued, tasks: [writer_task, reader_task] }
    }

    /// Queues `message` for sending.
    pub fn send(&self, message: AgentMessage) -> anyhow::Result<()> {
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.frames.send(message).map_err(|_| anyhow!("the connection's writer stopped"))
    }

    /// Whether another frame may be queued now.
    pub fn has_room(&self) -> bool {
        self.queued.load(Ordering::Relaxed) < MAX_QUEUED_FRAMES
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
