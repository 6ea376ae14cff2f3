//! Retry amplification across a chain of real HTTP services, simulated
//! deterministically with turmoil (fixed seeds for the network, the leaf's errors
//! and the retry jitter; simulated time):
//!
//! ```text
//! load (200 req/s) → gateway → order → customer → credit (the leaf)
//! ```
//!
//! Every hop is a hyper server whose handler calls the next hop through a hyper
//! client wrapped in Palisade's retry layer, and answers 502 when that call fails.
//! Each scenario runs twice: with Palisade's controls (success-funded retry budget,
//! cross-hop no-retry marking) and with a negative control, to show that the
//! controls — not luck — keep the numbers in bounds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use palisade::core::{BoxError, Error, HttpClassifier};
use palisade::retry::http::{HttpRetry, NoRetryLayer};
use palisade::retry::{Backoff, BudgetConfig, RetryLayer, Strategy};
use palisade::timeout::deadline::header::DEADLINE_MS;
use palisade::timeout::{InboundDeadlineLayer, OutboundDeadlineLayer};
use tower::{Layer, Service, ServiceExt};

const PORT: u16 = 80;
/// What each hop's outbound deadline layer subtracts for the network.
const MARGIN: Duration = Duration::from_millis(5);
/// The least time left with which a hop sends a call.
const MIN_REMAINING: Duration = Duration::from_millis(10);
const RATE: u64 = 200;
const SECONDS: u64 = 10;

/// How the leaf behaves.
#[derive(Clone, Copy, Debug)]
enum Leaf {
    /// Answers 503 to everything.
    Dead,
    /// Answers 503 to this share of requests, independently at random.
    Flaky(f64),
    /// Never answers.
    Hanging,
    /// Answers this long after the request arrives, 503 to this share of requests.
    Slow(Duration, f64),
}

/// How each hop retries.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Policy {
    /// Palisade: up to 5 attempts, a success-funded budget, no-retry marking, and
    /// deadlines read from and sent to every hop.
    Palisade,
    /// Naive: 3 attempts at every hop, no budget, no marking.
    Naive,
    /// No retries at all.
    NoRetries,
    /// Palisade, but a hop sends a call with as little as 1 ms past its margin left.
    SendsLate,
}

#[derive(Debug, Default)]
struct Report {
    offered: u64,
    answered: u64,
    succeeded: u64,
    leaf_calls: u64,
    /// The slowest answer the load generator saw.
    slowest_answer: Duration,
    /// The least time left any hop was given, by the deadline header it received.
    least_time_sent_ms: Option<u64>,
}

impl Report {
    fn leaf_load(&self) -> f64 {
        self.leaf_calls as f64 / self.offered as f64
    }
    fn success(&self) -> f64 {
        self.succeeded as f64 / self.offered as f64
    }
}

type Body = Full<Bytes>;

fn get(host: &str) -> Request<Body> {
    Request::get(format!("http://{host}/work"))
        .body(Body::new(Bytes::new()))
        .expect("a valid request")
}

fn answer(status: StatusCode) -> Response<Body> {
    let mut res = Response::new(Body::new(Bytes::new()));
    *res.status_mut() = status;
    res
}

/// One HTTP/1 request over a fresh simulated TCP connection.
async fn send(host: &'static str, req: Request<Body>) -> Result<Response<Body>, BoxError> {
    let stream = turmoil::net::TcpStream::connect((host, PORT)).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let res = sender.send_request(req).await?;
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await?.to_bytes();
    Ok(Response::from_parts(parts, Body::new(bytes)))
}

/// Serves `handler` on port 80 of the current simulated host.
async fn serve<H>(handler: H) -> turmoil::Result
where
    H: Service<Request<Incoming>, Response = Response<Body>, Error = Error>
        + Clone
        + Send
        + 'static,
    H::Future: Send,
{
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handler.clone().oneshot(req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn retry_layer(policy: Policy, name: &str, seed: u64) -> RetryLayer<HttpRetry, HttpClassifier> {
    let (attempts, budget) = match policy {
        Policy::Palisade | Policy::SendsLate => (
            5,
            BudgetConfig {
                deposit_ratio: 0.5,
                min_retries_per_sec: 10,
                max_balance: 100,
            },
        ),
        Policy::Naive => (
            3,
            BudgetConfig {
                deposit_ratio: 1.0,
                min_retries_per_sec: u32::MAX,
                max_balance: u32::MAX,
            },
        ),
        Policy::NoRetries => (1, BudgetConfig::default()),
    };
    RetryLayer::builder(name)
        .max_attempts(attempts)
        .backoff(Backoff {
            strategy: Strategy::FullJitter,
            base: Duration::from_millis(5),
            multiplier: 2.0,
            max: Duration::from_millis(50),
        })
        .budget(budget)
        .classify(HttpClassifier)
        .protocol(HttpRetry::default())
        // The jitter too is drawn from the run's seed: a seed gives the same run.
        .seed(seed)
        .without_metrics()
        .build()
        .expect("valid retry settings")
}

/// Remembers the least deadline (ms) any hop received.
fn note_deadline(req: &Request<Incoming>, least: &AtomicU64) {
    if let Some(ms) = req
        .headers()
        .get(DEADLINE_MS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        least.fetch_min(ms, Ordering::Relaxed);
    }
}

/// A mid-tier hop: calls `next` and answers 200 or 502.
async fn mid_tier(
    next: &'static str,
    policy: Policy,
    seed: u64,
    least: Arc<AtomicU64>,
) -> turmoil::Result {
    let transport = tower::service_fn(move |req| send(next, req));
    let palisade = matches!(policy, Policy::Palisade | Policy::SendsLate);
    let min_remaining = if policy == Policy::SendsLate {
        MARGIN + Duration::from_millis(1)
    } else {
        MIN_REMAINING
    };
    let client = if palisade {
        let deadline = OutboundDeadlineLayer::builder(next)
            .margin(MARGIN)
            .min_remaining(min_remaining)
            .build()
            .expect("valid outbound deadline settings");
        tower::util::BoxCloneService::new(
            retry_layer(policy, next, seed).layer(deadline.layer(transport)),
        )
    } else {
        tower::util::BoxCloneService::new(retry_layer(policy, next, seed).layer(transport))
    };
    let handler = tower::service_fn(move |req: Request<Incoming>| {
        note_deadline(&req, &least);
        let client = client.clone();
        async move {
            let ok = matches!(client.oneshot(get(next)).await, Ok(r) if r.status().is_success());
            Ok::<_, Error>(answer(if ok {
                StatusCode::OK
            } else {
                StatusCode::BAD_GATEWAY
            }))
        }
    });
    if palisade {
        let inbound = InboundDeadlineLayer::builder(next)
            .max(Duration::from_secs(10))
            .build()
            .expect("valid inbound deadline settings");
        serve(inbound.layer(NoRetryLayer.layer(handler))).await
    } else {
        serve(handler).await
    }
}

/// Runs the chain for `SECONDS` at `RATE`; `edge_deadline` is sent by the load
/// generator with each request.
fn run(leaf: Leaf, policy: Policy, edge_deadline: Option<Duration>, seed: u64) -> Report {
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(SECONDS + 30))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(2))
        .rng_seed(seed)
        .build();

    let least = Arc::new(AtomicU64::new(u64::MAX));
    let leaf_calls = Arc::new(AtomicU64::new(0));
    let (calls, leaf_least) = (leaf_calls.clone(), least.clone());
    sim.host("credit", move || {
        let (calls, least) = (calls.clone(), leaf_least.clone());
        async move {
            let rng = Arc::new(std::sync::Mutex::new(fastrand::Rng::with_seed(seed)));
            let handler = tower::service_fn(move |req: Request<Incoming>| {
                calls.fetch_add(1, Ordering::Relaxed);
                note_deadline(&req, &least);
                let fail = match leaf {
                    Leaf::Dead => true,
                    Leaf::Flaky(p) | Leaf::Slow(_, p) => rng.lock().expect("rng lock").f64() < p,
                    Leaf::Hanging => false,
                };
                async move {
                    match leaf {
                        Leaf::Hanging => std::future::pending::<()>().await,
                        Leaf::Slow(after, _) => tokio::time::sleep(after).await,
                        _ => {}
                    }
                    Ok::<_, Error>(answer(if fail {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    }))
                }
            });
            serve(handler).await
        }
    });
    for (hop, (host, next)) in [
        ("customer", "credit"),
        ("order", "customer"),
        ("gateway", "order"),
    ]
    .into_iter()
    .enumerate()
    {
        let least = least.clone();
        let seed = seed.wrapping_add(hop as u64 + 1);
        sim.host(host, move || mid_tier(next, policy, seed, least.clone()));
    }

    let (succeeded, answered) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let slowest_us = Arc::new(AtomicU64::new(0));
    let (ok, done, slowest) = (succeeded.clone(), answered.clone(), slowest_us.clone());
    sim.client("load", async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1_000 / RATE));
        let mut requests = Vec::new();
        for _ in 0..RATE * SECONDS {
            tick.tick().await;
            let (ok, done, slowest) = (ok.clone(), done.clone(), slowest.clone());
            requests.push(tokio::spawn(async move {
                let mut req = get("gateway");
                if let Some(d) = edge_deadline {
                    req.headers_mut()
                        .insert(DEADLINE_MS, (d.as_millis() as u64).into());
                }
                let start = tokio::time::Instant::now();
                // The load generator gives up after 2 s, answered or not.
                let res = tokio::time::timeout(Duration::from_secs(2), send("gateway", req)).await;
                slowest.fetch_max(start.elapsed().as_micros() as u64, Ordering::Relaxed);
                if let Ok(res) = res {
                    done.fetch_add(1, Ordering::Relaxed);
                    if matches!(res, Ok(r) if r.status().is_success()) {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for r in requests {
            let _ = r.await;
        }
        Ok(())
    });
    sim.run().expect("the simulation runs to completion");
    let least_ms = least.load(Ordering::Relaxed);
    Report {
        offered: RATE * SECONDS,
        answered: answered.load(Ordering::Relaxed),
        succeeded: succeeded.load(Ordering::Relaxed),
        leaf_calls: leaf_calls.load(Ordering::Relaxed),
        slowest_answer: Duration::from_micros(slowest_us.load(Ordering::Relaxed)),
        least_time_sent_ms: (least_ms != u64::MAX).then_some(least_ms),
    }
}

#[test]
fn a_dead_leaf_sees_at_most_1_10x_the_offered_load() {
    let palisade = run(Leaf::Dead, Policy::Palisade, None, 7);
    println!(
        "dead leaf, palisade: {palisade:?} → {:.3}×",
        palisade.leaf_load()
    );
    assert_eq!(palisade.succeeded, 0);
    assert!(palisade.leaf_load() <= 1.10, "{:.3}×", palisade.leaf_load());

    // Negative control: naive retries multiply at every hop (3 × 3 × 3).
    let naive = run(Leaf::Dead, Policy::Naive, None, 7);
    println!("dead leaf, naive: {naive:?} → {:.3}×", naive.leaf_load());
    assert!(naive.leaf_load() > 1.10, "{:.3}×", naive.leaf_load());
}

#[test]
fn twenty_percent_leaf_errors_still_give_three_nines_at_1_27x() {
    let palisade = run(Leaf::Flaky(0.2), Policy::Palisade, None, 11);
    println!(
        "20% leaf errors, palisade: {palisade:?} → success {:.4}, leaf load {:.3}×",
        palisade.success(),
        palisade.leaf_load()
    );
    assert!(
        palisade.success() >= 0.999,
        "success {:.4}",
        palisade.success()
    );
    assert!(palisade.leaf_load() <= 1.27, "{:.3}×", palisade.leaf_load());

    // Negative control: without retries, a fifth of the calls fail. (Naive retries
    // would pass here too: at 20% errors the budget's part is to stay out of the
    // way; the dead-leaf test shows what it holds back.)
    let none = run(Leaf::Flaky(0.2), Policy::NoRetries, None, 11);
    println!(
        "20% leaf errors, no retries: {none:?} → success {:.4}",
        none.success()
    );
    assert!(none.success() < 0.999, "success {:.4}", none.success());
}

#[test]
fn a_300_ms_edge_deadline_holds_with_a_hanging_leaf() {
    let edge = Some(Duration::from_millis(300));
    let palisade = run(Leaf::Hanging, Policy::Palisade, edge, 13);
    println!("hanging leaf, palisade: {palisade:?}");
    assert_eq!(
        palisade.answered, palisade.offered,
        "every request is answered"
    );
    assert!(
        palisade.slowest_answer <= Duration::from_millis(305),
        "slowest answer {:?}",
        palisade.slowest_answer
    );

    // Negative control: without deadlines every request waits on the hanging leaf
    // until the load generator gives up.
    let naive = run(Leaf::Hanging, Policy::Naive, edge, 13);
    println!("hanging leaf, naive: {naive:?}");
    assert!(naive.slowest_answer > Duration::from_millis(305));
}

#[test]
fn no_hop_sends_a_call_with_less_than_min_remaining_left() {
    // Each try at the leaf takes 132 ms and half of them fail, so the leaf's caller
    // starts third tries with a few ms of its 300 ms left (successes fund the
    // retries).
    let edge = Some(Duration::from_millis(300));
    let leaf = Leaf::Slow(Duration::from_millis(132), 0.5);
    let palisade = run(leaf, Policy::Palisade, edge, 17);
    println!("slow, flaky leaf, palisade: {palisade:?}");
    assert_eq!(palisade.answered, palisade.offered);
    // A hop sends remaining − margin, and only with at least MIN_REMAINING left,
    // so no hop ever receives less than MIN_REMAINING − MARGIN.
    let least = palisade.least_time_sent_ms.expect("deadlines were sent");
    assert!(
        Duration::from_millis(least) + MARGIN >= MIN_REMAINING,
        "a call was sent with {least} ms + margin left"
    );

    // Negative control: a hop that sends with 1 ms past its margin left does send
    // such calls here.
    let late = run(leaf, Policy::SendsLate, edge, 17);
    println!("slow, flaky leaf, sending late: {late:?}");
    let least = late.least_time_sent_ms.expect("deadlines were sent");
    assert!(
        Duration::from_millis(least) + MARGIN < MIN_REMAINING,
        "the least time sent was {least} ms"
    );
}
