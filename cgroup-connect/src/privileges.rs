//! Checks that this process may load and attach cgroup BPF programs, before it tries, so the
//! user gets one clear message instead of an EPERM or a verifier dump from deep inside a
//! syscall.
//!
//! The blocker runs as uid 0 (its pin and state folders must be root's, see [`crate::pins`])
//! with these effective capabilities, found by running it with exactly them (tests/privileges.rs):
//! [`NEEDED`]. `CAP_SYS_ADMIN` stands in for all three. Nothing else is needed once bpffs is
//! mounted (mounting it takes `CAP_SYS_ADMIN`; systemd mounts it at boot) and, on kernels
//! before 5.11, `RLIMIT_MEMLOCK` is unlimited (raising it takes `CAP_SYS_RESOURCE`; the unit
//! sets `LimitMEMLOCK=infinity`).
use caps::{CapSet, Capability};

/// Each capability the blocker needs, its name, and why.
pub const NEEDED: [(Capability, &str, &str); 3] = [
    (
        Capability::CAP_BPF,
        "CAP_BPF",
        "create the maps, load the programs, pin them and open the pins (bpf())",
    ),
    (
        Capability::CAP_NET_ADMIN,
        "CAP_NET_ADMIN",
        "load cgroup sock_addr programs and attach them to a cgroup",
    ),
    (
        Capability::CAP_PERFMON,
        "CAP_PERFMON",
        "let the programs call bpf_get_current_comm (the process name of events) and read stack \
         bytes the verifier cannot prove written; without it the verifier refuses them",
    ),
];

/// The capability names of [`NEEDED`], as the messages list them.
pub const NEEDED_NAMES: &str = "CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON";

/// This process may not load or attach the programs.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// Some of [`NEEDED`] are not effective.
    #[error(
        "missing capabilities {missing}: run as root (sudo), or as uid 0 with CAP_BPF, \
         CAP_NET_ADMIN and CAP_PERFMON (as the systemd unit does)"
    )]
    Missing {
        /// The missing capabilities, comma separated.
        missing: String,
    },
    /// Not uid 0: the pin and state folders it makes would not be root's, and are refused.
    #[error(
        "running as uid {uid}: run as root (sudo); the blocker runs as uid 0 (its pin and state \
         folders must be root's), with at least CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"
    )]
    NotRoot { uid: u32 },
}

/// Whether the effective set has `cap`; false when it cannot be read.
fn has(cap: Capability) -> bool {
    caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false)
}

/// The names of the capabilities of [`NEEDED`] that are not effective (none with
/// `CAP_SYS_ADMIN`, which implies them all for BPF).
#[must_use]
pub fn missing() -> Vec<&'static str> {
    if has(Capability::CAP_SYS_ADMIN) {
        return Vec::new();
    }
    NEEDED.iter().filter(|(cap, _, _)| !has(*cap)).map(|(_, name, _)| *name).collect()
}

/// Whether the programs may call the helpers and take the verifier paths that need
/// `CAP_PERFMON` (or `CAP_SYS_ADMIN`).
#[must_use]
pub fn perfmon_capable() -> bool {
    has(Capability::CAP_PERFMON) || has(Capability::CAP_SYS_ADMIN)
}

/// Succeeds when this process runs as uid 0 with the capabilities of [`NEEDED`] effective.
///
/// # Errors
/// [`PrivilegeError`] naming what is missing.
pub fn check() -> Result<(), PrivilegeError> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        return Err(PrivilegeError::NotRoot { uid });
    }
    let missing = missing();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PrivilegeError::Missing { missing: missing.join(", ") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_is_bounded_to_exactly_the_needed_capabilities() {
        let unit = include_str!("../../contrib/systemd/cgroup-connect@.service");
        let bound: Vec<&str> = unit
            .lines()
            .filter_map(|l| l.strip_prefix("CapabilityBoundingSet="))
            .flat_map(str::split_whitespace)
            .collect();
        let needed: Vec<&str> = NEEDED.iter().map(|(_, name, _)| *name).collect();
        assert_eq!(bound, needed);
        assert_eq!(NEEDED_NAMES, "CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON");
    }
}
