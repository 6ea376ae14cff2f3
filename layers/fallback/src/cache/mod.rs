//! The stale-if-error cache.

mod layer;

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_core::{AllErrorsFail, BoxError, Classify, Deadline, Error, Name};
use tokio::time::Instant;
use tower::util::Oneshot;
use tower_service::Service;

pub use layer::{CacheBuilder, CacheHandle, CacheLayer};

use crate::ResponseFuture;
use crate::flight::{Delivery, Failure, Flights, Joined, Landing};
use crate::key::{KeyFn, KeyOf};
use crate::metrics::{CacheMetrics, Lookup};
use crate::store::{Captured, Served, Store, StoreOf};

/// A cached entry and when it was fetched.
pub(crate) struct Slot<E> {
    pub(crate) entry: E,
    fetched: Instant,
}

/// What every service of one cache layer shares: the entries and the refreshes in
/// flight.
pub(crate) struct CacheCore<K, E> {
    pub(crate) name: Name,
    pub(crate) entries: moka::sync::Cache<K, Arc<Slot<E>>>,
    pub(crate) flights: Arc<Flights<K, E>>,
    pub(crate) fresh_ttl: Duration,
    /// Entries at least this old are never served: `fresh_ttl + max_stale`.
    pub(crate) expire_after: Duration,
    /// Stale entries younger than this answer at once while a refresh runs in the
    /// background: `fresh_ttl + stale_while_revalidate`.
    pub(crate) revalidate_before: Duration,
    pub(crate) serve_fresh: bool,
    pub(crate) metrics: Arc<CacheMetrics>,
}

impl<K, E> CacheCore<K, E>
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    /// The entry for `key` that may still be served, with its age. An entry past
    /// `fresh_ttl + max_stale` is dropped.
    pub(crate) fn lookup(&self, key: &K) -> Option<(Arc<Slot<E>>, Duration)> {
        let slot = self.entries.get(key)?;
        let age = Instant::now().saturating_duration_since(slot.fetched);
        if age >= self.expire_after {
            self.entries.invalidate(key);
            return None;
        }
        Some((slot, age))
    }

    fn insert(&self, key: K, entry: E) {
        // Every insert adds one and every removal (replacement included) takes one
        // away, so the gauge follows the entries held.
        self.metrics.entries.increment(1.0);
        self.entries.insert(
            key,
            Arc::new(Slot {
                entry,
                fetched: Instant::now(),
            }),
        );
    }
}

/// A stale-if-error cache in front of a service; built by [`CacheLayer`].
///
/// For a request whose key can be built: a fresh entry answers at once (when
/// `serve_fresh`); otherwise one call per key goes to the dependency, and when it
/// fails (as the classifier judges it) or is refused by Palisade, an entry younger
/// than `fresh_ttl + max_stale` answers instead, marked stale. While a key's
/// refresh is in flight, other requests for it get the stale entry at once, or wait
/// for the refresh when there is none (or when `serve_fresh` is off: they then
/// share the in-flight call's answer, and get the stale entry only if it fails). Within `stale_while_revalidate` past the
/// fresh TTL even the request that starts the refresh gets the stale entry at once,
/// so a dependency that hangs adds no latency to reads it has answered before.
/// Requests without a key pass through. A refresh runs in a task of its own
/// (it outlives the request that started it, and fills the cache even if that
/// request gave up) and carries that request's
/// [`Deadline`](palisade_core::Deadline).
///
/// Entry ages are read from `tokio::time`; an entry past `fresh_ttl + max_stale` is
/// dropped when it is next looked up, or evicted by weight before that.
///
/// `poll_ready` is always ready: a call to the dependency waits for readiness of its
/// own clone of the inner service, so a cache hit never holds inner capacity.
pub struct Cache<S, KF: KeyFn, St: Store, C = AllErrorsFail> {
    inner: S,
    key: KF,
    store: St,
    classify: C,
    core: Arc<CacheCore<KF::Key, St::Entry>>,
}

impl<S: Clone, KF: KeyFn, St: Store, C: Clone> Clone for Cache<S, KF, St, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            key: self.key.clone(),
            store: self.store.clone(),
            classify: self.classify.clone(),
            core: Arc::clone(&self.core),
        }
    }
}

impl<S: std::fmt::Debug, KF: KeyFn, St: Store, C> std::fmt::Debug for Cache<S, KF, St, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("inner", &self.inner)
            .field("downstream", &self.core.name)
            .finish_non_exhaustive()
    }
}

impl<S, KF: KeyFn, St: Store, C> Cache<S, KF, St, C> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A handle to the cache.
    pub fn handle(&self) -> CacheHandle<KF::Key, St::Entry> {
        CacheHandle::new(Arc::clone(&self.core))
    }
}

impl<S, Req, KF, St, C> Service<Req> for Cache<S, KF, St, C>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError> + 'static,
    Req: Send + 'static,
    KF: KeyOf<Req>,
    St: StoreOf<S::Response>,
    C: Classify<S::Response, Error> + Clone + Send + Sync + 'static,
{
    type Response = St::Output;
    type Error = Error;
    type Future = ResponseFuture<S, Req, KF::Key, St>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let store = self.store.clone();
        let Some(key) = self.key.key(&req) else {
            return ResponseFuture::pass(Oneshot::new(self.inner.clone(), req), store);
        };
        let core = &self.core;
        let found = core.lookup(&key);
        if let Some((slot, age)) = &found
            && core.serve_fresh
            && *age < core.fresh_ttl
        {
            core.metrics.lookup(Lookup::Hit);
            let response = store.rebuild(&slot.entry, Served::Fresh { age: *age });
            return ResponseFuture::ready(response, store);
        }
        // With an entry to fall back on, nobody waits for someone else's refresh —
        // unless fresh entries are not to be served (then the request waits for
        // the in-flight call's answer, as it would for its own) and the entry is
        // not within stale-while-revalidate.
        let follow = match &found {
            None => true,
            Some((_, age)) => {
                let revalidating = *age >= core.fresh_ttl && *age < core.revalidate_before;
                !core.serve_fresh && !revalidating
            }
        };
        match (core.flights.join(key.clone(), follow), found) {
            (Joined::Busy, Some((slot, age))) => {
                let served = if age < core.fresh_ttl {
                    core.metrics.lookup(Lookup::Hit);
                    Served::Fresh { age }
                } else {
                    core.metrics.lookup(Lookup::Stale);
                    core.metrics.stale_served(age);
                    Served::Stale { age }
                };
                let response = store.rebuild(&slot.entry, served);
                ResponseFuture::ready(response, store)
            }
            // `join` answers busy only when asked not to follow, that is with an
            // entry in hand; without one, call on our own.
            (Joined::Busy, None) => {
                ResponseFuture::pass(Oneshot::new(self.inner.clone(), req), store)
            }
            (Joined::Follow(waiter), _) => ResponseFuture::wait(
                waiter,
                Some((self.inner.clone(), req)),
                store,
                Some(Arc::clone(&core.metrics)),
            ),
            (Joined::Lead(launch, waiter), found) => {
                let refresh = refresh(
                    Arc::clone(core),
                    self.inner.clone(),
                    req,
                    key,
                    store.clone(),
                    self.classify.clone(),
                );
                // The refresh runs in a task of its own, carrying the deadline of
                // the request that started it.
                let deadline = Deadline::current();
                tokio::spawn(async move {
                    let landing = match deadline {
                        Some(deadline) => deadline.scope(refresh).await,
                        None => refresh.await,
                    };
                    launch.land(landing);
                });
                match found {
                    // Within stale-while-revalidate: answer now, the refresh goes on.
                    Some((slot, age)) if age >= core.fresh_ttl && age < core.revalidate_before => {
                        drop(waiter);
                        core.metrics.lookup(Lookup::Stale);
                        core.metrics.stale_served(age);
                        let response = store.rebuild(&slot.entry, Served::Stale { age });
                        ResponseFuture::ready(response, store)
                    }
                    _ => ResponseFuture::wait(waiter, None, store, Some(Arc::clone(&core.metrics))),
                }
            }
        }
    }
}

/// Calls the dependency for `key` and settles what everyone waiting gets.
async fn refresh<S, Req, K, St, C>(
    core: Arc<CacheCore<K, St::Entry>>,
    svc: S,
    req: Req,
    key: K,
    store: St,
    classify: C,
) -> Landing<St::Entry>
where
    S: Service<Req>,
    S::Error: Into<BoxError> + 'static,
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    St: StoreOf<S::Response>,
    C: Classify<S::Response, Error>,
{
    let result = Oneshot::new(svc, req).await.map_err(Error::from_service);
    let outcome = classify.classify(result.as_ref());
    let failed = outcome.is_failure() || matches!(&result, Err(e) if e.is_rejection());
    if failed && let Some((slot, age)) = core.lookup(&key) {
        return Landing::Shared(Delivery::Stale(slot.entry.clone(), age));
    }
    let response = match result {
        Ok(response) => response,
        Err(err) => return Landing::Shared(Delivery::Failed(Failure::from_error(err))),
    };
    match store.capture(response).await {
        Captured::Shareable(entry) => {
            if outcome == palisade_core::Outcome::Success && store.cacheable(&entry) {
                core.insert(key, entry.clone());
            }
            Landing::Shared(Delivery::Fetched(entry))
        }
        Captured::Unshareable(output) => Landing::Own(Box::new(output)),
        Captured::Failed(err) => match core.lookup(&key) {
            Some((slot, age)) => Landing::Shared(Delivery::Stale(slot.entry.clone(), age)),
            None => Landing::Shared(Delivery::Failed(Failure::from_boxed(err))),
        },
    }
}
