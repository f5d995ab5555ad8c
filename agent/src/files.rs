//! Opening watched files by file handle, so a file renamed after its change was
//! captured is still read, and reading changed ranges.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Largest handle the kernel hands out (MAX_HANDLE_SZ).
const MAX_HANDLE_BYTES: usize = 128;

/// An opaque `struct file_handle`: its type and bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handle {
    handle_type: i32,
    bytes: Vec<u8>,
}

#[repr(C)]
struct RawHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_BYTES],
}

/// Access to the files of the watched tree.
pub struct Files {
    root: PathBuf,
    mount_fd: OwnedFd,
    handles: HashMap<u64, Handle>,
}

impl Files {
    pub fn new(root: &Path) -> io::Result<Files> {
        let mount_fd = OwnedFd::from(File::open(root)?);
        Ok(Files { root: root.to_path_buf(), mount_fd, handles: HashMap::new() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Remembers the handle of `ino` found at `path` (relative to the root).
    pub fn remember(&mut self, ino: u64, path: &Path) {
        // The name may already point elsewhere when the event is processed; a handle
        // of another inode would read the wrong file, so check before and after.
        let names_ino = |files: &Files| {
            std::fs::symlink_metadata(files.root.join(path)).is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == ino)
        };
        if !names_ino(self) {
            return;
        }
        if let Ok(handle) = self.handle_of(path)
            && names_ino(self) {
                self.handles.insert(ino, handle);
            }
    }

    pub fn forget(&mut self, ino: u64) {
        self.handles.remove(&ino);
    }

    pub fn clear(&mut self) {
        self.handles.clear();
    }

    fn handle_of(&self, path: &Path) -> io::Result<Handle> {
        let full = self.root.join(path);
        let c_path = CString::new(full.as_os_str().as_bytes()).map_err(io::Error::other)?;
        let mut raw = RawHandle { handle_bytes: MAX_HANDLE_BYTES as u32, handle_type: 0, f_handle: [0; MAX_HANDLE_BYTES] };
        let mut mount_id: libc::c_int = 0;
        // SAFETY: `raw` is a file_handle with room for MAX_HANDLE_BYTES, as its header says.
        let rc = unsafe {
            libc::name_to_handle_at(
                libc::AT_FDCWD,
                c_path.as_ptr(),
                (&mut raw as *mut RawHandle).cast(),
                &mut mount_id,
                0,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Handle { handle_type: raw.handle_type, bytes: raw.f_handle[..raw.handle_bytes as usize].to_vec() })
    }

    /// Opens `ino` read-only: by its handle when one is known, else by `path`,
    /// checking that `path` still names `ino`.
    pub fn open(&self, ino: u64, path: &Path) -> io::Result<File> {
        if let Some(handle) = self.handles.get(&ino) {
            let mut raw = RawHandle {
                handle_bytes: handle.bytes.len() as u32,
                handle_type: handle.handle_type,
                f_handle: [0; MAX_HANDLE_BYTES],
            };
            raw.f_handle[..handle.bytes.len()].copy_from_slice(&handle.bytes);
            // SAFETY: `raw` is a valid file_handle; the returned fd is owned by the File.
            let fd = unsafe {
                libc::open_by_handle_at(
                    self.mount_fd.as_raw_fd(),
                    (&mut raw as *mut RawHandle).cast(),
                    // Non-blocking: the inode may be a FIFO (an open with O_CREAT
                    // of an existing FIFO looks like a file's creation).
                    libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK,
                )
            };
            if fd >= 0 {
                // SAFETY: a fresh fd from the kernel, owned by nobody else.
                let file = unsafe { File::from_raw_fd(fd) };
                match file.metadata() {
                    Ok(m) if std::os::unix::fs::MetadataExt::ino(&m) == ino && m.is_file() => return Ok(file),
                    Ok(m) if !m.is_file() => return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")),
                    _ => {}
                }
            }
        }
        // Non-blocking and without following a symlink: the name may hold a FIFO
        // (or a link to one) by now, whose open would wait for a writer forever.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
            .open(self.root.join(path))?;
        let meta = file.metadata()?;
        if std::os::unix::fs::MetadataExt::ino(&meta) != ino || !meta.is_file() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "path names another inode now"));
        }
        Ok(file)
    }
}

/// A piece of a file range: data, or a hole that reads as zeros and takes no space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub start: u64,
    pub end: u64,
    pub data: bool,
}

/// Splits `[start, end)` into data and holes with SEEK_DATA / SEEK_HOLE, so holes
/// are replicated as holes instead of as written zeros.
pub fn segments(file: &File, start: u64, end: u64) -> io::Result<Vec<Segment>> {
    let fd = file.as_raw_fd();
    let seek = |offset: u64, whence| {
        // SAFETY: lseek on an fd we own; reads use pread, so moving the offset is harmless.
        let rc = unsafe { libc::lseek(fd, offset as libc::off_t, whence) };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc as u64) }
    };
    let mut found = Vec::new();
    let mut pos = start;
    while pos < end {
        let data = match seek(pos, libc::SEEK_DATA) {
            Ok(data) => data,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => end,
            // No SEEK_DATA here: treat the range as data.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                found.push(Segment { start: pos, end, data: true });
                break;
            }
            Err(e) => return Err(e),
        };
        if data > pos {
            found.push(Segment { start: pos, end: data.min(end), data: false });
        }
        if data >= end {
            break;
        }
        let hole = seek(data, libc::SEEK_HOLE)?.min(end);
        found.push(Segment { start: data, end: hole, data: true });
        pos = hole;
    }
    Ok(found)
}

/// Reads up to `len` bytes at `offset` (fewer at end of file).
pub fn read_range(file: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    // Read into spare capacity: zeroing the buffer first would cost as much as
    // hashing what is read into it.
    let len = len as usize;
    let mut data: Vec<u8> = Vec::with_capacity(len);
    while data.len() < len {
        let Ok(at) = libc::off_t::try_from(offset + data.len() as u64) else { return Err(io::Error::from_raw_os_error(libc::EINVAL)) };
        let want = len - data.len();
        let spare = data.spare_capacity_mut();
        // SAFETY: the kernel writes at most `want` bytes, no more than the spare
        // capacity (at least `len` in all), which this Vec owns.
        let n = unsafe { libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), want, at) };
        match n {
            0 => break,
            n if n > 0 => {
                // SAFETY: the kernel initialized the next `n` bytes.
                unsafe { data.set_len(data.len() + n as usize) };
            }
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn handle_survives_rename() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"hello").unwrap();
        let ino = std::fs::metadata(dir.path().join("a")).unwrap().ino();
        let mut files = Files::new(dir.path()).unwrap();
        files.remember(ino, Path::new("a"));
        std::fs::rename(dir.path().join("a"), dir.path().join("b")).unwrap();
        let file = files.open(ino, Path::new("a")).unwrap();
        assert_eq!(read_range(&file, 1, 100).unwrap(), b"ello");
    }

    #[test]
    fn holes_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(dir.path().join("s")).unwrap();
        file.set_len(4 << 20).unwrap();
        file.write_all_at(&[1u8; 4096], 1 << 20).unwrap();
        let found = segments(&file, 0, 4 << 20).unwrap();
        let data: Vec<&Segment> = found.iter().filter(|s| s.data).collect();
        assert_eq!(data.len(), 1, "{found:?}");
        assert!(data[0].start <= 1 << 20 && data[0].end >= (1 << 20) + 4096);
        assert_eq!(found.first().unwrap().start, 0);
        assert_eq!(found.last().unwrap().end, 4 << 20);
    }

    #[test]
    fn a_fifo_in_place_of_a_file_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("p");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let ino = std::fs::metadata(&fifo).unwrap().ino();
        let files = Files::new(dir.path()).unwrap();
        assert!(files.open(ino, Path::new("p")).is_err(), "not a regular file");
    }

    #[test]
    fn path_fallback_checks_the_inode() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        let files = Files::new(dir.path()).unwrap();
        assert!(files.open(12345678, Path::new("a")).is_err());
    }
}
