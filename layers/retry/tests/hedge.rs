//! Hedging on paused time: when hedges are sent, who wins, cancellation, the shared
// Test doubles return `impl Service` tuples; naming them would only add noise.
#![allow(clippy::type_complexity)]
//! budget, and the observed-percentile delay.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use palisade_core::{Error, Rejection, RejectionKind};
use palisade_retry::{BudgetConfig, HedgeDelay, HedgeLayer, RetryBudget};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

fn budget(rich: bool) -> Arc<RetryBudget> {
    let b = RetryBudget::new(&BudgetConfig {
        deposit_ratio: 1.0,
        min_retries_per_sec: 0,
        max_balance: 1_000,
    })
    .unwrap();
    if rich {
        for _ in 0..1_000 {
            b.deposit();
        }
    }
    Arc::new(b)
}

/// Drops count how many attempts were cancelled.
struct DropCounter(Arc<AtomicU32>, bool);
impl Drop for DropCounter {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Attempt n (0-based) takes `latencies[n]` and answers n, or fails if negative.
fn replicas(
    latencies: &'static [i64],
) -> (
    Arc<AtomicU32>,
    Arc<AtomicU32>,
    impl tower::Service<(), Response = u32, Error = Error, Future = impl Send> + Clone,
) {
    let calls = Arc::new(AtomicU32::new(0));
    let cancelled = Arc::new(AtomicU32::new(0));
    let (c, x) = (calls.clone(), cancelled.clone());
    let svc = tower::service_fn(move |_: ()| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        let guard = DropCounter(x.clone(), false);
        async move {
            // Move the whole guard in (not just the field assigned below).
            let mut guard = guard;
            let ms = latencies[n as usize % latencies.len()];
            tokio::time::sleep(Duration::from_millis(ms.unsigned_abs())).await;
            guard.1 = true;
            if ms < 0 {
                Err(Error::Inner("replica failed".into()))
            } else {
                Ok(n)
            }
        }
    });
    (calls, cancelled, svc)
}

fn fixed(ms: u64, max: u32, rich: bool) -> HedgeLayer {
    HedgeLayer::builder("h")
        .delay(HedgeDelay::Fixed(Duration::from_millis(ms)))
        .max_hedges(max)
        .budget(budget(rich))
        .without_metrics()
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_slow_call_is_hedged_and_the_first_answer_wins() {
    let (calls, cancelled, svc) = replicas(&[200, 10]);
    let start = Instant::now();
    let answer = fixed(50, 1, true).layer(svc).oneshot(()).await.unwrap();
    assert_eq!(answer, 1, "the hedge answered");
    assert_eq!(start.elapsed(), Duration::from_millis(60));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        cancelled.load(Ordering::SeqCst),
        1,
        "the slow primary was cancelled"
    );
}

#[tokio::test(start_paused = true)]
async fn a_fast_call_is_not_hedged() {
    let (calls, _, svc) = replicas(&[40]);
    fixed(50, 1, true).layer(svc).oneshot(()).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_sends_no_hedge() {
    let (calls, _, svc) = replicas(&[200, 10]);
    let start = Instant::now();
    assert_eq!(fixed(50, 1, false).layer(svc).oneshot(()).await.unwrap(), 0);
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn up_to_n_hedges_then_the_fastest_wins() {
    let (calls, cancelled, svc) = replicas(&[500, 500, 20]);
    let start = Instant::now();
    assert_eq!(fixed(50, 2, true).layer(svc).oneshot(()).await.unwrap(), 2);
    assert_eq!(start.elapsed(), Duration::from_millis(120));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(cancelled.load(Ordering::SeqCst), 2);
}

/// A hedge layer sending one hedge after 50 ms, spending from a budget of `tokens`.
fn funded(tokens: u32) -> (HedgeLayer, Arc<RetryBudget>) {
    let funds = budget(false);
    for _ in 0..tokens {
        funds.deposit();
    }
    let layer = HedgeLayer::builder("h")
        .delay(HedgeDelay::Fixed(Duration::from_millis(50)))
        .max_hedges(1)
        .budget(funds.clone())
        .without_metrics()
        .build()
        .unwrap();
    (layer, funds)
}

#[tokio::test(start_paused = true)]
async fn a_hedge_refused_below_gives_its_token_back() {
    // The primary answers after 200 ms; the hedge, due at 50 ms, is refused by a
    // layer below (a full bulkhead) and never sent.
    let (layer, funds) = funded(3);
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let refusing = tower::service_fn(move |_: ()| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok(0)
            } else {
                Err(Error::Rejected(Rejection::new(RejectionKind::BulkheadFull)))
            }
        }
    });
    assert_eq!(layer.layer(refusing).oneshot(()).await.unwrap(), 0);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the hedge was attempted");
    assert_eq!(funds.balance(), 3.0);

    // Negative control: a hedge that goes out and fails spends its token.
    let (calls, _, svc) = replicas(&[200, -10]);
    let (layer, funds) = funded(3);
    assert_eq!(layer.layer(svc).oneshot(()).await.unwrap(), 0);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(funds.balance(), 2.0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_hedge_does_not_win_and_all_failing_returns_the_last_failure() {
    let (_, _, svc) = replicas(&[100, -10]);
    let start = Instant::now();
    assert_eq!(fixed(50, 1, true).layer(svc).oneshot(()).await.unwrap(), 0);
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(100),
        "the primary's success wins"
    );

    let (calls, _, svc) = replicas(&[-100, -10]);
    let err = fixed(50, 1, true).layer(svc).oneshot(()).await.unwrap_err();
    assert_eq!(err.to_string(), "downstream error: replica failed");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn the_percentile_delay_follows_observed_latency() {
    let layer = HedgeLayer::builder("p")
        .delay(HedgeDelay::Percentile {
            percentile: 0.9,
            min: Duration::from_millis(1),
        })
        .budget(budget(true))
        .without_metrics()
        .build()
        .unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    // 10 ms answers, except every 50th call which would take a second.
    let svc = layer.layer(tower::service_fn(move |_: ()| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            let slow = n % 50 == 49 && n < 1_000;
            tokio::time::sleep(Duration::from_millis(if slow { 1_000 } else { 10 })).await;
            Ok::<_, Error>(n)
        }
    }));
    // Before 100 observations: no hedging, the slow call takes its second.
    let mut slowest = Duration::ZERO;
    for _ in 0..50 {
        let start = Instant::now();
        svc.clone().oneshot(()).await.unwrap();
        slowest = slowest.max(start.elapsed());
    }
    assert_eq!(slowest, Duration::from_secs(1));
    for _ in 0..100 {
        svc.clone().oneshot(()).await.unwrap();
    }
    // Now slow calls are hedged after about the 90th percentile (~10 ms).
    let mut slowest = Duration::ZERO;
    for _ in 0..100 {
        let start = Instant::now();
        svc.clone().oneshot(()).await.unwrap();
        slowest = slowest.max(start.elapsed());
    }
    assert!(slowest <= Duration::from_millis(30), "{slowest:?}");
}

#[tokio::test(start_paused = true)]
async fn bad_settings_are_refused() {
    let e = HedgeLayer::builder("h").max_hedges(0).build().unwrap_err();
    assert_eq!(e.field(), "max_hedges");
    let e = HedgeLayer::builder("h")
        .delay(HedgeDelay::Percentile {
            percentile: 1.0,
            min: Duration::ZERO,
        })
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "delay.percentile");
    let e = HedgeLayer::builder("h")
        .delay(HedgeDelay::Fixed(Duration::ZERO))
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "delay");
}
