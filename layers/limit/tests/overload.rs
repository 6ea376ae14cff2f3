//! Overload on real loopback sockets: an axum server of known capacity behind the
//! adaptive limiter and the load shedder keeps its goodput and its latency at 2× and
//! 5× its capacity, and answers what it refuses at once; the same server without
//! them collapses.
//!
//! The server's capacity comes from a simulated resource, not from the CPU: a pool
//! of [`WORKERS`] workers, each request taking one for [`SERVICE_TIME`] (on tokio's
//! timer). So capacity C = `WORKERS / SERVICE_TIME` = 100 requests a second whatever
//! the machine, and a request that finds every worker busy waits its turn, as it
//! would for a thread pool or a database connection pool.
//!
//! The load is open loop: requests are sent at a constant rate whatever the server
//! answers, and each latency is measured from the request's *intended* send time,
//! so a client that fell behind cannot hide queueing. Server and client run on
//! runtimes of their own, on threads of their own. Each phase sends a bounded
//! number of requests; the whole file takes about 40 s.

// Load tests measure real elapsed time; tokio's clock is the one the rest of the
// crate reads, and it runs in real time here (no paused runtime).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::serve::ListenerExt;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use palisade_core::RejectionKind;
use palisade_limit::adaptive::{AdaptiveLimitLayer, Gradient2};
use palisade_limit::shed::LoadShedLayer;
use tokio::runtime::Runtime;
use tokio::time::Instant;

/// Workers of the simulated resource.
const WORKERS: usize = 5;
/// How long a request holds a worker.
const SERVICE_TIME: Duration = Duration::from_millis(50);
/// Requests a second the server can finish: `WORKERS / SERVICE_TIME`.
const CAPACITY: f64 = WORKERS as f64 / 0.050;
/// How long each overload phase sends for.
const PHASE: Duration = Duration::from_secs(10);
/// A client gives up on a request this long after its intended send time.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);

/// Phases share the machine's two cores: run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The simulated resource: [`WORKERS`] workers, each request taking the one free
/// soonest for [`SERVICE_TIME`], first come first served.
///
/// Each worker's timeline is kept as the instant it will be free, and a request
/// sleeps until the end of its turn on that timeline. So the pool finishes exactly
/// C requests a second while busy, even when a loaded machine wakes tasks late (a
/// late wake-up delays that answer, never the next request's turn). A request
/// whose client has gone keeps its turn: the work is done anyway, as in a server
/// that does not notice a client hang up.
struct Workers {
    free_at: Mutex<[Instant; WORKERS]>,
}

impl Workers {
    fn new() -> Self {
        Self {
            free_at: Mutex::new([Instant::now(); WORKERS]),
        }
    }

    /// Takes the next free turn; when it ends.
    fn take_turn(&self) -> Instant {
        let mut free_at = self.free_at.lock().unwrap();
        let worker = free_at.iter_mut().min().expect("at least one worker");
        let done = (*worker).max(Instant::now()) + SERVICE_TIME;
        *worker = done;
        done
    }
}

/// The handler: waits for its turn on the workers, then answers.
async fn work(State(workers): State<Arc<Workers>>) -> &'static str {
    let done = workers.take_turn();
    tokio::time::sleep_until(done).await;
    "done"
}

fn plain_router() -> Router {
    Router::new()
        .route("/work", get(work))
        .with_state(Arc::new(Workers::new()))
}

/// Time the server spent on each request it refused, from the request reaching the
/// outermost layer to its response leaving it (not counting HTTP parsing and
/// writing, which the client-side figure includes).
type ServerTimes = Arc<Mutex<Vec<Duration>>>;

/// The server with the inbound stack: a shedder whose limit is the adaptive
/// limiter's, and the adaptive limiter measuring every admitted request.
fn protected_router(refusal_times: ServerTimes) -> Router {
    let adaptive = AdaptiveLimitLayer::builder("overload")
        // Gradient2 keeps the limit where the short-term RTT stays within 10% (plus
        // one queued request) of the long-term RTT. The long-term RTT is the
        // server's normal latency, learned over about 100,000 requests (ten minutes
        // at capacity): with the default 600 it would take a sustained overload's
        // queueing for the new normal within seconds, and let latency drift up.
        .algorithm(Gradient2 {
            tolerance: 1.1,
            queue_size: 1,
            long_window: 100_000,
            ..Gradient2::default()
        })
        .min_limit(1)
        .max_limit(200)
        // Start at the size of the pool and let the limiter find the rest (like
        // TCP's initial window): starting far above capacity would let the first
        // burst queue before the first sample comes back.
        .initial_limit(WORKERS as u32)
        .rejection(RejectionKind::Shed)
        .build()
        .expect("valid adaptive limit");
    let limit = adaptive.handle();
    let shed = LoadShedLayer::builder("overload")
        .limit_from(move || limit.limit() as usize)
        .build()
        .expect("valid shedder");
    plain_router().layer(
        tower::ServiceBuilder::new()
            .layer(middleware::from_fn(move |req: Request, next: Next| {
                let times = Arc::clone(&refusal_times);
                async move {
                    let start = Instant::now();
                    let response = next.run(req).await;
                    if response.status() == StatusCode::SERVICE_UNAVAILABLE {
                        times.lock().unwrap().push(start.elapsed());
                    }
                    response
                }
            }))
            .layer(shed)
            .layer(HandleErrorLayer::new(
                |e: palisade_core::Error| async move {
                    match e.rejection() {
                        Some(r) => r.to_http_response::<Body>(),
                        None => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
                    }
                },
            ))
            .layer(adaptive),
    )
}

fn runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Serves `router` on 127.0.0.1 from a runtime of its own; the URL of `/work`.
fn serve(server_rt: &Runtime, router: Router) -> String {
    let listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("bound address");
    let listener = listener.tap_io(|tcp| {
        tcp.set_nodelay(true).ok();
    });
    server_rt.spawn(async move {
        axum::serve(listener, router).await.expect("server runs");
    });
    format!("http://{addr}/work")
}

/// What became of one request.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// Answered 200: latency from the intended send time.
    Done(Duration),
    /// Answered 503 by the shedder: latency from the intended send time, and from
    /// the moment the client actually sent it.
    Refused { intended: Duration, sent: Duration },
    /// No answer within [`CLIENT_TIMEOUT`].
    TimedOut,
    /// A connection error or another status.
    Failed,
}

struct Report {
    rate: f64,
    outcomes: Vec<Outcome>,
}

impl Report {
    fn done(&self) -> Vec<Duration> {
        self.outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Done(d) => Some(*d),
                _ => None,
            })
            .collect()
    }

    fn refused(&self) -> (Vec<Duration>, Vec<Duration>) {
        self.outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Refused { intended, sent } => Some((*intended, *sent)),
                _ => None,
            })
            .unzip()
    }

    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.outcomes.iter().filter(|o| f(o)).count()
    }

    /// Successful answers (within the client timeout) per second of the phase.
    fn goodput(&self, phase: Duration) -> f64 {
        self.done().len() as f64 / phase.as_secs_f64()
    }

    fn summary(&self, phase: Duration) -> String {
        let (refused_intended, refused_sent) = self.refused();
        format!(
            "{:.0} req/s for {:?}: {} sent, {} ok (goodput {:.1}/s), {} refused, {} timed out, {} failed; \
             ok p50 {:?} p99 {:?}; refused p99 {:?} from intended send; from actual send p50 {:?} p90 {:?} p99 {:?}",
            self.rate,
            phase,
            self.outcomes.len(),
            self.done().len(),
            self.goodput(phase),
            refused_sent.len(),
            self.count(|o| matches!(o, Outcome::TimedOut)),
            self.count(|o| matches!(o, Outcome::Failed)),
            percentile(self.done(), 0.50),
            percentile(self.done(), 0.99),
            percentile(refused_intended, 0.99),
            percentile(refused_sent.clone(), 0.50),
            percentile(refused_sent.clone(), 0.90),
            percentile(refused_sent, 0.99),
        )
    }
}

/// The `q` quantile (nearest rank) of `samples`; zero when there are none.
fn percentile(mut samples: Vec<Duration>, q: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1]
}

/// Sends `rate` requests a second to `url` for `phase`, open loop, and waits for
/// every answer (or its timeout).
fn load(client_rt: &Runtime, url: &str, rate: f64, phase: Duration) -> Report {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let uri: http::Uri = url.parse().expect("valid url");
    let total = (rate * phase.as_secs_f64()).round() as usize;
    let outcomes = client_rt.block_on(async move {
        let start = Instant::now() + Duration::from_millis(20);
        let mut tasks = Vec::with_capacity(total);
        for i in 0..total {
            let intended = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(intended).await;
            let (client, uri) = (client.clone(), uri.clone());
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                let answer = tokio::time::timeout_at(intended + CLIENT_TIMEOUT, async {
                    let response = client.get(uri).await?;
                    let status = response.status();
                    response.into_body().collect().await?;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(status)
                })
                .await;
                match answer {
                    Ok(Ok(StatusCode::OK)) => Outcome::Done(intended.elapsed()),
                    Ok(Ok(StatusCode::SERVICE_UNAVAILABLE)) => Outcome::Refused {
                        intended: intended.elapsed(),
                        sent: sent.elapsed(),
                    },
                    Ok(_) => Outcome::Failed,
                    Err(_) => Outcome::TimedOut,
                }
            }));
        }
        let mut outcomes = Vec::with_capacity(total);
        for task in tasks {
            outcomes.push(task.await.expect("request task"));
        }
        outcomes
    });
    Report { rate, outcomes }
}

#[test]
fn adaptive_limit_and_shedder_keep_goodput_and_latency_at_2x_and_5x_capacity() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (server_rt, client_rt) = (runtime("server"), runtime("client"));
    let refusal_times = ServerTimes::default();
    let url = serve(&server_rt, protected_router(Arc::clone(&refusal_times)));

    // Unloaded: a quarter of capacity, so no request waits for a worker.
    let quiet = Duration::from_secs(6);
    let unloaded = load(&client_rt, &url, CAPACITY / 4.0, quiet);
    eprintln!("unloaded: {}", unloaded.summary(quiet));
    assert_eq!(
        unloaded.done().len(),
        unloaded.outcomes.len(),
        "unloaded, every request succeeds"
    );
    let unloaded_p99 = percentile(unloaded.done(), 0.99);
    assert!(unloaded_p99 >= SERVICE_TIME, "{unloaded_p99:?}");

    for factor in [2.0, 5.0] {
        refusal_times.lock().unwrap().clear();
        let report = load(&client_rt, &url, CAPACITY * factor, PHASE);
        let server_refusals = percentile(refusal_times.lock().unwrap().clone(), 0.99);
        eprintln!(
            "{factor}x: {}; server-side refusal handling p99 {server_refusals:?}",
            report.summary(PHASE)
        );
        // Every request is answered: served or refused, none left to time out.
        assert_eq!(
            report.count(|o| matches!(o, Outcome::TimedOut | Outcome::Failed)),
            0,
            "{factor}x: every request answered"
        );
        let goodput = report.goodput(PHASE);
        assert!(
            goodput >= 0.9 * CAPACITY,
            "{factor}x: goodput {goodput:.1}/s is below 90% of capacity {CAPACITY}/s"
        );
        let p99 = percentile(report.done(), 0.99);
        assert!(
            p99 <= unloaded_p99 * 2,
            "{factor}x: accepted p99 {p99:?} is over twice the unloaded p99 {unloaded_p99:?}"
        );
        let (_, refused_sent) = report.refused();
        assert!(!refused_sent.is_empty(), "{factor}x: the excess is refused");
        let refused_p99 = percentile(refused_sent, 0.99);
        // The server answers a refusal at once: within 1 ms p99 from the request
        // reaching its layers to the 503 leaving them.
        assert!(
            server_refusals <= Duration::from_millis(1),
            "{factor}x: refusals handled in {server_refusals:?} p99 (server side)"
        );
        // Seen from the client, a refusal never waits for the work. (The client's
        // own figure also holds its HTTP stack and the scheduling of its thread on
        // a shared machine: 0.6–0.8 ms p50 but 8–30 ms p99 on the 2-vCPU
        // CI machine, so 1 ms p99 is asserted on the server side above.)
        assert!(
            refused_p99 < SERVICE_TIME,
            "{factor}x: refusals answered in {refused_p99:?} p99 (client side, from sending)"
        );
    }
}

#[test]
fn without_the_layers_goodput_collapses_at_5x_capacity() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (server_rt, client_rt) = (runtime("server"), runtime("client"));
    let url = serve(&server_rt, plain_router());

    let report = load(&client_rt, &url, CAPACITY * 5.0, PHASE);
    eprintln!("5x without layers: {}", report.summary(PHASE));
    // The queue grows by 4 C a second; once a request waits longer than the
    // client's timeout, every later one does too, and the server spends its
    // workers on answers nobody waits for.
    let goodput = report.goodput(PHASE);
    assert!(
        goodput < 0.5 * CAPACITY,
        "goodput {goodput:.1}/s did not collapse (capacity {CAPACITY}/s)"
    );
    assert!(report.count(|o| matches!(o, Outcome::TimedOut)) > report.outcomes.len() / 2);
}
