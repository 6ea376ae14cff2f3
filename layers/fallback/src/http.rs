//! HTTP: request keys, buffered and shareable responses, and the marks that tell a
//! caller a response came from the cache or a fallback.
//!
//! - [`HttpKey`] keys a request by method, scheme and authority (when the URI has
//!   them), path, query and chosen headers; only `GET` and `HEAD` by default.
//!   Requests with another method, a header value that is not visible ASCII, or a
//!   key longer than the bound pass through untouched.
//! - [`HttpStore`] buffers response bodies up to a bound so a response can be cached
//!   and handed to every coalesced waiter; a larger body streams on to one caller
//!   and is not cached. A response with `Cache-Control` `no-store`, `private`,
//!   `no-cache`, `must-revalidate` or `proxy-revalidate` is not cached (this cache
//!   serves many callers, and serves stale when the downstream fails). Responses
//!   are keyed, not matched on `Vary`: add the headers they vary by to the key.
//! - Responses from the cache carry an `Age` header (whole seconds), the
//!   `x-palisade-cache` header (`hit` or `stale`) and a [`Served`] extension.
//! - [`HttpMark`] marks fallback responses with `x-palisade-fallback: <reason>` and
//!   a [`ServedFallback`] extension.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{AGE, CACHE_CONTROL, CONTENT_LENGTH};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use palisade_core::{BoxError, ConfigError, HttpClassifier};
use pin_project::pin_project;

use crate::config::{CacheConfig, CoalesceConfig};
use crate::fallback::MarkFallback;
use crate::key::{KeyFn, KeyOf};
use crate::store::{Captured, Served, Store, StoreOf};
use crate::{CacheLayer, CoalesceLayer, FallbackReason};

/// The response header naming why a fallback response was served.
pub const FALLBACK_HEADER: &str = "x-palisade-fallback";

/// The response header saying a response came from the cache: `hit` (fresh) or
/// `stale`.
pub const CACHE_HEADER: &str = "x-palisade-cache";

/// The key of an HTTP request: method, URI and the chosen headers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestKey(Arc<str>);

impl RequestKey {
    /// The key as text (for logs and tests).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Keys HTTP requests: method, scheme and authority (when present), path, query and
/// the chosen headers.
///
/// ```
/// use palisade_fallback::{HttpKey, KeyOf};
///
/// let key = HttpKey::new().header(http::header::ACCEPT_LANGUAGE);
/// let get = http::Request::get("/products/42?fields=name")
///     .header("accept-language", "de")
///     .body(())
///     .unwrap();
/// assert_eq!(key.key(&get).unwrap().as_str(),
///     "GET /products/42?fields=name\naccept-language: de");
/// let post = http::Request::post("/products").body(()).unwrap();
/// assert!(key.key(&post).is_none());
/// ```
#[derive(Debug, Clone)]
pub struct HttpKey {
    inner: Arc<HttpKeyInner>,
}

#[derive(Debug)]
struct HttpKeyInner {
    methods: Vec<Method>,
    headers: Vec<HeaderName>,
    max_len: usize,
}

impl Default for HttpKey {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpKey {
    /// Keys `GET` and `HEAD` requests by method and URI, up to 4096 bytes.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(HttpKeyInner {
                methods: vec![Method::GET, Method::HEAD],
                headers: Vec::new(),
                max_len: 4096,
            }),
        }
    }

    fn with(self, f: impl FnOnce(&mut HttpKeyInner)) -> Self {
        let mut inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| HttpKeyInner {
            methods: shared.methods.clone(),
            headers: shared.headers.clone(),
            max_len: shared.max_len,
        });
        f(&mut inner);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Also keys by the values of header `name`.
    pub fn header(self, name: HeaderName) -> Self {
        self.with(|k| k.headers.push(name))
    }

    /// Keys requests of these methods only.
    pub fn methods(self, methods: &[Method]) -> Self {
        self.with(|k| k.methods = methods.to_vec())
    }

    /// Requests whose key would be longer than `max_len` bytes pass through.
    pub fn max_len(self, max_len: usize) -> Self {
        self.with(|k| k.max_len = max_len)
    }

    /// The key of a cache configuration (`methods`, `key_headers`,
    /// `max_key_bytes`).
    pub fn from_cache_config(config: &CacheConfig) -> Result<Self, ConfigError> {
        Self::from_fields(&config.methods, &config.key_headers, config.max_key_bytes)
    }

    /// The key of a coalescing configuration.
    pub fn from_coalesce_config(config: &CoalesceConfig) -> Result<Self, ConfigError> {
        Self::from_fields(&config.methods, &config.key_headers, config.max_key_bytes)
    }

    fn from_fields(
        methods: &[String],
        headers: &[String],
        max_len: usize,
    ) -> Result<Self, ConfigError> {
        let methods = methods
            .iter()
            .enumerate()
            .map(|(i, m)| {
                Method::from_bytes(m.as_bytes())
                    .map_err(|e| ConfigError::new(format!("methods[{i}]"), format!("{m:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let headers = headers
            .iter()
            .enumerate()
            .map(|(i, h)| {
                HeaderName::from_bytes(h.as_bytes()).map_err(|e| {
                    ConfigError::new(format!("key_headers[{i}]"), format!("{h:?}: {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            inner: Arc::new(HttpKeyInner {
                methods,
                headers,
                max_len,
            }),
        })
    }
}

impl KeyFn for HttpKey {
    type Key = RequestKey;

    fn weigh(&self, key: &RequestKey) -> u32 {
        u32::try_from(key.0.len())
            .unwrap_or(u32::MAX)
            .saturating_add(16)
    }
}

impl<B> KeyOf<Request<B>> for HttpKey {
    fn key(&self, req: &Request<B>) -> Option<RequestKey> {
        let k = &*self.inner;
        if !k.methods.contains(req.method()) {
            return None;
        }
        let uri = req.uri();
        let mut key = String::with_capacity(64);
        key.push_str(req.method().as_str());
        key.push(' ');
        if let Some(scheme) = uri.scheme_str() {
            key.push_str(scheme);
            key.push_str("://");
        }
        if let Some(authority) = uri.authority() {
            key.push_str(authority.as_str());
        }
        match uri.path_and_query() {
            Some(pq) => key.push_str(pq.as_str()),
            None => key.push('/'),
        }
        for name in &k.headers {
            key.push('\n');
            key.push_str(name.as_str());
            key.push(':');
            let mut first = true;
            for value in req.headers().get_all(name) {
                key.push_str(if first { " " } else { ", " });
                first = false;
                key.push_str(value.to_str().ok()?);
            }
            if key.len() > k.max_len {
                return None;
            }
        }
        if key.len() > k.max_len {
            return None;
        }
        Some(RequestKey(Arc::from(key)))
    }
}

/// A buffered HTTP response: head, body and trailers, cheap to clone.
#[derive(Debug, Clone)]
pub struct HttpEntry(Arc<HttpEntryInner>);

#[derive(Debug)]
struct HttpEntryInner {
    head: http::response::Parts,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

impl HttpEntry {
    /// The response status.
    pub fn status(&self) -> http::StatusCode {
        self.0.head.status
    }

    /// The response headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.0.head.headers
    }

    /// The buffered body.
    pub fn body(&self) -> &Bytes {
        &self.0.body
    }
}

/// Keeps HTTP responses by buffering their bodies, up to `max_body_bytes`.
///
/// Works with any `Unpin` body (hyper's `Incoming`, axum's `Body`, the
/// `http-body-util` bodies).
#[derive(Debug, Clone, Copy)]
pub struct HttpStore {
    max_body: usize,
}

impl HttpStore {
    /// Buffers bodies of up to `max_body_bytes`; larger ones stream on uncached.
    pub fn new(max_body_bytes: usize) -> Self {
        Self {
            max_body: max_body_bytes,
        }
    }
}

impl Store for HttpStore {
    type Entry = HttpEntry;

    fn weigh(&self, entry: &HttpEntry) -> u32 {
        let headers: usize = entry
            .0
            .head
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        u32::try_from(entry.0.body.len() + headers + 128).unwrap_or(u32::MAX)
    }

    fn cacheable(&self, entry: &HttpEntry) -> bool {
        // This cache answers many callers, and answers stale when the downstream
        // fails (RFC 9111): `no-store` and `private` responses are not kept, nor are
        // those that must not be served without revalidation (`no-cache`,
        // `must-revalidate`, `proxy-revalidate`).
        const NOT_KEPT: [&str; 5] = [
            "no-store",
            "private",
            "no-cache",
            "must-revalidate",
            "proxy-revalidate",
        ];
        !entry.0.head.headers.get_all(CACHE_CONTROL).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',').any(|directive| {
                    let name = directive.split('=').next().unwrap_or("").trim();
                    NOT_KEPT.iter().any(|d| name.eq_ignore_ascii_case(d))
                })
            })
        })
    }
}

impl<B> StoreOf<Response<B>> for HttpStore
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Output = Response<CachedBody<B>>;

    fn capture(
        &self,
        response: Response<B>,
    ) -> impl Future<Output = Captured<HttpEntry, Self::Output>> + Send + 'static {
        let max = self.max_body;
        async move {
            let declared = response
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|len| len > max as u64) {
                return Captured::Unshareable(response.map(CachedBody::stream));
            }
            let (head, mut body) = response.into_parts();
            let mut buffer = BytesMut::new();
            let mut trailers = None;
            while let Some(frame) = body.frame().await {
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(err) => return Captured::Failed(err.into()),
                };
                match frame.into_data() {
                    Ok(mut data) => {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            buffer.extend_from_slice(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                        if buffer.len() > max {
                            let body = CachedBody::Partial {
                                prefix: Some(buffer.freeze()),
                                rest: body,
                            };
                            return Captured::Unshareable(Response::from_parts(head, body));
                        }
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            trailers = Some(t);
                        }
                    }
                }
            }
            Captured::Shareable(HttpEntry(Arc::new(HttpEntryInner {
                head,
                body: buffer.freeze(),
                trailers,
            })))
        }
    }

    fn rebuild(&self, entry: &HttpEntry, served: Served) -> Self::Output {
        let inner = &*entry.0;
        let body = CachedBody::Full {
            data: (!inner.body.is_empty()).then(|| inner.body.clone()),
            trailers: inner.trailers.clone(),
        };
        let mut response = Response::from_parts(inner.head.clone(), body);
        let (age, mark) = match served {
            Served::Fetched => (None, None),
            Served::Fresh { age } => (Some(age), Some("hit")),
            Served::Stale { age } => (Some(age), Some("stale")),
        };
        if let Some(age) = age {
            // The age the upstream gave (from a cache of its own) plus the time the
            // response has been kept here (RFC 9111, 4.2.3).
            let upstream = inner
                .head
                .headers
                .get(AGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
            response.headers_mut().insert(
                AGE,
                HeaderValue::from(upstream.saturating_add(age.as_secs())),
            );
        }
        if let Some(mark) = mark {
            response
                .headers_mut()
                .insert(CACHE_HEADER, HeaderValue::from_static(mark));
        }
        response.extensions_mut().insert(served);
        response
    }

    fn pass(&self, response: Response<B>) -> Self::Output {
        response.map(CachedBody::stream)
    }
}

/// The body of a response from a cache or coalescing layer: buffered (from the
/// cache, or shared), or the dependency's own body streaming on.
#[pin_project(project = CachedBodyProj)]
#[derive(Debug)]
pub enum CachedBody<B> {
    /// A buffered body.
    Full {
        /// The data, until it is read.
        data: Option<Bytes>,
        /// The trailers, until they are read.
        trailers: Option<HeaderMap>,
    },
    /// The start of a body too large to buffer, then the rest of it.
    Partial {
        /// The part already read, until it is read again.
        prefix: Option<Bytes>,
        /// The rest of the body.
        #[pin]
        rest: B,
    },
    /// The dependency's body, untouched.
    Stream {
        /// The body.
        #[pin]
        body: B,
    },
}

impl<B> CachedBody<B> {
    /// A buffered body.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        CachedBody::Full {
            data: (!data.is_empty()).then_some(data),
            trailers: None,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        CachedBody::Full {
            data: None,
            trailers: None,
        }
    }

    fn stream(body: B) -> Self {
        CachedBody::Stream { body }
    }
}

impl<B> Default for CachedBody<B> {
    fn default() -> Self {
        Self::empty()
    }
}

fn into_bytes<D: Buf>(mut data: D) -> Bytes {
    data.copy_to_bytes(data.remaining())
}

impl<B> Body for CachedBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            CachedBodyProj::Full { data, trailers } => {
                if let Some(data) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            CachedBodyProj::Partial { prefix, rest } => {
                if let Some(prefix) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                poll_inner(rest, cx)
            }
            CachedBodyProj::Stream { body } => poll_inner(body, cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            CachedBody::Full { data, trailers } => data.is_none() && trailers.is_none(),
            CachedBody::Partial { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
            CachedBody::Stream { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            CachedBody::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            CachedBody::Partial { prefix, rest } => {
                let head = prefix.as_ref().map_or(0, |d| d.len() as u64);
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + head);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + head);
                }
                hint
            }
            CachedBody::Stream { body } => body.size_hint(),
        }
    }
}

fn poll_inner<B>(
    body: Pin<&mut B>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    match body.poll_frame(cx) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(None) => Poll::Ready(None),
        Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame.map_data(into_bytes)))),
        Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
    }
}

/// A response extension on fallback responses, saying why the fallback was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServedFallback {
    /// Why.
    pub reason: FallbackReason,
}

/// Marks HTTP fallback responses with `x-palisade-fallback: <reason>` and a
/// [`ServedFallback`] extension.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpMark;

impl<B> MarkFallback<Response<B>> for HttpMark {
    fn mark(&self, response: &mut Response<B>, reason: FallbackReason) {
        response
            .headers_mut()
            .insert(FALLBACK_HEADER, HeaderValue::from_static(reason.as_str()));
        response.extensions_mut().insert(ServedFallback { reason });
    }
}

impl CacheLayer<HttpKey, HttpStore, HttpClassifier> {
    /// An HTTP cache for downstream `name` with the settings of `config`: keyed by
    /// [`HttpKey`], bodies buffered by [`HttpStore`], calls judged by
    /// [`HttpClassifier`] (5xx and 429 fail, so they are answered from the cache when
    /// an entry may still be served).
    ///
    /// ```
    /// use palisade_fallback::{CacheConfig, CacheLayer};
    /// use std::time::Duration;
    ///
    /// let config = CacheConfig { fresh_ttl: Duration::from_secs(5), ..CacheConfig::default() };
    /// let layer = CacheLayer::http("catalog", config).unwrap();
    /// # drop(layer);
    /// ```
    pub fn http(name: &str, config: CacheConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        if config.max_body_bytes as u64 > config.max_weight_bytes {
            return Err(ConfigError::new(
                "max_body_bytes",
                format!(
                    "{} is larger than max_weight_bytes ({}), so such a body could never be held",
                    config.max_body_bytes, config.max_weight_bytes
                ),
            ));
        }
        let key = HttpKey::from_cache_config(&config)?;
        let store = HttpStore::new(config.max_body_bytes);
        CacheLayer::builder(name, key, store)
            .config(config)
            .classify(HttpClassifier)
            .build()
    }
}

impl CoalesceLayer<HttpKey, HttpStore> {
    /// An HTTP coalescing layer for downstream `name` with the settings of
    /// `config`: keyed by [`HttpKey`], bodies buffered by [`HttpStore`].
    pub fn http(name: &str, config: CoalesceConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let key = HttpKey::from_coalesce_config(&config)?;
        let store = HttpStore::new(config.max_body_bytes);
        CoalesceLayer::builder(name, key, store)
            .config(config)
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use std::time::Duration;

    #[test]
    fn keys_name_method_uri_and_chosen_headers() {
        let key = HttpKey::new().header(HeaderName::from_static("x-tenant"));
        let req = Request::get("http://catalog:8080/items?page=2")
            .header("x-tenant", "a")
            .header("x-tenant", "b")
            .header("x-ignored", "z")
            .body(())
            .unwrap();
        assert_eq!(
            key.key(&req).unwrap().as_str(),
            "GET http://catalog:8080/items?page=2\nx-tenant: a, b"
        );
        let head = Request::head("/items").body(()).unwrap();
        assert_eq!(key.key(&head).unwrap().as_str(), "HEAD /items\nx-tenant:");
        let delete = Request::delete("/items").body(()).unwrap();
        assert!(key.key(&delete).is_none());
    }

    #[test]
    fn oversized_keys_and_opaque_header_values_pass_through() {
        let key = HttpKey::new().max_len(32);
        let long = Request::get(format!("/items/{}", "x".repeat(40)))
            .body(())
            .unwrap();
        assert!(key.key(&long).is_none());
        let short = Request::get("/items/1").body(()).unwrap();
        assert!(key.key(&short).is_some());
        let key = HttpKey::new().header(HeaderName::from_static("x-tenant"));
        let opaque = Request::get("/items")
            .header("x-tenant", HeaderValue::from_bytes(b"caf\xe9").unwrap())
            .body(())
            .unwrap();
        assert!(key.key(&opaque).is_none());
    }

    #[test]
    fn keys_from_config_name_the_bad_field() {
        let config = CacheConfig {
            key_headers: vec!["accept".into()],
            ..CacheConfig::default()
        };
        assert!(HttpKey::from_cache_config(&config).is_ok());
        let config = CoalesceConfig {
            methods: vec!["GE T".into()],
            ..CoalesceConfig::default()
        };
        assert_eq!(
            HttpKey::from_coalesce_config(&config).unwrap_err().field(),
            "methods[0]"
        );
    }

    #[tokio::test]
    async fn small_bodies_are_buffered_and_rebuilt_with_marks() {
        let store = HttpStore::new(64);
        let response = Response::builder()
            .status(200)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"lamp")))
            .unwrap();
        let Captured::Shareable(entry) = store.capture(response).await else {
            panic!("a small body is shareable");
        };
        assert_eq!(entry.body().as_ref(), b"lamp");
        let stale: Response<CachedBody<Full<Bytes>>> = store.rebuild(
            &entry,
            Served::Stale {
                age: Duration::from_millis(61_900),
            },
        );
        assert_eq!(stale.headers()[AGE], "61");
        assert_eq!(stale.headers()[CACHE_HEADER], "stale");
        assert_eq!(stale.headers()["content-type"], "text/plain");
        assert!(stale.extensions().get::<Served>().unwrap().is_stale());
        let body = stale.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.as_ref(), b"lamp");
        let fetched: Response<CachedBody<Full<Bytes>>> = store.rebuild(&entry, Served::Fetched);
        assert!(fetched.headers().get(AGE).is_none());
        assert!(fetched.headers().get(CACHE_HEADER).is_none());
    }

    #[tokio::test]
    async fn an_age_from_upstream_is_added_to_the_time_kept() {
        let store = HttpStore::new(64);
        let response = Response::builder()
            .status(200)
            .header(AGE, "300")
            .body(Full::new(Bytes::from_static(b"lamp")))
            .unwrap();
        let Captured::Shareable(entry) = store.capture(response).await else {
            panic!("a small body is shareable");
        };
        let hit: Response<CachedBody<Full<Bytes>>> = store.rebuild(
            &entry,
            Served::Fresh {
                age: Duration::from_secs(20),
            },
        );
        assert_eq!(hit.headers()[AGE], "320");
    }

    #[tokio::test]
    async fn large_bodies_stream_on_whole() {
        let store = HttpStore::new(8);
        // Declared too large: not read at all.
        let declared = Response::builder()
            .header(CONTENT_LENGTH, "100")
            .body(Full::new(Bytes::from(vec![b'a'; 100])))
            .unwrap();
        let Captured::Unshareable(response) = store.capture(declared).await else {
            panic!("a declared large body is not shared");
        };
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 100);
        // Undeclared, found too large while reading: the part read comes first.
        let chunks = ["1234", "5678", "9abc", "def"]
            .map(|c| Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(c.as_bytes()))));
        let streamed = Response::new(StreamBody::new(futures_util::stream::iter(chunks)));
        let Captured::Unshareable(response) = store.capture(streamed).await else {
            panic!("a large streamed body is not shared");
        };
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.as_ref(), b"123456789abcdef");
    }

    #[tokio::test]
    async fn broken_bodies_fail_and_no_store_is_not_cached() {
        let store = HttpStore::new(64);
        let chunks = vec![
            Ok(Frame::data(Bytes::from_static(b"12"))),
            Err(std::io::Error::other("connection reset")),
        ];
        let broken = Response::new(StreamBody::new(futures_util::stream::iter(chunks)));
        let Captured::Failed(err) = store.capture(broken).await else {
            panic!("a broken body fails");
        };
        assert_eq!(err.to_string(), "connection reset");
        let private = Response::builder()
            .header(CACHE_CONTROL, "private, No-Store")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let Captured::Shareable(entry) = store.capture(private).await else {
            panic!("shareable");
        };
        assert!(!store.cacheable(&entry));
        // Each directive that forbids keeping or serving stale, alone and among
        // others; a plain max-age is kept.
        for (cache_control, kept) in [
            ("private", false),
            ("no-cache", false),
            ("max-age=60, must-revalidate", false),
            ("public, proxy-revalidate", false),
            ("no-cache=\"set-cookie\"", false),
            ("max-age=60", true),
            ("public, max-age=60, stale-if-error=300", true),
        ] {
            let response = Response::builder()
                .header(CACHE_CONTROL, cache_control)
                .body(Full::new(Bytes::new()))
                .unwrap();
            let Captured::Shareable(entry) = store.capture(response).await else {
                panic!("shareable");
            };
            assert_eq!(store.cacheable(&entry), kept, "{cache_control}");
        }
    }

    #[test]
    fn fallback_marks_name_the_reason() {
        let mut response = Response::new(());
        HttpMark.mark(&mut response, FallbackReason::CircuitOpen);
        assert_eq!(response.headers()[FALLBACK_HEADER], "circuit_open");
        assert_eq!(
            response
                .extensions()
                .get::<ServedFallback>()
                .unwrap()
                .reason,
            FallbackReason::CircuitOpen
        );
    }
}
