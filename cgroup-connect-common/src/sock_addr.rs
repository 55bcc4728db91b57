//! The destination as the kernel hands it to the programs in `bpf_sock_addr`: its fields hold
//! the address and port in network byte order, the tables hold them as numbers. Also which
//! destination a `sendmsg` hook judges when the caller named none ([`or_peer`]).

/// The numeric value of `bpf_sock_addr.user_ip4`, which holds the address in network byte
/// order; tables are sorted by these numbers.
#[must_use]
#[inline(always)]
pub const fn ip4_from_user(user_ip4: u32) -> u32 {
    u32::from_be(user_ip4)
}

/// The numeric value of `bpf_sock_addr.user_ip6` (four words, each in network byte order) as
/// (high, low) halves.
#[must_use]
#[inline(always)]
pub const fn ip6_from_user(w: [u32; 4]) -> (u64, u64) {
    let hi = ((u32::from_be(w[0]) as u64) << 32) | u32::from_be(w[1]) as u64;
    let lo = ((u32::from_be(w[2]) as u64) << 32) | u32::from_be(w[3]) as u64;
    (hi, lo)
}

/// The IPv4 address inside an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), as a number.
#[must_use]
#[expect(clippy::cast_possible_truncation, reason = "the low 32 bits are the IPv4 address")]
#[inline(always)]
pub const fn mapped_ip4(addr: (u64, u64)) -> Option<u32> {
    if addr.0 == 0 && addr.1 >> 32 == 0xffff { Some(addr.1 as u32) } else { None }
}

/// The port of `bpf_sock_addr.user_port` (network byte order in the low 16 bits).
#[must_use]
#[expect(clippy::cast_possible_truncation, reason = "the port is the low 16 bits")]
#[inline(always)]
pub const fn port_from_user(user_port: u32) -> u16 {
    u16::from_be(user_port as u16)
}

/// The destination a `sendmsg` hook judges: the one the caller named (`addr`, `port`) or, when
/// it named none, the socket's peer, read only then through `peer`.
///
/// A connected UDP socket that sends with ancillary data (`IP_TOS`, `IP_PKTINFO`,
/// `IPV6_TCLASS`...) and no address runs the sendmsg hook with a zeroed sockaddr (family 0,
/// address 0, port 0: `__cgroup_bpf_run_filter_sock_addr`), while the datagram goes to the
/// peer. Port 0 identifies that case: `udp_sendmsg` and `udpv6_sendmsg` refuse a named port 0
/// with `EINVAL` before the hook runs. A socket without a peer (peer port 0) keeps the zeroed
/// destination; the kernel answers such a send with `EDESTADDRREQ` before the hook anyway.
/// For connect hooks, where port 0 is a valid destination, the programs do not call this.
#[must_use]
#[inline(always)]
pub fn or_peer<A>(addr: A, port: u16, peer: impl FnOnce() -> (A, u16)) -> (A, u16) {
    if port != 0 {
        return (addr, port);
    }
    let (peer_addr, peer_port) = peer();
    if peer_port == 0 { (addr, port) } else { (peer_addr, peer_port) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_words_are_network_order() {
        // 127.0.0.2 as the kernel stores it: bytes 7f 00 00 02 in memory.
        let user_ip4 = u32::from_ne_bytes([127, 0, 0, 2]);
        assert_eq!(ip4_from_user(user_ip4), 0x7f00_0002);
        let user_port = u32::from(u16::from_ne_bytes(443u16.to_be_bytes()));
        assert_eq!(port_from_user(user_port), 443);
        let w = [0x2001_0db8u32.to_be(), 0, 0, 1u32.to_be()];
        assert_eq!(ip6_from_user(w), (0x2001_0db8_0000_0000, 1));
    }

    #[test]
    fn mapped_addresses_are_recognised() {
        assert_eq!(mapped_ip4((0, 0xffff_7f00_0001)), Some(0x7f00_0001));
        assert_eq!(mapped_ip4((0, 0x7f00_0001)), None);
        assert_eq!(mapped_ip4((1, 0xffff_7f00_0001)), None);
    }

    #[test]
    fn an_unnamed_destination_is_the_peer() {
        let no_call = || -> (u32, u16) { panic!("the peer is read only without a destination") };
        assert_eq!(or_peer(0x0a00_0001, 53, no_call), (0x0a00_0001, 53));
        assert_eq!(or_peer(0, 0, || (0x7f00_0001, 9)), (0x7f00_0001, 9));
        // No peer either: the zeroed destination stays.
        assert_eq!(or_peer(0, 0, || (0x7f00_0001, 0)), (0, 0));
    }
}
