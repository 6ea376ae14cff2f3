//! Hot reload on paused time: a valid change is published, an invalid one keeps the
//! running config and is counted, a deleted file keeps it too and is picked up again
//! once restored.
#![cfg(feature = "prometheus")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use palisade::Config;
use palisade::config::{ChangeKind, ConfigLoader, ConfigWatcher, ReloadStatus, Section};
use tokio::sync::watch;

const INTERVAL: Duration = Duration::from_secs(1);

/// A fresh directory for one test's file, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("palisade-config-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes atomically, as the docs recommend: a temporary file renamed over the old.
fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn breaker_threshold(config: &Config) -> f64 {
    config.downstreams["customer"]
        .breaker
        .as_ref()
        .unwrap()
        .failure_rate_threshold
}

fn doc(threshold: f64) -> String {
    format!(
        "[downstreams.customer]\ntimeout = \"1s\"\n[downstreams.customer.breaker]\nfailure_rate_threshold = {threshold}\n"
    )
}

/// The value of the series `name` in the Prometheus text.
fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no series {name} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Lets the watcher poll `n` times.
async fn polls(n: u32) {
    for _ in 0..n {
        tokio::time::sleep(INTERVAL).await;
    }
    // The poll due at the last instant runs before we look.
    tokio::task::yield_now().await;
}

async fn next_status(status: &mut watch::Receiver<ReloadStatus>) -> ReloadStatus {
    status.changed().await.unwrap();
    status.borrow_and_update().clone()
}

fn start(path: &Path) -> ConfigWatcher {
    ConfigWatcher::builder(path)
        .interval(INTERVAL)
        .loader(ConfigLoader::new().without_env())
        .start()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_valid_change_is_published() {
    let dir = TempDir::new("valid");
    let path = dir.file("palisade.toml");
    write(&path, &doc(0.5));
    let watcher = start(&path);
    let mut updates = watcher.subscribe();
    assert_eq!(breaker_threshold(&watcher.current()), 0.5);

    // Nothing changes: nothing is published.
    polls(3).await;
    assert!(!updates.has_changed().unwrap());

    write(&path, &doc(0.25));
    updates.changed().await.unwrap();
    let new: Arc<Config> = updates.borrow_and_update().clone();
    assert_eq!(breaker_threshold(&new), 0.25);
    assert_eq!(breaker_threshold(&watcher.current()), 0.25);
    assert_eq!(watcher.status().reloads, 1);
    assert_eq!(watcher.status().errors, 0);

    // What changed, for the code that applies it.
    let old = Config::parse(&doc(0.5), palisade::config::Format::Toml).unwrap();
    let diff = old.diff(&new);
    assert_eq!(diff.changed.len(), 1);
    assert_eq!(diff.changed[0].name, "customer");
    assert_eq!(diff.sections_of("customer")[0].section, Section::Breaker);
    assert_eq!(diff.sections_of("customer")[0].kind, ChangeKind::Changed);

    // A change of comments only is loaded but publishes nothing new.
    write(&path, &format!("# tuned\n{}", doc(0.25)));
    polls(2).await;
    assert_eq!(watcher.status().reloads, 2);
    assert!(!updates.has_changed().unwrap());
}

#[tokio::test(start_paused = true)]
async fn an_invalid_change_keeps_the_running_config_and_is_counted() {
    let dir = TempDir::new("invalid");
    let path = dir.file("palisade.toml");
    write(&path, &doc(0.5));
    let recorder = palisade::prometheus::builder().unwrap().build_recorder();
    let metrics = recorder.handle();
    let watcher = metrics::with_local_recorder(&recorder, || start(&path));
    let mut updates = watcher.subscribe();
    let mut status = watcher.subscribe_status();

    let text = metrics.render();
    assert_eq!(series(&text, "palisade_config_reloads_total"), 0.0);
    assert_eq!(series(&text, "palisade_config_reload_errors_total"), 0.0);
    let started = series(
        &text,
        "palisade_config_last_reload_success_timestamp_seconds",
    );
    assert!(started > 1.0e9, "a Unix time, not {started}");

    write(&path, &doc(1.5));
    let s = next_status(&mut status).await;
    assert_eq!(s.errors, 1);
    assert_eq!(s.reloads, 0);
    assert_eq!(
        s.last_error.unwrap().to_string(),
        format!(
            "{}: downstreams.customer.breaker.failure_rate_threshold: 1.5 is not within 0..=1",
            path.display()
        )
    );
    assert_eq!(breaker_threshold(&watcher.current()), 0.5);
    assert!(!updates.has_changed().unwrap());
    assert_eq!(
        series(&metrics.render(), "palisade_config_reload_errors_total"),
        1.0
    );

    // The same bad file is not counted again on every poll.
    polls(5).await;
    assert_eq!(watcher.status().errors, 1);

    // A syntax error is refused the same way.
    write(&path, "[downstreams.customer\n");
    let s = next_status(&mut status).await;
    assert_eq!(s.errors, 2);
    assert_eq!(
        s.last_error.unwrap().to_string(),
        format!("{}:1:22: unclosed table, expected `]`", path.display())
    );

    // Fixed: published, counted, the error cleared.
    write(&path, &doc(0.4));
    updates.changed().await.unwrap();
    assert_eq!(breaker_threshold(&updates.borrow_and_update()), 0.4);
    let s = watcher.status();
    assert_eq!((s.reloads, s.errors), (1, 2));
    assert!(s.last_error.is_none());
    let text = metrics.render();
    assert_eq!(series(&text, "palisade_config_reloads_total"), 1.0);
    assert_eq!(series(&text, "palisade_config_reload_errors_total"), 2.0);
}

#[tokio::test(start_paused = true)]
async fn a_deleted_file_keeps_the_config_until_it_is_restored() {
    let dir = TempDir::new("deleted");
    let path = dir.file("palisade.yaml");
    write(
        &path,
        "downstreams:\n  customer:\n    breaker: { failure_rate_threshold: 0.5 }\n",
    );
    let watcher = start(&path);
    let mut updates = watcher.subscribe();
    let mut status = watcher.subscribe_status();

    std::fs::remove_file(&path).unwrap();
    let s = next_status(&mut status).await;
    assert_eq!(s.errors, 1);
    let e = s.last_error.unwrap();
    assert!(e.is_not_found(), "{e}");
    assert_eq!(e.path(), path);
    assert_eq!(breaker_threshold(&watcher.current()), 0.5);

    // Still gone: counted once.
    polls(5).await;
    assert_eq!(watcher.status().errors, 1);
    assert!(!updates.has_changed().unwrap());

    write(
        &path,
        "downstreams:\n  customer:\n    breaker: { failure_rate_threshold: 0.3 }\n",
    );
    updates.changed().await.unwrap();
    assert_eq!(breaker_threshold(&updates.borrow_and_update()), 0.3);
    assert_eq!(watcher.status().reloads, 1);
    assert!(watcher.status().last_error.is_none());
}

#[tokio::test(start_paused = true)]
async fn the_first_load_must_succeed() {
    let dir = TempDir::new("first");
    let path = dir.file("palisade.toml");
    let e = Config::watch(&path).unwrap_err();
    assert!(e.is_not_found());
    write(&path, &doc(2.0));
    let e = Config::watch(&path).unwrap_err();
    assert_eq!(
        e.field(),
        Some("downstreams.customer.breaker.failure_rate_threshold")
    );
    let e = ConfigWatcher::builder(&path)
        .interval(Duration::ZERO)
        .start()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}: interval: the watch interval must be greater than zero",
            path.display()
        )
    );
}

#[tokio::test(start_paused = true)]
async fn reloads_apply_the_environment_overrides_again() {
    let dir = TempDir::new("env");
    let path = dir.file("palisade.toml");
    write(&path, &doc(0.5));
    let watcher = ConfigWatcher::builder(&path)
        .interval(INTERVAL)
        .loader(ConfigLoader::new().env_vars([("PALISADE__DOWNSTREAMS__CUSTOMER__TIMEOUT", "3s")]))
        .start()
        .unwrap();
    let mut updates = watcher.subscribe();
    assert_eq!(
        watcher.current().downstreams["customer"].timeout,
        Some(Duration::from_secs(3))
    );
    write(&path, &doc(0.2));
    updates.changed().await.unwrap();
    let new = updates.borrow_and_update().clone();
    assert_eq!(breaker_threshold(&new), 0.2);
    assert_eq!(
        new.downstreams["customer"].timeout,
        Some(Duration::from_secs(3))
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_watcher_stops_polling() {
    let dir = TempDir::new("drop");
    let path = dir.file("palisade.toml");
    write(&path, &doc(0.5));
    let watcher = start(&path);
    let updates = watcher.subscribe();
    drop(watcher);
    polls(1).await;
    // The polling task is gone, and with it the sender.
    assert!(updates.has_changed().is_err());
}
