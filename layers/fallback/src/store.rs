use std::future::Future;
use std::time::Duration;

use palisade_core::BoxError;

/// How a response was served by a cache or coalescing layer; also a response
/// extension on HTTP responses the cache answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Fetched from the dependency for this request, or for a concurrent identical
    /// one it was coalesced with.
    Fetched,
    /// From a fresh cache entry fetched `age` ago.
    Fresh {
        /// Time since the entry was fetched.
        age: Duration,
    },
    /// From a stale cache entry fetched `age` ago, because the dependency failed or
    /// refused, or was already being refreshed.
    Stale {
        /// Time since the entry was fetched.
        age: Duration,
    },
}

impl Served {
    /// Whether the response is a stale entry.
    pub fn is_stale(self) -> bool {
        matches!(self, Served::Stale { .. })
    }
}

/// What a [`StoreOf::capture`] made of a response.
#[derive(Debug)]
pub enum Captured<E, O> {
    /// A value that can be cached and handed to every waiter.
    Shareable(E),
    /// A response that cannot be shared (e.g. an HTTP body over the size bound): it
    /// goes to one caller, the others make their own call.
    Unshareable(O),
    /// Reading the response failed (e.g. the HTTP body broke off).
    Failed(BoxError),
}

/// How a cache or coalescing layer keeps responses: what an entry is and how much it
/// weighs. Split from [`StoreOf`] so a layer's type names its entry type without
/// naming the response type.
pub trait Store: Clone + Send + Sync + 'static {
    /// What is cached and shared between waiters.
    type Entry: Clone + Send + Sync + 'static;

    /// The entry's weight in approximate bytes, counted against the cache's bound.
    fn weigh(&self, entry: &Self::Entry) -> u32;

    /// Whether a successful entry may be cached (shared with concurrent waiters
    /// either way). Default: always.
    fn cacheable(&self, entry: &Self::Entry) -> bool {
        let _ = entry;
        true
    }
}

/// Turns responses of type `Res` into entries and entries back into responses.
pub trait StoreOf<Res>: Store {
    /// The response type of the layer.
    type Output: Send + 'static;

    /// Captures a response from the dependency (for HTTP: buffers its body).
    fn capture(
        &self,
        response: Res,
    ) -> impl Future<Output = Captured<Self::Entry, Self::Output>> + Send + 'static;

    /// Rebuilds a response from an entry, marked with how it was served.
    fn rebuild(&self, entry: &Self::Entry, served: Served) -> Self::Output;

    /// Passes a response of a request that was not cached or coalesced through,
    /// unchanged (but for its type).
    fn pass(&self, response: Res) -> Self::Output;
}

/// Keeps `Clone` responses as they are.
///
/// Entries weigh their size on the stack unless a weigher is set; responses are not
/// marked unless a marker is set.
///
/// ```
/// use palisade_fallback::{CloneStore, Served, Store, StoreOf};
///
/// #[derive(Clone)]
/// struct Product { name: String, stale: bool }
///
/// let store = CloneStore::new()
///     .with_weigher(|p: &Product| p.name.len() as u32 + 32)
///     .with_marker(|p: &mut Product, served| p.stale = served.is_stale());
/// let entry = Product { name: "lamp".into(), stale: false };
/// assert_eq!(store.weigh(&entry), 36);
/// let served = store.rebuild(&entry, Served::Stale { age: std::time::Duration::from_secs(90) });
/// assert!(served.stale);
/// ```
pub struct CloneStore<T> {
    weigh: Option<fn(&T) -> u32>,
    mark: Option<fn(&mut T, Served)>,
}

impl<T> Clone for CloneStore<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for CloneStore<T> {}

impl<T> Default for CloneStore<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> std::fmt::Debug for CloneStore<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloneStore").finish_non_exhaustive()
    }
}

impl<T> CloneStore<T> {
    /// A store of `Clone` responses.
    pub const fn new() -> Self {
        Self {
            weigh: None,
            mark: None,
        }
    }

    /// Weighs entries with `weigh` (approximate bytes).
    pub fn with_weigher(mut self, weigh: fn(&T) -> u32) -> Self {
        self.weigh = Some(weigh);
        self
    }

    /// Marks each response served from the cache (or shared) with `mark`.
    pub fn with_marker(mut self, mark: fn(&mut T, Served)) -> Self {
        self.mark = Some(mark);
        self
    }
}

impl<T: Clone + Send + Sync + 'static> Store for CloneStore<T> {
    type Entry = T;

    fn weigh(&self, entry: &T) -> u32 {
        match self.weigh {
            Some(weigh) => weigh(entry),
            None => u32::try_from(std::mem::size_of::<T>()).unwrap_or(u32::MAX),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> StoreOf<T> for CloneStore<T> {
    type Output = T;

    fn capture(&self, response: T) -> impl Future<Output = Captured<T, T>> + Send + 'static {
        std::future::ready(Captured::Shareable(response))
    }

    fn rebuild(&self, entry: &T, served: Served) -> T {
        let mut response = entry.clone();
        if let Some(mark) = self.mark {
            mark(&mut response, served);
        }
        response
    }

    fn pass(&self, response: T) -> T {
        response
    }
}
