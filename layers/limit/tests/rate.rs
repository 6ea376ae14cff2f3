//! Rate limiting on paused time: exact permits and refusals, waiting within bounds,
// Test doubles return `impl Service` tuples; naming them would only add noise.
#![allow(clippy::type_complexity)]
//! keyed limits with a bounded key store, and runtime changes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use palisade_core::{Deadline, Error, RejectionKind};
use palisade_limit::rate::{RateLimitConfig, RateLimitLayer};
use tokio::time::{Instant, advance};
use tower::{Layer, Service, ServiceExt};

fn counting() -> (
    Arc<AtomicU32>,
    impl Service<
        u32,
        Response = u32,
        Error = std::io::Error,
        Future = impl Future<Output = Result<u32, std::io::Error>> + Send,
    > + Clone,
) {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let svc = tower::service_fn(move |x: u32| {
        c.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, std::io::Error>(x) }
    });
    (calls, svc)
}

fn kind(r: &Result<u32, Error>) -> Option<RejectionKind> {
    r.as_ref()
        .err()
        .and_then(|e| e.rejection())
        .map(|r| r.kind())
}

#[tokio::test(start_paused = true)]
async fn a_burst_then_one_permit_per_interval() {
    let layer = RateLimitLayer::builder("t")
        .rate(10, Duration::from_secs(1))
        .build()
        .unwrap();
    let (calls, inner) = counting();
    let mut svc = layer.layer(inner);
    for i in 0..10 {
        svc.ready().await.unwrap().call(i).await.unwrap();
    }
    let refused = svc.ready().await.unwrap().call(10).await;
    assert_eq!(kind(&refused), Some(RejectionKind::RateLimited));
    let after = refused
        .unwrap_err()
        .rejection()
        .unwrap()
        .retry_after()
        .unwrap();
    assert_eq!(after, Duration::from_millis(100));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        10,
        "a refused call never reaches the service"
    );
    advance(Duration::from_millis(99)).await;
    assert!(kind(&svc.ready().await.unwrap().call(11).await).is_some());
    advance(Duration::from_millis(1)).await;
    svc.ready().await.unwrap().call(12).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_smaller_burst_spreads_calls_out() {
    let layer = RateLimitLayer::builder("t")
        .rate(10, Duration::from_secs(1))
        .burst(2)
        .build()
        .unwrap();
    let (_, inner) = counting();
    let mut svc = layer.layer(inner);
    svc.ready().await.unwrap().call(0).await.unwrap();
    svc.ready().await.unwrap().call(1).await.unwrap();
    assert!(kind(&svc.ready().await.unwrap().call(2).await).is_some());
}

#[tokio::test(start_paused = true)]
async fn calls_wait_up_to_max_wait_for_a_permit() {
    let layer = RateLimitLayer::builder("t")
        .rate(10, Duration::from_secs(1))
        .burst(1)
        .max_wait(Duration::from_millis(150))
        .build()
        .unwrap();
    let (_, inner) = counting();
    let mut svc = layer.layer(inner);
    svc.ready().await.unwrap().call(0).await.unwrap();
    let start = Instant::now();
    svc.ready().await.unwrap().call(1).await.unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(100),
        "waited exactly for the permit"
    );

    // Three callers at once: the second waits 100 ms, the third would need 200 ms.
    let a = svc.clone().oneshot(2);
    let b = async {
        tokio::time::sleep(Duration::from_millis(1)).await;
        svc.clone().oneshot(3).await
    };
    let (a, b) = tokio::join!(a, b);
    a.unwrap();
    assert_eq!(
        kind(&b),
        Some(RejectionKind::RateLimited),
        "200 ms is past max_wait"
    );
}

#[tokio::test(start_paused = true)]
async fn waiting_never_passes_the_deadline() {
    let layer = RateLimitLayer::builder("t")
        .rate(1, Duration::from_secs(1))
        .max_wait(Duration::from_secs(5))
        .build()
        .unwrap();
    let (_, inner) = counting();
    let mut svc = layer.layer(inner);
    svc.ready().await.unwrap().call(0).await.unwrap();
    let start = Instant::now();
    let r = Deadline::after(Duration::from_millis(500))
        .scope(async { svc.ready().await.unwrap().call(1).await })
        .await;
    assert_eq!(kind(&r), Some(RejectionKind::RateLimited));
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "refused at once: the wait cannot fit"
    );
}

#[tokio::test(start_paused = true)]
async fn keys_are_limited_separately() {
    let layer = RateLimitLayer::builder("clients")
        .rate(2, Duration::from_secs(1))
        .build_keyed(|x: &u32| *x % 2, 100, Duration::from_secs(60))
        .unwrap();
    let (_, inner) = counting();
    let svc = layer.layer(inner);
    // Keys 0 and 1 get two calls each.
    let results: Vec<_> =
        futures_util::future::join_all((0..6).map(|i| svc.clone().oneshot(i))).await;
    let refused = results.iter().filter(|r| kind(r).is_some()).count();
    assert_eq!(refused, 2);
    assert_eq!(layer.keys(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_million_distinct_keys_stay_within_the_bound() {
    let layer = RateLimitLayer::builder("flood")
        .rate(1, Duration::from_secs(1))
        .build_keyed(|x: &u32| *x, 10_000, Duration::from_secs(60))
        .unwrap();
    let (calls, inner) = counting();
    let mut svc = layer.layer(inner);
    for key in 0..1_000_000u32 {
        svc.ready().await.unwrap().call(key).await.unwrap();
    }
    assert!(layer.keys() <= 10_000, "{} keys held", layer.keys());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1_000_000,
        "every new key gets its permit"
    );
}

#[tokio::test(start_paused = true)]
async fn the_quota_changes_at_runtime() {
    let layer = RateLimitLayer::builder("t")
        .rate(1, Duration::from_secs(1))
        .build()
        .unwrap();
    let handle = layer.handle();
    let (_, inner) = counting();
    let mut svc = layer.layer(inner);
    svc.ready().await.unwrap().call(0).await.unwrap();
    assert!(kind(&svc.ready().await.unwrap().call(1).await).is_some());
    handle
        .set_config(RateLimitConfig {
            rate: 5,
            ..handle.config()
        })
        .unwrap();
    for i in 0..5 {
        svc.ready().await.unwrap().call(i).await.unwrap();
    }
    let bad = handle.set_config(RateLimitConfig {
        rate: 0,
        ..handle.config()
    });
    assert_eq!(bad.unwrap_err().field(), "rate");
    assert_eq!(handle.config().rate, 5);
}

#[tokio::test(start_paused = true)]
async fn bad_settings_name_the_field() {
    let e = RateLimitLayer::builder("t")
        .rate(0, Duration::from_secs(1))
        .build()
        .unwrap_err();
    assert_eq!(e.to_string(), "rate: must be at least 1");
    let e = RateLimitLayer::builder("t")
        .rate(1, Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "per");
    let e = RateLimitLayer::builder("t").burst(0).build().unwrap_err();
    assert_eq!(e.field(), "burst");
    let e = RateLimitLayer::builder("t")
        .build_keyed(|x: &u32| *x, 0, Duration::from_secs(1))
        .unwrap_err();
    assert_eq!(e.field(), "keys.capacity");
    let e = RateLimitLayer::builder("t")
        .build_keyed(|x: &u32| *x, 10, Duration::ZERO)
        .unwrap_err();
    assert_eq!(e.field(), "keys.idle_timeout");
    let e = RateLimitLayer::builder("t")
        .rate(0, Duration::from_secs(1))
        .build_keyed(|x: &u32| *x, 10, Duration::from_secs(1))
        .unwrap_err();
    assert_eq!(e.to_string(), "rate: must be at least 1");
    let e = RateLimitLayer::builder("t")
        .rate(10, Duration::from_nanos(1))
        .build()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "rate: 10 per 1ns is too fast (under a nanosecond apart)"
    );
    let e = RateLimitLayer::builder("bad name").build().unwrap_err();
    assert_eq!(e.field(), "name");
    // Periods and bursts the limiter cannot count (its clock is a u64 of
    // nanoseconds) are refused, not left to panic or wrap when it is built.
    let years = |n: u64| Duration::from_secs(n * 365 * 86_400);
    for (toml_text, message) in [
        (
            "rate = 1\nper = \"600y\"",
            "per: a burst of 1 at 1 per 18934560000s takes more than 100 years to refill",
        ),
        (
            "rate = 1\nper = \"1h\"\nburst = 10000000",
            "burst: a burst of 10000000 at 1 per 3600s takes more than 100 years to refill",
        ),
        (
            "rate = 1\nmax_wait = \"300000000000y\"",
            "max_wait: 9467280000000000000s is longer than a day",
        ),
    ] {
        let config: RateLimitConfig = toml::from_str(toml_text).unwrap();
        assert_eq!(config.validate().unwrap_err().to_string(), message);
        let e = RateLimitLayer::builder("t")
            .config(config)
            .build()
            .unwrap_err();
        assert_eq!(e.to_string(), message);
        let e = RateLimitLayer::builder("t")
            .config(config)
            .build_keyed(|x: &u32| *x, 10, Duration::from_secs(1))
            .unwrap_err();
        assert_eq!(e.to_string(), message);
    }
    // The longest settings that are allowed build.
    let slow = RateLimitConfig {
        rate: 1,
        per: years(100),
        burst: None,
        max_wait: Some(Duration::from_secs(86_400)),
    };
    RateLimitLayer::builder("t").config(slow).build().unwrap();
    // From a file: the same checks.
    let zero: RateLimitConfig = toml::from_str("rate = 0").unwrap();
    let e = RateLimitLayer::builder("t")
        .config(zero)
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "rate");
    let e = toml::from_str::<RateLimitConfig>("rate = 5\nburts = 2").unwrap_err();
    assert!(e.to_string().contains("unknown field `burts`"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn the_keys_gauge_follows_new_and_evicted_keys() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let layer = metrics::with_local_recorder(&recorder, || {
        RateLimitLayer::builder("keys")
            .rate(100, Duration::from_secs(1))
            .build_keyed(|x: &u32| *x, 2, Duration::from_secs(600))
            .unwrap()
    });
    let (_, inner) = counting();
    let mut svc = layer.layer(inner);
    // Two keys, then known keys only, then a third that evicts the least recently
    // used (key 2).
    for key in [1, 2, 1, 2, 1, 1, 1] {
        svc.ready().await.unwrap().call(key).await.unwrap();
    }
    assert_eq!(layer.keys(), 2);
    advance(Duration::from_millis(10)).await;
    svc.ready().await.unwrap().call(1).await.unwrap();
    svc.ready().await.unwrap().call(3).await.unwrap();
    assert_eq!(layer.keys(), 2);

    let snapshot = recorder.snapshotter().snapshot().into_vec();
    let value = |name: &str| {
        snapshot
            .iter()
            .find(|(key, _, _, _)| key.key().name() == name)
            .map(|(_, _, _, v)| match v {
                DebugValue::Counter(n) => *n as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(_) => f64::NAN,
            })
    };
    assert_eq!(value("palisade_ratelimit_keys"), Some(2.0));
    assert_eq!(value("palisade_ratelimit_key_evictions_total"), Some(1.0));
}
