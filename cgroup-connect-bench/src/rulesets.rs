//! Rule sets for the benchmarks, from a fixed seed so every run measures the same rules.
use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
};

/// xorshift64*: fast, deterministic, good enough to scatter addresses.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The address the benchmarks connect to: no rule may match it.
const TARGET: u32 = 0x7f00_0001;

/// A random IPv4 address other than 127.0.0.1 (the benchmarks connect to it) and 0/8. Rules
/// land near 127.0.0.1 as densely as anywhere else, so the table's search around it is as
/// long as around any address.
fn addr4(rng: &mut Rng) -> Ipv4Addr {
    loop {
        let a = Ipv4Addr::from((rng.next_u64() >> 32) as u32);
        if u32::from(a) != TARGET && a.octets()[0] != 0 {
            return a;
        }
    }
}

/// `n` distinct IPv4 /32 rules, one a line.
pub fn v4_hosts(n: usize, seed: u64) -> Vec<Ipv4Addr> {
    let mut rng = Rng::new(seed);
    let mut taken = std::collections::HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let a = addr4(&mut rng);
        if taken.insert(a) {
            out.push(a);
        }
    }
    out
}

/// `n` IPv4 prefixes shaped like a real block list: 90% /32, 5% /24-/31, 4% /16-/23, 1%
/// /8-/15 (so they nest), none covering 127.0.0.1.
///
/// # Panics
/// Never: prefix lengths are small numbers.
pub fn v4_prefixes(n: usize, seed: u64) -> Vec<(Ipv4Addr, u8)> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let pick = rng.next_u64() % 100;
            let span =
                |lo: u64, hi: u64, r: u64| u8::try_from(lo + r % (hi - lo + 1)).expect("small");
            let r = rng.next_u64();
            let len = match pick {
                0..90 => 32,
                90..95 => span(24, 31, r),
                95..99 => span(16, 23, r),
                _ => span(8, 15, r),
            };
            let mask = if len == 32 { u32::MAX } else { !(u32::MAX >> len) };
            loop {
                let net = u32::from(addr4(&mut rng)) & mask;
                if TARGET & mask != net {
                    return (Ipv4Addr::from(net), len);
                }
            }
        })
        .collect()
}

/// The lines of a blocker list: `hosts` or `prefixes`, one in a hundred with a port.
pub fn blocker_list_v4(hosts: &[Ipv4Addr], prefixes: &[(Ipv4Addr, u8)]) -> String {
    let mut s = String::with_capacity(20 * (hosts.len() + prefixes.len()));
    for (i, a) in hosts.iter().enumerate() {
        let _ = if i % 100 == 99 { writeln!(s, "tcp://{a}:443") } else { writeln!(s, "{a}") };
    }
    for (i, (a, len)) in prefixes.iter().enumerate() {
        let _ = if i % 100 == 99 {
            writeln!(s, "tcp://{a}/{len}:443")
        } else {
            writeln!(s, "{a}/{len}")
        };
    }
    s
}

/// `n` IPv6 /128 rules in 2001:db8::/32, one in a hundred with a port.
pub fn blocker_list_v6(n: usize, seed: u64) -> String {
    let mut s = String::with_capacity(44 * n);
    for (i, a) in v6_hosts(n, seed).into_iter().enumerate() {
        let _ = if i % 100 == 99 { writeln!(s, "tcp://[{a}]:443") } else { writeln!(s, "{a}") };
    }
    s
}

/// An nft script: a set of `hosts` (a hash set, or with `interval` an interval set of the
/// same addresses), dropped on output.
pub fn nft_script(hosts: &[Ipv4Addr], interval: bool) -> String {
    let mut s = String::with_capacity(20 * hosts.len() + 256);
    s.push_str("table ip bench {\n  set drop4 {\n    type ipv4_addr\n");
    if interval {
        s.push_str("    flags interval\n");
    }
    s.push_str("  }\n  chain out {\n    type filter hook output priority 0; policy accept;\n    ip daddr @drop4 drop\n  }\n}\n");
    for chunk in hosts.chunks(10_000) {
        let items: Vec<String> = chunk.iter().map(ToString::to_string).collect();
        let _ = writeln!(s, "add element ip bench drop4 {{ {} }}", items.join(", "));
    }
    s
}

/// An `ipset restore` script: a hash:ip set of `hosts`.
pub fn ipset_script(hosts: &[Ipv4Addr]) -> String {
    let mut s = format!("create bench hash:ip family inet maxelem {}\n", hosts.len().max(1024));
    for a in hosts {
        let _ = writeln!(s, "add bench {a}");
    }
    s
}

/// An `iptables-restore` script: one DROP rule per host on OUTPUT.
pub fn iptables_script(hosts: &[Ipv4Addr]) -> String {
    let mut s =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for a in hosts {
        let _ = writeln!(s, "-A OUTPUT -d {a}/32 -j DROP");
    }
    s.push_str("COMMIT\n");
    s
}

/// Whether `a` may be a destination of the UDP workloads: unicast, routed by a default route,
/// not loopback (so 1.0.0.0 up to 223.255.255.255 without 127/8).
fn routable4(a: u32) -> bool {
    let first = a >> 24;
    (1..224).contains(&first) && first != 127
}

/// `n` IPv4 prefixes in real-list proportions (issue 11): 90% /32, 9.6% /24-/31, 0.4%
/// /16-/23, 0.01% /8-/15, lengths uniform within each band, each inside the routable unicast
/// space ([`routable4`]). They cover a small part of the address space, as real lists do
/// ([`coverage4`] says how much).
///
/// # Panics
/// Never: prefix lengths are small numbers.
pub fn real_list_v4(n: usize, seed: u64) -> Vec<(Ipv4Addr, u8)> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let pick = rng.next_u64() % 100_000;
            let span =
                |lo: u64, hi: u64, r: u64| u8::try_from(lo + r % (hi - lo + 1)).expect("small");
            let r = rng.next_u64();
            let len = match pick {
                0..10 => span(8, 15, r),
                10..410 => span(16, 23, r),
                410..10_010 => span(24, 31, r),
                _ => 32,
            };
            let mask = if len == 32 { u32::MAX } else { !(u32::MAX >> len) };
            loop {
                let net = (rng.next_u64() >> 32) as u32 & mask;
                if routable4(net) && routable4(net | !mask) {
                    return (Ipv4Addr::from(net), len);
                }
            }
        })
        .collect()
}

/// The address ranges `prefixes` cover, merged and sorted: `(first, last)` inclusive.
pub fn covered4(prefixes: &[(Ipv4Addr, u8)]) -> Vec<(u32, u32)> {
    let mut spans: Vec<(u32, u32)> = prefixes
        .iter()
        .map(|&(a, len)| {
            let host = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
            (u32::from(a), u32::from(a) | host)
        })
        .collect();
    spans.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::with_capacity(spans.len());
    for (lo, hi) in spans {
        match merged.last_mut() {
            Some(last) if u64::from(lo) <= u64::from(last.1) + 1 => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    merged
}

/// How many addresses `covered` (from [`covered4`]) holds.
pub fn coverage4(covered: &[(u32, u32)]) -> u64 {
    covered.iter().map(|&(lo, hi)| u64::from(hi - lo) + 1).sum()
}

/// `n` distinct routable IPv4 destinations that no range of `covered` holds.
pub fn allowed_v4(covered: &[(u32, u32)], n: usize, seed: u64) -> Vec<Ipv4Addr> {
    let mut rng = Rng::new(seed);
    let mut taken = std::collections::HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let a = (rng.next_u64() >> 32) as u32;
        let inside = covered
            .partition_point(|&(lo, _)| lo <= a)
            .checked_sub(1)
            .is_some_and(|i| covered[i].1 >= a);
        if routable4(a) && !inside && taken.insert(a) {
            out.push(Ipv4Addr::from(a));
        }
    }
    out
}

/// Up to `n` distinct destinations that `prefixes` block for every protocol, in random order:
/// the /32 rules that [`blocker_list_v4`] writes without a port (so the hash map, the LPM
/// trie and the blocker all block them).
pub fn blocked_v4(prefixes: &[(Ipv4Addr, u8)], n: usize, seed: u64) -> Vec<Ipv4Addr> {
    let mut hosts: Vec<Ipv4Addr> = prefixes
        .iter()
        .enumerate()
        .filter(|&(i, &(_, len))| len == 32 && i % 100 != 99)
        .map(|(_, &(a, _))| a)
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    shuffle(&mut hosts, seed);
    hosts.truncate(n);
    hosts
}

/// Puts `items` in a random order (Fisher-Yates), the same for the same seed.
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut rng = Rng::new(seed);
    for i in (1..items.len()).rev() {
        let j = rng.next_u64() % (i as u64 + 1);
        items.swap(i, usize::try_from(j).unwrap_or(i));
    }
}

/// `n` IPv6 hosts in 2001:db8::/32: the addresses of [`blocker_list_v6`] with the same seed.
pub fn v6_hosts(n: usize, seed: u64) -> Vec<Ipv6Addr> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            Ipv6Addr::from(
                (0x2001_0db8u128 << 96)
                    | (u128::from(rng.next_u64()) << 32)
                    | u128::from(u32::try_from(i).unwrap_or(u32::MAX)),
            )
        })
        .collect()
}

/// `n` distinct IPv6 destinations in 2001:db8::/32 (among the rules, so a search is as long
/// as for a rule) that are not in `rules`.
pub fn allowed_v6(rules: &[Ipv6Addr], n: usize, seed: u64) -> Vec<Ipv6Addr> {
    let rules: std::collections::HashSet<&Ipv6Addr> = rules.iter().collect();
    let mut rng = Rng::new(seed);
    let mut taken = std::collections::HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let a = Ipv6Addr::from(
            (0x2001_0db8u128 << 96)
                | (u128::from(rng.next_u64()) << 32)
                | u128::from((rng.next_u64() >> 32) as u32),
        );
        if !rules.contains(&a) && taken.insert(a) {
            out.push(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_list_has_the_proportions_and_leaves_most_space_allowed() {
        let rules = real_list_v4(200_000, 9);
        let share = |lo: u8, hi: u8| {
            rules.iter().filter(|(_, l)| (lo..=hi).contains(l)).count() as f64 / 200_000.0
        };
        assert!((share(32, 32) - 0.9).abs() < 0.005, "{}", share(32, 32));
        assert!((share(24, 31) - 0.096).abs() < 0.005, "{}", share(24, 31));
        let covered = covered4(&rules);
        assert!(coverage4(&covered) < 1 << 31, "{}", coverage4(&covered));
        for a in allowed_v4(&covered, 1_000, 3) {
            assert!(!rules.iter().any(|&(n, l)| {
                let mask = if l == 32 { u32::MAX } else { !(u32::MAX >> l) };
                u32::from(a) & mask == u32::from(n)
            }));
        }
        let blocked = blocked_v4(&rules, 1_000, 4);
        assert_eq!(blocked.len(), 1_000);
        assert!(blocked.iter().all(|a| rules.contains(&(*a, 32))));
    }

    #[test]
    fn v6_hosts_are_the_lists_addresses() {
        let hosts = v6_hosts(300, 5);
        let list = blocker_list_v6(300, 5);
        for (a, line) in hosts.iter().zip(list.lines()) {
            assert!(line.contains(&a.to_string()), "{a} {line}");
        }
        assert!(allowed_v6(&hosts, 100, 6).iter().all(|a| !hosts.contains(a)));
    }
}
