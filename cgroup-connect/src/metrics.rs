//! The metrics endpoint of `blocker run --metrics ADDR`: decisions by verdict, hits of the
//! busiest rules, ring-buffer losses, rule and prefix counts, table sizes, reloads and build
//! info, read from the instance's maps and state at each scrape and served at `/metrics`.
//!
//! One set of families ([`families`]) is written in two formats, chosen by the scraper's
//! `Accept` header ([`Format::negotiate`]): `OpenMetrics` text (by prometheus-client) and the
//! Prometheus text format 0.0.4 (by [`prometheus_text`]: prometheus-client writes only
//! `OpenMetrics`, whose `info` type, `# UNIT` lines and `# EOF` that format does not have).
use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use cgroup_connect_common::{CHUNK_RECORDS, Chunk, V4Record, V6Record};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family as LabeledFamily, gauge::Gauge, info::Info},
    registry::{Metric, Registry, Unit},
};

use crate::{
    instance,
    loader::{Instance, Totals},
    pins::InstancePaths,
    quote::Quoted,
    state::{Counts, Reloads},
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
    /// The instance name: the `instance` label of every sample.
    pub instance: String,
    pub totals: Totals,
    /// (rule text, hits), busiest first.
    pub top_rules: Vec<(String, u64)>,
    pub counts: Counts,
    pub reloads: Reloads,
    /// Size of the IPv4 and IPv6 tables in force, in chunks.
    pub table_chunks: (u32, u32),
    /// The DNS forwarder's learned addresses, with one (`--dns-port`).
    pub dns: Option<DnsCounts>,
}

/// The DNS forwarder's learned addresses, as the serving loop last left them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DnsCounts {
    /// Addresses learned from answers and in force now.
    pub learned: u64,
    /// Learned addresses evicted (the oldest first) to stay within `--dns-max-learned`.
    pub evicted: u64,
    /// New addresses put in force through the fast path (the `dns_learned` map) before their
    /// answer was passed on, since start.
    pub fast: u64,
}

/// [`DnsCounts`] shared between the serving loop, which sets them, and the scrapes.
#[derive(Debug, Default)]
pub struct SharedDnsCounts {
    learned: AtomicU64,
    evicted: AtomicU64,
    fast: AtomicU64,
}

impl SharedDnsCounts {
    /// Sets both counts.
    pub fn set(&self, counts: DnsCounts) {
        self.learned.store(counts.learned, Ordering::Relaxed);
        self.evicted.store(counts.evicted, Ordering::Relaxed);
        self.fast.store(counts.fast, Ordering::Relaxed);
    }

    /// The counts last set.
    #[must_use]
    pub fn get(&self) -> DnsCounts {
        DnsCounts {
            learned: self.learned.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            fast: self.fast.load(Ordering::Relaxed),
        }
    }
}

impl Snapshot {
    /// Reads the instance's counters now; what cannot be read shows as zero (a scrape never
    /// fails).
    pub fn read(paths: &InstancePaths, view: &mut PolicyView) -> Self {
        let instance_name = paths.name.clone();
        let Ok(instance) = Instance::open(paths) else {
            return Self { instance: instance_name, ..Self::default() };
        };
        let totals = instance.totals().unwrap_or_default();
        let top_rules = view
            .busiest_rules(&instance, TOP_RULES)
            .unwrap_or_default()
            .into_iter()
            .map(|(_, text, hits)| (text, hits))
            .collect();
        let state = instance::load(paths).ok();
        Self {
            instance: instance_name,
            totals,
            top_rules,
            counts: state.as_ref().map(|s| s.counts).unwrap_or_default(),
            reloads: state.map(|s| s.reloads).unwrap_or_default(),
            table_chunks: instance.table_chunks().unwrap_or_default(),
            dns: None,
        }
    }
}

/// The two text formats `/metrics` serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `OpenMetrics` 1.0.0 text.
    OpenMetrics,
    /// The Prometheus text format 0.0.4.
    Prometheus,
}

impl Format {
    /// The format an `Accept` header asks for: `OpenMetrics` when it names
    /// `application/openmetrics-text` with a quality at least that of `text/plain` (Prometheus
    /// asks so), else Prometheus text (also for no header, `*/*`, or only other types).
    #[must_use]
    pub fn negotiate(accept: Option<&str>) -> Self {
        let (mut openmetrics, mut text) = (0.0_f32, 0.0_f32);
        for range in accept.unwrap_or_default().split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let mut q = 1.0_f32;
            let mut version = None;
            for param in parts {
                let (key, value) = param.split_once('=').unwrap_or((param, ""));
                match key.trim().to_ascii_lowercase().as_str() {
                    "q" => q = value.trim().parse().unwrap_or(0.0),
                    "version" => version = Some(value.trim().to_owned()),
                    _ => {}
                }
            }
            match media.as_str() {
                // 0.0.1 is the draft `OpenMetrics` that Prometheus still names: the same text.
                "application/openmetrics-text"
                    if version.as_deref().is_none_or(|v| v == "1.0.0" || v == "0.0.1") =>
                {
                    openmetrics = openmetrics.max(q);
                }
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text { Self::OpenMetrics } else { Self::Prometheus }
    }

    /// Its `Content-Type`.
    #[must_use]
    pub const fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// What a family counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    /// Constant labels, value 1 (`OpenMetrics` `info`; a gauge in Prometheus text).
    Info,
}

/// One metric family, before encoding.
struct Family {
    /// The name after the `cgroup_connect_` prefix, without the unit and `_total`/`_info`.
    name: &'static str,
    help: &'static str,
    kind: Kind,
    unit: Option<Unit>,
    /// (labels besides `instance`, value).
    samples: Vec<(Vec<(&'static str, String)>, u64)>,
}

impl Family {
    fn one(name: &'static str, help: &'static str, kind: Kind, value: u64) -> Self {
        Self { name, help, kind, unit: None, samples: vec![(vec![], value)] }
    }

    fn by(
        name: &'static str,
        help: &'static str,
        kind: Kind,
        label: &'static str,
        values: impl IntoIterator<Item = (String, u64)>,
    ) -> Self {
        let samples = values.into_iter().map(|(l, v)| (vec![(label, l)], v)).collect();
        Self { name, help, kind, unit: None, samples }
    }

    fn unit(mut self, unit: Unit) -> Self {
        self.unit = Some(unit);
        self
    }
}

/// Metrics name prefix.
const PREFIX: &str = "cgroup_connect";

/// Every family of a snapshot.
fn families(s: &Snapshot) -> Vec<Family> {
    use Kind::{Counter, Gauge, Info};
    let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    let t = &s.totals;
    let by_family = |v4: u64, v6: u64| [("ipv4".to_owned(), v4), ("ipv6".to_owned(), v6)];
    let (c4, c6) = (u64::from(s.table_chunks.0), u64::from(s.table_chunks.1));
    let records = u64::from(CHUNK_RECORDS);
    let (b4, b6) = (n(size_of::<Chunk<V4Record>>()), n(size_of::<Chunk<V6Record>>()));
    let mut families = vec![
        Family::by(
            "decisions",
            "Decisions by verdict",
            Counter,
            "verdict",
            [
                ("allowed", t.allowed),
                ("blocked", t.blocked),
                ("audit_would_block", t.audit_would_block),
                ("failed_closed", t.failed_closed),
            ]
            .map(|(v, n)| (v.to_owned(), n)),
        ),
        Family::by(
            "rule_hits",
            "Decisions made by each of the busiest rules",
            Counter,
            "rule",
            s.top_rules.iter().cloned(),
        ),
        Family::one(
            "events_lost",
            "Events dropped because the ring buffer was full",
            Counter,
            t.events_lost,
        ),
        Family::one("rules", "Rules in force, as written", Gauge, n(s.counts.rules)),
        Family::by(
            "prefixes",
            "Prefixes in the tables (a hostname counts once per address)",
            Gauge,
            "family",
            by_family(n(s.counts.ipv4), n(s.counts.ipv6)),
        ),
        Family::by(
            "table_records",
            "Records the table in force holds (its size class)",
            Gauge,
            "family",
            by_family(c4 * records, c6 * records),
        ),
        Family::by(
            "table",
            "Kernel memory of the table in force",
            Gauge,
            "family",
            by_family(c4 * b4, c6 * b6),
        )
        .unit(Unit::Bytes),
        Family::one(
            "reloads",
            "Reloads of the policy sources that took effect (SIGHUP, blocker reload)",
            Counter,
            s.reloads.reloads,
        ),
        Family::one(
            "reload_failures",
            "Reloads and hostname refreshes that failed (the old policy stayed in force)",
            Counter,
            s.reloads.failed,
        ),
        Family::one(
            "hostname_refreshes",
            "Hostname re-resolutions that changed the tables",
            Counter,
            s.reloads.hostname_refreshes,
        ),
        Family::one(
            "last_reload_timestamp",
            "When the policy was last put in force (start, reload, hostname refresh)",
            Gauge,
            s.reloads.last,
        )
        .unit(Unit::Seconds),
        Family {
            name: "build",
            help: "Build information",
            kind: Info,
            unit: None,
            samples: vec![(vec![("version", env!("CARGO_PKG_VERSION").to_owned())], 1)],
        },
    ];
    families.extend(s.dns.map_or_else(Vec::new, dns_families));
    families
}

/// The DNS forwarder's families.
fn dns_families(dns: DnsCounts) -> Vec<Family> {
    vec![
        Family::one(
            "dns_learned",
            "Addresses learned from the DNS forwarder's answers and in force",
            Kind::Gauge,
            dns.learned,
        ),
        Family::one(
            "dns_evictions",
            "Learned addresses evicted, the oldest first, to stay within --dns-max-learned",
            Kind::Counter,
            dns.evicted,
        ),
        Family::one(
            "dns_fast_path_writes",
            "New addresses the DNS forwarder put in force through its map of learned addresses, \
             before passing the answer on (no table swap)",
            Kind::Counter,
            dns.fast,
        ),
    ]
}

/// The snapshot in `format`.
#[must_use]
pub fn render(s: &Snapshot, format: Format) -> String {
    let families = families(s);
    match format {
        Format::OpenMetrics => openmetrics_text(&s.instance, &families),
        Format::Prometheus => prometheus_text(&s.instance, &families),
    }
}

/// `OpenMetrics` text, by prometheus-client.
fn openmetrics_text(instance: &str, families: &[Family]) -> String {
    let labels = |sample: &[(&'static str, String)]| -> Vec<(String, String)> {
        sample.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
    };
    let mut registry = Registry::with_prefix_and_labels(
        PREFIX,
        [("instance".into(), instance.to_owned().into())].into_iter(),
    );
    for f in families {
        match f.kind {
            Kind::Counter => {
                let family = LabeledFamily::<Vec<(String, String)>, Counter>::default();
                for (l, v) in &f.samples {
                    family.get_or_create(&labels(l)).inc_by(*v);
                }
                register(&mut registry, f, family);
            }
            Kind::Gauge => {
                let family = LabeledFamily::<Vec<(String, String)>, Gauge>::default();
                for (l, v) in &f.samples {
                    family.get_or_create(&labels(l)).set(i64::try_from(*v).unwrap_or(i64::MAX));
                }
                register(&mut registry, f, family);
            }
            Kind::Info => {
                let info = f.samples.first().map(|(l, _)| labels(l)).unwrap_or_default();
                register(&mut registry, f, Info::new(info));
            }
        }
    }
    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

fn register(registry: &mut Registry, f: &Family, metric: impl Metric) {
    match &f.unit {
        Some(unit) => registry.register_with_unit(f.name, f.help, unit.clone(), metric),
        None => registry.register(f.name, f.help, metric),
    }
}

/// The Prometheus text format 0.0.4: a counter's family is named with its `_total`, an info
/// family is a gauge of value 1, and there are no `# UNIT` and `# EOF` lines.
fn prometheus_text(instance: &str, families: &[Family]) -> String {
    let mut out = String::new();
    for f in families {
        let mut name = format!("{PREFIX}_{}", f.name);
        if let Some(unit) = &f.unit {
            name = format!("{name}_{}", unit.as_str());
        }
        let kind = match f.kind {
            Kind::Counter => {
                name.push_str("_total");
                "counter"
            }
            Kind::Gauge => "gauge",
            Kind::Info => {
                name.push_str("_info");
                "gauge"
            }
        };
        let help = f.help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} {kind}");
        for (labels, value) in &f.samples {
            let _ = write!(out, "{name}{{instance=\"{}\"", label_value(instance));
            for (key, v) in labels {
                let _ = write!(out, ",{key}=\"{}\"", label_value(v));
            }
            let _ = writeln!(out, "}} {value}");
        }
    }
    out
}

/// A label value as both text formats escape it.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Binds `addr` (port 0 picks one), for [`serve`].
///
/// # Errors
/// When `addr` cannot be bound.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Returns the bound address of `listener` and the server, which serves `/metrics` until
/// dropped, in the format the scraper's `Accept` header asks for; `snapshot` is called per
/// scrape.
///
/// # Errors
/// When the bound address cannot be read.
pub fn serve(
    listener: tokio::net::TcpListener,
    snapshot: Arc<dyn Fn() -> Snapshot + Send + Sync>,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    use axum::{
        Router,
        http::{HeaderMap, header},
        routing::get,
    };
    let bound = listener.local_addr()?;
    let app = Router::new().route(
        "/metrics",
        get(move |headers: HeaderMap| {
            let snapshot = Arc::clone(&snapshot);
            let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
            let format = Format::negotiate(accept);
            async move {
                let body = tokio::task::spawn_blocking(move || render(&snapshot(), format))
                    .await
                    .unwrap_or_default();
                ([(header::CONTENT_TYPE, format.content_type()), (header::VARY, "Accept")], body)
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

    fn snapshot() -> Snapshot {
        Snapshot {
            instance: "web".into(),
            totals: Totals {
                allowed: 5,
                blocked: 3,
                audit_would_block: 0,
                events_lost: 2,
                failed_closed: 0,
            },
            top_rules: vec![("block 10.0.0.0/8 \"x\"".into(), 3)],
            counts: Counts { rules: 1, ipv4: 1, ipv6: 0 },
            reloads: Reloads { reloads: 4, hostname_refreshes: 1, failed: 2, last: 1_700_000_000 },
            table_chunks: (2, 8),
            dns: Some(DnsCounts { learned: 7, evicted: 3, fast: 2 }),
        }
    }

    #[test]
    fn renders_every_family_in_both_formats() {
        let chunk = size_of::<Chunk<V4Record>>();
        let om = render(&snapshot(), Format::OpenMetrics);
        let prom = render(&snapshot(), Format::Prometheus);
        for line in [
            "cgroup_connect_decisions_total{instance=\"web\",verdict=\"blocked\"} 3",
            "cgroup_connect_rule_hits_total{instance=\"web\",rule=\"block 10.0.0.0/8 \\\"x\\\"\"} 3",
            "cgroup_connect_events_lost_total{instance=\"web\"} 2",
            "cgroup_connect_rules{instance=\"web\"} 1",
            "cgroup_connect_prefixes{instance=\"web\",family=\"ipv4\"} 1",
            &format!(
                "cgroup_connect_table_records{{instance=\"web\",family=\"ipv6\"}} {}",
                8 * CHUNK_RECORDS
            ),
            &format!(
                "cgroup_connect_table_bytes{{instance=\"web\",family=\"ipv4\"}} {}",
                2 * chunk
            ),
            "cgroup_connect_reloads_total{instance=\"web\"} 4",
            "cgroup_connect_hostname_refreshes_total{instance=\"web\"} 1",
            "cgroup_connect_reload_failures_total{instance=\"web\"} 2",
            "cgroup_connect_last_reload_timestamp_seconds{instance=\"web\"} 1700000000",
            "cgroup_connect_dns_learned{instance=\"web\"} 7",
            "cgroup_connect_dns_evictions_total{instance=\"web\"} 3",
            "cgroup_connect_dns_fast_path_writes_total{instance=\"web\"} 2",
        ] {
            assert!(om.contains(line), "no {line} in\n{om}");
            assert!(prom.contains(line), "no {line} in\n{prom}");
        }
        assert!(om.contains("# TYPE cgroup_connect_decisions counter\n"), "{om}");
        assert!(om.contains("# TYPE cgroup_connect_build info\n"), "{om}");
        assert!(om.contains("# UNIT cgroup_connect_table_bytes bytes\n"), "{om}");
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(prom.contains("# TYPE cgroup_connect_decisions_total counter\n"), "{prom}");
        assert!(prom.contains("# TYPE cgroup_connect_build_info gauge\n"), "{prom}");
        assert!(prom.contains("cgroup_connect_build_info{instance=\"web\",version=\""), "{prom}");
        assert!(!prom.contains("# EOF") && !prom.contains("# UNIT") && !prom.contains(" info\n"));
        // The same help text in both.
        assert!(om.contains("# HELP cgroup_connect_rules Rules in force, as written.\n"), "{om}");
        assert!(prom.contains("# HELP cgroup_connect_rules Rules in force, as written.\n"));
    }

    #[test]
    fn negotiates_on_accept() {
        use Format::{OpenMetrics, Prometheus};
        for (accept, want) in [
            (None, Prometheus),
            (Some("*/*"), Prometheus),
            (Some("text/plain"), Prometheus),
            (Some("application/json"), Prometheus),
            (Some("application/openmetrics-text"), OpenMetrics),
            (Some("application/openmetrics-text; version=1.0.0; charset=utf-8"), OpenMetrics),
            // What Prometheus 2.x and 3.x send.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                OpenMetrics,
            ),
            (
                Some("text/plain;version=0.0.4;q=0.9, application/openmetrics-text;q=0.5"),
                Prometheus,
            ),
            (Some("application/openmetrics-text;q=0"), Prometheus),
            (Some("application/openmetrics-text;version=2.0.0"), Prometheus),
            (Some("Application/OpenMetrics-Text ; Q=0.8, */*;q=0.8"), OpenMetrics),
        ] {
            assert_eq!(Format::negotiate(accept), want, "{accept:?}");
        }
    }
}
