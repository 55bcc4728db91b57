//! Probes: connects and sends from a child in a cgroup (see [`super::in_child`]), their
//! outcome as the firewall sees it, a flood of connects, and a thread that keeps probing while a
//! test changes the instance.
use std::{
    fs::File,
    io::Write as _,
    net::{IpAddr, SocketAddr, TcpListener},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
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
    probe_with(place, probe, Setup::default(), dst)
}

/// How a [`probe_with`] child sets its socket up before the call.
#[derive(Debug, Default, Clone, Copy)]
pub struct Setup {
    /// Bind the socket to this address (port 0) first.
    pub bind: Option<IpAddr>,
    /// For [`Probe::UdpSendto`]: send with `IP_PKTINFO` (`IPV6_PKTINFO`) naming this source.
    pub source: Option<IpAddr>,
    /// Drop to user and group nobody (65534) with no other groups after joining the cgroup and
    /// namespace, as `setpriv --reuid 65534 --regid 65534 --clear-groups` does.
    pub nobody: bool,
}

/// Like [`probe`], from a socket set up as `setup` says. An IPv6 `bind` or `dst` makes an
/// `AF_INET6` socket.
pub fn probe_with(
    place: Place<'_>,
    probe: Probe,
    setup: Setup,
    dst: SocketAddr,
) -> Result<(), i32> {
    let dst = match (dst, place.mapped) {
        (SocketAddr::V4(v4), true) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        (d, _) => d,
    };
    let addr = socket2::SockAddr::from(dst);
    let bind = setup.bind.map(|ip| socket2::SockAddr::from(SocketAddr::new(ip, 0)));
    let v6 = dst.is_ipv6() || setup.bind.is_some_and(|ip| ip.is_ipv6());
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    let (kind, proto) = match probe {
        Probe::TcpConnect | Probe::TcpFastOpen => (libc::SOCK_STREAM, libc::IPPROTO_TCP),
        Probe::UdpConnect | Probe::UdpSendto => (libc::SOCK_DGRAM, libc::IPPROTO_UDP),
    };
    let what = format!("probe {probe:?} to {dst} with {setup:?}");
    let errno = in_child(&what, place.cgroup, place.netns, || {
        // SAFETY: raw syscalls on memory prepared before the fork.
        unsafe {
            if setup.nobody && !drop_to_nobody() {
                return None;
            }
            let s = libc::socket(family, kind, proto);
            if s < 0
                || bind.as_ref().is_some_and(|b| libc::bind(s, b.as_ptr().cast(), b.len()) != 0)
            {
                return None;
            }
            let r = match probe {
                Probe::TcpConnect | Probe::UdpConnect => {
                    libc::connect(s, addr.as_ptr().cast(), addr.len())
                }
                Probe::UdpSendto if setup.source.is_some() => {
                    let n = send_from(s, &addr, setup.source?);
                    if n == 1 { 0 } else { -1 }
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

/// Becomes user and group nobody, with no supplementary groups; false if any step failed.
///
/// # Safety
/// Only raw syscalls: safe to call in a forked child.
unsafe fn drop_to_nobody() -> bool {
    const NOBODY: u32 = 65534;
    // SAFETY: the caller's contract: raw syscalls without memory.
    unsafe {
        libc::setgroups(0, std::ptr::null()) == 0
            && libc::setresgid(NOBODY, NOBODY, NOBODY) == 0
            && libc::setresuid(NOBODY, NOBODY, NOBODY) == 0
    }
}

/// `sendmsg` of one byte on socket `s` to `addr` with `IP_PKTINFO` (IPv4) or `IPV6_PKTINFO`
/// (IPv6) naming `source`; what `sendmsg` returned.
///
/// # Safety
/// Only raw syscalls on the stack and on `addr`: safe to call in a forked child.
unsafe fn send_from(s: i32, addr: &socket2::SockAddr, source: IpAddr) -> isize {
    let mut control = [0u64; 8]; // aligned for cmsghdr; CMSG_SPACE(20) is 40 bytes
    let mut iov = libc::iovec { iov_base: b"x".as_ptr().cast_mut().cast(), iov_len: 1 };
    // SAFETY: the caller's contract; the cmsg is written inside `control`, which CMSG_SPACE
    // of either pktinfo fits.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = addr.as_ptr().cast_mut().cast();
        msg.msg_namelen = addr.len();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        let (level, kind, len) = match source {
            IpAddr::V4(_) => (libc::IPPROTO_IP, libc::IP_PKTINFO, size_of::<libc::in_pktinfo>()),
            IpAddr::V6(_) => {
                (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, size_of::<libc::in6_pktinfo>())
            }
        };
        let len = u32::try_from(len).unwrap_or(0);
        msg.msg_controllen = libc::CMSG_SPACE(len) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = kind;
        (*cmsg).cmsg_len = libc::CMSG_LEN(len) as usize;
        let data = libc::CMSG_DATA(cmsg);
        match source {
            IpAddr::V4(ip) => data.cast::<libc::in_pktinfo>().write_unaligned(libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr { s_addr: u32::from(ip).to_be() },
                ipi_addr: libc::in_addr { s_addr: 0 },
            }),
            IpAddr::V6(ip) => data.cast::<libc::in6_pktinfo>().write_unaligned(libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr { s6_addr: ip.octets() },
                ipi6_ifindex: 0,
            }),
        }
        libc::sendmsg(s, &raw const msg, 0)
    }
}

/// A TCP connect from a child in `cgroup`.
pub fn connect_in(cgroup: &Path, dst: SocketAddr) -> Result<(), i32> {
    probe(Place { cgroup: Some(cgroup), ..Place::default() }, Probe::TcpConnect, dst)
}

/// Makes `count` TCP connects to `dst` from a child in `cgroup`, as fast as it can; returns
/// how many failed with EPERM.
#[must_use]
pub fn flood(cgroup: &Path, dst: SocketAddr, count: u32) -> u32 {
    connect_each(cgroup, &vec![dst; count as usize])
}

/// Makes one TCP connect to each of `dsts` from a child in `cgroup`, as fast as it can;
/// returns how many failed with EPERM.
#[must_use]
pub fn connect_each(cgroup: &Path, dsts: &[SocketAddr]) -> u32 {
    let addrs: Vec<socket2::SockAddr> = dsts.iter().map(|&d| socket2::SockAddr::from(d)).collect();
    let what = format!(
        "{} connects to {} and on",
        dsts.len(),
        dsts.first().map_or_else(String::new, ToString::to_string)
    );
    in_child(&what, Some(cgroup), None, || {
        let mut eperm: u32 = 0;
        for addr in &addrs {
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

/// A connected UDP socket's send with ancillary data (`IP_TOS` on IPv4, `IPV6_TCLASS` on IPv6)
/// and no address, the case where the sendmsg hook sees no destination. A child in `cgroup`
/// connects to `dst`, then waits while `between` runs in the test (starting a blocker there
/// judges a peer it never saw connect), then sends one byte. Returns what `between` returned
/// and Ok(()) or Err(errno) of the send; panics if the connect fails.
pub fn send_connected_with_cmsg<T>(
    cgroup: &Path,
    dst: SocketAddr,
    between: impl FnOnce() -> T,
) -> (T, Result<(), i32>) {
    let addr = socket2::SockAddr::from(dst);
    let (family, level, kind) = if dst.is_ipv4() {
        (libc::AF_INET, libc::IPPROTO_IP, libc::IP_TOS)
    } else {
        (libc::AF_INET6, libc::IPPROTO_IPV6, libc::IPV6_TCLASS)
    };
    let (ready_r, ready_w) = pipe();
    let (go_r, mut go_w) = pipe();
    let (ready_w_fd, go_r_fd) = (ready_w.as_raw_fd(), go_r.as_raw_fd());
    std::thread::scope(|scope| {
        let child = scope.spawn(|| {
            in_child(&format!("connected send with a cmsg to {dst}"), Some(cgroup), None, || {
                // SAFETY: raw syscalls on the stack and on memory prepared before the fork.
                unsafe { connected_send(family, &addr, (level, kind), ready_w_fd, go_r_fd) }
            })
        });
        if !wait_readable(&ready_r) {
            drop(go_w);
            let _ = child.join();
            panic!("the child did not connect to {dst}");
        }
        let between = between();
        let _ = go_w.write(b"g");
        drop(go_w);
        let errno = child.join().unwrap_or_else(|_| panic!("the sending child's thread panicked"));
        (between, if errno == 0 { Ok(()) } else { Err(errno.cast_signed()) })
    })
}

/// The child's part of [`send_connected_with_cmsg`]: connect, say so on `ready`, wait for a
/// byte on `go`, send with one int-sized cmsg of `(level, kind)`; the errno or 0. None when the
/// socket, the connect or the wait failed.
///
/// # Safety
/// Only raw syscalls: safe to call in a forked child.
unsafe fn connected_send(
    family: i32,
    addr: &socket2::SockAddr,
    (level, kind): (i32, i32),
    ready: i32,
    go: i32,
) -> Option<u32> {
    // SAFETY: the caller's contract: raw syscalls on the stack and on `addr`.
    unsafe {
        let s = libc::socket(family, libc::SOCK_DGRAM, libc::IPPROTO_UDP);
        if s < 0 || libc::connect(s, addr.as_ptr().cast(), addr.len()) != 0 {
            return None;
        }
        libc::write(ready, b"r".as_ptr().cast(), 1);
        let mut poll = libc::pollfd { fd: go, events: libc::POLLIN, revents: 0 };
        let mut byte = 0u8;
        if libc::poll(&raw mut poll, 1, 60_000) != 1
            || libc::read(go, (&raw mut byte).cast(), 1) != 1
        {
            return None;
        }
        let value: libc::c_int = 0x10;
        let value_len = u32::try_from(size_of::<libc::c_int>()).ok()?;
        let mut control = [0u64; 4]; // aligned for cmsghdr; CMSG_SPACE(4) is 24 bytes
        let mut iov = libc::iovec { iov_base: b"x".as_ptr().cast_mut().cast(), iov_len: 1 };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(value_len) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = kind;
        (*cmsg).cmsg_len = libc::CMSG_LEN(value_len) as usize;
        libc::CMSG_DATA(cmsg).cast::<libc::c_int>().write_unaligned(value);
        let sent = libc::sendmsg(s, &raw const msg, 0);
        Some(if sent == 1 { 0 } else { (*libc::__errno_location()).cast_unsigned() })
    }
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> (OwnedFd, File) {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills two fds.
    let made = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(made, 0, "pipe: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 made these two fds, and nothing else owns them.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

/// Whether `fd` has a byte to read within 60 s (false: it closed or the time passed).
fn wait_readable(fd: &OwnedFd) -> bool {
    let mut poll = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let mut byte = 0u8;
    // SAFETY: one pollfd, then at most one byte into `byte`.
    unsafe {
        libc::poll(&raw mut poll, 1, 60_000) == 1
            && libc::read(fd.as_raw_fd(), (&raw mut byte).cast(), 1) == 1
    }
}
