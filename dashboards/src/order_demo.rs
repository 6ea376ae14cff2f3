//! The order demo's business view: orders, the gateway's RED metrics per route,
//! per-service latency, with the fault-injection scenarios as annotations.

use serde_json::{Value, json};

use crate::grafana::{
    Layout, Panel, dashboard, datasource_variable, error_ratio_steps, label_values_variable,
    query_annotation,
};

const GATEWAY: &str = r#"http_server_request_duration_seconds_count{service="gateway"}"#;

/// The order demo dashboard.
pub fn dashboard_json() -> Value {
    let mut l = Layout::new();
    l.row("Orders", None);
    l.add(
        Panel::timeseries("Orders per second", "suffix: orders/s")
            .describe("Orders placed, failed, and compensated (a failed order whose earlier steps were undone).")
            .query(
                "sum by (outcome) (rate(demo_orders_total[$__rate_interval]))",
                "{{outcome}}",
            )
            .colour("placed", "green", false)
            .colour("failed", "red", false)
            .colour("compensated", "orange", false)
            .size(12, 8),
    );
    l.add(
        Panel::timeseries("Order failure ratio", "percentunit")
            .describe("Share of finished orders that failed (compensated orders count as failed).")
            .query(
                "sum(rate(demo_orders_total{outcome=~\"failed|compensated\"}[$__rate_interval]))\n/ sum(rate(demo_orders_total[$__rate_interval]))",
                "failed",
            )
            .thresholds(error_ratio_steps())
            .max(1.0)
            .size(6, 8),
    );
    l.add(
        Panel::state_timeline("Fault scenario", "none")
            .describe("The fault-injection scenario running, and whether the services use Palisade or plain clients.")
            .query("max by (scenario, mode) (demo_scenario_active)", "{{scenario}} ({{mode}})")
            .thresholds(json!([
                { "color": "transparent", "value": null },
                { "color": "orange", "value": 1 }
            ]))
            .size(6, 8),
    );

    l.row("Gateway (RED per route)", None);
    l.add(
        Panel::timeseries("Gateway request rate", "reqps")
            .describe("Requests the gateway answered per second, by route template.")
            .query(
                &format!("sum by (http_route) (rate({GATEWAY}[$__rate_interval]))"),
                "{{http_route}}",
            ),
    );
    l.add(
        Panel::timeseries("Gateway error ratio", "percentunit")
            .describe("Share of gateway responses with a 5xx status, by route. Green below 1 %, yellow from 1 %, orange from 10 %, red from 50 %.")
            .query(
                "sum by (http_route) (rate(http_server_request_duration_seconds_count{service=\"gateway\",http_response_status_code=~\"5..\"}[$__rate_interval]))\n/ sum by (http_route) (rate(http_server_request_duration_seconds_count{service=\"gateway\"}[$__rate_interval]))",
                "{{http_route}}",
            )
            .thresholds(error_ratio_steps())
            .max(1.0),
    );
    l.add(
        Panel::timeseries("Gateway latency p50 / p99", "s")
            .describe("Median and 99th percentile of gateway request duration, by route.")
            .query(
                "histogram_quantile(0.99, sum by (http_route, le) (rate(http_server_request_duration_seconds_bucket{service=\"gateway\"}[$__rate_interval])))",
                "p99 {{http_route}}",
            )
            .query(
                "histogram_quantile(0.5, sum by (http_route, le) (rate(http_server_request_duration_seconds_bucket{service=\"gateway\"}[$__rate_interval])))",
                "p50 {{http_route}}",
            ),
    );
    l.add(
        Panel::timeseries("Gateway responses by status", "reqps")
            .describe("Gateway responses per second by status code: 429 and 503 are Palisade's refusals (rate limited, shed or circuit open), 504 a deadline.")
            .query(
                &format!(
                    "sum by (http_response_status_code) (rate({GATEWAY}[$__rate_interval]))"
                ),
                "{{http_response_status_code}}",
            )
            .stacked()
            .size(24, 7),
    );

    l.row("Services", None);
    l.add(
        Panel::heatmap("Latency: $service", "s")
            .describe("Distribution of the service's request durations over time (all routes).")
            .heatmap_query(
                "sum by (le) (rate(http_server_request_duration_seconds_bucket{service=~\"$service\"}[$__rate_interval]))",
            )
            .repeat("service")
            .size(6, 8),
    );
    l.add(
        Panel::timeseries("Service error ratio", "percentunit")
            .describe("Share of 5xx responses each service answered.")
            .query(
                "sum by (service) (rate(http_server_request_duration_seconds_count{service=~\"$service\",http_response_status_code=~\"5..\"}[$__rate_interval]))\n/ sum by (service) (rate(http_server_request_duration_seconds_count{service=~\"$service\"}[$__rate_interval]))",
                "{{service}}",
            )
            .thresholds(error_ratio_steps())
            .max(1.0)
            .size(12, 8),
    );
    l.add(
        Panel::timeseries("Outbound calls p99 by peer", "s")
            .describe("99th percentile of the duration of calls each service makes to its downstreams (after Palisade's layers: retries, fallbacks and refusals included).")
            .query(
                "histogram_quantile(0.99, sum by (service, peer, le) (rate(http_client_request_duration_seconds_bucket{service=~\"$service\"}[$__rate_interval])))",
                "{{service}} → {{peer}}",
            )
            .size(12, 8),
    );

    dashboard(
        "palisade-order-demo",
        "Palisade order demo",
        "The order demo's business view: orders, the gateway's RED metrics per route and per-service latency, with fault-injection scenarios as annotations.",
        vec![
            datasource_variable(),
            label_values_variable(
                "service",
                "service",
                "http_server_request_duration_seconds_count",
                "Service",
            ),
        ],
        vec![query_annotation(
            "Fault scenario",
            "max by (scenario, mode) (demo_scenario_active) > 0",
            "{{scenario}} ({{mode}})",
            "orange",
        )],
        l.into_panels(),
    )
}
