//! The systemd service protocol both daemons speak under `Type=notify`:
//! readiness once they really serve, `STATUS=` lines saying what they do, reload
//! and stop notices, and a watchdog fed only while their work loop beats.
//!
//! Everything is a no-op without `NOTIFY_SOCKET` (not started by systemd).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Tells systemd about the daemon's state; cheap to clone.
#[derive(Clone, Default)]
pub struct Notifier {
    inner: Arc<NotifierInner>,
}

#[derive(Default)]
struct NotifierInner {
    ready: AtomicBool,
    last_status: Mutex<String>,
}

impl Notifier {
    /// Says the daemon serves (once; later calls only update the status).
    pub fn ready(&self, status: &str) {
        if !self.inner.ready.swap(true, Ordering::SeqCst) {
            send(&[NotifyState::Ready, NotifyState::Status(status)]);
            self.remember(status);
        } else {
            self.status(status);
        }
    }

    /// True once [`Notifier::ready`] was called.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst)
    }

    /// One line of what the daemon is doing (`systemctl status` shows it); sent
    /// only when it changed.
    pub fn status(&self, status: &str) {
        if self.remember(status) {
            send(&[NotifyState::Status(status)]);
        }
    }

    /// The configuration is being read again.
    pub fn reloading(&self) {
        send(&[NotifyState::Reloading, NotifyState::Status("reloading the configuration")]);
    }

    /// The reload finished (readiness is restored).
    pub fn reloaded(&self, status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
        self.remember(status);
    }

    /// The daemon is stopping.
    pub fn stopping(&self) {
        send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// Records `status`; true when it differs from the last one.
    fn remember(&self, status: &str) -> bool {
        let mut last = self.inner.last_status.lock().unwrap_or_else(|e| e.into_inner());
        if *last == status {
            return false;
        }
        status.clone_into(&mut last);
        true
    }
}

fn send(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// The last time a daemon's work loop went round, for the watchdog.
#[derive(Clone)]
pub struct Heartbeat {
    started: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Heartbeat {
    fn default() -> Heartbeat {
        Heartbeat { started: Instant::now(), last_ms: Arc::new(AtomicU64::new(0)) }
    }
}

impl Heartbeat {
    /// The work loop went round.
    pub fn beat(&self) {
        self.last_ms.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long since the last beat.
    pub fn since_last(&self) -> Duration {
        let now = self.started.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// The watchdog interval systemd asked for (`WatchdogSec=`), if any: as
/// libsystemd reads it, `WATCHDOG_USEC` for this process unless `WATCHDOG_PID`
/// names another.
pub fn watchdog_interval() -> Option<Duration> {
    std::env::var_os("NOTIFY_SOCKET")?;
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let for_us = std::env::var("WATCHDOG_PID").ok().is_none_or(|pid| pid.parse() == Ok(std::process::id()));
    (for_us && usec > 0).then(|| Duration::from_micros(usec))
}

/// Feeds systemd's watchdog at half its interval while `heartbeat` beat within
/// that half: a work loop that stops going round stops feeding it, and systemd
/// restarts the daemon. `None` when no watchdog was asked for.
pub fn spawn_watchdog(heartbeat: Heartbeat) -> Option<tokio::task::JoinHandle<()>> {
    let interval = watchdog_interval()?;
    let half = interval / 2;
    tracing::info!(seconds = interval.as_secs_f64(), "feeding the systemd watchdog while the work loop runs");
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(half.max(Duration::from_millis(100)));
        let mut starved = false;
        loop {
            tick.tick().await;
            if heartbeat.since_last() <= half {
                send(&[NotifyState::Watchdog]);
                starved = false;
            } else if !starved {
                starved = true;
                tracing::error!(
                    stalled_seconds = heartbeat.since_last().as_secs_f64(),
                    "the work loop has stopped going round; no longer feeding the systemd watchdog"
                );
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    /// One test owns the process environment (`NOTIFY_SOCKET` is read by every call).
    #[test]
    fn readiness_status_and_watchdog_reach_the_socket_systemd_would_hold() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // SAFETY: no other thread of this test binary reads or writes the environment.
        unsafe {
            std::env::set_var("NOTIFY_SOCKET", &path);
            std::env::set_var("WATCHDOG_USEC", "400000");
            std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
        }
        let read = || {
            let mut buf = [0u8; 512];
            let n = socket.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        let notifier = Notifier::default();
        notifier.ready("listening");
        assert_eq!(read(), "READY=1\nSTATUS=listening\n");
        notifier.status("listening");
        notifier.status("applying");
        assert_eq!(read(), "STATUS=applying\n", "an unchanged status is not sent again");
        notifier.ready("streaming");
        assert_eq!(read(), "STATUS=streaming\n", "readiness is sent once");

        assert_eq!(watchdog_interval(), Some(Duration::from_millis(400)));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let heartbeat = Heartbeat::default();
        let pings = runtime.block_on(async {
            heartbeat.beat();
            let task = spawn_watchdog(heartbeat.clone()).unwrap();
            // Beating: fed every 200 ms.
            for _ in 0..5 {
                heartbeat.beat();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Stalled: no more pings.
            tokio::time::sleep(Duration::from_millis(600)).await;
            task.abort();
            let mut pings = Vec::new();
            socket.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 64];
            while let Ok(n) = socket.recv(&mut buf) {
                pings.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            pings
        });
        assert!(pings.len() >= 2 && pings.iter().all(|p| p == "WATCHDOG=1\n"), "{pings:?}");
        assert!(pings.len() <= 5, "a stalled loop stops feeding the watchdog: {pings:?}");
        unsafe {
            std::env::remove_var("NOTIFY_SOCKET");
        }
    }
}
