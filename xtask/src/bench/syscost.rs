//! S5, what capture costs the programs it watches: `sluice-syscost` times
//! `getppid`, 4 KiB `pwrite`s and `fsync`s in its own thread, on an unrelated
//! filesystem and on the watched one, in rounds that alternate without and with
//! the agent (and its receiver) running. Then one more watched `pwrite` loop with
//! `kernel.bpf_stats_enabled=1` gives the run time of each of the agent's BPF
//! programs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sluice_tests::{FsKind, LoopFs};

use super::Sizes;
use super::bpfstats;
use super::replicator::{Kind, Replicator};
use super::results::{AgentWork, CostRound, Costs, SyscallCosts};

const DATA_FILE: &str = "syscost.dat";
const DATA_MIB: u64 = 64;

pub fn run(sizes: &Sizes, bin_dir: &Path) -> SyscallCosts {
    let mut costs = SyscallCosts {
        getppid_iterations: sizes.s5_getppid,
        pwrite_iterations: sizes.s5_pwrites,
        fsync_iterations: sizes.s5_fsyncs,
        ..SyscallCosts::default()
    };
    println!("bench: S5 syscall costs");
    if let Err(e) = measure(&mut costs, sizes, bin_dir) {
        eprintln!("bench: S5: {e:#}");
        costs.error = Some(format!("{e:#}").chars().take(600).collect());
    }
    costs
}

/// The `sluice-syscost` next to the daemons, else the workspace's release build.
fn tool(bin_dir: &Path) -> anyhow::Result<PathBuf> {
    [bin_dir.to_owned(), crate::cargo::release_dir()]
        .into_iter()
        .map(|d| d.join("sluice-syscost"))
        .find(|p| p.is_file())
        .context("no sluice-syscost binary; build it with `cargo build --release -p sluice-tests --bin sluice-syscost`")
}

struct Timing {
    getppid: Option<f64>,
    pwrite: Option<f64>,
    fsync: Option<f64>,
}

/// One `sluice-syscost` run with its data file in `dir`.
fn syscost(
    tool: &Path,
    dir: &Path,
    getppid: u64,
    pwrites: u64,
    fsyncs: u64,
) -> anyhow::Result<Timing> {
    let out = Command::new(tool)
        .arg("--dir")
        .arg(dir)
        .arg(format!("--getppid={getppid}"))
        .arg(format!("--pwrite={pwrites}"))
        .arg(format!("--fsync={fsyncs}"))
        .arg(format!("--file-mib={DATA_MIB}"))
        .output()
        .with_context(|| format!("cannot run {}", tool.display()))?;
    if !out.status.success() {
        bail!(
            "sluice-syscost failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("sluice-syscost printed no JSON")?;
    let t = Timing {
        getppid: v["getppid_ns"].as_f64(),
        pwrite: v["pwrite_ns"].as_f64(),
        fsync: v["fsync_ns"].as_f64(),
    };
    let show = |x: Option<f64>| x.map_or("–".into(), |x| format!("{x:.0}"));
    println!(
        "bench:   {}: getppid {} ns, pwrite {} ns, fsync {} ns",
        dir.display(),
        show(t.getppid),
        show(t.pwrite),
        show(t.fsync)
    );
    Ok(t)
}

fn measure(c: &mut SyscallCosts, sizes: &Sizes, bin_dir: &Path) -> anyhow::Result<()> {
    let tool = tool(bin_dir)?;
    // 4 KiB blocks, as on any ext4 of usual size: under 512 MiB mke2fs picks 1 KiB
    // blocks, where a 4 KiB pwrite costs several times as much.
    let fs = |what: &str| {
        LoopFs::with_mkfs_options(FsKind::Ext4, 512, "-b 4096")
            .with_context(|| format!("{what} filesystem"))
    };
    let (master, standby, other) = (fs("master")?, fs("standby")?, fs("unrelated")?);
    let (m, s, o) = (master.path(), standby.path(), other.path());
    let (n_ppid, n_pw, n_fs) = (sizes.s5_getppid, sizes.s5_pwrites, sizes.s5_fsyncs);
    // The data files are written in full before anything is timed.
    syscost(&tool, o, 0, 1, 0)?;
    syscost(&tool, m, 0, 1, 0)?;
    for round in 1..=sizes.s5_rounds {
        println!(
            "bench: S5 round {round}/{}: without the agent",
            sizes.s5_rounds
        );
        note_other_agents(c, None);
        let mut r = CostRound::default();
        let u = syscost(&tool, o, n_ppid, n_pw, n_fs)?;
        let w = syscost(&tool, m, 0, n_pw, n_fs)?;
        r.without = Costs {
            getppid: u.getppid,
            pwrite_unrelated: u.pwrite,
            pwrite_watched: w.pwrite,
            fsync_unrelated: u.fsync,
            fsync_watched: w.fsync,
        };

        println!(
            "bench: S5 round {round}/{}: with the agent",
            sizes.s5_rounds
        );
        let mut sluice = Replicator::start(Kind::Sluice, m, s, bin_dir)?;
        if !sluice.wait_live(sizes.timeout)? || !sluice.wait_synced(sizes.timeout)? {
            bail!("sluice not live and synced:\n{}", sluice.logs());
        }
        note_other_agents(c, sluice.agent_pid());
        // The unrelated filesystem (and getppid) while the agent is idle.
        let u = syscost(&tool, o, n_ppid, n_pw, n_fs)?;
        let before = sluice.counters()?;
        let w = syscost(&tool, m, 0, n_pw, n_fs)?;
        let since = Instant::now();
        let converged = wait_same_file(
            &m.join(DATA_FILE),
            &s.join(DATA_FILE),
            sizes.timeout,
            || sluice.check_alive(),
        )?;
        let after = sluice.counters()?;
        r.with = Costs {
            getppid: u.getppid,
            pwrite_unrelated: u.pwrite,
            pwrite_watched: w.pwrite,
            fsync_unrelated: u.fsync,
            fsync_watched: w.fsync,
        };
        r.agent = Some(AgentWork {
            changed_bytes: (n_pw + n_fs) * 4096,
            cpu_s: after.master_cpu_s - before.master_cpu_s,
            receiver_cpu_s: after.standby_cpu_s - before.standby_cpu_s,
            converged_s: converged.then(|| since.elapsed().as_secs_f64()),
        });
        if !converged {
            eprintln!(
                "bench: S5: the standby's copy did not match in time:\n{}",
                sluice.logs()
            );
        }
        sluice.check_alive()?;
        sluice.stop();
        c.rounds.push(r);
    }

    println!("bench: S5 BPF program run times (kernel.bpf_stats_enabled=1)");
    if let Err(e) = bpf_pass(c, &tool, m, s, sizes, bin_dir) {
        eprintln!("bench: S5 BPF stats: {e:#}");
        c.bpf_error = Some(format!("{e:#}").chars().take(600).collect());
    }
    Ok(())
}

fn bpf_pass(
    c: &mut SyscallCosts,
    tool: &Path,
    m: &Path,
    s: &Path,
    sizes: &Sizes,
    bin_dir: &Path,
) -> anyhow::Result<()> {
    let mut sluice = Replicator::start(Kind::Sluice, m, s, bin_dir)?;
    if !sluice.wait_live(sizes.timeout)? || !sluice.wait_synced(sizes.timeout)? {
        bail!("sluice not live and synced:\n{}", sluice.logs());
    }
    let pid = sluice.agent_pid().context("no agent pid")?;
    let stats = bpfstats::StatsEnabled::new()?;
    let before = bpfstats::programs(pid)?;
    let w = syscost(tool, m, 0, sizes.s5_pwrites, 0)?;
    let after = bpfstats::programs(pid)?;
    drop(stats);
    anyhow::ensure!(
        !after.is_empty(),
        "no BPF program among the agent's file descriptors"
    );
    c.bpf_programs = bpfstats::deltas(&before, &after);
    c.bpf_pass_pwrites = sizes.s5_pwrites;
    c.bpf_pass_pwrite_ns = w.pwrite;
    for p in c.bpf_programs.iter().filter(|p| p.run_cnt > 0) {
        println!(
            "bench:   {} (id {}): {} runs, {:.0} ns/run",
            p.name.as_deref().unwrap_or(&p.tag),
            p.id,
            p.run_cnt,
            p.ns_per_run().unwrap_or(0.0)
        );
    }
    // Let it finish replicating before it is stopped.
    wait_same_file(
        &m.join(DATA_FILE),
        &s.join(DATA_FILE),
        sizes.timeout,
        || sluice.check_alive(),
    )?;
    sluice.stop();
    Ok(())
}

/// Other `sluice-agent` processes (e.g. a test run) hook every syscall too, so
/// their presence is noted with the figures.
fn note_other_agents(c: &mut SyscallCosts, ours: Option<u32>) {
    let others: Vec<String> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| Some(pid) != ours)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "sluice-agent")
        })
        .map(|pid| pid.to_string())
        .collect();
    if !others.is_empty() {
        let note = format!(
            "round {}: {} other sluice-agent process(es) running (pids {}), whose BPF programs run on every syscall too",
            c.rounds.len() + 1,
            others.len(),
            others.join(", ")
        );
        eprintln!("bench: S5: {note}");
        c.notes.push(note);
    }
}

/// Polls until `b` has the same bytes as `a`; false if `timeout` ran out.
fn wait_same_file(
    a: &Path,
    b: &Path,
    timeout: Duration,
    mut alive: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let master = std::fs::read(a).with_context(|| format!("cannot read {}", a.display()))?;
        if std::fs::read(b).is_ok_and(|standby| standby == master) {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        alive()?;
        std::thread::sleep(Duration::from_millis(100));
    }
}
