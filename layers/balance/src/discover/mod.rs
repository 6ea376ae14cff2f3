//! Discovery: where a balancer learns its endpoints.
//!
//! Every source yields one kind of change stream, [`EndpointStream`]: a
//! `Stream<Item = Result<Change<SocketAddr, ()>, Infallible>>`, which makes it a
//! [`tower::discover::Discover`] too. Inside, a source publishes whole endpoint sets
//! and the stream turns each new set into `Insert`/`Remove` changes, so a source never
//! has to track what it already said.
//!
//! | source | made by | notes |
//! |---|---|---|
//! | fixed list | [`fixed`] | never changes |
//! | in-process registry | [`Registry`] | `register` returns a guard that deregisters on drop |
//! | watched file | [`FileSource`] | JSON or TOML list, polled on tokio time |
//! | DNS | `DnsSource` (feature `dns`) | A/AAAA or SRV, refreshed on TTL within bounds |
//! | etcd | `etcd::EtcdSource` (feature `etcd`) | watches a key prefix; `Registration` keeps a lease alive |
//!
//! A source that cannot be read (file missing or malformed, DNS or etcd unreachable)
//! keeps publishing its last good set, counts the error and sets
//! `palisade_discovery_stale` to 1 until it reads successfully again.

use std::collections::{BTreeSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_core::Stream;
use palisade_core::{Name, NameError};
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tower::discover::Change;

use crate::metrics::{DiscoveryMetrics, SourceKind};

#[cfg(feature = "dns")]
mod dns;
#[cfg(feature = "etcd")]
pub mod etcd;
mod file;
mod registry;

#[cfg(feature = "dns")]
pub use dns::{DnsBuilder, DnsQuery, DnsSource};
pub use file::{FileBuilder, FileSource};
pub use registry::{Registration, Registry};

/// A set of endpoint addresses, as a source publishes it.
pub type EndpointSet = BTreeSet<SocketAddr>;

/// A discovery setting or endpoint list that was refused, saying why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The downstream name is not a valid metric label value.
    #[error("downstream name: {0}")]
    Name(#[from] NameError),
    /// An entry of an endpoint list is empty.
    #[error("endpoint {index}: the entry is empty")]
    EmptyEntry {
        /// The entry's position, from 0.
        index: usize,
    },
    /// An entry is not an `ip:port` address.
    #[error(
        "endpoint {index}: {entry:?} is not an address (expected ip:port, e.g. 127.0.0.1:8080)"
    )]
    BadAddress {
        /// The entry's position, from 0.
        index: usize,
        /// The refused entry.
        entry: String,
    },
    /// An address is listed twice.
    #[error("endpoint {index}: {addr} is listed twice")]
    Duplicate {
        /// The position of the second mention, from 0.
        index: usize,
        /// The repeated address.
        addr: SocketAddr,
    },
    /// A file or record could not be read as an endpoint list.
    #[error("malformed endpoint list: {0}")]
    Malformed(String),
    /// A list names more endpoints than [`MAX_ENDPOINTS`].
    #[error("endpoint {index}: more than {MAX_ENDPOINTS} endpoints")]
    TooMany {
        /// The position of the first entry over the limit, from 0.
        index: usize,
    },
    /// A source setting is refused.
    #[error("{field}: {problem}")]
    Config {
        /// The setting.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// The most endpoints one discovery source holds: a longer list (static, file) is
/// refused, and etcd keys beyond it are ignored with a warning, so what a source
/// reads cannot grow the balancer without bound.
pub const MAX_ENDPOINTS: usize = 1024;

/// Checks a list of `ip:port` entries: none empty, each an address, none twice, at
/// most [`MAX_ENDPOINTS`].
///
/// ```
/// use palisade_balance::discover::{parse_endpoints, DiscoveryError};
///
/// let set = parse_endpoints(["127.0.0.1:8001", "[::1]:8002"]).unwrap();
/// assert_eq!(set.len(), 2);
/// assert_eq!(parse_endpoints(["127.0.0.1:8001", " "]).unwrap_err().to_string(),
///     "endpoint 1: the entry is empty");
/// assert_eq!(parse_endpoints(["localhost"]).unwrap_err().to_string(),
///     "endpoint 0: \"localhost\" is not an address (expected ip:port, e.g. 127.0.0.1:8080)");
/// assert!(matches!(parse_endpoints(["127.0.0.1:1", "127.0.0.1:1"]),
///     Err(DiscoveryError::Duplicate { index: 1, .. })));
/// let many: Vec<String> = (1..=1025).map(|port| format!("127.0.0.1:{port}")).collect();
/// assert_eq!(parse_endpoints(&many).unwrap_err().to_string(),
///     "endpoint 1024: more than 1024 endpoints");
/// ```
pub fn parse_endpoints<I, T>(entries: I) -> Result<EndpointSet, DiscoveryError>
where
    I: IntoIterator<Item = T>,
    T: AsRef<str>,
{
    let mut set = EndpointSet::new();
    for (index, entry) in entries.into_iter().enumerate() {
        if index == MAX_ENDPOINTS {
            return Err(DiscoveryError::TooMany { index });
        }
        let entry = entry.as_ref().trim();
        if entry.is_empty() {
            return Err(DiscoveryError::EmptyEntry { index });
        }
        let addr: SocketAddr = entry.parse().map_err(|_| DiscoveryError::BadAddress {
            index,
            entry: entry.to_owned(),
        })?;
        if !set.insert(addr) {
            return Err(DiscoveryError::Duplicate { index, addr });
        }
    }
    Ok(set)
}

/// A fixed list of endpoints that never changes.
///
/// ```
/// use palisade_balance::discover;
/// use std::net::SocketAddr;
///
/// let a: SocketAddr = "127.0.0.1:8001".parse().unwrap();
/// assert!(discover::fixed("catalog", [a]).is_ok());
/// assert!(discover::fixed("catalog", [a, a]).is_err());
/// ```
pub fn fixed(
    downstream: &str,
    endpoints: impl IntoIterator<Item = SocketAddr>,
) -> Result<EndpointStream, DiscoveryError> {
    let name = Name::new(downstream)?;
    let mut set = EndpointSet::new();
    for (index, addr) in endpoints.into_iter().enumerate() {
        if !set.insert(addr) {
            return Err(DiscoveryError::Duplicate { index, addr });
        }
    }
    let (tx, rx) = watch::channel(Arc::new(set));
    let metrics = DiscoveryMetrics::new(&name, SourceKind::Static);
    Ok(EndpointStream::new(rx, Some(metrics)).keeping(Arc::new(tx)))
}

/// The change stream every source yields: `Insert`/`Remove` of endpoint addresses.
///
/// It never yields an error (a source that cannot be read keeps its last set) and
/// ends only when its source is gone; a balancer then keeps the last endpoints.
pub struct EndpointStream {
    sets: WatchStream<Arc<EndpointSet>>,
    known: EndpointSet,
    queue: VecDeque<Change<SocketAddr, ()>>,
    metrics: Option<DiscoveryMetrics>,
    _keep: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for EndpointStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointStream")
            .field("known", &self.known)
            .finish_non_exhaustive()
    }
}

impl EndpointStream {
    /// A stream of the sets published on `sets`, counting each new set in `metrics`.
    /// For sources of your own: publish whole sets with the `watch::Sender`.
    pub fn new(sets: watch::Receiver<Arc<EndpointSet>>, metrics: Option<DiscoveryMetrics>) -> Self {
        Self {
            sets: WatchStream::new(sets),
            known: EndpointSet::new(),
            queue: VecDeque::new(),
            metrics,
            _keep: None,
        }
    }

    /// Keeps `value` alive as long as the stream (a source's sender or guard).
    pub(crate) fn keeping(mut self, value: Arc<dyn std::any::Any + Send + Sync>) -> Self {
        self._keep = Some(value);
        self
    }

    fn diff(&mut self, set: &EndpointSet) {
        for gone in self.known.difference(set) {
            self.queue.push_back(Change::Remove(*gone));
        }
        for new in set.difference(&self.known) {
            self.queue.push_back(Change::Insert(*new, ()));
        }
        self.known.clone_from(set);
    }
}

impl Stream for EndpointStream {
    type Item = Result<Change<SocketAddr, ()>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(change) = self.queue.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            match ready!(Pin::new(&mut self.sets).poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(set) => {
                    if *set != self.known {
                        if let Some(m) = &self.metrics {
                            m.updated();
                        }
                        self.diff(&set);
                    }
                }
            }
        }
    }
}

impl Unpin for EndpointStream {}
