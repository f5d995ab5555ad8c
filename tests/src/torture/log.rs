//! The operation log: one JSON line per operation with its CLOCK_MONOTONIC start,
//! duration, worker, class, arguments and per-call results. Workers append to their
//! own file; after a run the files are merged by time, and the operations that led
//! to a differing path are picked out (following renames and copies backwards).

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::ops::{Class, Op};

/// Describes the run a log belongs to, enough to rebuild its starting state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub seed: u64,
    pub fs: String,
    /// Workers in the run (the initial population has one private area each).
    pub workers: usize,
    /// The worker that wrote this log, or `None` for a merged excerpt.
    pub worker: Option<usize>,
}

/// One executed operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// CLOCK_MONOTONIC at the start, in ns (comparable across processes).
    pub t: u64,
    /// How long it took, in ns.
    pub dt: u64,
    pub w: usize,
    /// Sequence number within the worker.
    pub n: u64,
    pub class: Class,
    pub op: Op,
    /// `ok`, `ok=N` or an error, for the open (or the single call) then each step.
    pub res: Vec<String>,
}

impl Record {
    /// Whether every call of the operation succeeded.
    pub fn succeeded(&self) -> bool {
        self.res.iter().all(|r| r == "ok" || r.starts_with("ok="))
    }

    /// One line for people: time since `t0`, worker and number, class, the
    /// operation as JSON (exactly what `--replay` reads), and the results.
    pub fn render(&self, t0: u64) -> String {
        let op = serde_json::to_string(&self.op).unwrap_or_else(|e| format!("<{e}>"));
        format!(
            "+{:>10.6}s w{}#{:<5} {:<9} {op} -> {}",
            self.t.saturating_sub(t0) as f64 / 1e9,
            self.w,
            self.n,
            self.class.name(),
            self.res.join(", ")
        )
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Header { header: Header },
    Record(Box<Record>),
}

/// CLOCK_MONOTONIC now, in ns.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-parameter.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Appends records to a log, one `write` per line, so a worker that dies leaves
/// every completed operation in the file.
pub struct LogWriter {
    file: File,
    path: PathBuf,
}

impl LogWriter {
    pub fn create(path: &Path, header: &Header) -> anyhow::Result<LogWriter> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)
            .with_context(|| format!("cannot create the op log {}", path.display()))?;
        let mut writer = LogWriter { file, path: path.to_owned() };
        writer.line(&Line::Header { header: header.clone() })?;
        Ok(writer)
    }

    pub fn append(&mut self, record: &Record) -> anyhow::Result<()> {
        self.line(&Line::Record(Box::new(record.clone())))
    }

    fn line(&mut self, line: &Line) -> anyhow::Result<()> {
        let mut text = serde_json::to_string(line).context("cannot serialize a log line")?;
        text.push('\n');
        self.file.write_all(text.as_bytes()).with_context(|| format!("cannot append to {}", self.path.display()))
    }
}

/// Reads a log (or an excerpt); a torn last line (the writer was killed) is skipped.
pub fn read_log(path: &Path) -> anyhow::Result<(Option<Header>, Vec<Record>)> {
    let file = File::open(path).with_context(|| format!("cannot open the op log {}", path.display()))?;
    let mut header = None;
    let mut records = Vec::new();
    let lines: Vec<String> = BufReader::new(file).lines().collect::<Result<_, _>>()?;
    let count = lines.len();
    for (i, line) in lines.into_iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Line>(&line) {
            Ok(Line::Header { header: h }) => header = Some(h),
            Ok(Line::Record(record)) => records.push(*record),
            Err(_) if i + 1 == count => {}
            Err(e) => return Err(e).with_context(|| format!("{}:{}: not a log line", path.display(), i + 1)),
        }
    }
    Ok((header, records))
}

/// Every record of the given logs, ordered by start time.
pub fn merge(paths: &[PathBuf]) -> anyhow::Result<Vec<Record>> {
    let mut all = Vec::new();
    for path in paths {
        all.extend(read_log(path)?.1);
    }
    all.sort_by_key(|r| (r.t, r.w, r.n));
    Ok(all)
}

/// Writes records (with a header) as a log `--replay` can run.
pub fn write_log(path: &Path, header: &Header, records: &[&Record]) -> anyhow::Result<()> {
    let mut writer = LogWriter::create(path, header)?;
    for record in records {
        writer.append(record)?;
    }
    Ok(())
}

/// Whether `a` and `b` (slash-separated) are the same path or one contains the other.
fn related(a: &str, b: &str) -> bool {
    let nested = |outer: &str, inner: &str| inner.len() > outer.len() && inner.starts_with(outer) && inner.as_bytes()[outer.len()] == b'/';
    a == b || nested(a, b) || nested(b, a)
}

/// The records that touched `paths` (relative to the master filesystem, e.g.
/// `tree/shared0/f3`), their parents or children, followed back through renames,
/// links and copies: walking backwards in time, a rename into an interesting path
/// makes its old name interesting for everything earlier. Returned in time order.
pub fn excerpt<'a>(records: &'a [Record], paths: &BTreeSet<String>) -> Vec<&'a Record> {
    let mut interesting: HashSet<String> = paths.iter().cloned().collect();
    let mut picked = Vec::new();
    for record in records.iter().rev() {
        let touched: Vec<String> = record.op.paths().iter().map(|p| p.fs_rel()).collect();
        if !touched.iter().any(|t| interesting.iter().any(|i| related(t, i))) {
            continue;
        }
        picked.push(record);
        for source in record.op.sources() {
            interesting.insert(source.fs_rel());
        }
    }
    picked.reverse();
    picked
}

/// The log files of a run's output directory, worker by worker.
pub fn worker_logs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut logs: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("worker-") && n.ends_with(".jsonl"))
        })
        .collect();
    logs.sort();
    Ok(logs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::torture::ops::{P, RenameMode, Via};

    fn record(t: u64, op: Op) -> Record {
        Record { t, dt: 1, w: 0, n: t, class: Class::Rename, op, res: vec!["ok".into()] }
    }

    #[test]
    fn excerpt_follows_renames_backwards() {
        let abs = |rel: &str| P::new(Via::Abs, rel);
        let records = vec![
            record(1, Op::Create { path: abs("w0/f1"), mode: 0o644, excl: false }),
            record(2, Op::Create { path: abs("w0/unrelated"), mode: 0o644, excl: false }),
            record(3, Op::Rename { from: abs("w0/f1"), to: P::new(Via::Out, "o1"), mode: RenameMode::Plain }),
            record(4, Op::Rename { from: P::new(Via::Out, "o1"), to: abs("shared0/d0/f2"), mode: RenameMode::Plain }),
            record(5, Op::Rmdir { path: abs("shared0") }),
            record(6, Op::Chmod { path: abs("shared0/d0/f2"), mode: 0o600 }),
        ];
        let wanted: BTreeSet<String> = ["tree/shared0/d0/f2".to_owned()].into();
        let picked: Vec<u64> = excerpt(&records, &wanted).iter().map(|r| r.t).collect();
        assert_eq!(picked, vec![1, 3, 4, 5, 6]);
    }

    #[test]
    fn related_means_same_parent_or_child() {
        assert!(related("tree/a", "tree/a"));
        assert!(related("tree/a", "tree/a/b"));
        assert!(related("tree/a/b", "tree/a"));
        assert!(!related("tree/a", "tree/ab"));
    }

    #[test]
    fn logs_round_trip_and_survive_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker-0.jsonl");
        let header = Header { seed: 9, fs: "ext4".into(), workers: 2, worker: Some(0) };
        let rec = record(5, Op::Unlink { path: P::new(Via::Cwd, "w0/f1") });
        write_log(&path, &header, &[&rec]).unwrap();
        fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"t\":1").unwrap();
        let (read_header, records) = read_log(&path).unwrap();
        assert_eq!(read_header, Some(header));
        assert_eq!(records, vec![rec.clone()]);
        assert!(rec.render(0).contains(r#"{"op":"unlink","path":"cwd:w0/f1"} -> ok"#), "{}", rec.render(0));
        assert_eq!(worker_logs(dir.path()).unwrap(), vec![path]);
    }
}
