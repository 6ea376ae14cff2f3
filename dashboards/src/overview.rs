//! The Palisade overview: symptoms per downstream on top, then one row of causes per
//! downstream.

use serde_json::Value;

use crate::grafana::{
    Layout, Panel, dashboard, datasource_variable, error_ratio_steps, label_values_variable,
    number_variable, query_annotation,
};

/// `metric{downstream=~"$downstream",<extra>}`.
fn s(metric: &str, extra: &str) -> String {
    if extra.is_empty() {
        format!(r#"{metric}{{downstream=~"$downstream"}}"#)
    } else {
        format!(r#"{metric}{{downstream=~"$downstream",{extra}}}"#)
    }
}

/// `rate(<selector>[$__rate_interval])`.
fn r(metric: &str, extra: &str) -> String {
    format!("rate({}[$__rate_interval])", s(metric, extra))
}

/// Calls callers made to each downstream, per second: the retry layer's calls (one
/// per caller call, however many attempts), or, for a downstream without retries,
/// the breaker's calls plus its refusals.
fn requests() -> String {
    format!(
        "sum by (downstream) ({})\nor\nsum by (downstream) ({}) + sum by (downstream) ({})",
        r("palisade_retry_calls_total", ""),
        r("palisade_breaker_calls_total", ""),
        r("palisade_breaker_not_permitted_calls_total", ""),
    )
}

fn error_ratio() -> String {
    format!(
        "sum by (downstream) ({})\n/ sum by (downstream) ({})\nor\n(sum by (downstream) ({}) + sum by (downstream) ({}))\n/ (sum by (downstream) ({}) + sum by (downstream) ({}))",
        r(
            "palisade_retry_calls_total",
            r#"outcome!~"success_first_try|success_after_retry""#
        ),
        r("palisade_retry_calls_total", ""),
        r("palisade_breaker_calls_total", r#"outcome="failure""#),
        r("palisade_breaker_not_permitted_calls_total", ""),
        r("palisade_breaker_calls_total", r#"outcome!="ignored""#),
        r("palisade_breaker_not_permitted_calls_total", ""),
    )
}

/// The overview dashboard.
pub fn dashboard_json() -> Value {
    let mut l = Layout::new();
    l.row("Symptoms", None);
    l.add(
        Panel::timeseries("Request rate", "reqps")
            .describe("Calls made to each downstream per second, as callers see them (the retry layer's calls; for a downstream without retries, the breaker's calls and refusals).")
            .query(&requests(), "{{downstream}}"),
    );
    l.add(
        Panel::timeseries("Error ratio", "percentunit")
            .describe("Share of calls that did not succeed, as callers see them: failures, and Palisade's refusals (circuit open, rate limited, bulkhead full), which the retry layer counts as ignored — as it does answers its classifier ignores, such as 4xx. Green below 1 %, yellow from 1 %, orange from 10 %, red from 50 %.")
            .query(&error_ratio(), "{{downstream}}")
            .thresholds(error_ratio_steps())
            .max(1.0),
    );
    l.add(
        Panel::timeseries("Latency p99", "s")
            .describe("99th percentile of client request duration to each downstream (the `http_client_request_duration_seconds` histogram, `peer` = downstream).")
            .query(
                r#"histogram_quantile(0.99, sum by (peer, le) (rate(http_client_request_duration_seconds_bucket{peer=~"$downstream"}[$__rate_interval])))"#,
                "{{peer}}",
            ),
    );
    l.add(
        Panel::stat("Error ratio now", "percentunit")
            .describe(
                "The Hystrix view: one tile per downstream, coloured by its current error ratio.",
            )
            .query(&error_ratio(), "{{downstream}}")
            .thresholds(error_ratio_steps())
            .size(10, 6),
    );
    l.add(
        Panel::stat("Breakers open / half-open", "short")
            .describe("Circuit breakers open (or forced open) and half-open, over the selected downstreams; a keyed breaker counts each key.")
            .query(
                &format!("sum({}) or vector(0)", s("palisade_breaker_state", r#"state=~"open|forced_open""#)),
                "open",
            )
            .query(
                &format!("sum({}) or vector(0)", s("palisade_breaker_state", r#"state="half_open""#)),
                "half-open",
            )
            .thresholds(serde_json::json!([
                { "color": "green", "value": null },
                { "color": "red", "value": 1 }
            ]))
            .size(6, 6),
    );
    l.add(
        Panel::timeseries("Served by fallback or stale cache", "percentunit")
            .describe("Share of calls answered by a fallback (a default answer) or by a stale cache entry instead of the downstream.")
            .query(
                &format!(
                    "sum by (downstream) ({} or {})\n/ sum by (downstream) ({})",
                    r("palisade_fallback_fallbacks_total", ""),
                    r("palisade_fallback_cache_lookups_total", "result=\"stale\""),
                    r("palisade_retry_calls_total", "")
                ),
                "{{downstream}}",
            )
            .max(1.0)
            .size(8, 6),
    );

    l.row("$downstream", Some("downstream"));
    l.add(
        Panel::state_timeline("Breaker state", "none")
            .describe("Which state the breaker is in over time, one band per state (with several breakers for this downstream — keyed, or one per service — every state some breaker is in).")
            .query(
                &format!("sum by (state) ({})", s("palisade_breaker_state", "")),
                "{{state}}",
            )
            .state_colour("closed", "green")
            .state_colour("half_open", "yellow")
            .state_colour("open", "red")
            .state_colour("forced_open", "dark-red")
            .state_colour("disabled", "blue")
            .state_colour("metrics_only", "purple"),
    );
    l.add(
        Panel::timeseries("Breaker transitions", "short")
            .describe("State changes in each interval, by the state entered.")
            .query(
                &format!(
                    "sum by (to) (increase({}[$__rate_interval])) > 0",
                    s("palisade_breaker_transitions_total", "")
                ),
                "to {{to}}",
            )
            .bars(),
    );
    l.add(
        Panel::timeseries("Calls by outcome", "reqps")
            .describe("Calls the breaker let through, by classified outcome, and calls it refused (rejected, dashed) — refusals are not failures of the downstream.")
            .query(
                &format!("sum by (outcome) ({})", r("palisade_breaker_calls_total", "")),
                "{{outcome}}",
            )
            .query(
                &format!("sum({})", r("palisade_breaker_not_permitted_calls_total", "")),
                "rejected",
            )
            .colour("success", "green", false)
            .colour("failure", "red", false)
            .colour("ignored", "text", false)
            .colour("rejected", "purple", true),
    );
    l.add(
        Panel::timeseries("Failure and slow-call rate vs threshold", "percentunit")
            .describe("The breaker's window rates (the highest, where several services have a breaker for this downstream) against the thresholds it opens at. Palisade exports no threshold metric: the dashed lines are the $failure_rate_threshold and $slow_call_rate_threshold variables — set them to the breaker's configuration.")
            .query(
                &format!("max({})", s("palisade_breaker_failure_rate_ratio", "")),
                "failure rate",
            )
            .query(
                &format!("max({})", s("palisade_breaker_slow_call_rate_ratio", "")),
                "slow-call rate",
            )
            .query("vector($failure_rate_threshold)", "failure-rate threshold")
            .query("vector($slow_call_rate_threshold)", "slow-call threshold")
            .colour("failure rate", "red", false)
            .colour("slow-call rate", "orange", false)
            .colour("failure-rate threshold", "red", true)
            .colour("slow-call threshold", "orange", true)
            .max(1.0),
    );
    l.add(
        Panel::timeseries("Retry amplification", "suffix:×")
            .describe("Attempts sent per call (attempts ÷ calls): 1 means no retries; above 2 the retries double the downstream's load.")
            .query(
                &format!(
                    "sum({})\n/ sum({})",
                    r("palisade_retry_attempts_total", ""),
                    r("palisade_retry_calls_total", "")
                ),
                "attempts per call",
            )
            .thresholds(serde_json::json!([
                { "color": "green", "value": null },
                { "color": "yellow", "value": 1.5 },
                { "color": "red", "value": 2 }
            ])),
    );
    l.add(
        Panel::timeseries("Retry budget and give-ups", "reqps")
            .describe("Retries the budget refused, and failed calls not retried further, by why.")
            .query(
                &format!("sum({})", r("palisade_retry_budget_exhausted_total", "")),
                "budget exhausted",
            )
            .query(
                &format!(
                    "sum by (reason) ({})",
                    r("palisade_retry_giveups_total", "")
                ),
                "give-up: {{reason}}",
            )
            .colour("budget exhausted", "red", false),
    );
    l.add(
        Panel::timeseries("Timeouts and deadline rejections", "reqps")
            .describe("Calls cut off by the timeout or by the request's deadline, calls refused before sending with too little time left, and inbound requests refused because their deadline had passed.")
            .query(
                &format!(
                    "sum by (outcome) ({})",
                    r("palisade_timeout_calls_total", r#"outcome!="completed""#)
                ),
                "{{outcome}}",
            )
            .query(
                &format!("sum({})", r("palisade_deadline_outbound_refusals_total", "")),
                "refused before sending",
            )
            .query(
                &format!("sum({})", r("palisade_deadline_outbound_expired_total", "")),
                "expired in flight",
            )
            .query(
                &format!("sum({})", r("palisade_deadline_inbound_refusals_total", "")),
                "inbound already expired",
            ),
    );
    l.add(
        Panel::timeseries("Rate limiter", "reqps")
            .describe("Calls the rate limiter let through (at once or after waiting) and refused.")
            .query(
                &format!(
                    "sum by (outcome) ({})",
                    r("palisade_ratelimit_calls_total", "")
                ),
                "{{outcome}}",
            )
            .colour("permitted", "green", false)
            .colour("permitted_after_wait", "yellow", false)
            .colour("rejected", "purple", true),
    );
    l.add(
        Panel::timeseries("Rate limiter wait p99", "s")
            .describe("99th percentile of the time calls waited for a permit (calls that waited).")
            .query(
                &format!(
                    "histogram_quantile(0.99, sum by (le) ({}))",
                    r("palisade_ratelimit_wait_seconds_bucket", "")
                ),
                "wait p99",
            ),
    );
    l.add(
        Panel::timeseries("Concurrency limit vs in flight", "short")
            .describe("The bulkhead's and the adaptive limiter's limits (dashed) against the calls holding a permit, and calls queued at the bulkhead.")
            .query(&format!("sum({})", s("palisade_bulkhead_limit", "")), "bulkhead limit")
            .query(&format!("sum({})", s("palisade_bulkhead_in_flight", "")), "bulkhead in flight")
            .query(&format!("sum({})", s("palisade_bulkhead_queued", "")), "bulkhead queued")
            .query(&format!("sum({})", s("palisade_adaptive_limit", "")), "adaptive limit")
            .query(&format!("sum({})", s("palisade_adaptive_in_flight", "")), "adaptive in flight")
            .colour("bulkhead limit", "red", true)
            .colour("adaptive limit", "orange", true),
    );
    l.add(
        Panel::timeseries("Limiter rejections", "reqps")
            .describe("Calls refused by the bulkhead (full, or waited too long), the adaptive limit, the client-side throttle and inbound load shedding.")
            .query(
                &format!(
                    "sum by (outcome) ({})",
                    r("palisade_bulkhead_calls_total", r#"outcome!="permitted""#)
                ),
                "bulkhead {{outcome}}",
            )
            .query(
                &format!("sum({})", r("palisade_adaptive_calls_total", r#"outcome="rejected""#)),
                "adaptive rejected",
            )
            .query(
                &format!("sum({})", r("palisade_throttle_calls_total", r#"outcome="throttled""#)),
                "throttled",
            )
            .query(
                &format!(
                    "sum by (outcome) ({})",
                    r("palisade_shed_requests_total", r#"outcome!="admitted""#)
                ),
                "{{outcome}}",
            ),
    );
    l.add(
        Panel::timeseries("Endpoints", "short")
            .describe("Endpoints of the downstream by state (ready, ejected by outlier detection, warming up), and whether the balancer is in panic mode (balancing over all endpoints because too few are healthy).")
            .query(
                &format!("sum by (state) ({})", s("palisade_balance_endpoints", "")),
                "{{state}}",
            )
            .query(&format!("max({})", s("palisade_balance_panic_mode", "")), "panic mode")
            .colour("ready", "green", false)
            .colour("ejected", "red", false)
            .colour("slow_start", "yellow", false)
            .stacked(),
    );
    l.add(
        Panel::timeseries("Discovery freshness", "s")
            .describe("Seconds since the endpoint set last changed or was confirmed; the stale series is 1 while the source is unreachable and the last known set is served.")
            .query(
                &format!(
                    "time() - max({})",
                    s("palisade_discovery_last_update_timestamp_seconds", "")
                ),
                "since last update",
            )
            .query(&format!("max({})", s("palisade_discovery_stale", "")), "stale")
            .query(
                &format!("sum({})", r("palisade_discovery_errors_total", "")),
                "errors/s",
            ),
    );
    l.add(
        Panel::timeseries("Cache hit and stale ratios", "percentunit")
            .describe("Share of cache lookups that found a fresh entry (hit) or served an expired one because the downstream failed (stale).")
            .query(
                &format!(
                    "sum by (result) ({})\n/ ignoring (result) group_left sum({})",
                    r("palisade_fallback_cache_lookups_total", r#"result=~"hit|stale""#),
                    r("palisade_fallback_cache_lookups_total", "")
                ),
                "{{result}}",
            )
            .colour("hit", "green", false)
            .colour("stale", "orange", false)
            .max(1.0),
    );
    l.add(
        Panel::timeseries("Degraded answers by reason", "reqps")
            .describe("Calls answered by the fallback, by what went wrong, and by a stale cache entry; and faults injected on purpose (fault injection enabled).")
            .query(
                &format!(
                    "sum by (reason) ({})\nor label_replace(sum({}), \"reason\", \"stale cache\", \"\", \"\")",
                    r("palisade_fallback_fallbacks_total", ""),
                    r("palisade_fallback_cache_lookups_total", "result=\"stale\"")
                ),
                "{{reason}}",
            )
            .query(
                &format!("sum by (kind) ({})", r("palisade_fault_injected_total", "")),
                "injected {{kind}}",
            ),
    );

    dashboard(
        "palisade-overview",
        "Palisade overview",
        "Symptoms per downstream (request rate, error ratio, p99, open breakers, fallback share), then one row of causes per downstream.",
        vec![
            datasource_variable(),
            label_values_variable(
                "downstream",
                "downstream",
                r#"{__name__=~"palisade_.+"}"#,
                "Downstream",
            ),
            number_variable(
                "failure_rate_threshold",
                "Failure-rate threshold",
                &["0.5", "0.25", "0.4", "0.6", "0.75"],
                "The breakers' failure_rate_threshold (not exported as a metric): drawn as a line.",
            ),
            number_variable(
                "slow_call_rate_threshold",
                "Slow-call threshold",
                &["1", "0.5", "0.8", "0.9"],
                "The breakers' slow-call rate threshold (not exported as a metric): drawn as a line.",
            ),
        ],
        vec![query_annotation(
            "Breaker opened",
            &format!(
                "sum by (downstream) (increase({}[$__rate_interval])) > 0",
                s("palisade_breaker_transitions_total", r#"to="open""#)
            ),
            "{{downstream}} breaker opened",
            "red",
        )],
        l.into_panels(),
    )
}
