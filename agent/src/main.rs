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
        /// Path of the TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
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
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Verify { config, repair, timeout } => {
            let config = sluice_agent::config::Config::load(&config)?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
            verify(runtime, &config, repair, std::time::Duration::from_secs(timeout))
        }
        Command::Init { identity, force } => {
            let fingerprint = daemon::init_identity(&identity, force)
                .with_context(|| format!("creating an identity in {}", identity.display()))?;
            println!("fingerprint: {fingerprint}");
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Run { config } => {
            daemon::keep_buffers_mapped();
            daemon::init_logging();
            let config = sluice_agent::config::Config::load(&config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
            runtime.block_on(async {
                let shutdown = daemon::shutdown_signal().context("installing signal handlers")?;
                sluice_agent::daemon::run(config, shutdown).await
            })?;
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
        Report::Mismatch(m) => anyhow::bail!("the verification ended early after {}", m.path),
    }
}
