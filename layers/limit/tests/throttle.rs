//! Client-side adaptive throttling tests, on paused tokio time with seeded
//! generators: the throttle converges to sending about K times what the backend
//! accepts, leaves a healthy backend alone, and forgets after its window.
#![cfg(not(feature = "loom"))]

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_core::{BoxError, Error, Outcome, RejectionKind, classify_fn};
use palisade_limit::throttle::{
    ThrottleBuilder, ThrottleConfig, ThrottleEvent, ThrottleHandle, ThrottleLayer,
};
use tokio::time::{Instant, advance};
use tower::{Layer, Service, ServiceExt};

/// A backend that decides per request whether it accepts, and counts what it
/// receives and accepts.
#[derive(Clone)]
struct Backend {
    accept: Arc<dyn Fn() -> bool + Send + Sync>,
    received: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
    readiness_polls: Arc<AtomicU64>,
}

impl Backend {
    fn new(accept: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Self {
            accept: Arc::new(accept),
            received: Arc::default(),
            accepted: Arc::default(),
            readiness_polls: Arc::default(),
        }
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Service<()> for Backend {
    type Response = ();
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<(), std::io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.readiness_polls.fetch_add(1, Ordering::SeqCst);
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        self.received.fetch_add(1, Ordering::SeqCst);
        if (self.accept)() {
            self.accepted.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(()))
        } else {
            std::future::ready(Err(std::io::Error::other("overloaded")))
        }
    }
}

/// Accepts each request with probability `p`, from a seeded generator.
fn bernoulli(p: f64, seed: u64) -> impl Fn() -> bool + Send + Sync {
    let rng = Mutex::new(fastrand::Rng::with_seed(seed));
    move || rng.lock().unwrap().f64() < p
}

/// Accepts at most `per_second` requests in each second of (paused) time.
fn capacity(per_second: u64) -> impl Fn() -> bool + Send + Sync {
    let start = Instant::now();
    let used = Mutex::new((0u64, 0u64));
    move || {
        let second = start.elapsed().as_secs();
        let mut used = used.lock().unwrap();
        if used.0 != second {
            *used = (second, 0);
        }
        if used.1 < per_second {
            used.1 += 1;
            true
        } else {
            false
        }
    }
}

fn builder() -> ThrottleBuilder {
    ThrottleLayer::builder("backend").seed(42).without_metrics()
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Tally {
    sent: u64,
    accepted: u64,
    throttled: u64,
}

impl Tally {
    fn throttle_rate(&self) -> f64 {
        self.throttled as f64 / (self.sent + self.throttled) as f64
    }

    fn sent_per_accept(&self) -> f64 {
        self.sent as f64 / self.accepted as f64
    }
}

/// Makes `calls` requests, one every `every`, and tallies what happened.
async fn drive(
    svc: &mut palisade_limit::throttle::Throttle<Backend>,
    calls: u64,
    every: Duration,
) -> Tally {
    let backend = svc.get_ref().clone();
    let (received, accepted) = (backend.received(), backend.accepted());
    let mut throttled = 0;
    for _ in 0..calls {
        match svc.ready().await.unwrap().call(()).await {
            Ok(()) => {}
            Err(e) => {
                if let Some(r) = e.rejection() {
                    assert_eq!(r.kind(), RejectionKind::RateLimited);
                    assert_eq!(r.retry_after(), None);
                    throttled += 1;
                }
            }
        }
        advance(every).await;
    }
    let tally = Tally {
        sent: backend.received() - received,
        accepted: backend.accepted() - accepted,
        throttled,
    };
    assert_eq!(tally.sent + tally.throttled, calls);
    tally
}

const EVERY: Duration = Duration::from_millis(50);

#[tokio::test(start_paused = true)]
async fn a_healthy_backend_is_never_throttled() {
    let layer = builder().build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Backend::new(|| true));
    let tally = drive(&mut svc, 10_000, EVERY).await;
    assert_eq!(tally.throttled, 0);
    assert_eq!(tally.sent, 10_000);
    assert_eq!(handle.probability(), 0.0);
    // 20 requests a second, all accepted, over the window's 120 one-second
    // buckets, the current one of which (at 500 s exactly) has none yet.
    assert_eq!((handle.requests(), handle.accepts()), (2_380, 2_380));
}

#[tokio::test(start_paused = true)]
async fn a_backend_accepting_half_receives_about_k_times_its_accepts() {
    // Accepting each request with probability 1/2 is exactly the K = 2 boundary:
    // the backend receives twice what it accepts without the client doing much.
    let layer = builder().build().unwrap();
    let mut svc = layer.layer(Backend::new(bernoulli(0.5, 7)));
    let tally = drive(&mut svc, 10_000, EVERY).await;
    assert!(
        (tally.sent_per_accept() - 2.0).abs() < 0.1,
        "{tally:?}: {} sent per accept",
        tally.sent_per_accept()
    );
    assert!(tally.throttle_rate() < 0.1, "{tally:?}");
}

#[tokio::test(start_paused = true)]
async fn an_overloaded_backend_receives_k_times_its_accepts() {
    // Offered 20 requests a second; the backend accepts 5 a second and refuses the
    // rest. In steady state the client sends K × 5 and throttles the remainder.
    for (k, expected_rate) in [(2.0, 0.5), (1.5, 0.625)] {
        let layer = builder().k(k).build().unwrap();
        let handle = layer.handle();
        let mut svc = layer.layer(Backend::new(capacity(5)));
        // Fill one window first, then measure over 10 000 calls.
        drive(&mut svc, 2_400, EVERY).await;
        let tally = drive(&mut svc, 10_000, EVERY).await;
        assert!(
            (tally.sent_per_accept() - k).abs() < 0.1 * k,
            "K = {k}: {tally:?}: {} sent per accept",
            tally.sent_per_accept()
        );
        assert!(
            (tally.throttle_rate() - expected_rate).abs() < 0.05,
            "K = {k}: {tally:?}: throttled {}",
            tally.throttle_rate()
        );
        assert!((handle.probability() - expected_rate).abs() < 0.1);
    }
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_throttles_the_same_requests() {
    let run = |seed: u64| async move {
        let layer = ThrottleLayer::builder("seeded")
            .seed(seed)
            .without_metrics()
            .build()
            .unwrap();
        let mut svc = layer.layer(Backend::new(capacity(5)));
        drive(&mut svc, 3_000, EVERY).await
    };
    let a = run(1).await;
    assert!(a.throttled > 0);
    assert_eq!(run(1).await, a);
    assert_ne!(run(2).await, a);
}

#[tokio::test(start_paused = true)]
async fn the_window_forgets_old_failures() {
    let healthy = Arc::new(AtomicBool::new(false));
    let h = healthy.clone();
    let layer = builder().build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Backend::new(move || h.load(Ordering::SeqCst)));
    // Ten seconds of an outage: nearly everything is throttled.
    let outage = drive(&mut svc, 200, EVERY).await;
    assert!(outage.throttled > 150, "{outage:?}");
    assert!(handle.probability() > 0.99);
    assert_eq!(handle.accepts(), 0);

    healthy.store(true, Ordering::SeqCst);
    // A minute later the failures are still in the window.
    advance(Duration::from_secs(60)).await;
    assert!(handle.probability() > 0.99);
    // Two minutes after the last of them, they are gone: nothing is throttled.
    advance(Duration::from_secs(60)).await;
    assert_eq!(handle.requests(), 0);
    assert_eq!(handle.probability(), 0.0);
    let after = drive(&mut svc, 100, EVERY).await;
    assert_eq!(after.throttled, 0);
    assert_eq!(after.accepted, 100);
}

#[tokio::test(start_paused = true)]
async fn the_window_slides_bucket_by_bucket() {
    let healthy = Arc::new(AtomicBool::new(true));
    let h = healthy.clone();
    // A 10 s window in 10 buckets of 1 s.
    let layer = builder()
        .window(Duration::from_secs(10))
        .buckets(10)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Backend::new(move || h.load(Ordering::SeqCst)));
    // 5 s healthy (100 accepts), then 5 s failing: the accepts cover for the
    // failures (200 requests, 2 × 100 accepts), so nothing is throttled.
    drive(&mut svc, 100, EVERY).await;
    healthy.store(false, Ordering::SeqCst);
    let failing = drive(&mut svc, 100, EVERY).await;
    assert_eq!(failing.throttled, 0);
    // Now at 10 s, the first second (20 requests, 20 accepts) has left the window.
    assert_eq!((handle.requests(), handle.accepts()), (180, 80));
    assert!((handle.probability() - 20.0 / 181.0).abs() < 1e-9);
    // Each further second takes 20 of each away, so the probability rises...
    advance(Duration::from_secs(2)).await;
    assert_eq!((handle.requests(), handle.accepts()), (140, 40));
    assert!((handle.probability() - 60.0 / 141.0).abs() < 1e-9);
    advance(Duration::from_secs(2)).await;
    assert_eq!((handle.requests(), handle.accepts()), (100, 0));
    assert!((handle.probability() - 100.0 / 101.0).abs() < 1e-9);
    // ... until the failures leave too, one second at a time.
    advance(Duration::from_secs(1)).await;
    assert_eq!(handle.requests(), 80);
    advance(Duration::from_secs(4)).await;
    assert_eq!((handle.requests(), handle.probability()), (0, 0.0));
}

#[tokio::test(start_paused = true)]
async fn throttled_requests_never_reach_the_backend() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let layer = builder()
        .on_event(move |e: &ThrottleEvent| log.lock().unwrap().push(*e))
        .build()
        .unwrap();
    let backend = Backend::new(|| false);
    let mut svc = layer.layer(backend.clone());
    let tally = drive(&mut svc, 500, EVERY).await;
    assert_eq!(backend.received(), tally.sent);
    assert_eq!(
        backend.readiness_polls.load(Ordering::SeqCst),
        tally.sent,
        "a throttled request does not take the backend's readiness"
    );
    let events = events.lock().unwrap();
    assert_eq!(events.len() as u64, tally.throttled);
    assert!(
        matches!(events.last(), Some(ThrottleEvent::Throttled { probability }) if *probability > 0.99)
    );
}

#[tokio::test(start_paused = true)]
async fn failures_the_classifier_ignores_are_accepts() {
    let layer = ThrottleLayer::builder("ignoring")
        .seed(1)
        .without_metrics()
        .classify(classify_fn(|r: Result<&(), &std::io::Error>| match r {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Ignored,
        }))
        .build()
        .unwrap();
    let backend = Backend::new(|| false);
    let mut svc = layer.layer(backend.clone());
    for _ in 0..1_000 {
        let e = svc.ready().await.unwrap().call(()).await.unwrap_err();
        assert!(!e.is_rejection());
        advance(EVERY).await;
    }
    assert_eq!(backend.received(), 1_000);
    // Counted as accepts, not left out of the window.
    let handle = layer.handle();
    assert!(handle.requests() > 0);
    assert_eq!(handle.accepts(), handle.requests());
}

#[tokio::test(start_paused = true)]
async fn clones_share_the_window_and_the_handle_can_reset_it() {
    let layer = builder().build().unwrap();
    let svc = layer.layer(Backend::new(|| false));
    let mut clones: Vec<_> = (0..4).map(|_| svc.clone()).collect();
    for round in 0..50 {
        let s = &mut clones[round % 4];
        let _ = s.ready().await.unwrap().call(()).await;
        advance(EVERY).await;
    }
    let handle: ThrottleHandle = svc.handle();
    assert_eq!(handle.requests(), 50);
    assert!(handle.probability() > 0.9);
    handle.reset();
    assert_eq!((handle.requests(), handle.probability()), (0, 0.0));
    // A clone made ready and dropped unused counts nothing.
    let mut unused = svc.clone();
    unused.ready().await.unwrap();
    drop(unused);
    assert_eq!(handle.requests(), 0);
}

#[tokio::test(start_paused = true)]
async fn metrics_are_registered_at_zero_and_follow_the_calls() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    fn read(recorder: &DebuggingRecorder) -> Vec<(String, Option<String>, f64)> {
        let mut out: Vec<_> = recorder
            .snapshotter()
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let key = key.key().clone();
                assert!(
                    key.labels()
                        .any(|l| l.key() == "downstream" && l.value() == "pay")
                );
                let outcome = key
                    .labels()
                    .find(|l| l.key() == "outcome")
                    .map(|l| l.value().to_owned());
                let v = match value {
                    DebugValue::Counter(c) => c as f64,
                    DebugValue::Gauge(g) => g.into_inner(),
                    DebugValue::Histogram(_) => unreachable!(),
                };
                (key.name().to_owned(), outcome, v)
            })
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }
    let build = |recorder: &DebuggingRecorder| {
        metrics::with_local_recorder(recorder, || {
            ThrottleLayer::builder("pay").seed(3).build().unwrap()
        })
    };
    let zero = DebuggingRecorder::new();
    build(&zero);
    assert_eq!(
        read(&zero),
        vec![
            (
                "palisade_throttle_calls_total".into(),
                Some("sent".into()),
                0.0
            ),
            (
                "palisade_throttle_calls_total".into(),
                Some("throttled".into()),
                0.0
            ),
            ("palisade_throttle_probability".into(), None, 0.0),
        ]
    );

    let recorder = DebuggingRecorder::new();
    let mut svc = build(&recorder).layer(Backend::new(|| false));
    let tally = drive(&mut svc, 100, EVERY).await;
    let snap = read(&recorder);
    assert_eq!(snap[0].2, tally.sent as f64);
    assert_eq!(snap[1].2, tally.throttled as f64);
    // The gauge holds the probability computed for the last call: 99 requests, no
    // accepts.
    assert!((snap[2].2 - 99.0 / 100.0).abs() < 1e-9, "{snap:?}");
}

#[test]
fn bad_settings_are_refused_naming_the_field() {
    let field = |b: ThrottleBuilder| b.build().unwrap_err().field().to_owned();
    assert_eq!(field(builder().k(0.5)), "k");
    assert_eq!(field(builder().k(f64::NAN)), "k");
    assert_eq!(field(builder().window(Duration::ZERO)), "window");
    assert_eq!(field(builder().buckets(0)), "buckets");
    assert_eq!(field(builder().buckets(5_000)), "buckets");
    assert_eq!(field(ThrottleLayer::builder("")), "name");
    assert_eq!(
        builder()
            .window(Duration::ZERO)
            .build()
            .unwrap_err()
            .to_string(),
        "window: must be greater than zero"
    );
    builder().k(1.0).build().unwrap();
}

#[test]
fn a_config_file_builds_the_same_throttle() {
    let config: ThrottleConfig = toml::from_str(
        r#"
        k = 1.2
        window = "30s"
        buckets = 30
        "#,
    )
    .unwrap();
    assert_eq!(
        config,
        ThrottleConfig {
            k: 1.2,
            window: Duration::from_secs(30),
            buckets: 30
        }
    );
    ThrottleLayer::from_config("file", config).unwrap();
    let e = ThrottleLayer::from_config(
        "file",
        ThrottleConfig {
            k: 0.0,
            ..ThrottleConfig::default()
        },
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "k: 0 must be a finite number >= 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_one_window() {
    let layer = ThrottleLayer::builder("threads")
        .without_metrics()
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(tower::service_fn(|_: ()| async { Ok::<_, BoxError>(()) }));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let mut svc = svc.clone();
            tokio::spawn(async move {
                for _ in 0..5_000 {
                    let r: Result<(), Error> = svc.ready().await.unwrap().call(()).await;
                    r.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(handle.requests(), 20_000);
    assert_eq!(handle.accepts(), 20_000);
}

/// A healthy backend that answers after a delay, so that calls overlap.
#[derive(Clone)]
struct Slow(Duration);

impl Service<()> for Slow {
    type Response = ();
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<(), std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        let delay = self.0;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok(())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_first_calls_to_a_healthy_backend_is_not_throttled() {
    // 100 calls sent at once before any answer: counted at send time, the second
    // would already be refused with probability 1/2 (nothing accepted yet).
    let layer = builder().build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(Slow(Duration::from_millis(100)));
    let calls: Vec<_> = (0..100)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { svc.oneshot(()).await })
        })
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(handle.requests(), 0, "calls in flight are not counted yet");
    for call in calls {
        call.await.unwrap().expect("no call throttled");
    }
    assert_eq!((handle.requests(), handle.accepts()), (100, 100));
    assert_eq!(handle.probability(), 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_request_dropped_unanswered_counts_as_a_request_not_an_accept() {
    let layer = builder().build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Slow(Duration::from_secs(10)));
    let call = svc.ready().await.unwrap().call(());
    assert_eq!(handle.requests(), 0);
    drop(call);
    assert_eq!((handle.requests(), handle.accepts()), (1, 0));
}
