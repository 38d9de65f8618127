//! vmpool keeps a pool of Azure VMs for dedicated game servers.
//!
//! A tour, from the rules outwards:
//! - [`domain`]: VM names, the seven states, the VM record and every transition; no I/O.
//! - [`reconcile`]: the reconciler; `plan` decides purely, `Reconciler` applies.
//! - [`pool`]: the matchmaker's operations over the two ports (write intent, then act).
//! - [`capacity`]: the ledger that keeps `VMPOOL_MAX_VMS` without counting the table.
//! - [`store`]: the VM table port, in memory and in Azure Table Storage.
//! - [`compute`]: the ARM port, simulated and real.
//! - [`http`]: the routes, JSON shapes and the error envelope.
//! - [`idempotency`]: CreateVM's `Idempotency-Key`, kept in the table.
//! - [`breaker`]: the circuit breaker on ARM refusals, shared by CreateVM and the reconciler.
//! - [`metrics`]: Prometheus counters, and the decorators that count ARM and table calls.
//! - [`config`]: settings from environment variables.
//! - [`secret`]: a value whose `Debug` hides it.
//! - [`startup`]: wiring a configuration into a running service.
//! - [`clock`]: time as a parameter.

pub mod breaker;
pub mod capacity;
pub mod clock;
pub mod compute;
pub mod config;
pub mod domain;
pub mod http;
pub mod idempotency;
pub mod metrics;
pub mod pool;
pub mod reconcile;
pub mod secret;
pub mod startup;
pub mod store;
