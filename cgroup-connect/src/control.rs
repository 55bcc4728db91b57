//! Changing an instance: the one path every command takes to change what an instance
//! enforces. Take the instance's lock, read its state, apply the edit, compute the policy
//! (sources read now, plus live edits), resolve hostnames, compile, swap the tables, write
//! the state back. A failure at any step leaves the tables and the state as they were.
use serde::{Deserialize, Serialize};

use crate::{
    loader::Instance,
    pins::{InstancePaths, PinError},
    policy::Policy,
    resolve::Names,
    state::{Lock, State},
    table::{self, Tables},
    timings,
};

/// How many rules an instance holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Rules, as written (a hostname is one rule).
    pub rules: usize,
    /// Prefixes in the IPv4 and IPv6 tables (a hostname counts once per address).
    pub ipv4: usize,
    pub ipv6: usize,
}

/// The policy and tables of a state, with hostnames resolved through `names` (which then
/// holds exactly the policy's names).
///
/// # Errors
/// A bad source, an unresolvable new hostname, or a capacity limit.
pub async fn compile(state: &State, names: &mut Names) -> anyhow::Result<(Policy, Tables)> {
    let policy = timings::time("read", || state.policy())?;
    let started = std::time::Instant::now();
    names.sync(&policy.names()).await?;
    timings::add("resolve", started.elapsed());
    let tables = timings::time("compile", || {
        table::compile(policy.default, policy.table_rules(|name| names.addrs(name)))
    })?;
    Ok((policy, tables))
}

/// The counts of a compiled policy.
#[must_use]
pub fn counts(policy: &Policy, tables: &Tables) -> Counts {
    Counts { rules: policy.rules.len(), ipv4: tables.v4_rules, ipv6: tables.v6_rules }
}

/// Reads the state of an existing instance.
///
/// # Errors
/// [`PinError::NoInstance`] when it has none.
pub fn load(paths: &InstancePaths) -> anyhow::Result<State> {
    Ok(State::load(paths)?.ok_or_else(|| PinError::NoInstance { name: paths.name.clone() })?)
}

/// Applies `edit` to instance `paths` under its lock, then recompiles and swaps its tables.
/// Returns the new policy and its counts.
///
/// # Errors
/// Whatever `edit` refuses, or the compile or swap failure; nothing is changed then.
pub async fn apply(
    paths: &InstancePaths,
    names: &mut Names,
    edit: impl FnOnce(&mut State) -> anyhow::Result<()>,
) -> anyhow::Result<(Policy, Counts)> {
    if !paths.state.exists() {
        return Err(PinError::NoInstance { name: paths.name.clone() }.into());
    }
    let _lock = Lock::acquire(paths)?;
    let mut state = load(paths)?;
    edit(&mut state)?;
    let (policy, tables) = compile(&state, names).await?;
    let mut instance = Instance::open(paths)?;
    instance.swap(&tables)?;
    let counts = counts(&policy, &tables);
    state.counts = counts;
    state.save(paths)?;
    Ok((policy, counts))
}

/// The rule texts of a policy, packed in one string (a long-running instance keeps only
/// these, not the parsed policy: about 20 bytes a rule instead of about 90).
struct RuleTexts {
    text: String,
    /// End of each rule's text in `text`.
    ends: Vec<usize>,
}

impl RuleTexts {
    fn of(policy: &Policy) -> Self {
        let mut text = String::new();
        let mut ends = Vec::with_capacity(policy.rules.len());
        for r in &policy.rules {
            use std::fmt::Write as _;
            let _ = write!(text, "{}", r.rule);
            ends.push(text.len());
        }
        text.shrink_to_fit();
        Self { text, ends }
    }

    fn get(&self, index: usize) -> Option<&str> {
        let end = *self.ends.get(index)?;
        let start = index.checked_sub(1).map_or(0, |i| self.ends[i]);
        self.text.get(start..end)
    }
}

/// The rules of an instance as other processes may change them: re-read when the state file
/// changes. The one place that turns rule ids (in events and counters) into rule text.
pub struct PolicyView {
    paths: InstancePaths,
    texts: RuleTexts,
    seen: Option<std::time::SystemTime>,
}

impl PolicyView {
    /// A view starting from `policy`, the instance's policy now.
    #[must_use]
    pub fn new(paths: &InstancePaths, policy: &Policy) -> Self {
        let seen = Self::modified(paths);
        Self { paths: paths.clone(), texts: RuleTexts::of(policy), seen }
    }

    fn modified(paths: &InstancePaths) -> Option<std::time::SystemTime> {
        std::fs::metadata(paths.state_file()).and_then(|m| m.modified()).ok()
    }

    /// Re-reads the rules if the state changed (a source that no longer reads keeps the
    /// last rules).
    fn refresh(&mut self) {
        let now = Self::modified(&self.paths);
        if now != self.seen {
            self.seen = now;
            if let Ok(policy) = load(&self.paths).and_then(|s| Ok(s.policy()?)) {
                self.texts = RuleTexts::of(&policy);
            }
        }
    }

    /// The text of rule `id`: `default` for 0, the rule for 1..
    pub fn rule_text(&mut self, id: u32) -> String {
        match id {
            0 => "default".to_owned(),
            cgroup_connect_common::RULE_FAILED_CLOSED => {
                "no valid table (failed closed)".to_owned()
            }
            id => {
                self.refresh();
                self.texts.get(id as usize - 1).map_or_else(|| format!("rule #{id}"), str::to_owned)
            }
        }
    }
}
