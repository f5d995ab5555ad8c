//! The four replicators under test, each started in its own network namespace and
//! configured the way its documentation recommends for keeping a standby copy:
//! sluice (agent + receiver over QUIC), rsync (one pass to an rsync daemon after the
//! workload), lsyncd (`default.rsync` to the same daemon) and Syncthing (a
//! send-only / receive-only folder pair with its watcher on). sluice and lsyncd
//! also feed several standbys at once ([`Replicator::start_fanout`], S8).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use sluice_tests::daemons::{AgentConfig, ReceiverConfig, init_identity, render_config};
use sluice_tests::{Binaries, scrape};

use super::procs::{Netns, Proc, ReadIo, tree_cpu_s, tree_read_io};
use super::workload;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Sluice,
    Rsync,
    Lsyncd,
    Syncthing,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Sluice, Kind::Rsync, Kind::Lsyncd, Kind::Syncthing];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Sluice => "sluice",
            Kind::Rsync => "rsync",
            Kind::Lsyncd => "lsyncd",
            Kind::Syncthing => "syncthing",
        }
    }
}

/// rsync as its docs recommend for an in-place mirror: archive with ACLs, xattrs and
/// hard links, delta transfer written in place, deletions mirrored.
const RSYNC_ARGS: &[&str] = &["-aAXH", "--inplace", "--no-whole-file", "--delete"];
const RSYNC_PORT: u16 = 8730;
const QUIC: &str = "127.0.0.1:7400";
const RECEIVER_METRICS: &str = "127.0.0.1:9400";
const AGENT_METRICS: &str = "127.0.0.1:9401";

/// The receiver of standby `i` (from 0) listens on QUIC port 7400 + i.
fn quic_addr(i: usize) -> anyhow::Result<SocketAddr> {
    let mut addr: SocketAddr = QUIC.parse()?;
    addr.set_port(addr.port() + i as u16);
    Ok(addr)
}

/// Standby `i`'s receiver serves metrics on 9400 for the first, 9410 + i after
/// (9401 is the agent's).
fn receiver_metrics_addr(i: usize) -> anyhow::Result<SocketAddr> {
    let mut addr: SocketAddr = RECEIVER_METRICS.parse()?;
    if i > 0 {
        addr.set_port(9410 + i as u16);
    }
    Ok(addr)
}

/// Files of standby `i` in the work directory: `receiver.toml` for the first,
/// `receiver-2.toml` for the second, and so on.
fn nth(stem: &str, i: usize, ext: &str) -> String {
    match i {
        0 => format!("{stem}{ext}"),
        _ => format!("{stem}-{}{ext}", i + 1),
    }
}

/// The name of standby `i` in a fan-out agent's `[[standby]]` list and metrics.
pub fn standby_name(i: usize) -> String {
    format!("s{}", i + 1)
}

/// Resource counters of a running replicator at one moment.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub master_cpu_s: f64,
    pub standby_cpu_s: f64,
    pub lo_bytes: u64,
    /// `lo_bytes` again after the metrics scrape, whose own HTTP traffic crosses
    /// the same loopback and must not be charged to the replicator.
    pub lo_bytes_after_scrape: u64,
    /// `sluice_wire_bytes_sent_total` of the agent (sluice only).
    pub agent_wire_bytes: Option<f64>,
    /// What the master side's processes have read (`/proc/<pid>/io`).
    pub master_read: ReadIo,
    /// The agent's whole scrape (sluice only).
    pub agent_metrics: Option<sluice_tests::Metrics>,
}

/// One running replicator. Dropping it kills its processes, then deletes its
/// namespace and files.
pub struct Replicator {
    pub kind: Kind,
    master: PathBuf,
    /// One for S1–S7; several for S8.
    standbys: Vec<PathBuf>,
    /// sluice: the agent names its standbys in `[[standby]]` entries (S8), rather
    /// than the one-standby form `receiver = …` of S1–S7.
    named_standbys: bool,
    /// sluice: TOML merged over the agent's config.
    agent_extra: String,
    master_procs: Vec<Proc>,
    standby_procs: Vec<Proc>,
    /// CPU of finished one-shot rsync passes (they are gone from /proc).
    one_shot_cpu_s: f64,
    /// `sluice-agent`, kept to restart it (sluice only).
    agent_binary: Option<PathBuf>,
    dir: tempfile::TempDir,
    netns: Netns,
}

impl Replicator {
    /// Starts the replicator's processes between `master` and `standby` and waits
    /// until they listen; it does not wait for an initial sync.
    pub fn start(
        kind: Kind,
        master: &Path,
        standby: &Path,
        bin_dir: &Path,
    ) -> anyhow::Result<Replicator> {
        Replicator::launch(kind, master, vec![standby.to_owned()], None, bin_dir)
    }

    /// Like [`Replicator::start`], feeding every one of `standbys` from `master`:
    /// sluice as one agent with a `[[standby]]` entry per standby and a receiver
    /// for each; lsyncd with a `sync{}` per standby, each to its own module of the
    /// rsync daemon. Other replicators are not set up for it. `agent_extra` is
    /// TOML merged over the agent's config (sluice only).
    pub fn start_fanout(
        kind: Kind,
        master: &Path,
        standbys: &[PathBuf],
        agent_extra: &str,
        bin_dir: &Path,
    ) -> anyhow::Result<Replicator> {
        anyhow::ensure!(
            matches!(kind, Kind::Sluice | Kind::Lsyncd),
            "{} is not set up to feed several standbys",
            kind.name()
        );
        anyhow::ensure!(!standbys.is_empty(), "no standby given");
        Replicator::launch(kind, master, standbys.to_vec(), Some(agent_extra), bin_dir)
    }

    fn launch(
        kind: Kind,
        master: &Path,
        standbys: Vec<PathBuf>,
        // `Some` for S8's agent with `[[standby]]` entries: TOML merged over its config.
        fanout_agent_extra: Option<&str>,
        bin_dir: &Path,
    ) -> anyhow::Result<Replicator> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sluice-bench-{}-", kind.name()))
            .tempdir()
            .context("cannot create the replicator's work directory")?;
        let mut r = Replicator {
            kind,
            master: master.to_owned(),
            standbys,
            named_standbys: fanout_agent_extra.is_some(),
            agent_extra: fanout_agent_extra.unwrap_or_default().to_owned(),
            master_procs: Vec::new(),
            standby_procs: Vec::new(),
            one_shot_cpu_s: 0.0,
            agent_binary: None,
            netns: Netns::new(kind.name())?,
            dir,
        };
        match kind {
            Kind::Sluice => r.start_sluice(bin_dir)?,
            Kind::Rsync => r.start_rsync_daemon()?,
            Kind::Lsyncd => {
                r.start_rsync_daemon()?;
                r.start_lsyncd()?;
            }
            Kind::Syncthing => r.start_syncthing()?,
        }
        Ok(r)
    }

    fn start_sluice(&mut self, bin_dir: &Path) -> anyhow::Result<()> {
        let binaries = Binaries::in_dir(bin_dir)?;
        let work = &self.dir.path().to_owned();
        let agent_identity = work.join("agent-identity");
        let agent_fp = init_identity(&binaries.agent, &agent_identity)?;
        // A receiver per standby, each with its own identity, root, address and
        // metrics, pinning the agent.
        let mut receiver_fps = Vec::new();
        for (i, standby) in self.standbys.clone().iter().enumerate() {
            let identity = work.join(nth("receiver", i, "-identity"));
            receiver_fps.push(init_identity(&binaries.receiver, &identity)?);
            let receiver = ReceiverConfig {
                root: standby.clone(),
                listen: quic_addr(i)?,
                identity,
                peer_fingerprint: agent_fp.clone(),
                metrics_listen: receiver_metrics_addr(i)?,
            };
            let config = work.join(nth("receiver", i, ".toml"));
            std::fs::write(&config, render_config(receiver.to_table(), "")?)?;
            let mut command = self.netns.command(&binaries.receiver);
            command.arg("run").arg("--config").arg(&config);
            self.standby_procs.push(Proc::spawn(
                &nth("sluice-receiver", i, ""),
                command,
                &work.join(nth("receiver", i, ".log")),
            )?);
            self.wait_metrics(receiver_metrics_addr(i)?)?;
        }
        let agent = AgentConfig {
            root: self.master.clone(),
            receiver: quic_addr(0)?,
            state_dir: work.join("agent-state"),
            identity: agent_identity,
            peer_fingerprint: receiver_fps[0].clone(),
            metrics_listen: AGENT_METRICS.parse()?,
            ring_buffer_bytes: 8 << 20,
        };
        let mut table = agent.to_table();
        let mut extra = String::new();
        if self.named_standbys {
            // `[[standby]]` entries instead of `receiver` and `tls.peer_fingerprint`.
            table.remove("receiver");
            if let Some(tls) = table.get_mut("tls").and_then(|t| t.as_table_mut()) {
                tls.remove("peer_fingerprint");
            }
            for (i, fp) in receiver_fps.iter().enumerate() {
                writeln!(
                    extra,
                    "[[standby]]\nname = \"{}\"\naddress = \"{}\"\npeer_fingerprint = \"{fp}\"",
                    standby_name(i),
                    quic_addr(i)?
                )?;
            }
            extra.push_str(&self.agent_extra);
        }
        std::fs::write(work.join("agent.toml"), render_config(table, &extra)?)?;
        self.agent_binary = Some(binaries.agent);
        self.spawn_agent()?;
        self.wait_metrics(AGENT_METRICS.parse()?)
    }

    /// Starts `sluice-agent` with the config `start_sluice` wrote; it is the first
    /// of the master's processes.
    fn spawn_agent(&mut self) -> anyhow::Result<()> {
        let work = self.dir.path().to_owned();
        let binary = self
            .agent_binary
            .clone()
            .context("not a sluice replicator")?;
        let mut command = self.netns.command(&binary);
        command
            .arg("run")
            .arg("--config")
            .arg(work.join("agent.toml"));
        self.master_procs.insert(
            0,
            Proc::spawn("sluice-agent", command, &work.join("agent.log"))?,
        );
        Ok(())
    }

    /// Stops the agent (SIGTERM, so it saves its durable state) and starts it
    /// again with the same state directory; returns once its metrics answer.
    pub fn restart_agent(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.kind == Kind::Sluice, "only sluice has an agent");
        let mut old = self.master_procs.remove(0);
        old.stop();
        self.spawn_agent()?;
        self.wait_metrics(AGENT_METRICS.parse()?)
    }

    /// The agent's pid (sluice only; `nsenter` execs it, so it is the child's).
    pub fn agent_pid(&self) -> Option<u32> {
        (self.kind == Kind::Sluice)
            .then(|| self.master_procs.first().and_then(Proc::pid))
            .flatten()
    }

    /// The agent's log file (sluice only).
    pub fn agent_log(&self) -> Option<PathBuf> {
        (self.kind == Kind::Sluice).then(|| self.dir.path().join("agent.log"))
    }

    /// One scrape of the agent's `/metrics` (sluice only).
    pub fn agent_metrics(&self) -> anyhow::Result<sluice_tests::Metrics> {
        anyhow::ensure!(self.kind == Kind::Sluice, "only sluice has agent metrics");
        let addr: SocketAddr = AGENT_METRICS.parse()?;
        self.netns.enter(move || scrape(addr))
    }

    /// Waits until the agent reports `sluice_initial_sync_complete 1`: the standby
    /// matched the tree and nothing is in flight. Continuous peers return at once.
    pub fn wait_synced(&mut self, timeout: Duration) -> anyhow::Result<bool> {
        if self.kind != Kind::Sluice {
            return Ok(true);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .agent_metrics()
                .is_ok_and(|m| m.get("sluice_initial_sync_complete") == 1.0)
            {
                return Ok(true);
            }
            self.check_alive()?;
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_metrics(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.netns.enter(move || scrape(addr)).is_ok() {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() >= deadline {
                bail!("no metrics at {addr} after 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_rsync_daemon(&mut self) -> anyhow::Result<()> {
        let work = &self.dir.path().to_owned();
        let conf = work.join("rsyncd.conf");
        // Root on both ends so owners, ACLs and xattrs can be applied as with ssh.
        // A module per standby: `standby`, then `standby-2`, ...
        let mut text = format!(
            "port = {RSYNC_PORT}\naddress = 127.0.0.1\nuse chroot = no\n\
             pid file = {}/rsyncd.pid\n",
            work.display()
        );
        for (i, standby) in self.standbys.iter().enumerate() {
            write!(
                text,
                "[{}]\npath = {}\nread only = no\nuid = root\ngid = root\n",
                nth("standby", i, ""),
                standby.display()
            )?;
        }
        std::fs::write(&conf, text)?;
        let mut command = self.netns.command("rsync");
        command
            .arg("--daemon")
            .arg("--no-detach")
            .arg(format!("--config={}", conf.display()));
        self.standby_procs.push(Proc::spawn(
            "rsync --daemon",
            command,
            &work.join("rsyncd.log"),
        )?);
        let addr: SocketAddr = format!("127.0.0.1:{RSYNC_PORT}").parse()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while self
            .netns
            .enter(move || Ok(std::net::TcpStream::connect(addr)?))
            .is_err()
        {
            self.check_alive()?;
            if Instant::now() >= deadline {
                bail!("rsync daemon not listening after 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The rsync daemon's module of standby `i`.
    fn rsync_target(i: usize) -> String {
        format!("rsync://127.0.0.1:{RSYNC_PORT}/{}/", nth("standby", i, ""))
    }

    fn start_lsyncd(&mut self) -> anyhow::Result<()> {
        let work = &self.dir.path().to_owned();
        let conf = work.join("lsyncd.lua");
        // default.rsync with no delay: each batch of inotify events becomes one rsync.
        // Several standbys get a `sync{}` each with the same source, as lsyncd's
        // manual does for several targets.
        let mut text = format!(
            "settings {{ nodaemon = true, insist = true, statusFile = \"{}/lsyncd.status\" }}\n",
            work.display()
        );
        for i in 0..self.standbys.len() {
            write!(
                text,
                "sync {{ default.rsync, source = \"{src}/\", target = \"{dst}\", delay = 0,\n  \
                 exclude = {{ \"/lost+found\" }},\n  \
                 rsync = {{ archive = true, acls = true, xattrs = true, hard_links = true,\n    \
                 inplace = true, whole_file = false }} }}\n",
                src = self.master.display(),
                dst = Self::rsync_target(i)
            )?;
        }
        std::fs::write(&conf, text)?;
        let mut command = self.netns.command("lsyncd");
        command.arg(&conf);
        self.master_procs
            .push(Proc::spawn("lsyncd", command, &work.join("lsyncd.log"))?);
        Ok(())
    }

    fn start_syncthing(&mut self) -> anyhow::Result<()> {
        let work = self.dir.path().to_owned();
        let sides = [
            (
                "master",
                self.master.clone(),
                "sendonly",
                22001u16,
                18384u16,
            ),
            (
                "standby",
                self.standbys[0].clone(),
                "receiveonly",
                22002,
                18385,
            ),
        ];
        let mut ids = Vec::new();
        for (name, root, ..) in &sides {
            let home = work.join(format!("st-{name}"));
            let out = self
                .netns
                .command("syncthing")
                .arg("generate")
                .arg(format!("--home={}", home.display()))
                .env("STNODEFAULTFOLDER", "1")
                .output()
                .context("cannot run syncthing generate")?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            let id = text
                .lines()
                .find_map(|l| l.split("Device ID:").nth(1))
                .map(|s| s.trim().to_owned())
                .with_context(|| format!("syncthing generate printed no device ID:\n{text}"))?;
            ids.push(id);
            // The folder marker and an ignore for ext4's lost+found; same bytes and
            // mtime on both sides so the tree comparison sees no difference.
            std::fs::create_dir_all(root.join(".stfolder"))?;
            std::fs::write(root.join(".stignore"), "/lost+found\n")?;
            sluice_tests::run(&format!("touch -d @0 '{}/.stignore'", root.display()))?;
        }
        for (i, (name, root, folder_type, listen, gui)) in sides.iter().enumerate() {
            let home = work.join(format!("st-{name}"));
            let generated = std::fs::read_to_string(home.join("config.xml"))?;
            let version = generated
                .split("<configuration version=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or("37")
                .to_owned();
            let mut xml = format!("<configuration version=\"{version}\">\n");
            writeln!(
                xml,
                "  <folder id=\"bench\" label=\"bench\" path=\"{}\" type=\"{folder_type}\" \
                 rescanIntervalS=\"3600\" fsWatcherEnabled=\"true\" fsWatcherDelayS=\"1\" \
                 ignorePerms=\"false\" autoNormalize=\"true\">",
                root.display()
            )?;
            for id in &ids {
                writeln!(xml, "    <device id=\"{id}\" introducedBy=\"\"></device>")?;
            }
            xml.push_str("    <minDiskFree unit=\"%\">1</minDiskFree>\n  </folder>\n");
            for (j, id) in ids.iter().enumerate() {
                writeln!(
                    xml,
                    "  <device id=\"{id}\" name=\"{}\" compression=\"metadata\" introducer=\"false\">\n    \
                     <address>tcp://127.0.0.1:{}</address>\n  </device>",
                    sides[j].0, sides[j].3
                )?;
            }
            write!(
                xml,
                "  <gui enabled=\"true\" tls=\"false\">\n    <address>127.0.0.1:{gui}</address>\n    \
                 <apikey>sluice-bench-key-{i}</apikey>\n  </gui>\n  <options>\n    \
                 <listenAddress>tcp://127.0.0.1:{listen}</listenAddress>\n    \
                 <globalAnnounceEnabled>false</globalAnnounceEnabled>\n    \
                 <localAnnounceEnabled>false</localAnnounceEnabled>\n    \
                 <relaysEnabled>false</relaysEnabled>\n    <natEnabled>false</natEnabled>\n    \
                 <urAccepted>-1</urAccepted>\n    <autoUpgradeIntervalH>0</autoUpgradeIntervalH>\n    \
                 <crashReportingEnabled>false</crashReportingEnabled>\n    \
                 <startBrowser>false</startBrowser>\n  </options>\n</configuration>\n"
            )?;
            std::fs::write(home.join("config.xml"), xml)?;
            let mut command = self.netns.command("syncthing");
            command
                .arg("serve")
                .arg(format!("--home={}", home.display()))
                .args(["--no-browser", "--no-restart", "--no-upgrade"])
                .env("STNODEFAULTFOLDER", "1");
            let proc = Proc::spawn(&format!("syncthing ({name})"), command, &home.join("log"))?;
            if i == 0 {
                self.master_procs.push(proc);
            } else {
                self.standby_procs.push(proc);
            }
        }
        Ok(())
    }

    /// Fails (with the log tail) if any of the replicator's daemons has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in self
            .master_procs
            .iter_mut()
            .chain(self.standby_procs.iter_mut())
        {
            p.check_alive()?;
        }
        Ok(())
    }

    /// Waits until a fresh file on the master shows up on the standby. rsync has
    /// nothing running on the master side, so it is live at once.
    pub fn wait_live(&mut self, timeout: Duration) -> anyhow::Result<bool> {
        if self.kind == Kind::Rsync {
            return Ok(true);
        }
        let (master, standbys) = (self.master.clone(), self.standbys.clone());
        workload::wait_live(&master, &standbys, timeout, || self.check_alive())
    }

    /// For rsync, one full pass (what a cron job or a loop would run), bounded by
    /// `timeout`; returns its duration, or `None` if it did not finish in time.
    /// Continuous replicators have nothing to do here.
    pub fn periodic_pass(&mut self, timeout: Duration) -> anyhow::Result<Option<Duration>> {
        if self.kind != Kind::Rsync {
            return Ok(Some(Duration::ZERO));
        }
        let mut command = self.netns.command("rsync");
        command
            .args(RSYNC_ARGS)
            .args(["--stats", "--exclude=/lost+found"])
            .arg(format!("{}/", self.master.display()))
            .arg(Self::rsync_target(0));
        let log = self.dir.path().join("rsync.log");
        let start = Instant::now();
        let mut pass = Proc::spawn("rsync", command, &log)?;
        match pass.wait_with_cpu(timeout)? {
            Some((true, cpu)) => {
                self.one_shot_cpu_s += cpu;
                Ok(Some(start.elapsed()))
            }
            Some((false, _)) => bail!("rsync failed:\n{}", super::procs::tail(&log, 20)),
            None => Ok(None),
        }
    }

    pub fn counters(&self) -> anyhow::Result<Counters> {
        let pids = |procs: &[Proc]| procs.iter().filter_map(Proc::pid).collect::<Vec<_>>();
        let lo_bytes = self.netns.lo_tx_bytes()?;
        let agent_metrics = if self.kind == Kind::Sluice {
            let addr: SocketAddr = AGENT_METRICS.parse()?;
            Some(self.netns.enter(move || scrape(addr))?)
        } else {
            None
        };
        Ok(Counters {
            master_cpu_s: tree_cpu_s(&pids(&self.master_procs)) + self.one_shot_cpu_s,
            standby_cpu_s: tree_cpu_s(&pids(&self.standby_procs)),
            lo_bytes,
            lo_bytes_after_scrape: self.netns.lo_tx_bytes()?,
            agent_wire_bytes: agent_metrics
                .as_ref()
                .map(|m| m.get("sluice_wire_bytes_sent_total")),
            master_read: tree_read_io(&pids(&self.master_procs)),
            agent_metrics,
        })
    }

    /// Log tails of every process, for a failure report.
    pub fn logs(&self) -> String {
        self.master_procs
            .iter()
            .chain(&self.standby_procs)
            .map(|p| {
                format!(
                    "--- {}\n{}",
                    p.log.display(),
                    super::procs::tail(&p.log, 15)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops every process (standby side last, so the master side can finish
    /// sending) and removes the namespace.
    pub fn stop(mut self) {
        for p in self
            .master_procs
            .iter_mut()
            .chain(self.standby_procs.iter_mut())
        {
            p.stop();
        }
    }
}

/// Tool versions for the report.
pub fn versions(bin_dir: &Path) -> Vec<(String, String)> {
    let first_line = |program: &Path, arg: &str| {
        Command::new(program)
            .arg(arg)
            .output()
            .map(|o| {
                let text = String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr);
                text.lines().next().unwrap_or("").trim().to_owned()
            })
            .unwrap_or_else(|e| format!("unavailable ({e})"))
    };
    let git = Command::new("git")
        .arg("-C")
        .arg(crate::cargo::workspace_root())
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    vec![
        (
            "sluice".into(),
            format!(
                "{} ({})",
                first_line(&bin_dir.join("sluice-agent"), "--version"),
                // Prebuilt daemons may come from any commit; only a workspace build is
                // known to match the workspace's.
                if std::env::var_os("SLUICE_BIN_DIR").is_some() {
                    format!(
                        "prebuilt release binaries from $SLUICE_BIN_DIR={}; workspace at git {git}",
                        bin_dir.display()
                    )
                } else {
                    format!("release build of the workspace at git {git}")
                }
            ),
        ),
        ("rsync".into(), first_line(Path::new("rsync"), "--version")),
        (
            "lsyncd".into(),
            first_line(Path::new("lsyncd"), "--version"),
        ),
        (
            "syncthing".into(),
            first_line(Path::new("syncthing"), "--version"),
        ),
    ]
}
