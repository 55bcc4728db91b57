//! Compiles rules into the per-family tables the BPF programs search (layout in the common
//! crate's docs): sorted, non-overlapping intervals that cover the address space, each with a
//! verdict or a class of port/protocol entries in decision order.
//!
//! CIDR prefixes nest or are disjoint, so one sweep in address order with a stack of the
//! prefixes that contain the current position finds, for every interval, the rules that cover
//! it; their order is [`Rank`]'s, the one documented for operators.
use std::{collections::HashMap, net::IpAddr};

use cgroup_connect_common::{
    ALL_PORTS, CHUNK_RECORDS, Chunk, MAX_CLASS_LEN, MAX_INTERVALS, MAX_RULES_PER_FAMILY, Proto,
    Rank, Record, TABLE_CLASSES, V4_BUCKET_BASE_RECORD, V4_BUCKET_CHUNKS, V4_BUCKET_SHIFT,
    V4_BUCKETS, V4_CHUNK_BUCKET_BITS, V4_KEYS, V4_LOOPBACK_RECORD, V4_SLOTS, V4Record,
    V6_BUCKET_BITS, V6_BUCKET_CHUNKS, V6_BUCKET_MAX_PREFIX, V6_BUCKET_RECORD, V6_BUCKETS, V6Record,
    interval_v4, pack_ports, word,
};
use ipnet::IpNet;

use crate::rules::{Action, Nat64Prefix, Ports};

/// One rule as the compiler sees it: a concrete prefix (hostnames already resolved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableRule {
    pub net: IpNet,
    pub ports: Option<Ports>,
    pub proto: Proto,
    pub action: Action,
    /// The rule's id, reported by events and counters; 0 is the default.
    pub id: u32,
}

impl TableRule {
    /// Its place in the decision order: the higher rank decides.
    #[must_use]
    pub fn rank(&self) -> Rank {
        Rank {
            prefix_len: self.net.prefix_len(),
            has_port: self.ports.is_some(),
            has_proto: self.proto != Proto::Any,
            block: self.action == Action::Block,
        }
    }
}

/// Why rules could not be compiled: capacity limits, all checked before anything attaches.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error(
        "{count} {family} rules exceed the capacity of {MAX_RULES_PER_FAMILY} per address family"
    )]
    TooManyRules { family: &'static str, count: usize },
    #[error(
        "the {family} rules make {count} intervals, more than the {max} an {family} table holds \
         (a rule apart from the others takes two; rules that touch or nest take fewer)"
    )]
    TooManyIntervals { family: &'static str, count: usize, max: u32 },
    #[error(
        "the {family} rules' intervals and port classes take {chunks} chunks of \
         {CHUNK_RECORDS} records, more than the {max} an {family} table holds"
    )]
    TooManyChunks { family: &'static str, chunks: usize, max: u32 },
    #[error(
        "{count} rules with ports or protocols cover {net} (at most {MAX_CLASS_LEN}): \
         merge port ranges or add a plain rule for {net}"
    )]
    ClassTooLong { net: IpNet, count: usize },
    #[error("rule id {id} is larger than the most an instance can number ({})", word::MAX_RULE_ID)]
    RuleId { id: u32 },
}

/// Both families' tables, ready to write: chunk 0 is the index, then the data chunks.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tables {
    pub v4: Vec<Chunk<V4Record>>,
    pub v6: Vec<Chunk<V6Record>>,
    /// Rules (resolved prefixes) per family.
    pub v4_rules: usize,
    pub v6_rules: usize,
    /// The highest rule id in either table: the hit counters cover ids up to it.
    pub max_rule_id: u32,
    /// NAT64 prefixes besides the well-known one, judged by the IPv4 table (written to the
    /// config words with the tables).
    pub nat64: Vec<Nat64Prefix>,
}

/// The verdict word of the default action.
fn default_word(default: Action) -> u32 {
    word::verdict(default == Action::Block, Proto::Any, word::DEFAULT_RULE)
}

/// Compiles `rules` with `default` for destinations no rule matches.
///
/// # Errors
/// A [`TableError`] when a capacity limit is exceeded.
///
/// # Panics
/// Never: sizes are checked against the limits before they are narrowed.
pub fn compile(
    default: Action,
    rules: impl IntoIterator<Item = TableRule>,
) -> Result<Tables, TableError> {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    let mut max_rule_id = 0;
    for rule in rules {
        if rule.id > word::MAX_RULE_ID {
            return Err(TableError::RuleId { id: rule.id });
        }
        max_rule_id = max_rule_id.max(rule.id);
        let spec = Spec::new(&rule);
        if rule.net.addr().is_ipv4() { v4.push(spec.v4()) } else { v6.push(spec) }
    }
    let (v4_rules, v6_rules) = (v4.len(), v6.len());
    let dw = default_word(default);
    let mut v4 =
        compile_family("IPv4", u128::from(u32::MAX), V4_MAX_INTERVALS, dw, v4)?.into_v4_chunks(dw);
    let mut v6 = compile_family("IPv6", u128::MAX, V6_MAX_INTERVALS, dw, v6)?.into_chunks(
        |start, key, word| {
            let (hi, lo) = halves(start);
            V6Record { hi, lo, key: if key == START { 0 } else { key }, word }
        },
        dw,
    );
    add_v6_buckets(&mut v6);
    v4[0].records[V4_LOOPBACK_RECORD as usize].word = loopback_word(&v4);
    let most = *TABLE_CLASSES.last().expect("classes");
    for (family, chunks) in [("IPv4", v4.len()), ("IPv6", v6.len())] {
        if chunks > most as usize {
            return Err(TableError::TooManyChunks { family, chunks, max: most });
        }
    }
    Ok(Tables { v4, v6, v4_rules, v6_rules, max_rule_id, nat64: Vec::new() })
}

/// Most intervals of an IPv4 table: as many as an IPv6 one. Packed, they take 6 bytes each
/// (a word and a two-byte key), so the largest class holds them with room to spare.
const V4_MAX_INTERVALS: u32 = MAX_INTERVALS;

/// Most intervals of an IPv6 table: its bucket table takes three chunks.
const V6_MAX_INTERVALS: u32 = MAX_INTERVALS - V6_BUCKET_CHUNKS * CHUNK_RECORDS;

/// A rule reduced to what the sweep needs: 16 bytes for IPv4 (its start a `u32`), 32 for IPv6
/// (a million rules make a million, alive beside the policy while the tables compile). Its
/// last address and its prefix follow from its start and prefix length ([`Spec::end`],
/// [`Spec::net`]).
#[derive(Clone, Copy, Debug)]
struct Spec<A = u128> {
    start: A,
    rank: Rank,
    /// Class entry: packed ports and verdict word.
    entry: Entry,
}

impl Spec {
    /// The same rule with an IPv4 start.
    fn v4(self) -> Spec<u32> {
        let start = u32::try_from(self.start).expect("IPv4 addresses fit u32");
        Spec { start, rank: self.rank, entry: self.entry }
    }

    fn new(rule: &TableRule) -> Self {
        let start = match rule.net {
            IpNet::V4(n) => u128::from(u32::from(n.network())),
            IpNet::V6(n) => u128::from(n.network()),
        };
        let ports = rule.ports.map_or(ALL_PORTS, |p| pack_ports(p.lo, p.hi));
        let entry = (ports, word::verdict(rule.action == Action::Block, rule.proto, rule.id));
        Self { start, rank: rule.rank(), entry }
    }
}

impl<A: Copy + Into<u128>> Spec<A> {
    /// Its last address, in the family whose last address is `max`.
    fn end(&self, max: u128) -> u128 {
        self.start.into() | max.checked_shr(u32::from(self.rank.prefix_len)).unwrap_or(0)
    }

    /// Its prefix, in the family whose last address is `max`.
    fn net(&self, max: u128) -> IpNet {
        let len = self.rank.prefix_len;
        let start: u128 = self.start.into();
        let net = match u32::try_from(start) {
            Ok(v4) if max == u128::from(u32::MAX) => {
                IpNet::new(std::net::Ipv4Addr::from(v4).into(), len)
            }
            _ => IpNet::new(std::net::Ipv6Addr::from(start).into(), len),
        };
        net.expect("a rule's prefix length fits its family")
    }
}

/// An IPv6 address as the (high, low) halves the table stores.
#[expect(clippy::cast_possible_truncation, reason = "splits 128 bits into two 64-bit halves")]
fn halves(n: u128) -> (u64, u64) {
    ((n >> 64) as u64, n as u64)
}

/// A class entry: packed ports and verdict word.
type Entry = (u32, u32);

/// A prefix that contains the sweep's position: where it ends, its class, its slot.
struct Frame {
    end: u128,
    class: Vec<Entry>,
    slot: Slot,
}

/// Marks an interval record, whose key is its start address.
const START: u32 = u32::MAX;

/// What an interval holds before record indices are known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Direct(u32),
    Class(u32),
}

/// The intervals the sweep emits: their starts, as wide as the family's addresses, and their
/// slots, in two arrays (a million IPv4 rules make up to two million intervals: 12 bytes each,
/// not the 32 of a `(u128, Slot)`).
struct Intervals {
    starts: Starts,
    slots: Vec<Slot>,
}

enum Starts {
    V4(Vec<u32>),
    V6(Vec<u128>),
}

impl Intervals {
    /// One interval from address 0 holding `slot`.
    fn new(v4: bool, slot: Slot) -> Self {
        let starts = if v4 { Starts::V4(Vec::new()) } else { Starts::V6(Vec::new()) };
        let mut this = Self { starts, slots: Vec::new() };
        this.push(0, slot);
        this
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    fn start(&self, i: usize) -> u128 {
        match &self.starts {
            Starts::V4(s) => u128::from(s[i]),
            Starts::V6(s) => s[i],
        }
    }

    fn push(&mut self, at: u128, slot: Slot) {
        match &mut self.starts {
            Starts::V4(s) => s.push(u32::try_from(at).expect("an IPv4 address")),
            Starts::V6(s) => s.push(at),
        }
        self.slots.push(slot);
    }

    /// An interval from `at` holding `slot`; it replaces the last one if that starts there.
    fn emit(&mut self, at: u128, slot: Slot) {
        match self.len().checked_sub(1) {
            Some(last) if self.start(last) == at => self.slots[last] = slot,
            _ => self.push(at, slot),
        }
    }

    /// Merges each interval into the one before it when both hold the same slot.
    fn merge_equal(&mut self) {
        let mut kept = 0;
        for i in 0..self.len() {
            if kept > 0 && self.slots[kept - 1] == self.slots[i] {
                continue;
            }
            self.slots[kept] = self.slots[i];
            match &mut self.starts {
                Starts::V4(s) => s[kept] = s[i],
                Starts::V6(s) => s[kept] = s[i],
            }
            kept += 1;
        }
        self.slots.truncate(kept);
        match &mut self.starts {
            Starts::V4(s) => s.truncate(kept),
            Starts::V6(s) => s.truncate(kept),
        }
    }
}

struct Compiled {
    intervals: Intervals,
    classes: Vec<Vec<Entry>>,
}

fn is_unconditional(entry: Entry) -> bool {
    entry.0 == ALL_PORTS && entry.1 & word::PROTO_MASK == 0
}

fn compile_family<A: Copy + Ord + Into<u128>>(
    family: &'static str,
    max: u128,
    max_intervals: u32,
    default: u32,
    mut specs: Vec<Spec<A>>,
) -> Result<Compiled, TableError> {
    if specs.len() > MAX_RULES_PER_FAMILY {
        return Err(TableError::TooManyRules { family, count: specs.len() });
    }
    // Address order; a prefix before the longer ones it contains; within a prefix, rank order.
    specs.sort_unstable_by(|a, b| {
        a.start
            .cmp(&b.start)
            .then(a.rank.prefix_len.cmp(&b.rank.prefix_len))
            .then(b.rank.cmp(&a.rank))
    });
    let v4 = max == u128::from(u32::MAX);
    let mut out =
        Compiled { intervals: Intervals::new(v4, Slot::Direct(default)), classes: Vec::new() };
    let mut interned: HashMap<Vec<Entry>, u32> = HashMap::new();
    let mut stack: Vec<Frame> = Vec::new();
    let default_class = vec![(ALL_PORTS, default)];
    let pop_until = |stack: &mut Vec<Frame>, intervals: &mut Intervals, before: Option<u128>| {
        while let Some(&Frame { end, .. }) = stack.last() {
            if before.is_some_and(|b| end >= b) {
                break;
            }
            stack.pop();
            if end < max {
                intervals.emit(end + 1, stack.last().map_or(Slot::Direct(default), |f| f.slot));
            }
        }
    };
    let mut i = 0;
    while i < specs.len() {
        let Spec { start: at, rank, .. } = specs[i];
        let (start, end) = (at.into(), specs[i].end(max));
        let group_end = specs[i..]
            .iter()
            .position(|s| s.start != at || s.rank.prefix_len != rank.prefix_len)
            .map_or(specs.len(), |n| i + n);
        pop_until(&mut stack, &mut out.intervals, Some(start));
        let parent = stack.last().map_or(&default_class, |f| &f.class);
        let mut class: Vec<Entry> = Vec::new();
        for entry in specs[i..group_end].iter().map(|s| s.entry).chain(parent.iter().copied()) {
            class.push(entry);
            if is_unconditional(entry) {
                break;
            }
        }
        if class.len() > MAX_CLASS_LEN as usize {
            return Err(TableError::ClassTooLong {
                net: specs[i].net(max),
                count: class.len() - 1,
            });
        }
        let slot = if class.len() == 1 {
            Slot::Direct(class[0].1)
        } else {
            let next = u32::try_from(out.classes.len()).expect("classes fewer than intervals");
            let id = *interned.entry(class.clone()).or_insert_with(|| {
                out.classes.push(class.clone());
                next
            });
            Slot::Class(id)
        };
        out.intervals.emit(start, slot);
        stack.push(Frame { end, class, slot });
        i = group_end;
    }
    pop_until(&mut stack, &mut out.intervals, None);
    out.intervals.merge_equal();
    if out.intervals.len() > max_intervals as usize {
        return Err(TableError::TooManyIntervals {
            family,
            count: out.intervals.len(),
            max: max_intervals,
        });
    }
    Ok(out)
}

impl Compiled {
    /// The index chunk, then the data chunks, with records made by `record(start, key, word)`.
    fn into_chunks<R: Record + aya::Pod>(
        self,
        record: impl Fn(u128, u32, u32) -> R,
        default: u32,
    ) -> Vec<Chunk<R>> {
        let chunk_len = CHUNK_RECORDS as usize;
        let n = self.intervals.len();
        // Classes follow the intervals; one that would cross a chunk boundary starts the next.
        let mut offsets = Vec::with_capacity(self.classes.len());
        let mut next = n;
        for class in &self.classes {
            if next % chunk_len + class.len() > chunk_len {
                next = next.next_multiple_of(chunk_len);
            }
            offsets.push(u32::try_from(next).expect("records fit u32"));
            next += class.len();
        }
        let mut chunks = zeroed_chunks::<R>(1 + next.div_ceil(chunk_len));
        let mut put = |g: usize, r: R| chunks[1 + g / chunk_len].records[g % chunk_len] = r;
        for (g, &slot) in self.intervals.slots.iter().enumerate() {
            let start = self.intervals.start(g);
            let word = match slot {
                Slot::Direct(w) => w,
                Slot::Class(id) => offsets[id as usize],
            };
            put(g, record(start, START, word));
        }
        for (class, &first) in self.classes.iter().zip(&offsets) {
            for (k, &(key, word)) in class.iter().enumerate() {
                put(first as usize + k, record(0, key, word));
            }
        }
        let count = u32::try_from(n).expect("checked against MAX_INTERVALS");
        chunks[0].records[0] = record(0, count, default);
        for k in 0..n.div_ceil(chunk_len) {
            let start = self.intervals.start(k * chunk_len);
            chunks[0].records[1 + k] = record(start, START, 0);
        }
        chunks
    }
}

impl Compiled {
    /// The packed IPv4 table (see `V4_BUCKET_SHIFT`): the index chunk; from chunk 1, the
    /// intervals' words (one `u32` slot each), then the classes' entries as records (a run
    /// never crosses a chunk); from its own chunk, the intervals' two-byte keys (the low bits
    /// of their starts); from its own chunk, the bucket table. Entries are numbered as the
    /// intervals, with the padding that keeps each bucket's keys in one chunk.
    fn into_v4_chunks(self, default: u32) -> Vec<Chunk<V4Record>> {
        let (chunk_len, slots, keys) =
            (CHUNK_RECORDS as usize, V4_SLOTS as usize, V4_KEYS as usize);
        let n = self.intervals.len();
        let Starts::V4(starts) = &self.intervals.starts else {
            unreachable!("IPv4 intervals have IPv4 starts")
        };
        let bucket = |i: usize| (starts[i] >> V4_BUCKET_SHIFT) as usize;
        // Each bucket's first entry, and the entries in all: a bucket whose keys would cross
        // a chunk of the key array starts the next one.
        let mut entries = Vec::with_capacity(V4_BUCKETS as usize + 1);
        let (mut i, mut at) = (0, 0);
        for b in 0..V4_BUCKETS as usize {
            let from = i;
            while i < n && bucket(i) == b {
                i += 1;
            }
            if i > from && at % keys + (i - from) > keys {
                at = at.next_multiple_of(keys);
            }
            entries.push(at);
            at += i - from;
        }
        entries.push(at);
        let total = at;
        // Classes follow the words, as records; one that would cross a chunk starts the next.
        let mut offsets = Vec::with_capacity(self.classes.len());
        let mut next = total.div_ceil(2);
        for class in &self.classes {
            if next % chunk_len + class.len() > chunk_len {
                next = next.next_multiple_of(chunk_len);
            }
            offsets.push(u32::try_from(next).expect("records fit u32"));
            next += class.len();
        }
        let key_base = 1 + next.div_ceil(chunk_len);
        let bucket_base = key_base + total.div_ceil(keys);
        let mut chunks = zeroed_chunks::<V4Record>(bucket_base + V4_BUCKET_CHUNKS as usize);
        let mut put = |e: usize, key: u16, word: u32| {
            chunks[1 + e / slots].slots_mut()[e % slots] = word;
            chunks[key_base + e / keys].keys16_mut()[e % keys] = key;
        };
        let (mut e, mut last) = (0, default);
        for (i, &slot) in self.intervals.slots.iter().enumerate() {
            // Padding before a bucket that starts a chunk: the interval before, which holds
            // the rest of its own bucket, with the highest key.
            while e < entries[bucket(i)] {
                put(e, u16::MAX, last);
                e += 1;
            }
            last = match slot {
                Slot::Direct(w) => w,
                Slot::Class(id) => offsets[id as usize],
            };
            #[expect(clippy::cast_possible_truncation, reason = "the low 16 bits")]
            put(e, starts[i] as u16, last);
            e += 1;
        }
        for (class, &first) in self.classes.iter().zip(&offsets) {
            for (k, &(key, word)) in class.iter().enumerate() {
                let g = first as usize + k;
                chunks[1 + g / chunk_len].records[g % chunk_len] = V4Record { key, word };
            }
        }
        let per_chunk = 1usize << V4_CHUNK_BUCKET_BITS;
        for c in 0..V4_BUCKET_CHUNKS as usize {
            for j in 0..=per_chunk {
                chunks[bucket_base + c].slots_mut()[j] =
                    u32::try_from(entries[c * per_chunk + j]).expect("entries fit u32");
            }
        }
        let count = u32::try_from(n).expect("checked against MAX_INTERVALS");
        let index = &mut chunks[0].records;
        index[0] = V4Record { key: count, word: default };
        index[V4_BUCKET_BASE_RECORD as usize] = V4Record {
            key: u32::try_from(bucket_base).expect("few chunks"),
            word: u32::try_from(key_base).expect("few chunks"),
        };
        chunks
    }
}

/// Appends the bucket table to an IPv6 table and describes its window in the index (see
/// `V6_BUCKET_BITS`): the buckets are on the bits after the longest prefix that the starts of
/// the intervals after the first share (the first starts at `::`), at most
/// `V6_BUCKET_MAX_PREFIX` bits.
fn add_v6_buckets(chunks: &mut Vec<Chunk<V6Record>>) {
    let count = chunks[0].records[0].key as usize;
    let start = |i: usize| {
        let r = chunks[1 + i / CHUNK_RECORDS as usize].records[i % CHUNK_RECORDS as usize];
        (u128::from(r.hi) << 64) | u128::from(r.lo)
    };
    let shared = if count < 2 { 0 } else { (start(1) ^ start(count - 1)).leading_zeros() };
    let prefix_len = shared.min(V6_BUCKET_MAX_PREFIX);
    let mask = if prefix_len == 0 { 0 } else { u64::MAX << (64 - prefix_len) };
    let (prefix, _) = halves(start(count - 1));
    let prefix = prefix & mask;
    let shift = 64 - prefix_len - V6_BUCKET_BITS;
    let mut entries = Vec::with_capacity(V6_BUCKETS as usize + 1);
    let mut i = 0;
    let window = u128::from(prefix) << 64;
    for b in 0..=u128::from(V6_BUCKETS) {
        // The first address of bucket b; for b = V6_BUCKETS, the first after the window, or
        // none if the window ends the address space (then the last interval).
        match window.checked_add(b << (64 + shift)) {
            Some(first) if b < u128::from(V6_BUCKETS) || prefix | !mask != u64::MAX => {
                while i + 1 < count && start(i + 1) <= first {
                    i += 1;
                }
            }
            _ => i = count - 1,
        }
        entries.push(u32::try_from(i).expect("intervals fit u32"));
    }
    let base = chunks.len();
    chunks.extend(zeroed_chunks::<V6Record>(V6_BUCKET_CHUNKS as usize));
    for (r, four) in entries.chunks(4).enumerate() {
        let e = |k: usize| u64::from(four.get(k).copied().unwrap_or(0));
        let record =
            &mut chunks[base + r / CHUNK_RECORDS as usize].records[r % CHUNK_RECORDS as usize];
        record.hi = (e(0) << 32) | e(1);
        record.lo = (e(2) << 32) | e(3);
    }
    chunks[0].records[V6_BUCKET_RECORD as usize] = V6Record {
        hi: prefix,
        lo: mask,
        key: u32::try_from(base).expect("few chunks"),
        word: shift,
    };
}

/// 127.0.0.1's verdict for any port and protocol, for a connect to `0.0.0.0` that may go there
/// (see `V4_LOOPBACK_RECORD`): its interval's verdict word, or for a class, the first entry
/// that blocks, else the last entry (which matches every port and protocol).
fn loopback_word(chunks: &[Chunk<V4Record>]) -> u32 {
    let record =
        |g: u32| chunks[1 + (g / CHUNK_RECORDS) as usize].records[(g % CHUNK_RECORDS) as usize];
    let word = interval_v4(|i| chunks.get(i as usize), cgroup_connect_common::LOOPBACK4)
        .expect("a table just made is well-formed");
    if word & word::DIRECT != 0 {
        return word;
    }
    let entries = (word..word + MAX_CLASS_LEN).map(record);
    let mut last = word::verdict(true, Proto::Any, word::DEFAULT_RULE);
    for entry in entries {
        last = entry.word;
        if word::blocks(entry.word) || is_unconditional((entry.key, entry.word)) {
            break;
        }
    }
    last
}

/// `n` zeroed chunks, made on the heap (a chunk of IPv6 records is 384 KiB: too big for a
/// stack).
fn zeroed_chunks<R: aya::Pod>(n: usize) -> Vec<Chunk<R>> {
    let mut chunks: Vec<Chunk<R>> = Vec::with_capacity(n);
    // SAFETY: Pod records are plain data for which all-zero bytes are a valid value (the
    // header, intervals and entries the compiler writes over them; zero elsewhere), and the
    // capacity is `n`.
    unsafe {
        std::ptr::write_bytes(chunks.as_mut_ptr(), 0, n);
        chunks.set_len(n);
    }
    chunks
}

/// The verdict word for a destination, looked up in compiled tables the way the BPF programs
/// do: IPv4-mapped and NAT64 addresses by the IPv4 table. `addr` is where the call goes (the
/// programs judge `0.0.0.0` and `::` by where the kernel sends them first).
#[must_use]
pub fn lookup(tables: &Tables, addr: IpAddr, port: u16, proto: Proto) -> Option<u32> {
    tables.view().lookup(addr, port, proto)
}

impl Tables {
    /// The tables as the programs search them.
    #[must_use]
    pub fn view(&self) -> TableView<'_> {
        TableView { v4: &self.v4, v6: &self.v6, nat64: nat64_words(&self.nat64) }
    }
}

/// The NAT64 prefixes as the config words hold them, for [`TableView::nat64`].
#[must_use]
pub fn nat64_words(prefixes: &[Nat64Prefix]) -> Vec<(u64, u32)> {
    prefixes
        .iter()
        .map(|p| {
            let [hi, mid, lo] = p.words();
            ((u64::from(hi) << 32) | u64::from(mid), lo)
        })
        .collect()
}

/// Both families' tables wherever they are (compiled here, or read from an instance's maps),
/// and the NAT64 prefixes besides the well-known one, as (high half, next word).
pub struct TableView<'a> {
    pub v4: &'a [Chunk<V4Record>],
    pub v6: &'a [Chunk<V6Record>],
    pub nat64: Vec<(u64, u32)>,
}

impl TableView<'_> {
    /// The address whose verdict the tables give for a call to `addr` that goes there (see
    /// [`reached`]): an IPv4-mapped or NAT64 address as the IPv4 address it holds.
    #[must_use]
    pub fn judged(&self, addr: IpAddr) -> IpAddr {
        use cgroup_connect_common::{mapped_ip4, nat64_ip4};
        let IpAddr::V6(a) = addr else { return addr };
        let prefix = |i: u32| self.nat64.get(i as usize).copied();
        let halves = halves(u128::from(a));
        mapped_ip4(halves)
            .or_else(|| nat64_ip4(halves, prefix))
            .map_or(addr, |v4| IpAddr::V4(v4.into()))
    }

    /// The verdict word for a call that goes to `addr`, as the programs find it: `None` for a
    /// malformed table (the programs fail closed).
    #[must_use]
    pub fn lookup(&self, addr: IpAddr, port: u16, proto: Proto) -> Option<u32> {
        use cgroup_connect_common::{decide_v4, decide_v6};
        match self.judged(addr) {
            IpAddr::V4(a) => decide_v4(|i| self.v4.get(i as usize), u32::from(a), port, proto),
            IpAddr::V6(a) => {
                decide_v6(|i| self.v6.get(i as usize), halves(u128::from(a)), port, proto)
            }
        }
    }
}

/// Where a `connect()` or send to `addr` from an unbound socket goes, as the programs judge
/// it: `0.0.0.0` to 127.0.0.1, `::` to `::1` (`reached_v4`, `reached_v6`).
#[must_use]
pub fn reached(addr: IpAddr) -> IpAddr {
    use cgroup_connect_common::{Source, reached_v4, reached_v6};
    match addr {
        IpAddr::V4(a) => IpAddr::V4(reached_v4(u32::from(a), || Source::Bound(0)).0.into()),
        IpAddr::V6(a) => {
            let (hi, lo) = reached_v6(halves(u128::from(a)), || false);
            IpAddr::V6(((u128::from(hi) << 64) | u128::from(lo)).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn rule(
        id: u32,
        action: Action,
        net: &str,
        ports: Option<(u16, u16)>,
        proto: Proto,
    ) -> TableRule {
        TableRule {
            net: net.parse().unwrap(),
            ports: ports.map(|(lo, hi)| Ports { lo, hi }),
            proto,
            action,
            id,
        }
    }

    /// The documented decision, by brute force over the rules.
    fn oracle(
        default: Action,
        rules: &[TableRule],
        addr: IpAddr,
        port: u16,
        proto: Proto,
    ) -> (bool, u32) {
        let addr = match addr {
            IpAddr::V6(a) => a
                .to_ipv4_mapped()
                .or_else(|| Nat64Prefix::WELL_KNOWN.ip4(a.into()).map(|n| n.addr()))
                .map_or(IpAddr::V6(a), IpAddr::V4),
            a @ IpAddr::V4(_) => a,
        };
        rules
            .iter()
            .filter(|r| r.net.contains(&addr))
            .filter(|r| r.ports.is_none_or(|p| (p.lo..=p.hi).contains(&port)))
            .filter(|r| r.proto == Proto::Any || r.proto == proto)
            .max_by_key(|r| (Spec::new(r).rank, std::cmp::Reverse(r.id)))
            .map_or((default == Action::Block, 0), |r| (r.action == Action::Block, r.id))
    }

    fn check(default: Action, rules: &[TableRule], addr: IpAddr, port: u16, proto: Proto) {
        let tables = compile(default, rules.iter().copied()).unwrap();
        let got = lookup(&tables, addr, port, proto).expect("well-formed table");
        let want = oracle(default, rules, addr, port, proto);
        assert_eq!(word::blocks(got), want.0, "{addr}:{port} {proto:?} with {rules:?}");
    }

    #[test]
    fn empty_rules_give_the_default() {
        for default in [Action::Allow, Action::Block] {
            let t = compile(default, []).unwrap();
            assert_eq!(
                t.v4.len(),
                3 + V4_BUCKET_CHUNKS as usize,
                "index, one data chunk, one key chunk, buckets"
            );
            assert_eq!(t.v4[0].records[0].key, 1, "one interval");
            let w = lookup(&t, "1.2.3.4".parse().unwrap(), 1, Proto::Tcp).unwrap();
            assert_eq!(word::blocks(w), default == Action::Block);
            assert_eq!(word::rule(w), 0);
        }
    }

    #[test]
    fn prefix_edges() {
        let rules = [rule(1, Action::Block, "10.0.0.0/8", None, Proto::Any)];
        for (addr, blocked) in [
            ("9.255.255.255", false),
            ("10.0.0.0", true),
            ("10.255.255.255", true),
            ("11.0.0.0", false),
        ] {
            check(Action::Allow, &rules, addr.parse().unwrap(), 80, Proto::Tcp);
            let w = lookup(
                &compile(Action::Allow, rules).unwrap(),
                addr.parse().unwrap(),
                80,
                Proto::Tcp,
            )
            .unwrap();
            assert_eq!(word::blocks(w), blocked, "{addr}");
        }
        let all = [
            rule(1, Action::Block, "0.0.0.0/0", None, Proto::Any),
            rule(2, Action::Block, "::/0", None, Proto::Any),
        ];
        for addr in ["0.0.0.0", "255.255.255.255", "::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]
        {
            let w =
                lookup(&compile(Action::Allow, all).unwrap(), addr.parse().unwrap(), 1, Proto::Udp)
                    .unwrap();
            assert!(word::blocks(w), "{addr}");
        }
    }

    #[test]
    fn loopback_word_is_its_verdict_for_any_port() {
        let lo = |rules: &[TableRule], default| {
            let t = compile(default, rules.iter().copied()).unwrap();
            let w = t.v4[0].records[V4_LOOPBACK_RECORD as usize].word;
            (word::blocks(w), word::rule(w))
        };
        assert_eq!(lo(&[], Action::Allow), (false, 0));
        assert_eq!(lo(&[], Action::Block), (true, 0));
        let net8 = rule(1, Action::Block, "127.0.0.0/8", None, Proto::Any);
        assert_eq!(lo(&[net8], Action::Allow), (true, 1));
        let ssh = rule(2, Action::Block, "127.0.0.1/32", Some((22, 22)), Proto::Tcp);
        assert_eq!(lo(&[ssh], Action::Allow), (true, 2), "blocked for one port: blocks");
        let dns = rule(3, Action::Allow, "127.0.0.0/8", Some((53, 53)), Proto::Udp);
        assert_eq!(lo(&[dns], Action::Block), (true, 0), "allowed for one port only");
        assert_eq!(lo(&[dns], Action::Allow), (false, 0));
        let other = rule(4, Action::Block, "127.0.0.2/32", None, Proto::Any);
        assert_eq!(lo(&[other], Action::Allow), (false, 0));
    }

    #[test]
    fn allowlist_with_blocks_inside() {
        let rules = [
            rule(1, Action::Allow, "10.0.0.0/8", None, Proto::Any),
            rule(2, Action::Block, "10.1.0.0/16", None, Proto::Any),
            rule(3, Action::Allow, "10.1.2.3/32", Some((443, 443)), Proto::Tcp),
        ];
        let mut t = compile(Action::Block, rules).unwrap();
        t.nat64 = vec!["2001:db8:64::/96".parse().unwrap()];
        let at =
            |a: &str, port, proto| word::rule(lookup(&t, a.parse().unwrap(), port, proto).unwrap());
        assert_eq!(at("10.2.0.1", 80, Proto::Tcp), 1);
        assert_eq!(at("10.1.0.1", 80, Proto::Tcp), 2);
        assert_eq!(at("10.1.2.3", 443, Proto::Tcp), 3);
        assert_eq!(at("10.1.2.3", 443, Proto::Udp), 2);
        assert_eq!(at("11.0.0.1", 443, Proto::Tcp), 0);
        assert_eq!(
            at("::ffff:10.1.2.3", 443, Proto::Tcp),
            3,
            "mapped addresses use the IPv4 table"
        );
        assert_eq!(at("64:ff9b::10.1.2.3", 443, Proto::Tcp), 3, "so do NAT64 addresses");
        assert_eq!(at("2001:db8:64::10.1.0.1", 443, Proto::Tcp), 2, "under any named prefix");
        assert_eq!(at("64:ff9b:1::10.1.2.3", 443, Proto::Tcp), 0, "but not RFC 8215's /48");
    }

    #[test]
    fn ties_follow_the_documented_order() {
        // Same prefix: port beats no port, protocol beats none, block beats allow.
        let rules = [
            rule(1, Action::Allow, "192.0.2.0/24", None, Proto::Any),
            rule(2, Action::Block, "192.0.2.0/24", None, Proto::Udp),
            rule(3, Action::Allow, "192.0.2.0/24", Some((53, 53)), Proto::Any),
            rule(4, Action::Block, "192.0.2.0/24", Some((53, 53)), Proto::Any),
        ];
        let t = compile(Action::Allow, rules).unwrap();
        let at = |port, proto| {
            word::rule(lookup(&t, "192.0.2.9".parse().unwrap(), port, proto).unwrap())
        };
        assert_eq!(at(53, Proto::Udp), 4);
        assert_eq!(at(54, Proto::Udp), 2);
        assert_eq!(at(54, Proto::Tcp), 1);
    }

    #[test]
    fn too_many_port_rules_on_one_address_are_refused() {
        let rules: Vec<_> = (0..=MAX_CLASS_LEN)
            .map(|i| {
                rule(
                    i + 1,
                    Action::Block,
                    "192.0.2.1/32",
                    Some((u16::try_from(i).unwrap(), u16::try_from(i).unwrap())),
                    Proto::Any,
                )
            })
            .collect();
        let err = compile(Action::Allow, rules).unwrap_err();
        assert!(err.to_string().contains("192.0.2.1/32"), "{err}");
    }

    #[test]
    fn more_rules_than_the_capacity_are_refused() {
        let over = MAX_RULES_PER_FAMILY + 1;
        let rules = (0..over).map(|i| TableRule {
            net: IpNet::new(std::net::Ipv4Addr::from(u32::try_from(i).unwrap()).into(), 32)
                .unwrap(),
            ports: None,
            proto: Proto::Any,
            action: Action::Block,
            id: 1,
        });
        let err = compile(Action::Allow, rules).unwrap_err();
        assert!(
            matches!(err, TableError::TooManyRules { family: "IPv4", count } if count == over),
            "{err}"
        );
        assert!(
            err.to_string().contains("4194305 IPv4 rules exceed the capacity of 4194304"),
            "{err}"
        );
    }

    /// `n` host rules with a gap after each (1, 3, 5, ...): two intervals each, the most a
    /// rule takes.
    fn scattered(n: u32, v6: bool) -> impl Iterator<Item = TableRule> {
        (0..n).map(move |i| TableRule {
            net: if v6 {
                IpNet::new(std::net::Ipv6Addr::from(u128::from(i) * 2 + 1).into(), 128).unwrap()
            } else {
                IpNet::new(std::net::Ipv4Addr::from(i * 2 + 1).into(), 32).unwrap()
            },
            ports: None,
            proto: Proto::Any,
            action: Action::Block,
            id: 1,
        })
    }

    /// The capacity the README states: 4,186,111 scattered IPv4 host rules (packed, in 389
    /// chunks) and 4,161,535 IPv6 ones (the bucket table takes three chunks) fit, one more
    /// does not.
    #[test]
    fn scattered_host_rules_fill_a_table_exactly() {
        for (v6, fits, family, max, chunks) in [
            (false, 4_186_111, "IPv4", 8_372_224u32, 1 + 256 + 128 + V4_BUCKET_CHUNKS as usize),
            (true, 4_161_535, "IPv6", 8_323_072, 512),
        ] {
            let t = compile(Action::Allow, scattered(fits, v6)).unwrap();
            assert_eq!(if v6 { t.v6.len() } else { t.v4.len() }, chunks, "{family}");
            let err = compile(Action::Allow, scattered(fits + 1, v6)).unwrap_err();
            assert!(
                matches!(err, TableError::TooManyIntervals { count, max: m, .. }
                    if count == usize::try_from(max).unwrap() + 1 && m == max),
                "{err}"
            );
            assert!(err.to_string().contains(&format!("more than the {max} an {family} table")));
        }
        // A full IPv6 table with one class more: its entries need another chunk.
        let mut rules: Vec<TableRule> = scattered(4_161_535, true).collect();
        rules.last_mut().unwrap().ports = Some(Ports { lo: 80, hi: 80 });
        let err = compile(Action::Allow, rules).unwrap_err();
        assert!(
            matches!(err, TableError::TooManyChunks { family: "IPv6", chunks: 513, max: 512 }),
            "{err}"
        );
    }

    #[test]
    fn a_million_host_rules_compile_to_one_interval_pair_each() {
        let rules = (0..1_000_000u32).map(|i| TableRule {
            net: IpNet::new(std::net::Ipv4Addr::from(0x0a00_0000 + i * 2).into(), 32).unwrap(),
            ports: None,
            proto: Proto::Any,
            action: Action::Block,
            id: i + 1,
        });
        let t = compile(Action::Allow, rules).unwrap();
        assert_eq!(t.v4_rules, 1_000_000);
        assert_eq!(t.v4[0].records[0].key, 2_000_001, "intervals");
        // Bucket 10.0 is full (65,536 intervals start in it): it starts the second chunk of
        // keys, after 65,535 entries of padding.
        let entries = 65_536usize + 2_000_000;
        assert_eq!(
            t.v4.len(),
            1 + entries.div_ceil(V4_SLOTS as usize)
                + entries.div_ceil(V4_KEYS as usize)
                + V4_BUCKET_CHUNKS as usize,
            "index, words, keys, buckets"
        );
        let w = lookup(&t, "10.0.0.200".parse().unwrap(), 1, Proto::Tcp).unwrap();
        assert_eq!((word::blocks(w), word::rule(w)), (true, 101));
        assert!(!word::blocks(lookup(&t, "10.0.0.201".parse().unwrap(), 1, Proto::Tcp).unwrap()));
    }

    /// Two buckets of 40,000 intervals each: the second would cross the first chunk of keys,
    /// so it starts the next one, after padding that the first bucket's last addresses find.
    #[test]
    fn a_bucket_that_would_cross_a_key_chunk_starts_the_next() {
        let host = |b: u32, k: u32| 0x0a00_0000 + (b << 16) + 2 * k;
        let rules = (0..2).flat_map(|b| (0..20_000).map(move |k| (b, k))).map(|(b, k)| TableRule {
            net: IpNet::new(std::net::Ipv4Addr::from(host(b, k)).into(), 32).unwrap(),
            ports: None,
            proto: Proto::Any,
            action: Action::Block,
            id: 1 + b * 20_000 + k,
        });
        let t = compile(Action::Allow, rules).unwrap();
        assert_eq!(t.v4[0].records[0].key, 1 + 80_000, "intervals");
        let bucket_base = t.v4[0].records[V4_BUCKET_BASE_RECORD as usize].key as usize;
        let entry = |b: u32| t.v4[bucket_base].slot(b);
        assert_eq!((entry(0x0a00), entry(0x0a01), entry(0x0a02)), (1, 65_536, 65_536 + 40_000));
        let at = |a: u32| lookup(&t, IpAddr::V4(a.into()), 1, Proto::Tcp).unwrap();
        for b in 0..2 {
            for k in [0, 1, 9_999, 19_999] {
                assert_eq!(word::rule(at(host(b, k))), 1 + b * 20_000 + k, "{b} {k}");
                assert!(!word::blocks(at(host(b, k) + 1)), "{b} {k} + 1");
            }
            for a in [host(b, 0) - 1, host(b, 0) + 0xffff] {
                assert!(!word::blocks(at(a)), "{a:#x}");
            }
        }
    }

    /// What the compiler holds per rule and per interval while it builds a table (a million
    /// rules make a million specs and up to two million intervals): the memory a start peaks
    /// at grows with these sizes.
    #[test]
    fn the_sweep_holds_little_per_rule() {
        assert_eq!(size_of::<Spec<u32>>(), 16, "bytes per IPv4 rule");
        assert_eq!(size_of::<Spec>(), 32, "bytes per IPv6 rule");
        let v4 = Intervals::new(true, Slot::Direct(0));
        assert!(matches!(v4.starts, Starts::V4(_)));
        assert_eq!(size_of::<u32>() + size_of::<Slot>(), 12, "bytes per IPv4 interval");
    }

    fn arb_rule(v6: bool) -> impl Strategy<Value = TableRule> {
        // Few distinct values, so that rules overlap and tie often.
        let ports = proptest::option::of(
            (0u16..4, 0u16..4).prop_map(|(a, b)| (a.min(b) * 100, a.max(b) * 100 + 50)),
        );
        (any::<u8>(), 0u8..=8, ports, 0usize..3, any::<bool>(), 1u32..1000).prop_map(
            move |(a, len, ports, proto, block, id)| {
                let net: IpNet = if v6 {
                    IpNet::new(
                        std::net::Ipv6Addr::from(u128::from(a & 0xf0) << 120).into(),
                        len * 2,
                    )
                    .unwrap()
                    .trunc()
                } else {
                    IpNet::new(std::net::Ipv4Addr::from(u32::from(a & 0xf0) << 24).into(), len * 4)
                        .unwrap()
                        .trunc()
                };
                TableRule {
                    net,
                    ports: ports.map(|(lo, hi)| Ports { lo, hi }),
                    proto: [Proto::Any, Proto::Tcp, Proto::Udp][proto],
                    action: if block { Action::Block } else { Action::Allow },
                    id,
                }
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The compiled table decides exactly as the documented rule order says.
        #[test]
        fn compiled_table_matches_the_oracle(
            v6 in any::<bool>(),
            rules in proptest::collection::vec(arb_rule(false), 0..12),
            rules6 in proptest::collection::vec(arb_rule(true), 0..12),
            probes in proptest::collection::vec((any::<u8>(), any::<u8>(), 0u16..500, 1usize..3), 1..20),
            deny in any::<bool>(),
        ) {
            let default = if deny { Action::Block } else { Action::Allow };
            let all: Vec<_> = rules.iter().chain(&rules6).copied().collect();
            let tables = compile(default, all.iter().copied()).unwrap();
            for (hi, lo, port, proto) in probes {
                let proto = [Proto::Any, Proto::Tcp, Proto::Udp][proto];
                let addr: IpAddr = if v6 {
                    std::net::Ipv6Addr::from((u128::from(hi) << 120) | u128::from(lo)).into()
                } else {
                    std::net::Ipv4Addr::from((u32::from(hi) << 24) | u32::from(lo)).into()
                };
                let got = lookup(&tables, addr, port, proto).expect("well-formed");
                let want = oracle(default, &all, addr, port, proto);
                prop_assert_eq!(word::blocks(got), want.0, "{}:{} {:?}", addr, port, proto);
            }
        }

        /// The same for IPv6 rules under a shared prefix of any length, so that the bucket
        /// window starts anywhere (or at its deepest, for one rule): probed at the rules'
        /// edges, on both sides of the window, and anywhere.
        #[test]
        fn ipv6_buckets_match_the_oracle(
            shared in 0u32..=128,
            base in any::<u128>(),
            rules in proptest::collection::vec(
                (any::<u128>(), 0u8..=128, proptest::option::of(0u16..3), any::<bool>()), 0..12),
            probes in proptest::collection::vec((any::<u128>(), 0u16..3, 1usize..3), 1..8),
            deny in any::<bool>(),
        ) {
            let default = if deny { Action::Block } else { Action::Allow };
            let keep = u128::MAX.checked_shr(shared).unwrap_or(0);
            let under = |a: u128| (base & !keep) | (a & keep);
            let all: Vec<TableRule> = rules
                .iter()
                .enumerate()
                .map(|(i, &(a, len, port, block))| TableRule {
                    net: IpNet::new(std::net::Ipv6Addr::from(under(a)).into(), len)
                        .unwrap()
                        .trunc(),
                    ports: port.map(|p| Ports { lo: p, hi: p }),
                    proto: Proto::Any,
                    action: if block { Action::Block } else { Action::Allow },
                    id: u32::try_from(i).unwrap() + 1,
                })
                .collect();
            let tables = compile(default, all.iter().copied()).unwrap();
            let mut addrs: Vec<u128> = all
                .iter()
                .flat_map(|r| {
                    let s = Spec::new(r);
                    let e = s.end(u128::MAX);
                    [s.start.wrapping_sub(1), s.start, e, e.wrapping_add(1)]
                })
                .collect();
            addrs.extend([base & !keep, (base & !keep).wrapping_sub(1), base | keep, (base | keep).wrapping_add(1), 0, u128::MAX]);
            addrs.extend(probes.iter().flat_map(|&(a, _, _)| [a, under(a)]));
            for (k, &a) in addrs.iter().enumerate() {
                let (_, port, proto) = probes[k % probes.len()];
                let proto = [Proto::Any, Proto::Tcp, Proto::Udp][proto];
                let addr = IpAddr::V6(a.into());
                let got = lookup(&tables, addr, port, proto).expect("well-formed");
                let want = oracle(default, &all, addr, port, proto);
                prop_assert_eq!(word::blocks(got), want.0, "{}:{} {:?}", addr, port, proto);
            }
        }

        /// IPv4 rules packed into few buckets, probed at and around their edges and the
        /// buckets' edges: the bucket table and the two-byte keys find the rule the oracle
        /// finds.
        #[test]
        fn packed_ipv4_buckets_match_the_oracle(
            rules in proptest::collection::vec(
                (0u32..0x3_0000, 14u8..=32, any::<bool>(), 1u32..1000, any::<bool>()),
                0..40,
            ),
            probes in proptest::collection::vec(0u32..0x3_0000, 1..20),
            deny in any::<bool>(),
        ) {
            const BASE: u32 = 0x0a00_0000;
            let default = if deny { Action::Block } else { Action::Allow };
            let all: Vec<TableRule> = rules
                .iter()
                .map(|&(at, len, block, id, port)| TableRule {
                    net: IpNet::new(std::net::Ipv4Addr::from(BASE + at).into(), len).unwrap().trunc(),
                    ports: port.then_some(Ports { lo: 80, hi: 80 }),
                    proto: Proto::Any,
                    action: if block { Action::Block } else { Action::Allow },
                    id,
                })
                .collect();
            // Rules of equal rank on one prefix tie; which of their ids reports is not the
            // point here.
            let mut seen = std::collections::HashSet::new();
            let all: Vec<TableRule> =
                all.into_iter().filter(|r| seen.insert((r.net, r.ports.is_some(), r.action))).collect();
            let tables = compile(default, all.iter().copied()).unwrap();
            let edges = all.iter().flat_map(|r| {
                let IpNet::V4(n) = r.net else { unreachable!() };
                let (lo, hi) = (u32::from(n.network()), u32::from(n.broadcast()));
                [lo.wrapping_sub(1), lo, hi, hi.wrapping_add(1)]
            });
            let buckets = (0..4u32).flat_map(|b| {
                let first = BASE + (b << 16);
                [first - 1, first]
            });
            for a in probes.iter().map(|p| BASE + p).chain(edges).chain(buckets) {
                let addr = IpAddr::V4(a.into());
                for port in [80, 443] {
                    let got = lookup(&tables, addr, port, Proto::Tcp).expect("well-formed");
                    let want = oracle(default, &all, addr, port, Proto::Tcp);
                    prop_assert_eq!(word::blocks(got), want.0, "{}:{}", addr, port);
                    prop_assert_eq!(word::rule(got), want.1, "{}:{}", addr, port);
                }
            }
        }
    }
}
