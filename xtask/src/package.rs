//! `cargo xtask package`: the Debian packages of the two daemons, staged from the
//! release binaries, the man pages and completions their hidden `docs` command
//! writes, and `deploy/`, then built with `dpkg-deb` into `<target>/debian/`.
//!
//! Binaries are installed with their debug information stripped and their symbol
//! table kept, so a panic's backtrace still names functions.

pub mod check;
mod control;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::cargo::{cargo, check as run_checked, describe, release_dir, target_dir, workspace_root};

/// A daemon and what its package installs besides the binary.
pub struct Daemon {
    /// The package, the binary and the crate have this name.
    pub name: &'static str,
    /// `deploy/config/<file>`, installed as `/etc/sluice/<file>.example`.
    pub config_example: &'static str,
    /// The control file's one-line description.
    pub summary: &'static str,
    /// Further systemd units in `deploy/systemd/` the package installs.
    pub extra_units: &'static [&'static str],
}

pub const DAEMONS: [Daemon; 2] = [
    Daemon {
        name: "sluice-agent",
        config_example: "agent.toml",
        summary: "sluice master daemon: captures changes with eBPF, streams them to a standby",
        extra_units: &[],
    },
    Daemon {
        name: "sluice-receiver",
        config_example: "receiver.toml",
        summary: "sluice standby daemon: verifies and applies replicated changes in place",
        // The relay to standbys further down a chain, as a service of its own.
        extra_units: &["sluice-relay.service"],
    },
];

/// The package of the dashboard and alerting rules, built when `deploy/` has them.
pub const MONITORING_PACKAGE: &str = "sluice-monitoring";

/// Monitoring files: where they are in the repository, where the package puts them.
pub const MONITORING_FILES: [(&str, &str); 2] = [
    ("deploy/grafana/sluice.json", "usr/share/sluice/grafana/sluice.json"),
    ("deploy/prometheus/sluice-rules.yml", "usr/share/sluice/prometheus/sluice-rules.yml"),
];

/// Created by the postinst scripts for the identities and the agent's journal.
pub const STATE_DIR: &str = "/var/lib/sluice";

/// Where the completion scripts `docs` writes go: (file written, installed path).
/// `{}` is the binary's name.
const COMPLETIONS: [(&str, &str); 3] = [
    ("{}.bash", "usr/share/bash-completion/completions/{}"),
    ("_{}", "usr/share/zsh/vendor-completions/_{}"),
    ("{}.fish", "usr/share/fish/vendor_completions.d/{}.fish"),
];

const MAINTAINER: &str = "sluice developers <sluice@example.invalid>";

/// A built package.
pub struct Deb {
    pub package: String,
    pub version: String,
    pub file: PathBuf,
}

/// `cargo xtask package`: builds the release binaries, then the packages; prints
/// and returns them.
pub fn run() -> anyhow::Result<Vec<Deb>> {
    let mut build = cargo()?;
    build.args(["build", "--release", "--bins"]);
    run_checked(&mut build).context("release build failed")?;

    let crates = crate_metadata()?;
    let arch = stdout_of(Command::new("dpkg").arg("--print-architecture"))?.trim().to_owned();
    let out_dir = target_dir().join("debian");
    let staging = out_dir.join("staging");
    if staging.exists() {
        fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    remove_old_packages(&out_dir)?;

    let mut debs = Vec::new();
    for daemon in &DAEMONS {
        let metadata = crate_named(&crates, daemon.name)?;
        let root = staging.join(daemon.name);
        stage_daemon(daemon, metadata, &arch, &release_dir(), &staging.join("docs").join(daemon.name), &root)?;
        debs.push(dpkg_deb(&root, daemon.name, &metadata.version, &arch, &out_dir)?);
    }
    // The dashboard and rules follow the daemons' metrics, released with them.
    let version = &crate_named(&crates, "sluice-receiver")?.version;
    let root = staging.join(MONITORING_PACKAGE);
    if stage_monitoring(version, &root)? {
        debs.push(dpkg_deb(&root, MONITORING_PACKAGE, version, "all", &out_dir)?);
    }

    for deb in &debs {
        let size = fs::metadata(&deb.file).map(|m| m.len()).unwrap_or(0);
        println!("built {} ({} KiB)", deb.file.display(), size.div_ceil(1024));
    }
    Ok(debs)
}

/// A workspace crate as `cargo metadata` describes it.
struct CrateMetadata {
    name: String,
    version: String,
    description: String,
}

fn crate_metadata() -> anyhow::Result<Vec<CrateMetadata>> {
    let mut command = cargo()?;
    command.args(["metadata", "--no-deps", "--format-version", "1"]);
    let text = stdout_of(&mut command)?;
    let json: serde_json::Value = serde_json::from_str(&text).context("parsing cargo metadata's output")?;
    let packages = json["packages"].as_array().context("cargo metadata printed no packages")?;
    Ok(packages
        .iter()
        .map(|p| CrateMetadata {
            name: p["name"].as_str().unwrap_or_default().to_owned(),
            version: p["version"].as_str().unwrap_or_default().to_owned(),
            description: p["description"].as_str().unwrap_or_default().to_owned(),
        })
        .collect())
}

fn crate_named<'a>(crates: &'a [CrateMetadata], name: &str) -> anyhow::Result<&'a CrateMetadata> {
    crates.iter().find(|c| c.name == name).with_context(|| format!("cargo metadata lists no crate {name}"))
}

/// Packages of an earlier run would be installed too by `dpkg -i target/debian/*.deb`.
fn remove_old_packages(out_dir: &Path) -> anyhow::Result<()> {
    let Ok(entries) = fs::read_dir(out_dir) else { return Ok(()) };
    for entry in entries {
        let path = entry.context("listing the packages directory")?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("sluice-") && name.ends_with(".deb") {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Lays out everything `daemon`'s package installs under `root`, and its `DEBIAN/`.
fn stage_daemon(
    daemon: &Daemon,
    metadata: &CrateMetadata,
    arch: &str,
    bin_dir: &Path,
    docs_dir: &Path,
    root: &Path,
) -> anyhow::Result<()> {
    let name = daemon.name;
    let unit = workspace_root().join("deploy/systemd").join(format!("{name}.service"));
    if !unit.is_file() {
        bail!("{} is missing: the package installs it as the daemon's systemd unit", unit.display());
    }
    let binary = bin_dir.join(name);
    if !binary.is_file() {
        bail!("{} is missing: the release build did not make it", binary.display());
    }

    let installed_binary = staged_path(root, &format!("usr/bin/{name}"))?;
    run_checked(Command::new("strip").arg("--strip-debug").arg("-o").arg(&installed_binary).arg(&binary))
        .with_context(|| format!("stripping {}", binary.display()))?;
    set_mode(&installed_binary, 0o755)?;
    install(&unit, root, &format!("lib/systemd/system/{name}.service"))?;
    for extra in daemon.extra_units {
        let unit = workspace_root().join("deploy/systemd").join(extra);
        if !unit.is_file() {
            bail!("{} is missing: the {name} package installs it", unit.display());
        }
        install(&unit, root, &format!("lib/systemd/system/{extra}"))?;
    }
    let example = workspace_root().join("deploy/config").join(daemon.config_example);
    install(&example, root, &format!("etc/sluice/{}.example", daemon.config_example))?;

    run_checked(Command::new(&binary).arg("docs").arg(docs_dir).stdout(Stdio::null()))
        .with_context(|| format!("writing the man pages and completions of {name}"))?;
    let pages = man_pages(&docs_dir.join("man"))?;
    if !pages.iter().any(|page| page.file_name().is_some_and(|f| f == format!("{name}.1").as_str())) {
        bail!("`{name} docs` wrote no {name}.1");
    }
    for page in pages {
        let file = page.file_name().context("a man page has no name")?.to_string_lossy().into_owned();
        let target = staged_path(root, &format!("usr/share/man/man1/{file}.gz"))?;
        gzip(&page, &target)?;
        set_mode(&target, 0o644)?;
    }
    for (written, installed) in COMPLETIONS {
        let source = docs_dir.join("completions").join(written.replace("{}", name));
        install(&source, root, &installed.replace("{}", name))?;
    }

    let depends = shared_library_depends(&binary)?;
    let fields = control::Fields {
        package: name,
        version: &metadata.version,
        arch,
        maintainer: MAINTAINER,
        installed_kib: installed_size_kib(root)?,
        depends: Some(&depends),
        summary: daemon.summary,
        description: &metadata.description,
    };
    let scripts = control::maintainer_scripts(&format!("{name}.service"));
    write_control(root, &fields.render(), &scripts)
}

/// Stages the monitoring package from what `deploy/` has; false when it has none
/// of the files (nothing to package).
fn stage_monitoring(version: &str, root: &Path) -> anyhow::Result<bool> {
    let mut staged = 0;
    for (source, installed) in MONITORING_FILES {
        let source = workspace_root().join(source);
        if source.is_file() {
            install(&source, root, installed)?;
            staged += 1;
        } else {
            println!("note: {} is absent; {MONITORING_PACKAGE} goes without /{installed}", source.display());
        }
    }
    if staged == 0 {
        println!("note: no monitoring files in deploy/; {MONITORING_PACKAGE} is not built");
        return Ok(false);
    }
    let fields = control::Fields {
        package: MONITORING_PACKAGE,
        version,
        arch: "all",
        maintainer: MAINTAINER,
        installed_kib: installed_size_kib(root)?,
        depends: None,
        summary: "sluice Grafana dashboard and Prometheus alerting rules",
        description: "The dashboard and the alerting rules for the metrics of sluice-agent and sluice-receiver, \
                      under /usr/share/sluice/, to import into Grafana and Prometheus.",
    };
    write_control(root, &fields.render(), &[])?;
    Ok(true)
}

/// Writes `DEBIAN/control` and, for a daemon, its maintainer scripts.
fn write_control(root: &Path, control: &str, scripts: &[(&str, String)]) -> anyhow::Result<()> {
    let debian = root.join("DEBIAN");
    fs::create_dir_all(&debian).with_context(|| format!("creating {}", debian.display()))?;
    set_mode(&debian, 0o755)?;
    write_file(&debian.join("control"), control, 0o644)?;
    for (name, text) in scripts {
        write_file(&debian.join(name), text, 0o755)?;
    }
    Ok(())
}

/// `dpkg-deb --build` of the staged `root` into `out_dir`.
fn dpkg_deb(root: &Path, package: &str, version: &str, arch: &str, out_dir: &Path) -> anyhow::Result<Deb> {
    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let file = out_dir.join(format!("{package}_{version}_{arch}.deb"));
    run_checked(Command::new("dpkg-deb").args(["--build", "--root-owner-group"]).arg(root).arg(&file).stdout(Stdio::null()))
        .with_context(|| format!("building {}", file.display()))?;
    Ok(Deb { package: package.to_owned(), version: version.to_owned(), file })
}

/// The man pages `docs` wrote, sorted.
fn man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut pages = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry.with_context(|| format!("listing {}", dir.display()))?.path();
        if path.extension().is_some_and(|e| e == "1") {
            pages.push(path);
        }
    }
    pages.sort();
    Ok(pages)
}

/// `root/relative`, its parent directories created with mode 0755.
fn staged_path(root: &Path, relative: &str) -> anyhow::Result<PathBuf> {
    let path = root.join(relative);
    let mut dir = root.to_owned();
    for part in Path::new(relative).parent().into_iter().flat_map(Path::components) {
        dir.push(part);
        if !dir.is_dir() {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // Independent of the umask: dpkg keeps these modes on the target machine.
        set_mode(&dir, 0o755)?;
    }
    set_mode(root, 0o755)?;
    Ok(path)
}

/// Copies `source` to `root/relative` with mode 0644.
fn install(source: &Path, root: &Path, relative: &str) -> anyhow::Result<()> {
    let target = staged_path(root, relative)?;
    fs::copy(source, &target).with_context(|| format!("copying {} to {}", source.display(), target.display()))?;
    set_mode(&target, 0o644)
}

fn write_file(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    set_mode(path, mode)
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {mode:o} {}", path.display()))
}

/// `gzip -9n`: no name or time stamp inside, so the same page compresses the same.
fn gzip(source: &Path, target: &Path) -> anyhow::Result<()> {
    let output = fs::File::create(target).with_context(|| format!("creating {}", target.display()))?;
    run_checked(Command::new("gzip").args(["-9n", "--stdout"]).arg(source).stdout(output))
        .with_context(|| format!("compressing {}", source.display()))
}

/// The control file's `Installed-Size`: KiB of everything but `DEBIAN/`.
fn installed_size_kib(root: &Path) -> anyhow::Result<u64> {
    fn bytes(dir: &Path) -> anyhow::Result<u64> {
        let mut total = 0;
        for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let kind = entry.file_type().with_context(|| format!("inspecting {}", entry.path().display()))?;
            if kind.is_dir() {
                if entry.file_name() != "DEBIAN" {
                    total += bytes(&entry.path())?;
                }
            } else {
                total += entry.metadata().with_context(|| format!("inspecting {}", entry.path().display()))?.len();
            }
        }
        Ok(total)
    }
    Ok(bytes(root)?.div_ceil(1024))
}

/// The `Depends` of a binary: the package of each shared library `ldd` resolves,
/// with `libc6` at least as new as the newest glibc symbol version it uses.
fn shared_library_depends(binary: &Path) -> anyhow::Result<String> {
    let ldd = stdout_of(Command::new("ldd").arg(binary))?;
    let mut packages = BTreeSet::new();
    for line in ldd.lines() {
        if line.contains("not found") {
            bail!("{}: a shared library is missing: {}", binary.display(), line.trim());
        }
        if let Some(library) = library_path(line) {
            packages.insert(owning_package(Path::new(library))?);
        }
    }
    let glibc = newest_glibc_version(&stdout_of(Command::new("objdump").arg("-T").arg(binary))?);
    Ok(packages
        .into_iter()
        .map(|package| match &glibc {
            Some(version) if package == "libc6" => format!("libc6 (>= {version})"),
            _ => package,
        })
        .collect::<Vec<_>>()
        .join(", "))
}

/// The resolved path in a line of `ldd`'s output (none for the vDSO).
fn library_path(line: &str) -> Option<&str> {
    let line = line.trim();
    let resolved = line.split_once("=>").map_or(line, |(_, right)| right.trim());
    resolved.split_whitespace().next().filter(|path| path.starts_with('/'))
}

/// The installed package that owns `library` (`dpkg -S`), trying the path with
/// and without symbolic links resolved since merged `/usr` gives files two names.
fn owning_package(library: &Path) -> anyhow::Result<String> {
    let mut candidates = vec![library.to_owned()];
    if let Ok(real) = fs::canonicalize(library) {
        candidates.push(real);
    }
    for candidate in &candidates {
        let output = Command::new("dpkg").arg("-S").arg(candidate).stderr(Stdio::null()).output().context("running dpkg -S")?;
        if output.status.success() {
            let text = String::from_utf8_lossy(&output.stdout);
            // `libc6:amd64: /lib/x86_64-linux-gnu/libc.so.6`
            let package = text.split([':', ',', ' ']).next().unwrap_or_default().trim();
            if !package.is_empty() {
                return Ok(package.to_owned());
            }
        }
    }
    bail!("no installed package owns {} (dpkg -S)", library.display())
}

/// The newest `GLIBC_x.y[.z]` symbol version in `objdump -T` output.
fn newest_glibc_version(symbols: &str) -> Option<String> {
    symbols
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|word| word.strip_prefix("GLIBC_"))
        .filter_map(|version| {
            let parts: Result<Vec<u32>, _> = version.split('.').map(str::parse).collect();
            parts.ok().map(|parts| (parts, version))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, version)| version.to_owned())
}

/// Runs `command` (echoed first) and returns its standard output; fails unless it succeeds.
fn stdout_of(command: &mut Command) -> anyhow::Result<String> {
    println!("$ {}", describe(command));
    let output = command.stderr(Stdio::inherit()).output().with_context(|| format!("cannot run `{}`", describe(command)))?;
    if !output.status.success() {
        bail!("`{}` failed ({})", describe(command), output.status);
    }
    String::from_utf8(output.stdout).with_context(|| format!("`{}` printed something not UTF-8", describe(command)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_paths_from_ldd() {
        assert_eq!(library_path("\tlinux-vdso.so.1 (0x00007ffd1c5f2000)"), None);
        assert_eq!(
            library_path("\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0e2c400000)"),
            Some("/lib/x86_64-linux-gnu/libc.so.6")
        );
        assert_eq!(library_path("\t/lib64/ld-linux-x86-64.so.2 (0x00007f0e2c7c5000)"), Some("/lib64/ld-linux-x86-64.so.2"));
    }

    #[test]
    fn newest_glibc_version_compares_numbers_not_text() {
        let symbols = "0000 DF *UND* 0000 (GLIBC_2.9) a\n0000 DF *UND* 0000 GLIBC_2.34 b\n\
                       0000 DF *UND* 0000 (GLIBC_2.2.5) c\n0000 DF *UND* 0000 GLIBC_PRIVATE d\n";
        assert_eq!(newest_glibc_version(symbols).as_deref(), Some("2.34"));
        assert_eq!(newest_glibc_version("no versions"), None);
    }
}
