//! The fault-injection runner: open-loop load against a fresh all-in-one system,
//! one scenario at a time, with Palisade's stacks and with plain clients.
//!
//! Each run starts a new [`System`] (fresh stores), drives load at a fixed arrival
//! rate for the scenario's length, injects the scenario's fault in the middle
//! window, then lets outstanding compensations settle and checks the stores.
//! Latency is measured from each request's intended send time, so a generator or
//! a system that falls behind shows up as latency rather than being hidden.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use palisade::BoxError;

use crate::faults::{FaultConfig, presets};
use crate::services::{GatewayLimits, PaymentCapacity};
use crate::stack::Mode;
use crate::system::{Consistency, System, SystemConfig};

#[cfg(feature = "charts")]
pub mod charts;
pub mod load;
pub mod report;

pub use load::{Kind, Progress, Sample};
pub use report::Summary;

/// The scenario names, as `demo_scenario_active` labels them.
pub const SCENARIO_NAMES: [&str; 7] = [
    "baseline",
    "inventory_errors",
    "inventory_replica_dead",
    "payment_latency",
    "catalog_outage",
    "customer_outage",
    "overload_spike",
];

/// A scenario of injected faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    /// No fault.
    Baseline,
    /// 20% of inventory requests answer 503.
    InventoryErrors,
    /// One of the three inventory replicas is down (connections refused).
    InventoryReplicaDead,
    /// 30% of payment requests take 2.5 s longer.
    PaymentLatency,
    /// Both catalog replicas are down; prices come from the stale cache.
    CatalogOutage,
    /// customer is down, then recovers.
    CustomerOutage,
    /// Arrivals at 10× the system's capacity.
    OverloadSpike,
}

impl Scenario {
    /// Every scenario, in run order.
    pub const ALL: [Scenario; 7] = [
        Scenario::Baseline,
        Scenario::InventoryErrors,
        Scenario::InventoryReplicaDead,
        Scenario::PaymentLatency,
        Scenario::CatalogOutage,
        Scenario::CustomerOutage,
        Scenario::OverloadSpike,
    ];

    /// The name (the `scenario` label).
    pub const fn name(self) -> &'static str {
        SCENARIO_NAMES[self as usize]
    }

    /// The scenario called `name`.
    pub fn from_name(name: &str) -> Option<Scenario> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// What the fault is, in words.
    pub const fn description(self) -> &'static str {
        match self {
            Scenario::Baseline => "no fault: the healthy reference",
            Scenario::InventoryErrors => "20% of inventory requests answer 503 (all 3 replicas)",
            Scenario::InventoryReplicaDead => {
                "inventory replica 2 of 3 is down (connections refused)"
            }
            Scenario::PaymentLatency => "30% of payment requests take 2.5 s longer",
            Scenario::CatalogOutage => {
                "both catalog replicas are down; half the load is customer overviews"
            }
            Scenario::CustomerOutage => "customer is down, then comes back",
            Scenario::OverloadSpike => "arrivals jump to 10x the system's capacity",
        }
    }

    /// The service whose incoming calls measure amplification: the faulted one
    /// (payment, the bottleneck, for the overload; customer for the baseline).
    pub const fn leaf(self) -> &'static str {
        match self {
            Scenario::Baseline | Scenario::CustomerOutage => "customer",
            Scenario::InventoryErrors | Scenario::InventoryReplicaDead => "inventory",
            Scenario::PaymentLatency | Scenario::OverloadSpike => "payment",
            Scenario::CatalogOutage => "catalog",
        }
    }

    /// The share of arrivals that are customer overviews (the rest place orders).
    pub const fn overview_share(self) -> f64 {
        match self {
            Scenario::CatalogOutage => 0.5,
            _ => 0.0,
        }
    }

    async fn inject(self, system: &System) -> Result<(), BoxError> {
        match self {
            Scenario::Baseline | Scenario::OverloadSpike => Ok(()),
            Scenario::InventoryErrors => {
                system.set_faults("inventory", presets::errors(20.0)).await
            }
            Scenario::InventoryReplicaDead => {
                system.set_down("inventory", Some(1), true);
                Ok(())
            }
            Scenario::PaymentLatency => {
                system
                    .set_faults(
                        "payment",
                        presets::latency(30.0, Duration::from_millis(2500)),
                    )
                    .await
            }
            Scenario::CatalogOutage => {
                system.set_down("catalog", None, true);
                Ok(())
            }
            Scenario::CustomerOutage => {
                system.set_down("customer", None, true);
                Ok(())
            }
        }
    }

    async fn clear(self, system: &System) -> Result<(), BoxError> {
        match self {
            Scenario::Baseline | Scenario::OverloadSpike => Ok(()),
            Scenario::InventoryErrors => {
                system.set_faults("inventory", FaultConfig::default()).await
            }
            Scenario::InventoryReplicaDead => {
                system.set_down("inventory", Some(1), false);
                Ok(())
            }
            Scenario::PaymentLatency => system.set_faults("payment", FaultConfig::default()).await,
            Scenario::CatalogOutage => {
                system.set_down("catalog", None, false);
                Ok(())
            }
            Scenario::CustomerOutage => {
                system.set_down("customer", None, false);
                Ok(())
            }
        }
    }
}

/// Rates and lengths of a run.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Arrivals per second outside the overload spike.
    pub rate: f64,
    /// Healthy time before the fault.
    pub before: Duration,
    /// How long the fault lasts.
    pub fault: Duration,
    /// How long the overload spike lasts.
    pub spike: Duration,
    /// Time after the fault.
    pub after: Duration,
    /// Payments processed at once.
    pub payment_workers: usize,
    /// Time to process one payment.
    pub payment_time: Duration,
    /// How long the load generator waits for an answer (also the deadline it sends).
    pub client_timeout: Duration,
    /// Requests the generator keeps in flight at most; beyond, it gives up at once.
    pub max_in_flight: usize,
    /// How long outstanding compensations may take to settle after the load.
    pub settle: Duration,
}

impl Profile {
    /// The full run: about 10 s per scenario and mode, under 3 minutes in all.
    pub fn full() -> Self {
        Self {
            rate: 30.0,
            before: Duration::from_millis(2500),
            fault: Duration::from_secs(4),
            spike: Duration::from_secs(5),
            after: Duration::from_secs(3),
            payment_workers: 2,
            payment_time: Duration::from_millis(40),
            client_timeout: Duration::from_secs(2),
            max_in_flight: 1500,
            settle: Duration::from_secs(4),
        }
    }

    /// A short run (about 6 s per scenario and mode; the spike lasts 2 s).
    pub fn quick() -> Self {
        Self {
            before: Duration::from_millis(1500),
            fault: Duration::from_secs(2),
            spike: Duration::from_secs(2),
            after: Duration::from_millis(2500),
            ..Self::full()
        }
    }

    /// The profile of the test suite: a smaller system (capacity 25 payments/s) at
    /// 20 requests/s, so a debug build on two cores keeps up; the spike lasts 2 s.
    pub fn test() -> Self {
        Self {
            rate: 20.0,
            payment_workers: 1,
            ..Self::quick()
        }
    }

    /// Payments per second the system can take.
    pub fn capacity(&self) -> f64 {
        PaymentCapacity::per_second(self.payment_workers, self.payment_time)
    }

    /// The fault's length in `scenario`.
    pub fn fault_len(&self, scenario: Scenario) -> Duration {
        if scenario == Scenario::OverloadSpike {
            self.spike
        } else {
            self.fault
        }
    }

    /// The whole run's length in `scenario`.
    pub fn total(&self, scenario: Scenario) -> Duration {
        self.before + self.fault_len(scenario) + self.after
    }

    /// The system settings for a run in `mode`.
    pub fn system_config(&self, mode: Mode, seed: u64) -> SystemConfig {
        let capacity = self.capacity();
        SystemConfig {
            mode,
            seed,
            payment_workers: self.payment_workers,
            payment_time: self.payment_time,
            gateway: GatewayLimits {
                // Each of the 4 clients may use a quarter of the capacity, plus headroom.
                per_client_rate: ((capacity * 1.25) / 4.0).ceil().max(1.0) as u32,
                max_in_flight: 64,
            },
            concurrency_limit: None,
            admin_token: format!("demo-admin-{seed:x}"),
        }
    }
}

/// One run of one scenario in one mode.
#[derive(Debug, Clone)]
pub struct Run {
    /// The scenario.
    pub scenario: Scenario,
    /// The mode.
    pub mode: Mode,
    /// Every request, in arrival order.
    pub samples: Vec<Sample>,
    /// When the fault began and ended, from the start of the load.
    pub fault_window: (Duration, Duration),
    /// The run's length.
    pub length: Duration,
    /// Calls sent toward the scenario's leaf service during the load.
    pub leaf_calls: u64,
    /// What the stores said after settling.
    pub consistency: Consistency,
    /// Orders the gateway accepted (201) that the store does not hold as completed.
    pub lost: Vec<String>,
    /// The figures.
    pub summary: Summary,
}

/// Runs `scenario` in `mode` on a fresh system.
pub async fn run_scenario(
    scenario: Scenario,
    mode: Mode,
    profile: &Profile,
    seed: u64,
) -> Result<Run, BoxError> {
    run_with_progress(scenario, mode, profile, seed, Arc::new(Progress::default())).await
}

/// [`run_scenario`], reporting to `progress`.
pub async fn run_with_progress(
    scenario: Scenario,
    mode: Mode,
    profile: &Profile,
    seed: u64,
    progress: Arc<Progress>,
) -> Result<Run, BoxError> {
    let system = System::start(profile.system_config(mode, seed)).await?;
    crate::obs::set_scenario_active(scenario.name(), mode.as_str(), true);
    let result = drive(&system, scenario, mode, profile, seed, progress).await;
    crate::obs::set_scenario_active(scenario.name(), mode.as_str(), false);
    system.shutdown();
    result
}

async fn drive(
    system: &System,
    scenario: Scenario,
    mode: Mode,
    profile: &Profile,
    seed: u64,
    progress: Arc<Progress>,
) -> Result<Run, BoxError> {
    let fault_start = profile.before;
    let fault_end = profile.before + profile.fault_len(scenario);
    let length = profile.total(scenario);
    let spike_rate = 10.0 * profile.capacity();
    let schedule = load::schedule(&load::Shape {
        rate: profile.rate,
        length,
        spike: (scenario == Scenario::OverloadSpike).then_some((
            fault_start,
            fault_end,
            spike_rate,
        )),
        overview_share: scenario.overview_share(),
        seed,
    });
    let leaf_before = system.registry().attempts(scenario.leaf());
    let start = tokio::time::Instant::now();
    let faults = async {
        tokio::time::sleep_until(start + fault_start).await;
        scenario.inject(system).await?;
        tokio::time::sleep_until(start + fault_end).await;
        scenario.clear(system).await
    };
    let tag = format!("{}-{}-{seed}", scenario.name(), mode.as_str());
    let generator = load::generate(
        system.gateway(),
        &schedule,
        &tag,
        start,
        profile.client_timeout,
        profile.max_in_flight,
        progress,
    );
    let (fault_result, samples) = tokio::join!(faults, generator);
    fault_result?;
    let leaf_calls = system.registry().attempts(scenario.leaf()) - leaf_before;
    system.settle(profile.settle).await;
    let consistency = system.check()?;
    let lost = lost_orders(system, &samples)?;
    let summary = report::summarize(&samples, (fault_start, fault_end), length, leaf_calls);
    Ok(Run {
        scenario,
        mode,
        samples,
        fault_window: (fault_start, fault_end),
        length,
        leaf_calls,
        consistency,
        lost,
        summary,
    })
}

/// Orders answered 201 that the order store does not hold as completed.
fn lost_orders(system: &System, samples: &[Sample]) -> Result<Vec<String>, BoxError> {
    let orders: std::collections::HashMap<String, String> =
        crate::services::order::all_orders(&system.stores().order)?
            .into_iter()
            .collect();
    Ok(samples
        .iter()
        .filter(|s| s.kind == Kind::Order && s.status == 201)
        .filter_map(|s| {
            let key = s.key.as_deref()?;
            (orders.get(key).map(String::as_str) != Some("completed")).then(|| key.to_owned())
        })
        .collect())
}

/// Options of a whole run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Rates and lengths.
    pub profile: Profile,
    /// The scenarios to run (both modes each).
    pub scenarios: Vec<Scenario>,
    /// Seeds the arrivals and the fault dice.
    pub seed: u64,
    /// Where the results folder is created.
    pub out: PathBuf,
    /// Print the progress line.
    pub progress: bool,
}

/// Runs every scenario in both modes, writes the report and (with the `charts`
/// feature, on by default) the charts into a new folder under `options.out`, and
/// returns the runs and that folder.
pub async fn run_all(options: &Options) -> Result<(Vec<Run>, PathBuf), BoxError> {
    let folder = report::results_folder(&options.out)?;
    let total = options.scenarios.len() * Mode::ALL.len();
    let mut runs = Vec::new();
    for (i, scenario) in options.scenarios.iter().enumerate() {
        for (j, mode) in Mode::ALL.into_iter().enumerate() {
            let progress = Arc::new(Progress::default());
            let ticker = options.progress.then(|| {
                load::spawn_progress_line(
                    progress.clone(),
                    format!(
                        "[{:>2}/{total}] {:<22} {:<8}",
                        i * 2 + j + 1,
                        scenario.name(),
                        mode.as_str()
                    ),
                    options.profile.total(*scenario),
                )
            });
            let run =
                run_with_progress(*scenario, mode, &options.profile, options.seed, progress).await;
            if let Some(t) = ticker {
                t.abort();
                eprint!("\r\x1b[2K");
            }
            let run = run?;
            if options.progress {
                eprintln!(
                    "[{:>2}/{total}] {:<22} {:<8} success {:>5.1}%  goodput {:>5.1}/s  p99 {:>6.0} ms",
                    i * 2 + j + 1,
                    scenario.name(),
                    mode.as_str(),
                    run.summary.success_rate * 100.0,
                    run.summary.goodput,
                    run.summary.p99.as_secs_f64() * 1000.0
                );
            }
            runs.push(run);
        }
    }
    report::write(&folder, &runs, options)?;
    #[cfg(feature = "charts")]
    charts::write_all(&folder, &runs)?;
    Ok((runs, folder))
}
