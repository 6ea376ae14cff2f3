//! The fault layer on paused time: percentages, matching, runtime changes, header
//! faults, aborts and metrics.

use std::convert::Infallible;
use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use palisade_core::{BoxError, Error};
use palisade_fault::{
    AbortFault, AbortKind, ErrorFault, FAULT_HEADER, FaultConfig, FaultLayer, LatencyFault,
    RequestMatch,
};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

type Request = http::Request<String>;
type Response = http::Response<String>;

/// An HTTP service that answers 200 and counts the requests that reach it, and
/// remembers the fault header of the last one.
#[derive(Clone, Default)]
struct Backend {
    calls: Arc<AtomicUsize>,
    saw_fault_header: Arc<AtomicUsize>,
}

impl Backend {
    fn service(
        &self,
    ) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send> + Clone + use<>
    {
        let calls = Arc::clone(&self.calls);
        let saw = Arc::clone(&self.saw_fault_header);
        tower::service_fn(move |req: Request| {
            let calls = Arc::clone(&calls);
            let saw = Arc::clone(&saw);
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                if req.headers().contains_key(FAULT_HEADER) {
                    saw.fetch_add(1, Ordering::SeqCst);
                }
                Ok::<_, Infallible>(http::Response::new(String::from("ok")))
            }
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn get(path: &str) -> Request {
    http::Request::builder()
        .method("GET")
        .uri(path)
        .body(String::new())
        .unwrap()
}

fn post(path: &str) -> Request {
    http::Request::builder()
        .method("POST")
        .uri(path)
        .body(String::new())
        .unwrap()
}

/// What happened to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Ok,
    Status(u16),
    Io(ErrorKind),
}

async fn send<S>(svc: &mut S, req: Request) -> (Seen, Duration)
where
    S: Service<Request, Response = Response, Error = Error>,
{
    let started = Instant::now();
    let result = svc.ready().await.unwrap().call(req).await;
    let seen = match result {
        Ok(r) if r.status() == 200 => Seen::Ok,
        Ok(r) => Seen::Status(r.status().as_u16()),
        Err(e) => Seen::Io(
            e.inner()
                .and_then(|e| e.downcast_ref::<std::io::Error>())
                .map(|e| e.kind())
                .expect("an injected io error"),
        ),
    };
    (seen, started.elapsed())
}

#[tokio::test(start_paused = true)]
async fn percentages_hold_over_many_calls() {
    let backend = Backend::default();
    let layer = FaultLayer::http("inventory")
        .unwrap()
        .seed(11)
        .with_config(FaultConfig {
            latency: Some(LatencyFault::fixed(30.0, Duration::from_millis(100))),
            error: Some(ErrorFault::new(20.0, 503)),
            abort: Some(AbortFault::new(10.0, AbortKind::Reset)),
            matching: None,
        })
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(backend.service());
    let (mut ok, mut errors, mut aborts, mut delayed) = (0, 0, 0, 0);
    for _ in 0..5000 {
        let (seen, took) = send(&mut svc, get("/stock")).await;
        match seen {
            Seen::Ok => ok += 1,
            Seen::Status(503) => errors += 1,
            Seen::Io(ErrorKind::ConnectionReset) => aborts += 1,
            other => panic!("unexpected {other:?}"),
        }
        if took == Duration::from_millis(100) {
            delayed += 1;
        } else {
            assert_eq!(took, Duration::ZERO);
        }
    }
    // 5000 draws: the binomial standard deviation is at most ~35, so ±150 is over 4σ.
    assert!((850..=1150).contains(&errors), "errors {errors}");
    assert!((350..=650).contains(&aborts), "aborts {aborts}");
    assert!((1350..=1650).contains(&delayed), "delayed {delayed}");
    assert_eq!(ok + errors + aborts, 5000);
    assert_eq!(backend.calls(), ok, "failed calls never reach the service");
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_injects_the_same_faults() {
    async fn run(seed: u64) -> Vec<Seen> {
        let layer = FaultLayer::http("inventory")
            .unwrap()
            .seed(seed)
            .with_config(FaultConfig {
                error: Some(ErrorFault::new(50.0, 500)),
                ..FaultConfig::default()
            })
            .unwrap();
        let mut svc = layer.layer_service(Backend::default().service());
        let mut seen = Vec::new();
        for _ in 0..64 {
            seen.push(send(&mut svc, get("/")).await.0);
        }
        seen
    }
    let a = run(3).await;
    assert_eq!(a, run(3).await);
    assert_ne!(a, run(4).await);
    assert!(a.contains(&Seen::Ok) && a.contains(&Seen::Status(500)));
}

trait LayerService {
    fn layer_service<S>(&self, inner: S) -> palisade_fault::Fault<S>;
}

impl LayerService for FaultLayer {
    fn layer_service<S>(&self, inner: S) -> palisade_fault::Fault<S> {
        tower::Layer::layer(self, inner)
    }
}

#[tokio::test(start_paused = true)]
async fn uniform_latency_stays_in_its_range() {
    let layer = FaultLayer::http("payment")
        .unwrap()
        .seed(5)
        .with_config(FaultConfig {
            latency: Some(LatencyFault::uniform(
                100.0,
                Duration::from_millis(50),
                Duration::from_millis(250),
            )),
            ..FaultConfig::default()
        })
        .unwrap();
    let mut svc = layer.layer_service(Backend::default().service());
    let mut took = Vec::new();
    for _ in 0..400 {
        let (seen, t) = send(&mut svc, get("/")).await;
        assert_eq!(seen, Seen::Ok);
        took.push(t);
    }
    let min = *took.iter().min().unwrap();
    let max = *took.iter().max().unwrap();
    assert!(min >= Duration::from_millis(50), "{min:?}");
    assert!(max <= Duration::from_millis(250), "{max:?}");
    assert!(
        max - min > Duration::from_millis(150),
        "delays spread: {min:?}..{max:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_request_is_sent_after_the_delay() {
    let reached_at = Arc::new(std::sync::Mutex::new(None));
    let seen = Arc::clone(&reached_at);
    let layer = FaultLayer::http("payment")
        .unwrap()
        .with_config(FaultConfig {
            latency: Some(LatencyFault::fixed(100.0, Duration::from_secs(2))),
            ..FaultConfig::default()
        })
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |_req: Request| {
            let seen = Arc::clone(&seen);
            async move {
                *seen.lock().unwrap() = Some(Instant::now());
                Ok::<_, Infallible>(http::Response::new(String::new()))
            }
        });
    let started = Instant::now();
    let (result, took) = send(&mut svc, get("/pay")).await;
    assert_eq!(result, Seen::Ok);
    assert_eq!(took, Duration::from_secs(2));
    assert_eq!(
        reached_at.lock().unwrap().unwrap() - started,
        Duration::from_secs(2)
    );
}

#[tokio::test(start_paused = true)]
async fn only_matching_requests_get_faults() {
    let backend = Backend::default();
    let layer = FaultLayer::http("inventory")
        .unwrap()
        .matching(|req: &Request| req.uri().path() != "/reserve/health")
        .with_config(FaultConfig {
            error: Some(ErrorFault::new(100.0, 503)),
            matching: Some(RequestMatch {
                method: Some("POST".into()),
                path_prefix: Some("/reserve".into()),
                header: None,
            }),
            ..FaultConfig::default()
        })
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(backend.service());
    assert_eq!(
        send(&mut svc, post("/reserve/7")).await.0,
        Seen::Status(503)
    );
    assert_eq!(send(&mut svc, get("/reserve/7")).await.0, Seen::Ok);
    assert_eq!(send(&mut svc, post("/release/7")).await.0, Seen::Ok);
    assert_eq!(
        send(&mut svc, post("/reserve/health")).await.0,
        Seen::Ok,
        "the layer's predicate excludes it"
    );
    assert_eq!(backend.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn faults_change_at_runtime_for_every_clone() {
    let backend = Backend::default();
    let layer = FaultLayer::http("customer").unwrap();
    let handle = layer.handle();
    let mut a = ServiceBuilder::new()
        .layer(layer)
        .service(backend.service());
    let mut b = a.clone();

    assert_eq!(send(&mut a, get("/")).await, (Seen::Ok, Duration::ZERO));

    handle
        .set(FaultConfig {
            abort: Some(AbortFault::new(100.0, AbortKind::Refused)),
            ..FaultConfig::default()
        })
        .unwrap();
    assert_eq!(
        send(&mut b, get("/")).await.0,
        Seen::Io(ErrorKind::ConnectionRefused)
    );
    assert_eq!(
        send(&mut a, get("/")).await.0,
        Seen::Io(ErrorKind::ConnectionRefused)
    );

    handle
        .set(FaultConfig {
            latency: Some(LatencyFault::fixed(100.0, Duration::from_millis(750))),
            ..FaultConfig::default()
        })
        .unwrap();
    assert_eq!(
        send(&mut a, get("/")).await,
        (Seen::Ok, Duration::from_millis(750))
    );

    // A call already delayed keeps the faults it was given; the next one does not.
    let mut c = b.clone();
    let in_flight = tokio::spawn(async move { send(&mut c, get("/")).await });
    tokio::task::yield_now().await;
    handle.clear();
    assert_eq!(send(&mut b, get("/")).await, (Seen::Ok, Duration::ZERO));
    assert_eq!(
        in_flight.await.unwrap(),
        (Seen::Ok, Duration::from_millis(750))
    );
    assert_eq!(backend.calls(), 4);

    // An empty config is the same as clearing.
    handle
        .set(FaultConfig {
            error: Some(ErrorFault::new(100.0, 500)),
            ..FaultConfig::default()
        })
        .unwrap();
    handle.set(FaultConfig::default()).unwrap();
    assert!(!handle.is_active());
    assert_eq!(send(&mut a, get("/")).await.0, Seen::Ok);

    // Part of the config changed in place; a bad change leaves the old one in force.
    handle
        .set(FaultConfig {
            error: Some(ErrorFault::new(100.0, 500)),
            ..FaultConfig::default()
        })
        .unwrap();
    handle
        .update(|c| c.error.as_mut().unwrap().status = 504)
        .unwrap();
    assert_eq!(send(&mut a, get("/")).await.0, Seen::Status(504));
    let refused = handle
        .update(|c| c.error.as_mut().unwrap().status = 200)
        .unwrap_err();
    assert_eq!(refused.field(), "error.status");
    assert_eq!(send(&mut b, get("/")).await.0, Seen::Status(504));
}

fn with_fault_header(mut req: Request, value: &str) -> Request {
    req.headers_mut()
        .insert(FAULT_HEADER, http::HeaderValue::from_str(value).unwrap());
    req
}

#[tokio::test(start_paused = true)]
async fn header_faults_are_ignored_and_stripped_unless_allowed() {
    let backend = Backend::default();
    let layer = FaultLayer::http("order").unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(backend.service());
    let (seen, took) = send(&mut svc, with_fault_header(get("/"), "delay=5s;error=503")).await;
    assert_eq!((seen, took), (Seen::Ok, Duration::ZERO));
    assert_eq!(backend.calls(), 1);
    assert_eq!(
        backend.saw_fault_header.load(Ordering::SeqCst),
        0,
        "the header never reaches the service"
    );
}

#[tokio::test(start_paused = true)]
async fn header_faults_apply_when_allowed() {
    let backend = Backend::default();
    let layer = FaultLayer::http("order")
        .unwrap()
        .allow_header_faults(true)
        .with_config(FaultConfig {
            // The header replaces the configured faults for its request.
            error: Some(ErrorFault::new(100.0, 500)),
            ..FaultConfig::default()
        })
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(backend.service());
    assert_eq!(
        send(
            &mut svc,
            with_fault_header(get("/"), "delay=200ms;error=503")
        )
        .await,
        (Seen::Status(503), Duration::from_millis(200))
    );
    assert_eq!(
        send(&mut svc, with_fault_header(get("/"), "abort")).await,
        (Seen::Io(ErrorKind::ConnectionReset), Duration::ZERO)
    );
    assert_eq!(
        send(&mut svc, with_fault_header(get("/"), "delay=1s")).await,
        (Seen::Ok, Duration::from_secs(1))
    );
    assert_eq!(
        send(&mut svc, with_fault_header(get("/"), "error=abc")).await,
        (Seen::Status(400), Duration::ZERO),
        "an unreadable fault header is refused, not ignored"
    );
    assert_eq!(send(&mut svc, get("/")).await.0, Seen::Status(500));
    assert_eq!(backend.calls(), 1);
    assert_eq!(backend.saw_fault_header.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn header_faults_apply_only_to_requests_the_layer_matches() {
    let backend = Backend::default();
    let layer = FaultLayer::http("order")
        .unwrap()
        .matching(|req: &Request| req.uri().path() != "/health")
        .allow_header_faults(true);
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(backend.service());
    assert_eq!(
        send(&mut svc, with_fault_header(get("/"), "error=503")).await,
        (Seen::Status(503), Duration::ZERO)
    );
    // The health check is never faulted, whatever its header says; the header is
    // taken off, not passed on to the next hop.
    assert_eq!(
        send(&mut svc, with_fault_header(get("/health"), "error=503")).await,
        (Seen::Ok, Duration::ZERO)
    );
    assert_eq!(backend.calls(), 1);
    assert_eq!(backend.saw_fault_header.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn injected_error_responses_are_marked() {
    let layer = FaultLayer::http("catalog")
        .unwrap()
        .with_config(FaultConfig {
            error: Some(ErrorFault::new(100.0, 429)),
            ..FaultConfig::default()
        })
        .unwrap();
    let mut svc = layer.layer_service(Backend::default().service());
    let response = svc.ready().await.unwrap().call(get("/")).await.unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()[FAULT_HEADER], "error");
}

#[tokio::test(start_paused = true)]
async fn custom_services_get_errors_from_their_closure() {
    let layer = FaultLayer::custom("ledger", |status: u16| -> Result<u64, BoxError> {
        Err(format!("ledger unavailable ({status})").into())
    })
    .unwrap()
    .seed(1)
    .matching(|n: &u64| *n != 0);
    let handle = layer.handle();
    let refused = handle
        .set(FaultConfig {
            error: Some(ErrorFault::new(100.0, 503)),
            matching: Some(RequestMatch {
                path_prefix: Some("/x".into()),
                ..RequestMatch::default()
            }),
            ..FaultConfig::default()
        })
        .unwrap_err();
    assert_eq!(refused.field(), "match");
    handle
        .set(FaultConfig {
            error: Some(ErrorFault::new(100.0, 503)),
            ..FaultConfig::default()
        })
        .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|n: u64| async move { Ok::<_, std::io::Error>(n + 1) });
    let err = svc.ready().await.unwrap().call(5).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "downstream error: ledger unavailable (503)"
    );
    assert_eq!(svc.ready().await.unwrap().call(0).await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through() {
    let layer = FaultLayer::http("payment").unwrap();
    let mut svc = layer.layer_service(tower::service_fn(|_req: Request| async {
        Err::<Response, _>(std::io::Error::other("card declined"))
    }));
    let err = svc.ready().await.unwrap().call(get("/")).await.unwrap_err();
    assert_eq!(err.to_string(), "downstream error: card declined");
}

#[tokio::test(start_paused = true)]
async fn counts_injected_faults_by_kind() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        FaultLayer::http("shipment")
            .unwrap()
            .seed(9)
            .with_config(FaultConfig {
                latency: Some(LatencyFault::fixed(100.0, Duration::from_millis(10))),
                abort: Some(AbortFault::new(100.0, AbortKind::Reset)),
                ..FaultConfig::default()
            })
            .unwrap()
    });
    let handle = layer.handle();
    let mut svc = layer.layer_service(Backend::default().service());
    for _ in 0..3 {
        send(&mut svc, get("/")).await;
    }
    handle
        .set(FaultConfig {
            error: Some(ErrorFault::new(100.0, 502)),
            ..FaultConfig::default()
        })
        .unwrap();
    send(&mut svc, get("/")).await;
    handle.clear();
    send(&mut svc, get("/")).await;

    let mut counts: Vec<(String, String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key().clone();
            let label = |name: &str| {
                key.labels()
                    .find(|l| l.key() == name)
                    .map(|l| l.value().to_owned())
                    .unwrap()
            };
            let DebugValue::Counter(n) = value else {
                panic!("counter expected")
            };
            (
                key.name().to_owned(),
                format!("{}/{}", label("downstream"), label("kind")),
                n,
            )
        })
        .collect();
    counts.sort();
    let name = "palisade_fault_injected_total".to_owned();
    assert_eq!(
        counts,
        vec![
            (name.clone(), "shipment/abort".into(), 3),
            (name.clone(), "shipment/error".into(), 1),
            (name, "shipment/latency".into(), 3),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn clients_without_default_bodies_fail_injected_errors() {
    struct NoDefault;
    let layer = FaultLayer::http_with("catalog", |status: u16| {
        Err::<http::Response<NoDefault>, BoxError>(format!("injected {status}").into())
    })
    .unwrap()
    .allow_header_faults(true)
    .with_config(FaultConfig {
        error: Some(ErrorFault::new(100.0, 502)),
        matching: Some(RequestMatch {
            path_prefix: Some("/prices".into()),
            ..RequestMatch::default()
        }),
        ..FaultConfig::default()
    })
    .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|_req: Request| async { Ok::<_, Infallible>(http::Response::new(NoDefault)) });
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(get("/prices/1"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.to_string(), "downstream error: injected 502");
    assert!(svc.ready().await.unwrap().call(get("/other")).await.is_ok());
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(with_fault_header(get("/other"), "error=504"))
        .await
        .err()
        .unwrap();
    assert_eq!(err.to_string(), "downstream error: injected 504");
}

#[tokio::test(start_paused = true)]
async fn a_repeated_fault_header_is_refused() {
    let backend = Backend::default();
    let layer = FaultLayer::http("order").unwrap().allow_header_faults(true);
    let mut svc = ServiceBuilder::new()
        .layer(layer)
        .service(backend.service());
    let mut req = with_fault_header(get("/"), "delay=1s");
    req.headers_mut()
        .append(FAULT_HEADER, http::HeaderValue::from_static("error=503"));
    assert_eq!(
        send(&mut svc, req).await,
        (Seen::Status(400), Duration::ZERO)
    );
    assert_eq!(backend.calls(), 0);
}
