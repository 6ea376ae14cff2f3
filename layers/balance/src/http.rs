//! HTTP endpoints: point each request at the endpoint's address.

use std::net::SocketAddr;
use std::task::{Context, Poll};

use http::uri::{Authority, Scheme, Uri};
use tower_service::Service;

/// Rewrites each request's URI to the endpoint's address (scheme `http` unless the
/// request names one) and passes it to `inner` — typically one shared hyper client.
///
/// ```
/// use palisade_balance::http::SetAuthority;
/// use tower::{Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let client = tower::service_fn(|req: http::Request<()>| async move {
///     Ok::<_, std::io::Error>(req.uri().to_string())
/// });
/// let make = SetAuthority::maker(client);
/// let mut svc = palisade_balance::MakeEndpoint::make_endpoint(&make, "127.0.0.1:8001".parse().unwrap());
/// let req = http::Request::get("/items?sku=1").body(()).unwrap();
/// assert_eq!(svc.ready().await.unwrap().call(req).await.unwrap(), "http://127.0.0.1:8001/items?sku=1");
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct SetAuthority<S> {
    inner: S,
    authority: Authority,
}

impl<S> SetAuthority<S> {
    /// Sends requests through `inner` to `addr`.
    pub fn new(inner: S, addr: SocketAddr) -> Self {
        let authority = Authority::try_from(addr.to_string())
            .expect("a socket address is a valid URI authority");
        Self { inner, authority }
    }

    /// A [`MakeEndpoint`](crate::MakeEndpoint) that wraps a clone of `inner` for each
    /// endpoint.
    pub fn maker(inner: S) -> MakeSetAuthority<S>
    where
        S: Clone,
    {
        MakeSetAuthority { inner }
    }
}

/// Makes a [`SetAuthority`] per endpoint from one inner service; see
/// [`SetAuthority::maker`].
#[derive(Debug, Clone)]
pub struct MakeSetAuthority<S> {
    inner: S,
}

impl<S: Clone> crate::MakeEndpoint for MakeSetAuthority<S> {
    type Service = SetAuthority<S>;
    fn make_endpoint(&self, addr: SocketAddr) -> SetAuthority<S> {
        SetAuthority::new(self.inner.clone(), addr)
    }
}

impl<S, B> Service<http::Request<B>> for SetAuthority<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.authority = Some(self.authority.clone());
        if parts.scheme.is_none() {
            parts.scheme = Some(Scheme::HTTP);
        }
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        // Scheme, authority and path are all set: the parts always form a URI.
        *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
        self.inner.call(req)
    }
}
