//! Running the real `sluice-receiver` and `sluice-agent` binaries: locating them,
//! creating identities, writing configs, and starting/stopping them as child
//! processes. [`Pair`] bundles all of it for tests; the demo uses the pieces.

use std::fs::{self, File, OpenOptions};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::metrics::{Metrics, scrape};

/// How long a stopped daemon gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Paths of the two daemon binaries.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub agent: PathBuf,
    pub receiver: PathBuf,
}

impl Binaries {
    /// The binaries in `$SLUICE_BIN_DIR`, else in `<workspace>/target/release`, else
    /// in `<workspace>/target/debug`.
    pub fn locate() -> anyhow::Result<Binaries> {
        if let Some(dir) = std::env::var_os("SLUICE_BIN_DIR") {
            return Binaries::in_dir(Path::new(&dir)).context("looking in $SLUICE_BIN_DIR");
        }
        let target = workspace_root().join("target");
        Binaries::in_dir(&target.join("release"))
            .or_else(|_| Binaries::in_dir(&target.join("debug")))
            .context("no daemon binaries found in target/release or target/debug; run `cargo xtask build --release` or set SLUICE_BIN_DIR")
    }

    /// The binaries in `dir`, which must both exist.
    pub fn in_dir(dir: &Path) -> anyhow::Result<Binaries> {
        let binaries = Binaries {
            agent: dir.join("sluice-agent"),
            receiver: dir.join("sluice-receiver"),
        };
        for binary in [&binaries.agent, &binaries.receiver] {
            if !binary.is_file() {
                bail!("{} does not exist", binary.display());
            }
        }
        Ok(binaries)
    }
}

/// The root of the cargo workspace this crate belongs to.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits one level below the workspace root")
        .to_owned()
}

/// Runs `<binary> init --identity <dir>` and returns the fingerprint it prints.
pub fn init_identity(binary: &Path, dir: &Path) -> anyhow::Result<String> {
    let output = Command::new(binary)
        .arg("init")
        .arg("--identity")
        .arg(dir)
        .output()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "`{} init --identity {}` failed ({}): {}",
            binary.display(),
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    parse_fingerprint(&stdout).with_context(|| {
        format!(
            "`{} init` printed no `fingerprint: <64 hex>` line:\n{stdout}",
            binary.display()
        )
    })
}

/// Finds `fingerprint: <64 lowercase hex chars>` in `init`'s output.
pub fn parse_fingerprint(stdout: &str) -> Option<String> {
    stdout.lines().find_map(|line| {
        let fingerprint = line.trim().strip_prefix("fingerprint:")?.trim();
        let well_formed = fingerprint.len() == 64
            && fingerprint
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        well_formed.then(|| fingerprint.to_owned())
    })
}

/// A loopback TCP address that was free a moment ago (for a metrics listener).
pub fn free_tcp_addr() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a TCP port")?;
    Ok(listener.local_addr()?)
}

/// A loopback UDP address that was free a moment ago (for the QUIC listener).
pub fn free_udp_addr() -> anyhow::Result<SocketAddr> {
    let socket = UdpSocket::bind("127.0.0.1:0").context("cannot bind a UDP port")?;
    Ok(socket.local_addr()?)
}

/// The receiver's config file, as documented in the README.
#[derive(Clone, Debug)]
pub struct ReceiverConfig {
    pub root: PathBuf,
    pub listen: SocketAddr,
    pub identity: PathBuf,
    pub peer_fingerprint: String,
    pub metrics_listen: SocketAddr,
}

impl ReceiverConfig {
    pub fn to_table(&self) -> toml::Table {
        let mut table = toml::Table::new();
        table.insert("root".into(), path_value(&self.root));
        table.insert("listen".into(), self.listen.to_string().into());
        table.insert(
            "tls".into(),
            tls_table(&self.identity, &self.peer_fingerprint).into(),
        );
        table.insert("metrics".into(), metrics_table(self.metrics_listen).into());
        table
    }
}

/// The agent's config file, as documented in the README.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub root: PathBuf,
    pub receiver: SocketAddr,
    pub state_dir: PathBuf,
    pub identity: PathBuf,
    pub peer_fingerprint: String,
    pub metrics_listen: SocketAddr,
    pub ring_buffer_bytes: u64,
}

impl AgentConfig {
    pub fn to_table(&self) -> toml::Table {
        let mut table = toml::Table::new();
        table.insert("root".into(), path_value(&self.root));
        table.insert("receiver".into(), self.receiver.to_string().into());
        table.insert("state_dir".into(), path_value(&self.state_dir));
        table.insert(
            "tls".into(),
            tls_table(&self.identity, &self.peer_fingerprint).into(),
        );
        table.insert("metrics".into(), metrics_table(self.metrics_listen).into());
        let mut capture = toml::Table::new();
        capture.insert(
            "ring_buffer_bytes".into(),
            (self.ring_buffer_bytes as i64).into(),
        );
        table.insert("capture".into(), capture.into());
        table
    }
}

pub(crate) fn path_value(path: &Path) -> toml::Value {
    path.display().to_string().into()
}

fn tls_table(identity: &Path, peer_fingerprint: &str) -> toml::Table {
    let mut tls = toml::Table::new();
    tls.insert("identity".into(), path_value(identity));
    tls.insert("peer_fingerprint".into(), peer_fingerprint.into());
    tls
}

pub(crate) fn metrics_table(listen: SocketAddr) -> toml::Table {
    let mut metrics = toml::Table::new();
    metrics.insert("listen".into(), listen.to_string().into());
    metrics
}

/// Renders `base` with `extra` (TOML text) merged over it: tables merge key by key,
/// anything else in `extra` replaces the base value. So `"[capture]\nx = 1"` adds a
/// key to the existing `[capture]` table instead of producing a duplicate table.
pub fn render_config(mut base: toml::Table, extra: &str) -> anyhow::Result<String> {
    let extra: toml::Table =
        toml::from_str(extra).with_context(|| format!("extra TOML does not parse:\n{extra}"))?;
    merge_tables(&mut base, extra);
    toml::to_string(&base).context("cannot serialize the config")
}

fn merge_tables(base: &mut toml::Table, extra: toml::Table) {
    for (key, value) in extra {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base_table)), toml::Value::Table(extra_table)) => {
                merge_tables(base_table, extra_table)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// One daemon process started as `<binary> run --config <config>`, with stdout and
/// stderr appended to `log`. Dropping it kills the process.
pub struct Daemon {
    name: &'static str,
    binary: PathBuf,
    config: PathBuf,
    log: PathBuf,
    metrics_addr: SocketAddr,
    prefix: Vec<String>,
    env: Vec<(String, String)>,
    /// Arguments after `run --config <config>`.
    run_args: Vec<String>,
    child: Option<Child>,
}

impl Daemon {
    /// Describes a daemon without starting it.
    pub fn new(
        name: &'static str,
        binary: &Path,
        config: &Path,
        log: &Path,
        metrics_addr: SocketAddr,
    ) -> Daemon {
        Daemon {
            name,
            binary: binary.to_owned(),
            config: config.to_owned(),
            log: log.to_owned(),
            metrics_addr,
            prefix: Vec::new(),
            env: Vec::new(),
            run_args: Vec::new(),
            child: None,
        }
    }

    /// Runs the daemon behind a command prefix (e.g. `ip netns exec NS`).
    pub fn with_prefix(mut self, prefix: Vec<String>) -> Daemon {
        self.prefix = prefix;
        self
    }

    /// Sets an environment variable for the next start (e.g. `NOTIFY_SOCKET`).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Arguments added after `run --config <config>` from the next start on.
    pub fn set_run_args(&mut self, args: &[&str]) {
        self.run_args = args.iter().map(|a| (*a).to_owned()).collect();
    }

    /// Starts the process (a no-op if it is running) without waiting for it.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        let mut command = match self.prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&self.binary);
                command
            }
            None => Command::new(&self.binary),
        };
        let child = command
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .args(&self.run_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Starts the process and waits until its `/metrics` answers.
    pub fn start(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.spawn()?;
        self.wait_until_serving(timeout)
    }

    /// Waits until `/metrics` answers, failing early (with the log's tail) if the
    /// process exits.
    pub fn wait_until_serving(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_for_metrics(&format!("{} to serve /metrics", self.name), timeout, |_| {
            true
        })
    }

    /// Waits until a scrape satisfies `condition`, failing early if the process
    /// exits; the error includes the tail of the log.
    pub fn wait_for_metrics(
        &mut self,
        what: &str,
        timeout: Duration,
        mut condition: impl FnMut(&Metrics) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let result = loop {
            if let Some(status) = self.try_wait()? {
                break Err(anyhow::anyhow!(
                    "{} exited with {status} while waiting for {what}",
                    self.name
                ));
            }
            // A refused connection only means "not listening yet".
            let scraped = scrape(self.metrics_addr);
            if scraped.as_ref().is_ok_and(&mut condition) {
                break Ok(());
            }
            if Instant::now() >= deadline {
                let last = match scraped {
                    Ok(_) => anyhow::anyhow!("the condition never held"),
                    Err(e) => e,
                };
                break Err(last.context(format!("timed out after {timeout:?} waiting for {what}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        result.with_context(|| {
            format!(
                "{} log ({}):\n{}",
                self.name,
                self.log.display(),
                self.log_tail(40)
            )
        })
    }

    /// Sends SIGTERM and waits for the exit; SIGKILL after 10 s. Returns the exit
    /// status, or `None` if it was not running.
    pub fn stop(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM)
            .with_context(|| format!("cannot send SIGTERM to {}", self.name))?;
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(Some(status));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill()?;
        let status = child.wait()?;
        bail!(
            "{} ignored SIGTERM for {STOP_GRACE:?} and was killed ({status})",
            self.name
        )
    }

    /// SIGKILLs the process, as a crash would.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child
                .kill()
                .with_context(|| format!("cannot kill {}", self.name))?;
            child.wait()?;
        }
        Ok(())
    }

    /// The exit status if the process has exited, `None` if it still runs.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match &mut self.child {
            Some(child) => Ok(child.try_wait()?),
            None => bail!("{} is not started", self.name),
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// The process id, if started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// "agent" or "receiver", as used in messages.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Scrapes the daemon's `/metrics`.
    pub fn metrics(&self) -> anyhow::Result<Metrics> {
        scrape(self.metrics_addr).with_context(|| format!("scraping the {}", self.name))
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process (and earlier runs of it) wrote.
    pub fn log(&self) -> String {
        fs::read(&self.log)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of [`Daemon::log`].
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// How [`Pair::start_with`] configures and starts the daemons.
#[derive(Clone, Debug)]
pub struct PairOptions {
    /// TOML merged over the generated agent config (see [`render_config`]).
    pub agent_toml: String,
    /// TOML merged over the generated receiver config.
    pub receiver_toml: String,
    /// Wait for `sluice_initial_sync_complete 1` before returning.
    pub wait_for_initial_sync: bool,
    /// Limit for each daemon to come up (and for the initial sync).
    pub startup_timeout: Duration,
    /// The binaries to run; `None` means [`Binaries::locate`].
    pub binaries: Option<Binaries>,
    /// Run the receiver in its own network namespace behind a veth link
    /// ([`Pair::link`]) instead of on loopback.
    pub standby_netns: bool,
    /// Start only the agent; the test starts the receiver with
    /// [`Pair::start_receiver`] (the agent runs without its standby until then).
    pub defer_receiver: bool,
}

impl Default for PairOptions {
    fn default() -> PairOptions {
        PairOptions {
            agent_toml: String::new(),
            receiver_toml: String::new(),
            wait_for_initial_sync: true,
            startup_timeout: Duration::from_secs(60),
            binaries: None,
            standby_netns: false,
            defer_receiver: false,
        }
    }
}

/// A receiver replicating into `standby` and an agent watching `master`, with
/// identities, configs, state and logs in a temporary directory.
///
/// Declare it after the [`LoopFs`](crate::LoopFs)es it uses so it is dropped (and
/// the daemons killed) before they are unmounted.
pub struct Pair {
    master: PathBuf,
    standby: PathBuf,
    agent: Daemon,
    receiver: Daemon,
    options: PairOptions,
    link: Option<crate::netns::StandbyLink>,
    receiver_fingerprint: String,
    // Declared last: the daemons are killed before their files go away.
    dir: TempDir,
}

impl Pair {
    /// [`Pair::start_with`] with default options.
    pub fn start(master: &Path, standby: &Path) -> anyhow::Result<Pair> {
        Pair::start_with(master, standby, PairOptions::default())
    }

    /// Creates identities, writes both configs, starts the receiver then the agent,
    /// and waits until both serve `/metrics` (and, by default, until the agent has
    /// finished its initial sync).
    pub fn start_with(master: &Path, standby: &Path, options: PairOptions) -> anyhow::Result<Pair> {
        let binaries = match &options.binaries {
            Some(binaries) => binaries.clone(),
            None => Binaries::locate()?,
        };
        let dir = tempfile::Builder::new()
            .prefix("sluice-pair-")
            .tempdir()
            .context("cannot create the pair's temporary directory")?;
        let receiver_identity = dir.path().join("receiver-identity");
        let agent_identity = dir.path().join("agent-identity");
        let receiver_fingerprint = init_identity(&binaries.receiver, &receiver_identity)?;
        let agent_fingerprint = init_identity(&binaries.agent, &agent_identity)?;

        let link = if options.standby_netns { Some(crate::netns::StandbyLink::new()?) } else { None };
        let (quic_addr, receiver_metrics) = match &link {
            // A fresh namespace has every port free.
            Some(link) => (SocketAddr::new(link.standby_addr(), 7400), SocketAddr::new(link.standby_addr(), 9400)),
            None => (free_udp_addr()?, free_tcp_addr()?),
        };
        let receiver_config = ReceiverConfig {
            root: standby.to_owned(),
            listen: quic_addr,
            identity: receiver_identity,
            peer_fingerprint: agent_fingerprint,
            metrics_listen: receiver_metrics,
        };
        let standby_fingerprint = receiver_fingerprint.clone();
        let agent_config = AgentConfig {
            root: master.to_owned(),
            receiver: quic_addr,
            state_dir: dir.path().join("agent-state"),
            identity: agent_identity,
            peer_fingerprint: receiver_fingerprint,
            metrics_listen: free_tcp_addr()?,
            ring_buffer_bytes: 8 << 20,
        };
        let receiver_config_path = dir.path().join("receiver.toml");
        let agent_config_path = dir.path().join("agent.toml");
        write_file(
            &receiver_config_path,
            &render_config(receiver_config.to_table(), &options.receiver_toml)?,
        )?;
        write_file(
            &agent_config_path,
            &render_config(agent_config.to_table(), &options.agent_toml)?,
        )?;

        let mut pair = Pair {
            master: master.to_owned(),
            standby: standby.to_owned(),
            receiver: Daemon::new(
                "receiver",
                &binaries.receiver,
                &receiver_config_path,
                &dir.path().join("receiver.log"),
                receiver_config.metrics_listen,
            )
            .with_prefix(link.as_ref().map(|l| l.exec_prefix()).unwrap_or_default()),
            agent: Daemon::new(
                "agent",
                &binaries.agent,
                &agent_config_path,
                &dir.path().join("agent.log"),
                agent_config.metrics_listen,
            ),
            options,
            link,
            receiver_fingerprint: standby_fingerprint,
            dir,
        };
        if !pair.options.defer_receiver {
            pair.start_receiver()?;
        }
        pair.start_agent()?;
        if pair.options.wait_for_initial_sync && !pair.options.defer_receiver {
            pair.wait_for_initial_sync()?;
        }
        Ok(pair)
    }

    /// Waits until the agent reports `sluice_initial_sync_complete 1`.
    pub fn wait_for_initial_sync(&mut self) -> anyhow::Result<()> {
        let timeout = self.options.startup_timeout;
        let result = self
            .agent
            .wait_for_metrics("the agent's initial sync", timeout, |m| {
                m.get("sluice_initial_sync_complete") == 1.0
            });
        result.with_context(|| format!("receiver log:\n{}", self.receiver.log_tail(40)))
    }

    /// The receiver's certificate fingerprint (what a peer of it pins).
    pub fn receiver_fingerprint(&self) -> &str {
        &self.receiver_fingerprint
    }

    pub fn master(&self) -> &Path {
        &self.master
    }

    pub fn standby(&self) -> &Path {
        &self.standby
    }

    /// The standby's network link, with [`PairOptions::standby_netns`].
    pub fn link(&self) -> Option<&crate::netns::StandbyLink> {
        self.link.as_ref()
    }

    /// The temporary directory with identities, configs, agent state and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn agent(&mut self) -> &mut Daemon {
        &mut self.agent
    }

    pub fn receiver(&mut self) -> &mut Daemon {
        &mut self.receiver
    }

    pub fn agent_metrics(&self) -> anyhow::Result<Metrics> {
        self.agent.metrics()
    }

    pub fn receiver_metrics(&self) -> anyhow::Result<Metrics> {
        self.receiver.metrics()
    }

    /// Starts the agent and waits until it serves `/metrics` (not for a sync).
    pub fn start_agent(&mut self) -> anyhow::Result<()> {
        self.agent.start(self.options.startup_timeout)
    }

    /// SIGTERM, then waits for a clean exit; fails if it had to be killed.
    pub fn stop_agent(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.agent.stop()
    }

    /// SIGKILL, as a crash would.
    pub fn kill_agent(&mut self) -> anyhow::Result<()> {
        self.agent.kill()
    }

    /// Starts the receiver and waits until it serves `/metrics`.
    pub fn start_receiver(&mut self) -> anyhow::Result<()> {
        self.receiver.start(self.options.startup_timeout)
    }

    pub fn stop_receiver(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.receiver.stop()
    }

    pub fn kill_receiver(&mut self) -> anyhow::Result<()> {
        self.receiver.kill()
    }

    pub fn agent_log(&self) -> String {
        self.agent.log()
    }

    pub fn receiver_log(&self) -> String {
        self.receiver.log()
    }
}

pub(crate) fn write_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    File::create(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))
}
