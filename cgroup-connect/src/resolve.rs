//! Hostname rules: resolves their A and AAAA records (and /etc/hosts) at start, then again as
//! the records expire (at their TTL, at least every [`MAX_REFRESH`]).
//!
//! New addresses go in before stale ones come out: a name's addresses are those of its latest
//! answer plus those of the answer before, so a client that cached the previous answer is
//! still judged by the rule until the next refresh. A failed refresh keeps what the name had.
//!
//! With the DNS forwarder (`blocker run --dns-port`, module [`crate::dns`]), a name also stands
//! for the addresses the cgroup's own queries got ([`Names::learn`]), each until its TTL plus a
//! grace period, at most [`Learning::max`] of them (the oldest learned go first, counted). A
//! wildcard name (`*.example.com`) has only those: it is never resolved by the blocker.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use hickory_resolver::{TokioResolver, config::LookupIpStrategy};

use crate::quote::Quoted;

/// Longest time between two resolutions of a name.
pub const MAX_REFRESH: Duration = Duration::from_mins(5);
/// Shortest time between two resolutions of a name, whatever its TTL.
pub const MIN_REFRESH: Duration = Duration::from_secs(5);

/// A hostname could not be resolved at start.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot read the resolver configuration (/etc/resolv.conf)")]
    Config(#[source] hickory_resolver::net::NetError),
    #[error("cannot resolve hostname {}: check the name, or use its addresses", Quoted(name))]
    Lookup {
        name: String,
        #[source]
        source: hickory_resolver::net::NetError,
    },
    #[error(
        "hostname {} has no A or AAAA records: check the name, or use its addresses",
        Quoted(name)
    )]
    Empty { name: String },
}

#[derive(Debug, Default)]
struct NameState {
    latest: BTreeSet<IpAddr>,
    previous: BTreeSet<IpAddr>,
    refresh_at: Option<Instant>,
}

/// How long learned addresses stay, and how many there may be.
#[derive(Clone, Copy, Debug)]
pub struct Learning {
    /// Kept this long past the answer's TTL: a client may connect a little after its cache
    /// says the answer expired, or reuse it for a connection it opens late.
    pub grace: Duration,
    /// Learned addresses kept at most, over all names; past it, the oldest learned go first.
    pub max: usize,
}

impl Default for Learning {
    fn default() -> Self {
        Self { grace: Duration::from_mins(5), max: 10_000 }
    }
}

/// One learned address: until when, and the order it was learned in.
#[derive(Clone, Copy, Debug)]
struct Learned {
    until: Instant,
    order: u64,
}

/// The addresses learned from DNS answers, by the policy's name that covers them.
#[derive(Default)]
struct LearnedAddrs {
    by_name: BTreeMap<String, BTreeMap<IpAddr, Learned>>,
    learning: Learning,
    count: usize,
    next_order: u64,
    evicted: u64,
}

/// The hostnames of a policy and their addresses.
#[derive(Default)]
#[expect(clippy::struct_field_names, reason = "`names` are the policy's hostnames")]
pub struct Names {
    resolver: Option<TokioResolver>,
    names: BTreeMap<String, NameState>,
    learned: LearnedAddrs,
    /// With the forwarder's fast path: each compile keeps what it needs of the policy.
    wants_fast: bool,
    fast: Option<crate::learned::Policy>,
}

/// A learned address as the instance's state keeps it across a restart: the name of the
/// policy it stands for, and until when (seconds since the epoch).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeptAddr {
    pub name: String,
    pub addr: IpAddr,
    pub until: u64,
}

/// Whether `name` is a wildcard (`*.example.com`).
#[must_use]
pub fn is_wildcard(name: &str) -> bool {
    name.starts_with("*.")
}

/// Whether the rule's name `rule` (lowercase, `example.com` or `*.example.com`) covers the
/// name `asked` from a DNS message (any case, maybe with the root's dot): exactly, or for a
/// wildcard, one or more labels under it (not the parent itself).
#[must_use]
pub fn covers(rule: &str, asked: &str) -> bool {
    let asked = asked.strip_suffix('.').unwrap_or(asked);
    match rule.strip_prefix('*') {
        Some(suffix) => {
            asked.len() > suffix.len()
                && asked.is_char_boundary(asked.len() - suffix.len())
                && asked[asked.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }
        None => asked.eq_ignore_ascii_case(rule),
    }
}

impl LearnedAddrs {
    /// Drops the address learned first.
    fn evict_oldest(&mut self) {
        let oldest = self
            .by_name
            .iter()
            .flat_map(|(name, l)| l.iter().map(move |(addr, e)| (e.order, name, *addr)))
            .min();
        let Some((_, name, addr)) = oldest else { return };
        let name = name.clone();
        if let Some(entries) = self.by_name.get_mut(&name) {
            entries.remove(&addr);
            if entries.is_empty() {
                self.by_name.remove(&name);
            }
        }
        self.count -= 1;
        self.evicted += 1;
    }

    /// Drops the addresses whose time is up. Returns whether any was dropped.
    fn expire(&mut self, now: Instant) -> bool {
        let before = self.count;
        for entries in self.by_name.values_mut() {
            entries.retain(|_, e| e.until > now);
        }
        self.by_name.retain(|_, l| !l.is_empty());
        self.count = self.by_name.values().map(BTreeMap::len).sum();
        self.count != before
    }
}

impl Names {
    /// No names yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the names exactly `wanted`: resolves the new ones, forgets the others.
    ///
    /// # Errors
    /// A [`ResolveError`] for the first new name that does not resolve; the names are then
    /// as they were.
    pub async fn sync(&mut self, wanted: &BTreeSet<String>) -> Result<(), ResolveError> {
        let new: Vec<String> =
            wanted.iter().filter(|n| !self.names.contains_key(*n)).cloned().collect();
        self.learned.by_name.retain(|n, _| wanted.contains(n));
        self.learned.count = self.learned.by_name.values().map(BTreeMap::len).sum();
        if !new.is_empty() {
            let more = Self::resolve(new).await?;
            if self.resolver.is_none() {
                self.resolver = more.resolver;
            }
            self.names.extend(more.names);
        }
        self.names.retain(|n, _| wanted.contains(n));
        Ok(())
    }

    /// Resolves every name once.
    ///
    /// # Errors
    /// A [`ResolveError`] for the first name that does not resolve: a blocker that starts
    /// without the addresses of a block rule would silently let them through.
    ///
    /// # Panics
    /// Never: every name it looks up is one it holds.
    pub async fn resolve(names: impl IntoIterator<Item = String>) -> Result<Self, ResolveError> {
        let mut this = Self {
            names: names.into_iter().map(|n| (n, NameState::default())).collect(),
            ..Self::default()
        };
        if this.names.keys().all(|n| is_wildcard(n)) {
            return Ok(this);
        }
        let mut builder = TokioResolver::builder_tokio().map_err(ResolveError::Config)?;
        builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        this.resolver = Some(builder.build().map_err(ResolveError::Config)?);
        let names: Vec<String> = this.names.keys().filter(|n| !is_wildcard(n)).cloned().collect();
        for name in names {
            let (addrs, until) = this.lookup(&name).await?;
            let state = this.names.get_mut(&name).expect("known name");
            state.latest = addrs;
            state.refresh_at = Some(until);
        }
        Ok(this)
    }

    async fn lookup(&self, name: &str) -> Result<(BTreeSet<IpAddr>, Instant), ResolveError> {
        let resolver = self.resolver.as_ref().expect("a resolver when there are names");
        let answer = resolver
            .lookup_ip(name)
            .await
            .map_err(|source| ResolveError::Lookup { name: name.to_owned(), source })?;
        let addrs: BTreeSet<IpAddr> = answer.iter().collect();
        if addrs.is_empty() {
            return Err(ResolveError::Empty { name: name.to_owned() });
        }
        let now = Instant::now();
        let ttl =
            answer.valid_until().saturating_duration_since(now).clamp(MIN_REFRESH, MAX_REFRESH);
        Ok((addrs, now + ttl))
    }

    /// The addresses `name` stands for now: its latest answer and the one before, and those
    /// learned from the cgroup's own queries.
    pub fn addrs<'a>(&'a self, name: &str) -> impl Iterator<Item = IpAddr> + use<'a> {
        let resolved =
            self.names.get(name).into_iter().flat_map(|s| s.latest.union(&s.previous).copied());
        let learned = self.learned.by_name.get(name).into_iter().flat_map(|l| l.keys().copied());
        let all: BTreeSet<IpAddr> = resolved.chain(learned).collect();
        all.into_iter()
    }

    /// When the next name is due, or the next learned address expires.
    #[must_use]
    pub fn next_refresh(&self) -> Option<Instant> {
        let learned = self.learned.by_name.values().flat_map(|l| l.values().map(|e| e.until));
        self.names.values().filter_map(|s| s.refresh_at).chain(learned).min()
    }

    /// Sets how long learned addresses stay and how many there may be.
    pub fn set_learning(&mut self, learning: Learning) {
        self.learned.learning = learning;
    }

    /// Learned addresses held now.
    #[must_use]
    pub fn learned_count(&self) -> usize {
        self.learned.count
    }

    /// Learned addresses dropped to stay within [`Learning::max`], since start.
    #[must_use]
    pub fn evicted(&self) -> u64 {
        self.learned.evicted
    }

    /// Learns a DNS answer: `chain` is the name asked and the CNAME targets it led to,
    /// `addrs` the A and AAAA records at its end with their TTLs (seconds). Every name of the
    /// policy that covers a name of the chain stands for those addresses from now until their
    /// TTL plus the grace period. Returns whether a name got an address it did not stand for
    /// (the tables must then change before the answer is passed on).
    pub fn learn(&mut self, chain: &[String], addrs: &[(IpAddr, u32)]) -> bool {
        if addrs.is_empty() {
            return false;
        }
        let rules: Vec<String> = self
            .names
            .keys()
            .filter(|rule| chain.iter().any(|asked| covers(rule, asked)))
            .cloned()
            .collect();
        let now = Instant::now();
        let mut changed = false;
        for rule in rules {
            for &(addr, ttl) in addrs {
                let until = now + Duration::from_secs(u64::from(ttl)) + self.learned.learning.grace;
                let known = self
                    .names
                    .get(&rule)
                    .is_some_and(|s| s.latest.contains(&addr) || s.previous.contains(&addr));
                let order = self.learned.next_order;
                self.learned.next_order += 1;
                let entries = self.learned.by_name.entry(rule.clone()).or_default();
                if let Some(entry) = entries.get_mut(&addr) {
                    entry.until = entry.until.max(until);
                } else {
                    entries.insert(addr, Learned { until, order });
                    self.learned.count += 1;
                    changed |= !known;
                }
            }
        }
        while self.learned.count > self.learned.learning.max.max(1) {
            self.learned.evict_oldest();
        }
        changed
    }

    /// Drops the learned addresses whose time is up. Returns whether any was dropped.
    fn expire(&mut self, now: Instant) -> bool {
        self.learned.expire(now)
    }

    /// Asks each compile for what the forwarder's fast path needs ([`Names::take_fast`]).
    pub fn want_fast(&mut self, wanted: bool) {
        self.wants_fast = wanted;
    }

    /// Whether the fast path wants what a compile knows.
    #[must_use]
    pub fn wants_fast(&self) -> bool {
        self.wants_fast
    }

    /// Keeps what the fast path needs of the policy just compiled.
    pub fn set_fast(&mut self, policy: crate::learned::Policy) {
        if self.wants_fast {
            self.fast = Some(policy);
        }
    }

    /// What the fast path needs of the policy compiled last, once.
    pub fn take_fast(&mut self) -> Option<crate::learned::Policy> {
        self.fast.take()
    }

    /// The names that stand for each address now.
    #[must_use]
    pub fn known(&self) -> BTreeMap<IpAddr, BTreeSet<String>> {
        let mut known: BTreeMap<IpAddr, BTreeSet<String>> = BTreeMap::new();
        for name in self.names.keys() {
            for addr in self.addrs(name) {
                known.entry(addr).or_default().insert(name.clone());
            }
        }
        known
    }

    /// The learned addresses, for the instance's state.
    #[must_use]
    pub fn kept(&self) -> Vec<KeptAddr> {
        let (now, wall) = (Instant::now(), std::time::SystemTime::now());
        let epoch = |until: Instant| {
            (wall + until.saturating_duration_since(now))
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        self.learned
            .by_name
            .iter()
            .flat_map(|(name, l)| {
                l.iter().map(move |(addr, e)| KeptAddr {
                    name: name.clone(),
                    addr: *addr,
                    until: epoch(e.until),
                })
            })
            .collect()
    }

    /// Learns again the addresses a state kept, those whose time is not up, for the names
    /// the policy has (set by [`Names::sync`] at the next compile).
    pub fn restore(&mut self, kept: &[KeptAddr]) {
        let (now, wall) = (Instant::now(), std::time::SystemTime::now());
        let now_epoch = wall.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        for k in kept.iter().filter(|k| k.until > now_epoch) {
            let until = now + Duration::from_secs(k.until - now_epoch);
            let order = self.learned.next_order;
            self.learned.next_order += 1;
            let entries = self.learned.by_name.entry(k.name.clone()).or_default();
            if entries.insert(k.addr, Learned { until, order }).is_none() {
                self.learned.count += 1;
            }
        }
        while self.learned.count > self.learned.learning.max.max(1) {
            self.learned.evict_oldest();
        }
    }

    /// Re-resolves the names that are due. Returns whether any name's addresses changed.
    /// Failures are reported on stderr and keep the name's addresses.
    ///
    /// # Panics
    /// Never: every name it looks up is one it holds.
    pub async fn refresh(&mut self) -> bool {
        let now = Instant::now();
        let due: Vec<String> = self
            .names
            .iter()
            .filter(|(_, s)| s.refresh_at.is_some_and(|t| t <= now))
            .map(|(n, _)| n.clone())
            .collect();
        let mut changed = self.expire(now);
        for name in due {
            let result = self.lookup(&name).await;
            let state = self.names.get_mut(&name).expect("known name");
            match result {
                Ok((addrs, until)) => {
                    let before: BTreeSet<IpAddr> =
                        state.latest.union(&state.previous).copied().collect();
                    state.previous = std::mem::replace(&mut state.latest, addrs);
                    let after: BTreeSet<IpAddr> =
                        state.latest.union(&state.previous).copied().collect();
                    changed |= before != after;
                    state.refresh_at = Some(until);
                }
                Err(e) => {
                    tracing::warn!("{:#}; keeping its addresses", anyhow::Error::from(e));
                    state.refresh_at = Some(now + MIN_REFRESH.max(Duration::from_secs(30)));
                }
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_subdomains_not_the_parent() {
        assert!(covers("*.example.com", "a.example.com"));
        assert!(covers("*.example.com", "A.b.Example.COM."));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("*.example.com", "badexample.com"));
        assert!(covers("example.com", "EXAMPLE.com."));
        assert!(!covers("example.com", "a.example.com"));
    }

    fn names(of: &[&str]) -> Names {
        let mut names = Names::new();
        for n in of {
            names.names.insert((*n).to_owned(), NameState::default());
        }
        names
    }

    #[test]
    fn learns_through_cname_chains_and_evicts_the_oldest() {
        let mut n = names(&["*.example.com", "other.org"]);
        n.set_learning(Learning { grace: Duration::ZERO, max: 2 });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let c: IpAddr = "2001:db8::3".parse().unwrap();
        let chain = ["www.example.com.".to_owned(), "cdn.net.".to_owned()];
        assert!(n.learn(&chain, &[(a, 60)]));
        assert!(!n.learn(&chain, &[(a, 60)]), "known already");
        assert!(!n.learn(&["example.com".to_owned()], &[(b, 60)]), "the parent is not covered");
        assert!(n.learn(&["x.cdn.net".to_owned(), "Other.ORG".to_owned()], &[(b, 60), (c, 60)]));
        assert_eq!(n.learned_count(), 2);
        assert_eq!(n.evicted(), 1);
        assert_eq!(n.addrs("*.example.com").count(), 0, "the oldest went first");
        assert_eq!(n.addrs("other.org").collect::<Vec<_>>(), vec![b, c]);
        assert!(n.expire(Instant::now() + Duration::from_secs(61)));
        assert_eq!(n.learned_count(), 0);
    }

    #[test]
    fn kept_addresses_are_learned_again_until_their_time() {
        let mut n = names(&["*.example.com"]);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(n.learn(&["www.example.com".to_owned()], &[(a, 60)]));
        let mut kept = n.kept();
        assert_eq!(kept.len(), 1);
        kept.push(KeptAddr {
            name: "*.example.com".into(),
            addr: "192.0.2.2".parse().unwrap(),
            until: 1,
        });
        let mut again = names(&["*.example.com"]);
        again.restore(&kept);
        assert_eq!(
            again.addrs("*.example.com").collect::<Vec<_>>(),
            vec![a],
            "the expired one is not"
        );
        let until = again.next_refresh().expect("an expiry");
        assert!(until > Instant::now() + Duration::from_secs(55), "keeps its time");
    }
}
