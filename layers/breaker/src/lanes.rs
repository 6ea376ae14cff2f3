//! Per-thread lanes to a breaker's shared state (see [`palisade_core::lanes`]):
//! every call's response future keeps the state alive through its thread's lane, so
//! the reference count stays core-local when several threads share a breaker.

use crate::shared::Shared;

/// One counted handle to a breaker's state, alone on its cache line.
pub(crate) type Lane = palisade_core::lanes::Lane<Shared>;

/// The lanes of one breaker.
pub(crate) type Lanes = palisade_core::lanes::Lanes<Shared>;
