//! What the retry layer needs to know about a request/response protocol: how to copy
//! a request for another attempt, and what a response says about retrying.

use std::time::Duration;

/// How to replay requests and read retry hints from responses.
///
/// [`CloneRequests`] fits any `Clone` request; `HttpRetry` (feature `http`) adds
/// HTTP's rules: only idempotent requests, a body size limit, the attempt header,
/// `Retry-After` and the callee's no-retry marker.
pub trait Protocol<Req, Res> {
    /// A copy of `req` to send again, or `None` when it must not be retried.
    fn replay(&self, req: &Req) -> Option<Req>;

    /// Adjusts an attempt's request before it is sent (`attempt` counts from 1).
    fn prepare(&self, _req: &mut Req, _attempt: u32) {}

    /// How long the downstream asked to wait before trying again, if it did.
    fn retry_after(&self, _res: &Res) -> Option<Duration> {
        None
    }

    /// Whether the downstream asked not to be retried (it already retried its own
    /// dependencies, or its retry budget refused).
    fn forbids_retry(&self, _res: &Res) -> bool {
        false
    }
}

/// Replays any `Clone` request by cloning it; responses carry no hints.
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneRequests;

impl<Req: Clone, Res> Protocol<Req, Res> for CloneRequests {
    #[inline]
    fn replay(&self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}
