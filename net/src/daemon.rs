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

/// Allocations below this come from the heap, not a mapping of their own (32 MiB
/// is the most glibc accepts).
const HEAP_ALLOCATION_LIMIT: libc::c_int = 32 << 20;
/// Heap memory freed by a daemon stays mapped for its next use, up to this much.
const RETAINED_HEAP_BYTES: libc::c_int = 64 << 20;

/// Keeps glibc from handing file-data buffers back to the kernel after each use.
/// Both daemons allocate and free buffers of up to a few MiB per write they
/// move; glibc may map such a buffer afresh or trim the heap under it, and then
/// every one costs page faults and zeroing by the kernel. Call before any
/// thread starts.
pub fn keep_buffers_mapped() {
    // SAFETY: mallopt only adjusts allocator parameters; called while the
    // process has one thread, as glibc asks.
    let set = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, HEAP_ALLOCATION_LIMIT) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, RETAINED_HEAP_BYTES) == 1
    };
    if !set {
        tracing::debug!("glibc refused the heap tuning; buffers are mapped per use");
    }
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

/// Runs an operator's hook (`[hooks] on_promote = "/path/to/program"` and the
/// like) with `vars` added to its environment, without waiting for it: a hook
/// that hangs must not hold replication or a promotion. Its exit status is
/// logged when it ends.
pub fn run_hook(event: &'static str, program: &Path, vars: &[(&str, String)]) {
    let mut command = std::process::Command::new(program);
    command.env("SLUICE_EVENT", event).stdin(std::process::Stdio::null());
    for (name, value) in vars {
        command.env(name, value);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            tracing::error!(hook = event, program = %program.display(), "cannot run the hook: {e}");
            return;
        }
    };
    let program = program.to_owned();
    std::thread::spawn(move || match child.wait() {
        Ok(status) if status.success() => tracing::info!(hook = event, program = %program.display(), "hook ran"),
        Ok(status) => tracing::warn!(hook = event, program = %program.display(), "hook failed: {status}"),
        Err(e) => tracing::warn!(hook = event, program = %program.display(), "waiting for the hook: {e}"),
    });
}

/// Serves a local control socket at `path`, for root only (mode 0600; a stale
/// socket left by an earlier run is replaced): each connection is handed to
/// `answer` in a task of its own. Call inside a tokio runtime.
pub fn serve_control<F, Fut>(path: &Path, answer: F) -> std::io::Result<tokio::task::JoinHandle<()>>
where
    F: Fn(tokio::net::UnixStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    use std::os::unix::fs::PermissionsExt;
    let context = |what: &str, e: std::io::Error| std::io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()));
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(context("removing the stale", e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| context("binding", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| context("chmod", e))?;
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream));
                }
                Err(e) => {
                    tracing::warn!("control socket: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }))
}
