//! The only code that touches `aya::Ebpf`: loads the embedded BPF object, fills its maps,
//! attaches its programs to a cgroup, and detaches them when the [`Instance`] is dropped.
use std::net::Ipv4Addr;

use aya::{
    Ebpf, EbpfError,
    maps::{HashMap, MapData, MapError},
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError, ProgramType},
    util::KernelVersion,
};
use cgroup_connect_common::{BLOCKED_ADDRS_CAPACITY, BlockValue, Ipv4Key, maps, programs};

use crate::cgroup::CgroupDir;

/// The BPF object built by build.rs from the cgroup-connect-ebpf crate.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cgroup-connect"));

/// Why the programs could not be loaded, filled or attached.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The kernel cannot run cgroup `sock_addr` programs at all.
    #[error(
        "this kernel cannot run cgroup sock_addr BPF programs: it needs Linux 5.7 or later built \
         with CONFIG_BPF_SYSCALL=y and CONFIG_CGROUP_BPF=y (run `blocker doctor`)"
    )]
    Unsupported,
    /// The embedded object could not be parsed or its maps created.
    #[error("loading the BPF object failed")]
    Object(#[source] EbpfError),
    /// The object lacks a program or map the userspace expects: a build mismatch.
    #[error("the BPF object has no {kind} named {name}: rebuild with ./scripts/build.sh")]
    Missing { kind: &'static str, name: &'static str },
    /// The verifier or the kernel refused a program.
    #[error("loading BPF program {program} failed")]
    Program {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    /// Attaching to the cgroup failed.
    #[error("attaching {program} to cgroup {cgroup} failed")]
    Attach {
        program: &'static str,
        cgroup: String,
        #[source]
        source: ProgramError,
    },
    /// More rules than the map holds.
    #[error(
        "{count} addresses exceed the capacity of {capacity} of map {map}: block fewer addresses"
    )]
    Capacity { map: &'static str, count: usize, capacity: u32 },
    /// A map update failed.
    #[error("updating map {map} failed")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
}

/// The programs, loaded and attached to one cgroup. Dropping it detaches them.
pub struct Instance {
    // Owns the programs and their links: dropping it detaches.
    _ebpf: Ebpf,
}

impl Instance {
    /// Loads the programs, fills `blocked_addrs` with `blocked`, then attaches to `cgroup`
    /// through a BPF link, so programs of other tools on the same cgroup keep running.
    ///
    /// The maps are full before the first attach: the instance enforces its whole rule set from
    /// its first decision. On error nothing stays attached (the partial `Ebpf` is dropped).
    ///
    /// # Errors
    /// A [`LoadError`] saying which step failed.
    pub fn start(cgroup: &CgroupDir, blocked: &[Ipv4Addr]) -> Result<Self, LoadError> {
        let links = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 7, 0));
        if !links || !aya::sys::is_program_supported(ProgramType::CgroupSockAddr).unwrap_or(false) {
            return Err(LoadError::Unsupported);
        }
        raise_memlock_limit();
        let mut ebpf = Ebpf::load(BPF_OBJECT).map_err(LoadError::Object)?;
        fill_blocked(&mut ebpf, blocked)?;
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(programs::CHECK_CONNECT4)
            .and_then(|p| p.try_into().ok())
            .ok_or(LoadError::Missing { kind: "program", name: programs::CHECK_CONNECT4 })?;
        program
            .load()
            .map_err(|source| LoadError::Program { program: programs::CHECK_CONNECT4, source })?;
        // On 5.7+ aya attaches through bpf_link_create, and a cgroup link always runs
        // alongside other programs (the kernel attaches it with BPF_F_ALLOW_MULTI); it
        // rejects any flag, so the mode must be the flag-less Single.
        program.attach(cgroup, CgroupAttachMode::Single).map_err(|source| LoadError::Attach {
            program: programs::CHECK_CONNECT4,
            cgroup: cgroup.path().display().to_string(),
            source,
        })?;
        Ok(Self { _ebpf: ebpf })
    }
}

fn fill_blocked(ebpf: &mut Ebpf, blocked: &[Ipv4Addr]) -> Result<(), LoadError> {
    const MAP: &str = maps::BLOCKED_ADDRS;
    if blocked.len() > BLOCKED_ADDRS_CAPACITY as usize {
        return Err(LoadError::Capacity {
            map: MAP,
            count: blocked.len(),
            capacity: BLOCKED_ADDRS_CAPACITY,
        });
    }
    let map = ebpf.map_mut(MAP).ok_or(LoadError::Missing { kind: "map", name: MAP })?;
    let mut map: HashMap<&mut MapData, Ipv4Key, BlockValue> =
        HashMap::try_from(map).map_err(|source| LoadError::Map { map: MAP, source })?;
    for addr in blocked {
        map.insert(Ipv4Key::from_octets(addr.octets()), BlockValue { present: 1 }, 0)
            .map_err(|source| LoadError::Map { map: MAP, source })?;
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF memory to `RLIMIT_MEMLOCK`; lift it so large maps load. Newer
/// kernels charge the memory cgroup instead, and this is harmless.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads a valid rlimit; failure only leaves the old limit.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const unlimited) };
}
