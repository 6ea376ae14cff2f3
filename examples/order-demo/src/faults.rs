//! Fault injection at each service, driven by its admin API.
//!
//! A service's [`Faults`] injects, by share of requests, latency, error answers
//! and connection aborts (the connection is dropped without an answer). Faults are
//! off until set through the admin API, which answers only loopback callers that
//! present the admin token:
//!
//! ```text
//! PUT /admin/faults   x-admin-token: <token>   {"error_rate": 0.2, "error_status": 503}
//! GET /admin/faults   x-admin-token: <token>
//! ```
//!
//! The dice are seeded, so a run with the same seed injects the same pattern.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::StatusCode;
use palisade::ConfigError;
use serde::{Deserialize, Serialize};

use crate::server::{AbortConnection, Peer};

/// The admin token header.
pub const ADMIN_TOKEN_HEADER: &str = "x-admin-token";
/// The fault counter (shared with the fault layer's name).
pub const INJECTED: &str = "palisade_fault_injected_total";

/// The faults a service injects. Every field defaults to "none".
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultConfig {
    /// Share of requests answered with `error_status` instead of being handled, `0..=1`.
    pub error_rate: f64,
    /// The status of an injected error, 400..=599. Default 503.
    pub error_status: u16,
    /// Latency added before handling, in milliseconds.
    pub latency_ms: u64,
    /// Share of requests that get the latency, `0..=1`. Default 1.
    pub latency_rate: f64,
    /// Share of requests whose connection is dropped without an answer, `0..=1`.
    pub abort_rate: f64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            error_status: 503,
            latency_ms: 0,
            latency_rate: 1.0,
            abort_rate: 0.0,
        }
    }
}

impl FaultConfig {
    /// No faults.
    pub fn none() -> Self {
        Self::default()
    }

    /// Answers `rate` of requests with 503.
    pub fn errors(rate: f64) -> Self {
        Self {
            error_rate: rate,
            ..Self::default()
        }
    }

    /// Adds `latency` to `rate` of requests.
    pub fn latency(latency: Duration, rate: f64) -> Self {
        Self {
            latency_ms: u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
            latency_rate: rate,
            ..Self::default()
        }
    }

    /// Checks the fields; the error names the bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, v) in [
            ("error_rate", self.error_rate),
            ("latency_rate", self.latency_rate),
            ("abort_rate", self.abort_rate),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(ConfigError::new(field, format!("{v} is not within 0..=1")));
            }
        }
        if !(400..=599).contains(&self.error_status) {
            return Err(ConfigError::new(
                "error_status",
                format!("{} is not an error status (400..=599)", self.error_status),
            ));
        }
        if self.latency_ms > 60_000 {
            return Err(ConfigError::new(
                "latency_ms",
                format!("{} is more than a minute", self.latency_ms),
            ));
        }
        Ok(())
    }
}

const PPM: f64 = 1_000_000.0;

/// One service's faults, set at runtime; cheap to read on every request.
#[derive(Debug)]
pub struct Faults {
    service: &'static str,
    error_ppm: AtomicU64,
    error_status: AtomicU64,
    latency_ms: AtomicU64,
    latency_ppm: AtomicU64,
    abort_ppm: AtomicU64,
    dice: AtomicU64,
}

fn ppm(rate: f64) -> u64 {
    (rate * PPM).round() as u64
}

impl Faults {
    /// No faults yet for `service`; `seed` seeds the dice.
    pub fn new(service: &'static str, seed: u64) -> Arc<Self> {
        for kind in ["latency", "error", "abort"] {
            metrics::counter!(INJECTED, "downstream" => service, "kind" => kind).absolute(0);
        }
        let faults = Self {
            service,
            error_ppm: AtomicU64::new(0),
            error_status: AtomicU64::new(503),
            latency_ms: AtomicU64::new(0),
            latency_ppm: AtomicU64::new(0),
            abort_ppm: AtomicU64::new(0),
            dice: AtomicU64::new(seed),
        };
        Arc::new(faults)
    }

    /// Replaces the faults.
    pub fn set(&self, config: FaultConfig) -> Result<(), ConfigError> {
        config.validate()?;
        self.error_status
            .store(u64::from(config.error_status), Ordering::Relaxed);
        self.latency_ms.store(config.latency_ms, Ordering::Relaxed);
        self.latency_ppm
            .store(ppm(config.latency_rate), Ordering::Relaxed);
        self.abort_ppm
            .store(ppm(config.abort_rate), Ordering::Relaxed);
        self.error_ppm
            .store(ppm(config.error_rate), Ordering::Relaxed);
        Ok(())
    }

    /// The faults in force.
    pub fn get(&self) -> FaultConfig {
        FaultConfig {
            error_rate: self.error_ppm.load(Ordering::Relaxed) as f64 / PPM,
            error_status: u16::try_from(self.error_status.load(Ordering::Relaxed)).unwrap_or(503),
            latency_ms: self.latency_ms.load(Ordering::Relaxed),
            latency_rate: self.latency_ppm.load(Ordering::Relaxed) as f64 / PPM,
            abort_rate: self.abort_ppm.load(Ordering::Relaxed) as f64 / PPM,
        }
    }

    /// Rolls the dice: true for `ppm` in a million (splitmix64 over a shared counter).
    fn roll(&self, ppm: u64) -> bool {
        if ppm == 0 {
            return false;
        }
        let mut z = self
            .dice
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        z % 1_000_000 < ppm
    }

    fn injected(&self, kind: &'static str) {
        metrics::counter!(INJECTED, "downstream" => self.service, "kind" => kind).increment(1);
    }
}

/// Middleware injecting `faults` before the handler.
pub async fn inject(State(faults): State<Arc<Faults>>, req: Request, next: Next) -> Response {
    if faults.roll(faults.abort_ppm.load(Ordering::Relaxed)) {
        if let Some(abort) = req.extensions().get::<AbortConnection>() {
            faults.injected("abort");
            abort.abort();
            std::future::pending::<()>().await;
        }
    }
    if faults.roll(faults.latency_ppm.load(Ordering::Relaxed)) {
        let ms = faults.latency_ms.load(Ordering::Relaxed);
        if ms > 0 {
            faults.injected("latency");
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
    if faults.roll(faults.error_ppm.load(Ordering::Relaxed)) {
        faults.injected("error");
        let status = u16::try_from(faults.error_status.load(Ordering::Relaxed))
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return (status, "injected fault\n").into_response();
    }
    next.run(req).await
}

#[derive(Clone)]
struct Admin {
    faults: Arc<Faults>,
    token: Arc<str>,
}

/// Whether the request comes from loopback with the right token.
fn authorized(admin: &Admin, req: &http::request::Parts) -> Result<(), (StatusCode, &'static str)> {
    let loopback = req
        .extensions
        .get::<Peer>()
        .is_some_and(|p| p.0.ip().is_loopback());
    if !loopback {
        return Err((StatusCode::FORBIDDEN, "admin API: loopback callers only\n"));
    }
    let token_ok = req
        .headers
        .get(ADMIN_TOKEN_HEADER)
        .is_some_and(|t| t.as_bytes() == admin.token.as_bytes());
    if !token_ok {
        return Err((
            StatusCode::UNAUTHORIZED,
            "admin API: missing or wrong x-admin-token\n",
        ));
    }
    Ok(())
}

/// `GET`/`PUT /admin/faults` for `faults`, guarded by `token`.
pub fn admin_router(faults: Arc<Faults>, token: Arc<str>) -> Router {
    let admin = Admin { faults, token };
    Router::new()
        .route(
            "/admin/faults",
            get(|State(admin): State<Admin>, req: Request| async move {
                let (parts, _) = req.into_parts();
                match authorized(&admin, &parts) {
                    Ok(()) => Json(admin.faults.get()).into_response(),
                    Err(e) => e.into_response(),
                }
            })
            .put(|State(admin): State<Admin>, req: Request| async move {
                let (parts, body) = req.into_parts();
                if let Err(e) = authorized(&admin, &parts) {
                    return e.into_response();
                }
                let bytes = match axum::body::to_bytes(body, 64 * 1024).await {
                    Ok(b) => b,
                    Err(e) => {
                        return (StatusCode::BAD_REQUEST, format!("reading the body: {e}\n"))
                            .into_response();
                    }
                };
                let config: FaultConfig = match serde_json::from_slice(&bytes) {
                    Ok(c) => c,
                    Err(e) => {
                        return (StatusCode::BAD_REQUEST, format!("fault config: {e}\n"))
                            .into_response();
                    }
                };
                match admin.faults.set(config) {
                    Ok(()) => Json(admin.faults.get()).into_response(),
                    Err(e) => {
                        (StatusCode::BAD_REQUEST, format!("fault config: {e}\n")).into_response()
                    }
                }
            }),
        )
        .with_state(admin)
}
