//! The retry layer end to end on paused time: attempts, backoff timing, what is and
//! is not retried, the budget, deadlines, HTTP hints and cross-hop marking.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use palisade_core::{Deadline, Error, Rejection, RejectionKind};
use palisade_retry::{Backoff, BudgetConfig, RetryLayer, Strategy};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

fn exponential(base_ms: u64) -> Backoff {
    Backoff {
        strategy: Strategy::Exponential,
        base: Duration::from_millis(base_ms),
        multiplier: 2.0,
        max: Duration::from_secs(1),
    }
}

fn rich_budget() -> BudgetConfig {
    BudgetConfig {
        deposit_ratio: 1.0,
        min_retries_per_sec: 1_000,
        max_balance: 1_000,
    }
}

/// A downstream failing its first `fail_first` calls with `err`, counting calls.
fn flaky(
    fail_first: u32,
    err: fn() -> Error,
) -> (
    Arc<AtomicU32>,
    impl Service<(), Response = &'static str, Error = Error, Future = impl Send> + Clone,
) {
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let svc = tower::service_fn(move |_: ()| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move { if n < fail_first { Err(err()) } else { Ok("ok") } }
    });
    (calls, svc)
}

fn io_error() -> Error {
    Error::Inner(Box::new(std::io::Error::other("boom")))
}

#[tokio::test(start_paused = true)]
async fn retries_up_to_max_attempts_with_exact_backoff() {
    let layer = RetryLayer::builder("t")
        .max_attempts(3)
        .backoff(exponential(10))
        .budget(rich_budget())
        .without_metrics()
        .build()
        .unwrap();
    let (calls, inner) = flaky(2, io_error);
    let mut svc = layer.layer(inner);
    let start = Instant::now();
    assert_eq!(svc.ready().await.unwrap().call(()).await.unwrap(), "ok");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(start.elapsed(), Duration::from_millis(10 + 20));

    let (calls, inner) = flaky(10, io_error);
    let mut svc = layer.layer(inner);
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(
        !err.is_rejection(),
        "the last attempt's own error comes back"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// How long, on paused time, each of `calls` calls spends retrying a downstream
/// that always fails, through one layer seeded with `seed` (or not).
async fn jittered_waits(seed: Option<u64>, calls: usize) -> Vec<Duration> {
    let mut builder = RetryLayer::builder("t")
        .max_attempts(4)
        .backoff(Backoff {
            strategy: Strategy::FullJitter,
            ..exponential(100)
        })
        .budget(rich_budget())
        .without_metrics();
    if let Some(seed) = seed {
        builder = builder.seed(seed);
    }
    let layer = builder.build().unwrap();
    let (_, inner) = flaky(u32::MAX, io_error);
    let svc = layer.layer(inner);
    let mut waits = Vec::new();
    for _ in 0..calls {
        let start = Instant::now();
        // Each call through a clone of its own: clones share the generator.
        svc.clone().oneshot(()).await.unwrap_err();
        waits.push(start.elapsed());
    }
    waits
}

#[tokio::test(start_paused = true)]
async fn a_seeded_layer_waits_the_same_jittered_delays_every_run() {
    let first = jittered_waits(Some(7), 20).await;
    assert_eq!(jittered_waits(Some(7), 20).await, first);
    // The delays are drawn, not fixed: they differ between calls and between seeds.
    let distinct: std::collections::BTreeSet<_> = first.iter().collect();
    assert!(distinct.len() > 10, "{first:?}");
    assert_ne!(jittered_waits(Some(8), 20).await, first);
    // Unseeded layers draw from the thread's generator: two runs differ.
    assert_ne!(
        jittered_waits(None, 20).await,
        jittered_waits(None, 20).await
    );
}

#[tokio::test(start_paused = true)]
async fn ignored_outcomes_and_dont_retry_rejections_are_not_retried() {
    let layer = RetryLayer::builder("t")
        .budget(rich_budget())
        .without_metrics()
        .build()
        .unwrap();
    for kind in [
        RejectionKind::CircuitOpen,
        RejectionKind::BudgetExhausted,
        RejectionKind::DeadlineExceeded,
        RejectionKind::RateLimited, // local rejection: ignored by the classifier
    ] {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let mut svc = layer.layer(tower::service_fn(move |_: ()| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { Err::<(), _>(Error::from(Rejection::new(kind))) }
        }));
        let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
        assert_eq!(err.rejection().unwrap().kind(), kind);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{kind} was retried");
    }
    // A timeout is a downstream failure: retried.
    let (calls, inner) = flaky(1, || Error::from(Rejection::new(RejectionKind::Timeout)));
    let mut svc = layer.layer(inner);
    svc.ready().await.unwrap().call(()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn retry_after_hints_are_waited_out_only_when_they_fit() {
    let layer = RetryLayer::builder("t")
        .backoff(exponential(1))
        .budget(rich_budget())
        .without_metrics()
        .build()
        .unwrap();
    let hinted = || {
        Error::from(
            Rejection::new(RejectionKind::Timeout).with_retry_after(Duration::from_millis(300)),
        )
    };
    let (calls, inner) = flaky(1, hinted);
    let mut svc = layer.layer(inner);
    let start = Instant::now();
    svc.ready().await.unwrap().call(()).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Longer than the backoff's max (1 s): not waited, not retried.
    let too_long = || {
        Error::from(Rejection::new(RejectionKind::Timeout).with_retry_after(Duration::from_secs(5)))
    };
    let (calls, inner) = flaky(1, too_long);
    let mut svc = layer.layer(inner);
    let start = Instant::now();
    assert!(svc.ready().await.unwrap().call(()).await.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn backoff_never_sleeps_past_the_deadline() {
    let layer = RetryLayer::builder("t")
        .max_attempts(5)
        .backoff(exponential(100))
        .budget(rich_budget())
        .without_metrics()
        .build()
        .unwrap();
    let (calls, inner) = flaky(100, io_error);
    let mut svc = layer.layer(inner);
    let start = Instant::now();
    // Retries at +100 ms and +300 ms fit in 350 ms; the next (+700 ms) would not.
    let result = Deadline::after(Duration::from_millis(350))
        .scope(async { svc.ready().await.unwrap().call(()).await })
        .await;
    assert!(result.is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(start.elapsed(), Duration::from_millis(300));
}

/// A retry layer of 3 attempts whose budget holds `tokens` tokens (and no floor).
fn funded(tokens: u32) -> RetryLayer {
    let layer = RetryLayer::builder("t")
        .max_attempts(3)
        .backoff(exponential(10))
        .budget(BudgetConfig {
            deposit_ratio: 1.0,
            min_retries_per_sec: 0,
            max_balance: 10,
        })
        .without_metrics()
        .build()
        .unwrap();
    for _ in 0..tokens {
        layer.budget().deposit();
    }
    layer
}

/// Fails its first call with an I/O error (sent, failed); then `after` decides.
#[derive(Clone)]
struct FirstFails {
    calls: Arc<AtomicU32>,
    /// Later calls: refused by a layer below (`true`) or failed after sending.
    refused: bool,
    /// Later readiness fails.
    unready: bool,
}

impl Service<()> for FirstFails {
    type Response = ();
    type Error = Error;
    type Future = std::future::Ready<Result<(), Error>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Error>> {
        std::task::Poll::Ready(if self.unready && self.calls.load(Ordering::SeqCst) > 0 {
            Err(Error::Inner("connection pool closed".into()))
        } else {
            Ok(())
        })
    }

    fn call(&mut self, _: ()) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Err(if n > 0 && self.refused {
            Error::Rejected(Rejection::new(RejectionKind::BulkheadFull))
        } else {
            io_error()
        }))
    }
}

#[tokio::test(start_paused = true)]
async fn retries_that_are_never_sent_give_their_tokens_back() {
    let first_fails = |refused, unready| FirstFails {
        calls: Arc::default(),
        refused,
        unready,
    };
    // The retry's service fails to get ready after the backoff.
    let layer = funded(3);
    let inner = first_fails(false, true);
    layer.layer(inner.clone()).oneshot(()).await.unwrap_err();
    assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
    assert_eq!(layer.budget().balance(), 3.0);

    // The retry is refused by a layer below (a full bulkhead): a local decision,
    // which ends the call.
    let layer = funded(3);
    let inner = first_fails(true, false);
    let err = layer.layer(inner.clone()).oneshot(()).await.unwrap_err();
    assert_eq!(
        err.rejection().map(|r| r.kind()),
        Some(RejectionKind::BulkheadFull)
    );
    assert_eq!(inner.calls.load(Ordering::SeqCst), 2);
    assert_eq!(layer.budget().balance(), 3.0);

    // The caller gives up during the backoff.
    let layer = funded(3);
    let call = tokio::spawn(layer.layer(first_fails(false, false)).oneshot(()));
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(layer.budget().balance(), 2.0, "the retry's token is taken");
    call.abort();
    let _ = call.await;
    assert_eq!(layer.budget().balance(), 3.0);

    // Negative control: retries that are sent and fail spend their tokens.
    let layer = funded(3);
    let inner = first_fails(false, false);
    layer.layer(inner.clone()).oneshot(()).await.unwrap_err();
    assert_eq!(inner.calls.load(Ordering::SeqCst), 3);
    assert_eq!(layer.budget().balance(), 1.0);
}

#[tokio::test(start_paused = true)]
async fn a_dead_downstream_earns_only_the_budget_floor() {
    let layer = RetryLayer::builder("t")
        .max_attempts(3)
        .backoff(exponential(1))
        .budget(BudgetConfig {
            deposit_ratio: 0.2,
            min_retries_per_sec: 5,
            max_balance: 100,
        })
        .without_metrics()
        .build()
        .unwrap();
    let (calls, inner) = flaky(u32::MAX, io_error);
    let svc = layer.layer(inner);
    // 10 seconds at 100 requests a second against a dead downstream.
    for _ in 0..10 {
        for _ in 0..100 {
            let _ = svc.clone().oneshot(()).await;
        }
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    let sent = calls.load(Ordering::SeqCst);
    assert_eq!(sent, 1_000 + 10 * 5, "offered load plus the floor only");
}

#[tokio::test(start_paused = true)]
async fn successes_fund_retries_for_sporadic_failures() {
    /// Calls of 1,000 that fail, through a budget that deposits `ratio` per success
    /// (and has no floor), when every 4th attempt fails.
    async fn failed_calls(ratio: f64) -> u32 {
        let layer = RetryLayer::builder("t")
            .max_attempts(3)
            .backoff(exponential(1))
            .budget(BudgetConfig {
                deposit_ratio: ratio,
                min_retries_per_sec: 0,
                max_balance: 100,
            })
            .without_metrics()
            .build()
            .unwrap();
        let counter = Arc::new(AtomicU32::new(0));
        let svc = layer.layer(tower::service_fn(move |_: ()| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move { if n % 4 == 3 { Err(io_error()) } else { Ok(()) } }
        }));
        let mut failed = 0;
        for _ in 0..1_000 {
            if svc.clone().oneshot(()).await.is_err() {
                failed += 1;
            }
        }
        failed
    }
    assert_eq!(failed_calls(0.5).await, 0);
    // Negative control: successes that deposit nothing fund no retry, and every
    // failed attempt is a failed call.
    assert_eq!(failed_calls(0.0).await, 250);
}

#[tokio::test(start_paused = true)]
async fn metrics_count_calls_attempts_and_giveups() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        RetryLayer::builder("inventory")
            .max_attempts(2)
            .backoff(exponential(1))
            .budget(rich_budget())
            .build()
            .unwrap()
    });
    let (_, ok_after_one) = flaky(1, io_error);
    layer.layer(ok_after_one).oneshot(()).await.unwrap();
    let (_, dead) = flaky(u32::MAX, io_error);
    let _ = layer.layer(dead).oneshot(()).await;
    let (_, fine) = flaky(0, io_error);
    layer.layer(fine).oneshot(()).await.unwrap();

    let values: std::collections::HashMap<String, u64> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let key = key.key();
            let labels: Vec<String> = key
                .labels()
                .filter(|l| l.key() != "downstream")
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            match value {
                metrics_util::debugging::DebugValue::Counter(c) => {
                    Some((format!("{}{{{}}}", key.name(), labels.join(",")), c))
                }
                _ => None,
            }
        })
        .collect();
    assert_eq!(
        values["palisade_retry_calls_total{outcome=success_after_retry}"],
        1
    );
    assert_eq!(
        values["palisade_retry_calls_total{outcome=failure_after_retry}"],
        1
    );
    assert_eq!(
        values["palisade_retry_calls_total{outcome=success_first_try}"],
        1
    );
    assert_eq!(
        values["palisade_retry_calls_total{outcome=failure_without_retry}"],
        0
    );
    assert_eq!(values["palisade_retry_attempts_total{}"], 5);
    assert_eq!(values["palisade_retry_retries_total{reason=error}"], 2);
    assert_eq!(
        values["palisade_retry_giveups_total{reason=max_attempts}"],
        1
    );
    assert_eq!(values["palisade_retry_giveups_total{reason=budget}"], 0);
}

#[tokio::test(start_paused = true)]
async fn bad_settings_are_refused() {
    let e = RetryLayer::builder("t")
        .max_attempts(0)
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "max_attempts");
    let e = RetryLayer::builder("t")
        .backoff(Backoff {
            multiplier: 0.5,
            ..Backoff::default()
        })
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "backoff.multiplier");
    let e = RetryLayer::builder("t")
        .budget(BudgetConfig {
            deposit_ratio: -1.0,
            ..BudgetConfig::default()
        })
        .build()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "budget.deposit_ratio: -1 is not within 0..=1"
    );
}
