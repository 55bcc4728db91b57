//! `blocker explain` on the real kernel: for thousands of random destinations, ports and
//! protocols against a mixed policy (IPv4 and IPv6 prefixes of many lengths, port and protocol
//! rules, allows inside blocks, default deny and default allow), explain's verdict is what a
//! probe from the cgroup gets; the command line agrees with the library and keeps its exit
//! codes; a policy file is explained without an instance.
mod common;

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use cgroup_connect::{
    cli::explain::InstanceView,
    explain::{Explanation, Query},
};
use cgroup_connect_common::Proto;
use common::{
    Blocker, Netns, Outcome, Place, Probe, TempDir, blocker_output, in_child, outcome, probe,
    temp_cgroup,
};

/// Addresses the namespace holds: every probe goes to one of them.
const NET: &[&str] = &["10.0.0.0/8", "2001:db8::/32", "64:ff9b::/96"];

/// Rules every run has: nested allows and blocks, ports, protocols, both families.
const FIXED_BLOCK: &[&str] = &[
    "10.1.0.0/16",
    "10.1.2.3",
    "udp://10.2.0.0/16",
    "10.3.0.0/16:1000-2000",
    "[2001:db8::/32]:22",
    "[2001:db8:1:2::/64]",
    "udp://[2001:db8:2::/48]",
];
const FIXED_ALLOW: &[&str] = &[
    "10.0.0.0/8:1-100",
    "10.1.2.0/24",
    "tcp://10.1.0.0/16:443",
    "udp://10.2.3.0/24:53",
    "tcp://10.3.4.0/24:1500",
    "[2001:db8:1::/48]",
    "tcp://[2001:db8:1:2::5]:80-90",
];

/// Ports the rules name, and their edges.
const PORTS: &[u16] = &[1, 22, 23, 53, 54, 80, 90, 91, 100, 101, 443, 999, 1000, 1500, 2000, 2001];

/// A small deterministic generator (xorshift64*), seeded from the clock and printed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A number below `n`, as the type it fits.
    fn small<T: TryFrom<u64>>(&mut self, n: u64) -> T {
        T::try_from(self.below(n)).unwrap_or_else(|_| panic!("{n} fits"))
    }

    fn word(&mut self) -> u32 {
        self.small(1 << 32)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[usize::try_from(self.below(items.len() as u64)).unwrap()]
    }
}

/// A random rule under `10.0.0.0/8` or `2001:db8::/32`, with a port range and protocol sometimes.
fn random_rule(rng: &mut Rng) -> String {
    let (host, len) = if rng.below(3) == 0 {
        let len = 32 + rng.small::<u8>(97);
        let addr = Ipv6Addr::from(
            (0x2001_0db8u128 << 96) | (u128::from(rng.next()) << 64 | u128::from(rng.next())) >> 32,
        );
        let net = ipnet::Ipv6Net::new(addr, len).unwrap().trunc();
        (format!("[{net}]"), len)
    } else {
        let len = 8 + rng.small::<u8>(25);
        let addr = Ipv4Addr::from(0x0a00_0000 | (rng.word() & 0x00ff_ffff));
        let net = ipnet::Ipv4Net::new(addr, len).unwrap().trunc();
        (net.to_string(), len)
    };
    let _ = len;
    let proto = *rng.pick(&["", "", "tcp://", "udp://"]);
    let ports = if rng.below(3) == 0 {
        String::new()
    } else {
        let (a, b) = (*rng.pick(PORTS), *rng.pick(PORTS));
        if a == b { format!(":{a}") } else { format!(":{}-{}", a.min(b), a.max(b)) }
    };
    format!("{proto}{host}{ports}")
}

/// A random address inside `rule`'s prefix (or anywhere the namespace holds).
fn address_in(rng: &mut Rng, rule: Option<&str>) -> IpAddr {
    let net: ipnet::IpNet = match rule {
        Some(text) => {
            let host = text.trim_start_matches("tcp://").trim_start_matches("udp://");
            let host = match host.strip_prefix('[') {
                Some(rest) => rest.split(']').next().unwrap().to_owned(),
                None => host.split(':').next().unwrap().to_owned(),
            };
            host.parse().or_else(|_| host.parse::<IpAddr>().map(ipnet::IpNet::from)).unwrap()
        }
        None if rng.below(2) == 0 => "10.0.0.0/8".parse().unwrap(),
        None => "2001:db8::/32".parse().unwrap(),
    };
    match net {
        ipnet::IpNet::V4(n) => {
            let host_bits = 32 - u32::from(n.prefix_len());
            let mask = if host_bits == 32 { u32::MAX } else { (1u32 << host_bits) - 1 };
            IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | (rng.word() & mask)))
        }
        ipnet::IpNet::V6(n) => {
            let host_bits = 128 - u32::from(n.prefix_len());
            let mask = if host_bits == 128 { u128::MAX } else { (1u128 << host_bits) - 1 };
            let r = u128::from(rng.next()) << 64 | u128::from(rng.next());
            IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | (r & mask)))
        }
    }
}

/// One probe: where to, how, and the socket family it uses.
#[derive(Clone, Copy, Debug)]
struct Case {
    /// The address as the call names it (IPv4-mapped or NAT64 forms included).
    named: SocketAddr,
    udp: bool,
}

/// Probes `cases` from the cgroup inside the namespace, up to 31 per forked child: true for a
/// blocked call (EPERM). Another error than EPERM or ECONNREFUSED fails the test.
fn probe_all(cgroup: &std::path::Path, netns: &Netns, cases: &[Case]) -> Vec<bool> {
    let mut out = Vec::with_capacity(cases.len());
    for batch in cases.chunks(31) {
        let prepared: Vec<(socket2::SockAddr, i32, i32)> = batch
            .iter()
            .map(|c| {
                let family = if c.named.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
                let kind = if c.udp { libc::SOCK_DGRAM } else { libc::SOCK_STREAM };
                (socket2::SockAddr::from(c.named), family, kind)
            })
            .collect();
        let mask = in_child("explain probes", Some(cgroup), Some(netns.path()), || {
            let mut mask = 0u32;
            for (i, (addr, family, kind)) in prepared.iter().enumerate() {
                // SAFETY: raw syscalls on memory prepared before the fork.
                unsafe {
                    let s = libc::socket(*family, *kind, 0);
                    if s < 0 {
                        return None;
                    }
                    if libc::connect(s, addr.as_ptr().cast(), addr.len()) != 0 {
                        match *libc::__errno_location() {
                            libc::EPERM => mask |= 1 << i,
                            libc::ECONNREFUSED => {}
                            _ => mask |= 1 << 31,
                        }
                    }
                    libc::close(s);
                }
            }
            Some(mask)
        });
        if mask & 1 << 31 != 0 {
            // Probe one by one to name the case and its errno.
            for c in batch {
                let p = if c.udp { Probe::UdpConnect } else { Probe::TcpConnect };
                let place =
                    Place { cgroup: Some(cgroup), netns: Some(netns.path()), mapped: false };
                let _ = outcome(probe(place, p, c.named));
            }
            panic!("a probe of {batch:?} failed otherwise than with EPERM or ECONNREFUSED");
        }
        out.extend((0..batch.len()).map(|i| mask & 1 << i != 0));
    }
    out
}

/// The mixed policy's list files: the fixed rules and `n` random ones of each action.
fn lists(
    dir: &TempDir,
    rng: &mut Rng,
    n: usize,
) -> (Vec<String>, std::path::PathBuf, std::path::PathBuf) {
    let mut block: Vec<String> = FIXED_BLOCK.iter().map(|s| (*s).to_owned()).collect();
    let mut allow: Vec<String> = FIXED_ALLOW.iter().map(|s| (*s).to_owned()).collect();
    for _ in 0..n {
        block.push(random_rule(rng));
        allow.push(random_rule(rng));
    }
    let text = |rules: &[String]| {
        rules.iter().fold(String::from("# explain test\n"), |mut t, r| {
            let _ = writeln!(t, "{r}");
            t
        })
    };
    let b = dir.write("block.txt", &text(&block));
    let a = dir.write("allow.txt", &text(&allow));
    block.extend(allow);
    (block, b, a)
}

/// Random cases: mostly inside a rule's prefix, at ports the rules name, over TCP and UDP, as
/// IPv4, IPv6, IPv4-mapped and NAT64 destinations.
fn cases(rng: &mut Rng, rules: &[String], n: usize) -> Vec<Case> {
    (0..n)
        .map(|_| {
            let rule = (rng.below(5) != 0).then(|| rng.pick(rules).as_str());
            let addr = address_in(rng, rule);
            let port =
                if rng.below(4) == 0 { 1 + rng.small::<u16>(65535) } else { *rng.pick(PORTS) };
            let named = match addr {
                IpAddr::V4(v4) => match rng.below(4) {
                    0 => IpAddr::V6(v4.to_ipv6_mapped()),
                    1 => IpAddr::V6(Ipv6Addr::from(
                        0x0064_ff9b_u128 << 96 | u128::from(u32::from(v4)),
                    )),
                    _ => addr,
                },
                IpAddr::V6(_) => addr,
            };
            Case { named: SocketAddr::new(named, port), udp: rng.below(2) == 0 }
        })
        .collect()
}

fn query(c: &Case) -> Query {
    Query {
        addr: c.named.ip(),
        port: Some(c.named.port()),
        proto: if c.udp { Proto::Udp } else { Proto::Tcp },
    }
}

/// The verdict explain gives for every case equals what the probe gets, with default deny and
/// default allow (bounded: 1,500 cases each, within ten minutes; the kernel matrix's emulated
/// 6.1 takes about four).
#[test]
fn explain_agrees_with_the_kernel_on_random_destinations() {
    require_privileges!();
    let seed =
        std::env::var("EXPLAIN_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
            now.as_secs() << 20 ^ u64::from(now.subsec_nanos()) | 1
        });
    eprintln!("EXPLAIN_SEED={seed}");
    let mut rng = Rng(seed);
    let deadline = Instant::now() + Duration::from_mins(10);
    let netns = Netns::new(NET);
    for default in ["deny", "allow"] {
        let dir = TempDir::new("explain");
        let (rules, block, allow) = lists(&dir, &mut rng, 15);
        let cg = temp_cgroup();
        let b = Blocker::start(&[
            "--cgroup",
            cg.path().to_str().unwrap(),
            "--default",
            default,
            "--block-list",
            block.to_str().unwrap(),
            "--allow-list",
            allow.to_str().unwrap(),
        ]);
        let cases = cases(&mut rng, &rules, 1500);
        let blocked = probe_all(cg.path(), &netns, &cases);
        let view = InstanceView::open(&b.name).unwrap_or_else(|e| panic!("open {}: {e:#}", b.name));
        assert!(!view.audit());
        let mut wrong = Vec::new();
        let mut decided_by_rule = 0;
        for (c, &blocked) in cases.iter().zip(&blocked) {
            assert!(Instant::now() < deadline, "over ten minutes (seed {seed})");
            let e = view
                .explain(query(c))
                .unwrap_or_else(|e| panic!("explain {c:?} (seed {seed}): {e:#}"));
            decided_by_rule += usize::from(e.decided_by.is_some());
            if e.block != blocked {
                wrong.push(format!(
                    "{c:?}: explain says block={}, the probe got blocked={blocked}: {}",
                    e.block,
                    describe(&e)
                ));
            }
        }
        let n_blocked = blocked.iter().filter(|b| **b).count();
        assert!(
            (cases.len() / 10..cases.len() * 9 / 10).contains(&n_blocked),
            "both verdicts should be common: {n_blocked} of {} blocked",
            cases.len()
        );
        assert!(
            wrong.is_empty(),
            "default {default}, seed {seed}: {} of {} differ:\n{}",
            wrong.len(),
            cases.len(),
            wrong.join("\n")
        );
        assert!(
            decided_by_rule > cases.len() / 2,
            "most cases should hit a rule: {decided_by_rule}"
        );
        // The command line says what the library says.
        for c in cases.iter().take(10) {
            let e = view.explain(query(c)).unwrap();
            let proto = if c.udp { "udp" } else { "tcp" };
            let out = blocker_output(
                &["explain", &b.name, &c.named.to_string(), "--proto", proto, "--json"],
                None,
            );
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(json["verdict"], if e.block { "block" } else { "allow" }, "{json}");
            assert_eq!(
                json["decided_by"]["id"].as_u64(),
                e.decided_by.as_ref().map(|d| d.rule.id as u64),
                "{json}"
            );
        }
    }
}

fn describe(e: &Explanation) -> String {
    let by = e.decided_by.as_ref().map_or("the default".to_owned(), |d| {
        format!("#{} {} {}", d.rule.id, d.rule.action, d.rule.rule)
    });
    format!("judged {} port {} by {by}", e.judged, e.port)
}

/// The text names the deciding rule with its file and line and the others with their reason;
/// a hostname rule shows its address; the exit codes are the other verbs'.
#[test]
fn explain_names_sources_and_reasons_and_keeps_the_exit_codes() {
    require_privileges!();
    let dir = TempDir::new("explain-text");
    let list = dir.write("allow.txt", "# allowed\n127.0.0.0/8\ntcp://127.0.0.5:80\n");
    let cg = temp_cgroup();
    let b = Blocker::start(&[
        "--cgroup",
        cg.path().to_str().unwrap(),
        "--default",
        "deny",
        "--block",
        "127.0.0.5",
        "--block",
        "tcp://localhost:9",
        "--allow-list",
        list.to_str().unwrap(),
    ]);
    assert_eq!(
        outcome(common::connect_in(cg.path(), "127.0.0.5:80".parse().unwrap())),
        Outcome::Allowed
    );
    assert_eq!(
        outcome(common::connect_in(cg.path(), "127.0.0.5:81".parse().unwrap())),
        Outcome::Blocked
    );
    let out = blocker_output(&["explain", &b.name, "127.0.0.5:81"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("block tcp 127.0.0.5:81"), "{text}");
    assert!(lines[1].contains("decided by rule #1 block 127.0.0.5  (--block)"), "{text}");
    assert!(
        text.contains("allow 127.0.0.0/8  (")
            && text.contains("allow.txt:2): lost: rule #1's prefix is longer (/32 over /8)"),
        "{text}"
    );
    assert!(text.contains("allow.txt:3): not this port: it names port 80"), "{text}");
    let out = blocker_output(&["explain", &b.name, "127.0.0.1:9"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("block tcp 127.0.0.1:9"), "{text}");
    assert!(text.contains("block tcp://localhost:9  (--block, address 127.0.0.1)"), "{text}");
    assert!(
        text.contains("allow.txt:2): lost: rule #2's prefix is longer (/32 over /8)"),
        "{text}"
    );
    let code = |args: &[&str], uid| blocker_output(args, uid).status.code();
    assert_eq!(
        code(&["explain", "no-such-instance-here", "127.0.0.1"], None),
        code(&["list", "no-such-instance-here"], None)
    );
    assert_eq!(code(&["explain", "no-such-instance-here", "127.0.0.1"], None), Some(2));
    assert_eq!(code(&["explain", &b.name, "not-an-address"], None), Some(2));
    assert_eq!(code(&["explain", &b.name, "127.0.0.1"], Some(65534)), Some(3));
    // Without an instance and without root: a policy file before it is deployed.
    let policy = dir.write("p.toml", "default = \"deny\"\n\n[[rule]]\naction = \"allow\"\ndst = \"192.0.2.0/24\"\nports = 443\nproto = \"tcp\"\n");
    let p = policy.to_str().unwrap();
    for (path, mode) in [(dir.path(), 0o755), (policy.as_path(), 0o644)] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    let out = blocker_output(&["explain", "--policy", p, "192.0.2.7:443", "--json"], Some(65534));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((&json["verdict"], &json["instance"]), (&"allow".into(), &serde_json::Value::Null));
    assert!(json["decided_by"]["origin"].as_str().unwrap().ends_with("p.toml:5"), "{json}");
    let out =
        blocker_output(&["explain", "--policy", p, "192.0.2.7:443", "--proto", "udp"], Some(65534));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("block udp 192.0.2.7:443") && text.contains("by the default (deny)"),
        "{text}"
    );
    assert!(text.contains("not this protocol: it names tcp"), "{text}");
}

/// Audit mode shows in the verdict line and the JSON; a record that no longer says what the
/// tables say (edited behind the instance's back) makes explain say so and exit 1.
#[test]
fn explain_shows_audit_mode_and_refuses_a_record_that_disagrees() {
    require_privileges!();
    let cg = temp_cgroup();
    let b = Blocker::start(&[
        "--cgroup",
        cg.path().to_str().unwrap(),
        "--audit",
        "--block",
        "127.0.0.5",
    ]);
    let out = blocker_output(&["explain", &b.name, "127.0.0.5:80"], None);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("block tcp 127.0.0.5:80 (audit mode: reported, let through)"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = blocker_output(&["explain", &b.name, "127.0.0.5:80", "--json"], None);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((&json["verdict"], &json["audit"]), (&"block".into(), &true.into()), "{json}");

    let record = cgroup_connect::pins::InstancePaths::new(&b.name).unwrap().rules_file();
    let text = std::fs::read_to_string(&record).unwrap();
    assert!(text.contains("\nblock 127.0.0.5 "), "{text}");
    std::fs::write(&record, text.replace("\nblock 127.0.0.5 ", "\nallow 127.0.0.5 ")).unwrap();
    let out = blocker_output(&["explain", &b.name, "127.0.0.5:80"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty(), "no verdict when they disagree");
    assert!(
        err.contains("DISAGREE")
            && err.contains("the tables say block by rule #1, the record says allow by rule #1"),
        "{err}"
    );
}
