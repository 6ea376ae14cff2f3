use std::hash::Hash;
use std::marker::PhantomData;

/// What the keys of a cache or coalescing layer look like, and how much each weighs.
///
/// Split from [`KeyOf`] so a layer's type names its key type without naming the
/// request type.
pub trait KeyFn: Clone + Send + Sync + 'static {
    /// The key: requests with equal keys share a cache entry and a call in flight.
    type Key: Hash + Eq + Clone + Send + Sync + 'static;

    /// The key's weight in approximate bytes, counted against the cache's bound.
    /// Default: its size on the stack.
    fn weigh(&self, key: &Self::Key) -> u32 {
        let _ = key;
        u32::try_from(std::mem::size_of::<Self::Key>()).unwrap_or(u32::MAX)
    }
}

/// Builds the key of a request, or `None` for a request that must pass through
/// untouched (not cached, not coalesced).
pub trait KeyOf<Req>: KeyFn {
    /// The key of `req`, or `None` to pass it through.
    fn key(&self, req: &Req) -> Option<Self::Key>;
}

/// A key function from a closure `Fn(&Req) -> Option<K>`; see [`key_fn`].
pub struct FnKey<F, K> {
    f: F,
    _key: PhantomData<fn() -> K>,
}

impl<F: Clone, K> Clone for FnKey<F, K> {
    fn clone(&self) -> Self {
        Self {
            f: self.f.clone(),
            _key: PhantomData,
        }
    }
}

impl<F, K> std::fmt::Debug for FnKey<F, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnKey")
    }
}

/// A key function from a closure: `Some(key)` for requests to cache or coalesce,
/// `None` for requests to pass through.
///
/// ```
/// use palisade_fallback::{key_fn, KeyOf};
///
/// // Look-ups by SKU are cached; anything else passes through.
/// let key = key_fn(|req: &String| req.strip_prefix("sku:").map(str::to_owned));
/// assert_eq!(key.key(&"sku:42".to_string()), Some("42".to_string()));
/// assert_eq!(key.key(&"order:7".to_string()), None);
/// ```
pub fn key_fn<F, Req, K>(f: F) -> FnKey<F, K>
where
    F: Fn(&Req) -> Option<K>,
{
    FnKey {
        f,
        _key: PhantomData,
    }
}

impl<F, K> KeyFn for FnKey<F, K>
where
    F: Clone + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Key = K;
}

impl<F, Req, K> KeyOf<Req> for FnKey<F, K>
where
    F: Fn(&Req) -> Option<K> + Clone + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    fn key(&self, req: &Req) -> Option<K> {
        (self.f)(req)
    }
}
