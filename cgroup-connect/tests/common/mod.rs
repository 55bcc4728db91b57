//! Helpers shared by the integration tests: privilege gate, temporary cgroups, the real
//! `blocker` process under a guard, and probes that connect from a forked child moved into a
//! cgroup (never the test runner itself: parallel tests would share the block).
#![allow(dead_code, reason = "each test file uses a different subset")]

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

pub use cgroup_connect::cgroup::TempCgroup;

/// Path of the blocker binary under test.
pub const BLOCKER: &str = env!("CARGO_BIN_EXE_blocker");

/// True when the test may use BPF. Prints why not otherwise; under CI=true a missing
/// privilege fails the test instead, so nothing skips in CI.
#[must_use]
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none_or(|v| v != "true"),
        "CI=true: privileged test cannot skip: not root"
    );
    eprintln!("skipping: needs root (run the tests with sudo ./scripts/test.sh)");
    false
}

/// Skips the test (with its printed reason) when not privileged.
#[macro_export]
macro_rules! require_privileges {
    () => {
        if !common::privileged() {
            return;
        }
    };
}

/// The cgroup v2 root.
#[must_use]
pub fn cgroup_root() -> PathBuf {
    cgroup_connect::cgroup::cgroup2_root().unwrap_or_else(|e| panic!("cgroup v2 root: {e}"))
}

/// A fresh, uniquely named child of the cgroup v2 root, removed on drop.
#[must_use]
pub fn temp_cgroup() -> TempCgroup {
    TempCgroup::create(&cgroup_root(), "cgroup-connect-test")
        .unwrap_or_else(|e| panic!("create test cgroup: {e}"))
}

/// The programs attached to `cgroup`, as `bpftool -j cgroup show` prints them ("[]" if none).
#[must_use]
pub fn attached_programs(cgroup: &Path) -> String {
    let out = Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()
        .unwrap_or_else(|e| panic!("run bpftool (./scripts/setup.sh installs it): {e}"));
    assert!(out.status.success(), "bpftool cgroup show {}: {out:?}", cgroup.display());
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Asserts that no BPF program is attached to `cgroup`.
pub fn assert_nothing_attached(cgroup: &Path) {
    let progs = attached_programs(cgroup);
    assert!(
        progs.is_empty() || progs == "[]",
        "programs left attached to {}: {progs}",
        cgroup.display()
    );
}

/// A unique instance name for a test.
#[must_use]
pub fn instance_name() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("test-{}-{n}", std::process::id())
}

/// A running `blocker run`. On drop: SIGKILL if the test did not stop it, then
/// `blocker detach NAME`, so no pin outlives the test.
pub struct Blocker {
    child: Child,
    /// The instance name (given with --name, or made unique).
    pub name: String,
    /// The line that began with "attached".
    pub attached_line: String,
    lines: mpsc::Receiver<String>,
}

impl Blocker {
    /// Starts `blocker run ARGS` (with a unique `--name` unless ARGS has one) and waits (up
    /// to 30 s) for its `attached` line.
    #[must_use]
    pub fn start(args: &[&str]) -> Self {
        let name = match args.iter().position(|a| *a == "--name") {
            Some(i) => args[i + 1].to_owned(),
            None => instance_name(),
        };
        let mut full: Vec<&str> = args.to_vec();
        if !args.contains(&"--name") {
            full.extend(["--name", &name]);
        }
        let mut child = Command::new(BLOCKER)
            .arg("run")
            .args(&full)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {BLOCKER}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.starts_with("attached") => {
                    return Self { child, name, attached_line: line, lines };
                }
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = child.try_wait() {
                        let out = child.wait_with_output().expect("collect output");
                        panic!(
                            "blocker {args:?} exited with {status} before attaching: {}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let out = child.wait_with_output().expect("collect output");
                    panic!(
                        "blocker {args:?} did not attach ({e:?}): {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
    }

    /// Its pid.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (0: none, just wait) and waits (up to 10 s) for the exit; returns the
    /// status and the rest of stdout. The guard stays: its drop still detaches the instance.
    pub fn stop(&mut self, signal: i32) -> (ExitStatus, Vec<String>) {
        let pid = i32::try_from(self.child.id()).expect("pid fits i32");
        if signal != 0 {
            // SAFETY: pid is our own child, still unreaped.
            unsafe { libc::kill(pid, signal) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait blocker") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "blocker did not exit within 10 s of signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let rest = self.lines.try_iter().collect();
        (status, rest)
    }
}

impl Blocker {
    /// Lines printed since the `attached` line, waiting up to `wait` for one that contains
    /// `wanted` (returns all read, the match last).
    pub fn wait_for_line(&self, wanted: &str, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(wanted) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }
}

impl Drop for Blocker {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        detach_quietly(&self.name);
    }
}

/// `blocker detach NAME`, ignoring "no instance".
pub fn detach_quietly(name: &str) {
    let _ = Command::new(BLOCKER)
        .args(["detach", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// What a probe does from inside the cgroup.
#[derive(Debug, Clone, Copy)]
pub enum Probe {
    /// TCP `connect()`.
    TcpConnect,
    /// UDP `connect()`.
    UdpConnect,
    /// UDP `sendto()` on an unconnected socket.
    UdpSendto,
    /// TCP `sendto()` with `MSG_FASTOPEN` on an unconnected socket.
    TcpFastOpen,
}

/// Where a probe runs: which cgroup (None: the test runner's own) and network namespace.
#[derive(Debug, Default, Clone, Copy)]
pub struct Place<'a> {
    pub cgroup: Option<&'a Path>,
    pub netns: Option<&'a Path>,
    /// Create the socket as `AF_INET6` even for an IPv4 destination (dual-stack, `::ffff:a.b.c.d`).
    pub mapped: bool,
}

/// Runs `probe` toward `dst` from a forked child placed at `place`. Ok(()) when the call
/// succeeded, Err(errno) when it failed.
///
/// The child moves itself into the cgroup before entering the network namespace (moving needs
/// the cgroup2 mount, which `ip netns exec` would hide), and only makes raw syscalls.
pub fn probe(place: Place<'_>, probe: Probe, dst: SocketAddr) -> Result<(), i32> {
    let procs = place.cgroup.map(|cg| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(cg.join("cgroup.procs"))
            .unwrap_or_else(|e| panic!("open {}/cgroup.procs: {e}", cg.display()))
    });
    let netns = place.netns.map(|ns| {
        std::fs::File::open(ns).unwrap_or_else(|e| panic!("open netns {}: {e}", ns.display()))
    });
    let dst = match (dst, place.mapped) {
        (SocketAddr::V4(v4), true) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        (d, _) => d,
    };
    let addr = socket2::SockAddr::from(dst);
    let family = if dst.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    let (kind, proto) = match probe {
        Probe::TcpConnect | Probe::TcpFastOpen => (libc::SOCK_STREAM, libc::IPPROTO_TCP),
        Probe::UdpConnect | Probe::UdpSendto => (libc::SOCK_DGRAM, libc::IPPROTO_UDP),
    };
    let procs_fd = procs.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
    let netns_fd = netns.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
    // SAFETY: the child calls only async-signal-safe syscalls on memory prepared before fork,
    // then _exit()s; the parent reaps it.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            if let Some(fd) = procs_fd
                && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
            {
                libc::_exit(200);
            }
            if let Some(fd) = netns_fd
                && libc::setns(fd, libc::CLONE_NEWNET) != 0
            {
                libc::_exit(201);
            }
            let s = libc::socket(family, kind, proto);
            if s < 0 {
                libc::_exit(202);
            }
            let r = match probe {
                Probe::TcpConnect | Probe::UdpConnect => {
                    libc::connect(s, addr.as_ptr().cast(), addr.len())
                }
                Probe::UdpSendto => {
                    let n = libc::sendto(
                        s,
                        b"x".as_ptr().cast(),
                        1,
                        0,
                        addr.as_ptr().cast(),
                        addr.len(),
                    );
                    if n == 1 { 0 } else { -1 }
                }
                Probe::TcpFastOpen => {
                    let n = libc::sendto(
                        s,
                        b"x".as_ptr().cast(),
                        1,
                        libc::MSG_FASTOPEN,
                        addr.as_ptr().cast(),
                        addr.len(),
                    );
                    if n >= 0 { 0 } else { -1 }
                }
            };
            libc::_exit(if r == 0 { 0 } else { *libc::__errno_location() });
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &raw mut status, 0), pid, "waitpid");
        assert!(libc::WIFEXITED(status), "probe child died: status {status}");
        match libc::WEXITSTATUS(status) {
            0 => Ok(()),
            200 => panic!("probe could not join cgroup {:?}", place.cgroup),
            201 => panic!("probe could not enter netns {:?}", place.netns),
            202 => panic!("probe could not create a socket"),
            errno => Err(errno),
        }
    }
}

/// A TCP connect from a child in `cgroup`.
pub fn connect_in(cgroup: &Path, dst: SocketAddr) -> Result<(), i32> {
    probe(Place { cgroup: Some(cgroup), ..Place::default() }, Probe::TcpConnect, dst)
}

/// A TCP listener on `ip`, port chosen by the kernel; connects to it succeed without `accept()`.
#[must_use]
pub fn listener(ip: &str) -> (std::net::TcpListener, SocketAddr) {
    let l = std::net::TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("listen on {ip}: {e}"));
    let addr = l.local_addr().expect("local addr");
    (l, addr)
}

/// Runs the blocker to completion with `args` (it must exit within 30 s).
#[must_use]
pub fn blocker_output(args: &[&str], uid: Option<u32>) -> std::process::Output {
    let mut cmd = Command::new(BLOCKER);
    cmd.args(args).stdin(Stdio::null());
    if let Some(uid) = uid {
        // SAFETY: setgroups/setgid/setuid are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(uid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn blocker: {e}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("blocker {args:?} did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect output")
}

/// A network namespace with `lo` up and the given addresses (CIDR, e.g. "192.0.2.0/24") on it,
/// deleted on drop. Traffic to those addresses stays inside it.
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Makes the namespace.
    #[must_use]
    pub fn new(addrs: &[&str]) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("cgc-test-{}-{n}", std::process::id());
        ip(&["netns", "add", &name]);
        let this = Self { path: PathBuf::from("/run/netns").join(&name), name };
        ip(&["-n", &this.name, "link", "set", "lo", "up"]);
        for addr in addrs {
            ip(&["-n", &this.name, "addr", "add", addr, "dev", "lo"]);
            if addr.contains(':') {
                // IPv4 prefixes on lo are local as a whole; IPv6 ones need a local route.
                ip(&["-n", &this.name, "-6", "route", "add", "local", addr, "dev", "lo"]);
            }
        }
        this
    }

    /// Its path under /run/netns, for `setns`.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn ip(args: &[&str]) {
    let out =
        Command::new("ip").args(args).output().unwrap_or_else(|e| panic!("run ip {args:?}: {e}"));
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The outcome of a probe, as the firewall sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// EPERM: a program said no.
    Blocked,
    /// The call reached the network stack: it succeeded, or a closed port refused it.
    Allowed,
}

/// Classifies a probe's result; any other error means the test set-up is broken.
#[must_use]
pub fn outcome(result: Result<(), i32>) -> Outcome {
    match result {
        Ok(()) | Err(libc::ECONNREFUSED) => Outcome::Allowed,
        Err(libc::EPERM) => Outcome::Blocked,
        Err(errno) => {
            panic!("probe failed with errno {errno}: {}", std::io::Error::from_raw_os_error(errno))
        }
    }
}

/// Where the tests of one blocker run: a cgroup, a namespace with test addresses, the blocker.
pub struct Scene {
    pub blocker: Blocker,
    pub netns: Netns,
    pub cgroup: TempCgroup,
}

impl Scene {
    /// Starts `blocker run --cgroup <new cgroup> ARGS` with a namespace holding `addrs`.
    #[must_use]
    pub fn new(addrs: &[&str], args: &[&str]) -> Self {
        let netns = Netns::new(addrs);
        let cgroup = temp_cgroup();
        let mut all = vec!["--cgroup", cgroup.path().to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        let blocker = Blocker::start(&all);
        Self { blocker, netns, cgroup }
    }

    /// The outcome of `probe` to `dst` (`192.0.2.1:80`, `[2001:db8::1]:80`) from the cgroup,
    /// inside the namespace.
    #[must_use]
    pub fn check(&self, probe: Probe, dst: &str) -> Outcome {
        Self::check_at(
            Place {
                cgroup: Some(self.cgroup.path()),
                netns: Some(self.netns.path()),
                mapped: false,
            },
            probe,
            dst,
        )
    }

    /// Like [`Scene::check`] from an IPv6 socket to the IPv4-mapped form of an IPv4 `dst`.
    #[must_use]
    pub fn check_mapped(&self, probe: Probe, dst: &str) -> Outcome {
        Self::check_at(
            Place {
                cgroup: Some(self.cgroup.path()),
                netns: Some(self.netns.path()),
                mapped: true,
            },
            probe,
            dst,
        )
    }

    /// Like [`Scene::check`] from a place of the caller's choosing.
    #[must_use]
    pub fn check_at(place: Place<'_>, probe_kind: Probe, dst: &str) -> Outcome {
        let addr: SocketAddr = dst.parse().unwrap_or_else(|e| panic!("test address {dst}: {e}"));
        outcome(probe(place, probe_kind, addr))
    }

    /// Asserts each (probe, destination, outcome).
    #[track_caller]
    pub fn expect(&self, cases: &[(Probe, &str, Outcome)]) {
        for &(p, dst, want) in cases {
            assert_eq!(self.check(p, dst), want, "{p:?} to {dst}");
        }
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Makes a uniquely named directory under the system temp dir.
    #[must_use]
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("cgroup-connect-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Self(dir)
    }

    /// Writes `name` in it and returns its path.
    #[must_use]
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Probes running in a thread while a test changes the instance: each round checks every
/// (destination, outcomes allowed) case from the cgroup and records any other outcome.
pub struct Prober {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<ProbeReport>,
}

/// What a [`Prober`] saw.
#[derive(Debug, Default)]
pub struct ProbeReport {
    pub probes: u64,
    pub wrong: Vec<String>,
}

impl Prober {
    /// Starts probing (bounded: at most 60 s and 200,000 probes).
    #[must_use]
    pub fn start(cgroup: &Path, cases: Vec<(SocketAddr, Vec<Outcome>)>) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&stop);
        let cgroup = cgroup.to_owned();
        let handle = std::thread::spawn(move || {
            let mut report = ProbeReport::default();
            let deadline = Instant::now() + Duration::from_mins(1);
            while !flag.load(std::sync::atomic::Ordering::Relaxed)
                && Instant::now() < deadline
                && report.probes < 200_000
            {
                for (dst, ok) in &cases {
                    let got = outcome(connect_in(&cgroup, *dst));
                    report.probes += 1;
                    if !ok.contains(&got) {
                        report.wrong.push(format!("{dst}: {got:?}, expected one of {ok:?}"));
                    }
                }
            }
            report
        });
        Self { stop, handle }
    }

    /// Stops probing and returns what it saw.
    #[must_use]
    pub fn finish(self) -> ProbeReport {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().expect("prober thread")
    }
}

/// Makes `count` TCP connects to `dst` from a child in `cgroup`, as fast as it can; returns
/// how many failed with EPERM.
#[must_use]
pub fn flood(cgroup: &Path, dst: SocketAddr, count: u32) -> u32 {
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))
        .expect("open cgroup.procs");
    let procs_fd = std::os::fd::AsRawFd::as_raw_fd(&procs);
    let addr = socket2::SockAddr::from(dst);
    let mut pipe = [0i32; 2];
    // SAFETY: pipe fills two fds.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    // SAFETY: the child makes raw syscalls only, then _exit()s.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork");
        if pid == 0 {
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                libc::_exit(200);
            }
            let mut eperm: u32 = 0;
            for _ in 0..count {
                let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                if libc::connect(s, addr.as_ptr().cast(), addr.len()) != 0
                    && *libc::__errno_location() == libc::EPERM
                {
                    eperm += 1;
                }
                libc::close(s);
            }
            libc::write(pipe[1], (&raw const eperm).cast(), 4);
            libc::_exit(0);
        }
        libc::close(pipe[1]);
        let mut eperm: u32 = 0;
        let n = libc::read(pipe[0], (&raw mut eperm).cast(), 4);
        libc::close(pipe[0]);
        let mut status = 0;
        libc::waitpid(pid, &raw mut status, 0);
        assert_eq!(n, 4, "flood child reported nothing (status {status})");
        eperm
    }
}

/// Runs `blocker ARGS`, expecting success, and returns its standard output.
#[must_use]
pub fn blocker_ok(args: &[&str]) -> String {
    let out = blocker_output(args, None);
    assert!(out.status.success(), "blocker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loopback address and port (nothing listens: allowed connects are refused).
#[must_use]
pub fn lo(addr: &str) -> SocketAddr {
    format!("{addr}:9").parse().expect("loopback address")
}

/// The number of programs attached to `cgroup`.
#[must_use]
pub fn attached_count(cgroup: &Path) -> usize {
    attached_programs(cgroup).matches("\"id\"").count()
}
