//! What a workload needs to reach, as a policy: turns observe mode's record (every destination
//! an instance in audit mode judged, see `cgroup_connect_common::observe`) into a default-deny
//! TOML policy that allows exactly those destinations, one `[[rule]]` per destination, port
//! and protocol, each with a comment giving its counts and when it was first and last seen.
//!
//! Addresses that belong to a hostname rule of the instance (its record keeps each hostname's
//! addresses) are written as that hostname. With aggregation, [`Learn::aggregate_min`] or more
//! addresses of one prefix, on the same port and protocol, become one prefix rule.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::SystemTime,
};

use cgroup_connect_common::{Observed, ObservedKey, Proto, mapped_ip4};
use ipnet::IpNet;

use crate::{
    record::Recorded,
    rules::{Destination, Host, Nat64Prefix},
};

/// Addresses of one prefix that `--aggregate` needs before it writes the prefix instead: a
/// prefix from fewer would allow a range the workload gives no sign of needing.
pub const AGGREGATE_MIN: usize = 3;

/// How to learn a policy.
#[derive(Clone, Debug)]
pub struct Learn {
    /// Only destinations last seen at or after this time (`--since`).
    pub since: Option<SystemTime>,
    /// `--aggregate /N`: the IPv4 prefix length addresses are grouped by.
    pub aggregate_v4: Option<u8>,
    /// `--aggregate6 /N`: the IPv6 prefix length.
    pub aggregate_v6: Option<u8>,
    /// Addresses of one prefix (same port and protocol) it takes to write the prefix.
    pub aggregate_min: usize,
}

impl Default for Learn {
    fn default() -> Self {
        Self { since: None, aggregate_v4: None, aggregate_v6: None, aggregate_min: AGGREGATE_MIN }
    }
}

/// One observed destination, with its wall-clock times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub addr: IpAddr,
    /// The rule protocol it matches (`Any` for ping, raw, SCTP and the like).
    pub proto: Proto,
    /// The port; None for a protocol without ports in the rules (`Any`).
    pub port: Option<u16>,
    /// The `IPPROTO_*` number the socket gave.
    pub ip_proto: u8,
    pub first: SystemTime,
    pub last: SystemTime,
    pub count: u64,
    pub would_block: u64,
}

impl Seen {
    /// The destination of an observe-map entry, with times converted by `wall` (boot ns to
    /// wall clock, as events are). An IPv4-mapped address is written as the IPv4 address the
    /// IPv4 rules judge it by.
    pub fn of(key: &ObservedKey, value: &Observed, wall: impl Fn(u64) -> SystemTime) -> Self {
        let addr = if key.family == 4 {
            #[expect(clippy::cast_possible_truncation, reason = "IPv4 is in the low half")]
            IpAddr::V4(Ipv4Addr::from(key.addr_lo as u32))
        } else if let Some(v4) = mapped_ip4((key.addr_hi, key.addr_lo)) {
            IpAddr::V4(Ipv4Addr::from(v4))
        } else {
            IpAddr::V6(Ipv6Addr::from(u128::from(key.addr_hi) << 64 | u128::from(key.addr_lo)))
        };
        let proto = Proto::from_ip_proto(u32::from(key.protocol));
        Self {
            addr,
            proto,
            port: (proto != Proto::Any).then_some(key.port),
            ip_proto: key.protocol,
            first: wall(value.first_ns),
            last: wall(value.last_ns),
            count: value.count,
            would_block: value.would_block,
        }
    }
}

/// A learned rule: where it goes and what was seen of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Learned {
    pub dest: Destination,
    /// Addresses it stands for (one, a hostname's, or a prefix's).
    pub addrs: BTreeSet<IpAddr>,
    pub first: SystemTime,
    pub last: SystemTime,
    pub count: u64,
    pub would_block: u64,
    /// The `IPPROTO_*` number, for a protocol the rules name as any (ping, raw, SCTP).
    pub ip_proto: Option<u8>,
}

/// The rules that allow what `seen` shows: hostname rules of `recorded` for their addresses,
/// then prefixes (with aggregation), then single addresses; sorted by destination.
#[must_use]
pub fn learn(seen: &[Seen], recorded: &Recorded, how: &Learn) -> Vec<Learned> {
    let names = hostnames(recorded);
    // (what the rule names, port, protocol) -> merged sightings.
    let mut groups: BTreeMap<(Key, Option<u16>, Proto), Learned> = BTreeMap::new();
    let recent = seen.iter().filter(|s| how.since.is_none_or(|t| s.last >= t));
    // Addresses of each prefix (same port and protocol), to aggregate.
    let mut by_prefix: BTreeMap<(IpNet, Option<u16>, Proto), BTreeSet<IpAddr>> = BTreeMap::new();
    let recent: Vec<&Seen> = recent.collect();
    for s in &recent {
        if names.contains_key(&s.addr) {
            continue;
        }
        if let Some(net) = prefix_of(s.addr, how) {
            by_prefix.entry((net, s.port, s.proto)).or_default().insert(s.addr);
        }
    }
    for s in recent {
        let key = if let Some(name) = names.get(&s.addr) {
            Key::Name(name.clone())
        } else {
            match prefix_of(s.addr, how) {
                Some(net)
                    if by_prefix.get(&(net, s.port, s.proto)).map_or(0, BTreeSet::len)
                        >= how.aggregate_min.max(1) =>
                {
                    Key::Net(net)
                }
                _ => Key::Net(IpNet::from(s.addr)),
            }
        };
        let entry = groups.entry((key.clone(), s.port, s.proto)).or_insert_with(|| Learned {
            dest: Destination {
                host: match key {
                    Key::Net(net) => Host::Net(net),
                    Key::Name(name) => Host::Name(name.into()),
                },
                ports: s.port.map(|p| crate::rules::Ports { lo: p, hi: p }),
                proto: s.proto,
            },
            addrs: BTreeSet::new(),
            first: s.first,
            last: s.last,
            count: 0,
            would_block: 0,
            ip_proto: (s.proto == Proto::Any).then_some(s.ip_proto),
        });
        entry.addrs.insert(s.addr);
        entry.first = entry.first.min(s.first);
        entry.last = entry.last.max(s.last);
        entry.count += s.count;
        entry.would_block += s.would_block;
    }
    groups.into_values().collect()
}

/// What a learned rule names, ordered: addresses and prefixes first, then hostnames.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Net(IpNet),
    Name(String),
}

/// Each address of a hostname rule in `recorded`, and the hostname (the first rule's, when
/// two names share an address).
fn hostnames(recorded: &Recorded) -> BTreeMap<IpAddr, String> {
    let mut out = BTreeMap::new();
    for rule in &recorded.rules {
        let Ok(Destination { host: Host::Name(name), .. }) = rule.rule.parse::<Destination>()
        else {
            continue;
        };
        for addr in rule.addrs.iter().filter_map(|a| a.parse::<IpAddr>().ok()) {
            out.entry(addr).or_insert_with(|| name.to_string());
        }
    }
    out
}

/// The prefix `addr` is aggregated into, if aggregation is asked for its family.
fn prefix_of(addr: IpAddr, how: &Learn) -> Option<IpNet> {
    let len = match addr {
        IpAddr::V4(_) => how.aggregate_v4?,
        IpAddr::V6(_) => how.aggregate_v6?,
    };
    IpNet::new(addr, len).ok().map(|n| n.trunc())
}

/// The policy file: a header saying where it was learned from, `default = "deny"`, the
/// instance's NAT64 prefixes, then one commented `[[rule]]` each.
#[must_use]
pub fn policy_text(
    name: &str,
    rules: &[Learned],
    nat64: &[Nat64Prefix],
    notes: &[String],
) -> String {
    let mut out = String::new();
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now());
    let _ = writeln!(out, "# Learned by `blocker learn {name}` at {stamp} from observe mode:");
    let _ =
        writeln!(out, "# allows exactly the destinations the workload reached, denies the rest.");
    for note in notes {
        let _ = writeln!(out, "# {note}");
    }
    let _ = writeln!(out, "default = \"deny\"");
    if !nat64.is_empty() {
        let list: Vec<String> = nat64.iter().map(|p| format!("\"{p}\"")).collect();
        let _ = writeln!(out, "nat64 = [{}]", list.join(", "));
    }
    for r in rules {
        let _ = writeln!(out);
        let would = if r.would_block > 0 {
            format!(" ({} would have been blocked)", r.would_block)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "# {} decision{}{would}, first seen {}, last seen {}",
            r.count,
            if r.count == 1 { "" } else { "s" },
            humantime::format_rfc3339_seconds(r.first),
            humantime::format_rfc3339_seconds(r.last)
        );
        let many = r.addrs.len() > 1 || matches!(r.dest.host, Host::Name(_));
        if many {
            let addrs: Vec<String> = r.addrs.iter().map(ToString::to_string).collect();
            let _ = writeln!(out, "# addresses seen: {}", addrs.join(" "));
        }
        if let Some(p) = r.ip_proto {
            let _ = writeln!(out, "# IP protocol {p}: the rules name no protocol or port for it");
        }
        let _ = writeln!(out, "[[rule]]");
        let _ = writeln!(out, "action = \"allow\"");
        let dst = match &r.dest.host {
            Host::Net(net) if net.prefix_len() == net.max_prefix_len() => net.addr().to_string(),
            Host::Net(net) => net.to_string(),
            Host::Name(name) => name.to_string(),
        };
        let _ = writeln!(out, "dst = \"{dst}\"");
        if let Some(p) = r.dest.ports {
            let _ = writeln!(out, "ports = {}", p.lo);
        }
        match r.dest.proto {
            Proto::Tcp => {
                let _ = writeln!(out, "proto = \"tcp\"");
            }
            Proto::Udp => {
                let _ = writeln!(out, "proto = \"udp\"");
            }
            Proto::Any => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{record::RecordedRule, rules::Action};

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn seen(addr: &str, port: u16, ip_proto: u8, last: u64) -> Seen {
        let proto = Proto::from_ip_proto(u32::from(ip_proto));
        Seen {
            addr: addr.parse().expect("test address"),
            proto,
            port: (proto != Proto::Any).then_some(port),
            ip_proto,
            first: at(0),
            last: at(last),
            count: 2,
            would_block: 1,
        }
    }

    fn none() -> Recorded {
        Recorded { default: Action::Allow, rules: vec![] }
    }

    fn dests(rules: &[Learned]) -> Vec<String> {
        rules.iter().map(|r| r.dest.to_string()).collect()
    }

    #[test]
    fn each_destination_port_and_protocol_is_one_rule() {
        let s = [
            seen("192.0.2.1", 443, 6, 1),
            seen("192.0.2.1", 443, 6, 5),
            seen("192.0.2.1", 53, 17, 1),
            seen("2001:db8::1", 80, 6, 1),
            seen("192.0.2.9", 0, 1, 1),
        ];
        let rules = learn(&s, &none(), &Learn::default());
        assert_eq!(
            dests(&rules),
            ["udp://192.0.2.1:53", "tcp://192.0.2.1:443", "192.0.2.9", "tcp://[2001:db8::1]:80"]
        );
        let merged = &rules[1];
        assert_eq!((merged.count, merged.would_block, merged.last), (4, 2, at(5)));
        assert_eq!(rules[2].ip_proto, Some(1));
    }

    #[test]
    fn mapped_addresses_are_learned_as_ipv4() {
        let key = ObservedKey {
            addr_hi: 0,
            addr_lo: 0xffff_c000_0201,
            port: 80,
            family: 6,
            protocol: 6,
            pad: 0,
        };
        let s = Seen::of(&key, &Observed::default(), |_| at(0));
        assert_eq!(s.addr, "192.0.2.1".parse::<IpAddr>().expect("address"));
    }

    #[test]
    fn aggregation_needs_enough_addresses_of_one_prefix() {
        let hosts = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "198.51.100.1", "198.51.100.2"];
        let mut s = hosts.map(|a| seen(a, 443, 6, 1)).to_vec();
        s.push(seen("192.0.2.4", 80, 6, 1));
        let how = Learn { aggregate_v4: Some(24), ..Learn::default() };
        assert_eq!(
            dests(&learn(&s, &none(), &how)),
            [
                "tcp://192.0.2.0/24:443",
                "tcp://192.0.2.4:80",
                "tcp://198.51.100.1:443",
                "tcp://198.51.100.2:443"
            ]
        );
    }

    #[test]
    fn since_leaves_out_what_was_last_seen_before() {
        let s = [seen("192.0.2.1", 443, 6, 1), seen("192.0.2.2", 443, 6, 100)];
        let how = Learn { since: Some(at(50)), ..Learn::default() };
        assert_eq!(dests(&learn(&s, &none(), &how)), ["tcp://192.0.2.2:443"]);
    }

    #[test]
    fn addresses_of_a_hostname_rule_are_written_as_the_hostname() {
        let recorded = Recorded {
            default: Action::Block,
            rules: vec![RecordedRule {
                id: 1,
                action: Action::Allow,
                rule: "tcp://api.example.com:443".to_owned(),
                origin: "--allow".to_owned(),
                addrs: vec!["192.0.2.1".to_owned(), "192.0.2.2".to_owned()],
            }],
        };
        let s = ["192.0.2.1", "192.0.2.2", "192.0.2.3"].map(|a| seen(a, 443, 6, 1));
        let rules = learn(&s, &recorded, &Learn::default());
        assert_eq!(dests(&rules), ["tcp://192.0.2.3:443", "tcp://api.example.com:443"]);
        assert_eq!(rules[1].addrs.len(), 2);
    }

    #[test]
    fn the_policy_text_loads() {
        let s = [seen("192.0.2.1", 443, 6, 1), seen("2001:db8::1", 53, 17, 1)];
        let rules = learn(&s, &none(), &Learn::default());
        let text = policy_text("web", &rules, &[], &[]);
        let dir = tempfile::tempdir().expect("temporary folder");
        let path = dir.path().join("learned.toml");
        std::fs::write(&path, &text).expect("write the policy");
        let sources = crate::policy::Sources { policy: Some(path), ..Default::default() };
        let policy = crate::policy::Policy::load(&sources).expect("the learned policy loads");
        assert_eq!(policy.default, Action::Block);
        let got: Vec<String> = policy.rules.iter().map(|r| r.rule.dest.to_string()).collect();
        assert_eq!(got, ["tcp://192.0.2.1:443", "udp://[2001:db8::1]:53"], "{text}");
    }
}
