//! The demo order system's gateway with Palisade's full stacks against the same
//! gateway with plain clients, side by side in one run: requests per second through
//! the gateway under a closed-loop load of [`CONNECTIONS`] keep-alive connections.
//!
//! Both systems (every service in this process, on loopback ports, SQLite stores in
//! fresh temporary directories) run with no faults, and with the demo's deliberate
//! capacity limits raised so that they never bind: the figures are the stacks' cost,
//! not the demo's capacity. What is raised, against the demo runner's settings:
//!
//! - payment: 1024 workers and no processing time (the runner: 2 workers × 40 ms,
//!   its capacity of 50 orders per second);
//! - the gateway's per-client rate limit: 10⁹ requests per second per API key (the
//!   runner: a quarter of the capacity, plus headroom) — still checked on every
//!   request;
//! - the gateway's load shedding: 100 000 in flight (the runner: 64) — still counted;
//! - the client bulkheads gateway → order and order → payment: 1024 at once and 1024
//!   queued (the demo: 8 and 8) — still taken on every call;
//! - the adaptive concurrency limit toward shipment: never below 1024 (the demo:
//!   between 16 and 64) — still admitting, timing and updating on every call.
//!
//! Every other policy stays as the demo has it: retry with its budget, circuit
//! breakers, per-try timeouts, deadline propagation, power-of-two-choices balancing
//! with outlier ejection, the stale-if-error cache of customer and catalog, the
//! client-side throttle toward shipment, metrics into a Prometheus recorder.
//!
//! Routes: `GET /customers/{id}/overview` (customer, order history and catalog in
//! parallel) and `POST /orders` (the whole chain: catalog, then credit, stock,
//! payment and shipment, each writing to its SQLite store). Every answer is checked:
//! an overview must be `200` with every part present, an order `201` (completed); a
//! sample with any other answer aborts the bench.
//!
//! The stacks do not always do the same work as the plain clients: the
//! stale-if-error cache in front of customer and catalog lets concurrent GETs of one
//! key share one call to the service (a request arriving while that call is in
//! flight waits for its answer). Every overview asks catalog for the same `/prices`,
//! so under concurrent load far fewer catalog calls are made than overviews
//! answered. The bench prints after each measurement the calls each request caused
//! to each service behind the gateway, and the share of overviews with a part
//! served stale (an answer from an old entry, which needs a failed call), so the
//! figures can be read with that in mind.
//!
//! It also prints the CPU time each request took, the whole process counted (every
//! service and the load generator), over the timed samples: on a machine shared
//! with other work that figure moves less than requests per second do.
//!
//! `cargo bench -p palisade-benches --bench gateway`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_main};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use order_demo::Mode;
use order_demo::services::{API_KEY_HEADER, API_KEYS, CUSTOMERS, GatewayLimits, SKUS};
use order_demo::stack::HttpClient;
use order_demo::system::{System, SystemConfig};
use palisade::BoxError;
use palisade::retry::http::IDEMPOTENCY_KEY_HEADER;
use palisade::timeout::deadline::header::DEADLINE_MS;
use tokio::runtime::Runtime;
use tokio::time::Instant;

/// Requests in flight at once: each a task sending its next request as soon as its
/// last was answered, over its own keep-alive connection.
const CONNECTIONS: u64 = 32;
/// Orders each system takes, one at a time, before the measurements: the
/// overview's order history then has something to read (two per customer), and the
/// client-side throttle toward shipment starts from a window of accepted calls.
/// (That throttle counts a call when it is sent and its acceptance when it is
/// answered, so on an empty window calls sent at once throttle each other: the
/// second of two concurrent first calls is refused with probability ½.)
const SEED_ORDERS: u64 = 2 * CUSTOMERS as u64;
/// The deadline each request carries (`x-palisade-deadline-ms`), as the demo's load
/// generator sends one.
const DEADLINE: &str = "10000";
/// A sample that takes longer than this has hung: abort.
const SAMPLE_LIMIT: Duration = Duration::from_secs(120);

/// What a request asks the gateway for.
#[derive(Debug, Clone, Copy)]
enum Route {
    /// `GET /customers/{id}/overview`.
    Overview,
    /// `POST /orders`.
    Order,
}

/// One running system and the load generator's client toward its gateway.
struct Target {
    mode: Mode,
    /// Kept running for as long as the bench.
    system: System,
    client: HttpClient,
    /// `http://<gateway>/customers/{id}/overview` for each seeded customer.
    overview: Vec<Uri>,
    /// `http://<gateway>/orders`.
    orders: Uri,
    /// Numbers the requests: picks the customer, sku and API key, and makes each
    /// order's idempotency key.
    next: AtomicU64,
    /// Overviews answered with a part served stale from the cache.
    stale: AtomicU64,
    /// Requests made in timed samples, and the CPU time (clock ticks of this whole
    /// process: every service and the load) those samples took.
    timed: AtomicU64,
    cpu_ticks: AtomicU64,
}

impl Target {
    /// Starts a system in `mode` with the capacity limits raised (see the module
    /// docs), and a fresh client toward its gateway.
    async fn start(mode: Mode) -> Result<Arc<Self>, BoxError> {
        let system = System::start(SystemConfig {
            mode,
            seed: 7,
            payment_workers: 1024,
            payment_time: Duration::ZERO,
            gateway: GatewayLimits {
                per_client_rate: 1_000_000_000,
                max_in_flight: 100_000,
            },
            concurrency_limit: Some(1024),
            admin_token: "bench-admin".to_owned(),
        })
        .await?;
        let gateway = system.gateway();
        let overview = (1..=CUSTOMERS)
            .map(|id| format!("http://{gateway}/customers/{id}/overview").parse())
            .collect::<Result<Vec<Uri>, _>>()?;
        let orders = format!("http://{gateway}/orders").parse()?;
        Ok(Arc::new(Self {
            mode,
            system,
            client: order_demo::stack::http_client(),
            overview,
            orders,
            next: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            timed: AtomicU64::new(0),
            cpu_ticks: AtomicU64::new(0),
        }))
    }

    /// The next request for `route`.
    fn request(&self, route: Route) -> Result<Request<Full<Bytes>>, BoxError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let customer = n % CUSTOMERS as u64;
        let api_key = API_KEYS[(n % API_KEYS.len() as u64) as usize];
        let builder = Request::builder()
            .header(API_KEY_HEADER, HeaderValue::from_static(api_key))
            .header(DEADLINE_MS, HeaderValue::from_static(DEADLINE));
        let req = match route {
            Route::Overview => builder
                .method(Method::GET)
                .uri(self.overview[customer as usize].clone())
                .body(Full::new(Bytes::new()))?,
            Route::Order => {
                let body = format!(
                    r#"{{"customer_id":{},"sku":{},"qty":1}}"#,
                    customer + 1,
                    n % SKUS as u64 + 1
                );
                builder
                    .method(Method::POST)
                    .uri(self.orders.clone())
                    .header(
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )
                    .header(IDEMPOTENCY_KEY_HEADER, format!("bench-{n}"))
                    .body(Full::new(Bytes::from(body)))?
            }
        };
        Ok(req)
    }

    /// Sends one request for `route` and checks its answer: an overview `200` with
    /// no part unavailable (a part served stale is counted), an order `201`
    /// (completed).
    async fn call(&self, route: Route) -> Result<(), String> {
        let req = self.request(route).map_err(|e| e.to_string())?;
        let res = self.client.request(req).await.map_err(|e| e.to_string())?;
        let status = res.status();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let ok = match route {
            Route::Overview => match degraded(&body) {
                Some(parts) if status == StatusCode::OK => {
                    if contains(parts, b"stale") {
                        self.stale.fetch_add(1, Ordering::Relaxed);
                    }
                    !contains(parts, b"unavailable")
                }
                _ => false,
            },
            Route::Order => status == StatusCode::CREATED,
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body).trim()
            ))
        }
    }

    /// Makes `requests` requests for `route` from `connections` tasks at once, each
    /// sending its next as soon as its last was answered; returns the wall time they
    /// took. Panics, saying how many failed and how, if any answer was not a success.
    async fn drive(self: &Arc<Self>, route: Route, requests: u64, connections: u64) -> Duration {
        let remaining = Arc::new(AtomicU64::new(requests));
        let cpu_before = cpu_ticks();
        let start = Instant::now();
        let tasks: Vec<_> = (0..connections.min(requests))
            .map(|_| {
                let (target, remaining) = (Arc::clone(self), Arc::clone(&remaining));
                tokio::spawn(async move {
                    let mut failed = 0u64;
                    let mut first = None;
                    while remaining
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        if let Err(e) = target.call(route).await {
                            failed += 1;
                            first.get_or_insert(e);
                        }
                    }
                    (failed, first)
                })
            })
            .collect();
        let joined = tokio::time::timeout(SAMPLE_LIMIT, futures_join(tasks)).await;
        let elapsed = start.elapsed();
        if let (Some(before), Some(after)) = (cpu_before, cpu_ticks()) {
            self.cpu_ticks
                .fetch_add(after.saturating_sub(before), Ordering::Relaxed);
            self.timed.fetch_add(requests, Ordering::Relaxed);
        }
        let Ok(results) = joined else {
            panic!(
                "{} {route:?}: {requests} requests not answered within {SAMPLE_LIMIT:?}",
                self.mode.as_str()
            );
        };
        let mut failed = 0;
        let mut first = None;
        for result in results {
            let (f, e) = result.expect("a load task panicked");
            failed += f;
            if first.is_none() {
                first = e;
            }
        }
        assert!(
            failed == 0,
            "{} {route:?}: {failed} of {requests} requests failed; the first answered {}",
            self.mode.as_str(),
            first.unwrap_or_default()
        );
        elapsed
    }
}

/// Clock ticks (1/100 s on Linux) this process has spent on CPU, user and system,
/// all threads; `None` where `/proc/self/stat` cannot be read.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (in parentheses, which may hold spaces):
    // state is the 3rd field, utime the 14th and stime the 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Awaits every task in turn.
async fn futures_join<T>(
    tasks: Vec<tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await);
    }
    out
}

/// The contents of an overview's `"degraded": [...]` list (`None`: not an
/// overview). Its entries are `"<part>: unavailable"` or `"<part>: stale"`.
fn degraded(body: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = br#""degraded":["#;
    let start = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = body[start..].iter().position(|&b| b == b']')?;
    Some(&body[start..start + len])
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The downstreams whose calls per request are reported.
const CALLEES: [&str; 6] = [
    "order",
    "customer",
    "catalog",
    "inventory",
    "payment",
    "shipment",
];

/// Counters of one target at one moment, to report the work behind its requests.
struct Tally {
    requests: u64,
    stale: u64,
    calls: [u64; CALLEES.len()],
    timed: u64,
    cpu_ticks: u64,
}

impl Target {
    fn tally(&self) -> Tally {
        let registry = self.system.registry();
        Tally {
            requests: self.next.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            calls: CALLEES.map(|callee| registry.attempts(callee)),
            timed: self.timed.load(Ordering::Relaxed),
            cpu_ticks: self.cpu_ticks.load(Ordering::Relaxed),
        }
    }
}

/// Times `route` on each target, plain first, and prints what each request cost
/// downstream.
fn route(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    targets: &[Arc<Target>],
    route: Route,
) {
    for target in targets {
        let before = target.tally();
        group.bench_function(target.mode.as_str(), |b| {
            b.to_async(rt).iter_custom(|iters| {
                let target = Arc::clone(target);
                async move { target.drive(route, iters, CONNECTIONS).await }
            });
        });
        let after = target.tally();
        let requests = after.requests - before.requests;
        if requests == 0 {
            // Not run (filtered out, or the benchmarks were only listed): nothing
            // to report, and a list must hold only the benchmarks' names.
            continue;
        }
        let per_request = |n: u64| n as f64 / requests.max(1) as f64;
        let calls: Vec<String> = CALLEES
            .iter()
            .zip(after.calls.iter().zip(&before.calls))
            .map(|(callee, (a, b))| format!("{callee} {:.2}", per_request(a - b)))
            .collect();
        let stale = match route {
            Route::Overview => format!(
                "; answers with a part served stale: {:.1}%",
                per_request(after.stale - before.stale) * 100.0
            ),
            Route::Order => String::new(),
        };
        // CPU per request over every batch criterion timed, its warm-up included (not
        // its analysis).
        // Under a second of CPU (a test run) says nothing at a tick's resolution.
        let timed = after.timed - before.timed;
        let ticks = after.cpu_ticks - before.cpu_ticks;
        let cpu = if ticks < 100 {
            String::from("-")
        } else {
            format!("{:.0} µs", ticks as f64 * 10_000.0 / timed as f64)
        };
        println!(
            "{} {route:?}: {requests} requests; CPU per request (the whole process) {cpu}; calls per request: {}{stale}",
            target.mode.as_str(),
            calls.join(", "),
        );
    }
}

fn gateway(c: &mut Criterion) {
    // Both systems and the load share these two workers (the machine's two cores).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("multi-thread runtime");
    let targets: Vec<Arc<Target>> = [Mode::Plain, Mode::Palisade]
        .into_iter()
        .map(|mode| {
            rt.block_on(async {
                let target = Target::start(mode).await.expect("the system starts");
                target.drive(Route::Order, SEED_ORDERS, 1).await;
                target
            })
        })
        .collect();

    for (name, r) in [
        ("gateway_overview", Route::Overview),
        ("gateway_order", Route::Order),
    ] {
        let mut group = c.benchmark_group(name);
        group
            .throughput(Throughput::Elements(1))
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_secs(2))
            .measurement_time(Duration::from_secs(8))
            .sample_size(10);
        route(&mut group, &rt, &targets, r);
        group.finish();
    }
}

/// Runs this file's benchmarks: what `criterion_group!(benches, gateway)` would
/// generate, written out so that it can carry the doc comment the workspace's
/// `missing_docs` lint asks for.
fn benches() {
    let mut criterion = Criterion::default().configure_from_args();
    gateway(&mut criterion);
}

criterion_main!(benches);
