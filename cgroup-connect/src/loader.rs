//! The only code that touches `aya::Ebpf`: loads the embedded BPF object, writes the rule
//! tables, attaches the four programs to a cgroup, swaps tables while attached, and detaches
//! when the [`Instance`] is dropped.
//!
//! Each table is a fresh BPF array sized to fit, written with one copy through `mmap`, then
//! put into its one-slot array of maps with a single update: a decision sees either the old
//! table or the new one, never a mix, and the kernel frees the old table once no program runs
//! on it. A decision only reads the table of its destination's family (IPv4-mapped IPv6
//! destinations read the IPv4 one).
use std::{io, os::fd::AsFd as _};

use aya::{
    Ebpf, EbpfError, Pod,
    maps::{MapData, MapError, of_maps::ArrayOfMaps},
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError, ProgramType},
    util::KernelVersion,
};
use cgroup_connect_common::{TABLE_FLAGS, maps, programs};

use crate::{cgroup::CgroupDir, table::Tables};

/// The BPF object built by build.rs from the cgroup-connect-ebpf crate.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cgroup-connect"));

/// Why the programs could not be loaded, their tables written, or they be attached.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The kernel cannot run cgroup `sock_addr` programs through BPF links.
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
    /// Creating or installing a table failed.
    #[error("writing table {map} ({chunks} chunks) failed")]
    Table {
        map: &'static str,
        chunks: usize,
        #[source]
        source: MapError,
    },
    /// Mapping a table into memory failed.
    #[error("mapping table {map} ({bytes} bytes) into memory failed")]
    Mmap {
        map: &'static str,
        bytes: usize,
        #[source]
        source: io::Error,
    },
}

/// The programs, loaded and attached to one cgroup. Dropping it detaches them.
pub struct Instance {
    // Owns the programs, their links and the outer maps: dropping it detaches.
    ebpf: Ebpf,
}

impl Instance {
    /// Loads the programs, writes `tables`, then attaches connect4, connect6, sendmsg4 and
    /// sendmsg6 to `cgroup` through BPF links, so programs of other tools on the same cgroup
    /// keep running.
    ///
    /// The tables are in place before the first attach: the instance enforces its whole policy
    /// from its first decision. On error nothing stays attached (the partial `Ebpf` is
    /// dropped, which detaches what was attached).
    ///
    /// # Errors
    /// A [`LoadError`] saying which step failed.
    pub fn start(cgroup: &CgroupDir, tables: &Tables) -> Result<Self, LoadError> {
        let links = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 7, 0));
        if !links || !aya::sys::is_program_supported(ProgramType::CgroupSockAddr).unwrap_or(false) {
            return Err(LoadError::Unsupported);
        }
        raise_memlock_limit();
        let mut ebpf = Ebpf::load(BPF_OBJECT).map_err(LoadError::Object)?;
        write_tables(&mut ebpf, tables)?;
        for name in programs::ALL {
            let program: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .ok_or(LoadError::Missing { kind: "program", name })?;
            program.load().map_err(|source| LoadError::Program { program: name, source })?;
            // On 5.7+ aya attaches through bpf_link_create, and a cgroup link always runs
            // alongside other programs (the kernel attaches it with BPF_F_ALLOW_MULTI); it
            // rejects any flag, so the mode must be the flag-less Single.
            program.attach(cgroup, CgroupAttachMode::Single).map_err(|source| {
                LoadError::Attach {
                    program: name,
                    cgroup: cgroup.path().display().to_string(),
                    source,
                }
            })?;
        }
        Ok(Self { ebpf })
    }

    /// Replaces the tables of both families, each in one atomic step.
    ///
    /// # Errors
    /// A [`LoadError`]; the tables in force stay as they were for a family whose new table
    /// could not be written.
    pub fn swap(&mut self, tables: &Tables) -> Result<(), LoadError> {
        write_tables(&mut self.ebpf, tables)
    }
}

fn write_tables(ebpf: &mut Ebpf, tables: &Tables) -> Result<(), LoadError> {
    write_table(ebpf, maps::RULES_V4, maps::TABLE_V4, &tables.v4)?;
    write_table(ebpf, maps::RULES_V6, maps::TABLE_V6, &tables.v6)
}

/// Creates a table holding `chunks`, fills it through `mmap`, and installs it in `outer`.
fn write_table<R: Pod>(
    ebpf: &mut Ebpf,
    outer: &'static str,
    name: &'static str,
    chunks: &[R],
) -> Result<(), LoadError> {
    use aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY;
    let table_err = |source| LoadError::Table { map: name, chunks: chunks.len(), source };
    let size = size_of::<R>();
    let entries = u32::try_from(chunks.len().max(1))
        .map_err(|_| table_err(MapError::OutOfBounds { index: u32::MAX, max_entries: u32::MAX }))?;
    let def = aya_obj::Map::new_from_params(
        BPF_MAP_TYPE_ARRAY as u32,
        4,
        u32::try_from(size).expect("small record"),
        entries,
        TABLE_FLAGS,
    );
    let table = MapData::create(def, name, None).map_err(table_err)?;
    let bytes = as_bytes(chunks);
    if !bytes.is_empty() {
        // SAFETY: the map is ours alone until it is installed below, and its value area is
        // at least `bytes.len()` long (entries * size, each record 8-aligned).
        let mut mem =
            unsafe { memmap2::MmapOptions::new().len(bytes.len()).map_mut(&table.fd().as_fd()) }
                .map_err(|source| LoadError::Mmap { map: name, bytes: bytes.len(), source })?;
        mem.copy_from_slice(bytes);
    }
    let outer_map = ebpf.map_mut(outer).ok_or(LoadError::Missing { kind: "map", name: outer })?;
    let mut outer_map: ArrayOfMaps<&mut MapData, MapData> =
        ArrayOfMaps::try_from(outer_map).map_err(table_err)?;
    outer_map.set(0, &table, 0).map_err(table_err)
}

fn as_bytes<R: Pod>(records: &[R]) -> &[u8] {
    // SAFETY: Pod types are plain data without padding; the slice covers exactly the records.
    unsafe { std::slice::from_raw_parts(records.as_ptr().cast(), size_of_val(records)) }
}

/// Kernels before 5.11 charge BPF memory to `RLIMIT_MEMLOCK`; lift it so large maps load. Newer
/// kernels charge the memory cgroup instead, and this is harmless.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads a valid rlimit; failure only leaves the old limit.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raw const unlimited) };
}
