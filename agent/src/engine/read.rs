//! Reading dirty ranges into operations: writes, punched holes, attributes, and
//! the answers to the receiver's `Want`s.

use super::*;

impl Engine {
    /// Reads every dirty range and emits its writes and attributes, oldest first.
    pub fn flush(&mut self, out: &mut Vec<PendingOp>) {
        self.flush_within_budget(out);
    }

    /// [`Engine::flush`], reading no more than [`Engine::read_budget`]; true when
    /// nothing dirty was left behind for lack of budget (or held).
    pub(super) fn flush_within_budget(&mut self, out: &mut Vec<PendingOp>) -> bool {
        if self.data_held {
            return false;
        }
        if self.dirty.is_empty() {
            self.release_barriers(out);
            return true;
        }
        let mut budget = self.read_budget;
        let complete = self.flush_dirty(&mut budget, out);
        self.read_budget = budget;
        if complete {
            self.release_barriers(out);
        }
        complete
    }

    pub(super) fn flush_dirty(&mut self, budget: &mut u64, out: &mut Vec<PendingOp>) -> bool {
        let mut order: Vec<(u64, u64)> = self.dirty.iter().map(|(ino, d)| (d.first_ns, *ino)).collect();
        order.sort_unstable();
        for (_, ino) in order {
            if *budget == 0 {
                // The rest stays dirty for the next flush, and so do the barriers
                // behind it.
                return false;
            }
            let Some(dirty) = self.dirty.remove(&ino) else { continue };
            let Some(path) = self.index.path_of(ino) else { continue };
            match self.index.kind(ino) {
                Some(NodeKind::File) => {
                    if let Err(dirty) = self.flush_file(ino, &path, dirty, budget, out) {
                        // Renamed after the change, and the rename event is still on its
                        // way: try again once the index has caught up.
                        if crate::session::monotonic_ns().saturating_sub(dirty.first_ns) > REOPEN_PATIENCE_NS {
                            self.request_rescan(format!("{path} changed but cannot be opened"));
                        } else {
                            self.dirty.insert(ino, dirty);
                        }
                    }
                }
                Some(_) => self.flush_attrs(ino, &path, dirty.first_ns, dirty.xattrs, out),
                None => {}
            }
        }
        *budget > 0 || self.dirty.is_empty()
    }

    /// Sends the barriers held back while data was held, now that it is read.
    fn release_barriers(&mut self, out: &mut Vec<PendingOp>) {
        for (path, ts) in self.held_barriers.drain(..) {
            out.push(PendingOp { op: Op::Barrier { path }, captured_ns: ts, ino: None });
        }
    }

    /// Emits the writes and attributes of a dirty file, reading at most `budget`
    /// bytes (what is left of the file stays dirty); gives `dirty` back when the
    /// file cannot be found under its indexed path (yet).
    pub(super) fn flush_file(&mut self, ino: u64, path: &RelPath, mut dirty: Dirty, budget: &mut u64, out: &mut Vec<PendingOp>) -> Result<(), Dirty> {
        let file = match self.files.open(ino, path.as_path()) {
            Ok(file) => file,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESTALE)) => return Err(dirty),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(dirty),
            Err(e) => {
                self.request_rescan(format!("cannot open {path}: {e}"));
                return Ok(());
            }
        };
        // The indexed name may hold another file by now: after a rename capture
        // has not reported yet (tried again), or one it cannot see (io_uring: the
        // cross-check repairs both names). Writing there would put this file's
        // bytes into the other one on the standby.
        match std::fs::symlink_metadata(self.root.join(path.as_path())) {
            Ok(live) if live.ino() == ino => {}
            _ => return Err(dirty),
        }
        let Ok(meta) = file.metadata() else { return Ok(()) };
        let size = meta.len();
        let ranges: Vec<(u64, u64)> = dirty.ranges.iter().collect();
        for (start, end) in ranges {
            let end = end.min(size);
            if start >= end {
                continue;
            }
            match self.emit_range(&file, ino, path, (start, end), dirty.first_ns, budget, out) {
                Ok(None) => {}
                Ok(Some(stopped_at)) => {
                    // Metadata and xattrs follow the last of the data, next time.
                    dirty.ranges.remove(0, stopped_at);
                    self.dirty.insert(ino, dirty);
                    return Ok(());
                }
                Err(e) => {
                    self.request_rescan(format!("cannot read {path}: {e}"));
                    return Ok(());
                }
            }
        }
        // Metadata after the data: the receiver's own writes move its mtime.
        let meta = file.metadata().unwrap_or(meta);
        let m = meta_of(&meta);
        let attrs = Attrs { size: Some(meta.len()), mode: Some(m.mode), uid: Some(m.uid), gid: Some(m.gid), mtime: Some(m.mtime) };
        out.push(PendingOp { op: Op::SetAttrs { path: path.clone(), attrs }, captured_ns: dirty.first_ns, ino: Some(ino) });
        if dirty.xattrs {
            self.emit_xattrs(path, dirty.first_ns, out);
        }
        Ok(())
    }

    /// Emits `[start, end)` of `file`: writes for data, punched holes for holes.
    /// Reads at most `budget` bytes; returns where it stopped when that ran out
    /// first.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn emit_range(
        &mut self,
        file: &std::fs::File,
        ino: u64,
        path: &RelPath,
        (start, end): (u64, u64),
        ts: u64,
        budget: &mut u64,
        out: &mut Vec<PendingOp>,
    ) -> io::Result<Option<u64>> {
        for segment in segments(file, start, end)? {
            if !segment.data {
                let op = Op::Fallocate { path: path.clone(), mode: PUNCH_HOLE, offset: segment.start, len: segment.end - segment.start };
                out.push(PendingOp { op, captured_ns: ts, ino: None });
                continue;
            }
            let mut offset = segment.start;
            while offset < segment.end {
                if *budget == 0 {
                    return Ok(Some(offset));
                }
                let data = read_range(file, offset, (segment.end - offset).min(MAX_WRITE))?;
                if data.is_empty() {
                    break;
                }
                self.bytes_read += data.len() as u64;
                let read = data.len() as u64;
                *budget = budget.saturating_sub(read);
                self.remember_mapped_pages(ino, offset, &data);
                let hash = hash(&data);
                out.push(PendingOp { op: Op::Write { path: path.clone(), offset, data, hash }, captured_ns: ts, ino: Some(ino) });
                offset += read;
            }
        }
        Ok(None)
    }

    /// Records what was sent of a file's mapped pages, so a re-check sends a page
    /// again only if it changed since.
    pub(super) fn remember_mapped_pages(&mut self, ino: u64, offset: u64, data: &[u8]) {
        // What one standby alone was sent is not what the others hold.
        if self.in_private {
            return;
        }
        let Some(mapped) = self.mapped.get_mut(&ino) else { return };
        // Whole pages inside what was read; a read shorter than a page covers none.
        let (first, end) = (offset.div_ceil(PAGE), (offset + data.len() as u64) / PAGE);
        if first >= end {
            return;
        }
        for (page, seen) in mapped.pages.range_mut(first..end) {
            let at = (page * PAGE - offset) as usize;
            *seen = Some(hash(&data[at..at + PAGE as usize]));
        }
    }

    pub(super) fn emit_xattrs(&mut self, path: &RelPath, ts: u64, out: &mut Vec<PendingOp>) {
        match scan::read_xattrs(&self.root.join(path.as_path())) {
            Ok(Some(xattrs)) => out.push(PendingOp { op: Op::SetXattrs { path: path.clone(), xattrs }, captured_ns: ts, ino: None }),
            Ok(None) => {}
            Err(e) => tracing::warn!(%path, "cannot read extended attributes: {e}"),
        }
    }

    pub(super) fn flush_attrs(&mut self, ino: u64, path: &RelPath, ts: u64, xattrs: bool, out: &mut Vec<PendingOp>) {
        let Ok(meta) = std::fs::symlink_metadata(self.root.join(path.as_path())) else { return };
        if meta.ino() != ino {
            return;
        }
        let m = meta_of(&meta);
        let mode = (!meta.file_type().is_symlink()).then_some(m.mode);
        let attrs = Attrs { size: None, mode, uid: Some(m.uid), gid: Some(m.gid), mtime: Some(m.mtime) };
        out.push(PendingOp { op: Op::SetAttrs { path: path.clone(), attrs }, captured_ns: ts, ino: Some(ino) });
        if xattrs {
            self.emit_xattrs(path, ts, out);
        }
    }

    /// Answers the receiver's `Want`: the blocks whose hashes differ from `theirs`
    /// (holes where the master has holes), then size and metadata. Starts at
    /// block `from` and reads about `budget` bytes at most: returns the block
    /// to go on from when it stopped short (a file of many GiB is answered a
    /// piece at a time, as fast as it is sent, not read into memory whole).
    pub fn answer_want(&mut self, path: &RelPath, theirs: &[Hash], from: usize, budget: u64, ts: u64, out: &mut Vec<PendingOp>) -> Option<usize> {
        let ino = self.index.resolve(path)?;
        let file = self.files.open(ino, path.as_path()).ok()?;
        let meta = file.metadata().ok()?;
        let size = meta.len();
        let holes: Vec<(u64, u64)> = segments(&file, 0, size)
            .unwrap_or_default()
            .into_iter()
            .filter(|s| !s.data)
            .map(|s| (s.start, s.end))
            .collect();
        let in_hole = |start: u64, end: u64| holes.iter().any(|&(s, e)| s <= start && end <= e);
        let has_hole = |start: u64, end: u64| holes.iter().any(|&(s, e)| s < end && start < e);
        let mut block = from;
        let mut offset = (from as u64).saturating_mul(BLOCK_SIZE);
        let mut read = 0u64;
        while offset < size {
            if read >= budget {
                return Some(block);
            }
            let end = (offset + BLOCK_SIZE).min(size);
            let theirs_block = theirs.get(block);
            if in_hole(offset, end) {
                // Punched below, with the rest of the hole.
            } else {
                // The file as it was when its blocks were kept, as far as its
                // size and modification time tell (an inode number used again).
                let changes = (meta.mtime() as u64).wrapping_mul(1_000_000_000).wrapping_add(meta.mtime_nsec() as u64) ^ size.rotate_left(32);
                let cached = self.block_cache.as_ref().and_then(|cache| cache.get(ino, offset, end - offset, changes));
                if let Some((data, _)) = &cached {
                    self.bytes_shared += data.len() as u64;
                }
                let (data, ours) = match cached {
                    Some(block) => block,
                    None => {
                        let data = match read_range(&file, offset, end - offset) {
                            Ok(data) if !data.is_empty() => data,
                            _ => break,
                        };
                        self.bytes_read += data.len() as u64;
                        let ours = hash(&data);
                        if let Some(cache) = &mut self.block_cache {
                            cache.put(ino, offset, changes, &data, ours);
                        }
                        (data, ours)
                    }
                };
                read += data.len() as u64;
                if theirs_block != Some(&ours) {
                    // Part of the block is a hole on the master: send its data and
                    // punch the rest, so the standby's copy keeps the same holes.
                    let split = has_hole(offset, end)
                        && self.emit_range(&file, ino, path, (offset, end), ts, &mut { u64::MAX }, out).is_ok();
                    if !split {
                        out.push(PendingOp { op: Op::Write { path: path.clone(), offset, data, hash: ours }, captured_ns: ts, ino: Some(ino) });
                    }
                }
            }
            offset = end;
            block += 1;
        }
        // Every hole of the master's file is punched on the standby, one call per
        // hole: the standby's copy may hold blocks there that read as zeros
        // (preallocated, unwritten) and so hash like the hole.
        let hole_bytes: u64 = holes.iter().map(|(s, e)| e - s).sum();
        for (start, end) in holes {
            let op = Op::Fallocate { path: path.clone(), mode: PUNCH_HOLE, offset: start, len: end - start };
            out.push(PendingOp { op, captured_ns: ts, ino: None });
        }
        // Nor, when the master's file has no blocks past its end, the standby's.
        let allocated = meta.blocks() * 512;
        let data_bytes = (size - hole_bytes.min(size)).next_multiple_of(4096);
        if allocated <= data_bytes {
            let end = size.next_multiple_of(4096);
            // Far enough for any preallocation, short of every filesystem's size limit.
            let op = Op::Fallocate { path: path.clone(), mode: PUNCH_HOLE, offset: end, len: 1 << 40 };
            out.push(PendingOp { op, captured_ns: ts, ino: None });
        }
        let m = meta_of(&file.metadata().unwrap_or(meta));
        let attrs = Attrs { size: Some(size), mode: Some(m.mode), uid: Some(m.uid), gid: Some(m.gid), mtime: Some(m.mtime) };
        out.push(PendingOp { op: Op::SetAttrs { path: path.clone(), attrs }, captured_ns: ts, ino: Some(ino) });
        None
    }
}

/// Blocks read lately to answer the standbys' wants, with their hashes: when
/// several standbys compare the tree at once (their first sync, or after an
/// outage of the site they share), each block is read and hashed once for all
/// of them. A file's blocks are forgotten at each change capture reports, and
/// served only while its size and modification time are those they were read
/// with; a change whose event is still on its way is sent to every standby
/// after this answer, as it would be had the block been read now.
#[derive(Default)]
pub struct BlockCache {
    blocks: HashMap<(u64, u64), (u64, Vec<u8>, Hash)>,
    order: std::collections::VecDeque<(u64, u64)>,
    bytes: u64,
    /// Inodes with blocks kept (or kept lately): forgetting any other costs nothing.
    inodes: HashSet<u64>,
}

/// Content the block cache holds, at most.
const BLOCK_CACHE_BYTES: u64 = 64 << 20;

impl BlockCache {
    fn get(&self, ino: u64, offset: u64, len: u64, changes: u64) -> Option<(Vec<u8>, Hash)> {
        let (at, data, hash) = self.blocks.get(&(ino, offset))?;
        (*at == changes && data.len() as u64 == len).then(|| (data.clone(), *hash))
    }

    /// Forgets the blocks of `ino`: it changed.
    pub(super) fn forget(&mut self, ino: u64) {
        if self.inodes.remove(&ino) {
            self.blocks.retain(|(cached, _), _| *cached != ino);
            self.order.retain(|(cached, _)| *cached != ino);
            self.bytes = self.blocks.values().map(|(_, data, _)| data.len() as u64).sum();
        }
    }

    fn put(&mut self, ino: u64, offset: u64, changes: u64, data: &[u8], hash: Hash) {
        if let Some((_, old, _)) = self.blocks.insert((ino, offset), (changes, data.to_vec(), hash)) {
            self.bytes -= old.len() as u64;
        } else {
            self.order.push_back((ino, offset));
        }
        self.bytes += data.len() as u64;
        self.inodes.insert(ino);
        while self.bytes > BLOCK_CACHE_BYTES {
            let Some(key) = self.order.pop_front() else { break };
            if let Some((_, old, _)) = self.blocks.remove(&key) {
                self.bytes -= old.len() as u64;
            }
        }
    }
}
