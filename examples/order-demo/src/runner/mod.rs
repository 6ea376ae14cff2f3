//! The fault-injection runner.

/// The scenario names.
pub const SCENARIO_NAMES: [&str; 7] = [
    "baseline",
    "inventory_errors",
    "inventory_replica_dead",
    "payment_latency",
    "catalog_outage",
    "customer_outage",
    "overload_spike",
];
