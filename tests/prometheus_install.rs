//! `palisade::metrics::install_prometheus` end to end: the clear errors before
//! anything is installed, then `/metrics` over HTTP with counts exact after tasks
//! on two worker threads called through one downstream (each thread writes its own
//! slot; a scrape folds them).
//!
//! One test, in its own binary: a process has one global recorder.

use std::net::SocketAddr;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use palisade::Downstream;
use palisade::breaker::BreakerConfig;
use palisade::metrics::{InstallError, install_prometheus};
use tower::{Layer, Service, ServiceExt};

const TASKS: u64 = 8;
const CALLS: u64 = 250;

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn value(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"));
    line[series.len()..].trim().parse().unwrap()
}

async fn request(
    addr: SocketAddr,
    method: hyper::Method,
    path: &str,
) -> (u16, hyper::HeaderMap, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Empty::new())
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = request(addr, hyper::Method::GET, path).await;
    (status, body)
}

#[test]
fn install_serves_exact_counts_over_http() {
    let addr = free_port();
    let e = install_prometheus(addr).unwrap_err();
    assert!(matches!(e, InstallError::NoRuntime(a) if a == addr));
    assert_eq!(
        e.to_string(),
        format!("serving /metrics on {addr}: no tokio runtime is running on this thread")
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // A port in use: the error names it, and nothing was installed.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_addr = taken.local_addr().unwrap();
        let e = install_prometheus(taken_addr).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("serving /metrics on {taken_addr}: ")),
            "{e}"
        );

        let handle = install_prometheus(addr).unwrap();
        let e = install_prometheus(free_port()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "installing the Prometheus exporter: a global metrics recorder is installed already"
        );

        let stack = Downstream::builder("sharded")
            .breaker(BreakerConfig::default())
            .build()
            .unwrap()
            .layer(tower::service_fn(|x: u64| async move {
                if x.is_multiple_of(5) {
                    Err(std::io::Error::other("every fifth fails"))
                } else {
                    Ok(x)
                }
            }));
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let mut stack = stack.clone();
                tokio::spawn(async move {
                    for i in 0..CALLS {
                        // Odd calls only: 1, 3, ... so every fifth of them (5, 15, ...) fails.
                        let x = 2 * (t * CALLS + i) + 1;
                        let _ = stack.ready().await.unwrap().call(x).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }

        let (status, text) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        let total = TASKS * CALLS;
        let failures = (0..total).filter(|n| (2 * n + 1).is_multiple_of(5)).count() as f64;
        let d = r#"downstream="sharded""#;
        assert_eq!(
            value(
                &text,
                &format!(r#"palisade_downstream_calls_total{{{d},outcome="failure"}}"#)
            ),
            failures
        );
        assert_eq!(
            value(
                &text,
                &format!(r#"palisade_downstream_calls_total{{{d},outcome="success"}}"#)
            ),
            total as f64 - failures
        );
        assert_eq!(
            value(
                &text,
                &format!("palisade_downstream_call_duration_seconds_count{{{d}}}")
            ),
            total as f64
        );
        // The breaker below counted the same calls.
        assert_eq!(
            value(
                &text,
                &format!(r#"palisade_breaker_calls_total{{{d},outcome="failure"}}"#)
            ),
            failures
        );
        // The handle renders the same (nothing new since).
        assert_eq!(
            value(
                &handle.render(),
                &format!(r#"palisade_downstream_calls_total{{{d},outcome="failure"}}"#)
            ),
            failures
        );

        let (status, _) = get(addr, "/other").await;
        assert_eq!(status, 404);
        let (status, headers, body) = request(addr, hyper::Method::HEAD, "/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], "text/plain; version=0.0.4");
        assert!(body.is_empty());
        let (status, headers, _) = request(addr, hyper::Method::POST, "/metrics").await;
        assert_eq!(status, 405);
        assert_eq!(headers["allow"], "GET, HEAD");
    });
}
