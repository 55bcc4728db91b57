//! Hostname rules: resolves their A and AAAA records (and /etc/hosts) at start, then again as
//! the records expire (at their TTL, at least every [`MAX_REFRESH`]).
//!
//! New addresses go in before stale ones come out: a name's addresses are those of its latest
//! answer plus those of the answer before, so a client that cached the previous answer is
//! still judged by the rule until the next refresh. A failed refresh keeps what the name had.
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

/// The hostnames of a policy and their addresses.
#[derive(Default)]
pub struct Names {
    resolver: Option<TokioResolver>,
    names: BTreeMap<String, NameState>,
}

impl Names {
    /// No names yet.
    #[must_use]
    pub fn new() -> Self {
        Self { resolver: None, names: BTreeMap::new() }
    }

    /// Makes the names exactly `wanted`: resolves the new ones, forgets the others.
    ///
    /// # Errors
    /// A [`ResolveError`] for the first new name that does not resolve; the names are then
    /// as they were.
    pub async fn sync(&mut self, wanted: &BTreeSet<String>) -> Result<(), ResolveError> {
        let new: Vec<String> =
            wanted.iter().filter(|n| !self.names.contains_key(*n)).cloned().collect();
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
            resolver: None,
            names: names.into_iter().map(|n| (n, NameState::default())).collect(),
        };
        if this.names.is_empty() {
            return Ok(this);
        }
        let mut builder = TokioResolver::builder_tokio().map_err(ResolveError::Config)?;
        builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        this.resolver = Some(builder.build().map_err(ResolveError::Config)?);
        let names: Vec<String> = this.names.keys().cloned().collect();
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

    /// The addresses `name` stands for now: its latest answer and the one before.
    pub fn addrs<'a>(&'a self, name: &str) -> impl Iterator<Item = IpAddr> + use<'a> {
        self.names.get(name).into_iter().flat_map(|s| s.latest.union(&s.previous).copied())
    }

    /// When the next name is due, if there are names.
    #[must_use]
    pub fn next_refresh(&self) -> Option<Instant> {
        self.names.values().filter_map(|s| s.refresh_at).min()
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
        let mut changed = false;
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
