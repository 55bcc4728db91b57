//! Verdict words: what an interval or a class entry says.
//!
//! Bit 31 ([`DIRECT`]) tells a verdict from a class index; bit 30 ([`BLOCK_BIT`]) blocks;
//! bits 28-29 hold the protocol a class entry needs ([`Proto`]); bits 0-27 the rule id that
//! decided (0 for the default).

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
pub const fn verdict(block: bool, proto: Proto, rule: u32) -> u32 {
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
    /// The protocol a rule must name to match a socket or packet of `IPPROTO_*` number
    /// `ip_proto` (`bpf_sock_addr.protocol`, or a packet's transport protocol): `udp://`
    /// rules cover UDP-Lite (136: the same ports and services, with a partial checksum); ping,
    /// SCTP and the rest match only rules that name no protocol.
    #[must_use]
    pub const fn from_ip_proto(ip_proto: u32) -> Self {
        match ip_proto {
            6 => Self::Tcp,
            17 | 136 => Self::Udp,
            _ => Self::Any,
        }
    }

    /// The protocol a class entry's verdict word needs.
    pub(crate) const fn from_word(word: u32) -> Self {
        match (word & PROTO_MASK) >> PROTO_SHIFT {
            1 => Self::Tcp,
            2 => Self::Udp,
            _ => Self::Any,
        }
    }
}
