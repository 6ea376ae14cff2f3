//! Declarative config: every downstream's policies, the inbound policies and the
//! metrics settings in one TOML or YAML file, validated with errors that name the
//! file, the field and the problem, overridable from the environment, and reloaded
//! while the program runs.
//!
//! # Loading
//!
//! ```
//! use palisade::Config;
//!
//! let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/palisade.toml");
//! let config = Config::from_file(path)?;
//! let customer = &config.downstreams["customer"];
//! assert_eq!(customer.breaker.as_ref().unwrap().failure_rate_threshold, 0.5);
//! # Ok::<(), palisade::config::ConfigFileError>(())
//! ```
//!
//! The format follows the file's extension: `.toml`, or `.yaml` / `.yml`. Durations
//! are strings such as `"250ms"`, `"30s"`, `"5m"`. Every section is optional and
//! every field has a default unless its doc says "required"; a section that is
//! left out turns its policy off.
//!
//! # The file
//!
//! | section | type | policy |
//! |---|---|---|
//! | `downstreams.<name>` | [`DownstreamConfig`] | one dependency; `<name>` is its `downstream` metric label |
//! | `….breaker` | [`BreakerConfig`] | circuit breaker |
//! | `….retry` | [`RetryConfig`] | retries with backoff and a retry budget |
//! | `….hedge` | [`HedgeConfig`] | hedged requests, spending the retry budget |
//! | `….timeout` | duration | timeout of each attempt |
//! | `….deadline` | [`DeadlineConfig`] | deadline propagation and early refusal |
//! | `….rate_limit` | [`RateLimitConfig`] | rate limit |
//! | `….bulkhead` | [`BulkheadConfig`] | fixed concurrency limit |
//! | `….adaptive` | [`AdaptiveLimitConfig`] | adaptive concurrency limit (instead of `bulkhead`) |
//! | `….throttle` | [`ThrottleConfig`] | client-side throttling |
//! | `….balance` | [`BalanceConfig`] | load balancing, discovery, outlier ejection |
//! | `….cache` | [`CacheConfig`] | stale-if-error cache |
//! | `….fallback` | [`FallbackConfig`] | when the fallback answers |
//! | `inbound` | [`InboundConfig`] | keyed rate limit, shedding, adaptive limit, deadline for a server |
//! | `metrics` | [`MetricsConfig`] | Prometheus exposition |
//!
//! Unknown fields are errors at any depth, so a misspelt setting is never silently
//! ignored:
//!
//! ```
//! use palisade::config::{Config, Format};
//!
//! let err = Config::parse("[downstreams.customer.breaker]\nfailure_rate = 0.5\n", Format::Toml)
//!     .unwrap_err();
//! assert!(err.to_string().starts_with(
//!     "<inline>:2:1: downstreams.customer.breaker.failure_rate: unknown field `failure_rate`"));
//!
//! let err = Config::parse("[downstreams.customer.breaker]\nfailure_rate_threshold = 1.5\n", Format::Toml)
//!     .unwrap_err();
//! assert_eq!(err.to_string(),
//!     "<inline>: downstreams.customer.breaker.failure_rate_threshold: 1.5 is not within 0..=1");
//! ```
//!
//! # Environment overrides
//!
//! A variable `PALISADE__<PATH>` sets the field at `<PATH>`, its segments joined by
//! `__` and matched case-insensitively (a `_` in a segment also matches a `-` in a
//! downstream's name):
//!
//! ```text
//! PALISADE__DOWNSTREAMS__CUSTOMER__BREAKER__FAILURE_RATE_THRESHOLD=0.3
//! PALISADE__DOWNSTREAMS__CUSTOMER__TIMEOUT=250ms
//! PALISADE__DOWNSTREAMS__CUSTOMER__BALANCE__DISCOVERY__ENDPOINTS=[10.0.0.1:80, 10.0.0.2:80]
//! PALISADE__METRICS__ENABLED=false
//! ```
//!
//! The value is read as a YAML value — a number, `true`/`false`, a list `[a, b]`, a
//! table `{ k: v }`, empty or `~` to unset an optional field — and as a plain string
//! when it is not one. Overrides are applied before validation, so an override is
//! checked like the file; an error caused by one names the variable. Tables that do
//! not exist yet are created, so an override can add a policy the file lacks
//! (which then needs its required fields set too). [`ConfigLoader`] changes the
//! prefix or takes the variables from elsewhere.
//!
//! # Hot reload
//!
//! [`Config::watch`] polls the file (every 2 s by default, on `tokio::time`) and
//! publishes each valid new version through a `tokio::sync::watch` channel; an
//! invalid version is logged, counted in `palisade_config_reload_errors_total` and
//! otherwise ignored: the running config stays. [`Config::diff`] lists what changed
//! per downstream and section, for the code that applies it to running layers.
//! Two ways to apply it: [`DownstreamHandle::apply`](crate::DownstreamHandle::apply)
//! retunes a stack built in code (thresholds, rates, sizes, timeouts), and a stack
//! built from its section with
//! [`Builder::live`](crate::downstream::Builder::live) follows the file whole —
//! policies added and removed included — through
//! [`LiveHandle::follow`](crate::downstream::LiveHandle::follow).
//!
//! # Metrics
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `palisade_config_reloads_total` | counter | – | changed config files loaded successfully |
//! | `palisade_config_reload_errors_total` | counter | – | changes refused: files unreadable or invalid, and changes a live downstream stack refused |
//! | `palisade_config_last_reload_success_timestamp_seconds` | gauge | – | Unix time of the last successful load |
//!
//! # The example file
//!
//! `examples/palisade.toml` sets every policy, each field documented:
//!
#![doc = concat!("```toml\n", include_str!("../../examples/palisade.toml"), "```")]

mod check;
mod diff;
mod error;
mod inbound;
mod load;
mod policy;
mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use palisade_breaker::BreakerConfig;
use palisade_core::{ConfigError, Name};
use palisade_limit::adaptive::AdaptiveLimitConfig;
use palisade_limit::bulkhead::BulkheadConfig;
use palisade_limit::rate::RateLimitConfig;
use palisade_limit::throttle::ThrottleConfig;
use palisade_retry::RetryConfig;
use palisade_timeout::TimeoutLayer;
use serde::{Deserialize, Serialize};

pub use diff::{ChangeKind, ConfigDiff, DownstreamDiff, Section, SectionChange};
pub use error::ConfigFileError;
pub use inbound::{
    InboundConfig, InboundDeadlineConfig, KeySource, KeyedRateLimitConfig, ShedConfig,
};
pub use load::{ConfigLoader, Format, MAX_FILE_BYTES};
pub use policy::{
    BalanceConfig, CacheConfig, DeadlineConfig, DiscoveryConfig, FallbackConfig, FallbackOn,
    HedgeConfig, HedgeDelayConfig, LoadMetric, MAX_ENDPOINTS, OutlierConfig,
};
pub(crate) use watch::refused_by_a_stack;
pub use watch::{ConfigWatcher, ReloadStatus, WatchBuilder};

use check::quietly;

/// The most downstreams one file may name.
pub const MAX_DOWNSTREAMS: usize = 1024;

/// A whole config file: named downstreams, inbound policies, metrics settings.
/// See the [module docs](self) for the format.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Each dependency by name (its `downstream` metric label: 1 to 64 ASCII
    /// letters, digits, `_`, `-`, `.`).
    pub downstreams: BTreeMap<String, DownstreamConfig>,
    /// The policies in front of this program's own handlers. Default: none.
    pub inbound: Option<InboundConfig>,
    /// Where and whether metrics are exposed.
    pub metrics: MetricsConfig,
}

/// One dependency's policies, each optional; they are stacked in the canonical
/// order (deadline → fallback/cache → retry + hedge → breaker → rate limit →
/// bulkhead/adaptive → per-attempt timeout → balance).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DownstreamConfig {
    /// Circuit breaker.
    pub breaker: Option<BreakerConfig>,
    /// Retries with backoff and a retry budget.
    pub retry: Option<RetryConfig>,
    /// Hedged requests (spending the retry budget).
    pub hedge: Option<HedgeConfig>,
    /// The timeout of each attempt, e.g. `"250ms"`.
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Deadline propagation and refusal of calls that cannot finish in time.
    pub deadline: Option<DeadlineConfig>,
    /// Rate limit.
    pub rate_limit: Option<RateLimitConfig>,
    /// Fixed concurrency limit.
    pub bulkhead: Option<BulkheadConfig>,
    /// Adaptive concurrency limit; not together with `bulkhead`.
    pub adaptive: Option<AdaptiveLimitConfig>,
    /// Client-side throttling.
    pub throttle: Option<ThrottleConfig>,
    /// Load balancing over discovered endpoints.
    pub balance: Option<BalanceConfig>,
    /// Stale-if-error cache.
    pub cache: Option<CacheConfig>,
    /// When the fallback answers.
    pub fallback: Option<FallbackConfig>,
}

impl DownstreamConfig {
    /// Checks every section with its layer's validator; the error's field path
    /// starts at the section (`breaker.failure_rate_threshold`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn section<T>(
            name: &'static str,
            c: &Option<T>,
            check: impl FnOnce(&T) -> Result<(), ConfigError>,
        ) -> Result<(), ConfigError> {
            match c {
                Some(c) => check(c).map_err(|e| e.within(name)),
                None => Ok(()),
            }
        }
        section("breaker", &self.breaker, BreakerConfig::validate)?;
        section("retry", &self.retry, RetryConfig::validate)?;
        section("hedge", &self.hedge, HedgeConfig::validate)?;
        if let Some(timeout) = self.timeout {
            quietly(|| TimeoutLayer::new("config", timeout))?;
        }
        section("deadline", &self.deadline, DeadlineConfig::validate)?;
        section("rate_limit", &self.rate_limit, RateLimitConfig::validate)?;
        section("bulkhead", &self.bulkhead, BulkheadConfig::validate)?;
        section("adaptive", &self.adaptive, AdaptiveLimitConfig::validate)?;
        if self.bulkhead.is_some() && self.adaptive.is_some() {
            return Err(ConfigError::new(
                "adaptive",
                "cannot be set together with bulkhead; choose one concurrency limit",
            ));
        }
        section("throttle", &self.throttle, ThrottleConfig::validate)?;
        section("balance", &self.balance, BalanceConfig::validate)?;
        section("cache", &self.cache, CacheConfig::validate)?;
        section("fallback", &self.fallback, FallbackConfig::validate)?;
        Ok(())
    }
}

/// Where and whether Palisade's metrics are exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Whether layers record metrics. Default true.
    pub enabled: bool,
    /// Serve Prometheus' `/metrics` on this address, e.g. `"127.0.0.1:9000"`.
    /// Default: not served (render it from your own server instead).
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
        }
    }
}

impl Config {
    /// Loads, overrides from the process environment (`PALISADE__…`) and validates
    /// the file at `path`; the format follows the extension.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, ConfigFileError> {
        ConfigLoader::new().load(path)
    }

    /// Parses and validates `text` (no environment overrides); errors name the file
    /// `<inline>`.
    pub fn parse(text: &str, format: Format) -> Result<Config, ConfigFileError> {
        ConfigLoader::new()
            .without_env()
            .load_str(text, format, "<inline>")
    }

    /// Watches the file at `path`, reloading it when it changes; see
    /// [`ConfigWatcher`]. Needs a tokio runtime.
    pub fn watch(path: impl AsRef<Path>) -> Result<ConfigWatcher, ConfigFileError> {
        ConfigWatcher::builder(path).start()
    }

    /// Checks every section; the error's field path is the whole path from the top
    /// of the file (`downstreams.customer.breaker.failure_rate_threshold`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.downstreams.len() > MAX_DOWNSTREAMS {
            return Err(ConfigError::new(
                "downstreams",
                format!(
                    "{} downstreams are more than {MAX_DOWNSTREAMS}",
                    self.downstreams.len()
                ),
            ));
        }
        for (name, downstream) in &self.downstreams {
            let at = format!("downstreams.{name}");
            Name::new(name).map_err(|e| ConfigError::new(at.clone(), e.to_string()))?;
            downstream.validate().map_err(|e| e.within(&at))?;
        }
        if let Some(inbound) = &self.inbound {
            inbound.validate().map_err(|e| e.within("inbound"))?;
        }
        Ok(())
    }

    /// The downstream named `name`.
    pub fn downstream(&self, name: &str) -> Option<&DownstreamConfig> {
        self.downstreams.get(name)
    }
}
