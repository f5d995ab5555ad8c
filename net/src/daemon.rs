//! Process plumbing both daemons share: `init`, logging, and stopping on a signal.

use crate::{Identity, NetError};
use std::future::Future;
use std::path::Path;

/// Generates an identity into `dir` (refusing to replace one unless `force`) and
/// returns its fingerprint, for the peer to pin.
pub fn init_identity(dir: &Path, force: bool) -> Result<String, NetError> {
    let identity = Identity::generate()?;
    identity.write_to(dir, force)?;
    identity.fingerprint()
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}

/// Completes on the first SIGTERM or SIGINT. Call inside a tokio runtime.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
