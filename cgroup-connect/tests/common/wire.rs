//! Two network namespaces joined by a veth pair, and a capture on the far side: a test proves
//! that no packet to a denied address left the near side, whatever the sender was told.
use std::{
    fs::File,
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{Netns, netns::ip};

/// The near end's interface (in [`Wire::near`]) and the far end's (in [`Wire::far`]).
pub const NEAR_IF: &str = "cgc-near";
pub const FAR_IF: &str = "cgc-far";

/// A near namespace (where the probes run) and a far one (the peers), one veth between them.
/// Both are deleted on drop (deleting a namespace deletes its end of the pair).
pub struct Wire {
    pub near: Netns,
    pub far: Netns,
}

impl Wire {
    /// Makes the pair with `near_addrs` and `far_addrs` (CIDR) on the two ends, without
    /// duplicate address detection (IPv6 addresses are usable at once).
    #[must_use]
    pub fn new(near_addrs: &[&str], far_addrs: &[&str]) -> Self {
        let (near, far) = (Netns::new(&[]), Netns::new(&[]));
        ip(&["-n", near.name(), "link", "add", NEAR_IF, "type", "veth", "peer", "name", FAR_IF]);
        ip(&["-n", near.name(), "link", "set", FAR_IF, "netns", far.name()]);
        for (ns, dev, addrs) in [(&near, NEAR_IF, near_addrs), (&far, FAR_IF, far_addrs)] {
            for addr in addrs {
                let mut args = vec!["-n", ns.name(), "addr", "add", addr, "dev", dev];
                if addr.contains(':') {
                    args.push("nodad");
                }
                ip(&args);
            }
            ip(&["-n", ns.name(), "link", "set", dev, "up"]);
        }
        Self { near, far }
    }
}

/// Writes `value` to the sysctl file `key` (under /proc/sys) as seen from inside `netns`:
/// from a thread that enters it, so no `sysctl` program is needed.
pub fn sysctl_in(netns: &Netns, key: &str, value: &str) {
    let ns = File::open(netns.path())
        .unwrap_or_else(|e| panic!("open netns {}: {e}", netns.path().display()));
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let value = value.to_owned();
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only (network namespaces are per thread).
        let entered = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
        std::fs::write(&path, &value).unwrap_or_else(|e| panic!("write {path}: {e}"));
    })
    .join()
    .unwrap_or_else(|_| panic!("setting {key} in {} failed", netns.name()));
}

/// Packets seen on the far end of a [`Wire`], from [`Capture::start`] to [`Capture::finish`].
pub struct Capture {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<Vec<u8>>>,
}

impl Capture {
    /// Starts capturing every packet on [`FAR_IF`] (network layer up); returns once the socket
    /// is bound. Bounded: 60 s and 10,000 packets at most.
    #[must_use]
    pub fn start(wire: &Wire) -> Self {
        let ns = File::open(wire.far.path())
            .unwrap_or_else(|e| panic!("open netns {}: {e}", wire.far.path().display()));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let (ready_tx, ready_rx) = mpsc::channel();
        let handle = std::thread::spawn(move || {
            // SAFETY: setns on this thread only (network namespaces are per thread).
            let entered = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
            let socket = packet_socket(FAR_IF);
            let _ = ready_tx.send(());
            let mut packets = Vec::new();
            let deadline = Instant::now() + Duration::from_mins(1);
            let mut buf = vec![0u8; 65_536];
            while !flag.load(Ordering::Relaxed)
                && Instant::now() < deadline
                && packets.len() < 10_000
            {
                // SAFETY: reads at most buf.len() bytes into buf.
                let n = unsafe {
                    libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                };
                if let Ok(n) = usize::try_from(n) {
                    packets.push(buf[..n].to_vec());
                }
            }
            packets
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("the capture did not start: {e}"));
        Self { stop, handle }
    }

    /// Waits `settle` for packets still in flight, stops, and returns what was seen.
    #[must_use]
    pub fn finish(self, settle: Duration) -> Vec<Vec<u8>> {
        std::thread::sleep(settle);
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_else(|_| panic!("the capture thread panicked"))
    }
}

/// An `AF_PACKET` datagram socket bound to `ifname` in this thread's namespace, with a 50 ms
/// receive timeout.
fn packet_socket(ifname: &str) -> OwnedFd {
    let all = u16::try_from(libc::ETH_P_ALL).expect("ETH_P_ALL fits u16").to_be();
    // SAFETY: plain socket creation; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(all)) };
    assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
    // SAFETY: a new fd nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(ifname).expect("no NUL");
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(index, 0, "no interface {ifname}: {}", std::io::Error::last_os_error());
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid start.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = u16::try_from(libc::AF_PACKET).expect("fits");
    sll.sll_protocol = all;
    sll.sll_ifindex = i32::try_from(index).expect("an interface index fits i32");
    let len = u32::try_from(size_of::<libc::sockaddr_ll>()).expect("fits");
    // SAFETY: binds with a valid sockaddr_ll of that length.
    let bound = unsafe { libc::bind(fd, (&raw const sll).cast(), len) };
    assert_eq!(bound, 0, "bind to {ifname}: {}", std::io::Error::last_os_error());
    let timeout = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
    let tlen = u32::try_from(size_of::<libc::timeval>()).expect("fits");
    // SAFETY: a valid timeval of that length.
    let set = unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&raw const timeout).cast(), tlen)
    };
    assert_eq!(set, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    socket
}

/// The packets (IPv4 or IPv6, from the network header) whose destination field is `addr`.
#[must_use]
pub fn sent_to(packets: &[Vec<u8>], addr: IpAddr) -> usize {
    packets
        .iter()
        .filter(|p| match (p.first().map(|b| b >> 4), addr) {
            (Some(4), IpAddr::V4(a)) => p.get(16..20) == Some(&a.octets()[..]),
            (Some(6), IpAddr::V6(a)) => p.get(24..40) == Some(&a.octets()[..]),
            _ => false,
        })
        .count()
}
