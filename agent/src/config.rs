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
    /// The receiver's QUIC address.
    pub receiver: SocketAddr,
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
}


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
    /// The receiver's fingerprint, as printed by `sluice-receiver init`.
    pub peer_fingerprint: String,
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
        if config.state_dir.starts_with(&config.root) {
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
        sluice_net::parse_fingerprint(&config.tls.peer_fingerprint)
            .map_err(|e| invalid("tls.peer_fingerprint", e.to_string()))?;
        Ok(config)
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
}
