//! What changed between two configs, per downstream and policy section, so a reload
//! can rebuild only what changed and keep the state of the rest.

use std::fmt;

use super::{Config, DownstreamConfig, InboundConfig};

/// A policy section of a downstream (or of `inbound`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Section {
    /// `breaker`
    Breaker,
    /// `retry`
    Retry,
    /// `hedge`
    Hedge,
    /// `timeout`
    Timeout,
    /// `deadline`
    Deadline,
    /// `rate_limit`
    RateLimit,
    /// `bulkhead`
    Bulkhead,
    /// `adaptive`
    Adaptive,
    /// `throttle`
    Throttle,
    /// `balance`
    Balance,
    /// `cache`
    Cache,
    /// `fallback`
    Fallback,
    /// `shed` (inbound only)
    Shed,
    /// `name` (inbound only)
    Name,
}

impl Section {
    /// The section's key in the file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Section::Breaker => "breaker",
            Section::Retry => "retry",
            Section::Hedge => "hedge",
            Section::Timeout => "timeout",
            Section::Deadline => "deadline",
            Section::RateLimit => "rate_limit",
            Section::Bulkhead => "bulkhead",
            Section::Adaptive => "adaptive",
            Section::Throttle => "throttle",
            Section::Balance => "balance",
            Section::Cache => "cache",
            Section::Fallback => "fallback",
            Section::Shed => "shed",
            Section::Name => "name",
        }
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a section changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// The section was absent and is now set: a layer to add.
    Added,
    /// The section was set and is now absent: a layer to remove.
    Removed,
    /// The section is set in both, with different settings: a layer to retune
    /// (keeping its state where the layer allows, e.g. a breaker's).
    Changed,
}

/// One section that changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SectionChange {
    /// Which section.
    pub section: Section,
    /// How.
    pub kind: ChangeKind,
}

impl fmt::Display for SectionChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ChangeKind::Added => "added",
            ChangeKind::Removed => "removed",
            ChangeKind::Changed => "changed",
        };
        write!(f, "{} {kind}", self.section)
    }
}

/// The sections of one downstream that changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownstreamDiff {
    /// The downstream.
    pub name: String,
    /// Its changed sections, in the file's section order.
    pub sections: Vec<SectionChange>,
}

/// What changed from one config to the next; see [`Config::diff`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConfigDiff {
    /// Downstreams only the new config names.
    pub added: Vec<String>,
    /// Downstreams only the old config names.
    pub removed: Vec<String>,
    /// Downstreams in both whose policies differ.
    pub changed: Vec<DownstreamDiff>,
    /// Changed inbound sections (`inbound` itself appearing or going away shows as
    /// every section it sets being added or removed).
    pub inbound: Vec<SectionChange>,
    /// Whether the metrics settings changed.
    pub metrics: bool,
}

impl ConfigDiff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && self.inbound.is_empty()
            && !self.metrics
    }

    /// The changed sections of downstream `name` (empty if it did not change or is
    /// new or gone).
    pub fn sections_of(&self, name: &str) -> &[SectionChange] {
        self.changed
            .iter()
            .find(|d| d.name == name)
            .map_or(&[], |d| &d.sections)
    }
}

fn compare<T: PartialEq>(
    out: &mut Vec<SectionChange>,
    section: Section,
    old: &Option<T>,
    new: &Option<T>,
) {
    let kind = match (old, new) {
        (None, Some(_)) => ChangeKind::Added,
        (Some(_), None) => ChangeKind::Removed,
        (Some(a), Some(b)) if a != b => ChangeKind::Changed,
        _ => return,
    };
    out.push(SectionChange { section, kind });
}

impl DownstreamConfig {
    /// The sections that differ from `self` to `new`.
    pub fn diff(&self, new: &DownstreamConfig) -> Vec<SectionChange> {
        let mut out = Vec::new();
        compare(&mut out, Section::Breaker, &self.breaker, &new.breaker);
        compare(&mut out, Section::Retry, &self.retry, &new.retry);
        compare(&mut out, Section::Hedge, &self.hedge, &new.hedge);
        compare(&mut out, Section::Timeout, &self.timeout, &new.timeout);
        compare(&mut out, Section::Deadline, &self.deadline, &new.deadline);
        compare(
            &mut out,
            Section::RateLimit,
            &self.rate_limit,
            &new.rate_limit,
        );
        compare(&mut out, Section::Bulkhead, &self.bulkhead, &new.bulkhead);
        compare(&mut out, Section::Adaptive, &self.adaptive, &new.adaptive);
        compare(&mut out, Section::Throttle, &self.throttle, &new.throttle);
        compare(&mut out, Section::Balance, &self.balance, &new.balance);
        compare(&mut out, Section::Cache, &self.cache, &new.cache);
        compare(&mut out, Section::Fallback, &self.fallback, &new.fallback);
        out
    }
}

impl InboundConfig {
    /// The sections that differ from `self` to `new`.
    pub fn diff(&self, new: &InboundConfig) -> Vec<SectionChange> {
        let mut out = Vec::new();
        if self.name != new.name {
            out.push(SectionChange {
                section: Section::Name,
                kind: ChangeKind::Changed,
            });
        }
        compare(
            &mut out,
            Section::RateLimit,
            &self.rate_limit,
            &new.rate_limit,
        );
        compare(&mut out, Section::Shed, &self.shed, &new.shed);
        compare(&mut out, Section::Adaptive, &self.adaptive, &new.adaptive);
        compare(&mut out, Section::Deadline, &self.deadline, &new.deadline);
        out
    }
}

impl Config {
    /// What changed from `self` to `new`: downstreams added, removed, and the
    /// sections of each that changed; inbound sections; metrics settings.
    ///
    /// ```
    /// use palisade::config::{ChangeKind, Config, Format, Section};
    ///
    /// let old = Config::parse(r#"
    ///     [downstreams.customer.breaker]
    ///     failure_rate_threshold = 0.5
    ///     [downstreams.inventory]
    ///     timeout = "1s"
    /// "#, Format::Toml).unwrap();
    /// let new = Config::parse(r#"
    ///     [downstreams.customer.breaker]
    ///     failure_rate_threshold = 0.3
    ///     [downstreams.customer.retry]
    ///     max_attempts = 2
    ///     [downstreams.payment]
    ///     timeout = "2s"
    /// "#, Format::Toml).unwrap();
    ///
    /// let diff = old.diff(&new);
    /// assert_eq!(diff.added, ["payment"]);
    /// assert_eq!(diff.removed, ["inventory"]);
    /// let customer = diff.sections_of("customer");
    /// assert_eq!(customer.len(), 2);
    /// assert_eq!((customer[0].section, customer[0].kind), (Section::Breaker, ChangeKind::Changed));
    /// assert_eq!((customer[1].section, customer[1].kind), (Section::Retry, ChangeKind::Added));
    /// assert!(new.diff(&new).is_empty());
    /// ```
    pub fn diff(&self, new: &Config) -> ConfigDiff {
        let mut diff = ConfigDiff::default();
        for (name, old) in &self.downstreams {
            match new.downstreams.get(name) {
                None => diff.removed.push(name.clone()),
                Some(n) => {
                    let sections = old.diff(n);
                    if !sections.is_empty() {
                        diff.changed.push(DownstreamDiff {
                            name: name.clone(),
                            sections,
                        });
                    }
                }
            }
        }
        diff.added = new
            .downstreams
            .keys()
            .filter(|name| !self.downstreams.contains_key(*name))
            .cloned()
            .collect();
        let none = InboundConfig {
            name: new
                .inbound
                .as_ref()
                .or(self.inbound.as_ref())
                .map_or_else(String::new, |i| i.name.clone()),
            ..InboundConfig::default()
        };
        let old_inbound = self.inbound.as_ref().unwrap_or(&none);
        let new_inbound = new.inbound.as_ref().unwrap_or(&none);
        diff.inbound = old_inbound.diff(new_inbound);
        diff.metrics = self.metrics != new.metrics;
        diff
    }
}
