//! Reloading `receiver.toml` while the receiver runs (SIGHUP, `systemctl
//! reload`): which keys take effect without dropping the agent's connection,
//! and which are refused, named, with the running value kept.

use crate::config::Config;

pub use sluice_net::daemon::{KeyChanges as Changes, Reloader};

/// Compares the running configuration with a new one.
pub fn changes(running: &Config, new: &Config) -> Changes {
    let mut changes = Changes::default();
    let mut fixed = |key, same| changes.fixed(key, same);
    fixed("root", running.root == new.root);
    fixed("listen", running.listen == new.listen);
    fixed("tls", running.tls == new.tls);
    fixed("metrics.listen", running.metrics == new.metrics);
    fixed("replication.devices", running.replication == new.replication);
    // The watch for local changes is made before privileges are dropped.
    fixed("safety.revert_local_changes", running.safety.revert_local_changes == new.safety.revert_local_changes);
    let mut live = |key, same| changes.live(key, same);
    live("log.level", running.log == new.log);
    live("rollback", running.rollback == new.rollback);
    live(
        "safety",
        running.safety.max_delete_fraction == new.safety.max_delete_fraction
            && running.safety.allow_mass_delete == new.safety.allow_mass_delete
            && running.safety.max_manifest_entries == new.safety.max_manifest_entries,
    );
    live("failover.after_split_brain", running.failover == new.failover);
    live("hooks", running.hooks == new.hooks);
    changes
}

/// `running` with the keys a reload may change taken from `new`.
pub fn merged(running: &Config, new: &Config) -> Config {
    let mut merged = running.clone();
    merged.log = new.log.clone();
    merged.rollback = new.rollback.clone();
    merged.safety = crate::config::SafetyConfig { revert_local_changes: running.safety.revert_local_changes, ..new.safety.clone() };
    merged.failover = new.failover.clone();
    merged.hooks = new.hooks.clone();
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!(
            "root = \"/tmp\"\nlisten = \"0.0.0.0:7400\"\n[tls]\nidentity = \"/var/lib/sluice/id\"\npeer_fingerprint = \"{}\"\n{extra}",
            "ab".repeat(32)
        );
        Config::parse(&text, std::path::Path::new("receiver.toml")).unwrap()
    }

    #[test]
    fn a_reload_applies_what_can_change_and_names_what_cannot() {
        let running = config("");
        let new = config("[rollback]\nenabled = true\n[safety]\nrevert_local_changes = false\nmax_delete_fraction = 0.9\n");
        let new = Config { listen: "0.0.0.0:7401".parse().unwrap(), ..new };
        let found = changes(&running, &new);
        assert_eq!(found.applied, ["rollback", "safety"]);
        assert_eq!(found.refused, ["listen", "safety.revert_local_changes"]);
        let merged = merged(&running, &new);
        assert!(merged.rollback.enabled && merged.safety.max_delete_fraction == 0.9);
        assert!(merged.safety.revert_local_changes && merged.listen == running.listen, "refused keys keep their running values");
    }
}
