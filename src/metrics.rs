//! Every metric Palisade records, and how to export them to Prometheus.
//!
//! Install a recorder **before** building layers: each layer registers its series,
//! at zero, when it is built. [`install_prometheus`] does it in one line and serves
//! `/metrics`; [`install_prometheus_recorder`] returns a handle for your own router.
//! Both set histogram buckets ([`SECONDS_BUCKETS`]) for every `_seconds` metric —
//! without them the exporter renders histograms as summaries, which cannot be
//! aggregated across instances.
//!
//! ```no_run
//! # #[tokio::main] async fn main() {
//! palisade::metrics::install_prometheus("127.0.0.1:9000".parse().unwrap()).unwrap();
//! # }
//! ```
#![doc = include_str!("../docs/METRICS.md")]

use std::net::SocketAddr;

pub use crate::prometheus::{InstallError, PrometheusHandle, SECONDS_BUCKETS};

/// Installs the global Prometheus recorder, with Palisade's histogram buckets, and
/// serves `/metrics` over HTTP on `listen`. Needs a running tokio runtime. The
/// handle renders the same exposition, for tests or a second route.
pub fn install_prometheus(listen: SocketAddr) -> Result<PrometheusHandle, InstallError> {
    crate::prometheus::install(listen)
}

/// Installs the global Prometheus recorder, with Palisade's histogram buckets, and
/// returns the handle that renders the text exposition, to serve `/metrics` from a
/// server you already run (`handle.render()`).
pub fn install_prometheus_recorder() -> Result<PrometheusHandle, InstallError> {
    crate::prometheus::install_recorder()
}
