//! Discovery for the all-in-one mode: a map of service name → endpoints, built at
//! startup, and a count of the calls sent to each service.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// One service's entry: its endpoints (one per replica) and the attempts sent to it.
#[derive(Debug)]
pub struct Entry {
    endpoints: Arc<[SocketAddr]>,
    attempts: AtomicU64,
}

impl Entry {
    /// The endpoints, one per replica.
    pub fn endpoints(&self) -> &Arc<[SocketAddr]> {
        &self.endpoints
    }

    /// Calls sent toward this service so far (every attempt that left a client,
    /// including those whose connection was refused).
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// Counts one attempt.
    pub fn count_attempt(&self) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
    }
}

/// Service name → endpoints, fixed at startup.
#[derive(Debug, Default)]
pub struct Registry {
    entries: HashMap<String, Arc<Entry>>,
}

/// A name the registry does not know.
#[derive(Debug, thiserror::Error)]
#[error("no endpoints registered for {0:?}")]
pub struct UnknownService(pub String);

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `name` with `endpoints`, replacing an earlier registration.
    pub fn insert(&mut self, name: &str, endpoints: Vec<SocketAddr>) {
        self.entries.insert(
            name.to_owned(),
            Arc::new(Entry {
                endpoints: endpoints.into(),
                attempts: AtomicU64::new(0),
            }),
        );
    }

    /// The entry for `name`.
    pub fn get(&self, name: &str) -> Result<Arc<Entry>, UnknownService> {
        self.entries
            .get(name)
            .cloned()
            .ok_or_else(|| UnknownService(name.to_owned()))
    }

    /// Attempts sent toward `name` so far (0 for an unknown name).
    pub fn attempts(&self, name: &str) -> u64 {
        self.entries.get(name).map_or(0, |e| e.attempts())
    }

    /// Parses `name=addr[,addr...]` (the `--endpoint` flag).
    pub fn parse_endpoint(spec: &str) -> Result<(String, Vec<SocketAddr>), String> {
        let (name, addrs) = spec
            .split_once('=')
            .ok_or_else(|| format!("endpoint {spec:?}: expected NAME=ADDR[,ADDR...]"))?;
        let addrs = addrs
            .split(',')
            .map(|a| {
                a.trim()
                    .parse::<SocketAddr>()
                    .map_err(|e| format!("endpoint {spec:?}: address {a:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if name.is_empty() {
            return Err(format!("endpoint {spec:?}: empty service name"));
        }
        Ok((name.to_owned(), addrs))
    }
}
