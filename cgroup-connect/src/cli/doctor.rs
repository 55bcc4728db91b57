//! `blocker doctor`: one line per check of what running (and building) the blocker needs,
//! with a fix for each failure. The kernel's features are probed one by one (the probes of
//! [`crate::features`], the ones the loader runs), never inferred from its version; a real
//! load and attach of the programs to a temporary child cgroup then proves the whole path.
//! Exits 0 when this machine can run the blocker; the build checks only warn, since a
//! prebuilt binary does not need them.
use std::{
    error::Error,
    io,
    path::{Path, PathBuf},
    process::Command,
};

use aya::{maps::MapType, util::KernelVersion};

use crate::{
    cgroup::{self, TempCgroup},
    features::{self, Feature, Support},
    loader::{Instance, LoadError, Prepared},
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

/// Arguments of `blocker doctor`.
#[derive(Debug, Default, clap::Args)]
pub struct DoctorArgs {
    /// When the kernel refuses a program in the load-and-attach check, write the verifier's
    /// whole log to FILE (- for standard output); the check's line shows only its reason
    #[arg(long, value_name = "FILE")]
    pub verifier_log: Option<PathBuf>,
}

/// Runs every check and prints one line each.
///
/// # Errors
/// When a check that running the blocker depends on failed.
pub fn doctor(args: &DoctorArgs) -> anyhow::Result<()> {
    let checks = run_checks(args.verifier_log.as_deref());
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

/// All checks, in the order printed; a refused program's verifier log goes to `verifier_log`.
#[must_use]
pub fn run_checks(verifier_log: Option<&Path>) -> Vec<Check> {
    let mut checks = vec![kernel(), bpf_syscall(), capabilities(), cgroup2(), memlock()];
    checks.extend(feature_checks());
    checks.extend([cgroup_bpf(verifier_log), jit(), toolchain_nightly(), rust_src(), bpf_linker()]);
    checks.extend(dns_forwarders());
    checks
}

/// One line per instance with a DNS forwarder (`--dns-port`): up, or down with the cgroup's
/// DNS failing (a warning: the instance still enforces, and fails closed).
fn dns_forwarders() -> Vec<Check> {
    crate::pins::instance_names()
        .iter()
        .filter_map(|name| {
            let paths = crate::pins::InstancePaths::new(name).ok()?;
            let state = crate::state::State::load(&paths).ok()??;
            let port = state.dns_port?;
            Some(if state.process_alive() {
                Check::ok("dns", format!("instance {name}: DNS forwarder up on 127.0.0.1:{port}"))
            } else {
                Check::bad(
                    "dns",
                    Status::Warn,
                    format!(
                        "instance {name}: DNS forwarder down (127.0.0.1:{port}): DNS from its \
                         cgroup fails"
                    ),
                    format!(
                        "start it again: blocker run --name {name} --dns-port {port} ..., or \
                         blocker detach {name}"
                    ),
                )
            })
        })
        .collect()
}

/// The version, for information: the feature checks decide.
fn kernel() -> Check {
    const NAME: &str = "kernel";
    let needs = format!(
        "Linux {} or later needed on paper, tested on {}; the checks below probe each feature",
        features::minimum(),
        features::TESTED
    );
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease");
    let release = release.as_deref().map_or("", str::trim);
    match KernelVersion::current() {
        Ok(v) if release.is_empty() => Check::ok(NAME, format!("{v} ({needs})")),
        Ok(v) => Check::ok(NAME, format!("{v}, {release} ({needs})")),
        Err(e) => Check::ok(NAME, format!("version unknown: {e} ({needs})")),
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
            format!("bpf() failed: {}", e.io_error),
            errno_fix(&e.io_error),
        ),
    }
}

fn capabilities() -> Check {
    const NAME: &str = "capabilities";
    match privileges::check() {
        Ok(()) => Check::ok(
            NAME,
            format!("uid 0 with {} (or CAP_SYS_ADMIN) effective", privileges::NEEDED_NAMES),
        ),
        Err(privileges::PrivilegeError::Missing { missing }) => {
            let why: Vec<String> = privileges::NEEDED
                .iter()
                .filter(|(_, name, _)| missing.contains(name))
                .map(|(_, name, why)| format!("{name} to {why}"))
                .collect();
            Check::bad(
                NAME,
                Status::Fail,
                format!("missing {missing}: the blocker needs {}", why.join("; ")),
                PRIVILEGE_FIX,
            )
        }
        Err(privileges::PrivilegeError::NotRoot { uid }) => Check::bad(
            NAME,
            Status::Fail,
            format!("running as uid {uid}: the pin and state folders must be root's"),
            PRIVILEGE_FIX,
        ),
    }
}

fn cgroup2() -> Check {
    const NAME: &str = "cgroup2";
    match cgroup::cgroup2_root().and_then(cgroup::CgroupDir::open) {
        Ok(dir) => Check::ok(NAME, format!("mounted at {}", dir.path().display())),
        Err(e) => Check::bad(NAME, Status::Fail, e.to_string(), MOUNT_CGROUP2),
    }
}

const MOUNT_CGROUP2: &str = "mount -t cgroup2 none /sys/fs/cgroup/unified";

/// Probes the memory accounting, then lifts `RLIMIT_MEMLOCK` as the blocker does before it
/// loads (so the probes after this one see what the blocker would).
fn memlock() -> Check {
    let before = features::memlock_limit();
    let memcg = features::memcg_accounting();
    features::lift_memlock_limit();
    let lifted = features::memlock_limit().rlim_cur == libc::RLIM_INFINITY;
    memlock_check(&memcg, before.rlim_max, lifted)
}

/// The memlock line: `memcg` is the probe's answer, `hard` the hard limit before lifting, and
/// `lifted` whether the limit could be lifted to unlimited.
fn memlock_check(memcg: &Support, hard: libc::rlim_t, lifted: bool) -> Check {
    const NAME: &str = "memlock";
    const FIX: &str = "run as root, or `ulimit -l unlimited`";
    let hard =
        if hard == libc::RLIM_INFINITY { "unlimited".to_owned() } else { format!("{hard} bytes") };
    match memcg {
        Support::Present => Check::ok(
            NAME,
            "BPF memory is charged to the memory cgroup (Linux 5.11+): RLIMIT_MEMLOCK does not \
             limit it",
        ),
        Support::Missing if lifted => Check::ok(
            NAME,
            "BPF memory is charged to RLIMIT_MEMLOCK (kernels before 5.11), which the blocker \
             lifts to unlimited, as it can here",
        ),
        Support::Missing => Check::bad(
            NAME,
            Status::Warn,
            format!(
                "BPF memory is charged to RLIMIT_MEMLOCK (kernels before 5.11), and its hard \
                 limit ({hard}) cannot be lifted: large tables may not load"
            ),
            FIX,
        ),
        Support::Unknown(e) if lifted => Check::ok(
            NAME,
            format!("accounting not probed ({e}); RLIMIT_MEMLOCK can be lifted to unlimited"),
        ),
        Support::Unknown(e) => Check::bad(
            NAME,
            Status::Warn,
            format!(
                "accounting not probed ({e}); RLIMIT_MEMLOCK hard limit {hard}, which kernels \
                 before 5.11 charge BPF memory to"
            ),
            FIX,
        ),
    }
}

/// One line per [`Feature::check`], each feature probed.
fn feature_checks() -> Vec<Check> {
    let probed: Vec<(&Feature, Support)> =
        features::REQUIRED.iter().map(|f| (f, f.probe())).collect();
    probed.chunk_by(|a, b| a.0.check == b.0.check).map(feature_check).collect()
}

/// The line of one check from its features' probes: the missing ones with the release that
/// added them, else the ones that could not be probed, else the list of what is there.
fn feature_check(group: &[(&Feature, Support)]) -> Check {
    let name = group[0].0.check;
    let missing: Vec<&Feature> =
        group.iter().filter(|(_, s)| matches!(s, Support::Missing)).map(|(f, _)| *f).collect();
    if let Some(newest) = missing.iter().max_by_key(|f| features::release(f.since)) {
        let detail: Vec<String> = missing.iter().map(|f| f.lacking()).collect();
        return Check::bad(name, Status::Fail, detail.join("; "), newest.fix());
    }
    if let Some((f, Support::Unknown(e))) =
        group.iter().find(|(_, s)| matches!(s, Support::Unknown(_)))
    {
        return Check::bad(name, Status::Warn, format!("{f} not probed: {e}"), errno_fix(e));
    }
    let list: Vec<String> =
        group.iter().map(|(f, _)| format!("{} ({})", f.name, f.since)).collect();
    let list = list.join(", ");
    if group.iter().all(|(f, _)| f.is_helper()) {
        Check::ok(name, format!("cgroup sock_addr programs may call {list}"))
    } else {
        Check::ok(name, list)
    }
}

/// A real load and attach of the blocker's programs to a temporary child cgroup.
fn cgroup_bpf(verifier_log: Option<&Path>) -> Check {
    const NAME: &str = "cgroup-bpf";
    let fail = |detail: String, fix: &str| Check::bad(NAME, Status::Fail, detail, fix);
    if let Err(e @ privileges::PrivilegeError::NotRoot { .. }) = privileges::check() {
        // Folders made by another uid would block root's instances: make none.
        return fail(format!("not tried: {e}"), PRIVILEGE_FIX);
    }
    let root = match cgroup::cgroup2_root() {
        Ok(root) => root,
        Err(e) => return fail(format!("no cgroup v2 mount: {e}"), MOUNT_CGROUP2),
    };
    let temp = match TempCgroup::create(&root, "cgroup-connect-doctor") {
        Ok(temp) => temp,
        Err(cgroup::CgroupError::Io { path, source })
            if source.kind() == io::ErrorKind::PermissionDenied =>
        {
            // The blocker itself makes no cgroup: only this check needs the write access.
            return Check::bad(
                NAME,
                Status::Warn,
                format!(
                    "not tried: cannot make the test cgroup {} ({source}); the blocker itself \
                     does not make cgroups, but the load was not proven",
                    path.display()
                ),
                format!(
                    "run doctor with write access to {} (root with CAP_DAC_OVERRIDE)",
                    root.display()
                ),
            );
        }
        Err(e) => return fail(format!("cannot make a test cgroup: {e}"), &fix_for(&e)),
    };
    let tables =
        crate::table::compile(crate::rules::Action::Allow, []).expect("empty tables compile");
    let paths = match InstancePaths::new(&format!("doctor-{}", std::process::id())) {
        Ok(p) => p,
        Err(e) => return fail(e.to_string(), &fix_for(&e)),
    };
    if let Err(e) = paths.create_dirs() {
        return fail(
            format!("{:#}", anyhow::Error::from(e)),
            "mount bpffs: mount -t bpf bpf /sys/fs/bpf",
        );
    }
    // Created and dropped at once: dropping detaches, then the pins go.
    let mut hooks = vec![];
    let mut lsm_note = String::new();
    let checks = Some(crate::loader::PacketChecks::for_kernel(0));
    let result = Prepared::load(checks, cgroup_connect_common::OBSERVE_CAPACITY)
        .and_then(|p| {
            hooks = p.packet_programs();
            if hooks.iter().any(|h| h == cgroup_connect_common::programs::EGRESS) {
                lsm_note = format!(
                    " (no BPF LSM check: {}; control messages are judged per packet)",
                    lsm_missing(p.lsm_refused())
                );
            }
            Instance::create(&paths, Some(temp.dir()), &tables, false, false, None, p)
        })
        .map(drop);
    let _ = crate::loader::unpin(&paths);
    let _ = crate::pins::remove_dirs(&paths);
    match result {
        Ok(()) => Check::ok(
            NAME,
            format!(
                "attached and detached in a temporary cgroup under {}; packet checks {}{}",
                root.display(),
                crate::state::hook_labels(&hooks).join("+"),
                lsm_note,
            ),
        ),
        Err(e) => {
            let written = verifier_log.map(|path| crate::loader::write_verifier_log(&e, path));
            let (mut detail, fix) = load_failure(e);
            if let Some(Err(w)) = written {
                detail = format!("{detail} ({w:#})");
            }
            fail(detail, &fix)
        }
    }
}

/// Why the control-message check is not in force: the kernel refused it (`refused`), or it was
/// not tried.
fn lsm_missing(refused: Option<&str>) -> String {
    if let Some(refused) = refused {
        return format!("the kernel refused it: {refused}");
    }
    match crate::features::bpf_lsm() {
        None => "cannot tell whether BPF LSM is active: mount securityfs, `mount -t securityfs \
                 securityfs /sys/kernel/security`"
            .to_owned(),
        Some(false) => "BPF LSM is not active (no `bpf` in /sys/kernel/security/lsm)".to_owned(),
        Some(true) => "no offsets of struct msghdr in /sys/kernel/btf/vmlinux".to_owned(),
    }
}

/// What failed in the real load and attach, and its fix. A verifier refusal is shown by its
/// reason, not its whole log.
fn load_failure(e: LoadError) -> (String, String) {
    match &e {
        LoadError::Unsupported { feature } => (feature.lacking(), feature.fix()),
        LoadError::Program { program, reason, .. } => (
            format!("the kernel refused program {program}: {reason}"),
            if privileges::perfmon_capable() {
                format!(
                    "no probed feature is missing, but this kernel's verifier refuses the \
                     program: use Linux {} or later, or report this line with the log of \
                     `blocker doctor --verifier-log FILE`",
                    features::TESTED
                )
            } else {
                "grant CAP_PERFMON (run as root): the verifier refuses the programs without it"
                    .to_owned()
            },
        ),
        _ => {
            let fix = fix_for(&e);
            (format!("{:#}", anyhow::Error::from(e)), fix)
        }
    }
}

/// The fix for a failure whose cause is a system call error, found in `err`'s chain.
fn fix_for(err: &(dyn Error + 'static)) -> String {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<io::Error>().filter(|io| io.raw_os_error().is_some()) {
            return errno_fix(io).to_owned();
        }
        cause = e.source();
    }
    UNEXPECTED.to_owned()
}

const PRIVILEGE_FIX: &str = "run as root, or as uid 0 with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON";

const UNEXPECTED: &str = "no probed feature is missing, so this is unexpected: report it with \
                          the output of `blocker doctor`";

/// The fix for a system call that failed with `err`.
fn errno_fix(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => PRIVILEGE_FIX,
        None if err.kind() == io::ErrorKind::PermissionDenied => PRIVILEGE_FIX,
        Some(libc::ENOSYS) => "use a kernel built with CONFIG_BPF_SYSCALL=y",
        Some(libc::ENOMEM) => {
            "free memory, or raise the memory cgroup's limit or RLIMIT_MEMLOCK (`ulimit -l \
             unlimited`)"
        }
        _ => UNEXPECTED,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{ARRAY_OF_MAPS, PERCPU_ARRAY, RING_BUFFER, SOCK_ADDR};

    fn eperm() -> io::Error {
        io::Error::from_raw_os_error(libc::EPERM)
    }

    #[test]
    fn a_present_group_lists_its_features() {
        let check =
            feature_check(&[(&ARRAY_OF_MAPS, Support::Present), (&RING_BUFFER, Support::Present)]);
        assert_eq!((check.name, check.status), ("maps", Status::Ok));
        assert_eq!(check.detail, "arrays of maps (4.12), ring buffers (5.8)");
        assert!(check.fix.is_empty());
        let helpers: Vec<_> = features::REQUIRED
            .iter()
            .filter(|f| f.is_helper())
            .map(|f| (f, Support::Present))
            .collect();
        let check = feature_check(&helpers);
        assert!(
            check.detail.starts_with("cgroup sock_addr programs may call bpf_"),
            "{}",
            check.detail
        );
    }

    #[test]
    fn a_missing_feature_fails_with_its_release_and_a_true_fix() {
        let check = feature_check(&[
            (&ARRAY_OF_MAPS, Support::Present),
            (&PERCPU_ARRAY, Support::Missing),
            (&RING_BUFFER, Support::Missing),
        ]);
        assert_eq!(check.status, Status::Fail);
        assert_eq!(
            check.detail,
            "this kernel lacks per-CPU arrays, added in Linux 4.6; this kernel lacks ring buffers, \
             added in Linux 5.8"
        );
        assert!(check.fix.starts_with("upgrade to Linux 5.8 or later"), "{}", check.fix);
        let check = feature_check(&[(&SOCK_ADDR, Support::Missing)]);
        assert!(check.fix.contains("CONFIG_CGROUP_BPF=y"), "{}", check.fix);
    }

    #[test]
    fn an_unprobed_feature_warns_with_the_errno_fix() {
        let check = feature_check(&[
            (&ARRAY_OF_MAPS, Support::Present),
            (&RING_BUFFER, Support::Unknown(eperm())),
        ]);
        assert_eq!(check.status, Status::Warn);
        assert!(check.detail.starts_with("ring buffers not probed: "), "{}", check.detail);
        assert!(check.fix.contains("root"), "{}", check.fix);
    }

    #[test]
    fn memlock_reports_the_accounting_and_the_limit() {
        let infinity = libc::RLIM_INFINITY;
        let memcg = memlock_check(&Support::Present, 65536, false);
        assert_eq!(memcg.status, Status::Ok);
        assert!(memcg.detail.contains("memory cgroup"), "{}", memcg.detail);
        assert_eq!(memlock_check(&Support::Missing, infinity, true).status, Status::Ok);
        let stuck = memlock_check(&Support::Missing, 65536, false);
        assert_eq!(stuck.status, Status::Warn);
        assert!(stuck.detail.contains("65536 bytes") && !stuck.fix.is_empty(), "{stuck:?}");
        assert_eq!(memlock_check(&Support::Unknown(eperm()), infinity, true).status, Status::Ok);
        assert_eq!(memlock_check(&Support::Unknown(eperm()), 65536, false).status, Status::Warn);
    }

    #[test]
    fn a_verifier_refusal_names_the_program_and_its_reason() {
        let refused = LoadError::program(
            "check_connect4",
            aya::programs::ProgramError::LoadError {
                io_error: io::Error::from_raw_os_error(libc::EACCES),
                verifier_log: aya_obj::VerifierLog::new(
                    "0: (b7) r0 = 0\nR0 !read_ok\nprocessed 2 insns\n".to_owned(),
                ),
            },
        );
        let (detail, fix) = load_failure(refused);
        assert_eq!(detail, "the kernel refused program check_connect4: R0 !read_ok");
        assert!(fix.contains(features::TESTED) && !fix.contains("CONFIG_CGROUP_BPF"), "{fix}");
    }

    #[test]
    fn other_failures_get_the_fix_of_their_errno() {
        let installing = LoadError::Map {
            map: "table_v4",
            what: "installing",
            source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_update_elem",
                io_error: io::Error::from_raw_os_error(libc::EINVAL),
            }),
        };
        let (detail, fix) = load_failure(installing);
        assert!(detail.starts_with("map table_v4: installing failed"), "{detail}");
        assert!(fix.contains("report it") && !fix.contains("CONFIG_CGROUP_BPF"), "{fix}");
        let (_, fix) = load_failure(LoadError::Unsupported { feature: &RING_BUFFER });
        assert!(fix.starts_with("upgrade to Linux 5.8"), "{fix}");
        let denied = LoadError::Btf { map: "table_v4", source: eperm() };
        assert!(load_failure(denied).1.contains("root"));
    }
}
