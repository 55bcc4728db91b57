//! The cgroup `sock_addr` programs (connect4/6 and sendmsg4/6) and the packet checks
//! (`cgroup_skb/egress`, see `cgroup_connect_common::packet`). Each entry point is thin: it
//! calls `try_<hook>` and turns the result into a verdict. The decision itself is
//! `cgroup_connect_common::decide`, shared with userspace and pinned down by host unit tests;
//! `finish` counts it, reports blocks as events, and applies audit mode. A send that names no
//! destination (a connected UDP socket sending with ancillary data) is judged by the socket's
//! peer, through the same tables. A destination is judged where it goes: `0.0.0.0` by the
//! source address the kernel sends it to, or 127.0.0.1 (`reached_v4`), `::` as `::1`
//! (`reached_v6`); IPv4-mapped and NAT64 addresses (`nat64_ip4`) by the IPv4 table.
//!
//! Failure policy: a missing or malformed table fails closed (BLOCK, counted in
//! `stats::FAILED_CLOSED`). Userspace sets the tables before it attaches, so this only happens
//! on a bug, and a firewall that silently lets traffic through on a bug looks safe while it is
//! not. Counting and events never change a verdict: a full ring buffer or a full hit table
//! only loses the report (counted in `stats::EVENTS_LOST`). Reading the peer adds no error
//! path: the verifier checks those reads at load time, so they cannot fail at run time. A send
//! that names no destination on a socket without a peer (the kernel refuses it before the hook
//! anyway) is judged as before, as 0.0.0.0 or :: port 0: blocked in default-deny mode. The
//! NAT64 prefixes are config words read at in-range constant indices, which cannot fail: a
//! failure would judge a NAT64 address by the IPv6 table, as without `--nat64`.
//!
//! The packet checks fail closed too: a packet whose headers cannot be read, or that needs
//! more steps than the walks' bounds, is dropped (counted in `stats::FAILED_CLOSED`, or
//! reported as refused for its shape). The only packets they let through unread are those
//! of sockets the kernel does not hand them as full sockets (it runs egress programs for full
//! sockets only) and of families other than IPv4 and IPv6 (none reach this hook).

#![no_std]
#![no_main]
// The BPF target has no atomic read-modify-write in `core::sync::atomic` (no compare-and-swap),
// but LLVM compiles an atomic add to BPF's own; the intrinsic is the way to ask for it.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "core_intrinsics: the atomic add of the hit counters")]
#![expect(
    clippy::inline_always,
    reason = "the verifier needs straight-line code: no BPF-to-BPF calls"
)]

use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock},
    btf_maps::{
        Array, ArrayOfMaps, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf,
        lpm_trie::Key as LpmKey,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel,
        generated::{
            bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_get_socket_uid, bpf_jiffies64,
            bpf_ktime_get_boot_ns, bpf_sk_fullsock, bpf_skb_cgroup_id,
        },
    },
    macros::{btf_map, cgroup_skb, cgroup_sock, cgroup_sock_addr, cgroup_sockopt, lsm_cgroup},
    programs::{LsmContext, SkBuffContext, SockAddrContext, SockContext, SockoptContext},
};
use cgroup_connect_common::{
    ALLOW, BLOCK, CONFIG_AUDIT, Chunk, DNS_ORIGINS_CAPACITY, EVENTS_BYTES, Event, HIT_CLASSES,
    HitCount, LOOPBACK4, OBSERVE_CAPACITY, OBSERVE_SETS, ObserveSet, Observed, ObservedKey, Proto,
    RULE_FAILED_CLOSED, RULE_REFUSED_SHAPE, Record, Source, TABLE_CLASSES, TABLE_FLAGS,
    V4_LOOPBACK_RECORD, V4Record, V6Record, config, decide_v4, decide_v6,
    dns::{DNS_LEARNED_CAPACITY, DNS_PORT, LearnedClass, LearnedKey, Origin},
    hook, ip4_from_user, ip6_from_user, judge_reached, mapped_ip4, nat64_ip4, observe_set,
    observe_stats, or_peer,
    packet::{
        self, CMSG_HEADER, ETH_P_IP_BE, ETH_P_IPV6_BE, IPV4_HEADER, IPV6_HEADER, MAX_CMSGS,
        MAX_EXT_HEADERS, MAX_IP_OPTIONS, MAX_IP_OPTIONS_LEN, Next, OptionKind, OptionStep,
    },
    port_from_user, reached_v4, reached_v6, stats, verdict, word,
};

/// One outer map per table size class: its template fixes the table size, so the verifier
/// inlines every lookup into it.
type Tables<R, const CHUNKS: usize> =
    ArrayOfMaps<Array<Chunk<R>, CHUNKS, { TABLE_FLAGS as usize }>, 1>;

macro_rules! size_classes {
    ($($v4:ident $v4_name:literal $v6:ident $v6_name:literal $class:literal;)*) => {
        $(
            #[btf_map(name = $v4_name)]
            static $v4: Tables<V4Record, { TABLE_CLASSES[$class] as usize }> = ArrayOfMaps::new();
            #[btf_map(name = $v6_name)]
            static $v6: Tables<V6Record, { TABLE_CLASSES[$class] as usize }> = ArrayOfMaps::new();
        )*

        /// The verdict word from the IPv4 table, in the class `config::V4_CLASS` selects, for
        /// where a call goes (`reached_v4`), and the address it names.
        #[inline(always)]
        fn judge_v4(reached: (u32, bool), port: u16, proto: Proto) -> (Option<u32>, u32) {
            match CONFIG.get(config::V4_CLASS).copied() {
                $(Some($class) => judge_v4_table(&$v4, reached, port, proto),)*
                _ => (None, reached.0),
            }
        }

        /// The verdict word from the IPv6 table, in the class `config::V6_CLASS` selects.
        #[inline(always)]
        fn judge_v6(addr: (u64, u64), port: u16, proto: Proto) -> Option<u32> {
            match *CONFIG.get(config::V6_CLASS)? {
                $($class => judge_v6_table(&$v6, addr, port, proto),)*
                _ => None,
            }
        }
    };
}

size_classes! {
    V4_0 "rules_v4_0" V6_0 "rules_v6_0" 0;
    V4_1 "rules_v4_1" V6_1 "rules_v6_1" 1;
    V4_2 "rules_v4_2" V6_2 "rules_v6_2" 2;
    V4_3 "rules_v4_3" V6_3 "rules_v6_3" 3;
    V4_4 "rules_v4_4" V6_4 "rules_v6_4" 4;
}

/// The IPv4 search, and 127.0.0.1's verdict for a call that may go there (`judge_reached`),
/// in the table of one class.
#[inline(always)]
fn judge_v4_table<const CHUNKS: usize>(
    tables: &Tables<V4Record, CHUNKS>,
    reached: (u32, bool),
    port: u16,
    proto: Proto,
) -> (Option<u32>, u32) {
    let Some(table) = tables.get(0) else { return (None, reached.0) };
    let zero = unknown_zero(table);
    judge_reached(
        |addr| decide_v4(|i| table.get(i), addr | zero, port, proto),
        // A missing index would fail the search too: read as a blocking word, it fails closed.
        || table.get(0).map_or(BLOCKS, |index| index.at(V4_LOOPBACK_RECORD).word),
        reached,
    )
}

/// A verdict word that blocks (by the default rule), for a missing index.
const BLOCKS: u32 = word::DIRECT | word::BLOCK_BIT;

#[inline(always)]
fn judge_v6_table<const CHUNKS: usize>(
    tables: &Tables<V6Record, CHUNKS>,
    addr: (u64, u64),
    port: u16,
    proto: Proto,
) -> Option<u32> {
    let table = tables.get(0)?;
    let zero = u64::from(unknown_zero(table));
    decide_v6(|i| table.get(i), (addr.0 | zero, addr.1 | zero), port, proto)
}

/// A word that is always 0 (fence 0's word, as in `decide`), unknown to the verifier. Or-ed
/// into a destination, it drops what the verifier learnt of it on the way (that a mapped or
/// NAT64 address's high half is 0 or `64:ff9b::`, that a destination is `::1`), so it follows a
/// search once for all the ways to it, not once for each.
#[inline(always)]
fn unknown_zero<R: Record, const CHUNKS: usize>(
    table: &Array<Chunk<R>, CHUNKS, { TABLE_FLAGS as usize }>,
) -> u32 {
    table.get(0).map_or(0, |index| index.at(1).word())
}

#[btf_map(name = "stats")]
static STATS: PerCpuArray<u64, { stats::COUNT as usize }> = PerCpuArray::new();

/// One outer map per hit-counter class, as for the tables.
type Hits<const N: usize> = ArrayOfMaps<Array<HitCount, N, { TABLE_FLAGS as usize }>, 1>;

macro_rules! hit_classes {
    ($($hits:ident $name:literal $class:literal;)*) => {
        $(
            #[btf_map(name = $name)]
            static $hits: Hits<{ HIT_CLASSES[$class] as usize }> = ArrayOfMaps::new();
        )*

        /// Counts a decision of `rule` in the hit-counter array `config::HITS_CLASS` selects.
        #[inline(always)]
        fn hit(rule: u32) {
            match CONFIG.get(config::HITS_CLASS).copied() {
                $(Some($class) => hit_in(&$hits, rule),)*
                _ => {}
            }
        }
    };
}

hit_classes! {
    HITS_0 "rule_hits_0" 0;
    HITS_1 "rule_hits_1" 1;
    HITS_2 "rule_hits_2" 2;
    HITS_3 "rule_hits_3" 3;
    HITS_4 "rule_hits_4" 4;
}

/// Adds one to `rule`'s counter: an atomic add into a shared array, no hashing, no eviction.
/// An id past the array (more rules than the largest class), or no array, only loses the count.
#[inline(always)]
fn hit_in<const N: usize>(hits: &Hits<N>, rule: u32) {
    let Some(counts) = hits.get(0) else { return };
    if let Some(count) = counts.get_ptr_mut(rule) {
        // SAFETY: an element of a map value, 8-aligned, alive while the program runs; other
        // CPUs only ever touch it atomically too. The result is unused, so this is the plain
        // atomic add every kernel knows (`BPF_XADD`), not the 5.12 fetching one.
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                &raw mut (*count).hits,
                1,
            )
        };
    }
}

/// Observe mode's record (see `cgroup_connect_common::observe`); userspace sets its size at
/// load (`blocker run --observe-capacity`).
#[btf_map(name = "observed")]
static OBSERVED: LruHashMap<ObservedKey, Observed, { OBSERVE_CAPACITY as usize }> =
    LruHashMap::new();

/// Each CPU's cache of the destinations it judged last, in front of `OBSERVED`.
#[btf_map(name = "observe_cache")]
static OBSERVE_CACHE: PerCpuArray<ObserveSet, { OBSERVE_SETS as usize }> = PerCpuArray::new();

#[btf_map(name = "observe_stats")]
static OBSERVE_STATS: PerCpuArray<u64, { observe_stats::COUNT as usize }> = PerCpuArray::new();

#[btf_map(name = "events")]
static EVENTS: RingBuf<Event, { EVENTS_BYTES as usize }> = RingBuf::new();

#[btf_map(name = "dns_origins")]
static DNS_ORIGINS: LruHashMap<u64, Origin, { DNS_ORIGINS_CAPACITY as usize }> = LruHashMap::new();

/// The DNS forwarder's learned addresses that the tables do not hold yet (see
/// `dns_learned`).
#[btf_map(name = "dns_learned")]
static DNS_LEARNED: HashMap<LearnedKey, LearnedClass, { DNS_LEARNED_CAPACITY as usize }> =
    HashMap::new();

#[btf_map(name = "config")]
static CONFIG: Array<u32, { config::LEN as usize }> = Array::new();

#[cgroup_sock_addr(connect4)]
#[expect(clippy::needless_pass_by_value, reason = "the macro passes the context by value")]
pub fn check_connect4(ctx: SockAddrContext) -> i32 {
    try_v4(&ctx, hook::CONNECT).unwrap_or_else(|fail_closed| fail_closed)
}

#[cgroup_sock_addr(sendmsg4)]
#[expect(clippy::needless_pass_by_value, reason = "the macro passes the context by value")]
pub fn check_sendmsg4(ctx: SockAddrContext) -> i32 {
    try_v4(&ctx, hook::SENDMSG).unwrap_or_else(|fail_closed| fail_closed)
}

#[cgroup_sock_addr(connect6)]
#[expect(clippy::needless_pass_by_value, reason = "the macro passes the context by value")]
pub fn check_connect6(ctx: SockAddrContext) -> i32 {
    try_v6(&ctx, hook::CONNECT).unwrap_or_else(|fail_closed| fail_closed)
}

#[cgroup_sock_addr(sendmsg6)]
#[expect(clippy::needless_pass_by_value, reason = "the macro passes the context by value")]
pub fn check_sendmsg6(ctx: SockAddrContext) -> i32 {
    try_v6(&ctx, hook::SENDMSG).unwrap_or_else(|fail_closed| fail_closed)
}

/// The packet checks: judges the packets the `sock_addr` programs did not (see
/// `cgroup_connect_common::packet`). Returning `BLOCK` drops the packet; the sender of a UDP,
/// raw or ping datagram gets EPERM, a TCP handshake never leaves.
#[cgroup_skb(egress)]
#[expect(clippy::needless_pass_by_value, reason = "the macro passes the context by value")]
pub fn check_egress(ctx: SkBuffContext) -> i32 {
    try_egress(&ctx).unwrap_or_else(|fail_closed| fail_closed)
}

/// The socket check: refuses (EPERM at `socket()`) an IPv4 or IPv6 socket whose packets the
/// `sock_addr` hooks do not judge (`packet::socket_kind`), unless its kind is allowed (a bit of
/// the flags word). The kernel runs it for sockets a task makes, not for the kernel's own.
#[cgroup_sock(sock_create)]
#[expect(clippy::needless_pass_by_value, reason = "the macro passes the context by value")]
pub fn check_socket(ctx: SockContext) -> i32 {
    zero_or_one(try_socket(&ctx).unwrap_or_else(|fail_closed| fail_closed))
}

#[inline(always)]
fn try_socket(ctx: &SockContext) -> Result<i32, i32> {
    // SAFETY: the kernel hands every sock_create program a valid bpf_sock; type and protocol
    // are readable there from 4.10, one u32 each.
    let kind = unsafe { packet::socket_kind((*ctx.sock).type_, (*ctx.sock).protocol) };
    if kind == 0 {
        return Ok(ALLOW);
    }
    // A missing flags word fails closed, as a missing table does.
    let flags = *CONFIG.get(config::FLAGS).ok_or_else(failed_closed)?;
    if flags & kind != 0 {
        return Ok(ALLOW);
    }
    Ok(refuse_call(flags))
}

/// The option check: refuses (EPERM) a non-empty IPv6 routing header, IPv4 options holding a
/// source route, and `IPV6_2292PKTOPTIONS` control messages holding a routing header. Every
/// other option passes untouched: the kernel then reads it from the caller's buffer.
#[cgroup_sockopt(setsockopt)]
#[expect(clippy::needless_pass_by_value, reason = "the macro passes the context by value")]
pub fn check_setsockopt(ctx: SockoptContext) -> i32 {
    zero_or_one(try_setsockopt(&ctx).unwrap_or_else(|fail_closed| fail_closed))
}

#[inline(always)]
fn try_setsockopt(ctx: &SockoptContext) -> Result<i32, i32> {
    let so = ctx.sockopt;
    // SAFETY: the kernel hands every sockopt program a valid bpf_sockopt; level, optname and
    // optlen are readable, optval and optval_end bound the copy of the value it made (at most
    // a page).
    let (level, optname, optlen, start, end) = unsafe {
        (
            (*so).level,
            (*so).optname,
            (*so).optlen,
            (*so).__bindgen_anon_2.optval as usize,
            (*so).__bindgen_anon_3.optval_end as usize,
        )
    };
    let kind = packet::sockopt_kind(level, optname);
    #[expect(clippy::cast_sign_loss, reason = "a negative length is refused by the kernel")]
    let len = optlen.max(0) as usize;
    if kind == OptionKind::Other {
        if len > end - start {
            // A value longer than the copy (over a page): optlen 0 tells the kernel to read
            // the caller's buffer; left as it is, 6.1 would fail the call with EFAULT.
            // SAFETY: optlen of a setsockopt context is writable.
            unsafe { (*so).optlen = 0 };
        }
        return Ok(ALLOW);
    }
    if len == 0 {
        // An empty value removes the header or options.
        return Ok(ALLOW);
    }
    let flags = *CONFIG.get(config::FLAGS).ok_or_else(failed_closed)?;
    if len > end - start {
        // Fails closed: a value longer than the copy the program sees is not judged.
        return Ok(refuse_call(flags));
    }
    let byte = |at: usize| -> Option<u8> {
        // The copy is at most a page: a bound the verifier can see on the offset.
        if at >= 4096 {
            return None;
        }
        let p = start + at;
        if p + 1 > end {
            return None;
        }
        // SAFETY: within [optval, optval_end), checked just above as the verifier wants.
        Some(unsafe { *(p as *const u8) })
    };
    let routes = match kind {
        OptionKind::IpOptions => ip_options_route(len, byte),
        OptionKind::ControlMessages => pktoptions_route(len, byte),
        _ => true,
    };
    Ok(if routes { refuse_call(flags) } else { ALLOW })
}

/// Whether IPv4 options of `len` bytes, read by `byte`, hold a source route (or cannot be
/// walked in `MAX_IP_OPTIONS` steps, which fails closed).
#[inline(always)]
fn ip_options_route(len: usize, byte: impl Fn(usize) -> Option<u8>) -> bool {
    let mut offset = 0;
    for _ in 0..MAX_IP_OPTIONS {
        if offset >= len {
            return false;
        }
        let Some(kind) = byte(offset) else { return true };
        let length = if kind > 1 {
            let Some(length) = byte(offset + 1) else { return true };
            length
        } else {
            0
        };
        match packet::option_step(kind, length) {
            OptionStep::End => return false,
            OptionStep::Skip(n) => offset += n as usize,
            OptionStep::SourceRoute | OptionStep::Malformed => return true,
        }
    }
    offset < len
}

/// Whether the control messages of an `IPV6_2292PKTOPTIONS` value hold a routing header (or
/// more messages than walked, which fails closed).
#[inline(always)]
fn pktoptions_route(len: usize, byte: impl Fn(usize) -> Option<u8>) -> bool {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes([byte(at)?, byte(at + 1)?, byte(at + 2)?, byte(at + 3)?]))
    };
    let mut offset = 0;
    for _ in 0..MAX_CMSGS {
        if offset + CMSG_HEADER as usize > len {
            return false;
        }
        let (Some(low), Some(high), Some(level), Some(kind)) =
            (word(offset), word(offset + 4), word(offset + 8), word(offset + 12))
        else {
            return true;
        };
        #[expect(clippy::cast_possible_wrap, reason = "level and type are C ints")]
        if packet::cmsg_kind(level as i32, kind as i32) != OptionKind::Other {
            return true;
        }
        let Some(step) = packet::cmsg_step(u64::from(high) << 32 | u64::from(low)) else {
            return true;
        };
        offset += step as usize;
    }
    offset + CMSG_HEADER as usize <= len
}

/// Offsets of `msg_control` and `msg_controllen` in the running kernel's `struct msghdr`, from
/// its BTF: userspace sets them when it loads the programs (read-only data, constants to the
/// verifier).
#[unsafe(no_mangle)]
static MSGHDR_CONTROL: u32 = 0;
#[unsafe(no_mangle)]
static MSGHDR_CONTROLLEN: u32 = 0;

/// The control-message check (BPF LSM, per cgroup): refuses a `sendmsg()` whose control
/// messages hold an IPv6 routing header or IPv4 options with a source route. The kernel runs
/// it for sockets of the cgroup, on every send; a send without control messages costs two
/// loads.
#[lsm_cgroup(hook = "socket_sendmsg")]
#[expect(clippy::needless_pass_by_value, reason = "the macro passes the context by value")]
pub fn check_sendmsg_options(ctx: LsmContext) -> i32 {
    zero_or_one(try_sendmsg_options(&ctx).unwrap_or_else(|fail_closed| fail_closed))
}

#[inline(always)]
fn try_sendmsg_options(ctx: &LsmContext) -> Result<i32, i32> {
    let msg: *const u8 = ctx.arg(1);
    // SAFETY: read-only globals the loader set; volatile keeps the compiler from folding them.
    let (control_at, len_at) = unsafe {
        (
            core::ptr::read_volatile(&raw const MSGHDR_CONTROL),
            core::ptr::read_volatile(&raw const MSGHDR_CONTROLLEN),
        )
    };
    // SAFETY: probe reads of the kernel's msghdr: a failed read fails closed.
    let len: u64 = unsafe { bpf_probe_read_kernel(msg.add(len_at as usize).cast()) }
        .map_err(|_| failed_closed())?;
    if len == 0 {
        return Ok(ALLOW);
    }
    // SAFETY: as above; the control messages are in kernel memory by now (the syscall
    // copied them), so the caller cannot change them after this check.
    let control: u64 = unsafe { bpf_probe_read_kernel(msg.add(control_at as usize).cast()) }
        .map_err(|_| failed_closed())?;
    let mut offset = 0u64;
    for _ in 0..MAX_CMSGS {
        if offset + u64::from(CMSG_HEADER) > len {
            return Ok(ALLOW);
        }
        let at = (control + offset) as *const [u32; 4];
        // SAFETY: as above.
        let header = unsafe { bpf_probe_read_kernel(at) }.map_err(|_| failed_closed())?;
        #[expect(clippy::cast_possible_wrap, reason = "level and type are C ints")]
        let kind = packet::cmsg_kind(header[2] as i32, header[3] as i32);
        let cmsg_len = u64::from(header[1]) << 32 | u64::from(header[0]);
        let routes = match kind {
            OptionKind::RoutingHeader => true,
            OptionKind::IpOptions => {
                let data = control + offset + u64::from(CMSG_HEADER);
                #[expect(clippy::cast_possible_truncation, reason = "at most 40")]
                let data_len = cmsg_len
                    .saturating_sub(u64::from(CMSG_HEADER))
                    .min(u64::from(MAX_IP_OPTIONS_LEN)) as usize;
                // One probe read a byte, not a buffer on the stack read at a variable offset:
                // 6.1's verifier refuses that ("invalid variable-offset read from stack")
                // before 6.3 lets privileged programs read stack it cannot prove written.
                // A failed read (None) fails closed, as a byte past 40 does.
                ip_options_route(data_len, |i| {
                    if i >= MAX_IP_OPTIONS_LEN as usize {
                        return None;
                    }
                    // SAFETY: as above; bytes past the message may be read, never judged.
                    unsafe { bpf_probe_read_kernel((data + i as u64) as *const u8) }.ok()
                })
            }
            _ => false,
        };
        if routes {
            return Ok(refuse_call(config_flags()));
        }
        let Some(step) = packet::cmsg_step(cmsg_len) else {
            // The kernel refuses such a message itself (EINVAL).
            return Ok(ALLOW);
        };
        offset += u64::from(step);
    }
    // Fails closed: more control messages than walked.
    Ok(if offset + u64::from(CMSG_HEADER) > len { ALLOW } else { refuse_call(config_flags()) })
}

/// `verdict` (ALLOW or BLOCK) masked to one bit after a volatile read: these hooks must return
/// exactly 0 or 1, and the verifier loses track of a verdict that the compiler spilled to the
/// stack across the counting.
#[inline(always)]
fn zero_or_one(verdict: i32) -> i32 {
    // SAFETY: a read of a local.
    unsafe { core::ptr::read_volatile(&raw const verdict) & 1 }
}

/// The flags word; missing (a bug), as if no flag were set: refusals stay refusals.
#[inline(always)]
fn config_flags() -> u32 {
    CONFIG.get(config::FLAGS).copied().unwrap_or(0)
}

/// Counts a failure to read what a check needs: the call is refused (fails closed).
#[inline(always)]
fn failed_closed() -> i32 {
    count(stats::FAILED_CLOSED);
    BLOCK
}

/// Refuses a call (`socket()`, `setsockopt()`, `sendmsg()`): counted as blocked, or in audit
/// mode (`flags`) counted and let through. Not reported as an event: these hooks may not call
/// the current-task helpers on every kernel the blocker supports.
#[inline(always)]
fn refuse_call(flags: u32) -> i32 {
    if flags & CONFIG_AUDIT != 0 {
        count(stats::AUDITED);
        return ALLOW;
    }
    count(stats::BLOCKED);
    BLOCK
}

/// Reference for the benchmarks: allows everything, touches nothing. The blocker never loads
/// or attaches it; `blocker`'s bench measures the cost of any program against it.
#[cgroup_sock_addr(connect4)]
pub fn reference_allow(_ctx: SockAddrContext) -> i32 {
    ALLOW
}

/// Reference for the benchmarks: allows every IPv6 connect, touches nothing (the IPv6
/// workloads' allow-only). The blocker never loads or attaches it.
#[cgroup_sock_addr(connect6)]
pub fn reference_allow6(_ctx: SockAddrContext) -> i32 {
    ALLOW
}

/// The benchmarks' plain hash map of blocked IPv4 hosts (`user_ip4` as the kernel gives it).
/// One entry here so that every load of the object creates it small; the benchmark sizes it
/// with `EbpfLoader::set_max_entries`. The blocker never fills it.
#[btf_map(name = "reference_hosts")]
static REFERENCE_HOSTS: HashMap<u32, u8, 1> = HashMap::new();

/// The benchmarks' LPM trie of blocked IPv4 prefixes (key data in network byte order); made
/// without preallocation, and sized by the benchmark like [`REFERENCE_HOSTS`].
#[btf_map(name = "reference_prefixes")]
static REFERENCE_PREFIXES: LpmTrie<u32, u8, 1> = LpmTrie::new();

/// Reference for the benchmarks: blocks an IPv4 connect whose destination is in
/// [`REFERENCE_HOSTS`]. The blocker never loads or attaches it.
#[cgroup_sock_addr(connect4)]
#[expect(clippy::needless_pass_by_value, reason = "the macro passes the context by value")]
pub fn reference_hash(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands every sock_addr program a valid bpf_sock_addr.
    let ip = unsafe { (*ctx.sock_addr).user_ip4 };
    if REFERENCE_HOSTS.get_ptr(ip).is_some() { BLOCK } else { ALLOW }
}

/// Reference for the benchmarks: blocks an IPv4 connect whose destination falls in a prefix
/// of [`REFERENCE_PREFIXES`]. The blocker never loads or attaches it.
#[cgroup_sock_addr(connect4)]
#[expect(clippy::needless_pass_by_value, reason = "the macro passes the context by value")]
pub fn reference_lpm(ctx: SockAddrContext) -> i32 {
    // SAFETY: the kernel hands every sock_addr program a valid bpf_sock_addr.
    let ip = unsafe { (*ctx.sock_addr).user_ip4 };
    if REFERENCE_PREFIXES.get(&LpmKey::new(32, ip)).is_some() { BLOCK } else { ALLOW }
}

/// The fast path: a packet of a TCP stream or UDP datagram socket without IPv4 options or
/// IPv6 extension headers was judged at its connect or send, and passes after two reads.
#[inline(always)]
fn try_egress(ctx: &SkBuffContext) -> Result<i32, i32> {
    let skb = ctx.skb.skb;
    // SAFETY: the kernel hands every cgroup_skb program a valid __sk_buff; sk may be null.
    let sk = unsafe { (*skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        // Fails open: the kernel runs egress programs only for packets of full sockets.
        return Ok(ALLOW);
    }
    // SAFETY: a non-null socket from the context, as the helper takes it.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        // Fails open, as above: never reached on egress.
        return Ok(ALLOW);
    }
    // SAFETY: a full socket; type and protocol are readable from 5.1, one u32 each.
    let fast = unsafe { packet::judged_at_socket((*full).type_, (*full).protocol) };
    // SAFETY: as above; protocol is the packet's EtherType, network order.
    let family = unsafe { (*skb).protocol };
    if family == ETH_P_IP_BE {
        let first: u8 = load(ctx, 0)?;
        if fast && first & 0x0f == 5 {
            return Ok(ALLOW);
        }
        packet_v4(ctx, first)
    } else if family == ETH_P_IPV6_BE {
        let next: u8 = load(ctx, 6)?;
        if fast && (next == packet::IPPROTO_TCP || next == packet::IPPROTO_UDP) {
            return Ok(ALLOW);
        }
        packet_v6(ctx, next)
    } else {
        // Fails open: only IPv4 and IPv6 packets reach the cgroup egress hook.
        Ok(ALLOW)
    }
}

/// `T` from the packet at `offset` (from the network header). `Err(BLOCK)`: the packet is
/// shorter than its headers say (fails closed, counted).
#[inline(always)]
fn load<T>(ctx: &SkBuffContext, offset: u32) -> Result<T, i32> {
    ctx.load(offset as usize).map_err(|_| {
        count(stats::FAILED_CLOSED);
        BLOCK
    })
}

/// The destination port of a packet of transport protocol `proto` whose transport header is
/// at `offset`; 0 for a protocol without ports, a later fragment, or a transport header cut
/// short (such a packet carries no port a service would see).
#[inline(always)]
fn packet_port(ctx: &SkBuffContext, proto: u8, offset: u32, later_fragment: bool) -> u16 {
    if !packet::has_ports(proto) || later_fragment {
        return 0;
    }
    ctx.load::<u16>(offset as usize + 2).map_or(0, u16::from_be)
}

/// Judges an IPv4 packet: its destination, after walking its options (a source route is
/// refused: the destination field then holds only the first hop).
#[inline(always)]
fn packet_v4(ctx: &SkBuffContext, first: u8) -> Result<i32, i32> {
    let proto: u8 = load(ctx, 9)?;
    let frag_off = u16::from_be(load(ctx, 6)?);
    let daddr = u32::from_be(load(ctx, 16)?);
    let header = u32::from(first & 0x0f) * 4;
    let mut attempt = Attempt {
        family: 4,
        hook: hook::PACKET,
        protocol: u32::from(proto),
        addr: (0, u64::from(daddr)),
        port: 0,
        packet: Some(ctx.skb.skb),
    };
    let mut offset = IPV4_HEADER;
    for _ in 0..MAX_IP_OPTIONS {
        if offset >= header {
            break;
        }
        let kind: u8 = load(ctx, offset)?;
        let len: u8 = if kind > 1 { load(ctx, offset + 1)? } else { 0 };
        match packet::option_step(kind, len) {
            OptionStep::End => offset = header,
            OptionStep::Skip(n) => offset += n,
            OptionStep::SourceRoute | OptionStep::Malformed => return Ok(refuse(&attempt)),
        }
    }
    if offset < header {
        return Ok(refuse(&attempt));
    }
    attempt.port = packet_port(ctx, proto, header, packet::later_fragment(frag_off));
    let (port, proto) = launder(ctx, attempt.port, proto);
    // A packet goes where its header says: no 0.0.0.0 to resolve.
    let (word, _) = judge_v4((daddr, false), port, proto);
    finish(&attempt, word)
}

/// An IPv6 address of the packet at `offset`, as (high, low) halves.
#[inline(always)]
fn load_ip6(ctx: &SkBuffContext, offset: u32) -> Result<(u64, u64), i32> {
    let words: [u32; 4] = load(ctx, offset)?;
    Ok(ip6_from_user(words))
}

/// Judges an IPv6 packet: walks its extension headers to the transport header, then judges
/// its destination. A routing header is refused, whatever its addresses: judging them takes
/// one table search per address, and two already exceed the verifier's limit
/// (docs/design.md).
#[inline(always)]
fn packet_v6(ctx: &SkBuffContext, first_next: u8) -> Result<i32, i32> {
    let daddr = load_ip6(ctx, 24)?;
    let mut attempt = Attempt {
        family: 6,
        hook: hook::PACKET,
        protocol: u32::from(first_next),
        addr: daddr,
        port: 0,
        packet: Some(ctx.skb.skb),
    };
    if mapped_ip4(daddr).is_some() {
        // Only a forged header names an IPv4-mapped destination (a socket's sends to one are
        // IPv4 packets): refused rather than judged by the IPv4 table, which would double
        // the verifier's work on this program.
        return Ok(refuse(&attempt));
    }
    let mut next = first_next;
    let mut offset = IPV6_HEADER;
    let mut later_fragment = false;
    for _ in 0..MAX_EXT_HEADERS {
        let Next::Ext { routing, fragment } = packet::next_header(next) else {
            break;
        };
        if routing {
            return Ok(refuse(&attempt));
        }
        let header: [u8; 4] = load(ctx, offset)?;
        if fragment {
            later_fragment = u16::from_be_bytes([header[2], header[3]]) & 0xfff8 != 0;
        }
        offset += packet::ext_header_len(next, header[1]);
        next = header[0];
    }
    attempt.protocol = u32::from(next);
    if packet::next_header(next) != Next::Transport {
        // Fails closed: more extension headers than walked.
        return Ok(refuse(&attempt));
    }
    attempt.port = packet_port(ctx, next, offset, later_fragment);
    let (port, proto) = launder(ctx, attempt.port, next);
    let word = judge_v6(daddr, port, proto);
    finish(&attempt, word)
}

/// The port and protocol to judge, passed through the packet's control block
/// (`__sk_buff.cb[0]`, which the kernel saves and restores around cgroup programs): the
/// verifier then sees plain numbers instead of one value per path of the header walk, and
/// checks the table search after it once instead of once per path (docs/design.md).
#[inline(always)]
fn launder(ctx: &SkBuffContext, port: u16, ip_proto: u8) -> (u16, Proto) {
    let skb = ctx.skb.skb;
    // SAFETY: cb[0] of a cgroup_skb context is readable and writable, a u32; volatile keeps
    // the compiler from passing the value around the control block.
    let word = unsafe {
        core::ptr::write_volatile(
            &raw mut (*skb).cb[0],
            u32::from(port) | u32::from(ip_proto) << 16,
        );
        core::ptr::read_volatile(&raw const (*skb).cb[0])
    };
    #[expect(clippy::cast_possible_truncation, reason = "unpacks the two halves")]
    (word as u16, Proto::from_ip_proto((word >> 16) & 0xff))
}

/// Reference for the packet benchmarks: lets every packet through, touches nothing. The
/// blocker never loads or attaches it.
#[cgroup_skb(egress)]
pub fn reference_egress(_ctx: SkBuffContext) -> i32 {
    ALLOW
}

/// What is being decided: the destination the call reaches (the one the caller gave, or for a
/// send that named none, the socket's peer (see `or_peer`); `0.0.0.0` and `::` where the
/// kernel sends them).
struct Attempt {
    family: u8,
    hook: u8,
    protocol: u32,
    addr: (u64, u64),
    port: u16,
    /// The packet, for the packet checks: their events name the socket's owner and cgroup
    /// (the egress hook may run in another task's context, or in none), and `cgroup_skb`
    /// programs may not call the current-task helpers before 6.4 (6.1 refuses them).
    packet: Option<*mut __sk_buff>,
}

/// The verdict for an IPv4 destination.
#[inline(always)]
fn try_v4(ctx: &SockAddrContext, hook: u8) -> Result<i32, i32> {
    // SAFETY: the kernel hands every sock_addr program a valid bpf_sock_addr.
    let sa = unsafe { &*ctx.sock_addr };
    let (addr, port) = (ip4_from_user(sa.user_ip4), port_from_user(sa.user_port));
    let (addr, port) = if hook == hook::SENDMSG {
        or_peer(addr, port, || {
            let sk = peer_socket(ctx);
            // SAFETY: see peer_socket; dst_ip4 is readable from 5.1, one u32.
            let peer = unsafe { (*sk).dst_ip4 };
            dns_peer_v4(ctx, (ip4_from_user(peer), peer_port(sk)))
        })
    } else {
        (addr, port)
    };
    let reached = reached_v4(addr, || {
        if hook == hook::SENDMSG {
            // msg_src_ip4 is readable in sendmsg4 programs only, from 4.18; one u32.
            Source::Exact(ip4_from_user(sa.msg_src_ip4))
        } else {
            bound_v4(ctx)
        }
    });
    let proto = Proto::from_ip_proto(sa.protocol);
    let (word, addr) = judge_v4(reached, port, proto);
    let attempt = Attempt {
        family: 4,
        hook,
        protocol: sa.protocol,
        addr: (0, u64::from(addr)),
        port,
        packet: None,
    };
    let verdict = finish(&attempt, word)?;
    if port == DNS_PORT && verdict == ALLOW {
        return Ok(dns_redirect_v4(ctx, addr));
    }
    Ok(verdict)
}

/// The verdict for an IPv6 destination; IPv4-mapped and NAT64 ones are judged by the IPv4
/// table.
#[inline(always)]
fn try_v6(ctx: &SockAddrContext, hook: u8) -> Result<i32, i32> {
    // SAFETY: as in try_v4. Each word is read at its own constant offset: copying the whole
    // user_ip6 array can trip the verifier.
    let sa = unsafe { &*ctx.sock_addr };
    let words = [sa.user_ip6[0], sa.user_ip6[1], sa.user_ip6[2], sa.user_ip6[3]];
    let (addr, port) = (ip6_from_user(words), port_from_user(sa.user_port));
    let (addr, port) = if hook == hook::SENDMSG {
        or_peer(addr, port, || {
            let sk = peer_socket(ctx);
            // SAFETY: see peer_socket; dst_ip6 is readable from 5.1, one u32 at a time.
            let peer =
                unsafe { [(*sk).dst_ip6[0], (*sk).dst_ip6[1], (*sk).dst_ip6[2], (*sk).dst_ip6[3]] };
            (ip6_from_user(peer), peer_port(sk))
        })
    } else {
        (addr, port)
    };
    // udpv6_sendmsg sends :: to ::1 whatever the source (and hands a mapped socket's :: to
    // the IPv4 path before this hook); a connect on a mapped socket goes to ::ffff:127.0.0.1.
    let addr = reached_v6(addr, || {
        if hook == hook::SENDMSG {
            return false;
        }
        let sk = peer_socket(ctx);
        // SAFETY: see peer_socket; src_ip6 is readable from 5.1, one u32 at a time.
        let src =
            unsafe { [(*sk).src_ip6[0], (*sk).src_ip6[1], (*sk).src_ip6[2], (*sk).src_ip6[3]] };
        mapped_ip4(ip6_from_user(src)).is_some()
    });
    let proto = Proto::from_ip_proto(sa.protocol);
    // One search of the IPv4 table for mapped and NAT64 addresses alike: each search inlined
    // once more costs the verifier a search more, and 6.1's has little room left.
    let mapped = mapped_ip4(addr);
    let (word, addr) = match mapped.or_else(|| nat64_ip4(addr, nat64_prefix)) {
        Some(v4) => {
            let reached = match mapped {
                // A sendmsg6 program never sees a mapped address: the kernel hands those sends
                // to the IPv4 path first.
                Some(_) if hook == hook::CONNECT => reached_v4(v4, || bound_v4(ctx)),
                _ => (v4, false),
            };
            let (word, v4) = judge_v4(reached, port, proto);
            // The address reached, in the form given: a mapped address whose IPv4 part went
            // elsewhere held 0.0.0.0 there; a NAT64 one holds the same IPv4 address.
            (word, (addr.0, addr.1 | u64::from(v4)))
        }
        None => (judge_v6(addr, port, proto), addr),
    };
    let attempt = Attempt { family: 6, hook, protocol: sa.protocol, addr, port, packet: None };
    let verdict = finish(&attempt, word)?;
    if port == DNS_PORT && verdict == ALLOW {
        return Ok(dns_refuse_v6());
    }
    Ok(verdict)
}

/// The forwarder's port (`config::DNS_PORT`), 0 when there is none. Fails closed: a missing
/// config word is a bug, and DNS that passes the forwarder by would leave hostname rules
/// without the answers the caller got.
#[inline(always)]
fn dns_forwarder() -> Result<u32, i32> {
    CONFIG.get(config::DNS_PORT).copied().ok_or(BLOCK)
}

/// An allowed IPv4 DNS call (port 53, UDP or TCP), with a forwarder: sent to it on 127.0.0.1
/// instead, the resolver kept under the socket's cookie (`DNS_ORIGINS`) for the forwarder and
/// for `dns_restore`. Fails closed (BLOCK) when the resolver cannot be kept: the forwarder
/// would not know where to send the query.
#[inline(always)]
fn dns_redirect_v4(ctx: &SockAddrContext, addr: u32) -> i32 {
    let forwarder = match dns_forwarder() {
        Ok(0) => return ALLOW,
        Ok(port) => port,
        Err(fail_closed) => return fail_closed,
    };
    // SAFETY: the program's own context, as the helper takes it (from 4.20 for sock_addr).
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    let origin = Origin { addr, port: u32::from(DNS_PORT) };
    if DNS_ORIGINS.insert(cookie, origin, 0).is_err() {
        return BLOCK;
    }
    // SAFETY: user_ip4 and user_port of a connect4 or sendmsg4 context are writable.
    #[expect(clippy::cast_possible_truncation, reason = "a port number")]
    unsafe {
        (*ctx.sock_addr).user_ip4 = LOOPBACK4.to_be();
        (*ctx.sock_addr).user_port = u32::from((forwarder as u16).to_be());
    }
    ALLOW
}

/// A connected socket's peer as its caller named it: for a socket connect4 sent to the
/// forwarder, the resolver kept under its cookie, so that a send with ancillary data and no
/// address is judged as the DNS call it is (and not as one to 127.0.0.1:PORT). The config and
/// the map are read only for a loopback peer; without a forwarder, or with no resolver kept,
/// the peer stays as it is (judged by the rules as any other).
#[inline(always)]
fn dns_peer_v4(ctx: &SockAddrContext, peer: (u32, u16)) -> (u32, u16) {
    if peer.0 != LOOPBACK4 {
        return peer;
    }
    match dns_forwarder() {
        Ok(port) if port != 0 && port == u32::from(peer.1) => {}
        _ => return peer,
    }
    // SAFETY: as in dns_redirect_v4.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // SAFETY: a value of this map, read once.
    match unsafe { DNS_ORIGINS.get(cookie) }.copied() {
        #[expect(clippy::cast_possible_truncation, reason = "a port number")]
        Some(origin) => (origin.addr, origin.port as u16),
        None => peer,
    }
}

/// An allowed IPv6 DNS call, with a forwarder: refused (fails closed). The forwarder listens
/// on IPv4 only; let through, the answer would reach the caller without its addresses in the
/// tables (docs/design.md, "DNS").
#[inline(always)]
fn dns_refuse_v6() -> i32 {
    match dns_forwarder() {
        Ok(0) => ALLOW,
        Ok(_) => {
            count(stats::BLOCKED);
            BLOCK
        }
        Err(fail_closed) => fail_closed,
    }
}

/// The DNS answers' sender, as the caller sees it: a datagram from the forwarder
/// (127.0.0.1:`config::DNS_PORT`) to a socket whose query it forwarded reads as coming from
/// the resolver the query named. The kernel lets these hooks only rewrite; they never refuse.
#[cgroup_sock_addr(recvmsg4)]
#[expect(clippy::needless_pass_by_value, reason = "the macro passes the context by value")]
pub fn dns_recvmsg4(ctx: SockAddrContext) -> i32 {
    dns_restore(&ctx);
    ALLOW
}

/// The same for `getpeername()` on a socket connected to the forwarder (TCP, connected UDP).
#[cgroup_sock_addr(getpeername4)]
#[expect(clippy::needless_pass_by_value, reason = "the macro passes the context by value")]
pub fn dns_getpeername4(ctx: SockAddrContext) -> i32 {
    dns_restore(&ctx);
    ALLOW
}

#[inline(always)]
fn dns_restore(ctx: &SockAddrContext) {
    // SAFETY: the kernel hands every sock_addr program a valid bpf_sock_addr.
    let sa = unsafe { &mut *ctx.sock_addr };
    let Ok(forwarder) = dns_forwarder() else { return };
    if forwarder == 0
        || u32::from(port_from_user(sa.user_port)) != forwarder
        || ip4_from_user(sa.user_ip4) != LOOPBACK4
    {
        return;
    }
    // SAFETY: as in dns_redirect_v4.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
    // SAFETY: a value of this map, read once.
    let Some(origin) = (unsafe { DNS_ORIGINS.get(cookie) }).copied() else { return };
    #[expect(clippy::cast_possible_truncation, reason = "a port number")]
    {
        sa.user_ip4 = origin.addr.to_be();
        sa.user_port = u32::from((origin.port as u16).to_be());
    }
}

/// The address the socket of a connect is bound to (`bpf_sock.src_ip4`), from which routing
/// sends `0.0.0.0`.
#[inline(always)]
fn bound_v4(ctx: &SockAddrContext) -> Source {
    let sk = peer_socket(ctx);
    // SAFETY: see peer_socket; src_ip4 is readable from 5.1, one u32.
    Source::Bound(ip4_from_user(unsafe { (*sk).src_ip4 }))
}

/// The `i`th NAT64 prefix of the instance (config words `NAT64`..), `None` past the last.
#[inline(always)]
fn nat64_prefix(i: u32) -> Option<(u64, u32)> {
    if i >= *CONFIG.get(config::NAT64_COUNT)? {
        return None;
    }
    let at = |k: u32| CONFIG.get(config::NAT64 + 3 * i + k).copied();
    Some(((u64::from(at(0)?) << 32) | u64::from(at(1)?), at(2)?))
}

/// The socket a program runs for (`bpf_sock_addr.sk`, readable from 5.3; the verifier types it
/// as a socket that is never null). Only read when the call named no destination, or
/// `0.0.0.0` or `::`.
#[inline(always)]
fn peer_socket(ctx: &SockAddrContext) -> *const bpf_sock {
    // SAFETY: the kernel hands every sock_addr program a valid bpf_sock_addr whose sk is set.
    unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk }
}

/// The peer's port from `bpf_sock.dst_port`, 0 without a peer. Read as a whole u32, which
/// every kernel from 5.1 allows and fills with the 16-bit port in network byte order, like
/// `user_port`; the 2-byte read the binding's `__be16` would make is only defined from 5.19.
#[inline(always)]
#[expect(
    clippy::cast_ptr_alignment,
    reason = "dst_port starts a 4-byte aligned u32 slot of bpf_sock, which the padding completes"
)]
fn peer_port(sk: *const bpf_sock) -> u16 {
    // SAFETY: sk comes from peer_socket; dst_port starts a u32 slot of the context.
    port_from_user(unsafe { (&raw const (*sk).dst_port).cast::<u32>().read() })
}

/// Counts the decision, reports a block, and applies audit mode. `Err(BLOCK)`: no valid table.
#[inline(always)]
fn finish(attempt: &Attempt, word: Option<u32>) -> Result<i32, i32> {
    let audit = CONFIG.get(config::FLAGS).is_some_and(|c| c & CONFIG_AUDIT != 0);
    let Some(word) = word else {
        count(stats::FAILED_CLOSED);
        report(attempt, RULE_FAILED_CLOSED, verdict::BLOCKED);
        return Err(BLOCK);
    };
    let word = forget_bounds(dns_learned(attempt, forget_bounds(word)));
    let rule = word::rule(word);
    if rule != word::DEFAULT_RULE {
        hit(rule);
    }
    if audit {
        observe(attempt, word::blocks(word));
    }
    if !word::blocks(word) {
        count(stats::ALLOWED);
        return Ok(ALLOW);
    }
    Ok(block_or_audit(attempt, rule, audit))
}

/// The verdict word of a destination the DNS forwarder learned and the tables do not hold yet
/// (`DNS_LEARNED`: the forwarder writes it before it passes the answer on, and empties it once
/// a table swap holds it), else `word`, the tables' own. Looked up only while
/// `config::DNS_LEARNED` is not 0, so decisions pay one config read when it is empty. An IPv4
/// destination is looked up in its IPv4-mapped form; userspace writes an address's mapped and
/// NAT64 forms too. An entry past its time, or a missing config word, leaves the tables' word.
#[inline(always)]
fn dns_learned(attempt: &Attempt, word: u32) -> u32 {
    if CONFIG.get(config::DNS_LEARNED).is_none_or(|n| *n == 0) {
        return word;
    }
    #[expect(clippy::cast_possible_truncation, reason = "an IPv4 destination's low 32 bits")]
    let key = if attempt.family == 4 {
        LearnedKey::v4(attempt.addr.1 as u32)
    } else {
        LearnedKey { hi: attempt.addr.0, lo: attempt.addr.1 }
    };
    // SAFETY: a value of this map, read at once.
    let Some(class) = (unsafe { DNS_LEARNED.get(key) }) else { return word };
    // SAFETY: a plain helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    class.decide(now, attempt.port, Proto::from_ip_proto(attempt.protocol)).unwrap_or(word)
}

/// `word`, with what the verifier learned of it on the way here forgotten: written to the stack
/// at an offset that is not a multiple of 8 and read back, it is a plain number to the verifier
/// (it keeps the bounds of a number spilled to an 8-aligned slot only; any other write makes
/// the bytes plain data, which read as unknown). The paths of the table searches then reach the
/// counting, observing and reporting below in one state, which the verifier checks once
/// instead of once per path (6.1's verifier otherwise passes its 1M-instruction limit on
/// connect6, which searches both tables). One store and one load of the same four bytes: the
/// load is served from the store (a byte-wise write read back whole waited for the stores).
#[inline(always)]
fn forget_bounds(word: u32) -> u32 {
    #[repr(C, align(8))]
    struct Slot([u32; 2]);
    let mut slot = Slot([0; 2]);
    // SAFETY: a write and a read of a local; volatile keeps the compiler from folding them.
    unsafe {
        core::ptr::write_volatile(&raw mut slot.0[1], word);
        core::ptr::read_volatile(&raw const slot.0[1])
    }
}

/// Refuses a packet for its shape ([`RULE_REFUSED_SHAPE`]), or only reports it in audit mode.
#[inline(always)]
fn refuse(attempt: &Attempt) -> i32 {
    let audit = CONFIG.get(config::FLAGS).is_some_and(|c| c & CONFIG_AUDIT != 0);
    block_or_audit(attempt, RULE_REFUSED_SHAPE, audit)
}

/// Counts and reports a block by `rule`; in audit mode, lets it through.
#[inline(always)]
fn block_or_audit(attempt: &Attempt, rule: u32, audit: bool) -> i32 {
    if audit {
        count(stats::AUDITED);
        report(attempt, rule, verdict::AUDIT);
        return ALLOW;
    }
    count(stats::BLOCKED);
    report(attempt, rule, verdict::BLOCKED);
    BLOCK
}

#[inline(always)]
fn count(index: u32) {
    if let Some(total) = STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot of this CPU; only counts, so a rare lost increment is harmless.
        unsafe { *total += 1 };
    }
}

/// Observe mode: records the decision under its destination (first and last seen, counts).
/// When one of the two slots of this CPU's cache that the destination may take holds it, the
/// decision is counted there: no hashing of the key, no lock, no atomic, and the clock read
/// only when the jiffy changed (a clock read costs more than the rest of the hit). Otherwise
/// the slot seen less recently gives its destination to `OBSERVED` ([`fold`]) and this one
/// takes it. Never changes a verdict: a record that cannot be kept is counted in
/// `observe_stats::LOST`.
#[inline(always)]
fn observe(attempt: &Attempt, blocks: bool) {
    #[expect(clippy::cast_possible_truncation, reason = "the protocol numbers we record fit u8")]
    let key = ObservedKey {
        addr_hi: attempt.addr.0,
        addr_lo: attempt.addr.1,
        port: attempt.port,
        family: attempt.family,
        protocol: attempt.protocol as u8,
        pad: 0,
    };
    // SAFETY: a plain helper without arguments (5.5; CAP_BPF, which loading needs anyway).
    let jiffies = unsafe { bpf_jiffies64() };
    let would_block = u64::from(blocks);
    let Some(set) = OBSERVE_CACHE.get_ptr_mut(observe_set(&key)) else {
        // No cache element (cannot happen: the index is below its size): straight to the map.
        fold(&key, &observed_now(would_block));
        return;
    };
    // SAFETY: this CPU's element; the program runs with migration off, so only this CPU's
    // programs touch it (a task preempted inside the program could lose an increment).
    let [a, b] = unsafe { &mut (*set).ways };
    for held in [&mut *a, &mut *b] {
        if held.seen.count != 0 && same_destination(&held.key, &key) {
            if held.clock_jiffies != jiffies {
                // SAFETY: a plain helper without arguments.
                held.seen.last_ns = unsafe { bpf_ktime_get_boot_ns() };
                held.clock_jiffies = jiffies;
            }
            held.seen.count += 1;
            held.seen.would_block += would_block;
            return;
        }
    }
    let held = if a.seen.last_ns <= b.seen.last_ns { a } else { b };
    if held.seen.count != 0 {
        fold(&held.key, &held.seen);
    }
    held.key = key;
    held.seen = observed_now(would_block);
    held.clock_jiffies = jiffies;
}

/// A record of one decision, now.
#[inline(always)]
fn observed_now(would_block: u64) -> Observed {
    // SAFETY: a plain helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    Observed { first_ns: now, last_ns: now, count: 1, would_block }
}

/// Whether two keys name one destination, field by field (the padding is always 0).
#[inline(always)]
fn same_destination(a: &ObservedKey, b: &ObservedKey) -> bool {
    a.addr_lo == b.addr_lo
        && a.addr_hi == b.addr_hi
        && a.port == b.port
        && a.family == b.family
        && a.protocol == b.protocol
}

/// Adds what a CPU saw of `key` to its entry in `OBSERVED`, making the entry when there is
/// none (a full map evicts its least recently used destination). The counts are added
/// atomically, so CPUs folding the same destination lose none.
#[inline(always)]
fn fold(key: &ObservedKey, seen: &Observed) {
    // Looked up first: an insert into an LRU hash takes a free node (evicting, when full)
    // before it finds that the key exists.
    if let Some(entry) = OBSERVED.get_ptr_mut(key) {
        add_to(entry, seen);
        return;
    }
    // BPF_NOEXIST: an entry another CPU made meanwhile is kept, and this record added to it.
    let total = match OBSERVED.insert(key, seen, u64::from(aya_ebpf::bindings::BPF_NOEXIST)) {
        Ok(()) => observe_stats::RECORDED,
        Err(_) => match OBSERVED.get_ptr_mut(key) {
            Some(entry) => return add_to(entry, seen),
            None => observe_stats::LOST,
        },
    };
    if let Some(n) = OBSERVE_STATS.get_ptr_mut(total) {
        let add = if total == observe_stats::LOST { seen.count } else { 1 };
        // SAFETY: as in count.
        unsafe { *n += add };
    }
}

/// Adds `seen` to the map entry `entry`: counts atomically; the times by plain stores (two
/// CPUs at the same instant may keep either's time, an instant apart).
#[inline(always)]
fn add_to(entry: *mut Observed, seen: &Observed) {
    // SAFETY: a value of OBSERVED, 8-aligned, alive while the program runs; its counts are only
    // ever changed atomically. The results are unused: the plain `BPF_XADD` every kernel knows.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            &raw mut (*entry).count,
            seen.count,
        );
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            &raw mut (*entry).would_block,
            seen.would_block,
        );
        if seen.first_ns < (*entry).first_ns {
            (*entry).first_ns = seen.first_ns;
        }
        if seen.last_ns > (*entry).last_ns {
            (*entry).last_ns = seen.last_ns;
        }
    }
}

/// A submit wakes the events reader only when the bytes waiting in the ring pass a multiple
/// of this (an eighth of the ring, about 1,500 events): a wake-up from inside the program
/// costs many times the decision, so the reader looks every `events::POLL_INTERVAL` (50 ms)
/// instead, and is woken early only as the ring fills. Waking at every multiple, not at
/// every event past the first, keeps a ring that nobody reads from costing a wake-up each.
const EVENTS_WAKE_BYTES: u64 = EVENTS_BYTES as u64 / 8;
/// An event's bytes in the ring: the record and its 8-byte header, in multiples of 8.
const EVENT_RING_BYTES: u64 = (size_of::<Event>() as u64 + 8).next_multiple_of(8);

/// Writes an event; a full ring buffer drops it and counts the loss, never slowing the call.
#[inline(always)]
fn report(attempt: &Attempt, rule: u32, verdict: u8) {
    let Some(mut entry) = EVENTS.reserve(0) else {
        count(stats::EVENTS_LOST);
        return;
    };
    // Who: the calling task, or for a packet its socket's owner and cgroup (no task).
    #[expect(clippy::cast_possible_truncation, reason = "the low halves hold pid and uid")]
    let (cgroup_id, pid_tgid, uid, comm) = match attempt.packet {
        // SAFETY: the program's own context, as the helpers take it.
        Some(skb) => unsafe { (bpf_skb_cgroup_id(skb), 0, bpf_get_socket_uid(skb), [0; 16]) },
        None => (
            // SAFETY: a plain helper without arguments.
            unsafe { bpf_get_current_cgroup_id() },
            bpf_get_current_pid_tgid(),
            bpf_get_current_uid_gid() as u32,
            bpf_get_current_comm().unwrap_or_default(),
        ),
    };
    #[expect(clippy::cast_possible_truncation, reason = "the protocol numbers we report fit u8")]
    let event = Event {
        // SAFETY: plain helpers without arguments.
        time_ns: unsafe { bpf_ktime_get_boot_ns() },
        cgroup_id,
        addr_hi: attempt.addr.0,
        addr_lo: attempt.addr.1,
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        uid,
        rule,
        port: attempt.port,
        family: attempt.family,
        protocol: attempt.protocol as u8,
        verdict,
        hook: attempt.hook,
        pad: [0; 2],
        comm,
    };
    entry.write(event);
    // SAFETY: the map's own address, as the helper takes it (aya's RingBuf::as_ptr).
    let waiting = unsafe {
        aya_ebpf::helpers::generated::bpf_ringbuf_query(
            core::ptr::from_ref(&EVENTS).cast_mut().cast(),
            u64::from(aya_ebpf::bindings::BPF_RB_AVAIL_DATA),
        )
    };
    // The waiting bytes include this event (reserved above); another CPU's event between the
    // two may hide a crossing from both, which the reader's next look makes up for.
    let wake = if waiting / EVENTS_WAKE_BYTES
        > waiting.saturating_sub(EVENT_RING_BYTES) / EVENTS_WAKE_BYTES
    {
        aya_ebpf::bindings::BPF_RB_FORCE_WAKEUP
    } else {
        aya_ebpf::bindings::BPF_RB_NO_WAKEUP
    };
    entry.submit(u64::from(wake));
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The programs' license, as the kernel reads it: GPL-compatible, which BPF LSM programs and
/// the kernel's GPL-only helpers need (the eBPF code is MIT or GPL-2.0, as aya's template).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
