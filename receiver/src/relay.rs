//! Forwarding what this standby applies to the standbys after it in a chain
//! (`[[forward]]`): the relay is `sluice-agent` run on this tree with a
//! configuration written here, kept running by a small supervisor process that
//! the receiver starts before it gives up its privileges (the relay loads eBPF
//! programs) and that stops with it. The relay captures the receiver's writes
//! as they are made, so it forwards what was applied, in order; what it sends
//! is stamped with the master's capture time (see [`sluice_net::origin`]).

use crate::config::Config;
use anyhow::Context;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Where the relay keeps its configuration and state, inside the standby's
/// `.sluice` (never replicated, never taken for a local change).
pub fn relay_dir(root: &Path) -> PathBuf {
    root.join(".sluice").join("relay")
}

/// The file through which the receiver tells the relay the master's capture
/// time of what it applies.
pub fn origin_path(root: &Path) -> PathBuf {
    relay_dir(root).join("origin")
}

/// The agent's exit status when a standby refused it because it was promoted.
const FENCED_EXIT_STATUS: i32 = 3;
/// A relay that ran this long before stopping is started again at once.
const RAN_LONG_ENOUGH: Duration = Duration::from_secs(60);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

/// Starts the supervisor (`sluice-receiver relay --config …`), which stops
/// when the receiver does.
pub fn spawn_supervisor(config_path: &Path) -> anyhow::Result<Child> {
    let program = std::env::current_exe().context("locating the receiver's own program")?;
    let mut command = Command::new(program);
    command.arg("relay").arg("--config").arg(config_path);
    die_with_parent(&mut command);
    command.spawn().context("starting the relay's supervisor")
}

/// Stops the supervisor (and with it the relay) and waits for it.
pub fn stop_supervisor(mut supervisor: Child) {
    let pid = nix::unistd::Pid::from_raw(supervisor.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = supervisor.wait();
}

/// `command` gets SIGTERM when the thread that starts it ends.
fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches only the new process.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

static STOPPING: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOPPING.store(true, Ordering::SeqCst);
}

/// The supervisor: writes the relay's configuration, runs the relay, and runs
/// it again when it stops (unless it was fenced), until SIGTERM.
pub fn supervise(config_path: &Path) -> anyhow::Result<()> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(SigHandler::Handler(on_stop), SaFlags::empty(), SigSet::empty());
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(signal, &action) }.context("installing the relay's signal handlers")?;
    }
    let config = Config::load(config_path).context("invalid configuration")?;
    let agent_config = write_agent_config(&config)?;
    let program = agent_program(&config)?;
    let mut delay = Duration::from_secs(1);
    while !STOPPING.load(Ordering::SeqCst) {
        let mut command = Command::new(&program);
        command.arg("run").arg("--config").arg(&agent_config);
        die_with_parent(&mut command);
        let started = Instant::now();
        let mut relay = command.spawn().with_context(|| format!("starting the relay ({})", program.display()))?;
        let status = loop {
            if STOPPING.load(Ordering::SeqCst) {
                let pid = nix::unistd::Pid::from_raw(relay.id() as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
                let _ = relay.wait();
                return Ok(());
            }
            if let Some(status) = relay.try_wait().context("waiting for the relay")? {
                break status;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        if status.code() == Some(FENCED_EXIT_STATUS) {
            tracing::error!("the relay was fenced: a standby it forwards to was promoted; it is not started again");
            while !STOPPING.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
            }
            return Ok(());
        }
        delay = if started.elapsed() >= RAN_LONG_ENOUGH { Duration::from_secs(1) } else { (delay * 2).min(MAX_RESTART_DELAY) };
        let how = status.code().map_or_else(|| format!("signal {}", status.signal().unwrap_or(0)), |code| format!("status {code}"));
        tracing::warn!("the relay stopped ({how}); starting it again in {} s", delay.as_secs());
        let until = Instant::now() + delay;
        while Instant::now() < until && !STOPPING.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// The relay's agent: `[relay] agent`, or `sluice-agent` beside this program,
/// or on the `PATH`.
fn agent_program(config: &Config) -> anyhow::Result<PathBuf> {
    if let Some(agent) = &config.relay.agent {
        return Ok(agent.clone());
    }
    let beside = std::env::current_exe().ok().and_then(|exe| exe.parent().map(|dir| dir.join("sluice-agent")));
    if let Some(beside) = beside.filter(|path| path.is_file()) {
        return Ok(beside);
    }
    Ok(PathBuf::from("sluice-agent"))
}

/// Writes the relay's `agent.toml` (mode 0600) and returns its path.
fn write_agent_config(config: &Config) -> anyhow::Result<PathBuf> {
    let dir = relay_dir(&config.root);
    std::fs::create_dir_all(dir.join("state")).with_context(|| format!("creating {}", dir.display()))?;
    let text = agent_config(config)?;
    let path = dir.join("agent.toml");
    let tmp = dir.join("agent.toml.tmp");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The relay's configuration: this standby's tree and identity, a standby
/// per `[[forward]]`.
fn agent_config(config: &Config) -> anyhow::Result<String> {
    let dir = relay_dir(&config.root);
    let mut table = toml::Table::new();
    table.insert("root".into(), path_value(&config.root)?);
    table.insert("state_dir".into(), path_value(&dir.join("state"))?);
    let mut tls = toml::Table::new();
    tls.insert("identity".into(), path_value(&config.tls.identity)?);
    table.insert("tls".into(), tls.into());
    let standbys: Vec<toml::Value> = config
        .forward
        .iter()
        .map(|forward| {
            let mut standby = toml::Table::new();
            standby.insert("name".into(), forward.name.clone().into());
            standby.insert("address".into(), forward.address.to_string().into());
            standby.insert("peer_fingerprint".into(), forward.peer_fingerprint.clone().into());
            standby.into()
        })
        .collect();
    table.insert("standby".into(), standbys.into());
    let mut relay = toml::Table::new();
    relay.insert("origin".into(), path_value(&origin_path(&config.root))?);
    table.insert("relay".into(), relay.into());
    if let Some(listen) = config.relay.metrics_listen {
        let mut metrics = toml::Table::new();
        metrics.insert("listen".into(), listen.to_string().into());
        table.insert("metrics".into(), metrics.into());
    }
    if let Some(level) = &config.log.level {
        let mut log = toml::Table::new();
        log.insert("level".into(), level.clone().into());
        table.insert("log".into(), log.into());
    }
    // Devices are forwarded when they are replicated here.
    let mut replication = toml::Table::new();
    replication.insert("devices".into(), config.replication.devices.into());
    table.insert("replication".into(), replication.into());
    Ok(toml::to_string(&table)?)
}

fn path_value(path: &Path) -> anyhow::Result<toml::Value> {
    path.to_str().map(toml::Value::from).with_context(|| format!("{} is not UTF-8", path.display()))
}
