//! A stand-in for a service using Palisade, for trying `live-check.sh` and `render`
//! without the order demo: every Palisade layer (breaker, retry, hedge, timeout,
//! deadlines, rate limit, bulkhead, adaptive limit, throttle, shedding) for two
//! downstreams, and a balancer with fallback, cache and fault injection for a third,
//! under real, bounded load, with `/metrics` served on 127.0.0.1.
//!
//! `inventory` alternates between healthy and failing every 10 s (its breaker opens
//! and recovers); `payment` is slow now and then; `catalog` has two replicas, one
//! always failing (ejected, back, ejected again), and every call to it fails by
//! injected error for the last 10 s of every 30 s (cached answers are served stale,
//! the rest by the fallback). It prints `listening on ADDR` and exits after
//! `--seconds` (default 120).
//!
//! ```text
//! cargo run -p palisade-dashboards --example metrics_standin -- --seconds 60
//! ```

#[path = "../tests/support/layers.rs"]
mod layers;

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::routing::get;
use layers::Behaviour;
use tower::{Service, ServiceExt};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut seconds = 120u64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--seconds takes a whole number")?;
            }
            other => return Err(format!("unknown argument `{other}` (--seconds N)").into()),
        }
    }
    let handle = palisade::prometheus::install_recorder()?;

    let inventory = Behaviour::new(10, Duration::from_millis(5));
    let payment = Behaviour {
        slow_every: std::sync::Arc::new(7.into()),
        slow: Duration::from_millis(300),
        ..Behaviour::new(0, Duration::from_millis(20))
    };
    let clients = [
        layers::client("inventory", inventory.clone()),
        layers::client("payment", payment),
    ];
    let server = layers::server("order-api", "inventory");
    let catalog = layers::replicated("catalog", Duration::from_millis(5));
    let _replicas = catalog.replicas;
    let mut faulty = false;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on {}", listener.local_addr()?);
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Open-loop load: 40 client calls and 20 inbound requests a second, for `seconds`.
    let mut tick = tokio::time::interval(Duration::from_millis(25));
    let start = tokio::time::Instant::now();
    let mut n: u32 = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        n = n.wrapping_add(1);
        // inventory: healthy (1 in 10 fails) for 10 s, then failing (every call) for 10 s.
        let failing = start.elapsed().as_secs() / 10 % 2 == 1;
        inventory
            .fail_every
            .store(if failing { 1 } else { 10 }, Ordering::Relaxed);
        // catalog: injected errors for the last 10 s of every 30 s.
        if faulty != (start.elapsed().as_secs() % 30 >= 20) {
            faulty = !faulty;
            if faulty {
                catalog.faults.set(layers::all_errors())?;
            } else {
                catalog.faults.clear();
            }
        }
        let mut client = catalog.client.clone();
        tokio::spawn(async move {
            // 40 keys: each asked once a second, so most answers come from the cache.
            let _ = client.ready().await?.call(n % 40).await;
            Ok::<_, palisade::Error>(())
        });
        for client in &clients {
            let mut client = client.clone();
            tokio::spawn(async move {
                let _ = client.ready().await?.call(n).await;
                Ok::<_, palisade::Error>(())
            });
        }
        if n.is_multiple_of(2) {
            let mut server = server.clone();
            // Some callers allow only a millisecond, some none at all (already expired).
            let budget = match n % 20 {
                0 => Some("1m"),
                10 => Some("0m"),
                _ => None,
            };
            tokio::spawn(async move {
                let mut req = http::Request::new(());
                if let Some(budget) = budget {
                    req.headers_mut()
                        .insert("grpc-timeout", http::HeaderValue::from_static(budget));
                }
                let _ = server.ready().await?.call(req).await;
                Ok::<_, palisade::core::BoxError>(())
            });
        }
    }
    Ok(())
}
