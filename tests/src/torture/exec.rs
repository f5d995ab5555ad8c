//! Carrying out an [`Op`] with the real system calls, exactly as logged: resolving
//! each path the way it says (absolute, bind mount, relative to a cwd, dirfd), and
//! returning one result per call so the log shows which step failed and how.

use std::ffi::{CString, c_int};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use io_uring::{IoUring, opcode, types};

use super::ops::{AioWrite, Msync, Op, OpenFlag, P, RenameMode, Step, Time, UringCall, UringWrite, UringWriteKind, Via, Whence};
use super::sys::{self, AioBuf, AlignedBuf, Res, cvt, cvt_neg, show};

/// Where the areas a worker uses are: the master mount, the tree inside it, the
/// `outside` directory beside the tree, and the bind mount of the tree.
#[derive(Clone, Debug)]
pub struct Layout {
    pub mnt: PathBuf,
    pub bind: PathBuf,
}

impl Layout {
    pub fn tree(&self) -> PathBuf {
        self.mnt.join("tree")
    }

    pub fn outside(&self) -> PathBuf {
        self.mnt.join("outside")
    }

    /// The absolute path of `p` (through the bind mount for `bind:`).
    pub fn abs(&self, p: &P) -> PathBuf {
        match p.via() {
            Via::Bind => self.bind.join(p.rel()),
            Via::Out => self.outside().join(p.rel()),
            _ => self.tree().join(p.rel()),
        }
    }
}

/// A resolved path: a directory fd (or AT_FDCWD) and a name relative to it.
struct At {
    dir: Option<OwnedFd>,
    path: CString,
}

impl At {
    fn fd(&self) -> RawFd {
        self.dir.as_ref().map_or(libc::AT_FDCWD, |d| d.as_raw_fd())
    }

    fn ptr(&self) -> *const libc::c_char {
        self.path.as_ptr()
    }
}

const RENAME_NOREPLACE: u32 = 1;
const RENAME_EXCHANGE: u32 = 2;
const RWF_APPEND: c_int = 0x10;

/// Runs operations for one worker process (or a replay).
pub struct Executor {
    layout: Layout,
}

impl Executor {
    pub fn new(layout: Layout) -> Executor {
        Executor { layout }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Executes `op` and returns the results of its calls, first the opening or the
    /// one call, then one per step.
    pub fn run(&self, op: &Op) -> Vec<String> {
        match op {
            Op::Fd { path, flags, mode, steps } => self.fd_op(path, flags, *mode, steps),
            Op::Truncate { path, size } => one(self.plain(path).and_then(|p| {
                // SAFETY: a valid C string.
                cvt(unsafe { libc::truncate(p.as_ptr(), *size as i64) } as i64)
            })),
            Op::CopyFileRange { src, dst, src_off, dst_off, len } => {
                self.two_files(src, dst, |s, d| {
                    let (mut off_in, mut off_out) = (*src_off as i64, *dst_off as i64);
                    // SAFETY: valid fds and offset pointers.
                    cvt(unsafe { libc::copy_file_range(s, &mut off_in, d, &mut off_out, *len as usize, 0) } as i64)
                })
            }
            Op::Sendfile { src, dst, src_off, dst_off, len } => self.two_files(src, dst, |s, d| {
                // SAFETY: valid fds and offset pointer.
                cvt(unsafe { libc::lseek(d, *dst_off as i64, libc::SEEK_SET) })?;
                let mut off = *src_off as i64;
                cvt(unsafe { libc::sendfile(d, s, &mut off, *len as usize) } as i64)
            }),
            Op::Splice { src, dst, src_off, dst_off, len } => {
                self.two_files(src, dst, |s, d| splice_through_pipe(s, d, *src_off, *dst_off, *len))
            }
            Op::Ficlone { src, dst } => self.two_files(src, dst, sys::ficlone),
            Op::Ficlonerange { src, dst, src_off, dst_off, len } => {
                self.two_files(src, dst, |s, d| sys::ficlonerange(s, d, *src_off, *dst_off, *len))
            }
            Op::Dedupe { src, dst, src_off, dst_off, len } => {
                self.two_files(src, dst, |s, d| sys::dedupe(s, d, *src_off, *dst_off, *len))
            }
            Op::Tmpfile { dir, path, mode, len, seed } => self.tmpfile(dir, path, *mode, *len, *seed),
            Op::Aio { path, direct, writes } => self.aio(path, *direct, writes),
            Op::Uring { path, direct, writes } => self.uring_writes(path, *direct, writes),
            Op::UringNs(call) => self.uring_call(call),
            Op::SharedFd { path, trunc, threads, writes, len, seed } => {
                self.shared_fd(path, *trunc, *threads, *writes, *len, *seed)
            }
            Op::Create { path, mode, excl } => {
                let mut flags = libc::O_WRONLY | libc::O_CREAT;
                if *excl {
                    flags |= libc::O_EXCL;
                }
                one(self.open(path, flags, *mode).map(|_| 0))
            }
            Op::Unlink { path } => one(self.at(path).and_then(|a| {
                // SAFETY: valid dirfd and C string.
                cvt(unsafe { libc::unlinkat(a.fd(), a.ptr(), 0) } as i64)
            })),
            Op::Rmdir { path } => one(self.at(path).and_then(|a| {
                // SAFETY: as above.
                cvt(unsafe { libc::unlinkat(a.fd(), a.ptr(), libc::AT_REMOVEDIR) } as i64)
            })),
            Op::Mkdir { path, mode } => one(self.at(path).and_then(|a| {
                // SAFETY: as above.
                cvt(unsafe { libc::mkdirat(a.fd(), a.ptr(), *mode) } as i64)
            })),
            Op::RemoveTree { path } => one(remove_tree(&self.layout.abs(path))),
            Op::Rename { from, to, mode } => one(self.rename(from, to, *mode)),
            Op::Link { from, to } => one(self.at(from).and_then(|a| {
                let b = self.at(to)?;
                // SAFETY: valid dirfds and C strings.
                cvt(unsafe { libc::linkat(a.fd(), a.ptr(), b.fd(), b.ptr(), 0) } as i64)
            })),
            Op::Symlink { target, path } => one(self.at(path).and_then(|a| {
                let target = cstring(target)?;
                // SAFETY: as above.
                cvt(unsafe { libc::symlinkat(target.as_ptr(), a.fd(), a.ptr()) } as i64)
            })),
            Op::Mkfifo { path, mode } => one(self.at(path).and_then(|a| {
                // SAFETY: as above.
                cvt(unsafe { libc::mknodat(a.fd(), a.ptr(), libc::S_IFIFO | *mode, 0) } as i64)
            })),
            Op::Chmod { path, mode } => one(self.at(path).and_then(|a| {
                // SAFETY: as above.
                cvt(unsafe { libc::fchmodat(a.fd(), a.ptr(), *mode, 0) } as i64)
            })),
            Op::Chown { path, uid, gid, nofollow } => one(self.at(path).and_then(|a| {
                let flags = if *nofollow { libc::AT_SYMLINK_NOFOLLOW } else { 0 };
                // SAFETY: as above.
                cvt(unsafe { libc::fchownat(a.fd(), a.ptr(), *uid, *gid, flags) } as i64)
            })),
            Op::Utimens { path, atime, mtime, nofollow } => one(self.at(path).and_then(|a| {
                let times = [timespec(*atime), timespec(*mtime)];
                let flags = if *nofollow { libc::AT_SYMLINK_NOFOLLOW } else { 0 };
                // SAFETY: as above, with two timespecs.
                cvt(unsafe { libc::utimensat(a.fd(), a.ptr(), times.as_ptr(), flags) } as i64)
            })),
            Op::SetXattr { path, name, len, seed, flags } => {
                let value = crate::util::random_bytes(*len as usize, *seed);
                one(self.setxattr(path, name, &value, *flags))
            }
            Op::RemoveXattr { path, name } => one(self.plain(path).and_then(|p| {
                let name = cstring(name)?;
                // SAFETY: valid C strings.
                cvt(unsafe { libc::removexattr(p.as_ptr(), name.as_ptr()) } as i64)
            })),
            Op::SetAcl { path, default, entries } => {
                one(self.setxattr(path, acl_name(*default), &sys::encode_acl(entries), 0))
            }
            Op::RemoveAcl { path, default } => one(self.plain(path).and_then(|p| {
                let name = cstring(acl_name(*default))?;
                // SAFETY: valid C strings.
                cvt(unsafe { libc::removexattr(p.as_ptr(), name.as_ptr()) } as i64)
            })),
        }
    }

    /// Resolves `p` for an `*at` call, changing the process's cwd for the relative
    /// forms (a worker is single-threaded while it resolves).
    fn at(&self, p: &P) -> Result<At, String> {
        let rel = p.rel();
        let tree = self.layout.tree();
        let plain = |path: PathBuf| Ok(At { dir: None, path: cstring_path(&path)? });
        match p.via() {
            Via::Abs => plain(tree.join(rel)),
            Via::Bind => plain(self.layout.bind.join(rel)),
            Via::Out => plain(self.layout.outside().join(rel)),
            Via::Cwd => {
                chdir(&tree)?;
                plain(PathBuf::from(rel))
            }
            Via::FsRoot => {
                chdir(&self.layout.mnt)?;
                plain(Path::new("tree").join(rel))
            }
            Via::Up => {
                let parent = self.layout.mnt.parent().ok_or("mount point has no parent")?;
                let name = self.layout.mnt.file_name().ok_or("mount point has no name")?;
                chdir(parent)?;
                plain(Path::new(name).join("tree").join(rel))
            }
            Via::DirFd => {
                let (dir, name) = match rel.rsplit_once('/') {
                    Some((dir, name)) => (tree.join(dir), name),
                    None => (tree, rel),
                };
                let dir_c = cstring_path(&dir)?;
                // SAFETY: a valid C string.
                let fd = cvt(unsafe {
                    libc::open(dir_c.as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC)
                } as i64)?;
                // SAFETY: open returned a new fd we now own.
                let dir = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
                Ok(At { dir: Some(dir), path: cstring(name)? })
            }
        }
    }

    /// Resolves `p` for a call that takes a plain path (truncate, setxattr): the
    /// dirfd form becomes `fchdir(dirfd)` plus the name.
    fn plain(&self, p: &P) -> Result<CString, String> {
        let at = self.at(p)?;
        if let Some(dir) = &at.dir {
            // SAFETY: a valid directory fd.
            cvt(unsafe { libc::fchdir(dir.as_raw_fd()) } as i64)?;
        }
        Ok(at.path)
    }

    /// Opens a regular file. O_NONBLOCK at open keeps a FIFO (another worker may
    /// have put one under this name) from blocking the worker; it is cleared again
    /// for the regular file.
    fn open(&self, p: &P, flags: c_int, mode: u32) -> Result<OwnedFd, String> {
        let at = self.at(p)?;
        let all = flags | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;
        // SAFETY: valid dirfd and C string.
        let fd = cvt(unsafe { libc::openat(at.fd(), at.ptr(), all, mode) } as i64)? as RawFd;
        // SAFETY: openat returned a new fd we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a zeroed stat is a valid out-parameter.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } as i64)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err("not-a-file".into());
        }
        // SAFETY: plain fcntl calls on our fd.
        let current = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) } as i64)?;
        cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, (current as c_int) & !libc::O_NONBLOCK) } as i64)?;
        Ok(fd)
    }

    fn fd_op(&self, path: &P, flags: &[OpenFlag], mode: u32, steps: &[Step]) -> Vec<String> {
        let fd = match self.open(path, open_flags(flags), mode) {
            Ok(fd) => fd,
            Err(e) => return vec![e],
        };
        let mut out = vec!["ok".to_owned()];
        for step in steps {
            out.push(show(&step_on(fd.as_raw_fd(), step)));
        }
        out
    }

    /// Opens `src` read-only and `dst` read-write (created if missing), then runs
    /// `call(src_fd, dst_fd)`.
    fn two_files(&self, src: &P, dst: &P, call: impl FnOnce(RawFd, RawFd) -> Res) -> Vec<String> {
        let source = match self.open(src, libc::O_RDONLY, 0) {
            Ok(fd) => fd,
            Err(e) => return vec![format!("src:{e}")],
        };
        let target = match self.open(dst, libc::O_RDWR | libc::O_CREAT, 0o644) {
            Ok(fd) => fd,
            Err(e) => return vec![format!("dst:{e}")],
        };
        vec![show(&call(source.as_raw_fd(), target.as_raw_fd()))]
    }

    fn rename(&self, from: &P, to: &P, mode: RenameMode) -> Res {
        let a = self.at(from)?;
        let b = self.at(to)?;
        let flags = match mode {
            RenameMode::Plain => 0,
            RenameMode::Noreplace => RENAME_NOREPLACE,
            RenameMode::Exchange => RENAME_EXCHANGE,
        };
        // SAFETY: valid dirfds and C strings.
        cvt(unsafe { libc::renameat2(a.fd(), a.ptr(), b.fd(), b.ptr(), flags) } as i64)
    }

    fn setxattr(&self, path: &P, name: &str, value: &[u8], flags: i32) -> Res {
        let p = self.plain(path)?;
        let name = cstring(name)?;
        // SAFETY: valid C strings and buffer.
        cvt(unsafe { libc::setxattr(p.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), flags) }
            as i64)
    }

    fn tmpfile(&self, dir: &P, path: &P, mode: u32, len: u32, seed: u64) -> Vec<String> {
        let at = match self.at(dir) {
            Ok(at) => at,
            Err(e) => return vec![e],
        };
        // SAFETY: valid dirfd and C string.
        let fd = match cvt(unsafe { libc::openat(at.fd(), at.ptr(), libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC, mode) } as i64) {
            // SAFETY: a new fd we now own.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd as RawFd) },
            Err(e) => return vec![e],
        };
        let buf = AlignedBuf::new(len as usize, seed);
        // SAFETY: writing our own buffer.
        let wrote = cvt(unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) } as i64);
        let linked = self.at(path).and_then(|target| {
            let empty = CString::default();
            // SAFETY: AT_EMPTY_PATH links the fd itself; valid dirfd and strings.
            cvt(unsafe {
                libc::linkat(fd.as_raw_fd(), empty.as_ptr(), target.fd(), target.ptr(), libc::AT_EMPTY_PATH)
            } as i64)
        });
        vec!["ok".into(), show(&wrote), show(&linked)]
    }

    fn aio(&self, path: &P, direct: bool, writes: &[AioWrite]) -> Vec<String> {
        let mut flags = libc::O_WRONLY | libc::O_CREAT;
        if direct {
            flags |= libc::O_DIRECT;
        }
        let fd = match self.open(path, flags, 0o644) {
            Ok(fd) => fd,
            Err(e) => return vec![e],
        };
        let buffers: Vec<AlignedBuf> = writes.iter().map(|w| AlignedBuf::new(w.len as usize, w.seed)).collect();
        let iovecs: Vec<Vec<libc::iovec>> = writes
            .iter()
            .zip(&buffers)
            .map(|(w, buf)| if w.vectored { buf.iovecs(&split_in_two(w.len, direct)) } else { Vec::new() })
            .collect();
        let submissions: Vec<(u64, AioBuf<'_>)> = writes
            .iter()
            .zip(buffers.iter().zip(&iovecs))
            .map(|(w, (buf, iov))| (w.off, if w.vectored { AioBuf::Vectored(iov) } else { AioBuf::Plain(buf) }))
            .collect();
        let mut out = vec!["ok".to_owned()];
        out.extend(sys::aio_write_all(fd.as_raw_fd(), &submissions).iter().map(show));
        out
    }

    fn uring_writes(&self, path: &P, direct: bool, writes: &[UringWrite]) -> Vec<String> {
        let mut flags = libc::O_WRONLY | libc::O_CREAT;
        if direct {
            flags |= libc::O_DIRECT;
        }
        let fd = match self.open(path, flags, 0o644) {
            Ok(fd) => fd,
            Err(e) => return vec![e],
        };
        let mut ring = match IoUring::new(16) {
            Ok(ring) => ring,
            Err(e) => return vec![format!("io_uring_setup:{}", io_error(&e))],
        };
        let buffers: Vec<AlignedBuf> = writes.iter().map(|w| AlignedBuf::new(w.len as usize, w.seed)).collect();
        let iovecs: Vec<Vec<libc::iovec>> = writes
            .iter()
            .zip(&buffers)
            .map(|(w, buf)| buf.iovecs(&split_in_two(w.len, direct)))
            .collect();
        let fixed: Vec<libc::iovec> = buffers.iter().map(|b| b.iovecs(&[b.len() as u32])[0]).collect();
        if writes.iter().any(|w| w.kind == UringWriteKind::WriteFixed) {
            // SAFETY: the buffers outlive the ring (dropped after it, below).
            if let Err(e) = unsafe { ring.submitter().register_buffers(&fixed) } {
                return vec![format!("register_buffers:{}", io_error(&e))];
            }
        }
        let target = types::Fd(fd.as_raw_fd());
        for (i, ((w, buf), iov)) in writes.iter().zip(&buffers).zip(&iovecs).enumerate() {
            let entry = match w.kind {
                UringWriteKind::Write => opcode::Write::new(target, buf.as_ptr(), w.len).offset(w.off).build(),
                UringWriteKind::Writev => {
                    opcode::Writev::new(target, iov.as_ptr(), iov.len() as u32).offset(w.off).build()
                }
                UringWriteKind::WriteFixed => {
                    opcode::WriteFixed::new(target, buf.as_ptr(), w.len, i as u16).offset(w.off).build()
                }
            };
            // SAFETY: buffers and iovecs live until the completions are reaped.
            unsafe { ring.submission().push(&entry.user_data(i as u64)) }.expect("ring has room for 16 entries");
        }
        let mut out = vec!["ok".to_owned()];
        out.extend(submit_and_reap(&mut ring, writes.len()).iter().map(show));
        drop(ring);
        drop(buffers);
        out
    }

    fn uring_call(&self, call: &UringCall) -> Vec<String> {
        let mut ring = match IoUring::new(4) {
            Ok(ring) => ring,
            Err(e) => return vec![format!("io_uring_setup:{}", io_error(&e))],
        };
        let mut single = |entry: io_uring::squeue::Entry| -> Res {
            // SAFETY: the caller keeps every pointer in `entry` alive until return.
            unsafe { ring.submission().push(&entry) }.expect("ring has room");
            submit_and_reap(&mut ring, 1).pop().unwrap_or(Err("no-completion".into()))
        };
        match call {
            UringCall::Create { path, mode, trunc, len, seed } => {
                let at = match self.at(path) {
                    Ok(at) => at,
                    Err(e) => return vec![e],
                };
                let mut flags = libc::O_WRONLY | libc::O_CREAT | libc::O_NONBLOCK | libc::O_CLOEXEC;
                if *trunc {
                    flags |= libc::O_TRUNC;
                }
                let opened = single(
                    opcode::OpenAt::new(types::Fd(at.fd()), at.ptr()).flags(flags).mode(*mode).build(),
                );
                let fd = match opened {
                    Ok(fd) => fd as RawFd,
                    Err(e) => return vec![e],
                };
                let mut out = vec!["ok".to_owned()];
                if *len > 0 {
                    let buf = AlignedBuf::new(*len as usize, *seed);
                    out.push(show(&single(opcode::Write::new(types::Fd(fd), buf.as_ptr(), *len).offset(0).build())));
                }
                out.push(show(&single(opcode::Close::new(types::Fd(fd)).build())));
                out
            }
            UringCall::Rename { from, to, mode } => one(self.at(from).and_then(|a| {
                let b = self.at(to)?;
                let flags = match mode {
                    RenameMode::Plain => 0,
                    RenameMode::Noreplace => RENAME_NOREPLACE,
                    RenameMode::Exchange => RENAME_EXCHANGE,
                };
                single(opcode::RenameAt::new(types::Fd(a.fd()), a.ptr(), types::Fd(b.fd()), b.ptr()).flags(flags).build())
            })),
            UringCall::Unlink { path } => one(self.at(path).and_then(|a| single(opcode::UnlinkAt::new(types::Fd(a.fd()), a.ptr()).build()))),
            UringCall::Rmdir { path } => one(self.at(path).and_then(|a| {
                single(opcode::UnlinkAt::new(types::Fd(a.fd()), a.ptr()).flags(libc::AT_REMOVEDIR).build())
            })),
            UringCall::Mkdir { path, mode } => {
                one(self.at(path).and_then(|a| single(opcode::MkDirAt::new(types::Fd(a.fd()), a.ptr()).mode(*mode).build())))
            }
            UringCall::Symlink { target, path } => one(self.at(path).and_then(|a| {
                let target = cstring(target)?;
                single(opcode::SymlinkAt::new(types::Fd(a.fd()), target.as_ptr(), a.ptr()).build())
            })),
            UringCall::Link { from, to } => one(self.at(from).and_then(|a| {
                let b = self.at(to)?;
                single(opcode::LinkAt::new(types::Fd(a.fd()), a.ptr(), types::Fd(b.fd()), b.ptr()).build())
            })),
            UringCall::Fallocate { path, mode, off, len } => match self.open(path, libc::O_RDWR, 0) {
                Err(e) => vec![e],
                Ok(fd) => vec![
                    "ok".into(),
                    show(&single(
                        opcode::Fallocate::new(types::Fd(fd.as_raw_fd()), *len).offset(*off).mode(mode.bits()).build(),
                    )),
                ],
            },
            UringCall::Ftruncate { path, size } => match self.open(path, libc::O_RDWR, 0) {
                Err(e) => vec![e],
                Ok(fd) => vec!["ok".into(), show(&single(opcode::Ftruncate::new(types::Fd(fd.as_raw_fd()), *size).build()))],
            },
            UringCall::Setxattr { path, name, len, seed } => one(self.plain(path).and_then(|p| {
                let name = cstring(name)?;
                let value = crate::util::random_bytes(*len as usize, *seed);
                single(opcode::SetXattr::new(name.as_ptr(), value.as_ptr().cast(), p.as_ptr(), *len).build())
            })),
        }
    }

    fn shared_fd(&self, path: &P, trunc: bool, threads: u32, writes: u32, len: u32, seed: u64) -> Vec<String> {
        let mut flags = libc::O_WRONLY | libc::O_CREAT;
        if trunc {
            flags |= libc::O_TRUNC;
        }
        let fd = match self.open(path, flags, 0o644) {
            Ok(fd) => fd,
            Err(e) => return vec![e],
        };
        let raw = fd.as_raw_fd();
        let mut out = vec!["ok".to_owned()];
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    scope.spawn(move || {
                        let buf = AlignedBuf::new(len as usize, seed ^ u64::from(t));
                        let mut total = 0i64;
                        for _ in 0..writes {
                            // SAFETY: the fd stays open until the scope ends.
                            match cvt(unsafe { libc::write(raw, buf.as_ptr().cast(), buf.len()) } as i64) {
                                Ok(n) => total += n,
                                Err(e) => return Err(e),
                            }
                        }
                        Ok(total)
                    })
                })
                .collect();
            for handle in handles {
                out.push(show(&handle.join().unwrap_or_else(|_| Err("thread-panicked".into()))));
            }
        });
        out
    }
}

/// One fd step.
fn step_on(fd: RawFd, step: &Step) -> Res {
    // SAFETY (every call below): `fd` is open for the duration, and buffers and
    // iovecs live across the call.
    match step {
        Step::Write { len, seed } => {
            let buf = AlignedBuf::new(*len as usize, *seed);
            cvt(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) } as i64)
        }
        Step::Pwrite { off, len, seed } => {
            let buf = AlignedBuf::new(*len as usize, *seed);
            cvt(unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), *off as i64) } as i64)
        }
        Step::Writev { lens, seed } => {
            let buf = AlignedBuf::new(lens.iter().map(|l| *l as usize).sum(), *seed);
            let iov = buf.iovecs(lens);
            cvt(unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as c_int) } as i64)
        }
        Step::Pwritev { off, lens, seed } => {
            let buf = AlignedBuf::new(lens.iter().map(|l| *l as usize).sum(), *seed);
            let iov = buf.iovecs(lens);
            cvt(unsafe { libc::pwritev(fd, iov.as_ptr(), iov.len() as c_int, *off as i64) } as i64)
        }
        Step::Pwritev2 { off, lens, seed, append } => {
            let buf = AlignedBuf::new(lens.iter().map(|l| *l as usize).sum(), *seed);
            let iov = buf.iovecs(lens);
            let flags = if *append { RWF_APPEND } else { 0 };
            cvt(unsafe { libc::pwritev2(fd, iov.as_ptr(), iov.len() as c_int, *off, flags) } as i64)
        }
        Step::Lseek { off, whence } => {
            let whence = match whence {
                Whence::Set => libc::SEEK_SET,
                Whence::Cur => libc::SEEK_CUR,
                Whence::End => libc::SEEK_END,
            };
            cvt(unsafe { libc::lseek(fd, *off, whence) })
        }
        Step::Ftruncate { size } => cvt(unsafe { libc::ftruncate(fd, *size as i64) } as i64),
        Step::Fallocate { mode, off, len } => {
            cvt(unsafe { libc::fallocate(fd, mode.bits(), *off as i64, *len as i64) } as i64)
        }
        Step::Mmap { off, len, seed, msync } => mapped_store(fd, *off, *len, *seed, *msync),
        Step::Fsync => cvt(unsafe { libc::fsync(fd) } as i64),
        Step::Fdatasync => cvt(unsafe { libc::fdatasync(fd) } as i64),
    }
}

/// Maps the pages covering `[off, off+len)`, stores the data, msyncs as asked and
/// unmaps. Stores that hit SIGBUS are reported as `SIGBUSxN`.
fn mapped_store(fd: RawFd, off: u64, len: u32, seed: u64, msync: Msync) -> Res {
    if len == 0 {
        return Ok(0);
    }
    let page = sys::page_size() as u64;
    let start = off / page * page;
    let map_len = (off + u64::from(len) - start) as usize;
    // SAFETY: a fresh shared mapping of our fd; we only touch it within `map_len`.
    unsafe {
        let map = libc::mmap(std::ptr::null_mut(), map_len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, start as i64);
        if map == libc::MAP_FAILED {
            return cvt(-1);
        }
        let data = crate::util::random_bytes(len as usize, seed);
        let before = sys::sigbus_hits();
        std::ptr::copy_nonoverlapping(data.as_ptr(), (map as *mut u8).add((off - start) as usize), data.len());
        let synced = match msync {
            Msync::None => Ok(0),
            Msync::Sync => cvt(libc::msync(map, map_len, libc::MS_SYNC) as i64),
            Msync::Async => cvt(libc::msync(map, map_len, libc::MS_ASYNC) as i64),
        };
        libc::munmap(map, map_len);
        let hits = sys::sigbus_hits() - before;
        if hits > 0 {
            return Err(format!("SIGBUSx{hits}"));
        }
        synced.map(|_| i64::from(len))
    }
}

fn splice_through_pipe(src: RawFd, dst: RawFd, src_off: u64, dst_off: u64, len: u64) -> Res {
    let mut fds = [0 as c_int; 2];
    // SAFETY: pipe2 fills two fds, which we own from here on.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } as i64)?;
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let (mut off_in, mut off_out) = (src_off as i64, dst_off as i64);
    let mut moved = 0u64;
    while moved < len {
        let chunk = (len - moved).min(64 * 1024) as usize;
        // SAFETY: valid fds and offset pointers.
        let filled = cvt(unsafe { libc::splice(src, &mut off_in, write_end.as_raw_fd(), std::ptr::null_mut(), chunk, 0) } as i64)?;
        if filled == 0 {
            break;
        }
        let mut left = filled;
        while left > 0 {
            let drained = cvt(unsafe {
                libc::splice(read_end.as_raw_fd(), std::ptr::null_mut(), dst, &mut off_out, left as usize, 0)
            } as i64)?;
            if drained == 0 {
                return Err("splice-stuck".into());
            }
            left -= drained;
        }
        moved += filled as u64;
    }
    Ok(moved as i64)
}

fn submit_and_reap(ring: &mut IoUring, n: usize) -> Vec<Res> {
    let mut results: Vec<Res> = vec![Err("no-completion".into()); n];
    if let Err(e) = ring.submit_and_wait(n) {
        return vec![Err(format!("io_uring_enter:{}", io_error(&e))); n];
    }
    let mut seen = 0;
    while seen < n {
        let completions: Vec<(u64, i32)> = ring.completion().map(|cqe| (cqe.user_data(), cqe.result())).collect();
        if completions.is_empty() {
            if ring.submit_and_wait(1).is_err() {
                break;
            }
            continue;
        }
        for (index, result) in completions {
            if let Some(slot) = results.get_mut(index as usize) {
                *slot = cvt_neg(i64::from(result));
            }
            seen += 1;
        }
    }
    results
}

fn remove_tree(path: &Path) -> Res {
    std::fs::remove_dir_all(path).map(|_| 0).map_err(|e| match e.raw_os_error() {
        Some(errno) => sys::errno_name(errno),
        None => e.to_string(),
    })
}

fn open_flags(flags: &[OpenFlag]) -> c_int {
    let mut bits = if flags.contains(&OpenFlag::Wronly) { libc::O_WRONLY } else { libc::O_RDWR };
    for flag in flags {
        bits |= match flag {
            OpenFlag::Wronly => 0,
            OpenFlag::Creat => libc::O_CREAT,
            OpenFlag::Excl => libc::O_EXCL,
            OpenFlag::Trunc => libc::O_TRUNC,
            OpenFlag::Append => libc::O_APPEND,
            OpenFlag::Direct => libc::O_DIRECT,
            OpenFlag::Sync => libc::O_SYNC,
        };
    }
    bits
}

/// Two pieces for a vectored write; with O_DIRECT both stay block-aligned (or one
/// piece when the write is a single block).
fn split_in_two(len: u32, direct: bool) -> Vec<u32> {
    let half = if direct { len / 2 / 4096 * 4096 } else { len / 2 };
    if half == 0 { vec![len] } else { vec![half, len - half] }
}

fn timespec(time: Time) -> libc::timespec {
    match time {
        Time::Now => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
        Time::Omit => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        Time::At { sec, nsec } => libc::timespec { tv_sec: sec, tv_nsec: nsec },
    }
}

fn acl_name(default: bool) -> &'static str {
    if default { "system.posix_acl_default" } else { "system.posix_acl_access" }
}

fn chdir(dir: &Path) -> Result<(), String> {
    let dir = cstring_path(dir)?;
    // SAFETY: a valid C string.
    cvt(unsafe { libc::chdir(dir.as_ptr()) } as i64).map(|_| ())
}

fn cstring(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| "nul-in-path".to_owned())
}

fn cstring_path(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| "nul-in-path".to_owned())
}

fn io_error(e: &std::io::Error) -> String {
    e.raw_os_error().map_or_else(|| e.to_string(), sys::errno_name)
}

fn one(res: Res) -> Vec<String> {
    vec![show(&res)]
}
