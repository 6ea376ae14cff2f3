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

use metrics_exporter_prometheus::PrometheusBuilder;
pub use metrics_exporter_prometheus::PrometheusHandle;

/// The exporter could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("installing the Prometheus exporter: {0}")]
pub struct InstallError(#[from] metrics_exporter_prometheus::BuildError);

/// Installs a global Prometheus recorder serving `/metrics` over HTTP on `listen`.
/// Needs a running tokio runtime.
pub fn install(listen: SocketAddr) -> Result<(), InstallError> {
    PrometheusBuilder::new()
        .with_http_listener(listen)
        .install()?;
    Ok(())
}

/// Installs a global Prometheus recorder without a listener, returning the handle
/// that renders the text exposition (for serving `/metrics` from your own router).
pub fn install_recorder() -> Result<PrometheusHandle, InstallError> {
    Ok(PrometheusBuilder::new().install_recorder()?)
}
