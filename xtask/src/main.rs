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
//! - [`torture`]: the randomized differential exerciser, one run or the seed list.
//! - [`rules`]: the Prometheus alerting rules (promtool) and the Grafana dashboard.
//! - [`package`]: the Debian packages of the daemons, and their install check.

mod bench;
mod cargo;
mod demo;
mod fuzz;
mod package;
mod rules;
mod setup;
mod test;
mod torture;

use std::path::PathBuf;
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
    /// Check the Prometheus alerting rules and run their unit tests (promtool), and
    /// check the Grafana dashboard.
    Rules,
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
        /// S7's tree sizes in files, e.g. `2m` or `200k,2m,10m` (default: 200k, 50k
        /// with --quick); runs S7 even if --scenarios leaves it out.
        #[arg(long, value_delimiter = ',', value_parser = bench::parse_count)]
        scale: Vec<usize>,
    },
    /// Set up, build, and run the randomized differential exerciser: random operations
    /// from several processes on the master, then a full comparison with the standby.
    Torture {
        #[command(flatten)]
        args: Box<sluice_tests::torture::TortureArgs>,
        /// Run every entry of a seed list instead (without FILE: the committed
        /// tests/torture-seeds.toml, what CI runs).
        #[arg(long, num_args = 0..=1, default_missing_value = "committed", value_name = "FILE")]
        seeds: Option<PathBuf>,
    },
    /// Build the release binaries and the Debian packages of both daemons into
    /// `<target>/debian/`.
    Package {
        /// Then install them, check what they installed, and purge them again
        /// (needs root; refused if they are installed already).
        #[arg(long)]
        install_check: bool,
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
        Command::Rules => rules::check()?,
        Command::Bench { quick, scenarios, replicators, scale } => {
            bench::run(quick, &scenarios, &replicators, &scale).context("bench failed")?
        }
        Command::Torture { args, seeds } => {
            let seeds = seeds.map(|file| if file.as_os_str() == "committed" { torture::default_seeds() } else { file });
            return torture::run(&args, seeds.as_deref());
        }
        Command::Package { install_check } => {
            if install_check {
                package::check::run().context("package install check failed")?;
            } else {
                package::run()?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
