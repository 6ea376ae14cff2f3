//! palisade-fault: under construction.
