//! `blocker doctor`: one line per check of what running (and building) the blocker needs,
//! with a fix for each failure. Exits 0 when this machine can run the blocker; the build
//! checks only warn, since a prebuilt binary does not need them.
use std::{path::Path, process::Command};

use aya::{maps::MapType, util::KernelVersion};

use crate::{
    cgroup::{self, TempCgroup},
    loader::{Instance, Prepared},
    pins::InstancePaths,
    privileges,
};

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Works, but not as well as it could, or only matters for building from source.
    Warn,
    /// The blocker cannot run here.
    Fail,
}

/// One check's result.
#[derive(Debug)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    /// How to fix it; empty when the check passed.
    pub fix: String,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self { name, status: Status::Ok, detail: detail.into(), fix: String::new() }
    }
    fn bad(
        name: &'static str,
        status: Status,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self { name, status, detail: detail.into(), fix: fix.into() }
    }
}

/// Runs every check and prints one line each.
///
/// # Errors
/// When a check that running the blocker depends on failed.
pub fn doctor() -> anyhow::Result<()> {
    let checks = run_checks();
    for c in &checks {
        let tag = match c.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        if c.fix.is_empty() {
            println!("{tag}  {:<12} {}", c.name, c.detail);
        } else {
            println!("{tag}  {:<12} {} (fix: {})", c.name, c.detail, c.fix);
        }
    }
    let failed: Vec<&str> =
        checks.iter().filter(|c| c.status == Status::Fail).map(|c| c.name).collect();
    anyhow::ensure!(
        failed.is_empty(),
        "this machine cannot run the blocker: {} failed",
        failed.join(", ")
    );
    println!("this machine can run the blocker");
    Ok(())
}

/// All checks, in the order printed.
#[must_use]
pub fn run_checks() -> Vec<Check> {
    vec![
        kernel(),
        bpf_syscall(),
        capabilities(),
        cgroup2(),
        cgroup_bpf(),
        btf(),
        jit(),
        memlock(),
        toolchain_nightly(),
        rust_src(),
        bpf_linker(),
    ]
}

fn kernel() -> Check {
    const NAME: &str = "kernel";
    match KernelVersion::current() {
        Ok(v) if v >= KernelVersion::new(5, 7, 0) => {
            Check::ok(NAME, format!("{v} (5.7 or later needed)"))
        }
        Ok(v) => Check::bad(
            NAME,
            Status::Fail,
            format!("{v} is older than 5.7"),
            "upgrade to Linux 5.7 or later (cgroup BPF links)",
        ),
        Err(e) => Check::bad(
            NAME,
            Status::Fail,
            format!("cannot read the kernel version: {e}"),
            "check /proc/sys/kernel/osrelease",
        ),
    }
}

fn bpf_syscall() -> Check {
    const NAME: &str = "bpf-syscall";
    match aya::sys::is_map_supported(MapType::Hash) {
        Ok(true) => Check::ok(NAME, "bpf() creates maps"),
        Ok(false) => Check::bad(
            NAME,
            Status::Fail,
            "bpf() cannot create a hash map",
            "use a kernel built with CONFIG_BPF_SYSCALL=y",
        ),
        Err(e) => Check::bad(
            NAME,
            Status::Fail,
            format!("bpf() failed: {e}"),
            "run as root; the kernel needs CONFIG_BPF_SYSCALL=y",
        ),
    }
}

fn capabilities() -> Check {
    const NAME: &str = "capabilities";
    match privileges::check() {
        Ok(()) => Check::ok(NAME, "CAP_BPF and CAP_NET_ADMIN (or CAP_SYS_ADMIN) effective"),
        Err(e) => Check::bad(
            NAME,
            Status::Fail,
            format!("missing {}", e.missing),
            "run as root, or grant CAP_BPF and CAP_NET_ADMIN",
        ),
    }
}

fn cgroup2() -> Check {
    const NAME: &str = "cgroup2";
    match cgroup::cgroup2_root().and_then(cgroup::CgroupDir::open) {
        Ok(dir) => Check::ok(NAME, format!("mounted at {}", dir.path().display())),
        Err(e) => Check::bad(
            NAME,
            Status::Fail,
            e.to_string(),
            "mount -t cgroup2 none /sys/fs/cgroup/unified",
        ),
    }
}

/// A real load and attach of the blocker's programs to a temporary child cgroup.
fn cgroup_bpf() -> Check {
    const NAME: &str = "cgroup-bpf";
    let fix = "run as root on a kernel with CONFIG_CGROUP_BPF=y";
    let root = match cgroup::cgroup2_root() {
        Ok(root) => root,
        Err(e) => return Check::bad(NAME, Status::Fail, format!("no cgroup v2 mount: {e}"), fix),
    };
    let temp = match TempCgroup::create(&root, "cgroup-connect-doctor") {
        Ok(temp) => temp,
        Err(e) => {
            return Check::bad(NAME, Status::Fail, format!("cannot make a test cgroup: {e}"), fix);
        }
    };
    let tables =
        crate::table::compile(crate::rules::Action::Allow, []).expect("empty tables compile");
    let paths = match InstancePaths::new(&format!("doctor-{}", std::process::id())) {
        Ok(p) => p,
        Err(e) => return Check::bad(NAME, Status::Fail, e.to_string(), fix),
    };
    if let Err(e) = paths.create_dirs() {
        return Check::bad(
            NAME,
            Status::Fail,
            format!("{:#}", anyhow::Error::from(e)),
            "mount bpffs: mount -t bpf bpf /sys/fs/bpf",
        );
    }
    // Created and dropped at once: dropping detaches, then the pins go.
    let result = Prepared::load()
        .and_then(|p| Instance::create(&paths, temp.dir(), &tables, false, false, p))
        .map(drop);
    let _ = crate::loader::unpin(&paths);
    let _ = crate::pins::remove_dirs(&paths);
    match result {
        Ok(()) => Check::ok(
            NAME,
            format!("attached and detached in a temporary cgroup under {}", root.display()),
        ),
        Err(e) => Check::bad(NAME, Status::Fail, format!("{:#}", anyhow::Error::from(e)), fix),
    }
}

fn btf() -> Check {
    const NAME: &str = "btf";
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        Check::ok(NAME, "/sys/kernel/btf/vmlinux present")
    } else {
        Check::bad(
            NAME,
            Status::Warn,
            "no /sys/kernel/btf/vmlinux (not needed today)",
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        )
    }
}

fn jit() -> Check {
    const NAME: &str = "jit";
    match std::fs::read_to_string("/proc/sys/net/core/bpf_jit_enable").map(|s| s.trim().to_owned())
    {
        Ok(v) if v == "1" || v == "2" => Check::ok(NAME, format!("enabled (bpf_jit_enable={v})")),
        Ok(v) => Check::bad(
            NAME,
            Status::Warn,
            format!("disabled (bpf_jit_enable={v}): programs run interpreted, slower"),
            "sysctl -w net.core.bpf_jit_enable=1",
        ),
        Err(e) => Check::bad(
            NAME,
            Status::Warn,
            format!("cannot read bpf_jit_enable: {e}"),
            "use a kernel built with CONFIG_BPF_JIT=y",
        ),
    }
}

fn memlock() -> Check {
    const NAME: &str = "memlock";
    if KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 11, 0)) {
        return Check::ok(
            NAME,
            "not limiting: the kernel charges BPF memory to the memory cgroup (5.11+)",
        );
    }
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes a valid rlimit.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &raw mut lim) };
    if lim.rlim_max == libc::RLIM_INFINITY {
        Check::ok(NAME, "RLIMIT_MEMLOCK can be raised to unlimited (the blocker does)")
    } else {
        Check::bad(
            NAME,
            Status::Warn,
            format!("RLIMIT_MEMLOCK hard limit {} bytes", lim.rlim_max),
            "run as root, or `ulimit -l unlimited`",
        )
    }
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn toolchain_nightly() -> Check {
    const NAME: &str = "nightly";
    match command_output("rustup", &["run", "nightly", "rustc", "--version"]) {
        Some(v) => Check::ok(NAME, v),
        None => Check::bad(
            NAME,
            Status::Warn,
            "no nightly toolchain (only needed to build from source)",
            "./scripts/setup.sh",
        ),
    }
}

fn rust_src() -> Check {
    const NAME: &str = "rust-src";
    match command_output("rustup", &["component", "list", "--toolchain", "nightly", "--installed"])
    {
        Some(list) if list.lines().any(|l| l.starts_with("rust-src")) => {
            Check::ok(NAME, "installed for nightly")
        }
        _ => Check::bad(
            NAME,
            Status::Warn,
            "rust-src missing for nightly (only needed to build from source)",
            "rustup component add rust-src --toolchain nightly",
        ),
    }
}

fn bpf_linker() -> Check {
    const NAME: &str = "bpf-linker";
    match command_output("bpf-linker", &["--version"]) {
        Some(v) => Check::ok(NAME, v),
        None => Check::bad(
            NAME,
            Status::Warn,
            "bpf-linker not found (only needed to build from source)",
            "./scripts/setup.sh",
        ),
    }
}
