//! The alerting rules and the Grafana dashboard of `deploy/` against the real
//! daemons: every metric they name is exported, every dashboard query finds
//! series, and a real Prometheus fires the disconnection, lag and target-down
//! alerts while the standby's link is cut, and resolves them once it is back.

use crate::common::tail;
use sluice_tests::daemons::workspace_root;
use sluice_tests::prometheus::{Prometheus, ScrapeJob, metric_names};
use sluice_tests::{FsKind, LoopFs, Metrics, Pair, PairOptions, random_bytes, wait_until};
use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const RULES: &str = "deploy/prometheus/sluice-rules.yml";
const DASHBOARD: &str = "deploy/grafana/sluice.json";
/// The recording rule holding the lag threshold in the rules file.
const LAG_THRESHOLD_RULE: &str = "record: sluice:lag_seconds:alert_threshold";
/// What the test's copy of the rules waits for instead of minutes, and its lag
/// threshold in seconds, so that an outage of seconds raises the alerts.
const SHORT_FOR: &str = "2s";
const SHORT_LAG_THRESHOLD: u32 = 2;
/// Stands in for Grafana's `$__rate_interval` (four scrapes of a second).
const RATE_INTERVAL: &str = "5s";

/// The alerts a cut link raises, as (alertname, job).
const OUTAGE_ALERTS: [(&str, &str); 3] = [
    ("SluiceAgentDisconnected", "sluice-agent"),
    ("SluiceLagHigh", "sluice-agent"),
    // Prometheus runs on the master's side of the link.
    ("SluiceTargetDown", "sluice-receiver"),
];

type FiringAlert = (String, String);

fn read(path: &str) -> String {
    let path = workspace_root().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The rules with every non-zero `for:` shortened and the lag threshold lowered.
fn shortened_rules(rules: &str) -> String {
    let (mut shortened_for, mut lowered_threshold) = (0, 0);
    let mut after_threshold_rule = false;
    let mut out = String::new();
    for line in rules.lines() {
        let indent = &line[..line.len() - line.trim_start().len()];
        let trimmed = line.trim();
        if trimmed.starts_with("for:") && trimmed != "for: 0m" {
            out.push_str(&format!("{indent}for: {SHORT_FOR}\n"));
            shortened_for += 1;
        } else if after_threshold_rule && trimmed.starts_with("expr:") {
            out.push_str(&format!("{indent}expr: vector({SHORT_LAG_THRESHOLD})\n"));
            lowered_threshold += 1;
        } else {
            out.push_str(line);
            out.push('\n');
        }
        after_threshold_rule = trimmed.trim_start_matches("- ") == LAG_THRESHOLD_RULE;
    }
    assert!(shortened_for >= 2, "{RULES} has no `for:` left to shorten");
    assert_eq!(
        lowered_threshold, 1,
        "{RULES} has no `{LAG_THRESHOLD_RULE}` followed by its `expr:`"
    );
    out
}

/// The metric names of a scrape (histograms as their `_bucket`, `_sum`, `_count`).
fn exported_names(metrics: &Metrics) -> impl Iterator<Item = String> + '_ {
    metrics
        .iter()
        .map(|(series, _)| series.split('{').next().unwrap_or(series).to_owned())
}

/// The PromQL of every dashboard panel, with its variables set to these daemons.
fn dashboard_queries(dashboard: &str, agent: SocketAddr, receiver: SocketAddr) -> Vec<String> {
    fn collect(panels: &serde_json::Value, out: &mut Vec<String>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                out.extend(target["expr"].as_str().map(str::to_owned));
            }
            collect(&panel["panels"], out);
        }
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(dashboard).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    collect(&dashboard["panels"], &mut queries);
    assert!(
        queries.len() >= 10,
        "the dashboard has {} queries",
        queries.len()
    );
    queries
        .into_iter()
        .map(|query| {
            let query = query
                .replace("$agent", &agent.to_string())
                .replace("$receiver", &receiver.to_string())
                .replace("$__rate_interval", RATE_INTERVAL);
            assert!(
                !query.contains('$'),
                "`{query}` uses a variable the test does not set"
            );
            query
        })
        .collect()
}

/// Appends 4 KiB to `path` every 20 ms until `stop`.
fn steady_appends(path: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        let mut seed = 1;
        while !stop.load(Ordering::Relaxed) {
            file.write_all(&random_bytes(4096, seed)).unwrap();
            seed += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

fn firing(prometheus: &Prometheus) -> anyhow::Result<BTreeSet<FiringAlert>> {
    Ok(prometheus
        .alerts()?
        .into_iter()
        .filter(|alert| alert.is_firing())
        .map(|alert| {
            (
                alert.name().to_owned(),
                alert.labels.get("job").cloned().unwrap_or_default(),
            )
        })
        .collect())
}

fn is_outage_alert(alert: &FiringAlert) -> bool {
    OUTAGE_ALERTS
        .iter()
        .any(|(name, job)| alert.0 == *name && alert.1 == *job)
}

fn outage_alerts_firing(now: &BTreeSet<FiringAlert>) -> usize {
    now.iter().filter(|alert| is_outage_alert(alert)).count()
}

#[test]
fn alerts_fire_while_the_standby_is_cut_off_and_resolve_once_it_is_back() {
    let master = LoopFs::new(FsKind::Ext4, 128).unwrap();
    let standby = LoopFs::new(FsKind::Ext4, 128).unwrap();
    let options = PairOptions {
        standby_netns: true,
        ..PairOptions::default()
    };
    let mut pair = Pair::start_with(master.path(), standby.path(), options).unwrap();
    let (rules, dashboard) = (read(RULES), read(DASHBOARD));

    let exported: BTreeSet<String> = [
        pair.agent_metrics().unwrap(),
        pair.receiver_metrics().unwrap(),
    ]
    .iter()
    .flat_map(exported_names)
    .collect();
    let named: BTreeSet<String> = metric_names(&rules)
        .union(&metric_names(&dashboard))
        .cloned()
        .collect();
    let unknown: Vec<&String> = named.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the rules or the dashboard name metrics neither daemon exports: {unknown:?}"
    );

    let (agent, receiver) = (pair.agent().metrics_addr(), pair.receiver().metrics_addr());
    let jobs = [
        ScrapeJob {
            name: "sluice-agent",
            target: agent,
        },
        ScrapeJob {
            name: "sluice-receiver",
            target: receiver,
        },
    ];
    let prometheus =
        Prometheus::start(&jobs, &shortened_rules(&rules), Duration::from_secs(1)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = steady_appends(master.path().join("appended.log"), stop.clone());

    let queries = dashboard_queries(&dashboard, agent, receiver);
    wait_until(
        "every dashboard query to find series",
        Duration::from_secs(30),
        || {
            for query in &queries {
                if prometheus.query(query)?.is_empty() {
                    anyhow::bail!("`{query}` finds no series");
                }
            }
            Ok(true)
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\n--- prometheus log ---\n{}", prometheus.log_tail(30)));

    // Replicating under writes for longer than any shortened `for:`: nothing fires.
    std::thread::sleep(Duration::from_secs(4));
    let quiet = firing(&prometheus).unwrap();
    assert!(
        quiet.is_empty(),
        "alerts fired while replicating: {quiet:?}"
    );

    let mut seen = BTreeSet::new();
    let report = |what: &str, e: anyhow::Error, seen: &BTreeSet<FiringAlert>| {
        format!(
            "{what}: {e:#}\nfiring at some point: {seen:?}\n--- agent log ---\n{}\n--- prometheus log ---\n{}",
            tail(&pair.agent_log()),
            prometheus.log_tail(20)
        )
    };
    pair.link().unwrap().cut().unwrap();
    let cut = Instant::now();
    let fired = wait_until(
        "the outage's alerts to fire",
        Duration::from_secs(60),
        || {
            let now = firing(&prometheus)?;
            seen.extend(now.iter().cloned());
            Ok(outage_alerts_firing(&now) == OUTAGE_ALERTS.len())
        },
    );
    if let Err(e) = fired {
        panic!("{}", report("the link is cut", e, &seen));
    }
    let fired_after = cut.elapsed();

    pair.link().unwrap().restore().unwrap();
    let restored = Instant::now();
    let resolved = wait_until(
        "the outage's alerts to resolve",
        Duration::from_secs(90),
        || {
            let now = firing(&prometheus)?;
            seen.extend(now.iter().cloned());
            Ok(outage_alerts_firing(&now) == 0)
        },
    );
    if let Err(e) = resolved {
        panic!("{}", report("the link is back", e, &seen));
    }
    let resolved_after = restored.elapsed();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    eprintln!(
        "alerts: {} fired {fired_after:.1?} after the link was cut (`for:` {SHORT_FOR}, lag threshold {SHORT_LAG_THRESHOLD} s) \
         and resolved {resolved_after:.1?} after it came back",
        OUTAGE_ALERTS
            .map(|(name, job)| format!("{name}{{job={job}}}"))
            .join(", ")
    );
    // A cut link is not lost events, a refusal, a split brain or a fencing.
    let unexpected: Vec<&FiringAlert> = seen
        .iter()
        .filter(|alert| !is_outage_alert(alert))
        .collect();
    assert!(
        unexpected.is_empty(),
        "alerts that a cut link must not raise fired: {unexpected:?}"
    );
}
