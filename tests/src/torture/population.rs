//! The tree a run starts from, the same for the same (seed, workers): each area gets
//! nested directories and files of assorted sizes (empty, small, a few MiB, sparse
//! with data islands), plus symlinks, a FIFO, a hard link, modes and xattrs, so the
//! initial sync has every kind of entry to copy and the workers have data to mangle.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, PermissionsExt, symlink};
use std::path::Path;

use anyhow::Context;

use super::generator::area_roots;
use super::rng::Rng;
use crate::util::{random_bytes, run};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// What [`populate`] made, for the summary.
#[derive(Debug, Default)]
pub struct Population {
    pub files: usize,
    pub dirs: usize,
    pub bytes: u64,
}

/// Fills `tree` (the watched root) and `outside` (its sibling on the same
/// filesystem).
pub fn populate(tree: &Path, outside: &Path, seed: u64, workers: usize) -> anyhow::Result<Population> {
    let mut rng = Rng::new(seed ^ 0x5eed_0f7e_e000_0001);
    let mut made = Population::default();
    for root in area_roots(workers) {
        let area = tree.join(&root);
        fs::create_dir_all(&area).with_context(|| format!("cannot create {}", area.display()))?;
        made.dirs += 1;
        for dir in ["d0", "d1", "d1/d2"] {
            if rng.percent(70) || dir == "d0" {
                fs::create_dir_all(area.join(dir))?;
                made.dirs += 1;
            }
        }
        for i in 0..rng.range(3, 7) {
            let dir = *rng.pick(&["", "d0", "d1", "d1/d2"]);
            let parent = area.join(dir);
            if !parent.is_dir() {
                continue;
            }
            let path = parent.join(format!("f{i}"));
            made.bytes += write_file(&path, &mut rng)?;
            made.files += 1;
        }
        if rng.coin() {
            symlink("f0", area.join("l0"))?;
        }
        if rng.percent(30) {
            run(&format!("mkfifo {}", area.join("p0").display()))?;
        }
        if area.join("f1").is_file() && rng.coin() {
            fs::hard_link(area.join("f1"), area.join("d0/f8"))?;
        }
        if area.join("f2").is_file() {
            fs::set_permissions(area.join("f2"), fs::Permissions::from_mode(0o600))?;
            xattr::set(area.join("f2"), "user.x0", b"population").context("cannot set a user xattr")?;
        }
    }
    fs::create_dir_all(outside).with_context(|| format!("cannot create {}", outside.display()))?;
    for i in 0..3 {
        made.bytes += write_file(&outside.join(format!("o{i}")), &mut rng)?;
    }
    fs::create_dir_all(outside.join("o5/sub"))?;
    made.bytes += write_file(&outside.join("o5/sub/f0"), &mut rng)?;
    Ok(made)
}

/// Writes a file of a randomly chosen shape; returns the bytes of data written.
fn write_file(path: &Path, rng: &mut Rng) -> anyhow::Result<u64> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let written = match rng.weighted(&[10, 40, 25, 10, 15]) {
        0 => 0,
        1 => write_at(&file, 0, rng.range(1, 16 * KIB), rng)?,
        2 => write_at(&file, 0, rng.range(16 * KIB, MIB), rng)?,
        3 => write_at(&file, 0, rng.range(MIB, 6 * MIB), rng)?,
        _ => {
            // Sparse: a few islands of data in a mostly empty file.
            let size = rng.range(2, 12) * MIB;
            file.set_len(size)?;
            let mut total = 0;
            for _ in 0..rng.range(1, 5) {
                let off = rng.below(size / 4096) * 4096;
                total += write_at(&file, off, rng.range(1, 64 * KIB).min(size - off), rng)?;
            }
            total
        }
    };
    Ok(written)
}

fn write_at(file: &File, off: u64, len: u64, rng: &mut Rng) -> anyhow::Result<u64> {
    file.write_all_at(&random_bytes(len as usize, rng.next_u64()), off)?;
    Ok(len)
}
