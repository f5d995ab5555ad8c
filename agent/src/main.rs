//! `sluice-agent`: the master side of sluice.

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_net::daemon;
use std::path::PathBuf;

/// Replicates a directory tree to a standby in near real time, capturing every
/// change with eBPF and streaming it over QUIC with mutual TLS.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate this agent's key and certificate and print the fingerprint the
    /// receiver must pin (`tls.peer_fingerprint` in its config).
    Init {
        /// Directory for cert.pem and key.pem.
        #[arg(long)]
        identity: PathBuf,
        /// Replace an existing key.
        #[arg(long)]
        force: bool,
    },
    /// Watch the configured tree and replicate it to the receiver.
    Run {
        /// Path of the TOML configuration (read again on SIGHUP).
        #[arg(long, short)]
        config: PathBuf,
        /// Log lines for people (`human`) or one JSON object per line (`json`).
        #[arg(long, default_value = "human")]
        log_format: sluice_net::daemon::LogFormat,
    },
    /// Print the role, the connection, lag, backlog and durable position. Exits 0
    /// when healthy (connected and the standby in sync), 1 otherwise.
    Status {
        /// Path of the running agent's TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Planned switchover: wait until the standby holds everything captured,
    /// promote it, and make this tree its standby (the agent stops). Stop the
    /// services writing to the tree first.
    Switchover {
        /// Path of the running agent's TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
        /// Give up after this many seconds (nothing is promoted then).
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Ask the running agent to compare the whole standby with the master now,
    /// block by block; print every difference. Exits 1 if any was found.
    Verify {
        /// Path of the running agent's TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
        /// Repair what differs (otherwise only report it; the background
        /// verifier repairs it later).
        #[arg(long)]
        repair: bool,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Write man pages and shell completions into DIR (used by packaging).
    #[command(hide = true)]
    Docs {
        /// Gets `man/` and `completions/`.
        dir: PathBuf,
    },
}

/// The exit status of an agent the standby fenced (`RestartPreventExitStatus=` in
/// the systemd unit).
const FENCED_EXIT_STATUS: u8 = 3;

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Verify { config, repair, timeout } => {
            let config = sluice_agent::config::Config::load(&config)?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
            verify(runtime, &config, repair, std::time::Duration::from_secs(timeout))
        }
        Command::Status { config, json } => {
            let config = sluice_agent::config::Config::load(&config)?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
            status(runtime, &config, json)
        }
        Command::Switchover { config, timeout } => {
            let config = sluice_agent::config::Config::load(&config)?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
            switchover(runtime, &config, std::time::Duration::from_secs(timeout))
        }
        Command::Init { identity, force } => {
            let fingerprint = daemon::init_identity(&identity, force)
                .with_context(|| format!("creating an identity in {}", identity.display()))?;
            println!("fingerprint: {fingerprint}");
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Run { config: config_path, log_format } => {
            daemon::keep_buffers_mapped();
            let log_level = daemon::init_logging(log_format);
            let config = sluice_agent::config::Config::load(&config_path)?;
            if let Err(e) = log_level.set(config.log.level.as_deref()) {
                anyhow::bail!("{}: `log.level`: {e}", config_path.display());
            }
            let reloader = sluice_agent::reload::Reloader {
                path: config_path,
                log_level,
                notifier: sluice_net::notify::Notifier::default(),
            };
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
            let ran = runtime.block_on(async {
                let shutdown = daemon::shutdown_signal().context("installing signal handlers")?;
                match &config.relay {
                    Some(relay) => {
                        let origin = sluice_net::origin::OriginClock::open(&relay.origin)
                            .with_context(|| format!("opening {}", relay.origin.display()))?;
                        sluice_agent::daemon::run_relay(config, sluice_agent::daemon::Relay { origin }, shutdown).await
                    }
                    None => sluice_agent::daemon::run(config, Some(reloader), shutdown).await,
                }
            });
            match ran {
                // A distinct status, so a service manager does not restart an agent
                // the promoted standby would only refuse again.
                Err(e) if e.downcast_ref::<sluice_agent::session::Fenced>().is_some() => {
                    eprintln!("Error: {e:#}");
                    Ok(std::process::ExitCode::from(FENCED_EXIT_STATUS))
                }
                ran => ran.map(|()| std::process::ExitCode::SUCCESS),
            }
        }
        Command::Docs { dir } => {
            let command = <Cli as clap::CommandFactory>::command();
            let written = sluice_net::docs::write(command, &dir)?;
            for file in written {
                println!("{}", file.display());
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

/// `sluice-agent verify`: exit status 0 when the standby matches, 1 when it
/// does not (each difference printed), an error otherwise.
fn verify(
    runtime: tokio::runtime::Runtime,
    config: &sluice_agent::config::Config,
    repair: bool,
    timeout: std::time::Duration,
) -> anyhow::Result<std::process::ExitCode> {
    use sluice_agent::control::{Request, request};
    use sluice_agent::verify::Report;
    let ask = Request::Verify { repair };
    let asked = request(&config.state_dir, &ask, |report| {
        if let Report::Mismatch(m) = report {
            println!("differs: {}: {}", m.path, m.what);
        }
    });
    let last = runtime
        .block_on(async { tokio::time::timeout(timeout, asked).await })
        .map_err(|_| anyhow::anyhow!("the verification did not finish within {} s", timeout.as_secs()))??;
    match last {
        Report::Done { mismatches, bytes, entries, seconds } => {
            let repaired = if repair && mismatches > 0 { " (repaired)" } else { "" };
            println!("{mismatches} difference(s){repaired}; {entries} entries and {bytes} bytes compared in {seconds:.2} s");
            Ok(if mismatches == 0 { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::from(1) })
        }
        Report::Error(e) => anyhow::bail!("the agent could not verify: {e}"),
        other => anyhow::bail!("unexpected answer from the agent: {other:?}"),
    }
}

/// `sluice-agent status`: exit status 0 when healthy.
fn status(runtime: tokio::runtime::Runtime, config: &sluice_agent::config::Config, json: bool) -> anyhow::Result<std::process::ExitCode> {
    use sluice_agent::control::{Request, request};
    use sluice_agent::verify::Report;
    let answer = runtime.block_on(request(&config.state_dir, &Request::Status, |_| {}));
    let status = match answer {
        Ok(Report::Status(status)) => status,
        Ok(Report::Error(e)) => anyhow::bail!("the agent could not tell its status: {e}"),
        Ok(other) => anyhow::bail!("unexpected answer from the agent: {other:?}"),
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({ "running": false, "healthy": false, "error": format!("{e:#}") }));
            } else {
                println!("agent: not running ({e:#})");
            }
            return Ok(std::process::ExitCode::from(1));
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status.to_json()?)?);
    } else {
        let s = &status;
        println!("root:        {}", s.root.display());
        println!("role:        {} (generation {})", s.role, s.generation);
        let link = if s.connected { "connected" } else { "not connected" };
        let sync = if s.synced { "in sync" } else { "not in sync yet" };
        let standby = if s.standbys.len() > 1 { "standbys:" } else { "standby: " };
        println!("{standby}    {} ({link}, {sync})", s.peer);
        println!("operations:  last {}, applied {}, durable {}", s.last_seq, s.applied_seq, s.durable_seq);
        println!("lag:         {:.3} s, {} bytes", s.lag_seconds, s.lag_bytes);
        println!("backlog:     {} operations, {} bytes unsent", s.backlog_ops, s.backlog_bytes);
        if s.standbys.len() > 1 {
            for standby in &s.standbys {
                let link = if standby.connected { "connected" } else { "not connected" };
                let sync = if standby.synced { "in sync" } else { "not in sync" };
                let ahead = if standby.ahead { "; behind, kept as ranges" } else { "" };
                println!(
                    "  {:<10} {} ({link}, {sync}): lag {:.3} s, {} bytes; durable {} of {}{ahead}",
                    standby.name, standby.address, standby.lag_seconds, standby.lag_bytes, standby.durable_seq, standby.last_seq
                );
            }
        }
        println!("problems:    {} events dropped, {} verifier mismatches, {} tree comparisons", s.events_dropped, s.verify_mismatches, s.tree_compares);
        let compared = if s.last_compare_unix > 0.0 {
            format!("{} ago, {} files differed", ago(s.last_compare_unix), s.last_compare_files_differing)
        } else {
            "none since the start".to_owned()
        };
        println!("compared:    {compared}");
        let pass = if s.verify_last_pass_unix > 0.0 { format!("last pass {} ago", ago(s.verify_last_pass_unix)) } else { "no pass finished yet".to_owned() };
        println!("verifier:    {pass}; {} passes, {} bytes compared", s.verify_passes, s.verify_bytes);
        println!("last hour:   {}", problems_line(&s.problems));
        println!("health:      {}", if s.healthy { "ok" } else { "NOT OK" });
    }
    Ok(if status.healthy { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::from(1) })
}

/// Errors and warnings of the last hour, for people.
fn problems_line(problems: &sluice_net::daemon::Problems) -> String {
    let last = problems.last_error.as_deref().map(|e| format!("; last error: {e}")).unwrap_or_default();
    format!("{} errors, {} warnings{last}", problems.errors, problems.warnings)
}

/// How long ago Unix time `at` (seconds) was, for people.
fn ago(at: f64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let seconds = (now - at).max(0.0);
    humantime::format_duration(std::time::Duration::from_secs(seconds as u64)).to_string()
}

/// `sluice-agent switchover`: prints what it waits for, then the proof.
fn switchover(runtime: tokio::runtime::Runtime, config: &sluice_agent::config::Config, timeout: std::time::Duration) -> anyhow::Result<std::process::ExitCode> {
    use sluice_agent::control::{Request, request};
    use sluice_agent::verify::Report;
    let asked = request(&config.state_dir, &Request::Switchover, |report| {
        if let Report::Progress(what) = report {
            println!("{what}");
        }
    });
    let last = runtime
        .block_on(async { tokio::time::timeout(timeout, asked).await })
        .map_err(|_| anyhow::anyhow!("the standby did not catch up within {} s; the switchover is cancelled and nothing was promoted (check with `sluice-agent status`)", timeout.as_secs()))??;
    match last {
        Report::SwitchedOver(proof) => {
            println!("switched over in {:.3} s: the standby is the primary of generation {}", proof.seconds, proof.generation);
            println!("master: last operation {}; standby: durable up to {}", proof.last_seq, proof.standby_durable_seq);
            if proof.standby_durable_seq >= proof.last_seq && proof.captured_after == 0 {
                println!("nothing was lost: every operation the master captured is durable on the new primary");
            } else {
                println!(
                    "WARNING: {} operations captured on this tree after the switchover point are not on the new primary (writers were still running)",
                    proof.captured_after + proof.last_seq.saturating_sub(proof.standby_durable_seq)
                );
            }
            println!("this tree is its standby now and the agent stopped: run `sluice-receiver` on {} and point the new primary's agent at it", config.root.display());
            Ok(if proof.captured_after == 0 && proof.standby_durable_seq >= proof.last_seq { std::process::ExitCode::SUCCESS } else { std::process::ExitCode::from(1) })
        }
        Report::Error(e) => anyhow::bail!("switchover failed: {e}"),
        other => anyhow::bail!("unexpected answer from the agent: {other:?}"),
    }
}
