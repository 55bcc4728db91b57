//! IPv4 enforcement on the real kernel: every hook, CIDR edges, ports, protocols, allowlists,
//! hostnames and a million-line list. Test addresses live on `lo` of a namespace the test
//! makes; closed ports there refuse, so "allowed" is success or ECONNREFUSED, "blocked" EPERM.
mod common;

use std::fmt::Write as _;

use common::{
    Outcome::{Allowed, Blocked},
    Probe::{TcpConnect, TcpFastOpen, UdpConnect, UdpSendto},
    Scene,
};

const NET: &[&str] = &["192.0.2.0/24", "198.51.100.0/24"];

#[test]
fn every_ipv4_hook_blocks_and_allows() {
    require_privileges!();
    let s = Scene::new(NET, &["--block", "192.0.2.1"]);
    for probe in [TcpConnect, UdpConnect, UdpSendto, TcpFastOpen] {
        s.expect(&[(probe, "192.0.2.1:80", Blocked), (probe, "192.0.2.2:80", Allowed)]);
    }
}

#[test]
fn ipv4_mapped_destinations_follow_the_ipv4_rules() {
    require_privileges!();
    let s = Scene::new(NET, &["--block", "192.0.2.1", "--block", "::/0"]);
    for probe in [TcpConnect, UdpConnect, UdpSendto, TcpFastOpen] {
        assert_eq!(s.check_mapped(probe, "192.0.2.1:80"), Blocked, "{probe:?} to ::ffff:192.0.2.1");
        // ::/0 blocks IPv6 destinations, not IPv4 ones in IPv6 clothing.
        assert_eq!(s.check_mapped(probe, "192.0.2.2:80"), Allowed, "{probe:?} to ::ffff:192.0.2.2");
    }
}

#[test]
fn cidr_edges() {
    require_privileges!();
    let s = Scene::new(NET, &["--block", "192.0.2.4/30", "--block", "198.51.100.9/32"]);
    s.expect(&[
        (TcpConnect, "192.0.2.3:80", Allowed),
        (TcpConnect, "192.0.2.4:80", Blocked),
        (TcpConnect, "192.0.2.7:80", Blocked),
        (TcpConnect, "192.0.2.8:80", Allowed),
        (TcpConnect, "198.51.100.8:80", Allowed),
        (TcpConnect, "198.51.100.9:80", Blocked),
        (TcpConnect, "198.51.100.10:80", Allowed),
    ]);
}

#[test]
fn slash_zero_blocks_every_ipv4_destination() {
    require_privileges!();
    let s = Scene::new(NET, &["--block", "0.0.0.0/0"]);
    s.expect(&[
        (TcpConnect, "192.0.2.1:80", Blocked),
        (UdpSendto, "198.51.100.255:53", Blocked),
        (TcpConnect, "127.0.0.1:80", Blocked),
    ]);
    assert_eq!(s.check(TcpConnect, "[::1]:80"), Allowed, "IPv6 is another family");
}

#[test]
fn port_ranges() {
    require_privileges!();
    let s = Scene::new(NET, &["--block", "192.0.2.1:8000-8999", "--block", "192.0.2.2:53"]);
    s.expect(&[
        (TcpConnect, "192.0.2.1:7999", Allowed),
        (TcpConnect, "192.0.2.1:8000", Blocked),
        (UdpSendto, "192.0.2.1:8500", Blocked),
        (TcpConnect, "192.0.2.1:8999", Blocked),
        (TcpConnect, "192.0.2.1:9000", Allowed),
        (UdpSendto, "192.0.2.2:53", Blocked),
        (UdpSendto, "192.0.2.2:54", Allowed),
    ]);
}

#[test]
fn protocol_only_rules() {
    require_privileges!();
    let s =
        Scene::new(NET, &["--block", "udp://192.0.2.0/24", "--block", "tcp://198.51.100.0/24:443"]);
    s.expect(&[
        (UdpSendto, "192.0.2.1:53", Blocked),
        (UdpConnect, "192.0.2.1:53", Blocked),
        (TcpConnect, "192.0.2.1:53", Allowed),
        (TcpConnect, "198.51.100.1:443", Blocked),
        (UdpSendto, "198.51.100.1:443", Allowed),
        (TcpConnect, "198.51.100.1:444", Allowed),
    ]);
}

#[test]
fn allowlist_with_more_specific_blocks() {
    require_privileges!();
    let s = Scene::new(
        NET,
        &[
            "--default",
            "deny",
            "--allow",
            "192.0.2.0/24",
            "--block",
            "192.0.2.128/25",
            "--allow",
            "tcp://192.0.2.200:443",
        ],
    );
    s.expect(&[
        (TcpConnect, "192.0.2.1:80", Allowed),
        (UdpSendto, "192.0.2.127:53", Allowed),
        (TcpConnect, "192.0.2.128:80", Blocked),
        (TcpConnect, "192.0.2.200:80", Blocked),
        (TcpConnect, "192.0.2.200:443", Allowed),
        (UdpSendto, "192.0.2.200:443", Blocked),
        (TcpConnect, "198.51.100.1:80", Blocked),
        (TcpConnect, "127.0.0.1:80", Blocked),
        (TcpConnect, "[::1]:80", Blocked),
    ]);
}

#[test]
fn hostname_from_etc_hosts() {
    require_privileges!();
    let s = Scene::new(&[], &["--block", "tcp://localhost"]);
    assert!(s.blocker.attached_line.contains("localhost"), "{}", s.blocker.attached_line);
    s.expect(&[
        (TcpConnect, "127.0.0.1:80", Blocked),
        (UdpSendto, "127.0.0.1:53", Allowed),
        (TcpConnect, "127.0.0.2:80", Allowed),
    ]);
}

#[test]
fn a_million_line_list_enforces() {
    require_privileges!();
    let dir = common::TempDir::new("million");
    // 10.0.0.0 and every second address after it: a million /32 rules, none adjacent.
    let mut text = String::with_capacity(16 * 1_000_000);
    for i in 0..1_000_000u32 {
        let a = 0x0a00_0000 + 2 * i;
        writeln!(text, "{}", std::net::Ipv4Addr::from(a)).unwrap();
    }
    let list = dir.write("million.txt", &text);
    let s = Scene::new(&["10.0.0.0/8"], &["--block-list", list.to_str().unwrap()]);
    assert!(s.blocker.attached_line.contains("1000000 rules"), "{}", s.blocker.attached_line);
    s.expect(&[
        (TcpConnect, "10.0.0.0:80", Blocked),
        (TcpConnect, "10.0.0.1:80", Allowed),
        (TcpConnect, "10.30.132.126:80", Blocked), // the last line: 10.0.0.0 + 1999998
        (TcpConnect, "10.30.132.127:80", Allowed),
        (TcpConnect, "10.30.132.128:80", Allowed), // just past the last line
        (UdpSendto, "10.7.0.0:53", Blocked),
    ]);
}

/// A connected UDP socket that sends with `IP_TOS` and no address: the sendmsg hook sees no
/// destination, and judges the socket's peer.
#[test]
fn a_send_with_ancillary_data_is_judged_by_its_peer() {
    require_privileges!();
    common::expect_cmsg_sends_judged_by_peer("127.0.0.1");
}
