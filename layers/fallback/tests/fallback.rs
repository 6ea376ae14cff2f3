//! The fallback layer: failures and rejections answered with a stand-in.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use palisade_core::{Error, FailureReason, HttpClassifier, Rejection, RejectionKind};
use palisade_fallback::{
    FallbackCause, FallbackConfig, FallbackLayer, FallbackReason, HttpMark, ServedFallback, Value,
};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

/// What the dependency does with a request.
#[derive(Clone, Copy)]
enum Answer {
    Ok,
    Fail,
    Refuse(RejectionKind),
}

fn dependency()
-> impl Service<Answer, Response = String, Error = BoxError, Future = impl Send> + Clone {
    tower::service_fn(|answer: Answer| async move {
        match answer {
            Answer::Ok => Ok("fresh".to_string()),
            Answer::Fail => Err::<String, BoxError>("boom".into()),
            Answer::Refuse(kind) => Err(Rejection::new(kind).into()),
        }
    })
}

/// Records each cause the fallback function saw, as text.
fn recording() -> (
    Arc<Mutex<Vec<String>>>,
    impl Fn(&FallbackCause<'_>) -> String + Clone,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let f = move |cause: &FallbackCause<'_>| {
        let text = match cause {
            FallbackCause::Rejected(r) => format!("rejected: {}", r.kind()),
            FallbackCause::Failed { reason, error } => {
                format!(
                    "failed: {reason}: {}",
                    error.map(|e| e.to_string()).unwrap_or_default()
                )
            }
        };
        log.lock().unwrap().push(text);
        format!("fallback ({})", cause.reason())
    };
    (seen, f)
}

#[tokio::test]
async fn failures_and_rejections_get_the_fallback() {
    let (seen, f) = recording();
    let mut svc = ServiceBuilder::new()
        .layer(FallbackLayer::builder("catalog", f).build().unwrap())
        .service(dependency());
    let mut call = async |a| svc.ready().await.unwrap().call(a).await;
    assert_eq!(call(Answer::Ok).await.unwrap(), "fresh");
    assert_eq!(call(Answer::Fail).await.unwrap(), "fallback (failure)");
    assert_eq!(
        call(Answer::Refuse(RejectionKind::CircuitOpen))
            .await
            .unwrap(),
        "fallback (circuit_open)"
    );
    assert_eq!(
        call(Answer::Refuse(RejectionKind::Timeout)).await.unwrap(),
        "fallback (timeout)"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            "failed: error: downstream error: boom".to_string(),
            "rejected: circuit_open".to_string(),
            "rejected: timeout".to_string(),
        ]
    );
}

#[tokio::test]
async fn only_the_chosen_rejections_fall_back() {
    let (_, f) = recording();
    let mut svc = ServiceBuilder::new()
        .layer(
            FallbackLayer::builder("catalog", f)
                .on_failure(false)
                .on_rejections(&[RejectionKind::CircuitOpen, RejectionKind::Shed])
                .build()
                .unwrap(),
        )
        .service(dependency());
    let mut call = async |a| svc.ready().await.unwrap().call(a).await;
    assert_eq!(
        call(Answer::Refuse(RejectionKind::Shed)).await.unwrap(),
        "fallback (shed)"
    );
    let err = call(Answer::Refuse(RejectionKind::RateLimited))
        .await
        .unwrap_err();
    assert_eq!(err.rejection().unwrap().kind(), RejectionKind::RateLimited);
    let err = call(Answer::Fail).await.unwrap_err();
    assert!(!err.is_rejection());
    assert_eq!(err.to_string(), "downstream error: boom");
}

#[tokio::test]
async fn a_fixed_value_from_config() {
    let config: FallbackConfig = toml::from_str(r#"on_rejections = ["bulkhead_full"]"#).unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(
            FallbackLayer::builder("catalog", Value("default".to_string()))
                .config(config)
                .build()
                .unwrap(),
        )
        .service(dependency());
    let mut call = async |a| svc.ready().await.unwrap().call(a).await;
    assert_eq!(call(Answer::Fail).await.unwrap(), "default");
    assert_eq!(
        call(Answer::Refuse(RejectionKind::BulkheadFull))
            .await
            .unwrap(),
        "default"
    );
    assert!(
        call(Answer::Refuse(RejectionKind::CircuitOpen))
            .await
            .is_err()
    );
}

/// A service whose readiness fails: the refusal is caught too.
#[derive(Clone)]
struct Shedding;

impl Service<()> for Shedding {
    type Response = String;
    type Error = Error;
    type Future = std::future::Ready<Result<String, Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Err(Rejection::new(RejectionKind::Shed).into()))
    }

    fn call(&mut self, _req: ()) -> Self::Future {
        std::future::ready(Ok("never".into()))
    }
}

#[tokio::test]
async fn a_refusal_while_getting_ready_falls_back() {
    let (_, f) = recording();
    let svc = ServiceBuilder::new()
        .layer(FallbackLayer::builder("catalog", f).build().unwrap())
        .service(Shedding);
    assert_eq!(svc.oneshot(()).await.unwrap(), "fallback (shed)");
}

#[tokio::test]
async fn http_responses_are_judged_by_status_and_marked() {
    let layer = FallbackLayer::builder("catalog", |cause: &FallbackCause<'_>| {
        assert!(matches!(
            cause,
            FallbackCause::Failed {
                reason: FailureReason::SERVER_ERROR,
                error: None
            }
        ));
        http::Response::new("[]")
    })
    .classify(HttpClassifier)
    .mark(HttpMark)
    .build()
    .unwrap();
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service_fn(|status: u16| async move {
            Ok::<_, BoxError>(
                http::Response::builder()
                    .status(status)
                    .body("real")
                    .unwrap(),
            )
        });
    let ok = svc.clone().oneshot(200).await.unwrap();
    assert_eq!(*ok.body(), "real");
    assert!(ok.headers().get("x-palisade-fallback").is_none());
    // A 404 is the caller's mistake, not a failure: passed on.
    let missing = svc.clone().oneshot(404).await.unwrap();
    assert_eq!((missing.status().as_u16(), *missing.body()), (404, "real"));
    let unavailable = svc.clone().oneshot(503).await.unwrap();
    assert_eq!(unavailable.status(), 200);
    assert_eq!(*unavailable.body(), "[]");
    assert_eq!(unavailable.headers()["x-palisade-fallback"], "failure");
    assert_eq!(
        unavailable.extensions().get::<ServedFallback>(),
        Some(&ServedFallback {
            reason: FallbackReason::Failure
        })
    );
}

#[tokio::test]
async fn fallbacks_are_counted_by_reason() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        FallbackLayer::builder("catalog", Value("default".to_string()))
            .build()
            .unwrap()
    });
    let mut svc = ServiceBuilder::new().layer(layer).service(dependency());
    for answer in [
        Answer::Ok,
        Answer::Fail,
        Answer::Fail,
        Answer::Refuse(RejectionKind::NoEndpoints),
    ] {
        svc.ready().await.unwrap().call(answer).await.unwrap();
    }
    let mut counts: Vec<(String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            assert_eq!(key.key().name(), "palisade_fallback_fallbacks_total");
            let reason = key
                .key()
                .labels()
                .find(|l| l.key() == "reason")
                .unwrap()
                .value()
                .to_owned();
            let DebugValue::Counter(n) = value else {
                panic!("a counter")
            };
            (reason, n)
        })
        .collect();
    counts.sort();
    assert_eq!(counts.len(), 9, "every reason registered");
    assert!(counts.contains(&("failure".into(), 2)));
    assert!(counts.contains(&("no_endpoints".into(), 1)));
    assert!(counts.contains(&("circuit_open".into(), 0)));
}

#[test]
fn bad_settings_name_the_field() {
    let err = FallbackLayer::builder("catalog", Value(()))
        .on_failure(false)
        .on_rejections(&[])
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "on_rejections");
    let err = FallbackLayer::builder("", Value(())).build().unwrap_err();
    assert_eq!(err.to_string(), "name: name is empty");
}
