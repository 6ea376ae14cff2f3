//! Deadlines across hops, over HTTP.
//!
//! A request's [`Deadline`](palisade_core::Deadline) is the instant by which its caller needs the answer.
//! Within one process it travels through [`Deadline::current`](palisade_core::Deadline::current); between processes it
//! travels as the time left, in the `grpc-timeout` and `x-palisade-deadline-ms`
//! headers ([`header`]). Two layers carry it across:
//!
//! - **Server side**, [`InboundDeadlineLayer`]: reads the headers (the shorter of the
//!   two when both are present), caps the time at the server's own `max` — a caller
//!   cannot ask for more — and gives headerless requests `default_timeout` (or
//!   `max`). It puts the resulting [`Deadline`](palisade_core::Deadline) in the request's extensions and runs
//!   the inner service (its `call` and its response future) with it as
//!   [`Deadline::current`](palisade_core::Deadline::current). A request whose deadline has already passed on arrival is
//!   refused at once with [`DeadlineExceeded`](palisade_core::RejectionKind::DeadlineExceeded),
//!   without calling the handler. Headers that cannot be read (negative, huge,
//!   garbage, non-UTF-8, repeated) are ignored as if absent, logged at debug and
//!   counted in `palisade_deadline_header_errors_total`.
//! - **Client side**, [`OutboundDeadlineLayer`]: takes the earlier of
//!   [`Deadline::current`](palisade_core::Deadline::current) and the request's [`Deadline`](palisade_core::Deadline) extension. Without either it
//!   passes the request through untouched. With less than `min_remaining` (default
//!   10 ms) left it refuses the call with `DeadlineExceeded` without sending it.
//!   Otherwise it sends the time left minus `margin` (default 5 ms, for the network)
//!   in both headers and cuts the call off with `DeadlineExceeded` when the deadline
//!   passes.
//!
//! So the time a server gives its handler shrinks at every hop, by the time spent
//! and the margin, and no hop works on an answer nobody is waiting for:
//!
//! ```
//! use palisade_core::Deadline;
//! use palisade_timeout::deadline::{InboundDeadlineLayer, OutboundDeadlineLayer};
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The downstream client: it records the deadline header it would send.
//! let client = ServiceBuilder::new()
//!     .layer(OutboundDeadlineLayer::builder("customer").build()?)
//!     .service_fn(|req: http::Request<()>| async move {
//!         Ok::<_, std::io::Error>(req.headers()["x-palisade-deadline-ms"].clone())
//!     });
//!
//! // The server: a caller asked for 2 s, the server allows at most 1 s.
//! let mut server = ServiceBuilder::new()
//!     .layer(InboundDeadlineLayer::builder("order-api").max(Duration::from_secs(1)).build()?)
//!     .service_fn(move |_req: http::Request<()>| {
//!         let mut client = client.clone();
//!         async move {
//!             assert_eq!(Deadline::current().unwrap().remaining(), Duration::from_secs(1));
//!             tokio::time::sleep(Duration::from_millis(300)).await; // some work first
//!             let sent = client.ready().await?.call(http::Request::new(())).await?;
//!             Ok::<_, palisade_core::Error>(sent)
//!         }
//!     });
//!
//! let request = http::Request::builder().header("grpc-timeout", "2S").body(())?;
//! let sent = server.ready().await?.call(request).await?;
//! assert_eq!(sent, "695"); // 1000 ms capped, 300 ms spent, 5 ms margin
//! # Ok(())
//! # }
//! ```

pub mod header;
mod inbound;
mod outbound;

pub use inbound::{InboundDeadline, InboundDeadlineBuilder, InboundDeadlineLayer, InboundFuture};
pub use outbound::{
    OutboundDeadline, OutboundDeadlineBuilder, OutboundDeadlineLayer, OutboundFuture,
};

#[cfg(test)]
mod tests {
    use palisade_core::Deadline;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn sync_scope_sets_and_never_extends_the_deadline() {
        let d = Deadline::after(Duration::from_millis(100));
        assert_eq!(d.sync_scope(Deadline::current), Some(d));
        assert_eq!(Deadline::current(), None);
        let later = Deadline::after(Duration::from_secs(5));
        d.scope(async move {
            assert_eq!(later.sync_scope(Deadline::current), Some(d));
        })
        .await;
    }
}
