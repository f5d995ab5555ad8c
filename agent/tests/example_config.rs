//! The example configuration the package installs as
//! `/etc/sluice/agent.toml.example` loads with the agent's own loader, and
//! shows the defaults it claims to show.

use std::path::Path;

use sluice_agent::config::{CaptureConfig, Config, DurabilityConfig, FailoverConfig, VerifyConfig};

const EXAMPLE: &str = include_str!("../../deploy/config/agent.toml");
const EXAMPLE_ROOT: &str = r#"root = "/srv/data""#;

/// The example with its root pointed at a directory that exists here (the
/// loader refuses a root that is not a directory).
fn load_example(root: &Path) -> Config {
    assert!(EXAMPLE.contains(EXAMPLE_ROOT), "the example's root line changed; update this test");
    let text = EXAMPLE.replacen(EXAMPLE_ROOT, &format!("root = {:?}", root.display().to_string()), 1);
    Config::parse(&text, Path::new("deploy/config/agent.toml")).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn example_loads() {
    let root = tempfile::tempdir().unwrap();
    let config = load_example(root.path());
    assert_eq!(config.root, root.path());
    assert_eq!(config.state_dir, Path::new("/var/lib/sluice/agent-state"));
    assert_eq!(config.tls.identity, Path::new("/var/lib/sluice/agent"));
    assert!(config.metrics.listen.is_some());
    assert!(config.hooks.on_fenced.is_none() && config.hooks.on_demote.is_none());
}

#[test]
fn example_shows_the_defaults() {
    let root = tempfile::tempdir().unwrap();
    let config = load_example(root.path());
    let capture = CaptureConfig::default();
    assert_eq!(config.capture.ring_buffer_bytes, capture.ring_buffer_bytes);
    assert_eq!(config.capture.coalesce_ms, capture.coalesce_ms);
    assert_eq!(config.capture.cross_check, capture.cross_check);
    assert_eq!(config.capture.compat_syscalls, capture.compat_syscalls);
    assert!(!config.replication.devices);
    let durability = DurabilityConfig::default();
    assert_eq!(config.durability.backlog_bytes, durability.backlog_bytes);
    assert_eq!(config.durability.backlog_ops, durability.backlog_ops);
    assert_eq!(config.durability.journal_interval_ms, durability.journal_interval_ms);
    assert_eq!(config.verify.bytes_per_second, VerifyConfig::default().bytes_per_second);
    assert_eq!(config.failover.when_fenced, FailoverConfig::default().when_fenced);
}

#[test]
fn the_examples_several_standbys_load_once_uncommented() {
    let root = tempfile::tempdir().unwrap();
    let zeros = "0".repeat(64);
    let mut text = String::new();
    for line in EXAMPLE.lines() {
        if line.starts_with("receiver =") || line.starts_with("peer_fingerprint =") {
            continue;
        }
        let line = match line.strip_prefix("# ") {
            Some(rest) if rest.starts_with("[[standby]]") || rest.starts_with("name =") || rest.starts_with("address =") => rest.to_owned(),
            Some(rest) if rest.starts_with("peer_fingerprint =") => format!("peer_fingerprint = \"{zeros}\""),
            _ => line.to_owned(),
        };
        text += &line;
        text += "\n";
    }
    let text = text.replacen(EXAMPLE_ROOT, &format!("root = {:?}", root.path().display().to_string()), 1);
    // `[[standby]]` entries follow `[tls]` in the example: they must not be read as part of it.
    let config = Config::parse(&text, Path::new("deploy/config/agent.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let names: Vec<String> = config.standbys().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["lan", "offsite"]);
}
