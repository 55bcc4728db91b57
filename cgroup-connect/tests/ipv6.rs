//! IPv6 enforcement on the real kernel: every hook, prefix edges, ports, a million-line list.
mod common;

use std::fmt::Write as _;

use common::{
    Outcome::{Allowed, Blocked},
    Probe::{TcpConnect, TcpFastOpen, UdpConnect, UdpSendto},
    Scene,
};

const NET: &[&str] = &["2001:db8::/64", "2001:db8:1::/64"];

#[test]
fn every_ipv6_hook_blocks_and_allows() {
    require_privileges!();
    let s = Scene::new(NET, &["--block", "2001:db8::1"]);
    for probe in [TcpConnect, UdpConnect, UdpSendto, TcpFastOpen] {
        s.expect(&[(probe, "[2001:db8::1]:80", Blocked), (probe, "[2001:db8::2]:80", Allowed)]);
    }
}

#[test]
fn prefix_edges_and_slash_128() {
    require_privileges!();
    let s = Scene::new(NET, &["--block", "2001:db8::10/126", "--block", "2001:db8:1::9/128"]);
    s.expect(&[
        (TcpConnect, "[2001:db8::f]:80", Allowed),
        (TcpConnect, "[2001:db8::10]:80", Blocked),
        (TcpConnect, "[2001:db8::13]:80", Blocked),
        (TcpConnect, "[2001:db8::14]:80", Allowed),
        (TcpConnect, "[2001:db8:1::8]:80", Allowed),
        (TcpConnect, "[2001:db8:1::9]:80", Blocked),
        (TcpConnect, "[2001:db8:1::a]:80", Allowed),
    ]);
}

#[test]
fn slash_zero_blocks_every_ipv6_destination() {
    require_privileges!();
    let s = Scene::new(&["2001:db8::/64", "192.0.2.0/24"], &["--block", "::/0"]);
    s.expect(&[
        (TcpConnect, "[2001:db8::1]:80", Blocked),
        (UdpSendto, "[::1]:53", Blocked),
        (TcpConnect, "192.0.2.1:80", Allowed),
    ]);
}

#[test]
fn ports_and_protocols() {
    require_privileges!();
    let s = Scene::new(
        NET,
        &["--block", "[2001:db8::/64]:8000-8999", "--block", "udp://2001:db8:1::/64"],
    );
    s.expect(&[
        (TcpConnect, "[2001:db8::5]:7999", Allowed),
        (TcpConnect, "[2001:db8::5]:8000", Blocked),
        (UdpSendto, "[2001:db8::5]:8999", Blocked),
        (TcpConnect, "[2001:db8::5]:9000", Allowed),
        (UdpSendto, "[2001:db8:1::5]:53", Blocked),
        (TcpConnect, "[2001:db8:1::5]:53", Allowed),
    ]);
}

#[test]
fn a_million_line_ipv6_list_enforces() {
    require_privileges!();
    let dir = common::TempDir::new("million6");
    let mut text = String::with_capacity(20 * 1_000_000);
    for i in 0..1_000_000u32 {
        writeln!(text, "2001:db8::{:x}:{:x}", (2 * i) >> 16, (2 * i) & 0xffff).unwrap();
    }
    let list = dir.write("million6.txt", &text);
    let s = Scene::new(&["2001:db8::/64"], &["--block-list", list.to_str().unwrap()]);
    s.expect(&[
        (TcpConnect, "[2001:db8::0:0]:80", Blocked),
        (TcpConnect, "[2001:db8::0:1]:80", Allowed),
        (TcpConnect, "[2001:db8::1e:847e]:80", Blocked), // the last line: 1999998
        (TcpConnect, "[2001:db8::1e:8480]:80", Allowed),
    ]);
}

/// A connected UDP socket that sends with `IPV6_TCLASS` and no address: the sendmsg hook sees no
/// destination, and judges the socket's peer.
#[test]
fn an_ipv6_send_with_ancillary_data_is_judged_by_its_peer() {
    require_privileges!();
    common::expect_cmsg_sends_judged_by_peer("::1");
}
