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

/// Forks a child that joins `cgroup` and `netns`, runs `work` and sends its `u64` result back.
fn in_child(
    cgroup: &Path,
    netns: &Path,
    work: impl FnOnce() -> anyhow::Result<u64>,
) -> anyhow::Result<u64> {
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
        // SAFETY: the child's own syscalls; results go through the pipe.
        unsafe {
            let ok = libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) == 1
                && libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) == 0;
            let value = if ok { work().unwrap_or(u64::MAX) } else { u64::MAX };
            libc::write(pipe[1], (&raw const value).cast(), 8);
            libc::_exit(0);
        }
    }
    let mut value = u64::MAX;
    // SAFETY: reading 8 bytes into a u64, then reaping our child.
    unsafe {
        libc::close(pipe[1]);
        libc::read(pipe[0], (&raw mut value).cast(), 8);
        libc::close(pipe[0]);
        let mut status = 0;
        libc::waitpid(pid, &raw mut status, 0);
    }
    ensure!(value != u64::MAX, "the benchmark child failed");
    Ok(value)
}

/// Nanoseconds per loopback TCP connect + accept + close (`SO_LINGER` 0: no TIME_WAIT), over
/// `iterations` after a warm-up, from a child in `cgroup` and `netns`.
pub fn connect_loop(cgroup: &Path, netns: &Path, iterations: u32, v6: bool) -> anyhow::Result<f64> {
    let total = in_child(cgroup, netns, || {
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
        for _ in 0..iterations.min(500) {
            one(addr)?;
        }
        let start = Instant::now();
        for _ in 0..iterations {
            one(addr)?;
        }
        Ok(u64::try_from(start.elapsed().as_nanos())?)
    })?;
    Ok(total as f64 / f64::from(iterations))
}

/// A child in `cgroup` and `netns` connecting to `dst` (which must be blocked) until told to
/// stop; it reports how many attempts were not blocked.
pub struct WindowProbe {
    pid: i32,
    pipe: i32,
}

impl WindowProbe {
    pub fn start(cgroup: &Path, netns: &Path, dst: SocketAddr) -> anyhow::Result<Self> {
        let procs = std::fs::OpenOptions::new().write(true).open(cgroup.join("cgroup.procs"))?;
        let ns = std::fs::File::open(netns)?;
        let addr = socket2::SockAddr::from(dst);
        let mut pipe = [0i32; 2];
        // SAFETY: as in in_child.
        ensure!(unsafe { libc::pipe(pipe.as_mut_ptr()) } == 0, "pipe");
        // SAFETY: as in in_child; the child loops on raw syscalls until SIGTERM (bounded by a
        // deadline), then reports.
        let pid = unsafe { libc::fork() };
        ensure!(pid >= 0, "fork");
        if pid == 0 {
            // SAFETY: the child's own syscalls.
            unsafe {
                libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1);
                libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET);
                let deadline = Instant::now() + std::time::Duration::from_mins(10);
                let mut counts = [0u64; 2]; // attempts, not blocked
                STOP.store(false, std::sync::atomic::Ordering::Relaxed);
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
                libc::write(pipe[1], counts.as_ptr().cast(), 16);
                libc::_exit(0);
            }
        }
        // SAFETY: the parent keeps the read end.
        unsafe { libc::close(pipe[1]) };
        Ok(Self { pid, pipe: pipe[0] })
    }

    /// Stops the child: (attempts, attempts not blocked).
    pub fn finish(self) -> (u64, u64) {
        let mut counts = [0u64; 2];
        // SAFETY: our child and our pipe.
        unsafe {
            libc::kill(self.pid, libc::SIGTERM);
            libc::read(self.pipe, counts.as_mut_ptr().cast(), 16);
            libc::close(self.pipe);
            let mut status = 0;
            libc::waitpid(self.pid, &raw mut status, 0);
        }
        (counts[0], counts[1])
    }
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}
