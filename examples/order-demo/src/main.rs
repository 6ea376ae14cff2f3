//! `order-demo`: runs the demo order system and its fault-injection scenarios
//! (the default), or one service as its own process (`order-demo serve`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use order_demo::discovery::RegistryFlag;
use order_demo::registry::Registry;
use order_demo::runner::{self, Options, Profile, Scenario};
use order_demo::services::{self, GatewayClients, GatewayLimits, PaymentCapacity, order};
use order_demo::stack::{self, Mode};
use palisade::BoxError;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "order-demo",
    about = "The Palisade demo order system and its fault-injection runner"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start every service in this process and run the scenarios (the default).
    Run(RunArgs),
    /// Serve one service as its own process.
    Serve(ServeArgs),
}

#[derive(Debug, Clone, Args)]
struct RunArgs {
    /// Shorter scenarios (about 6 s each instead of 10; the spike lasts 2 s).
    #[arg(long)]
    quick: bool,
    /// Run only this scenario (repeatable): baseline, inventory_errors,
    /// inventory_replica_dead, payment_latency, catalog_outage, customer_outage,
    /// overload_spike.
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<String>,
    /// Seeds the arrivals and the injected faults.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Where the results folder (run-NNN) is created.
    #[arg(long, default_value = "target/order-demo")]
    out: PathBuf,
    /// No progress line.
    #[arg(long)]
    no_progress: bool,
    /// Serve the process's /metrics on this loopback address for the whole run.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

#[derive(Debug, Clone, Args)]
struct ServeArgs {
    /// gateway, order, customer, inventory, payment, shipment or catalog.
    service: String,
    /// The address to listen on (loopback).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Discovery: `static` (dependencies from --endpoint) or
    /// `etcd://HOST:PORT[/ROOT]` (register under ROOT/services/<service>/, default
    /// ROOT /palisade, and discover dependencies there; needs the `etcd` feature).
    #[arg(long, default_value = "static")]
    registry: String,
    /// With etcd: the lease of the registration, in seconds (kept alive while the
    /// service runs; a killed service's key goes when it expires).
    #[arg(long, value_name = "SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    lease_ttl: u64,
    /// With `static`: a dependency's endpoints, NAME=ADDR[,ADDR...] (repeatable).
    #[arg(long = "endpoint", value_name = "NAME=ADDRS")]
    endpoints: Vec<String>,
    /// The folder holding the service's SQLite store.
    #[arg(long)]
    data_dir: PathBuf,
    /// palisade or plain.
    #[arg(long, default_value = "palisade")]
    mode: Mode,
    /// The token the admin API requires in x-admin-token.
    #[arg(long, env = "ORDER_DEMO_ADMIN_TOKEN")]
    admin_token: String,
    /// Seeds the fault dice.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// payment: payments processed at once (1..=1024).
    #[arg(long, default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    payment_workers: u16,
    /// payment: milliseconds per payment.
    #[arg(long, default_value_t = 40)]
    payment_time_ms: u64,
    /// gateway: requests per second per API key.
    #[arg(long, default_value_t = 16)]
    per_client_rate: u32,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::Run(args)) => run(args).await,
        None => run(cli.run).await,
    };
    if let Err(e) = result {
        eprintln!("order-demo: {e}");
        std::process::exit(1);
    }
}

async fn run(args: RunArgs) -> Result<(), BoxError> {
    let scenarios = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        args.scenarios
            .iter()
            .map(|name| {
                Scenario::from_name(name).ok_or_else(|| {
                    format!(
                        "unknown scenario {name:?}; expected one of {}",
                        runner::SCENARIO_NAMES.join(", ")
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    let _metrics = match args.metrics {
        Some(addr) if !addr.ip().is_loopback() => {
            return Err(format!("--metrics {addr}: the demo binds loopback addresses only").into());
        }
        Some(addr) => {
            order_demo::obs::install();
            let shutdown = CancellationToken::new();
            let listener = order_demo::server::bind(addr).await?;
            let handle = order_demo::server::spawn(
                listener,
                order_demo::obs::metrics_router(),
                shutdown.clone(),
            )?;
            eprintln!("metrics on http://{}/metrics", handle.addr());
            Some(shutdown.drop_guard())
        }
        None => None,
    };
    let options = Options {
        profile: if args.quick {
            Profile::quick()
        } else {
            Profile::full()
        },
        scenarios,
        seed: args.seed,
        out: args.out,
        progress: !args.no_progress,
    };
    let (runs, folder) = runner::run_all(&options).await?;
    println!("\n{}", runner::report::tables(&runs));
    println!("Report and charts: {}", folder.display());
    Ok(())
}

/// How long a served service waits for etcd to answer its registration.
#[cfg(feature = "etcd")]
const ETCD_PATIENCE: Duration = Duration::from_secs(10);

/// Where a served service's dependencies are found.
enum Discovery {
    /// Addresses from --endpoint, in an in-process registry.
    Static(Registry),
    /// Registration and discovery through etcd.
    #[cfg(feature = "etcd")]
    Etcd(order_demo::discovery::EtcdRegistry),
}

async fn serve(args: ServeArgs) -> Result<(), BoxError> {
    let flag: RegistryFlag = args.registry.parse()?;
    if !args.listen.ip().is_loopback() {
        return Err(format!(
            "--listen {}: the demo binds loopback addresses only",
            args.listen
        )
        .into());
    }
    let service: &'static str = order_demo::SERVICES
        .into_iter()
        .find(|s| *s == args.service)
        .ok_or_else(|| {
            format!(
                "unknown service {:?}; expected one of {}",
                args.service,
                order_demo::SERVICES.join(", ")
            )
        })?;
    let mut registrations = Vec::new();
    let discovery = match flag {
        RegistryFlag::Static => {
            let registry = Registry::new();
            for spec in &args.endpoints {
                let (name, addrs) = Registry::parse_endpoint(spec)?;
                registrations.extend(addrs.into_iter().map(|addr| registry.register(&name, addr)));
            }
            Discovery::Static(registry)
        }
        RegistryFlag::Etcd(etcd) => {
            if let Some(spec) = args.endpoints.first() {
                return Err(format!(
                    "--endpoint {spec}: with --registry {:?} dependencies are discovered in etcd; drop --endpoint",
                    etcd.url()
                )
                .into());
            }
            #[cfg(not(feature = "etcd"))]
            return Err(format!(
                "--registry {:?}: this order-demo was built without etcd support; build it with \
                 `--features etcd` (e.g. cargo run -p order-demo --features etcd -- serve ...; \
                 the build needs protoc)",
                etcd.url()
            )
            .into());
            #[cfg(feature = "etcd")]
            Discovery::Etcd(etcd)
        }
    };
    // Listening from the start, so a stop during startup still deregisters.
    let stop = stop_signal()?;
    order_demo::obs::install();
    std::fs::create_dir_all(&args.data_dir)?;
    let http = stack::http_client();
    let shutdown = CancellationToken::new();
    let mode = args.mode;
    let client = |downstream: &'static str| -> Result<stack::Client, BoxError> {
        let replicas = match &discovery {
            Discovery::Static(registry) => {
                if registry.endpoints(downstream).is_empty() {
                    return Err(format!(
                        "{service} calls {downstream}: pass --endpoint {downstream}=ADDR"
                    )
                    .into());
                }
                registry.replicas(downstream)?
            }
            #[cfg(feature = "etcd")]
            Discovery::Etcd(etcd) => etcd.replicas(downstream)?,
        };
        stack::client(service, downstream, mode, replicas, http.clone())
    };
    let dir = args.data_dir.as_path();
    let business = match service {
        "gateway" => services::gateway(GatewayClients {
            order: client("order")?,
            customer: client("customer")?,
            catalog: client("catalog")?,
        }),
        "order" => order::router(
            order_demo::store::Db::open(&dir.join("order.db"), order::SCHEMA)?,
            order::OrderClients {
                catalog: client("catalog")?,
                customer: client("customer")?,
                inventory: client("inventory")?,
                payment: client("payment")?,
                shipment: client("shipment")?,
            },
            shutdown.clone(),
        )?,
        "customer" => services::customer(services::customer_store(dir)?),
        "inventory" => services::inventory(services::inventory_store(dir)?),
        "payment" => services::payment(
            services::holds_store(dir, "payment")?,
            PaymentCapacity::new(
                usize::from(args.payment_workers),
                Duration::from_millis(args.payment_time_ms),
            ),
        ),
        "shipment" => services::shipment(services::holds_store(dir, "shipment")?),
        _ => services::catalog(services::catalog_store(dir)?),
    };
    let faults = order_demo::faults::layer(service, args.seed)?;
    let gateway = (service == "gateway").then_some(GatewayLimits {
        per_client_rate: args.per_client_rate,
        max_in_flight: 64,
    });
    let app = services::assemble(
        service,
        business,
        faults,
        Arc::from(args.admin_token.as_str()),
        mode,
        gateway,
    )?;
    let listener = order_demo::server::bind(args.listen).await?;
    let handle = order_demo::server::spawn(listener, app, shutdown.clone())?;
    // Registered once it serves, so no caller finds it before it answers.
    #[cfg(feature = "etcd")]
    let registration = match &discovery {
        Discovery::Etcd(etcd) => {
            let ttl = Duration::from_secs(args.lease_ttl);
            let registration = etcd
                .register(service, handle.addr(), ttl, ETCD_PATIENCE)
                .await?;
            println!(
                "{service} registered in etcd at {} as {} (lease {} s)",
                etcd.endpoint(),
                registration.key(),
                args.lease_ttl
            );
            Some(registration)
        }
        Discovery::Static(_) => None,
    };
    println!("{service} listening on http://{}", handle.addr());
    stop.await;
    // Deregistered before it stops serving, so callers move on first.
    #[cfg(feature = "etcd")]
    if let Some(registration) = registration {
        let key = registration.key().to_owned();
        match tokio::time::timeout(Duration::from_secs(3), registration.deregister()).await {
            Ok(Ok(())) => println!("{service} deregistered {key}"),
            Ok(Err(e)) => eprintln!(
                "order-demo: {service}: could not deregister {key} ({e}); it goes when its lease expires"
            ),
            Err(_) => eprintln!(
                "order-demo: {service}: etcd did not answer the deregistration of {key}; it goes when its lease expires"
            ),
        }
    }
    shutdown.cancel();
    Ok(())
}

/// Starts listening for ctrl-c (SIGINT) and SIGTERM at once; the future ends when
/// one arrives.
#[cfg(unix)]
fn stop_signal() -> Result<impl Future<Output = ()>, BoxError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// Listens for ctrl-c; the future ends when it arrives.
#[cfg(not(unix))]
fn stop_signal() -> Result<impl Future<Output = ()>, BoxError> {
    Ok(async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No ctrl-c to wait for: run until killed.
            std::future::pending::<()>().await;
        }
    })
}
