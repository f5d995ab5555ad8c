//! S5, write-path overhead: fio buffered random-write throughput on the watched
//! filesystem and on an unrelated one, without and with the sluice agent (and its
//! receiver) running. Baselines run before and after the agent so their spread
//! shows how much of a difference is noise.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use sluice_tests::{FsKind, LoopFs};

use super::Sizes;
use super::replicator::{Kind, Replicator};
use super::results::Overhead;

pub fn run(sizes: &Sizes, bin_dir: &Path) -> Overhead {
    let mut overhead = Overhead {
        runtime_s: sizes.s5_runtime_s,
        ..Overhead::default()
    };
    println!("bench: S5 fio write-path overhead");
    if let Err(e) = measure(&mut overhead, sizes, bin_dir) {
        eprintln!("bench: S5: {e:#}");
        overhead.error = Some(format!("{e:#}"));
    }
    overhead
}

fn measure(o: &mut Overhead, sizes: &Sizes, bin_dir: &Path) -> anyhow::Result<()> {
    // Room for three fio files per filesystem (each run uses a fresh one).
    let fs_mib = sizes.s5_size_mib * 4 + 512;
    let master = LoopFs::new(FsKind::Ext4, fs_mib)?;
    let standby = LoopFs::new(FsKind::Ext4, fs_mib)?;
    let other = LoopFs::new(FsKind::Ext4, fs_mib)?;
    let mut n = 0;
    let mut fio = |dir: &Path| -> anyhow::Result<f64> {
        n += 1;
        let run_dir = dir.join(format!("fio-{n}"));
        std::fs::create_dir_all(&run_dir)?;
        let r = fio_mib_s(&run_dir, sizes);
        std::fs::remove_dir_all(&run_dir)?;
        r
    };
    o.watched_without_agent.push(fio(master.path())?);
    o.other_without_agent.push(fio(other.path())?);
    let mut sluice = Replicator::start(Kind::Sluice, master.path(), standby.path(), bin_dir)?;
    if !sluice.wait_live(sizes.timeout)? {
        bail!("sluice not live:\n{}", sluice.logs());
    }
    // The unrelated filesystem first, while the agent is idle: afterwards it would
    // still be replicating the watched run's writes, and that catch-up is not a cost
    // of writing elsewhere.
    o.other_with_agent = fio(other.path())?;
    o.watched_with_agent = fio(master.path())?;
    sluice.check_alive()?;
    sluice.stop();
    o.watched_without_agent.push(fio(master.path())?);
    o.other_without_agent.push(fio(other.path())?);
    Ok(())
}

/// One fio run in `dir`; returns the write bandwidth in MiB/s.
fn fio_mib_s(dir: &Path, sizes: &Sizes) -> anyhow::Result<f64> {
    let output = Command::new("fio")
        .args([
            "--name=w",
            "--rw=randwrite",
            "--bs=4k",
            "--ioengine=psync",
            "--direct=0",
        ])
        .args([
            "--fsync=0",
            "--group_reporting",
            "--output-format=json",
            "--time_based",
        ])
        .arg(format!("--size={}M", sizes.s5_size_mib))
        .arg(format!("--runtime={}", sizes.s5_runtime_s))
        .arg(format!("--directory={}", dir.display()))
        .output()
        .context("cannot run fio")?;
    if !output.status.success() {
        bail!("fio failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    // fio may print notes before the JSON document.
    let json = &text[text.find('{').context("no JSON from fio")?..];
    let value: serde_json::Value = serde_json::from_str(json).context("fio JSON")?;
    let bytes_per_s = value["jobs"][0]["write"]["bw_bytes"]
        .as_f64()
        .context("no jobs[0].write.bw_bytes in fio output")?;
    let mib_s = bytes_per_s / (1 << 20) as f64;
    println!("bench: fio {}: {mib_s:.1} MiB/s", dir.display());
    Ok(mib_s)
}
