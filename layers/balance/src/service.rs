use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};

use palisade_core::{
    AllErrorsFail, BoxError, Classify, Clock, ConfigError, Name, Rejection, RejectionKind,
};
use tokio::sync::{oneshot, watch};
use tower::discover::{Change, Discover};
use tower_service::Service;

use crate::config::BalanceConfig;
use crate::endpoint::{Endpoint, MakeEndpoint, NO_SLOW_START, NOT_EJECTED, Tripped};
use crate::future::ResponseFuture;
use crate::metrics::{BalanceMetrics, Detector, EndpointState, RequestOutcome};

/// Balances requests over a discovered set of endpoints: power of two choices by
/// peak-EWMA latency (or pending requests), with outlier ejection, panic mode and
/// slow start.
///
/// Every clone shares one endpoint table; a background task (spawned by
/// [`Builder::build`], so build inside a tokio runtime) applies discovery changes and
/// ends ejections and slow starts on time, even without traffic.
///
/// **Readiness.** `poll_ready` is always ready and reserves nothing: the endpoint is
/// chosen in `call`, and the chosen endpoint's own readiness is awaited inside the
/// response future. So a clone that was not made ready holds no capacity, and with no
/// endpoints `poll_ready` does not wait for one: `call` fails at once with
/// [`RejectionKind::NoEndpoints`]. Put a limit (bulkhead, adaptive concurrency) above
/// the balancer when you need back-pressure.
///
/// ```
/// use palisade_balance::{Balance, discover};
/// use std::net::SocketAddr;
/// use tower::{Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let endpoints: Vec<SocketAddr> = vec!["127.0.0.1:8001".parse().unwrap(), "127.0.0.1:8002".parse().unwrap()];
/// let make = |addr: SocketAddr| tower::service_fn(move |req: &'static str| async move {
///     Ok::<_, std::io::Error>(format!("{req} from {}", addr.port()))
/// });
/// let mut balance = Balance::builder("inventory")
///     .build(discover::fixed("inventory", endpoints).unwrap(), make)
///     .unwrap();
/// let answer = balance.ready().await.unwrap().call("hello").await.unwrap();
/// assert!(answer.starts_with("hello from 800"));
/// # }
/// ```
pub struct Balance<S, C = AllErrorsFail> {
    shared: Arc<Shared<S, C>>,
}

impl<S, C> Clone for Balance<S, C> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S, C> fmt::Debug for Balance<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balance")
            .field("name", &self.shared.name)
            .field("endpoints", &self.shared.snapshot().all.len())
            .finish_non_exhaustive()
    }
}

/// One endpoint as [`Balance::endpoints`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointInfo {
    /// The endpoint's address.
    pub addr: SocketAddr,
    /// Ready, ejected or in slow start.
    pub state: EndpointState,
    /// Requests in flight to it.
    pub pending: u32,
}

/// What `call` picks from: rebuilt whenever the table changes, read on every call.
struct Snapshot<S> {
    /// The endpoints P2C picks from: the healthy ones, or all in panic mode.
    candidates: Vec<Arc<Endpoint<S>>>,
    all: Vec<Arc<Endpoint<S>>>,
    panic: bool,
}

/// The authoritative endpoint table, changed under a lock by discovery and ejection.
struct Table<S> {
    endpoints: HashMap<SocketAddr, Arc<Endpoint<S>>>,
}

pub(crate) struct Shared<S, C> {
    pub(crate) name: Name,
    pub(crate) config: BalanceConfig,
    pub(crate) classify: C,
    pub(crate) clock: Clock,
    metrics: Option<BalanceMetrics>,
    table: Mutex<Table<S>>,
    snapshot: RwLock<Arc<Snapshot<S>>>,
    /// Clock nanos of the next ejection end or slow-start end (u64::MAX: none).
    next_transition: AtomicU64,
    /// Wakes the background task when `next_transition` moved earlier.
    wake: Arc<tokio::sync::Notify>,
    /// The number of endpoints, for [`Balance::wait_for_endpoints`].
    count: watch::Sender<usize>,
    /// An average latency over every endpoint (f64 bits; 0 before the first
    /// response): what an endpoint not yet measured is assumed to take, so a new
    /// endpoint is neither flooded nor shunned.
    typical_rtt: AtomicU64,
    /// Dropped with the last clone: tells the background task to stop.
    _stop: oneshot::Sender<()>,
    warm: AtomicBool,
}

impl<S, C> Shared<S, C> {
    fn snapshot(&self) -> Arc<Snapshot<S>> {
        Arc::clone(&self.snapshot.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table<S>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends due ejections and slow starts, recounts, and publishes a new snapshot.
    /// Called with the table locked.
    fn rebuild(&self, table: &Table<S>, now: u64) {
        let slow_start = !self.config.slow_start.window.is_zero();
        let window = self.config.slow_start.window.as_nanos() as u64;
        let mut next = u64::MAX;
        let (mut ready, mut ejected, mut slow) = (0usize, 0usize, 0usize);
        let mut healthy = Vec::with_capacity(table.endpoints.len());
        let mut all = Vec::with_capacity(table.endpoints.len());
        for ep in table.endpoints.values() {
            let until = ep.ejected_until.load(Ordering::Acquire);
            if until != NOT_EJECTED && until <= now {
                ep.unject(now, slow_start);
                tracing::info!(downstream = %self.name, endpoint = %ep.addr, "endpoint returns from ejection");
            }
            let from = ep.slow_start_from.load(Ordering::Relaxed);
            if from != NO_SLOW_START && now >= from.saturating_add(window) {
                ep.slow_start_from.store(NO_SLOW_START, Ordering::Relaxed);
            }
            let until = ep.ejected_until.load(Ordering::Acquire);
            let from = ep.slow_start_from.load(Ordering::Relaxed);
            all.push(Arc::clone(ep));
            if until != NOT_EJECTED {
                ejected += 1;
                next = next.min(until);
            } else {
                healthy.push(Arc::clone(ep));
                if from != NO_SLOW_START {
                    slow += 1;
                    next = next.min(from.saturating_add(window));
                } else {
                    ready += 1;
                }
            }
        }
        let total = all.len();
        let threshold = u64::from(self.config.outlier.panic_threshold_percent);
        let panic = total > 0 && (healthy.len() as u64) * 100 < threshold * total as u64;
        if panic && !self.snapshot().panic {
            tracing::warn!(downstream = %self.name, healthy = healthy.len(), total, "too few healthy endpoints: balancing over all of them (panic mode)");
        }
        // Keep a stable order so tests and `endpoints()` read predictably.
        all.sort_by_key(|ep| ep.addr);
        healthy.sort_by_key(|ep| ep.addr);
        let candidates = if panic { all.clone() } else { healthy };
        if let Some(m) = &self.metrics {
            m.endpoints.get(EndpointState::Ready).set(ready as f64);
            m.endpoints.get(EndpointState::Ejected).set(ejected as f64);
            m.endpoints.get(EndpointState::SlowStart).set(slow as f64);
            m.panic_mode.set(if panic { 1.0 } else { 0.0 });
        }
        let previous = self.next_transition.swap(next, Ordering::AcqRel);
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Snapshot {
            candidates,
            all,
            panic,
        });
        self.count.send_replace(total);
        if next < previous {
            self.wake.notify_one();
        }
    }

    /// Applies one batch of discovery changes.
    fn apply<M>(&self, make: &M, batch: Vec<Change<SocketAddr, ()>>)
    where
        M: MakeEndpoint<Service = S>,
    {
        let now = self.clock.now_nanos();
        let mut table = self.table();
        // Endpoints that join a set already serving traffic start slowly; the first
        // set does not (there is nobody to take the traffic instead).
        let slow = !self.config.slow_start.window.is_zero()
            && self.warm.load(Ordering::Relaxed)
            && !table.endpoints.is_empty();
        for change in batch {
            match change {
                Change::Insert(addr, ()) => {
                    if table.endpoints.contains_key(&addr) {
                        continue;
                    }
                    let from = if slow { now } else { NO_SLOW_START };
                    let ep = Endpoint::new(addr, make.make_endpoint(addr), &self.config, from);
                    tracing::debug!(downstream = %self.name, endpoint = %addr, "endpoint added");
                    table.endpoints.insert(addr, Arc::new(ep));
                }
                Change::Remove(addr) => {
                    if let Some(ep) = table.endpoints.remove(&addr) {
                        ep.removed.store(true, Ordering::Release);
                        tracing::debug!(downstream = %self.name, endpoint = %addr, "endpoint removed");
                    }
                }
            }
        }
        self.warm
            .store(!table.endpoints.is_empty(), Ordering::Relaxed);
        self.rebuild(&table, now);
    }

    /// Ends ejections and slow starts that are due.
    fn tick(&self) {
        let now = self.clock.now_nanos();
        if now >= self.next_transition.load(Ordering::Acquire) {
            let table = self.table();
            self.rebuild(&table, now);
        }
    }

    /// Picks an endpoint by the power of two choices, or none.
    pub(crate) fn pick(&self) -> Option<Arc<Endpoint<S>>> {
        self.tick();
        let snap = self.snapshot();
        let candidates = &snap.candidates;
        let n = candidates.len();
        if n <= 1 {
            return candidates.first().cloned();
        }
        let i = fastrand::usize(..n);
        let mut j = fastrand::usize(..n - 1);
        if j >= i {
            j += 1;
        }
        let (a, b) = (&candidates[i], &candidates[j]);
        let now = self.clock.now_nanos();
        let typical = match self.typical_rtt.load(Ordering::Relaxed) {
            0 => self.config.default_rtt.as_nanos() as f64,
            bits => f64::from_bits(bits),
        };
        let (la, lb) = (
            a.load(&self.config, now, typical),
            b.load(&self.config, now, typical),
        );
        let (mut pick, other) = if la <= lb { (a, b) } else { (b, a) };
        // Slow start: a warming endpoint wins only its weight's share of the picks.
        let w = pick.weight(&self.config, now);
        if w < 1.0 && fastrand::f64() >= w {
            pick = other;
        }
        Some(Arc::clone(pick))
    }

    /// Records a response from `ep`; ejects it when a detector trips.
    pub(crate) fn record(&self, ep: &Arc<Endpoint<S>>, failed: Option<bool>, latency: u64) {
        let now = self.clock.now_nanos();
        if failed != Some(true) {
            // A plain moving average; racing updates only lose a sample.
            let sample = latency.max(1) as f64;
            let next = match self.typical_rtt.load(Ordering::Relaxed) {
                0 => sample,
                bits => f64::from_bits(bits) * 0.9 + sample * 0.1,
            };
            self.typical_rtt.store(next.to_bits(), Ordering::Relaxed);
        }
        let tripped = ep.record(&self.config, failed, latency, now);
        let detector = match tripped {
            Tripped::No => return,
            Tripped::ConsecutiveFailures => Detector::ConsecutiveFailures,
            Tripped::FailureRate => Detector::FailureRate,
        };
        let table = self.table();
        // The endpoint may have been removed (or replaced) while the call ran.
        let current = table.endpoints.get(&ep.addr);
        if ep.removed.load(Ordering::Acquire)
            || !current.is_some_and(|c| Arc::ptr_eq(c, ep))
            || ep.is_ejected()
        {
            return;
        }
        let total = table.endpoints.len();
        let ejected = table.endpoints.values().filter(|e| e.is_ejected()).count();
        let pct = usize::from(self.config.outlier.max_ejection_percent);
        let allowed = if pct == 0 {
            0
        } else {
            (total * pct / 100).max(1)
        };
        if ejected + 1 > allowed {
            tracing::debug!(downstream = %self.name, endpoint = %ep.addr, "not ejected: max_ejection_percent reached");
            return;
        }
        let until = ep.eject(&self.config, now);
        tracing::warn!(
            downstream = %self.name,
            endpoint = %ep.addr,
            detector = detector_name(detector),
            for_ms = (until - now) / 1_000_000,
            "endpoint ejected"
        );
        if let Some(m) = &self.metrics {
            m.ejections.get(detector).increment(1);
        }
        self.rebuild(&table, now);
    }

    pub(crate) fn count_request(&self, outcome: RequestOutcome) {
        if let Some(m) = &self.metrics {
            m.requests.get(outcome).increment(1);
        }
    }
}

fn detector_name(d: Detector) -> &'static str {
    use palisade_core::observe::LabelValue;
    d.as_label()
}

impl<S, C> Balance<S, C> {
    /// The downstream's name.
    pub fn name(&self) -> &Name {
        &self.shared.name
    }

    /// The settings in force.
    pub fn config(&self) -> &BalanceConfig {
        &self.shared.config
    }

    /// Every known endpoint with its state, ordered by address.
    pub fn endpoints(&self) -> Vec<EndpointInfo> {
        self.shared.tick();
        let snap = self.shared.snapshot();
        snap.all
            .iter()
            .map(|ep| EndpointInfo {
                addr: ep.addr,
                state: if ep.is_ejected() {
                    EndpointState::Ejected
                } else if ep.slow_start_from.load(Ordering::Relaxed) != NO_SLOW_START {
                    EndpointState::SlowStart
                } else {
                    EndpointState::Ready
                },
                pending: ep.pending(),
            })
            .collect()
    }

    /// Whether the balancer is in panic mode (balancing over every endpoint because
    /// too few are healthy).
    pub fn is_panicking(&self) -> bool {
        self.shared.tick();
        self.shared.snapshot().panic
    }

    /// Waits until at least `n` endpoints are known (discovery sources that read
    /// over the network publish their first set a moment after the balancer starts).
    pub async fn wait_for_endpoints(&self, n: usize) {
        let mut rx = self.shared.count.subscribe();
        // The sender lives in `shared`, which `self` keeps alive: this cannot fail.
        let _ = rx.wait_for(|count| *count >= n).await;
    }
}

/// Builds a [`Balance`].
pub struct Builder<C = AllErrorsFail> {
    name: String,
    config: BalanceConfig,
    classify: C,
    metrics: bool,
}

impl<C> fmt::Debug for Builder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Balance<(), AllErrorsFail> {
    /// Starts a builder for the balancer of downstream `name`.
    pub fn builder(name: &str) -> Builder {
        Builder {
            name: name.to_owned(),
            config: BalanceConfig::default(),
            classify: AllErrorsFail,
            metrics: true,
        }
    }
}

impl<C> Builder<C> {
    /// Replaces every setting.
    pub fn config(mut self, config: BalanceConfig) -> Self {
        self.config = config;
        self
    }

    /// How calls are judged for outlier ejection (default: every error fails).
    pub fn classify<C2>(self, classify: C2) -> Builder<C2> {
        Builder {
            name: self.name,
            config: self.config,
            classify,
            metrics: self.metrics,
        }
    }

    /// Records no metrics.
    pub fn without_metrics(mut self) -> Self {
        self.metrics = false;
        self
    }

    /// Builds the balancer over the endpoints `discover` yields, making each
    /// endpoint's service with `make`. Must be called inside a tokio runtime: it
    /// spawns the task that follows `discover`. Changes `discover` has ready at once
    /// (a fixed list, the in-process registry) are applied before this returns.
    pub fn build<D, M, S>(self, discover: D, make: M) -> Result<Balance<S, C>, ConfigError>
    where
        D: Discover<Key = SocketAddr> + Send + 'static,
        D::Error: Into<BoxError>,
        M: MakeEndpoint<Service = S> + Send + 'static,
        S: Send + Sync + 'static,
        C: Send + Sync + 'static,
    {
        self.config.validate()?;
        let name = Name::new(&self.name).map_err(|e| ConfigError::new("name", e.to_string()))?;
        let metrics = self.metrics.then(|| BalanceMetrics::new(&name));
        let (stop_tx, stop_rx) = oneshot::channel();
        let shared = Arc::new(Shared {
            name,
            config: self.config,
            classify: self.classify,
            clock: Clock::new(),
            metrics,
            table: Mutex::new(Table {
                endpoints: HashMap::new(),
            }),
            snapshot: RwLock::new(Arc::new(Snapshot {
                candidates: Vec::new(),
                all: Vec::new(),
                panic: false,
            })),
            next_transition: AtomicU64::new(u64::MAX),
            wake: Arc::new(tokio::sync::Notify::new()),
            count: watch::Sender::new(0),
            typical_rtt: AtomicU64::new(0),
            _stop: stop_tx,
            warm: AtomicBool::new(false),
        });
        let mut discover = Box::pin(discover);
        // Apply what is ready now, so a fixed list serves the very first call.
        let initial = drain_ready(discover.as_mut(), &shared.name);
        shared.apply(&make, initial.unwrap_or_default());
        tokio::spawn(drive(
            Arc::downgrade(&shared),
            Arc::clone(&shared.wake),
            shared.clock,
            discover,
            make,
            stop_rx,
        ));
        Ok(Balance { shared })
    }
}

/// Polls `discover` without waiting; `None` when it has ended.
fn drain_ready<D>(mut discover: Pin<&mut D>, name: &Name) -> Option<Vec<Change<SocketAddr, ()>>>
where
    D: Discover<Key = SocketAddr>,
    D::Error: Into<BoxError>,
{
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut batch = Vec::new();
    loop {
        match discover.as_mut().poll_discover(&mut cx) {
            Poll::Ready(Some(Ok(change))) => batch.push(strip(change)),
            Poll::Ready(Some(Err(e))) => {
                let e: BoxError = e.into();
                tracing::warn!(downstream = %name, error = %e, "discovery error; keeping the endpoints known");
            }
            Poll::Ready(None) => return if batch.is_empty() { None } else { Some(batch) },
            Poll::Pending => return Some(batch),
        }
    }
}

fn strip<V>(change: Change<SocketAddr, V>) -> Change<SocketAddr, ()> {
    match change {
        Change::Insert(addr, _) => Change::Insert(addr, ()),
        Change::Remove(addr) => Change::Remove(addr),
    }
}

/// The background task: follows discovery, ends ejections and slow starts on time,
/// and stops when the last balancer clone is dropped.
async fn drive<D, M, S, C>(
    shared: std::sync::Weak<Shared<S, C>>,
    wake: Arc<tokio::sync::Notify>,
    clock: Clock,
    mut discover: Pin<Box<D>>,
    make: M,
    mut stop: oneshot::Receiver<()>,
) where
    D: Discover<Key = SocketAddr>,
    D::Error: Into<BoxError>,
    M: MakeEndpoint<Service = S>,
{
    let mut discovery_open = true;
    loop {
        let next = match shared.upgrade() {
            Some(s) => s.next_transition.load(Ordering::Acquire),
            None => return,
        };
        let hour_ahead = clock.now_nanos().saturating_add(3_600_000_000_000);
        let deadline = clock.instant_at(next.min(hour_ahead));
        let notified = wake.notified();
        let changed = tokio::select! {
            _ = &mut stop => return,
            _ = notified => None,
            _ = tokio::time::sleep_until(deadline), if next != u64::MAX => None,
            first = std::future::poll_fn(|cx| discover.as_mut().poll_discover(cx)), if discovery_open => Some(first),
        };
        let Some(s) = shared.upgrade() else { return };
        match changed {
            None => s.tick(),
            Some(None) => {
                tracing::debug!(downstream = %s.name, "discovery ended; keeping the endpoints known");
                discovery_open = false;
            }
            Some(Some(first)) => {
                let mut batch = Vec::new();
                match first {
                    Ok(change) => batch.push(strip(change)),
                    Err(e) => {
                        let e: BoxError = e.into();
                        tracing::warn!(downstream = %s.name, error = %e, "discovery error; keeping the endpoints known");
                    }
                }
                match drain_ready(discover.as_mut(), &s.name) {
                    Some(more) => batch.extend(more),
                    None => discovery_open = false,
                }
                if !batch.is_empty() {
                    s.apply(&make, batch);
                }
            }
        }
    }
}

impl<S, C, Req> Service<Req> for Balance<S, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError> + 'static,
    C: Classify<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = palisade_core::Error;
    type Future = ResponseFuture<S, C, Req>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.shared.pick() {
            Some(ep) => ResponseFuture::new(Arc::clone(&self.shared), ep, req),
            None => {
                self.shared.count_request(RequestOutcome::NoEndpoints);
                ResponseFuture::rejected(
                    Rejection::new(RejectionKind::NoEndpoints)
                        .with_downstream(self.shared.name.clone()),
                )
            }
        }
    }
}
