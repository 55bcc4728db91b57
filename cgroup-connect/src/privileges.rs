//! Checks that this process may load and attach cgroup BPF programs, before it tries, so the
//! user gets one clear message instead of an EPERM from deep inside a syscall.
use caps::{CapSet, Capability};

/// A capability the blocker needs is missing.
#[derive(Debug, thiserror::Error)]
#[error(
    "missing capabilities {missing}: run as root (sudo), or grant CAP_BPF and CAP_NET_ADMIN \
     (e.g. `setcap cap_bpf,cap_net_admin,cap_perfmon+ep blocker`)"
)]
pub struct PrivilegeError {
    /// The missing capabilities, comma separated.
    pub missing: String,
}

/// Whether the effective set has `cap`; false when it cannot be read.
fn has(cap: Capability) -> bool {
    caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false)
}

/// Succeeds when the effective capabilities allow loading BPF programs and attaching them to
/// cgroups: `CAP_BPF` and `CAP_NET_ADMIN`, or `CAP_SYS_ADMIN` (which implies both for BPF).
///
/// # Errors
/// [`PrivilegeError`] naming what is missing.
pub fn check() -> Result<(), PrivilegeError> {
    if has(Capability::CAP_SYS_ADMIN) {
        return Ok(());
    }
    let missing: Vec<&str> =
        [(Capability::CAP_BPF, "CAP_BPF"), (Capability::CAP_NET_ADMIN, "CAP_NET_ADMIN")]
            .into_iter()
            .filter(|(cap, _)| !has(*cap))
            .map(|(_, name)| name)
            .collect();
    if missing.is_empty() { Ok(()) } else { Err(PrivilegeError { missing: missing.join(", ") }) }
}
