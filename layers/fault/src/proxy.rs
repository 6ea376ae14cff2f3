//! A small TCP chaos proxy: network faults between a client and a real server,
//! where the kernel cannot inject them (no netem).
//!
//! [`ChaosProxy`] listens on a loopback port and forwards every connection to an
//! upstream address. Its [`ProxyConfig`], changeable at runtime, adds:
//!
//! - **latency** per direction (each chunk is held back that long; up to 32 chunks
//!   of at most 16 KiB wait per direction, so with latency `L` a direction carries
//!   at most 512 KiB per `L`),
//! - **resets** mid-stream: a share of connections is reset (TCP RST) after a number
//!   of bytes have gone to the client,
//! - a **blackhole**: bytes are read and dropped, nothing is ever answered (new
//!   connections are accepted and wait; when it lifts, every connection forwards
//!   again),
//! - a **bandwidth cap** per direction of each connection,
//! - **refusal**: the listening socket is closed, so connects fail with
//!   `ConnectionRefused`, and reopened on the same port when refusal ends.
//!
//! Connections are bounded ([`ChaosProxyBuilder::max_connections`]; one more is
//! reset at once), and [`ChaosProxy::shutdown`] (or dropping the proxy) closes the
//! listener and every connection.
//!
//! ```no_run
//! use palisade_fault::proxy::{ChaosProxy, ProxyConfig};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let upstream = "127.0.0.1:5432".parse()?;
//! let proxy = ChaosProxy::start("127.0.0.1:0".parse()?, upstream).await?;
//! // Point the client at proxy.local_addr() instead of the upstream.
//! proxy.set(ProxyConfig {
//!     latency_to_client: Duration::from_millis(200),
//!     bandwidth: Some(64 * 1024),
//!     ..ProxyConfig::default()
//! })?;
//! proxy.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use palisade_core::ConfigError;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, sleep, sleep_until};

use crate::config::MAX_DELAY;

/// The faults a [`ChaosProxy`] injects. The default forwards untouched.
///
/// ```
/// use palisade_fault::proxy::ProxyConfig;
///
/// let config: ProxyConfig = serde_json::from_str(r#"{
///     "latency_to_client": "150ms",
///     "reset": { "percent": 25, "after_bytes": 1024 },
///     "bandwidth": 65536
/// }"#).unwrap();
/// config.validate().unwrap();
///
/// let bad: ProxyConfig = serde_json::from_str(r#"{ "bandwidth": 0 }"#).unwrap();
/// assert_eq!(bad.validate().unwrap_err().to_string(), "bandwidth: must be more than zero");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Added to every chunk going from the client to the upstream. At most 1 hour.
    #[serde(with = "humantime_serde")]
    pub latency_to_upstream: Duration,
    /// Added to every chunk going from the upstream to the client. At most 1 hour.
    #[serde(with = "humantime_serde")]
    pub latency_to_client: Duration,
    /// Reset a share of new connections mid-stream. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset: Option<ResetFault>,
    /// Read and drop every byte in both directions; answer nothing. New connections
    /// are accepted but not forwarded.
    pub blackhole: bool,
    /// Bytes per second, for each direction of each connection. Default: no cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<u64>,
    /// Close the listening socket: new connects fail with `ConnectionRefused`.
    /// Open connections go on.
    pub refuse: bool,
}

/// Resets: `percent` of new connections are reset (TCP RST) once `after_bytes`
/// bytes have been sent to the client (0: as soon as the upstream answers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetFault {
    /// Share of new connections reset, `0..=100`. Default 100.
    #[serde(default = "hundred")]
    pub percent: f64,
    /// Bytes sent to the client before the reset. Default 0.
    #[serde(default)]
    pub after_bytes: u64,
}

fn hundred() -> f64 {
    100.0
}

impl ProxyConfig {
    /// Checks every value, naming the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, latency) in [
            ("latency_to_upstream", self.latency_to_upstream),
            ("latency_to_client", self.latency_to_client),
        ] {
            if latency > MAX_DELAY {
                return Err(ConfigError::new(
                    field,
                    format!("{} is longer than 1h", humantime::format_duration(latency)),
                ));
            }
        }
        if let Some(reset) = &self.reset
            && !(0.0..=100.0).contains(&reset.percent)
        {
            return Err(ConfigError::new(
                "reset.percent",
                format!("{} is not within 0..=100", reset.percent),
            ));
        }
        if self.bandwidth == Some(0) {
            return Err(ConfigError::new("bandwidth", "must be more than zero"));
        }
        Ok(())
    }
}

/// Builds a [`ChaosProxy`] with options beyond [`ChaosProxy::start`]'s defaults.
#[derive(Debug, Clone)]
pub struct ChaosProxyBuilder {
    upstream: SocketAddr,
    max_connections: usize,
    config: ProxyConfig,
    seed: Option<u64>,
}

impl ChaosProxyBuilder {
    /// At most this many connections at once (default 256); one more is reset as
    /// soon as it is accepted. Refuses 0 (field `max_connections`).
    pub fn max_connections(mut self, max: usize) -> Result<Self, ConfigError> {
        if max == 0 {
            return Err(ConfigError::new(
                "max_connections",
                "must be more than zero",
            ));
        }
        self.max_connections = max;
        Ok(self)
    }

    /// The faults in force from the start (default: none).
    pub fn config(mut self, config: ProxyConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        self.config = config;
        Ok(self)
    }

    /// Seeds the choice of which connections are reset, for reproducible tests.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Binds `listen` (use `127.0.0.1:0` for a free loopback port) and starts
    /// forwarding to the upstream. Must be called within a tokio runtime.
    pub async fn start(self, listen: SocketAddr) -> std::io::Result<ChaosProxy> {
        let listener = bind(listen)?;
        let local_addr = listener.local_addr()?;
        let (config_tx, config_rx) = watch::channel(Arc::new(self.config));
        let (stop_tx, stop_rx) = oneshot::channel();
        let active = Arc::new(AtomicUsize::new(0));
        let rng = self
            .seed
            .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
        let accept = AcceptLoop {
            local_addr,
            upstream: self.upstream,
            max_connections: self.max_connections,
            config: config_rx,
            active: Arc::clone(&active),
            rng,
        };
        let task = tokio::spawn(accept.run(listener, stop_rx));
        tracing::debug!(%local_addr, upstream = %self.upstream, "chaos proxy started");
        Ok(ChaosProxy {
            handle: ProxyHandle {
                config: Arc::new(config_tx),
                active,
            },
            local_addr,
            upstream: self.upstream,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }
}

/// A running TCP chaos proxy. Dropping it stops it (as [`ChaosProxy::shutdown`]
/// does, without waiting).
#[derive(Debug)]
pub struct ChaosProxy {
    handle: ProxyHandle,
    local_addr: SocketAddr,
    upstream: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Changes a [`ChaosProxy`]'s faults at runtime. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ProxyHandle {
    config: Arc<watch::Sender<Arc<ProxyConfig>>>,
    active: Arc<AtomicUsize>,
}

impl ProxyHandle {
    /// Validates `config` and puts it in force. Latency, bandwidth and blackhole
    /// apply to open connections too; resets to connections opened from now on;
    /// refusal closes or reopens the listening socket. A refused config leaves the
    /// current one in force.
    pub fn set(&self, config: ProxyConfig) -> Result<(), ConfigError> {
        config.validate()?;
        tracing::info!(?config, "chaos proxy faults set");
        self.config.send_replace(Arc::new(config));
        Ok(())
    }

    /// Changes part of the config in place, e.g. `handle.update(|c| c.refuse = true)`.
    pub fn update(&self, change: impl FnOnce(&mut ProxyConfig)) -> Result<(), ConfigError> {
        let mut config = self.config();
        change(&mut config);
        self.set(config)
    }

    /// Removes every fault: the proxy forwards untouched.
    pub fn clear(&self) {
        self.config.send_replace(Arc::new(ProxyConfig::default()));
    }

    /// The faults in force.
    pub fn config(&self) -> ProxyConfig {
        ProxyConfig::clone(&self.config.borrow())
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}

impl ChaosProxy {
    /// Starts a proxy on `listen` (use `127.0.0.1:0`) forwarding to `upstream`,
    /// with no faults and at most 256 connections.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<Self> {
        Self::builder(upstream).start(listen).await
    }

    /// A builder for a proxy forwarding to `upstream`.
    pub fn builder(upstream: SocketAddr) -> ChaosProxyBuilder {
        ChaosProxyBuilder {
            upstream,
            max_connections: 256,
            config: ProxyConfig::default(),
            seed: None,
        }
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address connections are forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// A handle to change the faults from elsewhere.
    pub fn handle(&self) -> ProxyHandle {
        self.handle.clone()
    }

    /// See [`ProxyHandle::set`].
    pub fn set(&self, config: ProxyConfig) -> Result<(), ConfigError> {
        self.handle.set(config)
    }

    /// See [`ProxyHandle::update`].
    pub fn update(&self, change: impl FnOnce(&mut ProxyConfig)) -> Result<(), ConfigError> {
        self.handle.update(change)
    }

    /// See [`ProxyHandle::clear`].
    pub fn clear(&self) {
        self.handle.clear()
    }

    /// See [`ProxyHandle::config`].
    pub fn config(&self) -> ProxyConfig {
        self.handle.config()
    }

    /// See [`ProxyHandle::connections`].
    pub fn connections(&self) -> usize {
        self.handle.connections()
    }

    /// Closes the listener and every connection, and waits until they are closed.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        tracing::debug!(local_addr = %self.local_addr, "chaos proxy stopped");
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        // Dropping the stop sender ends the accept loop, which closes every
        // connection; abort in case the runtime is going away.
        self.stop.take();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Reopening after refusal binds the same port while accepted connections of
    // the old socket may linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

struct AcceptLoop {
    local_addr: SocketAddr,
    upstream: SocketAddr,
    max_connections: usize,
    config: watch::Receiver<Arc<ProxyConfig>>,
    active: Arc<AtomicUsize>,
    rng: fastrand::Rng,
}

/// Counts a connection as open while it lives.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AcceptLoop {
    async fn run(mut self, listener: TcpListener, mut stop: oneshot::Receiver<()>) {
        let mut listener = Some(listener);
        let mut connections = JoinSet::new();
        let mut rebind_failed = false;
        loop {
            let refuse = self.config.borrow_and_update().refuse;
            if refuse && listener.is_some() {
                tracing::debug!(local_addr = %self.local_addr, "refusing connections");
                listener = None;
            } else if !refuse && listener.is_none() {
                match bind(self.local_addr) {
                    Ok(l) => {
                        listener = Some(l);
                        rebind_failed = false;
                    }
                    Err(error) => {
                        if !rebind_failed {
                            tracing::warn!(%error, local_addr = %self.local_addr,
                                "chaos proxy cannot reopen its port; retrying");
                        }
                        rebind_failed = true;
                    }
                }
            }
            tokio::select! {
                _ = &mut stop => break,
                changed = self.config.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = sleep(Duration::from_millis(100)), if rebind_failed => {}
                accepted = accept(listener.as_ref()) => match accepted {
                    Ok((client, _)) => self.admit(client, &mut connections),
                    Err(error) => {
                        // Out of descriptors and the like: back off briefly.
                        tracing::warn!(%error, "chaos proxy accept failed");
                        sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(listener);
        connections.shutdown().await;
    }

    fn admit(&mut self, client: TcpStream, connections: &mut JoinSet<()>) {
        if connections.len() >= self.max_connections {
            tracing::warn!(
                max = self.max_connections,
                "chaos proxy full; connection reset"
            );
            reset(client);
            return;
        }
        let config = Arc::clone(&self.config.borrow());
        let reset_after = match &config.reset {
            Some(r) if self.rng.f64() * 100.0 < r.percent => Some(r.after_bytes),
            _ => None,
        };
        self.active.fetch_add(1, Ordering::Relaxed);
        let open = Open(Arc::clone(&self.active));
        let conn = Connection {
            config: self.config.clone(),
            reset_after,
        };
        connections.spawn(conn.run(client, self.upstream, config.blackhole, open));
    }
}

async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Closes `stream` with a TCP RST.
fn reset(stream: TcpStream) {
    // With a zero linger time, closing sends RST instead of FIN.
    let _ = stream.set_zero_linger();
    drop(stream);
}

struct Connection {
    config: watch::Receiver<Arc<ProxyConfig>>,
    /// Reset once this many bytes have gone to the client.
    reset_after: Option<u64>,
}

/// How one direction of a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The reading side closed and everything was passed on.
    Closed,
    /// The connection is to be reset (fault, or an I/O error on either side).
    Reset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToUpstream,
    ToClient,
}

impl Connection {
    async fn run(self, mut client: TcpStream, upstream: SocketAddr, blackholed: bool, _open: Open) {
        let _ = client.set_nodelay(true);
        if blackholed {
            // Accepted, not forwarded while the blackhole lasts: what the client
            // sends is dropped, as on an open connection. When the blackhole lifts,
            // the connection is forwarded like any other (it used to stay dead until
            // the client gave up on it).
            let mut config = self.config.clone();
            let mut buf = [0u8; 4096];
            while config.borrow_and_update().blackhole {
                tokio::select! {
                    // A lifted blackhole is seen before the bytes sent after it.
                    biased;
                    changed = config.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    read = client.read(&mut buf) => match read {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    },
                }
            }
        }
        let mut server = match TcpStream::connect(upstream).await {
            Ok(s) => s,
            Err(error) => {
                tracing::debug!(%error, %upstream, "chaos proxy cannot reach upstream");
                reset(client);
                return;
            }
        };
        let _ = server.set_nodelay(true);
        let ended = {
            let (client_read, client_write) = client.split();
            let (server_read, server_write) = server.split();
            let up = self.pipe(client_read, server_write, Direction::ToUpstream);
            let down = self.pipe(server_read, client_write, Direction::ToClient);
            tokio::pin!(up, down);
            let (mut up_done, mut down_done) = (false, false);
            loop {
                let ended = tokio::select! {
                    e = &mut up, if !up_done => { up_done = true; e }
                    e = &mut down, if !down_done => { down_done = true; e }
                };
                if ended == Ended::Reset {
                    break Ended::Reset;
                }
                if up_done && down_done {
                    break Ended::Closed;
                }
            }
        };
        if ended == Ended::Reset {
            reset(client);
            reset(server);
        }
    }

    /// Moves bytes one way: a reader queues chunks stamped with their arrival, a
    /// writer sends each once its latency has passed, paced by the bandwidth cap.
    async fn pipe<R, W>(&self, mut from: R, mut to: W, direction: Direction) -> Ended
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(32);
        let config = self.config.clone();
        let read = async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match from.read(&mut buf).await {
                    Ok(0) => return Ended::Closed,
                    Ok(n) => {
                        if config.borrow().blackhole {
                            continue;
                        }
                        if tx.send((Instant::now(), buf[..n].to_vec())).await.is_err() {
                            return Ended::Closed;
                        }
                    }
                    Err(_) => return Ended::Reset,
                }
            }
        };
        let mut config = self.config.clone();
        let reset_after = match direction {
            Direction::ToClient => self.reset_after,
            Direction::ToUpstream => None,
        };
        let write = async move {
            let mut sent: u64 = 0;
            let mut next_free = Instant::now();
            if reset_after == Some(0) {
                // Reset as soon as the upstream answers.
                return match rx.recv().await {
                    Some(_) => Ended::Reset,
                    None => {
                        // The upstream closed without answering: pass the close on.
                        let _ = to.shutdown().await;
                        Ended::Closed
                    }
                };
            }
            while let Some((arrived, chunk)) = rx.recv().await {
                let (latency, bandwidth) = {
                    let c = config.borrow_and_update();
                    let latency = match direction {
                        Direction::ToUpstream => c.latency_to_upstream,
                        Direction::ToClient => c.latency_to_client,
                    };
                    (latency, c.bandwidth)
                };
                sleep_until(arrived + latency).await;
                let mut chunk = &chunk[..];
                let mut reset_now = false;
                if let Some(limit) = reset_after {
                    let room = usize::try_from(limit - sent).unwrap_or(usize::MAX);
                    if chunk.len() >= room {
                        chunk = &chunk[..room];
                        reset_now = true;
                    }
                }
                // Pace in slices of a twentieth of a second's worth of bytes.
                let slice = bandwidth.map_or(chunk.len(), |b| {
                    usize::try_from(b / 20).unwrap_or(usize::MAX).max(1)
                });
                for piece in chunk.chunks(slice.max(1)) {
                    if let Some(rate) = bandwidth {
                        sleep_until(next_free).await;
                        let cost = Duration::from_secs_f64(piece.len() as f64 / rate as f64);
                        next_free = next_free.max(Instant::now()) + cost;
                    }
                    if to.write_all(piece).await.is_err() {
                        return Ended::Reset;
                    }
                    sent += piece.len() as u64;
                }
                if reset_now {
                    let _ = to.flush().await;
                    return Ended::Reset;
                }
            }
            let _ = to.shutdown().await;
            Ended::Closed
        };
        tokio::pin!(read, write);
        // The writer ends cleanly only once the reader has ended and the queue is
        // drained; a reset on either side ends the direction at once.
        tokio::select! {
            ended = &mut write => ended,
            ended = &mut read => match ended {
                Ended::Reset => Ended::Reset,
                Ended::Closed => write.await,
            },
        }
    }
}
