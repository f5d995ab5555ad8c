//! Scratch filesystems on loop devices, so tests see real ext4/btrfs/XFS semantics
//! (inode numbers, hardlinks, ns mtimes, `lost+found`) without touching the host's.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tempfile::TempDir;

use crate::util::run;

/// Which `mkfs` to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FsKind {
    #[default]
    Ext4,
    Btrfs,
    /// Needs an image of at least 300 MiB (mkfs.xfs refuses smaller ones).
    Xfs,
}

impl FsKind {
    /// The type name `mount` and `/proc/self/mounts` use.
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Ext4 => "ext4",
            FsKind::Btrfs => "btrfs",
            FsKind::Xfs => "xfs",
        }
    }

    /// Every kind, in the order tests and tools list them.
    pub const ALL: [FsKind; 3] = [FsKind::Ext4, FsKind::Btrfs, FsKind::Xfs];

    fn mkfs_command(self, image: &Path, extra: &str) -> String {
        let (mkfs, force) = match self {
            FsKind::Ext4 => ("mkfs.ext4", "-F"),
            FsKind::Btrfs => ("mkfs.btrfs", "-f"),
            FsKind::Xfs => ("mkfs.xfs", "-f"),
        };
        let extra = if extra.is_empty() { String::new() } else { format!("{extra} ") };
        format!("{mkfs} -q {force} {extra}{}", shell_quote(image))
    }
}

impl std::str::FromStr for FsKind {
    type Err = anyhow::Error;

    fn from_str(name: &str) -> anyhow::Result<FsKind> {
        FsKind::ALL
            .into_iter()
            .find(|kind| kind.name() == name)
            .with_context(|| format!("unknown filesystem `{name}` (ext4, btrfs or xfs)"))
    }
}

impl std::fmt::Display for FsKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A filesystem image in a temporary directory, mounted with `-o loop`.
///
/// Dropping it unmounts (lazily if something still holds it busy) and deletes the
/// image. Stop any daemon using the mount before dropping it.
pub struct LoopFs {
    kind: FsKind,
    mountpoint: PathBuf,
    image: PathBuf,
    mounted: bool,
    // Declared last so the image outlives the unmount in `Drop`.
    _dir: TempDir,
}

impl LoopFs {
    /// Creates a sparse `size_mib` MiB image, formats it as `kind` and mounts it.
    /// Needs root. Btrfs refuses images much under ~120 MiB, XFS under 300 MiB.
    pub fn new(kind: FsKind, size_mib: u64) -> anyhow::Result<LoopFs> {
        LoopFs::with_mkfs_options(kind, size_mib, "")
    }

    /// Like [`LoopFs::new`], with `options` (shell words) added to the `mkfs`
    /// command line, e.g. `-b 1024 -i 2048` for an ext4 with room for millions of
    /// small files.
    pub fn with_mkfs_options(kind: FsKind, size_mib: u64, options: &str) -> anyhow::Result<LoopFs> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sluice-{}-", kind.name()))
            .tempdir()
            .context("cannot create a temporary directory for the loop filesystem")?;
        let image = dir.path().join("fs.img");
        let mountpoint = dir.path().join("mnt");
        File::create(&image)
            .and_then(|f| f.set_len(size_mib * 1024 * 1024))
            .with_context(|| format!("cannot create image {}", image.display()))?;
        std::fs::create_dir(&mountpoint)
            .with_context(|| format!("cannot create {}", mountpoint.display()))?;
        run(&kind.mkfs_command(&image, options))
            .with_context(|| format!("cannot format {}", kind.name()))?;
        run(&format!(
            "mount -t {} -o loop {} {}",
            kind.name(),
            shell_quote(&image),
            shell_quote(&mountpoint)
        ))
        .with_context(|| format!("cannot mount the {} image (are we root?)", kind.name()))?;
        Ok(LoopFs {
            kind,
            mountpoint,
            image,
            mounted: true,
            _dir: dir,
        })
    }

    /// Where the filesystem is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The image file backing the loop device.
    pub fn image(&self) -> &Path {
        &self.image
    }

    pub fn kind(&self) -> FsKind {
        self.kind
    }

    /// Unmounts now, reporting failure instead of falling back to a lazy unmount.
    /// On failure `Drop` still tries a lazy unmount.
    pub fn unmount(mut self) -> anyhow::Result<()> {
        run(&format!("umount {}", shell_quote(&self.mountpoint)))
            .with_context(|| format!("cannot unmount {}", self.mountpoint.display()))?;
        self.mounted = false;
        Ok(())
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        if std::env::var_os("SLUICE_KEEP_FILESYSTEMS").is_some() {
            // For a post-mortem: the filesystem stays mounted and its image kept.
            eprintln!("kept {} mounted from {}", self.mountpoint.display(), self.image.display());
            std::mem::forget(std::mem::replace(&mut self._dir, tempfile::tempdir().expect("a scratch directory")));
            return;
        }
        let target = shell_quote(&self.mountpoint);
        if run(&format!("umount {target}")).is_err() {
            // A lazy unmount lets the tempdir go away even if a killed daemon still
            // holds a file open; the loop device is released when it closes.
            if let Err(e) = run(&format!("umount -l {target}")) {
                eprintln!(
                    "warning: cannot unmount {}: {e:#}",
                    self.mountpoint.display()
                );
            }
        }
    }
}

/// Single-quotes a path for `sh -c`.
pub(crate) fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}
