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
//!
//! The recorder these functions install keeps one slot per thread lane (a few per
//! core, each on its own cache line) for every counter, gauge and histogram, so
//! that tasks on several cores calling through one downstream do not write the same
//! cache lines on every call; the slots are folded into the exporter's series
//! whenever [`PrometheusHandle::render`] or [`PrometheusHandle::run_upkeep`] runs,
//! so a scrape reads exact values. The price is memory: up to 2 KiB per series.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

mod shards;
use shards::{ShardedRecorder, Shards};

/// Histogram buckets (seconds) for every Palisade `*_seconds` histogram: from half a
/// millisecond to ten seconds, so both fast rejections and slow calls resolve.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often the installed recorder folds the per-thread slots and runs the
/// exporter's upkeep between scrapes, which bounds the histogram samples held in
/// memory however long nothing scrapes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// A builder with Palisade's histogram buckets set (for installing the exporter
/// yourself, without the per-thread slots).
pub fn builder() -> Result<PrometheusBuilder, InstallError> {
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)?)
}

/// Renders the text exposition of every series the installed recorder holds.
#[derive(Clone, Debug)]
pub struct PrometheusHandle {
    inner: metrics_exporter_prometheus::PrometheusHandle,
    shards: Arc<Shards>,
}

impl PrometheusHandle {
    /// The text exposition (format 0.0.4) of every series, exact as of this call:
    /// the per-thread slots are folded in first.
    pub fn render(&self) -> String {
        // One at a time with upkeep: samples on their way from the slots to the
        // buckets would be missing from a render made meanwhile.
        let _one = self.shards.maintenance();
        self.shards.flush();
        self.inner.render()
    }

    /// Folds the per-thread slots into the exporter's series and runs the exporter's
    /// upkeep (draining histogram samples into their buckets). Rendering does the
    /// same, and the installed recorder runs it every [`UPKEEP_INTERVAL`] on its own.
    pub fn run_upkeep(&self) {
        let _one = self.shards.maintenance();
        self.shards.flush();
        self.inner.run_upkeep();
    }
}

/// The exporter could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The exporter's builder refused its settings.
    #[error("installing the Prometheus exporter: {0}")]
    Build(#[from] metrics_exporter_prometheus::BuildError),
    /// A global recorder was installed already (by this or another library).
    #[error("installing the Prometheus exporter: a global metrics recorder is installed already")]
    AlreadyInstalled,
    /// Serving `/metrics` needs a tokio runtime, and none is running on this thread.
    #[error("serving /metrics on {0}: no tokio runtime is running on this thread")]
    NoRuntime(SocketAddr),
    /// The listen address could not be bound.
    #[error("serving /metrics on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
}

/// Installs a global Prometheus recorder, with Palisade's histogram buckets, and
/// serves `GET /metrics` over HTTP/1 on `listen` (other paths answer 404). Needs a
/// running tokio runtime with time enabled: the server runs as a task on it for as
/// long as it runs. The upkeep runs on a thread of its own, as with
/// [`install_recorder`].
pub fn install(listen: SocketAddr) -> Result<PrometheusHandle, InstallError> {
    let runtime =
        tokio::runtime::Handle::try_current().map_err(|_| InstallError::NoRuntime(listen))?;
    let listener = std::net::TcpListener::bind(listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| InstallError::Bind {
            addr: listen,
            source,
        })?;
    let listener = {
        let _entered = runtime.enter();
        tokio::net::TcpListener::from_std(listener).map_err(|source| InstallError::Bind {
            addr: listen,
            source,
        })?
    };
    let handle = install_recorder()?;
    runtime.spawn(serve(listener, handle.clone()));
    Ok(handle)
}

/// Installs a global Prometheus recorder without a listener, returning the handle
/// that renders the text exposition (for serving `/metrics` from your own router).
/// Needs no runtime: a thread of its own (`palisade-metrics-upkeep`) runs the
/// upkeep every [`UPKEEP_INTERVAL`], so histogram samples do not pile up in memory
/// while nothing scrapes.
pub fn install_recorder() -> Result<PrometheusHandle, InstallError> {
    let recorder = builder()?.build_recorder();
    let inner = recorder.handle();
    let sharded = ShardedRecorder::new(recorder);
    let shards = Arc::clone(sharded.shards());
    metrics::set_global_recorder(sharded).map_err(|_| InstallError::AlreadyInstalled)?;
    let handle = PrometheusHandle { inner, shards };
    let every = UPKEEP_INTERVAL;
    // A maintenance job on wall-clock time, outside any runtime: it sleeps its thread.
    let wait = move || {
        std::thread::sleep(every);
        true
    };
    if let Err(e) = spawn_upkeep(handle.clone(), wait) {
        // The recorder is installed and works; only the periodic upkeep is missing,
        // and each render still does it.
        tracing::warn!(
            error = %e,
            "starting the metrics upkeep thread failed: histogram samples gather until each /metrics render"
        );
    }
    Ok(handle)
}

/// Runs `handle`'s upkeep on a thread of its own each time `wait` returns `true`,
/// until it returns `false` (the installed recorder's never does: the recorder is
/// global, so its upkeep runs for the rest of the process).
fn spawn_upkeep(
    handle: PrometheusHandle,
    mut wait: impl FnMut() -> bool + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("palisade-metrics-upkeep".to_owned())
        .spawn(move || {
            while wait() {
                let upkeep = std::panic::AssertUnwindSafe(|| handle.run_upkeep());
                if std::panic::catch_unwind(upkeep).is_err() {
                    // Keep going: the next run folds what this one left.
                    tracing::error!("the metrics upkeep panicked; it runs again at its next turn");
                }
            }
        })?;
    Ok(())
}

async fn serve(listener: tokio::net::TcpListener, handle: PrometheusHandle) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait a little, keep serving.
                tracing::warn!(error = %e, "accepting a /metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(respond(handle, &req).await) }
            });
            // With a timer, a client that never sends its request headers is cut off
            // after hyper's header-read timeout.
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "a /metrics connection ended with an error");
            }
        });
    }
}

async fn respond(handle: PrometheusHandle, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = if req.uri().path() != "/metrics" {
        (
            StatusCode::NOT_FOUND,
            String::from("only /metrics is served here\n"),
        )
    } else if req.method() != Method::GET && req.method() != Method::HEAD {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            String::from("use GET or HEAD\n"),
        )
    } else {
        // Rendering folds every series' slots and waits for an upkeep in progress:
        // on a thread of the blocking pool, so a scrape never holds up the runtime's
        // workers (the service's own calls).
        match tokio::task::spawn_blocking(move || handle.render()).await {
            Ok(text) => (StatusCode::OK, text),
            Err(e) => {
                tracing::error!(error = %e, "rendering /metrics failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    String::from("rendering the metrics failed\n"),
                )
            }
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    match status {
        StatusCode::OK => {
            headers.insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
        }
        StatusCode::METHOD_NOT_ALLOWED => {
            headers.insert(
                hyper::header::ALLOW,
                hyper::header::HeaderValue::from_static("GET, HEAD"),
            );
        }
        _ => {}
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics::{Key, Metadata, Recorder};

    /// A handle over a recorder of its own (not the global one).
    fn local_recorder() -> (
        ShardedRecorder<metrics_exporter_prometheus::PrometheusRecorder>,
        PrometheusHandle,
    ) {
        let recorder = builder().expect("buckets are valid").build_recorder();
        let inner = recorder.handle();
        let sharded = ShardedRecorder::new(recorder);
        let shards = Arc::clone(sharded.shards());
        (sharded, PrometheusHandle { inner, shards })
    }

    #[test]
    fn the_upkeep_thread_drains_histogram_samples_without_a_scrape() {
        let (recorder, handle) = local_recorder();
        let meta = Metadata::new("t", metrics::Level::INFO, None);
        let histogram =
            recorder.register_histogram(&Key::from_name("call_duration_seconds"), &meta);
        for _ in 0..1000 {
            histogram.record(0.002);
        }
        assert_eq!(handle.shards.held_samples(), 1000);

        // The test is the thread's clock: each tick is one upkeep, and the thread
        // says when it is back waiting (so the upkeep before it has finished).
        let (tick, ticks) = std::sync::mpsc::channel::<()>();
        let (waiting, waits) = std::sync::mpsc::channel::<()>();
        let wait = move || {
            let _ = waiting.send(());
            ticks.recv().is_ok()
        };
        spawn_upkeep(handle.clone(), wait).expect("thread starts");
        waits.recv().expect("the thread waits for its first turn");
        assert_eq!(
            handle.shards.held_samples(),
            1000,
            "no upkeep before a turn"
        );

        tick.send(()).expect("the thread is waiting");
        waits
            .recv()
            .expect("the thread ran its upkeep and waits again");
        assert_eq!(
            handle.shards.held_samples(),
            0,
            "the upkeep drained the slots"
        );
        drop(tick); // the thread ends
        let text = handle.render();
        assert!(
            text.contains("call_duration_seconds_count 1000"),
            "every sample reached the exporter: {text}"
        );
    }
}
