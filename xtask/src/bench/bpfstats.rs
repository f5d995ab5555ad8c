//! Run time of the agent's BPF programs: `kernel.bpf_stats_enabled` switched on
//! for a while, and each program's `run_time_ns` and `run_cnt` read from
//! `/proc/<agent>/fdinfo` (bpftool is not needed), with its name from
//! `BPF_OBJ_GET_INFO_BY_FD`.

use std::collections::BTreeMap;

use anyhow::Context;

use super::results::BpfProgram;

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled=1` while it lives; the old value is written back
/// when it is dropped. The kernel only counts run time while it is on (it costs
/// two clock reads per program run, so the syscall timings are taken without it).
pub struct StatsEnabled {
    old: String,
}

impl StatsEnabled {
    pub fn new() -> anyhow::Result<StatsEnabled> {
        let old = std::fs::read_to_string(STATS_SYSCTL)
            .with_context(|| format!("cannot read {STATS_SYSCTL}"))?
            .trim()
            .to_owned();
        std::fs::write(STATS_SYSCTL, "1")
            .with_context(|| format!("cannot write 1 to {STATS_SYSCTL}"))?;
        Ok(StatsEnabled { old })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(STATS_SYSCTL, &self.old) {
            eprintln!(
                "warning: cannot restore {STATS_SYSCTL} to {}: {e}",
                self.old
            );
        }
    }
}

/// The BPF programs `pid` holds a file descriptor of, by program id, with their
/// counters now. Links (whose fdinfo also names a program) are skipped; a
/// program held through several descriptors is listed once.
pub fn programs(pid: u32) -> anyhow::Result<BTreeMap<u32, BpfProgram>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot list {dir}"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue; // closed meanwhile
        };
        if let Some(program) = parse_fdinfo(&text) {
            found.entry(program.id).or_insert(program);
        }
    }
    for program in found.values_mut() {
        program.name = program_name(program.id);
    }
    Ok(found)
}

/// The counters' growth from `before` to `after`, busiest first.
pub fn deltas(
    before: &BTreeMap<u32, BpfProgram>,
    after: &BTreeMap<u32, BpfProgram>,
) -> Vec<BpfProgram> {
    let mut out: Vec<BpfProgram> = after
        .values()
        .map(|a| {
            let (cnt, time) = before
                .get(&a.id)
                .map_or((0, 0), |b| (b.run_cnt, b.run_time_ns));
            BpfProgram {
                run_cnt: a.run_cnt.saturating_sub(cnt),
                run_time_ns: a.run_time_ns.saturating_sub(time),
                ..a.clone()
            }
        })
        .collect();
    out.sort_by(|a, b| b.run_time_ns.cmp(&a.run_time_ns).then(a.id.cmp(&b.id)));
    out
}

fn parse_fdinfo(text: &str) -> Option<BpfProgram> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .map(str::trim)
    };
    if field("link_type").is_some() {
        return None;
    }
    Some(BpfProgram {
        prog_type: field("prog_type")?.to_owned(),
        tag: field("prog_tag")?.to_owned(),
        id: field("prog_id")?.parse().ok()?,
        name: None,
        run_time_ns: field("run_time_ns")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        run_cnt: field("run_cnt").and_then(|v| v.parse().ok()).unwrap_or(0),
    })
}

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// `offsetof(struct bpf_prog_info, name)`; the name is `BPF_OBJ_NAME_LEN` (16) bytes.
const INFO_NAME_OFFSET: usize = 64;

/// The program's name, through its id: `BPF_PROG_GET_FD_BY_ID`, then
/// `BPF_OBJ_GET_INFO_BY_FD` (needs CAP_SYS_ADMIN, which the bench has as root).
fn program_name(id: u32) -> Option<String> {
    // union bpf_attr for GET_FD_BY_ID: { u32 prog_id; u32 next_id; u32 open_flags; }
    let attr: [u32; 3] = [id, 0, 0];
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_GET_FD_BY_ID,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        return None;
    }
    let fd = fd as libc::c_int;
    // struct bpf_prog_info, zeroed beyond what this kernel fills in (it checks that
    // bytes past its own size are zero).
    let mut info = [0u64; 64];
    // union bpf_attr for OBJ_GET_INFO_BY_FD: { u32 bpf_fd; u32 info_len; u64 info; }
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let attr = InfoAttr {
        bpf_fd: fd as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    unsafe { libc::close(fd) };
    if rc != 0 {
        return None;
    }
    let bytes: Vec<u8> = info.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let raw = &bytes[INFO_NAME_OFFSET..INFO_NAME_OFFSET + 16];
    let name = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
    (!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_programs_not_links() {
        let prog = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t2082\nprog_type:\t26\nprog_jited:\t1\n\
                    prog_tag:\t0123456789abcdef\nmemlock:\t4096\nprog_id:\t42\nrun_time_ns:\t1000\n\
                    run_cnt:\t10\nrecursion_misses:\t0\nverified_insns:\t99\n";
        let p = super::parse_fdinfo(prog).unwrap();
        assert_eq!((p.id, p.run_cnt, p.run_time_ns), (42, 10, 1000));
        assert_eq!(
            (p.tag.as_str(), p.prog_type.as_str()),
            ("0123456789abcdef", "26")
        );
        let link = "pos:\t0\nlink_type:\ttracing\nlink_id:\t7\nprog_tag:\t0123456789abcdef\nprog_id:\t42\n";
        assert!(super::parse_fdinfo(link).is_none());
        assert!(super::parse_fdinfo("pos:\t0\nflags:\t02\n").is_none());
    }
}
