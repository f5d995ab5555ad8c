//! One agent feeding several standbys: [`Fanout`] starts an agent whose config
//! lists every standby as a `[[standby]]` entry, and one `sluice-receiver` per
//! standby, each with its own identity and, optionally, in its own network
//! namespace behind a [`StandbyLink`] that the test can cut or rate-limit.
//!
//! It is built like [`Pair`](crate::Pair) from the same pieces
//! ([`init_identity`], [`render_config`], [`Daemon`]), so a standby of a fanout is
//! configured exactly like the standby of a pair.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::daemons::{
    Binaries, Daemon, ReceiverConfig, free_tcp_addr, free_udp_addr, init_identity, metrics_table,
    path_value, render_config, write_file,
};
use crate::metrics::Metrics;
use crate::netns::StandbyLink;

/// One standby of a [`Fanout`].
#[derive(Clone, Debug)]
pub struct StandbySpec {
    /// Its `name` in the agent's config, and the `standby` label of its metrics.
    pub name: String,
    /// Run its receiver in its own network namespace ([`StandbyLink::numbered`]
    /// with `k` = index + 1, so 10.233.1.0/30 for the first) instead of on loopback.
    pub netns: bool,
    /// Start its receiver with the others; when false, the test starts it with
    /// [`Fanout::start_receiver`] and the agent runs without it until then.
    pub start: bool,
    /// TOML merged over this receiver's config, after [`FanoutOptions::receiver_toml`].
    pub receiver_toml: String,
}

impl StandbySpec {
    /// A standby on loopback, started with the agent.
    pub fn new(name: &str) -> StandbySpec {
        StandbySpec { name: name.to_owned(), netns: false, start: true, receiver_toml: String::new() }
    }

    /// Behind its own network namespace and veth link.
    pub fn in_netns(mut self) -> StandbySpec {
        self.netns = true;
        self
    }

    /// Not started with the agent (see [`StandbySpec::start`]).
    pub fn deferred(mut self) -> StandbySpec {
        self.start = false;
        self
    }

    pub fn with_receiver_toml(mut self, toml: &str) -> StandbySpec {
        self.receiver_toml = toml.to_owned();
        self
    }
}

/// What [`Fanout::start_with`] waits for after starting the daemons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncWait {
    /// Only until every daemon serves `/metrics`.
    None,
    /// `sluice_standby_initial_sync_complete{standby="<name>"} 1` for every
    /// standby started with the agent.
    EachStandby,
    /// The unlabeled `sluice_initial_sync_complete 1` (all standbys in sync).
    Aggregate,
}

/// How [`Fanout::start_with`] configures and starts the daemons.
#[derive(Clone, Debug)]
pub struct FanoutOptions {
    pub standbys: Vec<StandbySpec>,
    /// TOML merged over the generated agent config (see [`render_config`]).
    pub agent_toml: String,
    /// TOML merged over every receiver's generated config.
    pub receiver_toml: String,
    pub wait_for_initial_sync: SyncWait,
    /// Limit for each daemon to come up, and for the initial sync.
    pub startup_timeout: Duration,
    /// The binaries to run; `None` means [`Binaries::locate`].
    pub binaries: Option<Binaries>,
    /// Write the agent's config in the single-standby form (`receiver = "addr"`
    /// and `[tls] peer_fingerprint`) instead of `[[standby]]` entries; needs
    /// exactly one standby. Its metrics then carry whatever name the agent gives
    /// a standby configured that way, so use the unlabeled metrics.
    pub single_standby_form: bool,
}

impl FanoutOptions {
    /// Standbys with these names, each in its own namespace when `netns`, all
    /// started with the agent; waits for each one's initial sync.
    pub fn named(names: &[&str], netns: bool) -> FanoutOptions {
        let standbys = names
            .iter()
            .map(|name| StandbySpec { netns, ..StandbySpec::new(name) })
            .collect();
        FanoutOptions { standbys, ..FanoutOptions::default() }
    }
}

impl Default for FanoutOptions {
    /// No standbys (add some), waiting for each one's initial sync.
    fn default() -> FanoutOptions {
        FanoutOptions {
            standbys: Vec::new(),
            agent_toml: String::new(),
            receiver_toml: String::new(),
            wait_for_initial_sync: SyncWait::EachStandby,
            startup_timeout: Duration::from_secs(60),
            binaries: None,
            single_standby_form: false,
        }
    }
}

/// A standby's receiver and where it listens. Fields drop in order: the receiver
/// is killed before its namespace goes away.
struct Standby {
    spec: StandbySpec,
    root: PathBuf,
    address: SocketAddr,
    receiver: Daemon,
    link: Option<StandbyLink>,
}

/// An agent watching `master` and one receiver per standby tree, with
/// identities, configs, state and logs in a temporary directory.
///
/// Declare it after the [`LoopFs`](crate::LoopFs)es it uses so it is dropped (and
/// the daemons killed) before they are unmounted.
pub struct Fanout {
    master: PathBuf,
    agent: Daemon,
    standbys: Vec<Standby>,
    binaries: Binaries,
    options: FanoutOptions,
    // Declared last: the daemons are killed before their files go away.
    dir: TempDir,
}

impl Fanout {
    /// Creates an identity for the agent and for each receiver, writes the
    /// configs, starts the receivers marked [`StandbySpec::start`] then the
    /// agent, and waits as [`FanoutOptions::wait_for_initial_sync`] says.
    /// `standbys[i]` is the tree of `options.standbys[i]`.
    pub fn start_with(master: &Path, standbys: &[&Path], options: FanoutOptions) -> anyhow::Result<Fanout> {
        if options.standbys.is_empty() || options.standbys.len() != standbys.len() {
            bail!("{} standby trees for {} standbys in the options (at least one)", standbys.len(), options.standbys.len());
        }
        if options.single_standby_form && options.standbys.len() != 1 {
            bail!("the single-standby config form holds exactly one standby");
        }
        let binaries = match &options.binaries {
            Some(binaries) => binaries.clone(),
            None => Binaries::locate()?,
        };
        let dir = tempfile::Builder::new()
            .prefix("sluice-fanout-")
            .tempdir()
            .context("cannot create the fanout's temporary directory")?;
        let agent_identity = dir.path().join("agent-identity");
        let agent_fingerprint = init_identity(&binaries.agent, &agent_identity)?;

        let mut entries = Vec::new();
        let mut built = Vec::new();
        for (i, (spec, root)) in options.standbys.iter().zip(standbys).enumerate() {
            let identity = dir.path().join(format!("receiver-{i}-identity"));
            let fingerprint = init_identity(&binaries.receiver, &identity)?;
            let link = if spec.netns {
                let k = u8::try_from(i + 1).context("at most 254 standbys in namespaces")?;
                Some(StandbyLink::numbered(k)?)
            } else {
                None
            };
            let (address, metrics) = match &link {
                // A fresh namespace has every port free.
                Some(link) => (SocketAddr::new(link.standby_addr(), 7400), SocketAddr::new(link.standby_addr(), 9400)),
                None => (free_udp_addr()?, free_tcp_addr()?),
            };
            let config = ReceiverConfig {
                root: root.to_path_buf(),
                listen: address,
                identity,
                peer_fingerprint: agent_fingerprint.clone(),
                metrics_listen: metrics,
            };
            let common: toml::Table = toml::from_str(&render_config(config.to_table(), &options.receiver_toml)?)?;
            let config_path = dir.path().join(format!("receiver-{i}.toml"));
            write_file(&config_path, &render_config(common, &spec.receiver_toml)?)?;
            // Daemon names are for messages and live as long as the test.
            let name: &'static str = Box::leak(format!("receiver {}", spec.name).into_boxed_str());
            let receiver = Daemon::new(name, &binaries.receiver, &config_path, &dir.path().join(format!("receiver-{i}.log")), metrics)
                .with_prefix(link.as_ref().map(StandbyLink::exec_prefix).unwrap_or_default());

            let mut entry = toml::Table::new();
            entry.insert("name".into(), spec.name.clone().into());
            entry.insert("address".into(), address.to_string().into());
            entry.insert("peer_fingerprint".into(), fingerprint.into());
            entries.push(entry);
            built.push(Standby { spec: spec.clone(), root: root.to_path_buf(), address, receiver, link });
        }

        let agent_metrics = free_tcp_addr()?;
        let mut agent = toml::Table::new();
        agent.insert("root".into(), path_value(master));
        agent.insert("state_dir".into(), path_value(&dir.path().join("agent-state")));
        let mut tls = toml::Table::new();
        tls.insert("identity".into(), path_value(&agent_identity));
        if options.single_standby_form {
            let entry = entries.pop().expect("one standby");
            agent.insert("receiver".into(), entry["address"].clone());
            tls.insert("peer_fingerprint".into(), entry["peer_fingerprint"].clone());
        } else {
            let entries: Vec<toml::Value> = entries.into_iter().map(toml::Value::Table).collect();
            agent.insert("standby".into(), entries.into());
        }
        agent.insert("tls".into(), tls.into());
        agent.insert("metrics".into(), metrics_table(agent_metrics).into());
        let mut capture = toml::Table::new();
        capture.insert("ring_buffer_bytes".into(), toml::Value::Integer(8 << 20));
        agent.insert("capture".into(), capture.into());
        let agent_config = dir.path().join("agent.toml");
        write_file(&agent_config, &render_config(agent, &options.agent_toml)?)?;

        let mut fanout = Fanout {
            master: master.to_owned(),
            agent: Daemon::new("agent", &binaries.agent, &agent_config, &dir.path().join("agent.log"), agent_metrics),
            standbys: built,
            binaries,
            options,
            dir,
        };
        for i in 0..fanout.len() {
            if fanout.standbys[i].spec.start {
                fanout.start_receiver(i)?;
            }
        }
        fanout.start_agent()?;
        match fanout.options.wait_for_initial_sync {
            SyncWait::None => {}
            SyncWait::EachStandby => {
                for i in 0..fanout.len() {
                    if fanout.standbys[i].spec.start {
                        fanout.wait_for_standby_sync(i)?;
                    }
                }
            }
            SyncWait::Aggregate => fanout.wait_for_initial_sync()?,
        }
        Ok(fanout)
    }

    /// How many standbys the agent is configured with.
    pub fn len(&self) -> usize {
        self.standbys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.standbys.is_empty()
    }

    /// Standby `i`'s name (its `standby` label).
    pub fn name(&self, i: usize) -> &str {
        &self.standbys[i].spec.name
    }

    /// The index of the standby called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.standbys.iter().position(|s| s.spec.name == name)
    }

    /// Standby `i`'s QUIC address, as written in the agent's config.
    pub fn address(&self, i: usize) -> SocketAddr {
        self.standbys[i].address
    }

    pub fn master(&self) -> &Path {
        &self.master
    }

    /// Standby `i`'s tree.
    pub fn standby(&self, i: usize) -> &Path {
        &self.standbys[i].root
    }

    /// Standby `i`'s network link, if it is in a namespace.
    pub fn link(&self, i: usize) -> Option<&StandbyLink> {
        self.standbys[i].link.as_ref()
    }

    /// The temporary directory with identities, configs (`agent.toml`,
    /// `receiver-<i>.toml`), agent state and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    pub fn agent(&mut self) -> &mut Daemon {
        &mut self.agent
    }

    pub fn receiver(&mut self, i: usize) -> &mut Daemon {
        &mut self.standbys[i].receiver
    }

    pub fn agent_metrics(&self) -> anyhow::Result<Metrics> {
        self.agent.metrics()
    }

    pub fn receiver_metrics(&self, i: usize) -> anyhow::Result<Metrics> {
        self.standbys[i].receiver.metrics()
    }

    /// `metric{standby="<name of i>"}` in `metrics` (other labels may be present),
    /// or 0.0 when absent, like [`Metrics::get`].
    pub fn standby_value(&self, metrics: &Metrics, metric: &str, i: usize) -> f64 {
        standby_value(metrics, metric, self.name(i)).unwrap_or(0.0)
    }

    /// Scrapes the agent and returns [`Fanout::standby_value`].
    pub fn standby_metric(&self, metric: &str, i: usize) -> anyhow::Result<f64> {
        Ok(self.standby_value(&self.agent_metrics()?, metric, i))
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

    /// Starts receiver `i` and waits until it serves `/metrics`.
    pub fn start_receiver(&mut self, i: usize) -> anyhow::Result<()> {
        let timeout = self.options.startup_timeout;
        self.standbys[i].receiver.start(timeout)
    }

    pub fn stop_receiver(&mut self, i: usize) -> anyhow::Result<Option<ExitStatus>> {
        self.standbys[i].receiver.stop()
    }

    pub fn kill_receiver(&mut self, i: usize) -> anyhow::Result<()> {
        self.standbys[i].receiver.kill()
    }

    /// Waits until a scrape of the agent satisfies `condition`; on failure the
    /// error holds the tails of the agent's and receiver `i`'s logs.
    pub fn wait_for_standby(
        &mut self,
        i: usize,
        what: &str,
        timeout: Duration,
        condition: impl FnMut(&Metrics) -> bool,
    ) -> anyhow::Result<()> {
        let result = self.agent.wait_for_metrics(what, timeout, condition);
        result.with_context(|| format!("{} log:\n{}", self.standbys[i].receiver.name(), self.standbys[i].receiver.log_tail(40)))
    }

    /// Waits until the agent reports
    /// `sluice_standby_initial_sync_complete{standby="<name>"} 1` for standby `i`.
    pub fn wait_for_standby_sync(&mut self, i: usize) -> anyhow::Result<()> {
        let name = self.name(i).to_owned();
        let timeout = self.options.startup_timeout;
        self.wait_for_standby(i, &format!("the initial sync of standby {name}"), timeout, |m| {
            standby_value(m, "sluice_standby_initial_sync_complete", &name) == Some(1.0)
        })
    }

    /// Waits until the agent reports `sluice_initial_sync_complete 1`: every
    /// standby is in sync.
    pub fn wait_for_initial_sync(&mut self) -> anyhow::Result<()> {
        let timeout = self.options.startup_timeout;
        let result = self.agent.wait_for_metrics("the initial sync of every standby", timeout, |m| {
            m.get("sluice_initial_sync_complete") == 1.0
        });
        result.with_context(|| self.receiver_logs())
    }

    /// The agent's resident memory (`VmRSS` in `/proc/<pid>/status`), in bytes.
    pub fn agent_rss_bytes(&self) -> anyhow::Result<u64> {
        let pid = self.agent.pid().context("the agent is not started")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS line in /proc/<pid>/status")?;
        Ok(kib * 1024)
    }

    /// `sluice-agent status --json --config <agent.toml>`, parsed. The exit
    /// status is not checked: an unhealthy agent answers with status 1.
    pub fn agent_status_json(&self) -> anyhow::Result<serde_json::Value> {
        let output = Command::new(&self.binaries.agent)
            .args(["status", "--json", "--config"])
            .arg(self.agent.config_path())
            .output()
            .context("cannot run `sluice-agent status`")?;
        serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "`sluice-agent status --json` printed no JSON ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        })
    }

    pub fn agent_log(&self) -> String {
        self.agent.log()
    }

    pub fn receiver_log(&self, i: usize) -> String {
        self.standbys[i].receiver.log()
    }

    /// The tail of every receiver's log, for failure messages.
    pub fn receiver_logs(&self) -> String {
        self.standbys
            .iter()
            .map(|s| format!("--- {} log ---\n{}", s.receiver.name(), s.receiver.log_tail(40)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The value of the series of `metric` whose labels include `standby="<standby>"`.
pub fn standby_value(metrics: &Metrics, metric: &str, standby: &str) -> Option<f64> {
    let wanted = format!("standby=\"{standby}\"");
    metrics.iter().find_map(|(series, value)| {
        let labels = series.strip_prefix(metric)?.strip_prefix('{')?.strip_suffix('}')?;
        labels.split(',').any(|label| label.trim() == wanted).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standby_values_are_found_by_label() {
        let m = Metrics::parse(
            "sluice_standby_lag_seconds{standby=\"lan\"} 0.5\n\
             sluice_standby_lag_seconds{standby=\"lan2\"} 7\n\
             sluice_standby_lag_seconds_max{standby=\"lan\"} 9\n\
             sluice_standby_wire_bytes_sent_total{kind=\"x\",standby=\"offsite\"} 12\n",
        );
        assert_eq!(standby_value(&m, "sluice_standby_lag_seconds", "lan"), Some(0.5));
        assert_eq!(standby_value(&m, "sluice_standby_lag_seconds", "lan2"), Some(7.0));
        assert_eq!(standby_value(&m, "sluice_standby_wire_bytes_sent_total", "offsite"), Some(12.0));
        assert_eq!(standby_value(&m, "sluice_standby_lag_seconds", "offsite"), None);
    }
}
