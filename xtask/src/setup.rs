//! Making a fresh Debian 12 machine able to build and test sluice. Each step checks
//! first and skips what is present, so it is cheap to run before every test run.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::cargo::{cargo, cargo_bin_dir, check, path_with};

/// Debian packages: LLVM 22 for bpf-linker (rustc 1.95 uses LLVM 22), filesystem
/// tools for the loop-mounted test filesystems, network tools for the namespace
/// tests, rsync/acl/attr for side-by-side checks, PostgreSQL for the tests that
/// start a database on a promoted standby, and Prometheus (with promtool) for the
/// alerting rules' checks and the test that runs them, and Chromium with
/// chromedriver for the status page's browser test.
const DEBIAN_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "btrfs-progs",
    "xfsprogs",
    "e2fsprogs",
    "iproute2",
    "iptables",
    "acl",
    "fio",
    "attr",
    "rsync",
    "python3",
    "util-linux",
    "postgresql-15",
    "prometheus",
    "chromium",
    "chromium-driver",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_BIN_DIR: &str = "/usr/lib/llvm-22/bin";
const TRACEFS: &str = "/sys/kernel/tracing";

pub fn run() -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "`cargo xtask setup` must run as root: it installs Debian packages, mounts \
             tracefs, and the tests it prepares for load BPF programs and mount filesystems"
        );
    }
    debian_packages()?;
    rust_src()?;
    bpf_linker()?;
    tracefs()?;
    println!("setup: done");
    Ok(())
}

fn debian_packages() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for package in DEBIAN_PACKAGES {
        if debian_package_installed(package)? {
            println!("ok: {package} already present");
        } else {
            println!("installing {package}");
            missing.push(*package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    check(apt_get().arg("update")).context("apt-get update failed")?;
    check(
        apt_get()
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )
    .with_context(|| format!("cannot install {}", missing.join(" ")))
}

fn debian_package_installed(package: &str) -> anyhow::Result<bool> {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .context("cannot run dpkg-query (is this Debian?)")?;
    Ok(output.status.success() && String::from_utf8_lossy(&output.stdout).ends_with(" installed"))
}

fn apt_get() -> Command {
    let mut command = Command::new("apt-get");
    command.env("DEBIAN_FRONTEND", "noninteractive");
    command
}

fn rust_src() -> anyhow::Result<()> {
    // Checked for the toolchain this workspace builds with, which is the one running
    // here when xtask was started through `cargo xtask`.
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed"])
        .current_dir(crate::cargo::workspace_root())
        .output()
        .context("cannot run rustup")?;
    if !installed.status.success() {
        bail!(
            "`rustup component list --installed` failed: {}",
            String::from_utf8_lossy(&installed.stderr)
        );
    }
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|line| line.starts_with("rust-src"))
    {
        println!("ok: rust-src already present");
        return Ok(());
    }
    println!("installing rust-src");
    check(
        Command::new("rustup")
            .args(["component", "add", "rust-src"])
            .current_dir(crate::cargo::workspace_root()),
    )
}

fn bpf_linker() -> anyhow::Result<()> {
    let cargo_bin = cargo_bin_dir();
    let present = Command::new("bpf-linker")
        .arg("--version")
        .env("PATH", path_with(&[&cargo_bin])?)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if present {
        println!("ok: bpf-linker already present");
        return Ok(());
    }
    println!(
        "installing bpf-linker {BPF_LINKER_VERSION} (builds against LLVM 22, takes a few minutes)"
    );
    // Without LLVM 22's bin dir first, bpf-linker's build finds no llvm-config and
    // fails with "unable to find library -lLLVM".
    let mut install = cargo()?;
    install
        .env("PATH", path_with(&[Path::new(LLVM_BIN_DIR), &cargo_bin])?)
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", "llvm-22"]);
    check(&mut install).context("cannot install bpf-linker")
}

fn tracefs() -> anyhow::Result<()> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("cannot read /proc/self/mounts")?;
    let mounted = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next(), fields.next(), fields.next());
        target == Some(TRACEFS) && fstype == Some("tracefs")
    });
    if mounted {
        println!("ok: tracefs already mounted at {TRACEFS}");
        return Ok(());
    }
    // Classic tracepoints (sys_enter_renameat2, ...) attach through tracefs.
    println!("mounting tracefs at {TRACEFS}");
    check(Command::new("mount").args(["-t", "tracefs", "tracefs", TRACEFS]))
        .context("cannot mount tracefs")
}
