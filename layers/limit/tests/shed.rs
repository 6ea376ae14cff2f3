//! Inbound load shedding on paused time: criticality thresholds, fast 503 answers,
// Test doubles return `impl Service`; naming them would only add noise.
#![allow(clippy::type_complexity)]
//! slots freed on completion or cancellation, and the queue target.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use palisade_limit::shed::{CRITICALITY_HEADER, LoadShedLayer};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

fn req(class: Option<&str>) -> Request<()> {
    let mut r = Request::new(());
    if let Some(c) = class {
        r.headers_mut()
            .insert(CRITICALITY_HEADER, c.parse().unwrap());
    }
    r
}

/// A handler that holds every request until `release` is notified, counting calls.
fn holding(
    release: Arc<Notify>,
    calls: Arc<AtomicU32>,
) -> impl Service<
    Request<()>,
    Response = Response<String>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<String>, Infallible>> + Send,
> + Clone {
    tower::service_fn(move |_r: Request<()>| {
        let release = release.clone();
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            release.notified().await;
            Ok::<_, Infallible>(Response::new(String::from("done")))
        }
    })
}

#[test]
fn thresholds_follow_the_limit_and_saturate() {
    use palisade_limit::shed::Criticality;
    assert_eq!(Criticality::Sheddable.threshold(10), 8);
    assert_eq!(Criticality::Default.threshold(10), 10);
    assert_eq!(Criticality::Critical.threshold(10), 13);
    // A limit as large as a config can hold means "never shed", not an overflow.
    assert_eq!(Criticality::Sheddable.threshold(usize::MAX), usize::MAX / 5);
    assert_eq!(
        Criticality::Critical.threshold(usize::MAX),
        usize::MAX.div_ceil(4)
    );
}

#[tokio::test(start_paused = true)]
async fn classes_are_shed_at_their_thresholds() {
    let layer = LoadShedLayer::builder("api")
        .max_in_flight(10)
        .build()
        .unwrap();
    let release = Arc::new(Notify::new());
    let calls = Arc::new(AtomicU32::new(0));
    let svc = layer.layer(holding(release.clone(), calls.clone()));
    let mut held = Vec::new();
    // 7 in flight: a sheddable request (threshold 8) is still admitted.
    for _ in 0..6 {
        held.push(tokio::spawn(svc.clone().oneshot(req(None))));
    }
    tokio::task::yield_now().await;
    assert_eq!(layer.in_flight(), 6);
    held.push(tokio::spawn(svc.clone().oneshot(req(Some("sheddable")))));
    tokio::task::yield_now().await;
    assert_eq!(layer.in_flight(), 7);
    // 8 in flight: a sheddable one is shed.
    held.push(tokio::spawn(svc.clone().oneshot(req(None))));
    tokio::task::yield_now().await;
    assert_eq!(layer.in_flight(), 8);
    let shed = svc.clone().oneshot(req(Some("sheddable"))).await.unwrap();
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(shed.headers()["retry-after"], "1");
    assert_eq!(shed.headers()["x-palisade-rejection"], "shed");
    // Default requests are admitted up to 10.
    for _ in 0..2 {
        held.push(tokio::spawn(svc.clone().oneshot(req(Some("default")))));
    }
    tokio::task::yield_now().await;
    assert_eq!(layer.in_flight(), 10);
    let shed = svc.clone().oneshot(req(None)).await.unwrap();
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Critical requests up to 13 (125%, rounded up).
    for _ in 0..3 {
        held.push(tokio::spawn(svc.clone().oneshot(req(Some("critical")))));
    }
    tokio::task::yield_now().await;
    assert_eq!(layer.in_flight(), 13);
    let shed = svc.clone().oneshot(req(Some("critical"))).await.unwrap();
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        13,
        "shed requests never reach the handler"
    );

    release.notify_waiters();
    for h in held {
        assert_eq!(h.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_request_frees_its_slot() {
    let layer = LoadShedLayer::builder("api")
        .max_in_flight(1)
        .build()
        .unwrap();
    let release = Arc::new(Notify::new());
    let svc = layer.layer(holding(release, Arc::new(AtomicU32::new(0))));
    let first = tokio::spawn(svc.clone().oneshot(req(None)));
    tokio::task::yield_now().await;
    assert_eq!(layer.in_flight(), 1);
    first.abort();
    let _ = first.await;
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_limit_can_follow_a_source() {
    let limit = Arc::new(AtomicU32::new(1));
    let l = limit.clone();
    let layer = LoadShedLayer::builder("api")
        .limit_from(move || l.load(Ordering::SeqCst) as usize)
        .build()
        .unwrap();
    let release = Arc::new(Notify::new());
    let svc = layer.layer(holding(release.clone(), Arc::new(AtomicU32::new(0))));
    let _held = tokio::spawn(svc.clone().oneshot(req(None)));
    tokio::task::yield_now().await;
    let shed = svc.clone().oneshot(req(None)).await.unwrap();
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    limit.store(2, Ordering::SeqCst);
    let _held2 = tokio::spawn(svc.clone().oneshot(req(None)));
    tokio::task::yield_now().await;
    assert_eq!(layer.in_flight(), 2);
    release.notify_waiters();
}

/// A handler that is never ready.
#[derive(Clone)]
struct NeverReady;

impl Service<Request<()>> for NeverReady {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Pending
    }

    fn call(&mut self, _req: Request<()>) -> Self::Future {
        unreachable!("never ready")
    }
}

#[tokio::test(start_paused = true)]
async fn requests_are_shed_when_the_handler_is_not_ready_within_the_target() {
    let layer = LoadShedLayer::builder("api")
        .max_in_flight(10)
        .queue_target(Duration::from_millis(50))
        .build()
        .unwrap();
    let start = Instant::now();
    let res = layer.layer(NeverReady).oneshot(req(None)).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(start.elapsed(), Duration::from_millis(50));
}

#[tokio::test(start_paused = true)]
async fn bad_settings_name_the_field() {
    assert_eq!(
        LoadShedLayer::builder("a").build().unwrap_err().field(),
        "max_in_flight"
    );
    assert_eq!(
        LoadShedLayer::builder("a")
            .max_in_flight(0)
            .build()
            .unwrap_err()
            .to_string(),
        "max_in_flight: must be at least 1"
    );
    assert_eq!(
        LoadShedLayer::builder("a")
            .max_in_flight(1)
            .queue_target(Duration::ZERO)
            .build()
            .unwrap_err()
            .field(),
        "queue_target"
    );
}
