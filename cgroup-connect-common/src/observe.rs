//! Observe mode (`blocker run --audit`): what the programs record of every decision, allowed
//! or would-be blocked, for `blocker learn`. One entry per destination (family, address
//! reached, port, protocol) in the [`crate::maps::OBSERVED`] LRU hash, with when it was first
//! and last seen and how often; [`crate::maps::OBSERVE_STATS`] counts what was recorded and
//! what could not be.

/// The key of an [`Observed`] entry: a destination as the programs judged it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ObservedKey {
    /// The address reached, as in [`crate::Event`]: IPv6 as high and low halves, IPv4 in the
    /// low half.
    pub addr_hi: u64,
    pub addr_lo: u64,
    pub port: u16,
    /// 4 or 6, as in [`crate::Event::family`].
    pub family: u8,
    /// `IPPROTO_TCP`, `IPPROTO_UDP`, or what the socket said (low byte).
    pub protocol: u8,
    pub pad: u32,
}

/// What observe mode knows of one destination. Counts are per-entry, not per CPU: two CPUs
/// counting at the same instant may lose one increment, never a destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// `CLOCK_BOOTTIME` nanoseconds of the first and latest decision.
    pub first_ns: u64,
    pub last_ns: u64,
    /// Decisions for this destination.
    pub count: u64,
    /// Of those, the ones the rules would have blocked (let through in audit mode).
    pub would_block: u64,
}

/// Indices of the [`crate::maps::OBSERVE_STATS`] totals (per CPU).
pub mod observe_stats {
    /// Destinations entered in the map (entries the LRU evicted since are counted here too:
    /// `recorded` minus the entries left is how many were evicted).
    pub const RECORDED: u32 = 0;
    /// Decisions that found no entry and could not make one (the insert failed).
    pub const LOST: u32 = 1;
    /// Number of totals.
    pub const COUNT: u32 = 2;
}

/// Default entries of [`crate::maps::OBSERVED`] (`blocker run --observe-capacity`): 32,768
/// destinations, 56 bytes each (about 2 MiB with the hash table's overhead).
pub const OBSERVE_CAPACITY: u32 = 32_768;
