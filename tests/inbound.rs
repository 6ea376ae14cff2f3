//! The server-side stack: refusals become fast 429/503/504 responses with
//! `Retry-After`, handler errors become 500, the caller's deadline reaches the
//! handler. Paused time.

use std::time::Duration;

use palisade::Inbound;
use palisade::core::Deadline;
use palisade::limit::rate::RateLimitConfig;
use tower::{Layer, Service, ServiceExt};

type Req = http::Request<String>;
type Res = http::Response<String>;

fn request(key: &str) -> Req {
    http::Request::builder()
        .header("x-api-key", key)
        .body(String::new())
        .unwrap()
}

async fn handler(req: Req) -> Result<Res, std::io::Error> {
    match req.uri().path() {
        "/boom" => Err(std::io::Error::other("handler failed")),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok(http::Response::new("slow".into()))
        }
        "/deadline" => {
            let left = Deadline::current()
                .map(|d| d.remaining().as_millis())
                .unwrap_or(0);
            Ok(http::Response::new(left.to_string()))
        }
        _ => Ok(http::Response::new("ok".into())),
    }
}

#[tokio::test(start_paused = true)]
async fn rate_limited_per_key_with_retry_after() {
    let inbound = Inbound::builder("api")
        .rate_limit_by(
            RateLimitConfig {
                rate: 2,
                per: Duration::from_secs(1),
                burst: Some(2),
                max_wait: None,
            },
            |req: &Req| req.headers().get("x-api-key").cloned(),
        )
        .build()
        .unwrap();
    let mut svc = inbound.layer(tower::service_fn(handler));
    for _ in 0..2 {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(request("alice"))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(request("alice"))
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["x-palisade-rejection"], "rate_limited");
    assert!(
        res.headers().contains_key(http::header::RETRY_AFTER),
        "{:?}",
        res.headers()
    );
    // Another key has its own allowance (negative control for the key function).
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(request("bob"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // And alice is served again once her allowance refills.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(request("alice"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn over_the_in_flight_limit_is_shed_at_once() {
    let inbound = Inbound::builder("api")
        .max_in_flight(2, Duration::from_millis(50))
        .build()
        .unwrap();
    let svc = inbound.layer(tower::service_fn(handler));
    let slow = || {
        let mut svc = svc.clone();
        tokio::spawn(async move {
            let req = http::Request::builder()
                .uri("/slow")
                .body(String::new())
                .unwrap();
            svc.ready().await.unwrap().call(req).await.unwrap()
        })
    };
    let (a, b) = (slow(), slow());
    tokio::task::yield_now().await;
    let start = tokio::time::Instant::now();
    let res = svc
        .clone()
        .ready()
        .await
        .unwrap()
        .call(request("x"))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["x-palisade-rejection"], "shed");
    assert!(res.headers().contains_key(http::header::RETRY_AFTER));
    assert_eq!(start.elapsed(), Duration::ZERO, "shed without waiting");
    assert_eq!(a.await.unwrap().status(), 200);
    assert_eq!(b.await.unwrap().status(), 200);
    // With the slow requests done there is room again.
    let res = svc
        .clone()
        .ready()
        .await
        .unwrap()
        .call(request("x"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn handler_errors_become_500_and_deadlines_reach_the_handler() {
    let inbound = Inbound::builder("api")
        .deadline(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut svc = inbound.layer(tower::service_fn(handler));
    let req = http::Request::builder()
        .uri("/boom")
        .body(String::new())
        .unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), 500);
    assert!(!res.headers().contains_key("x-palisade-rejection"));

    let req = http::Request::builder()
        .uri("/deadline")
        .header("x-palisade-deadline-ms", "250")
        .body(String::new())
        .unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.body(), "250");
    // Capped by the server's own maximum.
    let req = http::Request::builder()
        .uri("/deadline")
        .header("x-palisade-deadline-ms", "60000")
        .body(String::new())
        .unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.body(), "5000");
}

#[test]
fn config_errors_name_the_policy_and_field() {
    let err = Inbound::builder("api")
        .rate_limit_by(
            RateLimitConfig {
                rate: 0,
                ..RateLimitConfig::default()
            },
            |req: &Req| req.uri().path().to_owned(),
        )
        .build()
        .unwrap_err();
    assert_eq!(err.to_string(), "rate_limit.rate: must be at least 1");
    let err = Inbound::builder("api")
        .max_in_flight(0, Duration::from_millis(5))
        .build()
        .unwrap_err();
    assert_eq!(err.to_string(), "shed.max_in_flight: must be at least 1");
}

/// A handler whose first `poll_ready` fails (as a connection pool that lost its
/// connections might), and that counts its calls.
#[derive(Clone)]
struct FailsReadyOnce {
    failed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    calls: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl Service<Req> for FailsReadyOnce {
    type Response = Res;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Res, std::io::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), std::io::Error>> {
        use std::sync::atomic::Ordering;
        if self.failed.swap(true, Ordering::SeqCst) {
            std::task::Poll::Ready(Ok(()))
        } else {
            std::task::Poll::Ready(Err(std::io::Error::other("pool lost its connections")))
        }
    }

    fn call(&mut self, _: Req) -> Self::Future {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::future::ready(Ok(http::Response::new("ok".into())))
    }
}

#[tokio::test(start_paused = true)]
async fn a_stage_that_fails_to_get_ready_is_not_called_and_the_request_gets_500() {
    let handler = FailsReadyOnce {
        failed: Default::default(),
        calls: Default::default(),
    };
    // Only stages that pass readiness through: nothing below remembers the error.
    let inbound = Inbound::builder("ready")
        .rate_limit_by(
            RateLimitConfig {
                rate: 100,
                ..RateLimitConfig::default()
            },
            |req: &Req| req.headers().get("x-api-key").cloned(),
        )
        .deadline(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut svc = inbound.layer(handler.clone());
    let res = svc.ready().await.unwrap().call(request("a")).await.unwrap();
    assert_eq!(res.status(), 500);
    assert_eq!(
        handler.calls.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a handler that is not ready is not called"
    );
    // Ready again: the next request reaches it.
    let res = svc.ready().await.unwrap().call(request("a")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(handler.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}
