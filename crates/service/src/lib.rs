#![doc = include_str!("../README.md")]

pub mod client;
pub mod metrics;
pub mod server;
pub mod tls;
pub mod wire;

pub use client::{RemoteHsm, StationCredentials};
pub use server::{serve, spawn, Running, ServeError, ServeOptions, Service};
