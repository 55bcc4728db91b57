//! The Prometheus endpoint of `blocker run --metrics ADDR`: decisions by verdict, hits of the
//! busiest rules, ring-buffer losses, rule counts and build info, read from the instance's
//! maps at each scrape and served as text at `/metrics`.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};

use crate::{
    instance,
    loader::{Instance, Totals},
    pins::InstancePaths,
    quote::Quoted,
    state::Counts,
    view::PolicyView,
};

/// Rules shown by hits.
pub const TOP_RULES: usize = 20;

/// A bad `--metrics` address.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid --metrics address {}: use PORT, :PORT or HOST:PORT (e.g. 127.0.0.1:9100)",
    Quoted(value)
)]
pub struct AddrError {
    pub value: String,
}

/// Parses `PORT`, `:PORT` (both on loopback) or `HOST:PORT`.
///
/// # Errors
/// [`AddrError`] naming the value.
pub fn parse_addr(value: &str) -> Result<SocketAddr, AddrError> {
    let port_only = value.strip_prefix(':').unwrap_or(value);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    value.parse().map_err(|_| AddrError { value: value.to_owned() })
}

/// A warning when `bound` is not a loopback address: then anyone who can reach this host reads
/// the rule texts and counts, since `/metrics` asks for no credentials.
#[must_use]
pub fn exposure_warning(bound: SocketAddr) -> Option<String> {
    (!bound.ip().to_canonical().is_loopback()).then(|| {
        format!(
            "metrics on {bound} are reachable from the network: anyone who can connect reads \
             the rules and counts; use 127.0.0.1:PORT (or PORT) to serve this host only"
        )
    })
}

/// What one scrape shows.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub totals: Totals,
    /// (rule text, hits), busiest first.
    pub top_rules: Vec<(String, u64)>,
    pub counts: Counts,
}

impl Snapshot {
    /// Reads the instance's counters now; what cannot be read shows as zero (a scrape never
    /// fails).
    pub fn read(paths: &InstancePaths, view: &mut PolicyView) -> Self {
        let Ok(instance) = Instance::open(paths) else { return Self::default() };
        let totals = instance.totals().unwrap_or_default();
        let top_rules = view
            .busiest_rules(&instance, TOP_RULES)
            .unwrap_or_default()
            .into_iter()
            .map(|(_, text, hits)| (text, hits))
            .collect();
        let counts = instance::load(paths).map(|s| s.counts).unwrap_or_default();
        Self { totals, top_rules, counts }
    }
}

/// The Prometheus text of a snapshot.
///
/// # Panics
/// Never: encoding into a `String` cannot fail.
#[must_use]
pub fn render(s: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("cgroup_connect");
    let decisions = Family::<Vec<(String, String)>, Counter>::default();
    for (verdict, n) in [
        ("allowed", s.totals.allowed),
        ("blocked", s.totals.blocked),
        ("audit_would_block", s.totals.audit_would_block),
        ("failed_closed", s.totals.failed_closed),
    ] {
        decisions.get_or_create(&vec![("verdict".to_owned(), verdict.to_owned())]).inc_by(n);
    }
    registry.register("decisions", "Decisions by verdict", decisions);
    let hits = Family::<Vec<(String, String)>, Counter>::default();
    for (rule, n) in &s.top_rules {
        hits.get_or_create(&vec![("rule".to_owned(), rule.clone())]).inc_by(*n);
    }
    registry.register("rule_hits", "Decisions made by each of the busiest rules", hits);
    let lost = Counter::<u64>::default();
    lost.inc_by(s.totals.events_lost);
    registry.register("events_lost", "Events dropped because the ring buffer was full", lost);
    let rules = Family::<Vec<(String, String)>, Gauge>::default();
    for (kind, n) in [
        ("rules", s.counts.rules),
        ("ipv4_prefixes", s.counts.ipv4),
        ("ipv6_prefixes", s.counts.ipv6),
    ] {
        rules
            .get_or_create(&vec![("kind".to_owned(), kind.to_owned())])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    registry.register("rules", "Rules in force", rules);
    registry.register(
        "build",
        "Build information",
        Info::new(vec![("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned())]),
    );
    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

/// Binds `addr` (port 0 picks one), for [`serve`].
///
/// # Errors
/// When `addr` cannot be bound.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Returns the bound address of `listener` and the server, which serves `/metrics` until
/// dropped; `snapshot` is called per scrape.
///
/// # Errors
/// When the bound address cannot be read.
pub fn serve(
    listener: tokio::net::TcpListener,
    snapshot: Arc<dyn Fn() -> Snapshot + Send + Sync>,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    use axum::{Router, http::header, routing::get};
    let bound = listener.local_addr()?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let snapshot = Arc::clone(&snapshot);
            async move {
                let body = tokio::task::spawn_blocking(move || render(&snapshot()))
                    .await
                    .unwrap_or_default();
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
            }
        }),
    );
    Ok((bound, async move { axum::serve(listener, app).await }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_default_to_loopback() {
        assert_eq!(parse_addr("9100").unwrap(), "127.0.0.1:9100".parse().unwrap());
        assert_eq!(parse_addr(":9100").unwrap(), "127.0.0.1:9100".parse().unwrap());
        assert_eq!(parse_addr("[::1]:9100").unwrap(), "[::1]:9100".parse().unwrap());
        assert_eq!(parse_addr("0.0.0.0:80").unwrap(), "0.0.0.0:80".parse().unwrap());
        assert!(parse_addr("localhost").unwrap_err().to_string().contains("localhost"));
    }

    #[test]
    fn warns_unless_on_loopback() {
        for quiet in ["127.0.0.1:9100", "127.1.2.3:9100", "[::1]:9100", "[::ffff:127.0.0.1]:80"] {
            assert_eq!(exposure_warning(quiet.parse().unwrap()), None, "{quiet}");
        }
        for open in ["0.0.0.0:9100", "[::]:9100", "192.0.2.1:9100", "[2001:db8::1]:80"] {
            let warning = exposure_warning(open.parse().unwrap()).expect(open);
            assert!(warning.contains(open) && warning.contains("reachable"), "{warning}");
        }
    }

    #[test]
    fn renders_every_family() {
        let s = Snapshot {
            totals: Totals {
                allowed: 5,
                blocked: 3,
                audit_would_block: 0,
                events_lost: 2,
                failed_closed: 0,
            },
            top_rules: vec![("block 10.0.0.0/8".into(), 3)],
            counts: Counts { rules: 1, ipv4: 1, ipv6: 0 },
        };
        let text = render(&s);
        for line in [
            "cgroup_connect_decisions_total{verdict=\"blocked\"} 3",
            "cgroup_connect_rule_hits_total{rule=\"block 10.0.0.0/8\"} 3",
            "cgroup_connect_events_lost_total 2",
            "cgroup_connect_rules{kind=\"ipv4_prefixes\"} 1",
            "cgroup_connect_build_info{version=",
        ] {
            assert!(text.contains(line), "no {line} in\n{text}");
        }
    }
}
