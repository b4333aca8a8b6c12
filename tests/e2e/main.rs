//! End-to-end tests: one test binary, one module per area.

mod gateway;
mod harness;
mod ledger;
