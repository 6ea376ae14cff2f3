//! The Palisade client stack against real replicas: balancing over the registered
//! replicas, and stale answers when every replica is down.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use order_demo::registry::Registry;
use order_demo::server::{self, ServerHandle};
use order_demo::stack::{self, Mode};
use tokio_util::sync::CancellationToken;

/// A catalog replica answering `GET /prices` with `answer`.
async fn replica(answer: &'static str, shutdown: &CancellationToken) -> ServerHandle {
    let listener = server::bind(([127, 0, 0, 1], 0).into())
        .await
        .expect("a free port");
    let app = Router::new().route("/prices", get(move || async move { answer }));
    server::spawn(listener, app, shutdown.clone()).expect("the replica starts")
}

/// Takes `replica` down and waits until its port refuses connections.
async fn take_down(replica: &ServerHandle) {
    replica.set_down(true);
    let addr: SocketAddr = replica.addr();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{addr} still accepts connections");
}

async fn prices(client: &stack::Client) -> (u16, String, bool) {
    let res = stack::send(client, stack::get("/prices").expect("a request"))
        .await
        .expect("an answer");
    let stale = stack::is_stale(&res);
    (
        res.status().as_u16(),
        String::from_utf8_lossy(res.body()).into_owned(),
        stale,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replica_is_skipped_and_a_dead_catalog_is_answered_stale() {
    let shutdown = CancellationToken::new();
    let a = replica("prices from a", &shutdown).await;
    let b = replica("prices from b", &shutdown).await;
    let registry = Registry::new();
    let _ra = registry.register("catalog", a.addr());
    let _rb = registry.register("catalog", b.addr());
    let client = stack::client(
        "gateway",
        "catalog",
        Mode::Palisade,
        registry.replicas("catalog").expect("a valid name"),
        stack::http_client(),
    )
    .expect("the client builds");

    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let (status, body, stale) = prices(&client).await;
        assert_eq!((status, stale), (200, false));
        seen.insert(body);
    }
    assert_eq!(seen.len(), 2, "both replicas answered: {seen:?}");

    // One replica down: retries and the balancer hide it.
    take_down(&a).await;
    for _ in 0..20 {
        let (status, body, stale) = prices(&client).await;
        assert_eq!(
            (status, body.as_str(), stale),
            (200, "prices from b", false)
        );
    }

    // Both down: the last good answer, marked stale.
    take_down(&b).await;
    let before = registry.attempts("catalog");
    let (status, body, stale) = prices(&client).await;
    assert_eq!((status, body.as_str(), stale), (200, "prices from b", true));
    assert!(
        registry.attempts("catalog") > before,
        "the call was tried before the stale answer"
    );
    assert!(registry.attempts("catalog") >= 41);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_clients_take_turns_and_have_no_stale_answers() {
    let shutdown = CancellationToken::new();
    let a = replica("prices from a", &shutdown).await;
    let b = replica("prices from b", &shutdown).await;
    let registry = Registry::new();
    let _ra = registry.register("catalog", a.addr());
    let _rb = registry.register("catalog", b.addr());
    let client = stack::client(
        "gateway",
        "catalog",
        Mode::Plain,
        registry.replicas("catalog").expect("a valid name"),
        stack::http_client(),
    )
    .expect("the client builds");

    let bodies: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(prices(&client).await.1);
        }
        v
    };
    assert_ne!(bodies[0], bodies[1], "turns alternate: {bodies:?}");
    assert_eq!(bodies[0], bodies[2]);
    assert_eq!(registry.attempts("catalog"), 4);

    take_down(&a).await;
    take_down(&b).await;
    let err = stack::send(&client, stack::get("/prices").expect("a request")).await;
    assert!(err.is_err(), "no cache without Palisade: {err:?}");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_kinds_of_client_follow_replicas_that_come_and_go() {
    let shutdown = CancellationToken::new();
    let a = replica("prices from a", &shutdown).await;
    let b = replica("prices from b", &shutdown).await;
    for mode in Mode::ALL {
        let registry = Registry::new();
        let ra = registry.register("catalog", a.addr());
        let client = stack::client(
            "gateway",
            "catalog",
            mode,
            registry.replicas("catalog").expect("a valid name"),
            stack::http_client(),
        )
        .expect("the client builds");
        assert_eq!(prices(&client).await.1, "prices from a", "{mode:?}");

        // b joins, a leaves: once the client has heard (the balancer follows in a
        // task of its own), only b answers.
        let _rb = registry.register("catalog", b.addr());
        drop(ra);
        let started = tokio::time::Instant::now();
        while prices(&client).await.1 != "prices from b" {
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{mode:?}: b never answered"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for _ in 0..10 {
            assert_eq!(prices(&client).await.1, "prices from b", "{mode:?}");
        }
    }
    shutdown.cancel();
}
