//! A scene: a blocker guarding a fresh cgroup, with a namespace holding the test addresses,
//! and the checks made from inside it.
use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use super::{
    Blocker, Netns, Outcome, Place, Probe, Setup, TempCgroup, outcome, probe, probe_with,
    send_connected_with_cmsg, temp_cgroup,
};

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
        let path = cgroup.path();
        let path =
            path.to_str().unwrap_or_else(|| panic!("non-UTF-8 cgroup path {}", path.display()));
        let mut all = vec!["--cgroup", path];
        all.extend_from_slice(args);
        let blocker = Blocker::start(&all);
        Self { blocker, netns, cgroup }
    }

    /// The outcome of `probe` to `dst` (`192.0.2.1:80`, `[2001:db8::1]:80`) from the cgroup,
    /// inside the namespace.
    #[must_use]
    pub fn check(&self, probe: Probe, dst: &str) -> Outcome {
        Self::check_at(self.place(false), probe, dst)
    }

    /// Like [`Scene::check`] from an IPv6 socket to the IPv4-mapped form of an IPv4 `dst`.
    #[must_use]
    pub fn check_mapped(&self, probe: Probe, dst: &str) -> Outcome {
        Self::check_at(self.place(true), probe, dst)
    }

    /// Like [`Scene::check`] from a place of the caller's choosing.
    #[must_use]
    pub fn check_at(place: Place<'_>, probe_kind: Probe, dst: &str) -> Outcome {
        let addr: SocketAddr = dst.parse().unwrap_or_else(|e| panic!("test address {dst}: {e}"));
        outcome(probe(place, probe_kind, addr))
    }

    /// Like [`Scene::check`] from a socket set up as `setup` says (bound first, a source in
    /// ancillary data, as user nobody).
    #[must_use]
    pub fn check_with(&self, probe_kind: Probe, setup: Setup, dst: &str) -> Outcome {
        let addr: SocketAddr = dst.parse().unwrap_or_else(|e| panic!("test address {dst}: {e}"));
        outcome(probe_with(self.place(false), probe_kind, setup, addr))
    }

    /// Asserts each (probe, destination, outcome).
    #[track_caller]
    pub fn expect(&self, cases: &[(Probe, &str, Outcome)]) {
        for &(p, dst, want) in cases {
            assert_eq!(self.check(p, dst), want, "{p:?} to {dst}");
        }
    }

    /// The cgroup, inside the namespace.
    fn place(&self, mapped: bool) -> Place<'_> {
        Place { cgroup: Some(self.cgroup.path()), netns: Some(self.netns.path()), mapped }
    }
}

/// Asserts that a connected UDP socket's send with ancillary data and no address (see
/// [`send_connected_with_cmsg`]) is judged by its peer, a listener on loopback address `ip`:
/// allowed and delivered in default-deny mode with an allow rule for the peer; EPERM in
/// default-deny mode without one, and in default-allow mode with a block rule for it. Each
/// blocker starts after the socket connected, so only the send is judged.
pub fn expect_cmsg_sends_judged_by_peer(ip: &str) {
    let peer = UdpSocket::bind((ip, 0)).unwrap_or_else(|e| panic!("bind UDP on {ip}: {e}"));
    peer.set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("timeout on the UDP listener: {e}"));
    let dst = peer.local_addr().unwrap_or_else(|e| panic!("address of the UDP listener: {e}"));
    let rule = format!("udp://{dst}");
    let cgroup = temp_cgroup();
    let path = cgroup.path();
    let cg = path.to_str().unwrap_or_else(|| panic!("non-UTF-8 cgroup path {}", path.display()));
    let send = |args: &[&str]| {
        let all = [&["--cgroup", cg], args].concat();
        let (_blocker, sent) = send_connected_with_cmsg(path, dst, || Blocker::start(&all));
        sent
    };
    assert_eq!(send(&["--default", "deny", "--allow", &rule]), Ok(()), "allowed peer {dst}");
    let mut got = [0u8; 4];
    let n = peer.recv(&mut got).unwrap_or_else(|e| panic!("datagram to {dst}: {e}"));
    assert_eq!(&got[..n], b"x", "the datagram that reached {dst}");
    assert_eq!(send(&["--default", "deny"]), Err(libc::EPERM), "peer {dst} without a rule");
    assert_eq!(send(&["--block", &rule]), Err(libc::EPERM), "blocked peer {dst}");
}
