//! Request coalescing: identical requests in flight share one call.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use palisade_fallback::{CloneStore, CoalesceLayer, key_fn};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

/// A dependency that counts its calls, answers after `delay`, fails for keys
/// at or above 1000, and notes when a call it started was dropped before finishing.
#[derive(Clone, Default)]
struct Dependency {
    calls: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
}

struct DropWatch {
    dropped: Arc<AtomicUsize>,
    done: bool,
}

impl Drop for DropWatch {
    fn drop(&mut self) {
        if !self.done {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Dependency {
    fn service(
        dep: Dependency,
        delay: Duration,
    ) -> impl Service<u32, Response = String, Error = BoxError, Future = impl Send>
    + Clone
    + Send
    + 'static {
        tower::service_fn(move |key: u32| {
            dep.calls.fetch_add(1, Ordering::SeqCst);
            let watch = DropWatch {
                dropped: dep.dropped.clone(),
                done: false,
            };
            let finished = dep.finished.clone();
            async move {
                let mut watch = watch;
                tokio::time::sleep(delay).await;
                watch.done = true;
                finished.fetch_add(1, Ordering::SeqCst);
                if key >= 1000 {
                    Err::<String, BoxError>(format!("item {key} is broken").into())
                } else {
                    Ok(format!("item {key}"))
                }
            }
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn layer(
    max_keys: usize,
) -> CoalesceLayer<impl palisade_fallback::KeyOf<u32> + Clone, CloneStore<String>> {
    CoalesceLayer::builder(
        "pricing",
        key_fn(|key: &u32| (*key != 0).then_some(*key)),
        CloneStore::new(),
    )
    .max_keys_in_flight(max_keys)
    .build()
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_thousand_identical_requests_make_one_call() {
    let dep = Dependency::default();
    let svc = ServiceBuilder::new()
        .layer(layer(16))
        .service(Dependency::service(dep.clone(), Duration::from_millis(20)));
    let tasks: Vec<_> = (0..1000)
        .map(|_| tokio::spawn(svc.clone().oneshot(7)))
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), "item 7");
    }
    assert_eq!(dep.calls(), 1);
    // Once it has finished, the next request makes a new call.
    assert_eq!(svc.clone().oneshot(7).await.unwrap(), "item 7");
    assert_eq!(dep.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_error_reaches_every_waiter() {
    let dep = Dependency::default();
    let svc = ServiceBuilder::new()
        .layer(layer(16))
        .service(Dependency::service(dep.clone(), Duration::from_millis(20)));
    let tasks: Vec<_> = (0..10)
        .map(|_| tokio::spawn(svc.clone().oneshot(1001)))
        .collect();
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        assert!(!err.is_rejection());
        assert_eq!(err.to_string(), "downstream error: item 1001 is broken");
        // The dependency's own error is at the end of the chain.
        let shared = err
            .inner()
            .unwrap()
            .downcast_ref::<palisade_fallback::SharedError>()
            .unwrap();
        assert_eq!(shared.get().to_string(), "item 1001 is broken");
    }
    assert_eq!(dep.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn cancelling_one_waiter_does_not_cancel_the_call_for_the_others() {
    let dep = Dependency::default();
    let svc = ServiceBuilder::new()
        .layer(layer(16))
        .service(Dependency::service(dep.clone(), Duration::from_millis(100)));
    // The request that starts the call gives up after 10 ms ...
    let first = tokio::spawn(tokio::time::timeout(
        Duration::from_millis(10),
        svc.clone().oneshot(5),
    ));
    tokio::time::sleep(Duration::from_millis(1)).await;
    let second = tokio::spawn(svc.clone().oneshot(5));
    assert!(first.await.unwrap().is_err(), "the first caller timed out");
    // ... the second still gets the one call's answer.
    assert_eq!(second.await.unwrap().unwrap(), "item 5");
    assert_eq!(dep.calls(), 1);
    assert_eq!(dep.dropped.load(Ordering::SeqCst), 0);
    assert_eq!(dep.finished.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn when_every_waiter_leaves_the_call_is_cancelled() {
    let dep = Dependency::default();
    let coalesce = layer(16);
    let svc = ServiceBuilder::new()
        .layer(coalesce)
        .service(Dependency::service(dep.clone(), Duration::from_secs(10)));
    let a = tokio::spawn(tokio::time::timeout(
        Duration::from_millis(10),
        svc.clone().oneshot(5),
    ));
    let b = tokio::spawn(tokio::time::timeout(
        Duration::from_millis(20),
        svc.clone().oneshot(5),
    ));
    assert!(a.await.unwrap().is_err());
    assert!(b.await.unwrap().is_err());
    tokio::task::yield_now().await;
    assert_eq!(dep.calls(), 1);
    assert_eq!(
        dep.dropped.load(Ordering::SeqCst),
        1,
        "the call was cancelled"
    );
    assert_eq!(svc.keys_in_flight(), 0);
    // A new request starts a new call.
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(11), svc.clone().oneshot(5))
            .await
            .unwrap()
            .unwrap(),
        "item 5"
    );
    assert_eq!(dep.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn beyond_the_bound_requests_call_on_their_own() {
    let dep = Dependency::default();
    let svc = ServiceBuilder::new()
        .layer(layer(2))
        .service(Dependency::service(dep.clone(), Duration::from_millis(50)));
    let mut tasks = Vec::new();
    // Keys 1 and 2 fill the bound; each is coalesced.
    for key in [1, 1, 2, 2] {
        tasks.push(tokio::spawn(svc.clone().oneshot(key)));
    }
    tokio::task::yield_now().await;
    assert_eq!(svc.keys_in_flight(), 2);
    // Key 3 finds the bound full: three requests, three calls.
    for _ in 0..3 {
        tasks.push(tokio::spawn(svc.clone().oneshot(3)));
    }
    for task in tasks {
        assert!(task.await.unwrap().is_ok());
    }
    assert_eq!(dep.calls(), 2 + 3);
    assert_eq!(svc.keys_in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn requests_without_a_key_pass_through() {
    let dep = Dependency::default();
    let svc = ServiceBuilder::new()
        .layer(layer(16))
        .service(Dependency::service(dep.clone(), Duration::from_millis(50)));
    let tasks: Vec<_> = (0..5)
        .map(|_| tokio::spawn(svc.clone().oneshot(0)))
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), "item 0");
    }
    assert_eq!(dep.calls(), 5);
}

#[tokio::test(start_paused = true)]
async fn coalesced_waiters_are_counted() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let coalesce = metrics::with_local_recorder(&recorder, || layer(16));
    let dep = Dependency::default();
    let svc = ServiceBuilder::new()
        .layer(coalesce)
        .service(Dependency::service(dep.clone(), Duration::from_millis(20)));
    let tasks: Vec<_> = (0..4)
        .map(|_| tokio::spawn(svc.clone().oneshot(9)))
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let snapshot = snapshotter.snapshot().into_hashmap();
    let value = |name: &str| {
        snapshot
            .iter()
            .find(|(k, _)| k.key().name() == name)
            .map(|(_, (_, _, v))| v)
            .unwrap_or_else(|| panic!("{name} registered"))
    };
    assert_eq!(
        *value("palisade_fallback_coalesced_waiters_total"),
        DebugValue::Counter(3)
    );
    assert_eq!(
        *value("palisade_fallback_refreshes_in_flight"),
        DebugValue::Gauge(0.0.into())
    );
}

#[test]
fn bad_settings_name_the_field() {
    let err = CoalesceLayer::builder(
        "pricing",
        key_fn(|k: &u32| Some(*k)),
        CloneStore::<String>::new(),
    )
    .max_keys_in_flight(0)
    .build()
    .unwrap_err();
    assert_eq!(err.to_string(), "max_keys_in_flight: must be at least 1");
    let err = CoalesceLayer::builder(
        "pri cing",
        key_fn(|k: &u32| Some(*k)),
        CloneStore::<String>::new(),
    )
    .build()
    .unwrap_err();
    assert_eq!(err.field(), "name");
}

#[tokio::test(start_paused = true)]
async fn the_shared_call_carries_the_deadline_of_the_request_that_started_it() {
    let svc = ServiceBuilder::new()
        .layer(layer(16))
        .service_fn(|_key: u32| async move {
            Ok::<_, BoxError>(format!("{:?}", palisade_core::Deadline::current()))
        });
    let deadline = palisade_core::Deadline::after(Duration::from_secs(2));
    let seen = deadline.scope(svc.clone().oneshot(4)).await.unwrap();
    assert_eq!(seen, format!("{:?}", Some(deadline)));
    assert_eq!(svc.oneshot(4).await.unwrap(), "None");
}
