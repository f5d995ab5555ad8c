//! sluice's in-kernel capture: a BTF raw tracepoint on `sys_exit` that turns the
//! file-system syscalls of every process (64-bit and 32-bit) into
//! [`sluice_common`] ring-buffer records, plus the entry of the write family
//! (classic syscall tracepoints), `writeback_dirty_folio` and `page_fault_user`
//! (mmap stores) and `io_uring_complete` (ring requests).
//!
//! The programs carry no CO-RE relocations: every kernel struct field they read is
//! at an offset the agent resolved from `/sys/kernel/btf/vmlinux` and stored in
//! the `CONFIG` map, so one object loads on any kernel with BTF.
#![no_std]
#![no_main]

mod kernel;
mod maps;
mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
