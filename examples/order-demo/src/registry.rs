//! Discovery: Palisade's in-process [`discover::Registry`] (each replica registers
//! its address under its service's name and stays registered while it holds the
//! [`Registration`]), and a count of the attempts sent toward each service.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use palisade::balance::discover::{self, DiscoveryError, Registration};

use crate::stack::Replicas;

/// Service name → registered replicas, and the attempts sent toward each service.
///
/// The attempt counters are keyed by service name: one per service the system
/// knows, so the map stays as small as the system.
#[derive(Debug, Default)]
pub struct Registry {
    discovery: discover::Registry,
    attempts: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The discovery side, for balancers to watch.
    pub fn discovery(&self) -> &discover::Registry {
        &self.discovery
    }

    /// Registers `addr` as a replica of `name` until the guard is dropped.
    #[must_use = "the replica is deregistered when the guard is dropped"]
    pub fn register(&self, name: &str, addr: SocketAddr) -> Registration {
        self.discovery.register(name, addr)
    }

    /// The addresses registered under `name` now.
    pub fn endpoints(&self, name: &str) -> Vec<SocketAddr> {
        self.discovery.endpoints(name).into_iter().collect()
    }

    /// The replicas registered under `name` as they come and go, with the counter of
    /// the attempts sent toward `name`: what a client of `name` is built from.
    pub fn replicas(&self, name: &str) -> Result<Replicas, DiscoveryError> {
        Ok(Replicas {
            endpoints: self.discovery.watch(name)?,
            attempts: self.attempt_counter(name),
        })
    }

    /// The counter of attempts sent toward `name` (every attempt that left a
    /// client, including those whose connection was refused).
    pub fn attempt_counter(&self, name: &str) -> Arc<AtomicU64> {
        let mut attempts = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(attempts.entry(name.to_owned()).or_default())
    }

    /// Attempts sent toward `name` so far (0 for a name nobody calls).
    pub fn attempts(&self, name: &str) -> u64 {
        let attempts = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        attempts.get(name).map_or(0, |c| c.load(Ordering::Relaxed))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_is_listed_while_registered_and_attempts_are_counted_per_service() {
        let registry = Registry::new();
        let addr: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        let guard = registry.register("inventory", addr);
        assert_eq!(registry.endpoints("inventory"), vec![addr]);
        registry
            .attempt_counter("inventory")
            .fetch_add(2, Ordering::Relaxed);
        assert_eq!(registry.attempts("inventory"), 2);
        assert_eq!(registry.attempts("payment"), 0);
        drop(guard);
        assert!(registry.endpoints("inventory").is_empty());
    }

    #[test]
    fn a_bad_endpoint_flag_names_the_problem() {
        let err = Registry::parse_endpoint("inventory").unwrap_err();
        assert!(err.contains("expected NAME=ADDR"), "{err}");
        let err = Registry::parse_endpoint("inventory=nope").unwrap_err();
        assert!(err.contains("address \"nope\""), "{err}");
        let (name, addrs) = Registry::parse_endpoint("inventory=127.0.0.1:1,127.0.0.1:2").unwrap();
        assert_eq!(name, "inventory");
        assert_eq!(addrs.len(), 2);
    }
}
