//! The timeout layer on paused tokio time: where the timer fires, which limit wins,
//! what happens to the inner future, and what is counted.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use palisade_core::{Deadline, Error, RejectionKind};
use palisade_timeout::{Timeout, TimeoutLayer};
use tokio::time::{Instant, advance};
use tower::{Layer, Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);

/// Counts readiness polls and calls reaching the wrapped service.
#[derive(Clone, Default)]
struct Counts {
    ready: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

impl Counts {
    fn ready(&self) -> usize {
        self.ready.load(Ordering::SeqCst)
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct Counting<S> {
    inner: S,
    counts: Counts,
}

impl<S: Service<R>, R> Service<R> for Counting<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.counts.ready.fetch_add(1, Ordering::SeqCst);
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> S::Future {
        self.counts.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.call(req)
    }
}

/// Sets its flag when dropped: tells whether the inner future is gone.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

type Slow = tower::util::ServiceFn<
    fn(
        Duration,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<&'static str, std::io::Error>> + Send>>,
>;

/// A downstream that answers after the requested delay.
fn slow() -> Slow {
    tower::service_fn(|delay: Duration| {
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok("done")
        })
    })
}

fn layer(timeout: Duration) -> TimeoutLayer {
    TimeoutLayer::new("test", timeout).unwrap()
}

fn kind(result: &Result<&'static str, Error>) -> Option<RejectionKind> {
    result
        .as_ref()
        .err()
        .and_then(|e| e.rejection())
        .map(|r| r.kind())
}

/// Counters of a snapshot, keyed by name and sorted `k=v` labels.
fn counters(snapshotter: &Snapshotter) -> BTreeMap<(String, String), u64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let key = key.key().clone();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            match value {
                DebugValue::Counter(c) => Some(((key.name().to_owned(), labels.join(",")), c)),
                _ => None,
            }
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn fires_exactly_at_the_timeout() {
    let mut svc = layer(Duration::from_millis(100)).layer(slow());
    let start = Instant::now();
    let call = tokio::spawn(svc.ready().await.unwrap().call(Duration::from_secs(60)));
    advance(99 * MS).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!call.is_finished(), "fired before the timeout");
    advance(MS).await;
    let result = call.await.unwrap();
    assert_eq!(kind(&result), Some(RejectionKind::Timeout));
    assert_eq!(start.elapsed(), Duration::from_millis(100));

    // Left alone, paused time jumps straight to the timer: exactly 100 ms again.
    let start = Instant::now();
    let result = svc
        .ready()
        .await
        .unwrap()
        .call(Duration::from_secs(60))
        .await;
    assert_eq!(kind(&result), Some(RejectionKind::Timeout));
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    let err = result.unwrap_err();
    assert_eq!(
        err.rejection().unwrap().downstream().unwrap().as_str(),
        "test"
    );
}

#[tokio::test(start_paused = true)]
async fn answers_in_time_pass_and_the_answer_wins_a_tie() {
    let mut svc = layer(Duration::from_millis(100)).layer(slow());
    let result = svc.ready().await.unwrap().call(99 * MS).await;
    assert_eq!(result.unwrap(), "done");
    // The inner timer and the timeout fall on the same instant: the answer is kept.
    let result = svc.ready().await.unwrap().call(100 * MS).await;
    assert_eq!(result.unwrap(), "done");
    let result = svc.ready().await.unwrap().call(101 * MS).await;
    assert_eq!(kind(&result), Some(RejectionKind::Timeout));
}

#[tokio::test(start_paused = true)]
async fn the_inner_services_errors_pass_through() {
    let svc = layer(Duration::from_secs(1)).layer(tower::service_fn(|_: ()| async {
        Err::<(), _>(std::io::Error::other("boom"))
    }));
    let err = svc.oneshot(()).await.unwrap_err();
    assert!(!err.is_rejection());
    assert_eq!(err.to_string(), "downstream error: boom");
}

#[tokio::test(start_paused = true)]
async fn a_shorter_deadline_wins_and_says_deadline_exceeded() {
    let mut svc = layer(Duration::from_secs(1)).layer(slow());
    let start = Instant::now();
    let result = Deadline::after(Duration::from_millis(300))
        .scope(async { svc.ready().await?.call(Duration::from_secs(60)).await })
        .await;
    assert_eq!(kind(&result), Some(RejectionKind::DeadlineExceeded));
    assert_eq!(start.elapsed(), Duration::from_millis(300));

    // A later deadline leaves the timeout in charge.
    let start = Instant::now();
    let result = Deadline::after(Duration::from_secs(5))
        .scope(async { svc.ready().await?.call(Duration::from_secs(60)).await })
        .await;
    assert_eq!(kind(&result), Some(RejectionKind::Timeout));
    assert_eq!(start.elapsed(), Duration::from_secs(1));

    // On a tie the deadline is the binding limit: nobody waits for a retry.
    let start = Instant::now();
    let result = Deadline::after(Duration::from_secs(1))
        .scope(async { svc.ready().await?.call(Duration::from_secs(60)).await })
        .await;
    assert_eq!(kind(&result), Some(RejectionKind::DeadlineExceeded));
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn the_inner_future_is_dropped_when_the_timer_fires() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&dropped);
    let mut svc = layer(Duration::from_millis(50)).layer(tower::service_fn(move |_: ()| {
        let guard = DropFlag(Arc::clone(&flag));
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
            Ok::<_, std::io::Error>(())
        }
    }));
    let mut response = pin!(svc.ready().await.unwrap().call(()));
    advance(49 * MS).await;
    let waker = std::task::Waker::noop();
    assert!(
        response
            .as_mut()
            .poll(&mut Context::from_waker(waker))
            .is_pending()
    );
    assert!(!dropped.load(Ordering::SeqCst));
    let err = response.as_mut().await.unwrap_err();
    assert_eq!(err.rejection().unwrap().kind(), RejectionKind::Timeout);
    // Dropped when the timer fired, while the response future itself still lives.
    assert!(dropped.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn a_passed_deadline_is_refused_without_touching_the_inner_service() {
    let counts = Counts::default();
    let mut svc = layer(Duration::from_secs(1)).layer(Counting {
        inner: slow(),
        counts: counts.clone(),
    });
    let deadline = Deadline::after(Duration::from_millis(100));
    advance(Duration::from_millis(100)).await;
    let start = Instant::now();
    let result = deadline
        .scope(async { svc.ready().await?.call(Duration::ZERO).await })
        .await;
    assert_eq!(kind(&result), Some(RejectionKind::DeadlineExceeded));
    assert_eq!(start.elapsed(), Duration::ZERO, "refused at once");
    assert_eq!(counts.ready(), 0, "no readiness taken for a refused call");
    assert_eq!(counts.calls(), 0);

    // Called without poll_ready: still refused, still not called.
    let result = deadline
        .scope(async { svc.call(Duration::ZERO).await })
        .await;
    assert_eq!(kind(&result), Some(RejectionKind::DeadlineExceeded));
    assert_eq!(counts.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_passing_between_ready_and_call_is_refused_in_call() {
    let counts = Counts::default();
    let mut svc: Timeout<_> = layer(Duration::from_secs(1)).layer(Counting {
        inner: slow(),
        counts: counts.clone(),
    });
    let result = Deadline::after(Duration::from_millis(100))
        .scope(async {
            svc.ready().await?;
            advance(Duration::from_millis(100)).await;
            svc.call(Duration::ZERO).await
        })
        .await;
    assert_eq!(kind(&result), Some(RejectionKind::DeadlineExceeded));
    assert_eq!(counts.ready(), 1);
    assert_eq!(counts.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_clone_decides_for_itself() {
    let counts = Counts::default();
    let mut svc = layer(Duration::from_secs(1)).layer(Counting {
        inner: slow(),
        counts: counts.clone(),
    });
    let deadline = Deadline::after(Duration::ZERO);
    // Made ready under a passed deadline: this clone will refuse.
    deadline
        .scope(async {
            svc.ready().await.unwrap();
        })
        .await;
    // A clone was not made ready: outside any deadline it reaches the inner service.
    let mut clone = svc.clone();
    let result = clone.ready().await.unwrap().call(MS).await;
    assert_eq!(result.unwrap(), "done");
    assert_eq!(counts.calls(), 1);
    // The original keeps its own decision: called outside any deadline, it refuses.
    let result = svc.call(MS).await;
    assert_eq!(kind(&result), Some(RejectionKind::DeadlineExceeded));
    assert_eq!(counts.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn made_ready_again_under_another_deadline_it_follows_that_one() {
    let counts = Counts::default();
    let mut svc = layer(Duration::from_secs(1)).layer(Counting {
        inner: slow(),
        counts: counts.clone(),
    });
    // Made ready ahead under a passed deadline (as a balancer readies endpoints)...
    Deadline::after(Duration::ZERO)
        .scope(async {
            svc.ready().await.unwrap();
        })
        .await;
    // ...then made ready again, and called, for a request with time left: it is
    // sent, not refused for the earlier request's deadline.
    let result = Deadline::after(Duration::from_secs(5))
        .scope(async { svc.ready().await.unwrap().call(MS).await })
        .await;
    assert_eq!(result.unwrap(), "done");
    assert_eq!(counts.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn counts_calls_by_outcome() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        TimeoutLayer::new("inventory", Duration::from_millis(100)).unwrap()
    });
    let key = |outcome: &str| {
        (
            "palisade_timeout_calls_total".to_owned(),
            format!("downstream=inventory,outcome={outcome}"),
        )
    };
    let zero = counters(&snapshotter);
    for outcome in ["completed", "timed_out", "deadline_exceeded"] {
        assert_eq!(
            zero.get(&key(outcome)),
            Some(&0),
            "{outcome} registered at zero"
        );
    }

    let mut svc = layer.layer(slow());
    let _ = svc.ready().await.unwrap().call(MS).await;
    let _ = svc.ready().await.unwrap().call(MS).await;
    let _ = svc
        .ready()
        .await
        .unwrap()
        .call(Duration::from_secs(1))
        .await;
    let _ = Deadline::after(Duration::from_millis(10))
        .scope(async { svc.ready().await?.call(Duration::from_secs(1)).await })
        .await;
    let _ = Deadline::after(Duration::ZERO)
        .scope(async { svc.ready().await?.call(Duration::from_secs(1)).await })
        .await;
    let seen = counters(&snapshotter);
    assert_eq!(seen[&key("completed")], 2);
    assert_eq!(seen[&key("timed_out")], 1);
    assert_eq!(seen[&key("deadline_exceeded")], 2);
}

#[test]
fn bad_settings_name_the_field() {
    let err = TimeoutLayer::new("test", Duration::ZERO).unwrap_err();
    assert_eq!(err.field(), "timeout");
    let err = TimeoutLayer::new("bad name", Duration::from_secs(1)).unwrap_err();
    assert_eq!(err.field(), "name");
    let err = TimeoutLayer::new("", Duration::from_secs(1)).unwrap_err();
    assert_eq!(err.field(), "name");
    // A huge timeout is fine: it never overflows the clock.
    assert!(TimeoutLayer::new("test", Duration::MAX).is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_huge_timeout_does_not_overflow() {
    let svc = layer(Duration::MAX).layer(slow());
    assert_eq!(
        svc.oneshot(Duration::from_secs(3600)).await.unwrap(),
        "done"
    );
}

/// A call answered at once makes no timer: polled by hand, outside any runtime
/// (where making a tokio timer would panic), the answer comes through.
#[test]
fn a_call_answered_at_once_makes_no_timer() {
    let mut svc = TimeoutLayer::new("test", Duration::from_secs(1))
        .unwrap()
        .layer(tower::service_fn(|x: u32| async move {
            Ok::<_, std::io::Error>(x)
        }));
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let mut fut = pin!(svc.call(7));
    assert!(matches!(fut.as_mut().poll(&mut cx), Poll::Ready(Ok(7))));
}

/// A timeout changed through the handle applies to calls made after the change;
/// a call in flight keeps the timeout it started with.
#[tokio::test(start_paused = true)]
async fn a_changed_timeout_applies_to_the_next_calls_only() {
    let layer = TimeoutLayer::new("test", Duration::from_secs(1)).unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(tower::service_fn(|_: u32| {
        std::future::pending::<Result<u32, std::io::Error>>()
    }));
    let started = Instant::now();
    let first = tokio::spawn(svc.ready().await.unwrap().call(1));
    tokio::task::yield_now().await;

    handle.set_timeout(Duration::from_millis(100)).unwrap();
    assert_eq!(handle.timeout(), Duration::from_millis(100));
    let e = svc.ready().await.unwrap().call(2).await.unwrap_err();
    assert_eq!(e.rejection().unwrap().kind(), RejectionKind::Timeout);
    assert_eq!(started.elapsed(), Duration::from_millis(100));

    let e = first.await.unwrap().unwrap_err();
    assert_eq!(e.rejection().unwrap().kind(), RejectionKind::Timeout);
    assert_eq!(started.elapsed(), Duration::from_secs(1));

    // A zero timeout is refused and changes nothing.
    assert_eq!(
        handle.set_timeout(Duration::ZERO).unwrap_err().to_string(),
        "timeout: must be more than zero"
    );
    assert_eq!(handle.timeout(), Duration::from_millis(100));
}
