//! Rule ids as people read them: events and counters name a rule by its id (its place in the
//! rule set in force), and [`PolicyView`] is the one place that turns ids into rule texts,
//! from the record of the rules in force ([`crate::record`]), never from the policy files.
use crate::{
    loader::{Instance, LoadError},
    pins::InstancePaths,
    record::{FileId, RuleTexts},
};

/// The rules in force of an instance as other processes may change them: read again from
/// its record when a swap replaced it.
pub struct PolicyView {
    paths: InstancePaths,
    texts: RuleTexts,
    seen: Option<FileId>,
}

impl PolicyView {
    /// A view of the record just put in force, read at the first lookup (not held beside the
    /// policy and its record while a start finishes; most instances name no rule for a while).
    #[must_use]
    pub fn new(paths: &InstancePaths) -> Self {
        Self { paths: paths.clone(), texts: RuleTexts::empty(), seen: None }
    }

    /// A view of the record in force of instance `paths`; while there is none that reads (an
    /// instance of an older version), rules show as `rule #ID`.
    #[must_use]
    pub fn open(paths: &InstancePaths) -> Self {
        let (texts, seen) = match RuleTexts::read(paths) {
            Ok((texts, seen)) => (texts, Some(seen)),
            Err(_) => (RuleTexts::empty(), None),
        };
        Self { paths: paths.clone(), texts, seen }
    }

    /// Reads the record again if a swap replaced it (a record that does not read keeps the
    /// last texts).
    fn refresh(&mut self) {
        let now = FileId::now(&self.paths);
        if now != self.seen
            && let Ok((texts, id)) = RuleTexts::read(&self.paths)
        {
            self.texts = texts;
            self.seen = Some(id);
        }
    }

    /// Lets the rule texts go (a reload is about to replace them): the next lookup reads the
    /// record in force.
    pub fn forget(&mut self) {
        self.texts = RuleTexts::empty();
        self.seen = None;
    }

    /// The text of rule `id`: `default` for 0, the rule for 1..
    pub fn rule_text(&mut self, id: u32) -> String {
        match id {
            0 => "default".to_owned(),
            cgroup_connect_common::RULE_FAILED_CLOSED => {
                "no valid table (failed closed)".to_owned()
            }
            cgroup_connect_common::RULE_REFUSED_SHAPE => {
                "source route, routing header, mapped address or too many headers (refused)"
                    .to_owned()
            }
            id => {
                self.refresh();
                self.texts.get(id).map_or_else(|| format!("rule #{id}"), str::to_owned)
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
