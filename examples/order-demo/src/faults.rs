//! Fault injection at each service through Palisade's [`FaultLayer`], driven by
//! the service's admin API.
//!
//! Every service runs a [`FaultLayer`] just before its handlers (the `downstream`
//! label of `palisade_fault_injected_total` is the service's name). Nothing is
//! injected until a [`FaultConfig`] is set through the admin API, which answers
//! only loopback callers that present the admin token:
//!
//! ```text
//! PUT /admin/faults   x-admin-token: <token>   {"error": {"percent": 20, "status": 503}}
//! GET /admin/faults   x-admin-token: <token>
//! DELETE /admin/faults   x-admin-token: <token>
//! ```
//!
//! An injected abort closes the connection the request came on without an answer,
//! as a crashed server would. Header-driven faults are not enabled: callers cannot
//! ask for faults. The dice are seeded, so a run with the same seed injects the
//! same pattern.

use std::sync::Arc;

use axum::extract::{Extension, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::StatusCode;
pub use palisade::fault::{
    AbortFault, AbortKind, ErrorFault, FaultConfig, FaultHandle, FaultLayer, LatencyFault,
};
use palisade::{ConfigError, Error};

use crate::server::{AbortConnection, Peer};

/// The admin token header.
pub const ADMIN_TOKEN_HEADER: &str = "x-admin-token";

/// The fault layer of `service`, seeded, injecting nothing yet.
pub fn layer(service: &str, seed: u64) -> Result<FaultLayer, ConfigError> {
    Ok(FaultLayer::http(service)?.seed(seed))
}

/// Whether `err` is an injected connection failure.
pub fn is_abort(err: &Error) -> bool {
    err.inner()
        .and_then(|e| e.downcast_ref::<std::io::Error>())
        .is_some_and(|e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionRefused
            )
        })
}

/// Answers a fault layer's error: an injected abort closes the connection without
/// an answer; anything else is answered as [`crate::services::error_response`]
/// does.
pub async fn handle_fault_error(abort: Option<Extension<AbortConnection>>, err: Error) -> Response {
    if is_abort(&err)
        && let Some(Extension(abort)) = abort
    {
        abort.abort();
        std::future::pending::<()>().await;
    }
    crate::services::error_response(err)
}

/// Faults by name: the "none", error, latency and abort configs the runner uses.
pub mod presets {
    use std::time::Duration;

    use super::*;

    /// `percent`% of requests answered 503.
    pub fn errors(percent: f64) -> FaultConfig {
        FaultConfig {
            error: Some(ErrorFault::new(percent, 503)),
            ..FaultConfig::default()
        }
    }

    /// `percent`% of requests delayed by `delay`.
    pub fn latency(percent: f64, delay: Duration) -> FaultConfig {
        FaultConfig {
            latency: Some(LatencyFault::fixed(percent, delay)),
            ..FaultConfig::default()
        }
    }

    /// `percent`% of connections reset without an answer.
    pub fn aborts(percent: f64) -> FaultConfig {
        FaultConfig {
            abort: Some(AbortFault::new(percent, AbortKind::Reset)),
            ..FaultConfig::default()
        }
    }
}

#[derive(Clone)]
struct Admin {
    faults: FaultHandle,
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

/// `GET`/`PUT`/`DELETE /admin/faults` for `faults`, guarded by `token`.
pub fn admin_router(faults: FaultHandle, token: Arc<str>) -> Router {
    let admin = Admin { faults, token };
    Router::new()
        .route(
            "/admin/faults",
            get(|State(admin): State<Admin>, req: Request| async move {
                let (parts, _) = req.into_parts();
                match authorized(&admin, &parts) {
                    Ok(()) => Json(admin.faults.config()).into_response(),
                    Err(e) => e.into_response(),
                }
            })
            .delete(|State(admin): State<Admin>, req: Request| async move {
                let (parts, _) = req.into_parts();
                match authorized(&admin, &parts) {
                    Ok(()) => {
                        admin.faults.clear();
                        Json(admin.faults.config()).into_response()
                    }
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
                    Ok(()) => Json(admin.faults.config()).into_response(),
                    Err(e) => {
                        (StatusCode::BAD_REQUEST, format!("fault config: {e}\n")).into_response()
                    }
                }
            }),
        )
        .with_state(admin)
}
