//! Running cargo on the workspace from xtask, with `~/.cargo/bin` on PATH because
//! the agent's build script calls `bpf-linker` from there.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use anyhow::{Context, bail};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits one level below the workspace root")
        .to_owned()
}

/// Where cargo puts artifacts: `$CARGO_TARGET_DIR` when set, else `target/`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// Where `cargo build --release` leaves the daemon binaries.
pub fn release_dir() -> PathBuf {
    target_dir().join("release")
}

/// `~/.cargo/bin` (or `$CARGO_HOME/bin`), where `cargo install` puts bpf-linker.
pub fn cargo_bin_dir() -> PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    cargo_home.join("bin")
}

/// PATH with `dirs` in front (each only once).
pub fn path_with(dirs: &[&Path]) -> anyhow::Result<OsString> {
    let current = std::env::var_os("PATH").unwrap_or_default();
    let mut entries: Vec<PathBuf> = dirs.iter().map(|dir| dir.to_path_buf()).collect();
    entries
        .extend(std::env::split_paths(&current).filter(|entry| !dirs.contains(&entry.as_path())));
    std::env::join_paths(entries).context("cannot build PATH")
}

/// A `cargo` command in the workspace root with `~/.cargo/bin` on PATH.
pub fn cargo() -> anyhow::Result<Command> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace_root())
        .env("PATH", path_with(&[&cargo_bin_dir()])?);
    Ok(command)
}

/// Runs a command, echoing it first, and returns its exit status.
pub fn status(command: &mut Command) -> anyhow::Result<ExitStatus> {
    println!("$ {}", describe(command));
    command
        .status()
        .with_context(|| format!("cannot run `{}`", describe(command)))
}

/// Runs a command, echoing it first, and fails unless it succeeds.
pub fn check(command: &mut Command) -> anyhow::Result<()> {
    let exit = status(command)?;
    if !exit.success() {
        bail!("`{}` failed ({exit})", describe(command));
    }
    Ok(())
}

pub fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `cargo build [--release]` of the default members.
pub fn build(release: bool) -> anyhow::Result<()> {
    let mut command = cargo()?;
    command.arg("build");
    if release {
        command.arg("--release");
    }
    check(&mut command).context("build failed")
}
