//! The monitoring files of `deploy/`: promtool checks the Prometheus alerting rules
//! and runs their unit tests, the Grafana dashboard must be JSON, and both may name
//! only metrics the daemons register. (The end-to-end test `alerts` checks the same
//! names against the daemons' live `/metrics` and runs the rules in a real
//! Prometheus.)

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{Context, bail};

use sluice_tests::prometheus::metric_names;

use crate::cargo::workspace_root;

const RULES: &str = "deploy/prometheus/sluice-rules.yml";
const RULES_TESTS: &str = "deploy/prometheus/sluice-rules-test.yml";
const DASHBOARD: &str = "deploy/grafana/sluice.json";
/// Where the daemons register their metrics.
const METRICS_SOURCES: [&str; 2] = ["agent/src/metrics.rs", "receiver/src/metrics.rs"];

/// Runs every check; the error carries promtool's output or what is wrong.
pub fn check() -> anyhow::Result<()> {
    promtool(&["check", "rules", RULES])?;
    promtool(&["test", "rules", RULES_TESTS])?;

    let dashboard = read(DASHBOARD)?;
    serde_json::from_str::<serde_json::Value>(&dashboard)
        .with_context(|| format!("{DASHBOARD} is not JSON"))?;

    let mut exported = BTreeSet::new();
    for source in METRICS_SOURCES {
        exported.extend(
            exported_names(&read(source)?)
                .with_context(|| format!("reading the metrics {source} registers"))?,
        );
    }
    for file in [RULES, DASHBOARD] {
        let unknown: Vec<String> = metric_names(&read(file)?)
            .difference(&exported)
            .cloned()
            .collect();
        if !unknown.is_empty() {
            bail!(
                "{file} names metrics neither daemon registers: {}",
                unknown.join(", ")
            );
        }
    }
    println!("alert rules and dashboard: every metric they name is registered, {DASHBOARD} parses");
    Ok(())
}

fn read(path: &str) -> anyhow::Result<String> {
    let path = workspace_root().join(path);
    std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
}

/// Runs `promtool ARGS` in the workspace root; fails with its output unless it succeeds.
fn promtool(args: &[&str]) -> anyhow::Result<()> {
    println!("$ promtool {}", args.join(" "));
    let output = Command::new("promtool")
        .args(args)
        .current_dir(workspace_root())
        .output()
        .context(
            "cannot run promtool (Debian's prometheus package; `cargo xtask setup` installs it)",
        )?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!(
            "`promtool {}` failed ({}):\n{}",
            args.join(" "),
            output.status,
            text.trim_end()
        );
    }
    print!("{text}");
    Ok(())
}

/// The names under which `source`'s `register("sluice_...", help, handle)` calls
/// are exposed, by the type of each handle's field: prometheus-client appends
/// `_total` to counters and exposes a histogram as `_bucket`, `_sum` and `_count`.
fn exported_names(source: &str) -> anyhow::Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for call in source.split(".register(").skip(1) {
        let name = call
            .split('"')
            .nth(1)
            .context("a register call without a name")?;
        let handle = call
            .split(".clone()")
            .next()
            .and_then(|before| before.rsplit('.').next())
            .with_context(|| format!("cannot find the handle registered as {name}"))?;
        let field = format!("pub {}: ", handle.trim());
        let field_type = source
            .split_once(&field)
            .map(|(_, rest)| rest.trim_start())
            .with_context(|| format!("no field `{}` for {name}", handle.trim()))?;
        // A family exposes its series under the name its metric type gives.
        let field_type = match field_type.strip_prefix("Family<") {
            Some(family) => family.split_once(',').map_or(family, |(_, metric)| metric).trim_start(),
            None => field_type,
        };
        if field_type.starts_with("Counter") {
            names.insert(format!("{name}_total"));
        } else if field_type.starts_with("Histogram") {
            names.extend(["_bucket", "_sum", "_count"].map(|suffix| format!("{name}{suffix}")));
        } else {
            names.insert(name.to_owned());
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exported_names_follow_the_type_of_each_handle() {
        let source = r#"
            pub struct Metrics {
                pub lag: Gauge<f64, AtomicU64>,
                pub ops: Counter,
                pub latency: Histogram,
                pub sent: Family<StandbyLabel, Counter>,
            }
            fn register(&self) {
                r.register("sluice_standby_sent", "Sent", s.sent.clone());
                r.register("sluice_lag_seconds", "Age. Of the oldest", self.lag.clone());
                registry.register(
                    "sluice_ops",
                    "Operations",
                    metrics.ops.clone(),
                );
                r.register("sluice_latency_seconds", "Latency", self.latency.clone());
            }
        "#;
        let names: Vec<String> = exported_names(source).unwrap().into_iter().collect();
        assert_eq!(
            names,
            [
                "sluice_lag_seconds",
                "sluice_latency_seconds_bucket",
                "sluice_latency_seconds_count",
                "sluice_latency_seconds_sum",
                "sluice_ops_total",
                "sluice_standby_sent_total",
            ]
        );
    }
}
