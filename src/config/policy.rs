//! The policy settings that have no serde config in their layer crate: hedging and
//! outbound deadlines (whose layers take builder calls), load balancing, the
//! stale-if-error cache and fallback triggers.
//!
//! Where a layer crate has a builder, `validate` builds a throwaway layer with it (no
//! metrics recorded), so the layer's own rules decide and this module repeats none.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use palisade_core::{ConfigError, RejectionKind};
use palisade_retry::{HedgeDelay, HedgeLayer};
use palisade_timeout::deadline::OutboundDeadlineLayer;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::check::{positive, quietly, unit_interval};

// ---- hedge --------------------------------------------------------------------------

/// When a hedge is sent, as a file writes it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum HedgeDelayConfig {
    /// A fixed time after the first attempt: `{ kind = "fixed", after = "50ms" }`.
    Fixed {
        /// The delay, greater than zero.
        #[serde(with = "humantime_serde")]
        after: Duration,
    },
    /// A latency percentile the layer observes, but at least `min`:
    /// `{ kind = "percentile", percentile = 0.95, min = "5ms" }`.
    Percentile {
        /// The percentile, `0 < p < 1`.
        percentile: f64,
        /// The shortest delay. Default 1 ms.
        #[serde(with = "humantime_serde", default = "default_hedge_min")]
        min: Duration,
    },
}

fn default_hedge_min() -> Duration {
    Duration::from_millis(1)
}

impl Default for HedgeDelayConfig {
    fn default() -> Self {
        HedgeDelayConfig::Percentile {
            percentile: 0.95,
            min: default_hedge_min(),
        }
    }
}

impl From<HedgeDelayConfig> for HedgeDelay {
    fn from(c: HedgeDelayConfig) -> Self {
        match c {
            HedgeDelayConfig::Fixed { after } => HedgeDelay::Fixed(after),
            HedgeDelayConfig::Percentile { percentile, min } => {
                HedgeDelay::Percentile { percentile, min }
            }
        }
    }
}

/// Hedging settings for [`HedgeLayer`]: after `delay`, send up to `max_hedges`
/// copies of a slow call. Hedges spend the downstream's retry budget.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HedgeConfig {
    /// When to hedge. Default: the observed 95th percentile, at least 1 ms.
    pub delay: HedgeDelayConfig,
    /// Extra attempts per call, `1..=8`. Default 1.
    pub max_hedges: u32,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        Self {
            delay: HedgeDelayConfig::default(),
            max_hedges: 1,
        }
    }
}

impl HedgeConfig {
    /// Checks the settings with [`HedgeLayer`]'s builder; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        quietly(|| {
            HedgeLayer::builder("config")
                .delay(self.delay.into())
                .max_hedges(self.max_hedges)
                .without_metrics()
                .build()
        })
    }
}

// ---- outbound deadline ---------------------------------------------------------------

/// Outbound deadline settings for
/// [`OutboundDeadlineLayer`]: what share of the time left is sent on,
/// and how little time left is not worth a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeadlineConfig {
    /// Subtracted from the time left before it is sent downstream. Default 5 ms.
    #[serde(with = "humantime_serde")]
    pub margin: Duration,
    /// A call with less than this left is refused before it is sent; more than
    /// `margin`. Default 10 ms.
    #[serde(with = "humantime_serde")]
    pub min_remaining: Duration,
}

impl Default for DeadlineConfig {
    fn default() -> Self {
        Self {
            margin: OutboundDeadlineLayer::DEFAULT_MARGIN,
            min_remaining: OutboundDeadlineLayer::DEFAULT_MIN_REMAINING,
        }
    }
}

impl DeadlineConfig {
    /// Checks the settings with [`OutboundDeadlineLayer`]'s builder.
    pub fn validate(&self) -> Result<(), ConfigError> {
        quietly(|| {
            OutboundDeadlineLayer::builder("config")
                .margin(self.margin)
                .min_remaining(self.min_remaining)
                .build()
        })
    }
}

// ---- balance ----------------------------------------------------------------------

/// The most endpoints a static list or an etcd cluster list may name (the same
/// bound a discovery source holds).
pub use palisade_balance::discover::MAX_ENDPOINTS;

/// Where a balancer learns its endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum DiscoveryConfig {
    /// A fixed list of `host:port` endpoints.
    Static {
        /// The endpoints, `host:port`, 1 to 1024 of them.
        endpoints: Vec<String>,
    },
    /// A file listing one `host:port` per line, re-read when it changes.
    File {
        /// The file's path.
        path: PathBuf,
    },
    /// The addresses a DNS name resolves to, re-resolved as their TTL runs out.
    Dns {
        /// `host:port` to resolve.
        name: String,
        /// Re-resolve no sooner than this, whatever the TTL. Default 1 s.
        #[serde(with = "humantime_serde", default = "default_min_ttl")]
        min_ttl: Duration,
        /// Re-resolve at least this often, whatever the TTL. Default 5 min.
        #[serde(with = "humantime_serde", default = "default_max_ttl")]
        max_ttl: Duration,
    },
    /// Endpoints registered under a key prefix in etcd.
    Etcd {
        /// The etcd cluster, `host:port` each.
        endpoints: Vec<String>,
        /// The key prefix endpoints register under, e.g. `/services/customer/`.
        prefix: String,
    },
}

fn default_min_ttl() -> Duration {
    Duration::from_secs(1)
}

fn default_max_ttl() -> Duration {
    Duration::from_secs(300)
}

/// How the balancer compares endpoints when it picks the better of two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadMetric {
    /// Peak-EWMA of latency, weighted by calls in flight. The default.
    #[default]
    PeakEwma,
    /// Calls in flight.
    Pending,
}

/// Outlier ejection: an endpoint that fails too often is taken out of rotation for
/// a while, longer each time it is ejected again.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutlierConfig {
    /// Eject after this many failures in a row. Default 5; 0 turns this detector
    /// off, to judge by `failure_rate` only.
    pub consecutive_failures: u32,
    /// Eject when failures ÷ calls reach this, `0..=1`. Default: off.
    pub failure_rate: Option<f64>,
    /// The first ejection's length. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub base_ejection: Duration,
    /// The longest ejection. Default 5 min.
    #[serde(with = "humantime_serde")]
    pub max_ejection: Duration,
    /// At most this share of the endpoints is ejected at once, `0..=100`.
    /// Default 50.
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: None,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

impl OutlierConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(rate) = self.failure_rate {
            unit_interval("failure_rate", rate)?;
        }
        if self.consecutive_failures == 0 && self.failure_rate.is_none() {
            return Err(ConfigError::new(
                "consecutive_failures",
                "is 0 (off) and failure_rate is unset, so no endpoint could ever be ejected",
            ));
        }
        positive("base_ejection", self.base_ejection)?;
        if self.max_ejection < self.base_ejection {
            return Err(ConfigError::new(
                "max_ejection",
                format!(
                    "{:?} is shorter than base_ejection ({:?})",
                    self.max_ejection, self.base_ejection
                ),
            ));
        }
        if self.max_ejection_percent > 100 {
            return Err(ConfigError::new(
                "max_ejection_percent",
                format!("{} is not within 0..=100", self.max_ejection_percent),
            ));
        }
        Ok(())
    }
}

/// Load balancing over discovered endpoints: power of two choices by `load`, with
/// outlier ejection and slow start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalanceConfig {
    /// Where the endpoints come from (required).
    pub discovery: DiscoveryConfig,
    /// How endpoints are compared. Default `peak_ewma`.
    #[serde(default)]
    pub load: LoadMetric,
    /// Outlier ejection. Default: off.
    #[serde(default)]
    pub outlier: Option<OutlierConfig>,
    /// A new (or returning) endpoint's share of traffic ramps up over this long.
    /// Default: off.
    #[serde(default, with = "humantime_serde")]
    pub slow_start: Option<Duration>,
}

impl BalanceConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match &self.discovery {
            DiscoveryConfig::Static { endpoints } => {
                endpoint_list("discovery.endpoints", endpoints)?;
            }
            DiscoveryConfig::File { path } => {
                if path.as_os_str().is_empty() {
                    return Err(ConfigError::new("discovery.path", "must not be empty"));
                }
            }
            DiscoveryConfig::Dns {
                name,
                min_ttl,
                max_ttl,
            } => {
                host_port("discovery.name", name)?;
                positive("discovery.min_ttl", *min_ttl)?;
                if max_ttl < min_ttl {
                    return Err(ConfigError::new(
                        "discovery.max_ttl",
                        format!("{max_ttl:?} is shorter than min_ttl ({min_ttl:?})"),
                    ));
                }
            }
            DiscoveryConfig::Etcd { endpoints, prefix } => {
                endpoint_list("discovery.endpoints", endpoints)?;
                if prefix.is_empty() {
                    return Err(ConfigError::new("discovery.prefix", "must not be empty"));
                }
            }
        }
        if let Some(outlier) = &self.outlier {
            outlier.validate().map_err(|e| e.within("outlier"))?;
        }
        if let Some(d) = self.slow_start {
            positive("slow_start", d).map_err(|_| {
                ConfigError::new(
                    "slow_start",
                    "must be greater than zero (leave it unset to turn slow start off)",
                )
            })?;
        }
        Ok(())
    }
}

fn endpoint_list(field: &'static str, endpoints: &[String]) -> Result<(), ConfigError> {
    if endpoints.is_empty() {
        return Err(ConfigError::new(field, "must name at least one endpoint"));
    }
    if endpoints.len() > MAX_ENDPOINTS {
        return Err(ConfigError::new(
            field,
            format!(
                "{} endpoints are more than {MAX_ENDPOINTS}",
                endpoints.len()
            ),
        ));
    }
    for (i, e) in endpoints.iter().enumerate() {
        host_port("", e)
            .map_err(|err| ConfigError::new(format!("{field}[{i}]"), err.problem().to_owned()))?;
    }
    Ok(())
}

/// `host:port`, with a non-empty host and a port in `1..=65535` (`[v6]:port` too).
fn host_port(field: &'static str, s: &str) -> Result<(), ConfigError> {
    let bad = || ConfigError::new(field, format!("{s:?} is not host:port"));
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && !host.chars().any(|c| c.is_whitespace() || c == '/')
        && (!host.contains(':') || (host.starts_with('[') && host.ends_with(']')));
    match port.parse::<u16>() {
        Ok(p) if p > 0 && host_ok => Ok(()),
        _ => Err(bad()),
    }
}

// ---- cache and fallback ---------------------------------------------------------------

/// A local cache of the downstream's answers: served while fresh (if
/// `serve_fresh_from_cache`), and served stale, within `max_stale`, when the
/// downstream fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// An answer is fresh for this long after it was received. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub fresh_ttl: Duration,
    /// After it went stale, an answer may still be served on failure for this
    /// long. Default 5 min.
    #[serde(with = "humantime_serde")]
    pub max_stale: Duration,
    /// The cache holds answers up to this many bytes in all, `>= 1`. Default 64 MiB.
    pub max_weight_bytes: u64,
    /// Answer from the cache while an entry is fresh, without calling the
    /// downstream. Default false: the cache is only read when a call fails.
    pub serve_fresh_from_cache: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            fresh_ttl: Duration::from_secs(30),
            max_stale: Duration::from_secs(300),
            max_weight_bytes: 64 * 1024 * 1024,
            serve_fresh_from_cache: false,
        }
    }
}

impl CacheConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_weight_bytes == 0 {
            return Err(ConfigError::new("max_weight_bytes", "must be at least 1"));
        }
        if self.serve_fresh_from_cache && self.fresh_ttl.is_zero() {
            return Err(ConfigError::new(
                "fresh_ttl",
                "must be greater than zero when serve_fresh_from_cache is true",
            ));
        }
        if !self.serve_fresh_from_cache && self.fresh_ttl.is_zero() && self.max_stale.is_zero() {
            return Err(ConfigError::new(
                "max_stale",
                "must be greater than zero when fresh_ttl is zero, or the cache would never be read",
            ));
        }
        Ok(())
    }
}

/// What makes the fallback (or the cache) answer instead of the downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FallbackOn {
    /// The downstream itself failed (its error, or an answer classified as a
    /// failure): `"failure"`.
    Failure,
    /// Any refusal by Palisade: `"rejected"`.
    Rejected,
    /// One kind of refusal, by its word: `"circuit_open"`, `"timeout"`, ….
    Rejection(RejectionKind),
}

impl FallbackOn {
    /// The word in files.
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackOn::Failure => "failure",
            FallbackOn::Rejected => "rejected",
            FallbackOn::Rejection(kind) => kind.as_str(),
        }
    }

    /// Whether a call that was refused with `kind` (or failed, for `None`) triggers
    /// this.
    pub fn matches(self, rejection: Option<RejectionKind>) -> bool {
        match (self, rejection) {
            (FallbackOn::Failure, None) => true,
            (FallbackOn::Rejected, Some(_)) => true,
            (FallbackOn::Rejection(k), Some(r)) => k == r,
            _ => false,
        }
    }
}

impl fmt::Display for FallbackOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for FallbackOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FallbackOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let word = String::deserialize(d)?;
        match word.as_str() {
            "failure" => Ok(FallbackOn::Failure),
            "rejected" => Ok(FallbackOn::Rejected),
            w => RejectionKind::ALL
                .into_iter()
                .find(|k| k.as_str() == w)
                .map(FallbackOn::Rejection)
                .ok_or_else(|| {
                    let kinds: Vec<&str> = RejectionKind::ALL.iter().map(|k| k.as_str()).collect();
                    serde::de::Error::custom(format!(
                        "unknown fallback trigger `{w}`, expected `failure`, `rejected` or one of {}",
                        kinds.join(", ")
                    ))
                }),
        }
    }
}

/// When the downstream's fallback answers instead of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FallbackConfig {
    /// The triggers: `failure`, `rejected` (any refusal) or a refusal's word
    /// (`circuit_open`, `rate_limited`, `bulkhead_full`, `timeout`,
    /// `deadline_exceeded`, `budget_exhausted`, `shed`, `no_endpoints`).
    /// Default `["failure", "rejected"]`.
    pub on: Vec<FallbackOn>,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        Self {
            on: vec![FallbackOn::Failure, FallbackOn::Rejected],
        }
    }
}

impl FallbackConfig {
    /// Checks the triggers: at least one, none twice.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.on.is_empty() {
            return Err(ConfigError::new(
                "on",
                "must name at least one trigger (remove the fallback section to turn it off)",
            ));
        }
        for (i, t) in self.on.iter().enumerate() {
            if self.on[..i].contains(t) {
                return Err(ConfigError::new(
                    format!("on[{i}]"),
                    format!("`{t}` is listed twice"),
                ));
            }
        }
        Ok(())
    }

    /// Whether a call refused with `rejection` (or failed, for `None`) triggers the
    /// fallback.
    pub fn triggers(&self, rejection: Option<RejectionKind>) -> bool {
        self.on.iter().any(|t| t.matches(rejection))
    }
}
