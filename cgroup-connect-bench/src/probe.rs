//! Connect loops run by forked children placed in a cgroup and a network namespace. The
//! benchmark process is single-threaded while it forks, so the children may use the
//! standard library.
use std::{
    net::{SocketAddr, TcpListener},
    os::fd::AsRawFd as _,
    path::Path,
    time::Instant,
};

use anyhow::{Context as _, ensure};

/// A forked child that joined a cgroup and a network namespace and runs some work; its
/// result, two `u64`s, comes back through a pipe.
struct InChild {
    pid: i32,
    pipe: i32,
}

/// Forks a child that joins `cgroup`, then `netns` (in that order: joining needs the cgroup2
/// mount, which the namespace may hide), runs `work` and reports its result.
fn spawn_in(
    cgroup: &Path,
    netns: &Path,
    work: impl FnOnce() -> [u64; 2],
) -> anyhow::Result<InChild> {
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))
        .context("cgroup.procs")?;
    let ns = std::fs::File::open(netns).context("netns")?;
    let mut pipe = [0i32; 2];
    // SAFETY: pipe fills two fds.
    ensure!(unsafe { libc::pipe(pipe.as_mut_ptr()) } == 0, "pipe");
    // SAFETY: fork in a single-threaded process; the child exits with _exit.
    let pid = unsafe { libc::fork() };
    ensure!(pid >= 0, "fork");
    if pid == 0 {
        // SAFETY: the child's own syscalls; the result goes through the pipe.
        unsafe {
            let joined = libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) == 1
                && libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) == 0;
            let result = if joined { work() } else { [u64::MAX; 2] };
            libc::write(pipe[1], result.as_ptr().cast(), 16);
            libc::_exit(0);
        }
    }
    // SAFETY: the parent keeps the read end.
    unsafe { libc::close(pipe[1]) };
    Ok(InChild { pid, pipe: pipe[0] })
}

impl InChild {
    /// Waits for the result.
    fn wait(self) -> [u64; 2] {
        let mut result = [u64::MAX; 2];
        // SAFETY: our pipe and our child.
        unsafe {
            libc::read(self.pipe, result.as_mut_ptr().cast(), 16);
            libc::close(self.pipe);
            let mut status = 0;
            libc::waitpid(self.pid, &raw mut status, 0);
        }
        result
    }

    /// Asks it to stop (SIGTERM), then waits for the result.
    fn stop(self) -> [u64; 2] {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        self.wait()
    }
}

/// Connects made before a connect loop is timed (at most).
pub const WARM_CONNECTS: u32 = 500;

/// Nanoseconds per loopback TCP connect + accept + close (`SO_LINGER` 0: no TIME_WAIT), over
/// `iterations` after a warm-up, from a child in `cgroup` and `netns`.
pub fn connect_loop(cgroup: &Path, netns: &Path, iterations: u32, v6: bool) -> anyhow::Result<f64> {
    let run = || -> anyhow::Result<u64> {
        let listener = TcpListener::bind(if v6 { "[::1]:0" } else { "127.0.0.1:0" })?;
        let addr = listener.local_addr()?;
        let one = |addr: SocketAddr| -> anyhow::Result<()> {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                None,
            )?;
            s.set_linger(Some(std::time::Duration::ZERO))?;
            s.connect(&addr.into())?;
            let (a, _) = listener.accept()?;
            drop(s);
            drop(a);
            Ok(())
        };
        for _ in 0..iterations.min(WARM_CONNECTS) {
            one(addr)?;
        }
        let start = Instant::now();
        for _ in 0..iterations {
            one(addr)?;
        }
        Ok(u64::try_from(start.elapsed().as_nanos())?)
    };
    let total = in_child_result(cgroup, netns, run)?;
    Ok(total as f64 / f64::from(iterations))
}

/// Runs `work` in a child in `cgroup` and `netns` and returns its number.
pub fn in_child_result(
    cgroup: &Path,
    netns: &Path,
    work: impl FnOnce() -> anyhow::Result<u64>,
) -> anyhow::Result<u64> {
    let [total, _] = spawn_in(cgroup, netns, || [work().unwrap_or(u64::MAX), 0])?.wait();
    ensure!(total != u64::MAX, "the benchmark child failed");
    Ok(total)
}

/// A child in `cgroup` and `netns` connecting to `dst` (which must be blocked) until told to
/// stop (at most 10 minutes); it reports how many attempts were not blocked.
pub struct WindowProbe(InChild);

impl WindowProbe {
    pub fn start(cgroup: &Path, netns: &Path, dst: SocketAddr) -> anyhow::Result<Self> {
        let addr = socket2::SockAddr::from(dst);
        let child = spawn_in(cgroup, netns, || {
            let deadline = Instant::now() + std::time::Duration::from_mins(10);
            let mut counts = [0u64; 2]; // attempts, not blocked
            // SAFETY: installing a handler that only stores to an atomic; raw syscalls after.
            unsafe {
                libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
                while !STOP.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline
                {
                    let s = libc::socket(i32::from(addr.family()), libc::SOCK_STREAM, 0);
                    let r = libc::connect(s, addr.as_ptr().cast(), addr.len());
                    if r == 0 || *libc::__errno_location() != libc::EPERM {
                        counts[1] += 1;
                    }
                    counts[0] += 1;
                    libc::close(s);
                }
            }
            counts
        })?;
        Ok(Self(child))
    }

    /// Stops the child: (attempts, attempts not blocked).
    pub fn finish(self) -> (u64, u64) {
        let [attempts, not_blocked] = self.0.stop();
        (attempts, not_blocked)
    }
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// One UDP socket `connect()`ing to each of `dsts` in turn (the connect hook runs on every
/// call; nothing is sent), from a child in `cgroup` and `netns`. With `evict`, the child reads
/// the whole buffer (one load per cache line) before each call, so the call starts with cold
/// caches. Every destination must be of one family. Returns (refused with EPERM, failed
/// otherwise). Raw syscalls only in the child (the parent may have threads).
pub fn udp_connects(
    cgroup: &Path,
    netns: &Path,
    dsts: &[socket2::SockAddr],
    evict: Option<&[u8]>,
) -> anyhow::Result<(u64, u64)> {
    let Some(first) = dsts.first() else { return Ok((0, 0)) };
    let family = i32::from(first.family());
    let [refused, failed] = spawn_in(cgroup, netns, || {
        let mut counts = [0u64; 2];
        // SAFETY: raw syscalls on memory prepared before the fork.
        unsafe {
            let s = libc::socket(family, libc::SOCK_DGRAM, 0);
            if s < 0 {
                return [u64::MAX; 2];
            }
            for dst in dsts {
                if let Some(buf) = evict {
                    let mut sum = 0u8;
                    for i in (0..buf.len()).step_by(64) {
                        sum = sum.wrapping_add(std::ptr::read_volatile(buf.as_ptr().add(i)));
                    }
                    std::hint::black_box(sum);
                }
                if libc::connect(s, dst.as_ptr().cast(), dst.len()) != 0 {
                    if *libc::__errno_location() == libc::EPERM {
                        counts[0] += 1;
                    } else {
                        counts[1] += 1;
                    }
                }
            }
            libc::close(s);
        }
        counts
    })?
    .wait();
    ensure!(refused != u64::MAX, "the benchmark child failed");
    Ok((refused, failed))
}
