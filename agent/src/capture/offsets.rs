//! Kernel struct field offsets, read from the running kernel's BTF.
//!
//! The eBPF programs carry no CO-RE relocations; they walk structs at the
//! offsets computed here, so layout changes between kernels (e.g. the
//! `struct file` reshuffles of 6.x) are absorbed at start-up.

use std::path::Path;

use btf_rs::{Btf, Type};
use sluice_common::KernelOffsets;

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Why a field offset could not be determined.
#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    /// The BTF blob could not be read or parsed.
    #[error("reading BTF from {path}: {source}")]
    Read { path: String, source: btf_rs::Error },
    /// No struct of that name is described by the BTF.
    #[error("struct {0} not found in kernel BTF")]
    NoStruct(&'static str),
    /// The struct exists but has no such member, even inside anonymous members.
    #[error("struct {strukt} has no member {field}")]
    NoField {
        strukt: &'static str,
        field: &'static str,
    },
    /// The member is a bitfield or otherwise not byte-aligned.
    #[error("{strukt}.{field} is not byte-aligned")]
    Unaligned {
        strukt: &'static str,
        field: &'static str,
    },
    /// No enum in the BTF has an enumerator of that name.
    #[error("enumerator {0} not found in kernel BTF")]
    NoEnumerator(&'static str),
    /// A BTF type referenced by the struct could not be resolved.
    #[error("resolving BTF types of {strukt}: {source}")]
    Resolve {
        strukt: &'static str,
        source: btf_rs::Error,
    },
}

/// Reads [`KernelOffsets`] from `/sys/kernel/btf/vmlinux`.
pub fn from_vmlinux() -> Result<KernelOffsets, OffsetsError> {
    from_file(Path::new(VMLINUX_BTF))
}

/// Reads [`KernelOffsets`] from a BTF file.
pub fn from_file(path: &Path) -> Result<KernelOffsets, OffsetsError> {
    let btf = Btf::from_file(path).map_err(|source| OffsetsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    from_btf(&btf)
}

/// Resolves every offset the programs need.
pub fn from_btf(btf: &Btf) -> Result<KernelOffsets, OffsetsError> {
    let f = |s, m| field_offset(btf, s, m);
    // `struct file`'s count became a `file_ref_t f_ref` (one reference = 0) in 6.13.
    let (file_f_ref, file_ref_one) = match f("file", "f_ref") {
        Ok(offset) => (offset, 0),
        Err(_) => (f("file", "f_count")?, 1),
    };
    let io = io_uring_offsets(btf);
    let btrfs = btrfs_offsets(btf);
    Ok(KernelOffsets {
        task_files: f("task_struct", "files")?,
        task_fs: f("task_struct", "fs")?,
        files_fdt: f("files_struct", "fdt")?,
        fdt_max_fds: f("fdtable", "max_fds")?,
        fdt_fd: f("fdtable", "fd")?,
        file_f_inode: f("file", "f_inode")?,
        file_f_pos: f("file", "f_pos")?,
        file_f_flags: f("file", "f_flags")?,
        inode_i_ino: f("inode", "i_ino")?,
        inode_i_sb: f("inode", "i_sb")?,
        inode_i_mode: f("inode", "i_mode")?,
        sb_s_dev: f("super_block", "s_dev")?,
        fs_pwd: f("fs_struct", "pwd")?,
        path_dentry: f("path", "dentry")?,
        dentry_d_inode: f("dentry", "d_inode")?,
        folio_flags: f("folio", "flags")?,
        folio_index: f("folio", "index")?,
        folio_flags_1: f("folio", "_flags_1")?,
        pg_head: enumerator(btf, "pageflags", "PG_head")?,
        mapping_host: f("address_space", "host")?,
        inode_i_dentry: f("inode", "i_dentry")?,
        vma_vm_start: f("vm_area_struct", "vm_start")?,
        vma_vm_pgoff: f("vm_area_struct", "vm_pgoff")?,
        vma_vm_file: f("vm_area_struct", "vm_file")?,
        // An anonymous union with `__vm_flags` since 6.3.
        vma_vm_flags: f("vm_area_struct", "vm_flags")?,
        file_f_mapping: f("file", "f_mapping")?,
        mapping_i_pages: f("address_space", "i_pages")?,
        xarray_xa_head: f("xarray", "xa_head")?,
        xa_node_shift: f("xa_node", "shift")?,
        xa_node_slots: f("xa_node", "slots")?,
        kiocb_ki_pos: f("kiocb", "ki_pos")?,
        inode_i_size: f("inode", "i_size")?,
        file_f_ref,
        file_ref_one,
        files_count: f("files_struct", "count")?,
        task_ti_status: f("task_struct", "thread_info")? + f("thread_info", "status")?,
        task_tgid: f("task_struct", "tgid")?,
        binprm_buf: f("linux_binprm", "buf")?,
        sb_s_magic: f("super_block", "s_magic")?,
        io_kiocb_file: io.io_kiocb_file,
        io_kiocb_opcode: io.io_kiocb_opcode,
        io_rw_ki_pos: io.io_rw_ki_pos,
        io_open_flags: io.io_open_flags,
        io_open_file_slot: io.io_open_file_slot,
        btrfs_inode_vfs_inode: btrfs.btrfs_inode_vfs_inode,
        btrfs_inode_root: btrfs.btrfs_inode_root,
        btrfs_root_objectid: btrfs.btrfs_root_objectid,
    })
}

/// The btrfs inode and subvolume fields, or all zero when the kernel's BTF does
/// not describe btrfs (not built in; a module's BTF is not read): the programs
/// then cannot tell btrfs subvolumes apart, which [`super::Capture::start`]
/// refuses for a btrfs root.
fn btrfs_offsets(btf: &Btf) -> KernelOffsets {
    let f = |s, m| field_offset(btf, s, m);
    let resolved = (|| {
        Ok::<_, OffsetsError>(KernelOffsets {
            btrfs_inode_vfs_inode: f("btrfs_inode", "vfs_inode")?,
            btrfs_inode_root: f("btrfs_inode", "root")?,
            // `struct btrfs_key` is packed: `root_key` may sit at an odd offset.
            btrfs_root_objectid: f("btrfs_root", "root_key")? + f("btrfs_key", "objectid")?,
            ..KernelOffsets::default()
        })
    })();
    match resolved {
        Ok(o) if o.btrfs_inode_vfs_inode != 0 => o,
        Ok(_) => KernelOffsets::default(),
        Err(error) => {
            tracing::debug!(%error, "btrfs inode layout unknown");
            KernelOffsets::default()
        }
    }
}

/// The io_uring request fields, or all zero when the kernel has no io_uring
/// (the program that needs them is then left unattached).
fn io_uring_offsets(btf: &Btf) -> KernelOffsets {
    let f = |s, m| field_offset(btf, s, m);
    let resolved = (|| {
        // `io_kiocb_to_cmd()` casts the request itself (its `cmd` union starts at
        // offset 0) to `struct io_rw { struct kiocb kiocb; ... }`.
        let cmd = f("io_kiocb", "cmd")?;
        let kiocb = f("io_rw", "kiocb").unwrap_or(0);
        // `struct io_open` (an open request's command); optional: without it every
        // ring open is taken as one that may create a file.
        let (io_open_flags, io_open_file_slot) =
            match (f("io_open", "how"), f("open_how", "flags"), f("io_open", "file_slot")) {
                (Ok(how), Ok(flags), Ok(slot)) => (cmd + how + flags, cmd + slot),
                _ => (0, 0),
            };
        Ok::<_, OffsetsError>(KernelOffsets {
            io_kiocb_file: f("io_kiocb", "file")?,
            io_kiocb_opcode: f("io_kiocb", "opcode")?,
            io_rw_ki_pos: cmd + kiocb + f("kiocb", "ki_pos")?,
            io_open_flags,
            io_open_file_slot,
            ..KernelOffsets::default()
        })
    })();
    match resolved {
        Ok(o) => o,
        Err(error) => {
            tracing::warn!(%error, "io_uring request layout unknown; io_uring writes will not be captured");
            KernelOffsets::default()
        }
    }
}

/// The value of enumerator `name` of `enum enum_name`.
fn enumerator(btf: &Btf, enum_name: &'static str, name: &'static str) -> Result<u64, OffsetsError> {
    let types = btf
        .resolve_types_by_name(enum_name)
        .map_err(|_| OffsetsError::NoEnumerator(name))?;
    for t in types {
        match t {
            Type::Enum(e) => {
                for m in &e.members {
                    if btf.resolve_name(m).is_ok_and(|n| n == name) {
                        return Ok(u64::from(m.val()));
                    }
                }
            }
            Type::Enum64(e) => {
                for m in &e.members {
                    if btf.resolve_name(m).is_ok_and(|n| n == name) {
                        return Ok(m.val());
                    }
                }
            }
            _ => {}
        }
    }
    Err(OffsetsError::NoEnumerator(name))
}

/// Byte offset of `field` in `struct strukt`, looking through anonymous
/// struct/union members (whose own offsets are added).
pub fn field_offset(
    btf: &Btf,
    strukt: &'static str,
    field: &'static str,
) -> Result<u64, OffsetsError> {
    let resolve = |source| OffsetsError::Resolve { strukt, source };
    let types = btf
        .resolve_types_by_name(strukt)
        .map_err(|_| OffsetsError::NoStruct(strukt))?;
    // A name can also belong to a forward declaration; only a sized definition counts.
    let def = types
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => Some(s),
            _ => None,
        })
        .ok_or(OffsetsError::NoStruct(strukt))?;
    let bits = find_member(btf, &def, field)
        .map_err(resolve)?
        .ok_or(OffsetsError::NoField { strukt, field })?;
    if bits % 8 != 0 {
        return Err(OffsetsError::Unaligned { strukt, field });
    }
    Ok(u64::from(bits / 8))
}

/// Bit offset of `field` inside `s`, searching anonymous members depth-first.
fn find_member(btf: &Btf, s: &btf_rs::Struct, field: &str) -> Result<Option<u32>, btf_rs::Error> {
    for member in &s.members {
        let name = btf.resolve_name(member).unwrap_or_default();
        if name == field {
            return Ok(Some(member.bit_offset()));
        }
        if !name.is_empty() {
            continue;
        }
        if let Some(inner) = anonymous_aggregate(btf, btf.resolve_chained_type(member)?)?
            && let Some(bits) = find_member(btf, &inner, field)?
        {
            return Ok(Some(member.bit_offset() + bits));
        }
    }
    Ok(None)
}

/// The struct or union behind an anonymous member, skipping qualifiers.
fn anonymous_aggregate(btf: &Btf, mut t: Type) -> Result<Option<btf_rs::Struct>, btf_rs::Error> {
    loop {
        t = match t {
            Type::Struct(s) | Type::Union(s) => return Ok(Some(s)),
            Type::Const(ref q) | Type::Volatile(ref q) | Type::Restrict(ref q) => {
                btf.resolve_chained_type(q)?
            }
            Type::TypeTag(ref q) => btf.resolve_chained_type(q)?,
            Type::Typedef(ref q) => btf.resolve_chained_type(q)?,
            _ => return Ok(None),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_all_offsets_on_this_kernel() {
        if !Path::new(VMLINUX_BTF).exists() {
            return;
        }
        let o = from_vmlinux().expect("offsets");
        // `struct path` is { mnt, dentry } on every kernel the programs support.
        assert_eq!(o.path_dentry, 8);
        assert!(o.task_files > 0 && o.task_fs > 0);
        assert_ne!(o.file_f_inode, o.file_f_pos);
        // PG_head sits among the first dozen page flags on every supported kernel.
        assert!(o.pg_head > 0 && o.pg_head < 32, "PG_head = {}", o.pg_head);
        assert!(o.folio_flags_1 > o.folio_index);
        assert!(o.io_kiocb_opcode > 0 && o.io_rw_ki_pos > 0, "{o:?}");
        assert!(o.io_open_flags > 0 && o.io_open_file_slot > 0, "{o:?}");
        assert!(o.inode_i_size > 0 && o.sb_s_magic > 0 && o.files_count < 4096);
        // `status` follows `flags` and `syscall_work` in x86's thread_info.
        assert!(o.task_ti_status >= 16, "{o:?}");
        // btrfs is built into the supported kernels.
        assert!(o.btrfs_inode_vfs_inode > 0 && o.btrfs_root_objectid > 0, "{o:?}");
        eprintln!("{o:#?}");
    }
}
