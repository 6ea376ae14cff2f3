//! Palisade layers compose with each other and with tower's own layers in one
//! `ServiceBuilder`, with no type annotations, and a caller can always tell a
//! Palisade rejection from the inner service's error.

use std::time::Duration;

use palisade::breaker::CircuitBreakerLayer;
use palisade::{Error, RejectionKind};
use tower::{Service, ServiceBuilder, ServiceExt};

#[tokio::test(start_paused = true)]
async fn six_layers_compose_without_annotations() {
    let outer = CircuitBreakerLayer::builder("outer")
        .without_metrics()
        .build()
        .unwrap();
    let inner = CircuitBreakerLayer::builder("inner")
        .without_metrics()
        .build()
        .unwrap();
    let keyed = CircuitBreakerLayer::builder("per_user")
        .without_metrics()
        .build_keyed(|user: &u32| *user, 1_000, Duration::from_secs(60))
        .unwrap();
    let (outer_handle, inner_handle) = (outer.handle(), inner.handle());

    let mut svc = ServiceBuilder::new()
        .layer(outer)
        .timeout(Duration::from_secs(1))
        .layer(keyed)
        .concurrency_limit(10)
        .layer(inner)
        .layer(
            CircuitBreakerLayer::builder("innermost")
                .without_metrics()
                .build()
                .unwrap(),
        )
        .service_fn(|user: u32| async move {
            match user {
                0 => Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "no user 0",
                )),
                1 => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok("slow")
                }
                _ => Ok("hello"),
            }
        });

    assert_eq!(svc.ready().await.unwrap().call(7).await.unwrap(), "hello");

    // The inner service's own error comes through as itself, six layers up.
    let err: Error = svc.ready().await.unwrap().call(0).await.unwrap_err();
    assert!(!err.is_rejection());
    let io = err
        .inner()
        .unwrap()
        .downcast_ref::<std::io::Error>()
        .unwrap();
    assert_eq!(io.kind(), std::io::ErrorKind::PermissionDenied);

    // tower's timeout error (a BoxError) is an inner error too.
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert!(err.inner().unwrap().is::<tower::timeout::error::Elapsed>());

    // A rejection from a breaker deep inside is recognised at the top, through
    // tower's boxed errors, without guessing.
    inner_handle.force_open();
    let err = svc.ready().await.unwrap().call(7).await.unwrap_err();
    let rejection = err.rejection().expect("a palisade rejection");
    assert_eq!(rejection.kind(), RejectionKind::CircuitOpen);
    assert_eq!(rejection.downstream().unwrap().as_str(), "inner");

    // The outer breaker does not hold the inner breaker's refusals against the
    // downstream: local rejections are ignored by the default classifier.
    for _ in 0..50 {
        let _ = svc.ready().await.unwrap().call(7).await;
    }
    let snap = outer_handle.snapshot();
    assert_eq!(snap.state, palisade::prelude::State::Closed);
    assert_eq!(
        snap.window.failures, 2,
        "only the io error and the timeout count"
    );
}
