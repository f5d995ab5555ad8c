//! `sluice-receiver`: `init` creates the TLS identity, `run` serves replication.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_net::daemon;
use sluice_receiver::config::Config;

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
            let fingerprint = daemon::init_identity(&identity, force)
                .with_context(|| format!("creating an identity in {}", identity.display()))?;
            println!("fingerprint: {fingerprint}");
            Ok(())
        }
        Command::Run { config } => {
            daemon::init_logging();
            let config = Config::load(&config).context("invalid configuration")?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(async {
                let shutdown = daemon::shutdown_signal().context("installing signal handlers")?;
                sluice_receiver::server::run(config, shutdown).await
            })
        }
    }
}
