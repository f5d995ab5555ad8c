//! The second, independent signal: fanotify on the whole watched filesystem.
//!
//! The kernel reports through fanotify every content change (`FAN_MODIFY`: write,
//! truncate, fallocate, copies, clones, AIO and io_uring completions) and every
//! name created, deleted or moved on the filesystem, by file handle, whatever the
//! path, mount or mount namespace the process used. Capture by eBPF stays the
//! primary signal (it knows ranges and the order of operations); these notices
//! only check it. A notice that capture did not account for within a short grace
//! period means capture missed something there: that path is repaired (compared
//! with the standby and made identical) at once, and counted.
//!
//! Stores through shared mappings raise no fanotify event; they are covered by
//! capture's page-dirtying hooks and the verifier.
//!
//! Watching content changes is not free: every write on the filesystem then
//! allocates (or merges) a notice, about 1 µs on a 4 KiB `pwrite` here (2.6 µs
//! instead of 1.6 µs), against nothing measurable for names alone. So names are
//! checked by default and content only when asked (`cross_check = "all"`).

use crate::engine::Engine;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::{CStr, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;

/// How long capture has to account for a notice before it is judged.
const GRACE: Duration = Duration::from_millis(300);
/// How far past a notice's arrival capture must have reported before it is
/// judged (the change's syscall may return a little after fanotify queued it).
const CATCH_UP: Duration = Duration::from_millis(50);
/// How far before a notice arrived the change capture reported for it may lie
/// (fanotify carries no time; notices are read a little after the change).
const CAPTURED_WITHIN: Duration = Duration::from_secs(2);
/// How often a name that disagrees with the index is looked at before repair
/// (a later change to it may still be on its way).
const NAME_LOOKS: u8 = 2;
/// File handles remembered with their inode numbers.
const MAX_HANDLES: usize = 1 << 16;
/// Largest `struct file_handle` payload (MAX_HANDLE_SZ).
const MAX_HANDLE_BYTES: usize = 128;

/// What fanotify reported, with the handle resolved to an inode number.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Notice {
    /// The content of inode `ino` changed.
    Modified { ino: u64 },
    /// `name` in directory `dir` was created, deleted, or moved in or out.
    Name { dir: u64, name: OsString },
    /// The kernel's queue overflowed: notices were lost.
    Overflow,
}

/// The fanotify group marking the watched filesystem.
pub struct Notices {
    fd: AsyncFd<OwnedFd>,
    mount: OwnedFd,
    handles: HashMap<Vec<u8>, u64>,
    buf: Vec<u8>,
}

impl Notices {
    /// Marks the filesystem holding `root` for names, and content changes too
    /// with `content`. Must run inside a tokio runtime.
    pub fn start(root: &Path, content: bool) -> io::Result<Notices> {
        let flags = libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK | libc::FAN_REPORT_DFID_NAME | libc::FAN_REPORT_FID;
        // SAFETY: plain syscall; the returned fd is owned below.
        let fd = unsafe { libc::fanotify_init(flags, (libc::O_RDONLY | libc::O_CLOEXEC) as libc::c_uint) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut mask = libc::FAN_CREATE | libc::FAN_DELETE | libc::FAN_MOVED_FROM | libc::FAN_MOVED_TO | libc::FAN_ONDIR;
        if content {
            mask |= libc::FAN_MODIFY;
        }
        let c_root = std::ffi::CString::new(root.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: valid fd and NUL-terminated path.
        let rc = unsafe { libc::fanotify_mark(fd.as_raw_fd(), libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM, mask, libc::AT_FDCWD, c_root.as_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let mount = OwnedFd::from(File::open(root)?);
        // SAFETY: the AsyncFd owns the fanotify fd, which stays open and unchanged
        // until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(Notices { fd, mount, handles: HashMap::new(), buf: vec![0; 64 * 1024] })
    }

    /// Waits for notices and appends every one available to `out`.
    pub async fn next_batch(&mut self, out: &mut Vec<Notice>) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            let fd = guard.get_ref().as_raw_fd();
            // SAFETY: reads into our own buffer, at most its length.
            let n = unsafe { libc::read(fd, self.buf.as_mut_ptr().cast(), self.buf.len()) };
            if n < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::WouldBlock {
                    guard.clear_ready();
                    continue;
                }
                return Err(error);
            }
            let events = self.buf[..n as usize].to_vec();
            self.parse(&events, out);
            if !out.is_empty() {
                return Ok(());
            }
        }
    }

    fn parse(&mut self, mut events: &[u8], out: &mut Vec<Notice>) {
        const META: usize = std::mem::size_of::<libc::fanotify_event_metadata>();
        while events.len() >= META {
            // SAFETY: length checked; the struct is plain integers.
            let meta: libc::fanotify_event_metadata = unsafe { std::ptr::read_unaligned(events.as_ptr().cast()) };
            let len = meta.event_len as usize;
            if len < META || len > events.len() {
                break;
            }
            let (event, rest) = events.split_at(len);
            events = rest;
            if meta.mask & libc::FAN_Q_OVERFLOW != 0 {
                out.push(Notice::Overflow);
                continue;
            }
            let Some(mut info) = event.get(meta.metadata_len as usize..) else { continue };
            while info.len() >= 4 {
                let (kind, info_len) = (info[0], u16::from_ne_bytes([info[2], info[3]]) as usize);
                if info_len < 4 || info_len > info.len() {
                    break;
                }
                let record = &info[..info_len];
                info = &info[info_len..];
                // header (4) + fsid (8), then struct file_handle.
                let Some(handle) = record.get(12..) else { continue };
                let Some((handle, after)) = split_handle(handle) else { continue };
                match kind {
                    libc::FAN_EVENT_INFO_TYPE_FID if meta.mask & libc::FAN_MODIFY != 0 => {
                        if let Some(ino) = self.ino_of(handle) {
                            out.push(Notice::Modified { ino });
                        }
                    }
                    libc::FAN_EVENT_INFO_TYPE_DFID_NAME
                        if meta.mask & (libc::FAN_CREATE | libc::FAN_DELETE | libc::FAN_MOVED_FROM | libc::FAN_MOVED_TO) != 0 =>
                    {
                        let name = CStr::from_bytes_until_nul(after).map(|c| c.to_bytes()).unwrap_or_default();
                        if name.is_empty() || name == b"." {
                            continue;
                        }
                        if let Some(dir) = self.ino_of(handle) {
                            out.push(Notice::Name { dir, name: OsStr::from_bytes(name).to_os_string() });
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// The inode number a file handle names (cached: resolving costs two syscalls).
    fn ino_of(&mut self, handle: &[u8]) -> Option<u64> {
        if let Some(ino) = self.handles.get(handle) {
            return Some(*ino);
        }
        let ino = open_handle(self.mount.as_raw_fd(), handle).ok()?.metadata().ok()?.ino();
        if self.handles.len() >= MAX_HANDLES {
            self.handles.clear();
        }
        self.handles.insert(handle.to_vec(), ino);
        Some(ino)
    }
}

/// `struct file_handle` (handle_bytes, handle_type, f_handle) at the start of
/// `bytes`, as one slice, and what follows it.
fn split_handle(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let size = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    if size > MAX_HANDLE_BYTES {
        return None;
    }
    let end = 8 + size;
    Some((bytes.get(..end)?, bytes.get(end..)?))
}

/// Opens the object a `struct file_handle` names, with `O_PATH`.
fn open_handle(mount: RawFd, handle: &[u8]) -> io::Result<File> {
    let mut raw = [0u8; 8 + MAX_HANDLE_BYTES];
    raw[..handle.len()].copy_from_slice(handle);
    // SAFETY: `raw` holds a complete file_handle (size checked by split_handle).
    let fd = unsafe { libc::open_by_handle_at(mount, raw.as_mut_ptr().cast(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Notices waiting to be judged against what capture reported.
#[derive(Default)]
pub struct CrossCheck {
    pending: VecDeque<(Instant, Notice, u8)>,
    queued: HashSet<Notice>,
    /// Changes capture missed and this found.
    pub misses: u64,
    /// Times the kernel's notice queue overflowed.
    pub overflows: u64,
}

impl CrossCheck {
    /// Takes notices as they arrive.
    pub fn add(&mut self, notices: Vec<Notice>, now: Instant) {
        for notice in notices {
            if notice == Notice::Overflow {
                self.overflows += 1;
                tracing::warn!("fanotify's queue overflowed: some changes were not cross-checked (the verifier still covers them)");
                continue;
            }
            if self.queued.insert(notice.clone()) {
                self.pending.push_back((now + GRACE, notice, 0));
            }
        }
    }

    /// Judges the notices whose grace period is over, once capture has reported
    /// everything up to a little after they arrived (`caught_up_ns`: the capture
    /// time of the newest event handled, or now when none is waiting): a busy agent
    /// behind on its events is not taken for a capture that missed them.
    pub fn judge(&mut self, engine: &mut Engine, now: Instant, now_mono_ns: u64, caught_up_ns: u64) {
        while let Some((due, _, _)) = self.pending.front() {
            if *due > now {
                break;
            }
            let arrived_ns = now_mono_ns.saturating_sub(now.duration_since(*due - GRACE).as_nanos() as u64);
            if caught_up_ns < arrived_ns + CATCH_UP.as_nanos() as u64 {
                break;
            }
            let Some((_, notice, looks)) = self.pending.pop_front() else { break };
            self.queued.remove(&notice);
            match &notice {
                Notice::Modified { ino } => self.judge_modified(engine, *ino, arrived_ns),
                Notice::Name { dir, name } => {
                    if let Err(again) = self.judge_name(engine, *dir, name, looks)
                        && self.queued.insert(notice.clone())
                    {
                        self.pending.push_back((now + again, notice, looks + 1));
                    }
                }
                Notice::Overflow => {}
            }
        }
    }

    fn judge_modified(&mut self, engine: &mut Engine, ino: u64, arrived_ns: u64) {
        let Some(path) = engine.index().path_of(ino) else {
            // Not in the tree as the index knows it; if it is in the tree, the
            // notice of its name tells.
            return;
        };
        let captured = engine.last_change_ns(ino).is_some_and(|at| at + CAPTURED_WITHIN.as_nanos() as u64 >= arrived_ns);
        if captured || !engine.is_settled(ino) {
            return;
        }
        self.missed(engine, path, "its content changed and capture reported nothing");
    }

    /// `Err(delay)` asks for another look after `delay`.
    fn judge_name(&mut self, engine: &mut Engine, dir: u64, name: &OsStr, looks: u8) -> Result<(), Duration> {
        let Some(dir_path) = engine.index().path_of(dir) else { return Ok(()) };
        let Ok(path) = dir_path.join(name) else { return Ok(()) };
        if crate::scan::is_excluded(&path) {
            return Ok(());
        }
        let live = std::fs::symlink_metadata(engine.full_path(&path)).ok();
        let replicated = live.as_ref().filter(|meta| {
            let kind = meta.file_type();
            !(kind.is_socket() || ((kind.is_block_device() || kind.is_char_device()) && !engine.replicates_devices()))
        });
        let indexed = engine.index().lookup(dir, name);
        if replicated.map(|m| m.ino()) == indexed {
            return Ok(());
        }
        if looks + 1 < NAME_LOOKS {
            return Err(GRACE);
        }
        let what = match (replicated, indexed) {
            (Some(_), None) => "it appeared and capture reported nothing",
            (None, Some(_)) => "it went away and capture reported nothing",
            _ => "it was replaced and capture reported nothing",
        };
        self.missed(engine, path, what);
        Ok(())
    }

    fn missed(&mut self, engine: &mut Engine, path: sluice_proto::RelPath, what: &str) {
        self.misses += 1;
        tracing::warn!(%path, "fanotify: {what}; repairing it");
        engine.request_repair(path, format!("fanotify: {what}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, Options};
    use std::fs;

    fn engine(root: &Path) -> Engine {
        let mut engine = Engine::new(root, 1, Options::default()).unwrap();
        engine.rescan().unwrap();
        engine
    }

    fn ino(path: &Path) -> u64 {
        fs::symlink_metadata(path).unwrap().ino()
    }

    #[test]
    fn notices_capture_missed_ask_for_repairs() {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        fs::create_dir(root.join("d")).unwrap();
        fs::write(root.join("d/seen"), b"x").unwrap();
        fs::write(root.join("d/written"), b"x").unwrap();
        let mut engine = engine(&root);
        let d = ino(&root.join("d"));
        // Behind capture's back: a new name, a removed one, a content change.
        fs::write(root.join("d/appeared"), b"new").unwrap();
        fs::remove_file(root.join("d/seen")).unwrap();
        fs::write(root.join("d/written"), b"changed").unwrap();
        let mut check = CrossCheck::default();
        let start = Instant::now();
        check.add(
            vec![
                Notice::Name { dir: d, name: "appeared".into() },
                Notice::Name { dir: d, name: "seen".into() },
                Notice::Modified { ino: ino(&root.join("d/written")) },
            ],
            start,
        );
        let now_ns = crate::session::monotonic_ns();
        check.judge(&mut engine, start, now_ns, u64::MAX);
        assert!(!engine.has_repairs(), "nothing is judged before the grace period");
        // Capture is still on events from before the notices arrived.
        check.judge(&mut engine, start + GRACE, now_ns, now_ns - GRACE.as_nanos() as u64);
        assert!(!engine.has_repairs(), "nor before capture has caught up");
        check.judge(&mut engine, start + GRACE, now_ns, u64::MAX);
        check.judge(&mut engine, start + 3 * GRACE, now_ns, u64::MAX);
        assert_eq!(check.misses, 3);
        let repair = engine.take_repairs().unwrap().unwrap();
        let paths: Vec<String> = repair.subtrees.iter().map(|p| p.to_string()).collect();
        assert_eq!(paths, ["d/appeared", "d/seen", "d/written"]);
    }

    #[test]
    fn notices_capture_accounted_for_are_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        fs::write(root.join("f"), b"x").unwrap();
        let mut engine = engine(&root);
        let f = ino(&root.join("f"));
        let event = crate::capture::Event {
            pid: 1,
            tid: 1,
            ts_ns: crate::session::monotonic_ns(),
            kind: crate::capture::EventKind::Write { inode: crate::capture::InodeId { dev: 1, ino: f }, offset: 0, len: 1, fd: 3 },
        };
        let mut out = Vec::new();
        engine.handle(&event, &mut out);
        engine.flush(&mut out);
        let mut check = CrossCheck::default();
        let start = Instant::now();
        check.add(vec![Notice::Modified { ino: f }, Notice::Name { dir: ino(&root), name: "f".into() }], start);
        check.judge(&mut engine, start + 3 * GRACE, crate::session::monotonic_ns(), u64::MAX);
        assert_eq!(check.misses, 0);
        assert!(!engine.has_repairs());
    }

    #[tokio::test]
    async fn fanotify_reports_writes_and_names_by_inode() {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        fs::create_dir(root.join("d")).unwrap();
        let mut notices = match Notices::start(&root, true) {
            Ok(notices) => notices,
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => panic!("fanotify needs root: {e}"),
            Err(e) => panic!("fanotify: {e}"),
        };
        fs::write(root.join("d/f"), b"hello").unwrap();
        fs::rename(root.join("d/f"), root.join("d/g")).unwrap();
        let (d, g) = (ino(&root.join("d")), ino(&root.join("d/g")));
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(seen.contains(&Notice::Modified { ino: g }) && seen.contains(&Notice::Name { dir: d, name: "g".into() })) {
            assert!(Instant::now() < deadline, "{seen:?}");
            let mut batch = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), notices.next_batch(&mut batch)).await.unwrap().unwrap();
            seen.extend(batch);
        }
        assert!(seen.contains(&Notice::Name { dir: d, name: "f".into() }), "{seen:?}");
    }
}
