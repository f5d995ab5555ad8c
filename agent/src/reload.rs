//! Reloading `agent.toml` while the agent runs (SIGHUP, `systemctl reload`):
//! which keys take effect without restarting replication, and which are
//! refused, named, with the running value kept. Nothing is compared again.

use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::control::{ControlRequest, Request};

pub use sluice_net::daemon::{KeyChanges as Changes, Reloader};

/// Compares the running configuration with a new one.
pub fn changes(running: &Config, new: &Config) -> Changes {
    let mut changes = Changes::default();
    let mut fixed = |key, same| changes.fixed(key, same);
    fixed("root", running.root == new.root);
    fixed("receiver", running.receiver == new.receiver);
    fixed("standby", running.standby == new.standby);
    fixed("state_dir", running.state_dir == new.state_dir);
    fixed("tls", running.tls == new.tls);
    fixed("metrics.listen", running.metrics == new.metrics);
    fixed("capture.ring_buffer_bytes", running.capture.ring_buffer_bytes == new.capture.ring_buffer_bytes);
    fixed("capture.cross_check", running.capture.cross_check == new.capture.cross_check);
    fixed("capture.compat_syscalls", running.capture.compat_syscalls == new.capture.compat_syscalls);
    fixed("replication.devices", running.replication == new.replication);
    fixed("durability", running.durability == new.durability);
    let mut live = |key, same| changes.live(key, same);
    live("log.level", running.log == new.log);
    live("verify.bytes_per_second", running.verify == new.verify);
    live("capture.coalesce_ms", running.capture.coalesce_ms == new.capture.coalesce_ms);
    live("failover.when_fenced", running.failover == new.failover);
    live("hooks", running.hooks == new.hooks);
    changes
}

/// `running` with the keys a reload may change taken from `new`.
pub fn merged(running: &Config, new: &Config) -> Config {
    let mut merged = running.clone();
    merged.log = new.log.clone();
    merged.verify = new.verify.clone();
    merged.capture.coalesce_ms = new.capture.coalesce_ms;
    merged.failover = new.failover.clone();
    merged.hooks = new.hooks.clone();
    merged
}

/// Reads the file again on each SIGHUP, logs what changes and what is
/// refused, and publishes the running configuration to `settings`; the
/// verifier's rate goes through `control`.
pub fn spawn(
    reloader: Reloader,
    mut running: Config,
    settings: watch::Sender<Config>,
    control: mpsc::UnboundedSender<ControlRequest>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut hangups = sluice_net::daemon::reload_signal()?;
    Ok(tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            reloader.notifier.reloading();
            let outcome = match Config::load(&reloader.path) {
                Err(e) => format!("reload refused, nothing changed: {e}"),
                Ok(new) => {
                    let summary = changes(&running, &new).report("agent", &reloader.path);
                    if let Err(e) = reloader.log_level.set(new.log.level.as_deref()) {
                        tracing::error!("reload: `log.level`: {e}; keeping the running level");
                    }
                    if running.verify != new.verify {
                        let (reply, _) = mpsc::unbounded_channel();
                        let request = Request::Reconfigure { verify_bytes_per_second: new.verify.bytes_per_second };
                        let _ = control.send(ControlRequest { request, reply });
                    }
                    running = merged(&running, &new);
                    let _ = settings.send(running.clone());
                    summary
                }
            };
            tracing::info!("{outcome}");
            reloader.notifier.reloaded(&outcome);
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!(
            "root = \"/tmp\"\nreceiver = \"127.0.0.1:7400\"\nstate_dir = \"/var/lib/sluice/agent\"\n[tls]\nidentity = \"/var/lib/sluice/id\"\npeer_fingerprint = \"{}\"\n{extra}",
            "ab".repeat(32)
        );
        Config::parse(&text, std::path::Path::new("agent.toml")).unwrap()
    }

    #[test]
    fn a_reload_applies_what_can_change_and_names_what_cannot() {
        let running = config("");
        let new = config("[verify]\nbytes_per_second = 1\n[log]\nlevel = \"debug\"\n[durability]\nbacklog_ops = 5\n");
        let found = changes(&running, &new);
        assert_eq!(found.applied, ["log.level", "verify.bytes_per_second"]);
        assert_eq!(found.refused, ["durability"]);
        let merged = merged(&running, &new);
        assert_eq!(merged.verify.bytes_per_second, 1);
        assert_eq!(merged.durability, running.durability, "a refused key keeps its running value");
        assert_eq!(changes(&running, &running), Changes::default());
    }
}
