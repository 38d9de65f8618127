//! vmpool keeps a pool of Azure VMs for dedicated game servers.
//!
//! A tour, from the rules outwards:
//! - [`domain`]: VM names, the seven states, the VM record and every transition; no I/O.
//! - [`reconcile`]: the reconciler; `plan` decides purely, `Reconciler` applies.
//! - [`pool`]: the matchmaker's operations over the two ports (write intent, then act).
//! - [`store`]: the VM table port, in memory and in Azure Table Storage.
//! - [`compute`]: the ARM port, simulated and real.
//! - [`arm_fake`]: an ARM fake that speaks the wire protocol, for tests and local runs.
//! - [`http`]: the routes, JSON shapes and the error envelope.
//! - [`config`]: settings from environment variables.
//! - [`startup`]: wiring a configuration into a running service.
//! - [`simulation`]: replays demand traces through the pool and the fixed-buffer reference.
//! - [`clock`]: time as a parameter.

pub mod arm_fake;
pub mod clock;
pub mod compute;
pub mod config;
pub mod domain;
pub mod http;
pub mod pool;
pub mod reconcile;
pub mod simulation;
pub mod startup;
pub mod store;
