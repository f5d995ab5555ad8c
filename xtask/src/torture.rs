//! `cargo xtask torture`: the randomized differential exerciser against the release
//! daemons, one exercise or every entry of the committed seed list (which is what
//! `cargo xtask test` runs unless `SLUICE_TORTURE_CI=0`).

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::Context;
use sluice_tests::torture::{TortureArgs, seeds};

use crate::cargo::{cargo, check, describe, release_dir};

/// Sets up, builds the release binaries (the daemons and `sluice-torture`), then
/// runs one exercise, or every entry of `seeds_file`.
pub fn run(args: &TortureArgs, seeds_file: Option<&Path>) -> anyhow::Result<ExitCode> {
    crate::setup::run()?;
    check(cargo()?.args(["build", "--release", "--bins"])).context("release build failed")?;
    let passed = match seeds_file {
        Some(file) => run_seeds(file)?,
        None => run_one(args)?,
    };
    Ok(if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Runs `sluice-torture` with `args` from the release directory; true if it passed.
pub fn run_one(args: &TortureArgs) -> anyhow::Result<bool> {
    let bin_dir = release_dir();
    let mut command = Command::new(bin_dir.join("sluice-torture"));
    command.args(args.to_args()).env("SLUICE_BIN_DIR", &bin_dir);
    println!("$ {}", describe(&command));
    let status = command.status().with_context(|| format!("cannot run `{}`", describe(&command)))?;
    Ok(status.success())
}

/// Runs every entry of a seeds file (random runs, then minimal repros), each in
/// its own exercise, and prints a table of the results; true if all passed.
pub fn run_seeds(file: &Path) -> anyhow::Result<bool> {
    let entries = seeds::load(file)?;
    let mut results = Vec::new();
    for entry in &entries {
        println!("torture: {}", entry.describe());
        let started = Instant::now();
        let passed = run_one(&entry.args()?)?;
        results.push((entry.describe(), passed, started.elapsed()));
    }
    println!("torture seeds ({}):", file.display());
    for (what, passed, took) in &results {
        println!("  {} {what} ({:.0} s)", if *passed { "pass" } else { "FAIL" }, took.as_secs_f64());
    }
    Ok(results.iter().all(|(_, passed, _)| *passed))
}

/// The committed seed list.
pub fn default_seeds() -> std::path::PathBuf {
    seeds::default_path()
}
