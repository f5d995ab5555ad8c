//! The durable replication state: the highest sequence number whose effects are
//! on disk, kept in `<root>/.sluice/state` so a restarted receiver tells the
//! agent where to resume.

use std::fs;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::apply::STATE_DIR;

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading, writing or syncing the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file does not hold a sequence number.
    #[error("{}: not a sequence number: {content:?}", path.display())]
    Corrupt { path: PathBuf, content: String },
}

/// The state file of one root.
#[derive(Clone)]
pub struct State {
    dir: PathBuf,
    file: PathBuf,
    /// Present while a receiver runs; found at start, it says the last run did
    /// not stop cleanly.
    running: PathBuf,
    unclean: bool,
    /// The highest sequence number stored, shared by clones: a background flush
    /// that finishes after a newer one must not store an older number.
    stored: Arc<Mutex<u64>>,
}

impl State {
    /// Uses `<root>/.sluice/`, creating it (mode 0700) when missing.
    pub fn open(root: &Path) -> Result<State, StateError> {
        let dir = root.join(STATE_DIR);
        let io = |source| StateError::Io {
            path: dir.clone(),
            source,
        };
        match fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(io(std::io::Error::other("exists and is not a directory"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::DirBuilder::new().mode(0o700).create(&dir).map_err(io)?;
            }
            Err(e) => return Err(io(e)),
        }
        let file = dir.join("state");
        let running = dir.join("running");
        let unclean = fs::symlink_metadata(&running).is_ok();
        fs::File::create(&running).and_then(|_| fs::File::open(&dir)?.sync_all()).map_err(io)?;
        Ok(State { dir, file, running, unclean, stored: Arc::new(Mutex::new(0)) })
    }

    /// True when the previous run did not stop cleanly (it was killed, or the
    /// machine went down): what it applied after its last durable sequence number
    /// may be on disk.
    pub fn unclean(&self) -> bool {
        self.unclean
    }

    /// Records a clean stop; call once everything applied is durable.
    pub fn mark_stopped(&self) -> Result<(), StateError> {
        let io = |source| StateError::Io { path: self.running.clone(), source };
        match fs::remove_file(&self.running) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        fs::File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io)
    }

    /// The durable sequence number, 0 when none was ever stored.
    pub fn load(&self) -> Result<u64, StateError> {
        match fs::read_to_string(&self.file) {
            Ok(text) => text.trim().parse().map_err(|_| StateError::Corrupt {
                path: self.file.clone(),
                content: text,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(source) => Err(StateError::Io {
                path: self.file.clone(),
                source,
            }),
        }
    }

    /// Stores `seq` atomically (temp file, fsync, rename, fsync of the directory),
    /// so a crash leaves either the old or the new number.
    pub fn store(&self, seq: u64) -> Result<(), StateError> {
        let mut stored = self.stored.lock().unwrap_or_else(|e| e.into_inner());
        if seq <= *stored {
            return Ok(());
        }
        self.write(seq)?;
        *stored = seq;
        Ok(())
    }

    fn write(&self, seq: u64) -> Result<(), StateError> {
        let tmp = self.dir.join("state.tmp");
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Io { path, source }
        };
        let mut file = fs::File::create(&tmp).map_err(io(&tmp))?;
        writeln!(file, "{seq}").map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, &self.file).map_err(io(&self.file))?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::open(dir.path()).unwrap();
        assert_eq!(state.load().unwrap(), 0);
        state.store(42).unwrap();
        assert_eq!(State::open(dir.path()).unwrap().load().unwrap(), 42);
        fs::write(dir.path().join(".sluice/state"), "junk").unwrap();
        assert!(matches!(state.load(), Err(StateError::Corrupt { .. })));
    }
}
