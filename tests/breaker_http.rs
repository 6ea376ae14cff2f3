//! End-to-end tests of the circuit breaker around a real hyper client talking to a
//! real (wiremock) HTTP server over real sockets: 5xx responses and transport errors
//! open the breaker, 4xx responses are ignored, an open breaker fails fast without
//! touching the network, and successful probes close it again.
//!
//! These tests run on real time (sockets are involved), so the open wait is short.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use palisade::breaker::{BreakerHandle, CircuitBreaker, CircuitBreakerLayer, State};
use palisade::{HttpClassifier, RejectionKind};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// How long the breaker stays open after a trip (no jitter, no backoff): long
/// enough that a slow machine finishes the checks made while it is open.
const WAIT_IN_OPEN: Duration = Duration::from_secs(2);

type HttpClient = Client<HttpConnector, Empty<Bytes>>;
type Guarded = CircuitBreaker<HttpClient, HttpClassifier>;

/// A hyper client behind a breaker with the settings every test here uses, and the
/// breaker's handle.
fn guarded_client(name: &str) -> (Guarded, BreakerHandle) {
    let breaker = CircuitBreakerLayer::builder(name)
        .classify(HttpClassifier)
        .count_window(10)
        .minimum_calls(5)
        .failure_rate_threshold(0.5)
        .wait_in_open(WAIT_IN_OPEN)
        .wait_jitter(0.0)
        .half_open_probes(1)
        .half_open_successes(2)
        .build()
        .expect("valid breaker settings");
    let handle = breaker.handle();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let svc = ServiceBuilder::new().layer(breaker).service(client);
    (svc, handle)
}

/// Sends `GET uri` through the breaker; on a response, reads its body to the end (so
/// the connection goes back to the pool) and returns the status.
async fn get(svc: &mut Guarded, uri: &str) -> Result<StatusCode, palisade::Error> {
    let request = Request::get(uri)
        .body(Empty::<Bytes>::new())
        .expect("valid request");
    let response = svc.ready().await?.call(request).await?;
    let status = response.status();
    response
        .into_body()
        .collect()
        .await
        .expect("read the response body");
    Ok(status)
}

/// How many requests the server has received since it started or was last reset,
/// checking that each was the `GET` of `expected_path`.
async fn received(server: &MockServer, expected_path: &str) -> usize {
    let requests = server
        .received_requests()
        .await
        .expect("request recording is on");
    for r in &requests {
        assert_eq!(r.method.as_str(), "GET");
        assert_eq!(r.url.path(), expected_path);
    }
    requests.len()
}

/// The rejection of a call refused by the open breaker, with its retry-after hint.
fn circuit_open_retry_after(err: &palisade::Error, downstream: &str) -> Duration {
    let rejection = err
        .rejection()
        .unwrap_or_else(|| panic!("expected a CircuitOpen rejection, got {err}"));
    assert_eq!(rejection.kind(), RejectionKind::CircuitOpen);
    assert_eq!(
        rejection.downstream().map(|n| n.to_string()),
        Some(downstream.to_owned())
    );
    assert!(err.inner().is_none());
    rejection
        .retry_after()
        .expect("an open breaker says when to retry")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_open_the_breaker_which_fails_fast_then_recovers() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/items"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    let uri = format!("{}/items", server.uri());
    let (mut svc, handle) = guarded_client("items");
    assert_eq!(handle.state(), State::Closed);

    // 1. Every call fails with a 500: the breaker opens once the window holds the
    //    minimum of 5 calls, and not before.
    let mut sent_fifth = Instant::now();
    for i in 1..=5 {
        if i == 5 {
            sent_fifth = Instant::now();
        }
        let status = get(&mut svc, &uri)
            .await
            .unwrap_or_else(|e| panic!("call {i} should reach the server, got {e}"));
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "call {i}");
        let expected = if i < 5 { State::Closed } else { State::Open };
        assert_eq!(handle.state(), expected, "state after call {i}");
    }
    let opened_seen = Instant::now();
    assert_eq!(received(&server, "/items").await, 5);
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.state, State::Open);
    assert_eq!(snapshot.window.calls, 5);
    assert_eq!(snapshot.window.failures, 5);
    assert_eq!(snapshot.failure_rate, 1.0);
    assert_eq!(snapshot.consecutive_trips, 1);

    // 2. While open, calls fail fast with a CircuitOpen rejection that says how long
    //    is left of the open wait, and no request reaches the server.
    let mut previous = WAIT_IN_OPEN;
    for i in 1..=3 {
        let before = Instant::now();
        let err = get(&mut svc, &uri)
            .await
            .expect_err("an open breaker refuses the call");
        let after = Instant::now();
        assert!(
            after.duration_since(sent_fifth) < WAIT_IN_OPEN,
            "the test machine is too slow: the open wait may have ended during the test"
        );
        let retry_after = circuit_open_retry_after(&err, "items");
        // The breaker opened between `sent_fifth` and `opened_seen`; it refused the
        // call between `before` and `after`.
        assert!(retry_after > Duration::ZERO, "refusal {i}: {retry_after:?}");
        assert!(retry_after <= WAIT_IN_OPEN, "refusal {i}: {retry_after:?}");
        assert!(
            retry_after <= WAIT_IN_OPEN - before.duration_since(opened_seen),
            "refusal {i}: {retry_after:?}"
        );
        assert!(
            retry_after >= WAIT_IN_OPEN - after.duration_since(sent_fifth),
            "refusal {i}: {retry_after:?}"
        );
        assert!(retry_after <= previous, "the hint counts down");
        previous = retry_after;
        assert_eq!(handle.state(), State::Open);
    }
    assert_eq!(
        received(&server, "/items").await,
        5,
        "refused calls must not reach the server"
    );

    // 4. The server recovers. Once the open wait is over the breaker is half-open
    //    and lets one probe at a time through; two successful probes close it.
    server.reset().await;
    Mock::given(method("GET"))
        .and(path("/items"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    tokio::time::sleep_until(opened_seen + WAIT_IN_OPEN + Duration::from_millis(50)).await;
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(handle.snapshot().probes, Some((0, 0)));

    let status = get(&mut svc, &uri).await.expect("first probe goes through");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(handle.state(), State::HalfOpen, "one success is not enough");
    assert_eq!(handle.snapshot().probes, Some((0, 1)));

    let status = get(&mut svc, &uri)
        .await
        .expect("second probe goes through");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(handle.state(), State::Closed, "two successes close it");
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.window.calls, 0, "closing starts a fresh window");
    assert_eq!(snapshot.consecutive_trips, 0);
    assert_eq!(received(&server, "/items").await, 2);

    // Closed again: calls flow freely.
    for _ in 0..3 {
        assert_eq!(get(&mut svc, &uri).await.unwrap(), StatusCode::OK);
    }
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(received(&server, "/items").await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_ignored() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/missing"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/broken"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    let missing = format!("{}/missing", server.uri());
    let broken = format!("{}/broken", server.uri());
    let (mut svc, handle) = guarded_client("catalog");

    // 3. Twenty 404s: the caller's mistakes say nothing about the server's health.
    for i in 1..=20 {
        let status = get(&mut svc, &missing)
            .await
            .unwrap_or_else(|e| panic!("call {i} should reach the server, got {e}"));
        assert_eq!(status, StatusCode::NOT_FOUND, "call {i}");
        assert_eq!(handle.state(), State::Closed, "state after call {i}");
    }
    assert_eq!(received(&server, "/missing").await, 20);
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.window.calls, 0, "ignored calls are not recorded");
    assert_eq!(snapshot.failure_rate, 0.0);

    // Ignored calls neither count towards the minimum nor dilute the failure rate:
    // four 500s between 404s stay under the minimum of 5 calls, the fifth opens.
    for i in 1..=4 {
        assert_eq!(
            get(&mut svc, &broken).await.unwrap(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            get(&mut svc, &missing).await.unwrap(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(handle.state(), State::Closed, "after {i} server errors");
    }
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.window.calls, 4);
    assert_eq!(snapshot.window.failures, 4);
    assert_eq!(
        get(&mut svc, &broken).await.unwrap(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(handle.state(), State::Open);

    let err = get(&mut svc, &missing)
        .await
        .expect_err("an open breaker refuses the call");
    let retry_after = circuit_open_retry_after(&err, "catalog");
    assert!(retry_after > Duration::ZERO && retry_after <= WAIT_IN_OPEN);
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 20 + 4 + 4 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_errors_open_the_breaker() {
    // 5. A port nobody listens on: bind one, note it, and close it again.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let uri = format!("http://127.0.0.1:{port}/items");
    let (mut svc, handle) = guarded_client("nowhere");

    for i in 1..=5 {
        let err = get(&mut svc, &uri)
            .await
            .expect_err("nothing listens on the port");
        assert!(
            !err.is_rejection(),
            "call {i} must reach the client, got {err}"
        );
        let inner = err.inner().expect("the client's own error");
        let client_error = inner
            .downcast_ref::<hyper_util::client::legacy::Error>()
            .unwrap_or_else(|| panic!("call {i}: expected a hyper client error, got {inner}"));
        assert!(
            client_error.is_connect(),
            "call {i}: expected a connect error, got {client_error:?}"
        );
        let expected = if i < 5 { State::Closed } else { State::Open };
        assert_eq!(handle.state(), expected, "state after call {i}");
    }
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.window.calls, 5);
    assert_eq!(snapshot.window.failures, 5);

    let err = get(&mut svc, &uri)
        .await
        .expect_err("an open breaker refuses the call");
    let retry_after = circuit_open_retry_after(&err, "nowhere");
    assert!(retry_after > Duration::ZERO && retry_after <= WAIT_IN_OPEN);
    assert_eq!(handle.state(), State::Open);
}
