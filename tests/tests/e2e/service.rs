//! Running as a systemd service: the units pass `systemd-analyze verify`, both
//! daemons speak the notify protocol to a socket the test holds (ready only once
//! they serve, status lines, the watchdog, reload and stop), a reload applies
//! what it may without a comparison of the tree and names what it refuses, and
//! logs come as JSON lines on demand.

use crate::common::{Frozen, converge, tail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sluice_tests::{Binaries, FsKind, LoopFs, Pair, PairOptions, random_bytes, run, wait_until};
use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd")
}

#[test]
fn the_units_pass_systemd_analyze_verify_with_hardening_and_notify() {
    let binaries = Binaries::locate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (unit, binary) in [("sluice-agent.service", &binaries.agent), ("sluice-receiver.service", &binaries.receiver)] {
        let text = fs::read_to_string(units_dir().join(unit)).unwrap();
        for directive in ["Type=notify", "WatchdogSec=", "ExecReload=", "NoNewPrivileges=yes", "CapabilityBoundingSet=", "ProtectSystem="] {
            assert!(text.lines().any(|l| l.starts_with(directive)), "{unit} lacks {directive}");
        }
        // `verify` checks that ExecStart's program exists: point it at the build.
        let name = binary.file_name().unwrap().to_str().unwrap();
        let local = text.replace(&format!("/usr/bin/{name}"), binary.to_str().unwrap());
        fs::write(dir.path().join(unit), local).unwrap();
        // Man pages come with the package.
        let out = std::process::Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(dir.path().join(unit)).output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && said.trim().is_empty(), "{unit}: {said}");
    }
    // The relay's unit runs the receiver's program with the agent's capabilities.
    let unit = "sluice-relay.service";
    let text = fs::read_to_string(units_dir().join(unit)).unwrap();
    for directive in ["ExecStart=/usr/bin/sluice-receiver relay", "NoNewPrivileges=yes", "CapabilityBoundingSet=CAP_BPF", "PartOf=sluice-receiver.service"] {
        assert!(text.lines().any(|l| l.starts_with(directive)), "{unit} lacks {directive}");
    }
    let local = text.replace("/usr/bin/sluice-receiver", binaries.receiver.to_str().unwrap());
    fs::write(dir.path().join(unit), local).unwrap();
    let out = std::process::Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(dir.path().join(unit)).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "{unit}: {said}");
}

/// The datagram socket systemd would hold for a service.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        NotifySocket { _dir: dir, path, socket, seen: Vec::new() }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// Reads messages until one satisfies `found`; returns it.
    fn until(&mut self, what: &str, timeout: Duration, found: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let mut buf = [0u8; 4096];
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(message.clone());
                if found(&message) {
                    return message;
                }
            }
        }
        panic!("no {what} within {timeout:?}; received: {:?}", self.seen);
    }
}

fn status_of(message: &str) -> &str {
    message.lines().find_map(|l| l.strip_prefix("STATUS=")).unwrap_or("")
}

fn signal(pid: Option<u32>, signal: Signal) {
    kill(Pid::from_raw(pid.unwrap() as i32), signal).unwrap();
}

#[test]
fn the_daemons_tell_systemd_when_they_serve_and_what_they_do() {
    let master = LoopFs::new(FsKind::Ext4, 128).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 128).unwrap();
    fs::write(master.path().join("file"), random_bytes(300_000, 1)).unwrap();
    let options = PairOptions { defer_receiver: true, ..PairOptions::default() };
    let mut pair = Pair::start_with(master.path(), standby.path(), options).unwrap();

    // The receiver: ready once it listens with its state loaded; the watchdog is fed.
    let mut receiver_socket = NotifySocket::new();
    pair.receiver().set_env("NOTIFY_SOCKET", receiver_socket.path());
    pair.receiver().set_env("WATCHDOG_USEC", "2000000");
    pair.receiver().spawn().unwrap();
    let ready = receiver_socket.until("READY=1 from the receiver", Duration::from_secs(20), |m| m.contains("READY=1"));
    assert!(status_of(&ready).contains("listening on") && status_of(&ready).contains("durable up to"), "{ready}");
    assert!(pair.receiver_metrics().is_ok(), "ready means serving");
    for _ in 0..2 {
        receiver_socket.until("WATCHDOG=1 from the receiver", Duration::from_secs(3), |m| m == "WATCHDOG=1\n");
    }

    // The agent: ready only once the first comparison is done.
    pair.stop_agent().unwrap();
    let mut agent_socket = NotifySocket::new();
    pair.agent().set_env("NOTIFY_SOCKET", agent_socket.path());
    pair.agent().set_env("WATCHDOG_USEC", "2000000");
    pair.agent().spawn().unwrap();
    let ready = agent_socket.until("READY=1 from the agent", Duration::from_secs(30), |m| m.contains("READY=1"));
    assert!(status_of(&ready).contains("streaming to"), "{ready}");
    assert_eq!(pair.agent_metrics().unwrap().get("sluice_initial_sync_complete"), 1.0, "ready before the first comparison was done");
    agent_socket.until("WATCHDOG=1 from the agent", Duration::from_secs(3), |m| m == "WATCHDOG=1\n");
    let connected = receiver_socket.until("the receiver's status with the agent", Duration::from_secs(5), |m| status_of(m).contains("agent connected"));
    assert!(status_of(&connected).contains("standby"), "{connected}");

    // A reload and a stop are announced.
    signal(pair.receiver().pid(), Signal::SIGHUP);
    receiver_socket.until("RELOADING=1", Duration::from_secs(5), |m| m.contains("RELOADING=1"));
    let reloaded = receiver_socket.until("READY=1 after the reload", Duration::from_secs(5), |m| m.contains("READY=1"));
    assert!(status_of(&reloaded).contains("reloaded"), "{reloaded}");
    pair.stop_receiver().unwrap();
    receiver_socket.until("STOPPING=1", Duration::from_secs(5), |m| m.contains("STOPPING=1"));
}

#[test]
fn an_agent_without_its_standby_is_ready_once_it_journals_and_says_so() {
    let master = LoopFs::new(FsKind::Ext4, 128).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 128).unwrap();
    let options = PairOptions { defer_receiver: true, ..PairOptions::default() };
    let mut pair = Pair::start_with(master.path(), standby.path(), options).unwrap();
    pair.stop_agent().unwrap();
    let mut socket = NotifySocket::new();
    pair.agent().set_env("NOTIFY_SOCKET", socket.path());
    pair.agent().spawn().unwrap();
    let started = Instant::now();
    let ready = socket.until("READY=1 without a standby", Duration::from_secs(30), |m| m.contains("READY=1"));
    assert!(started.elapsed() >= Duration::from_secs(9), "ready before it gave the standby a chance: {ready}");
    assert!(status_of(&ready).contains("unreachable") && status_of(&ready).contains("journaled"), "{ready}");
}

/// Replaces `key` in the `[table]` of a TOML file (or at the top with `table` empty).
fn set_key(path: &Path, table: &str, key: &str, value: toml::Value) {
    let mut doc: toml::Table = fs::read_to_string(path).unwrap().parse().unwrap();
    let target = if table.is_empty() {
        &mut doc
    } else {
        doc.entry(table).or_insert_with(|| toml::Value::Table(toml::Table::new())).as_table_mut().unwrap()
    };
    target.insert(key.to_owned(), value);
    fs::write(path, toml::to_string(&doc).unwrap()).unwrap();
}

#[test]
fn a_reload_applies_what_it_may_names_what_it_refuses_and_compares_nothing() {
    let master = LoopFs::new(FsKind::Ext4, 128).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 128).unwrap();
    let (m, s) = (master.path().to_owned(), standby.path().to_owned());
    for i in 0..5 {
        fs::write(m.join(format!("f{i}")), random_bytes(100_000, i)).unwrap();
    }
    let options = PairOptions { defer_receiver: true, ..PairOptions::default() };
    let mut pair = Pair::start_with(&m, &s, options).unwrap();
    pair.receiver().set_run_args(&["--log-format", "json"]);
    pair.start_receiver().unwrap();
    pair.wait_for_initial_sync().unwrap();
    converge(&pair, Duration::from_secs(30));
    let compares = pair.agent_metrics().unwrap().get("sluice_tree_compares_total");

    // The agent: the verifier's rate changes; its state directory cannot.
    let agent_config = pair.agent().config_path().to_owned();
    let original: toml::Table = fs::read_to_string(&agent_config).unwrap().parse().unwrap();
    set_key(&agent_config, "verify", "bytes_per_second", toml::Value::Integer(1));
    set_key(&agent_config, "", "state_dir", toml::Value::String("/elsewhere".into()));
    signal(pair.agent().pid(), Signal::SIGHUP);
    wait_until("the agent to reload", Duration::from_secs(10), || Ok(pair.agent_log().contains("reloaded"))).unwrap();
    let log = pair.agent_log();
    assert!(log.contains("`state_dir` cannot change while the agent runs"), "{}", tail(&log));
    assert!(log.contains("changed [\"verify.bytes_per_second\"], refused [\"state_dir\"]"), "{}", tail(&log));
    assert!(log.contains("verifier rate changed"), "{}", tail(&log));

    // The receiver: rollback is switched on; its listening address cannot move.
    let receiver_config = pair.receiver().config_path().to_owned();
    set_key(&receiver_config, "rollback", "enabled", toml::Value::Boolean(true));
    set_key(&receiver_config, "", "listen", toml::Value::String("127.0.0.1:1".into()));
    signal(pair.receiver().pid(), Signal::SIGHUP);
    wait_until("the receiver to reload", Duration::from_secs(10), || Ok(pair.receiver_log().contains("reloaded")))
        .unwrap_or_else(|e| panic!("{e}: {}", tail(&pair.receiver_log())));
    let log = pair.receiver_log();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let parsed: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(parsed.get("level").is_some() && parsed.get("fields").is_some(), "{line}");
    }
    assert!(log.contains("`listen` cannot change while the receiver runs"), "{}", tail(&log));
    assert!(log.contains("changed [\\\"rollback\\\"], refused [\\\"listen\\\"]"), "{}", tail(&log));

    // The new rollback setting holds, the connection was never dropped and the
    // tree was not compared again.
    fs::remove_file(m.join("f3")).unwrap();
    let today = run("date -u +%F").unwrap().trim().to_owned();
    let kept = s.join(".sluice/rollback").join(&today).join("f3");
    wait_until("the deleted file to be kept in the rollback directory", Duration::from_secs(10), || Ok(kept.exists())).unwrap();
    let metrics = converge(&pair, Duration::from_secs(30));
    assert_eq!(metrics.get("sluice_tree_compares_total"), compares, "a reload compares nothing");
    assert_eq!(pair.agent_log().matches("connected receiver=").count(), 1, "the connection was never dropped: {}", tail(&pair.agent_log()));

    // `status` on both sides: healthy, with the last comparison and the refused
    // keys' errors of the last hour; unhealthy once the standby is gone.
    let binaries = Binaries::locate().unwrap();
    set_key(&agent_config, "", "state_dir", original["state_dir"].clone());
    let status = |binary: &Path, config: &Path, json: bool| {
        let mut args = vec!["status", "--config", config.to_str().unwrap()];
        if json {
            args.push("--json");
        }
        std::process::Command::new(binary).args(&args).output().unwrap()
    };
    let agent = status(&binaries.agent, &agent_config, true);
    assert!(agent.status.success(), "{}", String::from_utf8_lossy(&agent.stdout));
    let agent: serde_json::Value = serde_json::from_slice(&agent.stdout).unwrap();
    assert_eq!((agent["connected"].as_bool(), agent["synced"].as_bool()), (Some(true), Some(true)), "{agent}");
    assert!(agent["last_compare_unix"].as_f64().unwrap() > 0.0 && agent["last_compare_files_differing"] == 5, "{agent}");
    assert!(agent["errors_last_hour"].as_u64().unwrap() >= 1 && agent["last_error"].as_str().unwrap().contains("state_dir"), "{agent}");
    let text = String::from_utf8_lossy(&status(&binaries.agent, &agent_config, false).stdout).into_owned();
    for line in ["lag:", "backlog:", "compared:", "verifier:", "last hour:", "health:      ok"] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    let receiver = status(&binaries.receiver, &receiver_config, true);
    assert!(receiver.status.success(), "{}", String::from_utf8_lossy(&receiver.stdout));
    let receiver: serde_json::Value = serde_json::from_slice(&receiver.stdout).unwrap();
    assert!(receiver["errors_last_hour"].as_u64().unwrap() >= 1 && receiver["last_error"].as_str().unwrap().contains("listen"), "{receiver}");
    pair.stop_receiver().unwrap();
    wait_until("the agent's status to turn unhealthy", Duration::from_secs(20), || Ok(!status(&binaries.agent, &agent_config, true).status.success())).unwrap();
}


#[test]
fn a_stuck_apply_loop_stops_feeding_the_watchdog() {
    let master = LoopFs::new(FsKind::Ext4, 128).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 128).unwrap();
    let (m, s) = (master.path().to_owned(), standby.path().to_owned());
    let options = PairOptions { defer_receiver: true, ..PairOptions::default() };
    let mut pair = Pair::start_with(&m, &s, options).unwrap();
    let mut socket = NotifySocket::new();
    pair.receiver().set_env("NOTIFY_SOCKET", socket.path());
    pair.receiver().set_env("WATCHDOG_USEC", "4000000");
    pair.start_receiver().unwrap();
    pair.wait_for_initial_sync().unwrap();
    socket.until("WATCHDOG=1 while applying", Duration::from_secs(5), |m| m == "WATCHDOG=1\n");

    // Writes to the standby block: the applying loop is stuck in one.
    let frozen = Frozen(&s);
    run(&format!("fsfreeze -f {}", s.display())).unwrap();
    fs::write(m.join("while-frozen"), random_bytes(100_000, 9)).unwrap();
    wait_until("the receiver to notice its loop is stuck", Duration::from_secs(20), || {
        Ok(pair.receiver_log().contains("the work loop has stopped going round"))
    })
    .unwrap_or_else(|e| panic!("{e}: {}", tail(&pair.receiver_log())));
    // What was sent before the loop got stuck is still queued.
    socket.socket.set_nonblocking(true).unwrap();
    while socket.socket.recv(&mut [0u8; 512]).is_ok() {}
    socket.socket.set_nonblocking(false).unwrap();
    socket.seen.clear();
    let quiet_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < quiet_until {
        let mut buf = [0u8; 512];
        if let Ok(n) = socket.socket.recv(&mut buf) {
            socket.seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    assert!(!socket.seen.iter().any(|m| m.contains("WATCHDOG=1")), "the watchdog is still fed: {:?}\n{}", socket.seen, tail(&pair.receiver_log()));

    // Thawed, the loop goes round again and the write lands.
    drop(frozen);
    socket.until("WATCHDOG=1 once thawed", Duration::from_secs(10), |m| m == "WATCHDOG=1\n");
    converge(&pair, Duration::from_secs(30));
}
