//! The agent daemon: capture, then connect to each standby and stream; while a
//! standby's link is down its changes keep accumulating (in its backlog, then
//! as ranges), and each new connection resends what it does not hold durably.

use crate::capture::{Capture, CaptureOptions};
use crate::config::Config;
use crate::backlog::Limits;
use crate::engine::Engine;
use crate::journal::{Journal, JournalWriter};
use crate::metrics::{Metrics, ModeLabel};
use crate::link::{LinkEvent, spawn_connect};
use crate::session::{About, CaptureBatch, FeedSetup, Fenced, Replicator};
use anyhow::Context;
use sluice_net::{Identity, client_endpoint};
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
    run_with(config, reloader, shutdown, None).await
}

/// What makes the agent a relay: it replicates a standby's tree, as its
/// receiver applies it, to the standbys after it in a chain.
pub struct Relay {
    /// The master's capture time of what the receiver applies.
    pub origin: sluice_net::origin::OriginClock,
}

/// Runs the agent as a relay on a standby's tree (see [`Relay`]) until
/// `shutdown` completes. The tree's lineage is the standby's, read anew for
/// each connection; nothing is written beside the tree but the relay's state.
pub async fn run_relay(config: Config, relay: Relay, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_with(config, None, shutdown, Some(relay)).await
}

async fn run_with(
    config: Config,
    reloader: Option<crate::reload::Reloader>,
    shutdown: impl Future<Output = ()>,
    relay: Option<Relay>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let relaying = relay.is_some();
    let root = std::fs::canonicalize(&config.root).with_context(|| format!("root {}", config.root.display()))?;
    std::fs::create_dir_all(&config.state_dir).with_context(|| format!("state_dir {}", config.state_dir.display()))?;
    let identity = Identity::load(&config.tls.identity).context("loading the agent identity")?;
    let standbys = config.standbys();
    let mut endpoints = Vec::new();
    let mut opened_journals = Vec::new();
    for standby in &standbys {
        endpoints.push(client_endpoint(&identity, &standby.peer_fingerprint).with_context(|| format!("standby {}", standby.name))?);
        let dir = config.standby_state_dir(standby);
        std::fs::create_dir_all(&dir).with_context(|| format!("state directory {}", dir.display()))?;
        let opened = Journal::open(&dir).with_context(|| format!("opening the agent's durable state for standby {}", standby.name))?;
        opened_journals.push(opened);
    }
    if opened_journals.iter().any(|(_, loaded)| loaded.as_ref().is_some_and(|s| s.tree_nonempty)) && tree_is_empty(&root)? {
        anyhow::bail!(
            "the watched root {} is empty, but held files when the agent last ran: is its filesystem mounted? \
             Replicating it would empty the standby. If the tree is meant to be empty, remove {} and start again",
            root.display(),
            config.state_dir.display()
        );
    }

    let tree_file = crate::lineage::TreeFile::open(&root).context("the tree's lineage")?;
    let tree = if relaying {
        // A standby gets its lineage from the master's first connection.
        loop {
            if let Some(tree) = tree_file.load()? {
                break tree;
            }
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    } else {
        tree_file.primary()?
    };

    let options = CaptureOptions {
        ring_buffer_bytes: config.capture.ring_buffer_bytes,
        compat_always: config.capture.compat_syscalls == crate::config::CompatSyscalls::Always,
    };
    let mut capture = Capture::start(&root, &options).context("starting eBPF capture")?;
    tracing::info!(mode = capture.mode(), root = %root.display(), standbys = standbys.len(), "capturing changes");

    let metrics = Metrics::default();
    metrics.capture_mode.get_or_create(&ModeLabel { mode: capture.mode().to_string() }).set(1);
    let registry = Arc::new(metrics.register());
    let (control_tx, mut control) = mpsc::unbounded_channel();
    let _metrics_server = match config.metrics.listen {
        Some(listen) => {
            let page = crate::control::status_source(control_tx.clone());
            Some(sluice_net::serve_metrics(listen, registry, Some(page)).await.context("metrics listener")?)
        }
        None => None,
    };

    let options = crate::engine::Options { devices: config.replication.devices };
    let mut engine = Engine::new(&root, capture.watched_dev(), options)?;
    engine.set_ancestors(capture.ancestors().to_vec());
    let durability = &config.durability;
    let interval = Duration::from_millis(durability.journal_interval_ms);
    let limits = Limits { bytes: durability.backlog_bytes, ops: durability.backlog_ops };
    let setups = standbys
        .iter()
        .zip(opened_journals)
        .map(|(standby, (journal, loaded))| FeedSetup {
            name: standby.name.clone(),
            address: standby.address,
            journal: JournalWriter::start(journal, interval, metrics.journal_write_failures.clone()),
            loaded,
            verifier: crate::verify::Verifier::new(config.verify.bytes_per_second),
            metrics: metrics.standby.of(&standby.name),
        })
        .collect();
    let promoted = tree.promoted.map(|p| p.at_unix_ns);
    let mut rep = tokio::task::block_in_place(|| Replicator::new(engine, setups, promoted, limits, metrics.clone()))?;
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
    if !relaying {
        rep.resume_activity(tree.activity);
    }
    rep.relay = relay.map(|relay| crate::session::RelayClock::new(relay.origin));
    let peer = standbys.iter().map(|s| s.address.to_string()).collect::<Vec<_>>().join(", ");
    rep.about = About { root: root.clone(), peer, lineage: tree };
    if !relaying {
        rep.activity_file = Some(crate::lineage::TreeFile::open(&root).context("the tree's lineage")?);
    }
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

    let (links_tx, mut links) = mpsc::unbounded_channel();
    let mut connecting: Vec<Option<tokio::task::JoinHandle<()>>> = standbys
        .iter()
        .enumerate()
        .map(|(i, standby)| Some(spawn_connect(i, standby.name.clone(), endpoints[i].clone(), standby.address, Duration::ZERO, links_tx.clone())))
        .collect();
    let written = rep.written.clone();
    // A relay's tree is its receiver's: the relay records nothing beside it.
    let own_tree_file = (!relaying).then_some(&tree_file);
    let mut exit_error: Option<anyhow::Error> = None;
    let mut fenced_announced = false;
    let mut coalesce = Duration::from_millis(config.capture.coalesce_ms);
    let mut flush_tick = tokio::time::interval(coalesce.max(Duration::from_millis(1)));
    flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    'feeding: loop {
        if rep.walk_due() {
            // Handle what capture already reported first, so that as few events
            // as possible come from before the walk (see `Engine::superseded_by_walk`).
            while let Ok(batch) = events.try_recv() {
                rep.handle_batch(batch);
            }
            if rep.repairs_due() {
                rep.queue_repairs()?;
            }
        }
        let mut more = false;
        for (i, connection) in connecting.iter_mut().enumerate() {
            match rep.pump(i) {
                Ok(ready) => more |= ready,
                Err(e) => {
                    let delay = connection_ended(&mut rep, i, e, &settings, &root, own_tree_file, &mut fenced_announced, &mut exit_error);
                    match delay {
                        Some(delay) => *connection = Some(reconnect(&rep, i, &endpoints, delay, &links_tx)),
                        None => break 'feeding,
                    }
                }
            }
        }
        if rep.switched.is_some() {
            break;
        }
        tokio::select! {
            _ = &mut shutdown => break,
            batch = events.recv() => match batch {
                Some(batch) => rep.handle_batch(batch),
                None => break,
            },
            Some(event) = links.recv() => match event {
                LinkEvent::HelloWanted { feed, reply } => {
                    if relaying {
                        match tree_file.load() {
                            Ok(Some(tree)) => rep.about.lineage = tree,
                            Ok(None) => {}
                            Err(e) => tracing::warn!("reading the standby's lineage: {e}"),
                        }
                    }
                    let _ = reply.send(rep.hello(feed));
                }
                LinkEvent::Opened { feed, opened } => {
                    connecting[feed] = None;
                    let name = rep.feeds[feed].name.clone();
                    match rep.open_feed(feed, *opened, links_tx.clone()) {
                        Ok(()) => {
                            tracing::info!(receiver = %rep.feeds[feed].address, standby = %name, "connected");
                            rep.feeds[feed].metrics.connected.set(1);
                        }
                        Err(e) => match connection_ended(&mut rep, feed, e, &settings, &root, own_tree_file, &mut fenced_announced, &mut exit_error) {
                            Some(delay) => connecting[feed] = Some(reconnect(&rep, feed, &endpoints, delay, &links_tx)),
                            None => break,
                        },
                    }
                }
                LinkEvent::Failed { feed, error } => {
                    connecting[feed] = None;
                    let delay = connection_ended(&mut rep, feed, error, &settings, &root, own_tree_file, &mut fenced_announced, &mut exit_error);
                    match delay {
                        Some(delay) => connecting[feed] = Some(reconnect(&rep, feed, &endpoints, delay, &links_tx)),
                        None => break,
                    }
                }
                LinkEvent::Message { feed, id, message } => {
                    if rep.feeds[feed].link.as_ref().is_none_or(|link| link.id != id) {
                        continue;
                    }
                    let result = message.and_then(|message| rep.on_reply(feed, message));
                    if let Err(e) = result {
                        match connection_ended(&mut rep, feed, e, &settings, &root, own_tree_file, &mut fenced_announced, &mut exit_error) {
                            Some(delay) => connecting[feed] = Some(reconnect(&rep, feed, &endpoints, delay, &links_tx)),
                            None => break,
                        }
                    }
                }
            },
            () = written.notified() => {}
            _ = flush_tick.tick(), if rep.has_dirty() => rep.flush(),
            _ = tick.tick() => {
                rep.tick();
                rep.judge_notices(events.is_empty());
                let live = Duration::from_millis(settings.borrow().capture.coalesce_ms);
                if live != coalesce {
                    coalesce = live;
                    flush_tick = tokio::time::interval(coalesce.max(Duration::from_millis(1)));
                    flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                }
            }
            Some(request) = control.recv() => rep.handle_control(request),
            Some(batch) = notices.recv() => rep.handle_notices(batch),
            () = tokio::task::yield_now(), if more => {}
        }
        if rep.switched.is_some() || capture_task.is_finished() {
            break;
        }
    }
    for task in connecting.into_iter().flatten() {
        task.abort();
    }
    for i in 0..rep.feeds.len() {
        rep.feed_offline(i);
    }
    metrics.connected.set(0);
    metrics.initial_sync_complete.set(0);
    let mut switched_over = false;
    if let Some(switched) = rep.switched.take() {
        let live = settings.borrow().clone();
        let peer = rep.about.peer.clone();
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
                        ("SLUICE_PEER", peer),
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
        switched_over = true;
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
    if !switched_over {
        rep.record_activity(None);
    }
    for endpoint in &endpoints {
        endpoint.close(0u32.into(), b"agent stopping");
    }
    // Let the close reach the receivers, so they free their sessions at once.
    let _ = tokio::time::timeout(Duration::from_secs(1), futures_wait_idle(&endpoints)).await;
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

async fn futures_wait_idle(endpoints: &[quinn::Endpoint]) {
    for endpoint in endpoints {
        endpoint.wait_idle().await;
    }
}

/// Starts connecting to standby `i` again after `delay`.
fn reconnect(
    rep: &Replicator,
    i: usize,
    endpoints: &[quinn::Endpoint],
    delay: Duration,
    links: &mpsc::UnboundedSender<LinkEvent>,
) -> tokio::task::JoinHandle<()> {
    let feed = &rep.feeds[i];
    spawn_connect(i, feed.name.clone(), endpoints[i].clone(), feed.address, delay, links.clone())
}

/// Ends standby `i`'s connection after `error`; returns when to connect to it
/// again, or `None` when the agent must stop (it was fenced).
#[allow(clippy::too_many_arguments)]
fn connection_ended(
    rep: &mut Replicator,
    i: usize,
    error: anyhow::Error,
    settings: &tokio::sync::watch::Receiver<Config>,
    root: &std::path::Path,
    tree_file: Option<&crate::lineage::TreeFile>,
    fenced_announced: &mut bool,
    exit_error: &mut Option<anyhow::Error>,
) -> Option<Duration> {
    let opened_at = rep.feeds[i].link.as_ref().map(|link| link.opened_at);
    rep.feed_offline(i);
    let live = settings.borrow().clone();
    match error.downcast::<Fenced>() {
        Ok(fenced) => {
            tracing::error!("{fenced}");
            rep.record_activity(None);
            let ours = rep.about.lineage.lineage.current;
            let unsent = crate::failback::unsent(rep, i, ours, crate::session::unix_ns());
            // A relay's tree is its receiver's: it records nothing beside it.
            let stored = match tree_file {
                Some(tree_file) => tree_file.store_unsent(&unsent),
                None => Ok(()),
            };
            match stored {
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
            rep.set_fenced();
            if !*fenced_announced {
                *fenced_announced = true;
                if let Some(hook) = &live.hooks.on_fenced {
                    let vars = [
                        ("SLUICE_ROLE", rep.about.lineage.role.to_string()),
                        ("SLUICE_ROOT", root.display().to_string()),
                        ("SLUICE_PEER", rep.feeds[i].address.to_string()),
                        ("SLUICE_GENERATION", rep.about.lineage.lineage.current.to_string()),
                        ("SLUICE_PEER_GENERATION", fenced.lineage.current.to_string()),
                        ("SLUICE_REASON", fenced.reason.clone()),
                    ];
                    sluice_net::daemon::run_hook("fenced", hook, &vars);
                }
            }
            match live.failover.when_fenced {
                crate::config::WhenFenced::Exit => {
                    *exit_error = Some(anyhow::Error::new(fenced));
                    None
                }
                crate::config::WhenFenced::Wait => Some(FENCED_RETRY),
            }
        }
        Err(e) => {
            let feed = &mut rep.feeds[i];
            let quick = opened_at.is_none_or(|at| at.elapsed() < QUICK_FAILURE);
            feed.quick_failures = if quick { feed.quick_failures + 1 } else { 0 };
            let delay = if feed.quick_failures > 1 {
                RECONNECT_DELAY.saturating_mul(1 << (feed.quick_failures - 2).min(5)).min(MAX_BACKOFF)
            } else {
                Duration::ZERO
            };
            tracing::warn!(standby = %feed.name, "replication stopped: {e:#}; reconnecting in {:.0} s", delay.as_secs_f64());
            Some(delay)
        }
    }
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
