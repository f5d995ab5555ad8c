//! `sluice-receiver`: `init` creates the TLS identity, `run` serves replication,
//! `promote` makes the standby a primary, `status` says what it is doing.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_net::daemon;
use sluice_receiver::config::Config;
use sluice_receiver::control;
use sluice_receiver::server::{Server, Sockets};
use sluice_receiver::state::State;

#[derive(Parser)]
#[command(name = "sluice-receiver", version, about = "The sluice standby daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a key and certificate and print the fingerprint to pin on the agent.
    Init {
        /// Directory to write cert.pem and key.pem to.
        #[arg(long)]
        identity: PathBuf,
        /// Replace an existing identity.
        #[arg(long)]
        force: bool,
    },
    /// Run the receiver.
    Run {
        /// Path of receiver.toml (read again on SIGHUP).
        #[arg(long)]
        config: PathBuf,
        /// Log lines for people (`human`) or one JSON object per line (`json`).
        #[arg(long, default_value = "human")]
        log_format: sluice_net::daemon::LogFormat,
    },
    /// Make this standby a primary: stop taking the master's stream (its agent
    /// is fenced from now on), make the tree durable, and print what it holds.
    /// Then start `sluice-agent` on the tree.
    Promote {
        /// Path of receiver.toml.
        #[arg(long)]
        config: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a writable copy of the standby for a disaster-recovery drill while
    /// replication keeps running (a btrfs snapshot, or a copy sharing extents
    /// where the filesystem can), and print the point it is consistent as of.
    Drill {
        /// Path of receiver.toml.
        #[arg(long)]
        config: PathBuf,
        /// Where the copy goes (must not exist, or be empty; outside the standby).
        #[arg(long)]
        into: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the role, the connection, lag and the durable position. Exits 0
    /// when healthy (running, and connected to a master or a primary), 1 otherwise.
    Status {
        /// Path of receiver.toml.
        #[arg(long)]
        config: PathBuf,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Allow the next comparison of the whole tree to delete more than
    /// `[safety] max_delete_fraction` of the standby (once).
    AllowMassDelete {
        /// Path of receiver.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// Keep the relay to the `[[forward]]` standbys running (started by `run`).
    #[command(hide = true)]
    Relay {
        /// Path of receiver.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// Write man pages and shell completions into DIR (used by packaging).
    #[command(hide = true)]
    Docs {
        /// Gets `man/` and `completions/`.
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let ok = std::process::ExitCode::SUCCESS;
    match Cli::parse().command {
        Command::Init { identity, force } => {
            let fingerprint = daemon::init_identity(&identity, force)
                .with_context(|| format!("creating an identity in {}", identity.display()))?;
            println!("fingerprint: {fingerprint}");
            Ok(ok)
        }
        Command::Run { config: config_path, log_format } => {
            daemon::keep_buffers_mapped();
            let log_level = daemon::init_logging(log_format);
            let config = Config::load(&config_path).context("invalid configuration")?;
            if let Err(e) = log_level.set(config.log.level.as_deref()) {
                anyhow::bail!("{}: `log.level`: {e}", config_path.display());
            }
            let sockets = Sockets::bind(&config)?;
            // Started while the receiver still holds every privilege: the relay loads eBPF programs.
            let relay = if config.forward.is_empty() || !config.relay.spawn {
                None
            } else {
                Some(sluice_receiver::relay::spawn_supervisor(&config_path)?)
            };
            // Capabilities are per thread and inherited: dropped while this is the
            // only thread, every thread the runtime starts has only what is left.
            sluice_receiver::privileges::restrict(config.replication.devices)?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            let served = runtime.block_on(async {
                let shutdown = daemon::shutdown_signal().context("installing signal handlers")?;
                let reloader = sluice_receiver::reload::Reloader {
                    path: config_path,
                    log_level,
                    notifier: sluice_net::notify::Notifier::default(),
                };
                Server::bind_on(&config, sockets).await?.run_as_service(shutdown, Some(reloader)).await
            });
            if let Some(relay) = relay {
                sluice_receiver::relay::stop_supervisor(relay);
            }
            served?;
            Ok(ok)
        }
        Command::Relay { config } => {
            daemon::init_logging(sluice_net::daemon::LogFormat::Human);
            sluice_receiver::relay::supervise(&config)?;
            Ok(ok)
        }
        Command::Promote { config, json } => {
            let config = Config::load(&config).context("invalid configuration")?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
            let report = match runtime.block_on(control::request(&config.root, &control::Request::Promote))? {
                Some(control::Answer::Promoted(report)) => report,
                Some(control::Answer::Error(e)) => anyhow::bail!("the receiver could not promote {}: {e}", config.root.display()),
                Some(other) => anyhow::bail!("unexpected answer from the receiver: {other:?}"),
                None => control::promote_offline(&config.root).context("promoting the tree (no receiver is running on it)")?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_promotion(&report);
            }
            Ok(ok)
        }
        Command::Drill { config, into, json } => {
            let config = Config::load(&config).context("invalid configuration")?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
            let report = runtime
                .block_on(sluice_receiver::drill::drill(&config.root, &into))
                .with_context(|| format!("making a drill copy of {} in {}", config.root.display(), into.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "drill copy of {} in {} ({}), made in {:.3} s; applying was paused {:.3} s",
                    config.root.display(),
                    report.into.display(),
                    report.method,
                    report.seconds,
                    report.paused_seconds
                );
                println!("consistent as of: operation {} of the master, captured {}", report.seq, master_time(report.captured_unix_ns));
                println!("at a durable barrier: {}; newest fsync barrier held: {}", if report.at_barrier { "yes" } else { "no" }, master_time(report.barrier_unix_ns));
                println!("the standby keeps replicating, and nothing done in {} reaches it; delete it when the drill is over", report.into.display());
            }
            Ok(ok)
        }
        Command::Status { config, json } => {
            let config = Config::load(&config).context("invalid configuration")?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
            let status = match runtime.block_on(control::request(&config.root, &control::Request::Status))? {
                Some(control::Answer::Status(status)) => *status,
                Some(control::Answer::Error(e)) => anyhow::bail!("the receiver could not tell its status: {e}"),
                Some(other) => anyhow::bail!("unexpected answer from the receiver: {other:?}"),
                None => control::Status::from_disk(&config.root)?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(if status.healthy { ok } else { std::process::ExitCode::from(1) })
        }
        Command::AllowMassDelete { config } => {
            let config = Config::load(&config).context("invalid configuration")?;
            State::open_existing(&config.root)
                .and_then(|state| state.grant_mass_delete_permit())
                .context("recording the permission")?;
            println!(
                "the next comparison may delete more than {} of {}",
                config.safety.max_delete_fraction,
                config.root.display()
            );
            Ok(ok)
        }
        Command::Docs { dir } => {
            let command = <Cli as clap::CommandFactory>::command();
            let written = sluice_net::docs::write(command, &dir)?;
            for file in written {
                println!("{}", file.display());
            }
            Ok(ok)
        }
    }
}

/// A capture time of the master, readable.
fn master_time(unix_ns: u64) -> String {
    if unix_ns == 0 {
        return "unknown".into();
    }
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(unix_ns);
    humantime::format_rfc3339_nanos(time).to_string()
}

fn print_promotion(report: &control::PromotionReport) {
    let tree = &report.lineage;
    if report.already {
        println!("{} is a primary already (generation {})", report.root.display(), tree.lineage.current);
    } else {
        let from = tree.lineage.forks.first().map_or_else(|| "none".to_string(), |f| f.parent.to_string());
        println!("promoted {}: a primary of generation {} (forked from {from})", report.root.display(), tree.lineage.current);
    }
    if let Some(p) = &tree.promoted {
        println!("consistent as of: operation {} of the old master, captured {}", p.durable_seq, master_time(p.consistent_unix_ns));
        let barrier = if p.at_barrier { "yes (the copy is what the master held at an fsync)" } else { "no" };
        println!("at a durable barrier: {barrier}; newest fsync barrier held: {}", master_time(p.barrier_unix_ns));
    }
    println!("took {:.3} s. The old master's agent is refused from now on; start `sluice-agent` on this tree to replicate it.", report.seconds);
}

fn print_status(status: &control::Status) {
    println!("root:        {}", status.root.display());
    println!("role:        {} (generation {})", status.role, status.generation.as_deref().unwrap_or("none"));
    let running = if status.running { "running" } else { "not running" };
    let link = match (&status.peer, status.connected) {
        (Some(peer), true) => format!("connected to the agent at {peer}"),
        _ => "no agent connected".into(),
    };
    println!("receiver:    {running}, {link}");
    println!("applied:     operation {} (durable: {})", status.last_applied_seq, status.durable_seq);
    println!("consistent:  as of the master's {}{}", master_time(status.consistent_as_of_unix_ns), if status.at_barrier { ", at an fsync barrier" } else { "" });
    println!("last epoch:  {}", master_time(status.last_durable_barrier_unix_ns));
    println!("lag:         {:.3} s", status.lag_seconds);
    println!("problems:    {} refused, {} diverged, {} agents fenced", status.ops_refused, status.ops_diverged, status.agents_fenced);
    if let Some(p) = &status.promoted {
        println!("promoted:    {} at operation {}", master_time(p.at_unix_ns), p.durable_seq);
    }
    if status.running {
        let problems = &status.problems;
        let last = problems.last_error.as_deref().map(|e| format!("; last error: {e}")).unwrap_or_default();
        println!("last hour:   {} errors, {} warnings{last}", problems.errors, problems.warnings);
    }
    if let (Some(entries), Some(bytes)) = (status.rollback_entries, status.rollback_bytes) {
        println!("rollback:    {entries} entries, {bytes} bytes of file content");
    }
    println!("health:      {}", if status.healthy { "ok" } else { "NOT OK" });
}
