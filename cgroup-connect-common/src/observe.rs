//! Observe mode (`blocker run --audit`): what the programs record of every decision, allowed
//! or would-be blocked, for `blocker learn`. One entry per destination (family, address
//! reached, port, protocol) in the [`crate::maps::OBSERVED`] LRU hash, with when it was first
//! and last seen and how often; [`crate::maps::OBSERVE_STATS`] counts what was recorded and
//! what could not be. In front of the hash, each CPU keeps the destinations it judged last in
//! [`crate::maps::OBSERVE_CACHE`] ([`ObserveSet`]s): a decision for one of them only counts
//! in its slot, and a slot's destination goes into the hash when another takes the slot. A
//! destination's record is the hash's entry merged ([`Observed::merge`]) with every CPU's slot
//! that holds it.

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

/// What observe mode knows of one destination. The programs count in a CPU's own slot and add
/// a slot's counts to the hash's entry atomically, so no increment is lost between CPUs.
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

impl Observed {
    /// Adds `other`, a record of the same destination: counts summed, the earlier first and the
    /// later last time kept.
    pub fn merge(&mut self, other: &Self) {
        self.first_ns = self.first_ns.min(other.first_ns);
        self.last_ns = self.last_ns.max(other.last_ns);
        self.count += other.count;
        self.would_block += other.would_block;
    }
}

/// A slot of a CPU's cache of the destinations it judged last: a destination and what the CPU
/// saw of it since it took the slot. Empty while `seen.count` is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObserveSlot {
    pub key: ObservedKey,
    pub seen: Observed,
    /// The kernel's jiffies when `seen.last_ns` was read: a decision in the same jiffy keeps
    /// that time instead of reading the clock again, so `last_ns` is the time of the first
    /// decision in the jiffy of the last one (at most a jiffy, 1 to 10 ms, early).
    pub clock_jiffies: u64,
}

/// An element of [`crate::maps::OBSERVE_CACHE`] (a per-CPU array of [`OBSERVE_SETS`]): the two
/// slots a destination may take ([`observe_set`] picks the set). A new destination takes the
/// slot seen less recently, so two destinations of one set do not push each other out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObserveSet {
    pub ways: [ObserveSlot; 2],
}

/// Sets of each CPU's cache: 256 of two 64-byte slots (32 KiB a CPU, 512 destinations).
pub const OBSERVE_SETS: u32 = 1 << OBSERVE_SET_BITS;
const OBSERVE_SET_BITS: u32 = 8;

/// The set of `key` in a CPU's cache: the top bits of a multiplicative (Fibonacci) hash of its
/// fields, so destinations differing only in their low address bits or port spread.
#[must_use]
#[inline(always)]
pub fn observe_set(key: &ObservedKey) -> u32 {
    let tail = u64::from(key.port) << 16 | u64::from(key.family) << 8 | u64::from(key.protocol);
    let mixed = key.addr_lo ^ key.addr_hi.rotate_left(29) ^ tail << 40;
    (mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - OBSERVE_SET_BITS)) as u32
}

/// Indices of the [`crate::maps::OBSERVE_STATS`] totals (per CPU).
pub mod observe_stats {
    /// Destinations entered in the map (entries the LRU evicted since are counted here too:
    /// `recorded` minus the entries left is how many were evicted).
    pub const RECORDED: u32 = 0;
    /// Decisions that could not be entered in the map: those of a CPU's slot whose
    /// destination had no entry and could not get one (the insert failed).
    pub const LOST: u32 = 1;
    /// Number of totals.
    pub const COUNT: u32 = 2;
}

/// Default entries of [`crate::maps::OBSERVED`] (`blocker run --observe-capacity`): 32,768
/// destinations, 56 bytes each (about 2 MiB with the hash table's overhead).
pub const OBSERVE_CAPACITY: u32 = 32_768;

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn merge_sums_counts_and_keeps_the_outer_times() {
        let mut a = Observed { first_ns: 10, last_ns: 20, count: 3, would_block: 1 };
        a.merge(&Observed { first_ns: 5, last_ns: 15, count: 2, would_block: 2 });
        assert_eq!(a, Observed { first_ns: 5, last_ns: 20, count: 5, would_block: 3 });
        a.merge(&Observed { first_ns: 30, last_ns: 40, count: 1, would_block: 0 });
        assert_eq!(a, Observed { first_ns: 5, last_ns: 40, count: 6, would_block: 3 });
    }

    #[test]
    fn neighbouring_destinations_spread_over_the_sets() {
        let key = |addr_lo, port| ObservedKey {
            addr_lo,
            port,
            family: 4,
            protocol: 6,
            ..ObservedKey::default()
        };
        let hosts: std::collections::BTreeSet<u32> =
            (0..256).map(|k| observe_set(&key(0x0a00_0000 + k, 443))).collect();
        let ports: std::collections::BTreeSet<u32> =
            (0..256).map(|p| observe_set(&key(0x0a00_0001, 1024 + p))).collect();
        assert!(hosts.iter().chain(&ports).all(|&s| s < OBSERVE_SETS));
        // A random spread fills about 63% of the sets; a poor hash would fill a few.
        assert!(hosts.len() > 140 && ports.len() > 140, "{} {}", hosts.len(), ports.len());
    }
}
