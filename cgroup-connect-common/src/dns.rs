//! The DNS redirect: what the `sock_addr` programs and the forwarder share.
//!
//! A UDP or TCP call to port 53 that the rules allow is sent to the forwarder on
//! `127.0.0.1:`[`crate::config::DNS_PORT`] instead, and the resolver it named is kept in
//! [`crate::maps::DNS_ORIGINS`] under the socket's cookie. The forwarder finds the cookie of
//! the socket a query came from (`NETLINK_SOCK_DIAG`), sends the query on to that resolver,
//! and puts the answer's addresses into the tables before it answers. The `recvmsg4` and
//! `getpeername4` programs then show the resolver's address, not the forwarder's, to the
//! caller (resolvers such as glibc's drop answers from another address).

/// The port every DNS call names: the only one the redirect looks at.
pub const DNS_PORT: u16 = 53;

/// Where a socket's DNS query was going: an IPv4 address and port, as numbers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    pub addr: u32,
    pub port: u32,
}

/// Entries of a [`LearnedClass`] at most. An address whose class would need more goes into
/// the tables the slow way (a table swap before the answer is passed on).
pub const LEARNED_CLASS_LEN: usize = 8;
/// Entries of [`crate::maps::DNS_LEARNED`]: addresses learned and not yet in the tables. Full,
/// an answer's addresses go in the slow way.
pub const DNS_LEARNED_CAPACITY: u32 = 4096;

/// An address of [`crate::maps::DNS_LEARNED`], as (high, low) halves of an IPv6 address; an
/// IPv4 address in its IPv4-mapped form ([`LearnedKey::v4`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LearnedKey {
    pub hi: u64,
    pub lo: u64,
}

impl LearnedKey {
    /// The key of an IPv4 address (a number): `::ffff:a.b.c.d`.
    #[must_use]
    #[inline(always)]
    pub const fn v4(addr: u32) -> Self {
        Self { hi: 0, lo: 0xffff_0000_0000 | addr as u64 }
    }
}

/// What a learned address decides, until when: the class of port/protocol entries the tables
/// would give it (tried in order, as a table's class; see [`crate::decide`]) and the boot-time
/// instant (`bpf_ktime_get_boot_ns`) it stops deciding. Unused entries hold
/// [`LearnedClass::UNUSED`], which matches no port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LearnedClass {
    pub until_ns: u64,
    pub ports: [u32; LEARNED_CLASS_LEN],
    pub words: [u32; LEARNED_CLASS_LEN],
}

impl LearnedClass {
    /// Ports 1..=0: no port.
    pub const UNUSED: u32 = 1 << 16;

    /// The verdict word for `port` and `proto` while `now_ns` is before `until_ns`; `None`
    /// after, or if no entry matches (a class without its final entry).
    #[must_use]
    #[inline(always)]
    pub fn decide(&self, now_ns: u64, port: u16, proto: crate::Proto) -> Option<u32> {
        if now_ns >= self.until_ns {
            return None;
        }
        for k in 0..LEARNED_CLASS_LEN {
            if crate::entry_matches(self.ports[k], self.words[k], port, proto) {
                return Some(self.words[k]);
            }
        }
        None
    }
}
