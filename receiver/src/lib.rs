//! The sluice receiver: the standby side of replication. It accepts one agent
//! over QUIC (mutual TLS pinned by certificate fingerprint), brings the tree in
//! line with the agent's manifest, then applies the agent's numbered operations in
//! place, confined beneath the replicated root.
//!
//! # Layout
//! - [`config`]: the TOML configuration, parsed then validated.
//! - [`apply`]: [`apply::Applier`], which applies one [`sluice_proto::Op`] beneath the root.
//! - [`sync`]: the initial sync against the agent's manifest.
//! - [`listing`]: directory listings for the agent's verifier.
//! - [`session`]: the replication protocol state machine, free of I/O.
//! - [`state`]: the durable position and the tree's lineage, kept under `.sluice/`.
//! - [`control`]: the local control socket (`promote`, `status`, a drill's pause).
//! - [`drill`]: a writable copy of the standby for a disaster-recovery drill.
//! - [`local`]: changes made on the standby by anyone but the receiver (fanotify).
//! - [`metrics`]: Prometheus metrics and their tiny HTTP endpoint.
//! - [`privileges`]: the capabilities the daemon keeps, and dropping the rest.
//! - [`relay`]: forwarding what this standby applies to the standbys after it (`[[forward]]`).
//! - [`reload`]: what a reload of the configuration (SIGHUP) may change.
//! - [`server`]: [`server::run`], the daemon: QUIC endpoint and connection loop.

pub mod apply;
pub mod config;
pub mod control;
pub mod drill;
pub mod listing;
pub mod local;
pub mod metrics;
pub mod privileges;
pub mod relay;
pub mod reload;
pub mod server;
pub mod session;
pub mod state;
pub mod sync;
