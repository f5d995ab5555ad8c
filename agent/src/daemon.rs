//! The agent daemon: capture, then connect to the receiver and stream; while the
//! link is down changes keep accumulating in the backlog, and each new connection
//! resends what the standby does not hold durably.

use crate::capture::{Capture, CaptureOptions};
use crate::config::Config;
use crate::backlog::Limits;
use crate::engine::Engine;
use crate::journal::{Journal, JournalWriter};
use crate::metrics::{Metrics, ModeLabel};
use crate::session::{About, CaptureBatch, Fenced, Replicator, Session};
use anyhow::Context;
use sluice_net::{Identity, SERVER_NAME, client_endpoint, is_unknown_peer};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const RECONNECT_DELAY: Duration = Duration::from_secs(1);
/// How long a fenced agent that waits (`[failover] when_fenced = "wait"`) waits
/// between two attempts.
const FENCED_RETRY: Duration = Duration::from_secs(10);
/// A connection that ends sooner than this after it started counts as a quick
/// failure: after the first one in a row, the next attempt waits, twice as
/// long each time up to [`MAX_BACKOFF`], so a standby that refuses every
/// attempt (disk full) is not asked hundreds of times a second.
const QUICK_FAILURE: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Pause between two reads of fanotify's notices.
const NOTICE_BATCHING: Duration = Duration::from_millis(20);

/// Runs the agent until `shutdown` completes; with `reloader`, SIGHUP reads the
/// configuration again (see [`crate::reload`]).
pub async fn run(config: Config, reloader: Option<crate::reload::Reloader>, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let root = std::fs::canonicalize(&config.root).with_context(|| format!("root {}", config.root.display()))?;
    std::fs::create_dir_all(&config.state_dir).with_context(|| format!("state_dir {}", config.state_dir.display()))?;
    let identity = Identity::load(&config.tls.identity).context("loading the agent identity")?;
    let endpoint = client_endpoint(&identity, &config.tls.peer_fingerprint)?;

    let (journal, loaded) = Journal::open(&config.state_dir).context("opening the agent's durable state")?;
    if loaded.as_ref().is_some_and(|s| s.tree_nonempty) && tree_is_empty(&root)? {
        anyhow::bail!(
            "the watched root {} is empty, but held files when the agent last ran: is its filesystem mounted? \
             Replicating it would empty the standby. If the tree is meant to be empty, remove {} and start again",
            root.display(),
            config.state_dir.display()
        );
    }

    let tree_file = crate::lineage::TreeFile::open(&root).context("the tree's lineage")?;
    let tree = tree_file.primary()?;

    let options = CaptureOptions {
        ring_buffer_bytes: config.capture.ring_buffer_bytes,
        compat_always: config.capture.compat_syscalls == crate::config::CompatSyscalls::Always,
    };
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
    engine.set_ancestors(capture.ancestors().to_vec());
    let durability = &config.durability;
    let interval = Duration::from_millis(durability.journal_interval_ms);
    let journal = JournalWriter::start(journal, interval, metrics.journal_write_failures.clone());
    let limits = Limits { bytes: durability.backlog_bytes, ops: durability.backlog_ops };
    let verifier = crate::verify::Verifier::new(config.verify.bytes_per_second);
    let promoted = tree.promoted.map(|p| p.at_unix_ns);
    let mut rep = tokio::task::block_in_place(|| Replicator::new(engine, journal, loaded, promoted, limits, verifier, metrics.clone()))?;
    let (notices_tx, mut notices) = mpsc::unbounded_channel();
    let notices_task = if config.capture.cross_check != crate::config::CrossCheck::Off {
        let content = config.capture.cross_check == crate::config::CrossCheck::All;
        match crate::crosscheck::Notices::start(&root, content) {
            Ok(mut source) => Some(tokio::spawn(async move {
                loop {
                    let mut batch = Vec::new();
                    if let Err(e) = source.next_batch(&mut batch).await {
                        tracing::warn!("fanotify stopped: {e}; capture is no longer cross-checked");
                        return;
                    }
                    if notices_tx.send(batch).is_err() {
                        return;
                    }
                    // Read in batches: notices of one object queued meanwhile merge
                    // in the kernel, and a writer is not woken for every one.
                    tokio::time::sleep(NOTICE_BATCHING).await;
                }
            })),
            Err(e) => {
                tracing::warn!("fanotify is not available on {} ({e}); capture is not cross-checked", root.display());
                None
            }
        }
    } else {
        None
    };
    rep.engine.names_cross_checked = notices_task.is_some();
    if let Some(reloader) = &reloader {
        rep.notifier = reloader.notifier.clone();
    }
    let notifier = rep.notifier.clone();
    let watchdog_task = sluice_net::notify::spawn_watchdog(rep.heartbeat.clone());
    rep.resume_activity(tree.activity);
    rep.about = About { root: root.clone(), peer: config.receiver.to_string(), lineage: tree };
    rep.activity_file = Some(crate::lineage::TreeFile::open(&root).context("the tree's lineage")?);
    let (control_tx, mut control) = mpsc::unbounded_channel();
    let (settings_tx, settings) = tokio::sync::watch::channel(config.clone());
    let reload_task = match reloader {
        Some(reloader) => Some(crate::reload::spawn(reloader, config.clone(), settings_tx, control_tx.clone()).context("installing the SIGHUP handler")?),
        None => None,
    };
    let control_task = crate::control::serve(&config.state_dir, control_tx).context("control socket")?;
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
    let mut exit_error: Option<anyhow::Error> = None;
    let mut reconnect_after = Duration::ZERO;
    let mut fenced_announced = false;
    let mut quick_failures = 0u32;
    'connections: loop {
        // What a reload may have changed since the last connection.
        let live = settings.borrow().clone();
        let coalesce = Duration::from_millis(live.capture.coalesce_ms);
        // Changes keep flowing into the backlog while there is no connection.
        let connection = {
            let connect = async {
                tokio::time::sleep(reconnect_after).await;
                connect(&endpoint, config.receiver).await
            };
            tokio::pin!(connect);
            let mut flush_tick = tokio::time::interval(coalesce.max(Duration::from_millis(1)));
            flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = &mut shutdown => break 'connections,
                    connection = &mut connect => break connection,
                    batch = events.recv() => match batch {
                        Some(batch) => rep.handle_batch(batch),
                        None => break 'connections,
                    },
                    _ = flush_tick.tick(), if rep.engine.has_dirty() => rep.flush(),
                    _ = tick.tick() => {
                        rep.tick();
                        rep.record_activity(Some(crate::lineage::ACTIVITY_INTERVAL));
                        rep.judge_notices(events.is_empty());
                    }
                    Some(request) = control.recv() => rep.handle_control(request),
                    Some(batch) = notices.recv() => rep.handle_notices(batch),
                }
            }
        };
        reconnect_after = Duration::ZERO;
        tracing::info!(receiver = %config.receiver, "connected");
        metrics.connected.set(1);
        let connected_at = std::time::Instant::now();
        let attempt = async {
            let mut session = Session::open(connection, &mut rep, coalesce).await?;
            session.run(&mut events, &mut control, &mut notices).await
        };
        let result = tokio::select! {
            _ = &mut shutdown => None,
            result = attempt => Some(result),
        };
        rep.offline();
        metrics.connected.set(0);
        metrics.initial_sync_complete.set(0);
        match result {
            None => break,
            Some(Err(e)) => match e.downcast::<Fenced>() {
                Ok(fenced) => {
                    metrics.fenced.set(1);
                    tracing::error!("{fenced}");
                    rep.record_activity(None);
                    let ours = rep.about.lineage.lineage.current;
                    let unsent = crate::failback::unsent(&rep, ours, crate::session::unix_ns());
                    match tree_file.store_unsent(&unsent) {
                        Ok(()) if unsent.complete => tracing::info!(
                            files = unsent.files.len(),
                            paths = unsent.paths.len(),
                            "recorded what this tree holds that the standby never received, for its failback"
                        ),
                        Ok(()) => tracing::warn!("this agent does not know everything the standby never received: its failback compares the whole tree"),
                        Err(e) => tracing::warn!("cannot record what the standby never received ({e}): its failback compares the whole tree"),
                    }
                    let activity = rep.activity();
                    if let Some(fork) = fenced.lineage.forks.iter().rev().find(|f| f.parent == ours)
                        && let Some(changes) = activity.after(fork)
                    {
                        tracing::error!(
                            changes,
                            fork_seq = fork.seq,
                            "split brain: this master took changes after the standby was promoted out of it; they are not on the new primary"
                        );
                    }
                    if !fenced_announced {
                        fenced_announced = true;
                        if let Some(hook) = &live.hooks.on_fenced {
                            let vars = [
                                ("SLUICE_ROLE", rep.about.lineage.role.to_string()),
                                ("SLUICE_ROOT", root.display().to_string()),
                                ("SLUICE_PEER", config.receiver.to_string()),
                                ("SLUICE_GENERATION", rep.about.lineage.lineage.current.to_string()),
                                ("SLUICE_PEER_GENERATION", fenced.lineage.current.to_string()),
                                ("SLUICE_REASON", fenced.reason.clone()),
                            ];
                            sluice_net::daemon::run_hook("fenced", hook, &vars);
                        }
                    }
                    match live.failover.when_fenced {
                        crate::config::WhenFenced::Exit => {
                            exit_error = Some(anyhow::Error::new(fenced));
                            break;
                        }
                        crate::config::WhenFenced::Wait => reconnect_after = FENCED_RETRY,
                    }
                }
                Err(e) => {
                    quick_failures = if connected_at.elapsed() < QUICK_FAILURE { quick_failures + 1 } else { 0 };
                    if quick_failures > 1 {
                        reconnect_after = RECONNECT_DELAY.saturating_mul(1 << (quick_failures - 2).min(5)).min(MAX_BACKOFF);
                    }
                    tracing::warn!("replication stopped: {e:#}; reconnecting in {:.0} s", reconnect_after.as_secs_f64());
                }
            },
            Some(Ok(())) => {}
        }
        if let Some(switched) = rep.switched.take() {
            match tree_file.demote(&switched.lineage) {
                Ok(tree) => {
                    tracing::warn!(
                        generation = %tree.lineage.current,
                        last_seq = switched.proof.last_seq,
                        "switched over: the standby is the primary now and this tree its standby; stopping (run `sluice-receiver` on {} to follow it)",
                        root.display()
                    );
                    if let Some(hook) = &live.hooks.on_demote {
                        let vars = [
                            ("SLUICE_ROLE", tree.role.to_string()),
                            ("SLUICE_ROOT", root.display().to_string()),
                            ("SLUICE_PEER", config.receiver.to_string()),
                            ("SLUICE_GENERATION", tree.lineage.current.to_string()),
                            ("SLUICE_DURABLE_SEQ", switched.proof.standby_durable_seq.to_string()),
                        ];
                        sluice_net::daemon::run_hook("demote", hook, &vars);
                    }
                    let _ = switched.reply.send(crate::verify::Report::SwitchedOver(switched.proof));
                }
                Err(e) => {
                    let message = format!("the standby was promoted, but this tree could not be marked its standby: {e}; do not start the agent on it again");
                    let _ = switched.reply.send(crate::verify::Report::Error(message.clone()));
                    exit_error = Some(anyhow::anyhow!(message));
                }
            }
            break;
        }
        if capture_task.is_finished() {
            break;
        }
    }
    notifier.stopping();
    control_task.abort();
    for task in [reload_task, watchdog_task].into_iter().flatten() {
        task.abort();
    }
    if let Some(task) = notices_task {
        task.abort();
    }
    let _ = std::fs::remove_file(crate::control::socket_path(&config.state_dir));
    rep.write_journal_now();
    if rep.switched.is_none() {
        rep.record_activity(None);
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
    exit_error.map_or(Ok(()), Err)
}

/// True when `root` holds nothing but what is never replicated.
fn tree_is_empty(root: &std::path::Path) -> anyhow::Result<bool> {
    let entries = std::fs::read_dir(root).with_context(|| format!("listing {}", root.display()))?;
    for entry in entries {
        let name = entry.with_context(|| format!("listing {}", root.display()))?.file_name();
        if !crate::scan::EXCLUDED_TOP_LEVEL.iter().any(|excluded| name == *excluded) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Connects to the receiver, trying again every [`RECONNECT_DELAY`] until it answers.
async fn connect(endpoint: &quinn::Endpoint, receiver: std::net::SocketAddr) -> quinn::Connection {
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
            Err(e) => tracing::warn!("{e:#}; trying again"),
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}
