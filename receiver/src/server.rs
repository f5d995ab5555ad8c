//! The daemon: a QUIC endpoint accepting one pinned agent at a time and feeding
//! its messages to the [`Session`].
//!
//! File-system work (applying, hashing, fsync) runs on tokio's blocking pool; the
//! session moves there and back with its lock guard, so exactly one connection
//! owns it at a time.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use quinn::{Connection, Endpoint, Incoming, VarInt};
use sluice_net::{FrameReader, FrameWriter, Identity, NetError, is_unknown_peer, server_endpoint_on};
use sluice_proto::{AgentMessage, ReceiverMessage};
use tokio::sync::{Mutex, OwnedMutexGuard, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};

use crate::apply::Applier;
use crate::apply::rollback::{self, RollbackCounters};
use crate::reload::Reloader;
use crate::config::{Config, HooksConfig};
use crate::metrics::Metrics;
use crate::session::{DurableError, RoleChange, Session};
use crate::local::{LocalChange, LocalChanges};
use crate::state::{Position, State};
use std::collections::BTreeSet;

/// Longest time between an applied op and its durable record while a stream is busy.
const FLUSH_INTERVAL: Duration = Duration::from_millis(300);
/// How often an idle connection's loop wakes to show systemd's watchdog it runs.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Longest time between acknowledgements while frames keep arriving.
const ACK_INTERVAL: Duration = Duration::from_millis(5);
/// How long a closing stream waits for the agent to take the last frames.
const FINISH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a new connection waits for the previous one to release the session.
const HANDOVER_WAIT: Duration = Duration::from_secs(10);
/// Memory the messages read ahead of the applying loop may take (frames and
/// what they decoded into): counted in bytes, not messages, because one
/// message can be a thousand times the size of another.
const QUEUE_BYTES: usize = 64 << 20;
/// Handshakes in progress at once; more incoming connections are refused
/// before any cryptography is spent on them (an unauthenticated peer can ask).
const MAX_HANDSHAKES: usize = 8;
/// How often expired rollback date directories are looked for.
const ROLLBACK_EXPIRY_INTERVAL: Duration = Duration::from_secs(3600);

/// QUIC application close codes.
const CLOSE_NORMAL: u32 = 0;
const CLOSE_REFUSED: u32 = 1;
const CLOSE_BUSY: u32 = 2;
/// Close code telling an agent a newer connection of the same identity replaced it.
const CLOSE_SUPERSEDED: u32 = 3;
/// Close code telling an agent this tree was promoted (or is being): it is fenced.
pub const CLOSE_FENCED: u32 = 4;

/// Runs the operator's hooks for a change of role.
pub type Announce = Arc<dyn Fn(RoleChange) + Send + Sync>;

/// Held while a message is applied, and by a drill to pause applying; holds
/// where the last applied operation stands.
pub type ApplyGate = Arc<Mutex<Position>>;

/// A bound, not yet running receiver.
pub struct Server {
    endpoint: Endpoint,
    metrics: Arc<Metrics>,
    metrics_addr: Option<SocketAddr>,
    metrics_task: Option<tokio::task::JoinHandle<()>>,
    rollback_expiry_task: Option<tokio::task::JoinHandle<()>>,
    session: Arc<Mutex<Session>>,
    /// The connection being served, so a newer one from the agent can replace it.
    current: Arc<std::sync::Mutex<Option<quinn::Connection>>>,
    /// Set while `sluice-receiver promote` runs: connections are turned away.
    promoting: Arc<AtomicBool>,
    control_task: tokio::task::JoinHandle<()>,
    /// Samples the lag for the status page's chart.
    page_task: tokio::task::JoinHandle<()>,
    announce: Announce,
    gate: ApplyGate,
    local: LocalQueue,
    local_task: Option<tokio::task::JoinHandle<()>>,
    root: PathBuf,
    /// The configuration as running (a reload changes parts of it).
    config: Config,
    hooks: Arc<std::sync::Mutex<HooksConfig>>,
    settings: Arc<PendingSettings>,
    /// Beats while the session's loop goes round, for systemd's watchdog.
    heartbeat: sluice_net::notify::Heartbeat,
}

/// Binds and runs the receiver until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    Server::bind(&config).await?.run(shutdown).await
}

/// The sockets a receiver serves on, bound before it drops its privileges.
pub struct Sockets {
    quic: std::net::UdpSocket,
    metrics: Option<std::net::TcpListener>,
    /// The watch for local changes, made while the privileges it needs are held.
    watch: Option<crate::local::Watch>,
}

/// Local changes read from the standby's filesystem and not yet taken by a
/// connection: bounded, and not collected at all once the tree is a primary
/// (its users write to it then).
#[derive(Default)]
struct LocalPending {
    changes: std::sync::Mutex<BTreeSet<LocalChange>>,
    arrived: tokio::sync::Notify,
}

type LocalQueue = Arc<LocalPending>;

/// Settings a reload changed, for the session: applied by the connection that
/// holds it, or at once when none does.
#[derive(Default)]
struct PendingSettings {
    settings: std::sync::Mutex<Option<SessionSettings>>,
    arrived: tokio::sync::Notify,
}

/// The session's part of the configuration that a reload may change.
#[derive(Clone, Copy, Debug)]
struct SessionSettings {
    limits: crate::session::SyncLimits,
    split_brain: crate::config::SplitBrainPolicy,
    rollback: bool,
}

impl PendingSettings {
    fn put(&self, settings: SessionSettings) {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner()) = Some(settings);
        self.arrived.notify_one();
    }

    /// Applies what waits, if anything.
    fn apply_to(&self, session: &mut Session) {
        let Some(settings) = self.settings.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        session.set_limits(settings.limits);
        session.set_split_brain_policy(settings.split_brain);
        session.set_rollback(settings.rollback);
    }
}

/// Most local changes held while no agent is connected.
const MAX_PENDING_LOCAL: usize = 100_000;

impl LocalPending {
    fn add(&self, batch: BTreeSet<LocalChange>) {
        let mut changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        for change in batch {
            if changes.len() >= MAX_PENDING_LOCAL {
                break;
            }
            changes.insert(change);
        }
        drop(changes);
        self.arrived.notify_one();
    }

    fn take(&self) -> BTreeSet<LocalChange> {
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Sockets {
    /// Binds the QUIC and metrics addresses of `config` (no runtime needed).
    pub fn bind(config: &Config) -> anyhow::Result<Sockets> {
        let quic = sluice_net::bind_udp(config.listen).with_context(|| format!("binding QUIC endpoint on {}", config.listen))?;
        let metrics = match config.metrics.listen {
            Some(listen) => Some(std::net::TcpListener::bind(listen).with_context(|| format!("binding metrics on {listen}"))?),
            None => None,
        };
        let watch = if config.safety.revert_local_changes {
            match crate::local::Watch::start(&config.root) {
                Ok(watch) => Some(watch),
                Err(e) => {
                    tracing::warn!("cannot watch {} for local changes ({e}); they are found by the verifier only", config.root.display());
                    None
                }
            }
        } else {
            None
        };
        Ok(Sockets { quic, metrics, watch })
    }
}

impl Server {
    /// Opens the root and its state, binds the QUIC endpoint and the metrics server.
    pub async fn bind(config: &Config) -> anyhow::Result<Server> {
        Server::bind_on(config, Sockets::bind(config)?).await
    }

    /// [`Server::bind`] on sockets bound earlier.
    pub async fn bind_on(config: &Config, sockets: Sockets) -> anyhow::Result<Server> {
        let metrics = Arc::new(Metrics::new());
        let mut applier = Applier::open(&config.root)?;
        if config.replication.devices {
            applier.enable_devices();
        }
        if config.rollback.enabled {
            applier.enable_rollback(RollbackCounters {
                bytes_kept: metrics.rollback_bytes_kept.clone(),
                entries_kept: metrics.rollback_entries_kept.clone(),
            });
        }
        let state = State::open(&config.root)?;
        let position = state.load_position()?;
        let durable = position.seq;
        let tree = state.load_lineage()?;
        let unclean = state.unclean();
        if unclean {
            tracing::warn!(durable_seq = durable, "the previous run did not stop cleanly; the agent will verify what it sent after the durable state instead of replaying it");
        }
        if let Some(tree) = &tree {
            metrics.role_primary.set(i64::from(tree.role == sluice_proto::Role::Primary));
            if tree.role == sluice_proto::Role::Primary {
                tracing::warn!(generation = %tree.lineage.current, "this tree was promoted: it is a primary, and agents of the generation it came from are fenced");
            }
        }
        let mut session = Session::new(applier, state.clone(), durable, unclean, metrics.clone());
        session.restore(position, tree);
        session.set_split_brain_policy(config.failover.after_split_brain);
        if !config.forward.is_empty() {
            let path = crate::relay::origin_path(&config.root);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
            }
            let origin = sluice_net::origin::OriginClock::open(&path).map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
            session.set_origin_clock(origin);
        }
        let gate = Arc::new(Mutex::new(session.applied_position()));
        let local = Arc::new(LocalPending::default());
        let local_task = match sockets.watch.map(LocalChanges::new).transpose() {
            Ok(Some(mut changes)) => {
                let (local, metrics) = (local.clone(), metrics.clone());
                Some(tokio::spawn(async move {
                    loop {
                        match changes.next_batch().await {
                            Ok(batch) if batch.is_empty() => {}
                            // A primary's users write to it: those are not local changes.
                            Ok(_) if metrics.role_primary.get() == 1 => {}
                            Ok(batch) => local.add(batch),
                            Err(e) => {
                                tracing::warn!("watching for local changes stopped: {e}");
                                return;
                            }
                        }
                    }
                }))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!("cannot read local changes: {e}");
                None
            }
        };
        session.set_limits(crate::session::SyncLimits {
            max_entries: config.safety.max_manifest_entries,
            max_delete_fraction: config.safety.max_delete_fraction,
            allow_mass_delete: config.safety.allow_mass_delete,
        });
        let identity = Identity::load(&config.tls.identity)
            .with_context(|| format!("loading identity from {}", config.tls.identity.display()))?;
        let endpoint = server_endpoint_on(sockets.quic, &identity, &config.tls.peer_fingerprint)
            .with_context(|| format!("starting the QUIC endpoint on {}", config.listen))?;
        let rollback_expiry_task = config
            .rollback
            .enabled
            .then(|| spawn_rollback_expiry(config.root.clone(), config.rollback.keep_days));
        let session = Arc::new(Mutex::new(session));
        let current = Arc::new(std::sync::Mutex::new(None));
        let promoting = Arc::new(AtomicBool::new(false));
        let hooks = Arc::new(std::sync::Mutex::new(config.hooks.clone()));
        let announce = announcer(config.root.clone(), hooks.clone());
        let page_facts = Arc::new(crate::control::PageFacts::default());
        let page_task = crate::control::spawn_page_sampler(&config.root, metrics.clone(), page_facts.clone());
        let shared = crate::control::Shared {
            root: config.root.clone(),
            listen: Some(endpoint.local_addr()?),
            session: session.clone(),
            current: current.clone(),
            metrics: metrics.clone(),
            promoting: promoting.clone(),
            state,
            announce: announce.clone(),
            gate: gate.clone(),
            facts: page_facts.clone(),
        };
        let (metrics_addr, metrics_task) = match sockets.metrics {
            Some(listener) => {
                let page = crate::control::status_source(shared.clone());
                let (addr, task) =
                    sluice_net::serve_metrics_on(listener, metrics.registry.clone(), Some(page)).context("serving metrics")?;
                (Some(addr), Some(task))
            }
            None => (None, None),
        };
        let control_task = crate::control::serve(shared).context("control socket")?;
        tracing::info!(root = %config.root.display(), durable_seq = durable, "listening on {}", endpoint.local_addr()?);
        Ok(Server {
            endpoint,
            metrics,
            metrics_addr,
            metrics_task,
            rollback_expiry_task,
            session,
            current,
            promoting,
            control_task,
            page_task,
            announce,
            gate,
            local,
            local_task,
            root: config.root.clone(),
            config: config.clone(),
            hooks,
            settings: Arc::new(PendingSettings::default()),
            heartbeat: sluice_net::notify::Heartbeat::default(),
        })
    }

    /// The bound QUIC address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The bound metrics address, when metrics are enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The metrics, for tests and embedding.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Accepts connections until `shutdown` completes, then closes them and makes
    /// everything applied durable.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        self.run_as_service(shutdown, None).await
    }

    /// [`Server::run`], telling systemd when it serves and what it does, feeding
    /// its watchdog while the applying session is not stuck, and with
    /// `reloader`, reading the configuration again on SIGHUP.
    pub async fn run_as_service(mut self, shutdown: impl Future<Output = ()>, reloader: Option<Reloader>) -> anyhow::Result<()> {
        let notifier = reloader.as_ref().map(|r| r.notifier.clone()).unwrap_or_default();
        let mut hangups = match &reloader {
            Some(_) => Some(sluice_net::daemon::reload_signal().context("installing the SIGHUP handler")?),
            None => None,
        };
        let heartbeat = self.heartbeat.clone();
        let service_task = spawn_service_status(self.session.clone(), self.metrics.clone(), heartbeat.clone(), notifier.clone(), self.local_addr()?);
        let watchdog_task = sluice_net::notify::spawn_watchdog(heartbeat);
        let (stop, _) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        tokio::pin!(shutdown);
        loop {
            let hangup = async {
                match hangups.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => break,
                Some(()) = hangup => {
                    if let Some(reloader) = &reloader {
                        self.reload(reloader).await;
                    }
                }
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
                        self.metrics.handshakes_refused.inc();
                        incoming.refuse();
                        continue;
                    };
                    let slot = Slot {
                        session: self.session.clone(),
                        current: self.current.clone(),
                        promoting: self.promoting.clone(),
                        announce: self.announce.clone(),
                        gate: self.gate.clone(),
                        local: self.local.clone(),
                        settings: self.settings.clone(),
                        heartbeat: self.heartbeat.clone(),
                    };
                    tasks.spawn(connection(incoming, handshake, slot, self.metrics.clone(), stop.subscribe()));
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        tracing::info!("shutting down");
        notifier.stopping();
        service_task.abort();
        if let Some(task) = watchdog_task {
            task.abort();
        }
        let _ = stop.send(true);
        self.endpoint
            .close(VarInt::from_u32(CLOSE_NORMAL), b"receiver shutting down");
        while tasks.join_next().await.is_some() {}
        let mut session = self.session.clone().lock_owned().await;
        tokio::task::spawn_blocking(move || session.stop_cleanly())
            .await
            .context("final flush panicked")?
            .context("final flush")?;
        let _ = timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        if let Some(task) = self.metrics_task {
            task.abort();
        }
        if let Some(task) = self.rollback_expiry_task {
            task.abort();
        }
        self.control_task.abort();
        self.page_task.abort();
        if let Some(task) = self.local_task {
            task.abort();
        }
        let _ = std::fs::remove_file(crate::control::socket_path(&self.root));
        Ok(())
    }
}

impl Server {
    /// Reads the configuration again and applies what may change while the
    /// agent stays connected; names what may not.
    async fn reload(&mut self, reloader: &Reloader) {
        reloader.notifier.reloading();
        let outcome = match Config::load(&reloader.path) {
            Err(e) => format!("reload refused, nothing changed: {e}"),
            Ok(new) => {
                let summary = crate::reload::changes(&self.config, &new).report("receiver", &reloader.path);
                if let Err(e) = reloader.log_level.set(new.log.level.as_deref()) {
                    tracing::error!("reload: `log.level`: {e}; keeping the running level");
                }
                let running = crate::reload::merged(&self.config, &new);
                self.settings.put(SessionSettings {
                    limits: crate::session::SyncLimits {
                        max_entries: running.safety.max_manifest_entries,
                        max_delete_fraction: running.safety.max_delete_fraction,
                        allow_mass_delete: running.safety.allow_mass_delete,
                    },
                    split_brain: running.failover.after_split_brain,
                    rollback: running.rollback.enabled,
                });
                // With no agent connected, nobody else takes the session.
                if let Ok(mut session) = self.session.try_lock() {
                    self.settings.apply_to(&mut session);
                }
                *self.hooks.lock().unwrap_or_else(|e| e.into_inner()) = running.hooks.clone();
                if running.rollback != self.config.rollback {
                    if let Some(task) = self.rollback_expiry_task.take() {
                        task.abort();
                    }
                    self.rollback_expiry_task =
                        running.rollback.enabled.then(|| spawn_rollback_expiry(running.root.clone(), running.rollback.keep_days));
                }
                self.config = running;
                summary
            }
        };
        tracing::info!("{outcome}");
        reloader.notifier.reloaded(&outcome);
    }
}

/// Tells systemd once the receiver listens with its state loaded, then once a
/// second what it does; beats `heartbeat` when no connection holds the session
/// (a connection's loop beats itself), so an applying loop that is stuck stops
/// feeding the watchdog.
fn spawn_service_status(
    session: Arc<Mutex<Session>>,
    metrics: Arc<Metrics>,
    heartbeat: sluice_net::notify::Heartbeat,
    notifier: sluice_net::notify::Notifier,
    listen: SocketAddr,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // A connection holds the session while it lasts, and its loop beats;
            // otherwise the session must be free.
            let durable = match session.try_lock() {
                Ok(session) => {
                    heartbeat.beat();
                    Some(session.durable())
                }
                Err(_) => None,
            };
            let durable = durable.map_or_else(|| "durable as acknowledged".to_owned(), |seq| format!("durable up to {seq}"));
            let role = if metrics.role_primary.get() == 1 { "primary (promoted; agents of the old generation are fenced)" } else { "standby" };
            let status = if metrics.connected.get() > 0 {
                format!("{role}; agent connected; applied up to {}, {durable}; lag {:.3} s", metrics.last_applied_seq.get(), metrics.lag_seconds.get())
            } else {
                format!("{role}; listening on {listen}, no agent connected; {durable}")
            };
            notifier.ready(&status);
        }
    })
}

/// Runs the configured hook of each change of role.
fn announcer(root: PathBuf, hooks: Arc<std::sync::Mutex<HooksConfig>>) -> Announce {
    Arc::new(move |change| {
        let hooks = hooks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (event, program, tree) = match &change {
            RoleChange::Promoted(tree) => ("promote", hooks.on_promote.as_ref(), tree),
            RoleChange::Demoted(tree) => ("demote", hooks.on_demote.as_ref(), tree),
        };
        let Some(program) = program else { return };
        let promotion = tree.promoted;
        let vars = [
            ("SLUICE_ROLE", tree.role.to_string()),
            ("SLUICE_ROOT", root.display().to_string()),
            ("SLUICE_GENERATION", tree.lineage.current.to_string()),
            ("SLUICE_DURABLE_SEQ", promotion.map_or(0, |p| p.durable_seq).to_string()),
            ("SLUICE_CONSISTENT_AS_OF", promotion.map_or(0, |p| p.consistent_unix_ns).to_string()),
        ];
        sluice_net::daemon::run_hook(event, program, &vars);
    })
}

/// What each connection shares with the server.
struct Slot {
    session: Arc<Mutex<Session>>,
    current: Arc<std::sync::Mutex<Option<quinn::Connection>>>,
    promoting: Arc<AtomicBool>,
    announce: Announce,
    gate: ApplyGate,
    local: LocalQueue,
    settings: Arc<PendingSettings>,
    heartbeat: sluice_net::notify::Heartbeat,
}

/// Deletes the rollback date directories older than `keep_days` now and then
/// every [`ROLLBACK_EXPIRY_INTERVAL`]. It runs beside the session: the applier
/// only writes into today's directory, which is never old enough to expire.
fn spawn_rollback_expiry(root: PathBuf, keep_days: u32) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(ROLLBACK_EXPIRY_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let root = root.clone();
            let expired = tokio::task::spawn_blocking(move || {
                rollback::expire(&root, keep_days, SystemTime::now())
            })
            .await;
            match expired {
                Ok(Ok(days)) => {
                    for day in days {
                        tracing::info!(day, keep_days, "expired rollback directory");
                    }
                }
                Ok(Err(e)) => tracing::warn!("expiring rollback directories: {e}"),
                Err(e) => tracing::warn!("rollback expiry task failed: {e}"),
            }
        }
    })
}

/// Handshakes one incoming connection and serves it if it is the only agent.
async fn connection(
    incoming: Incoming,
    handshake: OwnedSemaphorePermit,
    slot: Slot,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let (session, current, promoting) = (slot.session.clone(), slot.current.clone(), slot.promoting.clone());
    let addr = incoming.remote_address();
    let handshaken = incoming.await;
    drop(handshake);
    let conn = match handshaken {
        Ok(conn) => conn,
        Err(e) if is_unknown_peer(&e) => {
            tracing::warn!("refused peer {addr}: certificate not pinned");
            metrics.peers_refused.inc();
            return;
        }
        Err(e) => {
            tracing::warn!("handshake with {addr} failed: {e}");
            return;
        }
    };
    if promoting.load(Ordering::SeqCst) {
        tracing::warn!("refused agent {addr}: the standby is being promoted");
        conn.close(VarInt::from_u32(CLOSE_FENCED), b"the standby is being promoted");
        return;
    }
    // Only the pinned agent gets this far, so a new connection means the old one
    // is dead (a killed or restarted agent whose close never arrived) or about to
    // be: close it now instead of holding the standby until QUIC's idle timeout.
    if let Some(previous) = current.lock().unwrap_or_else(|e| e.into_inner()).replace(conn.clone())
        && previous.close_reason().is_none()
    {
        tracing::info!("agent {addr} supersedes the previous connection from {}", previous.remote_address());
        previous.close(VarInt::from_u32(CLOSE_SUPERSEDED), b"superseded by a new connection");
    }
    let Ok(guard) = timeout(HANDOVER_WAIT, session.lock_owned()).await else {
        tracing::warn!("refused agent {addr}: another agent is connected");
        conn.close(VarInt::from_u32(CLOSE_BUSY), b"another agent is connected");
        return;
    };
    tracing::info!("agent {addr} connected");
    metrics.connected.set(1);
    let result = tokio::select! {
        result = serve(&conn, guard, &metrics, &slot) => result,
        _ = stop.wait_for(|stopping| *stopping) => Ok(()),
    };
    metrics.connected.set(0);
    match result {
        Ok(()) => tracing::info!("agent {addr} disconnected"),
        Err(e) => tracing::warn!("agent {addr}: {e:#}"),
    }
    conn.close(VarInt::from_u32(CLOSE_NORMAL), b"");
}

/// The session guard, lent to the blocking pool for each piece of file-system work.
struct Lent(Option<OwnedMutexGuard<Session>>);

impl Lent {
    async fn with<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Session) -> R + Send + 'static,
    ) -> anyhow::Result<R> {
        let mut guard = self.0.take().context("session lost by an earlier panic")?;
        let (guard, result) = tokio::task::spawn_blocking(move || {
            let result = f(&mut guard);
            (guard, result)
        })
        .await
        .context("session task panicked")?;
        self.0 = Some(guard);
        Ok(result)
    }

    fn get(&mut self) -> &mut Session {
        self.0.as_mut().expect("session is back after every `with`")
    }
}

/// Serves the replication stream of one connection until it ends or fails.
async fn serve(
    conn: &Connection,
    guard: OwnedMutexGuard<Session>,
    metrics: &Metrics,
    slot: &Slot,
) -> anyhow::Result<()> {
    let Slot { announce, gate, local, settings, heartbeat, .. } = slot;
    let mut session = Lent(Some(guard));
    // Wakes the loop when idle, so it beats for the watchdog.
    let mut beat = tokio::time::interval(HEARTBEAT_INTERVAL);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    session.get().connected();
    let (send, recv) = conn
        .accept_bi()
        .await
        .context("waiting for the replication stream")?;
    let mut writer = FrameWriter::new(send, false);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read_frames(
        FrameReader::new(recv),
        tx,
        Arc::new(Semaphore::new(QUEUE_BYTES)),
        metrics.wire_bytes_received.clone(),
    ));
    let _reader = AbortOnDrop(reader);
    let mut last_ack = Instant::now();
    let mut last_flush = Instant::now();
    // A periodic flush runs beside the applying, so a slow syncfs (gigabytes of
    // dirty pages after a bulk copy) does not hold the stream back.
    let mut flushing: Option<tokio::task::JoinHandle<Result<Position, DurableError>>> = None;
    loop {
        heartbeat.beat();
        settings.apply_to(session.get());
        let changes = local.take();
        if !changes.is_empty() {
            let mut out = Vec::new();
            session.get().local_changes(changes, &mut out);
            for reply in &out {
                writer.write(reply).await?;
            }
        }
        let next = match rx.try_recv() {
            Ok(next) => Some(next),
            Err(mpsc::error::TryRecvError::Disconnected) => None,
            Err(mpsc::error::TryRecvError::Empty) => {
                // Nothing more is immediately available: acknowledge what was applied,
                // after making an applied fsync barrier durable.
                if session.get().barrier_pending() {
                    session.with(|s| s.make_durable()).await??;
                    last_flush = Instant::now();
                }
                while let Some(ack) = session.get().take_ack() {
                    writer.write(&ack).await?;
                }
                last_ack = Instant::now();
                let flush_due = flushing.is_none() && session.get().needs_flush();
                tokio::select! {
                    next = rx.recv() => next,
                    () = local.arrived.notified() => continue,
                    () = settings.arrived.notified() => continue,
                    _ = beat.tick() => continue,
                    () = sleep_until(last_flush + FLUSH_INTERVAL), if flush_due => {
                        flushing = start_flush(session.get())?;
                        last_flush = Instant::now();
                        continue;
                    }
                    flushed = async { flushing.as_mut().expect("guarded").await }, if flushing.is_some() => {
                        flushing = None;
                        finish_flush(&mut session, flushed)?;
                        continue;
                    }
                }
            }
        };
        let message = match next {
            None => break,
            Some((Ok(message), _room)) => message,
            Some((Err(NetError::Frame(e)), _)) => {
                tracing::error!("malformed frame from the agent: {e}");
                return refuse(
                    conn,
                    writer,
                    &mut session,
                    metrics,
                    0,
                    format!("malformed frame: {e}"),
                )
                .await;
            }
            Some((Err(e), _)) => return Err(e).context("reading from the agent"),
        };
        let mut applied = gate.lock().await;
        let (replies, result) = session
            .with(move |s| {
                let mut out = Vec::new();
                let result = s.handle(message, &mut out);
                (out, result)
            })
            .await?;
        *applied = session.get().applied_position();
        drop(applied);
        for reply in &replies {
            writer.write(reply).await?;
        }
        if let Some(change) = session.get().take_role_change() {
            announce(change);
        }
        if let Err(refusal) = result {
            if refusal.fenced {
                let _ = timeout(FINISH_TIMEOUT, writer.finish()).await;
                conn.close(VarInt::from_u32(CLOSE_FENCED), b"fenced");
                return Ok(());
            }
            return refuse(
                conn,
                writer,
                &mut session,
                metrics,
                refusal.seq,
                refusal.reason,
            )
            .await;
        }
        if session.get().is_primary() {
            // A switchover: the stream ends with `Promoted`.
            let _ = timeout(FINISH_TIMEOUT, writer.finish()).await;
            return Ok(());
        }
        if last_ack.elapsed() >= ACK_INTERVAL {
            // An fsync on the master is acknowledged only once it holds here too.
            if session.get().barrier_pending() {
                session.with(|s| s.make_durable()).await??;
                last_flush = Instant::now();
            }
            while let Some(ack) = session.get().take_ack() {
                writer.write(&ack).await?;
            }
            last_ack = Instant::now();
        }
        if flushing.as_ref().is_some_and(|f| f.is_finished()) {
            let flushed = flushing.take().expect("checked").await;
            finish_flush(&mut session, flushed)?;
        }
        if flushing.is_none() && session.get().needs_flush() && last_flush.elapsed() >= FLUSH_INTERVAL {
            flushing = start_flush(session.get())?;
            last_flush = Instant::now();
        }
    }
    session.with(|s| s.make_durable()).await??;
    while let Some(ack) = session.get().take_ack() {
        writer.write(&ack).await?;
    }
    let _ = timeout(FINISH_TIMEOUT, writer.finish()).await;
    Ok(())
}

/// Starts making everything applied so far durable, in the background.
fn start_flush(session: &mut Session) -> anyhow::Result<Option<tokio::task::JoinHandle<Result<Position, DurableError>>>> {
    let Some(flush) = session.flush_target().context("starting a flush")? else {
        return Ok(None);
    };
    Ok(Some(tokio::task::spawn_blocking(move || flush.run())))
}

/// Records the result of a background flush.
fn finish_flush(
    session: &mut Lent,
    flushed: Result<Result<Position, DurableError>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    let position = flushed.context("flush task panicked")?.context("flushing applied data")?;
    session.get().durable_reached(position);
    Ok(())
}

/// Acknowledges what was applied, sends `Refused` and closes the connection; the
/// agent reconnects and resyncs.
async fn refuse(
    conn: &Connection,
    mut writer: FrameWriter,
    session: &mut Lent,
    metrics: &Metrics,
    seq: u64,
    reason: String,
) -> anyhow::Result<()> {
    metrics.ops_refused.inc();
    tracing::error!(seq, "refusing: {reason}; closing the connection");
    while let Some(ack) = session.get().take_ack() {
        writer.write(&ack).await?;
    }
    writer
        .write(&ReceiverMessage::Refused { seq, reason })
        .await?;
    let _ = timeout(FINISH_TIMEOUT, writer.finish()).await;
    let durable = session.with(|s| s.make_durable()).await;
    conn.close(VarInt::from_u32(CLOSE_REFUSED), b"refused");
    durable?.map_err(Into::into)
}

/// A message read ahead, with the share of [`QUEUE_BYTES`] it holds until handled.
type Queued = (Result<AgentMessage, NetError>, Option<OwnedSemaphorePermit>);

/// Reads frames into `tx` until the stream ends, an error occurs or the receiver
/// side of the queue is gone. Runs as its own task because a frame read cannot be
/// cancelled halfway, which the applying loop's timers would otherwise do. Each
/// message takes room in `room` for what it costs in memory, and reading waits
/// while the queue is full.
async fn read_frames(
    mut reader: FrameReader,
    tx: mpsc::UnboundedSender<Queued>,
    room: Arc<Semaphore>,
    wire_bytes: prometheus_client::metrics::counter::Counter,
) {
    loop {
        let before = reader.bytes_read();
        let result = reader.read::<AgentMessage>().await;
        wire_bytes.inc_by(reader.bytes_read() - before);
        let item = match result {
            Ok(Some(message)) => {
                let cost = reader.last_cost().clamp(1, QUEUE_BYTES) as u32;
                let Ok(permit) = room.clone().acquire_many_owned(cost).await else { return };
                (Ok(message), Some(permit))
            }
            Ok(None) => return,
            Err(e) => (Err(e), None),
        };
        let failed = item.0.is_err();
        if tx.send(item).is_err() || failed {
            return;
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
