//! etcd discovery and registration (feature `etcd`).
//!
//! Layout: each endpoint of a service is one key `<prefix><ip:port>` whose value is
//! the address, attached to the registering process's lease. A [`Registration`]
//! grants the lease, writes the key and keeps the lease alive (the heartbeat); when
//! the process dies the lease expires, etcd deletes the key and every watcher drops
//! the endpoint. [`EtcdSource`] reads the prefix, then watches it from the revision it
//! read, resuming from the last revision seen after a disconnect so no change is
//! missed (a full re-read only if etcd compacted that revision away).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use palisade_core::Name;
use tokio::sync::watch;

use super::{DiscoveryError, EndpointSet, EndpointStream};
use crate::metrics::{DiscoveryMetrics, SourceKind};

fn connect_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
}

/// Endpoints registered in etcd under a key prefix.
///
/// ```no_run
/// use palisade_balance::discover::etcd::EtcdSource;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let stream = EtcdSource::builder("inventory", vec!["127.0.0.1:2379".into()])
///     .prefix("/palisade/services/inventory/")
///     .build()
///     .unwrap();
/// # drop(stream);
/// # }
/// ```
#[derive(Debug)]
pub struct EtcdSource;

/// Builds an [`EtcdSource`] stream.
#[derive(Debug, Clone)]
pub struct EtcdBuilder {
    downstream: String,
    endpoints: Vec<String>,
    prefix: Option<String>,
    retry: Duration,
}

impl EtcdSource {
    /// Starts a builder for downstream `downstream`, reading etcd at `endpoints`
    /// (`host:port` or URLs). The prefix defaults to `/palisade/services/<downstream>/`.
    pub fn builder(downstream: &str, endpoints: Vec<String>) -> EtcdBuilder {
        EtcdBuilder {
            downstream: downstream.to_owned(),
            endpoints,
            prefix: None,
            retry: Duration::from_millis(500),
        }
    }
}

/// The default key prefix of a service's endpoints.
pub fn default_prefix(service: &str) -> String {
    format!("/palisade/services/{service}/")
}

impl EtcdBuilder {
    /// The key prefix to watch.
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = Some(prefix.to_owned());
        self
    }

    /// The wait before reconnecting after etcd could not be reached. Default 500 ms.
    pub fn retry(mut self, wait: Duration) -> Self {
        self.retry = wait;
        self
    }

    /// Starts following etcd (inside a tokio runtime).
    pub fn build(self) -> Result<EndpointStream, DiscoveryError> {
        let name = Name::new(&self.downstream)?;
        if self.endpoints.is_empty() {
            return Err(DiscoveryError::Config {
                field: "endpoints",
                problem: "no etcd endpoint given".into(),
            });
        }
        let prefix = self
            .prefix
            .unwrap_or_else(|| default_prefix(&self.downstream));
        if prefix.is_empty() {
            return Err(DiscoveryError::Config {
                field: "prefix",
                problem: "is empty (it would watch every key)".into(),
            });
        }
        let metrics = DiscoveryMetrics::new(&name, SourceKind::Etcd);
        let (tx, rx) = watch::channel(Arc::new(EndpointSet::new()));
        let follower = Follower {
            name,
            endpoints: self.endpoints,
            prefix,
            retry: self.retry,
            metrics: metrics.clone(),
            keys: HashMap::new(),
            revision: 0,
        };
        tokio::spawn(async move {
            let closed = tx.clone();
            tokio::select! {
                _ = closed.closed() => {}
                _ = follower.run(tx) => {}
            }
        });
        Ok(EndpointStream::new(rx, Some(metrics)))
    }
}

struct Follower {
    name: Name,
    endpoints: Vec<String>,
    prefix: String,
    retry: Duration,
    metrics: DiscoveryMetrics,
    /// Key → address, as last read.
    keys: HashMap<String, SocketAddr>,
    /// The last revision seen; 0 before the first read (or after a compaction).
    revision: i64,
}

impl Follower {
    async fn run(mut self, tx: watch::Sender<Arc<EndpointSet>>) {
        loop {
            if let Err(e) = self.follow(&tx).await {
                tracing::warn!(downstream = %self.name, error = %e, "etcd unreachable; keeping the endpoints known");
                self.metrics.failed();
            }
            tokio::time::sleep(self.retry).await;
        }
    }

    fn publish(&self, tx: &watch::Sender<Arc<EndpointSet>>) {
        let set: EndpointSet = self.keys.values().copied().collect();
        if **tx.borrow() != set {
            tx.send_replace(Arc::new(set));
        }
        self.metrics.confirmed();
    }

    /// Keeps `key`'s address, unless that would hold more than
    /// [`MAX_ENDPOINTS`](super::MAX_ENDPOINTS) keys.
    fn insert(&mut self, key: String, addr: SocketAddr) {
        if self.keys.len() >= super::MAX_ENDPOINTS && !self.keys.contains_key(&key) {
            tracing::warn!(downstream = %self.name, key, limit = super::MAX_ENDPOINTS, "more endpoints under the etcd prefix than a source holds; key ignored");
            return;
        }
        self.keys.insert(key, addr);
    }

    fn parse(&self, key: &str, value: &[u8]) -> Option<SocketAddr> {
        let text = String::from_utf8_lossy(value);
        match text.trim().parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                tracing::warn!(downstream = %self.name, key, value = %text, "etcd value is not an ip:port address; ignored");
                None
            }
        }
    }

    /// Connects, reads the prefix if needed, and follows changes until the
    /// connection fails.
    async fn follow(
        &mut self,
        tx: &watch::Sender<Arc<EndpointSet>>,
    ) -> Result<(), etcd_client::Error> {
        let mut client = Client::connect(&self.endpoints, Some(connect_options())).await?;
        if self.revision == 0 {
            let resp = client
                .get(self.prefix.as_str(), Some(GetOptions::new().with_prefix()))
                .await?;
            self.keys.clear();
            for kv in resp.kvs() {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                if let Some(addr) = self.parse(&key, kv.value()) {
                    self.insert(key, addr);
                }
            }
            self.revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            self.publish(tx);
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.revision + 1)
            .with_progress_notify();
        let (_watcher, mut stream) = client.watch(self.prefix.as_str(), Some(options)).await?;
        self.metrics.confirmed();
        while let Some(resp) = stream.message().await? {
            if resp.compact_revision() > 0 || resp.canceled() {
                // The revision we would resume from is gone: read everything again.
                tracing::info!(downstream = %self.name, "etcd watch lost its revision; reading the prefix again");
                self.revision = 0;
                return Ok(());
            }
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                match event.event_type() {
                    EventType::Put => {
                        if let Some(addr) = self.parse(&key, kv.value()) {
                            self.insert(key, addr);
                        }
                    }
                    EventType::Delete => {
                        self.keys.remove(&key);
                    }
                }
                self.revision = self.revision.max(kv.mod_revision());
            }
            // The header's revision is the store's at the time of the reply. Only a
            // progress notification (no events, not the reply that creates the
            // watch) says every change up to it has been sent; the creating reply
            // comes before the changes since our revision, and resuming from its
            // revision after a dropped connection would skip them (a delete of an
            // expired lease, and a dead endpoint kept).
            if resp.events().is_empty()
                && !resp.created()
                && let Some(h) = resp.header()
            {
                self.revision = self.revision.max(h.revision());
            }
            self.publish(tx);
        }
        Err(etcd_client::Error::WatchError("watch stream ended".into()))
    }
}

/// A service's registration in etcd: a key under a lease kept alive in the
/// background. Dropping it revokes the lease (the endpoint goes at once);
/// [`Registration::abandon`] stops the heartbeat without revoking, as a crash would.
#[derive(Debug)]
pub struct Registration {
    task: tokio::task::JoinHandle<()>,
    lease: watch::Receiver<i64>,
    endpoints: Vec<String>,
    key: String,
    revoke: bool,
}

impl Registration {
    /// Registers `addr` under `prefix` with a lease of `ttl` (at least 1 s), and keeps
    /// it alive every third of the TTL; if etcd loses the lease (it was unreachable
    /// for longer than the TTL) the key is registered again under a new one. Returns
    /// once the key is written.
    pub async fn register(
        endpoints: Vec<String>,
        prefix: &str,
        addr: SocketAddr,
        ttl: Duration,
    ) -> Result<Registration, etcd_client::Error> {
        let ttl_secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let key = format!("{prefix}{addr}");
        let mut client = Client::connect(&endpoints, Some(connect_options())).await?;
        let lease = put_leased(&mut client, &key, addr, ttl_secs).await?;
        let (lease_tx, lease_rx) = watch::channel(lease);
        let (eps, k) = (endpoints.clone(), key.clone());
        let task = tokio::spawn(async move {
            let period = Duration::from_secs(ttl_secs as u64) / 3;
            let mut lease = lease;
            loop {
                match heartbeat(&mut client, lease, period).await {
                    Ok(()) => tracing::warn!(key = %k, "etcd lease expired; registering again"),
                    Err(e) => {
                        tracing::warn!(key = %k, error = %e, "etcd heartbeat failed; retrying")
                    }
                }
                loop {
                    tokio::time::sleep(period).await;
                    let again = async {
                        let mut c = Client::connect(&eps, Some(connect_options())).await?;
                        let l = put_leased(&mut c, &k, addr, ttl_secs).await?;
                        Ok::<_, etcd_client::Error>((c, l))
                    };
                    if let Ok((c, l)) = again.await {
                        client = c;
                        lease = l;
                        lease_tx.send_replace(l);
                        break;
                    }
                }
            }
        });
        Ok(Registration {
            task,
            lease: lease_rx,
            endpoints,
            key,
            revoke: true,
        })
    }

    /// The key written.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lease the key is attached to now.
    pub fn lease(&self) -> i64 {
        *self.lease.borrow()
    }

    /// Stops the heartbeat without revoking the lease: the key disappears when the
    /// lease expires, as when the process dies.
    pub fn abandon(mut self) {
        self.revoke = false;
    }

    /// Stops the heartbeat and revokes the lease, returning once etcd has deleted
    /// the key: for a clean shutdown, where the process may exit right after (a
    /// dropped registration revokes in the background, which an exiting runtime
    /// may cut short).
    pub async fn deregister(mut self) -> Result<(), etcd_client::Error> {
        self.task.abort();
        self.revoke = false;
        let mut client = Client::connect(&self.endpoints, Some(connect_options())).await?;
        client.lease_revoke(self.lease()).await?;
        Ok(())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.task.abort();
        if !self.revoke {
            return;
        }
        let (endpoints, lease) = (self.endpoints.clone(), self.lease());
        // Best effort: without a runtime the lease simply expires.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Ok(mut c) = Client::connect(&endpoints, Some(connect_options())).await {
                    let _ = c.lease_revoke(lease).await;
                }
            });
        }
    }
}

async fn put_leased(
    client: &mut Client,
    key: &str,
    addr: SocketAddr,
    ttl_secs: i64,
) -> Result<i64, etcd_client::Error> {
    let lease = client.lease_grant(ttl_secs, None).await?.id();
    client
        .put(
            key,
            addr.to_string(),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
    Ok(lease)
}

/// Keeps `lease` alive until it expires (`Ok`) or etcd cannot be reached (`Err`).
async fn heartbeat(
    client: &mut Client,
    lease: i64,
    period: Duration,
) -> Result<(), etcd_client::Error> {
    let (mut keeper, mut responses) = client.lease_keep_alive(lease).await?;
    loop {
        keeper.keep_alive().await?;
        match responses.message().await? {
            Some(resp) if resp.ttl() > 0 => {}
            Some(_) => return Ok(()),
            None => {
                return Err(etcd_client::Error::LeaseKeepAliveError(
                    "keep-alive stream ended".into(),
                ));
            }
        }
        tokio::time::sleep(period).await;
    }
}
