//! Deadline propagation over HTTP on paused tokio time: inbound header reading and
//! capping, hostile headers, outbound header values and refusals, and a two-hop
//! chain in which the deadline shrinks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::Full;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use palisade_core::{Deadline, Error, RejectionKind};
use palisade_timeout::TimeoutLayer;
use palisade_timeout::deadline::{InboundDeadlineLayer, OutboundDeadlineLayer};
use tokio::time::{Instant, advance};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

const MS: Duration = Duration::from_millis(1);

type Body = Full<Bytes>;

/// Request headers as name and raw value.
type Headers<'a> = &'a [(&'a str, &'a [u8])];

/// The deadline headers a downstream received: `x-palisade-deadline-ms`, `grpc-timeout`.
type Sent = Arc<Mutex<Vec<(Option<HeaderValue>, Option<HeaderValue>)>>>;

/// Counts readiness polls and calls reaching the wrapped service.
#[derive(Clone, Default)]
struct Counts {
    ready: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct Counting<S> {
    inner: S,
    counts: Counts,
}

impl<S: Service<R>, R> Service<R> for Counting<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.counts.ready.fetch_add(1, Ordering::SeqCst);
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> S::Future {
        self.counts.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.call(req)
    }
}

/// What a handler saw: the current deadline and the request's extension.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Seen {
    current: Option<Deadline>,
    extension: Option<Deadline>,
}

fn request(headers: Headers<'_>) -> Request<Body> {
    let mut req = Request::new(Full::new(Bytes::from_static(b"{}")));
    for (name, value) in headers {
        req.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value).unwrap(),
        );
    }
    req
}

/// A handler reporting the deadline it runs under.
fn seeing_handler()
-> impl Service<Request<Body>, Response = Seen, Error = std::io::Error, Future: Send> + Clone {
    tower::service_fn(|req: Request<Body>| async move {
        Ok(Seen {
            current: Deadline::current(),
            extension: req.extensions().get::<Deadline>().copied(),
        })
    })
}

fn inbound(max: Duration, default_timeout: Option<Duration>) -> InboundDeadlineLayer {
    InboundDeadlineLayer::builder("server")
        .max(max)
        .default_timeout(default_timeout)
        .build()
        .unwrap()
}

/// Counters of a snapshot, keyed by name and sorted `k=v` labels.
fn counters(snapshotter: &Snapshotter) -> BTreeMap<(String, String), u64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let key = key.key().clone();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            match value {
                DebugValue::Counter(c) => Some(((key.name().to_owned(), labels.join(",")), c)),
                _ => None,
            }
        })
        .collect()
}

fn kind<T>(result: &Result<T, Error>) -> Option<RejectionKind> {
    result
        .as_ref()
        .err()
        .and_then(|e| e.rejection())
        .map(|r| r.kind())
}

// ---- inbound -------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn inbound_deadline_is_arrival_plus_the_header() {
    let mut server = inbound(Duration::from_secs(10), None).layer(seeing_handler());
    advance(Duration::from_secs(7)).await; // arrival is not time zero
    let cases: &[(Headers<'_>, Duration)] = &[
        (&[("x-palisade-deadline-ms", b"250")], 250 * MS),
        (&[("grpc-timeout", b"2S")], Duration::from_secs(2)),
        (
            &[("grpc-timeout", b"1500000u")],
            Duration::from_millis(1500),
        ),
        // Both: the shorter wins, whichever header carries it.
        (
            &[
                ("grpc-timeout", b"300m"),
                ("x-palisade-deadline-ms", b"400"),
            ],
            300 * MS,
        ),
        (
            &[("grpc-timeout", b"1M"), ("x-palisade-deadline-ms", b"400")],
            400 * MS,
        ),
    ];
    for (headers, left) in cases {
        let arrival = Instant::now();
        let seen = server
            .ready()
            .await
            .unwrap()
            .call(request(headers))
            .await
            .unwrap();
        let expected = Deadline::at(arrival + *left);
        assert_eq!(seen.current, Some(expected), "{headers:?}");
        assert_eq!(seen.extension, Some(expected), "{headers:?}");
        advance(Duration::from_millis(123)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn the_caller_cannot_extend_beyond_max() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || inbound(Duration::from_secs(1), None));
    let mut server = layer.layer(seeing_handler());
    for headers in [
        &[("grpc-timeout", &b"99999999H"[..])][..],
        &[("x-palisade-deadline-ms", b"9999999999")],
        &[("grpc-timeout", b"1001m")],
    ] {
        let arrival = Instant::now();
        let seen = server
            .ready()
            .await
            .unwrap()
            .call(request(headers))
            .await
            .unwrap();
        assert_eq!(
            seen.current,
            Some(Deadline::at(arrival + Duration::from_secs(1)))
        );
    }
    // Exactly max is not capped.
    let arrival = Instant::now();
    let seen = server
        .ready()
        .await
        .unwrap()
        .call(request(&[("grpc-timeout", b"1000m")]))
        .await
        .unwrap();
    assert_eq!(
        seen.current,
        Some(Deadline::at(arrival + Duration::from_secs(1)))
    );
    let seen = counters(&snapshotter);
    assert_eq!(
        seen[&(
            "palisade_deadline_inbound_capped_total".into(),
            "downstream=server".into()
        )],
        3
    );
}

#[tokio::test(start_paused = true)]
async fn requests_without_a_header_get_the_default_or_max() {
    let arrival = Instant::now();
    let mut with_default =
        inbound(Duration::from_secs(10), Some(Duration::from_secs(2))).layer(seeing_handler());
    let seen = with_default
        .ready()
        .await
        .unwrap()
        .call(request(&[]))
        .await
        .unwrap();
    assert_eq!(
        seen.current,
        Some(Deadline::at(arrival + Duration::from_secs(2)))
    );

    let mut without = inbound(Duration::from_secs(10), None).layer(seeing_handler());
    let seen = without
        .ready()
        .await
        .unwrap()
        .call(request(&[]))
        .await
        .unwrap();
    assert_eq!(
        seen.current,
        Some(Deadline::at(arrival + Duration::from_secs(10)))
    );
}

#[tokio::test(start_paused = true)]
async fn an_outer_deadline_is_never_extended() {
    let mut server = inbound(Duration::from_secs(10), None).layer(seeing_handler());
    let outer = Deadline::after(Duration::from_millis(100));
    let seen = outer
        .scope(async {
            server
                .ready()
                .await
                .unwrap()
                .call(request(&[("grpc-timeout", b"5S")]))
                .await
                .unwrap()
        })
        .await;
    assert_eq!(seen.current, Some(outer));
    assert_eq!(seen.extension, Some(outer));
}

#[tokio::test(start_paused = true)]
async fn hostile_headers_are_ignored_and_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        inbound(Duration::from_secs(10), Some(Duration::from_secs(3)))
    });
    let counts = Counts::default();
    let mut server = layer.layer(Counting {
        inner: seeing_handler(),
        counts: counts.clone(),
    });

    let key = |header: &str, reason: &str| {
        (
            "palisade_deadline_header_errors_total".to_owned(),
            format!("downstream=server,header={header},reason={reason}"),
        )
    };
    let zero = counters(&snapshotter);
    for header in ["grpc-timeout", "x-palisade-deadline-ms"] {
        for reason in ["empty", "malformed", "too_large", "duplicate"] {
            assert_eq!(
                zero.get(&key(header, reason)),
                Some(&0),
                "{header} {reason}"
            );
        }
    }
    assert_eq!(zero.get(&key("grpc-timeout", "bad_unit")), Some(&0));
    assert_eq!(zero.get(&key("x-palisade-deadline-ms", "bad_unit")), None);

    let hostile: &[(&str, &[u8], &str)] = &[
        ("grpc-timeout", b"-5m", "malformed"),
        ("grpc-timeout", b"", "empty"),
        ("grpc-timeout", b"garbage!", "malformed"),
        ("grpc-timeout", b"\xff\xfe\xfd", "malformed"),
        ("grpc-timeout", b"5", "bad_unit"),
        ("grpc-timeout", b"5s", "bad_unit"),
        ("grpc-timeout", b"123456789m", "too_large"),
        ("grpc-timeout", b"1.5S", "malformed"),
        ("x-palisade-deadline-ms", b"-1", "malformed"),
        ("x-palisade-deadline-ms", b"", "empty"),
        ("x-palisade-deadline-ms", b"99999999999", "too_large"),
        ("x-palisade-deadline-ms", b"1e9", "malformed"),
        ("x-palisade-deadline-ms", b"\x80\x81", "malformed"),
        (
            "x-palisade-deadline-ms",
            b"18446744073709551616",
            "too_large",
        ),
    ];
    for (header, value, _) in hostile {
        let arrival = Instant::now();
        let seen = server
            .ready()
            .await
            .unwrap()
            .call(request(&[(header, value)]))
            .await
            .unwrap();
        // Treated as absent: the default applies.
        assert_eq!(
            seen.current,
            Some(Deadline::at(arrival + Duration::from_secs(3))),
            "{header}: {value:?}"
        );
    }
    // Given twice, even with valid values: ignored.
    let arrival = Instant::now();
    let seen = server
        .ready()
        .await
        .unwrap()
        .call(request(&[
            ("grpc-timeout", b"10m"),
            ("grpc-timeout", b"20m"),
            ("x-palisade-deadline-ms", b"500"),
        ]))
        .await
        .unwrap();
    assert_eq!(seen.current, Some(Deadline::at(arrival + 500 * MS)));
    assert_eq!(counts.calls.load(Ordering::SeqCst), hostile.len() + 1);

    let mut expected: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (header, _, reason) in hostile {
        *expected.entry(key(header, reason)).or_default() += 1;
    }
    *expected
        .entry(key("grpc-timeout", "duplicate"))
        .or_default() += 1;
    let seen = counters(&snapshotter);
    for (k, v) in &expected {
        assert_eq!(seen.get(k), Some(v), "{k:?}");
    }
    for (k, v) in &seen {
        if k.0 == "palisade_deadline_header_errors_total" {
            assert_eq!(*v, expected.get(k).copied().unwrap_or(0), "{k:?}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_deadline_passed_on_arrival_is_refused_without_calling_the_handler() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || inbound(Duration::from_secs(10), None));
    let counts = Counts::default();
    let mut server = layer.layer(Counting {
        inner: seeing_handler(),
        counts: counts.clone(),
    });
    for headers in [
        &[("grpc-timeout", &b"0m"[..])][..],
        &[("x-palisade-deadline-ms", b"0")],
        &[("grpc-timeout", b"0H"), ("x-palisade-deadline-ms", b"5000")],
    ] {
        let result = server.ready().await.unwrap().call(request(headers)).await;
        assert_eq!(kind(&result), Some(RejectionKind::DeadlineExceeded));
        let rejection = result.unwrap_err().rejection().unwrap().clone();
        assert_eq!(rejection.downstream().unwrap().as_str(), "server");
        let response: http::Response<()> = rejection.to_http_response();
        assert_eq!(response.status(), 504);
    }
    assert_eq!(counts.calls.load(Ordering::SeqCst), 0);
    let seen = counters(&snapshotter);
    assert_eq!(
        seen[&(
            "palisade_deadline_inbound_refusals_total".into(),
            "downstream=server".into()
        )],
        3
    );
}

#[tokio::test(start_paused = true)]
async fn layers_under_the_inbound_layer_see_the_deadline_in_call() {
    // The timeout under the inbound layer reads Deadline::current() in its `call`:
    // the 1 s deadline, not its own 10 s, cuts the slow handler off.
    let mut server = ServiceBuilder::new()
        .layer(inbound(Duration::from_secs(1), None))
        .layer(TimeoutLayer::new("handler", Duration::from_secs(10)).unwrap())
        .service_fn(|_req: Request<Body>| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, std::io::Error>(())
        });
    let start = Instant::now();
    let result = server.ready().await.unwrap().call(request(&[])).await;
    assert_eq!(kind(&result), Some(RejectionKind::DeadlineExceeded));
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

#[test]
fn inbound_settings_are_validated() {
    let field = |b: palisade_timeout::deadline::InboundDeadlineBuilder| {
        b.build().unwrap_err().field().to_owned()
    };
    assert_eq!(field(InboundDeadlineLayer::builder("s")), "max");
    assert_eq!(
        field(InboundDeadlineLayer::builder("s").max(Duration::ZERO)),
        "max"
    );
    assert_eq!(
        field(InboundDeadlineLayer::builder("s o").max(Duration::from_secs(1))),
        "name"
    );
    assert_eq!(
        field(
            InboundDeadlineLayer::builder("s")
                .max(Duration::from_secs(1))
                .default_timeout(Some(Duration::ZERO))
        ),
        "default_timeout"
    );
}

// ---- outbound ------------------------------------------------------------------

/// A downstream recording the deadline headers it receives.
fn recording_client(
    sent: Sent,
) -> impl Service<Request<Body>, Response = (), Error = std::io::Error, Future: Send> + Clone {
    tower::service_fn(move |req: Request<Body>| {
        sent.lock().unwrap().push((
            req.headers().get("x-palisade-deadline-ms").cloned(),
            req.headers().get("grpc-timeout").cloned(),
        ));
        async { Ok(()) }
    })
}

fn outbound() -> OutboundDeadlineLayer {
    OutboundDeadlineLayer::builder("customer").build().unwrap()
}

#[tokio::test(start_paused = true)]
async fn outbound_headers_carry_the_time_left_minus_the_margin() {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let mut client = outbound().layer(recording_client(Arc::clone(&sent)));

    // From the current deadline, after some time has passed.
    Deadline::after(Duration::from_millis(300))
        .scope(async {
            advance(Duration::from_millis(40)).await;
            client.ready().await?.call(request(&[])).await
        })
        .await
        .unwrap();
    // From the request's extension only.
    let mut req = request(&[]);
    req.extensions_mut()
        .insert(Deadline::after(Duration::from_millis(1234)));
    client.ready().await.unwrap().call(req).await.unwrap();
    // Both: the earlier wins (here the extension).
    Deadline::after(Duration::from_secs(5))
        .scope(async {
            let mut req = request(&[]);
            req.extensions_mut()
                .insert(Deadline::after(Duration::from_millis(700)));
            client.ready().await?.call(req).await
        })
        .await
        .unwrap();
    // Stale headers on a forwarded request are replaced.
    Deadline::after(Duration::from_millis(100))
        .scope(async {
            let req = request(&[("grpc-timeout", b"1H"), ("x-palisade-deadline-ms", b"9")]);
            client.ready().await?.call(req).await
        })
        .await
        .unwrap();

    let v = |s: &'static str| Some(HeaderValue::from_static(s));
    assert_eq!(
        *sent.lock().unwrap(),
        vec![
            (v("255"), v("255m")),
            (v("1229"), v("1229m")),
            (v("695"), v("695m")),
            (v("95"), v("95m")),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn without_a_deadline_requests_pass_untouched() {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let mut client = outbound().layer(recording_client(Arc::clone(&sent)));
    client
        .ready()
        .await
        .unwrap()
        .call(request(&[]))
        .await
        .unwrap();
    let req = request(&[("grpc-timeout", b"1S")]);
    client.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(
        *sent.lock().unwrap(),
        vec![(None, None), (None, Some(HeaderValue::from_static("1S")))]
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_with_less_than_min_remaining_is_refused_unsent() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, outbound);
    let refusals = (
        "palisade_deadline_outbound_refusals_total".to_owned(),
        "downstream=customer".to_owned(),
    );
    assert_eq!(counters(&snapshotter)[&refusals], 0);
    let sent = Arc::new(Mutex::new(Vec::new()));
    let counts = Counts::default();
    let mut client = layer.layer(Counting {
        inner: recording_client(Arc::clone(&sent)),
        counts: counts.clone(),
    });

    // 9 ms left in the current deadline: decided in poll_ready, the inner service is
    // neither made ready nor called.
    let result = Deadline::after(9 * MS)
        .scope(async { client.ready().await?.call(request(&[])).await })
        .await;
    assert_eq!(kind(&result), Some(RejectionKind::DeadlineExceeded));
    assert_eq!(counts.ready.load(Ordering::SeqCst), 0);
    assert_eq!(counts.calls.load(Ordering::SeqCst), 0);

    // 9 ms left in the request's extension: refused in call, never sent.
    let mut req = request(&[]);
    req.extensions_mut().insert(Deadline::after(9 * MS));
    let result = client.ready().await.unwrap().call(req).await;
    assert_eq!(kind(&result), Some(RejectionKind::DeadlineExceeded));
    assert_eq!(counts.calls.load(Ordering::SeqCst), 0);

    // A passed deadline too.
    let passed = Deadline::after(MS);
    advance(Duration::from_secs(1)).await;
    let result = passed
        .scope(async { client.ready().await?.call(request(&[])).await })
        .await;
    assert_eq!(kind(&result), Some(RejectionKind::DeadlineExceeded));
    assert_eq!(counts.calls.load(Ordering::SeqCst), 0);
    assert!(sent.lock().unwrap().is_empty());

    // Exactly min_remaining is enough.
    Deadline::after(10 * MS)
        .scope(async { client.ready().await?.call(request(&[])).await })
        .await
        .unwrap();
    assert_eq!(counts.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        *sent.lock().unwrap(),
        vec![(
            Some(HeaderValue::from_static("5")),
            Some(HeaderValue::from_static("5m"))
        )]
    );
    assert_eq!(counters(&snapshotter)[&refusals], 3);
}

#[tokio::test(start_paused = true)]
async fn an_outbound_call_is_cut_off_at_the_deadline() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, outbound);
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&dropped);
    let mut client = layer.layer(tower::service_fn(move |_req: Request<Body>| {
        let flag = Arc::clone(&flag);
        async move {
            struct Guard(Arc<AtomicBool>);
            impl Drop for Guard {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
            let _guard = Guard(flag);
            std::future::pending::<()>().await;
            Ok::<_, std::io::Error>(())
        }
    }));
    let start = Instant::now();
    let result = Deadline::after(Duration::from_millis(200))
        .scope(async { client.ready().await?.call(request(&[])).await })
        .await;
    assert_eq!(kind(&result), Some(RejectionKind::DeadlineExceeded));
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    assert!(dropped.load(Ordering::SeqCst));
    assert_eq!(
        counters(&snapshotter)[&(
            "palisade_deadline_outbound_expired_total".to_owned(),
            "downstream=customer".to_owned()
        )],
        1
    );
}

#[test]
fn outbound_settings_are_validated() {
    let err = OutboundDeadlineLayer::builder("c")
        .margin(10 * MS)
        .min_remaining(10 * MS)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "min_remaining");
    let err = OutboundDeadlineLayer::builder("").build().unwrap_err();
    assert_eq!(err.field(), "name");
    let layer = OutboundDeadlineLayer::builder("c")
        .margin(Duration::ZERO)
        .min_remaining(MS)
        .build()
        .unwrap();
    assert_eq!(
        (layer.margin(), layer.min_remaining()),
        (Duration::ZERO, MS)
    );
}

// ---- across a hop --------------------------------------------------------------

/// What the second server's handler saw.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Hop {
    arrived: Instant,
    header_ms: u64,
    deadline: Deadline,
    remaining: Duration,
}

#[tokio::test(start_paused = true)]
async fn the_deadline_shrinks_across_a_hop() {
    const NETWORK: Duration = Duration::from_millis(3);

    // Server B: reports what it was given.
    let server_b = ServiceBuilder::new()
        .layer(inbound(Duration::from_secs(10), None))
        .service_fn(|req: Request<Body>| async move {
            let header_ms = req.headers()["x-palisade-deadline-ms"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            let deadline = Deadline::current().unwrap();
            Ok::<_, std::io::Error>(Hop {
                arrived: Instant::now(),
                header_ms,
                deadline,
                remaining: deadline.remaining(),
            })
        });
    // The network: 3 ms each way, and B runs in its own task, as in its own process
    // (task-locals do not cross, only the headers do).
    let network = tower::service_fn(move |req: Request<Body>| {
        let server_b = server_b.clone();
        async move {
            tokio::time::sleep(NETWORK).await;
            let hop = tokio::spawn(server_b.oneshot(req)).await.unwrap();
            tokio::time::sleep(NETWORK).await;
            hop
        }
    });
    // Server A: a handler that works 100 ms, then calls B through the outbound layer.
    let client = ServiceBuilder::new().layer(outbound()).service(network);
    let server_a = ServiceBuilder::new()
        .layer(inbound(Duration::from_secs(1), None))
        .service_fn(move |_req: Request<Body>| {
            let client = client.clone();
            async move {
                let at_a = Deadline::current().unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
                let hop = client.oneshot(request(&[])).await?;
                Ok::<_, Error>((at_a, hop))
            }
        });

    let start = Instant::now();
    let (at_a, hop) = server_a
        .oneshot(request(&[("grpc-timeout", b"800m")]))
        .await
        .unwrap();
    assert_eq!(at_a, Deadline::at(start + Duration::from_millis(800)));
    // Sent at 100 ms: 700 ms left, minus the 5 ms margin.
    assert_eq!(hop.header_ms, 695);
    assert_eq!(hop.arrived, start + Duration::from_millis(103));
    assert_eq!(hop.remaining, Duration::from_millis(695));
    // B's deadline falls 2 ms before A's: the margin covered the 3 ms of network.
    assert_eq!(
        hop.deadline,
        Deadline::at(start + Duration::from_millis(798))
    );
    assert!(hop.deadline < at_a);
}

/// A call answered at once makes no timer: polled by hand, outside any runtime
/// (where making a tokio timer would panic), the bounded call comes through with
/// its header set.
#[test]
fn an_outbound_call_answered_at_once_makes_no_timer() {
    use std::future::Future;
    use std::task::Waker;

    let sent = Arc::new(Mutex::new(Vec::new()));
    let mut client = outbound().layer(recording_client(Arc::clone(&sent)));
    let mut req = request(&[]);
    req.extensions_mut()
        .insert(Deadline::after(Duration::from_millis(500)));
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(client.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let mut fut = std::pin::pin!(client.call(req));
    assert!(matches!(fut.as_mut().poll(&mut cx), Poll::Ready(Ok(()))));
    assert!(sent.lock().unwrap()[0].0.is_some());
}
