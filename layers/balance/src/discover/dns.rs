use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfigGroup, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{ResolveError, TokioResolver};
use palisade_core::Name;
use tokio::sync::watch;

use super::{DiscoveryError, EndpointSet, EndpointStream};
use crate::metrics::{DiscoveryMetrics, SourceKind};

/// What to ask DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsQuery {
    /// A and AAAA records of `host`, each address with `port`.
    Host {
        /// The name to resolve, e.g. `inventory.internal.`.
        host: String,
        /// The port every address serves on.
        port: u16,
    },
    /// SRV records of `name` (e.g. `_http._tcp.inventory.internal.`): each target's
    /// addresses with the record's port.
    Srv(String),
}

/// Endpoints from DNS through hickory-resolver, refreshed when the answer's TTL
/// runs out (kept within `min_ttl..=max_ttl`).
///
/// A lookup that fails (no answer, timeout, NXDOMAIN) keeps the last good set; the
/// error is logged, counted in `palisade_discovery_errors_total`, the set is marked
/// stale, and the lookup is tried again after `min_ttl`.
///
/// ```no_run
/// use palisade_balance::discover::{DnsQuery, DnsSource};
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let stream = DnsSource::builder("inventory", DnsQuery::Srv("_http._tcp.inventory.internal.".into()))
///     .nameservers(vec!["10.0.0.2:53".parse().unwrap()])
///     .min_ttl(Duration::from_secs(1))
///     .max_ttl(Duration::from_secs(30))
///     .build()
///     .unwrap();
/// # drop(stream);
/// # }
/// ```
#[derive(Debug)]
pub struct DnsSource;

/// Builds a [`DnsSource`] stream.
#[derive(Debug, Clone)]
pub struct DnsBuilder {
    downstream: String,
    query: DnsQuery,
    nameservers: Option<Vec<SocketAddr>>,
    min_ttl: Duration,
    max_ttl: Duration,
    timeout: Duration,
}

impl DnsSource {
    /// Starts a builder for downstream `downstream`'s endpoints, found by `query`.
    pub fn builder(downstream: &str, query: DnsQuery) -> DnsBuilder {
        DnsBuilder {
            downstream: downstream.to_owned(),
            query,
            nameservers: None,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(60),
            timeout: Duration::from_secs(2),
        }
    }
}

impl DnsBuilder {
    /// Asks these name servers (UDP, then TCP for truncated answers) instead of the
    /// system's (`/etc/resolv.conf`).
    pub fn nameservers(mut self, servers: Vec<SocketAddr>) -> Self {
        self.nameservers = Some(servers);
        self
    }

    /// The shortest wait between lookups (also the wait after a failed one). Default 1 s.
    pub fn min_ttl(mut self, ttl: Duration) -> Self {
        self.min_ttl = ttl;
        self
    }

    /// The longest wait between lookups, whatever the TTL says. Default 60 s.
    pub fn max_ttl(mut self, ttl: Duration) -> Self {
        self.max_ttl = ttl;
        self
    }

    /// How long one query waits for an answer. Default 2 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Starts resolving (inside a tokio runtime). The first answer arrives a moment
    /// later; see [`Balance::wait_for_endpoints`](crate::Balance::wait_for_endpoints).
    pub fn build(self) -> Result<EndpointStream, DiscoveryError> {
        let name = Name::new(&self.downstream)?;
        if self.min_ttl < Duration::from_millis(10) {
            return Err(DiscoveryError::Config {
                field: "min_ttl",
                problem: format!("{:?} is shorter than 10ms", self.min_ttl),
            });
        }
        if self.max_ttl < self.min_ttl {
            return Err(DiscoveryError::Config {
                field: "max_ttl",
                problem: format!(
                    "{:?} is shorter than min_ttl ({:?})",
                    self.max_ttl, self.min_ttl
                ),
            });
        }
        match &self.query {
            DnsQuery::Host { host, .. } | DnsQuery::Srv(host) if host.trim().is_empty() => {
                return Err(DiscoveryError::Config {
                    field: "query",
                    problem: "the name to resolve is empty".into(),
                });
            }
            _ => {}
        }
        let mut opts = ResolverOpts::default();
        // This source refreshes on the TTL itself; a cache would only hide changes.
        opts.cache_size = 0;
        opts.timeout = self.timeout;
        opts.attempts = 1;
        // A and AAAA records both (the resolver's default asks for AAAA only when
        // there is no A record, so a dual-stack host would give its IPv4 ones only).
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        let resolver = match &self.nameservers {
            Some(servers) => {
                let ips: Vec<_> = servers.iter().map(|s| s.ip()).collect();
                let port = servers.first().map(|s| s.port()).unwrap_or(53);
                let mut group = NameServerConfigGroup::from_ips_clear(&ips, port, true);
                // Each server on its own port.
                group.clear();
                for s in servers {
                    group.merge(NameServerConfigGroup::from_ips_clear(
                        &[s.ip()],
                        s.port(),
                        true,
                    ));
                }
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, vec![], group),
                    TokioConnectionProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio().map_err(|e| DiscoveryError::Config {
                field: "nameservers",
                problem: format!("none given and the system's cannot be read: {e}"),
            })?,
        }
        .with_options(opts)
        .build();
        let metrics = DiscoveryMetrics::new(&name, SourceKind::Dns);
        let (tx, rx) = watch::channel(Arc::new(EndpointSet::new()));
        let follow = metrics.clone();
        tokio::spawn(async move {
            loop {
                let wait = match resolve(&resolver, &self.query).await {
                    Ok((set, ttl)) => {
                        follow.confirmed();
                        if **tx.borrow() != set {
                            tx.send_replace(Arc::new(set));
                        }
                        ttl.clamp(self.min_ttl, self.max_ttl)
                    }
                    Err(e) => {
                        tracing::warn!(downstream = %name, error = %e, "DNS lookup failed; keeping the endpoints known");
                        follow.failed();
                        self.min_ttl
                    }
                };
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        });
        Ok(EndpointStream::new(rx, Some(metrics)))
    }
}

/// One lookup: the endpoint set and the shortest TTL among the records used.
async fn resolve(
    resolver: &TokioResolver,
    query: &DnsQuery,
) -> Result<(EndpointSet, Duration), ResolveError> {
    let mut set = EndpointSet::new();
    let mut ttl = u32::MAX;
    match query {
        DnsQuery::Host { host, port } => {
            let ips = resolver.lookup_ip(host.as_str()).await?;
            for r in ips.as_lookup().records() {
                ttl = ttl.min(r.ttl());
            }
            set.extend(ips.iter().map(|ip| SocketAddr::new(ip, *port)));
        }
        DnsQuery::Srv(name) => {
            let srv = resolver.srv_lookup(name.as_str()).await?;
            for r in srv.as_lookup().records() {
                ttl = ttl.min(r.ttl());
            }
            // A target that does not resolve (a host taken down before its SRV
            // record) is skipped; the lookup fails only if no target resolves.
            let mut unresolved = None;
            let mut resolved = false;
            for record in srv.iter() {
                match resolver.lookup_ip(record.target().clone()).await {
                    Ok(ips) => {
                        resolved = true;
                        for r in ips.as_lookup().records() {
                            ttl = ttl.min(r.ttl());
                        }
                        set.extend(ips.iter().map(|ip| SocketAddr::new(ip, record.port())));
                    }
                    Err(e) => {
                        tracing::warn!(name = %name, target = %record.target(), error = %e, "SRV target does not resolve; skipped");
                        unresolved = Some(e);
                    }
                }
            }
            if let (false, Some(e)) = (resolved, unresolved) {
                return Err(e);
            }
        }
    }
    Ok((set, Duration::from_secs(u64::from(ttl))))
}
