//! The ways around the rules that connect and sendmsg cannot see (issue 9, items 2-5), on the
//! real kernel: IPv6 routing headers, IPv4 source routes, ping sockets, UDP-Lite and raw
//! sockets. Each attack is made from the enforced cgroup, as nobody wherever it needs no
//! privilege, across a veth pair: the packet checks make it fail with EPERM, and a capture on
//! the far side shows that no packet reached the denied address. Run with
//! `--no-packet-checks`, the same attack goes through and the capture sees it: the test can
//! tell. Raw, ping and UDP-Lite sockets are refused at `socket()` by default; with
//! `--allow-sockets` they are made, and their packets judged one by one.
mod common;

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use common::{Blocker, Capture, TempCgroup, Wire, in_child, sent_to, temp_cgroup};

const NEAR: &[&str] = &["192.0.2.100/24", "2001:db8::100/64"];
const FAR: &[&str] = &[
    "192.0.2.1/24",
    "192.0.2.2/24",
    "192.0.2.3/24",
    "192.0.2.4/24",
    "2001:db8::1/64",
    "2001:db8::2/64",
];
const DENIED4: &str = "192.0.2.2";
const DENIED6: &str = "2001:db8::2";

/// A blocker on a fresh cgroup that denies [`DENIED4`] and [`DENIED6`], and a wire whose far
/// side holds every test address.
struct Setup {
    wire: Wire,
    cgroup: TempCgroup,
    blocker: Blocker,
}

impl Setup {
    fn new(extra: &[&str]) -> Self {
        let wire = wire();
        let cgroup = temp_cgroup();
        let path = cgroup.path().to_str().expect("UTF-8 cgroup path").to_owned();
        let mut args = vec!["--cgroup", &path, "--block", DENIED4, "--block", DENIED6];
        args.extend_from_slice(extra);
        let blocker = Blocker::start(&args);
        Self { wire, cgroup, blocker }
    }

    /// Makes `attack` from the cgroup, in the near namespace, capturing on the far side:
    /// returns its result and how many packets reached `attack.denied`.
    fn attempt(&self, attack: &Attack<'_>) -> (Result<(), i32>, usize) {
        let capture = Capture::start(&self.wire);
        let result = attack.run(self.cgroup.path(), self.wire.near.path());
        let packets = capture.finish(Duration::from_millis(500));
        (result, sent_to(&packets, attack.denied))
    }

    /// Asserts that `attack` fails with EPERM (or, with `or_errno`, the kernel's own refusal)
    /// and that no packet reached the denied address.
    #[track_caller]
    fn expect_stopped(&self, what: &str, attack: &Attack<'_>, or_errno: Option<i32>) {
        let (result, leaked) = self.attempt(attack);
        let errno = result.err();
        assert!(
            errno == Some(libc::EPERM) || (errno.is_some() && errno == or_errno),
            "{what}: expected EPERM, got {result:?}"
        );
        assert_eq!(leaked, 0, "{what}: packets reached {}", attack.denied);
    }

    /// Asserts that no packet of `attack` reached the denied address, for senders the kernel
    /// does not tell of a dropped packet (IPv6 ping sockets): the call fails with EPERM or
    /// succeeds.
    #[track_caller]
    fn expect_silently_stopped(&self, what: &str, attack: &Attack<'_>) {
        let (result, leaked) = self.attempt(attack);
        assert!(matches!(result, Ok(()) | Err(libc::EPERM)), "{what}: {result:?}");
        assert_eq!(leaked, 0, "{what}: packets reached {}", attack.denied);
    }

    /// Asserts that `attack` succeeds and reaches the denied address: what the checks stop.
    #[track_caller]
    fn expect_through(&self, what: &str, attack: &Attack<'_>) {
        let (result, leaked) = self.attempt(attack);
        assert_eq!(result, Ok(()), "{what}");
        assert!(leaked > 0, "{what}: no packet reached {}", attack.denied);
    }
}

/// The wire of every test, with ping sockets allowed for every group in the near namespace
/// (the setting is per namespace).
fn wire() -> Wire {
    let wire = Wire::new(NEAR, FAR);
    common::sysctl_in(&wire.near, "net.ipv4.ping_group_range", "0 2147483647");
    wire
}

/// How an attack sends.
#[derive(Clone, Copy, Debug)]
enum Way {
    /// `sendto()` of the payload.
    To,
    /// `sendmsg()` of the payload with one control message (level, type, data).
    WithCmsg(i32, i32, &'static [u8]),
    /// A non-blocking TCP `connect()`, then up to 1 s for the handshake.
    Connect,
    /// `connect()`, then `send()` of the payload.
    AfterConnect,
}

/// One attempt from inside the cgroup.
struct Attack<'a> {
    family: i32,
    kind: i32,
    protocol: i32,
    /// A socket option set before sending (level, name, value).
    option: Option<(i32, i32, &'a [u8])>,
    way: Way,
    /// What the sockaddr names.
    to: SocketAddr,
    payload: &'a [u8],
    /// Run as nobody (65534:65534, no groups), as `setpriv --reuid 65534 --regid 65534
    /// --clear-groups` would.
    nobody: bool,
    /// The address no packet may reach.
    denied: IpAddr,
}

impl Attack<'_> {
    fn new(family: i32, kind: i32, protocol: i32, to: &str, denied: &str) -> Self {
        Self {
            family,
            kind,
            protocol,
            option: None,
            way: Way::To,
            to: to.parse().unwrap_or_else(|e| panic!("test address {to}: {e}")),
            payload: b"x",
            nobody: true,
            denied: denied.parse().unwrap_or_else(|e| panic!("test address {denied}: {e}")),
        }
    }

    /// Runs it in a child in `cgroup` and `netns`: Ok(()) or Err(errno); a connect that did
    /// not complete within 1 s is Err(ETIMEDOUT).
    fn run(&self, cgroup: &Path, netns: &Path) -> Result<(), i32> {
        let addr = socket2::SockAddr::from(self.to);
        let (family, kind, protocol, option, way, payload, nobody) = (
            self.family,
            self.kind,
            self.protocol,
            self.option,
            self.way,
            self.payload,
            self.nobody,
        );
        let mut control = match way {
            // SAFETY: CMSG_SPACE only computes a size.
            Way::WithCmsg(_, _, data) => {
                vec![0u8; unsafe { libc::CMSG_SPACE(len(data)) } as usize]
            }
            _ => Vec::new(),
        };
        // The child writes the control message into its copy of this buffer.
        let control = (control.as_mut_ptr(), control.len());
        let what = format!("{:?} {}/{} to {}", way, kind, protocol, self.to);
        let errno = in_child(&what, Some(cgroup), Some(netns), || {
            // SAFETY: raw syscalls on memory prepared before the fork.
            unsafe {
                if nobody && !drop_to_nobody() {
                    return None;
                }
                let s = libc::socket(family, kind | libc::SOCK_NONBLOCK, protocol);
                if s < 0 {
                    return Some(errno());
                }
                if let Some((level, name, value)) = option
                    && libc::setsockopt(s, level, name, value.as_ptr().cast(), len(value)) != 0
                {
                    return Some(errno());
                }
                let r = match way {
                    Way::To => {
                        let sent = libc::sendto(
                            s,
                            payload.as_ptr().cast(),
                            payload.len(),
                            0,
                            addr.as_ptr().cast(),
                            addr.len(),
                        );
                        if sent >= 0 { 0 } else { errno() }
                    }
                    Way::WithCmsg(level, kind, data) => {
                        send_with_cmsg(s, &addr, payload, (level, kind, data), control)
                    }
                    Way::Connect => connect_and_wait(s, &addr),
                    Way::AfterConnect => {
                        let failed = libc::connect(s, addr.as_ptr().cast(), addr.len()) != 0
                            || libc::send(s, payload.as_ptr().cast(), payload.len(), 0) < 0;
                        if failed { errno() } else { 0 }
                    }
                };
                Some(r)
            }
        });
        if errno == 0 { Ok(()) } else { Err(errno.cast_signed()) }
    }
}

fn len(bytes: &[u8]) -> u32 {
    u32::try_from(bytes.len()).expect("test buffers are small")
}

/// The calling thread's errno.
fn errno() -> u32 {
    // SAFETY: errno is thread-local and always readable.
    unsafe { (*libc::__errno_location()).cast_unsigned() }
}

/// Becomes nobody: no groups, gid and uid 65534 (every id, real, effective and saved).
/// Async-signal-safe.
unsafe fn drop_to_nobody() -> bool {
    // SAFETY: plain syscalls.
    unsafe {
        libc::setgroups(0, std::ptr::null()) == 0
            && libc::setresgid(65534, 65534, 65534) == 0
            && libc::setresuid(65534, 65534, 65534) == 0
    }
}

/// `sendmsg()` of `payload` to `addr` with one control message, built in `control` (sized by
/// `CMSG_SPACE` before the fork). Returns 0 or errno.
unsafe fn send_with_cmsg(
    s: i32,
    addr: &socket2::SockAddr,
    payload: &[u8],
    (level, kind, data): (i32, i32, &[u8]),
    (control, control_len): (*mut u8, usize),
) -> u32 {
    // SAFETY: every pointer below points into live buffers of the sizes given.
    unsafe {
        let mut iov =
            libc::iovec { iov_base: payload.as_ptr().cast_mut().cast(), iov_len: payload.len() };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = addr.as_ptr().cast_mut().cast();
        msg.msg_namelen = addr.len();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.cast();
        msg.msg_controllen = control_len;
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = kind;
        (*cmsg).cmsg_len = libc::CMSG_LEN(len(data)) as usize;
        std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(cmsg), data.len());
        if libc::sendmsg(s, &raw const msg, 0) >= 0 { 0 } else { errno() }
    }
}

/// A non-blocking connect, then up to 1 s for the handshake: 0 when it completed, else its
/// errno (ETIMEDOUT when nothing answered).
unsafe fn connect_and_wait(s: i32, addr: &socket2::SockAddr) -> u32 {
    // SAFETY: plain syscalls on a socket of ours and a valid sockaddr.
    unsafe {
        if libc::connect(s, addr.as_ptr().cast(), addr.len()) == 0 {
            return 0;
        }
        if errno() != libc::EINPROGRESS.cast_unsigned() {
            return errno();
        }
        let mut fd = libc::pollfd { fd: s, events: libc::POLLOUT, revents: 0 };
        if libc::poll(&raw mut fd, 1, 1000) <= 0 {
            return libc::ETIMEDOUT.cast_unsigned();
        }
        let mut err = 0i32;
        let mut size = u32::try_from(size_of::<i32>()).expect("fits");
        libc::getsockopt(s, libc::SOL_SOCKET, libc::SO_ERROR, (&raw mut err).cast(), &raw mut size);
        err.cast_unsigned()
    }
}

/// A segment routing header (type 4) whose one segment, left to visit, is `hop`: the kernel
/// sends the packet to `hop` and puts the sockaddr's address in the header.
fn srh(hop: &str) -> Vec<u8> {
    let hop: std::net::Ipv6Addr = hop.parse().expect("an IPv6 address");
    let mut header = vec![0, 2, 4, 0, 0, 0, 0, 0];
    header.extend_from_slice(&hop.octets());
    header
}

/// A type-2 routing header (Mobile IPv6) for ancillary data: the only type `sendmsg` takes,
/// on kernels built with Mobile IPv6.
const TYPE2_TO_DENIED6: [u8; 24] =
    [0, 2, 2, 1, 0, 0, 0, 0, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

const ICMP_ECHO: [u8; 8] = [8, 0, 0, 0, 0, 0, 0, 0];
const ICMPV6_ECHO: [u8; 8] = [128, 0, 0, 0, 0, 0, 0, 0];

#[test]
fn ipv6_routing_headers_reach_no_denied_host() {
    require_privileges!();
    let rthdr = srh(DENIED6);
    let option = Some((libc::IPPROTO_IPV6, libc::IPV6_RTHDR, rthdr.as_slice()));
    let udp = Attack {
        option,
        ..Attack::new(libc::AF_INET6, libc::SOCK_DGRAM, 0, "[2001:db8::1]:9", DENIED6)
    };
    let tcp = Attack {
        option,
        way: Way::Connect,
        ..Attack::new(libc::AF_INET6, libc::SOCK_STREAM, 0, "[2001:db8::1]:80", DENIED6)
    };
    let cmsg = Attack {
        way: Way::WithCmsg(libc::IPPROTO_IPV6, libc::IPV6_RTHDR, &TYPE2_TO_DENIED6),
        ..Attack::new(libc::AF_INET6, libc::SOCK_DGRAM, 0, "[2001:db8::1]:9", DENIED6)
    };
    let on = Setup::new(&[]);
    on.expect_stopped("UDP with a routing header set by setsockopt", &udp, None);
    on.expect_stopped("TCP with a routing header", &tcp, Some(libc::ETIMEDOUT));
    // Kernels without Mobile IPv6 refuse the header themselves (EINVAL).
    on.expect_stopped("UDP with a routing header in ancillary data", &cmsg, Some(libc::EINVAL));
    let plain = Attack::new(libc::AF_INET6, libc::SOCK_DGRAM, 0, "[2001:db8::1]:9", DENIED6);
    assert_eq!(on.attempt(&plain).0, Ok(()), "UDP to the allowed host without a routing header");
    let off = Setup::new(&["--no-packet-checks"]);
    off.expect_through("UDP with a routing header, no packet checks", &udp);
}

#[test]
fn ipv4_source_routes_are_refused() {
    require_privileges!();
    // Loose source route through the denied host (a NOP first: the walk must step over it).
    let mut lsrr = vec![1, 0x83, 7, 4];
    lsrr.extend_from_slice(&DENIED4.parse::<std::net::Ipv4Addr>().expect("IPv4").octets());
    let routed = Attack {
        option: Some((libc::IPPROTO_IP, libc::IP_OPTIONS, lsrr.as_slice())),
        // Setting a source route needs CAP_NET_RAW.
        nobody: false,
        ..Attack::new(libc::AF_INET, libc::SOCK_DGRAM, 0, "192.0.2.1:9", DENIED4)
    };
    // Router alert: an option that routes nowhere, judged by the destination.
    let alert: &[u8] = &[0x94, 4, 0, 0];
    let to = |dst: &str| Attack {
        option: Some((libc::IPPROTO_IP, libc::IP_OPTIONS, alert)),
        nobody: false,
        ..Attack::new(libc::AF_INET, libc::SOCK_DGRAM, 0, dst, DENIED4)
    };
    let on = Setup::new(&[]);
    on.expect_stopped("UDP with a loose source route", &routed, None);
    assert_eq!(on.attempt(&to("192.0.2.1:9")).0, Ok(()), "router alert to the allowed host");
    on.expect_stopped("router alert to the denied host", &to("192.0.2.2:9"), None);
    let off = Setup::new(&["--no-packet-checks"]);
    off.expect_through("UDP with a loose source route, no packet checks", &routed);
}

#[test]
fn ping_sockets_are_judged() {
    require_privileges!();
    let ping = |dst: &str, denied: &str| Attack {
        payload: &ICMP_ECHO,
        ..Attack::new(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP, dst, denied)
    };
    let ping6 = |dst: &str| Attack {
        payload: &ICMPV6_ECHO,
        ..Attack::new(libc::AF_INET6, libc::SOCK_DGRAM, libc::IPPROTO_ICMPV6, dst, DENIED6)
    };
    let refused = Setup::new(&[]);
    refused.expect_stopped("a ping socket, not allowed", &ping("192.0.2.1:0", DENIED4), None);
    refused.expect_stopped("a ping6 socket, not allowed", &ping6("[2001:db8::1]:0"), None);
    let on = Setup::new(&["--events", "-", "--allow-sockets", "ping"]);
    on.expect_stopped("ping to the denied host", &ping("192.0.2.2:0", DENIED4), None);
    // ping_v6_sendmsg does not pass on the error of a dropped packet.
    on.expect_silently_stopped("ping6 to the denied host", &ping6("[2001:db8::2]:0"));
    assert_eq!(on.attempt(&ping("192.0.2.1:0", DENIED4)).0, Ok(()), "ping to the allowed host");
    assert_eq!(on.attempt(&ping6("[2001:db8::1]:0")).0, Ok(()), "ping6 to the allowed host");
    let event = on.blocker.wait_for_line("icmp", Duration::from_secs(10));
    let event = event.unwrap_or_else(|| panic!("no event for the blocked ping"));
    for field in
        [r#""hook":"packet""#, r#""protocol":"icmp""#, r#""dst":"192.0.2.2""#, r#""uid":65534"#]
    {
        assert!(event.contains(field), "{field} in {event}");
    }
    let off = Setup::new(&["--no-packet-checks"]);
    off.expect_through("ping, no packet checks", &ping("192.0.2.2:0", DENIED4));
}

#[test]
fn udp_lite_is_judged_by_plain_and_udp_rules() {
    require_privileges!();
    // A connected UDP-Lite socket: its connect runs no hook (UDP-Lite has no pre_connect),
    // and a connected send runs none either.
    let lite = |dst: &str, denied: &str| {
        let family = if dst.starts_with('[') { libc::AF_INET6 } else { libc::AF_INET };
        Attack {
            way: Way::AfterConnect,
            ..Attack::new(family, libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE, dst, denied)
        }
    };
    let lite_to = |dst: &str, denied: &str| Attack { way: Way::To, ..lite(dst, denied) };
    let refused = Setup::new(&[]);
    refused.expect_stopped("a UDP-Lite socket, not allowed", &lite("192.0.2.1:9", DENIED4), None);
    let on = Setup::new(&[
        "--block",
        "udp://192.0.2.3",
        "--block",
        "tcp://192.0.2.4",
        "--allow-sockets",
        "udplite",
    ]);
    on.expect_stopped(
        "UDP-Lite to a host a plain rule denies",
        &lite("192.0.2.2:9", DENIED4),
        None,
    );
    on.expect_stopped("UDP-Lite over IPv6", &lite("[2001:db8::2]:9", DENIED6), None);
    on.expect_stopped(
        "UDP-Lite to a host a udp:// rule denies",
        &lite("192.0.2.3:9", "192.0.2.3"),
        None,
    );
    assert_eq!(on.attempt(&lite("192.0.2.4:9", DENIED4)).0, Ok(()), "a tcp:// rule");
    assert_eq!(on.attempt(&lite("192.0.2.1:9", DENIED4)).0, Ok(()), "the allowed host");
    // A send that names its destination runs the sendmsg hook, which judges udp:// rules too.
    on.expect_stopped("UDP-Lite sendto, udp:// rule", &lite_to("192.0.2.3:9", "192.0.2.3"), None);
    let off = Setup::new(&["--no-packet-checks"]);
    off.expect_through("UDP-Lite, no packet checks", &lite("192.0.2.2:9", DENIED4));
}

#[test]
fn raw_sockets_are_judged() {
    require_privileges!();
    let raw = |protocol: i32, dst: &str, denied: &str| Attack {
        nobody: false,
        payload: &[0, 9, 0, 9, 0, 9, 0, 0, b'x'],
        ..Attack::new(libc::AF_INET, libc::SOCK_RAW, protocol, dst, denied)
    };
    // A whole IPv4 header (IP_HDRINCL) to the denied host, while the sockaddr names the allowed
    // one: the kernel sends the header as written.
    let mut forged = vec![0x45, 0, 0, 29, 0, 0, 0, 0, 64, 17, 0, 0, 0, 0, 0, 0, 192, 0, 2, 2];
    forged.extend_from_slice(&[0, 9, 0, 9, 0, 9, 0, 0, b'x']);
    let hdrincl = Attack { payload: &forged, ..raw(libc::IPPROTO_RAW, "192.0.2.1:0", DENIED4) };
    // A TCP segment to port 443 of a host whose port 443 a tcp:// rule denies.
    let syn443 = [0, 80, 1, 0xbb, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 2, 0, 0, 0, 0, 0, 0];
    let tcp443 = Attack { payload: &syn443, ..raw(libc::IPPROTO_TCP, "192.0.2.4:0", "192.0.2.4") };
    let refused = Setup::new(&[]);
    refused.expect_stopped(
        "a raw socket, not allowed",
        &raw(libc::IPPROTO_UDP, "192.0.2.1:0", DENIED4),
        None,
    );
    let on = Setup::new(&["--block", "tcp://192.0.2.4:443", "--allow-sockets", "raw,ping"]);
    on.expect_stopped(
        "raw UDP to the denied host",
        &raw(libc::IPPROTO_UDP, "192.0.2.2:0", DENIED4),
        None,
    );
    on.expect_stopped("a forged header to the denied host", &hdrincl, None);
    on.expect_stopped("raw TCP to a denied port", &tcp443, None);
    let raw6 =
        Attack { family: libc::AF_INET6, ..raw(libc::IPPROTO_UDP, "[2001:db8::2]:0", DENIED6) };
    on.expect_stopped("raw UDP over IPv6", &raw6, None);
    let allowed = raw(libc::IPPROTO_UDP, "192.0.2.1:0", DENIED4);
    assert_eq!(on.attempt(&allowed).0, Ok(()), "raw UDP to the allowed host");
    let off = Setup::new(&["--no-packet-checks"]);
    off.expect_through("a forged header, no packet checks", &hdrincl);
}

/// Whether bpftool's list of a cgroup's programs (`attached`) holds any packet-check program:
/// the socket and setsockopt checks, and the LSM check or the egress program.
fn any_packet_check(attached: &str) -> bool {
    ["check_socket", "check_setsockopt", "check_sendmsg_options", "check_egress"]
        .iter()
        .any(|name| attached.contains(name))
}

#[test]
fn status_tells_whether_the_packet_checks_are_on() {
    require_privileges!();
    let on = Setup::new(&[]);
    let off = Setup::new(&["--no-packet-checks"]);
    assert!(
        off.blocker.attached_line.ends_with(", packet checks off"),
        "{}",
        off.blocker.attached_line
    );
    let status = common::blocker_ok(&["status"]);
    for (setup, word) in [(&on, "on"), (&off, "off")] {
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("{}:", setup.blocker.name)))
            .unwrap_or_else(|| panic!("no status line for {}: {status}", setup.blocker.name));
        assert!(line.contains(&format!("packet checks {word},")), "{line}");
    }
    let attached = common::attached_programs(on.cgroup.path());
    assert!(attached.contains("check_socket"), "{attached}");
    let attached = common::attached_programs(off.cgroup.path());
    assert!(!any_packet_check(&attached), "{attached}");
}

#[test]
fn an_instance_pinned_without_packet_checks_gets_them_when_adopted() {
    require_privileges!();
    let cgroup = temp_cgroup();
    let path = cgroup.path().to_str().expect("UTF-8 cgroup path").to_owned();
    let name = common::instance_name();
    let run = |extra: &[&str]| {
        let mut args = vec!["--cgroup", &path, "--name", &name, "--pin", "--block", DENIED4];
        args.extend_from_slice(extra);
        Blocker::start(&args)
    };
    // Pinned without them, as by a version that had none: the state says off, no egress link.
    let mut old = run(&["--no-packet-checks"]);
    old.stop(libc::SIGTERM);
    assert!(!any_packet_check(&common::attached_programs(cgroup.path())));
    let ping = Attack {
        payload: &ICMP_ECHO,
        ..Attack::new(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP, "192.0.2.2:0", DENIED4)
    };
    let mut adopted = Setup { wire: wire(), cgroup, blocker: run(&[]) };
    assert!(adopted.blocker.attached_line.contains("adopted"), "{}", adopted.blocker.attached_line);
    assert!(common::attached_programs(adopted.cgroup.path()).contains("check_socket"));
    adopted.expect_stopped("ping after the adoption", &ping, None);
    // Adopted again with --no-packet-checks: the egress link goes, the rest stays.
    adopted.blocker.stop(libc::SIGTERM);
    let without = run(&["--no-packet-checks"]);
    assert!(without.attached_line.contains("adopted"), "{}", without.attached_line);
    let attached = common::attached_programs(adopted.cgroup.path());
    assert!(!any_packet_check(&attached) && attached.contains("check_connect4"), "{attached}");
    drop(without);
    drop(old);
}

#[test]
fn other_socket_options_and_ancillary_data_still_work() {
    require_privileges!();
    let cgroup = temp_cgroup();
    let path = cgroup.path().to_str().expect("UTF-8 cgroup path").to_owned();
    let _blocker =
        Blocker::start(&["--cgroup", &path, "--default", "deny", "--allow", "127.0.0.1"]);
    // SAFETY: plain syscalls in the child, on buffers of the sizes given.
    let errno = in_child("socket options", Some(cgroup.path()), None, || unsafe {
        if !drop_to_nobody() {
            return None;
        }
        let set = |s: i32, level: i32, name: i32, value: &[u8]| {
            libc::setsockopt(s, level, name, value.as_ptr().cast(), len(value)) == 0
        };
        let tcp = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        let udp6 = libc::socket(libc::AF_INET6, libc::SOCK_DGRAM, 0);
        let tos = 0x10i32.to_ne_bytes();
        // A value longer than a page, of which the program sees only the first page.
        let mut big = vec![0u8; 8192];
        big[..4].copy_from_slice(&tos);
        let ok = tcp >= 0
            && udp6 >= 0
            && set(tcp, libc::IPPROTO_IP, libc::IP_TOS, &tos)
            && set(udp6, libc::IPPROTO_IPV6, libc::IPV6_TCLASS, &tos)
            && set(udp6, libc::IPPROTO_IPV6, libc::IPV6_TCLASS, &big)
            // As a socket option, IPV6_2292RTHDR asks to receive routing headers.
            && set(udp6, libc::IPPROTO_IPV6, libc::IPV6_2292RTHDR, &1i32.to_ne_bytes())
            // An empty routing header removes it (IPv4 options need CAP_NET_RAW: see
            // ipv4_source_routes_are_refused for one that routes nowhere).
            && set(udp6, libc::IPPROTO_IPV6, libc::IPV6_RTHDR, &[]);
        Some(if ok { 0 } else { errno() })
    });
    assert_eq!(errno, 0, "a socket option that is not a route failed");
}

#[test]
fn ancillary_tclass_in_default_deny() {
    require_privileges!();
    let wire = wire();
    let cgroup = temp_cgroup();
    let path = cgroup.path().to_str().expect("UTF-8 cgroup path").to_owned();
    let _blocker =
        Blocker::start(&["--cgroup", &path, "--default", "deny", "--allow", "2001:db8::1"]);
    let attack = Attack {
        way: Way::WithCmsg(libc::IPPROTO_IPV6, libc::IPV6_TCLASS, &[0x10, 0, 0, 0]),
        ..Attack::new(libc::AF_INET6, libc::SOCK_DGRAM, 0, "[2001:db8::1]:9", DENIED6)
    };
    assert_eq!(
        attack.run(cgroup.path(), wire.near.path()),
        Ok(()),
        "IPV6_TCLASS in ancillary data"
    );
}

#[test]
fn ancillary_source_routes_are_refused() {
    require_privileges!();
    let mut lsrr = vec![0x83, 7, 4];
    lsrr.extend_from_slice(&DENIED4.parse::<std::net::Ipv4Addr>().expect("IPv4").octets());
    lsrr.push(0);
    let lsrr: &'static [u8] = Box::leak(lsrr.into_boxed_slice());
    let routed = Attack {
        way: Way::WithCmsg(libc::IPPROTO_IP, libc::IP_RETOPTS, lsrr),
        // A source route needs CAP_NET_RAW.
        nobody: false,
        ..Attack::new(libc::AF_INET, libc::SOCK_DGRAM, 0, "192.0.2.1:9", DENIED4)
    };
    let on = Setup::new(&[]);
    on.expect_stopped("UDP with a source route in ancillary data", &routed, None);
    let off = Setup::new(&["--no-packet-checks"]);
    off.expect_through("UDP with a source route in ancillary data, no packet checks", &routed);
}

#[test]
fn status_names_the_packet_hooks_in_force() {
    require_privileges!();
    let on = Setup::new(&[]);
    let allowing = Setup::new(&["--allow-sockets", "raw"]);
    let line = &on.blocker.attached_line;
    assert!(line.contains(", packet checks on: socket+setsockopt+"), "{line}");
    let row = common::status_row;
    let hooks = row(&on.blocker.name)["packet_hooks"].clone();
    let hooks: Vec<&str> =
        hooks.as_array().expect("a list").iter().filter_map(|h| h.as_str()).collect();
    assert!(hooks.starts_with(&["socket", "setsockopt"]), "{hooks:?}");
    // Control messages are judged by the LSM check, or where it cannot load, per packet.
    assert!(hooks.contains(&"lsm") != hooks.contains(&"egress"), "{hooks:?}");
    let attached = common::attached_programs(on.cgroup.path());
    assert!(
        attached.contains("check_socket") && attached.contains("check_setsockopt"),
        "{attached}"
    );
    let allowed = row(&allowing.blocker.name);
    assert_eq!(allowed["allow_sockets"], serde_json::json!(["raw"]), "{allowed}");
    assert!(allowed["packet_hooks"].as_array().expect("a list").contains(&"egress".into()));
    assert!(common::attached_programs(allowing.cgroup.path()).contains("check_egress"));
}

/// Where the kernel runs BPF LSM programs (`bpf` among the active LSMs, and bpftool's probe
/// loads one), control messages are judged by the LSM check and no egress program is attached:
/// nothing of the default runs per packet. Elsewhere the egress program judges them.
#[test]
fn the_lsm_check_replaces_the_egress_program_where_the_kernel_runs_it() {
    require_privileges!();
    let active = std::fs::read_to_string("/sys/kernel/security/lsm")
        .is_ok_and(|list| list.trim().split(',').any(|m| m == "bpf"));
    let probe = std::process::Command::new("bpftool")
        .args(["feature", "probe", "kernel"])
        .output()
        .unwrap_or_else(|e| panic!("run bpftool (./scripts/setup.sh installs it): {e}"));
    let loads = String::from_utf8_lossy(&probe.stdout).contains("program_type lsm is available");
    let cgroup = temp_cgroup();
    let path = cgroup.path().to_str().expect("UTF-8 cgroup path").to_owned();
    let blocker = Blocker::start(&["--cgroup", &path, "--block", DENIED4]);
    let row = common::status_row(&blocker.name);
    let hooks: Vec<&str> =
        row["packet_hooks"].as_array().expect("a list").iter().filter_map(|h| h.as_str()).collect();
    let attached = common::attached_programs(cgroup.path());
    if active && loads {
        assert_eq!(hooks, ["socket", "setsockopt", "lsm"], "{row}");
        assert!(
            blocker.attached_line.contains("socket+setsockopt+lsm"),
            "{}",
            blocker.attached_line
        );
        assert!(attached.contains("check_sendmsg_options"), "{attached}");
        assert!(!attached.contains("check_egress"), "{attached}");
    } else {
        eprintln!(
            "note: this kernel runs no BPF LSM program (bpf among the active LSMs: {active}, \
             bpftool loads one: {loads}): the egress fallback is checked instead"
        );
        assert_eq!(hooks, ["socket", "setsockopt", "egress"], "{row}");
        assert!(attached.contains("check_egress"), "{attached}");
        assert!(!attached.contains("check_sendmsg_options"), "{attached}");
    }
}

#[test]
fn a_policy_file_allows_socket_kinds() {
    require_privileges!();
    let dir = common::TempDir::new("sockets");
    let policy = dir.write("p.toml", "allow_sockets = [\"udplite\"]\n");
    let policy = policy.to_str().expect("UTF-8 path");
    let lite = |dst: &str| Attack {
        way: Way::AfterConnect,
        ..Attack::new(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE, dst, DENIED4)
    };
    let on = Setup::new(&["--policy", policy]);
    assert_eq!(on.attempt(&lite("192.0.2.1:9")).0, Ok(()), "UDP-Lite, allowed by the policy file");
    on.expect_stopped("UDP-Lite to the denied host, judged per packet", &lite("192.0.2.2:9"), None);
    let row = common::status_row(&on.blocker.name);
    assert_eq!(row["allow_sockets"], serde_json::json!(["udplite"]), "{row}");
}
