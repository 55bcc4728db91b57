//! The cost of an events reader (issue 11): the connect program's bpf_stats cost per blocked
//! decision with a reader attached (`--events FILE`) and without, alternating round by round,
//! and how long a lone event waits before the reader writes it (the programs wake the reader
//! only as the ring fills; the reader looks every 50 ms).
use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use cgroup_connect::cgroup::{self, TempCgroup};
use cgroup_connect_common::programs;
use serde::Serialize;

use crate::{
    Config, Stat,
    env::{self, BlockerProc, BpfStats, Netns},
    packets::loadavg,
    probe,
};

/// The blocked address.
const BLOCKED: &str = "127.0.0.2";

#[derive(Debug, Serialize)]
pub struct EventsRow {
    pub reader: bool,
    pub ns_per_decision: Stat,
}

/// The events section of `bench/results.json`.
#[derive(Debug, Serialize)]
pub struct EventsReport {
    pub date: String,
    pub mode: &'static str,
    pub kernel: String,
    pub rounds: usize,
    /// Blocked connects per round and place.
    pub attempts: u32,
    /// `/proc/loadavg` before and after: the machine may be shared.
    pub loadavg_before: String,
    pub loadavg_after: String,
    pub rows: Vec<EventsRow>,
    /// Median with a reader / median without.
    pub ratio: f64,
    /// A lone blocked connect's event: from the connect's return to its line in the file.
    pub lone_event_ms: Stat,
    pub lone_event_max_ms: f64,
}

/// `attempts` blocked connects to [`BLOCKED`] from a child in `cgroup` and `netns`, with raw
/// syscalls only (the parent has threads); fails unless every one was refused.
fn blocked_connects(cgroup: &Path, netns: &Path, attempts: u32) -> anyhow::Result<()> {
    let dst = SocketAddr::new(BLOCKED.parse()?, 9);
    let addr = socket2::SockAddr::from(dst);
    let refused = probe::in_child_result(cgroup, netns, || {
        let mut refused = 0;
        for _ in 0..attempts {
            // SAFETY: raw syscalls on memory prepared before the fork.
            unsafe {
                let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                if libc::connect(s, addr.as_ptr().cast(), addr.len()) != 0
                    && *libc::__errno_location() == libc::EPERM
                {
                    refused += 1;
                }
                libc::close(s);
            }
        }
        Ok(refused)
    })?;
    ensure!(refused == u64::from(attempts), "{refused} of {attempts} connects blocked");
    Ok(())
}

fn lines(file: &Path) -> usize {
    std::fs::read_to_string(file).map_or(0, |t| t.lines().count())
}

/// Runs the measurement.
///
/// # Errors
/// A failure to start a blocker or a child, or an event that never arrives (5 s).
pub fn run(cfg: &Config, log: &mut dyn FnMut(&str)) -> anyhow::Result<EventsReport> {
    crate::in_work(cfg, || run_in(cfg, log))
}

/// [`run`] in a work folder that exists, which it leaves.
pub(crate) fn run_in(cfg: &Config, log: &mut dyn FnMut(&str)) -> anyhow::Result<EventsReport> {
    let loadavg_before = loadavg();
    let stats = BpfStats::enable()?;
    let root = cgroup::cgroup2_root()?;
    let attempts = cfg.iterations;
    let mut per_decision = [vec![], vec![]];
    for round in 0..cfg.rounds {
        log(&format!("events: round {}/{}", round + 1, cfg.rounds));
        for j in 0..2 {
            let reader = (j + round) % 2 == 0;
            let cg = TempCgroup::create(&root, "cgroup-connect-bench")?;
            let ns = Netns::new()?;
            let file = cfg.work.join(env::unique("events"));
            let mut args = vec!["--block", BLOCKED];
            if reader {
                args.extend(["--events", file.to_str().context("path")?]);
            }
            let b = BlockerProc::start(&cfg.blocker, cg.path(), &args)?;
            let id = env::attached_program(cg.path(), programs::CONNECT4)?;
            let (t0, c0) = env::program_stats(id)?;
            blocked_connects(cg.path(), &ns.path(), attempts)?;
            let (t1, c1) = env::program_stats(id)?;
            per_decision[usize::from(!reader)].push((t1 - t0) as f64 / (c1 - c0).max(1) as f64);
            drop(b);
        }
    }
    drop(stats);

    log("events: a lone event's wait");
    let cg = TempCgroup::create(&root, "cgroup-connect-bench")?;
    let ns = Netns::new()?;
    let file = cfg.work.join(env::unique("events"));
    let args = ["--block", BLOCKED, "--events", file.to_str().context("path")?];
    let b = BlockerProc::start(&cfg.blocker, cg.path(), &args)?;
    let mut waits = vec![];
    for k in 0..cfg.rounds * 5 {
        blocked_connects(cg.path(), &ns.path(), 1)?;
        let sent = Instant::now();
        while lines(&file) <= k {
            ensure!(sent.elapsed() < Duration::from_secs(5), "event {} never arrived", k + 1);
            std::thread::sleep(Duration::from_micros(500));
        }
        waits.push(sent.elapsed().as_secs_f64() * 1e3);
        // Another phase against the reader's 50 ms each time.
        std::thread::sleep(Duration::from_millis(20 + 7 * (k as u64 % 7)));
    }
    drop(b);

    let rows: Vec<EventsRow> = [true, false]
        .iter()
        .zip(&per_decision)
        .map(|(&reader, ns)| EventsRow { reader, ns_per_decision: Stat::of(ns) })
        .collect();
    Ok(EventsReport {
        date: env::sh("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"])?.trim().to_owned(),
        mode: cfg.mode,
        kernel: env::sh("uname", &["-r"])?.trim().to_owned(),
        rounds: cfg.rounds,
        attempts,
        loadavg_before,
        loadavg_after: loadavg(),
        ratio: rows[0].ns_per_decision.median / rows[1].ns_per_decision.median,
        rows,
        lone_event_ms: Stat::of(&waits),
        lone_event_max_ms: waits.iter().copied().fold(0.0, f64::max),
    })
}
