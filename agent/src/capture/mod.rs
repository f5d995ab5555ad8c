//! eBPF change capture: loads the `sluice-ebpf` programs, points them at one
//! filesystem and streams the completed file-system operations they report.
//!
//! Two modes, chosen at start-up and reported by [`Capture::mode`]:
//! - `"fexit+tp_btf"`: where the kernel allows fentry/fexit, the data paths
//!   (writes, fallocate, ftruncate) come from fexit programs on `vfs_write`,
//!   `vfs_writev`, `vfs_iter_write`, `vfs_iocb_iter_write`, `vfs_fallocate` and
//!   `do_truncate`, which also see nfsd and other in-kernel writers; `sys_exit`
//!   then skips those syscalls (`Config::data_from_vfs`). Namespace operations,
//!   metadata, copies, syncs and io_uring stay on the tracepoints.
//!   **This mode is untested at run time**: the development and CI hosts refuse
//!   fentry/fexit with EPERM, so the fexit programs are only known to build and
//!   link with bpf-linker. In this mode a sendfile/splice/copy_file_range into a
//!   file may be reported twice (by `vfs_iter_write` and by the syscall exit),
//!   and write events carry [`NO_FD`].
//! - `"tp_btf"`: the fallback, everything below.
//!
//! What is seen: file-system syscalls at exit, 64-bit and 32-bit (ia32: `int
//! 0x80`, sysenter, 32-bit programs; `TS_COMPAT` tells them apart), namely writes,
//! copies, reflinks (`FICLONE`, `FICLONERANGE`, btrfs encoded writes), native AIO
//! (`io_submit` and again at `io_getevents`/`io_pgetevents` completion), namespace
//! changes, metadata, xattrs and sync barriers; the entry of the write family
//! (classic `syscalls/sys_enter_*` tracepoints) for writes whose position can
//! move under them; page-cache folios becoming dirty outside the write syscalls
//! (`tp_btf/writeback_dirty_folio`: mmap stores, in-kernel writers that go
//! through the page cache), user write faults on shared file mappings
//! (`tp_btf/page_fault_user`: mmap stores to folios that were already dirty) and
//! every io_uring completion (`tp_btf/io_uring_complete`).
//!
//! Inodes are the watched tree's when their superblock is the watched one and,
//! on btrfs, their subvolume is the root's (snapshots share `s_dev` and inode
//! numbers). Relative paths are reported when their base is in the watched
//! filesystem or is one of the root's ancestors ([`Capture::ancestors`]).
//!
//! Detected rather than decoded ([`EventKind::Changed`]: re-read the file;
//! [`EventKind::Repair`]: compare the tree): io_uring operations other than writes
//! and syncs (namespace opcodes, opens into fixed slots, fallocate, ftruncate,
//! fsetxattr, splice, uring_cmd), AIO completions that cannot be attributed or
//! exceed [`sluice_common::AIO_BATCH`] per call, x32-ABI syscalls.
//!
//! Limits:
//! - mmap stores are seen per folio on its clean → dirty transition and per page
//!   on each user write fault of a shared writable file mapping
//!   ([`EventKind::Writeback`], reported when the fault is taken, before the store
//!   lands). A store through a PTE that is already writable faults no more and is
//!   covered by the earlier event; a store to a clean page is reported twice.
//!   The kernel storing into a mapping for a syscall (`read(2)` into a mapped
//!   buffer) is seen only if it dirties a clean folio. Stores to a `MAP_PRIVATE`
//!   mapping never reach the file and are not reported. The fault program
//!   resolves the address with `bpf_find_vma` with interrupts off, where the
//!   helper fails (-EBUSY) if another BPF program already used it during the same
//!   fault: with two captures loaded at once, the later one misses write faults.
//! - A write through a file another thread uses at the same time is reported as
//!   `[position at entry, position at exit)`, which contains it when the others
//!   only write or read; an `lseek` backwards by another thread between the two
//!   is caught only when it leaves the position below where the write started
//!   (then the whole file is reported). Concurrent appenders are bounded the same
//!   way by the size at entry.
//! - Native AIO completions reaped from the mapped ring without `io_getevents`
//!   (fio `--userspace_reap`) are reported at submission only, possibly before
//!   the data is in the file.
//! - nfsd and other in-kernel writers that dirty no page cache (direct I/O from
//!   the kernel) are invisible.
//! - msync resolves only the mapping containing its start address.
//! - Paths are as passed (at most 255 bytes) and relative to `base`; a relative
//!   path from a cwd/dirfd that is neither in the watched filesystem nor one of
//!   the root's ancestors is dropped in the kernel even if it leads back inside
//!   (`../srv/data/x` from `/tmp`, or through a symlink). Absolute paths are
//!   reported for every filesystem and placed in userspace by prefix or by
//!   looking up their parent directory.
//! - x86_64 only (syscall numbers and `pt_regs` layout).

pub mod events;
pub mod offsets;

use std::{
    fs::File,
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, FExit, ProgramError, TracePoint},
};
use tokio::io::{Interest, unix::AsyncFd};

pub use events::{DecodeError, Event, EventKind, Repair, SyncKind};
pub use offsets::OffsetsError;
use sluice_common::{AncestorKey, Calibration, Config, ENTRY_SYSCALLS, EXIT_SYSCALLS, names, vfs};
pub use sluice_common::{ANCESTOR_DEV, InodeId, NO_FD, TO_END};

/// The compiled programs, built by `build.rs` through aya-build.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice-ebpf"));

const TRACEFS: &str = "/sys/kernel/tracing";
/// How soon the ring is read again after records were read or a wakeup came.
const POLL_AFTER_EVENTS: std::time::Duration = std::time::Duration::from_micros(1500);
/// How often processes that are gone leave the shared-mapping set.
const PRUNE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// Opening the root races with other threads of this process opening directories,
/// each of which overwrites the calibration slot; retry a few times.
const CALIBRATION_ATTEMPTS: u32 = 20;

/// Tunables for [`Capture::start`].
#[derive(Clone, Debug)]
pub struct CaptureOptions {
    /// Size of the `EVENTS` ring buffer: a power of two multiple of the page size.
    pub ring_buffer_bytes: u32,
    /// Capture 32-bit syscalls from the start, not only once a 32-bit program runs.
    pub compat_always: bool,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: 8 * 1024 * 1024,
            compat_always: false,
        }
    }
}

/// Why capture could not start or continue.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The options are unusable (e.g. a ring buffer size the kernel refuses).
    #[error("invalid capture options: {0}")]
    InvalidOptions(String),
    /// The watched root is missing, not a directory, or could not be opened.
    #[error("watched root {path}: {source}")]
    Root { path: PathBuf, source: io::Error },
    /// Struct offsets could not be read from the kernel's BTF.
    #[error("kernel struct offsets: {0}")]
    Offsets(#[from] OffsetsError),
    /// aya could not parse the kernel's BTF (needed to attach `tp_btf`).
    #[error("kernel BTF: {0}")]
    KernelBtf(#[from] aya::BtfError),
    /// The object was rejected while creating maps or loading it.
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    /// The program failed verification or could not be attached.
    #[error("eBPF program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    /// A map operation failed.
    #[error("eBPF map: {0}")]
    Map(#[from] aya::maps::MapError),
    /// The embedded object lacks a map or program this code expects (ABI drift).
    #[error("eBPF object has no {0}")]
    Missing(&'static str),
    /// The kernel never reported the root directory while calibrating.
    #[error("calibration on {path} failed: {reason}")]
    Calibration { path: PathBuf, reason: String },
    /// Polling the ring buffer failed.
    #[error("ring buffer I/O: {0}")]
    Io(#[from] io::Error),
}

/// A running capture. Dropping it detaches the programs and frees the maps.
pub struct Capture {
    // Owns the programs and their links; kept alive for as long as capture runs.
    ebpf: Ebpf,
    config: Array<MapData, Config>,
    cfg: Config,
    mappers: BpfHashMap<MapData, u32, u8>,
    last_prune: std::time::Instant,
    /// Look at the ring again within [`POLL_AFTER_EVENTS`] even without a wakeup.
    poll_soon: bool,
    events: AsyncFd<RingBuf<MapData>>,
    drops: PerCpuArray<MapData, u64>,
    watched_dev: u64,
    root: InodeId,
    watched_subvol: u64,
    ancestors: Vec<PathBuf>,
    io_uring_writes: bool,
    mode: &'static str,
}

/// Mode names reported by [`Capture::mode`].
pub const MODE_TP_BTF: &str = "tp_btf";
pub const MODE_FEXIT: &str = "fexit+tp_btf";

/// One fexit program on a VFS function.
struct VfsProgram {
    name: &'static str,
    function: &'static str,
    /// The [`vfs`] bit telling `sys_exit` to skip the matching syscalls, or 0.
    bit: u32,
    /// Without it the fexit mode is abandoned; an optional one that does not load
    /// (e.g. a static function inlined away on some kernel) is skipped, and its
    /// syscalls stay on `sys_exit`.
    required: bool,
}

const VFS_PROGRAMS: [VfsProgram; 6] = [
    VfsProgram {
        name: names::VFS_WRITE,
        function: "vfs_write",
        bit: vfs::WRITE,
        required: true,
    },
    VfsProgram {
        name: names::VFS_FALLOCATE,
        function: "vfs_fallocate",
        bit: vfs::FALLOCATE,
        required: true,
    },
    VfsProgram {
        name: names::VFS_WRITEV,
        function: "vfs_writev",
        bit: vfs::WRITEV,
        required: false,
    },
    VfsProgram {
        name: names::VFS_ITER_WRITE,
        function: "vfs_iter_write",
        bit: 0,
        required: false,
    },
    VfsProgram {
        name: names::VFS_IOCB_ITER_WRITE,
        function: "vfs_iocb_iter_write",
        bit: 0,
        required: false,
    },
    VfsProgram {
        name: names::DO_TRUNCATE,
        function: "do_truncate",
        bit: vfs::TRUNCATE,
        required: false,
    },
];

impl Capture {
    /// Mounts tracefs at /sys/kernel/tracing if missing, raises RLIMIT_MEMLOCK if
    /// needed, loads the object, writes the kernel offsets, attaches, calibrates on
    /// `root` (an existing directory) and enables capture.
    ///
    /// Must be called inside a tokio runtime (the ring buffer is registered with it).
    pub fn start(root: &Path, options: &CaptureOptions) -> Result<Capture, CaptureError> {
        let size = options.ring_buffer_bytes;
        let page = page_size();
        if !size.is_power_of_two() || u64::from(size) < page {
            return Err(CaptureError::InvalidOptions(format!(
                "ring_buffer_bytes {size} is not a power of two of at least {page}"
            )));
        }
        let root_meta = std::fs::metadata(root).map_err(|source| CaptureError::Root {
            path: root.to_owned(),
            source,
        })?;
        if !root_meta.is_dir() {
            return Err(CaptureError::Root {
                path: root.to_owned(),
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            });
        }

        ensure_tracefs();
        raise_memlock();
        let offsets = offsets::from_vmlinux()?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::EVENTS, size)
            .load(EBPF_OBJECT)?;

        let mut config: Array<MapData, Config> = take_map(&mut ebpf, names::CONFIG)?;
        let mut calibration: Array<MapData, Calibration> = take_map(&mut ebpf, names::CALIBRATION)?;
        let mut ancestor_map: BpfHashMap<MapData, AncestorKey, u64> =
            take_map(&mut ebpf, names::ANCESTORS)?;
        let drops: PerCpuArray<MapData, u64> = take_map(&mut ebpf, names::DROPS)?;
        let mut mappers: BpfHashMap<MapData, u32, u8> = take_map(&mut ebpf, names::MAPPERS)?;
        let events: RingBuf<MapData> = take_map(&mut ebpf, names::EVENTS)?;

        let btf = Btf::from_sys_fs()?;
        // fexit first, so `sys_exit` knows from its first event what to leave alone
        // (nothing is reported before calibration sets `watched_dev` anyway).
        let (mode, data_from_vfs) = match attach_vfs(&mut ebpf, &btf) {
            Ok(bits) => (MODE_FEXIT, bits),
            Err((function, error)) => {
                tracing::info!(
                    function,
                    "fentry/fexit on VFS functions refused by this kernel ({}); capturing with BTF syscall tracepoints",
                    reason(&error)
                );
                (MODE_TP_BTF, 0)
            }
        };

        let mut cfg = Config {
            watched_dev: 0,
            agent_tgid: std::process::id(),
            calibrating: 1,
            offsets,
            data_from_vfs,
            write_entry: 0,
            watched_subvol: 0,
            compat_exits: 0,
            _padding: 0,
        };
        config.set(0, cfg, 0)?;

        let exits = attach_exits(&mut ebpf)?;
        // Loaded now, attached once a 32-bit program runs (see `attach_compat`).
        {
            let raw: &mut BtfTracePoint = ebpf
                .program_mut(names::SYS_EXIT)
                .ok_or(CaptureError::Missing(names::SYS_EXIT))?
                .try_into()?;
            raw.load("sys_exit", &btf)?;
        }
        attach(&mut ebpf, &btf, names::PROCESS_FORK, "sched_process_fork")?;
        attach(&mut ebpf, &btf, names::PROCESS_EXEC, "sched_process_exec")?;
        attach(&mut ebpf, &btf, names::DIRTY_FOLIO, "writeback_dirty_folio")?;
        // x86 only: stores through a new shared mapping to folios that are already
        // dirty (no clean → dirty transition) are seen only through their fault.
        attach(&mut ebpf, &btf, names::PAGE_FAULT_USER, "page_fault_user")?;
        // Optional: a kernel without io_uring (or with an unknown request layout)
        // still gets everything else.
        let io_uring_writes = offsets.io_kiocb_opcode != 0
            && match attach(
                &mut ebpf,
                &btf,
                names::IO_URING_COMPLETE,
                "io_uring_complete",
            ) {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(%error, "io_uring writes will not be captured");
                    false
                }
            };

        // Where a write to a shared or appending file went is checked against what
        // its entry saw; without the entry program such writes report the whole file.
        cfg.write_entry = match attach_write_entry(&mut ebpf) {
            Ok(()) => 1,
            Err(error) => {
                tracing::warn!(
                    %error,
                    "syscall entry tracepoints not attached: writes to shared or appending files will be reported as whole files"
                );
                0
            }
        };

        let kernel_root = calibrate(root, root_meta.ino(), &mut calibration)?;
        if is_btrfs(root) && kernel_root.subvol == 0 {
            return Err(CaptureError::Calibration {
                path: root.to_owned(),
                reason: "the root is on btrfs but the kernel's BTF does not describe btrfs inodes, so snapshots could not be told apart from the watched subvolume".to_owned(),
            });
        }
        // The directories above the root: a relative path from one of them (the
        // cwd of `cd /srv && mv data/a data/b`) can lead into the tree.
        let mut ancestors = Vec::new();
        for dir in root.ancestors().skip(1) {
            let named = std::fs::metadata(dir).map(|m| m.ino()).and_then(|ino| {
                calibrate(dir, ino, &mut calibration).map_err(|e| io::Error::other(e.to_string()))
            });
            match named {
                Ok(c) => {
                    let key = AncestorKey { dev: c.root.dev, ino: c.root.ino, subvol: c.subvol };
                    ancestor_map.insert(key, ancestors.len() as u64, 0)?;
                    ancestors.push(dir.to_owned());
                }
                Err(error) => tracing::warn!(
                    dir = %dir.display(),
                    %error,
                    "relative paths used from this directory will not be seen"
                ),
            }
        }
        cfg.watched_dev = kernel_root.root.dev;
        cfg.watched_subvol = kernel_root.subvol;
        cfg.calibrating = 0;
        config.set(0, cfg, 0)?;
        // After `watched_dev` is set: from here on the programs record new shared
        // mappings and announce 32-bit programs, and these scans find the older ones.
        let seeded = seed_mappers(&mut mappers, kernel_root.root.dev);
        let compat_running = running_32bit_program();
        let mut capture = Capture {
            ebpf,
            config,
            cfg,
            mappers,
            last_prune: std::time::Instant::now(),
            poll_soon: true,
            events: register(events)?,
            drops,
            watched_dev: kernel_root.root.dev,
            root: kernel_root.root,
            watched_subvol: kernel_root.subvol,
            ancestors,
            io_uring_writes,
            mode,
        };
        if options.compat_always || compat_running.is_some() {
            capture.attach_compat()?;
        }
        tracing::info!(
            root = %root.display(),
            dev = kernel_root.root.dev,
            ino = kernel_root.root.ino,
            subvol = kernel_root.subvol,
            ancestors = capture.ancestors.len(),
            mode,
            data_from_vfs,
            io_uring_writes,
            write_entry = capture.cfg.write_entry,
            syscall_exits = exits,
            compat_syscalls = capture.cfg.compat_exits != 0,
            compat_program = compat_running.unwrap_or_default(),
            shared_mappers = seeded,
            "eBPF capture started"
        );
        Ok(capture)
    }

    /// Attaches the capture of 32-bit syscalls (the raw `sys_exit` tracepoint,
    /// which then runs for every syscall of the system).
    fn attach_compat(&mut self) -> Result<(), CaptureError> {
        if self.cfg.compat_exits != 0 {
            return Ok(());
        }
        let raw: &mut BtfTracePoint = self
            .ebpf
            .program_mut(names::SYS_EXIT)
            .ok_or(CaptureError::Missing(names::SYS_EXIT))?
            .try_into()?;
        raw.attach()?;
        self.cfg.compat_exits = 1;
        self.config.set(0, self.cfg, 0)?;
        Ok(())
    }

    /// Forgets processes that are gone from the shared-mapping set.
    fn prune_mappers(&mut self) {
        let gone: Vec<u32> = self
            .mappers
            .keys()
            .flatten()
            .filter(|tgid| !Path::new(&format!("/proc/{tgid}")).exists())
            .collect();
        for tgid in gone {
            let _ = self.mappers.remove(&tgid);
        }
    }

    /// Whether io_uring write completions are decoded into [`EventKind::Write`]
    /// (otherwise only [`EventKind::IoUringUser`] announces ring users).
    pub fn sees_io_uring_writes(&self) -> bool {
        self.io_uring_writes
    }

    /// The attachment mode in use: [`MODE_FEXIT`] (`"fexit+tp_btf"`: data paths from
    /// fexit on the VFS, the rest from tracepoints) where the kernel allowed the
    /// fexit programs, else [`MODE_TP_BTF`] (`"tp_btf"`: BTF raw syscall
    /// tracepoints only; fentry/fexit are refused with EPERM on the supported hosts).
    pub fn mode(&self) -> &'static str {
        self.mode
    }

    /// The watched filesystem's `s_dev` as the kernel names it (not always `st_dev`).
    pub fn watched_dev(&self) -> u64 {
        self.watched_dev
    }

    /// The kernel's id of the watched root directory.
    pub fn root(&self) -> InodeId {
        self.root
    }

    /// The btrfs subvolume id of the watched root, or zero on other filesystems.
    pub fn watched_subvol(&self) -> u64 {
        self.watched_subvol
    }

    /// The directories above the root (its parent first, `/` last) that relative
    /// paths may be based on: a path event's base `{ dev: ANCESTOR_DEV, ino: k }`
    /// is `ancestors()[k]`.
    pub fn ancestors(&self) -> &[PathBuf] {
        &self.ancestors
    }

    /// Waits until the ring buffer is readable, then drains every available record
    /// into `out` (appending). Records that do not decode are logged and skipped.
    pub async fn next_batch(&mut self, out: &mut Vec<Event>) -> Result<(), CaptureError> {
        loop {
            // A record submitted while this reader is between draining the ring
            // and clearing its readiness wakes nobody (the kernel wakes the reader
            // only for a record into an empty ring): after reading any, or being
            // woken, look again shortly even without a wakeup.
            let mut drained = None;
            if self.poll_soon {
                let waited = tokio::time::timeout(POLL_AFTER_EVENTS, self.events.readable_mut()).await;
                if let Ok(guard) = waited {
                    let mut guard = guard?;
                    drained = Some(drain(guard.get_inner_mut(), out));
                    guard.clear_ready();
                }
            } else {
                let mut guard = self.events.readable_mut().await?;
                drained = Some(drain(guard.get_inner_mut(), out));
                guard.clear_ready();
            }
            let woken = drained.is_some();
            let (seen, compat_exec) = match drained {
                Some(drained) => drained,
                None => drain(self.events.get_mut(), out),
            };
            self.poll_soon = woken || seen > 0;
            if let Some(event) = compat_exec.filter(|_| self.cfg.compat_exits == 0) {
                tracing::warn!(pid = event.pid, "a 32-bit program started: capturing 32-bit syscalls from now on");
                self.attach_compat()?;
                out.push(event);
            }
            if self.last_prune.elapsed() >= PRUNE_INTERVAL {
                self.last_prune = std::time::Instant::now();
                self.prune_mappers();
            }
            if seen > 0 {
                return Ok(());
            }
        }
    }

    /// Total ring-buffer reserve failures so far (sum over CPUs).
    pub fn dropped(&self) -> Result<u64, CaptureError> {
        Ok(self.drops.get(&0, 0)?.iter().sum())
    }
}

/// Moves every available record of `ring` into `out`, but the announcement of a
/// 32-bit program, which is returned; also returns how many records there were.
fn drain(ring: &mut RingBuf<MapData>, out: &mut Vec<Event>) -> (usize, Option<Event>) {
    let mut seen = 0usize;
    let mut compat_exec = None;
    while let Some(record) = ring.next() {
        seen += 1;
        match events::decode(&record) {
            Ok(event) if matches!(event.kind, EventKind::Repair { reason: Repair::CompatExec, .. }) => {
                compat_exec.get_or_insert(event);
            }
            Ok(event) => out.push(event),
            Err(error) => tracing::warn!(%error, "skipping undecodable capture record"),
        }
    }
    (seen, compat_exec)
}

/// Loads program `name` for the BTF tracepoint `tracepoint` and attaches it.
fn attach(
    ebpf: &mut Ebpf,
    btf: &Btf,
    name: &'static str,
    tracepoint: &str,
) -> Result<(), CaptureError> {
    let program: &mut BtfTracePoint = ebpf
        .program_mut(name)
        .ok_or(CaptureError::Missing(name))?
        .try_into()?;
    program.load(tracepoint, btf)?;
    program.attach()?;
    Ok(())
}

/// Loads the syscall-exit program and attaches it to the classic tracepoint of
/// each of [`EXIT_SYSCALLS`] the kernel has; returns how many.
fn attach_exits(ebpf: &mut Ebpf) -> Result<usize, CaptureError> {
    let program: &mut TracePoint = ebpf
        .program_mut(names::SYS_EXIT_TP)
        .ok_or(CaptureError::Missing(names::SYS_EXIT_TP))?
        .try_into()?;
    program.load()?;
    let mut attached = 0;
    for name in EXIT_SYSCALLS {
        let tracepoint = format!("sys_exit_{name}");
        if !Path::new(TRACEFS).join("events/syscalls").join(&tracepoint).exists() {
            tracing::debug!(syscall = name, "no exit tracepoint for this syscall in this kernel");
            continue;
        }
        program.attach("syscalls", &tracepoint)?;
        attached += 1;
    }
    if attached == 0 {
        return Err(CaptureError::Calibration {
            path: PathBuf::from(TRACEFS),
            reason: "no syscall exit tracepoint could be found (is tracefs mounted?)".to_owned(),
        });
    }
    Ok(attached)
}

/// Adds to `mappers` every process that holds a shared mapping of a file on the
/// filesystem `dev` (the kernel's `dev_t`); returns how many.
fn seed_mappers(mappers: &mut BpfHashMap<MapData, u32, u8>, dev: u64) -> usize {
    let (major, minor) = (dev >> 20, dev & 0xf_ffff);
    let wanted = format!("{major:02x}:{minor:02x}");
    let mut seeded = 0;
    for tgid in proc_pids() {
        let Ok(maps) = std::fs::read(format!("/proc/{tgid}/maps")) else { continue };
        // `start-end perms offset dev inode path`, `s` last in perms when shared.
        let shared_on_dev = maps.split(|&b| b == b'\n').any(|line| {
            let mut fields = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
            let perms = fields.nth(1).unwrap_or_default();
            let dev = fields.nth(1).unwrap_or_default();
            perms.ends_with(b"s") && dev == wanted.as_bytes()
        });
        if shared_on_dev && mappers.insert(tgid, 1, 0).is_ok() {
            seeded += 1;
        }
    }
    seeded
}

/// The command name of a running 32-bit (ELFCLASS32) program, if there is one.
fn running_32bit_program() -> Option<String> {
    proc_pids().find_map(|tgid| {
        let mut header = [0u8; 5];
        let mut exe = File::open(format!("/proc/{tgid}/exe")).ok()?;
        io::Read::read_exact(&mut exe, &mut header).ok()?;
        (header == *b"\x7fELF\x01").then(|| {
            std::fs::read_to_string(format!("/proc/{tgid}/comm")).map(|c| c.trim().to_owned()).unwrap_or_default()
        })
    })
}

/// The process ids in /proc.
fn proc_pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
}

/// Loads the write-family entry program and attaches it to each of
/// [`ENTRY_SYSCALLS`] (classic tracepoints: tracefs must be mounted).
fn attach_write_entry(ebpf: &mut Ebpf) -> Result<(), CaptureError> {
    let program: &mut TracePoint = ebpf
        .program_mut(names::SYS_ENTER_WRITE)
        .ok_or(CaptureError::Missing(names::SYS_ENTER_WRITE))?
        .try_into()?;
    program.load()?;
    for name in ENTRY_SYSCALLS {
        program.attach("syscalls", name)?;
    }
    Ok(())
}

fn is_btrfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC)
}

/// Loads and attaches the fexit programs of [`VFS_PROGRAMS`] and returns the
/// [`vfs`] bits of those attached. When a required one fails, every one of them is
/// unloaded again (links included) and the failing function and error returned.
fn attach_vfs(ebpf: &mut Ebpf, btf: &Btf) -> Result<u32, (&'static str, ProgramError)> {
    let mut bits = 0;
    for p in &VFS_PROGRAMS {
        match load_fexit(ebpf, btf, p.name, p.function) {
            Ok(()) => bits |= p.bit,
            Err(error) if p.required => {
                for q in &VFS_PROGRAMS {
                    unload_fexit(ebpf, q.name);
                }
                return Err((p.function, error));
            }
            Err(error) => {
                unload_fexit(ebpf, p.name);
                tracing::warn!(
                    function = p.function,
                    error = %reason(&error),
                    "fexit program not attached; its syscalls are captured at sys_exit"
                );
            }
        }
    }
    Ok(bits)
}

fn load_fexit(
    ebpf: &mut Ebpf,
    btf: &Btf,
    name: &'static str,
    function: &str,
) -> Result<(), ProgramError> {
    let program: &mut FExit = ebpf
        .program_mut(name)
        .ok_or(ProgramError::UnexpectedProgramType)?
        .try_into()?;
    program.load(function, btf)?;
    program.attach()?;
    Ok(())
}

/// Detaches and unloads fexit program `name`; a program that never loaded is fine.
fn unload_fexit(ebpf: &mut Ebpf, name: &'static str) {
    let program: Option<&mut FExit> = ebpf.program_mut(name).and_then(|p| p.try_into().ok());
    if let Some(program) = program {
        match program.unload() {
            Ok(()) | Err(ProgramError::NotLoaded) => {}
            Err(error) => tracing::warn!(name, %error, "unloading fexit program"),
        }
    }
}

/// The errno text of a load/attach failure ("Operation not permitted"), or the
/// whole error when it carries none.
fn reason(error: &ProgramError) -> String {
    let io_error = match error {
        ProgramError::LoadError { io_error, .. } => Some(io_error),
        ProgramError::SyscallError(e) => Some(&e.io_error),
        _ => None,
    };
    match io_error.and_then(io::Error::raw_os_error) {
        Some(errno) => nix::errno::Errno::from_raw(errno).desc().to_owned(),
        None => error.to_string(),
    }
}

fn register(events: RingBuf<MapData>) -> Result<AsyncFd<RingBuf<MapData>>, CaptureError> {
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged until the
    // AsyncFd (which owns the RingBuf) is dropped.
    unsafe { AsyncFd::register_with_interest(events, Interest::READABLE) }
        .map_err(|e| CaptureError::Io(e.into()))
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, CaptureError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(CaptureError::Missing(name))?;
    Ok(T::try_from(map)?)
}

/// Opens directory `root` while the program is calibrating until it records a
/// directory with the root's inode number, and returns what the kernel saw.
fn calibrate(
    root: &Path,
    ino: u64,
    slot: &mut Array<MapData, Calibration>,
) -> Result<Calibration, CaptureError> {
    let mut last = None;
    for _ in 0..CALIBRATION_ATTEMPTS {
        slot.set(0, Calibration::default(), 0)?;
        // std opens with openat(2), which is what the program watches for.
        let dir = File::open(root).map_err(|source| CaptureError::Root {
            path: root.to_owned(),
            source,
        })?;
        let seen = slot.get(&0, 0)?;
        drop(dir);
        if seen.seen != 0 && seen.root.ino == ino {
            return Ok(seen);
        }
        last = Some(seen);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Err(CaptureError::Calibration {
        path: root.to_owned(),
        reason: match last {
            Some(c) if c.seen != 0 => {
                format!("kernel reported inode {} instead of {ino}", c.root.ino)
            }
            _ => "the program never saw the open (is it attached?)".to_owned(),
        },
    })
}

/// Raw syscall tracepoints do not need tracefs, but anything attached by
/// tracepoint name does, and it is not mounted at boot on the supported hosts.
fn ensure_tracefs() {
    let mounted = nix::sys::statfs::statfs(TRACEFS)
        .map(|s| s.filesystem_type() == nix::sys::statfs::TRACEFS_MAGIC)
        .unwrap_or(false);
    if mounted {
        return;
    }
    match nix::mount::mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    ) {
        Ok(()) => tracing::info!(path = TRACEFS, "mounted tracefs (it was not mounted)"),
        Err(error) => {
            tracing::warn!(path = TRACEFS, %error, "tracefs is not mounted and mounting it failed")
        }
    }
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; later ones ignore it.
fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscalls on a valid, initialised struct.
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut current) } == 0;
    if ok && current.rlim_cur == libc::RLIM_INFINITY {
        return;
    }
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "could not raise RLIMIT_MEMLOCK");
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as u64 } else { 4096 }
}
