//! A scene: a blocker guarding a fresh cgroup, with a namespace holding the test addresses,
//! and the checks made from inside it.
use std::net::SocketAddr;

use super::{Blocker, Netns, Outcome, Place, Probe, TempCgroup, outcome, probe, temp_cgroup};

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
