//! The cost of a decision on many destinations, when blocking, and with an events reader
//! (issue 11), against reference programs in the same run: allow-only, a plain BPF hash map of
//! the /32 rules, and an LPM trie of all of them.
//!
//! Each variant has its own cgroup and a network namespace with a veth and default routes, so
//! an allowed UDP `connect()` succeeds without sending anything. A child opens one UDP socket
//! and `connect()`s it once per destination of a workload; the cost per decision is the
//! program's bpf_stats (`run_time_ns / run_cnt`). Rounds go through every workload and, within
//! each, through every variant (starting one further each round), so drift hits all alike;
//! ratios are taken to allow-only in the same round and workload, and their median reported.
//! The rules are in real-list proportions ([`rulesets::real_list_v4`]); the section also
//! holds the memory and start of the blocker on them.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context as _, ensure};
use cgroup_connect::{
    cgroup::{self, CgroupDir, TempCgroup},
    loader::Reference,
};
use cgroup_connect_common::{maps, programs};
use serde::Serialize;

use crate::{
    Config, Stat,
    env::{self, BlockerProc, BpfStats, Netns},
    packets::loadavg,
    probe, rulesets, write,
};

/// Names of the variants, as the table's columns show them.
pub const ALLOW_ONLY: &str = "allow-only";
pub const BLOCKER: &str = "blocker";
pub const BLOCKER_READER: &str = "blocker + events reader";
/// The blocker in observe mode (`--audit`, issue 12): every decision recorded, nothing blocked.
pub const BLOCKER_AUDIT: &str = "blocker --audit";
pub const HASH_MAP: &str = "hash map";
pub const LPM_TRIE: &str = "LPM trie";

/// Names of the workloads.
pub const ONE_ALLOWED: &str = "IPv4, one allowed destination";
pub const ONE_BLOCKED: &str = "IPv4, one blocked destination";
pub const DISTINCT_ALLOWED: &str = "IPv4, distinct allowed destinations";
pub const HALF_BLOCKED: &str = "IPv4, distinct destinations, half blocked";
pub const EVICTED: &str = "IPv4, distinct allowed, caches evicted before each";
pub const V6_ONE: &str = "IPv6, one allowed destination";
pub const V6_DISTINCT: &str = "IPv6, distinct allowed destinations";

/// One workload in one variant.
#[derive(Debug, Serialize)]
pub struct DecisionsRow {
    pub workload: &'static str,
    pub variant: &'static str,
    /// Calls per round.
    pub calls: usize,
    /// Of them, refused (EPERM) in each round.
    pub refused: u64,
    pub ns_per_decision: Stat,
    /// Median over rounds of this round's figure / allow-only's in the same workload.
    pub ratio_to_allow_only: f64,
}

/// An issue 11 target: the figure, its limit, and whether it is met.
#[derive(Debug, Serialize)]
pub struct Target {
    pub target: &'static str,
    pub unit: &'static str,
    pub limit: f64,
    pub measured: f64,
    pub met: bool,
}

impl Target {
    fn new(target: &'static str, unit: &'static str, limit: f64, measured: f64) -> Self {
        Self { target, unit, limit, measured, met: measured <= limit }
    }
}

/// The blocker on one family's rules, started `load_repeats` times.
#[derive(Debug, Serialize)]
pub struct BlockerMemory {
    pub rules: usize,
    /// Spawn to `attached`.
    pub start_seconds: Stat,
    /// Peak resident set while starting (`VmHWM` at `attached`), KiB.
    pub peak_rss_start_kib: Stat,
    /// Resident set once running, KiB.
    pub idle_rss_kib: Stat,
    /// Peak resident set while it reloads the same list on SIGHUP (peak reset before each),
    /// KiB; IPv4 only.
    pub peak_rss_reload_kib: Option<Stat>,
    /// Wall time of those reloads, signal to `reloaded` line.
    pub reload_seconds: Option<Stat>,
    /// Maximum resident set of a `blocker reload` command doing the same, KiB; IPv4 only.
    pub reload_command_peak_rss_kib: Option<Stat>,
    /// `bytes_memlock` of the table map it made, KiB.
    pub table_kib: Stat,
    /// Kernel memory the whole instance holds (SUnreclaim + VmallocUsed + Percpu, settled),
    /// KiB: the machine is shared, so it is noisy.
    pub kernel_kib: Stat,
}

/// The memory of a reference program's map, filled with the same rules.
#[derive(Debug, Serialize)]
pub struct ReferenceMemory {
    pub variant: &'static str,
    pub entries: usize,
    /// `bytes_memlock` of its map, KiB.
    pub map_kib: f64,
}

/// The decisions section of `bench/results.json`.
#[derive(Debug, Serialize)]
pub struct DecisionsReport {
    pub date: String,
    pub mode: &'static str,
    pub kernel: String,
    pub rounds: usize,
    /// `/proc/loadavg` before and after: the machine may be shared.
    pub loadavg_before: String,
    pub loadavg_after: String,
    pub rules_v4: usize,
    /// Rules per prefix-length band: /32, /24-/31, /16-/23, /8-/15.
    pub rules_v4_bands: [usize; 4],
    /// Addresses the IPv4 rules cover, and their share of the routable unicast space.
    pub rules_v4_covered: u64,
    pub rules_v4_covered_share: f64,
    pub rules_v6: usize,
    /// Bytes read before each call of the evicted workload.
    pub evict_bytes: usize,
    pub rows: Vec<DecisionsRow>,
    pub blocker_v4: BlockerMemory,
    pub blocker_v6: BlockerMemory,
    pub references: Vec<ReferenceMemory>,
    pub targets: Vec<Target>,
}

/// A variant: its cgroup, namespace and filter, and the program whose stats count.
struct Place {
    variant: &'static str,
    v6: bool,
    program: u32,
    blocker: Option<BlockerProc>,
    _reference: Option<Reference>,
    // Dropped after the filter: the namespace, then the cgroup.
    ns: Netns,
    cg: TempCgroup,
}

/// A workload: destinations to connect to in turn.
struct Workload {
    name: &'static str,
    v6: bool,
    dsts: Vec<socket2::SockAddr>,
    /// How many of `dsts` a filter blocks.
    blocked: u64,
    evict: bool,
}

fn sockaddrs(addrs: impl IntoIterator<Item = IpAddr>) -> Vec<socket2::SockAddr> {
    addrs.into_iter().map(|a| SocketAddr::new(a, 9).into()).collect()
}

/// Runs the measurement.
///
/// # Errors
/// A failure to set up a variant, or a workload whose connects were not refused or allowed as
/// its destinations say.
pub fn run(cfg: &Config, log: &mut dyn FnMut(&str)) -> anyhow::Result<DecisionsReport> {
    crate::in_work(cfg, || run_in(cfg, log))
}

/// [`run`] in a work folder that exists, which it leaves.
#[expect(clippy::too_many_lines, reason = "one linear set-up, then the rounds")]
pub(crate) fn run_in(cfg: &Config, log: &mut dyn FnMut(&str)) -> anyhow::Result<DecisionsReport> {
    let loadavg_before = loadavg();
    let stats = BpfStats::enable()?;
    let n = cfg.decision_rules;
    log(&format!("decisions: {n} rules in real-list proportions"));
    let prefixes = rulesets::real_list_v4(n, 11);
    let covered = rulesets::covered4(&prefixes);
    let covered_count = rulesets::coverage4(&covered);
    let hosts: Vec<Ipv4Addr> =
        prefixes.iter().filter(|(_, len)| *len == 32).map(|(a, _)| *a).collect();
    let bands = [32..=32, 24..=31, 16..=23, 8..=15]
        .map(|band| prefixes.iter().filter(|(_, len)| band.contains(len)).count());
    let list_v4 = write(&cfg.work, "real-list-v4.txt", &rulesets::blocker_list_v4(&[], &prefixes))?;
    let hosts_v6 = rulesets::v6_hosts(n, 12);
    let list_v6 = write(&cfg.work, "hosts-v6.txt", &rulesets::blocker_list_v6(n, 12))?;

    let allowed = rulesets::allowed_v4(&covered, cfg.distinct, 13);
    let blocked = rulesets::blocked_v4(&prefixes, cfg.distinct / 2, 14);
    ensure!(!blocked.is_empty(), "no /32 rule to block");
    let mut half: Vec<IpAddr> = allowed
        .iter()
        .take(cfg.distinct - blocked.len())
        .chain(&blocked)
        .map(|&a| IpAddr::V4(a))
        .collect();
    rulesets::shuffle(&mut half, 15);
    let allowed_v6 = rulesets::allowed_v6(&hosts_v6, cfg.distinct, 16);
    let repeat = |a: IpAddr| std::iter::repeat_n(a, cfg.distinct);
    let workloads = [
        Workload {
            name: ONE_ALLOWED,
            v6: false,
            dsts: sockaddrs(repeat(allowed[0].into())),
            blocked: 0,
            evict: false,
        },
        Workload {
            name: ONE_BLOCKED,
            v6: false,
            dsts: sockaddrs(repeat(blocked[0].into())),
            blocked: cfg.distinct as u64,
            evict: false,
        },
        Workload {
            name: DISTINCT_ALLOWED,
            v6: false,
            dsts: sockaddrs(allowed.iter().map(|&a| a.into())),
            blocked: 0,
            evict: false,
        },
        Workload {
            name: HALF_BLOCKED,
            v6: false,
            dsts: sockaddrs(half),
            blocked: blocked.len() as u64,
            evict: false,
        },
        Workload {
            name: EVICTED,
            v6: false,
            dsts: sockaddrs(allowed.iter().take(cfg.evicted).map(|&a| a.into())),
            blocked: 0,
            evict: true,
        },
        Workload {
            name: V6_ONE,
            v6: true,
            dsts: sockaddrs(repeat(allowed_v6[0].into())),
            blocked: 0,
            evict: false,
        },
        Workload {
            name: V6_DISTINCT,
            v6: true,
            dsts: sockaddrs(allowed_v6.iter().map(|&a| a.into())),
            blocked: 0,
            evict: false,
        },
    ];

    log("decisions: the blocker's start and memory, IPv4");
    let (blocker_v4, place_v4) = start_blocker(cfg, &list_v4, false, &[], maps::TABLE_V4, log)?;
    log("decisions: the blocker's start and memory, IPv6");
    let (blocker_v6, place_v6) = start_blocker(cfg, &list_v6, true, &[], maps::TABLE_V6, log)?;
    log("decisions: the other variants");
    let (_, place_reader) = {
        let once = Config { load_repeats: 1, reload_repeats: 0, ..cfg.clone() };
        start_blocker(&once, &list_v4, false, &["--events", "-"], maps::TABLE_V4, log)?
    };
    let (_, place_audit) = {
        let once = Config { load_repeats: 1, reload_repeats: 0, ..cfg.clone() };
        start_blocker(&once, &list_v4, false, &["--audit"], maps::TABLE_V4, log)?
    };
    let mut references = vec![];
    let allow4 = reference(ALLOW_ONLY, false, Reference::attach)?;
    let allow6 = reference(ALLOW_ONLY, true, Reference::attach_allow6)?;
    let before = env::bpf_map_ids()?;
    let hash = reference(HASH_MAP, false, |cg| Reference::attach_hosts(cg, &hosts))?;
    references.push(ReferenceMemory {
        variant: HASH_MAP,
        entries: hosts.len(),
        map_kib: env::new_maps_memlock(&before, &[maps::REFERENCE_HOSTS])? as f64 / 1024.0,
    });
    let before = env::bpf_map_ids()?;
    let lpm = reference(LPM_TRIE, false, |cg| Reference::attach_prefixes(cg, &prefixes))?;
    references.push(ReferenceMemory {
        variant: LPM_TRIE,
        entries: prefixes.len(),
        map_kib: env::new_maps_memlock(&before, &[maps::REFERENCE_PREFIXES])? as f64 / 1024.0,
    });
    let places = [allow4, place_v4, place_reader, place_audit, hash, lpm, allow6, place_v6];
    let evict = vec![1u8; cfg.evict_bytes];

    // per_round[workload][place]: ns per decision, one per round.
    let mut per_round = vec![vec![vec![]; places.len()]; workloads.len()];
    let mut refused = vec![vec![0u64; places.len()]; workloads.len()];
    for round in 0..cfg.rounds {
        log(&format!("decisions: round {}/{}", round + 1, cfg.rounds));
        for (w, workload) in workloads.iter().enumerate() {
            let at: Vec<usize> =
                (0..places.len()).filter(|&p| places[p].v6 == workload.v6).collect();
            for k in 0..at.len() {
                let p = at[(k + round) % at.len()];
                let place = &places[p];
                let (t0, c0) = env::program_stats(place.program)?;
                let (no, failed) = probe::udp_connects(
                    place.cg.path(),
                    &place.ns.path(),
                    &workload.dsts,
                    workload.evict.then_some(evict.as_slice()),
                )?;
                let (t1, c1) = env::program_stats(place.program)?;
                // Audit mode blocks nothing.
                let lets_all = [ALLOW_ONLY, BLOCKER_AUDIT].contains(&place.variant);
                let want = if lets_all { 0 } else { workload.blocked };
                ensure!(
                    failed == 0 && no == want,
                    "{} in {}: {no} connects refused (want {want}), {failed} failed otherwise",
                    workload.name,
                    place.variant
                );
                refused[w][p] = no;
                per_round[w][p].push((t1 - t0) as f64 / (c1 - c0).max(1) as f64);
            }
        }
    }
    drop(stats);

    let mut rows = vec![];
    for (w, workload) in workloads.iter().enumerate() {
        let base = places
            .iter()
            .position(|p| p.variant == ALLOW_ONLY && p.v6 == workload.v6)
            .context("allow-only")?;
        for (p, place) in places.iter().enumerate().filter(|(_, p)| p.v6 == workload.v6) {
            let ratios: Vec<f64> =
                per_round[w][p].iter().zip(&per_round[w][base]).map(|(x, b)| x / b).collect();
            rows.push(DecisionsRow {
                workload: workload.name,
                variant: place.variant,
                calls: workload.dsts.len(),
                refused: refused[w][p],
                ns_per_decision: Stat::of(&per_round[w][p]),
                ratio_to_allow_only: Stat::of(&ratios).median,
            });
        }
    }
    // Ratios between two workloads or variants of the same round.
    let same_round = |wa: &str, pa: &str, wb: &str, pb: &str| -> f64 {
        let series = |wn: &str, pn: &str| {
            let w = workloads.iter().position(|x| x.name == wn).unwrap_or(0);
            let p = places.iter().position(|x| x.variant == pn && x.v6 == workloads[w].v6);
            p.map_or_else(Vec::new, |p| per_round[w][p].clone())
        };
        let ratios: Vec<f64> =
            series(wa, pa).iter().zip(&series(wb, pb)).map(|(a, b)| a / b).collect();
        Stat::of(&ratios).median
    };
    let ratio_of = |wn: &str, variant: &str| {
        rows.iter()
            .find(|r| r.workload == wn && r.variant == variant)
            .map_or(f64::NAN, |r| r.ratio_to_allow_only)
    };
    let ratio = |wn: &str| ratio_of(wn, BLOCKER);
    let mib = |kib: f64| kib / 1024.0;
    let targets = vec![
        Target::new("IPv4, one allowed destination", "x allow-only", 1.5, ratio(ONE_ALLOWED)),
        Target::new("IPv4, one blocked destination", "x allow-only", 2.0, ratio(ONE_BLOCKED)),
        Target::new(
            "IPv4, distinct allowed destinations",
            "x allow-only",
            5.0,
            ratio(DISTINCT_ALLOWED),
        ),
        Target::new(
            "IPv4, distinct destinations half blocked, to distinct allowed",
            "x distinct allowed",
            1.3,
            same_round(HALF_BLOCKED, BLOCKER, DISTINCT_ALLOWED, BLOCKER),
        ),
        Target::new(
            "events reader attached, one blocked destination",
            "x without a reader",
            1.5,
            same_round(ONE_BLOCKED, BLOCKER_READER, ONE_BLOCKED, BLOCKER),
        ),
        Target::new(
            "events reader attached, distinct destinations half blocked",
            "x without a reader",
            1.5,
            same_round(HALF_BLOCKED, BLOCKER_READER, HALF_BLOCKED, BLOCKER),
        ),
        Target::new("IPv6 1M /128, one destination", "x allow-only", 1.5, ratio(V6_ONE)),
        Target::new(
            "IPv6 1M /128, distinct allowed destinations",
            "x allow-only",
            8.0,
            ratio(V6_DISTINCT),
        ),
        Target::new("IPv6 table, kernel memory", "MiB", 24.0, mib(blocker_v6.table_kib.median)),
        Target::new(
            "peak RSS while starting",
            "MB (GNU time's kB / 1000)",
            80.0,
            blocker_v4.peak_rss_start_kib.median / 1000.0,
        ),
        Target::new(
            "peak RSS while reloading",
            "MB (GNU time's kB / 1000)",
            80.0,
            blocker_v4.peak_rss_reload_kib.map_or(f64::NAN, |s| s.median) / 1000.0,
        ),
        Target::new(
            "peak RSS of a `blocker reload` command",
            "MB (GNU time's kB / 1000)",
            80.0,
            blocker_v4.reload_command_peak_rss_kib.map_or(f64::NAN, |s| s.median) / 1000.0,
        ),
        Target::new("start to enforcing", "s", 0.5, blocker_v4.start_seconds.median),
        // Issue 12: observe mode's cost per decision within issue 11's targets.
        Target::new(
            "audit mode, IPv4, one allowed destination",
            "x allow-only",
            1.5,
            ratio_of(ONE_ALLOWED, BLOCKER_AUDIT),
        ),
        Target::new(
            "audit mode, IPv4, one blocked destination",
            "x allow-only",
            2.0,
            ratio_of(ONE_BLOCKED, BLOCKER_AUDIT),
        ),
        Target::new(
            "audit mode, IPv4, distinct allowed destinations",
            "x allow-only",
            5.0,
            ratio_of(DISTINCT_ALLOWED, BLOCKER_AUDIT),
        ),
    ];
    drop(places);
    Ok(DecisionsReport {
        date: env::sh("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])?.trim().to_owned(),
        mode: cfg.mode,
        kernel: env::sh("uname", &["-r"])?.trim().to_owned(),
        rounds: cfg.rounds,
        loadavg_before,
        loadavg_after: loadavg(),
        rules_v4: n,
        rules_v4_bands: bands,
        rules_v4_covered: covered_count,
        // 1.0.0.0 to 223.255.255.255 without 127/8.
        rules_v4_covered_share: covered_count as f64 / (222.0 * 16_777_216.0),
        rules_v6: n,
        evict_bytes: cfg.evict_bytes,
        rows,
        blocker_v4,
        blocker_v6,
        references,
        targets,
    })
}

/// A place with a reference program attached by `attach`.
fn reference(
    variant: &'static str,
    v6: bool,
    attach: impl FnOnce(&CgroupDir) -> Result<Reference, cgroup_connect::loader::LoadError>,
) -> anyhow::Result<Place> {
    let cg = TempCgroup::create(&cgroup::cgroup2_root()?, "cgroup-connect-bench")?;
    let ns = Netns::with_routes()?;
    let reference = attach(&CgroupDir::open(cg.path())?)
        .with_context(|| format!("attaching the {variant} reference"))?;
    let name = match (variant, v6) {
        (ALLOW_ONLY, false) => programs::REFERENCE_ALLOW,
        (ALLOW_ONLY, true) => programs::REFERENCE_ALLOW6,
        (HASH_MAP, _) => programs::REFERENCE_HASH,
        _ => programs::REFERENCE_LPM,
    };
    let program = env::attached_program(cg.path(), name)?;
    Ok(Place { variant, v6, program, blocker: None, _reference: Some(reference), ns, cg })
}

/// Starts the blocker on `list` `load_repeats` times (with `args`), each in a new place;
/// measures each start, then reloads the last one `reload_repeats` times (IPv4). Returns the
/// figures and the last place.
fn start_blocker(
    cfg: &Config,
    list: &std::path::Path,
    v6: bool,
    args: &[&str],
    table: &'static str,
    log: &mut dyn FnMut(&str),
) -> anyhow::Result<(BlockerMemory, Place)> {
    let root = cgroup::cgroup2_root()?;
    let mut all = vec!["--block-list", list.to_str().context("path")?];
    all.extend_from_slice(args);
    let (mut start, mut peak, mut idle, mut table_kib, mut kernel) =
        (vec![], vec![], vec![], vec![], vec![]);
    let mut kept = None;
    for i in 0..cfg.load_repeats.max(1) {
        log(&format!("  start {}/{}", i + 1, cfg.load_repeats.max(1)));
        drop(kept.take());
        let cg = TempCgroup::create(&root, "cgroup-connect-bench")?;
        let ns = Netns::with_routes()?;
        let maps_before = env::bpf_map_ids()?;
        let kernel_before = env::settled_kernel_memory_kib();
        let b = BlockerProc::start(&cfg.blocker, cg.path(), &all)?;
        peak.push(env::peak_rss_kib(b.pid()) as f64);
        start.push(b.start_to_enforce.as_secs_f64());
        kernel.push(env::settled_kernel_memory_kib().saturating_sub(kernel_before) as f64);
        idle.push(env::rss_kib(b.pid()) as f64);
        table_kib.push(env::new_maps_memlock(&maps_before, &[table])? as f64 / 1024.0);
        let name = if v6 { programs::CONNECT6 } else { programs::CONNECT4 };
        let program = env::attached_program(cg.path(), name)?;
        let variant = match args {
            [] => BLOCKER,
            ["--audit"] => BLOCKER_AUDIT,
            _ => BLOCKER_READER,
        };
        kept = Some(Place { variant, v6, program, blocker: Some(b), _reference: None, ns, cg });
    }
    let place = kept.context("no start")?;
    let (mut reload, mut reload_secs, mut command) = (vec![], vec![], vec![]);
    if !v6 {
        let b = place.blocker.as_ref().context("blocker")?;
        for _ in 0..cfg.reload_repeats {
            env::reset_peak_rss(b.pid())?;
            reload_secs.push(b.sighup_reload()?.as_secs_f64());
            reload.push(env::peak_rss_kib(b.pid()) as f64);
            command.push(b.reload_command_peak_kib()? as f64);
        }
    }
    let some = |v: &[f64]| (!v.is_empty()).then(|| Stat::of(v));
    let rules = std::fs::read_to_string(list)?.lines().count();
    Ok((
        BlockerMemory {
            rules,
            start_seconds: Stat::of(&start),
            peak_rss_start_kib: Stat::of(&peak),
            idle_rss_kib: Stat::of(&idle),
            peak_rss_reload_kib: some(&reload),
            reload_seconds: some(&reload_secs),
            reload_command_peak_rss_kib: some(&command),
            table_kib: Stat::of(&table_kib),
            kernel_kib: Stat::of(&kernel),
        },
        place,
    ))
}

/// The section as text: a table of workloads by variant, median ns per decision and ratio to
/// allow-only, then memory and the targets.
#[must_use]
pub fn render(r: &DecisionsReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\ndecisions: {} rounds, interleaved; {} IPv4 rules (/32 {}, /24-/31 {}, /16-/23 {}, \
         /8-/15 {}; {:.2}% of the unicast space), {} IPv6 /128; load {} before, {} after",
        r.rounds,
        r.rules_v4,
        r.rules_v4_bands[0],
        r.rules_v4_bands[1],
        r.rules_v4_bands[2],
        r.rules_v4_bands[3],
        100.0 * r.rules_v4_covered_share,
        r.rules_v6,
        r.loadavg_before,
        r.loadavg_after
    );
    let variants = [ALLOW_ONLY, BLOCKER, BLOCKER_READER, BLOCKER_AUDIT, HASH_MAP, LPM_TRIE];
    let _ = write!(s, "{:<50} {:>7}", "median ns per decision (x allow-only)", "calls");
    for v in variants {
        let _ = write!(s, " {v:>24}");
    }
    s.push('\n');
    let mut seen = vec![];
    for row in &r.rows {
        if seen.contains(&row.workload) {
            continue;
        }
        seen.push(row.workload);
        let _ = write!(s, "{:<50} {:>7}", row.workload, row.calls);
        for v in variants {
            let cell =
                r.rows.iter().find(|x| x.workload == row.workload && x.variant == v).map_or_else(
                    || "-".to_owned(),
                    |x| format!("{:.0} ({:.1}x)", x.ns_per_decision.median, x.ratio_to_allow_only),
                );
            let _ = write!(s, " {cell:>24}");
        }
        s.push('\n');
    }
    for (family, b) in [("IPv4", &r.blocker_v4), ("IPv6", &r.blocker_v6)] {
        let _ = writeln!(
            s,
            "blocker, {family}, {} rules: start {:.3} s; peak RSS starting {:.1} MB, reloading {}, \
             `blocker reload` {}, idle {:.1} MB; table {:.1} MiB, kernel memory of the instance \
             {:.1} MiB",
            b.rules,
            b.start_seconds.median,
            b.peak_rss_start_kib.median / 1000.0,
            b.peak_rss_reload_kib
                .map_or_else(|| "-".to_owned(), |x| format!("{:.1} MB", x.median / 1000.0)),
            b.reload_command_peak_rss_kib
                .map_or_else(|| "-".to_owned(), |x| format!("{:.1} MB", x.median / 1000.0)),
            b.idle_rss_kib.median / 1000.0,
            b.table_kib.median / 1024.0,
            b.kernel_kib.median / 1024.0
        );
    }
    for m in &r.references {
        let _ =
            writeln!(s, "{}, {} entries: map {:.1} MiB", m.variant, m.entries, m.map_kib / 1024.0);
    }
    for t in &r.targets {
        let _ = writeln!(
            s,
            "target {:<62} {:>8.2} {} (limit {}): {}",
            t.target,
            t.measured,
            t.unit,
            t.limit,
            if t.met { "met" } else { "NOT met" }
        );
    }
    s
}
