//! Temporary cgroups for the tests, and what BPF programs are attached to them.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

pub use cgroup_connect::cgroup::TempCgroup;

/// The cgroup v2 root.
#[must_use]
pub fn cgroup_root() -> PathBuf {
    cgroup_connect::cgroup::cgroup2_root().unwrap_or_else(|e| panic!("cgroup v2 root: {e}"))
}

/// A fresh, uniquely named child of the cgroup v2 root, removed on drop.
#[must_use]
pub fn temp_cgroup() -> TempCgroup {
    // Its drop logs through tracing when a cgroup cannot be removed: to stderr.
    cgroup_connect::logging::init();
    TempCgroup::create(&cgroup_root(), "cgroup-connect-test")
        .unwrap_or_else(|e| panic!("create test cgroup: {e}"))
}

/// The programs attached to `cgroup`, as `bpftool -j cgroup show` prints them ("[]" if none).
#[must_use]
pub fn attached_programs(cgroup: &Path) -> String {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()
        .unwrap_or_else(|e| panic!("run bpftool (./scripts/setup.sh installs it): {e}"));
    assert!(out.status.success(), "bpftool cgroup show {}: {out:?}", cgroup.display());
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The number of programs attached to `cgroup`.
#[must_use]
pub fn attached_count(cgroup: &Path) -> usize {
    attached_programs(cgroup).matches("\"id\"").count()
}

/// Asserts that no BPF program is attached to `cgroup`.
pub fn assert_nothing_attached(cgroup: &Path) {
    let progs = attached_programs(cgroup);
    assert!(
        progs.is_empty() || progs == "[]",
        "programs left attached to {}: {progs}",
        cgroup.display()
    );
}
