//! Processes the bench starts and what it reads about them: a private network
//! namespace per run, child processes killed with their descendants on drop, CPU
//! time of a process tree, loopback bytes and loop-device writes.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use sluice_tests::run;

/// A network namespace of its own for one replicator run. Its loopback carries only
/// that replicator's traffic, so the `lo` counters are its bytes on the wire and
/// fixed ports cannot clash with anything else on the machine.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new(tag: &str) -> anyhow::Result<Netns> {
        let name = format!("sluice-bench-{}-{tag}", std::process::id());
        // A namespace left over from a killed run with the same pid is stale.
        let _ = run(&format!("ip netns del {name} 2>/dev/null"));
        run(&format!("ip netns add {name}")).context("cannot create a network namespace")?;
        let netns = Netns { name };
        run(&format!("ip -n {} link set lo up", netns.name))
            .context("cannot bring up loopback in the namespace")?;
        Ok(netns)
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// A command that runs `program` inside the namespace (`nsenter` execs it, so
    /// the child's pid is the program's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        command
    }

    /// Runs `f` on a thread that has joined the namespace, for TCP connections to
    /// the daemons' loopback listeners and for reading the namespace's counters.
    pub fn enter<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let path = self.path();
        std::thread::spawn(move || {
            let file =
                File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            // setns on this thread only: the rest of the bench stays where it was.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns failed: {}", std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
    }

    /// Bytes sent on the namespace's loopback so far. Every byte crosses `lo` once
    /// (tx equals rx there), so this counts each payload byte once, with TCP/UDP/IP
    /// headers included.
    pub fn lo_tx_bytes(&self) -> anyhow::Result<u64> {
        self.enter(|| {
            let dev = std::fs::read_to_string("/proc/thread-self/net/dev")
                .context("cannot read net/dev")?;
            lo_tx_from(&dev).context("no lo line in net/dev")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run(&format!("ip netns del {}", self.name)) {
            eprintln!("warning: {e:#}");
        }
    }
}

fn lo_tx_from(dev: &str) -> Option<u64> {
    let line = dev.lines().find(|l| l.trim_start().starts_with("lo:"))?;
    let fields: Vec<&str> = line.split_once(':')?.1.split_whitespace().collect();
    // Receive: bytes packets errs drop fifo frame compressed multicast; then transmit.
    fields.get(8)?.parse().ok()
}

/// A child process that is killed, together with everything it started, when
/// dropped. Output goes to `log`.
pub struct Proc {
    name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> anyhow::Result<Proc> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {name} ({command:?})"))?;
        Ok(Proc {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Fails with the log's tail if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(child) = &mut self.child
            && let Some(status) = child.try_wait()?
        {
            bail!("{} exited ({status}):\n{}", self.name, tail(&self.log, 30));
        }
        Ok(())
    }

    /// Waits for a one-shot process, at most `timeout`, and returns its exit
    /// success and the CPU seconds it and its reaped children used (from `wait4`,
    /// which is exact where sampling `/proc` would miss a process that ended).
    pub fn wait_with_cpu(&mut self, timeout: Duration) -> anyhow::Result<Option<(bool, f64)>> {
        let Some(child) = &mut self.child else {
            bail!("{} is not running", self.name)
        };
        let pid = child.id() as libc::pid_t;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let mut status = 0;
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            let done = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
            if done == pid {
                // Reaped here, so std's Child must not wait or kill it again.
                std::mem::forget(self.child.take());
                let cpu = timeval_s(usage.ru_utime) + timeval_s(usage.ru_stime);
                let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
                return Ok(Some((ok, cpu)));
            }
            if done < 0 {
                bail!(
                    "wait4 on {}: {}",
                    self.name,
                    std::io::Error::last_os_error()
                );
            }
            if std::time::Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM, a short grace, then SIGKILL to the process and its descendants.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        let tree = descendants(&[pid]);
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        for _ in 0..100 {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Children that outlived their parent (rsync under lsyncd) are killed too.
        for p in tree {
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn timeval_s(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// (pid, ppid, utime+stime+cutime+cstime in ticks) of every process.
fn process_table() -> Vec<(u32, u32, u64)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name may contain spaces; fields resume after its ')'.
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ppid = f.get(1)?.parse().ok()?;
            let ticks: u64 = (11..15).filter_map(|i| f.get(i)?.parse::<u64>().ok()).sum();
            Some((pid, ppid, ticks))
        })
        .collect()
}

/// `roots` and every live process below them.
pub fn descendants(roots: &[u32]) -> Vec<u32> {
    let table = process_table();
    let mut found: Vec<u32> = roots.to_vec();
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            table
                .iter()
                .filter(|(_, pp, _)| *pp == parent)
                .map(|(p, _, _)| *p),
        );
        i += 1;
    }
    found
}

/// CPU seconds used so far by `roots` and their live descendants, including
/// children they have already reaped.
pub fn tree_cpu_s(roots: &[u32]) -> f64 {
    let pids = descendants(roots);
    let ticks: u64 = process_table()
        .iter()
        .filter(|(p, _, _)| pids.contains(p))
        .map(|(_, _, t)| t)
        .sum();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

/// Bytes a process tree has read so far, from `/proc/<pid>/io`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadIo {
    /// `rchar`: bytes returned by read syscalls (`read`, `pread`, ...), page
    /// cache hits included; a file read three times counts three times.
    pub rchar: u64,
    /// `read_bytes`: bytes the processes caused to be read from block devices.
    pub read_bytes: u64,
}

impl ReadIo {
    pub fn since(self, before: ReadIo) -> ReadIo {
        ReadIo {
            rchar: self.rchar.saturating_sub(before.rchar),
            read_bytes: self.read_bytes.saturating_sub(before.read_bytes),
        }
    }
}

/// Reads of `roots` and their live descendants so far. A process's `io` covers
/// its threads and the children it has reaped (as `cutime` does for CPU), so
/// rsyncs that lsyncd started and waited for count towards lsyncd.
pub fn tree_read_io(roots: &[u32]) -> ReadIo {
    let mut total = ReadIo::default();
    for pid in descendants(roots) {
        let Ok(io) = std::fs::read_to_string(format!("/proc/{pid}/io")) else {
            continue;
        };
        let field = |key: &str| {
            io.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        total.rchar += field("rchar");
        total.read_bytes += field("read_bytes");
    }
    total
}

/// The block device (`loopN`) behind a loop-mounted image.
pub fn loop_device(image: &Path) -> anyhow::Result<String> {
    let out = run(&format!("losetup -j '{}'", image.display()))?;
    let dev = out
        .split(':')
        .next()
        .and_then(|d| d.trim().strip_prefix("/dev/"))
        .filter(|d| !d.is_empty())
        .with_context(|| format!("no loop device for {}", image.display()))?;
    Ok(dev.to_owned())
}

/// Bytes written to a block device so far (sectors written × 512), after flushing
/// the filesystem at `mountpoint` so the page cache does not hide writes.
pub fn device_written_bytes(device: &str, mountpoint: &Path) -> anyhow::Result<u64> {
    run(&format!("sync -f '{}'", mountpoint.display()))?;
    let stat = std::fs::read_to_string(format!("/sys/block/{device}/stat"))
        .with_context(|| format!("cannot read /sys/block/{device}/stat"))?;
    let sectors: u64 = stat
        .split_whitespace()
        .nth(6)
        .and_then(|s| s.parse().ok())
        .context("malformed block stat")?;
    Ok(sectors * 512)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_lo_tx() {
        let dev = "Inter-|   Receive |  Transmit\n face |bytes packets\n    lo: 100 2 0 0 0 0 0 0 300 4 0 0 0 0 0 0\n";
        assert_eq!(super::lo_tx_from(dev), Some(300));
    }
}
