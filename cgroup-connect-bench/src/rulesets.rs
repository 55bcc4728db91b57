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
    let mut rng = Rng::new(seed);
    let mut s = String::with_capacity(44 * n);
    for i in 0..n {
        let a = Ipv6Addr::from(
            (0x2001_0db8u128 << 96)
                | (u128::from(rng.next_u64()) << 32)
                | u128::from(u32::try_from(i).unwrap_or(u32::MAX)),
        );
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
