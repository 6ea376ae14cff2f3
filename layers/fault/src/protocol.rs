//! How the fault layer speaks to the services it wraps: [`Http`] for
//! `http::Request`/`http::Response` services, [`Custom`] for any other.

use palisade_core::BoxError;

use crate::config::RequestRule;
use crate::header::{FAULT_HEADER, HeaderFaultError, RequestedFaults};

/// What the fault layer needs to know of a request/response protocol: how to match
/// requests against a [`RequestRule`], how to read (and strip) a request's own fault
/// header, and how to build an injected error.
pub trait Protocol<Req, Res>: Send + Sync + 'static {
    /// Whether `req` matches the config's `match` rule.
    fn matches(&self, rule: &RequestRule, req: &Req) -> bool;

    /// Removes the request's fault header, if the protocol has one, and returns what
    /// it asked for when `read` is true (the layer allows header faults). With
    /// `read` false the header is only removed, so it cannot reach the service or a
    /// later hop.
    fn take_requested(
        &self,
        req: &mut Req,
        read: bool,
    ) -> Option<Result<RequestedFaults, HeaderFaultError>>;

    /// The result of a request failed with an injected error of `status`.
    fn error(&self, status: u16) -> Result<Res, BoxError>;

    /// The result of a request whose fault header could not be read.
    fn bad_header(&self, error: HeaderFaultError) -> Result<Res, BoxError>;
}

/// The protocol of HTTP services (`http::Request<B>` in, `http::Response<RB>` out,
/// `RB: Default`): `match` rules apply, header faults come from
/// [`FAULT_HEADER`], and an injected error is a response with the configured status,
/// an empty body and `x-palisade-fault: error`.
///
/// A request whose fault header cannot be read (only when header faults are allowed)
/// is answered `400 Bad Request` with `x-palisade-fault: invalid` and not passed on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Http;

fn response<RB: Default>(status: u16, marker: &'static str) -> http::Response<RB> {
    let mut response = http::Response::new(RB::default());
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE);
    response.headers_mut().insert(
        http::HeaderName::from_static(FAULT_HEADER),
        http::HeaderValue::from_static(marker),
    );
    response
}

impl<B, RB> Protocol<http::Request<B>, http::Response<RB>> for Http
where
    RB: Default,
{
    #[inline]
    fn matches(&self, rule: &RequestRule, req: &http::Request<B>) -> bool {
        rule.matches(req)
    }

    #[inline]
    fn take_requested(
        &self,
        req: &mut http::Request<B>,
        read: bool,
    ) -> Option<Result<RequestedFaults, HeaderFaultError>> {
        take_fault_header(req, read)
    }

    fn error(&self, status: u16) -> Result<http::Response<RB>, BoxError> {
        Ok(response(status, "error"))
    }

    fn bad_header(&self, error: HeaderFaultError) -> Result<http::Response<RB>, BoxError> {
        tracing::warn!(%error, "fault header refused");
        Ok(response(400, "invalid"))
    }
}

/// The protocol of HTTP services whose response body has no `Default` (such as
/// hyper's `Incoming` on a client): like [`Http`], but the closure builds the result
/// of an injected error (or of an unreadable fault header, with status 400) from the
/// status, e.g. an `Err` for a client whose responses cannot be made up.
#[derive(Clone, Copy)]
pub struct HttpWith<F> {
    pub(crate) error: F,
}

impl<F> std::fmt::Debug for HttpWith<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpWith")
    }
}

impl<B, RB, F> Protocol<http::Request<B>, http::Response<RB>> for HttpWith<F>
where
    F: Fn(u16) -> Result<http::Response<RB>, BoxError> + Send + Sync + 'static,
{
    #[inline]
    fn matches(&self, rule: &RequestRule, req: &http::Request<B>) -> bool {
        rule.matches(req)
    }

    #[inline]
    fn take_requested(
        &self,
        req: &mut http::Request<B>,
        read: bool,
    ) -> Option<Result<RequestedFaults, HeaderFaultError>> {
        take_fault_header(req, read)
    }

    fn error(&self, status: u16) -> Result<http::Response<RB>, BoxError> {
        (self.error)(status)
    }

    fn bad_header(&self, error: HeaderFaultError) -> Result<http::Response<RB>, BoxError> {
        tracing::warn!(%error, "fault header refused");
        (self.error)(400)
    }
}

/// Removes the fault header from `req`; reads it when `read`.
#[inline]
fn take_fault_header<B>(
    req: &mut http::Request<B>,
    read: bool,
) -> Option<Result<RequestedFaults, HeaderFaultError>> {
    let headers = req.headers_mut();
    if !headers.contains_key(FAULT_HEADER) {
        return None;
    }
    let mut values = match headers.entry(FAULT_HEADER) {
        http::header::Entry::Occupied(entry) => entry.remove_entry_mult().1,
        http::header::Entry::Vacant(_) => return None,
    };
    if !read {
        return None;
    }
    let first = values.next();
    if values.next().is_some() {
        return Some(Err(HeaderFaultError::parse_error(
            "is given more than once",
        )));
    }
    let value = first?;
    Some(match value.to_str() {
        Ok(text) => RequestedFaults::parse(text),
        Err(_) => Err(HeaderFaultError::parse_error("is not visible ASCII")),
    })
}

/// The protocol of any other service: an injected error is what the closure builds
/// from the configured status (an `Err` to fail the call, or an `Ok` response of
/// the service's own kind). No `match` rules (use
/// [`FaultLayer::matching`](crate::FaultLayer::matching)) and no header faults.
#[derive(Clone, Copy)]
pub struct Custom<E> {
    pub(crate) error: E,
}

impl<E> std::fmt::Debug for Custom<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Custom")
    }
}

impl<Req, Res, E> Protocol<Req, Res> for Custom<E>
where
    E: Fn(u16) -> Result<Res, BoxError> + Send + Sync + 'static,
{
    #[inline]
    fn matches(&self, _rule: &RequestRule, _req: &Req) -> bool {
        // Unreachable: the handle refuses `match` rules for custom layers.
        false
    }

    #[inline]
    fn take_requested(
        &self,
        _req: &mut Req,
        _read: bool,
    ) -> Option<Result<RequestedFaults, HeaderFaultError>> {
        None
    }

    fn error(&self, status: u16) -> Result<Res, BoxError> {
        (self.error)(status)
    }

    fn bad_header(&self, error: HeaderFaultError) -> Result<Res, BoxError> {
        Err(Box::new(error))
    }
}

/// Decides which requests may get faults, besides the config's `match` rule.
/// Implemented for closures `Fn(&Req) -> bool`.
pub trait Predicate<Req>: Send + Sync + 'static {
    /// Whether `req` may get faults.
    fn test(&self, req: &Req) -> bool;
}

/// The default [`Predicate`]: every request may get faults.
#[derive(Debug, Clone, Copy, Default)]
pub struct AnyRequest;

impl<Req> Predicate<Req> for AnyRequest {
    #[inline]
    fn test(&self, _req: &Req) -> bool {
        true
    }
}

impl<Req, F> Predicate<Req> for F
where
    F: Fn(&Req) -> bool + Send + Sync + 'static,
{
    #[inline]
    fn test(&self, req: &Req) -> bool {
        self(req)
    }
}
