//! Every metric the dashboards read exists, with that type and those label values:
//! the real `/metrics` text of every Palisade layer on main (breaker, retry, hedge,
//! timeout, deadlines, rate limit, bulkhead, adaptive limit, throttle, shedding),
//! rendered by metrics-exporter-prometheus with Palisade's buckets, plus — for the
//! crates not on main yet — the contract table `catalog::PENDING_CONTRACT`.

#[path = "support/layers.rs"]
#[allow(dead_code)]
mod layers;

use layers::Behaviour;
use palisade_dashboards::catalog::{Catalog, PENDING_CONTRACT};
use palisade_dashboards::check;
use std::time::Duration;
use tower::{Service, ServiceExt};

/// Builds every layer under a local recorder, sends calls through them (so the
/// histograms have samples), and renders the exposition.
async fn rendered_metrics() -> String {
    let recorder = palisade::prometheus::builder().unwrap().build_recorder();
    let handle = recorder.handle();
    let (mut client, mut server) = metrics::with_local_recorder(&recorder, || {
        (
            layers::client("inventory", Behaviour::new(3, Duration::from_millis(5))),
            layers::server("order-api", "inventory"),
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
    handle.render()
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
    let pending = Catalog::from_contract(PENDING_CONTRACT).unwrap();
    for name in pending.names() {
        assert!(
            catalog.family(name).is_none(),
            "{name} is now exported by a crate on main: take it out of PENDING_CONTRACT"
        );
    }
    catalog.merge(pending);
    for (file, dashboard) in palisade_dashboards::dashboards() {
        let problems = check::metrics(&dashboard, &catalog);
        assert!(problems.is_empty(), "{file}:\n{}", problems.join("\n"));
    }
}

#[tokio::test(start_paused = true)]
async fn a_renamed_metric_or_label_value_fails() {
    let text = rendered_metrics().await;
    let mut catalog = Catalog::from_exposition(&text);
    catalog.merge(Catalog::from_contract(PENDING_CONTRACT).unwrap());
    let overview = palisade_dashboards::overview::dashboard_json();
    let mut drifted = palisade_dashboards::to_file_text(&overview);
    drifted = drifted.replacen(
        "palisade_retry_attempts_total",
        "palisade_retry_attempts",
        1,
    );
    drifted = drifted.replacen("outcome!=\\\"completed\\\"", "outcome!=\\\"complete\\\"", 1);
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
    catalog.merge(Catalog::from_contract(PENDING_CONTRACT).unwrap());
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
