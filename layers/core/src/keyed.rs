//! A bounded registry of per-key state (per-host breakers, per-client limiters).
//!
//! A flood of distinct keys must not grow memory without bound, so the registry
//! holds at most `capacity` entries. Entries unused for `idle_timeout` are evicted;
//! when the registry is full, a new key first evicts idle entries of its shard and,
//! failing that, the least recently used eighth of that shard. The map is split into shards, each
//! behind a short-held `std` mutex (never held across an `.await`), so lookups for
//! different keys rarely contend.
//!
//! ```
//! use palisade_core::keyed::KeyedRegistry;
//! use std::time::Duration;
//!
//! let registry = KeyedRegistry::new(1_000, Duration::from_secs(60)).unwrap();
//! let a = registry.get_or_insert_with("host-a".to_string(), || 1u32);
//! let again = registry.get_or_insert_with("host-a".to_string(), || 2u32);
//! assert_eq!((a, again), (1, 1));
//! assert_eq!(registry.len(), 1);
//! ```

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::Clock;
use crate::clock::duration_to_nanos;

struct Entry<V> {
    value: V,
    last_used: u64,
}

struct Shard<K, V, S> {
    map: HashMap<K, Entry<V>, S>,
}

/// A size-bounded map from keys to shared state with idle eviction; see the
/// [module docs](self).
///
/// Keys are hashed with `S` (std's `RandomState` by default) to pick a shard and
/// a slot; a caller whose keys are already well-mixed hashes (a `u64` from a
/// seeded hasher) can pass a cheaper one with [`with_hasher`](Self::with_hasher).
pub struct KeyedRegistry<K, V, S = RandomState> {
    shards: Box<[Mutex<Shard<K, V, S>>]>,
    shard_capacity: usize,
    idle_nanos: u64,
    clock: Clock,
    hasher: S,
    evictions: AtomicU64,
    /// Entries for which this holds are not evicted for being idle (a full shard
    /// still makes room with them, least recently used first).
    busy: Option<fn(&V) -> bool>,
}

impl<K, V, S> std::fmt::Debug for KeyedRegistry<K, V, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedRegistry")
            .field("capacity", &(self.shard_capacity * self.shards.len()))
            .field("idle_nanos", &self.idle_nanos)
            .finish_non_exhaustive()
    }
}

/// Why a registry could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Capacity was zero.
    #[error("capacity must be at least 1")]
    ZeroCapacity,
    /// The idle timeout was zero.
    #[error("idle timeout must be greater than zero")]
    ZeroIdleTimeout,
}

impl<K: Hash + Eq + Clone, V: Clone> KeyedRegistry<K, V> {
    /// A registry of at most `capacity` keys, evicting keys unused for
    /// `idle_timeout`.
    pub fn new(capacity: usize, idle_timeout: Duration) -> Result<Self, RegistryError> {
        Self::with_hasher(capacity, idle_timeout, RandomState::new())
    }
}

impl<K: Hash + Eq + Clone, V: Clone, S: BuildHasher + Clone> KeyedRegistry<K, V, S> {
    /// A registry of at most `capacity` keys, evicting keys unused for
    /// `idle_timeout`, hashing keys with `hasher`.
    ///
    /// ```
    /// use palisade_core::keyed::KeyedRegistry;
    /// use std::hash::{BuildHasherDefault, Hasher};
    /// use std::time::Duration;
    ///
    /// /// Keys that are already 64-bit hashes need no more mixing.
    /// #[derive(Default)]
    /// struct PreHashed(u64);
    /// impl Hasher for PreHashed {
    ///     fn finish(&self) -> u64 { self.0 }
    ///     fn write(&mut self, bytes: &[u8]) {
    ///         for b in bytes { self.0 = self.0.rotate_left(8) ^ u64::from(*b) }
    ///     }
    ///     fn write_u64(&mut self, n: u64) { self.0 = n }
    /// }
    ///
    /// let registry: KeyedRegistry<u64, u32, BuildHasherDefault<PreHashed>> =
    ///     KeyedRegistry::with_hasher(1_000, Duration::from_secs(60), Default::default()).unwrap();
    /// assert_eq!(registry.get_or_insert_with(0x9e37_79b9_7f4a_7c15, || 7), 7);
    /// ```
    pub fn with_hasher(
        capacity: usize,
        idle_timeout: Duration,
        hasher: S,
    ) -> Result<Self, RegistryError> {
        if capacity == 0 {
            return Err(RegistryError::ZeroCapacity);
        }
        if idle_timeout.is_zero() {
            return Err(RegistryError::ZeroIdleTimeout);
        }
        // Small registries use one shard so the bound is exact; larger ones split
        // into up to 16 shards of equal size (rounding the bound down).
        let shard_count = (capacity / 64).clamp(1, 16);
        let shard_capacity = (capacity / shard_count).max(1);
        Ok(Self {
            shards: (0..shard_count)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::with_hasher(hasher.clone()),
                    })
                })
                .collect(),
            shard_capacity,
            idle_nanos: duration_to_nanos(idle_timeout),
            clock: Clock::new(),
            hasher,
            evictions: AtomicU64::new(0),
            busy: None,
        })
    }

    /// The most entries the registry holds at once.
    pub fn capacity(&self) -> usize {
        self.shard_capacity * self.shards.len()
    }

    fn shard(&self, key: &K) -> &Mutex<Shard<K, V, S>> {
        let i = (self.hasher.hash_one(key) % self.shards.len() as u64) as usize;
        &self.shards[i]
    }

    fn lock<'a>(
        &self,
        shard: &'a Mutex<Shard<K, V, S>>,
    ) -> std::sync::MutexGuard<'a, Shard<K, V, S>> {
        // A panic while holding the lock cannot leave a shard half-updated (every
        // critical section is a single map operation), so poisoning is ignored.
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value for `key`, creating it with `make` if absent. Marks the key used.
    pub fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> V {
        self.get_or_insert_with_at(key, tokio::time::Instant::now(), make)
    }

    /// [`get_or_insert_with`](Self::get_or_insert_with) for a caller that has
    /// just read the time: marks the key used at `now`, saving a clock read.
    pub fn get_or_insert_with_at(
        &self,
        key: K,
        now: tokio::time::Instant,
        make: impl FnOnce() -> V,
    ) -> V {
        self.with_or_insert_at(key, now, make, V::clone)
    }

    /// Calls `f` on the value for `key` (created with `make` if absent) under the
    /// shard's lock, and marks the key used at `now`: a caller that only needs to
    /// look at the value saves cloning it. Keep `f` short; it must not use the
    /// registry.
    pub fn with_or_insert_at<R>(
        &self,
        key: K,
        now: tokio::time::Instant,
        make: impl FnOnce() -> V,
        f: impl FnOnce(&V) -> R,
    ) -> R {
        let now = self.clock.nanos_at(now);
        let mut shard = self.lock(self.shard(&key));
        if let Some(entry) = shard.map.get_mut(&key) {
            entry.last_used = now;
            return f(&entry.value);
        }
        if shard.map.len() >= self.shard_capacity {
            self.make_room(&mut shard, now);
        }
        let value = make();
        let out = f(&value);
        shard.map.insert(
            key,
            Entry {
                value,
                last_used: now,
            },
        );
        out
    }

    /// Puts `value` under `key`, replacing any value there (and marking it used).
    pub fn insert(&self, key: K, value: V) {
        let now = self.clock.now_nanos();
        let mut shard = self.lock(self.shard(&key));
        if !shard.map.contains_key(&key) && shard.map.len() >= self.shard_capacity {
            self.make_room(&mut shard, now);
        }
        shard.map.insert(
            key,
            Entry {
                value,
                last_used: now,
            },
        );
    }

    /// The value for `key`, if present (does not mark it used).
    pub fn get(&self, key: &K) -> Option<V> {
        self.lock(self.shard(key))
            .map
            .get(key)
            .map(|e| e.value.clone())
    }

    /// Keeps entries for which `busy` holds through the idle timeout: an entry
    /// that carries state its key still needs (an open circuit breaker whose
    /// callers wait out its `Retry-After`) is not evicted for being quiet. The
    /// capacity still bounds the registry: a full shard makes room with busy
    /// entries too, least recently used first.
    ///
    /// ```
    /// use palisade_core::keyed::KeyedRegistry;
    /// use std::time::Duration;
    ///
    /// let registry = KeyedRegistry::new(10, Duration::from_secs(60))
    ///     .unwrap()
    ///     .keep_while(|open: &bool| *open);
    /// registry.get_or_insert_with("open", || true);
    /// # drop(registry);
    /// ```
    pub fn keep_while(mut self, busy: fn(&V) -> bool) -> Self {
        self.busy = Some(busy);
        self
    }

    /// Whether `e` is evicted for being idle at `now`.
    fn idle(&self, e: &Entry<V>, now: u64) -> bool {
        now.saturating_sub(e.last_used) >= self.idle_nanos
            && !self.busy.is_some_and(|b| b(&e.value))
    }

    /// Frees room in a full shard: idle entries first; if none, the least recently
    /// used eighth of the shard in one pass, so a flood of new keys costs amortised
    /// O(1) per insert instead of a scan each.
    fn make_room(&self, shard: &mut Shard<K, V, S>, now: u64) {
        let before = shard.map.len();
        shard.map.retain(|_, e| !self.idle(e, now));
        if shard.map.len() >= self.shard_capacity {
            let mut ages: Vec<u64> = shard.map.values().map(|e| e.last_used).collect();
            let cut = (ages.len() / 8).max(1) - 1;
            let (_, threshold, _) = ages.select_nth_unstable(cut);
            let threshold = *threshold;
            let mut budget = cut + 1;
            shard.map.retain(|_, e| {
                if budget > 0 && e.last_used <= threshold {
                    budget -= 1;
                    false
                } else {
                    true
                }
            });
        }
        let evicted = (before - shard.map.len()) as u64;
        self.evictions.fetch_add(evicted, Ordering::Relaxed);
    }

    /// Evicts every entry unused for the idle timeout; returns how many.
    pub fn sweep(&self) -> usize {
        let now = self.clock.now_nanos();
        let mut evicted = 0;
        for shard in self.shards.iter() {
            let mut shard = self.lock(shard);
            let before = shard.map.len();
            shard.map.retain(|_, e| !self.idle(e, now));
            evicted += before - shard.map.len();
        }
        self.evictions.fetch_add(evicted as u64, Ordering::Relaxed);
        evicted
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| self.lock(s).map.len()).sum()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries evicted so far (idle or to make room).
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Calls `f` on every entry's value (for aggregating state into metrics).
    pub fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        for shard in self.shards.iter() {
            for (k, e) in self.lock(shard).map.iter() {
                f(k, &e.value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_zero_bounds() {
        assert_eq!(
            KeyedRegistry::<u32, u32>::new(0, Duration::from_secs(1)).unwrap_err(),
            RegistryError::ZeroCapacity
        );
        assert_eq!(
            KeyedRegistry::<u32, u32>::new(1, Duration::ZERO).unwrap_err(),
            RegistryError::ZeroIdleTimeout
        );
    }

    #[test]
    fn a_million_distinct_keys_stay_within_the_bound() {
        let registry = KeyedRegistry::new(10_000, Duration::from_secs(600)).unwrap();
        for key in 0..1_000_000u64 {
            registry.get_or_insert_with(key, || key);
        }
        assert!(registry.len() <= registry.capacity());
        assert!(registry.capacity() <= 10_000);
        assert!(registry.evictions() >= 1_000_000 - 10_000);
        // The most recent key is present.
        assert_eq!(registry.get(&999_999), Some(999_999));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_keys_are_evicted_and_busy_ones_kept() {
        let registry = KeyedRegistry::new(100, Duration::from_secs(60)).unwrap();
        registry.get_or_insert_with("idle", || 1);
        registry.get_or_insert_with("busy", || 2);
        tokio::time::advance(Duration::from_secs(45)).await;
        registry.get_or_insert_with("busy", || 0);
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(registry.sweep(), 1);
        assert_eq!(registry.get(&"idle"), None);
        assert_eq!(registry.get(&"busy"), Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn full_registry_evicts_least_recently_used() {
        let registry = KeyedRegistry::new(2, Duration::from_secs(600)).unwrap();
        registry.get_or_insert_with("a", || 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        registry.get_or_insert_with("b", || 2);
        tokio::time::advance(Duration::from_secs(1)).await;
        registry.get_or_insert_with("a", || 0); // touch a
        registry.get_or_insert_with("c", || 3); // evicts b, the least recently used
        assert_eq!(registry.get(&"b"), None);
        assert_eq!(registry.get(&"a"), Some(1));
        assert_eq!(registry.get(&"c"), Some(3));
        assert_eq!(registry.evictions(), 1);
    }
}
