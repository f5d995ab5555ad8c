//! One standby's share of replication: what it lacks (its own backlog and
//! journal, whose sequence numbers are its own), the comparison it is owed,
//! its verifier, its connection when there is one, and its metrics. What is
//! captured and read is read once and handed to every feed.

use crate::backlog::{Backlog, Limits};
use crate::journal::{Header, JournalWriter};
use crate::link::Outbox;
use crate::metrics::StandbyMetrics;
use crate::verify::Verifier;
use sluice_proto::{AgentMessage, Hash, RelPath};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

/// A standby and everything kept for it across connections.
pub struct Feed {
    pub name: String,
    pub address: SocketAddr,
    pub backlog: Backlog,
    pub journal: JournalWriter,
    /// The header last recorded in its journal; `None` until this run's first checkpoint.
    pub last_written: Option<Header>,
    pub journal_seen: u64,
    /// A comparison of the whole tree it is owed, and why.
    pub compare: Option<String>,
    /// Events may have been lost since its last comparison: the next one
    /// compares files changed since then by content.
    pub verify_recent: bool,
    /// When its last comparison began (Unix seconds).
    pub last_compare_start: Option<i64>,
    /// When its last comparison ended (Unix seconds) and how many files differed.
    pub last_compare: Option<(f64, u64)>,
    /// The operation it refused on the previous connection.
    pub refused: Option<u64>,
    /// Its backlog was cleared while connected: the next operations sent do
    /// not follow the last ones, which the receiver must be told.
    pub skip_owed: bool,
    /// Its backlog reached its bound on content: new writes are kept for it as
    /// ranges (in the engine, as its private ranges) until it has caught up.
    pub ahead: bool,
    /// What is queued is everything the tree changed since its promotion (see
    /// [`crate::failback`]), until the first connection.
    pub failback_base: bool,
    /// A failback by ranges is under way: once all of it is sent, the standby is told.
    pub failback_sending: bool,
    pub verifier: Verifier,
    pub verify_seen: crate::verify::Stats,
    pub metrics: StandbyMetrics,
    /// The open connection, if any.
    pub link: Option<Link>,
    /// Connections opened so far (a message names the one it came on).
    pub links_opened: u64,
    /// Connections that ended soon after they began, in a row.
    pub quick_failures: u32,
}

impl Feed {
    pub fn new(name: String, address: SocketAddr, journal: JournalWriter, backlog: Backlog, verifier: Verifier, metrics: StandbyMetrics) -> Feed {
        Feed {
            name,
            address,
            backlog,
            journal,
            last_written: None,
            journal_seen: 0,
            compare: None,
            verify_recent: false,
            last_compare_start: None,
            last_compare: None,
            refused: None,
            skip_owed: false,
            ahead: false,
            failback_base: false,
            failback_sending: false,
            verifier,
            verify_seen: crate::verify::Stats::default(),
            metrics,
            link: None,
            links_opened: 0,
            quick_failures: 0,
        }
    }

    pub fn online(&self) -> bool {
        self.link.is_some()
    }

    /// Owes it a comparison of the whole tree (the first reason given stands).
    pub fn request_compare(&mut self, reason: impl Into<String>, verify_recent: bool) {
        self.verify_recent |= verify_recent;
        if self.compare.is_none() {
            let reason = reason.into();
            tracing::warn!(standby = %self.name, "tree will be compared with the standby: {reason}");
            self.compare = Some(reason);
        }
    }

    /// The lower bound of change times whose files its next comparison
    /// compares by content, when events may have been lost.
    pub fn verify_since(&self) -> Option<i64> {
        // A second of slack for timestamp granularity.
        self.verify_recent.then(|| self.last_compare_start.map_or(0, |t| t - 1))
    }

    /// In sync: connected, compared, and holding everything sent.
    pub fn synced(&self) -> bool {
        self.link.as_ref().is_some_and(|link| link.synced) && self.metrics.initial_sync_complete.get() == 1
    }

    /// Whether data read now may go into its backlog as content.
    pub fn takes_content(&self) -> bool {
        !self.ahead && (self.online() || self.compare.is_none())
    }

    /// File content it may still be given now, at most `read_ahead`.
    pub fn content_room(&self, limits: Limits, read_ahead: u64) -> u64 {
        limits.bytes.min(read_ahead).saturating_sub(self.backlog.unsent_payload())
    }
}

/// One connection to a standby, and the comparison and wants under way on it.
pub struct Link {
    pub id: u64,
    pub connection: quinn::Connection,
    pub outbox: Outbox,
    pub wire_seen: (u64, u64),
    pub lost_seen: u64,
    pub quic_acks_seen: u64,
    /// The standby matched the tree on this connection.
    pub synced: bool,
    pub sync_started: Instant,
    pub last_rescan: Instant,
    pub progress: Option<indicatif::ProgressBar>,
    pub wants_answered: u64,
    pub last_progress_log: Instant,
    /// When acknowledgements last moved forward (or sending started from nothing in flight).
    pub last_progress: Instant,
    /// Files the receiver wants, not yet read: the path, the standby's block
    /// hashes, and the block to go on from.
    pub wants: VecDeque<(RelPath, Vec<Hash>, usize)>,
    /// A file whose hashes have come in part.
    pub partial_want: Option<(RelPath, Vec<Hash>)>,
    /// The receiver's `ManifestDone`, held until every want has been read.
    pub manifest_done: Option<u64>,
    pub opened_at: Instant,
}

impl Link {
    pub fn new(id: u64, connection: quinn::Connection, outbox: Outbox, rescan_spacing: std::time::Duration) -> Link {
        let now = Instant::now();
        Link {
            id,
            connection,
            outbox,
            wire_seen: (0, 0),
            lost_seen: 0,
            quic_acks_seen: 0,
            synced: false,
            sync_started: now,
            last_rescan: now.checked_sub(rescan_spacing).unwrap_or(now),
            progress: None,
            wants_answered: 0,
            last_progress_log: now,
            last_progress: now,
            wants: VecDeque::new(),
            partial_want: None,
            manifest_done: None,
            opened_at: now,
        }
    }

    pub fn send(&self, message: AgentMessage) -> anyhow::Result<()> {
        self.outbox.send(message)
    }

    /// A comparison is under way: wants are being answered, or the last is.
    pub fn comparing(&self) -> bool {
        !self.wants.is_empty() || self.manifest_done.is_some()
    }
}
