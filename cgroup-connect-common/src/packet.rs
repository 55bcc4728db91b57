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
}
