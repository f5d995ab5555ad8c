//! Builds the eBPF object (`../ebpf`, crate `sluice-ebpf`) for the BPF target so
//! `capture` can embed it from `OUT_DIR/sluice-ebpf`.

use std::{env, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir
        .join("../ebpf")
        .canonicalize()
        .context("locating the eBPF crate")?;
    let common_dir = manifest_dir
        .join("../common/src")
        .canonicalize()
        .context("locating sluice-common")?;
    println!("cargo:rerun-if-changed={}", common_dir.display());

    // aya-build runs `cargo build --package sluice-ebpf` in the current directory;
    // the eBPF crate is its own workspace (excluded from ours), so it must run there.
    env::set_current_dir(&ebpf_dir).context("entering the eBPF crate")?;

    // aya-ebpf uses unstable features and `core` must be built for bpfel-unknown-none;
    // aya-build only passes `-Z build-std=core` when this says unstable is allowed,
    // which lets the pinned stable toolchain do it.
    // SAFETY: the build script is single-threaded at this point.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };

    // aya-build turns every stderr line of the inner cargo into a build warning;
    // keep that to real diagnostics rather than "Compiling ..." progress.
    // SAFETY: as above.
    unsafe { env::set_var("CARGO_TERM_QUIET", "true") };

    // bpf-linker is installed with `cargo install`; make sure the child cargo finds it
    // even when ~/.cargo/bin is not on the caller's PATH.
    let cargo_bin = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|home| home.join("bin"));
    if let Some(cargo_bin) = cargo_bin {
        let path = env::var_os("PATH").unwrap_or_default();
        let mut dirs: Vec<PathBuf> = env::split_paths(&path).collect();
        if !dirs.contains(&cargo_bin) {
            dirs.push(cargo_bin);
            let joined = env::join_paths(dirs).context("building PATH")?;
            // SAFETY: as above.
            unsafe { env::set_var("PATH", joined) };
        }
    }

    // Build with the toolchain running this build (rustup sets RUSTUP_TOOLCHAIN),
    // so a pinned stable does not pull in nightly.
    let toolchain = env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".to_owned());
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: "sluice-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
}
