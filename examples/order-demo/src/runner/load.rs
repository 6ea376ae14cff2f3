//! Open-loop load: requests leave at their scheduled times whatever happened to
//! the earlier ones, and each latency counts from the scheduled time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use palisade::retry::http::IDEMPOTENCY_KEY_HEADER;
use palisade::timeout::deadline::header::DEADLINE_MS;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::services::{API_KEY_HEADER, API_KEYS, CUSTOMERS, SKUS};

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `POST /orders`.
    Order,
    /// `GET /customers/{id}/overview`.
    Overview,
}

/// One scheduled request.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// When it is due, from the start.
    pub at: Duration,
    /// What it asks for.
    pub kind: Kind,
    /// The customer.
    pub customer_id: i64,
    /// The product (orders).
    pub sku: i64,
}

/// One request's fate.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was due, from the start.
    pub at: Duration,
    /// From when it was due to when its answer came (or the generator gave up).
    pub latency: Duration,
    /// The status (0: no answer in time, or the connection failed).
    pub status: u16,
    /// Whether it succeeded.
    pub ok: bool,
    /// What it asked for.
    pub kind: Kind,
    /// Its idempotency key (orders).
    pub key: Option<String>,
}

/// The shape of the load.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Arrivals per second.
    pub rate: f64,
    /// How long.
    pub length: Duration,
    /// A window `(from, to, rate)` with another arrival rate.
    pub spike: Option<(Duration, Duration, f64)>,
    /// Share of overview requests.
    pub overview_share: f64,
    /// Seeds the choices.
    pub seed: u64,
}

/// The arrivals of `shape`: evenly spaced at the rate in force, deterministic for
/// a seed.
pub fn schedule(shape: &Shape) -> Vec<Arrival> {
    let mut rng = fastrand::Rng::with_seed(shape.seed);
    let mut arrivals = Vec::new();
    let mut t = 0.0f64;
    let length = shape.length.as_secs_f64();
    while t < length {
        let rate = match shape.spike {
            Some((from, to, rate)) if t >= from.as_secs_f64() && t < to.as_secs_f64() => rate,
            _ => shape.rate,
        };
        let kind = if rng.f64() < shape.overview_share {
            Kind::Overview
        } else {
            Kind::Order
        };
        arrivals.push(Arrival {
            at: Duration::from_secs_f64(t),
            kind,
            customer_id: rng.i64(1..=CUSTOMERS),
            sku: rng.i64(1..=SKUS),
        });
        t += 1.0 / rate.max(0.001);
    }
    arrivals
}

/// Counters the progress line reads.
#[derive(Debug, Default)]
pub struct Progress {
    /// Requests sent.
    pub sent: AtomicU64,
    /// Requests answered (or given up on).
    pub done: AtomicU64,
    /// Requests that succeeded.
    pub ok: AtomicU64,
    /// Milliseconds since the start of the load.
    pub elapsed_ms: AtomicU64,
}

/// Prints `label`, the time and the success so far on one line every 250 ms.
pub fn spawn_progress_line(
    progress: Arc<Progress>,
    label: String,
    length: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let done = progress.done.load(Ordering::Relaxed);
            let ok = progress.ok.load(Ordering::Relaxed);
            let rate = if done == 0 {
                100.0
            } else {
                ok as f64 * 100.0 / done as f64
            };
            eprint!(
                "\r\x1b[2K{label} {:>5.1}/{:.1} s  sent {:>5}  ok {:>5.1}%",
                progress.elapsed_ms.load(Ordering::Relaxed) as f64 / 1000.0,
                length.as_secs_f64(),
                progress.sent.load(Ordering::Relaxed),
                rate
            );
        }
    })
}

/// Sends every arrival of `schedule` to the gateway at `gateway` on time, waits
/// for the answers (at most `timeout` each) and returns the samples in arrival
/// order.
pub async fn generate(
    gateway: SocketAddr,
    schedule: &[Arrival],
    tag: &str,
    start: Instant,
    timeout: Duration,
    max_in_flight: usize,
    progress: Arc<Progress>,
) -> Vec<Sample> {
    let client = crate::stack::http_client();
    let mut tasks = JoinSet::new();
    let mut samples: Vec<Option<Sample>> = vec![None; schedule.len()];
    let in_flight = Arc::new(AtomicU64::new(0));
    for (i, arrival) in schedule.iter().enumerate() {
        let due = start + arrival.at;
        tokio::time::sleep_until(due).await;
        progress.elapsed_ms.store(
            u64::try_from(start.elapsed().as_millis()).unwrap_or(0),
            Ordering::Relaxed,
        );
        progress.sent.fetch_add(1, Ordering::Relaxed);
        let key = (arrival.kind == Kind::Order).then(|| format!("{tag}-{i}"));
        if in_flight.load(Ordering::Relaxed) >= max_in_flight as u64 {
            progress.done.fetch_add(1, Ordering::Relaxed);
            // Given up on unsent: it counts as the slowest answer (the timeout), as
            // an unanswered request does, so a backlog cannot lower the percentiles.
            samples[i] = Some(Sample {
                at: arrival.at,
                latency: timeout,
                status: 0,
                ok: false,
                kind: arrival.kind,
                key,
            });
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let request = build(
            gateway,
            arrival,
            key.as_deref(),
            API_KEYS[i % API_KEYS.len()],
            timeout,
        );
        let client = client.clone();
        let (progress, in_flight) = (progress.clone(), in_flight.clone());
        let kind = arrival.kind;
        let at = arrival.at;
        tasks.spawn(async move {
            let answer = async {
                let res = client.request(request?).await?;
                let status = res.status().as_u16();
                res.into_body().collect().await?;
                Ok::<u16, palisade::BoxError>(status)
            };
            let status = match tokio::time::timeout_at(due + timeout, answer).await {
                Ok(Ok(status)) => status,
                _ => 0,
            };
            let ok = match kind {
                Kind::Order => status == 201,
                Kind::Overview => status == 200,
            };
            in_flight.fetch_sub(1, Ordering::Relaxed);
            progress.done.fetch_add(1, Ordering::Relaxed);
            if ok {
                progress.ok.fetch_add(1, Ordering::Relaxed);
            }
            (
                i,
                Sample {
                    at,
                    latency: due.elapsed().min(timeout),
                    status,
                    ok,
                    kind,
                    key,
                },
            )
        });
        // Collect finished answers as we go, so memory follows what is in flight.
        while let Some(Ok((j, sample))) = tasks.try_join_next() {
            samples[j] = Some(sample);
        }
    }
    while let Some(joined) = tasks.join_next().await {
        if let Ok((j, sample)) = joined {
            samples[j] = Some(sample);
        }
    }
    progress.elapsed_ms.store(
        u64::try_from(start.elapsed().as_millis()).unwrap_or(0),
        Ordering::Relaxed,
    );
    samples
        .into_iter()
        .zip(schedule)
        .map(|(s, a)| {
            s.unwrap_or(Sample {
                at: a.at,
                latency: timeout,
                status: 0,
                ok: false,
                kind: a.kind,
                key: None,
            })
        })
        .collect()
}

fn build(
    gateway: SocketAddr,
    arrival: &Arrival,
    key: Option<&str>,
    api_key: &str,
    timeout: Duration,
) -> Result<http::Request<Full<Bytes>>, palisade::BoxError> {
    let deadline_ms = timeout.as_millis().to_string();
    let req = match arrival.kind {
        Kind::Order => {
            let body = serde_json::to_vec(&crate::services::order::NewOrder {
                customer_id: arrival.customer_id,
                sku: arrival.sku,
                qty: 1,
            })?;
            http::Request::post(format!("http://{gateway}/orders"))
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(IDEMPOTENCY_KEY_HEADER, key.unwrap_or_default())
                .header(API_KEY_HEADER, api_key)
                .header(DEADLINE_MS, deadline_ms)
                .body(Full::new(Bytes::from(body)))?
        }
        Kind::Overview => http::Request::get(format!(
            "http://{gateway}/customers/{}/overview",
            arrival.customer_id
        ))
        .header(API_KEY_HEADER, api_key)
        .header(DEADLINE_MS, deadline_ms)
        .body(Full::new(Bytes::new()))?,
    };
    Ok(req)
}
