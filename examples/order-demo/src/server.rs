//! Serving an axum router on a loopback listener, with a switch that takes the
//! server down (connections refused, open connections closed) and back up on the
//! same port, and a shutdown that ends every connection.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The peer address of the connection a request came on (a request extension).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Closes the connection a request came on (a request extension): used to inject
/// connection-level aborts.
#[derive(Debug, Clone)]
pub struct AbortConnection(Arc<Notify>);

impl AbortConnection {
    /// Drops the connection without answering.
    pub fn abort(&self) {
        self.0.notify_one();
    }
}

/// A running server: its address and its up/down switch.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    addr: SocketAddr,
    down: Arc<watch::Sender<bool>>,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Takes the server down (`true`: the listener is closed, open connections are
    /// dropped, new ones are refused) or brings it back up on the same port.
    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }

    /// Whether the server is down.
    pub fn is_down(&self) -> bool {
        *self.down.borrow()
    }
}

/// Binds a listener on `addr` (use port 0 for any free port).
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `app` on `listener` until `shutdown` is cancelled.
pub fn spawn(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> io::Result<ServerHandle> {
    let addr = listener.local_addr()?;
    let (down, _) = watch::channel(false);
    let down = Arc::new(down);
    tokio::spawn(accept_loop(
        Some(listener),
        addr,
        app,
        down.clone(),
        shutdown,
    ));
    Ok(ServerHandle { addr, down })
}

async fn accept_loop(
    mut listener: Option<TcpListener>,
    addr: SocketAddr,
    app: Router,
    down: Arc<watch::Sender<bool>>,
    shutdown: CancellationToken,
) {
    let mut down_rx = down.subscribe();
    loop {
        let Some(active) = listener.as_ref() else {
            // Down: wait to be brought up, then bind the same port again.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = down_rx.wait_for(|d| !*d) => if changed.is_err() { return },
            }
            loop {
                match TcpListener::bind(addr).await {
                    Ok(l) => {
                        listener = Some(l);
                        break;
                    }
                    Err(_) => tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    },
                }
            }
            continue;
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = down_rx.wait_for(|d| *d) => {
                listener = None;
                continue;
            }
            accepted = active.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(_) => {
                // Out of file descriptors or similar: back off briefly.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(
            stream,
            peer,
            app.clone(),
            down.subscribe(),
            shutdown.clone(),
        ));
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    mut down: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    let abort = Arc::new(Notify::new());
    let on_request = AbortConnection(abort.clone());
    let svc = tower::service_fn(move |mut req: http::Request<Incoming>| {
        req.extensions_mut().insert(Peer(peer));
        req.extensions_mut().insert(on_request.clone());
        app.clone().oneshot(req)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc));
    // Biased, switches first: a connection woken by a request after the server went
    // down is closed, never served.
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => {}
        _ = down.wait_for(|d| *d) => {}
        _ = abort.notified() => {}
        _ = conn => {}
    }
}
