//! The one integration test binary of trustfab-ledger. Where new tests go:
//!
//! - `support`: fixtures (a temporary SQLite file, a fresh PostgreSQL database per test), raw
//!   SQL for tampering, the test checkpoint signer;
//! - `conformance`: one body per behaviour, instantiated for every backend by `store_suite!`;
//! - `crash`: SQLite processes killed with SIGKILL mid-append, then reopened and checked;
//! - `processes`: several processes on one PostgreSQL ledger, and SIGKILL among them;
//! - `invariants`: checks on the crate's own source (append-only, plain SQL).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

#[macro_use]
mod conformance;

mod crash;

mod processes;

mod invariants;

store_suite!(sqlite, crate::support::Sqlite);
store_suite!(postgres, crate::support::Pg);
