//! Stacks built from a configuration section, and live stacks following it, on
//! paused time: policies added and removed while running, state kept where the
//! policy stays (an open breaker stays open), calls in flight unaffected, bad
//! updates refused whole, and a watched file driving it all.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade::breaker::State;
use palisade::config::{
    ChangeKind, ConfigLoader, ConfigWatcher, DownstreamConfig, Format, Section,
};
use palisade::core::RejectionKind;
use palisade::{Config, Downstream, Error};
use tokio::sync::oneshot;
use tower::{Layer, Service, ServiceExt};

fn section(toml: &str) -> DownstreamConfig {
    let config = Config::parse(&format!("[downstreams.d]\n{toml}"), Format::Toml).unwrap();
    config.downstreams["d"].clone()
}

/// Answers `Ok(n)` for odd `n`, fails even ones; counts the calls that reach it.
/// A call for `HELD` waits for the value sent on `hold`, if one was set.
#[derive(Clone, Default)]
struct Endpoint {
    calls: Arc<AtomicU32>,
    hold: Arc<Mutex<Option<oneshot::Receiver<u32>>>>,
}

const HELD: u32 = 1001;

impl Service<u32> for Endpoint {
    type Response = u32;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<u32, std::io::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, n: u32) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let held = if n == HELD {
            self.hold.lock().unwrap().take()
        } else {
            None
        };
        Box::pin(async move {
            match held {
                Some(wait) => Ok(wait.await.unwrap()),
                None if n % 2 == 1 => Ok(n),
                None => Err(std::io::Error::other("even")),
            }
        })
    }
}

impl Endpoint {
    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Two failing calls: enough to open the breaker of [`BREAKER`].
async fn open_the_breaker<S: Service<u32, Response = u32, Error = Error>>(svc: &mut S) {
    for n in [2, 4] {
        svc.ready().await.unwrap().call(n).await.unwrap_err();
    }
}

fn kind(e: &Error) -> Option<RejectionKind> {
    e.rejection().map(|r| r.kind())
}

const BREAKER: &str = r#"
[downstreams.d.breaker]
minimum_calls = 2
failure_rate_threshold = 0.5
wait_in_open = "30s"
wait_jitter = 0.0
window = { kind = "count", size = 10 }
"#;

#[tokio::test(start_paused = true)]
async fn a_configured_stack_has_exactly_the_sections_set() {
    let d = section(&format!(
        "timeout = \"100ms\"\nrate_limit = {{ rate = 100 }}\nbulkhead = {{ max_concurrent = 4 }}\n{BREAKER}"
    ));
    let downstream = Downstream::builder("d")
        .configured(&d)
        .unwrap()
        .build()
        .unwrap();
    let handle = downstream.handle();
    assert!(handle.breaker().is_some());
    assert!(handle.rate_limit().is_some());
    assert!(handle.bulkhead().is_some());
    assert!(handle.adaptive_limit().is_none());
    assert!(handle.retry_budget().is_none());
    assert!(handle.throttle().is_none());

    let endpoint = Endpoint::default();
    let mut svc = downstream.layer(endpoint.clone());
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 1);
    // One failure in two calls reaches the threshold: the breaker opens, and the
    // next call is refused without reaching the endpoint.
    svc.ready().await.unwrap().call(2).await.unwrap_err();
    assert_eq!(handle.breaker().unwrap().state(), State::Open);
    let e = svc.ready().await.unwrap().call(3).await.unwrap_err();
    assert_eq!(kind(&e), Some(RejectionKind::CircuitOpen));
    assert_eq!(endpoint.calls(), 2);
}

#[test]
fn a_bad_section_is_refused_with_its_field() {
    let mut d = section("timeout = \"1s\"");
    d.adaptive = Some(Default::default());
    d.bulkhead = Some(Default::default());
    let e = Downstream::builder("d").configured(&d).unwrap_err();
    assert_eq!(
        e.to_string(),
        "adaptive: cannot be set together with bulkhead; choose one concurrency limit"
    );
}

#[tokio::test(start_paused = true)]
async fn an_added_policy_rebuilds_the_stack_and_an_open_breaker_stays_open() {
    let endpoint = Endpoint::default();
    let (mut svc, live) = Downstream::builder("d")
        .live(&section(BREAKER), endpoint.clone())
        .unwrap();
    open_the_breaker(&mut svc).await;
    let breaker = live.handle().breaker().unwrap().clone();
    assert_eq!(breaker.state(), State::Open);

    // A retry and a timeout added: the stack is rebuilt around the same breaker.
    let v2 = section(&format!(
        "timeout = \"1s\"\nretry = {{ max_attempts = 3 }}\n{BREAKER}"
    ));
    let updated = live.update(&v2).unwrap();
    let mut rebuilt: Vec<_> = updated
        .rebuilt
        .iter()
        .map(|c| (c.section, c.kind))
        .collect();
    rebuilt.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(
        rebuilt,
        [
            (Section::Retry, ChangeKind::Added),
            (Section::Timeout, ChangeKind::Added)
        ]
    );
    assert!(updated.retuned.is_empty());
    assert_eq!(live.config(), v2);
    assert!(live.handle().retry_budget().is_some());
    assert_eq!(live.handle().breaker().unwrap().state(), State::Open);

    // The clone picks up the new stack: still open, refused, and the new retry
    // does not retry a refusal from an open circuit.
    let before = endpoint.calls();
    let balance = live.handle().retry_budget().unwrap().balance();
    let e = svc.ready().await.unwrap().call(3).await.unwrap_err();
    assert_eq!(kind(&e), Some(RejectionKind::CircuitOpen));
    assert_eq!(endpoint.calls(), before);
    assert_eq!(
        live.handle().retry_budget().unwrap().balance(),
        balance,
        "an open circuit is never retried"
    );

    // Negative control: once the breaker lets calls through again, the new retry
    // layer is there — a failing call is sent again; its second failure opens the
    // breaker, and the third attempt is refused unsent.
    breaker.reset();
    let before = endpoint.calls();
    let e = svc.ready().await.unwrap().call(6).await.unwrap_err();
    assert_eq!(endpoint.calls() - before, 2);
    assert_eq!(kind(&e), Some(RejectionKind::CircuitOpen));
}

#[tokio::test(start_paused = true)]
async fn a_removed_policy_is_gone_from_the_next_call() {
    let endpoint = Endpoint::default();
    let (mut svc, live) = Downstream::builder("d")
        .live(&section(BREAKER), endpoint.clone())
        .unwrap();
    open_the_breaker(&mut svc).await;
    let e = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(kind(&e), Some(RejectionKind::CircuitOpen));

    let updated = live.update(&section("timeout = \"1s\"")).unwrap();
    assert!(
        updated
            .rebuilt
            .iter()
            .any(|c| c.section == Section::Breaker && c.kind == ChangeKind::Removed)
    );
    assert!(live.handle().breaker().is_none());
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 1);
    // A clone made before the update moves too.
    let mut other = svc.clone();
    assert_eq!(other.ready().await.unwrap().call(5).await.unwrap(), 5);
}

#[tokio::test(start_paused = true)]
async fn thresholds_are_retuned_in_place_without_a_rebuild() {
    let (mut svc, live) = Downstream::builder("d")
        .live(&section(BREAKER), Endpoint::default())
        .unwrap();
    let breaker = live.handle().breaker().unwrap().clone();
    open_the_breaker(&mut svc).await;
    let updated = live
        .update(&section(&BREAKER.replace("0.5", "0.9")))
        .unwrap();
    assert_eq!(updated.retuned, [Section::Breaker]);
    assert!(updated.rebuilt.is_empty());
    assert_eq!(breaker.config().failure_rate_threshold, 0.9);
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_call_in_flight_finishes_on_the_stack_it_started_on() {
    let (release, wait) = oneshot::channel::<u32>();
    let endpoint = Endpoint::default();
    *endpoint.hold.lock().unwrap() = Some(wait);
    let (mut svc, live) = Downstream::builder("d")
        .live(&section("timeout = \"10s\""), endpoint)
        .unwrap();
    let call = svc.ready().await.unwrap().call(HELD);
    let call = tokio::spawn(call);
    tokio::task::yield_now().await;

    // The per-try timeout is cut to 1 s, and a breaker added (a rebuilt stack):
    // the call in flight keeps its 10 s.
    let updated = live
        .update(&section(&format!("timeout = \"1s\"\n{BREAKER}")))
        .unwrap();
    assert_eq!(updated.retuned, [Section::Timeout]);
    assert_eq!(updated.rebuilt[0].section, Section::Breaker);
    assert_eq!(svc.ready().await.unwrap().call(3).await.unwrap(), 3);
    tokio::time::advance(Duration::from_secs(5)).await;
    release.send(42).unwrap();
    assert_eq!(call.await.unwrap().unwrap(), 42);
}

#[tokio::test(start_paused = true)]
async fn an_invalid_update_changes_nothing() {
    let (_svc, live) = Downstream::builder("d")
        .live(&section(BREAKER), Endpoint::default())
        .unwrap();
    let mut bad = section(&format!("timeout = \"1s\"\n{BREAKER}"));
    bad.breaker.as_mut().unwrap().failure_rate_threshold = 1.5;
    let e = live.update(&bad).unwrap_err();
    assert_eq!(
        e.to_string(),
        "breaker.failure_rate_threshold: 1.5 is not within 0..=1"
    );
    assert_eq!(live.config(), section(BREAKER));
    assert_eq!(
        live.handle()
            .breaker()
            .unwrap()
            .config()
            .failure_rate_threshold,
        0.5
    );
}

#[tokio::test(start_paused = true)]
async fn a_bulkhead_can_become_an_adaptive_limit() {
    let (mut svc, live) = Downstream::builder("d")
        .live(
            &section("bulkhead = { max_concurrent = 2 }"),
            Endpoint::default(),
        )
        .unwrap();
    let updated = live
        .update(&section("adaptive = { max_limit = 50 }"))
        .unwrap();
    assert_eq!(updated.rebuilt.len(), 2);
    assert!(live.handle().bulkhead().is_none());
    assert!(live.handle().adaptive_limit().is_some());
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hedge_added_later_spends_the_kept_retry_budget() {
    let with_hedge = section("retry = { max_attempts = 2 }\nhedge = { max_hedges = 1 }");
    let built = Downstream::builder("d")
        .configured(&with_hedge)
        .unwrap()
        .build()
        .unwrap();
    assert!(built.handle().retry_budget().is_some());

    let (mut svc, live) = Downstream::builder("d")
        .live(
            &section("retry = { max_attempts = 2 }"),
            Endpoint::default(),
        )
        .unwrap();
    let budget = Arc::clone(live.handle().retry_budget().unwrap());
    let updated = live.update(&with_hedge).unwrap();
    assert_eq!(
        (updated.rebuilt[0].section, updated.rebuilt[0].kind),
        (Section::Hedge, ChangeKind::Added)
    );
    // The retry (and so its budget, which the new hedge spends) was kept.
    assert!(Arc::ptr_eq(live.handle().retry_budget().unwrap(), &budget));
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 1);

    // A changed retry is built anew, with a new budget, and the hedge with it.
    let updated = live
        .update(&section(
            "retry = { max_attempts = 3 }\nhedge = { max_hedges = 1 }",
        ))
        .unwrap();
    assert_eq!(updated.rebuilt[0].section, Section::Retry);
    assert!(!Arc::ptr_eq(live.handle().retry_budget().unwrap(), &budget));
    assert_eq!(svc.ready().await.unwrap().call(3).await.unwrap(), 3);

    // The retry removed: the hedge is built anew with a budget of its own, as a
    // fresh build of the same section has, not left spending the removed retry's
    // budget that nothing refills any more.
    let hedge_only = section("hedge = { max_hedges = 1 }");
    let fresh = Downstream::builder("d")
        .configured(&hedge_only)
        .unwrap()
        .build()
        .unwrap();
    assert!(
        fresh.handle().retry_budget().is_some(),
        "a fresh hedge's own budget"
    );
    let retry_budget = Arc::clone(live.handle().retry_budget().unwrap());
    live.update(&hedge_only).unwrap();
    let handle = live.handle();
    let own = handle.retry_budget().expect("the hedge's own budget");
    assert!(!Arc::ptr_eq(own, &retry_budget));
    assert_eq!(svc.ready().await.unwrap().call(5).await.unwrap(), 5);
}

#[tokio::test(start_paused = true)]
async fn sections_that_need_code_are_reported_not_followed() {
    let (_svc, live) = Downstream::builder("d")
        .live(&section("timeout = \"1s\""), Endpoint::default())
        .unwrap();
    let updated = live
        .update(&section(
            "timeout = \"1s\"\nfallback = { on = [\"failure\"] }",
        ))
        .unwrap();
    assert_eq!(updated.not_followed.len(), 1);
    assert_eq!(updated.not_followed[0].section, Section::Fallback);
    assert!(updated.rebuilt.is_empty());
}

/// A fresh directory for one test's file, removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_watched_file_drives_the_live_stack() {
    let dir = TempDir(std::env::temp_dir().join(format!("palisade-live-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).unwrap();
    let path = dir.0.join("palisade.toml");
    let write = |text: &str| {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    write("[downstreams.d]\ntimeout = \"1s\"\n");
    let recorder = palisade::prometheus::builder().unwrap().build_recorder();
    let metrics = recorder.handle();
    let refused = || {
        let text = metrics.render();
        text.lines()
            .find_map(|l| l.strip_prefix("palisade_config_reload_errors_total "))
            .map_or(0.0, |v| v.trim().parse::<f64>().unwrap())
    };
    let watcher = metrics::with_local_recorder(&recorder, || {
        ConfigWatcher::builder(&path)
            .interval(Duration::from_secs(1))
            .loader(ConfigLoader::new().without_env())
            .start()
            .unwrap()
    });
    let (mut svc, live) = Downstream::builder("d")
        .live(&watcher.current().downstreams["d"], Endpoint::default())
        .unwrap();
    let follow = metrics::with_local_recorder(&recorder, || live.follow(watcher.subscribe()));

    write(&format!("[downstreams.d]\ntimeout = \"1s\"\n{BREAKER}"));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(live.handle().breaker().is_some());
    open_the_breaker(&mut svc).await;
    let e = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(kind(&e), Some(RejectionKind::CircuitOpen));

    // An invalid file keeps the running stack (the watcher refuses it).
    write("[downstreams.d]\ntimeout = \"0s\"\n");
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(live.handle().breaker().is_some());
    assert_eq!(refused(), 1.0);

    // The breaker removed from the file: calls go through again.
    write("[downstreams.d]\ntimeout = \"1s\"\n");
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(live.handle().breaker().is_none());
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 1);

    // A file without this downstream's section keeps the running stack.
    let running = live.config();
    write("[downstreams.other]\ntimeout = \"1s\"\n");
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(watcher.current().downstreams.contains_key("other"));
    assert_eq!(live.config(), running);
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 1);
    // The watcher took the file; the stack did not follow it, and says so where an
    // alert on refused reloads looks.
    assert_eq!(refused(), 2.0);

    // The task ends with the watcher.
    drop(watcher);
    follow.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_new_breaker_window_gets_a_new_breaker() {
    let (mut svc, live) = Downstream::builder("d")
        .live(&section(BREAKER), Endpoint::default())
        .unwrap();
    svc.ready().await.unwrap().call(2).await.unwrap_err();
    svc.ready().await.unwrap().call(4).await.unwrap_err();
    assert_eq!(live.handle().breaker().unwrap().state(), State::Open);

    // A breaker cannot change its window while running: the stack gets a new one.
    let updated = live
        .update(&section(&BREAKER.replace("size = 10", "size = 20")))
        .unwrap();
    assert_eq!(
        (updated.rebuilt[0].section, updated.rebuilt[0].kind),
        (Section::Breaker, ChangeKind::Changed)
    );
    assert_eq!(live.handle().breaker().unwrap().state(), State::Closed);
    assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_update_whose_stack_cannot_be_built_changes_nothing() {
    // The section's deadline settings stand in for the builder's, which are
    // invalid on their own (min_remaining below the default margin).
    let v1 = section("timeout = \"1s\"\ndeadline = { margin = \"1ms\", min_remaining = \"3ms\" }");
    let (_svc, live) = Downstream::builder("d")
        .min_remaining(Duration::from_millis(2))
        .live(&v1, Endpoint::default())
        .unwrap();
    // Removing the deadline section falls back to the builder's settings, which
    // cannot build; the timeout change in the same update is not applied either.
    let e = live.update(&section("timeout = \"2s\"")).unwrap_err();
    assert!(e.to_string().starts_with("deadline.min_remaining: "), "{e}");
    assert_eq!(live.config(), v1);
    assert_eq!(
        live.handle().timeout().unwrap().timeout(),
        Duration::from_secs(1)
    );
    // A deadline change that builds is followed (a rebuilt stack).
    let updated = live
        .update(&section(
            "timeout = \"1s\"\ndeadline = { margin = \"1ms\", min_remaining = \"5ms\" }",
        ))
        .unwrap();
    assert_eq!(updated.rebuilt[0].section, Section::Deadline);
}
