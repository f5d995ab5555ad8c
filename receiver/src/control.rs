//! The receiver's local control socket, `<root>/.sluice/control.sock`: how
//! `sluice-receiver promote` and `status` reach the running daemon. One JSON
//! request per line in, one JSON answer out; root only (the directory is 0700).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sluice_proto::lineage::{Promotion, Role, TreeLineage};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

use crate::apply::STATE_DIR;
use crate::metrics::Metrics;
use crate::session::Session;
use crate::state::{Position, State};
use sluice_net::history::LagHistory;

/// The socket's file name in `<root>/.sluice`.
pub const SOCKET_NAME: &str = "control.sock";
/// How long a promotion waits for the connection it closed to let go of the tree.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// What a client asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Stop following the master and become a primary.
    Promote,
    Status,
    /// Stop applying until this connection closes (at most [`MAX_PAUSE`]), for
    /// a drill's snapshot of the tree; answered with `Paused`.
    Pause,
}

/// Longest a drill may hold the standby still.
pub const MAX_PAUSE: Duration = Duration::from_secs(600);
/// How long a pause waits for the operation being applied.
const PAUSE_WAIT: Duration = Duration::from_secs(30);

/// The daemon's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Promoted(PromotionReport),
    Status(Box<Status>),
    /// Applying is paused at this position (applied, not yet flushed: the
    /// drill flushes the filesystem before its snapshot).
    Paused(PausedAt),
    Error(String),
}

/// Where a paused standby stands.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct PausedAt {
    pub seq: u64,
    pub captured_unix_ns: u64,
    pub at_barrier: bool,
    pub barrier_unix_ns: u64,
}

/// What a promotion did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PromotionReport {
    pub root: PathBuf,
    pub lineage: TreeLineage,
    /// It was a primary already (nothing changed).
    pub already: bool,
    /// Wall time the promotion took, from the request to the lineage on disk.
    pub seconds: f64,
}

/// One screen of what the receiver is doing, for people and scripts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub running: bool,
    pub root: PathBuf,
    /// `standby`, `primary`, or `new` (no master followed yet).
    pub role: String,
    pub generation: Option<String>,
    pub listen: Option<SocketAddr>,
    pub connected: bool,
    /// The agent's address while one is connected.
    pub peer: Option<String>,
    pub last_applied_seq: u64,
    pub durable_seq: u64,
    /// The master's capture time of the last durable operation (Unix ns).
    pub consistent_as_of_unix_ns: u64,
    /// The last durable operation was an fsync barrier.
    pub at_barrier: bool,
    /// The master's capture time of the newest durable fsync barrier (Unix ns).
    pub last_durable_barrier_unix_ns: u64,
    pub lag_seconds: f64,
    pub ops_refused: u64,
    pub ops_diverged: u64,
    pub agents_fenced: u64,
    pub promoted: Option<Promotion>,
    /// Errors and warnings the running receiver logged in the last hour, and the last error.
    #[serde(flatten)]
    pub problems: sluice_net::daemon::Problems,
    /// Running and either connected to its master or a primary.
    pub healthy: bool,
    /// The lag over the last hour (a running receiver's).
    #[serde(default)]
    pub lag_history: LagHistory,
    /// Entries and bytes of file content in the rollback directory (`None`:
    /// not measured yet).
    #[serde(default)]
    pub rollback_entries: Option<u64>,
    #[serde(default)]
    pub rollback_bytes: Option<u64>,
}

impl Status {
    /// What the files in `<root>/.sluice` say, for a receiver that is not running.
    pub fn from_disk(root: &Path) -> anyhow::Result<Status> {
        let state = State::open_existing(root).with_context(|| format!("no receiver state under {}", root.display()))?;
        let position = state.load_position()?;
        let tree = state.load_lineage()?;
        let mut status = Status::of(root, &position, tree.as_ref(), None);
        if let Ok((entries, bytes)) = crate::apply::rollback::usage(root) {
            (status.rollback_entries, status.rollback_bytes) = (Some(entries), Some(bytes));
        }
        Ok(status)
    }

    fn of(root: &Path, position: &Position, tree: Option<&TreeLineage>, live: Option<Live<'_>>) -> Status {
        let role = tree.map_or_else(|| "new".to_string(), |t| t.role.to_string());
        let primary = tree.is_some_and(|t| t.role == Role::Primary);
        let metrics = live.as_ref().map(|l| l.metrics);
        let connected = metrics.is_some_and(|m| m.connected.get() == 1);
        let count = |get: fn(&Metrics) -> u64| metrics.map_or(0, get);
        // Only the running receiver's own log counts.
        let problems = if live.is_some() { sluice_net::daemon::recent_problems() } else { Default::default() };
        let lag_history = live.as_ref().map(|l| l.facts.history.lock().unwrap_or_else(|e| e.into_inner()).clone()).unwrap_or_default();
        let rollback = live.as_ref().and_then(|l| l.facts.rollback(root, l.metrics.rollback_entries_kept.get()));
        Status {
            running: live.is_some(),
            root: root.to_owned(),
            role,
            generation: tree.map(|t| t.lineage.current.to_string()),
            listen: live.as_ref().and_then(|l| l.listen),
            connected,
            peer: live.as_ref().and_then(|l| l.peer.clone()),
            last_applied_seq: metrics.map_or(position.seq, |m| u64::try_from(m.last_applied_seq.get()).unwrap_or(0)),
            durable_seq: position.seq,
            consistent_as_of_unix_ns: position.captured_unix_ns,
            at_barrier: position.at_barrier,
            last_durable_barrier_unix_ns: position.barrier_unix_ns,
            lag_seconds: metrics.map_or(0.0, |m| m.lag_seconds.get()),
            ops_refused: count(|m| m.ops_refused.get()),
            ops_diverged: count(|m| m.ops_diverged.get()),
            agents_fenced: count(|m| m.agents_fenced.get()),
            promoted: tree.and_then(|t| t.promoted),
            problems,
            healthy: live.is_some() && (connected || primary),
            lag_history,
            rollback_entries: rollback.map(|(entries, _)| entries),
            rollback_bytes: rollback.map(|(_, bytes)| bytes),
        }
    }
}

/// What only a running receiver knows.
struct Live<'a> {
    metrics: &'a Metrics,
    listen: Option<SocketAddr>,
    peer: Option<String>,
    facts: &'a Arc<PageFacts>,
}

/// What the status adds for the page: the lag history, and the rollback
/// directory's size.
#[derive(Default)]
pub struct PageFacts {
    history: std::sync::Mutex<LagHistory>,
    rollback: std::sync::Mutex<RollbackUsage>,
}

/// The rollback directory's size as last measured.
#[derive(Default)]
struct RollbackUsage {
    /// Entries and bytes.
    measured: Option<(u64, u64)>,
    /// When, and what `sluice_rollback_entries_kept_total` said then.
    at: Option<(std::time::Instant, u64)>,
    measuring: bool,
}

/// How often the lag is sampled for the page's chart.
const LAG_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// How old a measure of the rollback directory (a walk of it) may be.
const ROLLBACK_MEASURE_AGE: Duration = Duration::from_secs(60);

/// Samples the lag into `facts` every second, for the chart of the last hour;
/// measures the rollback directory once at the start, so the first `status`
/// has its size.
pub fn spawn_page_sampler(root: &Path, metrics: Arc<Metrics>, facts: Arc<PageFacts>) -> tokio::task::JoinHandle<()> {
    facts.rollback(root, metrics.rollback_entries_kept.get());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(LAG_SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let lag = if metrics.connected.get() == 1 { metrics.lag_seconds.get() } else { 0.0 };
            facts.history.lock().unwrap_or_else(|e| e.into_inner()).record(MASTER_SERIES, sluice_net::history::now_unix(), lag, 0);
        }
    })
}

impl PageFacts {
    /// The rollback directory's size as last measured. A new measure starts in
    /// the background when this one is a minute old or something was kept
    /// since: the directory is walked only while someone asks, at most once a
    /// minute unless it grows.
    fn rollback(self: &Arc<Self>, root: &Path, kept: u64) -> Option<(u64, u64)> {
        let mut usage = self.rollback.lock().unwrap_or_else(|e| e.into_inner());
        let stale = usage.at.is_none_or(|(at, kept_then)| at.elapsed() >= ROLLBACK_MEASURE_AGE || kept_then != kept);
        if stale
            && !usage.measuring
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            usage.measuring = true;
            usage.at = Some((std::time::Instant::now(), kept));
            let (root, facts) = (root.to_owned(), self.clone());
            runtime.spawn_blocking(move || {
                let measured = crate::apply::rollback::usage(&root);
                let mut usage = facts.rollback.lock().unwrap_or_else(|e| e.into_inner());
                usage.measuring = false;
                match measured {
                    Ok(measured) => usage.measured = Some(measured),
                    Err(e) => tracing::debug!("measuring the rollback directory: {e}"),
                }
            });
        }
        usage.measured
    }
}

/// The name of the receiver's one lag series.
const MASTER_SERIES: &str = "master";

/// The status page's `/status.json`: what `sluice-receiver status --json` prints.
pub fn status_source(shared: Shared) -> sluice_net::StatusSource {
    sluice_net::StatusSource::new(move || {
        let answer = status(&shared);
        async move {
            match answer {
                Answer::Status(status) => serde_json::to_string(&status).ok(),
                _ => None,
            }
        }
    })
}

/// What the control socket needs of the running server.
#[derive(Clone)]
pub struct Shared {
    pub root: PathBuf,
    pub listen: Option<SocketAddr>,
    pub session: Arc<Mutex<Session>>,
    pub current: Arc<std::sync::Mutex<Option<quinn::Connection>>>,
    pub metrics: Arc<Metrics>,
    /// Set while a promotion runs: new connections are turned away.
    pub promoting: Arc<AtomicBool>,
    pub state: State,
    /// Runs the hooks of a change of role.
    pub announce: Arc<dyn Fn(crate::session::RoleChange) + Send + Sync>,
    pub gate: crate::server::ApplyGate,
    /// The lag history and rollback size the page shows.
    pub facts: Arc<PageFacts>,
}

/// The socket path for `root`.
pub fn socket_path(root: &Path) -> PathBuf {
    root.join(STATE_DIR).join(SOCKET_NAME)
}

/// Listens on the control socket, answering each request.
pub fn serve(shared: Shared) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let path = socket_path(&shared.root);
    let task = sluice_net::daemon::serve_control(&path, move |stream| {
        let shared = shared.clone();
        async move {
            if let Err(e) = answer(stream, shared).await {
                tracing::debug!("control client: {e:#}");
            }
        }
    })?;
    Ok(task)
}

async fn answer(stream: UnixStream, shared: Shared) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    // A request is one short line; a client sending more is not one of ours.
    let mut read = BufReader::new(read.take(64 * 1024));
    if read.read_line(&mut line).await? == 0 {
        return Ok(());
    }
    if let Ok(Request::Pause) = serde_json::from_str::<Request>(line.trim()) {
        let Ok(applied) = tokio::time::timeout(PAUSE_WAIT, shared.gate.lock()).await else {
            let text = serde_json::to_string(&Answer::Error("the operation being applied did not finish in time".into()))?;
            write.write_all(format!("{text}\n").as_bytes()).await?;
            return Ok(());
        };
        let at = PausedAt {
            seq: applied.seq,
            captured_unix_ns: applied.captured_unix_ns,
            at_barrier: applied.at_barrier,
            barrier_unix_ns: applied.barrier_unix_ns,
        };
        tracing::info!(seq = at.seq, "applying paused for a drill");
        let text = serde_json::to_string(&Answer::Paused(at))?;
        write.write_all(format!("{text}\n").as_bytes()).await?;
        // Until the client closes (or gives up), nothing is applied.
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(MAX_PAUSE, read.read_to_end(&mut rest)).await;
        drop(applied);
        tracing::info!("applying resumed after the drill");
        return Ok(());
    }
    let answer = match serde_json::from_str::<Request>(line.trim()) {
        Ok(Request::Status) => status(&shared),
        Ok(Request::Pause) => Answer::Error("unreachable: pause is answered above".into()),
        Ok(Request::Promote) => match promote(&shared).await {
            Ok(report) => Answer::Promoted(report),
            Err(e) => Answer::Error(format!("{e:#}")),
        },
        Err(e) => Answer::Error(format!("bad request: {e}")),
    };
    let mut text = serde_json::to_string(&answer)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    Ok(())
}

fn status(shared: &Shared) -> Answer {
    let position = match shared.state.load_position() {
        Ok(position) => position,
        Err(e) => return Answer::Error(e.to_string()),
    };
    let tree = match shared.state.load_lineage() {
        Ok(tree) => tree,
        Err(e) => return Answer::Error(e.to_string()),
    };
    let peer = shared
        .current
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .filter(|c| c.close_reason().is_none())
        .map(|c| c.remote_address().to_string());
    let live = Live { metrics: &shared.metrics, listen: shared.listen, peer, facts: &shared.facts };
    Answer::Status(Box::new(Status::of(&shared.root, &position, tree.as_ref(), Some(live))))
}

/// Closes the master's connection, waits for it to let go of the tree (which
/// makes what it applied durable), and promotes.
async fn promote(shared: &Shared) -> anyhow::Result<PromotionReport> {
    let started = std::time::Instant::now();
    shared.promoting.store(true, Ordering::SeqCst);
    let _clear = ClearOnDrop(shared.promoting.clone());
    let previous = shared.current.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(connection) = previous {
        tracing::warn!("promotion: closing the connection from {}", connection.remote_address());
        connection.close(quinn::VarInt::from_u32(crate::server::CLOSE_FENCED), b"the standby is being promoted");
    }
    let Ok(mut guard) = tokio::time::timeout(RELEASE_WAIT, shared.session.clone().lock_owned()).await else {
        bail!("the connection from the master did not let go of the tree within {} s; nothing was promoted", RELEASE_WAIT.as_secs());
    };
    let already = guard.is_primary();
    let (guard, promoted) = tokio::task::spawn_blocking(move || {
        let promoted = guard.promote();
        (guard, promoted)
    })
    .await
    .context("promotion task panicked")?;
    let lineage = promoted.context("promoting")?;
    let mut guard = guard;
    if let Some(change) = guard.take_role_change() {
        (shared.announce)(change);
    }
    drop(guard);
    Ok(PromotionReport { root: shared.root.clone(), lineage, already, seconds: started.elapsed().as_secs_f64() })
}

struct ClearOnDrop(Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// A pause of the receiver serving a root: applying resumes when it is dropped.
pub struct Pause {
    _stream: UnixStream,
    pub at: PausedAt,
}

/// Pauses the receiver serving `root`; `None` when none runs there.
pub async fn pause(root: &Path) -> anyhow::Result<Option<Pause>> {
    let path = socket_path(root);
    let mut stream = match UnixStream::connect(&path).await {
        Ok(stream) => stream,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot reach the receiver at {}", path.display())),
    };
    let mut text = serde_json::to_string(&Request::Pause)?;
    text.push('\n');
    stream.write_all(text.as_bytes()).await?;
    // Read the answer byte by byte: the stream itself is kept to hold the pause.
    let mut line = Vec::new();
    loop {
        let byte = stream.read_u8().await?;
        if byte == b'\n' {
            break;
        }
        line.push(byte);
        if line.len() > 64 * 1024 {
            bail!("the receiver's answer is too long");
        }
    }
    match serde_json::from_slice(&line).with_context(|| format!("unexpected answer {:?}", String::from_utf8_lossy(&line)))? {
        Answer::Paused(at) => Ok(Some(Pause { _stream: stream, at })),
        Answer::Error(e) => bail!("the receiver could not pause: {e}"),
        other => bail!("unexpected answer from the receiver: {other:?}"),
    }
}

/// Sends `request` to the receiver serving `root`; `None` when none runs there.
pub async fn request(root: &Path, request: &Request) -> anyhow::Result<Option<Answer>> {
    let path = socket_path(root);
    let stream = match UnixStream::connect(&path).await {
        Ok(stream) => stream,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot reach the receiver at {}", path.display())),
    };
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_string(request)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    let mut lines = BufReader::new(read).lines();
    let line = lines.next_line().await?.context("the receiver closed the control socket without answering")?;
    let answer = serde_json::from_str(&line).with_context(|| format!("unexpected answer {line:?}"))?;
    Ok(Some(answer))
}

/// Promotes a tree no receiver is running on: its filesystem is flushed,
/// then the lineage written.
pub fn promote_offline(root: &Path) -> anyhow::Result<PromotionReport> {
    let started = std::time::Instant::now();
    let state = State::open_existing(root)
        .with_context(|| format!("{} holds no receiver state: was it ever a standby?", root.display()))?;
    let tree = state.load_lineage()?;
    if let Some(tree) = tree.as_ref().filter(|t| t.role == Role::Primary) {
        return Ok(PromotionReport { root: root.to_owned(), lineage: tree.clone(), already: true, seconds: started.elapsed().as_secs_f64() });
    }
    let dir = std::fs::File::open(root).with_context(|| format!("opening {}", root.display()))?;
    nix::unistd::syncfs(&dir).with_context(|| format!("flushing the filesystem of {}", root.display()))?;
    let position = state.load_position()?;
    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    let promoted = crate::session::promotion_of(tree.as_ref(), position, &host);
    state.store_lineage(&promoted)?;
    Ok(PromotionReport { root: root.to_owned(), lineage: promoted, already: false, seconds: started.elapsed().as_secs_f64() })
}
