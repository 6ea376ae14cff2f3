//! Installing a Prometheus exporter for Palisade's metrics.
//!
//! Palisade records through the [`metrics`](https://docs.rs/metrics) facade. Install
//! a recorder **before** building layers: a layer registers its series (at zero)
//! when it is built, and series registered before any recorder exists go nowhere.
//!
//! ```no_run
//! # #[tokio::main] async fn main() {
//! // Serve /metrics on 127.0.0.1:9000 for Prometheus to scrape.
//! palisade::prometheus::install("127.0.0.1:9000".parse().unwrap()).unwrap();
//! # }
//! ```

use std::net::SocketAddr;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Histogram buckets (seconds) for every Palisade `*_seconds` histogram: from half a
/// millisecond to ten seconds, so both fast rejections and slow calls resolve.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A builder with Palisade's histogram buckets set.
pub fn builder() -> Result<PrometheusBuilder, InstallError> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)?)
}
pub use metrics_exporter_prometheus::PrometheusHandle;

/// The exporter could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("installing the Prometheus exporter: {0}")]
pub struct InstallError(#[from] metrics_exporter_prometheus::BuildError);

/// Installs a global Prometheus recorder serving `/metrics` over HTTP on `listen`.
/// Needs a running tokio runtime.
pub fn install(listen: SocketAddr) -> Result<(), InstallError> {
    builder()?.with_http_listener(listen).install()?;
    Ok(())
}

/// Installs a global Prometheus recorder without a listener, returning the handle
/// that renders the text exposition (for serving `/metrics` from your own router).
pub fn install_recorder() -> Result<PrometheusHandle, InstallError> {
    Ok(builder()?.install_recorder()?)
}
