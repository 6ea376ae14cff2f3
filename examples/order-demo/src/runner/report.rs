//! The figures of a run, the tables and the markdown report.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use palisade::BoxError;

use super::{Options, Run, Sample, Scenario};
use crate::stack::Mode;

/// The figures of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Requests sent.
    pub offered: u64,
    /// Requests that succeeded.
    pub succeeded: u64,
    /// `succeeded / offered`.
    pub success_rate: f64,
    /// Successes per second over the whole run.
    pub goodput: f64,
    /// Median latency (from the intended send time; failures included).
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Calls sent toward the leaf ÷ requests offered.
    pub amplification: f64,
    /// Successes per second before the fault.
    pub goodput_before: f64,
    /// Successes per second while the fault lasted.
    pub goodput_during: f64,
    /// From the end of the fault to the start of the first full second whose
    /// goodput is back to 95% of the goodput before; `None` if that never happened
    /// within the run.
    pub recovery: Option<Duration>,
}

/// The step at which recovery windows are tried.
pub const RECOVERY_STEP: Duration = Duration::from_millis(100);
/// The length of a recovery window.
pub const RECOVERY_WINDOW: Duration = Duration::from_secs(1);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ok_between(samples: &[Sample], from: Duration, to: Duration) -> usize {
    samples
        .iter()
        .filter(|s| s.ok && s.at >= from && s.at < to)
        .count()
}

/// Computes the figures of `samples` (arrival order), whose fault lasted
/// `fault` within a run of `length`, with `leaf_calls` calls toward the leaf.
pub fn summarize(
    samples: &[Sample],
    fault: (Duration, Duration),
    length: Duration,
    leaf_calls: u64,
) -> Summary {
    let offered = samples.len() as u64;
    let succeeded = samples.iter().filter(|s| s.ok).count() as u64;
    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    latencies.sort_unstable();
    let secs = |d: Duration| d.as_secs_f64().max(1e-9);
    let goodput_before = ok_between(samples, Duration::ZERO, fault.0) as f64 / secs(fault.0);
    let goodput_during = ok_between(samples, fault.0, fault.1) as f64 / secs(fault.1 - fault.0);
    let mut recovery = None;
    let mut start = fault.1;
    // Without goodput before the fault there is nothing to recover to.
    while goodput_before > 0.0 && start + RECOVERY_WINDOW <= length {
        let goodput =
            ok_between(samples, start, start + RECOVERY_WINDOW) as f64 / secs(RECOVERY_WINDOW);
        if goodput >= 0.95 * goodput_before {
            recovery = Some(start - fault.1);
            break;
        }
        start += RECOVERY_STEP;
    }
    Summary {
        offered,
        succeeded,
        success_rate: if offered == 0 {
            0.0
        } else {
            succeeded as f64 / offered as f64
        },
        goodput: succeeded as f64 / secs(length),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        amplification: if offered == 0 {
            0.0
        } else {
            leaf_calls as f64 / offered as f64
        },
        goodput_before,
        goodput_during,
        recovery,
    }
}

/// A time series in buckets of `bucket`: (bucket start, goodput per second,
/// p99 latency in ms).
pub fn series(samples: &[Sample], length: Duration, bucket: Duration) -> Vec<(f64, f64, f64)> {
    let n = (length.as_secs_f64() / bucket.as_secs_f64()).ceil() as usize;
    let mut buckets: Vec<(u64, Vec<Duration>)> = vec![(0, Vec::new()); n.max(1)];
    for s in samples {
        let i = ((s.at.as_secs_f64() / bucket.as_secs_f64()) as usize).min(buckets.len() - 1);
        if s.ok {
            buckets[i].0 += 1;
        }
        buckets[i].1.push(s.latency);
    }
    buckets
        .into_iter()
        .enumerate()
        .map(|(i, (ok, mut lat))| {
            lat.sort_unstable();
            (
                i as f64 * bucket.as_secs_f64(),
                ok as f64 / bucket.as_secs_f64(),
                percentile(&lat, 0.99).as_secs_f64() * 1000.0,
            )
        })
        .collect()
}

fn recovery_text(r: Option<Duration>) -> String {
    match r {
        Some(d) => format!("{:.1} s", d.as_secs_f64()),
        None => "not within the run".to_owned(),
    }
}

/// The table of one scenario's runs, as markdown.
pub fn table(scenario: Scenario, runs: &[&Run]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### {} — {}\n",
        scenario.name(),
        scenario.description()
    );
    let _ = writeln!(
        out,
        "| mode | offered | success | goodput | goodput in fault | p50 | p99 | leaf amplification ({}) | time to recover | orders placed / failed / unsettled / violations |",
        scenario.leaf()
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for run in runs {
        let s = &run.summary;
        let _ = writeln!(
            out,
            "| {} | {} | {:.1}% | {:.1}/s | {:.1}/s | {:.0} ms | {:.0} ms | {:.2}x | {} | {} / {} / {} / {} |",
            run.mode.as_str(),
            s.offered,
            s.success_rate * 100.0,
            s.goodput,
            s.goodput_during,
            s.p50.as_secs_f64() * 1000.0,
            s.p99.as_secs_f64() * 1000.0,
            s.amplification,
            recovery_text(s.recovery),
            run.consistency.completed,
            run.consistency.failed,
            run.consistency.unsettled,
            run.consistency.violations.len() + run.lost.len(),
        );
    }
    out
}

/// Every scenario's table, in run order.
pub fn tables(runs: &[Run]) -> String {
    let mut out = String::new();
    for scenario in Scenario::ALL {
        let of: Vec<&Run> = runs.iter().filter(|r| r.scenario == scenario).collect();
        if !of.is_empty() {
            out.push_str(&table(scenario, &of));
            out.push('\n');
        }
    }
    out
}

/// Creates a new numbered folder `run-NNN` under `base`.
pub fn results_folder(base: &Path) -> Result<PathBuf, BoxError> {
    std::fs::create_dir_all(base)?;
    for n in 1..10_000 {
        let folder = base.join(format!("run-{n:03}"));
        match std::fs::create_dir(&folder) {
            Ok(()) => return Ok(folder.canonicalize().unwrap_or(folder)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(format!("no free run-NNN folder under {}", base.display()).into())
}

/// Writes `report.md` into `folder`.
pub fn write(folder: &Path, runs: &[Run], options: &Options) -> Result<(), BoxError> {
    let p = &options.profile;
    let mut out = String::new();
    let _ = writeln!(out, "# Order demo: Palisade against plain clients\n");
    let _ = writeln!(
        out,
        "Open-loop load of {:.0} requests/s (latency from the intended send time), seed {}. \
         Each run: {:.1} s healthy, the fault for {:.1} s ({:.1} s for the overload spike, at {:.0} requests/s \
         = 10x the capacity of {:.0} payments/s), then {:.1} s after. The load generator gives up after {:.1} s \
         and sends that as the request's deadline. Goodput counts successful requests per second; leaf \
         amplification is calls sent toward the named service (attempts, refused connections included) \
         divided by requests offered; time to recover runs from the end of the fault to the first full \
         second whose goodput is back to 95% of the goodput before the fault. Every figure is measured; \
         each run's requests are in `<scenario>-<mode>.csv` (intended send time, latency, status).\n",
        p.rate,
        options.seed,
        p.before.as_secs_f64(),
        p.fault.as_secs_f64(),
        p.spike.as_secs_f64(),
        10.0 * p.capacity(),
        p.capacity(),
        p.after.as_secs_f64(),
        p.client_timeout.as_secs_f64(),
    );
    for scenario in Scenario::ALL {
        let of: Vec<&Run> = runs.iter().filter(|r| r.scenario == scenario).collect();
        if of.is_empty() {
            continue;
        }
        out.push_str(&table(scenario, &of));
        if cfg!(feature = "charts") {
            let _ = writeln!(out, "\n![{0}]({0}.png)\n", scenario.name());
        }
        for run in &of {
            for v in run.consistency.violations.iter().chain(&run.lost).take(5) {
                let _ = writeln!(out, "- {} {}: {v}", scenario.name(), run.mode.as_str());
            }
        }
    }
    let _ = writeln!(
        out,
        "Charts: goodput (top) and p99 latency (bottom) per 250 ms of intended send time; \
         {} in blue, {} in red; the fault window is shaded.",
        Mode::Palisade.as_str(),
        Mode::Plain.as_str()
    );
    std::fs::write(folder.join("report.md"), out)?;
    for run in runs {
        let mut csv = String::from("at_ms,latency_ms,status,ok,kind\n");
        for s in &run.samples {
            let _ = writeln!(
                csv,
                "{:.1},{:.1},{},{},{:?}",
                s.at.as_secs_f64() * 1000.0,
                s.latency.as_secs_f64() * 1000.0,
                s.status,
                s.ok,
                s.kind
            );
        }
        std::fs::write(
            folder.join(format!("{}-{}.csv", run.scenario.name(), run.mode.as_str())),
            csv,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_answered_before_the_fault_gives_no_time_to_recover() {
        // An empty run: no goodput before the fault, so nothing to recover to (it
        // read 0.0 s, as if recovered at once).
        let s = summarize(
            &[],
            (Duration::from_secs(2), Duration::from_secs(4)),
            Duration::from_secs(10),
            0,
        );
        assert_eq!(s.recovery, None);
    }
}
