//! The last hour of lag, kept in memory for the status page's chart.
//!
//! Samples are folded into buckets of [`STEP_SECONDS`] that keep the worst lag
//! seen in them, so a spike between two page refreshes still shows. An hour of
//! one series is [`BUCKETS`] buckets of 24 bytes: a few KiB per peer.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Width of one bucket.
pub const STEP_SECONDS: u64 = 10;
/// Buckets kept per series: one hour.
pub const BUCKETS: usize = 360;
/// Series kept at most (peers of one daemon); later names are not recorded.
pub const MAX_SERIES: usize = 64;

/// The worst lag seen in one bucket.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "(u64, f64, u64)", into = "(u64, f64, u64)")]
pub struct LagSample {
    /// Start of the bucket (Unix seconds).
    pub at_unix: u64,
    pub lag_seconds: f64,
    pub lag_bytes: u64,
}

impl From<(u64, f64, u64)> for LagSample {
    fn from((at_unix, lag_seconds, lag_bytes): (u64, f64, u64)) -> Self {
        LagSample { at_unix, lag_seconds, lag_bytes }
    }
}

impl From<LagSample> for (u64, f64, u64) {
    fn from(s: LagSample) -> Self {
        (s.at_unix, s.lag_seconds, s.lag_bytes)
    }
}

/// The last hour of lag per peer. In JSON: `{"step_seconds": 10, "series":
/// {"<peer>": [[bucket start (Unix s), worst lag (s), worst lag (bytes)], …]}}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LagHistory {
    #[serde(default = "step")]
    pub step_seconds: u64,
    pub series: BTreeMap<String, VecDeque<LagSample>>,
}

fn step() -> u64 {
    STEP_SECONDS
}

impl LagHistory {
    pub fn new() -> LagHistory {
        LagHistory { step_seconds: STEP_SECONDS, series: BTreeMap::new() }
    }

    /// Records `peer`'s lag at `now_unix` (seconds).
    pub fn record(&mut self, peer: &str, now_unix: u64, lag_seconds: f64, lag_bytes: u64) {
        let lag_seconds = if lag_seconds.is_finite() { lag_seconds.max(0.0) } else { 0.0 };
        // Looked up before inserting: the agent records every standby each tick,
        // and only a new name needs a key of its own.
        if !self.series.contains_key(peer) {
            if self.series.len() >= MAX_SERIES {
                return;
            }
            self.series.insert(peer.to_owned(), VecDeque::with_capacity(BUCKETS));
        }
        let Some(series) = self.series.get_mut(peer) else { return };
        let bucket = now_unix - now_unix % STEP_SECONDS;
        match series.back_mut() {
            Some(last) if last.at_unix == bucket => {
                last.lag_seconds = last.lag_seconds.max(lag_seconds);
                last.lag_bytes = last.lag_bytes.max(lag_bytes);
            }
            // A clock stepped back: start again rather than keep samples out of order.
            Some(last) if last.at_unix > bucket => {
                series.clear();
                series.push_back(LagSample { at_unix: bucket, lag_seconds, lag_bytes });
            }
            _ => series.push_back(LagSample { at_unix: bucket, lag_seconds, lag_bytes }),
        }
        let oldest = bucket.saturating_sub(STEP_SECONDS * (BUCKETS as u64 - 1));
        while series.front().is_some_and(|s| s.at_unix < oldest) || series.len() > BUCKETS {
            series.pop_front();
        }
    }
}

/// Now, in Unix seconds.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_keep_the_worst_lag_and_an_hour_at_most() {
        let mut history = LagHistory::new();
        let start = 1_700_000_000;
        history.record("b", start, 0.5, 10);
        history.record("b", start + 3, 4.0, 5);
        history.record("b", start + 7, 1.0, 100);
        let first = history.series["b"][0];
        assert_eq!((first.lag_seconds, first.lag_bytes), (4.0, 100), "the bucket keeps the worst of each");
        for s in 0..(2 * 3600) {
            history.record("b", start + 10 + s, s as f64, s);
        }
        let series = &history.series["b"];
        assert_eq!(series.len(), BUCKETS);
        let span = series.back().unwrap().at_unix - series.front().unwrap().at_unix;
        assert_eq!(span, STEP_SECONDS * (BUCKETS as u64 - 1));
        let json = serde_json::to_string(&history).unwrap();
        assert!(json.len() < 16 * 1024, "an hour of one peer is {} bytes of JSON", json.len());
        let back: LagHistory = serde_json::from_str(&json).unwrap();
        assert_eq!(back, history);
    }

    #[test]
    fn a_clock_stepping_back_restarts_the_series_and_bad_values_are_zero() {
        let mut history = LagHistory::new();
        history.record("b", 1000, f64::NAN, 1);
        history.record("b", 5000, 1.0, 1);
        history.record("b", 2000, -3.0, 1);
        let series = &history.series["b"];
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].at_unix, 2000);
        assert_eq!(series[0].lag_seconds, 0.0);
        for i in 0..(MAX_SERIES + 5) {
            history.record(&format!("p{i}"), 2000, 1.0, 1);
        }
        assert_eq!(history.series.len(), MAX_SERIES);
    }
}
