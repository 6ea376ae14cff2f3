//! The bulkhead's metrics, read through a debugging recorder on paused time.
#![cfg(not(feature = "loom"))]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use palisade_limit::bulkhead::BulkheadLayer;
use tokio::sync::Notify;
use tower::{Service, ServiceExt};

const MS: Duration = Duration::from_millis(1);

/// Every series as `(name, labels) -> value` (histograms as their sample list).
/// Taking a snapshot resets counters and gauges in the debugging recorder.
fn snapshot(s: &Snapshotter) -> BTreeMap<(String, String), String> {
    s.snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key().clone();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let value = match value {
                DebugValue::Counter(c) => c.to_string(),
                DebugValue::Gauge(g) => g.into_inner().to_string(),
                DebugValue::Histogram(h) => format!(
                    "{:?}",
                    h.into_iter().map(|v| v.into_inner()).collect::<Vec<_>>()
                ),
            };
            ((key.name().to_owned(), labels.join(",")), value)
        })
        .collect()
}

fn get<'a>(m: &'a BTreeMap<(String, String), String>, name: &str, labels: &str) -> &'a str {
    m.get(&(name.to_owned(), labels.to_owned()))
        .unwrap_or_else(|| panic!("{name}{{{labels}}} is not registered; have {m:#?}"))
}

#[tokio::test(start_paused = true)]
async fn every_series_is_registered_and_follows_the_calls() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        BulkheadLayer::builder("payment")
            .max_concurrent(1)
            .max_queue(1)
            .max_wait(100 * MS)
            .build()
            .unwrap()
    });
    let handle = layer.handle();

    let m = snapshot(&snapshotter);
    for outcome in ["permitted", "rejected_full", "rejected_timeout"] {
        assert_eq!(
            get(
                &m,
                "palisade_bulkhead_calls_total",
                &format!("downstream=payment,outcome={outcome}")
            ),
            "0",
            "{outcome} registered at zero"
        );
    }
    assert_eq!(
        get(&m, "palisade_bulkhead_in_flight", "downstream=payment"),
        "0"
    );
    assert_eq!(
        get(&m, "palisade_bulkhead_queued", "downstream=payment"),
        "0"
    );
    assert_eq!(
        get(&m, "palisade_bulkhead_limit", "downstream=payment"),
        "1"
    );

    let gate = Arc::new(Notify::new());
    let inner = tower::service_fn(move |wait: bool| {
        let gate = gate.clone();
        async move {
            if wait {
                gate.notified().await;
            }
            Ok::<_, std::io::Error>(())
        }
    });
    let svc = tower::Layer::layer(&layer, inner);

    // One call holds the permit...
    let mut holder = svc.clone();
    let running = holder.ready().await.unwrap().call(true);
    // ...one waits and times out, one finds the queue full.
    let waiter = tokio::spawn(svc.clone().oneshot(false));
    tokio::task::yield_now().await;
    assert_eq!((handle.in_flight(), handle.queued()), (1, 1));
    assert!(svc.clone().oneshot(false).await.is_err());
    assert!(waiter.await.unwrap().is_err());
    // One waits and gets the permit 30 ms in.
    let waiter = tokio::spawn(svc.clone().oneshot(false));
    tokio::time::sleep(30 * MS).await;
    drop(running);
    waiter.await.unwrap().unwrap();
    handle.set_max_concurrent(5).unwrap();

    let m = snapshot(&snapshotter);
    let calls = |outcome: &str| {
        get(
            &m,
            "palisade_bulkhead_calls_total",
            &format!("downstream=payment,outcome={outcome}"),
        )
        .to_owned()
    };
    assert_eq!(calls("permitted"), "2");
    assert_eq!(calls("rejected_full"), "1");
    assert_eq!(calls("rejected_timeout"), "1");
    assert_eq!(
        get(&m, "palisade_bulkhead_in_flight", "downstream=payment"),
        "0"
    );
    assert_eq!(
        get(&m, "palisade_bulkhead_queued", "downstream=payment"),
        "0"
    );
    assert_eq!(
        get(&m, "palisade_bulkhead_limit", "downstream=payment"),
        "5"
    );
    // Only the two calls that waited are in the wait histogram: 100 ms (timed
    // out) and 30 ms (admitted).
    assert_eq!(
        get(&m, "palisade_bulkhead_wait_seconds", "downstream=payment"),
        "[0.1, 0.03]"
    );
}

#[test]
fn without_metrics_registers_nothing() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        BulkheadLayer::builder("quiet")
            .without_metrics()
            .build()
            .unwrap()
    });
    assert!(snapshot(&snapshotter).is_empty());
}

#[tokio::test(start_paused = true)]
async fn gauges_count_permits_held_and_calls_queued() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        BulkheadLayer::builder("stock")
            .max_concurrent(2)
            .max_queue(3)
            .build()
            .unwrap()
    });
    let svc = tower::Layer::layer(
        &layer,
        tower::service_fn(|()| async { Ok::<_, std::io::Error>(()) }),
    );
    let mut ready = Vec::new();
    for _ in 0..2 {
        let mut s = svc.clone();
        ServiceExt::<()>::ready(&mut s).await.unwrap();
        ready.push(s);
    }
    let waiting: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(())))
        .collect();
    tokio::task::yield_now().await;
    let m = snapshot(&snapshotter);
    assert_eq!(
        get(&m, "palisade_bulkhead_in_flight", "downstream=stock"),
        "2"
    );
    assert_eq!(get(&m, "palisade_bulkhead_queued", "downstream=stock"), "3");
    assert_eq!(get(&m, "palisade_bulkhead_limit", "downstream=stock"), "2");
    // (The snapshot reset the gauges; from here they count changes.)
    drop(ready);
    for w in waiting {
        w.await.unwrap().unwrap();
    }
    let m = snapshot(&snapshotter);
    assert_eq!(
        get(&m, "palisade_bulkhead_in_flight", "downstream=stock"),
        "-2"
    );
    assert_eq!(
        get(&m, "palisade_bulkhead_queued", "downstream=stock"),
        "-3"
    );
}
