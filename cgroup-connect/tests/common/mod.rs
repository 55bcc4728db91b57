//! Helpers shared by the integration tests, one module per concern: temporary cgroups and
//! what is attached to them ([`cgroup`]), network namespaces ([`netns`]), the real `blocker`
//! process under a guard ([`blocker`]), children forked into a cgroup ([`child`]), private
//! mount namespaces ([`mounts`]), the probes they run ([`probe`]), a blocker with its cgroup
//! and namespace ([`scene`]), temporary folders ([`tempdir`]) and namespaces joined by a veth
//! pair with a capture on the far side ([`wire`]). This file holds the privilege gate and re-exports the rest, so a test
//! file names everything as `common::...`.
//!
//! Probes connect from a forked child moved into a cgroup, never from the test runner itself:
//! parallel tests would share the block.
#![allow(dead_code, unused_imports, reason = "each test file uses a different subset")]

mod blocker;
mod cgroup;
mod child;
mod mounts;
mod netns;
mod notify;
mod probe;
mod scene;
mod tempdir;
mod wire;

pub use blocker::{
    BLOCKER, Blocker, START_WITHIN, as_user, assert_no_instance, blocker_ok, blocker_output,
    detach_quietly, instance_name, refusing_bpf, status_row, wait_within,
};
pub use cgroup::{
    TempCgroup, assert_nothing_attached, attached_count, attached_programs, cgroup_root,
    temp_cgroup,
};
pub use child::in_child;
pub use mounts::{BpfMount, as_nobody, in_private_cgroup_root, in_private_mounts};
pub use netns::Netns;
pub use notify::NotifySocket;
pub use probe::{
    Outcome, Place, Probe, ProbeReport, Prober, Setup, connect_each, connect_in, flood, listener,
    lo, outcome, probe, probe_with, send_connected_with_cmsg,
};
pub use scene::{Scene, expect_cmsg_sends_judged_by_peer};
pub use tempdir::TempDir;
pub use wire::{Capture, Wire, sent_to, sysctl_in};

/// True when the test may use BPF. Prints why not otherwise; under CI=true a missing
/// privilege fails the test instead, so nothing skips in CI.
#[must_use]
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none_or(|v| v != "true"),
        "CI=true: privileged test cannot skip: not root"
    );
    eprintln!("skipping: needs root (run the tests with sudo ./scripts/test.sh)");
    false
}

/// Skips the test (with its printed reason) when not privileged.
#[macro_export]
macro_rules! require_privileges {
    () => {
        if !common::privileged() {
            return;
        }
    };
}

/// `PREFIX-PID-N`, unique among the names this test process makes.
fn unique_name(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}
