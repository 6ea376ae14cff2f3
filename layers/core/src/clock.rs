//! Time as the layers read it: a [`Clock`] of `u64` nanoseconds for atomics, and
//! [`now`], which lets one clock reading serve every layer of a stack for the
//! synchronous part of a call ([`lend`], [`lend_lazy`]).

use std::cell::Cell;
use std::time::Duration;
use tokio::time::Instant;

/// A monotonic clock read through `tokio::time`, as nanoseconds since its creation.
///
/// Layers keep time in atomics as `u64` nanoseconds from a per-instance epoch, so a
/// timestamp fits one atomic word. Because it reads [`tokio::time::Instant`], tests on
/// paused time (`#[tokio::test(start_paused = true)]`) move it with
/// `tokio::time::advance`.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A clock whose zero is now.
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds elapsed since the clock was created (saturating at `u64::MAX`,
    /// which is 584 years away).
    /// Inside a [`lend`] or [`lend_lazy`] scope it is the scope's reading.
    #[inline]
    pub fn now_nanos(&self) -> u64 {
        self.nanos_at(now())
    }

    /// The clock reading of `instant` (0 for instants before the epoch).
    pub fn nanos_at(&self, instant: Instant) -> u64 {
        duration_to_nanos(instant.saturating_duration_since(self.epoch))
    }

    /// The instant that a reading of this clock stands for.
    pub fn instant_at(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }
}

/// The reading a scope lends to the code it runs, on this thread.
#[derive(Debug, Clone, Copy)]
enum Lent {
    /// No scope: every [`now`] reads the clock.
    None,
    /// A lazy scope nobody has read the clock in yet.
    Lazy,
    /// This reading stands for "now" until the scope ends.
    At(Instant),
}

thread_local! {
    static LENT: Cell<Lent> = const { Cell::new(Lent::None) };
}

/// Now, as the stack sees it: the reading lent by the enclosing [`lend`] or
/// [`lend_lazy`] scope on this thread, or else a fresh `tokio::time::Instant::now()`.
///
/// A clock read costs tens of nanoseconds, a good part of what a layer costs per
/// call; a downstream stack reads the clock once at its front and lends that
/// reading to every layer below for the synchronous part of `poll_ready` and `call`.
/// Layers that need a time for bookkeeping (deadlines, breaker windows, rate-limit
/// checks) take it from here; a scope lasts microseconds, so the reading is never
/// stale by more than the synchronous code it covers.
#[inline]
pub fn now() -> Instant {
    LENT.with(|lent| match lent.get() {
        Lent::At(at) => at,
        Lent::Lazy => {
            let at = Instant::now();
            lent.set(Lent::At(at));
            at
        }
        Lent::None => Instant::now(),
    })
}

/// Runs `f` with `at` as [`now`] on this thread, then restores the outer scope
/// (also when `f` unwinds).
#[inline]
pub fn lend<R>(at: Instant, f: impl FnOnce() -> R) -> R {
    let _restore = Restore(LENT.replace(Lent::At(at)));
    f()
}

/// Runs `f` with one clock reading shared by every [`now`] inside it, taken at the
/// first of them (none if nothing asks), then restores the outer scope. An outer
/// scope's reading, if there is one, is kept. Returns what `f` returned and the
/// reading, if one was taken or lent from outside.
#[inline]
pub fn lend_lazy<R>(f: impl FnOnce() -> R) -> (R, Option<Instant>) {
    let outer = LENT.get();
    let _restore = Restore(outer);
    if let Lent::None = outer {
        LENT.set(Lent::Lazy);
    }
    let out = f();
    let reading = match LENT.get() {
        Lent::At(at) => Some(at),
        Lent::Lazy | Lent::None => None,
    };
    (out, reading)
}

/// Puts the outer scope's reading back when a scope ends.
struct Restore(Lent);

impl Drop for Restore {
    #[inline]
    fn drop(&mut self) {
        LENT.set(self.0);
    }
}

/// A duration as whole nanoseconds, saturating at `u64::MAX`.
pub(crate) fn duration_to_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_paused_time() {
        let clock = Clock::new();
        assert_eq!(clock.now_nanos(), 0);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.now_nanos(), 1_500_000_000);
        assert_eq!(clock.instant_at(clock.now_nanos()), Instant::now());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lent_reading_stands_for_now_inside_its_scope_only() {
        let clock = Clock::new();
        let lent = Instant::now() + Duration::from_secs(7);
        let inside = lend(lent, || (now(), clock.now_nanos()));
        assert_eq!(inside, (lent, 7_000_000_000));
        assert_eq!(now(), Instant::now(), "the scope ended");
        // Nested scopes restore the outer one.
        lend(lent, || {
            lend(Instant::now(), || assert_eq!(now(), Instant::now()));
            assert_eq!(now(), lent);
        });
    }

    #[tokio::test]
    async fn a_lazy_scope_reads_once_at_first_use() {
        let pause = Duration::from_millis(2);
        let ((first, second), reading) = lend_lazy(|| {
            let first = now();
            std::thread::sleep(pause);
            (first, now())
        });
        assert_eq!(first, second, "one reading for the whole scope");
        assert_eq!(reading, Some(first), "the scope hands its reading back");
        assert_eq!(lend_lazy(|| ()).1, None, "nobody asked: no reading taken");
        assert!(
            now() >= first + pause,
            "outside the scope the clock is read again"
        );
        let outer = Instant::now() + Duration::from_secs(1);
        lend(outer, || {
            let (inner, reading) = lend_lazy(now);
            assert_eq!(
                (inner, reading),
                (outer, Some(outer)),
                "an outer reading is kept"
            );
        });
    }

    #[test]
    fn a_scope_is_restored_when_it_unwinds() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        rt.block_on(async {
            let lent = Instant::now() + Duration::from_secs(3);
            let caught = std::panic::catch_unwind(|| lend(lent, || panic!("inside the scope")));
            assert!(caught.is_err());
            assert_eq!(now(), Instant::now());
        });
    }
}
