//! palisade-fallback: under construction.
