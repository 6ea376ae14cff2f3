//! The services: routes, handlers and the inbound stack each is served with.

use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::{Path, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use palisade::limit::rate::RateLimitLayer;
use palisade::limit::shed::LoadShedLayer;
use palisade::retry::http::{IDEMPOTENCY_KEY_HEADER, NO_RETRY_HEADER, NoRetryLayer};
use palisade::timeout::InboundDeadlineLayer;
use palisade::{ConfigError, Error};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tower::ServiceBuilder;

use crate::faults;
use crate::stack::{self, Client, Mode};
use crate::store::{self, Db, Reserve};

pub mod order;

/// The API keys the gateway accepts.
pub const API_KEYS: [&str; 4] = ["demo-key-0", "demo-key-1", "demo-key-2", "demo-key-3"];
/// The API key header.
pub const API_KEY_HEADER: &str = "x-api-key";
/// Customers seeded in the customer store (ids 1..=CUSTOMERS).
pub const CUSTOMERS: i64 = 50;
/// Products seeded in the catalog and inventory (skus 1..=SKUS).
pub const SKUS: i64 = 8;
/// Credit of each seeded customer and stock of each seeded sku: ample, so a run
/// never fails an order for lack of either.
pub const PLENTY: i64 = 1_000_000_000_000;

/// The schema of the catalog.
pub const CATALOG_SCHEMA: &str =
    "CREATE TABLE IF NOT EXISTS prices (sku INTEGER PRIMARY KEY, price_cents INTEGER NOT NULL);";

/// The price of `sku` in the seeded catalog.
pub fn seeded_price(sku: i64) -> i64 {
    sku * 100 + 99
}

/// Turns a Palisade refusal into its HTTP answer (status, `Retry-After`,
/// `x-palisade-rejection`), any other error into 500.
pub fn error_response(err: Error) -> Response {
    match err.rejection() {
        Some(rejection) => rejection.to_http_response::<axum::body::Body>(),
        None => (StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")).into_response(),
    }
}

async fn handle_error(err: Error) -> Response {
    error_response(err)
}

/// The gateway's inbound limits (Palisade mode).
#[derive(Debug, Clone, Copy)]
pub struct GatewayLimits {
    /// Requests per second each API key may send.
    pub per_client_rate: u32,
    /// Requests in flight before the gateway sheds.
    pub max_in_flight: usize,
}

/// Wraps a service's business routes in its inbound stack, then adds `/metrics`
/// and the admin API (which bypass the inbound stack):
///
/// ```text
/// metrics → [gateway: API key → keyed rate limit → load shed] → deadline
///   → no-retry marking → fault injection → handler
/// ```
///
/// In [`Mode::Plain`] only metrics, the API key check and fault injection remain.
pub fn assemble(
    service: &'static str,
    business: Router,
    faults: faults::FaultLayer,
    token: Arc<str>,
    mode: Mode,
    gateway: Option<GatewayLimits>,
) -> Result<Router, ConfigError> {
    let handle = faults.handle();
    let mut app = business.layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(faults::handle_fault_error))
            .layer(faults),
    );
    if mode == Mode::Palisade {
        let deadline = InboundDeadlineLayer::builder(service)
            .max(Duration::from_secs(10))
            .build()?;
        app = app.layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(handle_error))
                .layer(deadline)
                .layer(NoRetryLayer),
        );
        if let Some(limits) = gateway {
            let rate = RateLimitLayer::builder("gateway")
                .rate(limits.per_client_rate, Duration::from_secs(1))
                .burst(limits.per_client_rate.div_ceil(4).max(1))
                // A client a little over its rate waits briefly instead of a 429.
                .max_wait(Duration::from_millis(50))
                .build_keyed(
                    |req: &Request| req.headers().get(API_KEY_HEADER).cloned(),
                    1024,
                    Duration::from_secs(300),
                )?;
            let shed = LoadShedLayer::builder("gateway")
                .max_in_flight(limits.max_in_flight)
                .queue_target(Duration::from_millis(20))
                .build()?;
            app = app.layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(handle_error))
                    .layer(rate)
                    .layer(shed),
            );
        }
    }
    if gateway.is_some() {
        app = app.layer(middleware::from_fn(require_api_key));
    }
    Ok(app
        .layer(middleware::from_fn_with_state(
            service,
            crate::obs::server_metrics,
        ))
        .merge(crate::obs::metrics_router())
        .merge(faults::admin_router(handle, token)))
}

async fn require_api_key(req: Request, next: Next) -> Response {
    let known = req.headers().get(API_KEY_HEADER).is_some_and(|k| {
        API_KEYS
            .iter()
            .any(|known| k.as_bytes() == known.as_bytes())
    });
    if known {
        next.run(req).await
    } else {
        (StatusCode::UNAUTHORIZED, "missing or unknown x-api-key\n").into_response()
    }
}

fn store_failed(e: store::StoreError) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
}

fn reserve_answer(r: Result<Reserve, store::StoreError>) -> Response {
    match r {
        Ok(Reserve::Held) => {
            (StatusCode::OK, Json(serde_json::json!({"status": "held"}))).into_response()
        }
        Ok(Reserve::AlreadyReleased) => {
            (StatusCode::CONFLICT, "already released\n").into_response()
        }
        Ok(Reserve::UnknownKey) => (StatusCode::NOT_FOUND, "unknown\n").into_response(),
        Ok(Reserve::Insufficient) => (StatusCode::CONFLICT, "insufficient\n").into_response(),
        Err(e) => store_failed(e),
    }
}

/// The largest amount (cents, or units of stock) one hold may take.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000;

/// The answer refusing a hold whose amount is not within `0..=MAX_AMOUNT` (a
/// negative one would credit the balance it is taken from).
fn refuse_amount(field: &str, value: i64) -> Option<Response> {
    if (0..=MAX_AMOUNT).contains(&value) {
        None
    } else {
        Some(
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{field}: {value} is not within 0..={MAX_AMOUNT}\n"),
            )
                .into_response(),
        )
    }
}

fn release_answer(r: Result<(), store::StoreError>) -> Response {
    match r {
        Ok(()) => (
            StatusCode::OK,
            Json(serde_json::json!({"status": "released"})),
        )
            .into_response(),
        Err(e) => store_failed(e),
    }
}

/// `{"order_id": ...}`
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRef {
    /// The order.
    pub order_id: String,
}

/// A credit hold.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreditHold {
    /// The order.
    pub order_id: String,
    /// The customer.
    pub customer_id: i64,
    /// Cents.
    pub amount: i64,
}

/// A stock hold.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockHold {
    /// The order.
    pub order_id: String,
    /// The product.
    pub sku: i64,
    /// Units.
    pub qty: i64,
}

/// A payment or shipment for an order.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Charge {
    /// The order.
    pub order_id: String,
    /// The customer.
    pub customer_id: i64,
    /// Cents (0 for a shipment).
    pub amount: i64,
}

/// Opens the customer store and seeds it.
pub fn customer_store(dir: &std::path::Path) -> Result<Arc<Db>, store::StoreError> {
    let db = Db::open(&dir.join("customer.db"), store::HOLDS_SCHEMA)?;
    for id in 1..=CUSTOMERS {
        store::seed_balance(&db, id, PLENTY)?;
    }
    Ok(db)
}

/// Opens the inventory store and seeds it.
pub fn inventory_store(dir: &std::path::Path) -> Result<Arc<Db>, store::StoreError> {
    let db = Db::open(&dir.join("inventory.db"), store::HOLDS_SCHEMA)?;
    for sku in 1..=SKUS {
        store::seed_balance(&db, sku, PLENTY)?;
    }
    Ok(db)
}

/// Opens a holds-only store (payment, shipment).
pub fn holds_store(dir: &std::path::Path, service: &str) -> Result<Arc<Db>, store::StoreError> {
    Db::open(&dir.join(format!("{service}.db")), store::HOLDS_SCHEMA)
}

/// Opens the catalog store and seeds it.
pub fn catalog_store(dir: &std::path::Path) -> Result<Arc<Db>, store::StoreError> {
    let db = Db::open(&dir.join("catalog.db"), CATALOG_SCHEMA)?;
    db.with(|conn| {
        for sku in 1..=SKUS {
            conn.execute(
                "INSERT INTO prices (sku, price_cents) VALUES (?1, ?2) ON CONFLICT(sku) DO NOTHING",
                rusqlite::params![sku, seeded_price(sku)],
            )?;
        }
        Ok(())
    })?;
    Ok(db)
}

/// customer: `GET /customers/{id}`, `POST /credit/reserve`, `POST /credit/release`.
pub fn customer(db: Arc<Db>) -> Router {
    Router::new()
        .route(
            "/customers/{id}",
            get(
                |State(db): State<Arc<Db>>, Path(id): Path<i64>| async move {
                    let credit = db.with(|c| {
                        use rusqlite::OptionalExtension;
                        c.query_row("SELECT amount FROM balances WHERE key = ?1", [id], |r| {
                            r.get::<_, i64>(0)
                        })
                        .optional()
                    });
                    match credit {
                        Ok(Some(credit)) => Json(serde_json::json!({
                            "id": id, "name": format!("Customer {id}"), "credit_cents": credit
                        }))
                        .into_response(),
                        Ok(None) => (StatusCode::NOT_FOUND, "unknown customer\n").into_response(),
                        Err(e) => store_failed(e),
                    }
                },
            ),
        )
        .route(
            "/credit/reserve",
            post(
                |State(db): State<Arc<Db>>, Json(h): Json<CreditHold>| async move {
                    if let Some(refused) = refuse_amount("amount", h.amount) {
                        return refused;
                    }
                    reserve_answer(store::reserve(
                        &db,
                        &h.order_id,
                        h.customer_id,
                        h.amount,
                        true,
                    ))
                },
            ),
        )
        .route(
            "/credit/release",
            post(
                |State(db): State<Arc<Db>>, Json(r): Json<OrderRef>| async move {
                    release_answer(store::release(&db, &r.order_id, true))
                },
            ),
        )
        .with_state(db)
}

/// inventory: `POST /stock/reserve`, `POST /stock/release`.
pub fn inventory(db: Arc<Db>) -> Router {
    Router::new()
        .route(
            "/stock/reserve",
            post(
                |State(db): State<Arc<Db>>, Json(h): Json<StockHold>| async move {
                    if let Some(refused) = refuse_amount("qty", h.qty) {
                        return refused;
                    }
                    reserve_answer(store::reserve(&db, &h.order_id, h.sku, h.qty, true))
                },
            ),
        )
        .route(
            "/stock/release",
            post(
                |State(db): State<Arc<Db>>, Json(r): Json<OrderRef>| async move {
                    release_answer(store::release(&db, &r.order_id, true))
                },
            ),
        )
        .with_state(db)
}

/// How much payment can process: `workers` payments at once, each taking
/// `service_time` (zero: no wait at all); the rest queue (first come, first
/// served, without bound).
#[derive(Debug, Clone)]
pub struct PaymentCapacity {
    workers: Arc<Semaphore>,
    service_time: Duration,
}

impl PaymentCapacity {
    /// `workers` at once, each for `service_time`.
    pub fn new(workers: usize, service_time: Duration) -> Self {
        Self {
            workers: Arc::new(Semaphore::new(workers)),
            service_time,
        }
    }

    /// Payments per second at full use.
    pub fn per_second(workers: usize, service_time: Duration) -> f64 {
        workers as f64 / service_time.as_secs_f64()
    }
}

/// payment: `POST /payments`, `POST /payments/refund`.
pub fn payment(db: Arc<Db>, capacity: PaymentCapacity) -> Router {
    Router::new()
        .route(
            "/payments",
            post(
                |State((db, cap)): State<(Arc<Db>, PaymentCapacity)>, Json(c): Json<Charge>| async move {
                    if let Some(refused) = refuse_amount("amount", c.amount) {
                        return refused;
                    }
                    let Ok(_worker) = cap.workers.acquire().await else {
                        return (StatusCode::SERVICE_UNAVAILABLE, "closing\n").into_response();
                    };
                    // A zero service time processes at once, without a timer.
                    if !cap.service_time.is_zero() {
                        tokio::time::sleep(cap.service_time).await;
                    }
                    reserve_answer(store::reserve(&db, &c.order_id, c.customer_id, c.amount, false))
                },
            ),
        )
        .route(
            "/payments/refund",
            post(
                |State((db, _)): State<(Arc<Db>, PaymentCapacity)>, Json(r): Json<OrderRef>| async move {
                    release_answer(store::release(&db, &r.order_id, false))
                },
            ),
        )
        .with_state((db, capacity))
}

/// shipment: `POST /shipments`, `POST /shipments/cancel`.
pub fn shipment(db: Arc<Db>) -> Router {
    Router::new()
        .route(
            "/shipments",
            post(
                |State(db): State<Arc<Db>>, Json(c): Json<Charge>| async move {
                    reserve_answer(store::reserve(&db, &c.order_id, c.customer_id, 0, false))
                },
            ),
        )
        .route(
            "/shipments/cancel",
            post(
                |State(db): State<Arc<Db>>, Json(r): Json<OrderRef>| async move {
                    release_answer(store::release(&db, &r.order_id, false))
                },
            ),
        )
        .with_state(db)
}

/// A price.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Price {
    /// The product.
    pub sku: i64,
    /// Cents.
    pub price_cents: i64,
}

/// catalog: `GET /prices`, `GET /prices/{sku}`.
pub fn catalog(db: Arc<Db>) -> Router {
    Router::new()
        .route(
            "/prices",
            get(|State(db): State<Arc<Db>>| async move {
                let prices = db.with(|c| {
                    let mut stmt = c.prepare("SELECT sku, price_cents FROM prices ORDER BY sku")?;
                    let rows = stmt.query_map([], |r| {
                        Ok(Price {
                            sku: r.get(0)?,
                            price_cents: r.get(1)?,
                        })
                    })?;
                    rows.collect::<rusqlite::Result<Vec<_>>>()
                });
                match prices {
                    Ok(p) => Json(p).into_response(),
                    Err(e) => store_failed(e),
                }
            }),
        )
        .route(
            "/prices/{sku}",
            get(
                |State(db): State<Arc<Db>>, Path(sku): Path<i64>| async move {
                    let price = db.with(|c| {
                        use rusqlite::OptionalExtension;
                        c.query_row(
                            "SELECT price_cents FROM prices WHERE sku = ?1",
                            [sku],
                            |r| r.get::<_, i64>(0),
                        )
                        .optional()
                    });
                    match price {
                        Ok(Some(price_cents)) => Json(Price { sku, price_cents }).into_response(),
                        Ok(None) => (StatusCode::NOT_FOUND, "unknown sku\n").into_response(),
                        Err(e) => store_failed(e),
                    }
                },
            ),
        )
        .with_state(db)
}

/// The gateway's clients.
#[derive(Clone)]
pub struct GatewayClients {
    /// order (placing, history).
    pub order: Client,
    /// customer (the overview).
    pub customer: Client,
    /// catalog (the overview).
    pub catalog: Client,
}

/// gateway: `POST /orders` (to order), `GET /customers/{id}/overview` (customer,
/// order history and catalog in parallel).
pub fn gateway(clients: GatewayClients) -> Router {
    // Behind an `Arc`: the state is cloned for every request, and a clone of the
    // clients would clone each client's whole stack.
    let clients = Arc::new(clients);
    Router::new()
        .route("/orders", post(gateway_place))
        .route("/customers/{id}/overview", get(gateway_overview))
        .with_state(clients)
}

fn proxy_answer(result: Result<stack::OutResponse, Error>) -> Response {
    match result {
        Ok(res) => {
            let (parts, body) = res.into_parts();
            let mut out = Response::new(axum::body::Body::from(body));
            *out.status_mut() = parts.status;
            for name in [http::header::CONTENT_TYPE, http::header::RETRY_AFTER] {
                if let Some(v) = parts.headers.get(&name) {
                    out.headers_mut().insert(name, v.clone());
                }
            }
            if let Some(v) = parts.headers.get(NO_RETRY_HEADER) {
                out.headers_mut().insert(NO_RETRY_HEADER, v.clone());
            }
            out
        }
        Err(e) => match e.rejection() {
            Some(_) => error_response(e),
            None => (StatusCode::BAD_GATEWAY, format!("{e}\n")).into_response(),
        },
    }
}

async fn gateway_place(
    State(c): State<Arc<GatewayClients>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(key) = headers.get(IDEMPOTENCY_KEY_HEADER).cloned() else {
        return (
            StatusCode::BAD_REQUEST,
            "an idempotency-key header is required\n",
        )
            .into_response();
    };
    let mut req = http::Request::post("/orders")
        .header(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )
        .body(http_body_util::Full::new(body))
        .unwrap_or_default();
    req.headers_mut().insert(IDEMPOTENCY_KEY_HEADER, key);
    proxy_answer(stack::send(&c.order, req).await)
}

async fn fetch_json(client: &Client, path: &str) -> (Option<serde_json::Value>, bool) {
    let Ok(req) = stack::get(path) else {
        return (None, false);
    };
    match stack::send(client, req).await {
        Ok(res) if res.status().is_success() => {
            let stale = stack::is_stale(&res);
            (serde_json::from_slice(res.body()).ok(), stale)
        }
        _ => (None, false),
    }
}

async fn gateway_overview(State(c): State<Arc<GatewayClients>>, Path(id): Path<i64>) -> Response {
    let customer_path = format!("/customers/{id}");
    let history_path = format!("/orders?customer_id={id}");
    let (customer, history, prices) = tokio::join!(
        fetch_json(&c.customer, &customer_path),
        fetch_json(&c.order, &history_path),
        fetch_json(&c.catalog, "/prices"),
    );
    let Some(profile) = customer.0.clone() else {
        return (StatusCode::BAD_GATEWAY, "customer unavailable\n").into_response();
    };
    let mut degraded = Vec::new();
    for (name, part) in [
        ("customer", &customer),
        ("orders", &history),
        ("prices", &prices),
    ] {
        if part.0.is_none() {
            degraded.push(format!("{name}: unavailable"));
        } else if part.1 {
            degraded.push(format!("{name}: stale"));
        }
    }
    Json(serde_json::json!({
        "customer": profile,
        "recent_orders": history.0.unwrap_or(serde_json::Value::Array(vec![])),
        "prices": prices.0.unwrap_or(serde_json::Value::Array(vec![])),
        "degraded": degraded,
    }))
    .into_response()
}
