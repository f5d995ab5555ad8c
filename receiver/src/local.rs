//! Local changes on the standby: fanotify on the standby's filesystem reports
//! every name created, deleted or moved and every content or attribute change
//! there, with the process that made it. What the receiver itself did is
//! ignored; anything else under the root (but `.sluice`) was written by someone
//! on the standby, and is reported to the agent to be put back as the master
//! has it, the local version kept in the rollback directory.
//!
//! The fanotify group is made while the receiver still holds `CAP_SYS_ADMIN`
//! (before it drops its capabilities); reading it and resolving file handles
//! (`CAP_DAC_READ_SEARCH`) work after.

use std::collections::BTreeSet;
use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use sluice_proto::RelPath;
use tokio::io::unix::AsyncFd;

use crate::apply::STATE_DIR;

/// Largest `struct file_handle` payload (MAX_HANDLE_SZ).
const MAX_HANDLE_BYTES: usize = 128;

/// A fanotify group on the standby's filesystem, made before privileges drop.
pub struct Watch {
    fd: OwnedFd,
    root: PathBuf,
}

impl Watch {
    /// Marks the filesystem holding `root`.
    pub fn start(root: &Path) -> io::Result<Watch> {
        let flags = libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK | libc::FAN_REPORT_DFID_NAME | libc::FAN_REPORT_FID;
        // SAFETY: plain syscall; the returned fd is owned below.
        let fd = unsafe { libc::fanotify_init(flags, (libc::O_RDONLY | libc::O_CLOEXEC) as libc::c_uint) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mask = libc::FAN_CREATE
            | libc::FAN_DELETE
            | libc::FAN_MOVED_FROM
            | libc::FAN_MOVED_TO
            | libc::FAN_MODIFY
            | libc::FAN_ATTRIB
            | libc::FAN_ONDIR;
        let c_root = std::ffi::CString::new(root.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: valid fd and NUL-terminated path.
        let rc = unsafe { libc::fanotify_mark(fd.as_raw_fd(), libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM, mask, libc::AT_FDCWD, c_root.as_ptr()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Watch { fd, root: std::fs::canonicalize(root)? })
    }
}

/// A change someone other than the receiver made under the root.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalChange {
    pub path: RelPath,
    pub pid: i32,
}

/// Reads the watch's notices.
pub struct LocalChanges {
    fd: AsyncFd<OwnedFd>,
    mount: File,
    root: PathBuf,
    own_pid: i32,
    buf: Vec<u8>,
}

impl LocalChanges {
    /// Starts reading `watch` (inside a tokio runtime).
    pub fn new(watch: Watch) -> io::Result<LocalChanges> {
        let mount = File::open(&watch.root)?;
        // SAFETY: the AsyncFd owns the fanotify fd until it is dropped.
        let fd = unsafe { AsyncFd::register(watch.fd) }.map_err(|e| e.into_parts().1)?;
        Ok(LocalChanges { fd, mount, root: watch.root, own_pid: std::process::id() as i32, buf: vec![0; 64 * 1024] })
    }

    /// Waits for notices and returns the local changes among them (possibly none).
    pub async fn next_batch(&mut self) -> io::Result<BTreeSet<LocalChange>> {
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
            let events = self.buf.get(..usize::try_from(n).unwrap_or(0)).unwrap_or_default().to_vec();
            return Ok(self.parse(&events));
        }
    }

    fn parse(&self, mut events: &[u8]) -> BTreeSet<LocalChange> {
        const META: usize = std::mem::size_of::<libc::fanotify_event_metadata>();
        let mut out = BTreeSet::new();
        while events.len() >= META {
            // SAFETY: length checked; the struct is plain integers.
            let meta: libc::fanotify_event_metadata = unsafe { std::ptr::read_unaligned(events.as_ptr().cast()) };
            let len = meta.event_len as usize;
            if len < META || len > events.len() {
                break;
            }
            let (event, rest) = events.split_at(len);
            events = rest;
            if meta.pid == self.own_pid || meta.mask & libc::FAN_Q_OVERFLOW != 0 {
                continue;
            }
            let Some(mut info) = event.get(meta.metadata_len as usize..) else { continue };
            while let Some(header) = info.get(..4) {
                let kind = header.first().copied().unwrap_or_default();
                let info_len = u16::from_ne_bytes([header.get(2).copied().unwrap_or(0), header.get(3).copied().unwrap_or(0)]) as usize;
                let (Some(record), Some(after)) = (info.get(..info_len), info.get(info_len..)) else { break };
                if info_len < 4 {
                    break;
                }
                info = after;
                // header (4) + fsid (8), then struct file_handle.
                let Some((handle, name)) = record.get(12..).and_then(split_handle) else { continue };
                let path = match kind {
                    libc::FAN_EVENT_INFO_TYPE_DFID_NAME => {
                        let name = CStr::from_bytes_until_nul(name).map(|c| c.to_bytes()).unwrap_or_default();
                        if name.is_empty() || name == b"." {
                            continue;
                        }
                        self.path_of(handle).map(|dir| dir.join(std::ffi::OsStr::from_bytes(name)))
                    }
                    libc::FAN_EVENT_INFO_TYPE_FID | libc::FAN_EVENT_INFO_TYPE_DFID => self.path_of(handle),
                    _ => None,
                };
                if let Some(path) = path.and_then(|p| self.relative(&p)) {
                    out.insert(LocalChange { path, pid: meta.pid });
                }
            }
        }
        out
    }

    /// The path of the object `handle` names, if it is still there.
    fn path_of(&self, handle: &[u8]) -> Option<PathBuf> {
        let file = open_handle(self.mount.as_raw_fd(), handle).ok()?;
        std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()
    }

    /// `path` relative to the root, unless it is outside it or in `.sluice`.
    fn relative(&self, path: &Path) -> Option<RelPath> {
        let relative = path.strip_prefix(&self.root).ok()?;
        if relative.as_os_str().is_empty() || relative.starts_with(STATE_DIR) {
            return None;
        }
        RelPath::from_bytes(relative.as_os_str().as_bytes()).ok()
    }
}

/// `struct file_handle` at the start of `bytes`, and what follows it.
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
    raw.get_mut(..handle.len()).ok_or_else(|| io::Error::other("handle too long"))?.copy_from_slice(handle);
    // SAFETY: `raw` holds a complete file_handle (size checked by split_handle).
    let fd = unsafe { libc::open_by_handle_at(mount, raw.as_mut_ptr().cast(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}
