//! The example configuration the package installs as
//! `/etc/sluice/receiver.toml.example` loads with the receiver's own loader,
//! and shows the defaults it claims to show.

use std::path::Path;

use sluice_receiver::config::{Config, FailoverConfig, RollbackConfig, SafetyConfig};

const EXAMPLE: &str = include_str!("../../deploy/config/receiver.toml");
const EXAMPLE_ROOT: &str = r#"root = "/srv/standby""#;

/// The example with its root pointed at a directory that exists here (the
/// loader refuses a root that is not a directory).
fn load_example(root: &Path) -> Config {
    assert!(EXAMPLE.contains(EXAMPLE_ROOT), "the example's root line changed; update this test");
    let text = EXAMPLE.replacen(EXAMPLE_ROOT, &format!("root = {:?}", root.display().to_string()), 1);
    Config::parse(&text, Path::new("deploy/config/receiver.toml")).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn example_loads() {
    let root = tempfile::tempdir().unwrap();
    let config = load_example(root.path());
    assert_eq!(config.root, root.path());
    assert_eq!(config.tls.identity, Path::new("/var/lib/sluice/receiver"));
    assert!(config.metrics.listen.is_some());
    assert!(config.hooks.on_promote.is_none() && config.hooks.on_demote.is_none());
}

#[test]
fn example_shows_the_defaults() {
    let root = tempfile::tempdir().unwrap();
    let config = load_example(root.path());
    assert!(!config.replication.devices);
    let safety = SafetyConfig::default();
    assert_eq!(config.safety.max_delete_fraction, safety.max_delete_fraction);
    assert_eq!(config.safety.allow_mass_delete, safety.allow_mass_delete);
    assert_eq!(config.safety.max_manifest_entries, safety.max_manifest_entries);
    assert_eq!(config.safety.revert_local_changes, safety.revert_local_changes);
    let rollback = RollbackConfig::default();
    assert_eq!(config.rollback.enabled, rollback.enabled);
    assert_eq!(config.rollback.keep_days, rollback.keep_days);
    assert_eq!(config.failover.after_split_brain, FailoverConfig::default().after_split_brain);
}
