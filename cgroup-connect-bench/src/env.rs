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
        };
        let stdout = child.stdout.take().context("stdout")?;
        let stderr = child.stderr.take().context("stderr")?;
        this.child = child;
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
        std::thread::spawn(move || for _ in lines {});
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
