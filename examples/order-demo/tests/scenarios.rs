//! The scenarios' promises, checked on real loopback servers: every scenario runs
//! on a fresh all-in-one system with the test profile (short windows, a small
//! system), and the stores are checked after each run.
//!
//! The runs are shared by the tests below (computed once, in order), so the suite
//! stays short.

use std::time::Duration;

use order_demo::runner::{self, Profile, Run, Scenario};
use order_demo::stack::{BREAKER_OPEN_WAIT, Mode};
use tokio::sync::OnceCell;

const SEED: u64 = 7;

static RUNS: OnceCell<Vec<Run>> = OnceCell::const_new();

/// Every scenario with Palisade, and the outage and the spike without.
async fn runs() -> &'static [Run] {
    RUNS.get_or_init(|| async {
        let profile = Profile::test();
        let mut runs = Vec::new();
        for scenario in Scenario::ALL {
            runs.push(
                runner::run_scenario(scenario, Mode::Palisade, &profile, SEED)
                    .await
                    .unwrap_or_else(|e| panic!("{} with Palisade: {e}", scenario.name())),
            );
        }
        for scenario in [Scenario::CustomerOutage, Scenario::OverloadSpike] {
            runs.push(
                runner::run_scenario(scenario, Mode::Plain, &profile, SEED)
                    .await
                    .unwrap_or_else(|e| panic!("{} plain: {e}", scenario.name())),
            );
        }
        runs
    })
    .await
}

fn run(scenario: Scenario, mode: Mode) -> &'static Run {
    RUNS.get()
        .and_then(|runs| {
            runs.iter()
                .find(|r| r.scenario == scenario && r.mode == mode)
        })
        .unwrap_or_else(|| panic!("no run of {} in {}", scenario.name(), mode.as_str()))
}

/// Goodput (successes per second) of requests due in `from..to`.
fn goodput(run: &Run, from: Duration, to: Duration) -> f64 {
    let ok = run
        .samples
        .iter()
        .filter(|s| s.ok && s.at >= from && s.at < to)
        .count();
    ok as f64 / (to - from).as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_accepted_order_is_lost_or_left_half_done_in_any_scenario() {
    for run in runs().await {
        let label = format!("{} {}", run.scenario.name(), run.mode.as_str());
        assert!(
            run.lost.is_empty(),
            "{label}: accepted orders not completed: {:?}",
            run.lost
        );
        assert!(
            run.consistency.violations.is_empty(),
            "{label}: {:?}",
            run.consistency.violations
        );
        if run.mode == Mode::Palisade {
            assert_eq!(
                run.consistency.unsettled, 0,
                "{label}: orders left unsettled"
            );
        }
        // Something was placed in every run, and what failed was compensated.
        assert!(run.consistency.completed > 0, "{label}: no order completed");
        let accepted = run.samples.iter().filter(|s| s.status == 201).count() as u64;
        assert!(
            accepted <= run.consistency.completed,
            "{label}: {accepted} accepted, {} completed",
            run.consistency.completed
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_not_amplified_and_traffic_returns_within_the_open_wait() {
    runs().await;
    let palisade = run(Scenario::CustomerOutage, Mode::Palisade);
    let s = &palisade.summary;
    assert!(
        s.amplification <= 1.1,
        "calls toward customer ÷ requests offered = {:.2}",
        s.amplification
    );
    // The outage did bite: nothing succeeded while customer was down.
    assert!(s.goodput_during < 0.2 * s.goodput_before, "{s:?}");
    let limit = BREAKER_OPEN_WAIT + Duration::from_secs(1);
    let recovered = s
        .recovery
        .unwrap_or_else(|| panic!("customer traffic never came back: {s:?}"));
    assert!(
        recovered <= limit,
        "traffic came back {recovered:?} after recovery (limit {limit:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_overload_spike_palisade_recovers_within_two_seconds_and_plain_collapses() {
    runs().await;
    let palisade = run(Scenario::OverloadSpike, Mode::Palisade);
    let plain = run(Scenario::OverloadSpike, Mode::Plain);
    let (_, end) = palisade.fault_window;
    let s = &palisade.summary;
    let recovered = s
        .recovery
        .unwrap_or_else(|| panic!("Palisade never recovered: {s:?}"));
    assert!(
        recovered <= Duration::from_secs(2),
        "Palisade recovered after {recovered:?}: {s:?}"
    );
    // Without resilience the queue built during the spike starves what comes after.
    let after = end + Duration::from_secs(2);
    let plain_after = goodput(plain, end, after);
    assert!(
        plain_after < 0.5 * plain.summary.goodput_before,
        "plain kept {plain_after:.1}/s of {:.1}/s after the spike",
        plain.summary.goodput_before
    );
    assert!(goodput(palisade, end, after) > 2.0 * plain_after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_scenarios_keep_most_orders_with_palisade() {
    runs().await;
    // Retries over other replicas, and stale prices, hide these faults from users.
    for (scenario, floor) in [
        (Scenario::Baseline, 0.99),
        (Scenario::InventoryErrors, 0.95),
        (Scenario::InventoryReplicaDead, 0.95),
        (Scenario::CatalogOutage, 0.95),
    ] {
        let s = &run(scenario, Mode::Palisade).summary;
        assert!(
            s.success_rate >= floor,
            "{}: success {:.1}% below {:.0}%",
            scenario.name(),
            s.success_rate * 100.0,
            floor * 100.0
        );
    }
}
