//! The chaos proxy between a real hyper client and a real hyper server on loopback.
//!
//! Time here is wall-clock (real sockets), so every timing assertion is a lower
//! bound that the injected fault itself guarantees, never an upper bound on speed.

use std::convert::Infallible;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use palisade_fault::proxy::{ChaosProxy, ProxyConfig, ResetFault};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

const BIG: usize = 10_000;

/// A hyper server on 127.0.0.1: `/` answers `hello`, `/big` answers 10,000 bytes.
/// Counts the requests it receives.
async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&requests);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let body = if req.uri().path() == "/big" {
                        Bytes::from(vec![b'x'; BIG])
                    } else {
                        Bytes::from_static(b"hello")
                    };
                    async move { Ok::<_, Infallible>(http::Response::new(Full::new(body))) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, requests)
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(addr: SocketAddr, path: &str) -> Result<Bytes, hyper_util::client::legacy::Error> {
    let uri: http::Uri = format!("http://{addr}{path}").parse().unwrap();
    let response = client().get(uri).await?;
    assert_eq!(response.status(), 200);
    Ok(response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes())
}

/// The io::Error kind somewhere in `err`'s source chain.
fn io_kind(err: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        current = e.source();
    }
    None
}

#[tokio::test]
async fn forwards_untouched_by_default() {
    let (upstream, requests) = upstream().await;
    let proxy = ChaosProxy::start("127.0.0.1:0".parse().unwrap(), upstream)
        .await
        .unwrap();
    assert_eq!(proxy.local_addr().ip().to_string(), "127.0.0.1");
    assert_eq!(&get(proxy.local_addr(), "/").await.unwrap()[..], b"hello");
    assert_eq!(get(proxy.local_addr(), "/big").await.unwrap().len(), BIG);
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    proxy.shutdown().await;
}

#[tokio::test]
async fn adds_latency_in_each_direction() {
    let (upstream, _) = upstream().await;
    let proxy = ChaosProxy::start("127.0.0.1:0".parse().unwrap(), upstream)
        .await
        .unwrap();
    proxy
        .set(ProxyConfig {
            latency_to_upstream: Duration::from_millis(150),
            latency_to_client: Duration::from_millis(100),
            ..ProxyConfig::default()
        })
        .unwrap();
    let started = Instant::now();
    assert_eq!(&get(proxy.local_addr(), "/").await.unwrap()[..], b"hello");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "a request and its answer each wait their direction's latency: {took:?}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_reset_mid_stream_is_a_connection_error_for_hyper() {
    let (upstream, requests) = upstream().await;
    let proxy = ChaosProxy::builder(upstream)
        .config(ProxyConfig {
            reset: Some(ResetFault {
                percent: 100.0,
                after_bytes: 2_000,
            }),
            ..ProxyConfig::default()
        })
        .unwrap()
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // The headers and part of the body arrive, then the connection is reset.
    let uri: http::Uri = format!("http://{}/big", proxy.local_addr())
        .parse()
        .unwrap();
    let response = client()
        .get(uri)
        .await
        .expect("headers arrive before the reset");
    let err = response.into_body().collect().await.unwrap_err();
    assert_eq!(io_kind(&err), Some(ErrorKind::ConnectionReset), "{err:?}");
    assert_eq!(requests.load(Ordering::SeqCst), 1);

    // Reset before any answer: the request itself fails.
    proxy
        .set(ProxyConfig {
            reset: Some(ResetFault {
                percent: 100.0,
                after_bytes: 0,
            }),
            ..ProxyConfig::default()
        })
        .unwrap();
    let err = get(proxy.local_addr(), "/").await.unwrap_err();
    assert_eq!(io_kind(&err), Some(ErrorKind::ConnectionReset), "{err:?}");

    // Faults cleared: answers again.
    proxy.clear();
    assert_eq!(&get(proxy.local_addr(), "/").await.unwrap()[..], b"hello");
    proxy.shutdown().await;
}

#[tokio::test]
async fn resets_a_share_of_connections() {
    let (upstream, _) = upstream().await;
    let proxy = ChaosProxy::builder(upstream)
        .seed(21)
        .config(ProxyConfig {
            reset: Some(ResetFault {
                percent: 50.0,
                after_bytes: 0,
            }),
            ..ProxyConfig::default()
        })
        .unwrap()
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut failed = 0;
    for _ in 0..40 {
        // A fresh client per request: one connection each.
        if get(proxy.local_addr(), "/").await.is_err() {
            failed += 1;
        }
    }
    // 40 draws at 50%: 8..=32 is beyond 3.7σ either side.
    assert!((8..=32).contains(&failed), "failed {failed} of 40");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_blackhole_times_out_the_client() {
    let (upstream, requests) = upstream().await;
    let proxy = ChaosProxy::start("127.0.0.1:0".parse().unwrap(), upstream)
        .await
        .unwrap();
    proxy.update(|c| c.blackhole = true).unwrap();
    let outcome = timeout(Duration::from_millis(300), get(proxy.local_addr(), "/")).await;
    assert!(outcome.is_err(), "no answer within the client's timeout");
    assert_eq!(
        requests.load(Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );

    // Accepted and held open, never answered.
    let mut raw = TcpStream::connect(proxy.local_addr()).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        timeout(Duration::from_millis(300), raw.read(&mut buf))
            .await
            .is_err()
    );
    for _ in 0..500 {
        if proxy.connections() >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(proxy.connections() >= 1, "the connection was accepted");
    assert_eq!(requests.load(Ordering::SeqCst), 0);

    proxy.update(|c| c.blackhole = false).unwrap();
    assert_eq!(&get(proxy.local_addr(), "/").await.unwrap()[..], b"hello");

    // The connection accepted during the blackhole forwards again once it lifts
    // (what was sent meanwhile was dropped).
    raw.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = timeout(Duration::from_secs(5), async {
        while !answer.ends_with(b"hello") {
            let n = raw.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before answering");
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "answered: {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn caps_bandwidth() {
    let (upstream, _) = upstream().await;
    let proxy = ChaosProxy::start("127.0.0.1:0".parse().unwrap(), upstream)
        .await
        .unwrap();
    proxy
        .set(ProxyConfig {
            bandwidth: Some(20_000),
            ..ProxyConfig::default()
        })
        .unwrap();
    let started = Instant::now();
    let body = get(proxy.local_addr(), "/big").await.unwrap();
    let took = started.elapsed();
    assert_eq!(body.len(), BIG);
    // Over 10,000 bytes at 20,000 B/s takes about half a second; the pacing lets the
    // first slice through at once, so 0.4 s is a bound it can never beat.
    assert!(
        took >= Duration::from_millis(400),
        "{BIG} bytes at 20000 B/s arrived in {took:?}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn refuses_connections_and_reopens() {
    let (upstream, _) = upstream().await;
    let proxy = ChaosProxy::start("127.0.0.1:0".parse().unwrap(), upstream)
        .await
        .unwrap();
    let addr = proxy.local_addr();
    proxy.update(|c| c.refuse = true).unwrap();
    // The accept loop closes the listener when it sees the change (a connect racing
    // with the close may see a reset instead).
    let mut last = None;
    for _ in 0..100 {
        last = TcpStream::connect(addr).await.err().map(|e| e.kind());
        if last == Some(ErrorKind::ConnectionRefused) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(last, Some(ErrorKind::ConnectionRefused));
    let err = get(addr, "/").await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");

    proxy.update(|c| c.refuse = false).unwrap();
    let mut answer = None;
    for _ in 0..100 {
        if let Ok(body) = get(addr, "/").await {
            answer = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        &answer.expect("answers again on the same port")[..],
        b"hello"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn bounds_connections() {
    let (upstream, _) = upstream().await;
    let proxy = ChaosProxy::builder(upstream)
        .max_connections(2)
        .unwrap()
        .start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let _a = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let _b = TcpStream::connect(proxy.local_addr()).await.unwrap();
    for _ in 0..100 {
        if proxy.connections() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(proxy.connections(), 2);
    let mut third = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let mut buf = [0u8; 16];
    let read = timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("the extra connection is closed at once");
    assert!(
        matches!(&read, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "{read:?}"
    );
    assert_eq!(proxy.connections(), 2);
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_upstream_resets_the_client() {
    // A port that was free a moment ago and has no listener.
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = gone.local_addr().unwrap();
    drop(gone);
    let proxy = ChaosProxy::start("127.0.0.1:0".parse().unwrap(), upstream)
        .await
        .unwrap();
    let err = get(proxy.local_addr(), "/").await.unwrap_err();
    assert!(
        matches!(
            io_kind(&err),
            Some(ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof)
        ) || err.to_string().contains("connection closed"),
        "{err:?}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_the_listener_and_every_connection() {
    let (upstream, _) = upstream().await;
    let proxy = ChaosProxy::start("127.0.0.1:0".parse().unwrap(), upstream)
        .await
        .unwrap();
    let addr = proxy.local_addr();
    let mut open = TcpStream::connect(addr).await.unwrap();
    open.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = open.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let handle = proxy.handle();
    proxy.shutdown().await;
    assert_eq!(handle.connections(), 0);
    let closed = timeout(Duration::from_secs(5), open.read(&mut buf))
        .await
        .expect("the open connection is closed");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    assert_eq!(
        TcpStream::connect(addr).await.unwrap_err().kind(),
        ErrorKind::ConnectionRefused
    );
}

#[tokio::test]
async fn refuses_bad_configs_naming_the_field() {
    let (upstream, _) = upstream().await;
    let proxy = ChaosProxy::start("127.0.0.1:0".parse().unwrap(), upstream)
        .await
        .unwrap();
    let err = proxy
        .set(ProxyConfig {
            reset: Some(ResetFault {
                percent: 101.0,
                after_bytes: 0,
            }),
            ..ProxyConfig::default()
        })
        .unwrap_err();
    assert_eq!(err.to_string(), "reset.percent: 101 is not within 0..=100");
    assert_eq!(proxy.config(), ProxyConfig::default());
    let err = ChaosProxy::builder(upstream)
        .max_connections(0)
        .unwrap_err();
    assert_eq!(err.to_string(), "max_connections: must be more than zero");
    let err = serde_json::from_str::<ProxyConfig>(r#"{"latency":"1s"}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field `latency`"), "{err}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_upstream_that_closes_at_once_is_closed_on_the_client_under_an_immediate_reset() {
    // An upstream that accepts and closes without a byte.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    let proxy = ChaosProxy::start("127.0.0.1:0".parse().unwrap(), upstream)
        .await
        .unwrap();
    proxy
        .update(|c| {
            c.reset = Some(ResetFault {
                percent: 100.0,
                after_bytes: 0,
            })
        })
        .unwrap();
    let mut raw = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let mut buf = [0u8; 16];
    // Nothing came from the upstream, so nothing is reset: the client sees the
    // close (it used to wait for ever).
    let read = timeout(Duration::from_secs(5), raw.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0))), "{read:?}");
    proxy.shutdown().await;
}
