//! `blocker explain`: why a destination gets its verdict ([`crate::explain`]), from a running
//! or pinned instance's tables as the kernel holds them and its record of the rules in force,
//! or from rule flags or a policy file, before they are deployed. The JSON form is described by
//! docs/schemas/explain.schema.json.
use std::net::{IpAddr, SocketAddr};

use anyhow::bail;
use cgroup_connect_common::Proto;
use serde::Serialize;

use crate::{
    cli::{run::RuleArgs, runtime::block_on},
    explain::{
        Candidate, ExplainError, Explanation, Query, Reason, explain as explain_query, proto_name,
    },
    loader::{Instance, TablesInForce},
    pins::{self, InstancePaths},
    policy::Policy,
    record::{self, Record, Recorded},
    resolve::Names,
    rules::{Action, Nat64Prefix},
    state::Lock,
    table,
};

/// `--proto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtoArg {
    Tcp,
    Udp,
}

/// Arguments of `blocker explain`.
#[derive(Debug, clap::Args)]
#[command(
    override_usage = "blocker explain [NAME] DEST[:PORT] [--proto tcp|udp] [--json]\n       \
                  blocker explain (--policy FILE | --block RULE | --allow RULE ...) DEST[:PORT]"
)]
pub struct ExplainArgs {
    /// The instance, then the destination (see the help).
    #[arg(
        value_name = "NAME|DEST",
        help = "The instance (default: default, as run --name), then the destination: an IPv4 or \
                IPv6 address, with a port as 192.0.2.1:443 or [2001:db8::1]:443 (without one: a \
                port no rule for the address names). With rule flags, only the destination"
    )]
    #[arg(num_args = 1..=2, required = true)]
    pub operands: Vec<String>,
    /// The protocol of the call
    #[arg(long, value_enum, default_value = "tcp")]
    pub proto: ProtoArg,
    /// JSON instead of text (described by docs/schemas/explain.schema.json)
    #[arg(long)]
    pub json: bool,
    /// Explain by these rules instead of an instance's (no root needed)
    #[command(flatten)]
    pub rules: RuleArgs,
}

/// The command line does not say what to explain.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error(
        "{}: give NAME DEST, or only DEST with --policy or rule flags (which explain without an instance)",
        .0.join(" ")
    )]
    Operands(Vec<String>),
    #[error(
        "{text:?} is not a destination: write an IP address, with a port as 192.0.2.1:443 or [2001:db8::1]:443"
    )]
    Destination { text: String },
}

/// The destination of `text`: an address, with or without a port.
fn destination(text: &str) -> Result<(IpAddr, Option<u16>), UsageError> {
    let bad = || UsageError::Destination { text: text.to_owned() };
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Ok((addr, None));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok((addr.ip(), Some(addr.port())));
    }
    let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).ok_or_else(bad)?;
    bare.parse::<std::net::Ipv6Addr>().map(|a| (IpAddr::V6(a), None)).map_err(|_| bad())
}

#[derive(Serialize)]
struct Explained {
    verdict: &'static str,
    /// The instance is in audit mode: a block is reported, not enforced.
    audit: bool,
    instance: Option<String>,
    destination: Destination,
    judged: Judged,
    default: &'static str,
    decided_by: Option<ShownRule>,
    others: Vec<ShownOther>,
}

#[derive(Serialize)]
struct Destination {
    address: IpAddr,
    port: Option<u16>,
    protocol: &'static str,
}

#[derive(Serialize)]
struct Judged {
    address: IpAddr,
    port: u16,
}

#[derive(Serialize)]
struct ShownRule {
    id: usize,
    action: Action,
    dst: String,
    rule: String,
    origin: String,
    /// For a hostname: its address that holds the destination.
    address: Option<IpAddr>,
    /// The prefix the tables hold for it.
    prefix: String,
}

#[derive(Serialize)]
struct ShownOther {
    #[serde(flatten)]
    rule: ShownRule,
    reason: Reason,
    why: String,
}

fn shown(c: &Candidate) -> ShownRule {
    ShownRule {
        id: c.rule.id,
        action: c.rule.action,
        dst: c.rule.rule.clone(),
        rule: format!("{} {}", c.rule.action, c.rule.rule),
        origin: c.rule.origin.clone(),
        address: c.address,
        prefix: c.net.to_string(),
    }
}

/// Why `other` did not decide, in words.
fn why(other: &Candidate, reason: Reason, e: &Explanation) -> String {
    let by = e.decided_by.as_ref().map_or(0, |d| d.rule.id);
    match reason {
        Reason::OtherPort => {
            let p = other.ports.map(|p| {
                if p.lo == p.hi {
                    format!("port {}", p.lo)
                } else {
                    format!("ports {}-{}", p.lo, p.hi)
                }
            });
            format!("not this port: it names {}", p.unwrap_or_default())
        }
        Reason::OtherProtocol => {
            format!("not this protocol: it names {}", proto_name(other.proto))
        }
        Reason::LongerPrefix => format!(
            "lost: rule #{by}'s prefix is longer (/{} over /{})",
            e.decided_by.as_ref().map_or(0, |d| d.rank.prefix_len),
            other.rank.prefix_len
        ),
        Reason::Port => format!("lost: same prefix length, rule #{by} names a port"),
        Reason::Protocol => format!("lost: same prefix length, rule #{by} names a protocol"),
        Reason::BlockOverAllow => {
            format!("lost: same rank, rule #{by} blocks, and block beats allow")
        }
        Reason::Tie => {
            format!("tied with rule #{by} (same rank and action): the table keeps that one")
        }
    }
}

/// Explains a destination.
///
/// # Errors
/// A usage error (exit 2: no such instance, a bad destination, rule or policy file), missing
/// privileges for an instance (3), or tables and record that disagree (1).
pub fn explain(args: &ExplainArgs) -> anyhow::Result<()> {
    let offline = !args.rules.sources().is_empty()
        || args.rules.default.is_some()
        || !args.rules.nat64.is_empty();
    let (name, dest) = match (offline, args.operands.as_slice()) {
        (true, [dest]) => (None, dest),
        (false, [dest]) => (Some(pins::DEFAULT_NAME.to_owned()), dest),
        (false, [name, dest]) => (Some(name.clone()), dest),
        _ => bail!(UsageError::Operands(args.operands.clone())),
    };
    let (addr, port) = destination(dest)?;
    let proto = match args.proto {
        ProtoArg::Tcp => Proto::Tcp,
        ProtoArg::Udp => Proto::Udp,
    };
    let query = Query { addr, port, proto };
    let (explained, audit) = match &name {
        Some(name) => {
            let view = InstanceView::open(name)?;
            (view.explain(query)?, view.audit())
        }
        None => (from_flags(&args.rules, query)?, false),
    };
    let shown = Explained {
        verdict: if explained.block { "block" } else { "allow" },
        audit,
        instance: name,
        destination: Destination { address: addr, port, protocol: proto_name(proto) },
        judged: Judged { address: explained.judged, port: explained.port },
        default: explained.default.default_word(),
        decided_by: explained.decided_by.as_ref().map(shown),
        others: explained
            .others
            .iter()
            .map(|o| ShownOther {
                rule: shown(&o.candidate),
                reason: o.reason,
                why: why(&o.candidate, o.reason, &explained),
            })
            .collect(),
    };
    let out = if args.json { serde_json::to_string_pretty(&shown)? + "\n" } else { text(&shown) };
    std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes())?;
    Ok(())
}

/// The text form: the verdict line first.
fn text(e: &Explained) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let dest = match (e.destination.address, e.destination.port) {
        (a @ IpAddr::V6(_), Some(p)) => format!("[{a}]:{p}"),
        (a, Some(p)) => format!("{a}:{p}"),
        (a, None) => a.to_string(),
    };
    let audit =
        if e.audit && e.verdict == "block" { " (audit mode: reported, let through)" } else { "" };
    let by = e
        .instance
        .as_ref()
        .map_or_else(|| "by the given rules".to_owned(), |n| format!("by instance {n}"));
    let _ = writeln!(out, "{} {} {dest}{audit}  ({by})", e.verdict, e.destination.protocol);
    let unnamed = if e.destination.port.is_none() {
        " (no port given: one no rule for it names)"
    } else {
        ""
    };
    if e.judged.address != e.destination.address || e.destination.port.is_none() {
        let _ = writeln!(out, "  judged as {} port {}{unnamed}", e.judged.address, e.judged.port);
    }
    if let Some(r) = &e.decided_by {
        let _ = writeln!(out, "  decided by rule #{} {}  ({})", r.id, r.rule, origin(r));
    } else {
        let none = if e.others.is_empty() {
            "no rule matches"
        } else {
            "no rule matches this port and protocol"
        };
        let _ = writeln!(out, "  decided by the default ({}): {none}", e.default);
    }
    if !e.others.is_empty() {
        let _ = writeln!(out, "  other rules for this address:");
    }
    for o in &e.others {
        let r = &o.rule;
        let _ = writeln!(out, "    rule #{} {}  ({}): {}", r.id, r.rule, origin(r), o.why);
    }
    out
}

/// Where a rule came from, and for a hostname the address that matched.
fn origin(r: &ShownRule) -> String {
    match r.address {
        Some(a) => format!("{}, address {a}", r.origin),
        None => r.origin.clone(),
    }
}

/// A running or pinned instance's tables in force, mapped from the kernel, and its record of
/// the rules in force, read together under its lock (no change swaps either meanwhile).
pub struct InstanceView {
    name: String,
    tables: TablesInForce,
    recorded: Recorded,
    nat64: Vec<Nat64Prefix>,
}

impl InstanceView {
    /// Reads instance `name`'s tables and record.
    ///
    /// # Errors
    /// Missing privileges, no such instance, or maps or a record that do not read.
    pub fn open(name: &str) -> anyhow::Result<Self> {
        crate::privileges::check()?;
        let paths = InstancePaths::new(name)?;
        let state = crate::instance::load(&paths)?;
        let lock = Lock::acquire(&paths)?;
        let tables = Instance::open(&paths)?.tables_in_force()?;
        let recorded = record::read(&paths)?;
        drop(lock);
        Ok(Self { name: name.to_owned(), tables, recorded, nat64: state.nat64 })
    }

    /// Explains `query` by these tables and record.
    ///
    /// # Errors
    /// [`crate::explain::ExplainError`].
    pub fn explain(&self, query: Query) -> Result<Explanation, ExplainError> {
        explain_query(&self.name, &self.tables.view(), &self.recorded, &self.nat64, query)
    }

    /// Whether the instance is in audit mode (a block is reported, not enforced).
    #[must_use]
    pub fn audit(&self) -> bool {
        self.tables.audit
    }
}

/// From rule flags or policy files, compiled as `run` would (hostnames resolved now).
fn from_flags(rules: &RuleArgs, query: Query) -> anyhow::Result<Explanation> {
    let sources = rules.sources();
    let policy = Policy::load(&sources)?;
    let names = block_on(async { Ok(Names::resolve(policy.names()).await?) })?;
    let addrs_of = |n: &str| names.addrs(n).collect::<Vec<_>>();
    let mut tables = table::compile(policy.default, policy.table_rules(addrs_of))?;
    tables.nat64.clone_from(&policy.nat64);
    let recorded = Record::of(&policy, addrs_of).recorded();
    let name =
        sources.policy.as_ref().map_or_else(|| "(flags)".to_owned(), |p| p.display().to_string());
    Ok(explain_query(&name, &tables.view(), &recorded, &policy.nat64, query)?)
}
