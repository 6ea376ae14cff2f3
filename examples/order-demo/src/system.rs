//! The whole order system in one process: every service on its own loopback
//! port, discovery through an in-process [`Registry`], one store per service in a
//! temporary directory.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use palisade::BoxError;
use tokio_util::sync::CancellationToken;

use crate::faults::{self, ADMIN_TOKEN_HEADER, FaultConfig, FaultHandle};
use crate::registry::Registry;
use crate::server::{self, ServerHandle};
use crate::services::{self, GatewayClients, GatewayLimits, PaymentCapacity, order};
use crate::stack::{self, HttpClient, Mode};
use crate::store::{self, Db};
use palisade::balance::discover::Registration;

/// How many replicas each service runs in the all-in-one mode.
pub fn replicas(service: &str) -> usize {
    match service {
        "inventory" => 3,
        "catalog" => 2,
        _ => 1,
    }
}

/// Settings of an all-in-one system.
#[derive(Debug, Clone)]
pub struct SystemConfig {
    /// With or without Palisade.
    pub mode: Mode,
    /// Seeds the fault dice.
    pub seed: u64,
    /// Payments processed at once.
    pub payment_workers: usize,
    /// Time to process one payment (zero: at once).
    pub payment_time: Duration,
    /// The gateway's limits (used in Palisade mode).
    pub gateway: GatewayLimits,
    /// In Palisade mode, every client-side concurrency limit lets at least this
    /// many calls through at once: the bulkheads (gateway → order, order → payment)
    /// take this many at once and queue as many more, and the adaptive limit toward
    /// shipment never goes below it. `None` keeps each downstream's own limits (see
    /// [`stack::policy`]: bulkheads of 8 and 8, shipment adaptive between 16 and
    /// 64). Raising them shows the stacks' cost without the demo's deliberate
    /// capacity limits, as the gateway throughput benchmark does.
    pub concurrency_limit: Option<u32>,
    /// The admin API token.
    pub admin_token: String,
}

impl SystemConfig {
    /// Payments per second the system can take.
    pub fn capacity(&self) -> f64 {
        PaymentCapacity::per_second(self.payment_workers, self.payment_time)
    }
}

/// The stores, for checks after a run.
#[derive(Debug, Clone)]
pub struct Stores {
    /// order.
    pub order: Arc<Db>,
    /// customer.
    pub customer: Arc<Db>,
    /// inventory.
    pub inventory: Arc<Db>,
    /// payment.
    pub payment: Arc<Db>,
    /// shipment.
    pub shipment: Arc<Db>,
    /// catalog.
    pub catalog: Arc<Db>,
}

impl Stores {
    /// Opens (and seeds) every store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, store::StoreError> {
        Ok(Self {
            order: Db::open(&dir.join("order.db"), order::SCHEMA)?,
            customer: services::customer_store(dir)?,
            inventory: services::inventory_store(dir)?,
            payment: services::holds_store(dir, "payment")?,
            shipment: services::holds_store(dir, "shipment")?,
            catalog: services::catalog_store(dir)?,
        })
    }
}

/// What the stores say about the orders.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Consistency {
    /// Orders completed with all four holds.
    pub completed: u64,
    /// Orders failed with nothing held.
    pub failed: u64,
    /// Orders still running or with releases outstanding.
    pub unsettled: u64,
    /// Completed orders missing a hold, failed orders still holding something, or
    /// holds for orders that do not exist — each described.
    pub violations: Vec<String>,
}

/// A running system.
pub struct System {
    config: SystemConfig,
    registry: Arc<Registry>,
    /// Every replica stays registered as long as the system runs (a replica that
    /// goes down stays listed: its connections are refused, as in a real outage).
    _registrations: Vec<Registration>,
    servers: HashMap<&'static str, Vec<ServerHandle>>,
    faults: HashMap<(&'static str, usize), FaultHandle>,
    stores: Stores,
    shutdown: CancellationToken,
    http: HttpClient,
    _dir: Option<tempfile::TempDir>,
    dir: PathBuf,
}

impl std::fmt::Debug for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("System")
            .field("mode", &self.config.mode)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl System {
    /// Starts every service in a fresh temporary directory.
    pub async fn start(config: SystemConfig) -> Result<System, BoxError> {
        crate::obs::install();
        let dir = tempfile::Builder::new().prefix("order-demo-").tempdir()?;
        let stores = Stores::open(dir.path())?;
        let shutdown = CancellationToken::new();
        let http = stack::http_client();
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();

        // Bind every listener first, so discovery knows every address.
        let mut listeners = HashMap::new();
        let registry = Arc::new(Registry::new());
        let mut registrations = Vec::new();
        for service in crate::SERVICES {
            for replica in 0..replicas(service) {
                let l = server::bind(loopback).await?;
                registrations.push(registry.register(service, l.local_addr()?));
                listeners.insert((service, replica), l);
            }
        }
        let token: Arc<str> = Arc::from(config.admin_token.as_str());
        let mode = config.mode;
        let concurrency_limit = config.concurrency_limit;
        let client =
            |caller: &'static str, downstream: &'static str| -> Result<stack::Client, BoxError> {
                let mut policy = stack::policy(downstream);
                if let Some(limit) = concurrency_limit {
                    if let Some((max_concurrent, max_queue, _)) = policy.bulkhead.as_mut() {
                        *max_concurrent = limit;
                        *max_queue = limit;
                    }
                    if let Some((min, initial, max)) = policy.adaptive_limit.as_mut() {
                        *min = (*min).max(limit);
                        *initial = (*initial).max(limit);
                        *max = (*max).max(limit);
                    }
                }
                stack::client_with_policy(
                    caller,
                    downstream,
                    mode,
                    registry.replicas(downstream)?,
                    http.clone(),
                    policy,
                )
            };
        let payment = PaymentCapacity::new(config.payment_workers, config.payment_time);

        let mut servers: HashMap<&'static str, Vec<ServerHandle>> = HashMap::new();
        let mut faults = HashMap::new();
        for service in crate::SERVICES {
            for replica in 0..replicas(service) {
                let business: Router = match service {
                    "gateway" => services::gateway(GatewayClients {
                        order: client("gateway", "order")?,
                        customer: client("gateway", "customer")?,
                        catalog: client("gateway", "catalog")?,
                    }),
                    "order" => order::router(
                        stores.order.clone(),
                        order::OrderClients {
                            catalog: client("order", "catalog")?,
                            customer: client("order", "customer")?,
                            inventory: client("order", "inventory")?,
                            payment: client("order", "payment")?,
                            shipment: client("order", "shipment")?,
                        },
                        shutdown.clone(),
                    )?,
                    "customer" => services::customer(stores.customer.clone()),
                    "inventory" => services::inventory(stores.inventory.clone()),
                    "payment" => services::payment(stores.payment.clone(), payment.clone()),
                    "shipment" => services::shipment(stores.shipment.clone()),
                    _ => services::catalog(stores.catalog.clone()),
                };
                let f = faults::layer(service, config.seed.wrapping_add(replica as u64 * 7919))?;
                let handle = f.handle();
                let gateway = (service == "gateway").then_some(config.gateway);
                let app =
                    services::assemble(service, business, f.clone(), token.clone(), mode, gateway)?;
                let listener = listeners
                    .remove(&(service, replica))
                    .ok_or("listener bound above")?;
                servers.entry(service).or_default().push(server::spawn(
                    listener,
                    app,
                    shutdown.clone(),
                )?);
                faults.insert((service, replica), handle);
            }
        }
        let path = dir.path().to_path_buf();
        Ok(System {
            config,
            registry,
            _registrations: registrations,
            servers,
            faults,
            stores,
            shutdown,
            http,
            _dir: Some(dir),
            dir: path,
        })
    }

    /// The settings it runs with.
    pub fn config(&self) -> &SystemConfig {
        &self.config
    }

    /// The gateway's address.
    pub fn gateway(&self) -> SocketAddr {
        self.servers["gateway"][0].addr()
    }

    /// Discovery, with the count of calls sent to each service.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The replicas of `service`.
    pub fn servers(&self, service: &str) -> &[ServerHandle] {
        self.servers.get(service).map_or(&[], Vec::as_slice)
    }

    /// The stores.
    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    /// The directory holding the stores.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes every replica of `service` down or up (`replica: None`), or one.
    pub fn set_down(&self, service: &str, replica: Option<usize>, down: bool) {
        for (i, s) in self.servers(service).iter().enumerate() {
            if replica.is_none_or(|r| r == i) {
                s.set_down(down);
            }
        }
    }

    /// Sets faults on every replica of `service` through its admin API.
    pub async fn set_faults(&self, service: &str, config: FaultConfig) -> Result<(), BoxError> {
        let body = serde_json::to_vec(&config)?;
        for server in self.servers(service) {
            let req = http::Request::put(format!("http://{}/admin/faults", server.addr()))
                .header(ADMIN_TOKEN_HEADER, self.config.admin_token.as_str())
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))?;
            let res = self.http.request(req).await?;
            if !res.status().is_success() {
                return Err(format!("admin API of {service} answered {}", res.status()).into());
            }
        }
        Ok(())
    }

    /// The fault handle of one replica (the admin API sets the same faults).
    pub fn faults(&self, service: &'static str, replica: usize) -> Option<&FaultHandle> {
        self.faults.get(&(service, replica))
    }

    /// Waits (up to `max`) until no order is running or waiting for releases;
    /// returns whether that happened.
    pub async fn settle(&self, max: Duration) -> bool {
        let until = tokio::time::Instant::now() + max;
        loop {
            let counts = order::status_counts(&self.stores.order).unwrap_or_default();
            if counts.pending == 0 && counts.compensating == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Checks the stores against each other: every completed order holds credit,
    /// stock, a payment and a shipment; every failed order holds none; nothing is
    /// held for an order that is not completed.
    pub fn check(&self) -> Result<Consistency, store::StoreError> {
        let orders = order::all_orders(&self.stores.order)?;
        let held = [
            ("credit", store::held_orders(&self.stores.customer)?),
            ("stock", store::held_orders(&self.stores.inventory)?),
            ("payment", store::held_orders(&self.stores.payment)?),
            ("shipment", store::held_orders(&self.stores.shipment)?),
        ];
        let mut c = Consistency::default();
        let mut known = HashSet::new();
        for (id, status) in &orders {
            known.insert(id.as_str());
            match status.as_str() {
                "completed" => {
                    c.completed += 1;
                    for (what, set) in &held {
                        if !set.contains(id) {
                            c.violations
                                .push(format!("completed order {id} holds no {what}"));
                        }
                    }
                }
                "failed" => {
                    c.failed += 1;
                    for (what, set) in &held {
                        if set.contains(id) {
                            c.violations
                                .push(format!("failed order {id} still holds {what}"));
                        }
                    }
                }
                _ => c.unsettled += 1,
            }
        }
        for (what, set) in &held {
            for id in set {
                if !known.contains(id.as_str()) {
                    c.violations
                        .push(format!("{what} held for unknown order {id}"));
                }
            }
        }
        Ok(c)
    }

    /// Stops every server, connection and order chain.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
