//! The rule language: `[tcp://|udp://] HOST [/LEN] [:PORT[-PORT]]`, where HOST is an IPv4
//! address, an IPv6 address (in brackets when a port follows) or a hostname. Owns parsing and
//! printing of rules; every error names the text it refused and says how to fix it.
//!
//! Every way to write a rule (flags, list lines, a policy file's `[[rule]]` fields, live
//! edits) ends in one constructor, [`Destination::from_parts`]. Also the NAT64 prefixes an
//! instance judges by the IPv4 rules ([`Nat64Prefix`]).
use std::{fmt, net::IpAddr, str::FromStr};

use cgroup_connect_common::Proto;
use ipnet::{IpNet, Ipv6Net};

use crate::quote::Quoted;

/// What a rule does to the connections it matches.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Block,
    Allow,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Block => "block",
            Self::Allow => "allow",
        })
    }
}

impl Action {
    /// The word for this action as the verdict of destinations no rule matches: `allow` or
    /// `deny`, as `--default` and a policy file's `default` spell it.
    #[must_use]
    pub const fn default_word(self) -> &'static str {
        match self {
            Self::Block => "deny",
            Self::Allow => "allow",
        }
    }
}

impl FromStr for Action {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Self, RuleError> {
        match s {
            "block" | "deny" => Ok(Self::Block),
            "allow" => Ok(Self::Allow),
            _ => Err(RuleError::Action { value: s.to_owned() }),
        }
    }
}

/// Where a rule points: an address or prefix, or a hostname resolved at run time. 24 bytes (a
/// `String` would make it 32: a policy holds a million of them).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    Net(IpNet),
    Name(Box<str>),
}

/// An inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ports {
    pub lo: u16,
    pub hi: u16,
}

/// The destination part of a rule: everything but the action. Serialized as its rule text.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Destination {
    pub host: Host,
    pub ports: Option<Ports>,
    pub proto: Proto,
}

/// A rule: an action on a destination.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub action: Action,
    pub dest: Destination,
}

/// Why a rule's text was refused. Each message quotes the text, cut to a readable length
/// ([`Quoted`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("empty rule: write an address, a CIDR prefix or a hostname")]
    Empty,
    #[error("unknown action {}: use \"block\" or \"allow\"", Quoted(value))]
    Action { value: String },
    #[error(
        "unknown protocol {} in {}: use tcp:// or udp://, or none for both",
        Quoted(value),
        Quoted(rule)
    )]
    Proto { rule: String, value: String },
    #[error("{} in {} is neither an IP address nor a hostname", Quoted(value), Quoted(rule))]
    Host { rule: String, value: String },
    #[error("prefix length {} in {} must be a number from 0 to {max}", Quoted(value), Quoted(rule))]
    PrefixLen { rule: String, value: String, max: u8 },
    #[error("{} has bits set after the prefix: did you mean {fixed}?", Quoted(rule))]
    HostBits { rule: String, fixed: IpNet },
    #[error("{}: a prefix length needs an address, not a hostname", Quoted(rule))]
    PrefixOnName { rule: String },
    #[error(
        "port {} in {} must be a number from 0 to 65535, or a range like 8000-8999",
        Quoted(value),
        Quoted(rule)
    )]
    Port { rule: String, value: String },
    #[error("port range {lo}-{hi} in {} is reversed: write {hi}-{lo}", Quoted(rule))]
    ReversedPorts { rule: String, lo: u16, hi: u16 },
    #[error(
        "{}: put an IPv6 address in brackets when a port follows, like [2001:db8::1]:443",
        Quoted(rule)
    )]
    Brackets { rule: String },
    #[error(
        "NAT64 prefix {} is not an IPv6 /96 prefix: write one like 64:ff9b:1:2::/96 \
         (the IPv4 address is in the low 32 bits, RFC 6052; other lengths are not supported)",
        Quoted(value)
    )]
    Nat64Length { value: String },
    #[error(
        "NAT64 prefix {} holds {what}, not translated IPv4 addresses: name your translator's /96",
        Quoted(value)
    )]
    Nat64Reserved { value: String, what: &'static str },
}

/// A NAT64 prefix (`--nat64`, RFC 6052): an IPv6 /96 whose addresses stand for the IPv4
/// address in their low 32 bits, and are judged by the IPv4 rules. Serialized as its text.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(into = "String", try_from = "String")]
pub struct Nat64Prefix(Ipv6Net);

impl Nat64Prefix {
    /// The well-known prefix `64:ff9b::/96`, which every instance judges so.
    pub const WELL_KNOWN: Self =
        Self(match Ipv6Net::new(std::net::Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
            Ok(net) => net,
            Err(_) => panic!("a /96 is valid"),
        });

    /// Its top 96 bits, as the config words hold them (high first).
    #[must_use]
    #[expect(clippy::cast_possible_truncation, reason = "takes one 32-bit word at a time")]
    pub fn words(self) -> [u32; 3] {
        let bits = u128::from(self.0.network());
        [(bits >> 96) as u32, (bits >> 64) as u32, (bits >> 32) as u32]
    }

    /// The IPv4 prefix `net` stands for, if it is a /96 or longer under this prefix
    /// (`64:ff9b::192.0.2.0/120` stands for `192.0.2.0/24`).
    #[must_use]
    pub fn ip4(self, net: Ipv6Net) -> Option<ipnet::Ipv4Net> {
        let len = net.prefix_len().checked_sub(96)?;
        #[expect(clippy::cast_possible_truncation, reason = "the low 32 bits")]
        let addr = std::net::Ipv4Addr::from(u128::from(net.network()) as u32);
        ipnet::Ipv4Net::new(addr, len).ok().filter(|_| self.0.contains(&net.network()))
    }
}

impl FromStr for Nat64Prefix {
    type Err = RuleError;

    fn from_str(text: &str) -> Result<Self, RuleError> {
        let value = text.trim();
        let net = match parse_host(value, value)? {
            Host::Net(IpNet::V6(net)) if net.prefix_len() == 96 => net,
            _ => return Err(RuleError::Nat64Length { value: value.to_owned() }),
        };
        let reserved = |what| Err(RuleError::Nat64Reserved { value: value.to_owned(), what });
        if net.network().segments()[..6] == [0; 6] {
            return reserved(":: and ::1");
        }
        if net.network().to_ipv4_mapped().is_some() {
            return reserved("IPv4-mapped addresses (judged by the IPv4 rules already)");
        }
        Ok(Self(net))
    }
}

impl fmt::Display for Nat64Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Destination {
    /// A destination from the parts of a rule as written: `HOST[/LEN]` (an IPv6 address or
    /// prefix may be in brackets), `PORT` or `PORT-PORT`, and `tcp` or `udp` (none for both).
    /// The parts are checked in that order; errors quote `rule`, the text the parts came from.
    ///
    /// # Errors
    /// A [`RuleError`] for the first part refused.
    pub fn from_parts(
        rule: &str,
        host: &str,
        ports: Option<&str>,
        proto: Option<&str>,
    ) -> Result<Self, RuleError> {
        let host = parse_host(rule, host)?;
        let ports = ports.map(|p| parse_ports(rule, p)).transpose()?;
        let proto = proto.map_or(Ok(Proto::Any), |p| parse_proto(rule, p))?;
        Ok(Self { host, ports, proto })
    }
}

impl FromStr for Destination {
    type Err = RuleError;

    fn from_str(text: &str) -> Result<Self, RuleError> {
        let rule = text.trim();
        if rule.is_empty() {
            return Err(RuleError::Empty);
        }
        let (proto, rest) = split_proto(rule)?;
        let (host, ports) = split_ports(rule, rest)?;
        Self::from_parts(rule, host, ports, proto)
    }
}

/// Splits off `PROTO://`, refusing a bad protocol before the rest of the rule is read.
fn split_proto(rule: &str) -> Result<(Option<&str>, &str), RuleError> {
    let Some((scheme, rest)) = rule.split_once("://") else { return Ok((None, rule)) };
    parse_proto(rule, scheme)?;
    Ok((Some(scheme), rest))
}

/// Splits `HOST[/LEN][:PORTS]`; an IPv6 host goes in brackets when ports follow, and keeps
/// them (the host's parser takes them off).
fn split_ports<'a>(rule: &str, rest: &'a str) -> Result<(&'a str, Option<&'a str>), RuleError> {
    if rest.starts_with('[') {
        let close = rest.find(']').ok_or_else(|| RuleError::Brackets { rule: rule.to_owned() })?;
        let (host, after) = rest.split_at(close + 1);
        return match after {
            "" => Ok((host, None)),
            _ => after
                .strip_prefix(':')
                .map(|p| (host, Some(p)))
                .ok_or_else(|| RuleError::Port { rule: rule.to_owned(), value: after.to_owned() }),
        };
    }
    // Two colons or more: an unbracketed IPv6 address, which no port can follow.
    match rest.split_once(':') {
        Some((host, ports)) if !ports.contains(':') => Ok((host, Some(ports))),
        _ => Ok((rest, None)),
    }
}

/// Parses `HOST[/LEN]`, maybe in brackets: an address, a CIDR prefix without host bits, or a
/// hostname.
fn parse_host(rule: &str, text: &str) -> Result<Host, RuleError> {
    let text = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(text);
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    if let Ok(ip) = addr.parse::<IpAddr>() {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l.parse::<u8>().ok().filter(|&n| n <= max).ok_or_else(|| {
                if ip.is_ipv6() && l.contains(':') {
                    RuleError::Brackets { rule: rule.to_owned() }
                } else {
                    RuleError::PrefixLen { rule: rule.to_owned(), value: l.to_owned(), max }
                }
            })?,
        };
        let net = IpNet::new(ip, len).expect("length checked");
        if net.trunc() != net {
            return Err(RuleError::HostBits { rule: rule.to_owned(), fixed: net.trunc() });
        }
        return Ok(Host::Net(net));
    }
    // `*.example.com`: one or more labels under example.com, learned from DNS answers only.
    if !is_hostname(addr.strip_prefix("*.").unwrap_or(addr)) {
        return Err(RuleError::Host { rule: rule.to_owned(), value: addr.to_owned() });
    }
    if len.is_some() {
        return Err(RuleError::PrefixOnName { rule: rule.to_owned() });
    }
    Ok(Host::Name(addr.trim_end_matches('.').to_ascii_lowercase().into()))
}

/// RFC 1123 names; at least one label must not be all digits, so `10.0.0.300` is no name.
fn is_hostname(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(label_ok)
        && s.split('.').any(|l| !l.bytes().all(|b| b.is_ascii_digit()))
}

/// Parses `PORT` or `PORT-PORT`.
fn parse_ports(rule: &str, text: &str) -> Result<Ports, RuleError> {
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|_| RuleError::Port { rule: rule.to_owned(), value: text.to_owned() })
    };
    let (lo, hi) = if let Some((lo, hi)) = text.split_once('-') {
        (port(lo)?, port(hi)?)
    } else {
        let p = port(text)?;
        (p, p)
    };
    if lo > hi {
        return Err(RuleError::ReversedPorts { rule: rule.to_owned(), lo, hi });
    }
    Ok(Ports { lo, hi })
}

/// Parses `tcp` or `udp`, in any case.
fn parse_proto(rule: &str, text: &str) -> Result<Proto, RuleError> {
    match text.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        _ => Err(RuleError::Proto { rule: rule.to_owned(), value: text.to_owned() }),
    }
}

/// Serde as text (`#[serde(into = "String", try_from = "String")]`), through `Display` and
/// `FromStr`.
macro_rules! serde_as_text {
    ($($t:ty),*) => {$(
        impl From<$t> for String {
            fn from(value: $t) -> Self {
                value.to_string()
            }
        }

        impl TryFrom<String> for $t {
            type Error = RuleError;
            fn try_from(s: String) -> Result<Self, RuleError> {
                s.parse()
            }
        }
    )*};
}

serde_as_text!(Destination, Nat64Prefix);

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.proto {
            Proto::Tcp => f.write_str("tcp://")?,
            Proto::Udp => f.write_str("udp://")?,
            Proto::Any => {}
        }
        // Written in place, not built as a String first: records and rule texts format a
        // million rules.
        let bracket = self.ports.is_some()
            && match &self.host {
                Host::Name(name) => name.contains(':'),
                Host::Net(net) => matches!(net, IpNet::V6(_)),
            };
        if bracket {
            f.write_str("[")?;
        }
        match &self.host {
            Host::Name(name) => f.write_str(name)?,
            Host::Net(net) if net.prefix_len() == net.max_prefix_len() => {
                write!(f, "{}", net.addr())?;
            }
            Host::Net(net) => write!(f, "{net}")?,
        }
        match self.ports {
            Some(ports) if bracket => write!(f, "]:{ports}"),
            Some(ports) => write!(f, ":{ports}"),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.action, self.dest)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn nat64_prefixes_are_ipv6_slash_96() {
        let p: Nat64Prefix = " 2001:db8:64::/96".parse().unwrap();
        assert_eq!(p.to_string(), "2001:db8:64::/96");
        assert_eq!(p.words(), [0x2001_0db8, 0x0064_0000, 0]);
        assert_eq!(Nat64Prefix::WELL_KNOWN.to_string(), "64:ff9b::/96");
        let (hi, mid) = cgroup_connect_common::NAT64_WELL_KNOWN;
        #[expect(clippy::cast_possible_truncation, reason = "the two words of the high half")]
        let well_known = [(hi >> 32) as u32, hi as u32, mid];
        assert_eq!(Nat64Prefix::WELL_KNOWN.words(), well_known);
        let ip4 = |net: &str| p.ip4(net.parse().unwrap()).map(|n| n.to_string());
        assert_eq!(ip4("2001:db8:64::c000:201/128").as_deref(), Some("192.0.2.1/32"));
        assert_eq!(ip4("2001:db8:64::c000:200/120").as_deref(), Some("192.0.2.0/24"));
        assert_eq!(ip4("2001:db8:64::/96").as_deref(), Some("0.0.0.0/0"));
        assert_eq!(ip4("2001:db8:64::/95"), None);
        assert_eq!(ip4("2001:db8:65::c000:201/128"), None);
        for bad in ["2001:db8:64::/64", "2001:db8::1", "10.0.0.0/8", "[2001:db8:64::/96]:80", "x"] {
            let msg = bad.parse::<Nat64Prefix>().unwrap_err().to_string();
            assert!(msg.contains(bad) || bad == "x" && msg.contains("\"x\""), "{bad}: {msg}");
        }
        let msg = "2001:db8:64::1/96".parse::<Nat64Prefix>().unwrap_err().to_string();
        assert!(msg.contains("did you mean 2001:db8:64::/96"), "{msg}");
        assert!("::/96".parse::<Nat64Prefix>().unwrap_err().to_string().contains("::1"));
        assert!("::ffff:0:0/96".parse::<Nat64Prefix>().is_err());
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, "\"2001:db8:64::/96\"");
        assert_eq!(serde_json::from_str::<Nat64Prefix>(&json).unwrap(), p);
    }

    fn dest(s: &str) -> Destination {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn net(s: &str) -> Host {
        Host::Net(s.parse().unwrap())
    }

    #[test]
    fn parses_the_documented_examples() {
        let d = dest("10.0.0.0/8");
        assert_eq!((d.host, d.ports, d.proto), (net("10.0.0.0/8"), None, Proto::Any));
        let d = dest("192.0.2.7:443");
        assert_eq!((d.host, d.ports), (net("192.0.2.7/32"), Some(Ports { lo: 443, hi: 443 })));
        let d = dest("udp://198.51.100.0/24:53");
        assert_eq!(
            (d.host, d.ports, d.proto),
            (net("198.51.100.0/24"), Some(Ports { lo: 53, hi: 53 }), Proto::Udp)
        );
        assert_eq!(dest("2001:db8::1").host, net("2001:db8::1/128"));
        let d = dest("[2001:db8::/32]:8000-8999");
        assert_eq!((d.host, d.ports), (net("2001:db8::/32"), Some(Ports { lo: 8000, hi: 8999 })));
        let d = dest("example.com:443");
        assert_eq!(
            (d.host, d.ports),
            (Host::Name("example.com".into()), Some(Ports { lo: 443, hi: 443 }))
        );
        assert_eq!(dest("tcp://[::1]:22").proto, Proto::Tcp);
        assert_eq!(dest("localhost").host, Host::Name("localhost".into()));
        assert_eq!(dest("*.Example.COM:443").host, Host::Name("*.example.com".into()));
        assert!("*.".parse::<Destination>().is_err() && "a.*.com".parse::<Destination>().is_err());
        assert_eq!(dest("0.0.0.0/0").host, net("0.0.0.0/0"));
        assert_eq!(dest("::/0").host, net("::/0"));
    }

    #[test]
    fn errors_name_the_value() {
        let err = |s: &str| s.parse::<Destination>().unwrap_err();
        assert!(
            matches!(err("10.0.0.300"), RuleError::Host { value, .. } if value == "10.0.0.300")
        );
        assert!(matches!(err("10.0.0.0/33"), RuleError::PrefixLen { max: 32, .. }));
        assert!(
            matches!(err("10.1.2.3/8"), RuleError::HostBits { fixed, .. } if fixed.to_string() == "10.0.0.0/8")
        );
        assert!(matches!(err("example.com/24"), RuleError::PrefixOnName { .. }));
        assert!(matches!(err("1.2.3.4:70000"), RuleError::Port { .. }));
        assert!(matches!(err("1.2.3.4:"), RuleError::Port { .. }));
        assert!(matches!(err("1.2.3.4:9-1"), RuleError::ReversedPorts { lo: 9, hi: 1, .. }));
        assert!(matches!(err("http://1.2.3.4"), RuleError::Proto { value, .. } if value == "http"));
        assert!(matches!(err("2001:db8::/32:443"), RuleError::Brackets { .. }));
        assert!(matches!(err("[2001:db8::1"), RuleError::Brackets { .. }));
        assert!(matches!(err("  "), RuleError::Empty));
        assert!(matches!(err("bad_host!"), RuleError::Host { .. }));
        let msg = err("10.1.2.3/8").to_string();
        assert!(msg.contains("10.1.2.3/8") && msg.contains("10.0.0.0/8"), "{msg}");
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "10.0.0.0/8",
            "192.0.2.7:443",
            "udp://198.51.100.0/24:53",
            "2001:db8::1",
            "[2001:db8::/32]:8000-8999",
            "example.com:443",
            "tcp://[::1]:22",
        ] {
            assert_eq!(dest(s).to_string(), s);
        }
    }

    proptest! {
        /// The parser never panics, and whatever it accepts prints back to an equal rule.
        #[test]
        fn parse_never_panics_and_round_trips(s in "\\PC{0,40}") {
            if let Ok(d) = s.parse::<Destination>() {
                prop_assert_eq!(d.to_string().parse::<Destination>(), Ok(d));
            }
        }

        #[test]
        fn structured_rules_round_trip(
            v6 in any::<bool>(), a in any::<u128>(), len in 0u8..=128, ports in proptest::option::of((any::<u16>(), any::<u16>())), proto in 0u8..3,
        ) {
            let net: IpNet = if v6 {
                IpNet::new(std::net::Ipv6Addr::from(a).into(), len).unwrap().trunc()
            } else {
                IpNet::new(std::net::Ipv4Addr::from(a.to_be_bytes()[12..].try_into().map(u32::from_be_bytes).unwrap()).into(), len % 33).unwrap().trunc()
            };
            let d = Destination {
                host: Host::Net(net),
                ports: ports.map(|(x, y)| Ports { lo: x.min(y), hi: x.max(y) }),
                proto: [Proto::Any, Proto::Tcp, Proto::Udp][usize::from(proto)],
            };
            prop_assert_eq!(d.to_string().parse::<Destination>(), Ok(d));
        }
    }
}
