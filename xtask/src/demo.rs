//! `cargo xtask demo`: replicates a scripted workload from one loop-mounted ext4
//! filesystem to another with the real daemons, showing the agent's lag and traffic
//! after each step, and checks that the standby ends up identical.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sluice_tests::daemons::{
    AgentConfig, Binaries, Daemon, ReceiverConfig, free_tcp_addr, free_udp_addr, init_identity,
    render_config,
};
use sluice_tests::{FsKind, LoopFs, Metrics, random_bytes, wait_until_identical};

const FS_SIZE_MIB: u64 = 1024;
const BIG_FILE_BYTES: u64 = 256 << 20;
const PWRITES: u64 = 200;
const PWRITE_BYTES: usize = 4096;
const SMALL_FILES: usize = 1000;
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the demo with the daemon binaries found in `bin_dir`.
pub fn run(bin_dir: &Path) -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the demo must run as root: it mounts filesystems and the agent loads BPF programs");
    }
    let binaries = Binaries::in_dir(bin_dir)?;
    // Identities, configs, agent state and logs.
    let work_dir = tempfile::Builder::new()
        .prefix("sluice-demo-")
        .tempdir()
        .context("cannot create the demo's temporary directory")?;
    let work = work_dir.path();

    let master =
        LoopFs::new(FsKind::Ext4, FS_SIZE_MIB).context("cannot create the master filesystem")?;
    let standby =
        LoopFs::new(FsKind::Ext4, FS_SIZE_MIB).context("cannot create the standby filesystem")?;
    println!("master  (watched):    {}", master.path().display());
    println!("standby (replicated): {}", standby.path().display());

    let receiver_identity = work.join("receiver-identity");
    let agent_identity = work.join("agent-identity");
    let receiver_fingerprint = init_identity(&binaries.receiver, &receiver_identity)?;
    let agent_fingerprint = init_identity(&binaries.agent, &agent_identity)?;
    println!("receiver fingerprint: {receiver_fingerprint}");
    println!("agent fingerprint:    {agent_fingerprint}");

    let quic_addr = free_udp_addr()?;
    let receiver_config = ReceiverConfig {
        root: standby.path().to_owned(),
        listen: quic_addr,
        identity: receiver_identity,
        peer_fingerprint: agent_fingerprint,
        metrics_listen: free_tcp_addr()?,
    };
    let agent_config = AgentConfig {
        root: master.path().to_owned(),
        receiver: quic_addr,
        state_dir: work.join("agent-state"),
        identity: agent_identity,
        peer_fingerprint: receiver_fingerprint,
        metrics_listen: free_tcp_addr()?,
        ring_buffer_bytes: 8 << 20,
    };
    let receiver_toml = work.join("receiver.toml");
    let agent_toml = work.join("agent.toml");
    write_config(
        &receiver_toml,
        &render_config(receiver_config.to_table(), "")?,
    )?;
    write_config(&agent_toml, &render_config(agent_config.to_table(), "")?)?;

    // Declared after the filesystems so that on any early return the daemons are
    // killed before the filesystems are unmounted.
    let mut receiver = Daemon::new(
        "receiver",
        &binaries.receiver,
        &receiver_toml,
        &work.join("receiver.log"),
        receiver_config.metrics_listen,
    );
    let mut agent = Daemon::new(
        "agent",
        &binaries.agent,
        &agent_toml,
        &work.join("agent.log"),
        agent_config.metrics_listen,
    );
    println!(
        "\nstarting the receiver (status page on http://{0}/, metrics on http://{0}/metrics)",
        receiver.metrics_addr()
    );
    receiver.start(STARTUP_TIMEOUT)?;
    println!(
        "starting the agent (status page on http://{0}/, metrics on http://{0}/metrics)",
        agent.metrics_addr()
    );
    agent.start(STARTUP_TIMEOUT)?;
    agent.wait_for_metrics("the agent's initial sync", STARTUP_TIMEOUT, |m| {
        m.get("sluice_initial_sync_complete") == 1.0
    })?;
    println!("initial sync complete\n");

    let started = Instant::now();
    let root = master.path();
    step(&mut agent, "create a 256 MiB file of random data", || {
        create_big_file(root)
    })?;
    step(&mut agent, "200 random 4 KiB pwrites into it", || {
        scattered_pwrites(root)
    })?;
    step(
        &mut agent,
        "create a directory of 1,000 small files and rename it",
        || many_small_files(root),
    )?;
    step(&mut agent, "delete every tenth small file", || {
        delete_some(root)
    })?;

    println!("\nverifying that the standby matches the master (content and metadata)");
    if let Err(e) = wait_until_identical(master.path(), standby.path(), CONVERGE_TIMEOUT) {
        bail!(
            "the standby did not converge: {e:?}\n\nagent log:\n{}\n\nreceiver log:\n{}",
            agent.log_tail(40),
            receiver.log_tail(40)
        );
    }
    let converged_after = started.elapsed();
    summarize(&agent, &receiver, converged_after);

    stop(&mut agent);
    stop(&mut receiver);
    master.unmount()?;
    standby.unmount()?;
    println!("\ndemo: OK");
    Ok(())
}

/// Runs one scripted change on the master, then shows where the agent stands.
fn step(
    agent: &mut Daemon,
    what: &str,
    change: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    println!("== {what}");
    let before = agent.metrics()?;
    let started = Instant::now();
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (sampling, addr) = (sampling.clone(), agent.metrics_addr());
        std::thread::spawn(move || {
            let mut peak: f64 = 0.0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(metrics) = sluice_tests::scrape(addr) {
                    peak = peak.max(metrics.get("sluice_lag_seconds"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    };
    let outcome = change().with_context(|| format!("step `{what}` failed"));
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut peak_lag: f64 = sampler.join().unwrap_or(0.0);
    outcome?;
    let changed_in = started.elapsed();
    // Replicated means: the agent has sent something for this step and the
    // receiver has acknowledged every operation as applied.
    let after = loop {
        if let Some(status) = agent.try_wait()? {
            bail!("the agent exited ({status}); its log:\n{}", agent.log_tail(40));
        }
        let metrics = agent.metrics()?;
        peak_lag = peak_lag.max(metrics.get("sluice_lag_seconds"));
        let sent = metrics.get("sluice_ops_sent_total");
        if sent > before.get("sluice_ops_sent_total")
            && metrics.get("sluice_lag_bytes") == 0.0
            && metrics.get("sluice_ops_in_flight") == 0.0
        {
            break metrics;
        }
        if started.elapsed() > CONVERGE_TIMEOUT {
            bail!("step `{what}` was not replicated within {CONVERGE_TIMEOUT:?}; agent log:\n{}", agent.log_tail(40));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // Wire counters are sampled every 100 ms.
    std::thread::sleep(Duration::from_millis(150));
    let after = agent.metrics().unwrap_or(after);
    let delta = |name: &str| after.get(name) - before.get(name);
    println!(
        "   changed in {changed_in:.2?}; applied on the standby {:.2?} after the change began",
        started.elapsed() - Duration::from_millis(150)
    );
    println!(
        "   peak lag {:.1} ms; {:.0} bytes on the wire for {:.0} bytes of file data ({} operations)",
        peak_lag * 1000.0,
        delta("sluice_wire_bytes_sent_total"),
        delta("sluice_payload_bytes_sent_total"),
        delta("sluice_ops_sent_total"),
    );
    Ok(())
}

fn print_agent_metrics(metrics: &Metrics) {
    for name in [
        "sluice_lag_seconds",
        "sluice_lag_bytes",
        "sluice_wire_bytes_sent_total",
        "sluice_payload_bytes_sent_total",
    ] {
        println!("   {name:<33} {}", metrics.get(name));
    }
}

fn create_big_file(root: &Path) -> anyhow::Result<()> {
    const CHUNK: u64 = 4 << 20;
    let mut file = File::create(root.join("big.bin"))?;
    for chunk in 0..BIG_FILE_BYTES / CHUNK {
        file.write_all(&random_bytes(CHUNK as usize, chunk + 1))?;
    }
    Ok(())
}

fn scattered_pwrites(root: &Path) -> anyhow::Result<()> {
    let file = File::options().write(true).open(root.join("big.bin"))?;
    let offsets = random_bytes(PWRITES as usize * 8, 0x5eed);
    for (i, raw) in offsets.chunks_exact(8).enumerate() {
        let offset = u64::from_le_bytes(raw.try_into()?) % (BIG_FILE_BYTES - PWRITE_BYTES as u64);
        file.write_at(&random_bytes(PWRITE_BYTES, 1000 + i as u64), offset)?;
    }
    Ok(())
}

fn many_small_files(root: &Path) -> anyhow::Result<()> {
    let dir = root.join("incoming");
    fs::create_dir(&dir)?;
    for i in 0..SMALL_FILES {
        fs::write(
            dir.join(format!("file-{i:04}.txt")),
            format!("small file number {i}\n"),
        )?;
    }
    fs::rename(&dir, root.join("archive"))?;
    Ok(())
}

fn delete_some(root: &Path) -> anyhow::Result<()> {
    for i in (0..SMALL_FILES).step_by(10) {
        fs::remove_file(root.join("archive").join(format!("file-{i:04}.txt")))?;
    }
    Ok(())
}

fn summarize(agent: &Daemon, receiver: &Daemon, converged_after: Duration) {
    println!("\nstandby identical to the master (checked {converged_after:.2?} after the first change)");
    let agent_metrics = agent.metrics().unwrap_or_default();
    let receiver_metrics = receiver.metrics().unwrap_or_default();
    let payload = agent_metrics.get("sluice_payload_bytes_sent_total");
    let wire = agent_metrics.get("sluice_wire_bytes_sent_total");
    println!("agent:");
    print_agent_metrics(&agent_metrics);
    for name in [
        "sluice_events_captured_total",
        "sluice_events_dropped_total",
        "sluice_ops_sent_total",
        "sluice_ops_acked_total",
    ] {
        println!("   {name:<33} {}", agent_metrics.get(name));
    }
    if payload > 0.0 {
        println!("   wire bytes per payload byte       {:.3}", wire / payload);
    }
    println!("receiver:");
    for name in [
        "sluice_ops_applied_total",
        "sluice_bytes_applied_total",
        "sluice_ops_refused_total",
        "sluice_wire_bytes_received_total",
    ] {
        println!("   {name:<33} {}", receiver_metrics.get(name));
    }
}

/// Stops a daemon with SIGTERM. A daemon that needs SIGKILL or exits with an error
/// is reported but does not fail the demo, whose subject is replication.
fn stop(daemon: &mut Daemon) {
    match daemon.stop() {
        Ok(Some(status)) if !status.success() => println!(
            "warning: the {} exited with {status} on SIGTERM; its log ends with:\n{}",
            daemon.name(),
            daemon.log_tail(20)
        ),
        Ok(_) => println!("{} stopped", daemon.name()),
        Err(e) => println!("warning: {e:#}"),
    }
}

fn write_config(path: &Path, contents: &str) -> anyhow::Result<()> {
    fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    println!("config: {}", path.display());
    Ok(())
}
