//! Integration tests, in one binary so builds stay quick. Each module is one area; shared
//! helpers are in `support`.

// clippy.toml's allow-unwrap-in-tests covers #[test] functions only, not the helpers here.
#![allow(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

#[allow(dead_code, reason = "shared helpers; not every test uses every part")]
mod support;

mod access;
mod api;
mod arm;
mod binary;
mod create_under_faults;
mod host;
mod idempotency;
mod identity_storage;
mod infra;
mod layout;
mod observation;
mod openapi;
mod operations;
mod package;
mod reconcile;
mod router;
mod state_table;
mod store_contract;
mod table_store;
