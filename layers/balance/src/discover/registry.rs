use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use palisade_core::Name;
use tokio::sync::watch;

use super::{DiscoveryError, EndpointSet, EndpointStream};
use crate::metrics::{DiscoveryMetrics, SourceKind};

/// An in-process service registry: services register their addresses under a name,
/// balancers watch a name. For tests and for running several services in one process.
///
/// Cloning shares the registry. A registration lasts as long as its guard; the same
/// address registered twice stays until both guards are dropped.
///
/// ```
/// use palisade_balance::discover::Registry;
///
/// let registry = Registry::new();
/// let guard = registry.register("payment", "127.0.0.1:7001".parse().unwrap());
/// assert_eq!(registry.endpoints("payment").len(), 1);
/// drop(guard);
/// assert!(registry.endpoints("payment").is_empty());
/// ```
#[derive(Clone, Default)]
pub struct Registry {
    services: Arc<Mutex<HashMap<String, Service>>>,
}

struct Service {
    set: watch::Sender<Arc<EndpointSet>>,
    registrations: HashMap<SocketAddr, usize>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let services = self.lock();
        f.debug_map()
            .entries(services.iter().map(|(k, v)| (k, v.set.borrow().len())))
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Service>> {
        self.services.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_service<R>(&self, name: &str, f: impl FnOnce(&mut Service) -> R) -> R {
        let mut services = self.lock();
        let service = services.entry(name.to_owned()).or_insert_with(|| Service {
            set: watch::Sender::new(Arc::new(EndpointSet::new())),
            registrations: HashMap::new(),
        });
        f(service)
    }

    /// Registers `addr` under `name` until the returned guard is dropped.
    #[must_use = "the registration ends when the guard is dropped"]
    pub fn register(&self, name: &str, addr: SocketAddr) -> Registration {
        self.with_service(name, |s| {
            *s.registrations.entry(addr).or_insert(0) += 1;
            publish(s);
        });
        Registration {
            registry: self.clone(),
            name: name.to_owned(),
            addr,
        }
    }

    /// The addresses registered under `name` now.
    pub fn endpoints(&self, name: &str) -> EndpointSet {
        let services = self.lock();
        services
            .get(name)
            .map(|s| (**s.set.borrow()).clone())
            .unwrap_or_default()
    }

    /// Follows the addresses registered under `name` (also the `downstream` label of
    /// the discovery metrics, so it must be a valid [`Name`]).
    pub fn watch(&self, name: &str) -> Result<EndpointStream, DiscoveryError> {
        let label = Name::new(name)?;
        let rx = self.with_service(name, |s| s.set.subscribe());
        let metrics = DiscoveryMetrics::new(&label, SourceKind::Registry);
        Ok(EndpointStream::new(rx, Some(metrics)))
    }

    fn deregister(&self, name: &str, addr: SocketAddr) {
        let mut services = self.lock();
        if let Some(s) = services.get_mut(name) {
            if let Some(count) = s.registrations.get_mut(&addr) {
                *count -= 1;
                if *count == 0 {
                    s.registrations.remove(&addr);
                }
            }
            publish(s);
            // Forget a name nobody registers or watches, so the map stays bounded.
            if s.registrations.is_empty() && s.set.receiver_count() == 0 {
                services.remove(name);
            }
        }
    }
}

fn publish(s: &Service) {
    let set: EndpointSet = s.registrations.keys().copied().collect();
    s.set.send_replace(Arc::new(set));
}

/// A registration in a [`Registry`]; dropping it deregisters the address.
#[derive(Debug)]
pub struct Registration {
    registry: Registry,
    name: String,
    addr: SocketAddr,
}

impl Registration {
    /// The registered address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.deregister(&self.name, self.addr);
    }
}
