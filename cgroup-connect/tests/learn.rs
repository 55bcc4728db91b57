//! `blocker learn` end to end on the real kernel: a workload of several clients (TCP and UDP,
//! IPv4 and IPv6, several addresses and ports) reaches servers in a test namespace under
//! `blocker run --audit` (observe mode); the policy learnt from it, enforced (default deny),
//! lets the same workload through and blocks what it never used.
mod common;

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    os::unix::fs::PermissionsExt as _,
    path::Path,
    time::Duration,
};

use common::{
    Blocker, Netns, Outcome, Place, Probe, Scene, TempCgroup, TempDir, blocker_ok, blocker_output,
    connect_each, flood, outcome, probe,
};

/// The namespace's addresses: the workload's servers listen on some of them (IPv6 ones each
/// on its own, as a socket binds only to an address the interface has).
const ADDRS: [&str; 4] = ["192.0.2.0/24", "2001:db8::1/128", "2001:db8::2/128", "2001:db8::/64"];

/// Servers in the namespace: TCP listeners (connects succeed without `accept()`) and UDP
/// sockets, kept open while the test runs.
struct Servers {
    tcp: Vec<TcpListener>,
    udp: Vec<UdpSocket>,
}

impl Servers {
    /// Listens on each TCP and UDP address (port 0: the kernel picks one).
    fn start(netns: &Netns, tcp: &[&str], udp: &[&str]) -> Self {
        netns.run_in(|| Self {
            tcp: tcp
                .iter()
                .map(|a| TcpListener::bind(sock(a)).unwrap_or_else(|e| panic!("listen {a}: {e}")))
                .collect(),
            udp: udp
                .iter()
                .map(|a| UdpSocket::bind(sock(a)).unwrap_or_else(|e| panic!("bind UDP {a}: {e}")))
                .collect(),
        })
    }

    /// The workload: (probe, destination) for each server, TCP connects and UDP sends and
    /// connects.
    fn workload(&self) -> Vec<(Probe, SocketAddr)> {
        let addr = |s: std::io::Result<SocketAddr>| s.unwrap_or_else(|e| panic!("address: {e}"));
        let mut out: Vec<(Probe, SocketAddr)> =
            self.tcp.iter().map(|l| (Probe::TcpConnect, addr(l.local_addr()))).collect();
        for (i, u) in self.udp.iter().enumerate() {
            let kind = if i % 2 == 0 { Probe::UdpSendto } else { Probe::UdpConnect };
            out.push((kind, addr(u.local_addr())));
        }
        out
    }
}

fn sock(a: &str) -> SocketAddr {
    a.parse().unwrap_or_else(|e| panic!("test address {a}: {e}"))
}

/// Runs each client of `workload` (three rounds, so counts add up) from the cgroup, inside
/// the namespace, and returns the errors: none when it all succeeded.
fn run_workload(cgroup: &Path, netns: &Netns, workload: &[(Probe, SocketAddr)]) -> Vec<String> {
    let place = Place { cgroup: Some(cgroup), netns: Some(netns.path()), mapped: false };
    let mut failed = vec![];
    for _ in 0..3 {
        for &(p, dst) in workload {
            if let Err(errno) = probe(place, p, dst) {
                failed.push(format!("{p:?} to {dst}: errno {errno}"));
            }
        }
    }
    failed
}

/// One call's outcome from the cgroup inside the namespace.
fn check(cgroup: &TempCgroup, netns: &Netns, p: Probe, dst: &str) -> Outcome {
    outcome(probe(
        Place { cgroup: Some(cgroup.path()), netns: Some(netns.path()), mapped: false },
        p,
        sock(dst),
    ))
}

/// `blocker learn NAME ARGS -o DIR/learned.toml`: the policy's path and text.
fn learn(name: &str, dir: &TempDir, args: &[&str]) -> (std::path::PathBuf, String) {
    let path = dir.path().join("learned.toml");
    let out = path.to_str().expect("UTF-8 temporary path");
    let mut all = vec!["learn", name, "-o", out];
    all.extend_from_slice(args);
    let stdout = blocker_ok(&all);
    assert!(stdout.is_empty(), "learn -o writes nothing to stdout: {stdout}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {out}: {e}"));
    (path, text)
}

/// Enforces `policy` on the cgroup, alone.
fn enforce(cgroup: &TempCgroup, policy: &Path) -> Blocker {
    let cg = cgroup.path().to_str().expect("UTF-8 cgroup path");
    Blocker::start(&["--cgroup", cg, "--policy", policy.to_str().expect("UTF-8 policy path")])
}

/// Observe, learn, enforce: the workload succeeds under the learnt policy, and destinations
/// it never used (another address, another port, another protocol) fail with EPERM.
#[test]
fn a_learnt_policy_lets_the_workload_through_and_nothing_else() {
    require_privileges!();
    let scene = Scene::new(&ADDRS, &["--audit", "--default", "deny"]);
    let servers = Servers::start(
        &scene.netns,
        &["192.0.2.1:0", "192.0.2.1:0", "192.0.2.2:0", "[2001:db8::1]:0"],
        &["192.0.2.3:0", "192.0.2.3:0", "[2001:db8::2]:0", "[2001:db8::2]:0"],
    );
    let workload = servers.workload();
    let failed = run_workload(scene.cgroup.path(), &scene.netns, &workload);
    assert!(failed.is_empty(), "in observe mode, nothing is blocked: {failed:?}");
    let dir = TempDir::new("learn");
    let (policy, text) = learn(&scene.blocker.name, &dir, &[]);
    let mode = std::fs::metadata(&policy).expect("learned file").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the learned file is private");
    assert!(text.contains("default = \"deny\""), "{text}");
    assert_eq!(text.matches("[[rule]]").count(), workload.len(), "one rule per server: {text}");
    // Three rounds: each rule saw three decisions, all would-be blocks (default deny).
    assert_eq!(
        text.matches("# 3 decisions (3 would have been blocked), first seen ").count(),
        workload.len(),
        "{text}"
    );
    let Scene { blocker, netns, cgroup } = scene;
    drop(blocker);
    let _enforced = enforce(&cgroup, &policy);
    let failed = run_workload(cgroup.path(), &netns, &workload);
    assert!(failed.is_empty(), "the learnt policy lets the workload through: {failed:?}\n{text}");
    let tcp = workload[0].1;
    let udp = workload.iter().find(|(p, _)| matches!(p, Probe::UdpSendto)).expect("a UDP send").1;
    let other_port = SocketAddr::new(tcp.ip(), tcp.port().wrapping_add(1).max(1));
    for (p, dst) in [
        (Probe::TcpConnect, "192.0.2.9:80".to_owned()),
        (Probe::TcpConnect, other_port.to_string()),
        (Probe::UdpSendto, tcp.to_string()),
        (Probe::TcpConnect, udp.to_string()),
        (Probe::TcpConnect, "[2001:db8::9]:80".to_owned()),
    ] {
        assert_eq!(check(&cgroup, &netns, p, &dst), Outcome::Blocked, "{p:?} to {dst}: never used");
    }
}

/// `--aggregate /24`: three or more hosts of one /24 on one port and protocol become the
/// prefix (other hosts of it on that port pass); fewer stay single addresses.
#[test]
fn aggregate_writes_a_prefix_for_many_hosts_of_it() {
    require_privileges!();
    let scene = Scene::new(&ADDRS, &["--audit", "--default", "deny"]);
    let s = &scene;
    for dst in ["192.0.2.1:7", "192.0.2.2:7", "192.0.2.3:7", "192.0.2.10:8", "192.0.2.11:8"] {
        assert_eq!(check(&s.cgroup, &s.netns, Probe::TcpConnect, dst), Outcome::Allowed, "{dst}");
    }
    let dir = TempDir::new("learn-aggregate");
    let (policy, text) = learn(&s.blocker.name, &dir, &["--aggregate", "/24"]);
    assert!(text.contains("dst = \"192.0.2.0/24\"\nports = 7\nproto = \"tcp\""), "{text}");
    assert!(text.contains("# addresses seen: 192.0.2.1 192.0.2.2 192.0.2.3"), "{text}");
    assert!(text.contains("dst = \"192.0.2.10\"\nports = 8"), "{text}");
    let Scene { blocker, netns, cgroup } = scene;
    drop(blocker);
    let _enforced = enforce(&cgroup, &policy);
    for (dst, want) in [
        ("192.0.2.77:7", Outcome::Allowed),
        ("192.0.2.10:8", Outcome::Allowed),
        ("192.0.2.11:8", Outcome::Allowed),
        ("192.0.2.12:8", Outcome::Blocked),
        ("192.0.2.77:9", Outcome::Blocked),
    ] {
        assert_eq!(check(&cgroup, &netns, Probe::TcpConnect, dst), want, "{dst}\n{text}");
    }
}

/// `--since`: what was last seen before it is left out.
#[test]
fn since_leaves_out_older_destinations() {
    require_privileges!();
    let scene = Scene::new(&ADDRS, &["--audit", "--default", "deny"]);
    let s = &scene;
    assert_eq!(check(&s.cgroup, &s.netns, Probe::TcpConnect, "192.0.2.1:7"), Outcome::Allowed);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(check(&s.cgroup, &s.netns, Probe::UdpSendto, "192.0.2.2:53"), Outcome::Allowed);
    let dir = TempDir::new("learn-since");
    let (policy, text) = learn(&s.blocker.name, &dir, &["--since", "2s"]);
    assert_eq!(text.matches("[[rule]]").count(), 1, "{text}");
    assert!(text.contains("dst = \"192.0.2.2\"\nports = 53\nproto = \"udp\""), "{text}");
    let Scene { blocker, netns, cgroup } = scene;
    drop(blocker);
    let _enforced = enforce(&cgroup, &policy);
    assert_eq!(check(&cgroup, &netns, Probe::UdpSendto, "192.0.2.2:53"), Outcome::Allowed);
    assert_eq!(check(&cgroup, &netns, Probe::TcpConnect, "192.0.2.1:7"), Outcome::Blocked);
}

/// Counts are exact whether a destination stayed in a CPU's cache or went to the shared map:
/// more destinations than the caches hold, each reached twice, and one reached many times,
/// are each learnt with their exact number of decisions.
#[test]
fn counts_are_exact_across_the_cpu_caches_and_the_map() {
    require_privileges!();
    let scene = Scene::new(&[], &["--audit"]);
    // 1,500 loopback addresses where nothing listens (refused at once, allowed by the
    // blocker): three times what a CPU's cache holds.
    let many: Vec<SocketAddr> = (0..6u8)
        .flat_map(|a| (1..=250u8).map(move |b| SocketAddr::from(([127, 77, a, b], 9))))
        .collect();
    let hot = SocketAddr::from(([127, 78, 0, 1], 9));
    for _ in 0..2 {
        assert_eq!(connect_each(scene.cgroup.path(), &many), 0, "observe mode blocks nothing");
    }
    assert_eq!(flood(scene.cgroup.path(), hot, 2000), 0, "observe mode blocks nothing");
    let dir = TempDir::new("learn-counts");
    let (_, text) = learn(&scene.blocker.name, &dir, &[]);
    assert_eq!(text.matches("[[rule]]").count(), many.len() + 1, "{text}");
    assert_eq!(
        text.matches("# 2 decisions, first seen ").count(),
        many.len(),
        "each of the many destinations counted twice"
    );
    assert!(text.contains("# 2000 decisions, first seen "), "{text}");
    assert!(text.contains("0 evicted, 0 decisions not recorded"), "{text}");
}

/// An address that came from a hostname rule of the instance is written as that hostname.
#[test]
fn hostname_destinations_are_learnt_by_name() {
    require_privileges!();
    let scene = Scene::new(&[], &["--audit", "--default", "deny", "--allow", "tcp://localhost:7"]);
    let s = &scene;
    assert_eq!(check(&s.cgroup, &s.netns, Probe::TcpConnect, "127.0.0.1:7"), Outcome::Allowed);
    let dir = TempDir::new("learn-hostname");
    let (_, text) = learn(&s.blocker.name, &dir, &[]);
    assert!(text.contains("# 1 decision, first seen"), "an allowed decision: {text}");
    assert!(text.contains("dst = \"localhost\"\nports = 7\nproto = \"tcp\""), "{text}");
    assert!(text.contains("# addresses seen: 127.0.0.1"), "{text}");
}

/// Errors: no such instance, an instance not in observe mode, an output that is a symbolic
/// link: each exits 2 naming the problem, and writes nothing.
#[test]
fn learn_refuses_what_it_cannot_learn_from() {
    require_privileges!();
    let out = blocker_output(&["learn", "no-such-instance-learn"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no instance named \"no-such-instance-learn\""), "{err}");
    let enforcing = Scene::new(&[], &["--block", "192.0.2.1"]);
    let out = blocker_output(&["learn", &enforcing.blocker.name], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is not in observe mode"), "{err}");
    assert!(out.stdout.is_empty(), "nothing learnt");
    let observing = Scene::new(&[], &["--audit"]);
    let dir = TempDir::new("learn-symlink");
    let target = dir.path().join("target");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    let link = link.to_str().expect("UTF-8 path");
    let out = blocker_output(&["learn", &observing.blocker.name, "-o", link], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is a symbolic link"), "{err}");
    assert!(!target.exists(), "nothing written through the link");
}
