//! The kernel features the blocker needs, each with the release that added it and a probe
//! that asks the running kernel. [`crate::loader::Prepared::load`] refuses to start when one
//! is missing, and `blocker doctor` prints one line per [`Feature::check`]: both call the
//! probes here, and neither compares version numbers (distribution kernels backport features,
//! and a recent kernel can be built without one). docs/kernels.md gives the sources of the
//! versions.
use std::{fmt, io, os::fd::AsFd as _};

use aya::{
    maps::{MapData, MapType},
    programs::{ProgramError, ProgramType},
    sys::{BpfHelper, SyscallError},
};
use aya_obj::generated::{BPF_F_MMAPABLE, bpf_attach_type, bpf_cmd, bpf_map_type};

use crate::btf::TableBtf;

/// What a probe found.
#[derive(Debug)]
pub enum Support {
    Present,
    Missing,
    /// The probe could not tell: without privileges, for example. The error says why.
    Unknown(io::Error),
}

/// How a feature is probed.
#[derive(Debug, Clone, Copy)]
enum Probe {
    /// Loads a trivial program of the type.
    Program(ProgramType),
    /// Creates a map of the type.
    Map(MapType),
    /// Creates a `BPF_F_MMAPABLE` array and writes to it through `mmap`.
    MmapableArray,
    /// Loads a BTF like the ones the tables are created with.
    Btf,
    /// Asks `BPF_LINK_CREATE` for a cgroup link of no program.
    CgroupLinks,
    /// Loads a cgroup `sock_addr` program that calls the helper.
    Helper(BpfHelper),
}

/// A kernel feature the blocker needs.
#[derive(Debug, Clone, Copy)]
pub struct Feature {
    /// The `blocker doctor` line that reports it.
    pub check: &'static str,
    /// What it is.
    pub name: &'static str,
    /// The first mainline release in which the blocker can use it.
    pub since: &'static str,
    /// A build option that leaves it out of a kernel recent enough to have it.
    pub config: Option<&'static str>,
    probe: Probe,
}

const fn feature(
    check: &'static str,
    name: &'static str,
    since: &'static str,
    probe: Probe,
) -> Feature {
    Feature { check, name, since, config: None, probe }
}

const fn helper(name: &'static str, since: &'static str, id: BpfHelper) -> Feature {
    feature("helpers", name, since, Probe::Helper(id))
}

/// The hooks: connect4/6 and sendmsg4/6 are all of this type.
pub const SOCK_ADDR: Feature = Feature {
    config: Some("CONFIG_CGROUP_BPF"),
    ..feature(
        "sock-addr",
        "cgroup sock_addr programs",
        "4.17",
        Probe::Program(ProgramType::CgroupSockAddr),
    )
};
/// The one-slot outer maps a table is swapped into.
pub const ARRAY_OF_MAPS: Feature =
    feature("maps", "arrays of maps", "4.12", Probe::Map(MapType::ArrayOfMaps));
/// The counters.
pub const PERCPU_ARRAY: Feature =
    feature("maps", "per-CPU arrays", "4.6", Probe::Map(MapType::PerCpuArray));
/// The events.
pub const RING_BUFFER: Feature =
    feature("maps", "ring buffers", "5.8", Probe::Map(MapType::RingBuf));
/// The tables, written with one copy.
pub const MMAPABLE_ARRAY: Feature =
    feature("mmap", "BPF_F_MMAPABLE arrays", "5.5", Probe::MmapableArray);
/// The tables are created with BTF like their templates.
pub const BTF: Feature = feature("btf", "BTF loading", "4.18", Probe::Btf);
/// Attaching next to other programs, detached when the blocker exits.
pub const CGROUP_LINKS: Feature = feature("links", "cgroup BPF links", "5.7", Probe::CgroupLinks);

/// Every feature, in the order `blocker doctor` prints them.
pub const REQUIRED: &[Feature] = &[
    SOCK_ADDR,
    ARRAY_OF_MAPS,
    PERCPU_ARRAY,
    RING_BUFFER,
    MMAPABLE_ARRAY,
    BTF,
    helper("bpf_get_current_uid_gid", "4.17", BpfHelper::BPF_FUNC_get_current_uid_gid),
    helper("bpf_get_current_pid_tgid", "5.7", BpfHelper::BPF_FUNC_get_current_pid_tgid),
    helper("bpf_get_current_comm", "5.7", BpfHelper::BPF_FUNC_get_current_comm),
    helper("bpf_get_current_cgroup_id", "5.7", BpfHelper::BPF_FUNC_get_current_cgroup_id),
    helper("bpf_ktime_get_boot_ns", "5.8", BpfHelper::BPF_FUNC_ktime_get_boot_ns),
    helper("bpf_ringbuf_reserve", "5.8", BpfHelper::BPF_FUNC_ringbuf_reserve),
    helper("bpf_ringbuf_submit", "5.8", BpfHelper::BPF_FUNC_ringbuf_submit),
    CGROUP_LINKS,
];

/// The kernels the whole suite runs on (scripts/kernel-matrix.sh).
pub const TESTED: &str = "6.1, 6.12 and 6.18";

impl Feature {
    /// Asks the running kernel.
    #[must_use]
    pub fn probe(&self) -> Support {
        match self.probe {
            Probe::Program(kind) => program_support(aya::sys::is_program_supported(kind)),
            Probe::Map(kind) => map_support(aya::sys::is_map_supported(kind)),
            Probe::MmapableArray => mmapable_array(),
            Probe::Btf => match TableBtf::load(&[8]) {
                Ok(_) => Support::Present,
                Err(e) => refused_as(e, libc::EINVAL),
            },
            Probe::CgroupLinks => cgroup_links(),
            Probe::Helper(id) => {
                match program_support(aya::sys::is_helper_supported(
                    ProgramType::CgroupSockAddr,
                    id,
                )) {
                    // Some helpers (bpf_get_current_comm) are offered only with CAP_PERFMON: the
                    // verifier's "unknown func" then says nothing about the kernel.
                    Support::Missing if !crate::privileges::perfmon_capable() => {
                        Support::Unknown(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            "cgroup programs may call it only with CAP_PERFMON, which is not \
                             effective",
                        ))
                    }
                    support => support,
                }
            }
        }
    }

    /// Whether it is a helper the programs call.
    #[must_use]
    pub fn is_helper(&self) -> bool {
        matches!(self.probe, Probe::Helper(_))
    }

    /// What a kernel without it lacks, with the release that added it.
    #[must_use]
    pub fn lacking(&self) -> String {
        let built =
            self.config.map(|c| format!(" (or it was built without {c})")).unwrap_or_default();
        format!("this kernel lacks {self}, added in Linux {}{built}", self.since)
    }

    /// How to get it.
    #[must_use]
    pub fn fix(&self) -> String {
        let or = self.config.map_or_else(
            || ", or to a distribution kernel that backports it".to_owned(),
            |c| format!(", or a kernel built with {c}=y"),
        );
        format!("upgrade to Linux {} or later{or}", self.since)
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_helper() {
            write!(f, "the helper {} in cgroup sock_addr programs", self.name)
        } else {
            f.write_str(self.name)
        }
    }
}

/// The first feature the running kernel lacks, if any. A probe that cannot tell does not count:
/// the load that follows reports its own error.
#[must_use]
pub fn first_missing() -> Option<&'static Feature> {
    REQUIRED.iter().find(|f| matches!(f.probe(), Support::Missing))
}

/// The oldest release that has every feature: the documented minimum.
#[must_use]
pub fn minimum() -> &'static str {
    let key = |f: &&Feature| release(f.since);
    REQUIRED.iter().max_by_key(key).map_or("", |f| f.since)
}

/// `"5.8"` as `(5, 8)`, for ordering releases.
#[must_use]
pub fn release(version: &str) -> (u32, u32) {
    let mut parts = version.split('.').map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn program_support(result: Result<bool, ProgramError>) -> Support {
    match result {
        Ok(true) => Support::Present,
        Ok(false) => Support::Missing,
        Err(ProgramError::SyscallError(e)) => Support::Unknown(e.io_error),
        Err(e) => Support::Unknown(io::Error::other(e)),
    }
}

fn map_support(result: Result<bool, SyscallError>) -> Support {
    match result {
        Ok(true) => Support::Present,
        Ok(false) => Support::Missing,
        Err(e) => Support::Unknown(e.io_error),
    }
}

/// `Missing` when the kernel refused with `errno` (it does not know what was asked for),
/// `Unknown` for any other error.
fn refused_as(err: io::Error, errno: i32) -> Support {
    if err.raw_os_error() == Some(errno) { Support::Missing } else { Support::Unknown(err) }
}

fn mmapable_array() -> Support {
    let def = aya_obj::Map::new_from_params(
        bpf_map_type::BPF_MAP_TYPE_ARRAY as u32,
        4,
        8,
        1,
        BPF_F_MMAPABLE,
    );
    let map = match MapData::create(def, "mmap_probe", None) {
        Ok(map) => map,
        // A kernel that does not know the flag refuses it with EINVAL.
        Err(aya::maps::MapError::CreateError { io_error, .. }) => {
            return refused_as(io_error, libc::EINVAL);
        }
        Err(e) => return Support::Unknown(io::Error::other(e)),
    };
    // SAFETY: the map is this function's alone, and its value area is one 8-byte entry.
    let mem = unsafe { memmap2::MmapOptions::new().len(8).map_mut(&map.fd().as_fd()) };
    match mem {
        Ok(mut mem) => {
            mem.copy_from_slice(&1u64.to_ne_bytes());
            Support::Present
        }
        Err(e) => Support::Unknown(e),
    }
}

/// `BPF_LINK_CREATE` for a cgroup connect4 link of an invalid program: a kernel with cgroup
/// links gets as far as looking the program up and answers `EBADF`; one without the command,
/// or without links for that attach type, answers `EINVAL`. Linux 5.7 added the command with
/// cgroup links as its first kind. The real attach in `blocker doctor` proves the rest.
fn cgroup_links() -> Support {
    use crate::loader::LinkCreateAttr;
    let attr = LinkCreateAttr {
        prog_fd: u32::MAX,
        target_fd: u32::MAX,
        attach_type: bpf_attach_type::BPF_CGROUP_INET4_CONNECT as u32,
        flags: 0,
    };
    // SAFETY: a valid bpf_attr prefix for BPF_LINK_CREATE, alive for the call. With no valid
    // descriptor in it, nothing can be created.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_LINK_CREATE as libc::c_long,
            &raw const attr,
            size_of::<LinkCreateAttr>(),
        )
    };
    let err = io::Error::last_os_error();
    if rc >= 0 {
        // Cannot happen with invalid descriptors; close it all the same.
        // SAFETY: the kernel returned a descriptor that nothing else owns.
        unsafe { libc::close(i32::try_from(rc).unwrap_or(-1)) };
        return Support::Present;
    }
    match err.raw_os_error() {
        Some(libc::EBADF) => Support::Present,
        Some(libc::EINVAL) => Support::Missing,
        _ => Support::Unknown(err),
    }
}

/// Whether the kernel charges BPF memory to the memory cgroup (Linux 5.11) rather than to
/// `RLIMIT_MEMLOCK`: a map is created with the soft limit at zero, which only a kernel that
/// ignores the limit allows. The limit is restored before returning.
#[must_use]
pub fn memcg_accounting() -> Support {
    let probe = || map_support(aya::sys::is_map_supported(MapType::Array));
    if let Support::Unknown(e) = probe() {
        return Support::Unknown(e);
    }
    let old = memlock_limit();
    let zero = libc::rlimit { rlim_cur: 0, rlim_max: old.rlim_max };
    // SAFETY: setrlimit reads a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const zero) } != 0 {
        return Support::Unknown(io::Error::last_os_error());
    }
    let result = probe();
    // SAFETY: as above; lowering the soft limit never fails, nor does restoring it.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const old) };
    match result {
        Support::Present => Support::Present,
        // Kernels that charge the limit refuse the map with EPERM.
        Support::Unknown(e) => refused_as(e, libc::EPERM),
        Support::Missing => Support::Unknown(io::Error::other("an array map was refused")),
    }
}

/// The current `RLIMIT_MEMLOCK`.
#[must_use]
pub fn memlock_limit() -> libc::rlimit {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes a valid rlimit.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &raw mut lim) };
    lim
}

/// Kernels before 5.11 charge BPF memory to `RLIMIT_MEMLOCK`: lift it so large maps load. On
/// newer kernels this is harmless.
pub fn lift_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads a valid rlimit; failure only leaves the old limit.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const unlimited) };
}

/// Whether the kernel runs BPF LSM programs: "bpf" in its active LSM list, which
/// /sys/kernel/security/lsm shows (securityfs), else the `lsm=` boot parameter, else the
/// build's `CONFIG_LSM` (/proc/config.gz or /boot/config-RELEASE) with `CONFIG_BPF_LSM=y`.
/// `None` when none of them can be read: the blocker then judges control messages per packet.
/// A program attached to an LSM hook on a kernel that does not run BPF LSM would never run,
/// so this decides, not the attach.
#[must_use]
pub fn bpf_lsm() -> Option<bool> {
    let has_bpf = |list: &str| list.trim().trim_matches('"').split(',').any(|m| m == "bpf");
    if let Ok(list) = std::fs::read_to_string("/sys/kernel/security/lsm") {
        return Some(has_bpf(&list));
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").ok()?;
    // Parameters after `--` go to init, not the kernel.
    let kernel = cmdline.split(" -- ").next().unwrap_or_default();
    if let Some(list) = kernel.split_whitespace().rev().find_map(|p| p.strip_prefix("lsm=")) {
        return Some(has_bpf(list));
    }
    let config = kernel_config()?;
    let value = |key: &str| {
        config.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
    };
    Some(value("CONFIG_BPF_LSM") == Some("y") && value("CONFIG_LSM").is_some_and(has_bpf))
}

/// The running kernel's build configuration, if it shows it.
fn kernel_config() -> Option<String> {
    use std::io::Read as _;
    if let Ok(file) = std::fs::File::open("/proc/config.gz") {
        let mut text = String::new();
        flate2::read::GzDecoder::new(file).read_to_string(&mut text).ok()?;
        return Some(text);
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    std::fs::read_to_string(format!("/boot/config-{}", release.trim())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimum_is_the_newest_feature() {
        assert_eq!(minimum(), "5.8");
        assert_eq!(release("4.17"), (4, 17));
        assert!(release("4.17") > release("4.6"));
    }

    #[test]
    fn checks_are_contiguous() {
        // doctor prints one line per run of the same check.
        let mut seen: Vec<&str> = Vec::new();
        for f in REQUIRED {
            if seen.last() != Some(&f.check) {
                assert!(!seen.contains(&f.check), "{} is split", f.check);
                seen.push(f.check);
            }
        }
    }

    #[test]
    fn a_missing_feature_names_itself_and_its_release() {
        assert_eq!(RING_BUFFER.lacking(), "this kernel lacks ring buffers, added in Linux 5.8");
        assert!(RING_BUFFER.fix().starts_with("upgrade to Linux 5.8 or later"));
        assert!(SOCK_ADDR.lacking().contains("built without CONFIG_CGROUP_BPF"));
        assert!(SOCK_ADDR.fix().contains("CONFIG_CGROUP_BPF=y"));
        let boot = REQUIRED.iter().find(|f| f.name == "bpf_ktime_get_boot_ns").unwrap();
        assert_eq!(
            boot.lacking(),
            "this kernel lacks the helper bpf_ktime_get_boot_ns in cgroup sock_addr programs, \
             added in Linux 5.8"
        );
    }
}
