//! palisade-balance: under construction.
