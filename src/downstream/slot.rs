//! The policy slots of a [`Builder`](super::Builder): each is [`Off`] (the policy is
//! left out and costs nothing) or holds the policy's settings.

use std::sync::Arc;
use std::time::Duration;

use palisade_breaker::{BreakerConfig, CircuitBreakerLayer};
use palisade_core::ConfigError;
use palisade_limit::adaptive::{AdaptiveLimitConfig, AdaptiveLimitLayer};
use palisade_limit::bulkhead::{BulkheadConfig, BulkheadLayer};
use palisade_limit::rate::{RateLimitConfig, RateLimitLayer};
use palisade_limit::throttle::{ThrottleConfig, ThrottleLayer};
use palisade_retry::{HedgeDelay, HedgeLayer, RetryConfig, RetryLayer};
use palisade_timeout::TimeoutLayer;
use tower::layer::util::Identity;

use super::DownstreamHandle;

/// What a slot needs to build its layer.
#[derive(Debug)]
pub struct BuildContext<'a, C, P> {
    pub(crate) name: &'a str,
    pub(crate) classify: &'a C,
    pub(crate) protocol: &'a P,
    pub(crate) handle: DownstreamHandle,
}

/// One policy position of a downstream stack.
pub trait Slot<C, P> {
    /// The layer this slot contributes ([`Identity`] when off).
    type Layer: Clone;

    /// Validates the settings and builds the layer; errors are prefixed with the
    /// policy's name (`breaker.`, `retry.`…).
    fn build(self, cx: &mut BuildContext<'_, C, P>) -> Result<Self::Layer, ConfigError>;
}

/// A policy left out of the stack.
#[derive(Debug, Clone, Copy, Default)]
pub struct Off;

impl<C, P> Slot<C, P> for Off {
    type Layer = Identity;

    fn build(self, _: &mut BuildContext<'_, C, P>) -> Result<Identity, ConfigError> {
        Ok(Identity::new())
    }
}

/// Retry settings.
#[derive(Debug, Clone)]
pub struct RetrySlot(pub RetryConfig);

impl<C: Clone, P: Clone> Slot<C, P> for RetrySlot {
    type Layer = RetryLayer<P, C>;

    fn build(self, cx: &mut BuildContext<'_, C, P>) -> Result<Self::Layer, ConfigError> {
        let layer = RetryLayer::builder(cx.name)
            .config(self.0)
            .classify(cx.classify.clone())
            .protocol(cx.protocol.clone())
            .build()
            .map_err(|e| e.within("retry"))?;
        cx.handle.budget = Some(Arc::clone(layer.budget()));
        Ok(layer)
    }
}

/// Hedging settings.
#[derive(Debug, Clone, Copy)]
pub struct HedgeSlot {
    /// When the hedges go out.
    pub delay: HedgeDelay,
    /// The most extra attempts per call.
    pub max_hedges: u32,
}

impl<C: Clone, P: Clone> Slot<C, P> for HedgeSlot {
    type Layer = HedgeLayer<P, C>;

    fn build(self, cx: &mut BuildContext<'_, C, P>) -> Result<Self::Layer, ConfigError> {
        let mut b = HedgeLayer::builder(cx.name)
            .delay(self.delay)
            .max_hedges(self.max_hedges)
            .classify(cx.classify.clone())
            .protocol(cx.protocol.clone());
        if let Some(budget) = &cx.handle.budget {
            b = b.budget(Arc::clone(budget));
        }
        let layer = b.build().map_err(|e| e.within("hedge"))?;
        // Without a retry, the budget hedges spend is the hedge's own.
        cx.handle
            .budget
            .get_or_insert_with(|| Arc::clone(layer.budget()));
        Ok(layer)
    }
}

/// Circuit breaker settings.
#[derive(Debug, Clone)]
pub struct BreakerSlot(pub BreakerConfig);

impl<C: Clone, P> Slot<C, P> for BreakerSlot {
    type Layer = CircuitBreakerLayer<C>;

    fn build(self, cx: &mut BuildContext<'_, C, P>) -> Result<Self::Layer, ConfigError> {
        let layer = CircuitBreakerLayer::builder(cx.name)
            .config(self.0)
            .classify(cx.classify.clone())
            .build()
            .map_err(|e| e.within("breaker"))?;
        cx.handle.breaker = Some(layer.handle());
        Ok(layer)
    }
}

/// Rate limit settings.
#[derive(Debug, Clone, Copy)]
pub struct RateSlot(pub RateLimitConfig);

impl<C, P> Slot<C, P> for RateSlot {
    type Layer = RateLimitLayer;

    fn build(self, cx: &mut BuildContext<'_, C, P>) -> Result<Self::Layer, ConfigError> {
        let layer = RateLimitLayer::builder(cx.name)
            .config(self.0)
            .build()
            .map_err(|e| e.within("rate_limit"))?;
        cx.handle.rate = Some(Arc::new(layer.handle()));
        Ok(layer)
    }
}

/// Bulkhead settings.
#[derive(Debug, Clone)]
pub struct BulkheadSlot(pub BulkheadConfig);

impl<C, P> Slot<C, P> for BulkheadSlot {
    type Layer = BulkheadLayer;

    fn build(self, cx: &mut BuildContext<'_, C, P>) -> Result<Self::Layer, ConfigError> {
        let layer =
            BulkheadLayer::from_config(cx.name, self.0).map_err(|e| e.within("bulkhead"))?;
        cx.handle.bulkhead = Some(layer.handle());
        Ok(layer)
    }
}

/// Adaptive concurrency limit settings.
#[derive(Debug, Clone)]
pub struct AdaptiveSlot(pub AdaptiveLimitConfig);

impl<C: Clone, P> Slot<C, P> for AdaptiveSlot {
    type Layer = AdaptiveLimitLayer<C>;

    fn build(self, cx: &mut BuildContext<'_, C, P>) -> Result<Self::Layer, ConfigError> {
        let layer = AdaptiveLimitLayer::builder(cx.name)
            .config(self.0)
            .classify(cx.classify.clone())
            .build()
            .map_err(|e| e.within("adaptive_limit"))?;
        cx.handle.adaptive = Some(layer.handle());
        Ok(layer)
    }
}

/// Client-side throttle settings.
#[derive(Debug, Clone)]
pub struct ThrottleSlot(pub ThrottleConfig);

impl<C: Clone, P> Slot<C, P> for ThrottleSlot {
    type Layer = ThrottleLayer<C>;

    fn build(self, cx: &mut BuildContext<'_, C, P>) -> Result<Self::Layer, ConfigError> {
        let layer = ThrottleLayer::builder(cx.name)
            .config(self.0)
            .classify(cx.classify.clone())
            .build()
            .map_err(|e| e.within("throttle"))?;
        cx.handle.throttle = Some(layer.handle());
        Ok(layer)
    }
}

/// The per-attempt timeout.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutSlot(pub Duration);

impl<C, P> Slot<C, P> for TimeoutSlot {
    type Layer = TimeoutLayer;

    fn build(self, cx: &mut BuildContext<'_, C, P>) -> Result<Self::Layer, ConfigError> {
        let layer = TimeoutLayer::new(cx.name, self.0).map_err(|e| e.within("timeout"))?;
        cx.handle.timeout = Some(layer.handle());
        Ok(layer)
    }
}

/// A layer you built yourself (a fallback, a cache), placed in its slot.
#[derive(Debug, Clone)]
pub struct LayerSlot<X>(pub X);

impl<C, P, X: Clone> Slot<C, P> for LayerSlot<X> {
    type Layer = X;

    fn build(self, _: &mut BuildContext<'_, C, P>) -> Result<X, ConfigError> {
        Ok(self.0)
    }
}
