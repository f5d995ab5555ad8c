//! Reading the daemons' Prometheus metrics: a parser for the text exposition format
//! and [`scrape`] of `/metrics` over [`http_get`], a dependency-free HTTP GET.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, bail};

/// One scrape: series (`name` or `name{labels}`, exactly as exposed) to value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    series: BTreeMap<String, f64>,
}

impl Metrics {
    /// Parses Prometheus / OpenMetrics text. Comment lines (`# HELP`, `# TYPE`,
    /// `# EOF`) are skipped, as are lines that do not parse, since a test should
    /// fail on the value it checks, not on an unrelated exotic line.
    pub fn parse(text: &str) -> Metrics {
        let series = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter_map(parse_sample)
            .collect();
        Metrics { series }
    }

    /// The value of a series, e.g. `sluice_lag_bytes` or `x_total{kind="write"}`,
    /// or 0.0 when it is absent (prometheus-client omits counters never touched).
    pub fn get(&self, series: &str) -> f64 {
        self.try_get(series).unwrap_or(0.0)
    }

    /// The value of a series, or `None` when it is absent.
    pub fn try_get(&self, series: &str) -> Option<f64> {
        self.series.get(series).copied()
    }

    /// The sum over all label sets of the metric `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.series
            .iter()
            .filter(|(series, _)| metric_name(series) == name)
            .map(|(_, value)| value)
            .sum()
    }

    /// Every series with its value, sorted by series.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.series
            .iter()
            .map(|(series, value)| (series.as_str(), *value))
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

fn metric_name(series: &str) -> &str {
    series.split('{').next().unwrap_or(series)
}

/// `name{labels} value [timestamp]` → (`name{labels}`, value).
fn parse_sample(line: &str) -> Option<(String, f64)> {
    let series_end = match line.find('{') {
        Some(open) if line[..open].find(char::is_whitespace).is_none() => {
            open + closing_brace(&line[open..])? + 1
        }
        _ => line.find(char::is_whitespace)?,
    };
    let (series, rest) = line.split_at(series_end);
    let value = rest.split_whitespace().next()?;
    Some((series.to_owned(), value.parse().ok()?))
}

/// Offset of the `}` closing a label set, skipping braces inside quoted values.
fn closing_brace(labels: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in labels.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return Some(i),
            _ => {}
        }
    }
    None
}

/// GETs `http://addr/metrics` and parses it.
pub fn scrape(addr: SocketAddr) -> anyhow::Result<Metrics> {
    Ok(Metrics::parse(&http_get(addr, "/metrics")?))
}

/// GETs `http://addr{path}` and returns the body of a 200 answer. HTTP/1.0 keeps
/// the response simple (no keep-alive; the body ends when the connection closes),
/// but a chunked body is decoded anyway.
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("cannot send the request to {addr}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .with_context(|| format!("cannot read the response from {addr}"))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("malformed HTTP response from {addr}"))?;
    let status_line = head.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) != Some("200") {
        bail!("GET http://{addr}{path} answered `{status_line}`: {body}");
    }
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    if chunked {
        decode_chunked(body)
    } else {
        Ok(body.to_owned())
    }
}

fn decode_chunked(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size_line, rest) = body.split_once("\r\n").context("truncated chunked body")?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .with_context(|| format!("bad chunk size `{size_line}`"))?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).context("truncated chunk")?;
        out.push_str(chunk);
        body = rest[size..]
            .strip_prefix("\r\n")
            .context("chunk not followed by CRLF")?;
    }
}
