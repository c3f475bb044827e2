//! Integration tests of trustfab-auth on simulated devices provisioned as a station does, and
//! against the real peers (openssl s_server / s_client, rustls over TCP). Where new tests go:
//! - fixtures (OEMs, provisioning, CRLs): `support`
//! - the protocol, its refusals and its TCP transport: `protocol`
//! - mutual TLS with device-held keys, and openssl interop: `tls`
//! - replay of the fuzz seeds: `fuzz_seeds`

// Test fixtures outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod fuzz_seeds;
mod protocol;
mod support;
mod tls;
