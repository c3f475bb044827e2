//! The `trustfab` command line; subcommands arrive with the PKI commit that follows.

fn main() {}
