//! The sluice agent: captures every change to the watched tree with eBPF and
//! streams it to the receiver on the standby.
//!
//! # Layout
//! - [`capture`]: loads the eBPF programs and decodes their ring buffer.
//! - [`index`]: inode → path index of the tree.
//! - [`scan`]: walking the tree (index, manifest).
//! - [`files`]: opening files by handle and reading ranges.
//! - [`ranges`]: dirty byte ranges of a file.
//! - [`engine`]: events → index updates and replication operations.
//! - [`backlog`]: operations the standby does not hold durably yet, bounded in memory.
//! - [`journal`]: the durable record of that backlog, for restarts.
//! - [`lineage`]: the tree's role and generation (`<root>/.sluice/lineage`).
//! - [`failback`]: what an old primary had not sent, and sending just that at its failback.
//! - [`session`]: replication to every standby: reading once, each standby's share, its connections.
//! - [`feed`]: one standby's share of replication (backlog, journal, connection, metrics).
//! - [`link`]: connections to the standbys, each written and read by its own tasks.
//! - [`crosscheck`]: fanotify notices, checked against what capture reported.
//! - [`verify`]: the verifier comparing the standby's copy with the master's.
//! - [`control`]: the local control socket (`verify`, `status`, `switchover`).
//! - [`metrics`]: the Prometheus registry.
//! - [`config`]: the TOML configuration.
//! - [`reload`]: what a reload of the configuration (SIGHUP) may change.
//! - [`daemon`]: `run(config, service, shutdown)`, tying it all together.

pub mod backlog;
pub mod capture;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod failback;
pub mod feed;
pub mod files;
pub mod index;
pub mod journal;
pub mod lineage;
pub mod link;
pub mod metrics;
pub mod ranges;
pub mod reload;
pub mod scan;
pub mod session;
pub mod verify;
pub mod control;
pub mod crosscheck;
#[cfg(test)]
mod fanout_tests;
