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
#[derive(Clone, Debug, Deserialize)]
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
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Directory holding `cert.pem` and `key.pem` from `sluice-receiver init`.
    pub identity: PathBuf,
    /// The agent's fingerprint, as printed by `sluice-agent init`.
    pub peer_fingerprint: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP `/metrics` endpoint; none disables it.
    pub listen: Option<SocketAddr>,
}

/// `[rollback]`: keeping what replication removes, truncates or overwrites under
/// `<root>/.sluice/rollback/<UTC date>/`.
#[derive(Clone, Debug, Deserialize)]
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
