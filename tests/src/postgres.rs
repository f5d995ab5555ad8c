//! A PostgreSQL 15 server on a test tree, run as the `postgres` user: initdb,
//! start, queries, pgbench and its invariants, stopped when dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

use crate::run;

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// True when PostgreSQL 15 and pgbench are installed.
pub fn available() -> bool {
    Path::new(BIN).join("postgres").exists() && Path::new(BIN).join("pgbench").exists()
}

/// Lets the `postgres` user traverse every directory above `path`.
pub fn make_traversable(path: &Path) -> anyhow::Result<()> {
    for dir in path.ancestors().skip(1) {
        if dir == Path::new("/") {
            break;
        }
        run(&format!("chmod o+x '{}'", dir.display()))?;
    }
    Ok(())
}

/// `initdb` of a new cluster in `data` (created, owned by `postgres`).
pub fn init(data: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(data)?;
    make_traversable(data)?;
    run(&format!("chown postgres:postgres '{}'", data.display()))?;
    run(&format!("runuser -u postgres -- {BIN}/initdb -A trust -D '{}' >/dev/null", data.display()))?;
    Ok(())
}

/// A running server, a child of this process (so its exit is reaped here,
/// whatever PID 1 does with orphans).
pub struct Postgres {
    child: Option<Child>,
    socket_dir: tempfile::TempDir,
    port: u16,
}

/// The `postgres` user's uid and gid.
fn postgres_ids() -> anyhow::Result<(u32, u32)> {
    let user = nix::unistd::User::from_name("postgres")?.context("no `postgres` user")?;
    Ok((user.uid.as_raw(), user.gid.as_raw()))
}

impl Postgres {
    /// Starts a server on `data` listening only on a Unix socket of its own;
    /// waits until it accepts connections (after crash recovery, if any).
    pub fn start(data: &Path, port: u16) -> anyhow::Result<Postgres> {
        use std::os::unix::process::CommandExt;
        let socket_dir = tempfile::Builder::new().prefix("sluice-pg-").tempdir()?;
        run(&format!("chmod 777 '{}'", socket_dir.path().display()))?;
        make_traversable(socket_dir.path())?;
        let log = std::fs::File::create(socket_dir.path().join("server.log"))?;
        let (uid, gid) = postgres_ids()?;
        let child = Command::new(Path::new(BIN).join("postgres"))
            .arg("-D")
            .arg(data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses="])
            .arg("-k")
            .arg(socket_dir.path())
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting postgres")?;
        let mut server = Postgres { child: Some(child), socket_dir, port };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            if let Some(child) = server.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                server.child = None;
                bail!("postgres exited with {status}\nserver log:\n{}", server.log());
            }
            if server.sql("select 1").is_ok() {
                return Ok(server);
            }
            if std::time::Instant::now() >= deadline {
                bail!("postgres did not accept connections within 120 s\nserver log:\n{}", server.log());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.socket_dir.path().join("server.log")).unwrap_or_default()
    }

    fn connection(&self) -> String {
        format!("-h {} -p {} -U postgres", self.socket_dir.path().display(), self.port)
    }

    /// Runs `sql` with psql and returns its unaligned output.
    pub fn sql(&self, sql: &str) -> anyhow::Result<String> {
        let out = run(&format!("psql {} -d postgres -At -v ON_ERROR_STOP=1 -c \"{sql}\"", self.connection()))?;
        Ok(out.trim().to_owned())
    }

    /// `pgbench -i` at `scale`.
    pub fn pgbench_init(&self, scale: u32) -> anyhow::Result<()> {
        run(&format!("{BIN}/pgbench {} -i -q -s {scale} postgres 2>&1", self.connection())).map(drop)
    }

    /// Starts pgbench's TPC-B-like load with `clients` for `seconds`, in the background.
    pub fn pgbench(&self, clients: u32, seconds: u32) -> anyhow::Result<Child> {
        Command::new("sh")
            .arg("-c")
            .arg(format!("exec {BIN}/pgbench {} -c {clients} -T {seconds} -n postgres", self.connection()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting pgbench")
    }

    /// pgbench's invariants: the balances of accounts, tellers and branches each
    /// sum to the deltas in the history. Returns the number of transactions in
    /// the history.
    pub fn check_pgbench_invariants(&self) -> anyhow::Result<u64> {
        for table in ["accounts", "tellers", "branches"] {
            let (balance, history) = (
                self.sql(&format!("select coalesce(sum({}balance), 0) from pgbench_{table}", &table[..1]))?,
                self.sql("select coalesce(sum(delta), 0) from pgbench_history")?,
            );
            if balance != history {
                bail!("pgbench_{table}: balances sum to {balance}, the history to {history}");
            }
        }
        Ok(self.sql("select count(*) from pgbench_history")?.parse()?)
    }

    /// Stops the server at once, as a crash would (SIGQUIT: immediate shutdown).
    pub fn stop_immediate(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGQUIT)?;
        child.wait()?;
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.stop_immediate();
    }
}
