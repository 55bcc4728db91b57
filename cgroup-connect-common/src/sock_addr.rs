//! The destination as the kernel hands it to the programs in `bpf_sock_addr`: its fields hold
//! the address and port in network byte order, the tables hold them as numbers.

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
}
