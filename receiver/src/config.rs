//! The receiver's TOML configuration: parsed, then validated; errors name the
//! file, the key and the line.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a key of the wrong type; toml's message
    /// names the key and the line. Not a `source`, so reports do not print it twice.
    #[error("{}: {error}", path.display())]
    Parse {
        path: PathBuf,
        error: toml::de::Error,
    },
    /// A value parsed but makes no sense.
    #[error("{}: `{key}`: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
}

/// `receiver.toml`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The standby tree that replicated changes are applied to.
    pub root: PathBuf,
    /// UDP address the QUIC endpoint listens on.
    pub listen: SocketAddr,
    pub tls: TlsConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub rollback: RollbackConfig,
    #[serde(default)]
    pub replication: ReplicationConfig,
    #[serde(default)]
    pub safety: SafetyConfig,
    #[serde(default)]
    pub hooks: HooksConfig,
    #[serde(default)]
    pub failover: FailoverConfig,
    #[serde(default)]
    pub log: sluice_net::daemon::LogConfig,
    /// Standbys further down a chain: this standby forwards what it applies
    /// to them, in order (see [`crate::relay`]).
    #[serde(default)]
    pub forward: Vec<ForwardConfig>,
    #[serde(default)]
    pub relay: RelayConfig,
}

/// `[[forward]]`: a standby this one relays to.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// Its name in the relay's metrics, logs and status.
    pub name: String,
    /// Its receiver's QUIC address.
    pub address: SocketAddr,
    /// Its receiver's fingerprint, as printed by `sluice-receiver init`; it
    /// pins this receiver's own fingerprint.
    pub peer_fingerprint: String,
}

/// `[relay]`: how the relay to the `[[forward]]` standbys runs.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// The receiver starts the relay itself (before it drops its privileges);
    /// `false` when the relay runs as a service of its own
    /// (`sluice-relay.service`: the receiver's unit does not grant what
    /// loading eBPF programs needs).
    pub spawn: bool,
    /// The `sluice-agent` program that forwards (default: the one installed
    /// beside this receiver).
    pub agent: Option<PathBuf>,
    /// Address of the relay's own `/metrics` (per forwarded standby); none disables it.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig { spawn: true, agent: None, metrics_listen: None }
    }
}


/// `[failover]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// What to do when both this tree and the agent's took changes after one
    /// was promoted out of the other (like DRBD's `after-sb-*`). The discarded
    /// side's changes always go to its rollback directory.
    pub after_split_brain: SplitBrainPolicy,
}

/// `[failover] after_split_brain`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SplitBrainPolicy {
    /// Refuse, naming both sides' changes: an operator decides.
    #[default]
    Disconnect,
    /// The side promoted last loses its changes.
    DiscardYoungerPrimary,
    /// The side with fewer changes since the fork loses them (on a tie, this tree).
    DiscardLeastChanges,
}

/// `[hooks]`: programs run when the tree changes role, with `SLUICE_EVENT`,
/// `SLUICE_ROLE`, `SLUICE_ROOT`, `SLUICE_GENERATION`, `SLUICE_DURABLE_SEQ` and
/// `SLUICE_CONSISTENT_AS_OF` (Unix ns of the master's capture) in their environment.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksConfig {
    /// Run once the standby was promoted (by `sluice-receiver promote` or a
    /// switchover): start the services that use the tree, and its agent.
    pub on_promote: Option<PathBuf>,
    /// Run when an old primary's tree starts following the master promoted out
    /// of it (failback).
    pub on_demote: Option<PathBuf>,
}

/// `[replication]`: what the receiver is willing to make.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Make character and block device nodes the agent sends. Off by default:
    /// a device node is a door to the standby's own hardware.
    #[serde(default)]
    pub devices: bool,
}

/// `[safety]`: guards against a master that lists far less than the standby holds.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyConfig {
    /// A comparison of the whole tree that would delete more than this fraction
    /// of the standby's entries is refused until an operator allows it.
    #[serde(default = "SafetyConfig::default_max_delete_fraction")]
    pub max_delete_fraction: f64,
    /// Allow such comparisons without asking (the guard off).
    #[serde(default)]
    pub allow_mass_delete: bool,
    /// Most entries one comparison may list (memory the receiver spends on it).
    #[serde(default = "SafetyConfig::default_max_manifest_entries")]
    pub max_manifest_entries: u64,
    /// Watch the standby's filesystem for changes made by anyone but the
    /// receiver, and put the master's version back (the local one kept in the
    /// rollback directory).
    #[serde(default = "SafetyConfig::default_revert_local_changes")]
    pub revert_local_changes: bool,
}

impl SafetyConfig {
    fn default_max_delete_fraction() -> f64 {
        0.5
    }

    fn default_max_manifest_entries() -> u64 {
        50_000_000
    }

    fn default_revert_local_changes() -> bool {
        true
    }
}

impl Default for SafetyConfig {
    fn default() -> Self {
        SafetyConfig {
            max_delete_fraction: Self::default_max_delete_fraction(),
            allow_mass_delete: false,
            max_manifest_entries: Self::default_max_manifest_entries(),
            revert_local_changes: Self::default_revert_local_changes(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Directory holding `cert.pem` and `key.pem` from `sluice-receiver init`.
    pub identity: PathBuf,
    /// The agent's fingerprint, as printed by `sluice-agent init`.
    pub peer_fingerprint: String,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP `/metrics` endpoint; none disables it.
    pub listen: Option<SocketAddr>,
}

/// `[rollback]`: keeping what replication removes, truncates or overwrites under
/// `<root>/.sluice/rollback/<UTC date>/`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackConfig {
    #[serde(default)]
    pub enabled: bool,
    /// Date directories more than this many days old are deleted.
    #[serde(default = "RollbackConfig::default_keep_days")]
    pub keep_days: u32,
}

impl RollbackConfig {
    fn default_keep_days() -> u32 {
        7
    }
}

impl Default for RollbackConfig {
    fn default() -> Self {
        RollbackConfig {
            enabled: false,
            keep_days: Self::default_keep_days(),
        }
    }
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text` read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.into(),
            error,
        })?;
        let invalid = |key, reason: String| ConfigError::Invalid {
            path: path.into(),
            key,
            reason,
        };
        if !config.root.is_absolute() {
            return Err(invalid("root", "must be an absolute path".into()));
        }
        if !config.root.is_dir() {
            return Err(invalid(
                "root",
                format!("{} is not a directory", config.root.display()),
            ));
        }
        config.tls.peer_fingerprint =
            sluice_net::parse_fingerprint(&config.tls.peer_fingerprint)
                .map_err(|e| invalid("tls.peer_fingerprint", e.to_string()))?;
        if !(0.0..=1.0).contains(&config.safety.max_delete_fraction) {
            return Err(invalid(
                "safety.max_delete_fraction",
                "must be between 0 and 1 (the share of the standby one comparison may delete)".into(),
            ));
        }
        if config.safety.max_manifest_entries == 0 {
            return Err(invalid("safety.max_manifest_entries", "must be at least 1".into()));
        }
        for (key, hook) in [("hooks.on_promote", &config.hooks.on_promote), ("hooks.on_demote", &config.hooks.on_demote)] {
            if let Some(hook) = hook
                && !hook.is_absolute()
            {
                return Err(invalid(key, format!("{} is not an absolute path", hook.display())));
            }
        }
        let mut names = std::collections::HashSet::new();
        for forward in &mut config.forward {
            let name = &forward.name;
            let valid = !name.is_empty() && name.len() <= 32 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                return Err(invalid("forward.name", format!("{name:?}: use 1 to 32 letters, digits, `-` or `_`")));
            }
            if !names.insert(name.clone()) {
                return Err(invalid("forward.name", format!("{name:?} is given twice")));
            }
            forward.peer_fingerprint = sluice_net::parse_fingerprint(&forward.peer_fingerprint)
                .map_err(|e| invalid("forward.peer_fingerprint", format!("forward {name:?}: {e}")))?;
        }
        if let Some(agent) = &config.relay.agent
            && !agent.is_absolute()
        {
            return Err(invalid("relay.agent", format!("{} is not an absolute path", agent.display())));
        }
        if config.rollback.keep_days < 1 {
            return Err(invalid(
                "rollback.keep_days",
                "must be at least 1 (days a kept entry stays)".into(),
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("receiver.toml"))
    }

    const GOOD: &str = r#"
root = "/tmp"
listen = "127.0.0.1:7400"
[tls]
identity = "/tmp/id"
peer_fingerprint = "00000000000000000000000000000000000000000000000000000000000000AA"
"#;

    #[test]
    fn accepts_minimal_config() {
        let config = parse(GOOD).unwrap();
        assert!(config.metrics.listen.is_none());
        assert!(!config.rollback.enabled);
        assert!(!config.replication.devices, "device nodes are off unless asked for");
        assert_eq!(config.safety.max_delete_fraction, 0.5);
        assert!(!config.safety.allow_mass_delete);
        assert_eq!(config.rollback.keep_days, 7);
        assert!(config.tls.peer_fingerprint.ends_with("aa"));
        let config = parse(&format!("{GOOD}[metrics]\nlisten = \"127.0.0.1:9100\"\n")).unwrap();
        assert_eq!(
            config.metrics.listen,
            Some("127.0.0.1:9100".parse().unwrap())
        );
    }

    #[test]
    fn rollback_section_is_optional_and_checked() {
        let config = parse(&format!("{GOOD}[rollback]\nenabled = true\n")).unwrap();
        assert!(config.rollback.enabled);
        assert_eq!(config.rollback.keep_days, 7);
        let config = parse(&format!(
            "{GOOD}[rollback]\nenabled = true\nkeep_days = 30\n"
        ))
        .unwrap();
        assert_eq!(config.rollback.keep_days, 30);
        let err = parse(&format!(
            "{GOOD}[rollback]\nenabled = true\nkeep_days = 0\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("`rollback.keep_days`"), "{err}");
        let err = parse(&format!("{GOOD}[rollback]\nkeep_days = -1\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("keep_days") && err.contains("line 8"), "{err}");
        let err = parse(&format!("{GOOD}[rollback]\nenable = true\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("enable"), "{err}");
    }

    #[test]
    fn safety_and_replication_sections_are_checked() {
        let config = parse(&format!("{GOOD}[replication]\ndevices = true\n[safety]\nmax_delete_fraction = 0.9\n")).unwrap();
        assert!(config.replication.devices);
        assert_eq!(config.safety.max_delete_fraction, 0.9);
        let err = parse(&format!("{GOOD}[safety]\nmax_delete_fraction = 1.5\n")).unwrap_err().to_string();
        assert!(err.contains("safety.max_delete_fraction"), "{err}");
        let config = parse(&format!("{GOOD}[hooks]\non_promote = \"/usr/local/bin/up\"\n")).unwrap();
        assert_eq!(config.hooks.on_promote.as_deref(), Some(Path::new("/usr/local/bin/up")));
        let err = parse(&format!("{GOOD}[hooks]\non_demote = \"down.sh\"\n")).unwrap_err().to_string();
        assert!(err.contains("hooks.on_demote"), "{err}");
        assert_eq!(parse(GOOD).unwrap().failover.after_split_brain, SplitBrainPolicy::Disconnect);
        let config = parse(&format!("{GOOD}[failover]\nafter_split_brain = \"discard-least-changes\"\n")).unwrap();
        assert_eq!(config.failover.after_split_brain, SplitBrainPolicy::DiscardLeastChanges);
        let err = parse(&format!("{GOOD}[failover]\nafter_split_brain = \"merge\"\n")).unwrap_err().to_string();
        assert!(err.contains("after_split_brain") || err.contains("merge"), "{err}");
    }

    #[test]
    fn errors_name_file_key_and_line() {
        let err = parse(&GOOD.replace("listen = \"127.0.0.1:7400\"", "listen = 7400"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("receiver.toml") && err.contains("line 3") && err.contains("listen"),
            "{err}"
        );
        let err = parse(&format!("{GOOD}\nbogus = 1\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
        let err = parse(&GOOD.replace("AA\"", "\"")).unwrap_err().to_string();
        assert!(err.contains("tls.peer_fingerprint"), "{err}");
        let err = parse(&GOOD.replace("/tmp\"", "/nonexistent/dir\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`root`"), "{err}");
        let err = parse(&GOOD.replace("root = \"/tmp\"", ""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("root"), "{err}");
    }
}
