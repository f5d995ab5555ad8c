//! `cargo xtask`: the one entry point for preparing a machine, building, testing and
//! demonstrating sluice.
//!
//! # Layout
//! - [`setup`]: installs what a fresh Debian 12 machine lacks.
//! - [`cargo`]: runs cargo in the workspace with the PATH the eBPF build needs.
//! - [`test`]: the full test run CI uses.
//! - [`demo`]: a master and a standby on loop devices, replicating a scripted workload.
//! - [`bench`]: sluice side by side with rsync, lsyncd and Syncthing.
//! - [`fuzz`]: the cargo-fuzz targets of `fuzz/`, run for a given time.

mod bench;
mod cargo;
mod demo;
mod fuzz;
mod setup;
mod test;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Developer tasks for sluice", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what this machine lacks to build and test sluice (needs root).
    Setup,
    /// Build the workspace (the agent's build script builds the eBPF object).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Set up, build the release binaries and run every test.
    Test,
    /// Set up, build, and replicate a scripted workload between two loop filesystems.
    Demo,
    /// Run the fuzz targets (frame decoding, operations on a scratch root).
    Fuzz {
        /// Minutes in all, shared among the targets.
        #[arg(long, default_value_t = 2.0)]
        minutes: f64,
    },
    /// Set up, build, and measure sluice side by side with rsync, lsyncd and Syncthing.
    Bench {
        /// Smaller data and shorter runs (sizes in the report).
        #[arg(long)]
        quick: bool,
        /// Only these scenarios, e.g. `S1,S3` (default: all).
        #[arg(long, value_delimiter = ',')]
        scenarios: Vec<String>,
        /// Only these replicators, e.g. `sluice` (default: all four).
        #[arg(long, value_delimiter = ',')]
        replicators: Vec<String>,
    },
}

fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Setup => setup::run()?,
        Command::Build { release } => cargo::build(release)?,
        Command::Test => return test::run(),
        Command::Demo => {
            setup::run()?;
            cargo::build(true)?;
            demo::run(&cargo::release_dir()).context("demo failed")?;
        }
        Command::Fuzz { minutes } => fuzz::run(minutes)?,
        Command::Bench { quick, scenarios, replicators } => {
            bench::run(quick, &scenarios, &replicators).context("bench failed")?
        }
    }
    Ok(ExitCode::SUCCESS)
}
