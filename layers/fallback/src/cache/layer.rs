use std::sync::Arc;
use std::time::Duration;

use moka::notification::RemovalCause;
use palisade_core::{AllErrorsFail, ConfigError, Name};
use tower_layer::Layer;

use super::{Cache, CacheCore, Slot};
use crate::config::CacheConfig;
use crate::flight::Flights;
use crate::key::KeyFn;
use crate::metrics::{CacheMetrics, FlightMetrics};
use crate::store::Store;

/// Weight counted for each entry on top of its key and value: the slot, the `Arc`
/// and the cache's own bookkeeping, roughly.
const ENTRY_OVERHEAD: u32 = 96;

/// Wraps services in one shared stale-if-error cache; every service the layer makes,
/// and every clone of them, shares its entries and its refreshes in flight.
///
/// ```
/// use palisade_fallback::{key_fn, CacheLayer, CloneStore};
/// use palisade_core::{Rejection, RejectionKind};
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tower::{Service, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let layer = CacheLayer::builder("catalog", key_fn(|sku: &u32| Some(*sku)), CloneStore::new())
///     .fresh_ttl(Duration::from_secs(10))
///     .max_stale(Duration::from_secs(600))
///     .build()
///     .unwrap();
/// let down = Arc::new(AtomicBool::new(false));
/// let dependency = down.clone();
/// let mut catalog = ServiceBuilder::new().layer(layer).service_fn(move |sku: u32| {
///     let down = dependency.load(Ordering::SeqCst);
///     async move {
///         if down { Err(Rejection::new(RejectionKind::CircuitOpen)) } else { Ok(format!("lamp #{sku}")) }
///     }
/// });
///
/// assert_eq!(catalog.ready().await.unwrap().call(7).await.unwrap(), "lamp #7");
/// // The dependency goes down; a minute later the stale entry still answers.
/// down.store(true, Ordering::SeqCst);
/// tokio::time::advance(Duration::from_secs(60)).await;
/// assert_eq!(catalog.ready().await.unwrap().call(7).await.unwrap(), "lamp #7");
/// // Nothing cached for another product: the rejection comes through.
/// assert!(catalog.ready().await.unwrap().call(8).await.unwrap_err().is_rejection());
/// # }
/// ```
pub struct CacheLayer<KF: KeyFn, St: Store, C = AllErrorsFail> {
    key: KF,
    store: St,
    classify: C,
    core: Arc<CacheCore<KF::Key, St::Entry>>,
}

impl<KF: KeyFn, St: Store, C: Clone> Clone for CacheLayer<KF, St, C> {
    fn clone(&self) -> Self {
        Self {
            key: self.key.clone(),
            store: self.store.clone(),
            classify: self.classify.clone(),
            core: Arc::clone(&self.core),
        }
    }
}

impl<KF: KeyFn, St: Store, C> std::fmt::Debug for CacheLayer<KF, St, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheLayer")
            .field("downstream", &self.core.name)
            .field("fresh_ttl", &self.core.fresh_ttl)
            .finish_non_exhaustive()
    }
}

impl<KF: KeyFn, St: Store> CacheLayer<KF, St> {
    /// Starts a builder for the cache of downstream `name` (the `downstream` metric
    /// label), keyed by `key` (e.g. [`key_fn`](crate::key_fn), `HttpKey`) and
    /// keeping responses with `store` (e.g. [`CloneStore`](crate::CloneStore),
    /// `HttpStore`). Calls are judged by [`AllErrorsFail`] unless
    /// [`classify`](CacheBuilder::classify) says otherwise.
    pub fn builder(name: &str, key: KF, store: St) -> CacheBuilder<KF, St> {
        CacheBuilder {
            name: name.to_owned(),
            config: CacheConfig::default(),
            key,
            store,
            classify: AllErrorsFail,
        }
    }
}

impl<KF: KeyFn, St: Store, C> CacheLayer<KF, St, C> {
    /// A handle to the cache.
    pub fn handle(&self) -> CacheHandle<KF::Key, St::Entry> {
        CacheHandle::new(Arc::clone(&self.core))
    }
}

impl<S, KF: KeyFn, St: Store, C: Clone> Layer<S> for CacheLayer<KF, St, C> {
    type Service = Cache<S, KF, St, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Cache {
            inner,
            key: self.key.clone(),
            store: self.store.clone(),
            classify: self.classify.clone(),
            core: Arc::clone(&self.core),
        }
    }
}

/// Builds a [`CacheLayer`]; see [`CacheConfig`] for each setting. `build` validates
/// and names the bad field.
pub struct CacheBuilder<KF, St, C = AllErrorsFail> {
    name: String,
    config: CacheConfig,
    key: KF,
    store: St,
    classify: C,
}

impl<KF, St, C> std::fmt::Debug for CacheBuilder<KF, St, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<KF: KeyFn, St: Store, C> CacheBuilder<KF, St, C> {
    /// Replaces the settings with `config` (its HTTP fields matter only to the
    /// HTTP key and store, which read them when built).
    pub fn config(mut self, config: CacheConfig) -> Self {
        self.config = config;
        self
    }

    /// Entries younger than `ttl` are fresh.
    pub fn fresh_ttl(mut self, ttl: Duration) -> Self {
        self.config.fresh_ttl = ttl;
        self
    }

    /// Entries may be served up to `max_stale` past their fresh TTL when the
    /// dependency fails.
    pub fn max_stale(mut self, max_stale: Duration) -> Self {
        self.config.max_stale = max_stale;
        self
    }

    /// For `window` past the fresh TTL, stale entries answer at once while the
    /// dependency is asked in the background.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.config.stale_while_revalidate = window;
        self
    }

    /// Whether fresh entries answer without calling the dependency.
    pub fn serve_fresh(mut self, serve: bool) -> Self {
        self.config.serve_fresh = serve;
        self
    }

    /// Bounds the summed weight of the entries.
    pub fn max_weight_bytes(mut self, bytes: u64) -> Self {
        self.config.max_weight_bytes = bytes;
        self
    }

    /// Bounds the keys with a refresh in flight.
    pub fn max_refreshes_in_flight(mut self, max: usize) -> Self {
        self.config.max_refreshes_in_flight = max;
        self
    }

    /// Judges calls with `classify` (e.g. `HttpClassifier`).
    pub fn classify<C2>(self, classify: C2) -> CacheBuilder<KF, St, C2> {
        CacheBuilder {
            name: self.name,
            config: self.config,
            key: self.key,
            store: self.store,
            classify,
        }
    }

    /// Validates the settings, registers the metrics and builds the layer.
    pub fn build(self) -> Result<CacheLayer<KF, St, C>, ConfigError> {
        let name = Name::new(&self.name).map_err(|e| ConfigError::new("name", e.to_string()))?;
        self.config.validate()?;
        let metrics = Arc::new(CacheMetrics::register(&name));
        let flights = Arc::new(Flights::new(
            self.config.max_refreshes_in_flight,
            false,
            FlightMetrics::register(&name),
        ));
        let (key, store) = (self.key.clone(), self.store.clone());
        let (entries_gauge, evictions) = (metrics.entries.clone(), metrics.evictions.clone());
        let entries = moka::sync::Cache::builder()
            .max_capacity(self.config.max_weight_bytes)
            .weigher(move |k: &KF::Key, slot: &Arc<Slot<St::Entry>>| {
                key.weigh(k)
                    .saturating_add(store.weigh(&slot.entry))
                    .saturating_add(ENTRY_OVERHEAD)
            })
            .eviction_listener(move |_key, _slot, cause| {
                entries_gauge.decrement(1.0);
                if cause == RemovalCause::Size {
                    evictions.increment(1);
                }
            })
            .build();
        Ok(CacheLayer {
            key: self.key,
            store: self.store,
            classify: self.classify,
            core: Arc::new(CacheCore {
                name,
                entries,
                flights,
                fresh_ttl: self.config.fresh_ttl,
                expire_after: self.config.fresh_ttl + self.config.max_stale,
                revalidate_before: self.config.fresh_ttl + self.config.stale_while_revalidate,
                serve_fresh: self.config.serve_fresh,
                metrics,
            }),
        })
    }
}

/// Inspects and controls a cache at runtime.
pub struct CacheHandle<K, E> {
    core: Arc<CacheCore<K, E>>,
}

impl<K, E> Clone for CacheHandle<K, E> {
    fn clone(&self) -> Self {
        Self {
            core: Arc::clone(&self.core),
        }
    }
}

impl<K, E> std::fmt::Debug for CacheHandle<K, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheHandle")
            .field("downstream", &self.core.name)
            .finish_non_exhaustive()
    }
}

impl<K, E> CacheHandle<K, E>
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    pub(crate) fn new(core: Arc<CacheCore<K, E>>) -> Self {
        Self { core }
    }

    /// The downstream name.
    pub fn name(&self) -> &Name {
        &self.core.name
    }

    /// Entries held (exact after [`run_pending_tasks`](Self::run_pending_tasks)).
    pub fn entry_count(&self) -> u64 {
        self.core.entries.entry_count()
    }

    /// The summed weight of the entries (exact after
    /// [`run_pending_tasks`](Self::run_pending_tasks)).
    pub fn weighted_size(&self) -> u64 {
        self.core.entries.weighted_size()
    }

    /// Applies pending inserts and evictions now (the cache otherwise does so in
    /// small steps as it is used).
    pub fn run_pending_tasks(&self) {
        self.core.entries.run_pending_tasks();
    }

    /// Whether an entry for `key` is held, fresh or stale, and its age.
    pub fn age_of(&self, key: &K) -> Option<Duration> {
        self.core.lookup(key).map(|(_, age)| age)
    }

    /// Drops the entry for `key`.
    pub fn invalidate(&self, key: &K) {
        self.core.entries.invalidate(key);
    }

    /// Drops every entry.
    pub fn invalidate_all(&self) {
        self.core.entries.invalidate_all();
    }

    /// Keys with a refresh in flight.
    pub fn refreshes_in_flight(&self) -> usize {
        self.core.flights.len()
    }
}
