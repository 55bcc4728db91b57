//! The packet checks (`cgroup_skb/egress`): which packets they judge, and how they read the
//! headers of those. The `sock_addr` hooks judge a TCP connect and a UDP send by the address
//! the caller names; the packet checks judge what those hooks cannot see, by the addresses
//! the packet itself carries:
//!
//! - every packet of a socket other than a TCP stream or a UDP datagram socket: raw sockets
//!   (whatever protocol their packet claims), ping sockets, UDP-Lite, SCTP;
//! - IPv4 packets of TCP and UDP sockets that carry options: a source route option (LSRR,
//!   SSRR) is refused, other options are judged by the destination;
//! - IPv6 packets of TCP and UDP sockets with extension headers: a routing header is refused,
//!   other extension headers are judged by the destination.
//!
//! A TCP or UDP packet without options or extension headers was judged when it was connected
//! or sent: it passes after two reads (the fast path).
//!
//! Every walk is bounded; a packet that needs more steps than the bound is refused, never let
//! through unread (fail closed).

/// `__sk_buff.protocol` of an IPv4 packet: `ETH_P_IP` in network byte order.
pub const ETH_P_IP_BE: u32 = 0x0800u16.to_be() as u32;
/// `__sk_buff.protocol` of an IPv6 packet: `ETH_P_IPV6` in network byte order.
pub const ETH_P_IPV6_BE: u32 = 0x86ddu16.to_be() as u32;

/// `SOCK_STREAM`.
pub const SOCK_STREAM: u32 = 1;
/// `SOCK_DGRAM`.
pub const SOCK_DGRAM: u32 = 2;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;
pub const IPPROTO_UDPLITE: u8 = 136;

/// Most IPv6 extension headers walked before the transport header; past them, refused.
pub const MAX_EXT_HEADERS: u32 = 6;
/// Most IPv4 options (NOP included) walked; past them, refused.
pub const MAX_IP_OPTIONS: u32 = 12;
/// Length of the fixed IPv4 header (`ihl` 5).
pub const IPV4_HEADER: u32 = 20;
/// Length of the fixed IPv6 header.
pub const IPV6_HEADER: u32 = 40;

/// Whether the socket's packets were judged by the `sock_addr` hooks: a TCP stream socket or a
/// UDP datagram socket (`bpf_sock.type` and `bpf_sock.protocol`). A raw socket is never one,
/// whatever protocol it names.
#[must_use]
#[inline(always)]
pub const fn judged_at_socket(sock_type: u32, sock_protocol: u32) -> bool {
    (sock_type == SOCK_STREAM && sock_protocol == IPPROTO_TCP as u32)
        || (sock_type == SOCK_DGRAM && sock_protocol == IPPROTO_UDP as u32)
}

/// Whether the transport header of `ip_proto` starts with a source and a destination port
/// (TCP, UDP, UDP-Lite, SCTP): the destination port is the big-endian u16 at offset 2.
/// Others (ICMP, ...) are judged as port 0.
#[must_use]
#[inline(always)]
pub const fn has_ports(ip_proto: u8) -> bool {
    matches!(ip_proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_UDPLITE | IPPROTO_SCTP)
}

/// An IPv6 next header, as the walk sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// An extension header to step over: its length from its second byte.
    Ext { routing: bool, fragment: bool },
    /// The transport header, or one the walk does not enter (ESP, no next header...).
    Transport,
}

/// What the next header `nexthdr` is.
#[must_use]
#[inline(always)]
pub const fn next_header(nexthdr: u8) -> Next {
    match nexthdr {
        // Hop-by-hop options, destination options, mobility, authentication header.
        0 | 60 | 135 | 51 => Next::Ext { routing: false, fragment: false },
        43 => Next::Ext { routing: true, fragment: false },
        44 => Next::Ext { routing: false, fragment: true },
        _ => Next::Transport,
    }
}

/// The length of the extension header `nexthdr` whose second byte is `len_byte`.
#[must_use]
#[inline(always)]
pub const fn ext_header_len(nexthdr: u8, len_byte: u8) -> u32 {
    match nexthdr {
        44 => 8,
        51 => (len_byte as u32 + 2) * 4,
        _ => (len_byte as u32 + 1) * 8,
    }
}

/// One step of the IPv4 options walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionStep {
    /// End of the option list.
    End,
    /// The next option starts this many bytes on.
    Skip(u32),
    /// A source route (loose or strict): refused.
    SourceRoute,
    /// A length that cannot be: refused.
    Malformed,
}

/// What the IPv4 option of type `kind` with length byte `len` means for the walk.
#[must_use]
#[inline(always)]
pub const fn option_step(kind: u8, len: u8) -> OptionStep {
    match kind {
        0 => OptionStep::End,
        1 => OptionStep::Skip(1),
        // LSRR and SSRR.
        0x83 | 0x89 => OptionStep::SourceRoute,
        _ if len < 2 => OptionStep::Malformed,
        _ => OptionStep::Skip(len as u32),
    }
}

/// Whether an IPv4 fragment (`frag_off` field, host order) is not the first: it has no
/// transport header, and is judged as port 0.
#[must_use]
#[inline(always)]
pub const fn later_fragment(frag_off: u16) -> bool {
    frag_off & 0x1fff != 0
}

/// `SOCK_RAW`.
pub const SOCK_RAW: u32 = 3;
/// `AF_INET` and `AF_INET6`.
pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;
pub const IPPROTO_ICMP: u32 = 1;
pub const IPPROTO_ICMPV6: u32 = 58;
/// `IPPROTO_MPTCP`: its packets leave through TCP subflows, judged at their connect.
pub const IPPROTO_MPTCP: u32 = 262;

/// The kinds of IPv4 and IPv6 sockets whose packets the `sock_addr` hooks do not judge: the
/// socket-creation check refuses them (EPERM at `socket()`) unless `--allow-sockets` names
/// them, and the packet checks then judge their packets. Each is a bit of the
/// [`crate::config::FLAGS`] word.
pub mod socket_kind {
    /// `SOCK_RAW`, whatever its protocol (needs `CAP_NET_RAW`).
    pub const RAW: u32 = 1 << 1;
    /// ICMP and `ICMPv6` datagram sockets (ping sockets, open to the groups of
    /// `net.ipv4.ping_group_range`).
    pub const PING: u32 = 1 << 2;
    /// UDP-Lite.
    pub const UDPLITE: u32 = 1 << 3;
    /// SCTP.
    pub const SCTP: u32 = 1 << 4;
    /// Any other protocol but TCP, UDP and MPTCP (L2TP over IP, SMC, ...).
    pub const OTHER: u32 = 1 << 5;
    /// Every kind, with the names `--allow-sockets` takes.
    pub const ALL: [(u32, &str); 5] =
        [(RAW, "raw"), (PING, "ping"), (UDPLITE, "udplite"), (SCTP, "sctp"), (OTHER, "other")];
    /// The bits of every kind.
    pub const MASK: u32 = RAW | PING | UDPLITE | SCTP | OTHER;
}

/// The kind of an IPv4 or IPv6 socket (`bpf_sock.type` and `bpf_sock.protocol` at
/// `socket()`): 0 for a TCP stream, a UDP datagram or an MPTCP socket (judged at connect and
/// send), else its [`socket_kind`] bit.
#[must_use]
#[inline(always)]
pub const fn socket_kind(sock_type: u32, sock_protocol: u32) -> u32 {
    if sock_type == SOCK_RAW {
        return socket_kind::RAW;
    }
    if judged_at_socket(sock_type, sock_protocol)
        || (sock_type == SOCK_STREAM && sock_protocol == IPPROTO_MPTCP)
    {
        return 0;
    }
    match sock_protocol {
        IPPROTO_ICMP | IPPROTO_ICMPV6 if sock_type == SOCK_DGRAM => socket_kind::PING,
        p if p == IPPROTO_UDPLITE as u32 => socket_kind::UDPLITE,
        p if p == IPPROTO_SCTP as u32 => socket_kind::SCTP,
        _ => socket_kind::OTHER,
    }
}

/// `SOL_IP` and `SOL_IPV6`, the levels of the options and control messages below.
pub const SOL_IP: i32 = 0;
pub const SOL_IPV6: i32 = 41;
/// `IP_OPTIONS` (setsockopt) and `IP_RETOPTS` (control message): IPv4 options.
pub const IP_OPTIONS: i32 = 4;
pub const IP_RETOPTS: i32 = 7;
/// `IPV6_2292PKTOPTIONS`: a buffer of control messages, set as sticky options.
pub const IPV6_2292PKTOPTIONS: i32 = 6;
/// `IPV6_RTHDR`: a routing header (socket option and control message); `IPV6_2292RTHDR`: one
/// as a control message (as a socket option, a flag asking to receive them).
pub const IPV6_2292RTHDR: i32 = 5;
pub const IPV6_RTHDR: i32 = 57;
/// Longest IPv4 option list.
pub const MAX_IP_OPTIONS_LEN: u32 = 40;
/// Most control messages walked in one buffer; past them, refused.
pub const MAX_CMSGS: u32 = 8;
/// Size of a `struct cmsghdr` on 64-bit kernels (`cmsg_len`, `cmsg_level`, `cmsg_type`).
pub const CMSG_HEADER: u32 = 16;

/// What a socket option or control message is, for the option checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionKind {
    /// A routing header (IPv6): refused unless empty.
    RoutingHeader,
    /// IPv4 options: refused when they hold a source route.
    IpOptions,
    /// Control messages (`IPV6_2292PKTOPTIONS`): each is checked.
    ControlMessages,
    /// Anything else: passed through untouched.
    Other,
}

/// The kind of socket option `optname` at `level` (setsockopt).
#[must_use]
#[inline(always)]
pub const fn sockopt_kind(level: i32, optname: i32) -> OptionKind {
    match (level, optname) {
        // As a socket option, IPV6_2292RTHDR only asks to receive routing headers.
        (SOL_IPV6, IPV6_RTHDR) => OptionKind::RoutingHeader,
        (SOL_IPV6, IPV6_2292PKTOPTIONS) => OptionKind::ControlMessages,
        (SOL_IP, IP_OPTIONS) => OptionKind::IpOptions,
        _ => OptionKind::Other,
    }
}

/// The kind of a control message of `level` and `cmsg_type` (sendmsg ancillary data, or the
/// buffer of `IPV6_2292PKTOPTIONS`).
#[must_use]
#[inline(always)]
pub const fn cmsg_kind(level: i32, cmsg_type: i32) -> OptionKind {
    match (level, cmsg_type) {
        (SOL_IPV6, IPV6_RTHDR | IPV6_2292RTHDR) => OptionKind::RoutingHeader,
        (SOL_IP, IP_RETOPTS) => OptionKind::IpOptions,
        _ => OptionKind::Other,
    }
}

/// Where the control message after one of `cmsg_len` bytes starts, `CMSG_ALIGN`ed (8 bytes on
/// 64-bit kernels), from the start of this one; `None` for a length the kernel refuses.
#[must_use]
#[inline(always)]
pub const fn cmsg_step(cmsg_len: u64) -> Option<u32> {
    if cmsg_len < CMSG_HEADER as u64 || cmsg_len > 0xffff {
        return None;
    }
    #[expect(clippy::cast_possible_truncation, reason = "at most 0xffff, checked above")]
    Some(((cmsg_len as u32) + 7) & !7)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::word::Proto;

    #[test]
    fn only_tcp_streams_and_udp_datagrams_were_judged() {
        assert!(judged_at_socket(SOCK_STREAM, 6));
        assert!(judged_at_socket(SOCK_DGRAM, 17));
        // Raw sockets claiming TCP or UDP (SOCK_RAW = 3), ping, UDP-Lite, SCTP, MPTCP.
        assert!(!judged_at_socket(3, 6));
        assert!(!judged_at_socket(3, 17));
        assert!(!judged_at_socket(SOCK_DGRAM, 1));
        assert!(!judged_at_socket(SOCK_DGRAM, 58));
        assert!(!judged_at_socket(SOCK_DGRAM, 136));
        assert!(!judged_at_socket(SOCK_STREAM, 132));
        assert!(!judged_at_socket(SOCK_STREAM, 262));
    }

    #[test]
    fn udp_rules_cover_udp_lite() {
        let proto = |p: u8| Proto::from_ip_proto(u32::from(p));
        assert_eq!(proto(IPPROTO_TCP), Proto::Tcp);
        assert_eq!(proto(IPPROTO_UDP), Proto::Udp);
        assert_eq!(proto(IPPROTO_UDPLITE), Proto::Udp);
        assert_eq!(proto(IPPROTO_SCTP), Proto::Any);
        assert_eq!(proto(1), Proto::Any);
        assert!(has_ports(IPPROTO_SCTP) && !has_ports(1) && !has_ports(58));
    }

    #[test]
    fn extension_headers_and_their_lengths() {
        assert_eq!(next_header(43), Next::Ext { routing: true, fragment: false });
        assert_eq!(next_header(44), Next::Ext { routing: false, fragment: true });
        assert_eq!(next_header(6), Next::Transport);
        assert_eq!(next_header(50), Next::Transport);
        assert_eq!(ext_header_len(0, 0), 8);
        assert_eq!(ext_header_len(43, 4), 40);
        assert_eq!(ext_header_len(44, 99), 8);
        assert_eq!(ext_header_len(51, 4), 24);
    }

    #[test]
    fn source_routes_are_found_among_options() {
        assert_eq!(option_step(0, 0), OptionStep::End);
        assert_eq!(option_step(1, 0x83), OptionStep::Skip(1));
        assert_eq!(option_step(0x83, 7), OptionStep::SourceRoute);
        assert_eq!(option_step(0x89, 7), OptionStep::SourceRoute);
        assert_eq!(option_step(0x44, 12), OptionStep::Skip(12));
        assert_eq!(option_step(0x44, 1), OptionStep::Malformed);
        assert!(later_fragment(1) && !later_fragment(0x4000) && !later_fragment(0x2000));
    }
    #[test]
    fn socket_kinds() {
        assert_eq!(socket_kind(SOCK_STREAM, 6), 0);
        assert_eq!(socket_kind(SOCK_DGRAM, 17), 0);
        assert_eq!(socket_kind(SOCK_STREAM, IPPROTO_MPTCP), 0);
        assert_eq!(socket_kind(SOCK_RAW, 6), socket_kind::RAW);
        assert_eq!(socket_kind(SOCK_RAW, 255), socket_kind::RAW);
        assert_eq!(socket_kind(SOCK_DGRAM, 1), socket_kind::PING);
        assert_eq!(socket_kind(SOCK_DGRAM, 58), socket_kind::PING);
        assert_eq!(socket_kind(SOCK_DGRAM, 136), socket_kind::UDPLITE);
        assert_eq!(socket_kind(SOCK_STREAM, 132), socket_kind::SCTP);
        assert_eq!(socket_kind(5, 132), socket_kind::SCTP);
        assert_eq!(socket_kind(SOCK_DGRAM, 115), socket_kind::OTHER);
        assert_eq!(socket_kind(SOCK_STREAM, 17), socket_kind::OTHER);
        assert_eq!(socket_kind::ALL.iter().fold(0, |m, k| m | k.0), socket_kind::MASK);
    }

    #[test]
    fn options_and_control_messages_checked() {
        assert_eq!(sockopt_kind(41, 57), OptionKind::RoutingHeader);
        assert_eq!(sockopt_kind(41, 5), OptionKind::Other);
        assert_eq!(cmsg_kind(41, 5), OptionKind::RoutingHeader);
        assert_eq!(sockopt_kind(41, 6), OptionKind::ControlMessages);
        assert_eq!(sockopt_kind(0, 4), OptionKind::IpOptions);
        assert_eq!(sockopt_kind(0, 1), OptionKind::Other);
        assert_eq!(sockopt_kind(41, 67), OptionKind::Other);
        assert_eq!(sockopt_kind(6, 57), OptionKind::Other);
        assert_eq!(cmsg_kind(41, 57), OptionKind::RoutingHeader);
        assert_eq!(cmsg_kind(0, 7), OptionKind::IpOptions);
        assert_eq!(cmsg_kind(0, 4), OptionKind::Other);
        assert_eq!(cmsg_kind(1, 1), OptionKind::Other);
        assert_eq!(cmsg_step(16), Some(16));
        assert_eq!(cmsg_step(20), Some(24));
        assert_eq!(cmsg_step(15), None);
        assert_eq!(cmsg_step(1 << 40), None);
    }
}
