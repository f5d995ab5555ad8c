//! The agent's TOML configuration: parsed, then validated; errors name the key and line.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// TOML syntax or a key of the wrong type; the message names the key and line.
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    /// A value parsed but makes no sense.
    #[error("{path}: `{key}`: {reason}")]
    Invalid { path: PathBuf, key: &'static str, reason: String },
}

/// `agent.toml`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The watched tree.
    pub root: PathBuf,
    /// The receiver's QUIC address, for an agent with one standby (its
    /// fingerprint is `tls.peer_fingerprint`); `[[standby]]` names several.
    #[serde(default)]
    pub receiver: Option<SocketAddr>,
    /// The standbys this master feeds, each over its own connection.
    #[serde(default)]
    pub standby: Vec<StandbyConfig>,
    /// Where the agent keeps its own state.
    pub state_dir: PathBuf,
    pub tls: TlsConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub capture: CaptureConfig,
    #[serde(default)]
    pub replication: ReplicationConfig,
    #[serde(default)]
    pub durability: DurabilityConfig,
    #[serde(default)]
    pub verify: VerifyConfig,
    #[serde(default)]
    pub failover: FailoverConfig,
    #[serde(default)]
    pub hooks: HooksConfig,
    #[serde(default)]
    pub log: sluice_net::daemon::LogConfig,
    /// Set when this agent is a relay: it forwards a standby's tree, as that
    /// standby's receiver applies it, to the standbys after it in a chain.
    /// A receiver with `[[forward]]` writes this configuration and runs the
    /// relay itself.
    #[serde(default)]
    pub relay: Option<RelayConfig>,
}

/// `[relay]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// The file where the receiver publishes the master's capture time of the
    /// operation it applies (what the relay forwards is stamped with it, so
    /// lag further down the chain is from the master).
    pub origin: PathBuf,
}


/// `[[standby]]`: one standby this master feeds.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandbyConfig {
    /// Its name in metrics (`standby` label), logs and status; also names its
    /// state under `state_dir`.
    pub name: String,
    /// The receiver's QUIC address.
    pub address: SocketAddr,
    /// The receiver's fingerprint, as printed by `sluice-receiver init`.
    pub peer_fingerprint: String,
}

/// The name the one standby of `receiver = …` goes by.
pub const SOLE_STANDBY: &str = "standby";

/// `[failover]`: what the agent does when the standby was promoted.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    pub when_fenced: WhenFenced,
}

/// `[failover] when_fenced`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenFenced {
    /// Exit with an error (a service manager should not restart it blindly).
    #[default]
    Exit,
    /// Keep running, asking again every few seconds (the standby may be
    /// demoted, or its lineage removed, by an operator).
    Wait,
}

/// `[hooks]`: programs run on a change of role, with `SLUICE_EVENT`,
/// `SLUICE_ROLE`, `SLUICE_ROOT`, `SLUICE_PEER`, `SLUICE_GENERATION` and
/// `SLUICE_REASON` in their environment.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// Run when the standby refuses this agent because it was promoted.
    pub on_fenced: Option<PathBuf>,
    /// Run when a switchover made this tree a standby.
    pub on_demote: Option<PathBuf>,
}

/// The background verifier.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    /// File content compared per second, on the master and on the standby alike
    /// (0: no background verification; `sluice-agent verify` still works).
    pub bytes_per_second: u64,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig { bytes_per_second: 8 << 20 }
    }
}

/// How much the agent holds for the standby, and how often it records it on disk.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DurabilityConfig {
    /// File content kept in memory for operations not yet sent (while the standby
    /// is unreachable or slow). Past it, changed ranges are remembered instead and
    /// read when they can be sent.
    pub backlog_bytes: u64,
    /// Operations kept while the standby is unreachable; past it the backlog is
    /// dropped and the tree compared on reconnect.
    pub backlog_ops: usize,
    /// Least time between two writes of the durable state in `state_dir`.
    pub journal_interval_ms: u64,
}

impl Default for DurabilityConfig {
    fn default() -> Self {
        DurabilityConfig { backlog_bytes: 256 << 20, backlog_ops: 1_000_000, journal_interval_ms: 100 }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// Replicate character and block device nodes (off: a standby rarely wants them).
    pub devices: bool,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Directory holding `cert.pem` and `key.pem` from `sluice-agent init`.
    pub identity: PathBuf,
    /// The receiver's fingerprint, as printed by `sluice-receiver init` (with
    /// `receiver`; each `[[standby]]` names its own).
    #[serde(default)]
    pub peer_fingerprint: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP `/metrics` endpoint; none disables it.
    pub listen: Option<SocketAddr>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// Size of the kernel ring buffer (a power of two, at least one page).
    pub ring_buffer_bytes: u32,
    /// How long changes to a file are coalesced before they are read and sent.
    pub coalesce_ms: u64,
    /// What of capture is checked against fanotify's view of the filesystem (and
    /// repaired where capture missed it).
    pub cross_check: CrossCheck,
    /// When 32-bit (ia32, x32) syscalls are captured.
    pub compat_syscalls: CompatSyscalls,
}

/// `[capture] compat_syscalls`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompatSyscalls {
    /// From when a 32-bit program runs (at start-up if one already does; at its
    /// exec otherwise, followed by a comparison of the tree): until then no
    /// syscall pays for the hook that sees them, which runs on every syscall.
    #[default]
    Auto,
    /// Always (64-bit programs that make 32-bit syscalls through `int 0x80`,
    /// which no exec announces).
    Always,
}

/// `[capture] cross_check`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrossCheck {
    /// Nothing.
    Off,
    /// Names created, deleted and moved: nearly free.
    #[default]
    Names,
    /// Names and every content change: each write on the watched filesystem
    /// costs about 1 µs more (measured on a 4 KiB `pwrite`).
    All,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            ring_buffer_bytes: 8 << 20,
            coalesce_ms: 2,
            cross_check: CrossCheck::Names,
            compat_syscalls: CompatSyscalls::Auto,
        }
    }
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text` read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|source| ConfigError::Parse { path: path.into(), source })?;
        let invalid = |key, reason: String| ConfigError::Invalid { path: path.into(), key, reason };
        if !config.root.is_absolute() {
            return Err(invalid("root", "must be an absolute path".into()));
        }
        if !config.root.is_dir() {
            return Err(invalid("root", format!("{} is not a directory", config.root.display())));
        }
        let size = config.capture.ring_buffer_bytes;
        if !size.is_power_of_two() || size < 4096 {
            return Err(invalid("capture.ring_buffer_bytes", format!("{size} is not a power of two of at least 4096")));
        }
        // A relay keeps its state in the standby's own `.sluice`, which is never replicated.
        let beside_tree = config.relay.is_some() && config.state_dir.starts_with(config.root.join(".sluice"));
        if config.state_dir.starts_with(&config.root) && !beside_tree {
            return Err(invalid("state_dir", format!("{} is inside the watched root: it would be replicated, and every write to it captured", config.state_dir.display())));
        }
        if config.durability.backlog_ops == 0 {
            return Err(invalid("durability.backlog_ops", "must be at least 1".into()));
        }
        for (key, hook) in [("hooks.on_fenced", &config.hooks.on_fenced), ("hooks.on_demote", &config.hooks.on_demote)] {
            if let Some(hook) = hook
                && !hook.is_absolute()
            {
                return Err(invalid(key, format!("{} is not an absolute path", hook.display())));
            }
        }
        match (&config.receiver, &config.tls.peer_fingerprint, config.standby.is_empty()) {
            (Some(_), Some(fingerprint), true) => {
                sluice_net::parse_fingerprint(fingerprint).map_err(|e| invalid("tls.peer_fingerprint", e.to_string()))?;
            }
            (Some(_), None, true) => return Err(invalid("tls.peer_fingerprint", "is required with `receiver`".into())),
            (None, _, true) => return Err(invalid("standby", "name the standby: `receiver` and `tls.peer_fingerprint`, or `[[standby]]` entries".into())),
            (Some(_), _, false) => return Err(invalid("receiver", "give either `receiver` or `[[standby]]` entries, not both".into())),
            (None, Some(_), false) => {
                return Err(invalid("tls.peer_fingerprint", "each `[[standby]]` names its own `peer_fingerprint`".into()));
            }
            (None, None, false) => {}
        }
        let mut names = std::collections::HashSet::new();
        for standby in &config.standby {
            let name = &standby.name;
            let valid = !name.is_empty() && name.len() <= 32 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                return Err(invalid("standby.name", format!("{name:?}: use 1 to 32 letters, digits, `-` or `_`")));
            }
            if !names.insert(name.as_str()) {
                return Err(invalid("standby.name", format!("{name:?} is given twice")));
            }
            sluice_net::parse_fingerprint(&standby.peer_fingerprint)
                .map_err(|e| invalid("standby.peer_fingerprint", format!("standby {name:?}: {e}")))?;
        }
        Ok(config)
    }

    /// Every standby this master feeds, the one of `receiver = …` included.
    pub fn standbys(&self) -> Vec<StandbyConfig> {
        match (self.receiver, &self.tls.peer_fingerprint) {
            (Some(address), Some(fingerprint)) => {
                vec![StandbyConfig { name: SOLE_STANDBY.into(), address, peer_fingerprint: fingerprint.clone() }]
            }
            _ => self.standby.clone(),
        }
    }

    /// Where the agent keeps what `standby` lacks. The one standby of
    /// `receiver = …` keeps the state directory itself, as before standbys had names.
    pub fn standby_state_dir(&self, standby: &StandbyConfig) -> PathBuf {
        if self.receiver.is_some() { self.state_dir.clone() } else { self.state_dir.join("standby").join(&standby.name) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("agent.toml"))
    }

    const GOOD: &str = r#"
root = "/tmp"
receiver = "127.0.0.1:7400"
state_dir = "/var/lib/sluice/agent-state"
[tls]
identity = "/tmp/id"
peer_fingerprint = "0000000000000000000000000000000000000000000000000000000000000000"
"#;

    #[test]
    fn accepts_minimal_config() {
        let config = parse(GOOD).unwrap();
        assert_eq!(config.capture.ring_buffer_bytes, 8 << 20);
        assert!(config.metrics.listen.is_none());
    }

    #[test]
    fn errors_name_key_and_line() {
        let err = parse(&GOOD.replace("receiver = \"127.0.0.1:7400\"", "receiver = 7400")).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("receiver"), "{err}");
        let err = parse(&format!("{GOOD}\n[capture]\nring_buffer_bytes = 1000\n")).unwrap_err().to_string();
        assert!(err.contains("capture.ring_buffer_bytes"), "{err}");
        let err = parse(&GOOD.replace("/var/lib/sluice/agent-state", "/tmp/agent-state")).unwrap_err().to_string();
        assert!(err.contains("state_dir") && err.contains("inside the watched root"), "{err}");
        let err = parse(&format!("{GOOD}\nbogus = 1\n")).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
        let err = parse(&format!("{GOOD}\n[hooks]\non_fenced = \"fenced.sh\"\n")).unwrap_err().to_string();
        assert!(err.contains("hooks.on_fenced"), "{err}");
        let err = parse(&format!("{GOOD}\n[failover]\nwhen_fenced = \"retry\"\n")).unwrap_err().to_string();
        assert!(err.contains("when_fenced"), "{err}");
        let config = parse(&format!("{GOOD}\n[failover]\nwhen_fenced = \"wait\"\n")).unwrap();
        assert_eq!(config.failover.when_fenced, WhenFenced::Wait);
    }

    const FINGERPRINT: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn several(entries: &[(&str, &str)]) -> String {
        let mut text = "root = \"/tmp\"\nstate_dir = \"/var/lib/sluice/agent-state\"\n[tls]\nidentity = \"/tmp/id\"\n".to_string();
        for (name, address) in entries {
            text += &format!("[[standby]]\nname = \"{name}\"\naddress = \"{address}\"\npeer_fingerprint = \"{FINGERPRINT}\"\n");
        }
        text
    }

    #[test]
    fn several_standbys_each_with_a_name_and_a_state_directory() {
        let config = parse(&several(&[("lan", "10.0.0.2:7400"), ("off-site", "192.0.2.7:7400")])).unwrap();
        let standbys = config.standbys();
        assert_eq!(standbys.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["lan", "off-site"]);
        assert_eq!(config.standby_state_dir(&standbys[1]), Path::new("/var/lib/sluice/agent-state/standby/off-site"));
        let sole = parse(GOOD).unwrap();
        assert_eq!(sole.standbys()[0].name, SOLE_STANDBY);
        assert_eq!(sole.standby_state_dir(&sole.standbys()[0]), Path::new("/var/lib/sluice/agent-state"), "where one standby kept it before");
    }

    #[test]
    fn standbys_are_named_once_and_given_one_way() {
        let err = parse(&several(&[("lan", "10.0.0.2:7400"), ("lan", "10.0.0.3:7400")])).unwrap_err().to_string();
        assert!(err.contains("standby.name") && err.contains("twice"), "{err}");
        let err = parse(&several(&[("../x", "10.0.0.2:7400")])).unwrap_err().to_string();
        assert!(err.contains("standby.name"), "{err}");
        let err = parse(&several(&[])).unwrap_err().to_string();
        assert!(err.contains("[[standby]]"), "{err}");
        let both = format!("{GOOD}\n[[standby]]\nname = \"b\"\naddress = \"10.0.0.2:7400\"\npeer_fingerprint = \"{FINGERPRINT}\"\n");
        let err = parse(&both).unwrap_err().to_string();
        assert!(err.contains("not both"), "{err}");
    }
}
