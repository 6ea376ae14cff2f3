//! The bulkhead's permit accounting: one atomic word, no lock.
//!
//! The word holds two counters: permits held (low 32 bits) and calls queued
//! (high 32 bits). Every decision is one compare-and-swap on the word, so "is a
//! permit free?" and "is anyone waiting?" are always answered together:
//!
//! - **admit**: take a permit if `held < limit`, else join the queue if it has
//!   room, else refuse. A call never joins the queue while a permit is free.
//! - **release**: one `fetch_sub`. Its result says whether anyone is queued; only
//!   then (and only if the release freed a usable permit) must the caller wake a
//!   waiter. With nobody queued a release touches nothing else: no waiter list, no
//!   lock.
//! - **acquire from the queue**: take a permit and leave the queue in one step. If
//!   permits are still free and others still queued, the caller wakes the next
//!   waiter too (a chained wake-up), so wake-ups that a notifier coalesced are not
//!   lost.
//!
//! The wake-up itself is not here: the service uses a `tokio::sync::Notify`, with
//! this protocol on the waiter's side — join the queue, register for a wake-up,
//! then try to acquire, and sleep only if that fails. Because the releaser decides
//! to notify from the same word the waiter joined the queue on, and a notification
//! sent before the waiter registers is kept for it (`notify_one` stores one), a
//! waiter cannot sleep through the release of a permit. The `loom` tests below
//! check this protocol, with a deliberately weaker notifier (one that coalesces
//! every notification into a single flag) standing in for `Notify`.

use super::sync::{AtomicU32, AtomicU64, Ordering};

/// One queued call in the word.
const QUEUED_ONE: u64 = 1 << 32;
/// The held-permits half of the word.
const HELD_MASK: u64 = QUEUED_ONE - 1;

#[inline]
fn held(word: u64) -> u32 {
    (word & HELD_MASK) as u32
}

#[inline]
fn queued(word: u64) -> u32 {
    (word >> 32) as u32
}

/// What [`Permits::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// A permit was taken.
    Acquired,
    /// No permit was free; the call joined the queue.
    Queued,
    /// No permit was free and the queue was full.
    Full,
}

/// Permits held, calls queued and the limit, shared by every clone of a bulkhead.
pub(crate) struct Permits {
    word: AtomicU64,
    limit: AtomicU32,
}

impl std::fmt::Debug for Permits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permits")
            .field("held", &self.held())
            .field("queued", &self.queued())
            .field("limit", &self.limit())
            .finish()
    }
}

impl Permits {
    /// No permit held, nobody queued, `limit` permits.
    pub(crate) fn new(limit: u32) -> Self {
        Self {
            word: AtomicU64::new(0),
            limit: AtomicU32::new(limit),
        }
    }

    /// Takes a permit if one is free, else joins the queue if fewer than
    /// `max_queue` calls wait, else refuses. Lock-free; one CAS when uncontended.
    #[inline]
    pub(crate) fn admit(&self, max_queue: u32) -> Admit {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            let (next, admit) = if held(word) < self.limit.load(Ordering::Acquire) {
                (word + 1, Admit::Acquired)
            } else if queued(word) < max_queue {
                (word + QUEUED_ONE, Admit::Queued)
            } else {
                return Admit::Full;
            };
            match self
                .word
                .compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return admit,
                Err(actual) => word = actual,
            }
        }
    }

    /// For a queued call: takes a permit and leaves the queue in one step, if a
    /// permit is free. `Some(true)` when permits are still free and others still
    /// queued: the caller must wake the next waiter.
    #[inline]
    pub(crate) fn try_acquire_queued(&self) -> Option<bool> {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            debug_assert!(queued(word) > 0, "acquiring from an empty queue");
            let limit = self.limit.load(Ordering::Acquire);
            if held(word) >= limit {
                return None;
            }
            let next = word + 1 - QUEUED_ONE;
            match self
                .word
                .compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(held(next) < limit && queued(next) > 0),
                Err(actual) => word = actual,
            }
        }
    }

    /// Leaves the queue without a permit (the wait ended or was abandoned).
    #[inline]
    pub(crate) fn leave_queue(&self) {
        let prev = self.word.fetch_sub(QUEUED_ONE, Ordering::AcqRel);
        debug_assert!(queued(prev) > 0, "left an empty queue");
    }

    /// Gives a permit back. `true` when a waiter must be woken: someone is queued
    /// and the permit is usable (not above a lowered limit).
    #[inline]
    pub(crate) fn release(&self) -> bool {
        let prev = self.word.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(held(prev) > 0, "released a permit that was not held");
        queued(prev) > 0 && held(prev) <= self.limit.load(Ordering::Acquire)
    }

    /// Sets the limit; returns the previous one. Permits held above a lowered
    /// limit stay held until released. After raising it, the caller must wake a
    /// waiter (unconditionally: the wake-up is what orders the new limit before
    /// the waiter's next look at it).
    pub(crate) fn set_limit(&self, limit: u32) -> u32 {
        self.limit.swap(limit, Ordering::AcqRel)
    }

    /// Permits held now.
    pub(crate) fn held(&self) -> u32 {
        held(self.word.load(Ordering::Acquire))
    }

    /// Calls queued now.
    pub(crate) fn queued(&self) -> u32 {
        queued(self.word.load(Ordering::Acquire))
    }

    /// The limit in force.
    pub(crate) fn limit(&self) -> u32 {
        self.limit.load(Ordering::Acquire)
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_then_queues_then_refuses() {
        let p = Permits::new(2);
        assert_eq!(p.admit(1), Admit::Acquired);
        assert_eq!(p.admit(1), Admit::Acquired);
        assert_eq!(p.admit(1), Admit::Queued);
        assert_eq!(p.admit(1), Admit::Full);
        assert_eq!((p.held(), p.queued()), (2, 1));
        assert_eq!(p.try_acquire_queued(), None);
        assert!(p.release(), "someone is queued");
        assert_eq!(p.try_acquire_queued(), Some(false));
        assert_eq!((p.held(), p.queued()), (2, 0));
        assert!(!p.release(), "nobody is queued");
        assert!(!p.release());
        assert_eq!((p.held(), p.queued()), (0, 0));
    }

    #[test]
    fn a_raised_limit_chains_wake_ups_and_a_lowered_one_holds_back() {
        let p = Permits::new(1);
        assert_eq!(p.admit(3), Admit::Acquired);
        for _ in 0..3 {
            assert_eq!(p.admit(3), Admit::Queued);
        }
        assert_eq!(p.set_limit(3), 1);
        // Two permits free, three queued: the first taker must wake the next.
        assert_eq!(p.try_acquire_queued(), Some(true));
        assert_eq!(p.try_acquire_queued(), Some(false));
        assert_eq!(p.try_acquire_queued(), None);
        assert_eq!((p.held(), p.queued()), (3, 1));
        p.set_limit(1);
        // Releases above the lowered limit free nothing a waiter could use.
        assert!(!p.release());
        assert!(!p.release());
        assert!(p.release());
        p.leave_queue();
        assert_eq!((p.held(), p.queued()), (0, 0));
    }

    #[test]
    fn queue_of_zero_refuses_at_once() {
        let p = Permits::new(1);
        assert_eq!(p.admit(0), Admit::Acquired);
        assert_eq!(p.admit(0), Admit::Full);
        assert_eq!(p.queued(), 0);
    }
}

/// Model checks of the permit protocol under every interleaving loom finds:
/// `cargo test -p palisade-limit --features loom --release --lib bulkhead::permits::loom_`.
#[cfg(all(test, feature = "loom"))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicUsize;
    use loom::sync::{Arc, Condvar, Mutex};

    /// A notifier weaker than `tokio::sync::Notify`: every notification lands in
    /// one flag, so notifications sent before anyone takes one coalesce (tokio
    /// keeps one per registered waiter). Any waiter may take the flag. A protocol
    /// that loses no wake-up with this one loses none with tokio's.
    struct Notifier {
        flag: Mutex<bool>,
        cond: Condvar,
    }

    impl Notifier {
        fn new() -> Self {
            Self {
                flag: Mutex::new(false),
                cond: Condvar::new(),
            }
        }

        fn notify_one(&self) {
            *self.flag.lock().unwrap() = true;
            self.cond.notify_all();
        }

        /// Blocks until a notification is there, and takes it.
        fn wait(&self) {
            let mut flag = self.flag.lock().unwrap();
            while !*flag {
                flag = self.cond.wait(flag).unwrap();
            }
            *flag = false;
        }
    }

    struct Bulkhead {
        permits: Permits,
        notify: Notifier,
        max_queue: u32,
        /// Calls holding a permit right now, counted by the calls themselves.
        inside: AtomicUsize,
    }

    impl Bulkhead {
        fn new(limit: u32, max_queue: u32) -> Arc<Self> {
            Arc::new(Self {
                permits: Permits::new(limit),
                notify: Notifier::new(),
                max_queue,
                inside: AtomicUsize::new(0),
            })
        }

        /// The service's protocol: admit, or queue and sleep until a permit is
        /// taken. A lost wake-up leaves this thread asleep forever, which loom
        /// reports as a deadlock.
        fn acquire(&self) -> bool {
            match self.permits.admit(self.max_queue) {
                Admit::Acquired => true,
                Admit::Full => false,
                Admit::Queued => loop {
                    // (The service registers with `Notify` before this first
                    // try; the sticky flag here needs no registration.)
                    if let Some(wake_next) = self.permits.try_acquire_queued() {
                        if wake_next {
                            self.notify.notify_one();
                        }
                        return true;
                    }
                    self.notify.wait();
                },
            }
        }

        fn release(&self) {
            if self.permits.release() {
                self.notify.notify_one();
            }
        }

        /// Holds a permit for a moment, checking the limit while inside.
        fn use_permit(&self, limit: usize) {
            let before = self.inside.fetch_add(1, Ordering::SeqCst);
            assert!(before < limit, "more than {limit} permits held at once");
            self.inside.fetch_sub(1, Ordering::SeqCst);
            self.release();
        }
    }

    /// Explores every interleaving, or (for the models with three threads that
    /// wait) those with at most `preemptions` preemptions, as loom recommends
    /// for models too large to exhaust.
    /// The preemption bound of the three-thread models.
    const PREEMPTIONS: usize = 4;

    fn model(preemptions: Option<usize>, f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.max_branches = 100_000;
        builder.preemption_bound = preemptions;
        builder.check(f);
    }

    #[test]
    fn loom_never_more_than_the_limit_and_every_waiter_gets_through() {
        // Limit 1, queue 2, three callers: one holds, the others queue; each
        // release must hand the permit on, and never two hold it.
        model(Some(PREEMPTIONS), || {
            let b = Bulkhead::new(1, 2);
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let b = b.clone();
                    loom::thread::spawn(move || {
                        assert!(b.acquire(), "the queue has room for everyone");
                        b.use_permit(1);
                    })
                })
                .collect();
            assert!(b.acquire());
            b.use_permit(1);
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!((b.permits.held(), b.permits.queued()), (0, 0));
        });
    }

    #[test]
    fn loom_a_release_wakes_a_waiter_that_is_queueing() {
        // The holder releases while the waiter is somewhere between joining the
        // queue and going to sleep.
        model(None, || {
            let b = Bulkhead::new(1, 1);
            assert_eq!(b.permits.admit(1), Admit::Acquired);
            let waiter = {
                let b = b.clone();
                loom::thread::spawn(move || {
                    assert!(b.acquire());
                    b.use_permit(1);
                })
            };
            b.release();
            waiter.join().unwrap();
            assert_eq!((b.permits.held(), b.permits.queued()), (0, 0));
        });
    }

    #[test]
    fn loom_two_releases_wake_two_waiters() {
        // Two permits freed close together while two calls wait: the notifier
        // may coalesce the two notifications; the chained wake-up must make up
        // for it.
        model(Some(PREEMPTIONS), || {
            let b = Bulkhead::new(2, 2);
            assert_eq!(b.permits.admit(2), Admit::Acquired);
            assert_eq!(b.permits.admit(2), Admit::Acquired);
            let waiters: Vec<_> = (0..2)
                .map(|_| {
                    let b = b.clone();
                    loom::thread::spawn(move || assert!(b.acquire()))
                })
                .collect();
            b.release();
            b.release();
            for w in waiters {
                w.join().unwrap();
            }
            assert_eq!((b.permits.held(), b.permits.queued()), (2, 0));
        });
    }

    #[test]
    fn loom_a_raised_limit_wakes_a_waiter() {
        model(None, || {
            let b = Bulkhead::new(1, 1);
            assert_eq!(b.permits.admit(1), Admit::Acquired);
            let waiter = {
                let b = b.clone();
                loom::thread::spawn(move || assert!(b.acquire()))
            };
            // The permit is never released; only the new limit lets the waiter in.
            b.permits.set_limit(2);
            b.notify.notify_one();
            waiter.join().unwrap();
            assert_eq!((b.permits.held(), b.permits.queued()), (2, 0));
        });
    }

    #[test]
    fn loom_a_waiter_leaving_races_a_release_and_leaks_nothing() {
        // A waiter gives up (max wait) while the permit is released: afterwards
        // the word is empty, whichever won.
        model(None, || {
            let b = Bulkhead::new(1, 1);
            assert_eq!(b.permits.admit(1), Admit::Acquired);
            let waiter = {
                let b = b.clone();
                loom::thread::spawn(move || match b.permits.admit(1) {
                    Admit::Acquired => b.release(),
                    Admit::Queued => match b.permits.try_acquire_queued() {
                        Some(_) => b.release(),
                        None => b.permits.leave_queue(),
                    },
                    Admit::Full => unreachable!("the queue has room"),
                })
            };
            b.release();
            waiter.join().unwrap();
            assert_eq!((b.permits.held(), b.permits.queued()), (0, 0));
            assert_eq!(b.permits.admit(0), Admit::Acquired);
        });
    }
}
