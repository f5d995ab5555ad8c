//! `sluice-receiver`: `init` creates the TLS identity, `run` serves replication.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_net::daemon;
use sluice_receiver::config::Config;
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
        /// Path of receiver.toml.
        #[arg(long)]
        config: PathBuf,
    },
    /// Allow the next comparison of the whole tree to delete more than
    /// `[safety] max_delete_fraction` of the standby (once).
    AllowMassDelete {
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
            daemon::keep_buffers_mapped();
            daemon::init_logging();
            let config = Config::load(&config).context("invalid configuration")?;
            let sockets = Sockets::bind(&config)?;
            // Capabilities are per thread and inherited: dropped while this is the
            // only thread, every thread the runtime starts has only what is left.
            sluice_receiver::privileges::restrict(config.replication.devices)?;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(async {
                let shutdown = daemon::shutdown_signal().context("installing signal handlers")?;
                Server::bind_on(&config, sockets).await?.run(shutdown).await
            })
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
            Ok(())
        }
    }
}
