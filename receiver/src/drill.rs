//! `sluice-receiver drill`: a writable copy of the standby for a
//! disaster-recovery drill, made while replication keeps running. The running
//! receiver is paused between two operations, the filesystem flushed, and the
//! tree snapshotted (btrfs), or copied sharing extents where the filesystem can
//! (`cp --reflink=auto`: xfs, btrfs) or plainly; then applying resumes. The
//! copy holds exactly a prefix of the master's stream, as a crash would leave
//! it, so a database started on it recovers; nothing done to it reaches the
//! standby.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::apply::STATE_DIR;
use crate::control::{self, PausedAt};
use crate::state::State;

/// btrfs's `statfs` magic number.
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;
/// The inode number of a btrfs subvolume's root directory.
const BTRFS_SUBVOLUME_ROOT_INO: u64 = 256;

/// What a drill made.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DrillReport {
    pub into: PathBuf,
    /// `btrfs snapshot`, or `copy` (extents shared where the filesystem can).
    pub method: String,
    /// The last operation of the master's stream the copy holds.
    pub seq: u64,
    /// When the master captured it (Unix ns).
    pub captured_unix_ns: u64,
    pub at_barrier: bool,
    /// The master's capture time of the newest fsync barrier the copy holds.
    pub barrier_unix_ns: u64,
    /// How long applying was paused (0 when no receiver was running).
    pub paused_seconds: f64,
    pub seconds: f64,
}

/// Makes the drill copy of `root` in `into` (which must not exist, or be an
/// empty directory, outside `root`).
pub async fn drill(root: &Path, into: &Path) -> anyhow::Result<DrillReport> {
    let started = Instant::now();
    let root = std::fs::canonicalize(root).with_context(|| format!("{}", root.display()))?;
    if let Some(parent) = into.parent() {
        let parent = std::fs::canonicalize(if parent.as_os_str().is_empty() { Path::new(".") } else { parent })
            .with_context(|| format!("the parent of {}", into.display()))?;
        if parent.starts_with(&root) {
            bail!("{} is inside the standby {}: replication would treat the copy as part of the tree", into.display(), root.display());
        }
    }
    match std::fs::read_dir(into).map(|mut entries| entries.next().is_none()) {
        Ok(false) => bail!("{} exists and is not empty", into.display()),
        Ok(true) => std::fs::remove_dir(into).with_context(|| format!("{}", into.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("{}", into.display())),
    }
    let paused_at = Instant::now();
    let pause = control::pause(&root).await?;
    let at = match &pause {
        Some(pause) => pause.at,
        None => {
            let position = State::open_existing(&root)
                .and_then(|state| state.load_position())
                .with_context(|| format!("{} holds no receiver state: is it a standby?", root.display()))?;
            PausedAt {
                seq: position.seq,
                captured_unix_ns: position.captured_unix_ns,
                at_barrier: position.at_barrier,
                barrier_unix_ns: position.barrier_unix_ns,
            }
        }
    };
    let dir = std::fs::File::open(&root).with_context(|| format!("opening {}", root.display()))?;
    nix::unistd::syncfs(&dir).with_context(|| format!("flushing the filesystem of {}", root.display()))?;
    let method = if is_btrfs_subvolume(&root)? && same_filesystem(&root, into)? { snapshot(&root, into) } else { copy(&root, into) };
    let paused_seconds = if pause.is_some() { paused_at.elapsed().as_secs_f64() } else { 0.0 };
    drop(pause);
    let method = method?;
    match std::fs::remove_dir_all(into.join(STATE_DIR)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing the standby's state from {}", into.display())),
    }
    Ok(DrillReport {
        into: into.to_owned(),
        method: method.into(),
        seq: at.seq,
        captured_unix_ns: at.captured_unix_ns,
        at_barrier: at.at_barrier,
        barrier_unix_ns: at.barrier_unix_ns,
        paused_seconds,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn is_btrfs_subvolume(root: &Path) -> anyhow::Result<bool> {
    let fs = nix::sys::statfs::statfs(root).with_context(|| format!("statfs {}", root.display()))?;
    let ino = std::fs::metadata(root).with_context(|| format!("{}", root.display()))?.ino();
    #[allow(clippy::unnecessary_cast)]
    Ok(fs.filesystem_type().0 as i64 == BTRFS_SUPER_MAGIC && ino == BTRFS_SUBVOLUME_ROOT_INO)
}

/// True when `into` would be made on `root`'s filesystem.
fn same_filesystem(root: &Path, into: &Path) -> anyhow::Result<bool> {
    let parent = into.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    Ok(std::fs::metadata(root)?.dev() == std::fs::metadata(parent).with_context(|| format!("{}", parent.display()))?.dev())
}

fn snapshot(root: &Path, into: &Path) -> anyhow::Result<&'static str> {
    checked(Command::new("btrfs").args(["subvolume", "snapshot"]).arg(root).arg(into))?;
    Ok("btrfs snapshot")
}

/// Copies every top-level entry but the receiver's own state and `lost+found`.
fn copy(root: &Path, into: &Path) -> anyhow::Result<&'static str> {
    std::fs::create_dir(into).with_context(|| format!("creating {}", into.display()))?;
    let meta = std::fs::metadata(root)?;
    std::os::unix::fs::chown(into, Some(meta.uid()), Some(meta.gid()))?;
    std::fs::set_permissions(into, meta.permissions())?;
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(root).with_context(|| format!("listing {}", root.display()))? {
        let name = entry?.file_name();
        if name != STATE_DIR && name != "lost+found" {
            sources.push(root.join(name));
        }
    }
    if !sources.is_empty() {
        checked(Command::new("cp").args(["-a", "--reflink=auto", "--"]).args(&sources).arg(into))?;
    }
    Ok("copy")
}

fn checked(command: &mut Command) -> anyhow::Result<()> {
    let output = command.output().with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}
