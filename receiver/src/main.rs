//! `sluice-receiver`: `init` creates the TLS identity, `run` serves replication.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_net::Identity;
use sluice_receiver::config::Config;
use tracing_subscriber::EnvFilter;

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
        /// Path of receiver.toml.
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Init { identity, force } => {
            let id = Identity::generate().context("generating an identity")?;
            id.write_to(&identity, force)
                .with_context(|| format!("writing identity to {}", identity.display()))?;
            println!("fingerprint: {}", id.fingerprint()?);
            Ok(())
        }
        Command::Run { config } => {
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_env_filter(
                    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
                )
                .init();
            let config = Config::load(&config).context("invalid configuration")?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(async {
                let shutdown = shutdown_signal().context("installing signal handlers")?;
                sluice_receiver::server::run(config, shutdown).await
            })
        }
    }
}

/// Completes on the first SIGTERM or SIGINT.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
