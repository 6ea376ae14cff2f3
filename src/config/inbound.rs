//! Inbound (server-side) policies: keyed rate limit, load shedding, adaptive
//! concurrency and the deadline taken from callers.

use std::fmt;
use std::time::Duration;

use palisade_core::{ConfigError, Name};
use palisade_limit::adaptive::AdaptiveLimitConfig;
use palisade_limit::rate::{RateLimitConfig, RateLimitLayer};
use palisade_limit::shed::LoadShedLayer;
use palisade_timeout::deadline::InboundDeadlineLayer;
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::check::quietly;

/// Where a keyed rate limit takes a request's key from.
///
/// Written `"peer"` or `{ header = "x-api-key" }` (the same shape in TOML and YAML).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum KeySource {
    /// The caller's IP address: `key = "peer"`. The default.
    #[default]
    Peer,
    /// A request header, e.g. an API key: `key = { header = "x-api-key" }`.
    /// Requests without it share one key.
    Header(String),
}

impl Serialize for KeySource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            KeySource::Peer => s.serialize_str("peer"),
            KeySource::Header(name) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("header", name)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for KeySource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = KeySource;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"peer\" or { header = \"<name>\" }")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeySource, E> {
                match v {
                    "peer" => Ok(KeySource::Peer),
                    other => Err(E::custom(format!(
                        "unknown key source `{other}`, expected \"peer\" or {{ header = \"<name>\" }}"
                    ))),
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeySource, A::Error> {
                let mut header = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "header" {
                        return Err(de::Error::unknown_field(&key, &["header"]));
                    }
                    if header.is_some() {
                        return Err(de::Error::duplicate_field("header"));
                    }
                    header = Some(map.next_value::<String>()?);
                }
                header
                    .map(KeySource::Header)
                    .ok_or_else(|| de::Error::missing_field("header"))
            }
        }

        d.deserialize_any(KeyVisitor)
    }
}

/// A rate limit per caller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyedRateLimitConfig {
    /// Where the key comes from. Default: the peer address.
    pub key: KeySource,
    /// The limit each key gets.
    pub limit: RateLimitConfig,
    /// The most keys held at once; the least recently used go first. Default 10000.
    pub max_keys: usize,
    /// A key unused this long is forgotten. Default 10 min.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for KeyedRateLimitConfig {
    fn default() -> Self {
        Self {
            key: KeySource::Peer,
            limit: RateLimitConfig::default(),
            max_keys: 10_000,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

impl KeyedRateLimitConfig {
    /// Checks the settings with the rate limit layer's builder.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let KeySource::Header(name) = &self.key
            && http::HeaderName::from_bytes(name.as_bytes()).is_err()
        {
            return Err(ConfigError::new(
                "key.header",
                format!("{name:?} is not a valid header name"),
            ));
        }
        quietly(|| {
            RateLimitLayer::builder("config")
                .config(self.limit)
                .build_keyed((), self.max_keys, self.idle_timeout)
        })
        .map_err(|e| match e.field() {
            "keys.capacity" => ConfigError::new("max_keys", e.problem().to_owned()),
            "keys.idle_timeout" => ConfigError::new("idle_timeout", e.problem().to_owned()),
            _ => e.within("limit"),
        })
    }
}

/// Load shedding of inbound requests by criticality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShedConfig {
    /// Requests in flight at which `default` requests are shed (sheddable ones at
    /// 80% of it, critical ones at 125%). Default 100. With `adaptive` set, the
    /// adaptive limit is used instead.
    pub max_in_flight: usize,
    /// Shed when the handler has not been ready for this long. Default: off.
    #[serde(with = "humantime_serde")]
    pub queue_target: Option<Duration>,
    /// The `Retry-After` sent with a shed answer. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
}

impl Default for ShedConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 100,
            queue_target: None,
            retry_after: Duration::from_secs(1),
        }
    }
}

impl ShedConfig {
    /// Checks the settings with the load shed layer's builder.
    pub fn validate(&self) -> Result<(), ConfigError> {
        quietly(|| {
            let mut b = LoadShedLayer::builder("config")
                .max_in_flight(self.max_in_flight)
                .retry_after(self.retry_after);
            if let Some(target) = self.queue_target {
                b = b.queue_target(target);
            }
            b.build()
        })
    }
}

/// The deadline a server gives each request, from the caller's header, capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundDeadlineConfig {
    /// The most time a request is given, whatever its caller asked (required).
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// The time given to a request without a deadline header. Default: `max`.
    #[serde(default, with = "humantime_serde")]
    pub default_timeout: Option<Duration>,
}

impl InboundDeadlineConfig {
    /// Checks the settings with the inbound deadline layer's builder.
    pub fn validate(&self) -> Result<(), ConfigError> {
        quietly(|| {
            InboundDeadlineLayer::builder("config")
                .max(self.max)
                .default_timeout(self.default_timeout)
                .build()
        })
    }
}

/// The policies in front of a server's handlers, outermost first:
/// keyed rate limit → load shed / adaptive limit → deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InboundConfig {
    /// The server's name: the `downstream` label of its metrics. Default `inbound`.
    pub name: String,
    /// A rate limit per caller. Default: off.
    pub rate_limit: Option<KeyedRateLimitConfig>,
    /// Load shedding. Default: off.
    pub shed: Option<ShedConfig>,
    /// An adaptive concurrency limit (use `rejection = "shed"`). Default: off.
    pub adaptive: Option<AdaptiveLimitConfig>,
    /// The deadline taken from the caller's headers. Default: off.
    pub deadline: Option<InboundDeadlineConfig>,
}

impl Default for InboundConfig {
    fn default() -> Self {
        Self {
            name: "inbound".to_owned(),
            rate_limit: None,
            shed: None,
            adaptive: None,
            deadline: None,
        }
    }
}

impl InboundConfig {
    /// Checks every section; the error's field path starts at the section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        Name::new(&self.name).map_err(|e| ConfigError::new("name", e.to_string()))?;
        if let Some(c) = &self.rate_limit {
            c.validate().map_err(|e| e.within("rate_limit"))?;
        }
        if let Some(c) = &self.shed {
            c.validate().map_err(|e| e.within("shed"))?;
        }
        if let Some(c) = &self.adaptive {
            c.validate().map_err(|e| e.within("adaptive"))?;
        }
        if let Some(c) = &self.deadline {
            c.validate().map_err(|e| e.within("deadline"))?;
        }
        Ok(())
    }
}
