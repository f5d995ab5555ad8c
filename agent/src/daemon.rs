//! The agent daemon: capture, then connect to the receiver and stream, reconnecting
//! (and comparing trees again) whenever the link drops.

use crate::capture::{Capture, CaptureOptions};
use crate::config::Config;
use crate::engine::Engine;
use crate::metrics::{Metrics, ModeLabel};
use crate::session::{CaptureBatch, Session};
use anyhow::Context;
use sluice_net::{Identity, SERVER_NAME, client_endpoint, is_unknown_peer};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Runs the agent until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let root = std::fs::canonicalize(&config.root).with_context(|| format!("root {}", config.root.display()))?;
    std::fs::create_dir_all(&config.state_dir).with_context(|| format!("state_dir {}", config.state_dir.display()))?;
    let identity = Identity::load(&config.tls.identity).context("loading the agent identity")?;
    let endpoint = client_endpoint(&identity, &config.tls.peer_fingerprint)?;

    let options = CaptureOptions { ring_buffer_bytes: config.capture.ring_buffer_bytes };
    let mut capture = Capture::start(&root, &options).context("starting eBPF capture")?;
    tracing::info!(mode = capture.mode(), root = %root.display(), "capturing changes");

    let metrics = Metrics::default();
    metrics.capture_mode.get_or_create(&ModeLabel { mode: capture.mode().to_string() }).set(1);
    let registry = Arc::new(metrics.register());
    let _metrics_server = match config.metrics.listen {
        Some(listen) => Some(sluice_net::serve_metrics(listen, registry).await.context("metrics listener")?),
        None => None,
    };

    let options = crate::engine::Options { devices: config.replication.devices };
    let mut engine = Engine::new(&root, capture.watched_dev(), options)?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let capture_task = tokio::spawn(async move {
        loop {
            let mut batch = Vec::new();
            capture.next_batch(&mut batch).await?;
            let dropped_total = capture.dropped().unwrap_or(0);
            if events_tx.send(CaptureBatch { events: batch, dropped_total }).is_err() {
                return Ok::<(), crate::capture::CaptureError>(());
            }
        }
    });

    tokio::pin!(shutdown);
    let mut next_seq = 1;
    let mut dropped_seen = 0;
    loop {
        let attempt = async {
            let connecting = endpoint.connect(config.receiver, SERVER_NAME).context("connecting")?;
            let connection = match connecting.await {
                Ok(connection) => connection,
                Err(e) if is_unknown_peer(&e) => {
                    anyhow::bail!("receiver {} refused the handshake or presented a certificate that is not pinned: {e}", config.receiver)
                }
                Err(e) => return Err(e).context(format!("connecting to {}", config.receiver)),
            };
            tracing::info!(receiver = %config.receiver, "connected");
            metrics.connected.set(1);
            let coalesce = Duration::from_millis(config.capture.coalesce_ms);
            let mut session = Session::open(connection, &mut engine, &metrics, next_seq, dropped_seen, coalesce).await?;
            let result = session.run(&mut events).await;
            next_seq = session.next_seq();
            dropped_seen = session.dropped_seen();
            result
        };
        tokio::select! {
            _ = &mut shutdown => break,
            result = attempt => {
                metrics.connected.set(0);
                metrics.initial_sync_complete.set(0);
                metrics.ops_in_flight.set(0);
                if let Err(e) = result {
                    tracing::warn!("replication stopped: {e:#}; reconnecting");
                }
            }
        }
        if capture_task.is_finished() {
            break;
        }
        // Changes made while disconnected are found by the tree comparison on reconnect.
        let wait = tokio::time::sleep(RECONNECT_DELAY);
        tokio::select! {
            _ = &mut shutdown => break,
            _ = wait => {}
        }
        while events.try_recv().is_ok() {}
    }
    endpoint.close(0u32.into(), b"agent stopping");
    // Let the close reach the receiver, so it frees its session at once.
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    if capture_task.is_finished() {
        return match capture_task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e).context("capture failed"),
            Err(e) => Err(e).context("capture task"),
        };
    }
    capture_task.abort();
    tracing::info!("agent stopped");
    Ok(())
}
