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
//! - [`session`]: one connection to the receiver: initial sync, streaming, acks.
//! - [`metrics`]: the Prometheus registry.
//! - [`config`]: the TOML configuration.
//! - [`daemon`]: `run(config, shutdown)`, tying it all together.

pub mod capture;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod files;
pub mod index;
pub mod metrics;
pub mod ranges;
pub mod scan;
pub mod session;
