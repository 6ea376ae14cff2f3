//! The order system as separate `order-demo serve` processes that register in, and
//! find each other through, a real etcd. Needs the `etcd` feature and
//! `PALISADE_ETCD_ENDPOINTS` (`.ci/etcd.sh` starts etcd and sets it); without the
//! variable the test prints a note and returns.
#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use order_demo::discovery::RegistryFlag;
use order_demo::stack::{self, HttpClient};
use palisade::balance::Balance;
use palisade::balance::discover::etcd::EtcdSource;
use tokio::time::Instant;

fn etcd_endpoint() -> Option<String> {
    let endpoints = std::env::var("PALISADE_ETCD_ENDPOINTS").unwrap_or_default();
    match endpoints.split(',').map(str::trim).find(|e| !e.is_empty()) {
        // `order-demo serve` takes HOST:PORT (etcd-client also takes URLs).
        Some(first) => Some(first.trim_start_matches("http://").to_owned()),
        None => {
            // CI sets PALISADE_REQUIRE_ETCD: there a missing etcd fails the test
            // rather than skipping it.
            assert!(
                std::env::var_os("PALISADE_REQUIRE_ETCD").is_none(),
                "PALISADE_REQUIRE_ETCD is set but PALISADE_ETCD_ENDPOINTS is not"
            );
            println!("note: etcd test skipped; set PALISADE_ETCD_ENDPOINTS (see .ci/etcd.sh)");
            None
        }
    }
}

/// A key root of this run's own, so reruns and parallel runs never share keys.
fn unique_root() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("/order-demo-test/{}-{:x}", std::process::id(), h.finish())
}

/// One `order-demo serve` process.
struct Served {
    name: String,
    child: Child,
}

/// Every process the test started; all are killed when it ends, however it ends.
struct Processes {
    running: Vec<Served>,
    url: String,
    dir: tempfile::TempDir,
}

impl Processes {
    fn new(url: String) -> Self {
        Self {
            running: Vec::new(),
            url,
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    /// Starts `service` (called `name` here) with a lease of `lease_ttl` seconds
    /// and waits until it is registered and listening.
    async fn start(&mut self, name: &str, service: &str, lease_ttl: u64) -> SocketAddr {
        let log = self.dir.path().join(format!("{name}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_order-demo"))
            .args(["serve", service, "--listen", "127.0.0.1:0"])
            .args(["--registry", &self.url])
            .args(["--lease-ttl", &lease_ttl.to_string()])
            .arg("--data-dir")
            .arg(self.dir.path())
            .args(["--admin-token", "test-token"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("a log file"))
            .spawn()
            .expect("order-demo starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        // Reads the process's stdout to the end, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let listening = format!("{service} listening on http://");
        let addr = loop {
            match tokio::time::timeout(Duration::from_secs(20), lines.recv()).await {
                Ok(Some(line)) => {
                    if let Some(addr) = line.strip_prefix(&listening) {
                        break addr.parse().expect("a listen address");
                    }
                }
                // Exited (stdout closed) or still not listening.
                Ok(None) | Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "{name} did not start within 20 s; its stderr:\n{}",
                        read_log(&log)
                    );
                }
            }
        };
        self.running.push(Served {
            name: name.to_owned(),
            child,
        });
        addr
    }

    fn served(&mut self, name: &str) -> &mut Served {
        self.running
            .iter_mut()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name} was started"))
    }

    /// Kills `name` at once (SIGKILL): it cannot deregister.
    fn kill(&mut self, name: &str) {
        let served = self.served(name);
        served.child.kill().expect("the process is killed");
        served.child.wait().expect("the process is reaped");
    }

    /// Asks `name` to stop (SIGTERM) and waits until it has exited.
    async fn terminate(&mut self, name: &str) {
        let served = self.served(name);
        let sent = Command::new("kill")
            .args(["-TERM", &served.child.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(sent.success(), "SIGTERM sent to {name}");
        let start = Instant::now();
        let status = loop {
            if let Some(status) = served.child.try_wait().expect("the process's status") {
                break status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{name} did not stop within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "{name} stopped cleanly: {status}");
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for served in &mut self.running {
            let _ = served.child.kill();
            let _ = served.child.wait();
        }
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("({e})"))
}

/// Follows the keys under `prefix` in etcd, as the services' clients do.
fn watch_keys(endpoint: &str, service: &str, prefix: &str) -> Balance<impl Sized + use<>> {
    let source = EtcdSource::builder(service, vec![endpoint.to_owned()])
        .prefix(prefix)
        .build()
        .expect("the watch starts");
    let make = |addr: SocketAddr| {
        tower::service_fn(move |_: ()| async move { Ok::<_, std::io::Error>(addr) })
    };
    Balance::builder(service)
        .without_metrics()
        .build(source, make)
        .expect("the watcher builds")
}

fn registered(watch: &Balance<impl Sized>) -> Vec<SocketAddr> {
    watch.endpoints().iter().map(|e| e.addr).collect()
}

async fn until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

/// A customer overview through the gateway: its status, and the parts it says are
/// degraded (a stale or missing price list among them).
async fn overview(http: &HttpClient, gateway: SocketAddr, customer: u32) -> (StatusCode, String) {
    let req = Request::get(format!("http://{gateway}/customers/{customer}/overview"))
        .header("x-api-key", "demo-key-0")
        .body(Full::new(Bytes::new()))
        .expect("a request");
    let res = http.request(req).await.expect("the gateway answers");
    let status = res.status();
    let body = res.into_body().collect().await.expect("a body").to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    (status, json["degraded"].to_string())
}

/// Places an order through the gateway; its status.
async fn place_order(http: &HttpClient, gateway: SocketAddr, id: &str) -> StatusCode {
    let req = Request::post(format!("http://{gateway}/orders"))
        .header("x-api-key", "demo-key-1")
        .header("idempotency-key", id)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"customer_id": 2, "sku": 3, "qty": 1}"#,
        )))
        .expect("a request");
    http.request(req)
        .await
        .expect("the gateway answers")
        .status()
}

async fn metrics(http: &HttpClient, addr: SocketAddr) -> String {
    let req = Request::get(format!("http://{addr}/metrics"))
        .body(Full::new(Bytes::new()))
        .expect("a request");
    let res = http.request(req).await.expect("/metrics answers");
    let body = res.into_body().collect().await.expect("a body").to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_processes_find_each_other_in_etcd_and_follow_replicas_that_come_and_go() {
    let Some(endpoint) = etcd_endpoint() else {
        return;
    };
    let url = format!("etcd://{endpoint}{}", unique_root());
    let Ok(RegistryFlag::Etcd(etcd)) = url.parse::<RegistryFlag>() else {
        panic!("{url} is a valid --registry value");
    };
    let catalogs = watch_keys(&endpoint, "catalog", &etcd.prefix("catalog"));
    let gateways = watch_keys(&endpoint, "gateway", &etcd.prefix("gateway"));

    let mut processes = Processes::new(url);
    for service in ["customer", "inventory", "payment", "shipment"] {
        processes.start(service, service, 5).await;
    }
    // catalog-a's short lease shows how soon a killed replica is forgotten.
    let catalog_a = processes.start("catalog-a", "catalog", 2).await;
    let catalog_b = processes.start("catalog-b", "catalog", 5).await;
    processes.start("order", "order", 5).await;
    // The gateway's long lease shows that a clean stop deregisters at once.
    let gateway = processes.start("gateway", "gateway", 60).await;

    let mut both = vec![catalog_a, catalog_b];
    both.sort();
    until("both catalogs in etcd", Duration::from_secs(5), || {
        registered(&catalogs) == both
    })
    .await;
    until("the gateway in etcd", Duration::from_secs(5), || {
        registered(&gateways) == vec![gateway]
    })
    .await;

    // The gateway and order found their dependencies in etcd: a full overview (no
    // part missing or stale) and a placed order.
    let http = stack::http_client();
    let mut answer = (StatusCode::BAD_GATEWAY, String::new());
    let start = Instant::now();
    while answer != (StatusCode::OK, "[]".to_owned()) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no full overview within 10 s; the last answer: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        answer = overview(&http, gateway, 1).await;
    }
    assert_eq!(
        place_order(&http, gateway, "etcd-order-1").await,
        StatusCode::CREATED
    );
    let gateway_metrics = metrics(&http, gateway).await;
    assert!(
        gateway_metrics.contains(r#"source="etcd""#),
        "the gateway's discovery metrics say etcd:\n{gateway_metrics}"
    );

    // One catalog replica dies without deregistering: every call still succeeds
    // with fresh prices, while its key stays until its lease expires...
    processes.kill("catalog-a");
    let killed = Instant::now();
    for customer in 1..=6 {
        assert_eq!(
            overview(&http, gateway, customer).await,
            (StatusCode::OK, "[]".to_owned()),
            "overview of customer {customer} with catalog-a dead"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        place_order(&http, gateway, "etcd-order-2").await,
        StatusCode::CREATED
    );
    // ...and then it is gone.
    until(
        "catalog-a's key to expire with its 2 s lease",
        Duration::from_secs(8),
        || registered(&catalogs) == vec![catalog_b],
    )
    .await;
    println!(
        "catalog-a's key went {:?} after it was killed",
        killed.elapsed()
    );

    // A new replica comes, the last old one dies: the gateway answers with fresh
    // prices only if it found the newcomer in etcd.
    let catalog_c = processes.start("catalog-c", "catalog", 5).await;
    let mut now = vec![catalog_b, catalog_c];
    now.sort();
    until("catalog-c in etcd", Duration::from_secs(5), || {
        registered(&catalogs) == now
    })
    .await;
    processes.kill("catalog-b");
    let mut answer = (StatusCode::BAD_GATEWAY, String::new());
    let start = Instant::now();
    while answer != (StatusCode::OK, "[]".to_owned()) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no fresh prices from catalog-c within 10 s; the last answer: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        answer = overview(&http, gateway, 7).await;
    }

    // A clean stop (SIGTERM) deregisters at once, long before the 60 s lease ends.
    processes.terminate("gateway").await;
    let took = until(
        "the stopped gateway's key to go",
        Duration::from_secs(5),
        || registered(&gateways).is_empty(),
    )
    .await;
    println!("the gateway's key went {took:?} after it stopped");
}
