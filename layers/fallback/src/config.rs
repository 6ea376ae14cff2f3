use std::time::Duration;

use palisade_core::{ConfigError, RejectionKind};
use serde::{Deserialize, Serialize};

/// A rejection kind as written in config files (`circuit_open`, `rate_limited`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectionName {
    /// [`RejectionKind::CircuitOpen`].
    CircuitOpen,
    /// [`RejectionKind::RateLimited`].
    RateLimited,
    /// [`RejectionKind::BulkheadFull`].
    BulkheadFull,
    /// [`RejectionKind::Timeout`].
    Timeout,
    /// [`RejectionKind::DeadlineExceeded`].
    DeadlineExceeded,
    /// [`RejectionKind::BudgetExhausted`].
    BudgetExhausted,
    /// [`RejectionKind::Shed`].
    Shed,
    /// [`RejectionKind::NoEndpoints`].
    NoEndpoints,
}

impl RejectionName {
    /// Every name, in [`RejectionKind::ALL`] order.
    pub const ALL: [RejectionName; 8] = [
        RejectionName::CircuitOpen,
        RejectionName::RateLimited,
        RejectionName::BulkheadFull,
        RejectionName::Timeout,
        RejectionName::DeadlineExceeded,
        RejectionName::BudgetExhausted,
        RejectionName::Shed,
        RejectionName::NoEndpoints,
    ];

    /// The kind this name stands for.
    pub const fn kind(self) -> RejectionKind {
        match self {
            RejectionName::CircuitOpen => RejectionKind::CircuitOpen,
            RejectionName::RateLimited => RejectionKind::RateLimited,
            RejectionName::BulkheadFull => RejectionKind::BulkheadFull,
            RejectionName::Timeout => RejectionKind::Timeout,
            RejectionName::DeadlineExceeded => RejectionKind::DeadlineExceeded,
            RejectionName::BudgetExhausted => RejectionKind::BudgetExhausted,
            RejectionName::Shed => RejectionKind::Shed,
            RejectionName::NoEndpoints => RejectionKind::NoEndpoints,
        }
    }
}

/// A set of rejection kinds, one bit each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct KindSet(u16);

impl KindSet {
    pub(crate) fn of(kinds: impl IntoIterator<Item = RejectionKind>) -> Self {
        let mut set = 0u16;
        for kind in kinds {
            set |= Self::bit(kind);
        }
        KindSet(set)
    }

    fn bit(kind: RejectionKind) -> u16 {
        RejectionKind::ALL
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| 1 << i)
    }

    pub(crate) fn contains(self, kind: RejectionKind) -> bool {
        self.0 & Self::bit(kind) != 0
    }
}

/// When a [`FallbackLayer`](crate::FallbackLayer) answers with its fallback.
///
/// ```
/// use palisade_fallback::FallbackConfig;
///
/// let config: FallbackConfig = toml::from_str(r#"
///     on_failure = false
///     on_rejections = ["circuit_open", "bulkhead_full"]
/// "#).unwrap();
/// config.validate().unwrap();
///
/// let bad = toml::from_str::<FallbackConfig>(r#"on_rejections = ["circuit_closed"]"#);
/// assert!(bad.unwrap_err().to_string().contains("unknown variant `circuit_closed`"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FallbackConfig {
    /// Fall back when the call fails as the classifier judges it (an error, or for
    /// HTTP a 5xx or 429). Default true.
    pub on_failure: bool,
    /// Fall back when Palisade refuses the call with one of these kinds. Default:
    /// every kind.
    pub on_rejections: Vec<RejectionName>,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        Self {
            on_failure: true,
            on_rejections: RejectionName::ALL.to_vec(),
        }
    }
}

impl FallbackConfig {
    /// Checks the settings: something must trigger the fallback.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.on_failure && self.on_rejections.is_empty() {
            return Err(ConfigError::new(
                "on_rejections",
                "is empty and on_failure is false, so the fallback could never be used",
            ));
        }
        Ok(())
    }

    pub(crate) fn kinds(&self) -> KindSet {
        KindSet::of(self.on_rejections.iter().map(|n| n.kind()))
    }
}

/// The longest duration accepted for a cache's `fresh_ttl` and `max_stale`.
const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 86_400);

/// A stale-if-error cache's settings, as a builder fills them or a config file gives
/// them. Durations are written `"30s"`, `"5m"`; unknown fields are errors.
///
/// ```
/// use palisade_fallback::CacheConfig;
/// use std::time::Duration;
///
/// let config: CacheConfig = toml::from_str(r#"
///     fresh_ttl = "10s"
///     max_stale = "10m"
///     max_weight_bytes = 16_777_216
///     key_headers = ["accept-language"]
/// "#).unwrap();
/// config.validate().unwrap();
/// assert_eq!(config.max_stale, Duration::from_secs(600));
///
/// let bad: CacheConfig = toml::from_str("max_weight_bytes = 0").unwrap();
/// assert_eq!(bad.validate().unwrap_err().to_string(),
///     "max_weight_bytes: must be at least 1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// An entry younger than this is fresh. Default 30 s. Zero: entries are never
    /// fresh, the cache only serves stale entries when the dependency fails.
    #[serde(with = "humantime_serde")]
    pub fresh_ttl: Duration,
    /// How long past `fresh_ttl` an entry may still be served when the dependency
    /// fails or refuses. Default 5 min. An entry older than `fresh_ttl + max_stale`
    /// is never served.
    #[serde(with = "humantime_serde")]
    pub max_stale: Duration,
    /// For this long past `fresh_ttl` a stale entry answers at once while the
    /// dependency is asked in the background (RFC 5861 `stale-while-revalidate`);
    /// later a request waits for the dependency and gets the stale entry only when
    /// it fails. Default zero: every request past `fresh_ttl` waits for the refresh
    /// (or gets the stale entry at once when a refresh of its key is already in
    /// flight). At most `max_stale`.
    #[serde(with = "humantime_serde")]
    pub stale_while_revalidate: Duration,
    /// Answer from a fresh entry without calling the dependency. Default true. When
    /// false every request waits for the dependency's answer (requests for a key
    /// whose call is in flight share that call) and the cache only answers when it
    /// fails (pure stale-if-error).
    pub serve_fresh: bool,
    /// The cache's bound: the summed weight (approximate bytes) of its entries.
    /// Default 64 MiB.
    pub max_weight_bytes: u64,
    /// Calls to the dependency in flight at once, one per key; a request for a
    /// further key calls the dependency on its own. Default 1024.
    pub max_refreshes_in_flight: usize,
    /// HTTP: responses with larger bodies are passed on, not cached. Default 1 MiB.
    pub max_body_bytes: usize,
    /// HTTP: methods whose requests are cached. Default `["GET", "HEAD"]`.
    pub methods: Vec<String>,
    /// HTTP: request headers that are part of the key (besides method, path and
    /// query). Default none.
    pub key_headers: Vec<String>,
    /// HTTP: a request whose key would be longer is passed on, not cached. Default
    /// 4096.
    pub max_key_bytes: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            fresh_ttl: Duration::from_secs(30),
            max_stale: Duration::from_secs(300),
            stale_while_revalidate: Duration::ZERO,
            serve_fresh: true,
            max_weight_bytes: 64 * 1024 * 1024,
            max_refreshes_in_flight: 1024,
            max_body_bytes: 1024 * 1024,
            methods: vec!["GET".into(), "HEAD".into()],
            key_headers: Vec::new(),
            max_key_bytes: 4096,
        }
    }
}

impl CacheConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.fresh_ttl > TEN_YEARS {
            return Err(ConfigError::new(
                "fresh_ttl",
                format!("{:?} is longer than ten years", self.fresh_ttl),
            ));
        }
        if self.max_stale > TEN_YEARS {
            return Err(ConfigError::new(
                "max_stale",
                format!("{:?} is longer than ten years", self.max_stale),
            ));
        }
        if self.fresh_ttl.is_zero() && self.max_stale.is_zero() {
            return Err(ConfigError::new(
                "max_stale",
                "is zero and fresh_ttl is zero, so no entry could ever be served",
            ));
        }
        if self.stale_while_revalidate > self.max_stale {
            return Err(ConfigError::new(
                "stale_while_revalidate",
                format!(
                    "{:?} is longer than max_stale ({:?})",
                    self.stale_while_revalidate, self.max_stale
                ),
            ));
        }
        if self.max_weight_bytes == 0 {
            return Err(ConfigError::new("max_weight_bytes", "must be at least 1"));
        }
        if self.max_refreshes_in_flight == 0 {
            return Err(ConfigError::new(
                "max_refreshes_in_flight",
                "must be at least 1",
            ));
        }
        validate_http_key(&self.methods, &self.key_headers, self.max_key_bytes)?;
        if self.max_body_bytes == 0 {
            return Err(ConfigError::new("max_body_bytes", "must be at least 1"));
        }
        Ok(())
    }
}

/// A coalescing layer's settings.
///
/// ```
/// use palisade_fallback::CoalesceConfig;
///
/// let config: CoalesceConfig = toml::from_str("max_keys_in_flight = 64").unwrap();
/// config.validate().unwrap();
/// let bad: CoalesceConfig = toml::from_str("max_keys_in_flight = 0").unwrap();
/// assert_eq!(bad.validate().unwrap_err().to_string(),
///     "max_keys_in_flight: must be at least 1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoalesceConfig {
    /// Keys with a shared call in flight at once; a request for a further key calls
    /// the dependency on its own, uncoalesced. Default 1024.
    pub max_keys_in_flight: usize,
    /// HTTP: responses with larger bodies are not shared (the first caller gets it,
    /// the others call on their own). Default 1 MiB.
    pub max_body_bytes: usize,
    /// HTTP: methods whose requests are coalesced. Default `["GET", "HEAD"]`.
    pub methods: Vec<String>,
    /// HTTP: request headers that are part of the key. Default none.
    pub key_headers: Vec<String>,
    /// HTTP: a request whose key would be longer is passed on alone. Default 4096.
    pub max_key_bytes: usize,
}

impl Default for CoalesceConfig {
    fn default() -> Self {
        Self {
            max_keys_in_flight: 1024,
            max_body_bytes: 1024 * 1024,
            methods: vec!["GET".into(), "HEAD".into()],
            key_headers: Vec::new(),
            max_key_bytes: 4096,
        }
    }
}

impl CoalesceConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_keys_in_flight == 0 {
            return Err(ConfigError::new("max_keys_in_flight", "must be at least 1"));
        }
        if self.max_body_bytes == 0 {
            return Err(ConfigError::new("max_body_bytes", "must be at least 1"));
        }
        validate_http_key(&self.methods, &self.key_headers, self.max_key_bytes)
    }
}

fn validate_http_key(
    methods: &[String],
    headers: &[String],
    max_key_bytes: usize,
) -> Result<(), ConfigError> {
    for (i, m) in methods.iter().enumerate() {
        let valid = !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase() || b == b'-');
        if !valid {
            return Err(ConfigError::new(
                format!("methods[{i}]"),
                format!("{m:?} is not an HTTP method (upper-case letters, e.g. \"GET\")"),
            ));
        }
    }
    for (i, h) in headers.iter().enumerate() {
        let valid = !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
        if !valid {
            return Err(ConfigError::new(
                format!("key_headers[{i}]"),
                format!("{h:?} is not a lower-case header name"),
            ));
        }
    }
    if max_key_bytes < 16 {
        return Err(ConfigError::new(
            "max_key_bytes",
            format!("{max_key_bytes} is less than 16"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        FallbackConfig::default().validate().unwrap();
        CacheConfig::default().validate().unwrap();
        CoalesceConfig::default().validate().unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let fallback = FallbackConfig {
            on_failure: false,
            on_rejections: vec![],
        };
        assert_eq!(fallback.validate().unwrap_err().field(), "on_rejections");
        let cache = CacheConfig {
            methods: vec!["get".into()],
            ..CacheConfig::default()
        };
        assert_eq!(
            cache.validate().unwrap_err().to_string(),
            "methods[0]: \"get\" is not an HTTP method (upper-case letters, e.g. \"GET\")"
        );
        let cache = CacheConfig {
            key_headers: vec!["accept".into(), "X Tenant".into()],
            ..CacheConfig::default()
        };
        assert_eq!(cache.validate().unwrap_err().field(), "key_headers[1]");
        let cache = CacheConfig {
            fresh_ttl: Duration::ZERO,
            max_stale: Duration::ZERO,
            ..CacheConfig::default()
        };
        assert_eq!(cache.validate().unwrap_err().field(), "max_stale");
        let cache = CacheConfig {
            stale_while_revalidate: Duration::from_secs(600),
            ..CacheConfig::default()
        };
        assert_eq!(
            cache.validate().unwrap_err().to_string(),
            "stale_while_revalidate: 600s is longer than max_stale (300s)"
        );
        let cache = CacheConfig {
            max_stale: Duration::from_secs(11 * 365 * 86_400),
            ..CacheConfig::default()
        };
        assert_eq!(cache.validate().unwrap_err().field(), "max_stale");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = toml::from_str::<CacheConfig>("fresh = \"1s\"").unwrap_err();
        assert!(err.to_string().contains("unknown field `fresh`"), "{err}");
        let err = toml::from_str::<CacheConfig>("fresh_ttl = \"soon\"").unwrap_err();
        assert!(err.to_string().contains("fresh_ttl"), "{err}");
    }

    #[test]
    fn kind_sets_hold_what_was_named() {
        let set = KindSet::of([RejectionKind::CircuitOpen, RejectionKind::Shed]);
        assert!(set.contains(RejectionKind::CircuitOpen));
        assert!(set.contains(RejectionKind::Shed));
        assert!(!set.contains(RejectionKind::Timeout));
        let all = FallbackConfig::default().kinds();
        assert!(RejectionKind::ALL.iter().all(|k| all.contains(*k)));
    }
}
