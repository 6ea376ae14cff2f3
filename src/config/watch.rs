//! Hot reload: poll the config file, publish each valid new version, keep the
//! running one when the new one is refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::load::read_file;
use super::{Config, ConfigFileError, ConfigLoader, Format};

/// What the watcher has done so far.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    /// Changed versions of the file loaded and accepted since the watcher started.
    pub reloads: u64,
    /// Changed versions refused (unreadable, missing, invalid). A file that stays
    /// missing or stays invalid counts once, not once per poll.
    pub errors: u64,
    /// Why the last refused version was refused; cleared by the next good one.
    pub last_error: Option<ConfigFileError>,
}

/// Configures and starts a [`ConfigWatcher`].
#[derive(Debug, Clone)]
pub struct WatchBuilder {
    path: PathBuf,
    interval: Duration,
    loader: ConfigLoader,
}

impl WatchBuilder {
    /// How often the file is read. Default 2 s.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Loads with `loader` (environment overrides) instead of [`ConfigLoader::new`].
    pub fn loader(mut self, loader: ConfigLoader) -> Self {
        self.loader = loader;
        self
    }

    /// Loads the file now — an error here is returned, since there is no running
    /// config to keep — registers the reload metrics and starts polling. Needs a
    /// tokio runtime with the time driver.
    pub fn start(self) -> Result<ConfigWatcher, ConfigFileError> {
        if self.interval.is_zero() {
            return Err(ConfigFileError::Invalid {
                path: self.path,
                field: "interval".to_owned(),
                problem: "the watch interval must be greater than zero".to_owned(),
                location: None,
                env_var: None,
            });
        }
        let format =
            Format::from_path(&self.path).ok_or_else(|| ConfigFileError::UnknownFormat {
                path: self.path.clone(),
            })?;
        let text = read_file(&self.path)?;
        let config = self.loader.load_str(&text, format, &self.path)?;
        let metrics = ReloadMetrics::register();
        metrics.success();
        let (config_tx, config_rx) = watch::channel(Arc::new(config));
        let (status_tx, status_rx) = watch::channel(ReloadStatus::default());
        let poller = Poller {
            path: self.path.clone(),
            format,
            loader: self.loader,
            last: Seen::Text(text),
            config: config_tx,
            status: status_tx,
            metrics,
        };
        let task = tokio::spawn(poller.run(self.interval));
        Ok(ConfigWatcher {
            path: self.path,
            config: config_rx,
            status: status_rx,
            task,
        })
    }
}

/// Watches a config file and publishes every valid new version.
///
/// The file is read every `interval` on `tokio::time` (so tests drive it with
/// paused time). When its text changed:
/// - a valid version is published through [`subscribe`](Self::subscribe) if it
///   differs from the running config (a change of comments only is loaded but not
///   published), counted in `palisade_config_reloads_total`, and its time set in
///   `palisade_config_last_reload_success_timestamp_seconds`;
/// - an invalid, unreadable or missing file is logged (`tracing` warning), counted in
///   `palisade_config_reload_errors_total` and recorded in [`status`](Self::status);
///   the running config stays.
///
/// Write new versions atomically (write a temporary file, then rename it over the
/// old one). A file edited in place can be read half-written: most such reads do
/// not parse and are refused like any invalid file (the complete file loads on the
/// next poll), but one cut between two sections parses, and is applied as if the
/// sections after the cut had been removed, until the next poll reads the rest.
///
/// Dropping the watcher stops the polling.
///
/// ```
/// use palisade::Config;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let path = std::env::temp_dir().join(format!("palisade-doc-{}.toml", std::process::id()));
/// std::fs::write(&path, "[downstreams.customer]\ntimeout = \"1s\"\n")?;
///
/// let watcher = palisade::config::ConfigWatcher::builder(&path)
///     .interval(Duration::from_secs(1))
///     .start()?;
/// let mut updates = watcher.subscribe();
/// assert_eq!(watcher.current().downstreams["customer"].timeout, Some(Duration::from_secs(1)));
///
/// std::fs::write(&path, "[downstreams.customer]\ntimeout = \"2s\"\n")?;
/// updates.changed().await?;
/// let new = updates.borrow_and_update().clone();
/// assert_eq!(new.downstreams["customer"].timeout, Some(Duration::from_secs(2)));
/// # std::fs::remove_file(&path)?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ConfigWatcher {
    path: PathBuf,
    config: watch::Receiver<Arc<Config>>,
    status: watch::Receiver<ReloadStatus>,
    task: JoinHandle<()>,
}

impl ConfigWatcher {
    /// A builder for a watcher of the file at `path`.
    pub fn builder(path: impl AsRef<Path>) -> WatchBuilder {
        WatchBuilder {
            path: path.as_ref().to_owned(),
            interval: Duration::from_secs(2),
            loader: ConfigLoader::new(),
        }
    }

    /// The file watched.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The running config.
    pub fn current(&self) -> Arc<Config> {
        Arc::clone(&self.config.borrow())
    }

    /// A receiver that sees every new config (`changed().await`, then
    /// `borrow_and_update()`).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Config>> {
        self.config.clone()
    }

    /// Reloads and refusals so far.
    pub fn status(&self) -> ReloadStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every change of [`status`](Self::status).
    pub fn subscribe_status(&self) -> watch::Receiver<ReloadStatus> {
        self.status.clone()
    }
}

impl Drop for ConfigWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The reload series, shared by every watcher of the process.
struct ReloadMetrics {
    reloads: Counter,
    errors: Counter,
    last_success: Gauge,
}

impl ReloadMetrics {
    fn register() -> Self {
        metrics::describe_counter!(
            "palisade_config_reloads_total",
            "Changed config files loaded successfully."
        );
        metrics::describe_counter!(
            RELOAD_ERRORS,
            "Config changes refused: files unreadable, missing or invalid, and changes a live downstream stack refused."
        );
        metrics::describe_gauge!(
            "palisade_config_last_reload_success_timestamp_seconds",
            metrics::Unit::Seconds,
            "Unix time of the last successful config load."
        );
        let reloads = metrics::counter!("palisade_config_reloads_total");
        let errors = metrics::counter!(RELOAD_ERRORS);
        // Registered at zero, so the series exist before the first event.
        reloads.increment(0);
        errors.increment(0);
        Self {
            reloads,
            errors,
            last_success: metrics::gauge!("palisade_config_last_reload_success_timestamp_seconds"),
        }
    }

    fn success(&self) {
        // A timestamp for dashboards and alerts ("config not reloaded for a day")
        // is wall-clock time by definition; nothing in Palisade's logic reads it.
        #[allow(clippy::disallowed_methods)]
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_success.set(now);
    }
}

/// What the poller saw at its last read.
#[derive(PartialEq)]
enum Seen {
    Text(String),
    /// The file could not be read, for this reason (kept so a file that stays
    /// missing is reported once).
    Unreadable(String),
}

struct Poller {
    path: PathBuf,
    format: Format,
    loader: ConfigLoader,
    last: Seen,
    config: watch::Sender<Arc<Config>>,
    status: watch::Sender<ReloadStatus>,
    metrics: ReloadMetrics,
}

impl Poller {
    async fn run(mut self, interval: Duration) {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if self.config.is_closed() && self.status.is_closed() {
                return;
            }
            self.poll();
        }
    }

    /// One look at the file. Reading a small local file is a matter of
    /// microseconds, so it is done inline rather than on the blocking pool.
    fn poll(&mut self) {
        let text = match read_file(&self.path) {
            Ok(text) => text,
            Err(e) => {
                let seen = Seen::Unreadable(e.to_string());
                if self.last != seen {
                    self.last = seen;
                    self.refuse(e);
                }
                return;
            }
        };
        if matches!(&self.last, Seen::Text(last) if *last == text) {
            return;
        }
        let loaded = self.loader.load_str(&text, self.format, &self.path);
        self.last = Seen::Text(text);
        match loaded {
            Ok(config) => {
                self.config.send_if_modified(|running| {
                    if **running == config {
                        false
                    } else {
                        *running = Arc::new(config);
                        true
                    }
                });
                self.metrics.reloads.increment(1);
                self.metrics.success();
                tracing::info!(path = %self.path.display(), "config reloaded");
                self.status.send_modify(|s| {
                    s.reloads += 1;
                    s.last_error = None;
                });
            }
            Err(e) => self.refuse(e),
        }
    }

    fn refuse(&self, e: ConfigFileError) {
        tracing::warn!(error = %e, "config not reloaded; keeping the running config");
        self.metrics.errors.increment(1);
        self.status.send_modify(|s| {
            s.errors += 1;
            s.last_error = Some(e);
        });
    }
}

/// The counter of refused config changes.
const RELOAD_ERRORS: &str = "palisade_config_reload_errors_total";

/// The counter of refused config changes, for a live downstream stack that counts
/// the changes it refuses (the watcher accepted them; the stack kept running as it
/// was). Registered with the recorder current where it is called.
pub(crate) fn refused_by_a_stack() -> metrics::Counter {
    metrics::counter!(RELOAD_ERRORS)
}
