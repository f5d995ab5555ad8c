//! The packages' install check (a step of `cargo xtask test`, or `cargo xtask
//! package --install-check`): build them, install them with dpkg, check what they
//! put where, and purge them again. Needs root, not a running systemd.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail, ensure};

use super::{DAEMONS, Deb, MONITORING_FILES, MONITORING_PACKAGE, STATE_DIR, stdout_of};
use crate::cargo::{check as run_checked, workspace_root};

/// Every package this check may install and purge.
fn package_names() -> Vec<&'static str> {
    DAEMONS.iter().map(|d| d.name).chain([MONITORING_PACKAGE]).collect()
}

pub fn run() -> anyhow::Result<()> {
    // Purging at the end would take away packages an operator installed.
    for package in package_names() {
        if installed(package)? {
            bail!("{package} is installed on this machine already; the check would replace and purge it (remove it first)");
        }
    }
    let debs = super::run()?;
    let state_dir_existed = Path::new(STATE_DIR).exists();
    let checked = install(&debs).and_then(|()| check_installed(&debs, state_dir_existed));
    let purged = purge(&debs, state_dir_existed);
    if let (Err(_), Err(purge_error)) = (&checked, &purged) {
        println!("purging failed too: {purge_error:#}");
    }
    checked.and(purged)
}

fn install(debs: &[Deb]) -> anyhow::Result<()> {
    let mut dpkg = Command::new("dpkg");
    dpkg.arg("-i").args(debs.iter().map(|deb| &deb.file));
    let output = stdout_of(&mut dpkg)?;
    print!("{output}");
    println!("ok: dpkg installed {}", debs.iter().map(|deb| deb.package.as_str()).collect::<Vec<_>>().join(", "));
    Ok(())
}

fn check_installed(debs: &[Deb], state_dir_existed: bool) -> anyhow::Result<()> {
    for deb in debs {
        ensure!(installed(&deb.package)?, "dpkg does not list {} as installed", deb.package);
    }
    for daemon in &DAEMONS {
        let name = daemon.name;
        let deb = debs.iter().find(|deb| deb.package == name).with_context(|| format!("{name} was not built"))?;

        let binary = format!("/usr/bin/{name}");
        expect_mode(&binary, 0o755)?;
        let version = stdout_of(Command::new(&binary).arg("--version"))?;
        ensure!(
            version.trim() == format!("{name} {}", deb.version),
            "`{binary} --version` printed {:?}, not the package's version {}",
            version.trim(),
            deb.version
        );
        println!("ok: {binary} --version: {}", version.trim());

        let page = format!("/usr/share/man/man1/{name}.1.gz");
        expect_mode(&page, 0o644)?;
        expect_mode(&format!("/usr/share/man/man1/{name}-run.1.gz"), 0o644)?;
        ensure!(!Path::new(&format!("/usr/share/man/man1/{name}-docs.1.gz")).exists(), "the hidden docs command got a man page");
        if Command::new("man").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success()) {
            let found = stdout_of(Command::new("man").args(["-w", name]))?;
            ensure!(found.trim() == page, "`man -w {name}` found {:?}, not {page}", found.trim());
            println!("ok: man -w {name}: {}", found.trim());
        }

        let unit = format!("/lib/systemd/system/{name}.service");
        expect_same(&unit, &workspace_root().join("deploy/systemd").join(format!("{name}.service")))?;
        for extra in daemon.extra_units {
            expect_same(&format!("/lib/systemd/system/{extra}"), &workspace_root().join("deploy/systemd").join(extra))?;
        }
        let example = format!("/etc/sluice/{}.example", daemon.config_example);
        expect_same(&example, &workspace_root().join("deploy/config").join(daemon.config_example))?;
        for completion in [
            format!("/usr/share/bash-completion/completions/{name}"),
            format!("/usr/share/zsh/vendor-completions/_{name}"),
            format!("/usr/share/fish/vendor_completions.d/{name}.fish"),
        ] {
            expect_mode(&completion, 0o644)?;
            let text = fs::read_to_string(&completion).with_context(|| format!("reading {completion}"))?;
            ensure!(text.contains("run"), "{completion} does not complete the run command");
        }
    }
    if debs.iter().any(|deb| deb.package == MONITORING_PACKAGE) {
        for (source, installed) in MONITORING_FILES {
            let source = workspace_root().join(source);
            if source.is_file() {
                expect_same(&format!("/{installed}"), &source)?;
            }
        }
    }
    if state_dir_existed {
        ensure!(Path::new(STATE_DIR).is_dir(), "{STATE_DIR} is not a directory");
        println!("ok: {STATE_DIR} exists (it did before, its mode left as it was)");
    } else {
        expect_mode(STATE_DIR, 0o700)?;
    }
    Ok(())
}

/// Purges every package, then checks they left nothing of theirs behind.
fn purge(debs: &[Deb], state_dir_existed: bool) -> anyhow::Result<()> {
    let mut dpkg = Command::new("dpkg");
    dpkg.arg("--purge").args(debs.iter().map(|deb| &deb.package));
    run_checked(&mut dpkg).context("purging the packages")?;
    for deb in debs {
        ensure!(!installed(&deb.package)?, "{} is still installed after dpkg --purge", deb.package);
    }
    for daemon in &DAEMONS {
        let extra = daemon.extra_units.iter().map(|unit| format!("/lib/systemd/system/{unit}"));
        for leftover in [format!("/usr/bin/{}", daemon.name), format!("/lib/systemd/system/{}.service", daemon.name)].into_iter().chain(extra) {
            ensure!(!Path::new(&leftover).exists(), "{leftover} is still there after dpkg --purge");
        }
    }
    if !state_dir_existed {
        ensure!(!Path::new(STATE_DIR).exists(), "{STATE_DIR} is still there after dpkg --purge (it was empty)");
    }
    println!("ok: dpkg purged {}; nothing of them is left", debs.iter().map(|deb| deb.package.as_str()).collect::<Vec<_>>().join(", "));
    Ok(())
}

/// Whether dpkg has `package` installed (`dpkg-query` knows nothing of it otherwise).
fn installed(package: &str) -> anyhow::Result<bool> {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .context("cannot run dpkg-query")?;
    Ok(output.status.success() && String::from_utf8_lossy(&output.stdout).ends_with(" installed"))
}

fn expect_mode(path: &str, mode: u32) -> anyhow::Result<()> {
    let metadata = fs::metadata(path).with_context(|| format!("{path} is not installed"))?;
    let actual = metadata.permissions().mode() & 0o7777;
    ensure!(actual == mode, "{path} has mode {actual:o}, not {mode:o}");
    println!("ok: {path} (mode {mode:o})");
    Ok(())
}

/// `installed` exists with mode 0644 and holds what `source` in the repository does.
fn expect_same(installed: &str, source: &Path) -> anyhow::Result<()> {
    expect_mode(installed, 0o644)?;
    let theirs = fs::read(installed).with_context(|| format!("reading {installed}"))?;
    let ours = fs::read(source).with_context(|| format!("reading {}", source.display()))?;
    ensure!(theirs == ours, "{installed} differs from {}", source.display());
    Ok(())
}
