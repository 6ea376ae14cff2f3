//! The Palisade demo order system and its fault-injection runner.
//!
//! Seven services — gateway, order, customer, inventory (3 replicas), payment,
//! shipment and catalog (2 replicas) — each an axum server on its own loopback
//! port with its own SQLite store, Prometheus `/metrics` and an admin API for
//! faults. Placing an order is a synchronous chain order → customer (reserve
//! credit) → inventory (reserve stock) → payment → shipment, compensated on
//! failure so no order is left half-done.
//!
//! Every outbound call goes through the client stack built in [`stack`], either
//! with Palisade's layers ([`Mode::Palisade`]) or as a plain HTTP client
//! ([`Mode::Plain`]). The [`runner`] starts the whole system in one process
//! ([`system::System`]), drives open-loop load through scenarios of injected
//! faults in both modes, and writes a report with charts.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), palisade::BoxError> {
//! use order_demo::runner::{Profile, Scenario};
//! use order_demo::stack::Mode;
//!
//! let profile = Profile::quick();
//! let run = order_demo::runner::run_scenario(Scenario::CustomerOutage, Mode::Palisade, &profile, 7).await?;
//! println!("success rate {:.1}%", run.summary.success_rate * 100.0);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod discovery;
pub mod faults;
pub mod obs;
pub mod registry;
pub mod runner;
pub mod server;
pub mod services;
pub mod stack;
pub mod store;
pub mod system;

pub use stack::Mode;

/// The services of the demo, by name.
pub const SERVICES: [&str; 7] = [
    "gateway",
    "order",
    "customer",
    "inventory",
    "payment",
    "shipment",
    "catalog",
];
