//! order: places an order through the chain customer (reserve credit) → inventory
//! (reserve stock) → payment → shipment, with compensation.
//!
//! - **Idempotent**: the client's `idempotency-key` is the order id. A retried
//!   request for a known order answers with that order's result; downstream calls
//!   carry `<order id>:<step>` as their idempotency key, so retries never reserve
//!   twice.
//! - **Never half-done**: the chain runs in its own task, so a caller that hangs up
//!   does not cut it short. When a step fails, every step that holds something —
//!   or may hold something because an attempt went unanswered — is released. A
//!   release that fails is retried by a reconciler until it succeeds; the order's
//!   pending releases are in the store first, so a restart picks them up.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::{HeaderMap, HeaderValue, StatusCode};
use palisade::core::Deadline;
use palisade::retry::http::{IDEMPOTENCY_KEY_HEADER, NO_RETRY_HEADER};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::obs::{OrderOutcome, count_order};
use crate::services::{Charge, CreditHold, OrderRef, Price, StockHold};
use crate::stack::{self, CallTrace, Client};
use crate::store::{Db, StoreError};

/// The order store's schema.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY,
    customer_id INTEGER NOT NULL,
    sku INTEGER NOT NULL,
    qty INTEGER NOT NULL,
    amount INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL CHECK (status IN ('pending', 'completed', 'compensating', 'failed')),
    pending_releases INTEGER NOT NULL DEFAULT 0,
    next_retry_ms INTEGER NOT NULL DEFAULT 0,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS orders_customer ON orders (customer_id);
CREATE INDEX IF NOT EXISTS orders_status ON orders (status);";

/// A step of the chain that holds something, as a bit of `pending_releases`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Customer credit.
    Credit = 1,
    /// Inventory stock.
    Stock = 2,
    /// The payment.
    Payment = 4,
    /// The shipment.
    Shipment = 8,
}

impl Step {
    /// The steps in chain order.
    pub const ALL: [Step; 4] = [Step::Credit, Step::Stock, Step::Payment, Step::Shipment];

    fn bit(self) -> i64 {
        self as i64
    }

    fn name(self) -> &'static str {
        match self {
            Step::Credit => "credit",
            Step::Stock => "stock",
            Step::Payment => "payment",
            Step::Shipment => "shipment",
        }
    }

    fn release_path(self) -> &'static str {
        match self {
            Step::Credit => "/credit/release",
            Step::Stock => "/stock/release",
            Step::Payment => "/payments/refund",
            Step::Shipment => "/shipments/cancel",
        }
    }
}

/// The order service's dependencies.
#[derive(Clone)]
pub struct OrderClients {
    /// Prices.
    pub catalog: Client,
    /// Credit.
    pub customer: Client,
    /// Stock.
    pub inventory: Client,
    /// Payments.
    pub payment: Client,
    /// Shipments.
    pub shipment: Client,
}

impl OrderClients {
    fn for_step(&self, step: Step) -> &Client {
        match step {
            Step::Credit => &self.customer,
            Step::Stock => &self.inventory,
            Step::Payment => &self.payment,
            Step::Shipment => &self.shipment,
        }
    }
}

#[derive(Clone)]
struct OrderState {
    db: Arc<Db>,
    /// Behind an `Arc`: the state is cloned for every request and every chain, and
    /// a clone of the clients would clone each client's whole stack.
    clients: Arc<OrderClients>,
    shutdown: CancellationToken,
    epoch: Instant,
}

impl OrderState {
    fn now_ms(&self) -> i64 {
        i64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(i64::MAX)
    }
}

/// A new order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    /// The customer.
    pub customer_id: i64,
    /// The product.
    pub sku: i64,
    /// Units, at least 1.
    pub qty: i64,
}

/// An order as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderView {
    /// The order id (the client's idempotency key).
    pub order_id: String,
    /// The customer.
    pub customer_id: i64,
    /// The product.
    pub sku: i64,
    /// Units.
    pub qty: i64,
    /// Cents.
    pub amount: i64,
    /// pending, completed, compensating or failed.
    pub status: String,
    /// Why it failed.
    pub reason: Option<String>,
}

/// Builds the order service and starts its reconciler (until `shutdown`).
/// Orders left pending by an earlier process are compensated.
pub fn router(
    db: Arc<Db>,
    clients: OrderClients,
    shutdown: CancellationToken,
) -> Result<Router, StoreError> {
    db.with(|c| {
        c.execute(
            "UPDATE orders SET status = 'compensating', pending_releases = 15, next_retry_ms = 0 WHERE status = 'pending'",
            [],
        )?;
        c.execute("UPDATE orders SET next_retry_ms = 0 WHERE status = 'compensating'", [])
            .map(drop)
    })?;
    let state = OrderState {
        db,
        clients: Arc::new(clients),
        shutdown,
        epoch: Instant::now(),
    };
    tokio::spawn(reconciler(state.clone()));
    Ok(Router::new()
        .route("/orders", post(place).get(history))
        .route("/orders/{id}", get(one))
        .with_state(state))
}

fn load(db: &Db, id: &str) -> Result<Option<OrderView>, StoreError> {
    db.with(|c| {
        c.query_row(
            "SELECT id, customer_id, sku, qty, amount, status, reason FROM orders WHERE id = ?1",
            [id],
            view_of_row,
        )
        .optional()
    })
}

fn view_of_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OrderView> {
    Ok(OrderView {
        order_id: r.get(0)?,
        customer_id: r.get(1)?,
        sku: r.get(2)?,
        qty: r.get(3)?,
        amount: r.get(4)?,
        status: r.get(5)?,
        reason: r.get(6)?,
    })
}

fn answer(view: &OrderView) -> Response {
    match view.status.as_str() {
        "completed" => (StatusCode::CREATED, Json(view)).into_response(),
        "pending" => (StatusCode::CONFLICT, Json(view)).into_response(),
        _ => {
            let mut res = (StatusCode::BAD_GATEWAY, Json(view)).into_response();
            // The chain already retried its steps: asking again will not help.
            res.headers_mut()
                .insert(NO_RETRY_HEADER, HeaderValue::from_static("1"));
            res
        }
    }
}

async fn one(State(s): State<OrderState>, Path(id): Path<String>) -> Response {
    match load(&s.db, &id) {
        Ok(Some(v)) => Json(v).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "unknown order\n").into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    customer_id: i64,
}

async fn history(State(s): State<OrderState>, Query(q): Query<HistoryQuery>) -> Response {
    let rows = s.db.with(|c| {
        let mut stmt = c.prepare(
            "SELECT id, customer_id, sku, qty, amount, status, reason FROM orders
             WHERE customer_id = ?1 ORDER BY rowid DESC LIMIT 10",
        )?;
        let rows = stmt.query_map([q.customer_id], view_of_row)?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
    });
    match rows {
        Ok(v) => Json(v).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn place(
    State(s): State<OrderState>,
    headers: HeaderMap,
    Json(order): Json<NewOrder>,
) -> Response {
    let Some(id) = headers
        .get(IDEMPOTENCY_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 128)
        .map(str::to_owned)
    else {
        return (
            StatusCode::BAD_REQUEST,
            "an idempotency-key header (1..=128 visible characters) is required\n",
        )
            .into_response();
    };
    if order.qty < 1 || order.qty > 1000 {
        return (StatusCode::BAD_REQUEST, "qty must be within 1..=1000\n").into_response();
    }
    let inserted = s.db.with(|c| {
        c.execute(
            "INSERT INTO orders (id, customer_id, sku, qty, status) VALUES (?1, ?2, ?3, ?4, 'pending')
             ON CONFLICT(id) DO NOTHING",
            params![id, order.customer_id, order.sku, order.qty],
        )
    });
    match inserted {
        Ok(1) => {}
        Ok(_) => {
            return match load(&s.db, &id) {
                Ok(Some(v)) => answer(&v),
                Ok(None) => (StatusCode::INTERNAL_SERVER_ERROR, "order vanished\n").into_response(),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
            };
        }
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
    // The chain runs in its own task: a caller that hangs up does not cut it short.
    let deadline = Deadline::current();
    let task_state = s.clone();
    let task_id = id.clone();
    let shutdown = s.shutdown.clone();
    let chain = tokio::spawn(async move {
        tokio::select! {
            () = run_chain(task_state, task_id, order, deadline) => true,
            () = shutdown.cancelled() => false,
        }
    });
    match chain.await {
        Ok(true) => match load(&s.db, &id) {
            Ok(Some(v)) => answer(&v),
            Ok(None) => (StatusCode::INTERNAL_SERVER_ERROR, "order vanished\n").into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
        },
        _ => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
    }
}

/// The forward steps: price, then each hold in turn. Returns the holds that must be
/// released and why the chain stopped, or the amount on success.
async fn forward(s: &OrderState, id: &str, order: &NewOrder) -> (i64, Result<i64, String>) {
    let mut holds = 0i64;
    let price = match price_of(&s.clients.catalog, order.sku).await {
        Ok(p) => p,
        Err(e) => return (holds, Err(format!("catalog: {e}"))),
    };
    let amount = price * order.qty;
    if let Err(e) = s.db.with(|c| {
        c.execute(
            "UPDATE orders SET amount = ?2 WHERE id = ?1",
            params![id, amount],
        )
    }) {
        return (holds, Err(e.to_string()));
    }
    for step in Step::ALL {
        let body = match step {
            Step::Credit => serde_json::to_value(CreditHold {
                order_id: id.to_owned(),
                customer_id: order.customer_id,
                amount,
            }),
            Step::Stock => serde_json::to_value(StockHold {
                order_id: id.to_owned(),
                sku: order.sku,
                qty: order.qty,
            }),
            Step::Payment | Step::Shipment => serde_json::to_value(Charge {
                order_id: id.to_owned(),
                customer_id: order.customer_id,
                amount: if step == Step::Payment { amount } else { 0 },
            }),
        };
        let path = match step {
            Step::Credit => "/credit/reserve",
            Step::Stock => "/stock/reserve",
            Step::Payment => "/payments",
            Step::Shipment => "/shipments",
        };
        let trace = CallTrace::new();
        let result = match body
            .map_err(palisade::BoxError::from)
            .and_then(|b| stack::post_json(path, &b, &format!("{id}:{}", step.name())))
        {
            Ok(mut req) => {
                req.extensions_mut().insert(trace.clone());
                stack::send(s.clients.for_step(step), req)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|res| {
                        if res.status().is_success() {
                            Ok(())
                        } else {
                            Err(format!("answered {}", res.status()))
                        }
                    })
            }
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(()) => holds |= step.bit(),
            Err(e) => {
                if trace.in_doubt() {
                    holds |= step.bit();
                }
                return (holds, Err(format!("{}: {e}", step.name())));
            }
        }
    }
    (holds, Ok(amount))
}

async fn price_of(catalog: &Client, sku: i64) -> Result<i64, String> {
    let req = stack::get(&format!("/prices/{sku}")).map_err(|e| e.to_string())?;
    let res = stack::send(catalog, req).await.map_err(|e| e.to_string())?;
    if !res.status().is_success() {
        return Err(format!("answered {}", res.status()));
    }
    let price: Price = serde_json::from_slice(res.body()).map_err(|e| e.to_string())?;
    Ok(price.price_cents)
}

async fn run_chain(s: OrderState, id: String, order: NewOrder, deadline: Option<Deadline>) {
    let (holds, result) = match deadline {
        Some(d) => d.scoped(forward(&s, &id, &order)).await,
        None => forward(&s, &id, &order).await,
    };
    match result {
        Ok(_) => {
            let done = s.db.with(|c| {
                c.execute(
                    "UPDATE orders SET status = 'completed' WHERE id = ?1",
                    [&id],
                )
            });
            if done.is_ok() {
                count_order(OrderOutcome::Placed);
            }
        }
        Err(reason) => {
            count_order(OrderOutcome::Failed);
            let status = if holds == 0 { "failed" } else { "compensating" };
            let next = s.now_ms() + 1000;
            let saved = s.db.with(|c| {
                c.execute(
                    "UPDATE orders SET status = ?2, pending_releases = ?3, next_retry_ms = ?4, reason = ?5 WHERE id = ?1",
                    params![id, status, holds, next, reason],
                )
            });
            if saved.is_ok() && holds != 0 {
                compensate(&s, &id, holds).await;
            }
        }
    }
}

/// Releases every step in `pending`; what could not be released stays pending for
/// the reconciler. Counts the order compensated when nothing is left.
async fn compensate(s: &OrderState, id: &str, pending: i64) {
    for step in Step::ALL {
        if pending & step.bit() == 0 {
            continue;
        }
        let Ok(req) = stack::post_json(
            step.release_path(),
            &OrderRef {
                order_id: id.to_owned(),
            },
            &format!("{id}:{}:release", step.name()),
        ) else {
            continue;
        };
        let released = matches!(stack::send(s.clients.for_step(step), req).await, Ok(r) if r.status().is_success());
        if released {
            let _ = s.db.with(|c| {
                c.execute(
                    "UPDATE orders SET pending_releases = pending_releases & ~?2 WHERE id = ?1",
                    params![id, step.bit()],
                )
            });
        }
    }
    let finished = s.db.with(|c| {
        c.execute(
            "UPDATE orders SET status = 'failed' WHERE id = ?1 AND status = 'compensating' AND pending_releases = 0",
            [id],
        )
    });
    if matches!(finished, Ok(1)) {
        count_order(OrderOutcome::Compensated);
    }
}

/// Retries pending releases, a batch at a time, each order at most once a second.
async fn reconciler(s: OrderState) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            () = s.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = s.now_ms();
        let due = s.db.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, pending_releases FROM orders
                 WHERE status = 'compensating' AND next_retry_ms <= ?1 LIMIT 32",
            )?;
            let rows =
                stmt.query_map([now], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let due = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            for (id, _) in &due {
                c.execute(
                    "UPDATE orders SET next_retry_ms = ?2 WHERE id = ?1",
                    params![id, now + 1000],
                )?;
            }
            Ok(due)
        });
        let Ok(due) = due else { continue };
        for (id, pending) in due {
            compensate(&s, &id, pending).await;
        }
    }
}

/// Counts of orders by status, for checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts {
    /// Still running.
    pub pending: u64,
    /// Placed.
    pub completed: u64,
    /// Failed, releases outstanding.
    pub compensating: u64,
    /// Failed, nothing held.
    pub failed: u64,
}

/// Orders by status.
pub fn status_counts(db: &Db) -> Result<StatusCounts, StoreError> {
    db.with(|c| {
        let mut stmt = c.prepare("SELECT status, COUNT(*) FROM orders GROUP BY status")?;
        let mut counts = StatusCounts::default();
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (status, n) = row?;
            let n = u64::try_from(n).unwrap_or(0);
            match status.as_str() {
                "pending" => counts.pending = n,
                "completed" => counts.completed = n,
                "compensating" => counts.compensating = n,
                _ => counts.failed = n,
            }
        }
        Ok(counts)
    })
}

/// Every order id with its status.
pub fn all_orders(db: &Db) -> Result<Vec<(String, String)>, StoreError> {
    db.with(|c| {
        let mut stmt = c.prepare("SELECT id, status FROM orders")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    })
}
