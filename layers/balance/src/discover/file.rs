use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use palisade_core::Name;
use serde::Deserialize;
use tokio::sync::watch;

use super::{DiscoveryError, EndpointSet, EndpointStream, parse_endpoints};
use crate::metrics::{DiscoveryMetrics, SourceKind};

/// Endpoints listed in a file, re-read when it changes.
///
/// The file holds `ip:port` strings, as JSON (`["127.0.0.1:8001", ...]` or
/// `{"endpoints": [...]}`) or TOML (`endpoints = [...]`); a `.json` or `.toml`
/// extension picks the format, anything else tries JSON then TOML. The file is read
/// every `interval` on tokio time (so paused-time tests move it), and a new set is
/// published when its content changed. A missing or malformed file keeps the last
/// good set: the error is logged, counted in `palisade_discovery_errors_total` and
/// `palisade_discovery_stale` is 1 until a good read.
///
/// ```
/// use palisade_balance::discover::FileSource;
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("inventory.json");
/// std::fs::write(&path, r#"["127.0.0.1:8001", "127.0.0.1:8002"]"#).unwrap();
/// let stream = FileSource::builder("inventory", &path)
///     .interval(Duration::from_millis(500))
///     .build()
///     .unwrap();
/// # drop(stream);
/// # }
/// ```
#[derive(Debug)]
pub struct FileSource;

/// Builds a [`FileSource`] stream.
#[derive(Debug, Clone)]
pub struct FileBuilder {
    downstream: String,
    path: PathBuf,
    interval: Duration,
}

impl FileSource {
    /// Starts a builder for downstream `downstream`'s endpoints, listed in `path`.
    pub fn builder(downstream: &str, path: impl AsRef<Path>) -> FileBuilder {
        FileBuilder {
            downstream: downstream.to_owned(),
            path: path.as_ref().to_owned(),
            interval: Duration::from_secs(2),
        }
    }

    /// Parses an endpoint list in the format `path`'s extension names.
    ///
    /// ```
    /// use palisade_balance::discover::FileSource;
    ///
    /// let set = FileSource::parse("x.toml".as_ref(), r#"endpoints = ["127.0.0.1:1"]"#).unwrap();
    /// assert_eq!(set.len(), 1);
    /// let err = FileSource::parse("x.json".as_ref(), r#"["127.0.0.1:1", "nope"]"#).unwrap_err();
    /// assert!(err.to_string().contains("\"nope\" is not an address"), "{err}");
    /// ```
    pub fn parse(path: &Path, text: &str) -> Result<EndpointSet, DiscoveryError> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Json {
            List(Vec<String>),
            Table(Table),
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            endpoints: Vec<String>,
        }
        let json = || -> Result<Vec<String>, DiscoveryError> {
            match serde_json::from_str::<Json>(text) {
                Ok(Json::List(list)) | Ok(Json::Table(Table { endpoints: list })) => Ok(list),
                Err(e) => Err(DiscoveryError::Malformed(format!(
                    "{}: not a JSON list of endpoints ({e})",
                    path.display()
                ))),
            }
        };
        let toml = || -> Result<Vec<String>, DiscoveryError> {
            toml::from_str::<Table>(text)
                .map(|t| t.endpoints)
                .map_err(|e| {
                    DiscoveryError::Malformed(format!(
                        "{}: not a TOML endpoint list ({})",
                        path.display(),
                        e.message()
                    ))
                })
        };
        let list = match path.extension().and_then(|e| e.to_str()) {
            Some("json") => json()?,
            Some("toml") => toml()?,
            _ => json().or_else(|_| toml())?,
        };
        parse_endpoints(list)
            .map_err(|e| DiscoveryError::Malformed(format!("{}: {e}", path.display())))
    }
}

impl FileBuilder {
    /// How often the file is read. Default 2 s.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Starts following the file (inside a tokio runtime). The first read happens
    /// before this returns, so a good file's endpoints are there at once; a missing or
    /// malformed file starts with no endpoints, stale, and is read again every interval.
    pub fn build(self) -> Result<EndpointStream, DiscoveryError> {
        let name = Name::new(&self.downstream)?;
        if self.interval < Duration::from_millis(10) {
            return Err(DiscoveryError::Config {
                field: "interval",
                problem: format!("{:?} is shorter than 10ms", self.interval),
            });
        }
        let metrics = DiscoveryMetrics::new(&name, SourceKind::File);
        let mut follower = Follower {
            name,
            path: self.path,
            metrics: metrics.clone(),
            last_text: None,
        };
        let (tx, rx) = watch::channel(Arc::new(EndpointSet::new()));
        follower.read(&tx);
        // The clock starts now, not when the task first runs.
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + self.interval, self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tick.tick() => follower.read(&tx),
                }
            }
        });
        Ok(EndpointStream::new(rx, Some(metrics)))
    }
}

struct Follower {
    name: Name,
    path: PathBuf,
    metrics: DiscoveryMetrics,
    /// The text last read, good or not: an unchanged file is not parsed again.
    last_text: Option<Result<String, String>>,
}

impl Follower {
    fn read(&mut self, tx: &watch::Sender<Arc<EndpointSet>>) {
        // Endpoint files are small; a plain read keeps the timing on tokio's clock.
        let text = read_bounded(&self.path);
        match text {
            Err(e) => {
                tracing::warn!(downstream = %self.name, path = %self.path.display(), error = %e, "cannot read endpoint file; keeping the endpoints known");
                self.last_text = None;
                self.metrics.failed();
            }
            Ok(text) => {
                if let Some(Ok(last)) | Some(Err(last)) = &self.last_text
                    && *last == text
                {
                    if matches!(self.last_text, Some(Ok(_))) {
                        self.metrics.confirmed();
                    } else {
                        self.metrics.still_stale();
                    }
                    return;
                }
                match FileSource::parse(&self.path, &text) {
                    Ok(set) => {
                        self.last_text = Some(Ok(text));
                        self.metrics.confirmed();
                        if **tx.borrow() != set {
                            tx.send_replace(Arc::new(set));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(downstream = %self.name, error = %e, "malformed endpoint file; keeping the last good endpoints");
                        self.last_text = Some(Err(text));
                        self.metrics.failed();
                    }
                }
            }
        }
    }
}

/// The largest endpoint file read: [`MAX_ENDPOINTS`](super::MAX_ENDPOINTS) lines of
/// addresses fit many times over.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Reads the file as text, refusing one larger than [`MAX_FILE_BYTES`] (a wrong
/// path such as a log or a device must not be read into memory whole).
fn read_bounded(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "the file is larger than {MAX_FILE_BYTES} bytes"
        )));
    }
    String::from_utf8(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
