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

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::{
    quote::{Cut, Quoted, ShortPath},
    rules::{Action, Destination, Host, Rule, RuleError},
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

/// A complete policy: the default and every rule, numbered from 1 in the order read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub default: Action,
    pub rules: Vec<SourcedRule>,
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
}

impl Policy {
    /// Reads every source; a rule given more than once counts once.
    ///
    /// # Errors
    /// The first bad file, line or value, as a [`PolicyError`].
    pub fn load(sources: &Sources) -> Result<Self, PolicyError> {
        let mut rules = Vec::new();
        let mut default = None;
        for (flag, action, dests) in
            [("--block", Action::Block, &sources.block), ("--allow", Action::Allow, &sources.allow)]
        {
            rules.extend(dests.iter().map(|d| SourcedRule {
                rule: Rule { action, dest: d.clone() },
                origin: Origin::Flag(flag),
            }));
        }
        for path in &sources.block_lists {
            read_list(path, Action::Block, &mut rules)?;
        }
        for path in &sources.allow_lists {
            read_list(path, Action::Allow, &mut rules)?;
        }
        if let Some(path) = &sources.policy {
            default = read_policy(path, &mut rules)?;
        }
        dedup(&mut rules);
        Ok(Self { default: sources.default.or(default).unwrap_or(Action::Allow), rules })
    }

    /// The hostnames its rules name.
    #[must_use]
    pub fn names(&self) -> BTreeSet<String> {
        self.rules
            .iter()
            .filter_map(|r| match &r.rule.dest.host {
                Host::Name(name) => Some(name.clone()),
                Host::Net(_) => None,
            })
            .collect()
    }

    /// The rules as the table compiler takes them, with hostnames replaced by the addresses
    /// `addrs_of` gives; rule ids are positions from 1.
    pub fn table_rules<'a, I>(
        &'a self,
        addrs_of: impl Fn(&str) -> I + 'a,
    ) -> impl Iterator<Item = TableRule> + 'a
    where
        I: IntoIterator<Item = IpAddr> + 'a,
    {
        self.rules.iter().zip(1u32..).flat_map(move |(sourced, id)| {
            let rule = &sourced.rule;
            let nets: Vec<IpNet> = match &rule.dest.host {
                Host::Net(net) => vec![*net],
                Host::Name(name) => addrs_of(name).into_iter().map(IpNet::from).collect(),
            };
            nets.into_iter().map(move |net| TableRule {
                net,
                ports: rule.dest.ports,
                proto: rule.dest.proto,
                action: rule.action,
                id,
            })
        })
    }
}

fn read_text(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path)
        .map_err(|source| PolicyError::Read { path: path.to_owned(), source })
}

/// A list file: one rule a line, in the forms public blocklists ship. `#` and `;` start a
/// comment (netset headers, Spamhaus DROP's `1.2.3.0/24 ; SBL123`); blank lines are
/// skipped; a count may follow the rule (ipsum's `1.2.3.4<TAB>7`). Anything else after the
/// rule is an error: a line is never read as less than it says.
fn read_list(path: &Path, action: Action, rules: &mut Vec<SourcedRule>) -> Result<(), PolicyError> {
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

/// Drops every rule that repeats an earlier one (the same action and destination), so a
/// rule given twice counts once, numbered where it first appears.
fn dedup(rules: &mut Vec<SourcedRule>) {
    let mut seen = HashSet::with_capacity(rules.len());
    let first: Vec<bool> = rules.iter().map(|r| seen.insert(&r.rule)).collect();
    drop(seen);
    let mut first = first.into_iter();
    rules.retain(|_| first.next().unwrap_or(true));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    default: Option<Spanned<String>>,
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

impl RuleEntry {
    /// Its destination, built from its fields by the rule language's one constructor.
    fn destination(&self) -> Result<Destination, (std::ops::Range<usize>, RuleError)> {
        let dst = self.dst.get_ref().trim();
        let ports = self.ports.as_ref().map(|p| match p.get_ref() {
            PortsValue::Number(n) => n.to_string(),
            PortsValue::Text(t) => t.clone(),
        });
        let proto = self.proto.as_ref().map(|p| p.get_ref().as_str());
        Destination::from_parts(dst, dst, ports.as_deref(), proto).map_err(|error| {
            // The error's line is that of the field it is about.
            let field = match error {
                RuleError::Port { .. } | RuleError::ReversedPorts { .. } => {
                    self.ports.as_ref().map(Spanned::span)
                }
                RuleError::Proto { .. } => self.proto.as_ref().map(Spanned::span),
                _ => None,
            };
            (field.unwrap_or_else(|| self.dst.span()), error)
        })
    }
}

#[derive(Deserialize)]
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

/// A TOML policy file; returns its `default`, if it has one.
fn read_policy(path: &Path, rules: &mut Vec<SourcedRule>) -> Result<Option<Action>, PolicyError> {
    let text = read_text(path)?;
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let file: PolicyFile = toml::from_str(&text).map_err(|e| PolicyError::Toml {
        path: path.to_owned(),
        line: e.span().map_or(1, |s| line_of(s.start)),
        message: e.message().to_owned(),
    })?;
    let shared: Arc<Path> = Arc::from(path);
    let at = |span: std::ops::Range<usize>| Origin::Line {
        path: Arc::clone(&shared),
        line: line_of(span.start),
    };
    let fail = |span, error| PolicyError::Rule { origin: at(span), error };
    let action = |v: &Spanned<String>| v.get_ref().parse::<Action>().map_err(|e| fail(v.span(), e));
    let default = file.default.as_ref().map(action).transpose()?;
    for entry in &file.rule {
        let dest = entry.destination().map_err(|(span, error)| fail(span, error))?;
        rules.push(SourcedRule {
            rule: Rule { action: action(&entry.action)?, dest },
            origin: at(entry.dst.span()),
        });
    }
    let base = path.parent().unwrap_or(Path::new("."));
    for list in &file.list {
        let list_action = action(&list.action)?;
        read_list(&base.join(list.path.get_ref()), list_action, rules)?;
    }
    Ok(default)
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
        assert_eq!(p.rules[0].origin, Origin::Line { path: Arc::from(path.as_path()), line: 5 });
        assert_eq!(
            p.rules[3].origin.to_string(),
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
        assert_eq!(p.rules[2].origin.to_string(), format!("{}:1", a.display()));
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
            Just("default = \"allw\"\n".to_owned()),
            Just("[[rule]]\n".to_owned()),
            Just("[[list]]\n".to_owned()),
            Just("action = \"block\"\n".to_owned()),
            Just("action = \"blok\"\n".to_owned()),
            Just("path = \"missing.txt\"\n".to_owned()),
            Just("ports = 443\n".to_owned()),
            Just("ports = -1\n".to_owned()),
            Just("proto = \"udp\"\n".to_owned()),
            "dst = \"\\\\PC{0,20}\"\n",
            "ports = \"[0-9-]{0,12}\"\n",
            "proto = \"[a-z]{0,4}\"\n",
            "\\PC{0,30}\n",
        ]
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
