//! The Palisade demo order system (under construction).
fn main() {}
