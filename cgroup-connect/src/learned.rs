//! The fast path for the DNS forwarder's new addresses: the `dns_learned` map
//! (`cgroup_connect_common::dns::LearnedClass`), written by the forwarder before it passes an
//! answer on, in microseconds, where a table swap takes tens of milliseconds. The serving loop
//! then folds the addresses into the tables with one swap, and takes them out of the map.
//!
//! An address in the map decides as the tables would with it: its class holds the entries of
//! every hostname rule that stands for it (those the answer's names match, and those that
//! stood for it before), in [`Rank`] order, and where none matches a call's port and protocol
//! the tables' own word decides, which is what a table's class of a /32 (/128) falls back to.
//! This holds as long as no other /32 (/128) rule is on the address: an address that a rule
//! names as such, or whose entries do not fit a class, goes the slow way (a swap before the
//! answer). The programs look in the map only while `config::DNS_LEARNED` is not 0.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
    time::Duration,
};

use aya::maps::{Array, HashMap, Map, MapData};
use cgroup_connect_common::{
    ALL_PORTS, MAX_NAT64_PREFIXES, Proto, Rank, config,
    dns::{DNS_LEARNED_CAPACITY, LEARNED_CLASS_LEN, LearnedClass, LearnedKey},
    pack_ports, word,
};

use crate::rules::{Action, Nat64Prefix, Ports};

/// A hostname rule, as the fast path needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameRule {
    pub id: u32,
    pub ports: Option<Ports>,
    pub proto: Proto,
    pub action: Action,
}

impl NameRule {
    fn rank(&self) -> Rank {
        Rank {
            prefix_len: 128,
            has_port: self.ports.is_some(),
            has_proto: self.proto != Proto::Any,
            block: self.action == Action::Block,
        }
    }

    fn entry(&self) -> (u32, u32) {
        let ports = self.ports.map_or(ALL_PORTS, |p| pack_ports(p.lo, p.hi));
        (ports, word::verdict(self.action == Action::Block, self.proto, self.id))
    }
}

/// What the policy in force says of hostnames, for the fast path: set after each swap.
#[derive(Debug, Default)]
pub struct Policy {
    /// The hostname rules, by name.
    pub rules: BTreeMap<String, Vec<NameRule>>,
    /// The names that stand for each address in the tables.
    pub known: BTreeMap<IpAddr, BTreeSet<String>>,
    /// The addresses that rules name as a /32 or /128 (sorted): those go the slow way.
    pub hosts: Vec<IpAddr>,
    /// NAT64 prefixes besides the well-known one.
    pub nat64: Vec<Nat64Prefix>,
}

/// The map and what the forwarder needs to write it.
pub struct FastPath {
    map: HashMap<MapData, LearnedKey, LearnedClass>,
    config: Array<MapData, u32>,
    policy: Policy,
    /// The addresses in the map, with the names in their class and the number of their last
    /// write (the serving loop takes an address out only if it folded that write).
    entries: BTreeMap<IpAddr, (BTreeSet<String>, u64)>,
    writes: u64,
}

/// What an answer needs.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing new: pass it on.
    Known,
    /// In the map now (these writes): pass it on, fold later.
    Written(Vec<(IpAddr, u64)>),
    /// The slow way: a swap before it is passed on (after which the writes made before the
    /// map refused one are taken out again).
    Slow(Vec<(IpAddr, u64)>),
}

/// The class entries of hostname rules on one address, as the compiler orders a /32's: by
/// [`Rank`] (then rule id), up to the first that matches every port and protocol; `None` past
/// [`LEARNED_CLASS_LEN`] entries.
fn class_of(
    mut rules: Vec<NameRule>,
) -> Option<([u32; LEARNED_CLASS_LEN], [u32; LEARNED_CLASS_LEN])> {
    rules.sort_by(|a, b| b.rank().cmp(&a.rank()).then(a.id.cmp(&b.id)));
    rules.dedup();
    let mut ports = [LearnedClass::UNUSED; LEARNED_CLASS_LEN];
    let mut words = [0; LEARNED_CLASS_LEN];
    for (k, rule) in rules.iter().enumerate() {
        if k == LEARNED_CLASS_LEN {
            return None;
        }
        (ports[k], words[k]) = rule.entry();
        if rule.ports.is_none() && rule.proto == Proto::Any {
            break;
        }
    }
    Some((ports, words))
}

/// The boot-time clock the programs read (`bpf_ktime_get_boot_ns`), in nanoseconds.
fn boot_ns() -> u64 {
    u64::try_from(crate::events::boot_time().as_nanos()).unwrap_or(u64::MAX)
}

impl FastPath {
    /// Opens the instance's pinned `dns_learned` and config maps, and empties the map (the
    /// tables of a start hold every address learned before it).
    ///
    /// # Errors
    /// A map missing (an instance pinned by a version without it), or not of its type.
    pub fn open(learned: &Path, config_map: &Path) -> anyhow::Result<Self> {
        let map = HashMap::try_from(Map::HashMap(MapData::from_pin(learned)?))?;
        let config = Array::try_from(Map::Array(MapData::from_pin(config_map)?))?;
        let mut this =
            Self { map, config, policy: Policy::default(), entries: BTreeMap::new(), writes: 0 };
        let keys: Vec<LearnedKey> = this.map.keys().filter_map(Result::ok).collect();
        for key in keys {
            let _ = this.map.remove(&key);
        }
        this.config.set(config::DNS_LEARNED, 0, 0)?;
        Ok(this)
    }

    /// Sets the policy in force (after a swap).
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// Puts the addresses of an answer whose names are `chain` into the map, when a rule
    /// covers them and the tables do not say so yet. `ttl` + `grace` is how long each decides.
    pub fn learn(&mut self, chain: &[String], addrs: &[(IpAddr, u32)], grace: Duration) -> Outcome {
        let covering: BTreeSet<&String> = self
            .policy
            .rules
            .keys()
            .filter(|rule| chain.iter().any(|asked| crate::resolve::covers(rule, asked)))
            .collect();
        if covering.is_empty() {
            return Outcome::Known;
        }
        let mut new = Vec::new();
        for &(addr, ttl) in addrs {
            let known = self.policy.known.get(&addr);
            let mapped = self.entries.get(&addr).map(|(names, _)| names);
            let has = |n: &String| {
                known.is_some_and(|k| k.contains(n)) || mapped.is_some_and(|m| m.contains(n))
            };
            if covering.iter().all(|n| has(n)) {
                continue;
            }
            let mut names: BTreeSet<String> = covering.iter().map(|n| (*n).clone()).collect();
            names.extend(known.into_iter().flatten().cloned());
            names.extend(mapped.into_iter().flatten().cloned());
            new.push((addr, ttl, names));
        }
        if new.is_empty() {
            return Outcome::Known;
        }
        let mut writes = Vec::new();
        let mut classes = Vec::new();
        for (addr, ttl, names) in new {
            let Some(class) = self.class(addr, &names) else { return Outcome::Slow(Vec::new()) };
            classes.push((addr, ttl, names, class));
        }
        // Each address takes up to 2 + MAX_NAT64_PREFIXES keys: the map never fills.
        let most = DNS_LEARNED_CAPACITY as usize / (2 + MAX_NAT64_PREFIXES as usize);
        if self.entries.len() + classes.len() > most {
            return Outcome::Slow(Vec::new());
        }
        let now = boot_ns();
        for (addr, ttl, names, (ports, words)) in classes {
            let life = Duration::from_secs(u64::from(ttl)) + grace;
            let until_ns = now.saturating_add(u64::try_from(life.as_nanos()).unwrap_or(u64::MAX));
            let value = LearnedClass { until_ns, ports, words };
            self.writes += 1;
            if self.keys(addr).iter().any(|key| self.map.insert(key, value, 0).is_err()) {
                // Taken out after the swap, with the others of this answer.
                self.entries.insert(addr, (names, self.writes));
                writes.push((addr, self.writes));
                return Outcome::Slow(writes);
            }
            self.entries.insert(addr, (names, self.writes));
            writes.push((addr, self.writes));
        }
        if self.config.set(config::DNS_LEARNED, 1, 0).is_err() {
            return Outcome::Slow(writes);
        }
        Outcome::Written(writes)
    }

    /// Takes out the writes the tables now hold (a swap that had learned them is in force),
    /// unless the address was written again since.
    pub fn folded(&mut self, writes: &[(IpAddr, u64)]) {
        for &(addr, write) in writes {
            if self.entries.get(&addr).is_some_and(|(_, w)| *w == write) {
                for key in self.keys(addr) {
                    let _ = self.map.remove(&key);
                }
                self.entries.remove(&addr);
            }
        }
        if self.entries.is_empty() {
            // Failing, the programs only look in an empty map.
            let _ = self.config.set(config::DNS_LEARNED, 0, 0);
        }
    }

    /// Addresses written into the map since start.
    #[must_use]
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Addresses in the map now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The class of `addr` for the rules of `names`, or `None` when it must go the slow way.
    fn class(
        &self,
        addr: IpAddr,
        names: &BTreeSet<String>,
    ) -> Option<([u32; LEARNED_CLASS_LEN], [u32; LEARNED_CLASS_LEN])> {
        if addr.is_loopback() || addr.is_unspecified() {
            return None;
        }
        let judged = self.judged(addr);
        if self.policy.hosts.binary_search(&judged).is_ok() {
            return None;
        }
        let rules: Vec<NameRule> = names
            .iter()
            .flat_map(|n| self.policy.rules.get(n).into_iter().flatten().copied())
            .collect();
        class_of(rules)
    }

    /// The address the tables judge `addr` by: an IPv4-mapped or NAT64 one as IPv4.
    fn judged(&self, addr: IpAddr) -> IpAddr {
        let IpAddr::V6(v6) = addr else { return addr };
        let net = ipnet::Ipv6Net::from(v6);
        if let Some(v4) = v6.to_ipv4_mapped() {
            return IpAddr::V4(v4);
        }
        std::iter::once(&Nat64Prefix::WELL_KNOWN)
            .chain(&self.policy.nat64)
            .find_map(|p| p.ip4(net))
            .map_or(addr, |v4| IpAddr::V4(v4.addr()))
    }

    /// The keys a call to `addr` is looked up by: an IPv4 address (or one the tables judge as
    /// IPv4) mapped and under each NAT64 prefix.
    fn keys(&self, addr: IpAddr) -> Vec<LearnedKey> {
        let halves = |n: u128| {
            #[expect(clippy::cast_possible_truncation, reason = "the two halves")]
            LearnedKey { hi: (n >> 64) as u64, lo: n as u64 }
        };
        match self.judged(addr) {
            IpAddr::V4(v4) => {
                let v4 = u32::from(v4);
                let mut keys = vec![LearnedKey::v4(v4)];
                for prefix in std::iter::once(&Nat64Prefix::WELL_KNOWN).chain(&self.policy.nat64) {
                    let [a, b, c] = prefix.words();
                    let n = u128::from(a) << 96 | u128::from(b) << 64 | u128::from(c) << 32;
                    keys.push(halves(n | u128::from(v4)));
                }
                keys
            }
            IpAddr::V6(v6) => vec![halves(u128::from(v6))],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: u32, ports: Option<(u16, u16)>, proto: Proto, action: Action) -> NameRule {
        NameRule { id, ports: ports.map(|(lo, hi)| Ports { lo, hi }), proto, action }
    }

    /// The class decides as the documented order: a port beats a protocol beats block beats
    /// allow; where no entry matches, the tables' word (the enclosing prefix) decides.
    #[test]
    fn classes_follow_the_decision_order() {
        let rules = vec![
            rule(1, None, Proto::Any, Action::Allow),
            rule(2, Some((443, 443)), Proto::Any, Action::Allow),
            rule(3, None, Proto::Udp, Action::Block),
            rule(4, None, Proto::Any, Action::Block),
        ];
        let (ports, words) = class_of(rules).expect("fits");
        let class = LearnedClass { until_ns: 10, ports, words };
        let decide = |port, proto| class.decide(0, port, proto).map(word::rule);
        assert_eq!(decide(443, Proto::Udp), Some(2));
        assert_eq!(decide(53, Proto::Udp), Some(3));
        assert_eq!(decide(80, Proto::Tcp), Some(4), "block beats allow at equal rank");
        assert_eq!(class.decide(10, 80, Proto::Tcp), None, "past its time: the tables decide");
        let port_only = class_of(vec![rule(5, Some((80, 80)), Proto::Tcp, Action::Allow)]);
        let (ports, words) = port_only.expect("fits");
        let class = LearnedClass { until_ns: 10, ports, words };
        assert_eq!(class.decide(0, 80, Proto::Tcp).map(word::rule), Some(5));
        assert_eq!(class.decide(0, 81, Proto::Tcp), None, "other ports: the tables decide");
        assert_eq!(class.decide(0, 80, Proto::Udp), None, "other protocol: the tables decide");
        let many = (1..=9u16).map(|p| rule(u32::from(p), Some((p, p)), Proto::Any, Action::Block));
        assert_eq!(class_of(many.collect()), None, "past 8 entries: the slow way");
    }
}
