//! The agent's local control socket, `<state_dir>/control.sock`: how
//! `sluice-agent verify` asks the running daemon for a verification pass and
//! hears what it finds. One JSON request per line in, JSON reports per line out.

use crate::verify::Report;
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

/// The socket's file name in `state_dir`.
pub const SOCKET_NAME: &str = "control.sock";

/// What a client asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Compare the whole tree now; repair what differs only with `repair`.
    Verify { repair: bool },
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
    let path = socket_path(state_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing the stale {}", path.display())),
    }
    let listener = UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).with_context(|| format!("chmod {}", path.display()))?;
    Ok(tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("control socket: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, tx).await {
                    tracing::debug!("control client: {e:#}");
                }
            });
        }
    }))
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
        let last = matches!(report, Report::Done { .. } | Report::Error(_));
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
        if matches!(report, Report::Done { .. } | Report::Error(_)) {
            return Ok(report);
        }
    }
    bail!("the agent closed the control socket before the verification ended")
}
