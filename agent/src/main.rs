//! `sluice-agent`: the master side of sluice.

use anyhow::Context;
use clap::{Parser, Subcommand};
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
            let generated = sluice_net::Identity::generate()?;
            generated.write_to(&identity, force)?;
            println!("fingerprint: {}", generated.fingerprint()?);
            Ok(())
        }
        Command::Run { config } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            let config = sluice_agent::config::Config::load(&config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
            runtime.block_on(sluice_agent::daemon::run(config, shutdown_signal()))
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("stopping");
}
