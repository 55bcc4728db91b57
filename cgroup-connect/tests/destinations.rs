//! Destinations judged by where the call goes, on the real kernel: `0.0.0.0` and `::` reach
//! this host (its loopback, or the address the socket is bound to or sends from), and NAT64
//! addresses reach the IPv4 address inside them. Each attack runs as user nobody: none needs a
//! privilege.
mod common;

use common::{
    Blocker, Netns,
    Outcome::{self, Allowed, Blocked},
    Place,
    Probe::{self, TcpConnect, TcpFastOpen, UdpConnect, UdpSendto},
    Scene, Setup, TempDir, assert_nothing_attached, blocker_ok, blocker_output, instance_name,
    outcome, probe_with, temp_cgroup,
};

/// Unprivileged, from a socket bound to `bind` first when given.
fn nobody(bind: Option<&str>) -> Setup {
    let bind = bind.map(|b| b.parse().unwrap_or_else(|e| panic!("test address {b}: {e}")));
    Setup { bind, nobody: true, ..Setup::default() }
}

/// Asserts each (probe, setup, destination, outcome).
#[track_caller]
fn expect(s: &Scene, cases: &[(Probe, Setup, &str, Outcome)]) {
    for &(p, setup, dst, want) in cases {
        assert_eq!(s.check_with(p, setup, dst), want, "{p:?} to {dst} with {setup:?}");
    }
}

/// Asserts each (destination, outcome) for each probe, as user nobody from an unbound socket.
#[track_caller]
fn expect_unbound(s: &Scene, probes: &[Probe], cases: &[(&str, Outcome)]) {
    for &p in probes {
        for &(dst, want) in cases {
            assert_eq!(s.check_with(p, nobody(None), dst), want, "{p:?} to {dst}");
        }
    }
}

/// `connect()` or `sendto()` to 0.0.0.0 goes to 127.0.0.1: blocking 127.0.0.0/8 blocks it, on
/// IPv4 sockets and on IPv6 ones through `::ffff:0.0.0.0`.
#[test]
fn unspecified_ipv4_is_judged_as_loopback() {
    require_privileges!();
    let s = Scene::new(&["192.0.2.0/24"], &["--block", "127.0.0.0/8"]);
    expect_unbound(
        &s,
        &[TcpConnect, UdpConnect, UdpSendto, TcpFastOpen],
        &[("0.0.0.0:9", Blocked), ("[::ffff:0.0.0.0]:9", Blocked), ("192.0.2.1:9", Allowed)],
    );
    let open = Scene::new(&["192.0.2.0/24"], &["--block", "192.0.2.9"]);
    expect(&open, &[(TcpConnect, nobody(None), "0.0.0.0:9", Allowed)]);
}

/// A socket bound to a local address reaches that address through 0.0.0.0; one bound to a
/// broadcast or multicast address reaches 127.0.0.1 (the kernel routes it as unbound).
#[test]
fn unspecified_ipv4_from_a_bound_socket_is_judged_by_its_address() {
    require_privileges!();
    let s = Scene::new(&["192.0.2.0/24"], &["--block", "192.0.2.1"]);
    for probe in [TcpConnect, UdpConnect, UdpSendto] {
        expect(
            &s,
            &[
                (probe, nobody(Some("192.0.2.1")), "0.0.0.0:9", Blocked),
                (probe, nobody(Some("::ffff:192.0.2.1")), "[::ffff:0.0.0.0]:9", Blocked),
                (probe, nobody(Some("192.0.2.2")), "0.0.0.0:9", Allowed),
            ],
        );
    }
    let lo = Scene::new(&["192.0.2.0/24"], &["--block", "127.0.0.0/8"]);
    for bind in ["255.255.255.255", "192.0.2.255", "224.0.0.1"] {
        expect(&lo, &[(TcpConnect, nobody(Some(bind)), "0.0.0.0:9", Blocked)]);
    }
}

/// A send to 0.0.0.0 whose `IP_PKTINFO` names a local source goes to that source.
#[test]
fn unspecified_ipv4_send_goes_to_its_pktinfo_source() {
    require_privileges!();
    let s = Scene::new(&["192.0.2.0/24"], &["--block", "192.0.2.1"]);
    let from = |src: &str| Setup { source: Some(src.parse().unwrap()), ..nobody(None) };
    expect(
        &s,
        &[
            (UdpSendto, from("192.0.2.1"), "0.0.0.0:9", Blocked),
            (UdpSendto, from("192.0.2.2"), "0.0.0.0:9", Allowed),
            (UdpSendto, from("192.0.2.2"), "192.0.2.1:9", Blocked),
        ],
    );
}

/// `connect()` or `sendto()` to `::` goes to `::1`; on a socket bound to an IPv4-mapped address
/// it goes to `::ffff:127.0.0.1`.
#[test]
fn unspecified_ipv6_is_judged_as_loopback() {
    require_privileges!();
    let s = Scene::new(&["2001:db8::/64"], &["--block", "::1"]);
    for probe in [TcpConnect, UdpConnect, UdpSendto, TcpFastOpen] {
        expect(
            &s,
            &[
                (probe, nobody(None), "[::]:9", Blocked),
                (probe, nobody(Some("2001:db8::")), "[::]:9", Blocked),
                (probe, nobody(None), "[2001:db8::1]:9", Allowed),
            ],
        );
    }
    let v4 = Scene::new(&["192.0.2.0/24"], &["--block", "127.0.0.1"]);
    for probe in [TcpConnect, UdpConnect, UdpSendto] {
        expect(&v4, &[(probe, nobody(Some("::ffff:192.0.2.1")), "[::]:9", Blocked)]);
    }
}

/// Addresses under the NAT64 well-known prefix are judged by the IPv4 rules; a rule under the
/// prefix names the IPv4 address inside it; a wider IPv6 rule does not apply to them, and
/// RFC 8215's local-use prefix is left to the IPv6 rules.
#[test]
fn nat64_well_known_prefix_is_judged_by_ipv4_rules() {
    require_privileges!();
    let net = &["64:ff9b::/96", "64:ff9b:1::/48", "198.51.100.0/24"];
    let s = Scene::new(
        net,
        &["--block", "192.0.2.0/24", "--block", "64:ff9b::198.51.100.1", "--block", "64:ff9b::/64"],
    );
    expect_unbound(
        &s,
        &[TcpConnect, UdpConnect, UdpSendto, TcpFastOpen],
        &[
            ("[64:ff9b::192.0.2.1]:9", Blocked),
            ("[64:ff9b::198.51.100.1]:9", Blocked),
            ("198.51.100.1:9", Blocked),
            ("[64:ff9b::203.0.113.1]:9", Allowed),
            ("[64:ff9b:1::192.0.2.1]:9", Allowed),
        ],
    );
}

/// `--nat64` adds a network-specific prefix: its addresses are judged by the IPv4 rules too.
#[test]
fn nat64_prefixes_given_are_judged_by_ipv4_rules() {
    require_privileges!();
    let net = &["2001:db8:64::/96", "2001:db8:65::/96"];
    let s = Scene::new(
        net,
        &["--default", "deny", "--allow", "192.0.2.0/24", "--nat64", "2001:db8:64::/96"],
    );
    expect_unbound(
        &s,
        &[TcpConnect, UdpConnect, UdpSendto],
        &[
            ("[2001:db8:64::192.0.2.1]:9", Allowed),
            ("[2001:db8:64::198.51.100.1]:9", Blocked),
            ("[2001:db8:65::192.0.2.1]:9", Blocked),
        ],
    );
}

/// NAT64 prefixes from `--nat64` and the policy file show in the attached line, `status` and
/// `list`; a reload swaps the file's, and a restart adopts a pinned instance with them.
#[test]
fn nat64_prefixes_follow_reloads_and_adoption() {
    require_privileges!();
    let netns = Netns::new(&["2001:db8:64::/96", "2001:db8:65::/96", "2001:db8:66::/96"]);
    let cg = temp_cgroup();
    let place = Place { cgroup: Some(cg.path()), netns: Some(netns.path()), mapped: false };
    let at = |dst: &str| outcome(probe_with(place, TcpConnect, nobody(None), dst.parse().unwrap()));
    let dir = TempDir::new("nat64");
    let policy = dir.write("p.toml", "nat64 = [\"2001:db8:64::/96\"]\n");
    let name = instance_name();
    let args = [
        "--cgroup",
        cg.path().to_str().unwrap(),
        "--name",
        &name,
        "--pin",
        "--policy",
        policy.to_str().unwrap(),
        "--nat64",
        "2001:db8:65::/96",
        "--block",
        "192.0.2.1",
    ];
    let mut first = Blocker::start(&args);
    let line = &first.attached_line;
    assert!(line.contains(", NAT64 2001:db8:65::/96 2001:db8:64::/96"), "{line}");
    assert_eq!(at("[2001:db8:64::192.0.2.1]:9"), Blocked);
    assert_eq!(at("[2001:db8:65::192.0.2.1]:9"), Blocked);
    assert_eq!(at("[2001:db8:66::192.0.2.1]:9"), Allowed);

    let _ = dir.write("p.toml", "nat64 = [\"2001:db8:66::/96\"]\n");
    let reloaded = blocker_ok(&["reload", &name]);
    assert!(reloaded.contains(", NAT64 2001:db8:65::/96 2001:db8:66::/96"), "{reloaded}");
    assert_eq!(at("[2001:db8:64::192.0.2.1]:9"), Allowed);
    assert_eq!(at("[2001:db8:65::192.0.2.1]:9"), Blocked);
    assert_eq!(at("[2001:db8:66::192.0.2.1]:9"), Blocked);
    let list = blocker_ok(&["list", &name]);
    assert!(
        list.starts_with(&format!(
            "# instance {name}: default allow, NAT64 2001:db8:65::/96 2001:db8:66::/96\n"
        )),
        "{list}"
    );
    let list = blocker_ok(&["list", &name, "--json"]);
    assert!(
        list.contains("\"nat64\": [\n    \"2001:db8:65::/96\",\n    \"2001:db8:66::/96\"\n  ]"),
        "{list}"
    );

    let _ = first.stop(libc::SIGKILL);
    assert_eq!(at("[2001:db8:66::192.0.2.1]:9"), Blocked, "pinned, after SIGKILL");
    let status = blocker_ok(&["status"]);
    let row = status
        .lines()
        .find(|l| l.starts_with(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(row.contains(", NAT64 2001:db8:65::/96 2001:db8:66::/96, since"), "{row}");
    let second = Blocker::start(&args);
    assert!(second.attached_line.contains("adopted"), "{}", second.attached_line);
    assert_eq!(at("[2001:db8:65::192.0.2.1]:9"), Blocked, "adopted");
    assert_eq!(at("[2001:db8:66::192.0.2.1]:9"), Blocked, "adopted");
    assert_eq!(at("[2001:db8:64::192.0.2.1]:9"), Allowed, "adopted");
    let status = blocker_ok(&["status", "--json"]);
    assert!(
        status.contains(
            "\"nat64\": [\n      \"2001:db8:65::/96\",\n      \"2001:db8:66::/96\"\n    ]"
        ),
        "{status}"
    );
}

/// A prefix other than a /96, and more than four, are refused before anything attaches, with
/// the value named.
#[test]
fn bad_nat64_prefixes_are_refused() {
    require_privileges!();
    let cg = temp_cgroup();
    let path = cg.path().to_str().unwrap();
    let out = blocker_output(&["run", "--cgroup", path, "--nat64", "2001:db8:64::/64"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("\"2001:db8:64::/64\" is not an IPv6 /96 prefix"), "{err}");
    let mut args = vec!["run", "--cgroup", path];
    let prefixes: Vec<String> = (1..=5).map(|i| format!("2001:db8:{i}::/96")).collect();
    for p in &prefixes {
        args.extend(["--nat64", p]);
    }
    let out = blocker_output(&args, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("5 NAT64 prefixes (2001:db8:1::/96, "), "{err}");
    assert_nothing_attached(cg.path());
}

/// An event names the address the call reached, and the rule that judged it.
#[test]
fn events_name_the_address_reached() {
    require_privileges!();
    let dir = TempDir::new("reached");
    let events = dir.path().join("events.jsonl");
    let s = Scene::new(
        &["192.0.2.0/24", "64:ff9b::/96"],
        &[
            "--block",
            "127.0.0.0/8",
            "--block",
            "::1",
            "--block",
            "192.0.2.1",
            "--events",
            events.to_str().unwrap(),
        ],
    );
    expect(
        &s,
        &[
            (TcpConnect, nobody(None), "0.0.0.0:9", Blocked),
            (UdpSendto, nobody(None), "[::]:9", Blocked),
            (UdpConnect, nobody(Some("::ffff:192.0.2.1")), "[::ffff:0.0.0.0]:9", Blocked),
            (TcpConnect, nobody(None), "[64:ff9b::192.0.2.1]:9", Blocked),
        ],
    );
    let mut lines = Vec::new();
    for _ in 0..100 {
        let text = std::fs::read_to_string(&events).unwrap_or_default();
        lines = text.lines().map(str::to_owned).collect();
        if lines.len() >= 4 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let seen: Vec<(String, String)> = lines
        .iter()
        .map(|l| {
            let e: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|err| panic!("{err}: {l}"));
            (
                e["dst"].as_str().unwrap_or("?").to_owned(),
                e["rule"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect();
    let want = [
        ("127.0.0.1", "block 127.0.0.0/8"),
        ("::1", "block ::1"),
        // Bound to 192.0.2.1, it may reach 127.0.0.1 instead: blocked too, named first.
        ("::ffff:127.0.0.1", "block 127.0.0.0/8"),
        ("64:ff9b::c000:201", "block 192.0.2.1"),
    ];
    let want: Vec<(String, String)> =
        want.iter().map(|(d, r)| ((*d).to_owned(), (*r).to_owned())).collect();
    assert_eq!(seen, want);
}
