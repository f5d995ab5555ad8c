//! The full test run (what CI runs): setup, release build of the daemons, then every
//! test, with the end-to-end tests serialized because they mount filesystems and
//! start daemons, then the Debian packages built, installed and purged, a short
//! fuzzing run, the alerting rules' checks and unit tests, and the committed
//! torture seeds (skipped with `SLUICE_TORTURE_CI=0`).

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};

use anyhow::Context;

use crate::cargo::{cargo, describe, release_dir, status, target_dir};

/// Set to `0` to leave the torture seed list out of the test run (it takes a few
/// minutes).
const TORTURE_SWITCH: &str = "SLUICE_TORTURE_CI";

/// Totals parsed from libtest's `test result:` lines.
#[derive(Default)]
struct Counts {
    passed: u64,
    failed: u64,
    ignored: u64,
}

/// Seconds each fuzz target runs in the full test run.
const FUZZ_SECONDS: u64 = 15;

pub fn run() -> anyhow::Result<ExitCode> {
    crate::setup::run()?;
    let bin_dir = release_dir();
    let mut failures = Vec::new();

    let mut build = cargo()?;
    build.args(["build", "--release", "--bins"]);
    if !status(&mut build)?.success() {
        failures.push("release build".to_owned());
    }

    let mut counts = Counts::default();
    let mut unit = cargo()?;
    unit.args([
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "sluice-tests",
        "--no-fail-fast",
    ]);
    let mut end_to_end = cargo()?;
    end_to_end.args([
        "test",
        "--release",
        "-p",
        "sluice-tests",
        "--no-fail-fast",
        "--",
        "--test-threads=1",
    ]);
    for (label, command) in [
        ("workspace tests", &mut unit),
        ("end-to-end tests", &mut end_to_end),
    ] {
        command.env("SLUICE_BIN_DIR", &bin_dir);
        if !run_counting(command, &mut counts)? {
            failures.push(label.to_owned());
        }
    }
    // Where the browser test of the status page keeps a screenshot of each state.
    let screenshots = target_dir().join("tmp/status-page");
    if let Ok(shots) = std::fs::read_dir(&screenshots) {
        let mut names: Vec<String> = shots.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        println!("status page screenshots in {}: {}", screenshots.display(), names.join(", "));
    }

    // Packaging reuses the release build above, so this costs seconds.
    match crate::package::check::run() {
        Ok(()) => println!("packages: built, installed, checked and purged"),
        Err(e) => {
            println!("package check failed: {e:#}");
            failures.push("packages".to_owned());
        }
    }

    // Each fuzz target for a short fixed time: long enough to catch a target that
    // no longer holds its invariants on easy inputs, short enough for CI.
    match crate::fuzz::run_for(FUZZ_SECONDS) {
        Ok(results) => {
            for (target, executions) in results {
                println!("fuzz {target}: {executions} executions in {FUZZ_SECONDS} s, nothing found");
            }
        }
        Err(e) => {
            println!("fuzzing failed: {e:#}");
            failures.push("fuzzing".to_owned());
        }
    }

    if let Err(e) = crate::rules::check() {
        println!("alert rules failed: {e:#}");
        failures.push("alert rules".to_owned());
    }

    if std::env::var(TORTURE_SWITCH).is_ok_and(|v| v == "0") {
        println!("torture seeds skipped ({TORTURE_SWITCH}=0)");
    } else {
        let seeds = crate::torture::default_seeds();
        if !crate::torture::run_seeds(&seeds)? {
            failures.push("torture seeds".to_owned());
        }
    }

    println!();
    if counts.ignored > 0 {
        println!("{} test(s) ignored", counts.ignored);
    }
    if failures.is_empty() {
        println!("xtask test: everything passed");
    } else {
        println!("xtask test: FAILED: {}", failures.join(", "));
    }
    println!(
        "summary: {} passed, {} failed",
        counts.passed, counts.failed
    );
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs a `cargo test` command, passing its output through while adding up its
/// `test result:` lines. Returns whether it succeeded.
fn run_counting(command: &mut Command, counts: &mut Counts) -> anyhow::Result<bool> {
    println!("$ {}", describe(command));
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run `{}`", describe(command)))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    for line in BufReader::new(stdout).lines() {
        let line = line.context("cannot read cargo test's output")?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            counts.passed += count_before(result, "passed");
            counts.failed += count_before(result, "failed");
            counts.ignored += count_before(result, "ignored");
        }
    }
    Ok(child.wait()?.success())
}

/// In `ok. 3 passed; 0 failed; 1 ignored; ...`, the number before `label`.
fn count_before(result: &str, label: &str) -> u64 {
    result
        .split(';')
        .map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
        })
        .find_map(|part| part.strip_suffix(label))
        .and_then(|number| number.trim().parse().ok())
        .unwrap_or(0)
}
