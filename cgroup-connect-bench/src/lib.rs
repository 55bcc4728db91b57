//! The benchmarks: per-connect and per-decision cost, load and reload time, kernel and
//! userspace memory, for the blocker and for what an operator would otherwise pick (no
//! filter, nftables hash and interval sets, ipset, iptables), in one run on one machine.
//!
//! Every variant lives in its own cgroup and network namespace, set up once; the per-connect
//! measurements then go round by round through all variants, so drift hits all alike. Results
//! are min and median over rounds; overheads are the median of per-round differences from the
//! no-filter floor. The benchmark asserts nothing about time.
#![expect(clippy::cast_precision_loss, reason = "figures are reported as floating point")]
#![expect(
    clippy::missing_errors_doc,
    clippy::must_use_candidate,
    clippy::doc_markdown,
    reason = "a benchmark harness, not a library API: its functions fail on set-up only"
)]

pub mod decisions;
pub mod env;
pub mod packets;
pub mod probe;
pub mod rulesets;
pub mod starts;
pub mod wakeups;

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use cgroup_connect::{
    cgroup::{self, CgroupDir, TempCgroup},
    loader::Reference,
};
use cgroup_connect_common::programs;
use serde::Serialize;

use crate::env::{BlockerProc, BpfStats, Netns};

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub mode: &'static str,
    pub rounds: usize,
    /// Connects per measurement.
    pub iterations: u32,
    pub blocker_hosts: Vec<usize>,
    pub blocker_mixed: Vec<usize>,
    pub blocker_v6: Vec<usize>,
    pub nft: Vec<usize>,
    pub iptables: Vec<usize>,
    /// Rules for the load, reload and memory measurements.
    pub big: usize,
    pub load_repeats: usize,
    pub reload_repeats: usize,
    /// The blocker binary.
    pub blocker: PathBuf,
    /// Where rule files are written.
    pub work: PathBuf,
    /// Rules of each family for the decision workloads ([`decisions`]).
    pub decision_rules: usize,
    /// Calls per decision workload (distinct destinations in the distinct ones).
    pub distinct: usize,
    /// Calls of the workload with caches evicted before each.
    pub evicted: usize,
    /// Bytes read to evict the caches (more than the last-level cache).
    pub evict_bytes: usize,
}

impl Config {
    fn base(mode: &'static str, blocker: PathBuf) -> Self {
        let work = std::env::temp_dir().join(env::unique("cgroup-connect-bench"));
        Self {
            mode,
            rounds: 7,
            iterations: 20_000,
            blocker_hosts: vec![1, 100_000, 1_000_000],
            blocker_mixed: vec![1_000_000],
            blocker_v6: vec![1_000_000],
            nft: vec![1, 100_000, 1_000_000],
            iptables: vec![1, 1_000, 10_000],
            big: 1_000_000,
            load_repeats: 3,
            reload_repeats: 5,
            blocker,
            work,
            decision_rules: 1_000_000,
            distinct: 200_000,
            evicted: 500,
            evict_bytes: 64 << 20,
        }
    }

    /// Everything, at the sizes the targets name.
    #[must_use]
    pub fn full(blocker: PathBuf) -> Self {
        Self::base("full", blocker)
    }

    /// Under three minutes: fewer rounds and iterations, no million-entry interval set.
    #[must_use]
    pub fn quick(blocker: PathBuf) -> Self {
        Self {
            rounds: 3,
            iterations: 5_000,
            blocker_mixed: vec![100_000],
            blocker_v6: vec![100_000],
            nft: vec![100_000],
            iptables: vec![1, 1_000],
            load_repeats: 1,
            reload_repeats: 2,
            decision_rules: 100_000,
            distinct: 50_000,
            evicted: 200,
            ..Self::base("quick", blocker)
        }
    }

    /// The quick mode's first round with tiny sizes: proves every path still runs.
    #[must_use]
    pub fn smoke(blocker: PathBuf) -> Self {
        Self {
            rounds: 1,
            iterations: 200,
            blocker_hosts: vec![100],
            blocker_mixed: vec![100],
            blocker_v6: vec![100],
            nft: vec![100],
            iptables: vec![100],
            big: 1_000,
            load_repeats: 1,
            reload_repeats: 1,
            decision_rules: 1_000,
            distinct: 500,
            evicted: 10,
            evict_bytes: 1 << 20,
            ..Self::base("smoke", blocker)
        }
    }
}

/// Min and median of a series.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Stat {
    pub min: f64,
    pub median: f64,
}

impl Stat {
    pub(crate) fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Self { min: f64::NAN, median: f64::NAN };
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median =
            if v.len().is_multiple_of(2) { f64::midpoint(v[mid - 1], v[mid]) } else { v[mid] };
        Self { min: v[0], median }
    }
}

#[derive(Debug, Serialize)]
pub struct ConnectRow {
    pub variant: String,
    pub rules: usize,
    pub ns_per_connect: Stat,
    /// Median over rounds of (variant - no filter) / no filter.
    pub overhead: f64,
}

#[derive(Debug, Serialize)]
pub struct DecisionRow {
    pub program: String,
    pub rules: usize,
    pub ns_per_decision: Stat,
}

#[derive(Debug, Serialize)]
pub struct LoadRow {
    pub what: String,
    pub rules: usize,
    /// Whole process or command, start to enforcing.
    pub seconds: Stat,
    /// Map writes alone (blocker only).
    pub write_seconds: Option<Stat>,
    /// Kernel memory held while it exists (SUnreclaim + VmallocUsed + Percpu), KiB.
    pub kernel_kib: Stat,
}

#[derive(Debug, Serialize)]
pub struct ReloadRow {
    pub rules: usize,
    pub seconds: Stat,
    pub write_seconds: Stat,
    /// Connects to a blocked address during the reloads, and how many were not blocked.
    pub probes: u64,
    pub not_blocked: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub date: String,
    pub mode: &'static str,
    pub kernel: String,
    pub cpu: String,
    pub rounds: usize,
    pub iterations: u32,
    pub connect: Vec<ConnectRow>,
    pub decision: Vec<DecisionRow>,
    pub load: Vec<LoadRow>,
    pub reload: Option<ReloadRow>,
    /// The blocker's RSS, idle, with `big` rules loaded.
    pub blocker_rss_kib: u64,
    /// The cost of the packet checks ([`packets`]).
    pub packets: packets::PacketReport,
    /// A policy file's start against a list's ([`starts`]).
    pub starts: starts::StartReport,
    /// The cost of an events reader ([`wakeups`]).
    pub events: wakeups::EventsReport,
    /// Decisions on many destinations, blocked ones, with a reader, against reference
    /// programs; memory and start on real-list rules ([`decisions`]).
    pub decisions: decisions::DecisionsReport,
}

/// One per-connect variant: its cgroup, namespace and filter.
struct Variant {
    label: String,
    rules: usize,
    v6: bool,
    /// The program whose bpf_stats count as this variant's decisions.
    program: Option<u32>,
    blocker: Option<BlockerProc>,
    reference: Option<Reference>,
    // Dropped after the filter: the namespace, then the cgroup.
    ns: Netns,
    cg: TempCgroup,
}

impl Variant {
    fn new(label: String, rules: usize, v6: bool) -> anyhow::Result<Self> {
        let root = cgroup::cgroup2_root()?;
        Ok(Self {
            label,
            rules,
            v6,
            program: None,
            blocker: None,
            reference: None,
            ns: Netns::new()?,
            cg: TempCgroup::create(&root, "cgroup-connect-bench")?,
        })
    }
}

/// Runs `f` with `cfg.work` made, and removes the folder after, also on failure.
pub(crate) fn in_work<T>(cfg: &Config, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    std::fs::create_dir_all(&cfg.work)?;
    let result = f();
    let _ = std::fs::remove_dir_all(&cfg.work);
    result
}

pub(crate) fn write(work: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = work.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Runs every measurement. `log` gets progress lines.
///
/// # Errors
/// A failure of any set-up step; everything set up so far is removed.
pub fn run(cfg: &Config, log: &mut dyn FnMut(&str)) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&cfg.work)?;
    let result = run_in(cfg, log);
    let _ = std::fs::remove_dir_all(&cfg.work);
    result
}

fn run_in(cfg: &Config, log: &mut dyn FnMut(&str)) -> anyhow::Result<Report> {
    let stats = BpfStats::enable()?;
    let big_hosts = rulesets::v4_hosts(cfg.big, 1);
    let big_list = write(&cfg.work, "big.txt", &rulesets::blocker_list_v4(&big_hosts, &[]))?;
    log("load, reload and memory");
    let (load, blocker_rss_kib) = measure_loads(cfg, &big_hosts, &big_list)?;
    log("setting up the per-connect variants");
    let mut variants = setup_variants(cfg, log)?;
    log("measuring");
    let (connect, decision) = measure_rounds(cfg, &mut variants, log)?;
    let reload = measure_reload(cfg, &big_hosts, &big_list)?;
    drop(variants);
    let start_report = starts::run_in(cfg, log)?;
    let events = wakeups::run_in(cfg, log)?;
    let decisions = decisions::run_in(cfg, log)?;
    // The packet rounds are timed without bpf_stats (it turns it on for its own pass).
    drop(stats);
    let packets = packets::run(cfg, log)?;
    Ok(Report {
        date: env::sh("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])?.trim().to_owned(),
        mode: cfg.mode,
        kernel: env::sh("uname", &["-r"])?.trim().to_owned(),
        cpu: std::fs::read_to_string("/proc/cpuinfo")?
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_default(),
        rounds: cfg.rounds,
        iterations: cfg.iterations,
        connect,
        decision,
        load,
        reload,
        blocker_rss_kib,
        packets,
        starts: start_report,
        events,
        decisions,
    })
}

/// Load time and kernel memory of `big` rules: the blocker, nft hash and interval sets,
/// ipset; repeated and interleaved. Also the blocker's idle RSS.
fn measure_loads(
    cfg: &Config,
    hosts: &[std::net::Ipv4Addr],
    list: &Path,
) -> anyhow::Result<(Vec<LoadRow>, u64)> {
    let nft_hash = write(&cfg.work, "nft-hash.nft", &rulesets::nft_script(hosts, false))?;
    let nft_interval = write(&cfg.work, "nft-interval.nft", &rulesets::nft_script(hosts, true))?;
    let ipset = write(&cfg.work, "ipset.txt", &rulesets::ipset_script(hosts))?;
    let kinds = ["blocker", "nftables hash set", "nftables interval set", "ipset hash:ip"];
    let mut seconds: Vec<Vec<f64>> = vec![vec![]; kinds.len()];
    let mut kib: Vec<Vec<f64>> = vec![vec![]; kinds.len()];
    let mut writes = vec![];
    let mut rss = 0;
    let root = cgroup::cgroup2_root()?;
    for _ in 0..cfg.load_repeats {
        for (k, kind) in kinds.iter().enumerate() {
            let before = env::settled_kernel_memory_kib();
            let (took, held) = if *kind == "blocker" {
                let cg = TempCgroup::create(&root, "cgroup-connect-bench")?;
                let b = BlockerProc::start(
                    &cfg.blocker,
                    cg.path(),
                    &["--block-list", list.to_str().context("path")?],
                )?;
                let after = env::settled_kernel_memory_kib();
                rss = env::rss_kib(b.pid());
                writes.push(
                    b.timings.iter().find(|(p, _)| p == "write").map_or(f64::NAN, |(_, s)| *s),
                );
                (b.start_to_enforce, after.saturating_sub(before))
            } else {
                let ns = Netns::new()?;
                let took = match *kind {
                    "ipset hash:ip" => ns.timed("ipset", &["restore"], &ipset)?,
                    "nftables hash set" => ns.timed("nft", &["-f", "-"], &nft_hash)?,
                    _ => ns.timed("nft", &["-f", "-"], &nft_interval)?,
                };
                let after = env::settled_kernel_memory_kib();
                (took, after.saturating_sub(before))
            };
            seconds[k].push(took.as_secs_f64());
            kib[k].push(held as f64);
        }
    }
    let rows = kinds
        .iter()
        .enumerate()
        .map(|(k, kind)| LoadRow {
            what: (*kind).to_owned(),
            rules: cfg.big,
            seconds: Stat::of(&seconds[k]),
            write_seconds: (k == 0).then(|| Stat::of(&writes)),
            kernel_kib: Stat::of(&kib[k]),
        })
        .collect();
    Ok((rows, rss))
}

fn setup_variants(cfg: &Config, log: &mut dyn FnMut(&str)) -> anyhow::Result<Vec<Variant>> {
    let mut out = vec![
        Variant::new("no filter".into(), 0, false)?,
        Variant::new("no filter (IPv6)".into(), 0, true)?,
    ];
    let mut reference = Variant::new("allow-only BPF program".into(), 0, false)?;
    reference.reference = Some(Reference::attach(&CgroupDir::open(reference.cg.path())?)?);
    reference.program =
        Some(env::attached_program(reference.cg.path(), programs::REFERENCE_ALLOW)?);
    out.push(reference);
    let blocker = |label: String,
                   rules: usize,
                   v6: bool,
                   text: String,
                   log: &mut dyn FnMut(&str)|
     -> anyhow::Result<Variant> {
        log(&format!("  {label}"));
        let mut v = Variant::new(label, rules, v6)?;
        let file = write(&cfg.work, &env::unique("list"), &text)?;
        let b = BlockerProc::start(
            &cfg.blocker,
            v.cg.path(),
            &["--block-list", file.to_str().context("path")?],
        )?;
        let name = if v6 { programs::CONNECT6 } else { programs::CONNECT4 };
        v.program = Some(env::attached_program(v.cg.path(), name)?);
        v.blocker = Some(b);
        Ok(v)
    };
    for &n in &cfg.blocker_hosts {
        out.push(blocker(
            "blocker, IPv4 /32".to_owned(),
            n,
            false,
            rulesets::blocker_list_v4(&rulesets::v4_hosts(n, 3), &[]),
            log,
        )?);
    }
    for &n in &cfg.blocker_mixed {
        out.push(blocker(
            "blocker, IPv4 /8-/32 + ports".to_owned(),
            n,
            false,
            rulesets::blocker_list_v4(&[], &rulesets::v4_prefixes(n, 4)),
            log,
        )?);
    }
    for &n in &cfg.blocker_v6 {
        out.push(blocker(
            "blocker, IPv6 /128 + ports".to_owned(),
            n,
            true,
            rulesets::blocker_list_v6(n, 5),
            log,
        )?);
    }
    for &n in &cfg.nft {
        for interval in [false, true] {
            let label = if interval { "nftables interval set" } else { "nftables hash set" };
            log(&format!("  {label} {n}"));
            let v = Variant::new(label.into(), n, false)?;
            let script = rulesets::nft_script(&rulesets::v4_hosts(n, 7), interval);
            v.ns.timed("nft", &["-f", "-"], &write(&cfg.work, &env::unique("nft"), &script)?)?;
            out.push(v);
        }
    }
    for &n in &cfg.iptables {
        log(&format!("  iptables {n}"));
        let v = Variant::new("iptables rules".into(), n, false)?;
        v.ns.timed(
            "iptables-restore",
            &[],
            &write(
                &cfg.work,
                &env::unique("ipt"),
                &rulesets::iptables_script(&rulesets::v4_hosts(n, 8)),
            )?,
        )?;
        out.push(v);
    }
    Ok(out)
}

fn measure_rounds(
    cfg: &Config,
    variants: &mut [Variant],
    log: &mut dyn FnMut(&str),
) -> anyhow::Result<(Vec<ConnectRow>, Vec<DecisionRow>)> {
    let n = variants.len();
    let mut ns: Vec<Vec<f64>> = vec![vec![]; n];
    let mut per_decision: Vec<Vec<f64>> = vec![vec![]; n];
    for round in 0..cfg.rounds {
        log(&format!("  round {}/{}", round + 1, cfg.rounds));
        for (i, v) in variants.iter().enumerate() {
            let before = v.program.map(env::program_stats).transpose()?;
            ns[i].push(probe::connect_loop(v.cg.path(), &v.ns.path(), cfg.iterations, v.v6)?);
            if let (Some(id), Some((t0, c0))) = (v.program, before) {
                let (t1, c1) = env::program_stats(id)?;
                if c1 > c0 {
                    per_decision[i].push((t1 - t0) as f64 / (c1 - c0) as f64);
                }
            }
        }
    }
    let floor = |v6: bool| if v6 { &ns[1] } else { &ns[0] };
    let connect = variants
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let base = floor(v.v6);
            let diffs: Vec<f64> = ns[i].iter().zip(base).map(|(x, f)| (x - f) / f).collect();
            ConnectRow {
                variant: v.label.clone(),
                rules: v.rules,
                ns_per_connect: Stat::of(&ns[i]),
                overhead: Stat::of(&diffs).median,
            }
        })
        .collect();
    let decision = variants
        .iter()
        .enumerate()
        .filter(|(i, _)| !per_decision[*i].is_empty())
        .map(|(i, v)| DecisionRow {
            program: v.label.clone(),
            rules: v.rules,
            ns_per_decision: Stat::of(&per_decision[i]),
        })
        .collect();
    Ok((connect, decision))
}

/// Reloads of a `big`-rule policy while a child keeps connecting to a blocked address.
fn measure_reload(
    cfg: &Config,
    hosts: &[std::net::Ipv4Addr],
    list: &Path,
) -> anyhow::Result<Option<ReloadRow>> {
    let Some(blocked) = hosts.first() else { return Ok(None) };
    let root = cgroup::cgroup2_root()?;
    let cg = TempCgroup::create(&root, "cgroup-connect-bench")?;
    let ns = Netns::new()?;
    let b = BlockerProc::start(
        &cfg.blocker,
        cg.path(),
        &["--block-list", list.to_str().context("path")?],
    )?;
    let window =
        probe::WindowProbe::start(cg.path(), &ns.path(), SocketAddr::new((*blocked).into(), 443))?;
    let (mut secs, mut writes) = (vec![], vec![]);
    for _ in 0..cfg.reload_repeats {
        let (took, phases) = b.reload()?;
        secs.push(took.as_secs_f64());
        writes.push(phases.iter().find(|(p, _)| p == "write").map_or(f64::NAN, |(_, s)| *s));
        std::thread::sleep(Duration::from_millis(100));
    }
    let (probes, not_blocked) = window.finish();
    Ok(Some(ReloadRow {
        rules: cfg.big,
        seconds: Stat::of(&secs),
        write_seconds: Stat::of(&writes),
        probes,
        not_blocked,
    }))
}

fn human(n: usize) -> String {
    match n {
        0 => "-".into(),
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// The report as one table of text.
#[must_use]
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "cgroup-connect benchmarks, {} mode, {} ({}), kernel {}",
        r.mode, r.date, r.cpu, r.kernel
    );
    let _ = writeln!(
        s,
        "{} rounds of {} connects per variant, interleaved; min / median\n",
        r.rounds, r.iterations
    );
    let _ = writeln!(
        s,
        "{:<34} {:>6} {:>20} {:>10}",
        "per-connect (connect+accept+close)", "rules", "ns (min / median)", "overhead"
    );
    for c in &r.connect {
        let _ = writeln!(
            s,
            "{:<34} {:>6} {:>9.0} / {:>8.0} {:>+9.1}%",
            c.variant,
            human(c.rules),
            c.ns_per_connect.min,
            c.ns_per_connect.median,
            100.0 * c.overhead
        );
    }
    let _ = writeln!(
        s,
        "\n{:<34} {:>6} {:>20}",
        "per-decision (bpf_stats)", "rules", "ns (min / median)"
    );
    for d in &r.decision {
        let _ = writeln!(
            s,
            "{:<34} {:>6} {:>9.1} / {:>8.1}",
            d.program,
            human(d.rules),
            d.ns_per_decision.min,
            d.ns_per_decision.median
        );
    }
    let _ = writeln!(
        s,
        "\n{:<34} {:>6} {:>20} {:>16} {:>12}",
        "load to enforcing", "rules", "s (min / median)", "map writes (s)", "kernel MiB"
    );
    for l in &r.load {
        let writes = l.write_seconds.map_or_else(|| "-".to_owned(), |w| format!("{:.3}", w.median));
        let _ = writeln!(
            s,
            "{:<34} {:>6} {:>9.3} / {:>8.3} {:>16} {:>12.1}",
            l.what,
            human(l.rules),
            l.seconds.min,
            l.seconds.median,
            writes,
            l.kernel_kib.median / 1024.0
        );
    }
    if let Some(rl) = &r.reload {
        let _ = writeln!(
            s,
            "\nreload of {} rules: {:.3} / {:.3} s (map writes {:.3} s); {} connects to a blocked address during reloads, {} not blocked",
            human(rl.rules),
            rl.seconds.min,
            rl.seconds.median,
            rl.write_seconds.median,
            rl.probes,
            rl.not_blocked
        );
    }
    let _ = writeln!(
        s,
        "blocker RSS, idle, {} rules loaded: {:.1} MiB\n",
        human(r.load.first().map_or(0, |l| l.rules)),
        r.blocker_rss_kib as f64 / 1024.0
    );
    s + &render_packets(&r.packets)
        + &render_starts(&r.starts)
        + &render_events(&r.events)
        + &decisions::render(&r.decisions)
}

/// The events section as text.
#[must_use]
pub fn render_events(r: &wakeups::EventsReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nevents reader: {} rounds of {} blocked connects, alternating; load {} before, {} after",
        r.rounds, r.attempts, r.loadavg_before, r.loadavg_after
    );
    for row in &r.rows {
        let _ = writeln!(
            s,
            "{:<12} {:>8.0} / {:>8.0} ns per blocked decision (min / median)",
            if row.reader { "reader" } else { "no reader" },
            row.ns_per_decision.min,
            row.ns_per_decision.median
        );
    }
    let _ = writeln!(
        s,
        "with / without a reader: {:.2}x; a lone event waits {:.1} / {:.1} ms (min / median), \
         at most {:.1} ms",
        r.ratio, r.lone_event_ms.min, r.lone_event_ms.median, r.lone_event_max_ms
    );
    s
}

/// The starts section as a table of text.
#[must_use]
pub fn render_starts(r: &starts::StartReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nstarts: {} rules, {} rounds, alternating; load {} before, {} after",
        human(r.rules),
        r.rounds,
        r.loadavg_before,
        r.loadavg_after
    );
    let _ = writeln!(
        s,
        "{:<8} {:>6} {:>18} {:>18} {:>18} {:>18}",
        "source", "MB", "parse s (min/med)", "parse CPU s", "read s (min/med)", "start s (min/med)"
    );
    for row in &r.rows {
        let _ = writeln!(
            s,
            "{:<8} {:>6.1} {:>8.3} / {:>7.3} {:>8.3} / {:>7.3} {:>8.3} / {:>7.3} {:>8.3} / {:>7.3}",
            row.source,
            row.bytes as f64 / 1e6,
            row.parse_seconds.min,
            row.parse_seconds.median,
            row.parse_cpu_seconds.min,
            row.parse_cpu_seconds.median,
            row.read_seconds.min,
            row.read_seconds.median,
            row.start_seconds.min,
            row.start_seconds.median
        );
    }
    s + &starts::render_memory(r)
}

/// The packet-checks section as a table of text.
#[must_use]
pub fn render_packets(p: &packets::PacketReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "packet checks: {} rounds, interleaved (bpf_stats {}); {} MiB per TCP transfer, {} \
         datagrams per loop, {} connects; load {} before, {} after",
        p.rounds,
        if p.bpf_stats_in_rounds { "on" } else { "off" },
        p.tcp_bulk_mib,
        p.udp_datagrams,
        p.connects,
        p.loadavg_before,
        p.loadavg_after
    );
    let _ = writeln!(
        s,
        "{:<32} {:<28} {:>24} {:>9} {:>18}",
        "workload", "variant", "min / median", "overhead", "program ns x runs"
    );
    for row in &p.rows {
        let program = match (row.program_ns_per_run, row.program_runs_per_unit) {
            (Some(ns), Some(runs)) => format!("{:.1} x {runs:.2}", ns.median),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            s,
            "{:<32} {:<28} {:>10.0} / {:>8.0} {:<4} {:>+8.2}% {:>18}",
            row.workload,
            row.variant,
            row.value.min,
            row.value.median,
            row.unit.trim_start_matches("ns/"),
            100.0 * row.overhead,
            program
        );
    }
    s
}
