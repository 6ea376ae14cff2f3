//! Events, observers, and the metric helpers every layer uses.
//!
//! A layer reports typed events (its own event enum: a breaker's state change, a
//! call's outcome, a rejection) to an [`Observer`]. The default observer of each
//! layer records metrics through the [`metrics`] facade and logs notable events with
//! [`tracing`]; users add their own observers (closures work) for alerts or tests.
//!
//! Metric names follow one scheme, built by [`metric_name`]:
//! `palisade_<layer>_<what>_<unit>[_total]`. The only label whose values come from
//! outside the code is `downstream` (a checked [`Name`](crate::Name)); every other
//! label (`outcome`, `state`, `reason`, `kind`) has a closed set of values that is
//! registered, at zero, when the layer is built ([`LabelValue`], [`CounterSet`],
//! [`GaugeSet`]). Handles are registered once, so recording a metric on the hot path
//! is an atomic operation, not an allocation.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use metrics::{Counter, Gauge, Key, Label, Level, Metadata, Unit};

/// Receives a layer's events. Implemented for closures `Fn(&Ev)`.
///
/// Observers run inline on the call path: keep them cheap and never block.
pub trait Observer<Ev>: Send + Sync + 'static {
    /// Called once per event.
    fn observe(&self, event: &Ev);
}

impl<Ev, F> Observer<Ev> for F
where
    F: Fn(&Ev) + Send + Sync + 'static,
{
    fn observe(&self, event: &Ev) {
        self(event)
    }
}

/// An observer that does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopObserver;

impl<Ev> Observer<Ev> for NoopObserver {
    fn observe(&self, _event: &Ev) {}
}

/// A list of observers called in order: a layer's default metrics observer plus any
/// the user added. Cloning shares the list.
pub struct Observers<Ev> {
    list: Arc<[Arc<dyn Observer<Ev>>]>,
}

impl<Ev> Clone for Observers<Ev> {
    fn clone(&self) -> Self {
        Self {
            list: Arc::clone(&self.list),
        }
    }
}

impl<Ev> fmt::Debug for Observers<Ev> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Observers({})", self.list.len())
    }
}

impl<Ev: 'static> Observers<Ev> {
    /// The observers in `list`, called in that order.
    pub fn new(list: Vec<Arc<dyn Observer<Ev>>>) -> Self {
        Self { list: list.into() }
    }

    /// Whether there are none (a layer can then skip building events).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Reports `event` to every observer.
    #[inline]
    pub fn emit(&self, event: &Ev) {
        for o in self.list.iter() {
            o.observe(event);
        }
    }
}

/// A metric label whose values form a closed set, registered (at zero) up front.
pub trait LabelValue: Copy + 'static {
    /// The label's name, e.g. `outcome`.
    const LABEL: &'static str;
    /// Every value, in [`LabelValue::index`] order.
    const ALL: &'static [Self];
    /// The value as a label string.
    fn as_label(self) -> &'static str;
    /// The value's position in [`LabelValue::ALL`].
    fn index(self) -> usize;
}

/// Builds a metric name in Palisade's scheme: `palisade_<layer>_<what>[_<unit>]`,
/// with `_total` appended for counters.
///
/// ```
/// use palisade_core::observe::metric_name;
/// assert_eq!(metric_name("breaker", "calls", None, true), "palisade_breaker_calls_total");
/// assert_eq!(metric_name("breaker", "failure_rate", Some("ratio"), false), "palisade_breaker_failure_rate_ratio");
/// ```
pub fn metric_name(layer: &str, what: &str, unit: Option<&str>, counter: bool) -> String {
    let mut name = format!("palisade_{layer}_{what}");
    if let Some(unit) = unit {
        name.push('_');
        name.push_str(unit);
    }
    if counter {
        name.push_str("_total");
    }
    name
}

/// Registers metrics for one layer instance: every metric carries the
/// `downstream="<name>"` label. Registration allocates; recording through the returned
/// handles does not.
#[derive(Debug, Clone)]
pub struct MetricScope {
    layer: &'static str,
    downstream: crate::Name,
}

static METADATA: Metadata<'static> = Metadata::new("palisade", Level::INFO, Some("palisade"));

impl MetricScope {
    /// A scope for `layer` (e.g. `breaker`) of `downstream`.
    pub fn new(layer: &'static str, downstream: crate::Name) -> Self {
        Self { layer, downstream }
    }

    /// The downstream name.
    pub fn downstream(&self) -> &crate::Name {
        &self.downstream
    }

    fn key(&self, name: String, extra: &[(&'static str, &'static str)]) -> Key {
        let mut labels = Vec::with_capacity(1 + extra.len());
        labels.push(Label::new(
            "downstream",
            self.downstream.as_str().to_owned(),
        ));
        labels.extend(extra.iter().map(|(k, v)| Label::new(*k, *v)));
        Key::from_parts(name, labels)
    }

    /// A counter `palisade_<layer>_<what>_total`, registered at zero.
    pub fn counter(&self, what: &str, help: &'static str) -> Counter {
        self.counter_with(what, help, &[])
    }

    /// A counter with extra fixed labels, registered at zero.
    pub fn counter_with(
        &self,
        what: &str,
        help: &'static str,
        labels: &[(&'static str, &'static str)],
    ) -> Counter {
        let name = metric_name(self.layer, what, None, true);
        metrics::with_recorder(|r| {
            r.describe_counter(name.clone().into(), None, help.into());
            let c = r.register_counter(&self.key(name, labels), &METADATA);
            c.increment(0);
            c
        })
    }

    /// A gauge `palisade_<layer>_<what>[_<unit>]`, registered at zero.
    pub fn gauge(&self, what: &str, unit: Option<&str>, help: &'static str) -> Gauge {
        self.gauge_with(what, unit, help, &[])
    }

    /// A gauge with extra fixed labels, registered at zero.
    pub fn gauge_with(
        &self,
        what: &str,
        unit: Option<&str>,
        help: &'static str,
        labels: &[(&'static str, &'static str)],
    ) -> Gauge {
        let name = metric_name(self.layer, what, unit, false);
        let metric_unit = unit.and_then(Unit::from_string);
        metrics::with_recorder(|r| {
            r.describe_gauge(name.clone().into(), metric_unit, help.into());
            let g = r.register_gauge(&self.key(name, labels), &METADATA);
            g.set(0.0);
            g
        })
    }

    /// One counter per value of the closed label `L`, each registered at zero.
    pub fn counter_set<L: LabelValue>(&self, what: &str, help: &'static str) -> CounterSet<L> {
        CounterSet {
            counters: L::ALL
                .iter()
                .map(|v| self.counter_with(what, help, &[(L::LABEL, v.as_label())]))
                .collect(),
            _label: PhantomData,
        }
    }

    /// One gauge per value of the closed label `L`, each registered at zero.
    pub fn gauge_set<L: LabelValue>(
        &self,
        what: &str,
        unit: Option<&str>,
        help: &'static str,
    ) -> GaugeSet<L> {
        GaugeSet {
            gauges: L::ALL
                .iter()
                .map(|v| self.gauge_with(what, unit, help, &[(L::LABEL, v.as_label())]))
                .collect(),
            _label: PhantomData,
        }
    }
}

/// Counters for every value of a closed label, registered at zero.
pub struct CounterSet<L> {
    counters: Box<[Counter]>,
    _label: PhantomData<fn(L)>,
}

impl<L: LabelValue> CounterSet<L> {
    /// The counter for `value`.
    #[inline]
    pub fn get(&self, value: L) -> &Counter {
        &self.counters[value.index()]
    }
}

impl<L> fmt::Debug for CounterSet<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CounterSet({})", self.counters.len())
    }
}

/// Gauges for every value of a closed label, registered at zero.
pub struct GaugeSet<L> {
    gauges: Box<[Gauge]>,
    _label: PhantomData<fn(L)>,
}

impl<L: LabelValue> GaugeSet<L> {
    /// The gauge for `value`.
    #[inline]
    pub fn get(&self, value: L) -> &Gauge {
        &self.gauges[value.index()]
    }

    /// Sets the gauge of `value` to 1 and every other to 0: a one-hot state gauge.
    pub fn set_one_hot(&self, value: L) {
        for (i, g) in self.gauges.iter().enumerate() {
            g.set(if i == value.index() { 1.0 } else { 0.0 });
        }
    }
}

impl<L> fmt::Debug for GaugeSet<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GaugeSet({})", self.gauges.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Color {
        Red,
        Blue,
    }

    impl LabelValue for Color {
        const LABEL: &'static str = "color";
        const ALL: &'static [Self] = &[Color::Red, Color::Blue];
        fn as_label(self) -> &'static str {
            match self {
                Color::Red => "red",
                Color::Blue => "blue",
            }
        }
        fn index(self) -> usize {
            self as usize
        }
    }

    #[test]
    fn closed_label_sets_are_zero_filled() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let scope = MetricScope::new("test", crate::Name::new("svc").unwrap());
            let set: CounterSet<Color> = scope.counter_set("paints", "Paints by colour.");
            set.get(Color::Blue).increment(2);
            let gauges: GaugeSet<Color> = scope.gauge_set("lit", None, "Lit colour.");
            gauges.set_one_hot(Color::Red);
        });
        let snapshot = snapshotter.snapshot().into_vec();
        let mut seen: Vec<(String, String, String)> = snapshot
            .into_iter()
            .map(|(key, _, _, value)| {
                let key = key.key().clone();
                let color = key
                    .labels()
                    .find(|l| l.key() == "color")
                    .map(|l| l.value().to_owned())
                    .unwrap();
                assert!(
                    key.labels()
                        .any(|l| l.key() == "downstream" && l.value() == "svc")
                );
                let v = match value {
                    DebugValue::Counter(c) => c.to_string(),
                    DebugValue::Gauge(g) => g.into_inner().to_string(),
                    DebugValue::Histogram(_) => unreachable!(),
                };
                (key.name().to_owned(), color, v)
            })
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            vec![
                ("palisade_test_lit".into(), "blue".into(), "0".into()),
                ("palisade_test_lit".into(), "red".into(), "1".into()),
                (
                    "palisade_test_paints_total".into(),
                    "blue".into(),
                    "2".into()
                ),
                (
                    "palisade_test_paints_total".into(),
                    "red".into(),
                    "0".into()
                ),
            ]
        );
    }

    #[test]
    fn observers_are_called_in_order() {
        use std::sync::Mutex;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (a, b) = (log.clone(), log.clone());
        let observers: Observers<u32> = Observers::new(vec![
            Arc::new(move |e: &u32| a.lock().unwrap().push(("a", *e))),
            Arc::new(move |e: &u32| b.lock().unwrap().push(("b", *e))),
        ]);
        observers.emit(&7);
        assert_eq!(*log.lock().unwrap(), vec![("a", 7), ("b", 7)]);
    }
}
