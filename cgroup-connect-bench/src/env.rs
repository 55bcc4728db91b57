//! What a benchmark sets up, each with a guard that undoes it on drop (also on failure):
//! network namespaces, blocker processes and their instances; and what it reads: kernel
//! memory, a process's RSS, bpf_stats of a program.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

/// Runs a command, failing with its stderr.
pub fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out =
        Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command with `input` on its standard input; returns how long it took.
pub fn timed_with_input(program: &str, args: &[&str], input: &Path) -> anyhow::Result<Duration> {
    let file =
        std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
    let start = Instant::now();
    let out = Command::new(program)
        .args(args)
        .stdin(file)
        .output()
        .with_context(|| format!("running {program}"))?;
    let took = start.elapsed();
    ensure!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(took)
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A unique name for this run.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A network namespace with `lo` up, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> anyhow::Result<Self> {
        let this = Self { name: unique("cgcb") };
        sh("ip", &["netns", "add", &this.name])?;
        sh("ip", &["-n", &this.name, "link", "set", "lo", "up"])?;
        Ok(this)
    }

    /// A namespace where UDP `connect()` to any unicast address succeeds: a veth pair (both
    /// ends inside) with an IPv4 and an IPv6 address and default routes through it. Nothing is
    /// sent there; the routes only let connects find one.
    pub fn with_routes() -> anyhow::Result<Self> {
        let this = Self::new()?;
        let n = this.name.as_str();
        let ip = |args: &[&str]| -> anyhow::Result<()> {
            let mut all = vec!["-n", n];
            all.extend_from_slice(args);
            sh("ip", &all).map(drop)
        };
        ip(&["link", "add", "bench0", "type", "veth", "peer", "name", "bench1"])?;
        ip(&["link", "set", "bench0", "up"])?;
        ip(&["link", "set", "bench1", "up"])?;
        ip(&["addr", "add", "192.0.2.1/24", "dev", "bench0"])?;
        ip(&["-6", "addr", "add", "fd00:be::1/64", "dev", "bench0", "nodad"])?;
        ip(&["route", "add", "default", "dev", "bench0"])?;
        ip(&["-6", "route", "add", "default", "dev", "bench0"])?;
        Ok(this)
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `program args` inside the namespace, with `input` on stdin; returns the time taken.
    pub fn timed(&self, program: &str, args: &[&str], input: &Path) -> anyhow::Result<Duration> {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        timed_with_input("ip", &all, input)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A `blocker run` on a cgroup; stopped and its instance detached on drop.
pub struct BlockerProc {
    pub name: String,
    pub child: Child,
    blocker: PathBuf,
    /// Spawn to the `attached` line.
    pub start_to_enforce: Duration,
    /// The `timings:` line's phases.
    pub timings: Vec<(String, f64)>,
    /// Status lines starting with `reloaded` it printed (one per SIGHUP reload).
    reloads: std::sync::Arc<AtomicU32>,
}

impl BlockerProc {
    /// Starts `blocker run --cgroup CG --name N --timings ARGS` and waits for it to enforce.
    pub fn start(blocker: &Path, cgroup: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let name = unique("bench");
        let start = Instant::now();
        let mut child = Command::new(blocker)
            .args(["run", "--timings", "--name", &name, "--cgroup"])
            .arg(cgroup)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the blocker")?;
        let mut this = Self {
            name,
            child: Command::new("true").spawn()?,
            blocker: blocker.to_owned(),
            start_to_enforce: Duration::ZERO,
            timings: vec![],
            reloads: std::sync::Arc::default(),
        };
        let reloads = this.reloads.clone();
        let count = move |line: std::io::Result<String>| {
            if line.is_ok_and(|l| l.starts_with("reloaded")) {
                reloads.fetch_add(1, Ordering::Relaxed);
            }
        };
        let stdout = child.stdout.take().context("stdout")?;
        let stderr = child.stderr.take().context("stderr")?;
        this.child = child;
        if args.windows(2).any(|w| w == ["--events", "-"]) {
            // Events go to standard output, the status lines to standard error.
            std::thread::spawn(move || for _ in BufReader::new(stdout).lines() {});
            let mut err_lines = BufReader::new(stderr).lines();
            loop {
                match err_lines.next() {
                    Some(Ok(line)) if line.starts_with("attached") => break,
                    Some(Ok(_)) => {}
                    _ => bail!("blocker did not attach"),
                }
            }
            this.start_to_enforce = start.elapsed();
            if let Some(Ok(line)) = err_lines.next() {
                this.timings = parse_timings(&line);
            }
            std::thread::spawn(move || err_lines.for_each(count));
            return Ok(this);
        }
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with("attached") => break,
                Some(Ok(_)) => {}
                _ => {
                    let mut err = String::new();
                    let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut err);
                    bail!("blocker did not attach: {err}");
                }
            }
        }
        this.start_to_enforce = start.elapsed();
        // The timings line follows on stderr; stdout stays drained by a thread.
        std::thread::spawn(move || lines.for_each(count));
        let mut err_lines = BufReader::new(stderr).lines();
        if let Some(Ok(line)) = err_lines.next() {
            this.timings = parse_timings(&line);
        }
        std::thread::spawn(move || for _ in err_lines {});
        Ok(this)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGHUP and waits (at most a minute) for the `reloaded` line: the wall time.
    pub fn sighup_reload(&self) -> anyhow::Result<Duration> {
        let before = self.reloads.load(Ordering::Relaxed);
        let start = Instant::now();
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(i32::try_from(self.child.id())?, libc::SIGHUP) };
        while self.reloads.load(Ordering::Relaxed) == before {
            ensure!(start.elapsed() < Duration::from_mins(1), "no reload within a minute");
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(start.elapsed())
    }

    /// `blocker reload NAME` as its own process: its maximum resident set, KiB.
    pub fn reload_command_peak_kib(&self) -> anyhow::Result<u64> {
        command_peak_kib(&self.blocker, &["reload", &self.name])
    }

    /// `blocker reload NAME --timings`: wall time and phases.
    pub fn reload(&self) -> anyhow::Result<(Duration, Vec<(String, f64)>)> {
        let start = Instant::now();
        let out = Command::new(&self.blocker).args(["reload", "--timings", &self.name]).output()?;
        let took = start.elapsed();
        ensure!(out.status.success(), "reload: {}", String::from_utf8_lossy(&out.stderr));
        let err = String::from_utf8_lossy(&out.stderr);
        Ok((
            took,
            err.lines().find(|l| l.starts_with("timings:")).map(parse_timings).unwrap_or_default(),
        ))
    }
}

fn parse_timings(line: &str) -> Vec<(String, f64)> {
    line.trim_start_matches("timings:")
        .split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.trim_end_matches('s').parse().ok()?))
        })
        .collect()
}

impl Drop for BlockerProc {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: our own child.
            unsafe { libc::kill(pid, libc::SIGINT) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new(&self.blocker)
            .args(["detach", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Kernel memory as the benchmarks count it: SUnreclaim + VmallocUsed + Percpu, in KiB.
pub fn kernel_memory_kib() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .filter(|l| {
            l.starts_with("SUnreclaim:")
                || l.starts_with("VmallocUsed:")
                || l.starts_with("Percpu:")
        })
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// Kernel memory after things settle (freed objects are returned after an RCU grace period).
pub fn settled_kernel_memory_kib() -> u64 {
    std::thread::sleep(Duration::from_millis(1500));
    kernel_memory_kib()
}

/// A process's resident set, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

/// A process's peak resident set since it started or since [`reset_peak_rss`] (`VmHWM`), KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

/// Resets a process's peak resident set to its current one (`clear_refs` 5).
pub fn reset_peak_rss(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting the peak RSS of {pid}"))
}

/// `bytes_memlock` of the BPF maps named one of `names` whose ids are not in `before` (ids
/// from [`bpf_map_ids`]): the kernel memory of the maps made since. The kernel keeps the first
/// 15 bytes of a map's name.
pub fn new_maps_memlock(before: &[u64], names: &[&str]) -> anyhow::Result<u64> {
    let json: serde_json::Value = serde_json::from_str(&sh("bpftool", &["-j", "map", "show"])?)?;
    Ok(json
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["id"].as_u64().is_some_and(|id| !before.contains(&id)))
        .filter(|m| {
            m["name"].as_str().is_some_and(|n| names.iter().any(|w| w.get(..15).unwrap_or(w) == n))
        })
        .filter_map(|m| m["bytes_memlock"].as_u64())
        .sum())
}

/// The ids of every BPF map.
pub fn bpf_map_ids() -> anyhow::Result<Vec<u64>> {
    let json: serde_json::Value = serde_json::from_str(&sh("bpftool", &["-j", "map", "show"])?)?;
    Ok(json.as_array().into_iter().flatten().filter_map(|m| m["id"].as_u64()).collect())
}

/// Sets `kernel.bpf_stats_enabled` while alive, restoring the old value on drop.
pub struct BpfStats {
    old: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> anyhow::Result<Self> {
        let old = std::fs::read_to_string(BPF_STATS).context("reading kernel.bpf_stats_enabled")?;
        std::fs::write(BPF_STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(Self { old: old.trim().to_owned() })
    }

    /// Whether the sysctl is on now.
    pub fn on() -> bool {
        std::fs::read_to_string(BPF_STATS).is_ok_and(|v| v.trim() != "0")
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::File::create(BPF_STATS).and_then(|mut f| f.write_all(self.old.as_bytes()));
    }
}

/// The id of the program named `name` attached to `cgroup`.
pub fn attached_program(cgroup: &Path, name: &str) -> anyhow::Result<u32> {
    let json: serde_json::Value = serde_json::from_str(&sh(
        "bpftool",
        &["-j", "cgroup", "show", cgroup.to_str().context("path")?],
    )?)?;
    json.as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["id"].as_u64())
        .and_then(|id| u32::try_from(id).ok())
        .with_context(|| format!("no program {name} attached to {}", cgroup.display()))
}

/// (`run_time_ns`, `run_cnt`) of a program.
pub fn program_stats(id: u32) -> anyhow::Result<(u64, u64)> {
    let json: serde_json::Value =
        serde_json::from_str(&sh("bpftool", &["-j", "prog", "show", "id", &id.to_string()])?)?;
    Ok((json["run_time_ns"].as_u64().unwrap_or(0), json["run_cnt"].as_u64().unwrap_or(0)))
}

/// The maximum resident set (KiB) of `program ARGS`, which must succeed, as GNU time reports it
/// but measured from a small process: `ru_maxrss` keeps, across `execve`, the peak of the
/// memory a child ran in before it, and a child spawned from this process runs in this
/// process's memory until its exec (the benchmark's own hundreds of MB would be reported).
/// python3 spawns it and reads its children's `ru_maxrss`.
pub fn command_peak_kib(program: &Path, args: &[&str]) -> anyhow::Result<u64> {
    let script = "import resource, subprocess, sys\n\
        r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n\
        print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n\
        sys.exit(r.returncode)\n";
    let out = Command::new("python3").args(["-c", script]).arg(program).args(args).output()?;
    ensure!(out.status.success(), "{} {args:?} failed", program.display());
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}
