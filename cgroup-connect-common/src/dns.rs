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
