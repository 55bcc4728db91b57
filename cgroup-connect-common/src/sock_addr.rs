//! The destination as the kernel hands it to the programs in `bpf_sock_addr`: its fields hold
//! the address and port in network byte order, the tables hold them as numbers. Also which
//! destination a hook judges: the socket's peer when a send names none ([`or_peer`]), the
//! address the kernel turns `0.0.0.0` and `::` into ([`reached_v4`], [`reached_v6`]), and the
//! IPv4 address inside an IPv4-mapped or NAT64 address ([`mapped_ip4`], [`nat64_ip4`]).

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

/// 127.0.0.1, where the kernel sends what names `0.0.0.0` without a source.
pub const LOOPBACK4: u32 = 0x7f00_0001;
/// `::1` as (high, low) halves.
pub const LOOPBACK6: (u64, u64) = (0, 1);
/// `::ffff:127.0.0.1` as (high, low) halves.
pub const MAPPED_LOOPBACK4: (u64, u64) = (0, 0xffff_0000_0000 | LOOPBACK4 as u64);
/// The NAT64 well-known prefix `64:ff9b::/96` (RFC 6052), as its top 96 bits: the high half
/// and the next 32 bits ([`nat64_ip4`]).
pub const NAT64_WELL_KNOWN: (u64, u32) = (0x0064_ff9b_0000_0000, 0);
/// How many NAT64 prefixes besides the well-known one an instance may name (`--nat64`).
pub const MAX_NAT64_PREFIXES: u32 = 4;

/// The source address an IPv4 hook can read, from which the kernel sends what names
/// `0.0.0.0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `bpf_sock_addr.msg_src_ip4` of a sendmsg hook: the very source the route takes (the
    /// bound address, or the one `IP_PKTINFO` gives), 0 for none.
    Exact(u32),
    /// `bpf_sock.src_ip4` of a connect hook: the address the socket is bound to, 0 for none.
    /// The route takes it, except for a broadcast or multicast address, which the socket
    /// keeps for receiving and routes as if unbound.
    Bound(u32),
}

/// Where an IPv4 connect or send to `addr` goes (as a number), and whether it may go to
/// 127.0.0.1 instead, which the programs judge too.
///
/// Routing sends `0.0.0.0` to the flow's source address, or to 127.0.0.1 without one
/// (`ip_route_output_key_hash_rcu`), so a socket bound to a local address, or a send whose
/// `IP_PKTINFO` names one, reaches that address. A connect hook knows the bound address but
/// not whether the route takes it (a broadcast address such as 10.0.0.255 is left out), so
/// it gets both: the bound address, and 127.0.0.1. Another `addr` goes where it says.
#[must_use]
#[inline(always)]
pub fn reached_v4(addr: u32, source: impl FnOnce() -> Source) -> (u32, bool) {
    if addr != 0 {
        return (addr, false);
    }
    match source() {
        Source::Exact(0) | Source::Bound(0) => (LOOPBACK4, false),
        Source::Exact(src) => (src, false),
        Source::Bound(src) => (src, src != LOOPBACK4),
    }
}

/// The verdict word for where an IPv4 call goes ([`reached_v4`]: `first`, and 127.0.0.1 too
/// when `also_loopback`), and the address it names: 127.0.0.1 when `loopback()`, its verdict
/// for any port ([`crate::V4_LOOPBACK_RECORD`]), blocks; else `first`, whose verdict `search`
/// finds (`None` for no valid table, which fails closed). Only one search: a second one would
/// cost the verifier as much as the first.
#[must_use]
#[inline(always)]
pub fn judge_reached(
    search: impl FnOnce(u32) -> Option<u32>,
    loopback: impl FnOnce() -> u32,
    (first, also_loopback): (u32, bool),
) -> (Option<u32>, u32) {
    if also_loopback {
        let word = loopback();
        if crate::word::blocks(word) {
            return (Some(word), LOOPBACK4);
        }
    }
    (search(first), first)
}

/// Where an IPv6 connect or send to `addr` goes: `::` means loopback, `::1`, or
/// `::ffff:127.0.0.1` for a connect on a socket bound to an IPv4-mapped address
/// (`mapped_source`; `tcp_v6_connect`, `__ip6_datagram_connect`, `udpv6_sendmsg`). Another
/// `addr` goes where it says. `mapped_source` is only called for `::`.
#[must_use]
#[inline(always)]
pub fn reached_v6(addr: (u64, u64), mapped_source: impl FnOnce() -> bool) -> (u64, u64) {
    if addr.0 != 0 || addr.1 != 0 {
        addr
    } else if mapped_source() {
        MAPPED_LOOPBACK4
    } else {
        LOOPBACK6
    }
}

/// The IPv4 address a NAT64 address (RFC 6052, a /96 prefix and the IPv4 address in the low
/// 32 bits) stands for: under the well-known prefix `64:ff9b::/96`, or under one of the
/// instance's prefixes, which `prefix(i)` gives for `i` from 0 (their top 96 bits, as
/// [`NAT64_WELL_KNOWN`] holds them) until it gives `None`, at most [`MAX_NAT64_PREFIXES`].
#[must_use]
#[expect(clippy::cast_possible_truncation, reason = "splits the low half into its two words")]
#[inline(always)]
pub fn nat64_ip4(addr: (u64, u64), prefix: impl Fn(u32) -> Option<(u64, u32)>) -> Option<u32> {
    let top = (addr.0, (addr.1 >> 32) as u32);
    if top == NAT64_WELL_KNOWN {
        return Some(addr.1 as u32);
    }
    for i in 0..MAX_NAT64_PREFIXES {
        match prefix(i) {
            Some(p) if p == top => return Some(addr.1 as u32),
            Some(_) => {}
            None => break,
        }
    }
    None
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
    fn unspecified_v4_reaches_the_source_or_loopback() {
        let (a, lo) = (0x0a00_0005, LOOPBACK4);
        let unread = || -> Source { panic!("the source is read only for 0.0.0.0") };
        assert_eq!(reached_v4(0x0a00_0001, unread), (0x0a00_0001, false));
        assert_eq!(reached_v4(0, || Source::Bound(0)), (lo, false));
        assert_eq!(reached_v4(0, || Source::Exact(0)), (lo, false));
        assert_eq!(reached_v4(0, || Source::Exact(a)), (a, false));
        // Bound to a broadcast address, a connect goes to 127.0.0.1: both are judged.
        assert_eq!(reached_v4(0, || Source::Bound(a)), (a, true));
        assert_eq!(reached_v4(0, || Source::Bound(lo)), (lo, false));
    }

    #[test]
    fn loopback_decides_only_when_it_blocks() {
        use crate::word::{self, Proto};
        let (allow, block) =
            (word::verdict(false, Proto::Any, 1), word::verdict(true, Proto::Any, 2));
        let table = |blocked: u32| move |a: u32| Some(if a == blocked { block } else { allow });
        let unread = || -> u32 { panic!("127.0.0.1 is read only when the call may go there") };
        assert_eq!(judge_reached(table(0), || allow, (5, true)), (Some(allow), 5));
        assert_eq!(judge_reached(table(5), || allow, (5, true)), (Some(block), 5));
        assert_eq!(judge_reached(table(0), || block, (5, true)), (Some(block), LOOPBACK4));
        assert_eq!(judge_reached(table(5), unread, (5, false)), (Some(block), 5));
        assert_eq!(judge_reached(|_| None, || allow, (5, true)), (None, 5));
    }

    #[test]
    fn unspecified_v6_reaches_loopback() {
        assert_eq!(reached_v6((0, 0), || false), LOOPBACK6);
        assert_eq!(reached_v6((0, 0), || true), MAPPED_LOOPBACK4);
        assert_eq!(mapped_ip4(MAPPED_LOOPBACK4), Some(LOOPBACK4));
        assert_eq!(reached_v6((0, 2), || panic!("read only for ::")), (0, 2));
        assert_eq!(reached_v6((1, 0), || panic!("read only for ::")), (1, 0));
    }

    #[test]
    fn nat64_addresses_hold_an_ipv4_address() {
        let none = |_| None;
        // 64:ff9b::192.0.2.1
        assert_eq!(nat64_ip4((0x0064_ff9b_0000_0000, 0xc000_0201), none), Some(0xc000_0201));
        // RFC 8215's local-use 64:ff9b:1::/48 is not the well-known /96.
        assert_eq!(nat64_ip4((0x0064_ff9b_0001_0000, 0xc000_0201), none), None);
        assert_eq!(nat64_ip4((0x0064_ff9b_0000_0000, 1 << 32 | 5), none), None);
        // 2001:db8:64::/96 and 2001:db8:65::/96, named by the instance.
        let mine = [(0x2001_0db8_0064_0000, 0), (0x2001_0db8_0065_0000, 0)];
        let prefix = |i: u32| mine.get(i as usize).copied();
        assert_eq!(nat64_ip4((0x2001_0db8_0065_0000, 0x0a00_0001), prefix), Some(0x0a00_0001));
        assert_eq!(nat64_ip4((0x2001_0db8_0066_0000, 0x0a00_0001), prefix), None);
        assert_eq!(nat64_ip4((0x2001_0db8_0064_0000, 1 << 32 | 1), prefix), None);
        // Never more than MAX_NAT64_PREFIXES are asked for.
        let asked = core::cell::Cell::new(0);
        let endless = |_| {
            asked.set(asked.get() + 1);
            Some((1, 1))
        };
        assert_eq!(nat64_ip4((0x2001_0db8_0000_0000, 1), endless), None);
        assert_eq!(asked.get(), MAX_NAT64_PREFIXES);
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
