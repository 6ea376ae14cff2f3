//! The cache and fallback in front of a real HTTP server on loopback.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use palisade_core::HttpClassifier;
use palisade_fallback::{
    CacheConfig, CacheLayer, CachedBody, CoalesceConfig, CoalesceLayer, FallbackCause,
    FallbackLayer, HttpMark, Served,
};
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder, ServiceExt};

/// A catalog server: `GET /products/<id>` answers `product <id>`, or 503 while down;
/// `/big` answers 4 KiB. Counts the requests it serves.
#[derive(Clone, Default)]
struct Server {
    down: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
}

impl Server {
    async fn start(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.answer(&req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr
    }

    async fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        self.served.fetch_add(1, Ordering::SeqCst);
        // Slow enough that concurrent requests overlap.
        tokio::time::sleep(Duration::from_millis(50)).await;
        if self.down.load(Ordering::SeqCst) {
            return Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .body(Full::new(Bytes::from_static(b"down")))
                .unwrap();
        }
        let path = req.uri().path();
        let body = if path == "/big" {
            Bytes::from(vec![b'x'; 4096])
        } else {
            Bytes::from(format!("product {}", path.trim_start_matches("/products/")))
        };
        Response::builder()
            .header("content-type", "text/plain")
            .body(Full::new(body))
            .unwrap()
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn get(addr: SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .body(Full::default())
        .unwrap()
}

async fn text(response: Response<CachedBody<Incoming>>) -> String {
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

#[tokio::test]
async fn fresh_hits_carry_age_and_the_cache_header() {
    let server = Server::default();
    let addr = server.start().await;
    let cache = CacheLayer::http(
        "catalog",
        CacheConfig {
            fresh_ttl: Duration::from_secs(3600),
            ..CacheConfig::default()
        },
    )
    .unwrap();
    let mut svc = ServiceBuilder::new().layer(cache).service(client());

    let first = svc
        .ready()
        .await
        .unwrap()
        .call(get(addr, "/products/7"))
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("age").is_none());
    assert!(first.headers().get("x-palisade-cache").is_none());
    assert_eq!(text(first).await, "product 7");

    let hit = svc
        .ready()
        .await
        .unwrap()
        .call(get(addr, "/products/7"))
        .await
        .unwrap();
    // Whole seconds since it was stored: 0 unless the machine stalled a second.
    let age: u64 = hit.headers()["age"].to_str().unwrap().parse().unwrap();
    assert!(age <= 1, "age {age}");
    assert_eq!(hit.headers()["x-palisade-cache"], "hit");
    assert_eq!(hit.headers()["content-type"], "text/plain");
    assert!(matches!(
        hit.extensions().get::<Served>(),
        Some(Served::Fresh { .. })
    ));
    assert_eq!(text(hit).await, "product 7");
    assert_eq!(server.served(), 1);

    // Not GET or HEAD: passes through, unmarked, every time.
    for _ in 0..2 {
        let post = Request::post(format!("http://{addr}/products/7"))
            .body(Full::default())
            .unwrap();
        let response = svc.ready().await.unwrap().call(post).await.unwrap();
        assert!(response.headers().get("x-palisade-cache").is_none());
        assert_eq!(text(response).await, "product 7");
    }
    assert_eq!(server.served(), 3);
}

#[tokio::test]
async fn while_the_server_fails_stale_entries_and_fallbacks_answer() {
    let server = Server::default();
    let addr = server.start().await;
    // Every request asks the server; the cache answers only when it fails.
    let cache = CacheLayer::http(
        "catalog",
        CacheConfig {
            serve_fresh: false,
            ..CacheConfig::default()
        },
    )
    .unwrap();
    let fallback = FallbackLayer::builder("catalog", |cause: &FallbackCause<'_>| {
        let mut response =
            Response::new(CachedBody::full(format!("no product ({})", cause.reason())));
        *response.status_mut() = StatusCode::OK;
        response
    })
    .classify(HttpClassifier)
    .mark(HttpMark)
    .build()
    .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(fallback)
        .layer(cache)
        .service(client());

    let first = svc
        .ready()
        .await
        .unwrap()
        .call(get(addr, "/products/1"))
        .await
        .unwrap();
    assert_eq!(text(first).await, "product 1");
    server.down.store(true, Ordering::SeqCst);

    // The server answers 503: the stale entry answers instead, marked.
    let stale = svc
        .ready()
        .await
        .unwrap()
        .call(get(addr, "/products/1"))
        .await
        .unwrap();
    assert_eq!(stale.status(), 200);
    // Whole seconds since it was stored: 0 unless the machine stalled a second.
    let age: u64 = stale.headers()["age"].to_str().unwrap().parse().unwrap();
    assert!(age <= 1, "age {age}");
    assert_eq!(stale.headers()["x-palisade-cache"], "stale");
    assert!(stale.headers().get("x-palisade-fallback").is_none());
    assert!(stale.extensions().get::<Served>().unwrap().is_stale());
    assert_eq!(text(stale).await, "product 1");

    // Nothing cached: the 503 reaches the fallback.
    let fallback = svc
        .ready()
        .await
        .unwrap()
        .call(get(addr, "/products/2"))
        .await
        .unwrap();
    assert_eq!(fallback.headers()["x-palisade-fallback"], "failure");
    assert_eq!(text(fallback).await, "no product (failure)");
    assert_eq!(server.served(), 3);

    // Back up: the server's answer wins again.
    server.down.store(false, Ordering::SeqCst);
    let fresh = svc
        .ready()
        .await
        .unwrap()
        .call(get(addr, "/products/1"))
        .await
        .unwrap();
    assert!(fresh.headers().get("x-palisade-cache").is_none());
    assert_eq!(text(fresh).await, "product 1");
}

#[tokio::test]
async fn coalesced_requests_share_one_response_and_large_bodies_are_not_shared() {
    let server = Server::default();
    let addr = server.start().await;
    let coalesce = CoalesceLayer::http(
        "catalog",
        CoalesceConfig {
            max_body_bytes: 1024,
            ..CoalesceConfig::default()
        },
    )
    .unwrap();
    let svc = ServiceBuilder::new().layer(coalesce).service(client());

    let tasks: Vec<_> = (0..20)
        .map(|_| tokio::spawn(svc.clone().oneshot(get(addr, "/products/3"))))
        .collect();
    for task in tasks {
        let response = task.await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(text(response).await, "product 3");
    }
    assert_eq!(server.served(), 1);

    // A 4 KiB body cannot be shared: one caller gets it, the other calls again.
    let tasks: Vec<_> = (0..2)
        .map(|_| tokio::spawn(svc.clone().oneshot(get(addr, "/big"))))
        .collect();
    for task in tasks {
        let response = task.await.unwrap().unwrap();
        assert_eq!(text(response).await.len(), 4096);
    }
    assert_eq!(server.served(), 3);
}

#[tokio::test]
async fn bodies_over_the_bound_stream_on_and_are_not_cached() {
    let server = Server::default();
    let addr = server.start().await;
    let cache = CacheLayer::http(
        "catalog",
        CacheConfig {
            max_body_bytes: 1024,
            ..CacheConfig::default()
        },
    )
    .unwrap();
    let handle = cache.handle();
    let mut svc = ServiceBuilder::new().layer(cache).service(client());
    for _ in 0..2 {
        let response = svc
            .ready()
            .await
            .unwrap()
            .call(get(addr, "/big"))
            .await
            .unwrap();
        assert!(response.headers().get("x-palisade-cache").is_none());
        assert_eq!(text(response).await.len(), 4096);
    }
    assert_eq!(server.served(), 2);
    handle.run_pending_tasks();
    assert_eq!(handle.entry_count(), 0);
}
