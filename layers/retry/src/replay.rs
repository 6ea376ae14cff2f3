//! Buffering request bodies so they can be replayed.
//!
//! A streaming request body (such as hyper's `Incoming`, or a body built from a
//! stream) can be sent only once. [`BufferBodyLayer`] reads a body whose size is
//! known to be at most `max_bytes` into memory before the call, so a
//! [`HttpRetry`](crate::http::HttpRetry) further in can send it again; a body that is
//! larger, or whose size is not known in advance, streams through untouched and that
//! request is not retried. A body that sends more than its size hint promised is
//! read no further than `max_bytes`, and its call fails.
//!
//! While a body is read, the layers further in hold nothing for it: a clone of the
//! inner service is made ready once the body is in, so a client uploading slowly
//! takes no bulkhead permit or half-open probe meanwhile. Trailers of a buffered
//! body are not kept (the buffered body ends with its data).
//!
//! ```text
//! BufferBodyLayer → RetryLayer (HttpRetry) → … → hyper client
//!   Request<B>        Request<ReplayBody<B>>
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, request::Parts};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::Collect;
use http_body_util::{BodyExt, Limited};
use palisade_core::{BoxError, Error};
use pin_project::pin_project;
use tower_layer::Layer;
use tower_service::Service;

/// A request body that is either buffered in memory (and so can be sent again) or a
/// stream that passes through once.
#[pin_project(project = ReplayBodyProj)]
#[derive(Debug)]
pub enum ReplayBody<B> {
    /// Held in memory; each copy sends all of it.
    Buffered(Option<Bytes>),
    /// Passes through once; requests carrying it are not retried.
    Streaming(#[pin] B),
}

impl<B> ReplayBody<B> {
    /// A copy of a buffered body, or `None` for a streaming one.
    pub fn try_clone(&self) -> Option<Self> {
        match self {
            ReplayBody::Buffered(bytes) => Some(ReplayBody::Buffered(bytes.clone())),
            ReplayBody::Streaming(_) => None,
        }
    }

    /// Whether this body can be sent again.
    pub fn is_replayable(&self) -> bool {
        matches!(self, ReplayBody::Buffered(_))
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ReplayBodyProj::Buffered(bytes) => Poll::Ready(
                bytes
                    .take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            ReplayBodyProj::Streaming(body) => body.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReplayBody::Buffered(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
            ReplayBody::Streaming(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReplayBody::Buffered(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ReplayBody::Streaming(body) => body.size_hint(),
        }
    }
}

/// Buffers small request bodies for replay; see the [module docs](self).
#[derive(Debug, Clone, Copy)]
pub struct BufferBodyLayer {
    max_bytes: u64,
}

impl BufferBodyLayer {
    /// Buffers bodies known to be at most `max_bytes`.
    pub fn new(max_bytes: u64) -> Self {
        Self { max_bytes }
    }
}

impl<S> Layer<S> for BufferBodyLayer {
    type Service = BufferBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BufferBody {
            inner,
            max_bytes: self.max_bytes,
        }
    }
}

/// The service of [`BufferBodyLayer`].
#[derive(Debug, Clone)]
pub struct BufferBody<S> {
    inner: S,
    max_bytes: u64,
}

impl<S, B> Service<Request<B>> for BufferBody<S>
where
    S: Service<Request<ReplayBody<B>>> + Clone,
    S::Error: Into<BoxError> + 'static,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError> + 'static,
{
    type Response = S::Response;
    type Error = Error;
    type Future = BufferFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Error::from_service)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let small = body
            .size_hint()
            .upper()
            .is_some_and(|n| n <= self.max_bytes);
        if small {
            // The body is read first, without taking what this service's readiness
            // holds (a bulkhead permit, a half-open probe): a slow upload must not
            // hold capacity. The service stays ready for its next call, and the
            // future gets a clone of its own ready once the body is in.
            BufferFuture::Collecting {
                // Read at most what the size hint promised: a body that sends more
                // fails the call rather than fill memory.
                collect: Limited::new(body, usize::try_from(self.max_bytes).unwrap_or(usize::MAX))
                    .collect(),
                parts: Some(parts),
                service: Some(self.inner.clone()),
            }
        } else {
            let clone = self.inner.clone();
            let mut ready = std::mem::replace(&mut self.inner, clone);
            let future = ready.call(Request::from_parts(parts, ReplayBody::Streaming(body)));
            BufferFuture::Calling { future }
        }
    }
}

/// The response future of [`BufferBody`].
// The request head waits inline while the body is read; boxing it would cost an
// allocation per call to save a few hundred bytes of future.
#[allow(clippy::large_enum_variant)]
#[pin_project(project = BufferFutureProj)]
pub enum BufferFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    /// Reading the body.
    Collecting {
        /// The body being read.
        #[pin]
        collect: Collect<Limited<B>>,
        /// The request head, until the body is read.
        parts: Option<Parts>,
        /// A clone of the service, made ready once the body is read.
        service: Option<S>,
    },
    /// The body is read; getting the service ready for the call.
    Readying {
        /// The service being made ready.
        service: S,
        /// The request, until it is sent.
        request: Option<Request<ReplayBody<B>>>,
    },
    /// The call is under way.
    Calling {
        /// The inner call.
        #[pin]
        future: S::Future,
    },
}

impl<S, B> std::fmt::Debug for BufferFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
    B: Body,
    B::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BufferFuture::Collecting { .. } => "BufferFuture::Collecting",
            BufferFuture::Readying { .. } => "BufferFuture::Readying",
            BufferFuture::Calling { .. } => "BufferFuture::Calling",
        })
    }
}

impl<S, B> Future for BufferFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
    S::Error: Into<BoxError> + 'static,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError> + 'static,
{
    type Output = Result<S::Response, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                BufferFutureProj::Collecting {
                    collect,
                    parts,
                    service,
                } => {
                    let collected = ready!(collect.poll(cx));
                    let bytes = match collected {
                        Ok(c) => c.to_bytes(),
                        Err(e) => return Poll::Ready(Err(Error::Inner(e))),
                    };
                    let (Some(parts), Some(service)) = (parts.take(), service.take()) else {
                        return Poll::Ready(Err(Error::Inner(
                            "palisade-retry: body buffered twice".into(),
                        )));
                    };
                    let request = Request::from_parts(parts, ReplayBody::Buffered(Some(bytes)));
                    self.set(BufferFuture::Readying {
                        service,
                        request: Some(request),
                    });
                }
                BufferFutureProj::Readying { service, request } => {
                    if let Err(e) = ready!(service.poll_ready(cx)) {
                        return Poll::Ready(Err(Error::from_service(e)));
                    }
                    let Some(request) = request.take() else {
                        return Poll::Ready(Err(Error::Inner(
                            "palisade-retry: buffered request sent twice".into(),
                        )));
                    };
                    let future = service.call(request);
                    self.set(BufferFuture::Calling { future });
                }
                BufferFutureProj::Calling { future } => {
                    return future.poll(cx).map_err(Error::from_service);
                }
            }
        }
    }
}
