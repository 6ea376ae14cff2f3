//! Metrics through metrics-util's debugging recorder: closed label sets zero-filled,
//! and the counts a user would read on a dashboard.

#![allow(clippy::field_reassign_with_default)] // settings read best one per line

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use palisade_balance::discover::{FileSource, Registry};
use palisade_balance::{Balance, BalanceConfig, LoadMetric};
use tower::{Service, ServiceExt};

/// Reads every series; counters as totals (the debugging recorder hands out the
/// increments since its last snapshot, and gauges as last set since then).
fn read(snapshotter: &Snapshotter) -> HashMap<String, f64> {
    thread_local! {
        static TOTALS: std::cell::RefCell<HashMap<String, f64>> = Default::default();
    }
    let fresh: Vec<(String, f64, bool)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let mut labels: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            let (v, counter) = match value {
                DebugValue::Counter(c) => (c as f64, true),
                DebugValue::Gauge(g) => (g.into_inner(), false),
                DebugValue::Histogram(_) => (f64::NAN, false),
            };
            (
                format!("{}{{{}}}", key.name(), labels.join(",")),
                v,
                counter,
            )
        })
        .collect();
    TOTALS.with(|totals| {
        let mut totals = totals.borrow_mut();
        for (name, v, counter) in fresh {
            if counter {
                *totals.entry(name).or_default() += v;
            } else {
                totals.insert(name, v);
            }
        }
        totals.clone()
    })
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test(start_paused = true)]
async fn balancer_and_registry_metrics() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let registry = Registry::new();
    let _a = registry.register("shop", addr(1));
    let _b = registry.register("shop", addr(2));
    let failing = Arc::new(AtomicBool::new(true));
    let f = failing.clone();
    let make = move |a: SocketAddr| {
        let f = f.clone();
        tower::service_fn(move |_: ()| {
            let fail = a == addr(1) && f.load(Ordering::SeqCst);
            async move {
                if fail {
                    Err(std::io::Error::other("down"))
                } else {
                    Ok(a)
                }
            }
        })
    };
    let mut config = BalanceConfig::default();
    config.load = LoadMetric::PendingRequests;
    config.failure_penalty = Duration::ZERO;
    config.outlier.consecutive_failures = 3;
    config.outlier.failure_rate = None;
    let mut balance = metrics::with_local_recorder(&recorder, || {
        Balance::builder("shop")
            .config(config)
            .build(registry.watch("shop").unwrap(), make)
            .unwrap()
    });
    let m = read(&snapshotter);
    for label in ["success", "failure", "ignored", "no_endpoints"] {
        assert_eq!(
            m[&format!("palisade_balance_requests_total{{downstream=shop,outcome={label}}}")],
            0.0
        );
    }
    assert_eq!(
        m["palisade_balance_endpoints{downstream=shop,state=ready}"],
        2.0
    );
    assert_eq!(
        m["palisade_discovery_updates_total{downstream=shop,source=registry}"],
        1.0
    );
    assert_eq!(m["palisade_discovery_stale{downstream=shop}"], 0.0);
    assert!(m["palisade_discovery_last_update_timestamp_seconds{downstream=shop}"] > 1.0e9);

    let (mut ok, mut failed) = (0.0, 0.0);
    while failed < 3.0 {
        match balance.ready().await.unwrap().call(()).await {
            Ok(_) => ok += 1.0,
            Err(_) => failed += 1.0,
        }
    }
    let m = read(&snapshotter);
    assert_eq!(
        m["palisade_balance_requests_total{downstream=shop,outcome=success}"],
        ok
    );
    assert_eq!(
        m["palisade_balance_requests_total{downstream=shop,outcome=failure}"],
        3.0
    );
    assert_eq!(
        m["palisade_balance_ejections_total{detector=consecutive_failures,downstream=shop}"],
        1.0
    );
    assert_eq!(
        m["palisade_balance_ejections_total{detector=failure_rate,downstream=shop}"],
        0.0
    );
    assert_eq!(
        m["palisade_balance_endpoints{downstream=shop,state=ejected}"],
        1.0
    );
    assert_eq!(
        m["palisade_balance_endpoints{downstream=shop,state=ready}"],
        1.0
    );
    // 1 of 2 healthy is not below the 50% panic threshold.
    assert_eq!(m["palisade_balance_panic_mode{downstream=shop}"], 0.0);

    // The ejection ends on time even without traffic; the endpoint starts slowly.
    failing.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(1)).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let m = read(&snapshotter);
    assert_eq!(
        m["palisade_balance_endpoints{downstream=shop,state=ejected}"],
        0.0
    );
    assert_eq!(
        m["palisade_balance_endpoints{downstream=shop,state=slow_start}"],
        1.0
    );

    drop((_a, _b));
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let err = balance.ready().await.unwrap().call(()).await.unwrap_err();
    assert!(err.is_rejection());
    let m = read(&snapshotter);
    assert_eq!(
        m["palisade_balance_requests_total{downstream=shop,outcome=no_endpoints}"],
        1.0
    );
    assert_eq!(
        m["palisade_discovery_updates_total{downstream=shop,source=registry}"],
        2.0
    );
}

#[tokio::test(start_paused = true)]
async fn a_file_is_followed_and_a_malformed_one_keeps_the_last_good_set() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.toml");
    std::fs::write(&path, "endpoints = [\"127.0.0.1:1\", \"127.0.0.1:2\"]").unwrap();
    let make =
        |a: SocketAddr| tower::service_fn(move |_: ()| async move { Ok::<_, std::io::Error>(a) });
    let balance = metrics::with_local_recorder(&recorder, || {
        let source = FileSource::builder("catalog", &path)
            .interval(Duration::from_secs(1))
            .build()
            .unwrap();
        Balance::builder("catalog").build(source, make).unwrap()
    });
    let addrs = |b: &Balance<_>| {
        b.endpoints()
            .iter()
            .map(|e| e.addr.port())
            .collect::<Vec<_>>()
    };
    assert_eq!(addrs(&balance), vec![1, 2]);
    let tick = || async {
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    };

    std::fs::write(&path, "endpoints = [\"127.0.0.1:2\", \"127.0.0.1:3\"]").unwrap();
    tick().await;
    assert_eq!(addrs(&balance), vec![2, 3]);

    // A bad entry: the last good set stays, the error is counted, the set is stale.
    std::fs::write(&path, "endpoints = [\"127.0.0.1:2\", \"not-an-address\"]").unwrap();
    tick().await;
    assert_eq!(addrs(&balance), vec![2, 3]);
    let m = read(&snapshotter);
    assert_eq!(
        m["palisade_discovery_errors_total{downstream=catalog,source=file}"],
        1.0
    );
    assert_eq!(m["palisade_discovery_stale{downstream=catalog}"], 1.0);
    // Unchanged bad content is not counted again; it stays stale.
    tick().await;
    let m = read(&snapshotter);
    assert_eq!(
        m["palisade_discovery_errors_total{downstream=catalog,source=file}"],
        1.0
    );
    assert_eq!(m["palisade_discovery_stale{downstream=catalog}"], 1.0);

    // More endpoints than a source holds: refused, the last good set stays.
    let many: Vec<String> = (1..=1025).map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    std::fs::write(&path, format!("endpoints = [{}]", many.join(", "))).unwrap();
    tick().await;
    assert_eq!(addrs(&balance), vec![2, 3]);
    assert_eq!(
        read(&snapshotter)["palisade_discovery_errors_total{downstream=catalog,source=file}"],
        2.0
    );

    // A file too large to be an endpoint list (a wrong path, a log) is not read
    // into memory: refused, the last good set stays.
    std::fs::write(&path, vec![b'#'; (1 << 20) + 1]).unwrap();
    tick().await;
    assert_eq!(addrs(&balance), vec![2, 3]);
    assert_eq!(
        read(&snapshotter)["palisade_discovery_errors_total{downstream=catalog,source=file}"],
        3.0
    );

    // The file disappears: still the last good set.
    std::fs::remove_file(&path).unwrap();
    tick().await;
    assert_eq!(addrs(&balance), vec![2, 3]);
    assert_eq!(
        read(&snapshotter)["palisade_discovery_errors_total{downstream=catalog,source=file}"],
        4.0
    );

    // Fixed: the new set is served and the staleness clears.
    std::fs::write(&path, "endpoints = [\"127.0.0.1:4\"]").unwrap();
    tick().await;
    assert_eq!(addrs(&balance), vec![4]);
    let m = read(&snapshotter);
    assert_eq!(m["palisade_discovery_stale{downstream=catalog}"], 0.0);
    assert_eq!(
        m["palisade_discovery_updates_total{downstream=catalog,source=file}"],
        3.0
    );
}

#[test]
fn malformed_endpoint_lists_are_named() {
    use palisade_balance::discover::parse_endpoints;
    let json = |text: &str| {
        FileSource::parse("e.json".as_ref(), text)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        json(r#"["127.0.0.1:1", ""]"#),
        "malformed endpoint list: e.json: endpoint 1: the entry is empty"
    );
    assert_eq!(
        json(r#"{"endpoints": ["127.0.0.1:1", "127.0.0.1:1"]}"#),
        "malformed endpoint list: e.json: endpoint 1: 127.0.0.1:1 is listed twice"
    );
    assert!(json("{").contains("e.json: not a JSON list of endpoints"));
    assert!(json(r#"{"endpoint": []}"#).contains("not a JSON list"));
    assert!(
        parse_endpoints(["127.0.0.1"]).is_err(),
        "a port is required"
    );
    // No extension: JSON, then TOML.
    assert_eq!(
        FileSource::parse("list".as_ref(), r#"endpoints = ["[::1]:80"]"#)
            .unwrap()
            .len(),
        1
    );
}
