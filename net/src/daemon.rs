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

/// How log lines are written: for people (the default) or one JSON object per
/// line for log shippers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<LogFormat, String> {
        match text {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("`{other}`: expected `human` or `json`")),
        }
    }
}

/// `[log]` in either daemon's configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Which lines are written, in `RUST_LOG` syntax (`info`, `debug`,
    /// `sluice=debug,info`); `RUST_LOG` wins when set. Default `info`.
    pub level: Option<String>,
}

/// What a reload of a daemon's configuration changes: the keys that take
/// effect, and those that cannot change while it runs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KeyChanges {
    pub applied: Vec<&'static str>,
    pub refused: Vec<&'static str>,
}

impl KeyChanges {
    /// `key` may only change with a restart: refused when `same` is false.
    pub fn fixed(&mut self, key: &'static str, same: bool) {
        if !same {
            self.refused.push(key);
        }
    }

    /// `key` takes effect on reload: applied when `same` is false.
    pub fn live(&mut self, key: &'static str, same: bool) {
        if !same {
            self.applied.push(key);
        }
    }

    /// Logs each refused key, naming the daemon, and returns the summary line.
    pub fn report(&self, daemon: &str, path: &Path) -> String {
        for key in &self.refused {
            tracing::error!(key, "reload: `{key}` cannot change while the {daemon} runs; keeping the running value (restart the {daemon} to change it)");
        }
        format!("reloaded {}: changed {:?}, refused {:?}", path.display(), self.applied, self.refused)
    }
}

/// Where a daemon's configuration is read again from on SIGHUP, and what a
/// reload reaches besides the configuration itself.
pub struct Reloader {
    pub path: std::path::PathBuf,
    pub log_level: LogLevel,
    pub notifier: crate::notify::Notifier,
}

/// Changes which log lines are written while the daemon runs.
#[derive(Clone)]
pub struct LogLevel {
    handle: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>,
    /// `RUST_LOG` was set: it wins over the configuration.
    from_environment: bool,
}

impl LogLevel {
    /// Applies `directives` (`info`, `debug`, `sluice_agent=debug,info`, ...)
    /// unless `RUST_LOG` decides; `None` means `info`.
    pub fn set(&self, directives: Option<&str>) -> Result<(), String> {
        if self.from_environment {
            return Ok(());
        }
        let filter = tracing_subscriber::EnvFilter::try_new(directives.unwrap_or("info")).map_err(|e| e.to_string())?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }
}

/// Logs to stderr in `format`, filtered by `RUST_LOG` when set, else by
/// `info` until the configuration says otherwise ([`LogLevel::set`]).
pub fn init_logging(format: LogFormat) -> LogLevel {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let environment = tracing_subscriber::EnvFilter::try_from_default_env().ok();
    let from_environment = environment.is_some();
    let filter = environment.unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter).with(RecentProblems);
    match format {
        LogFormat::Human => {
            // Colors only for a terminal: not in files, nor in the journal.
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            registry.with(tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr)).init()
        }
        LogFormat::Json => registry.with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)).init(),
    }
    LogLevel { handle, from_environment }
}

/// How long warnings and errors are remembered for `status`.
const PROBLEM_MEMORY: std::time::Duration = std::time::Duration::from_secs(3600);
/// Most warnings and errors remembered.
const MAX_PROBLEMS: usize = 1000;
/// The latest problems `status` lists with their text.
pub const RECENT_PROBLEMS_LISTED: usize = 20;
/// Longest text kept of one problem.
const MAX_PROBLEM_TEXT: usize = 1000;

/// A warning or error logged lately.
struct Problem {
    at: std::time::Instant,
    at_unix: f64,
    error: bool,
    text: String,
}

static PROBLEMS: std::sync::Mutex<std::collections::VecDeque<Problem>> = std::sync::Mutex::new(std::collections::VecDeque::new());

/// Warnings and errors logged in the last hour, for `status`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Problems {
    #[serde(rename = "errors_last_hour", default)]
    pub errors: u64,
    #[serde(rename = "warnings_last_hour", default)]
    pub warnings: u64,
    /// The last error's message, if any in the last hour.
    #[serde(default)]
    pub last_error: Option<String>,
    /// The latest warnings and errors of the last hour, oldest first, with
    /// their fields (the path an operation was refused on, say).
    #[serde(rename = "recent_problems", default)]
    pub recent: Vec<RecentProblem>,
}

/// One warning or error as logged.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecentProblem {
    pub at_unix: f64,
    /// `ERROR` or `WARN`.
    pub level: String,
    pub message: String,
}

/// What was logged at `WARN` or `ERROR` in the last hour.
pub fn recent_problems() -> Problems {
    let problems = PROBLEMS.lock().unwrap_or_else(|e| e.into_inner());
    let recent: Vec<&Problem> = problems.iter().filter(|p| p.at.elapsed() < PROBLEM_MEMORY).collect();
    let mut found = Problems::default();
    for problem in &recent {
        if problem.error {
            found.errors += 1;
            found.last_error = Some(problem.text.clone());
        } else {
            found.warnings += 1;
        }
    }
    let listed = recent.len().saturating_sub(RECENT_PROBLEMS_LISTED);
    found.recent = recent[listed..]
        .iter()
        .map(|p| RecentProblem {
            at_unix: p.at_unix,
            level: if p.error { "ERROR" } else { "WARN" }.to_string(),
            message: p.text.clone(),
        })
        .collect();
    found
}

/// Remembers warnings and errors for [`recent_problems`].
struct RecentProblems;

/// An event's message followed by its other fields as `name=value`.
#[derive(Default)]
struct ProblemText {
    message: String,
    fields: String,
}

impl ProblemText {
    fn add(&mut self, field: &tracing::field::Field, value: std::fmt::Arguments<'_>) {
        use std::fmt::Write;
        if field.name() == "message" {
            let _ = self.message.write_fmt(value);
        } else {
            let _ = write!(self.fields, " {}={}", field.name(), value);
        }
    }

    fn into_text(self) -> String {
        let mut text = self.message + &self.fields;
        if text.len() > MAX_PROBLEM_TEXT {
            let mut end = MAX_PROBLEM_TEXT;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push('…');
        }
        text
    }
}

impl tracing::field::Visit for ProblemText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.add(field, format_args!("{value:?}"));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.add(field, format_args!("{value}"));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RecentProblems {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let level = *event.metadata().level();
        if level > tracing::Level::WARN {
            return;
        }
        let mut text = ProblemText::default();
        event.record(&mut text);
        let at_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let mut problems = PROBLEMS.lock().unwrap_or_else(|e| e.into_inner());
        while problems.len() >= MAX_PROBLEMS || problems.front().is_some_and(|p| p.at.elapsed() >= PROBLEM_MEMORY) {
            problems.pop_front();
        }
        problems.push_back(Problem { at: std::time::Instant::now(), at_unix, error: level == tracing::Level::ERROR, text: text.into_text() });
    }
}

/// Completes on each SIGHUP (`systemctl reload`). Call inside a tokio runtime.
pub fn reload_signal() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
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
