//! The cooperation rules of a `Downstream` stack, each with its negative control.
//! Paused time: every wait is virtual and exact.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use palisade::breaker::BreakerConfig;
use palisade::core::{Deadline, RejectionKind};
use palisade::limit::bulkhead::BulkheadConfig;
use palisade::retry::{Backoff, BudgetConfig, HedgeDelay, RetryConfig, Strategy};
use palisade::{Downstream, Error};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// An endpoint that counts its calls and answers as `behave` says for call `n`
/// (0-based): after `delay`, with `Ok(n)` or an error.
#[derive(Clone)]
struct Endpoint {
    calls: Arc<AtomicU32>,
    behave: Arc<dyn Fn(u32) -> (Duration, bool) + Send + Sync>,
}

impl Endpoint {
    fn new(behave: impl Fn(u32) -> (Duration, bool) + Send + Sync + 'static) -> Self {
        Self {
            calls: Arc::new(AtomicU32::new(0)),
            behave: Arc::new(behave),
        }
    }
    fn failing() -> Self {
        Self::new(|_| (Duration::ZERO, false))
    }
    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<&'static str> for Endpoint {
    type Response = u32;
    type Error = std::io::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<u32, std::io::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: &'static str) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let (delay, ok) = (self.behave)(n);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            if ok {
                Ok(n)
            } else {
                Err(std::io::Error::other(format!("call {n} failed")))
            }
        })
    }
}

fn constant_backoff(wait: Duration) -> Backoff {
    Backoff {
        strategy: Strategy::Constant,
        base: wait,
        max: wait,
        ..Backoff::default()
    }
}

fn retry3(wait: Duration) -> RetryConfig {
    RetryConfig {
        max_attempts: 3,
        backoff: constant_backoff(wait),
        ..RetryConfig::default()
    }
}

fn kind(err: &Error) -> Option<RejectionKind> {
    err.rejection().map(|r| r.kind())
}

#[tokio::test(start_paused = true)]
async fn retry_never_retries_an_open_circuit() {
    let endpoint = Endpoint::failing();
    let stack = Downstream::builder("open-circuit")
        .retry(retry3(Duration::from_millis(100)))
        .breaker(BreakerConfig::default())
        .build()
        .unwrap();
    stack.handle().retry_budget().unwrap().deposit();
    stack.handle().breaker().unwrap().force_open();
    let mut svc = stack.layer(endpoint.clone());

    let start = Instant::now();
    let err = svc.ready().await.unwrap().call("x").await.unwrap_err();
    assert_eq!(kind(&err), Some(RejectionKind::CircuitOpen));
    assert_eq!(endpoint.calls(), 0, "an open circuit sends nothing");
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "and the retry did not back off and try again"
    );

    // Negative control: with the circuit closed, the same retry tries three times.
    stack.handle().breaker().unwrap().reset();
    let err = svc.ready().await.unwrap().call("x").await.unwrap_err();
    assert_eq!(kind(&err), None, "the endpoint's own error: {err}");
    assert_eq!(endpoint.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn retry_never_retries_when_the_budget_is_spent() {
    let endpoint = Endpoint::failing();
    // Each success (or deposit) earns one retry; there is no free floor.
    let broke = BudgetConfig {
        deposit_ratio: 1.0,
        min_retries_per_sec: 0,
        max_balance: 10,
    };
    let stack = Downstream::builder("broke")
        .retry(RetryConfig {
            budget: broke,
            ..retry3(Duration::from_millis(10))
        })
        .build()
        .unwrap();
    let mut svc = stack.layer(endpoint.clone());
    svc.ready().await.unwrap().call("x").await.unwrap_err();
    assert_eq!(endpoint.calls(), 1, "an empty budget allows no retry");

    // Negative control: two tokens in the budget buy two retries.
    let budget = Arc::clone(stack.handle().retry_budget().unwrap());
    for _ in 0..2 {
        budget.deposit();
    }
    let before = endpoint.calls();
    svc.ready().await.unwrap().call("x").await.unwrap_err();
    assert_eq!(endpoint.calls() - before, 3);
}

#[tokio::test(start_paused = true)]
async fn retries_and_hedges_spend_one_budget() {
    // First attempts take 1 s; a hedge goes out after 100 ms and answers at once.
    let endpoint = Endpoint::new(|n| {
        if n % 2 == 0 {
            (Duration::from_secs(1), true)
        } else {
            (Duration::ZERO, true)
        }
    });
    // A success earns a tenth of a retry; there is no free floor.
    let budget = BudgetConfig {
        deposit_ratio: 0.1,
        min_retries_per_sec: 0,
        max_balance: 10,
    };
    let stack = Downstream::builder("hedged")
        .retry(RetryConfig {
            budget,
            ..retry3(Duration::from_millis(10))
        })
        .hedge(HedgeDelay::Fixed(Duration::from_millis(100)), 1)
        .build()
        .unwrap();
    let shared = Arc::clone(stack.handle().retry_budget().unwrap());
    for _ in 0..10 {
        shared.deposit();
    }
    assert!(
        (shared.balance() - 1.0).abs() < 1e-6,
        "one token: {}",
        shared.balance()
    );
    let mut svc = stack.layer(endpoint.clone());

    let start = Instant::now();
    assert_eq!(
        svc.ready().await.unwrap().call("x").await.unwrap(),
        1,
        "the hedge answered"
    );
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert!(
        shared.balance() < 1.0,
        "the hedge spent the retry layer's token: {}",
        shared.balance()
    );

    // With the shared budget spent, the next slow call gets no hedge.
    let start = Instant::now();
    assert_eq!(svc.ready().await.unwrap().call("x").await.unwrap(), 2);
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(1),
        "no hedge without budget"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_backoff_never_sleeps_past_the_deadline() {
    let endpoint = Endpoint::failing();
    let stack = Downstream::builder("deadline-backoff")
        .total_timeout(Duration::from_secs(1))
        .retry(retry3(Duration::from_secs(5)))
        .build()
        .unwrap();
    stack.handle().retry_budget().unwrap().deposit();
    let mut svc = stack.layer(endpoint.clone());
    let start = Instant::now();
    let err = svc.ready().await.unwrap().call("x").await.unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "gave up at once, not after a 5 s sleep"
    );
    assert_eq!(endpoint.calls(), 1);
    assert_eq!(
        kind(&err),
        None,
        "the caller sees the endpoint's error: {err}"
    );

    // Negative control: without a deadline the same retry sleeps 5 s and tries again.
    let stack = Downstream::builder("no-deadline-backoff")
        .retry(retry3(Duration::from_secs(5)))
        .build()
        .unwrap();
    stack.handle().retry_budget().unwrap().deposit();
    let endpoint = Endpoint::failing();
    let mut svc = stack.layer(endpoint.clone());
    let start = Instant::now();
    svc.ready().await.unwrap().call("x").await.unwrap_err();
    assert!(start.elapsed() >= Duration::from_secs(5));
    assert!(endpoint.calls() >= 2);
}

#[tokio::test(start_paused = true)]
async fn a_call_that_cannot_finish_in_time_is_not_sent() {
    let endpoint = Endpoint::new(|_| (Duration::ZERO, true));
    let stack = Downstream::builder("late")
        .min_remaining(Duration::from_millis(20))
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut svc = stack.layer(endpoint.clone());

    let err = Deadline::after(Duration::from_millis(15))
        .scope(async { svc.ready().await?.call("x").await })
        .await
        .unwrap_err();
    assert_eq!(kind(&err), Some(RejectionKind::DeadlineExceeded));
    assert_eq!(endpoint.calls(), 0, "refused before it was sent");

    // Negative control: with enough time left it is sent.
    let answer = Deadline::after(Duration::from_millis(50))
        .scope(async { svc.ready().await?.call("x").await })
        .await
        .unwrap();
    assert_eq!(answer, 0);
    assert_eq!(endpoint.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn calls_refused_for_their_deadline_do_not_open_the_breaker() {
    // A breaker that opens after three failures in a row.
    let stack = |name| {
        Downstream::builder(name)
            .min_remaining(Duration::from_millis(20))
            .breaker(BreakerConfig {
                consecutive_failures: Some(3),
                ..BreakerConfig::default()
            })
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap()
    };
    let endpoint = Endpoint::new(|_| (Duration::ZERO, true));
    let guarded = stack("late-breaker");
    let handle = guarded.handle();
    let mut svc = guarded.layer(endpoint.clone());
    // Callers whose deadlines are nearly spent: each call is refused unsent.
    for _ in 0..5 {
        let err = Deadline::after(Duration::from_millis(15))
            .scope(async { svc.ready().await?.call("x").await })
            .await
            .unwrap_err();
        assert_eq!(kind(&err), Some(RejectionKind::DeadlineExceeded));
    }
    assert_eq!(endpoint.calls(), 0);
    // The downstream was never asked: the breaker has nothing against it.
    assert_eq!(
        handle.breaker().unwrap().state(),
        palisade::breaker::State::Closed
    );
    assert_eq!(svc.ready().await.unwrap().call("x").await.unwrap(), 0);

    // Negative control: three calls the downstream fails do open the same breaker.
    let failing = Endpoint::failing();
    let control = stack("late-breaker-control");
    let handle = control.handle();
    let mut svc = control.layer(failing.clone());
    for _ in 0..3 {
        svc.ready().await.unwrap().call("x").await.unwrap_err();
    }
    assert_eq!(failing.calls(), 3);
    assert_eq!(
        handle.breaker().unwrap().state(),
        palisade::breaker::State::Open
    );
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_try_is_retried_and_the_total_timeout_ends_the_call() {
    // The first attempt hangs; the second answers.
    let endpoint = Endpoint::new(|n| {
        if n == 0 {
            (Duration::from_secs(3600), true)
        } else {
            (Duration::ZERO, true)
        }
    });
    let stack = Downstream::builder("per-try")
        .total_timeout(Duration::from_secs(2))
        .retry(retry3(Duration::from_millis(50)))
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    stack.handle().retry_budget().unwrap().deposit();
    let mut svc = stack.layer(endpoint.clone());
    let start = Instant::now();
    assert_eq!(svc.ready().await.unwrap().call("x").await.unwrap(), 1);
    assert_eq!(start.elapsed(), Duration::from_millis(350));

    // Without a per-try timeout a hanging endpoint is cut off by the total timeout.
    let endpoint = Endpoint::new(|_| (Duration::from_secs(3600), true));
    let stack = Downstream::builder("total-only")
        .total_timeout(Duration::from_secs(2))
        .retry(retry3(Duration::from_millis(50)))
        .build()
        .unwrap();
    let mut svc = stack.layer(endpoint.clone());
    let start = Instant::now();
    let err = svc.ready().await.unwrap().call("x").await.unwrap_err();
    assert_eq!(kind(&err), Some(RejectionKind::DeadlineExceeded));
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_hedge_the_bulkhead_refuses_does_not_end_the_call() {
    // The first attempt takes 200 ms and holds the only permit; the hedge due at
    // 50 ms finds the bulkhead full and is refused without being sent.
    let endpoint = Endpoint::new(|n| (Duration::from_millis(if n == 0 { 200 } else { 0 }), true));
    let hedged = |queue: u32| {
        Downstream::builder("hedge-full")
            .hedge(HedgeDelay::Fixed(Duration::from_millis(50)), 1)
            .bulkhead(BulkheadConfig {
                max_concurrent: 1,
                max_queue: queue,
                max_wait: Duration::from_secs(10),
            })
            .build()
            .unwrap()
    };
    let stack = hedged(0);
    let mut svc = stack.layer(endpoint.clone());
    let start = Instant::now();
    assert_eq!(
        svc.ready().await.unwrap().call("x").await.unwrap(),
        0,
        "the first attempt's answer, not the hedge's refusal"
    );
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    assert_eq!(endpoint.calls(), 1, "the refused hedge was never sent");

    // Negative control: a second caller (not a hedge) is refused by the same
    // bulkhead at once: the refusal the hedge met is real.
    let stack = hedged(0);
    let handle = stack.handle();
    let svc = stack.layer(Endpoint::new(|_| (Duration::from_millis(200), true)));
    let first = tokio::spawn(svc.clone().oneshot("x"));
    tokio::task::yield_now().await;
    assert_eq!(handle.bulkhead().unwrap().in_flight(), 1);
    let err = svc.clone().oneshot("y").await.unwrap_err();
    assert_eq!(kind(&err), Some(RejectionKind::BulkheadFull));
    first.await.unwrap().unwrap();

    // With a queue: the hedge is not ready when due, so it is not sent, and its
    // place in the queue goes at once rather than when the call ends.
    let stack = hedged(1);
    let handle = stack.handle();
    let svc = stack.layer(Endpoint::new(|n| {
        (Duration::from_millis(if n == 0 { 200 } else { 0 }), true)
    }));
    let call = tokio::spawn(svc.clone().oneshot("x"));
    tokio::time::sleep(Duration::from_millis(60)).await;
    let bulkhead = handle.bulkhead().unwrap();
    assert_eq!((bulkhead.in_flight(), bulkhead.queued()), (1, 0));
    assert_eq!(call.await.unwrap().unwrap(), 0);

    // And a hedge that could not go out spent nothing from the retry budget it
    // shares: five tokens, plus the one the success earns.
    let stack = Downstream::builder("hedge-budget")
        .retry(RetryConfig {
            budget: BudgetConfig {
                deposit_ratio: 1.0,
                min_retries_per_sec: 0,
                max_balance: 10,
            },
            ..retry3(Duration::from_millis(10))
        })
        .hedge(HedgeDelay::Fixed(Duration::from_millis(50)), 1)
        .bulkhead(BulkheadConfig {
            max_concurrent: 1,
            max_queue: 1,
            max_wait: Duration::from_secs(10),
        })
        .build()
        .unwrap();
    let budget = Arc::clone(stack.handle().retry_budget().unwrap());
    for _ in 0..5 {
        budget.deposit();
    }
    let svc = stack.layer(Endpoint::new(|n| {
        (Duration::from_millis(if n == 0 { 200 } else { 0 }), true)
    }));
    assert_eq!(svc.oneshot("x").await.unwrap(), 0);
    assert!(
        (budget.balance() - 6.0).abs() < 1e-9,
        "{}",
        budget.balance()
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_attempt_gives_its_bulkhead_permit_back() {
    let endpoint = Endpoint::new(|n| {
        if n == 0 {
            (Duration::from_secs(3600), true)
        } else {
            (Duration::ZERO, true)
        }
    });
    let stack = Downstream::builder("permits")
        .bulkhead(BulkheadConfig {
            max_concurrent: 1,
            ..BulkheadConfig::default()
        })
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let handle = stack.handle();
    let mut svc = stack.layer(endpoint.clone());
    let hung = tokio::spawn(svc.clone().oneshot("x"));
    tokio::task::yield_now().await;
    assert_eq!(
        handle.bulkhead().unwrap().in_flight(),
        1,
        "the hung attempt holds the permit"
    );
    let err = hung.await.unwrap().unwrap_err();
    assert_eq!(kind(&err), Some(RejectionKind::Timeout));
    assert_eq!(
        handle.bulkhead().unwrap().in_flight(),
        0,
        "the permit came back"
    );
    assert_eq!(svc.ready().await.unwrap().call("x").await.unwrap(), 1);
}

#[test]
fn config_errors_name_the_policy_and_field() {
    let err = Downstream::builder("bad")
        .breaker(BreakerConfig {
            failure_rate_threshold: 1.5,
            ..BreakerConfig::default()
        })
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "breaker.failure_rate_threshold: 1.5 is not within 0..=1"
    );
    let err = Downstream::builder("bad")
        .retry(RetryConfig {
            max_attempts: 0,
            ..RetryConfig::default()
        })
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "retry.max_attempts: must be at least 1 (1 means no retries)"
    );
    let err = Downstream::builder("bad")
        .timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(err.to_string().starts_with("timeout."), "{err}");
    let err = Downstream::builder("bad")
        .total_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.to_string(), "total_timeout: must be more than zero");
    let err = Downstream::builder("bad name!").build().unwrap_err();
    assert!(err.to_string().starts_with("name:"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn the_boxed_stack_is_nameable_and_cloneable() {
    let endpoint = Endpoint::new(|_| (Duration::ZERO, true));
    let stack = Downstream::builder("boxed")
        .retry(RetryConfig::default())
        .breaker(BreakerConfig::default())
        .build()
        .unwrap();
    let svc: palisade::BoxDownstream<&'static str, u32> = stack.boxed(endpoint.clone());
    let mut a = svc.clone();
    let mut b = svc;
    assert_eq!(a.ready().await.unwrap().call("x").await.unwrap(), 0);
    assert_eq!(b.ready().await.unwrap().call("x").await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_fallback_sees_why_the_call_failed() {
    use palisade::fallback::{FallbackCause, FallbackLayer};

    let fallback = FallbackLayer::builder("why", |cause: &FallbackCause<'_>| match cause {
        FallbackCause::Rejected(r) if r.kind() == RejectionKind::CircuitOpen => 1001,
        FallbackCause::Rejected(_) => 1999,
        FallbackCause::Failed { .. } => 2000,
    })
    .build()
    .unwrap();
    let endpoint = Endpoint::failing();
    let stack = Downstream::builder("why")
        .fallback(fallback)
        .retry(retry3(Duration::from_millis(10)))
        .breaker(BreakerConfig::default())
        .build()
        .unwrap();
    let mut svc = stack.layer(endpoint.clone());

    // The endpoint's own failure, after the retries.
    stack.handle().retry_budget().unwrap().deposit();
    assert_eq!(svc.ready().await.unwrap().call("x").await.unwrap(), 2000);
    assert!(endpoint.calls() >= 2, "retried before falling back");

    // The breaker's refusal, told apart from a failure.
    stack.handle().breaker().unwrap().force_open();
    let before = endpoint.calls();
    let answer = svc.ready().await.unwrap().call("x").await.unwrap();
    assert_eq!(answer, 1001);
    assert_eq!(endpoint.calls(), before, "nothing sent while open");

    // Negative control: without the fallback the caller gets the rejection.
    let bare = Downstream::builder("why-bare")
        .breaker(BreakerConfig::default())
        .build()
        .unwrap();
    bare.handle().breaker().unwrap().force_open();
    let err = bare
        .layer(endpoint.clone())
        .ready()
        .await
        .unwrap()
        .call("x")
        .await
        .unwrap_err();
    assert_eq!(kind(&err), Some(RejectionKind::CircuitOpen));
}

#[tokio::test(start_paused = true)]
async fn a_config_change_retunes_in_place_and_an_open_breaker_stays_open() {
    use palisade::config::{DownstreamConfig, Section};

    let old: DownstreamConfig = toml::from_str(
        r#"
        breaker = { failure_rate_threshold = 0.5 }
        retry = { max_attempts = 3 }
        rate_limit = { rate = 100 }
        timeout = "300ms"
        "#,
    )
    .unwrap();
    let stack = Downstream::builder("reload")
        .retry(old.retry.clone().unwrap())
        .breaker(old.breaker.clone().unwrap())
        .rate_limit(old.rate_limit.unwrap())
        .timeout(old.timeout.unwrap())
        .build()
        .unwrap();
    let handle = stack.handle();
    handle.breaker().unwrap().force_open();

    let new: DownstreamConfig = toml::from_str(
        r#"
        breaker = { failure_rate_threshold = 0.3 }
        retry = { max_attempts = 5 }
        rate_limit = { rate = 7 }
        timeout = "150ms"
        "#,
    )
    .unwrap();
    let applied = handle.apply(&old, &new).unwrap();
    assert_eq!(
        applied.retuned,
        vec![Section::Breaker, Section::Timeout, Section::RateLimit]
    );
    assert_eq!(
        handle.timeout().unwrap().timeout(),
        Duration::from_millis(150)
    );
    assert_eq!(
        applied.needs_rebuild.len(),
        1,
        "{:?}",
        applied.needs_rebuild
    );
    assert_eq!(applied.needs_rebuild[0].section, Section::Retry);
    assert_eq!(
        handle.breaker().unwrap().config().failure_rate_threshold,
        0.3
    );
    assert_eq!(
        handle.breaker().unwrap().state(),
        palisade::breaker::State::ForcedOpen
    );
    assert_eq!(handle.rate_limit().unwrap().config().rate, 7);

    // An invalid change applies nothing.
    let bad: DownstreamConfig = toml::from_str(
        "breaker = { failure_rate_threshold = 2.0 }\nrate_limit = { rate = 9 }\ntimeout = \"1s\"",
    )
    .unwrap();
    let err = handle.apply(&new, &bad).unwrap_err();
    assert_eq!(
        err.to_string(),
        "breaker.failure_rate_threshold: 2 is not within 0..=1"
    );
    assert_eq!(handle.rate_limit().unwrap().config().rate, 7);
    assert_eq!(
        handle.timeout().unwrap().timeout(),
        Duration::from_millis(150)
    );
}

/// A call answered at once makes no timer, for the total timeout nor the per-try
/// one: polled by hand outside any runtime (where making a tokio timer would
/// panic), the answer comes through and is counted.
#[test]
fn a_call_answered_at_once_makes_no_timer() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    let mut svc = Downstream::builder("at-once")
        .total_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(1))
        .without_metrics()
        .build()
        .unwrap()
        .layer(tower::service_fn(|x: u32| async move {
            Ok::<_, std::io::Error>(x)
        }));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let mut fut = std::pin::pin!(svc.call(7));
    assert!(matches!(fut.as_mut().poll(&mut cx), Poll::Ready(Ok(7))));
}
