//! The pool simulation: replays matchmaker demand traces on virtual time through vmpool and
//! through the policies studios use today, on the same simulated Azure latencies, and
//! compares what each costs for the waits it gives.
//!
//! - [`traces`]: the demand traces (steady, spike, daily, a week, a launch day, bursts) and a
//!   studio's own CSV.
//! - [`vmpool_run`]: vmpool through the real `Pool`, `Reconciler` and `plan` over a
//!   simulated cloud.
//! - [`fleet`]: one fleet model sized by a [`fleet::Scaler`]: Agones' Buffer autoscaler,
//!   PlayFab's Dynamic Standby, GameLift-style target tracking, the Deployment Pool's fixed
//!   buffer.
//! - [`oracle`]: the clairvoyant schedule, the floor on cost at zero wait.
//! - [`measure`]: waits, VM-hours, the disk-hours of deallocated VMs, timelines.
//! - [`sweep`]: every policy with its parameter swept, Pareto fronts, the goal for vmpool.
//! - [`plot`]: PNG plots of the fronts and of a day over time.
//! - [`rollout`]: a new server build shipped part way through a trace, against the same
//!   trace without it.
//!
//! `cargo run --release -p vmpool-sim` prints the comparison on today's traces; `--sweep`
//! runs the full sweep and writes the plots; `--trace-csv FILE --json` replays a CSV;
//! `--rollout` ships a new build at hour 12 of the daily trace.

pub mod fleet;
pub mod measure;
pub mod oracle;
pub mod plot;
pub mod rollout;
pub mod sweep;
pub mod traces;
pub mod vmpool_run;

pub use measure::{Outcome, Sample};
pub use traces::{Request, Trace};
pub use vmpool_run::run_vmpool;

#[cfg(test)]
mod tests {
    use vmpool::config::PoolPolicy;

    use super::*;
    use crate::fleet::{FixedBuffer, run_fleet};

    #[tokio::test]
    async fn vmpool_and_the_fixed_buffer_serve_a_short_trace_and_vmpool_waits_less_in_a_burst() {
        // Ten requests in the first minute, then quiet.
        let burst = Trace {
            name: "burst".into(),
            period_secs: 0,
            requests: (0..10)
                .map(|i| Request {
                    at: i * 6,
                    session: 600,
                })
                .collect(),
        };
        let fixed = run_fleet(&burst, &mut FixedBuffer { n: 2 }, 1);
        let pool = run_vmpool(&burst, PoolPolicy::default(), 1).await;
        assert_eq!((fixed.served, pool.served), (10, 10));
        assert!(
            pool.total_wait < fixed.total_wait / 2,
            "{pool:?} vs {fixed:?}"
        );
        assert!(
            pool.max_wait <= 200,
            "every VM is created on demand: {pool:?}"
        );
        assert!(
            pool.vm_hours > 10.0 * 600.0 / 3600.0,
            "the sessions themselves are billed"
        );
        assert!(pool.peak_vms >= 10);
    }
}
