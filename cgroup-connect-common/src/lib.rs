//! Everything the BPF programs and userspace share: map and program names, map key and value
//! types, verdicts. This crate is the only definition of these; both sides import it so they
//! cannot drift apart.
#![no_std]

/// The verdict a `cgroup/connect*` or `cgroup/sendmsg*` program returns to let the call proceed.
pub const ALLOW: i32 = 1;
/// The verdict that makes the call fail with `EPERM`.
pub const BLOCK: i32 = 0;

/// Names of the BPF programs, as the kernel and `bpftool prog` show them.
pub mod programs {
    /// `cgroup/connect4`: judges `connect()` on IPv4 sockets.
    pub const CHECK_CONNECT4: &str = "check_connect4";
}

/// Names of the BPF maps, as the kernel and `bpftool map` show them.
pub mod maps {
    /// Hash map of blocked IPv4 destinations: key [`crate::Ipv4Key`], value [`crate::BlockValue`].
    pub const BLOCKED_ADDRS: &str = "blocked_addrs";
}

/// Capacity of [`maps::BLOCKED_ADDRS`].
pub const BLOCKED_ADDRS_CAPACITY: u32 = 65_536;

/// Key of [`maps::BLOCKED_ADDRS`]: an IPv4 address exactly as the kernel hands it to the program
/// in `bpf_sock_addr.user_ip4`, i.e. the four octets in network order in memory.
///
/// Read as a native `u32` this is *not* the address's numeric value on little-endian machines:
/// build it with [`Ipv4Key::from_octets`], never from `u32::from(Ipv4Addr)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Key {
    /// The `user_ip4` word: octets in network order.
    pub addr: u32,
}

impl Ipv4Key {
    /// The key for the address `a.b.c.d` given as `[a, b, c, d]`.
    #[must_use]
    pub const fn from_octets(octets: [u8; 4]) -> Self {
        Self { addr: u32::from_ne_bytes(octets) }
    }

    /// The key for the `user_ip4` word read from `bpf_sock_addr`.
    #[must_use]
    pub const fn from_user_ip4(user_ip4: u32) -> Self {
        Self { addr: user_ip4 }
    }

    /// The address's octets `[a, b, c, d]`.
    #[must_use]
    pub const fn octets(self) -> [u8; 4] {
        self.addr.to_ne_bytes()
    }
}

/// Value of [`maps::BLOCKED_ADDRS`]. Presence of the key blocks; the value is reserved.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockValue {
    /// Always 1 for now.
    pub present: u8,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data without padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::Ipv4Key {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BlockValue {}
}

#[cfg(test)]
mod tests {
    use super::Ipv4Key;

    #[test]
    fn key_is_network_order_in_memory() {
        let key = Ipv4Key::from_octets([127, 0, 0, 2]);
        // The kernel stores user_ip4 as the bytes on the wire: 7f 00 00 02.
        assert_eq!(key.addr.to_ne_bytes(), [0x7f, 0, 0, 2]);
        assert_eq!(key.octets(), [127, 0, 0, 2]);
        // On little-endian hosts that word is not the numeric value 0x7f000002.
        #[cfg(target_endian = "little")]
        assert_eq!(key.addr, 0x0200_007f);
    }

    #[test]
    fn user_ip4_round_trips() {
        let key = Ipv4Key::from_octets([93, 184, 216, 34]);
        assert_eq!(Ipv4Key::from_user_ip4(key.addr), key);
    }
}
