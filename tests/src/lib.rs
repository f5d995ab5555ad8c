//! Helpers for the end-to-end tests: loop-mounted filesystems, tree comparison,
//! metrics scraping and a running agent/receiver pair.
//!
//! Every end-to-end test and `cargo xtask demo` use these, so that "the standby is
//! identical to the master" means the same thing everywhere.
//!
//! # Layout
//! - [`loopfs`]: [`LoopFs`], a scratch ext4, btrfs or XFS filesystem on a loop device.
//! - [`tree`]: [`compare_trees`] and [`wait_until_identical`], the one definition of
//!   "replicated correctly".
//! - [`metrics`]: [`Metrics`] parsed from Prometheus text, and [`scrape`] over plain HTTP.
//! - [`daemons`]: [`Pair`], a receiver and an agent started from the built binaries,
//!   plus the pieces it is made of (identities, configs, free ports) for callers that
//!   drive the daemons themselves.
//! - [`fanout`]: [`Fanout`], one agent feeding several receivers, each optionally
//!   behind its own network namespace.
//! - [`netns`]: [`netns::StandbyLink`], a veth link to a namespace that tests cut,
//!   restore and rate-limit.
//! - [`util`]: [`random_bytes`], [`run`] and [`wait_until`].
//! - [`torture`]: the randomized differential exerciser (`sluice-torture`).
//! - [`postgres`]: a PostgreSQL server on a test tree, pgbench and its invariants.
//! - [`prometheus`]: a real Prometheus server scraping the daemons with alerting
//!   rules, and its alerts and query API.
//!
//! Most helpers need root (mounts, BPF); `cargo xtask test` runs them as such.

pub mod browser;
pub mod daemons;
pub mod fanout;
pub mod loopfs;
pub mod metrics;
pub mod netns;
pub mod postgres;
pub mod prometheus;
pub mod torture;
pub mod tree;
pub mod util;

pub use daemons::{Binaries, Pair, PairOptions};
pub use fanout::{Fanout, FanoutOptions, StandbySpec, SyncWait};
pub use loopfs::{FsKind, LoopFs};
pub use metrics::{Metrics, scrape};
pub use tree::{
    CompareOptions, Difference, Side, TreeDiff, compare_trees, compare_trees_with,
    wait_until_identical, wait_until_identical_with,
};
pub use util::{random_bytes, run, wait_until};
