//! The agent's local control socket, `<state_dir>/control.sock`: how
//! `sluice-agent verify`, `status` and `switchover` reach the running daemon.
//! One JSON request per line in, JSON reports per line out.

use crate::verify::Report;
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

/// The socket's file name in `state_dir`.
pub const SOCKET_NAME: &str = "control.sock";

/// What a client asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Compare the whole tree now; repair what differs only with `repair`.
    Verify { repair: bool },
    /// What the agent is doing.
    Status,
    /// Wait until the standby holds everything captured, then promote it.
    Switchover,
    /// Settings a reload of the configuration changed (sent by the daemon itself).
    Reconfigure { verify_bytes_per_second: u64 },
}

/// One screen of what the agent is doing, for people and scripts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub root: PathBuf,
    pub role: String,
    pub generation: String,
    /// The receivers' addresses.
    pub peer: String,
    /// Connected to every standby.
    pub connected: bool,
    /// Every standby holds the tree (the comparison after connecting is done).
    pub synced: bool,
    /// The last sequence number given to an operation.
    pub last_seq: u64,
    /// The last one the standby applied, and the last it holds on disk.
    pub applied_seq: u64,
    pub durable_seq: u64,
    pub backlog_ops: u64,
    pub backlog_bytes: u64,
    pub lag_seconds: f64,
    pub lag_bytes: u64,
    pub events_dropped: u64,
    pub tree_compares: u64,
    pub verify_mismatches: u64,
    /// When the verifier last finished a pass over the tree (Unix seconds, 0: never).
    pub verify_last_pass_unix: f64,
    /// Passes the verifier finished, and content it compared, since the start.
    #[serde(default)]
    pub verify_passes: u64,
    #[serde(default)]
    pub verify_bytes: u64,
    /// When the last comparison of the tree (or part of it) with the standby
    /// ended (Unix seconds, 0: none since the start), and how many files differed.
    #[serde(default)]
    pub last_compare_unix: f64,
    #[serde(default)]
    pub last_compare_files_differing: u64,
    /// Errors and warnings logged in the last hour, and the last error.
    #[serde(flatten)]
    pub problems: sluice_net::daemon::Problems,
    /// Connected and synced.
    pub healthy: bool,
    /// Each standby this master feeds.
    #[serde(default)]
    pub standbys: Vec<StandbyStatus>,
    /// Each standby's lag over the last hour.
    #[serde(default)]
    pub lag_history: sluice_net::history::LagHistory,
}

impl AgentStatus {
    /// What `status --json` prints and the status page reads.
    pub fn to_json(&self) -> serde_json::Result<serde_json::Value> {
        let mut value = serde_json::to_value(self)?;
        if let Some(object) = value.as_object_mut() {
            object.insert("running".into(), true.into());
        }
        Ok(value)
    }
}

/// The status page's `/status.json`: the running agent's status, asked of the
/// work loop as `sluice-agent status` asks it.
pub fn status_source(control: mpsc::UnboundedSender<ControlRequest>) -> sluice_net::StatusSource {
    sluice_net::StatusSource::new(move || {
        let control = control.clone();
        async move {
            let (reply, mut reports) = mpsc::unbounded_channel();
            control.send(ControlRequest { request: Request::Status, reply }).ok()?;
            match reports.recv().await? {
                Report::Status(status) => status.to_json().ok().map(|json| json.to_string()),
                _ => None,
            }
        }
    })
}

/// Where one standby stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StandbyStatus {
    pub name: String,
    pub address: String,
    pub connected: bool,
    pub synced: bool,
    /// The last operation numbered for it, the last it applied, and the last it holds on disk.
    pub last_seq: u64,
    pub applied_seq: u64,
    pub durable_seq: u64,
    /// When the master captured its last durable operation (Unix seconds; 0:
    /// not sent by this run of the agent).
    #[serde(default)]
    pub durable_captured_unix: f64,
    pub backlog_ops: u64,
    pub backlog_bytes: u64,
    /// What it lacks is kept as changed ranges until it catches up.
    pub ahead: bool,
    pub lag_seconds: f64,
    pub lag_bytes: u64,
    /// Why its tree is to be compared, when it is.
    pub compare_owed: Option<String>,
    pub last_compare_unix: f64,
    pub last_compare_files_differing: u64,
    pub verify_passes: u64,
    pub verify_bytes: u64,
}

/// What a switchover proves: the standby, promoted, holds every operation the
/// master captured up to `last_seq` on disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwitchoverProof {
    /// The master's last operation before the switchover point.
    pub last_seq: u64,
    /// The standby's durable operation when it was promoted (equal when nothing was lost).
    pub standby_durable_seq: u64,
    /// The standby's new generation, which this tree now follows as a standby.
    pub generation: String,
    /// Operations captured on the master after the point (writers that did not
    /// stop): they are not on the new primary.
    pub captured_after: u64,
    pub seconds: f64,
}

/// A request, and where its reports go.
pub struct ControlRequest {
    pub request: Request,
    pub reply: mpsc::UnboundedSender<Report>,
}

/// The socket path for `state_dir`.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}

/// Listens on the control socket (root only), forwarding each request to `tx`.
pub fn serve(state_dir: &Path, tx: mpsc::UnboundedSender<ControlRequest>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let task = sluice_net::daemon::serve_control(&socket_path(state_dir), move |stream| {
        let tx = tx.clone();
        async move {
            if let Err(e) = answer(stream, tx).await {
                tracing::debug!("control client: {e:#}");
            }
        }
    })?;
    Ok(task)
}

async fn answer(stream: UnixStream, tx: mpsc::UnboundedSender<ControlRequest>) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    // A request is one short line; a client sending more is not one of ours.
    let read = BufReader::new(read.take(64 * 1024)).read_line(&mut line).await?;
    if read == 0 {
        return Ok(());
    }
    let (reply, mut reports) = mpsc::unbounded_channel();
    match serde_json::from_str::<Request>(line.trim()) {
        Ok(request) => tx.send(ControlRequest { request, reply }).context("the agent is stopping")?,
        Err(e) => reply.send(Report::Error(format!("bad request: {e}")))?,
    }
    while let Some(report) = reports.recv().await {
        let last = report.is_last();
        let mut text = serde_json::to_string(&report)?;
        text.push('\n');
        write.write_all(text.as_bytes()).await?;
        if last {
            break;
        }
    }
    Ok(())
}

use tokio::io::AsyncReadExt as _;

/// Sends `request` to the agent running with `state_dir` and passes each report
/// to `on_report` until the last one, which is returned.
pub async fn request(state_dir: &Path, request: &Request, mut on_report: impl FnMut(&Report)) -> anyhow::Result<Report> {
    let path = socket_path(state_dir);
    let stream = UnixStream::connect(&path)
        .await
        .with_context(|| format!("cannot reach the agent at {} (is `sluice-agent run` running with this config?)", path.display()))?;
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_string(request)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let report: Report = serde_json::from_str(&line).with_context(|| format!("unexpected answer {line:?}"))?;
        on_report(&report);
        if report.is_last() {
            return Ok(report);
        }
    }
    bail!("the agent closed the control socket before answering")
}
