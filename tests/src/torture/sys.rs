//! Kernel interfaces libc does not wrap for us: native AIO (`io_setup` and friends
//! with the kernel's own `struct iocb`), the clone/dedupe ioctls, the raw POSIX ACL
//! xattr encoding, aligned buffers for O_DIRECT, surviving SIGBUS from a mapped
//! store past EOF, and noticing SIGINT/SIGTERM so mounts are cleaned up.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ffi::c_void;
use std::ops::{Deref, DerefMut};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::util::random_bytes;

use super::ops::AclEntry;

/// What a syscall returned: a non-negative value, or the errno name (`EINVAL`).
pub type Res = Result<i64, String>;

/// The name of an errno value, e.g. `ENOENT`.
pub fn errno_name(errno: i32) -> String {
    format!("{:?}", nix::errno::Errno::from_raw(errno))
}

/// Turns a `-1 and errno` return into [`Res`].
pub fn cvt(ret: i64) -> Res {
    if ret < 0 { Err(errno_name(nix::errno::Errno::last_raw())) } else { Ok(ret) }
}

/// Turns a `-errno` return (io_uring and AIO completions) into [`Res`].
pub fn cvt_neg(ret: i64) -> Res {
    if ret < 0 { Err(errno_name(-ret as i32)) } else { Ok(ret) }
}

/// How a result is logged: `ok`, `ok=N` for a count, or the error.
pub fn show(res: &Res) -> String {
    match res {
        Ok(0) => "ok".into(),
        Ok(n) => format!("ok={n}"),
        Err(e) => e.clone(),
    }
}

pub const PAGE: usize = 4096;

/// A zero-padded buffer aligned to 4096 bytes holding `random_bytes(len, seed)`, so
/// the same buffer type serves buffered and O_DIRECT writes.
pub struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
    layout: Layout,
}

impl AlignedBuf {
    pub fn new(len: usize, seed: u64) -> AlignedBuf {
        let capacity = len.max(1).div_ceil(PAGE) * PAGE;
        let layout = Layout::from_size_align(capacity, PAGE).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory allocating {capacity} bytes");
        let mut buf = AlignedBuf { ptr, len, layout };
        buf.copy_from_slice(&random_bytes(len, seed));
        buf
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }

    /// `iovec`s covering the buffer in pieces of the given lengths (which sum to at
    /// most `len`).
    pub fn iovecs(&self, lens: &[u32]) -> Vec<libc::iovec> {
        let mut offset = 0usize;
        lens.iter()
            .map(|&piece| {
                let iov = libc::iovec {
                    // SAFETY: the pieces stay inside the allocation.
                    iov_base: unsafe { self.ptr.add(offset.min(self.len)) } as *mut c_void,
                    iov_len: (piece as usize).min(self.len - offset.min(self.len)),
                };
                offset += piece as usize;
                iov
            })
            .collect()
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` owns at least `len` initialized bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}

// SAFETY: the buffer is plain owned memory.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

// ---- native AIO -------------------------------------------------------------

const IOCB_CMD_PWRITE: u16 = 1;
const IOCB_CMD_PWRITEV: u16 = 8;

/// `struct iocb` from `<linux/aio_abi.h>` (little-endian field order).
#[repr(C)]
#[derive(Default)]
struct Iocb {
    aio_data: u64,
    aio_key: u32,
    aio_rw_flags: i32,
    aio_lio_opcode: u16,
    aio_reqprio: i16,
    aio_fildes: u32,
    aio_buf: u64,
    aio_nbytes: u64,
    aio_offset: i64,
    aio_reserved2: u64,
    aio_flags: u32,
    aio_resfd: u32,
}

/// `struct io_event`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

/// One write for [`aio_write_all`]: either a buffer or iovecs (which must outlive
/// the call).
pub enum AioBuf<'a> {
    Plain(&'a AlignedBuf),
    Vectored(&'a [libc::iovec]),
}

/// Submits every write in one `io_submit` on a fresh context and waits for all
/// completions; returns one result per write (bytes written or the error).
pub fn aio_write_all(fd: RawFd, writes: &[(u64, AioBuf<'_>)]) -> Vec<Res> {
    let n = writes.len();
    let mut ctx: u64 = 0;
    // SAFETY: io_setup writes the context id into `ctx`.
    let setup = cvt(unsafe { libc::syscall(libc::SYS_io_setup, n as i64, &mut ctx as *mut u64) });
    if let Err(e) = setup {
        return vec![Err(format!("io_setup:{e}")); n];
    }
    let mut iocbs: Vec<Iocb> = writes
        .iter()
        .enumerate()
        .map(|(i, (off, buf))| {
            let (opcode, addr, nbytes) = match buf {
                AioBuf::Plain(b) => (IOCB_CMD_PWRITE, b.as_ptr() as u64, b.len() as u64),
                AioBuf::Vectored(iov) => (IOCB_CMD_PWRITEV, iov.as_ptr() as u64, iov.len() as u64),
            };
            Iocb {
                aio_data: i as u64,
                aio_lio_opcode: opcode,
                aio_fildes: fd as u32,
                aio_buf: addr,
                aio_nbytes: nbytes,
                aio_offset: *off as i64,
                ..Iocb::default()
            }
        })
        .collect();
    let mut pointers: Vec<*mut Iocb> = iocbs.iter_mut().map(|iocb| iocb as *mut Iocb).collect();
    let mut results: Vec<Res> = vec![Err("not-submitted".into()); n];
    // SAFETY: the iocbs and their buffers outlive the context (destroyed below).
    let submitted =
        cvt(unsafe { libc::syscall(libc::SYS_io_submit, ctx, n as i64, pointers.as_mut_ptr()) });
    match submitted {
        Err(e) => results.iter_mut().for_each(|r| *r = Err(format!("io_submit:{e}"))),
        Ok(count) => {
            let mut events = vec![IoEvent::default(); count as usize];
            let mut got = 0usize;
            while got < count as usize {
                let mut timeout = libc::timespec { tv_sec: 30, tv_nsec: 0 };
                // SAFETY: `events` has room for `count - got` entries from `got`.
                let ret = cvt(unsafe {
                    libc::syscall(
                        libc::SYS_io_getevents,
                        ctx,
                        1i64,
                        (count as usize - got) as i64,
                        events.as_mut_ptr().add(got),
                        &mut timeout as *mut libc::timespec,
                    )
                });
                match ret {
                    Ok(0) => break,
                    Ok(k) => got += k as usize,
                    Err(e) if e == "EINTR" => {}
                    Err(_) => break,
                }
            }
            for event in &events[..got] {
                if let Some(slot) = results.get_mut(event.data as usize) {
                    *slot = cvt_neg(event.res);
                }
            }
        }
    }
    // SAFETY: the context was set up above; destroying it waits for stragglers.
    unsafe { libc::syscall(libc::SYS_io_destroy, ctx) };
    results
}

// ---- clone and dedupe ioctls --------------------------------------------------

const FICLONE: libc::c_ulong = 0x4004_9409;
const FICLONERANGE: libc::c_ulong = 0x4020_940d;
const FIDEDUPERANGE: libc::c_ulong = 0xc018_9436;

#[repr(C)]
struct FileCloneRange {
    src_fd: i64,
    src_offset: u64,
    src_length: u64,
    dest_offset: u64,
}

#[repr(C)]
struct FileDedupeRange {
    src_offset: u64,
    src_length: u64,
    dest_count: u16,
    reserved1: u16,
    reserved2: u32,
    // One `file_dedupe_range_info` follows.
    dest_fd: i64,
    dest_offset: u64,
    bytes_deduped: u64,
    status: i32,
    reserved: u32,
}

pub fn ficlone(src: RawFd, dst: RawFd) -> Res {
    // SAFETY: FICLONE takes the source fd as its argument.
    cvt(unsafe { libc::ioctl(dst, FICLONE, src) } as i64)
}

pub fn ficlonerange(src: RawFd, dst: RawFd, src_off: u64, dst_off: u64, len: u64) -> Res {
    let range = FileCloneRange { src_fd: src as i64, src_offset: src_off, src_length: len, dest_offset: dst_off };
    // SAFETY: the argument is a valid `struct file_clone_range`.
    cvt(unsafe { libc::ioctl(dst, FICLONERANGE, &range as *const FileCloneRange) } as i64)
}

/// Returns the bytes deduplicated; a range that differs is `Err("differs")`.
pub fn dedupe(src: RawFd, dst: RawFd, src_off: u64, dst_off: u64, len: u64) -> Res {
    let mut range = FileDedupeRange {
        src_offset: src_off,
        src_length: len,
        dest_count: 1,
        reserved1: 0,
        reserved2: 0,
        dest_fd: dst as i64,
        dest_offset: dst_off,
        bytes_deduped: 0,
        status: 0,
        reserved: 0,
    };
    // SAFETY: the argument is a `struct file_dedupe_range` with one info entry.
    cvt(unsafe { libc::ioctl(src, FIDEDUPERANGE, &mut range as *mut FileDedupeRange) } as i64)?;
    match range.status {
        0 => Ok(range.bytes_deduped as i64),
        1 => Err("differs".into()),
        negative => Err(errno_name(-negative)),
    }
}

// ---- POSIX ACLs ---------------------------------------------------------------

const ACL_XATTR_VERSION: u32 = 2;
const ACL_UNDEFINED_ID: u32 = u32::MAX;
pub const ACL_USER_OBJ: u16 = 0x01;
pub const ACL_USER: u16 = 0x02;
pub const ACL_GROUP_OBJ: u16 = 0x04;
pub const ACL_GROUP: u16 = 0x08;
pub const ACL_MASK: u16 = 0x10;
pub const ACL_OTHER: u16 = 0x20;

/// The `system.posix_acl_*` value for `entries`, in the kernel's order (by tag, then
/// id), with the id left undefined where the tag has none.
pub fn encode_acl(entries: &[AclEntry]) -> Vec<u8> {
    let mut sorted = entries.to_vec();
    sorted.sort_by_key(|e| (e.tag, e.id));
    let mut out = ACL_XATTR_VERSION.to_le_bytes().to_vec();
    for entry in sorted {
        let id = if matches!(entry.tag, ACL_USER | ACL_GROUP) { entry.id } else { ACL_UNDEFINED_ID };
        out.extend_from_slice(&entry.tag.to_le_bytes());
        out.extend_from_slice(&entry.perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

// ---- SIGBUS ---------------------------------------------------------------------

static SIGBUS_HITS: AtomicU64 = AtomicU64::new(0);
static PAGE_SIZE: AtomicUsize = AtomicUsize::new(PAGE);

/// A store through a mapping past EOF (another worker shrank the file, or an
/// earlier step did) raises SIGBUS. The handler maps an anonymous page over the
/// faulting address, so the store completes into memory nobody reads and the
/// operation reports the hit instead of killing the worker.
pub fn survive_sigbus() -> anyhow::Result<()> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page > 0 {
        PAGE_SIZE.store(page as usize, Ordering::Relaxed);
    }
    // SAFETY: the handler only makes async-signal-safe calls (mmap, _exit) and
    // touches an atomic.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) != 0 {
            anyhow::bail!("cannot install the SIGBUS handler: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

extern "C" fn on_sigbus(_signal: libc::c_int, info: *mut libc::siginfo_t, _context: *mut c_void) {
    let page = PAGE_SIZE.load(Ordering::Relaxed);
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; mapping
    // over our own faulting page is what makes the retried store succeed.
    unsafe {
        let addr = ((*info).si_addr() as usize) & !(page - 1);
        let mapped = libc::mmap(
            addr as *mut c_void,
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if mapped == libc::MAP_FAILED {
            libc::_exit(99);
        }
    }
    SIGBUS_HITS.fetch_add(1, Ordering::Relaxed);
}

/// SIGBUS hits survived so far in this process.
pub fn sigbus_hits() -> u64 {
    SIGBUS_HITS.load(Ordering::Relaxed)
}

pub fn page_size() -> usize {
    PAGE_SIZE.load(Ordering::Relaxed)
}

// ---- interruption -------------------------------------------------------------

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Makes SIGINT, SIGTERM and SIGHUP set a flag instead of killing the controller:
/// its loops check [`interrupted`] and return, so the daemons are stopped and the
/// loop filesystems and the bind mount are unmounted on the way out.
pub fn catch_interrupts() -> anyhow::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_interrupt as *const () as usize;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
                anyhow::bail!("cannot install a handler for signal {signal}: {}", std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Whether the controller was asked to stop.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_entries_are_sorted_and_ids_cleared() {
        let value = encode_acl(&[
            AclEntry { tag: ACL_OTHER, perm: 4, id: 7 },
            AclEntry { tag: ACL_USER, perm: 6, id: 1000 },
            AclEntry { tag: ACL_USER_OBJ, perm: 7, id: 7 },
        ]);
        assert_eq!(value.len(), 4 + 3 * 8);
        assert_eq!(&value[..4], &2u32.to_le_bytes());
        assert_eq!(&value[4..6], &ACL_USER_OBJ.to_le_bytes());
        assert_eq!(&value[8..12], &u32::MAX.to_le_bytes());
        assert_eq!(&value[12..14], &ACL_USER.to_le_bytes());
        assert_eq!(&value[16..20], &1000u32.to_le_bytes());
        assert_eq!(&value[20..22], &ACL_OTHER.to_le_bytes());
    }

    #[test]
    fn aligned_buffers_hold_the_data() {
        let buf = AlignedBuf::new(5000, 3);
        assert_eq!(buf.as_ptr() as usize % PAGE, 0);
        assert_eq!(&buf[..], &random_bytes(5000, 3)[..]);
        let iov = buf.iovecs(&[4096, 904]);
        assert_eq!(iov[1].iov_base as usize - iov[0].iov_base as usize, 4096);
        assert_eq!(iov[1].iov_len, 904);
    }

    #[test]
    fn aio_structs_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<Iocb>(), 64);
        assert_eq!(std::mem::size_of::<IoEvent>(), 32);
        assert_eq!(std::mem::size_of::<FileCloneRange>(), 32);
        assert_eq!(std::mem::size_of::<FileDedupeRange>(), 24 + 32);
    }

    #[test]
    fn a_store_past_eof_is_survived() {
        survive_sigbus().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::options().read(true).write(true).create(true).truncate(true).open(dir.path().join("f")).unwrap();
        file.set_len(PAGE as u64).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh shared mapping of two pages of a one-page file.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                2 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(map, libc::MAP_FAILED);
            let before = sigbus_hits();
            std::ptr::write_volatile((map as *mut u8).add(PAGE + 1), 1);
            assert_eq!(sigbus_hits(), before + 1);
            libc::munmap(map, 2 * PAGE);
        }
    }
}
