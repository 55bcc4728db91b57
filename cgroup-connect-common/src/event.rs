//! The record of a blocked (or, in audit mode, would-be blocked) attempt that the programs
//! write to the [`crate::maps::EVENTS`] ring buffer, and the words it holds.

/// [`Event::rule`] of a decision made on a missing or malformed table.
pub const RULE_FAILED_CLOSED: u32 = u32::MAX;
/// [`Event::rule`] of a packet refused for its shape, whatever its addresses: an IPv4 source
/// route option, more IPv6 extension headers or routing-header addresses than the packet
/// checks walk, a routing header of a type they do not know (see [`crate::packet`]).
pub const RULE_REFUSED_SHAPE: u32 = u32::MAX - 1;

/// What an [`Event`] reports.
pub mod verdict {
    /// The call failed with EPERM.
    pub const BLOCKED: u8 = 1;
    /// Audit mode: the call would have been blocked, and proceeded.
    pub const AUDIT: u8 = 2;
}

/// Which hook an [`Event`] comes from.
pub mod hook {
    pub const CONNECT: u8 = 0;
    pub const SENDMSG: u8 = 1;
    /// The packet checks (`cgroup_skb/egress`): a packet the `sock_addr` hooks did not judge.
    pub const PACKET: u8 = 2;
}

/// One blocked (or, in audit mode, would-be blocked) attempt, as the programs write it to the
/// [`crate::maps::EVENTS`] ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `CLOCK_BOOTTIME` nanoseconds.
    pub time_ns: u64,
    /// `bpf_get_current_cgroup_id()`: the inode number of the caller's cgroup directory.
    pub cgroup_id: u64,
    /// The address the call reaches (`0.0.0.0` and `::` where the kernel sends them) as a
    /// number: IPv6 as high and low halves; IPv4 in the low half.
    pub addr_hi: u64,
    pub addr_lo: u64,
    /// Thread id and process id (the kernel's pid and tgid).
    pub pid: u32,
    pub tgid: u32,
    pub uid: u32,
    /// The rule that decided (0: the default; [`RULE_FAILED_CLOSED`]: no valid table).
    pub rule: u32,
    pub port: u16,
    /// 4 or 6: the family of the socket's destination as the caller gave it.
    pub family: u8,
    /// `IPPROTO_TCP`, `IPPROTO_UDP`, or what the socket said; for [`hook::PACKET`], the
    /// packet's transport protocol (its last IPv6 next header).
    pub protocol: u8,
    /// [`verdict::BLOCKED`] or [`verdict::AUDIT`].
    pub verdict: u8,
    /// [`hook::CONNECT`], [`hook::SENDMSG`] or [`hook::PACKET`].
    pub hook: u8,
    pub pad: [u8; 2],
    /// The caller's `comm`, NUL padded.
    pub comm: [u8; 16],
}
