//! The rules in force, as they were swapped in: every swap (start, add, remove, reload,
//! hostname refresh) saves the texts of the rules it put in force, each with its id and
//! where it came from, in the instance's state folder (`rules`, root-only, replaced
//! atomically). `list`, `stats`, events and metrics name rules from this record, never by
//! reading the policy files again: a file edited since, or no longer readable, changes
//! nothing that is reported until it is reloaded.
//!
//! The file is text, one item a line, written in the order the rules were read:
//!
//! ```text
//! cgroup-connect rules 1
//! default allow
//! source 1 file "/etc/cgroup-connect/web.toml"
//! block 10.0.0.0/8 1:5
//! source 2 flag --block
//! block tcp://example.com:443 2 192.0.2.1 2001:db8::1
//! source 3 live
//! allow 10.1.2.3 3
//! ```
//!
//! A `source N` line names a source before its first rule (`file` with its path as a JSON
//! string, `flag` with the flag, `live` for `blocker add`). Every other line after `default`
//! is a rule: action, destination, its source (`N:LINE` for a file), then, for a hostname,
//! the addresses it stood for. Rule ids count the rule lines from 1, as the tables do.
use std::{
    collections::HashMap,
    fmt::Write as _,
    fs, io,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::PathBuf,
};

use crate::{
    pins::InstancePaths,
    policy::{Origin, Policy, Rules, Source},
    rules::{Action, Destination, Host, Rule},
};

/// The first line of a record.
const HEADER: &str = "cgroup-connect rules 1";

/// Why the record of an instance's rules could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(
        "instance {name} has no record of its rules in force (it was started by an older version): `blocker reload {name}` records them"
    )]
    Missing { name: String },
    #[error("cannot read the rules in force of instance {name} ({})", path.display())]
    Read {
        name: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the record of the rules in force of instance {name} ({}) is damaged at line {line}: `blocker reload {name}` writes it again", path.display())]
    Damaged { name: String, path: PathBuf, line: usize },
    #[error("cannot save the rules in force of instance {name}")]
    Write {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// A record of a policy, ready to be saved: its text, or the file it was written to as it was
/// made ([`Record::write`]).
pub struct Record {
    /// Empty once [`Record::prepare`] wrote it, or when it was written as it was made.
    text: String,
    /// The file [`Record::write`] made, until [`Record::prepare`] hands it on.
    written: Option<Written>,
}

/// A record's file written as it was made, removed if dropped before it is prepared.
struct Written {
    tmp: PathBuf,
}

impl Drop for Written {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

impl Record {
    /// The record of `policy`, with each hostname's addresses from `addrs_of`.
    ///
    /// # Panics
    /// Never: writing to memory does not fail, and a record is text.
    pub fn of<I>(policy: &Policy, addrs_of: impl Fn(&str) -> I) -> Self
    where
        I: IntoIterator<Item = std::net::IpAddr>,
    {
        let mut text = Vec::with_capacity(policy.rules.len() * 24 + 64);
        write_record(policy, addrs_of, &mut text).expect("writing to memory does not fail");
        let text = String::from_utf8(text).expect("a record is text");
        Self { text, written: None }
    }

    /// The record of `policy` written as it is made (not held in memory: 28 bytes or so a
    /// rule): when the instance's lock is held (`locked`), to where [`Record::prepare`] would
    /// write it, next to the record in force (the state folder must exist); else to a file of
    /// this process's in the folder that holds the state folders (which must exist), so that a
    /// start makes no instance folder before it attaches. Dropped before it is prepared, the
    /// file is removed.
    ///
    /// # Errors
    /// [`RecordError::Write`].
    pub fn write<I>(
        policy: &Policy,
        addrs_of: impl Fn(&str) -> I,
        paths: &InstancePaths,
        locked: bool,
    ) -> Result<Self, RecordError>
    where
        I: IntoIterator<Item = std::net::IpAddr>,
    {
        let err = |source| RecordError::Write { name: paths.name.clone(), source };
        let tmp = if locked {
            paths.state.join(format!("{RULES_FILE}.new"))
        } else {
            let root = paths.state.parent().unwrap_or(&paths.state);
            root.join(format!(".{}.{RULES_FILE}.new.{}", paths.name, std::process::id()))
        };
        let written = Written { tmp };
        let open = || {
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&written.tmp)
        };
        // The folder of all state folders goes with the last instance's detach, which another
        // process may run at any time until this file is in it: made again, a few times.
        let mut file = open();
        for _ in 0..3 {
            match &file {
                Err(e) if !locked && e.kind() == io::ErrorKind::NotFound => {
                    InstancePaths::create_state_root().map_err(|e| err(io::Error::other(e)))?;
                    file = open();
                }
                _ => break,
            }
        }
        let file = file.map_err(err)?;
        let mut out = io::BufWriter::with_capacity(1 << 16, file);
        write_record(policy, addrs_of, &mut out).map_err(err)?;
        out.into_inner().map_err(|e| err(e.into_error()))?.sync_all().map_err(err)?;
        Ok(Self { text: String::new(), written: Some(written) })
    }

    /// What it records, as [`read`] gives it back once saved.
    ///
    /// # Panics
    /// Never: [`Record::of`] writes only lines a record holds.
    #[must_use]
    pub fn recorded(&self) -> Recorded {
        parse(&self.text).expect("a record parses")
    }

    /// The rule texts it holds, by id.
    #[must_use]
    pub fn texts(&self) -> RuleTexts {
        RuleTexts::parse(&self.text).unwrap_or_else(|_| RuleTexts::empty())
    }

    /// Writes it next to the record in force (a new file, root-only, never through a link),
    /// to be put in force by [`Pending::commit`] once its rules are; a record written as it
    /// was made is that file already. Its text is let go then (it is not held beside the
    /// tables while they are written into the kernel).
    ///
    /// # Errors
    /// [`RecordError::Write`].
    pub fn prepare(&mut self, paths: &InstancePaths) -> Result<Pending, RecordError> {
        let err = |source| RecordError::Write { name: paths.name.clone(), source };
        let dest = paths.rules_file();
        if let Some(mut written) = self.written.take() {
            let tmp = std::mem::take(&mut written.tmp);
            return Ok(Pending { tmp, dest, name: paths.name.clone() });
        }
        let tmp = paths.state.join(format!("{RULES_FILE}.new"));
        let pending = Pending { tmp: tmp.clone(), dest, name: paths.name.clone() };
        crate::state::write_private(&tmp, self.text.as_bytes()).map_err(err)?;
        self.text = String::new();
        Ok(pending)
    }
}

/// Writes the record of `policy` to `out`, with each hostname's addresses from `addrs_of`.
fn write_record<I>(
    policy: &Policy,
    addrs_of: impl Fn(&str) -> I,
    out: &mut impl io::Write,
) -> io::Result<()>
where
    I: IntoIterator<Item = std::net::IpAddr>,
{
    writeln!(out, "{HEADER}\ndefault {}", policy.default)?;
    let mut sources: HashMap<Source, usize> = HashMap::new();
    let mut last: Option<(Source, usize)> = None;
    for r in policy.rules.iter() {
        let key = Source::of(&r.origin).0;
        let n = match &last {
            Some((k, n)) if *k == key => *n,
            _ => {
                let next = sources.len() + 1;
                let n = if let Some(&n) = sources.get(&key) {
                    n
                } else {
                    match &r.origin {
                        Origin::Flag(flag) => writeln!(out, "source {next} flag {flag}")?,
                        Origin::Line { path, .. } => {
                            let path = path.display().to_string();
                            let quoted = serde_json::to_string(&path).unwrap_or_default();
                            writeln!(out, "source {next} file {quoted}")?;
                        }
                        Origin::Live => writeln!(out, "source {next} live")?,
                    }
                    sources.insert(key.clone(), next);
                    next
                };
                last = Some((key, n));
                n
            }
        };
        write!(out, "{} {} {n}", r.rule.action, r.rule.dest)?;
        if let Origin::Line { line, .. } = r.origin {
            write!(out, ":{line}")?;
        }
        if let Host::Name(name) = &r.rule.dest.host {
            for addr in addrs_of(name) {
                write!(out, " {addr}")?;
            }
        }
        writeln!(out)?;
    }
    Ok(())
}

/// Name of the record in an instance's state folder.
pub const RULES_FILE: &str = "rules";

/// A record written but not yet in force; dropped uncommitted, it is removed.
pub struct Pending {
    tmp: PathBuf,
    dest: PathBuf,
    name: String,
}

impl Pending {
    /// Puts the record in force (renames it over the old one).
    ///
    /// # Errors
    /// [`RecordError::Write`].
    pub fn commit(self) -> Result<(), RecordError> {
        let result = fs::rename(&self.tmp, &self.dest)
            .map_err(|source| RecordError::Write { name: self.name.clone(), source });
        std::mem::forget(self);
        result
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

/// A recorded rule, as `blocker list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRule {
    pub id: usize,
    pub action: Action,
    /// The destination, as written in the rule language.
    pub rule: String,
    /// Where it came from: `FILE:LINE`, the flag, or `blocker add`.
    pub origin: String,
    /// A hostname's addresses when it was put in force.
    pub addrs: Vec<String>,
}

/// The whole record of an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub default: Action,
    pub rules: Vec<RecordedRule>,
}

/// The text of the record in force, and the identity of its file (which changes with each
/// swap: a new file is renamed over the old).
fn read_text(paths: &InstancePaths) -> Result<(String, FileId), RecordError> {
    let (file, id) = open(paths)?;
    let text = io::read_to_string(file).map_err(|source| read_error(paths, source))?;
    Ok((text, id))
}

fn read_error(paths: &InstancePaths, source: io::Error) -> RecordError {
    RecordError::Read { name: paths.name.clone(), path: paths.rules_file(), source }
}

/// The record in force, open, and the identity of its file.
fn open(paths: &InstancePaths) -> Result<(fs::File, FileId), RecordError> {
    let path = paths.rules_file();
    let file =
        fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&path).map_err(
            |source| {
                if source.kind() == io::ErrorKind::NotFound {
                    RecordError::Missing { name: paths.name.clone() }
                } else {
                    RecordError::Read { name: paths.name.clone(), path: path.clone(), source }
                }
            },
        )?;
    let id = FileId::of(&file.metadata().map_err(|source| read_error(paths, source))?);
    Ok((file, id))
}

/// What tells one record file from the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    ino: u64,
    mtime: i64,
    mtime_ns: i64,
    len: u64,
}

impl FileId {
    fn of(m: &fs::Metadata) -> Self {
        Self { ino: m.ino(), mtime: m.mtime(), mtime_ns: m.mtime_nsec(), len: m.len() }
    }

    /// The identity of the record in force now, if there is one.
    #[must_use]
    pub fn now(paths: &InstancePaths) -> Option<Self> {
        fs::symlink_metadata(paths.rules_file()).ok().map(|m| Self::of(&m))
    }
}

/// Reads the whole record of an instance.
///
/// # Errors
/// A [`RecordError`].
pub fn read(paths: &InstancePaths) -> Result<Recorded, RecordError> {
    let (text, _) = read_text(paths)?;
    parse(&text).map_err(|line| RecordError::Damaged {
        name: paths.name.clone(),
        path: paths.rules_file(),
        line,
    })
}

/// The whole record in `text`; `Err(line)` for the first line that is not a record's.
fn parse(text: &str) -> Result<Recorded, usize> {
    let mut lines = text.lines().enumerate().map(|(n, l)| (n + 1, l));
    let (mut default, mut sources, mut rules) = (None, HashMap::new(), Vec::new());
    for (n, line) in &mut lines {
        match Item::parse(line).ok_or(n)? {
            Item::Header => {}
            Item::Default(action) => default = Some(action),
            Item::Source(k, origin) => {
                sources.insert(k, origin);
            }
            Item::Rule { action, dest, source, line, addrs } => {
                let origin = sources.get(source).ok_or(n)?;
                rules.push(RecordedRule {
                    id: rules.len() + 1,
                    action,
                    rule: dest.to_owned(),
                    origin: match line {
                        Some(l) => format!("{origin}:{l}"),
                        None => origin.clone(),
                    },
                    addrs: addrs.split_whitespace().map(str::to_owned).collect(),
                });
            }
        }
    }
    Ok(Recorded { default: default.ok_or(1_usize)?, rules })
}

/// The hit counts to keep across a swap, read against the record in force: each counted rule
/// (`counts`, by old id, in id order) that `new_rules` still holds, under its new id (its
/// index in `new_rules`, from 1).
///
/// This runs beside the new rule set and its tables, so it holds 8 bytes or so a counted rule
/// beside `counts`, not the rules: the record is read a line at a time, once to hash the
/// counted rules (a sorted vector of 32-bit hash and old id), and once more to check that each
/// rule of the new set whose hash matched is the old rule indeed.
///
/// # Errors
/// A [`RecordError`] ([`RecordError::Missing`] for an instance of an older version).
pub fn carried_hits<T>(
    paths: &InstancePaths,
    counts: Vec<(u32, T)>,
    new_rules: &Rules,
) -> Result<Vec<(u32, T)>, RecordError> {
    use std::hash::BuildHasher as _;
    let seed = std::hash::RandomState::new();
    let counted = |id: u32| counts.binary_search_by_key(&id, |&(i, _)| i).is_ok();
    // Half a hash is enough: a match is checked against the rule, and few rules collide.
    let half = |hash: u64| (hash >> 32) as u32;
    let mut hashes: Vec<(u32, u32)> = Vec::with_capacity(counts.len());
    each_rule(paths, |id, rule| {
        if counted(id) {
            hashes.push((half(seed.hash_one(rule()?)), id));
        }
        Some(())
    })?;
    hashes.sort_unstable();
    // (old id, new id) of each new rule whose hash is a counted rule's.
    let mut matched: Vec<(u32, u32)> = Vec::new();
    for (new, sourced) in (1u32..).zip(new_rules.iter()) {
        if hashes.is_empty() {
            break;
        }
        let hash = half(seed.hash_one(&sourced.rule));
        let from = hashes.partition_point(|&(h, _)| h < hash);
        matched.extend(
            hashes[from..].iter().take_while(|&&(h, _)| h == hash).map(|&(_, old)| (old, new)),
        );
    }
    drop(hashes);
    matched.sort_unstable();
    // A match that is not the old rule gets new id 0, in place.
    each_rule(paths, |id, rule| {
        let from = matched.partition_point(|&(old, _)| old < id);
        let mut old = None;
        for (_, new) in matched[from..].iter_mut().take_while(|(old, _)| *old == id) {
            let old = match &old {
                Some(old) => old,
                None => old.insert(rule()),
            };
            if !old
                .as_ref()
                .is_some_and(|old| new_rules.get(*new as usize - 1).is_some_and(|r| r.rule == *old))
            {
                *new = 0;
            }
        }
        Some(())
    })?;
    matched.retain(|&(_, new)| new != 0);
    let confirmed = matched;
    // A rule is in a set once, so an old id is confirmed for at most one new id.
    Ok(counts
        .into_iter()
        .filter_map(|(old, count)| {
            let at = confirmed.binary_search_by_key(&old, |&(o, _)| o).ok()?;
            Some((confirmed[at].1, count))
        })
        .collect())
}

/// Calls `each` on each rule line of the record in force with its id (from 1) and a way to
/// parse it (`None` for a rule that does not parse, which then counts for no rule).
fn each_rule(
    paths: &InstancePaths,
    mut each: impl FnMut(u32, &dyn Fn() -> Option<Rule>) -> Option<()>,
) -> Result<(), RecordError> {
    let mut id = 0u32;
    read_lines(paths, |line| {
        if let Some(Item::Rule { action, dest, .. }) = Item::parse(line) {
            id += 1;
            // A rule that does not parse is skipped, as the carry has always done.
            let _ = each(id, &|| Some(Rule { action, dest: dest.parse::<Destination>().ok()? }));
        }
        Some(())
    })?;
    Ok(())
}

/// Calls `each` on each line of the record in force, read a line at a time (a million rules
/// take about 28 MB), and returns the identity of its file; `each` returning `None` makes
/// the line [`RecordError::Damaged`].
fn read_lines(
    paths: &InstancePaths,
    mut each: impl FnMut(&str) -> Option<()>,
) -> Result<FileId, RecordError> {
    use io::BufRead as _;
    let (file, id) = open(paths)?;
    let mut reader = io::BufReader::new(file);
    let (mut line, mut n) = (String::new(), 0);
    loop {
        line.clear();
        if reader.read_line(&mut line).map_err(|source| read_error(paths, source))? == 0 {
            return Ok(id);
        }
        n += 1;
        // As `str::lines` ends a line: at `\n`, with a `\r` before it dropped.
        let text =
            line.strip_suffix('\n').map_or(line.as_str(), |l| l.strip_suffix('\r').unwrap_or(l));
        each(text).ok_or_else(|| RecordError::Damaged {
            name: paths.name.clone(),
            path: paths.rules_file(),
            line: n,
        })?;
    }
}

/// One line of a record.
enum Item<'a> {
    Header,
    Default(Action),
    /// Source number and how it reads in `list` (a file's path, a flag, `blocker add`).
    Source(&'a str, String),
    Rule {
        action: Action,
        dest: &'a str,
        source: &'a str,
        line: Option<&'a str>,
        addrs: &'a str,
    },
}

impl<'a> Item<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        if line == HEADER {
            return Some(Self::Header);
        }
        let (first, rest) = line.split_once(' ')?;
        match first {
            "default" => rest.parse().ok().map(Self::Default),
            "source" => {
                let (n, rest) = rest.split_once(' ')?;
                let shown = match rest.split_once(' ').unwrap_or((rest, "")) {
                    ("flag", flag) => flag.to_owned(),
                    ("live", "") => Origin::Live.to_string(),
                    ("file", path) => serde_json::from_str::<String>(path).ok()?,
                    _ => return None,
                };
                Some(Self::Source(n, shown))
            }
            action => {
                let action = action.parse().ok()?;
                let (dest, rest) = rest.split_once(' ')?;
                let (src, addrs) = rest.split_once(' ').unwrap_or((rest, ""));
                let (source, line) = match src.split_once(':') {
                    Some((s, l)) => (s, Some(l)),
                    None => (src, None),
                };
                Some(Self::Rule { action, dest, source, line, addrs })
            }
        }
    }
}

/// The rule texts of a record (`block 10.0.0.1`), by id, packed in one string: a
/// long-running instance keeps only these (about 20 bytes a rule).
pub struct RuleTexts {
    text: String,
    /// End of each rule's text in `text`.
    ends: Vec<usize>,
}

impl RuleTexts {
    /// No rule texts.
    #[must_use]
    pub fn empty() -> Self {
        Self { text: String::new(), ends: Vec::new() }
    }

    /// The rule texts of a record's text; `Err(line)` for a line that is not a record's.
    fn parse(record: &str) -> Result<Self, usize> {
        let mut this = Self::empty();
        for (n, line) in record.lines().enumerate() {
            this.add(line).ok_or(n + 1)?;
        }
        this.text.shrink_to_fit();
        this.ends.shrink_to_fit();
        Ok(this)
    }

    /// Adds the rule of a record's line, if it holds one; `None` for a line that is not a
    /// record's.
    fn add(&mut self, line: &str) -> Option<()> {
        match Item::parse(line)? {
            Item::Rule { action, dest, .. } => {
                let _ = write!(self.text, "{action} {dest}");
                self.ends.push(self.text.len());
            }
            Item::Header | Item::Default(_) | Item::Source(..) => {}
        }
        Some(())
    }

    /// The rule texts of the record in force of an instance, and the identity of its file.
    /// The file is read a line at a time: the record of a million rules is about 28 MB, and
    /// this runs in the serving process, beside the texts it replaces.
    ///
    /// # Errors
    /// A [`RecordError`].
    pub fn read(paths: &InstancePaths) -> Result<(Self, FileId), RecordError> {
        let mut this = Self::empty();
        let id = read_lines(paths, |line| this.add(line))?;
        this.text.shrink_to_fit();
        this.ends.shrink_to_fit();
        Ok((this, id))
    }

    /// The text of rule `id` (from 1).
    #[must_use]
    pub fn get(&self, id: u32) -> Option<&str> {
        let index = usize::try_from(id).ok()?.checked_sub(1)?;
        let end = *self.ends.get(index)?;
        let start = index.checked_sub(1).map_or(0, |i| self.ends[i]);
        self.text.get(start..end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{path::Path, sync::Arc};

    use crate::policy::SourcedRule;

    fn rule(text: &str) -> Rule {
        let (action, dest) = text.split_once(' ').unwrap();
        Rule { action: action.parse().unwrap(), dest: dest.parse().unwrap() }
    }

    #[test]
    fn a_record_names_each_rule_and_its_source() {
        let file: Arc<Path> = Arc::from(Path::new("/etc/a b\"c.toml"));
        let sourced = |text, origin| SourcedRule { rule: rule(text), origin };
        let policy = Policy {
            default: Action::Block,
            rules: vec![
                sourced("block 10.0.0.0/8", Origin::Line { path: Arc::clone(&file), line: 5 }),
                sourced("allow tcp://example.com:443", Origin::Flag("--allow")),
                sourced("block [2001:db8::/32]:80-90", Origin::Line { path: file, line: 9 }),
                sourced("block udp://10.1.2.3:53", Origin::Live),
            ]
            .into_iter()
            .collect(),
            nat64: vec![],
            allow_sockets: vec![],
        };
        let addrs: Vec<std::net::IpAddr> =
            vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()];
        let record = Record::of(&policy, |_| addrs.clone());
        let texts = record.texts();
        assert_eq!(texts.get(1), Some("block 10.0.0.0/8"));
        assert_eq!(texts.get(3), Some("block [2001:db8::/32]:80-90"));
        assert_eq!((texts.get(0), texts.get(5)), (None, None));

        let mut recorded = Vec::new();
        let mut shown_as = HashMap::new();
        for line in record.text.lines() {
            match Item::parse(line).unwrap() {
                Item::Source(n, shown) => {
                    shown_as.insert(n.to_owned(), shown);
                }
                Item::Rule { action, dest, source, line, addrs } => recorded.push(format!(
                    "{action} {dest} # {}{} {addrs}",
                    shown_as[source],
                    line.map(|l| format!(":{l}")).unwrap_or_default()
                )),
                Item::Header | Item::Default(_) => {}
            }
        }
        assert_eq!(
            recorded,
            [
                "block 10.0.0.0/8 # /etc/a b\"c.toml:5 ",
                "allow tcp://example.com:443 # --allow 192.0.2.1 2001:db8::1",
                "block [2001:db8::/32]:80-90 # /etc/a b\"c.toml:9 ",
                "block udp://10.1.2.3:53 # blocker add ",
            ]
        );
        assert_eq!(record.text.matches("source ").count(), 3, "{}", record.text);
    }
}
