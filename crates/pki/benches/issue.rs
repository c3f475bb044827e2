//! Issuance benchmark (filled in with the bench commit).

fn main() {}
