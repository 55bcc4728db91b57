//! The decision order: which rule decides among those that match ([`Rank`]), and the search of
//! a table for a destination's verdict word ([`decide`], [`decide_v4`]). The BPF programs run
//! these same functions; userspace runs them in its checks and tests.

use core::cmp::Ordering;

use crate::{
    table::{
        CHUNK_BITS, CHUNK_MASK, CHUNK_RECORDS, Chunk, MAX_CLASS_LEN, Record, V4_BUCKET_BASE_RECORD,
        V4_BUCKET_SHIFT, V4_CHUNK_BUCKET_BITS, V4_KEY_BITS, V4_SLOT_BITS, V4Record,
        V6_BUCKET_RECORD, V6_BUCKETS, V6Record,
    },
    word::{self, Proto},
};

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

/// Whether a class entry (`key` = ports, `word` = verdict) matches a port and protocol.
#[must_use]
#[expect(clippy::cast_possible_truncation, reason = "unpacks two u16 halves")]
pub const fn entry_matches(key: u32, word: u32, port: u16, proto: Proto) -> bool {
    let lo = (key >> 16) as u16;
    let hi = key as u16;
    let wanted = Proto::from_word(word);
    port >= lo && port <= hi && (matches!(wanted, Proto::Any) || wanted as u32 == proto as u32)
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
    resolve(&get, chunk.at(i).word(), port, proto)
}

/// [`decide`] for IPv4 tables, which are packed (see [`V4_BUCKET_SHIFT`]): the bucket of
/// `addr` names its intervals, a search of their two-byte keys finds the one that holds it.
#[inline(always)]
pub fn decide_v4<'a>(
    get: impl Fn(u32) -> Option<&'a Chunk<V4Record>>,
    addr: u32,
    port: u16,
    proto: Proto,
) -> Option<u32> {
    resolve(&get, interval_v4(&get, addr)?, port, proto)
}

/// The word of the interval of an IPv4 table that holds `addr` (a verdict or a class), before
/// the class is tried: `None` for a malformed table.
///
/// Bucket `b`'s entry is the first interval that starts at or after `b << V4_BUCKET_SHIFT`,
/// so the intervals that start in the bucket are those from its entry to the next one's; the
/// interval just before them holds the bucket's first address. Their keys are the low bits of
/// their starts, all in one chunk of the key array.
#[inline(always)]
pub fn interval_v4<'a>(get: impl Fn(u32) -> Option<&'a Chunk<V4Record>>, addr: u32) -> Option<u32> {
    let index = get(0)?;
    if index.at(0).key == 0 {
        return None;
    }
    // As in decide: a word that is always 0, unknown to the verifier.
    let zero = index.at(1).word;
    let bases = index.at(V4_BUCKET_BASE_RECORD);
    let b = addr >> V4_BUCKET_SHIFT;
    let buckets = get(bases.key + (b >> V4_CHUNK_BUCKET_BITS))?;
    let at = b & ((1 << V4_CHUNK_BUCKET_BITS) - 1);
    let (first, end) = (buckets.slot(at), buckets.slot(at + 1));
    if end < first {
        return None;
    }
    let keys = get(bases.word + (end.wrapping_sub(1) >> V4_KEY_BITS))?;
    // The last interval in first-1..end whose key is <= the low bits of `addr`; first-1
    // (which starts before the bucket) is never read. In bucket 0, interval 0 starts at 0 and
    // its key is 0, so the wrapped first-1 is never the answer of a well-formed table (if it
    // were, no chunk has its number, and the read below fails).
    let low = (addr & ((1 << V4_BUCKET_SHIFT) - 1)) as u16;
    let mut lo = first.wrapping_sub(1).wrapping_add(zero);
    let mut len = end - first + 1;
    for _ in 0..V4_SEARCH_STEPS {
        if len <= 1 {
            break;
        }
        let half = len / 2;
        let mid = lo.wrapping_add(half);
        if keys.key16(mid) <= low {
            lo = mid;
        }
        len -= half;
    }
    if len != 1 {
        return None;
    }
    Some(get(1 + (lo >> V4_SLOT_BITS))?.slot(lo))
}

/// [`decide`] for IPv6 tables, through their bucket table (see
/// [`crate::table::V6_BUCKET_BITS`]): a destination in the bucket window is searched between
/// its bucket's boundaries; one below or above it between the first interval and the window's
/// first, or the window's last and the last interval.
#[inline(always)]
pub fn decide_v6<'a>(
    get: impl Fn(u32) -> Option<&'a Chunk<V6Record>>,
    addr: (u64, u64),
    port: u16,
    proto: Proto,
) -> Option<u32> {
    let index = get(0)?;
    // The interval count, and (as in decide) a word that is always 0, unknown to the verifier.
    let (count, zero) = (index.at(0).key, index.at(1).word);
    let window = index.at(V6_BUCKET_RECORD);
    let base = window.key;
    let entry = |b: u32| -> Option<u32> {
        let record = get(base + (b >> 2 >> CHUNK_BITS))?.at(b >> 2);
        let half = if b & 2 == 0 { record.hi } else { record.lo };
        #[expect(clippy::cast_possible_truncation, reason = "two u32 entries in a u64")]
        Some(if b & 1 == 0 { (half >> 32) as u32 } else { half as u32 })
    };
    let prefix = addr.0 & window.lo;
    let (first, last) = match prefix.cmp(&window.hi) {
        Ordering::Less => (zero, entry(0)?),
        Ordering::Greater => (entry(V6_BUCKETS)?, count.wrapping_sub(1)),
        Ordering::Equal => {
            #[expect(clippy::cast_possible_truncation, reason = "masked to the bucket bits")]
            let b = (addr.0 >> (window.word & 63)) as u32 & (V6_BUCKETS - 1);
            (entry(b)?, entry(b + 1)?)
        }
    };
    // Also refuses an empty table (count 0).
    if last < first || last >= count {
        return None;
    }
    let i = last_between(
        |i| Some(get(1 + (i >> CHUNK_BITS))?.at(i).start()),
        first + zero,
        last,
        addr,
    )?;
    resolve(&get, get(1 + (i >> CHUNK_BITS))?.at(i).word, port, proto)
}

/// The last `i` in `first..=last` with `key(i) <= addr`, for keys sorted ascending and
/// `key(first) <= addr`, in at most [`MAX_SEARCH_STEPS`] steps; `None` if a key is missing or
/// the range is too long.
#[inline(always)]
fn last_between<A: Ord + Copy>(
    key: impl Fn(u32) -> Option<A>,
    first: u32,
    last: u32,
    addr: A,
) -> Option<u32> {
    let mut at = first;
    let mut len = last - first + 1;
    for _ in 0..MAX_SEARCH_STEPS {
        if len <= 1 {
            break;
        }
        let half = len / 2;
        if key(at + half)? <= addr {
            at += half;
        }
        len -= half;
    }
    (len == 1).then_some(at)
}

/// Steps of the IPv6 and unbucketed searches: enough for every interval a table may hold.
pub const MAX_SEARCH_STEPS: u32 = 24;

/// Steps of the IPv4 bucket search: enough for the most intervals one bucket may hold (one
/// a key, and the one before them).
pub const V4_SEARCH_STEPS: u32 = V4_BUCKET_SHIFT + 1;

/// The verdict an interval's `word` leads to: the word itself if it is a verdict, else the
/// first entry of its class that matches `port` and `proto`, trying at most [`MAX_CLASS_LEN`];
/// `None` if the class is missing or lacks its final entry.
#[inline(always)]
fn resolve<'a, R: Record + 'a>(
    get: impl Fn(u32) -> Option<&'a Chunk<R>>,
    word: u32,
    port: u16,
    proto: Proto,
) -> Option<u32> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{ALL_PORTS, pack_ports};

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
