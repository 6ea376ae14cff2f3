//! Every metric the dashboards read exists, with that type and those label values:
//! the real `/metrics` text of every Palisade layer (breaker, retry, hedge, timeout,
//! deadlines, rate limit, bulkhead, adaptive limit, throttle, shedding, balancer and
//! discovery, fallback and cache, fault injection), rendered by
//! metrics-exporter-prometheus with Palisade's buckets, plus — for the order demo's
//! own series — the contract table `catalog::DEMO_CONTRACT`.

#[path = "support/layers.rs"]
#[allow(dead_code)]
mod layers;

use layers::{Behaviour, Replicated};
use palisade_dashboards::catalog::{Catalog, DEMO_CONTRACT};
use palisade_dashboards::check;
use std::time::Duration;
use tower::{Service, ServiceExt};

/// Builds every layer under a local recorder, sends calls through them (so the
/// histograms have samples), and renders the exposition.
async fn rendered_metrics() -> String {
    let recorder = palisade::prometheus::builder().unwrap().build_recorder();
    let handle = recorder.handle();
    let (mut client, mut server, catalog) = metrics::with_local_recorder(&recorder, || {
        (
            layers::client("inventory", Behaviour::new(3, Duration::from_millis(5))),
            layers::server("order-api", "inventory"),
            layers::replicated("catalog", Duration::from_millis(5)),
        )
    });
    // Layers record on their handles, registered above: no recorder needed from here.
    for i in 0..40 {
        let _ = client.ready().await.unwrap().call(i).await;
        let _ = server
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(()))
            .await;
    }
    degrade(catalog).await;
    handle.render()
}

/// Drives the replicated `catalog` client through what its dashboards show: the
/// failing replica ejected after three failures in a row (each answered by the
/// fallback), fresh answers cached and hit, then — with every call failing by
/// injected error — a cached answer served stale and an uncached one by the fallback.
async fn degrade(catalog: Replicated) {
    let Replicated {
        mut client,
        faults,
        replicas: _replicas,
    } = catalog;
    let mut call = async |n: u32| client.ready().await.unwrap().call(n).await.unwrap();
    let mut fallbacks = 0;
    let mut n = 0;
    while fallbacks < 3 {
        if call(n).await == u32::MAX {
            fallbacks += 1;
        }
        n += 1;
    }
    for _ in 0..2 {
        for n in 100..105 {
            assert_eq!(call(n).await, n, "the healthy replica answers");
        }
    }
    faults.set(layers::all_errors()).unwrap();
    tokio::time::sleep(layers::FRESH_TTL + Duration::from_secs(1)).await;
    assert_eq!(call(100).await, 100, "a stale answer instead of the error");
    assert_eq!(call(200).await, u32::MAX, "the fallback answer");
    faults.clear();
}

/// The value of the series of `name` with all of `labels` (`k="v"`), if rendered.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(start_paused = true)]
async fn balancer_fallback_and_fault_series_come_from_the_layers() {
    let text = rendered_metrics().await;
    let catalog = r#"downstream="catalog""#;
    let value = |name: &str, label: &str| {
        sample(&text, name, &[catalog, label])
            .unwrap_or_else(|| panic!("{name}{{{label}}} not rendered:\n{text}"))
    };
    assert_eq!(
        value(
            "palisade_balance_ejections_total",
            r#"detector="consecutive_failures""#
        ),
        1.0
    );
    assert_eq!(
        value("palisade_balance_endpoints", r#"state="ejected""#),
        0.0,
        "the ejection is over"
    );
    assert_eq!(
        value("palisade_balance_requests_total", r#"outcome="failure""#),
        3.0
    );
    assert_eq!(
        value("palisade_discovery_updates_total", r#"source="registry""#),
        1.0
    );
    assert_eq!(
        value("palisade_discovery_errors_total", r#"source="registry""#),
        0.0
    );
    assert_eq!(
        value("palisade_fallback_cache_lookups_total", r#"result="hit""#),
        5.0
    );
    assert_eq!(
        value("palisade_fallback_cache_lookups_total", r#"result="stale""#),
        1.0
    );
    assert_eq!(
        value("palisade_fallback_fallbacks_total", r#"reason="failure""#),
        4.0
    );
    assert_eq!(
        value("palisade_fault_injected_total", r#"kind="error""#),
        2.0
    );
    assert_eq!(
        value("palisade_fault_injected_total", r#"kind="abort""#),
        0.0
    );
    assert_eq!(
        value("palisade_fallback_stale_age_seconds_count", ""),
        1.0,
        "one stale answer, its age observed"
    );
}

#[tokio::test(start_paused = true)]
async fn every_metric_the_dashboards_read_is_exported() {
    let text = rendered_metrics().await;
    let mut catalog = Catalog::from_exposition(&text);
    for name in [
        "palisade_breaker_state",
        "palisade_retry_attempts_total",
        "palisade_ratelimit_wait_seconds",
        "palisade_deadline_outbound_refusals_total",
        "palisade_shed_requests_total",
    ] {
        assert!(
            catalog.family(name).is_some(),
            "{name} not rendered:\n{text}"
        );
    }
    assert_eq!(
        catalog
            .family("palisade_ratelimit_wait_seconds")
            .unwrap()
            .kind,
        "histogram",
        "the wait histogram renders as a histogram with Palisade's buckets"
    );
    let demo = Catalog::from_contract(DEMO_CONTRACT).unwrap();
    for name in demo.names() {
        assert!(
            catalog.family(name).is_none(),
            "{name} is exported by a Palisade layer: take it out of DEMO_CONTRACT"
        );
    }
    catalog.merge(demo);
    for (file, dashboard) in palisade_dashboards::dashboards() {
        let problems = check::metrics(&dashboard, &catalog);
        assert!(problems.is_empty(), "{file}:\n{}", problems.join("\n"));
    }
}

#[tokio::test(start_paused = true)]
async fn a_renamed_metric_or_label_value_fails() {
    let text = rendered_metrics().await;
    let mut catalog = Catalog::from_exposition(&text);
    catalog.merge(Catalog::from_contract(DEMO_CONTRACT).unwrap());
    let overview = palisade_dashboards::overview::dashboard_json();
    let mut drifted = palisade_dashboards::to_file_text(&overview);
    drifted = drifted.replacen(
        "palisade_retry_attempts_total",
        "palisade_retry_attempts",
        1,
    );
    drifted = drifted.replacen("outcome!=\\\"completed\\\"", "outcome!=\\\"complete\\\"", 1);
    drifted = drifted.replacen("palisade_balance_endpoints", "palisade_balance_endpoint", 1);
    drifted = drifted.replacen("result=\\\"stale\\\"", "result=\\\"expired\\\"", 1);
    let drifted: serde_json::Value = serde_json::from_str(&drifted).unwrap();
    let problems = check::metrics(&drifted, &catalog);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("unknown metric `palisade_retry_attempts`")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("never has outcome=\"complete\"")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("unknown metric `palisade_balance_endpoint`")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("never has result=\"expired\"")),
        "{problems:?}"
    );
    let mut wrong_type = overview.clone();
    let t = &mut wrong_type["panels"][1]["targets"][0]["expr"];
    *t = serde_json::json!(
        "rate(palisade_breaker_failure_rate_ratio[$__rate_interval]) + palisade_breaker_calls_total"
    );
    let problems = check::metrics(&wrong_type, &catalog);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("rate() of `palisade_breaker_failure_rate_ratio`, a gauge")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("read without rate()")),
        "{problems:?}"
    );
}

/// The rules' expressions (one line each in the file) parse and read known metrics.
#[tokio::test(start_paused = true)]
async fn every_metric_the_rules_read_is_exported() {
    let text = rendered_metrics().await;
    let mut catalog = Catalog::from_exposition(&text);
    catalog.merge(Catalog::from_contract(DEMO_CONTRACT).unwrap());
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/palisade.rules.yml");
    let rules = std::fs::read_to_string(path).unwrap();
    let mut seen = 0;
    for line in rules.lines() {
        let Some(expr) = line.trim().strip_prefix("expr: ") else {
            continue;
        };
        let parsed = promql_parser::parser::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        for name in check::metric_names(&parsed) {
            seen += 1;
            // Recorded series (level:metric:operations) are checked by promtool.
            if !name.contains(':') {
                assert!(
                    catalog.resolve(&name).is_some(),
                    "a rule reads unknown metric {name}"
                );
            }
        }
    }
    assert!(seen >= 10, "only {seen} metric names found in the rules");
}
