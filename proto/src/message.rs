//! Messages exchanged on the replication stream.
//!
//! One QUIC bidirectional stream carries everything, so operations are applied in
//! the order the agent captured them. The agent speaks [`AgentMessage`], the
//! receiver answers with [`ReceiverMessage`].
//!
//! A session is: `Hello` both ways; the agent streams its tree as `Manifest`
//! chunks and `ManifestEnd`; the receiver answers `Want` for every file whose copy
//! differs (with the hashes of the blocks it holds) and `ManifestDone`; from then
//! on the agent sends numbered [`Op`]s and the receiver acknowledges each applied
//! sequence number with `Ack` (cumulative), and each sequence number it has made
//! durable with `Durable`, so the agent can forget what it would otherwise resend.
//!
//! The agent may also send a scoped manifest: entries listed one by one, ended by
//! `ScopedManifestEnd`, which compares only those entries and deletes nothing but
//! what the named subtrees hold and the manifest does not list (a targeted repair
//! of part of the tree, or the files to verify after a restart).
//!
//! An operation the receiver cannot apply to its copy (the copy diverged from what
//! the agent believes it holds) is skipped and reported with `Diverged`, so the
//! stream goes on while the agent repairs those paths. Only a standby that cannot
//! take writes at all (disk full, read-only, I/O errors) stops the stream with
//! `Refused`.
//!
//! `Verify` asks for the blake3 hashes of some blocks of a file as the receiver
//! holds it at that point of the stream (answered with `Hashes`): the background
//! verifier compares them with the master's.

use crate::RelPath;
use crate::limit;
use crate::lineage::Lineage;
use serde::{Deserialize, Serialize};

/// Most entries in one `Manifest` message.
pub const MAX_MANIFEST_ENTRIES: usize = 4096;
/// Most operations in one `Ops` message.
pub const MAX_OPS: usize = 4096;
/// Most block hashes in one `Want` or `Hashes` message (4 GiB of file content);
/// a larger file's hashes take several `Want`s.
pub const MAX_WANT_HASHES: usize = 65_536;
/// Most bytes of file content in one `Write`.
pub const MAX_WRITE_LEN: usize = 4 << 20;
/// Longest symlink target (`PATH_MAX`).
pub const MAX_SYMLINK_TARGET: usize = 4096;
/// Most extended attributes of one entry: Linux lists at most 64 KiB of names.
pub const MAX_XATTRS: usize = 10_000;
/// Longest extended attribute name (`XATTR_NAME_MAX`) and value (`XATTR_SIZE_MAX`).
pub const MAX_XATTR_NAME: usize = 255;
pub const MAX_XATTR_VALUE: usize = 65_536;
/// Most subtrees one scoped manifest names, and paths one `Diverged` names.
pub const MAX_PATHS: usize = 4096;
/// Longest agent name in `Hello`, and reason in `Refused` or `Diverged`.
pub const MAX_NAME: usize = 256;
pub const MAX_REASON: usize = 64 * 1024;
/// Entries in one `Listing` (the receiver sends at most 1024).
pub const MAX_LISTED: usize = 4096;

/// A 32-byte blake3 digest.
pub type Hash = [u8; 32];

/// Modification time in nanoseconds precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

/// What a directory entry is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// A regular file of `size` bytes.
    File { size: u64 },
    Dir,
    /// A symbolic link and its target text.
    Symlink {
        #[serde(serialize_with = "serde_bytes::serialize", deserialize_with = "limit::bytes::<_, MAX_SYMLINK_TARGET>")]
        target: Vec<u8>,
    },
    Fifo,
    /// A character or block device node (replicated only when the agent is configured to).
    Device { block: bool, rdev: u64 },
}

/// One extended attribute (`user.*`, `trusted.*`, `security.*`, and POSIX ACLs as
/// `system.posix_acl_access` / `system.posix_acl_default`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    #[serde(serialize_with = "serde_bytes::serialize", deserialize_with = "limit::bytes::<_, MAX_XATTR_NAME>")]
    pub name: Vec<u8>,
    #[serde(serialize_with = "serde_bytes::serialize", deserialize_with = "limit::bytes::<_, MAX_XATTR_VALUE>")]
    pub value: Vec<u8>,
}

/// Metadata kept for every entry (like `rsync -a --numeric-ids`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Permission bits (and setuid/setgid/sticky), without the file type.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
}

/// One entry of the master's tree, sent during the initial sync.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: RelPath,
    pub kind: EntryKind,
    pub meta: Meta,
    /// For an entry (not a directory) with several names: the first path the
    /// manifest listed for the same inode, so the receiver makes a hard link, not a copy.
    pub hardlink_of: Option<RelPath>,
    /// How many names the inode has in the tree on the master (1 for most): a
    /// standby copy with more shares its content with a name it should not.
    pub names: u32,
    /// Extended attributes, sorted by name.
    #[serde(deserialize_with = "limit::vec::<_, _, MAX_XATTRS>")]
    pub xattrs: Vec<Xattr>,
    /// Compare this file block by block even if size and mtime match: it changed
    /// while events were lost, and a size/mtime check could be fooled.
    pub verify: bool,
}

/// One directory entry as the standby holds it, for the verifier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    #[serde(serialize_with = "serde_bytes::serialize", deserialize_with = "limit::bytes::<_, MAX_NAME>")]
    pub name: Vec<u8>,
    pub kind: EntryKind,
    pub meta: Meta,
    /// [`xattrs_digest`] of its extended attributes (files and directories only).
    pub xattrs: Hash,
    /// Its number of names (hard links).
    pub links: u32,
}

/// True for the extended attributes sluice replicates: all but `trusted.*`, which
/// only `CAP_SYS_ADMIN` reads or writes and the receiver gives that up. (On XFS,
/// `trusted.SGI_ACL_*` are the stored form of the POSIX ACLs, which are replicated
/// as `system.posix_acl_*`.)
pub fn is_replicated_xattr(name: &[u8]) -> bool {
    !name.starts_with(b"trusted.")
}

/// A digest of a set of extended attributes, whatever order they are listed in.
pub fn xattrs_digest(xattrs: &[Xattr]) -> Hash {
    let mut sorted: Vec<&Xattr> = xattrs.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut hasher = blake3::Hasher::new();
    for xattr in sorted {
        hasher.update(&(xattr.name.len() as u64).to_le_bytes());
        hasher.update(&xattr.name);
        hasher.update(&(xattr.value.len() as u64).to_le_bytes());
        hasher.update(&xattr.value);
    }
    *hasher.finalize().as_bytes()
}

fn xattrs_len(xattrs: &[Xattr]) -> usize {
    xattrs.iter().map(|x| x.name.len() + x.value.len() + 8).sum()
}

impl Entry {
    /// About how many bytes the entry takes encoded (an upper estimate).
    pub fn encoded_len_hint(&self) -> usize {
        let target = match &self.kind {
            EntryKind::Symlink { target } => target.len(),
            _ => 0,
        };
        let link = self.hardlink_of.as_ref().map_or(0, |p| p.as_bytes().len());
        64 + self.path.as_bytes().len() + target + link + xattrs_len(&self.xattrs)
    }
}

/// Splits a manifest into chunks for `Manifest` messages: at most
/// [`MAX_MANIFEST_ENTRIES`] entries and about `max_bytes` encoded each (a chunk
/// holds at least one entry).
pub fn manifest_chunks(entries: &[Entry], max_bytes: usize) -> Vec<&[Entry]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, entry) in entries.iter().enumerate() {
        let len = entry.encoded_len_hint();
        if i > start && (i - start >= MAX_MANIFEST_ENTRIES || bytes + len > max_bytes) {
            chunks.push(&entries[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += len;
    }
    if start < entries.len() {
        chunks.push(&entries[start..]);
    }
    chunks
}

/// Attribute changes; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attrs {
    pub size: Option<u64>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mtime: Option<Timestamp>,
}

/// One replication operation, applied by the receiver in sequence order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Write `data` at `offset`; `hash` is blake3 of `data`, checked before writing.
    /// Creates the file if it does not exist.
    Write {
        path: RelPath,
        offset: u64,
        #[serde(serialize_with = "serde_bytes::serialize", deserialize_with = "limit::bytes::<_, MAX_WRITE_LEN>")]
        data: Vec<u8>,
        hash: Hash,
    },
    /// Change size and/or metadata of an existing entry.
    SetAttrs { path: RelPath, attrs: Attrs },
    /// Create an empty regular file (or truncate an existing one to zero when `truncate`).
    CreateFile { path: RelPath, mode: u32, truncate: bool },
    Mkdir { path: RelPath, mode: u32 },
    Symlink {
        path: RelPath,
        #[serde(serialize_with = "serde_bytes::serialize", deserialize_with = "limit::bytes::<_, MAX_SYMLINK_TARGET>")]
        target: Vec<u8>,
    },
    HardLink { existing: RelPath, path: RelPath },
    Mkfifo { path: RelPath, mode: u32 },
    /// Remove a file, symlink or FIFO; a directory is removed with everything below it.
    Remove { path: RelPath },
    /// Rename `from` to `to` (replacing `to` unless `noreplace`); with `exchange`
    /// the two names swap.
    Rename { from: RelPath, to: RelPath, exchange: bool, noreplace: bool },
    /// fallocate(2) with the master's `mode` (FALLOC_FL_* bits): holes are punched,
    /// ranges zeroed, collapsed or inserted on the standby exactly as on the master.
    Fallocate { path: RelPath, mode: u32, offset: u64, len: u64 },
    /// Replace the entry's extended attributes with exactly `xattrs`.
    SetXattrs {
        path: RelPath,
        #[serde(deserialize_with = "limit::vec::<_, _, MAX_XATTRS>")]
        xattrs: Vec<Xattr>,
    },
    /// Create a device node (`mode` includes S_IFCHR or S_IFBLK).
    Mknod { path: RelPath, mode: u32, rdev: u64 },
    /// Set the size of an existing regular file, in stream order: a shrink must
    /// happen before the writes that follow it, not at the end as a final size.
    Truncate { path: RelPath, size: u64 },
    /// The master made `path` (or, for `None`, its whole filesystem) durable with
    /// fsync, fdatasync, sync_file_range, msync or syncfs: everything before this op
    /// must be durable on the standby before it is acknowledged.
    Barrier { path: Option<RelPath> },
}

static ROOT: RelPath = RelPath::EMPTY;

impl Op {
    /// The path the operation changes first, for logs.
    pub fn path(&self) -> &RelPath {
        match self {
            Op::Write { path, .. }
            | Op::SetAttrs { path, .. }
            | Op::CreateFile { path, .. }
            | Op::Mkdir { path, .. }
            | Op::Symlink { path, .. }
            | Op::HardLink { path, .. }
            | Op::Mkfifo { path, .. }
            | Op::Fallocate { path, .. }
            | Op::SetXattrs { path, .. }
            | Op::Mknod { path, .. }
            | Op::Truncate { path, .. }
            | Op::Remove { path } => path,
            Op::Rename { from, .. } => from,
            Op::Barrier { path } => path.as_ref().unwrap_or(&ROOT),
        }
    }

    /// Every path the operation names (both names of a rename or a hard link).
    pub fn paths(&self) -> Vec<&RelPath> {
        match self {
            Op::Rename { from, to, .. } => vec![from, to],
            Op::HardLink { existing, path } => vec![existing, path],
            Op::Barrier { path: None } => Vec::new(),
            other => vec![other.path()],
        }
    }

    /// About how many bytes the operation takes encoded (an upper estimate), to
    /// size frames.
    pub fn encoded_len_hint(&self) -> usize {
        let paths: usize = self.paths().iter().map(|p| p.as_bytes().len()).sum();
        let extra = match self {
            Op::Write { data, .. } => data.len(),
            Op::Symlink { target, .. } => target.len(),
            Op::SetXattrs { xattrs, .. } => xattrs_len(xattrs),
            _ => 0,
        };
        64 + paths + extra
    }

    /// Bytes of file content the operation carries.
    pub fn payload_len(&self) -> u64 {
        match self {
            Op::Write { data, .. } => data.len() as u64,
            _ => 0,
        }
    }
}

/// An [`Op`] with its sequence number and when it was captured on the master.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqOp {
    pub seq: u64,
    /// Wall-clock time of the capture (Unix epoch, ns), for the receiver's lag gauge.
    pub captured_unix_ns: u64,
    pub op: Op,
}

/// Messages from the agent to the receiver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentMessage {
    Hello {
        version: u32,
        #[serde(deserialize_with = "limit::string::<_, MAX_NAME>")]
        agent: String,
        /// The master tree's history: a standby promoted out of it refuses it
        /// (`Fenced`), an old master's tree it descends from follows it.
        lineage: Lineage,
        /// How far the master got in its generation (to judge a split brain).
        activity: crate::lineage::Activity,
    },
    /// Part of the master's tree, in walk order (parents before children).
    Manifest(#[serde(deserialize_with = "limit::vec::<_, _, MAX_MANIFEST_ENTRIES>")] Vec<Entry>),
    /// The whole tree has been listed.
    ManifestEnd,
    Op(SeqOp),
    /// Several operations in one frame (small ops are batched to save overhead).
    Ops(#[serde(deserialize_with = "limit::vec::<_, _, MAX_OPS>")] Vec<SeqOp>),
    /// Ends a manifest that lists only some entries: they are compared; below each
    /// directory of `subtrees` (which the manifest lists whole) whatever is not
    /// listed is removed; nothing else on the standby is touched.
    ScopedManifestEnd {
        #[serde(deserialize_with = "limit::vec::<_, _, MAX_PATHS>")]
        subtrees: Vec<RelPath>,
    },
    /// Asks for the entries of directory `path` as the receiver holds them once
    /// everything sent before this message is applied: at most `max` of them, in
    /// byte order of their names, starting after `after`. Answered with `Listing`.
    List {
        id: u64,
        path: RelPath,
        #[serde(serialize_with = "serde_bytes::serialize", deserialize_with = "limit::bytes::<_, MAX_NAME>")]
        after: Vec<u8>,
        max: u32,
    },
    /// Asks for the hashes of `blocks` blocks of `path` from byte `offset` (a
    /// multiple of [`crate::blocks::BLOCK_SIZE`]) as the receiver holds them once
    /// everything sent before this message is applied. Answered with `Hashes`.
    Verify { id: u64, path: RelPath, offset: u64, blocks: u32 },
    /// Operations numbered below `next_seq` that follow may skip numbers: they
    /// are resent after a reconnection (the data writes among them are read
    /// again and sent under new numbers), or follow operations dropped for a
    /// comparison of the whole tree. From `next_seq` on, each operation is
    /// numbered one after the one before; anything else is refused.
    Skip { next_seq: u64 },
    /// A planned switchover: once everything sent before this is applied and
    /// durable, the standby becomes a primary of a new generation and answers
    /// `Promoted`; the stream ends there.
    Promote,
    /// A failback sent everything the old primary's [`crate::lineage::Unsent`]
    /// and the new master's changes since the fork named: once what came
    /// before is applied, the standby stops keeping what it replaces.
    FailbackDone,
}

/// Messages from the receiver to the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReceiverMessage {
    Hello {
        version: u32,
        /// Highest sequence number the receiver has applied and made durable.
        durable_seq: u64,
        /// The receiver did not stop cleanly last time and has applied nothing
        /// since: operations after `durable_seq` may or may not be applied, so
        /// replaying one that is not idempotent (a rename) could do harm.
        uncertain: bool,
        /// The standby tree's history as of this connection (the master's, or a
        /// fork of it).
        lineage: Lineage,
        /// The standby is an old primary following the master promoted out of
        /// it, and its failback has not finished: what it changed that the new
        /// master never received, as far as its agent knew.
        failback: Option<crate::lineage::Unsent>,
    },
    /// The standby will not take this master's stream: it was promoted out of
    /// the master's generation (or holds an unrelated one). Sent instead of
    /// `Hello`; the connection closes.
    Fenced {
        #[serde(deserialize_with = "limit::string::<_, MAX_REASON>")]
        reason: String,
        lineage: Lineage,
    },
    /// The answer to `Promote`: the standby is a primary of `lineage.current`,
    /// holding every operation up to `durable_seq` on disk; `at_barrier` when the
    /// last of them was an fsync barrier, `consistent_unix_ns` the master's
    /// capture time of it.
    Promoted {
        durable_seq: u64,
        at_barrier: bool,
        consistent_unix_ns: u64,
        lineage: Lineage,
    },
    /// The receiver's copy of `path` (`size` bytes) differs: `hashes` are blake3
    /// of its [`crate::blocks::BLOCK_SIZE`] blocks from block `first_block` on.
    /// A file's hashes come in as many `Want`s as it takes, in block order, the
    /// last one marked `last`; blocks no `Want` covers are holes (all zeros) in
    /// the copy, so a sparse file costs no hashes for its holes.
    Want {
        path: RelPath,
        size: u64,
        first_block: u64,
        #[serde(deserialize_with = "limit::vec::<_, _, MAX_WANT_HASHES>")]
        hashes: Vec<Hash>,
        last: bool,
    },
    /// Every `Want` for the manifest has been sent; `wanted` counts them.
    ManifestDone { wanted: u64 },
    /// Every operation up to and including `seq` has been applied.
    Ack { seq: u64 },
    /// Operation `seq` could not be applied because the standby cannot take
    /// writes (disk full, read-only, I/O errors); the stream stops there.
    Refused {
        seq: u64,
        #[serde(deserialize_with = "limit::string::<_, MAX_REASON>")]
        reason: String,
    },
    /// Operation `seq` (0: an entry of a manifest) did not fit the standby's copy
    /// and was skipped; the copy at `paths` differs from the master's and must be
    /// repaired.
    Diverged {
        seq: u64,
        #[serde(deserialize_with = "limit::vec::<_, _, MAX_PATHS>")]
        paths: Vec<RelPath>,
        #[serde(deserialize_with = "limit::string::<_, MAX_REASON>")]
        reason: String,
    },
    /// The answer to `List { id, .. }`: entries in name order (without the
    /// receiver's own top-level `.sluice` and `lost+found`), `more` when the
    /// directory holds further ones; `entries` empty and `exists` false when
    /// `path` is not a directory on the standby.
    Listing {
        id: u64,
        exists: bool,
        #[serde(deserialize_with = "limit::vec::<_, _, MAX_LISTED>")]
        entries: Vec<Listed>,
        more: bool,
    },
    /// The answer to `Verify { id, .. }`: the file's size and the hashes of the
    /// asked blocks that exist (fewer at the end of the file); `size` is `None`
    /// when `path` is not a regular file on the standby.
    Hashes {
        id: u64,
        size: Option<u64>,
        #[serde(deserialize_with = "limit::vec::<_, _, MAX_WANT_HASHES>")]
        hashes: Vec<Hash>,
    },
    /// Every operation up to and including `seq` is on the standby's disk: the
    /// agent no longer needs to be able to resend it.
    Durable { seq: u64 },
}
