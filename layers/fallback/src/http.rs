//! HTTP support (placeholder until written).
