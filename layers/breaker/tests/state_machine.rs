//! State-machine tests of the circuit breaker, on paused tokio time: every transition
#![cfg(not(feature = "loom"))]
//! and boundary a user relies on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_breaker::{BreakerEvent, Builder, CircuitBreaker, CircuitBreakerLayer, State};
use palisade_core::{Error, FailureReason, Outcome, RejectionKind, classify_fn};
use tokio::sync::Notify;
use tokio::time::{Instant, advance};
use tower::{Layer, Service, ServiceExt};

/// What the test downstream does with a request.
#[derive(Clone)]
enum Step {
    Ok,
    Fail,
    /// A 404-like error the classifier ignores.
    Ignore,
    /// Succeeds after this long.
    SlowOk(Duration),
    /// Fails after this long.
    SlowFail(Duration),
    /// Waits for the notify, then succeeds.
    Wait(Arc<Notify>),
}

type Classifier = fn(Result<&&'static str, &std::io::Error>) -> Outcome;

fn classify(result: Result<&&'static str, &std::io::Error>) -> Outcome {
    match result {
        Ok(_) => Outcome::Success,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outcome::Ignored,
        Err(_) => Outcome::Failure(FailureReason::ERROR),
    }
}

async fn downstream(step: Step) -> Result<&'static str, std::io::Error> {
    match step {
        Step::Ok => Ok("ok"),
        Step::Fail => Err(std::io::Error::other("boom")),
        Step::Ignore => Err(std::io::Error::new(std::io::ErrorKind::NotFound, "404")),
        Step::SlowOk(d) => {
            tokio::time::sleep(d).await;
            Ok("slow")
        }
        Step::SlowFail(d) => {
            tokio::time::sleep(d).await;
            Err(std::io::Error::other("slow boom"))
        }
        Step::Wait(n) => {
            n.notified().await;
            Ok("waited")
        }
    }
}

type Downstream = tower::util::ServiceFn<
    fn(Step) -> futures_util::future::BoxFuture<'static, Result<&'static str, std::io::Error>>,
>;
type Svc = CircuitBreaker<Downstream, palisade_core::ClassifyFn<Classifier>>;

fn inner() -> Downstream {
    tower::service_fn(|s| Box::pin(downstream(s)))
}

/// A builder with deterministic waits (no jitter) and the test classifier.
fn builder() -> Builder {
    CircuitBreakerLayer::builder("test")
        .wait_jitter(0.0)
        .without_metrics()
}

fn make(b: Builder) -> (Svc, palisade_breaker::BreakerHandle) {
    let layer = b
        .classify(classify_fn(classify as Classifier))
        .build()
        .unwrap();
    let handle = layer.handle();
    (layer.layer(inner()), handle)
}

async fn call(svc: &mut Svc, step: Step) -> Result<&'static str, Error> {
    svc.ready().await?.call(step).await
}

async fn run(svc: &mut Svc, steps: &[Step]) {
    for s in steps {
        let _ = call(svc, s.clone()).await;
    }
}

fn is_open_rejection(r: &Result<&'static str, Error>) -> bool {
    matches!(r, Err(e) if e.rejection().is_some_and(|r| r.kind() == RejectionKind::CircuitOpen))
}

use Step::{Fail as F, Ok as S};

#[tokio::test(start_paused = true)]
async fn one_call_below_the_minimum_stays_closed() {
    let (mut svc, h) = make(
        builder()
            .count_window(10)
            .minimum_calls(5)
            .failure_rate_threshold(0.5),
    );
    run(&mut svc, &[F, F, F, F]).await;
    assert_eq!(h.state(), State::Closed);
    assert_eq!(h.snapshot().window.failures, 4);
    let r = call(&mut svc, F).await;
    assert!(
        matches!(&r, Err(e) if !e.is_rejection()),
        "the 5th failure is the downstream's own error"
    );
    assert_eq!(h.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn opens_exactly_at_the_threshold() {
    // 4 calls, threshold 0.5: one failure in four (0.25) stays closed, two (0.5) open.
    let (mut svc, h) = make(
        builder()
            .count_window(4)
            .minimum_calls(4)
            .failure_rate_threshold(0.5),
    );
    run(&mut svc, &[S, S, S, F]).await;
    assert_eq!(h.state(), State::Closed);
    assert_eq!(h.snapshot().failure_rate, 0.25);
    run(&mut svc, &[F]).await;
    assert_eq!(h.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn the_call_reaching_the_minimum_opens_if_already_over() {
    let (mut svc, h) = make(
        builder()
            .count_window(10)
            .minimum_calls(4)
            .failure_rate_threshold(0.5),
    );
    run(&mut svc, &[F, F, S]).await;
    assert_eq!(h.state(), State::Closed);
    // The fourth call is a success, but 2/4 failed: at the threshold.
    run(&mut svc, &[S]).await;
    assert_eq!(h.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn old_failures_slide_out_of_a_count_window() {
    let (mut svc, h) = make(
        builder()
            .count_window(4)
            .minimum_calls(4)
            .failure_rate_threshold(0.5),
    );
    run(&mut svc, &[F, S, S, S]).await; // 0.25
    run(&mut svc, &[S]).await; // the failure leaves: 0
    assert_eq!(h.snapshot().window.failures, 0);
    run(&mut svc, &[F]).await; // 0.25
    assert_eq!(h.state(), State::Closed);
    run(&mut svc, &[F]).await; // 0.5
    assert_eq!(h.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn old_failures_slide_out_of_a_time_window() {
    let (mut svc, h) = make(
        builder()
            .time_window(Duration::from_secs(10), 10)
            .minimum_calls(4)
            .failure_rate_threshold(0.5),
    );
    run(&mut svc, &[F]).await;
    advance(Duration::from_secs(5)).await;
    run(&mut svc, &[S, S]).await;
    assert_eq!(h.snapshot().window.calls, 3);
    // Ten seconds after the failure, it has left the window.
    advance(Duration::from_secs(5)).await;
    assert_eq!(h.snapshot().window.calls, 2);
    run(&mut svc, &[F]).await; // 1 of 3: below the minimum anyway
    run(&mut svc, &[S]).await;
    assert_eq!(h.state(), State::Closed);
    run(&mut svc, &[F]).await; // 2 of 5 = 0.4
    assert_eq!(h.state(), State::Closed);
    run(&mut svc, &[F]).await; // 3 of 6 = 0.5
    assert_eq!(h.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn ignored_outcomes_do_not_count() {
    let (mut svc, h) = make(
        builder()
            .count_window(4)
            .minimum_calls(2)
            .failure_rate_threshold(0.5),
    );
    run(
        &mut svc,
        &[Step::Ignore, Step::Ignore, Step::Ignore, S, Step::Ignore],
    )
    .await;
    let snap = h.snapshot();
    assert_eq!(snap.window.calls, 1);
    assert_eq!(h.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_open_even_under_the_rate() {
    let (mut svc, h) = make(
        builder()
            .count_window(100)
            .minimum_calls(100)
            .consecutive_failures(3),
    );
    run(&mut svc, &[F, F, S, F, F]).await;
    assert_eq!(h.state(), State::Closed, "a success breaks the run");
    run(&mut svc, &[F]).await;
    assert_eq!(h.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn calls_admitted_before_it_opened_do_not_count_once_it_closes_again() {
    let (mut svc, h) = make(
        builder()
            .count_window(100)
            .minimum_calls(100)
            .consecutive_failures(3)
            .wait_in_open(Duration::from_secs(1))
            .half_open_probes(1),
    );
    // Seven calls admitted while closed, each failing after 10 s.
    let slow: Vec<_> = (0..7)
        .map(|_| tokio::spawn(svc.clone().oneshot(Step::SlowFail(Duration::from_secs(10)))))
        .collect();
    tokio::task::yield_now().await;
    // Three fast failures open it; a second later one probe closes it again.
    run(&mut svc, &[F, F, F]).await;
    assert_eq!(h.state(), State::Open);
    advance(Duration::from_secs(1)).await;
    run(&mut svc, &[S]).await;
    assert_eq!(h.state(), State::Closed);
    // The slow calls fail now: they belong to the closed period before it opened,
    // and say nothing about the fresh one.
    for call in slow {
        assert!(call.await.unwrap().is_err());
    }
    assert_eq!(h.state(), State::Closed);
    run(&mut svc, &[F]).await;
    assert_eq!(
        h.state(),
        State::Closed,
        "one fresh failure, not a run of eight"
    );
    run(&mut svc, &[F, F]).await;
    assert_eq!(h.state(), State::Open, "three fresh failures are a run");
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_on_the_slow_rate() {
    let slow = Step::SlowOk(Duration::from_millis(200));
    let (mut svc, h) = make(
        builder()
            .count_window(4)
            .minimum_calls(4)
            .slow_calls(Duration::from_millis(200), 0.5),
    );
    run(
        &mut svc,
        &[S, S, slow.clone(), Step::SlowOk(Duration::from_millis(199))],
    )
    .await;
    assert_eq!(
        h.snapshot().window.slow,
        1,
        "199 ms is under the 200 ms threshold"
    );
    assert_eq!(h.state(), State::Closed);
    run(&mut svc, &[slow]).await;
    let snap = h.snapshot();
    assert_eq!(snap.state, State::Open);
    assert_eq!(snap.slow_call_rate, 0.5);
    assert_eq!(snap.failure_rate, 0.0);
}

#[tokio::test(start_paused = true)]
async fn open_fails_fast_with_the_remaining_wait_then_turns_half_open_by_itself() {
    let transitions = Arc::new(Mutex::new(Vec::new()));
    let log = transitions.clone();
    let (mut svc, h) = make(
        builder()
            .consecutive_failures(1)
            .wait_in_open(Duration::from_secs(10))
            .on_event(move |e: &BreakerEvent| {
                if let BreakerEvent::Transition { from, to, .. } = e {
                    log.lock().unwrap().push((*from, *to));
                }
            }),
    );
    run(&mut svc, &[F]).await;
    advance(Duration::from_secs(4)).await;
    let r = call(&mut svc, S).await;
    assert!(is_open_rejection(&r));
    let rejection = r.unwrap_err().rejection().cloned().unwrap();
    assert_eq!(rejection.retry_after(), Some(Duration::from_secs(6)));
    assert_eq!(rejection.downstream().unwrap().as_str(), "test");
    // Without any call, the timer turns the breaker half-open when the wait ends.
    advance(Duration::from_secs(6)).await;
    tokio::task::yield_now().await;
    assert_eq!(
        *transitions.lock().unwrap(),
        vec![(State::Closed, State::Open), (State::Open, State::HalfOpen)]
    );
    assert_eq!(h.snapshot().state, State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn open_never_hangs_in_poll_ready() {
    let (mut svc, _h) = make(builder().consecutive_failures(1));
    run(&mut svc, &[F]).await;
    let started = Instant::now();
    for _ in 0..100 {
        assert!(is_open_rejection(&call(&mut svc, S).await));
    }
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_exactly_n_concurrent_probes() {
    let (svc, h) = make(
        builder()
            .consecutive_failures(1)
            .wait_in_open(Duration::from_secs(1))
            .half_open_probes(2)
            .half_open_successes(2),
    );
    let mut first = svc.clone();
    run(&mut first, &[F]).await;
    advance(Duration::from_secs(1)).await;
    let gate = Arc::new(Notify::new());
    let mut probes = Vec::new();
    let mut rejected = 0;
    for _ in 0..6 {
        let mut s = svc.clone();
        let ready = s.ready().await.unwrap();
        let fut = ready.call(Step::Wait(gate.clone()));
        let mut fut = Box::pin(fut);
        // A refused call completes at once; a probe waits for the gate.
        match futures_util::poll!(&mut fut) {
            std::task::Poll::Ready(r) => {
                assert!(is_open_rejection(&r));
                rejected += 1;
            }
            std::task::Poll::Pending => probes.push(tokio::spawn(fut)),
        }
    }
    assert_eq!((probes.len(), rejected), (2, 4));
    assert_eq!(h.snapshot().probes, Some((2, 0)));
    gate.notify_waiters();
    for p in probes {
        assert_eq!(p.await.unwrap().unwrap(), "waited");
    }
    assert_eq!(h.state(), State::Closed);
    assert_eq!(
        h.snapshot().window.calls,
        0,
        "closing starts a fresh window"
    );
}

#[tokio::test(start_paused = true)]
async fn enough_successes_close_and_a_failed_probe_reopens_with_a_longer_wait() {
    let (mut svc, h) = make(
        builder()
            .consecutive_failures(1)
            .wait_in_open(Duration::from_secs(2))
            .wait_backoff(3.0, Duration::from_secs(10))
            .half_open_probes(1)
            .half_open_successes(2),
    );
    run(&mut svc, &[F]).await;
    let wait =
        |r: Result<&'static str, Error>| r.unwrap_err().rejection().unwrap().retry_after().unwrap();
    assert_eq!(wait(call(&mut svc, S).await), Duration::from_secs(2));
    advance(Duration::from_secs(2)).await;
    // A failed probe: open again, 2 s × 3.
    run(&mut svc, &[F]).await;
    assert_eq!(h.state(), State::Open);
    assert_eq!(wait(call(&mut svc, S).await), Duration::from_secs(6));
    advance(Duration::from_secs(6)).await;
    run(&mut svc, &[F]).await;
    // 2 × 3 × 3 = 18 s, capped at 10 s.
    assert_eq!(wait(call(&mut svc, S).await), Duration::from_secs(10));
    assert_eq!(h.snapshot().consecutive_trips, 3);
    advance(Duration::from_secs(10)).await;
    run(&mut svc, &[S]).await;
    assert_eq!(h.state(), State::HalfOpen, "one success of two");
    run(&mut svc, &[S]).await;
    assert_eq!(h.state(), State::Closed);
    assert_eq!(h.snapshot().consecutive_trips, 0);
    // Trip history was cleared on closing: the next trip waits 2 s again.
    run(&mut svc, &[F]).await;
    assert_eq!(wait(call(&mut svc, S).await), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn jitter_shortens_waits_within_its_bound() {
    let layer = CircuitBreakerLayer::builder("jitter")
        .consecutive_failures(1)
        .wait_in_open(Duration::from_secs(10))
        .wait_jitter(0.5)
        .without_metrics()
        .build()
        .unwrap();
    let mut waits = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let h = layer.handle();
        h.reset();
        let mut svc = layer.clone().layer(tower::service_fn(|_: ()| async {
            Err::<(), _>(std::io::Error::other("down"))
        }));
        let _ = svc.ready().await.unwrap().call(()).await;
        let remaining = h.snapshot().remaining_open.unwrap();
        assert!(remaining <= Duration::from_secs(10) && remaining >= Duration::from_secs(5));
        waits.insert(remaining);
    }
    assert!(waits.len() > 1, "jittered waits differ");
}

#[tokio::test(start_paused = true)]
async fn max_wait_in_half_open_reopens() {
    let (mut svc, h) = make(
        builder()
            .consecutive_failures(1)
            .wait_in_open(Duration::from_secs(1))
            .half_open_probes(1)
            .max_wait_in_half_open(Duration::from_secs(5)),
    );
    run(&mut svc, &[F]).await;
    advance(Duration::from_secs(1)).await;
    let gate = Arc::new(Notify::new());
    let mut probe = svc.clone();
    let hung = tokio::spawn(async move { call(&mut probe, Step::Wait(gate)).await });
    tokio::task::yield_now().await;
    assert_eq!(h.snapshot().probes, Some((1, 0)));
    advance(Duration::from_secs(5)).await;
    tokio::task::yield_now().await;
    assert_eq!(h.state(), State::Open);
    hung.abort();
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_frees_its_slot() {
    let (svc, h) = make(
        builder()
            .consecutive_failures(1)
            .wait_in_open(Duration::from_secs(1))
            .half_open_probes(1),
    );
    let mut a = svc.clone();
    run(&mut a, &[F]).await;
    advance(Duration::from_secs(1)).await;
    let gate = Arc::new(Notify::new());
    let fut = a.ready().await.unwrap().call(Step::Wait(gate));
    assert_eq!(h.snapshot().probes, Some((1, 0)));
    let mut b = svc.clone();
    assert!(is_open_rejection(&call(&mut b, S).await));
    drop(fut);
    assert_eq!(h.snapshot().probes, Some((0, 0)));
    assert_eq!(call(&mut b, S).await.unwrap(), "ok");
}

#[tokio::test(start_paused = true)]
async fn a_clone_not_made_ready_takes_no_probe() {
    let (svc, h) = make(
        builder()
            .consecutive_failures(1)
            .wait_in_open(Duration::from_secs(1))
            .half_open_probes(1),
    );
    let mut a = svc.clone();
    run(&mut a, &[F]).await;
    advance(Duration::from_secs(1)).await;
    // `a` is made ready (takes the one probe slot), then dropped unused.
    a.ready().await.unwrap();
    assert_eq!(h.snapshot().probes, Some((1, 0)));
    let never_readied = svc.clone();
    drop(a);
    assert_eq!(h.snapshot().probes, Some((0, 0)));
    drop(never_readied);
    assert_eq!(h.snapshot().probes, Some((0, 0)));
    let mut c = svc.clone();
    assert_eq!(call(&mut c, S).await.unwrap(), "ok");
}

#[tokio::test(start_paused = true)]
async fn forced_open_disabled_and_metrics_only() {
    let (mut svc, h) = make(
        builder()
            .count_window(4)
            .minimum_calls(2)
            .failure_rate_threshold(0.5),
    );
    h.force_open();
    let r = call(&mut svc, S).await;
    assert!(is_open_rejection(&r));
    assert_eq!(r.unwrap_err().rejection().unwrap().retry_after(), None);
    advance(Duration::from_secs(3600)).await;
    assert_eq!(h.state(), State::ForcedOpen, "forced open never times out");

    h.disable();
    run(&mut svc, &[F, F, F, F]).await;
    assert_eq!(h.state(), State::Disabled);
    assert_eq!(h.snapshot().window.calls, 0, "disabled records nothing");

    h.metrics_only();
    run(&mut svc, &[F, F, F, F]).await;
    let snap = h.snapshot();
    assert_eq!((snap.state, snap.window.failures), (State::MetricsOnly, 4));

    h.reset();
    let snap = h.snapshot();
    assert_eq!((snap.state, snap.window.calls), (State::Closed, 0));
    run(&mut svc, &[F, F]).await;
    assert_eq!(h.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn gate_mode_holds_readiness_until_half_open() {
    let (mut svc, h) = make(
        builder()
            .consecutive_failures(1)
            .wait_in_open(Duration::from_secs(3))
            .half_open_probes(1)
            .gate(),
    );
    run(&mut svc, &[F]).await;
    assert_eq!(h.state(), State::Open);
    let started = Instant::now();
    // Paused time jumps to the end of the open wait when the runtime idles.
    svc.ready().await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    assert_eq!(h.state(), State::HalfOpen);
    // The probe slot is held: another clone is not ready until it is freed.
    let mut other = svc.clone();
    let mut ready = Box::pin(async move {
        other.ready().await.unwrap();
        other
    });
    assert!(futures_util::poll!(&mut ready).is_pending());
    assert_eq!(svc.call(S).await.unwrap(), "ok");
    // One success closes (successes default to probes = 1); the waiter wakes.
    assert_eq!(h.state(), State::Closed);
    let mut other = ready.await;
    assert_eq!(other.call(S).await.unwrap(), "ok");
}

#[tokio::test(start_paused = true)]
async fn reconfigure_keeps_state_and_refuses_shape_changes() {
    let (mut svc, h) = make(
        builder()
            .count_window(10)
            .minimum_calls(2)
            .failure_rate_threshold(0.9),
    );
    run(&mut svc, &[F, S]).await;
    assert_eq!(h.state(), State::Closed);
    let mut config = h.config();
    config.failure_rate_threshold = 0.5;
    h.reconfigure(config.clone()).unwrap();
    run(&mut svc, &[F]).await; // 2 of 3 now over 0.5
    assert_eq!(h.state(), State::Open);
    // An open breaker stays open when only thresholds change.
    config.failure_rate_threshold = 0.6;
    h.reconfigure(config.clone()).unwrap();
    assert_eq!(h.state(), State::Open);
    let mut bad = config.clone();
    bad.failure_rate_threshold = 2.0;
    assert_eq!(
        h.reconfigure(bad).unwrap_err().to_string(),
        "failure_rate_threshold: 2 is not within 0..=1"
    );
    let mut reshaped = config;
    reshaped.window = palisade_breaker::WindowConfig::Count { size: 20 };
    assert_eq!(h.reconfigure(reshaped).unwrap_err().field(), "window");
    assert_eq!(h.config().failure_rate_threshold, 0.6);
}

#[tokio::test(start_paused = true)]
async fn bad_settings_are_refused_at_build_time() {
    let e = CircuitBreakerLayer::builder("x")
        .failure_rate_threshold(1.5)
        .build()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "failure_rate_threshold: 1.5 is not within 0..=1"
    );
    let e = CircuitBreakerLayer::builder("x")
        .count_window(0)
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "window.size");
    let e = CircuitBreakerLayer::builder("x")
        .half_open_probes(0)
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "half_open_probes");
    let e = CircuitBreakerLayer::builder("bad name")
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "name");
    let e = CircuitBreakerLayer::builder("x")
        .build_keyed(|r: &u32| *r, 0, Duration::from_secs(1))
        .unwrap_err();
    assert_eq!(e.field(), "keys.capacity");
    let e = CircuitBreakerLayer::builder("x")
        .gate()
        .build_keyed(|r: &u32| *r, 10, Duration::from_secs(1))
        .unwrap_err();
    assert_eq!(e.field(), "mode");
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_isolate_keys_and_stay_bounded() {
    let layer = CircuitBreakerLayer::builder("hosts")
        .consecutive_failures(2)
        .wait_in_open(Duration::from_secs(300))
        .without_metrics()
        .build_keyed(
            |req: &(&'static str, bool)| req.0,
            100,
            Duration::from_secs(60),
        )
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(
        |(_, fail): (&'static str, bool)| async move {
            if fail {
                Err(std::io::Error::other("down"))
            } else {
                Ok(())
            }
        },
    ));
    for _ in 0..2 {
        let _ = svc.ready().await.unwrap().call(("bad", true)).await;
    }
    let r = svc.ready().await.unwrap().call(("bad", false)).await;
    assert_eq!(
        r.unwrap_err().rejection().unwrap().kind(),
        RejectionKind::CircuitOpen
    );
    svc.ready()
        .await
        .unwrap()
        .call(("good", false))
        .await
        .unwrap();
    assert_eq!(layer.handle_for(&"bad").unwrap().state(), State::Open);
    assert_eq!(layer.handle_for(&"good").unwrap().state(), State::Closed);

    // Quiet past the idle timeout (its callers wait out the Retry-After), the open
    // breaker is kept, and still refuses; the idle closed one is forgotten.
    advance(Duration::from_secs(61)).await;
    assert_eq!(layer.sweep(), 1);
    assert!(layer.handle_for(&"good").is_none());
    assert_eq!(layer.handle_for(&"bad").unwrap().state(), State::Open);

    // A flood of distinct keys cannot grow the registry past its bound.
    let flood = CircuitBreakerLayer::builder("flood")
        .without_metrics()
        .build_keyed(|k: &String| k.clone(), 100, Duration::from_secs(60))
        .unwrap();
    let mut svc = flood.layer(tower::service_fn(|_: String| async {
        Ok::<_, std::io::Error>(())
    }));
    for i in 0..10_000 {
        svc.ready()
            .await
            .unwrap()
            .call(format!("key-{i}"))
            .await
            .unwrap();
    }
    let held = flood.keys();
    assert!(held > 0 && held <= 100, "{held} keys held");

    // Idle keys are forgotten.
    advance(Duration::from_secs(61)).await;
    assert_eq!(flood.sweep(), held);
    assert_eq!(flood.keys(), 0);
}
