use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use palisade_core::{ConfigError, Name};

use crate::config::{AbortKind, FaultConfig, RequestRule};
use crate::metrics::{FaultKind, FaultMetrics};

/// Sets and clears the faults of a [`FaultLayer`](crate::FaultLayer) at runtime.
/// Cheap to clone; every clone and every service of the layer see the same faults.
///
/// A change is atomic: each call sees either the whole old config or the whole new
/// one. Reading it on the call path is lock-free and does not allocate.
///
/// ```
/// use palisade_fault::{ErrorFault, FaultConfig, FaultLayer};
///
/// let layer = FaultLayer::http("inventory")?;
/// let handle = layer.handle();
/// assert!(!handle.is_active());
///
/// handle.set(FaultConfig { error: Some(ErrorFault::new(20.0, 503)), ..Default::default() })?;
/// assert!(handle.is_active());
/// assert_eq!(handle.config().error, Some(ErrorFault::new(20.0, 503)));
///
/// let bad = FaultConfig { error: Some(ErrorFault::new(20.0, 200)), ..Default::default() };
/// assert_eq!(handle.set(bad).unwrap_err().to_string(),
///     "error.status: 200 is not an error status (400..=599)");
/// assert!(handle.is_active(), "a refused config leaves the old one in force");
///
/// handle.clear();
/// assert!(!handle.is_active());
/// # Ok::<(), palisade_core::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct FaultHandle {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for FaultHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultHandle")
            .field("name", &self.shared.name)
            .field("config", &self.config())
            .finish()
    }
}

/// What every service and handle of one layer share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) name: Name,
    pub(crate) active: ArcSwapOption<Active>,
    pub(crate) metrics: FaultMetrics,
    /// Whether the layer's requests can be judged by a [`RequestRule`] (HTTP).
    pub(crate) request_rules: bool,
    /// Counts services made, so that seeded services draw different sequences.
    pub(crate) forks: AtomicU64,
}

/// A validated config, parsed for the call path.
#[derive(Debug)]
pub(crate) struct Active {
    config: FaultConfig,
    latency: Option<LatencyPlan>,
    /// Rolls below this abort.
    abort_below: f64,
    abort_kind: AbortKind,
    /// Rolls in `abort_below..error_below` fail with `error_status`.
    error_below: f64,
    error_status: u16,
    pub(crate) rule: Option<RequestRule>,
}

#[derive(Debug)]
struct LatencyPlan {
    percent: f64,
    min: Duration,
    /// Nanoseconds between the low and the high end of the range (0: fixed).
    span_nanos: u64,
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Forward,
    Error(u16),
    Abort(AbortKind),
}

impl Action {
    pub(crate) fn kind(self) -> Option<FaultKind> {
        match self {
            Action::Forward => None,
            Action::Error(_) => Some(FaultKind::Error),
            Action::Abort(_) => Some(FaultKind::Abort),
        }
    }
}

/// The faults chosen for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) delay: Option<Duration>,
    pub(crate) action: Action,
}

/// A roll in `0..100`.
#[inline]
fn roll(rng: &mut fastrand::Rng) -> f64 {
    rng.f64() * 100.0
}

impl Active {
    fn new(config: FaultConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let rule = config.matching.as_ref().map(|m| m.compile()).transpose()?;
        let latency = config.latency.as_ref().map(|l| LatencyPlan {
            percent: l.percent,
            min: l.delay,
            span_nanos: l.max.map_or(0, |max| {
                u64::try_from((max - l.delay).as_nanos()).unwrap_or(u64::MAX)
            }),
        });
        let abort_below = config.abort.as_ref().map_or(0.0, |a| a.percent);
        let abort_kind = config.abort.as_ref().map_or(AbortKind::Reset, |a| a.kind);
        let error_below = abort_below + config.error.as_ref().map_or(0.0, |e| e.percent);
        let error_status = config.error.as_ref().map_or(503, |e| e.status);
        Ok(Self {
            config,
            latency,
            abort_below,
            abort_kind,
            error_below,
            error_status,
            rule,
        })
    }

    /// Chooses this request's faults.
    #[inline]
    pub(crate) fn plan(&self, rng: &mut fastrand::Rng) -> Plan {
        let delay = match &self.latency {
            Some(l) if roll(rng) < l.percent => Some(if l.span_nanos == 0 {
                l.min
            } else {
                l.min + Duration::from_nanos(rng.u64(0..=l.span_nanos))
            }),
            _ => None,
        }
        .filter(|d| !d.is_zero());
        let action = if self.error_below > 0.0 {
            let r = roll(rng);
            if r < self.abort_below {
                Action::Abort(self.abort_kind)
            } else if r < self.error_below {
                Action::Error(self.error_status)
            } else {
                Action::Forward
            }
        } else {
            Action::Forward
        };
        Plan { delay, action }
    }
}

impl Shared {
    pub(crate) fn new(name: Name, request_rules: bool) -> Self {
        let metrics = FaultMetrics::register(&name);
        Self {
            name,
            active: ArcSwapOption::empty(),
            metrics,
            request_rules,
            forks: AtomicU64::new(0),
        }
    }

    pub(crate) fn rng(&self, seed: Option<u64>) -> fastrand::Rng {
        match seed {
            None => fastrand::Rng::new(),
            Some(seed) => {
                let fork = self.forks.fetch_add(1, Ordering::Relaxed);
                // Each service of a seeded layer draws its own, reproducible sequence.
                fastrand::Rng::with_seed(seed ^ fork.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            }
        }
    }
}

impl FaultHandle {
    /// The layer's name (the `downstream` label).
    pub fn name(&self) -> &Name {
        &self.shared.name
    }

    /// Validates `config` and puts it in force for every request from now on.
    /// An empty config clears the faults. A refused config leaves the current one in
    /// force; the error names the bad field.
    ///
    /// A `match` rule is refused (field `match`) by layers of non-HTTP services,
    /// which cannot judge it: use [`FaultLayer::matching`](crate::FaultLayer::matching)
    /// there.
    pub fn set(&self, config: FaultConfig) -> Result<(), ConfigError> {
        if config.matching.is_some() && !self.shared.request_rules {
            return Err(ConfigError::new(
                "match",
                "request rules apply to HTTP services only; this layer's services are not HTTP",
            ));
        }
        if config.is_empty() {
            config.validate()?;
            self.clear();
            return Ok(());
        }
        let active = Active::new(config)?;
        tracing::info!(downstream = %self.shared.name, config = ?active.config, "faults set");
        self.shared.active.store(Some(Arc::new(active)));
        Ok(())
    }

    /// Changes part of the faults in force, e.g.
    /// `handle.update(|c| c.error = None)`. The result is validated as by
    /// [`FaultHandle::set`].
    pub fn update(&self, change: impl FnOnce(&mut FaultConfig)) -> Result<(), ConfigError> {
        let mut config = self.config();
        change(&mut config);
        self.set(config)
    }

    /// Stops injecting faults.
    pub fn clear(&self) {
        if self.shared.active.swap(None).is_some() {
            tracing::info!(downstream = %self.shared.name, "faults cleared");
        }
    }

    /// The faults in force (an empty config when none are).
    pub fn config(&self) -> FaultConfig {
        self.shared
            .active
            .load()
            .as_ref()
            .map(|a| a.config.clone())
            .unwrap_or_default()
    }

    /// Whether any fault is in force.
    pub fn is_active(&self) -> bool {
        self.shared.active.load().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AbortFault, ErrorFault, LatencyFault};

    #[test]
    fn one_roll_splits_aborts_and_errors_exactly() {
        let active = Active::new(FaultConfig {
            error: Some(ErrorFault::new(30.0, 500)),
            abort: Some(AbortFault::new(10.0, AbortKind::Refused)),
            ..FaultConfig::default()
        })
        .unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        let (mut aborts, mut errors) = (0, 0);
        for _ in 0..10_000 {
            match active.plan(&mut rng).action {
                Action::Abort(AbortKind::Refused) => aborts += 1,
                Action::Error(500) => errors += 1,
                Action::Forward => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!((900..=1100).contains(&aborts), "aborts {aborts}");
        assert!((2800..=3200).contains(&errors), "errors {errors}");
    }

    #[test]
    fn uniform_delays_stay_in_range_and_spread() {
        let active = Active::new(FaultConfig {
            latency: Some(LatencyFault::uniform(
                100.0,
                Duration::from_millis(100),
                Duration::from_millis(300),
            )),
            ..FaultConfig::default()
        })
        .unwrap();
        let mut rng = fastrand::Rng::with_seed(1);
        let delays: Vec<Duration> = (0..2000)
            .map(|_| active.plan(&mut rng).delay.expect("every request delayed"))
            .collect();
        let min = *delays.iter().min().unwrap();
        let max = *delays.iter().max().unwrap();
        assert!(min >= Duration::from_millis(100) && max <= Duration::from_millis(300));
        assert!(min < Duration::from_millis(110) && max > Duration::from_millis(290));
        let below_mid = delays
            .iter()
            .filter(|d| **d < Duration::from_millis(200))
            .count();
        assert!((900..=1100).contains(&below_mid), "{below_mid}");
    }
}
