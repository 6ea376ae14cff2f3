//! A `Downstream` in front of a real hyper client talking to a real axum server over
//! loopback: the cooperation rules hold end to end, each with its negative control.
//! Real time (sockets are involved), so the waits are short.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use palisade::Downstream;
use palisade::breaker::BreakerConfig;
use palisade::core::{Deadline, RejectionKind};
use palisade::retry::{Backoff, RetryConfig, Strategy};
use tower::{Layer, Service, ServiceExt};

#[derive(Clone, Default)]
struct Counts {
    flaky: Arc<AtomicU32>,
    ok: Arc<AtomicU32>,
    slow: Arc<AtomicU32>,
}

async fn server() -> (String, Counts) {
    let counts = Counts::default();
    let app = axum::Router::new()
        // Fails the first call of every pair, answers the second.
        .route(
            "/flaky",
            get(|State(c): State<Counts>| async move {
                if c.flaky.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
                    (StatusCode::SERVICE_UNAVAILABLE, "busy".to_owned())
                } else {
                    (StatusCode::OK, "ok".to_owned())
                }
            }),
        )
        // Counts and answers; echoes the deadline header it received.
        .route(
            "/ok",
            get(|State(c): State<Counts>, headers: HeaderMap| async move {
                c.ok.fetch_add(1, Ordering::SeqCst);
                headers
                    .get("x-palisade-deadline-ms")
                    .map(|v| v.to_str().unwrap_or("bad").to_owned())
                    .unwrap_or_else(|| "none".to_owned())
            }),
        )
        // Hangs on the first call, answers the next ones at once.
        .route(
            "/slow-once",
            get(|State(c): State<Counts>| async move {
                if c.slow.fetch_add(1, Ordering::SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
                "done"
            }),
        )
        .with_state(counts.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), counts)
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn get_req(base: &str, path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(format!("{base}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn quick_retry() -> RetryConfig {
    RetryConfig {
        max_attempts: 3,
        backoff: Backoff {
            strategy: Strategy::Constant,
            base: Duration::from_millis(10),
            max: Duration::from_millis(10),
            ..Backoff::default()
        },
        ..RetryConfig::default()
    }
}

#[tokio::test]
async fn a_503_is_retried_and_an_open_circuit_never_is() {
    let (base, counts) = server().await;
    let stack = Downstream::builder("e2e-retry")
        .http()
        .retry(quick_retry())
        .breaker(BreakerConfig::default())
        .build()
        .unwrap();
    let handle = stack.handle();
    let mut svc = stack.layer(client());

    let res = svc
        .ready()
        .await
        .unwrap()
        .call(get_req(&base, "/flaky"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the retry got past the 503");
    assert_eq!(counts.flaky.load(Ordering::SeqCst), 2);

    handle.breaker().unwrap().force_open();
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(get_req(&base, "/flaky"))
        .await
        .unwrap_err();
    assert_eq!(
        err.rejection().map(|r| r.kind()),
        Some(RejectionKind::CircuitOpen)
    );
    assert_eq!(
        counts.flaky.load(Ordering::SeqCst),
        2,
        "nothing reached the server"
    );

    // Negative control: closed again, the request goes out.
    handle.breaker().unwrap().reset();
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(get_req(&base, "/flaky"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        counts.flaky.load(Ordering::SeqCst),
        4,
        "a 503 and its retry reached the server"
    );
}

#[tokio::test]
async fn the_deadline_travels_to_the_server_and_a_late_attempt_is_not_sent() {
    let (base, counts) = server().await;
    let stack = Downstream::builder("e2e-deadline")
        .http()
        .total_timeout(Duration::from_secs(2))
        .min_remaining(Duration::from_millis(20))
        .build()
        .unwrap();
    let mut svc = stack.layer(client());

    let res = svc
        .ready()
        .await
        .unwrap()
        .call(get_req(&base, "/ok"))
        .await
        .unwrap();
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let sent: u64 = std::str::from_utf8(&body)
        .unwrap()
        .parse()
        .expect("a deadline header");
    assert!(
        (1000..=2000).contains(&sent),
        "the server was told {sent} ms were left"
    );

    // A caller with 10 ms left: refused before sending.
    let err = Deadline::after(Duration::from_millis(10))
        .scope(async { svc.ready().await?.call(get_req(&base, "/ok")).await })
        .await
        .unwrap_err();
    assert_eq!(
        err.rejection().map(|r| r.kind()),
        Some(RejectionKind::DeadlineExceeded)
    );
    assert_eq!(
        counts.ok.load(Ordering::SeqCst),
        1,
        "the late attempt was not sent"
    );

    // Negative control: with 300 ms left it is sent, and the header says so.
    let res = Deadline::after(Duration::from_millis(300))
        .scope(async { svc.ready().await?.call(get_req(&base, "/ok")).await })
        .await
        .unwrap();
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let sent: u64 = std::str::from_utf8(&body).unwrap().parse().unwrap();
    assert!(sent <= 300, "the caller's nearer deadline won: {sent}");
    assert_eq!(counts.ok.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_hung_attempt_is_cut_by_the_per_try_timeout_and_retried() {
    let (base, counts) = server().await;
    let stack = Downstream::builder("e2e-timeout")
        .http()
        .total_timeout(Duration::from_secs(10))
        .retry(quick_retry())
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut svc = stack.layer(client());
    let start = tokio::time::Instant::now();
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(get_req(&base, "/slow-once"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(counts.slow.load(Ordering::SeqCst), 2);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "did not wait for the hung attempt"
    );

    // Negative control: without the per-try timeout the total timeout ends the call.
    let (base, _) = server().await;
    let stack = Downstream::builder("e2e-no-try-timeout")
        .http()
        .total_timeout(Duration::from_millis(400))
        .retry(quick_retry())
        .build()
        .unwrap();
    let mut svc = stack.layer(client());
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(get_req(&base, "/slow-once"))
        .await
        .unwrap_err();
    assert_eq!(
        err.rejection().map(|r| r.kind()),
        Some(RejectionKind::DeadlineExceeded)
    );
}

/// A request body that arrives when the test sends it, its length known up front.
struct SlowBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    len: u64,
}

impl hyper::body::Body for SlowBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(hyper::body::Frame::data(b))))
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.len)
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_upload_being_buffered_holds_no_bulkhead_permit() {
    let bulkhead = palisade::limit::bulkhead::BulkheadLayer::builder("upload")
        .max_concurrent(1)
        .without_metrics()
        .build()
        .unwrap();
    let permits = bulkhead.handle();
    let svc = tower::ServiceBuilder::new()
        .layer(palisade::retry::BufferBodyLayer::new(1024))
        .layer(bulkhead)
        .service(tower::service_fn(
            |_: http::Request<palisade::retry::ReplayBody<SlowBody>>| async {
                Ok::<_, std::io::Error>(http::Response::new(()))
            },
        ));
    let body = |bytes: Option<&'static [u8]>| {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        if let Some(b) = bytes {
            tx.try_send(Bytes::from_static(b)).unwrap();
            drop(tx);
            (None, SlowBody { rx, len: 5 })
        } else {
            (Some(tx), SlowBody { rx, len: 5 })
        }
    };
    // A client uploading slowly: its body is being read.
    let (upload, slow_body) = body(None);
    let slow = tokio::spawn(svc.clone().oneshot(http::Request::new(slow_body)));
    tokio::task::yield_now().await;
    assert_eq!(permits.in_flight(), 0, "no permit while the body is read");
    // Meanwhile another request gets the only permit.
    let (_, quick_body) = body(Some(b"hello"));
    svc.clone()
        .oneshot(http::Request::new(quick_body))
        .await
        .unwrap();
    // The upload completes and is sent.
    let upload = upload.unwrap();
    upload.send(Bytes::from_static(b"hello")).await.unwrap();
    drop(upload);
    slow.await.unwrap().unwrap();
    assert_eq!(permits.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_body_longer_than_its_size_hint_is_not_read_past_the_bound() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let mut svc = tower::ServiceBuilder::new()
        .layer(palisade::retry::BufferBodyLayer::new(8))
        .service(tower::service_fn(
            move |_: http::Request<palisade::retry::ReplayBody<SlowBody>>| {
                seen.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, std::io::Error>(http::Response::new(())) }
            },
        ));
    // Says 5 bytes, sends 64: reading stops at the 8-byte bound and the call fails.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.try_send(Bytes::from(vec![b'x'; 64])).unwrap();
    drop(tx);
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(SlowBody { rx, len: 5 }))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("length limit exceeded"), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing was sent");
}
