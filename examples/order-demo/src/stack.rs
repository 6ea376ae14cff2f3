//! The client stack of every outbound dependency, built in one place.
//!
//! [`client`] returns the stack a service uses to call one downstream, in either
//! [`Mode`]:
//!
//! - [`Mode::Palisade`]: a [`palisade::Downstream`] per downstream, its policies in
//!   the canonical order
//!   ```text
//!   client metrics → downstream front (deadline) → stale-if-error cache (GET,
//!     catalog and customer) → retry (HTTP rules, budget) → circuit breaker
//!     → bulkhead (order, payment), or adaptive limit and throttling (shipment)
//!     → outbound deadline → per-try timeout → balancer → hyper
//!   ```
//! - [`Mode::Plain`]: client metrics → round-robin over the discovered replicas →
//!   hyper: no timeout, no retry, no breaker, no ejection — what a service without
//!   resilience does.
//!
//! A client learns its downstream's replicas from [`Replicas`]: a discovery stream
//! (the in-process [`Registry`](crate::registry::Registry) in the all-in-one run,
//! etcd for separate processes) and the counter of the attempts it sends
//! ([`Registry::attempts`](crate::registry::Registry::attempts)). In
//! [`Mode::Palisade`] the endpoint is a [`Balance`] over those replicas: each attempt
//! goes to the less loaded of two replicas, and a replica that keeps failing is
//! ejected for a while, so a retry after a failed replica most likely tries another
//! one.
//!
//! Requests carry a path only (`/credit/reserve`); the endpoint layer fills in the
//! address. A [`CallTrace`] in the request's extensions tells the caller afterwards
//! whether any attempt may have reached the server without an answer coming back
//! (sent, then timed out or cut off, even in the answer's body): only then can the
//! call have had an effect the caller does not know about.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use palisade::balance::Balance;
use palisade::balance::discover::EndpointStream;
use palisade::balance::http::SetAuthority;
use palisade::breaker::{BreakerConfig, WindowConfig};
use palisade::fallback::http::CACHE_HEADER;
use palisade::fallback::{CacheConfig, CacheLayer, CachedBody};
use palisade::limit::adaptive::AdaptiveLimitConfig;
use palisade::limit::bulkhead::BulkheadConfig;
use palisade::limit::throttle::ThrottleConfig;
use palisade::retry::http::IDEMPOTENCY_KEY_HEADER;
use palisade::retry::{Backoff, BudgetConfig, RetryConfig, Strategy};
use palisade::{
    BoxError, ConfigError, Downstream, Error, HttpClassifier, Rejection, RejectionKind,
};
use tokio::time::Instant;
use tower::discover::{Change, Discover};
use tower::util::{BoxCloneSyncService, Either, MapResponseLayer};
use tower::{Layer, Service, ServiceExt};

/// With or without Palisade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Palisade's stacks, inbound and outbound.
    Palisade,
    /// Plain HTTP clients and servers, no resilience.
    Plain,
}

impl Mode {
    /// Both modes.
    pub const ALL: [Mode; 2] = [Mode::Palisade, Mode::Plain];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Palisade => "palisade",
            Mode::Plain => "plain",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "palisade" => Ok(Mode::Palisade),
            "plain" => Ok(Mode::Plain),
            other => Err(format!("mode {other:?}: expected palisade or plain")),
        }
    }
}

/// An outbound request: a buffered body, so it can be retried.
pub type OutRequest = Request<Full<Bytes>>;
/// An outbound response, read to the end.
pub type OutResponse = Response<Bytes>;
/// A client for one downstream.
pub type Client = BoxCloneSyncService<OutRequest, OutResponse, Error>;
/// The shared hyper client (one connection pool per process).
pub type HttpClient = HyperClient<HttpConnector, Full<Bytes>>;

/// An attempt's response: the body read to the end.
pub type AttemptResponse = Response<Full<Bytes>>;
/// A Palisade stack's response: from the cache or from an attempt.
type StackResponse = Response<CachedBody<Full<Bytes>>>;

/// How long after the last good answer the cache may still serve it when the
/// downstream fails.
pub const MAX_STALE: Duration = Duration::from_secs(600);

/// Whether `res` was served from the cache, stale, because the downstream failed.
pub fn is_stale(res: &OutResponse) -> bool {
    res.headers()
        .get(CACHE_HEADER)
        .is_some_and(|v| v.as_bytes() == b"stale")
}

/// A new hyper client with a connection pool.
pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build(connector)
}

/// Whether any attempt of a call may have reached the server without an answer
/// (a request extension; copies share it, so it covers every retry).
#[derive(Debug, Clone, Default)]
pub struct CallTrace(Arc<AtomicBool>);

impl CallTrace {
    /// A fresh trace.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether some attempt was sent and ended without an answer.
    pub fn in_doubt(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Marks the trace in doubt unless the attempt was settled (answered and read to
/// the end, or never connected).
struct Doubt {
    trace: Option<CallTrace>,
    settled: bool,
}

impl Drop for Doubt {
    fn drop(&mut self) {
        if !self.settled
            && let Some(t) = &self.trace
        {
            t.0.store(true, Ordering::Relaxed);
        }
    }
}

/// One attempt to one replica (the request's address already set): counts it,
/// sends it with hyper and reads the answer to the end.
#[derive(Clone)]
pub struct Attempt {
    http: HttpClient,
    attempts: Arc<AtomicU64>,
}

impl std::fmt::Debug for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempt")
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Service<OutRequest> for Attempt {
    type Response = AttemptResponse;
    type Error = BoxError;
    type Future = BoxFuture<Result<AttemptResponse, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: OutRequest) -> Self::Future {
        let trace = req.extensions().get::<CallTrace>().cloned();
        self.attempts.fetch_add(1, Ordering::Relaxed);
        let sent = self.http.request(req);
        Box::pin(async move {
            let mut doubt = Doubt {
                trace,
                settled: false,
            };
            match sent.await {
                Ok(res) => {
                    // Settled once the whole answer is read: an answer cut off in its
                    // body (the replica did the work, the caller lost what it said)
                    // stays in doubt.
                    let (parts, body) = res.into_parts();
                    let body = body.collect().await?.to_bytes();
                    doubt.settled = true;
                    Ok(Response::from_parts(parts, Full::new(body)))
                }
                Err(e) => {
                    doubt.settled = e.is_connect();
                    Err(e.into())
                }
            }
        })
    }
}

/// Where a client finds its downstream's replicas, and where it counts the attempts
/// it sends toward them.
#[derive(Debug)]
pub struct Replicas {
    /// The replicas' addresses as they come and go, from any discovery source.
    pub endpoints: EndpointStream,
    /// Counts every attempt sent toward the downstream.
    pub attempts: Arc<AtomicU64>,
}

impl Replicas {
    /// The replicas `endpoints` yields, with a counter of their own.
    pub fn new(endpoints: EndpointStream) -> Self {
        Self {
            endpoints,
            attempts: Arc::default(),
        }
    }
}

/// [`Mode::Plain`]'s endpoint: each attempt to the next discovered replica in turn.
#[derive(Clone)]
pub struct RoundRobin {
    attempt: Attempt,
    replicas: Arc<Mutex<Followed>>,
    downstream: &'static str,
    next: Arc<AtomicUsize>,
}

/// A discovery stream and the replicas it has announced so far.
struct Followed {
    endpoints: EndpointStream,
    known: BTreeSet<SocketAddr>,
}

impl Followed {
    /// Takes in every change the stream has ready.
    fn catch_up(&mut self, cx: &mut Context<'_>) {
        while let Poll::Ready(Some(change)) = Pin::new(&mut self.endpoints).poll_discover(cx) {
            match change {
                Ok(Change::Insert(addr, ())) => {
                    self.known.insert(addr);
                }
                Ok(Change::Remove(addr)) => {
                    self.known.remove(&addr);
                }
                Err(never) => match never {},
            }
        }
    }
}

impl std::fmt::Debug for RoundRobin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoundRobin")
            .field("downstream", &self.downstream)
            .finish_non_exhaustive()
    }
}

impl Service<OutRequest> for RoundRobin {
    type Response = AttemptResponse;
    type Error = BoxError;
    type Future = BoxFuture<Result<AttemptResponse, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Like the balancer, learn of replicas that came or went before each call.
        self.replicas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .catch_up(cx);
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: OutRequest) -> Self::Future {
        let picked = {
            let replicas = self.replicas.lock().unwrap_or_else(|e| e.into_inner());
            let known = &replicas.known;
            match known.len() {
                0 => None,
                n => known
                    .iter()
                    .nth(self.next.fetch_add(1, Ordering::Relaxed) % n)
                    .copied(),
            }
        };
        let Some(addr) = picked else {
            let rejection = Rejection::new(RejectionKind::NoEndpoints);
            return Box::pin(async move { Err(BoxError::from(rejection)) });
        };
        SetAuthority::new(self.attempt.clone(), addr).call(req)
    }
}

/// One downstream's policies in [`Mode::Palisade`].
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Each attempt's timeout.
    pub per_try: Duration,
    /// Attempts per call, the first included.
    pub attempts: u32,
    /// Whether a circuit breaker guards the downstream.
    pub breaker: bool,
    /// A bulkhead: (max concurrent, max queue, max wait).
    pub bulkhead: Option<(u32, u32, Duration)>,
    /// Instead of a bulkhead, an adaptive concurrency limit (Gradient2) with SRE
    /// client-side throttling: (min, initial, max) calls at once.
    pub adaptive_limit: Option<(u32, u32, u32)>,
    /// Whether GETs fall back to the last good answer.
    pub stale_cache: bool,
}

/// How long an open breaker waits before probing.
pub const BREAKER_OPEN_WAIT: Duration = Duration::from_secs(1);

/// The policies for `downstream`.
pub fn policy(downstream: &str) -> Policy {
    let base = Policy {
        per_try: Duration::from_millis(250),
        attempts: 3,
        breaker: true,
        bulkhead: None,
        adaptive_limit: None,
        stale_cache: false,
    };
    match downstream {
        "catalog" => Policy {
            per_try: Duration::from_millis(150),
            stale_cache: true,
            ..base
        },
        "customer" => Policy {
            stale_cache: true,
            ..base
        },
        "payment" => Policy {
            per_try: Duration::from_millis(400),
            bulkhead: Some((8, 8, Duration::from_millis(200))),
            ..base
        },
        // The order saga retries its own steps; the gateway retries it only when no
        // answer came, and a failed order says so with no-retry.
        "order" => Policy {
            // Longer than the chain may take: the request's deadline is the limit.
            per_try: Duration::from_secs(5),
            attempts: 2,
            breaker: false,
            bulkhead: Some((8, 8, Duration::from_millis(250))),
            ..base
        },
        // Shipment books parcels at its own pace: its concurrency follows its
        // latency, never below 16 at once, and throttling stops sending work it
        // keeps refusing.
        "shipment" => Policy {
            adaptive_limit: Some((16, 32, 64)),
            ..base
        },
        _ => base,
    }
}

/// The client `caller` uses to call `downstream`, whose replicas it learns from
/// `replicas`, in `mode`, with the downstream's [`policy`].
///
/// ```no_run
/// # fn main() -> Result<(), palisade::BoxError> {
/// use order_demo::registry::Registry;
/// use order_demo::stack::{self, Mode};
///
/// let registry = Registry::new();
/// let _replica = registry.register("catalog", "127.0.0.1:7105".parse()?);
/// let catalog = stack::client(
///     "gateway",
///     "catalog",
///     Mode::Palisade,
///     registry.replicas("catalog")?,
///     stack::http_client(),
/// )?;
/// # drop(catalog);
/// # Ok(()) }
/// ```
pub fn client(
    caller: &'static str,
    downstream: &'static str,
    mode: Mode,
    replicas: Replicas,
    http: HttpClient,
) -> Result<Client, BoxError> {
    client_with_policy(caller, downstream, mode, replicas, http, policy(downstream))
}

/// [`client`] with the policies given (used in [`Mode::Palisade`] only).
pub fn client_with_policy(
    caller: &'static str,
    downstream: &'static str,
    mode: Mode,
    replicas: Replicas,
    http: HttpClient,
    policy: Policy,
) -> Result<Client, BoxError> {
    let attempt = Attempt {
        http,
        attempts: replicas.attempts,
    };
    let inner: Client = match mode {
        Mode::Plain => collect_bodies(
            RoundRobin {
                attempt,
                replicas: Arc::new(Mutex::new(Followed {
                    endpoints: replicas.endpoints,
                    known: BTreeSet::new(),
                })),
                downstream,
                next: Arc::new(AtomicUsize::new(0)),
            }
            .map_err(Error::from_service),
        ),
        Mode::Palisade => {
            let balance = Balance::builder(downstream)
                .classify(HttpClassifier)
                .build(replicas.endpoints, SetAuthority::maker(attempt))?;
            collect_bodies(palisade_client(downstream, policy, balance)?)
        }
    };
    Ok(BoxCloneSyncService::new(Measured {
        inner,
        caller,
        downstream,
    }))
}

/// Records each call's duration and status ([`crate::obs::record_client`]).
///
/// A service of its own rather than a closure around the client, so that a call
/// clones the client's stack once (its caller's clone), not twice.
#[derive(Clone)]
struct Measured {
    inner: Client,
    caller: &'static str,
    downstream: &'static str,
}

impl Service<OutRequest> for Measured {
    type Response = OutResponse;
    type Error = Error;
    type Future = MeasuredFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: OutRequest) -> MeasuredFuture {
        MeasuredFuture {
            started: Instant::now(),
            method: req.method().clone(),
            caller: self.caller,
            downstream: self.downstream,
            inner: self.inner.call(req),
        }
    }
}

/// The future of [`Measured`]: the call, recorded when it ends.
struct MeasuredFuture {
    inner: <Client as Service<OutRequest>>::Future,
    started: Instant,
    method: http::Method,
    caller: &'static str,
    downstream: &'static str,
}

impl Future for MeasuredFuture {
    type Output = Result<OutResponse, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = std::task::ready!(self.inner.as_mut().poll(cx));
        crate::obs::record_client(
            self.caller,
            self.downstream,
            &self.method,
            result.as_ref().ok().map(|r| r.status()),
            self.started,
        );
        Poll::Ready(result)
    }
}

/// The retry settings every downstream shares (attempts from its [`Policy`]).
fn retry_config(attempts: u32) -> RetryConfig {
    RetryConfig {
        max_attempts: attempts,
        backoff: Backoff {
            strategy: Strategy::FullJitter,
            base: Duration::from_millis(10),
            multiplier: 2.0,
            max: Duration::from_millis(100),
        },
        budget: BudgetConfig {
            deposit_ratio: 0.5,
            min_retries_per_sec: 5,
            max_balance: 50,
        },
        max_retry_after: None,
    }
}

/// The cache of catalog and customer GETs: every call goes to the downstream, and
/// its last good answer is served (marked stale) only when the call fails.
fn stale_if_error() -> CacheConfig {
    CacheConfig {
        fresh_ttl: Duration::ZERO,
        max_stale: MAX_STALE,
        serve_fresh: false,
        max_weight_bytes: 4 * 1024 * 1024,
        max_body_bytes: 256 * 1024,
        ..CacheConfig::default()
    }
}

/// Reads each response's body to the end.
fn collect_bodies<S, B>(inner: S) -> Client
where
    S: Service<OutRequest, Response = Response<B>, Error = Error> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError> + 'static,
{
    BoxCloneSyncService::new(inner.and_then(|res: Response<B>| async move {
        let (parts, body) = res.into_parts();
        let body = body
            .collect()
            .await
            .map_err(Error::from_service)?
            .to_bytes();
        Ok(Response::from_parts(parts, body))
    }))
}

/// The breaker settings every guarded downstream shares.
fn breaker_config() -> BreakerConfig {
    BreakerConfig {
        window: WindowConfig::Count { size: 40 },
        minimum_calls: 8,
        failure_rate_threshold: 0.6,
        wait_in_open: BREAKER_OPEN_WAIT,
        wait_multiplier: 1.0,
        max_wait_in_open: BREAKER_OPEN_WAIT,
        wait_jitter: 0.0,
        half_open_probes: 1,
        half_open_successes: Some(1),
        ..BreakerConfig::default()
    }
}

/// `downstream`'s Palisade stack over `endpoint`: a [`Downstream`] with policies
/// `p`.
fn palisade_client<E>(
    downstream: &'static str,
    p: Policy,
    endpoint: E,
) -> Result<BoxCloneSyncService<OutRequest, StackResponse, Error>, ConfigError>
where
    E: Service<OutRequest, Response = AttemptResponse, Error = Error>
        + Clone
        + Send
        + Sync
        + 'static,
    E::Future: Send + 'static,
{
    // Without a cache the answer is passed on as it came, in the cache's body type.
    let cache = if p.stale_cache {
        Either::Left(CacheLayer::http(downstream, stale_if_error())?)
    } else {
        let pass: fn(AttemptResponse) -> StackResponse =
            |res| res.map(|body| CachedBody::Stream { body });
        Either::Right(MapResponseLayer::new(pass))
    };
    let base = Downstream::builder(downstream)
        .http()
        .deadline_margin(Duration::from_millis(5))
        .min_remaining(Duration::from_millis(10))
        .cache(cache)
        .retry(retry_config(p.attempts));
    let bulkhead = p
        .bulkhead
        .map(|(max_concurrent, max_queue, max_wait)| BulkheadConfig {
            max_concurrent,
            max_queue,
            max_wait,
        });
    if let Some((min_limit, initial_limit, max_limit)) = p.adaptive_limit {
        return Ok(BoxCloneSyncService::new(
            base.breaker(breaker_config())
                .adaptive_limit(AdaptiveLimitConfig {
                    min_limit,
                    max_limit,
                    initial_limit: Some(initial_limit),
                    ..AdaptiveLimitConfig::default()
                })
                .throttle(ThrottleConfig::default())
                .timeout(p.per_try)
                .build()?
                .layer(endpoint),
        ));
    }
    // The stack's type names its policies, so each combination is its own branch.
    // (`Downstream::boxed` keeps the endpoint's response type; the cache changes it.)
    let client = match (p.breaker, bulkhead) {
        (true, Some(bulkhead)) => BoxCloneSyncService::new(
            base.breaker(breaker_config())
                .bulkhead(bulkhead)
                .timeout(p.per_try)
                .build()?
                .layer(endpoint),
        ),
        (true, None) => BoxCloneSyncService::new(
            base.breaker(breaker_config())
                .timeout(p.per_try)
                .build()?
                .layer(endpoint),
        ),
        (false, Some(bulkhead)) => BoxCloneSyncService::new(
            base.bulkhead(bulkhead)
                .timeout(p.per_try)
                .build()?
                .layer(endpoint),
        ),
        (false, None) => BoxCloneSyncService::new(base.timeout(p.per_try).build()?.layer(endpoint)),
    };
    Ok(client)
}

/// A GET of `path` (a path and query, without the address).
pub fn get(path: &str) -> Result<OutRequest, BoxError> {
    Ok(Request::get(path).body(Full::new(Bytes::new()))?)
}

/// A POST of `body` as JSON to `path`, with an idempotency key so it may be retried.
pub fn post_json<T: serde::Serialize>(
    path: &str,
    body: &T,
    idempotency_key: &str,
) -> Result<OutRequest, BoxError> {
    let json = serde_json::to_vec(body)?;
    Ok(Request::post(path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            IDEMPOTENCY_KEY_HEADER,
            HeaderValue::from_str(idempotency_key)?,
        )
        .body(Full::new(Bytes::from(json)))?)
}

/// Sends `req` through `client`.
pub async fn send(client: &Client, req: OutRequest) -> Result<OutResponse, Error> {
    client.clone().oneshot(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tower::ServiceExt;

    /// A replica that answers `200 OK` with a body it promises to be 100 bytes long,
    /// sends 3 of them and hangs up.
    async fn cut_body_replica() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).await;
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"h")
                .await;
        });
        addr
    }

    #[tokio::test]
    async fn an_answer_cut_off_in_its_body_leaves_the_call_in_doubt() {
        // The replica did the work (it answered 200) but the caller never read what
        // it answered: the order service must treat the hold as possibly made.
        let addr = cut_body_replica().await;
        let mut attempt = Attempt {
            http: http_client(),
            attempts: Arc::default(),
        };
        let trace = CallTrace::new();
        let mut req = post_json(
            &format!("http://{addr}/credit/reserve"),
            &serde_json::json!({}),
            "o1:credit",
        )
        .unwrap();
        req.extensions_mut().insert(trace.clone());
        let result = attempt.ready().await.unwrap().call(req).await;
        assert!(result.is_err(), "a cut body is an error");
        assert!(trace.in_doubt(), "a call answered but cut off is in doubt");
    }
}
