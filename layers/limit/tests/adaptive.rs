//! Adaptive concurrency limit tests, on paused tokio time: the algorithms move the
//! limit the way they promise, the limiter refuses at once at the limit, permits
//! come back however a call ends, and metrics tell the story.
#![cfg(not(feature = "loom"))]

use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use palisade_core::{BoxError, Classify, Error, Outcome, Rejection, RejectionKind, classify_fn};
use palisade_limit::adaptive::{
    AdaptiveEvent, AdaptiveLimit, AdaptiveLimitBuilder, AdaptiveLimitConfig, AdaptiveLimitHandle,
    AdaptiveLimitLayer, Aimd, AlgorithmConfig, Gradient2, LimitAlgorithm, Sample,
};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// What the test downstream does with a request.
#[derive(Clone)]
enum Step {
    /// Succeeds after this long.
    Ok(Duration),
    /// Fails after this long.
    Fail(Duration),
    /// Returns a palisade timeout rejection after this long (as an inner timeout
    /// layer would).
    TimedOut(Duration),
    /// Waits for the notify, then succeeds.
    Wait(Arc<Notify>),
}

async fn downstream(step: Step) -> Result<&'static str, BoxError> {
    match step {
        Step::Ok(d) => {
            tokio::time::sleep(d).await;
            Ok("ok")
        }
        Step::Fail(d) => {
            tokio::time::sleep(d).await;
            Err("boom".into())
        }
        Step::TimedOut(d) => {
            tokio::time::sleep(d).await;
            Err(Box::new(Rejection::new(RejectionKind::Timeout)))
        }
        Step::Wait(n) => {
            n.notified().await;
            Ok("waited")
        }
    }
}

type Downstream = tower::util::ServiceFn<
    fn(Step) -> futures_util::future::BoxFuture<'static, Result<&'static str, BoxError>>,
>;

fn inner() -> Downstream {
    tower::service_fn(|s| Box::pin(downstream(s)))
}

fn make<C: Clone>(
    b: AdaptiveLimitBuilder<C>,
) -> (AdaptiveLimit<Downstream, C>, AdaptiveLimitHandle) {
    let layer = b.without_metrics().build().unwrap();
    let handle = layer.handle();
    (layer.layer(inner()), handle)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn is_limit_rejection(r: &Result<&'static str, Error>) -> bool {
    matches!(r, Err(e) if e.rejection().is_some_and(|r| matches!(r.kind(), RejectionKind::BulkheadFull | RejectionKind::Shed)))
}

async fn call<C>(svc: &mut AdaptiveLimit<Downstream, C>, step: Step) -> Result<&'static str, Error>
where
    C: Classify<&'static str, BoxError> + Clone,
{
    svc.ready().await?.call(step).await
}

/// Starts calls of `step` on clones of `svc` until one is refused, then waits for
/// all of them: a burst that saturates the limit. Returns how many were admitted.
async fn burst<C>(svc: &AdaptiveLimit<Downstream, C>, step: Step) -> usize
where
    C: Classify<&'static str, BoxError> + Clone,
{
    let mut pending = Vec::new();
    loop {
        let mut s = svc.clone();
        s.ready().await.unwrap();
        let mut fut = Box::pin(s.call(step.clone()));
        match futures_util::poll!(&mut fut) {
            Poll::Ready(r) => {
                assert!(is_limit_rejection(&r), "only refusals finish at once");
                break;
            }
            Poll::Pending => pending.push(fut),
        }
    }
    let admitted = pending.len();
    futures_util::future::join_all(pending).await;
    admitted
}

// ---- the algorithms, on their own -----------------------------------------------------

#[test]
fn gradient2_follows_latency_against_its_long_term_average() {
    let g = Gradient2 {
        short_window: 1,
        ..Gradient2::default()
    };
    let mut state = g.start();
    let mut limit = 20.0;
    let sample = |rtt: u64, limit: f64| Sample::new(ms(rtt), limit as u32, false);
    // Steady latency: grows by queue_size × smoothing per sample.
    for _ in 0..50 {
        let next = g.update(&mut state, limit, &sample(10, limit));
        assert!((next - limit - 0.8).abs() < 1e-9, "{limit} -> {next}");
        limit = next;
    }
    assert_eq!(state.long_rtt(), ms(10));
    let steady = limit;
    // Latency triples: over tolerance × long-term RTT, every sample shrinks it.
    for _ in 0..30 {
        let next = g.update(&mut state, limit, &sample(30, limit));
        assert!(next < limit, "{limit} -> {next}");
        limit = next;
    }
    assert!(limit < steady * 0.35, "{steady} -> {limit}");
    assert!(state.long_rtt() > ms(10) && state.long_rtt() < ms(15));
    // Latency recovers: the limit grows back.
    let low = limit;
    for _ in 0..100 {
        let next = g.update(&mut state, limit, &sample(10, limit));
        assert!(next >= limit);
        limit = next;
    }
    assert!(limit > low + 70.0, "{low} -> {limit}");
}

#[test]
fn gradient2_accepts_a_lasting_change_of_latency() {
    let g = Gradient2 {
        short_window: 1,
        long_window: 100,
        ..Gradient2::default()
    };
    let mut state = g.start();
    let mut limit = 50.0;
    for _ in 0..100 {
        limit = g.update(&mut state, limit, &Sample::new(ms(10), 50, false));
    }
    let mut lowest = limit;
    for _ in 0..300 {
        limit = g.update(&mut state, limit, &Sample::new(ms(40), 200, false));
        lowest = lowest.min(limit);
    }
    // It shrank at first, then the long-term average caught up and it grew again.
    assert!(lowest < 40.0, "{lowest}");
    assert!(limit > lowest + 100.0, "{lowest} -> {limit}");
}

#[test]
fn aimd_moves_additively_up_and_multiplicatively_down() {
    let a = Aimd {
        backoff_ratio: 0.8,
        latency_threshold: ms(100),
        increase: 2.0,
    };
    assert_eq!(
        a.update(&mut (), 10.0, &Sample::new(ms(10), 5, false)),
        12.0
    );
    assert_eq!(
        a.update(&mut (), 10.0, &Sample::new(ms(10), 4, false)),
        10.0
    );
    assert_eq!(a.update(&mut (), 10.0, &Sample::new(ms(10), 5, true)), 8.0);
    assert_eq!(
        a.update(&mut (), 10.0, &Sample::new(ms(100), 5, false)),
        8.0
    );
}

// ---- the limiter ----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn aimd_grows_under_success_and_backs_off_on_failures_and_latency() {
    let (svc, h) = make(
        AdaptiveLimitLayer::builder("aimd")
            .algorithm(Aimd {
                latency_threshold: ms(100),
                ..Aimd::default()
            })
            .min_limit(3)
            .max_limit(50)
            .initial_limit(4),
    );
    // Saturating bursts of fast successes: the limit grows every time, up to the
    // maximum, and stays there.
    let mut last = h.limit();
    let mut bursts = 0;
    while h.limit() < 50 {
        let admitted = burst(&svc, Step::Ok(ms(10))).await;
        assert_eq!(admitted as u32, last, "a burst fills the limit");
        assert!(h.limit() > last, "{last} -> {}", h.limit());
        last = h.limit();
        bursts += 1;
        assert!(bursts < 20);
    }
    burst(&svc, Step::Ok(ms(10))).await;
    assert_eq!(h.limit(), 50, "clamped to max_limit");

    // A failure multiplies by 0.9; so does a call over the latency threshold.
    let mut one = svc.clone();
    assert!(
        !call(&mut one, Step::Fail(ms(10)))
            .await
            .unwrap_err()
            .is_rejection()
    );
    assert_eq!(h.limit(), 45);
    call(&mut one, Step::Ok(ms(150))).await.unwrap();
    assert_eq!(h.limit(), 40, "45 × 0.9 = 40.5");
    // A timeout from an inner layer is a drop.
    let e = call(&mut one, Step::TimedOut(ms(50))).await.unwrap_err();
    assert_eq!(e.rejection().unwrap().kind(), RejectionKind::Timeout);
    assert_eq!(h.limit(), 36);
    // A burst of failures backs off down to min_limit, not below.
    burst(&svc, Step::Fail(ms(10))).await;
    assert_eq!(h.limit(), 3);
    burst(&svc, Step::Fail(ms(10))).await;
    assert_eq!(h.limit(), 3);
    // And successes bring it back up.
    burst(&svc, Step::Ok(ms(10))).await;
    assert!(h.limit() > 3);
}

#[tokio::test(start_paused = true)]
async fn gradient2_shrinks_when_latency_rises_and_grows_back_when_it_recovers() {
    let (svc, h) = make(
        AdaptiveLimitLayer::builder("gradient")
            .algorithm(Gradient2::default())
            .min_limit(5)
            .max_limit(100)
            .initial_limit(20),
    );
    // Steady 10 ms: grows to the maximum.
    for _ in 0..20 {
        burst(&svc, Step::Ok(ms(10))).await;
    }
    assert_eq!(h.limit(), 100);
    assert_eq!(h.min_rtt(), Some(ms(10)));

    // 50 ms: well over 1.5 × the long-term 10 ms: the limit falls.
    let mut lowest = h.limit();
    for _ in 0..5 {
        burst(&svc, Step::Ok(ms(50))).await;
        lowest = lowest.min(h.limit());
    }
    assert!(lowest < 30, "lowest limit under high latency: {lowest}");
    assert!(lowest >= 5, "never under min_limit");
    assert_eq!(h.min_rtt(), Some(ms(10)), "the minimum is kept");

    // Back to 10 ms: the limit grows back to the maximum.
    let low = h.limit();
    let mut bursts = 0;
    while h.limit() < 100 {
        burst(&svc, Step::Ok(ms(10))).await;
        assert!(h.limit() >= low);
        bursts += 1;
        assert!(bursts < 30, "limit {} after {bursts} bursts", h.limit());
    }
}

#[tokio::test(start_paused = true)]
async fn at_the_limit_an_extra_call_is_refused_at_once() {
    let (svc, h) = make(
        AdaptiveLimitLayer::builder("full")
            .min_limit(2)
            .max_limit(2)
            .rejection(RejectionKind::Shed),
    );
    let gate = Arc::new(Notify::new());
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = svc.clone();
        s.ready().await.unwrap();
        held.push(tokio::spawn(s.call(Step::Wait(gate.clone()))));
    }
    assert_eq!(h.in_flight(), 2);
    let started = Instant::now();
    for _ in 0..100 {
        let mut s = svc.clone();
        let r = call(&mut s, Step::Ok(ms(1))).await;
        let rejection = r.unwrap_err().rejection().cloned().unwrap();
        assert_eq!(rejection.kind(), RejectionKind::Shed);
        assert_eq!(rejection.retry_after(), None);
        assert_eq!(rejection.downstream().unwrap().as_str(), "full");
    }
    assert_eq!(started.elapsed(), Duration::ZERO, "refusals never wait");
    tokio::task::yield_now().await;
    gate.notify_waiters();
    for t in held {
        assert_eq!(t.await.unwrap().unwrap(), "waited");
    }
    assert_eq!(h.in_flight(), 0);
    let mut s = svc.clone();
    assert_eq!(call(&mut s, Step::Ok(ms(1))).await.unwrap(), "ok");
}

#[tokio::test(start_paused = true)]
async fn dropped_futures_and_unused_readiness_give_permits_back() {
    let (svc, h) = make(
        AdaptiveLimitLayer::builder("drops")
            .algorithm(Aimd::default())
            .min_limit(1)
            .max_limit(1),
    );
    let gate = Arc::new(Notify::new());
    let mut a = svc.clone();
    let fut = a.ready().await.unwrap().call(Step::Wait(gate.clone()));
    assert_eq!(h.in_flight(), 1);
    let mut b = svc.clone();
    assert!(is_limit_rejection(&call(&mut b, Step::Ok(ms(1))).await));
    drop(fut);
    assert_eq!(h.in_flight(), 0);
    assert_eq!(h.min_rtt(), None, "a dropped call is not sampled");

    // A clone made ready holds the permit until dropped; one never made ready
    // holds nothing.
    let mut c = svc.clone();
    c.ready().await.unwrap();
    assert_eq!(h.in_flight(), 1);
    let never_readied = svc.clone();
    drop(c);
    assert_eq!(h.in_flight(), 0);
    drop(never_readied);
    assert_eq!(h.in_flight(), 0);
    assert_eq!(call(&mut b, Step::Ok(ms(3))).await.unwrap(), "ok");
    assert_eq!(h.in_flight(), 0);
    assert_eq!(h.min_rtt(), Some(ms(3)));
}

#[tokio::test(start_paused = true)]
async fn an_inner_readiness_error_gives_the_permit_back() {
    let layer = AdaptiveLimitLayer::builder("ready-err")
        .min_limit(1)
        .max_limit(1)
        .without_metrics()
        .build()
        .unwrap();
    let h = layer.handle();
    #[derive(Clone, Debug)]
    struct Broken;
    impl Service<()> for Broken {
        type Response = ();
        type Error = std::io::Error;
        type Future = std::future::Ready<Result<(), std::io::Error>>;
        fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Err(std::io::Error::other("not ready")))
        }
        fn call(&mut self, _: ()) -> Self::Future {
            std::future::ready(Ok(()))
        }
    }
    let mut svc = layer.layer(Broken);
    let e = svc.ready().await.unwrap_err();
    assert!(!e.is_rejection());
    assert_eq!(h.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn ignored_outcomes_are_not_sampled_but_timeouts_always_are() {
    // A classifier that ignores everything.
    let ignore_all = classify_fn(|_: Result<&&'static str, &BoxError>| Outcome::Ignored);
    let (mut svc, h) = make(
        AdaptiveLimitLayer::builder("ignored")
            .algorithm(Aimd::default())
            .initial_limit(10)
            .classify(ignore_all),
    );
    for _ in 0..5 {
        let _ = call(&mut svc, Step::Fail(ms(5))).await;
    }
    assert_eq!(h.limit(), 10);
    assert_eq!(h.min_rtt(), None);
    let _ = call(&mut svc, Step::TimedOut(ms(5))).await;
    assert_eq!(
        h.limit(),
        9,
        "a timeout is a drop whatever the classifier says"
    );
}

#[tokio::test(start_paused = true)]
async fn the_handle_reads_and_controls_the_limiter() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let (mut svc, h) = make(
        AdaptiveLimitLayer::builder("handle")
            .algorithm(Aimd::default())
            .min_limit(1)
            .max_limit(8)
            .initial_limit(1)
            .on_event(move |e: &AdaptiveEvent| log.lock().unwrap().push(*e)),
    );
    assert_eq!(h.bounds(), (1, 8));
    assert_eq!(h.name().as_str(), "handle");
    call(&mut svc, Step::Ok(ms(20))).await.unwrap();
    call(&mut svc, Step::Ok(ms(7))).await.unwrap();
    assert_eq!(h.min_rtt(), Some(ms(7)));
    h.reset_min_rtt();
    assert_eq!(h.min_rtt(), None);
    call(&mut svc, Step::Ok(ms(9))).await.unwrap();
    assert_eq!(h.min_rtt(), Some(ms(9)));
    assert_eq!(h.limit(), 3, "one call in flight does not use a limit of 3");
    h.set_limit(2).unwrap();
    assert_eq!(h.limit(), 2);
    assert_eq!(
        h.set_limit(9).unwrap_err().to_string(),
        "limit: 9 is not within min_limit..=max_limit (1..=8)"
    );
    // The algorithm carries on from the limit set by hand.
    call(&mut svc, Step::Ok(ms(1))).await.unwrap();
    assert_eq!(h.limit(), 3);
    let gate = Arc::new(Notify::new());
    let mut holders = Vec::new();
    for _ in 0..3 {
        let mut s = svc.clone();
        s.ready().await.unwrap();
        holders.push(s.call(Step::Wait(gate.clone())));
    }
    assert!(is_limit_rejection(&call(&mut svc, Step::Ok(ms(1))).await));
    drop(holders);
    assert_eq!(
        *events.lock().unwrap(),
        vec![
            AdaptiveEvent::LimitChanged { from: 1, to: 2 },
            AdaptiveEvent::LimitChanged { from: 2, to: 3 },
            AdaptiveEvent::LimitChanged { from: 3, to: 2 },
            AdaptiveEvent::LimitChanged { from: 2, to: 3 },
            AdaptiveEvent::Rejected {
                in_flight: 3,
                limit: 3
            },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn metrics_are_registered_at_zero_and_follow_the_calls() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

    /// A series: name, labels, value.
    type Series = (String, Vec<(String, String)>, f64);

    fn read(snapshotter: &Snapshotter) -> Vec<Series> {
        let mut out: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let key = key.key().clone();
                let labels = key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                let v = match value {
                    DebugValue::Counter(c) => c as f64,
                    DebugValue::Gauge(g) => g.into_inner(),
                    DebugValue::Histogram(_) => unreachable!(),
                };
                (key.name().to_owned(), labels, v)
            })
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }
    let series = |name: &str, outcome: Option<&str>, v: f64| {
        let mut labels = vec![("downstream".to_owned(), "stock".to_owned())];
        if let Some(o) = outcome {
            labels.push(("outcome".to_owned(), o.to_owned()));
        }
        (name.to_owned(), labels, v)
    };

    // The debugging recorder's snapshots drain what they read, so each stage gets
    // its own recorder and limiter, and is read once.
    let build = |recorder: &DebuggingRecorder| {
        metrics::with_local_recorder(recorder, || {
            AdaptiveLimitLayer::builder("stock")
                .algorithm(Aimd::default())
                .min_limit(1)
                .max_limit(1)
                .build()
                .unwrap()
        })
    };

    let recorder = DebuggingRecorder::new();
    build(&recorder);
    assert_eq!(
        read(&recorder.snapshotter()),
        vec![
            series("palisade_adaptive_calls_total", Some("permitted"), 0.0),
            series("palisade_adaptive_calls_total", Some("rejected"), 0.0),
            series("palisade_adaptive_in_flight", None, 0.0),
            series("palisade_adaptive_limit", None, 1.0),
            series("palisade_adaptive_min_rtt_seconds", None, 0.0),
        ]
    );

    // One call in flight, one refused.
    let recorder = DebuggingRecorder::new();
    let svc = build(&recorder).layer(inner());
    let gate = Arc::new(Notify::new());
    let mut a = svc.clone();
    a.ready().await.unwrap();
    let held = a.call(Step::Wait(gate.clone()));
    let mut b = svc.clone();
    assert!(is_limit_rejection(&call(&mut b, Step::Ok(ms(1))).await));
    assert_eq!(
        read(&recorder.snapshotter()),
        vec![
            series("palisade_adaptive_calls_total", Some("permitted"), 1.0),
            series("palisade_adaptive_calls_total", Some("rejected"), 1.0),
            series("palisade_adaptive_in_flight", None, 1.0),
            series("palisade_adaptive_limit", None, 1.0),
            series("palisade_adaptive_min_rtt_seconds", None, 0.0),
        ]
    );
    drop(held);

    // Two calls done, one dropped, one refused.
    let recorder = DebuggingRecorder::new();
    let svc = build(&recorder).layer(inner());
    let mut a = svc.clone();
    a.ready().await.unwrap();
    drop(a.call(Step::Wait(gate.clone())));
    let mut b = svc.clone();
    call(&mut b, Step::Ok(ms(250))).await.unwrap();
    let mut c = svc.clone();
    c.ready().await.unwrap();
    assert!(is_limit_rejection(&call(&mut b, Step::Ok(ms(1))).await));
    drop(c);
    assert_eq!(
        read(&recorder.snapshotter()),
        vec![
            series("palisade_adaptive_calls_total", Some("permitted"), 2.0),
            series("palisade_adaptive_calls_total", Some("rejected"), 1.0),
            series("palisade_adaptive_in_flight", None, 0.0),
            series("palisade_adaptive_limit", None, 1.0),
            series("palisade_adaptive_min_rtt_seconds", None, 0.25),
        ]
    );
}

#[test]
fn bad_settings_are_refused_naming_the_field() {
    let field = |b: AdaptiveLimitBuilder| b.build().unwrap_err().field().to_owned();
    let b = || AdaptiveLimitLayer::builder("x").without_metrics();
    assert_eq!(field(b().min_limit(0)), "min_limit");
    assert_eq!(field(b().max_limit(0)), "max_limit");
    assert_eq!(
        b().min_limit(10)
            .max_limit(5)
            .build()
            .unwrap_err()
            .to_string(),
        "min_limit: 10 is larger than max_limit (5)"
    );
    assert_eq!(field(b().initial_limit(0)), "initial_limit");
    assert_eq!(field(b().max_limit(10).initial_limit(11)), "initial_limit");
    assert_eq!(
        field(b().rejection(RejectionKind::CircuitOpen)),
        "rejection"
    );
    assert_eq!(
        field(b().algorithm(Aimd {
            backoff_ratio: 0.2,
            ..Aimd::default()
        })),
        "algorithm.backoff_ratio"
    );
    assert_eq!(
        field(b().algorithm(Gradient2 {
            tolerance: 0.5,
            ..Gradient2::default()
        })),
        "algorithm.tolerance"
    );
    assert_eq!(field(AdaptiveLimitLayer::builder("no spaces")), "name");
    // The default initial limit is clamped to the bounds rather than refused.
    let layer = b().max_limit(5).build().unwrap();
    assert_eq!(layer.handle().limit(), 5);
    let layer = b().min_limit(30).max_limit(40).build().unwrap();
    assert_eq!(layer.handle().limit(), 30);
}

#[test]
fn a_config_file_builds_the_same_limiter() {
    let config: AdaptiveLimitConfig = toml::from_str(
        r#"
        algorithm = { kind = "gradient2", tolerance = 2.0, long_window = 100 }
        min_limit = 4
        max_limit = 64
        initial_limit = 16
        rejection = "shed"
        "#,
    )
    .unwrap();
    assert_eq!(
        config.algorithm,
        AlgorithmConfig::Gradient2(Gradient2 {
            tolerance: 2.0,
            long_window: 100,
            ..Gradient2::default()
        })
    );
    let h = AdaptiveLimitLayer::from_config("from-file", config)
        .unwrap()
        .handle();
    assert_eq!((h.limit(), h.bounds()), (16, (4, 64)));
    let bad = AdaptiveLimitConfig {
        algorithm: AlgorithmConfig::Aimd(Aimd {
            increase: 0.0,
            ..Aimd::default()
        }),
        ..AdaptiveLimitConfig::default()
    };
    assert_eq!(
        AdaptiveLimitLayer::from_config("x", bad)
            .unwrap_err()
            .field(),
        "algorithm.increase"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_never_exceed_the_limit() {
    let layer = AdaptiveLimitLayer::builder("threads")
        .algorithm(Aimd::default())
        .min_limit(4)
        .max_limit(4)
        .without_metrics()
        .build()
        .unwrap();
    let h = layer.handle();
    let current = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let peak = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (c, p) = (current.clone(), peak.clone());
    let svc = layer.layer(tower::service_fn(move |_: ()| {
        let (c, p) = (c.clone(), p.clone());
        async move {
            use std::sync::atomic::Ordering::SeqCst;
            let now = c.fetch_add(1, SeqCst) + 1;
            p.fetch_max(now, SeqCst);
            tokio::task::yield_now().await;
            c.fetch_sub(1, SeqCst);
            Ok::<_, std::io::Error>(())
        }
    }));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let mut svc = svc.clone();
            tokio::spawn(async move {
                let mut refused = 0;
                for _ in 0..2_000 {
                    match svc.ready().await.unwrap().call(()).await {
                        Ok(()) => {}
                        Err(e) => {
                            assert_eq!(e.rejection().unwrap().kind(), RejectionKind::BulkheadFull);
                            refused += 1;
                        }
                    }
                }
                refused
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(peak.load(std::sync::atomic::Ordering::SeqCst) <= 4);
    assert_eq!(h.in_flight(), 0);
}
