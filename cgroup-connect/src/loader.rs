//! The only code that touches aya's program and map types: loads the embedded BPF object,
//! writes the rule tables, attaches the four `sock_addr` programs and the packet checks to a
//! cgroup, pins maps and links, opens
//! a running or pinned instance from its pins, swaps tables, reads counters, and detaches.
//!
//! Each table is a fresh BPF array sized to fit, written with one copy through `mmap`, then
//! put into its one-slot array of maps with a single update: a decision sees either the old
//! table or the new one, never a mix, and the kernel frees the old table once no program runs
//! on it. A decision only reads the table of its destination's family (IPv4-mapped IPv6
//! destinations read the IPv4 one).
use std::{
    collections::HashMap as StdHashMap,
    io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader, Pod,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, RingBuf, of_maps::ArrayOfMaps},
    pin::PinError as AyaPinError,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr,
        CgroupSockopt, LsmCgroup, Program, ProgramError,
        cgroup_sock::CgroupSockAttachType,
        cgroup_sock_addr::{CgroupSockAddrAttachType, CgroupSockAddrLinkId},
        cgroup_sockopt::CgroupSockoptAttachType,
        links::{FdLink, LinkError, PinnedLink},
    },
};
use cgroup_connect_common::{
    CONFIG_AUDIT, HIT_CLASSES, HitCount, MAX_NAT64_PREFIXES, OBSERVE_CAPACITY, ObserveSet,
    Observed, ObservedKey, TABLE_CLASSES, TABLE_LAYOUT, config, maps, observe_stats,
    packet::socket_kind, programs, stats,
};

use crate::{
    btf::{self, TableBtf},
    cgroup::CgroupDir,
    features::{self, Feature},
    pins::InstancePaths,
    rules::Nat64Prefix,
    table::Tables,
};

/// The BPF object built by build.rs from the cgroup-connect-ebpf crate.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cgroup-connect"));

/// The embedded BPF object: `tests/object.rs` checks it against the common crate's names.
#[must_use]
pub fn bpf_object() -> &'static [u8] {
    BPF_OBJECT
}

/// Why the programs could not be loaded, their tables written, pinned or attached.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The kernel lacks a feature the blocker needs (a probe said so).
    #[error("{}: {} (`blocker doctor` checks every feature)", .feature.lacking(), .feature.fix())]
    Unsupported { feature: &'static Feature },
    /// The embedded object could not be parsed or its maps created.
    #[error("loading the BPF object failed")]
    Object(#[source] EbpfError),
    /// The object lacks a program or map the userspace expects: a build mismatch.
    #[error("the BPF object has no {kind} named {name}: rebuild with ./scripts/build.sh")]
    Missing { kind: &'static str, name: &'static str },
    /// The verifier or the kernel refused a program: one line with the verifier's reason (its
    /// last message); the whole log is kept for `--verifier-log FILE`. Built by
    /// [`LoadError::program`].
    #[error(
        "the kernel refused BPF program {program} ({errno}): {reason}; `--verifier-log FILE` \
         writes the verifier's whole log"
    )]
    Program {
        program: &'static str,
        /// The last line of the verifier log that says why, or the error itself without a log.
        reason: String,
        /// The whole verifier log (empty when the kernel gave none).
        log: String,
        errno: io::Error,
    },
    /// Attaching to the cgroup failed.
    #[error("attaching {program} to cgroup {cgroup} failed")]
    Attach {
        program: &'static str,
        cgroup: String,
        #[source]
        source: ProgramError,
    },
    /// A link could not be taken over from aya.
    #[error("taking the link of {program} failed")]
    Link {
        program: &'static str,
        #[source]
        source: LinkError,
    },
    /// A map operation failed.
    #[error("map {map}: {what} failed")]
    Map {
        map: &'static str,
        what: &'static str,
        #[source]
        source: MapError,
    },
    /// A table has more chunks than the largest size class holds.
    #[error("table {map} has {chunks} chunks, more than the largest size class holds ({max})")]
    TooBig { map: &'static str, chunks: usize, max: u32 },
    /// The BTF a table is created with could not be loaded.
    #[error("loading the BTF of table {map} failed")]
    Btf {
        map: &'static str,
        #[source]
        source: io::Error,
    },
    /// Mapping a table into memory failed.
    #[error("mapping table {map} ({bytes} bytes) into memory failed")]
    Mmap {
        map: &'static str,
        bytes: usize,
        #[source]
        source: io::Error,
    },
    /// Freeing the table of a size class (emptying its outer map) failed.
    #[error("freeing the table of {map} failed")]
    FreeTable {
        map: &'static str,
        #[source]
        source: io::Error,
    },
    /// A pinned program could not be opened.
    #[error("opening the pinned program {} failed", path.display())]
    OpenProgram {
        path: PathBuf,
        #[source]
        source: ProgramError,
    },
    /// Pinning a map, a program or a link failed.
    #[error("pinning {what} at {} failed", path.display())]
    Pin {
        /// `a map` or `a link`.
        what: &'static str,
        path: PathBuf,
        #[source]
        source: AyaPinError,
    },
    /// A pinned map could not be opened.
    #[error("opening the pinned map {} failed", path.display())]
    OpenMap {
        path: PathBuf,
        #[source]
        source: MapError,
    },
    /// A pinned instance's programs read another table layout than this version writes: it
    /// was pinned by another version.
    #[error(
        "instance {name} was pinned by another version of cgroup-connect (its programs read \
         table layout {found}, this version writes {TABLE_LAYOUT}): run `blocker detach {name}`, \
         then `blocker run` again"
    )]
    Layout { name: String, found: u32 },
    /// A pinned link could not be opened.
    #[error("opening the pinned link {} failed", path.display())]
    OpenLink {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    /// A pin exists and could not be removed.
    #[error("unpinning {} failed", path.display())]
    Unpin {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Totals of an instance's decisions since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub allowed: u64,
    pub blocked: u64,
    /// Audit mode: would have blocked.
    pub audit_would_block: u64,
    pub events_lost: u64,
    pub failed_closed: u64,
}

/// A link this process holds: owned (detached when dropped) or pinned (outlives it).
enum HeldLink {
    Owned(#[expect(dead_code, reason = "held for its drop: closing it detaches")] FdLink),
    Pinned(#[expect(dead_code, reason = "held while the process runs")] PinnedLink),
}

impl LoadError {
    /// A refused program: keeps the verifier's reason and log apart, so that the message is one
    /// line and the log goes where `--verifier-log` says.
    #[must_use]
    pub fn program(program: &'static str, err: ProgramError) -> Self {
        match err {
            ProgramError::LoadError { io_error, verifier_log } => {
                let log = verifier_log.to_string();
                let reason =
                    verifier_reason(&log).map_or_else(|| io_error.to_string(), str::to_owned);
                Self::Program { program, reason, log, errno: io_error }
            }
            ProgramError::SyscallError(e) => Self::Program {
                program,
                reason: e.to_string(),
                log: String::new(),
                errno: e.io_error,
            },
            other => {
                let reason = other.to_string();
                Self::Program {
                    program,
                    reason,
                    log: String::new(),
                    errno: io::Error::other(other),
                }
            }
        }
    }
}

/// The line of a verifier log that says why it refused the program: the last one before the
/// statistics the kernel appends.
#[must_use]
pub fn verifier_reason(log: &str) -> Option<&str> {
    const STATISTICS: [&str; 4] =
        ["processed ", "verification time ", "stack depth ", "max_states_per_insn "];
    log.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !STATISTICS.iter().any(|s| l.starts_with(s)))
}

/// Writes the verifier log of the first refused program in `err`'s chain to `path` (`-`:
/// standard output; a new file is made 0600, a symbolic link refused). Does nothing when no
/// program was refused.
///
/// # Errors
/// When the file cannot be written.
pub fn write_verifier_log(
    err: &(dyn std::error::Error + 'static),
    path: &std::path::Path,
) -> anyhow::Result<()> {
    use std::io::Write as _;

    use anyhow::Context as _;
    let mut cause = Some(err);
    let (program, log) = loop {
        match cause {
            None => return Ok(()),
            Some(e) => match e.downcast_ref::<LoadError>() {
                Some(LoadError::Program { program, log, .. }) => break (program, log),
                _ => cause = e.source(),
            },
        }
    };
    let mut out = crate::events::open_sink(path)?;
    writeln!(out, "verifier log of BPF program {program}:\n{log}")
        .and_then(|()| out.flush())
        .with_context(|| format!("writing the verifier log to {}", path.display()))
}

/// Which packet checks an instance runs (see `programs::PACKET_CHECKS`): the socket and option
/// checks always; the control-message check where the kernel runs BPF LSM programs; the
/// per-packet egress check where it does not (it then judges control messages too), or when
/// some socket kind is allowed (it judges their packets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketChecks {
    /// The socket kinds allowed (`packet::socket_kind` bits).
    pub allowed_sockets: u32,
    /// The offsets of `msg_control` and `msg_controllen` in `struct msghdr` for the
    /// control-message check; `None` where the kernel cannot run it.
    pub lsm: Option<(u32, u32)>,
}

impl PacketChecks {
    /// The checks this kernel can run for an instance that allows `allowed_sockets`.
    #[must_use]
    pub fn for_kernel(allowed_sockets: u32) -> Self {
        let lsm = if features::bpf_lsm() == Some(true) { btf::msghdr_control() } else { None };
        Self { allowed_sockets: allowed_sockets & socket_kind::MASK, lsm }
    }

    /// The programs, in the order they are attached.
    #[must_use]
    pub fn programs(&self) -> Vec<&'static str> {
        let mut out = vec![programs::SOCKET, programs::SETSOCKOPT];
        if self.lsm.is_some() {
            out.push(programs::SENDMSG_OPTIONS);
        }
        if self.lsm.is_none() || self.allowed_sockets != 0 {
            out.push(programs::EGRESS);
        }
        out
    }
}

/// The BPF object with its maps created and its programs loaded (verified) but not attached:
/// the slow part of a start, which `blocker run` does while it reads and compiles the policy.
pub struct Prepared {
    ebpf: Ebpf,
    checks: Option<PacketChecks>,
    /// Why the kernel refused the control-message check, where it did (`doctor` says it).
    lsm_refused: Option<String>,
}

impl Prepared {
    /// Probes the kernel for every feature the blocker needs, then creates the maps (observe
    /// mode's with `observe_capacity` entries) and loads the four `sock_addr` programs and the
    /// packet checks (`None`: `--no-packet-checks`).
    ///
    /// # Errors
    /// [`LoadError::Unsupported`] naming the first feature the kernel lacks, or a load failure.
    pub fn load(checks: Option<PacketChecks>, observe_capacity: u32) -> Result<Self, LoadError> {
        if let Some(feature) = crate::timings::time("probe", features::first_missing) {
            return Err(LoadError::Unsupported { feature });
        }
        features::lift_memlock_limit();
        let started = std::time::Instant::now();
        let mut ebpf = crate::timings::time("object", || {
            load_object(checks.as_ref(), None, observe_capacity)
        })?;
        let mut checks = checks;
        let lsm_refused = load_programs(&mut ebpf, &programs::ALL, checks.as_mut())?;
        crate::timings::add("verify", started.elapsed());
        Ok(Self { ebpf, checks, lsm_refused })
    }

    /// Lets the cgroup make sockets of the kinds `allowed` too (the policy file's
    /// `allow_sockets`, read after the load began): loads the egress check if they need it.
    ///
    /// # Errors
    /// A load failure.
    pub fn allow_sockets(&mut self, allowed: u32) -> Result<(), LoadError> {
        let Some(checks) = self.checks.as_mut() else { return Ok(()) };
        let before = checks.programs();
        checks.allowed_sockets |= allowed & socket_kind::MASK;
        for name in checks.programs() {
            if !before.contains(&name) {
                load_check(&mut self.ebpf, name)?;
            }
        }
        Ok(())
    }

    /// The packet-check programs loaded, in attach order (`programs::PACKET_CHECKS` names).
    #[must_use]
    pub fn packet_programs(&self) -> Vec<String> {
        let programs = self.checks.as_ref().map(PacketChecks::programs).unwrap_or_default();
        programs.into_iter().map(str::to_owned).collect()
    }

    /// Why the kernel refused the control-message check, if it did (then the egress program
    /// judges control messages).
    #[must_use]
    pub fn lsm_refused(&self) -> Option<&str> {
        self.lsm_refused.as_deref()
    }
}

/// Parses the object and creates its maps (reusing those pinned under `pins`; observe mode's
/// with `observe_capacity` entries when it is made), with the `msghdr` offsets of `checks` in
/// its read-only data.
fn load_object(
    checks: Option<&PacketChecks>,
    pins: Option<&InstancePaths>,
    observe_capacity: u32,
) -> Result<Ebpf, LoadError> {
    let (control, len) = checks.and_then(|c| c.lsm).unwrap_or_default();
    let paths: Vec<(&'static str, PathBuf)> = pins
        .map(|p| maps::PINNED.iter().map(|&map| (map, p.map(map))).collect())
        .unwrap_or_default();
    let mut loader = EbpfLoader::new();
    loader.override_global("MSGHDR_CONTROL", &control, true).override_global(
        "MSGHDR_CONTROLLEN",
        &len,
        true,
    );
    loader.map_max_entries(maps::OBSERVED, observe_capacity);
    for (map, path) in &paths {
        loader.map_pin_path(map, path.as_path());
    }
    loader.load(BPF_OBJECT).map_err(LoadError::Object)
}

/// The programs the verifier takes longest on (instructions it processed on 6.18: connect6
/// 128k, sendmsg6 112k, connect4 35k, sendmsg4 33k, setsockopt 19k; the egress check, 231k,
/// is loaded first on its own), queued first so that the loading threads end together.
const LARGEST_FIRST: [&str; 5] = [
    programs::CONNECT6,
    programs::SENDMSG6,
    programs::CONNECT4,
    programs::SENDMSG4,
    programs::SETSOCKOPT,
];

/// Loads (verifies) the `sock_addr` programs `sock_addr` and those of `checks`, on as many
/// threads as there are CPUs: the kernel verifies a program in the thread that loads it, and
/// verification is most of a start. Where the kernel refuses the control-message check (BPF
/// LSM not active, or a kernel that lets no LSM program load), the egress check takes its
/// place: `checks` then says so, never a check that is not in force. That check is tried
/// first, then the egress one if it is needed, on this thread while the others take the rest.
/// Returns why the control-message check was refused, if it was.
fn load_programs(
    ebpf: &mut Ebpf,
    sock_addr: &[&'static str],
    checks: Option<&mut PacketChecks>,
) -> Result<Option<String>, LoadError> {
    let mut queued: Vec<&'static str> = sock_addr.to_vec();
    if checks.is_some() {
        queued.extend([programs::SOCKET, programs::SETSOCKOPT]);
    }
    queued.sort_by_key(|name| LARGEST_FIRST.iter().position(|n| n == name).unwrap_or(usize::MAX));
    let mut all: StdHashMap<&str, &mut Program> = ebpf.programs_mut().collect();
    let mut take = |name: &'static str| {
        all.remove(name).map(|p| (name, p)).ok_or(LoadError::Missing { kind: "program", name })
    };
    let queue: Vec<_> = queued.into_iter().map(&mut take).collect::<Result<_, _>>()?;
    let lsm = checks.as_ref().filter(|c| c.lsm.is_some());
    let lsm = lsm.map(|_| take(programs::SENDMSG_OPTIONS)).transpose()?;
    let egress = checks.as_ref().map(|_| take(programs::EGRESS)).transpose()?;
    let queue = Mutex::new(queue.into_iter());
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (1..threads).map(|_| scope.spawn(|| load_queued(&queue))).collect();
        let mut result = (|| {
            let mut refused = None;
            if let Some(checks) = checks {
                if let Some((name, program)) = lsm
                    && let Err(e) = load_program(name, program)
                {
                    // Not a warning: on such kernels it would be printed at every start. The
                    // attached line, `status` and `doctor` say which check is in force;
                    // `doctor` says why.
                    let e = format!("{:#}", anyhow::Error::from(e));
                    tracing::debug!("{e}: control messages are judged per packet instead (egress)");
                    checks.lsm = None;
                    refused = Some(e);
                }
                if let Some((name, program)) = egress
                    && checks.programs().contains(&name)
                {
                    load_program(name, program)?;
                }
            }
            load_queued(&queue)?;
            Ok(refused)
        })();
        if result.is_err() {
            // The other threads stop after the program they are loading.
            queue.lock().unwrap_or_else(PoisonError::into_inner).by_ref().for_each(drop);
        }
        for worker in workers {
            let loaded = worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            if let (Ok(_), Err(e)) = (&result, loaded) {
                result = Err(e);
            }
        }
        result
    })
}

/// Loads the programs of `queue` until it is empty or one fails.
fn load_queued<'a, I>(queue: &Mutex<I>) -> Result<(), LoadError>
where
    I: Iterator<Item = (&'static str, &'a mut Program)>,
{
    loop {
        let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
        let Some((name, program)) = next else { return Ok(()) };
        load_program(name, program)?;
    }
}

/// Loads (verifies) the packet-check program `name`.
fn load_check(ebpf: &mut Ebpf, name: &'static str) -> Result<(), LoadError> {
    load_program(name, check_program(ebpf, name)?)
}

/// Loads (verifies) `program`, named `name`; its time goes to the `name` phase of `--timings`.
fn load_program(name: &'static str, program: &mut Program) -> Result<(), LoadError> {
    let started = std::time::Instant::now();
    let loaded = match program {
        Program::CgroupSockAddr(p) => p.load(),
        Program::CgroupSock(p) => p.load(),
        Program::CgroupSockopt(p) => p.load(),
        Program::CgroupSkb(p) => p.load(),
        Program::LsmCgroup(p) => aya::Btf::from_sys_fs()
            .map_err(ProgramError::Btf)
            .and_then(|btf| p.load("socket_sendmsg", &btf)),
        _ => return Err(LoadError::Missing { kind: "program", name }),
    };
    crate::timings::add(name, started.elapsed());
    loaded.map_err(|source| LoadError::program(name, source))
}

/// The packet-check program `name` pinned at `path`.
fn pinned_check(name: &'static str, path: &Path) -> Result<Program, ProgramError> {
    Ok(match name {
        programs::SOCKET => {
            Program::CgroupSock(CgroupSock::from_pin(path, CgroupSockAttachType::SockCreate)?)
        }
        programs::SETSOCKOPT => {
            Program::CgroupSockopt(CgroupSockopt::from_pin(path, CgroupSockoptAttachType::Set)?)
        }
        programs::SENDMSG_OPTIONS => Program::LsmCgroup(LsmCgroup::from_pin(path)?),
        _ => Program::CgroupSkb(CgroupSkb::from_pin(path, CgroupSkbAttachType::Egress)?),
    })
}

/// Attaches the packet-check `program` (`name`) to `cgroup` and takes its link over (`paths`:
/// where a setsockopt link is pinned for a moment, see [`sockopt_link`]).
fn attach_check(
    program: &mut Program,
    name: &'static str,
    cgroup: &CgroupDir,
    paths: &InstancePaths,
) -> Result<FdLink, LoadError> {
    let single = CgroupAttachMode::Single;
    let failed = attach_error(name, cgroup);
    let link = |e: LinkError| LoadError::Link { program: name, source: e };
    match program {
        Program::CgroupSock(p) => {
            let id = p.attach(cgroup, single).map_err(&failed)?;
            FdLink::try_from(p.take_link(id).map_err(&failed)?).map_err(link)
        }
        Program::CgroupSockopt(p) => {
            let prog = p.fd().map_err(&failed)?.as_fd();
            sockopt_link(prog, cgroup, &paths.link(&format!("{name}_new"))).map_err(|source| {
                LoadError::Attach {
                    program: name,
                    cgroup: cgroup.path().display().to_string(),
                    source: ProgramError::IOError(source),
                }
            })
        }
        Program::LsmCgroup(p) => {
            let id = p.attach(cgroup).map_err(&failed)?;
            Ok(p.take_link(id).map_err(&failed)?.into())
        }
        Program::CgroupSkb(p) => attach_egress(p, cgroup),
        _ => Err(LoadError::Missing { kind: "program", name }),
    }
}

/// An instance's maps and the links this process holds. Dropping it detaches the links it
/// owns; pinned links stay.
pub struct Instance {
    maps: StdHashMap<&'static str, Map>,
    links: Vec<HeldLink>,
}

impl Instance {
    /// Loads the programs, writes `tables`, sets audit mode and the DNS forwarder's port, pins
    /// the maps under `paths`, then attaches connect4, connect6, sendmsg4 and sendmsg6 to
    /// `cgroup` through BPF links (so programs of other tools on the same cgroup keep running),
    /// recvmsg4 and getpeername4 only with a forwarder (`dns_port`), then the packet checks if
    /// `prepared` loaded them, pinning the links too when `pin_links` is set.
    ///
    /// The tables and the port are in place before the first attach: the instance enforces its
    /// whole policy, and sends DNS to the forwarder, from its first decision. On error nothing stays attached or pinned. With no `cgroup`
    /// (one that is not made yet) nothing is attached: [`Instance::reattach`] attaches the
    /// pinned programs once it is there.
    ///
    /// # Errors
    /// A [`LoadError`] saying which step failed.
    pub fn create(
        paths: &InstancePaths,
        cgroup: Option<&CgroupDir>,
        tables: &Tables,
        audit: bool,
        pin_links: bool,
        dns_port: Option<u16>,
        prepared: Prepared,
    ) -> Result<Self, LoadError> {
        // Nothing may stay attached or pinned after an error: the body runs in a closure so
        // that every `?` reaches the clean-up below.
        let result = (|| {
            let mut ebpf = prepared.ebpf;
            let mut this = Self { maps: StdHashMap::new(), links: Vec::new() };
            for name in maps::PINNED {
                let map = ebpf.take_map(name).ok_or(LoadError::Missing { kind: "map", name })?;
                this.maps.insert(name, map);
            }
            this.swap(tables, &[])?;
            this.set_flags(audit, prepared.checks.map_or(0, |c| c.allowed_sockets))?;
            this.set_dns_port(dns_port.unwrap_or(0))?;
            let sock_addr = sock_addr_programs(dns_port.is_some());
            for name in maps::PINNED {
                let path = paths.map(name);
                this.maps[name].pin(&path).map_err(|source| LoadError::Pin {
                    what: "a map",
                    path,
                    source,
                })?;
            }
            for &name in &sock_addr {
                let path = paths.program(name);
                program(&mut ebpf, name)?.pin(&path).map_err(pin_error("a program", path))?;
            }
            let checks = prepared.checks.as_ref().map(PacketChecks::programs).unwrap_or_default();
            for &name in &checks {
                let path = paths.program(name);
                check_program(&mut ebpf, name)?.pin(&path).map_err(pin_error("a program", path))?;
            }
            let Some(cgroup) = cgroup else { return Ok(this) };
            let attaching = std::time::Instant::now();
            for name in sock_addr {
                let link = attach_link(program(&mut ebpf, name)?, name, cgroup)?;
                this.links.push(hold(link, pin_links.then(|| paths.link(name)))?);
            }
            for name in checks {
                let link = attach_check(check_program(&mut ebpf, name)?, name, cgroup, paths)?;
                this.links.push(hold(link, pin_links.then(|| paths.link(name)))?);
            }
            crate::timings::add("attach", attaching.elapsed());
            Ok(this)
        })();
        if result.is_err() {
            let _ = unpin(paths);
        }
        result
    }

    /// Attaches the instance's programs (from their pins) to `cgroup` again, through new links
    /// that replace the ones this process holds or that are pinned: for a cgroup that was
    /// removed and made anew at the same path, whose old links went with it.
    ///
    /// # Errors
    /// [`LoadError::OpenProgram`] when a program pin is missing (an instance made by a version
    /// that did not pin programs), or an attach or pin failure; links already made anew stay.
    pub fn reattach(
        &mut self,
        paths: &InstancePaths,
        cgroup: &CgroupDir,
        pin_links: bool,
    ) -> Result<(), LoadError> {
        let mut links = Vec::with_capacity(programs::LINKED.len());
        for name in programs::LINKED {
            let path = paths.program(name);
            // The packet checks the instance has (`--no-packet-checks`: none), and the DNS
            // programs only with a forwarder.
            let optional = programs::PACKET_CHECKS.contains(&name) || programs::DNS.contains(&name);
            if optional && !path.exists() {
                continue;
            }
            let link = if programs::PACKET_CHECKS.contains(&name) {
                let mut program = pinned_check(name, &path)
                    .map_err(|source| LoadError::OpenProgram { path, source })?;
                attach_check(&mut program, name, cgroup, paths)?
            } else {
                let mut program = CgroupSockAddr::from_pin(&path, attach_type(name))
                    .map_err(|source| LoadError::OpenProgram { path, source })?;
                attach_link(&mut program, name, cgroup)?
            };
            links.push(if pin_links {
                // Pinned beside the old pin, then renamed over it: the pin is never missing
                // (bpffs refuses dots in names).
                let new = paths.link(&format!("{name}_new"));
                let _ = std::fs::remove_file(&new);
                drop(hold(link, Some(new.clone()))?);
                let path = paths.link(name);
                std::fs::rename(&new, &path)
                    .map_err(|source| LoadError::Unpin { path: new, source })?;
                HeldLink::Pinned(open_link(path)?)
            } else {
                hold(link, None)?
            });
        }
        self.links = links;
        Ok(())
    }

    /// Opens a running or pinned instance from its pins: its maps, and its links if pinned.
    ///
    /// # Errors
    /// [`LoadError::OpenMap`] when a map pin is missing or cannot be opened,
    /// [`LoadError::OpenLink`] when a link pin exists and cannot be opened.
    pub fn open(paths: &InstancePaths) -> Result<Self, LoadError> {
        let mut this = Self { maps: StdHashMap::new(), links: Vec::new() };
        for name in maps::PINNED {
            let path = paths.map(name);
            if OBSERVE_MAPS.contains(&name) && !path.exists() {
                // Pinned by a version without observe mode: `blocker learn` says so.
                continue;
            }
            if name == maps::DNS_LEARNED && !path.exists() {
                // Pinned by a version without the forwarder's fast path: it goes the slow way.
                continue;
            }
            let map = MapData::from_pin(&path)
                .and_then(Map::from_map_data)
                .map_err(|source| LoadError::OpenMap { path, source })?;
            this.maps.insert(name, map);
        }
        // A configuration map older than the layout word is too short to hold it: layout 0.
        let found = this.config_word(config::TABLE_LAYOUT).unwrap_or(0);
        if found != TABLE_LAYOUT {
            return Err(LoadError::Layout { name: paths.name.clone(), found });
        }
        for name in programs::LINKED {
            let path = paths.link(name);
            if path.exists() {
                this.links.push(HeldLink::Pinned(open_link(path)?));
            }
        }
        Ok(this)
    }

    /// Makes an instance opened from its pins run the packet checks `checks` (`None`: none):
    /// attaches, on its pinned maps, those it lacks and pins their links, then detaches those
    /// it has and should not (a new check is in force before an old one goes). For an instance
    /// pinned by a version with other checks, or run with other flags before. With no `cgroup`
    /// (not made yet) the programs are only pinned, for [`Instance::reattach`].
    ///
    /// # Errors
    /// A [`LoadError`]; checks added before the failure stay.
    pub fn set_packet_checks(
        &mut self,
        paths: &InstancePaths,
        cgroup: Option<&CgroupDir>,
        checks: Option<PacketChecks>,
    ) -> Result<(), LoadError> {
        let mut checks = checks;
        let mut ebpf = None;
        if let Some(checks) = checks.as_mut()
            && checks.programs().iter().any(|name| !paths.link(name).exists())
        {
            features::lift_memlock_limit();
            // An instance of an older version has no observe map: it gets the default size.
            let mut object = load_object(Some(checks), Some(paths), OBSERVE_CAPACITY)?;
            load_programs(&mut object, &[], Some(checks))?;
            ebpf = Some(object);
        }
        let wanted = checks.as_ref().map(PacketChecks::programs).unwrap_or_default();
        if let Some(mut ebpf) = ebpf {
            for name in wanted.iter().copied().filter(|name| !paths.link(name).exists()) {
                let program = check_program(&mut ebpf, name)?;
                let path = paths.program(name);
                let _ = std::fs::remove_file(&path);
                program.pin(&path).map_err(pin_error("a program", path))?;
                let Some(cgroup) = cgroup else { continue };
                let link = attach_check(program, name, cgroup, paths)?;
                self.links.push(hold(link, Some(paths.link(name)))?);
            }
        }
        for name in programs::PACKET_CHECKS {
            if !wanted.contains(&name) {
                remove_program(paths, name)?;
            }
        }
        Ok(())
    }

    /// Gives an instance opened from its pins the DNS forwarder `dns_port` asks for. With one,
    /// the DNS programs it lacks are loaded on its pinned maps, pinned and attached (pinned
    /// links), then the port is written: replies are shown from the resolver before any query
    /// goes to the forwarder. Without one, the port is cleared first (DNS goes to the resolvers
    /// again), then the DNS programs are detached and unpinned. With no `cgroup` (not made
    /// yet) the programs are only pinned, for [`Instance::reattach`].
    ///
    /// # Errors
    /// A [`LoadError`]; programs added before the failure stay, and the port is unchanged.
    pub fn set_dns(
        &mut self,
        paths: &InstancePaths,
        cgroup: Option<&CgroupDir>,
        dns_port: Option<u16>,
    ) -> Result<(), LoadError> {
        let Some(port) = dns_port else {
            self.set_dns_port(0)?;
            for name in programs::DNS {
                remove_program(paths, name)?;
            }
            return Ok(());
        };
        let missing = |name: &&'static str| {
            !paths.program(name).exists() || (cgroup.is_some() && !paths.link(name).exists())
        };
        if programs::DNS.iter().any(missing) {
            features::lift_memlock_limit();
            // An instance of an older version has no observe map: it gets the default size.
            let mut ebpf = load_object(None, Some(paths), OBSERVE_CAPACITY)?;
            for name in programs::DNS.iter().copied().filter(missing) {
                let program = program(&mut ebpf, name)?;
                program.load().map_err(|source| LoadError::program(name, source))?;
                let path = paths.program(name);
                let _ = std::fs::remove_file(&path);
                program.pin(&path).map_err(pin_error("a program", path))?;
                let Some(cgroup) = cgroup else { continue };
                unpin_link(paths, name)?;
                let link = attach_link(program, name, cgroup)?;
                self.links.push(hold(link, Some(paths.link(name)))?);
            }
        }
        self.set_dns_port(port)
    }

    /// Replaces the tables of both families, each in one atomic step, then the NAT64 prefixes,
    /// then the per-rule hit counters with a new array holding `hits` (by rule id: ids follow
    /// the rule list, which may have changed). The counters swap after the tables, so a
    /// decision in between counts a new id in the old array, where it is lost, never under
    /// another rule.
    ///
    /// # Errors
    /// A [`LoadError`]; a family whose new table could not be written keeps its old one.
    pub fn swap(&mut self, tables: &Tables, hits: &[(u32, u64)]) -> Result<(), LoadError> {
        crate::timings::time("write", || {
            self.write_table(&maps::RULES_V4, config::V4_CLASS, maps::TABLE_V4, &tables.v4)?;
            self.write_table(&maps::RULES_V6, config::V6_CLASS, maps::TABLE_V6, &tables.v6)
        })?;
        self.set_config_word(config::TABLE_LAYOUT, TABLE_LAYOUT)?;
        self.set_nat64(&tables.nat64)?;
        self.write_hits(tables.max_rule_id, hits)
    }

    /// Installs a new hit-counter array for rule ids up to `max_rule_id` (the smallest class
    /// above it, else the largest), holding `hits`; ids past its end are not kept.
    fn write_hits(&mut self, max_rule_id: u32, hits: &[(u32, u64)]) -> Result<(), LoadError> {
        let class =
            HIT_CLASSES.iter().position(|&c| c > max_rule_id).unwrap_or(HIT_CLASSES.len() - 1);
        let len = HIT_CLASSES[class] as usize * size_of::<HitCount>();
        self.install_new(
            &maps::RULE_HITS,
            config::HITS_CLASS,
            class,
            maps::HITS,
            size_of::<HitCount>(),
            len,
            |window_at, mem| {
                for &(id, n) in hits {
                    let Some(at) = (id as usize * size_of::<HitCount>()).checked_sub(window_at)
                    else {
                        continue;
                    };
                    if let Some(slot) = mem.get_mut(at..at + size_of::<HitCount>()) {
                        slot.copy_from_slice(&n.to_ne_bytes());
                    }
                }
            },
        )
    }

    /// Writes the NAT64 prefixes into the config words: the prefixes, then their count (when
    /// the list shrinks, the count first), so a decision never reads a slot being filled. A
    /// prefix that a change moves to another slot is written word by word: a decision in that
    /// instant may judge an address under it by the IPv6 table.
    fn set_nat64(&mut self, prefixes: &[Nat64Prefix]) -> Result<(), LoadError> {
        let prefixes = &prefixes[..prefixes.len().min(MAX_NAT64_PREFIXES as usize)];
        let count = u32::try_from(prefixes.len()).expect("a few prefixes");
        let old = match self.config_word(config::NAT64_COUNT) {
            Ok(old) => old,
            // The pinned programs of a version before --nat64 have no such word: with no
            // prefix to write, they run as they did.
            Err(_) if prefixes.is_empty() => return Ok(()),
            Err(e) => return Err(e),
        };
        if count < old {
            self.set_config_word(config::NAT64_COUNT, count)?;
        }
        for (slot, prefix) in (0u32..).zip(prefixes) {
            for (k, word) in (0u32..).zip(prefix.words()) {
                self.set_config_word(config::NAT64 + 3 * slot + k, word)?;
            }
        }
        self.set_config_word(config::NAT64_COUNT, count)
    }

    /// Creates a table holding `chunks` at the smallest size class that fits, fills it through
    /// `mmap`, installs it in that class's outer map, then selects that class (word `selector`
    /// of the config map). A decision reads the selector, then the selected class's table: it
    /// sees a whole table, old or new.
    ///
    /// Tables of classes neither selected nor about to be are freed first: no decision has
    /// started on them since the change before this one.
    fn write_table<R: Pod>(
        &mut self,
        outers: &[&'static str; TABLE_CLASSES.len()],
        selector: u32,
        name: &'static str,
        chunks: &[R],
    ) -> Result<(), LoadError> {
        let class = TABLE_CLASSES.iter().position(|&c| c as usize >= chunks.len()).ok_or(
            LoadError::TooBig {
                map: name,
                chunks: chunks.len(),
                max: TABLE_CLASSES[TABLE_CLASSES.len() - 1],
            },
        )?;
        let bytes = as_bytes(chunks);
        self.install_new(outers, selector, class, name, size_of::<R>(), bytes.len(), |at, mem| {
            mem.copy_from_slice(&bytes[at..at + mem.len()]);
        })
    }

    /// Creates an array of size class `class` of `outers` (as its outer map's inner-map
    /// template), fills its first `len` bytes through `mmap` with `fill` (given each window's
    /// offset and bytes), installs it in that class's outer map, then selects that class (word
    /// `selector` of the config map). Arrays of classes neither selected nor about to be are
    /// freed first.
    #[expect(clippy::too_many_arguments, reason = "one call for tables, one for hit counters")]
    fn install_new<const N: usize>(
        &mut self,
        outers: &[&'static str; N],
        selector: u32,
        class: usize,
        name: &'static str,
        value_size: usize,
        len: usize,
        mut fill: impl FnMut(usize, &mut [u8]),
    ) -> Result<(), LoadError> {
        let map_err = |what, source| LoadError::Map { map: name, what, source };
        let selected = self.config_word(selector)? as usize;
        for (k, outer) in outers.iter().enumerate() {
            if k != class && k != selected {
                self.free_table(outer)?;
            }
        }
        // The array is made as its outer map's template is, BTF included (see `btf`).
        let Some(aya_obj::Map::Btf(mut def)) = template(outers[class]) else {
            return Err(LoadError::Missing { kind: "inner-map template of", name: outers[class] });
        };
        let size = u32::try_from(value_size).expect("a value is under 4 GiB");
        let btf = TableBtf::load(&[size]).map_err(|source| LoadError::Btf { map: name, source })?;
        def.def.btf_key_type_id = btf::KEY_TYPE;
        def.def.btf_value_type_id = TableBtf::value_type(0);
        let array = MapData::create(aya_obj::Map::Btf(def), name, Some(btf.as_fd()))
            .map_err(|e| map_err("creating", e))?;
        drop(btf);
        // A window at a time: mapped pages count in the resident set, and a whole table mapped
        // at once would add its size (48 MB for a million IPv6 rules) to the peak of a start.
        let mut at = 0;
        while at < len {
            let window = WRITE_WINDOW.min(len - at);
            // SAFETY: the map is ours alone until it is installed below, and its value area is
            // its template's `max_entries` values, the class's size (tests/object.rs checks the
            // templates), at least `len` bytes (each value is 8-aligned); the window starts at
            // a multiple of the page size, inside it.
            let mut mem = unsafe {
                memmap2::MmapOptions::new()
                    .offset(at as u64)
                    .len(window)
                    .map_mut(&array.fd().as_fd())
            }
            .map_err(|source| LoadError::Mmap { map: name, bytes: len, source })?;
            fill(at, &mut mem);
            at += window;
        }
        let mut outer: ArrayOfMaps<&mut MapData, MapData> = self.map_mut(outers[class])?;
        outer.set(0, &array, 0).map_err(|e| map_err("installing", e))?;
        self.set_config_word(selector, u32::try_from(class).expect("five classes"))
    }

    /// Empties the outer map of a size class (its table is freed once no program uses it).
    fn free_table(&self, outer: &'static str) -> Result<(), LoadError> {
        let Some(Map::ArrayOfMaps(data)) = self.maps.get(outer) else {
            return Err(LoadError::Missing { kind: "map", name: outer });
        };
        delete_first_elem(data.fd().as_fd())
            .map_err(|source| LoadError::FreeTable { map: outer, source })
    }

    /// The map `name` as the aya type `T`.
    fn map<'a, T>(&'a self, name: &'static str) -> Result<T, LoadError>
    where
        T: TryFrom<&'a Map, Error = MapError>,
    {
        typed(name, self.maps.get(name))
    }

    /// The map `name` as the aya type `T`, for writing.
    fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T, LoadError>
    where
        T: TryFrom<&'a mut Map, Error = MapError>,
    {
        typed(name, self.maps.get_mut(name))
    }

    fn config_word(&self, index: u32) -> Result<u32, LoadError> {
        let config: Array<&MapData, u32> = self.map(maps::CONFIG)?;
        config.get(&index, 0).map_err(|source| LoadError::Map {
            map: maps::CONFIG,
            what: "reading",
            source,
        })
    }

    fn set_config_word(&mut self, index: u32, value: u32) -> Result<(), LoadError> {
        let mut config: Array<&mut MapData, u32> = self.map_mut(maps::CONFIG)?;
        config.set(index, value, 0).map_err(|source| LoadError::Map {
            map: maps::CONFIG,
            what: "writing",
            source,
        })
    }

    /// Sets the DNS forwarder's port (`config::DNS_PORT`; 0: no forwarder, DNS is not
    /// redirected).
    ///
    /// # Errors
    /// [`LoadError::Map`].
    pub fn set_dns_port(&mut self, port: u16) -> Result<(), LoadError> {
        self.set_config_word(config::DNS_PORT, u32::from(port))
    }

    /// The DNS forwarder's port in force, 0 when there is none.
    ///
    /// # Errors
    /// [`LoadError::Map`].
    pub fn dns_port(&self) -> Result<u32, LoadError> {
        self.config_word(config::DNS_PORT)
    }

    /// Turns audit mode on or off, keeping the socket kinds allowed.
    ///
    /// # Errors
    /// [`LoadError::Map`].
    pub fn set_audit(&mut self, audit: bool) -> Result<(), LoadError> {
        let allowed = self.config_word(config::FLAGS)? & socket_kind::MASK;
        self.set_flags(audit, allowed)
    }

    /// Sets audit mode and the socket kinds allowed (`packet::socket_kind` bits).
    ///
    /// # Errors
    /// [`LoadError::Map`].
    pub fn set_flags(&mut self, audit: bool, allowed_sockets: u32) -> Result<(), LoadError> {
        let audit = if audit { CONFIG_AUDIT } else { 0 };
        self.set_config_word(config::FLAGS, audit | (allowed_sockets & socket_kind::MASK))
    }

    /// The decision totals, summed over CPUs.
    ///
    /// # Errors
    /// [`LoadError::Map`].
    pub fn totals(&self) -> Result<Totals, LoadError> {
        let array: PerCpuArray<&MapData, u64> = self.map(maps::STATS)?;
        let err = |source| LoadError::Map { map: maps::STATS, what: "reading", source };
        let total = |i| array.get(&i, 0).map(|v| v.iter().sum::<u64>()).map_err(err);
        Ok(Totals {
            allowed: total(stats::ALLOWED)?,
            blocked: total(stats::BLOCKED)?,
            audit_would_block: total(stats::AUDITED)?,
            events_lost: total(stats::EVENTS_LOST)?,
            failed_closed: total(stats::FAILED_CLOSED)?,
        })
    }

    /// Whether the instance is in audit mode (observe mode): its config flags as the programs
    /// read them.
    ///
    /// # Errors
    /// [`LoadError::Map`].
    pub fn audit(&self) -> Result<bool, LoadError> {
        Ok(self.config_word(config::FLAGS)? & CONFIG_AUDIT != 0)
    }

    /// Observe mode's record: every destination judged in audit mode, with its first and last
    /// decision times and counts, in no order.
    ///
    /// # Errors
    /// [`LoadError::Missing`] for an instance of a version without observe mode,
    /// [`LoadError::Map`].
    pub fn observed(&self) -> Result<Observations, LoadError> {
        let map: HashMap<&MapData, ObservedKey, Observed> = self.map(maps::OBSERVED)?;
        let capacity = match self.maps.get(maps::OBSERVED) {
            Some(Map::LruHashMap(data)) => data
                .info()
                .map_err(|source| LoadError::Map { map: maps::OBSERVED, what: "reading", source })?
                .max_entries(),
            _ => 0,
        };
        // An entry evicted while iterating is skipped, not an error.
        let mut merged: StdHashMap<ObservedKey, Observed> = map.iter().flatten().collect();
        let in_map = merged.len() as u64;
        // What each CPU's cache holds and has not yet added to the map (none for an instance
        // pinned by a version without the cache).
        if self.maps.contains_key(maps::OBSERVE_CACHE) {
            let cache: PerCpuArray<&MapData, ObserveSet> = self.map(maps::OBSERVE_CACHE)?;
            let err = |source| LoadError::Map { map: maps::OBSERVE_CACHE, what: "reading", source };
            for set in 0..cache.len() {
                for held in cache.get(&set, 0).map_err(err)?.iter().flat_map(|s| &s.ways) {
                    if held.seen.count != 0 {
                        merged
                            .entry(held.key)
                            .and_modify(|e| e.merge(&held.seen))
                            .or_insert(held.seen);
                    }
                }
            }
        }
        let array: PerCpuArray<&MapData, u64> = self.map(maps::OBSERVE_STATS)?;
        let err = |source| LoadError::Map { map: maps::OBSERVE_STATS, what: "reading", source };
        let total = |i| array.get(&i, 0).map(|v| v.iter().sum::<u64>()).map_err(err);
        Ok(Observations {
            capacity,
            recorded: total(observe_stats::RECORDED)?,
            lost: total(observe_stats::LOST)?,
            in_map,
            entries: merged.into_iter().collect(),
        })
    }

    /// The size of each family's table in force, in chunks (its size class): (IPv4, IPv6).
    ///
    /// # Errors
    /// [`LoadError::Map`].
    pub fn table_chunks(&self) -> Result<(u32, u32), LoadError> {
        let chunks = |selector| {
            let class = self.config_word(selector)? as usize;
            Ok(TABLE_CLASSES.get(class).copied().unwrap_or_default())
        };
        Ok((chunks(config::V4_CLASS)?, chunks(config::V6_CLASS)?))
    }

    /// The tables in force as the programs read them, mapped read-only from the kernel: the
    /// table each family's size-class word selects, the NAT64 prefixes of the config words,
    /// and audit mode. The caller holds the instance's lock, so no swap runs meanwhile.
    ///
    /// # Errors
    /// [`LoadError::Map`] or [`LoadError::Mmap`]; [`LoadError::Missing`] for a selected class
    /// without a table (a damaged instance).
    pub fn tables_in_force(&self) -> Result<TablesInForce, LoadError> {
        let nat64_count = self.config_word(config::NAT64_COUNT)?.min(MAX_NAT64_PREFIXES);
        let mut nat64 = Vec::new();
        for slot in 0..nat64_count {
            let word = |k| self.config_word(config::NAT64 + 3 * slot + k);
            nat64.push(((u64::from(word(0)?) << 32) | u64::from(word(1)?), word(2)?));
        }
        Ok(TablesInForce {
            v4: self.map_table(&maps::RULES_V4, config::V4_CLASS, maps::TABLE_V4)?,
            v6: self.map_table(&maps::RULES_V6, config::V6_CLASS, maps::TABLE_V6)?,
            nat64,
            audit: self.config_word(config::FLAGS)? & CONFIG_AUDIT != 0,
        })
    }

    /// The table of the size class word `selector` selects, mapped read-only.
    fn map_table(
        &self,
        outers: &[&'static str; TABLE_CLASSES.len()],
        selector: u32,
        name: &'static str,
    ) -> Result<memmap2::Mmap, LoadError> {
        let class = self.config_word(selector)? as usize;
        let outer_name = *outers.get(class).ok_or(LoadError::Missing { kind: "class", name })?;
        let outer: ArrayOfMaps<&MapData, MapData> = self.map(outer_name)?;
        let table = outer.get(&0, 0).map_err(|source| LoadError::Map {
            map: outer_name,
            what: "reading the table of",
            source,
        })?;
        let info = table.info().map_err(|source| LoadError::Map {
            map: name,
            what: "reading the size of",
            source,
        })?;
        let bytes = info.max_entries() as usize * info.value_size() as usize;
        // SAFETY: a read-only shared mapping of an mmapable array's values, `bytes` long; the
        // kernel never shrinks or frees it while mapped, and userspace writes a table only
        // before installing it.
        unsafe { memmap2::MmapOptions::new().len(bytes).map(&table.fd().as_fd()) }
            .map_err(|source| LoadError::Mmap { map: name, bytes, source })
    }

    /// Decisions per rule id (the default is not counted), of the rules that made any, in id
    /// order.
    ///
    /// # Errors
    /// [`LoadError::Map`] or [`LoadError::Mmap`].
    pub fn rule_hits(&self) -> Result<Vec<(u32, u64)>, LoadError> {
        let counts = self.map_table(&maps::RULE_HITS, config::HITS_CLASS, maps::HITS)?;
        let each = || {
            (0u32..)
                .zip(counts.chunks_exact(size_of::<HitCount>()))
                .map(|(id, count)| (id, u64::from_ne_bytes(count.try_into().unwrap_or_default())))
                .filter(|&(_, count)| count != 0)
        };
        // Counted first, so the vector takes no more than it holds (a reload keeps it beside
        // the new tables).
        let mut out = Vec::with_capacity(each().count());
        out.extend(each());
        Ok(out)
    }

    /// Takes the events ring buffer out of the instance, for one reader.
    ///
    /// # Errors
    /// [`LoadError::Map`].
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        typed(maps::EVENTS, self.maps.remove(maps::EVENTS))
    }
}

/// The maps of observe mode, which an instance pinned by an older version lacks.
const OBSERVE_MAPS: [&str; 3] = [maps::OBSERVED, maps::OBSERVE_STATS, maps::OBSERVE_CACHE];

/// Observe mode's record of an instance: see [`Instance::observed`].
#[derive(Debug, Clone, Default)]
pub struct Observations {
    /// Entries the map holds at most.
    pub capacity: u32,
    /// Destinations entered since the instance was made (evicted ones included).
    pub recorded: u64,
    /// Decisions that could not be recorded.
    pub lost: u64,
    /// Entries the map holds now (the destinations only in a CPU's cache are not among them).
    pub in_map: u64,
    /// Every destination, the map's entry and each CPU's cached part merged.
    pub entries: Vec<(ObservedKey, Observed)>,
}

impl Observations {
    /// Destinations the map evicted to make room for newer ones.
    #[must_use]
    pub fn evicted(&self) -> u64 {
        self.recorded.saturating_sub(self.in_map)
    }
}

/// An instance's tables in force, mapped from the kernel: see [`Instance::tables_in_force`].
pub struct TablesInForce {
    v4: memmap2::Mmap,
    v6: memmap2::Mmap,
    /// NAT64 prefixes besides the well-known one, as the config words hold them.
    pub nat64: Vec<(u64, u32)>,
    /// Audit mode: a block is reported, not enforced.
    pub audit: bool,
}

impl TablesInForce {
    /// The tables, to search as the programs do.
    #[must_use]
    pub fn view(&self) -> crate::table::TableView<'_> {
        crate::table::TableView {
            v4: chunks(&self.v4),
            v6: chunks(&self.v6),
            nat64: self.nat64.clone(),
        }
    }
}

/// The whole chunks of a mapped table.
fn chunks<R: Pod>(mem: &[u8]) -> &[cgroup_connect_common::Chunk<R>] {
    let size = size_of::<cgroup_connect_common::Chunk<R>>();
    let ptr = mem.as_ptr();
    assert!(
        ptr.cast::<cgroup_connect_common::Chunk<R>>().is_aligned(),
        "mappings are page-aligned"
    );
    // SAFETY: `mem` is page-aligned (checked), its whole chunks are in bounds, and a chunk of
    // Pod records is plain data for which every bit pattern is valid.
    unsafe { std::slice::from_raw_parts(ptr.cast(), mem.len() / size) }
}

/// `map`, the map `name` if the instance has it, as the aya type `T`.
fn typed<M, T>(name: &'static str, map: Option<M>) -> Result<T, LoadError>
where
    T: TryFrom<M, Error = MapError>,
{
    let map = map.ok_or(LoadError::Missing { kind: "map", name })?;
    T::try_from(map).map_err(|source| LoadError::Map { map: name, what: "opening", source })
}

/// The program `name` of the object.
fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut CgroupSockAddr, LoadError> {
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(LoadError::Missing { kind: "program", name })
}

/// The packet-check program `name` of the object.
fn check_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Program, LoadError> {
    ebpf.program_mut(name).ok_or(LoadError::Missing { kind: "program", name })
}

/// The `cgroup_skb` program `name` of the object.
fn skb_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut CgroupSkb, LoadError> {
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(LoadError::Missing { kind: "program", name })
}

/// Attaches the loaded `program` to `cgroup`.
fn attach(
    program: &mut CgroupSockAddr,
    name: &'static str,
    cgroup: &CgroupDir,
) -> Result<CgroupSockAddrLinkId, LoadError> {
    // On 5.7+ aya attaches through bpf_link_create, and a cgroup link always runs alongside
    // other programs (the kernel attaches it with BPF_F_ALLOW_MULTI); it rejects any flag, so
    // the mode must be the flag-less Single.
    program.attach(cgroup, CgroupAttachMode::Single).map_err(attach_error(name, cgroup))
}

/// Detaches the pinned link of program `name` at once (though this process may hold it too,
/// opened with the instance), then unpins it and the program. Missing pins are fine.
fn remove_program(paths: &InstancePaths, name: &str) -> Result<(), LoadError> {
    let path = paths.link(name);
    if path.exists() {
        detach_pinned_link(&path)
            .map_err(|source| LoadError::Unpin { path: path.clone(), source })?;
    }
    unpin_link(paths, name)?;
    let path = paths.program(name);
    match std::fs::remove_file(&path) {
        Err(source) if source.kind() != io::ErrorKind::NotFound => {
            Err(LoadError::Unpin { path, source })
        }
        _ => Ok(()),
    }
}

/// The `sock_addr` programs an instance attaches, in order: the DNS forwarder's too with `dns`.
fn sock_addr_programs(dns: bool) -> Vec<&'static str> {
    let dns = if dns { &programs::DNS[..] } else { &[] };
    programs::DECIDING.iter().chain(dns).copied().collect()
}

/// Attaches `program` to `cgroup` and takes its link over from aya.
fn attach_link(
    program: &mut CgroupSockAddr,
    name: &'static str,
    cgroup: &CgroupDir,
) -> Result<FdLink, LoadError> {
    let id = attach(program, name, cgroup)?;
    let link = program.take_link(id).map_err(attach_error(name, cgroup))?;
    FdLink::try_from(link).map_err(|source| LoadError::Link { program: name, source })
}

/// Attaches the packet checks' `program` to `cgroup` (egress) and takes its link over.
fn attach_egress(program: &mut CgroupSkb, cgroup: &CgroupDir) -> Result<FdLink, LoadError> {
    let name = programs::EGRESS;
    let id = program
        .attach(cgroup, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)
        .map_err(attach_error(name, cgroup))?;
    let link = program.take_link(id).map_err(attach_error(name, cgroup))?;
    FdLink::try_from(link).map_err(|source| LoadError::Link { program: name, source })
}

/// The `link_create` part of `union bpf_attr`, up to its flags.
#[repr(C)]
pub(crate) struct LinkCreateAttr {
    pub prog_fd: u32,
    pub target_fd: u32,
    pub attach_type: u32,
    pub flags: u32,
}

/// A `BPF_CGROUP_SETSOCKOPT` link of program `prog` to `cgroup`. aya 0.14 cannot turn a
/// sockopt link into an [`FdLink`]; so the link is made here, pinned at `pin` and unpinned
/// again, which hands it over as one.
fn sockopt_link(
    prog: std::os::fd::BorrowedFd<'_>,
    cgroup: &CgroupDir,
    pin: &Path,
) -> io::Result<FdLink> {
    use std::os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    };
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_CGROUP_SETSOCKOPT: u32 = 22;
    /// The `obj_pin` part of `union bpf_attr`.
    #[repr(C)]
    struct ObjPinAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let fd = |f: i32| u32::try_from(f).map_err(io::Error::other);
    let attr = LinkCreateAttr {
        prog_fd: fd(prog.as_raw_fd())?,
        target_fd: fd(cgroup.as_fd().as_raw_fd())?,
        attach_type: BPF_CGROUP_SETSOCKOPT,
        flags: 0,
    };
    // SAFETY: a valid bpf_attr prefix for BPF_LINK_CREATE, alive for the call.
    let raw = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_LINK_CREATE, &raw const attr, size_of::<LinkCreateAttr>())
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: BPF_LINK_CREATE returned a new descriptor that nothing else owns.
    let link = unsafe { OwnedFd::from_raw_fd(i32::try_from(raw).map_err(io::Error::other)?) };
    let _ = std::fs::remove_file(pin);
    let name = std::ffi::CString::new(pin.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let attr =
        ObjPinAttr { pathname: name.as_ptr() as u64, bpf_fd: fd(link.as_raw_fd())?, file_flags: 0 };
    // SAFETY: a valid bpf_attr prefix for BPF_OBJ_PIN; the path outlives the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, &raw const attr, size_of::<ObjPinAttr>())
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let pinned = PinnedLink::from_pin(pin).map_err(io::Error::other)?;
    pinned.unpin().map_err(io::Error::other)
}

/// Reports a failure to pin `what` at `path`.
fn pin_error(what: &'static str, path: PathBuf) -> impl FnOnce(AyaPinError) -> LoadError {
    move |source| LoadError::Pin { what, path, source }
}

/// Holds `link`: pinned at `pin` when given (it then outlives this process), owned otherwise.
fn hold(link: FdLink, pin: Option<PathBuf>) -> Result<HeldLink, LoadError> {
    match pin {
        Some(path) => Ok(HeldLink::Pinned(link.pin(&path).map_err(|source| LoadError::Pin {
            what: "a link",
            path,
            source,
        })?)),
        None => Ok(HeldLink::Owned(link)),
    }
}

/// The hook program `name` attaches to.
fn attach_type(name: &str) -> CgroupSockAddrAttachType {
    match name {
        programs::CONNECT6 => CgroupSockAddrAttachType::Connect6,
        programs::SENDMSG4 => CgroupSockAddrAttachType::UDPSendMsg4,
        programs::SENDMSG6 => CgroupSockAddrAttachType::UDPSendMsg6,
        programs::RECVMSG4 => CgroupSockAddrAttachType::UDPRecvMsg4,
        programs::GETPEERNAME4 => CgroupSockAddrAttachType::GetPeerName4,
        _ => CgroupSockAddrAttachType::Connect4,
    }
}

/// The id of the cgroup the link pinned at `path` is attached to: 0 once that cgroup is gone
/// (the kernel detaches a cgroup's links when it is released). aya 0.14 reads link info but
/// does not expose its cgroup part, so this asks the kernel directly.
///
/// # Errors
/// When the pin cannot be opened or the kernel gives no link info.
pub fn pinned_link_cgroup(path: &Path) -> io::Result<u64> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    /// The `info` part of `union bpf_attr`.
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let fd = open_pinned_object(path)?;
    // SAFETY: plain old data; zero is a valid value of every field.
    let mut info: aya_obj::generated::bpf_link_info = unsafe { std::mem::zeroed() };
    let attr = InfoAttr {
        bpf_fd: u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&fd)).map_err(io::Error::other)?,
        info_len: u32::try_from(size_of_val(&info)).map_err(io::Error::other)?,
        info: (&raw mut info) as u64,
    };
    // SAFETY: a valid bpf_attr prefix for BPF_OBJ_GET_INFO_BY_FD; `info` is writable for
    // info_len bytes during the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &raw const attr, size_of::<InfoAttr>())
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled the cgroup member for a cgroup link; for any other link it is
    // plain data all the same.
    Ok(unsafe { info.__bindgen_anon_1.cgroup.cgroup_id })
}

/// `BPF_LINK_DETACH` of the link pinned at `path`: it stops running at once, whoever holds it.
fn detach_pinned_link(path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let fd = open_pinned_object(path)?;
    let link_fd = u32::try_from(fd.as_raw_fd()).map_err(io::Error::other)?;
    // SAFETY: the `link_detach` part of bpf_attr is one u32, alive for the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_LINK_DETACH, &raw const link_fd, size_of::<u32>())
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `BPF_OBJ_GET`: a descriptor of the BPF object pinned at `path`.
fn open_pinned_object(path: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _};
    const BPF_OBJ_GET: libc::c_long = 7;
    /// The `obj_pin` part of `union bpf_attr`.
    #[repr(C)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let get = ObjGetAttr { pathname: name.as_ptr() as u64, bpf_fd: 0, file_flags: 0 };
    // SAFETY: a valid bpf_attr prefix for BPF_OBJ_GET; the path outlives the call.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, &raw const get, size_of::<ObjGetAttr>())
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(i32::try_from(fd).map_err(io::Error::other)?) })
}

/// Reports a failure to attach the program `name` to `cgroup`.
fn attach_error(name: &'static str, cgroup: &CgroupDir) -> impl Fn(ProgramError) -> LoadError {
    let cgroup = cgroup.path().display().to_string();
    move |source| LoadError::Attach { program: name, cgroup: cgroup.clone(), source }
}

/// Opens the link pinned at `path`.
fn open_link(path: PathBuf) -> Result<PinnedLink, LoadError> {
    PinnedLink::from_pin(&path).map_err(|source| LoadError::OpenLink { path, source })
}

/// A benchmarks' reference program (allows everything) attached to a cgroup; dropping it
/// detaches it.
pub struct Reference {
    _ebpf: Ebpf,
}

impl Reference {
    /// Loads and attaches the connect4 one.
    ///
    /// # Errors
    /// A [`LoadError`].
    pub fn attach(cgroup: &CgroupDir) -> Result<Self, LoadError> {
        let ebpf = Ebpf::load(BPF_OBJECT).map_err(LoadError::Object)?;
        Self::attach_loaded(ebpf, programs::REFERENCE_ALLOW, cgroup)
    }

    /// Loads and attaches the IPv6 allow-only one (connect6).
    ///
    /// # Errors
    /// A [`LoadError`].
    pub fn attach_allow6(cgroup: &CgroupDir) -> Result<Self, LoadError> {
        let ebpf = Ebpf::load(BPF_OBJECT).map_err(LoadError::Object)?;
        Self::attach_loaded(ebpf, programs::REFERENCE_ALLOW6, cgroup)
    }

    /// Loads and attaches the plain hash map of blocked IPv4 `hosts` (connect4), its map
    /// sized to fit them.
    ///
    /// # Errors
    /// A [`LoadError`].
    pub fn attach_hosts(
        cgroup: &CgroupDir,
        hosts: &[std::net::Ipv4Addr],
    ) -> Result<Self, LoadError> {
        let name = maps::REFERENCE_HOSTS;
        let mut ebpf = Self::load_sized(name, hosts.len())?;
        let map_err = |what, source| LoadError::Map { map: name, what, source };
        let map = ebpf.map_mut(name).ok_or(LoadError::Missing { kind: "map", name })?;
        let mut table: aya::maps::HashMap<_, u32, u8> =
            aya::maps::HashMap::try_from(map).map_err(|e| map_err("open", e))?;
        for host in hosts {
            table
                .insert(u32::from_ne_bytes(host.octets()), 1, 0)
                .map_err(|e| map_err("insert", e))?;
        }
        Self::attach_loaded(ebpf, programs::REFERENCE_HASH, cgroup)
    }

    /// Loads and attaches the LPM trie of blocked IPv4 `prefixes` (connect4), sized to fit.
    ///
    /// # Errors
    /// A [`LoadError`].
    pub fn attach_prefixes(
        cgroup: &CgroupDir,
        prefixes: &[(std::net::Ipv4Addr, u8)],
    ) -> Result<Self, LoadError> {
        let name = maps::REFERENCE_PREFIXES;
        let mut ebpf = Self::load_sized(name, prefixes.len())?;
        let map_err = |what, source| LoadError::Map { map: name, what, source };
        let map = ebpf.map_mut(name).ok_or(LoadError::Missing { kind: "map", name })?;
        let mut trie: aya::maps::LpmTrie<_, u32, u8> =
            aya::maps::LpmTrie::try_from(map).map_err(|e| map_err("open", e))?;
        for (net, len) in prefixes {
            let key =
                aya::maps::lpm_trie::Key::new(u32::from(*len), u32::from_ne_bytes(net.octets()));
            trie.insert(&key, 1, 0).map_err(|e| map_err("insert", e))?;
        }
        Self::attach_loaded(ebpf, programs::REFERENCE_LPM, cgroup)
    }

    /// The object with the reference map `name` sized for `entries` (it is declared with one,
    /// so that no other load of the object makes it big).
    fn load_sized(name: &'static str, entries: usize) -> Result<Ebpf, LoadError> {
        let size = u32::try_from(entries.max(1)).unwrap_or(u32::MAX);
        EbpfLoader::new().map_max_entries(name, size).load(BPF_OBJECT).map_err(LoadError::Object)
    }

    /// Loads the `sock_addr` program `name` of `ebpf` and attaches it to `cgroup`.
    fn attach_loaded(
        mut ebpf: Ebpf,
        name: &'static str,
        cgroup: &CgroupDir,
    ) -> Result<Self, LoadError> {
        let program = program(&mut ebpf, name)?;
        program.load().map_err(|source| LoadError::program(name, source))?;
        attach(program, name, cgroup)?;
        Ok(Self { _ebpf: ebpf })
    }

    /// Loads and attaches the egress one, which lets every packet through.
    ///
    /// # Errors
    /// A [`LoadError`].
    pub fn attach_egress(cgroup: &CgroupDir) -> Result<Self, LoadError> {
        let name = programs::REFERENCE_EGRESS;
        let mut ebpf = Ebpf::load(BPF_OBJECT).map_err(LoadError::Object)?;
        let program = skb_program(&mut ebpf, name)?;
        program.load().map_err(|source| LoadError::program(name, source))?;
        program
            .attach(cgroup, CgroupSkbAttachType::Egress, CgroupAttachMode::Single)
            .map_err(attach_error(name, cgroup))?;
        Ok(Self { _ebpf: ebpf })
    }
}

/// `bpf(BPF_MAP_DELETE_ELEM)` of key 0: aya 0.14 has no public delete for arrays of maps.
/// A missing element is fine.
fn delete_first_elem(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    /// The `map_elem` part of `union bpf_attr`.
    #[repr(C)]
    struct MapElemAttr {
        map_fd: u32,
        pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
    let key = 0u32;
    let attr = MapElemAttr {
        map_fd: u32::try_from(fd.as_raw_fd()).map_err(io::Error::other)?,
        pad: 0,
        key: (&raw const key) as u64,
        value: 0,
        flags: 0,
    };
    // SAFETY: a valid bpf_attr prefix for BPF_MAP_DELETE_ELEM, alive for the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_MAP_DELETE_ELEM, &raw const attr, size_of::<MapElemAttr>())
    };
    let err = io::Error::last_os_error();
    if rc == 0 || err.raw_os_error() == Some(libc::ENOENT) { Ok(()) } else { Err(err) }
}

/// Removes an instance's pins: unpins its links (which detaches them once no process holds
/// them) and its maps. Missing pins are fine.
///
/// # Errors
/// [`LoadError::OpenLink`] or [`LoadError::Unpin`] for a pin that exists and cannot be
/// removed.
pub fn unpin(paths: &InstancePaths) -> Result<(), LoadError> {
    // With the replacement a re-attach pins beside a link, should it have been interrupted.
    for name in programs::LINKED {
        unpin_link(paths, name)?;
        unpin_link(paths, &format!("{name}_new"))?;
    }
    let programs = programs::LINKED.iter().map(|p| paths.program(p));
    for path in maps::PINNED.iter().map(|m| paths.map(m)).chain(programs) {
        match std::fs::remove_file(&path) {
            Err(source) if source.kind() != io::ErrorKind::NotFound => {
                return Err(LoadError::Unpin { path, source });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Unpins the link of program `name` (which detaches it once no process holds it). A missing
/// pin is fine.
///
/// # Errors
/// [`LoadError::OpenLink`] or [`LoadError::Unpin`].
pub fn unpin_link(paths: &InstancePaths, name: &str) -> Result<(), LoadError> {
    let path = paths.link(name);
    if path.exists() {
        let link = open_link(path.clone())?;
        drop(link.unpin().map_err(|source| LoadError::Unpin { path, source })?);
    }
    Ok(())
}

/// The inner-map template the object declares for outer map `outer`.
fn template(outer: &str) -> Option<aya_obj::Map> {
    static OBJECT: std::sync::OnceLock<Option<aya_obj::Object>> = std::sync::OnceLock::new();
    OBJECT
        .get_or_init(|| aya_obj::Object::parse(BPF_OBJECT).ok())
        .as_ref()?
        .maps
        .get(outer)?
        .inner()
}

/// Bytes of a table mapped at once while it is written: a multiple of the page size.
const WRITE_WINDOW: usize = 4 << 20;

fn as_bytes<R: Pod>(records: &[R]) -> &[u8] {
    // SAFETY: Pod types are plain data without padding; the slice covers exactly the records.
    unsafe { std::slice::from_raw_parts(records.as_ptr().cast(), size_of_val(records)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verifier_reason_is_the_line_before_the_statistics() {
        let log = "func#0 @0\n0: R1=ctx() R10=fp0\n0: (85) call bpf_ktime_get_boot_ns#125\n\
                   unknown func bpf_ktime_get_boot_ns#125\nverification time 18 usec\n\
                   stack depth 0\nprocessed 1 insns (limit 1000000) max_states_per_insn 0 \
                   total_states 0 peak_states 0 mark_read 0\n\n";
        assert_eq!(verifier_reason(log), Some("unknown func bpf_ktime_get_boot_ns#125"));
        let too_big = "BPF program is too large. Processed 1000001 insn\nprocessed 1000001 insns\n";
        assert_eq!(
            verifier_reason(too_big),
            Some("BPF program is too large. Processed 1000001 insn")
        );
        assert_eq!(verifier_reason(""), None);
        assert_eq!(verifier_reason("processed 0 insns\n"), None);
    }

    #[test]
    fn a_refused_program_is_one_line_and_keeps_its_log() {
        let log = "0: R1=ctx() R10=fp0\n0: (85) call bpf_get_current_comm#16\n\
                   program of this type cannot use helper bpf_get_current_comm#16\n\
                   processed 1 insns (limit 1000000)\n";
        let err = LoadError::program(
            "check_connect4",
            ProgramError::LoadError {
                io_error: io::Error::from_raw_os_error(libc::EINVAL),
                verifier_log: aya_obj::VerifierLog::new(log.to_owned()),
            },
        );
        let text = err.to_string();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.starts_with("the kernel refused BPF program check_connect4 (")
                && text.contains("): program of this type cannot use helper")
                && text.contains("--verifier-log FILE"),
            "{text}"
        );
        let LoadError::Program { log: kept, .. } = err else { panic!("not Program") };
        assert_eq!(kept, log);
    }
}
