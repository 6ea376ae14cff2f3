//! The demo's metrics: OpenTelemetry-style HTTP server and client durations, the
//! order outcomes and the runner's scenario gauge, on one process-wide Prometheus
//! recorder.
//!
//! The `metrics-exporter-prometheus` recorder is global to a process. In the
//! all-in-one mode every service's `/metrics` serves the same rendering, and the
//! demo's series carry a `service` label saying which service recorded them.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `http_server_request_duration_seconds` | histogram | `service`, `http_route`, `http_request_method`, `http_response_status_code` |
//! | `http_client_request_duration_seconds` | histogram | `service`, `peer`, `http_request_method`, `http_response_status_code` (`none` when no answer came) |
//! | `demo_orders_total` | counter | `outcome` (placed, failed, compensated) |
//! | `demo_scenario_active` | gauge | `scenario`, `mode` |

use std::collections::HashMap;
use std::sync::{LazyLock, OnceLock, RwLock};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use metrics::Histogram;
use palisade::prometheus::PrometheusHandle;
use tokio::time::Instant;

/// The server request duration histogram.
pub const SERVER_DURATION: &str = "http_server_request_duration_seconds";
/// The client request duration histogram.
pub const CLIENT_DURATION: &str = "http_client_request_duration_seconds";
/// The order outcome counter.
pub const ORDERS: &str = "demo_orders_total";
/// The runner's scenario gauge.
pub const SCENARIO_ACTIVE: &str = "demo_scenario_active";

/// What became of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderOutcome {
    /// Completed with every reservation held.
    Placed,
    /// Not placed.
    Failed,
    /// Not placed, and what had been reserved for it was released.
    Compensated,
}

impl OrderOutcome {
    /// Every outcome.
    pub const ALL: [OrderOutcome; 3] = [Self::Placed, Self::Failed, Self::Compensated];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Placed => "placed",
            Self::Failed => "failed",
            Self::Compensated => "compensated",
        }
    }
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the same
/// handle) and registers the demo's series at zero. `None` when another recorder
/// was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = palisade::prometheus::install_recorder().ok();
            describe();
            for outcome in OrderOutcome::ALL {
                metrics::counter!(ORDERS, "outcome" => outcome.as_str()).absolute(0);
            }
            for scenario in crate::runner::SCENARIO_NAMES {
                for mode in crate::Mode::ALL {
                    set_scenario_active(scenario, mode.as_str(), false);
                }
            }
            handle
        })
        .clone()
}

/// Help text for every demo series (Prometheus' exposition format wants it).
fn describe() {
    metrics::describe_counter!(
        ORDERS,
        "Orders by how they ended: placed, failed (nothing held), compensated."
    );
    metrics::describe_gauge!(
        SCENARIO_ACTIVE,
        "1 while the fault-injection runner runs this scenario in this mode."
    );
    metrics::describe_histogram!(
        SERVER_DURATION,
        metrics::Unit::Seconds,
        "Time each service took to answer a request, by route, method and status."
    );
    metrics::describe_histogram!(
        CLIENT_DURATION,
        metrics::Unit::Seconds,
        "Time each outbound call took, by peer, method and status (none: no answer)."
    );
}

/// Counts an order outcome.
pub fn count_order(outcome: OrderOutcome) {
    metrics::counter!(ORDERS, "outcome" => outcome.as_str()).increment(1);
}

/// Sets `demo_scenario_active{scenario, mode}`.
pub fn set_scenario_active(scenario: &'static str, mode: &'static str, active: bool) {
    metrics::gauge!(SCENARIO_ACTIVE, "scenario" => scenario, "mode" => mode).set(if active {
        1.0
    } else {
        0.0
    });
}

/// Whether the demo's recorder is the process's: only then are series handles kept
/// (a handle from another recorder, or from before one was installed, would stick).
fn keep_handles() -> bool {
    matches!(HANDLE.get(), Some(Some(_)))
}

/// Client series by (service, peer, method, status).
type ClientSeries = HashMap<(&'static str, &'static str, &'static str, Option<u16>), Histogram>;
/// Server series by (service, method, status), then route.
type ServerSeries = HashMap<(&'static str, &'static str, u16), HashMap<Box<str>, Histogram>>;

// The histogram handles of the demo's series, kept once registered: a request finds
// its series here instead of building its labels (two strings allocated) and having
// the recorder look them up. Every label comes from a closed set (services, peers,
// route templates, methods, status codes), so the maps stay small. A series still
// appears on its first use, as before.
static CLIENT_SERIES: LazyLock<RwLock<ClientSeries>> = LazyLock::new(Default::default);
static SERVER_SERIES: LazyLock<RwLock<ServerSeries>> = LazyLock::new(Default::default);

/// Records one client call: `status` is `None` when no answer came.
pub fn record_client(
    service: &'static str,
    peer: &'static str,
    method: &http::Method,
    status: Option<http::StatusCode>,
    started: Instant,
) {
    let seconds = started.elapsed().as_secs_f64();
    let method = method_label(method);
    let status = status.map(|s| s.as_u16());
    let key = (service, peer, method, status);
    let register = || {
        let status = status.map_or_else(|| "none".to_owned(), |s| s.to_string());
        metrics::histogram!(
            CLIENT_DURATION,
            "service" => service,
            "peer" => peer,
            "http_request_method" => method,
            "http_response_status_code" => status,
        )
    };
    if !keep_handles() {
        register().record(seconds);
        return;
    }
    if let Ok(series) = CLIENT_SERIES.read()
        && let Some(histogram) = series.get(&key)
    {
        histogram.record(seconds);
        return;
    }
    let histogram = register();
    histogram.record(seconds);
    if let Ok(mut series) = CLIENT_SERIES.write() {
        series.insert(key, histogram);
    }
}

/// Records one request served by `service`.
fn record_server(
    service: &'static str,
    route: &str,
    method: &'static str,
    status: u16,
    seconds: f64,
) {
    let register = || {
        metrics::histogram!(
            SERVER_DURATION,
            "service" => service,
            "http_route" => route.to_owned(),
            "http_request_method" => method,
            "http_response_status_code" => status.to_string(),
        )
    };
    if !keep_handles() {
        register().record(seconds);
        return;
    }
    let key = (service, method, status);
    if let Ok(series) = SERVER_SERIES.read()
        && let Some(histogram) = series.get(&key).and_then(|routes| routes.get(route))
    {
        histogram.record(seconds);
        return;
    }
    let histogram = register();
    histogram.record(seconds);
    if let Ok(mut series) = SERVER_SERIES.write() {
        series
            .entry(key)
            .or_default()
            .insert(route.into(), histogram);
    }
}

/// The method label: the standard methods by name, anything else `_OTHER`.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::PATCH => "PATCH",
        http::Method::OPTIONS => "OPTIONS",
        _ => "_OTHER",
    }
}

/// Middleware recording `http_server_request_duration_seconds` for `service`
/// (route templates only: a request that matched no route is `unmatched`).
pub async fn server_metrics(
    State(service): State<&'static str>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    // The route template is shared (an `Arc<str>` inside), so keeping it is cheap.
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = method_label(req.method());
    let res = next.run(req).await;
    record_server(
        service,
        route.as_ref().map_or("unmatched", MatchedPath::as_str),
        method,
        res.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    res
}

/// `GET /metrics`: the Prometheus text exposition of the process.
pub fn metrics_router() -> Router {
    Router::new().route(
        "/metrics",
        get(|| async {
            match install() {
                Some(handle) => (http::StatusCode::OK, handle.render()),
                None => (
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    "another metrics recorder is installed in this process\n".to_owned(),
                ),
            }
        }),
    )
}
