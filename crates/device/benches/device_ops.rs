//! Device operation benchmarks.

fn main() {}
