//! Everything the BPF programs and userspace share, and the only definition of it: both sides
//! import this crate, so they cannot drift apart.
//!
//! - [`names`]: program and map names, map sizes, the config words and stats totals;
//! - [`event`]: what the programs report of a blocked attempt;
//! - [`table`]: the layout of the rule tables and their size classes;
//! - [`word`]: verdict words and the protocol a rule may name;
//! - [`decision`]: the decision order and the table search the programs run;
//! - [`sock_addr`]: the destination's address and port, from network byte order; the peer
//!   when a send names none; where `0.0.0.0` and `::` go; IPv4-mapped and NAT64 addresses.
//! - [`observe`]: what observe mode records of each destination;
//! - [`dns`]: the DNS redirect's shared types;
//! - [`packet`]: which packets the packet checks judge, and how they read their headers.
//!
//! Every item is also exported at the crate root.
#![no_std]
#![expect(
    clippy::inline_always,
    reason = "the BPF programs inline these into straight-line, verifiable code"
)]

pub mod decision;
pub mod dns;
pub mod event;
pub mod names;
pub mod observe;
pub mod packet;
pub mod sock_addr;
pub mod table;
pub mod word;

pub use decision::{
    MAX_SEARCH_STEPS, Rank, decide, decide_v4, decide_v6, entry_matches, interval_v4,
};
pub use event::{Event, RULE_FAILED_CLOSED, RULE_REFUSED_SHAPE, hook, verdict};
pub use names::{
    CONFIG_AUDIT, DNS_ORIGINS_CAPACITY, EVENTS_BYTES, TABLE_LAYOUT, config, maps, programs, stats,
};
pub use observe::{
    OBSERVE_CAPACITY, OBSERVE_SETS, ObserveSet, ObserveSlot, Observed, ObservedKey, observe_set,
    observe_stats,
};
pub use sock_addr::{
    LOOPBACK4, LOOPBACK6, MAPPED_LOOPBACK4, MAX_NAT64_PREFIXES, NAT64_WELL_KNOWN, Source,
    ip4_from_user, ip6_from_user, judge_reached, mapped_ip4, nat64_ip4, or_peer, port_from_user,
    reached_v4, reached_v6,
};
pub use table::{
    ALL_PORTS, BPF_F_MMAPABLE, CHUNK_BITS, CHUNK_MASK, CHUNK_RECORDS, Chunk, HIT_CLASSES, HitCount,
    MAX_CLASS_LEN, MAX_DATA_CHUNKS, MAX_INTERVALS, MAX_RULES_PER_FAMILY, Record, TABLE_CLASSES,
    TABLE_FLAGS, V4_BUCKET_BASE_RECORD, V4_BUCKET_CHUNKS, V4_BUCKET_SHIFT, V4_BUCKETS,
    V4_CHUNK_BUCKET_BITS, V4_KEY_BITS, V4_KEYS, V4_LOOPBACK_RECORD, V4_SLOT_BITS, V4_SLOTS,
    V4Record, V6_BUCKET_BITS, V6_BUCKET_CHUNKS, V6_BUCKET_MAX_PREFIX, V6_BUCKET_RECORD, V6_BUCKETS,
    V6Record, pack_ports,
};
pub use word::Proto;

/// The verdict a `cgroup/connect*` or `cgroup/sendmsg*` program returns to let the call proceed.
pub const ALLOW: i32 = 1;
/// The verdict that makes the call fail with `EPERM`.
pub const BLOCK: i32 = 0;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data without padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::V4Record {}
    // SAFETY: as above (8 + 8 + 4 + 4 bytes, 8-aligned, no padding).
    unsafe impl aya::Pod for super::V6Record {}
    // SAFETY: arrays of the records above.
    unsafe impl aya::Pod for super::Chunk<super::V4Record> {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Chunk<super::V6Record> {}
    // SAFETY: #[repr(C)], explicit padding, every bit pattern valid.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: #[repr(C)], explicit padding (8 + 8 + 2 + 1 + 1 + 4 bytes), every bit pattern valid.
    unsafe impl aya::Pod for super::ObservedKey {}
    // SAFETY: #[repr(C)], four u64s.
    unsafe impl aya::Pod for super::Observed {}
    // SAFETY: #[repr(C)], the two above and a u64 (24 + 32 + 8 bytes, 8-aligned, no padding).
    unsafe impl aya::Pod for super::ObserveSlot {}
    // SAFETY: #[repr(C)], an array of the above.
    unsafe impl aya::Pod for super::ObserveSet {}
    // SAFETY: one u64.
    unsafe impl aya::Pod for super::HitCount {}
    // SAFETY: #[repr(C)], two u32s, every bit pattern valid.
    unsafe impl aya::Pod for super::dns::Origin {}
    // SAFETY: #[repr(C)], two u64s.
    unsafe impl aya::Pod for super::dns::LearnedKey {}
    // SAFETY: #[repr(C)], a u64 and 16 u32s (72 bytes, 8-aligned, no padding).
    unsafe impl aya::Pod for super::dns::LearnedClass {}
}
