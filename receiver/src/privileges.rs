//! Running with only the capabilities applying needs, so that a flaw reached
//! through the network cannot use the rest of root's power (load modules,
//! mount, trace other processes, write raw devices, change the network, ...).
//!
//! Dropped at start, once the sockets are bound, from the effective, permitted,
//! inheritable and bounding sets (and the ambient set), with `no_new_privs` set:
//! nothing the receiver runs later can get them back.

use caps::{CapSet, Capability, CapsHashSet};

/// Why the capabilities could not be restricted.
#[derive(Debug, thiserror::Error)]
#[error("cannot restrict the receiver's capabilities: {0}")]
pub struct PrivilegeError(String);

/// What applying needs:
/// - `CAP_CHOWN`: give entries the master's owner and group;
/// - `CAP_FOWNER`: set modes, times and attributes of entries it does not own;
/// - `CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH`: read, write and traverse
///   entries whatever their mode (a replica holds `0000` files too);
/// - `CAP_FSETID`: keep set-group-ID bits the master set;
/// - `CAP_MKNOD`: only with `[replication] devices = true`.
///
/// Not kept: `CAP_SYS_ADMIN`, so `trusted.*` attributes are not replicated
/// (logged once per attribute), and `CAP_SETFCAP`, so neither are file
/// capabilities (`security.capability`).
pub fn needed(devices: bool) -> CapsHashSet {
    let mut keep: CapsHashSet = [
        Capability::CAP_CHOWN,
        Capability::CAP_FOWNER,
        Capability::CAP_DAC_OVERRIDE,
        Capability::CAP_DAC_READ_SEARCH,
        Capability::CAP_FSETID,
    ]
    .into_iter()
    .collect();
    if devices {
        keep.insert(Capability::CAP_MKNOD);
    }
    keep
}

/// Drops every capability but [`needed`] from this process (all its threads
/// that start afterwards inherit the result; call before starting any).
pub fn restrict(devices: bool) -> Result<(), PrivilegeError> {
    let err = |what: &str, e: caps::errors::CapsError| PrivilegeError(format!("{what}: {e}"));
    let keep = needed(devices);
    let permitted = caps::read(None, CapSet::Permitted).map_err(|e| err("reading the permitted set", e))?;
    let keep: CapsHashSet = keep.intersection(&permitted).copied().collect();
    // The bounding set can only shrink while CAP_SETPCAP is effective.
    if permitted.contains(&Capability::CAP_SETPCAP) {
        caps::raise(None, CapSet::Effective, Capability::CAP_SETPCAP).map_err(|e| err("raising CAP_SETPCAP", e))?;
        for cap in caps::all() {
            if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
                caps::drop(None, CapSet::Bounding, cap).map_err(|e| err("shrinking the bounding set", e))?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| err("clearing the ambient set", e))?;
    caps::clear(None, CapSet::Inheritable).map_err(|e| err("clearing the inheritable set", e))?;
    caps::set(None, CapSet::Effective, &keep).map_err(|e| err("setting the effective set", e))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|e| err("setting the permitted set", e))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| PrivilegeError(format!("setting no_new_privs: {e}")))?;
    let mut kept: Vec<String> = keep.iter().map(ToString::to_string).collect();
    kept.sort();
    tracing::info!(capabilities = %kept.join(","), "running with only these capabilities");
    Ok(())
}
