//! Lock-free rolling windows of call outcomes for the hot path.
//!
//! - [`CountWindow`]: the last `size` calls, a ring of one-byte slots. Recording is a
//!   `fetch_add` on the ring cursor, a `swap` of one slot and one `fetch_add` on the
//!   packed totals: no lock, no allocation, and old calls leave as new ones arrive.
//! - [`TimeWindow`]: the calls of the last `buckets × bucket_width`, in time buckets
//!   of one atomic word each, updated with compare-and-swap. Buckets older than the
//!   window are skipped when read, so it slides bucket by bucket.
//!
//! Both count three things per call: that it happened, whether it failed and whether
//! it was slow; a [`WindowSnapshot`] gives the rates.

use crossbeam_utils::CachePadded;

use crate::sync::{AtomicU8, AtomicU64, Ordering};

/// One call, as a window records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sample {
    /// The call failed.
    pub failure: bool,
    /// The call was slow.
    pub slow: bool,
}

/// Counts over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowSnapshot {
    /// Calls recorded.
    pub calls: u32,
    /// Of which failed.
    pub failures: u32,
    /// Of which were slow.
    pub slow: u32,
}

impl WindowSnapshot {
    /// Failures ÷ calls (0 with no calls).
    #[inline]
    pub fn failure_rate(&self) -> f64 {
        ratio(self.failures, self.calls)
    }

    /// Slow calls ÷ calls (0 with no calls).
    #[inline]
    pub fn slow_rate(&self) -> f64 {
        ratio(self.slow, self.calls)
    }
}

fn ratio(part: u32, whole: u32) -> f64 {
    if whole == 0 {
        0.0
    } else {
        f64::from(part) / f64::from(whole)
    }
}

// ---- count-based ring -------------------------------------------------------------

const SLOT_EMPTY: u8 = 0;
const SLOT_CALL: u8 = 1;
const SLOT_FAILURE: u8 = 2;
const SLOT_SLOW: u8 = 4;

/// Bits per packed field in [`CountWindow`]'s totals word.
const FIELD_BITS: u32 = 21;
const FIELD_MASK: u64 = (1 << FIELD_BITS) - 1;

#[inline]
fn slot_of(sample: Sample) -> u8 {
    SLOT_CALL
        | if sample.failure { SLOT_FAILURE } else { 0 }
        | if sample.slow { SLOT_SLOW } else { 0 }
}

/// The slot's contribution to the totals word: calls, failures and slow calls in
/// three 21-bit fields.
#[inline]
fn packed(slot: u8) -> u64 {
    let calls = u64::from(slot & SLOT_CALL != 0);
    let failures = u64::from(slot & SLOT_FAILURE != 0);
    let slow = u64::from(slot & SLOT_SLOW != 0);
    calls | (failures << FIELD_BITS) | (slow << (2 * FIELD_BITS))
}

/// Reads the totals word. Fields are signed (two's complement within their bits):
/// a slot's removal can be applied a moment before another thread applies its
/// addition, so a field may be briefly negative; the word as a whole is always the
/// exact sum of the deltas applied, and decoding field by field (carrying each
/// field's sign into the next) recovers the true, possibly negative, counts.
#[inline]
fn unpack(word: u64) -> [i64; 3] {
    let mut rest = word;
    let mut out = [0i64; 3];
    for field in &mut out {
        let low = rest & FIELD_MASK;
        // Sign-extend the 21-bit field.
        let value = ((low << (64 - FIELD_BITS)) as i64) >> (64 - FIELD_BITS);
        *field = value;
        rest = rest.wrapping_sub(value as u64) >> FIELD_BITS;
    }
    out
}

#[inline]
fn snapshot_of(word: u64) -> WindowSnapshot {
    let [calls, failures, slow] = unpack(word);
    let clamp = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
    let calls = clamp(calls);
    WindowSnapshot {
        calls,
        failures: clamp(failures).min(calls),
        slow: clamp(slow).min(calls),
    }
}

/// A sliding window over the last `size` calls; see the [module docs](self).
#[derive(Debug)]
pub struct CountWindow {
    slots: Box<[AtomicU8]>,
    // The cursor is written by every recorded call and the totals read by every
    // call: separate cache lines keep readers from sharing the writers' line.
    cursor: CachePadded<AtomicU64>,
    totals: CachePadded<AtomicU64>,
}

impl CountWindow {
    /// The largest window: counts must fit a signed 21-bit field with room for
    /// in-flight updates.
    pub const MAX_SIZE: u32 = 1 << 19;

    /// A window over the last `size` calls, `1..=MAX_SIZE`.
    ///
    /// Returns `None` for a size outside that range (builders turn this into a
    /// configuration error naming their field).
    pub fn new(size: u32) -> Option<Self> {
        if size == 0 || size > Self::MAX_SIZE {
            return None;
        }
        Some(Self {
            slots: (0..size).map(|_| AtomicU8::new(SLOT_EMPTY)).collect(),
            cursor: CachePadded::new(AtomicU64::new(0)),
            totals: CachePadded::new(AtomicU64::new(0)),
        })
    }

    /// The window's size in calls.
    pub fn size(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Records one call, pushing the oldest out once the window is full, and returns
    /// the counts right after this call was added.
    #[inline]
    pub fn record(&self, sample: Sample) -> WindowSnapshot {
        self.record_detailed(sample).0
    }

    /// As [`record`](Self::record), also saying whether the counts changed.
    ///
    /// A clean call (neither failed nor slow) recorded into a full window that holds
    /// only clean calls changes nothing, so it is not written: the healthy steady
    /// state costs one atomic load and no shared write. (It is as if the call had
    /// happened just before any concurrent recording.)
    #[inline]
    pub fn record_detailed(&self, sample: Sample) -> (WindowSnapshot, bool) {
        if !sample.failure && !sample.slow {
            // A full window of clean calls packs to exactly `size` (calls = size,
            // failures = slow = 0): one load and one comparison.
            let size = self.slots.len() as u64;
            if self.totals.load(Ordering::Acquire) == size {
                let full = WindowSnapshot {
                    calls: size as u32,
                    failures: 0,
                    slow: 0,
                };
                return (full, false);
            }
        }
        let index = self.cursor.fetch_add(1, Ordering::Relaxed) % self.slots.len() as u64;
        let new = slot_of(sample);
        let old = self.slots[index as usize].swap(new, Ordering::AcqRel);
        let delta = packed(new).wrapping_sub(packed(old));
        let before = self.totals.fetch_add(delta, Ordering::AcqRel);
        (snapshot_of(before.wrapping_add(delta)), delta != 0)
    }

    /// Whether the window is full of clean calls (recording another clean call
    /// would change nothing).
    #[inline]
    pub fn is_full_and_clean(&self) -> bool {
        self.totals.load(Ordering::Acquire) == self.slots.len() as u64
    }

    /// The counts now.
    #[inline]
    pub fn snapshot(&self) -> WindowSnapshot {
        snapshot_of(self.totals.load(Ordering::Acquire))
    }

    /// Empties the window. Calls recorded concurrently with the reset may survive it.
    pub fn reset(&self) {
        for slot in self.slots.iter() {
            let old = slot.swap(SLOT_EMPTY, Ordering::AcqRel);
            if old != SLOT_EMPTY {
                self.totals
                    .fetch_add(0u64.wrapping_sub(packed(old)), Ordering::AcqRel);
            }
        }
    }
}

// ---- time-bucketed ----------------------------------------------------------------

/// A bucket word: `[tag:16][calls:16][failures:16][slow:16]`, low to high.
const BUCKET_FIELD: u32 = 16;
const BUCKET_MAX: u64 = 0xFFFF;

fn bucket_tag(word: u64) -> u64 {
    word & BUCKET_MAX
}

fn bucket_counts(word: u64) -> (u32, u32, u32) {
    (
        ((word >> BUCKET_FIELD) & BUCKET_MAX) as u32,
        ((word >> (2 * BUCKET_FIELD)) & BUCKET_MAX) as u32,
        ((word >> (3 * BUCKET_FIELD)) & BUCKET_MAX) as u32,
    )
}

/// A sliding window over the last `buckets × bucket_width` of time; see the
/// [module docs](self).
///
/// Times are `u64` nanoseconds from any fixed epoch (a [`Clock`](crate::Clock)'s
/// readings). Each bucket counts at most 65,535 calls; calls past that in the same
/// bucket are not counted (the rates stay those of the first 65,535), so pick buckets
/// narrow enough for your peak rate. A call whose reading is a whole window older than
/// the newest call recorded is not counted.
///
/// Each bucket is tagged with the window's rotation it counts (modulo 65,536). When
/// time moves into a bucket no call has reached yet, the buckets it passed over that
/// still hold an older rotation are emptied, so a tag can only match the calls of its
/// own rotation, however long the window sat idle. After a silence of 65,535
/// rotations or more every bucket is emptied; calls recorded at that same moment by
/// other threads may be emptied with them.
#[derive(Debug)]
pub struct TimeWindow {
    buckets: Box<[AtomicU64]>,
    bucket_nanos: u64,
    /// One past the newest tick a call was recorded in (0: none yet).
    next_tick: CachePadded<AtomicU64>,
}

impl TimeWindow {
    /// The most buckets a window may have.
    pub const MAX_BUCKETS: u32 = 4096;

    /// A window of `buckets` buckets of `bucket_nanos` each. `None` when either is
    /// zero or `buckets > MAX_BUCKETS`.
    pub fn new(buckets: u32, bucket_nanos: u64) -> Option<Self> {
        if buckets == 0 || buckets > Self::MAX_BUCKETS || bucket_nanos == 0 {
            return None;
        }
        Some(Self {
            buckets: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
            bucket_nanos,
            next_tick: CachePadded::new(AtomicU64::new(0)),
        })
    }

    /// The window's length in nanoseconds.
    pub fn span_nanos(&self) -> u64 {
        self.bucket_nanos.saturating_mul(self.buckets.len() as u64)
    }

    fn locate(&self, tick: u64) -> (usize, u64) {
        let n = self.buckets.len() as u64;
        ((tick % n) as usize, (tick / n) & BUCKET_MAX)
    }

    /// Moves the window's newest tick to `tick` when no call has reached it yet,
    /// emptying the buckets of the ticks passed over (and of `tick` itself) that hold
    /// an older rotation. Runs once per bucket width at most, not per call.
    #[cold]
    fn advance(&self, tick: u64) {
        if let Some(newest) = self.claim(tick) {
            self.sweep(newest, tick);
        }
    }

    /// Makes `tick` the newest tick; the newest before it when this call moved it
    /// there (its sweep is then this call's to do), `None` when another call moved
    /// it first or this is the first call ever (every bucket is empty).
    fn claim(&self, tick: u64) -> Option<u64> {
        let next = self
            .next_tick
            .fetch_max(tick.saturating_add(1), Ordering::AcqRel);
        (next != 0 && next <= tick).then(|| next - 1)
    }

    /// Empties the buckets of the ticks `(newest, tick]` that hold an older
    /// rotation.
    fn sweep(&self, newest: u64, tick: u64) {
        let n = self.buckets.len() as u64;
        // The tags repeat every 65,536 rotations: after a silence that long, a bucket
        // of the window just left can carry the tag of the window entered, so
        // everything goes. (Calls recorded at this very moment may go with it.)
        if tick - newest > n * BUCKET_MAX {
            for bucket in self.buckets.iter() {
                bucket.store(0, Ordering::Release);
            }
            return;
        }
        // Otherwise every bucket holds a tick of the window `(newest - n, newest]`;
        // those the window moved past are emptied unless a call of their new tick has
        // already started them, or a later rotation has already reached them (a call
        // that moved the window on while this one was being swept: the bucket is that
        // call's, and may hold its calls).
        for passed in (newest + 1).max((tick + 1).saturating_sub(n))..=tick {
            let (index, tag) = self.locate(passed);
            let bucket = &self.buckets[index];
            let mut word = bucket.load(Ordering::Acquire);
            while word != 0 && bucket_tag(word) != tag {
                // Every call raises the newest tick before it writes to a bucket, so
                // having read the word, this sees any newer tick that wrote it.
                if passed + n < self.next_tick.load(Ordering::Acquire) {
                    break;
                }
                match bucket.compare_exchange_weak(word, 0, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => break,
                    Err(actual) => word = actual,
                }
            }
        }
    }

    /// Records one call made at `now_nanos`.
    #[inline]
    pub fn record(&self, now_nanos: u64, sample: Sample) {
        let tick = now_nanos / self.bucket_nanos;
        let next = self.next_tick.load(Ordering::Acquire);
        if tick >= next {
            self.advance(tick);
        } else if tick.saturating_add(self.buckets.len() as u64) < next {
            // Older than the whole window: its bucket now counts a later tick.
            return;
        }
        let (index, tag) = self.locate(tick);
        let add = (1u64 << BUCKET_FIELD)
            | (u64::from(sample.failure) << (2 * BUCKET_FIELD))
            | (u64::from(sample.slow) << (3 * BUCKET_FIELD));
        let bucket = &self.buckets[index];
        let mut current = bucket.load(Ordering::Acquire);
        loop {
            let next = if bucket_tag(current) == tag && current != 0 {
                let (calls, _, _) = bucket_counts(current);
                if u64::from(calls) == BUCKET_MAX {
                    return;
                }
                current + add
            } else {
                // The bucket holds another rotation (or nothing). If a later one has
                // reached it since this call read the clock (its calls raised the
                // newest tick before writing), this reading is now older than the
                // window: starting afresh would wipe them.
                if tick.saturating_add(self.buckets.len() as u64)
                    < self.next_tick.load(Ordering::Acquire)
                {
                    return;
                }
                // An older rotation: start it afresh.
                tag | add
            };
            match bucket.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// The counts of the buckets that overlap `(now - span, now]`.
    pub fn snapshot(&self, now_nanos: u64) -> WindowSnapshot {
        let tick = now_nanos / self.bucket_nanos;
        let n = self.buckets.len() as u64;
        let mut snap = WindowSnapshot::default();
        // Ticks after the newest recorded one hold no calls, only older rotations.
        let newest = match self.next_tick.load(Ordering::Acquire) {
            0 => return snap,
            next => next - 1,
        };
        for age in 0..n.min(tick + 1) {
            if tick - age > newest {
                continue;
            }
            let (index, tag) = self.locate(tick - age);
            let word = self.buckets[index].load(Ordering::Acquire);
            if word != 0 && bucket_tag(word) == tag {
                let (calls, failures, slow) = bucket_counts(word);
                snap.calls += calls;
                snap.failures += failures;
                snap.slow += slow;
            }
        }
        snap
    }

    /// Empties the window. Calls recorded concurrently with the reset may survive it.
    pub fn reset(&self) {
        for b in self.buckets.iter() {
            b.store(0, Ordering::Release);
        }
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OK: Sample = Sample {
        failure: false,
        slow: false,
    };
    const FAIL: Sample = Sample {
        failure: true,
        slow: false,
    };
    const SLOW: Sample = Sample {
        failure: false,
        slow: true,
    };

    #[test]
    fn count_window_slides_old_calls_out() {
        let w = CountWindow::new(4).unwrap();
        for s in [FAIL, FAIL, OK, OK] {
            w.record(s);
        }
        assert_eq!(
            w.snapshot(),
            WindowSnapshot {
                calls: 4,
                failures: 2,
                slow: 0
            }
        );
        // Two more successes push both failures out.
        w.record(OK);
        let after = w.record(SLOW);
        assert_eq!(
            after,
            WindowSnapshot {
                calls: 4,
                failures: 0,
                slow: 1
            }
        );
        assert_eq!(after.slow_rate(), 0.25);
        w.reset();
        assert_eq!(w.snapshot(), WindowSnapshot::default());
    }

    #[test]
    fn count_window_rejects_bad_sizes() {
        assert!(CountWindow::new(0).is_none());
        assert!(CountWindow::new(CountWindow::MAX_SIZE + 1).is_none());
        assert!(CountWindow::new(CountWindow::MAX_SIZE).is_some());
    }

    #[test]
    fn signed_fields_decode_exactly() {
        // A removal applied before its matching addition leaves a field at -1.
        let word = 0u64
            .wrapping_sub(packed(SLOT_CALL | SLOT_FAILURE))
            .wrapping_add(packed(SLOT_CALL | SLOT_SLOW));
        assert_eq!(unpack(word), [0, -1, 1]);
        assert_eq!(
            snapshot_of(word),
            WindowSnapshot {
                calls: 0,
                failures: 0,
                slow: 0
            }
        );
    }

    #[test]
    fn time_window_slides_bucket_by_bucket() {
        // 10 buckets of 1 s.
        let s = 1_000_000_000;
        let w = TimeWindow::new(10, s).unwrap();
        w.record(0, FAIL);
        w.record(s / 2, OK);
        w.record(5 * s, FAIL);
        assert_eq!(
            w.snapshot(9 * s),
            WindowSnapshot {
                calls: 3,
                failures: 2,
                slow: 0
            }
        );
        // At t=10s the first bucket [0,1s) has left the window.
        assert_eq!(
            w.snapshot(10 * s),
            WindowSnapshot {
                calls: 1,
                failures: 1,
                slow: 0
            }
        );
        // Recording into a recycled bucket starts it afresh.
        w.record(10 * s, SLOW);
        assert_eq!(
            w.snapshot(10 * s),
            WindowSnapshot {
                calls: 2,
                failures: 1,
                slow: 1
            }
        );
        assert_eq!(w.snapshot(100 * s), WindowSnapshot::default());
        w.reset();
        assert_eq!(w.snapshot(10 * s), WindowSnapshot::default());
    }

    /// A rotation of a window of `n` buckets of width 1 happens every `n` ticks; the
    /// bucket tags repeat after 65,536 rotations.
    const ROTATIONS: u64 = 1 << 16;

    #[test]
    fn time_window_does_not_count_a_bucket_65536_rotations_old() {
        let w = TimeWindow::new(10, 1).unwrap();
        w.record(3, FAIL);
        let later = 3 + ROTATIONS * 10;
        // Read after the silence: the old failure is not in the window.
        assert_eq!(w.snapshot(later), WindowSnapshot::default());
        // Nor does a call in that same bucket add to it.
        w.record(later, OK);
        assert_eq!(
            w.snapshot(later),
            WindowSnapshot {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
    }

    #[test]
    fn time_window_forgets_idle_buckets_while_others_stay_busy() {
        // Calls land only in bucket 0, once a rotation; one failure sat in bucket 1.
        let w = TimeWindow::new(4, 1).unwrap();
        w.record(1, FAIL);
        for rotation in 1..=ROTATIONS {
            w.record(rotation * 4, OK);
        }
        let later = 1 + ROTATIONS * 4;
        w.record(later, OK);
        assert_eq!(
            w.snapshot(later),
            WindowSnapshot {
                calls: 2,
                failures: 0,
                slow: 0
            }
        );
    }

    #[test]
    fn time_window_drops_a_call_older_than_the_window() {
        // A call whose clock reading is a whole window behind the newest does not
        // start its bucket afresh over the current calls there.
        let w = TimeWindow::new(4, 1).unwrap();
        w.record(8, FAIL);
        w.record(8, FAIL);
        w.record(4, OK);
        assert_eq!(
            w.snapshot(8),
            WindowSnapshot {
                calls: 2,
                failures: 2,
                slow: 0
            }
        );
    }

    #[test]
    fn a_slow_sweep_leaves_a_bucket_a_later_call_has_taken() {
        // Four buckets, newest tick 5. A call at tick 10 moves the window (its sweep
        // covers ticks 7..=10; tick 7 shares a bucket with tick 11) and is held up
        // before sweeping; meanwhile a call at tick 11 moves it on and lands. The
        // late sweep must not empty tick 11's bucket.
        let w = TimeWindow::new(4, 1).unwrap();
        w.record(5, OK);
        let newest = w.claim(10).expect("the call at tick 10 moved the window");
        w.record(11, FAIL);
        w.sweep(newest, 10);
        w.record(10, OK);
        assert_eq!(
            w.snapshot(11),
            WindowSnapshot {
                calls: 2,
                failures: 1,
                slow: 0
            }
        );
    }

    #[test]
    fn time_window_saturates_per_bucket() {
        let w = TimeWindow::new(2, 10).unwrap();
        for _ in 0..70_000 {
            w.record(0, OK);
        }
        assert_eq!(w.snapshot(0).calls, 65_535);
    }

    #[test]
    fn concurrent_records_keep_exact_totals() {
        let w = std::sync::Arc::new(CountWindow::new(64).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u32 {
                        w.record(Sample {
                            failure: (i + t) % 3 == 0,
                            slow: i % 5 == 0,
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Whatever interleaving happened, the totals equal the slots' contents.
        let expected = w
            .slots
            .iter()
            .fold(WindowSnapshot::default(), |mut acc, s| {
                let v = s.load(Ordering::Relaxed);
                acc.calls += u32::from(v & SLOT_CALL != 0);
                acc.failures += u32::from(v & SLOT_FAILURE != 0);
                acc.slow += u32::from(v & SLOT_SLOW != 0);
                acc
            });
        assert_eq!(w.snapshot(), expected);
        assert_eq!(expected.calls, 64);
    }

    proptest! {
        #[test]
        fn count_window_matches_a_vec_model(size in 1u32..20, calls in proptest::collection::vec((any::<bool>(), any::<bool>()), 0..200)) {
            let w = CountWindow::new(size).unwrap();
            let mut model: std::collections::VecDeque<Sample> = Default::default();
            for (failure, slow) in calls {
                let s = Sample { failure, slow };
                let got = w.record(s);
                model.push_back(s);
                if model.len() > size as usize { model.pop_front(); }
                let want = WindowSnapshot {
                    calls: model.len() as u32,
                    failures: model.iter().filter(|s| s.failure).count() as u32,
                    slow: model.iter().filter(|s| s.slow).count() as u32,
                };
                prop_assert_eq!(got, want);
            }
        }

        #[test]
        fn time_window_matches_a_model(
            buckets in 1u32..12,
            steps in proptest::collection::vec((0u8..8, 0u64..3_000, any::<bool>(), 0u64..3_000), 0..150),
        ) {
            let width = 1_000u64;
            let n = u64::from(buckets);
            let w = TimeWindow::new(buckets, width).unwrap();
            let mut now = 0u64;
            let mut model: Vec<(u64, bool)> = Vec::new();
            for (kind, amount, failure, look_ahead) in steps {
                // Mostly small steps forward; some readings behind the newest (another
                // thread's clock reading), some silences of a multiple of 65,536
                // rotations (where the bucket tags repeat).
                let at = match kind {
                    0..=4 => { now += amount; now }
                    5 | 6 => now.saturating_sub(amount),
                    _ => {
                        now += (1 << 16) * n * width * (1 + amount % 2) + amount;
                        now
                    }
                };
                w.record(at, Sample { failure, slow: false });
                let newest = model.iter().map(|(t, _)| t / width).max();
                if newest.is_none_or(|newest| at / width + n > newest) {
                    model.push((at, failure));
                }
                let read = now + look_ahead;
                let lo = (read / width + 1).saturating_sub(n);
                let live: Vec<_> = model.iter().filter(|(t, _)| t / width >= lo).collect();
                let snap = w.snapshot(read);
                prop_assert_eq!(snap.calls as usize, live.len());
                prop_assert_eq!(snap.failures as usize, live.iter().filter(|(_, f)| *f).count());
            }
        }
    }
}
