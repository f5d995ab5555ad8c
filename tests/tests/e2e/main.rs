//! End-to-end tests: the real `sluice-agent` (with its eBPF programs) and
//! `sluice-receiver`, replicating between loop-mounted filesystems over QUIC on
//! loopback. Run as root, one test at a time (`cargo xtask test` does both).

// Helpers shared by these tests: waiting for the agent to go idle, byte counts.
mod common;
// Random writes into a large file: identical content, bytes on the wire.
mod data;
// A directory rename is one rename on the standby and sends no file data.
mod moves;
// create, unlink, mkdir, rmdir, truncate, symlink, hard link, chmod, mtime.
mod namespace;
// A stale standby: only the differing blocks are sent.
mod initial_sync;
// Unpinned peers and paths escaping the standby root are refused.
mod security;
// A hostile agent holding the pinned certificate: escapes, exhaustion, destruction.
mod hostile;
// fallocate modes, holes, O_DIRECT, copy_file_range/sendfile, mmap stores.
mod write_paths;
// Extended attributes, POSIX ACLs, device nodes.
mod metadata;
// Cut links, killed daemons, a full standby, lost events, changes while down.
mod faults;
// Promotion, fencing, switchover and failback.
mod failover;
// systemd units, the notify protocol, reloads, JSON logs.
mod service;
// The receiver's rollback directory keeps what the master deletes, truncates or overwrites.
mod rollback;
// The verifier finds and repairs differences planted on the standby.
mod verify;
// Operations that do not fit the standby's copy are repaired, not fatal.
mod repair;
// Reflinks, appending pwrite, native AIO, paths from above the root or through
// aliases, btrfs snapshots, 32-bit syscalls, shared fds, io_uring beyond writes.
mod exact_capture;
// A chain of standbys: a standby forwards what it applies to the next one.
mod relay;
// One master feeding several standbys: slow, cut and late ones beside a healthy one.
mod fanout;
// The Prometheus alerting rules and the Grafana dashboard against a real Prometheus.
mod alerts;
// The status page in headless Chromium: in sync, link cut, recovered, the receiver's view.
mod status_page;
