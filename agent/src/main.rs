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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Init { identity, force } => {
            let fingerprint = daemon::init_identity(&identity, force)
                .with_context(|| format!("creating an identity in {}", identity.display()))?;
            println!("fingerprint: {fingerprint}");
            Ok(())
        }
        Command::Run { config } => {
            daemon::init_logging();
            let config = sluice_agent::config::Config::load(&config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
            runtime.block_on(async {
                let shutdown = daemon::shutdown_signal().context("installing signal handlers")?;
                sluice_agent::daemon::run(config, shutdown).await
            })
        }
    }
}
