//! What the programs and userspace address each other by: the names of the programs and maps
//! (as the kernel, `bpftool` and the pins show them), the sizes of the maps the object
//! declares, and the indices of the config words and stats totals.
//!
//! The BPF crate spells these names again as literals (the aya-ebpf macros take nothing else);
//! a host test of the userspace crate checks the built object against this module.

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
    /// `cgroup/recvmsg4`: gives a datagram from the DNS forwarder the address of the resolver
    /// it answers for (see [`crate::dns`]); changes nothing else.
    pub const RECVMSG4: &str = "dns_recvmsg4";
    /// `cgroup/getpeername4`: the same for the peer of a socket connected to the forwarder.
    pub const GETPEERNAME4: &str = "dns_getpeername4";
    /// The `sock_addr` programs, in the order they are attached (the [`DNS`] ones only with a
    /// forwarder); every instance loads them all.
    pub const ALL: [&str; 6] = [CONNECT4, CONNECT6, SENDMSG4, SENDMSG6, RECVMSG4, GETPEERNAME4];
    /// The `sock_addr` programs every instance attaches and pins.
    pub const DECIDING: [&str; 4] = [CONNECT4, CONNECT6, SENDMSG4, SENDMSG6];
    /// The DNS forwarder's programs: attached and pinned only by an instance with one
    /// (`--dns-port`), so that without it no UDP receive in the cgroup runs a program.
    pub const DNS: [&str; 2] = [RECVMSG4, GETPEERNAME4];
    /// `cgroup_skb/egress`: the packet checks, for what the `sock_addr` hooks cannot see
    /// (raw, ping, UDP-Lite and SCTP sockets, IPv4 options, IPv6 extension headers). Attached
    /// after the others unless `blocker run --no-packet-checks`.
    pub const EGRESS: &str = "check_egress";
    /// `cgroup/sock_create`: refuses (EPERM at `socket()`) the IPv4 and IPv6 sockets whose
    /// packets the `sock_addr` hooks do not judge (raw, ping, UDP-Lite, SCTP, others), unless
    /// `--allow-sockets` names their kind (see `crate::packet::socket_kind`).
    pub const SOCKET: &str = "check_socket";
    /// `cgroup/setsockopt`: refuses an IPv6 routing header and an IPv4 source route set as a
    /// socket option; passes every other option through.
    pub const SETSOCKOPT: &str = "check_setsockopt";
    /// `lsm_cgroup/socket_sendmsg` (BPF LSM, 6.0+): refuses a `sendmsg()` whose control
    /// messages hold an IPv6 routing header or an IPv4 source route.
    pub const SENDMSG_OPTIONS: &str = "check_sendmsg_options";
    /// The packet checks, in the order they are attached: the socket and option checks always,
    /// the LSM one where the kernel runs BPF LSM programs, the egress one where it does not or
    /// when some socket kind is allowed.
    pub const PACKET_CHECKS: [&str; 4] = [SOCKET, SETSOCKOPT, SENDMSG_OPTIONS, EGRESS];
    /// Every program whose link an instance may pin.
    pub const LINKED: [&str; 10] = [
        CONNECT4,
        CONNECT6,
        SENDMSG4,
        SENDMSG6,
        RECVMSG4,
        GETPEERNAME4,
        SOCKET,
        SETSOCKOPT,
        SENDMSG_OPTIONS,
        EGRESS,
    ];
    /// `cgroup/connect4` that allows everything: the benchmarks' reference, never attached by
    /// the blocker.
    pub const REFERENCE_ALLOW: &str = "reference_allow";
    /// `cgroup_skb/egress` that lets every packet through: the packet benchmarks' reference
    /// (the cost of any egress program), never attached by the blocker.
    pub const REFERENCE_EGRESS: &str = "reference_egress";
    /// `cgroup/connect6` that allows everything: the IPv6 benchmarks' reference.
    pub const REFERENCE_ALLOW6: &str = "reference_allow6";
    /// `cgroup/connect4` that blocks the hosts of [`super::maps::REFERENCE_HOSTS`]: the
    /// benchmarks' plain hash map, never attached by the blocker.
    pub const REFERENCE_HASH: &str = "reference_hash";
    /// `cgroup/connect4` that blocks the prefixes of [`super::maps::REFERENCE_PREFIXES`]: the
    /// benchmarks' LPM trie, never attached by the blocker.
    pub const REFERENCE_LPM: &str = "reference_lpm";
    /// The benchmarks' reference programs.
    pub const REFERENCES: [&str; 5] =
        [REFERENCE_ALLOW, REFERENCE_EGRESS, REFERENCE_ALLOW6, REFERENCE_HASH, REFERENCE_LPM];
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
    /// Arrays of maps with one slot each, one per hit-counter class ([`crate::HIT_CLASSES`]):
    /// the array of [`crate::HitCount`]s indexed by rule id (only rules, not the default) is in
    /// the one [`crate::config::HITS_CLASS`] selects.
    pub const RULE_HITS: [&str; 5] =
        ["rule_hits_0", "rule_hits_1", "rule_hits_2", "rule_hits_3", "rule_hits_4"];
    /// Name given to each hit-counter array userspace creates.
    pub const HITS: &str = "hits";
    /// Ring buffer of [`crate::Event`]s: blocked attempts, and would-be blocks in audit mode.
    pub const EVENTS: &str = "events";
    /// Array of `u32`s indexed by [`crate::config`]: flags, the table size classes and the
    /// NAT64 prefixes.
    pub const CONFIG: &str = "config";
    /// LRU hash of [`crate::ObservedKey`] -> [`crate::Observed`]: in audit mode, every
    /// destination judged (observe mode, read by `blocker learn`).
    pub const OBSERVED: &str = "observed";
    /// Per-CPU array of [`crate::ObserveSet`]s: each CPU's cache of the destinations it
    /// judged last in audit mode, in front of [`OBSERVED`].
    pub const OBSERVE_CACHE: &str = "observe_cache";
    /// Per-CPU array of `u64` totals of observe mode, indexed by [`crate::observe_stats`].
    pub const OBSERVE_STATS: &str = "observe_stats";
    /// Hash of IPv4 hosts (`u32` in network byte order -> `u8`) for [`super::programs::REFERENCE_HASH`].
    /// One entry in the object, so every load creates it small; never pinned or filled by the
    /// blocker.
    pub const REFERENCE_HOSTS: &str = "reference_hosts";
    /// LPM trie of IPv4 prefixes for [`super::programs::REFERENCE_LPM`]; likewise.
    pub const REFERENCE_PREFIXES: &str = "reference_prefixes";
    /// The benchmarks' maps, in the object but never pinned.
    pub const REFERENCES: [&str; 2] = [REFERENCE_HOSTS, REFERENCE_PREFIXES];
    /// LRU hash: socket cookie -> [`crate::dns::Origin`], the resolver a DNS query of that
    /// socket was sent to before the programs sent it to the forwarder.
    pub const DNS_ORIGINS: &str = "dns_origins";
    /// Hash: [`crate::dns::LearnedKey`] -> [`crate::dns::LearnedClass`], the addresses the DNS
    /// forwarder learned that the tables do not hold yet; read only while
    /// [`super::config::DNS_LEARNED`] is not 0.
    pub const DNS_LEARNED: &str = "dns_learned";
    /// Every map an instance pins.
    pub const PINNED: [&str; 23] = [
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
        RULE_HITS[0],
        RULE_HITS[1],
        RULE_HITS[2],
        RULE_HITS[3],
        RULE_HITS[4],
        EVENTS,
        CONFIG,
        OBSERVED,
        OBSERVE_STATS,
        DNS_ORIGINS,
        OBSERVE_CACHE,
        DNS_LEARNED,
    ];
}

/// Indices of the [`maps::CONFIG`] words.
pub mod config {
    /// Flags: [`crate::CONFIG_AUDIT`], and the socket kinds allowed
    /// ([`crate::packet::socket_kind`] bits).
    pub const FLAGS: u32 = 0;
    /// The size class that holds the IPv4 table.
    pub const V4_CLASS: u32 = 1;
    /// The size class that holds the IPv6 table.
    pub const V6_CLASS: u32 = 2;
    /// How many NAT64 prefixes besides the well-known one follow (`--nat64`), at most
    /// [`crate::MAX_NAT64_PREFIXES`].
    pub const NAT64_COUNT: u32 = 3;
    /// The first of those prefixes: three words each, its top 96 bits as numbers, high first.
    pub const NAT64: u32 = 4;
    /// The hit-counter class that holds the rule hits.
    pub const HITS_CLASS: u32 = NAT64 + 3 * crate::MAX_NAT64_PREFIXES;
    /// The DNS forwarder's port on 127.0.0.1 (`blocker run --dns-port`), 0 when there is none:
    /// then DNS is judged like any other traffic and not redirected.
    pub const DNS_PORT: u32 = HITS_CLASS + 1;
    /// Not 0 while [`super::maps::DNS_LEARNED`] may hold entries: only then do the programs
    /// look there.
    pub const DNS_LEARNED: u32 = DNS_PORT + 1;
    /// The layout of the tables the instance's programs read ([`super::TABLE_LAYOUT`]),
    /// written with every table swap. Userspace reads it before it uses a pinned instance's
    /// maps: one pinned by a version whose programs read another layout (0: older than this
    /// word) is refused, never fed tables it would misread.
    pub const TABLE_LAYOUT: u32 = DNS_LEARNED + 1;
    /// Number of words.
    pub const LEN: u32 = TABLE_LAYOUT + 1;
}

/// The layout of the rule tables this version's programs read, kept in
/// [`config::TABLE_LAYOUT`]: 2 is the packed IPv4 table and the IPv6 bucket window (1 was never
/// written: the versions before the word).
pub const TABLE_LAYOUT: u32 = 2;

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
/// Entries of [`maps::DNS_ORIGINS`]: sockets whose DNS queries the forwarder may still be
/// answering; the least recently used go first.
pub const DNS_ORIGINS_CAPACITY: u32 = 65_536;
/// Bytes of the [`maps::EVENTS`] ring buffer (a power of two, a page multiple): about 14,000
/// events; when it is full, events are counted in [`stats::EVENTS_LOST`] and dropped.
pub const EVENTS_BYTES: u32 = 1 << 20;
