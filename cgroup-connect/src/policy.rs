//! Where rules come from: command-line flags, list files (one rule a line) and TOML policy
//! files. Owns reading them and reporting errors by file, line and value. The result, a
//! [`Policy`], is what the tables are compiled from.
use std::{
    collections::{BTreeSet, HashSet},
    fmt, io,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use cgroup_connect_common::Proto;
use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::{
    quote::{Cut, Quoted, ShortPath},
    rules::{Action, Destination, Host, Nat64Prefix, Ports, Rule, RuleError},
    table::TableRule,
};

/// Where a rule came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag such as `--block`.
    Flag(&'static str),
    /// A line of a list or policy file (the path is shared by all the file's rules).
    Line { path: Arc<Path>, line: usize },
    /// Added with `blocker add`.
    Live,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flag(flag) => f.write_str(flag),
            Self::Line { path, line } => write!(f, "{}:{line}", path.display()),
            Self::Live => f.write_str("blocker add"),
        }
    }
}

/// A rule and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourcedRule {
    pub rule: Rule,
    pub origin: Origin,
}

/// A policy's rules, in the order read, numbered from 1: 32 bytes a rule ([`Packed`]: the
/// address, prefix length, ports, protocol, action, and where it came from as a source number
/// and a line), with hostnames and sources in side tables. A million-line list makes a
/// million rules, and they are alive while the tables compile: 80 bytes a [`SourcedRule`]
/// made most of the peak memory of a start. A [`SourcedRule`] is made when asked for.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    packed: Vec<Packed>,
    /// Hostnames, by the index a [`Packed`] of kind `NAME` holds.
    names: Vec<Box<str>>,
    /// Where rules came from (an origin but its line), by [`Packed::source`].
    sources: Vec<Source>,
}

/// One rule of [`Rules`].
#[derive(Clone, Copy, Debug)]
struct Packed {
    /// The address's bytes (IPv4 in the first 4), or for a hostname its index in
    /// [`Rules::names`] (little-endian, in the first 4).
    addr: [u8; 16],
    /// Its line in its source's file (0 for a flag or a live edit).
    line: u32,
    /// Its index in [`Rules::sources`].
    source: u32,
    /// The port range, `0..=65535` when the rule names none (the `PORTS` bit says which).
    lo: u16,
    hi: u16,
    /// The prefix length (0 for a hostname).
    len: u8,
    /// The kind (`V4`, `V6` or `NAME`), the protocol (`Proto as u8`, shifted by `PROTO`), the
    /// action (`BLOCK`) and whether ports are given (`PORTS`).
    flags: u8,
}

/// [`Packed::flags`]' fields.
mod packed {
    pub const KIND: u8 = 0b11;
    pub const V4: u8 = 0;
    pub const V6: u8 = 1;
    pub const NAME: u8 = 2;
    pub const PROTO: u8 = 2;
    pub const PROTO_MASK: u8 = 0b11 << PROTO;
    pub const BLOCK: u8 = 1 << 4;
    pub const PORTS: u8 = 1 << 5;
}

/// Where rules came from: an [`Origin`] but its line (files by their shared path).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    Flag(&'static str),
    File(Arc<Path>),
    Live,
}

impl Source {
    /// The source of `origin`, and its line (0 for a flag or a live edit).
    pub(crate) fn of(origin: &Origin) -> (Self, usize) {
        match origin {
            Origin::Flag(flag) => (Self::Flag(flag), 0),
            Origin::Line { path, line } => (Self::File(Arc::clone(path)), *line),
            Origin::Live => (Self::Live, 0),
        }
    }

    fn origin(&self, line: u32) -> Origin {
        match self {
            Self::Flag(flag) => Origin::Flag(flag),
            Self::File(path) => Origin::Line { path: Arc::clone(path), line: line as usize },
            Self::Live => Origin::Live,
        }
    }
}

/// A rule's destination host as [`Rules`] holds it, borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum HostRef<'a> {
    Net(IpNet),
    Name(&'a str),
}

impl Rules {
    /// How many rules.
    #[must_use]
    pub fn len(&self) -> usize {
        self.packed.len()
    }

    /// Whether there is none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.packed.is_empty()
    }

    /// Adds a rule at the end. A line past `u32::MAX` (a file of over 4 GB) is kept as
    /// `u32::MAX`.
    ///
    /// # Panics
    /// At 2^32 hostnames or sources (a policy holds far fewer rules).
    pub fn push(&mut self, rule: SourcedRule) {
        let SourcedRule { rule: Rule { action, dest }, origin } = rule;
        let (source, line) = Source::of(&origin);
        let source = self.sources.iter().rposition(|s| *s == source).unwrap_or_else(|| {
            self.sources.push(source);
            self.sources.len() - 1
        });
        let (kind, addr, len) = match dest.host {
            Host::Net(IpNet::V4(net)) => {
                let mut addr = [0; 16];
                addr[..4].copy_from_slice(&net.addr().octets());
                (packed::V4, addr, net.prefix_len())
            }
            Host::Net(IpNet::V6(net)) => (packed::V6, net.addr().octets(), net.prefix_len()),
            Host::Name(name) => {
                let mut addr = [0; 16];
                let index = u32::try_from(self.names.len()).expect("fewer names than 2^32");
                addr[..4].copy_from_slice(&index.to_le_bytes());
                self.names.push(name);
                (packed::NAME, addr, 0)
            }
        };
        let ports = dest.ports.unwrap_or(Ports { lo: 0, hi: u16::MAX });
        let flags = kind
            | ((dest.proto as u8) << packed::PROTO)
            | if action == Action::Block { packed::BLOCK } else { 0 }
            | if dest.ports.is_some() { packed::PORTS } else { 0 };
        self.packed.push(Packed {
            addr,
            line: u32::try_from(line).unwrap_or(u32::MAX),
            source: u32::try_from(source).expect("fewer sources than rules"),
            lo: ports.lo,
            hi: ports.hi,
            len,
            flags,
        });
    }

    /// The rule at `index` (from 0).
    #[must_use]
    pub fn get(&self, index: usize) -> Option<SourcedRule> {
        self.packed.get(index).map(|p| self.sourced(p))
    }

    /// Every rule, in order.
    #[must_use]
    pub fn iter(&self) -> impl ExactSizeIterator<Item = SourcedRule> + '_ {
        self.packed.iter().map(|p| self.sourced(p))
    }

    /// Keeps the rules `keep` says to, in order.
    pub fn retain(&mut self, mut keep: impl FnMut(&SourcedRule) -> bool) {
        let kept: Vec<bool> = self.iter().map(|r| keep(&r)).collect();
        let mut kept = kept.into_iter();
        self.packed.retain(|_| kept.next().unwrap_or(true));
    }

    fn truncate(&mut self, len: usize) {
        self.packed.truncate(len);
    }

    fn sourced(&self, p: &Packed) -> SourcedRule {
        let (action, host, ports, proto) = self.parts(p);
        let host = match host {
            HostRef::Net(net) => Host::Net(net),
            HostRef::Name(name) => Host::Name(name.into()),
        };
        SourcedRule {
            rule: Rule { action, dest: Destination { host, ports, proto } },
            origin: self.sources[p.source as usize].origin(p.line),
        }
    }

    /// A rule's action, host, ports and protocol, with no allocation.
    fn parts(&self, p: &Packed) -> (Action, HostRef<'_>, Option<Ports>, Proto) {
        let action = if p.flags & packed::BLOCK == 0 { Action::Allow } else { Action::Block };
        let host = match p.flags & packed::KIND {
            packed::V4 => {
                let octets: [u8; 4] = p.addr[..4].try_into().expect("4 bytes");
                HostRef::Net(IpNet::V4(
                    ipnet::Ipv4Net::new(octets.into(), p.len).expect("a pushed length"),
                ))
            }
            packed::V6 => HostRef::Net(IpNet::V6(
                ipnet::Ipv6Net::new(p.addr.into(), p.len).expect("a pushed length"),
            )),
            _ => {
                let index = u32::from_le_bytes(p.addr[..4].try_into().expect("4 bytes"));
                HostRef::Name(&self.names[index as usize])
            }
        };
        let ports = (p.flags & packed::PORTS != 0).then_some(Ports { lo: p.lo, hi: p.hi });
        let proto = match (p.flags & packed::PROTO_MASK) >> packed::PROTO {
            1 => Proto::Tcp,
            2 => Proto::Udp,
            _ => Proto::Any,
        };
        (action, host, ports, proto)
    }

    /// Drops every rule that repeats an earlier one (the same action and destination), so a
    /// rule given twice counts once, numbered where it first appears. The set of those seen
    /// holds their indices (4 bytes a rule), not the rules.
    fn dedup(&mut self) {
        use std::hash::BuildHasher as _;
        let hasher = std::hash::RandomState::new();
        let hash = |p: &Packed| hasher.hash_one(self.parts(p));
        let mut seen = hashbrown::HashTable::<u32>::with_capacity(self.packed.len());
        let mut first = Vec::with_capacity(self.packed.len());
        for (i, p) in (0u32..).zip(&self.packed) {
            let h = hash(p);
            let parts = self.parts(p);
            let new = seen.find(h, |&j| self.parts(&self.packed[j as usize]) == parts).is_none();
            if new {
                seen.insert_unique(h, i, |&j| hash(&self.packed[j as usize]));
            }
            first.push(new);
        }
        drop(seen);
        let mut first = first.into_iter();
        self.packed.retain(|_| first.next().unwrap_or(true));
    }
}

impl PartialEq for Rules {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Rules {}

impl FromIterator<SourcedRule> for Rules {
    fn from_iter<I: IntoIterator<Item = SourcedRule>>(iter: I) -> Self {
        let mut rules = Self::default();
        iter.into_iter().for_each(|r| rules.push(r));
        rules
    }
}

/// Everything that makes a policy, as given on the command line (kept in an instance's state).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sources {
    pub block: Vec<Destination>,
    pub allow: Vec<Destination>,
    pub block_lists: Vec<PathBuf>,
    pub allow_lists: Vec<PathBuf>,
    pub policy: Option<PathBuf>,
    /// `--default`; overrides the policy file's `default`.
    pub default: Option<Action>,
    /// `--nat64`: NAT64 prefixes besides the well-known one, added to the policy file's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nat64: Vec<Nat64Prefix>,
}

impl Sources {
    /// The same sources with relative paths made absolute, so a reload from anywhere reads
    /// the same files.
    #[must_use]
    pub fn absolute(mut self) -> Self {
        let abs = |p: &mut PathBuf| {
            if let Ok(a) = std::path::absolute(&*p) {
                *p = a;
            }
        };
        self.block_lists
            .iter_mut()
            .chain(self.allow_lists.iter_mut())
            .chain(self.policy.iter_mut())
            .for_each(abs);
        self
    }

    /// Whether no rule source was given at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.block.is_empty()
            && self.allow.is_empty()
            && self.block_lists.is_empty()
            && self.allow_lists.is_empty()
            && self.policy.is_none()
    }
}

/// A complete policy: the default, every rule, numbered from 1 in the order read, and the
/// NAT64 prefixes besides the well-known one (flags' first, each once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub default: Action,
    pub rules: Rules,
    pub nat64: Vec<Nat64Prefix>,
    /// The policy file's `allow_sockets`: socket kinds the packet checks let the cgroup make
    /// (names of `packet::socket_kind::ALL`), each once, in that order.
    pub allow_sockets: Vec<String>,
}

/// Why a policy could not be read. Each message names the file and line, or the flag.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {}", ShortPath(path))]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{origin}: {error}")]
    Rule { origin: Origin, error: RuleError },
    #[error(
        "{origin}: {} after the rule: a list line holds one rule, then optionally a count \
         or a comment (# or ;)",
        Quoted(rest)
    )]
    Trailing { origin: Origin, rest: String },
    /// The TOML parser's message, which may quote the document, is cut like a quoted value.
    #[error("{}:{line}: {}", path.display(), Cut(message))]
    Toml { path: PathBuf, line: usize, message: String },
    #[error(
        "{} NAT64 prefixes ({}): an instance takes at most {max} besides 64:ff9b::/96",
        prefixes.len(),
        Cut(&prefixes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
    )]
    Nat64Count { prefixes: Vec<Nat64Prefix>, max: u32 },
    #[error(
        "{origin}: unknown socket kind {}: allow_sockets takes {}",
        Quoted(kind),
        socket_kind_names()
    )]
    SocketKind { origin: Origin, kind: String },
}

/// The socket kinds `allow_sockets` and `--allow-sockets` take, comma-separated.
#[must_use]
pub fn socket_kind_names() -> String {
    let kinds = cgroup_connect_common::packet::socket_kind::ALL;
    kinds.iter().map(|(_, name)| *name).collect::<Vec<_>>().join(", ")
}

impl Policy {
    /// Reads every source; a rule given more than once counts once.
    ///
    /// # Errors
    /// The first bad file, line or value, as a [`PolicyError`].
    pub fn load(sources: &Sources) -> Result<Self, PolicyError> {
        let mut rules = Rules::default();
        let mut default = None;
        let mut nat64 = sources.nat64.clone();
        let mut allow_sockets = vec![];
        for (flag, action, dests) in
            [("--block", Action::Block, &sources.block), ("--allow", Action::Allow, &sources.allow)]
        {
            rules.packed.reserve(dests.len());
            for d in dests {
                rules.push(SourcedRule {
                    rule: Rule { action, dest: d.clone() },
                    origin: Origin::Flag(flag),
                });
            }
        }
        for path in &sources.block_lists {
            read_list(path, Action::Block, &mut rules)?;
        }
        for path in &sources.allow_lists {
            read_list(path, Action::Allow, &mut rules)?;
        }
        if let Some(path) = &sources.policy {
            default = read_policy(path, &mut rules, &mut nat64, &mut allow_sockets)?;
        }
        rules.dedup();
        rules.packed.shrink_to_fit();
        let mut seen = HashSet::from([Nat64Prefix::WELL_KNOWN]);
        nat64.retain(|p| seen.insert(*p));
        if nat64.len() > cgroup_connect_common::MAX_NAT64_PREFIXES as usize {
            let max = cgroup_connect_common::MAX_NAT64_PREFIXES;
            return Err(PolicyError::Nat64Count { prefixes: nat64, max });
        }
        let allow_sockets = cgroup_connect_common::packet::socket_kind::ALL
            .iter()
            .map(|(_, name)| (*name).to_owned())
            .filter(|name| allow_sockets.contains(name))
            .collect();
        let default = sources.default.or(default).unwrap_or(Action::Allow);
        Ok(Self { default, rules, nat64, allow_sockets })
    }

    /// The IPv4 prefix `net` stands for when it is under one of the NAT64 prefixes, else `net`.
    fn ipv4_of(&self, net: IpNet) -> IpNet {
        nat64_ipv4_of(&self.nat64, net)
    }

    /// The hostnames its rules name.
    #[must_use]
    pub fn names(&self) -> BTreeSet<String> {
        let rules = &self.rules;
        rules
            .packed
            .iter()
            .filter_map(|p| match rules.parts(p).1 {
                HostRef::Name(name) => Some(name.to_owned()),
                HostRef::Net(_) => None,
            })
            .collect()
    }

    /// The rules as the table compiler takes them, with hostnames replaced by the addresses
    /// `addrs_of` gives; rule ids are positions from 1. A /96 or longer under a NAT64 prefix
    /// (a hostname's AAAA record from DNS64, say) becomes the IPv4 prefix it stands for: the
    /// programs judge those addresses by the IPv4 table.
    pub fn table_rules<'a, I>(
        &'a self,
        addrs_of: impl Fn(&str) -> I + 'a,
    ) -> impl Iterator<Item = TableRule> + 'a
    where
        I: IntoIterator<Item = IpAddr> + 'a,
    {
        let rules = &self.rules;
        rules.packed.iter().zip(1u32..).flat_map(move |(packed, id)| {
            let (action, host, ports, proto) = rules.parts(packed);
            let nets: Vec<IpNet> = match host {
                HostRef::Net(net) => vec![net],
                HostRef::Name(name) => addrs_of(name).into_iter().map(IpNet::from).collect(),
            };
            nets.into_iter().map(move |net| TableRule {
                net: self.ipv4_of(net),
                ports,
                proto,
                action,
                id,
            })
        })
    }
}

impl Policy {
    /// The hostname rules by name, with their ids (as [`Policy::table_rules`] numbers them),
    /// for the DNS forwarder's fast path.
    #[must_use]
    pub fn name_rules(&self) -> std::collections::BTreeMap<String, Vec<crate::learned::NameRule>> {
        let mut out: std::collections::BTreeMap<String, Vec<_>> = std::collections::BTreeMap::new();
        for (sourced, id) in self.rules.iter().zip(1u32..) {
            let rule = &sourced.rule;
            if let Host::Name(name) = &rule.dest.host {
                out.entry(name.to_string()).or_default().push(crate::learned::NameRule {
                    id,
                    ports: rule.dest.ports,
                    proto: rule.dest.proto,
                    action: rule.action,
                });
            }
        }
        out
    }

    /// The addresses that rules name as a /32 or /128 (as the tables hold them: a NAT64 /128
    /// as IPv4), sorted.
    #[must_use]
    pub fn host_addrs(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = self
            .rules
            .iter()
            .filter_map(|r| match r.rule.dest.host {
                Host::Net(net) => Some(self.ipv4_of(net)),
                Host::Name(_) => None,
            })
            .filter(|net| net.prefix_len() == net.max_prefix_len())
            .map(|net| net.addr())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// The IPv4 prefix `net` stands for when it is under the well-known NAT64 prefix or one of
/// `nat64`, else `net`: how a rule's prefix goes into the tables.
#[must_use]
pub fn nat64_ipv4_of(nat64: &[Nat64Prefix], net: IpNet) -> IpNet {
    let IpNet::V6(v6) = net else { return net };
    std::iter::once(&Nat64Prefix::WELL_KNOWN)
        .chain(nat64)
        .find_map(|p| p.ip4(v6))
        .map_or(net, IpNet::V4)
}

fn read_text(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path)
        .map_err(|source| PolicyError::Read { path: path.to_owned(), source })
}

/// A list file: one rule a line, in the forms public blocklists ship. `#` and `;` start a
/// comment (netset headers, Spamhaus DROP's `1.2.3.0/24 ; SBL123`); blank lines are
/// skipped; a count may follow the rule (ipsum's `1.2.3.4<TAB>7`). Anything else after the
/// rule is an error: a line is never read as less than it says.
fn read_list(path: &Path, action: Action, rules: &mut Rules) -> Result<(), PolicyError> {
    let text = read_text(path)?;
    let shared: Arc<Path> = Arc::from(path);
    for (n, line) in text.lines().enumerate() {
        let content = line.split(['#', ';']).next().unwrap_or_default().trim();
        if content.is_empty() {
            continue;
        }
        let origin = Origin::Line { path: Arc::clone(&shared), line: n + 1 };
        let (rule, rest) = content.split_once(char::is_whitespace).unwrap_or((content, ""));
        let rest = rest.trim_start();
        match rule.parse::<Destination>() {
            Err(error) => return Err(PolicyError::Rule { origin, error }),
            Ok(_) if !(rest.is_empty() || rest.bytes().all(|b| b.is_ascii_digit())) => {
                return Err(PolicyError::Trailing { origin, rest: rest.to_owned() });
            }
            Ok(dest) => rules.push(SourcedRule { rule: Rule { action, dest }, origin }),
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    default: Option<Spanned<String>>,
    #[serde(default)]
    nat64: Vec<Spanned<String>>,
    #[serde(default)]
    allow_sockets: Vec<Spanned<String>>,
    #[serde(default)]
    rule: Vec<RuleEntry>,
    #[serde(default)]
    list: Vec<ListEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleEntry {
    action: Spanned<String>,
    dst: Spanned<String>,
    ports: Option<Spanned<PortsValue>>,
    proto: Option<Spanned<String>>,
}

#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
enum PortsValue {
    Number(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListEntry {
    action: Spanned<String>,
    path: Spanned<String>,
}

/// A value of a policy file and the line it is on.
#[derive(Clone, Debug, PartialEq, Eq)]
struct At<T> {
    value: T,
    line: usize,
}

/// A policy file's entries as the TOML parser reads them, each value with its line.
#[derive(Debug, Default, PartialEq, Eq)]
struct Doc<'a> {
    default: Option<At<Text<'a>>>,
    nat64: Vec<At<Text<'a>>>,
    /// `allow_sockets = [...]`: only the TOML parser reads it, as `nat64`.
    allow_sockets: Vec<At<Text<'a>>>,
    rules: Vec<RuleFields<'a>>,
    lists: Vec<ListFields<'a>>,
}

/// A string value: borrowed from the file by the fast reader.
type Text<'a> = std::borrow::Cow<'a, str>;

/// A `[[rule]]` entry's fields; `ports = 443` is held as its text, `"443"`.
#[derive(Debug, PartialEq, Eq)]
struct RuleFields<'a> {
    action: At<Text<'a>>,
    dst: At<Text<'a>>,
    ports: Option<At<Text<'a>>>,
    proto: Option<At<Text<'a>>>,
}

#[derive(Debug, PartialEq, Eq)]
struct ListFields<'a> {
    action: At<Text<'a>>,
    path: At<Text<'a>>,
}

impl RuleFields<'_> {
    /// Its destination, built from its fields by the rule language's one constructor; an
    /// error comes with the line of the field it is about.
    fn destination(&self) -> Result<Destination, (usize, RuleError)> {
        let dst = self.dst.value.trim();
        let ports = self.ports.as_ref().map(|p| &*p.value);
        let proto = self.proto.as_ref().map(|p| &*p.value);
        Destination::from_parts(dst, dst, ports, proto).map_err(|error| {
            let field = match error {
                RuleError::Port { .. } | RuleError::ReversedPorts { .. } => {
                    self.ports.as_ref().map(|p| p.line)
                }
                RuleError::Proto { .. } => self.proto.as_ref().map(|p| p.line),
                _ => None,
            };
            (field.unwrap_or(self.dst.line), error)
        })
    }

    /// The rule, from the line of its `dst`; `at` makes the origin of a line.
    fn sourced(&self, at: &impl Fn(usize) -> Origin) -> Result<SourcedRule, PolicyError> {
        let fail = |line, error| PolicyError::Rule { origin: at(line), error };
        let dest = self.destination().map_err(|(line, error)| fail(line, error))?;
        let action = self.action.value.parse().map_err(|e| fail(self.action.line, e))?;
        Ok(SourcedRule { rule: Rule { action, dest }, origin: at(self.dst.line) })
    }
}

/// What a policy file gives besides its rules and NAT64 prefixes.
#[derive(Debug, PartialEq, Eq)]
struct Entries<'a> {
    default: Option<Action>,
    lists: Vec<ListFields<'a>>,
}

/// Parses a policy file with the TOML parser.
fn toml_doc<'a>(path: &Path, text: &str) -> Result<Doc<'a>, PolicyError> {
    // Where each line starts, so that a span's line is a binary search, not a count of the
    // newlines before it (which made a file of N rules take N² steps).
    let starts: Vec<usize> = std::iter::once(0)
        .chain(text.bytes().enumerate().filter(|&(_, b)| b == b'\n').map(|(i, _)| i + 1))
        .collect();
    let line_of = |offset: usize| starts.partition_point(|&start| start <= offset);
    let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Toml {
        path: path.to_owned(),
        line: e.span().map_or(1, |s| line_of(s.start)),
        message: e.message().to_owned(),
    })?;
    let at =
        |v: Spanned<String>| At { line: line_of(v.span().start), value: v.into_inner().into() };
    let ports = |p: Spanned<PortsValue>| At {
        line: line_of(p.span().start),
        value: match p.into_inner() {
            PortsValue::Number(n) => n.to_string().into(),
            PortsValue::Text(t) => t.into(),
        },
    };
    Ok(Doc {
        default: file.default.map(at),
        nat64: file.nat64.into_iter().map(at).collect(),
        allow_sockets: file.allow_sockets.into_iter().map(at).collect(),
        rules: file
            .rule
            .into_iter()
            .map(|r| RuleFields {
                action: at(r.action),
                dst: at(r.dst),
                ports: r.ports.map(ports),
                proto: r.proto.map(at),
            })
            .collect(),
        lists: file
            .list
            .into_iter()
            .map(|l| ListFields { action: at(l.action), path: at(l.path) })
            .collect(),
    })
}

/// Reads a policy file with the TOML parser: its rules to `rules`, its NAT64 prefixes to
/// `nat64`, its socket kinds to `allow_sockets`.
fn toml_read(
    path: &Path,
    text: &str,
    at: &impl Fn(usize) -> Origin,
    rules: &mut Rules,
    nat64: &mut Vec<Nat64Prefix>,
    allow_sockets: &mut Vec<String>,
) -> Result<Entries<'static>, PolicyError> {
    let doc = toml_doc(path, text)?;
    let fail = |line, error| PolicyError::Rule { origin: at(line), error };
    let default = doc.default.map(|v| v.value.parse().map_err(|e| fail(v.line, e))).transpose()?;
    for prefix in &doc.nat64 {
        nat64.push(prefix.value.parse().map_err(|e| fail(prefix.line, e))?);
    }
    for kind in &doc.allow_sockets {
        let known =
            cgroup_connect_common::packet::socket_kind::ALL.iter().any(|k| k.1 == kind.value);
        if !known {
            return Err(PolicyError::SocketKind {
                origin: at(kind.line),
                kind: kind.value.to_string(),
            });
        }
        allow_sockets.push(kind.value.to_string());
    }
    rules.packed.reserve(doc.rules.len());
    for entry in &doc.rules {
        rules.push(entry.sourced(at)?);
    }
    Ok(Entries { default, lists: doc.lists })
}

/// One line of a policy file in the plain form.
enum Plain<'a> {
    /// Blank or a comment.
    Blank,
    /// `[[rule]]` (true) or `[[list]]` (false).
    Header { rule: bool },
    /// `key = "text"`, or `key = 443` (the digits as text, `quoted` false).
    Field { key: &'a [u8], value: &'a str, quoted: bool },
}

/// Reads the line of `text` that starts at `i` in the plain form, byte by byte: blank or a
/// comment, `[[rule]]` or `[[list]]`, or `key = "text"` or `key = 443` with a lowercase key,
/// each maybe with spaces and tabs around and a comment after, ending in `\n`, `\r\n` or the
/// end of the text. Returns it and where the next line starts; `None` for anything else.
fn plain_line(text: &str, mut i: usize) -> Option<(Plain<'_>, usize)> {
    let b = text.as_bytes();
    let blank = |mut i: usize| {
        while matches!(b.get(i), Some(b' ' | b'\t')) {
            i += 1;
        }
        i
    };
    // What TOML calls a control character (C0 but tab, DEL, or C1, which UTF-8 writes as
    // C2 80 to C2 9F), which neither a comment nor a basic string may hold.
    let control = |i: usize| match b[i] {
        b'\t' => false,
        0xc2 => matches!(b.get(i + 1), Some(0x80..=0x9f)),
        c => c < 0x20 || c == 0x7f,
    };
    i = blank(i);
    let line = match b.get(i) {
        None | Some(b'#' | b'\r' | b'\n') => Plain::Blank,
        Some(b'[') => {
            let rule = b[i..].starts_with(b"[[rule]]");
            if !rule && !b[i..].starts_with(b"[[list]]") {
                return None;
            }
            i += 8;
            Plain::Header { rule }
        }
        Some(_) => {
            let start = i;
            while b.get(i).is_some_and(u8::is_ascii_lowercase) {
                i += 1;
            }
            let key = &b[start..i];
            i = blank(i);
            if key.is_empty() || b.get(i) != Some(&b'=') {
                return None;
            }
            i = blank(i + 1);
            let start = i;
            if b.get(i) == Some(&b'"') {
                i += 1;
                while b.get(i)? != &b'"' {
                    if b[i] == b'\\' || control(i) {
                        return None;
                    }
                    i += 1;
                }
                i += 1;
                Plain::Field { key, value: &text[start + 1..i - 1], quoted: true }
            } else {
                // A decimal integer as TOML writes one: no sign, leading zero or underscore.
                while b.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
                let digits = &text[start..i];
                if digits.is_empty()
                    || (digits.len() > 1 && digits.starts_with('0'))
                    || digits.parse::<i64>().is_err()
                {
                    return None;
                }
                Plain::Field { key, value: digits, quoted: false }
            }
        }
    };
    i = blank(i);
    if b.get(i) == Some(&b'#') {
        i += 1;
        while b.get(i).is_some_and(|&c| c != b'\n' && c != b'\r') {
            if control(i) {
                return None;
            }
            i += 1;
        }
    }
    match &b[i..] {
        [] => Some((line, i)),
        [b'\n', ..] => Some((line, i + 1)),
        [b'\r', b'\n', ..] => Some((line, i + 2)),
        _ => None,
    }
}

/// Reads a policy file in one pass when every line is in the plain form the README shows
/// ([`plain_line`]), with a known key once per entry and every required key there: its
/// rules to `rules`, as they are read. Anything else (another TOML form, or a mistake)
/// returns `None`, the caller drops the rules added, and the TOML parser reads the file.
/// An error in a value is the first the TOML path would report for the same file: the
/// rest of the file is still read, so that a file the TOML parser refuses gets its error.
/// The two read a plain file alike (a property test checks it); the TOML parser alone
/// takes several times longer at a million rules.
fn fast_read<'a>(
    text: &'a str,
    at: &impl Fn(usize) -> Origin,
    rules: &mut Rules,
) -> Option<Result<Entries<'a>, PolicyError>> {
    #[derive(Clone, Copy)]
    enum Table {
        Root,
        Rule,
        List,
    }
    /// The fields of the entry being read.
    #[derive(Default)]
    struct Open<'a> {
        action: Option<At<&'a str>>,
        dst: Option<At<&'a str>>,
        ports: Option<At<&'a str>>,
        proto: Option<At<&'a str>>,
        path: Option<At<&'a str>>,
    }
    fn set<'a>(slot: &mut Option<At<&'a str>>, value: &'a str, line: usize) -> Option<()> {
        if slot.is_some() {
            return None;
        }
        *slot = Some(At { value, line });
        Some(())
    }
    let text_at = |v: At<&'a str>| At { value: Text::Borrowed(v.value), line: v.line };

    let mut default = None;
    let mut lists = Vec::new();
    let mut first_error = None;
    let mut table = Table::Root;
    let mut open = Open::default();
    // Ends the entry being read at a header or the end of the file.
    let mut close = |table: Table, open: Open<'a>, first_error: &mut Option<PolicyError>| {
        match table {
            Table::Root => {}
            Table::Rule => {
                let fields = RuleFields {
                    action: text_at(open.action?),
                    dst: text_at(open.dst?),
                    ports: open.ports.map(text_at),
                    proto: open.proto.map(text_at),
                };
                if first_error.is_none() {
                    match fields.sourced(at) {
                        Ok(rule) => rules.push(rule),
                        Err(e) => *first_error = Some(e),
                    }
                }
            }
            Table::List => {
                lists.push(ListFields { action: text_at(open.action?), path: text_at(open.path?) });
            }
        }
        Some(())
    };
    let (mut next, mut line) = (0, 0);
    while next < text.len() {
        line += 1;
        let (plain, after) = plain_line(text, next)?;
        next = after;
        match plain {
            Plain::Blank => {}
            Plain::Header { rule } => {
                close(table, std::mem::take(&mut open), &mut first_error)?;
                table = if rule { Table::Rule } else { Table::List };
            }
            Plain::Field { key, value, quoted } => match (table, key) {
                (Table::Rule, b"ports") => set(&mut open.ports, value, line)?,
                // Only `ports` takes a number.
                _ if !quoted => return None,
                (Table::Root, b"default") => {
                    if default.is_some() {
                        return None;
                    }
                    default = Some(
                        value
                            .parse::<Action>()
                            .map_err(|error| PolicyError::Rule { origin: at(line), error }),
                    );
                }
                (Table::Rule | Table::List, b"action") => set(&mut open.action, value, line)?,
                (Table::Rule, b"dst") => set(&mut open.dst, value, line)?,
                (Table::Rule, b"proto") => set(&mut open.proto, value, line)?,
                (Table::List, b"path") => set(&mut open.path, value, line)?,
                _ => return None,
            },
        }
    }
    close(table, open, &mut first_error)?;
    // The default comes before every rule, and is checked first.
    let default = match default.transpose() {
        Ok(default) => default,
        Err(e) => return Some(Err(e)),
    };
    Some(first_error.map_or(Ok(Entries { default, lists }), Err))
}

/// A TOML policy file: its rules to `rules`, its NAT64 prefixes to `nat64`, its socket kinds
/// to `allow_sockets`; returns its `default`, if it has one.
fn read_policy(
    path: &Path,
    rules: &mut Rules,
    nat64: &mut Vec<Nat64Prefix>,
    allow_sockets: &mut Vec<String>,
) -> Result<Option<Action>, PolicyError> {
    let text = read_text(path)?;
    let shared: Arc<Path> = Arc::from(path);
    let at = |line: usize| Origin::Line { path: Arc::clone(&shared), line };
    let read = rules.len();
    let entries = if let Some(entries) = fast_read(&text, &at, rules) {
        entries?
    } else {
        rules.truncate(read);
        toml_read(path, &text, &at, rules, nat64, allow_sockets)?
    };
    let base = path.parent().unwrap_or(Path::new("."));
    for list in &entries.lists {
        let action = list
            .action
            .value
            .parse()
            .map_err(|error| PolicyError::Rule { origin: at(list.action.line), error })?;
        read_list(&base.join(&*list.path.value), action, rules)?;
    }
    Ok(entries.default)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary directory (tempfile's, removed on drop) to write policy files in.
    struct TempDir(tempfile::TempDir);
    impl TempDir {
        fn new(tag: &str) -> Self {
            Self(
                tempfile::Builder::new()
                    .prefix(&format!("cgroup-connect-policy-{tag}-"))
                    .tempdir()
                    .unwrap(),
            )
        }
        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }

    fn policy(path: PathBuf) -> Result<Policy, PolicyError> {
        Policy::load(&Sources { policy: Some(path), ..Sources::default() })
    }

    #[test]
    fn reads_the_documented_policy() {
        let dir = TempDir::new("doc");
        dir.write("drop.txt", "# comment\n\n192.0.2.1\n198.51.100.0/24:53 # trailing\n");
        let path = dir.write(
            "policy.toml",
            r#"default = "deny"

[[rule]]
action = "allow"
dst = "10.0.0.0/8"
ports = "443"
proto = "tcp"

[[rule]]
action = "block"
dst = "2001:db8::/32"
ports = 8000

[[list]]
action = "block"
path = "drop.txt"
"#,
        );
        let p = policy(path.clone()).unwrap();
        assert_eq!(p.default, Action::Block);
        let texts: Vec<String> = p.rules.iter().map(|r| r.rule.to_string()).collect();
        assert_eq!(
            texts,
            [
                "allow tcp://10.0.0.0/8:443",
                "block [2001:db8::/32]:8000",
                "block 192.0.2.1",
                "block 198.51.100.0/24:53"
            ]
        );
        assert_eq!(
            p.rules.get(0).unwrap().origin,
            Origin::Line { path: Arc::from(path.as_path()), line: 5 }
        );
        assert_eq!(
            p.rules.get(3).unwrap().origin.to_string(),
            format!("{}:4", dir.0.path().join("drop.txt").display())
        );
    }

    #[test]
    fn errors_name_file_line_and_value() {
        let dir = TempDir::new("err");
        let path = dir.write("policy.toml", "default = \"allow\"\n\n[[rule]]\naction = \"block\"\ndst = \"10.0.0.0/8\"\n\n[[rule]]\naction = \"blok\"\ndst = \"10.0.0.1\"\n");
        let msg = policy(path).unwrap_err().to_string();
        assert!(
            msg.ends_with("policy.toml:8: unknown action \"blok\": use \"block\" or \"allow\""),
            "{msg}"
        );

        let path =
            dir.write("bad-dst.toml", "[[rule]]\naction = \"block\"\ndst = \"10.0.0.300\"\n");
        let msg = policy(path).unwrap_err().to_string();
        assert!(msg.contains("bad-dst.toml:3:") && msg.contains("10.0.0.300"), "{msg}");

        let path = dir.write(
            "unknown-key.toml",
            "[[rule]]\naction = \"block\"\ndst = \"10.0.0.1\"\nport = \"80\"\n",
        );
        let msg = policy(path).unwrap_err().to_string();
        assert!(msg.contains("unknown-key.toml:4:") && msg.contains("port"), "{msg}");

        let path = dir.write("syntax.toml", "default = \n");
        assert!(policy(path).unwrap_err().to_string().contains("syntax.toml:1:"));

        let list = dir.write("list.txt", "10.0.0.1\n\n  10.0.0.0/33 # bad\n");
        let err =
            Policy::load(&Sources { block_lists: vec![list], ..Sources::default() }).unwrap_err();
        assert!(
            err.to_string().contains("list.txt:3:") && err.to_string().contains("\"33\""),
            "{err}"
        );

        let missing = dir.0.path().join("missing.txt");
        let err =
            Policy::load(&Sources { allow_lists: vec![missing.clone()], ..Sources::default() })
                .unwrap_err();
        assert!(err.to_string().contains(missing.to_str().unwrap()), "{err}");
    }

    /// A message quotes at most [`crate::quote::MAX_CHARS`] characters of a line: a huge line
    /// makes a short message, and a file that is no list (a policy may name any file, and
    /// the blocker runs as root) shows no more than the start of its first line.
    #[test]
    fn errors_quote_only_the_start_of_a_long_value() {
        let dir = TempDir::new("long");
        let huge = "x".repeat(10 << 20);
        let list = dir.write("huge.txt", &format!("10.0.0.1\n{huge}\n"));
        let err =
            Policy::load(&Sources { block_lists: vec![list], ..Sources::default() }).unwrap_err();
        let msg = err.to_string();
        assert!(msg.len() < 1024 && msg.contains("huge.txt:2: "), "{} bytes", msg.len());
        assert!(msg.contains(&format!("\"{}\"… (10485760 bytes)", "x".repeat(100))), "{msg}");

        let secret = format!("root:$6$salt${}:19000:0:99999:7:::", "H".repeat(86));
        dir.write("shadow", &format!("{secret}\n"));
        let path = dir.write("p.toml", "[[list]]\naction = \"block\"\npath = \"shadow\"\n");
        let msg = policy(path).unwrap_err().to_string();
        assert!(msg.contains("shadow:1: ") && msg.contains(&secret[..100]), "{msg}");
        assert!(!msg.contains(&secret[..101]), "more than 100 characters shown: {msg}");

        for (name, text) in [
            ("dst.toml", format!("[[rule]]\naction = \"block\"\ndst = \"{huge}\"\n")),
            ("key.toml", format!("{huge} = 1\n")),
            ("action.toml", format!("default = \"{huge}\"\n")),
        ] {
            let msg = policy(dir.write(name, &text)).unwrap_err().to_string();
            assert!(msg.len() < 1024 && msg.contains(name), "{name}: {} bytes", msg.len());
        }
    }

    fn list(text: &str) -> Result<Vec<String>, PolicyError> {
        let dir = TempDir::new("list");
        let path = dir.write("list.txt", text);
        let p = Policy::load(&Sources { block_lists: vec![path], ..Sources::default() })?;
        Ok(p.rules.iter().map(|r| r.rule.dest.to_string()).collect())
    }

    #[test]
    fn reads_the_formats_public_blocklists_ship() {
        let spamhaus = "; Spamhaus DROP List 2025/01/01 - (c) 2025 The Spamhaus Project SLU\n\
                        ; https://www.spamhaus.org/drop/drop.txt\n\
                        192.0.2.0/24 ; SBL123456\n198.51.100.0/25;SBL7\n";
        assert_eq!(list(spamhaus).unwrap(), ["192.0.2.0/24", "198.51.100.0/25"]);
        let ipsum = "# IPsum Threat Intelligence Feed\n# IP\tnumber of (black)lists\n\
                     192.0.2.7\t10\n198.51.100.9\t3\r\n2001:db8::1  2\n";
        assert_eq!(list(ipsum).unwrap(), ["192.0.2.7", "198.51.100.9", "2001:db8::1"]);
        let netset = "#\n# firehol_level1\n#\n192.0.2.0/24\n203.0.113.5\n";
        assert_eq!(list(netset).unwrap(), ["192.0.2.0/24", "203.0.113.5"]);
    }

    /// Only a count or a comment may follow the rule; a first field that is no rule is
    /// refused as before. Each error names the file and line.
    #[test]
    fn list_lines_with_more_than_a_rule_are_refused() {
        let msg = list("192.0.2.1\n192.0.2.2 block\n").unwrap_err().to_string();
        assert!(msg.contains("list.txt:2: \"block\" after the rule"), "{msg}");
        let msg = list("192.0.2.1\t7 9\n").unwrap_err().to_string();
        assert!(msg.contains("list.txt:1: \"7 9\" after the rule"), "{msg}");
        let msg = list("192.0.2.1\n\n192.0.2.300\t7\n").unwrap_err().to_string();
        assert!(msg.contains("list.txt:3:") && msg.contains("\"192.0.2.300\""), "{msg}");
        let msg = list("192.0.2.0/33 ; SBL1\n").unwrap_err().to_string();
        assert!(msg.contains("list.txt:1:") && msg.contains("\"33\""), "{msg}");
        let msg = list(&format!("192.0.2.1 {}\n", "x".repeat(10 << 20))).unwrap_err().to_string();
        assert!(msg.len() < 1024 && msg.contains("(10485760 bytes)"), "{} bytes", msg.len());
    }

    #[test]
    fn a_rule_given_twice_counts_once_where_it_first_appears() {
        let dir = TempDir::new("dup");
        let a = dir.write("a.txt", "192.0.2.1\n192.0.2.2\n192.0.2.1 ; again\n192.0.2.1\t4\n");
        let b = dir.write("b.txt", "192.0.2.2\n192.0.2.3\n");
        let p = Policy::load(&Sources {
            block: vec!["192.0.2.3".parse().unwrap()],
            allow: vec!["192.0.2.1".parse().unwrap()],
            block_lists: vec![a.clone(), b],
            ..Sources::default()
        })
        .unwrap();
        let texts: Vec<String> = p.rules.iter().map(|r| r.rule.to_string()).collect();
        // An allow and a block of one address are two rules; the rest repeat.
        assert_eq!(
            texts,
            ["block 192.0.2.3", "allow 192.0.2.1", "block 192.0.2.1", "block 192.0.2.2"]
        );
        assert_eq!(p.rules.get(2).unwrap().origin.to_string(), format!("{}:1", a.display()));
    }

    /// A policy holds one of these a rule (a million for a million-line list), alive while
    /// the tables compile: its size was most of the peak memory of a start (80 bytes a
    /// `SourcedRule` before).
    #[test]
    fn a_parsed_rule_takes_32_bytes() {
        assert_eq!(size_of::<Packed>(), 32);
    }

    fn rule(text: &str) -> Rule {
        let (action, dest) = text.split_once(' ').unwrap();
        Rule { action: action.parse().unwrap(), dest: dest.parse().unwrap() }
    }

    #[test]
    fn rules_give_back_what_was_pushed() {
        let file: Arc<Path> = Arc::from(Path::new("/etc/l.txt"));
        let texts = [
            ("block 10.0.0.0/8", Origin::Line { path: Arc::clone(&file), line: 7 }),
            ("allow tcp://[2001:db8::/32]:80-90", Origin::Flag("--allow")),
            ("block udp://example.com:53", Origin::Live),
            ("allow 192.0.2.1", Origin::Line { path: Arc::from(Path::new("/b.txt")), line: 1 }),
            ("block example.com", Origin::Line { path: Arc::clone(&file), line: 9 }),
            ("block tcp://0.0.0.0/0:443", Origin::Line { path: file, line: usize::MAX }),
        ];
        let sourced: Vec<SourcedRule> = texts
            .iter()
            .map(|(text, origin)| SourcedRule { rule: rule(text), origin: origin.clone() })
            .collect();
        let rules: Rules = sourced.iter().cloned().collect();
        let back: Vec<SourcedRule> = rules.iter().collect();
        assert_eq!(back[..5], sourced[..5]);
        // A line past u32::MAX is kept as u32::MAX.
        assert_eq!(back[5].rule, sourced[5].rule);
        assert_eq!(back[5].origin.to_string(), format!("/etc/l.txt:{}", u32::MAX));
    }

    #[test]
    fn dedup_compares_hostnames_and_keeps_the_first() {
        let at = |line| Origin::Line { path: Arc::from(Path::new("l.txt")), line };
        let mut rules: Rules = [
            "block a.example",
            "block b.example",
            "block a.example",
            "allow a.example",
            "block tcp://a.example",
        ]
        .iter()
        .zip(1..)
        .map(|(text, line)| SourcedRule { rule: rule(text), origin: at(line) })
        .collect();
        rules.dedup();
        let kept: Vec<String> = rules.iter().map(|r| format!("{} {}", r.rule, r.origin)).collect();
        assert_eq!(
            kept,
            [
                "block a.example l.txt:1",
                "block b.example l.txt:2",
                "allow a.example l.txt:4",
                "block tcp://a.example l.txt:5"
            ]
        );
    }

    #[test]
    fn flag_default_overrides_the_file() {
        let dir = TempDir::new("default");
        let path = dir.write("p.toml", "default = \"deny\"\n");
        let p = Policy::load(&Sources {
            policy: Some(path),
            default: Some(Action::Allow),
            ..Sources::default()
        })
        .unwrap();
        assert_eq!(p.default, Action::Allow);
    }

    #[test]
    fn allow_sockets_names_known_kinds() {
        let dir = TempDir::new("sockets");
        let path = dir.write("p.toml", "allow_sockets = [\"ping\", \"raw\", \"ping\"]\n");
        assert_eq!(policy(path).unwrap().allow_sockets, ["raw", "ping"]);
        let path = dir.write("bad.toml", "default = \"deny\"\nallow_sockets = [\"icmp\"]\n");
        let err = policy(path).unwrap_err().to_string();
        assert!(
            err.ends_with("bad.toml:2: unknown socket kind \"icmp\": allow_sockets takes raw, ping, udplite, sctp, other"),
            "{err}"
        );
    }

    #[test]
    fn nat64_prefixes_come_from_flags_and_the_file() {
        let dir = TempDir::new("nat64");
        let path = dir.write(
            "p.toml",
            "nat64 = [\"2001:db8:64::/96\", \"64:ff9b::/96\", \"2001:db8:65::/96\"]\n",
        );
        let flag: Nat64Prefix = "2001:db8:65::/96".parse().unwrap();
        let p =
            Policy::load(&Sources { policy: Some(path), nat64: vec![flag], ..Sources::default() })
                .unwrap();
        // The flag's first; the well-known prefix and repeats count once, out of the list.
        let texts: Vec<String> = p.nat64.iter().map(ToString::to_string).collect();
        assert_eq!(texts, ["2001:db8:65::/96", "2001:db8:64::/96"]);

        let path =
            dir.write("bad.toml", "default = \"deny\"\nnat64 = [\n  \"2001:db8:64::/64\",\n]\n");
        let msg = policy(path).unwrap_err().to_string();
        assert!(msg.contains("bad.toml:3: NAT64 prefix \"2001:db8:64::/64\""), "{msg}");

        let five: Vec<Nat64Prefix> =
            (1..=5).map(|i| format!("2001:db8:{i}::/96").parse().unwrap()).collect();
        let msg =
            Policy::load(&Sources { nat64: five, ..Sources::default() }).unwrap_err().to_string();
        assert!(msg.starts_with("5 NAT64 prefixes (2001:db8:1::/96, "), "{msg}");
        assert!(msg.ends_with("at most 4 besides 64:ff9b::/96"), "{msg}");
    }

    #[test]
    fn hostnames_expand_to_their_addresses_with_one_id() {
        let p = Policy::load(&Sources {
            block: vec!["10.0.0.1".parse().unwrap(), "tcp://example.com:443".parse().unwrap()],
            ..Sources::default()
        })
        .unwrap();
        assert_eq!(p.names().into_iter().collect::<Vec<_>>(), ["example.com"]);
        let addrs: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()];
        let rules: Vec<TableRule> = p.table_rules(|_| addrs.clone()).collect();
        assert_eq!(rules.len(), 3);
        assert_eq!(rules.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2, 2]);
        assert_eq!(rules[2].net.to_string(), "2001:db8::1/128");
    }

    #[test]
    fn rules_under_a_nat64_prefix_name_ipv4_addresses() {
        let p = Policy::load(&Sources {
            block: vec!["64:ff9b::c000:200/120".parse().unwrap(), "example.com".parse().unwrap()],
            allow: vec!["64:ff9b::/64".parse().unwrap()],
            nat64: vec!["2001:db8:64::/96".parse().unwrap()],
            ..Sources::default()
        })
        .unwrap();
        let dns64: Vec<IpAddr> =
            vec!["2001:db8:64::c633:6407".parse().unwrap(), "2001:db8::7".parse().unwrap()];
        let nets: Vec<String> =
            p.table_rules(|_| dns64.clone()).map(|r| r.net.to_string()).collect();
        assert_eq!(nets, ["192.0.2.0/24", "198.51.100.7/32", "2001:db8::7/128", "64:ff9b::/64"]);
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    /// Pieces that policy files are made of, so random documents get past the TOML parser
    /// often enough to reach the policy checks.
    fn toml_piece() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("default = \"deny\"\n".to_owned()),
            Just("nat64 = [\"2001:db8:64::/96\"]\n".to_owned()),
            Just("nat64 = [\"2001:db8::/64\"]\n".to_owned()),
            Just("default = \"allw\"\n".to_owned()),
            Just("[[rule]]\n".to_owned()),
            Just("[[list]]\n".to_owned()),
            Just("action = \"block\"\n".to_owned()),
            Just("action = \"blok\"\n".to_owned()),
            Just("path = \"missing.txt\"\n".to_owned()),
            Just("ports = 443\n".to_owned()),
            Just("ports = -1\n".to_owned()),
            Just("proto = \"udp\"\n".to_owned()),
            Just("dst = \"10.0.0.1\" # c\n".to_owned()),
            Just("ports = 0443\n".to_owned()),
            Just("  [[rule]] # c\r\n".to_owned()),
            Just("dst = \"a#b\"\n".to_owned()),
            Just("[rule]\n".to_owned()),
            "[a-z]{1,6} = \"[a-z0-9.:/ #-]{0,12}\"\n",
            "ports = [0-9+_-]{1,7}\n",
            "dst = \"\\\\PC{0,20}\"\n",
            "ports = \"[0-9-]{0,12}\"\n",
            "proto = \"[a-z]{0,4}\"\n",
            "\\PC{0,30}\n",
        ]
    }

    /// A `[[rule]]` or `[[list]]` entry with its required fields and some optional ones, in
    /// any order, with blank lines and comments around.
    fn plain_entry() -> impl Strategy<Value = String> {
        let value = "[a-z0-9./:-]{0,12}";
        let field = |key: &'static str| value.prop_map(move |v| format!("{key} = \"{v}\"\n"));
        let rule = (
            field("action"),
            field("dst"),
            proptest::option::of(prop_oneof![
                field("ports"),
                (0u32..70_000).prop_map(|n| format!("ports = {n}\n"))
            ]),
            proptest::option::of(field("proto")),
        )
            .prop_map(|(a, d, p, q)| {
                [Some(a), Some(d), p, q].into_iter().flatten().collect::<Vec<_>>()
            });
        let list = (field("action"), field("path")).prop_map(|(a, p)| vec![a, p]);
        (
            prop_oneof![rule.prop_map(|f| ("[[rule]]", f)), list.prop_map(|f| ("[[list]]", f))],
            any::<u64>(),
            "( *# [a-z ]{0,8})?",
        )
            .prop_map(|((header, mut fields), order, comment)| {
                let len = fields.len();
                fields.rotate_left(usize::try_from(order).unwrap_or(0) % len);
                format!("\n{header}{comment}\n\t{}", fields.join(" "))
            })
    }

    /// What a file reads as: its rules, default and lists, or the error's message.
    type Read<'a> = Result<(Rules, Entries<'a>), String>;

    fn origin(line: usize) -> Origin {
        Origin::Line { path: Arc::from(Path::new("p.toml")), line }
    }

    /// What the fast reader makes of `text`, if it takes it.
    fn fast(text: &str) -> Option<Read<'_>> {
        let mut rules = Rules::default();
        let read = fast_read(text, &origin, &mut rules)?;
        Some(read.map(|entries| (rules, entries)).map_err(|e| e.to_string()))
    }

    /// What the TOML parser makes of `text`.
    fn slow(text: &str) -> Read<'static> {
        let (mut rules, mut nat64, mut kinds) = (Rules::default(), Vec::new(), Vec::new());
        let read =
            toml_read(Path::new("p.toml"), text, &origin, &mut rules, &mut nat64, &mut kinds);
        read.map(|entries| (rules, entries)).map_err(|e| e.to_string())
    }

    /// Lines the fast reader must leave to the TOML parser, or read as the parser does:
    /// other TOML forms (inline tables and arrays, escapes, literal strings, dotted and
    /// quoted keys, other integers), repeated and unknown keys, control characters.
    fn odd_piece() -> impl Strategy<Value = String> {
        let lines = proptest::sample::select(vec![
            "rule = [{ action = \"block\", dst = \"10.0.0.1\" }]\n",
            "[[rule]]\naction = \"block\"\ndst = { ip = \"10.0.0.1\" }\n",
            "[[rule]]\naction = \"block\"\ndst = \"10.0.0.\\u0031\"\n",
            "[[rule]]\naction = \"block\"\ndst = '10.0.0.1'\n",
            "[[rule]]\naction = \"block\"\ndst = \"\"\"10.0.0.1\"\"\"\n",
            "[[rule]]\naction = \"block\"\nrule.dst = \"10.0.0.1\"\n",
            "[[rule]]\naction = \"block\"\n\"dst\" = \"10.0.0.1\"\n",
            "[[rule]]\naction = \"block\"\ndst = \"10.0.0.1\"\ndst = \"10.0.0.2\"\n",
            "[[rule]]\naction = \"block\"\ndst = \"10.0.0.1\"\nport = \"80\"\n",
            "[[rule]]\naction = \"block\"\ndst = \"10.0.0.1\"\npath = \"x\"\n",
            "[[list]]\naction = \"block\"\npath = \"x\"\nports = 80\n",
            "[[rule]]\naction = \"block\"\ndst = \"10.0.0.1\"\nports = 0x50\n",
            "[[rule]]\naction = \"block\"\ndst = \"10.0.0.1\"\nports = +80\n",
            "[[rule]]\naction = \"block\"\ndst = \"10.0.0.1\"\nports = 8_0\n",
            "[[rule]]\naction = \"block\"\ndst = \"10.0.0.1\"\nports = 99999999999999999999\n",
            "[[rule]]\naction = \"block\"\ndst = \"10.0.0.1\"\nports = [80]\n",
            "[[rule]]\naction = 1\ndst = \"10.0.0.1\"\n",
            "default = 1\n",
            "[[rule]]\naction = \"block\"\ndst = \"a#b\" # c#d\n",
            "[[ rule ]]\naction = \"block\"\ndst = \"10.0.0.1\"\n",
            "[rule]\naction = \"block\"\ndst = \"10.0.0.1\"\n",
            "[[rule]]\naction = \"block\"\ndst = \"10.0.0.1\" # \u{85} \u{7f}\n",
            "[[rule]]\naction = \"block\"\ndst = \"10.0.0.1\u{85}\"\n",
            "[[rule]]\naction = \"block\"\ndst = \"10.0.0.1\"\r# lone CR\n",
            "\u{feff}default = \"deny\"\n",
            "[[rule]]\taction = \"block\"\n",
            "[[rule]]\naction = \"block\"\ndst = \"10.0.0.1\" x\n",
            "[[rule]] # \u{e9}t\u{e9}\naction = \"allow\"\ndst = \"\u{e9}.example\"\n",
            "[[rule]]\naction = \"block\"\ndst = \"10.0.0.1\"\nproto = \"tcp\"\nports = \"9-1\"\n",
        ]);
        prop_oneof![lines.prop_map(str::to_owned), "[a-z]{1,6} = [0-9a-z\"'.{}\\[\\]]{0,8}\n"]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Any document is either a policy or an error that names the file and a line.
        #[test]
        fn policy_files_never_panic(pieces in proptest::collection::vec(toml_piece(), 0..12)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("p.toml");
            std::fs::write(&path, pieces.concat()).unwrap();
            match Policy::load(&Sources { policy: Some(path.clone()), ..Sources::default() }) {
                Ok(_) => {}
                Err(PolicyError::Read { path: p, .. }) => prop_assert!(p.ends_with("missing.txt")),
                Err(e) => prop_assert!(e.to_string().contains("p.toml:"), "{}", e),
            }
        }

        /// Whatever the fast reader reads, the TOML parser reads alike, to the same rules,
        /// origins, default and lists, or the same error; plain files (entries of known
        /// fields in any order, with `\n` or `\r\n` line ends) it reads itself.
        #[test]
        fn the_fast_reader_agrees_with_toml(
            pieces in proptest::collection::vec(toml_piece(), 0..16),
            odd in proptest::collection::vec(odd_piece(), 0..4),
            entries in proptest::collection::vec(plain_entry(), 0..6),
        ) {
            let plain = entries.concat();
            prop_assert!(fast(&plain).is_some(), "{}", plain);
            prop_assert!(fast(&plain.replace('\n', "\r\n")).is_some(), "{}", plain);
            let mixed = [entries.concat(), pieces.concat()].concat();
            let mut odd_at = entries.clone();
            for (k, piece) in odd.iter().enumerate() {
                odd_at.insert(k.min(odd_at.len()), piece.clone());
            }
            for text in [pieces.concat(), plain, mixed, odd_at.concat()] {
                for text in [text.replace('\n', "\r\n"), text] {
                    let Some(read) = fast(&text) else { continue };
                    prop_assert_eq!(read, slow(&text), "{}", text);
                }
            }
        }

        /// Any list line is a rule or an error naming the line.
        #[test]
        fn list_lines_never_panic(lines in proptest::collection::vec("\\PC{0,30}", 1..8)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("l.txt");
            std::fs::write(&path, lines.join("\n")).unwrap();
            if let Err(e) = Policy::load(&Sources { block_lists: vec![path], ..Sources::default() }) {
                prop_assert!(e.to_string().contains("l.txt:"), "{}", e);
            }
        }
    }
}
