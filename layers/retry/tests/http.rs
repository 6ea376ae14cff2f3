//! HTTP retry rules and cross-hop amplification control, on paused time.
// Test doubles return `impl Service` tuples; naming them would only add noise.
#![allow(clippy::type_complexity)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use palisade_core::{Error, HttpClassifier};
use palisade_retry::http::{ATTEMPT_HEADER, HttpRetry, NO_RETRY_HEADER, NoRetryLayer};
use palisade_retry::{Backoff, BudgetConfig, RetryLayer, Strategy};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

type Req = Request<Full<Bytes>>;

fn layer(name: &str) -> RetryLayer<HttpRetry, HttpClassifier> {
    RetryLayer::builder(name)
        .max_attempts(3)
        .backoff(Backoff {
            strategy: Strategy::Constant,
            base: Duration::from_millis(10),
            ..Backoff::default()
        })
        .budget(BudgetConfig {
            deposit_ratio: 1.0,
            min_retries_per_sec: 1_000,
            max_balance: 1_000,
        })
        .classify(HttpClassifier)
        .protocol(HttpRetry::default())
        .without_metrics()
        .build()
        .unwrap()
}

fn get() -> Req {
    Request::get("http://svc/items")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// A server answering with the given responses in turn (the last one repeats),
/// recording each request's attempt header.
fn scripted(
    script: Vec<(u16, Vec<(&'static str, &'static str)>)>,
) -> (
    Arc<Mutex<Vec<String>>>,
    impl Service<Req, Response = Response<Full<Bytes>>, Error = Error, Future = impl Send> + Clone,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let script = Arc::new(script);
    let svc = tower::service_fn(move |req: Req| {
        let mut log = log.lock().unwrap();
        let attempt = req
            .headers()
            .get(ATTEMPT_HEADER)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        log.push(attempt);
        let (status, headers) = script[(log.len() - 1).min(script.len() - 1)].clone();
        let mut res = Response::new(Full::new(Bytes::new()));
        *res.status_mut() = StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            res.headers_mut().insert(k, v.parse().unwrap());
        }
        async move { Ok::<_, Error>(res) }
    });
    (seen, svc)
}

#[tokio::test(start_paused = true)]
async fn five_hundreds_are_retried_with_attempt_numbers() {
    let (seen, server) = scripted(vec![(503, vec![]), (500, vec![]), (200, vec![])]);
    let res = layer("c").layer(server).oneshot(get()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(*seen.lock().unwrap(), vec!["1", "2", "3"]);
}

#[tokio::test(start_paused = true)]
async fn four_hundreds_and_non_idempotent_requests_are_not_retried() {
    let (seen, server) = scripted(vec![(404, vec![])]);
    let res = layer("c").layer(server).oneshot(get()).await.unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(seen.lock().unwrap().len(), 1);

    let (seen, server) = scripted(vec![(503, vec![]), (200, vec![])]);
    let post = Request::post("http://svc/orders")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let res = layer("c")
        .layer(server.clone())
        .oneshot(post)
        .await
        .unwrap();
    assert_eq!(res.status(), 503, "a POST is not retried");
    assert_eq!(seen.lock().unwrap().len(), 1);

    let keyed = Request::post("http://svc/orders")
        .header("idempotency-key", "order-17")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let res = layer("c").layer(server).oneshot(keyed).await.unwrap();
    assert_eq!(res.status(), 200, "a POST with an idempotency key is");
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_and_malformed_values_ignored() {
    let (seen, server) = scripted(vec![(429, vec![("retry-after", "1")]), (200, vec![])]);
    let start = Instant::now();
    let res = layer("c").layer(server).oneshot(get()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(seen.lock().unwrap().len(), 2);

    let (_, server) = scripted(vec![
        (503, vec![("retry-after", "soon, maybe")]),
        (200, vec![]),
    ]);
    let start = Instant::now();
    let res = layer("c").layer(server).oneshot(get()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(10),
        "the backoff, not the hint"
    );

    let (seen, server) = scripted(vec![(503, vec![("retry-after", "3600")])]);
    let res = layer("c").layer(server).oneshot(get()).await.unwrap();
    assert_eq!(res.status(), 503, "an hour is longer than max_retry_after");
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_no_retry_answer_is_not_retried() {
    let (seen, server) = scripted(vec![(503, vec![(NO_RETRY_HEADER, "1")]), (200, vec![])]);
    let res = layer("c").layer(server).oneshot(get()).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(seen.lock().unwrap().len(), 1);
}

/// A mid-tier server: NoRetryLayer around a handler that calls a downstream through
/// its own retry layer and answers 502 when that fails.
fn mid_tier(
    downstream: impl Service<
        Req,
        Response = Response<Full<Bytes>>,
        Error = Error,
        Future = impl Send + 'static,
    > + Clone
    + Send
    + 'static,
) -> impl Service<Req, Response = Response<Full<Bytes>>, Error = Error> + Clone {
    let client = layer("leaf").layer(downstream);
    NoRetryLayer.layer(tower::service_fn(move |_req: Req| {
        let client = client.clone();
        async move {
            let status = match client.oneshot(get()).await {
                Ok(res) if res.status().is_success() => StatusCode::OK,
                _ => StatusCode::BAD_GATEWAY,
            };
            let mut res = Response::new(Full::new(Bytes::new()));
            *res.status_mut() = status;
            Ok::<_, Error>(res)
        }
    }))
}

#[tokio::test(start_paused = true)]
async fn retries_do_not_multiply_across_hops() {
    // leaf is dead; mid retries it 3 times, then tells edge not to retry.
    let (leaf_seen, leaf) = scripted(vec![(503, vec![])]);
    let mid = mid_tier(leaf);
    let res = layer("mid").layer(mid).oneshot(get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(res.headers()[NO_RETRY_HEADER], "1");
    assert_eq!(leaf_seen.lock().unwrap().len(), 3, "3 attempts, not 3 × 3");

    // Negative control: without the marker the edge retries the mid tier, which
    // retries the leaf each time.
    let (leaf_seen, leaf) = scripted(vec![(503, vec![])]);
    let client = layer("leaf").layer(leaf);
    let unmarked = tower::service_fn(move |_req: Req| {
        let client = client.clone();
        async move {
            let ok = matches!(client.oneshot(get()).await, Ok(r) if r.status().is_success());
            let mut res = Response::new(Full::new(Bytes::new()));
            *res.status_mut() = if ok {
                StatusCode::OK
            } else {
                StatusCode::BAD_GATEWAY
            };
            Ok::<_, Error>(res)
        }
    });
    let _ = layer("mid").layer(unmarked).oneshot(get()).await;
    assert_eq!(leaf_seen.lock().unwrap().len(), 9);
}

#[tokio::test(start_paused = true)]
async fn post_bodies_survive_the_replay() {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let log = bodies.clone();
    let server = tower::service_fn(move |req: Req| {
        let log = log.clone();
        async move {
            use http_body_util::BodyExt;
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let mut log = log.lock().unwrap();
            log.push(body);
            let mut res = Response::new(Full::new(Bytes::new()));
            *res.status_mut() = if log.len() < 2 {
                StatusCode::BAD_GATEWAY
            } else {
                StatusCode::OK
            };
            Ok::<_, Error>(res)
        }
    });
    let put = Request::builder()
        .method(Method::PUT)
        .uri("http://svc/items/1")
        .body(Full::new(Bytes::from_static(b"{\"qty\":2}")))
        .unwrap();
    let res = layer("c").layer(server).oneshot(put).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        *bodies.lock().unwrap(),
        vec![Bytes::from_static(b"{\"qty\":2}"); 2]
    );
}

#[tokio::test(start_paused = true)]
async fn streaming_bodies_are_buffered_when_small_and_streamed_otherwise() {
    use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
    use palisade_retry::{BufferBodyLayer, ReplayBody};

    let bodies = Arc::new(Mutex::new(Vec::new()));
    let log = bodies.clone();
    type Incoming = ReplayBody<BoxBody<Bytes, std::convert::Infallible>>;
    let server = tower::service_fn(move |req: Request<Incoming>| {
        let log = log.clone();
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let mut log = log.lock().unwrap();
            log.push(body);
            let mut res = Response::new(Full::new(Bytes::new()));
            *res.status_mut() = if log.len() % 2 == 1 {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            Ok::<_, Error>(res)
        }
    });
    let client = tower::ServiceBuilder::new()
        .layer(BufferBodyLayer::new(1024))
        .layer(layer("c"))
        .service(server);

    // A body of known, small size is read into memory and sent twice.
    let body = Full::new(Bytes::from_static(b"reserve 2")).boxed();
    let put = Request::put("http://svc/stock").body(body).unwrap();
    let res = client.clone().oneshot(put).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        *bodies.lock().unwrap(),
        vec![Bytes::from_static(b"reserve 2"); 2]
    );

    // A body of unknown size streams through once and is not retried.
    let chunks = futures_util::stream::iter(vec![Ok(http_body::Frame::data(Bytes::from_static(
        b"chunked",
    )))]);
    let put = Request::put("http://svc/stock")
        .body(StreamBody::new(chunks).boxed())
        .unwrap();
    let res = client.oneshot(put).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(bodies.lock().unwrap().len(), 3);
    assert_eq!(bodies.lock().unwrap()[2], Bytes::from_static(b"chunked"));
}
