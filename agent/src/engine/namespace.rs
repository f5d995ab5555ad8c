//! Namespace events (create, unlink, rename, link, symlink, metadata changes by
//! path): index updates and the operations that name paths as the standby has them.

use super::*;

impl Engine {
    pub(super) fn namespace(&mut self, pid: u32, kind: &EventKind, ts: u64, out: &mut Vec<PendingOp>) {
        let mut emit = |op: Op| out.push(PendingOp { op, captured_ns: ts, ino: None });
        match kind {
            EventKind::OpenCreate { base, path, target, flags, .. } => match self.place(*base, path) {
                Place::Inside { parent, name, path } => {
                    if target.dev != self.watched_dev {
                        return;
                    }
                    let existing = self.index.lookup(parent, &name);
                    if existing.is_some_and(|e| e != target.ino && self.index.kind(e) == Some(NodeKind::Symlink)) {
                        // Opened through a symlink: the change belongs to its target.
                        if self.index.contains(target.ino) {
                            self.mark(target.ino, None, ts);
                        }
                        return;
                    }
                    // An open with O_CREAT of an existing FIFO or device looks the same.
                    let kind = std::fs::symlink_metadata(self.root.join(path.as_path()))
                        .ok()
                        .filter(|m| m.ino() == target.ino)
                        .map_or(NodeKind::File, |m| kind_of(&m));
                    if kind != NodeKind::File {
                        self.index.insert(parent, &name, target.ino, kind);
                        self.mark(target.ino, None, ts);
                        return;
                    }
                    self.index.insert(parent, &name, target.ino, NodeKind::File);
                    self.outside.remove(&target.ino);
                    self.files.remember(target.ino, path.as_path());
                    let truncate = flags & O_TRUNC != 0;
                    emit(Op::CreateFile { path, mode: 0o600, truncate });
                    if truncate {
                        // Whatever the file holds now, written before or after the
                        // truncation whatever order their events came in.
                        self.mark(target.ino, Some((0, u64::MAX)), ts);
                    }
                    self.mark(target.ino, None, ts);
                }
                Place::Outside => {}
                Place::Unindexed { path } => self.request_repair(path, "file created below an unindexed directory"),
                Place::Unknown => self.request_rescan(format!("file created at an unplaceable path {}", show(path))),
            },
            EventKind::Mkdir { base, path, mode } => match self.place(*base, path) {
                Place::Inside { parent, name, path } => {
                    emit(Op::Mkdir { path: path.clone(), mode: *mode & 0o7777 });
                    if let Some(ino) = self.learn(parent, &name, &path) {
                        self.mark(ino, None, ts);
                    }
                }
                Place::Outside => {}
                Place::Unindexed { path } => self.request_repair(path, "directory created below an unindexed directory"),
                Place::Unknown => self.request_rescan(format!("directory created at an unplaceable path {}", show(path))),
            },
            EventKind::Rmdir { base, path } | EventKind::Unlink { base, path } => match self.place(*base, path) {
                Place::Inside { parent, name, path } => {
                    if let Some(ino) = self.index.unlink(parent, &name)
                        && !self.index.contains(ino) {
                            self.dirty.remove(&ino);
                            self.files.forget(ino);
                        }
                    emit(Op::Remove { path });
                }
                Place::Outside => {}
                Place::Unindexed { path } => self.request_repair(path, "removal below an unindexed directory"),
                Place::Unknown => self.request_rescan(format!("removal at an unplaceable path {}", show(path))),
            },
            EventKind::Rename { from_base, from, to_base, to, flags } => {
                let (from_place, to_place) = (self.place(*from_base, from), self.place(*to_base, to));
                self.rename(from_place, to_place, *flags, ts, out);
            }
            EventKind::Link { existing_base, existing, new_base, new } => {
                match (self.place(*existing_base, existing), self.place(*new_base, new)) {
                    (Place::Inside { parent: ep, name: en, path: existing }, Place::Inside { parent, name, path }) => {
                        match self.index.lookup(ep, &en) {
                            Some(ino) => {
                                let kind = self.index.kind(ino).unwrap_or(NodeKind::File);
                                self.index.insert(parent, &name, ino, kind);
                                emit(Op::HardLink { existing, path });
                            }
                            None => self.move_in(parent, &name, &path, ts, out),
                        }
                    }
                    (Place::Outside | Place::Unindexed { .. }, Place::Inside { parent, name, path }) => {
                        self.move_in(parent, &name, &path, ts, out)
                    }
                    (_, Place::Outside) => {}
                    (_, Place::Unindexed { path }) => self.request_repair(path, "hard link below an unindexed directory"),
                    _ => self.request_rescan(format!("hard link at an unplaceable path {}", show(new))),
                }
            }
            EventKind::Symlink { base, path, target } => match self.place(*base, path) {
                Place::Inside { parent, name, path } => {
                    emit(Op::Symlink { path: path.clone(), target: target.clone() });
                    if target.len() >= CUT_PATH_LEN {
                        // The captured target text was cut; read the real one.
                        self.move_in(parent, &name, &path, ts, out);
                    } else if let Some(ino) = self.learn(parent, &name, &path) {
                        self.mark(ino, None, ts);
                    }
                }
                Place::Outside => {}
                Place::Unindexed { path } => self.request_repair(path, "symlink below an unindexed directory"),
                Place::Unknown => self.request_rescan(format!("symlink at an unplaceable path {}", show(path))),
            },
            EventKind::PathMeta { base, path, flags } => {
                self.path_meta(pid, *base, path, flags & AT_SYMLINK_NOFOLLOW == 0, ts)
            }
            EventKind::PathTruncate { base, path, size } => {
                if let Some(ino) = self.path_target(*base, path, true) {
                    self.truncate(ino, *size, ts, out);
                }
            }
            EventKind::Mknod { base, path, mode, rdev } => match self.place(*base, path) {
                Place::Inside { parent, name, path } if mode & libc::S_IFMT == libc::S_IFIFO => {
                    emit(Op::Mkfifo { path: path.clone(), mode: mode & 0o7777 });
                    if let Some(ino) = self.learn(parent, &name, &path) {
                        self.mark(ino, None, ts);
                    }
                }
                Place::Inside { parent, name, path }
                    if self.options.devices && matches!(mode & libc::S_IFMT, libc::S_IFCHR | libc::S_IFBLK) =>
                {
                    emit(Op::Mknod { path: path.clone(), mode: *mode, rdev: *rdev });
                    if let Some(ino) = self.learn(parent, &name, &path) {
                        self.mark(ino, None, ts);
                    }
                }
                // Device nodes and sockets are not replicated.
                Place::Inside { .. } | Place::Outside => {}
                Place::Unindexed { path } => self.request_repair(path, "node created below an unindexed directory"),
                Place::Unknown => self.request_rescan(format!("node created at an unplaceable path {}", show(path))),
            },
            EventKind::XattrPath { base, path, nofollow, .. } => self.path_change(*base, path, !nofollow, Change::Xattrs, ts),
            EventKind::Write { .. }
            | EventKind::Truncate { .. }
            | EventKind::Fallocate { .. }
            | EventKind::FdMeta { .. }
            | EventKind::Writeback { .. }
            | EventKind::Sync { .. }
            | EventKind::XattrFd { .. }
            | EventKind::IoUringUser { .. }
            | EventKind::Changed { .. }
            | EventKind::Repair { .. } => {}
        }
    }

    pub(super) fn rename(&mut self, from: Place, to: Place, flags: u32, ts: u64, out: &mut Vec<PendingOp>) {
        let exchange = flags & RENAME_EXCHANGE != 0;
        match (from, to) {
            (Place::Inside { parent: fp, name: fname, path: from }, Place::Inside { parent: tp, name: tname, path: to }) => {
                let source = self.index.lookup(fp, &fname);
                let target = self.index.lookup(tp, &tname);
                if source.is_none() || (exchange && target.is_none()) {
                    // What moved is not indexed, so the standby cannot be trusted to
                    // hold it under the old name: both names are made to match.
                    self.request_repair(from, "rename of an unindexed entry");
                    self.request_repair(to, "rename of an unindexed entry");
                    return;
                }
                if exchange {
                    self.index.exchange(fp, &fname, tp, &tname);
                } else {
                    self.index.rename(fp, &fname, tp, &tname);
                }
                let noreplace = flags & RENAME_NOREPLACE != 0;
                out.push(PendingOp { op: Op::Rename { from, to, exchange, noreplace }, captured_ns: ts, ino: None });
            }
            (Place::Inside { parent, name, path }, Place::Outside) => {
                if let Some(ino) = self.index.unlink(parent, &name)
                    && !self.index.contains(ino)
                {
                    self.dirty.remove(&ino);
                }
                if exchange {
                    // What was outside now has this name.
                    self.move_in(parent, &name, &path, ts, out);
                } else {
                    out.push(PendingOp { op: Op::Remove { path }, captured_ns: ts, ino: None });
                }
            }
            (Place::Outside, Place::Inside { parent, name, path }) => {
                if exchange
                    && let Some(ino) = self.index.unlink(parent, &name)
                    && !self.index.contains(ino)
                {
                    self.dirty.remove(&ino);
                }
                self.move_in(parent, &name, &path, ts, out)
            }
            (Place::Outside, Place::Outside) => {}
            (from, to) => {
                let mut repaired = false;
                for place in [from, to] {
                    match place {
                        Place::Inside { path, .. } | Place::Unindexed { path } => {
                            self.request_repair(path, "rename involving an unindexed directory");
                            repaired = true;
                        }
                        Place::Outside => {}
                        Place::Unknown => {
                            self.request_rescan("rename between unplaceable paths");
                            return;
                        }
                    }
                }
                if !repaired {
                    self.request_rescan("rename between unplaceable paths");
                }
            }
        }
    }

    /// Something appeared in the tree from outside it: send it in full.
    pub(super) fn move_in(&mut self, parent: u64, name: &OsStr, path: &RelPath, ts: u64, out: &mut Vec<PendingOp>) {
        let full = self.root.join(path.as_path());
        let Ok(meta) = std::fs::symlink_metadata(&full) else { return };
        let file_type = meta.file_type();
        if file_type.is_dir() {
            // Its whole content is listed and compared, like a fresh tree.
            return self.request_repair(path.clone(), "directory moved into the tree");
        }
        // Another name in the tree may already hold the inode (a second link made
        // from a name outside): the standby links to that copy.
        let root = &self.root;
        let others = if meta.nlink() > 1 { self.index.paths_of(meta.ino()) } else { Vec::new() };
        let linked = others
            .into_iter()
            .find(|other| other != path && std::fs::symlink_metadata(root.join(other.as_path())).is_ok_and(|m| m.ino() == meta.ino()));
        let Some(ino) = self.learn(parent, name, path) else { return };
        if let Some(existing) = linked {
            out.push(PendingOp { op: Op::HardLink { existing, path: path.clone() }, captured_ns: ts, ino: None });
        } else if file_type.is_file() {
            self.send_whole(ino, path, ts, out);
        } else if file_type.is_symlink() {
            let target = std::fs::read_link(&full).map(|t| t.as_os_str().as_bytes().to_vec()).unwrap_or_default();
            out.push(PendingOp { op: Op::Symlink { path: path.clone(), target }, captured_ns: ts, ino: None });
            self.mark(ino, None, ts);
        } else {
            // A FIFO or device node: listed and made as the master has it.
            self.request_repair(path.clone(), "special file moved into the tree");
        }
    }

    pub(super) fn path_meta(&mut self, pid: u32, base: InodeId, raw: &[u8], follow: bool, ts: u64) {
        if raw.starts_with(b"/proc/") {
            return self.proc_fd_meta(pid, raw, ts);
        }
        self.path_change(base, raw, follow, Change::Attrs, ts)
    }

    /// A change addressed by path to an existing entry.
    pub(super) fn path_change(&mut self, base: InodeId, raw: &[u8], follow: bool, change: Change, ts: u64) {
        if let Some(ino) = self.path_target(base, raw, follow) {
            self.note(ino, change, ts);
        }
    }

    /// The indexed inode a path addressed a change to (following a final symlink
    /// with `follow`); asks for a repair or a rescan when it cannot be told.
    pub(super) fn path_target(&mut self, base: InodeId, raw: &[u8], follow: bool) -> Option<u64> {
        if raw.is_empty() {
            // AT_EMPTY_PATH: the change is to the dirfd's own inode.
            return (base.dev == self.watched_dev && self.index.contains(base.ino)).then_some(base.ino);
        }
        match self.place(base, raw) {
            Place::Inside { parent, name, path } => {
                let Some(mut ino) = self.index.lookup(parent, &name) else {
                    self.request_repair(path, "change to an unindexed entry");
                    return None;
                };
                if follow && self.index.kind(ino) == Some(NodeKind::Symlink) {
                    match std::fs::metadata(self.root.join(path.as_path())) {
                        Ok(meta) if self.index.contains(meta.ino()) => ino = meta.ino(),
                        _ => return None,
                    }
                }
                Some(ino)
            }
            Place::Outside => None,
            Place::Unindexed { path } => {
                self.request_repair(path, "change below an unindexed directory");
                None
            }
            Place::Unknown => {
                self.request_rescan(format!("change at an unplaceable path {}", show(raw)));
                None
            }
        }
    }

    /// A metadata change through `/proc/<pid>/fd/<n>` (how glibc changes the mode of
    /// an `O_PATH` descriptor): find the file through the same fd table.
    pub(super) fn proc_fd_meta(&mut self, pid: u32, raw: &[u8], ts: u64) {
        let text = String::from_utf8_lossy(raw);
        let mut parts = text.trim_start_matches("/proc/").splitn(3, '/');
        let owner = match parts.next() {
            Some("self") | Some("thread-self") => pid.to_string(),
            Some(digits) if digits.bytes().all(|b| b.is_ascii_digit()) => digits.to_string(),
            _ => return,
        };
        let (Some("fd"), Some(fd)) = (parts.next(), parts.next()) else { return };
        match std::fs::read_link(format!("/proc/{owner}/fd/{fd}")) {
            Ok(link) => {
                if let Place::Inside { parent, name, .. } = self.place_absolute(link.as_os_str().as_bytes())
                    && let Some(ino) = self.index.lookup(parent, &name) {
                        self.mark(ino, None, ts);
                    }
            }
            Err(_) => self.request_rescan(format!("metadata changed through {text} by a process that is gone")),
        }
    }
}
