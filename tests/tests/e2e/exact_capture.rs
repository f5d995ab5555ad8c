//! Write paths and namespace changes that bypass the plain 64-bit syscalls:
//! reflinks, appending positioned writes, native AIO, relative paths from above
//! the root and paths through aliases, btrfs snapshots and nested subvolumes,
//! 32-bit syscalls, writes through a shared fd, and io_uring operations other
//! than writes. Each ends with identical trees.

use crate::common::{converge, sh};
use sluice_tests::{FsKind, LoopFs, Pair, PairOptions, random_bytes, run, wait_until};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

const MIB: usize = 1 << 20;

#[test]
fn reflinks_btrfs() {
    let master = LoopFs::new(FsKind::Btrfs, 256).unwrap();
    let standby = LoopFs::new(FsKind::Btrfs, 256).unwrap();
    let m = master.path();
    fs::write(m.join("src"), random_bytes(3 * MIB, 1)).unwrap();
    fs::write(m.join("part"), random_bytes(MIB, 2)).unwrap();
    let pair = Pair::start(m, standby.path()).unwrap();
    sh(m, "cp --reflink=always src whole && cp src plain-cp");
    sh(
        m,
        r#"python3 -c '
import fcntl, os, struct
src = os.open("src", os.O_RDONLY)
dst = os.open("part", os.O_WRONLY)
# FICLONERANGE: (src_fd, src_offset, src_length, dest_offset)
fcntl.ioctl(dst, 0x4020940d, struct.pack("qQQQ", src, 65536, 131072, 262144))
grown = os.open("grown", os.O_WRONLY | os.O_CREAT, 0o644)
fcntl.ioctl(grown, 0x4020940d, struct.pack("qQQQ", src, 1 << 20, 0, 4096))
'"#,
    );
    converge(&pair, Duration::from_secs(60));
}

#[test]
fn positioned_writes_that_append() {
    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let m = master.path();
    fs::write(m.join("log"), random_bytes(10_000, 3)).unwrap();
    let pair = Pair::start(m, standby.path()).unwrap();
    sh(
        m,
        r#"python3 -c '
import os
fd = os.open("log", os.O_WRONLY | os.O_APPEND)
for i in range(50):
    os.pwrite(fd, os.urandom(1000), 0)
    os.pwritev(fd, [os.urandom(700), os.urandom(300)], 4096)
plain = os.open("log", os.O_WRONLY)
os.pwritev(plain, [os.urandom(2000)], 0, os.RWF_APPEND)
os.lseek(plain, 5000, os.SEEK_SET)
os.pwritev(plain, [os.urandom(1500)], -1, os.RWF_DSYNC)
'"#,
    );
    converge(&pair, Duration::from_secs(30));
}

#[test]
fn native_aio_writes() {
    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let m = master.path();
    let pair = Pair::start(m, standby.path()).unwrap();
    sh(
        m,
        "fio --name=aio --filename=db.ibd --ioengine=libaio --direct=1 --rw=randwrite --bs=16k \
         --size=8M --iodepth=16 --number_ios=400 --randrepeat=0 --refill_buffers --output=/dev/null",
    );
    sh(
        m,
        r#"python3 -c '
import ctypes, mmap, os, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
ctx = ctypes.c_ulong(0)
assert libc.syscall(206, 8, ctypes.byref(ctx)) == 0
fd = os.open("raw-aio", os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
buf = mmap.mmap(-1, 1 << 16)
buf.write(os.urandom(1 << 16))
addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
iov = ctypes.create_string_buffer(struct.pack("<QQQQ", addr, 8192, addr + 8192, 8192))
cbs = [ctypes.create_string_buffer(struct.pack("<QIIHhIQQqQII", i, 0, 0, op, 0, fd, where, n, off, 0, 0, 0))
       for i, (op, where, n, off) in enumerate([(1, addr, 4096, 0), (8, ctypes.addressof(iov), 2, 1 << 20), (1, addr + 4096, 4096, 3 << 20)])]
ptrs = (ctypes.c_void_p * 3)(*[ctypes.addressof(c) for c in cbs])
assert libc.syscall(209, ctx, 3, ptrs) == 3
events = ctypes.create_string_buffer(32 * 3)
got = 0
while got < 3:
    r = libc.syscall(208, ctx, 1, 3 - got, events, None)
    assert r > 0
    got += r
'"#,
    );
    converge(&pair, Duration::from_secs(60));
}

/// Unmounts a bind mount when dropped.
struct BindMount(PathBuf);

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = run(&format!("umount -l '{}'", self.0.display()));
    }
}

#[test]
fn relative_paths_from_above_the_root_and_paths_through_aliases() {
    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let m = master.path();
    fs::create_dir_all(m.join("sub/deep")).unwrap();
    for name in ["a", "b", "c", "d", "deep/e"] {
        fs::write(m.join("sub").join(name), random_bytes(5000, 4)).unwrap();
    }
    let pair = Pair::start(m, standby.path()).unwrap();
    // `cd /srv && mv data/sub/a data/sub/b` with /srv/data watched.
    let parent = m.parent().unwrap();
    let name = m.file_name().unwrap().to_str().unwrap();
    sh(parent, &format!("mv {name}/sub/a {name}/sub/a2 && rm {name}/sub/b && mkdir {name}/made-from-above && echo x > {name}/sub/new"));
    // A symlink and a bind mount leading to the root.
    let elsewhere = tempfile::tempdir().unwrap();
    let alias = elsewhere.path().join("alias");
    std::os::unix::fs::symlink(m, &alias).unwrap();
    let bind = elsewhere.path().join("bind");
    fs::create_dir(&bind).unwrap();
    run(&format!("mount --bind '{}' '{}'", m.display(), bind.display())).unwrap();
    let _bind = BindMount(bind.clone());
    let (alias, bind) = (alias.display().to_string(), bind.display().to_string());
    run(&format!("mv {alias}/sub/c {alias}/sub/c2 && mkdir {alias}/via-link && rm {alias}/sub/deep/e")).unwrap();
    run(&format!("rm {bind}/sub/d && mv {bind}/sub/deep {bind}/deep2 && touch {bind}/via-bind && chmod 600 {bind}/via-bind")).unwrap();
    converge(&pair, Duration::from_secs(30));
}

/// The agent watches a btrfs subvolume; a snapshot of it (outside the tree) and a
/// subvolume nested in the tree share its `s_dev` and inode numbers.
#[test]
fn btrfs_snapshots_and_nested_subvolumes() {
    let master = LoopFs::new(FsKind::Btrfs, 256).unwrap();
    let standby = LoopFs::new(FsKind::Btrfs, 256).unwrap();
    let mnt = master.path();
    run(&format!("btrfs -q subvolume create '{}'", mnt.join("vol").display())).unwrap();
    let m = mnt.join("vol");
    fs::create_dir(m.join("dir")).unwrap();
    for name in ["a", "b", "c", "e", "f", "dir/g"] {
        fs::write(m.join(name), random_bytes(20_000, 5)).unwrap();
    }
    let pair = Pair::start(&m, standby.path()).unwrap();
    converge(&pair, Duration::from_secs(30));

    // Everything in the snapshot, by relative and absolute paths, data and names.
    sh(
        mnt,
        r#"btrfs -q subvolume snapshot vol snap && cd snap && echo more >> a && rm b && mv c c2 \
           && truncate -s 10 e && dd if=/dev/urandom of=f bs=4k count=2 conv=notrunc status=none \
           && mkdir dir/new && rm "$PWD/dir/g" && chmod 600 a"#,
    );
    // The tree itself still replicates; what arrives before the marker must not
    // include any of the snapshot's changes.
    sh(&m, "echo changed >> a && mv dir dir2 && touch marker");
    let s = standby.path();
    wait_until("the marker on the standby", Duration::from_secs(30), || Ok(s.join("marker").exists())).unwrap();
    for name in ["b", "c", "e", "dir2/g"] {
        assert!(s.join(name).exists(), "{name} on the standby was changed by a change in the snapshot");
    }
    assert!(!s.join("c2").exists() && !s.join("dir2/new").exists(), "names made in the snapshot reached the standby");
    assert_eq!(fs::metadata(s.join("e")).unwrap().len(), 20_000, "a truncation in the snapshot reached the standby");

    // A subvolume nested in the tree is not replicated (like `rsync -x`).
    sh(mnt, "btrfs -q subvolume create vol/nested && echo hi > vol/nested/x && (cd vol/nested && mkdir y && rm x)");
    sh(&m, "touch marker2");
    wait_until("the second marker on the standby", Duration::from_secs(30), || Ok(s.join("marker2").exists())).unwrap();
    assert!(!s.join("nested").exists(), "a nested subvolume was replicated");
    run(&format!("btrfs -q subvolume delete '{}'", m.join("nested").display())).unwrap();
    converge(&pair, Duration::from_secs(30));
}

/// `int 0x80` with the ia32 syscall number and up to six 32-bit arguments.
///
/// # Safety
/// The arguments must be valid for the syscall; pointers must be below 4 GiB.
#[cfg(target_arch = "x86_64")]
unsafe fn int80(nr: u32, a: [u32; 6]) -> i32 {
    let ret: i32;
    // SAFETY: rbx and rbp cannot be asm operands; they are saved and restored
    // around the trap. The stack is used (no `nostack`).
    unsafe {
        core::arch::asm!(
            "push rbx",
            "push rbp",
            "mov ebx, {b:e}",
            "mov ebp, {p:e}",
            "int 0x80",
            "pop rbp",
            "pop rbx",
            b = in(reg) a[0],
            p = in(reg) a[5],
            inlateout("eax") nr as i32 => ret,
            in("ecx") a[1],
            in("edx") a[2],
            in("esi") a[3],
            in("edi") a[4],
        );
    }
    ret
}

/// The ia32 write family on `file` (relative to the cwd): write, pwrite64,
/// writev, pwritev, ftruncate64, fallocate.
#[cfg(target_arch = "x86_64")]
fn compat_writes(dir: &Path) {
    // SAFETY: an anonymous private mapping below 2 GiB for every pointer passed.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            1 << 16,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_32BIT,
            -1,
            0,
        )
    };
    assert_ne!(mem, libc::MAP_FAILED);
    let base = mem as usize;
    let at = |off: usize| (base + off) as u32;
    let path = dir.join("compat.dat");
    let path = path.as_os_str().as_encoded_bytes();
    assert!(path.len() < 2000);
    let data = random_bytes(8192, 6);
    // SAFETY: all within the 64 KiB mapping.
    unsafe {
        std::ptr::copy_nonoverlapping(path.as_ptr(), mem as *mut u8, path.len());
        *((base + path.len()) as *mut u8) = 0;
        std::ptr::copy_nonoverlapping(data.as_ptr(), (base + 4096) as *mut u8, data.len());
        let iov = (base + 2048) as *mut u32;
        *iov = at(4096);
        *iov.add(1) = 1000;
        *iov.add(2) = at(6000);
        *iov.add(3) = 2000;
    }
    // SAFETY: arguments built above for each call.
    let call = |nr: u32, a: [u32; 6]| unsafe { int80(nr, a) };
    let flags = (libc::O_RDWR | libc::O_CREAT) as u32 | 0o100000;
    let fd = call(5, [at(0), flags, 0o644, 0, 0, 0]);
    assert!(fd >= 0, "open: {fd}");
    let fd = fd as u32;
    assert_eq!(call(4, [fd, at(4096), 3000, 0, 0, 0]), 3000, "write");
    assert_eq!(call(181, [fd, at(4096), 4000, 100_000, 0, 0]), 4000, "pwrite64");
    assert_eq!(call(146, [fd, at(2048), 2, 0, 0, 0]), 3000, "writev");
    assert_eq!(call(334, [fd, at(2048), 2, 200_000, 0, 0]), 3000, "pwritev");
    assert_eq!(call(194, [fd, 300_000, 0, 0, 0, 0]), 0, "ftruncate64");
    assert_eq!(call(324, [fd, 0x3, 8192, 0, 8192, 0]), 0, "fallocate punch hole");
    assert_eq!(call(6, [fd, 0, 0, 0, 0, 0]), 0, "close");
}

#[cfg(target_arch = "x86_64")]
#[test]
fn compat_syscalls() {
    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let m = master.path();
    // A 64-bit program making 32-bit syscalls (`int 0x80`): no 32-bit exec
    // announces it, so their capture is configured from the start.
    let options = PairOptions { agent_toml: "[capture]\ncompat_syscalls = \"always\"\n".into(), ..PairOptions::default() };
    let pair = Pair::start_with(m, standby.path(), options).unwrap();
    compat_writes(m);
    converge(&pair, Duration::from_secs(30));
}

/// Runs the calling thread on `cpu` only, so both sides of a race run at once.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; the calls only read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % libc::sysconf(libc::_SC_NPROCESSORS_ONLN).max(1) as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// One thread writes blocks through an fd while another moves the same fd's
/// position forward, which can happen between a write and its syscall exit.
#[test]
fn writes_through_a_shared_fd() {
    use std::os::fd::AsRawFd as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let m = master.path();
    fs::write(m.join("shared.dat"), random_bytes(32 * MIB, 7)).unwrap();
    let pair = Pair::start(m, standby.path()).unwrap();
    let file = fs::OpenOptions::new().read(true).write(true).open(m.join("shared.dat")).unwrap();
    let fd = file.as_raw_fd();
    let (done, started) = (AtomicBool::new(false), AtomicBool::new(false));
    std::thread::scope(|s| {
        s.spawn(|| {
            pin_to_cpu(1);
            started.store(true, Ordering::Relaxed);
            while !done.load(Ordering::Relaxed) {
                // SAFETY: moves the position of a live fd forward, as a read would.
                unsafe { libc::lseek(fd, 600, libc::SEEK_CUR) };
            }
        });
        pin_to_cpu(0);
        while !started.load(Ordering::Relaxed) {
            std::hint::spin_loop();
        }
        for k in 0..3000u64 {
            let block = random_bytes(4096, 1000 + k);
            // SAFETY: writes a local buffer through a live fd.
            assert_eq!(unsafe { libc::write(fd, block.as_ptr().cast(), block.len()) }, 4096);
        }
        done.store(true, Ordering::Relaxed);
    });
    drop(file);
    converge(&pair, Duration::from_secs(60));
}

/// A file created by a ring OPENAT, written, grown and truncated through the ring,
/// then renamed; a directory made and a file removed through the ring.
#[test]
fn io_uring_operations_beyond_writes() {
    use io_uring::{IoUring, opcode, types::Fd};
    use std::ffi::CString;
    let master = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 256).unwrap();
    let m = master.path();
    fs::write(m.join("doomed"), b"bye").unwrap();
    fs::write(m.join("kept"), random_bytes(100_000, 8)).unwrap();
    let pair = Pair::start(m, standby.path()).unwrap();
    let path = |name: &str| CString::new(m.join(name).as_os_str().as_encoded_bytes()).unwrap();
    let mut ring = IoUring::new(8).unwrap();
    let mut go = |entry: io_uring::squeue::Entry| -> i32 {
        // SAFETY: every pointer the entry holds outlives the wait below.
        unsafe { ring.submission().push(&entry).unwrap() };
        ring.submit_and_wait(1).unwrap();
        ring.completion().next().unwrap().result()
    };
    let created = path("ring-created");
    let fd = go(opcode::OpenAt::new(Fd(libc::AT_FDCWD), created.as_ptr())
        .flags(libc::O_CREAT | libc::O_RDWR)
        .mode(0o644)
        .build());
    assert!(fd >= 0, "openat: {fd}");
    let data = random_bytes(200_000, 9);
    assert_eq!(go(opcode::Write::new(Fd(fd), data.as_ptr(), data.len() as u32).offset(0).build()), 200_000);
    assert_eq!(go(opcode::Fallocate::new(Fd(fd), 65536).offset(300_000).build()), 0);
    assert_eq!(go(opcode::Ftruncate::new(Fd(fd), 150_000).build()), 0);
    let kept = fs::OpenOptions::new().write(true).open(m.join("kept")).unwrap();
    let kept_fd = std::os::fd::AsRawFd::as_raw_fd(&kept);
    // Punch a hole in an existing file, then shrink it.
    assert_eq!(go(opcode::Fallocate::new(Fd(kept_fd), 8192).offset(16384).mode(0x3).build()), 0);
    assert_eq!(go(opcode::Ftruncate::new(Fd(kept_fd), 50_000).build()), 0);
    let made = path("ring-dir");
    assert_eq!(go(opcode::MkDirAt::new(Fd(libc::AT_FDCWD), made.as_ptr()).mode(0o755).build()), 0);
    let renamed = path("ring-dir/renamed");
    assert_eq!(go(opcode::RenameAt::new(Fd(libc::AT_FDCWD), created.as_ptr(), Fd(libc::AT_FDCWD), renamed.as_ptr()).build()), 0);
    let doomed = path("doomed");
    assert_eq!(go(opcode::UnlinkAt::new(Fd(libc::AT_FDCWD), doomed.as_ptr()).build()), 0);
    // SAFETY: closes the fd the ring opened.
    unsafe { libc::close(fd) };
    converge(&pair, Duration::from_secs(60));
}
