//! Small helpers shared by the tests: deterministic data, shell commands, polling.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// `len` pseudo-random bytes, the same for the same `seed`.
///
/// A xorshift64* generator: tests need incompressible, reproducible data, not
/// cryptographic quality, and this keeps `rand` out of the dependency tree.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    // xorshift has a fixed point at zero.
    let mut state = if seed == 0 {
        0x9e37_79b9_7f4a_7c15
    } else {
        seed
    };
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Runs `sh -c cmd` and returns its stdout; fails with its stderr when it exits
/// non-zero.
pub fn run(cmd: &str) -> anyhow::Result<String> {
    let output = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .with_context(|| format!("cannot start `sh -c {cmd}`"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "`{cmd}` failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end(),
            if stdout.is_empty() {
                String::new()
            } else {
                format!("\nstdout: {}", stdout.trim_end())
            }
        );
    }
    Ok(stdout)
}

/// Polls `condition` every 50 ms until it returns `Ok(true)`, failing after
/// `timeout` with `what` in the message. An `Err` from `condition` counts as "not
/// yet" (a daemon that is still starting refuses connections); the last one is
/// reported on timeout.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let last_error = match condition() {
            Ok(true) => return Ok(()),
            Ok(false) => None,
            Err(e) => Some(e),
        };
        if Instant::now() >= deadline {
            return Err(match last_error {
                Some(e) => e.context(format!("timed out after {timeout:?} waiting for {what}")),
                None => anyhow::anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
