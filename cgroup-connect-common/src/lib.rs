//! Everything the BPF programs and userspace share: program and map names, the layout of the
//! rule tables, verdict words, and the decision order. This crate is the only definition of
//! these; both sides import it, so they cannot drift apart.
//!
//! # The rule tables
//!
//! Userspace compiles the rules of each address family into one table: a BPF array of
//! [`Chunk`]s of [`CHUNK_RECORDS`] records each. The data records, numbered across chunks 1,
//! 2, ... (record `g` is at `g % CHUNK_RECORDS` of chunk `1 + g / CHUNK_RECORDS`), are
//!
//! - records `0..n`, the intervals: sorted, non-overlapping address ranges that together cover
//!   the whole address space; each starts at its record's address and ends where the next
//!   begins, and its `word` is either a verdict ([`word::DIRECT`] set) or the number of the
//!   first record of a class;
//! - after them, the classes: runs of entries (`key` = port range, `word` = verdict with an
//!   optional protocol) tried in order; the last entry of a run matches every port and
//!   protocol, so a run always ends in a verdict. No run crosses a chunk boundary.
//!
//! Chunk 0 is the index: its record 0 is the header (`key` = `n`, `word` = the default
//! verdict), and its record `1 + k` is the fence of data chunk `k`: the start of its first
//! interval.
//!
//! A decision is a binary search of the fences, a binary search in one chunk, then at most
//! [`MAX_CLASS_LEN`] entries of a class: see [`decide`]. The lookups are inlined by the
//! verifier (see [`TABLE_CLASSES`]). The whole table is swapped at once (it is an inner map of
//! an array of maps), so every decision sees one policy or the other.
#![no_std]
#![expect(
    clippy::inline_always,
    reason = "the BPF programs inline these into straight-line, verifiable code"
)]

/// The verdict a `cgroup/connect*` or `cgroup/sendmsg*` program returns to let the call proceed.
pub const ALLOW: i32 = 1;
/// The verdict that makes the call fail with `EPERM`.
pub const BLOCK: i32 = 0;

/// Names of the BPF programs, as the kernel and `bpftool prog` show them.
pub mod programs {
    /// `cgroup/connect4`: `connect()` on IPv4 sockets (TCP, UDP), and TCP Fast Open.
    pub const CONNECT4: &str = "check_connect4";
    /// `cgroup/connect6`: `connect()` on IPv6 sockets, including IPv4-mapped destinations.
    pub const CONNECT6: &str = "check_connect6";
    /// `cgroup/sendmsg4`: `sendto()`/`sendmsg()` with a destination on unconnected IPv4 UDP
    /// sockets, and on IPv6 sockets to IPv4-mapped destinations.
    pub const SENDMSG4: &str = "check_sendmsg4";
    /// `cgroup/sendmsg6`: the same on IPv6 UDP sockets.
    pub const SENDMSG6: &str = "check_sendmsg6";
    /// All of them, in the order they are attached.
    pub const ALL: [&str; 4] = [CONNECT4, CONNECT6, SENDMSG4, SENDMSG6];
    /// `cgroup/connect4` that allows everything: the benchmarks' reference, never attached by
    /// the blocker.
    pub const REFERENCE_ALLOW: &str = "reference_allow";
}

/// Names of the BPF maps, as the kernel and `bpftool map` show them.
pub mod maps {
    /// Arrays of maps with one slot each, one per size class ([`crate::TABLE_CLASSES`]): the
    /// IPv4 table ([`crate::V4Record`]s) is in the one [`crate::config::V4_CLASS`] selects.
    pub const RULES_V4: [&str; 5] =
        ["rules_v4_0", "rules_v4_1", "rules_v4_2", "rules_v4_3", "rules_v4_4"];
    /// The same for the IPv6 table ([`crate::V6Record`]s), selected by [`crate::config::V6_CLASS`].
    pub const RULES_V6: [&str; 5] =
        ["rules_v6_0", "rules_v6_1", "rules_v6_2", "rules_v6_3", "rules_v6_4"];
    /// Name given to each IPv4 table userspace creates.
    pub const TABLE_V4: &str = "table_v4";
    /// Name given to each IPv6 table userspace creates.
    pub const TABLE_V6: &str = "table_v6";
    /// Per-CPU array of `u64` totals, indexed by [`crate::stats`].
    pub const STATS: &str = "stats";
    /// LRU per-CPU hash: rule id -> decisions it made (only rules, not the default).
    pub const RULE_HITS: &str = "rule_hits";
    /// Ring buffer of [`crate::Event`]s: blocked attempts, and would-be blocks in audit mode.
    pub const EVENTS: &str = "events";
    /// Array of `u32`s indexed by [`crate::config`]: flags and the table size classes.
    pub const CONFIG: &str = "config";
    /// Every map an instance pins.
    pub const PINNED: [&str; 14] = [
        RULES_V4[0],
        RULES_V4[1],
        RULES_V4[2],
        RULES_V4[3],
        RULES_V4[4],
        RULES_V6[0],
        RULES_V6[1],
        RULES_V6[2],
        RULES_V6[3],
        RULES_V6[4],
        STATS,
        RULE_HITS,
        EVENTS,
        CONFIG,
    ];
}

/// Indices of the [`maps::CONFIG`] words.
pub mod config {
    /// Flags: [`crate::CONFIG_AUDIT`].
    pub const FLAGS: u32 = 0;
    /// The size class that holds the IPv4 table.
    pub const V4_CLASS: u32 = 1;
    /// The size class that holds the IPv6 table.
    pub const V6_CLASS: u32 = 2;
    /// Number of words.
    pub const LEN: u32 = 3;
}

/// Table sizes, in chunks (the index chunk included). A table is created at the smallest
/// class that holds it; each class has its own outer map, whose inner-map template fixes the
/// size, so the verifier inlines every lookup (no helper call per lookup).
///
/// Five classes, four times apart: every class costs the verifier another copy of the search,
/// and a table wastes at most three quarters of its class.
pub const TABLE_CLASSES: [u32; 5] = [2, 8, 32, 128, 512];

/// Indices of the [`maps::STATS`] totals.
pub mod stats {
    /// Decisions that let the call proceed (audit-mode would-be blocks are counted apart).
    pub const ALLOWED: u32 = 0;
    /// Decisions that made the call fail with EPERM.
    pub const BLOCKED: u32 = 1;
    /// Audit mode: decisions that would have blocked, and let the call proceed.
    pub const AUDITED: u32 = 2;
    /// Events that did not fit in the ring buffer.
    pub const EVENTS_LOST: u32 = 3;
    /// Decisions made on a missing or malformed table (failed closed).
    pub const FAILED_CLOSED: u32 = 4;
    /// Number of totals.
    pub const COUNT: u32 = 5;
}

/// [`maps::CONFIG`] flag: judge and report, block nothing.
pub const CONFIG_AUDIT: u32 = 1;
/// Entries of [`maps::RULE_HITS`]: the busiest rules stay, the least recently hit go.
pub const RULE_HITS_CAPACITY: u32 = 16_384;
/// Bytes of the [`maps::EVENTS`] ring buffer (a power of two, a page multiple): about 14,000
/// events; when it is full, events are counted in [`stats::EVENTS_LOST`] and dropped.
pub const EVENTS_BYTES: u32 = 1 << 20;
/// [`Event::rule`] of a decision made on a missing or malformed table.
pub const RULE_FAILED_CLOSED: u32 = u32::MAX;

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
}

/// One blocked (or, in audit mode, would-be blocked) attempt, as the programs write it to the
/// [`maps::EVENTS`] ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `CLOCK_BOOTTIME` nanoseconds.
    pub time_ns: u64,
    /// `bpf_get_current_cgroup_id()`: the inode number of the caller's cgroup directory.
    pub cgroup_id: u64,
    /// Destination address as a number: IPv6 as high and low halves; IPv4 in the low half.
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
    /// `IPPROTO_TCP`, `IPPROTO_UDP`, or what the socket said.
    pub protocol: u8,
    /// [`verdict::BLOCKED`] or [`verdict::AUDIT`].
    pub verdict: u8,
    /// [`hook::CONNECT`] or [`hook::SENDMSG`].
    pub hook: u8,
    pub pad: [u8; 2],
    /// The caller's `comm`, NUL padded.
    pub comm: [u8; 16],
}

/// `BPF_F_MMAPABLE`: userspace writes a whole table with one copy through `mmap`.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;
/// Flags of every table, and of the inner-map templates the BPF object declares. Not
/// `BPF_F_INNER_MAP`: that would let sizes vary, and stop the verifier inlining lookups.
pub const TABLE_FLAGS: u32 = BPF_F_MMAPABLE;

/// IPv4 tables also have a bucket table: for each run of `2^V4_BUCKET_SHIFT` addresses
/// (the top 15 bits of an address), the number of the interval that holds its first address.
/// A decision then searches only between two bucket boundaries.
pub const V4_BUCKET_SHIFT: u32 = 17;
/// Buckets of an IPv4 table; the bucket table has one more entry, the last interval.
pub const V4_BUCKETS: u32 = 1 << (32 - V4_BUCKET_SHIFT);
/// Where the index chunk of an IPv4 table says which chunk its bucket table starts in.
pub const V4_BUCKET_BASE_RECORD: u32 = CHUNK_RECORDS - 1;
/// Chunks the bucket table takes: two `u32` entries a record.
pub const V4_BUCKET_CHUNKS: u32 = (V4_BUCKETS + 1).div_ceil(2).div_ceil(CHUNK_RECORDS);

/// log2 of [`CHUNK_RECORDS`].
pub const CHUNK_BITS: u32 = 14;
/// Records per chunk.
pub const CHUNK_RECORDS: u32 = 1 << CHUNK_BITS;
/// Keeps an index inside a chunk (and shows the verifier that it is).
pub const CHUNK_MASK: u32 = CHUNK_RECORDS - 1;
/// Most data chunks: the largest size class holds them with the index chunk.
pub const MAX_DATA_CHUNKS: u32 = TABLE_CLASSES[TABLE_CLASSES.len() - 1] - 1;
/// Most intervals a table may hold.
pub const MAX_INTERVALS: u32 = CHUNK_RECORDS * MAX_DATA_CHUNKS;
/// Most entries of one class: how many rules with ports or a protocol may cover one address
/// before an unconditional rule (or the default) ends the run.
pub const MAX_CLASS_LEN: u32 = 32;
/// Most rules per address family in one instance.
pub const MAX_RULES_PER_FAMILY: usize = 4 << 20;

/// Verdict words: what an interval or a class entry says.
///
/// Bit 31 ([`DIRECT`]) tells a verdict from a class index; bit 30 ([`BLOCK_BIT`]) blocks;
/// bits 28-29 hold the protocol a class entry needs ([`Proto`]); bits 0-27 the rule id that
/// decided (0 for the default).
pub mod word {
    /// The word is a verdict, not the index of a class.
    pub const DIRECT: u32 = 1 << 31;
    /// The verdict blocks.
    pub const BLOCK_BIT: u32 = 1 << 30;
    /// Where the protocol sits.
    pub const PROTO_SHIFT: u32 = 28;
    /// The protocol bits.
    pub const PROTO_MASK: u32 = 3 << PROTO_SHIFT;
    /// The rule id bits.
    pub const RULE_MASK: u32 = (1 << PROTO_SHIFT) - 1;
    /// Rule id of the default verdict; rules are numbered from 1.
    pub const DEFAULT_RULE: u32 = 0;
    /// Most rules one instance can number.
    pub const MAX_RULE_ID: u32 = RULE_MASK;

    /// A verdict word.
    #[must_use]
    pub const fn verdict(block: bool, proto: super::Proto, rule: u32) -> u32 {
        DIRECT
            | if block { BLOCK_BIT } else { 0 }
            | ((proto as u32) << PROTO_SHIFT)
            | (rule & RULE_MASK)
    }

    /// Whether a verdict word blocks.
    #[must_use]
    pub const fn blocks(word: u32) -> bool {
        word & BLOCK_BIT != 0
    }

    /// The rule that decided.
    #[must_use]
    pub const fn rule(word: u32) -> u32 {
        word & RULE_MASK
    }
}

/// A transport protocol a rule may name.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    /// Any protocol.
    Any = 0,
    /// TCP (`IPPROTO_TCP`).
    Tcp = 1,
    /// UDP (`IPPROTO_UDP`).
    Udp = 2,
}

impl Proto {
    /// The protocol of a socket, from `bpf_sock_addr.protocol` (an `IPPROTO_*` number).
    #[must_use]
    pub const fn from_ip_proto(ip_proto: u32) -> Self {
        match ip_proto {
            6 => Self::Tcp,
            17 => Self::Udp,
            _ => Self::Any,
        }
    }

    const fn from_word(word: u32) -> Self {
        match (word & word::PROTO_MASK) >> word::PROTO_SHIFT {
            1 => Self::Tcp,
            2 => Self::Udp,
            _ => Self::Any,
        }
    }
}

/// An inclusive port range packed in a record key: low port in the high half.
#[must_use]
pub const fn pack_ports(lo: u16, hi: u16) -> u32 {
    ((lo as u32) << 16) | hi as u32
}

/// The key of a class entry that matches every port.
pub const ALL_PORTS: u32 = pack_ports(0, u16::MAX);

/// Whether a class entry (`key` = ports, `word` = verdict) matches a port and protocol.
#[must_use]
#[expect(clippy::cast_possible_truncation, reason = "unpacks two u16 halves")]
pub const fn entry_matches(key: u32, word: u32, port: u16, proto: Proto) -> bool {
    let lo = (key >> 16) as u16;
    let hi = key as u16;
    let wanted = Proto::from_word(word);
    port >= lo && port <= hi && (matches!(wanted, Proto::Any) || wanted as u32 == proto as u32)
}

/// The rank of a rule: among the rules that match a destination, the highest rank decides.
///
/// The order is the one the README documents: the longest prefix wins; at equal length a rule
/// with a port beats one without, then a rule with a protocol beats one without, then block
/// beats allow. Fields are compared in declaration order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rank {
    /// Prefix length (an address is /32 or /128).
    pub prefix_len: u8,
    /// The rule names a port or port range.
    pub has_port: bool,
    /// The rule names a protocol.
    pub has_proto: bool,
    /// The rule blocks.
    pub block: bool,
}

/// One record of a table: see the crate docs for what `key` and `word` hold in each part.
pub trait Record {
    /// An address of this family, ordered as numbers.
    type Addr: Ord + Copy;
    /// Where the interval of this record starts.
    fn start(&self) -> Self::Addr;
    /// The header's interval count, or a class entry's packed ports.
    fn key(&self) -> u32;
    /// A verdict word or a class index.
    fn word(&self) -> u32;
}

/// One element of a table: [`CHUNK_RECORDS`] records.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk<R> {
    pub records: [R; CHUNK_RECORDS as usize],
}

impl<R> Chunk<R> {
    /// The record at `i % CHUNK_RECORDS`: the mask keeps the access in bounds for the verifier.
    #[inline(always)]
    pub fn at(&self, i: u32) -> &R {
        &self.records[(i & CHUNK_MASK) as usize]
    }
}

/// A record of the IPv4 table. `key` is also the interval's first address (as a number).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct V4Record {
    pub key: u32,
    pub word: u32,
}

/// A record of the IPv6 table: the interval's first address is `hi:lo` (as a number).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct V6Record {
    pub hi: u64,
    pub lo: u64,
    pub key: u32,
    pub word: u32,
}

impl Record for V4Record {
    type Addr = u32;
    fn start(&self) -> u32 {
        self.key
    }
    fn key(&self) -> u32 {
        self.key
    }
    fn word(&self) -> u32 {
        self.word
    }
}

impl Record for V6Record {
    type Addr = (u64, u64);
    fn start(&self) -> (u64, u64) {
        (self.hi, self.lo)
    }
    fn key(&self) -> u32 {
        self.key
    }
    fn word(&self) -> u32 {
        self.word
    }
}

/// The verdict word for a destination, from a table whose chunks are read through `get` (a
/// map lookup in the BPF programs, a slice index in userspace and tests).
///
/// Returns `None` only for a malformed table (a missing chunk, a class without its final
/// entry): the programs then fail closed.
#[inline(always)]
pub fn decide<'a, R: Record + 'a>(
    get: impl Fn(u32) -> Option<&'a Chunk<R>>,
    addr: R::Addr,
    port: u16,
    proto: Proto,
) -> Option<u32> {
    let index = get(0)?;
    let count = index.at(0).key();
    if count == 0 {
        return None;
    }
    // Interval 0 starts at address 0, so the searches below always find one.
    // Fence 0's word is always 0, but the verifier cannot know it: starting the searches from
    // it keeps the verifier from following every path of a search with exact constants.
    let zero = index.at(1).word();
    let chunks = count.div_ceil(CHUNK_RECORDS);
    let c = last_at_or_below(|k| index.at(1 + k).start(), zero, chunks, addr)?;
    let chunk = get(1 + c)?;
    let in_chunk = if c + 1 == chunks { count - c * CHUNK_RECORDS } else { CHUNK_RECORDS };
    let i = last_at_or_below(|k| chunk.at(k).start(), zero, in_chunk, addr)?;
    let word = chunk.at(i).word();
    if word & word::DIRECT != 0 {
        return Some(word);
    }
    let class = get(1 + (word >> CHUNK_BITS))?;
    let first = word & CHUNK_MASK;
    for k in 0..MAX_CLASS_LEN {
        let entry = class.at(first + k);
        if entry_matches(entry.key(), entry.word(), port, proto) {
            return Some(entry.word());
        }
    }
    None
}

/// [`decide`] for IPv4 tables, through their bucket table: the interval that holds `addr` is
/// between the buckets' boundaries, found in a few steps for rules spread over the address
/// space, and never more steps than [`decide`] takes.
#[inline(always)]
pub fn decide_v4<'a>(
    get: impl Fn(u32) -> Option<&'a Chunk<V4Record>>,
    addr: u32,
    port: u16,
    proto: Proto,
) -> Option<u32> {
    let index = get(0)?;
    let count = index.at(0).key;
    if count == 0 {
        return None;
    }
    // As in decide: a word that is always 0, unknown to the verifier.
    let zero = index.at(1).word;
    let base = index.at(V4_BUCKET_BASE_RECORD).key;
    let bucket = |b: u32| -> Option<u32> {
        let record = get(base + (b >> 1 >> CHUNK_BITS))?.at(b >> 1);
        Some(if b & 1 == 0 { record.key } else { record.word })
    };
    let b = addr >> V4_BUCKET_SHIFT;
    let first = bucket(b)?;
    let last = bucket(b + 1)?;
    if last < first || last >= count {
        return None;
    }
    // The last interval in first..=last whose start is <= addr; `first`'s start is.
    let mut lo = first + zero;
    let mut len = last - first + 1;
    for _ in 0..MAX_SEARCH_STEPS {
        if len <= 1 {
            break;
        }
        let half = len / 2;
        let mid = lo + half;
        if get(1 + (mid >> CHUNK_BITS))?.at(mid).key <= addr {
            lo = mid;
        }
        len -= half;
    }
    if len != 1 {
        return None;
    }
    let word = get(1 + (lo >> CHUNK_BITS))?.at(lo).word;
    if word & word::DIRECT != 0 {
        return Some(word);
    }
    let class = get(1 + (word >> CHUNK_BITS))?;
    let first_entry = word & CHUNK_MASK;
    for k in 0..MAX_CLASS_LEN {
        let entry = class.at(first_entry + k);
        if entry_matches(entry.key, entry.word, port, proto) {
            return Some(entry.word);
        }
    }
    None
}

/// Steps of the IPv4 bucket search: enough for every interval a table may hold.
pub const MAX_SEARCH_STEPS: u32 = 24;

/// The last `k` in `0..len` with `key(k) <= addr`, for keys sorted ascending and
/// `key(0) <= addr`, in at most [`CHUNK_BITS`] steps; `None` if `len` is 0 or too large.
/// `zero` must be 0 (see [`decide`]).
#[inline(always)]
fn last_at_or_below<A: Ord + Copy>(
    key: impl Fn(u32) -> A,
    zero: u32,
    len: u32,
    addr: A,
) -> Option<u32> {
    let mut base = zero;
    let mut len = len;
    for _ in 0..=CHUNK_BITS {
        if len <= 1 {
            break;
        }
        let half = len / 2;
        if key(base + half) <= addr {
            base += half;
        }
        len -= half;
    }
    (len == 1).then_some(base - zero)
}

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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_orders_prefix_then_port_then_proto_then_block() {
        let r = |prefix_len, has_port, has_proto, block| Rank {
            prefix_len,
            has_port,
            has_proto,
            block,
        };
        // Longest prefix first, whatever else.
        assert!(r(24, false, false, false) > r(16, true, true, true));
        // Equal length: a port beats a protocol and block.
        assert!(r(24, true, false, false) > r(24, false, true, true));
        // Then a protocol beats block.
        assert!(r(24, false, true, false) > r(24, false, false, true));
        // Then block beats allow.
        assert!(r(24, false, false, true) > r(24, false, false, false));
    }

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
    fn entries_match_port_and_protocol() {
        let tcp_443 = word::verdict(true, Proto::Tcp, 7);
        assert!(entry_matches(pack_ports(443, 443), tcp_443, 443, Proto::Tcp));
        assert!(!entry_matches(pack_ports(443, 443), tcp_443, 443, Proto::Udp));
        assert!(!entry_matches(pack_ports(443, 443), tcp_443, 444, Proto::Tcp));
        let any = word::verdict(false, Proto::Any, 0);
        assert!(entry_matches(ALL_PORTS, any, 0, Proto::Udp));
        assert!(entry_matches(ALL_PORTS, any, u16::MAX, Proto::Any));
        assert_eq!(word::rule(tcp_443), 7);
        assert!(word::blocks(tcp_443) && !word::blocks(any));
    }

    extern crate std;
    use std::{boxed::Box, vec, vec::Vec};

    /// Chunks holding `records` in order after an index chunk with the header and fences.
    #[expect(clippy::large_stack_arrays, reason = "test chunks are built on the stack, then boxed")]
    fn chunks(count: u32, default: u32, records: &[V4Record]) -> Vec<Box<Chunk<V4Record>>> {
        let empty = || Box::new(Chunk { records: [V4Record::default(); CHUNK_RECORDS as usize] });
        let mut index = empty();
        index.records[0] = V4Record { key: count, word: default };
        let mut out = vec![];
        for (k, part) in records.chunks(CHUNK_RECORDS as usize).enumerate() {
            let mut c = empty();
            c.records[..part.len()].copy_from_slice(part);
            index.records[1 + k] = part[0];
            out.push(c);
        }
        out.insert(0, index);
        out
    }

    /// 10.0.0.0/8 blocks, except TCP port 443 there; default allow.
    #[test]
    fn decide_walks_intervals_and_classes() {
        let allow = word::verdict(false, Proto::Any, 0);
        let block = word::verdict(true, Proto::Any, 1);
        let allow_443 = word::verdict(false, Proto::Tcp, 2);
        let table = chunks(
            3,
            allow,
            &[
                V4Record { key: 0, word: allow },           // [0, 10.0.0.0)
                V4Record { key: 0x0a00_0000, word: 3 }, // [10.0.0.0, 11.0.0.0): class at record 3
                V4Record { key: 0x0b00_0000, word: allow }, // [11.0.0.0, ...]
                V4Record { key: pack_ports(443, 443), word: allow_443 },
                V4Record { key: ALL_PORTS, word: block },
            ],
        );
        let get = |i: u32| table.get(i as usize).map(|c| &**c);
        assert_eq!(decide(get, 0x0a01_0203, 80, Proto::Tcp), Some(block));
        assert_eq!(decide(get, 0x0a01_0203, 443, Proto::Tcp), Some(allow_443));
        assert_eq!(decide(get, 0x0a01_0203, 443, Proto::Udp), Some(block));
        assert_eq!(decide(get, 0x09ff_ffff, 443, Proto::Udp), Some(allow));
        assert_eq!(decide(get, 0x0b00_0000, 1, Proto::Tcp), Some(allow));
        assert_eq!(decide(get, u32::MAX, 1, Proto::Tcp), Some(allow));
        assert_eq!(decide(get, 0, 1, Proto::Tcp), Some(allow));
    }

    /// Intervals across several chunks: every start finds itself.
    #[test]
    fn decide_crosses_chunks() {
        let n = 3 * CHUNK_RECORDS + 5;
        let records: Vec<V4Record> = (0..n)
            .map(|i| V4Record { key: i * 16, word: word::verdict(i % 2 == 0, Proto::Any, i) })
            .collect();
        let table = chunks(n, 0, &records);
        let get = |i: u32| table.get(i as usize).map(|c| &**c);
        for i in [0, 1, CHUNK_RECORDS - 1, CHUNK_RECORDS, 2 * CHUNK_RECORDS + 7, n - 1] {
            assert_eq!(decide(get, i * 16, 1, Proto::Tcp).map(word::rule), Some(i), "start of {i}");
            assert_eq!(
                decide(get, i * 16 + 15, 1, Proto::Tcp).map(word::rule),
                Some(i),
                "end of {i}"
            );
        }
    }

    #[test]
    fn malformed_tables_give_none() {
        let get = |_: u32| -> Option<&Chunk<V4Record>> { None };
        assert_eq!(decide(get, 1, 1, Proto::Tcp), None);
        // A class without its final entry.
        let table = chunks(1, 0, &[V4Record { key: 0, word: 1 }]);
        assert_eq!(decide(|i| table.get(i as usize).map(|c| &**c), 5, 1, Proto::Tcp), None);
    }
}
