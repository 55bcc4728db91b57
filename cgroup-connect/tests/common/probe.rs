//! Probes: connects and sends from a child in a cgroup (see [`super::in_child`]), their
//! outcome as the firewall sees it, a flood of connects, and a thread that keeps probing while a
//! test changes the instance.
use std::{
    net::{SocketAddr, TcpListener},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::in_child;

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
pub fn probe(place: Place<'_>, probe: Probe, dst: SocketAddr) -> Result<(), i32> {
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
    let errno = in_child(&format!("probe {probe:?} to {dst}"), place.cgroup, place.netns, || {
        // SAFETY: raw syscalls on memory prepared before the fork.
        unsafe {
            let s = libc::socket(family, kind, proto);
            if s < 0 {
                return None;
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
            Some(if r == 0 { 0 } else { (*libc::__errno_location()).cast_unsigned() })
        }
    });
    if errno == 0 { Ok(()) } else { Err(errno.cast_signed()) }
}

/// A TCP connect from a child in `cgroup`.
pub fn connect_in(cgroup: &Path, dst: SocketAddr) -> Result<(), i32> {
    probe(Place { cgroup: Some(cgroup), ..Place::default() }, Probe::TcpConnect, dst)
}

/// Makes `count` TCP connects to `dst` from a child in `cgroup`, as fast as it can; returns
/// how many failed with EPERM.
#[must_use]
pub fn flood(cgroup: &Path, dst: SocketAddr, count: u32) -> u32 {
    let addr = socket2::SockAddr::from(dst);
    in_child(&format!("flood of {count} connects to {dst}"), Some(cgroup), None, || {
        let mut eperm: u32 = 0;
        for _ in 0..count {
            // SAFETY: raw syscalls on memory prepared before the fork.
            unsafe {
                let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                if libc::connect(s, addr.as_ptr().cast(), addr.len()) != 0
                    && *libc::__errno_location() == libc::EPERM
                {
                    eperm += 1;
                }
                libc::close(s);
            }
        }
        Some(eperm)
    })
}

/// A TCP listener on `ip`, port chosen by the kernel; connects to it succeed without `accept()`.
#[must_use]
pub fn listener(ip: &str) -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("listen on {ip}: {e}"));
    let addr = l.local_addr().unwrap_or_else(|e| panic!("address of the listener on {ip}: {e}"));
    (l, addr)
}

/// A loopback address and port (nothing listens: allowed connects are refused).
#[must_use]
pub fn lo(addr: &str) -> SocketAddr {
    format!("{addr}:9").parse().unwrap_or_else(|e| panic!("loopback address {addr}: {e}"))
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

/// Probes running in a thread while a test changes the instance: each round checks every
/// (destination, outcomes allowed) case from the cgroup and records any other outcome.
pub struct Prober {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    handle: JoinHandle<ProbeReport>,
}

/// Probes a [`Prober`] makes at least before [`Prober::finish`] stops it (if they take less
/// than 30 s): on a loaded machine a fork per probe is slow, and a test's window can pass
/// with only a few.
const MIN_PROBES: u64 = 20;

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
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let done = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&done);
        let cgroup = cgroup.to_owned();
        let handle = std::thread::spawn(move || {
            let mut report = ProbeReport::default();
            let deadline = Instant::now() + Duration::from_mins(1);
            while !flag.load(Ordering::Relaxed)
                && Instant::now() < deadline
                && report.probes < 200_000
            {
                for (dst, ok) in &cases {
                    let got = outcome(connect_in(&cgroup, *dst));
                    report.probes += 1;
                    count.store(report.probes, Ordering::Relaxed);
                    if !ok.contains(&got) {
                        report.wrong.push(format!("{dst}: {got:?}, expected one of {ok:?}"));
                    }
                }
            }
            report
        });
        Self { stop, done, handle }
    }

    /// Stops probing and returns what it saw.
    #[must_use]
    pub fn finish(self) -> ProbeReport {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.done.load(Ordering::Relaxed) < MIN_PROBES
            && Instant::now() < deadline
            && !self.handle.is_finished()
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_else(|_| panic!("the prober thread panicked"))
    }
}
