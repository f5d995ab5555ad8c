//! A real Prometheus server (Debian's `prometheus` package) scraping the daemons
//! with given alerting rules, and the parts of its HTTP API a test asks: the
//! alerts, instant queries and readiness; and the metric names a rules file or a
//! dashboard mentions, to hold against what the daemons export.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use tempfile::TempDir;

use crate::daemons::free_tcp_addr;
use crate::metrics::http_get;
use crate::util::wait_until;

/// One scrape job: Prometheus's `job` label and the `host:port` it scrapes.
pub struct ScrapeJob<'a> {
    pub name: &'a str,
    pub target: SocketAddr,
}

/// An alert as `GET /api/v1/alerts` lists it (pending or firing).
#[derive(Clone, Debug, Deserialize)]
pub struct Alert {
    pub labels: BTreeMap<String, String>,
    pub state: String,
}

impl Alert {
    pub fn name(&self) -> &str {
        self.labels.get("alertname").map_or("", String::as_str)
    }

    pub fn is_firing(&self) -> bool {
        self.state == "firing"
    }
}

/// A `prometheus` process with its config, rules and database in a temporary
/// directory; dropping it kills the process.
pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    // Declared last: the process is killed before its files go away.
    dir: TempDir,
}

impl Prometheus {
    /// Starts `prometheus` scraping `jobs` and evaluating `rules` (the text of a
    /// rules file) every `interval`, and waits until it is ready.
    pub fn start(
        jobs: &[ScrapeJob],
        rules: &str,
        interval: Duration,
    ) -> anyhow::Result<Prometheus> {
        let dir = tempfile::Builder::new()
            .prefix("sluice-prometheus-")
            .tempdir()
            .context("cannot create Prometheus's temporary directory")?;
        let rules_path = dir.path().join("rules.yml");
        fs::write(&rules_path, rules)
            .with_context(|| format!("cannot write {}", rules_path.display()))?;
        let config_path = dir.path().join("prometheus.yml");
        fs::write(&config_path, config(jobs, &rules_path, interval))
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        let addr = free_tcp_addr()?;
        let log = dir.path().join("prometheus.log");
        let log_file =
            File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("cannot start `prometheus` (Debian's prometheus package; `cargo xtask setup` installs it)")?;
        let mut prometheus = Prometheus {
            child,
            addr,
            log,
            dir,
        };
        wait_until("Prometheus to be ready", Duration::from_secs(30), || {
            if let Some(status) = prometheus.child.try_wait()? {
                bail!("prometheus exited with {status}");
            }
            http_get(addr, "/-/ready").map(|_| true)
        })
        .with_context(|| format!("prometheus log:\n{}", prometheus.log_tail(30)))?;
        Ok(prometheus)
    }

    /// The alerts pending or firing now.
    pub fn alerts(&self) -> anyhow::Result<Vec<Alert>> {
        #[derive(Deserialize)]
        struct Alerts {
            alerts: Vec<Alert>,
        }
        let body = http_get(self.addr, "/api/v1/alerts")?;
        Ok(api_data::<Alerts>(&body)?.alerts)
    }

    /// Evaluates `promql` now and returns the label sets of the instant vector it
    /// gives (an error if it is not a vector).
    pub fn query(&self, promql: &str) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Vector {
            result_type: String,
            result: Vec<Sample>,
        }
        #[derive(Deserialize)]
        struct Sample {
            metric: BTreeMap<String, String>,
        }
        let body = http_get(
            self.addr,
            &format!("/api/v1/query?query={}", percent_encode(promql)),
        )
        .with_context(|| format!("querying `{promql}`"))?;
        let vector: Vector = api_data(&body).with_context(|| format!("querying `{promql}`"))?;
        if vector.result_type != "vector" {
            bail!(
                "`{promql}` gave a {}, not an instant vector",
                vector.result_type
            );
        }
        Ok(vector
            .result
            .into_iter()
            .map(|sample| sample.metric)
            .collect())
    }

    /// The temporary directory with the config, the rules, the database and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last `lines` lines of Prometheus's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `data` of a `{"status": "success", "data": ...}` API answer.
fn api_data<T: for<'de> Deserialize<'de>>(body: &str) -> anyhow::Result<T> {
    #[derive(Deserialize)]
    struct Answer<T> {
        status: String,
        data: Option<T>,
        error: Option<String>,
    }
    let answer: Answer<T> =
        serde_json::from_str(body).with_context(|| format!("unexpected API answer: {body}"))?;
    match answer.data {
        Some(data) if answer.status == "success" => Ok(data),
        _ => bail!(
            "the API answered {}: {}",
            answer.status,
            answer.error.unwrap_or_default()
        ),
    }
}

fn config(jobs: &[ScrapeJob], rules: &Path, interval: Duration) -> String {
    let interval = format!("{}ms", interval.as_millis());
    let mut config = format!(
        "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n  evaluation_interval: {interval}\n\
         rule_files:\n  - {}\nscrape_configs:\n",
        rules.display()
    );
    for job in jobs {
        config.push_str(&format!(
            "  - job_name: {}\n    static_configs:\n      - targets: ['{}']\n",
            job.name, job.target
        ));
    }
    config
}

/// Every `sluice_...` metric name in `text` (a rules file, a dashboard): in PromQL
/// and in prose alike; recording rules' `sluice:...` names are not the daemons'.
pub fn metric_names(text: &str) -> BTreeSet<String> {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    for (start, _) in text.match_indices("sluice_") {
        if text[..start].chars().next_back().is_some_and(is_name_char) {
            continue;
        }
        let rest = &text[start..];
        let end = rest.find(|c: char| !is_name_char(c)).unwrap_or(rest.len());
        // A colon ending the name is prose (`sluice_fenced: 1 while ...`).
        names.insert(rest[..end].trim_end_matches(':').to_owned());
    }
    names
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            percent_encode(r#"rate(x{a=~"b.*"}[5s])"#),
            "rate%28x%7Ba%3D~%22b.%2A%22%7D%5B5s%5D%29"
        );
    }

    #[test]
    fn metric_names_are_found_in_promql_and_prose_but_not_in_other_names() {
        let text = r#"rate(sluice_ops_total{instance=~"$agent"}[5m]) > scalar(sluice:lag_seconds:alert_threshold), see sluice_fenced. my_sluice_x; sluice_connected: 1 when"#;
        let names: Vec<String> = metric_names(text).into_iter().collect();
        assert_eq!(
            names,
            ["sluice_connected", "sluice_fenced", "sluice_ops_total"]
        );
    }
}
