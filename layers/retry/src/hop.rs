//! Cross-hop amplification control, protocol-neutral part: a per-request flag that
//! the retry layer raises when it gives up on a downstream after retrying (or after
//! its budget or the deadline refused a retry). A server's inbound layer reads it
//! and tells its own caller not to retry this answer (see `http::NoRetryLayer`).

use std::cell::Cell;
use std::future::Future;

tokio::task_local! {
    static GAVE_UP: Cell<bool>;
}

/// Raises the flag for the request this task is serving, if it is in a scope.
pub(crate) fn mark_gave_up() {
    let _ = GAVE_UP.try_with(|flag| flag.set(true));
}

/// The future of [`scope`]: `F`, run with a fresh give-up flag.
pub type GaveUpScope<F> = tokio::task::futures::TaskLocalFuture<Cell<bool>, F>;

/// Runs `future` with a fresh give-up flag; read it afterwards with
/// [`gave_up`] on the pinned scope future.
pub fn scope<F: Future>(future: F) -> GaveUpScope<F> {
    GAVE_UP.scope(Cell::new(false), future)
}

/// Whether a retry layer gave up while `scope` ran (call once it has completed).
pub fn gave_up<F: Future>(scope: std::pin::Pin<&mut GaveUpScope<F>>) -> bool {
    scope.take_value().is_some_and(Cell::into_inner)
}

/// Whether a retry layer in the current task has given up (inside a scope).
pub fn current_gave_up() -> bool {
    GAVE_UP.try_with(Cell::get).unwrap_or(false)
}
