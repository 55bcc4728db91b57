//! The cost of the packet checks on traffic they let through, and on traffic they judge: a
//! bulk loopback TCP transfer, a loop of small UDP datagrams, the same loop over UDP-Lite
//! (every packet judged by the egress program), and the connect loop of the main benchmark.
//! Each runs in five places side by side, round by round (each round starting with another
//! place): no blocker, an egress program that lets everything through (the cost of any packet
//! hook), a blocker with the default packet checks (socket and setsockopt checks, and the LSM
//! control-message check, or where the kernel does not load it the egress program), a blocker
//! that allows UDP-Lite sockets (the egress program always), a blocker with
//! `--no-packet-checks`. The default refuses UDP-Lite sockets: that loop has no figure there. Overheads are the median of per-round differences from no blocker,
//! measured without turning bpf_stats on (it adds two clock reads to every program run); then
//! one more pass with bpf_stats on gives the program's own cost per run, and its runs per unit.
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::Path,
    time::Instant,
};

use anyhow::{Context as _, ensure};
use cgroup_connect::{
    cgroup::{self, CgroupDir, TempCgroup},
    loader::Reference,
};
use cgroup_connect_common::programs;
use serde::Serialize;

use crate::{
    Config, Stat,
    env::{self, BlockerProc, Netns},
    probe,
};

/// One workload in one place.
#[derive(Debug, Serialize)]
pub struct PacketRow {
    pub workload: &'static str,
    pub variant: &'static str,
    /// What `value` counts: ns per MiB, ns per datagram sent and received, ns per connect.
    pub unit: &'static str,
    pub value: Stat,
    /// Median over rounds of (variant - no blocker) / no blocker.
    pub overhead: f64,
    /// The packet checks' own cost: bpf_stats run time per run, and runs per `unit`.
    pub program_ns_per_run: Option<Stat>,
    pub program_runs_per_unit: Option<f64>,
}

/// The packet-checks section of `bench/results.json`.
#[derive(Debug, Serialize)]
pub struct PacketReport {
    pub date: String,
    pub mode: &'static str,
    pub kernel: String,
    pub rounds: usize,
    /// Whether bpf_stats was on during the timed rounds (another tool may hold it on).
    pub bpf_stats_in_rounds: bool,
    /// `/proc/loadavg` before and after: the machine may be shared.
    pub loadavg_before: String,
    pub loadavg_after: String,
    pub tcp_bulk_mib: u64,
    pub udp_datagrams: u32,
    pub connects: u32,
    pub rows: Vec<PacketRow>,
}

const VARIANTS: [&str; 5] = [
    "no blocker",
    "allow-only egress program",
    "blocker, packet checks on",
    "blocker, allows udplite",
    "blocker, --no-packet-checks",
];
/// The place of the default packet checks, and the UDP-Lite workload they refuse.
const DEFAULT_CHECKS: usize = 2;
const UDP_LITE: usize = 2;
const WORKLOADS: [(&str, &str); 4] = [
    ("bulk loopback TCP", "ns/MiB"),
    ("32-byte UDP loop", "ns/datagram"),
    ("32-byte UDP-Lite loop (judged)", "ns/datagram"),
    ("TCP connect loop", "ns/connect"),
];

/// MiB sent before a transfer is timed, datagrams before a loop is.
const WARM_MIB: u64 = 16;
const WARM_DATAGRAMS: u32 = 1_000;

/// One place: a cgroup and namespace, and what filters it.
struct Place {
    /// Held for their drop, which stops the blocker or detaches the reference.
    _blocker: Option<BlockerProc>,
    _reference: Option<Reference>,
    /// The ids of the attached packet programs (the reference, or the packet checks).
    egress: Vec<u32>,
    ns: Netns,
    cg: TempCgroup,
}

/// Rounds, MiB per bulk transfer, datagrams per loop: short measurements, many rounds (the
/// median of many short ones suffers less from a busy machine than a few long ones).
fn sizes(cfg: &Config) -> (usize, u64, u32) {
    match cfg.mode {
        "smoke" => (1, 8, 2_000),
        "quick" => (5, 64, 20_000),
        _ => (3 * cfg.rounds, 256, 50_000),
    }
}

/// Runs the packet workloads. `log` gets progress lines.
///
/// # Errors
/// A failure of any set-up step; everything set up so far is removed.
pub fn run(cfg: &Config, log: &mut dyn FnMut(&str)) -> anyhow::Result<PacketReport> {
    let loadavg_before = loadavg();
    let bpf_stats_in_rounds = env::BpfStats::on();
    let (rounds, mib, datagrams) = sizes(cfg);
    let places = setup(cfg, log)?;
    let n = VARIANTS.len() * WORKLOADS.len();
    let mut values: Vec<Vec<f64>> = vec![vec![]; n];
    let mut per_run: Vec<Vec<f64>> = vec![vec![]; n];
    let mut runs_per_unit: Vec<Vec<f64>> = vec![vec![]; n];
    // The timed rounds, then one pass with bpf_stats on for the program's cost.
    for (round, stats) in (0..=rounds).map(|r| (r, r == rounds)) {
        // bpf_stats is global: the timed rounds leave it as they found it (off, unless another
        // tool holds it on: the report says).
        let _stats = if stats {
            log("packet checks: the program's cost (bpf_stats on)");
            Some(env::BpfStats::enable()?)
        } else {
            log(&format!("packet checks: round {}/{rounds}", round + 1));
            None
        };
        for (w, _) in WORKLOADS.iter().enumerate() {
            // Each round starts with another variant: no variant always runs first.
            for j in 0..places.len() {
                let k = (j + round) % places.len();
                let place = &places[k];
                if (stats && place.egress.is_empty()) || (k == DEFAULT_CHECKS && w == UDP_LITE) {
                    continue;
                }
                let before = total_stats(&place.egress)?;
                let (cg, ns) = (place.cg.path(), place.ns.path());
                // Units include the warm-up, which the program also runs for.
                let (value, units) = match w {
                    0 => (tcp_bulk(cg, &ns, mib)?, (mib + WARM_MIB) as f64),
                    1 => (
                        udp_loop(cg, &ns, datagrams, libc::IPPROTO_UDP)?,
                        f64::from(datagrams + WARM_DATAGRAMS),
                    ),
                    2 => (
                        udp_loop(cg, &ns, datagrams, libc::IPPROTO_UDPLITE)?,
                        f64::from(datagrams + WARM_DATAGRAMS),
                    ),
                    _ => (
                        probe::connect_loop(cg, &ns, cfg.iterations, false)?,
                        f64::from(cfg.iterations + cfg.iterations.min(probe::WARM_CONNECTS)),
                    ),
                };
                let i = w * VARIANTS.len() + k;
                if !stats {
                    values[i].push(value);
                    continue;
                }
                if let Some((t0, c0)) = before {
                    let (t1, c1) = total_stats(&place.egress)?.unwrap_or_default();
                    if c1 > c0 {
                        per_run[i].push((t1 - t0) as f64 / (c1 - c0) as f64);
                        runs_per_unit[i].push((c1 - c0) as f64 / units);
                    }
                }
            }
        }
    }
    let mut rows = vec![];
    for (w, (workload, unit)) in WORKLOADS.iter().enumerate() {
        let base = &values[w * VARIANTS.len()];
        for (k, variant) in VARIANTS.iter().enumerate() {
            let i = w * VARIANTS.len() + k;
            let diffs: Vec<f64> = values[i].iter().zip(base).map(|(x, f)| (x - f) / f).collect();
            rows.push(PacketRow {
                workload,
                variant,
                unit,
                value: Stat::of(&values[i]),
                overhead: Stat::of(&diffs).median,
                program_ns_per_run: (!per_run[i].is_empty()).then(|| Stat::of(&per_run[i])),
                program_runs_per_unit: (!runs_per_unit[i].is_empty())
                    .then(|| Stat::of(&runs_per_unit[i]).median),
            });
        }
    }
    drop(places);
    Ok(PacketReport {
        date: env::sh("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])?.trim().to_owned(),
        mode: cfg.mode,
        kernel: env::sh("uname", &["-r"])?.trim().to_owned(),
        rounds,
        bpf_stats_in_rounds,
        loadavg_before,
        loadavg_after: loadavg(),
        tcp_bulk_mib: mib,
        udp_datagrams: datagrams,
        connects: cfg.iterations,
        rows,
    })
}

/// The four places, one per variant.
fn setup(cfg: &Config, log: &mut dyn FnMut(&str)) -> anyhow::Result<Vec<Place>> {
    let root = cgroup::cgroup2_root()?;
    let mut places = vec![];
    for (k, label) in VARIANTS.iter().enumerate() {
        log(&format!("packet checks: setting up {label}"));
        let cg = TempCgroup::create(&root, "cgroup-connect-bench")?;
        let ns = Netns::new()?;
        let (mut blocker, mut reference, mut egress) = (None, None, vec![]);
        match k {
            0 => {}
            1 => {
                reference = Some(Reference::attach_egress(&CgroupDir::open(cg.path())?)?);
                egress.push(env::attached_program(cg.path(), programs::REFERENCE_EGRESS)?);
            }
            _ => {
                let mut args = vec!["--block", "192.0.2.1"];
                match k {
                    3 => args.extend(["--allow-sockets", "udplite"]),
                    4 => args.push("--no-packet-checks"),
                    _ => {}
                }
                blocker = Some(BlockerProc::start(&cfg.blocker, cg.path(), &args)?);
                // The packet-check programs bpftool lists on the cgroup (an LSM one only where
                // the kernel loads it).
                for name in programs::PACKET_CHECKS {
                    if let Ok(id) = env::attached_program(cg.path(), name) {
                        egress.push(id);
                    }
                }
            }
        }
        places.push(Place { _blocker: blocker, _reference: reference, egress, ns, cg });
    }
    Ok(places)
}

/// (`run_time_ns`, `run_cnt`) summed over `ids`; `None` without any.
fn total_stats(ids: &[u32]) -> anyhow::Result<Option<(u64, u64)>> {
    if ids.is_empty() {
        return Ok(None);
    }
    let mut total = (0, 0);
    for &id in ids {
        let (t, c) = env::program_stats(id)?;
        total = (total.0 + t, total.1 + c);
    }
    Ok(Some(total))
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_owned()
}

/// Nanoseconds per MiB of a loopback TCP transfer of `mib` MiB (after 16 MiB of warm-up on
/// the same connection), sender and receiver both in the child.
fn tcp_bulk(cgroup: &Path, netns: &Path, mib: u64) -> anyhow::Result<f64> {
    let run = || -> anyhow::Result<u64> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let reader = std::thread::spawn(move || -> std::io::Result<u64> {
            let (mut s, _) = listener.accept()?;
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0u64;
            loop {
                match s.read(&mut buf)? {
                    0 => return Ok(total),
                    n => total += n as u64,
                }
            }
        });
        let mut s = TcpStream::connect(addr)?;
        let buf = vec![7u8; 1 << 16];
        for _ in 0..WARM_MIB * 16 {
            s.write_all(&buf)?;
        }
        let start = Instant::now();
        for _ in 0..mib * 16 {
            s.write_all(&buf)?;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        let received = reader.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
        let took = u64::try_from(start.elapsed().as_nanos())?;
        ensure!(received == (mib + WARM_MIB) << 20, "received {received} bytes");
        Ok(took)
    };
    let total = probe::in_child_result(cgroup, netns, run)?;
    Ok(total as f64 / mib as f64)
}

/// Nanoseconds per 32-byte datagram sent and received over loopback, protocol `protocol`
/// (UDP or UDP-Lite), one at a time, `count` of them after 1,000 of warm-up.
fn udp_loop(cgroup: &Path, netns: &Path, count: u32, protocol: i32) -> anyhow::Result<f64> {
    let run = || -> anyhow::Result<u64> {
        let socket = || {
            socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::DGRAM,
                Some(socket2::Protocol::from(protocol)),
            )
        };
        let (rx, tx) = (socket()?, socket()?);
        rx.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>()?.into())?;
        tx.connect(&rx.local_addr()?)?;
        let payload = [1u8; 32];
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 64];
        let mut one = || -> std::io::Result<()> {
            tx.send(&payload)?;
            rx.recv(&mut buf)?;
            Ok(())
        };
        for _ in 0..WARM_DATAGRAMS {
            one()?;
        }
        let start = Instant::now();
        for _ in 0..count {
            one()?;
        }
        Ok(u64::try_from(start.elapsed().as_nanos())?)
    };
    let total = probe::in_child_result(cgroup, netns, run).context("the UDP loop")?;
    Ok(total as f64 / f64::from(count))
}
