//! `cargo xtask fuzz --minutes M`: runs each cargo-fuzz target of `fuzz/` for
//! its share of M minutes and reports how many inputs each executed.
//!
//! cargo-fuzz needs nightly compiler flags (`-Zsanitizer`); the stable toolchain
//! accepts them with `RUSTC_BOOTSTRAP=1`. cargo-fuzz itself is installed from
//! crates.io when missing.

use std::process::Stdio;

use anyhow::{Context, bail};

use crate::cargo::{cargo, status, workspace_root};

/// The targets in `fuzz/fuzz_targets/`.
pub const TARGETS: [&str; 2] = ["decode", "apply"];

/// Runs every target for `seconds` seconds; returns (target, executions) pairs.
pub fn run_for(seconds: u64) -> anyhow::Result<Vec<(&'static str, u64)>> {
    ensure_cargo_fuzz()?;
    let mut results = Vec::new();
    for target in TARGETS {
        let artifacts = workspace_root().join("fuzz/artifacts").join(target);
        std::fs::create_dir_all(&artifacts).context("creating the fuzz artifacts directory")?;
        let mut command = cargo()?;
        command
            .args(["fuzz", "run", target, "--release", "--"])
            .arg(format!("-max_total_time={seconds}"))
            .arg("-rss_limit_mb=2048")
            .arg("-print_final_stats=1")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .env("RUSTC_BOOTSTRAP", "1")
            .env_remove("CARGO_TARGET_DIR")
            .stderr(Stdio::piped());
        println!("$ cargo fuzz run {target} (for {seconds} s)");
        let output = command.output().with_context(|| format!("cannot run the fuzz target {target}"))?;
        let log = String::from_utf8_lossy(&output.stderr);
        let executed = log
            .lines()
            .find_map(|line| line.strip_prefix("stat::number_of_executed_units:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        if !output.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!("fuzz target {target} failed after {executed} executions (inputs in {}):\n{}", artifacts.display(), tail.join("\n"));
        }
        println!("fuzz target {target}: {executed} executions, nothing found");
        results.push((target, executed));
    }
    Ok(results)
}

/// `cargo xtask fuzz --minutes M`.
pub fn run(minutes: f64) -> anyhow::Result<()> {
    let seconds = ((minutes * 60.0) / TARGETS.len() as f64).ceil().max(1.0) as u64;
    let results = run_for(seconds)?;
    let total: u64 = results.iter().map(|(_, n)| n).sum();
    println!("fuzzing: {total} executions over {} targets, nothing found", results.len());
    Ok(())
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let present = cargo()?.args(["fuzz", "--version"]).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    let mut install = cargo()?;
    install.args(["install", "cargo-fuzz", "--locked"]);
    if !status(&mut install)?.success() {
        bail!("cannot install cargo-fuzz");
    }
    Ok(())
}
