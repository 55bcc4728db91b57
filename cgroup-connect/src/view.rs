//! Rule ids as people read them: events and counters name a rule by its id (its place in the
//! policy), and [`PolicyView`] is the one place that turns ids into rule texts.
use crate::{
    instance,
    loader::{Instance, LoadError},
    pins::InstancePaths,
    policy::Policy,
};

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
            if let Ok(policy) = instance::load(&self.paths).and_then(|s| Ok(s.policy()?)) {
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

    /// The `n` rules with the most hits, busiest first (ties by id): (id, text, hits).
    ///
    /// # Errors
    /// The hit counters cannot be read.
    pub fn busiest_rules(
        &mut self,
        instance: &Instance,
        n: usize,
    ) -> Result<Vec<(u32, String, u64)>, LoadError> {
        let mut hits = instance.rule_hits()?;
        hits.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        hits.truncate(n);
        Ok(hits.into_iter().map(|(id, hits)| (id, self.rule_text(id), hits)).collect())
    }
}
