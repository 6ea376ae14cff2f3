//! Per-lane slots between the layers and the exporter's storage.
//!
//! The exporter keeps one atomic per series. Every call through a downstream
//! increments several counters, moves the in-flight gauges and records a latency
//! sample; when tasks on several cores call through one downstream, each of those
//! writes moves a cache line from core to core, and together they cost more than
//! the layers' own work. [`ShardedRecorder`] gives every counter, gauge and
//! histogram one slot per thread lane ([`lane_count`] of them, each on its own
//! cache line; threads beyond that share lanes, safely), and folds the slots into
//! the exporter's storage before the exposition is rendered and on upkeep, so what
//! a scrape reads is exact. The cost is memory: 128 bytes per lane per series
//! (2 KiB per series at 16 lanes), and one sample block per lane per histogram.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use crossbeam_utils::CachePadded;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use metrics_util::storage::AtomicBucket;
use palisade_core::lanes::{lane_count, thread_index};

/// One slot per lane; `local()` picks this thread's.
struct Slots<T> {
    slots: Box<[CachePadded<T>]>,
}

impl<T> Slots<T> {
    fn new(width: usize, make: impl Fn() -> T) -> Self {
        Self {
            slots: (0..width).map(|_| CachePadded::new(make())).collect(),
        }
    }

    #[inline]
    fn local(&self) -> &T {
        // The width is a power of two.
        &self.slots[thread_index() & (self.slots.len() - 1)]
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|s| &**s)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // What these locks guard holds no invariant a panic could break.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A counter whose increments land in this thread's slot.
struct ShardedCounter {
    inner: Counter,
    slots: Slots<AtomicU64>,
    /// Orders folds and `absolute` (cold paths only).
    fold: Mutex<()>,
}

impl ShardedCounter {
    fn fold_locked(&self) {
        let sum = self
            .slots
            .iter()
            .map(|s| s.swap(0, Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add);
        if sum > 0 {
            self.inner.increment(sum);
        }
    }

    fn flush(&self) {
        let _fold = lock(&self.fold);
        self.fold_locked();
    }
}

impl CounterFn for ShardedCounter {
    #[inline]
    fn increment(&self, value: u64) {
        self.slots.local().fetch_add(value, Ordering::Relaxed);
    }

    fn absolute(&self, value: u64) {
        // What the slots hold is counted first; the exporter then keeps the larger
        // of that and `value`.
        let _fold = lock(&self.fold);
        self.fold_locked();
        self.inner.absolute(value);
    }
}

/// A gauge whose increments and decrements land in this thread's slot (as an `f64`
/// delta). Once the gauge has had a delta, `set` takes its fold lock and folds the
/// slots first, so the value set counts after every delta made before it, and the
/// deltas made after it are folded on top.
struct ShardedGauge {
    inner: Gauge,
    slots: Slots<AtomicU64>,
    /// Set at the first increment or decrement: until then the slots hold nothing
    /// a set must come after, and a set goes straight to `inner` without the lock
    /// (gauges that are only ever set, such as a breaker's failure rate, are set on
    /// the call path).
    has_deltas: AtomicBool,
    /// Orders folds and sets.
    fold: Mutex<()>,
}

impl ShardedGauge {
    fn fold_locked(&self) {
        let zero = 0f64.to_bits();
        let sum: f64 = self
            .slots
            .iter()
            // A load first: a gauge that is only ever set keeps its slots at zero,
            // and reading them does not take their cache lines from other cores.
            .filter(|s| s.load(Ordering::Relaxed) != zero)
            .map(|s| f64::from_bits(s.swap(zero, Ordering::Relaxed)))
            .sum();
        if sum != 0.0 {
            self.inner.increment(sum);
        }
    }

    fn flush(&self) {
        let _fold = lock(&self.fold);
        self.fold_locked();
    }

    #[inline]
    fn add(&self, delta: f64) {
        if !self.has_deltas.load(Ordering::Relaxed) {
            self.has_deltas.store(true, Ordering::Relaxed);
        }
        // Few threads share a lane, and a fold's swap is rare: the update loop
        // rarely runs twice.
        let _ = self
            .slots
            .local()
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + delta).to_bits())
            });
    }
}

impl GaugeFn for ShardedGauge {
    #[inline]
    fn increment(&self, value: f64) {
        self.add(value);
    }

    #[inline]
    fn decrement(&self, value: f64) {
        self.add(-value);
    }

    fn set(&self, value: f64) {
        if !self.has_deltas.load(Ordering::Relaxed) {
            // No delta was made before this set (one made at the same time may
            // count before or after it, as with any concurrent update).
            self.inner.set(value);
            return;
        }
        let _fold = lock(&self.fold);
        self.fold_locked();
        self.inner.set(value);
    }
}

/// A histogram whose samples gather in this thread's bucket.
struct ShardedHistogram {
    inner: Histogram,
    slots: Slots<AtomicBucket<f64>>,
}

impl ShardedHistogram {
    fn flush(&self) {
        for slot in self.slots.iter() {
            slot.clear_with(|samples| {
                for &sample in samples {
                    self.inner.record(sample);
                }
            });
        }
    }
}

impl HistogramFn for ShardedHistogram {
    #[inline]
    fn record(&self, value: f64) {
        self.slots.local().push(value);
    }
}

/// Series by key, in shards by the key's hash, each behind a read-write lock:
/// registering a series that exists takes one read lock (code that calls
/// `counter!` on every request does not queue on one lock).
struct SeriesMap<T> {
    shards: Box<[Shard<T>]>,
}

/// One shard of a [`SeriesMap`].
type Shard<T> = RwLock<HashMap<Key, Arc<T>>>;

impl<T> Default for SeriesMap<T> {
    fn default() -> Self {
        Self {
            shards: (0..16).map(|_| RwLock::default()).collect(),
        }
    }
}

impl<T> SeriesMap<T> {
    fn shard(&self, key: &Key) -> &Shard<T> {
        &self.shards[(key.get_hash() as usize) & (self.shards.len() - 1)]
    }

    fn get_or_insert(&self, key: &Key, make: impl FnOnce() -> T) -> Arc<T> {
        let shard = self.shard(key);
        if let Some(found) = shard
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            return Arc::clone(found);
        }
        let mut map = shard.write().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(key.clone()).or_insert_with(|| Arc::new(make())))
    }

    /// Every series, collected so that no lock is held while they are folded.
    fn all(&self) -> Vec<Arc<T>> {
        self.shards
            .iter()
            .flat_map(|shard| {
                shard
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

/// Every sharded series, by key, to hand out one set of slots per series and to
/// fold them all on a flush. As many entries as the exporter holds series.
#[derive(Default)]
pub(crate) struct Shards {
    counters: SeriesMap<ShardedCounter>,
    gauges: SeriesMap<ShardedGauge>,
    histograms: SeriesMap<ShardedHistogram>,
    /// Held by a render or an upkeep, so that neither sees the other's values in
    /// transit.
    maintenance: Mutex<()>,
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards").finish_non_exhaustive()
    }
}

impl Shards {
    /// Waits for any render or upkeep running, and keeps others out until dropped.
    pub(crate) fn maintenance(&self) -> MutexGuard<'_, ()> {
        lock(&self.maintenance)
    }

    /// Folds every slot into the exporter's storage.
    pub(crate) fn flush(&self) {
        for c in self.counters.all() {
            c.flush();
        }
        for g in self.gauges.all() {
            g.flush();
        }
        for h in self.histograms.all() {
            h.flush();
        }
    }

    /// The histogram samples waiting in the slots.
    #[cfg(test)]
    pub(crate) fn held_samples(&self) -> usize {
        self.histograms
            .all()
            .iter()
            .flat_map(|h| h.slots.iter())
            .map(|slot| slot.data().len())
            .sum()
    }
}

/// A recorder that puts per-lane slots in front of `inner`'s series; see the
/// module docs. Call [`Shards::flush`] (through the handle) before reading `inner`.
pub(crate) struct ShardedRecorder<R> {
    inner: R,
    shards: Arc<Shards>,
    width: usize,
}

impl<R> ShardedRecorder<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self {
            inner,
            shards: Arc::default(),
            width: lane_count(),
        }
    }

    pub(crate) fn shards(&self) -> &Arc<Shards> {
        &self.shards
    }
}

impl<R: Recorder> Recorder for ShardedRecorder<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.shards.counters.get_or_insert(key, || ShardedCounter {
            inner: self.inner.register_counter(key, metadata),
            slots: Slots::new(self.width, || AtomicU64::new(0)),
            fold: Mutex::new(()),
        }))
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.shards.gauges.get_or_insert(key, || ShardedGauge {
            inner: self.inner.register_gauge(key, metadata),
            slots: Slots::new(self.width, || AtomicU64::new(0f64.to_bits())),
            has_deltas: AtomicBool::new(false),
            fold: Mutex::new(()),
        }))
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(
            self.shards
                .histograms
                .get_or_insert(key, || ShardedHistogram {
                    inner: self.inner.register_histogram(key, metadata),
                    slots: Slots::new(self.width, AtomicBucket::new),
                }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    /// The values of every series by name (a debugging snapshot resets them).
    fn values(snapshotter: &metrics_util::debugging::Snapshotter) -> HashMap<String, DebugValue> {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(k, .., v)| (k.key().name().to_owned(), v))
            .collect()
    }

    #[test]
    fn slots_reach_the_inner_recorder_on_a_flush_only() {
        let debugging = DebuggingRecorder::new();
        let snapshotter = debugging.snapshotter();
        let recorder = ShardedRecorder::new(debugging);
        let meta = Metadata::new("t", metrics::Level::INFO, None);
        let counter = recorder.register_counter(&Key::from_name("c"), &meta);
        let gauge = recorder.register_gauge(&Key::from_name("g"), &meta);
        let histogram = recorder.register_histogram(&Key::from_name("h"), &meta);

        // Writes from several threads, each to its own slot.
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        counter.increment(1);
                        gauge.increment(2.0);
                        gauge.decrement(1.0);
                        histogram.record(0.5);
                    }
                });
            }
        });
        let before = values(&snapshotter);
        assert_eq!(before["c"], DebugValue::Counter(0));
        assert_eq!(before["g"], DebugValue::Gauge(0.0.into()));

        recorder.shards().flush();
        let after = values(&snapshotter);
        assert_eq!(after["c"], DebugValue::Counter(4000));
        assert_eq!(after["g"], DebugValue::Gauge(4000.0.into()));
        let DebugValue::Histogram(samples) = &after["h"] else {
            panic!("no histogram");
        };
        assert_eq!(samples.len(), 4000);

        // A second flush adds only what came since.
        counter.increment(5);
        gauge.set(7.0);
        gauge.increment(1.0);
        recorder.shards().flush();
        let after = values(&snapshotter);
        assert_eq!(after["c"], DebugValue::Counter(5));
        assert_eq!(after["g"], DebugValue::Gauge(8.0.into()));

        // absolute drops what was waiting: the value given is newer.
        counter.increment(3);
        counter.absolute(100);
        recorder.shards().flush();
        assert_eq!(values(&snapshotter)["c"], DebugValue::Counter(100));
    }

    #[test]
    fn flushes_during_writes_lose_nothing() {
        let debugging = DebuggingRecorder::new();
        let snapshotter = debugging.snapshotter();
        let recorder = ShardedRecorder::new(debugging);
        let meta = Metadata::new("t", metrics::Level::INFO, None);
        let counter = recorder.register_counter(&Key::from_name("c"), &meta);
        let in_flight = recorder.register_gauge(&Key::from_name("g"), &meta);
        let done = std::sync::atomic::AtomicBool::new(false);
        let mut counted = 0;
        let mut gauge = 0.0;
        std::thread::scope(|s| {
            let writers: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        for _ in 0..20_000 {
                            in_flight.increment(1.0);
                            counter.increment(1);
                            in_flight.decrement(1.0);
                        }
                    })
                })
                .collect();
            s.spawn(|| {
                while !done.load(Ordering::Relaxed) {
                    recorder.shards().flush();
                }
            });
            for w in writers {
                w.join().unwrap();
            }
            done.store(true, Ordering::Relaxed);
        });
        recorder.shards().flush();
        // The snapshot resets what it reads, so the total is summed here once.
        let after = values(&snapshotter);
        if let DebugValue::Counter(n) = after["c"] {
            counted += n;
        }
        if let DebugValue::Gauge(g) = after["g"] {
            gauge += g.into_inner();
        }
        assert_eq!(counted, 80_000);
        assert_eq!(gauge, 0.0);
    }

    #[test]
    fn a_set_counts_after_the_deltas_before_it() {
        let debugging = DebuggingRecorder::new();
        let snapshotter = debugging.snapshotter();
        let recorder = ShardedRecorder::new(debugging);
        let meta = Metadata::new("t", metrics::Level::INFO, None);
        let gauge = recorder.register_gauge(&Key::from_name("g"), &meta);
        // The 5 waiting in a slot is folded before the set overrides it; the 1
        // after the set is folded on top of it.
        gauge.increment(5.0);
        gauge.set(2.0);
        gauge.increment(1.0);
        recorder.shards().flush();
        assert_eq!(values(&snapshotter)["g"], DebugValue::Gauge(3.0.into()));
    }

    #[test]
    fn sets_before_and_after_the_first_delta_keep_their_order() {
        let debugging = DebuggingRecorder::new();
        let snapshotter = debugging.snapshotter();
        let recorder = ShardedRecorder::new(debugging);
        let meta = Metadata::new("t", metrics::Level::INFO, None);
        let gauge = recorder.register_gauge(&Key::from_name("g"), &meta);
        gauge.set(0.25);
        // No flush: the set reached the inner gauge at once.
        assert_eq!(values(&snapshotter)["g"], DebugValue::Gauge(0.25.into()));
        // After a delta, sets order after the deltas before them again.
        gauge.increment(1.0);
        gauge.set(4.0);
        gauge.increment(2.0);
        recorder.shards().flush();
        assert_eq!(values(&snapshotter)["g"], DebugValue::Gauge(6.0.into()));
    }

    #[test]
    fn one_key_registered_twice_shares_its_slots() {
        let debugging = DebuggingRecorder::new();
        let snapshotter = debugging.snapshotter();
        let recorder = ShardedRecorder::new(debugging);
        let meta = Metadata::new("t", metrics::Level::INFO, None);
        let key = Key::from_parts("c", vec![metrics::Label::new("outcome", "ok")]);
        recorder.register_counter(&key, &meta).increment(1);
        recorder.register_counter(&key, &meta).increment(2);
        recorder.shards().flush();
        assert_eq!(values(&snapshotter)["c"], DebugValue::Counter(3));
        assert_eq!(recorder.shards().counters.len(), 1);
    }
}
