//! The layout of the rule tables: chunks of records, their size classes, and the IPv4 bucket
//! table.
//!
//! Userspace compiles the rules of each address family into one table: a BPF array of
//! [`Chunk`]s of [`CHUNK_RECORDS`] records each. The data records, numbered across chunks 1,
//! 2, ... (record `g` is at `g % CHUNK_RECORDS` of chunk `1 + g / CHUNK_RECORDS`), are
//!
//! - records `0..n`, the intervals: sorted, non-overlapping address ranges that together cover
//!   the whole address space; each starts at its record's address and ends where the next
//!   begins, and its `word` is either a verdict ([`crate::word::DIRECT`] set) or the number of
//!   the first record of a class;
//! - after them, the classes: runs of entries (`key` = port range, `word` = verdict with an
//!   optional protocol) tried in order; the last entry of a run matches every port and
//!   protocol, so a run always ends in a verdict. No run crosses a chunk boundary.
//!
//! Chunk 0 is the index: its record 0 is the header (`key` = `n`, `word` = the default
//! verdict), and its record `1 + k` is the fence of data chunk `k`: the start of its first
//! interval. An IPv6 index also holds where its bucket table starts and the address bits it
//! is on ([`V6_BUCKET_RECORD`]).
//!
//! IPv4 tables are packed instead (see [`V4_BUCKET_SHIFT`]): their intervals' words are
//! `u32`s from chunk 1 on, the classes follow as records, then come a key array (two bytes an
//! interval) and a bucket table, which the index names ([`V4_BUCKET_BASE_RECORD`]); it also
//! holds 127.0.0.1's verdict for any port ([`V4_LOOPBACK_RECORD`]), and no fences.
//!
//! An IPv6 decision searches between its bucket's boundaries, then tries at most
//! [`MAX_CLASS_LEN`] entries of a class: see [`crate::decide_v6`]. The lookups are inlined by the
//! verifier (see [`TABLE_CLASSES`]). The whole table is swapped at once (it is an inner map of
//! an array of maps), so every decision sees one policy or the other.

/// Table sizes, in chunks (the index chunk included). A table is created at the smallest
/// class that holds it; each class has its own outer map, whose inner-map template fixes the
/// size, so the verifier inlines every lookup (no helper call per lookup).
///
/// Five classes, four times apart: every class costs the verifier another copy of the search,
/// and a table wastes at most three quarters of its class.
pub const TABLE_CLASSES: [u32; 5] = [2, 8, 32, 128, 512];

/// Sizes of the hit-counter arrays, in counters: one [`HitCount`] per rule id (id 0, the
/// default's, is never counted). The array of an instance is made anew with each swap, at the
/// smallest class above the highest rule id, since ids are positions in the rule set; each
/// class has its own outer map for the same reason as the tables (an inner map must have its
/// template's size). Four times apart, as the tables: at most three quarters wasted. Rule ids
/// past the largest class are not counted.
pub const HIT_CLASSES: [u32; 5] = [1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22];

/// The decisions one rule made, summed over CPUs: one element of a hit-counter array. The
/// programs add to it atomically (a shared array, not a per-CPU one: a per-CPU array of a
/// million rules would take 8 MB per possible CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HitCount {
    pub hits: u64,
}

/// `BPF_F_MMAPABLE`: userspace writes a whole table with one copy through `mmap`.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;
/// Flags of every table, and of the inner-map templates the BPF object declares. Not
/// `BPF_F_INNER_MAP`: that would let sizes vary, and stop the verifier inlining lookups.
pub const TABLE_FLAGS: u32 = BPF_F_MMAPABLE;

/// IPv4 tables are packed (DXR's range table: Zec, Rizzo and Mikuc, 2012): for each run of
/// `2^V4_BUCKET_SHIFT` addresses (a bucket: the top 16 bits of an address), the bucket table
/// holds the number of the first interval that starts in it, and each interval's start is kept
/// as its low 16 bits only, two bytes, in a key array of its own. A decision reads two
/// neighbouring bucket entries, searches the bucket's keys (about 30 at a million rules: one or
/// two cache lines), then reads one word: one chunk lookup each. See [`crate::decide_v4`].
///
/// A bucket's keys never cross a chunk of the key array: where they would, the bucket starts
/// the next chunk, and the entries before it repeat the last interval with key `0xffff`.
pub const V4_BUCKET_SHIFT: u32 = 16;
/// Buckets of an IPv4 table.
pub const V4_BUCKETS: u32 = 1 << (32 - V4_BUCKET_SHIFT);
/// log2 of the buckets of one chunk of the bucket table: slot `j` of its chunk `c` is the entry
/// of bucket `c * 2^V4_CHUNK_BUCKET_BITS + j`, for `j` up to and with `2^V4_CHUNK_BUCKET_BITS`
/// (the next chunk's first bucket, or for the last, the number of entries), so a bucket's two
/// entries are always in one chunk.
pub const V4_CHUNK_BUCKET_BITS: u32 = CHUNK_BITS;
/// Where the index chunk of an IPv4 table says which chunk its bucket table starts in (`key`)
/// and which chunk its key array starts in (`word`).
pub const V4_BUCKET_BASE_RECORD: u32 = CHUNK_RECORDS - 1;
/// Where the index chunk of an IPv4 table holds, in its `word`, the verdict of 127.0.0.1 for a
/// call to `0.0.0.0` that may go there ([`crate::reached_v4`]): its verdict word if no port or
/// protocol rule covers it, else the first of its class's entries that blocks, else the last.
pub const V4_LOOPBACK_RECORD: u32 = CHUNK_RECORDS - 2;
/// Chunks the bucket table takes.
pub const V4_BUCKET_CHUNKS: u32 = V4_BUCKETS >> V4_CHUNK_BUCKET_BITS;
/// `u32` slots of an IPv4 chunk: an interval's word, a bucket entry.
pub const V4_SLOTS: u32 = 2 * CHUNK_RECORDS;
/// log2 of [`V4_SLOTS`].
pub const V4_SLOT_BITS: u32 = CHUNK_BITS + 1;
/// Two-byte keys of an IPv4 chunk.
pub const V4_KEYS: u32 = 4 * CHUNK_RECORDS;
/// log2 of [`V4_KEYS`].
pub const V4_KEY_BITS: u32 = CHUNK_BITS + 2;

/// IPv6 tables also have a bucket table, on the `V6_BUCKET_BITS` bits that follow the longest
/// prefix their rules' intervals share (at most [`V6_BUCKET_MAX_PREFIX`] bits, so that the
/// bucket bits lie in the high half): real rule sets share their top bits, so buckets on them
/// would not split much. Entry `b` is the number of the interval that holds the window's
/// address with `b` in those bits; entry `V6_BUCKETS` the interval right after the window (or
/// the last). Four `u32` entries a record: `hi` holds entries `4r` (high word) and `4r + 1`,
/// `lo` entries `4r + 2` and `4r + 3`.
pub const V6_BUCKET_BITS: u32 = 17;
/// Buckets of an IPv6 table; the bucket table has one more entry.
pub const V6_BUCKETS: u32 = 1 << V6_BUCKET_BITS;
/// The longest shared prefix a bucket window starts after.
pub const V6_BUCKET_MAX_PREFIX: u32 = 64 - V6_BUCKET_BITS;
/// Where the index chunk of an IPv6 table describes its bucket window: `hi` = the shared
/// prefix (the high half's bits below it zero), `lo` = the prefix's mask on the high half,
/// `key` = the chunk the bucket table starts in, `word` = the shift that brings the bucket
/// bits of a high half to the bottom.
pub const V6_BUCKET_RECORD: u32 = CHUNK_RECORDS - 1;
/// Chunks the IPv6 bucket table takes: four `u32` entries a record.
pub const V6_BUCKET_CHUNKS: u32 = (V6_BUCKETS + 1).div_ceil(4).div_ceil(CHUNK_RECORDS);

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

/// An inclusive port range packed in a record key: low port in the high half.
#[must_use]
pub const fn pack_ports(lo: u16, hi: u16) -> u32 {
    ((lo as u32) << 16) | hi as u32
}

/// The key of a class entry that matches every port.
pub const ALL_PORTS: u32 = pack_ports(0, u16::MAX);

/// One record of a table: see the module docs for what `key` and `word` hold in each part.
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

impl Chunk<V4Record> {
    /// The `u32` at `i % V4_SLOTS` of an IPv4 chunk read as `u32`s (records' `key`, then
    /// `word`): the interval words and the bucket table.
    #[inline(always)]
    #[must_use]
    pub fn slot(&self, i: u32) -> u32 {
        self.slots()[(i & (V4_SLOTS - 1)) as usize]
    }

    /// The two-byte key at `i % V4_KEYS` of an IPv4 chunk read as `u16`s: the key array.
    #[inline(always)]
    #[must_use]
    pub fn key16(&self, i: u32) -> u16 {
        self.keys16()[(i & (V4_KEYS - 1)) as usize]
    }

    /// The chunk as `u32`s.
    #[inline(always)]
    #[must_use]
    pub fn slots(&self) -> &[u32; V4_SLOTS as usize] {
        // SAFETY: `V4Record` is `#[repr(C)]`, two `u32`s without padding, so the records are
        // `V4_SLOTS` `u32`s, at the same alignment.
        unsafe { &*core::ptr::from_ref(&self.records).cast() }
    }

    /// The chunk as `u16`s.
    #[inline(always)]
    #[must_use]
    pub fn keys16(&self) -> &[u16; V4_KEYS as usize] {
        // SAFETY: as in `slots`; a `u16` is aligned at 2, less than a record's 4.
        unsafe { &*core::ptr::from_ref(&self.records).cast() }
    }

    /// The chunk as `u32`s, to write (userspace).
    #[must_use]
    pub fn slots_mut(&mut self) -> &mut [u32; V4_SLOTS as usize] {
        // SAFETY: as in `slots`.
        unsafe { &mut *core::ptr::from_mut(&mut self.records).cast() }
    }

    /// The chunk as `u16`s, to write (userspace).
    #[must_use]
    pub fn keys16_mut(&mut self) -> &mut [u16; V4_KEYS as usize] {
        // SAFETY: as in `keys16`.
        unsafe { &mut *core::ptr::from_mut(&mut self.records).cast() }
    }
}

/// A record of the IPv4 table.: a class entry (`key` = ports, `word` = verdict), or
/// the header and index records; intervals are packed (see [`V4_BUCKET_SHIFT`]).
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
