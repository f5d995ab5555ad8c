//! Writing a run up: `report.md` (ratios against the peers first, absolute figures
//! after, the targets and how sluice stands), `results.json` and two SVGs.

use std::fmt::Write;
use std::path::Path;

use anyhow::Context;

use super::replicator::Kind;
use super::fanout::STANDBYS;
use super::results::{CALLS, Fanout, FanoutPhase, FanoutRun, Results, Row, ScaleRun, SyscallCosts};
use super::svg;

pub fn write(dir: &Path, r: &Results) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(r)?)?;
    std::fs::write(dir.join("bytes.svg"), bytes_chart(r))?;
    std::fs::write(dir.join("s1-lag.svg"), lag_chart(r))?;
    std::fs::write(dir.join("report.md"), markdown(r)?)?;
    Ok(())
}

fn cases(r: &Results) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    for row in &r.rows {
        if !out
            .iter()
            .any(|(s, c)| *s == row.scenario && *c == row.case)
        {
            out.push((row.scenario, row.case.clone()));
        }
    }
    out
}

fn find<'a>(r: &'a Results, scenario: &str, case: &str, kind: Kind) -> Option<&'a Row> {
    r.rows
        .iter()
        .find(|x| x.scenario == scenario && x.case == case && x.replicator == kind)
}

pub fn bytes(b: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB"];
    let mut v = b;
    let mut i = 0;
    while v.abs() >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

fn secs(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

/// Time to converge, or why there is none.
fn time_cell(row: &Row) -> String {
    match (&row.error, row.converged_s) {
        (Some(_), _) => "failed (see notes)".into(),
        (None, Some(s)) => secs(s),
        (None, None) => format!("did not converge in {:.0} s", row.timeout_s),
    }
}

/// `peer ÷ sluice` as "N×": above 1 means sluice is better (less time or bytes).
fn ratio(peer: Option<f64>, sluice: Option<f64>) -> String {
    match (peer, sluice) {
        (Some(p), Some(s)) if s > 0.0 => format!("{:.1}×", p / s),
        (Some(_), Some(_)) => "∞".into(),
        _ => "–".into(),
    }
}

fn ok(row: &Row) -> bool {
    row.error.is_none() && row.converged_s.is_some()
}

/// The headline number of a case for time: marker p99 lag for S1, from the first
/// byte for S6, else convergence.
fn headline_time(row: &Row) -> Option<f64> {
    if !ok(row) {
        return None;
    }
    match &row.lag {
        Some(lag) => Some(lag.p99_ms / 1e3),
        None if row.write_s.is_some() => row.since_first_byte_s(),
        None => row.converged_s,
    }
}

fn markdown(r: &Results) -> anyhow::Result<String> {
    let mut md = String::new();
    writeln!(
        md,
        "# sluice bench, {}{}\n",
        r.date,
        if r.quick { " (quick)" } else { "" }
    )?;
    writeln!(
        md,
        "Produced by `cargo xtask bench{}` in {:.0} s of wall time. Every replicator ran on the \
         same data on fresh loop-mounted ext4 filesystems (one for the master, one for each \
         standby), in its own network namespace so its loopback carried only its traffic.{}\n",
        match (r.quick, r.scenarios.is_empty()) {
            (true, true) => " --quick".to_owned(),
            (true, false) => format!(" --quick --scenarios {}", r.scenarios.join(",")),
            (false, true) => String::new(),
            (false, false) => format!(" --scenarios {}", r.scenarios.join(",")),
        },
        r.wall_s,
        if r.quick {
            " This is the quick run: the data sizes are shrunk (see Sizes) to fit in 5 minutes, \
             so absolute figures are smaller than the issue's full-size scenarios."
        } else {
            ""
        }
    )?;

    // S5, S7 and S8 have their own tables; a run of only those has no headline.
    if !r.rows.is_empty() {
        headline(&mut md, r)?;
    }
    targets(&mut md, r)?;

    writeln!(md, "## Per scenario\n")?;
    s1_table(&mut md, r)?;
    s6_table(&mut md, r)?;
    for (scenario, case) in cases(r)
        .into_iter()
        .filter(|(s, _)| *s != "S1" && *s != "S6")
    {
        writeln!(md, "### {scenario}: {case}\n")?;
        md.push_str("| replicator | time to converge | × sluice | bytes on wire | × sluice | wire ÷ data | standby writes | CPU master / standby | identical |\n|---|---|---|---|---|---|---|---|---|\n");
        let s = find(r, scenario, &case, Kind::Sluice);
        for kind in Kind::ALL {
            let Some(row) = find(r, scenario, &case, kind) else {
                continue;
            };
            let wire_per = if row.changed_bytes > 0 {
                format!("{:.2}", row.lo_bytes as f64 / row.changed_bytes as f64)
            } else {
                "–".into()
            };
            writeln!(
                md,
                "| {} | {} | {} | {}{} | {} | {} | {} | {:.2} / {:.2} s | {} |",
                kind.name(),
                time_cell(row),
                if kind == Kind::Sluice {
                    "1×".into()
                } else {
                    ratio(
                        ok(row).then_some(row.converged_s).flatten(),
                        s.filter(|s| ok(s)).and_then(|s| s.converged_s),
                    )
                },
                bytes(row.lo_bytes as f64),
                row.agent_wire_bytes
                    .map_or(String::new(), |a| format!(" (agent metric {})", bytes(a))),
                if kind == Kind::Sluice {
                    "1×".into()
                } else {
                    ratio(
                        ok(row).then_some(row.lo_bytes as f64),
                        s.filter(|s| ok(s)).map(|s| s.lo_bytes as f64),
                    )
                },
                wire_per,
                bytes(row.standby_written_bytes as f64),
                row.master_cpu_s,
                row.standby_cpu_s,
                identical(row)
            )?;
        }
        md.push('\n');
    }
    if let Some(c) = &r.syscall_costs {
        syscall_section(&mut md, c)?;
    }
    for run in &r.scale {
        scale_section(&mut md, run)?;
    }
    if let Some(f) = &r.fanout {
        fanout_section(&mut md, f)?;
    }

    if !r.rows.is_empty() {
        writeln!(
            md,
            "## Plots\n\n![bytes on the wire per case](bytes.svg)\n\n![S1 lag over time](s1-lag.svg)\n"
        )?;
    }
    method(&mut md)?;
    errors(&mut md, r)?;
    writeln!(md, "## Machine\n")?;
    for (k, v) in r.machine.iter().chain(&r.versions) {
        writeln!(md, "- {k}: {v}")?;
    }
    writeln!(md, "\n## Sizes\n")?;
    for (k, v) in &r.sizes {
        writeln!(md, "- {k}: {v}")?;
    }
    writeln!(md, "\nRaw figures: `results.json`.")?;
    Ok(md)
}

/// Each scenario case of S1–S4 and S6 with the peers' figures relative to sluice's.
fn headline(md: &mut String, r: &Results) -> anyhow::Result<()> {
    let peers = [Kind::Rsync, Kind::Lsyncd, Kind::Syncthing];
    writeln!(md, "## Headline: peers relative to sluice\n")?;
    writeln!(
        md,
        "Each cell is *peer ÷ sluice*: above 1× sluice took less time or sent fewer bytes. \
         Time is p99 marker lag for S1, from the first byte written until the standby \
         held the file for S6, and time to converge otherwise; bytes are bytes on the \
         replicator's loopback.\n"
    )?;
    md.push_str("| scenario | case | sluice time | sluice bytes |");
    for p in peers {
        write!(md, " {} time | {} bytes |", p.name(), p.name())?;
    }
    md.push_str("\n|---|---|---|---|");
    md.push_str(&"---|---|".repeat(peers.len()));
    md.push('\n');
    for (scenario, case) in cases(r) {
        let Some(s) = find(r, scenario, &case, Kind::Sluice) else {
            continue;
        };
        let s_time = headline_time(s);
        let s_bytes = ok(s).then_some(s.lo_bytes as f64);
        write!(
            md,
            "| {scenario} | {case} | {} | {} |",
            s_time.map_or_else(|| time_cell(s), secs),
            s_bytes.map_or("–".into(), bytes)
        )?;
        for p in peers {
            match find(r, scenario, &case, p) {
                Some(row) if ok(row) => write!(
                    md,
                    " {} | {} |",
                    ratio(headline_time(row), s_time),
                    ratio(Some(row.lo_bytes as f64), s_bytes)
                )?,
                Some(row) => write!(md, " {} | – |", time_cell(row))?,
                None => md.push_str(" – | – |"),
            }
        }
        md.push('\n');
    }
    md.push('\n');
    Ok(())
}

fn identical(row: &Row) -> &'static str {
    match row.identical {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "–",
    }
}

fn s1_table(md: &mut String, r: &Results) -> anyhow::Result<()> {
    for (_, case) in cases(r).into_iter().filter(|(s, _)| *s == "S1") {
        let rows: Vec<&Row> = r
            .rows
            .iter()
            .filter(|x| x.scenario == "S1" && x.case == case)
            .collect();
        writeln!(md, "### S1: {case}\n")?;
        md.push_str("| replicator | writes/s reached | lag p50 | lag p99 | lag max | markers seen | wire ÷ changed | standby writes ÷ changed | CPU master / standby | identical |\n|---|---|---|---|---|---|---|---|---|---|\n");
        for row in &rows {
            let per = |b: f64| format!("{:.2}", b / row.changed_bytes.max(1) as f64);
            let (p50, p99, max, seen) = match (&row.lag, &row.error) {
                (Some(l), None) if l.seen > 0 => {
                    let suffix = if l.periodic_pass { " (one pass)" } else { "" };
                    (
                        format!("{}{suffix}", secs(l.p50_ms / 1e3)),
                        format!("{}{suffix}", secs(l.p99_ms / 1e3)),
                        if l.seen < l.total {
                            format!("> {:.0} s", row.timeout_s)
                        } else {
                            secs(l.max_ms / 1e3)
                        },
                        format!("{}/{}", l.seen, l.total),
                    )
                }
                (Some(l), None) => ("–".into(), "–".into(), "–".into(), format!("0/{}", l.total)),
                _ => ("failed".into(), "–".into(), "–".into(), "–".into()),
            };
            let wire = match row.agent_wire_bytes {
                Some(a) => format!("{} (agent metric {})", per(row.lo_bytes as f64), per(a)),
                None => per(row.lo_bytes as f64),
            };
            writeln!(
                md,
                "| {} | {} | {p50} | {p99} | {max} | {seen} | {wire} | {} | {:.2} / {:.2} s | {} |",
                row.replicator.name(),
                row.lag
                    .as_ref()
                    .filter(|l| l.writes_per_s > 0.0)
                    .map_or("–".into(), |l| format!("{:.0}", l.writes_per_s)),
                per(row.standby_written_bytes as f64),
                row.master_cpu_s,
                row.standby_cpu_s,
                identical(row)
            )?;
        }
        writeln!(
            md,
            "\nChanged bytes: {} (every 4 KiB write counted, repeats included).\n",
            bytes(rows.first().map_or(0, |x| x.changed_bytes) as f64)
        )?;
    }
    Ok(())
}

/// S6: one file written sequentially; time from its first byte, and throughput
/// per CPU second on each side.
fn s6_table(md: &mut String, r: &Results) -> anyhow::Result<()> {
    for (_, case) in cases(r).into_iter().filter(|(s, _)| *s == "S6") {
        writeln!(md, "### S6: {case}\n")?;
        md.push_str("| replicator | write took | standby held it, from the first byte | from the last byte | × sluice | MiB/s per CPU-s master / standby | bytes on wire | standby writes | identical |\n|---|---|---|---|---|---|---|---|---|\n");
        let s = find(r, "S6", &case, Kind::Sluice).and_then(headline_time);
        for kind in Kind::ALL {
            let Some(row) = find(r, "S6", &case, kind) else {
                continue;
            };
            let per_cpu = |cpu: f64| {
                if cpu > 0.0 {
                    format!("{:.0}", row.changed_bytes as f64 / (1 << 20) as f64 / cpu)
                } else {
                    "–".into()
                }
            };
            writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} / {} | {} | {} | {} |",
                kind.name(),
                row.write_s.map_or("–".into(), secs),
                headline_time(row).map_or_else(|| time_cell(row), secs),
                time_cell(row),
                if kind == Kind::Sluice {
                    "1×".into()
                } else {
                    ratio(headline_time(row), s)
                },
                per_cpu(row.master_cpu_s),
                per_cpu(row.standby_cpu_s),
                bytes(row.lo_bytes as f64),
                bytes(row.standby_written_bytes as f64),
                identical(row)
            )?;
        }
        writeln!(
            md,
            "\nrsync runs once the write is done (a schedule with no delay, its best case), \
             so its time from the first byte is the write plus one pass. CPU is the \
             replicator's processes on each side, the writer excluded.\n"
        )?;
    }
    Ok(())
}

fn targets(md: &mut String, r: &Results) -> anyhow::Result<()> {
    writeln!(md, "## Targets from the issues and where sluice stands\n")?;
    writeln!(md, "| target | measured | met |\n|---|---|---|")?;
    let sl = |s: &'static str| {
        r.rows
            .iter()
            .filter(move |x| x.scenario == s && x.replicator == Kind::Sluice)
    };
    let mut line = |what: &str, measured: String, met: Option<bool>| {
        let _ = writeln!(
            md,
            "| {what} | {measured} | {} |",
            match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            }
        );
    };
    for s1 in sl("S1") {
        let rate = s1.lag.as_ref().map(|l| l.writes_per_s);
        // Issue 5 asked for 20 ms at 1,000 writes/s; issue 11 for 5 ms there and
        // 20 ms at 10,000/s.
        let goals: &[f64] = if s1.case.contains("10,000") {
            &[20.0]
        } else {
            &[20.0, 5.0]
        };
        for &goal in goals {
            let what = format!("S1 {}: p99 lag < {goal:.0} ms", s1.case);
            match (&s1.lag, &s1.error) {
                (Some(l), None) if l.seen > 0 => line(
                    &what,
                    format!(
                        "{} ({} of {} markers, {:.0} writes/s reached)",
                        secs(l.p99_ms / 1e3),
                        l.seen,
                        l.total,
                        rate.unwrap_or(0.0)
                    ),
                    Some(l.seen == l.total && l.p99_ms < goal),
                ),
                _ => line(&what, "no lag measured".into(), Some(false)),
            }
        }
        let c = s1.changed_bytes.max(1) as f64;
        let wire = s1.agent_wire_bytes.unwrap_or(s1.lo_bytes as f64) / c;
        line(
            &format!("S1 {}: wire ÷ changed ≤ 1.05 (agent metric)", s1.case),
            format!(
                "{wire:.2} (loopback incl. headers and acks: {:.2})",
                s1.lo_bytes as f64 / c
            ),
            Some(wire <= 1.05),
        );
        let w = s1.standby_written_bytes as f64 / c;
        line(
            &format!("S1 {}: standby writes ÷ changed ≤ 1.05", s1.case),
            format!("{w:.2} (block device, ext4 journal included)"),
            Some(w <= 1.05),
        );
    }
    for s3 in sl("S3") {
        let t = s3.converged_s.filter(|_| s3.error.is_none());
        line(
            &format!("S3 {} < 50 ms", s3.case),
            t.map_or_else(|| time_cell(s3), secs),
            Some(t.is_some_and(|t| t < 0.050)),
        );
        line(
            &format!("S3 {} < 64 KiB on the wire", s3.case),
            bytes(s3.lo_bytes as f64),
            Some(ok(s3) && s3.lo_bytes < 64 * 1024),
        );
    }
    let rsync_of = |row: &Row| find(r, row.scenario, &row.case, Kind::Rsync).filter(|x| ok(x));
    for s4 in sl("S4") {
        let goal = if s4.case.starts_with("90%") { 2.0 } else { 1.5 };
        let speedup = match (
            rsync_of(s4).and_then(|x| x.converged_s),
            ok(s4).then_some(s4.converged_s).flatten(),
        ) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        line(
            &format!("S4 {} ≥ {goal}× faster than rsync", s4.case),
            speedup.map_or("–".into(), |x| format!("{x:.2}×")),
            Some(speedup.is_some_and(|x| x >= goal)),
        );
        for (side, cpu) in [
            ("master", (|x: &Row| x.master_cpu_s) as fn(&Row) -> f64),
            ("standby", |x: &Row| x.standby_cpu_s),
        ] {
            let measured = rsync_of(s4).filter(|_| ok(s4)).map(|rs| (cpu(s4), cpu(rs)));
            line(
                &format!("S4 {}: {side} CPU per byte ≤ rsync's", s4.case),
                measured.map_or("–".into(), |(a, b)| {
                    format!(
                        "{a:.2} s vs {b:.2} s ({} vs {} per GiB)",
                        secs(a / (s4.changed_bytes.max(1) as f64 / (1u64 << 30) as f64)),
                        secs(b / (s4.changed_bytes.max(1) as f64 / (1u64 << 30) as f64))
                    )
                }),
                Some(measured.is_some_and(|(a, b)| a <= b)),
            );
        }
    }
    for s6 in sl("S6") {
        let speedup = match (
            rsync_of(s6).and_then(headline_time),
            headline_time(s6),
        ) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        line(
            &format!("S6 {}: standby holds it ≥ 1.5× sooner than rsync, from the first byte", s6.case),
            match (speedup, headline_time(s6)) {
                (Some(x), Some(t)) => format!("{x:.2}× ({} for sluice)", secs(t)),
                _ => "–".into(),
            },
            Some(speedup.is_some_and(|x| x >= 1.5)),
        );
    }
    // Flash wear: the standby's disk may write no more than rsync --inplace for the
    // same change (S1 has its own goal against the bytes changed).
    for row in r
        .rows
        .iter()
        .filter(|x| x.replicator == Kind::Sluice && x.scenario != "S1")
    {
        let peer = rsync_of(row).map(|x| x.standby_written_bytes);
        line(
            &format!("{} {}: standby writes ≤ rsync --inplace's", row.scenario, row.case),
            match peer {
                Some(p) if ok(row) => format!(
                    "{} vs {} ({:.2}×)",
                    bytes(row.standby_written_bytes as f64),
                    bytes(p as f64),
                    row.standby_written_bytes as f64 / p.max(1) as f64
                ),
                _ => "–".into(),
            },
            Some(peer.is_some_and(|p| ok(row) && row.standby_written_bytes <= p)),
        );
    }
    if let Some(c) = &r.syscall_costs {
        for call in CALLS.iter() {
            let Some(goal) = call.goal_ns else { continue };
            let (without, with) = c.medians(call);
            let added = c.added(call);
            line(
                &format!("S5 {}: ≤ {goal:.0} ns added by the agent", call.label),
                match (without, with, added) {
                    (Some(a), Some(b), Some(d)) => {
                        format!(
                            "{d:+.0} ns ({a:.0} → {b:.0} ns, medians of {})",
                            c.rounds.len()
                        )
                    }
                    _ => "not measured".into(),
                },
                Some(added.is_some_and(|d| d <= goal)),
            );
        }
    }
    for run in &r.scale {
        scale_targets(&mut line, run);
    }
    if let Some(f) = &r.fanout {
        fanout_targets(&mut line, f);
    }
    md.push('\n');
    Ok(())
}

fn method(md: &mut String) -> anyhow::Result<()> {
    writeln!(
        md,
        "## How it is measured\n\n\
         - **Replicators.** sluice: `sluice-agent` and `sluice-receiver` (release build) over QUIC on loopback. \
         rsync: `rsync -aAXH --inplace --no-whole-file --delete` to an rsync daemon on loopback, run once after \
         the workload; it is a periodic tool, so its lag and convergence time are the duration of that one pass \
         (a real deployment adds its schedule interval on top). lsyncd: `default.rsync`, `delay = 0`, the same \
         rsync options (`archive, acls, xattrs, hard_links, inplace`, `whole_file = false`), to the same kind of \
         daemon. Syncthing: two instances, send-only folder on the master and receive-only on the standby, \
         fsWatcher on with `fsWatcherDelayS=1`, devices introduced by ID at `tcp://127.0.0.1:port`, discovery, \
         relays and NAT off.\n\
         - **Convergence.** The bench polls the standby until every expected file has the master's size and \
         first/last 16 bytes and removed paths are gone. It looks every millisecond at the removed paths and \
         the last file written, and when those are right, at every file: the time is that of the cheap look \
         which a full look right after confirmed (a full look over 10,000 files takes tens of ms, which would \
         otherwise be counted as replication time). Then a full comparison runs (an rsync dry run with checksums: \
         content, types, modes, owners, file mtimes, ACLs, xattrs, hard links; directory mtimes ignored, as \
         `compare_trees` does), reported as *identical*. Each wait is bounded; a replicator \
         that misses the limit is reported as \"did not converge in N s\".\n\
         - **S1 lag.** Every 100 ms the writer puts a unique 16-byte marker on a page reserved for markers; a \
         poller preads the standby file every 1 ms and records when each marker appears. p50/p99/max are over \
         the markers seen; unseen markers count as lag above the limit.\n\
         - **Bytes on the wire.** Transmit bytes of `lo` in the replicator's own network namespace \
         (`/proc/net/dev`), so TCP/UDP/IP headers and both directions are included; for sluice the agent's \
         `sluice_wire_bytes_sent_total` delta is shown beside it.\n\
         - **Standby writes.** Sectors written on the standby's loop device (`/sys/block/loopN/stat`), after \
         `sync -f`, so ext4 metadata and journal writes count: what flash would see.\n\
         - **CPU.** utime+stime (children included) of each replicator's processes from `/proc/<pid>/stat`, \
         split into master side (agent, lsyncd and its rsyncs, rsync client, Syncthing sender) and standby \
         side (receiver, rsync daemon, Syncthing receiver).\n\
         - **S5.** `sluice-syscost` (release build) times, in its own thread, 2,000,000 `getppid()`, 200,000 4 KiB \
         `pwrite`s at random 4 KiB-aligned offsets of a 64 MiB file written in full beforehand, and 2,000 `fsync`s \
         each after such a `pwrite` (the `fsync` alone is timed), and prints ns per call. It runs on an unrelated \
         filesystem and on the watched one, in rounds: without the agent, then with the agent and its receiver \
         started, live and synced (the unrelated run, with `getppid`, first, while the agent is idle). The figures \
         are medians over the rounds; *added* is the difference of the medians. The agent's CPU (utime+stime \
         from `/proc/<pid>/stat`) is counted from the watched run's first write until the standby's copy of the \
         file matched, per MiB the writes changed (every write counted). A last watched `pwrite` loop runs with \
         `kernel.bpf_stats_enabled=1` (restored afterwards) and reads `run_cnt` and `run_time_ns` of each BPF \
         program from `/proc/<agent>/fdinfo`, with its name from `BPF_OBJ_GET_INFO_BY_FD`.\n\
         - **S7.** A tree of 100-byte files, 1,000 per directory, on ext4 with an inode per 4 KiB block (beyond \
         2,000,000 files 1 KiB blocks and an inode per 2 KiB, to fit the disk), written before anything starts (page cache warm for everyone). \
         sluice: agent and receiver started against an empty standby; *capture attached* is until the agent's \
         metrics answer, *tree listed* until its log says it is comparing the tree with the standby, *initial \
         sync* until `sluice_initial_sync_complete 1` (then the tree is compared in full); peak memory is the \
         agent's `VmHWM`; then the agent is stopped and started again on the unchanged tree, timed until a new \
         file reaches the standby. rsync: `rsync -a` (local, to an empty filesystem), then the same again with \
         nothing changed. A run that hits its limit records how far it got: files on the standby and the agent's \
         backlog and progress metrics.\n\
         - **S8.** Each configuration gets a fresh master and a fresh ext4 per standby. The tree is written on the \
         master, its mtimes set an hour back (rsync's quick check compares whole seconds and would skip a file \
         written again, at the same size, within the second of its copy), its pages dropped from the page cache (`sync -f`, then `POSIX_FADV_DONTNEED` per file), and the \
         replicator started against empty standbys: the *initial sync* phase runs from its start (start-up \
         included) until every standby matched. Then every file gets random 4 KiB writes (opened once, its last write on its last 4 KiB, \
         closed), and the *random writes* phase runs from the last write until every standby matched. Each phase \
         ends with the full comparison of every standby and, for sluice, `sluice_initial_sync_complete 1`, and \
         its figures are counter deltas over it. sluice: one agent with a `[[standby]]` entry per standby and one \
         `sluice-receiver` per standby (own identity, root, port), the background verifier off \
         (`[verify] bytes_per_second = 0`: it reads at a set rate per standby for as long as the agent runs, \
         whatever the workload). lsyncd: one `sync{{}}` per target with the same source and options as above, each \
         to its own module of the rsync daemon (so the receiving rsyncs run on the standby side, as sluice's \
         receivers do). Master CPU is utime+stime with children (the agent; lsyncd and every rsync it ran); \
         *read by syscalls* is `rchar` and *from the device* `read_bytes` of `/proc/<pid>/io` over the same \
         processes (a process's figures include the children it reaped); sluice's `sluice_bytes_read_total` \
         counts the file bytes the agent read to build operations, once for all standbys. Bytes sent per \
         standby: sluice's `sluice_standby_wire_bytes_sent_total`; for lsyncd the loopback total divided by \
         the targets.\n\n\
         ## Limits\n\n\
         - One run per cell on a shared 2-core VM: expect noise of several percent on times, more on short ones.\n\
         - Loopback only: no network latency or bandwidth limit, which flatters whoever sends the most bytes.\n\
         - lsyncd acts on close-after-write (and create/move/delete), not on every write: a file held open, \
         like S1's, is replicated when it is closed. S1's writer closes the file when its writes end.\n\
         - lsyncd's `rsyncssh` (which turns moves into `mv` on the target) needs ssh and was not used.\n\
         - S5: on the watched filesystem the agent and the receiver replicate the writes on the same two \
         cores the timed thread runs on, so a watched figure with the agent includes time the thread lost to \
         them, not only the capture hooks; the BPF run times separate the hooks' own cost.\n"
    )?;
    Ok(())
}

fn errors(md: &mut String, r: &Results) -> anyhow::Result<()> {
    let failed: Vec<&Row> = r.rows.iter().filter(|x| x.error.is_some()).collect();
    if failed.is_empty() {
        return Ok(());
    }
    writeln!(md, "## Notes: failures\n")?;
    for row in failed {
        let e = row.error.as_deref().unwrap_or_default().replace('\n', " ");
        writeln!(
            md,
            "- {} {} {}: `{}`",
            row.scenario,
            row.case,
            row.replicator.name(),
            e.replace('`', "'")
        )?;
    }
    md.push('\n');
    Ok(())
}

fn bytes_chart(r: &Results) -> String {
    let cs = cases(r);
    let labels: Vec<String> = cs.iter().map(|(s, c)| format!("{s} {c}")).collect();
    let values: Vec<Vec<Option<f64>>> = cs
        .iter()
        .map(|(s, c)| {
            Kind::ALL
                .iter()
                .map(|k| {
                    find(r, s, c, *k)
                        .filter(|x| ok(x))
                        .map(|x| x.lo_bytes as f64)
                })
                .collect()
        })
        .collect();
    let names: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
    svg::bars(
        "Bytes on the wire per case (log scale; n/a = failed or did not converge)",
        &labels,
        &names,
        &values,
        bytes,
    )
}

fn lag_chart(r: &Results) -> String {
    let mut names = Vec::new();
    let mut rows = Vec::new();
    for (_, case) in cases(r).into_iter().filter(|(s, _)| *s == "S1") {
        for kind in Kind::ALL {
            // Only replicators with per-marker lags, so the palette covers them.
            if let Some(row) = find(r, "S1", &case, kind)
                .filter(|row| row.lag.as_ref().is_some_and(|l| !l.points.is_empty()))
            {
                let load = case.rsplit(", ").next().unwrap_or_default();
                names.push(format!("{} {load}", kind.name()));
                rows.push(row);
            }
        }
    }
    let series: Vec<(&str, &[(f64, f64)])> = names
        .iter()
        .zip(&rows)
        .map(|(name, row)| {
            (
                name.as_str(),
                row.lag.as_ref().map_or(&[][..], |l| &l.points[..]),
            )
        })
        .collect();
    svg::lines(
        "S1 replication lag per marker (log scale; rsync has no per-marker lag)",
        &series,
    )
}

fn ns(x: Option<f64>) -> String {
    x.map_or("–".into(), |x| format!("{x:.0}"))
}

fn syscall_section(md: &mut String, c: &SyscallCosts) -> anyhow::Result<()> {
    writeln!(md, "### S5: syscall costs (sluice only)\n")?;
    if let Some(e) = &c.error {
        writeln!(md, "failed: `{}`\n", e.replace('`', "'"))?;
    }
    if !c.rounds.is_empty() {
        writeln!(
            md,
            "ns per call, timed in the calling thread by `sluice-syscost`; median of {} rounds \
             (each round's figure in brackets).\n",
            c.rounds.len()
        )?;
        md.push_str("| call | without agent | with agent | added | goal | met |\n|---|---|---|---|---|---|\n");
        for call in CALLS.iter() {
            let each = |with: bool| {
                c.rounds
                    .iter()
                    .map(|r| ns((call.get)(if with { &r.with } else { &r.without })))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let (without, with) = c.medians(call);
            let added = c.added(call);
            writeln!(
                md,
                "| {} | {} ({}) | {} ({}) | {} | {} | {} |",
                call.label,
                ns(without),
                each(false),
                ns(with),
                each(true),
                added.map_or("–".into(), |d| format!("{d:+.0}")),
                call.goal_ns
                    .map_or("–".into(), |g| format!("≤ {g:.0} added")),
                match (call.goal_ns, added) {
                    (Some(g), Some(d)) if d <= g => "yes",
                    (Some(_), _) => "**no**",
                    (None, _) => "–",
                }
            )?;
        }
        let work: Vec<String> = c
            .rounds
            .iter()
            .filter_map(|r| r.agent.as_ref())
            .map(|a| {
                format!(
                    "{:.1} ms/MiB ({:.2} s CPU for {}; receiver {:.2} s; standby matched {})",
                    a.cpu_ms_per_mib(),
                    a.cpu_s,
                    bytes(a.changed_bytes as f64),
                    a.receiver_cpu_s,
                    a.converged_s
                        .map_or("not within the limit".into(), |s| format!(
                            "{} after the last write",
                            secs(s)
                        ))
                )
            })
            .collect();
        writeln!(
            md,
            "\nAgent CPU per changed MiB over the watched writes until the standby's copy matched: \
             median {} ms/MiB. Each round: {}.\n",
            c.agent_cpu_ms_per_mib()
                .map_or("–".into(), |x| format!("{x:.1}")),
            work.join("; ")
        )?;
    }
    for note in &c.notes {
        writeln!(md, "Note: {note}.\n")?;
    }
    if let Some(e) = &c.bpf_error {
        writeln!(
            md,
            "BPF program run times: failed: `{}`\n",
            e.replace('`', "'")
        )?;
    } else if !c.bpf_programs.is_empty() {
        writeln!(
            md,
            "BPF programs of the agent during one more watched loop of {} `pwrite`s with \
             `kernel.bpf_stats_enabled=1` ({} ns per `pwrite` then; every process's syscalls run \
             them meanwhile):\n",
            c.bpf_pass_pwrites,
            ns(c.bpf_pass_pwrite_ns)
        )?;
        md.push_str(
            "| program | id | tag | runs | ns per run | total |\n|---|---|---|---|---|---|\n",
        );
        for p in c.bpf_programs.iter().filter(|p| p.run_cnt > 0) {
            writeln!(
                md,
                "| {} | {} | `{}` | {} | {} | {} |",
                p.name.as_deref().unwrap_or("(no name)"),
                p.id,
                p.tag,
                p.run_cnt,
                ns(p.ns_per_run()),
                secs(p.run_time_ns as f64 / 1e9)
            )?;
        }
        let idle: Vec<String> = c
            .bpf_programs
            .iter()
            .filter(|p| p.run_cnt == 0)
            .map(|p| format!("`{}`", p.name.as_deref().unwrap_or(&p.tag)))
            .collect();
        if !idle.is_empty() {
            writeln!(md, "\nDid not run: {}.", idle.join(", "))?;
        }
        writeln!(
            md,
            "\nThe kernel keeps 15 characters of a program's name. *ns per run* is over every run, \
             whichever process's syscall or page fault triggered it.\n"
        )?;
    }
    Ok(())
}

fn opt_secs(x: Option<f64>) -> String {
    x.map_or("–".into(), secs)
}

fn scale_section(md: &mut String, run: &ScaleRun) -> anyhow::Result<()> {
    writeln!(
        md,
        "### S7: {} files ({} dirs × up to {}, {} B each)\n",
        run.files,
        run.dirs,
        super::scale::FILES_PER_DIR,
        run.file_bytes
    )?;
    if let Some(e) = &run.error {
        writeln!(md, "failed: `{}`\n", e.replace('`', "'"))?;
    }
    writeln!(
        md,
        "ext4 `mkfs.ext4 {}`. Tree written on the master in {}; limit {:.0} s per step.\n",
        run.mkfs_options,
        secs(run.write_s),
        run.timeout_s
    )?;
    let none = SluiceScaleView::default();
    let s = run.sluice.as_ref().map_or(none, |s| SluiceScaleView {
        initial: match s.initial_sync_s {
            Some(t) => format!(
                "{} (identical: {})",
                secs(t),
                match s.identical {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "–",
                }
            ),
            None => format!(
                "**did not finish in {:.0} s**: {} of {} files on the standby, {} compared (agent log)",
                run.timeout_s,
                s.standby_files_reached.map_or("?".into(), |n| n.to_string()),
                run.files,
                s.files_compared_logged.map_or("?".into(), |n| n.to_string())
            ),
        },
        startup: format!(
            "tree listed after {} (capture attached after {}; {} entries)",
            opt_secs(s.listed_s),
            opt_secs(s.capture_s),
            s.entries.map_or("?".into(), |n| n.to_string())
        ),
        restart: match (s.initial_sync_s, s.restart_live_s) {
            (None, _) => "–".into(),
            (Some(_), Some(t)) => format!(
                "agent restarted: live after {} (walk {})",
                secs(t),
                opt_secs(s.restart_walk_s)
            ),
            (Some(_), None) => format!("agent restarted: not live in {:.0} s", run.timeout_s),
        },
        memory: format!(
            "VmHWM {} = {:.0} B/file ({:.0} B/file above its {} RSS at start){}",
            bytes(s.vm_hwm_bytes as f64),
            s.vm_hwm_bytes as f64 / run.files as f64,
            s.vm_hwm_bytes.saturating_sub(s.rss_start_bytes) as f64 / run.files as f64,
            bytes(s.rss_start_bytes as f64),
            s.restart_vm_hwm_bytes
                .map_or(String::new(), |b| format!("; after the restart {}", bytes(b as f64)))
        ),
        cpu: format!("{:.2} / {:.2} s", s.master_cpu_s, s.standby_cpu_s),
    });
    let r = run.rsync.as_ref();
    let rsync_time = |t: Option<f64>, cpu: f64| match (r, t) {
        (None, _) => "–".into(),
        (Some(_), Some(t)) => format!("{} ({cpu:.2} s CPU, both ends)", secs(t)),
        (Some(_), None) => format!("did not finish in {:.0} s", run.timeout_s),
    };
    md.push_str("| | sluice | rsync |\n|---|---|---|\n");
    writeln!(
        md,
        "| copy to an empty standby | {} | {} |",
        s.initial,
        rsync_time(r.and_then(|r| r.copy_s), r.map_or(0.0, |r| r.copy_cpu_s))
    )?;
    writeln!(md, "| start-up (first start) | {} | – |", s.startup)?;
    writeln!(
        md,
        "| nothing changed | {} | {} |",
        s.restart,
        rsync_time(r.and_then(|r| r.noop_s), r.map_or(0.0, |r| r.noop_cpu_s))
    )?;
    writeln!(md, "| agent memory | {} | – |", s.memory)?;
    writeln!(
        md,
        "| CPU master / standby, initial sync | {} | – |\n",
        s.cpu
    )?;
    if let Some(sl) = &run.sluice {
        if !sl.metrics_at_end.is_empty() {
            writeln!(
                md,
                "Agent metrics at the end of the initial sync{}: {}.\n",
                if sl.initial_sync_s.is_none() {
                    " (at the limit)"
                } else {
                    ""
                },
                sl.metrics_at_end
                    .iter()
                    .map(|(k, v)| format!("`{k}` {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
        }
        if let Some(e) = &sl.error {
            writeln!(md, "sluice failed: `{}`\n", e.replace('`', "'"))?;
        }
    }
    if let Some(e) = r.and_then(|r| r.error.as_ref()) {
        writeln!(md, "rsync failed: `{}`\n", e.replace('`', "'"))?;
    }
    Ok(())
}

#[derive(Default)]
struct SluiceScaleView {
    initial: String,
    startup: String,
    restart: String,
    memory: String,
    cpu: String,
}

/// S7's goals: initial sync no slower than rsync's copy, at most 100 bytes of
/// agent memory per file, start-up no slower than rsync's no-change scan.
fn scale_targets(line: &mut impl FnMut(&str, String, Option<bool>), run: &ScaleRun) {
    let Some(s) = run.sluice.as_ref().filter(|s| s.error.is_none()) else {
        return;
    };
    let r = run.rsync.as_ref().filter(|r| r.error.is_none());
    let n = run.files;
    let copy = r.and_then(|r| r.copy_s);
    line(
        &format!("S7 {n} files: sluice initial sync ≤ rsync copy"),
        format!(
            "{} vs {}",
            s.initial_sync_s
                .map_or_else(|| format!("did not finish in {:.0} s", run.timeout_s), secs),
            r.map_or("rsync not run".into(), |_| opt_secs(copy))
        ),
        match (s.initial_sync_s, copy, r) {
            (_, _, None) => None,
            (Some(a), Some(b), _) => Some(a <= b && s.identical == Some(true)),
            (None, _, _) => Some(false),
            (Some(_), None, _) => Some(true),
        },
    );
    let per_file = s.vm_hwm_bytes as f64 / n as f64;
    line(
        &format!("S7 {n} files: agent peak memory ≤ 100 B/file"),
        format!(
            "{per_file:.0} B/file (VmHWM {}; {:.0} B/file above its RSS at start){}",
            bytes(s.vm_hwm_bytes as f64),
            s.vm_hwm_bytes.saturating_sub(s.rss_start_bytes) as f64 / n as f64,
            if s.initial_sync_s.is_none() {
                ", at the limit"
            } else {
                ""
            }
        ),
        (s.vm_hwm_bytes > 0).then_some(per_file <= 100.0),
    );
    let noop = r.and_then(|r| r.noop_s);
    line(
        &format!("S7 {n} files: start-up ≤ rsync no-change scan"),
        format!(
            "tree listed after {} vs {} (restart until live: {})",
            opt_secs(s.listed_s),
            r.map_or("rsync not run".into(), |_| opt_secs(noop)),
            opt_secs(s.restart_live_s)
        ),
        match (s.listed_s, noop, r) {
            (_, _, None) => None,
            (Some(a), Some(b), _) => Some(a <= b),
            (None, _, _) => Some(false),
            (Some(_), None, _) => None,
        },
    );
}

/// `b ÷ a` as "N×" (more standbys over one), "–" when either is missing.
fn times(b: Option<f64>, a: Option<f64>) -> String {
    match (b, a) {
        (Some(b), Some(a)) if a > 0.0 => format!("{:.2}×", b / a),
        _ => "–".into(),
    }
}

fn fanout_phase(run: &FanoutRun, phase: usize) -> Option<&FanoutPhase> {
    if phase == 0 {
        run.initial.as_ref()
    } else {
        run.writes.as_ref()
    }
}

const FANOUT_PHASES: [&str; 2] = ["initial sync", "random writes"];

/// Figures of one configuration's phase, only if every standby matched.
fn fanout_ok(f: &Fanout, kind: Kind, standbys: usize, phase: usize) -> Option<&FanoutPhase> {
    f.run(kind, standbys)
        .and_then(|r| fanout_phase(r, phase))
        .filter(|p| p.all_converged_s().is_some())
}

fn fanout_section(md: &mut String, f: &Fanout) -> anyhow::Result<()> {
    writeln!(
        md,
        "### S8: fan-out, one master to 1 and to {STANDBYS} standbys\n\n\
         {} in {} files written on the master (page cache dropped), synced to empty standbys (*initial sync*); \
         then {} random 4 KiB writes into each of the {} files, {} in all (*random writes*). Each standby on a \
         loop-mounted ext4 of its own; sluice with one agent and a receiver per standby, lsyncd with a \
         `sync{{}}` per target; limit {:.0} s per phase. Figures are for the master side unless said; each \
         phase counts from its start until every standby matched and was compared in full.\n",
        bytes(f.tree_bytes as f64),
        f.files,
        f.writes_per_file,
        f.written_files,
        bytes((f.written_files * f.writes_per_file) as f64 * 4096.0),
        f.timeout_s
    )?;
    writeln!(
        md,
        "**{STANDBYS} standbys ÷ 1** (the goal for sluice: files read and hashed once whatever the number of \
         standbys, so well under {STANDBYS}×):\n"
    )?;
    md.push_str(
        "| phase | replicator | master CPU, 1 → 3 | × | read by syscalls, 1 → 3 | × | agent `sluice_bytes_read` × | from the device × | every standby matched, 1 → 3 |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for (phase, name) in FANOUT_PHASES.iter().enumerate() {
        for kind in [Kind::Sluice, Kind::Lsyncd] {
            if f.run(kind, 1).is_none() && f.run(kind, STANDBYS).is_none() {
                continue;
            }
            let one = fanout_ok(f, kind, 1, phase);
            let many = fanout_ok(f, kind, STANDBYS, phase);
            let pair = |get: &dyn Fn(&FanoutPhase) -> String| {
                format!(
                    "{} → {}",
                    one.map_or("–".into(), get),
                    many.map_or("–".into(), get)
                )
            };
            let val = |p: Option<&FanoutPhase>, get: fn(&FanoutPhase) -> Option<f64>| p.and_then(get);
            writeln!(
                md,
                "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
                kind.name(),
                pair(&|p| format!("{:.2} s", p.master_cpu_s)),
                times(val(many, |p| Some(p.master_cpu_s)), val(one, |p| Some(p.master_cpu_s))),
                pair(&|p| bytes(p.read_syscall_bytes as f64)),
                times(
                    val(many, |p| Some(p.read_syscall_bytes as f64)),
                    val(one, |p| Some(p.read_syscall_bytes as f64))
                ),
                times(val(many, |p| p.agent_bytes_read), val(one, |p| p.agent_bytes_read)),
                times(
                    val(many, |p| Some(p.read_device_bytes as f64)),
                    val(one, |p| Some(p.read_device_bytes as f64))
                ),
                pair(&|p| opt_secs(p.all_converged_s())),
            )?;
        }
    }
    md.push('\n');
    for (phase, name) in FANOUT_PHASES.iter().enumerate() {
        writeln!(md, "{}:\n", {
            let mut n = name.to_string();
            n[..1].make_ascii_uppercase();
            n
        })?;
        md.push_str(
            "| replicator | standbys | every standby matched (each) | master CPU | read by syscalls | from the device | agent `sluice_bytes_read` | sent per standby | loopback, all | standby CPU, all | identical |\n\
             |---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for run in &f.runs {
            let Some(p) = fanout_phase(run, phase) else {
                let why = match &run.error {
                    Some(_) => "failed (see below)",
                    None if phase == 1 => "not run: the initial sync did not finish",
                    None => "–",
                };
                writeln!(
                    md,
                    "| {} | {} | {why} | | | | | | | | |",
                    run.replicator.name(),
                    run.standbys
                )?;
                continue;
            };
            let each = p
                .converged_s
                .iter()
                .map(|t| t.map_or(format!("> {:.0} s", f.timeout_s), secs))
                .collect::<Vec<_>>()
                .join(", ");
            let sent = if p.standby_wire_bytes.is_empty() {
                format!(
                    "{} (loopback ÷ {})",
                    bytes(p.lo_bytes as f64 / run.standbys as f64),
                    run.standbys
                )
            } else {
                p.standby_wire_bytes
                    .iter()
                    .map(|b| bytes(*b))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let identical = if p.identical.iter().all(|x| *x == Some(true)) {
                "yes".to_owned()
            } else {
                p.identical
                    .iter()
                    .map(|x| match x {
                        Some(true) => "yes",
                        Some(false) => "**no**",
                        None => "–",
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            writeln!(
                md,
                "| {} | {} | {} ({each}) | {:.2} s | {} | {} | {} | {sent} | {} | {:.2} s | {identical} |",
                run.replicator.name(),
                run.standbys,
                p.all_converged_s()
                    .map_or(format!("**not within {:.0} s**", f.timeout_s), secs),
                p.master_cpu_s,
                bytes(p.read_syscall_bytes as f64),
                bytes(p.read_device_bytes as f64),
                p.agent_bytes_read.map_or("–".into(), bytes),
                bytes(p.lo_bytes as f64),
                p.standby_cpu_s,
            )?;
        }
        md.push('\n');
    }
    let verified: f64 = f
        .runs
        .iter()
        .flat_map(|r| [r.initial.as_ref(), r.writes.as_ref()])
        .flatten()
        .filter_map(|p| p.agent_verify_bytes)
        .sum();
    writeln!(
        md,
        "Data: {} in the initial sync, {} written in the second phase. *Read by syscalls* counts page-cache \
         hits (a file read once per standby counts once per standby) and what the processes read at start-up \
         (in the initial sync; the difference from sluice's `sluice_bytes_read`), *from the device* only what \
         the page cache did not hold (cold at the start of the initial sync, warm after the writes). \
         Background verifier reads during the runs: {}.\n",
        bytes(f.tree_bytes as f64),
        bytes((f.written_files * f.writes_per_file) as f64 * 4096.0),
        bytes(verified)
    )?;
    for run in f.runs.iter().filter(|r| r.error.is_some()) {
        writeln!(
            md,
            "{} to {} standbys failed: `{}`\n",
            run.replicator.name(),
            run.standbys,
            run.error.as_deref().unwrap_or_default().replace('`', "'")
        )?;
    }
    Ok(())
}

/// S8's goals for sluice: with three standbys, bytes read within 1.1× and master
/// CPU under 2× of one standby's (files read and hashed once: "well under 3×").
fn fanout_targets(line: &mut impl FnMut(&str, String, Option<bool>), f: &Fanout) {
    if f.run(Kind::Sluice, 1).is_none() || f.run(Kind::Sluice, STANDBYS).is_none() {
        return;
    }
    for (phase, name) in FANOUT_PHASES.iter().enumerate() {
        let one = fanout_ok(f, Kind::Sluice, 1, phase);
        let many = fanout_ok(f, Kind::Sluice, STANDBYS, phase);
        let lsyncd = |get: fn(&FanoutPhase) -> f64| {
            match (
                fanout_ok(f, Kind::Lsyncd, 1, phase),
                fanout_ok(f, Kind::Lsyncd, STANDBYS, phase),
            ) {
                (Some(a), Some(b)) => format!("; lsyncd {}", times(Some(get(b)), Some(get(a)))),
                _ => String::new(),
            }
        };
        let ratio = |get: fn(&FanoutPhase) -> f64| match (one, many) {
            (Some(a), Some(b)) if get(a) > 0.0 => Some(get(b) / get(a)),
            _ => None,
        };
        let read = ratio(|p| p.read_syscall_bytes as f64);
        line(
            &format!("S8 {name}: sluice bytes read, {STANDBYS} standbys ≤ 1.1× one"),
            match (one, many, read) {
                (Some(a), Some(b), Some(x)) => format!(
                    "{x:.2}× ({} vs {} by read syscalls; agent metric {}){}",
                    bytes(b.read_syscall_bytes as f64),
                    bytes(a.read_syscall_bytes as f64),
                    times(b.agent_bytes_read, a.agent_bytes_read),
                    lsyncd(|p| p.read_syscall_bytes as f64)
                ),
                _ => "not measured".into(),
            },
            Some(read.is_some_and(|x| x <= 1.1)),
        );
        let cpu = ratio(|p| p.master_cpu_s);
        line(
            &format!("S8 {name}: sluice master CPU, {STANDBYS} standbys < 2× one"),
            match (one, many, cpu) {
                (Some(a), Some(b), Some(x)) => format!(
                    "{x:.2}× ({:.2} s vs {:.2} s){}",
                    b.master_cpu_s,
                    a.master_cpu_s,
                    lsyncd(|p| p.master_cpu_s)
                ),
                _ => "not measured".into(),
            },
            Some(cpu.is_some_and(|x| x < 2.0)),
        );
    }
}
