//! Property test: random sequences of call outcomes, latencies and time advances,
#![cfg(not(feature = "loom"))]
//! run through the real breaker on paused time and through a small reference model
//! written from the documented rules. Every response and every state must agree.

use std::collections::VecDeque;
use std::time::Duration;

use palisade_breaker::{BreakerHandle, CircuitBreakerLayer, State};
use palisade_core::{FailureReason, Outcome, classify_fn};
use proptest::prelude::*;
use tower::{Layer, Service, ServiceExt};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Success,
    Failure,
    Ignored,
}

#[derive(Debug, Clone)]
enum Op {
    Call { kind: Kind, latency_ms: u64 },
    Advance { ms: u64 },
}

#[derive(Debug, Clone)]
struct Settings {
    size: u32,
    minimum: u32,
    threshold: f64,
    slow: Option<(u64, f64)>,
    consecutive: Option<u32>,
    probes_needed: u32,
}

const WAIT_MS: u64 = 1_000;
const MULTIPLIER: u64 = 2;
const MAX_WAIT_MS: u64 = 4_000;

#[derive(Debug, PartialEq)]
enum Response {
    Ok,
    Failed,
    Rejected(Option<Duration>),
}

/// The documented rules, written plainly.
struct Model {
    s: Settings,
    state: State,
    window: VecDeque<(bool, bool)>,
    consecutive: u32,
    trips: u32,
    open_until_ms: u64,
    successes: u32,
}

impl Model {
    fn new(s: Settings) -> Self {
        Self {
            s,
            state: State::Closed,
            window: VecDeque::new(),
            consecutive: 0,
            trips: 0,
            open_until_ms: 0,
            successes: 0,
        }
    }

    fn tick(&mut self, now: u64) {
        if self.state == State::Open && now >= self.open_until_ms {
            self.state = State::HalfOpen;
            self.successes = 0;
        }
    }

    fn open(&mut self, now: u64) {
        self.trips += 1;
        let wait = (WAIT_MS * MULTIPLIER.pow(self.trips - 1)).min(MAX_WAIT_MS);
        self.open_until_ms = now + wait;
        self.state = State::Open;
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.window.clear();
        self.consecutive = 0;
        self.trips = 0;
    }

    fn call(&mut self, start: u64, kind: Kind, latency: u64) -> Response {
        self.tick(start);
        if self.state == State::Open {
            return Response::Rejected(Some(Duration::from_millis(self.open_until_ms - start)));
        }
        let end = start + latency;
        let slow = self.s.slow.is_some_and(|(d, _)| latency >= d);
        let failure = kind == Kind::Failure;
        let bad = failure || slow;
        let response = if failure || kind == Kind::Ignored {
            Response::Failed
        } else {
            Response::Ok
        };
        if self.state == State::HalfOpen {
            if kind == Kind::Ignored && !slow {
            } else if bad {
                self.open(end);
            } else {
                self.successes += 1;
                if self.successes >= self.s.probes_needed {
                    self.close();
                }
            }
            return response;
        }
        if kind == Kind::Ignored {
            return response;
        }
        self.window.push_back((failure, slow));
        if self.window.len() > self.s.size as usize {
            self.window.pop_front();
        }
        self.consecutive = if failure { self.consecutive + 1 } else { 0 };
        let n = self.window.len();
        if !bad && n != self.s.minimum as usize {
            return response;
        }
        let fr = self.window.iter().filter(|w| w.0).count() as f64 / n as f64;
        let sr = self.window.iter().filter(|w| w.1).count() as f64 / n as f64;
        let trip = self.s.consecutive.is_some_and(|c| self.consecutive >= c)
            || (n >= self.s.minimum as usize
                && (fr >= self.s.threshold || self.s.slow.is_some_and(|(_, t)| sr >= t)));
        if trip {
            self.open(end);
        }
        response
    }
}

fn settings() -> impl Strategy<Value = Settings> {
    (1u32..8)
        .prop_flat_map(|size| {
            (
                Just(size),
                1..=size,
                prop_oneof![Just(0.25), Just(0.5), Just(0.75), Just(1.0)],
                proptest::option::of((
                    prop_oneof![Just(50u64), Just(100)],
                    prop_oneof![Just(0.5), Just(1.0)],
                )),
                proptest::option::of(1u32..4),
                1u32..3,
            )
        })
        .prop_map(
            |(size, minimum, threshold, slow, consecutive, probes_needed)| Settings {
                size,
                minimum,
                threshold,
                slow,
                consecutive,
                probes_needed,
            },
        )
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let call = (
        prop_oneof![4 => Just(Kind::Success), 4 => Just(Kind::Failure), 1 => Just(Kind::Ignored)],
        prop_oneof![3 => Just(0u64), 1 => 0u64..150],
    )
        .prop_map(|(kind, latency_ms)| Op::Call { kind, latency_ms });
    let advance = (0u64..3_000).prop_map(|ms| Op::Advance { ms });
    proptest::collection::vec(prop_oneof![5 => call, 1 => advance], 1..80)
}

fn classify(r: Result<&(), &std::io::Error>) -> Outcome {
    match r {
        Ok(()) => Outcome::Success,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outcome::Ignored,
        Err(_) => Outcome::Failure(FailureReason::ERROR),
    }
}

async fn run_case(s: Settings, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut b = CircuitBreakerLayer::builder("model")
        .count_window(s.size)
        .minimum_calls(s.minimum)
        .failure_rate_threshold(s.threshold)
        .wait_in_open(Duration::from_millis(WAIT_MS))
        .wait_backoff(MULTIPLIER as f64, Duration::from_millis(MAX_WAIT_MS))
        .wait_jitter(0.0)
        .half_open_probes(1)
        .half_open_successes(s.probes_needed)
        .without_metrics();
    if let Some((d, rate)) = s.slow {
        b = b.slow_calls(Duration::from_millis(d), rate);
    }
    if let Some(c) = s.consecutive {
        b = b.consecutive_failures(c);
    }
    let layer = b.classify(classify_fn(classify)).build().unwrap();
    let handle: BreakerHandle = layer.handle();
    let mut svc = layer.layer(tower::service_fn(
        |(kind, latency): (Kind, u64)| async move {
            tokio::time::sleep(Duration::from_millis(latency)).await;
            match kind {
                Kind::Success => Ok(()),
                Kind::Failure => Err(std::io::Error::other("boom")),
                Kind::Ignored => Err(std::io::Error::new(std::io::ErrorKind::NotFound, "404")),
            }
        },
    ));
    let mut model = Model::new(s);
    let start = tokio::time::Instant::now();
    let now_ms = || start.elapsed().as_millis() as u64;
    for (i, op) in ops.into_iter().enumerate() {
        match op {
            Op::Advance { ms } => tokio::time::advance(Duration::from_millis(ms)).await,
            Op::Call { kind, latency_ms } => {
                let expected = model.call(now_ms(), kind, latency_ms);
                let got = match svc.ready().await.unwrap().call((kind, latency_ms)).await {
                    Ok(()) => Response::Ok,
                    Err(e) => match e.rejection() {
                        Some(r) => Response::Rejected(r.retry_after()),
                        None => Response::Failed,
                    },
                };
                prop_assert_eq!(got, expected, "response of op {}", i);
            }
        }
        model.tick(now_ms());
        prop_assert_eq!(handle.state(), model.state, "state after op {}", i);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn breaker_agrees_with_the_reference_model(s in settings(), ops in ops()) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(run_case(s, ops))?;
    }
}
