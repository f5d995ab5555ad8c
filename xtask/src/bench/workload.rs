//! Workload data and convergence: writing files and trees of incompressible data,
//! and deciding cheaply, while polling, whether the standby has caught up.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use sluice_tests::run;

/// Writes `len` random (incompressible) bytes to `path`. They come from
/// `/dev/urandom` through std's copy loop: xtask runs unoptimized, and generating
/// gigabytes in its own code would make preparing the data the slowest part.
pub fn write_file(path: &Path, len: u64) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let mut file =
        File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut random = File::open("/dev/urandom")
        .context("cannot open /dev/urandom")?
        .take(len);
    let copied = std::io::copy(&mut random, &mut file)
        .with_context(|| format!("cannot write {}", path.display()))?;
    anyhow::ensure!(copied == len, "short write to {}", path.display());
    Ok(())
}

/// `files` files spread over `dirs` directories under `root/<prefix>`; sizes come
/// from `size(i)`. Returns the paths relative to `root` and the total bytes.
/// [`write_tree`], reading the expectation of each file right after writing it
/// (from the page cache), so none is left to read after the last write.
pub fn write_tree_expecting(
    root: &Path,
    prefix: &str,
    dirs: usize,
    files: usize,
    size: impl Fn(usize) -> u64,
) -> anyhow::Result<(Expect, u64)> {
    let mut expect = Expect {
        files: Vec::with_capacity(files),
        absent: Vec::new(),
    };
    let mut total = 0;
    for i in 0..files {
        let rel = tree_path(prefix, dirs, i);
        let len = size(i);
        write_file(&root.join(&rel), len)?;
        let (size, head, tail) = probe(&root.join(&rel))?;
        expect.files.push((rel, size, head, tail));
        total += len;
    }
    Ok((expect, total))
}

fn tree_path(prefix: &str, dirs: usize, i: usize) -> PathBuf {
    Path::new(prefix)
        .join(format!("d{:04}", i % dirs.max(1)))
        .join(format!("f{i:06}.bin"))
}

pub fn write_tree(
    root: &Path,
    prefix: &str,
    dirs: usize,
    files: usize,
    size: impl Fn(usize) -> u64,
) -> anyhow::Result<(Vec<PathBuf>, u64)> {
    let mut paths = Vec::with_capacity(files);
    let mut total = 0;
    for i in 0..files {
        let rel = tree_path(prefix, dirs, i);
        let len = size(i);
        write_file(&root.join(&rel), len)?;
        paths.push(rel);
        total += len;
    }
    Ok((paths, total))
}

/// A pseudo-random size in `lo..=hi`, fixed by `i`.
pub fn spread(i: usize, lo: u64, hi: u64) -> u64 {
    let x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 33;
    lo + x % (hi - lo + 1)
}

/// Copies the master's tree to the standby with metadata, so a replicator starts
/// from an in-sync pair.
pub fn copy_tree(master: &Path, standby: &Path) -> anyhow::Result<()> {
    run(&format!(
        "cp -a '{}/.' '{}/'",
        master.display(),
        standby.display()
    ))
    .map(|_| ())
}

/// What the standby must show to count as converged: each file with its size and
/// first and last 16 bytes, and paths that must be gone. Checking that much is a
/// few syscalls per file, cheap enough to poll; the full comparison runs once after.
pub struct Expect {
    files: Vec<(PathBuf, u64, Vec<u8>, Vec<u8>)>,
    absent: Vec<PathBuf>,
}

impl Expect {
    /// Reads the expectation for `rel_paths` from the master as it is now.
    pub fn from_master(
        master: &Path,
        rel_paths: &[PathBuf],
        absent: &[PathBuf],
    ) -> anyhow::Result<Expect> {
        let mut files = Vec::with_capacity(rel_paths.len());
        for rel in rel_paths {
            let path = master.join(rel);
            let (size, head, tail) =
                probe(&path).with_context(|| format!("cannot read {}", path.display()))?;
            files.push((rel.clone(), size, head, tail));
        }
        Ok(Expect {
            files,
            absent: absent.to_vec(),
        })
    }

    /// The same files under `to` instead of `from`, and `absent` gone: what a
    /// directory rename must show, read before the rename so that reading it
    /// does not delay the first look after.
    pub fn moved(&self, from: &Path, to: &Path, absent: &[PathBuf]) -> Expect {
        let files = self
            .files
            .iter()
            .map(|(rel, size, head, tail)| {
                let rel = rel.strip_prefix(from).map_or_else(|_| rel.clone(), |r| to.join(r));
                (rel, *size, head.clone(), tail.clone())
            })
            .collect();
        Expect {
            files,
            absent: absent.to_vec(),
        }
    }

    pub fn holds(&self, standby: &Path) -> bool {
        self.holds_files(standby, &self.files)
    }

    /// The removed paths are gone and the last file written is complete: a few
    /// syscalls, cheap enough to look every millisecond.
    pub fn probably_holds(&self, standby: &Path) -> bool {
        self.holds_files(standby, self.files.last().map_or(&[][..], std::slice::from_ref))
    }

    fn holds_files(&self, standby: &Path, files: &[(PathBuf, u64, Vec<u8>, Vec<u8>)]) -> bool {
        self.absent
            .iter()
            .all(|rel| fs::symlink_metadata(standby.join(rel)).is_err())
            && files.iter().all(|(rel, size, head, tail)| {
                probe(&standby.join(rel))
                    .is_ok_and(|(s, h, t)| s == *size && h == *head && t == *tail)
            })
    }
}

fn probe(path: &Path) -> std::io::Result<(u64, Vec<u8>, Vec<u8>)> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let n = size.min(16) as usize;
    let mut head = vec![0; n];
    let mut tail = vec![0; n];
    file.read_exact_at(&mut head, 0)?;
    file.read_exact_at(&mut tail, size - n as u64)?;
    Ok((size, head, tail))
}

/// Polls until `expect` holds on the standby; returns the time since `since`, or
/// `None` if `timeout` (from now) ran out. `alive` is checked on each round so a
/// crashed replicator ends the wait early with its error.
pub fn wait_converged(
    standby: &Path,
    expect: &Expect,
    since: Instant,
    timeout: Duration,
    mut alive: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Option<Duration>> {
    let deadline = Instant::now() + timeout;
    // A full round over a big tree costs more, so full rounds are spaced to keep
    // the poller's own load on this 2-core machine small; the cheap check runs
    // every millisecond, so the time it gives is not rounded up to that spacing.
    let pause = Duration::from_micros((expect.files.len() as u64 * 10).clamp(1_000, 100_000));
    loop {
        if expect.probably_holds(standby) {
            // Confirmed by a full round right after; the time is the cheap
            // check's, which a full round over many files would inflate.
            let at = since.elapsed();
            if expect.holds(standby) {
                return Ok(Some(at));
            }
            std::thread::sleep(pause);
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        alive()?;
    }
}

/// [`wait_converged`] for several standbys at once: each is looked at in turn
/// until it holds `expect`, so each gets its own time since `since` (`None` for
/// those that did not within `timeout` from now).
pub fn wait_converged_all(
    standbys: &[PathBuf],
    expect: &Expect,
    since: Instant,
    timeout: Duration,
    mut alive: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Option<Duration>>> {
    let deadline = Instant::now() + timeout;
    let pause = Duration::from_micros((expect.files.len() as u64 * 10).clamp(1_000, 100_000));
    let mut times: Vec<Option<Duration>> = vec![None; standbys.len()];
    loop {
        let mut full_round = false;
        for (standby, time) in standbys.iter().zip(&mut times) {
            if time.is_none() && expect.probably_holds(standby) {
                let at = since.elapsed();
                full_round = true;
                if expect.holds(standby) {
                    *time = Some(at);
                }
            }
        }
        if times.iter().all(Option::is_some) || Instant::now() >= deadline {
            return Ok(times);
        }
        std::thread::sleep(if full_round {
            pause
        } else {
            Duration::from_millis(1)
        });
        alive()?;
    }
}

/// Writes a uniquely named small file on the master and waits for it on every
/// standby: proof that the replicator has finished starting and is live.
pub fn wait_live(
    master: &Path,
    standbys: &[PathBuf],
    timeout: Duration,
    alive: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<bool> {
    let name = PathBuf::from(format!(".bench-live-{}", std::process::id()));
    write_file(&master.join(&name), 64)?;
    let expect = Expect::from_master(master, std::slice::from_ref(&name), &[])?;
    let times = wait_converged_all(standbys, &expect, Instant::now(), timeout, alive)?;
    Ok(times.iter().all(Option::is_some))
}

/// Random 4 KiB writes into existing files: `per_file` writes into each of
/// `paths` in turn, each file opened once and closed after its writes, the last
/// write always on its last 4 KiB so that the convergence check (size, first
/// and last bytes) sees the file's final state. Offsets are fixed by the file's
/// index; the data comes from `/dev/urandom`. Returns the expectation (read back
/// right after each file's writes) and the bytes written.
pub fn random_writes(
    root: &Path,
    paths: &[PathBuf],
    per_file: usize,
) -> anyhow::Result<(Expect, u64)> {
    const BLOCK: u64 = 4096;
    let mut random = File::open("/dev/urandom").context("cannot open /dev/urandom")?;
    let mut block = vec![0u8; BLOCK as usize];
    let mut expect = Expect {
        files: Vec::with_capacity(paths.len()),
        absent: Vec::new(),
    };
    let mut written = 0;
    for (i, rel) in paths.iter().enumerate() {
        let path = root.join(rel);
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let blocks = file.metadata()?.len() / BLOCK;
        anyhow::ensure!(blocks >= 2, "{} is under 8 KiB", path.display());
        for w in 0..per_file {
            let at = if w + 1 == per_file {
                blocks - 1
            } else {
                spread(i * per_file + w, 0, blocks - 2)
            };
            random.read_exact(&mut block)?;
            file.write_all_at(&block, at * BLOCK)
                .with_context(|| format!("cannot write {}", path.display()))?;
            written += BLOCK;
        }
        drop(file);
        let (size, head, tail) = probe(&path)?;
        expect.files.push((rel.clone(), size, head, tail));
    }
    Ok((expect, written))
}

/// Whether the standby is identical to the master: content (checksums), types,
/// permissions, owners, file mtimes, ACLs, xattrs and hard links, ignoring
/// directory mtimes and ext4's `lost+found` (as `sluice_tests::compare_trees`
/// does). rsync's dry run does the reading natively: xtask runs unoptimized, and a
/// byte-by-byte comparison of gigabytes in it would dominate the bench's run time.
/// Returns the first differences, or `None` when identical.
pub fn differences(master: &Path, standby: &Path) -> anyhow::Result<Option<String>> {
    let out = run(&format!(
        "rsync -aAXHc --dry-run --itemize-changes --delete --omit-dir-times \
         --exclude=/lost+found --exclude=/.sluice '{}/' '{}/'",
        master.display(),
        standby.display()
    ))?;
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    Ok((!lines.is_empty()).then(|| {
        lines
            .iter()
            .take(10)
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    }))
}

/// Polls [`differences`] for up to `grace`, for metadata or data that trails what
/// the convergence check looked at.
pub fn wait_identical(
    master: &Path,
    standby: &Path,
    grace: Duration,
) -> anyhow::Result<Option<String>> {
    let deadline = Instant::now() + grace;
    loop {
        let diff = differences(master, standby)?;
        if diff.is_none() || Instant::now() >= deadline {
            return Ok(diff);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
