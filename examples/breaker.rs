//! A circuit breaker opening and recovering against a flaky downstream.
//!
//! `cargo run --example breaker`
//!
//! A pretend "inventory" service answers in 20 ms, but is down from second 1 to
//! second 3. A client calls it every 25 ms through a Palisade circuit breaker. The
//! breaker notices the outage, stops sending calls (failing them fast instead),
//! probes the service after its open wait, and closes again once it has recovered.
//! Every state change is printed as it happens, then a per-half-second table shows
//! what the client saw and what the downstream had to handle.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use palisade::breaker::{BreakerEvent, CircuitBreakerLayer};
use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt};

const RUN: Duration = Duration::from_secs(5);
const OUTAGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3));
const INTERVAL: Duration = Duration::from_millis(25);
const SLICE: Duration = Duration::from_millis(500);

#[derive(Default, Clone, Copy)]
struct Slice {
    ok: u32,
    failed: u32,
    rejected: u32,
    reached_downstream: u32,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let reached = Arc::new(AtomicU64::new(0));

    let breaker = CircuitBreakerLayer::builder("inventory")
        .count_window(20)
        .minimum_calls(10)
        .failure_rate_threshold(0.5)
        .wait_in_open(Duration::from_millis(500))
        .wait_backoff(2.0, Duration::from_secs(1))
        .half_open_probes(2)
        .on_event(move |event: &BreakerEvent| {
            if let BreakerEvent::Transition { from, to, open_for } = event {
                let at = start.elapsed().as_secs_f64();
                match open_for {
                    Some(wait) => println!(
                        "  [{at:5.2}s] breaker {from} -> {to} (probing again in {} ms)",
                        wait.as_millis()
                    ),
                    None => println!("  [{at:5.2}s] breaker {from} -> {to}"),
                }
            }
        })
        .build()?;
    let handle = breaker.handle();

    let downstream_calls = reached.clone();
    let mut inventory = ServiceBuilder::new()
        .layer(breaker)
        .service_fn(move |_item: u32| {
            let calls = downstream_calls.clone();
            async move {
                calls.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
                let t = start.elapsed();
                if t >= OUTAGE.0 && t < OUTAGE.1 {
                    Err(std::io::Error::other("inventory is down"))
                } else {
                    Ok("in stock")
                }
            }
        });

    println!(
        "Calling \"inventory\" every {} ms for {} s; it is down from {} s to {} s.\n",
        INTERVAL.as_millis(),
        RUN.as_secs(),
        OUTAGE.0.as_secs(),
        OUTAGE.1.as_secs()
    );
    let mut slices = vec![Slice::default(); (RUN.as_millis() / SLICE.as_millis()) as usize];
    let mut ticker = tokio::time::interval(INTERVAL);
    let mut item = 0;
    while start.elapsed() < RUN {
        ticker.tick().await;
        let slot =
            ((start.elapsed().as_millis() / SLICE.as_millis()) as usize).min(slices.len() - 1);
        let before = reached.load(Ordering::Relaxed);
        let result = inventory.ready().await?.call(item).await;
        item += 1;
        let slice = &mut slices[slot];
        slice.reached_downstream += (reached.load(Ordering::Relaxed) - before) as u32;
        match result {
            Ok(_) => slice.ok += 1,
            Err(e) if e.is_rejection() => slice.rejected += 1,
            Err(_) => slice.failed += 1,
        }
    }

    println!("\n  time        ok  failed  rejected (fast)  reached inventory");
    for (i, s) in slices.iter().enumerate() {
        let from = i as f64 * SLICE.as_secs_f64();
        let marker = if from >= OUTAGE.0.as_secs_f64() && from < OUTAGE.1.as_secs_f64() {
            "  <- outage"
        } else {
            ""
        };
        println!(
            "  {from:3.1}-{:3.1}s  {:4}  {:6}  {:15}  {:17}{marker}",
            from + SLICE.as_secs_f64(),
            s.ok,
            s.failed,
            s.rejected,
            s.reached_downstream
        );
    }
    let total: Slice = slices.iter().fold(Slice::default(), |a, s| Slice {
        ok: a.ok + s.ok,
        failed: a.failed + s.failed,
        rejected: a.rejected + s.rejected,
        reached_downstream: a.reached_downstream + s.reached_downstream,
    });
    println!(
        "\n{} calls: {} ok, {} failed at the downstream, {} refused fast by the breaker.",
        total.ok + total.failed + total.rejected,
        total.ok,
        total.failed,
        total.rejected
    );
    println!(
        "The breaker spared the failing inventory service {} of the calls it would have received.",
        total.rejected
    );
    println!("Final state: {}", handle.state());
    Ok(())
}
