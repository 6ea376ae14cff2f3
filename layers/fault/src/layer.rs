use std::sync::Arc;

use palisade_core::{BoxError, ConfigError, Name};
use tower_layer::Layer;

use crate::config::FaultConfig;
use crate::handle::{FaultHandle, Shared};
use crate::protocol::{AnyRequest, Custom, Http, HttpWith};
use crate::service::Fault;

/// Injects latency, errors and connection failures into the calls of the services
/// it wraps, by percentage, optionally only for matching requests. Off until a
/// config is set, through [`FaultLayer::with_config`] or at runtime through its
/// [`FaultHandle`].
///
/// - [`FaultLayer::http`] wraps HTTP services: injected errors are responses with
///   the configured status, `match` rules pick requests by method, path prefix and
///   header, and [header faults](FaultLayer::allow_header_faults) can be allowed.
/// - [`FaultLayer::custom`] wraps any service: a closure builds the injected error.
///
/// The services' error type is [`palisade_core::Error`]; an abort fails the call with
/// [`Error::Inner`](palisade_core::Error::Inner) holding an [`std::io::Error`] of kind
/// `ConnectionReset` or `ConnectionRefused`.
///
/// ```
/// use palisade_fault::{FaultConfig, FaultLayer, LatencyFault};
/// use std::time::Duration;
///
/// let layer = FaultLayer::http("payment")?
///     .seed(42)
///     .with_config(FaultConfig {
///         latency: Some(LatencyFault::fixed(5.0, Duration::from_secs(2))),
///         ..Default::default()
///     })?;
/// let handle = layer.handle(); // for the admin API: set / clear at runtime
/// let svc = tower::ServiceBuilder::new().layer(layer).service_fn(
///     |_req: http::Request<String>| async {
///         Ok::<_, std::io::Error>(http::Response::new(String::from("paid")))
///     },
/// );
/// # drop((svc, handle));
/// # Ok::<(), palisade_core::ConfigError>(())
/// ```
#[derive(Debug)]
pub struct FaultLayer<P = Http, M = AnyRequest> {
    handle: FaultHandle,
    setup: Setup<P, M>,
}

impl<P, M> Clone for FaultLayer<P, M> {
    fn clone(&self) -> Self {
        Self {
            handle: self.handle.clone(),
            setup: self.setup.clone(),
        }
    }
}

/// What a layer's services share besides the faults in force.
#[derive(Debug)]
pub(crate) struct Setup<P, M> {
    pub(crate) protocol: Arc<P>,
    pub(crate) predicate: Arc<M>,
    pub(crate) header_faults: bool,
    pub(crate) seed: Option<u64>,
}

impl<P, M> Clone for Setup<P, M> {
    fn clone(&self) -> Self {
        Self {
            protocol: Arc::clone(&self.protocol),
            predicate: Arc::clone(&self.predicate),
            header_faults: self.header_faults,
            seed: self.seed,
        }
    }
}

fn checked_name(name: &str) -> Result<Name, ConfigError> {
    Name::new(name).map_err(|e| ConfigError::new("name", e.to_string()))
}

impl FaultLayer<Http, AnyRequest> {
    /// A layer for HTTP services of downstream (or server) `name`, the `downstream`
    /// metric label. Registers its metrics, at zero. Injects nothing until a config
    /// is set. Refuses a bad name (field `name`).
    pub fn http(name: &str) -> Result<Self, ConfigError> {
        let shared = Shared::new(checked_name(name)?, true);
        Ok(Self::from_parts(shared, Http))
    }
}

impl<F> FaultLayer<HttpWith<F>, AnyRequest> {
    /// A layer for HTTP services whose response body has no `Default` (such as
    /// hyper's `Incoming` on a client): `error` builds the result of an injected
    /// error from the status. Otherwise the same as [`FaultLayer::http`].
    ///
    /// ```
    /// use palisade_core::BoxError;
    /// use palisade_fault::FaultLayer;
    ///
    /// // A client whose responses cannot be made up fails the call instead.
    /// let layer = FaultLayer::http_with("catalog", |status: u16| {
    ///     Err::<http::Response<hyper::body::Incoming>, BoxError>(
    ///         format!("injected {status}").into(),
    ///     )
    /// })?;
    /// # drop(layer);
    /// # Ok::<(), palisade_core::ConfigError>(())
    /// ```
    pub fn http_with<RB>(name: &str, error: F) -> Result<Self, ConfigError>
    where
        F: Fn(u16) -> Result<http::Response<RB>, BoxError>,
    {
        let shared = Shared::new(checked_name(name)?, true);
        Ok(Self::from_parts(shared, HttpWith { error }))
    }
}

impl<E> FaultLayer<Custom<E>, AnyRequest> {
    /// A layer for any service: `error` builds the result of a call failed with an
    /// injected error from the configured status (usually an `Err`). Config `match`
    /// rules do not apply (use [`FaultLayer::matching`]); header faults do not
    /// exist.
    ///
    /// ```
    /// use palisade_core::BoxError;
    /// use palisade_fault::{ErrorFault, FaultConfig, FaultLayer};
    /// use tower::{Service, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), BoxError> {
    /// let layer = FaultLayer::custom("ledger", |status: u16| -> Result<u64, BoxError> {
    ///     Err(format!("injected failure {status}").into())
    /// })?
    /// .with_config(FaultConfig { error: Some(ErrorFault::new(100.0, 500)), ..Default::default() })?;
    /// let mut svc = tower::ServiceBuilder::new()
    ///     .layer(layer)
    ///     .service_fn(|n: u64| async move { Ok::<_, std::io::Error>(n * 2) });
    /// let err = svc.ready().await?.call(21).await.unwrap_err();
    /// assert_eq!(err.to_string(), "downstream error: injected failure 500");
    /// # Ok(())
    /// # }
    /// ```
    pub fn custom<Res>(name: &str, error: E) -> Result<Self, ConfigError>
    where
        E: Fn(u16) -> Result<Res, BoxError>,
    {
        let shared = Shared::new(checked_name(name)?, false);
        Ok(Self::from_parts(shared, Custom { error }))
    }
}

impl<P> FaultLayer<P, AnyRequest> {
    fn from_parts(shared: Shared, protocol: P) -> Self {
        Self {
            handle: FaultHandle {
                shared: Arc::new(shared),
            },
            setup: Setup {
                protocol: Arc::new(protocol),
                predicate: Arc::new(AnyRequest),
                header_faults: false,
                seed: None,
            },
        }
    }
}

impl<P, M> FaultLayer<P, M> {
    /// Puts `config` in force (the same as [`FaultHandle::set`]).
    pub fn with_config(self, config: FaultConfig) -> Result<Self, ConfigError> {
        self.handle.set(config)?;
        Ok(self)
    }

    /// Draws the random choices from a generator seeded with `seed`, so a test sees
    /// the same faults on every run. Each service made by the layer gets its own
    /// sequence, derived from `seed` and the order the services were made in.
    /// Default: seeded from the system.
    pub fn seed(mut self, seed: u64) -> Self {
        self.setup.seed = Some(seed);
        self
    }

    /// Only requests for which `predicate` returns true may get faults (in addition
    /// to the config's `match` rule, if any).
    ///
    /// ```
    /// use palisade_fault::FaultLayer;
    ///
    /// let layer = FaultLayer::http("inventory")?
    ///     .matching(|req: &http::Request<String>| req.uri().path() != "/health");
    /// # drop(layer);
    /// # Ok::<(), palisade_core::ConfigError>(())
    /// ```
    pub fn matching<Req, M2>(self, predicate: M2) -> FaultLayer<P, M2>
    where
        M2: Fn(&Req) -> bool,
    {
        FaultLayer {
            handle: self.handle,
            setup: Setup {
                protocol: self.setup.protocol,
                predicate: Arc::new(predicate),
                header_faults: self.setup.header_faults,
                seed: self.setup.seed,
            },
        }
    }

    /// The handle that sets and clears this layer's faults at runtime.
    pub fn handle(&self) -> FaultHandle {
        self.handle.clone()
    }

    /// The layer's name.
    pub fn name(&self) -> &Name {
        self.handle.name()
    }
}

impl<P: HttpProtocol, M> FaultLayer<P, M> {
    /// Lets each request ask for its own faults with the
    /// [`x-palisade-fault`](crate::FAULT_HEADER) header (e.g.
    /// `delay=200ms;error=503`), applied for certain and instead of the configured
    /// faults. Default: off.
    ///
    /// **Never allow this where untrusted callers can reach the service**: anyone
    /// who can send the header can then slow down or fail requests at will. Use it on
    /// internal test setups only. With it off (the default) the header is removed
    /// from every request, so it reaches neither the service nor a later hop.
    pub fn allow_header_faults(mut self, allow: bool) -> Self {
        self.setup.header_faults = allow;
        self
    }
}

impl<S, P, M> Layer<S> for FaultLayer<P, M> {
    type Service = Fault<S, P, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Fault::new(inner, Arc::clone(&self.handle.shared), self.setup.clone())
    }
}

/// The protocols whose requests can carry the fault header.
pub trait HttpProtocol: sealed::Sealed {}

impl HttpProtocol for Http {}
impl<F> HttpProtocol for HttpWith<F> {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Http {}
    impl<F> Sealed for super::HttpWith<F> {}
}
