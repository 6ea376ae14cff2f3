//! Bulkhead behaviour on paused tokio time: permits, the queue, max wait,
//! deadlines, releases, clones, runtime limit changes and configuration.
#![cfg(not(feature = "loom"))]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::future::BoxFuture;
use palisade_core::{Deadline, Error, RejectionKind};
use palisade_limit::bulkhead::{
    Bulkhead, BulkheadBuilder, BulkheadConfig, BulkheadEvent, BulkheadHandle, BulkheadLayer,
    RejectReason,
};
use tokio::sync::Notify;
use tokio::time::{Instant, advance};
use tower::{Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);

/// What the test downstream does with a request.
#[derive(Clone)]
enum Step {
    Ok,
    /// Succeeds after this long.
    Sleep(Duration),
    /// Succeeds once the notify fires.
    Wait(Arc<Notify>),
}

/// What reached the downstream.
#[derive(Clone, Default, Debug)]
struct Probe {
    ready_polls: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    fail_ready: Arc<AtomicBool>,
}

impl Probe {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }
    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
    fn ready_polls(&self) -> usize {
        self.ready_polls.load(Ordering::SeqCst)
    }
}

/// Counts a running call down when the call ends or is dropped.
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Clone, Debug)]
struct Downstream(Probe);

impl Service<Step> for Downstream {
    type Response = &'static str;
    type Error = std::io::Error;
    type Future = BoxFuture<'static, Result<&'static str, std::io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.ready_polls.fetch_add(1, Ordering::SeqCst);
        if self.0.fail_ready.load(Ordering::SeqCst) {
            return Poll::Ready(Err(std::io::Error::other("not ready")));
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, step: Step) -> Self::Future {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.0.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.0.peak.fetch_max(now, Ordering::SeqCst);
        let running = Running(self.0.running.clone());
        Box::pin(async move {
            let _running = running;
            match step {
                Step::Ok => {}
                Step::Sleep(d) => tokio::time::sleep(d).await,
                Step::Wait(n) => n.notified().await,
            }
            Ok("ok")
        })
    }
}

type Svc = Bulkhead<Downstream>;

fn builder(max_concurrent: u32, max_queue: u32, max_wait: Duration) -> BulkheadBuilder {
    BulkheadLayer::builder("test")
        .max_concurrent(max_concurrent)
        .max_queue(max_queue)
        .max_wait(max_wait)
        .without_metrics()
}

fn make(b: BulkheadBuilder) -> (Svc, BulkheadHandle, Probe) {
    let layer = b.build().unwrap();
    let probe = Probe::default();
    (
        layer.layer(Downstream(probe.clone())),
        layer.handle(),
        probe,
    )
}

fn kind(r: &Result<&'static str, Error>) -> Option<RejectionKind> {
    r.as_ref()
        .err()
        .and_then(|e| e.rejection())
        .map(|r| r.kind())
}

/// Makes a clone ready and starts its call: the permit moves to the returned
/// future.
async fn start(svc: &Svc, step: Step) -> BoxFuture<'static, Result<&'static str, Error>> {
    let mut s = svc.clone();
    let fut = s.ready().await.unwrap().call(step);
    Box::pin(fut)
}

/// Polls a future once, with a waker that does nothing.
fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
    Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
}

/// A waker that remembers being woken.
#[derive(Default)]
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Flag {
    fn woken(&self) -> bool {
        self.0.swap(false, Ordering::SeqCst)
    }
}

/// Polls a future once with `flag`'s waker.
fn poll_with<F: Future + Unpin>(f: &mut F, flag: &Arc<Flag>) -> Poll<F::Output> {
    let waker = Waker::from(flag.clone());
    Pin::new(f).poll(&mut Context::from_waker(&waker))
}

/// Lets spawned tasks run without moving time.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn permits_limit_concurrency_exactly() {
    let (svc, h, probe) = make(builder(3, 0, MS));
    let gate = Arc::new(Notify::new());
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::spawn(start(&svc, Step::Wait(gate.clone())).await));
    }
    settle().await;
    assert_eq!((h.in_flight(), probe.running()), (3, 3));
    assert_eq!(h.available(), 0);

    // The fourth is refused at once, without reaching the downstream.
    let r = svc.clone().oneshot(Step::Ok).await;
    assert_eq!(kind(&r), Some(RejectionKind::BulkheadFull));
    assert_eq!(probe.calls(), 3);

    gate.notify_waiters();
    for t in held {
        assert_eq!(t.await.unwrap().unwrap(), "ok");
    }
    assert_eq!(h.in_flight(), 0);
    assert_eq!(svc.clone().oneshot(Step::Ok).await.unwrap(), "ok");
}

#[tokio::test(start_paused = true)]
async fn many_callers_never_exceed_the_limit() {
    let (svc, h, probe) = make(builder(3, 100, Duration::from_secs(60)));
    let tasks: Vec<_> = (0..40u64)
        .map(|i| {
            let svc = svc.clone();
            tokio::spawn(svc.oneshot(Step::Sleep(MS * (1 + (i % 7) as u32))))
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "ok");
    }
    assert_eq!(probe.calls(), 40);
    assert_eq!(probe.peak(), 3);
    assert_eq!((h.in_flight(), h.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn the_next_call_waits_then_proceeds_when_one_finishes() {
    let (svc, h, probe) = make(builder(2, 1, Duration::from_secs(1)));
    let t0 = Instant::now();
    let first = tokio::spawn(start(&svc, Step::Sleep(100 * MS)).await);
    let second = tokio::spawn(start(&svc, Step::Sleep(200 * MS)).await);
    let third = tokio::spawn(async move {
        let r = svc.oneshot(Step::Ok).await;
        (r, Instant::now())
    });
    settle().await;
    assert_eq!((h.in_flight(), h.queued()), (2, 1));
    assert_eq!(probe.calls(), 2);

    let (r, at) = third.await.unwrap();
    assert_eq!(r.unwrap(), "ok");
    assert_eq!(
        at - t0,
        100 * MS,
        "admitted as soon as the first call finished"
    );
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    assert_eq!((h.in_flight(), h.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_refuses_at_once() {
    let (svc, h, probe) = make(builder(1, 1, Duration::from_secs(1)));
    let gate = Arc::new(Notify::new());
    let holder = tokio::spawn(start(&svc, Step::Wait(gate.clone())).await);
    let waiter = tokio::spawn(svc.clone().oneshot(Step::Ok));
    settle().await;
    assert_eq!((h.in_flight(), h.queued()), (1, 1));

    let t0 = Instant::now();
    let mut third = svc.clone();
    // Ready at once: the refusal is stored and returned from call; the inner
    // service's readiness is not taken for it.
    let polls = probe.ready_polls();
    let r = third.ready().await.unwrap().call(Step::Ok).await;
    assert_eq!(Instant::now(), t0);
    assert_eq!(probe.ready_polls(), polls);
    let err = r.unwrap_err();
    let rejection = err.rejection().unwrap();
    assert_eq!(rejection.kind(), RejectionKind::BulkheadFull);
    assert_eq!(rejection.downstream().unwrap().as_str(), "test");
    assert_eq!(rejection.retry_after(), None);
    assert_eq!(h.queued(), 1);

    gate.notify_waiters();
    holder.await.unwrap().unwrap();
    waiter.await.unwrap().unwrap();
    assert_eq!(probe.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn reject_when_full_mode_never_queues() {
    let (svc, h, _) = make(builder(1, 0, Duration::ZERO));
    let held = start(&svc, Step::Ok).await;
    let r = svc.clone().oneshot(Step::Ok).await;
    assert_eq!(kind(&r), Some(RejectionKind::BulkheadFull));
    assert_eq!(h.queued(), 0);
    held.await.unwrap();
    assert_eq!(svc.clone().oneshot(Step::Ok).await.unwrap(), "ok");
}

#[tokio::test(start_paused = true)]
async fn max_wait_refuses_exactly_at_max_wait() {
    let (svc, h, probe) = make(builder(1, 4, 250 * MS));
    let gate = Arc::new(Notify::new());
    let _holder = tokio::spawn(start(&svc, Step::Wait(gate.clone())).await);
    settle().await;

    let t0 = Instant::now();
    let mut waiter = Box::pin(svc.clone().oneshot(Step::Ok));
    assert!(poll_once(&mut waiter).is_pending());
    assert_eq!(h.queued(), 1);
    advance(249 * MS).await;
    assert!(
        poll_once(&mut waiter).is_pending(),
        "still waiting at 249 ms"
    );
    advance(MS).await;
    let Poll::Ready(r) = poll_once(&mut waiter) else {
        panic!("refused at max wait");
    };
    assert_eq!(Instant::now() - t0, 250 * MS);
    let err = r.unwrap_err();
    assert_eq!(err.rejection().unwrap().kind(), RejectionKind::BulkheadFull);
    assert_eq!(
        err.rejection().unwrap().downstream().unwrap().as_str(),
        "test"
    );
    assert_eq!((h.in_flight(), h.queued()), (1, 0));
    assert_eq!(probe.calls(), 1);

    // Awaited rather than polled by hand, it ends at the same instant.
    let t1 = Instant::now();
    let r = svc.clone().oneshot(Step::Ok).await;
    assert_eq!(kind(&r), Some(RejectionKind::BulkheadFull));
    assert_eq!(t1.elapsed(), 250 * MS);
}

#[tokio::test(start_paused = true)]
async fn a_permit_freed_during_the_wait_is_taken() {
    let (svc, h, _) = make(builder(1, 1, 250 * MS));
    let holder = start(&svc, Step::Sleep(249 * MS)).await;
    let holder = tokio::spawn(holder);
    let t0 = Instant::now();
    let r = svc.clone().oneshot(Step::Ok).await;
    assert_eq!(r.unwrap(), "ok");
    assert_eq!(t0.elapsed(), 249 * MS);
    holder.await.unwrap().unwrap();
    assert_eq!((h.in_flight(), h.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_response_future_releases_its_permit() {
    let (svc, h, probe) = make(builder(1, 1, Duration::from_secs(1)));
    let gate = Arc::new(Notify::new());
    let fut = start(&svc, Step::Wait(gate)).await;
    assert_eq!(h.in_flight(), 1);
    let waiter = tokio::spawn(svc.clone().oneshot(Step::Ok));
    settle().await;
    assert_eq!(h.queued(), 1);

    let t0 = Instant::now();
    drop(fut);
    assert_eq!(probe.running(), 0);
    // The waiter is admitted in its place, with no time passing.
    assert_eq!(waiter.await.unwrap().unwrap(), "ok");
    assert_eq!(Instant::now(), t0);
    assert_eq!((h.in_flight(), h.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_completed_call_releases_before_returning() {
    let (svc, h, _) = make(builder(1, 0, MS));
    let mut s = svc.clone();
    let fut = s.ready().await.unwrap().call(Step::Ok);
    assert_eq!(h.in_flight(), 1);
    fut.await.unwrap();
    assert_eq!(h.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_clone_not_made_ready_holds_nothing() {
    let (svc, h, _) = make(builder(1, 0, MS));
    let mut ready = svc.clone();
    ready.ready().await.unwrap();
    assert_eq!(h.in_flight(), 1);

    // Cloning a ready service does not clone its permit.
    let clone = ready.clone();
    assert_eq!(h.in_flight(), 1);
    drop(clone);
    assert_eq!(h.in_flight(), 1, "dropping the clone released nothing");
    let mut other = ready.clone();
    let r = other.ready().await.unwrap().call(Step::Ok).await;
    assert_eq!(kind(&r), Some(RejectionKind::BulkheadFull));

    // A service dropped while holding an unused permit gives it back.
    drop(ready);
    assert_eq!(h.in_flight(), 0);
    assert_eq!(
        other.ready().await.unwrap().call(Step::Ok).await.unwrap(),
        "ok"
    );
}

#[tokio::test(start_paused = true)]
async fn a_waiter_whose_readiness_is_dropped_leaves_the_queue() {
    let (svc, h, probe) = make(builder(1, 2, Duration::from_secs(1)));
    let holder = start(&svc, Step::Wait(Arc::new(Notify::new()))).await;

    let mut a = Box::pin(svc.clone().oneshot(Step::Ok));
    let b = tokio::spawn(svc.clone().oneshot(Step::Ok));
    assert!(poll_once(&mut a).is_pending());
    settle().await;
    assert_eq!(h.queued(), 2);

    drop(a);
    assert_eq!(h.queued(), 1);
    b.abort();
    assert!(b.await.unwrap_err().is_cancelled());
    assert_eq!(h.queued(), 0);

    // A service waiting inside `ready()` leaves when the service is dropped.
    let mut c = svc.clone();
    {
        let mut ready = Box::pin(ServiceExt::<Step>::ready(&mut c));
        assert!(poll_once(&mut ready).is_pending());
    }
    assert_eq!(h.queued(), 1, "the service still waits");
    drop(c);
    assert_eq!(h.queued(), 0);

    drop(holder);
    assert_eq!((h.in_flight(), h.queued()), (0, 0));
    assert_eq!(probe.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_woken_waiter_that_is_dropped_passes_the_wake_up_on() {
    let (svc, h, _) = make(builder(1, 2, Duration::from_secs(1)));
    let holder = start(&svc, Step::Wait(Arc::new(Notify::new()))).await;
    let mut a = Box::pin(svc.clone().oneshot(Step::Ok));
    let mut b = Box::pin(svc.clone().oneshot(Step::Ok));
    let (wake_a, wake_b) = (Arc::new(Flag::default()), Arc::new(Flag::default()));
    assert!(poll_with(&mut a, &wake_a).is_pending());
    assert!(poll_with(&mut b, &wake_b).is_pending());
    assert_eq!(h.queued(), 2);

    // The release wakes the oldest waiter, `a`, only; `a` is dropped before it
    // runs, and its wake-up goes on to `b`.
    drop(holder);
    assert!(wake_a.woken());
    assert!(!wake_b.woken());
    drop(a);
    assert!(wake_b.woken());
    let Poll::Ready(r) = poll_with(&mut b, &wake_b) else {
        panic!("the wake-up reached b");
    };
    assert_eq!(r.unwrap(), "ok");
    assert_eq!((h.in_flight(), h.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_deadline_shorter_than_max_wait_refuses_at_the_deadline() {
    let (svc, h, probe) = make(builder(1, 1, Duration::from_secs(1)));
    let _holder = tokio::spawn(start(&svc, Step::Wait(Arc::new(Notify::new()))).await);
    settle().await;

    let t0 = Instant::now();
    let r = Deadline::after(300 * MS)
        .scope(svc.clone().oneshot(Step::Ok))
        .await;
    assert_eq!(t0.elapsed(), 300 * MS);
    let err = r.unwrap_err();
    let rejection = err.rejection().unwrap();
    assert_eq!(rejection.kind(), RejectionKind::DeadlineExceeded);
    assert_eq!(rejection.downstream().unwrap().as_str(), "test");
    assert_eq!(h.queued(), 0);

    // A deadline already passed refuses at once instead of queueing.
    let deadline = Deadline::after(MS);
    advance(2 * MS).await;
    let t1 = Instant::now();
    let r = deadline.scope(svc.clone().oneshot(Step::Ok)).await;
    assert_eq!(kind(&r), Some(RejectionKind::DeadlineExceeded));
    assert_eq!(Instant::now(), t1);

    // A deadline later than max wait leaves max wait in charge.
    let t2 = Instant::now();
    let r = Deadline::after(Duration::from_secs(5))
        .scope(svc.clone().oneshot(Step::Ok))
        .await;
    assert_eq!(kind(&r), Some(RejectionKind::BulkheadFull));
    assert_eq!(t2.elapsed(), Duration::from_secs(1));
    assert_eq!(probe.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_passed_deadline_does_not_refuse_a_free_permit() {
    // Judging deadlines is the timeout layer's job; the bulkhead only refuses to
    // wait past one.
    let (svc, _, _) = make(builder(1, 1, Duration::from_secs(1)));
    let deadline = Deadline::after(MS);
    advance(2 * MS).await;
    let r = deadline.scope(svc.clone().oneshot(Step::Ok)).await;
    assert_eq!(r.unwrap(), "ok");
}

#[tokio::test(start_paused = true)]
async fn raising_the_limit_admits_waiters_at_once() {
    let (svc, h, probe) = make(builder(1, 5, Duration::from_secs(1)));
    let gate = Arc::new(Notify::new());
    let calls: Vec<_> = (0..4)
        .map(|_| tokio::spawn(svc.clone().oneshot(Step::Wait(gate.clone()))))
        .collect();
    settle().await;
    assert_eq!((h.in_flight(), h.queued()), (1, 3));

    let t0 = Instant::now();
    h.set_max_concurrent(3).unwrap();
    settle().await;
    assert_eq!((h.in_flight(), h.queued()), (3, 1));
    assert_eq!(probe.running(), 3);
    h.set_max_concurrent(10).unwrap();
    settle().await;
    assert_eq!((h.in_flight(), h.queued()), (4, 0));
    assert_eq!(Instant::now(), t0, "no time passed");

    // Lowering it lets the running calls finish and holds new ones back.
    h.set_max_concurrent(2).unwrap();
    assert_eq!(h.max_concurrent(), 2);
    assert_eq!(h.available(), 0);
    let late = tokio::spawn(svc.clone().oneshot(Step::Ok));
    settle().await;
    assert_eq!((h.in_flight(), h.queued()), (4, 1));
    gate.notify_waiters();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    late.await.unwrap().unwrap();
    assert_eq!((h.in_flight(), h.queued()), (0, 0));
    assert_eq!(probe.peak(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_lowered_limit_admits_only_below_it() {
    let (svc, h, probe) = make(builder(3, 0, MS));
    let gate = Arc::new(Notify::new());
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(start(&svc, Step::Wait(gate.clone())).await);
    }
    h.set_max_concurrent(1).unwrap();
    held.pop();
    assert_eq!(h.in_flight(), 2);
    let r = svc.clone().oneshot(Step::Ok).await;
    assert_eq!(kind(&r), Some(RejectionKind::BulkheadFull));
    held.pop();
    held.pop();
    assert_eq!(svc.clone().oneshot(Step::Ok).await.unwrap(), "ok");
    assert_eq!(probe.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn inner_readiness_errors_give_the_permit_back() {
    let (mut svc, h, probe) = make(builder(1, 0, MS));
    probe.fail_ready.store(true, Ordering::SeqCst);
    let err = svc.ready().await.unwrap_err();
    assert!(!err.is_rejection(), "the inner service's own error");
    assert_eq!(h.in_flight(), 0);
    probe.fail_ready.store(false, Ordering::SeqCst);
    assert_eq!(
        svc.ready().await.unwrap().call(Step::Ok).await.unwrap(),
        "ok"
    );
}

#[tokio::test(start_paused = true)]
async fn calling_without_readiness_decides_at_once() {
    let (svc, h, _) = make(builder(1, 1, Duration::from_secs(1)));
    let mut a = svc.clone();
    let fut = a.call(Step::Ok);
    assert_eq!(h.in_flight(), 1);
    let mut b = svc.clone();
    let r = b.call(Step::Ok).await;
    assert_eq!(kind(&r), Some(RejectionKind::BulkheadFull));
    assert_eq!(h.queued(), 0);
    assert_eq!(fut.await.unwrap(), "ok");
    assert_eq!(h.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_service_waits_again_for_each_call() {
    // The wait's timer and registration are reused across waits of one service.
    let (svc, h, _) = make(builder(1, 1, 100 * MS));
    let mut s = svc.clone();
    for round in 0..3u32 {
        let holder = start(&svc, Step::Ok).await;
        let t0 = Instant::now();
        let r = s.ready().await.unwrap().call(Step::Ok).await;
        assert_eq!(kind(&r), Some(RejectionKind::BulkheadFull), "round {round}");
        assert_eq!(t0.elapsed(), 100 * MS);
        let holder = tokio::spawn(async move {
            tokio::time::sleep(30 * MS).await;
            holder.await
        });
        let t1 = Instant::now();
        assert_eq!(s.ready().await.unwrap().call(Step::Ok).await.unwrap(), "ok");
        assert_eq!(t1.elapsed(), 30 * MS);
        holder.await.unwrap().unwrap();
    }
    assert_eq!((h.in_flight(), h.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn observers_see_every_decision() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let (svc, h, _) = make(
        builder(1, 1, 50 * MS).on_event(move |e: &BulkheadEvent| log.lock().unwrap().push(*e)),
    );
    let holder = start(&svc, Step::Sleep(200 * MS)).await;
    let holder = tokio::spawn(holder);
    let waiter = tokio::spawn(svc.clone().oneshot(Step::Ok));
    settle().await;
    let _ = svc.clone().oneshot(Step::Ok).await;
    let _ = waiter.await.unwrap();
    h.set_max_concurrent(2).unwrap();
    holder.await.unwrap().unwrap();
    let events = events.lock().unwrap().clone();
    assert_eq!(
        events,
        vec![
            BulkheadEvent::Permitted {
                waited: Duration::ZERO
            },
            BulkheadEvent::Rejected {
                reason: RejectReason::QueueFull,
                waited: Duration::ZERO
            },
            BulkheadEvent::Rejected {
                reason: RejectReason::MaxWait,
                waited: 50 * MS
            },
            BulkheadEvent::LimitChanged { from: 1, to: 2 },
        ]
    );
}

#[test]
fn bad_settings_name_their_field() {
    let field = |b: BulkheadBuilder| b.build().unwrap_err().field().to_owned();
    assert_eq!(
        field(BulkheadLayer::builder("x").max_concurrent(0)),
        "max_concurrent"
    );
    let err = BulkheadLayer::builder("x")
        .max_concurrent(0)
        .build()
        .unwrap_err();
    assert_eq!(err.to_string(), "max_concurrent: must be at least 1");
    assert_eq!(
        field(BulkheadLayer::builder("x").max_concurrent(2_000_000)),
        "max_concurrent"
    );
    assert_eq!(
        field(BulkheadLayer::builder("x").max_queue(2_000_000)),
        "max_queue"
    );
    assert_eq!(
        field(
            BulkheadLayer::builder("x")
                .max_queue(3)
                .max_wait(Duration::ZERO)
        ),
        "max_wait"
    );
    assert_eq!(field(BulkheadLayer::builder("bad name")), "name");
    assert_eq!(field(BulkheadLayer::builder("")), "name");

    let config: BulkheadConfig = toml::from_str("max_concurrent = 0").unwrap();
    assert_eq!(
        BulkheadLayer::from_config("x", config).unwrap_err().field(),
        "max_concurrent"
    );
    assert!(toml::from_str::<BulkheadConfig>("max_waiting = 3").is_err());

    let layer = BulkheadLayer::from_config(
        "x",
        toml::from_str("max_concurrent = 2\nmax_queue = 4\nmax_wait = \"75ms\"").unwrap(),
    )
    .unwrap();
    let h = layer.handle();
    assert_eq!(
        h.config(),
        BulkheadConfig {
            max_concurrent: 2,
            max_queue: 4,
            max_wait: 75 * MS,
        }
    );
    // A bad runtime change is refused and changes nothing.
    let err = h.set_max_concurrent(0).unwrap_err();
    assert_eq!(err.field(), "max_concurrent");
    assert_eq!(h.max_concurrent(), 2);
    assert_eq!(h.name().as_str(), "x");
}

/// On real threads: many callers on a multi-threaded runtime, with releases and
/// waits racing; every call gets through, never more than the limit at once,
/// and nothing stays counted afterwards. A lost wake-up would show as a call
/// waiting out its (long) max wait and failing.
#[test]
fn concurrent_callers_on_threads_lose_no_wake_up() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (svc, h, probe) = make(builder(3, 1_000, Duration::from_secs(30)));
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move {
                    for _ in 0..50 {
                        let mut s = svc.clone();
                        let r = s.ready().await.unwrap().call(Step::Ok).await;
                        assert_eq!(r.unwrap(), "ok");
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        let all = async {
            for t in tasks {
                t.await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(20), all)
            .await
            .expect("every call got through well within its max wait");
        assert_eq!(probe.calls(), 64 * 50);
        assert!(probe.peak() <= 3, "peak {}", probe.peak());
        assert_eq!((h.in_flight(), h.queued()), (0, 0));
    });
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiters_wait_state_serves_the_next_one() {
    // Services that waited give their (disarmed) wait state to the bulkhead when
    // dropped; later waiters reuse it and are woken and timed as usual.
    let (svc, h, _) = make(builder(1, 2, 100 * MS));
    let gate = Arc::new(Notify::new());
    let holder = tokio::spawn(start(&svc, Step::Wait(gate.clone())).await);
    for _ in 0..3 {
        let t0 = Instant::now();
        let r = svc.clone().oneshot(Step::Ok).await;
        assert_eq!(kind(&r), Some(RejectionKind::BulkheadFull));
        assert_eq!(t0.elapsed(), 100 * MS);
    }
    let waiter = tokio::spawn(svc.clone().oneshot(Step::Ok));
    settle().await;
    assert_eq!(h.queued(), 1);
    gate.notify_waiters();
    holder.await.unwrap().unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), "ok");
    assert_eq!((h.in_flight(), h.queued()), (0, 0));
}

#[test]
fn services_handles_and_futures_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Svc>();
    send_sync::<BulkheadLayer>();
    send_sync::<BulkheadHandle>();
    send::<<Svc as Service<Step>>::Future>();
}

#[tokio::test(start_paused = true)]
async fn a_service_whose_wait_ran_out_catches_no_later_wake_up() {
    // `a` waits out its max wait and lives on; a release afterwards must wake
    // the call waiting now, not `a`'s stale registration.
    let (svc, h, _) = make(builder(1, 2, 100 * MS));
    let holder = start(&svc, Step::Wait(Arc::new(Notify::new()))).await;
    let mut a = svc.clone();
    let r = a.ready().await.unwrap().call(Step::Ok).await;
    assert_eq!(kind(&r), Some(RejectionKind::BulkheadFull));

    let b = tokio::spawn(async move {
        let r = svc.oneshot(Step::Ok).await;
        (r, Instant::now())
    });
    settle().await;
    assert_eq!(h.queued(), 1);
    advance(30 * MS).await;
    let released = Instant::now();
    drop(holder);
    let (r, at) = b.await.unwrap();
    assert_eq!(r.unwrap(), "ok");
    assert_eq!(at, released, "woken by the release, not by its own timer");
    drop(a);
}
